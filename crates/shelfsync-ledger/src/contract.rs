//! The contract every [`Ledger`] backend keeps, as a suite any backend can
//! run: [`run`] takes a factory of fresh ledgers and runs every case on a
//! fresh one, naming the case that fails. Public behind the `testing`
//! feature, so that a backend in another crate runs the same suite:
//!
//! ```ignore
//! contract::run(&mut || contract::Fresh::new(MyLedger::new(contract::BUCKETS), ()));
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::any::Any;

use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::{Change, ErrorCode, StoreReport};

use super::*;

/// Buckets of 100 ms, so that the expiry case's times fall into different
/// ones.
pub const BUCKETS: Buckets = Buckets { width_ms: 100 };

/// A fresh ledger and whatever must live as long as it (a temp dir).
pub struct Fresh {
    pub ledger: Box<dyn Ledger>,
    _guard: Box<dyn Any>,
}

impl Fresh {
    pub fn new(ledger: impl Ledger, guard: impl Any) -> Self {
        Fresh {
            ledger: Box::new(ledger),
            _guard: Box::new(guard),
        }
    }
}

type Case = fn(&dyn Ledger);

/// Every case of the contract, by name.
pub const CASES: &[(&str, Case)] = &[
    ("empty_ledger", empty_ledger),
    (
        "commit_stores_item_change_and_head",
        commit_stores_item_change_and_head,
    ),
    (
        "history_follows_interleaved_writes",
        history_follows_interleaved_writes,
    ),
    ("items_listed_per_location", items_listed_per_location),
    (
        "location_changes_read_one_location",
        location_changes_read_one_location,
    ),
    (
        "multi_key_commit_keeps_its_marker",
        multi_key_commit_keeps_its_marker,
    ),
    (
        "idempotency_round_trips_and_expires",
        idempotency_round_trips_and_expires,
    ),
    ("compaction_keeps_the_newest", compaction_keeps_the_newest),
    ("reports_are_remembered", reports_are_remembered),
    (
        "lock_deadlines_follow_the_writes",
        lock_deadlines_follow_the_writes,
    ),
    (
        "holds_and_their_deadlines_follow_the_steps",
        holds_and_their_deadlines_follow_the_steps,
    ),
    (
        "transfers_are_kept_and_listed_by_location",
        transfers_are_kept_and_listed_by_location,
    ),
];

/// Runs every case on a fresh ledger from `fresh`; a failing case panics
/// with its name.
pub fn run(fresh: &mut dyn FnMut() -> Fresh) {
    for (name, case) in CASES {
        let ledger = fresh();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case(ledger.ledger.as_ref())
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("ledger contract case {name} failed: {message}");
        }
    }
}

pub fn key(location: &str, sku: &str) -> ItemKey {
    ItemKey::new(location, sku).unwrap()
}

/// A write of `key` at `seq`, setting it live at `version`.
pub fn put(seq: u64, key: &ItemKey, version: u64, quantity: u64) -> CommittedWrite {
    CommittedWrite {
        change: Change {
            seq,
            key: key.clone(),
            state: KeyState::Live(Item {
                location: key.location.clone(),
                sku: key.sku.clone(),
                name: "n".into(),
                quantity,
                reserved: 0,
                version,
                ..Default::default()
            }),
            op: Op::Add { amount: 1 },
            store: "store-1".into(),
            idempotency_key: format!("k{seq}"),
            at_ms: 1000 + seq,
            commit_end: seq,
        },
        prior_version: version - 1,
        // In these cases a key's versions are written at consecutive seqs.
        prior_seq: (version > 1).then(|| seq - 1),
        prior_lock_expiry: None,
    }
}

/// Commits `writes` as one group, the head at the last one.
pub fn commit_puts(ledger: &dyn Ledger, writes: Vec<CommittedWrite>) {
    let head = writes.last().map_or(0, |w| w.change.seq);
    ledger
        .commit(CommitGroup {
            writes,
            head,
            ..CommitGroup::default()
        })
        .unwrap();
}

fn seqs(changes: &[Change]) -> Vec<u64> {
    changes.iter().map(|c| c.seq).collect()
}

