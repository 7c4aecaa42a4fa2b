//! What the coordinator answers to each request, independent of sockets.
//!
//! [`Service`] owns the store registry, access control and the read side
//! (history here; changes, snapshots, reports and status in `sync`); writes
//! and strong reads go to the [`Pipeline`]. The QUIC server calls
//! [`Service::identify`] once per connection and [`Service::handle`] once
//! per stream, and tests call them directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use shelfsync_core::{ItemKey, Op};
use shelfsync_ledger::{Ledger, LedgerError, StoredReport};
use shelfsync_proto::{
    ADMIN_IDENTITY, BatchRequest, ErrorCode, Hello, HelloReply, HistoryReply, HistoryRequest,
    MAX_BATCH_LINES, MAX_WRITES, PROTOCOL_VERSION, Request, Response, SOFTWARE_VERSION,
    SUPPORTED_VERSIONS, WireError, WriteRequest,
};

use self::registry::{Registry, Reloaded};
use crate::config::StoreConfig;
use crate::digests::Digests;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use tokio::sync::watch;

/// Most changes or snapshot items in one page.
pub const MAX_PAGE: u32 = 1000;
/// Most changes of one commit to one location (a commit has at most a few
/// hundred lines).
const MAX_COMMIT: usize = 100_000;
/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A registered store.
    Store(String),
    /// An administrator (`shelfctl`).
    Admin,
}

impl Peer {
    /// The identity as it appears in the change log.
    pub fn name(&self) -> &str {
        match self {
            Peer::Store(id) => id,
            Peer::Admin => ADMIN_IDENTITY,
        }
    }
}

/// The coordinator's request handling.
pub struct Service {
    ledger: Arc<dyn Ledger>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    digests: Arc<Digests>,
    /// The registered stores, swapped whole on a reload.
    registry: RwLock<Arc<Registry>>,
    /// Bumped on every reload, for connections to check their store.
    reloads: watch::Sender<u64>,
    connected: Mutex<HashMap<String, usize>>,
    reports: Mutex<HashMap<String, StoredReport>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("stores", &self.registry().stores().len())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Builds the service; remembered store reports are loaded from the ledger.
    pub fn new(
        ledger: Arc<dyn Ledger>,
        pipeline: Pipeline,
        metrics: Arc<Metrics>,
        digests: Arc<Digests>,
        stores: Vec<StoreConfig>,
    ) -> Result<Self, LedgerError> {
        let reports = ledger.reports()?.into_iter().collect();
        Ok(Service {
            ledger,
            pipeline,
            metrics,
            digests,
            registry: RwLock::new(Arc::new(Registry::new(stores))),
            reloads: watch::Sender::new(0),
            connected: Mutex::new(HashMap::new()),
            reports: Mutex::new(reports),
        })
    }

    /// The write pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Maps a certificate CN to a peer, refusing identities not registered.
    pub fn identify(&self, cn: &str) -> Result<Peer, WireError> {
        if cn == ADMIN_IDENTITY {
            return Ok(Peer::Admin);
        }
        if self.store(cn).is_some() {
            return Ok(Peer::Store(cn.to_string()));
        }
        Err(WireError::new(
            ErrorCode::UnknownPeer,
            format!("certificate identity {cn:?} is not a registered store"),
        ))
    }

