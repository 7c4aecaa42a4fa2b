//! Atomic multi-key commits (SPEC §4 guarantee 11, §5), judged on the
//! whole change log against the requests the clients sent.
//!
//! - Every commit of the log is whole: the changes sharing a `commit_end`
//!   have consecutive seqs ending at it and come from one request (store
//!   and idempotency key), and no seq is missing from the log (the run
//!   keeps every change of every location, so a commit cut short, or
//!   another commit's changes in between, shows).
//! - A batch or a transfer step is one commit of exactly its lines, in
//!   line order: a batch's keys with its ops and amounts (and, when it was
//!   acknowledged, each line's item as answered); a shipment's skus at
//!   `from` as `transfer_ship` of the amounts asked, all naming one
//!   transfer (the one answered, when it was); a receipt's skus at `to` as
//!   `transfer_receive` of the amounts asked, naming the transfer; a hold's
//!   creation, fulfilment or release as `hold`, `hold_fulfil` or
//!   `hold_release` of each line's amount, naming the hold. A close writes
//!   no item. An indeterminate request may be in the log or not
//!   ([`super::exactly_once`] judges presence), but only whole.
//! - A hold ends once (guarantee 10): after its creation's commit at most
//!   one commit fulfils, releases or expires it, on the same keys with the
//!   same amounts.
//!
//! Replicas applying commits whole is judged at the end by
//! [`super::converged`] (every replica equal to the coordinator).

use std::collections::{BTreeMap, HashMap};

use super::{Anomaly, fmt_change, fmt_event};
use crate::nemesis::history::{Change, Event, Final, Key, Op, Outcome, Reply};

const CHECKER: &str = "atomic_commits";

/// Checks the log's commits, and each multi-key request's commit.
pub fn atomic_commits(events: &[Event], fin: &Final) -> Vec<Anomaly> {
    let log = fin.log();
    let mut found = whole_commits(&log);
    found.extend(holds_end_once(&log));
    let mut by_request: HashMap<(&str, &str), Vec<(&Key, &Change)>> = HashMap::new();
    for &(key, c) in &log {
        by_request
            .entry((c.store.as_str(), c.idempotency_key.as_str()))
            .or_default()
            .push((key, c));
    }
    let mut judged = std::collections::HashSet::new();
    for e in events {
        let multi = matches!(e.op, Op::Batch { .. }) || e.op.is_step();
        let Some(idem) = e.idempotency_key.as_deref().filter(|_| multi) else {
            continue;
        };
        // A request and its replays are one request: judged once, by the
        // answer that says most (a definite one, the first).
        let id = (e.store.as_str(), idem);
        if judged.contains(&id) || !e.outcome.is_definite() && has_definite(events, e) {
            continue;
        }
        judged.insert(id);
        let Some(changes) = by_request.get(&id) else {
            continue;
        };
        if let Err(detail) = matches_request(e, changes) {
            let list: Vec<String> = changes
                .iter()
                .map(|(k, c)| format!("\n    {k}: {}", fmt_change(c)))
                .collect();
            found.push(Anomaly::new(
                CHECKER,
                Some(&e.key),
                format!("{detail}:\n    {}{}", fmt_event(e), list.concat()),
            ));
        }
    }
    found
}

/// Whether another event with `e`'s store and idempotency key ended
/// definitely.
fn has_definite(events: &[Event], e: &Event) -> bool {
    events.iter().any(|o| {
        o.store == e.store && o.idempotency_key == e.idempotency_key && o.outcome.is_definite()
    })
}

