//! The contract every [`Ledger`] backend must keep. Each test takes a fresh
//! ledger from [`backends`]; a new backend adds itself there and inherits
//! the whole suite.

use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::Change;

use super::*;

type Fresh = (tempfile::TempDir, Box<dyn Ledger>);
type Backend = (&'static str, fn() -> Fresh);

fn backends() -> Vec<Backend> {
    vec![("sled", || {
        let dir = tempfile::tempdir().unwrap();
        // Narrow idempotency buckets, so the expiry test's times fall into
        // different ones.
        let bucket = std::time::Duration::from_millis(100);
        let ledger = SledLedger::open_with(dir.path(), bucket).unwrap();
        (dir, Box::new(ledger))
    })]
}

pub(crate) fn key(location: &str, sku: &str) -> ItemKey {
    ItemKey::new(location, sku).unwrap()
}

/// A write of `key` at `seq`, setting it live at `version`.
pub(crate) fn put(seq: u64, key: &ItemKey, version: u64, quantity: u64) -> CommittedWrite {
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
            }),
            op: Op::Add { amount: 1 },
            store: "store-1".into(),
            idempotency_key: format!("k{seq}"),
            at_ms: 1000 + seq,
        },
        prior_version: version - 1,
        // In these tests a key's versions are written at consecutive seqs.
        prior_seq: (version > 1).then(|| seq - 1),
    }
}

/// Commits `writes` as one batch, the head at the last one.
pub(crate) fn commit_puts(ledger: &dyn Ledger, writes: Vec<CommittedWrite>) {
    let head = writes.last().map_or(0, |w| w.change.seq);
    ledger
        .commit(CommitBatch {
            writes,
            head,
            ..CommitBatch::default()
        })
        .unwrap();
}

#[test]
fn empty_ledger() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        assert_eq!(ledger.head().unwrap(), 0, "{name}");
        assert_eq!(ledger.oldest().unwrap(), 1, "{name}");
        assert!(ledger.load(&key("a", "b")).unwrap().is_none(), "{name}");
        assert!(ledger.changes(0, 10, 10).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn commit_stores_item_change_history_and_head_together() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let k = key("store-1", "milk");
        commit_puts(ledger.as_ref(), vec![put(1, &k, 1, 5), put(2, &k, 2, 6)]);
        let record = ledger.load(&k).unwrap().unwrap();
        assert_eq!((record.seq, record.state.version()), (2, 2), "{name}");
        assert_eq!(ledger.head().unwrap(), 2, "{name}");
        let changes = ledger.changes(0, 2, 10).unwrap();
        assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(ledger.changes(1, 2, 10).unwrap().len(), 1, "{name}");
        assert_eq!(
            ledger.changes(0, 1, 10).unwrap().len(),
            1,
            "{name}: until bounds"
        );
        let history = ledger.history(&k, 10).unwrap();
        assert_eq!(history.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 1]);
    }
}

#[test]
fn history_follows_each_key_through_interleaved_writes() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let (a, b) = (key("s1", "a"), key("s1", "b"));
        // a at seqs 1, 3, 4; b at 2, 5.
        let write = |seq, k: &ItemKey, version, prior_seq| CommittedWrite {
            prior_seq,
            ..put(seq, k, version, 1)
        };
        commit_puts(
            ledger.as_ref(),
            vec![
                write(1, &a, 1, None),
                write(2, &b, 1, None),
                write(3, &a, 2, Some(1)),
            ],
        );
        commit_puts(
            ledger.as_ref(),
            vec![write(4, &a, 3, Some(3)), write(5, &b, 2, Some(2))],
        );
        let seqs = |k: &ItemKey, limit| -> Vec<u64> {
            ledger
                .history(k, limit)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(seqs(&a, 10), [4, 3, 1], "{name}");
        assert_eq!(seqs(&b, 10), [5, 2], "{name}");
        assert_eq!(seqs(&a, 2), [4, 3], "{name}: limit");
        assert!(seqs(&key("s1", "c"), 10).is_empty(), "{name}");
        // Compaction cuts the chain where the log now starts.
        ledger.compact_changes(3, 100).unwrap();
        assert_eq!(seqs(&a, 10), [4, 3], "{name}: compacted");
    }
}

