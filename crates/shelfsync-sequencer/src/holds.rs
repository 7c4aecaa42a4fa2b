//! Hold steps (SPEC §5 "Holds"), decided by [`shelfsync_core::hold`]
//! against the view; [`super::steps`] commits them. A line's change names
//! the hold ([`Op::Hold`], [`Op::HoldFulfil`], [`Op::HoldRelease`],
//! [`Op::HoldExpire`]).

use shelfsync_core::hold::{self, HoldStep, NewHold};
use shelfsync_core::{Hold, KeyState, Op};
use shelfsync_ledger::{Action, Object};
use shelfsync_proto::WireError;

use super::steps::{Outcome, not_found, refused, tokens};
use super::{Entry, View, state_of};

/// Decides a hold step at `now_ms`, the group's head at `head`.
pub(super) fn decide(
    action: &Action,
    view: &View,
    head: u64,
    now_ms: u64,
) -> Result<Outcome, WireError> {
    // The hold a step names, and its lines' states in line order.
    let existing = |id: &str| -> Result<(Hold, Vec<KeyState>), WireError> {
        let Some(Some(hold)) = view.holds.get(id) else {
            return Err(not_found("hold", id));
        };
        let states = hold.lines.iter().map(|l| state_of(view, &l.key)).collect();
        Ok((hold.clone(), states))
    };
    let unchanged = |hold: Hold| Outcome::unchanged(Object::Hold(hold));
    match action {
        Action::HoldCreate {
            owner,
            lines,
            ttl_ms,
            lock_token,
        } => {
            let request = NewHold {
                id: format!("h{}", head + 1),
                owner: owner.clone(),
                lines: lines.clone(),
                ttl_ms: *ttl_ms,
            };
            let states: Vec<KeyState> = lines.iter().map(|l| state_of(view, &l.key)).collect();
            let tokens = tokens(*lock_token, &states);
            let step = hold::create(&request, &states, &tokens, now_ms);
            let step = step.map_err(|r| refused(&r, &states))?;
            Ok(outcome(None, step, states, |hold, amount| Op::Hold {
                hold,
                amount,
            }))
        }
        Action::HoldExtend { id, ttl_ms } => {
            let (hold, _) = existing(id)?;
            let after = hold::extend(&hold, *ttl_ms, now_ms).map_err(|r| refused(&r, &[]))?;
            Ok(Outcome {
                before: Some(Object::Hold(hold)),
                after: Object::Hold(after),
                entries: Vec::new(),
            })
        }
        Action::HoldFulfil { id, lock_token } => {
            let (hold, states) = existing(id)?;
            let step = hold::fulfil(&hold, &states, &tokens(*lock_token, &states), now_ms);
            let step = step.map_err(|r| refused(&r, &states))?;
            Ok(outcome(Some(hold), step, states, |hold, amount| {
                Op::HoldFulfil { hold, amount }
            }))
        }
        Action::HoldRelease { id, lock_token } => {
            let (hold, states) = existing(id)?;
            let step = hold::release(&hold, &states, &tokens(*lock_token, &states), now_ms);
            match step.map_err(|r| refused(&r, &states))? {
                Some(step) => Ok(outcome(Some(hold), step, states, |hold, amount| {
                    Op::HoldRelease { hold, amount }
                })),
                None => Ok(unchanged(hold)),
            }
        }
        Action::HoldExpire { id } => {
            let (hold, states) = existing(id)?;
            match hold::expire(&hold, &states, now_ms).map_err(|r| refused(&r, &states))? {
                Some(step) => Ok(outcome(Some(hold), step, states, |hold, amount| {
                    Op::HoldExpire { hold, amount }
                })),
                None => Ok(unchanged(hold)),
            }
        }
        Action::TransferCreate { .. }
        | Action::TransferReceive { .. }
        | Action::TransferClose { .. } => Err(WireError::new(
            shelfsync_proto::ErrorCode::Internal,
            "a transfer step reached the hold rules",
        )),
    }
}

