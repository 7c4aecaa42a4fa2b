//! The messages exchanged between agents, `shelfctl` and the coordinator.
//!
//! Every QUIC bidirectional stream carries exactly one [`Request`] frame from
//! the client and one [`Response`] frame back. The first stream of a
//! connection must carry a [`Hello`]; the coordinator answers everything else
//! with [`ErrorCode::HelloRequired`] until it has. Fields are named in
//! msgpack, so a later release may add fields (with `#[serde(default)]`)
//! without breaking older peers; removing or retyping one needs a new
//! protocol version in [`SUPPORTED_VERSIONS`].

use serde::{Deserialize, Serialize};
use shelfsync_core::transfer::TransferAmount;
use shelfsync_core::{
    Hold, HoldLine, Item, ItemKey, KeyState, Op, Rejection, Transfer, TransferState,
};

/// The protocol version this build speaks; a coordinator names its own in
/// its hello reply. Version 2 added [`Request::Writes`], which a client
/// sends only to a coordinator whose reply says 2 or more.
pub const PROTOCOL_VERSION: u16 = 4;
/// The version a client of this build asks for in its hello: the oldest it
/// can work with, so that it can still talk to a coordinator of an older
/// build (it then does without what came later).
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Every protocol version this build can talk; the hello is refused otherwise.
pub const SUPPORTED_VERSIONS: &[u16] = &[1, 2, 3, 4];
/// Most writes in one [`Request::Writes`].
pub const MAX_WRITES: usize = 1024;
/// The software version carried in hellos and store reports.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The identity (certificate CN) of an administrator.
pub const ADMIN_IDENTITY: &str = "admin";

/// What a client sends on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Opens the conversation: protocol and software version.
    Hello(Hello),
    /// A write to one key.
    Write(WriteRequest),
    /// Several writes (at most [`MAX_WRITES`]), each decided on its own as
    /// if sent alone; answered with [`Response::Writes`] in the same order.
    /// One stream for many writes: an agent sends the writes its clients
    /// made while its previous ones were on their way (protocol version 2).
    Writes(Vec<WriteRequest>),
    /// Writes to several keys as one commit, all or none (protocol version
    /// 3): answered with [`Response::Batch`], or an error naming the first
    /// refused line.
    Batch(BatchRequest),
    /// A step of a hold, or a read of one (protocol 3): answered with
    /// [`Response::Hold`].
    Hold(HoldRequest),
    /// The active holds on a location (protocol 3): answered with
    /// [`Response::Holds`].
    Holds(HoldsRequest),
    /// A step of a transfer, or a read of one (protocol 3): answered with
    /// [`Response::Transfer`].
    Transfer(TransferRequest),
    /// Transfers from or to a location (protocol 3): answered with
    /// [`Response::Transfers`].
    Transfers(TransfersRequest),
    /// A strong read of one key: the coordinator's durable state.
    Read(ReadRequest),
    /// The change-log entries after a cursor.
    Changes(ChangesRequest),
    /// Wake me when these locations change (protocol 4): the stream stays
    /// open and carries a [`Response::Wake`] at once and after every commit
    /// that touches one of them, until the client finishes its side.
    /// Wake-ups that come while one is being sent are merged into one.
    Subscribe(SubscribeRequest),
    /// One page of a snapshot of the items of some locations.
    Snapshot(SnapshotRequest),
    /// A store agent's sync state (sent on every sync).
    Report(StoreReport),
    /// Admin only: the sync status of every registered store.
    Status,
    /// Admin only: the change log of one key, newest first.
    History(HistoryRequest),
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Write(_) => "write",
            Request::Writes(_) => "writes",
            Request::Batch(_) => "batch",
            Request::Hold(_) => "hold",
            Request::Holds(_) => "holds",
            Request::Transfer(_) => "transfer",
            Request::Transfers(_) => "transfers",
            Request::Read(_) => "read",
            Request::Changes(_) => "changes",
            Request::Subscribe(_) => "subscribe",
            Request::Snapshot(_) => "snapshot",
            Request::Report(_) => "report",
            Request::Status => "status",
            Request::History(_) => "history",
        }
    }
}

