//! The coordinator's metrics, in Prometheus text format on `/metrics`, and
//! the per-store counts of recent conflicts and rejections that `shelfctl
//! status` shows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use shelfsync_proto::ErrorCode;
use shelfsync_proto::time::now_ms;
use shelfsync_sequencer::{Answer, Request};

/// Labels of the write counter: both from fixed sets (op kinds, outcomes
/// and wire codes), so counting a write allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    op: &'static str,
    outcome: &'static str,
}

/// Labels of the per-store conflict counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

/// Length of one bucket of the recent-activity window.
const BUCKET_MS: u64 = 60_000;
/// Buckets in the window: five minutes.
const BUCKETS: u64 = 5;

/// One minute of a store's activity: (minute, conflicts, other rejections).
type RecentBucket = (u64, u64, u64);

/// All coordinator metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    writes: Family<WriteLabels, Counter>,
    conflicts: Family<StoreLabels, Counter>,
    key_wait: Histogram,
    group_size: Histogram,
    flush: Histogram,
    write: Histogram,
    connected: Gauge,
    /// Push subscriptions open (SPEC §5 "Sync push").
    pub subscriptions: Gauge,
    head: Gauge,
    recent: Mutex<HashMap<String, Vec<RecentBucket>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("shelfsync"),
            writes: Family::default(),
            conflicts: Family::default(),
            key_wait: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            flush: Histogram::new(exponential_buckets(0.000_05, 2.5, 12)),
            write: Histogram::new(exponential_buckets(0.000_05, 2.0, 12)),
            connected: Gauge::default(),
            subscriptions: Gauge::default(),
            head: Gauge::default(),
            recent: Mutex::new(HashMap::new()),
        };
        let r = &mut m.registry;
        r.register(
            "writes",
            "Writes decided, by op and outcome",
            m.writes.clone(),
        );
        r.register(
            "version_conflicts",
            "Writes refused for a version mismatch, by store",
            m.conflicts.clone(),
        );
        r.register(
            "key_wait_seconds",
            "Time a write waited for its key (queued before the sequencer decided it)",
            m.key_wait.clone(),
        );
        r.register(
            "write_seconds",
            "Time from a decoded write request to its answer (checked, decided, logged and synced)",
            m.write.clone(),
        );
        r.register(
            "commit_group_size",
            "Jobs decided per group commit",
            m.group_size.clone(),
        );
        r.register(
            "flush_seconds",
            "Duration of one group's ledger commit, its fdatasync included",
            m.flush.clone(),
        );
        r.register(
            "connected_stores",
            "Store connections open",
            m.connected.clone(),
        );
        r.register(
            "push_subscriptions",
            "Agents subscribed to wake-ups after commits to their locations",
            m.subscriptions.clone(),
        );
        r.register(
            "head_sequence",
            "Durable head of the change log",
            m.head.clone(),
        );
        m
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts the answer to a write: by op and outcome, and per store its
    /// conflicts and other rejections.
    pub(crate) fn count(&self, request: &Request, answer: &Answer) {
        let (op, store) = match request {
            Request::Write(command) => match command.lines.as_slice() {
                [line] => (line.op.kind(), &command.store),
                _ => ("multi", &command.store),
            },
            Request::Step(step) => (step.action.kind(), &step.store),
            Request::Read(_) => return,
        };
        let outcome = match answer {
            Answer::Accepted { replayed: true, .. } | Answer::Stepped { replayed: true, .. } => {
                "replayed"
            }
            Answer::Accepted { .. } | Answer::Stepped { .. } => "accepted",
            Answer::Refused(err) => err.code.as_str(),
            Answer::Read { .. } => return,
        };
        let labels = WriteLabels { op, outcome };
        self.writes.get_or_create(&labels).inc();
        match answer {
            Answer::Refused(err) if err.code == ErrorCode::VersionMismatch => {
                let labels = StoreLabels {
                    store: store.clone(),
                };
                self.conflicts.get_or_create(&labels).inc();
                self.bump_recent(store, true);
            }
            Answer::Refused(err) if err.code != ErrorCode::IdempotencyKeyReused => {
                self.bump_recent(store, false);
            }
            _ => {}
        }
    }

    pub(crate) fn observe_key_wait(&self, wait: Duration) {
        self.key_wait.observe(wait.as_secs_f64());
    }

    pub(crate) fn observe_group(&self, jobs: usize) {
        self.group_size.observe(jobs as f64);
    }

    pub(crate) fn observe_write(&self, took: Duration) {
        self.write.observe(took.as_secs_f64());
    }

    pub(crate) fn observe_flush(&self, took: Duration) {
        self.flush.observe(took.as_secs_f64());
    }

    pub(crate) fn set_head(&self, head: u64) {
        self.head.set(i64::try_from(head).unwrap_or(i64::MAX));
    }

    pub(crate) fn connection_opened(&self) {
        self.connected.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connected.dec();
    }

    fn bump_recent(&self, store: &str, conflict: bool) {
        let bucket = now_ms() / BUCKET_MS;
        let new = (bucket, u64::from(conflict), u64::from(!conflict));
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        // Looked up without allocating, as for every rejection after a
        // store's first.
        let Some(buckets) = recent.get_mut(store) else {
            recent.insert(store.to_string(), vec![new]);
            return;
        };
        buckets.retain(|(b, _, _)| b + BUCKETS > bucket);
        match buckets.last_mut() {
            Some((b, c, r)) if *b == bucket => *if conflict { c } else { r } += 1,
            _ => buckets.push(new),
        }
    }

    /// Conflicts and other rejections of a store's writes in the last five minutes.
    pub fn recent(&self, store: &str) -> (u64, u64) {
        let bucket = now_ms() / BUCKET_MS;
        let Ok(recent) = self.recent.lock() else {
            return (0, 0);
        };
        recent.get(store).map_or((0, 0), |buckets| {
            buckets
                .iter()
                .filter(|(b, _, _)| b + BUCKETS > bucket)
                .fold((0, 0), |(c, r), (_, bc, br)| (c + bc, r + br))
        })
    }
}
