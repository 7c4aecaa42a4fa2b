//! Write forwarding: every write goes to the coordinator, which decides.
//!
//! Writes are forwarded in batches: the writes clients make while earlier
//! ones are on their way go together in one [`Request::Writes`] (one QUIC
//! stream, one frame each way), with up to [`MAX_IN_FLIGHT`] batches on
//! their way at once. The coordinator decides each write on its own. A
//! write carries its idempotency key, so a batch is sent again whole (on
//! transport errors and `unavailable` answers only, always with the same
//! keys, each attempt bounded as [`Link::attempt`] says) until the forward
//! timeout is spent; the coordinator applies each write at most once
//! whatever happens to the answers. The states the answers carry are
//! remembered by the replica ([`Replica::remember`], in memory) before the
//! callers hear of them, so a client reads its own write from this agent at
//! once; the replica stores them when the sync brings them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shelfsync_core::{Item, ItemKey, KeyState, Transfer};
use shelfsync_proto::{
    BatchAck, BatchRequest, ErrorCode, HoldAck, HoldAction, HoldRequest, ProtoError, ReadRequest,
    Request, Response, TransferAck, TransferAction, TransferRequest, TransfersRequest, WireError,
    WriteAck, WriteRequest,
};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::link::Link;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaError};

/// First pause between two attempts; doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Most writes forwarded in one request.
pub const MAX_BATCH: usize = 256;
/// Most batches on their way to the coordinator at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Writes that may wait for a batch before callers wait to queue.
const WRITE_QUEUE: usize = 8192;

/// A write waiting to be forwarded, and whom to tell the outcome.
type QueuedWrite = (
    WriteRequest,
    oneshot::Sender<Result<WriteAck, ForwardError>>,
);

/// Why a forwarded request has no answer from the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The coordinator refused it (version, stock, access...).
    #[error("{0}")]
    Refused(WireError),
    /// No answer within the forward timeout.
    #[error("coordinator unreachable: {0}")]
    Unavailable(ProtoError),
    /// The local replica failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Forwards writes and strong reads.
#[derive(Debug)]
pub struct Forwarder {
    sender: Arc<Sender>,
    writes: mpsc::Sender<QueuedWrite>,
}

impl Forwarder {
    /// A forwarder that gives up after `timeout`. Starts the batching task
    /// (on the current Tokio runtime) and the local-apply thread.
    pub fn new(
        link: Arc<Link>,
        replica: Arc<Replica>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        let sender = Arc::new(Sender {
            link,
            replica,
            metrics,
            timeout,
        });
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(batch_writes(sender.clone(), queue));
        Forwarder { sender, writes }
    }

    /// The forward timeout.
    pub fn timeout(&self) -> Duration {
        self.sender.timeout
    }

