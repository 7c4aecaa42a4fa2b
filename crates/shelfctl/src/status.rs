//! `shelfctl status`: the sync health of every registered store.
//!
//! The coordinator answers with raw facts per store ([`StoreStatus`]); this
//! module judges them with one pure function, [`classify`], using the
//! coordinator's clock (`now_ms` of the reply) so shelfctl's own clock never
//! matters. The rules, first match wins:
//!
//! 1. no report ever → [`Health::NeverSeen`];
//! 2. the last report's digest did not match the coordinator's state at its
//!    cursor → [`Health::Diverged`];
//! 3. no report for more than [`STALE_INTERVALS`] × the store's
//!    `sync_interval` → [`Health::Stale`];
//! 4. more than [`LAG_LIMIT`] changes behind the head → [`Health::Lagging`]
//!    (a store that reports on time but cannot keep up; a small lag is normal,
//!    since writes keep landing between two syncs);
//! 5. no open connection → [`Health::Disconnected`] (its replica cannot
//!    forward writes even though its last report is recent);
//! 6. otherwise [`Health::Healthy`].
//!
//! The command exits 0 when every store is healthy and 1 otherwise; `--watch`
//! redraws every [`WATCH_INTERVAL`] until Ctrl-C and exits with the code of
//! the last refresh (2 if that refresh failed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{Attribute, Cell, Color};
use serde::Serialize;
use shelfsync_proto::{Client, StatusReply, StoreStatus};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use crate::render;

/// A store whose last report is older than this many sync intervals is stale.
pub const STALE_INTERVALS: u64 = 3;
/// A store more than this many changes behind the head is lagging.
pub const LAG_LIMIT: u64 = 1000;
/// How often `--watch` refreshes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What `shelfctl status` was asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// Print JSON instead of a table.
    pub json: bool,
    /// Refresh until Ctrl-C.
    pub watch: bool,
    /// Show only the stores that are not healthy.
    pub problems: bool,
    /// The order of the stores.
    pub sort: Sort,
}

/// The order `shelfctl status` lists stores in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Registry order.
    #[default]
    Registry,
    /// Most changes behind the head first.
    Lag,
}

/// The judgement of one store's sync state; see the module docs for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Reporting on time, digest not refuted, close to the head, connected.
    Healthy,
    /// Registered, but it never reported.
    NeverSeen,
    /// Its replica's digest did not match the coordinator's state.
    Diverged,
    /// No report for more than [`STALE_INTERVALS`] sync intervals.
    Stale,
    /// More than [`LAG_LIMIT`] changes behind the head.
    Lagging,
    /// No connection open now, though its last report is recent.
    Disconnected,
}

impl Health {
    /// Whether this counts as healthy for the exit code.
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }

    /// The word shown in the table; the two worst states are in capitals so
    /// they stand out without colour too.
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "ok",
            Health::NeverSeen => "never seen",
            Health::Diverged => "DIVERGED",
            Health::Stale => "STALE",
            Health::Lagging => "lagging",
            Health::Disconnected => "disconnected",
        }
    }

    fn color(self) -> Color {
        match self {
            Health::Healthy => Color::Green,
            Health::Diverged | Health::Stale => Color::Red,
            Health::NeverSeen | Health::Lagging | Health::Disconnected => Color::Yellow,
        }
    }
}

/// Judges one store at the coordinator's time `now_ms`.
pub fn classify(store: &StoreStatus, now_ms: u64) -> Health {
    let Some(last_report_ms) = store.last_report_ms else {
        return Health::NeverSeen;
    };
    if store.digest_ok == Some(false) {
        return Health::Diverged;
    }
    let stale_after = store.sync_interval_ms.saturating_mul(STALE_INTERVALS);
    if now_ms.saturating_sub(last_report_ms) > stale_after {
        return Health::Stale;
    }
    if store.lag > LAG_LIMIT {
        return Health::Lagging;
    }
    if !store.connected {
        return Health::Disconnected;
    }
    Health::Healthy
}

/// The outcome of the last replica digest check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestCheck {
    /// The digest matched the coordinator's state at the reported cursor.
    Ok,
    /// It did not: the replica holds something else.
    Mismatch,
    /// Not checked (never reported, or its locations changed since the cursor).
    Unchecked,
}

impl DigestCheck {
    fn from_reply(digest_ok: Option<bool>) -> Self {
        match digest_ok {
            Some(true) => DigestCheck::Ok,
            Some(false) => DigestCheck::Mismatch,
            None => DigestCheck::Unchecked,
        }
    }

