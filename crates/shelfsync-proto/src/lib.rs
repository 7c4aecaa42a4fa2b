//! shelfsync's wire protocol: the messages, their framing, the mutual-TLS
//! QUIC endpoints and the certificates they rest on.
//!
//! Dependencies point one way: this crate knows the domain types of
//! `shelfsync-core` and nothing of the coordinator or agent.

pub mod certs;
pub mod client;
pub mod codec;
pub mod error;
pub mod failpoints;
pub mod message;
pub mod net;
pub mod time;
pub mod tls;

pub use client::Client;
pub use error::ProtoError;
pub use message::*;
pub use tls::{ALPN, TlsFiles};
