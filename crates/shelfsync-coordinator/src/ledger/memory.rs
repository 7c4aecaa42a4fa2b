//! A ledger in memory: the same contract as [`super::FjallLedger`], nothing
//! durable. For tests and benchmarks of the layers above the ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use shelfsync_core::ItemKey;
use shelfsync_proto::Change;

use super::{
    Buckets, CommitGroup, IdempotencyRecord, ItemRecord, Ledger, LedgerError, StoredReport,
};

/// A ledger that keeps everything in memory.
#[derive(Debug)]
pub struct MemoryLedger {
    buckets: Buckets,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By location, then sku.
    items: BTreeMap<String, BTreeMap<String, ItemRecord>>,
    /// By seq, with the key's previous change.
    changes: BTreeMap<u64, (Change, Option<u64>)>,
    by_location: BTreeSet<(String, u64)>,
    /// By bucket start, then (store, key).
    idempotency: BTreeMap<u64, HashMap<(String, String), IdempotencyRecord>>,
    reports: BTreeMap<String, StoredReport>,
    head: u64,
    oldest: u64,
}

impl MemoryLedger {
    /// An empty ledger bucketing idempotency records as `buckets` says.
    pub fn new(buckets: Buckets) -> Self {
        MemoryLedger {
            buckets,
            state: Mutex::new(State {
                oldest: 1,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, LedgerError> {
        self.state
            .lock()
            .map_err(|_| LedgerError::Storage("the memory ledger's lock is poisoned".into()))
    }
}

impl Ledger for MemoryLedger {
    fn commit(&self, group: CommitGroup) -> Result<(), LedgerError> {
        let mut state = self.state()?;
        for write in group.writes {
            let change = write.change;
            state
                .items
                .entry(change.key.location.clone())
                .or_default()
                .insert(
                    change.key.sku.clone(),
                    ItemRecord {
                        state: change.state.clone(),
                        seq: change.seq,
                    },
                );
            state
                .by_location
                .insert((change.key.location.clone(), change.seq));
            state.changes.insert(change.seq, (change, write.prior_seq));
        }
        for entry in group.idempotency {
            let start = self.buckets.start(entry.record.at_ms);
            state
                .idempotency
                .entry(start)
                .or_default()
                .insert((entry.store, entry.key), entry.record);
        }
        state.head = state.head.max(group.head);
        Ok(())
    }

    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError> {
        let state = self.state()?;
        Ok(state
            .items
            .get(&key.location)
            .and_then(|skus| skus.get(&key.sku))
            .cloned())
    }

    fn idempotency(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, LedgerError> {
        let state = self.state()?;
        let id = (store.to_string(), key.to_string());
        Ok(state
            .idempotency
            .values()
            .rev()
            .find_map(|bucket| bucket.get(&id))
            .cloned())
    }

    fn change(&self, seq: u64) -> Result<Option<Change>, LedgerError> {
        Ok(self.state()?.changes.get(&seq).map(|(c, _)| c.clone()))
    }

    fn head(&self) -> Result<u64, LedgerError> {
        Ok(self.state()?.head)
    }

    fn oldest(&self) -> Result<u64, LedgerError> {
        let state = self.state()?;
        Ok(state.oldest.min(state.head + 1))
    }

    fn changes(&self, after: u64, until: u64, limit: usize) -> Result<Vec<Change>, LedgerError> {
        if after >= until {
            return Ok(Vec::new());
        }
        let state = self.state()?;
        Ok(state
            .changes
            .range(after + 1..=until)
            .take(limit)
            .map(|(_, (c, _))| c.clone())
            .collect())
    }

    fn location_changes(
        &self,
        location: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Change>, LedgerError> {
        if after >= until {
            return Ok(Vec::new());
        }
        let state = self.state()?;
        let range = (location.to_string(), after + 1)..=(location.to_string(), until);
        Ok(state
            .by_location
            .range(range)
            .filter_map(|(_, seq)| state.changes.get(seq).map(|(c, _)| c.clone()))
            .take(limit)
            .collect())
    }

    fn items(
        &self,
        location: &str,
        after_sku: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ItemRecord)>, LedgerError> {
        let state = self.state()?;
        let Some(skus) = state.items.get(location) else {
            return Ok(Vec::new());
        };
        Ok(skus
            .iter()
            .filter(|(sku, _)| after_sku.is_none_or(|after| sku.as_str() > after))
            .take(limit)
            .map(|(sku, record)| (sku.clone(), record.clone()))
            .collect())
    }

    fn locations(&self) -> Result<Vec<String>, LedgerError> {
        Ok(self.state()?.items.keys().cloned().collect())
    }

    fn history(&self, key: &ItemKey, limit: usize) -> Result<Vec<Change>, LedgerError> {
        let state = self.state()?;
        let mut next = state
            .items
            .get(&key.location)
            .and_then(|skus| skus.get(&key.sku))
            .map(|r| r.seq);
        let mut out = Vec::new();
        while let Some(seq) = next.filter(|_| out.len() < limit) {
            let Some((change, prior)) = state.changes.get(&seq) else {
                break;
            };
            out.push(change.clone());
            next = *prior;
        }
        Ok(out)
    }

    fn expire_idempotency(&self, before_ms: u64) -> Result<usize, LedgerError> {
        let mut state = self.state()?;
        let buckets = self.buckets;
        let before = state.idempotency.len();
        state
            .idempotency
            .retain(|start, _| !buckets.all_before(*start, before_ms));
        Ok(before - state.idempotency.len())
    }

    fn compact_changes(&self, retain: u64, limit: usize) -> Result<usize, LedgerError> {
        let mut state = self.state()?;
        let keep_from = state.head.saturating_sub(retain).saturating_add(1);
        let until = keep_from.min(state.oldest.saturating_add(limit as u64));
        let mut removed = 0;
        for seq in state.oldest..until {
            if let Some((change, _)) = state.changes.remove(&seq) {
                state.by_location.remove(&(change.key.location, seq));
                removed += 1;
            }
        }
        state.oldest = state.oldest.max(until);
        Ok(removed)
    }

    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError> {
        self.state()?
            .reports
            .insert(store.to_string(), report.clone());
        Ok(())
    }

    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError> {
        Ok(self
            .state()?
            .reports
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::contract;

    #[test]
    fn keeps_the_contract() {
        contract::run(&mut || contract::Fresh::new(MemoryLedger::new(contract::BUCKETS), ()));
    }
}
