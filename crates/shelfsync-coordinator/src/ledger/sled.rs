//! The embedded ledger on sled.
//!
//! Everything lives in one sled tree under one-byte prefixes, so that one
//! `sled::Batch` covers a group's items, change-log entries and the new
//! head: after a crash they are all present or all absent. The one
//! exception is the filters of idempotency runs, which have a tree of
//! their own (`idempotency-filters`, [`super::idempotency`]).
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `i` | location `\0` sku | [`ItemRecord`] |
//! | `c` | seq of the block's first change (8 bytes, big-endian) | a block of up to [`CHANGE_BLOCK`] [`ChangeRecord`]s with consecutive seqs: each change and the seq of its key's previous change |
//! | `d` | bucket end (8 bytes BE), then a run's chunk | idempotency records ([`super::idempotency`]) |
//! | `m` | `head` / `oldest` / `format` / `position` / `idemposition` | u64 big-endian |
//! | `r` | store | [`StoredReport`] |
//!
//! Three choices keep a write at one sled insert (its item, usually an
//! update) and a share of a new key, since a new sled key is the dominant
//! cost of the write path (docs/performance.md):
//!
//! - **Change-log blocks.** The changes of one commit go into blocks of up to
//!   [`CHANGE_BLOCK`] (and [`CHANGE_BLOCK_BYTES`]) under the seq of their first change, so a group of
//!   writes adds one key per block instead of one per change. A change is
//!   found by its seq in the block with the greatest first seq not above it.
//!   Compaction removes whole blocks and rewrites the one it cuts through.
//!   Layout 2 stored one change per key; such single records read as blocks
//!   of one.
//! - **History without an index.** Each change record names the seq of the
//!   previous change of its key, so the history of a key is a walk from the
//!   item record's seq down that chain, ending at the key's first change or
//!   where compaction cut the log.
//! - **Idempotency records in memory, then in runs.** A batch's records
//!   stay in memory (and in the write-ahead log) until a few tens of
//!   thousands have gathered; then they are written as sorted runs of a few
//!   KiB per key, in small pieces ([`super::idempotency`]). `position` is
//!   the last batch in the tree, `idemposition` the last batch whose
//!   records are all in runs; [`Ledger::position`] is the lower of the two,
//!   and recovery replays the log from there (a batch the tree already
//!   holds only gives back its records).
//!
//! Layouts 2 and 3 stored one idempotency record per key; this code reads
//! them until their bucket expires. Layout 4 kept the runs' filters whole
//! in this tree; they are moved to their own at open. So an older ledger
//! opens as it is and is stamped layout 5.
//!
//! Values are msgpack wrapped in a version envelope (`Stored`); the key
//! layout has its own number under `mformat`, checked at open.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::ItemKey;
use shelfsync_proto::Change;

use super::idempotency::{FILTER_TREE, IdempotencyStore};
use super::{CommitBatch, IdempotencyRecord, ItemRecord, Ledger, LedgerError, StoredReport};

const HEAD: &[u8] = b"mhead";
const OLDEST: &[u8] = b"moldest";
const POSITION: &[u8] = b"mposition";
const IDEMPOTENCY_POSITION: &[u8] = b"midemposition";
const FORMAT: &[u8] = b"mformat";
/// The key layout this code writes (see the module docs).
const LAYOUT: u64 = 5;
/// The older layouts this code also reads: 2 stored one change per `c`
/// key, 2 and 3 one idempotency record per `d` key, 4 the runs' filters
/// in this tree (moved to their own at open).
const OLDER_LAYOUTS: [u64; 3] = [2, 3, 4];
/// Most changes stored under one `c` key.
pub const CHANGE_BLOCK: usize = 64;
/// Most bytes of one change-log block, as [`estimated_size`] counts them.
/// sled keeps up to 16 keys in a leaf (17 before it splits) and writes a
/// node past 128 KiB as a file of its own, created anew whenever the node
/// is rewritten. Blocks of 64 changes of some 270 bytes made every
/// change-log leaf such a file (docs/performance.md); 17 blocks of this
/// size stay under 100 KiB.
pub const CHANGE_BLOCK_BYTES: usize = 6 * 1024;
/// What [`estimated_size`] allows a change for everything but its strings:
/// field names, numbers, the op and the envelope (170 to 220 bytes encoded,
/// by the test that checks the estimate).
const CHANGE_FIXED_BYTES: usize = 256;
/// Bucket width of idempotency records when none is given.
pub const DEFAULT_IDEMPOTENCY_BUCKET: Duration = Duration::from_secs(24 * 60 * 60);

