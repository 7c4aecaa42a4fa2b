//! Driving the coordinator: connections, preload, and the measured loop.
//!
//! [`run`] opens one mutual-TLS QUIC connection per store certificate
//! (`load-1` .. `load-N`, connection `i` presents store `load-i`), optionally
//! creates the keys ([`RunSettings::preload`]), then measures once per
//! connection count, in the order given, reusing the first `n` connections
//! for a count of `n`. Each connection runs `in_flight` tasks, each sending
//! one write at a time, all on one stream of its own (a
//! [`shelfsync_proto::client::Session`], reopened after an error), so
//! `n * in_flight` writes are outstanding at once. For carts and batches
//! ([`crate::cart`]) read "op" for "write": an op is one cart (its hold, then
//! its fulfil, on the same stream) or one batch, counted once, its latency
//! from its first request to its last answer.
//!
//! The tasks of a connection share its counters and latency histogram
//! (microseconds, answered writes only, after the warmup); the connections'
//! counts are merged when the measurement ends. A measurement ends at its
//! deadline (`--duration`: no write starts after it, writes under way are
//! waited for and counted) or when its op budget is spent (`--ops`: every
//! write takes a ticket first, so accepted + rejected + errors is exactly
//! the budget unless connections died).
//!
//! The optimistic workload reads `expected_version` from one
//! [`VersionCache`] shared by all connections: the freshest version any
//! connection has seen, from write acks, from the `current` item of a
//! version-mismatch rejection, from the preload, or from a strong read when
//! nothing is known yet. This models agents with up-to-date replicas, so the
//! conflicts it counts come from writers racing on one key, not from replica
//! lag. A conflict is counted and not retried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::client::Session;
use shelfsync_proto::{
    Client, ErrorCode, ProtoError, ReadRequest, Request, Response, TlsFiles, WireError,
    WriteRequest,
};
use tokio::task::JoinSet;

use crate::cart::{Exchange, Next, distinct_keys};
use crate::error::LoadError;
use crate::keys::{KeyDistribution, KeyPicker, sku};
use crate::report::{Measurement, round};
use crate::setup::{count_store_certs, store_id};
use crate::workload::{Outcome, Workload};

/// Quantity each preloaded item is created with: enough that a run of
/// `remove 1` never empties it, and within the amount limit of the model.
pub const PRELOAD_QUANTITY: u64 = shelfsync_core::item::MAX_AMOUNT;
/// Creates outstanding per connection while preloading.
const PRELOAD_IN_FLIGHT: usize = 8;
/// Attempts per key when a preload create fails in transport.
const PRELOAD_ATTEMPTS: u32 = 3;
/// Highest latency the histogram holds, microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// When a measurement ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this long (warmup excluded).
    Duration(Duration),
    /// After this many writes (warmup excluded).
    Ops(u64),
}

/// A validated `run`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The coordinator's QUIC address.
    pub coordinator: SocketAddr,
    /// The name checked on the coordinator's certificate.
    pub server_name: String,
    /// Directory with `ca.pem` and `load-i.pem/.key`.
    pub certs: PathBuf,
    /// Connection counts, one measurement each, in order. Each at least 1.
    pub connections: Vec<usize>,
    /// Writes outstanding per connection, at least 1.
    pub in_flight: usize,
    /// UDP sockets the connections share (connection i uses socket i mod
    /// this), at least 1.
    pub sockets: usize,
    /// Total writes/s to aim at, spread evenly over the tasks; `None` sends
    /// each task's next write as soon as the last is answered.
    pub rate: Option<f64>,
    /// Size of the key space, at least 1.
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// What the writes do.
    pub workload: Workload,
    /// When each measurement ends.
    pub limit: Limit,
    /// Time run before each measurement, not counted.
    pub warmup: Duration,
    /// Create the keys before measuring.
    pub preload: bool,
    /// The location of every key.
    pub location: String,
    /// The label of the measurements (the chart's series).
    pub label: String,
    /// Longest wait for the handshake or one answer.
    pub timeout: Duration,
    /// Print preload progress on stderr.
    pub progress: bool,
}

