//! Lease locks on one key, with fencing tokens.
//!
//! A lock lets one holder (a handheld counting a shelf) write a key while
//! everyone else is kept out. It is part of the item record, granted and
//! ended by writes through [`crate::op::apply`], so it replicates and
//! survives restarts like any other field.
//!
//! The rules, all judged at the `now_ms` the caller passes:
//! - A lock counts while `now_ms < expires_at_ms`. Once that has passed it
//!   no longer keeps anyone out, even before the coordinator writes its
//!   expiry ([`Op::LockExpire`]).
//! - The token is the item's version right after the grant. Versions only
//!   grow, so a token that was released, expired or granted again never
//!   matches a later lock: it is refused forever.
//! - A write that carries no token to a key with a live lock is
//!   [`Rejection::Locked`]; a write whose token is not the live lock's, or
//!   that carries a token when no lock is live, is [`Rejection::LockLost`].
//! - A grant while another holder's lock is live is `Locked`. A grant to the
//!   holder that already holds the live lock is accepted and gives a new
//!   token (the old one is superseded): a holder that lost its token, say
//!   after a crash, gets back in without waiting for the expiry. If that
//!   grant carries a token, it must be the current one.
//! - Renew and release name their token in the op. A token that is not the
//!   live lock's is `LockLost`; for a release the REST layer answers that
//!   with 204 ("already gone") and writes nothing.
//! - The coordinator's own expiry needs no token: it ends the lock only if
//!   the stored lock still has the token it names (else `LockLost`) and
//!   `now_ms >= expires_at_ms` (else `Locked`, whose `expires_in_ms` says
//!   when to look again).
//!
//! Deciding who may hold a lock is left to the coordinator (which store may
//! write the location); this module only decides what a lock allows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::item::{Item, ItemKey};
use crate::op::Op;

/// Shortest lock lease: one second.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest lock lease: one hour.
pub const MAX_TTL_MS: u64 = 3_600_000;

/// The lock tokens a multi-key request carries, by key. A key without an
/// entry is written without a token; an entry for a key the request does
/// not touch is ignored.
pub type LockTokens = BTreeMap<ItemKey, u64>;

/// A lease lock on one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Who holds it, as the grant named it (e.g. `counter-7`).
    pub holder: String,
    /// The fencing token: the item's version right after the grant.
    pub token: u64,
    /// When the lease ends, in milliseconds since the Unix epoch on the
    /// coordinator's clock.
    pub expires_at_ms: u64,
}

impl Lock {
    /// Whether the lock still keeps others out at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// Milliseconds left at `now_ms`; 0 once it has expired.
    pub fn expires_in_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }

    fn locked(&self, now_ms: u64) -> Rejection {
        Rejection::Locked {
            holder: self.holder.clone(),
            expires_in_ms: self.expires_in_ms(now_ms),
        }
    }
}

/// Whether a write that presents `token` may change a key whose stored
/// lock is `lock` (`None` for no item or no lock), at `now_ms`. This is the
/// check for every write other than the lock ops themselves.
pub fn check(lock: Option<&Lock>, token: Option<u64>, now_ms: u64) -> Result<(), Rejection> {
    match (lock.filter(|lock| lock.is_live(now_ms)), token) {
        (None, None) => Ok(()),
        (Some(lock), None) => Err(lock.locked(now_ms)),
        (Some(lock), Some(token)) if lock.token == token => Ok(()),
        (_, Some(token)) => Err(Rejection::LockLost { token }),
    }
}

/// Whether `op` with the request's `token` may be applied to `item` at
/// `now_ms`: the lock ops by their own rules (see the module docs), every
/// other op by [`check`].
pub(crate) fn authorize(
    item: &Item,
    op: &Op,
    token: Option<u64>,
    now_ms: u64,
) -> Result<(), Rejection> {
    let live = item.live_lock(now_ms);
    match op {
        Op::LockGrant { holder, .. } => match (live, token) {
            (Some(lock), _) if lock.holder != *holder => Err(lock.locked(now_ms)),
            // The holder of the live lock (or anyone, when there is none)
            // may be granted it anew without a token.
            (_, None) => Ok(()),
            (_, Some(_)) => check(live, token, now_ms),
        },
        Op::LockRenew { token: own, .. } | Op::LockRelease { token: own } => {
            if token.is_some_and(|token| token != *own) {
                return Err(Rejection::InvalidField {
                    field: "lock_token",
                    reason: format!("differs from the token {own} the request names"),
                });
            }
            match live {
                Some(lock) if lock.token == *own => Ok(()),
                _ => Err(Rejection::LockLost { token: *own }),
            }
        }
        Op::LockExpire { token: own } => match &item.lock {
            Some(lock) if lock.token == *own && lock.is_live(now_ms) => Err(lock.locked(now_ms)),
            Some(lock) if lock.token == *own => Ok(()),
            _ => Err(Rejection::LockLost { token: *own }),
        },
        _ => check(item.lock.as_ref(), token, now_ms),
    }
}

