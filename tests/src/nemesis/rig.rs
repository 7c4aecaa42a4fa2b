//! The processes and proxies of a fault run, and how each fault is
//! injected and healed ([`Rig`]); the run's loop is in [`super::run`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shelfsync_proto::Client;
use shelfsync_runtime::launcher::Signal;

use crate::nemesis::check;
use crate::nemesis::faults::Fault;
use crate::nemesis::history::{Change, Final, Key};
use crate::nemesis::proxy::FaultProxy;
use crate::nemesis::readback::{
    awaits_expiry, read_histories, read_replica, read_transfer, strong_read,
};
use crate::nemesis::run::{CONVERGENCE_PATIENCE, SHARED};
use crate::nemesis::workload::Targets;
use crate::rest::item_path;
use crate::{Cluster, Wait};

/// How long the read-back waits for the coordinator to end the locks and
/// holds the clients left: the longest lease they take (3 s), a tick, and
/// a margin for a coordinator that was restarted as the faults ended.
const EXPIRY_PATIENCE: Duration = Duration::from_secs(10);

/// The processes and proxies of a run.
pub(crate) struct Rig {
    /// The coordinator and agents.
    pub(crate) cluster: Cluster,
    /// One proxy per agent, in store order.
    pub(crate) proxies: Vec<FaultProxy>,
    /// The store ids, in order.
    pub(crate) stores: Vec<String>,
    /// Where the clients send.
    pub(crate) targets: Arc<Targets>,
    /// For failpoint requests.
    pub(crate) http: reqwest::Client,
}

/// How a fault was healed.
pub(crate) struct Healed {
    /// What was done, for the report.
    pub(crate) what: String,
    /// After a coordinator restart: per store, how long until a strong
    /// read went through its agent again.
    pub(crate) recoveries: Option<Vec<(String, Duration)>>,
}

impl Healed {
    fn plain(what: &str) -> Self {
        Healed {
            what: what.to_string(),
            recoveries: None,
        }
    }
}

