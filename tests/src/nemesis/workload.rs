//! The clients of a fault run: many tasks sending every op of SPEC §2 to
//! the agents' REST APIs, on a few hot keys, each op recorded as an
//! [`Event`].
//!
//! Each client sends one op at a time, chosen by its own generator (seeded
//! from the run's seed and the client's number), to its home agent mostly
//! and to another one now and then. A write always carries an
//! `Idempotency-Key`; when its answer is indeterminate (a timeout, a
//! transport error, a 503 or another 5xx) the client sends the very same
//! request again with the same key, a bounded number of times, and records
//! one event from the first try to the last answer. Now and then a client
//! also sends an earlier write that was answered definitely once more, with
//! its key ([`Event::replay_of`]): a correct system answers it as before and
//! applies nothing.
//!
//! Which agent a client talks to can change under it (an agent restarted on
//! another port): [`Targets`] holds the current address of each store's
//! agent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::nemesis::history::{Event, ItemState, Key, Op, Outcome};
use crate::rest::{RestClient, RestReply, item_path};
use crate::rng::Rng;

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
    fn get(&self, store: &str) -> Option<(String, RestClient)> {
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
    /// Concurrent clients.
    pub clients: u32,
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
    for client in 0..workload.clients {
        let state = ClientState {
            id: client,
            rng: Rng::seeded(workload.seed.wrapping_add(u64::from(client))),
            keys: workload.keys.clone(),
            versions: Vec::new(),
            answered: Vec::new(),
            sent: 0,
        };
        let (targets, recorder, control) = (targets.clone(), recorder.clone(), control.clone());
        tasks.push(tokio::spawn(async move {
            state.run(&targets, &recorder, &control).await;
        }));
    }
    for task in tasks {
        // A client task only ends by returning; a panic in one is a bug in
        // this module, which the run reports by its missing events.
        let _ = task.await;
    }
}

struct ClientState {
    id: u32,
    rng: Rng,
    keys: Vec<Key>,
    /// The last version this client saw per key.
    versions: Vec<(Key, u64)>,
    /// Recent definite writes, for replays: (event id, request, store).
    answered: Vec<(u64, Request, String)>,
    sent: u64,
}

impl ClientState {
    async fn run(mut self, targets: &Targets, recorder: &Recorder, control: &Control) {
        while !control.stop.load(Ordering::Relaxed) {
            let agents = targets.len();
            if agents == 0 {
                return;
            }
            // Mostly the home agent, sometimes another.
            let pick = if self.rng.below(5) == 0 {
                self.rng.below(agents)
            } else {
                u64::from(self.id)
            };
            let (request, replay_of, home) = self.next_request();
            // A replay goes to the store that sent the original: an
            // idempotency key is that store's.
            let target = match home {
                Some(store) => targets.get(&store),
                None => targets.pick(pick),
            };
            let Some((store, rest)) = target else {
                return;
            };
            let event = self
                .perform(recorder, &store, &rest, request, replay_of)
                .await;
            self.learn(&event, &store);
            recorder.push(event);
        }
    }