/// The log's own structure: seqs 1, 2, 3, ... and whole commits.
fn whole_commits(log: &[(&Key, &Change)]) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let mut report = |key: Option<&Key>, detail: String| {
        found.push(Anomaly::new(CHECKER, key, detail));
    };
    let mut previous = 0;
    for &(key, c) in log {
        if c.commit_end != 0 && c.commit_end < c.seq {
            report(
                Some(key),
                format!(
                    "commit ..{} ends before its change: {}",
                    c.commit_end,
                    fmt_change(c)
                ),
            );
        }
        if c.seq != previous + 1 {
            let detail = match c.seq.cmp(&(previous + 1)) {
                std::cmp::Ordering::Less => format!("seq {} twice in the log", c.seq),
                _ => format!("seqs {}..={} missing from the log", previous + 1, c.seq - 1),
            };
            report(Some(key), detail);
        }
        previous = c.seq;
    }
    // Group consecutive changes by commit.
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut i = 0;
    while i < log.len() {
        let end = log[i].1.commit_end();
        let mut j = i + 1;
        while j < log.len() && log[j].1.commit_end() == end {
            j += 1;
        }
        let group = &log[i..j];
        let (first, last) = (group[0].1, group[group.len() - 1].1);
        let list = || -> String {
            group
                .iter()
                .map(|(k, c)| format!("\n    {k}: {}", fmt_change(c)))
                .collect()
        };
        if let Some(earlier) = seen.insert(end, i) {
            report(
                Some(group[0].0),
                format!(
                    "commit ..{end} split: its changes are apart in the log (also at seq {}):{}",
                    log[earlier].1.seq,
                    list()
                ),
            );
        } else if last.seq != end || first.seq + group.len() as u64 != end + 1 {
            report(
                Some(group[0].0),
                format!(
                    "commit ..{end} holds seqs {}..={} only:{}",
                    first.seq,
                    last.seq,
                    list()
                ),
            );
        }
        let same = |(_, c): &&(&Key, &Change)| {
            c.store == first.store && c.idempotency_key == first.idempotency_key
        };
        if !group.iter().all(|c| same(&c)) {
            report(
                Some(group[0].0),
                format!("commit ..{end} mixes requests:{}", list()),
            );
        }
        i = j;
    }
    found
}

/// Per hold the log names: its creation first, then at most one commit
/// that ends it, on the creation's keys with its amounts.
fn holds_end_once(log: &[(&Key, &Change)]) -> Vec<Anomaly> {
    // Per hold, its commits in order: (kind, commit end, lines).
    type Lines<'a> = Vec<(&'a Key, Option<u64>)>;
    let mut holds: BTreeMap<&str, Vec<(&str, u64, Lines<'_>)>> = BTreeMap::new();
    for &(key, c) in log {
        let Some(id) = c.args.hold.as_deref() else {
            continue;
        };
        let steps = holds.entry(id).or_default();
        match steps.last_mut() {
            Some((kind, end, lines)) if *end == c.commit_end() && *kind == c.op_kind => {
                lines.push((key, c.args.amount));
            }
            _ => steps.push((&c.op_kind, c.commit_end(), vec![(key, c.args.amount)])),
        }
    }
    let mut found = Vec::new();
    for (id, steps) in holds {
        let kinds: Vec<String> = steps
            .iter()
            .map(|(kind, end, _)| format!("{kind} ..{end}"))
            .collect();
        let wrong = match steps.as_slice() {
            [(created, _, _), rest @ ..] if *created == "hold" => match rest {
                [] => None,
                [(_, _, ended)] if ended != &steps[0].2 => {
                    Some("ended on other keys or amounts than it took")
                }
                [_] => None,
                _ => Some("ended more than once"),
            },
            _ => Some("its first change is not its creation"),
        };
        if let Some(wrong) = wrong {
            found.push(Anomaly::new(
                CHECKER,
                Some(steps[0].2[0].0),
                format!("hold {id} {wrong}: {}", kinds.join(", ")),
            ));
        }
    }
    found
}

/// What a line of a multi-key request must leave in the log: the key, the
/// op's name, its amount, and the item answered.
struct Expected<'a> {
    key: Key,
    kind: &'static str,
    amount: Option<u64>,
    item: Option<Option<&'a crate::nemesis::history::ItemState>>,
}

