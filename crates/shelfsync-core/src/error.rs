//! Why a write is refused.
//!
//! [`Rejection`] names every domain outcome other than success. It is a
//! plain value: the coordinator sends it over the wire as a code and a
//! message, and the agent maps it to an HTTP status. Nothing here knows about
//! I/O.
//!
//! A multi-key decision (batch, hold, transfer step) that refuses one of
//! its lines says which with [`Rejection::Line`], wrapping the line's own
//! rejection; [`Rejection::cause`] unwraps it for whoever maps rejections to
//! codes.

use crate::hold::HoldState;
use crate::item::{Item, ItemKey};

/// A write the domain rules refuse. Each variant says why in words a store
/// operator understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `expected_version` was given and differs from the key's version.
    #[error("version mismatch: expected version {expected}, the current version is {actual}")]
    VersionMismatch {
        /// The version the client expected.
        expected: u64,
        /// The key's version now (0 when never written, the tombstone's when deleted).
        actual: u64,
        /// The current item, when it exists.
        current: Option<Box<Item>>,
    },
    /// A create for a key that already holds an item.
    #[error("item {key} already exists")]
    AlreadyExists {
        /// The key written.
        key: ItemKey,
        /// The item that is there.
        current: Box<Item>,
    },
    /// An op other than create on a key with no live item.
    #[error("item {key} does not exist")]
    NotFound {
        /// The key written.
        key: ItemKey,
    },
    /// A remove, reserve, hold or shipment asks for more than is available.
    #[error("insufficient stock: {requested} requested, {available} available")]
    InsufficientStock {
        /// Units available (`quantity - reserved - allowance`).
        available: u64,
        /// Units asked for.
        requested: u64,
    },
    /// A release or fulfil asks for more than is reserved outside holds
    /// (units in a hold are released or fulfilled through the hold).
    #[error("insufficient reservation: {requested} requested, {reserved} reserved")]
    InsufficientReserved {
        /// Units reserved now outside holds.
        reserved: u64,
        /// Units asked for.
        requested: u64,
    },
    /// A set would put the quantity below what is reserved plus what is
    /// granted for offline sales.
    #[error("quantity {quantity} is below the {}", committed(.reserved, .allowance))]
    BelowReserved {
        /// The quantity asked for.
        quantity: u64,
        /// Units reserved now.
        reserved: u64,
        /// Units granted to the owning store for offline sales.
        allowance: u64,
    },
    /// A delete of an item that still has reservations.
    #[error("item still has {reserved} units reserved; release or fulfil them first")]
    HasReservations {
        /// Units reserved now.
        reserved: u64,
    },
    /// The write would push a counter past `u64::MAX`.
    #[error("{field} would overflow")]
    Overflow {
        /// The counter that would overflow.
        field: &'static str,
    },
    /// A field breaks its rule.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field's name as the API spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A set or delete came without `expected_version`.
    #[error("{op} needs the expected version (If-Match)")]
    PreconditionRequired {
        /// The op that needs it.
        op: &'static str,
    },
    /// The key has a live lock and the write carries no lock token.
    #[error("item is locked by {holder} for another {expires_in_ms} ms")]
    Locked {
        /// Who holds the lock.
        holder: String,
        /// Milliseconds until the lease ends, unless it is renewed.
        expires_in_ms: u64,
    },
    /// The write carries a lock token that is not the key's live lock's:
    /// that lock was released, expired or granted again, or never existed.
    /// A token refused this way is refused forever.
    #[error(
        "lock token {token} is not the item's current lock: \
         it was released, expired or granted again"
    )]
    LockLost {
        /// The token the write carried.
        token: u64,
    },
    /// A fulfil, extend or release of a hold that is no longer active.
    #[error("hold {id} is {state}")]
    HoldGone {
        /// The hold.
        id: String,
        /// What became of it (`expired` also for an active hold past its expiry).
        state: HoldState,
    },
    /// A receipt or close of a transfer that is already closed.
    #[error("transfer {id} is closed")]
    TransferClosed {
        /// The transfer.
        id: String,
    },
    /// A receipt of more units of a sku than are still in transit.
    #[error(
        "receipt of {requested} units of {sku} is more than the {outstanding} still in transit"
    )]
    OverReceipt {
        /// The sku received.
        sku: String,
        /// Units shipped and not yet received.
        outstanding: u64,
        /// Units the receipt names.
        requested: u64,
    },
    /// One line of a multi-key request was refused, so none was applied.
    #[error("line {index}: {rejection}")]
    Line {
        /// The line's position in the request, from 0.
        index: usize,
        /// Why that line was refused.
        rejection: Box<Rejection>,
    },
}

/// The units a set may not go below, in words: `3 units reserved`, plus
/// what is granted for offline sales when there is any.
fn committed(reserved: &u64, allowance: &u64) -> String {
    match allowance {
        0 => format!("{reserved} units reserved"),
        _ => format!("{reserved} units reserved plus {allowance} granted for offline sales"),
    }
}

impl Rejection {
    /// The item as it stands, for rejections that carry it.
    pub fn current(&self) -> Option<&Item> {
        match self {
            Rejection::VersionMismatch { current, .. } => current.as_deref(),
            Rejection::AlreadyExists { current, .. } => Some(current),
            Rejection::Line { rejection, .. } => rejection.current(),
            _ => None,
        }
    }

    /// The rejection of the refused line, through any [`Rejection::Line`].
    pub fn cause(&self) -> &Rejection {
        match self {
            Rejection::Line { rejection, .. } => rejection.cause(),
            other => other,
        }
    }

    /// The index of the refused line, for rejections of a multi-key request.
    pub fn line(&self) -> Option<usize> {
        match self {
            Rejection::Line { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// This rejection as the refusal of line `index`.
    pub fn at_line(self, index: usize) -> Rejection {
        Rejection::Line {
            index,
            rejection: Box::new(self),
        }
    }
}
