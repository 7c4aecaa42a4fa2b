//! `shelfsync-loadgen fleet`: many virtual stores against one coordinator,
//! to show what a fleet costs it and how fast a write reaches a store.
//!
//! Store `fleet-i` (a certificate of its own, registered by `setup --fleet
//! N`) opens one mutual-TLS QUIC connection on a UDP socket of its own, as a
//! store machine would, bootstraps a small in-memory replica of its location
//! from snapshot pages (sku → version and quantity), then syncs every
//! `interval`: `Changes` requests after its cursor, page after page until
//! the page reaches the head, applied to the replica, as the agent's sync
//! loop does (`shelfsync-agent`'s `sync.rs`). A `CursorExpired` answer sends
//! it back to the snapshot.
//!
//! With `push`, each store also holds a subscription on a stream of its own
//! (as the agent's `sync/push.rs` does): the coordinator sends a wake-up
//! with its head at once and after every commit that touches the store's
//! location; a wake-up past the cursor makes the store pull at once, and
//! wake-ups that arrive while it pulls merge into one ([`PushState`]). The
//! interval stays as the fallback and restarts after every pull.
//!
//! With a `rate`, `writers` extra connections (the admin certificate) write
//! `add 1` to one item per store location at that many writes/s in all,
//! round robin over the stores, each with an idempotency key of this run.
//! Each acknowledgement and each arrival of that change in the owning
//! store's replica go to the store's [`Propagation`], which keeps the gap.
//! Writes stop a little before the stores do (two intervals, at most half
//! the run) so the last ones can arrive.
//!
//! The stores start spread evenly over one interval. A sync that fails is
//! counted and the store tries again at its next wake-up (reconnecting
//! first when its connection closed); the run ends by itself after
//! `duration`. Given the coordinator's pid, its CPU time and resident
//! memory are read from `/proc` at the start and the end of the run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use shelfsync_core::{ItemKey, KeyState, Op};
use shelfsync_proto::{
    ChangesRequest, Client, ProtoError, Request, Response, SnapshotRequest, SubscribeRequest,
    TlsFiles, WriteRequest,
};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::LoadError;
use crate::fleet_report::{self, ProcSample, Propagation};

/// Changes or items asked for per page (the agent's page size).
const PAGE: u32 = 1000;
/// Most pages one sync (or one bootstrap) reads before it gives up until
/// the next tick: a bound against a coordinator that never reaches its head.
const MAX_PAGES_PER_SYNC: u64 = 10_000;
/// The one item per store location the writers write.
pub const SKU: &str = "fleet";
/// Writes one writer connection keeps outstanding at most; a write due
/// while that many wait is skipped and counted.
const MAX_WRITES_IN_FLIGHT: usize = 512;
/// Stores connecting and bootstrapping at once before the run: a thousand
/// handshakes at once on a small machine outlast any sane timeout.
const CONNECTING_AT_ONCE: usize = 64;
/// The longest pause before a store subscribes again after its
/// subscription ended on a connection that is still open.
const MAX_RESUBSCRIBE: Duration = Duration::from_secs(1);

/// The id of fleet store `i` (from 1): `fleet-i`.
pub fn store_id(i: usize) -> String {
    format!("fleet-{i}")
}

/// The location fleet store `i` syncs: `prefix` followed by `i`.
pub fn location(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// A validated `fleet`.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The coordinator's QUIC address.
    pub coordinator: SocketAddr,
    /// The name checked on the coordinator's certificate.
    pub server_name: String,
    /// Directory with `ca.pem`, `fleet-i.pem/.key` and `admin.pem/.key`.
    pub certs: PathBuf,
    /// Stores `fleet-1` .. `fleet-N`, at least 1.
    pub stores: usize,
    /// Time between the starts of two syncs of one store, above 0; with
    /// `push`, the fallback after the last pull.
    pub interval: Duration,
    /// Hold a subscription per store and pull on its wake-ups.
    pub push: bool,
    /// Writes per second in all to the stores' locations; `None` for none.
    pub rate: Option<f64>,
    /// Connections the writes go out on, at least 1.
    pub writers: usize,
    /// Store `fleet-i` syncs location `locations_prefix` + `i`.
    pub locations_prefix: String,
    /// How long the stores sync once all are connected, above 0.
    pub duration: Duration,
    /// Longest wait for a handshake or one answer.
    pub timeout: Duration,
    /// The coordinator's process, whose CPU and memory are reported.
    pub coordinator_pid: Option<u32>,
    /// Series name in the CSV and chart.
    pub label: String,
    /// Print progress on stderr.
    pub progress: bool,
}

/// What one store did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreSyncs {
    /// The store id.
    pub store: String,
    /// The location it synced.
    pub location: String,
    /// Syncs completed (its cursor reached the head it was told).
    pub syncs: u64,
    /// Syncs started by the interval.
    pub tick_pulls: u64,
    /// Syncs started by a wake-up past the cursor.
    pub push_pulls: u64,
    /// Wake-ups received on the subscription.
    pub wakeups: u64,
    /// Subscriptions that ended or failed (then held again).
    pub subscription_errors: u64,
    /// `Changes` pages received.
    pub pages: u64,
    /// Changes received (changes to its own location).
    pub changes: u64,
    /// Items in its replica at the end.
    pub items: u64,
    /// Its cursor at the end.
    pub cursor: u64,
    /// Times the coordinator answered `CursorExpired` (a new bootstrap followed).
    pub cursor_expired: u64,
    /// Syncs that failed (refused, transport error, timeout).
    pub errors: u64,
    /// Connections opened again after the previous one closed.
    pub reconnects: u64,
    /// UDP bytes sent during the run.
    pub tx_bytes: u64,
    /// UDP bytes received during the run.
    pub rx_bytes: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// What the writers did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteCounts {
    /// Writes sent.
    pub sent: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes refused by the coordinator.
    pub refused: u64,
    /// Writes that failed in transport or timed out.
    pub errors: u64,
    /// Writes not sent because the connection had too many outstanding.
    pub skipped: u64,
    /// Seconds the writers wrote.
    pub duration_s: f64,
    /// The first refusal or error, if any.
    pub first_error: Option<String>,
}

