//! The write pipeline: per-key serialization, idempotency, group commit.
//!
//! Every write and every strong read passes through two stages, each on its
//! own thread:
//!
//! 1. The **sequencer** takes every job queued so far as one group, decides
//!    each in arrival order with [`shelfsync_core::apply`] against the state
//!    left by the jobs before it (in the group or in earlier groups), numbers
//!    accepted writes in the change log and commits the group to the ledger
//!    as one atomic batch. Deciding in one place is what serializes writes to
//!    a key; deciding a group at a time is what lets writes to different keys
//!    (and to the same key) share a flush.
//! 2. The **flusher** takes every committed group queued so far, makes them
//!    durable with one [`Ledger::flush`], raises the durable head and only
//!    then answers the jobs. While it flushes, the sequencer decides the next
//!    group.
//!
//! So a write is acknowledged only once it is durable, and a strong read is
//! answered only once everything it could have seen is durable. If a flush
//! fails, the durable state is unknown: the pipeline stops, answers every job
//! with `unavailable`, and the coordinator must be restarted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shelfsync_core::{ItemKey, KeyState, apply};
use shelfsync_proto::{Change, ErrorCode, ReadReply, Response, WireError, WriteAck, WriteRequest};
use tokio::sync::{mpsc, oneshot, watch};

use crate::digests::Digests;
use crate::ledger::{
    CommitBatch, CommittedWrite, IdempotencyRecord, ItemRecord, Ledger, LedgerError, Outcome,
};
use crate::metrics::Metrics;
use shelfsync_proto::time::now_ms;

/// Most jobs decided in one group.
const MAX_GROUP: usize = 4096;
/// Jobs that may wait for the sequencer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;

/// A unit of work for the pipeline.
enum Job {
    Write {
        store: String,
        request: WriteRequest,
        queued: Instant,
        reply: oneshot::Sender<Response>,
    },
    Read {
        key: ItemKey,
        reply: oneshot::Sender<Response>,
    },
    /// Finish the jobs queued before this one, then stop both threads.
    Stop,
}

/// A decided group on its way to the flusher.
struct Decided {
    replies: Vec<(oneshot::Sender<Response>, Response)>,
    head: u64,
}

/// Handle to the pipeline; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    durable: watch::Receiver<u64>,
    failed: Arc<AtomicBool>,
    threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// How long an idempotency record answers a retry.
    pub idempotency_ttl: Duration,
    /// Per-location digests to keep in step with accepted writes.
    pub digests: Arc<Digests>,
}

