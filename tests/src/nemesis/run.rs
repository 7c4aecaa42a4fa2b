//! One fault run, start to verdict.
//!
//! 1. A coordinator and [`RunSpec::agents`] agents, each agent reaching the
//!    coordinator through a [`FaultProxy`] of its own.
//! 2. The clients ([`workload`]: hot-key, lock and stock clients) and the
//!    fault schedule ([`faults`]) run side by side for the run's duration.
//!    After every coordinator restart the run measures how long each agent
//!    takes to get a write-path answer through it again.
//! 3. Faults stop: the network heals, paused processes go on, crashed ones
//!    are started again, failpoints are turned off. Once the clients have
//!    finished and the coordinator has ended the locks and holds they
//!    left, the run reads back the change log of every location, waits for
//!    every replica to equal the coordinator's state (SPEC §4.5: within two
//!    sync intervals), and reads back the coordinator's state, every
//!    replica and every transfer.
//! 4. The checkers ([`check`]) judge the history. The history, the final
//!    state, the schedule and the report are written to the run's
//!    directory, which is kept when anything is found.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::coordinator::{CoordinatorSpec, StoreSpec};
use crate::nemesis::check::{self, Anomaly};
use crate::nemesis::faults::{self, Mix, Step};
use crate::nemesis::history::{Event, Key, Op, Outcome, Reply};
use crate::nemesis::proxy::{FaultProxy, ProxyStats};
use crate::nemesis::readback::compare_shelfctl_history;
use crate::nemesis::rig::Rig;
use crate::nemesis::workload::{self, Control, Recorder, Targets, Workload};
use crate::{AgentSpec, Cluster, Wait};

/// The location every store writes in a run: the hot keys live there.
pub const SHARED: &str = "online";
/// How long an agent may take, after a restarted coordinator is ready, to
/// get a strong read through it again: about a second (a handshake attempt
/// begun while the coordinator was down is given up after one), and room
/// for a debug build on a busy machine.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(2);
/// What convergence may take beyond two sync intervals: the time to read
/// the coordinator and every replica back, and a sync loop that was backing
/// off when the faults ended (its pause grows to the interval, with up to
/// half of it again as jitter). 2.53 s was seen once with half a second.
const CONVERGENCE_SLACK: Duration = Duration::from_secs(1);
/// How long the run waits for convergence at most before it reads back
/// whatever the replicas hold.
pub(crate) const CONVERGENCE_PATIENCE: Duration = Duration::from_secs(30);

/// A deliberately broken coordinator, to show the suite catches the bug
/// (configured as a failpoint for the whole run, on every start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mutation {
    /// Acknowledge writes before they are durable.
    AckBeforeDurable,
    /// Skip the idempotency lookup: a retried write is applied again.
    SkipIdempotencyLookup,
}