impl WriteCounts {
    fn add(&mut self, other: WriteCounts) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.refused += other.refused;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.duration_s = self.duration_s.max(other.duration_s);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// What was measured beside the stores' own counts.
#[derive(Debug)]
pub struct Measured {
    /// The coordinator at the start and at the end, when its pid was given.
    pub coordinator: Option<(ProcSample, ProcSample)>,
    /// What the writers did.
    pub writes: WriteCounts,
    /// Acknowledgement to arrival in the owning store's replica, µs.
    pub propagation: Histogram<u64>,
    /// Acknowledged writes that never reached the replica in the run.
    pub not_arrived: u64,
}

/// What the whole fleet did; one JSON object with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Series name.
    pub label: String,
    /// Stores in the fleet.
    pub stores: usize,
    /// The sync interval, milliseconds.
    pub interval_ms: u64,
    /// Whether the stores held subscriptions.
    pub push: bool,
    /// Seconds the stores synced (after every connection and bootstrap).
    pub duration_s: f64,
    /// Syncs completed by all stores.
    pub syncs: u64,
    /// `syncs` per second of `duration_s`.
    pub syncs_per_s: f64,
    /// Syncs started by the interval, all stores.
    pub tick_pulls: u64,
    /// Syncs started by a wake-up, all stores.
    pub push_pulls: u64,
    /// Wake-ups received, all stores.
    pub wakeups: u64,
    /// Subscriptions that ended or failed, all stores.
    pub subscription_errors: u64,
    /// Pages received by all stores.
    pub pages: u64,
    /// Changes received by all stores.
    pub changes: u64,
    /// `CursorExpired` answers, all stores.
    pub cursor_expired: u64,
    /// Failed syncs, all stores.
    pub errors: u64,
    /// Fewest syncs any one store completed.
    pub min_store_syncs: u64,
    /// Most syncs any one store completed.
    pub max_store_syncs: u64,
    /// UDP bytes one store sent per second, on average.
    pub tx_bytes_per_store_s: f64,
    /// UDP bytes one store received per second, on average.
    pub rx_bytes_per_store_s: f64,
    /// Coordinator CPU over the run, % of one core.
    pub coordinator_cpu_pct: Option<f64>,
    /// Coordinator resident memory at the end, MiB.
    pub coordinator_rss_mib: Option<f64>,
    /// Writes/s asked for.
    pub rate: Option<f64>,
    /// What the writers did.
    pub writes: WriteCounts,
    /// Acknowledged writes per second of the writers' time.
    pub writes_per_s: f64,
    /// Writes whose arrival in a replica was seen.
    pub propagated: u64,
    /// Acknowledged writes not seen in a replica by the end.
    pub not_propagated: u64,
    /// Propagation p50, ms.
    pub propagation_p50_ms: f64,
    /// Propagation p99, ms.
    pub propagation_p99_ms: f64,
    /// Longest propagation, ms.
    pub propagation_max_ms: f64,
    /// Every store's own counts, in store order (not in the JSON line).
    #[serde(skip)]
    pub per_store: Vec<StoreSyncs>,
}

impl FleetReport {
    /// Sums the stores' counts and derives the rates.
    pub fn new(
        settings: &FleetSettings,
        elapsed: Duration,
        per_store: Vec<StoreSyncs>,
        measured: Measured,
    ) -> Self {
        let round = crate::report::round;
        let sum = |f: fn(&StoreSyncs) -> u64| per_store.iter().map(f).sum::<u64>();
        let syncs = sum(|s| s.syncs);
        let duration_s = elapsed.as_secs_f64();
        let (p50, p99, max) = fleet_report::percentiles_ms(&measured.propagation);
        let per_store_s = |total| {
            round(
                fleet_report::per_store_per_s(total, per_store.len(), elapsed),
                1,
            )
        };
        let (cpu, rss) = match measured.coordinator {
            Some((before, after)) => (
                Some(round(
                    fleet_report::cpu_percent(before.cpu_ticks, after.cpu_ticks, elapsed),
                    1,
                )),
                Some(round(after.rss_kib as f64 / 1024.0, 1)),
            ),
            None => (None, None),
        };
        let writes_per_s = if measured.writes.duration_s > 0.0 {
            round(measured.writes.acked as f64 / measured.writes.duration_s, 1)
        } else {
            0.0
        };
        FleetReport {
            label: settings.label.clone(),
            stores: settings.stores,
            interval_ms: u64::try_from(settings.interval.as_millis()).unwrap_or(u64::MAX),
            push: settings.push,
            duration_s: round(duration_s, 3),
            syncs,
            syncs_per_s: if duration_s > 0.0 {
                round(syncs as f64 / duration_s, 1)
            } else {
                0.0
            },
            tick_pulls: sum(|s| s.tick_pulls),
            push_pulls: sum(|s| s.push_pulls),
            wakeups: sum(|s| s.wakeups),
            subscription_errors: sum(|s| s.subscription_errors),
            pages: sum(|s| s.pages),
            changes: sum(|s| s.changes),
            cursor_expired: sum(|s| s.cursor_expired),
            errors: sum(|s| s.errors),
            min_store_syncs: per_store.iter().map(|s| s.syncs).min().unwrap_or(0),
            max_store_syncs: per_store.iter().map(|s| s.syncs).max().unwrap_or(0),
            tx_bytes_per_store_s: per_store_s(sum(|s| s.tx_bytes)),
            rx_bytes_per_store_s: per_store_s(sum(|s| s.rx_bytes)),
            coordinator_cpu_pct: cpu,
            coordinator_rss_mib: rss,
            rate: settings.rate,
            writes: measured.writes,
            writes_per_s,
            propagated: measured.propagation.len(),
            not_propagated: measured.not_arrived,
            propagation_p50_ms: p50,
            propagation_p99_ms: p99,
            propagation_max_ms: max,
            per_store,
        }
    }