impl Pipeline {
    /// Starts the sequencer and flusher threads over `ledger`.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LedgerError> {
        let head = ledger.head()?;
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_DEPTH);
        let (decided_tx, decided_rx) = std::sync::mpsc::channel();
        let (durable_tx, durable_rx) = watch::channel(head);
        let failed = Arc::new(AtomicBool::new(false));

        let sequencer = Sequencer {
            ledger: ledger.clone(),
            ttl_ms: u64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
            head,
            metrics: metrics.clone(),
            failed: failed.clone(),
            digests: config.digests.clone(),
        };
        let sequencer = std::thread::Builder::new()
            .name("sequencer".into())
            .spawn(move || sequencer.run(jobs_rx, decided_tx))
            .map_err(|e| LedgerError::Storage(format!("cannot start sequencer: {e}")))?;
        let flusher_failed = failed.clone();
        let flusher = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || flush_loop(ledger, decided_rx, durable_tx, flusher_failed, metrics))
            .map_err(|e| LedgerError::Storage(format!("cannot start flusher: {e}")))?;

        Ok(Pipeline {
            jobs: jobs_tx,
            durable: durable_rx,
            failed,
            threads: Arc::new(std::sync::Mutex::new(vec![sequencer, flusher])),
        })
    }

    /// Decides a write from `store` and answers once it is durable.
    pub async fn write(&self, store: &str, request: WriteRequest) -> Response {
        let (reply, rx) = oneshot::channel();
        let job = Job::Write {
            store: store.to_string(),
            request,
            queued: Instant::now(),
            reply,
        };
        self.submit(job, rx).await
    }

    /// Reads one key after everything decided before it is durable.
    pub async fn read(&self, key: ItemKey) -> Response {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Read { key, reply }, rx).await
    }

    async fn submit(&self, job: Job, rx: oneshot::Receiver<Response>) -> Response {
        if self.failed.load(Ordering::Acquire) || self.jobs.send(job).await.is_err() {
            return unavailable();
        }
        rx.await.unwrap_or_else(|_| unavailable())
    }

    /// Answers every job queued so far, then stops the pipeline threads and
    /// waits for them. Later jobs are answered `unavailable`.
    pub async fn stop(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// The highest sequence number known durable.
    pub fn durable_head(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until `seq` is durable (returns at once if it already is).
    pub async fn wait_durable(&self, seq: u64) -> bool {
        let mut durable = self.durable.clone();
        durable.wait_for(|head| *head >= seq).await.is_ok()
    }

    /// Whether the pipeline stopped after a storage failure.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

fn unavailable() -> Response {
    Response::Error(WireError::new(
        ErrorCode::Unavailable,
        "the coordinator's storage failed; it must be restarted",
    ))
}

struct Sequencer {
    ledger: Arc<dyn Ledger>,
    ttl_ms: u64,
    head: u64,
    metrics: Arc<Metrics>,
    failed: Arc<AtomicBool>,
    digests: Arc<Digests>,
}

/// State decided in the current group but not yet committed.
#[derive(Default)]
struct Group {
    /// Each key written in this group: its state and the seq that made it.
    keys: HashMap<ItemKey, (KeyState, Option<u64>)>,
    idempotency: HashMap<(String, String), IdempotencyRecord>,
    batch: CommitBatch,
    replies: Vec<(oneshot::Sender<Response>, Response)>,
}

impl Sequencer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>, decided: std::sync::mpsc::Sender<Decided>) {
        while let Some(first) = jobs.blocking_recv() {
            if self.failed.load(Ordering::Acquire) {
                // The flusher failed: nothing decided now could become durable.
                return;
            }
            let mut group = Group::default();
            let mut job = Some(first);
            let mut stop = false;
            while let Some(next) = job {
                if matches!(next, Job::Stop) {
                    stop = true;
                    break;
                }
                if let Err(err) = self.decide(next, &mut group) {
                    self.fail(&err);
                    return;
                }
                job = if group.replies.len() < MAX_GROUP {
                    jobs.try_recv().ok()
                } else {
                    None
                };
            }
            group.batch.head = self.head;
            if let Err(err) = self.ledger.commit(&group.batch) {
                self.fail(&err);
                return;
            }
            self.metrics
                .observe_group(group.replies.len(), group.batch.writes.len());
            let done = Decided {
                replies: group.replies,
                head: self.head,
            };
            if decided.send(done).is_err() || stop {
                return;
            }
        }
    }

    fn fail(&self, err: &LedgerError) {
        tracing::error!(error = %err, "ledger commit failed; the pipeline stops");
        self.failed.store(true, Ordering::Release);
    }

    /// The state of `key` as decided so far, and the seq of the change
    /// that produced it.
    fn state(&self, group: &Group, key: &ItemKey) -> Result<(KeyState, Option<u64>), LedgerError> {
        if let Some(known) = group.keys.get(key) {
            return Ok(known.clone());
        }
        Ok(self
            .ledger
            .load(key)?
            .map_or((KeyState::Absent, None), |record: ItemRecord| {
                (record.state, Some(record.seq))
            }))
    }

    fn decide(&mut self, job: Job, group: &mut Group) -> Result<(), LedgerError> {
        match job {
            Job::Read { key, reply } => {
                let response = match self.state(group, &key)?.0 {
                    KeyState::Live(item) => Response::Read(ReadReply {
                        item,
                        head: self.head,
                    }),
                    _ => Response::Error(WireError::new(
                        ErrorCode::NotFound,
                        format!("item {key} does not exist"),
                    )),
                };
                group.replies.push((reply, response));
            }
            Job::Write {
                store,
                request,
                queued,
                reply,
            } => {
                self.metrics.observe_key_wait(queued.elapsed());
                let response = self.decide_write(&store, request, group)?;
                group.replies.push((reply, response));
            }
            Job::Stop => {}
        }
        Ok(())
    }

    fn decide_write(
        &mut self,
        store: &str,
        request: WriteRequest,
        group: &mut Group,
    ) -> Result<Response, LedgerError> {
        let now = now_ms();
        let op_kind = request.op.kind();
        let idem = (store.to_string(), request.idempotency_key.clone());
        let recorded = match group.idempotency.get(&idem) {
            Some(record) => Some(record.clone()),
            None => self.ledger.idempotency(store, &request.idempotency_key)?,
        }
        .filter(|record| record.at_ms.saturating_add(self.ttl_ms) > now);
        if let Some(record) = recorded {
            if !record.same_request(&request.key, &request.op, request.expected_version) {
                self.metrics.count_write(op_kind, "idempotency_key_reused");
                return Ok(Response::Error(WireError::new(
                    ErrorCode::IdempotencyKeyReused,
                    format!(
                        "idempotency key {:?} was already used for another request",
                        request.idempotency_key
                    ),
                )));
            }
            self.metrics.count_write(op_kind, "replayed");
            return Ok(match record.outcome {
                Outcome::Accepted { seq, state } => Response::Write(WriteAck {
                    seq,
                    state,
                    replayed: true,
                }),
                Outcome::Rejected(err) => Response::Error(err),
            });
        }

        let (state, prior_seq) = self.state(group, &request.key)?;
        let outcome = match apply(&request.key, &state, &request.op, request.expected_version) {
            Ok(next) => {
                self.head += 1;
                let change = Change {
                    seq: self.head,
                    key: request.key.clone(),
                    state: next.clone(),
                    op: request.op.clone(),
                    store: store.to_string(),
                    idempotency_key: request.idempotency_key.clone(),
                    at_ms: now,
                };
                group.batch.writes.push(CommittedWrite {
                    change,
                    prior_version: state.version(),
                    prior_seq,
                });
                group
                    .keys
                    .insert(request.key.clone(), (next.clone(), Some(self.head)));
                self.digests
                    .apply(&request.key.location, self.head, &state, &next);
                self.metrics.count_write(op_kind, "accepted");
                Outcome::Accepted {
                    seq: self.head,
                    state: next,
                }
            }
            Err(rejection) => {
                let err = WireError::rejected(&rejection, state.item());
                if err.code == ErrorCode::VersionMismatch {
                    self.metrics.count_conflict(store);
                } else {
                    self.metrics.count_rejection(store);
                }
                self.metrics.count_write(op_kind, err.code.as_str());
                Outcome::Rejected(err)
            }
        };
        let record = IdempotencyRecord {
            key: request.key,
            op: request.op,
            expected_version: request.expected_version,
            outcome: outcome.clone(),
            at_ms: now,
        };
        group
            .batch
            .idempotency
            .push((idem.0.clone(), idem.1.clone(), record.clone()));
        group.idempotency.insert(idem, record);
        Ok(match outcome {
            Outcome::Accepted { seq, state } => Response::Write(WriteAck {
                seq,
                state,
                replayed: false,
            }),
            Outcome::Rejected(err) => Response::Error(err),
        })
    }
}

fn flush_loop(
    ledger: Arc<dyn Ledger>,
    decided: std::sync::mpsc::Receiver<Decided>,
    durable: watch::Sender<u64>,
    failed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = decided.recv() {
        let mut groups = vec![first];
        groups.extend(decided.try_iter());
        let started = Instant::now();
        if let Err(err) = ledger.flush() {
            tracing::error!(error = %err, "ledger flush failed; the pipeline stops");
            failed.store(true, Ordering::Release);
            for group in groups {
                for (reply, _) in group.replies {
                    let _ = reply.send(unavailable());
                }
            }
            // Refuse everything still in flight: nothing after this is durable.
            for group in decided.iter() {
                for (reply, _) in group.replies {
                    let _ = reply.send(unavailable());
                }
            }
            return;
        }
        metrics.observe_flush(started.elapsed());
        let head = groups.iter().map(|g| g.head).max().unwrap_or(0);
        durable.send_if_modified(|current| {
            let raised = head > *current;
            if raised {
                *current = head;
            }
            raised
        });
        metrics.set_head(head);
        for group in groups {
            for (reply, response) in group.replies {
                let _ = reply.send(response);
            }
        }
    }
}
