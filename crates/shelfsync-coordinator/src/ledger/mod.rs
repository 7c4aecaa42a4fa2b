//! The ledger: where the coordinator keeps items, the change log,
//! idempotency records and metadata.
//!
//! [`Ledger`] is the seam between the write pipeline and storage. The
//! pipeline decides what to write (under its own per-key serialization),
//! makes it durable in its write-ahead log ([`crate::wal`]) and then hands
//! the ledger one [`CommitBatch`] at a time; the ledger applies a batch
//! atomically, remembers the batch's `position` with it, and makes
//! everything committed so far durable on [`Ledger::flush`], which the
//! pipeline calls now and then. After a crash the log brings the ledger up
//! to date from its position.
//!
//! Each write in a batch names the version it was decided against
//! (`prior_version`). The embedded sled backend is the only writer of its
//! files and does not need it; a shared backend (several coordinators on one
//! PostgreSQL) would make the commit conditional on it and report
//! [`LedgerError::Conflict`] so the pipeline can decide again.

use serde::{Deserialize, Serialize};
use shelfsync_core::{ItemKey, KeyState, Op};
use shelfsync_proto::{Change, StoreReport, WireError};

mod bloom;
mod idempotency;
pub mod sled;

pub use self::sled::SledLedger;

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

/// What the ledger keeps per key: its state and the change that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Live item or tombstone.
    pub state: KeyState,
    /// Sequence number of the change that produced this state.
    pub seq: u64,
}

/// The outcome recorded for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The key written by the original request.
    pub key: ItemKey,
    /// The op of the original request.
    pub op: Op,
    /// The expected version of the original request.
    pub expected_version: Option<u64>,
    /// What the original request got.
    pub outcome: Outcome,
    /// When it was decided, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl IdempotencyRecord {
    /// Whether a new request is the same as the recorded one.
    pub fn same_request(&self, key: &ItemKey, op: &Op, expected_version: Option<u64>) -> bool {
        &self.key == key && &self.op == op && self.expected_version == expected_version
    }
}

/// The original outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Accepted at `seq` with this resulting state.
    Accepted {
        /// Change-log sequence number.
        seq: u64,
        /// State after the write.
        state: KeyState,
    },
    /// Refused with this error.
    Rejected(WireError),
}

/// One accepted write, as decided by the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommittedWrite {
    /// The change-log entry (holds the key, the new state and the seq).
    pub change: Change,
    /// The key's version the write was decided against.
    pub prior_version: u64,
    /// The seq of the change that produced that version (`None` when the
    /// key had never been written); it links the key's history.
    pub prior_seq: Option<u64>,
}

/// Everything one group commit writes, applied atomically.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommitBatch {
    /// Accepted writes in sequence order.
    pub writes: Vec<CommittedWrite>,
    /// Idempotency records to store, by (store, idempotency key).
    pub idempotency: Vec<(String, String, IdempotencyRecord)>,
    /// The change-log head after this batch.
    pub head: u64,
    /// The number of the last pipeline group in this batch, stored with it
    /// (see [`Ledger::position`]); 0 leaves the stored one as it is.
    #[serde(default)]
    pub position: u64,
}

/// The coordinator's storage. Implementations are shared between threads.
pub trait Ledger: Send + Sync + 'static {
    /// The state of one key, as committed (durable or about to be).
    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError>;

    /// The recorded outcome of `(store, idempotency key)`, if any.
    fn idempotency(&self, store: &str, key: &str)
    -> Result<Option<IdempotencyRecord>, LedgerError>;

    /// Applies a batch atomically. It need not be durable until [`Ledger::flush`].
    /// The ledger takes the batch: a backend may keep parts of it in memory.
    fn commit(&self, batch: CommitBatch) -> Result<(), LedgerError>;

    /// Makes every committed batch durable, in full: afterwards
    /// [`Ledger::position`] is the last committed position, so recovery
    /// replays nothing.
    fn flush(&self) -> Result<(), LedgerError>;

    /// Makes committed batches durable as far as it can without a burst of
    /// work, and returns the position through which everything committed
    /// is durable (the write-ahead log may drop the groups up to it). A
    /// backend that keeps some records in memory for a while (the sled
    /// backend's idempotency records) returns an older position than its
    /// last commit's, and must accept the batches after it again from
    /// recovery.
    fn checkpoint(&self) -> Result<u64, LedgerError>;

    /// The sequence number of the last committed change (0 when none).
    fn head(&self) -> Result<u64, LedgerError>;

    /// How far the write-ahead log has durably reached the ledger: the
    /// `position` of the last committed batch that had one (0 when none),
    /// or an older one while part of the batches after it is only in
    /// memory. Recovery replays the log from after it.
    fn position(&self) -> Result<u64, LedgerError>;

    /// The lowest sequence number still in the change log; `head + 1` when
    /// the log is empty.
    fn oldest(&self) -> Result<u64, LedgerError>;

    /// Up to `limit` changes with `after < seq <= until`, in order.
    fn changes(&self, after: u64, until: u64, limit: usize) -> Result<Vec<Change>, LedgerError>;

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

    /// Removes up to `limit` idempotency records decided before `before_ms`;
    /// returns how many were removed.
    fn expire_idempotency(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError>;

    /// Removes up to `limit` of the oldest changes so that at most `retain`
    /// remain; returns how many were removed.
    fn compact_changes(&self, retain: u64, limit: usize) -> Result<usize, LedgerError>;

    /// Remembers the last report of a store.
    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError>;

    /// Every remembered store report.
    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError>;
}

/// A store report as remembered across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    /// The report.
    pub report: StoreReport,
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Whether its digest matched.
    #[serde(default)]
    pub digest_ok: Option<bool>,
}

#[cfg(test)]
pub(crate) mod contract;