    /// The report as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a CSV row.
    pub fn row(&self) -> fleet_report::FleetRow {
        fleet_report::FleetRow {
            label: self.label.clone(),
            stores: self.stores,
            interval_ms: self.interval_ms,
            push: self.push,
            writes_per_s: self.writes_per_s,
            syncs_per_s: self.syncs_per_s,
            coordinator_cpu_pct: self.coordinator_cpu_pct,
            coordinator_rss_mib: self.coordinator_rss_mib,
            tx_bytes_per_store_s: self.tx_bytes_per_store_s,
            rx_bytes_per_store_s: self.rx_bytes_per_store_s,
            propagation_p50_ms: self.propagation_p50_ms,
            propagation_p99_ms: self.propagation_p99_ms,
            propagation_max_ms: self.propagation_max_ms,
        }
    }

    /// The report as lines of text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "fleet: {} stores, interval {} ms{}, {:.1} s: {} syncs ({:.1}/s; {} by interval, \
             {} by wake-up, {} wake-ups), {} pages, {} changes, {} cursor expiries, {} errors; \
             syncs per store {}..{}; per store {:.0} B/s sent, {:.0} B/s received\n",
            self.stores,
            self.interval_ms,
            if self.push { ", push" } else { "" },
            self.duration_s,
            self.syncs,
            self.syncs_per_s,
            self.tick_pulls,
            self.push_pulls,
            self.wakeups,
            self.pages,
            self.changes,
            self.cursor_expired,
            self.errors,
            self.min_store_syncs,
            self.max_store_syncs,
            self.tx_bytes_per_store_s,
            self.rx_bytes_per_store_s,
        );
        if let (Some(cpu), Some(rss)) = (self.coordinator_cpu_pct, self.coordinator_rss_mib) {
            out.push_str(&format!(
                "coordinator: {cpu:.1} % of one core, {rss:.1} MiB resident\n"
            ));
        }
        if let Some(rate) = self.rate {
            out.push_str(&format!(
                "writes: {rate} /s asked, {:.1} /s acknowledged ({} refused, {} errors, {} \
                 skipped); propagation to the store's replica over {} writes: p50 {:.3} ms, \
                 p99 {:.3} ms, max {:.3} ms; {} not arrived by the end\n",
                self.writes_per_s,
                self.writes.refused,
                self.writes.errors,
                self.writes.skipped,
                self.propagated,
                self.propagation_p50_ms,
                self.propagation_p99_ms,
                self.propagation_max_ms,
                self.not_propagated,
            ));
        }
        out
    }
}

/// A store's replica of its location: sku → (version, quantity).
#[derive(Debug, Default)]
pub struct Replica {
    items: HashMap<String, (u64, u64)>,
}

impl Replica {
    /// Applies `state` of `sku` unless the replica holds that version or a
    /// later one; returns whether it applied it.
    pub fn apply(&mut self, sku: &str, state: &KeyState) -> bool {
        let version = state.version();
        if self
            .items
            .get(sku)
            .is_some_and(|&(held, _)| held >= version)
        {
            return false;
        }
        let quantity = match state {
            KeyState::Live(item) => item.quantity,
            KeyState::Absent | KeyState::Deleted { .. } => 0,
        };
        self.items.insert(sku.to_owned(), (version, quantity));
        true
    }

    /// The version and quantity held for `sku`.
    pub fn get(&self, sku: &str) -> Option<(u64, u64)> {
        self.items.get(sku).copied()
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn clear(&mut self) {
        self.items.clear();
    }
}

/// Why a store's loop woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The interval passed.
    Tick,
    /// A wake-up came on the subscription.
    Push,
}

/// Whether a store pulls on `wakeup`: at every tick; on a wake-up only
/// when the latest head it was told is past its cursor (a wake-up that
/// came while it pulled may be covered by that pull already).
pub fn should_pull(wakeup: Wakeup, cursor: u64, told_head: u64) -> bool {
    match wakeup {
        Wakeup::Tick => true,
        Wakeup::Push => told_head > cursor,
    }
}

/// What a store's subscription task and its sync loop share.
#[derive(Debug, Default)]
pub struct PushState {
    /// The highest head a wake-up carried.
    head: AtomicU64,
    /// The store's cursor after its last pull.
    cursor: AtomicU64,
    /// Wakes the sync loop; holds one permit, so wake-ups merge.
    notify: Notify,
    /// Wake-ups received.
    wakeups: AtomicU64,
    /// Subscriptions that ended.
    ended: AtomicU64,
    /// Why the first one ended.
    first_error: Mutex<Option<String>>,
}

impl PushState {
    /// A wake-up with `head` came: wakes the loop when past the cursor.
    /// Returns whether it did.
    pub fn on_wake(&self, head: u64) -> bool {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        self.head.fetch_max(head, Ordering::AcqRel);
        let wakes = head > self.cursor.load(Ordering::Acquire);
        if wakes {
            self.notify.notify_one();
        }
        wakes
    }

