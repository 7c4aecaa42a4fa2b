//! Lock fencing (SPEC §4 guarantee 9, §5 "Locks"), judged on the change
//! log with the tokens the clients sent.
//!
//! Per key, the log's lock ops are replayed in seq order at the times the
//! coordinator accepted them (`at_ms`, the clock it judged leases by): a
//! grant at `t` with lease `ttl` makes its version the live token until
//! `t + ttl` (a renewal moves that end), a release or an expiry ends it, a
//! later grant supersedes it. Then:
//!
//! - (a) every other change accepted while a lock was live was sent with
//!   that lock's token (the request is found by store and idempotency key);
//! - (b) no change was accepted with a token that was not the live lock's
//!   (released, expired, superseded, or never granted), and a renewal or
//!   release names the live token;
//! - (c) each grant's token (its version) is above every earlier token of
//!   the key, and no grant goes to another holder while a lock is live;
//! - an expiry ends the lock it names, never before its lease; the item's
//!   stored lock after each change is the one the replay leaves; and when
//!   the log was read no lock was left more than [`LATE_EXPIRY_MS`] past
//!   its lease.
//!
//! Whether an indeterminate request took effect is judged from the log
//! alone: the client's event only tells which token the request carried,
//! which does not depend on its outcome.

use std::collections::HashMap;

use super::exactly_once::is_coordinators_own;
use super::{Anomaly, fmt_change};
use crate::nemesis::history::{Change, Event, Final, Key, LockState};

const CHECKER: &str = "lock_fencing";

/// How long past its lease a lock may still be stored when the log is
/// read: the coordinator ends an expired lock within a tick (250 ms), also
/// after a restart, and the run reads the log only once no lock is left
/// (or it gave up waiting).
pub const LATE_EXPIRY_MS: u64 = 2_000;

/// How a token stopped being live, for the reports.
#[derive(Debug, Clone)]
struct Ended {
    /// What ended it.
    how: String,
}

/// Checks every key's log for the fencing rules above.
pub fn lock_fencing(events: &[Event], fin: &Final) -> Vec<Anomaly> {
    // The token each request carried, by (store, idempotency key).
    let mut sent: HashMap<(&str, &str), Option<u64>> = HashMap::new();
    for e in events.iter().filter(|e| e.op.is_write()) {
        if let Some(idem) = e.idempotency_key.as_deref() {
            sent.insert((e.store.as_str(), idem), e.lock_token);
        }
    }
    let mut found = Vec::new();
    for (key, log) in &fin.histories {
        found.extend(check_key(key, log, &sent, fin.read_at_ms));
    }
    found
}

