//! shelfsync's domain core: the item record, the write operations and their
//! rules, with no I/O, no clock and no storage.
//!
//! Everything that decides whether a write is accepted lives here as plain
//! functions over values ([`op::apply`]), so the coordinator, the agent, the
//! tests and the benches all run the same rules.

pub mod digest;
pub mod error;
pub mod item;
pub mod op;

pub use error::Rejection;
pub use item::{Item, ItemKey, KeyState};
pub use op::{Op, apply};
