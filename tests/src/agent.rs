//! A `shelfsync-agent` process started from a generated config.
//!
//! [`AgentProcess::start`] writes `agent.toml` into the agent's own directory
//! (replica in `data/`, output in `agent.log`), starts the binary and returns
//! once it is up: either ready ([`Wait::Ready`]: `GET /readyz` answers 200,
//! i.e. the replica has completed its first sync) or merely serving
//! ([`Wait::Serving`]: `GET /healthz` answers 200), for tests that want to
//! watch (or interrupt) the first sync. The REST port is chosen by the OS and
//! a start that loses it to another socket is retried on a fresh one (see
//! [`crate::ports`]). [`AgentProcess::kill9`] and [`AgentProcess::restart`]
//! inject crashes; [`AgentProcess::set_coordinator`] points the config at a
//! coordinator that moved; the child is killed when the value is dropped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use shelfsync_runtime::launcher::{Probe, Signal};

use crate::certs::Certs;
use crate::coordinator::{duration, list, quote};
use crate::launch::{LaunchError, service_command, spawn_ready};
use crate::poll::{self, Check};
use crate::ports::{MAX_START_ATTEMPTS, free_tcp_addr};
use crate::process::Process;
use crate::rest::RestClient;
use crate::{SERVER_NAME, http};

/// The sync interval of an [`AgentSpec::new`]: short, so tests that wait for
/// a sync wait little.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(300);

/// `rate_limit = { per_second, burst }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Sustained requests per second per client address.
    pub per_second: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

/// What a test chooses about an agent; addresses, paths and TLS files the
/// harness fills in. `None` (or empty) keeps the binary's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// `store_id`; also selects the store's certificate.
    pub store_id: String,
    /// `locations` the replica holds.
    pub locations: Vec<String>,
    /// `sync_interval`.
    pub sync_interval: Duration,
    /// `forward_timeout`.
    pub forward_timeout: Option<Duration>,
    /// `rate_limit`.
    pub rate_limit: Option<RateLimitSpec>,
    /// `cors_origins`.
    pub cors_origins: Vec<String>,
    /// `push` (`None`: the binary's default, on).
    pub push: Option<bool>,
}

impl AgentSpec {
    /// An agent of `store_id` holding `locations`, syncing every
    /// [`DEFAULT_SYNC_INTERVAL`], everything else at the binary's defaults.
    pub fn new(store_id: &str, locations: &[&str]) -> Self {
        AgentSpec {
            store_id: store_id.to_string(),
            locations: locations.iter().map(|l| (*l).to_string()).collect(),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            forward_timeout: None,
            rate_limit: None,
            cors_origins: Vec::new(),
            push: None,
        }
    }

    /// Turns push on or off.
    pub fn push(mut self, push: bool) -> Self {
        self.push = Some(push);
        self
    }

    /// Replaces the sync interval.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// Sets the forward timeout.
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = Some(timeout);
        self
    }

    /// Sets a rate limit.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some(RateLimitSpec { per_second, burst });
        self
    }

    /// Replaces the CORS origins.
    pub fn cors_origins(mut self, origins: &[&str]) -> Self {
        self.cors_origins = origins.iter().map(|o| (*o).to_string()).collect();
        self
    }

    /// The config file for these choices.
    pub fn to_toml(
        &self,
        coordinator: SocketAddr,
        http_listen: SocketAddr,
        data_dir: &Path,
        certs: &Certs,
    ) -> String {
        let tls = certs.tls_files(&self.store_id);
        let mut out = String::new();
        // Top-level keys must come before the first table.
        let _ = writeln!(out, "store_id = {}", quote(&self.store_id));
        let _ = writeln!(out, "coordinator = {}", quote(&coordinator.to_string()));
        let _ = writeln!(out, "server_name = {}", quote(SERVER_NAME));
        let _ = writeln!(out, "data_dir = {}", quote(&data_dir.display().to_string()));
        let _ = writeln!(out, "http_listen = {}", quote(&http_listen.to_string()));
        let _ = writeln!(out, "sync_interval = {}", duration(self.sync_interval));
        let _ = writeln!(out, "locations = {}", list(&self.locations));
        if let Some(timeout) = self.forward_timeout {
            let _ = writeln!(out, "forward_timeout = {}", duration(timeout));
        }
        if let Some(push) = self.push {
            let _ = writeln!(out, "push = {push}");
        }
        if let Some(limit) = self.rate_limit {
            let _ = writeln!(
                out,
                "rate_limit = {{ per_second = {}, burst = {} }}",
                limit.per_second, limit.burst
            );
        }
        if !self.cors_origins.is_empty() {
            let _ = writeln!(out, "cors_origins = {}", list(&self.cors_origins));
        }
        let _ = writeln!(out, "\n[tls]");
        let _ = writeln!(
            out,
            "ca_cert = {}",
            quote(&tls.ca_cert.display().to_string())
        );
        let _ = writeln!(out, "cert = {}", quote(&tls.cert.display().to_string()));
        let _ = writeln!(out, "key = {}", quote(&tls.key.display().to_string()));
        out
    }
}