/// The freshest version known of every key; 0 means unknown.
#[derive(Debug)]
pub struct VersionCache(Vec<AtomicU64>);

impl VersionCache {
    /// A cache of `keys` unknown versions.
    pub fn new(keys: u64) -> Self {
        VersionCache((0..keys).map(|_| AtomicU64::new(0)).collect())
    }

    /// The version known for key `index`, 0 when none.
    pub fn get(&self, index: u64) -> u64 {
        self.slot(index).map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Records that key `index` was seen at `version`; versions only grow,
    /// so an older answer arriving late never replaces a newer one.
    pub fn observe(&self, index: u64, version: u64) {
        if let Some(slot) = self.slot(index) {
            slot.fetch_max(version, Ordering::Relaxed);
        }
    }

    fn slot(&self, index: u64) -> Option<&AtomicU64> {
        usize::try_from(index).ok().and_then(|i| self.0.get(i))
    }
}

/// Runs every measurement of `settings`, calling `on_measurement` as each
/// one ends, and returns them all.
///
/// # Errors
/// Missing certificates, a connection that cannot be made, a store that may
/// not write the location, or a failed preload. Rejections and transport
/// errors during a measurement are counted, not returned.
pub async fn run(
    settings: &RunSettings,
    mut on_measurement: impl FnMut(&Measurement),
) -> Result<Vec<Measurement>, LoadError> {
    let needed = settings.connections.iter().copied().max().unwrap_or(0);
    let found = count_store_certs(&settings.certs);
    if found < needed {
        return Err(LoadError::MissingCerts {
            dir: settings.certs.clone(),
            needed,
            found,
        });
    }
    let picker = KeyPicker::new(settings.distribution, settings.keys).map_err(LoadError::Usage)?;
    let clients = connect_all(settings, needed).await?;
    let shared = Arc::new(Shared {
        location: settings.location.clone(),
        versions: VersionCache::new(settings.keys),
        run_id: run_id(),
    });
    if settings.preload {
        preload(&clients, &shared, settings).await?;
    }
    let mut measurements = Vec::new();
    for (number, &count) in settings.connections.iter().enumerate() {
        let clients = &clients[..count];
        // A sweep goes on only while every connection it needs is open: a
        // measurement over dead connections would only count errors.
        if let Some(i) = clients.iter().position(|c| c.is_closed()) {
            return Err(LoadError::Closed {
                store: store_id(i + 1),
            });
        }
        let measurement = measure(clients, &shared, &picker, settings, number).await?;
        on_measurement(&measurement);
        measurements.push(measurement);
    }
    // All at once: connections that share a socket wait for each other's
    // close to finish (the socket's endpoint goes idle only then).
    let mut closing = JoinSet::new();
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            closing.spawn(client.close());
        }
    }
    while closing.join_next().await.is_some() {}
    Ok(measurements)
}

/// What every task of a run shares.
struct Shared {
    location: String,
    versions: VersionCache,
    /// Makes idempotency keys unique across runs, so a second run against
    /// the same coordinator never gets the first run's recorded outcomes.
    run_id: String,
}

impl Shared {
    fn key(&self, index: u64) -> ItemKey {
        ItemKey {
            location: self.location.clone(),
            sku: sku(index),
        }
    }
}

fn run_id() -> String {
    format!(
        "lg-{:x}-{:08x}",
        shelfsync_proto::time::now_ms(),
        rand::random::<u32>()
    )
}

