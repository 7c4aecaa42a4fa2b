//! Transfer steps (SPEC §5 "Transfers"), decided by
//! [`shelfsync_core::transfer`] against the view; [`super::steps`] commits
//! them. A shipment's changes at `from` are [`Op::TransferShip`], a
//! receipt's at `to` [`Op::TransferReceive`]; closing writes no item.

use shelfsync_core::transfer::{self, NewTransfer, TransferAmount, TransferStep};
use shelfsync_core::{ItemKey, KeyState, Op, Transfer};
use shelfsync_ledger::{Action, Object};
use shelfsync_proto::{ErrorCode, WireError};

use super::steps::{Outcome, not_found, refused, tokens};
use super::{Entry, View, state_of};

/// The keys of `lines` at `location`, in line order.
pub(crate) fn keys(location: &str, lines: &[TransferAmount]) -> Vec<ItemKey> {
    let key = |sku: &str| ItemKey {
        location: location.to_string(),
        sku: sku.to_string(),
    };
    lines.iter().map(|line| key(&line.sku)).collect()
}

/// Decides a transfer step at `now_ms`, the group's head at `head`.
pub(super) fn decide(
    action: &Action,
    view: &View,
    head: u64,
    now_ms: u64,
) -> Result<Outcome, WireError> {
    let existing = |id: &str| -> Result<Transfer, WireError> {
        match view.transfers.get(id) {
            Some(Some(transfer)) => Ok(transfer.clone()),
            _ => Err(not_found("transfer", id)),
        }
    };
    let states = |keys: &[ItemKey]| -> Vec<KeyState> {
        keys.iter().map(|key| state_of(view, key)).collect()
    };
    match action {
        Action::TransferCreate {
            from,
            to,
            lines,
            lock_token,
        } => {
            let request = NewTransfer {
                id: format!("t{}", head + 1),
                from: from.clone(),
                to: to.clone(),
                lines: lines.clone(),
            };
            let keys = keys(from, lines);
            let before = states(&keys);
            let step = transfer::create(&request, &before, &tokens(*lock_token, &before), now_ms);
            let step = step.map_err(|r| refused(&r, &before))?;
            Ok(outcome(None, step, keys, before, |transfer, amount| {
                Op::TransferShip { transfer, amount }
            }))
        }
        Action::TransferReceive {
            id,
            lines,
            lock_token,
        } => {
            let shipped = existing(id)?;
            let keys = keys(&shipped.to, lines);
            let before = states(&keys);
            let tokens = tokens(*lock_token, &before);
            let step = transfer::receive(&shipped, lines, &before, &tokens, now_ms);
            let step = step.map_err(|r| refused(&r, &before))?;
            Ok(outcome(
                Some(shipped),
                step,
                keys,
                before,
                |transfer, amount| Op::TransferReceive { transfer, amount },
            ))
        }
        Action::TransferClose { id } => {
            let open = existing(id)?;
            let closed = transfer::close(&open).map_err(|r| refused(&r, &[]))?;
            Ok(Outcome {
                before: Some(Object::Transfer(open)),
                after: Object::Transfer(closed),
                entries: Vec::new(),
            })
        }
        _ => Err(WireError::new(
            ErrorCode::Internal,
            "a hold step reached the transfer rules",
        )),
    }
}