    /// The store registry as it stands.
    fn registry(&self) -> Arc<Registry> {
        match self.registry.read() {
            Ok(registry) => registry.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, id: &str) -> Option<StoreConfig> {
        self.registry().get(id).cloned()
    }

    /// Replaces the store registry (the coordinator's config was reloaded):
    /// new stores may connect at once; a removed store's connections are
    /// closed ([`Service::reloads`]) and it is refused from then on.
    pub fn reload(&self, stores: Vec<StoreConfig>) -> Reloaded {
        let new = Arc::new(Registry::new(stores));
        let old = {
            let mut registry = match self.registry.write() {
                Ok(registry) => registry,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *registry, new.clone())
        };
        self.reloads.send_modify(|n| *n += 1);
        registry::diff(&old, &new)
    }

    /// Changes on every reload: a connection then checks that its store is
    /// still registered ([`Service::is_registered`]).
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Whether `peer` may stay connected.
    pub fn is_registered(&self, peer: &Peer) -> bool {
        match peer {
            Peer::Admin => true,
            Peer::Store(id) => self.registry().get(id).is_some(),
        }
    }

    /// Records that a peer connected; returns a guard that records the close.
    pub fn connected(self: &Arc<Self>, peer: &Peer) -> ConnectionGuard {
        if let Peer::Store(id) = peer {
            if let Ok(mut connected) = self.connected.lock() {
                *connected.entry(id.clone()).or_default() += 1;
            }
            self.metrics.connection_opened();
        }
        ConnectionGuard {
            service: self.clone(),
            peer: peer.clone(),
        }
    }

    /// Answers a hello: checks the protocol version, tells the peer who it is.
    pub fn hello(&self, peer: &Peer, hello: &Hello) -> Response {
        if !SUPPORTED_VERSIONS.contains(&hello.protocol_version) {
            return Response::Error(WireError::unsupported_version(hello.protocol_version));
        }
        let store = match peer {
            Peer::Store(id) => self.store(id),
            Peer::Admin => None,
        };
        Response::Hello(HelloReply {
            protocol_version: PROTOCOL_VERSION,
            software_version: SOFTWARE_VERSION.to_string(),
            identity: peer.name().to_string(),
            writable: store
                .as_ref()
                .map(|s| s.writable.clone())
                .unwrap_or_default(),
            readable: store.map(|s| s.readable).unwrap_or_default(),
            head: self.pipeline.read_head(),
        })
    }

    /// Answers one request after the hello.
    pub async fn handle(&self, peer: &Peer, request: Request) -> Response {
        let result = match request {
            Request::Hello(hello) => Ok(self.hello(peer, &hello)),
            Request::Write(write) => {
                // The coordinator's share of a write's latency, QUIC aside.
                let started = Instant::now();
                let answer = self.write(peer, write).await;
                self.metrics.observe_write(started.elapsed());
                answer
            }
            Request::Writes(writes) => {
                let started = Instant::now();
                let answer = self.writes(peer, writes).await;
                if let Ok(Response::Writes(answers)) = &answer {
                    for _ in answers {
                        self.metrics.observe_write(started.elapsed());
                    }
                }
                answer
            }
            Request::Batch(batch) => self.batch(peer, batch).await,
            Request::Hold(hold) => self.hold(peer, hold).await,
            Request::Holds(req) => self.holds(peer, req).await,
            Request::Transfer(transfer) => self.transfer(peer, transfer).await,
            Request::Transfers(req) => self.transfers(peer, req).await,
            Request::Read(read) => self.read(peer, read.key).await,
            Request::Changes(req) => self.changes(peer, req).await,
            // The server keeps the stream for it (`Service::subscribe`).
            Request::Subscribe(_) => Err(WireError::new(
                ErrorCode::BadRequest,
                "a subscription must be the first request of its stream",
            )),
            Request::Snapshot(req) => self.snapshot(peer, req).await,
            Request::Report(report) => self.report(peer, report),
            Request::Status => self.status(peer),
            Request::History(req) => self.history(peer, req).await,
        };
        result.unwrap_or_else(Response::Error)
    }

    fn check(&self, peer: &Peer, access: Access, location: &str) -> Result<(), WireError> {
        let Peer::Store(id) = peer else {
            return Ok(());
        };
        let registry = self.registry();
        let store = registry.get(id);
        let (verb, allowed) = match access {
            Access::Read => ("read", store.map(|s| &s.readable)),
            Access::Write => ("write", store.map(|s| &s.writable)),
        };
        if allowed.is_some_and(|locations| locations.iter().any(|l| l == location)) {
            return Ok(());
        }
        tracing::warn!(store = %id, location, access = verb, "access refused");
        Err(WireError::new(
            ErrorCode::Forbidden,
            format!("store {id} may not {verb} location {location}"),
        ))
    }

    async fn read(&self, peer: &Peer, key: ItemKey) -> Result<Response, WireError> {
        self.check(peer, Access::Read, &key.location)?;
        Ok(self.pipeline.read(key).await)
    }

    async fn write(&self, peer: &Peer, write: WriteRequest) -> Result<Response, WireError> {
        self.check_write(peer, &write)?;
        Ok(self.pipeline.write(peer.name(), write).await)
    }

    /// Several writes, each checked and decided on its own.
    async fn writes(&self, peer: &Peer, writes: Vec<WriteRequest>) -> Result<Response, WireError> {
        if writes.len() > MAX_WRITES {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_WRITES} writes in one request"),
            ));
        }
        let checked: Vec<_> = writes.iter().map(|w| self.check_write(peer, w)).collect();
        let valid = (writes.into_iter().zip(&checked))
            .filter_map(|(write, checked)| checked.is_ok().then_some(write))
            .collect();
        let mut decided = self
            .pipeline
            .write_many(peer.name(), valid)
            .await
            .into_iter();
        let answers = checked.into_iter().map(|checked| match checked {
            Ok(()) => decided.next().unwrap_or_else(|| {
                Response::Error(WireError::new(
                    ErrorCode::Internal,
                    "a write went unanswered",
                ))
            }),
            Err(err) => Response::Error(err),
        });
        Ok(Response::Writes(answers.collect()))
    }

    fn check_write(&self, peer: &Peer, write: &WriteRequest) -> Result<(), WireError> {
        check_idempotency_key(&write.idempotency_key)?;
        self.check_line(peer, &write.key, &write.op)
    }

    /// A line of a write: a valid key the peer may write, and an op a store
    /// may send (only the coordinator ends an expired lock).
    fn check_line(&self, peer: &Peer, key: &ItemKey, op: &Op) -> Result<(), WireError> {
        key.validate().map_err(|e| WireError::rejected(&e, None))?;
        if matches!(op, Op::LockExpire { .. }) {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("{} is not a write a store may send", op.kind()),
            ));
        }
        self.check(peer, Access::Write, &key.location)
    }

    /// Writes to several keys as one commit, all or none.
    async fn batch(&self, peer: &Peer, batch: BatchRequest) -> Result<Response, WireError> {
        check_idempotency_key(&batch.idempotency_key)?;
        if !(1..=MAX_BATCH_LINES).contains(&batch.lines.len()) {
            return Err(WireError::new(
                ErrorCode::InvalidField,
                format!("a batch has 1 to {MAX_BATCH_LINES} lines"),
            ));
        }
        for (index, line) in batch.lines.iter().enumerate() {
            let mut checked = self.check_line(peer, &line.key, &line.op);
            if checked.is_ok() && line.op.is_lock_op() {
                checked = Err(WireError::new(
                    ErrorCode::InvalidField,
                    "a batch line takes the ops of single items, not locks",
                ));
            }
            checked.map_err(|mut err| {
                err.line = u32::try_from(index).ok();
                err
            })?;
        }
        Ok(self.pipeline.batch(peer.name(), batch).await)
    }

    /// Decides a step of a hold or a transfer from `peer` (its access
    /// already checked) under `idempotency_key`.
    async fn step(
        &self,
        peer: &Peer,
        idempotency_key: String,
        action: shelfsync_ledger::Action,
    ) -> Result<shelfsync_sequencer::Answer, WireError> {
        check_idempotency_key(&idempotency_key)?;
        let command = shelfsync_sequencer::StepCommand {
            store: peer.name().to_string(),
            idempotency_key,
            action,
        };
        Ok(self.pipeline.step(command).await)
    }

    async fn history(&self, peer: &Peer, req: HistoryRequest) -> Result<Response, WireError> {
        require_admin(peer)?;
        req.key
            .validate()
            .map_err(|e| WireError::rejected(&e, None))?;
        let ledger = self.ledger.clone();
        let head = self.pipeline.read_head();
        let limit = page_limit(req.limit);
        blocking(move || {
            let mut changes = ledger.history(&req.key, limit + 64)?;
            // Only durable entries: drop any committed but not yet flushed.
            changes.retain(|c| c.seq <= head);
            changes.truncate(limit);
            Ok(Response::History(HistoryReply { changes }))
        })
        .await
    }
}