/// What the coordinator answers on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The hello was accepted.
    Hello(HelloReply),
    /// The write was accepted and is durable.
    Write(WriteAck),
    /// One answer per write of a [`Request::Writes`], in order: each a
    /// [`Response::Write`] or a [`Response::Error`].
    Writes(Vec<Response>),
    /// The batch was accepted whole and is durable.
    Batch(BatchAck),
    /// A hold after a durable step, or as read.
    Hold(HoldAck),
    /// Active holds.
    Holds(Vec<HoldAck>),
    /// A transfer after a durable step, or as read.
    Transfer(TransferAck),
    /// Transfers.
    Transfers(Vec<Transfer>),
    /// The item as it stands, durable.
    Read(ReadReply),
    /// A page of change-log entries.
    Changes(ChangesPage),
    /// Something changed at the subscribed locations: the durable head.
    Wake {
        /// Durable head of the change log.
        head: u64,
    },
    /// The cursor is older than the retained change log: bootstrap from a snapshot.
    CursorExpired {
        /// Oldest sequence number still in the log.
        oldest: u64,
        /// Durable head of the log.
        head: u64,
    },
    /// A page of a snapshot.
    Snapshot(SnapshotPage),
    /// The store report was recorded.
    ReportAck(ReportAck),
    /// Sync status of every registered store.
    Status(StatusReply),
    /// The history of one key.
    History(HistoryReply),
    /// The request was refused or failed.
    Error(WireError),
}

/// First message of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The oldest protocol version the client can work with.
    pub protocol_version: u16,
    /// Client software version, for status and logs.
    pub software_version: String,
}

impl Hello {
    /// The hello of this build: it asks for [`MIN_PROTOCOL_VERSION`].
    pub fn current() -> Self {
        Hello {
            protocol_version: MIN_PROTOCOL_VERSION,
            software_version: SOFTWARE_VERSION.to_string(),
        }
    }
}

/// The coordinator's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version the rest of the connection uses.
    pub protocol_version: u16,
    /// Coordinator software version.
    pub software_version: String,
    /// The identity read from the client's certificate (store id or `admin`).
    pub identity: String,
    /// Locations this identity may write.
    #[serde(default)]
    pub writable: Vec<String>,
    /// Locations this identity may read and replicate.
    #[serde(default)]
    pub readable: Vec<String>,
    /// Durable head of the change log.
    pub head: u64,
}

/// A write to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// Chosen by the client; the same key with the same request returns the
    /// original outcome, with another request it is refused.
    pub idempotency_key: String,
    /// The key written.
    pub key: ItemKey,
    /// What to do.
    pub op: Op,
    /// If present, the write is refused unless the key is at this version.
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// The token of the key's lock (`Lock-Token`): needed while the key is
    /// locked, refused when it is not the live lock's.
    #[serde(default)]
    pub lock_token: Option<u64>,
}

/// Most lines in one [`Request::Batch`].
pub const MAX_BATCH_LINES: usize = 100;

/// One line of a batch: a write to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLine {
    /// The key written.
    pub key: ItemKey,
    /// What to do.
    pub op: Op,
    /// If present, the batch is refused unless the key is at this version.
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// The token of the key's lock, while it is locked.
    #[serde(default)]
    pub lock_token: Option<u64>,
}

/// Writes to several distinct keys (1..=[`MAX_BATCH_LINES`]) as one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Covers the whole batch: a retry returns the original outcome.
    pub idempotency_key: String,
    /// The lines, on distinct keys.
    pub lines: Vec<BatchLine>,
}

/// An accepted, durable batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Sequence number of the first line's change; the others follow.
    pub seq: u64,
    /// Each line's key state after the batch, in line order.
    pub states: Vec<KeyState>,
    /// True when this is the recorded outcome of an earlier identical request.
    #[serde(default)]
    pub replayed: bool,
}

/// A step of a hold, or a read of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    /// Covers the step (empty for a read): a retry returns the same hold.
    #[serde(default)]
    pub idempotency_key: String,
    /// What to do.
    pub action: HoldAction,
}