/// Opens connections 1..=n concurrently, each as store `load-i`.
async fn connect_all(settings: &RunSettings, n: usize) -> Result<Vec<Arc<Client>>, LoadError> {
    let sockets = (0..settings.sockets.clamp(1, n.max(1)))
        .map(|_| shelfsync_proto::client::client_endpoint(settings.coordinator))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LoadError::Socket)?;
    let mut set = JoinSet::new();
    for i in 1..=n {
        let endpoint = sockets[i % sockets.len()].clone();
        let store = store_id(i);
        let files = TlsFiles {
            ca_cert: settings.certs.join("ca.pem"),
            cert: settings.certs.join(format!("{store}.pem")),
            key: settings.certs.join(format!("{store}.key")),
        };
        let config =
            shelfsync_proto::tls::client_config(&files).map_err(|source| LoadError::Tls {
                store: store.clone(),
                source: Box::new(source),
            })?;
        let addr = settings.coordinator;
        let server_name = settings.server_name.clone();
        let timeout = settings.timeout;
        let location = settings.location.clone();
        set.spawn(async move {
            let client = Client::connect_on(endpoint, addr, &server_name, config, timeout)
                .await
                .map_err(|source| LoadError::Connect {
                    store: store.clone(),
                    addr,
                    source: Box::new(source),
                })?;
            if !client.hello().writable.contains(&location) {
                return Err(LoadError::NotWritable {
                    store,
                    location,
                    writable: client.hello().writable.clone(),
                });
            }
            Ok((i, client))
        });
    }
    let mut clients: Vec<Option<Arc<Client>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, client) = joined.map_err(|e| LoadError::Internal(e.to_string()))??;
        if let Some(slot) = clients.get_mut(i - 1) {
            *slot = Some(Arc::new(client));
        }
    }
    clients
        .into_iter()
        .map(|c| c.ok_or_else(|| LoadError::Internal("a connection went missing".into())))
        .collect()
}

