//! The clients of a fault run: many tasks sending the ops of SPEC §2 and
//! §5 to the agents' REST APIs, each op recorded as an [`Event`]. Three
//! kinds of client share the run:
//!
//! - hot-key clients (`hot`): every op of SPEC §2 and batches of them, on a
//!   few hot keys of the shared location;
//! - lock clients (`locks`): compete for the locks of a few keys of the
//!   shared location, write with their token, without one and with stale
//!   ones, renew and release;
//! - stock clients (`stock`), one per store: ship transfers from their
//!   store's location to another store's, receive them at that store's
//!   agent in parts (over-receiving now and then), close them, and change
//!   their own stock with single-key ops and batches (some lines on hot
//!   keys).
//!
//! Each client sends one op at a time, chosen by its own generator (seeded
//! from the run's seed and the client's number). A write always carries an
//! `Idempotency-Key`; when its answer is indeterminate (a timeout, a
//! transport error, a 503 or another 5xx) the client sends the very same
//! request again with the same key, a bounded number of times, and records
//! one event from the first try to the last answer. Now and then a hot-key
//! client also sends an earlier write that was answered definitely once
//! more, with its key ([`Event::replay_of`]): a correct system answers it as
//! before and applies nothing.
//!
//! Which agent a client talks to can change under it (an agent restarted on
//! another port): [`Targets`] holds the current address of each store's
//! agent. How a request becomes HTTP and an answer an outcome is in `wire`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::nemesis::history::{Event, Key, Op};
use crate::rest::RestClient;
use crate::rng::Rng;

mod hot;
mod locks;
mod stock;
mod wire;

pub use wire::{classify, item_state, transfer_view};

/// How long a client waits for one answer: the agent's forward timeout
/// (3 s by default) and a margin.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of one write whose answers are indeterminate, before the client
/// records it as indeterminate and moves on.
const MAX_ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Earlier definite writes a client keeps for replays.
const REPLAY_MEMORY: usize = 16;

/// The agents the clients send to, by store id; updated when an agent
/// moves.
#[derive(Debug, Default)]
pub struct Targets {
    agents: RwLock<Vec<(String, RestClient)>>,
}

impl Targets {
    /// Sets (or replaces) the client of `store`'s agent.
    pub fn set(&self, store: &str, client: RestClient) {
        if let Ok(mut agents) = self.agents.write() {
            match agents.iter_mut().find(|(s, _)| s == store) {
                Some(entry) => entry.1 = client,
                None => agents.push((store.to_string(), client)),
            }
        }
    }

    /// The client of the `i`th store (modulo their number), with its id.
    fn pick(&self, i: u64) -> Option<(String, RestClient)> {
        let agents = self.agents.read().ok()?;
        if agents.is_empty() {
            return None;
        }
        let (store, client) = &agents[(i % agents.len() as u64) as usize];
        Some((store.clone(), client.clone()))
    }

    /// The client of `store`'s agent.
    pub(crate) fn get(&self, store: &str) -> Option<(String, RestClient)> {
        let agents = self.agents.read().ok()?;
        let (store, client) = agents.iter().find(|(s, _)| s == store)?;
        Some((store.clone(), client.clone()))
    }

    /// How many agents there are.
    fn len(&self) -> u64 {
        self.agents.read().map(|a| a.len() as u64).unwrap_or(0)
    }
}

/// The events of a run, numbered as they are invoked.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            next_id: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder was made.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn push(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// Every event so far, in invocation order.
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.sort_by_key(|e| e.id);
        events
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The hot keys, all in locations every store may write.
    pub keys: Vec<Key>,
    /// Concurrent hot-key clients (numbered from 0).
    pub clients: u32,
    /// The keys lock clients lock, in locations every store may write.
    pub lock_keys: Vec<Key>,
    /// Concurrent lock clients (numbered after the hot-key clients).
    pub lock_clients: u32,
    /// The stores; each has a stock client (numbered after the lock
    /// clients) writing the store's own location.
    pub stores: Vec<String>,
    /// The skus stock clients keep at each store's location.
    pub skus: Vec<String>,
    /// The run's seed; client `i` draws from `seed + i`.
    pub seed: u64,
}