impl Mutation {
    /// The failpoint that breaks the coordinator this way.
    pub fn failpoint(self) -> &'static str {
        match self {
            Mutation::AckBeforeDurable => "coordinator-ack-before-durable",
            Mutation::SkipIdempotencyLookup => "coordinator-skip-idempotency-lookup",
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Seeds the schedule, the clients and the proxies.
    pub seed: u64,
    /// How long clients and faults run.
    pub duration: Duration,
    /// Store agents (3 or more).
    pub agents: usize,
    /// Concurrent clients.
    pub clients: u32,
    /// Hot keys, all in [`SHARED`].
    pub keys: usize,
    /// Concurrent lock clients.
    pub lock_clients: u32,
    /// Keys they lock, all in [`SHARED`] (`l0`, `l1`, ...).
    pub lock_keys: usize,
    /// Skus each store's stock client keeps at its store's location
    /// (`t0`, `t1`, ...); 0: no stock clients.
    pub skus: usize,
    /// The agents' (and the registry's) sync interval.
    pub sync_interval: Duration,
    /// Which faults, how paced.
    pub mix: Mix,
    /// A broken coordinator, if any.
    pub mutation: Option<Mutation>,
    /// Where to write the history and report; `None`: inside the
    /// cluster's temp dir, kept when a run without a mutation finds
    /// anything (a mutated run is meant to).
    pub out_dir: Option<PathBuf>,
}

impl RunSpec {
    /// A run of `duration` from `seed` with every fault, 3 agents, 9
    /// hot-key clients on 4 hot keys, 2 lock clients on 2 lock keys and a
    /// stock client per store on 2 skus, syncing every second.
    pub fn new(seed: u64, duration: Duration) -> Self {
        RunSpec {
            seed,
            duration,
            agents: 3,
            clients: 9,
            keys: 4,
            lock_clients: 2,
            lock_keys: 2,
            skus: 2,
            sync_interval: Duration::from_secs(1),
            mix: Mix::default(),
            mutation: None,
            out_dir: None,
        }
    }
}

/// A fault as it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The step.
    pub step: Step,
    /// When it began and ended, ns since the run began.
    pub began_ns: u64,
    /// See `began_ns`.
    pub ended_ns: u64,
    /// What healing it took (e.g. "coordinator restarted").
    pub healed: String,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The mutation, if any.
    pub mutation: Option<Mutation>,
    /// Client operations recorded.
    pub ops: usize,
    /// Of which writes.
    pub writes: usize,
    /// Of which ended indeterminate.
    pub indeterminate: usize,
    /// Per multi-key or lock request kind: sent, acknowledged.
    pub requests: Vec<(String, usize, usize)>,
    /// Faults injected.
    pub faults: usize,
    /// Restarts of the coordinator (killed, crashed by a failpoint, or
    /// stopped by a disk fault).
    pub coordinator_restarts: usize,
    /// The slowest recovery of an agent after a coordinator restart, ms.
    pub slowest_recovery_ms: u64,
    /// How long the replicas took to converge after the faults, ms.
    pub convergence_ms: u64,
    /// What the proxies did, summed.
    pub proxies: ProxyStats,
    /// Everything the checkers found; empty when the run passed.
    pub anomalies: Vec<Anomaly>,
    /// The directory holding history.jsonl, final.json, schedule.json and
    /// report.json.
    pub dir: PathBuf,
}

impl Report {
    /// One paragraph for a terminal.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "seed {}{}: {} ops ({} writes, {} indeterminate; {}), {} faults, {} coordinator \
             restarts (slowest agent recovery {} ms), converged in {} ms; proxies: {:?}; \
             {} anomalies; history in {}",
            self.seed,
            self.mutation
                .map(|m| format!(" (mutation {})", m.failpoint()))
                .unwrap_or_default(),
            self.ops,
            self.writes,
            self.indeterminate,
            self.requests
                .iter()
                .map(|(kind, sent, ok)| format!("{kind} {ok}/{sent}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.faults,
            self.coordinator_restarts,
            self.slowest_recovery_ms,
            self.convergence_ms,
            self.proxies,
            self.anomalies.len(),
            self.dir.display()
        );
        for anomaly in self.anomalies.iter().take(20) {
            out.push_str(&format!("\n  {anomaly}"));
        }
        if self.anomalies.len() > 20 {
            out.push_str(&format!("\n  ... {} more", self.anomalies.len() - 20));
        }
        out
    }
}