/// What a start waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `GET /readyz` answers 200: the replica has completed a sync.
    Ready,
    /// `GET /healthz` answers 200: the REST API is up, the first sync may
    /// still be running (or failing).
    Serving,
}

impl Wait {
    fn path(self) -> &'static str {
        match self {
            Wait::Ready => "/readyz",
            Wait::Serving => "/healthz",
        }
    }
}

/// A running store agent, killed when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    process: Process,
    spec: AgentSpec,
    certs: Certs,
    dir: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    coordinator: SocketAddr,
    http_addr: SocketAddr,
    http: reqwest::Client,
}

impl AgentProcess {
    /// Starts an agent in `dir` (created if missing) with the certificate of
    /// `spec.store_id` from `certs`, syncing from the coordinator at
    /// `coordinator`, and waits as `wait` says.
    ///
    /// On failure the error carries the tail of the agent's log.
    pub async fn start(
        dir: &Path,
        certs: &Certs,
        spec: AgentSpec,
        coordinator: SocketAddr,
        wait: Wait,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = dir.join("agent.toml");
        let log_path = dir.join("agent.log");
        let data_dir = dir.join("data");
        let http = http::client()?;
        let mut last_error = None;
        for _ in 0..MAX_START_ATTEMPTS {
            let http_addr = free_tcp_addr()?;
            let text = spec.to_toml(coordinator, http_addr, &data_dir, certs);
            write(&config_path, &text)?;
            match launch(
                &spec.store_id,
                &config_path,
                dir,
                &log_path,
                &http,
                http_addr,
                wait,
            )
            .await
            {
                Ok(process) => {
                    return Ok(AgentProcess {
                        process,
                        spec,
                        certs: certs.clone(),
                        dir: dir.to_path_buf(),
                        config_path,
                        data_dir,
                        log_path,
                        coordinator,
                        http_addr,
                        http,
                    });
                }
                Err(err) if err.is_addr_in_use() => last_error = Some(err),
                Err(err) => return Err(err.into()),
            }
        }
        Err(retries_exhausted(last_error))
    }