/// The entries of `step`: each written key, the op naming the transfer
/// with the line's amount, and the key's states before and after.
fn outcome(
    prior: Option<Transfer>,
    step: TransferStep,
    keys: Vec<ItemKey>,
    before: Vec<KeyState>,
    op: impl Fn(String, u64) -> Op,
) -> Outcome {
    let TransferStep { transfer, items } = step;
    let entries = keys
        .into_iter()
        .zip(before)
        .zip(items)
        .map(|((key, before), after)| {
            // The amount is what the line moved: the change in quantity.
            let amount = after
                .item()
                .map(|a| a.quantity)
                .unwrap_or_default()
                .abs_diff(before.item().map_or(0, |b| b.quantity));
            Entry {
                key,
                op: op(transfer.id.clone(), amount),
                before,
                after,
            }
        })
        .collect();
    Outcome {
        before: prior.map(Object::Transfer),
        after: Object::Transfer(transfer),
        entries,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shelfsync_core::{Item, TransferState};

    use super::super::{Answer, Request, StepCommand, decide};
    use super::*;
    use shelfsync_ledger::ItemRecord;

    const NOW: u64 = 1_000_000;

    fn amounts(lines: &[(&str, u64)]) -> Vec<TransferAmount> {
        lines
            .iter()
            .map(|(sku, amount)| TransferAmount {
                sku: sku.to_string(),
                amount: *amount,
            })
            .collect()
    }

    fn step(idem: &str, action: Action) -> Request {
        Request::Step(StepCommand {
            store: "store-1".into(),
            idempotency_key: idem.into(),
            action,
        })
    }

    /// A view with `(location, sku, quantity)` items at version 1, seq 5.
    fn view(items: &[(&str, &str, u64)]) -> View {
        let mut view = View::default();
        for (location, sku, quantity) in items {
            let key = ItemKey::new(*location, *sku).unwrap();
            let item = Item::new(&key, format!("Item {sku}"), *quantity, 1);
            let record = ItemRecord {
                state: KeyState::Live(item),
                seq: 5,
            };
            view.items.insert(key, Some(record));
        }
        view
    }

    /// Per committed change: `(location, sku, op, quantity after)`.
    fn writes(decision: &super::super::Decision) -> Vec<(String, String, &'static str, u64)> {
        let writes = decision.group.writes.iter().map(|w| {
            let quantity = w.change.state.item().map_or(0, |i| i.quantity);
            let key = &w.change.key;
            (
                key.location.clone(),
                key.sku.clone(),
                w.change.op.kind(),
                quantity,
            )
        });
        writes.collect()
    }

    #[test]
    fn ship_receive_in_parts_and_close_with_a_loss() {
        let mut view = view(&[("s1", "a", 10), ("s1", "b", 4), ("s2", "b", 1)]);
        let ship = Action::TransferCreate {
            from: "s1".into(),
            to: "s2".into(),
            lines: amounts(&[("a", 6), ("b", 4)]),
            lock_token: None,
        };
        let decision = decide(&[step("a", ship)], &mut view, 7, NOW, 10_000);
        let s = |x: &str| x.to_string();
        assert_eq!(
            writes(&decision),
            [
                (s("s1"), s("a"), "transfer_ship", 4),
                (s("s1"), s("b"), "transfer_ship", 0)
            ]
        );
        assert!(matches!(
            &decision.answers[..],
            [Answer::Stepped { object: Object::Transfer(t), .. }] if t.id == "t8"
        ));
        assert_eq!(decision.group.transfers.len(), 1);

        let receive = |lines| Action::TransferReceive {
            id: "t8".into(),
            lines: amounts(lines),
            lock_token: None,
        };
        let close = Action::TransferClose { id: "t8".into() };
        let requests = [
            step("b", receive(&[("a", 2), ("b", 4)])),
            step("c", receive(&[("a", 5)])),
            step("d", receive(&[("a", 3)])),
            step("e", close.clone()),
            step("f", close),
        ];
        let decision = decide(&requests, &mut view, 9, NOW, 10_000);
        // a absent at s2: created with the source's name.
        assert_eq!(
            writes(&decision),
            [
                (s("s2"), s("a"), "transfer_receive", 2),
                (s("s2"), s("b"), "transfer_receive", 5),
                (s("s2"), s("a"), "transfer_receive", 5)
            ]
        );
        let codes: Vec<Option<ErrorCode>> = decision
            .answers
            .iter()
            .map(|a| match a {
                Answer::Refused(err) => Some(err.code),
                _ => None,
            })
            .collect();
        // 5 more of a is more than the 4 in transit; after the close, a
        // second close finds it closed.
        assert_eq!(
            codes,
            [
                None,
                Some(ErrorCode::OverReceipt),
                None,
                None,
                Some(ErrorCode::Gone)
            ]
        );
        let Some(Some(closed)) = view.transfers.get("t8") else {
            panic!("no transfer in the view")
        };
        assert_eq!(closed.state, TransferState::Closed);
        let lost: Vec<(u64, u64, u64)> = closed
            .lines
            .iter()
            .map(|l| (l.shipped, l.received, l.lost))
            .collect();
        assert_eq!(lost, [(6, 5, 1), (4, 4, 0)]);
        let name = decision.group.writes[0]
            .change
            .state
            .item()
            .unwrap()
            .name
            .clone();
        assert_eq!(name, "Item a");
    }

    #[test]
    fn a_shipment_short_of_stock_ships_nothing() {
        let mut view = view(&[("s1", "a", 10), ("s1", "b", 1)]);
        let ship = Action::TransferCreate {
            from: "s1".into(),
            to: "s2".into(),
            lines: amounts(&[("a", 6), ("b", 4)]),
            lock_token: None,
        };
        let decision = decide(&[step("a", ship)], &mut view, 7, NOW, 10_000);
        match &decision.answers[..] {
            [Answer::Refused(err)] => {
                assert_eq!(
                    (err.code, err.line),
                    (ErrorCode::InsufficientStock, Some(1))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(decision.group.writes.is_empty() && decision.group.transfers.is_empty());
    }
}
