//! End-to-end test support: runs the real shelfsync binaries as child
//! processes, from generated certificates and configs in a temp dir.
//!
//! The pieces, bottom up:
//! - [`binaries`] finds the built binaries (`shelfctl`, `shelfsync-coordinator`,
//!   `shelfsync-agent`) next to the test executable.
//! - [`certs::Certs`] runs the real `shelfctl certs init|issue`.
//! - The shared launcher ([`shelfsync_runtime::launcher`], also behind
//!   `shelfctl demo`) spawns a binary with its output in a log file, waits
//!   for its `/readyz` (bounded), classifies a failed start, sends signals,
//!   and kills (SIGKILL) and reaps the child in `Drop`.
//! - [`launch`] starts a service binary under test through it;
//!   [`process::Process`] is that child, printing its log tail when a test
//!   panics.
//! - [`ports`] picks ports; the launchers retry on fresh ones after an
//!   "address in use" failure.
//! - [`http`] builds the harness's HTTP client and does plain GETs;
//!   [`poll`] waits for any condition with a deadline.
//! - [`coordinator::CoordinatorProcess`] writes a coordinator config, starts
//!   the binary, waits until it is ready, and can `kill9` and `restart` it on
//!   the same data dir.
//! - [`agent::AgentProcess`] does the same for a store agent, and can also
//!   return as soon as it serves (before its first sync completes) or be
//!   pointed at a coordinator that moved; [`rest::RestClient`] speaks its
//!   REST API and hands back status, headers and JSON.
//! - [`cluster::Cluster`] owns the temp dir, the certificates and the
//!   processes of one test: a coordinator and any number of agents.
//!
//! Everything listens on 127.0.0.1 only. Nothing here sleeps to synchronize:
//! readiness is polled with a deadline.

pub mod agent;
pub mod binaries;
pub mod certs;
pub mod cluster;
pub mod coordinator;
pub mod http;
pub mod launch;
pub mod nemesis;
pub mod poll;
pub mod ports;
pub mod process;
pub mod rest;
pub mod rng;

use std::net::SocketAddr;
use std::time::Duration;

use shelfsync_proto::{Client, ProtoError, TlsFiles};

pub use agent::{AgentProcess, AgentSpec, Wait};
pub use certs::Certs;
pub use cluster::Cluster;
pub use coordinator::{CoordinatorProcess, CoordinatorSpec, StoreSpec};
pub use process::Process;
pub use rest::{RestClient, RestReply};
pub use rng::Rng;

/// The name clients check on the coordinator's certificate (`shelfctl certs
/// init` puts `localhost` and `127.0.0.1` in its SANs).
pub const SERVER_NAME: &str = "localhost";

/// How long a test client waits for the handshake and for each call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a process may take to become ready before the start fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the coordinator at `addr` with the given TLS files, checking
/// its certificate against [`SERVER_NAME`], and exchanges hellos.
///
/// Returns the raw [`ProtoError`] so tests can check how a refusal looks
/// (`Refused` with a code, a TLS failure, `is_retryable()`).
pub async fn connect(addr: SocketAddr, tls: &TlsFiles) -> Result<Client, ProtoError> {
    connect_with_timeout(addr, tls, CALL_TIMEOUT).await
}

/// Like [`connect`], with `timeout` bounding the handshake and every later call.
pub async fn connect_with_timeout(
    addr: SocketAddr,
    tls: &TlsFiles,
    timeout: Duration,
) -> Result<Client, ProtoError> {
    let config = shelfsync_proto::tls::client_config(tls)?;
    Client::connect(addr, SERVER_NAME, config, timeout).await
}