/// Runs `spec` and returns what it found. An `Err` is a failure of the
/// harness itself (a process that would not start), not an anomaly.
pub async fn run(spec: &RunSpec) -> anyhow::Result<Report> {
    let stores: Vec<String> = (1..=spec.agents).map(|i| format!("store-{i}")).collect();
    let mut coordinator = CoordinatorSpec::new(
        stores
            .iter()
            .map(|id| {
                StoreSpec::new(id)
                    .writable(&[id, SHARED])
                    .readable(&[id, SHARED])
                    .sync_interval(spec.sync_interval)
            })
            .collect(),
    );
    coordinator.retain_changes = Some(u64::MAX / 2);
    if let Some(mutation) = spec.mutation {
        coordinator.env.push((
            "FAILPOINTS".into(),
            format!("{}=return", mutation.failpoint()),
        ));
    }
    let cluster = Cluster::start_with(coordinator).await?;
    let mut rig = Rig {
        cluster,
        proxies: Vec::new(),
        stores: stores.clone(),
        targets: Arc::new(Targets::default()),
        http: crate::http::client()?,
    };
    for (i, store) in stores.iter().enumerate() {
        let proxy = FaultProxy::start(
            rig.cluster.coordinator().quic_addr(),
            spec.seed.wrapping_add(1000 + i as u64),
        )?;
        // Push on for some agents and off for others, which ones drawn
        // from the seed: every run checks convergence both ways.
        let push = spec.seed.wrapping_add(i as u64).is_multiple_of(2);
        let agent_spec = AgentSpec::new(store, &[store, SHARED])
            .sync_interval(spec.sync_interval)
            .push(push);
        let agent = rig
            .cluster
            .start_agent_via(agent_spec, Wait::Ready, proxy.addr())
            .await?;
        rig.targets.set(store, agent.rest());
        rig.proxies.push(proxy);
    }
    rig.require_failpoints().await?;
    let dir = match &spec.out_dir {
        Some(dir) => dir.clone(),
        None => rig.cluster.dir().join("nemesis"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let keys: Vec<Key> = (0..spec.keys)
        .map(|i| Key::new(SHARED, &format!("k{i}")))
        .collect();
    let lock_keys: Vec<Key> = (0..spec.lock_keys)
        .map(|i| Key::new(SHARED, &format!("l{i}")))
        .collect();
    let recorder = Arc::new(Recorder::new());
    let workload_stores = match spec.skus {
        0 => Vec::new(),
        _ => stores.clone(),
    };
    let workload = Workload {
        keys: keys.clone(),
        clients: spec.clients,
        lock_keys: match spec.lock_clients {
            0 => Vec::new(),
            _ => lock_keys.clone(),
        },
        lock_clients: if lock_keys.is_empty() {
            0
        } else {
            spec.lock_clients
        },
        stores: workload_stores.clone(),
        skus: (0..spec.skus).map(|i| format!("t{i}")).collect(),
        seed: spec.seed,
    };
    let steps = faults::schedule(
        spec.seed,
        u64::try_from(spec.duration.as_millis()).unwrap_or(u64::MAX),
        spec.agents,
        &spec.mix,
    );
    write_json(&dir.join("schedule.json"), &steps)?;

    let control = Arc::new(Control::default());
    let clients = tokio::spawn(workload::run(
        workload,
        rig.targets.clone(),
        recorder.clone(),
        control.clone(),
    ));
    let mut records = Vec::new();
    let mut recoveries: Vec<Duration> = Vec::new();
    let mut anomalies = Vec::new();
    let started = Instant::now();
    for step in &steps {
        let at = Duration::from_millis(step.at_ms);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let began_ns = recorder.now_ns();
        rig.inject(&step.fault).await?;
        tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
        let healed = rig.heal(&step.fault).await?;
        if let Some(times) = &healed.recoveries {
            for (store, took) in times {
                recoveries.push(*took);
                if *took > RECOVERY_LIMIT {
                    anomalies.push(Anomaly {
                        checker: "recovery",
                        key: None,
                        detail: format!(
                            "{store} answered a strong read {took:?} after the restarted \
                             coordinator was ready (limit {RECOVERY_LIMIT:?}), after {:?}",
                            step.fault
                        ),
                    });
                }
            }
        }
        records.push(FaultRecord {
            step: step.clone(),
            began_ns,
            ended_ns: recorder.now_ns(),
            healed: healed.what,
        });
    }
    if let Some(rest) = spec.duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    control
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Clients end their last op (with its retries) within a few request
    // timeouts.
    let _ = clients.await;
    rig.heal_all().await?;

    let events = recorder.events();
    let shipped: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.reply {
            Some(Reply::Transfer(t)) => Some((t.id.clone(), t.from.clone())),
            _ => None,
        })
        .collect();
    // Locks and holds the coordinator ends by itself.
    let mut expiring = lock_keys.clone();
    for store in &workload_stores {
        expiring.extend((0..spec.skus).map(|i| Key::new(store, &format!("t{i}"))));
    }
    let (converged_after, fin) = rig
        .read_back(&keys, &expiring, &shipped, spec.sync_interval)
        .await?;
    let limit = spec.sync_interval * 2 + CONVERGENCE_SLACK;
    if converged_after > limit {
        anomalies.push(Anomaly {
            checker: "converged",
            key: None,
            detail: format!(
                "the replicas took {converged_after:?} to equal the coordinator after the \
                 faults stopped (limit: two sync intervals + {CONVERGENCE_SLACK:?} = {limit:?})"
            ),
        });
    }
    anomalies.extend(compare_shelfctl_history(&rig.cluster, &fin.histories).await?);
    anomalies.extend(check::check_all(&events, &fin));

    let mut proxies = ProxyStats::default();
    for proxy in &rig.proxies {
        proxies += proxy.stats();
    }
    let report = Report {
        seed: spec.seed,
        mutation: spec.mutation,
        ops: events.len(),
        writes: events.iter().filter(|e| e.op.is_write()).count(),
        indeterminate: events.iter().filter(|e| !e.outcome.is_definite()).count(),
        requests: request_counts(&events),
        faults: records.len(),
        coordinator_restarts: records
            .iter()
            .filter(|r| r.healed.contains("coordinator restarted"))
            .count(),
        slowest_recovery_ms: recoveries
            .iter()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0),
        convergence_ms: u64::try_from(converged_after.as_millis()).unwrap_or(u64::MAX),
        proxies,
        anomalies,
        dir: dir.clone(),
    };
    write_history(&dir.join("history.jsonl"), &events)?;
    write_json(&dir.join("final.json"), &fin)?;
    write_json(&dir.join("faults.json"), &records)?;
    write_json(&dir.join("report.json"), &report)?;
    if !report.anomalies.is_empty() && spec.out_dir.is_none() && spec.mutation.is_none() {
        rig.cluster.keep_dir();
    }
    Ok(report)
}

