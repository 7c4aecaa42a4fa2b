//! Per-location digests of the coordinator's items, to verify replicas.
//!
//! Per location: the digest of its live items ([`shelfsync_core::digest`])
//! and the seq of its last change. When none of a store's locations changed
//! after the cursor it reports, our digest of them is the digest at that
//! cursor and must equal the replica's; otherwise the check waits.

use std::sync::Mutex;

use shelfsync_core::KeyState;
use shelfsync_core::digest::Digest;
use shelfsync_ledger::{Ledger, LedgerError};

use shelfsync_core::FastMap;

/// Page size when building the digests at start.
const SCAN_PAGE: usize = 10_000;

#[derive(Debug, Default, Clone, Copy)]
struct LocationDigest {
    digest: Digest,
    last_seq: u64,
}

/// The digests of every location, kept in step by the sequencer.
#[derive(Debug, Default)]
pub struct Digests {
    locations: Mutex<FastMap<String, LocationDigest>>,
}

impl Digests {
    /// Builds the digests from every item in the ledger.
    pub fn load(ledger: &dyn Ledger) -> Result<Self, LedgerError> {
        let mut locations: FastMap<String, LocationDigest> = FastMap::default();
        for location in ledger.locations()? {
            let entry = locations.entry(location.clone()).or_default();
            let mut after: Option<String> = None;
            loop {
                let page = ledger.items(&location, after.as_deref(), SCAN_PAGE)?;
                let full = page.len() >= SCAN_PAGE;
                for (sku, record) in page {
                    entry.last_seq = entry.last_seq.max(record.seq);
                    if let Some(item) = record.state.item() {
                        entry.digest.add(item);
                    }
                    after = Some(sku);
                }
                if !full {
                    break;
                }
            }
        }
        Ok(Digests {
            locations: Mutex::new(locations),
        })
    }

    /// Accounts for one accepted write at `seq` from `old` to `new`.
    pub fn apply(&self, location: &str, seq: u64, old: &KeyState, new: &KeyState) {
        let Ok(mut locations) = self.locations.lock() else {
            return;
        };
        // Looked up without allocating, as for every write after the first.
        let entry = match locations.get_mut(location) {
            Some(entry) => entry,
            None => locations.entry(location.to_string()).or_default(),
        };
        if let Some(item) = old.item() {
            entry.digest.remove(item);
        }
        if let Some(item) = new.item() {
            entry.digest.add(item);
        }
        entry.last_seq = entry.last_seq.max(seq);
    }

    /// Compares a replica's digest of `locations` at `cursor` with ours:
    /// `None` when a location changed after the cursor or the cursor is past
    /// the durable head, so the answer is not known yet.
    pub fn verify(
        &self,
        locations: &[String],
        cursor: u64,
        durable_head: u64,
        replica: Digest,
    ) -> Option<bool> {
        if cursor > durable_head || locations.is_empty() {
            return None;
        }
        let locations_now = self.locations.lock().ok()?;
        let mut ours = Digest::default();
        let mut seen = std::collections::HashSet::new();
        for location in locations {
            if !seen.insert(location) {
                continue;
            }
            let entry = locations_now.get(location).copied().unwrap_or_default();
            if entry.last_seq > cursor {
                return None;
            }
            ours.sum = ours.sum.wrapping_add(entry.digest.sum);
            ours.count = ours.count.wrapping_add(entry.digest.count);
        }
        Some(ours == replica)
    }
}
