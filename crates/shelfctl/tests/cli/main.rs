//! Tests that run the built `shelfctl` binary: `certs` on its own, the
//! admin commands against a coordinator started in this process
//! ([`cluster::Cluster`]), and `demo` with the real coordinator and agent
//! binaries. One test binary for the crate keeps link times down.

// clippy.toml allows unwrap/expect in #[test] fns only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod certs;
mod cluster;
mod demo;

use std::process::{Command, Output};

/// Runs `shelfctl` with `args` and no `SHELFCTL_CONFIG` from the environment.
pub fn shelfctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shelfctl"))
        .args(args)
        .env_remove("SHELFCTL_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run shelfctl")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