fn empty_ledger(ledger: &dyn Ledger) {
    assert_eq!(ledger.head().unwrap(), 0);
    assert_eq!(ledger.oldest().unwrap(), 1);
    assert!(ledger.load(&key("a", "b")).unwrap().is_none());
    assert!(ledger.location_changes("a", 0, 10, 10).unwrap().is_empty());
    assert!(ledger.change("a", 1).unwrap().is_none());
    assert!(ledger.idempotency("s", "k").unwrap().is_none());
}

fn commit_stores_item_change_and_head(ledger: &dyn Ledger) {
    let k = key("store-1", "milk");
    commit_puts(ledger, vec![put(1, &k, 1, 5), put(2, &k, 2, 6)]);
    let record = ledger.load(&k).unwrap().unwrap();
    assert_eq!((record.seq, record.state.version()), (2, 2));
    assert_eq!(ledger.head().unwrap(), 2);
    let changes = |after, until| {
        seqs(
            &ledger
                .location_changes("store-1", after, until, 10)
                .unwrap(),
        )
    };
    assert_eq!(changes(0, 2), [1, 2]);
    assert_eq!(changes(1, 2), [2]);
    assert_eq!(changes(0, 1), [1], "until bounds");
    assert_eq!(
        ledger.change("store-1", 2).unwrap(),
        Some(put(2, &k, 2, 6).change)
    );
    assert_eq!(
        ledger.change("store-2", 2).unwrap(),
        None,
        "another location"
    );
    assert_eq!(seqs(&ledger.history(&k, 10).unwrap()), [2, 1]);
}

fn history_follows_interleaved_writes(ledger: &dyn Ledger) {
    let (a, b) = (key("s1", "a"), key("s1", "b"));
    // a at seqs 1, 3, 4; b at 2, 5.
    let write = |seq, k: &ItemKey, version, prior_seq| CommittedWrite {
        prior_seq,
        ..put(seq, k, version, 1)
    };
    commit_puts(
        ledger,
        vec![
            write(1, &a, 1, None),
            write(2, &b, 1, None),
            write(3, &a, 2, Some(1)),
        ],
    );
    commit_puts(
        ledger,
        vec![write(4, &a, 3, Some(3)), write(5, &b, 2, Some(2))],
    );
    let history = |k: &ItemKey, limit| seqs(&ledger.history(k, limit).unwrap());
    assert_eq!(history(&a, 10), [4, 3, 1]);
    assert_eq!(history(&b, 10), [5, 2]);
    assert_eq!(history(&a, 2), [4, 3], "limit");
    assert!(history(&key("s1", "c"), 10).is_empty());
    // Compaction cuts the chain where the log now starts.
    ledger.compact_changes(3, 100).unwrap();
    assert_eq!(history(&a, 10), [4, 3], "compacted");
}

fn items_listed_per_location(ledger: &dyn Ledger) {
    let writes = ["b", "a", "c"]
        .iter()
        .zip(1..)
        .map(|(sku, seq)| put(seq, &key("s1", sku), 1, 1))
        .chain([put(4, &key("s10", "a"), 1, 1), put(5, &key("s", "z"), 1, 1)])
        .collect();
    commit_puts(ledger, writes);
    let skus = |after: Option<&str>, limit| -> Vec<String> {
        let items = ledger.items("s1", after, limit).unwrap();
        items.into_iter().map(|(sku, _)| sku).collect()
    };
    assert_eq!(skus(None, 10), ["a", "b", "c"]);
    assert_eq!(skus(Some("a"), 10), ["b", "c"]);
    assert_eq!(skus(None, 2), ["a", "b"]);
    assert!(skus(Some("c"), 10).is_empty());
    assert_eq!(ledger.locations().unwrap(), ["s", "s1", "s10"]);
}

