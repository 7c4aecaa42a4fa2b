//! The fault suite's checkers: pure functions that judge a recorded history
//! ([`crate::nemesis::history`]) against the guarantees of SPEC §4. Each
//! returns the [`Anomaly`]s it found; an empty list means the history passes.
//!
//! - [`linearizable`] (guarantee 4): per key, the definite writes and strong
//!   reads can be ordered consistently with real time and the sequential
//!   [`model`] of SPEC §2 ([`linear`] holds the search).
//! - [`no_oversell`] (guarantee 2): `reserved <= quantity` everywhere.
//! - [`exactly_once`] (guarantees 1, 3, 4): the coordinator's change log
//!   holds every acknowledged write once, nothing refused, nothing unknown,
//!   with versions 1, 2, 3, ...
//! - [`converged`] (guarantee 5): every replica equals the coordinator.
//! - [`monotonic_reads`]: local reads at a store never go back in version.
//! - [`lock_fencing`] (guarantee 9): while a lock is live only its token
//!   writes the key; a token once ended is never accepted again; tokens
//!   grow per key.
//! - [`atomic_commits`] (guarantee 11): each commit of the log is whole,
//!   and each batch or transfer step is one commit of exactly its lines.
//! - [`conservation`] (guarantee 11): per sku, stock on hand plus stock in
//!   transit changes only by the ops that add or remove stock, and every
//!   transfer read back agrees with the log.
//!
//! The single-key checkers (the first five) see batches as one op per line
//! ([`single_key_view`]); [`linearizable`] leaves out the keys that locks,
//! holds or transfers touch ([`unmodeled_keys`]), whose changes its model
//! cannot express.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::nemesis::history::{Event, Final, ItemState, Key, Op, Outcome, Reply};

mod atomic;
mod conservation;
mod exactly_once;
mod fencing;
mod invariants;
pub mod linear;
pub mod model;
#[cfg(test)]
mod testkit;

pub use atomic::atomic_commits;
pub use conservation::conservation;
pub use exactly_once::exactly_once;
pub use fencing::lock_fencing;
pub use invariants::{converged, monotonic_reads, no_oversell};
pub use linear::linearizable;

/// One violation a checker found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// The checker that found it (`"linearizable"`, `"exactly_once"`, ...).
    pub checker: &'static str,
    /// The key it concerns, if it concerns one.
    pub key: Option<Key>,
    /// What is wrong, for a human: the events and states involved.
    pub detail: String,
}

impl Anomaly {
    fn new(checker: &'static str, key: Option<&Key>, detail: String) -> Self {
        Anomaly {
            checker,
            key: key.cloned(),
            detail,
        }
    }
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "[{}] {}: {}", self.checker, key, self.detail),
            None => write!(f, "[{}] {}", self.checker, self.detail),
        }
    }
}

/// Runs every checker; the anomalies of all of them, in checker order.
pub fn check_all(events: &[Event], fin: &Final) -> Vec<Anomaly> {
    let view = single_key_view(events);
    let unmodeled = unmodeled_keys(events, fin);
    let modeled: Vec<Event> = view
        .iter()
        .filter(|e| !unmodeled.contains(&e.key))
        .cloned()
        .collect();
    let mut all = linearizable(&modeled);
    all.extend(no_oversell(&view, fin));
    all.extend(exactly_once(events, fin));
    all.extend(converged(fin));
    all.extend(monotonic_reads(&view));
    all.extend(lock_fencing(events, fin));
    all.extend(atomic_commits(events, fin));
    all.extend(conservation(fin));
    all
}

/// The single-key ops of `events` (SPEC §2), with each line of a batch as
/// an op of its own on its key: the batch's id, store, idempotency key and
/// times, the line's op and expected version, and as outcome the line's
/// item when the batch was accepted (indeterminate when the answer did not
/// carry it) or indeterminate when the batch was. A refused batch changed
/// nothing and its refusal speaks for one line only: it is left out, as
/// are lock ops and transfer steps.
pub fn single_key_view(events: &[Event]) -> Vec<Event> {
    let mut view = Vec::with_capacity(events.len());
    for e in events {
        if e.op.is_single_key() {
            view.push(e.clone());
            continue;
        }
        let Op::Batch { lines } = &e.op else {
            continue;
        };
        let items = match &e.reply {
            Some(Reply::Items { items }) if items.len() == lines.len() => Some(items),
            _ => None,
        };
        for (i, line) in lines.iter().enumerate() {
            let outcome = match (&e.outcome, items) {
                (Outcome::Ok { .. }, Some(items)) => Outcome::Ok {
                    item: items[i].clone(),
                },
                (Outcome::Refused { .. }, _) => continue,
                _ => Outcome::Indeterminate {
                    reason: format!("line {i} of a batch without a definite item"),
                },
            };
            view.push(Event {
                key: line.key.clone(),
                op: line.op.clone(),
                if_match: line.expected_version,
                outcome,
                reply: None,
                ..e.clone()
            });
        }
    }
    view
}

