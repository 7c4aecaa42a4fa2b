//! One test's cluster: a temp dir, its certificates and its processes.
//!
//! Layout of the temp dir:
//! ```text
//! certs/          shelfctl certs init (CA, coordinator, admin, one cert per store)
//! coordinator/    coordinator.toml, coordinator.log, data/
//! agent-<id>/     agent.toml, agent.log, data/   (one per store agent)
//! ```
//! Agents are named by their store id (one agent per store) and connect to
//! the cluster's coordinator; [`Cluster::restart_coordinator`] keeps them
//! pointed at it when it has to move to another port.
//!
//! Fields drop in declaration order: the processes are killed before the
//! temp dir is removed. Set `SHELFSYNC_KEEP_TEST_DIR=1` to keep the dir (its
//! path is printed) for a look at the logs and data after a run.

use std::path::Path;
use std::time::Duration;

use shelfsync_proto::{Client, ProtoError};
use tempfile::TempDir;

use crate::agent::{AgentProcess, AgentSpec, Wait};
use crate::certs::Certs;
use crate::coordinator::{CoordinatorProcess, CoordinatorSpec, StoreSpec};

/// Environment variable that keeps a cluster's temp dir after the test.
pub const KEEP_DIR_ENV: &str = "SHELFSYNC_KEEP_TEST_DIR";

/// A coordinator and store agents in a temp dir of their own.
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<AgentProcess>,
    coordinator: CoordinatorProcess,
    certs: Certs,
    dir: TempDir,
}

impl Cluster {
    /// Issues certificates for `stores` and starts a coordinator with them
    /// as its registry and default settings.
    pub async fn start(stores: Vec<StoreSpec>) -> anyhow::Result<Self> {
        Self::start_with(CoordinatorSpec::new(stores)).await
    }

    /// Issues certificates for the stores of `spec` and starts a coordinator
    /// with `spec`.
    pub async fn start_with(spec: CoordinatorSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shelfsync-e2e-")
            .tempdir()?;
        let ids: Vec<&str> = spec.stores.iter().map(|s| s.id.as_str()).collect();
        if ids.is_empty() {
            anyhow::bail!("a cluster needs at least one store (shelfctl certs init requires one)");
        }
        let certs = Certs::generate(&dir.path().join("certs"), &ids)?;
        let coordinator =
            CoordinatorProcess::start(&dir.path().join("coordinator"), &certs, spec).await?;
        Ok(Cluster {
            agents: Vec::new(),
            coordinator,
            certs,
            dir,
        })
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the temp dir (logs, data) after the cluster is dropped, for a
    /// look at a failed run.
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// The certificates.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &CoordinatorProcess {
        &self.coordinator
    }

    /// The coordinator, for `kill9` and `restart`.
    pub fn coordinator_mut(&mut self) -> &mut CoordinatorProcess {
        &mut self.coordinator
    }

    /// Connects to the coordinator as `identity` (`admin` or a store id).
    pub async fn connect(&self, identity: &str) -> Result<Client, ProtoError> {
        self.coordinator.connect(identity).await
    }

    /// Restarts the coordinator (see [`CoordinatorProcess::restart`]). If it
    /// had to move to another QUIC port, every agent's config is rewritten
    /// to the new address and every running agent is restarted (waiting
    /// only until it serves), since it could not reach the coordinator
    /// otherwise. Returns whether the coordinator moved.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<bool> {
        let before = self.coordinator.quic_addr();
        self.coordinator.restart().await?;
        let after = self.coordinator.quic_addr();
        if after == before {
            return Ok(false);
        }
        for agent in &mut self.agents {
            agent.set_coordinator(after)?;
            if agent.is_running() {
                agent.restart_waiting(Wait::Serving).await?;
            }
        }
        Ok(true)
    }

    /// Starts the agent of `store_id` holding `locations`, syncing every
    /// `sync_interval`, and waits until it is ready (first sync complete).
    pub async fn start_agent(
        &mut self,
        store_id: &str,
        locations: &[&str],
        sync_interval: Duration,
    ) -> anyhow::Result<&mut AgentProcess> {
        let spec = AgentSpec::new(store_id, locations).sync_interval(sync_interval);
        self.start_agent_with(spec, Wait::Ready).await
    }

    /// Starts an agent from `spec`, in `agent-<store id>/`, and waits as
    /// `wait` says. A store has at most one agent: starting a second one
    /// for the same store id fails.
    pub async fn start_agent_with(
        &mut self,
        spec: AgentSpec,
        wait: Wait,
    ) -> anyhow::Result<&mut AgentProcess> {
        let coordinator = self.coordinator.quic_addr();
        self.start_agent_via(spec, wait, coordinator).await
    }

    /// Like [`Cluster::start_agent_with`], with the agent reaching the
    /// coordinator at `coordinator` (a fault proxy in front of it, say).
    /// [`Cluster::restart_coordinator`] points such an agent at the
    /// coordinator itself if it moves: a caller with a proxy should restart
    /// the coordinator through [`Cluster::coordinator_mut`] instead.
    pub async fn start_agent_via(
        &mut self,
        spec: AgentSpec,
        wait: Wait,
        coordinator: std::net::SocketAddr,
    ) -> anyhow::Result<&mut AgentProcess> {
        if self.agents.iter().any(|a| a.store_id() == spec.store_id) {
            anyhow::bail!("store {} already has an agent", spec.store_id);
        }
        let dir = self.dir.path().join(format!("agent-{}", spec.store_id));
        let agent = AgentProcess::start(&dir, &self.certs, spec, coordinator, wait).await?;
        self.agents.push(agent);
        let last = self.agents.len() - 1;
        Ok(&mut self.agents[last])
    }

    /// The agent of `store_id`.
    ///
    /// # Panics
    /// When the cluster has no agent for that store.
    pub fn agent(&self, store_id: &str) -> &AgentProcess {
        match self.agents.iter().find(|a| a.store_id() == store_id) {
            Some(agent) => agent,
            None => panic!("no agent for store {store_id} in this cluster"),
        }
    }

    /// The agent of `store_id`, for `kill9`, `restart` and `set_coordinator`.
    ///
    /// # Panics
    /// When the cluster has no agent for that store.
    pub fn agent_mut(&mut self, store_id: &str) -> &mut AgentProcess {
        match self.agents.iter_mut().find(|a| a.store_id() == store_id) {
            Some(agent) => agent,
            None => panic!("no agent for store {store_id} in this cluster"),
        }
    }

    /// Every agent, in the order they were started.
    pub fn agents(&self) -> &[AgentProcess] {
        &self.agents
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            self.dir.disable_cleanup(true);
            eprintln!("{KEEP_DIR_ENV}: kept {}", self.dir.path().display());
        }
    }
}