fn location_changes_read_one_location(ledger: &dyn Ledger) {
    // s1 at 1, 3, 5; s10 (a prefix of s1 plus one) at 2, 4.
    let writes = (1..=5)
        .map(|seq| {
            let location = if seq % 2 == 1 { "s1" } else { "s10" };
            put(seq, &key(location, &format!("k{seq}")), 1, 1)
        })
        .collect();
    commit_puts(ledger, writes);
    let at = |location, after, until, limit| {
        seqs(
            &ledger
                .location_changes(location, after, until, limit)
                .unwrap(),
        )
    };
    assert_eq!(at("s1", 0, 5, 10), [1, 3, 5]);
    assert_eq!(at("s10", 0, 5, 10), [2, 4]);
    assert_eq!(at("s1", 1, 4, 10), [3], "after and until bound");
    assert_eq!(at("s1", 0, 5, 2), [1, 3], "limit");
    assert!(at("s", 0, 5, 10).is_empty());
    ledger.compact_changes(2, 100).unwrap();
    assert_eq!(at("s1", 0, 5, 10), [5], "compacted changes leave the index");
}

fn multi_key_commit_keeps_its_marker(ledger: &dyn Ledger) {
    let mut writes: Vec<CommittedWrite> = (1..=3)
        .map(|seq| put(seq, &key(&format!("s{seq}"), "a"), 1, 1))
        .collect();
    for w in &mut writes {
        w.change.commit_end = 3;
    }
    commit_puts(ledger, writes);
    for location in ["s1", "s2", "s3"] {
        let changes = ledger.location_changes(location, 0, 3, 10).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].commit_end(), 3);
    }
}

fn idempotency_round_trips_and_expires(ledger: &dyn Ledger) {
    let rejected = |at_ms| IdempotencyRecord {
        at_ms,
        outcome: Recorded::Rejected {
            lines: vec![Line {
                key: key("s1", "a"),
                op: Op::Reserve { amount: 1 },
                expected_version: None,
                lock_token: None,
            }],
            refusal: Refusal {
                code: ErrorCode::NotFound,
                message: "gone".into(),
                current: None,
                line: None,
            },
        },
    };
    let accepted = |at_ms| IdempotencyRecord {
        at_ms,
        outcome: Recorded::Accepted {
            seq: 7,
            locations: vec!["s1".into(), "s2".into()],
            expected_versions: vec![Some(3), None],
        },
    };
    let entry = |key: &str, record| IdempotencyEntry {
        store: "store-1".into(),
        key: key.into(),
        record,
    };
    let commit = |entries| {
        ledger
            .commit(CommitGroup {
                idempotency: entries,
                ..CommitGroup::default()
            })
            .unwrap()
    };
    commit(vec![
        entry("old", rejected(100)),
        entry("new", accepted(900)),
    ]);
    assert_eq!(
        ledger.idempotency("store-1", "old").unwrap(),
        Some(rejected(100))
    );
    assert_eq!(
        ledger.idempotency("store-1", "new").unwrap(),
        Some(accepted(900))
    );
    assert_eq!(ledger.idempotency("store-2", "old").unwrap(), None);
    // 100 lies in the bucket [100, 200): all of it is before 500.
    assert_eq!(ledger.expire_idempotency(500).unwrap(), 1);
    assert_eq!(ledger.idempotency("store-1", "old").unwrap(), None);
    assert!(ledger.idempotency("store-1", "new").unwrap().is_some());
    // The bucket of 900 ends at 1000: not all of it is before 950.
    assert_eq!(ledger.expire_idempotency(950).unwrap(), 0);
    // A key reused after its record expired answers with the new record.
    commit(vec![entry("new", rejected(2000))]);
    ledger.expire_idempotency(1000).unwrap();
    assert_eq!(
        ledger.idempotency("store-1", "new").unwrap(),
        Some(rejected(2000))
    );
}

fn compaction_keeps_the_newest(ledger: &dyn Ledger) {
    let k = key("s1", "a");
    commit_puts(ledger, (1..=10).map(|v| put(v, &k, v, v)).collect());
    assert_eq!(ledger.compact_changes(4, 3).unwrap(), 3, "sliced");
    assert_eq!(ledger.oldest().unwrap(), 4);
    assert_eq!(ledger.compact_changes(4, 100).unwrap(), 3);
    assert_eq!(ledger.oldest().unwrap(), 7);
    assert_eq!(ledger.compact_changes(4, 100).unwrap(), 0);
    let retained = ledger.location_changes("s1", 0, 10, 100).unwrap();
    assert_eq!(seqs(&retained), [7, 8, 9, 10]);
    assert!(ledger.change("s1", 6).unwrap().is_none());
    assert_eq!(ledger.history(&k, 100).unwrap().len(), 4);
    // The item itself is never compacted.
    assert_eq!(ledger.load(&k).unwrap().unwrap().state.version(), 10);
}