    fn label(self) -> &'static str {
        match self {
            DigestCheck::Ok => "ok",
            DigestCheck::Mismatch => "MISMATCH",
            DigestCheck::Unchecked => "unchecked",
        }
    }
}

/// The whole status as shown, one document for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Durable head of the coordinator's change log.
    pub head: u64,
    /// Coordinator time the status was taken at, ms since the Unix epoch.
    pub now_ms: u64,
    /// Whether every store is healthy (the exit code is 0 exactly then).
    pub healthy: bool,
    /// How many registered stores are in each health, all of them counted
    /// (also with `--problems`).
    pub summary: BTreeMap<Health, usize>,
    /// One entry per registered store, in registry order (or as `--sort`
    /// and `--problems` chose).
    pub stores: Vec<StoreView>,
}

/// One store as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreView {
    /// Store id.
    pub id: String,
    /// Display name from the registry.
    pub name: String,
    /// The judgement of [`classify`].
    pub health: Health,
    /// Whether the store has a connection open now.
    pub connected: bool,
    /// When it last reported (ms since the Unix epoch), `null` if never.
    pub last_report_ms: Option<u64>,
    /// The same as an age, e.g. `"3s ago"` or `"never"`.
    pub last_sync: String,
    /// Expected sync interval, milliseconds.
    pub sync_interval_ms: u64,
    /// Last sequence number its replica applied, `null` if never seen.
    pub cursor: Option<u64>,
    /// Changes between its cursor and the head.
    pub lag: u64,
    /// The last digest check.
    pub digest: DigestCheck,
    /// Items in its replica, `null` if never seen.
    pub item_count: Option<u64>,
    /// Writes it was forwarding at its last report, `null` if never seen.
    pub pending_forwards: Option<u64>,
    /// Version conflicts of its writes in the last 5 minutes.
    pub conflicts_5m: u64,
    /// Other rejections of its writes in the last 5 minutes.
    pub rejections_5m: u64,
    /// Agent software version, `null` if never seen.
    pub software_version: Option<String>,
    /// The agent's last sync or forward error, if its last attempt failed.
    pub last_error: Option<String>,
}

impl StatusView {
    /// Judges every store of a status reply.
    pub fn new(reply: &StatusReply) -> Self {
        let stores: Vec<StoreView> = reply
            .stores
            .iter()
            .map(|store| StoreView::new(store, reply.now_ms))
            .collect();
        let mut summary = BTreeMap::new();
        for store in &stores {
            *summary.entry(store.health).or_insert(0) += 1;
        }
        StatusView {
            head: reply.head,
            now_ms: reply.now_ms,
            healthy: stores.iter().all(|s| s.health.is_healthy()),
            summary,
            stores,
        }
    }

    /// Keeps only the stores that are not healthy (`problems`) and orders
    /// them as `sort` says; the summary and the verdict stay the chain's.
    pub fn select(mut self, settings: Settings) -> Self {
        if settings.problems {
            self.stores.retain(|store| !store.health.is_healthy());
        }
        if settings.sort == Sort::Lag {
            self.stores
                .sort_by_key(|store| std::cmp::Reverse(store.lag));
        }
        self
    }

    /// `1000 stores: 990 ok, 6 lagging, 3 STALE, 1 DIVERGED`.
    pub fn summary_line(&self) -> String {
        let total: usize = self.summary.values().sum();
        let counts: Vec<String> = (self.summary.iter())
            .map(|(health, n)| format!("{n} {}", health.label()))
            .collect();
        format!("{total} stores: {}", counts.join(", "))
    }

    /// The exit outcome: success exactly when every store is healthy.
    pub fn outcome(&self) -> Outcome {
        if self.healthy {
            Outcome::Success
        } else {
            Outcome::Attention
        }
    }

