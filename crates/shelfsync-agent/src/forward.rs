//! Write forwarding: every write goes to the coordinator, which decides.
//!
//! A write carries its idempotency key, so it is retried (on transport
//! errors only, always with the same key, each attempt bounded as
//! [`Link::attempt`] says) until the forward timeout is spent; the
//! coordinator applies it at most once whatever happens to the answers.
//! The states it answers go into the replica through one thread
//! ([`LocalApplier`]), which writes and flushes those that arrive together
//! in one batch. An accepted write is applied to the replica before the caller
//! hears of it, so the client reads its own write from this agent at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shelfsync_core::{Item, ItemKey, KeyState};
use shelfsync_proto::{
    ErrorCode, ProtoError, ReadRequest, Request, Response, WireError, WriteAck, WriteRequest,
};

use tokio::sync::{mpsc, oneshot};

use crate::link::Link;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaError};

/// States that may wait for the local-apply thread before callers wait.
const LOCAL_QUEUE: usize = 4096;
/// Most states put into the replica in one batch.
const LOCAL_BATCH: usize = 512;
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
    local: LocalApplier,
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
            local: LocalApplier::start(replica),
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
                self.local.apply(key, ack.state.clone()).await?;
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
                let state = KeyState::Live(reply.item.clone());
                self.local.apply(key, state).await?;
                Ok(reply.item)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(ForwardError::Unavailable(ProtoError::Unexpected(
                "expected a read reply",
            ))),
        }
    }
}

/// States waiting for the replica, each with whom to tell once it is in.
type LocalJob = (ItemKey, KeyState, oneshot::Sender<Result<(), ReplicaError>>);

/// Puts the states the coordinator answered into the replica, on a thread
/// of its own: every state queued while a batch is written and flushed
/// goes into the next batch, so writes answered together share one replica
/// write and one flush (docs/decisions.md: a flush per write cost a third
/// of the agent's write throughput).
#[derive(Debug)]
struct LocalApplier {
    jobs: mpsc::Sender<LocalJob>,
}

impl LocalApplier {
    /// Starts the thread; it ends when the applier is dropped.
    fn start(replica: Arc<Replica>) -> Self {
        let (jobs, mut queue) = mpsc::channel::<LocalJob>(LOCAL_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("local-apply".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < LOCAL_BATCH {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    let (states, waiting): (Vec<_>, Vec<_>) = group
                        .into_iter()
                        .map(|(key, state, done)| ((key, state), done))
                        .unzip();
                    let result = replica.apply_local_many(states);
                    for done in waiting {
                        let answer = match &result {
                            Ok(()) => Ok(()),
                            Err(err) => Err(ReplicaError::Storage(err.to_string())),
                        };
                        // The caller may have gone (its client hung up).
                        let _ = done.send(answer);
                    }
                }
            });
        if let Err(err) = spawned {
            // Without the thread every apply below fails with a clear
            // error instead of the agent failing to start.
            tracing::error!(error = %err, "cannot start the local-apply thread");
        }
        LocalApplier { jobs }
    }

    /// Puts `state` into the replica; returns once it is there and flushed.
    async fn apply(&self, key: ItemKey, state: KeyState) -> Result<(), ReplicaError> {
        let (done, wait) = oneshot::channel();
        let gone = || ReplicaError::Storage("the local-apply thread has stopped".into());
        self.jobs
            .send((key, state, done))
            .await
            .map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}
