//! shelfsync's domain core: the item record, the write operations and their
//! rules, with no I/O, no clock and no storage.
//!
//! Everything that decides whether a write is accepted lives here as plain
//! functions over values, so the coordinator, the agent, the tests and the
//! benches all run the same rules: [`op::apply`] for one key (locks
//! included, [`lock`]), and for several keys at once [`batch::decide`], the
//! steps of a [`hold`] and the steps of a [`transfer`]. Each takes the
//! current states and the coordinator's `now` and returns the new states or
//! a [`Rejection`]; storing them is the caller's.

pub mod batch;
pub mod digest;
pub mod error;
pub mod hold;
pub mod item;
pub mod lock;
pub mod op;
pub mod transfer;

pub use error::Rejection;
pub use hold::{Hold, HoldLine, HoldState};
pub use item::{Item, ItemKey, KeyState};
pub use lock::{Lock, LockTokens};
pub use op::{Op, Precondition, apply};
pub use transfer::{Transfer, TransferLine, TransferState};

/// A hash map for the short names on every write's path (keys, locations,
/// store ids): foldhash is several times faster than std's SipHash
/// (docs/performance.md), and like std's it seeds each map at random, so a
/// store cannot aim its keys at one map's buckets.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
