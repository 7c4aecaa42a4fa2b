//! The write pipeline: one thread, the sequencer's, that every write and
//! strong read passes through.
//!
//! It takes every job queued so far as one group; fetches what deciding it
//! reads (item states from its cache or the ledger, idempotency records and
//! the changes they point to); decides it with [`shelfsync_sequencer::decide`];
//! commits it with one [`Ledger::commit`], durable on return; then raises
//! the head readers see and answers the jobs. Jobs that arrive during a
//! commit form the next group, so many writes share one `fdatasync`.
//!
//! If a commit fails, what it held is not known to be durable: the pipeline
//! stops, answers every job `unavailable`, and [`Pipeline::failed`]
//! resolves, so the coordinator exits for its supervisor to restart it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shelfsync_core::{ItemKey, KeyState};
use shelfsync_ledger::{Ledger, LedgerError};
use shelfsync_proto::{
    BatchAck, BatchRequest, ErrorCode, ReadReply, Response, WireError, WriteAck, WriteRequest,
};
use shelfsync_sequencer::{Answer, Command, Request, StepCommand, View};
use tokio::sync::{mpsc, oneshot, watch};

use self::thread::Sequencer;
use crate::digests::Digests;
use crate::metrics::Metrics;
use crate::wake::{Subscribers, TransferMarks};

/// Most jobs decided in one group.
const MAX_GROUP: usize = 4096;
/// Jobs that may wait for the sequencer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Item states the sequencer keeps in memory (about 250 bytes each); past
/// this the cache is emptied and refills from the ledger.
const ITEM_CACHE_ENTRIES: usize = 256 * 1024;
/// The sequencer's nice value: the thread every acknowledgement waits for
/// gets a contended CPU first. Raising a priority needs root,
/// `CAP_SYS_NICE` or an `RLIMIT_NICE` of at least 25 (the systemd unit's
/// `LimitNICE=-5`); without it the sequencer runs at the default priority.
pub const ACK_PATH_NICE: i32 = -5;
/// The nice value of work off the acknowledgement path (the collector).
pub const BACKGROUND_NICE: i32 = 10;
/// How long a group gathers before it is decided when the group before had
/// more than one job: under load more writers share one sync, and a lone
/// writer does not wait.
pub const GROUP_LINGER: Duration = Duration::from_micros(200);

/// A unit of work for the pipeline.
enum Job {
    Work {
        request: Request,
        queued: Instant,
        reply: oneshot::Sender<Answer>,
    },
    /// Look for locks and holds past their time (sent every [`EXPIRY_TICK`]).
    Tick,
    /// Finish the jobs queued before this one, then stop.
    Stop,
}

/// How often the sequencer looks for locks past their lease and holds past
/// their expiry: each ends within this (plus a group) of its deadline.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// Most lock expiries, and most hold expiries, added to one group.
const MAX_EXPIRIES: usize = 256;

/// What a commit tells beyond the head.
#[derive(Default)]
struct Wake {
    subscribers: Subscribers,
    transfers: TransferMarks,
}

