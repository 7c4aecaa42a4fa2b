//! The Wing–Gong / Lowe search for one key, with Porcupine's linked list
//! and cache.
//!
//! Definite ops have a call and a return entry in a doubly linked list
//! sorted by time (a call before a return at the same instant). At each
//! point of the search the candidates are the calls before the first
//! return: linearizing one lifts its two entries out of the list and the
//! walk restarts from the front; reaching the first return means the op it
//! ends cannot be placed, and the search backtracks. A (set of linearized
//! ops, model state) pair already explored is not explored again.
//!
//! Optional ops (indeterminate writes, completion at infinity) are not in
//! the list: they are tried only once every definite candidate failed at a
//! point, among those called by the first return's time, and only if they
//! take effect and the version they produce can still be matched by the
//! remaining definite answers. Identical optional ops are interchangeable,
//! so only the earliest pending one of each kind is tried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Expect, LinOp, version_bound};
use crate::nemesis::check::fmt_event;
use crate::nemesis::check::model::Answer;
use crate::nemesis::check::model::{self, State};

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// One entry of the doubly linked list: a definite op's call or return.
struct Entry {
    op: usize,
    time: u64,
    call: bool,
    /// For a call, its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

/// Where the walk is at one point of the search.
#[derive(Clone, Copy)]
enum Cursor {
    /// At an entry of the list.
    Definite(usize),
    /// Among the optional ops, from position `from`; `ret` is the first
    /// return of the list, which bounds the calls that may come next.
    Optional { from: usize, ret: usize },
    /// Nothing more to try here.
    Backtrack,
}

/// A choice made: what was linearized and the state before it.
struct Frame {
    at: Cursor,
    before: State,
}

/// The deepest point the search reached, for the report.
struct Deepest {
    depth: usize,
    states: Vec<State>,
    blocked: usize,
    prefix_tail: Vec<usize>,
}

pub(super) struct Search<'a> {
    ops: Vec<LinOp<'a>>,
    list: Vec<Entry>,
    /// The optional ops by call time: (time, op).
    optionals: Vec<(u64, usize)>,
    /// Positions in `optionals` not linearized yet, per kind.
    pending: Vec<BTreeSet<usize>>,
    /// Per position in `optionals`, its kind.
    kind_of: Vec<usize>,
    /// Version bounds of the definite ops left, with their counts.
    bounds: BTreeMap<u64, u32>,
    definite_left: usize,
    stack: Vec<Frame>,
    deepest: Option<Deepest>,
}

