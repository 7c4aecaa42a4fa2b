//! The embedded ledger, on fjall (an LSM-tree engine with atomic batches
//! across keyspaces).
//!
//! Keyspaces, all written by one atomic batch per group:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `items` | `location \0 sku` | [`ItemV`] |
//! | `changes` | seq, 8 bytes big-endian | [`ChangeV`] |
//! | `by_location` | `location \0 seq` | empty: the per-location change index |
//! | `idem.<width>.<start>` | `store \0 idempotency key` | [`IdempotencyV`] |
//! | `reports` | store id | [`ReportV`] |
//! | `meta` | `layout`, `head`, `oldest` | u64, big-endian |
//!
//! [`Ledger::commit`] writes a group's batch with `PersistMode::SyncData`:
//! fjall appends it to its journal and `fdatasync`s before it becomes
//! visible, so it is durable on return and readers never see more. After a
//! crash fjall replays its journal; nothing here keeps a log of its own.
//! Idempotency records go to the keyspace of their time bucket, and expiry
//! deletes whole keyspaces.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::de::DeserializeOwned;
use shelfsync_core::ItemKey;
use shelfsync_proto::Change;

use super::records::{ChangeV, IdempotencyV, ItemV, ReportV, decode, encode};
use super::{
    Buckets, CommitGroup, IdempotencyRecord, ItemRecord, Ledger, LedgerError, StoredReport,
};

/// The layout this code writes and reads, under `meta/layout`.
pub const LAYOUT: u64 = 6;
/// The engine's block cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// One keyspace's memtable before the engine flushes it.
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Journal kept before the engine flushes memtables to free it.
const JOURNAL_BYTES: u64 = 128 * 1024 * 1024;
/// The prefix of an idempotency bucket's keyspace name.
const BUCKET_PREFIX: &str = "idem.";

/// The coordinator's ledger on fjall.
pub struct FjallLedger {
    db: Database,
    items: Keyspace,
    changes: Keyspace,
    by_location: Keyspace,
    reports: Keyspace,
    meta: Keyspace,
    buckets: Buckets,
    /// Idempotency buckets by (start, width), newest last.
    idempotency: Mutex<BTreeMap<(u64, u64), Keyspace>>,
    head: AtomicU64,
    oldest: AtomicU64,
}

impl std::fmt::Debug for FjallLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallLedger").finish_non_exhaustive()
    }
}

fn storage(err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(err.to_string())
}

fn item_key(key: &ItemKey) -> Vec<u8> {
    [key.location.as_bytes(), &[0], key.sku.as_bytes()].concat()
}

fn index_key(location: &str, seq: u64) -> Vec<u8> {
    [location.as_bytes(), &[0], &seq.to_be_bytes()].concat()
}

fn idempotency_key(store: &str, key: &str) -> Vec<u8> {
    [store.as_bytes(), &[0], key.as_bytes()].concat()
}

/// The record under `key`, decoded.
fn read<T: DeserializeOwned>(keyspace: &Keyspace, key: &[u8]) -> Result<Option<T>, LedgerError> {
    let bytes = keyspace.get(key).map_err(storage)?;
    bytes.map(|bytes| decode(key, &bytes)).transpose()
}

fn seq_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn read_u64(meta: &Keyspace, name: &str) -> Result<Option<u64>, LedgerError> {
    match meta.get(name).map_err(storage)? {
        None => Ok(None),
        Some(v) => seq_of(&v)
            .map(Some)
            .ok_or_else(|| LedgerError::corrupt(format!("meta/{name}").as_bytes(), "not 8 bytes")),
    }
}

/// Refuses a data directory written by a build from before this layout.
fn refuse_older(dir: &Path) -> Result<(), LedgerError> {
    let parent = dir.parent().unwrap_or(dir);
    let older = [dir.join("conf"), dir.join("db"), parent.join("wal")];
    if let Some(found) = older.iter().find(|p| p.exists()) {
        return Err(LedgerError::Storage(format!(
            "{} holds a ledger of an earlier layout ({} is there); this build keeps its \
             ledger in fjall (layout {LAYOUT}) and cannot read it. Start from an empty \
             data_dir and reload the catalog (shelfctl import), or run the earlier build",
            dir.display(),
            found.display()
        )));
    }
    Ok(())
}

