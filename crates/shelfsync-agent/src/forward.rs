//! Write forwarding: every write goes to the coordinator, which decides.
//!
//! A write carries its idempotency key, so it is retried (on transport
//! errors only, always with the same key, each attempt bounded as
//! [`Link::attempt`] says) until the forward timeout is spent; the
//! coordinator applies it at most once whatever happens to the answers. An accepted write is applied to the replica before the caller
//! hears of it, so the client reads its own write from this agent at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shelfsync_core::{Item, ItemKey};
use shelfsync_proto::{
    ErrorCode, ProtoError, ReadRequest, Request, Response, WireError, WriteAck, WriteRequest,
};

use crate::link::Link;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaError};

/// First pause between two attempts; doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Why a forwarded request has no answer from the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The coordinator refused it (version, stock, access...).
    #[error("{0}")]
    Refused(WireError),
    /// No answer within the forward timeout.
    #[error("coordinator unreachable: {0}")]
    Unavailable(ProtoError),
    /// The local replica failed after the coordinator accepted.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Forwards writes and strong reads.
#[derive(Debug)]
pub struct Forwarder {
    link: Arc<Link>,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder that gives up after `timeout`.
    pub fn new(
        link: Arc<Link>,
        replica: Arc<Replica>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Forwarder {
            link,
            replica,
            metrics,
            timeout,
        }
    }

    /// The forward timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request`, retrying transport failures until the deadline.
    async fn send(&self, kind: &str, request: Request) -> Result<Response, ForwardError> {
        self.metrics.pending_forwards.inc();
        let result = self.send_with_retries(request).await;
        self.metrics.pending_forwards.dec();
        let outcome = match &result {
            Ok(Response::Error(err)) => err.code.as_str(),
            Ok(_) => "accepted",
            Err(_) => "unavailable",
        };
        self.metrics.forwarded(kind, outcome);
        result
    }

    async fn send_with_retries(&self, request: Request) -> Result<Response, ForwardError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = FIRST_RETRY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self.link.attempt(&request, left).await {
                Ok(Response::Error(err)) if err.code == ErrorCode::Unavailable => {
                    ProtoError::Refused(err)
                }
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !err.is_retryable() || left <= pause {
                tracing::warn!(error = %err, "forward failed");
                return Err(ForwardError::Unavailable(err));
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }

    /// Forwards a write; on acceptance the replica has it before this returns.
    pub async fn write(&self, request: WriteRequest) -> Result<WriteAck, ForwardError> {
        let key = request.key.clone();
        match self.send("write", Request::Write(request)).await? {
            Response::Write(ack) => {
                crate::failpoints::crash_point(crate::failpoints::AFTER_FORWARD_BEFORE_APPLY);
                let replica = self.replica.clone();
                let state = ack.state.clone();
                tokio::task::spawn_blocking(move || replica.apply_local(&key, state))
                    .await
                    .map_err(|e| ReplicaError::Storage(e.to_string()))??;
                Ok(ack)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(ForwardError::Unavailable(ProtoError::Unexpected(
                "expected a write reply",
            ))),
        }
    }

    /// Reads one item from the coordinator (and refreshes the replica with it).
    pub async fn read(&self, key: ItemKey) -> Result<Item, ForwardError> {
        match self
            .send("read", Request::Read(ReadRequest { key: key.clone() }))
            .await?
        {
            Response::Read(reply) => {
                let replica = self.replica.clone();
                let state = shelfsync_core::KeyState::Live(reply.item.clone());
                tokio::task::spawn_blocking(move || replica.apply_local(&key, state))
                    .await
                    .map_err(|e| ReplicaError::Storage(e.to_string()))??;
                Ok(reply.item)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(ForwardError::Unavailable(ProtoError::Unexpected(
                "expected a read reply",
            ))),
        }
    }
}
