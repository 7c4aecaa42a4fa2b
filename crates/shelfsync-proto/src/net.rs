//! UDP sockets for the QUIC endpoints.
//!
//! A coordinator's one socket receives the requests of every store. The
//! kernel's default receive buffer (about 200 KiB on Linux) holds only a few
//! hundred datagrams; a burst from many stores overflows it. A dropped
//! packet costs a retransmission after QUIC's probe timeout (tens of
//! milliseconds), which shows as tail latency. The endpoints here ask for
//! [`UDP_BUFFER_BYTES`] each way; the kernel caps the request at
//! `net.core.rmem_max` / `wmem_max` without failing.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer size asked for on every endpoint socket.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds a UDP socket on `addr` with enlarged buffers.
///
/// # Errors
/// When the socket cannot be created or bound (address in use, not local).
/// A buffer size the kernel refuses is logged, not an error: the socket
/// works with a smaller buffer.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(err) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::info!(error = %err, "cannot enlarge the UDP receive buffer");
    }
    // Linux reports twice the size granted (it counts its bookkeeping).
    if let Ok(granted) = socket.recv_buffer_size()
        && granted < UDP_BUFFER_BYTES
    {
        tracing::info!(
            granted,
            wanted = UDP_BUFFER_BYTES,
            "UDP receive buffer capped by the kernel; raise net.core.rmem_max to avoid drops under load"
        );
    }
    if let Err(err) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::info!(error = %err, "cannot enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on a socket from [`bind_udp`]: a server when `server`
/// is given, else a client only.
///
/// # Errors
/// When the socket cannot be bound, or when called outside a tokio runtime.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("a QUIC endpoint needs a tokio runtime"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        bind_udp(addr)?,
        runtime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_ask_for_buffers_up_to_the_kernel_cap() -> io::Result<()> {
        let socket = Socket::from(bind_udp("127.0.0.1:0".parse().map_err(io::Error::other)?)?);
        // Linux caps the size asked for at rmem_max / wmem_max.
        for (cap, got) in [
            ("rmem_max", socket.recv_buffer_size()?),
            ("wmem_max", socket.send_buffer_size()?),
        ] {
            let Ok(max) = std::fs::read_to_string(format!("/proc/sys/net/core/{cap}")) else {
                return Ok(());
            };
            let max: usize = max.trim().parse().map_err(io::Error::other)?;
            let want = UDP_BUFFER_BYTES.min(max);
            assert!(
                got >= want,
                "buffer {got} bytes, asked for {want} ({cap} {max})"
            );
        }
        Ok(())
    }
}
