//! What shelfsync's processes share beyond the wire: the service binaries'
//! start and stop ([`service`]: TOML config, logs, SIGINT/SIGTERM into one
//! shutdown), re-exported at the crate root.
//!
//! Dependencies point one way: this crate knows nothing of the protocol,
//! the coordinator or the agent; they and `shelfctl` depend on it.

pub mod service;

pub use service::{
    ConfigError, LogFormat, Stop, StopHandle, init_tracing, load_toml, run_service,
    shutdown_signal, stop_pair,
};
