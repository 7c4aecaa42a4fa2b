//! The fault suite, bounded for `cargo test` (docs/testing.md).
//!
//! A few seeds of the full fault mix against the real binaries, each run
//! judged by every checker; and two deliberately broken coordinators (a
//! failpoint that acknowledges writes before they are durable, one that
//! skips the idempotency lookup), which the suite must catch. A failure
//! prints its seed and the directory of its history; the same seed replays
//! the same fault schedule:
//!
//! ```text
//! cargo test --workspace --no-run     # the binaries, with failpoints
//! SHELFSYNC_NEMESIS_SEEDS=1234 cargo test -p shelfsync-tests --test nemesis
//! scripts/nemesis.sh --seed 1234 --duration 60s
//! ```
//!
//! Its own test binary (not a module of `e2e`), so that it runs after the
//! other end-to-end tests instead of beside them on a 2-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use shelfsync_tests::nemesis::faults::{Kind, Mix};
use shelfsync_tests::nemesis::{Mutation, RunSpec, run};

/// Seeds of the bounded runs, unless `SHELFSYNC_NEMESIS_SEEDS` names others
/// (comma-separated).
const SEEDS: [u64; 3] = [1, 2, 3];
/// How long each bounded run's clients and faults go on.
const RUN: Duration = Duration::from_secs(25);

fn seeds() -> Vec<u64> {
    match std::env::var("SHELFSYNC_NEMESIS_SEEDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("SHELFSYNC_NEMESIS_SEEDS: numbers, comma-separated")
            })
            .collect(),
        _ => SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_with_every_fault_find_no_anomaly() {
    let mut failed = Vec::new();
    for seed in seeds() {
        let report = run(&RunSpec::new(seed, RUN)).await.unwrap();
        eprintln!("{}", report.summary());
        assert!(report.faults > 0, "seed {seed}: no fault was injected");
        assert!(report.writes > 100, "seed {seed}: too few writes to judge");
        if !report.anomalies.is_empty() {
            failed.push(format!("seed {seed}: {}", report.summary()));
        }
    }
    assert!(
        failed.is_empty(),
        "the fault suite found anomalies:\n{}",
        failed.join("\n")
    );
}

/// A coordinator that acknowledges before the log is synced loses the
/// writes of its last moments at a SIGKILL: the checkers must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_that_acknowledges_before_durable_is_caught() {
    let mut spec = RunSpec::new(101, Duration::from_secs(20));
    spec.mutation = Some(Mutation::AckBeforeDurable);
    spec.mix = Mix {
        kinds: vec![Kind::KillCoordinator],
        hold_ms: (200, 600),
        gap_ms: (300, 800),
    };
    let report = run(&spec).await.unwrap();
    eprintln!("{}", report.summary());
    assert!(
        report
            .anomalies
            .iter()
            .any(|a| matches!(a.checker, "exactly_once" | "linearizable")),
        "the suite did not catch acknowledged writes lost at a crash:\n{}",
        report.summary()
    );
}

/// A coordinator that skips the idempotency lookup applies a retried write
/// twice: the replays of the workload must show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_that_skips_the_idempotency_lookup_is_caught() {
    let mut spec = RunSpec::new(102, Duration::from_secs(10));
    spec.mutation = Some(Mutation::SkipIdempotencyLookup);
    spec.mix = Mix {
        kinds: Vec::new(),
        ..Mix::default()
    };
    let report = run(&spec).await.unwrap();
    eprintln!("{}", report.summary());
    assert!(
        report.anomalies.iter().any(|a| a.checker == "exactly_once"),
        "the suite did not catch a retried write applied twice:\n{}",
        report.summary()
    );
}