impl Rig {
    pub(crate) async fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Partition {
                agent,
                to_coordinator,
            } => self.proxies[*agent].partition(Fault::partition_direction(*to_coordinator)),
            Fault::Flaky { .. } => {
                if let Some(faults) = fault.proxy_faults() {
                    for proxy in &self.proxies {
                        proxy.set_both(faults);
                    }
                }
            }
            Fault::KillCoordinator => self.cluster.coordinator_mut().kill9(),
            Fault::KillAgent { agent } => {
                let store = self.stores[*agent].clone();
                self.cluster.agent_mut(&store).kill9();
            }
            // A signal fails only when the process has just exited: then
            // there is nothing to pause (or, below, to continue).
            Fault::PauseCoordinator => {
                let _ = self.cluster.coordinator().signal(Signal::Stop);
            }
            Fault::PauseAgent { agent } => {
                let _ = self
                    .cluster
                    .agent(&self.stores[*agent])
                    .signal(Signal::Stop);
            }
            Fault::CoordinatorFailpoint { name, actions } => {
                let url = self.cluster.coordinator().url(&failpoint_path(name));
                // A coordinator that is not up is fine: nothing to break.
                let _ = self.put(&url, actions).await;
            }
            Fault::AgentFailpoint {
                agent,
                name,
                actions,
            } => {
                let url = self
                    .cluster
                    .agent(&self.stores[*agent])
                    .url(&failpoint_path(name));
                let _ = self.put(&url, actions).await;
            }
        }
        Ok(())
    }

    pub(crate) async fn heal(&mut self, fault: &Fault) -> anyhow::Result<Healed> {
        Ok(match fault {
            Fault::Partition { agent, .. } => {
                self.proxies[*agent].heal();
                Healed::plain("network healed")
            }
            Fault::Flaky { .. } => {
                for proxy in &self.proxies {
                    proxy.heal();
                }
                Healed::plain("network healed")
            }
            Fault::PauseCoordinator => {
                let _ = self.cluster.coordinator().signal(Signal::Cont);
                Healed::plain("coordinator continued")
            }
            Fault::PauseAgent { agent } => {
                let _ = self
                    .cluster
                    .agent(&self.stores[*agent])
                    .signal(Signal::Cont);
                Healed::plain("agent continued")
            }
            Fault::KillAgent { agent } => {
                self.restart_agent(*agent).await?;
                Healed::plain("agent restarted")
            }
            Fault::AgentFailpoint { agent, name, .. } => {
                let store = self.stores[*agent].clone();
                // The agent may crash on its failpoint between the check and
                // the request: then the request fails, and it is restarted
                // (a restart stops whatever is left of it first).
                let mut cleared = false;
                if self.cluster.agent_mut(&store).is_running() {
                    let url = self.cluster.agent(&store).url(&failpoint_path(name));
                    cleared = self.put(&url, "off").await.is_ok();
                }
                if cleared {
                    Healed::plain("failpoint off")
                } else {
                    self.restart_agent(*agent).await?;
                    Healed::plain("agent restarted")
                }
            }
            Fault::KillCoordinator | Fault::CoordinatorFailpoint { .. } => {
                let name = match fault {
                    Fault::CoordinatorFailpoint { name, .. } => Some(name.as_str()),
                    _ => None,
                };
                let running = self.cluster.coordinator_mut().is_running();
                // As for an agent: a coordinator that stops on its failpoint
                // between the check and the request is restarted.
                let cleared = match (running, name) {
                    (true, Some(name)) => {
                        let url = self.cluster.coordinator().url(&failpoint_path(name));
                        self.put(&url, "off").await.is_ok()
                    }
                    _ => false,
                };
                match cleared {
                    true => Healed::plain("failpoint off"),
                    false => {
                        let recoveries = self.restart_coordinator().await?;
                        Healed {
                            what: "coordinator restarted".into(),
                            recoveries: Some(recoveries),
                        }
                    }
                }
            }
        })
    }

    /// Ends every fault: the network heals, paused processes go on,
    /// stopped ones start again.
    pub(crate) async fn heal_all(&mut self) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            proxy.heal();
        }
        let _ = self.cluster.coordinator().signal(Signal::Cont);
        if !self.cluster.coordinator_mut().is_running() {
            self.restart_coordinator().await?;
        }
        for i in 0..self.stores.len() {
            let store = self.stores[i].clone();
            let _ = self.cluster.agent(&store).signal(Signal::Cont);
            if !self.cluster.agent_mut(&store).is_running() {
                self.restart_agent(i).await?;
            }
        }
        Ok(())
    }

    async fn restart_agent(&mut self, agent: usize) -> anyhow::Result<()> {
        let store = self.stores[agent].clone();
        let process = self.cluster.agent_mut(&store);
        process.restart_waiting(Wait::Serving).await?;
        self.targets.set(&store, process.rest());
        Ok(())
    }

    /// Restarts the coordinator (on a new port if it must; the proxies
    /// follow it), then measures how long each agent takes to get a
    /// strong read through.
    async fn restart_coordinator(&mut self) -> anyhow::Result<Vec<(String, Duration)>> {
        self.cluster.coordinator_mut().restart().await?;
        let addr = self.cluster.coordinator().quic_addr();
        for proxy in &self.proxies {
            proxy.set_upstream(addr);
        }
        let ready = Instant::now();
        let mut recoveries = Vec::new();
        let probes = self.stores.iter().map(|store| {
            let rest = self.cluster.agent(store).rest();
            let store = store.clone();
            async move {
                let path = format!("{}?consistency=strong", item_path(SHARED, "k0"));
                let deadline = ready + CONVERGENCE_PATIENCE;
                loop {
                    let answered = rest
                        .get(&path)
                        .await
                        .is_ok_and(|r| matches!(r.status, 200 | 404));
                    if answered || Instant::now() >= deadline {
                        return (store, ready.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        for (store, took) in futures_join(probes).await {
            recoveries.push((store, took));
        }
        Ok(recoveries)
    }

    /// Fails, saying how to build them, unless the coordinator and every
    /// agent serve `/debug/failpoints`: binaries built without the
    /// `failpoints` feature (a `cargo build`, or `cargo test -p` of one
    /// crate, leaves such binaries in `target/`) would ignore every
    /// failpoint fault and the run would prove nothing.
    pub(crate) async fn require_failpoints(&self) -> anyhow::Result<()> {
        let mut urls = vec![self.cluster.coordinator().url("/debug/failpoints")];
        for store in &self.stores {
            urls.push(self.cluster.agent(store).url("/debug/failpoints"));
        }
        for url in urls {
            let status = self.http.get(&url).send().await?.status();
            if !status.is_success() {
                anyhow::bail!(
                    "GET {url} answered {status}: the binaries in {} were built without \
                     failpoints; build them with `cargo test --workspace --no-run` (or \
                     `cargo build --features shelfsync-coordinator/failpoints,shelfsync-agent/failpoints`)",
                    crate::binaries::bin_dir().display()
                );
            }
        }
        Ok(())
    }

    async fn put(&self, url: &str, body: &str) -> anyhow::Result<()> {
        let reply = self
            .http
            .put(url)
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        if !reply.status().is_success() {
            anyhow::bail!("PUT {url} {body:?}: {}", reply.status());
        }
        Ok(())
    }

    /// Reads back what the run left, once writes have stopped: waits for
    /// the coordinator to end every lock and hold on `expiring` (at most
    /// [`EXPIRY_PATIENCE`]), reads the change log of every location of the
    /// run, then polls until every replica holds what the coordinator holds
    /// for every key (`keys` and every key of the log) and its digest is
    /// confirmed, and reads every transfer the log or `shipped` (id and
    /// source, from the clients' answers) names. Returns how long
    /// convergence took and what was read last.
    pub(crate) async fn read_back(
        &self,
        keys: &[Key],
        expiring: &[Key],
        shipped: &[(String, String)],
        interval: Duration,
    ) -> anyhow::Result<(Duration, Final)> {
        let admin = self.cluster.connect("admin").await?;
        let deadline = Instant::now() + EXPIRY_PATIENCE;
        for key in expiring {
            while awaits_expiry(&admin, key).await? && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut locations = vec![SHARED.to_string()];
        locations.extend(self.stores.iter().cloned());
        let read_at_ms = now_ms();
        let histories = read_histories(&admin, &locations, keys).await?;
        let all: Vec<Key> = histories.iter().map(|(k, _)| k.clone()).collect();
        let started = Instant::now();
        let mut fin = loop {
            let fin = self.read_final(&admin, &all, &histories).await?;
            let equal = check::converged(&fin).is_empty();
            if equal || started.elapsed() >= CONVERGENCE_PATIENCE {
                break fin;
            }
            tokio::time::sleep(interval / 10).await;
        };
        let converged_after = started.elapsed();
        fin.read_at_ms = read_at_ms;
        let mut transfers: BTreeMap<String, String> = shipped.iter().cloned().collect();
        for (key, change) in fin.log() {
            if let (Some(id), "transfer_ship") = (&change.args.transfer, change.op_kind.as_str()) {
                transfers.insert(id.clone(), key.location.clone());
            }
        }
        // Read at once: each read goes through an agent to the coordinator.
        let reads: Vec<_> = transfers
            .into_iter()
            .map(|(id, from)| {
                // A store's agent may read the transfers of its location.
                let rest = self
                    .stores
                    .iter()
                    .find(|s| **s == from)
                    .map(|store| self.cluster.agent(store).rest());
                tokio::spawn(async move {
                    let view = match rest {
                        Some(rest) => read_transfer(&rest, &id).await,
                        None => Ok(None),
                    };
                    (id, view)
                })
            })
            .collect();
        for read in reads {
            let (id, view) = read.await?;
            fin.transfers.push((id, view?));
        }
        Ok((converged_after, fin))
    }

    async fn read_final(
        &self,
        admin: &Client,
        keys: &[Key],
        histories: &[(Key, Vec<Change>)],
    ) -> anyhow::Result<Final> {
        let mut coordinator = Vec::new();
        for key in keys {
            coordinator.push((key.clone(), strong_read(admin, key).await?));
        }
        let mut replicas = Vec::new();
        for store in &self.stores {
            let rest = self.cluster.agent(store).rest();
            // A replica holds its store's location and the shared one.
            let held: Vec<Key> = keys
                .iter()
                .filter(|k| k.location == *store || k.location == SHARED)
                .cloned()
                .collect();
            replicas.push(read_replica(store, &rest, &held).await?);
        }
        Ok(Final {
            histories: histories.to_vec(),
            coordinator,
            replicas,
            transfers: Vec::new(),
            read_at_ms: 0,
        })
    }
}

/// Milliseconds since the Unix epoch on this machine's clock, which the
/// coordinator shares.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `/debug/failpoints/{name}`.
fn failpoint_path(name: &str) -> String {
    format!("/debug/failpoints/{name}")
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        if let Ok(value) = task.await {
            out.push(value);
        }
    }
    out
}
