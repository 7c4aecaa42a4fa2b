//! `shelfsync-loadgen fleet`: many stores that only sync, each its own
//! location, to show what idle stores cost the coordinator.
//!
//! Store `fleet-i` (a certificate of its own, registered by `setup --fleet
//! N`) opens one mutual-TLS QUIC connection on a UDP socket of its own, as a
//! store machine would, finds its starting cursor the way an agent
//! bootstraps (snapshot pages of its location; the items are dropped, only
//! the head is kept), then syncs every `interval`: `Changes` requests after
//! its cursor for its one location, page after page until the page reaches
//! the head, as the agent's sync loop does (`shelfsync-agent`'s `sync.rs`).
//! A `CursorExpired` answer sends it back to the snapshot. It keeps nothing
//! but the cursor and counts: no replica, no store reports, no writes.
//!
//! The stores start spread evenly over one interval, so N stores make about
//! N syncs a second at a 1 s interval, not N at once. A sync that fails is
//! counted and the store tries again at its next tick (reconnecting first
//! when its connection closed); the run ends by itself after `duration`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shelfsync_proto::{
    ChangesRequest, Client, ProtoError, Request, Response, SnapshotRequest, TlsFiles,
};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::LoadError;

/// Changes or items asked for per page (the agent's page size).
const PAGE: u32 = 1000;
/// Most pages one sync (or one bootstrap) reads before it gives up until
/// the next tick: a bound against a coordinator that never reaches its head.
const MAX_PAGES_PER_SYNC: u64 = 10_000;

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
    /// Directory with `ca.pem` and `fleet-i.pem/.key`.
    pub certs: PathBuf,
    /// Stores `fleet-1` .. `fleet-N`, at least 1.
    pub stores: usize,
    /// Time between the starts of two syncs of one store, above 0.
    pub interval: Duration,
    /// Store `fleet-i` syncs location `locations_prefix` + `i`.
    pub locations_prefix: String,
    /// How long the stores sync once all are connected, above 0.
    pub duration: Duration,
    /// Longest wait for a handshake or one answer.
    pub timeout: Duration,
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
    /// `Changes` pages received.
    pub pages: u64,
    /// Changes received (changes to its own location).
    pub changes: u64,
    /// Its cursor at the end.
    pub cursor: u64,
    /// Times the coordinator answered `CursorExpired` (a new bootstrap followed).
    pub cursor_expired: u64,
    /// Syncs that failed (refused, transport error, timeout).
    pub errors: u64,
    /// Connections opened again after the previous one closed.
    pub reconnects: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// What the whole fleet did; one JSON object with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Stores in the fleet.
    pub stores: usize,
    /// The sync interval, milliseconds.
    pub interval_ms: u64,
    /// Seconds the stores synced (after every connection and bootstrap).
    pub duration_s: f64,
    /// Syncs completed by all stores.
    pub syncs: u64,
    /// `syncs` per second of `duration_s`.
    pub syncs_per_s: f64,
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
    /// Every store's own counts, in store order (not in the JSON line).
    #[serde(skip)]
    pub per_store: Vec<StoreSyncs>,
}

impl FleetReport {
    fn new(settings: &FleetSettings, elapsed: Duration, per_store: Vec<StoreSyncs>) -> Self {
        let sum = |f: fn(&StoreSyncs) -> u64| per_store.iter().map(f).sum::<u64>();
        let syncs = sum(|s| s.syncs);
        let duration_s = elapsed.as_secs_f64();
        FleetReport {
            stores: settings.stores,
            interval_ms: u64::try_from(settings.interval.as_millis()).unwrap_or(u64::MAX),
            duration_s: crate::report::round(duration_s, 3),
            syncs,
            syncs_per_s: if duration_s > 0.0 {
                crate::report::round(syncs as f64 / duration_s, 1)
            } else {
                0.0
            },
            pages: sum(|s| s.pages),
            changes: sum(|s| s.changes),
            cursor_expired: sum(|s| s.cursor_expired),
            errors: sum(|s| s.errors),
            min_store_syncs: per_store.iter().map(|s| s.syncs).min().unwrap_or(0),
            max_store_syncs: per_store.iter().map(|s| s.syncs).max().unwrap_or(0),
            per_store,
        }
    }

    /// The report as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as one line of text.
    pub fn text(&self) -> String {
        format!(
            "fleet: {} stores, interval {} ms, {:.1} s: {} syncs ({:.1}/s), {} pages, \
             {} changes, {} cursor expiries, {} errors; syncs per store {}..{}\n",
            self.stores,
            self.interval_ms,
            self.duration_s,
            self.syncs,
            self.syncs_per_s,
            self.pages,
            self.changes,
            self.cursor_expired,
            self.errors,
            self.min_store_syncs,
            self.max_store_syncs,
        )
    }
}

/// One fleet store: who it is, its connection, its cursor and counts.
struct Store {
    index: usize,
    /// Its certificate files, loaded again when it reconnects.
    files: TlsFiles,
    client: Option<Client>,
    counts: StoreSyncs,
}

