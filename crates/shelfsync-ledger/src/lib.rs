//! The ledger: where the coordinator keeps items, the change log,
//! idempotency records and store reports.
//!
//! [`Ledger`] is the seam between the sequencer and storage: the
//! coordinator's sequencer decides a group and [`Ledger::commit`] applies its
//! [`CommitGroup`] atomically, returning once it is durable. That return is
//! the one point of durability; readers only ever see committed groups.
//!
//! [`KvLedger`] is written once over an ordered key-value
//! [`engine::Engine`]; the coordinator runs it on fjall ([`FjallLedger`]).
//! Every backend passes the contract suite ([`contract`], public behind the
//! `testing` feature so that a backend in another crate runs it too; the
//! feature also makes the in-memory `engine::MemoryLedger` public).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shelfsync_core::transfer::TransferAmount;
use shelfsync_core::{Hold, HoldLine, Item, ItemKey, KeyState, Op, Transfer};
use shelfsync_proto::{Change, ErrorCode, StoreReport, WireError};

pub mod engine;
pub mod fjall;
pub mod kv;
mod records;

#[cfg(any(test, feature = "testing"))]
pub mod contract;

pub use self::fjall::FjallLedger;
pub use self::kv::KvLedger;

/// The storage layout this code writes and reads, kept under `meta/layout`.
pub const LAYOUT: u64 = 9;

/// Storage failures. None of them is the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The storage engine failed (I/O, corruption).
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("corrupt record under {key}: {detail}")]
    Corrupt {
        /// The storage key, printable.
        key: String,
        /// What failed.
        detail: String,
    },
    /// A conditional commit found a key at another version than decided
    /// against (only shared backends report this).
    #[error("conflict on {key}: decided against version {expected}, found {found}")]
    Conflict {
        /// The key.
        key: ItemKey,
        /// Version the write was decided against.
        expected: u64,
        /// Version found.
        found: u64,
    },
}

impl LedgerError {
    /// A stored record (or storage key) under `key` that cannot be read.
    pub(crate) fn corrupt(key: &[u8], detail: impl std::fmt::Display) -> Self {
        LedgerError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            detail: detail.to_string(),
        }
    }
}

/// What the ledger keeps per key: its state and the change that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Live item or tombstone.
    pub state: KeyState,
    /// Sequence number of the change that produced this state.
    pub seq: u64,
}

/// One line of a request: an op on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The key written.
    pub key: ItemKey,
    /// The op.
    pub op: Op,
    /// The version the client expects the key to be at.
    pub expected_version: Option<u64>,
    /// The token of the key's lock the client holds.
    #[serde(default)]
    pub lock_token: Option<u64>,
}

/// A step of a hold or a transfer, as a store (or the coordinator) asked
/// for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A new hold on `lines` for `ttl_ms`.
    HoldCreate {
        /// Whose hold it is.
        owner: String,
        /// What it reserves.
        lines: Vec<HoldLine>,
        /// How long it lasts.
        ttl_ms: u64,
        /// The token of the lines' locks the client holds.
        lock_token: Option<u64>,
    },
    /// The hold lasts `ttl_ms` from now.
    HoldExtend {
        /// The hold.
        id: String,
        /// New length from now.
        ttl_ms: u64,
    },
    /// The hold's units leave stock.
    HoldFulfil {
        /// The hold.
        id: String,
        /// The token of the lines' locks the client holds.
        lock_token: Option<u64>,
    },
    /// The hold's units are given back.
    HoldRelease {
        /// The hold.
        id: String,
        /// The token of the lines' locks the client holds.
        lock_token: Option<u64>,
    },
    /// The coordinator's own step ending a hold past its expiry.
    HoldExpire {
        /// The hold.
        id: String,
    },
    /// A new transfer: every line leaves `from`.
    TransferCreate {
        /// The location shipped from.
        from: String,
        /// The location shipped to.
        to: String,
        /// What is shipped.
        lines: Vec<TransferAmount>,
        /// The token of the lines' locks the client holds.
        lock_token: Option<u64>,
    },
    /// A receipt at the transfer's `to`.
    TransferReceive {
        /// The transfer.
        id: String,
        /// What arrived.
        lines: Vec<TransferAmount>,
        /// The token of the lines' locks the client holds.
        lock_token: Option<u64>,
    },
    /// The transfer ends; what was not received is lost.
    TransferClose {
        /// The transfer.
        id: String,
    },
}

