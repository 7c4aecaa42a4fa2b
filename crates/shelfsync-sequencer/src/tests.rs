//! Table tests of [`decide`]: each case is a starting view, the requests of
//! one group, and what every request must get and the group must commit.

use shelfsync_core::{Item, Op};
use shelfsync_ledger::Refusal;

use super::*;

const NOW: u64 = 1_000_000;
const TTL: u64 = 10_000;

fn key(sku: &str) -> ItemKey {
    ItemKey::new("s1", sku).unwrap()
}

fn item(sku: &str, quantity: u64, version: u64) -> KeyState {
    KeyState::Live(Item {
        location: "s1".into(),
        sku: sku.into(),
        name: "n".into(),
        quantity,
        reserved: 0,
        version,
        ..Default::default()
    })
}

fn line(sku: &str, op: Op) -> Line {
    Line {
        key: key(sku),
        op,
        expected_version: None,
        lock_token: None,
    }
}

fn write(store: &str, idem: &str, lines: Vec<Line>) -> Request {
    Request::Write(Command {
        store: store.into(),
        idempotency_key: idem.into(),
        lines,
    })
}

fn remove(sku: &str, amount: u64) -> Line {
    line(sku, Op::Remove { amount })
}

fn create(sku: &str, quantity: u64) -> Line {
    line(
        sku,
        Op::Create {
            name: "n".into(),
            quantity,
        },
    )
}

/// What a request must get, in short.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Accepted: per line `(seq, quantity, version)`, and whether replayed.
    Ok(Vec<(u64, u64, u64)>, bool),
    Err(ErrorCode),
    /// A read: quantity (None when absent) and head.
    Read(Option<u64>, u64),
}

fn short(answer: &Answer) -> Expect {
    match answer {
        Answer::Accepted { changes, replayed }
        | Answer::Stepped {
            changes, replayed, ..
        } => Expect::Ok(
            changes
                .iter()
                .map(|(seq, s)| (*seq, s.item().map_or(0, |i| i.quantity), s.version()))
                .collect(),
            *replayed,
        ),
        Answer::Refused(err) => Expect::Err(err.code),
        Answer::Read { state, head } => Expect::Read(state.item().map(|i| i.quantity), *head),
    }
}

