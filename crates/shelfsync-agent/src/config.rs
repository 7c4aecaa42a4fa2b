//! The agent's configuration file: strict TOML, defaults in named functions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shelfsync_proto::TlsFiles;
use shelfsync_runtime::load_toml;
pub use shelfsync_runtime::{ConfigError, LogFormat};

/// Everything the agent reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This store's id; must match the CN of its client certificate.
    pub store_id: String,
    /// The coordinator's QUIC address (`host:port`).
    pub coordinator: String,
    /// The name checked on the coordinator's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Directory of the replica.
    pub data_dir: PathBuf,
    /// Address of the REST API.
    pub http_listen: SocketAddr,
    /// Time between syncs.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Locations this replica holds.
    pub locations: Vec<String>,
    /// Whether to hold a subscription to the coordinator's wake-ups and
    /// sync at once after a commit to these locations (else every
    /// `sync_interval` only).
    #[serde(default = "default_push")]
    pub push: bool,
    /// How long a forwarded write (or strong read) may take, retries included,
    /// before the client gets 503.
    #[serde(default = "default_forward_timeout", with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Optional per-client-address rate limit on the REST API.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Origins allowed by CORS; none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Log format: `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Worker threads of the async runtime that serves REST and talks to
    /// the coordinator; one per core by default. Replica writes run on
    /// the runtime's blocking pool on top.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// Client certificate of this store and the chain's CA.
    pub tls: TlsFiles,
}

/// Requests per second allowed per client address, with a burst.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

fn default_server_name() -> String {
    "localhost".into()
}

fn default_push() -> bool {
    true
}

fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_forward_timeout() -> Duration {
    Duration::from_secs(3)
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Config = load_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ids, locations and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |e: shelfsync_core::Rejection| ConfigError::Invalid(e.to_string());
        shelfsync_core::item::validate_id("store_id", &self.store_id).map_err(invalid)?;
        if self.locations.is_empty() {
            return Err(ConfigError::Invalid(
                "locations must name at least one location".into(),
            ));
        }
        for location in &self.locations {
            shelfsync_core::item::validate_id("location", location).map_err(invalid)?;
        }
        if self.sync_interval.is_zero() || self.forward_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "sync_interval and forward_timeout must be above zero".into(),
            ));
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Invalid(
                "worker_threads must be at least 1".into(),
            ));
        }
        if let Some(limit) = self.rate_limit
            && (limit.per_second == 0 || limit.burst == 0)
        {
            return Err(ConfigError::Invalid(
                "rate_limit per_second and burst must be above zero".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        store_id      = "store-1"
        coordinator   = "127.0.0.1:7400"
        server_name   = "localhost"
        data_dir      = "data/store-1"
        http_listen   = "127.0.0.1:8401"
        sync_interval = "5s"
        locations     = ["store-1", "online"]
        rate_limit = { per_second = 200, burst = 400 }
        cors_origins = ["https://pos.example.internal"]
        [tls]
        ca_cert = "certs/ca.pem"
        cert    = "certs/store-1.pem"
        key     = "certs/store-1.key"
    "#;

    #[test]
    fn parses_the_spec_example() {
        let config: Config = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.sync_interval, Duration::from_secs(5));
        assert_eq!(config.rate_limit.unwrap().burst, 400);
        assert_eq!(config.forward_timeout, Duration::from_secs(3));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut config: Config = toml::from_str(EXAMPLE).unwrap();
        config.locations = vec!["no spaces".into()];
        assert!(config.validate().is_err());
        assert!(toml::from_str::<Config>(&format!("typo = 1\n{EXAMPLE}")).is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../config/agent.toml");
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.store_id, "store-1");
        let text = include_str!("../../../deploy/chain/agent-store-north.toml");
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
    }
}
