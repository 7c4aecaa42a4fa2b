//! The sequencer's decision: what a group of requests does, as a pure
//! function of what is known (items, idempotency records), the change-log
//! head and the clock (docs/architecture.md, "The path of a write").
//!
//! [`decide`] takes the requests in arrival order: a write whose
//! idempotency record is unexpired is answered from it (or refused, when
//! the key was used for another request); otherwise its lines are decided
//! with [`shelfsync_core::apply`], all or none, numbered with consecutive
//! seqs as one commit, and the outcome is recorded. A strong read answers
//! the state as decided so far. The coordinator's pipeline has
//! [`View::fetch`] bring from the ledger what the decision reads, commits
//! the [`CommitGroup`] it returns and delivers the answers.
//!
//! The crate does no I/O of its own and knows no thread, socket or clock:
//! its only way to the ledger is [`View::fetch`] through the
//! [`Ledger`](shelfsync_ledger::Ledger) trait, so the rules are tested in
//! tables without a coordinator.

use shelfsync_core::{Hold, ItemKey, KeyState, Op, Precondition, Transfer, apply};
use shelfsync_ledger::{
    Action, CommitGroup, CommittedWrite, Deadline, IdempotencyEntry, IdempotencyRecord, ItemRecord,
    Line, Object, Recorded,
};
use shelfsync_proto::{BatchRequest, Change, ErrorCode, WireError, WriteRequest};

use shelfsync_core::FastMap;

mod fetch;
mod holds;
mod steps;
mod transfers;

/// A write request: one or more lines from one store under one idempotency
/// key, applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The store (or `admin`) that sent it.
    pub store: String,
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// The lines, on distinct keys.
    pub lines: Vec<Line>,
}

impl Command {
    /// A single-key write from `store`, as the wire carries it.
    pub fn write(store: &str, request: WriteRequest) -> Command {
        Command {
            store: store.to_string(),
            idempotency_key: request.idempotency_key,
            lines: vec![Line {
                key: request.key,
                op: request.op,
                expected_version: request.expected_version,
                lock_token: request.lock_token,
            }],
        }
    }

    /// A batch from `store` (several keys, one commit), as the wire
    /// carries it.
    pub fn batch(store: &str, batch: BatchRequest) -> Command {
        let lines = batch.lines.into_iter().map(|line| Line {
            key: line.key,
            op: line.op,
            expected_version: line.expected_version,
            lock_token: line.lock_token,
        });
        Command {
            store: store.to_string(),
            idempotency_key: batch.idempotency_key,
            lines: lines.collect(),
        }
    }
}

/// A step of a hold or a transfer from one store under one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCommand {
    /// The store (or `admin`, or `coordinator`) that sent it.
    pub store: String,
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// What to do.
    pub action: Action,
}

/// A request to the sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A write.
    Write(Command),
    /// A step of a hold or a transfer.
    Step(StepCommand),
    /// A strong read of one key.
    Read(ItemKey),
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted: per line, the seq and state after it.
    Accepted {
        /// `(seq, state)` per line.
        changes: Vec<(u64, KeyState)>,
        /// Whether this is a retry answered from its record.
        replayed: bool,
    },
    /// A step accepted: the hold or transfer after it and `(seq, state)`
    /// of each key it wrote (a retry gets them as they are now).
    Stepped {
        /// The hold or transfer.
        object: Object,
        /// `(seq, state)` per line written.
        changes: Vec<(u64, KeyState)>,
        /// Whether this is a retry answered from its record.
        replayed: bool,
    },
    /// Refused.
    Refused(WireError),
    /// A strong read: the key's state and the head it was read at.
    Read {
        /// The state.
        state: KeyState,
        /// The head after every write decided before the read.
        head: u64,
    },
}