impl FjallLedger {
    /// Opens (or creates) the ledger in `dir`, bucketing idempotency records
    /// as `buckets` says.
    pub fn open(dir: &Path, buckets: Buckets) -> Result<Self, LedgerError> {
        refuse_older(dir)?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| storage(format!("cannot open the ledger in {}: {e}", dir.display())))?;
        let keyspace = |name: &str| db.keyspace(name, options);
        let meta = keyspace("meta").map_err(storage)?;
        match read_u64(&meta, "layout")? {
            None => meta
                .insert("layout", LAYOUT.to_be_bytes())
                .map_err(storage)?,
            Some(LAYOUT) => {}
            Some(other) => {
                return Err(LedgerError::Storage(format!(
                    "the ledger in {} has layout {other}; this build reads layout {LAYOUT} only",
                    dir.display()
                )));
            }
        }
        let mut idempotency = BTreeMap::new();
        for name in db.list_keyspace_names() {
            if let Some(bucket) = parse_bucket(&name) {
                idempotency.insert(bucket, keyspace(&name).map_err(storage)?);
            }
        }
        let head = read_u64(&meta, "head")?.unwrap_or(0);
        let oldest = read_u64(&meta, "oldest")?.unwrap_or(1);
        Ok(FjallLedger {
            items: keyspace("items").map_err(storage)?,
            changes: keyspace("changes").map_err(storage)?,
            by_location: keyspace("by_location").map_err(storage)?,
            reports: keyspace("reports").map_err(storage)?,
            meta,
            buckets,
            idempotency: Mutex::new(idempotency),
            head: AtomicU64::new(head),
            oldest: AtomicU64::new(oldest),
            db,
        })
    }

    /// Bytes the ledger takes on disk (tables and journal).
    pub fn disk_space(&self) -> Result<u64, LedgerError> {
        self.db.disk_space().map_err(storage)
    }

    fn bucket_for(&self, at_ms: u64) -> Result<Keyspace, LedgerError> {
        let id = (self.buckets.start(at_ms), self.buckets.width_ms);
        let mut buckets = self.idempotency.lock().map_err(storage)?;
        if let Some(keyspace) = buckets.get(&id) {
            return Ok(keyspace.clone());
        }
        let name = format!("{BUCKET_PREFIX}{}.{}", id.1, id.0);
        let keyspace = self.db.keyspace(&name, options).map_err(storage)?;
        buckets.insert(id, keyspace.clone());
        Ok(keyspace)
    }

    fn get_change(&self, seq: u64) -> Result<Option<(Change, Option<u64>)>, LedgerError> {
        let change = read::<ChangeV>(&self.changes, &seq.to_be_bytes())?;
        Ok(change.map(|change| change.into_change(seq)))
    }
}

fn options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// `(start, width)` of a bucket keyspace named `idem.<width>.<start>`.
fn parse_bucket(name: &str) -> Option<(u64, u64)> {
    let (width, start) = name.strip_prefix(BUCKET_PREFIX)?.split_once('.')?;
    Some((start.parse().ok()?, width.parse().ok()?))
}