/// Creates keys 0..keys (AlreadyExists is fine) and primes the version cache.
async fn preload(
    clients: &[Arc<Client>],
    shared: &Arc<Shared>,
    settings: &RunSettings,
) -> Result<(), LoadError> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let existed = Arc::new(AtomicU64::new(0));
    let keys = settings.keys;
    let mut set = JoinSet::new();
    for client in clients {
        for _ in 0..PRELOAD_IN_FLIGHT {
            let (client, shared) = (client.clone(), shared.clone());
            let (next, created, existed) = (next.clone(), created.clone(), existed.clone());
            set.spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= keys {
                        return Ok(());
                    }
                    let fresh = create(&client, &shared, index).await?;
                    if fresh { &created } else { &existed }.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let progress = settings.progress.then(|| {
        let (created, existed) = (created.clone(), existed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = created.load(Ordering::Relaxed) + existed.load(Ordering::Relaxed);
                eprintln!("preload: {done}/{keys} keys");
            }
        })
    });
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let outcome = joined
            .map_err(|e| LoadError::Internal(e.to_string()))
            .and_then(|r| r);
        if let Err(err) = outcome {
            // Dropping the set below aborts the other tasks.
            result = Err(err);
            break;
        }
    }
    drop(set);
    if let Some(progress) = progress {
        progress.abort();
    }
    result?;
    if settings.progress {
        eprintln!(
            "preload: {keys} keys ready ({} created, {} already there) in {:.1} s",
            created.load(Ordering::Relaxed),
            existed.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Creates key `index`; true when created, false when it existed. Either
/// way its version goes into the cache.
async fn create(client: &Client, shared: &Shared, index: u64) -> Result<bool, LoadError> {
    let key = shared.key(index);
    let request = Request::Write(WriteRequest {
        idempotency_key: format!("{}-pre-{index}", shared.run_id),
        key: key.clone(),
        op: Op::Create {
            name: format!("Load test item {}", key.sku),
            quantity: PRELOAD_QUANTITY,
        },
        expected_version: None,
        lock_token: None,
    });
    let failed = |detail: String| LoadError::Preload {
        sku: key.sku.clone(),
        detail,
    };
    let mut attempt = 1;
    loop {
        match client.call(&request).await {
            Ok(Response::Write(ack)) => {
                shared.versions.observe(index, ack.state.version());
                return Ok(true);
            }
            Ok(Response::Error(err)) if err.code == ErrorCode::AlreadyExists => {
                if let Some(current) = &err.current {
                    shared.versions.observe(index, current.version);
                }
                return Ok(false);
            }
            Ok(Response::Error(err)) => {
                return Err(failed(format!("{} ({})", err, err.code.as_str())));
            }
            Ok(other) => return Err(failed(format!("unexpected reply {other:?}"))),
            Err(err) if err.is_retryable() && attempt < PRELOAD_ATTEMPTS => attempt += 1,
            Err(err) => return Err(failed(err.to_string())),
        }
    }
}

/// What one measurement's tasks share.
struct Plan {
    shared: Arc<Shared>,
    /// Start of every idempotency key of this measurement: the run id and
    /// the measurement's number; the connection, task and a counter follow.
    prefix: String,
    picker: KeyPicker,
    workload: Workload,
    gate: Gate,
    /// Time between two writes of one task under `--rate`.
    period: Option<Duration>,
}

/// Which writes of a measurement may start and which of them count: the
/// warmup first, then until the deadline (`--duration`) or until the ops
/// budget is spent (`--ops`). Shared by every task of a measurement.
#[derive(Debug)]
pub(crate) struct Gate {
    measure_from: Instant,
    deadline: Option<Instant>,
    /// Ops budget left to take tickets from (`--ops`).
    budget: Option<u64>,
    tickets: AtomicU64,
}

impl Gate {
    /// A gate opening now: `warmup` unmeasured, then `limit`.
    pub(crate) fn new(warmup: Duration, limit: Limit) -> Self {
        let measure_from = Instant::now() + warmup;
        let (deadline, budget) = match limit {
            Limit::Duration(d) => (Some(measure_from + d), None),
            Limit::Ops(n) => (None, Some(n)),
        };
        Gate {
            measure_from,
            deadline,
            budget,
            tickets: AtomicU64::new(0),
        }
    }

    /// When the warmup ends and measuring starts.
    pub(crate) fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// Whether a write started now is measured; `None` when no more writes
    /// may start.
    pub(crate) fn admit(&self) -> Option<bool> {
        let now = Instant::now();
        if now < self.measure_from {
            return Some(false);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        if let Some(budget) = self.budget
            && self.tickets.fetch_add(1, Ordering::Relaxed) >= budget
        {
            return None;
        }
        Some(true)
    }
}

/// The counts of one connection, shared by its tasks. One per connection
/// rather than per task keeps memory flat in `--in-flight` (a histogram
/// holds about 190 KiB); its lock is held for a few counter updates.
/// ([`crate::redis`] keeps one per client, owned by its single task.)
pub(crate) struct Tally {
    latency: Histogram<u64>,
    pub(crate) accepted: u64,
    pub(crate) rejected: BTreeMap<&'static str, u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Result<Self, LoadError> {
        Ok(Tally {
            latency: histogram()?,
            accepted: 0,
            rejected: BTreeMap::new(),
            errors: 0,
            first_error: None,
        })
    }

    pub(crate) fn error(&mut self, detail: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.max(1));
    }

    pub(crate) fn merge(&mut self, other: Tally) -> Result<(), LoadError> {
        self.latency
            .add(&other.latency)
            .map_err(|e| LoadError::Internal(format!("cannot merge histograms: {e}")))?;
        self.accepted += other.accepted;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    /// Says on stderr how many writes got no answer, and the first reason.
    pub(crate) fn warn_errors(&self, connections: usize) {
        if let Some(first) = &self.first_error {
            eprintln!(
                "warning: {} write(s) failed without an answer at {connections} connection(s); \
                 first: {first}",
                self.errors
            );
        }
    }
}

/// The tally, also after a task panicked while holding it: counts stay
/// meaningful, and the panic is reported by the join.
fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| LoadError::Internal(format!("cannot create a histogram: {e}")))
}