impl Action {
    /// The hold or transfer the step names (none for a create).
    pub fn id(&self) -> Option<&str> {
        match self {
            Action::HoldCreate { .. } | Action::TransferCreate { .. } => None,
            Action::HoldExtend { id, .. }
            | Action::HoldFulfil { id, .. }
            | Action::HoldRelease { id, .. }
            | Action::HoldExpire { id }
            | Action::TransferReceive { id, .. }
            | Action::TransferClose { id } => Some(id),
        }
    }

    /// Whether the step is one of a transfer (else of a hold).
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            Action::TransferCreate { .. }
                | Action::TransferReceive { .. }
                | Action::TransferClose { .. }
        )
    }

    /// The step's name, as metrics count it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::HoldCreate { .. } => "hold_create",
            Action::HoldExtend { .. } => "hold_extend",
            Action::HoldFulfil { .. } => "hold_fulfil",
            Action::HoldRelease { .. } => "hold_release",
            Action::HoldExpire { .. } => "hold_expire",
            Action::TransferCreate { .. } => "transfer_create",
            Action::TransferReceive { .. } => "transfer_receive",
            Action::TransferClose { .. } => "transfer_close",
        }
    }
}

/// The outcome recorded for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// When it was decided, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What the request got.
    pub outcome: Recorded,
}

/// The original outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// Accepted as the commit starting at `seq`, one change per line. The
    /// changes hold the keys and ops; the record adds where they are and
    /// the expected versions, to know a retry for the same request.
    Accepted {
        /// The seq of the commit's first change.
        seq: u64,
        /// Each line's location: where its change is in the log.
        locations: Vec<String>,
        /// Each line's expected version.
        expected_versions: Vec<Option<u64>>,
    },
    /// Refused with this error.
    Rejected {
        /// The request's lines.
        lines: Vec<Line>,
        /// The refusal.
        refusal: Refusal,
    },
    /// A step accepted: what was asked and the hold or transfer it made or
    /// changed (a retry answers with it as it is then).
    Step {
        /// The request.
        action: Action,
        /// The hold's or transfer's id.
        id: String,
    },
    /// A step refused with this error.
    StepRejected {
        /// The request.
        action: Action,
        /// The refusal.
        refusal: Refusal,
    },
}

/// A refusal as the ledger keeps it: the wire error's fields in a type of
/// the ledger's own, so the wire's can change without touching the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of refusal.
    #[serde(with = "records::code_name")]
    pub code: ErrorCode,
    /// What happened, in words.
    pub message: String,
    /// The item as it stood, for version and stock refusals.
    pub current: Option<Item>,
    /// The refused line of a batch.
    #[serde(default)]
    pub line: Option<u32>,
}

impl From<&WireError> for Refusal {
    fn from(error: &WireError) -> Self {
        Refusal {
            code: error.code,
            message: error.message.clone(),
            current: error.current.as_deref().cloned(),
            line: error.line,
        }
    }
}

impl From<&Refusal> for WireError {
    fn from(refusal: &Refusal) -> Self {
        WireError {
            code: refusal.code,
            message: refusal.message.clone(),
            current: refusal.current.clone().map(Box::new),
            // Lock refusals are not recorded (they say when to retry).
            locked: None,
            line: refusal.line,
        }
    }
}

/// One accepted change, as decided by the sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedWrite {
    /// The change-log entry (holds the key, the new state and the seq).
    pub change: Change,
    /// The key's version the write was decided against.
    pub prior_version: u64,
    /// The seq of the change that produced that version (`None` when the
    /// key had never been written); it links the key's history.
    pub prior_seq: Option<u64>,
    /// When the key's lock before the write was to expire, if it had one:
    /// the deadline the write moves or ends.
    pub prior_lock_expiry: Option<u64>,
}

/// What a step makes or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A hold.
    Hold(Hold),
    /// A transfer.
    Transfer(Transfer),
}

