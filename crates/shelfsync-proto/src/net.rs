//! UDP sockets for the QUIC endpoints.
//!
//! A coordinator's one socket receives the requests of every store. The
//! kernel's default receive buffer (about 200 KiB on Linux) holds only a few
//! hundred datagrams; a burst from many stores overflows it. A dropped
//! packet costs a retransmission after QUIC's probe timeout (tens of
//! milliseconds), which shows as tail latency. The endpoints here ask for
//! [`UDP_BUFFER_BYTES`] each way; the kernel caps the request at
//! `net.core.rmem_max` / `wmem_max` without failing.
//!
//! A server endpoint also takes its stateless-reset key from a file
//! ([`reset_key`]) so that it survives a restart: a client still holding a
//! connection to the process before the restart then hears a stateless
//! reset at its first packet and reconnects at once, instead of calling on
//! a dead connection until its timeout runs out (quinn's default key is new
//! in every process, and a reset signed with another key is ignored). The
//! key that signs connection ids is derived from it, for the same reason: a
//! packet with an id the endpoint did not sign gets no reset at all.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

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
/// is given, else a client only. Its stateless-reset key is new; see
/// [`server_endpoint`] for one that outlives the process.
///
/// # Errors
/// When the socket cannot be bound, or when called outside a tokio runtime.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    bind_endpoint(quinn::EndpointConfig::default(), addr, server)
}

/// A server endpoint like [`endpoint`] whose stateless resets are signed
/// with `reset_key` (from [`reset_key`]), so that they stay valid for
/// connections made before a restart.
///
/// # Errors
/// When the socket cannot be bound, or when called outside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    reset_key: &[u8; RESET_KEY_BYTES],
) -> io::Result<quinn::Endpoint> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    // The connection ids must be recognised after a restart too: the
    // endpoint drops a packet whose id it did not sign without answering,
    // reset or not. Their signing key is derived from the reset key.
    let tag = ring::hmac::sign(&key, b"shelfsync connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    bind_endpoint(config, addr, Some(server))
}

fn bind_endpoint(
    config: quinn::EndpointConfig,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("a QUIC endpoint needs a tokio runtime"))?;
    quinn::Endpoint::new(config, server, bind_udp(addr)?, runtime)
}

/// Length of a stateless-reset key (the HMAC-SHA256 key quinn signs resets with).
pub const RESET_KEY_BYTES: usize = 64;

/// The stateless-reset key kept in `path`: read when the file exists,
/// else drawn at random and written there (mode 0600, synced) first.
///
/// # Errors
/// When the file cannot be read or written, or holds anything but
/// [`RESET_KEY_BYTES`] bytes (a damaged file is reported, not replaced:
/// replacing it would silently cost clients their fast reconnect).
pub fn reset_key(path: &Path) -> io::Result<[u8; RESET_KEY_BYTES]> {
    let mut key = [0u8; RESET_KEY_BYTES];
    match std::fs::File::open(path) {
        Ok(file) => {
            let mut bytes = Vec::with_capacity(RESET_KEY_BYTES);
            file.take(RESET_KEY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)?;
            if bytes.len() != RESET_KEY_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds {} bytes, a stateless-reset key has {RESET_KEY_BYTES}; \
                         delete it to make a new one",
                        path.display(),
                        bytes.len()
                    ),
                ));
            }
            key.copy_from_slice(&bytes);
            Ok(key)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| io::Error::other("the system's random source failed"))?;
            write_new(path, &key)?;
            Ok(key)
        }
        Err(err) => Err(err),
    }
}

/// Writes `bytes` to a new file at `path` (through a temporary file and a
/// rename, so a crash leaves either no file or a whole one).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_key_is_made_once_and_read_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("quic-reset-key");
        let first = reset_key(&path)?;
        assert_eq!(reset_key(&path)?, first, "a second read gives the same key");
        assert_ne!(first, [0u8; RESET_KEY_BYTES]);
        std::fs::write(&path, b"short")?;
        let err = reset_key(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("holds 5 bytes"), "{err}");
        Ok(())
    }

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