struct Case {
    name: &'static str,
    /// `(sku, quantity, version, seq)` known before the group.
    items: Vec<(&'static str, u64, u64, u64)>,
    /// Stored records and the changes they point to.
    stored: Vec<(&'static str, IdempotencyRecord)>,
    changes: Vec<Change>,
    requests: Vec<Request>,
    expect: Vec<Expect>,
    /// Per committed change: `(seq, sku, commit_end, prior_seq)`.
    writes: Vec<(u64, &'static str, u64, Option<u64>)>,
    /// Idempotency keys recorded by the group.
    recorded: Vec<&'static str>,
}

fn accepted_record(seq: u64, at_ms: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        at_ms,
        outcome: Recorded::Accepted {
            seq,
            locations: vec!["s1".into()],
            expected_versions: vec![None],
        },
    }
}

fn change(seq: u64, sku: &str, op: Op, state: KeyState) -> Change {
    Change {
        seq,
        key: key(sku),
        state,
        op,
        store: "store-1".into(),
        idempotency_key: "k".into(),
        at_ms: NOW - 1,
        commit_end: seq,
    }
}

fn cases() -> Vec<Case> {
    let milk = || vec![("milk", 10, 3, 7)];
    vec![
        Case {
            name: "a create on an absent key is accepted at head + 1",
            items: vec![],
            stored: vec![],
            changes: vec![],
            requests: vec![write("store-1", "a", vec![create("milk", 5)])],
            expect: vec![Expect::Ok(vec![(8, 5, 1)], false)],
            writes: vec![(8, "milk", 8, None)],
            recorded: vec!["a"],
        },
        Case {
            name: "a refusal is recorded and commits no change",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![write("store-1", "a", vec![remove("milk", 11)])],
            expect: vec![Expect::Err(ErrorCode::InsufficientStock)],
            writes: vec![],
            recorded: vec!["a"],
        },
        Case {
            name: "writes to one key in one group see each other, linked",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![
                write("store-1", "a", vec![remove("milk", 4)]),
                write("store-1", "b", vec![remove("milk", 4)]),
                write("store-1", "c", vec![remove("milk", 4)]),
                Request::Read(key("milk")),
            ],
            expect: vec![
                Expect::Ok(vec![(8, 6, 4)], false),
                Expect::Ok(vec![(9, 2, 5)], false),
                Expect::Err(ErrorCode::InsufficientStock),
                Expect::Read(Some(2), 9),
            ],
            writes: vec![(8, "milk", 8, Some(7)), (9, "milk", 9, Some(8))],
            recorded: vec!["a", "b", "c"],
        },
        Case {
            name: "a retry in the same group is answered from the first",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![
                write("store-1", "a", vec![remove("milk", 1)]),
                write("store-1", "a", vec![remove("milk", 1)]),
                write("store-2", "a", vec![remove("milk", 1)]),
            ],
            expect: vec![
                Expect::Ok(vec![(8, 9, 4)], false),
                Expect::Ok(vec![(8, 9, 4)], true),
                Expect::Ok(vec![(9, 8, 5)], false),
            ],
            writes: vec![(8, "milk", 8, Some(7)), (9, "milk", 9, Some(8))],
            recorded: vec!["a", "a"],
        },
        Case {
            name: "another request under a used key is refused and not recorded",
            items: milk(),
            stored: vec![("a", accepted_record(7, NOW - 5))],
            changes: vec![change(
                7,
                "milk",
                Op::Remove { amount: 1 },
                item("milk", 10, 3),
            )],
            requests: vec![
                write("store-1", "a", vec![remove("milk", 2)]),
                write("store-1", "a", vec![remove("milk", 1)]),
            ],
            expect: vec![
                Expect::Err(ErrorCode::IdempotencyKeyReused),
                Expect::Ok(vec![(7, 10, 3)], true),
            ],
            writes: vec![],
            recorded: vec![],
        },
        Case {
            name: "an expired record no longer answers: the write is decided anew",
            items: milk(),
            stored: vec![("a", accepted_record(7, NOW - TTL))],
            changes: vec![],
            requests: vec![write("store-1", "a", vec![remove("milk", 2)])],
            expect: vec![Expect::Ok(vec![(8, 8, 4)], false)],
            writes: vec![(8, "milk", 8, Some(7))],
            recorded: vec!["a"],
        },
        Case {
            name: "a stored refusal is replayed as it was",
            items: milk(),
            stored: vec![(
                "a",
                IdempotencyRecord {
                    at_ms: NOW - 1,
                    outcome: Recorded::Rejected {
                        lines: vec![remove("milk", 50)],
                        refusal: Refusal {
                            code: ErrorCode::InsufficientStock,
                            message: "no".into(),
                            current: None,
                            line: None,
                        },
                    },
                },
            )],
            changes: vec![],
            requests: vec![write("store-1", "a", vec![remove("milk", 50)])],
            expect: vec![Expect::Err(ErrorCode::InsufficientStock)],
            writes: vec![],
            recorded: vec![],
        },
        Case {
            name: "a replay whose change left the log answers the current state",
            items: milk(),
            stored: vec![("a", accepted_record(2, NOW - 1))],
            changes: vec![],
            requests: vec![write("store-1", "a", vec![remove("milk", 1)])],
            expect: vec![Expect::Ok(vec![(2, 10, 3)], true)],
            writes: vec![],
            recorded: vec![],
        },
        Case {
            name: "a multi-key write is one commit of consecutive seqs",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![write(
                "store-1",
                "a",
                vec![remove("milk", 1), create("eggs", 6), create("tea", 2)],
            )],
            expect: vec![Expect::Ok(vec![(8, 9, 4), (9, 6, 1), (10, 2, 1)], false)],
            writes: vec![
                (8, "milk", 10, Some(7)),
                (9, "eggs", 10, None),
                (10, "tea", 10, None),
            ],
            recorded: vec!["a"],
        },
        Case {
            name: "a multi-key write with one bad line changes nothing",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![
                write("store-1", "a", vec![create("eggs", 6), remove("milk", 11)]),
                Request::Read(key("eggs")),
                Request::Read(key("milk")),
            ],
            expect: vec![
                Expect::Err(ErrorCode::InsufficientStock),
                Expect::Read(None, 7),
                Expect::Read(Some(10), 7),
            ],
            writes: vec![],
            recorded: vec!["a"],
        },
        Case {
            name: "a key twice in one write is refused",
            items: milk(),
            stored: vec![],
            changes: vec![],
            requests: vec![write(
                "store-1",
                "a",
                vec![remove("milk", 1), remove("milk", 1)],
            )],
            expect: vec![Expect::Err(ErrorCode::InvalidField)],
            writes: vec![],
            recorded: vec!["a"],
        },
    ]
}

#[test]
fn decides_each_case() {
    for case in cases() {
        let mut view = View::default();
        for (sku, quantity, version, seq) in &case.items {
            view.items.insert(
                key(sku),
                Some(ItemRecord {
                    state: item(sku, *quantity, *version),
                    seq: *seq,
                }),
            );
        }
        for (idem, record) in &case.stored {
            view.idempotency
                .insert(("store-1".into(), idem.to_string()), record.clone());
        }
        for change in &case.changes {
            view.changes.insert(change.seq, change.clone());
        }
        let decision = decide(&case.requests, &mut view, 7, NOW, TTL);
        let name = case.name;
        let got: Vec<Expect> = decision.answers.iter().map(short).collect();
        assert_eq!(got, case.expect, "{name}: answers");
        let writes: Vec<_> = decision
            .group
            .writes
            .iter()
            .map(|w| {
                let c = &w.change;
                (c.seq, c.key.sku.as_str(), c.commit_end, w.prior_seq)
            })
            .collect();
        assert_eq!(writes, case.writes, "{name}: writes");
        let head = case.writes.last().map_or(7, |w| w.0);
        assert_eq!(decision.group.head, head, "{name}: head");
        assert_eq!(decision.replaced.len(), writes.len(), "{name}: replaced");
        let recorded: Vec<&str> = decision
            .group
            .idempotency
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(recorded, case.recorded, "{name}: recorded");
    }
}

#[test]
fn an_accepted_record_keeps_the_expected_versions_not_the_change() {
    let mut view = View::default();
    let mut line = create("milk", 1);
    line.expected_version = Some(0);
    let decision = decide(&[write("s", "a", vec![line])], &mut view, 0, NOW, TTL);
    assert_eq!(
        decision.group.idempotency[0].record,
        IdempotencyRecord {
            at_ms: NOW,
            outcome: Recorded::Accepted {
                seq: 1,
                locations: vec!["s1".into()],
                expected_versions: vec![Some(0)],
            },
        }
    );
}
