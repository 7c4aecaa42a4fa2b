//! Holds: reservations across keys for a cart or a click & collect order,
//! with an expiry.
//!
//! A hold reserves every line's amount at once (`reserved` and `held` grow
//! together), and ends exactly once: fulfilled (the units leave stock),
//! released by a client, or expired by the coordinator. Each step here is a
//! pure function of the hold, the current states of its lines' keys (in
//! line order) and `now_ms`, returning the new hold and every line's new
//! item state (each one write, version +1), or a rejection; a refused line
//! is named with [`Rejection::Line`], and nothing is applied then.
//!
//! Rules the spec leaves open, decided here:
//! - A hold counts as expired once `now_ms >= expires_at_ms`, even while
//!   its state still says `Active`: it can no longer be fulfilled or
//!   extended, only expired (or released) to undo its reservation.
//! - Release of a released or expired hold is a no-op (`Ok(None)`), so the
//!   REST layer can answer 204 every time; release of a fulfilled hold is
//!   [`Rejection::HoldGone`], since the units have left.
//! - Fulfil and release are writes to the lines' keys and follow their
//!   locks; extend writes no item and expiry is the coordinator's own, so
//!   neither looks at locks.
//!
//! Storing holds, serializing steps per hold and scheduling expiry are the
//! coordinator's.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::item::{
    Item, ItemKey, KeyState, check_state_count, validate_amount, validate_id, validate_line_count,
    validate_ttl,
};
use crate::lock::{self, LockTokens};
use crate::op::check_available;

/// Shortest hold: one second.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest hold: 24 hours.
pub const MAX_TTL_MS: u64 = 24 * 3_600_000;

/// A reservation across keys that ends exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's id, given by the coordinator.
    pub id: String,
    /// Whose hold it is, as the request named it (e.g. `cart-123`).
    pub owner: String,
    /// What it reserves, one line per key.
    pub lines: Vec<HoldLine>,
    /// When it expires, in milliseconds since the Unix epoch on the
    /// coordinator's clock.
    pub expires_at_ms: u64,
    /// Where it is in its life.
    pub state: HoldState,
}

/// One key of a hold and the units it reserves there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    /// The item.
    pub key: ItemKey,
    /// Units reserved, 1..=1,000,000,000.
    pub amount: u64,
}

/// Where a hold is in its life. Every state but `Active` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Its units are reserved.
    Active,
    /// Its units left stock.
    Fulfilled,
    /// A client gave its units back.
    Released,
    /// The coordinator gave its units back at expiry.
    Expired,
}

impl std::fmt::Display for HoldState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldState::Active => "active",
            HoldState::Fulfilled => "fulfilled",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        })
    }
}

/// A request for a new hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// The id the coordinator gives it.
    pub id: String,
    /// Whose hold it is (same pattern as a location id).
    pub owner: String,
    /// 1..=100 lines with distinct keys.
    pub lines: Vec<HoldLine>,
    /// How long it lasts, 1 s..=24 h.
    pub ttl_ms: u64,
}

/// An accepted hold step: the hold after it and its lines' new item states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldStep {
    /// The hold after the step.
    pub hold: Hold,
    /// Each line's new item state, in line order.
    pub items: Vec<KeyState>,
}

impl Hold {
    /// The state that counts at `now_ms`: `Expired` for an active hold past
    /// its expiry, else the stored state.
    pub fn state_at(&self, now_ms: u64) -> HoldState {
        match self.state {
            HoldState::Active if now_ms >= self.expires_at_ms => HoldState::Expired,
            state => state,
        }
    }

    /// Milliseconds left at `now_ms`; 0 once expired.
    pub fn expires_in_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }

    fn gone(&self, state: HoldState) -> Rejection {
        Rejection::HoldGone {
            id: self.id.clone(),
            state,
        }
    }

    /// Refused unless the hold is active and unexpired at `now_ms`.
    fn check_active(&self, now_ms: u64) -> Result<(), Rejection> {
        match self.state_at(now_ms) {
            HoldState::Active => Ok(()),
            state => Err(self.gone(state)),
        }
    }
}