impl Object {
    /// Its id.
    pub fn id(&self) -> &str {
        match self {
            Object::Hold(hold) => &hold.id,
            Object::Transfer(transfer) => &transfer.id,
        }
    }

    /// The keys its steps write: a hold's lines; a transfer's skus at both
    /// ends.
    pub fn keys(&self) -> Vec<ItemKey> {
        match self {
            Object::Hold(hold) => hold.lines.iter().map(|l| l.key.clone()).collect(),
            Object::Transfer(t) => [&t.from, &t.to]
                .into_iter()
                .flat_map(|location| {
                    t.lines.iter().map(|line| ItemKey {
                        location: location.clone(),
                        sku: line.sku.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// A hold as a group leaves it, and where its deadline was before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldWrite {
    /// The hold after the group's step.
    pub hold: Hold,
    /// The hold's expiry before the step, if it was active then: the
    /// deadline the step moves or ends.
    pub prior_expiry: Option<u64>,
    /// When the step ended the hold (fulfilled, released or expired), if it
    /// did: the record goes once that is older than the idempotency
    /// records that could still ask for it ([`Ledger::forget_holds`]).
    pub ended_at_ms: Option<u64>,
}

/// A lock the coordinator must end at `at_ms` unless it is renewed or
/// released before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// When the lease ends, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The locked key.
    pub key: ItemKey,
    /// The lock's token.
    pub token: u64,
}

/// An idempotency record to store under `(store, key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyEntry {
    /// The store that sent the request.
    pub store: String,
    /// The request's idempotency key.
    pub key: String,
    /// The outcome.
    pub record: IdempotencyRecord,
}

/// Everything one decided group writes, committed atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitGroup {
    /// Accepted changes in sequence order; the changes of one commit are
    /// consecutive and share a `commit_end`.
    pub writes: Vec<CommittedWrite>,
    /// Idempotency records to store.
    pub idempotency: Vec<IdempotencyEntry>,
    /// Holds made or changed, in step order.
    pub holds: Vec<HoldWrite>,
    /// Transfers made or changed, in step order.
    pub transfers: Vec<Transfer>,
    /// The change-log head after this group.
    pub head: u64,
}

impl CommitGroup {
    /// Whether the group writes nothing (strong reads only, say).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.idempotency.is_empty()
            && self.holds.is_empty()
            && self.transfers.is_empty()
    }

    /// The ends of its transfers, sorted and distinct.
    pub fn transfer_ends(&self) -> Vec<String> {
        let ends = (self.transfers.iter()).flat_map(|t| [t.from.as_str(), t.to.as_str()]);
        sorted_distinct(ends)
    }

    /// Every location its changes and transfers touch, sorted and distinct.
    pub fn locations(&self) -> Vec<String> {
        let changed = (self.writes.iter()).map(|w| w.change.key.location.as_str());
        let ends = (self.transfers.iter()).flat_map(|t| [t.from.as_str(), t.to.as_str()]);
        sorted_distinct(changed.chain(ends))
    }
}

fn sorted_distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(str::to_owned).collect()
}

/// A store report as remembered across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// The report.
    pub report: StoreReport,
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Whether its digest matched.
    pub digest_ok: Option<bool>,
}