/// A change-log entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The change.
    pub change: Change,
    /// The seq of the previous change of the same key, if it has one.
    pub prev_seq: Option<u64>,
}

/// Version envelope of every stored value. A merge of idempotency runs
/// writes this envelope by hand around copied records
/// (`idempotency::join_chunk`, tag `CHUNK_VERSION`): a new version of run
/// chunks must be taught there too.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    /// The first record format.
    V1(T),
}

/// A `c` value: layout 2 stored one change (`V1`, the [`Stored`] envelope
/// of a [`ChangeRecord`]), layout 3 a block of changes in seq order.
#[derive(Serialize, Deserialize)]
enum StoredChanges {
    V1(Box<ChangeRecord>),
    V2(Vec<ChangeRecord>),
}

/// The sled-backed ledger.
#[derive(Debug, Clone)]
pub struct SledLedger {
    db: sled::Db,
    tree: sled::Tree,
    /// The idempotency records (their own module: most live in memory
    /// until they are written as runs).
    idempotency: IdempotencyStore,
    /// The position of the last batch applied to the tree.
    applied: Arc<AtomicU64>,
    /// The idempotency position last stored under `midemposition`.
    stored_covered: Arc<AtomicU64>,
}

impl SledLedger {
    /// Opens (or creates) the ledger in `dir` with the default idempotency
    /// bucket width.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        Self::open_with(dir, DEFAULT_IDEMPOTENCY_BUCKET)
    }

    /// Opens (or creates) the ledger in `dir`; new idempotency records go
    /// into buckets `bucket` wide (the coordinator passes its
    /// `idempotency_ttl`, so records outlive it by less than one width).
    pub fn open_with(dir: &Path, bucket: Duration) -> Result<Self, LedgerError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| LedgerError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let tree = db.open_tree("ledger").map_err(storage)?;
        check_layout(&tree, dir)?;
        let applied = read_u64(&tree, POSITION)?.unwrap_or(0);
        let covered = read_u64(&tree, IDEMPOTENCY_POSITION)?;
        let replay_after = applied.min(covered.unwrap_or(applied));
        let bucket_ms = u64::try_from(bucket.as_millis()).unwrap_or(u64::MAX);
        let filter_tree = db.open_tree(FILTER_TREE).map_err(storage)?;
        let idempotency =
            IdempotencyStore::open(tree.clone(), filter_tree, bucket_ms, replay_after)?;
        let ledger = SledLedger {
            db,
            tree,
            idempotency,
            applied: Arc::new(AtomicU64::new(applied)),
            stored_covered: Arc::default(),
        };
        // None stored (layout 3): the first sync stores one.
        ledger
            .stored_covered
            .store(covered.unwrap_or(u64::MAX), Ordering::Release);
        Ok(ledger)
    }
    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LedgerError> {
        self.tree
            .get(key)
            .map_err(storage)?
            .map(|value| decode(key, &value))
            .transpose()
    }

    fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, LedgerError> {
        read_u64(&self.tree, key)
    }
}

/// A u64 stored big-endian under `key`.
fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, LedgerError> {
    match tree.get(key).map_err(storage)? {
        None => Ok(None),
        Some(v) => Ok(Some(u64::from_be_bytes(v.as_ref().try_into().map_err(
            |_| LedgerError::Corrupt {
                key: printable(key),
                detail: "expected 8 bytes".into(),
            },
        )?))),
    }
}

/// Stamps a new ledger with [`LAYOUT`], an older one it reads too; refuses
/// one written in another.
fn check_layout(tree: &sled::Tree, dir: &Path) -> Result<(), LedgerError> {
    let stamp = || {
        tree.insert(FORMAT, &LAYOUT.to_be_bytes())
            .map(|_| ())
            .map_err(storage)
    };
    match read_u64(tree, FORMAT)? {
        Some(LAYOUT) => Ok(()),
        Some(older) if OLDER_LAYOUTS.contains(&older) => {
            tracing::info!(dir = %dir.display(), from = older, to = LAYOUT, "ledger key layout read as the new one");
            stamp()
        }
        None if tree.is_empty() => stamp(),
        found => Err(LedgerError::Storage(format!(
            "the ledger in {} has key layout {}, this build reads layouts \
             {OLDER_LAYOUTS:?} and {LAYOUT} only; \
             start it with the build that wrote it, or with an empty data_dir",
            dir.display(),
            found.unwrap_or(1)
        ))),
    }
}

