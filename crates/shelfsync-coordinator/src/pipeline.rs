//! The write pipeline: per-key serialization, idempotency, group commit.
//!
//! Every write and every strong read passes through two threads:
//!
//! 1. The **sequencer** takes every job queued so far as one group, decides
//!    each in arrival order with [`shelfsync_core::apply`] against the state
//!    left by the jobs before it and numbers accepted writes in the change
//!    log. Deciding in one place is what serializes writes to a key;
//!    deciding a group at a time is what lets writes to different keys (and
//!    to the same key) share one sync. It then appends the group to the
//!    write-ahead log ([`crate::wal`]) with one `fdatasync` (its logging
//!    step) and answers its jobs: a write is acknowledged once it is
//!    durable. Jobs that arrive during the sync form the next group. State
//!    decided but not yet in the ledger stays in the sequencer's overlay,
//!    which it reads before the ledger, until the applier reports the group
//!    applied.
//! 2. The **applier** commits the logged groups to the ledger as one atomic
//!    batch (waiting up to [`APPLY_LINGER`] for more to join it), then
//!    raises the head that readers (sync, snapshots, history) see, so they
//!    only ever read durable changes. Every [`LEDGER_FLUSH_EVERY`] it asks
//!    the ledger for a checkpoint ([`Ledger::checkpoint`]); the log keeps
//!    every group until a checkpoint reports it durable in the ledger. It
//!    runs at a lower CPU priority ([`APPLIER_NICE`]) than the threads that
//!    answer writes; the sequencer waits for it only once [`LOGGED_DEPTH`]
//!    groups are queued.
//!
//! Logging on the sequencer's own thread, rather than on a third one that
//! syncs group n while group n + 1 is decided, costs a write no time (it
//! waits for the sync under way either way) and saves a thread hand-off
//! per group (docs/performance.md). The sequencer asks for a higher CPU
//! priority ([`ACK_PATH_NICE`]), granted where the process may raise one.
//!
//! If the log cannot be written or synced, nothing decided since is
//! durable: the pipeline stops and answers every job with `unavailable`.
//! If the ledger fails, the writes acknowledged are safe in the log; the
//! pipeline stops just the same. Either way [`Pipeline::failed`] resolves,
//! the coordinator's run ends with an error and the process exits for its
//! supervisor to restart it; the restart puts every acknowledged write into
//! the ledger ([`crate::wal::recover`]). The pipeline does not go on after
//! a failed `fdatasync`: the kernel may have dropped the pages it could not
//! write, so what the log holds is no longer known until it is read again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shelfsync_core::{ItemKey, KeyState, apply};
use shelfsync_proto::{Change, ErrorCode, ReadReply, Response, WireError, WriteAck, WriteRequest};
use tokio::sync::{mpsc, oneshot, watch};

use crate::FastMap;
use crate::digests::Digests;
use crate::failpoints;
use crate::ledger::{
    CommitBatch, CommittedWrite, IdempotencyRecord, ItemRecord, Ledger, LedgerError, Outcome,
};
use crate::metrics::Metrics;
use crate::wal::{Recovered, Wal};
use shelfsync_proto::time::now_ms;