/// Whether `changes` (one request's, in seq order) are exactly what `e`
/// asked for.
fn matches_request(e: &Event, changes: &[(&Key, &Change)]) -> Result<(), String> {
    let items = match (&e.outcome, &e.reply) {
        (Outcome::Ok { .. }, Some(Reply::Items { items })) => Some(items),
        _ => None,
    };
    let expected: Vec<Expected<'_>> = match &e.op {
        Op::Batch { lines } => lines
            .iter()
            .enumerate()
            .map(|(i, l)| Expected {
                key: l.key.clone(),
                kind: l.op.log_kind().unwrap_or("?"),
                amount: l.op.amount(),
                item: items.and_then(|items| items.get(i)).map(Option::as_ref),
            })
            .collect(),
        Op::TransferCreate { from, lines, .. } => lines
            .iter()
            .map(|l| Expected {
                key: Key::new(from, &l.sku),
                kind: "transfer_ship",
                amount: Some(l.amount),
                item: None,
            })
            .collect(),
        Op::TransferReceive { to, lines, .. } => lines
            .iter()
            .map(|l| Expected {
                key: Key::new(to, &l.sku),
                kind: "transfer_receive",
                amount: Some(l.amount),
                item: None,
            })
            .collect(),
        Op::TransferClose { .. } => Vec::new(),
        Op::HoldCreate { lines, .. }
        | Op::HoldFulfil { lines, .. }
        | Op::HoldRelease { lines, .. } => {
            let kind = match &e.op {
                Op::HoldCreate { .. } => "hold",
                Op::HoldFulfil { .. } => "hold_fulfil",
                _ => "hold_release",
            };
            lines
                .iter()
                .map(|l| Expected {
                    key: l.key.clone(),
                    kind,
                    amount: Some(l.amount),
                    item: None,
                })
                .collect()
        }
        _ => return Ok(()),
    };
    if changes.len() != expected.len() {
        return Err(format!(
            "{} lines asked, {} changes in the log",
            expected.len(),
            changes.len()
        ));
    }
    for (i, (x, (key, c))) in expected.iter().zip(changes).enumerate() {
        if **key != x.key || c.op_kind != x.kind {
            return Err(format!(
                "line {i} asked {} on {}, the log has {} on {key}",
                x.kind, x.key, c.op_kind
            ));
        }
        if x.amount.is_some() && c.args.amount != x.amount {
            return Err(format!(
                "line {i} asked {:?} units, the log moved {:?}",
                x.amount, c.args.amount
            ));
        }
        if let Some(item) = x.item
            && item != c.item.as_ref()
        {
            return Err(format!("line {i} was answered otherwise than logged"));
        }
    }
    match &e.op {
        Op::TransferCreate { lines, .. } => {
            let named: Vec<Option<&String>> = changes
                .iter()
                .map(|(_, c)| c.args.transfer.as_ref())
                .collect();
            if named.windows(2).any(|w| w[0] != w[1]) || named.iter().any(Option::is_none) {
                return Err("the shipment's changes do not name one transfer".into());
            }
            if let (Outcome::Ok { .. }, Some(Reply::Transfer(t))) = (&e.outcome, &e.reply) {
                if named[0] != Some(&t.id) {
                    return Err(format!("answered as transfer {}", t.id));
                }
                let shipped: Vec<(&str, u64)> = t
                    .lines
                    .iter()
                    .map(|l| (l.sku.as_str(), l.shipped))
                    .collect();
                let asked: Vec<(&str, u64)> =
                    lines.iter().map(|l| (l.sku.as_str(), l.amount)).collect();
                if shipped != asked {
                    return Err(format!("answered as shipping {shipped:?}"));
                }
            }
        }
        Op::HoldCreate { .. } | Op::HoldFulfil { .. } | Op::HoldRelease { .. } => {
            let named: Vec<Option<&String>> =
                changes.iter().map(|(_, c)| c.args.hold.as_ref()).collect();
            if named.windows(2).any(|w| w[0] != w[1]) || named.iter().any(Option::is_none) {
                return Err("the hold's changes do not name one hold".into());
            }
            let asked = match (&e.op, &e.reply) {
                (Op::HoldFulfil { hold, .. } | Op::HoldRelease { hold, .. }, _) => Some(hold),
                (_, Some(Reply::Hold { id, .. })) => Some(id),
                _ => None,
            };
            if let Some(asked) = asked.filter(|id| named[0] != Some(*id)) {
                return Err(format!("the changes name another hold than {asked}"));
            }
        }
        Op::TransferReceive { transfer, .. }
            if changes
                .iter()
                .any(|(_, c)| c.args.transfer.as_ref() != Some(transfer)) =>
        {
            return Err(format!("the receipt's changes do not all name {transfer}"));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::nemesis::history::{BatchLine, TransferLineView, TransferView, Units};

    fn details(found: &[Anomaly]) -> String {
        found.iter().map(|a| format!("{a}\n")).collect()
    }

    fn a() -> Key {
        Key::new("s1", "a")
    }
    fn b() -> Key {
        Key::new("s1", "b")
    }

    fn batch() -> Op {
        let line = |key, op| BatchLine {
            key,
            op,
            expected_version: None,
        };
        Op::Batch {
            lines: vec![line(a(), add(2)), line(b(), remove(1))],
        }
    }

    fn ship() -> Op {
        Op::TransferCreate {
            from: "s1".into(),
            to: "s2".into(),
            lines: vec![
                Units {
                    sku: "a".into(),
                    amount: 3,
                },
                Units {
                    sku: "b".into(),
                    amount: 1,
                },
            ],
        }
    }

    fn shipped(id: &str) -> Reply {
        let line = |sku: &str, shipped| TransferLineView {
            sku: sku.into(),
            shipped,
            received: 0,
            lost: 0,
        };
        Reply::Transfer(TransferView {
            id: id.into(),
            from: "s1".into(),
            to: "s2".into(),
            state: "in_transit".into(),
            lines: vec![line("a", 3), line("b", 1)],
        })
    }

    /// a and b created with 5; a batch (k2) adds 2 to a and removes 1 from
    /// b; a transfer (k3) ships 3 of a and 1 of b as t5.
    fn run() -> (H, Log) {
        let mut h = H::new();
        h.write(1, create(5), 0, 1).on(a()).ok(it(5, 0, 1));
        h.write(1, create(5), 2, 3).on(b()).ok(it(5, 0, 1));
        let items = vec![Some(it(7, 0, 2)), Some(it(4, 0, 2))];
        h.write(1, batch(), 4, 5)
            .on(a())
            .ok_reply(Reply::Items { items });
        h.write(1, ship(), 6, 7).on(a()).ok_reply(shipped("t5"));
        let mut l = Log::new();
        l.commit("s1", "k0", &[(a(), "create", qty(5), Some(5))]);
        l.commit("s1", "k1", &[(b(), "create", qty(5), Some(5))]);
        l.commit(
            "s1",
            "k2",
            &[
                (a(), "add", amt(2), Some(7)),
                (b(), "remove", amt(1), Some(4)),
            ],
        );
        l.commit(
            "s1",
            "k3",
            &[
                (a(), "transfer_ship", tx("t5", 3), Some(4)),
                (b(), "transfer_ship", tx("t5", 1), Some(3)),
            ],
        );
        (h, l)
    }

    #[test]
    fn whole_commits_of_exactly_the_lines_are_accepted() {
        let (h, l) = run();
        let found = atomic_commits(&h.events, &l.fin);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn half_a_batch_is_rejected() {
        let (h, mut l) = run();
        // b's line of the batch is not in the log: its seq is missing and
        // the batch's commit holds one line.
        l.fin.histories[1].1.remove(1);
        let found = atomic_commits(&h.events, &l.fin);
        let text = details(&found);
        assert!(text.contains("seqs 4..=4 missing from the log"), "{text}");
        assert!(text.contains("commit ..4 holds seqs 3..=3 only"), "{text}");
        assert!(
            text.contains("2 lines asked, 1 changes in the log"),
            "{text}"
        );
    }

    #[test]
    fn an_indeterminate_batch_applied_in_part_is_rejected() {
        let (mut h, mut l) = run();
        h.events[2].outcome = Outcome::Indeterminate {
            reason: "timeout".into(),
        };
        h.events[2].reply = None;
        assert!(atomic_commits(&h.events, &l.fin).is_empty());
        // Renumbered so the log itself looks whole: only the request shows it.
        l = Log::new();
        l.commit("s1", "k0", &[(a(), "create", qty(5), Some(5))]);
        l.commit("s1", "k1", &[(b(), "create", qty(5), Some(5))]);
        l.commit("s1", "k2", &[(a(), "add", amt(2), Some(7))]);
        let found = atomic_commits(&h.events, &l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("2 lines asked, 1 changes"));
    }

    #[test]
    fn a_commit_interleaved_with_another_is_rejected() {
        let (h, mut l) = run();
        // The shipment's change of a (seq 5) swaps places with the batch's
        // change of b (seq 4).
        l.fin.histories[0].1[2].seq = 4;
        l.fin.histories[1].1[1].seq = 5;
        let found = atomic_commits(&h.events, &l.fin);
        let text = details(&found);
        assert!(text.contains("commit ..4 holds seqs 3..=3 only"), "{text}");
        assert!(
            text.contains("commit ..4 ends before its change: seq 5"),
            "{text}"
        );
        assert!(text.contains("commit ..6 split"), "{text}");
    }

    #[test]
    fn a_batch_answered_otherwise_than_logged_is_rejected() {
        let (mut h, l) = run();
        h.events[2].reply = Some(Reply::Items {
            items: vec![Some(it(8, 0, 2)), Some(it(4, 0, 2))],
        });
        let found = atomic_commits(&h.events, &l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("line 0 was answered otherwise"));
    }

    #[test]
    fn a_shipment_with_other_amounts_or_transfers_is_rejected() {
        let (h, mut l) = run();
        l.fin.histories[1].1[2].args = tx("t5", 2);
        let found = atomic_commits(&h.events, &l.fin);
        assert!(found[0].detail.starts_with("line 1 asked Some(1) units"));
        let (h, mut l) = run();
        l.fin.histories[1].1[2].args = tx("t6", 1);
        let found = atomic_commits(&h.events, &l.fin);
        assert!(
            found[0]
                .detail
                .starts_with("the shipment's changes do not name one transfer"),
            "{}",
            details(&found)
        );
        let (mut h, l) = run();
        h.events[3].reply = Some(shipped("t9"));
        let found = atomic_commits(&h.events, &l.fin);
        assert!(found[0].detail.starts_with("answered as transfer t9"));
    }

    #[test]
    fn a_close_that_writes_items_is_rejected() {
        let (mut h, mut l) = run();
        let close = Op::TransferClose {
            transfer: "t5".into(),
        };
        h.write(1, close, 8, 9).on(a()).ok_reply(shipped("t5"));
        l.commit("s1", "k4", &[(a(), "remove", amt(1), Some(3))]);
        let found = atomic_commits(&h.events, &l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("0 lines asked, 1 changes"));
    }

    /// A hold (k5) of 2 of a and 1 of b, answered as h7, then fulfilled (k6).
    fn held() -> (H, Log) {
        use crate::nemesis::history::HoldLine;
        let (mut h, mut l) = run();
        let lines = vec![
            HoldLine {
                key: a(),
                amount: 2,
            },
            HoldLine {
                key: b(),
                amount: 1,
            },
        ];
        let reply = Reply::Hold {
            id: "h7".into(),
            state: "active".into(),
            lines: lines.clone(),
        };
        let create = Op::HoldCreate {
            lines: lines.clone(),
            ttl_ms: 1_000,
        };
        h.write(1, create, 8, 9).on(a()).ok_reply(reply);
        let fulfil = Op::HoldFulfil {
            hold: "h7".into(),
            lines,
        };
        h.write(1, fulfil, 10, 11).on(a()).indet();
        l.commit(
            "s1",
            "k4",
            &[
                (a(), "hold", hold("h7", 2), Some(4)),
                (b(), "hold", hold("h7", 1), Some(3)),
            ],
        );
        l.commit(
            "s1",
            "k5",
            &[
                (a(), "hold_fulfil", hold("h7", 2), Some(2)),
                (b(), "hold_fulfil", hold("h7", 1), Some(2)),
            ],
        );
        (h, l)
    }

    #[test]
    fn a_hold_taken_and_fulfilled_whole_is_accepted() {
        let (h, l) = held();
        let found = atomic_commits(&h.events, &l.fin);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn a_hold_ended_twice_or_otherwise_is_rejected() {
        let (h, mut l) = held();
        l.commit(
            "coordinator",
            "hold-expiry:h7",
            &[
                (a(), "hold_expire", hold("h7", 2), Some(2)),
                (b(), "hold_expire", hold("h7", 1), Some(2)),
            ],
        );
        let found = atomic_commits(&h.events, &l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0].detail.starts_with(
                "hold h7 ended more than once: hold ..8, hold_fulfil ..10, hold_expire ..12"
            ),
            "{}",
            found[0]
        );
        let (h, mut l) = held();
        l.fin.histories[1].1[4].args = hold("h7", 2);
        let found = atomic_commits(&h.events, &l.fin);
        let text = details(&found);
        assert!(
            text.contains("hold h7 ended on other keys or amounts than it took"),
            "{text}"
        );
        assert!(
            text.contains("line 1 asked Some(1) units, the log moved Some(2)"),
            "{text}"
        );
    }

    #[test]
    fn a_hold_answered_as_another_is_rejected() {
        let (mut h, l) = held();
        if let Some(Reply::Hold { id, .. }) = &mut h.events[4].reply {
            *id = "h8".into();
        }
        let found = atomic_commits(&h.events, &l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("the changes name another hold than h8")
        );
    }
}
