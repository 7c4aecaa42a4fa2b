//! What the fault suite records: one [`Event`] per client operation, with
//! its invocation and completion times and its outcome, and what it reads
//! back from the coordinator and the replicas at the end of a run.
//!
//! These types are the checkers' only input ([`crate::nemesis::check`]): they
//! speak the language of SPEC §2, §3 and §5 (items, ops, locks, batches,
//! transfers, HTTP statuses), not the project's own types, so that the
//! checkers judge the system from outside.
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
    /// `POST /v1/locks/{location}/{sku}`: take the key's lock.
    LockGrant {
        /// Who takes it.
        holder: String,
        /// The lease asked for, ms.
        ttl_ms: u64,
    },
    /// `PUT /v1/locks/...` with `Lock-Token`: extend the lease.
    LockRenew {
        /// The token named.
        token: u64,
        /// The new lease from now, ms.
        ttl_ms: u64,
    },
    /// `DELETE /v1/locks/...` with `Lock-Token`.
    LockRelease {
        /// The token named.
        token: u64,
    },
    /// `POST /v1/batch`: every line or none, one idempotency key. The
    /// event's `key` is the first line's.
    Batch {
        /// The lines, on distinct keys.
        lines: Vec<BatchLine>,
    },
    /// `POST /v1/transfers`: ship `lines` from `from` to `to`. The event's
    /// `key` is the first line's at `from`.
    TransferCreate {
        /// Source location.
        from: String,
        /// Destination location.
        to: String,
        /// Per sku, the units shipped.
        lines: Vec<Units>,
    },
    /// `POST /v1/transfers/{id}/receive`, sent to the agent that writes
    /// `to`. The event's `key` is the first line's at `to`.
    TransferReceive {
        /// The transfer's id.
        transfer: String,
        /// Its destination, as the client knew it.
        to: String,
        /// Per sku, the units received.
        lines: Vec<Units>,
    },
    /// `POST /v1/transfers/{id}/close`: what was not received is lost.
    /// Writes no item.
    TransferClose {
        /// The transfer's id.
        transfer: String,
    },
    /// `POST /v1/holds`: reserve every line or none, for `ttl_ms`. The
    /// event's `key` is the first line's.
    HoldCreate {
        /// The lines, on distinct keys.
        lines: Vec<HoldLine>,
        /// The hold's lease, ms.
        ttl_ms: u64,
    },
    /// `POST /v1/holds/{id}/fulfil`: every line leaves stock.
    HoldFulfil {
        /// The hold's id.
        hold: String,
        /// Its lines, as the client knew them.
        lines: Vec<HoldLine>,
    },
    /// `POST /v1/holds/{id}/release`: every line is given back (204 also
    /// for a hold already ended, writing nothing).
    HoldRelease {
        /// The hold's id.
        hold: String,
        /// Its lines, as the client knew them.
        lines: Vec<HoldLine>,
    },
}

impl Op {
    /// Whether the op is a write (everything but a read).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }

    /// Whether the op is one of SPEC §2 on one key (a read included), the
    /// ops the model of [`crate::nemesis::check::model`] knows.
    pub fn is_single_key(&self) -> bool {
        matches!(
            self,
            Op::Create { .. }
                | Op::Set { .. }
                | Op::Add { .. }
                | Op::Remove { .. }
                | Op::Reserve { .. }
                | Op::Release { .. }
                | Op::Fulfil { .. }
                | Op::Delete
                | Op::Read { .. }
        )
    }

    /// Whether the op is a step of a transfer or a hold, which the
    /// coordinator logs under ops of its own.
    pub fn is_step(&self) -> bool {
        matches!(
            self,
            Op::TransferCreate { .. }
                | Op::TransferReceive { .. }
                | Op::TransferClose { .. }
                | Op::HoldCreate { .. }
                | Op::HoldFulfil { .. }
                | Op::HoldRelease { .. }
        )
    }

    /// Whether the op grants, renews or releases a lock.
    pub fn is_lock_op(&self) -> bool {
        matches!(
            self,
            Op::LockGrant { .. } | Op::LockRenew { .. } | Op::LockRelease { .. }
        )
    }

    /// The op's name as the change log spells it, for the ops that write
    /// one change on one key (`None` for reads and multi-key requests).
    pub fn log_kind(&self) -> Option<&'static str> {
        Some(match self {
            Op::Create { .. } => "create",
            Op::Set { .. } => "set",
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Reserve { .. } => "reserve",
            Op::Release { .. } => "release",
            Op::Fulfil { .. } => "fulfil",
            Op::Delete => "delete",
            Op::LockGrant { .. } => "lock_grant",
            Op::LockRenew { .. } => "lock_renew",
            Op::LockRelease { .. } => "lock_release",
            _ => return None,
        })
    }

    /// The amount of an amount op (add, remove, reserve, release, fulfil).
    pub fn amount(&self) -> Option<u64> {
        match self {
            Op::Add { amount }
            | Op::Remove { amount }
            | Op::Reserve { amount }
            | Op::Release { amount }
            | Op::Fulfil { amount } => Some(*amount),
            _ => None,
        }
    }
}

/// A line of a batch as sent (SPEC §5 "Batches").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLine {
    /// The item.
    pub key: Key,
    /// A single-key write of SPEC §2.
    pub op: Op,
    /// The line's `expected_version`, if any.
    pub expected_version: Option<u64>,
}