#[cfg(test)]
impl SledLedger {
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn idempotency_store(&self) -> &IdempotencyStore {
        &self.idempotency
    }

    pub(crate) fn idempotency_store_mut(&mut self) -> &mut IdempotencyStore {
        &mut self.idempotency
    }
}

impl SledLedger {
    /// Stores how far the idempotency records are in runs, flushes sled and
    /// returns the position through which everything is durable.
    fn sync(&self) -> Result<u64, LedgerError> {
        // Read before the flush, which makes what they count durable.
        let applied = self.applied.load(Ordering::Acquire);
        let covered = self.idempotency.covered();
        if self.stored_covered.swap(covered, Ordering::AcqRel) != covered {
            self.tree
                .insert(IDEMPOTENCY_POSITION, &covered.to_be_bytes())
                .map_err(storage)?;
        }
        self.db.flush().map_err(storage)?;
        Ok(applied.min(covered))
    }

    /// The change block holding `seq`, if the log still has one there: the
    /// block with the greatest first seq not above `seq`.
    fn block_at(&self, seq: u64) -> Result<Option<(sled::IVec, Vec<ChangeRecord>)>, LedgerError> {
        let Some(entry) = self.tree.range(..=change_key(seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = entry.map_err(storage)?;
        if k.first() != Some(&b'c') {
            return Ok(None);
        }
        let block = decode_changes(&k, &v)?;
        Ok(Some((k, block)))
    }

    /// Every change block from the one holding `seq` on, in order.
    fn blocks_from(
        &self,
        seq: u64,
    ) -> impl Iterator<Item = Result<Vec<ChangeRecord>, LedgerError>> + '_ {
        let start = match self.tree.range(..=change_key(seq)).next_back() {
            Some(Ok((k, _))) if k.first() == Some(&b'c') => k.to_vec(),
            _ => change_key(seq).to_vec(),
        };
        self.tree
            .range(start..)
            .take_while(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |(k, _)| k.first() == Some(&b'c'))
            })
            .map(|entry| {
                let (k, v) = entry.map_err(storage)?;
                decode_changes(&k, &v)
            })
    }
}

fn decode_changes(key: &[u8], bytes: &[u8]) -> Result<Vec<ChangeRecord>, LedgerError> {
    match rmp_serde::from_slice::<StoredChanges>(bytes) {
        Ok(StoredChanges::V1(record)) => Ok(vec![*record]),
        Ok(StoredChanges::V2(block)) => Ok(block),
        Err(e) => Err(LedgerError::Corrupt {
            key: printable(key),
            detail: e.to_string(),
        }),
    }
}

/// Cuts `records` into blocks of at most [`CHANGE_BLOCK`] changes and
/// [`CHANGE_BLOCK_BYTES`] (a single larger change makes a block alone).
fn blocks(
    records: &mut impl Iterator<Item = ChangeRecord>,
) -> impl Iterator<Item = Vec<ChangeRecord>> {
    let mut records = records.peekable();
    std::iter::from_fn(move || {
        let mut block = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = records.peek() {
            let size = estimated_size(next);
            if !block.is_empty()
                && (block.len() >= CHANGE_BLOCK || bytes.saturating_add(size) > CHANGE_BLOCK_BYTES)
            {
                break;
            }
            bytes = bytes.saturating_add(size);
            block.extend(records.next());
        }
        (!block.is_empty()).then_some(block)
    })
}

/// An upper estimate of a change record's encoded size: its strings, and
/// [`CHANGE_FIXED_BYTES`] for the rest.
fn estimated_size(record: &ChangeRecord) -> usize {
    let change = &record.change;
    let state = match &change.state {
        shelfsync_core::KeyState::Live(item) => {
            item.location.len() + item.sku.len() + item.name.len()
        }
        _ => 0,
    };
    let op = match &change.op {
        shelfsync_core::Op::Create { name, .. } => name.len(),
        shelfsync_core::Op::Set { name, .. } => name.as_ref().map_or(0, String::len),
        _ => 0,
    };
    CHANGE_FIXED_BYTES
        + change.key.location.len()
        + change.key.sku.len()
        + state
        + op
        + change.store.len()
        + change.idempotency_key.len()
}

