//! Exactly-once effect (SPEC §4, guarantees 1, 3 and 4), judged on the
//! coordinator's change log (`shelfctl history`) against the writes the
//! clients saw answered.
//!
//! A write is identified by its store and idempotency key. The log must
//! number each key's changes 1, 2, 3, ...; hold each request at most once
//! (one commit, each key once); hold every acknowledged write, as
//! acknowledged (else it was lost); hold no refused write and nothing no
//! client sent (a phantom) or sent for another key. A deliberate replay
//! must get its original's answer.
//!
//! Multi-key requests (batches, hold and transfer steps) are judged here
//! only for presence; [`super::atomic_commits`] judges what their commits
//! hold. A lock grant must be in the log with its answered token as
//! version; a lock's or a hold's release answered 204 need not be (it is
//! 204 for one already gone too).
//! The coordinator's own writes (lock and hold expiries, under the store
//! `coordinator`) are not the clients' and are judged by the other checkers.

use std::collections::{BTreeSet, HashMap};

use super::{Anomaly, fmt_change, fmt_event};
use crate::nemesis::history::{Change, Event, Final, Key, Op, Outcome, Reply};

const CHECKER: &str = "exactly_once";

/// The store name of the coordinator's own writes.
pub(crate) const COORDINATOR: &str = "coordinator";

/// A request's identity: (store, idempotency key).
type RequestId<'a> = (&'a str, &'a str);

/// Whether `change` is one of the coordinator's own, as it names them: a
/// lock's expiry or a hold's.
pub(crate) fn is_coordinators_own(change: &Change) -> bool {
    change.store == COORDINATOR
        && matches!(
            (
                change.op_kind.as_str(),
                change.idempotency_key.split(':').next()
            ),
            ("lock_expire", Some("lock-expiry")) | ("hold_expire", Some("hold-expiry"))
        )
}