/// Measures once over `clients`; `number` (the measurement's place in the
/// sweep) keeps its idempotency keys apart from those of other measurements.
async fn measure(
    clients: &[Arc<Client>],
    shared: &Arc<Shared>,
    picker: &KeyPicker,
    settings: &RunSettings,
    number: usize,
) -> Result<Measurement, LoadError> {
    let plan = Arc::new(Plan {
        shared: shared.clone(),
        prefix: format!("{}-m{number}", shared.run_id),
        picker: picker.clone(),
        workload: settings.workload.clone(),
        gate: Gate::new(settings.warmup, settings.limit),
        period: settings.rate.map(|rate| {
            let tasks = (clients.len() * settings.in_flight) as f64;
            Duration::from_secs_f64(tasks / rate)
        }),
    });
    let seed: u64 = rand::random();
    let mut set = JoinSet::new();
    let mut tallies = Vec::with_capacity(clients.len());
    for (conn, client) in clients.iter().enumerate() {
        let tally = Arc::new(Mutex::new(Tally::new()?));
        for slot in 0..settings.in_flight {
            let task_seed = seed ^ ((conn as u64) << 32 | slot as u64);
            set.spawn(worker(
                plan.clone(),
                client.clone(),
                conn + 1,
                slot,
                task_seed,
                tally.clone(),
            ));
        }
        tallies.push(tally);
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| LoadError::Internal(e.to_string()))?;
    }
    let mut total = Tally::new()?;
    for tally in tallies {
        let tally = Arc::try_unwrap(tally)
            .map_err(|_| LoadError::Internal("a task still holds its tally".into()))?
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        total.merge(tally)?;
    }
    let elapsed = Instant::now().saturating_duration_since(plan.gate.measure_from());
    total.warn_errors(clients.len());
    Ok(measurement(settings.shape(clients.len()), elapsed, &total))
}

/// What a measurement was of: the fields of a [`Measurement`] that are not
/// counts.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub(crate) label: String,
    pub(crate) connections: usize,
    pub(crate) in_flight: usize,
    pub(crate) workload: String,
    pub(crate) distribution: KeyDistribution,
    pub(crate) keys: u64,
}

impl RunSettings {
    fn shape(&self, connections: usize) -> Shape {
        Shape {
            label: self.label.clone(),
            connections,
            in_flight: self.in_flight,
            workload: self.workload.to_string(),
            distribution: self.distribution,
            keys: self.keys,
        }
    }
}

/// The report of a measurement from its merged counts.
pub(crate) fn measurement(shape: Shape, elapsed: Duration, total: &Tally) -> Measurement {
    let rejected: BTreeMap<String, u64> = total
        .rejected
        .iter()
        .map(|(reason, n)| ((*reason).to_owned(), *n))
        .collect();
    let answered = total.accepted + rejected.values().sum::<u64>();
    // Rates use the rounded duration that is reported, so they agree with it.
    let seconds = round(elapsed.as_secs_f64(), 3);
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    let quantile = |q: f64| {
        if total.latency.is_empty() {
            0.0
        } else {
            ms(total.latency.value_at_quantile(q))
        }
    };
    Measurement {
        label: shape.label,
        connections: shape.connections,
        in_flight: shape.in_flight,
        workload: shape.workload,
        distribution: shape.distribution.to_string(),
        keys: shape.keys,
        duration_s: seconds,
        ops: answered + total.errors,
        accepted: total.accepted,
        rejected,
        errors: total.errors,
        writes_per_s: if seconds > 0.0 {
            round(answered as f64 / seconds, 1)
        } else {
            0.0
        },
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        p999_ms: quantile(0.999),
        max_ms: if total.latency.is_empty() {
            0.0
        } else {
            ms(total.latency.max())
        },
    }
}

