//! `shelfctl demo`: a local shelfsync cluster of the real binaries, for a
//! first look.
//!
//! A run, in order: stop what an earlier run killed hard left behind
//! ([`processes::stop_leftovers`]); make or reuse certificates; write the
//! configs with fresh loopback ports ([`layout`]); start the coordinator and
//! wait for its `/readyz`; seed a catalog through it ([`traffic::seed`]);
//! start one agent per store and wait for each `/readyz`; print where
//! everything listens and how to poke at it; then, until Ctrl-C, SIGTERM or
//! SIGHUP, send simulated register traffic ([`traffic::run`]) and show the
//! status table of `shelfctl status` with a traffic counter, redrawn in
//! place on a terminal. Stopping stops the traffic, then the agents, then
//! the coordinator ([`processes::Children::stop`]) and exits 0.
//!
//! If a start fails, or a process dies while the demo runs, the demo stops
//! the rest and fails (exit 2) with the tail of that process's log. Nothing
//! here sleeps to synchronize: readiness is polled with a deadline.

pub mod layout;
pub mod processes;
pub mod traffic;

use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shelfsync_proto::Client;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::config::Config;
use crate::status::{self, StatusView};
use crate::{Outcome, coordinator, render};
use layout::{CertsDone, Layout};
use processes::{Children, Role, Running};
use traffic::{Counter, Target};

/// `--dir` when not given.
pub const DEFAULT_DIR: &str = "demo";
/// `--stores` when not given.
pub const DEFAULT_STORES: u32 = 3;
/// The most stores `--stores` allows.
pub const MAX_STORES: u32 = 20;
/// Printed once everything is up, before the addresses.
pub const READY_LINE: &str = "The demo cluster is ready.";
/// The last line of the banner; the live status follows it.
pub const BANNER_END: &str = "Ctrl-C stops the demo.";
/// How often the status table is refreshed.
const REFRESH_INTERVAL: Duration = status::WATCH_INTERVAL;
/// Off a terminal, an unchanged status line is printed again after this long.
const QUIET_REPRINT: Duration = Duration::from_secs(30);
/// How often a start is tried on fresh ports after losing one to another socket.
const MAX_START_ATTEMPTS: usize = 3;

/// What `shelfctl demo` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The demo directory.
    pub dir: PathBuf,
    /// How many stores (and agents), 1..=[`MAX_STORES`].
    pub stores: u32,
}

/// Runs `shelfctl demo` until a signal stops it.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let mut signals = Signals::new()?;
    let binaries = Binaries::find()?;
    let layout = Layout::create(&settings.dir)?;
    let stores = layout::store_ids(settings.stores);
    let mut children = Children::new(&layout);
    say(&format!("shelfsync demo in {}", layout.dir().display()));
    let result = tokio::select! {
        result = start_and_watch(&layout, &stores, &binaries, &mut children) => {
            result.map(|never| match never {})
        }
        signal = signals.recv() => {
            say(&format!("\n{signal}: stopping the demo"));
            Ok(())
        }
    };
    let killed = children.stop().await;
    if !killed.is_empty() {
        eprintln!(
            "warning: {} did not stop within its grace period and got SIGKILL",
            killed.join(", ")
        );
    }
    result?;
    say(&format!(
        "stopped. Run it again to start from the same state, or delete {} to start from scratch.",
        layout.dir().display()
    ));
    Ok(Outcome::Success)
}

/// SIGINT, SIGTERM and SIGHUP, listened to from the start.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let listen = |kind: SignalKind| signal(kind).context("cannot listen for signals");
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The name of the next signal that arrives.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// The binaries the demo runs.
struct Binaries {
    coordinator: PathBuf,
    agent: PathBuf,
    /// This shelfctl, for the command lines printed.
    shelfctl: PathBuf,
}

impl Binaries {
    fn find() -> anyhow::Result<Self> {
        Ok(Binaries {
            coordinator: processes::binary(processes::COORDINATOR_BINARY)?,
            agent: processes::binary(processes::AGENT_BINARY)?,
            shelfctl: std::env::current_exe()
                .context("cannot find the running shelfctl executable")?,
        })
    }
}

/// The coordinator's addresses.
#[derive(Debug, Clone, Copy)]
struct CoordinatorAddrs {
    quic: SocketAddr,
    http: SocketAddr,
}

