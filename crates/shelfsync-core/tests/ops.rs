//! Table tests and property tests for the op algebra.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use shelfsync_core::{ItemKey, KeyState, Op, Precondition, Rejection, apply};

fn key() -> ItemKey {
    ItemKey::new("store-1", "sku-1").unwrap()
}

fn live(quantity: u64, reserved: u64, version: u64) -> KeyState {
    KeyState::Live(shelfsync_core::Item {
        location: "store-1".into(),
        sku: "sku-1".into(),
        name: "Milk".into(),
        quantity,
        reserved,
        version,
        ..Default::default()
    })
}

fn create(quantity: u64) -> Op {
    Op::Create {
        name: "Milk".into(),
        quantity,
    }
}

#[test]
fn create_starts_at_version_one_and_refuses_an_existing_key() {
    let state = apply(
        &key(),
        &KeyState::Absent,
        &create(5),
        Precondition::default(),
        0,
    )
    .unwrap();
    assert_eq!(state, live(5, 0, 1));
    let err = apply(&key(), &state, &create(5), Precondition::default(), 0).unwrap_err();
    assert!(matches!(err, Rejection::AlreadyExists { .. }), "{err:?}");
    assert_eq!(err.current().map(|i| i.version), Some(1));
}

#[test]
fn recreate_after_delete_continues_from_the_tombstone() {
    let deleted = apply(
        &key(),
        &live(0, 0, 4),
        &Op::Delete,
        Precondition::expecting(Some(4)),
        0,
    )
    .unwrap();
    assert_eq!(deleted, KeyState::Deleted { version: 5 });
    let again = apply(&key(), &deleted, &create(1), Precondition::default(), 0).unwrap();
    assert_eq!(again.version(), 6);
    let err = apply(
        &key(),
        &deleted,
        &Op::Add { amount: 1 },
        Precondition::default(),
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Rejection::NotFound { .. }));
}