/// One sender: one op at a time on `client`, all on one stream, until the
/// plan says stop.
async fn worker(
    plan: Arc<Plan>,
    client: Arc<Client>,
    conn: usize,
    slot: usize,
    seed: u64,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counter: u64 = 0;
    // One stream per task, carrying its requests in turn.
    let mut session: Option<Session> = None;
    // Under --rate, tasks start at random phases of their period, so the
    // writes arrive spread out rather than in bursts of one per task.
    let mut next_send = plan
        .period
        .map(|period| tokio::time::Instant::now() + period.mul_f64(rng.random::<f64>()));
    loop {
        if let (Some(at), Some(period)) = (next_send.as_mut(), plan.period) {
            tokio::time::sleep_until(*at).await;
            // A task that fell behind does not try to catch up in a burst.
            *at = (*at + period).max(tokio::time::Instant::now());
        }
        let Some(measured) = plan.gate.admit() else {
            break;
        };
        counter += 1;
        let idempotency_key = format!("{}-{conn}-{slot}-{counter}", plan.prefix);
        let sent = Instant::now();
        let outcome = match plan.workload.lines() {
            Some(lines) => {
                let owner = format!("{}-{slot}", store_id(conn));
                multi_key(
                    &plan,
                    &client,
                    &mut session,
                    &mut rng,
                    lines,
                    owner,
                    idempotency_key,
                )
                .await
            }
            None => single_key(&plan, &client, &mut session, &mut rng, idempotency_key).await,
        };
        let latency = sent.elapsed();
        let failed = matches!(outcome, Outcome::Failed(_));
        if measured {
            let mut tally = lock(&tally);
            match outcome {
                Outcome::Accepted => {
                    tally.accepted += 1;
                    tally.record(latency);
                }
                Outcome::Rejected(code) => {
                    *tally.rejected.entry(code.as_str()).or_default() += 1;
                    tally.record(latency);
                }
                Outcome::Failed(detail) => tally.error(|| detail),
            }
        }
        if failed && client.is_closed() {
            break;
        }
    }
    if let Some(open) = session {
        open.finish();
    }
}

/// Sends `request` on the task's stream, opening one when there is none.
/// After an error the stream's state is unknown: it is dropped, and the
/// next request opens another.
async fn call(
    client: &Client,
    session: &mut Option<Session>,
    request: &Request,
) -> Result<Response, ProtoError> {
    let answer = match session.as_mut() {
        Some(open) => open.call(request).await,
        None => match client.session().await {
            Ok(mut open) => {
                let answer = open.call(request).await;
                *session = Some(open);
                answer
            }
            Err(err) => Err(err),
        },
    };
    if answer.is_err() {
        *session = None;
    }
    answer
}