fn check_key(
    key: &Key,
    log: &[Change],
    sent: &HashMap<(&str, &str), Option<u64>>,
    read_at_ms: u64,
) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let mut report = |detail: String| found.push(Anomaly::new(CHECKER, Some(key), detail));
    let mut stored: Option<LockState> = None;
    let mut highest_token = 0;
    let mut ended: HashMap<u64, Ended> = HashMap::new();
    // The first stored lock that differs from the replay is reported; the
    // replay goes on as the reference.
    let mut lock_differs = false;
    let describe = |token: u64, ended: &HashMap<u64, Ended>, stored: &Option<LockState>| match (
        ended.get(&token),
        stored,
    ) {
        (Some(e), _) => format!("token {token} ({})", e.how),
        (None, Some(l)) if l.token == token => {
            format!("token {token} (its lease ended at {} ms)", l.expires_at_ms)
        }
        _ => format!("token {token} (never granted)"),
    };
    for c in log {
        let live = stored
            .as_ref()
            .filter(|l| c.at_ms < l.expires_at_ms)
            .cloned();
        let left = |l: &LockState| l.expires_at_ms.saturating_sub(c.at_ms);
        match c.op_kind.as_str() {
            "lock_grant" => {
                let holder = c.args.holder.clone().unwrap_or_default();
                if let Some(l) = live.as_ref().filter(|l| l.holder != holder) {
                    report(format!(
                        "granted to {holder:?} while {:?}'s lock {} was live for {} ms more: {}",
                        l.holder,
                        l.token,
                        left(l),
                        fmt_change(c)
                    ));
                }
                if c.version <= highest_token {
                    report(format!(
                        "token {} does not grow past {highest_token}: {}",
                        c.version,
                        fmt_change(c)
                    ));
                }
                if let Some(Some(token)) = request_token(c, sent)
                    && live.as_ref().is_none_or(|l| l.token != token)
                {
                    report(format!(
                        "grant accepted with {} which was not the live lock's: {}",
                        describe(token, &ended, &stored),
                        fmt_change(c)
                    ));
                }
                if let Some(old) = &stored {
                    ended.entry(old.token).or_insert(Ended {
                        how: format!("superseded by the grant at seq {}", c.seq),
                    });
                }
                highest_token = highest_token.max(c.version);
                stored = Some(LockState {
                    holder,
                    token: c.version,
                    expires_at_ms: c.at_ms.saturating_add(c.args.ttl_ms.unwrap_or(0)),
                });
            }
            "lock_renew" | "lock_release" => {
                let named = c.args.token.unwrap_or(0);
                if live.as_ref().is_none_or(|l| l.token != named) {
                    report(format!(
                        "{} of {} accepted, the live lock being {}: {}",
                        c.op_kind,
                        describe(named, &ended, &stored),
                        live.as_ref()
                            .map_or("none".to_string(), |l| format!("token {}", l.token)),
                        fmt_change(c)
                    ));
                }
                if c.op_kind == "lock_release" {
                    if let Some(old) = stored.take() {
                        ended.entry(old.token).or_insert(Ended {
                            how: format!("released at seq {}", c.seq),
                        });
                    }
                } else if let Some(lock) = &mut stored {
                    lock.expires_at_ms = c.at_ms.saturating_add(c.args.ttl_ms.unwrap_or(0));
                }
            }
            "lock_expire" => {
                let named = c.args.token.unwrap_or(0);
                match &stored {
                    Some(l) if l.token == named && c.at_ms >= l.expires_at_ms => {}
                    Some(l) if l.token == named => report(format!(
                        "lock {named} expired {} ms before its lease ended: {}",
                        left(l),
                        fmt_change(c)
                    )),
                    _ => report(format!(
                        "expiry of {} which was not the stored lock: {}",
                        describe(named, &ended, &stored),
                        fmt_change(c)
                    )),
                }
                if let Some(old) = stored.take() {
                    ended.entry(old.token).or_insert(Ended {
                        how: format!("expired at seq {}", c.seq),
                    });
                }
            }
            _ => {
                // A change the coordinator made itself (a hold's expiry)
                // needs no token; a request nobody sent (`None`) is
                // reported by the exactly-once checker.
                let token = match is_coordinators_own(c) {
                    true => None,
                    false => request_token(c, sent),
                };
                match (&live, token) {
                    (Some(l), Some(None)) => report(format!(
                        "accepted without a token while {:?}'s lock {} was live for {} ms more: {}",
                        l.holder,
                        l.token,
                        left(l),
                        fmt_change(c)
                    )),
                    (Some(l), Some(Some(t))) if t != l.token => report(format!(
                        "accepted with stale {} while lock {} was live: {}",
                        describe(t, &ended, &stored),
                        l.token,
                        fmt_change(c)
                    )),
                    (None, Some(Some(t))) => report(format!(
                        "accepted with stale {} while no lock was live: {}",
                        describe(t, &ended, &stored),
                        fmt_change(c)
                    )),
                    _ => {}
                }
                if c.item.is_none()
                    && let Some(old) = stored.take()
                {
                    ended.entry(old.token).or_insert(Ended {
                        how: format!("gone with the item deleted at seq {}", c.seq),
                    });
                }
            }
        }
        if c.lock != stored && !lock_differs {
            lock_differs = true;
            let show = |l: &Option<LockState>| {
                l.as_ref().map_or("none".to_string(), |l| {
                    format!("{:?} token {} until {}", l.holder, l.token, l.expires_at_ms)
                })
            };
            report(format!(
                "stored lock {} where the log's lock ops leave {}: {}",
                show(&c.lock),
                show(&stored),
                fmt_change(c)
            ));
        }
    }
    if let Some(l) = &stored
        && read_at_ms > l.expires_at_ms.saturating_add(LATE_EXPIRY_MS)
    {
        report(format!(
            "lock {} of {:?} still stored {} ms after its lease ended (when the log was read)",
            l.token,
            l.holder,
            read_at_ms - l.expires_at_ms
        ));
    }
    found
}

