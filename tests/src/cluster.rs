//! One test's cluster: a temp dir, its certificates and its processes.
//!
//! Layout of the temp dir:
//! ```text
//! certs/          shelfctl certs init (CA, coordinator, admin, one cert per store)
//! coordinator/    coordinator.toml, coordinator.log, data/
//! ```
//! Store agents will get `agent-<id>/` directories beside `coordinator/` and
//! an `agents` list here, started from the same certificates.
//!
//! Fields drop in declaration order: the processes are killed before the
//! temp dir is removed. Set `SHELFSYNC_KEEP_TEST_DIR=1` to keep the dir (its
//! path is printed) for a look at the logs and data after a run.

use std::path::Path;

use shelfsync_proto::{Client, ProtoError};
use tempfile::TempDir;

use crate::certs::Certs;
use crate::coordinator::{CoordinatorProcess, CoordinatorSpec, StoreSpec};

/// Environment variable that keeps a cluster's temp dir after the test.
pub const KEEP_DIR_ENV: &str = "SHELFSYNC_KEEP_TEST_DIR";

/// A coordinator (and, later, store agents) in a temp dir of its own.
#[derive(Debug)]
pub struct Cluster {
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
            coordinator,
            certs,
            dir,
        })
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            self.dir.disable_cleanup(true);
            eprintln!("{KEEP_DIR_ENV}: kept {}", self.dir.path().display());
        }
    }
}