/// One write to one key (optimistic, delta, mix), learning versions from
/// its answer.
async fn single_key(
    plan: &Plan,
    client: &Client,
    session: &mut Option<Session>,
    rng: &mut SmallRng,
    idempotency_key: String,
) -> Outcome {
    let versions = &plan.shared.versions;
    let index = plan.picker.pick(rng);
    let key = plan.shared.key(index);
    let Some(op) = plan.workload.next_op(rng) else {
        return Outcome::Failed(format!("workload {} has no single-key op", plan.workload));
    };
    let expected_version = if plan.workload.is_optimistic() {
        match known_version(client, versions, index, &key).await {
            Ok(version) => Some(version),
            Err(detail) => return Outcome::Failed(detail),
        }
    } else {
        None
    };
    let request = Request::Write(WriteRequest {
        idempotency_key,
        key,
        op,
        expected_version,
        lock_token: None,
    });
    match call(client, session, &request).await {
        Ok(Response::Write(ack)) => {
            versions.observe(index, ack.state.version());
            Outcome::Accepted
        }
        Ok(Response::Error(err)) => {
            learn_from_refusal(versions, index, &err);
            Outcome::Rejected(err.code)
        }
        Ok(other) => Outcome::Failed(format!("unexpected reply to a write: {other:?}")),
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

/// One cart or batch of `lines` distinct keys, from its first request to
/// its outcome ([`Exchange`]).
async fn multi_key(
    plan: &Plan,
    client: &Client,
    session: &mut Option<Session>,
    rng: &mut SmallRng,
    lines: usize,
    owner: String,
    idempotency_key: String,
) -> Outcome {
    let keys = distinct_keys(&plan.picker, rng, lines)
        .into_iter()
        .map(|index| plan.shared.key(index))
        .collect();
    let (mut exchange, mut request) = match &plan.workload {
        Workload::HoldThenFulfil { .. } => Exchange::hold_then_fulfil(keys, owner, idempotency_key),
        Workload::Batch { .. } => Exchange::batch(keys, idempotency_key),
        other => return Outcome::Failed(format!("workload {other} writes one key per op")),
    };
    loop {
        let answer = match call(client, session, &request).await {
            Ok(answer) => answer,
            Err(err) => return Outcome::Failed(err.to_string()),
        };
        match exchange.answer(answer) {
            Next::Send(next) => request = next,
            Next::Done(outcome) => return outcome,
        }
    }
}

/// A version-mismatch refusal carries the current item: refresh the cache.
fn learn_from_refusal(versions: &VersionCache, index: u64, err: &WireError) {
    if err.code == ErrorCode::VersionMismatch
        && let Some(current) = &err.current
    {
        versions.observe(index, current.version);
    }
}

/// The cached version of key `index`, or a strong read's when unknown (0
/// when the key does not exist: the write will be refused as not found).
async fn known_version(
    client: &Client,
    versions: &VersionCache,
    index: u64,
    key: &ItemKey,
) -> Result<u64, String> {
    let cached = versions.get(index);
    if cached > 0 {
        return Ok(cached);
    }
    let read = Request::Read(ReadRequest { key: key.clone() });
    match client.call(&read).await {
        Ok(Response::Read(reply)) => {
            versions.observe(index, reply.item.version);
            Ok(versions.get(index))
        }
        Ok(Response::Error(err)) if err.code == ErrorCode::NotFound => Ok(0),
        Ok(Response::Error(err)) => Err(format!("strong read of {key} refused: {err}")),
        Ok(other) => Err(format!("unexpected reply to a read: {other:?}")),
        Err(err) => Err(format!("strong read of {key} failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_cache_only_moves_forward() {
        let cache = VersionCache::new(3);
        assert_eq!(cache.get(1), 0);
        cache.observe(1, 5);
        cache.observe(1, 3);
        assert_eq!(cache.get(1), 5);
        cache.observe(1, 6);
        assert_eq!(cache.get(1), 6);
        // Out of range is ignored, not a panic.
        cache.observe(7, 1);
        assert_eq!(cache.get(7), 0);
    }

    #[test]
    fn measurement_counts_add_up_and_rates_use_answered_writes() {
        let settings = RunSettings {
            coordinator: "127.0.0.1:1".parse().unwrap(),
            server_name: "localhost".into(),
            certs: PathBuf::from("."),
            connections: vec![2],
            in_flight: 1,
            sockets: 1,
            rate: None,
            keys: 10,
            distribution: KeyDistribution::Uniform,
            workload: Workload::Optimistic,
            limit: Limit::Ops(10),
            warmup: Duration::ZERO,
            preload: false,
            location: "bench".into(),
            label: "t".into(),
            timeout: Duration::from_secs(1),
            progress: false,
        };
        let mut tally = Tally::new().unwrap();
        tally.accepted = 6;
        tally.rejected.insert("version_mismatch", 2);
        tally.error(|| "lost".into());
        tally.error(|| "lost again".into());
        for ms in [1, 2, 3, 4, 5, 6, 7, 100] {
            tally.record(Duration::from_millis(ms));
        }
        let m = measurement(settings.shape(2), Duration::from_secs(2), &tally);
        assert_eq!(m.ops, 10);
        assert_eq!(m.accepted + m.rejected_total() + m.errors, m.ops);
        assert_eq!(m.writes_per_s, 4.0);
        assert_eq!(m.accepted_per_s(), 3.0);
        assert_eq!(m.max_ms, 100.031);
        assert!((3.9..=4.01).contains(&m.p50_ms), "{}", m.p50_ms);
        assert_eq!(tally.first_error.as_deref(), Some("lost"));

        let empty = measurement(settings.shape(2), Duration::ZERO, &Tally::new().unwrap());
        assert_eq!(
            (empty.writes_per_s, empty.p99_ms, empty.max_ms),
            (0.0, 0.0, 0.0)
        );
    }
}