    /// The loop pulled up to `cursor`.
    pub fn pulled(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::Release);
    }

    /// Whether the loop pulls on `wakeup` now ([`should_pull`]).
    pub fn due(&self, wakeup: Wakeup) -> bool {
        should_pull(
            wakeup,
            self.cursor.load(Ordering::Acquire),
            self.head.load(Ordering::Acquire),
        )
    }

    /// Waits for a wake-up (or the one that came since the last wait).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    fn ended(&self, why: &SyncFailure) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(format!("subscription: {why}"));
        }
    }
}

/// The value behind `mutex`, also after a task panicked while holding it:
/// counts stay meaningful, and the panic is reported by the join.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every store and writer of one run share.
struct Shared {
    settings: FleetSettings,
    /// Idempotency keys of this run's writes start with it.
    run_id: String,
    /// Store `i`'s location at `i - 1`.
    locations: Vec<String>,
    /// Store `i`'s propagation at `i - 1`.
    propagation: Vec<Arc<Mutex<Propagation>>>,
    /// Writes sent so far by all writers; write `n` goes to store `n mod N`.
    next_write: AtomicU64,
}

/// One fleet store: who it is, its connection, replica, cursor and counts.
struct Store {
    index: usize,
    /// Its certificate files, loaded again when it reconnects.
    files: TlsFiles,
    client: Option<Arc<Client>>,
    replica: Replica,
    push: Arc<PushState>,
    subscription: Option<JoinHandle<()>>,
    /// UDP bytes (sent, received) of the connection at the start of the run.
    bytes_base: (u64, u64),
    counts: StoreSyncs,
}

impl Store {
    /// UDP bytes (sent, received) of its connection now.
    fn bytes_now(&self) -> (u64, u64) {
        self.client.as_ref().map_or((0, 0), |c| {
            let stats = c.stats();
            (stats.udp_tx.bytes, stats.udp_rx.bytes)
        })
    }

    /// Adds what the connection carried since `bytes_base` to the counts.
    fn settle_bytes(&mut self) {
        let (tx, rx) = self.bytes_now();
        self.counts.tx_bytes += tx.saturating_sub(self.bytes_base.0);
        self.counts.rx_bytes += rx.saturating_sub(self.bytes_base.1);
        self.bytes_base = (0, 0);
    }

    /// Holds a subscription on the current connection (ending the old one).
    fn subscribe(&mut self) {
        if let Some(old) = self.subscription.take() {
            old.abort();
        }
        if let Some(client) = &self.client {
            self.subscription = Some(tokio::spawn(hold_subscription(
                client.clone(),
                self.counts.location.clone(),
                self.push.clone(),
            )));
        }
    }
}

/// Runs the fleet: connects the writers and creates the written items,
/// connects and bootstraps every store, syncs them all (and writes) for
/// `settings.duration`, and reports.
///
/// # Errors
/// Missing certificates, a store or writer whose certificate cannot be
/// loaded or that cannot connect, a location not readable for its store,
/// a coordinator pid whose `/proc` files cannot be read (all before the
/// clock starts). Failed syncs and writes while running are counted.
pub async fn run(settings: &FleetSettings) -> Result<FleetReport, LoadError> {
    let found = count_certs(&settings.certs);
    if found < settings.stores {
        return Err(LoadError::MissingFleetCerts {
            dir: settings.certs.clone(),
            needed: settings.stores,
            found,
        });
    }
    if let Some(pid) = settings.coordinator_pid {
        ProcSample::read(pid)?;
    }
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        run_id: format!(
            "fleet-{:x}-{:08x}",
            shelfsync_proto::time::now_ms(),
            rand::random::<u32>()
        ),
        locations: (1..=settings.stores)
            .map(|i| location(&settings.locations_prefix, i))
            .collect(),
        propagation: (0..settings.stores)
            .map(|_| Propagation::new().map(|p| Arc::new(Mutex::new(p))))
            .collect::<Result<_, _>>()?,
        next_write: AtomicU64::new(0),
    });
    let writers = match settings.rate {
        Some(_) => connect_writers(&shared).await?,
        None => Vec::new(),
    };
    let mut stores = connect_all(settings).await?;
    if settings.progress {
        eprintln!(
            "fleet: {} stores connected and bootstrapped; syncing every {}{} for {}",
            settings.stores,
            humantime::format_duration(settings.interval),
            if settings.push {
                " and on wake-ups"
            } else {
                ""
            },
            humantime::format_duration(settings.duration),
        );
    }
    for store in &mut stores {
        store.bytes_base = store.bytes_now();
    }
    let coordinator_before = match settings.coordinator_pid {
        Some(pid) => Some(ProcSample::read(pid)?),
        None => None,
    };
    let started = Instant::now();
    let deadline = started + settings.duration;
    // Writes stop early enough for the last ones to arrive.
    let settle = (settings.interval * 2).min(settings.duration / 2);
    let write_deadline = deadline - settle;
    let mut set = JoinSet::new();
    for store in stores {
        // Spread the stores' first syncs evenly over one interval.
        let phase = settings
            .interval
            .mul_f64((store.index - 1) as f64 / settings.stores as f64);
        set.spawn(sync_loop(store, shared.clone(), started + phase, deadline));
    }
    let mut write_set = JoinSet::new();
    for client in writers.iter().cloned() {
        write_set.spawn(write_loop(client, shared.clone(), started, write_deadline));
    }
    let mut writes = WriteCounts::default();
    while let Some(joined) = write_set.join_next().await {
        writes.add(joined.map_err(|e| LoadError::Internal(format!("a writer failed: {e}")))?);
    }
    let mut done = Vec::with_capacity(settings.stores);
    while let Some(joined) = set.join_next().await {
        done.push(joined.map_err(|e| LoadError::Internal(format!("a fleet store failed: {e}")))?);
    }
    let elapsed = started.elapsed();
    let coordinator = match (settings.coordinator_pid, coordinator_before) {
        (Some(pid), Some(before)) => Some((before, ProcSample::read(pid)?)),
        _ => None,
    };
    done.sort_by_key(|s| s.index);
    let mut closing = JoinSet::new();
    let mut per_store = Vec::with_capacity(done.len());
    for mut store in done {
        store.settle_bytes();
        if let Some(task) = store.subscription.take() {
            task.abort();
            // Its end drops its handle on the connection, which can then close.
            let _ = task.await;
        }
        store.counts.wakeups = store.push.wakeups.load(Ordering::Relaxed);
        store.counts.subscription_errors = store.push.ended.load(Ordering::Relaxed);
        if store.counts.first_error.is_none() {
            store.counts.first_error = lock(&store.push.first_error).take();
        }
        store.counts.items = store.replica.len() as u64;
        if let Some(client) = store.client.take().and_then(|c| Arc::try_unwrap(c).ok()) {
            closing.spawn(client.close());
        }
        per_store.push(store.counts);
    }
    for client in writers {
        if let Ok(client) = Arc::try_unwrap(client) {
            closing.spawn(client.close());
        }
    }
    while closing.join_next().await.is_some() {}
    let mut propagation = fleet_report::histogram()?;
    let mut not_arrived = 0;
    for tracker in &shared.propagation {
        let tracker = lock(tracker);
        propagation
            .add(tracker.latency())
            .map_err(|e| LoadError::Internal(format!("cannot merge histograms: {e}")))?;
        not_arrived += tracker.outstanding() as u64;
    }
    let measured = Measured {
        coordinator,
        writes,
        propagation,
        not_arrived,
    };
    let report = FleetReport::new(settings, elapsed, per_store, measured);
    if settings.progress {
        warn_errors(&report);
    }
    Ok(report)
}