/// The keys the single-key model cannot judge: those a lock op or a hold
/// or transfer step of the history asked for, and those whose change log
/// holds lock, hold or transfer ops (the coordinator's expiries, steps the
/// clients never saw answered).
pub fn unmodeled_keys(events: &[Event], fin: &Final) -> BTreeSet<Key> {
    let mut keys = BTreeSet::new();
    for e in events {
        if e.op.is_lock_op() || e.op.is_step() {
            keys.extend(e.written_keys());
        }
    }
    for (key, log) in &fin.histories {
        let foreign = log.iter().any(|c| {
            c.op_kind.starts_with("lock_")
                || c.op_kind.starts_with("hold")
                || c.op_kind.starts_with("transfer_")
        });
        if foreign {
            keys.insert(key.clone());
        }
    }
    keys
}

/// An item in one line: `"name" q=5 r=1 v=3`.
pub(crate) fn fmt_item(item: &ItemState) -> String {
    format!(
        "{:?} q={} r={} v={}",
        item.name, item.quantity, item.reserved, item.version
    )
}

/// An optional item: the item, or `absent`.
pub(crate) fn fmt_opt_item(item: Option<&ItemState>) -> String {
    item.map_or_else(|| "absent".to_string(), fmt_item)
}

fn fmt_op(op: &Op) -> String {
    match op {
        Op::Create { name, quantity } => format!("create {name:?} q={quantity}"),
        Op::Set { name, quantity } => {
            let mut s = "set".to_string();
            if let Some(name) = name {
                s.push_str(&format!(" name={name:?}"));
            }
            if let Some(quantity) = quantity {
                s.push_str(&format!(" q={quantity}"));
            }
            s
        }
        Op::Add { amount } => format!("add {amount}"),
        Op::Remove { amount } => format!("remove {amount}"),
        Op::Reserve { amount } => format!("reserve {amount}"),
        Op::Release { amount } => format!("release {amount}"),
        Op::Fulfil { amount } => format!("fulfil {amount}"),
        Op::Delete => "delete".to_string(),
        Op::Read { strong: true } => "strong read".to_string(),
        Op::Read { strong: false } => "local read".to_string(),
        Op::LockGrant { holder, ttl_ms } => format!("lock grant {holder} ttl={ttl_ms}ms"),
        Op::LockRenew { token, ttl_ms } => format!("lock renew {token} ttl={ttl_ms}ms"),
        Op::LockRelease { token } => format!("lock release {token}"),
        Op::Batch { lines } => {
            let lines: Vec<String> = lines
                .iter()
                .map(|l| {
                    let mut s = format!("{} {}", l.key, fmt_op(&l.op));
                    if let Some(v) = l.expected_version {
                        s.push_str(&format!(" expected={v}"));
                    }
                    s
                })
                .collect();
            format!("batch [{}]", lines.join("; "))
        }
        Op::TransferCreate { from, to, lines } => {
            format!("transfer {from}->{to} [{}]", fmt_units(lines))
        }
        Op::TransferReceive {
            transfer,
            to,
            lines,
        } => {
            format!("receive {transfer} at {to} [{}]", fmt_units(lines))
        }
        Op::TransferClose { transfer } => format!("close {transfer}"),
        Op::HoldCreate { lines, ttl_ms } => {
            format!("hold [{}] ttl={ttl_ms}ms", fmt_hold_lines(lines))
        }
        Op::HoldFulfil { hold, lines } => format!("fulfil {hold} [{}]", fmt_hold_lines(lines)),
        Op::HoldRelease { hold, lines } => format!("release {hold} [{}]", fmt_hold_lines(lines)),
    }
}

fn fmt_hold_lines(lines: &[crate::nemesis::history::HoldLine]) -> String {
    let lines: Vec<String> = lines
        .iter()
        .map(|l| format!("{} x{}", l.key, l.amount))
        .collect();
    lines.join(", ")
}

fn fmt_units(lines: &[crate::nemesis::history::Units]) -> String {
    let lines: Vec<String> = lines
        .iter()
        .map(|l| format!("{} x{}", l.sku, l.amount))
        .collect();
    lines.join(", ")
}

