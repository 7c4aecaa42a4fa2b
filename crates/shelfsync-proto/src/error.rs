//! Errors of the wire layer, classified once: which are worth a retry.

use crate::message::WireError;
use crate::tls::TlsError;

/// Everything that can go wrong between two shelfsync processes.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// TLS material could not be loaded or the peer's identity read.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local QUIC endpoint could not be created.
    #[error("cannot open a QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The connection could not be started (bad address or server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (handshake refused, timeout, reset).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer did not answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A frame exceeded the size cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length announced or produced.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended in the middle of a frame, or before the reply.
    #[error("stream ended before a complete message")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("stream error: {0}")]
    Io(std::io::Error),
    /// A frame did not decode as the expected message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The peer answered with a message that does not fit the request.
    #[error("unexpected reply: {0}")]
    Unexpected(&'static str),
    /// The peer refused the request.
    #[error("{0}")]
    Refused(WireError),
}

impl ProtoError {
    /// Maps a stream I/O error, recognising the codec's own refusals.
    pub(crate) fn from_io(err: std::io::Error) -> Self {
        // quinn streams report a lost connection as an I/O error; keep the
        // connection's own reason so a refused handshake stays permanent.
        if let Some(inner) = err.get_ref() {
            if let Some(quinn::WriteError::ConnectionLost(reason)) = inner.downcast_ref() {
                return ProtoError::Connection(reason.clone());
            }
            if let Some(quinn::ReadError::ConnectionLost(reason)) = inner.downcast_ref() {
                return ProtoError::Connection(reason.clone());
            }
        }
        match err.kind() {
            std::io::ErrorKind::InvalidData => ProtoError::FrameTooLarge {
                len: usize::MAX,
                max: crate::codec::MAX_FRAME_LEN,
            },
            std::io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
            _ => ProtoError::Io(err),
        }
    }

    /// Whether the same request may succeed when sent again (on a new
    /// connection if needed). Refusals, bad certificates and protocol
    /// mismatches are permanent; transport failures are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProtoError::Connection(err) => !is_handshake_refusal(err),
            ProtoError::Timeout(_) | ProtoError::Io(_) | ProtoError::Truncated => true,
            ProtoError::Refused(err) => err.code == crate::message::ErrorCode::Unavailable,
            _ => false,
        }
    }
}

/// A TLS alert (crypto error codes 0x100..=0x1ff) means the peer refused our
/// certificate or name: trying again will not help.
fn is_handshake_refusal(err: &quinn::ConnectionError) -> bool {
    let code = match err {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    (0x100..=0x1ff).contains(&code)
}