/// Starts everything, then shows the live status until a process dies.
async fn start_and_watch(
    layout: &Layout,
    stores: &[String],
    binaries: &Binaries,
    children: &mut Children,
) -> anyhow::Result<Infallible> {
    let stopped = processes::stop_leftovers(layout).await?;
    if stopped > 0 {
        say(&format!(
            "stopped {stopped} processes left over from an earlier run"
        ));
    }
    children.claim()?;
    let certs_dir = layout.certs();
    say(&match layout::ensure_certs(layout, stores)? {
        CertsDone::Created => format!("certificates: created in {}", certs_dir.display()),
        CertsDone::Reused => format!("certificates: reusing {}", certs_dir.display()),
        CertsDone::Issued(ids) => format!(
            "certificates: reusing {}, issued for {}",
            certs_dir.display(),
            ids.join(", ")
        ),
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;

    let coordinator = start_coordinator(layout, stores, binaries, children, &http).await?;
    layout::write(
        &layout.shelfctl_config(),
        &layout::shelfctl_toml(layout, coordinator.quic),
    )?;
    let config = Config::load(&layout.shelfctl_config())?;
    let client = match coordinator::connect(&config).await {
        Ok(client) => Arc::new(client),
        Err(err) => return Err(with_exits(children, err)),
    };
    let mut locations = stores.to_vec();
    locations.push(layout::ONLINE.to_string());
    let seeded = match traffic::seed(&client, &locations).await {
        Ok(seeded) => seeded,
        Err(err) => {
            let err = err.context("cannot seed the demo catalog");
            return Err(with_exits(children, err));
        }
    };
    say(&format!(
        "catalog: {} products in each of {}: {} items created, {} already there",
        traffic::PRODUCTS.len(),
        locations.join(", "),
        seeded.created,
        seeded.existing
    ));
    // The seeding tasks are done, so this is the only handle left.
    let client = Arc::try_unwrap(client).ok();

    let mut agents = Vec::new();
    for store in stores {
        match start_agent(layout, store, coordinator.quic, binaries, children, &http).await {
            Ok(addr) => agents.push((store.clone(), addr)),
            Err(err) => return Err(with_exits(children, err)),
        }
    }
    say(&banner(layout, binaries, coordinator, &agents, unix_secs()));

    let counter = Arc::new(Counter::default());
    let targets = agents
        .iter()
        .map(|(store, addr)| Target {
            url: format!("http://{addr}"),
            locations: layout::store_locations(store),
        })
        .collect();
    tokio::select! {
        result = traffic::run(targets, counter.clone()) => result,
        result = live(&config, children, &counter, client) => result,
    }
}

/// `err`, followed by the log tail of the coordinator if it died meanwhile
/// (the usual reason a later step fails).
fn with_exits(children: &mut Children, err: anyhow::Error) -> anyhow::Error {
    match children.coordinator_exited() {
        Some(died) => anyhow::anyhow!("{err:#}\n{died:#}"),
        None => err,
    }
}

/// Starts the coordinator on fresh ports and waits for its `/readyz`.
async fn start_coordinator(
    layout: &Layout,
    stores: &[String],
    binaries: &Binaries,
    children: &mut Children,
    http: &reqwest::Client,
) -> anyhow::Result<CoordinatorAddrs> {
    let config = layout.coordinator_config();
    let spec = Start {
        name: layout::COORDINATOR,
        role: Role::Coordinator,
        binary: &binaries.coordinator,
        config: &config,
        log: &layout.log(layout::COORDINATOR),
        dir: layout.dir(),
    };
    start(spec, children, http, || {
        let addrs = CoordinatorAddrs {
            quic: layout::free_udp_addr()?,
            http: layout::free_tcp_addr()?,
        };
        let text = layout::coordinator_toml(layout, stores, addrs.quic, addrs.http);
        layout::write(&config, &text)?;
        Ok((format!("http://{}/readyz", addrs.http), addrs))
    })
    .await
}

/// Starts the agent of `store` on a fresh port and waits for its `/readyz`
/// (its replica has completed a sync). Returns its REST address.
async fn start_agent(
    layout: &Layout,
    store: &str,
    coordinator: SocketAddr,
    binaries: &Binaries,
    children: &mut Children,
    http: &reqwest::Client,
) -> anyhow::Result<SocketAddr> {
    let config = layout.agent_config(store);
    let spec = Start {
        name: store,
        role: Role::Agent,
        binary: &binaries.agent,
        config: &config,
        log: &layout.log(store),
        dir: layout.dir(),
    };
    start(spec, children, http, || {
        let addr = layout::free_tcp_addr()?;
        layout::write(
            &config,
            &layout::agent_toml(layout, store, coordinator, addr),
        )?;
        Ok((format!("http://{addr}/readyz"), addr))
    })
    .await
}

/// One process to start.
struct Start<'a> {
    name: &'a str,
    role: Role,
    binary: &'a Path,
    config: &'a Path,
    log: &'a Path,
    dir: &'a Path,
}

/// Writes a config with `configure` (which picks ports and returns the
/// readiness URL), starts the process and waits until it is ready; on
/// "address in use" it tries again with a fresh config.
async fn start<T>(
    spec: Start<'_>,
    children: &mut Children,
    http: &reqwest::Client,
    mut configure: impl FnMut() -> anyhow::Result<(String, T)>,
) -> anyhow::Result<T> {
    let what = match spec.role {
        Role::Coordinator => processes::COORDINATOR_BINARY.to_string(),
        Role::Agent => format!("{} for {}", processes::AGENT_BINARY, spec.name),
    };
    let mut last_error = None;
    for _ in 0..MAX_START_ATTEMPTS {
        let (ready_url, value) = configure()?;
        write_out(&format!("starting {what} ... "));
        let running = Running::spawn(
            spec.name,
            spec.role,
            spec.binary,
            spec.config,
            spec.log,
            spec.dir,
        )?;
        let running = children.push(running)?;
        match running.wait_ready(http, &ready_url).await {
            Ok(()) => {
                say(&format!("ready (pid {})", running.pid()));
                return Ok(value);
            }
            Err(err) if err.is_addr_in_use() => {
                say("a port was taken meanwhile; trying other ports");
                children.discard_last()?;
                last_error = Some(err);
            }
            Err(err) => {
                say("failed");
                return Err(err.into());
            }
        }
    }
    let err = last_error.map_or_else(
        || anyhow::anyhow!("no start attempt was made"),
        anyhow::Error::from,
    );
    Err(err.context(format!(
        "{} lost its ports to other sockets {MAX_START_ATTEMPTS} times in a row",
        spec.name
    )))
}

/// Where everything listens and what to try; ends with [`BANNER_END`].
fn banner(
    layout: &Layout,
    binaries: &Binaries,
    coordinator: CoordinatorAddrs,
    agents: &[(String, SocketAddr)],
    now_secs: u64,
) -> String {
    let mut text = format!("\n{READY_LINE}\n\n");
    text.push_str(&format!(
        "  coordinator   QUIC {} (mutual TLS)   metrics http://{}/metrics\n",
        coordinator.quic, coordinator.http
    ));
    let width = agents.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    for (store, addr) in agents {
        text.push_str(&format!(
            "  {store:<width$} REST API http://{addr}   (locations {})\n",
            layout::store_locations(store).join(", ")
        ));
    }
    if let Some((store, addr)) = agents.first() {
        let (sku, _) = traffic::PRODUCTS[0];
        let item = format!("http://{addr}/v1/items/{store}/{sku}");
        text.push_str("\nTry:\n");
        text.push_str(&format!("  curl -s {item}\n"));
        text.push_str(&format!(
            "  curl -s -X POST -H 'Content-Type: application/json' \
             -H 'Idempotency-Key: demo-{now_secs}' -d '{{\"amount\":1}}' {item}/reserve\n"
        ));
        text.push_str(&format!("  curl -s http://{addr}/v1/sync\n"));
    }
    text.push_str(&format!(
        "  {} --config {} status\n",
        shell_word(&binaries.shelfctl.to_string_lossy()),
        shell_word(&layout.shelfctl_config().to_string_lossy())
    ));
    text.push_str(&format!(
        "\nCertificates, configs, logs/ and data/ are in {}.\n",
        layout.dir().display()
    ));
    text.push_str(&format!(
        "Simulated registers send about {} requests per second to the agents.\n",
        Duration::from_secs(1).as_millis() / traffic::REQUEST_INTERVAL.as_millis().max(1)
    ));
    text.push_str(BANNER_END);
    text.push('\n');
    text
}

/// The status table and the traffic counter every [`REFRESH_INTERVAL`],
/// until a child exits (an error with its log tail).
async fn live(
    config: &Config,
    children: &mut Children,
    counter: &Counter,
    mut client: Option<Client>,
) -> anyhow::Result<Infallible> {
    let terminal = std::io::stdout().is_terminal();
    let styled = render::stdout_is_styled();
    let mut drawn_lines = 0;
    let mut last_health = String::new();
    let mut last_printed: Option<Instant> = None;
    let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(err) = children.exited() {
            return Err(err.context("a process of the demo cluster died, so the demo stopped"));
        }
        let view = status::refresh(&mut client, config).await;
        if terminal {
            let mut text = match &view {
                Ok(view) => view.to_text(styled),
                Err(err) => format!("status: {err:#} (retrying)\n"),
            };
            text.push_str(&format!("simulated traffic: {}\n", counter.summary()));
            // Move up over the last drawing and clear to the end of the screen.
            let up = if drawn_lines > 0 {
                format!("\x1b[{drawn_lines}F\x1b[J")
            } else {
                String::new()
            };
            drawn_lines = text.lines().count();
            write_out(&(up + &text));
        } else {
            let (health, head) = match &view {
                Ok(view) => (health_line(view), format!(", head {}", view.head)),
                Err(err) => (format!("status unavailable: {err:#}"), String::new()),
            };
            let due = last_printed.is_none_or(|at| at.elapsed() >= QUIET_REPRINT);
            if health != last_health || due {
                say(&format!("{health}{head}; traffic: {}", counter.summary()));
                last_health = health;
                last_printed = Some(Instant::now());
            }
        }
    }
}

