//! The command line: flags, their checks, and what each subcommand prints.
//!
//! Raw flags become validated settings in one step
//! ([`RunArgs::settings`], [`SetupArgs::settings`], [`RedisArgs::settings`],
//! [`FleetArgs::settings`]);
//! then the library does
//! the work and this module writes the results where they were asked for:
//! text or JSON lines on stdout, rows appended to `--csv`, the chart in
//! `--png`. Progress and warnings go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::driver::{Limit, RunSettings};
use crate::error::LoadError;
use crate::fleet::FleetSettings;
use crate::keys::KeyDistribution;
use crate::redis::{RedisSettings, RedisWorkload};
use crate::report::{self, Measurement};
use crate::setup::{SetupSettings, setup};
use crate::workload::{Mix, Workload};

/// Largest key space a run may use (the version cache holds one word per key).
pub const MAX_KEYS: u64 = 10_000_000;
/// Most writes outstanding on one connection (the coordinator allows 1024
/// concurrent streams per connection).
pub const MAX_IN_FLIGHT: usize = 1000;
/// Most Redis clients (Redis accepts 10,000 connections by default).
pub const MAX_REDIS_CLIENTS: usize = 10_000;
/// Most fleet stores (`setup --fleet`, `fleet --stores`): each is a QUIC
/// connection and a UDP socket of its own.
pub const MAX_FLEET_STORES: usize = 10_000;
/// Most writer connections of `fleet --rate`.
pub const MAX_WRITERS: usize = 64;

/// shelfsync load generator: drives a coordinator as many stores at once.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size difference of the variants is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a CA, certificates for stores load-1..load-N and a coordinator.toml.
    Setup(SetupArgs),
    /// Drive a coordinator and report throughput, rejections and latency.
    Run(RunArgs),
    /// Drive Redis with the same writes (a Lua compare-and-set per write).
    Redis(RedisArgs),
    /// Play stores fleet-1..fleet-N, each syncing its own location (and with
    /// --push woken by the coordinator), while writes go to those locations.
    Fleet(FleetArgs),
}

