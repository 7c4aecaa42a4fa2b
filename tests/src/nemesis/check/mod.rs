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

use serde::Serialize;

use crate::nemesis::history::{Event, Final, ItemState, Key, Op, Outcome};

mod exactly_once;
mod invariants;
pub mod linear;
pub mod model;
#[cfg(test)]
mod testkit;

pub use exactly_once::exactly_once;
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
    let mut all = linearizable(events);
    all.extend(no_oversell(events, fin));
    all.extend(exactly_once(events, fin));
    all.extend(converged(fin));
    all.extend(monotonic_reads(events));
    all
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
    if let Some(original) = e.replay_of {
        s.push_str(&format!(" replay-of=#{original}"));
    }
    s.push_str(&format!(
        " [{}..{}] -> {}",
        fmt_ms(e.invoked_ns),
        fmt_ms(e.completed_ns),
        fmt_outcome(&e.outcome)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

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

    #[test]
    fn anomalies_print_checker_key_and_detail() {
        let a = Anomaly::new("x", Some(&Key::new("l", "s")), "boom".into());
        assert_eq!(a.to_string(), "[x] l/s: boom");
        let json = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(json["checker"], "x");
        assert_eq!(json["key"]["sku"], "s");
    }
}