fn reports_are_remembered(ledger: &dyn Ledger) {
    let report = StoredReport {
        report: StoreReport {
            cursor: 7,
            locations: vec!["s1".into()],
            ..Default::default()
        },
        at_ms: 5,
        digest_ok: Some(true),
    };
    ledger.save_report("store-1", &report).unwrap();
    assert_eq!(
        ledger.reports().unwrap(),
        vec![("store-1".to_string(), report)]
    );
}

fn lock_deadlines_follow_the_writes(ledger: &dyn Ledger) {
    let (a, b) = (key("s1", "a"), key("s1", "b"));
    let locked = |seq, k: &ItemKey, version, until: u64, prior: Option<u64>| {
        let mut write = put(seq, k, version, 1);
        if let KeyState::Live(item) = &mut write.change.state {
            item.lock = Some(shelfsync_core::lock::Lock {
                holder: "counter-7".into(),
                token: version,
                expires_at_ms: until,
            });
        }
        write.prior_lock_expiry = prior;
        write
    };
    // a: granted until 500, renewed until 900 in the same group; b: until 700.
    commit_puts(
        ledger,
        vec![
            locked(1, &a, 1, 500, None),
            locked(2, &a, 2, 900, Some(500)),
            locked(3, &b, 1, 700, None),
        ],
    );
    let due = |now| -> Vec<(u64, String, u64)> {
        let found = ledger.due_locks(now, 10).unwrap();
        found
            .into_iter()
            .map(|d| (d.at_ms, d.key.sku, d.token))
            .collect()
    };
    assert!(due(699).is_empty(), "a's first deadline moved");
    assert_eq!(due(700), [(700, "b".to_string(), 1)]);
    assert_eq!(due(u64::MAX), [(700, "b".into(), 1), (900, "a".into(), 2)]);
    assert_eq!(ledger.due_locks(u64::MAX, 1).unwrap().len(), 1, "limit");
    // b's lock ends (released or expired): its deadline goes with it.
    let mut ended = put(4, &b, 2, 1);
    ended.prior_lock_expiry = Some(700);
    commit_puts(ledger, vec![ended]);
    assert_eq!(due(u64::MAX), [(900, "a".to_string(), 2)]);
}

/// A hold of cart-1 on one unit of sku `a` at `location`.
pub(crate) fn hold_at(
    location: &str,
    id: &str,
    expires_at_ms: u64,
    state: shelfsync_core::HoldState,
) -> shelfsync_core::Hold {
    shelfsync_core::Hold {
        id: id.into(),
        owner: "cart-1".into(),
        lines: vec![shelfsync_core::HoldLine {
            key: key(location, "a"),
            amount: 1,
        }],
        expires_at_ms,
        state,
    }
}

