//! The coordinator's configuration file.
//!
//! One TOML file, parsed strictly: an unknown key is an error, so a typo
//! never silently falls back to a default. Defaults live in named functions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shelfsync_proto::TlsFiles;
use shelfsync_runtime::load_toml;
pub use shelfsync_runtime::{ConfigError, LogFormat};

/// Everything the coordinator reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// QUIC address for agents and `shelfctl` (ALPN `shelfsync/1`).
    pub listen: SocketAddr,
    /// HTTP address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Directory of the ledger.
    pub data_dir: PathBuf,
    /// The chain's CA and the coordinator's certificate.
    pub tls: TlsFiles,
    /// The store registry: only these store ids (and `admin`) may connect.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// How many change-log entries to keep; older ones are compacted away
    /// and replicas behind them bootstrap from a snapshot.
    #[serde(default = "default_retain_changes")]
    pub retain_changes: u64,
    /// How long an idempotency record is kept.
    #[serde(default = "default_idempotency_ttl", with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// How often expired idempotency records and old changes are collected.
    #[serde(default = "default_gc_interval", with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Log format: `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Worker threads of the async runtime that serves QUIC and HTTP. One
    /// by default: the sequencer, the ledger's commits and the collector
    /// have threads of their own, and one worker spends a third less CPU
    /// on 1,000 idle stores than one per core, at the same write
    /// throughput (docs/decisions.md).
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// The file this config was read from, for a reload of the store
    /// registry on SIGHUP (`None` when built in code).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One registered store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Store id; must equal the CN of the store's client certificate.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Expected sync interval; status flags the store stale past 3x this.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Locations this store may write.
    #[serde(default)]
    pub writable: Vec<String>,
    /// Locations this store may replicate and read.
    #[serde(default)]
    pub readable: Vec<String>,
}

fn default_retain_changes() -> u64 {
    1_000_000
}

fn default_idempotency_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_worker_threads() -> usize {
    1
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    /// Reads and checks a config file. Relative paths in it are taken as
    /// relative to the current directory, as a shell would.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = load_toml(path)?;
        config.validate()?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Checks store ids and locations against the id rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let mut seen = std::collections::HashSet::new();
        for store in &self.stores {
            let id = &store.id;
            if let Err(e) = shelfsync_core::item::validate_id("store id", id) {
                return invalid(e.to_string());
            }
            if id == shelfsync_proto::ADMIN_IDENTITY {
                return invalid("`admin` is reserved for the admin certificate".into());
            }
            if id == shelfsync_sequencer::COORDINATOR {
                return invalid(
                    "`coordinator` is reserved for the coordinator's own writes".into(),
                );
            }
            if !seen.insert(id) {
                return invalid(format!("store {id} is registered twice"));
            }
            for location in store.writable.iter().chain(&store.readable) {
                if let Err(e) = shelfsync_core::item::validate_id("location", location) {
                    return invalid(format!("store {id}: {e}"));
                }
            }
        }
        if self.worker_threads == 0 {
            return invalid("worker_threads must be at least 1".into());
        }
        if self.retain_changes == 0 {
            return invalid("retain_changes must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        listen = "127.0.0.1:7400"
        http_listen = "127.0.0.1:7480"
        data_dir = "data/coordinator"
        [tls]
        ca_cert = "certs/ca.pem"
        cert = "certs/coordinator.pem"
        key = "certs/coordinator.key"
        [[stores]]
        id = "store-1"
        name = "Store 1 Downtown"
        sync_interval = "5s"
        writable = ["store-1", "online"]
        readable = ["store-1", "online"]
    "#;

    #[test]
    fn parses_the_spec_example_with_defaults() {
        let config: Config = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.stores[0].sync_interval, Duration::from_secs(5));
        assert_eq!(config.idempotency_ttl, Duration::from_secs(86400));
        assert_eq!(config.retain_changes, 1_000_000);
        assert_eq!(config.worker_threads, 1);
    }

    #[test]
    fn zero_worker_threads_are_refused() {
        let mut config: Config = toml::from_str(EXAMPLE).unwrap();
        config.worker_threads = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{EXAMPLE}\nfoo = 1\n");
        assert!(toml::from_str::<Config>(&text).is_err());
    }

    #[test]
    fn duplicate_and_reserved_store_ids_are_refused() {
        let mut config: Config = toml::from_str(EXAMPLE).unwrap();
        config.stores.push(config.stores[0].clone());
        assert!(config.validate().is_err());
        config.stores.truncate(1);
        config.stores[0].id = "admin".into();
        assert!(config.validate().is_err());
        config.stores[0].id = "coordinator".into();
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../config/coordinator.toml");
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.stores.len(), 3);
        let text = include_str!("../../../deploy/chain/coordinator.toml");
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.stores.len(), 5);
    }
}
