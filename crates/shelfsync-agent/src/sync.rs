//! The sync loop: bootstrap from a snapshot when the replica has no cursor,
//! then pull changes every `sync_interval` (or at once when woken), and
//! report the replica's state to the coordinator after each sync.
//!
//! What to do next is decided by a pure state machine ([`Machine`],
//! `sync/machine.rs`, unit-tested without sockets or clocks); this module
//! only does it: sends the requests, applies the pages, waits.
//!
//! While the coordinator is away the loop retries with exponential backoff
//! and jitter, never waiting longer than the sync interval between tries, and
//! resumes by itself when it is back. Every page is applied in one replica
//! batch, so a crash at any point resumes from the last page applied.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backoff::backoff::Backoff;
use serde::Serialize;
use shelfsync_core::{ItemKey, Transfer, TransferState};
use shelfsync_proto::{
    ChangesRequest, ErrorCode, ProtoError, Request, Response, SOFTWARE_VERSION, SnapshotRequest,
    StoreReport, TransfersRequest, WireError,
};
use tokio::sync::Notify;

use crate::link::Link;
use crate::metrics::{Metrics, gauge_value};
use crate::replica::{Replica, ReplicaError};
use shelfsync_proto::time::now_ms;

mod machine;
mod push;

pub use machine::{Event, Facts, Machine, Next};

/// Items or changes asked for per page.
const PAGE: u32 = 1000;
/// Log bootstrap progress every this many pages.
const PROGRESS_EVERY: u64 = 20;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The coordinator could not be reached or the exchange failed.
    #[error("coordinator unreachable: {0}")]
    Unreachable(#[from] ProtoError),
    /// The coordinator refused a request.
    #[error("coordinator refused: {0}")]
    Refused(WireError),
    /// The local replica failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The coordinator answered something else than asked.
    #[error("unexpected answer from the coordinator")]
    Unexpected,
}

/// What `GET /v1/sync` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// This store.
    pub store_id: String,
    /// Last change applied, `null` before the first complete sync.
    pub cursor: Option<u64>,
    /// Coordinator head seen at the last sync.
    pub head: u64,
    /// Changes between the cursor and that head.
    pub behind: u64,
    /// When the last sync completed (ms since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// Milliseconds since then.
    pub age_ms: Option<u64>,
    /// The last error, cleared by the next successful sync.
    pub last_error: Option<String>,
    /// Whether a bootstrap is in progress.
    pub bootstrapping: bool,
    /// Items in the replica.
    pub item_count: u64,
    /// Digest of the replica's items.
    pub digest: u64,
    /// Whether the coordinator confirmed the digest at the last report.
    pub digest_ok: Option<bool>,
    /// Forwarded writes in flight.
    pub pending_forwards: u64,
    /// States clients were answered with that the sync has not brought yet
    /// (writes wait once there are `MAX_REMEMBERED`).
    pub remembered: u64,
    /// False after an unclean stop until a sync caught the replica up;
    /// local reads wait for it.
    pub caught_up: bool,
    /// Locations held.
    pub locations: Vec<String>,
}

/// Sync state kept between rounds.
#[derive(Debug, Default)]
struct Progress {
    head: u64,
    last_error: Option<String>,
    digest_ok: Option<bool>,
}

/// Drives the replica's sync.
pub struct Syncer {
    store_id: String,
    replica: Arc<Replica>,
    link: Arc<Link>,
    locations: Vec<String>,
    interval: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
    progress: Mutex<Progress>,
    wake: Notify,
    /// Snapshot pages applied in the bootstrap under way, for its progress log.
    bootstrap_pages: AtomicU64,
    /// The snapshot page asked for while the one before it is applied, and
    /// the key it starts after.
    prefetched: Mutex<Option<Prefetch>>,
}

