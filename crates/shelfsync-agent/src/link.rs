//! The agent's one connection to the coordinator, shared by the sync loop,
//! forwarded writes and strong reads.
//!
//! The connection is made on first use and made again after it fails; a
//! caller never waits longer than the timeout it passes, connect included.
//!
//! A connection that died (a restarted coordinator, a lost path) must not
//! hold a caller for its whole timeout: QUIC retransmits into silence with
//! a growing backoff, so a handshake begun while the coordinator was down,
//! or a request sent on a dead connection, may wait seconds after the
//! coordinator is back. So each handshake, and each request a forward
//! sends, is one *attempt* bounded by [`Link::attempt_timeout`] (a second,
//! or four round trips on a slow link), and a caller with time left tries
//! again afresh. A restarted coordinator also answers a dead connection's
//! first packet with a stateless reset, which ends that call at once
//! ([`shelfsync_proto::net::reset_key`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shelfsync_proto::{Client, ProtoError, Request, Response};
use tokio::sync::Mutex;

/// The least time an attempt gets: a handshake and a request take a few
/// milliseconds on a LAN and well under a second on any WAN a store has.
pub const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// An attempt gets at least this many round trips of the last connection
/// (a handshake with the hello takes two).
const ATTEMPT_RTTS: u32 = 4;

/// A lazily (re)connected coordinator connection.
pub struct Link {
    coordinator: String,
    server_name: String,
    client_config: quinn::ClientConfig,
    current: Mutex<Option<Arc<Client>>>,
    /// The round-trip time of the last connection, in µs (0: none yet).
    rtt_us: AtomicU64,
    /// The protocol version the last connection's coordinator speaks (0:
    /// none yet).
    protocol: AtomicU64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `coordinator` (`host:port`), checking `server_name`.
    pub fn new(
        coordinator: String,
        server_name: String,
        client_config: quinn::ClientConfig,
    ) -> Self {
        Link {
            coordinator,
            server_name,
            client_config,
            current: Mutex::new(None),
            rtt_us: AtomicU64::new(0),
            protocol: AtomicU64::new(0),
        }
    }

    /// Whether the coordinator takes several writes in one request
    /// ([`shelfsync_proto::Request::Writes`], protocol version 2). False
    /// until the first connection says so.
    pub fn takes_batches(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) >= 2
    }

    /// Whether the last connection's coordinator takes multi-key commits
    /// ([`shelfsync_proto::Request::Batch`], protocol version 3).
    pub fn takes_commits(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) >= 3
    }

    /// Whether the last connection's coordinator pushes wake-ups
    /// ([`shelfsync_proto::Request::Subscribe`], protocol version 4).
    pub fn takes_subscriptions(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) >= 4
    }

    /// How long one attempt (a handshake, or a forwarded request) may take
    /// before it is given up: [`MIN_ATTEMPT`], or more on a link whose
    /// round trips are long.
    pub fn attempt_timeout(&self) -> Duration {
        let rtt = Duration::from_micros(self.rtt_us.load(Ordering::Relaxed));
        MIN_ATTEMPT.max(rtt.saturating_mul(ATTEMPT_RTTS))
    }

    /// The open connection, connecting first if there is none: handshakes
    /// of at most [`Link::attempt_timeout`] each, until one succeeds or
    /// `timeout` is spent.
    pub async fn client(&self, timeout: Duration) -> Result<Arc<Client>, ProtoError> {
        let deadline = Instant::now() + timeout;
        let mut current = tokio::time::timeout(timeout, self.current.lock())
            .await
            .map_err(|_| ProtoError::Timeout(timeout))?;
        if let Some(client) = current.as_ref()
            && !client.is_closed()
        {
            self.rtt_us.store(micros(client.rtt()), Ordering::Relaxed);
            return Ok(client.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(self.attempt_timeout());
            let connected = tokio::time::timeout(attempt, async {
                let addr = self.resolve().await?;
                let client =
                    Client::connect(addr, &self.server_name, self.client_config.clone(), attempt)
                        .await?;
                Ok::<_, ProtoError>((addr, client))
            })
            .await
            .unwrap_or(Err(ProtoError::Timeout(attempt)));
            match connected {
                Ok((addr, client)) => {
                    tracing::info!(coordinator = %addr, "connected to the coordinator");
                    self.rtt_us.store(micros(client.rtt()), Ordering::Relaxed);
                    let protocol = u64::from(client.hello().protocol_version);
                    self.protocol.store(protocol, Ordering::Relaxed);
                    let client = Arc::new(client);
                    *current = Some(client.clone());
                    return Ok(client);
                }
                Err(err) if err.is_retryable() && Instant::now() < deadline => {
                    tracing::debug!(error = %err, "connection attempt failed; trying again");
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ProtoError> {
        let mut addrs = tokio::net::lookup_host(&self.coordinator)
            .await
            .map_err(ProtoError::Io)?;
        addrs.next().ok_or_else(|| {
            ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.coordinator),
            ))
        })
    }

    /// Sends one request within `timeout`, connect included; on a
    /// transport failure the connection is dropped so the next call
    /// connects again.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, ProtoError> {
        self.call_bounded(request, timeout, timeout).await
    }

    /// Like [`Link::call`], with the request itself (once connected) given
    /// at most one [`Link::attempt_timeout`]: for small requests (a write, a
    /// strong read) that a caller sends again when an attempt fails.
    pub async fn attempt(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ProtoError> {
        self.call_bounded(request, timeout, self.attempt_timeout())
            .await
    }

    async fn call_bounded(
        &self,
        request: &Request,
        timeout: Duration,
        per_request: Duration,
    ) -> Result<Response, ProtoError> {
        let started = Instant::now();
        let client = self.client(timeout).await?;
        let left = timeout.saturating_sub(started.elapsed()).min(per_request);
        let result = client.call_within(request, left).await;
        if let Err(err) = &result
            && err.is_retryable()
        {
            self.forget(&client).await;
        }
        result
    }

    /// Drops `client` if it is still the current connection, and closes
    /// it: a call failed on it (a timeout, a reset), so the other calls in
    /// flight on it fail at once and try again on the next connection,
    /// instead of waiting out their own timeouts on a connection that may
    /// be dead (seen in the fault suite: a sync call waited 3 s after a
    /// coordinator restart, until the dead connection's backed-off
    /// retransmission drew a reset).
    pub async fn forget(&self, client: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *current = None;
            client.abandon();
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