/// Most jobs decided in one group.
const MAX_GROUP: usize = 4096;
/// Jobs that may wait for the sequencer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Item states the sequencer keeps in memory (about 250 bytes each).
const ITEM_CACHE_ENTRIES: usize = 256 * 1024;
/// Logged groups that may wait for the applier before the sequencer waits for
/// it: a bound on what an applier that falls behind holds in memory.
const LOGGED_DEPTH: usize = 4096;
/// The applier thread's nice value. It is off the acknowledgement path, so
/// when the CPUs are contended the threads that answer writes should win
/// them; an applier that falls behind commits larger batches, which cost
/// less per write (docs/performance.md).
pub const APPLIER_NICE: i32 = 10;
/// The nice value the sequencer asks for: above the default, so that the
/// thread every acknowledgement waits for gets a contended CPU first.
/// Raising a priority needs a privilege (root, `CAP_SYS_NICE`, or an
/// `RLIMIT_NICE` of at least 25, which the systemd unit grants with
/// `LimitNICE=-5`); without it the sequencer runs at the default priority.
pub const ACK_PATH_NICE: i32 = -5;
/// How long the sequencer lets a group gather before deciding it, when the
/// group before had more than one job: under load, more writers then share
/// one sync, and each `fdatasync` costs CPU in the kernel as well as time.
/// A lone writer (the group before was a single job) does not wait.
pub const GROUP_LINGER: Duration = Duration::from_micros(200);
/// How long the applier waits for more logged groups to commit with the
/// first one. Off the acknowledgement path: at 10,000 writes/s it saved
/// about 15 % of the coordinator's CPU per write, with the p99 unchanged
/// (docs/performance.md); readers see a write up to this much later.
pub const APPLY_LINGER: Duration = Duration::from_millis(3);
/// Most writes the applier gathers into one ledger commit.
const APPLY_BATCH_WRITES: usize = 32 * 1024;
/// How often the applier asks the ledger for a checkpoint, so that the log
/// can drop what it holds.
pub const LEDGER_FLUSH_EVERY: Duration = Duration::from_millis(50);

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

/// Answers owed to the jobs of decided groups.
type Replies = Vec<(oneshot::Sender<Response>, Response)>;

/// A decided group on its way to the log.
struct Decided {
    /// The group's number (they count up from 1).
    number: u64,
    batch: CommitBatch,
    replies: Replies,
}

/// Logged groups on their way to the applier.
struct Logged {
    /// The number of the last group.
    number: u64,
    batch: CommitBatch,
}