/// What a [`HoldRequest`] asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldAction {
    /// Reserve every line, or none, for `ttl_ms`.
    Create {
        /// Whose hold it is (e.g. `cart-123`).
        owner: String,
        /// 1..=100 lines on distinct keys.
        lines: Vec<HoldLine>,
        /// How long it lasts, 1 s..=24 h.
        ttl_ms: u64,
        /// The token of the lines' locks, for keys that are locked.
        #[serde(default)]
        lock_token: Option<u64>,
    },
    /// The hold as it is.
    Get {
        /// The hold's id.
        id: String,
    },
    /// The hold lasts `ttl_ms` from now.
    Extend {
        /// The hold's id.
        id: String,
        /// New length from now, 1 s..=24 h.
        ttl_ms: u64,
    },
    /// The hold's units leave stock.
    Fulfil {
        /// The hold's id.
        id: String,
        /// The token of the lines' locks, for keys that are locked.
        #[serde(default)]
        lock_token: Option<u64>,
    },
    /// The hold's units are given back (a no-op once released or expired).
    Release {
        /// The hold's id.
        id: String,
        /// The token of the lines' locks, for keys that are locked.
        #[serde(default)]
        lock_token: Option<u64>,
    },
}

/// A hold as the coordinator answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldAck {
    /// The hold.
    pub hold: Hold,
    /// Milliseconds until it expires, on the coordinator's clock (0 once
    /// it has, or once it ended).
    pub expires_in_ms: u64,
    /// `(seq, state)` of each line's key: after the step for a new step,
    /// as they are now for a read or a retry.
    pub states: Vec<(u64, KeyState)>,
    /// True when this is the recorded outcome of an earlier identical request.
    #[serde(default)]
    pub replayed: bool,
}

/// Asks for the active holds with a line at `location` (and `sku`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldsRequest {
    /// The location.
    pub location: String,
    /// Only holds with a line on this sku.
    #[serde(default)]
    pub sku: Option<String>,
}

/// A step of a transfer, or a read of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Covers the step (empty for a read): a retry returns the same transfer.
    #[serde(default)]
    pub idempotency_key: String,
    /// What to do.
    pub action: TransferAction,
}

/// What a [`TransferRequest`] asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferAction {
    /// Ship every line from `from`, or none.
    Create {
        /// The location shipped from (writable by the store).
        from: String,
        /// The location shipped to.
        to: String,
        /// 1..=100 lines on distinct skus.
        lines: Vec<TransferAmount>,
        /// The token of the lines' locks, for keys that are locked.
        #[serde(default)]
        lock_token: Option<u64>,
    },
    /// The transfer as it is.
    Get {
        /// The transfer's id.
        id: String,
    },
    /// Units arrived at `to` (writable by the store).
    Receive {
        /// The transfer's id.
        id: String,
        /// What arrived, per sku.
        lines: Vec<TransferAmount>,
        /// The token of the lines' locks, for keys that are locked.
        #[serde(default)]
        lock_token: Option<u64>,
    },
    /// End it: what was not received is lost.
    Close {
        /// The transfer's id.
        id: String,
    },
}

/// A transfer as the coordinator answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAck {
    /// The transfer.
    pub transfer: Transfer,
    /// `(seq, state)` of each key the step wrote (for a read or a retry:
    /// every key of the transfer, as it is now).
    pub states: Vec<(u64, KeyState)>,
    /// True when this is the recorded outcome of an earlier identical request.
    #[serde(default)]
    pub replayed: bool,
}

/// Asks for transfers, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransfersRequest {
    /// Only those from or to this location (a store must name one it reads).
    #[serde(default)]
    pub location: Option<String>,
    /// Only those in this state.
    #[serde(default)]
    pub state: Option<TransferState>,
}

/// An accepted, durable write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// Change-log sequence number of the write.
    pub seq: u64,
    /// The key's state after the write (live item, or the tombstone of a delete).
    pub state: KeyState,
    /// True when this is the recorded outcome of an earlier identical request.
    #[serde(default)]
    pub replayed: bool,
}

