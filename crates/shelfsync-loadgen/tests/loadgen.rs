//! The load generator against a real coordinator in this process: bound to
//! `127.0.0.1:0`, configured by the load generator's own `setup`, over
//! mutual-TLS QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use shelfsync_coordinator::{Config, Coordinator};
use shelfsync_core::ItemKey;
use shelfsync_loadgen::cli::{Cli, execute};
use shelfsync_loadgen::driver::PRELOAD_QUANTITY;
use shelfsync_loadgen::fleet::FleetSettings;
use shelfsync_loadgen::keys::{KeyDistribution, sku};
use shelfsync_loadgen::setup::{SetupSettings, setup};
use shelfsync_loadgen::workload::Workload;
use shelfsync_loadgen::{Limit, LoadError, Measurement, RunSettings};
use shelfsync_proto::{Client, ReadRequest, Request, Response, TlsFiles};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A coordinator serving in a task, with the directory `setup` wrote.
struct Bench {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Bench {
    async fn start(stores: usize) -> Self {
        Self::start_with_fleet(stores, 0).await
    }

    /// A coordinator with `stores` load stores and `fleet` fleet stores.
    async fn start_with_fleet(stores: usize, fleet: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = setup(&SetupSettings {
            dir: dir.path().to_path_buf(),
            stores,
            location: "bench".into(),
            fleet,
            fleet_locations_prefix: "idle-".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            force: false,
        })
        .unwrap();
        // The config `setup` wrote is the one the coordinator binary reads.
        let config = Config::load(&out.config).unwrap();
        assert_eq!(config.stores.len(), stores + fleet);
        let coordinator = Coordinator::bind(config).await.unwrap();
        let addr = coordinator.quic_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run(async move {
            let _ = stopped.await;
        }));
        Bench {
            dir,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn settings(&self, connections: &[usize], ops: u64) -> RunSettings {
        RunSettings {
            coordinator: self.addr,
            server_name: "localhost".into(),
            certs: self.certs(),
            connections: connections.to_vec(),
            in_flight: 2,
            // Fewer sockets than connections: some connections share one.
            sockets: 2,
            rate: None,
            keys: 20,
            distribution: KeyDistribution::Uniform,
            workload: Workload::Optimistic,
            limit: Limit::Ops(ops),
            warmup: Duration::ZERO,
            preload: true,
            location: "bench".into(),
            label: "test".into(),
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }

    /// The item at key index `index`, read strongly as admin.
    async fn item(&self, index: u64) -> shelfsync_core::Item {
        let files = TlsFiles {
            ca_cert: self.dir.path().join("ca.pem"),
            cert: self.dir.path().join("admin.pem"),
            key: self.dir.path().join("admin.key"),
        };
        let config = shelfsync_proto::tls::client_config(&files).unwrap();
        let client = Client::connect(self.addr, "localhost", config, Duration::from_secs(10))
            .await
            .unwrap();
        let key = ItemKey::new("bench", sku(index)).unwrap();
        let reply = client
            .request(&Request::Read(ReadRequest { key }))
            .await
            .unwrap();
        client.close().await;
        match reply {
            Response::Read(reply) => reply.item,
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Every write is accounted for exactly once.
fn assert_adds_up(m: &Measurement, ops: u64) {
    assert_eq!(m.ops, ops, "{m:?}");
    assert_eq!(m.accepted + m.rejected_total() + m.errors, m.ops, "{m:?}");
    assert_eq!(m.errors, 0, "{m:?}");
    assert!(m.writes_per_s > 0.0, "{m:?}");
    assert!(m.p50_ms > 0.0 && m.p50_ms <= m.p99_ms, "{m:?}");
    assert!(m.p99_ms <= m.p999_ms && m.p999_ms <= m.max_ms, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_accounts_for_every_write_and_the_ledger_agrees() {
    let bench = Bench::start(4).await;
    let settings = bench.settings(&[1, 4], 200);
    let mut seen = Vec::new();
    let first = shelfsync_loadgen::run(&settings, |m| seen.push(m.connections))
        .await
        .unwrap();
    assert_eq!(seen, [1, 4]);
    assert_eq!(first.len(), 2);
    for (m, connections) in first.iter().zip([1, 4]) {
        assert_eq!(m.connections, connections);
        assert_eq!(m.in_flight, 2);
        assert_eq!(m.workload, "optimistic");
        assert_adds_up(m, 200);
        // Racing writers may conflict; nothing else may be refused (an
        // idempotency key used twice would show up here).
        assert!(m.rejected.keys().all(|r| r == "version_mismatch"), "{m:?}");
    }

    // A second run preloads again: the keys exist, which is fine, and their
    // versions come from the refusals.
    let second = shelfsync_loadgen::run(&bench.settings(&[4], 150), |_| {})
        .await
        .unwrap();
    assert_adds_up(&second[0], 150);
    assert!(
        !second[0].rejected.contains_key("not_found"),
        "{:?}",
        second[0]
    );

    // Every accepted write was `add 1` on one of the keys, and nothing else
    // changed them: the ledger holds exactly that many extra units.
    let accepted: u64 = first.iter().chain(&second).map(|m| m.accepted).sum();
    let mut extra = 0;
    for index in 0..20 {
        extra += bench.item(index).await.quantity - PRELOAD_QUANTITY;
    }
    assert_eq!(extra, accepted);
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_conflicts_show_as_version_mismatch() {
    let bench = Bench::start(4).await;
    let mut settings = bench.settings(&[4], 300);
    settings.distribution = KeyDistribution::Hot;
    settings.in_flight = 4;
    let m = shelfsync_loadgen::run(&settings, |_| {}).await.unwrap();
    let m = &m[0];
    assert_adds_up(m, 300);
    assert!(m.accepted > 0, "{m:?}");
    // Sixteen writers on one key with one version: most of them lose.
    let conflicts = m.rejected.get("version_mismatch").copied().unwrap_or(0);
    assert!(conflicts > 0, "{m:?}");
    assert_eq!(m.rejected.len(), 1, "{m:?}");
    // Each accepted write raised the hot key's version by one, from 1.
    let hot = bench.item(0).await;
    assert_eq!(hot.version, 1 + m.accepted);
    assert_eq!(hot.quantity, PRELOAD_QUANTITY + m.accepted);
    assert_eq!(bench.item(1).await.version, 1);
    bench.stop().await;
}

/// `--rate` paces the writes: 60 writes at 200/s cannot finish in much
/// less than the 0.3 s the schedule spreads them over (a lower bound only:
/// a slow machine makes it longer, never shorter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_spreads_the_writes_over_time() {
    let bench = Bench::start(2).await;
    let mut settings = bench.settings(&[2], 60);
    settings.rate = Some(200.0);
    let m = shelfsync_loadgen::run(&settings, |_| {}).await.unwrap();
    let m = &m[0];
    assert_adds_up(m, 60);
    // Four tasks at 200/s in all: 20 ms between two writes of a task, and
    // the last of a task's 15 writes goes out 14 periods after its first.
    assert!(m.duration_s >= 0.7 * 14.0 * 0.02, "{m:?}");
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_and_mix_count_stock_rejections_by_reason() {
    let bench = Bench::start(2).await;
    let mut delta = bench.settings(&[2], 120);
    delta.workload = Workload::Delta;
    delta.distribution = KeyDistribution::Zipf { exponent: 0.99 };
    let m = &shelfsync_loadgen::run(&delta, |_| {}).await.unwrap()[0];
    assert_adds_up(m, 120);
    assert_eq!(m.accepted, 120, "{m:?}");

    // Nothing is reserved, so every release is refused.
    let mut mix = bench.settings(&[2], 80);
    mix.workload = Workload::new("mix", Some("release=1".parse().unwrap()), None).unwrap();
    mix.preload = false;
    let m = &shelfsync_loadgen::run(&mix, |_| {}).await.unwrap()[0];
    assert_adds_up(m, 80);
    assert_eq!(m.rejected.get("insufficient_reserved"), Some(&80), "{m:?}");
    bench.stop().await;
}

/// Units taken from the 20 keys, their reservations and held units, and the
/// writes made to them, as the ledger says.
async fn ledger_totals(bench: &Bench) -> (u64, u64, u64, u64) {
    let (mut taken, mut reserved, mut held, mut writes) = (0, 0, 0, 0);
    for index in 0..20 {
        let item = bench.item(index).await;
        taken += PRELOAD_QUANTITY - item.quantity;
        reserved += item.reserved;
        held += item.held;
        writes += item.version - 1;
    }
    (taken, reserved, held, writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_and_batches_write_every_line_and_count_once() {
    let bench = Bench::start(2).await;
    // Every cart holds then fulfils 3 distinct keys: 6 item writes, 3 units
    // gone, nothing left reserved or held.
    let mut carts = bench.settings(&[2], 40);
    carts.workload = Workload::new("hold-then-fulfil", None, None).unwrap();
    let m = &shelfsync_loadgen::run(&carts, |_| {}).await.unwrap()[0];
    assert_adds_up(m, 40);
    assert_eq!(m.accepted, 40, "{m:?}");
    assert_eq!(m.workload, "hold-then-fulfil:lines=3");
    assert_eq!(ledger_totals(&bench).await, (120, 0, 0, 240));

    // Every batch removes 1 from 4 distinct keys in one commit.
    let mut batches = bench.settings(&[2], 30);
    batches.workload = Workload::new("batch", None, Some(4)).unwrap();
    batches.distribution = KeyDistribution::Hot;
    batches.preload = false;
    let m = &shelfsync_loadgen::run(&batches, |_| {}).await.unwrap()[0];
    assert_adds_up(m, 30);
    assert_eq!(m.accepted, 30, "{m:?}");
    assert_eq!(ledger_totals(&bench).await, (240, 0, 0, 360));
    // Hot batches are keys 0..=3, every one of them.
    for index in 0..4 {
        assert!(bench.item(index).await.version > 30, "key {index}");
    }
    bench.stop().await;

    // Keys that do not exist: every cart and batch is refused at its first
    // step, one rejection each.
    let empty = Bench::start(2).await;
    for workload in ["hold-then-fulfil", "batch"] {
        let mut refused = empty.settings(&[2], 12);
        refused.workload = Workload::new(workload, None, Some(2)).unwrap();
        refused.preload = false;
        let m = &shelfsync_loadgen::run(&refused, |_| {}).await.unwrap()[0];
        assert_adds_up(m, 12);
        assert_eq!(m.rejected.get("not_found"), Some(&12), "{workload}: {m:?}");
    }
    empty.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_certificates_is_a_clear_usage_error() {
    let bench = Bench::start(2).await;
    let err = shelfsync_loadgen::run(&bench.settings(&[1, 3], 10), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::MissingCerts {
                needed: 3,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_usage());
    let msg = err.to_string();
    assert!(msg.contains("setup --dir DIR --stores 3"), "{msg}");

    // A location the stores may not write is refused before any write.
    let mut elsewhere = bench.settings(&[1], 10);
    elsewhere.location = "online".into();
    let err = shelfsync_loadgen::run(&elsewhere, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWritable { .. }), "{err:?}");
    bench.stop().await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_writes_csv_rows_and_a_chart() {
    let bench = Bench::start(2).await;
    let results = bench.dir.path().join("results");
    let csv = results.join("runs.csv");
    let png = results.join("runs.png");
    let certs = bench.certs();
    let addr = bench.addr.to_string();
    for label in ["first", "second"] {
        let args = [
            "shelfsync-loadgen",
            "run",
            "--coordinator",
            &addr,
            "--certs",
            certs.to_str().unwrap(),
            "--connections",
            "1,2",
            "--keys",
            "10",
            "--ops",
            "50",
            "--warmup",
            "0s",
            "--preload",
            "--json",
            "--label",
            label,
            "--csv",
            csv.to_str().unwrap(),
            "--png",
            png.to_str().unwrap(),
        ];
        execute(Cli::try_parse_from(args).unwrap()).await.unwrap();
    }
    let rows = shelfsync_loadgen::report::read_csv(&csv).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter()
            .map(|r| (r.label.as_str(), r.connections))
            .collect::<Vec<_>>(),
        [("first", 1), ("first", 2), ("second", 1), ("second", 2)]
    );
    assert_eq!(read(&csv).lines().count(), 5);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    bench.stop().await;
}

/// `fleet` with three stores for two seconds: every store syncs its own
/// location again and again, starting from the head its snapshot gave it,
/// and ends at the head (nobody writes its location, so it receives nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_stores_syncs_each_its_own_location() {
    let bench = Bench::start_with_fleet(1, 3).await;
    // Some history first, elsewhere: the fleet's cursors start past it.
    let writes = shelfsync_loadgen::run(&bench.settings(&[1], 20), |_| {})
        .await
        .unwrap();
    // The preload's 20 creates and the accepted writes are in the log.
    let logged = 20 + writes[0].accepted;

    let settings = FleetSettings {
        coordinator: bench.addr,
        server_name: "localhost".into(),
        certs: bench.certs(),
        stores: 3,
        interval: Duration::from_millis(200),
        push: false,
        rate: None,
        writers: 1,
        locations_prefix: "idle-".into(),
        duration: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
        coordinator_pid: None,
        label: "poll".into(),
        progress: false,
    };
    let report = shelfsync_loadgen::fleet::run(&settings).await.unwrap();
    assert_eq!(report.stores, 3);
    assert_eq!(report.per_store.len(), 3);
    for (i, store) in report.per_store.iter().enumerate() {
        assert_eq!(store.store, format!("fleet-{}", i + 1));
        assert_eq!(store.location, format!("idle-{}", i + 1));
        // Ten ticks in two seconds; a slow machine may make fewer, never none.
        assert!(store.syncs >= 3, "{store:?}");
        assert_eq!(store.errors, 0, "{store:?}");
        assert_eq!(store.changes, 0, "{store:?}");
        assert_eq!(store.cursor_expired, 0, "{store:?}");
        assert!(store.cursor >= logged, "{store:?}");
    }
    assert_eq!(
        report.syncs,
        report.per_store.iter().map(|s| s.syncs).sum::<u64>()
    );
    assert!(report.syncs_per_s > 0.0, "{report:?}");

    // Asked for more stores than there are certificates: a usage error.
    let err = shelfsync_loadgen::fleet::run(&FleetSettings {
        stores: 4,
        ..settings.clone()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::MissingFleetCerts {
                needed: 4,
                found: 3,
                ..
            }
        ),
        "{err:?}"
    );
    // A prefix the stores may not read: refused before the clock starts.
    let err = shelfsync_loadgen::fleet::run(&FleetSettings {
        locations_prefix: "other-".into(),
        ..settings
    })
    .await
    .unwrap_err();
    assert!(matches!(err, LoadError::NotReadable { .. }), "{err:?}");
    assert!(err.is_usage());
    bench.stop().await;
}

/// `fleet --push --rate`: with an interval far longer than the run, every
/// write reaches its store's replica by a wake-up, and the report carries
/// the propagation, the bytes and (this process standing in for the
/// coordinator's pid) CPU and memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_writes_reach_the_fleet_replicas_before_any_poll() {
    let bench = Bench::start_with_fleet(1, 3).await;
    let settings = FleetSettings {
        coordinator: bench.addr,
        server_name: "localhost".into(),
        certs: bench.certs(),
        stores: 3,
        interval: Duration::from_secs(60),
        push: true,
        rate: Some(60.0),
        writers: 2,
        locations_prefix: "idle-".into(),
        duration: Duration::from_secs(3),
        timeout: Duration::from_secs(10),
        coordinator_pid: Some(std::process::id()),
        label: "push".into(),
        progress: false,
    };
    let report = shelfsync_loadgen::fleet::run(&settings).await.unwrap();
    assert!(report.writes.acked >= 30, "{report:?}");
    assert_eq!(report.writes.acked, report.writes.sent, "{report:?}");
    assert_eq!(report.propagated, report.writes.acked, "{report:?}");
    assert_eq!(report.not_propagated, 0, "{report:?}");
    // The first tick of a 60 s interval lies past the run for every store
    // but the first, whose first tick is at once.
    assert!(report.push_pulls > 0, "{report:?}");
    assert!(report.tick_pulls <= 1, "{report:?}");
    assert!(report.propagation_max_ms < 2_000.0, "{report:?}");
    assert_eq!(report.errors + report.subscription_errors, 0, "{report:?}");
    assert!(report.tx_bytes_per_store_s > 0.0, "{report:?}");
    assert!(report.rx_bytes_per_store_s > 0.0, "{report:?}");
    assert!(report.coordinator_cpu_pct.is_some(), "{report:?}");
    assert!(
        report.coordinator_rss_mib.unwrap_or(0.0) > 0.0,
        "{report:?}"
    );
    for store in &report.per_store {
        // The item `fleet` its location was created with.
        assert_eq!(store.items, 1, "{store:?}");
    }
    bench.stop().await;
}
