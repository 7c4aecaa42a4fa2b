//! The QUIC side of the coordinator: accept connections, identify the peer
//! from its certificate, require a hello, then serve one request per stream.
//!
//! A connection's streams are served concurrently inside the connection's
//! task, not on a task each: with more than one worker thread, a task
//! spawned per request woke an idle worker for most requests of an idle
//! fleet (docs/decisions.md). Ledger reads run on blocking threads, so a
//! snapshot page does not hold up a write on the same connection. The
//! server stops accepting when the shutdown future resolves and closes open
//! connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use shelfsync_proto::codec::{FrameReader, FrameWriter, read_frame, write_frame};
use shelfsync_proto::{ErrorCode, ProtoError, Request, Response, SubscribeRequest, WireError, tls};

use crate::service::{Peer, Service};

/// How long a peer has to send its hello after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Application close code for a refused peer.
const CLOSE_REFUSED: u32 = 1;

/// Serves connections on `endpoint` until `shutdown` resolves.
pub async fn serve(
    endpoint: quinn::Endpoint,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let service = service.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, service).await,
                Err(err) => tracing::info!(%remote, error = %err, "handshake failed"),
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

async fn serve_connection(conn: quinn::Connection, service: Arc<Service>) {
    let remote = conn.remote_address();
    let cn = match tls::peer_identity(&conn) {
        Ok(cn) => cn,
        Err(err) => {
            tracing::warn!(%remote, error = %err, "peer identity unreadable");
            conn.close(CLOSE_REFUSED.into(), b"certificate has no usable identity");
            return;
        }
    };
    let peer = match service.identify(&cn) {
        Ok(peer) => peer,
        Err(err) => {
            tracing::warn!(%remote, identity = %cn, "refused an unregistered peer");
            refuse_on_first_stream(&conn, err).await;
            return;
        }
    };
    if !hello(&conn, &service, &peer).await {
        return;
    }
    let _guard = service.connected(&peer);
    tracing::info!(%remote, peer = peer.name(), "peer connected");
    let mut reloads = service.reloads();
    // The connection's streams, served concurrently inside this task.
    let mut streams = FuturesUnordered::new();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            Some(served) = streams.next() => {
                if let Err(err) = served {
                    tracing::debug!(peer = peer.name(), error = %err, "stream failed");
                }
                continue;
            }
            // A reload that removed this store ends its connection.
            Ok(()) = reloads.changed() => {
                if !service.is_registered(&peer) {
                    tracing::info!(%remote, peer = peer.name(), "store removed from the registry; closing its connection");
                    conn.close(CLOSE_REFUSED.into(), b"store removed from the registry");
                    return;
                }
                continue;
            }
        };
        let (send, recv) = match accepted {
            Ok(streams) => streams,
            Err(err) => {
                tracing::info!(%remote, peer = peer.name(), reason = %err, "peer disconnected");
                return;
            }
        };
        streams.push(serve_stream(send, recv, &service, &peer));
    }
}

/// Waits for the hello on the first stream; false when the peer is done.
async fn hello(conn: &quinn::Connection, service: &Service, peer: &Peer) -> bool {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let request = read_frame::<_, Request>(&mut recv).await;
        Some((send, request))
    })
    .await;
    let Ok(Some((mut send, request))) = first else {
        conn.close(CLOSE_REFUSED.into(), b"no hello");
        return false;
    };
    let response = match request {
        Ok(Some(Request::Hello(hello))) => service.hello(peer, &hello),
        Ok(_) => Response::Error(WireError::new(
            ErrorCode::HelloRequired,
            "the first request of a connection must be a hello",
        )),
        Err(err) => Response::Error(WireError::new(ErrorCode::BadRequest, err.to_string())),
    };
    let accepted = matches!(response, Response::Hello(_));
    if let Response::Error(err) = &response {
        tracing::warn!(peer = peer.name(), error = %err.message, "hello refused");
    }
    if write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
        if !accepted {
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
    }
    if !accepted {
        conn.close(CLOSE_REFUSED.into(), b"hello refused");
    }
    accepted
}

/// Answers the peer's first request with `err`, then closes.
async fn refuse_on_first_stream(conn: &quinn::Connection, err: WireError) {
    let answer = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let _ = read_frame::<_, Request>(&mut recv).await;
        write_frame(&mut send, &Response::Error(err)).await?;
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok::<_, ProtoError>(())
    };
    let _ = tokio::time::timeout(HELLO_TIMEOUT, answer).await;
    conn.close(CLOSE_REFUSED.into(), b"unknown peer");
}

/// Answers the requests of one stream in turn until the peer finishes it:
/// most clients send one request per stream, a [`shelfsync_proto::client::Session`]
/// sends many.
async fn serve_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    service: &Service,
    peer: &Peer,
) -> Result<(), ProtoError> {
    let mut requests = FrameReader::new(recv);
    let mut responses = FrameWriter::new(send);
    let mut first = true;
    loop {
        let response = match requests.next::<Request>().await {
            Ok(Some(Request::Subscribe(subscribe))) if first => {
                return serve_subscription(requests, responses, service, peer, subscribe).await;
            }
            Ok(Some(request)) => service.handle(peer, request).await,
            Ok(None) => break,
            Err(err) => {
                tracing::info!(peer = peer.name(), error = %err, "malformed request");
                // The stream's framing is lost: answer, then end it.
                let response =
                    Response::Error(WireError::new(ErrorCode::BadRequest, err.to_string()));
                responses.send(&response).await?;
                break;
            }
        };
        first = false;
        responses.send(&response).await?;
    }
    let _ = responses.get_mut().finish();
    Ok(())
}

/// Sends a wake-up with the head at once and after every commit that
/// touches the subscribed locations, until the peer ends the stream or the
/// connection. While a send waits for a slow peer, the commits meanwhile
/// raise one flag: one wake-up follows for all of them.
async fn serve_subscription(
    mut requests: FrameReader<quinn::RecvStream>,
    mut responses: FrameWriter<quinn::SendStream>,
    service: &Service,
    peer: &Peer,
    subscribe: SubscribeRequest,
) -> Result<(), ProtoError> {
    let flag = match service.subscribe(peer, subscribe.locations) {
        Ok(flag) => flag,
        Err(err) => {
            responses.send(&Response::Error(err)).await?;
            let _ = responses.get_mut().finish();
            return Ok(());
        }
    };
    let metrics = service.metrics().clone();
    metrics.subscriptions.inc();
    let served = async {
        loop {
            let head = service.pipeline().read_head();
            responses.send(&Response::Wake { head }).await?;
            tokio::select! {
                () = flag.notified() => {}
                // The peer finished its side (or sent something else).
                _ = requests.next::<Request>() => return Ok::<_, ProtoError>(()),
            }
        }
    };
    let result = served.await;
    metrics.subscriptions.dec();
    let _ = responses.get_mut().finish();
    result
}
