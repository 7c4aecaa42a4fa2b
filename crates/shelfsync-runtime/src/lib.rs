//! What shelfsync's processes share beyond the wire:
//! - [`service`]: the service binaries' start and stop (TOML config, logs,
//!   SIGINT/SIGTERM into one shutdown), re-exported at the crate root;
//! - [`metrics_text`]: `/metrics` in the Prometheus text format;
//! - [`launcher`] (feature `launcher`): running those binaries as child
//!   processes, for `shelfctl demo` and the end-to-end tests.
//!
//! Dependencies point one way: this crate knows nothing of the protocol,
//! the coordinator or the agent; they and `shelfctl` depend on it.

#[cfg(feature = "launcher")]
pub mod launcher;
pub mod metrics_text;
pub mod service;

pub use service::{
    ConfigError, LogFormat, ProcessSettings, Stop, StopHandle, init_tracing, load_toml,
    run_service, shutdown_signal, stop_pair,
};
