//! Background collection: expired idempotency buckets, holds that ended
//! longer ago than the idempotency time-to-live (no retry can ask for them
//! any more), and change-log entries beyond `retain_changes`.
//!
//! It runs a round every `gc_interval` on a thread of its own at a low CPU
//! priority, and compacts in slices, resting after each [`REST_FACTOR`]
//! times as long as the slice took: a burst of writes can leave hundreds of
//! thousands of changes for one round, and paced like this the round takes
//! at most a quarter of a core while writes go on (docs/performance.md).

use std::future::Future;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use shelfsync_ledger::{Ledger, LedgerError};
use shelfsync_proto::time::now_ms;

use crate::config::Config;
use crate::pipeline::{BACKGROUND_NICE, set_nice};

/// Entries handled per slice.
const SLICE: usize = 1000;
/// How much longer than a slice took the collector rests after it: at 3,
/// collection takes at most a quarter of one core.
pub const REST_FACTOR: u32 = 3;
/// The longest rest after one slice, so that a slice slowed down by a busy
/// machine does not stall the round (or shutdown) for long.
const MAX_REST: Duration = Duration::from_millis(100);
/// The name of the collector's thread.
pub const COLLECTOR_THREAD: &str = "gc";

/// When and what to collect.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// Idempotency records older than this are removed.
    pub idempotency_ttl: Duration,
    /// Changes kept in the log.
    pub retain_changes: u64,
}

impl From<&Config> for GcConfig {
    fn from(config: &Config) -> Self {
        GcConfig {
            interval: config.gc_interval,
            idempotency_ttl: config.idempotency_ttl,
            retain_changes: config.retain_changes,
        }
    }
}

/// Runs a round every `interval` on the collector thread until `shutdown`
/// resolves; a round that outlasts the interval is followed by the next at
/// once, never doubled. At shutdown the round under way stops after its
/// current slice.
pub async fn run(ledger: Arc<dyn Ledger>, config: GcConfig, shutdown: impl Future<Output = ()>) {
    // Dropped at shutdown, which ends the collector's waits.
    let (stop, stopped) = mpsc::channel::<()>();
    let collector = std::thread::Builder::new()
        .name(COLLECTOR_THREAD.into())
        .spawn(move || collect(ledger.as_ref(), &config, &stopped));
    let collector = match collector {
        Ok(thread) => thread,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the garbage collector thread; old changes and expired idempotency records stay");
            return;
        }
    };
    shutdown.await;
    drop(stop);
    if tokio::task::spawn_blocking(move || collector.join())
        .await
        .is_err()
    {
        tracing::error!("garbage collector thread could not be joined");
    }
}

/// The collector thread: a paced round every interval, until `stop` ends.
fn collect(ledger: &dyn Ledger, config: &GcConfig, stop: &mpsc::Receiver<()>) {
    set_nice(BACKGROUND_NICE);
    // Waits `time`, or less if stopped meanwhile; false once stopped.
    let wait = |time| stop.recv_timeout(time) == Err(mpsc::RecvTimeoutError::Timeout);
    let mut rest = |slice: Duration| wait(slice.saturating_mul(REST_FACTOR).min(MAX_REST));
    loop {
        let started = Instant::now();
        match round(ledger, config, &mut rest) {
            Ok(Collected {
                expired,
                holds,
                compacted,
            }) if expired + holds + compacted > 0 => {
                tracing::info!(expired, holds, compacted, "garbage collected");
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "garbage collection failed"),
        }
        if !wait(config.interval.saturating_sub(started.elapsed())) {
            return;
        }
    }
}

/// What one round removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Idempotency buckets dropped.
    pub expired: usize,
    /// Ended holds removed.
    pub holds: usize,
    /// Changes compacted away.
    pub compacted: usize,
}

/// One round: every expired idempotency bucket, then the ended holds and
/// every change past retention, in slices. After each slice `pace` gets the
/// time it took and returns whether to go on (false ends the round early;
/// the next resumes).
pub fn round(
    ledger: &dyn Ledger,
    config: &GcConfig,
    pace: &mut dyn FnMut(Duration) -> bool,
) -> Result<Collected, LedgerError> {
    let ttl = u64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
    let before = now_ms().saturating_sub(ttl);
    // Whole buckets: dropping one is a metadata change, not a slice of work.
    let mut collected = Collected {
        expired: ledger.expire_idempotency(before)?,
        ..Collected::default()
    };
    let mut sliced = |work: &mut dyn FnMut() -> Result<usize, LedgerError>| {
        let mut total = 0;
        loop {
            let started = Instant::now();
            let n = work()?;
            total += n;
            if n < SLICE || !pace(started.elapsed()) {
                return Ok::<_, LedgerError>(total);
            }
        }
    };
    collected.holds = sliced(&mut || ledger.forget_holds(before, SLICE))?;
    collected.compacted = sliced(&mut || ledger.compact_changes(config.retain_changes, SLICE))?;
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfsync_ledger::contract::{commit_puts, key, put};
    use shelfsync_ledger::{FjallLedger, contract};

    /// A ledger holding `n` changes, each a new key.
    fn ledger_with_changes(n: u64) -> (tempfile::TempDir, FjallLedger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FjallLedger::open(dir.path(), contract::BUCKETS).unwrap();
        let writes = (1..=n)
            .map(|seq| put(seq, &key("store-1", &format!("sku-{seq}")), 1, 1))
            .collect();
        commit_puts(&ledger, writes);
        (dir, ledger)
    }

    fn config(retain_changes: u64) -> GcConfig {
        GcConfig {
            interval: Duration::from_secs(60),
            idempotency_ttl: Duration::from_secs(3600),
            retain_changes,
        }
    }

    #[test]
    fn a_round_is_paced_after_every_slice_and_collects_all() {
        let (_dir, ledger) = ledger_with_changes(5_500);
        let mut slices = Vec::new();
        let Collected { compacted, .. } = round(&ledger, &config(500), &mut |took| {
            slices.push(took);
            true
        })
        .unwrap();
        assert_eq!(compacted, 5_000);
        assert_eq!(ledger.oldest().unwrap(), 5_001);
        // Five full slices: paced after each, the short last one ends it.
        assert_eq!(slices.len(), 5);
    }

    #[test]
    fn a_round_told_to_stop_leaves_the_rest_to_the_next() {
        let (_dir, ledger) = ledger_with_changes(5_500);
        let Collected { compacted, .. } = round(&ledger, &config(500), &mut |_| false).unwrap();
        assert_eq!(compacted, SLICE);
        assert_eq!(ledger.oldest().unwrap(), SLICE as u64 + 1);
        let rest = round(&ledger, &config(500), &mut |_| true)
            .unwrap()
            .compacted;
        assert_eq!(rest, 4_000);
        assert_eq!(ledger.oldest().unwrap(), 5_001);
    }

    #[tokio::test]
    async fn the_collector_thread_collects_on_a_tick_and_stops_with_shutdown() {
        let (_dir, ledger) = ledger_with_changes(2_500);
        let ledger = Arc::new(ledger);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gc = tokio::spawn(run(ledger.clone(), config(100), async {
            let _ = stop_rx.await;
        }));
        // The first tick comes at once; the round ends when the oldest
        // change kept is the 2,401st.
        let mut waited = 0;
        while ledger.oldest().unwrap() != 2_401 {
            assert!(waited < 1000, "no round within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), gc)
            .await
            .expect("the collector stops after shutdown")
            .unwrap();
    }
}
