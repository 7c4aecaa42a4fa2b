//! `shelfsync-loadgen redis`: the same writes against Redis, for the side by
//! side comparison (`scripts/bench/compare.sh`).
//!
//! Each item is a hash `item:<sku>` (fields `quantity`, `reserved`,
//! `version`), and every write is one call of [`SCRIPT`] (by `EVALSHA`),
//! which checks, applies the op, bumps the version and `XADD`s the new state
//! to the stream `changes` atomically. With `appendonly yes` and
//! `appendfsync always` the server answers only once the write is on disk.
//!
//! The two workloads are those of `run`:
//!
//! - **optimistic**: the client reads the item's version (`HGET`), then
//!   calls the script with `add` and that version as the expected one. The
//!   script refuses when the version moved in between: a
//!   `version_mismatch` rejection, counted and not retried. This is an
//!   optimistic write as a client that read the item before writing makes
//!   it, so it takes **two round trips**, and writers racing on one key
//!   really conflict. (A script that checked against the version it reads
//!   itself would never conflict and would measure one round trip: the most
//!   favourable case for Redis, not the same write.)
//! - **delta**: one call with `remove` and no expected version: one round
//!   trip; `insufficient_stock` when the item is empty.
//!
//! One TCP connection per client, one write outstanding on each. A write's
//! latency covers all of its round trips. Outcomes are counted as for the
//! coordinator ([`crate::driver`]): accepted, rejected by reason, or an
//! error (no usable answer), with an HDR histogram of answered writes, and
//! reported as one [`Measurement`] (`connections` = clients, `in_flight` = 1).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, RedisResult};
use tokio::task::JoinSet;

use crate::driver::{Gate, Limit, PRELOAD_QUANTITY, Shape, Tally, measurement};
use crate::error::LoadError;
use crate::keys::{KeyDistribution, KeyPicker, sku};
use crate::report::Measurement;

/// The write, run atomically by Redis. `KEYS[1]`: the item hash;
/// `ARGV[1]`: `add` or `remove`; `ARGV[2]`: the expected version, or empty
/// for none. Returns the new version, or one of [`NOT_FOUND`],
/// [`VERSION_MISMATCH`], [`INSUFFICIENT_STOCK`].
pub const SCRIPT: &str = r#"local q = tonumber(redis.call("HGET", KEYS[1], "quantity"))
local r = tonumber(redis.call("HGET", KEYS[1], "reserved"))
local v = tonumber(redis.call("HGET", KEYS[1], "version"))
if v == nil then return -3 end
if ARGV[2] ~= "" and tonumber(ARGV[2]) ~= v then return -1 end
if ARGV[1] == "add" then q = q + 1
elseif q - r < 1 then return -2
else q = q - 1 end
v = v + 1
redis.call("HSET", KEYS[1], "quantity", q, "version", v)
redis.call("XADD", "changes", "MAXLEN", "~", 1000000, "*", "key", KEYS[1], "op", ARGV[1], "quantity", q, "reserved", r, "version", v)
return v
"#;

/// The script's answer when the expected version is not the item's.
pub const VERSION_MISMATCH: i64 = -1;
/// The script's answer when `remove` would take more than is available.
pub const INSUFFICIENT_STOCK: i64 = -2;
/// The script's answer when the item does not exist (no `--preload`).
pub const NOT_FOUND: i64 = -3;
/// The stream every accepted write is appended to.
pub const CHANGES_STREAM: &str = "changes";
/// Keys written per pipelined round trip of the preload.
const PRELOAD_CHUNK: u64 = 1_000;

/// The Redis key of the item with key index `index`: `item:k000042`.
pub fn item_key(index: u64) -> String {
    format!("item:{}", sku(index))
}

/// What the writes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisWorkload {
    /// Read the version, then `add` 1 expecting it: two round trips.
    Optimistic,
    /// `remove` 1 without a version: one round trip.
    Delta,
}

impl FromStr for RedisWorkload {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "optimistic" => Ok(RedisWorkload::Optimistic),
            "delta" => Ok(RedisWorkload::Delta),
            _ => Err(format!(
                "unknown workload {text:?}: expected optimistic or delta"
            )),
        }
    }
}