/// Decrements the connected count of a store when its connection ends.
#[derive(Debug)]
pub struct ConnectionGuard {
    service: Arc<Service>,
    peer: Peer,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Peer::Store(id) = &self.peer {
            if let Ok(mut connected) = self.service.connected.lock()
                && let Some(n) = connected.get_mut(id)
            {
                *n = n.saturating_sub(1);
            }
            self.service.metrics.connection_closed();
        }
    }
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

fn require_admin(peer: &Peer) -> Result<(), WireError> {
    match peer {
        Peer::Admin => Ok(()),
        Peer::Store(id) => Err(WireError::new(
            ErrorCode::Forbidden,
            format!("store {id} may not use admin requests"),
        )),
    }
}

fn internal(err: &LedgerError) -> WireError {
    tracing::error!(error = %err, "ledger read failed");
    WireError::new(ErrorCode::Internal, "the coordinator's storage failed")
}

/// Most holds or transfers in one listing.
const MAX_LISTED: usize = 1000;
/// Most holds or transfers read for one listing before its filter (by sku,
/// by state).
const MAX_SCANNED: usize = 100_000;

/// A request's page size, within `1..=MAX_PAGE`.
fn page_limit(limit: u32) -> usize {
    limit.clamp(1, MAX_PAGE) as usize
}

/// Runs ledger work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, WireError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(internal(&err)),
        Err(_) => Err(WireError::new(
            ErrorCode::Internal,
            "the coordinator failed to serve the request",
        )),
    }
}

mod holds;
pub mod registry;
mod sync;
#[cfg(test)]
mod tests;
mod transfers;

pub use sync::changes_page;

fn check_idempotency_key(key: &str) -> Result<(), WireError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(WireError::new(
            ErrorCode::InvalidField,
            format!(
                "invalid idempotency key: 1 to {MAX_IDEMPOTENCY_KEY} bytes without control characters"
            ),
        ));
    }
    Ok(())
}