fn fmt_reply(reply: &Reply) -> String {
    match reply {
        Reply::Lock { token, holder } => format!("lock {holder} token {token}"),
        Reply::Items { items } => {
            let items: Vec<String> = items.iter().map(|i| fmt_opt_item(i.as_ref())).collect();
            format!("items [{}]", items.join("; "))
        }
        Reply::Transfer(t) => {
            let lines: Vec<String> = t
                .lines
                .iter()
                .map(|l| {
                    format!(
                        "{} shipped {} received {} lost {}",
                        l.sku, l.shipped, l.received, l.lost
                    )
                })
                .collect();
            format!("transfer {} {} [{}]", t.id, t.state, lines.join("; "))
        }
        Reply::Hold { id, state, lines } => {
            format!("hold {id} {state} [{}]", fmt_hold_lines(lines))
        }
        Reply::Problem { kind, line } => match line {
            Some(line) => format!("{kind} at line {line}"),
            None => kind.clone(),
        },
    }
}

fn fmt_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok { item } => format!("ok {}", fmt_opt_item(item.as_ref())),
        Outcome::Refused { status, .. } => format!("refused {status}"),
        Outcome::Indeterminate { reason } => format!("indeterminate ({reason})"),
    }
}

fn fmt_ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// An event in one line: id, client, store, op, times and outcome.
pub(crate) fn fmt_event(e: &Event) -> String {
    let mut s = format!("#{} c{}@{} {}", e.id, e.client, e.store, fmt_op(&e.op));
    if let Some(v) = e.if_match {
        s.push_str(&format!(" if-match={v}"));
    }
    if let Some(token) = e.lock_token {
        s.push_str(&format!(" lock-token={token}"));
    }
    if let Some(original) = e.replay_of {
        s.push_str(&format!(" replay-of=#{original}"));
    }
    s.push_str(&format!(
        " [{}..{}] -> {}",
        fmt_ms(e.invoked_ns),
        fmt_ms(e.completed_ns),
        fmt_outcome(&e.outcome)
    ));
    if let Some(reply) = &e.reply {
        s.push_str(&format!(" ({})", fmt_reply(reply)));
    }
    s
}