impl fmt::Display for RedisWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisWorkload::Optimistic => "optimistic",
            RedisWorkload::Delta => "delta",
        })
    }
}

/// A validated `redis` run.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server's address.
    pub addr: SocketAddr,
    /// Connections, one write outstanding on each; at least 1.
    pub clients: usize,
    /// Size of the key space, at least 1.
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// What the writes do.
    pub workload: RedisWorkload,
    /// When the measurement ends.
    pub limit: Limit,
    /// Time run before the measurement, not counted.
    pub warmup: Duration,
    /// (Re)create every key before measuring.
    pub preload: bool,
    /// The label of the measurement.
    pub label: String,
    /// Longest wait for a connection or one answer.
    pub timeout: Duration,
    /// Print preload progress on stderr.
    pub progress: bool,
}

/// Connects, optionally preloads, measures once and returns the measurement.
///
/// # Errors
/// [`LoadError::Redis`] when a connection, the script load or the preload
/// fails. Refusals and failures of single writes are counted instead.
pub async fn run(settings: &RedisSettings) -> Result<Measurement, LoadError> {
    let picker = KeyPicker::new(settings.distribution, settings.keys).map_err(LoadError::Usage)?;
    let failed = |action: &'static str| {
        move |source: RedisError| LoadError::Redis {
            action,
            addr: settings.addr,
            detail: source.to_string(),
        }
    };
    let mut connections = connect_all(settings).await?;
    let Some(first) = connections.first_mut() else {
        return Err(LoadError::Usage("--clients must be at least 1".into()));
    };
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(first)
        .await
        .map_err(failed("load the write script into"))?;
    if settings.preload {
        let started = Instant::now();
        preload(first, settings.keys)
            .await
            .map_err(failed("preload the keys into"))?;
        if settings.progress {
            eprintln!(
                "preload: {} keys written in {:.2} s",
                settings.keys,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let gate = Arc::new(Gate::new(settings.warmup, settings.limit));
    let sha: Arc<str> = sha.into();
    let seed: u64 = rand::random();
    let mut set = JoinSet::new();
    for (i, conn) in connections.into_iter().enumerate() {
        let job = Job {
            gate: gate.clone(),
            picker: picker.clone(),
            workload: settings.workload,
            sha: sha.clone(),
        };
        set.spawn(job.work(conn, seed ^ i as u64, Tally::new()?));
    }
    let mut total = Tally::new()?;
    let mut lost = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (tally, lost_with) = joined.map_err(|e| LoadError::Internal(e.to_string()))?;
        total.merge(tally)?;
        lost.extend(lost_with);
    }
    let elapsed = Instant::now().saturating_duration_since(gate.measure_from());
    total.warn_errors(settings.clients);
    let lost_count = lost.len();
    if let Some(first) = lost.into_iter().next() {
        if lost_count == settings.clients {
            // Nothing was left to measure with: no figure beats a wrong one.
            return Err(failed("keep a connection to")(first));
        }
        eprintln!(
            "warning: {lost_count} of {} client(s) lost their connection and stopped early; \
             first: {first}",
            settings.clients
        );
    }
    let shape = Shape {
        label: settings.label.clone(),
        connections: settings.clients,
        in_flight: 1,
        workload: settings.workload.to_string(),
        distribution: settings.distribution,
        keys: settings.keys,
    };
    Ok(measurement(shape, elapsed, &total))
}

/// Opens `settings.clients` connections concurrently, each its own TCP
/// connection.
async fn connect_all(settings: &RedisSettings) -> Result<Vec<MultiplexedConnection>, LoadError> {
    let addr = settings.addr;
    let failed = |source: RedisError| LoadError::Redis {
        action: "connect to",
        addr,
        detail: source.to_string(),
    };
    // No Nagle delay, as redis-benchmark's hiredis connections.
    let info = (addr.ip().to_string(), addr.port())
        .into_connection_info()
        .map_err(failed)?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(failed)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout));
    let mut set = JoinSet::new();
    for _ in 0..settings.clients {
        let (client, config) = (client.clone(), config.clone());
        set.spawn(async move {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        });
    }
    let mut connections = Vec::with_capacity(settings.clients);
    while let Some(joined) = set.join_next().await {
        connections.push(
            joined
                .map_err(|e| LoadError::Internal(e.to_string()))?
                .map_err(failed)?,
        );
    }
    Ok(connections)
}

