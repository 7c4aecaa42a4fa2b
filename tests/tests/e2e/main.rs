//! End-to-end tests: the real binaries, started from generated certificates
//! and configs in a temp dir by `shelfsync-tests` (see its `Cluster`).
//!
//! One test binary for the whole suite keeps link times down; each area is a
//! module. The crate root is `tests/e2e/main.rs` so that its modules live in
//! `tests/e2e/`: a module file directly in `tests/` would also be built as a
//! test binary of its own.
//!
//! The binaries must have been built: `cargo test --workspace` does that; with
//! `cargo test -p shelfsync-tests`, run `cargo build --workspace` first.

// clippy.toml allows unwrap/expect in #[test] fns only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod coordinator;
mod fleet;
mod harness;
mod holds;
mod locks;
mod push;
mod recovery;
mod registry;
mod transfers;
