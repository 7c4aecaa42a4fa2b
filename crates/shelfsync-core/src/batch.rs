//! Batches: several single-key ops of the data model, applied all or none.
//!
//! [`decide`] runs [`crate::op::apply`] on each line against its key's
//! current state, with the line's expected version and the key's lock
//! token, and returns every line's next state, or the first refusal as
//! [`Rejection::Line`]. Keys are distinct, so the lines do not see each
//! other's effects and their order changes nothing but which refusal is
//! reported first.
//!
//! Only the ops of the data model (create, set, add, remove, reserve,
//! release, fulfil, delete) may be batched; lock ops go through their own
//! requests. Committing the result as one group is the coordinator's.

use crate::error::Rejection;
use crate::item::{ItemKey, KeyState, check_state_count, validate_line_count};
use crate::lock::LockTokens;
use crate::op::{Op, Precondition, apply};

/// One line of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLine {
    /// The key it writes.
    pub key: ItemKey,
    /// What it does there.
    pub op: Op,
    /// The version the client expects the key to have, if any.
    pub expected_version: Option<u64>,
}

/// Decides a batch at `now_ms`: 1..=100 lines with distinct keys, `states`
/// their keys' current states in line order, `tokens` the lock tokens the
/// request carries. Returns every line's next state in line order.
pub fn decide(
    lines: &[BatchLine],
    states: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<Vec<KeyState>, Rejection> {
    validate_line_count(lines.len())?;
    check_state_count(lines.len(), states.len())?;
    let mut next = Vec::with_capacity(lines.len());
    for (index, (line, state)) in lines.iter().zip(states).enumerate() {
        let decided = check_line(lines, index, line).and_then(|()| {
            let precondition = Precondition {
                expected_version: line.expected_version,
                lock_token: tokens.get(&line.key).copied(),
            };
            apply(&line.key, state, &line.op, precondition, now_ms)
        });
        next.push(decided.map_err(|rejection| rejection.at_line(index))?);
    }
    Ok(next)
}

/// What a batch asks of a line beyond `apply`: a data-model op on a key no
/// earlier line named.
fn check_line(lines: &[BatchLine], index: usize, line: &BatchLine) -> Result<(), Rejection> {
    if line.op.is_lock_op() {
        return Err(Rejection::InvalidField {
            field: "op",
            reason: format!("{} is not allowed in a batch", line.op.kind()),
        });
    }
    if let Some(first) = lines[..index].iter().position(|l| l.key == line.key) {
        return Err(Rejection::InvalidField {
            field: "key",
            reason: format!(
                "{} appears twice in the batch, first on line {first}",
                line.key
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::item::Item;
    use crate::lock::Lock;

    fn key(sku: &str) -> ItemKey {
        ItemKey::new("s1", sku).unwrap()
    }

    fn live(sku: &str, quantity: u64) -> KeyState {
        KeyState::Live(Item::new(&key(sku), "Milk", quantity, 1))
    }

    fn line(sku: &str, op: Op) -> BatchLine {
        BatchLine {
            key: key(sku),
            op,
            expected_version: None,
        }
    }

    fn quantities(states: &[KeyState]) -> Vec<Option<u64>> {
        states
            .iter()
            .map(|s| s.item().map(|i| i.quantity))
            .collect()
    }

    #[test]
    fn every_line_or_none() {
        let create = Op::Create {
            name: "Oats".into(),
            quantity: 3,
        };
        type Case = (
            Vec<BatchLine>,
            Vec<KeyState>,
            Result<Vec<Option<u64>>, (usize, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![line("a", Op::Add { amount: 2 }), line("b", create.clone())],
                vec![live("a", 5), KeyState::Absent],
                Ok(vec![Some(7), Some(3)]),
            ),
            (
                vec![
                    line("a", Op::Add { amount: 2 }),
                    line("b", Op::Remove { amount: 6 }),
                ],
                vec![live("a", 5), live("b", 5)],
                Err((1, "insufficient stock")),
            ),
            (
                vec![
                    line("a", Op::Add { amount: 2 }),
                    line("a", Op::Add { amount: 1 }),
                ],
                vec![live("a", 5), live("a", 5)],
                Err((1, "appears twice in the batch, first on line 0")),
            ),
            (
                vec![line(
                    "a",
                    Op::LockGrant {
                        holder: "c1".into(),
                        ttl_ms: 5_000,
                    },
                )],
                vec![live("a", 5)],
                Err((0, "lock_grant is not allowed")),
            ),
            (
                vec![BatchLine {
                    expected_version: Some(2),
                    ..line("a", Op::Add { amount: 1 })
                }],
                vec![live("a", 5)],
                Err((0, "version mismatch")),
            ),
            (
                vec![line("a", Op::Delete)],
                vec![live("a", 5)],
                Err((0, "needs the expected version")),
            ),
        ];
        for (lines, states, want) in cases {
            let got = decide(&lines, &states, &LockTokens::new(), 0);
            match (&got, want) {
                (Ok(next), Ok(want)) => assert_eq!(quantities(next), want),
                (Err(err), Err((index, text))) => {
                    assert_eq!(err.line(), Some(index), "{err}");
                    assert!(err.to_string().contains(text), "{err}");
                }
                (got, want) => panic!("{lines:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn line_counts_are_bounded() {
        let err = decide(&[], &[], &LockTokens::new(), 0).unwrap_err();
        assert!(err.to_string().contains("invalid lines"), "{err}");
        let many: Vec<_> = (0..101)
            .map(|i| line(&format!("k{i}"), Op::Add { amount: 1 }))
            .collect();
        let states = vec![KeyState::Absent; many.len()];
        assert!(decide(&many, &states, &LockTokens::new(), 0).is_err());
    }

    #[test]
    fn locked_lines_need_their_token() {
        let KeyState::Live(mut item) = live("a", 5) else {
            unreachable!()
        };
        item.lock = Some(Lock {
            holder: "c1".into(),
            token: 1,
            expires_at_ms: 100,
        });
        let states = vec![KeyState::Live(item), live("b", 5)];
        let lines = vec![
            line("a", Op::Add { amount: 1 }),
            line("b", Op::Add { amount: 1 }),
        ];
        let err = decide(&lines, &states, &LockTokens::new(), 0).unwrap_err();
        assert!(matches!(err.cause(), Rejection::Locked { .. }), "{err}");
        let tokens = LockTokens::from([(key("a"), 1)]);
        assert_eq!(
            quantities(&decide(&lines, &states, &tokens, 0).unwrap()),
            vec![Some(6), Some(6)]
        );
        let wrong = LockTokens::from([(key("b"), 1)]);
        let err = decide(&lines, &states, &wrong, 0).unwrap_err();
        assert!(matches!(err.cause(), Rejection::Locked { .. }), "{err}");
    }
}