/// The entries of `step`: each line's key, the op naming the hold, and the
/// key's states before (`before`, in line order) and after.
fn outcome(
    prior: Option<Hold>,
    step: HoldStep,
    before: Vec<KeyState>,
    op: impl Fn(String, u64) -> Op,
) -> Outcome {
    let HoldStep { hold, items } = step;
    let entries = hold
        .lines
        .iter()
        .zip(before)
        .zip(items)
        .map(|((line, before), after)| Entry {
            key: line.key.clone(),
            op: op(hold.id.clone(), line.amount),
            before,
            after,
        })
        .collect();
    Outcome {
        before: prior.map(Object::Hold),
        after: Object::Hold(hold),
        entries,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shelfsync_core::{HoldLine, Item, ItemKey};

    use shelfsync_core::HoldState;
    use shelfsync_proto::ErrorCode;

    use super::super::{Answer, Request, StepCommand, decide};
    use super::*;
    use shelfsync_ledger::{ItemRecord, Recorded};

    const NOW: u64 = 1_000_000;
    const TTL: u64 = 60_000;

    fn key(sku: &str) -> ItemKey {
        ItemKey::new("s1", sku).unwrap()
    }

    /// A view with `(sku, quantity, reserved, held)` items at version 1,
    /// seq 5, and `holds`.
    fn view(items: &[(&str, u64, u64, u64)], holds: Vec<Hold>) -> View {
        let mut view = View::default();
        for (sku, quantity, reserved, held) in items {
            let item = Item {
                reserved: *reserved,
                held: *held,
                ..Item::new(&key(sku), "n", *quantity, 1)
            };
            let record = ItemRecord {
                state: KeyState::Live(item),
                seq: 5,
            };
            view.items.insert(key(sku), Some(record));
        }
        for hold in holds {
            view.holds.insert(hold.id.clone(), Some(hold));
        }
        view
    }

    fn hold(id: &str, lines: &[(&str, u64)], expires_at_ms: u64) -> Hold {
        Hold {
            id: id.into(),
            owner: "cart-1".into(),
            lines: lines
                .iter()
                .map(|(sku, amount)| HoldLine {
                    key: key(sku),
                    amount: *amount,
                })
                .collect(),
            expires_at_ms,
            state: HoldState::Active,
        }
    }

    fn step(idem: &str, action: Action) -> Request {
        Request::Step(StepCommand {
            store: "store-1".into(),
            idempotency_key: idem.into(),
            action,
        })
    }

    fn create(lines: &[(&str, u64)]) -> Action {
        Action::HoldCreate {
            owner: "cart-1".into(),
            lines: hold("", lines, 0).lines,
            ttl_ms: TTL,
            lock_token: None,
        }
    }

    fn id(action: fn(String) -> Action) -> Action {
        action("h3".into())
    }

    /// `(state, [(sku, quantity, reserved, held)])` after the answer, or its
    /// error code.
    type Short = Result<(HoldState, Vec<(String, u64, u64, u64)>), ErrorCode>;

    fn short(answer: &Answer) -> Short {
        match answer {
            Answer::Stepped {
                object: Object::Hold(hold),
                changes,
                ..
            } => Ok((
                hold.state,
                changes
                    .iter()
                    .filter_map(|(_, s)| s.item())
                    .map(|i| (i.sku.clone(), i.quantity, i.reserved, i.held))
                    .collect(),
            )),
            Answer::Refused(err) => Err(err.code),
            other => panic!("not a step's answer: {other:?}"),
        }
    }

    fn counts(rows: &[(&str, u64, u64, u64)]) -> Vec<(String, u64, u64, u64)> {
        rows.iter()
            .map(|(sku, q, r, h)| (sku.to_string(), *q, *r, *h))
            .collect()
    }

    #[test]
    fn steps_decide_as_the_core_rules_say() {
        let fulfil = |id: String| Action::HoldFulfil {
            id,
            lock_token: None,
        };
        let release = |id: String| Action::HoldRelease {
            id,
            lock_token: None,
        };
        let expire = |id: String| Action::HoldExpire { id };
        let extend = |id: String| Action::HoldExtend { id, ttl_ms: TTL };
        let active = || hold("h3", &[("milk", 2), ("eggs", 1)], NOW + 10);
        let due = || hold("h3", &[("milk", 2), ("eggs", 1)], NOW);
        let stocked = [("milk", 10, 2, 2), ("eggs", 5, 1, 1)];
        let cases: Vec<(&str, View, Vec<Request>, Vec<Short>)> = vec![
            (
                "a create reserves and holds every line",
                view(&[("milk", 10, 0, 0), ("eggs", 5, 1, 0)], vec![]),
                vec![step("a", create(&[("milk", 2), ("eggs", 1)]))],
                vec![Ok((
                    HoldState::Active,
                    counts(&[("milk", 10, 2, 2), ("eggs", 5, 2, 1)]),
                ))],
            ),
            (
                "a create with one short line is refused whole",
                view(&[("milk", 10, 0, 0), ("eggs", 5, 5, 0)], vec![]),
                vec![step("a", create(&[("milk", 2), ("eggs", 1)]))],
                vec![Err(ErrorCode::InsufficientStock)],
            ),
            (
                "a fulfil takes the units out of stock, once",
                view(&stocked, vec![active()]),
                vec![step("a", id(fulfil)), step("b", id(fulfil))],
                vec![
                    Ok((
                        HoldState::Fulfilled,
                        counts(&[("milk", 8, 0, 0), ("eggs", 4, 0, 0)]),
                    )),
                    Err(ErrorCode::Gone),
                ],
            ),
            (
                "an expired hold cannot be fulfilled but can be released",
                view(&stocked, vec![due()]),
                vec![step("a", id(fulfil)), step("b", id(release))],
                vec![
                    Err(ErrorCode::Gone),
                    Ok((
                        HoldState::Released,
                        counts(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)]),
                    )),
                ],
            ),
            (
                "a second release changes nothing",
                view(&stocked, vec![active()]),
                vec![step("a", id(release)), step("b", id(release))],
                vec![
                    Ok((
                        HoldState::Released,
                        counts(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)]),
                    )),
                    Ok((HoldState::Released, vec![])),
                ],
            ),
            (
                "a hold past its expiry is not extended, and expires",
                view(&stocked, vec![due()]),
                vec![step("a", id(extend)), step("coordinator", id(expire))],
                vec![
                    Err(ErrorCode::Gone),
                    Ok((
                        HoldState::Expired,
                        counts(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)]),
                    )),
                ],
            ),
            (
                "an extension keeps an unexpired hold, then expiry is not due",
                view(&stocked, vec![active()]),
                vec![step("a", id(extend)), step("coordinator", id(expire))],
                vec![
                    Ok((HoldState::Active, vec![])),
                    Ok((HoldState::Active, vec![])),
                ],
            ),
            (
                "a due expiry gives the units back",
                view(&stocked, vec![due()]),
                vec![step("coordinator", id(expire))],
                vec![Ok((
                    HoldState::Expired,
                    counts(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)]),
                ))],
            ),
            (
                "a step on an unknown hold is not found",
                view(&stocked, vec![]),
                vec![step("a", id(fulfil))],
                vec![Err(ErrorCode::NotFound)],
            ),
        ];
        for (name, mut view, requests, want) in cases {
            let decision = decide(&requests, &mut view, 7, NOW, 10_000);
            let got: Vec<Short> = decision.answers.iter().map(short).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_create_is_one_commit_with_its_hold_and_record() {
        let mut view = view(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)], vec![]);
        let requests = [step("a", create(&[("milk", 2), ("eggs", 1)]))];
        let decision = decide(&requests, &mut view, 7, NOW, 10_000);
        let group = &decision.group;
        let seqs: Vec<(u64, u64, &str)> = group
            .writes
            .iter()
            .map(|w| (w.change.seq, w.change.commit_end, w.change.op.kind()))
            .collect();
        assert_eq!(seqs, vec![(8, 9, "hold"), (9, 9, "hold")]);
        assert_eq!(group.head, 9);
        assert_eq!(group.holds.len(), 1);
        let written = &group.holds[0];
        assert_eq!(
            (written.hold.id.as_str(), written.prior_expiry),
            ("h8", None)
        );
        assert_eq!(written.hold.expires_at_ms, NOW + TTL);
        let recorded: Vec<&Recorded> = group
            .idempotency
            .iter()
            .map(|e| &e.record.outcome)
            .collect();
        assert!(
            matches!(recorded[..], [Recorded::Step { id, .. }] if id == "h8"),
            "{recorded:?}"
        );
    }

    #[test]
    fn a_retry_gets_the_same_hold_and_another_request_is_refused() {
        let mut view = view(&[("milk", 10, 0, 0)], vec![]);
        let requests = [
            step("a", create(&[("milk", 2)])),
            step("a", create(&[("milk", 2)])),
            step("a", create(&[("milk", 3)])),
        ];
        let decision = decide(&requests, &mut view, 7, NOW, 10_000);
        let ids: Vec<Result<(String, bool), ErrorCode>> = decision
            .answers
            .iter()
            .map(|answer| match answer {
                Answer::Stepped {
                    object, replayed, ..
                } => Ok((object.id().to_string(), *replayed)),
                Answer::Refused(err) => Err(err.code),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                Ok(("h8".into(), false)),
                Ok(("h8".into(), true)),
                Err(ErrorCode::IdempotencyKeyReused),
            ]
        );
        // One hold, one commit: the retry wrote nothing.
        assert_eq!(decision.group.writes.len(), 1);
        assert_eq!(decision.group.holds.len(), 1);
    }

    #[test]
    fn the_coordinators_expiry_is_not_recorded_and_moves_the_deadline() {
        let stocked = [("milk", 10, 2, 2)];
        let mut view = view(&stocked, vec![hold("h3", &[("milk", 2)], NOW)]);
        let requests = [Request::Step(crate::hold_expiry("h3".into()))];
        let decision = decide(&requests, &mut view, 7, NOW, 10_000);
        assert!(decision.group.idempotency.is_empty());
        let written = &decision.group.holds[0];
        assert_eq!(written.prior_expiry, Some(NOW));
        assert_eq!(written.hold.state, HoldState::Expired);
        assert_eq!(decision.group.writes[0].change.store, "coordinator");
    }

    #[test]
    fn a_lock_token_reaches_only_the_locked_lines() {
        let mut locked = view(&[("milk", 10, 0, 0), ("eggs", 5, 0, 0)], vec![]);
        if let Some(Some(record)) = locked.items.get_mut(&key("milk"))
            && let KeyState::Live(item) = &mut record.state
        {
            item.lock = Some(shelfsync_core::Lock {
                holder: "counter-7".into(),
                token: 1,
                expires_at_ms: NOW + 1_000,
            });
        }
        let with = |token| Action::HoldCreate {
            owner: "cart-1".into(),
            lines: hold("", &[("milk", 1), ("eggs", 1)], 0).lines,
            ttl_ms: TTL,
            lock_token: token,
        };
        let requests = [
            step("a", with(None)),
            step("b", with(Some(2))),
            step("c", with(Some(1))),
        ];
        let decision = decide(&requests, &mut locked, 7, NOW, 10_000);
        let codes: Vec<Option<ErrorCode>> = decision
            .answers
            .iter()
            .map(|a| match a {
                Answer::Refused(err) => Some(err.code),
                _ => None,
            })
            .collect();
        assert_eq!(
            codes,
            vec![Some(ErrorCode::Locked), Some(ErrorCode::LockLost), None]
        );
        // A locked refusal is not recorded: the retry is decided anew.
        let keys: Vec<&str> = decision
            .group
            .idempotency
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, vec!["b", "c"]);
    }
}
