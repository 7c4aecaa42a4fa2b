//! A `shelfsync-coordinator` process started from a generated config.
//!
//! [`CoordinatorProcess::start`] writes `coordinator.toml` into its own
//! directory (data in `data/`, output in `coordinator.log`), starts the
//! binary and returns once `GET /readyz` answers 200. The ports are chosen by
//! the OS and a start that loses its port to another socket is retried on
//! fresh ones (see [`crate::ports`]). [`CoordinatorProcess::kill9`] and
//! [`CoordinatorProcess::restart`] inject crashes; the child is killed when
//! the value is dropped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shelfsync_proto::{Client, ProtoError};
use shelfsync_runtime::launcher::{Probe, Signal};

use crate::certs::Certs;
use crate::http::{self, HttpReply};
use crate::launch::{LaunchError, service_command, spawn_ready};
use crate::ports::{MAX_START_ATTEMPTS, free_tcp_addr, free_udp_addr};
use crate::process::Process;

/// One entry of the coordinator's store registry (`[[stores]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// Store id; also the CN of its certificate.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Expected sync interval (status flags the store stale past 3x this).
    pub sync_interval: Duration,
    /// Locations the store may write.
    pub writable: Vec<String>,
    /// Locations the store may replicate and read.
    pub readable: Vec<String>,
}

impl StoreSpec {
    /// A store that may write and read only the location named like itself,
    /// with a 1 s sync interval.
    pub fn new(id: &str) -> Self {
        StoreSpec {
            id: id.to_string(),
            name: format!("Test {id}"),
            sync_interval: Duration::from_secs(1),
            writable: vec![id.to_string()],
            readable: vec![id.to_string()],
        }
    }

    /// Replaces the writable locations.
    pub fn writable(mut self, locations: &[&str]) -> Self {
        self.writable = locations.iter().map(|l| (*l).to_string()).collect();
        self
    }

    /// Replaces the readable locations.
    pub fn readable(mut self, locations: &[&str]) -> Self {
        self.readable = locations.iter().map(|l| (*l).to_string()).collect();
        self
    }

    /// Replaces the sync interval.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }
}

/// What a test chooses about a coordinator; everything else (addresses,
/// paths, TLS files) the harness fills in. `None` keeps the binary's default.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorSpec {
    /// The store registry.
    pub stores: Vec<StoreSpec>,
    /// `retain_changes`.
    pub retain_changes: Option<u64>,
    /// `idempotency_ttl`.
    pub idempotency_ttl: Option<Duration>,
    /// `gc_interval`.
    pub gc_interval: Option<Duration>,
    /// Environment variables the process is started with (every start),
    /// e.g. `FAILPOINTS` for a build with failpoints compiled in.
    pub env: Vec<(String, String)>,
}

impl CoordinatorSpec {
    /// A coordinator with these stores and default settings.
    pub fn new(stores: Vec<StoreSpec>) -> Self {
        CoordinatorSpec {
            stores,
            ..CoordinatorSpec::default()
        }
    }

    /// The config file for these choices.
    pub fn to_toml(
        &self,
        listen: SocketAddr,
        http_listen: SocketAddr,
        data_dir: &Path,
        certs: &Certs,
    ) -> String {
        let tls = certs.tls_files("coordinator");
        let mut out = String::new();
        // Top-level keys must come before the first table.
        let _ = writeln!(out, "listen = {}", quote(&listen.to_string()));
        let _ = writeln!(out, "http_listen = {}", quote(&http_listen.to_string()));
        let _ = writeln!(out, "data_dir = {}", quote(&data_dir.display().to_string()));
        if let Some(n) = self.retain_changes {
            let _ = writeln!(out, "retain_changes = {n}");
        }
        if let Some(ttl) = self.idempotency_ttl {
            let _ = writeln!(out, "idempotency_ttl = {}", duration(ttl));
        }
        if let Some(interval) = self.gc_interval {
            let _ = writeln!(out, "gc_interval = {}", duration(interval));
        }
        let _ = writeln!(out, "\n[tls]");
        let _ = writeln!(
            out,
            "ca_cert = {}",
            quote(&tls.ca_cert.display().to_string())
        );
        let _ = writeln!(out, "cert = {}", quote(&tls.cert.display().to_string()));
        let _ = writeln!(out, "key = {}", quote(&tls.key.display().to_string()));
        for store in &self.stores {
            let _ = writeln!(out, "\n[[stores]]");
            let _ = writeln!(out, "id = {}", quote(&store.id));
            let _ = writeln!(out, "name = {}", quote(&store.name));
            let _ = writeln!(out, "sync_interval = {}", duration(store.sync_interval));
            let _ = writeln!(out, "writable = {}", list(&store.writable));
            let _ = writeln!(out, "readable = {}", list(&store.readable));
        }
        out
    }
}

/// A TOML basic string. JSON string escapes are a subset of TOML's.
pub(crate) fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A TOML array of strings.
pub(crate) fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A humantime duration string, in milliseconds.
pub(crate) fn duration(d: Duration) -> String {
    quote(&format!("{}ms", d.as_millis()))
}

/// A running coordinator, killed when dropped.
#[derive(Debug)]
pub struct CoordinatorProcess {
    process: Process,
    spec: CoordinatorSpec,
    certs: Certs,
    dir: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    http: reqwest::Client,
}