/// Handle to the pipeline; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    wake: Arc<Wake>,
    /// The head of the committed (durable, readable) change log.
    head: watch::Receiver<u64>,
    failed: Arc<Failure>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Pipeline {
    /// Starts the sequencer thread over `ledger`. Idempotency records answer
    /// retries for `idempotency_ttl`; `digests` follow accepted writes.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        digests: Arc<Digests>,
        metrics: Arc<Metrics>,
        idempotency_ttl: Duration,
    ) -> Result<Self, LedgerError> {
        let head = ledger.head()?;
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_DEPTH);
        let (head_tx, head_rx) = watch::channel(head);
        let failed = Arc::new(Failure::default());
        let wake = Arc::new(Wake::default());
        let sequencer = Sequencer {
            wake: wake.clone(),
            ledger,
            ttl_ms: u64::try_from(idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
            head,
            head_tx,
            metrics,
            failed: failed.clone(),
            digests,
            view: View::default(),
        };
        let thread = std::thread::Builder::new()
            .name("sequencer".into())
            .spawn(move || sequencer.run(jobs_rx))
            .map_err(|e| LedgerError::Storage(format!("cannot start the sequencer: {e}")))?;
        // The deadlines are in the ledger; this only says when to look, so a
        // restart loses nothing. It ends when the sequencer has.
        let ticks = jobs_tx.clone();
        std::thread::Builder::new()
            .name("expiry-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EXPIRY_TICK);
                    if let Err(mpsc::error::TrySendError::Closed(_)) = ticks.try_send(Job::Tick) {
                        return;
                    }
                }
            })
            .map_err(|e| LedgerError::Storage(format!("cannot start the expiry tick: {e}")))?;
        Ok(Pipeline {
            jobs: jobs_tx,
            wake,
            head: head_rx,
            failed,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Decides a write from `store` and answers once it is durable.
    pub async fn write(&self, store: &str, request: WriteRequest) -> Response {
        write_response(
            self.submit(Request::Write(Command::write(store, request)))
                .await,
        )
    }

    /// Decides several writes from `store`, each on its own, and answers
    /// each once it is durable. All are queued before any is waited for,
    /// so they share groups.
    pub async fn write_many(&self, store: &str, requests: Vec<WriteRequest>) -> Vec<Response> {
        let mut pending = Vec::with_capacity(requests.len());
        for request in requests {
            let request = Request::Write(Command::write(store, request));
            pending.push(self.enqueue(request).await);
        }
        let mut responses = Vec::with_capacity(pending.len());
        for answer in pending {
            responses.push(write_response(answer.await));
        }
        responses
    }

    /// Decides a write of several lines as one commit.
    pub async fn commit(&self, command: Command) -> Answer {
        self.submit(Request::Write(command)).await
    }

    /// Decides a step of a hold or a transfer as one commit and answers
    /// once it is durable.
    pub async fn step(&self, command: StepCommand) -> Answer {
        self.submit(Request::Step(command)).await
    }

    /// Decides a batch from `store` as one commit, all lines or none, and
    /// answers once it is durable.
    pub async fn batch(&self, store: &str, batch: BatchRequest) -> Response {
        match self.commit(Command::batch(store, batch)).await {
            Answer::Accepted { changes, replayed } => Response::Batch(BatchAck {
                seq: changes.first().map_or(0, |(seq, _)| *seq),
                states: changes.into_iter().map(|(_, state)| state).collect(),
                replayed,
            }),
            Answer::Refused(err) => Response::Error(err),
            _ => Response::Error(unavailable()),
        }
    }

    /// Reads one key after everything decided before it is durable.
    pub async fn read(&self, key: ItemKey) -> Response {
        match self.submit(Request::Read(key.clone())).await {
            Answer::Read {
                state: KeyState::Live(item),
                head,
            } => Response::Read(ReadReply { item, head }),
            Answer::Read { .. } => Response::Error(WireError::new(
                ErrorCode::NotFound,
                format!("item {key} does not exist"),
            )),
            Answer::Refused(err) => Response::Error(err),
            _ => Response::Error(unavailable()),
        }
    }

    async fn submit(&self, request: Request) -> Answer {
        self.enqueue(request).await.await
    }

    /// Queues `request`; the future it returns resolves to its answer.
    async fn enqueue(&self, request: Request) -> impl Future<Output = Answer> + use<> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Work {
            request,
            queued: Instant::now(),
            reply,
        };
        let queued = !self.failed.is_set() && self.jobs.send(job).await.is_ok();
        async move {
            if !queued {
                return Answer::Refused(unavailable());
            }
            rx.await.unwrap_or_else(|_| Answer::Refused(unavailable()))
        }
    }

    /// Answers every job queued so far, then stops the sequencer and waits
    /// for it. Later jobs are answered `unavailable`.
    pub async fn stop(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// When a transfer from or to one of `locations` last changed (ms on
    /// the coordinator's clock; the start of this process at the earliest).
    pub fn transfers_at(&self, locations: &[String]) -> u64 {
        self.wake.transfers.latest(locations)
    }

    /// A flag raised after every commit that touches one of `locations`,
    /// once the commit is durable and readable.
    pub fn subscribe(&self, locations: &[String]) -> Arc<tokio::sync::Notify> {
        self.wake.subscribers.subscribe(locations)
    }

    /// The head a reader reads up to: every write acknowledged so far.
    pub fn read_head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Waits until `seq` is committed (returns at once if it is); false if
    /// the pipeline stopped first.
    pub async fn wait_durable(&self, seq: u64) -> bool {
        let mut head = self.head.clone();
        head.wait_for(|head| *head >= seq).await.is_ok()
    }

    /// Whether the pipeline stopped after a storage failure.
    pub fn has_failed(&self) -> bool {
        self.failed.is_set()
    }

    /// Resolves, with the failure's message, once the pipeline has stopped
    /// after a storage failure; pending as long as it has not.
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let failure = self.failed.clone();
        let mut raised = failure.raised.subscribe();
        async move {
            if raised.wait_for(|raised| *raised).await.is_err() {
                // Cannot happen while `failure` holds the sender; if it
                // did, there would be no failure to report.
                std::future::pending::<()>().await;
            }
            failure.cause.get().cloned().unwrap_or_default()
        }
    }
}

/// Whether the pipeline has stopped after a storage failure, and why.
#[derive(Default)]
struct Failure {
    /// The first failure's message; read before every job (one load, no
    /// lock).
    cause: OnceLock<String>,
    /// Turns true once `cause` is set, for [`Pipeline::failed`].
    raised: watch::Sender<bool>,
}

impl Failure {
    fn set(&self, err: &LedgerError) {
        if self.cause.set(err.to_string()).is_ok() {
            self.raised.send_replace(true);
        }
    }

    fn is_set(&self) -> bool {
        self.cause.get().is_some()
    }
}

/// The wire answer to a single-key write.
fn write_response(answer: Answer) -> Response {
    match answer {
        Answer::Accepted {
            mut changes,
            replayed,
        } => match changes.pop() {
            Some((seq, state)) => Response::Write(WriteAck {
                seq,
                state,
                replayed,
            }),
            None => Response::Error(unavailable()),
        },
        Answer::Refused(err) => Response::Error(err),
        _ => Response::Error(unavailable()),
    }
}

fn unavailable() -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        "the coordinator's storage failed or it is stopping; retry once it is back",
    )
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

mod thread;