fn encode_changes(block: Vec<ChangeRecord>) -> Result<Vec<u8>, LedgerError> {
    rmp_serde::to_vec_named(&StoredChanges::V2(block))
        .map_err(|e| LedgerError::Storage(e.to_string()))
}

pub(super) fn storage(err: sled::Error) -> LedgerError {
    LedgerError::Storage(err.to_string())
}

pub(super) fn encode<T: Serialize>(value: T) -> Result<Vec<u8>, LedgerError> {
    rmp_serde::to_vec_named(&Stored::V1(value)).map_err(|e| LedgerError::Storage(e.to_string()))
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, LedgerError> {
    match rmp_serde::from_slice::<Stored<T>>(bytes) {
        Ok(Stored::V1(value)) => Ok(value),
        Err(e) => Err(LedgerError::Corrupt {
            key: printable(key),
            detail: e.to_string(),
        }),
    }
}

pub(super) fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

fn item_key(key: &ItemKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.location.len() + key.sku.len());
    k.push(b'i');
    k.extend_from_slice(key.location.as_bytes());
    k.push(0);
    k.extend_from_slice(key.sku.as_bytes());
    k
}

fn change_key(seq: u64) -> [u8; 9] {
    let mut k = [b'c'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Ledger for SledLedger {
    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError> {
        self.get(&item_key(key))
    }

    fn idempotency(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, LedgerError> {
        self.idempotency.lookup(store, key)
    }

    fn commit(&self, batch: CommitBatch) -> Result<(), LedgerError> {
        let CommitBatch {
            writes,
            idempotency,
            head,
            position,
        } = batch;
        // Recovery replays the log from the idempotency position, which may
        // be behind the tree's: a batch the tree already holds only brings
        // its idempotency records back into memory.
        let in_tree = position > 0 && position <= self.applied.load(Ordering::Acquire);
        // Before the tree: a reader that finds the batch's items finds its
        // records too.
        self.idempotency.add(idempotency, position);
        if in_tree {
            return Ok(());
        }
        /// An [`ItemRecord`] as written, borrowing the change's state.
        #[derive(Serialize)]
        struct ItemRecordRef<'a> {
            state: &'a shelfsync_core::KeyState,
            seq: u64,
        }
        let mut b = sled::Batch::default();
        for write in &writes {
            let change = &write.change;
            let record = ItemRecordRef {
                state: &change.state,
                seq: change.seq,
            };
            // A key written twice in one batch keeps its last state: the
            // batch is a map.
            b.insert(item_key(&change.key), encode(&record)?);
        }
        let mut records = writes.into_iter().map(|write| ChangeRecord {
            change: write.change,
            prev_seq: write.prior_seq,
        });
        for block in blocks(&mut records) {
            let Some(first) = block.first() else { break };
            b.insert(&change_key(first.change.seq), encode_changes(block)?);
        }
        b.insert(HEAD, &head.to_be_bytes());
        if position > 0 {
            b.insert(POSITION, &position.to_be_bytes());
        }
        self.tree.apply_batch(b).map_err(storage)?;
        self.applied.fetch_max(position, Ordering::AcqRel);
        Ok(())
    }

    fn flush(&self) -> Result<(), LedgerError> {
        self.idempotency.step(true)?;
        self.sync().map(|_| ())
    }

    fn checkpoint(&self) -> Result<u64, LedgerError> {
        self.idempotency.step(false)?;
        self.sync()
    }

    fn head(&self) -> Result<u64, LedgerError> {
        Ok(self.get_u64(HEAD)?.unwrap_or(0))
    }

    fn position(&self) -> Result<u64, LedgerError> {
        let applied = self.get_u64(POSITION)?.unwrap_or(0);
        // Layout 3 kept no idempotency record in memory.
        let covered = self.get_u64(IDEMPOTENCY_POSITION)?.unwrap_or(applied);
        Ok(applied.min(covered))
    }

    fn oldest(&self) -> Result<u64, LedgerError> {
        match self.get_u64(OLDEST)? {
            Some(oldest) => Ok(oldest),
            None => Ok(1),
        }
    }

    fn changes(&self, after: u64, until: u64, limit: usize) -> Result<Vec<Change>, LedgerError> {
        if after >= until {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for block in self.blocks_from(after.saturating_add(1)) {
            for record in block? {
                let seq = record.change.seq;
                if seq > until || out.len() >= limit {
                    return Ok(out);
                }
                if seq > after {
                    out.push(record.change);
                }
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
        let mut prefix = vec![b'i'];
        prefix.extend_from_slice(location.as_bytes());
        prefix.push(0);
        let start = match after_sku {
            // The smallest key strictly after `prefix + sku`.
            Some(sku) => [prefix.as_slice(), sku.as_bytes(), &[0]].concat(),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for entry in self.tree.range(start..) {
            let (k, v) = entry.map_err(storage)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let sku = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((sku, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn locations(&self) -> Result<Vec<String>, LedgerError> {
        // Jump from one location to the next: after `i<loc>\0` comes `i<loc>\x01`.
        let mut out = Vec::new();
        let mut start = b"i".to_vec();
        while let Some(entry) = self.tree.range(start.clone()..).next() {
            let (k, _) = entry.map_err(storage)?;
            if !k.starts_with(b"i") {
                break;
            }
            let Some(end) = k.iter().position(|b| *b == 0) else {
                break;
            };
            out.push(String::from_utf8_lossy(&k[1..end]).into_owned());
            start = [&k[..end], &[1u8][..]].concat();
        }
        Ok(out)
    }

    fn history(&self, key: &ItemKey, limit: usize) -> Result<Vec<Change>, LedgerError> {
        let mut out = Vec::new();
        let mut next = self.load(key)?.map(|record| record.seq);
        while let Some(seq) = next {
            if out.len() >= limit {
                break;
            }
            // A missing record is where compaction cut the log.
            let Some((_, block)) = self.block_at(seq)? else {
                break;
            };
            let Some(record) = block.into_iter().find(|r| r.change.seq == seq) else {
                break;
            };
            next = record.prev_seq.filter(|prev| *prev < seq);
            out.push(record.change);
        }
        Ok(out)
    }

    fn expire_idempotency(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError> {
        self.idempotency.expire(before_ms, limit)
    }

    fn compact_changes(&self, retain: u64, limit: usize) -> Result<usize, LedgerError> {
        let head = self.head()?;
        let oldest = self.oldest()?;
        let keep_from = head.saturating_sub(retain).saturating_add(1);
        if oldest >= keep_from {
            return Ok(0);
        }
        let until = keep_from.min(oldest.saturating_add(limit as u64));
        let mut b = sled::Batch::default();
        let mut removed = 0;
        // Blocks wholly before `until` go; the block `until` falls inside
        // is rewritten under its first kept seq.
        for entry in self.tree.range(change_key(oldest)..change_key(until)) {
            let (k, v) = entry.map_err(storage)?;
            let block = decode_changes(&k, &v)?;
            let (gone, kept): (Vec<_>, Vec<_>) =
                block.into_iter().partition(|r| r.change.seq < until);
            removed += gone.len();
            b.remove(k);
            if let Some(first) = kept.first() {
                b.insert(&change_key(first.change.seq), encode_changes(kept)?);
            }
        }
        b.insert(OLDEST, &until.to_be_bytes());
        self.tree.apply_batch(b).map_err(storage)?;
        Ok(removed)
    }

    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError> {
        let mut key = vec![b'r'];
        key.extend_from_slice(store.as_bytes());
        self.tree.insert(key, encode(report)?).map_err(storage)?;
        Ok(())
    }

    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError> {
        self.tree
            .scan_prefix(b"r")
            .map(|entry| {
                let (k, v) = entry.map_err(storage)?;
                Ok((
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    decode(&k, &v)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the ledger in `dir` again once the previous handle's sled
    /// threads have let go of the directory's lock (they may outlive the
    /// drop by a moment).
    pub(crate) fn reopen(dir: &Path, bucket: Duration) -> SledLedger {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match SledLedger::open_with(dir, bucket) {
                Ok(ledger) => return ledger,
                Err(err) if err.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{err}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("{err}"),
            }
        }
    }

    #[test]
    fn a_ledger_in_another_layout_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("ledger").unwrap();
            // A layout-1 ledger: data, no format stamp.
            tree.insert(HEAD, &7u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let err = loop {
            let err = SledLedger::open(dir.path()).unwrap_err().to_string();
            if !err.contains("could not acquire lock") || std::time::Instant::now() > deadline {
                break err;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(err.contains("key layout 1"), "{err}");
        assert!(err.contains("empty data_dir"), "{err}");
    }

    #[test]
    fn a_layout_2_ledger_opens_and_its_single_changes_read_as_blocks() {
        use shelfsync_core::{Item, KeyState, Op};
        let dir = tempfile::tempdir().unwrap();
        let key = ItemKey::new("s1", "a").unwrap();
        let change = |seq: u64| Change {
            seq,
            key: key.clone(),
            state: KeyState::Live(Item {
                location: "s1".into(),
                sku: "a".into(),
                name: "n".into(),
                quantity: seq,
                reserved: 0,
                version: seq,
            }),
            op: Op::Add { amount: 1 },
            store: "store-1".into(),
            idempotency_key: format!("k{seq}"),
            at_ms: seq,
        };
        {
            // What layout 2 wrote: one change record per `c` key.
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("ledger").unwrap();
            tree.insert(FORMAT, &2u64.to_be_bytes()).unwrap();
            for seq in 1..=2 {
                let record = ChangeRecord {
                    change: change(seq),
                    prev_seq: (seq > 1).then(|| seq - 1),
                };
                tree.insert(change_key(seq), encode(&record).unwrap())
                    .unwrap();
            }
            let item = ItemRecord {
                state: change(2).state,
                seq: 2,
            };
            tree.insert(item_key(&key), encode(&item).unwrap()).unwrap();
            tree.insert(HEAD, &2u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let ledger = reopen(dir.path(), DEFAULT_IDEMPOTENCY_BUCKET);
        assert_eq!(ledger.get_u64(FORMAT).unwrap(), Some(LAYOUT));
        // A block after the single records.
        let writes = (3..=5)
            .map(|seq| super::super::CommittedWrite {
                change: change(seq),
                prior_version: seq - 1,
                prior_seq: Some(seq - 1),
            })
            .collect();
        ledger
            .commit(CommitBatch {
                writes,
                head: 5,
                ..CommitBatch::default()
            })
            .unwrap();
        let seqs = |changes: Vec<Change>| changes.iter().map(|c| c.seq).collect::<Vec<_>>();
        assert_eq!(seqs(ledger.changes(0, 5, 100).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(ledger.changes(1, 4, 100).unwrap()), [2, 3, 4]);
        assert_eq!(seqs(ledger.history(&key, 100).unwrap()), [5, 4, 3, 2, 1]);
        // Compaction cuts through the block and keeps the rest readable.
        assert_eq!(ledger.compact_changes(2, 100).unwrap(), 3);
        assert_eq!(ledger.oldest().unwrap(), 4);
        assert_eq!(seqs(ledger.changes(0, 5, 100).unwrap()), [4, 5]);
        assert_eq!(seqs(ledger.history(&key, 100).unwrap()), [5, 4]);
    }

    #[test]
    fn a_new_ledger_is_stamped_and_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledLedger::open(dir.path()).unwrap());
        let ledger = reopen(dir.path(), DEFAULT_IDEMPOTENCY_BUCKET);
        assert_eq!(ledger.get_u64(FORMAT).unwrap(), Some(LAYOUT));
    }

    #[test]
    fn idempotency_buckets_are_found_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let record = |at_ms| IdempotencyRecord {
            key: ItemKey::new("s1", "a").unwrap(),
            op: shelfsync_core::Op::Add { amount: 1 },
            expected_version: None,
            outcome: super::super::Outcome::Rejected(shelfsync_proto::WireError::new(
                shelfsync_proto::ErrorCode::NotFound,
                "gone",
            )),
            at_ms,
        };
        {
            let ledger = SledLedger::open_with(dir.path(), Duration::from_millis(10)).unwrap();
            let batch = CommitBatch {
                idempotency: vec![
                    ("store-1".into(), "k1".into(), record(5)),
                    ("store-1".into(), "k2".into(), record(25)),
                    ("store-2".into(), "k3".into(), record(u64::MAX - 1)),
                ],
                ..CommitBatch::default()
            };
            ledger.commit(batch).unwrap();
            ledger.flush().unwrap();
        }
        // Another width after the restart: the old buckets still answer.
        let ledger = reopen(dir.path(), Duration::from_secs(60));
        // The last bucket's end saturates at u64::MAX.
        assert_eq!(ledger.idempotency.live_buckets(), [u64::MAX, 30, 10]);
        for (store, key, at) in [("store-1", "k1", 5), ("store-1", "k2", 25)] {
            assert_eq!(ledger.idempotency(store, key).unwrap(), Some(record(at)));
        }
        // Each bucket holds a run of one chunk and its filter.
        assert_eq!(ledger.expire_idempotency(30, 100).unwrap(), 4);
        assert_eq!(ledger.idempotency.live_buckets(), [u64::MAX]);
        assert!(ledger.idempotency("store-1", "k1").unwrap().is_none());
    }

    /// A change to key `sku-<seq>` with strings `long` characters long
    /// (names up to 200), alternating the op and the state's kind.
    fn change_record(seq: u64, long: usize) -> ChangeRecord {
        use shelfsync_core::{Item, KeyState, Op};
        let text = |n: usize| "x".repeat(n);
        let key = ItemKey::new(text(long.min(64)), format!("{seq}{}", text(long.min(44)))).unwrap();
        let name = text(long.min(200));
        let (op, state) = match seq % 3 {
            0 => (
                Op::Create {
                    name: name.clone(),
                    quantity: u64::MAX,
                },
                KeyState::Live(Item {
                    location: key.location.clone(),
                    sku: key.sku.clone(),
                    name,
                    quantity: u64::MAX,
                    reserved: u64::MAX,
                    version: u64::MAX,
                }),
            ),
            1 => (
                Op::Set {
                    name: Some(name.clone()),
                    quantity: Some(u64::MAX),
                },
                KeyState::Live(Item {
                    location: key.location.clone(),
                    sku: key.sku.clone(),
                    name,
                    quantity: u64::MAX,
                    reserved: 0,
                    version: u64::MAX,
                }),
            ),
            _ => (Op::Delete, KeyState::Deleted { version: u64::MAX }),
        };
        ChangeRecord {
            change: Change {
                seq,
                key,
                state,
                op,
                store: text(long.min(64)),
                idempotency_key: text(long.min(128)),
                at_ms: u64::MAX,
            },
            prev_seq: Some(u64::MAX),
        }
    }

    #[test]
    fn the_size_estimate_of_a_change_is_never_below_its_encoding() {
        for long in [1, 10, 40, 64, 200] {
            for seq in [u64::MAX - 2, u64::MAX - 1, u64::MAX] {
                let record = change_record(seq, long);
                let encoded = encode_changes(vec![record.clone()]).unwrap().len();
                assert!(
                    estimated_size(&record) >= encoded,
                    "estimate {} < {encoded} bytes (strings of {long})",
                    estimated_size(&record)
                );
            }
        }
    }

    #[test]
    fn change_blocks_stay_small_enough_for_sled_to_keep_leaves_in_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open(dir.path()).unwrap();
        for long in [8, 200] {
            let from = ledger.head().unwrap() + 1;
            let writes = (from..from + 500)
                .map(|seq| {
                    let record = change_record(seq, long);
                    super::super::CommittedWrite {
                        prior_version: 0,
                        prior_seq: None,
                        change: record.change,
                    }
                })
                .collect();
            ledger
                .commit(CommitBatch {
                    writes,
                    head: from + 499,
                    ..CommitBatch::default()
                })
                .unwrap();
        }
        let mut blocks = 0;
        for entry in ledger.tree().scan_prefix(b"c") {
            let (_, v) = entry.unwrap();
            assert!(
                v.len() <= CHANGE_BLOCK_BYTES,
                "a block of {} bytes",
                v.len()
            );
            blocks += 1;
        }
        // Short changes fill blocks by count, long ones by size.
        assert!(blocks >= 500usize.div_ceil(CHANGE_BLOCK) + 500 * 600 / CHANGE_BLOCK_BYTES);
        let seqs: Vec<u64> = ledger
            .changes(0, 1000, 2000)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    }
}