/// A request as sent, kept to send it again (a retry or a replay).
#[derive(Debug, Clone)]
struct Request {
    key: Key,
    op: Op,
    if_match: Option<u64>,
    idempotency_key: Option<String>,
    lock_token: Option<u64>,
}

impl Request {
    /// A request without `If-Match` or `Lock-Token`.
    fn new(key: Key, op: Op) -> Self {
        Request {
            key,
            op,
            if_match: None,
            idempotency_key: None,
            lock_token: None,
        }
    }
}

/// What the clients watch: once `stop` is set they start no new op (the
/// one under way ends with its retries).
#[derive(Debug, Default)]
pub struct Control {
    /// No new ops once set.
    pub stop: AtomicBool,
}

/// Runs `workload`'s clients until `control.stop` is set, recording into
/// `recorder`. Returns once every client has finished its last op.
pub async fn run(
    workload: Workload,
    targets: Arc<Targets>,
    recorder: Arc<Recorder>,
    control: Arc<Control>,
) {
    let mut tasks = Vec::new();
    let base = |id: u32| Client {
        id,
        rng: Rng::seeded(workload.seed.wrapping_add(u64::from(id))),
        sent: 0,
    };
    let shared = (targets, recorder, control);
    for id in 0..workload.clients {
        let client = hot::HotClient::new(base(id), workload.keys.clone());
        let (targets, recorder, control) = shared.clone();
        tasks.push(tokio::spawn(async move {
            client.run(&targets, &recorder, &control).await;
        }));
    }
    let mut id = workload.clients;
    for _ in 0..workload.lock_clients {
        let client = locks::LockClient::new(base(id), workload.lock_keys.clone());
        let (targets, recorder, control) = shared.clone();
        tasks.push(tokio::spawn(async move {
            client.run(&targets, &recorder, &control).await;
        }));
        id += 1;
    }
    for home in 0..workload.stores.len() {
        let client = stock::StockClient::new(base(id), &workload, home);
        let (targets, recorder, control) = shared.clone();
        tasks.push(tokio::spawn(async move {
            client.run(&targets, &recorder, &control).await;
        }));
        id += 1;
    }
    for task in tasks {
        // A client task only ends by returning; a panic in one is a bug in
        // this module, which the run reports by its missing events.
        let _ = task.await;
    }
}

/// What every kind of client has: its number, its generator, and how many
/// idempotency keys it has made.
struct Client {
    id: u32,
    rng: Rng,
    sent: u64,
}

impl Client {
    /// A fresh idempotency key of this client.
    fn idempotency_key(&mut self) -> String {
        self.sent += 1;
        format!(
            "c{}-{}-{}",
            self.id,
            self.sent,
            self.rng.next_u64() % 1_000_000
        )
    }

    /// `request` with a fresh idempotency key when it is a write.
    fn keyed(&mut self, mut request: Request) -> Request {
        if request.op.is_write() {
            request.idempotency_key = Some(self.idempotency_key());
        }
        request
    }

    /// Sends `request` (again, with the same idempotency key, while its
    /// answers are indeterminate) and records how it ended.
    async fn perform(
        &mut self,
        recorder: &Recorder,
        store: &str,
        rest: &RestClient,
        request: Request,
        replay_of: Option<u64>,
    ) -> Event {
        let id = recorder.next_id();
        let invoked_ns = recorder.now_ns();
        let mut attempts = 0;
        let mut pause = FIRST_RETRY;
        let (outcome, reply) = loop {
            attempts += 1;
            let (outcome, reply) = wire::send(rest, &request).await;
            let retry = request.op.is_write()
                && !outcome.is_definite()
                && attempts < MAX_ATTEMPTS
                && replay_of.is_none();
            if !retry {
                break (outcome, reply);
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        };
        let event = Event {
            id,
            client: self.id,
            store: store.to_string(),
            key: request.key,
            op: request.op,
            if_match: request.if_match,
            idempotency_key: request.idempotency_key,
            invoked_ns,
            completed_ns: recorder.now_ns(),
            outcome,
            attempts,
            replay_of,
            lock_token: request.lock_token,
            reply,
        };
        recorder.push(event.clone());
        event
    }
}
