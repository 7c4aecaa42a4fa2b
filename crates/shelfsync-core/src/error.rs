//! Why a write is refused.
//!
//! [`Rejection`] names every domain outcome other than success. It is a
//! plain value: the coordinator sends it over the wire as a code and a
//! message, and the agent maps it to an HTTP status. Nothing here knows about
//! I/O.

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
    /// A remove or reserve asks for more than is available.
    #[error("insufficient stock: {requested} requested, {available} available")]
    InsufficientStock {
        /// Units available (`quantity - reserved`).
        available: u64,
        /// Units asked for.
        requested: u64,
    },
    /// A release or fulfil asks for more than is reserved.
    #[error("insufficient reservation: {requested} requested, {reserved} reserved")]
    InsufficientReserved {
        /// Units reserved now.
        reserved: u64,
        /// Units asked for.
        requested: u64,
    },
    /// A set would put the quantity below what is reserved.
    #[error("quantity {quantity} is below the {reserved} units reserved")]
    BelowReserved {
        /// The quantity asked for.
        quantity: u64,
        /// Units reserved now.
        reserved: u64,
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
}

impl Rejection {
    /// The item as it stands, for rejections that carry it.
    pub fn current(&self) -> Option<&Item> {
        match self {
            Rejection::VersionMismatch { current, .. } => current.as_deref(),
            Rejection::AlreadyExists { current, .. } => Some(current),
            _ => None,
        }
    }
}