/// A change in one line: seq, commit, store, op and its fields,
/// idempotency key, version and item.
pub(crate) fn fmt_change(c: &crate::nemesis::history::Change) -> String {
    let mut op = c.op_kind.clone();
    let a = &c.args;
    let fields = [
        a.amount.map(|v| format!("amount={v}")),
        a.quantity.map(|v| format!("q={v}")),
        a.token.map(|v| format!("token={v}")),
        a.ttl_ms.map(|v| format!("ttl={v}ms")),
        a.holder.as_ref().map(|v| format!("holder={v}")),
        a.transfer.as_ref().map(|v| format!("transfer={v}")),
        a.hold.as_ref().map(|v| format!("hold={v}")),
    ];
    for field in fields.into_iter().flatten() {
        op.push(' ');
        op.push_str(&field);
    }
    let commit = match c.commit_end() {
        end if end == c.seq => String::new(),
        end => format!(" (commit ..{end})"),
    };
    format!(
        "seq {}{commit} {} {op} idempotency-key {:?} v={} -> {}",
        c.seq,
        c.store,
        c.idempotency_key,
        c.version,
        fmt_opt_item(c.item.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::nemesis::history::OpArgs;

    #[test]
    fn a_clean_run_passes_every_checker() {
        let mut h = H::new();
        let c = h.write(1, create(10), 0, 10).ok(it(10, 0, 1)).id();
        let a = h.write(2, add(5), 20, 30).ok(it(15, 0, 2)).id();
        h.read(3, true, 40, 50).ok(it(15, 0, 2));
        h.read(3, false, 60, 70).ok(it(15, 0, 2));
        let fin = h
            .final_from_changes(&[c, a])
            .replica("s1", Some(it(15, 0, 2)));
        let anomalies = check_all(&h.events, &fin);
        assert!(anomalies.is_empty(), "{anomalies:#?}");
    }

    fn two_line_batch() -> Op {
        use crate::nemesis::history::BatchLine;
        let line = |sku: &str, op| BatchLine {
            key: Key::new("loc", sku),
            op,
            expected_version: None,
        };
        Op::Batch {
            lines: vec![line("a", add(2)), line("b", remove(1))],
        }
    }

    #[test]
    fn a_clean_run_with_a_batch_passes_every_checker() {
        let b = Key::new("loc", "b");
        let mut h = H::new();
        h.write(1, create(5), 0, 10).ok(it(5, 0, 1));
        h.write(2, create(5), 0, 10).on(b.clone()).ok(it(5, 0, 1));
        let items = vec![Some(it(7, 0, 2)), Some(it(4, 0, 2))];
        h.write(3, two_line_batch(), 20, 30)
            .ok_reply(Reply::Items { items });
        h.read(3, true, 40, 50).on(b.clone()).ok(it(4, 0, 2));
        let mut l = testkit::Log::new();
        l.commit("s1", "k0", &[(key(), "create", qty(5), Some(5))]);
        l.commit("s1", "k1", &[(b.clone(), "create", qty(5), Some(5))]);
        l.commit(
            "s1",
            "k2",
            &[
                (key(), "add", amt(2), Some(7)),
                (b.clone(), "remove", amt(1), Some(4)),
            ],
        );
        l.fin.replicas.push(crate::nemesis::history::Replica {
            store: "s1".into(),
            items: vec![(key(), Some(it(7, 0, 2))), (b, Some(it(4, 0, 2)))],
            digest_ok: Some(true),
        });
        let anomalies = check_all(&h.events, &l.fin);
        assert!(anomalies.is_empty(), "{anomalies:#?}");
        // The batch's line on b answered a version the read then missed:
        // the single-key view shows it to the linearizability checker.
        h.events[3].outcome = Outcome::Ok {
            item: Some(it(5, 0, 1)),
        };
        let anomalies = check_all(&h.events, &l.fin);
        assert!(
            anomalies.iter().any(|a| a.checker == "linearizable"),
            "{anomalies:#?}"
        );
    }

    #[test]
    fn the_single_key_view_splits_batches_and_leaves_out_the_rest() {
        let mut h = H::new();
        let items = vec![Some(it(7, 0, 2)), None];
        h.write(1, two_line_batch(), 0, 10)
            .ok_reply(Reply::Items { items });
        h.write(1, two_line_batch(), 20, 30).refused(409);
        h.write(1, two_line_batch(), 40, 50).indet();
        h.write(1, Op::LockRelease { token: 3 }, 60, 70).deleted();
        h.write(1, add(1), 80, 90).ok(it(8, 0, 3));
        let view = single_key_view(&h.events);
        let shown: Vec<(u64, String, String)> = view
            .iter()
            .map(|e| (e.id, e.key.to_string(), fmt_outcome(&e.outcome)))
            .collect();
        assert_eq!(
            shown,
            [
                (0, "loc/a".into(), "ok \"n\" q=7 r=0 v=2".into()),
                (0, "loc/b".into(), "ok absent".into()),
                (
                    2,
                    "loc/a".into(),
                    "indeterminate (line 0 of a batch without a definite item)".into()
                ),
                (
                    2,
                    "loc/b".into(),
                    "indeterminate (line 1 of a batch without a definite item)".into()
                ),
                (4, "loc/a".into(), "ok \"n\" q=8 r=0 v=3".into()),
            ]
        );
        assert_eq!(view[1].op, remove(1));
    }

    #[test]
    fn keys_touched_by_locks_or_transfers_are_not_modeled() {
        let mut h = H::new();
        let grant = Op::LockGrant {
            holder: "h".into(),
            ttl_ms: 1_000,
        };
        h.write(1, grant, 0, 10).on(Key::new("loc", "l"));
        let ship = Op::TransferCreate {
            from: "s1".into(),
            to: "s2".into(),
            lines: vec![crate::nemesis::history::Units {
                sku: "t".into(),
                amount: 1,
            }],
        };
        h.write(1, ship, 20, 30);
        h.write(1, add(1), 40, 50).on(Key::new("loc", "hot"));
        let mut l = testkit::Log::new();
        l.commit(
            "c",
            "x",
            &[(
                Key::new("loc", "e"),
                "lock_expire",
                OpArgs::default(),
                Some(1),
            )],
        );
        l.commit(
            "s1",
            "y",
            &[(Key::new("loc", "hot"), "add", amt(1), Some(1))],
        );
        let keys: Vec<String> = unmodeled_keys(&h.events, &l.fin)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(keys, ["loc/e", "loc/l", "s1/t"]);
    }

    #[test]
    fn anomalies_print_checker_key_and_detail() {
        let a = Anomaly::new("x", Some(&Key::new("l", "s")), "boom".into());
        assert_eq!(a.to_string(), "[x] l/s: boom");
        let json = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(json["checker"], "x");
        assert_eq!(json["key"]["sku"], "s");
    }
}