/// How many fleet certificates `fleet-1`, `fleet-2`, ... exist in `dir`
/// without a gap (both the `.pem` and the `.key`).
pub fn count_certs(dir: &std::path::Path) -> usize {
    (1..)
        .take_while(|&i| {
            let id = store_id(i);
            dir.join(format!("{id}.pem")).is_file() && dir.join(format!("{id}.key")).is_file()
        })
        .count()
}

/// Connects the writer connections (as admin) and creates the item each
/// store location gets its writes on (an item that exists is fine).
async fn connect_writers(shared: &Shared) -> Result<Vec<Arc<Client>>, LoadError> {
    let settings = &shared.settings;
    let files = TlsFiles {
        ca_cert: settings.certs.join("ca.pem"),
        cert: settings.certs.join("admin.pem"),
        key: settings.certs.join("admin.key"),
    };
    let tls_error = |source| LoadError::Tls {
        store: "admin".into(),
        source: Box::new(source),
    };
    let mut clients = Vec::with_capacity(settings.writers);
    for _ in 0..settings.writers {
        let config = shelfsync_proto::tls::client_config(&files).map_err(tls_error)?;
        let client = Client::connect(
            settings.coordinator,
            &settings.server_name,
            config,
            settings.timeout,
        )
        .await
        .map_err(|source| LoadError::Connect {
            store: "admin".into(),
            addr: settings.coordinator,
            source: Box::new(source),
        })?;
        clients.push(Arc::new(client));
    }
    let Some(first) = clients.first() else {
        return Ok(clients);
    };
    for (chunk_no, chunk) in shared.locations.chunks(1000).enumerate() {
        let writes = chunk
            .iter()
            .enumerate()
            .map(|(i, location)| WriteRequest {
                idempotency_key: format!("{}-create-{chunk_no}-{i}", shared.run_id),
                key: ItemKey {
                    location: location.clone(),
                    sku: SKU.into(),
                },
                op: Op::Create {
                    name: "fleet item".into(),
                    quantity: 1_000_000,
                },
                expected_version: None,
                lock_token: None,
            })
            .collect();
        let preload_error = |detail: String| LoadError::Preload {
            sku: SKU.into(),
            detail,
        };
        match first.call(&Request::Writes(writes)).await {
            Ok(Response::Writes(answers)) => {
                for answer in answers {
                    match answer {
                        Response::Write(_) => {}
                        Response::Error(err)
                            if err.code == shelfsync_proto::ErrorCode::AlreadyExists => {}
                        Response::Error(err) => return Err(preload_error(err.to_string())),
                        _ => return Err(preload_error("not a write acknowledgement".into())),
                    }
                }
            }
            Ok(Response::Error(err)) => return Err(preload_error(err.to_string())),
            Ok(_) => return Err(preload_error("not an answer to writes".into())),
            Err(err) => return Err(preload_error(err.to_string())),
        }
    }
    Ok(clients)
}

/// Writes at its share of the rate from `start` until `until`, round robin
/// over the stores' locations.
async fn write_loop(
    client: Arc<Client>,
    shared: Arc<Shared>,
    start: Instant,
    until: Instant,
) -> WriteCounts {
    let mut counts = WriteCounts::default();
    let rate = shared.settings.rate.unwrap_or(0.0) / shared.settings.writers as f64;
    if !(rate.is_finite() && rate > 0.0) {
        return counts;
    }
    let mut ticks = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / rate));
    // Late ticks are made up, so the rate holds on average.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let slots = Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            at = ticks.tick() => if at >= until { break },
            () = tokio::time::sleep_until(until) => break,
        }
        while let Some(done) = in_flight.try_join_next() {
            tally(&mut counts, done);
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counts.skipped += 1;
            continue;
        };
        let n = shared.next_write.fetch_add(1, Ordering::Relaxed);
        let store = usize::try_from(n % shared.locations.len() as u64).unwrap_or(0);
        let request = Request::Write(WriteRequest {
            idempotency_key: format!("{}-{n}", shared.run_id),
            key: ItemKey {
                location: shared.locations[store].clone(),
                sku: SKU.into(),
            },
            op: Op::Add { amount: 1 },
            expected_version: None,
            lock_token: None,
        });
        counts.sent += 1;
        let client = client.clone();
        let tracker = shared.propagation[store].clone();
        in_flight.spawn(async move {
            let answer = client.call(&request).await;
            if let Ok(Response::Write(ack)) = &answer {
                lock(&tracker).acked(SKU, ack.state.version(), std::time::Instant::now());
            }
            drop(slot);
            answer
        });
    }
    counts.duration_s = start.elapsed().as_secs_f64();
    while let Some(done) = in_flight.join_next().await {
        tally(&mut counts, done);
    }
    counts
}