/// The effect of a lock op on `next`, which already carries the new
/// version. Other ops leave the lock as it is.
pub(crate) fn effect(next: &mut Item, op: &Op, now_ms: u64) {
    match op {
        Op::LockGrant { holder, ttl_ms } => {
            next.lock = Some(Lock {
                holder: holder.clone(),
                token: next.version,
                expires_at_ms: now_ms.saturating_add(*ttl_ms),
            });
        }
        Op::LockRenew { ttl_ms, .. } => {
            if let Some(lock) = &mut next.lock {
                lock.expires_at_ms = now_ms.saturating_add(*ttl_ms);
            }
        }
        Op::LockRelease { .. } | Op::LockExpire { .. } => next.lock = None,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::item::KeyState;
    use crate::op::{Precondition, apply};

    const HOUR: u64 = 3_600_000;

    fn key() -> ItemKey {
        ItemKey::new("s1", "milk").unwrap()
    }

    /// An item at version 4 locked by `counter-7` with token 4 until 10_000.
    fn locked() -> KeyState {
        let mut item = Item::new(&key(), "Milk", 5, 4);
        item.lock = Some(Lock {
            holder: "counter-7".into(),
            token: 4,
            expires_at_ms: 10_000,
        });
        KeyState::Live(item)
    }

    fn unlocked() -> KeyState {
        KeyState::Live(Item::new(&key(), "Milk", 5, 4))
    }

    fn grant(holder: &str, ttl_ms: u64) -> Op {
        Op::LockGrant {
            holder: holder.into(),
            ttl_ms,
        }
    }

    fn token(token: u64) -> Precondition {
        Precondition {
            lock_token: Some(token),
            ..Precondition::default()
        }
    }

    fn lock_of(state: &KeyState) -> Option<Lock> {
        state.item().and_then(|item| item.lock.clone())
    }

    #[test]
    fn lock_rules() {
        let add = Op::Add { amount: 1 };
        let none = Precondition::default();
        // (state, op, precondition, now, the error text or the lock after)
        type Case = (
            KeyState,
            Op,
            Precondition,
            u64,
            Result<Option<Lock>, &'static str>,
        );
        let lock = |holder: &str, token, expires_at_ms| {
            Ok(Some(Lock {
                holder: holder.into(),
                token,
                expires_at_ms,
            }))
        };
        let cases: Vec<Case> = vec![
            (
                unlocked(),
                grant("c1", 5_000),
                none,
                100,
                lock("c1", 5, 5_100),
            ),
            (unlocked(), grant("c1", 999), none, 100, Err("invalid ttl")),
            (
                unlocked(),
                grant("c1", HOUR + 1),
                none,
                100,
                Err("invalid ttl"),
            ),
            (
                unlocked(),
                grant("c 1", 5_000),
                none,
                100,
                Err("invalid holder"),
            ),
            (
                locked(),
                grant("c1", 5_000),
                none,
                100,
                Err("locked by counter-7"),
            ),
            (
                locked(),
                grant("c1", 5_000),
                token(4),
                100,
                Err("locked by counter-7"),
            ),
            (
                locked(),
                grant("c1", 5_000),
                none,
                10_000,
                lock("c1", 5, 15_000),
            ),
            (
                locked(),
                grant("counter-7", 5_000),
                none,
                100,
                lock("counter-7", 5, 5_100),
            ),
            (
                locked(),
                grant("counter-7", 5_000),
                token(3),
                100,
                Err("token 3 is not"),
            ),
            (
                locked(),
                add.clone(),
                none,
                100,
                Err("locked by counter-7 for another 9900 ms"),
            ),
            (locked(), add.clone(), token(3), 100, Err("token 3 is not")),
            (
                locked(),
                add.clone(),
                token(4),
                100,
                lock("counter-7", 4, 10_000),
            ),
            (
                locked(),
                add.clone(),
                none,
                10_000,
                lock("counter-7", 4, 10_000),
            ),
            (
                locked(),
                add.clone(),
                token(4),
                10_000,
                Err("token 4 is not"),
            ),
            (
                unlocked(),
                add.clone(),
                token(4),
                100,
                Err("token 4 is not"),
            ),
            (
                locked(),
                Op::LockRenew {
                    token: 4,
                    ttl_ms: 2_000,
                },
                none,
                9_000,
                lock("counter-7", 4, 11_000),
            ),
            (
                locked(),
                Op::LockRenew {
                    token: 4,
                    ttl_ms: 2_000,
                },
                none,
                10_000,
                Err("token 4 is not"),
            ),
            (
                locked(),
                Op::LockRenew {
                    token: 4,
                    ttl_ms: 2_000,
                },
                token(5),
                100,
                Err("invalid lock_token"),
            ),
            (locked(), Op::LockRelease { token: 4 }, none, 100, Ok(None)),
            (
                locked(),
                Op::LockRelease { token: 4 },
                token(4),
                100,
                Ok(None),
            ),
            (
                locked(),
                Op::LockRelease { token: 3 },
                none,
                100,
                Err("token 3 is not"),
            ),
            (
                unlocked(),
                Op::LockRelease { token: 4 },
                none,
                100,
                Err("token 4 is not"),
            ),
            (
                locked(),
                Op::LockExpire { token: 4 },
                none,
                9_999,
                Err("for another 1 ms"),
            ),
            (
                locked(),
                Op::LockExpire { token: 4 },
                none,
                10_000,
                Ok(None),
            ),
            (
                locked(),
                Op::LockExpire { token: 3 },
                none,
                10_000,
                Err("token 3 is not"),
            ),
            (
                unlocked(),
                Op::LockExpire { token: 4 },
                none,
                10_000,
                Err("token 4 is not"),
            ),
        ];
        for (state, op, pre, now, want) in cases {
            let got = apply(&key(), &state, &op, pre, now);
            match (&got, &want) {
                (Ok(next), Ok(lock)) => {
                    assert_eq!(&lock_of(next), lock, "{op:?} at {now}");
                    assert_eq!(next.version(), 5, "{op:?} at {now}: one write");
                }
                (Err(err), Err(text)) => {
                    assert!(err.to_string().contains(text), "{op:?} at {now}: {err}");
                }
                _ => panic!("{op:?} with {pre:?} at {now}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_regrant_supersedes_the_old_token_forever() {
        let first = apply(
            &key(),
            &unlocked(),
            &grant("c1", 60_000),
            Precondition::default(),
            0,
        )
        .unwrap();
        let old = lock_of(&first).unwrap().token;
        let second = apply(
            &key(),
            &first,
            &grant("c1", 60_000),
            Precondition::default(),
            1,
        )
        .unwrap();
        let new = lock_of(&second).unwrap().token;
        assert!(new > old);
        let err = apply(&key(), &second, &Op::Add { amount: 1 }, token(old), 2).unwrap_err();
        assert_eq!(err, Rejection::LockLost { token: old });
        let released = apply(
            &key(),
            &second,
            &Op::LockRelease { token: new },
            Precondition::default(),
            3,
        )
        .unwrap();
        for stale in [old, new] {
            let err =
                apply(&key(), &released, &Op::Add { amount: 1 }, token(stale), 4).unwrap_err();
            assert_eq!(err, Rejection::LockLost { token: stale });
        }
    }

    #[test]
    fn a_token_on_a_key_without_an_item_is_lost() {
        let create = Op::Create {
            name: "Milk".into(),
            quantity: 1,
        };
        let err = apply(&key(), &KeyState::Absent, &create, token(1), 0).unwrap_err();
        assert_eq!(err, Rejection::LockLost { token: 1 });
    }

    #[test]
    fn check_without_a_lock_needs_no_token() {
        assert!(check(None, None, 0).is_ok());
        assert_eq!(
            check(None, Some(2), 0),
            Err(Rejection::LockLost { token: 2 })
        );
    }
}