#[test]
fn stock_rules() {
    type Case = (KeyState, Op, Option<u64>, Result<KeyState, &'static str>);
    let cases: Vec<Case> = vec![
        (
            live(5, 0, 1),
            Op::Add { amount: 2 },
            None,
            Ok(live(7, 0, 2)),
        ),
        (
            live(5, 0, 1),
            Op::Remove { amount: 5 },
            None,
            Ok(live(0, 0, 2)),
        ),
        (
            live(5, 1, 1),
            Op::Remove { amount: 5 },
            None,
            Err("insufficient stock"),
        ),
        (
            live(5, 1, 1),
            Op::Reserve { amount: 4 },
            None,
            Ok(live(5, 5, 2)),
        ),
        (
            live(5, 5, 1),
            Op::Reserve { amount: 1 },
            None,
            Err("insufficient stock"),
        ),
        (
            live(5, 3, 1),
            Op::Release { amount: 3 },
            None,
            Ok(live(5, 0, 2)),
        ),
        (
            live(5, 3, 1),
            Op::Release { amount: 4 },
            None,
            Err("insufficient reservation"),
        ),
        (
            live(5, 3, 1),
            Op::Fulfil { amount: 2 },
            None,
            Ok(live(3, 1, 2)),
        ),
        (
            live(5, 3, 1),
            Op::Fulfil { amount: 4 },
            None,
            Err("insufficient reservation"),
        ),
        (
            live(u64::MAX, 0, 1),
            Op::Add { amount: 1 },
            None,
            Err("quantity would overflow"),
        ),
        (
            live(5, 3, 1),
            Op::Add { amount: 0 },
            None,
            Err("invalid amount"),
        ),
        (
            live(5, 3, 1),
            Op::Add {
                amount: 1_000_000_001,
            },
            None,
            Err("invalid amount"),
        ),
        (
            live(5, 3, 2),
            Op::Add { amount: 1 },
            Some(1),
            Err("version mismatch"),
        ),
        (
            live(5, 3, 2),
            Op::Add { amount: 1 },
            Some(2),
            Ok(live(6, 3, 3)),
        ),
        (
            live(5, 3, 1),
            Op::Set {
                name: None,
                quantity: Some(2),
            },
            Some(1),
            Err("quantity 2 is below"),
        ),
        (
            live(5, 3, 1),
            Op::Set {
                name: None,
                quantity: Some(3),
            },
            Some(1),
            Ok(live(3, 3, 2)),
        ),
        (
            live(5, 3, 1),
            Op::Set {
                name: None,
                quantity: Some(3),
            },
            None,
            Err("needs the expected version"),
        ),
        (
            live(5, 3, 1),
            Op::Set {
                name: None,
                quantity: None,
            },
            Some(1),
            Err("invalid name"),
        ),
        (
            live(5, 0, 1),
            Op::Delete,
            None,
            Err("needs the expected version"),
        ),
        (
            live(5, 1, 1),
            Op::Delete,
            Some(1),
            Err("still has 1 units reserved"),
        ),
        (KeyState::Absent, Op::Delete, Some(1), Err("does not exist")),
        (
            KeyState::Absent,
            create(1),
            Some(3),
            Err("version mismatch"),
        ),
    ];
    for (state, op, expected, want) in cases {
        let got = apply(&key(), &state, &op, Precondition::expecting(expected), 0);
        match (&got, &want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{op:?} on {state:?}"),
            (Err(err), Err(text)) => assert!(
                err.to_string().contains(text),
                "{op:?} on {state:?}: {err} should contain {text:?}"
            ),
            _ => panic!("{op:?} on {state:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn set_renames_and_keeps_quantity() {
    let op = Op::Set {
        name: Some("Oat milk".into()),
        quantity: None,
    };
    let KeyState::Live(item) = apply(
        &key(),
        &live(5, 1, 3),
        &op,
        Precondition::expecting(Some(3)),
        0,
    )
    .unwrap() else {
        panic!("set must keep the item live");
    };
    assert_eq!(
        (item.name.as_str(), item.quantity, item.version),
        ("Oat milk", 5, 4)
    );
}

/// Held units belong to their holds and granted allowance to the owning
/// store: single-key ops leave both alone.
#[test]
fn held_and_allowance_are_not_for_single_key_ops() {
    let state = KeyState::Live(shelfsync_core::Item {
        reserved: 4,
        held: 3,
        allowance: 2,
        ..shelfsync_core::Item::new(&key(), "Milk", 10, 1)
    });
    // (op, expected version, quantity and reserved after, or the error text)
    type Case = (Op, Option<u64>, Result<(u64, u64), &'static str>);
    let cases: [Case; 8] = [
        (Op::Remove { amount: 4 }, None, Ok((6, 4))),
        (
            Op::Remove { amount: 5 },
            None,
            Err("5 requested, 4 available"),
        ),
        (
            Op::Reserve { amount: 5 },
            None,
            Err("5 requested, 4 available"),
        ),
        (Op::Release { amount: 1 }, None, Ok((10, 3))),
        (
            Op::Release { amount: 2 },
            None,
            Err("2 requested, 1 reserved"),
        ),
        (
            Op::Fulfil { amount: 2 },
            None,
            Err("2 requested, 1 reserved"),
        ),
        (
            Op::Set {
                name: None,
                quantity: Some(5),
            },
            Some(1),
            Err("quantity 5 is below the 4 units reserved plus 2 granted for offline sales"),
        ),
        (
            Op::Set {
                name: None,
                quantity: Some(6),
            },
            Some(1),
            Ok((6, 4)),
        ),
    ];
    for (op, expected, want) in cases {
        let got = apply(&key(), &state, &op, Precondition::expecting(expected), 0);
        match (got, want) {
            (Ok(KeyState::Live(item)), Ok(want)) => {
                assert_eq!((item.quantity, item.reserved), want, "{op:?}");
                assert_eq!((item.held, item.allowance), (3, 2), "{op:?}");
            }
            (Err(err), Err(text)) => assert!(err.to_string().contains(text), "{op:?}: {err}"),
            (got, want) => panic!("{op:?}: got {got:?}, want {want:?}"),
        }
    }
}

fn any_op() -> impl Strategy<Value = Op> {
    let amount = prop_oneof![1u64..=10, Just(1_000_000_000u64), 0u64..=2_000_000_000];
    prop_oneof![
        (0u64..=u64::MAX).prop_map(|quantity| Op::Create {
            name: "X".into(),
            quantity
        }),
        (
            proptest::option::of(0u64..=50),
            proptest::option::of(Just("Y".to_string()))
        )
            .prop_map(|(quantity, name)| Op::Set { name, quantity }),
        amount.clone().prop_map(|amount| Op::Add { amount }),
        amount.clone().prop_map(|amount| Op::Remove { amount }),
        amount.clone().prop_map(|amount| Op::Reserve { amount }),
        amount.clone().prop_map(|amount| Op::Release { amount }),
        amount.prop_map(|amount| Op::Fulfil { amount }),
        Just(Op::Delete),
    ]
}

proptest! {
    /// Any sequence of ops keeps reserved <= quantity, never wraps a counter,
    /// and moves the version by exactly one per accepted op, none per rejected one.
    #[test]
    fn invariants_hold_for_any_sequence(
        ops in proptest::collection::vec((any_op(), any::<bool>(), 0u64..3), 1..60)
    ) {
        let key = key();
        let mut state = KeyState::Absent;
        for (op, send_expected, skew) in ops {
            // Mostly the right version, sometimes a stale or future one.
            let expected = send_expected.then(|| state.version().saturating_add(skew).saturating_sub(1));
            let before = state.clone();
            match apply(&key, &state, &op, Precondition::expecting(expected), 0) {
                Ok(next) => {
                    prop_assert_eq!(next.version(), before.version() + 1);
                    if let KeyState::Live(item) = &next {
                        prop_assert!(item.reserved <= item.quantity);
                        if let (KeyState::Live(old), Some(amount)) = (&before, amount_of(&op)) {
                            check_counter_effect(&op, old, item, amount)?;
                        }
                    }
                    state = next;
                }
                Err(_) => prop_assert_eq!(&state, &before),
            }
        }
    }
}

fn amount_of(op: &Op) -> Option<u64> {
    match op {
        Op::Add { amount }
        | Op::Remove { amount }
        | Op::Reserve { amount }
        | Op::Release { amount }
        | Op::Fulfil { amount } => Some(*amount),
        _ => None,
    }
}

/// Each amount op moves exactly the counters it names, by exactly its amount,
/// so no arithmetic wrapped.
fn check_counter_effect(
    op: &Op,
    old: &shelfsync_core::Item,
    new: &shelfsync_core::Item,
    amount: u64,
) -> Result<(), TestCaseError> {
    let (dq, dr): (i128, i128) = match op {
        Op::Add { .. } => (amount as i128, 0),
        Op::Remove { .. } => (-(amount as i128), 0),
        Op::Reserve { .. } => (0, amount as i128),
        Op::Release { .. } => (0, -(amount as i128)),
        Op::Fulfil { .. } => (-(amount as i128), -(amount as i128)),
        _ => (0, 0),
    };
    prop_assert_eq!(new.quantity as i128, old.quantity as i128 + dq);
    prop_assert_eq!(new.reserved as i128, old.reserved as i128 + dr);
    Ok(())
}