    /// Kills the agent with SIGKILL and waits for it to be gone: no
    /// shutdown, no final flush of the replica, exactly like `kill -9`.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// Sends `signal` (SIGSTOP and SIGCONT pause and resume it) unless the
    /// process has been reaped.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        self.process.signal(signal)
    }

    /// Starts the agent again with the same config and replica (after a
    /// SIGKILL first, if it is still running) and waits until it is ready.
    ///
    /// It keeps its REST port unless that was taken in the meantime; then it
    /// moves to a fresh one and rewrites its config, so read
    /// [`Self::http_addr`] (or take a new [`Self::rest`]) after a restart.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_waiting(Wait::Ready).await
    }

    /// Like [`Self::restart`], waiting as `wait` says.
    pub async fn restart_waiting(&mut self, wait: Wait) -> anyhow::Result<()> {
        self.process.kill();
        let mut last_error = None;
        for attempt in 0..MAX_START_ATTEMPTS {
            if attempt > 0 {
                self.http_addr = free_tcp_addr()?;
                self.write_config()?;
            }
            match launch(
                &self.spec.store_id,
                &self.config_path,
                &self.dir,
                &self.log_path,
                &self.http,
                self.http_addr,
                wait,
            )
            .await
            {
                Ok(process) => {
                    self.process = process;
                    return Ok(());
                }
                Err(err) if err.is_addr_in_use() => last_error = Some(err),
                Err(err) => return Err(err.into()),
            }
        }
        Err(retries_exhausted(last_error))
    }

    /// Points the config at a coordinator at `addr` (after the coordinator
    /// moved to another port). The running process keeps the address it was
    /// started with; the change takes effect at the next restart.
    pub fn set_coordinator(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.coordinator = addr;
        self.write_config()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let text = self.spec.to_toml(
            self.coordinator,
            self.http_addr,
            &self.data_dir,
            &self.certs,
        );
        write(&self.config_path, &text)
    }

    /// The store id.
    pub fn store_id(&self) -> &str {
        &self.spec.store_id
    }

    /// The settings it runs with.
    pub fn spec(&self) -> &AgentSpec {
        &self.spec
    }

    /// The coordinator address in its config.
    pub fn coordinator(&self) -> SocketAddr {
        self.coordinator
    }

    /// The OS process id while it runs (not yet killed or reaped).
    pub fn pid(&self) -> Option<u32> {
        self.process.live_pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The address of the REST API.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://<http_addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// A REST client for the current address.
    pub fn rest(&self) -> RestClient {
        RestClient::with_client(self.http.clone(), self.url(""))
    }

    /// The replica directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log, every start included.
    pub fn log(&self) -> String {
        self.process.full_log()
    }

    /// What the current start has logged so far.
    pub fn log_since_start(&self) -> String {
        self.process.log()
    }

    /// Waits (polling, at most `timeout`) until a line of the log satisfies
    /// `matches`, and returns it.
    pub async fn wait_for_log_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.process.wait_for_log_line(timeout, matches).await
    }

    /// `GET /v1/sync`.
    pub async fn sync_status(&self) -> anyhow::Result<Value> {
        self.rest().sync_status().await
    }

    /// Polls `GET /v1/sync` until `done` holds for it (at most `timeout`)
    /// and returns that status.
    pub async fn wait_sync(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let rest = self.rest();
        let what = format!("{} {what}", self.spec.store_id);
        poll::until(&what, timeout, || async {
            let status = rest.sync_status().await?;
            Ok(if done(&status) {
                Check::Done(status)
            } else {
                Check::NotYet(status.to_string())
            })
        })
        .await
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

async fn launch(
    store_id: &str,
    config_path: &Path,
    dir: &Path,
    log_path: &Path,
    http: &reqwest::Client,
    http_addr: SocketAddr,
    wait: Wait,
) -> Result<Process, LaunchError> {
    let command = service_command("shelfsync-agent", config_path, dir);
    let probe = Probe::http(http, format!("http://{http_addr}{}", wait.path()));
    spawn_ready(
        &format!("shelfsync-agent {store_id}"),
        command,
        log_path,
        &probe,
    )
    .await
}

fn retries_exhausted(last: Option<LaunchError>) -> anyhow::Error {
    let err = last.map_or_else(
        || anyhow::anyhow!("no start attempt was made"),
        anyhow::Error::from,
    );
    err.context(format!(
        "the agent lost its REST port to other sockets {MAX_START_ATTEMPTS} times in a row"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_puts_top_level_keys_first() {
        let certs = Certs::from_dir(Path::new("/tmp/certs"));
        let spec = AgentSpec::new("store-1", &["store-1", "online"])
            .forward_timeout(Duration::from_secs(1))
            .rate_limit(1, 2)
            .cors_origins(&["https://pos.example.internal"]);
        let text = spec.to_toml(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Path::new("/tmp/data"),
            &certs,
        );
        let first_table = text.find("\n[tls]").unwrap();
        for key in [
            "store_id = \"store-1\"",
            "coordinator = \"127.0.0.1:1\"",
            "http_listen = \"127.0.0.1:2\"",
            "sync_interval = \"300ms\"",
            "locations = [\"store-1\", \"online\"]",
            "forward_timeout = \"1000ms\"",
            "rate_limit = { per_second = 1, burst = 2 }",
            "cors_origins = [\"https://pos.example.internal\"]",
        ] {
            let at = text.find(key).unwrap_or_else(|| panic!("{key} in {text}"));
            assert!(at < first_table, "{key} after the first table in {text}");
        }
        assert!(
            text.contains(r#"cert = "/tmp/certs/store-1.pem""#),
            "{text}"
        );
    }
}