    /// The table and a footer naming the stores that need attention, with
    /// colour when `styled`.
    pub fn to_text(&self, styled: bool) -> String {
        let mut table = render::table(
            &[
                "STORE",
                "HEALTH",
                "CONNECTED",
                "LAST SYNC",
                "CURSOR",
                "LAG",
                "DIGEST",
                "PENDING",
                "CONFLICTS 5M",
                "REJECTIONS 5M",
                "VERSION",
            ],
            styled,
        );
        for store in &self.stores {
            let dash = || "-".to_string();
            let digest = Cell::new(store.digest.label());
            let digest = if store.digest == DigestCheck::Mismatch {
                digest.fg(Color::Red).add_attribute(Attribute::Bold)
            } else {
                digest
            };
            let health = Cell::new(store.health.label()).fg(store.health.color());
            let health = if matches!(store.health, Health::Diverged | Health::Stale) {
                health.add_attribute(Attribute::Bold)
            } else {
                health
            };
            table.add_row(vec![
                Cell::new(&store.id),
                health,
                Cell::new(if store.connected { "yes" } else { "no" }),
                Cell::new(&store.last_sync),
                Cell::new(store.cursor.map_or_else(dash, |c| c.to_string())),
                Cell::new(store.lag),
                digest,
                Cell::new(store.pending_forwards.map_or_else(dash, |p| p.to_string())),
                Cell::new(store.conflicts_5m),
                Cell::new(store.rejections_5m),
                Cell::new(store.software_version.clone().unwrap_or_else(dash)),
            ]);
        }
        let mut text = format!(
            "coordinator head {} at {}\n{}\n{table}\n",
            self.head,
            render::rfc3339(self.now_ms),
            self.summary_line()
        );
        let unhealthy: Vec<String> = self
            .stores
            .iter()
            .filter(|s| !s.health.is_healthy())
            .map(|s| format!("{} ({})", s.id, s.health.label()))
            .collect();
        if self.stores.is_empty() {
            text.push_str("no stores are registered\n");
        } else if unhealthy.is_empty() {
            let _ = writeln!(text, "all {} stores healthy", self.stores.len());
        } else {
            let _ = writeln!(
                text,
                "{} of {} stores need attention: {}",
                unhealthy.len(),
                self.stores.len(),
                unhealthy.join(", ")
            );
        }
        for store in &self.stores {
            if let Some(err) = &store.last_error {
                let _ = writeln!(text, "{}: last error: {err}", store.id);
            }
        }
        text
    }
}

impl StoreView {
    fn new(store: &StoreStatus, now_ms: u64) -> Self {
        let report = store.report.as_ref();
        StoreView {
            id: store.id.clone(),
            name: store.name.clone(),
            health: classify(store, now_ms),
            connected: store.connected,
            last_report_ms: store.last_report_ms,
            last_sync: render::ago(now_ms, store.last_report_ms),
            sync_interval_ms: store.sync_interval_ms,
            cursor: report.map(|r| r.cursor),
            lag: store.lag,
            digest: DigestCheck::from_reply(store.digest_ok),
            item_count: report.map(|r| r.item_count),
            pending_forwards: report.map(|r| r.pending_forwards),
            conflicts_5m: store.conflicts_5m,
            rejections_5m: store.rejections_5m,
            software_version: report.map(|r| r.software_version.clone()),
            last_error: report.and_then(|r| r.last_error.clone()),
        }
    }
}

/// Runs `shelfctl status`.
pub async fn run(config: &Config, settings: Settings) -> anyhow::Result<Outcome> {
    if settings.watch {
        return watch(config, settings).await;
    }
    let client = coordinator::connect(config).await?;
    let reply = coordinator::status(&client).await;
    client.close().await;
    let view = StatusView::new(&reply?).select(settings);
    print!("{}", render_view(&view, settings)?);
    Ok(view.outcome())
}

/// The view as printed: pretty JSON, one JSON line per refresh when
/// watching, or the table.
fn render_view(view: &StatusView, settings: Settings) -> anyhow::Result<String> {
    Ok(match (settings.json, settings.watch) {
        (true, false) => serde_json::to_string_pretty(view)? + "\n",
        (true, true) => serde_json::to_string(view)? + "\n",
        (false, _) => view.to_text(render::stdout_is_styled()),
    })
}

/// Refreshes until Ctrl-C, reconnecting after a failure.
async fn watch(config: &Config, settings: Settings) -> anyhow::Result<Outcome> {
    let clear = render::stdout_is_styled() && !settings.json;
    // Ctrl-C (or SIGTERM) ends the watch; the handler is in place from the
    // first poll, before the first refresh can finish.
    let ctrl_c = shelfsync_runtime::shutdown_signal();
    tokio::pin!(ctrl_c);
    let mut client: Option<Client> = None;
    let mut last: Option<anyhow::Result<Outcome>> = None;
    loop {
        let refreshed = tokio::select! {
            () = &mut ctrl_c => None,
            result = refresh(&mut client, config) => Some(result.map(|v| v.select(settings))),
        };
        let Some(result) = refreshed else { break };
        if clear {
            // Clear the screen and move the cursor home: redraw in place.
            print!("\x1b[2J\x1b[H");
        }
        last = Some(match result {
            Ok(view) => {
                print!("{}", render_view(&view, settings)?);
                if clear {
                    println!(
                        "refreshing every {}s; Ctrl-C to stop",
                        WATCH_INTERVAL.as_secs()
                    );
                }
                Ok(view.outcome())
            }
            Err(err) => {
                eprintln!("error: {err:#} (retrying in {}s)", WATCH_INTERVAL.as_secs());
                client = None;
                Err(err)
            }
        });
        let stopped = tokio::select! {
            () = &mut ctrl_c => true,
            () = tokio::time::sleep(WATCH_INTERVAL) => false,
        };
        if stopped {
            break;
        }
    }
    if let Some(client) = client {
        client.close().await;
    }
    last.unwrap_or_else(|| Err(anyhow::anyhow!("interrupted before the first refresh")))
}