    /// Forwards a write; on acceptance the replica has it before this returns.
    pub async fn write(&self, request: WriteRequest) -> Result<WriteAck, ForwardError> {
        self.check_replica()?;
        let (done, outcome) = oneshot::channel();
        let gone = || unexpected("the write forwarder has stopped");
        self.writes
            .send((request, done))
            .await
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    /// Forwards a batch, one commit at the coordinator; on acceptance the
    /// replica remembers every line's state before this returns.
    pub async fn batch(&self, request: BatchRequest) -> Result<BatchAck, ForwardError> {
        self.check_replica()?;
        let keys: Vec<ItemKey> = request.lines.iter().map(|l| l.key.clone()).collect();
        match self.sender.send("batch", Request::Batch(request)).await? {
            // An older coordinator cannot even read the request.
            Response::Error(_) if !self.sender.link.takes_commits() => {
                Err(ForwardError::Refused(WireError::new(
                    ErrorCode::Unavailable,
                    "the coordinator runs a version without batches (protocol 3 needed)",
                )))
            }
            Response::Batch(ack) => {
                let states = keys.into_iter().zip(ack.states.iter().cloned());
                let seqs = ack.seq..;
                let remembered = states
                    .zip(seqs)
                    .map(|((key, state), seq)| (key, state, seq));
                self.sender.replica.remember(remembered.collect::<Vec<_>>());
                Ok(ack)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(unexpected("expected a batch reply")),
        }
    }

    /// Forwards a step of a hold (one commit at the coordinator) or a read
    /// of one; the replica remembers its lines' states before this returns.
    pub async fn hold(&self, request: HoldRequest) -> Result<HoldAck, ForwardError> {
        if !matches!(request.action, HoldAction::Get { .. }) {
            self.check_replica()?;
        }
        match self.sender.send("hold", Request::Hold(request)).await? {
            Response::Hold(ack) => {
                self.remember_states(&ack.states);
                Ok(ack)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(unexpected("expected a hold reply")),
        }
    }

    /// Forwards a step of a transfer (one commit at the coordinator) or a
    /// read of one; the replica remembers the states it carries.
    pub async fn transfer(&self, request: TransferRequest) -> Result<TransferAck, ForwardError> {
        if !matches!(request.action, TransferAction::Get { .. }) {
            self.check_replica()?;
        }
        match self
            .sender
            .send("transfer", Request::Transfer(request))
            .await?
        {
            Response::Transfer(ack) => {
                self.remember_states(&ack.states);
                if let Err(err) = self.sender.replica.transfers().remember(&ack.transfer) {
                    // The next sync brings it; the answer stands.
                    tracing::warn!(error = %err, "cannot keep a transfer in the replica");
                }
                Ok(ack)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(unexpected("expected a transfer reply")),
        }
    }

    /// Lists transfers at the coordinator.
    pub async fn transfers(
        &self,
        request: TransfersRequest,
    ) -> Result<Vec<Transfer>, ForwardError> {
        match self
            .sender
            .send("transfers", Request::Transfers(request))
            .await?
        {
            Response::Transfers(transfers) => Ok(transfers),
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(unexpected("expected a list of transfers")),
        }
    }

    /// Remembers the live states of a step's answer, each with its seq.
    fn remember_states(&self, states: &[(u64, KeyState)]) {
        let remembered = states.iter().filter_map(|(seq, state)| {
            let item = state.item()?;
            Some((item.key(), state.clone(), *seq))
        });
        self.sender.replica.remember(remembered.collect::<Vec<_>>());
    }

    /// Refuses new writes while the replica is too far behind what it
    /// remembers for its clients (its syncs failing, say), so that memory
    /// stays bounded; the writes go through again once a sync catches up.
    fn check_replica(&self) -> Result<(), ForwardError> {
        if self.sender.replica.behind() {
            return Err(ForwardError::Refused(WireError::new(
                ErrorCode::Unavailable,
                "the local replica is too far behind its syncs to take more writes; see /v1/sync",
            )));
        }
        Ok(())
    }

    /// Reads one item from the coordinator (and refreshes the replica with it).
    pub async fn read(&self, key: ItemKey) -> Result<Item, ForwardError> {
        let request = Request::Read(ReadRequest { key: key.clone() });
        match self.sender.send("read", request).await? {
            Response::Read(reply) => {
                let state = KeyState::Live(reply.item.clone());
                self.sender.replica.remember([(key, state, reply.head)]);
                Ok(reply.item)
            }
            Response::Error(err) => Err(ForwardError::Refused(err)),
            _ => Err(unexpected("expected a read reply")),
        }
    }
}

/// Takes queued writes into batches, up to [`MAX_IN_FLIGHT`] on their way
/// at once: while they are, new writes gather into the next batch.
async fn batch_writes(sender: Arc<Sender>, mut queue: mpsc::Receiver<QueuedWrite>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.forward(batch).await;
            drop(permit);
        });
    }
}

/// What sends requests and applies their answers, shared by the batches.
#[derive(Debug)]
struct Sender {
    link: Arc<Link>,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// One write's answer from the coordinator, or why there is none.
type Answer = Result<Response, ForwardError>;

impl Sender {
    /// Sends `request`, retrying transport failures until the deadline.
    async fn send(&self, kind: &str, request: Request) -> Answer {
        self.metrics.pending_forwards.inc();
        let started = Instant::now();
        let result = self.send_with_retries(request).await;
        self.metrics.pending_forwards.dec();
        self.metrics.forwarded(kind, outcome(&result));
        let labels = crate::metrics::KindLabels {
            kind: kind.to_string(),
        };
        (self.metrics.forward_seconds.get_or_create(&labels))
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Forwards a batch of writes, has the replica remember the accepted
    /// states, then answers each caller.
    async fn forward(&self, batch: Vec<QueuedWrite>) {
        let n = batch.len();
        let (requests, callers): (Vec<WriteRequest>, Vec<_>) = batch.into_iter().unzip();
        let keys: Vec<ItemKey> = requests.iter().map(|r| r.key.clone()).collect();
        let pending = i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.pending_forwards.inc_by(pending);
        let answers = if n == 1 || !self.link.takes_batches() {
            self.send_each(requests).await
        } else {
            split(self.send_with_retries(Request::Writes(requests)).await, n)
        };
        self.metrics.pending_forwards.dec_by(pending);
        let mut accepted = Vec::new();
        for (key, answer) in keys.into_iter().zip(&answers) {
            self.metrics.forwarded("write", outcome(answer));
            if let Ok(Response::Write(ack)) = answer {
                accepted.push((key, ack.state.clone(), ack.seq));
            }
        }
        if !accepted.is_empty() {
            crate::failpoints::crash_point(crate::failpoints::AFTER_FORWARD_BEFORE_APPLY);
        }
        self.replica.remember(accepted);
        for (caller, answer) in callers.into_iter().zip(answers) {
            let result = match answer {
                Ok(Response::Write(ack)) => Ok(ack),
                Ok(Response::Error(err)) => Err(ForwardError::Refused(err)),
                Ok(_) => Err(unexpected("expected a write reply")),
                Err(err) => Err(err),
            };
            // The caller may have gone (its client hung up).
            let _ = caller.send(result);
        }
    }

    /// Sends writes one request each, all at once: for a single write, or
    /// a coordinator that does not take batches.
    async fn send_each(&self, requests: Vec<WriteRequest>) -> Vec<Answer> {
        let calls = requests
            .into_iter()
            .map(|request| self.send_with_retries(Request::Write(request)));
        futures_util::future::join_all(calls).await
    }

    async fn send_with_retries(&self, request: Request) -> Answer {
        let deadline = Instant::now() + self.timeout;
        let mut pause = FIRST_RETRY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self.link.attempt(&request, left).await {
                Ok(response) => match unavailable(&response) {
                    Some(err) => ProtoError::Refused(err),
                    None => return Ok(response),
                },
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
}

/// One answer per write from the answer to a batch of `n`.
fn split(answer: Answer, n: usize) -> Vec<Answer> {
    match answer {
        Ok(Response::Writes(answers)) if answers.len() == n => {
            answers.into_iter().map(Ok).collect()
        }
        Ok(Response::Error(err)) => (0..n).map(|_| Ok(Response::Error(err.clone()))).collect(),
        Ok(_) => (0..n)
            .map(|_| Err(unexpected("expected one answer per write")))
            .collect(),
        Err(ForwardError::Unavailable(err)) => {
            let err = WireError::new(ErrorCode::Unavailable, err.to_string());
            (0..n)
                .map(|_| Err(ForwardError::Unavailable(ProtoError::Refused(err.clone()))))
                .collect()
        }
        Err(err) => {
            let message = err.to_string();
            (0..n)
                .map(|_| Err(ReplicaError::Storage(message.clone()).into()))
                .collect()
        }
    }
}

fn unexpected(what: &'static str) -> ForwardError {
    ForwardError::Unavailable(ProtoError::Unexpected(what))
}

/// The metric outcome of a forwarded request.
fn outcome(result: &Answer) -> &'static str {
    match result {
        Ok(Response::Error(err)) => err.code.as_str(),
        Ok(_) => "accepted",
        Err(_) => "unavailable",
    }
}

/// The `unavailable` refusal in `response`, if any: the coordinator could
/// not decide (part of) it now, and the whole request is sent again.
fn unavailable(response: &Response) -> Option<WireError> {
    let refused = |r: &Response| match r {
        Response::Error(err) if err.code == ErrorCode::Unavailable => Some(err.clone()),
        _ => None,
    };
    match response {
        Response::Writes(answers) => answers.iter().find_map(refused),
        other => refused(other),
    }
}