/// Per lock, batch or transfer request kind: how many were sent, and
/// acknowledged.
fn request_counts(events: &[Event]) -> Vec<(String, usize, usize)> {
    let kinds = [
        "lock", "renew", "release", "batch", "ship", "receive", "close", "hold", "fulfil", "unhold",
    ];
    let kind = |op: &Op| match op {
        Op::LockGrant { .. } => Some(0),
        Op::LockRenew { .. } => Some(1),
        Op::LockRelease { .. } => Some(2),
        Op::Batch { .. } => Some(3),
        Op::TransferCreate { .. } => Some(4),
        Op::TransferReceive { .. } => Some(5),
        Op::TransferClose { .. } => Some(6),
        Op::HoldCreate { .. } => Some(7),
        Op::HoldFulfil { .. } => Some(8),
        Op::HoldRelease { .. } => Some(9),
        _ => None,
    };
    let mut counts = [(0, 0); 10];
    for e in events {
        if let Some(i) = kind(&e.op) {
            counts[i].0 += 1;
            if matches!(e.outcome, Outcome::Ok { .. }) {
                counts[i].1 += 1;
            }
        }
    }
    kinds
        .iter()
        .zip(counts)
        .filter(|(_, (sent, _))| *sent > 0)
        .map(|(kind, (sent, ok))| (kind.to_string(), sent, ok))
        .collect()
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn write_history(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let mut text = String::new();
    for event in events {
        text.push_str(&serde_json::to_string(event)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
