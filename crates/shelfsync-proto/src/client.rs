//! The client side of a coordinator connection, shared by agents, `shelfctl`
//! and the load generator.
//!
//! [`Client::connect`] does the QUIC handshake (mutual TLS) and the hello in
//! one step, so a bad certificate or protocol version shows up there and not
//! on some later request. Each [`Client::call`] opens one bidirectional
//! stream, so concurrent calls on one connection never wait for each other.
//! A caller that sends request after request (the load generator) can keep
//! one stream open instead with [`Client::session`], which saves opening and
//! closing a stream per request on both sides.

use std::net::SocketAddr;
use std::time::Duration;

use crate::codec::{FrameReader, FrameWriter, read_frame, write_frame};
use crate::error::ProtoError;
use crate::message::{Hello, HelloReply, Request, Response};

/// A client endpoint (one UDP socket on an ephemeral port, with the buffers
/// of [`crate::net::bind_udp`]) from which `addr` can be reached: IPv6 for
/// an IPv6 address, else IPv4.
pub fn client_endpoint(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    crate::net::endpoint(bind, None)
}

/// One connection to the coordinator, past its hello.
#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    hello: HelloReply,
    timeout: Duration,
}

impl Client {
    /// Connects to `addr`, checks the server's certificate against
    /// `server_name`, presents ours and exchanges hellos. `timeout` bounds the
    /// handshake and every later call.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        timeout: Duration,
    ) -> Result<Self, ProtoError> {
        let endpoint = client_endpoint(addr).map_err(ProtoError::Endpoint)?;
        Self::connect_on(endpoint, addr, server_name, config, timeout).await
    }

    /// Like [`Client::connect`], over an endpoint (one UDP socket) that the
    /// caller may share between several connections: a load generator that
    /// plays many stores from one host need not open a socket for each.
    pub async fn connect_on(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        timeout: Duration,
    ) -> Result<Self, ProtoError> {
        let connecting = endpoint.connect_with(config, addr, server_name)?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ProtoError::Timeout(timeout))??;
        let mut client = Client {
            endpoint,
            conn,
            hello: HelloReply {
                protocol_version: 0,
                software_version: String::new(),
                identity: String::new(),
                writable: Vec::new(),
                readable: Vec::new(),
                head: 0,
            },
            timeout,
        };
        let reply = match client.call(&Request::Hello(Hello::current())).await {
            Ok(reply) => reply,
            // A refused certificate often shows only here, on the first
            // stream: report the connection's reason, which says so.
            Err(err) => {
                return Err(client
                    .conn
                    .close_reason()
                    .map_or(err, ProtoError::Connection));
            }
        };
        match reply {
            Response::Hello(reply) => client.hello = reply,
            Response::Error(err) => return Err(ProtoError::Refused(err)),
            _ => return Err(ProtoError::Unexpected("expected a hello reply")),
        }
        Ok(client)
    }

    /// The coordinator's hello reply: our identity, permissions and its head.
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// The connection's current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The connection's transport counters (UDP datagrams and bytes sent
    /// and received, frames, paths) since it opened.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Closes the connection at once, without waiting for the peer: calls
    /// in flight on it fail with a connection error.
    pub fn abandon(&self) {
        self.conn.close(0u32.into(), b"abandoned");
    }

    /// Whether the connection has been closed (by either side or a timeout).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Sends one request on its own stream and waits for the reply. A refusal
    /// comes back as `Ok(Response::Error(..))`; see [`Client::request`].
    pub async fn call(&self, request: &Request) -> Result<Response, ProtoError> {
        self.call_within(request, self.timeout).await
    }

    /// Like [`Client::call`], bounded by `timeout` instead of the timeout
    /// given at connect: a caller with a deadline of its own (a forwarded
    /// write) must not wait past it for a peer that has gone silent.
    pub async fn call_within(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ProtoError> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_frame(&mut send, request).await?;
            // Finishing only fails when the stream was already reset; the read
            // below reports the reason.
            let _ = send.finish();
            read_frame::<_, Response>(&mut recv)
                .await?
                .ok_or(ProtoError::Truncated)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProtoError::Timeout(timeout))?
    }

    /// Like [`Client::call`], with a refusal turned into `Err(ProtoError::Refused)`.
    pub async fn request(&self, request: &Request) -> Result<Response, ProtoError> {
        match self.call(request).await? {
            Response::Error(err) => Err(ProtoError::Refused(err)),
            other => Ok(other),
        }
    }

    /// Opens a stream for requests sent one after another; see [`Session`].
    pub async fn session(&self) -> Result<Session, ProtoError> {
        let (send, recv) = tokio::time::timeout(self.timeout, self.conn.open_bi())
            .await
            .map_err(|_| ProtoError::Timeout(self.timeout))??;
        Ok(Session {
            send: FrameWriter::new(send),
            recv: FrameReader::new(recv),
            timeout: self.timeout,
        })
    }

    /// Opens a stream, sends `request` (a [`Request::Subscribe`]) and
    /// returns the stream, on which the coordinator sends frame after
    /// frame; dropping it ends the subscription.
    pub async fn subscribe(&self, request: &Request) -> Result<Subscription, ProtoError> {
        let opened = tokio::time::timeout(self.timeout, async {
            let (send, recv) = self.conn.open_bi().await?;
            let mut send = FrameWriter::new(send);
            send.send(request).await?;
            Ok::<_, ProtoError>((send, recv))
        });
        let (send, recv) = opened
            .await
            .map_err(|_| ProtoError::Timeout(self.timeout))??;
        Ok(Subscription {
            _send: send,
            recv: FrameReader::new(recv),
        })
    }

    /// Closes the connection and waits briefly (at most a second) for the
    /// peer to hear it. Over a shared endpoint this waits for every
    /// connection of the endpoint to close: close them together.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// One stream carrying requests in turn: each [`Session::call`] sends a
/// request and waits for its response before the next may go. After an
/// error (timeout, reset, truncated reply) the stream's state is unknown:
/// drop the session and open another.
pub struct Session {
    send: FrameWriter<quinn::SendStream>,
    recv: FrameReader<quinn::RecvStream>,
    timeout: Duration,
}

impl Session {
    /// Sends one request and waits for its reply, bounded by the client's timeout.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ProtoError> {
        let exchange = async {
            self.send.send(request).await?;
            self.recv
                .next::<Response>()
                .await?
                .ok_or(ProtoError::Truncated)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ProtoError::Timeout(self.timeout))?
    }

    /// Ends the stream: the coordinator finishes its side in turn.
    pub fn finish(mut self) {
        // Fails only when the stream was already reset; nothing is owed then.
        let _ = self.send.get_mut().finish();
    }
}

/// A stream the coordinator sends frames on as things happen
/// ([`Client::subscribe`]). Its send side stays open: finishing it, or
/// dropping the subscription, tells the coordinator to stop.
pub struct Subscription {
    _send: FrameWriter<quinn::SendStream>,
    recv: FrameReader<quinn::RecvStream>,
}

impl Subscription {
    /// The next frame; `None` once the coordinator ended the stream.
    pub async fn next(&mut self) -> Result<Option<Response>, ProtoError> {
        self.recv.next::<Response>().await
    }
}
