//! The sync loop: bootstrap from a snapshot when the replica has no cursor,
//! then pull changes every `sync_interval` (or at once when woken), and
//! report the replica's state to the coordinator after each sync.
//!
//! While the coordinator is away the loop retries with exponential backoff
//! and jitter, never waiting longer than the sync interval between tries, and
//! resumes by itself when it is back. Every page is applied in one replica
//! batch, so a crash at any point resumes from the last page applied.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use backoff::backoff::Backoff;
use serde::Serialize;
use shelfsync_core::{Transfer, TransferState};
use shelfsync_proto::{
    ChangesRequest, ErrorCode, ProtoError, Request, Response, SOFTWARE_VERSION, SnapshotRequest,
    StoreReport, TransfersRequest, WireError,
};
use tokio::sync::Notify;

use crate::link::Link;
use crate::metrics::{Metrics, gauge_value};
use crate::replica::{Replica, ReplicaError};
use shelfsync_proto::time::now_ms;

mod push;

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
}

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

    /// Syncs every interval until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut retry = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: self.interval,
            max_elapsed_time: None,
            ..Default::default()
        };
        loop {
            let wait = match self.sync_once().await {
                Ok(()) => {
                    retry.reset();
                    self.interval
                }
                Err(err) => {
                    self.metrics.sync_errors.inc();
                    tracing::warn!(error = %err, "sync failed");
                    if let Ok(mut p) = self.progress.lock() {
                        p.last_error = Some(err.to_string());
                    }
                    retry.next_backoff().unwrap_or(self.interval)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = &mut shutdown => return,
            }
        }
    }

    async fn call(&self, request: Request) -> Result<Response, SyncError> {
        match self.link.call(&request, self.timeout).await? {
            Response::Error(err) => Err(SyncError::Refused(err)),
            other => Ok(other),
        }
    }

    /// One sync: bootstrap if needed, changes up to the head, then a report.
    pub async fn sync_once(&self) -> Result<(), SyncError> {
        let transfers_at = loop {
            let meta = self.replica.meta();
            let Some(cursor) = meta.cursor else {
                self.bootstrap().await?;
                continue;
            };
            let request = Request::Changes(ChangesRequest {
                after: cursor,
                locations: self.locations.clone(),
                limit: PAGE,
            });
            match self.call(request).await? {
                Response::Changes(page) => {
                    let done = page.next >= page.head;
                    let transfers_at = page.transfers_at;
                    let replica = self.replica.clone();
                    let synced_at = done.then(now_ms);
                    blocking(move || replica.apply_changes(&page.changes, page.next, synced_at))
                        .await?;
                    if let Ok(mut p) = self.progress.lock() {
                        p.head = page.head;
                    }
                    self.metrics.cursor.set(gauge_value(page.next));
                    self.metrics
                        .behind
                        .set(gauge_value(page.head.saturating_sub(page.next)));
                    if done {
                        self.replica.mark_caught_up();
                        break transfers_at;
                    }
                }
                Response::CursorExpired { oldest, head } => {
                    tracing::warn!(
                        cursor,
                        oldest,
                        head,
                        "cursor older than the coordinator's log; bootstrapping"
                    );
                    let replica = self.replica.clone();
                    blocking(move || replica.reset_cursor()).await?;
                }
                _ => return Err(SyncError::Unexpected),
            }
        };
        self.fetch_transfers(transfers_at).await?;
        let meta = self.replica.meta();
        self.metrics.syncs.inc();
        self.metrics.items.set(gauge_value(meta.item_count));
        if let Some(t) = meta.last_sync_ms {
            self.metrics.last_sync.set(gauge_value(t / 1000));
        }
        if let Ok(mut p) = self.progress.lock() {
            p.last_error = None;
        }
        self.report().await
    }

    /// Fetches the open transfers of the replica's locations once the
    /// coordinator says they changed after the last fetch.
    async fn fetch_transfers(&self, transfers_at: u64) -> Result<(), SyncError> {
        let kept = self.replica.transfers();
        if transfers_at <= kept.fetched_at()? {
            return Ok(());
        }
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
        Ok(())
    }

    async fn bootstrap(&self) -> Result<(), SyncError> {
        let meta = self.replica.meta();
        let mut after = meta.bootstrap.as_ref().and_then(|b| b.after.clone());
        let resuming = meta.bootstrap.is_some();
        tracing::info!(resuming, locations = ?self.locations, "bootstrapping the replica from a snapshot");
        let mut pages = 0u64;
        let mut copied = 0u64;
        loop {
            let request = Request::Snapshot(SnapshotRequest {
                locations: self.locations.clone(),
                after: after.clone(),
                limit: PAGE,
            });
            let Response::Snapshot(page) = self.call(request).await? else {
                return Err(SyncError::Unexpected);
            };
            let replica = self.replica.clone();
            let head = page.head;
            if replica.meta().bootstrap.is_none() {
                blocking(move || replica.begin_bootstrap(head).map(|_| ())).await?;
            }
            pages += 1;
            copied += page.items.len() as u64;
            after = page.next.clone();
            let replica = self.replica.clone();
            blocking(move || replica.apply_snapshot_page(page.items, page.next, now_ms())).await?;
            if pages.is_multiple_of(PROGRESS_EVERY) {
                tracing::info!(pages, items = copied, "bootstrap progress");
            }
            if after.is_none() {
                tracing::info!(pages, items = copied, cursor = ?self.replica.meta().cursor, "bootstrap complete");
                return Ok(());
            }
        }
    }

    async fn report(&self) -> Result<(), SyncError> {
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
        match self.call(Request::Report(report)).await {
            Ok(Response::ReportAck(ack)) => {
                let before = self
                    .progress
                    .lock()
                    .map(|mut p| std::mem::replace(&mut p.digest_ok, ack.digest_ok))
                    .unwrap_or_default();
                if ack.digest_ok == Some(false) {
                    tracing::warn!("replica digest differs from the coordinator's; resyncing");
                    let replica = self.replica.clone();
                    blocking(move || replica.reset_cursor()).await?;
                    // At once the first time; if a fresh copy differs too,
                    // at the next interval, not in a tight loop of
                    // bootstraps against the coordinator.
                    if before != Some(false) {
                        self.wake();
                    }
                }
                Ok(())
            }
            Ok(_) => Err(SyncError::Unexpected),
            // An older coordinator without reports is not a sync failure.
            Err(SyncError::Refused(err)) if err.code == ErrorCode::BadRequest => Ok(()),
            Err(err) => Err(err),
        }
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