impl<'a> Search<'a> {
    pub(super) fn new(ops: Vec<LinOp<'a>>) -> Self {
        let mut times = Vec::new();
        let mut optionals = Vec::new();
        let mut bounds = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let (invoked, completed) = (op.event.invoked_ns, op.event.completed_ns);
            match op.expect {
                Expect::Must(_) => {
                    times.push((invoked, false, i));
                    times.push((completed.max(invoked), true, i));
                }
                Expect::Optional => optionals.push((invoked, i)),
            }
            if let Some(bound) = version_bound(op) {
                *bounds.entry(bound).or_insert(0) += 1;
            }
        }
        times.sort_unstable();
        optionals.sort_unstable();
        let head = Entry {
            op: NIL,
            time: 0,
            call: false,
            partner: NIL,
            prev: NIL,
            next: if times.is_empty() { NIL } else { 1 },
        };
        let mut list = vec![head];
        let mut call_of = vec![NIL; ops.len()];
        for (n, &(time, is_return, op)) in times.iter().enumerate() {
            let node = n + 1;
            let next = if node < times.len() { node + 1 } else { NIL };
            let (call, prev, partner) = (!is_return, node - 1, NIL);
            list.push(Entry {
                op,
                time,
                call,
                partner,
                prev,
                next,
            });
            if is_return {
                list[call_of[op]].partner = node;
            } else {
                call_of[op] = node;
            }
        }
        let mut kinds: HashMap<String, usize> = HashMap::new();
        let mut pending: Vec<BTreeSet<usize>> = Vec::new();
        let mut kind_of = Vec::with_capacity(optionals.len());
        for (pos, &(_, op)) in optionals.iter().enumerate() {
            let e = ops[op].event;
            let kind = *kinds
                .entry(format!("{:?} {:?}", e.op, e.if_match))
                .or_insert(pending.len());
            if kind == pending.len() {
                pending.push(BTreeSet::new());
            }
            pending[kind].insert(pos);
            kind_of.push(kind);
        }
        Search {
            definite_left: times.len() / 2,
            ops,
            list,
            optionals,
            pending,
            kind_of,
            bounds,
            stack: Vec::new(),
            deepest: None,
        }
    }

    /// Runs the search; `Err` carries the report.
    pub(super) fn run(mut self, budget: u64) -> Result<(), String> {
        let mut state = State::INITIAL;
        let mut linearized = Bitset::new(self.ops.len());
        let mut cache: HashSet<(Bitset, State)> = HashSet::new();
        let mut cursor = Cursor::Definite(self.list[HEAD].next);
        let mut steps = 0u64;
        while self.definite_left > 0 {
            steps += 1;
            if steps > budget {
                let headline = format!("undecided: the search gave up after {budget} steps");
                return Err(self.report(&headline, &cache));
            }
            let (op, next, advance) = match cursor {
                Cursor::Backtrack => {
                    let Some(frame) = self.stack.pop() else {
                        return Err(self.report("not linearizable", &cache));
                    };
                    state = frame.before;
                    cursor = match frame.at {
                        Cursor::Definite(call) => {
                            linearized.clear(self.list[call].op);
                            self.unlift(call);
                            Cursor::Definite(self.list[call].next)
                        }
                        Cursor::Optional { from, ret } => {
                            linearized.clear(self.optionals[from].1);
                            self.pending[self.kind_of[from]].insert(from);
                            Cursor::Optional {
                                from: from + 1,
                                ret,
                            }
                        }
                        Cursor::Backtrack => Cursor::Backtrack,
                    };
                    continue;
                }
                Cursor::Definite(node) => {
                    let Some(entry) = self.list.get(node) else {
                        // Unreachable while a definite op (and its return)
                        // is left.
                        return Err(self.report("internal: ran off the list", &cache));
                    };
                    if !entry.call {
                        cursor = if state.version() < self.bound() {
                            Cursor::Optional { from: 0, ret: node }
                        } else {
                            self.note_blocked(node, &state);
                            Cursor::Backtrack
                        };
                        continue;
                    }
                    let lin = &self.ops[entry.op];
                    let (next, answer) = model::step(&state, &lin.event.op, lin.event.if_match);
                    let fits = matches!(&lin.expect, Expect::Must(want) if *want == answer);
                    (entry.op, fits.then_some(next), Cursor::Definite(entry.next))
                }
                Cursor::Optional { from, ret } => {
                    let Some(pos) = self.next_optional(from, self.list[ret].time) else {
                        self.note_blocked(ret, &state);
                        cursor = Cursor::Backtrack;
                        continue;
                    };
                    let op = self.optionals[pos].1;
                    cursor = Cursor::Optional { from: pos, ret };
                    let earliest = self.pending[self.kind_of[pos]].first() == Some(&pos);
                    let next = (earliest && state.version() < self.bound())
                        .then(|| {
                            let e = self.ops[op].event;
                            model::step(&state, &e.op, e.if_match).0
                        })
                        .filter(|next| *next != state);
                    (op, next, Cursor::Optional { from: pos + 1, ret })
                }
            };
            if let Some(next) = next {
                linearized.set(op);
                if cache.insert((linearized.clone(), next.clone())) {
                    let before = std::mem::replace(&mut state, next);
                    self.stack.push(Frame { at: cursor, before });
                    match cursor {
                        Cursor::Definite(call) => self.lift(call),
                        Cursor::Optional { from, .. } => {
                            self.pending[self.kind_of[from]].remove(&from);
                        }
                        Cursor::Backtrack => {}
                    }
                    cursor = Cursor::Definite(self.list[HEAD].next);
                    continue;
                }
                linearized.clear(op);
            }
            cursor = advance;
        }
        Ok(())
    }

    /// The highest version the key may have now.
    fn bound(&self) -> u64 {
        self.bounds.keys().next().copied().unwrap_or(u64::MAX)
    }

    /// The first pending optional op at or after position `from` called by
    /// `limit`.
    fn next_optional(&self, from: usize, limit: u64) -> Option<usize> {
        (from..self.optionals.len())
            .take_while(|&pos| self.optionals[pos].0 <= limit)
            .find(|&pos| self.pending[self.kind_of[pos]].contains(&pos))
    }

    fn lift(&mut self, call: usize) {
        let partner = self.list[call].partner;
        self.unlink(call);
        self.unlink(partner);
        self.account(self.list[call].op, false);
    }

    fn unlift(&mut self, call: usize) {
        let partner = self.list[call].partner;
        self.relink(partner);
        self.relink(call);
        self.account(self.list[call].op, true);
    }

    /// Books a definite op as to be linearized again (`back`) or as
    /// linearized.
    fn account(&mut self, op: usize, back: bool) {
        if back {
            self.definite_left += 1;
        } else {
            self.definite_left -= 1;
        }
        let Some(bound) = version_bound(&self.ops[op]) else {
            return;
        };
        let count = self.bounds.entry(bound).or_insert(0);
        if back {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.bounds.remove(&bound);
            }
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.list[node].prev, self.list[node].next);
        self.list[prev].next = next;
        if next != NIL {
            self.list[next].prev = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.list[node].prev, self.list[node].next);
        self.list[prev].next = node;
        if next != NIL {
            self.list[next].prev = node;
        }
    }

    /// The op linearized by a frame.
    fn op_of(&self, frame: &Frame) -> usize {
        match frame.at {
            Cursor::Definite(call) => self.list[call].op,
            Cursor::Optional { from, .. } => self.optionals[from].1,
            Cursor::Backtrack => NIL,
        }
    }

    /// Remembers the deepest point where the op ending at entry `ret`
    /// could not be placed.
    fn note_blocked(&mut self, ret: usize, state: &State) {
        let depth = self.stack.len();
        if let Some(deepest) = &mut self.deepest {
            if depth == deepest.depth && deepest.states.len() < 4 && !deepest.states.contains(state)
            {
                deepest.states.push(state.clone());
            }
            if depth <= deepest.depth {
                return;
            }
        }
        let tail = &self.stack[depth.saturating_sub(6)..];
        self.deepest = Some(Deepest {
            depth,
            states: vec![state.clone()],
            blocked: self.list[ret].op,
            prefix_tail: tail.iter().map(|frame| self.op_of(frame)).collect(),
        });
    }

    /// The report: `headline`, then the deepest point the search reached,
    /// the states explored where the op that could not be placed would
    /// have fitted by version, and the ops concurrent with it.
    fn report(&self, headline: &str, explored: &HashSet<(Bitset, State)>) -> String {
        let (definite, optional) = (self.list.len() / 2, self.optionals.len());
        let mut s =
            format!("{headline} ({definite} definite ops, {optional} indeterminate writes)");
        let Some(deepest) = &self.deepest else {
            return s;
        };
        let line = |op: usize| format!("\n    {}", fmt_event(self.ops[op].event));
        let blocked = &self.ops[deepest.blocked].event;
        s.push_str(&format!(
            "\n  longest linearizable prefix: {} ops; then no order places:{}",
            deepest.depth,
            line(deepest.blocked)
        ));
        let states: Vec<String> = deepest.states.iter().map(State::to_string).collect();
        s.push_str(&format!(
            "\n  state(s) after that prefix: {}",
            states.join(" | ")
        ));
        s.push_str("\n  last ops of that prefix:");
        deepest
            .prefix_tail
            .iter()
            .for_each(|&op| s.push_str(&line(op)));
        if let Some(Answer::Ok(Some(item))) = self.ops[deepest.blocked].expect.answer() {
            let version = item.version - u64::from(blocked.op.is_write() && item.version > 0);
            let mut states: Vec<String> = explored
                .iter()
                .filter(|(_, state)| state.version() == version)
                .map(|(_, state)| state.to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .take(6)
                .collect();
            if states.is_empty() {
                states.push("none".into());
            }
            s.push_str(&format!(
                "\n  explored states at version {version}, where it would fit: {}",
                states.join(" | ")
            ));
        }
        // The ops that overlap the blocked one: the ones it may be ordered
        // with.
        let mut overlapping: Vec<usize> = (0..self.ops.len())
            .filter(|&op| op != deepest.blocked)
            .filter(|&op| {
                let e = self.ops[op].event;
                let end = match self.ops[op].expect {
                    Expect::Must(_) => e.completed_ns,
                    Expect::Optional => u64::MAX,
                };
                e.invoked_ns <= blocked.completed_ns && end >= blocked.invoked_ns
            })
            .collect();
        overlapping.sort_by_key(|&op| std::cmp::Reverse(self.ops[op].event.invoked_ns));
        overlapping.truncate(12);
        overlapping.reverse();
        s.push_str("\n  ops concurrent with it (latest 12):");
        overlapping.iter().for_each(|&op| s.push_str(&line(op)));
        s
    }
}

/// A fixed-size set of op indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}