/// Writes every key as a fresh item (quantity [`PRELOAD_QUANTITY`], nothing
/// reserved, version 1), [`PRELOAD_CHUNK`] keys per pipelined round trip.
async fn preload(conn: &mut MultiplexedConnection, keys: u64) -> RedisResult<()> {
    let mut start = 0;
    while start < keys {
        let end = keys.min(start + PRELOAD_CHUNK);
        let mut pipe = redis::pipe();
        for index in start..end {
            pipe.cmd("HSET")
                .arg(item_key(index))
                .arg("quantity")
                .arg(PRELOAD_QUANTITY)
                .arg("reserved")
                .arg(0)
                .arg("version")
                .arg(1)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
        start = end;
    }
    Ok(())
}

/// The rejection reason of a refusal the script answered, named as the
/// coordinator's wire error codes are.
fn refusal(code: i64) -> Option<&'static str> {
    match code {
        VERSION_MISMATCH => Some("version_mismatch"),
        INSUFFICIENT_STOCK => Some("insufficient_stock"),
        NOT_FOUND => Some("not_found"),
        _ => None,
    }
}

/// What every client's task shares.
struct Job {
    gate: Arc<Gate>,
    picker: KeyPicker,
    workload: RedisWorkload,
    sha: Arc<str>,
}

impl Job {
    /// One client: one write at a time on `conn` until the gate closes or
    /// the connection is lost; returns its counts, and why it was lost.
    async fn work(
        self,
        mut conn: MultiplexedConnection,
        seed: u64,
        mut tally: Tally,
    ) -> (Tally, Option<RedisError>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        while let Some(measured) = self.gate.admit() {
            let key = item_key(self.picker.pick(&mut rng));
            let sent = Instant::now();
            let answer = self.write(&mut conn, &key).await;
            let latency = sent.elapsed();
            let answer = match answer {
                // A lost connection stays lost: the client stops.
                Err(err) if err.is_unrecoverable_error() => {
                    if measured {
                        tally.error(|| err.to_string());
                    }
                    return (tally, Some(err));
                }
                answer => answer,
            };
            if !measured {
                continue;
            }
            match answer {
                Ok(version) if version > 0 => {
                    tally.accepted += 1;
                    tally.record(latency);
                }
                Ok(code) => match refusal(code) {
                    Some(reason) => {
                        *tally.rejected.entry(reason).or_default() += 1;
                        tally.record(latency);
                    }
                    None => tally.error(|| format!("unexpected answer {code} from the script")),
                },
                Err(err) => tally.error(|| err.to_string()),
            }
        }
        (tally, None)
    }

    /// One write of `key`: the script's answer.
    async fn write(&self, conn: &mut MultiplexedConnection, key: &str) -> RedisResult<i64> {
        let (op, expected) = match self.workload {
            RedisWorkload::Optimistic => {
                let version: Option<String> = redis::cmd("HGET")
                    .arg(key)
                    .arg("version")
                    .query_async(conn)
                    .await?;
                // A missing item: the script answers NOT_FOUND before it
                // looks at the version.
                ("add", version.unwrap_or_default())
            }
            RedisWorkload::Delta => ("remove", String::new()),
        };
        redis::cmd("EVALSHA")
            .arg(&*self.sha)
            .arg(1)
            .arg(key)
            .arg(op)
            .arg(expected)
            .query_async(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_and_print_back() {
        for text in ["optimistic", "delta"] {
            assert_eq!(text.parse::<RedisWorkload>().unwrap().to_string(), text);
        }
        for bad in ["", "mix", "Delta"] {
            assert!(bad.parse::<RedisWorkload>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn item_keys_use_the_skus_of_run() {
        assert_eq!(item_key(0), "item:k000000");
        assert_eq!(item_key(9_999), "item:k009999");
    }
}