/// The token the request behind `c` carried: `None` when no client sent
/// it, `Some(None)` when it carried none.
fn request_token(c: &Change, sent: &HashMap<(&str, &str), Option<u64>>) -> Option<Option<u64>> {
    sent.get(&(c.store.as_str(), c.idempotency_key.as_str()))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    /// On `loc/a`: created at 1000 (v1), granted to h1 for 3 s (token 2),
    /// an add with token 2 (v3), a renewal to 5000 (v4), the release (v5).
    fn held_and_released() -> LockLog {
        let mut l = LockLog::new();
        l.write("c", 1_000, None, "create");
        l.grant("g1", 1_000, "h1", 3_000);
        l.write("a1", 1_500, Some(2), "add");
        l.renew("r1", 2_000, 2, 3_000);
        l.release("x1", 2_500, 2);
        l
    }

    /// Then an add without a token (v6), h2's lock until 4000 (token 7).
    fn taken_again() -> LockLog {
        let mut l = held_and_released();
        l.write("a2", 2_600, None, "add");
        l.grant("g2", 3_000, "h2", 1_000);
        l
    }

    /// Then its expiry at 4100 (v8) and a remove without a token (v9).
    fn life() -> LockLog {
        let mut l = taken_again();
        l.expire(4_100, 7);
        l.write("a3", 4_200, None, "remove");
        l
    }

    fn details(found: &[Anomaly]) -> String {
        found.iter().map(|a| format!("{a}\n")).collect()
    }

    fn check(l: &LockLog) -> Vec<Anomaly> {
        lock_fencing(&l.events, &l.fin())
    }

    #[test]
    fn a_clean_lock_life_is_accepted() {
        let found = check(&life());
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn a_write_without_the_token_while_locked_is_rejected() {
        let mut l = LockLog::new();
        l.write("c", 1_000, None, "create");
        l.grant("g1", 1_000, "h1", 3_000);
        l.write("bad", 1_600, None, "remove");
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0].detail.starts_with(
                "accepted without a token while \"h1\"'s lock 2 was live for 2400 ms more"
            ),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_write_without_a_token_after_the_lease_is_accepted() {
        // The lease passed (2000) before the coordinator wrote the expiry:
        // the lock no longer keeps anyone out.
        let mut l = LockLog::new();
        l.write("c", 1_000, None, "create");
        l.grant("g1", 1_000, "h1", 1_000);
        l.write("late", 2_050, None, "add");
        l.expire(2_100, 2);
        let found = check(&l);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn a_released_token_accepted_again_is_rejected() {
        let mut l = held_and_released();
        l.write("stale", 2_700, Some(2), "add");
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .contains("stale token 2 (released at seq 5) while no lock was live"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_superseded_or_expired_token_accepted_is_rejected() {
        let mut l = taken_again();
        l.write("old", 3_500, Some(2), "add");
        l.expire(4_100, 7);
        l.write("expired", 4_200, Some(7), "add");
        let found = check(&l);
        assert_eq!(found.len(), 2, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .contains("stale token 2 (released at seq 5) while lock 7 was live"),
            "{}",
            found[0]
        );
        assert!(
            found[1].detail.contains("stale token 7 (expired at seq 9)"),
            "{}",
            found[1]
        );
    }

    #[test]
    fn a_token_past_its_lease_is_rejected_before_the_expiry_is_written() {
        let mut l = taken_again();
        l.write("late", 4_050, Some(7), "add");
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .contains("stale token 7 (its lease ended at 4000 ms)"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_grant_to_another_holder_while_locked_is_rejected() {
        let mut l = LockLog::new();
        l.write("c", 1_000, None, "create");
        l.grant("g1", 1_000, "h1", 3_000);
        l.grant("g2", 1_200, "h2", 1_000);
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("granted to \"h2\" while \"h1\"'s lock 2 was live for 2800 ms"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_renewal_or_release_of_a_dead_token_is_rejected() {
        let mut l = held_and_released();
        l.renew("r2", 2_700, 2, 1_000);
        l.release("x2", 2_800, 2);
        let found = check(&l);
        assert_eq!(found.len(), 2, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("lock_renew of token 2 (released")
        );
        assert!(
            found[1]
                .detail
                .starts_with("lock_release of token 2 (released")
        );
    }

    #[test]
    fn an_early_or_foreign_expiry_is_rejected() {
        let mut l = taken_again();
        l.expire(3_500, 7);
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.contains("expired 500 ms before its lease"));
        let mut l = life();
        l.expire(5_000, 2);
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("expiry of token 2 (released at seq 5)"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn tokens_must_grow_and_the_stored_lock_must_agree() {
        let mut l = life();
        l.grant("g3", 5_000, "h1", 1_000);
        let last = l.changes.len() - 1;
        l.changes[last].version = 7;
        let found = check(&l);
        assert!(
            found
                .iter()
                .any(|a| a.detail.starts_with("token 7 does not grow past 7")),
            "{}",
            details(&found)
        );
        let mut l = life();
        l.changes[2].lock = None; // the add dropped the lock
        let found = check(&l);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("stored lock none where the log's lock ops leave \"h1\" token 2"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_lock_left_past_its_lease_is_rejected() {
        let l = taken_again();
        let mut fin = l.fin();
        fin.read_at_ms = 5_900;
        assert!(lock_fencing(&l.events, &fin).is_empty());
        fin.read_at_ms = 6_100;
        let found = lock_fencing(&l.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .contains("lock 7 of \"h2\" still stored 2100 ms after its lease"),
            "{}",
            found[0]
        );
    }
}