/// What the decision reads: [`View::fetch`] brings, before deciding, every
/// key the requests name, the idempotency record of every write that has
/// one, and the changes those records point to.
#[derive(Debug, Default)]
pub struct View {
    /// Keys' records (`None`: never written); the decision updates them
    /// as it accepts writes.
    pub items: FastMap<ItemKey, Option<ItemRecord>>,
    /// Stored records by `(store, idempotency key)`.
    pub idempotency: FastMap<(String, String), IdempotencyRecord>,
    /// Changes that stored accepted records point to, by seq (a change
    /// already compacted away is absent).
    pub changes: FastMap<u64, Change>,
    /// Holds by id (`None`: no such hold) that steps name or records point
    /// to; the decision updates them as it accepts steps.
    pub holds: FastMap<String, Option<Hold>>,
    /// Transfers by id, the same way.
    pub transfers: FastMap<String, Option<Transfer>>,
}

impl View {
    /// The hold or transfer `id` a step of `action`'s kind names, if known.
    fn object(&self, action: &Action, id: &str) -> Option<Object> {
        match action.is_transfer() {
            false => self.holds.get(id).cloned().flatten().map(Object::Hold),
            true => self
                .transfers
                .get(id)
                .cloned()
                .flatten()
                .map(Object::Transfer),
        }
    }
}

/// The decision for a group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to commit.
    pub group: CommitGroup,
    /// Per accepted change, the key's state before it (for the digests).
    pub replaced: Vec<KeyState>,
    /// One answer per request, in order.
    pub answers: Vec<Answer>,
}

/// Decides `requests` against `view` after change-log head `head`, at
/// `now_ms`; records older than `ttl_ms` no longer answer.
pub fn decide(
    requests: &[Request],
    view: &mut View,
    head: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> Decision {
    let mut decision = Decision {
        group: CommitGroup {
            head,
            ..CommitGroup::default()
        },
        ..Decision::default()
    };
    let mut recorded = Recent::default();
    for request in requests {
        let answer = match request {
            Request::Read(key) => Answer::Read {
                state: state_of(view, key),
                head: decision.group.head,
            },
            Request::Write(command) => once(
                Mutation::Write(command),
                view,
                &mut decision,
                &mut recorded,
                (now_ms, ttl_ms),
            ),
            Request::Step(step) => once(
                Mutation::Step(step),
                view,
                &mut decision,
                &mut recorded,
                (now_ms, ttl_ms),
            ),
        };
        decision.answers.push(answer);
    }
    decision
}

/// Records made by the group being decided, which the view does not have.
type Recent = FastMap<(String, String), IdempotencyRecord>;

/// A request that changes something, and so is decided once per
/// idempotency key.
enum Mutation<'a> {
    Write(&'a Command),
    Step(&'a StepCommand),
}

/// Decides a write or a step once per idempotency key: a retry is answered
/// from the unexpired record, a new request is decided and recorded.
fn once(
    request: Mutation<'_>,
    view: &mut View,
    decision: &mut Decision,
    recorded: &mut Recent,
    (now_ms, ttl_ms): (u64, u64),
) -> Answer {
    let id = match request {
        Mutation::Write(c) => (c.store.clone(), c.idempotency_key.clone()),
        Mutation::Step(s) => (s.store.clone(), s.idempotency_key.clone()),
    };
    let record = recorded
        .get(&id)
        .or_else(|| view.idempotency.get(&id))
        .filter(|r| r.at_ms.saturating_add(ttl_ms) > now_ms);
    if let Some(record) = record {
        return match request {
            Mutation::Write(command) => replay(command, record, view, &decision.group),
            Mutation::Step(step) => steps::replay(step, record, view),
        };
    }
    let (answer, outcome) = match request {
        Mutation::Write(command) => {
            let answer = write(command, view, decision, now_ms);
            let outcome = record_of(command, &answer);
            (answer, outcome)
        }
        Mutation::Step(step) => {
            let answer = steps::step(step, view, decision, now_ms);
            let outcome = steps::record_of(step, &answer);
            (answer, outcome)
        }
    };
    if let Some(outcome) = outcome {
        let record = IdempotencyRecord {
            at_ms: now_ms,
            outcome,
        };
        decision.group.idempotency.push(IdempotencyEntry {
            store: id.0.clone(),
            key: id.1.clone(),
            record: record.clone(),
        });
        recorded.insert(id, record);
    }
    answer
}

fn state_of(view: &View, key: &ItemKey) -> KeyState {
    view.items
        .get(key)
        .and_then(Option::as_ref)
        .map_or(KeyState::Absent, |r| r.state.clone())
}

/// Decides a new write: every line, or none.
fn write(command: &Command, view: &mut View, decision: &mut Decision, now_ms: u64) -> Answer {
    let lines = &command.lines;
    if lines.is_empty() {
        return Answer::Refused(WireError::new(
            ErrorCode::InvalidField,
            "a write needs at least one line",
        ));
    }
    for (i, line) in lines.iter().enumerate() {
        if lines[..i].iter().any(|l| l.key == line.key) {
            let mut err = WireError::new(
                ErrorCode::InvalidField,
                format!("key {} appears twice in one request", line.key),
            );
            err.line = u32::try_from(i).ok();
            return Answer::Refused(err);
        }
    }
    let mut next = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let current = state_of(view, &line.key);
        let precondition = Precondition {
            expected_version: line.expected_version,
            lock_token: line.lock_token,
        };
        match apply(&line.key, &current, &line.op, precondition, now_ms) {
            Ok(state) => next.push((current, state)),
            Err(rejection) => {
                // A line of a multi-key request says which one it is.
                let rejection = match lines.len() {
                    1 => rejection,
                    _ => rejection.at_line(index),
                };
                return Answer::Refused(WireError::rejected(&rejection, current.item()));
            }
        }
    }
    let entries = lines.iter().zip(next).map(|(line, (before, after))| Entry {
        key: line.key.clone(),
        op: line.op.clone(),
        before,
        after,
    });
    let changes = add_commit(
        view,
        decision,
        command_stamp(command, now_ms),
        entries.collect(),
    );
    Answer::Accepted {
        changes,
        replayed: false,
    }
}

/// Who made a commit, under which key, and when.
struct Stamp<'a> {
    store: &'a str,
    idempotency_key: &'a str,
    now_ms: u64,
}