fn holds_and_their_deadlines_follow_the_steps(ledger: &dyn Ledger) {
    use shelfsync_core::{HoldLine, HoldState};
    let hold = |id: &str, expires_at_ms, state| hold_at("s1", id, expires_at_ms, state);
    let commit = |holds: Vec<HoldWrite>| {
        let head = ledger.head().unwrap();
        let group = CommitGroup {
            holds,
            head,
            ..CommitGroup::default()
        };
        ledger.commit(group).unwrap();
    };
    let write = |hold: Hold, prior_expiry: Option<u64>| {
        let ended = prior_expiry.is_some() && hold.state != HoldState::Active;
        HoldWrite {
            ended_at_ms: ended.then_some(1_000),
            hold,
            prior_expiry,
        }
    };
    // h1 made until 500 and extended to 900 in one group; h2 until 700.
    commit(vec![
        write(hold("h1", 500, HoldState::Active), None),
        write(hold("h1", 900, HoldState::Active), Some(500)),
        write(hold("h2", 700, HoldState::Active), None),
    ]);
    assert_eq!(ledger.hold("h1").unwrap().unwrap().expires_at_ms, 900);
    assert!(ledger.hold("h3").unwrap().is_none());
    assert!(
        ledger.due_holds(699, 10).unwrap().is_empty(),
        "h1's first deadline moved"
    );
    assert_eq!(ledger.due_holds(700, 10).unwrap(), ["h2"]);
    assert_eq!(ledger.due_holds(u64::MAX, 10).unwrap(), ["h2", "h1"]);
    assert_eq!(ledger.due_holds(u64::MAX, 1).unwrap(), ["h2"], "limit");
    // h3 holds a unit at s2 and at s1.
    let mut h3 = hold_at("s2", "h3", 800, HoldState::Active);
    h3.lines.push(HoldLine {
        key: key("s1", "b"),
        amount: 1,
    });
    commit(vec![write(h3, None)]);
    let active = |location: &str, limit| -> Vec<String> {
        let holds = ledger.active_holds(location, limit).unwrap();
        holds.into_iter().map(|h| h.id).collect()
    };
    assert_eq!(
        active("s1", 10),
        ["h1", "h2", "h3"],
        "by location, in id order"
    );
    assert_eq!(active("s1", 2), ["h1", "h2"], "limit");
    assert_eq!(active("s2", 10), ["h3"]);
    assert!(active("s", 10).is_empty(), "a location, not a prefix");
    // h2 ends: its record stays, its deadline and its index entry go.
    commit(vec![write(hold("h2", 700, HoldState::Released), Some(700))]);
    assert_eq!(active("s1", 10), ["h1", "h3"]);
    assert_eq!(
        ledger.due_holds(u64::MAX, 10).unwrap(),
        ["h3", "h1"],
        "by deadline"
    );
    assert_eq!(
        ledger.hold("h2").unwrap().unwrap().state,
        HoldState::Released
    );
}

/// A transfer of 3 units of sku `a`, none received yet.
pub(crate) fn transfer(
    id: &str,
    from: &str,
    to: &str,
    state: shelfsync_core::TransferState,
) -> shelfsync_core::Transfer {
    shelfsync_core::Transfer {
        id: id.into(),
        from: from.into(),
        to: to.into(),
        lines: vec![shelfsync_core::TransferLine {
            sku: "a".into(),
            name: "A".into(),
            shipped: 3,
            received: 0,
            lost: 0,
        }],
        state,
    }
}

fn transfers_are_kept_and_listed_by_location(ledger: &dyn Ledger) {
    use shelfsync_core::{Transfer, TransferState};
    let commit = |transfers: Vec<Transfer>| {
        let group = CommitGroup {
            transfers,
            head: ledger.head().unwrap(),
            ..CommitGroup::default()
        };
        ledger.commit(group).unwrap();
    };
    commit(vec![
        transfer("t1", "s1", "s2", TransferState::InTransit),
        transfer("t2", "s2", "s3", TransferState::InTransit),
    ]);
    commit(vec![transfer("t1", "s1", "s2", TransferState::Closed)]);
    let listed = |location: Option<&str>, open_only| -> Vec<(String, TransferState)> {
        let found = ledger.transfers(location, open_only, 10).unwrap();
        found.into_iter().map(|t| (t.id, t.state)).collect()
    };
    let ids = |location| listed(location, false);
    let (closed, open) = (TransferState::Closed, TransferState::InTransit);
    assert_eq!(ids(Some("s1")), [("t1".to_string(), closed)]);
    assert_eq!(
        ids(Some("s2")),
        [("t1".to_string(), closed), ("t2".into(), open)]
    );
    assert_eq!(ids(Some("s3")), [("t2".to_string(), open)]);
    assert!(
        ids(Some("s")).is_empty(),
        "a prefix of a location is not it"
    );
    assert_eq!(ids(None).len(), 2);
    // In transit only: t1 closed leaves its ends' open lists.
    assert!(listed(Some("s1"), true).is_empty());
    assert_eq!(listed(Some("s2"), true), [("t2".to_string(), open)]);
    assert_eq!(
        listed(None, true),
        [("t2".to_string(), open)],
        "once, not per end"
    );
    assert_eq!(ledger.transfer("t2").unwrap().unwrap().to, "s3");
    assert!(ledger.transfer("t3").unwrap().is_none());
}