/// Counts one write's outcome.
fn tally(
    counts: &mut WriteCounts,
    done: Result<Result<Response, ProtoError>, tokio::task::JoinError>,
) {
    let failure = match done {
        Ok(Ok(Response::Write(_))) => {
            counts.acked += 1;
            return;
        }
        Ok(Ok(Response::Error(err))) => {
            counts.refused += 1;
            err.to_string()
        }
        Ok(Ok(_)) => {
            counts.errors += 1;
            "not a write acknowledgement".into()
        }
        Ok(Err(err)) => {
            counts.errors += 1;
            err.to_string()
        }
        Err(err) => {
            counts.errors += 1;
            err.to_string()
        }
    };
    counts.first_error.get_or_insert(failure);
}

/// Connects every store ([`CONNECTING_AT_ONCE`] at a time) and
/// bootstraps its replica.
async fn connect_all(settings: &FleetSettings) -> Result<Vec<Store>, LoadError> {
    let mut set = JoinSet::new();
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    for index in 1..=settings.stores {
        let id = store_id(index);
        let files = TlsFiles {
            ca_cert: settings.certs.join("ca.pem"),
            cert: settings.certs.join(format!("{id}.pem")),
            key: settings.certs.join(format!("{id}.key")),
        };
        // Loaded here, so that a bad file is named as such.
        shelfsync_proto::tls::client_config(&files).map_err(|source| LoadError::Tls {
            store: id.clone(),
            source: Box::new(source),
        })?;
        let settings = settings.clone();
        let connecting = connecting.clone();
        set.spawn(async move {
            // Only fails once closed, which it never is.
            let _turn = connecting.acquire_owned().await;
            let location = location(&settings.locations_prefix, index);
            let connect_error = |source: ProtoError| LoadError::Connect {
                store: id.clone(),
                addr: settings.coordinator,
                source: Box::new(source),
            };
            let client = connect(&settings, &files).await.map_err(connect_error)?;
            if !client.hello().readable.contains(&location) {
                return Err(LoadError::NotReadable {
                    store: id.clone(),
                    location,
                    readable: client.hello().readable.clone(),
                });
            }
            let mut replica = Replica::default();
            let cursor = bootstrap(&client, &location, &mut replica)
                .await
                .map_err(|e| LoadError::FleetBootstrap {
                    store: id.clone(),
                    location: location.clone(),
                    detail: e.to_string(),
                })?;
            let push = Arc::new(PushState::default());
            push.pulled(cursor);
            Ok(Store {
                index,
                files,
                client: Some(Arc::new(client)),
                replica,
                push,
                subscription: None,
                bytes_base: (0, 0),
                counts: StoreSyncs {
                    store: id,
                    location,
                    cursor,
                    ..StoreSyncs::default()
                },
            })
        });
    }
    let mut stores = Vec::with_capacity(settings.stores);
    while let Some(joined) = set.join_next().await {
        // An error drops the set, which aborts (and so disconnects) the rest.
        stores.push(joined.map_err(|e| LoadError::Internal(e.to_string()))??);
    }
    Ok(stores)
}

async fn connect(settings: &FleetSettings, files: &TlsFiles) -> Result<Client, ProtoError> {
    let config = shelfsync_proto::tls::client_config(files)?;
    Client::connect(
        settings.coordinator,
        &settings.server_name,
        config,
        settings.timeout,
    )
    .await
}

