//! The agent's failpoints, for the fault suite (docs/testing.md).
//!
//! The points sit where the faults happen ([`crate::replica`],
//! [`crate::forward`]), named by the constants below; those names are an
//! interface of the fault suite. They are configured from `FAILPOINTS` at
//! start ([`crate::run`]) and through `PUT /debug/failpoints/{name}` (the
//! actions as the body) and `GET /debug/failpoints` on the REST listener
//! ([`crate::rest`]); [`shelfsync_proto::failpoints`] holds that shared
//! machinery. All of it is compiled in only with the `failpoints` cargo
//! feature: in any other build the points do nothing and the routes answer
//! 404.

pub use shelfsync_proto::failpoints::{crash_point, io_error, setup_from_env};
#[cfg(feature = "failpoints")]
pub use shelfsync_proto::failpoints::{list, set};

/// Crash (`abort`, as a `kill -9` would) while applying a sync page (of
/// changes or of a snapshot): after the page was received and merged into
/// its replica batch, before that batch is written. A batch is atomic, so
/// this is the middle of a page as far as the disk can tell.
pub const MID_REPLICA_PAGE: &str = "agent-mid-replica-page";
/// Crash (`abort`) after the coordinator accepted a forwarded write and
/// before the agent applies it to its replica.
pub const AFTER_FORWARD_BEFORE_APPLY: &str = "agent-after-forward-before-apply";
/// Every write of the replica (a sync page, a forwarded write's state, a
/// bootstrap's start, a cursor reset) fails with
/// [`crate::replica::ReplicaError::Storage`]: `return` or `return(eio)`
/// with EIO, `return(enospc)` with ENOSPC.
pub const REPLICA_WRITE: &str = "agent-replica-write";