/// The health of every store in one line, for output that is not a
/// terminal (printed when it changes, and every [`QUIET_REPRINT`]).
fn health_line(view: &StatusView) -> String {
    let unhealthy: Vec<String> = view
        .stores
        .iter()
        .filter(|s| !s.health.is_healthy())
        .map(|s| format!("{} {}", s.id, s.health.label()))
        .collect();
    if unhealthy.is_empty() {
        format!("status: all {} stores healthy", view.stores.len())
    } else {
        format!(
            "status: {} of {} stores need attention ({})",
            unhealthy.len(),
            view.stores.len(),
            unhealthy.join(", ")
        )
    }
}

/// `s` as one shell word: as is when it is plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `text` and a newline to stdout.
fn say(text: &str) {
    write_out(&format!("{text}\n"));
}

/// Writes to stdout and flushes. Output is best effort: a closed stdout
/// must not stop the cluster from being stopped cleanly, so errors are
/// dropped (a closed terminal sends SIGHUP, which stops the demo).
fn write_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DigestCheck, Health, StoreView};

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_word("/work/target/debug/shelfctl"),
            "/work/target/debug/shelfctl"
        );
        assert_eq!(shell_word("/my demo/x"), "'/my demo/x'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_banner_has_working_examples() {
        let layout = Layout::create(tempfile::tempdir().unwrap().path()).unwrap();
        let binaries = Binaries {
            coordinator: "c".into(),
            agent: "a".into(),
            shelfctl: "/bin/shelfctl".into(),
        };
        let coordinator = CoordinatorAddrs {
            quic: "127.0.0.1:7400".parse().unwrap(),
            http: "127.0.0.1:7480".parse().unwrap(),
        };
        let agents = vec![
            ("store-1".to_string(), "127.0.0.1:8401".parse().unwrap()),
            ("store-2".to_string(), "127.0.0.1:8402".parse().unwrap()),
        ];
        let text = banner(&layout, &binaries, coordinator, &agents, 1234);
        for needle in [
            READY_LINE,
            "metrics http://127.0.0.1:7480/metrics",
            "store-2 REST API http://127.0.0.1:8402   (locations store-2, online)",
            "  curl -s http://127.0.0.1:8401/v1/items/store-1/milk-1l\n",
            "-H 'Idempotency-Key: demo-1234' -d '{\"amount\":1}' \
             http://127.0.0.1:8401/v1/items/store-1/milk-1l/reserve\n",
            "  curl -s http://127.0.0.1:8401/v1/sync\n",
            "about 4 requests per second",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(
            text.contains(&format!(
                "/bin/shelfctl --config {}/shelfctl.toml status",
                layout.dir().display()
            )),
            "{text}"
        );
        assert!(text.ends_with(&format!("{BANNER_END}\n")));
    }

    #[test]
    fn the_health_line_names_the_stores_that_need_attention() {
        let store = |id: &str, health: Health| StoreView {
            id: id.into(),
            name: id.into(),
            health,
            connected: true,
            last_report_ms: Some(1),
            last_sync: "1s ago".into(),
            sync_interval_ms: 2000,
            cursor: Some(3),
            lag: 0,
            digest: DigestCheck::Ok,
            item_count: Some(40),
            pending_forwards: Some(0),
            conflicts_5m: 0,
            rejections_5m: 0,
            software_version: None,
            last_error: None,
        };
        let mut view = StatusView {
            head: 80,
            now_ms: 2,
            healthy: true,
            summary: Default::default(),
            stores: vec![store("store-1", Health::Healthy)],
        };
        assert_eq!(health_line(&view), "status: all 1 stores healthy");
        view.stores.push(store("store-2", Health::Stale));
        assert_eq!(
            health_line(&view),
            "status: 1 of 2 stores need attention (store-2 STALE)"
        );
    }
}