impl Ledger for FjallLedger {
    fn commit(&self, group: CommitGroup) -> Result<(), LedgerError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for write in &group.writes {
            let change = &write.change;
            let record = ItemRecord {
                state: change.state.clone(),
                seq: change.seq,
            };
            batch.insert(
                &self.items,
                item_key(&change.key),
                encode(&ItemV::V1(record))?,
            );
            batch.insert(
                &self.changes,
                change.seq.to_be_bytes(),
                encode(&ChangeV::new(change, write.prior_seq))?,
            );
            batch.insert(
                &self.by_location,
                index_key(&change.key.location, change.seq),
                [],
            );
        }
        for entry in group.idempotency {
            let bucket = self.bucket_for(entry.record.at_ms)?;
            let key = idempotency_key(&entry.store, &entry.key);
            batch.insert(&bucket, key, encode(&IdempotencyV::V1(entry.record))?);
        }
        let head = group.head.max(self.head.load(Ordering::Acquire));
        batch.insert(&self.meta, "head", head.to_be_bytes());
        batch.commit().map_err(storage)?;
        self.head.store(head, Ordering::Release);
        Ok(())
    }

    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError> {
        Ok(read::<ItemV>(&self.items, &item_key(key))?.map(Into::into))
    }

    fn idempotency(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, LedgerError> {
        let k = idempotency_key(store, key);
        let buckets: Vec<Keyspace> = self
            .idempotency
            .lock()
            .map_err(storage)?
            .values()
            .rev()
            .cloned()
            .collect();
        for bucket in buckets {
            if let Some(record) = read::<IdempotencyV>(&bucket, &k)? {
                return Ok(Some(record.into()));
            }
        }
        Ok(None)
    }

    fn change(&self, seq: u64) -> Result<Option<Change>, LedgerError> {
        Ok(self.get_change(seq)?.map(|(change, _)| change))
    }

    fn head(&self) -> Result<u64, LedgerError> {
        Ok(self.head.load(Ordering::Acquire))
    }

    fn oldest(&self) -> Result<u64, LedgerError> {
        let head = self.head.load(Ordering::Acquire);
        Ok(self.oldest.load(Ordering::Acquire).min(head + 1))
    }

    fn changes(&self, after: u64, until: u64, limit: usize) -> Result<Vec<Change>, LedgerError> {
        let from = after.saturating_add(1).max(self.oldest()?);
        if from > until {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for guard in self
            .changes
            .range(from.to_be_bytes()..=until.to_be_bytes())
            .take(limit)
        {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let seq = seq_of(&k).ok_or_else(|| LedgerError::corrupt(&k, "not a seq"))?;
            out.push(decode::<ChangeV>(&k, &v)?.into_change(seq).0);
        }
        Ok(out)
    }

    fn location_changes(
        &self,
        location: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Change>, LedgerError> {
        let from = after.saturating_add(1);
        if from > until {
            return Ok(Vec::new());
        }
        let range = index_key(location, from)..=index_key(location, until);
        let mut out = Vec::new();
        for guard in self.by_location.range(range).take(limit) {
            let k = guard.key().map_err(storage)?;
            let seq = k.len().checked_sub(8).and_then(|at| seq_of(&k[at..]));
            let seq = seq.ok_or_else(|| LedgerError::corrupt(&k, "index key without a seq"))?;
            // An index entry whose change was compacted away meanwhile:
            // the caller sees `oldest` move and answers cursor-expired.
            if let Some((change, _)) = self.get_change(seq)? {
                out.push(change);
            }
        }
        Ok(out)
    }

    fn items(
        &self,
        location: &str,
        after_sku: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ItemRecord)>, LedgerError> {
        let prefix = [location.as_bytes(), &[0]].concat();
        let start = match after_sku {
            Some(sku) => [&prefix[..], sku.as_bytes(), &[0]].concat(),
            None => prefix.clone(),
        };
        let end = [location.as_bytes(), &[1]].concat();
        let mut out = Vec::new();
        for guard in self.items.range(start..end).take(limit) {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let sku = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((sku, decode::<ItemV>(&k, &v)?.into()));
        }
        Ok(out)
    }

    fn locations(&self) -> Result<Vec<String>, LedgerError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        // One seek per location, not a scan of every item.
        while let Some(guard) = self.items.range(from.clone()..).next() {
            let k = guard.key().map_err(storage)?;
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let location = String::from_utf8_lossy(&k[..end]).into_owned();
            from = [location.as_bytes(), &[1]].concat();
            out.push(location);
        }
        Ok(out)
    }

    fn history(&self, key: &ItemKey, limit: usize) -> Result<Vec<Change>, LedgerError> {
        let oldest = self.oldest()?;
        let mut next = self.load(key)?.map(|record| record.seq);
        let mut out = Vec::new();
        while let Some(seq) = next.filter(|s| *s >= oldest && out.len() < limit) {
            let Some((change, prior)) = self.get_change(seq)? else {
                break;
            };
            out.push(change);
            next = prior;
        }
        Ok(out)
    }

    fn expire_idempotency(&self, before_ms: u64) -> Result<usize, LedgerError> {
        let mut expired = Vec::new();
        let mut buckets = self.idempotency.lock().map_err(storage)?;
        buckets.retain(|&(start, width), keyspace| {
            let keep = !Buckets { width_ms: width }.all_before(start, before_ms);
            if !keep {
                expired.push(keyspace.clone());
            }
            keep
        });
        drop(buckets);
        let dropped = expired.len();
        for keyspace in expired {
            self.db.delete_keyspace(keyspace).map_err(storage)?;
        }
        Ok(dropped)
    }

    fn compact_changes(&self, retain: u64, limit: usize) -> Result<usize, LedgerError> {
        let head = self.head.load(Ordering::Acquire);
        let oldest = self.oldest.load(Ordering::Acquire);
        let keep_from = head.saturating_sub(retain).saturating_add(1);
        let until = keep_from.min(oldest.saturating_add(limit as u64));
        if until <= oldest {
            return Ok(0);
        }
        let mut batch = self.db.batch();
        for seq in oldest..until {
            if let Some((change, _)) = self.get_change(seq)? {
                batch.remove(&self.by_location, index_key(&change.key.location, seq));
            }
            batch.remove(&self.changes, seq.to_be_bytes());
        }
        batch.insert(&self.meta, "oldest", until.to_be_bytes());
        batch.commit().map_err(storage)?;
        self.oldest.store(until, Ordering::Release);
        Ok(usize::try_from(until - oldest).unwrap_or(usize::MAX))
    }

    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError> {
        self.reports
            .insert(store, encode(&ReportV::from(report))?)
            .map_err(storage)
    }

    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError> {
        let mut out = Vec::new();
        for guard in self.reports.iter() {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let store = String::from_utf8_lossy(&k).into_owned();
            out.push((store, decode::<ReportV>(&k, &v)?.into()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::contract;

    #[test]
    fn keeps_the_contract() {
        contract::run(&mut || {
            let dir = tempfile::tempdir().unwrap();
            let ledger = FjallLedger::open(&dir.path().join("ledger"), contract::BUCKETS).unwrap();
            contract::Fresh::new(ledger, dir)
        });
    }

    #[test]
    fn a_reopened_ledger_has_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let k = contract::key("s1", "milk");
        {
            let ledger = FjallLedger::open(&path, contract::BUCKETS).unwrap();
            contract::commit_puts(&ledger, vec![contract::put(1, &k, 1, 5)]);
            ledger.compact_changes(0, 10).unwrap();
        }
        let ledger = FjallLedger::open(&path, contract::BUCKETS).unwrap();
        assert_eq!(ledger.head().unwrap(), 1);
        assert_eq!(ledger.oldest().unwrap(), 2);
        assert_eq!(ledger.load(&k).unwrap().unwrap().seq, 1);
    }

    #[test]
    fn a_ledger_of_an_earlier_layout_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        let err = FjallLedger::open(&dir.path().join("ledger"), contract::BUCKETS).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("earlier layout"), "{message}");
        assert!(message.contains("empty data_dir"), "{message}");
    }

    #[test]
    fn bucket_names_round_trip() {
        assert_eq!(
            parse_bucket("idem.3600000.7200000"),
            Some((7_200_000, 3_600_000))
        );
        assert_eq!(parse_bucket("items"), None);
        assert_eq!(parse_bucket("idem.x.1"), None);
    }
}
