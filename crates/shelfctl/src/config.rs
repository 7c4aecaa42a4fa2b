//! shelfctl's configuration file: where the coordinator is and which
//! certificate to present.
//!
//! The file is agent-like TOML (see `config/shelfctl.toml`), parsed strictly:
//! an unknown key is an error, so a typo never silently falls back to a
//! default. Defaults live in named functions. Relative paths in `[tls]` are
//! taken relative to the current directory, as a shell would, the same rule as
//! the coordinator's and the agent's configs.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use shelfsync_proto::TlsFiles;

/// Everything shelfctl reads from `--config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The coordinator's QUIC address, `host:port`; the host is resolved
    /// with the system resolver when connecting.
    pub coordinator: String,
    /// The name checked on the coordinator's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Bound on the handshake and on every request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The chain's CA and the admin certificate (CN `admin`).
    pub tls: TlsFiles,
}

fn default_server_name() -> String {
    "localhost".to_string()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    /// Reads and checks a config file; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let config: Config = shelfsync_runtime::load_toml(path)?;
        config
            .validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    /// Parses and checks the TOML text of a config.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot.
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.coordinator.trim().is_empty(),
            "`coordinator` must not be empty"
        );
        anyhow::ensure!(
            !self.server_name.is_empty(),
            "`server_name` must not be empty"
        );
        anyhow::ensure!(!self.timeout.is_zero(), "`timeout` must be above zero");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_with_defaults() {
        let config = Config::parse(include_str!("../../../config/shelfctl.toml")).unwrap();
        assert_eq!(config.coordinator, "127.0.0.1:7400");
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.tls.cert, Path::new("certs/admin.pem"));
    }

    #[test]
    fn optional_keys_and_durations() {
        let config = Config::parse(
            "coordinator = \"coord.internal:7400\"\ntimeout = \"750ms\"\n\
             [tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.timeout, Duration::from_millis(750));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let tls = "[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let cases = [
            (format!("coordinator = \"x:1\"\nport = 1\n{tls}"), "port"),
            (
                format!("coordinator = \"x:1\"\ntimeout = \"soon\"\n{tls}"),
                "timeout",
            ),
            (
                format!("coordinator = \"x:1\"\ntimeout = \"0s\"\n{tls}"),
                "timeout",
            ),
            (format!("coordinator = \"\"\n{tls}"), "coordinator"),
            ("coordinator = \"x:1\"\n".to_string(), "tls"),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