/// Creates a hold: every line's `reserved` and `held` grow by its amount,
/// or nothing happens. `states` are the lines' keys' states in line order.
pub fn create(
    request: &NewHold,
    states: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<HoldStep, Rejection> {
    validate_id("id", &request.id)?;
    validate_id("owner", &request.owner)?;
    validate_ttl("ttl", request.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
    validate_line_count(request.lines.len())?;
    check_state_count(request.lines.len(), states.len())?;
    for (index, line) in request.lines.iter().enumerate() {
        let checked = line
            .key
            .validate()
            .and_then(|()| validate_amount(line.amount));
        checked.map_err(|rejection| rejection.at_line(index))?;
        if request.lines[..index].iter().any(|l| l.key == line.key) {
            let rejection = Rejection::InvalidField {
                field: "key",
                reason: format!("{} appears twice in the hold", line.key),
            };
            return Err(rejection.at_line(index));
        }
    }
    let hold = Hold {
        id: request.id.clone(),
        owner: request.owner.clone(),
        lines: request.lines.clone(),
        expires_at_ms: now_ms.saturating_add(request.ttl_ms),
        state: HoldState::Active,
    };
    let items = each_line(&hold, states, |line, item| {
        lock::check(item.lock.as_ref(), tokens.get(&line.key).copied(), now_ms)?;
        check_available(item, line.amount)?;
        let mut next = item.clone();
        next.reserved += line.amount;
        next.held += line.amount;
        Ok(next)
    })?;
    Ok(HoldStep { hold, items })
}

/// Extends an active, unexpired hold to `ttl_ms` from `now_ms`. Writes no item.
pub fn extend(hold: &Hold, ttl_ms: u64, now_ms: u64) -> Result<Hold, Rejection> {
    validate_ttl("ttl", ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
    hold.check_active(now_ms)?;
    Ok(Hold {
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        ..hold.clone()
    })
}

/// Fulfils an active, unexpired hold: per line `quantity`, `reserved` and
/// `held` all drop by its amount.
pub fn fulfil(
    hold: &Hold,
    states: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<HoldStep, Rejection> {
    hold.check_active(now_ms)?;
    let items = each_line(hold, states, |line, item| {
        lock::check(item.lock.as_ref(), tokens.get(&line.key).copied(), now_ms)?;
        let mut next = unhold(item, line.amount)?;
        // `quantity >= reserved >= amount`: `unhold` checked the reservation.
        next.quantity -= line.amount;
        Ok(next)
    })?;
    let hold = Hold {
        state: HoldState::Fulfilled,
        ..hold.clone()
    };
    Ok(HoldStep { hold, items })
}

/// Releases an active hold (expired or not): its reservations are undone.
/// `Ok(None)` when it was already released or expired: nothing to do.
pub fn release(
    hold: &Hold,
    states: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<Option<HoldStep>, Rejection> {
    match hold.state {
        HoldState::Active => {}
        HoldState::Released | HoldState::Expired => return Ok(None),
        HoldState::Fulfilled => return Err(hold.gone(HoldState::Fulfilled)),
    }
    let items = each_line(hold, states, |line, item| {
        lock::check(item.lock.as_ref(), tokens.get(&line.key).copied(), now_ms)?;
        unhold(item, line.amount)
    })?;
    let hold = Hold {
        state: HoldState::Released,
        ..hold.clone()
    };
    Ok(Some(HoldStep { hold, items }))
}

/// The coordinator's expiry of a hold: an active hold whose expiry has
/// come is marked expired and its reservations undone. `Ok(None)` when the
/// hold has ended already or is not due (it was extended).
pub fn expire(
    hold: &Hold,
    states: &[KeyState],
    now_ms: u64,
) -> Result<Option<HoldStep>, Rejection> {
    if hold.state != HoldState::Active || now_ms < hold.expires_at_ms {
        return Ok(None);
    }
    let items = each_line(hold, states, |line, item| unhold(item, line.amount))?;
    let hold = Hold {
        state: HoldState::Expired,
        ..hold.clone()
    };
    Ok(Some(HoldStep { hold, items }))
}

/// Applies `step` to every line's live item, each as one write (version
/// +1); the first refusal is returned with its line's index.
fn each_line(
    hold: &Hold,
    states: &[KeyState],
    step: impl Fn(&HoldLine, &Item) -> Result<Item, Rejection>,
) -> Result<Vec<KeyState>, Rejection> {
    check_state_count(hold.lines.len(), states.len())?;
    let mut items = Vec::with_capacity(states.len());
    for (index, (line, state)) in hold.lines.iter().zip(states).enumerate() {
        let next = match state {
            KeyState::Live(item) => step(line, item).and_then(|mut next| {
                next.version = state.next_version()?;
                Ok(KeyState::Live(next))
            }),
            _ => Err(Rejection::NotFound {
                key: line.key.clone(),
            }),
        };
        items.push(next.map_err(|rejection| rejection.at_line(index))?);
    }
    Ok(items)
}

/// `item` with `amount` taken out of `reserved` and `held`. Refused, not
/// wrapped, if the hold's units are not there: the caller passed states
/// that do not match the hold.
fn unhold(item: &Item, amount: u64) -> Result<Item, Rejection> {
    let (Some(reserved), Some(held)) = (
        item.reserved.checked_sub(amount),
        item.held.checked_sub(amount),
    ) else {
        return Err(Rejection::InsufficientReserved {
            reserved: item.held,
            requested: amount,
        });
    };
    Ok(Item {
        reserved,
        held,
        ..item.clone()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::lock::Lock;

    fn key(sku: &str) -> ItemKey {
        ItemKey::new("s1", sku).unwrap()
    }

    /// A live item with `quantity`, `reserved` and `held`, at version 1.
    fn item(sku: &str, quantity: u64, reserved: u64, held: u64) -> KeyState {
        KeyState::Live(Item {
            reserved,
            held,
            ..Item::new(&key(sku), "Milk", quantity, 1)
        })
    }

    fn request(lines: &[(&str, u64)], ttl_ms: u64) -> NewHold {
        NewHold {
            id: "h1".into(),
            owner: "cart-1".into(),
            lines: lines
                .iter()
                .map(|(sku, amount)| HoldLine {
                    key: key(sku),
                    amount: *amount,
                })
                .collect(),
            ttl_ms,
        }
    }

    /// `(quantity, reserved, held, version)` of each item.
    fn counts(items: &[KeyState]) -> Vec<(u64, u64, u64, u64)> {
        items
            .iter()
            .filter_map(KeyState::item)
            .map(|i| (i.quantity, i.reserved, i.held, i.version))
            .collect()
    }

    fn active(expires_at_ms: u64) -> Hold {
        let step = create(
            &request(&[("a", 2), ("b", 1)], 1_000),
            &[item("a", 5, 0, 0), item("b", 5, 0, 0)],
            &LockTokens::new(),
            expires_at_ms - 1_000,
        );
        step.unwrap().hold
    }

    #[test]
    fn create_reserves_every_line_or_none() {
        let none = LockTokens::new();
        type Case = (
            NewHold,
            Vec<KeyState>,
            Result<Vec<(u64, u64, u64, u64)>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                request(&[("a", 2), ("b", 5)], 60_000),
                vec![item("a", 5, 1, 0), item("b", 5, 0, 0)],
                Ok(vec![(5, 3, 2, 2), (5, 5, 5, 2)]),
            ),
            (
                request(&[("a", 2), ("b", 6)], 60_000),
                vec![item("a", 5, 0, 0), item("b", 5, 0, 0)],
                Err("line 1: insufficient stock: 6 requested, 5 available"),
            ),
            (
                request(&[("a", 1), ("b", 1)], 60_000),
                vec![item("a", 5, 0, 0), KeyState::Deleted { version: 3 }],
                Err("line 1: item s1/b does not exist"),
            ),
            (
                request(&[("a", 1), ("a", 1)], 60_000),
                vec![item("a", 5, 0, 0), item("a", 5, 0, 0)],
                Err("line 1: invalid key: s1/a appears twice"),
            ),
            (
                request(&[("a", 0)], 60_000),
                vec![item("a", 5, 0, 0)],
                Err("line 0: invalid amount"),
            ),
            (
                request(&[("a", 1)], 999),
                vec![item("a", 5, 0, 0)],
                Err("invalid ttl"),
            ),
            (
                request(&[("a", 1)], MAX_TTL_MS + 1),
                vec![item("a", 5, 0, 0)],
                Err("invalid ttl"),
            ),
            (request(&[], 60_000), vec![], Err("invalid lines")),
            (
                request(&[("a", 1)], 60_000),
                vec![],
                Err("1 lines came with 0 item states"),
            ),
        ];
        for (request, states, want) in cases {
            let got = create(&request, &states, &none, 0);
            match (&got, &want) {
                (Ok(step), Ok(want)) => {
                    assert_eq!(&counts(&step.items), want);
                    assert_eq!(step.hold.state, HoldState::Active);
                    assert_eq!(step.hold.expires_at_ms, request.ttl_ms);
                }
                (Err(err), Err(text)) => assert!(err.to_string().contains(text), "{err}"),
                _ => panic!("{request:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_locked_line_needs_its_token() {
        let KeyState::Live(mut locked) = item("b", 5, 0, 0) else {
            unreachable!()
        };
        locked.lock = Some(Lock {
            holder: "counter-7".into(),
            token: 1,
            expires_at_ms: 100,
        });
        let states = [item("a", 5, 0, 0), KeyState::Live(locked)];
        let request = request(&[("a", 1), ("b", 1)], 60_000);
        let err = create(&request, &states, &LockTokens::new(), 0).unwrap_err();
        assert_eq!(err.line(), Some(1));
        assert!(matches!(err.cause(), Rejection::Locked { .. }), "{err}");
        let tokens = LockTokens::from([(key("b"), 1)]);
        assert!(create(&request, &states, &tokens, 0).is_ok());
        // Past the lease the lock no longer counts, and neither does its token.
        assert!(create(&request, &states, &LockTokens::new(), 100).is_ok());
        let err = create(&request, &states, &tokens, 100).unwrap_err();
        assert_eq!(err.cause(), &Rejection::LockLost { token: 1 });
    }

    #[test]
    fn each_ending_happens_once() {
        let none = LockTokens::new();
        let hold = active(10_000);
        let held = [item("a", 5, 2, 2), item("b", 5, 1, 1)];

        let fulfilled = fulfil(&hold, &held, &none, 9_999).unwrap();
        assert_eq!(counts(&fulfilled.items), vec![(3, 0, 0, 2), (4, 0, 0, 2)]);
        assert_eq!(fulfilled.hold.state, HoldState::Fulfilled);
        let after = &fulfilled.items;
        let gone = |state| Rejection::HoldGone {
            id: "h1".into(),
            state,
        };
        assert_eq!(
            fulfil(&fulfilled.hold, after, &none, 0),
            Err(gone(HoldState::Fulfilled))
        );
        assert_eq!(
            release(&fulfilled.hold, after, &none, 0),
            Err(gone(HoldState::Fulfilled))
        );
        assert_eq!(expire(&fulfilled.hold, after, 20_000), Ok(None));

        let released = release(&hold, &held, &none, 20_000).unwrap().unwrap();
        assert_eq!(counts(&released.items), vec![(5, 0, 0, 2), (5, 0, 0, 2)]);
        assert_eq!(released.hold.state, HoldState::Released);
        let after = &released.items;
        assert_eq!(release(&released.hold, after, &none, 0), Ok(None));
        assert_eq!(
            fulfil(&released.hold, after, &none, 0),
            Err(gone(HoldState::Released))
        );
        assert_eq!(expire(&released.hold, after, 20_000), Ok(None));

        assert_eq!(expire(&hold, &held, 9_999), Ok(None), "not due yet");
        let expired = expire(&hold, &held, 10_000).unwrap().unwrap();
        assert_eq!(counts(&expired.items), vec![(5, 0, 0, 2), (5, 0, 0, 2)]);
        assert_eq!(expired.hold.state, HoldState::Expired);
        assert_eq!(release(&expired.hold, &expired.items, &none, 0), Ok(None));
    }

    #[test]
    fn an_active_hold_past_its_expiry_cannot_be_fulfilled_or_extended() {
        let hold = active(10_000);
        let held = [item("a", 5, 2, 2), item("b", 5, 1, 1)];
        let gone = Err(Rejection::HoldGone {
            id: "h1".into(),
            state: HoldState::Expired,
        });
        assert_eq!(
            fulfil(&hold, &held, &LockTokens::new(), 10_000).map(|s| s.hold),
            gone
        );
        assert_eq!(extend(&hold, 5_000, 10_000), gone);
        let extended = extend(&hold, 5_000, 9_000).unwrap();
        assert_eq!(extended.expires_at_ms, 14_000);
        assert_eq!(expire(&extended, &held, 10_000), Ok(None));
        assert!(extend(&hold, 999, 9_000).is_err());
    }

    #[test]
    fn states_that_do_not_match_the_hold_are_refused() {
        let hold = active(10_000);
        let unheld = [item("a", 5, 2, 0), item("b", 5, 1, 1)];
        let err = release(&hold, &unheld, &LockTokens::new(), 0).unwrap_err();
        assert_eq!(err.line(), Some(0), "{err}");
        let err = fulfil(&hold, &unheld[..1], &LockTokens::new(), 0).unwrap_err();
        assert!(
            err.to_string().contains("2 lines came with 1 item states"),
            "{err}"
        );
    }
}