/// The coordinator's storage. Implementations are shared between threads;
/// one thread (the sequencer's) commits, any may read.
pub trait Ledger: Send + Sync + 'static {
    /// Applies `group` atomically and returns once it is durable. Readers
    /// see all of it or none of it.
    fn commit(&self, group: CommitGroup) -> Result<(), LedgerError>;

    /// The state of one key.
    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError>;

    /// The recorded outcome of `(store, idempotency key)`, if its bucket is
    /// still kept (it may be past the time-to-live: the caller checks).
    fn idempotency(&self, store: &str, key: &str)
    -> Result<Option<IdempotencyRecord>, LedgerError>;

    /// The change to `location` at `seq`, if it is still in the log.
    fn change(&self, location: &str, seq: u64) -> Result<Option<Change>, LedgerError>;

    /// Up to `limit` lock deadlines at or before `now_ms`, earliest first.
    /// A commit keeps them: a write that grants, renews or ends a lock
    /// moves its deadline in the same batch.
    fn due_locks(&self, now_ms: u64, limit: usize) -> Result<Vec<Deadline>, LedgerError>;

    /// The hold `id`, if there is one.
    fn hold(&self, id: &str) -> Result<Option<Hold>, LedgerError>;

    /// Up to `limit` ids of active holds whose expiry is at or before
    /// `now_ms`, earliest first. A commit keeps them, like lock deadlines.
    fn due_holds(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, LedgerError>;

    /// Removes up to `limit` holds that ended before `before_ms`, oldest
    /// first; returns how many went.
    fn forget_holds(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError>;

    /// Up to `limit` active holds with a line at `location`, in id order.
    fn active_holds(&self, location: &str, limit: usize) -> Result<Vec<Hold>, LedgerError>;

    /// The transfer `id`, if there is one.
    fn transfer(&self, id: &str) -> Result<Option<Transfer>, LedgerError>;

    /// Transfers from or to `location` (every transfer when `None`), only
    /// those in transit with `open_only`, in id order; at most `limit` are
    /// read.
    fn transfers(
        &self,
        location: Option<&str>,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<Transfer>, LedgerError>;

    /// The sequence number of the last committed change (0 when none).
    fn head(&self) -> Result<u64, LedgerError>;

    /// The lowest sequence number still in the change log; `head + 1` when
    /// the log is empty.
    fn oldest(&self) -> Result<u64, LedgerError>;

    /// Up to `limit` changes to `location` with `after < seq <= until`, in
    /// order, at a cost in proportion to what is returned.
    fn location_changes(
        &self,
        location: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Change>, LedgerError>;

    /// Up to `limit` records of `location` (tombstones included) with their
    /// skus, in sku order, after `after_sku`.
    fn items(
        &self,
        location: &str,
        after_sku: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ItemRecord)>, LedgerError>;

    /// Every location that has at least one item record, in order.
    fn locations(&self) -> Result<Vec<String>, LedgerError>;

    /// Up to `limit` retained changes of one key, newest first.
    fn history(&self, key: &ItemKey, limit: usize) -> Result<Vec<Change>, LedgerError>;

    /// Drops every idempotency bucket whose records were all decided before
    /// `before_ms`; returns how many buckets went.
    fn expire_idempotency(&self, before_ms: u64) -> Result<usize, LedgerError>;

    /// Removes up to `limit` of the oldest changes so that at most `retain`
    /// remain; returns how many were removed.
    fn compact_changes(&self, retain: u64, limit: usize) -> Result<usize, LedgerError>;

    /// Remembers the last report of a store.
    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError>;

    /// Every remembered store report.
    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError>;
}

/// How idempotency records are bucketed by decision time: expiry drops a
/// whole bucket once every record in it is past the time-to-live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    /// The width of one bucket, in milliseconds (at least 1).
    pub width_ms: u64,
}

impl Buckets {
    /// Buckets for records kept `ttl`: eight per time-to-live, so that a
    /// record outlives its time by at most an eighth of it, and a lookup
    /// reads at most nine buckets.
    pub fn for_ttl(ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Buckets {
            width_ms: (ttl_ms / 8).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use shelfsync_core::TransferState;

    use super::CommitGroup;
    use crate::contract::{key, put, transfer};

    #[test]
    fn a_group_names_the_locations_it_touches() {
        let empty = CommitGroup::default();
        assert!(empty.is_empty());
        assert!(empty.locations().is_empty());
        let group = CommitGroup {
            writes: vec![put(1, &key("s2", "a"), 1, 5), put(2, &key("s1", "b"), 1, 5)],
            transfers: vec![
                transfer("t1", "w1", "s2", TransferState::InTransit),
                transfer("t2", "s3", "w1", TransferState::Closed),
            ],
            ..CommitGroup::default()
        };
        assert!(!group.is_empty());
        assert_eq!(group.transfer_ends(), ["s2", "s3", "w1"]);
        assert_eq!(group.locations(), ["s1", "s2", "s3", "w1"]);
    }
}