/// A strong read of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The key read.
    pub key: ItemKey,
}

/// The durable state of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The item; a missing item is answered with [`ErrorCode::NotFound`].
    pub item: Item,
    /// Durable head of the change log when the read was served.
    pub head: u64,
}

/// Asks for the change-log entries after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesRequest {
    /// The cursor: the last sequence number the replica has applied.
    pub after: u64,
    /// Only changes to these locations (each must be readable).
    pub locations: Vec<String>,
    /// At most this many changes in the page (the coordinator may cap it).
    pub limit: u32,
}

/// One accepted write as the change log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Global sequence number.
    pub seq: u64,
    /// The key written.
    pub key: ItemKey,
    /// The key's full state after the write.
    pub state: KeyState,
    /// The op that was applied.
    pub op: Op,
    /// The store (or `admin`) that wrote it.
    pub store: String,
    /// The idempotency key the write carried.
    pub idempotency_key: String,
    /// When it was accepted, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The seq of the last change of the commit this change belongs to: a
    /// commit's changes have consecutive seqs and are applied whole. Equal
    /// to `seq` for a commit of one key; 0 (absent) reads as such too.
    #[serde(default)]
    pub commit_end: u64,
}

impl Change {
    /// The seq of the last change of this change's commit.
    pub fn commit_end(&self) -> u64 {
        self.commit_end.max(self.seq)
    }
}

/// A page of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// Matching changes in sequence order.
    pub changes: Vec<Change>,
    /// The cursor to send next: every change to the asked locations up to
    /// it is in this page or an earlier one (it may be past the last change
    /// returned). A page never ends inside a commit.
    pub next: u64,
    /// Durable head of the log; the replica is current when `next == head`.
    pub head: u64,
    /// When a transfer from or to one of the asked locations last changed
    /// (the coordinator's clock, ms): a replica that keeps the open
    /// transfers asks for them again once this passes what it has (0 from
    /// a coordinator that does not say).
    #[serde(default)]
    pub transfers_at: u64,
}

/// Asks to be woken when `locations` change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The locations (each must be readable).
    pub locations: Vec<String>,
}

/// Asks for a page of the items of some locations, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Locations to copy (each must be readable).
    pub locations: Vec<String>,
    /// Resume after this key; `None` starts at the beginning.
    #[serde(default)]
    pub after: Option<ItemKey>,
    /// At most this many items (the coordinator may cap it).
    pub limit: u32,
}

/// One page of a snapshot.
///
/// Pages are read from live state, so an item may be newer than the head of
/// the first page; applying the changes after that first head, never moving
/// an item to a lower version, yields exactly the coordinator's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// Live items in key order.
    pub items: Vec<Item>,
    /// The key to resume after, or `None` when this was the last page.
    pub next: Option<ItemKey>,
    /// Durable head of the log when this page was read.
    pub head: u64,
}

/// A store agent's view of its own sync state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    /// Last sequence number applied to the replica.
    #[serde(default)]
    pub cursor: u64,
    /// Digest of the replica's items at `cursor`.
    #[serde(default)]
    pub digest: u64,
    /// Items in the replica.
    #[serde(default)]
    pub item_count: u64,
    /// Writes being forwarded right now.
    #[serde(default)]
    pub pending_forwards: u64,
    /// The last sync or forward error, if the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Agent software version.
    #[serde(default)]
    pub software_version: String,
    /// Locations the replica holds.
    #[serde(default)]
    pub locations: Vec<String>,
}

/// The coordinator's answer to a store report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Durable head of the change log.
    pub head: u64,
    /// Whether the reported digest matched the coordinator's state at the
    /// reported cursor; `None` when it could not be checked (the replica's
    /// locations changed since the cursor).
    #[serde(default)]
    pub digest_ok: Option<bool>,
}

/// Sync status of every registered store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Durable head of the change log.
    pub head: u64,
    /// Coordinator time, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// One entry per registered store, in registry order.
    pub stores: Vec<StoreStatus>,
}

