//! shelfsync's load generator: many stores at once against one coordinator.
//!
//! `shelfsync-loadgen setup` writes certificates and a coordinator config
//! for stores `load-1` .. `load-N` ([`setup`]); `shelfsync-loadgen run` opens
//! one mutual-TLS QUIC connection per store and drives the coordinator with
//! a chosen [`workload`] and key distribution ([`keys`]) for a duration or an
//! op count ([`driver`]); carts and batches, which write several keys per
//! op, are built by [`cart`]. It then reports throughput, rejections by
//! reason and latency percentiles as text, JSON lines, CSV rows
//! ([`report`]) and a PNG chart ([`chart`]). `shelfsync-loadgen redis` makes the same writes against
//! Redis, each a Lua compare-and-set, for the side by side comparison
//! ([`redis`]). `shelfsync-loadgen fleet` plays many stores that sync
//! (and with push are woken by the coordinator), each its own location,
//! while writes go to those locations: what a fleet costs the coordinator
//! and how fast a write reaches a store ([`fleet`], [`fleet_report`]). [`cli`] turns flags into settings; the binary is a thin shell
//! over [`cli::execute`], and tests call [`driver::run`] directly.

pub mod cart;
pub mod chart;
pub mod cli;
pub mod driver;
pub mod error;
pub mod fleet;
pub mod fleet_report;
pub mod keys;
pub mod redis;
pub mod report;
pub mod setup;
pub mod workload;

pub use driver::{Limit, RunSettings, run};
pub use error::LoadError;
pub use report::Measurement;