/// Flags of `setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Directory for certificates, coordinator.toml and the ledger (DIR/data).
    #[arg(long)]
    pub dir: PathBuf,
    /// Stores to register and issue certificates for (load-1..load-N).
    #[arg(long)]
    pub stores: usize,
    /// The location every store may write and read.
    #[arg(long, default_value = "bench")]
    pub location: String,
    /// Also register stores fleet-1..fleet-N for `fleet`, each with a
    /// location of its own.
    #[arg(long, default_value_t = 0)]
    pub fleet: usize,
    /// Fleet store fleet-i may read and write location PREFIXi only.
    #[arg(long, default_value = "idle-")]
    pub fleet_locations_prefix: String,
    /// The coordinator's QUIC address; a free loopback port when absent.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The coordinator's HTTP address (/readyz); a free loopback port when absent.
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Replace existing certificates and config.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    pub coordinator: String,
    /// Directory with ca.pem and load-i.pem/.key (as written by setup).
    #[arg(long)]
    pub certs: PathBuf,
    /// Name checked on the coordinator's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Connections, one per store; a list (1,8,32,64) measures each in order.
    #[arg(long, default_value = "64", value_parser = parse_counts)]
    pub connections: Counts,
    /// Writes outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// UDP sockets the connections are spread over (connection i uses socket
    /// i mod N, N at most the connections). The default 1 sends every
    /// connection through one socket; `scripts/bench/compare.sh` and
    /// `loadgen.sh` give each connection its own, as each of pgbench's
    /// connections is a TCP socket and each store a host. The
    /// coordinator sees N distinct connections either way, but one socket
    /// queues every connection's datagrams on one socket each way.
    #[arg(long, default_value_t = 1)]
    pub sockets: usize,
    /// Open the load at this many writes/s in all (each task sends on its
    /// own schedule) instead of as fast as answers come back; used to read
    /// the latency at a chosen fraction of the peak.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of the key space (skus k000000 ...).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution: uniform, hot (always the first key), zipf or zipf:EXPONENT.
    #[arg(long, default_value = "uniform")]
    pub distribution: KeyDistribution,
    /// Workload: optimistic (add 1 with expected_version), delta (remove 1),
    /// mix, hold-then-fulfil (a cart held, then fulfilled) or batch (remove 1
    /// on every line, all or none).
    #[arg(long, default_value = "optimistic")]
    pub workload: String,
    /// Op weights for --workload mix, e.g. add=40,remove=30,reserve=20,release=10.
    #[arg(long)]
    pub mix: Option<Mix>,
    /// Lines (distinct keys) of each cart or batch for --workload
    /// hold-then-fulfil or batch, 1..=100 (default 3).
    #[arg(long)]
    pub lines: Option<usize>,
    /// How long each measurement lasts, its warmup and timeout.
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Create the keys first (existing keys are fine) and learn their versions.
    #[arg(long)]
    pub preload: bool,
    /// Location of the keys; every store must be allowed to write it.
    #[arg(long, default_value = "bench")]
    pub location: String,
    /// Append one row per measurement to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Draw writes/s and p99 against connections (every label in --csv) into this PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Series name in the CSV and chart (default: workload, distribution, keys, in-flight).
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object per measurement instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `run` and `redis` that bound a measurement.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Measure for this long, e.g. 10s (default 10s unless --ops is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Measure this many writes instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured time before each measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest wait for a connection, a handshake or one answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `redis`.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// The Redis server, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Clients: one TCP connection each, one write outstanding on each.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Size of the key space (hashes item:k000000 ...).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution: uniform, hot (always the first key), zipf or zipf:EXPONENT.
    #[arg(long, default_value = "uniform")]
    pub distribution: KeyDistribution,
    /// Workload: optimistic (HGET the version, then add 1 expecting it) or
    /// delta (remove 1, no version).
    #[arg(long, default_value = "optimistic")]
    pub workload: RedisWorkload,
    /// How long the measurement lasts, its warmup and timeout.
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// First write every key as a fresh item (existing keys are overwritten).
    #[arg(long)]
    pub preload: bool,
    /// Name of the measurement (default: redis, workload, distribution, keys).
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    pub coordinator: String,
    /// Directory with ca.pem and fleet-i.pem/.key (as written by `setup --fleet`).
    #[arg(long)]
    pub certs: PathBuf,
    /// Name checked on the coordinator's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Stores fleet-1..fleet-N, one QUIC connection and UDP socket each.
    #[arg(long)]
    pub stores: usize,
    /// Time between two syncs of one store, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Store fleet-i syncs location PREFIXi (the --fleet-locations-prefix of setup).
    #[arg(long, default_value = "idle-")]
    pub locations_prefix: String,
    /// Each store holds a subscription and pulls at once on a wake-up past
    /// its cursor; the interval stays as the fallback.
    #[arg(long)]
    pub push: bool,
    /// Writes per second in all (add 1, as admin) spread round robin over
    /// the stores' locations; none when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections the writes go out on.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// The coordinator's process id: its CPU (% of one core over the run)
    /// and resident memory are reported.
    #[arg(long)]
    pub coordinator_pid: Option<u32>,
    /// Append one row for this run to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Draw coordinator CPU and propagation p99 against stores (every label
    /// in --csv) into this PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Series name in the CSV and chart (default: push or poll, and the rate).
    #[arg(long)]
    pub label: Option<String>,
    /// How long the stores sync once all are connected, e.g. 30s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Longest wait for a handshake or one answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A list of connection counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts(pub Vec<usize>);

/// Parses `64` or `1,8,32,64`: positive counts, in the order given.
pub fn parse_counts(text: &str) -> Result<Counts, String> {
    let counts = text
        .split(',')
        .map(|part| {
            let part = part.trim();
            match part.parse::<usize>() {
                Ok(0) => Err("connection counts must be at least 1".to_owned()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!(
                    "invalid connection count {part:?}: expected a number or a list like 1,8,32,64"
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Counts(counts))
}

/// Parses a duration like `500ms`, `10s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

impl SetupArgs {
    /// The setup settings, with free loopback ports for addresses not given.
    ///
    /// # Errors
    /// I/O errors when no free port can be found.
    pub fn settings(&self) -> Result<SetupSettings, LoadError> {
        if self.fleet > MAX_FLEET_STORES {
            return Err(LoadError::Usage(format!(
                "--fleet must be at most {MAX_FLEET_STORES}"
            )));
        }
        let listen = match self.listen {
            Some(addr) => addr,
            None => free_udp_port()?,
        };
        let http_listen = match self.http_listen {
            Some(addr) => addr,
            None => free_tcp_port()?,
        };
        Ok(SetupSettings {
            dir: self.dir.clone(),
            stores: self.stores,
            location: self.location.clone(),
            fleet: self.fleet,
            fleet_locations_prefix: self.fleet_locations_prefix.clone(),
            listen,
            http_listen,
            force: self.force,
        })
    }
}

fn port_error(source: std::io::Error) -> LoadError {
    LoadError::Io {
        action: "find a free port on",
        path: PathBuf::from("127.0.0.1"),
        source,
    }
}

/// A loopback UDP port free right now (the QUIC listener).
fn free_udp_port() -> Result<SocketAddr, LoadError> {
    std::net::UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| s.local_addr())
        .map_err(port_error)
}

/// A loopback TCP port free right now (the HTTP listener).
fn free_tcp_port() -> Result<SocketAddr, LoadError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|s| s.local_addr())
        .map_err(port_error)
}

impl MeasureArgs {
    /// `--duration` / `--ops` as a [`Limit`] (10 s when neither is given),
    /// after checking them and `--timeout`.
    fn limit(&self) -> Result<Limit, LoadError> {
        if self.timeout.is_zero() {
            return Err(LoadError::Usage("--timeout must be above 0".into()));
        }
        match (self.duration, self.ops) {
            (_, Some(0)) => Err(LoadError::Usage("--ops must be at least 1".into())),
            (_, Some(n)) => Ok(Limit::Ops(n)),
            (Some(d), None) if d.is_zero() => {
                Err(LoadError::Usage("--duration must be above 0".into()))
            }
            (Some(d), None) => Ok(Limit::Duration(d)),
            (None, None) => Ok(Limit::Duration(Duration::from_secs(10))),
        }
    }
}

impl RunArgs {
    /// Checks the flags and resolves the coordinator's address.
    ///
    /// # Errors
    /// [`LoadError::Usage`] naming the flag, [`LoadError::Resolve`] when the
    /// address does not resolve.
    pub async fn settings(&self) -> Result<RunSettings, LoadError> {
        let usage = |msg: String| LoadError::Usage(msg);
        if self.sockets == 0 {
            return Err(usage("--sockets must be at least 1".into()));
        }
        if self.connections.0.is_empty() {
            return Err(usage("--connections needs at least one count".into()));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.in_flight) {
            return Err(usage(format!(
                "--in-flight must be between 1 and {MAX_IN_FLIGHT}"
            )));
        }
        if !(1..=MAX_KEYS).contains(&self.keys) {
            return Err(usage(format!("--keys must be between 1 and {MAX_KEYS}")));
        }
        let workload =
            Workload::new(&self.workload, self.mix.clone(), self.lines).map_err(usage)?;
        if let Some(lines) = workload.lines()
            && u64::try_from(lines).map_or(true, |lines| lines > self.keys)
        {
            return Err(usage(format!(
                "--lines {lines} needs at least {lines} keys (--keys {}): the lines of an op are distinct keys",
                self.keys
            )));
        }
        let limit = self.measure.limit()?;
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(usage("--rate must be a number of writes/s above 0".into()));
        }
        shelfsync_core::item::validate_id("location", &self.location)
            .map_err(|e| usage(format!("--location: {e}")))?;
        let coordinator = resolve("coordinator", &self.coordinator).await?;
        let label = self.label.clone().unwrap_or_else(|| {
            format!(
                "{workload} {} keys={} in-flight={}",
                self.distribution, self.keys, self.in_flight
            )
        });
        Ok(RunSettings {
            coordinator,
            server_name: self.server_name.clone(),
            certs: self.certs.clone(),
            connections: self.connections.0.clone(),
            in_flight: self.in_flight,
            sockets: self.sockets,
            rate: self.rate,
            keys: self.keys,
            distribution: self.distribution,
            workload,
            limit,
            warmup: self.measure.warmup,
            preload: self.preload,
            location: self.location.clone(),
            label,
            timeout: self.measure.timeout,
            progress: true,
        })
    }
}

impl RedisArgs {
    /// Checks the flags and resolves the server's address.
    ///
    /// # Errors
    /// [`LoadError::Usage`] naming the flag, [`LoadError::Resolve`] when the
    /// address does not resolve.
    pub async fn settings(&self) -> Result<RedisSettings, LoadError> {
        let usage = |msg: String| LoadError::Usage(msg);
        if !(1..=MAX_REDIS_CLIENTS).contains(&self.clients) {
            return Err(usage(format!(
                "--clients must be between 1 and {MAX_REDIS_CLIENTS}"
            )));
        }
        if !(1..=MAX_KEYS).contains(&self.keys) {
            return Err(usage(format!("--keys must be between 1 and {MAX_KEYS}")));
        }
        let limit = self.measure.limit()?;
        let addr = resolve("Redis", &self.addr).await?;
        let label = self.label.clone().unwrap_or_else(|| {
            format!(
                "redis {} {} keys={}",
                self.workload, self.distribution, self.keys
            )
        });
        Ok(RedisSettings {
            addr,
            clients: self.clients,
            keys: self.keys,
            distribution: self.distribution,
            workload: self.workload,
            limit,
            warmup: self.measure.warmup,
            preload: self.preload,
            label,
            timeout: self.measure.timeout,
            progress: true,
        })
    }
}

impl FleetArgs {
    /// Checks the flags and resolves the coordinator's address.
    ///
    /// # Errors
    /// [`LoadError::Usage`] naming the flag, [`LoadError::Resolve`] when the
    /// address does not resolve.
    pub async fn settings(&self) -> Result<FleetSettings, LoadError> {
        let usage = |msg: String| LoadError::Usage(msg);
        if !(1..=MAX_FLEET_STORES).contains(&self.stores) {
            return Err(usage(format!(
                "--stores must be between 1 and {MAX_FLEET_STORES}"
            )));
        }
        for (flag, value) in [
            ("--interval", self.interval),
            ("--duration", self.duration),
            ("--timeout", self.timeout),
        ] {
            if value.is_zero() {
                return Err(usage(format!("{flag} must be above 0")));
            }
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(usage("--rate must be a number of writes/s above 0".into()));
        }
        if !(1..=MAX_WRITERS).contains(&self.writers) {
            return Err(usage(format!(
                "--writers must be between 1 and {MAX_WRITERS}"
            )));
        }
        // The first and the last location bound the rest: the pattern
        // allows digits anywhere, and the last one is the longest.
        for i in [1, self.stores] {
            let location = crate::fleet::location(&self.locations_prefix, i);
            shelfsync_core::item::validate_id("location", &location)
                .map_err(|e| usage(format!("--locations-prefix: {e}")))?;
        }
        let coordinator = resolve("coordinator", &self.coordinator).await?;
        Ok(FleetSettings {
            coordinator,
            server_name: self.server_name.clone(),
            certs: self.certs.clone(),
            stores: self.stores,
            interval: self.interval,
            push: self.push,
            rate: self.rate,
            writers: self.writers,
            locations_prefix: self.locations_prefix.clone(),
            duration: self.duration,
            timeout: self.timeout,
            coordinator_pid: self.coordinator_pid,
            label: self.label.clone().unwrap_or_else(|| {
                let mode = if self.push { "push" } else { "poll" };
                match self.rate {
                    Some(rate) => format!("{mode} {rate} writes/s"),
                    None => format!("{mode} no writes"),
                }
            }),
            progress: true,
        })
    }
}

/// The first address `HOST:PORT` resolves to; `what` names whose it is.
async fn resolve(what: &'static str, addr: &str) -> Result<SocketAddr, LoadError> {
    let resolve_error = |detail: String| LoadError::Resolve {
        what,
        addr: addr.to_owned(),
        detail,
    };
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_error("no address found".into()))
}