/// What the coordinator knows of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Store id.
    pub id: String,
    /// Display name from the registry.
    pub name: String,
    /// Expected sync interval, milliseconds.
    pub sync_interval_ms: u64,
    /// Whether the store has a connection open now.
    pub connected: bool,
    /// When the store last reported, milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_report_ms: Option<u64>,
    /// The last report, if the store was ever seen.
    #[serde(default)]
    pub report: Option<StoreReport>,
    /// Whether the last report's digest matched.
    #[serde(default)]
    pub digest_ok: Option<bool>,
    /// Changes (in the store's locations or not) between its cursor and head.
    #[serde(default)]
    pub lag: u64,
    /// Version conflicts of this store's writes in the last 5 minutes.
    #[serde(default)]
    pub conflicts_5m: u64,
    /// Other rejections of this store's writes in the last 5 minutes.
    #[serde(default)]
    pub rejections_5m: u64,
}

/// Asks for the history of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The key.
    pub key: ItemKey,
    /// At most this many entries.
    pub limit: u32,
}

/// The retained change-log entries of one key, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// Entries, newest first.
    pub changes: Vec<Change>,
}

/// Why a request was refused, as it crosses the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `expected_version` differs from the key's version.
    VersionMismatch,
    /// Create of an existing key.
    AlreadyExists,
    /// No such item.
    NotFound,
    /// Not enough available stock.
    InsufficientStock,
    /// Not enough reserved stock.
    InsufficientReserved,
    /// A set below the reserved quantity.
    BelowReserved,
    /// A delete of an item with reservations.
    HasReservations,
    /// A counter would overflow.
    Overflow,
    /// A field breaks its rule.
    InvalidField,
    /// A set or delete without `expected_version`.
    PreconditionRequired,
    /// The idempotency key was used before for another request.
    IdempotencyKeyReused,
    /// The identity may not touch this location.
    Forbidden,
    /// The certificate's identity is not a registered store.
    UnknownPeer,
    /// The peer speaks a protocol version this build does not.
    UnsupportedVersion,
    /// A request other than hello before the hello.
    HelloRequired,
    /// The request could not be decoded or makes no sense.
    BadRequest,
    /// The key is locked by another holder (reserved for lease locks).
    Locked,
    /// The lock token is not the key's current lock's (released, expired
    /// or granted again).
    LockLost,
    /// The hold or transfer has ended (fulfilled, released, expired, closed).
    Gone,
    /// A transfer receipt of more than is still in transit.
    OverReceipt,
    /// The coordinator cannot serve the request now; retry later.
    Unavailable,
    /// The coordinator failed; the write did not take effect.
    Internal,
    /// A code from a newer peer that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code this build knows.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::VersionMismatch,
        ErrorCode::AlreadyExists,
        ErrorCode::NotFound,
        ErrorCode::InsufficientStock,
        ErrorCode::InsufficientReserved,
        ErrorCode::BelowReserved,
        ErrorCode::HasReservations,
        ErrorCode::Overflow,
        ErrorCode::InvalidField,
        ErrorCode::PreconditionRequired,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::Forbidden,
        ErrorCode::UnknownPeer,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HelloRequired,
        ErrorCode::BadRequest,
        ErrorCode::Locked,
        ErrorCode::LockLost,
        ErrorCode::Gone,
        ErrorCode::OverReceipt,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];

    /// The code named `name` (as [`ErrorCode::as_str`] writes it), if any.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
    }

    /// The HTTP status the agent answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::VersionMismatch => 412,
            ErrorCode::AlreadyExists
            | ErrorCode::InsufficientStock
            | ErrorCode::InsufficientReserved
            | ErrorCode::BelowReserved
            | ErrorCode::HasReservations
            | ErrorCode::LockLost
            | ErrorCode::OverReceipt => 409,
            ErrorCode::Gone => 410,
            ErrorCode::NotFound => 404,
            ErrorCode::Overflow | ErrorCode::InvalidField | ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::PreconditionRequired => 428,
            ErrorCode::Forbidden | ErrorCode::UnknownPeer => 403,
            ErrorCode::Locked => 423,
            ErrorCode::BadRequest | ErrorCode::HelloRequired => 400,
            ErrorCode::Unavailable | ErrorCode::UnsupportedVersion => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 502,
        }
    }

    /// The code's name as it appears on the wire and in problem types.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InsufficientStock => "insufficient_stock",
            ErrorCode::InsufficientReserved => "insufficient_reserved",
            ErrorCode::BelowReserved => "below_reserved",
            ErrorCode::HasReservations => "has_reservations",
            ErrorCode::Overflow => "overflow",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::PreconditionRequired => "precondition_required",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Locked => "locked",
            ErrorCode::LockLost => "lock_lost",
            ErrorCode::Gone => "gone",
            ErrorCode::OverReceipt => "over_receipt",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A refusal: a code, a message for people, and the item where it helps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// What happened, in words.
    pub message: String,
    /// The item as it stands, for version and stock refusals.
    #[serde(default)]
    pub current: Option<Box<Item>>,
    /// Who holds the lock that refused the write, and for how long yet.
    #[serde(default)]
    pub locked: Option<LockedBy>,
    /// The index of the refused line of a batch.
    #[serde(default)]
    pub line: Option<u32>,
}