/// A snapshot page on its way.
type Prefetch = (
    Option<ItemKey>,
    tokio::task::JoinHandle<Result<Response, SyncError>>,
);

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("store_id", &self.store_id)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    /// A syncer for `locations` of `store_id`.
    pub fn new(
        store_id: String,
        replica: Arc<Replica>,
        link: Arc<Link>,
        locations: Vec<String>,
        interval: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Syncer {
            store_id,
            replica,
            link,
            locations,
            interval,
            timeout,
            metrics,
            progress: Mutex::new(Progress::default()),
            wake: Notify::new(),
            bootstrap_pages: AtomicU64::new(0),
            prefetched: Mutex::new(None),
        }
    }

    /// Asks for a sync now instead of at the next interval.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The locations the replica holds.
    pub fn locations(&self) -> &[String] {
        &self.locations
    }

    /// The state `GET /v1/sync` reports.
    pub fn status(&self) -> SyncStatus {
        let meta = self.replica.meta();
        let progress = self
            .progress
            .lock()
            .map(|p| (p.head, p.last_error.clone(), p.digest_ok));
        let (head, last_error, digest_ok) = progress.unwrap_or_default();
        let now = now_ms();
        SyncStatus {
            store_id: self.store_id.clone(),
            cursor: meta.cursor,
            head,
            behind: meta.cursor.map_or(head, |c| head.saturating_sub(c)),
            last_sync_ms: meta.last_sync_ms,
            age_ms: meta.last_sync_ms.map(|t| now.saturating_sub(t)),
            last_error,
            bootstrapping: meta.bootstrap.is_some(),
            item_count: meta.item_count,
            digest: meta.digest_sum,
            digest_ok,
            pending_forwards: u64::try_from(self.metrics.pending_forwards.get()).unwrap_or(0),
            remembered: u64::try_from(self.replica.remembered()).unwrap_or(u64::MAX),
            caught_up: self.replica.caught_up(),
            locations: self.locations.clone(),
        }
    }

    /// Syncs every interval, and at once when woken, until `shutdown`
    /// resolves: does what the [`Machine`] decides and tells it what came
    /// of it.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut retry = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: self.interval,
            max_elapsed_time: None,
            ..Default::default()
        };
        let mut machine = Machine::default();
        let mut event = self.start();
        loop {
            event = match machine.step(event) {
                Next::Snapshot { after } => self.snapshot_page(after).await,
                Next::Changes { after } => self.changes_page(after).await,
                Next::Transfers { at } => self.keep_transfers(at).await,
                Next::Report => self.report().await,
                Next::ResetCursor => {
                    let replica = self.replica.clone();
                    let reset = blocking(move || replica.reset_cursor()).await;
                    self.outcome(reset.map(|()| Event::CursorReset))
                }
                Next::Again => self.start(),
                Next::Wait { failed } => {
                    let wait = if failed {
                        retry.next_backoff().unwrap_or(self.interval)
                    } else {
                        retry.reset();
                        self.round_done();
                        self.interval
                    };
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.wake.notified() => {}
                        () = &mut shutdown => return,
                    }
                    self.start()
                }
            };
        }
    }

    /// What the replica says as a round starts.
    fn start(&self) -> Event {
        let meta = self.replica.meta();
        Event::Start(Facts {
            cursor: meta.cursor,
            resume_after: meta.bootstrap.and_then(|b| b.after),
            transfers_fetched_at: self.replica.transfers().fetched_at().unwrap_or(0),
        })
    }

    /// The event of a step's result; a failure is logged and counted.
    fn outcome<E: Into<SyncError>>(&self, result: Result<Event, E>) -> Event {
        result.unwrap_or_else(|err| {
            let err = err.into();
            self.metrics.sync_errors.inc();
            tracing::warn!(error = %err, "sync failed");
            if let Ok(mut p) = self.progress.lock() {
                p.last_error = Some(err.to_string());
            }
            Event::Failed
        })
    }

    /// A round completed: the replica is at the head it saw.
    fn round_done(&self) {
        let meta = self.replica.meta();
        self.metrics.syncs.inc();
        self.metrics.items.set(gauge_value(meta.item_count));
        if let Some(t) = meta.last_sync_ms {
            self.metrics.last_sync.set(gauge_value(t / 1000));
        }
        if let Ok(mut p) = self.progress.lock() {
            p.last_error = None;
        }
    }

    async fn call(&self, request: Request) -> Result<Response, SyncError> {
        match self.link.call(&request, self.timeout).await? {
            Response::Error(err) => Err(SyncError::Refused(err)),
            other => Ok(other),
        }
    }

    /// Asks for the changes after `after` and applies them in one batch.
    async fn changes_page(&self, after: u64) -> Event {
        let pulled = async {
            let request = Request::Changes(ChangesRequest {
                after,
                locations: self.locations.clone(),
                limit: PAGE,
            });
            match self.call(request).await? {
                Response::Changes(page) => {
                    let (next, head, transfers_at) = (page.next, page.head, page.transfers_at);
                    let done = next >= head;
                    let replica = self.replica.clone();
                    let synced_at = done.then(now_ms);
                    blocking(move || replica.apply_changes(&page.changes, page.next, synced_at))
                        .await?;
                    if let Ok(mut p) = self.progress.lock() {
                        p.head = head;
                    }
                    self.metrics.cursor.set(gauge_value(next));
                    self.metrics
                        .behind
                        .set(gauge_value(head.saturating_sub(next)));
                    if done {
                        self.replica.mark_caught_up();
                    }
                    Ok(Event::ChangesApplied {
                        next,
                        head,
                        transfers_at,
                    })
                }
                Response::CursorExpired { oldest, head } => {
                    tracing::warn!(
                        cursor = after,
                        oldest,
                        head,
                        "cursor older than the coordinator's log; bootstrapping"
                    );
                    let replica = self.replica.clone();
                    blocking(move || replica.reset_cursor()).await?;
                    Ok(Event::CursorExpired)
                }
                _ => Err(SyncError::Unexpected),
            }
        };
        self.outcome(pulled.await)
    }

    /// Fetches the open transfers of the replica's locations and keeps
    /// them as of `transfers_at`.
    async fn keep_transfers(&self, transfers_at: u64) -> Event {
        let fetched = async {
            let mut open: Vec<Transfer> = Vec::new();
            for location in &self.locations {
                let request = Request::Transfers(TransfersRequest {
                    location: Some(location.clone()),
                    state: Some(TransferState::InTransit),
                });
                let Response::Transfers(transfers) = self.call(request).await? else {
                    return Err(SyncError::Unexpected);
                };
                for transfer in transfers {
                    if open.iter().all(|t| t.id != transfer.id) {
                        open.push(transfer);
                    }
                }
            }
            let replica = self.replica.clone();
            blocking(move || replica.transfers().replace(&open, transfers_at)).await?;
            Ok(Event::TransfersKept)
        };
        self.outcome(fetched.await)
    }

    /// Asks for the snapshot page after `after` and applies it (starting
    /// the bootstrap with the first).
    async fn snapshot_page(&self, after: Option<ItemKey>) -> Event {
        let copied = async {
            let meta = self.replica.meta();
            if self.bootstrap_pages.load(Ordering::Relaxed) == 0 {
                let resuming = meta.bootstrap.is_some();
                tracing::info!(resuming, locations = ?self.locations, "bootstrapping the replica from a snapshot");
            }
            let Response::Snapshot(page) = self.snapshot_request(after).await? else {
                return Err(SyncError::Unexpected);
            };
            let replica = self.replica.clone();
            let head = page.head;
            if meta.bootstrap.is_none() {
                blocking(move || replica.begin_bootstrap(head).map(|_| ())).await?;
            }
            let next = page.next.clone();
            if next.is_some() {
                // The next page travels while this one is applied.
                self.prefetch(next.clone());
            }
            let replica = self.replica.clone();
            blocking(move || replica.apply_snapshot_page(page.items, page.next, now_ms())).await?;
            let pages = self.bootstrap_pages.fetch_add(1, Ordering::Relaxed) + 1;
            let meta = self.replica.meta();
            if pages.is_multiple_of(PROGRESS_EVERY) {
                tracing::info!(pages, items = meta.item_count, "bootstrap progress");
            }
            if next.is_none() {
                self.bootstrap_pages.store(0, Ordering::Relaxed);
                tracing::info!(pages, items = meta.item_count, cursor = ?meta.cursor, "bootstrap complete");
            }
            Ok(Event::SnapshotApplied {
                next,
                cursor: meta.cursor,
            })
        };
        self.outcome(copied.await)
    }

    /// The snapshot page after `after`: the one prefetched for it, or a
    /// request now (a prefetch for another key is dropped).
    async fn snapshot_request(&self, after: Option<ItemKey>) -> Result<Response, SyncError> {
        let prefetched = self.prefetched.lock().ok().and_then(|mut p| p.take());
        match prefetched {
            Some((key, page)) if key == after => page.await.map_err(|_| SyncError::Unexpected)?,
            other => {
                if let Some((_, stale)) = other {
                    stale.abort();
                }
                let request = Request::Snapshot(SnapshotRequest {
                    locations: self.locations.clone(),
                    after,
                    limit: PAGE,
                });
                self.call(request).await
            }
        }
    }

    /// Asks for the snapshot page after `after` in the background.
    fn prefetch(&self, after: Option<ItemKey>) {
        let (link, timeout) = (self.link.clone(), self.timeout);
        let request = Request::Snapshot(SnapshotRequest {
            locations: self.locations.clone(),
            after: after.clone(),
            limit: PAGE,
        });
        let page = tokio::spawn(async move {
            match link.call(&request, timeout).await? {
                Response::Error(err) => Err(SyncError::Refused(err)),
                other => Ok(other),
            }
        });
        if let Ok(mut slot) = self.prefetched.lock()
            && let Some((_, stale)) = slot.replace((after, page))
        {
            stale.abort();
        }
    }

    /// Sends the replica's report; the answer says whether its digest
    /// matched.
    async fn report(&self) -> Event {
        let meta = self.replica.meta();
        let report = StoreReport {
            cursor: meta.cursor.unwrap_or(0),
            digest: meta.digest_sum,
            item_count: meta.item_count,
            pending_forwards: u64::try_from(self.metrics.pending_forwards.get()).unwrap_or(0),
            last_error: None,
            software_version: SOFTWARE_VERSION.to_string(),
            locations: self.locations.clone(),
        };
        let answer = match self.call(Request::Report(report)).await {
            Ok(Response::ReportAck(ack)) => {
                if let Ok(mut p) = self.progress.lock() {
                    p.digest_ok = ack.digest_ok;
                }
                let verdict = ack.digest_ok.map_or(-1, i64::from);
                self.metrics.digest_ok.set(verdict);
                if ack.digest_ok == Some(false) {
                    tracing::warn!("replica digest differs from the coordinator's; resyncing");
                }
                Ok(Event::Reported {
                    digest_ok: ack.digest_ok,
                })
            }
            Ok(_) => Err(SyncError::Unexpected),
            // An older coordinator without reports is not a sync failure.
            Err(SyncError::Refused(err)) if err.code == ErrorCode::BadRequest => {
                Ok(Event::Reported { digest_ok: None })
            }
            Err(err) => Err(err),
        };
        self.outcome(answer)
    }
}

/// Runs replica work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReplicaError> + Send + 'static,
) -> Result<T, ReplicaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ReplicaError::Storage(format!("replica task failed: {e}")))?
}
