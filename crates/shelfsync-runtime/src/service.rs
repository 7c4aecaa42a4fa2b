//! What every shelfsync process does the same way at start and stop:
//! reading its TOML config, setting up logs, and turning SIGINT/SIGTERM
//! into one shutdown that many tasks can wait for.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Starts logging to stderr; `RUST_LOG` sets the filter (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// The values break a rule.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML config file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// The sending side of a shutdown shared by many tasks.
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

/// A future-maker that resolves once [`StopHandle::stop`] was called.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// A new shutdown fan-out.
pub fn stop_pair() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopHandle(tx), Stop(rx))
}

impl StopHandle {
    /// Tells every [`Stop`] to resolve.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Stop {
    /// Resolves once the shutdown was asked for (or the handle dropped).
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// How a service's process is set up, read from its config.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSettings {
    /// Format of the log lines.
    pub log_format: LogFormat,
    /// Worker threads of the async runtime (at least 1); threads of the
    /// service's own and the runtime's blocking pool come on top.
    pub worker_threads: usize,
}

/// The body of a service binary's `main` after argument parsing: a config
/// that failed to load exits 2 with its message; otherwise logging starts as
/// `settings` says, a runtime with its worker threads runs `service` until
/// SIGINT or SIGTERM, and a failure is logged and printed with its whole
/// chain (exit 1).
pub fn run_service<C, E, F>(
    name: &str,
    config: Result<C, ConfigError>,
    settings: impl FnOnce(&C) -> ProcessSettings,
    service: impl FnOnce(C, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: Future<Output = Result<(), E>>,
{
    use std::process::ExitCode;
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let settings = settings(&config);
    init_tracing(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service(config, Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