/// Runs the subcommand of `cli`, printing its results.
///
/// # Errors
/// Whatever stopped the subcommand; see [`LoadError`].
pub async fn execute(cli: Cli) -> Result<(), LoadError> {
    match cli.command {
        Command::Setup(args) => {
            let out = setup(&args.settings()?)?;
            let fleet = if args.fleet > 0 {
                format!(
                    ", fleet stores fleet-1..fleet-{} (locations {}1..{}{})",
                    args.fleet,
                    args.fleet_locations_prefix,
                    args.fleet_locations_prefix,
                    args.fleet
                )
            } else {
                String::new()
            };
            println!(
                "wrote a CA, the coordinator and admin certificates, stores load-1..load-{}{fleet} and {}",
                args.stores,
                out.config.display()
            );
            println!("listen={}", out.listen);
            println!("http_listen={}", out.http_listen);
            println!("config={}", out.config.display());
            Ok(())
        }
        Command::Run(args) => run_command(&args).await,
        Command::Redis(args) => {
            let measurement = crate::redis::run(&args.settings().await?).await?;
            if args.json {
                println!("{}", measurement.json_line());
            } else {
                print!("{}", measurement.text());
            }
            Ok(())
        }
        Command::Fleet(args) => fleet_command(&args).await,
    }
}