    fn version_of(&self, key: &Key) -> Option<u64> {
        self.versions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// The next op: mostly a new one, sometimes an earlier write again.
    /// Returns the request, and for a replay the id of the original and
    /// the store that sent it.
    fn next_request(&mut self) -> (Request, Option<u64>, Option<String>) {
        if !self.answered.is_empty() && self.rng.below(20) == 0 {
            let i = self.rng.below(self.answered.len() as u64) as usize;
            let (id, request, store) = self.answered[i].clone();
            return (request, Some(id), Some(store));
        }
        let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
        let known = self.version_of(&key);
        let amount = 1 + self.rng.below(3);
        let roll = self.rng.below(100);
        let op = match roll {
            0..=14 => Op::Read { strong: false },
            15..=29 => Op::Read { strong: true },
            30..=39 => Op::Add {
                amount: 1 + self.rng.below(5),
            },
            40..=49 => Op::Remove { amount },
            50..=61 => Op::Reserve { amount },
            62..=69 => Op::Release { amount },
            70..=75 => Op::Fulfil { amount },
            76..=83 => {
                if self.rng.below(2) == 0 {
                    Op::Set {
                        name: None,
                        quantity: Some(5 + self.rng.below(20)),
                    }
                } else {
                    Op::Set {
                        name: Some(format!("Item {}", self.rng.below(1000))),
                        quantity: None,
                    }
                }
            }
            84..=91 => Op::Create {
                name: format!("Item {}", key.sku),
                quantity: 10 + self.rng.below(10),
            },
            _ => Op::Delete,
        };
        let if_match = match op {
            Op::Set { .. } | Op::Delete => Some(known.unwrap_or(1)),
            Op::Read { .. } | Op::Create { .. } => None,
            _ => known.filter(|_| self.rng.below(5) == 0),
        };
        let idempotency_key = op.is_write().then(|| {
            self.sent += 1;
            format!(
                "c{}-{}-{}",
                self.id,
                self.sent,
                self.rng.next_u64() % 1_000_000
            )
        });
        (
            Request {
                key,
                op,
                if_match,
                idempotency_key,
            },
            None,
            None,
        )
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
        let outcome = loop {
            attempts += 1;
            let outcome = send(rest, &request).await;
            let retry = request.op.is_write()
                && !outcome.is_definite()
                && attempts < MAX_ATTEMPTS
                && replay_of.is_none();
            if !retry {
                break outcome;
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        };
        Event {
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
        }
    }

    /// Remembers the version an answer showed, and definite writes for
    /// replays.
    fn learn(&mut self, event: &Event, store: &str) {
        let seen = match &event.outcome {
            Outcome::Ok { item: Some(item) } => Some(item.version),
            Outcome::Refused {
                current: Some(item),
                ..
            } => Some(item.version),
            _ => None,
        };
        if let Some(version) = seen {
            match self.versions.iter_mut().find(|(k, _)| *k == event.key) {
                Some(entry) => entry.1 = version,
                None => self.versions.push((event.key.clone(), version)),
            }
        }
        if event.op.is_write() && event.outcome.is_definite() && event.replay_of.is_none() {
            let request = Request {
                key: event.key.clone(),
                op: event.op.clone(),
                if_match: event.if_match,
                idempotency_key: event.idempotency_key.clone(),
            };
            if self.answered.len() >= REPLAY_MEMORY {
                self.answered.remove(0);
            }
            self.answered.push((event.id, request, store.to_string()));
        }
    }
}

/// Sends one request and classifies its answer.
async fn send(rest: &RestClient, request: &Request) -> Outcome {
    let path = item_path(&request.key.location, &request.key.sku);
    let if_match = request.if_match.map(|v| format!("\"{v}\""));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(key) = &request.idempotency_key {
        headers.push(("Idempotency-Key", key));
    }
    if let Some(v) = &if_match {
        headers.push(("If-Match", v));
    }
    let (method, path, body) = match &request.op {
        Op::Read { strong: true } => (Method::GET, format!("{path}?consistency=strong"), None),
        Op::Read { strong: false } => (Method::GET, path, None),
        Op::Create { name, quantity } => (
            Method::PUT,
            path,
            Some(json!({"name": name, "quantity": quantity})),
        ),
        Op::Set { name, quantity } => {
            let mut body = serde_json::Map::new();
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if let Some(quantity) = quantity {
                body.insert("quantity".into(), json!(quantity));
            }
            (Method::PUT, path, Some(Value::Object(body)))
        }
        Op::Delete => (Method::DELETE, path, None),
        Op::Add { amount }
        | Op::Remove { amount }
        | Op::Reserve { amount }
        | Op::Release { amount }
        | Op::Fulfil { amount } => {
            let name = match request.op {
                Op::Add { .. } => "add",
                Op::Remove { .. } => "remove",
                Op::Reserve { .. } => "reserve",
                Op::Release { .. } => "release",
                _ => "fulfil",
            };
            (
                Method::POST,
                format!("{path}/{name}"),
                Some(json!({ "amount": amount })),
            )
        }
    };
    let body = body.map(|b| b.to_string().into_bytes());
    match rest
        .clone()
        .with_timeout(REQUEST_TIMEOUT)
        .send(method, &path, &headers, body)
        .await
    {
        Ok(reply) => classify(&reply),
        Err(err) => Outcome::Indeterminate {
            reason: format!("{err:#}"),
        },
    }
}

/// The outcome an answer stands for (SPEC §3's status codes).
pub fn classify(reply: &RestReply) -> Outcome {
    match reply.status {
        200 | 201 => Outcome::Ok {
            item: item_state(&reply.json),
        },
        204 => Outcome::Ok { item: None },
        404 | 409 | 412 | 422 | 428 => Outcome::Refused {
            status: reply.status,
            current: item_state(&reply.json["current"]),
        },
        _ => Outcome::Indeterminate {
            reason: format!(
                "{} {}",
                reply.status,
                reply.json["type"].as_str().unwrap_or("")
            ),
        },
    }
}

/// An item of the REST API as the checkers see it.
pub fn item_state(json: &Value) -> Option<ItemState> {
    Some(ItemState {
        name: json["name"].as_str()?.to_string(),
        quantity: json["quantity"].as_u64()?,
        reserved: json["reserved"].as_u64()?,
        version: json["version"].as_u64()?,
    })
}
