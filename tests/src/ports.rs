//! Port selection for processes that take fixed addresses from their config.
//!
//! The binaries read `listen` and `http_listen` from their config file and
//! offer no way to report a port the OS picked, so a test must choose the
//! ports before the process starts. We let the OS choose: bind a socket to
//! `127.0.0.1:0`, read the port, close the socket and write the port into
//! the config. Between the close and the child's own bind another socket
//! (another test's client endpoint, say) may take the port. That race is
//! rare but real, so it is handled instead of ignored: the launchers watch
//! for the child exiting before it is ready, and when its log says the
//! address was in use
//! ([`LaunchError::is_addr_in_use`](shelfsync_runtime::launcher::LaunchError::is_addr_in_use))
//! they pick fresh ports and start it again, a bounded number of times
//! ([`MAX_START_ATTEMPTS`]).
//!
//! UDP ports (QUIC) are taken from a UDP socket and TCP ports (HTTP) from a
//! TCP listener, so each comes from the pool it will be used in.
//!
//! Readiness is only taken from a process that is still running after its
//! `/readyz` answered (see
//! [`Child::wait_ready`](shelfsync_runtime::launcher::Child::wait_ready)), so a 200 from some
//! other server on a lost port is not mistaken for it in the usual case. The
//! one case left is a lost port whose new owner answers 200 in the few
//! milliseconds before our child notices the failed bind and exits; it needs
//! another test's HTTP listener to draw the very port we just released.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use anyhow::Context;

/// How many times a launcher starts a process on fresh ports after an
/// "address in use" failure before it gives up.
pub const MAX_START_ATTEMPTS: usize = 5;

/// A UDP address on 127.0.0.1 that was free a moment ago (see the module docs).
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a UDP socket")?;
    socket
        .local_addr()
        .context("cannot read a UDP socket's address")
}

/// A TCP address on 127.0.0.1 that was free a moment ago (see the module docs).
pub fn free_tcp_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a TCP listener")?;
    listener
        .local_addr()
        .context("cannot read a TCP listener's address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_on_loopback() {
        assert!(free_udp_addr().unwrap().ip().is_loopback());
        assert_ne!(free_tcp_addr().unwrap().port(), 0);
    }
}