/// Runs the fleet: connects every store, finds each one's cursor, syncs
/// them all for `settings.duration`, and reports.
///
/// # Errors
/// Missing certificates, a store whose certificate cannot be loaded or
/// that cannot connect, or whose location is not readable for it (all
/// before the clock starts). Failed syncs while running are counted.
pub async fn run(settings: &FleetSettings) -> Result<FleetReport, LoadError> {
    let found = count_certs(&settings.certs);
    if found < settings.stores {
        return Err(LoadError::MissingFleetCerts {
            dir: settings.certs.clone(),
            needed: settings.stores,
            found,
        });
    }
    let stores = connect_all(settings).await?;
    if settings.progress {
        eprintln!(
            "fleet: {} stores connected and bootstrapped; syncing every {} for {}",
            settings.stores,
            humantime::format_duration(settings.interval),
            humantime::format_duration(settings.duration),
        );
    }
    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut set = JoinSet::new();
    for store in stores {
        let settings = settings.clone();
        // Spread the stores' first syncs evenly over one interval.
        let phase = settings
            .interval
            .mul_f64((store.index - 1) as f64 / settings.stores as f64);
        set.spawn(sync_loop(store, settings, started + phase, deadline));
    }
    let mut done = Vec::with_capacity(settings.stores);
    while let Some(joined) = set.join_next().await {
        done.push(joined.map_err(|e| LoadError::Internal(format!("a fleet store failed: {e}")))?);
    }
    let elapsed = started.elapsed();
    done.sort_by_key(|s| s.index);
    let mut closing = JoinSet::new();
    let mut per_store = Vec::with_capacity(done.len());
    for store in done {
        if let Some(client) = store.client {
            closing.spawn(client.close());
        }
        per_store.push(store.counts);
    }
    while closing.join_next().await.is_some() {}
    let report = FleetReport::new(settings, elapsed, per_store);
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

/// Connects every store at once and reads its starting cursor.
async fn connect_all(settings: &FleetSettings) -> Result<Vec<Store>, LoadError> {
    let mut set = JoinSet::new();
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
        set.spawn(async move {
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
            let cursor =
                bootstrap(&client, &location)
                    .await
                    .map_err(|e| LoadError::FleetBootstrap {
                        store: id.clone(),
                        location: location.clone(),
                        detail: e.to_string(),
                    })?;
            Ok(Store {
                index,
                files,
                client: Some(client),
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

/// Why one sync failed; counted, then the store waits for its next tick.
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
}

/// The starting cursor of a replica of `location`: the head of the first
/// snapshot page, after reading every page as an agent's bootstrap does
/// (the items themselves are dropped).
async fn bootstrap(client: &Client, location: &str) -> Result<u64, SyncFailure> {
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
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(first_head),
        }
    }
    Err(SyncFailure::TooManyPages)
}

/// Syncs `store` at every tick from `first` on, until `deadline`.
async fn sync_loop(
    mut store: Store,
    settings: FleetSettings,
    first: Instant,
    deadline: Instant,
) -> Store {
    let mut ticks = tokio::time::interval_at(first, settings.interval);
    // A sync longer than the interval delays the next one rather than
    // bunching several, as the agent's sleep-after-sync loop would.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            at = ticks.tick() => if at >= deadline { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
        if let Err(err) = sync_once(&mut store, &settings).await {
            store.counts.errors += 1;
            store
                .counts
                .first_error
                .get_or_insert_with(|| err.to_string());
        }
    }
    store
}

/// One sync of `store`: reconnect when needed, then pages until the head.
async fn sync_once(store: &mut Store, settings: &FleetSettings) -> Result<(), SyncFailure> {
    let client = match store.client.take() {
        Some(client) if !client.is_closed() => client,
        stale => {
            if let Some(stale) = stale {
                stale.abandon();
            }
            store.counts.reconnects += 1;
            connect(settings, &store.files).await?
        }
    };
    let client = store.client.insert(client);
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
                counts.pages += 1;
                counts.changes += page.changes.len() as u64;
                counts.cursor = page.next;
                if page.next >= page.head {
                    counts.syncs += 1;
                    return Ok(());
                }
            }
            Response::CursorExpired { .. } => {
                counts.cursor_expired += 1;
                counts.cursor = bootstrap(client, &counts.location).await?;
            }
            Response::Error(err) => return Err(SyncFailure::Refused(err.to_string())),
            _ => return Err(SyncFailure::Unexpected("not a changes page")),
        }
    }
    Err(SyncFailure::TooManyPages)
}

/// Says on stderr which stores had failed syncs (the first few).
fn warn_errors(report: &FleetReport) {
    let failing: Vec<&StoreSyncs> = report.per_store.iter().filter(|s| s.errors > 0).collect();
    if failing.is_empty() {
        return;
    }
    eprintln!(
        "fleet: {} of {} stores had failed syncs ({} in all); the first:",
        failing.len(),
        report.stores,
        report.errors
    );
    for store in failing.iter().take(5) {
        eprintln!(
            "  {}: {} failed, first: {}",
            store.store,
            store.errors,
            store.first_error.as_deref().unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_locations_are_numbered_from_one() {
        assert_eq!(store_id(1), "fleet-1");
        assert_eq!(location("idle-", 42), "idle-42");
    }

    #[test]
    fn the_report_sums_the_stores() {
        let settings = FleetSettings {
            coordinator: "127.0.0.1:7400".parse().unwrap(),
            server_name: "localhost".into(),
            certs: PathBuf::from("certs"),
            stores: 2,
            interval: Duration::from_millis(500),
            locations_prefix: "idle-".into(),
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            progress: false,
        };
        let store = |syncs, errors| StoreSyncs {
            syncs,
            pages: syncs + 1,
            errors,
            ..StoreSyncs::default()
        };
        let report = FleetReport::new(
            &settings,
            Duration::from_secs(2),
            vec![store(4, 0), store(3, 1)],
        );
        assert_eq!(report.syncs, 7);
        assert_eq!(report.pages, 9);
        assert_eq!(report.errors, 1);
        assert_eq!((report.min_store_syncs, report.max_store_syncs), (3, 4));
        assert_eq!(report.syncs_per_s, 3.5);
        assert_eq!(report.interval_ms, 500);
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["syncs"], 7);
        assert!(json.get("per_store").is_none());
        assert!(
            report.text().contains("7 syncs (3.5/s)"),
            "{}",
            report.text()
        );
    }
}