/// A line of a hold: an item and the units it takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    /// The item.
    pub key: Key,
    /// The units.
    pub amount: u64,
}

/// A sku and a number of units, in a shipment or a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// The sku.
    pub sku: String,
    /// The units.
    pub amount: u64,
}

/// What a 2xx answer to a lock, batch or transfer request carried besides
/// an item, or what a refusal's problem document said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// A lock granted or renewed.
    Lock {
        /// Its token.
        token: u64,
        /// Its holder.
        holder: String,
    },
    /// A batch's items, one per line (`None`: deleted, or unreadable).
    Items {
        /// Per line, the item after the batch.
        items: Vec<Option<ItemState>>,
    },
    /// A transfer after the step.
    Transfer(TransferView),
    /// A hold after the step: its id, state and lines.
    Hold {
        /// Its id.
        id: String,
        /// `active`, `fulfilled`, `released` or `expired`.
        state: String,
        /// Its lines.
        lines: Vec<HoldLine>,
    },
    /// A refusal's problem type (the part after `urn:shelfsync:problem:`)
    /// and, for a multi-line request, the line it names.
    Problem {
        /// e.g. `lock_lost`, `insufficient_stock`.
        kind: String,
        /// The refused line, if the problem names one.
        line: Option<u64>,
    },
}

/// A transfer as the REST API shows it (SPEC §5 "Transfers").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// Its id.
    pub id: String,
    /// Source location.
    pub from: String,
    /// Destination location.
    pub to: String,
    /// `in_transit` or `closed`.
    pub state: String,
    /// Per sku, what became of it.
    pub lines: Vec<TransferLineView>,
}

/// One line of a [`TransferView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLineView {
    /// The sku.
    pub sku: String,
    /// Units taken from `from`.
    pub shipped: u64,
    /// Units added to `to` so far.
    pub received: u64,
    /// Units written off at close.
    pub lost: u64,
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
    /// `Lock-Token` sent with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<u64>,
    /// What a lock, batch or transfer answer carried, or a refusal's
    /// problem type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

impl Event {
    /// The keys a write asks to change: its key, a batch's lines, a
    /// shipment's lines at `from`, a receipt's at `to`; none for a close
    /// or a read.
    pub fn written_keys(&self) -> Vec<Key> {
        match &self.op {
            Op::Read { .. } | Op::TransferClose { .. } => Vec::new(),
            Op::Batch { lines } => lines.iter().map(|l| l.key.clone()).collect(),
            Op::TransferCreate { from, lines, .. } => {
                lines.iter().map(|l| Key::new(from, &l.sku)).collect()
            }
            Op::TransferReceive { to, lines, .. } => {
                lines.iter().map(|l| Key::new(to, &l.sku)).collect()
            }
            Op::HoldCreate { lines, .. }
            | Op::HoldFulfil { lines, .. }
            | Op::HoldRelease { lines, .. } => lines.iter().map(|l| l.key.clone()).collect(),
            _ => vec![self.key.clone()],
        }
    }
}

/// One change of a key's history at the coordinator (`shelfctl history`).
///
/// The fields after `item` came with SPEC §5 and default when absent (a
/// history written before them).
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
    /// When the coordinator accepted it, ms since the Unix epoch on its
    /// clock (the clock it judged lock leases by).
    #[serde(default)]
    pub at_ms: u64,
    /// The seq of the last change of its commit (0 reads as `seq`).
    #[serde(default)]
    pub commit_end: u64,
    /// The op's fields.
    #[serde(default)]
    pub args: OpArgs,
    /// The item's stored lock after it (kept until a lock op ends it, even
    /// past its lease).
    #[serde(default)]
    pub lock: Option<LockState>,
}

impl Change {
    /// The seq of the last change of this change's commit.
    pub fn commit_end(&self) -> u64 {
        self.commit_end.max(self.seq)
    }

    /// The item's quantity after it (0 when absent).
    pub fn quantity(&self) -> u64 {
        self.item.as_ref().map_or(0, |i| i.quantity)
    }
}

/// The fields of a logged op the checkers read; `None` where the op has no
/// such field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpArgs {
    /// Units of an amount op, a hold's or a transfer's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// A create's quantity, or a set's new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    /// The token a lock renewal, release or expiry names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// A lock grant's or renewal's lease, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// A lock grant's holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The transfer a transfer step names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// The hold a hold step names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// A stored lock as the change log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// Its holder.
    pub holder: String,
    /// Its token.
    pub token: u64,
    /// When its lease ends, ms since the Unix epoch on the coordinator's
    /// clock.
    pub expires_at_ms: u64,
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
    /// Every transfer the log or a client named, read back at the end
    /// (`None`: the coordinator did not know it).
    #[serde(default)]
    pub transfers: Vec<(String, Option<TransferView>)>,
    /// When the change log was read, ms since the Unix epoch (the
    /// coordinator runs on the same clock).
    #[serde(default)]
    pub read_at_ms: u64,
}

impl Final {
    /// Every change of every key, in seq order.
    pub fn log(&self) -> Vec<(&Key, &Change)> {
        let mut log: Vec<(&Key, &Change)> = self
            .histories
            .iter()
            .flat_map(|(key, changes)| changes.iter().map(move |c| (key, c)))
            .collect();
        log.sort_by_key(|(_, c)| c.seq);
        log
    }
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