impl CoordinatorProcess {
    /// Starts a coordinator in `dir` (created if missing) with the TLS files
    /// of `certs` and the registry of `spec`, and waits until it is ready.
    ///
    /// On failure the error carries the tail of the coordinator's log.
    pub async fn start(dir: &Path, certs: &Certs, spec: CoordinatorSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = dir.join("coordinator.toml");
        let log_path = dir.join("coordinator.log");
        let data_dir = dir.join("data");
        let http = http::client()?;
        let mut last_error = None;
        for _ in 0..MAX_START_ATTEMPTS {
            let (quic_addr, http_addr) = (free_udp_addr()?, free_tcp_addr()?);
            write_config(&config_path, &spec, quic_addr, http_addr, &data_dir, certs)?;
            match launch(&config_path, dir, &log_path, &http, http_addr, &spec.env).await {
                Ok(process) => {
                    return Ok(CoordinatorProcess {
                        process,
                        spec,
                        certs: certs.clone(),
                        dir: dir.to_path_buf(),
                        config_path,
                        data_dir,
                        log_path,
                        quic_addr,
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

    /// Kills the coordinator with SIGKILL and waits for it to be gone: no
    /// shutdown, no final flush, exactly like `kill -9`.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// Sends `signal` (SIGSTOP and SIGCONT pause and resume it) unless the
    /// process has been reaped.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        self.process.signal(signal)
    }

    /// Starts the coordinator again with the same config and data dir (after
    /// a SIGKILL first, if it is still running) and waits until it is ready.
    ///
    /// It keeps its ports unless one was taken in the meantime; then it moves
    /// to fresh ones and rewrites its config, so read [`Self::quic_addr`]
    /// and [`Self::http_addr`] after a restart rather than before.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let mut last_error = None;
        for attempt in 0..MAX_START_ATTEMPTS {
            if attempt > 0 {
                self.quic_addr = free_udp_addr()?;
                self.http_addr = free_tcp_addr()?;
                write_config(
                    &self.config_path,
                    &self.spec,
                    self.quic_addr,
                    self.http_addr,
                    &self.data_dir,
                    &self.certs,
                )?;
            }
            match launch(
                &self.config_path,
                &self.dir,
                &self.log_path,
                &self.http,
                self.http_addr,
                &self.spec.env,
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

    /// The OS process id while it runs (not yet killed or reaped).
    pub fn pid(&self) -> Option<u32> {
        self.process.live_pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The QUIC address agents and `shelfctl` connect to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The HTTP address of `/healthz`, `/readyz` and `/metrics`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://<http_addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// The ledger directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The config file the process was started with.
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

    /// Waits (polling, at most `timeout`) until a line of the log satisfies
    /// `matches`, and returns it.
    pub async fn wait_for_log_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.process.wait_for_log_line(timeout, matches).await
    }

    /// The registry and settings it runs with.
    pub fn spec(&self) -> &CoordinatorSpec {
        &self.spec
    }

    /// GETs `path` on the HTTP address.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpReply> {
        http::get(&self.http, &self.url(path)).await
    }

    /// Connects as `identity` (`admin` or a store id with a certificate in
    /// the cluster's certs dir) and exchanges hellos.
    pub async fn connect(&self, identity: &str) -> Result<Client, ProtoError> {
        crate::connect(self.quic_addr, &self.certs.tls_files(identity)).await
    }

    /// Like [`Self::connect`], with `timeout` bounding the handshake and each call.
    pub async fn connect_with_timeout(
        &self,
        identity: &str,
        timeout: Duration,
    ) -> Result<Client, ProtoError> {
        crate::connect_with_timeout(self.quic_addr, &self.certs.tls_files(identity), timeout).await
    }
}

fn write_config(
    path: &Path,
    spec: &CoordinatorSpec,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: &Path,
    certs: &Certs,
) -> anyhow::Result<()> {
    let text = spec.to_toml(quic_addr, http_addr, data_dir, certs);
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

async fn launch(
    config_path: &Path,
    dir: &Path,
    log_path: &Path,
    http: &reqwest::Client,
    http_addr: SocketAddr,
    env: &[(String, String)],
) -> Result<Process, LaunchError> {
    let mut command = service_command("shelfsync-coordinator", config_path, dir);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let probe = Probe::http(http, format!("http://{http_addr}/readyz"));
    spawn_ready("shelfsync-coordinator", command, log_path, &probe).await
}

fn retries_exhausted(last: Option<LaunchError>) -> anyhow::Error {
    let err = last.map_or_else(
        || anyhow::anyhow!("no start attempt was made"),
        anyhow::Error::from,
    );
    err.context(format!(
        "the coordinator lost its ports to other sockets {MAX_START_ATTEMPTS} times in a row"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_puts_top_level_keys_first_and_escapes_strings() {
        let certs = Certs::from_dir(Path::new("/tmp/c\"erts"));
        let mut spec = CoordinatorSpec::new(vec![
            StoreSpec::new("store-1").writable(&["store-1", "online"]),
        ]);
        spec.retain_changes = Some(10);
        spec.idempotency_ttl = Some(Duration::from_secs(2));
        let text = spec.to_toml(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Path::new("/tmp/data"),
            &certs,
        );
        let first_table = text.find('[').unwrap();
        assert!(text.find("retain_changes").unwrap() < first_table, "{text}");
        assert!(text.find("idempotency_ttl = \"2000ms\"").unwrap() < first_table);
        assert!(
            text.contains(r#"ca_cert = "/tmp/c\"erts/ca.pem""#),
            "{text}"
        );
        assert!(
            text.contains(r#"writable = ["store-1", "online"]"#),
            "{text}"
        );
        assert!(text.contains(r#"sync_interval = "1000ms""#), "{text}");
    }
}