/// Why one sync or subscription failed; counted, then the store waits for
/// its next wake-up.
#[derive(Debug, thiserror::Error)]
enum SyncFailure {
    /// The coordinator could not be reached or the exchange failed.
    #[error("{0}")]
    Transport(#[from] ProtoError),
    /// The coordinator refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// An answer that does not fit the request.
    #[error("unexpected answer: {0}")]
    Unexpected(&'static str),
    /// Pages kept coming without reaching the head.
    #[error("no head reached after {MAX_PAGES_PER_SYNC} pages")]
    TooManyPages,
    /// The coordinator ended the subscription.
    #[error("ended by the coordinator")]
    Ended,
}

/// Fills `replica` (emptied first) from the snapshot pages of `location`;
/// returns the starting cursor, the head of the first page.
async fn bootstrap(
    client: &Client,
    location: &str,
    replica: &mut Replica,
) -> Result<u64, SyncFailure> {
    replica.clear();
    let mut after = None;
    let mut head = None;
    for _ in 0..MAX_PAGES_PER_SYNC {
        let request = Request::Snapshot(SnapshotRequest {
            locations: vec![location.to_owned()],
            after,
            limit: PAGE,
        });
        let page = match client.call(&request).await? {
            Response::Snapshot(page) => page,
            Response::Error(err) => return Err(SyncFailure::Refused(err.to_string())),
            _ => return Err(SyncFailure::Unexpected("not a snapshot page")),
        };
        let first_head = *head.get_or_insert(page.head);
        for item in page.items {
            let sku = item.sku.clone();
            replica.apply(&sku, &KeyState::Live(item));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(first_head),
        }
    }
    Err(SyncFailure::TooManyPages)
}

/// Holds a subscription to `location` on `client`, passing its wake-ups to
/// `push`, until the connection closes (then the sync loop reconnects and
/// subscribes again).
async fn hold_subscription(client: Arc<Client>, location: String, push: Arc<PushState>) {
    let request = Request::Subscribe(SubscribeRequest {
        locations: vec![location],
    });
    loop {
        let ended = match client.subscribe(&request).await {
            Ok(mut subscription) => loop {
                match subscription.next().await {
                    Ok(Some(Response::Wake { head })) => {
                        push.on_wake(head);
                    }
                    Ok(Some(Response::Error(err))) => break SyncFailure::Refused(err.to_string()),
                    Ok(Some(_)) => break SyncFailure::Unexpected("not a wake-up"),
                    Ok(None) => break SyncFailure::Ended,
                    Err(err) => break err.into(),
                }
            },
            Err(err) => err.into(),
        };
        push.ended(&ended);
        if client.is_closed() {
            return;
        }
        tokio::time::sleep(MAX_RESUBSCRIBE).await;
    }
}

/// Syncs `store` at every tick from `first` on, and with push at every
/// wake-up past its cursor, until `deadline`.
async fn sync_loop(
    mut store: Store,
    shared: Arc<Shared>,
    first: Instant,
    deadline: Instant,
) -> Store {
    let settings = &shared.settings;
    let mut ticks = tokio::time::interval_at(first, settings.interval);
    // A sync longer than the interval delays the next one rather than
    // bunching several, as the agent's sleep-after-sync loop would.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    if settings.push {
        store.subscribe();
    }
    let push = store.push.clone();
    loop {
        let wakeup = tokio::select! {
            at = ticks.tick() => {
                if at >= deadline { break }
                Wakeup::Tick
            }
            () = push.woken(), if settings.push => Wakeup::Push,
            () = tokio::time::sleep_until(deadline) => break,
        };
        if !push.due(wakeup) {
            continue;
        }
        match wakeup {
            Wakeup::Tick => store.counts.tick_pulls += 1,
            Wakeup::Push => {
                store.counts.push_pulls += 1;
                // The interval is the fallback: it counts from the last pull.
                ticks.reset();
            }
        }
        if let Err(err) = sync_once(&mut store, &shared).await {
            store.counts.errors += 1;
            store
                .counts
                .first_error
                .get_or_insert_with(|| err.to_string());
        }
        push.pulled(store.counts.cursor);
    }
    store
}

/// One sync of `store`: reconnect when needed, then pages until the head,
/// applied to its replica; arrivals of this run's writes are recorded.
async fn sync_once(store: &mut Store, shared: &Shared) -> Result<(), SyncFailure> {
    let settings = &shared.settings;
    let reconnect = store.client.as_ref().is_none_or(|c| c.is_closed());
    if reconnect {
        store.settle_bytes();
        if let Some(stale) = store.client.take() {
            stale.abandon();
        }
        store.counts.reconnects += 1;
        store.client = Some(Arc::new(connect(settings, &store.files).await?));
        if settings.push {
            store.subscribe();
        }
    }
    let Some(client) = store.client.clone() else {
        return Err(SyncFailure::Unexpected("no connection"));
    };
    let tracker = &shared.propagation[store.index - 1];
    let counts = &mut store.counts;
    for _ in 0..MAX_PAGES_PER_SYNC {
        let request = Request::Changes(ChangesRequest {
            after: counts.cursor,
            locations: vec![counts.location.clone()],
            limit: PAGE,
        });
        match client.call(&request).await? {
            Response::Changes(page) => {
                if page.next < counts.cursor {
                    return Err(SyncFailure::Unexpected("a page behind the cursor"));
                }
                let arrived = std::time::Instant::now();
                counts.pages += 1;
                counts.changes += page.changes.len() as u64;
                for change in &page.changes {
                    let applied = store.replica.apply(&change.key.sku, &change.state);
                    if applied && change.idempotency_key.starts_with(&shared.run_id) {
                        lock(tracker).arrived(&change.key.sku, change.state.version(), arrived);
                    }
                }
                counts.cursor = page.next;
                if page.next >= page.head {
                    counts.syncs += 1;
                    return Ok(());
                }
            }
            Response::CursorExpired { .. } => {
                counts.cursor_expired += 1;
                counts.cursor = bootstrap(&client, &counts.location, &mut store.replica).await?;
            }
            Response::Error(err) => return Err(SyncFailure::Refused(err.to_string())),
            _ => return Err(SyncFailure::Unexpected("not a changes page")),
        }
    }
    Err(SyncFailure::TooManyPages)
}

/// Says on stderr which stores had failed syncs (the first few) and why
/// writes failed.
fn warn_errors(report: &FleetReport) {
    if let Some(first) = &report.writes.first_error {
        eprintln!(
            "fleet: {} writes refused, {} failed; the first: {first}",
            report.writes.refused, report.writes.errors
        );
    }
    let failing: Vec<&StoreSyncs> = report
        .per_store
        .iter()
        .filter(|s| s.errors > 0 || s.subscription_errors > 0)
        .collect();
    if failing.is_empty() {
        return;
    }
    eprintln!(
        "fleet: {} of {} stores had failed syncs or subscriptions ({} syncs, {} subscriptions \
         in all); the first:",
        failing.len(),
        report.stores,
        report.errors,
        report.subscription_errors,
    );
    for store in failing.iter().take(5) {
        eprintln!(
            "  {}: {} failed, {} subscriptions ended, first: {}",
            store.store,
            store.errors,
            store.subscription_errors,
            store.first_error.as_deref().unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfsync_core::Item;

    fn settings() -> FleetSettings {
        FleetSettings {
            coordinator: "127.0.0.1:7400".parse().unwrap(),
            server_name: "localhost".into(),
            certs: PathBuf::from("certs"),
            stores: 2,
            interval: Duration::from_millis(500),
            push: true,
            rate: Some(100.0),
            writers: 1,
            locations_prefix: "idle-".into(),
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            coordinator_pid: None,
            label: "push".into(),
            progress: false,
        }
    }

    #[test]
    fn stores_and_locations_are_numbered_from_one() {
        assert_eq!(store_id(1), "fleet-1");
        assert_eq!(location("idle-", 42), "idle-42");
    }

    #[test]
    fn the_report_sums_the_stores() {
        let store = |syncs, errors| StoreSyncs {
            syncs,
            pages: syncs + 1,
            errors,
            tick_pulls: 1,
            push_pulls: syncs - 1,
            tx_bytes: 2_000,
            rx_bytes: 6_000,
            ..StoreSyncs::default()
        };
        let mut propagation = fleet_report::histogram().unwrap();
        propagation.record(4_000).unwrap();
        propagation.record(120_000).unwrap();
        let measured = Measured {
            coordinator: Some((
                ProcSample {
                    cpu_ticks: 100,
                    rss_kib: 1024,
                },
                ProcSample {
                    cpu_ticks: 150,
                    rss_kib: 2048,
                },
            )),
            writes: WriteCounts {
                sent: 200,
                acked: 190,
                refused: 10,
                duration_s: 1.9,
                ..WriteCounts::default()
            },
            propagation,
            not_arrived: 3,
        };
        let report = FleetReport::new(
            &settings(),
            Duration::from_secs(2),
            vec![store(4, 0), store(3, 1)],
            measured,
        );
        assert_eq!(report.syncs, 7);
        assert_eq!(report.pages, 9);
        assert_eq!(report.errors, 1);
        assert_eq!((report.tick_pulls, report.push_pulls), (2, 5));
        assert_eq!((report.min_store_syncs, report.max_store_syncs), (3, 4));
        assert_eq!(report.syncs_per_s, 3.5);
        assert_eq!(report.interval_ms, 500);
        // 4,000 bytes sent by 2 stores in 2 s.
        assert_eq!(report.tx_bytes_per_store_s, 1000.0);
        assert_eq!(report.rx_bytes_per_store_s, 3000.0);
        // 50 ticks of 10 ms in 2 s.
        assert_eq!(report.coordinator_cpu_pct, Some(25.0));
        assert_eq!(report.coordinator_rss_mib, Some(2.0));
        assert_eq!(report.writes_per_s, 100.0);
        assert_eq!((report.propagated, report.not_propagated), (2, 3));
        assert!((report.propagation_p50_ms - 4.0).abs() < 0.01);
        assert!((report.propagation_max_ms - 120.0).abs() < 0.1);
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["syncs"], 7);
        assert_eq!(json["writes"]["acked"], 190);
        assert!(json.get("per_store").is_none());
        let text = report.text();
        assert!(text.contains("7 syncs (3.5/s"), "{text}");
        assert!(text.contains("25.0 % of one core"), "{text}");
        assert!(text.contains("3 not arrived"), "{text}");
        let row = report.row();
        assert_eq!(row.coordinator_cpu_pct, Some(25.0));
        assert_eq!(row.stores, 2);
    }

    fn live(version: u64, quantity: u64) -> KeyState {
        KeyState::Live(Item {
            location: "idle-1".into(),
            sku: SKU.into(),
            name: "x".into(),
            quantity,
            reserved: 0,
            version,
            held: 0,
            allowance: 0,
            lock: None,
        })
    }

    #[test]
    fn the_replica_keeps_the_newest_version() {
        let mut replica = Replica::default();
        assert!(replica.is_empty());
        assert!(replica.apply(SKU, &live(2, 10)));
        // A version it holds, or an older one, changes nothing.
        assert!(!replica.apply(SKU, &live(2, 99)));
        assert!(!replica.apply(SKU, &live(1, 99)));
        assert_eq!(replica.get(SKU), Some((2, 10)));
        assert!(replica.apply(SKU, &live(3, 11)));
        assert!(replica.apply(SKU, &KeyState::Deleted { version: 4 }));
        assert_eq!(replica.get(SKU), Some((4, 0)));
        assert_eq!(replica.len(), 1);
    }

    #[test]
    fn a_store_pulls_at_every_tick_and_on_wakeups_past_its_cursor() {
        assert!(should_pull(Wakeup::Tick, 10, 0));
        assert!(should_pull(Wakeup::Tick, 10, 10));
        assert!(should_pull(Wakeup::Push, 10, 11));
        assert!(!should_pull(Wakeup::Push, 10, 10));
        assert!(!should_pull(Wakeup::Push, 10, 3));
    }

    #[tokio::test]
    async fn wakeups_while_pulling_merge_into_one() {
        let push = PushState::default();
        push.pulled(5);
        // The wake-up at subscribe time, at the cursor: nothing to pull.
        assert!(!push.on_wake(5));
        assert!(!push.due(Wakeup::Push));
        // Three commits while the store is busy: one pending wake-up.
        assert!(push.on_wake(6));
        assert!(push.on_wake(7));
        assert!(push.on_wake(8));
        push.woken().await;
        assert!(push.due(Wakeup::Push));
        push.pulled(8);
        let again = tokio::time::timeout(Duration::from_millis(20), push.woken()).await;
        assert!(
            again.is_err(),
            "the three wake-ups woke the loop more than once"
        );
        // A pull that already covered a later wake-up's head skips it.
        assert!(push.on_wake(9));
        push.pulled(9);
        push.woken().await;
        assert!(!push.due(Wakeup::Push));
        assert_eq!(push.wakeups.load(Ordering::Relaxed), 5);
    }
}
