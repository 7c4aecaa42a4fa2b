//! The agent's metrics in Prometheus text format, on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the forwarded-write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// `write` or `read`.
    pub kind: String,
    /// `accepted`, a refusal code, or `unavailable`.
    pub outcome: String,
}

/// Labels of a REST request: its method and route (the template, e.g.
/// `/v1/items/{location}/{sku}`), both from fixed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `GET`, `PUT`, `POST`, `DELETE` or `OTHER`.
    pub method: &'static str,
    /// The route template.
    pub route: &'static str,
}

/// Labels of the REST request counter: the route and the answer's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET`, `PUT`, `POST`, `DELETE` or `OTHER`.
    pub method: &'static str,
    /// The route template.
    pub route: &'static str,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of the forward latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What was forwarded: `writes`, `batch`, `read`, `hold`, ...
    pub kind: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to about 3 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// All agent metrics.
pub struct Metrics {
    registry: Registry,
    /// Last change-log sequence number applied.
    pub cursor: Gauge,
    /// Changes between the cursor and the coordinator's head at the last sync.
    pub behind: Gauge,
    /// Unix time (seconds) of the last completed sync.
    pub last_sync: Gauge,
    /// Syncs that failed.
    pub sync_errors: Counter,
    /// Syncs that completed.
    pub syncs: Counter,
    /// Items in the replica.
    pub items: Gauge,
    /// Forwarded requests by kind and outcome.
    pub forwards: Family<ForwardLabels, Counter>,
    /// Forwarded requests in flight.
    pub pending_forwards: Gauge,
    /// 1 while the push subscription is open, else 0.
    pub push_connected: Gauge,
    /// Wake-ups the coordinator pushed.
    pub wakeups: Counter,
    /// REST requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// REST request latency by route.
    pub request_seconds: Histograms<RouteLabels>,
    /// Time from forwarding a request to the coordinator's answer, retries
    /// included, by kind.
    pub forward_seconds: Histograms<KindLabels>,
    /// Seconds since the last completed sync (set when scraped).
    pub replica_age: Gauge,
    /// The coordinator's verdict on the replica's digest at the last
    /// report: 1 matched, 0 differed, -1 not checked.
    pub digest_ok: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shelfsync_agent");
        let metrics = Metrics {
            cursor: Gauge::default(),
            behind: Gauge::default(),
            last_sync: Gauge::default(),
            sync_errors: Counter::default(),
            syncs: Counter::default(),
            items: Gauge::default(),
            forwards: Family::default(),
            pending_forwards: Gauge::default(),
            push_connected: Gauge::default(),
            wakeups: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            forward_seconds: Family::new_with_constructor(latency),
            replica_age: Gauge::default(),
            digest_ok: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cursor",
            "Last change applied to the replica",
            metrics.cursor.clone(),
        );
        registry.register(
            "changes_behind",
            "Changes between the replica's cursor and the coordinator's head",
            metrics.behind.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last completed sync",
            metrics.last_sync.clone(),
        );
        registry.register(
            "sync_errors",
            "Syncs that failed",
            metrics.sync_errors.clone(),
        );
        registry.register("syncs", "Syncs that completed", metrics.syncs.clone());
        registry.register(
            "replica_items",
            "Items in the replica",
            metrics.items.clone(),
        );
        registry.register(
            "forwards",
            "Requests forwarded to the coordinator, by kind and outcome",
            metrics.forwards.clone(),
        );
        registry.register(
            "pending_forwards",
            "Forwarded requests in flight",
            metrics.pending_forwards.clone(),
        );
        registry.register(
            "push_connected",
            "1 while the subscription to the coordinator's wake-ups is open",
            metrics.push_connected.clone(),
        );
        registry.register(
            "push_wakeups",
            "Wake-ups the coordinator pushed",
            metrics.wakeups.clone(),
        );
        registry.register(
            "requests",
            "REST requests, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "request_seconds",
            "REST request latency, by method and route",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "forward_seconds",
            "Time from forwarding a request to the coordinator's answer, retries included",
            metrics.forward_seconds.clone(),
        );
        registry.register(
            "replica_age_seconds",
            "Seconds since the replica's last completed sync",
            metrics.replica_age.clone(),
        );
        registry.register(
            "digest_ok",
            "Whether the coordinator found the replica's digest equal at the last report (1), different (0) or did not check it (-1)",
            metrics.digest_ok.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one REST request.
    pub fn request(&self, route: RouteLabels, status: u16, took: std::time::Duration) {
        let labels = RequestLabels {
            method: route.method,
            route: route.route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&route)
            .observe(took.as_secs_f64());
    }

    /// Counts one forwarded request.
    pub fn forwarded(&self, kind: &str, outcome: &str) {
        self.forwards
            .get_or_create(&ForwardLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// Saturating conversion for gauges.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