/// Handle to the pipeline; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    /// The head acknowledged writes have reached (logged, so durable).
    logged: watch::Receiver<u64>,
    /// The head the ledger holds: what readers may read.
    durable: watch::Receiver<u64>,
    failed: Failure,
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
    /// Starts the sequencer and applier threads over `ledger` and
    /// the log, which [`crate::wal::recover`] has brought the ledger up to.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        log: Recovered,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LedgerError> {
        let Recovered { wal, last_group } = log;
        let head = ledger.head()?;
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_DEPTH);
        let (logged_tx, logged_rx) = std::sync::mpsc::sync_channel(LOGGED_DEPTH);
        let (durable_tx, durable_rx) = watch::channel(head);
        let (logged_head_tx, logged_head_rx) = watch::channel(head);
        let failed = Failure::default();
        let applied_group = Arc::new(AtomicU64::new(last_group));
        let flushed_group = Arc::new(AtomicU64::new(last_group));

        let sequencer = Sequencer {
            ledger: ledger.clone(),
            ttl_ms: u64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
            head,
            metrics: metrics.clone(),
            failed: failed.clone(),
            digests: config.digests.clone(),
            overlay: Overlay::default(),
            group_number: last_group,
            applied_group: applied_group.clone(),
        };
        let logger = Logger {
            wal,
            flushed_group: flushed_group.clone(),
            failed: failed.clone(),
            metrics,
            logged_head: logged_head_tx,
        };
        let sequencer = spawn("sequencer", move || {
            sequencer.run(jobs_rx, logger, logged_tx);
        })?;
        let applier = Applier {
            ledger,
            applied_group,
            flushed_group,
            failed: failed.clone(),
            durable: durable_tx,
        };
        let applier = spawn("applier", move || applier.run(logged_rx))?;
        // sled writes its log on a pool of its own threads, which the
        // applier's commits and flushes wait for: off the acknowledgement
        // path like the applier, and at its priority.
        renice_threads(LEDGER_IO_THREADS, APPLIER_NICE);

        Ok(Pipeline {
            jobs: jobs_tx,
            logged: logged_head_rx,
            durable: durable_rx,
            failed,
            threads: Arc::new(std::sync::Mutex::new(vec![sequencer, applier])),
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
        if self.failed.is_set() || self.jobs.send(job).await.is_err() {
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

    /// The head a reader should read up to: every write acknowledged so far,
    /// once the ledger holds it (a moment after its acknowledgement). So a
    /// store that syncs after a write was answered sees that write.
    pub async fn read_head(&self) -> u64 {
        let acknowledged = *self.logged.borrow();
        self.wait_durable(acknowledged).await;
        self.durable_head()
    }

    /// The highest sequence number acknowledged (durable in the log; the
    /// ledger may hold it a moment later).
    pub fn acknowledged_head(&self) -> u64 {
        *self.logged.borrow()
    }

    /// The highest sequence number durable and readable from the ledger.
    fn durable_head(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until `seq` is durable (returns at once if it already is).
    pub async fn wait_durable(&self, seq: u64) -> bool {
        let mut durable = self.durable.clone();
        durable.wait_for(|head| *head >= seq).await.is_ok()
    }

    /// Whether the pipeline stopped after a storage failure.
    pub fn has_failed(&self) -> bool {
        self.failed.is_set()
    }

    /// Resolves, with the failure's message, once the pipeline has stopped
    /// after a storage failure; pending as long as it has not.
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let mut cause = self.failed.cause.subscribe();
        async move {
            // Taken out of the watch at once: its guard must not live
            // across an await.
            let cause = cause
                .wait_for(Option::is_some)
                .await
                .map(|cause| cause.clone().unwrap_or_default());
            match cause {
                Ok(cause) => cause,
                // The pipeline is gone without a failure: none to report.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Whether the pipeline has stopped after a storage failure, and why: set
/// once, by whichever thread meets a failure first.
#[derive(Clone)]
struct Failure {
    /// Read before every job: one load, no lock.
    flag: Arc<AtomicBool>,
    /// The first failure's message, for [`Pipeline::failed`].
    cause: Arc<watch::Sender<Option<String>>>,
}

impl Default for Failure {
    fn default() -> Self {
        Failure {
            flag: Arc::new(AtomicBool::new(false)),
            cause: Arc::new(watch::channel(None).0),
        }
    }
}

impl Failure {
    /// Records `err` (unless a failure was recorded before) and stops the
    /// pipeline.
    fn set(&self, err: &LedgerError) {
        self.cause.send_if_modified(|cause| {
            let first = cause.is_none();
            if first {
                *cause = Some(err.to_string());
            }
            first
        });
        self.flag.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

fn unavailable() -> Response {
    Response::Error(WireError::new(
        ErrorCode::Unavailable,
        "the coordinator's storage failed or it is stopping; retry once it is back",
    ))
}

fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, LedgerError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|e| LedgerError::Storage(format!("cannot start the {name} thread: {e}")))
}

struct Sequencer {
    ledger: Arc<dyn Ledger>,
    ttl_ms: u64,
    head: u64,
    metrics: Arc<Metrics>,
    failed: Failure,
    digests: Arc<Digests>,
    overlay: Overlay,
    /// The number of the group decided last.
    group_number: u64,
    /// The number of the group the applier put into the ledger last.
    applied_group: Arc<AtomicU64>,
}

/// The sequencer's memory of state, read before the ledger.
///
/// - `items`: the newest state of each key used lately, with the seq of its
///   change and the group that decided it (0 when it was read from the
///   ledger). An entry of a group the applier has not reached yet is the
///   only copy of that state outside the log and stays; the others are a
///   cache, dropped together when the map passes [`ITEM_CACHE_ENTRIES`].
/// - `idempotency`: the newest record of each (store, key) decided but not
///   yet in the ledger; it leaves once its group is applied and no later
///   group has replaced it.
///
/// Reading here first is always right: it holds the newest decision.
#[derive(Default)]
struct Overlay {
    items: FastMap<ItemKey, Cached>,
    idempotency: FastMap<(String, String), (IdempotencyRecord, u64)>,
    /// Per decided group not yet pruned: its number and its idempotency keys.
    groups: VecDeque<(u64, Vec<(String, String)>)>,
}

impl Overlay {
    /// Forgets what the ledger now holds: idempotency records of groups up
    /// to `applied` (unless a later group replaced them), and, once the item
    /// cache is full, every item entry the ledger has.
    fn prune(&mut self, applied: u64) {
        while let Some((number, _)) = self.groups.front() {
            if *number > applied {
                break;
            }
            let Some((number, idempotency)) = self.groups.pop_front() else {
                break;
            };
            for idem in idempotency {
                if self
                    .idempotency
                    .get(&idem)
                    .is_some_and(|entry| entry.1 == number)
                {
                    self.idempotency.remove(&idem);
                }
            }
        }
        if self.items.len() > ITEM_CACHE_ENTRIES {
            self.items.retain(|_, (_, _, group)| *group > applied);
        }
    }
}

/// A cached item: its state, the seq of the change that produced it, and
/// the group that decided it (0 when read from the ledger).
type Cached = (KeyState, Option<u64>, u64);

/// The entry of `key` in the item cache, read from the ledger first when
/// the cache has none. Not in memory means nothing about the key waits for
/// the applier, so the ledger's state is the newest.
fn cached<'a>(
    items: &'a mut FastMap<ItemKey, Cached>,
    ledger: &dyn Ledger,
    key: &ItemKey,
) -> Result<&'a mut Cached, LedgerError> {
    if !items.contains_key(key) {
        let (state, seq) = ledger
            .load(key)?
            .map_or((KeyState::Absent, None), |record: ItemRecord| {
                (record.state, Some(record.seq))
            });
        items.insert(key.clone(), (state, seq, 0));
    }
    items
        .get_mut(key)
        .ok_or_else(|| LedgerError::Storage(format!("item cache lost {key}")))
}

/// The group being decided.
#[derive(Default)]
struct Group {
    batch: CommitBatch,
    replies: Replies,
    idempotency: Vec<(String, String)>,
}

impl Sequencer {
    fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut logger: Logger,
        logged: std::sync::mpsc::SyncSender<Logged>,
    ) {
        set_nice(ACK_PATH_NICE);
        let mut last_group = 0;
        while let Some(first) = jobs.blocking_recv() {
            if last_group > 1 {
                std::thread::sleep(GROUP_LINGER);
            }
            if self.failed.is_set() {
                // A later stage failed: the pipeline is stopping.
                return;
            }
            self.overlay
                .prune(self.applied_group.load(Ordering::Acquire));
            self.group_number += 1;
            let mut group = Group::default();
            let mut job = Some(first);
            let mut stop = false;
            while let Some(next) = job {
                if matches!(next, Job::Stop) {
                    stop = true;
                    break;
                }
                if let Err(err) = self.decide(next, &mut group) {
                    tracing::error!(error = %err, "ledger read failed; the pipeline stops");
                    self.failed.set(&err);
                    return;
                }
                job = if group.replies.len() < MAX_GROUP {
                    jobs.try_recv().ok()
                } else {
                    None
                };
            }
            group.batch.head = self.head;
            last_group = group.replies.len();
            self.metrics
                .observe_group(group.replies.len(), group.batch.writes.len());
            self.overlay
                .groups
                .push_back((self.group_number, group.idempotency));
            let done = Decided {
                number: self.group_number,
                batch: group.batch,
                replies: group.replies,
            };
            if !logger.log(done, &logged) || stop {
                return;
            }
        }
    }

    /// The state of `key` as decided so far.
    fn state(&mut self, key: &ItemKey) -> Result<KeyState, LedgerError> {
        cached(&mut self.overlay.items, self.ledger.as_ref(), key).map(|entry| entry.0.clone())
    }

    fn decide(&mut self, job: Job, group: &mut Group) -> Result<(), LedgerError> {
        match job {
            Job::Read { key, reply } => {
                let response = match self.state(&key)? {
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
        let recorded = match self.overlay.idempotency.get(&idem) {
            Some((record, _)) => Some(record.clone()),
            None => self.ledger.idempotency(store, &request.idempotency_key)?,
        }
        .filter(|record| record.at_ms.saturating_add(self.ttl_ms) > now)
        // A deliberate bug for the fault suite: a retry is decided anew.
        .filter(|_| !failpoints::triggered(failpoints::SKIP_IDEMPOTENCY_LOOKUP));
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

        // Decided against the cached entry in place: no copy of the state
        // to decide on, and no copy of the key to store the new one.
        let entry = cached(&mut self.overlay.items, self.ledger.as_ref(), &request.key)?;
        let outcome = match apply(
            &request.key,
            &entry.0,
            &request.op,
            request.expected_version,
        ) {
            Ok(next) => {
                self.head += 1;
                self.digests
                    .apply(&request.key.location, self.head, &entry.0, &next);
                let prior_version = entry.0.version();
                let prior_seq = entry.1;
                *entry = (next.clone(), Some(self.head), self.group_number);
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
                    prior_version,
                    prior_seq,
                });
                self.metrics.count_write(op_kind, "accepted");
                Outcome::Accepted {
                    seq: self.head,
                    state: next,
                }
            }
            Err(rejection) => {
                let err = WireError::rejected(&rejection, entry.0.item());
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
        group.idempotency.push(idem.clone());
        self.overlay
            .idempotency
            .insert(idem, (record, self.group_number));
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

/// The sequencer's logging step: appends a decided group to the
/// write-ahead log, answers its jobs once it is synced, and passes it on to
/// the applier.
struct Logger {
    wal: Wal,
    /// The last group the ledger holds durably (the applier's flush).
    flushed_group: Arc<AtomicU64>,
    failed: Failure,
    metrics: Arc<Metrics>,
    /// Raised once a group is logged: the head acknowledged writes reached.
    logged_head: watch::Sender<u64>,
}

impl Logger {
    /// Appends `group` to the log with one `fdatasync`, answers its jobs
    /// and passes it on to the applier. False when the pipeline must stop
    /// (its jobs are then answered `unavailable`).
    fn log(&mut self, group: Decided, logged: &std::sync::mpsc::SyncSender<Logged>) -> bool {
        let started = Instant::now();
        let appended = if self.failed.is_set() {
            Err(LedgerError::Storage("the pipeline has stopped".into()))
        } else if failpoints::triggered(failpoints::ACK_BEFORE_DURABLE) {
            // A deliberate bug for the fault suite: answered before durable.
            Ok(())
        } else {
            self.wal
                .append(std::iter::once((group.number, &group.batch)))
        };
        if let Err(err) = appended {
            tracing::error!(error = %err, "write-ahead log append failed; the pipeline stops");
            self.failed.set(&err);
            for (reply, _) in group.replies {
                let _ = reply.send(unavailable());
            }
            return false;
        }
        // Durable and not yet acknowledged: where the fault suite crashes.
        failpoints::crash_point(failpoints::AFTER_LOG_BEFORE_ACK);
        self.metrics.observe_flush(started.elapsed());
        let Decided {
            number,
            mut batch,
            replies,
        } = group;
        batch.position = number;
        // Raised before anyone hears of these writes, so a reader that
        // comes after an acknowledgement waits for them.
        let head = batch.head;
        raise(&self.logged_head, head);
        self.metrics.set_head(head);
        for (reply, response) in replies {
            let _ = reply.send(response);
        }
        if logged.send(Logged { number, batch }).is_err() {
            return false;
        }
        let flushed = self.flushed_group.load(Ordering::Acquire);
        if let Err(err) = self.wal.maybe_rotate(number + 1, flushed) {
            tracing::error!(error = %err, "write-ahead log rotation failed; the pipeline stops");
            self.failed.set(&err);
            return false;
        }
        true
    }
}

/// The applier: puts logged groups into the ledger, raises the head readers
/// see, and flushes the ledger now and then.
struct Applier {
    ledger: Arc<dyn Ledger>,
    applied_group: Arc<AtomicU64>,
    flushed_group: Arc<AtomicU64>,
    failed: Failure,
    durable: watch::Sender<u64>,
}

impl Applier {
    fn run(self, logged: std::sync::mpsc::Receiver<Logged>) {
        set_nice(APPLIER_NICE);
        let mut last_checkpoint = Instant::now();
        loop {
            // Woken at least every LEDGER_FLUSH_EVERY, so that a quiet
            // ledger still moves its idempotency records into runs.
            match logged.recv_timeout(LEDGER_FLUSH_EVERY) {
                Ok(first) => {
                    if let Err(err) = self.apply(first, &logged) {
                        self.fail(&err);
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_checkpoint.elapsed() >= LEDGER_FLUSH_EVERY {
                match self.checkpoint() {
                    Ok(durable) => self.flushed_group.store(durable, Ordering::Release),
                    Err(err) => {
                        self.fail(&err);
                        return;
                    }
                }
                last_checkpoint = Instant::now();
            }
        }
        // Stopping: leave the ledger durable, so the next start replays nothing.
        if let Err(err) = self.ledger.flush() {
            tracing::warn!(error = %err, "ledger flush at stop failed; the next start replays the log");
        }
    }

    /// Commits `first` and the logged groups that arrive within
    /// [`APPLY_LINGER`] as one batch, then raises the head readers see.
    fn apply(
        &self,
        first: Logged,
        logged: &std::sync::mpsc::Receiver<Logged>,
    ) -> Result<(), LedgerError> {
        let mut number = first.number;
        let mut batch = first.batch;
        // Groups logged within APPLY_LINGER join this batch: a ledger
        // commit costs much less per write in a larger one.
        let deadline = Instant::now() + APPLY_LINGER;
        while batch.writes.len() < APPLY_BATCH_WRITES {
            let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let Ok(more) = logged.recv_timeout(wait) else {
                break;
            };
            number = more.number;
            batch.writes.extend(more.batch.writes);
            batch.idempotency.extend(more.batch.idempotency);
            batch.head = more.batch.head;
            batch.position = more.batch.position;
        }
        let head = batch.head;
        fail::fail_point!(failpoints::LEDGER_COMMIT, |arg| Err(LedgerError::Storage(
            format!(
                "cannot commit to the ledger (injected): {}",
                failpoints::io_error(arg)
            )
        )));
        self.ledger.commit(batch)?;
        self.applied_group.store(number, Ordering::Release);
        raise(&self.durable, head);
        Ok(())
    }

    /// Asks the ledger for a checkpoint (its flush to disk).
    fn checkpoint(&self) -> Result<u64, LedgerError> {
        fail::fail_point!(failpoints::LEDGER_FLUSH, |arg| Err(LedgerError::Storage(
            format!(
                "cannot flush the ledger (injected): {}",
                failpoints::io_error(arg)
            )
        )));
        self.ledger.checkpoint()
    }

    fn fail(&self, err: &LedgerError) {
        // Every acknowledged write is in the log: a restart applies it.
        tracing::error!(error = %err, "ledger commit failed; the pipeline stops");
        self.failed.set(err);
    }
}

/// Raises `watched` to `head`; a lower head changes nothing and wakes no
/// one.
fn raise(watched: &watch::Sender<u64>, head: u64) {
    watched.send_if_modified(|current| {
        let raised = head > *current;
        if raised {
            *current = head;
        }
        raised
    });
}

/// The name that sled gives the threads of its I/O pool (`sled-io-<n>`).
const LEDGER_IO_THREADS: &str = "sled-io-";

/// Sets the nice value of this process's threads whose names start with
/// `prefix`. sled starts seven of them when it opens and more, briefly,
/// under load; those inherit the nice value of the thread that needs them,
/// the applier's. Where Linux's `/proc` is not there to name them, they
/// keep the priority they have.
fn renice_threads(prefix: &str, nice: i32) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let named = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|comm| comm.starts_with(prefix));
        let tid = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let (true, Some(tid)) = (named, tid)
            && let Err(err) = rustix::process::setpriority_process(Some(tid), nice)
        {
            tracing::info!(thread = prefix, nice, error = %err, "thread priority left as it is");
        }
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
/// Where that is refused, the thread runs at the priority it has, which is
/// only slower.
pub(crate) fn set_nice(nice: i32) {
    let thread = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(thread), nice) {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        tracing::info!(thread = %name, nice, error = %err, "thread priority left as it is");
    }
}