fn command_stamp(command: &Command, now_ms: u64) -> Stamp<'_> {
    Stamp {
        store: &command.store,
        idempotency_key: &command.idempotency_key,
        now_ms,
    }
}

/// One accepted line of a commit: the key, the op the log records, and the
/// key's states before and after.
struct Entry {
    key: ItemKey,
    op: Op,
    before: KeyState,
    after: KeyState,
}

/// Numbers `entries` as one commit after the group's head, adds them to
/// the group and the view, and returns `(seq, state)` per entry.
fn add_commit(
    view: &mut View,
    decision: &mut Decision,
    stamp: Stamp<'_>,
    entries: Vec<Entry>,
) -> Vec<(u64, KeyState)> {
    let first = decision.group.head + 1;
    let commit_end = decision.group.head + entries.len() as u64;
    let mut changes = Vec::with_capacity(entries.len());
    for (entry, seq) in entries.into_iter().zip(first..) {
        let Entry {
            key,
            op,
            before,
            after,
        } = entry;
        let record = ItemRecord {
            state: after.clone(),
            seq,
        };
        let prior = view.items.insert(key.clone(), Some(record)).flatten();
        decision.group.writes.push(CommittedWrite {
            change: Change {
                seq,
                key,
                state: after.clone(),
                op,
                store: stamp.store.to_string(),
                idempotency_key: stamp.idempotency_key.to_string(),
                at_ms: stamp.now_ms,
                commit_end,
            },
            prior_version: before.version(),
            prior_seq: prior.map(|r| r.seq),
            prior_lock_expiry: before
                .item()
                .and_then(|item| item.lock.as_ref())
                .map(|lock| lock.expires_at_ms),
        });
        decision.replaced.push(before);
        changes.push((seq, after));
    }
    decision.group.head = decision.group.head.max(commit_end);
    changes
}