/// Checks the change log in `fin.histories` against the writes in `events`.
pub fn exactly_once(events: &[Event], fin: &Final) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let mut report = |key: &Key, detail: String| {
        found.push(Anomaly::new(CHECKER, Some(key), detail));
    };

    // (a) versions 1, 2, 3, ... per key; (b) each request applied once.
    let mut changes: HashMap<RequestId<'_>, Vec<(&Key, &Change)>> = HashMap::new();
    for (key, log) in &fin.histories {
        let mut previous = 0;
        for change in log {
            if change.version != previous + 1 {
                report(
                    key,
                    format!(
                        "version {} follows {previous} (a gap or a duplicate): {}",
                        change.version,
                        fmt_change(change)
                    ),
                );
            }
            if let Some(item) = change.item.as_ref().filter(|i| i.version != change.version) {
                report(
                    key,
                    format!("item version {} in {}", item.version, fmt_change(change)),
                );
            }
            previous = change.version;
            let id = (change.store.as_str(), change.idempotency_key.as_str());
            changes.entry(id).or_default().push((key, change));
        }
    }
    let mut duplicates: Vec<_> = changes
        .iter()
        .filter(|(_, c)| {
            let commits: BTreeSet<u64> = c.iter().map(|(_, c)| c.commit_end()).collect();
            let keys: BTreeSet<&Key> = c.iter().map(|(k, _)| *k).collect();
            commits.len() > 1 || keys.len() < c.len()
        })
        .collect();
    duplicates.sort_by_key(|(_, c)| c[0].1.seq);
    for ((store, idem), applied) in duplicates {
        let list: Vec<String> = applied
            .iter()
            .map(|(k, c)| format!("\n    {k}: {}", fmt_change(c)))
            .collect();
        let commits: BTreeSet<u64> = applied.iter().map(|(_, c)| c.commit_end()).collect();
        let detail = format!(
            "request {idem:?} of {store} applied {} times:{}",
            commits.len().max(2),
            list.concat()
        );
        report(applied[0].0, detail);
    }

    // (c) acknowledged writes are in the log, as answered; (d) refused
    // writes are not. A replay of a definite answer is judged by (f).
    let by_id: HashMap<u64, &Event> = events.iter().map(|e| (e.id, e)).collect();
    let mut sent: HashMap<RequestId<'_>, Vec<&Event>> = HashMap::new();
    for e in events.iter().filter(|e| e.op.is_write()) {
        let Some(idem) = e.idempotency_key.as_deref() else {
            if e.outcome.is_definite() {
                let detail = format!("write without an idempotency key: {}", fmt_event(e));
                report(&e.key, detail);
            }
            continue;
        };
        sent.entry((e.store.as_str(), idem)).or_default().push(e);
        let original = e.replay_of.and_then(|id| by_id.get(&id));
        if original.is_some_and(|o| o.outcome.is_definite()) {
            continue;
        }
        let applied = changes
            .get(&(e.store.as_str(), idem))
            .map_or(&[][..], Vec::as_slice);
        match &e.outcome {
            Outcome::Ok { item } => {
                if applied.is_empty() {
                    // A close writes no item; a release answers 204 for a
                    // lock or a hold already gone, writing nothing.
                    let nothing = matches!(
                        e.op,
                        Op::TransferClose { .. } | Op::LockRelease { .. } | Op::HoldRelease { .. }
                    );
                    if !nothing {
                        report(
                            &e.key,
                            format!("lost write: acknowledged, not in the log: {}", fmt_event(e)),
                        );
                    }
                    continue;
                }
                let multi_key = matches!(e.op, Op::Batch { .. }) || e.op.is_step();
                let fits = |(k, c): &&(&Key, &Change)| {
                    multi_key
                        || *k == &e.key
                            && match &e.op {
                                Op::LockGrant { .. } => {
                                    c.op_kind == "lock_grant"
                                        && match &e.reply {
                                            Some(Reply::Lock { token, .. }) => *token == c.version,
                                            _ => true,
                                        }
                                }
                                Op::LockRenew { .. } | Op::LockRelease { .. } => {
                                    e.op.log_kind() == Some(c.op_kind.as_str())
                                }
                                _ => {
                                    c.item == *item
                                        && item.as_ref().is_none_or(|i| i.version == c.version)
                                }
                            }
                };
                if !applied.iter().any(|c| fits(&c)) {
                    let (k, c) = applied[0];
                    let detail = format!(
                        "acknowledged write differs from the log:\n    {}\n    log of {k}: {}",
                        fmt_event(e),
                        fmt_change(c)
                    );
                    report(&e.key, detail);
                }
            }
            Outcome::Refused { .. } => {
                if let Some((k, c)) = applied.first() {
                    let detail = format!(
                        "refused write is in the log:\n    {}\n    log of {k}: {}",
                        fmt_event(e),
                        fmt_change(c)
                    );
                    report(&e.key, detail);
                }
            }
            Outcome::Indeterminate { .. } => {}
        }
    }

    // (e) everything in the log was sent by a client, for that key.
    for (key, log) in &fin.histories {
        for change in log {
            if is_coordinators_own(change) {
                continue;
            }
            let id = (change.store.as_str(), change.idempotency_key.as_str());
            match sent.get(&id) {
                None => report(
                    key,
                    format!("phantom write, sent by no client: {}", fmt_change(change)),
                ),
                Some(writes) if !writes.iter().any(|e| e.written_keys().contains(key)) => report(
                    key,
                    format!(
                        "change applied to the wrong key: {}\n    sent as {}",
                        fmt_change(change),
                        fmt_event(writes[0])
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    // (f) a replay gets its original's answer.
    for e in events {
        let Some(original) = e.replay_of.and_then(|id| by_id.get(&id)) else {
            continue;
        };
        let same = match (&e.outcome, &original.outcome) {
            (Outcome::Ok { item: a }, Outcome::Ok { item: b }) => {
                a == b && e.reply == original.reply
            }
            (Outcome::Refused { status: a, .. }, Outcome::Refused { status: b, .. }) => a == b,
            (Outcome::Indeterminate { .. }, _) | (_, Outcome::Indeterminate { .. }) => true,
            _ => false,
        };
        if !same {
            let detail = format!(
                "replay answered differently from its original (applied twice?):\n    {}\n    {}",
                fmt_event(original),
                fmt_event(e)
            );
            report(&e.key, detail);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::testkit::*;
    use super::*;

    /// create 10 (v1), add 5 (v2), a refused remove, an indeterminate add
    /// that did not take effect; the log holds the first two.
    fn run() -> (H, Final) {
        let mut h = H::new();
        let c = h.write(1, create(10), 0, 10).ok(it(10, 0, 1)).id();
        let a = h.write(2, add(5), 20, 30).ok(it(15, 0, 2)).id();
        h.write(3, remove(99), 40, 50).refused(409);
        h.write(3, add(1), 60, 70).indet();
        let fin = h.final_from_changes(&[c, a]);
        (h, fin)
    }

    fn details(found: &[Anomaly]) -> String {
        found.iter().map(|a| format!("{a}\n")).collect()
    }

    #[test]
    fn a_clean_log_is_accepted() {
        let (h, fin) = run();
        assert!(exactly_once(&h.events, &fin).is_empty());
    }

    #[test]
    fn an_indeterminate_write_may_be_in_the_log() {
        let (h, mut fin) = run();
        let mut change = fin.histories[0].1[1].clone();
        (change.seq, change.version, change.idempotency_key) = (3, 3, "k3".into());
        change.item = Some(it(16, 0, 3));
        fin.histories[0].1.push(change);
        let found = exactly_once(&h.events, &fin);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn a_lost_write_is_rejected() {
        let (h, mut fin) = run();
        fin.histories[0].1.pop();
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("lost write"), "{}", found[0]);
        assert!(found[0].detail.contains("#1 c2@s1 add 5"), "{}", found[0]);
    }

    #[test]
    fn a_request_applied_twice_is_rejected() {
        let (h, mut fin) = run();
        let mut again = fin.histories[0].1[1].clone();
        (again.seq, again.version) = (3, 3);
        again.item = Some(it(20, 0, 3));
        fin.histories[0].1.push(again);
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.contains("applied 2 times"), "{}", found[0]);
    }

    #[test]
    fn a_replay_answered_with_another_version_is_rejected() {
        let (mut h, fin) = run();
        h.replay(1, 80, 90).ok(it(15, 0, 2)); // same answer: fine
        assert!(exactly_once(&h.events, &fin).is_empty());
        h.replay(1, 100, 110).ok(it(20, 0, 3));
        h.replay(2, 120, 130).ok(it(10, 0, 3));
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 2, "{}", details(&found));
        assert!(
            found
                .iter()
                .all(|a| a.detail.starts_with("replay answered differently"))
        );
    }

    #[test]
    fn a_replay_of_an_indeterminate_write_must_match_the_log() {
        let (mut h, fin) = run();
        h.replay(3, 80, 90).refused(409);
        assert!(exactly_once(&h.events, &fin).is_empty());
        h.replay(3, 100, 110).ok(it(16, 0, 3));
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("lost write"), "{}", found[0]);
    }

    #[test]
    fn version_gaps_and_duplicates_are_rejected() {
        let (h, mut fin) = run();
        fin.histories[0].1[1].version = 3;
        fin.histories[0].1[1].item = Some(it(15, 0, 3));
        let found = exactly_once(&h.events, &fin);
        assert!(
            found
                .iter()
                .any(|a| a.detail.starts_with("version 3 follows 1")),
            "{}",
            details(&found)
        );
        fin.histories[0].1[1].version = 1;
        let found = exactly_once(&h.events, &fin);
        assert!(
            found
                .iter()
                .any(|a| a.detail.starts_with("version 1 follows 1")),
            "{}",
            details(&found)
        );
    }

    #[test]
    fn a_refused_write_in_the_log_is_rejected() {
        let (h, mut fin) = run();
        let mut change = fin.histories[0].1[1].clone();
        (change.seq, change.version, change.idempotency_key) = (3, 3, "k2".into());
        change.item = Some(it(0, 0, 3));
        fin.histories[0].1.push(change);
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0].detail.starts_with("refused write is in the log"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_phantom_write_is_rejected() {
        let (h, mut fin) = run();
        let mut change = fin.histories[0].1[1].clone();
        (change.seq, change.version, change.idempotency_key) = (3, 3, "nobody".into());
        change.item = Some(it(15, 0, 3));
        fin.histories[0].1.push(change);
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("phantom write"), "{}", found[0]);
    }

    #[test]
    fn an_acknowledged_write_that_differs_from_the_log_is_rejected() {
        let (h, mut fin) = run();
        fin.histories[0].1[1].item = Some(it(14, 0, 2));
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0].detail.starts_with("acknowledged write differs"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn deletes_are_matched_without_an_item() {
        let (mut h, _) = run();
        let d = h.write(1, delete(), 80, 90).if_match(2).deleted().id();
        let fin = h.final_from_changes(&[0, 1, d]);
        assert_eq!(fin.histories[0].1[2].version, 3);
        assert!(exactly_once(&h.events, &fin).is_empty());
    }

    #[test]
    fn a_lock_grant_must_be_logged_with_its_token() {
        let mut h = H::new();
        let c = h.write(1, create(10), 0, 10).ok(it(10, 0, 1)).id();
        let grant = Op::LockGrant {
            holder: "h1".into(),
            ttl_ms: 1_000,
        };
        let reply = |token| Reply::Lock {
            token,
            holder: "h1".into(),
        };
        h.write(1, grant, 20, 30).ok_reply(reply(2));
        let mut fin = h.final_from_changes(&[c]);
        let mut change = fin.histories[0].1[0].clone();
        (change.seq, change.version, change.idempotency_key) = (2, 2, "k1".into());
        change.op_kind = "lock_grant".into();
        change.item = Some(it(10, 0, 2));
        fin.histories[0].1.push(change);
        assert!(exactly_once(&h.events, &fin).is_empty());
        h.events[1].reply = Some(reply(3));
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("acknowledged write differs"));
    }

    #[test]
    fn releases_and_closes_may_write_nothing() {
        let (mut h, fin) = run();
        h.write(1, Op::LockRelease { token: 7 }, 80, 90).deleted();
        let close = Op::TransferClose {
            transfer: "t1".into(),
        };
        h.write(1, close, 100, 110).deleted();
        let found = exactly_once(&h.events, &fin);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn multi_key_requests_are_judged_for_presence() {
        use crate::nemesis::history::BatchLine;
        let line = |sku: &str| BatchLine {
            key: Key::new("loc", sku),
            op: add(1),
            expected_version: None,
        };
        let batch = Op::Batch {
            lines: vec![line("a"), line("b")],
        };
        // An acknowledged batch must be in the log.
        let (mut h, fin) = run();
        let items = vec![Some(it(16, 0, 3)), Some(it(1, 0, 1))];
        h.write(1, batch.clone(), 80, 90)
            .ok_reply(Reply::Items { items });
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("lost write"));
        // A refused one must not be, on any of its keys; a change of it on
        // a key it did not name is applied to the wrong key.
        let (mut h, mut fin) = run();
        h.write(1, batch, 80, 90).refused(409);
        let mut change = fin.histories[0].1[1].clone();
        (change.seq, change.version, change.idempotency_key) = (3, 1, "k4".into());
        fin.histories
            .push((Key::new("loc", "b"), vec![change.clone()]));
        fin.histories.push((Key::new("loc", "c"), vec![change]));
        let found = exactly_once(&h.events, &fin);
        let text = details(&found);
        assert!(text.contains("refused write is in the log"), "{text}");
        assert!(
            text.contains("loc/c: change applied to the wrong key"),
            "{text}"
        );
    }

    #[test]
    fn a_batch_in_two_commits_is_applied_twice() {
        use crate::nemesis::history::BatchLine;
        let b = Key::new("loc", "b");
        let line = |key: Key| BatchLine {
            key,
            op: add(1),
            expected_version: None,
        };
        let (mut h, mut fin) = run();
        let items = vec![Some(it(16, 0, 3)), Some(it(1, 0, 1))];
        let batch = Op::Batch {
            lines: vec![line(key()), line(b.clone())],
        };
        h.write(1, batch, 80, 90).ok_reply(Reply::Items { items });
        let mut on_a = fin.histories[0].1[1].clone();
        (on_a.seq, on_a.version, on_a.idempotency_key) = (3, 3, "k4".into());
        on_a.commit_end = 4;
        on_a.item = Some(it(16, 0, 3));
        let mut on_b = on_a.clone();
        (on_b.seq, on_b.version) = (4, 1);
        on_b.item = Some(it(1, 0, 1));
        fin.histories[0].1.push(on_a);
        fin.histories.push((b, vec![on_b]));
        let found = exactly_once(&h.events, &fin);
        assert!(found.is_empty(), "{}", details(&found));
        fin.histories[0].1[2].commit_end = 3;
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.contains("applied 2 times"), "{}", found[0]);
    }

    #[test]
    fn only_the_coordinators_expiries_need_no_client() {
        let (h, mut fin) = run();
        let mut expiry = fin.histories[0].1[1].clone();
        (expiry.seq, expiry.version, expiry.store) = (3, 3, COORDINATOR.into());
        expiry.op_kind = "lock_expire".into();
        expiry.idempotency_key = "lock-expiry:loc/a:2".into();
        expiry.item = Some(it(15, 0, 3));
        fin.histories[0].1.push(expiry.clone());
        assert!(exactly_once(&h.events, &fin).is_empty());
        fin.histories[0].1[2].op_kind = "add".into();
        let found = exactly_once(&h.events, &fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("phantom write"));
    }
}