async fn fleet_command(args: &FleetArgs) -> Result<(), LoadError> {
    let report = crate::fleet::run(&args.settings().await?).await?;
    if args.json {
        println!("{}", report.json_line());
    } else {
        print!("{}", report.text());
    }
    let rows = match &args.csv {
        Some(csv) => {
            let rows = crate::fleet_report::append_csv(csv, &report.row())?;
            eprintln!("appended a row to {}", csv.display());
            rows
        }
        None => vec![report.row()],
    };
    if let Some(png) = &args.png {
        crate::fleet_report::draw(png, &rows)?;
        eprintln!("chart written to {}", png.display());
    }
    Ok(())
}

async fn run_command(args: &RunArgs) -> Result<(), LoadError> {
    let settings = args.settings().await?;
    let json = args.json;
    let per_op = settings.workload.item_writes_per_op();
    let noun = settings.workload.op_noun();
    let mut measurements = Vec::new();
    let outcome = crate::driver::run(&settings, |m: &Measurement| {
        if json {
            println!("{}", m.json_line());
        } else if per_op > 1 {
            // The counts above are of ops; the item writes they made follow.
            print!("{}", m.text());
            println!(
                "  one op is a {noun} of {per_op} item writes: accepted {noun}s/s {:.1}, item writes/s {:.1}",
                m.accepted_per_s(),
                m.accepted_per_s() * per_op as f64
            );
            println!();
        } else {
            println!("{}", m.text());
        }
        measurements.push(m.clone());
    })
    .await;
    // A sweep that stopped part way still records what it measured.
    if measurements.is_empty() {
        return outcome.map(|_| ());
    }
    if !json && measurements.len() > 1 {
        print!("{}", report::summary(&measurements));
    }
    if let Some(csv) = &args.csv {
        report::append_csv(csv, &measurements)?;
        eprintln!(
            "appended {} row(s) to {}",
            measurements.len(),
            csv.display()
        );
    }
    if let Some(png) = &args.png {
        // The chart shows every label in the CSV, this run's included.
        let rows = match &args.csv {
            Some(csv) => report::read_csv(csv)?,
            None => measurements,
        };
        crate::chart::draw(png, &rows)?;
        eprintln!("chart written to {}", png.display());
    }
    outcome.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `subcommand` with the coordinator and certs flags and `extra`.
    fn parse(subcommand: &str, extra: &[&str]) -> Result<Command, clap::Error> {
        let mut argv = vec!["shelfsync-loadgen", subcommand];
        argv.extend_from_slice(&["--coordinator", "127.0.0.1:7400", "--certs", "certs"]);
        argv.extend_from_slice(extra);
        Ok(Cli::try_parse_from(argv)?.command)
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        match parse("run", extra)? {
            Command::Run(args) => Ok(args),
            other => panic!("not parsed as run: {other:?}"),
        }
    }

    fn fleet_args(extra: &[&str]) -> Result<FleetArgs, clap::Error> {
        match parse("fleet", extra)? {
            Command::Fleet(args) => Ok(args),
            other => panic!("not parsed as fleet: {other:?}"),
        }
    }

    #[tokio::test]
    async fn fleet_flags_become_settings() {
        let settings = fleet_args(&[
            "--stores",
            "100",
            "--interval",
            "250ms",
            "--locations-prefix",
            "quiet.",
            "--duration",
            "30s",
            "--timeout",
            "2s",
            "--server-name",
            "coordinator.internal",
        ])
        .unwrap()
        .settings()
        .await
        .unwrap();
        assert_eq!(settings.stores, 100);
        assert_eq!(settings.interval, Duration::from_millis(250));
        assert_eq!(settings.locations_prefix, "quiet.");
        assert_eq!(settings.duration, Duration::from_secs(30));
        assert_eq!(settings.timeout, Duration::from_secs(2));
        assert_eq!(settings.server_name, "coordinator.internal");
        assert_eq!(settings.coordinator, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(settings.certs, PathBuf::from("certs"));

        let args = fleet_args(&["--stores", "3", "--json"]).unwrap();
        assert!(args.json);
        let defaults = args.settings().await.unwrap();
        assert_eq!(defaults.interval, Duration::from_secs(1));
        assert_eq!(defaults.duration, Duration::from_secs(10));
        assert_eq!(defaults.locations_prefix, "idle-");
        assert_eq!(defaults.server_name, "localhost");
        assert!(!defaults.push);
        assert_eq!(defaults.rate, None);
        assert_eq!(defaults.writers, 2);
        assert_eq!(defaults.coordinator_pid, None);
        assert_eq!(defaults.label, "poll no writes");

        let push = fleet_args(&[
            "--stores",
            "1000",
            "--push",
            "--rate",
            "2000",
            "--writers",
            "4",
            "--coordinator-pid",
            "4242",
        ])
        .unwrap()
        .settings()
        .await
        .unwrap();
        assert!(push.push);
        assert_eq!(push.rate, Some(2000.0));
        assert_eq!(push.writers, 4);
        assert_eq!(push.coordinator_pid, Some(4242));
        assert_eq!(push.label, "push 2000 writes/s");
    }

    #[tokio::test]
    async fn bad_fleet_flags_are_refused() {
        // Refused by the parser: --stores is required, durations and counts must parse.
        assert!(fleet_args(&[]).is_err());
        assert!(fleet_args(&["--stores", "x"]).is_err());
        assert!(fleet_args(&["--stores", "-1"]).is_err());
        assert!(fleet_args(&["--stores", "2", "--interval", "soon"]).is_err());
        assert!(fleet_args(&["--stores", "2", "--rate", "fast"]).is_err());
        // Refused by the checks, naming the flag, as usage errors (exit 2).
        let long_prefix = "p".repeat(63);
        for (flags, needle) in [
            (&["--stores", "0"][..], "--stores"),
            (&["--stores", "10001"][..], "--stores"),
            (&["--stores", "2", "--interval", "0s"][..], "--interval"),
            (&["--stores", "2", "--duration", "0s"][..], "--duration"),
            (&["--stores", "2", "--timeout", "0s"][..], "--timeout"),
            (&["--stores", "2", "--rate", "0"][..], "--rate"),
            (&["--stores", "2", "--rate", "NaN"][..], "--rate"),
            (&["--stores", "2", "--writers", "0"][..], "--writers"),
            (
                &["--stores", "2", "--locations-prefix", "a/b"][..],
                "--locations-prefix",
            ),
            (
                &["--stores", "2", "--locations-prefix=-x"][..],
                "--locations-prefix",
            ),
            // 63 characters and "1" fit; "10" does not.
            (
                &["--stores", "10", "--locations-prefix", &long_prefix][..],
                "--locations-prefix",
            ),
        ] {
            let err = fleet_args(flags).unwrap().settings().await.unwrap_err();
            assert!(err.is_usage(), "{flags:?}: {err}");
            assert!(err.to_string().contains(needle), "{flags:?}: {err}");
        }
        assert!(
            fleet_args(&["--stores", "9", "--locations-prefix", &long_prefix])
                .unwrap()
                .settings()
                .await
                .is_ok()
        );
    }

    #[test]
    fn setup_takes_fleet_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["shelfsync-loadgen", "setup", "--dir", "d", "--stores", "2"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Setup(args) => args.settings(),
                other => panic!("not parsed as setup: {other:?}"),
            }
        };
        let plain = parse(&[]).unwrap();
        assert_eq!(plain.fleet, 0);
        let fleet = parse(&["--fleet", "100", "--fleet-locations-prefix", "quiet-"]).unwrap();
        assert_eq!(fleet.fleet, 100);
        assert_eq!(fleet.fleet_locations_prefix, "quiet-");
        let err = parse(&["--fleet", "10001"]).unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("--fleet"),
            "{err}"
        );
    }

    fn redis_args(extra: &[&str]) -> Result<RedisArgs, clap::Error> {
        let mut argv = vec!["shelfsync-loadgen", "redis", "--addr", "127.0.0.1:6379"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Redis(args) => Ok(args),
            other => panic!("not parsed as redis: {other:?}"),
        }
    }

    #[test]
    fn connection_lists_parse_in_order() {
        assert_eq!(parse_counts("64").unwrap(), Counts(vec![64]));
        assert_eq!(
            parse_counts("1, 8,32,64").unwrap(),
            Counts(vec![1, 8, 32, 64])
        );
        assert_eq!(parse_counts("8,1").unwrap(), Counts(vec![8, 1]));
        for bad in ["", "0", "1,,2", "x", "-1", "1,0"] {
            assert!(parse_counts(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn run_flags_become_settings() {
        let args = run_args(&[
            "--connections",
            "1,8",
            "--workload",
            "mix",
            "--mix",
            "add=1,fulfil=1",
            "--distribution",
            "zipf:1.1",
            "--ops",
            "500",
            "--warmup",
            "0s",
        ])
        .unwrap();
        let settings = args.settings().await.unwrap();
        assert_eq!(settings.connections, vec![1, 8]);
        assert_eq!(settings.limit, Limit::Ops(500));
        assert_eq!(settings.warmup, Duration::ZERO);
        assert_eq!(
            settings.label,
            "mix:add=1,fulfil=1 zipf:1.1 keys=10000 in-flight=1"
        );
        assert_eq!(settings.coordinator, "127.0.0.1:7400".parse().unwrap());

        let defaults = run_args(&[]).unwrap().settings().await.unwrap();
        assert_eq!(defaults.connections, vec![64]);
        assert_eq!(defaults.sockets, 1);
        assert_eq!(defaults.limit, Limit::Duration(Duration::from_secs(10)));
        assert_eq!(defaults.workload, Workload::Optimistic);
        assert_eq!(defaults.location, "bench");
        assert_eq!(defaults.server_name, "localhost");

        let carts = run_args(&["--workload", "hold-then-fulfil", "--keys", "3"])
            .unwrap()
            .settings()
            .await
            .unwrap();
        assert_eq!(carts.workload, Workload::HoldThenFulfil { lines: 3 });
        assert_eq!(
            carts.label,
            "hold-then-fulfil:lines=3 uniform keys=3 in-flight=1"
        );
        let batch = run_args(&["--workload", "batch", "--lines", "10"])
            .unwrap()
            .settings()
            .await
            .unwrap();
        assert_eq!(batch.workload, Workload::Batch { lines: 10 });
    }

    #[tokio::test]
    async fn bad_run_flags_are_refused() {
        assert!(run_args(&["--duration", "10s", "--ops", "5"]).is_err());
        assert!(run_args(&["--distribution", "gauss"]).is_err());
        assert!(run_args(&["--mix", "add=x"]).is_err());
        assert!(run_args(&["--connections", "0"]).is_err());
        for (flags, needle) in [
            (&["--in-flight", "0"][..], "--in-flight"),
            (&["--sockets", "0"][..], "--sockets"),
            (&["--keys", "0"][..], "--keys"),
            (&["--ops", "0"][..], "--ops"),
            (&["--duration", "0s"][..], "--duration"),
            (&["--workload", "delta", "--mix", "add=1"][..], "--mix"),
            (&["--location", "a/b"][..], "--location"),
            (&["--lines", "2"][..], "--lines applies to"),
            (&["--workload", "batch", "--lines", "0"][..], "--lines"),
            (&["--workload", "batch", "--lines", "101"][..], "--lines"),
            (
                &[
                    "--workload",
                    "hold-then-fulfil",
                    "--lines",
                    "5",
                    "--keys",
                    "4",
                ][..],
                "--lines 5 needs at least 5 keys",
            ),
        ] {
            let err = run_args(flags).unwrap().settings().await.unwrap_err();
            assert!(err.is_usage(), "{flags:?}: {err}");
            assert!(err.to_string().contains(needle), "{flags:?}: {err}");
        }
    }

    #[tokio::test]
    async fn redis_flags_become_settings() {
        let defaults = redis_args(&[]).unwrap().settings().await.unwrap();
        assert_eq!(defaults.addr, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(defaults.clients, 64);
        assert_eq!(defaults.keys, 10_000);
        assert_eq!(defaults.distribution, KeyDistribution::Uniform);
        assert_eq!(defaults.workload, RedisWorkload::Optimistic);
        assert_eq!(defaults.limit, Limit::Duration(Duration::from_secs(10)));
        assert_eq!(defaults.warmup, Duration::from_secs(2));
        assert!(!defaults.preload);
        assert_eq!(defaults.label, "redis optimistic uniform keys=10000");

        let args = redis_args(&[
            "--clients",
            "4",
            "--keys",
            "10",
            "--distribution",
            "zipf:1.01",
            "--workload",
            "delta",
            "--ops",
            "200",
            "--warmup",
            "0s",
            "--preload",
            "--json",
        ])
        .unwrap();
        assert!(args.json);
        let settings = args.settings().await.unwrap();
        assert_eq!(settings.clients, 4);
        assert_eq!(settings.keys, 10);
        assert_eq!(
            settings.distribution,
            KeyDistribution::Zipf { exponent: 1.01 }
        );
        assert_eq!(settings.workload, RedisWorkload::Delta);
        assert_eq!(settings.limit, Limit::Ops(200));
        assert_eq!(settings.warmup, Duration::ZERO);
        assert!(settings.preload);
        assert_eq!(settings.label, "redis delta zipf:1.01 keys=10");
    }

    #[tokio::test]
    async fn bad_redis_flags_are_refused() {
        // Refused by the parser.
        assert!(Cli::try_parse_from(["shelfsync-loadgen", "redis"]).is_err());
        assert!(redis_args(&["--duration", "10s", "--ops", "5"]).is_err());
        assert!(redis_args(&["--distribution", "gauss"]).is_err());
        assert!(redis_args(&["--workload", "mix"]).is_err());
        assert!(redis_args(&["--clients", "-1"]).is_err());
        // Refused by the checks, naming the flag, as usage errors (exit 2).
        for (flags, needle) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--clients", "10001"][..], "--clients"),
            (&["--keys", "0"][..], "--keys"),
            (&["--ops", "0"][..], "--ops"),
            (&["--duration", "0s"][..], "--duration"),
            (&["--timeout", "0s"][..], "--timeout"),
        ] {
            let err = redis_args(flags).unwrap().settings().await.unwrap_err();
            assert!(err.is_usage(), "{flags:?}: {err}");
            assert!(err.to_string().contains(needle), "{flags:?}: {err}");
        }
        // An address without a port does not resolve: an error naming Redis.
        let mut args = redis_args(&[]).unwrap();
        args.addr = "no-port".into();
        let err = args.settings().await.unwrap_err();
        assert!(!err.is_usage());
        assert!(err.to_string().contains("Redis address"), "{err}");
    }
}
