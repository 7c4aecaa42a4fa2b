//! Linearizability per key (SPEC §4, guarantee 4), by the Wing–Gong / Lowe
//! search with memoization, as Porcupine and Knossos do it (in `search`).
//!
//! Keys are independent (P-compositionality), so each key's ops are checked
//! on their own, from [`super::model::State::INITIAL`]. The ops of a key are its writes
//! that are not deliberate replays, and its strong reads; local reads are
//! judged by [`super::monotonic_reads`] instead. An op answered `Ok` must
//! get exactly that answer from the model, one refused must get the same
//! status (refusals the model never gives, such as 429, constrain nothing).
//!
//! Indeterminate writes are optional: their completion is at infinity, so
//! one may be linearized anywhere after its call, or never; an
//! indeterminate read is dropped. The history is linearizable once every
//! definite op is linearized. Before the search, a quick pass checks that
//! versions never go back in real time, which explains the common
//! failures (stale read, lost or doubled write) in two lines.

use std::collections::{BTreeMap, HashMap};

use super::model::{Answer, MODELED_STATUSES};
use super::{Anomaly, fmt_event};
use crate::nemesis::history::{Event, Key, Op, Outcome};

mod search;

use search::Search;

/// The checker's name in its anomalies.
const CHECKER: &str = "linearizable";

/// How many search steps one key may take before the check gives up and
/// reports the key as undecided.
pub const STEP_BUDGET: u64 = 2_000_000;

/// Checks every key's strong reads and non-replayed writes for
/// linearizability against the model of SPEC §2.
pub fn linearizable(events: &[Event]) -> Vec<Anomaly> {
    linearizable_with_budget(events, STEP_BUDGET)
}

/// [`linearizable`] with a custom search budget per key; a key whose search
/// exceeds it is reported with a detail starting `undecided:`.
pub fn linearizable_with_budget(events: &[Event], budget: u64) -> Vec<Anomaly> {
    let mut per_key: BTreeMap<&Key, Vec<LinOp<'_>>> = BTreeMap::new();
    for event in events {
        if let Some(expect) = expectation(event) {
            per_key
                .entry(&event.key)
                .or_default()
                .push(LinOp { event, expect });
        }
    }
    per_key
        .into_iter()
        .filter_map(|(key, ops)| {
            let verdict = version_order(&ops).or_else(|| Search::new(ops).run(budget).err());
            verdict.map(|detail| (key, detail))
        })
        .map(|(key, detail)| Anomaly::new(CHECKER, Some(key), detail))
        .collect()
}

/// What the model must answer for an op to be linearized.
#[derive(Debug)]
enum Expect {
    /// A definite answer: exactly this.
    Must(Answer),
    /// An indeterminate write: may take effect once, or never.
    Optional,
}

impl Expect {
    /// The definite answer, if any.
    fn answer(&self) -> Option<&Answer> {
        match self {
            Expect::Must(answer) => Some(answer),
            Expect::Optional => None,
        }
    }
}

struct LinOp<'a> {
    event: &'a Event,
    expect: Expect,
}

/// Whether and how an event takes part in the check.
fn expectation(event: &Event) -> Option<Expect> {
    let is_read = !event.op.is_write();
    if matches!(event.op, Op::Read { strong: false }) || (!is_read && event.replay_of.is_some()) {
        return None;
    }
    match &event.outcome {
        Outcome::Indeterminate { .. } if is_read => None,
        Outcome::Indeterminate { .. } => Some(Expect::Optional),
        Outcome::Ok { item } => Some(Expect::Must(Answer::Ok(item.clone()))),
        // A refusal the model never gives (403, 423, 429, ...) took no
        // effect and says nothing about the state: it constrains nothing.
        Outcome::Refused { status, .. } if MODELED_STATUSES.contains(status) => {
            Some(Expect::Must(Answer::Refused(*status)))
        }
        Outcome::Refused { .. } => None,
    }
}

/// The highest version the key may have while `op`, definite, is still to
/// be linearized (versions never go down): the version it found, that is
/// the version of the item it answered (less one for a write, which bumped
/// it), or its `If-Match` when the model found that equal (accepted writes,
/// and writes refused for stock, a rule checked after `If-Match`).
fn version_bound(op: &LinOp<'_>) -> Option<u64> {
    let Expect::Must(answer) = &op.expect else {
        return None;
    };
    let write = op.event.op.is_write();
    let (answered, if_match_held) = match answer {
        Answer::Ok(item) => (
            item.as_ref()
                .map(|item| item.version.saturating_sub(u64::from(write))),
            true,
        ),
        Answer::Refused(409) => (None, !matches!(op.event.op, Op::Create { .. })),
        Answer::Refused(_) => (None, false),
    };
    let if_match = op.event.if_match.filter(|_| write && if_match_held);
    match (answered, if_match) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (a, m) => a.or(m),
    }
}

/// A quick necessary condition, checked before the search for a clearer
/// report: no two writes answered the same version, and an op sent after
/// another was answered saw a version at least as high (higher for a
/// write).
fn version_order(ops: &[LinOp<'_>]) -> Option<String> {
    let mut versioned: Vec<(&Event, u64)> = ops
        .iter()
        .filter_map(|op| match &op.expect {
            Expect::Must(Answer::Ok(Some(item))) => Some((op.event, item.version)),
            _ => None,
        })
        .collect();
    let mut writes: HashMap<u64, &Event> = HashMap::new();
    for &(e, version) in versioned.iter().filter(|(e, _)| e.op.is_write()) {
        if let Some(other) = writes.insert(version, e) {
            return Some(format!(
                "not linearizable: two writes answered version {version}:\n    {}\n    {}",
                fmt_event(other),
                fmt_event(e)
            ));
        }
    }
    let mut by_completion = versioned.clone();
    by_completion.sort_by_key(|(e, _)| e.completed_ns);
    versioned.sort_by_key(|(e, _)| e.invoked_ns);
    let mut done = by_completion.iter().peekable();
    let mut highest: Option<(&Event, u64)> = None;
    for (b, vb) in versioned {
        while let Some(&&(a, va)) = done.peek() {
            if a.completed_ns >= b.invoked_ns {
                break;
            }
            if highest.is_none_or(|(_, h)| va > h) {
                highest = Some((a, va));
            }
            done.next();
        }
        if let Some((a, va)) = highest
            && (vb < va || (b.op.is_write() && vb == va))
        {
            return Some(format!(
                "not linearizable: version {vb} answered after version {va} was:\n    {}\n    then {}",
                fmt_event(a),
                fmt_event(b)
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
