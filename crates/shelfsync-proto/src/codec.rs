//! The only place frames meet serde.
//!
//! A frame is a 4-byte big-endian length followed by one msgpack message with
//! named fields. Frames longer than [`MAX_FRAME_LEN`] are refused before any
//! buffer of that size is allocated, and a frame that does not decode is a
//! typed error, never a panic.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::error::ProtoError;

/// Largest frame either side accepts: 8 MiB.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// The length-delimited codec with the frame cap applied.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// Encodes a message as msgpack with named fields (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ProtoError> {
    let body = rmp_serde::to_vec_named(msg).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(Bytes::from(body))
}

/// Decodes one message from a frame body (no length prefix).
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ProtoError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME_LEN,
        });
    }
    rmp_serde::from_slice(frame).map_err(|e| ProtoError::Decode(e.to_string()))
}

/// Writes one framed message.
pub async fn write_frame<W, T>(writer: W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    FrameWriter::new(writer).send(msg).await
}

/// Reads one framed message; `Ok(None)` when the stream ended cleanly first.
pub async fn read_frame<R, T>(reader: R) -> Result<Option<T>, ProtoError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    FrameReader::new(reader).next().await
}

/// Reads messages one after another from a stream that carries several:
/// bytes read past one frame stay buffered for the next.
pub struct FrameReader<R> {
    framed: FramedRead<R, LengthDelimitedCodec>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `reader`.
    pub fn new(reader: R) -> Self {
        FrameReader {
            framed: FramedRead::new(reader, frame_codec()),
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(frame)) => decode(&frame).map(Some),
            // The codec reports leftover bytes at end of stream as a plain I/O error.
            Some(Err(err))
                if err.kind() == std::io::ErrorKind::Other
                    && !self.framed.read_buffer().is_empty() =>
            {
                Err(ProtoError::Truncated)
            }
            Some(Err(err)) => Err(ProtoError::from_io(err)),
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        self.framed.get_mut()
    }
}

/// Writes messages one after another on one stream, reusing its buffer.
pub struct FrameWriter<W> {
    framed: FramedWrite<W, LengthDelimitedCodec>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes frames to `writer`.
    pub fn new(writer: W) -> Self {
        FrameWriter {
            framed: FramedWrite::new(writer, frame_codec()),
        }
    }

    /// Encodes `msg`, frames it and writes it out (flushed).
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ProtoError> {
        self.framed
            .send(encode(msg)?)
            .await
            .map_err(ProtoError::from_io)
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        self.framed.get_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ErrorCode, Request, Response, WireError, WriteRequest};
    use proptest::prelude::*;
    use shelfsync_core::{ItemKey, Op};

    fn write() -> Request {
        Request::Write(WriteRequest {
            idempotency_key: "k-1".into(),
            key: ItemKey::new("store-1", "sku-1").unwrap(),
            op: Op::Reserve { amount: 2 },
            expected_version: Some(4),
            lock_token: None,
        })
    }

    #[tokio::test]
    async fn round_trip_through_a_stream() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &write()).await.unwrap();
        let back: Option<Request> = read_frame(&buf[..]).await.unwrap();
        assert_eq!(back, Some(write()));
    }

    #[tokio::test]
    async fn several_frames_on_one_stream_read_in_order() {
        let mut buf = Vec::new();
        let mut writer = FrameWriter::new(&mut buf);
        writer.send(&write()).await.unwrap();
        writer.send(&Request::Status).await.unwrap();
        let mut reader = FrameReader::new(&buf[..]);
        assert_eq!(reader.next::<Request>().await.unwrap(), Some(write()));
        assert_eq!(
            reader.next::<Request>().await.unwrap(),
            Some(Request::Status)
        );
        assert_eq!(reader.next::<Request>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn empty_stream_is_none() {
        let back: Option<Request> = read_frame(&b""[..]).await.unwrap();
        assert_eq!(back, None);
    }

    #[tokio::test]
    async fn oversize_length_prefix_is_refused_without_allocating() {
        let mut frame = ((MAX_FRAME_LEN as u32) + 1).to_be_bytes().to_vec();
        frame.extend_from_slice(b"abc");
        let err = read_frame::<_, Request>(&frame[..]).await.unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err:?}");
        let huge = u32::MAX.to_be_bytes();
        let err = read_frame::<_, Request>(&huge[..]).await.unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &write()).await.unwrap();
        buf.truncate(buf.len() - 3);
        let err = read_frame::<_, Request>(&buf[..]).await.unwrap_err();
        assert!(matches!(err, ProtoError::Truncated), "{err:?}");
    }

    #[test]
    fn truncated_body_is_a_decode_error() {
        let body = encode(&write()).unwrap();
        for cut in 0..body.len() {
            assert!(decode::<Request>(&body[..cut]).is_err());
        }
    }

    #[test]
    fn huge_declared_collection_does_not_allocate_by_its_length() {
        // A map with one key "changes" whose array claims 2^32-1 elements.
        let mut body = vec![0x81, 0xa7];
        body.extend_from_slice(b"changes");
        body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<Response>(&body).is_err());
    }

    #[test]
    fn unknown_error_code_from_a_newer_peer_decodes() {
        #[derive(serde::Serialize)]
        struct Future {
            code: &'static str,
            message: &'static str,
        }
        let body = encode(&Future {
            code: "lease_expired",
            message: "x",
        })
        .unwrap();
        let err: WireError = decode(&body).unwrap();
        assert_eq!(err.code, ErrorCode::Unknown);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }
}