/// The store name of the coordinator's own writes.
pub const COORDINATOR: &str = "coordinator";

/// The coordinator's own step that ends the hold `id` once it is due.
pub fn hold_expiry(id: String) -> StepCommand {
    StepCommand {
        store: COORDINATOR.to_string(),
        idempotency_key: format!("hold-expiry:{id}"),
        action: Action::HoldExpire { id },
    }
}

/// The coordinator's own write that ends the lock of `due` (its
/// idempotency key names the lock, so it takes effect once).
pub fn lock_expiry(due: Deadline) -> Command {
    Command {
        store: COORDINATOR.to_string(),
        idempotency_key: format!("lock-expiry:{}:{}", due.key, due.token),
        lines: vec![Line {
            op: Op::LockExpire { token: due.token },
            key: due.key,
            expected_version: None,
            lock_token: None,
        }],
    }
}

/// The outcome a new write's answer records (none for a refusal that is
/// not the request's own outcome).
fn record_of(command: &Command, answer: &Answer) -> Option<Recorded> {
    Some(match answer {
        Answer::Accepted { changes, .. } => Recorded::Accepted {
            seq: changes.first().map_or(0, |c| c.0),
            locations: command
                .lines
                .iter()
                .map(|l| l.key.location.clone())
                .collect(),
            expected_versions: command.lines.iter().map(|l| l.expected_version).collect(),
        },
        // A lock says when to try again: the retry is decided anew.
        Answer::Refused(error) if error.code == ErrorCode::Locked => return None,
        Answer::Refused(error) => Recorded::Rejected {
            lines: command.lines.clone(),
            refusal: error.into(),
        },
        Answer::Read { .. } | Answer::Stepped { .. } => return None,
    })
}

/// Answers a retry from its record, or refuses another request under the
/// same key.
fn replay(
    command: &Command,
    record: &IdempotencyRecord,
    view: &View,
    group: &CommitGroup,
) -> Answer {
    let reused = || reused(&command.idempotency_key);
    match &record.outcome {
        Recorded::Step { .. } | Recorded::StepRejected { .. } => reused(),
        Recorded::Rejected { lines, refusal } => {
            if lines == &command.lines {
                Answer::Refused(refusal.into())
            } else {
                reused()
            }
        }
        Recorded::Accepted {
            seq,
            expected_versions,
            ..
        } => {
            let expected: Vec<Option<u64>> =
                command.lines.iter().map(|l| l.expected_version).collect();
            if &expected != expected_versions {
                return reused();
            }
            let mut changes = Vec::with_capacity(command.lines.len());
            for (line, seq) in command.lines.iter().zip(*seq..) {
                // This group's own changes first, then the fetched ones.
                let change = group
                    .writes
                    .iter()
                    .map(|w| &w.change)
                    .find(|c| c.seq == seq)
                    .or_else(|| view.changes.get(&seq));
                match change {
                    Some(c) if c.key == line.key && c.op == line.op => {
                        changes.push((seq, c.state.clone()));
                    }
                    Some(_) => return reused(),
                    // Compacted away: the keys and ops cannot be compared,
                    // and the key's current state stands for the original.
                    None => changes.push((seq, state_of(view, &line.key))),
                }
            }
            Answer::Accepted {
                changes,
                replayed: true,
            }
        }
    }
}

/// The refusal of a request under a key used for another request.
fn reused(idempotency_key: &str) -> Answer {
    Answer::Refused(WireError::new(
        ErrorCode::IdempotencyKeyReused,
        format!("idempotency key {idempotency_key:?} was already used for another request"),
    ))
}

#[cfg(test)]
mod tests;