/// The live lock a write was refused for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedBy {
    /// The lock's holder.
    pub holder: String,
    /// Milliseconds until the lock expires, on the coordinator's clock.
    pub expires_in_ms: u64,
}

impl WireError {
    /// A refusal without an item.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            current: None,
            locked: None,
            line: None,
        }
    }

    /// The refusal for a domain rejection, carrying `current` unless the
    /// rejection has its own.
    pub fn rejected(rejection: &Rejection, current: Option<&Item>) -> Self {
        // A refused line of a multi-key request answers with its own code.
        let code = match rejection.cause() {
            Rejection::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Rejection::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Rejection::NotFound { .. } => ErrorCode::NotFound,
            Rejection::InsufficientStock { .. } => ErrorCode::InsufficientStock,
            Rejection::InsufficientReserved { .. } => ErrorCode::InsufficientReserved,
            Rejection::BelowReserved { .. } => ErrorCode::BelowReserved,
            Rejection::HasReservations { .. } => ErrorCode::HasReservations,
            Rejection::Overflow { .. } => ErrorCode::Overflow,
            Rejection::InvalidField { .. } => ErrorCode::InvalidField,
            Rejection::PreconditionRequired { .. } => ErrorCode::PreconditionRequired,
            Rejection::Locked { .. } => ErrorCode::Locked,
            Rejection::LockLost { .. } => ErrorCode::LockLost,
            Rejection::HoldGone { .. } | Rejection::TransferClosed { .. } => ErrorCode::Gone,
            Rejection::OverReceipt { .. } => ErrorCode::OverReceipt,
            // `cause` sees through every line.
            Rejection::Line { .. } => ErrorCode::InvalidField,
        };
        let locked = match rejection.cause() {
            Rejection::Locked {
                holder,
                expires_in_ms,
            } => Some(LockedBy {
                holder: holder.clone(),
                expires_in_ms: *expires_in_ms,
            }),
            _ => None,
        };
        WireError {
            code,
            message: rejection.to_string(),
            current: rejection.current().or(current).cloned().map(Box::new),
            locked,
            line: rejection.line().and_then(|line| u32::try_from(line).ok()),
        }
    }

    /// The refusal of a hello with an unsupported protocol version.
    pub fn unsupported_version(got: u16) -> Self {
        WireError::new(
            ErrorCode::UnsupportedVersion,
            format!("unsupported protocol version {got}, supported are {SUPPORTED_VERSIONS:?}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_found_by_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_name("no_such_code"), None);
    }

    #[test]
    fn a_hello_asks_for_the_oldest_version_this_build_can_use() {
        let hello = Hello::current();
        assert_eq!(hello.protocol_version, MIN_PROTOCOL_VERSION);
        assert!(SUPPORTED_VERSIONS.contains(&MIN_PROTOCOL_VERSION));
        assert!(SUPPORTED_VERSIONS.contains(&PROTOCOL_VERSION));
    }
}