#[test]
fn items_are_listed_per_location_in_sku_order() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let writes = ["b", "a", "c"]
            .iter()
            .enumerate()
            .map(|(i, sku)| put(i as u64 + 1, &key("s1", sku), 1, 1))
            .chain([put(4, &key("s10", "a"), 1, 1), put(5, &key("s", "z"), 1, 1)])
            .collect();
        commit_puts(ledger.as_ref(), writes);
        let skus = |after: Option<&str>, limit| {
            ledger
                .items("s1", after, limit)
                .unwrap()
                .into_iter()
                .map(|(sku, _)| sku)
                .collect::<Vec<_>>()
        };
        assert_eq!(skus(None, 10), ["a", "b", "c"], "{name}");
        assert_eq!(skus(Some("a"), 10), ["b", "c"], "{name}");
        assert_eq!(skus(None, 2), ["a", "b"], "{name}");
        assert!(skus(Some("c"), 10).is_empty(), "{name}");
        assert_eq!(ledger.locations().unwrap(), ["s", "s1", "s10"], "{name}");
    }
}

#[test]
fn idempotency_records_round_trip_and_expire() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let record = |at_ms| IdempotencyRecord {
            key: key("s1", "a"),
            op: Op::Reserve { amount: 1 },
            expected_version: None,
            outcome: Outcome::Rejected(shelfsync_proto::WireError::new(
                shelfsync_proto::ErrorCode::NotFound,
                "gone",
            )),
            at_ms,
        };
        ledger
            .commit(CommitBatch {
                writes: Vec::new(),
                idempotency: vec![
                    ("store-1".into(), "old".into(), record(100)),
                    ("store-1".into(), "new".into(), record(900)),
                ],
                ..CommitBatch::default()
            })
            .unwrap();
        assert_eq!(
            ledger.idempotency("store-1", "old").unwrap(),
            Some(record(100))
        );
        assert_eq!(
            ledger.idempotency("store-2", "old").unwrap(),
            None,
            "{name}"
        );
        assert_eq!(ledger.expire_idempotency(500, 10).unwrap(), 1, "{name}");
        assert_eq!(
            ledger.idempotency("store-1", "old").unwrap(),
            None,
            "{name}"
        );
        assert!(
            ledger.idempotency("store-1", "new").unwrap().is_some(),
            "{name}"
        );
        // A key reused after expiry keeps its new record.
        ledger
            .commit(CommitBatch {
                writes: Vec::new(),
                idempotency: vec![("store-1".into(), "new".into(), record(2000))],
                ..CommitBatch::default()
            })
            .unwrap();
        // Whatever expiring the old record of the key removes, the new
        // record stays and answers.
        ledger.expire_idempotency(1000, 10).unwrap();
        assert_eq!(
            ledger.idempotency("store-1", "new").unwrap(),
            Some(record(2000))
        );
    }
}

#[test]
fn compaction_keeps_the_newest_changes() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let k = key("s1", "a");
        commit_puts(
            ledger.as_ref(),
            (1..=10).map(|v| put(v, &k, v, v)).collect(),
        );
        assert_eq!(ledger.compact_changes(4, 3).unwrap(), 3, "{name}: sliced");
        assert_eq!(ledger.oldest().unwrap(), 4, "{name}");
        assert_eq!(ledger.compact_changes(4, 100).unwrap(), 3, "{name}");
        assert_eq!(ledger.oldest().unwrap(), 7, "{name}");
        assert_eq!(ledger.compact_changes(4, 100).unwrap(), 0, "{name}");
        let seqs: Vec<u64> = ledger
            .changes(0, 10, 100)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, [7, 8, 9, 10], "{name}");
        assert_eq!(ledger.history(&k, 100).unwrap().len(), 4, "{name}");
        // The item itself is never compacted.
        assert_eq!(
            ledger.load(&k).unwrap().unwrap().state.version(),
            10,
            "{name}"
        );
    }
}

#[test]
fn reports_are_remembered() {
    for (name, fresh) in backends() {
        let (_dir, ledger) = fresh();
        let report = StoredReport {
            report: shelfsync_proto::StoreReport {
                cursor: 7,
                ..Default::default()
            },
            at_ms: 5,
            digest_ok: Some(true),
        };
        ledger.save_report("store-1", &report).unwrap();
        assert_eq!(
            ledger.reports().unwrap(),
            vec![("store-1".to_string(), report)],
            "{name}"
        );
    }
}
