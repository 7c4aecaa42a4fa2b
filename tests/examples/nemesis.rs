//! The fault suite as a long soak: `scripts/nemesis.sh` runs this.
//!
//! ```text
//! nemesis [--duration 1h] [--round 5m] [--seed N] [--clients 9] [--agents 3] [--out DIR]
//! ```
//!
//! The soak is a series of rounds, each a fresh cluster judged on its own
//! (checking one history of an hour at once would cost more than the run),
//! with seeds N, N+1, ...; each round prints its summary and the soak ends
//! with the totals. A round that finds anything keeps its directory (the
//! history, the final state, the schedule, the processes' logs) and the
//! soak exits 1 once it is over. `--seed N --duration D` with D no longer
//! than a round replays round N exactly as to its faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shelfsync_tests::nemesis::{RunSpec, run};

struct Args {
    duration: Duration,
    round: Duration,
    seed: u64,
    clients: u32,
    agents: usize,
    out: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(3600),
        round: Duration::from_secs(300),
        seed: shelfsync_tests::Rng::seed_from_clock() % 1_000_000,
        clients: 9,
        agents: 3,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let duration = |v: String| humantime::parse_duration(&v).map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--duration" => args.duration = duration(value()?)?,
            "--round" => args.round = duration(value()?)?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--clients" => {
                args.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--agents" => args.agents = value()?.parse().map_err(|e| format!("--agents: {e}"))?,
            "--out" => args.out = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err("usage: nemesis [--duration 1h] [--round 5m] [--seed N] \
                            [--clients 9] [--agents 3] [--out DIR]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if args.agents < 1 || args.clients < 1 || args.round.is_zero() {
        return Err("--agents, --clients and --round must be above zero".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut rounds, mut ops, mut faults, mut indeterminate, mut anomalies) = (0, 0, 0, 0, 0);
    let mut failed = Vec::new();
    let mut seed = args.seed;
    while started.elapsed() < args.duration {
        let left = args.duration.saturating_sub(started.elapsed());
        let mut spec = RunSpec::new(seed, left.min(args.round));
        spec.clients = args.clients;
        spec.agents = args.agents;
        spec.out_dir = args
            .out
            .as_ref()
            .map(|dir| dir.join(format!("seed-{seed}")));
        eprintln!("== round {} (seed {seed}, {:?})", rounds + 1, spec.duration);
        let report = match run(&spec).await {
            Ok(report) => report,
            Err(err) => {
                eprintln!("seed {seed}: the harness failed: {err:#}");
                failed.push(seed);
                break;
            }
        };
        println!("{}", report.summary());
        rounds += 1;
        ops += report.ops;
        faults += report.faults;
        indeterminate += report.indeterminate;
        anomalies += report.anomalies.len();
        if !report.anomalies.is_empty() {
            failed.push(seed);
        }
        seed += 1;
    }
    println!(
        "soak of {:?}: {rounds} rounds, {ops} ops, {faults} faults injected, {indeterminate} \
         indeterminate outcomes, {anomalies} anomalies{}",
        started.elapsed(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                " (seeds {failed:?}: replay with --seed N --duration {:?})",
                args.round
            )
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
