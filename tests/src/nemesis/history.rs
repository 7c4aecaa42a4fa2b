//! What the fault suite records: one [`Event`] per client operation, with
//! its invocation and completion times and its outcome, and what it reads
//! back from the coordinator and the replicas at the end of a run.
//!
//! These types are the checkers' only input ([`crate::nemesis::check`]): they
//! speak the language of SPEC §2 and §3 (items, ops, HTTP statuses), not the
//! project's own types, so that the checkers judge the system from outside.
//! A run writes its history as JSON lines (`history.jsonl`), so a failure can
//! be read and checked again without running anything.

use serde::{Deserialize, Serialize};

/// An item's key, `location/sku`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// Location id.
    pub location: String,
    /// SKU.
    pub sku: String,
}

impl Key {
    /// The key `location/sku`.
    pub fn new(location: &str, sku: &str) -> Self {
        Key {
            location: location.to_string(),
            sku: sku.to_string(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.location, self.sku)
    }
}

/// A live item as an answer showed it (SPEC §2; `available` is derived and
/// not kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItemState {
    /// Display name.
    pub name: String,
    /// On hand.
    pub quantity: u64,
    /// Reserved.
    pub reserved: u64,
    /// Version.
    pub version: u64,
}

/// What a client asked for (SPEC §2 ops through the REST API of §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `PUT` without `If-Match`.
    Create {
        /// Name.
        name: String,
        /// Initial quantity.
        quantity: u64,
    },
    /// `PUT` with `If-Match` (the expected version is in [`Event::if_match`]).
    Set {
        /// New name, if any.
        name: Option<String>,
        /// New quantity (a stock count), if any.
        quantity: Option<u64>,
    },
    /// `POST .../add`.
    Add {
        /// Amount.
        amount: u64,
    },
    /// `POST .../remove`.
    Remove {
        /// Amount.
        amount: u64,
    },
    /// `POST .../reserve`.
    Reserve {
        /// Amount.
        amount: u64,
    },
    /// `POST .../release`.
    Release {
        /// Amount.
        amount: u64,
    },
    /// `POST .../fulfil`.
    Fulfil {
        /// Amount.
        amount: u64,
    },
    /// `DELETE` (with `If-Match`).
    Delete,
    /// `GET`; `strong` is `?consistency=strong` (through the coordinator),
    /// else a read of the agent's local replica.
    Read {
        /// Whether the read went through the coordinator.
        strong: bool,
    },
}

impl Op {
    /// Whether the op is a write (everything but a read).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer. `item` is the item in the body (`None` for a delete's
    /// 204).
    Ok {
        /// The item answered.
        item: Option<ItemState>,
    },
    /// A definite refusal: 404, 409, 412, 422 or 428. Nothing took effect.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem document's `current` item, when it had one.
        current: Option<ItemState>,
    },
    /// No definite answer (a timeout, a transport error, a 503 or a 5xx):
    /// the write may or may not have taken effect.
    Indeterminate {
        /// What happened, for the report.
        reason: String,
    },
}

impl Outcome {
    /// Whether the outcome says for certain whether the op took effect.
    pub fn is_definite(&self) -> bool {
        !matches!(self, Outcome::Indeterminate { .. })
    }
}

/// One client operation, from its invocation to its completion.
///
/// A write retried with the same idempotency key after an indeterminate
/// answer is one event: `invoked_ns` of its first try, `completed_ns` and
/// `outcome` of its last, `attempts` how many there were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique within the history, in invocation order.
    pub id: u64,
    /// The client (one task issuing one op at a time).
    pub client: u32,
    /// The store whose agent served it.
    pub store: String,
    /// The item.
    pub key: Key,
    /// What was asked.
    pub op: Op,
    /// `If-Match` sent with it, if any.
    pub if_match: Option<u64>,
    /// `Idempotency-Key` sent with it (writes only).
    pub idempotency_key: Option<String>,
    /// When it was first sent, in ns since the run began.
    pub invoked_ns: u64,
    /// When its last answer arrived (or it was given up), in ns since the
    /// run began.
    pub completed_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// How many times it was sent.
    pub attempts: u32,
    /// Set when this event deliberately sent an earlier, already answered
    /// write again with the same idempotency key: the id of that write. A
    /// correct system answers it exactly as it answered the original and
    /// does not apply it again.
    pub replay_of: Option<u64>,
}

/// One change of a key's history at the coordinator (`shelfctl history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Global sequence number.
    pub seq: u64,
    /// The store that wrote it.
    pub store: String,
    /// The op's name (`create`, `add`, ...).
    pub op_kind: String,
    /// The idempotency key it carried.
    pub idempotency_key: String,
    /// The key's version after it.
    pub version: u64,
    /// The item after it; `None` after a delete.
    pub item: Option<ItemState>,
}

/// What the run reads back once the faults have stopped and writes have
/// ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Final {
    /// Per key, the coordinator's change history, oldest first.
    pub histories: Vec<(Key, Vec<Change>)>,
    /// Per key, the coordinator's current state (`None`: absent).
    pub coordinator: Vec<(Key, Option<ItemState>)>,
    /// Per store, what its replica holds for the keys of the run.
    pub replicas: Vec<Replica>,
}

/// A replica's items and digest, read from an agent after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The store.
    pub store: String,
    /// Per key of the run held by this replica, its item (`None`: absent).
    pub items: Vec<(Key, Option<ItemState>)>,
    /// Whether the coordinator confirmed the replica's digest at its cursor
    /// (`GET /v1/sync`'s `digest_ok`).
    pub digest_ok: Option<bool>,
}