/// One refresh, connecting first when there is no connection (also used by
/// `shelfctl demo`'s live table).
pub(crate) async fn refresh(
    client: &mut Option<Client>,
    config: &Config,
) -> anyhow::Result<StatusView> {
    let connected = match client.take() {
        Some(c) if !c.is_closed() => c,
        _ => coordinator::connect(config).await?,
    };
    let reply = coordinator::status(&connected).await;
    *client = Some(connected);
    Ok(StatusView::new(&reply?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfsync_proto::StoreReport;

    const NOW: u64 = 1_740_821_400_000;
    const INTERVAL: u64 = 5_000;

    /// A store that reported 1s ago, connected, digest ok, no lag.
    fn healthy() -> StoreStatus {
        StoreStatus {
            id: "store-1".into(),
            name: "Store 1".into(),
            sync_interval_ms: INTERVAL,
            connected: true,
            last_report_ms: Some(NOW - 1_000),
            report: Some(StoreReport {
                cursor: 40,
                digest: 7,
                item_count: 12,
                pending_forwards: 2,
                last_error: None,
                software_version: "0.1.0".into(),
                locations: vec!["store-1".into()],
            }),
            digest_ok: Some(true),
            lag: 3,
            conflicts_5m: 1,
            rejections_5m: 0,
        }
    }

    fn never_seen() -> StoreStatus {
        StoreStatus {
            connected: false,
            last_report_ms: None,
            report: None,
            digest_ok: None,
            lag: 100,
            ..healthy()
        }
    }

    #[test]
    fn classification_rules_in_order() {
        let cases: Vec<(&str, StoreStatus, Health)> = vec![
            ("reporting on time", healthy(), Health::Healthy),
            (
                "unchecked digest is fine",
                StoreStatus {
                    digest_ok: None,
                    ..healthy()
                },
                Health::Healthy,
            ),
            ("never reported", never_seen(), Health::NeverSeen),
            (
                "never reported but connected",
                StoreStatus {
                    connected: true,
                    ..never_seen()
                },
                Health::NeverSeen,
            ),
            (
                "digest mismatch",
                StoreStatus {
                    digest_ok: Some(false),
                    ..healthy()
                },
                Health::Diverged,
            ),
            (
                "diverged beats stale",
                StoreStatus {
                    digest_ok: Some(false),
                    last_report_ms: Some(NOW - 60_000),
                    ..healthy()
                },
                Health::Diverged,
            ),
            (
                "exactly 3 intervals is not stale yet",
                StoreStatus {
                    last_report_ms: Some(NOW - 3 * INTERVAL),
                    ..healthy()
                },
                Health::Healthy,
            ),
            (
                "past 3 intervals",
                StoreStatus {
                    last_report_ms: Some(NOW - 3 * INTERVAL - 1),
                    ..healthy()
                },
                Health::Stale,
            ),
            (
                "stale beats lagging and disconnected",
                StoreStatus {
                    last_report_ms: Some(NOW - 3_600_000),
                    lag: 50_000,
                    connected: false,
                    ..healthy()
                },
                Health::Stale,
            ),
            (
                "at the lag limit",
                StoreStatus {
                    lag: LAG_LIMIT,
                    ..healthy()
                },
                Health::Healthy,
            ),
            (
                "past the lag limit",
                StoreStatus {
                    lag: LAG_LIMIT + 1,
                    ..healthy()
                },
                Health::Lagging,
            ),
            (
                "lagging beats disconnected",
                StoreStatus {
                    lag: LAG_LIMIT + 1,
                    connected: false,
                    ..healthy()
                },
                Health::Lagging,
            ),
            (
                "recent report, no connection",
                StoreStatus {
                    connected: false,
                    ..healthy()
                },
                Health::Disconnected,
            ),
            (
                "report from the future (clock skew) is fresh",
                StoreStatus {
                    last_report_ms: Some(NOW + 10_000),
                    ..healthy()
                },
                Health::Healthy,
            ),
        ];
        for (what, store, expected) in cases {
            assert_eq!(classify(&store, NOW), expected, "{what}");
            assert_eq!(expected.is_healthy(), expected == Health::Healthy);
        }
    }

    #[test]
    fn problems_and_lag_order_keep_the_chains_summary() {
        let store = |id: &str, lag: u64, connected: bool| StoreStatus {
            id: id.into(),
            lag,
            connected,
            ..healthy()
        };
        let reply = StatusReply {
            head: 103,
            now_ms: NOW,
            stores: vec![
                store("a", 0, true),
                store("b", 5, false),
                store("c", 1, true),
                StoreStatus {
                    id: "d".into(),
                    ..never_seen()
                },
            ],
        };
        let ids = |view: &StatusView| -> Vec<String> {
            view.stores.iter().map(|s| s.id.clone()).collect()
        };
        let all = StatusView::new(&reply);
        assert_eq!(ids(&all), ["a", "b", "c", "d"]);
        let by_lag = StatusView::new(&reply).select(Settings {
            sort: Sort::Lag,
            ..Settings::default()
        });
        assert_eq!(ids(&by_lag)[..3], ["d", "b", "c"]);
        let problems = StatusView::new(&reply).select(Settings {
            problems: true,
            ..Settings::default()
        });
        assert_eq!(ids(&problems), ["b", "d"]);
        assert!(!problems.healthy, "the verdict is the chain's");
        assert_eq!(
            problems.summary_line(),
            "4 stores: 2 ok, 1 never seen, 1 disconnected"
        );
        let json = serde_json::to_value(&problems).unwrap();
        assert_eq!(json["summary"]["healthy"], 2);
        assert_eq!(json["summary"]["disconnected"], 1);
        assert!(problems.to_text(false).contains("4 stores: 2 ok"));
    }

    #[test]
    fn view_and_exit_outcome() {
        let reply = StatusReply {
            head: 103,
            now_ms: NOW,
            stores: vec![
                healthy(),
                StoreStatus {
                    id: "store-2".into(),
                    ..never_seen()
                },
            ],
        };
        let view = StatusView::new(&reply);
        assert!(!view.healthy);
        assert_eq!(view.outcome(), Outcome::Attention);
        assert_eq!(view.stores[0].health, Health::Healthy);
        assert_eq!(view.stores[0].last_sync, "1s ago");
        assert_eq!(view.stores[0].cursor, Some(40));
        assert_eq!(view.stores[1].health, Health::NeverSeen);
        assert_eq!(view.stores[1].last_sync, "never");
        assert_eq!(view.stores[1].cursor, None);

        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["healthy"], false);
        assert_eq!(json["stores"][0]["health"], "healthy");
        assert_eq!(json["stores"][0]["digest"], "ok");
        assert_eq!(json["stores"][1]["health"], "never_seen");
        assert_eq!(json["stores"][1]["digest"], "unchecked");
        assert!(json["stores"][1]["cursor"].is_null());

        let text = view.to_text(false);
        assert!(text.contains("never seen"), "{text}");
        assert!(
            text.contains("1 of 2 stores need attention: store-2 (never seen)"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour off a terminal: {text}");

        let all_ok = StatusView::new(&StatusReply {
            stores: vec![healthy()],
            ..reply
        });
        assert_eq!(all_ok.outcome(), Outcome::Success);
        assert!(all_ok.to_text(false).contains("all 1 stores healthy"));
    }

    #[test]
    fn diverged_and_stale_stand_out() {
        let reply = StatusReply {
            head: 5,
            now_ms: NOW,
            stores: vec![
                StoreStatus {
                    digest_ok: Some(false),
                    ..healthy()
                },
                StoreStatus {
                    id: "store-2".into(),
                    last_report_ms: Some(NOW - 600_000),
                    ..healthy()
                },
            ],
        };
        let view = StatusView::new(&reply);
        let text = view.to_text(false);
        assert!(text.contains("DIVERGED"), "{text}");
        assert!(text.contains("MISMATCH"), "{text}");
        assert!(text.contains("STALE"), "{text}");
        assert!(text.contains("10m ago"), "{text}");
        assert!(
            view.to_text(true).contains('\x1b'),
            "coloured on a terminal"
        );
    }
}
