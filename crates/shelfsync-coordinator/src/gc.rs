//! Background collection: expired idempotency records and change-log
//! entries beyond `retain_changes`.
//!
//! Work is done in small slices so that a large backlog never holds the
//! storage engine for long; writes go on between slices.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ledger::Ledger;
use shelfsync_proto::time::now_ms;

/// Entries handled per slice.
const SLICE: usize = 1000;

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

/// Runs rounds every `interval` until `shutdown` resolves.
pub async fn run(ledger: Arc<dyn Ledger>, config: GcConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        let ledger = ledger.clone();
        let config = config.clone();
        match tokio::task::spawn_blocking(move || round(ledger.as_ref(), &config)).await {
            Ok(Ok((expired, compacted))) if expired + compacted > 0 => {
                tracing::info!(expired, compacted, "garbage collected");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "garbage collection failed"),
            Err(err) => tracing::error!(error = %err, "garbage collection panicked"),
        }
    }
}

/// One round: every expired record and every change past retention, in slices.
pub fn round(
    ledger: &dyn Ledger,
    config: &GcConfig,
) -> Result<(usize, usize), crate::ledger::LedgerError> {
    let ttl = u64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
    let before = now_ms().saturating_sub(ttl);
    let mut expired = 0;
    loop {
        let n = ledger.expire_idempotency(before, SLICE)?;
        expired += n;
        if n < SLICE {
            break;
        }
    }
    let mut compacted = 0;
    loop {
        let n = ledger.compact_changes(config.retain_changes, SLICE)?;
        compacted += n;
        if n < SLICE {
            break;
        }
    }
    Ok((expired, compacted))
}
