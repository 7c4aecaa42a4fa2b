//! The store's local replica on sled.
//!
//! It holds the state of every key of the store's locations (live items and
//! tombstones) and the sync position, in one sled tree:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `i` | location `\0` sku | [`Record`]: the key's state and the bootstrap epoch that last saw it |
//! | `c` | epoch, location `\0` last sku | up to 32 live items a bootstrap copied ([chunks]); of a key's record and chunked items the latest epoch counts, the record on a tie |
//! | `m` | `meta` | [`Meta`]: cursor, bootstrap progress, epoch, digest, last sync time |
//!
//! Every write to sled is one `sled::Batch` that writes the items and the
//! new [`Meta`] together, so after a crash the items and the cursor agree.
//! A page of changes is applied in memory first (its states readable at
//! once through the [overlay](crate::overlay), its records kept for the
//! next page to merge with) and written with the pages after it, once
//! [`Flush::after`] has passed or [`Flush::keys`] keys wait: under a write
//! load that is one sled batch, and one wake-up of sled's I/O threads, per
//! tens of pages rather than per page. Snapshot pages and every other
//! change are written at once, with whatever waits. sled does not sync a
//! batch either (it flushes every 500 ms on its own, and a clean stop
//! flushes). So after a crash the replica may have lost the last states a
//! client was answered from and its cursor is behind: it is not [caught
//! up](Replica::caught_up) until a sync has brought it to the coordinator's
//! head again, and local reads wait for that.
//! Applying a state never moves a key to a lower version, so replayed or
//! overlapping pages are harmless.
//!
//! A bootstrap copies a snapshot page by page, as chunks, under a new
//! epoch; when the last page is in, keys the snapshot did not mention
//! (deleted at the coordinator meanwhile) are swept with every record and
//! chunk of earlier epochs, and the cursor is set to the head of the first
//! page, from which changes resume.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::digest::Digest;
use shelfsync_core::{Item, ItemKey, KeyState};
use shelfsync_proto::Change;

use crate::overlay::{self, Overlay};
use crate::transfers::OpenTransfers;

mod chunks;

const META: &[u8] = b"mmeta";
/// Most states remembered for clients before the sync brings them (a
/// minute of writes at a busy store's rate, a few tens of MiB): past it,
/// new writes wait for a sync.
pub const MAX_REMEMBERED: usize = 200_000;
/// Present while the replica is closed after a clean stop.
const CLEAN: &[u8] = b"mclean";

/// Failures of the local store.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// sled failed.
    #[error("replica storage error: {0}")]
    Storage(String),
    /// A stored record did not decode.
    #[error("corrupt replica record: {0}")]
    Corrupt(String),
}

/// What the replica keeps per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Live item or tombstone.
    pub state: KeyState,
    /// The bootstrap epoch in which this key was last confirmed.
    pub epoch: u64,
}

/// Sync position and summary, written with every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Last change-log sequence number applied; `None` until the first
    /// bootstrap completes.
    pub cursor: Option<u64>,
    /// A bootstrap in progress, if any.
    pub bootstrap: Option<Bootstrap>,
    /// Epoch of the latest bootstrap.
    pub epoch: u64,
    /// Digest of the live items.
    pub digest_sum: u64,
    /// Number of live items.
    pub item_count: u64,
    /// When the last sync completed, milliseconds since the Unix epoch.
    pub last_sync_ms: Option<u64>,
}

impl Meta {
    /// The digest of the live items.
    pub fn digest(&self) -> Digest {
        Digest {
            sum: self.digest_sum,
            count: self.item_count,
        }
    }
}

/// Progress of a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Head of the change log at the first snapshot page; the cursor once done.
    pub start_head: u64,
    /// The last key copied; the next page starts after it.
    pub after: Option<ItemKey>,
    /// Whether the replica held records when the bootstrap began, so that
    /// the last page must sweep the keys it did not confirm; a bootstrap
    /// into an empty replica has nothing to sweep and skips reading every
    /// record again.
    #[serde(default = "sweep_by_default")]
    pub sweep: bool,
}

/// Bootstraps recorded before `sweep` existed sweep, to be safe.
fn sweep_by_default() -> bool {
    true
}

/// When pages of changes applied in memory are written to sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    /// The longest the oldest of them waits.
    pub after: Duration,
    /// The most keys that wait.
    pub keys: usize,
}

impl Default for Flush {
    /// 50 ms and 4,096 keys: at 18,000 writes/s about 20 sled batches a
    /// second instead of 400 (docs/decisions.md).
    fn default() -> Self {
        Flush {
            after: Duration::from_millis(50),
            keys: 4096,
        }
    }
}

/// The replica's mutable state, behind its lock.
#[derive(Debug, Default)]
struct Inner {
    /// Sync position and summary of the replica as read (sled and
    /// `unflushed` together).
    meta: Meta,
    /// Records applied from pages of changes, not written to sled yet.
    unflushed: HashMap<ItemKey, Record>,
    /// When the oldest of them was applied.
    since: Option<Instant>,
}

/// Version envelope of stored values.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    V1(T),
}

/// The replica. Mutations are serialized by an internal lock; reads are not.
#[derive(Debug)]
pub struct Replica {
    db: sled::Db,
    tree: sled::Tree,
    inner: Mutex<Inner>,
    /// A copy of the meta as of the last commit, for readers: they never
    /// wait for a commit or a flush.
    published: RwLock<Meta>,
    flush: Flush,
    /// See [`Replica::caught_up`].
    caught_up: AtomicBool,
    /// The epochs whose bootstraps left [chunks], latest first.
    epochs: RwLock<Vec<u64>>,
    /// What clients were answered with that the sync has not brought yet.
    overlay: Overlay,
    /// The open transfers of the replica's locations.
    transfers: OpenTransfers,
}

pub(crate) fn storage(err: sled::Error) -> ReplicaError {
    ReplicaError::Storage(err.to_string())
}

pub(crate) fn encode<T: Serialize>(value: T) -> Result<Vec<u8>, ReplicaError> {
    rmp_serde::to_vec_named(&Stored::V1(value)).map_err(|e| ReplicaError::Storage(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ReplicaError> {
    match rmp_serde::from_slice::<Stored<T>>(bytes) {
        Ok(Stored::V1(value)) => Ok(value),
        Err(e) => Err(ReplicaError::Corrupt(e.to_string())),
    }
}

fn item_key(key: &ItemKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.location.len() + key.sku.len());
    k.push(b'i');
    k.extend_from_slice(key.location.as_bytes());
    k.push(0);
    k.extend_from_slice(key.sku.as_bytes());
    k
}

/// Pending writes of one batch, with the digest kept in step.
struct Pending<'a> {
    replica: &'a Replica,
    /// Held for the whole batch: mutations of the replica are serialized.
    guard: std::sync::MutexGuard<'a, Inner>,
    batch: sled::Batch,
    meta: Meta,
    /// Keys written in this batch, so a later write in the same batch sees them.
    written: HashMap<ItemKey, Record>,
    /// Whether the batch may stay in memory ([`Flush`]): a page of changes,
    /// whose records' states go to the overlay meanwhile.
    deferred: bool,
}

impl Pending<'_> {
    fn load(&self, key: &ItemKey) -> Result<Option<Record>, ReplicaError> {
        if let Some(record) = self.written.get(key) {
            return Ok(Some(record.clone()));
        }
        if let Some(record) = self.guard.unflushed.get(key) {
            return Ok(Some(record.clone()));
        }
        self.replica.record(key)
    }

    /// Applies `state` to `key` unless the replica already has a newer
    /// version; stamps the record with `epoch` either way. A snapshot page
    /// (`snapshot`) is authoritative over records of earlier epochs whatever
    /// their version: after the coordinator was restored from a backup, the
    /// replica may hold versions the coordinator no longer has.
    fn merge(
        &mut self,
        key: &ItemKey,
        state: KeyState,
        epoch: u64,
        snapshot: bool,
    ) -> Result<(), ReplicaError> {
        let old = self.load(key)?;
        let record = match old {
            Some(old)
                if old.state.version() >= state.version() && (!snapshot || old.epoch == epoch) =>
            {
                if old.epoch == epoch {
                    return Ok(());
                }
                Record {
                    state: old.state,
                    epoch,
                }
            }
            old => {
                let mut digest = self.meta.digest();
                if let Some(item) = old.as_ref().and_then(|o| o.state.item()) {
                    digest.remove(item);
                }
                if let Some(item) = state.item() {
                    digest.add(item);
                }
                self.meta.digest_sum = digest.sum;
                self.meta.item_count = digest.count;
                Record { state, epoch }
            }
        };
        if !self.deferred {
            self.batch.insert(item_key(key), encode(&record)?);
        }
        self.written.insert(key.clone(), record);
        Ok(())
    }

    /// Applies the batch: in memory only when it is deferred and no flush
    /// is due, else written to sled with everything in memory. A failed
    /// write changes nothing.
    fn commit(self) -> Result<(), ReplicaError> {
        let Pending {
            replica,
            mut guard,
            mut batch,
            meta,
            written,
            deferred,
            ..
        } = self;
        let flush = replica.flush;
        if deferred {
            let waiting = guard.unflushed.len() + written.len();
            let since = guard.since.unwrap_or_else(Instant::now);
            if waiting < flush.keys && since.elapsed() < flush.after {
                // Readable through the overlay until written: each entry
                // goes at the first write at or past this page's cursor.
                let cursor = meta.cursor.unwrap_or_default();
                let states = written
                    .iter()
                    .map(|(k, r)| (k.clone(), r.state.clone(), cursor));
                replica.overlay.put_synced(states);
                replica.overlay.settle_remembered(cursor);
                guard.unflushed.extend(written);
                guard.since = Some(since);
                replica.publish(&meta);
                guard.meta = meta;
                return Ok(());
            }
            for (key, record) in &written {
                batch.insert(item_key(key), encode(record)?);
            }
        }
        // What waits in memory goes with this batch, under the batch's own
        // records of the same keys (newer: merged over them).
        for (key, record) in &guard.unflushed {
            if !written.contains_key(key) {
                batch.insert(item_key(key), encode(record)?);
            }
        }
        batch.insert(META, encode(&meta)?);
        fail::fail_point!(crate::failpoints::REPLICA_WRITE, |arg| Err(
            ReplicaError::Storage(format!("injected: {}", crate::failpoints::io_error(arg)))
        ));
        replica.tree.apply_batch(batch).map_err(storage)?;
        guard.unflushed.clear();
        guard.since = None;
        if let Some(cursor) = meta.cursor {
            replica.overlay.settle(cursor);
        }
        replica.publish(&meta);
        guard.meta = meta;
        Ok(())
    }
}

impl Replica {
    /// Opens (or creates) the replica in `dir`, writing pages of changes
    /// as [`Flush::default`] says.
    pub fn open(dir: &Path) -> Result<Self, ReplicaError> {
        Self::open_with(dir, Flush::default())
    }

    /// Opens (or creates) the replica in `dir`, writing pages of changes
    /// as `flush` says.
    pub fn open_with(dir: &Path, flush: Flush) -> Result<Self, ReplicaError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 * 1024 * 1024)
            .open()
            .map_err(|e| ReplicaError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let tree = db.open_tree("replica").map_err(storage)?;
        let transfers = OpenTransfers::new(db.open_tree("transfers").map_err(storage)?);
        let meta = match tree.get(META).map_err(storage)? {
            Some(bytes) => decode(&bytes)?,
            None => Meta::default(),
        };
        // Open means "not cleanly closed" until `close`; durable at once, so
        // that a crash from here on is seen as one at the next start.
        let clean = tree.remove(CLEAN).map_err(storage)?.is_some();
        db.flush().map_err(storage)?;
        if !clean && meta.cursor.is_some() {
            tracing::warn!("the replica was not closed cleanly: local reads wait for a sync");
        }
        Ok(Replica {
            caught_up: AtomicBool::new(clean || meta.cursor.is_none()),
            epochs: RwLock::new(chunks::epochs(&tree)?),
            overlay: Overlay::default(),
            transfers,
            db,
            tree,
            published: RwLock::new(meta.clone()),
            inner: Mutex::new(Inner {
                meta,
                ..Inner::default()
            }),
            flush,
        })
    }

    /// Whether local reads may be served: false after a start that followed
    /// a crash, until [`Replica::mark_caught_up`]. Such a replica may have
    /// lost the last states its clients were answered from, and answering
    /// from it would take them back in time (the fault suite found that:
    /// a write acknowledged at version 249, the agent killed, and its
    /// replica answering 248 after the restart).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Records that a sync brought the replica to the coordinator's head.
    pub fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!("replica caught up: local reads are served again");
        }
    }

    /// Flushes everything and marks the replica cleanly closed, so that the
    /// next start serves local reads at once.
    pub fn close(&self) -> Result<(), ReplicaError> {
        self.flush()?;
        self.db.flush().map_err(storage)?;
        self.tree.insert(CLEAN, &[]).map_err(storage)?;
        self.db.flush().map(|_| ()).map_err(storage)
    }

    /// The key's state that counts: its per-key record or a chunk's item,
    /// whichever has the later epoch, the record on a tie.
    fn record(&self, key: &ItemKey) -> Result<Option<Record>, ReplicaError> {
        let keyed: Option<Record> = match self.tree.get(item_key(key)).map_err(storage)? {
            Some(bytes) => Some(decode(&bytes)?),
            None => None,
        };
        // Read in place: this runs for every local read and every change.
        let epochs = (self.epochs.read())
            .map_err(|_| ReplicaError::Storage("replica lock poisoned".into()))?;
        for &epoch in epochs.iter() {
            if keyed.as_ref().is_some_and(|r| r.epoch >= epoch) {
                break;
            }
            if let Some(chunked) = chunks::lookup(&self.tree, epoch, key)? {
                return Ok(Some(chunked));
            }
        }
        Ok(keyed)
    }

    /// Every key from `start` (`location \0 sku` bytes or a prefix of
    /// them) on, in key order.
    fn entries(&self, start: &[u8]) -> chunks::Merged {
        chunks::entries(&self.tree, b'i', &self.epochs(), start)
    }

    fn pending(&self) -> Result<Pending<'_>, ReplicaError> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| ReplicaError::Storage("replica lock poisoned".into()))?;
        Ok(Pending {
            replica: self,
            batch: sled::Batch::default(),
            meta: guard.meta.clone(),
            guard,
            written: Default::default(),
            deferred: false,
        })
    }

    fn publish(&self, meta: &Meta) {
        if let Ok(mut published) = self.published.write() {
            published.clone_from(meta);
        }
    }

    /// Writes to sled what pages of changes left in memory.
    pub fn flush(&self) -> Result<(), ReplicaError> {
        self.pending()?.commit()
    }

    /// The open transfers from or to the replica's locations.
    pub fn transfers(&self) -> &OpenTransfers {
        &self.transfers
    }

    /// The sync position and summary.
    pub fn meta(&self) -> Meta {
        self.published.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The live item under `key`, if any: the newer of the replica's state
    /// and the one a client of this agent was answered with.
    pub fn get(&self, key: &ItemKey) -> Result<Option<Item>, ReplicaError> {
        let stored = self.record(key)?.map(|record| record.state);
        let state = overlay::newest(self.overlay.get(key), stored);
        Ok(state.and_then(|state| state.item().cloned()))
    }

    /// Up to `limit` live items of `location` in sku order, after
    /// `after_sku`, as [`Replica::get`] sees them, and the sku to list on
    /// after (`None` once the last was listed).
    pub fn list(
        &self,
        location: &str,
        after_sku: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<String>), ReplicaError> {
        let mut listed = self.stored_list(location, after_sku, limit.saturating_add(1))?;
        let full = listed.len() > limit;
        listed.truncate(limit);
        let bound = listed.last().map(|item| item.sku.clone()).filter(|_| full);
        // Resolve only the remembered states that can reach this page: none
        // past a full page's last sku, none past `limit + 1` live ones.
        let (mut overlaid, mut live) = (Vec::new(), 0);
        for (key, state) in self.overlay.after(location, after_sku) {
            if live > limit || bound.as_ref().is_some_and(|bound| &key.sku > bound) {
                break;
            }
            let stored = self.record(&key)?.map(|record| record.state);
            if let Some(state) = overlay::newest(Some(state), stored) {
                live += usize::from(state.item().is_some());
                overlaid.push((key.sku, state));
            }
        }
        let mut items = overlay::merge(listed, full, overlaid);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|item| item.sku.clone())
        } else {
            bound
        };
        Ok((items, next))
    }

    /// Up to `limit` live items of `location` in the replica itself.
    fn stored_list(
        &self,
        location: &str,
        after_sku: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, ReplicaError> {
        let prefix = chunks::key_bytes(location, "");
        let start = match after_sku {
            Some(sku) => [prefix.as_slice(), sku.as_bytes(), &[0]].concat(),
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        for entry in self.entries(&start) {
            let entry = entry?;
            if !entry.key.starts_with(&prefix) || items.len() >= limit {
                break;
            }
            items.extend(entry.record.state.item().cloned());
        }
        Ok(items)
    }

    /// Every live item, for verification.
    pub fn items(&self) -> Result<Vec<Item>, ReplicaError> {
        self.flush()?;
        let mut items = Vec::new();
        for entry in self.entries(&[]) {
            items.extend(entry?.record.state.item().cloned());
        }
        Ok(items)
    }

    /// Starts a bootstrap at `start_head` (or keeps the one in progress).
    pub fn begin_bootstrap(&self, start_head: u64) -> Result<Bootstrap, ReplicaError> {
        let mut pending = self.pending()?;
        if let Some(bootstrap) = &pending.meta.bootstrap {
            return Ok(bootstrap.clone());
        }
        // Records waiting in memory are written with this batch: they
        // count as held.
        let held = !pending.guard.unflushed.is_empty();
        let bootstrap = Bootstrap {
            start_head,
            after: None,
            sweep: held
                || self.tree.scan_prefix(b"i").next().is_some()
                || !self.epochs().is_empty(),
        };
        pending.meta.epoch += 1;
        pending.meta.bootstrap = Some(bootstrap.clone());
        pending.commit()?;
        Ok(bootstrap)
    }

    /// Forgets the bootstrap in progress (its start is too old to resume).
    pub fn abandon_bootstrap(&self) -> Result<(), ReplicaError> {
        let mut pending = self.pending()?;
        pending.meta.bootstrap = None;
        pending.commit()
    }

    /// Applies one snapshot page. `next` is the key to resume after, `None`
    /// on the last page, which completes the bootstrap: unseen keys are
    /// swept and the cursor set to the bootstrap's start head.
    pub fn apply_snapshot_page(
        &self,
        items: Vec<Item>,
        next: Option<ItemKey>,
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        let mut pending = self.pending()?;
        let Some(mut bootstrap) = pending.meta.bootstrap.clone() else {
            return Err(ReplicaError::Storage(
                "snapshot page without a bootstrap in progress".into(),
            ));
        };
        let epoch = pending.meta.epoch;
        let last = items.last().map(Item::key);
        if chunks::in_order(&items, bootstrap.after.as_ref()) {
            // Into an empty replica the digest grows page by page; a
            // bootstrap that sweeps counts it again at the end.
            if !bootstrap.sweep {
                let mut digest = pending.meta.digest();
                items.iter().for_each(|item| digest.add(item));
                pending.meta.digest_sum = digest.sum;
                pending.meta.item_count = digest.count;
            }
            for (key, value) in chunks::chunks(items, epoch)? {
                pending.batch.insert(key, value);
            }
            self.add_epoch(epoch);
        } else {
            for item in items {
                let key = item.key();
                pending.merge(&key, KeyState::Live(item), epoch, true)?;
            }
        }
        let (more, sweep) = (next.is_some(), next.is_none() && bootstrap.sweep);
        match next {
            Some(after) => bootstrap.after = Some(after),
            // The sweep reads this page from sled: it is written first, as
            // a page to resume after.
            None if sweep => bootstrap.after = last.or(bootstrap.after),
            None => {}
        }
        if more || sweep {
            pending.meta.bootstrap = Some(bootstrap);
        } else {
            pending.meta.bootstrap = None;
            pending.meta.cursor = Some(bootstrap.start_head);
            pending.meta.last_sync_ms = Some(now_ms);
        }
        crate::failpoints::crash_point(crate::failpoints::MID_REPLICA_PAGE);
        pending.commit()?;
        if sweep {
            self.sweep(now_ms)?;
        }
        Ok(())
    }

    /// Completes a bootstrap into a replica that held records: removes
    /// every key the bootstrap's epoch did not confirm, with the records
    /// and chunks of earlier epochs, and counts the digest anew.
    fn sweep(&self, now_ms: u64) -> Result<(), ReplicaError> {
        let mut pending = self.pending()?;
        let Some(bootstrap) = pending.meta.bootstrap.clone() else {
            return Err(ReplicaError::Storage("sweep without a bootstrap".into()));
        };
        let epoch = pending.meta.epoch;
        let mut digest = Digest::default();
        for entry in self.entries(&[]) {
            let entry = entry?;
            if entry.record.epoch == epoch
                && let Some(item) = entry.record.state.item()
            {
                digest.add(item);
            }
        }
        // A record of an earlier epoch is either unconfirmed or under this
        // epoch's chunk.
        for entry in self.tree.scan_prefix(b"i") {
            let (k, v) = entry.map_err(storage)?;
            if decode::<Record>(&v)?.epoch < epoch {
                pending.batch.remove(k);
            }
        }
        for key in chunks::keys_before(&self.tree, epoch) {
            pending.batch.remove(key?);
        }
        pending.meta.digest_sum = digest.sum;
        pending.meta.item_count = digest.count;
        pending.meta.bootstrap = None;
        pending.meta.cursor = Some(bootstrap.start_head);
        pending.meta.last_sync_ms = Some(now_ms);
        pending.commit()?;
        if let Ok(mut epochs) = self.epochs.write() {
            epochs.retain(|e| *e >= epoch);
        }
        Ok(())
    }

    /// Notes that `epoch` has chunks, before they are written: a reader
    /// that looks for them early finds none.
    fn add_epoch(&self, epoch: u64) {
        if let Ok(mut epochs) = self.epochs.write()
            && !epochs.contains(&epoch)
        {
            epochs.push(epoch);
            epochs.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// The epochs that have chunks, latest first.
    fn epochs(&self) -> Vec<u64> {
        self.epochs.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Applies a page of changes and moves the cursor to `next`.
    pub fn apply_changes(
        &self,
        changes: &[Change],
        next: u64,
        now_ms: Option<u64>,
    ) -> Result<(), ReplicaError> {
        let mut pending = self.pending()?;
        let epoch = pending.meta.epoch;
        for change in changes {
            pending.merge(&change.key, change.state.clone(), epoch, false)?;
        }
        pending.deferred = true;
        if pending.meta.cursor.is_none_or(|cursor| next > cursor) {
            pending.meta.cursor = Some(next);
        }
        if now_ms.is_some() {
            pending.meta.last_sync_ms = now_ms;
        }
        crate::failpoints::crash_point(crate::failpoints::MID_REPLICA_PAGE);
        pending.commit()
    }

    /// Remembers states clients of this agent are answered with (accepted
    /// writes, strong reads), so that they read them back at once:
    /// `(key, state, seq)`, the sync bringing the state (or a newer one) by
    /// `seq`. In memory only; the replica itself is written by the sync.
    pub fn remember(&self, states: impl IntoIterator<Item = (ItemKey, KeyState, u64)>) {
        let cursor = self.meta().cursor;
        self.overlay.put(
            states
                .into_iter()
                .filter(|(_, _, seq)| cursor.is_none_or(|cursor| *seq > cursor)),
        );
    }

    /// How many remembered states the sync has not brought yet.
    pub fn remembered(&self) -> usize {
        self.overlay.len()
    }

    /// Whether [`MAX_REMEMBERED`] states wait for the sync: the agent takes
    /// no new writes until it has caught up.
    pub fn behind(&self) -> bool {
        self.remembered() >= MAX_REMEMBERED
    }

    /// Forgets everything (a diverged replica heals by bootstrapping again).
    pub fn reset_cursor(&self) -> Result<(), ReplicaError> {
        let mut pending = self.pending()?;
        pending.meta.cursor = None;
        pending.meta.bootstrap = None;
        pending.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfsync_core::Op;

    /// Opens the replica in `dir` again once the previous handle's sled
    /// threads have let go of the directory's lock (they may outlive the
    /// drop by a moment; sled offers no event to wait for).
    fn reopen(dir: &Path) -> Replica {
        reopen_with(dir, Flush::default())
    }

    /// [`reopen`] with pages of changes written as `flush` says.
    fn reopen_with(dir: &Path, flush: Flush) -> Replica {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Replica::open_with(dir, flush) {
                Ok(replica) => return replica,
                Err(err) if err.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{err}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(err) => panic!("{err}"),
            }
        }
    }

    fn item(sku: &str, quantity: u64, version: u64) -> Item {
        Item {
            location: "s1".into(),
            sku: sku.into(),
            name: "n".into(),
            quantity,
            reserved: 0,
            version,
            ..Default::default()
        }
    }

    fn change(seq: u64, state: KeyState, sku: &str) -> Change {
        Change {
            seq,
            key: ItemKey::new("s1", sku).unwrap(),
            state,
            op: Op::Add { amount: 1 },
            store: "x".into(),
            idempotency_key: "k".into(),
            at_ms: 0,
            commit_end: 0,
        }
    }

    fn digest_of(items: &[Item]) -> Digest {
        let mut d = Digest::default();
        items.iter().for_each(|i| d.add(i));
        d
    }

    #[test]
    fn remembered_states_are_read_until_the_sync_brings_them() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        let (a, b) = (
            ItemKey::new("s1", "a").unwrap(),
            ItemKey::new("s1", "b").unwrap(),
        );
        replica
            .apply_changes(&[change(1, KeyState::Live(item("a", 1, 1)), "a")], 1, None)
            .unwrap();
        // Answers for two keys, the newer of `a` first: read at once, in
        // memory only (no digest, no cursor moves).
        replica.remember([
            (a.clone(), KeyState::Live(item("a", 3, 2)), 2),
            (b.clone(), KeyState::Live(item("b", 7, 1)), 3),
            (a.clone(), KeyState::Live(item("a", 1, 1)), 1),
        ]);
        assert_eq!(replica.get(&a).unwrap(), Some(item("a", 3, 2)));
        let (listed, next) = replica.list("s1", None, 10).unwrap();
        assert_eq!(listed, vec![item("a", 3, 2), item("b", 7, 1)]);
        assert_eq!(next, None);
        let (page, next) = replica.list("s1", None, 1).unwrap();
        assert_eq!((page, next), (vec![item("a", 3, 2)], Some("a".to_string())));
        assert_eq!(replica.items().unwrap(), vec![item("a", 1, 1)]);
        assert_eq!(replica.meta().cursor, Some(1));
        // The sync brings `a` at 2 and then deletes it at 3: the replica's
        // state wins once it is as new, and what the cursor passed is gone.
        let a2 = change(2, KeyState::Live(item("a", 3, 2)), "a");
        replica.apply_changes(&[a2], 2, None).unwrap();
        assert_eq!(replica.remembered(), 1);
        let gone = change(3, KeyState::Deleted { version: 3 }, "a");
        replica.apply_changes(&[gone], 3, None).unwrap();
        assert_eq!(replica.get(&a).unwrap(), None);
        assert_eq!(replica.remembered(), 0, "b's seq 3 is passed too");
        assert_eq!(replica.get(&b).unwrap(), None, "the sync never brought b");
    }

    #[test]
    fn too_many_remembered_states_hold_writes_until_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        let states = (0..MAX_REMEMBERED as u64).map(|i| {
            let sku = format!("k{i}");
            let state = KeyState::Live(item(&sku, 1, 1));
            (ItemKey::new("s1", sku).unwrap(), state, i + 1)
        });
        replica.remember(states.collect::<Vec<_>>());
        assert!(replica.behind());
        replica
            .apply_changes(&[], MAX_REMEMBERED as u64, None)
            .unwrap();
        assert!(!replica.behind(), "the sync passed every seq");
    }

    #[test]
    fn a_listing_merges_remembered_states_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        let changes: Vec<Change> = ["b", "d", "f"]
            .iter()
            .zip(1..)
            .map(|(sku, seq)| change(seq, KeyState::Live(item(sku, 1, 1)), sku))
            .collect();
        replica.apply_changes(&changes, 3, None).unwrap();
        let key = |sku| ItemKey::new("s1", sku).unwrap();
        replica.remember([
            (key("a"), KeyState::Live(item("a", 1, 1)), 4),
            (key("d"), KeyState::Deleted { version: 2 }, 5),
            (key("g"), KeyState::Live(item("g", 1, 1)), 6),
        ]);
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let (page, next) = replica.list("s1", after.as_deref(), 2).unwrap();
            assert!(page.len() <= 2);
            seen.extend(page.into_iter().map(|i| i.sku));
            match next {
                Some(sku) => after = Some(sku),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "f", "g"]);
    }

    #[test]
    fn changes_never_lower_a_version_and_keep_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        let k = ItemKey::new("s1", "a").unwrap();
        let v2 = change(2, KeyState::Live(item("a", 2, 2)), "a");
        let v1 = change(1, KeyState::Live(item("a", 1, 1)), "a");
        replica
            .apply_changes(&[v2.clone(), v1.clone()], 2, None)
            .unwrap();
        replica.apply_changes(&[v1], 2, None).unwrap();
        assert_eq!(replica.get(&k).unwrap().unwrap().version, 2);
        let del = change(3, KeyState::Deleted { version: 3 }, "a");
        replica.apply_changes(&[del, v2], 3, None).unwrap();
        assert!(replica.get(&k).unwrap().is_none(), "tombstone must win");
        assert_eq!(replica.meta().digest(), Digest::default());
        assert_eq!(replica.meta().cursor, Some(3));
    }

    #[test]
    fn bootstrap_sweeps_keys_the_snapshot_did_not_mention() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        // Into an empty replica: nothing to sweep at the end.
        assert!(!replica.begin_bootstrap(5).unwrap().sweep);
        replica
            .apply_snapshot_page(vec![item("a", 1, 1), item("b", 1, 1)], None, 1)
            .unwrap();
        assert_eq!(replica.meta().cursor, Some(5));
        // A second bootstrap (say the cursor expired) where b is gone.
        replica.reset_cursor().unwrap();
        assert!(replica.begin_bootstrap(9).unwrap().sweep);
        replica
            .apply_snapshot_page(
                vec![item("a", 3, 2)],
                Some(ItemKey::new("s1", "a").unwrap()),
                2,
            )
            .unwrap();
        replica.apply_snapshot_page(vec![], None, 3).unwrap();
        let items = replica.items().unwrap();
        assert_eq!(items, vec![item("a", 3, 2)]);
        assert_eq!(replica.meta().digest(), digest_of(&items));
        assert_eq!(replica.meta().cursor, Some(9));
    }

    /// An item of `location`.
    fn at(location: &str, sku: &str, quantity: u64, version: u64) -> Item {
        Item {
            location: location.into(),
            ..item(sku, quantity, version)
        }
    }

    /// Every live item and the digest, as a reader sees them: by key, by
    /// listing (`limit` at a time) and all at once.
    fn seen(replica: &Replica, locations: &[&str], keys: &[ItemKey]) -> Vec<Item> {
        let all = replica.items().unwrap();
        assert_eq!(replica.meta().digest(), digest_of(&all));
        let mut listed = Vec::new();
        for location in locations {
            let mut after = None;
            loop {
                let (page, next) = replica.list(location, after.as_deref(), 7).unwrap();
                listed.extend(page);
                match next {
                    Some(sku) => after = Some(sku),
                    None => break,
                }
            }
        }
        assert_eq!(listed, all, "listings and items() agree");
        let got: Vec<Item> = keys
            .iter()
            .filter_map(|k| replica.get(k).unwrap())
            .collect();
        assert_eq!(got, all, "reads by key and items() agree");
        all
    }

    #[test]
    fn a_bootstrap_into_an_empty_replica_keeps_chunks_under_later_states() {
        let dir = tempfile::tempdir().unwrap();
        let skus: Vec<String> = (0..70).map(|i| format!("k{i:03}")).collect();
        let mut expected: Vec<Item> = skus.iter().map(|s| at("s1", s, 1, 1)).collect();
        expected.extend(["x", "y"].map(|s| at("s2", s, 2, 1)));
        let mut keys: Vec<ItemKey> = expected.iter().map(Item::key).collect();
        {
            let replica = Replica::open(dir.path()).unwrap();
            replica.begin_bootstrap(3).unwrap();
            let (first, rest) = expected.split_at(40);
            let after = first.last().map(Item::key);
            replica
                .apply_snapshot_page(first.to_vec(), after, 1)
                .unwrap();
            replica.apply_snapshot_page(rest.to_vec(), None, 1).unwrap();
            // 40 items in chunks of 32 and 8, then 30 and 2 (a chunk
            // holds one location).
            assert_eq!(replica.tree.scan_prefix(b"c").count(), 4);
            assert_eq!(replica.tree.scan_prefix(b"i").count(), 0);
            assert_eq!(seen(&replica, &["s1", "s2"], &keys), expected);
            // Past the last chunk of s1 comes s2's, which has a "y".
            assert_eq!(
                replica.get(&ItemKey::new("s1", "y").unwrap()).unwrap(),
                None
            );

            // Later states are records of their own, over the chunks': an
            // update, a delete, a new key between chunked ones, and an
            // older version that changes nothing.
            let changes = [
                change(4, KeyState::Live(at("s1", "k005", 9, 2)), "k005"),
                change(5, KeyState::Deleted { version: 2 }, "k033"),
                change(6, KeyState::Live(at("s1", "k0335", 1, 1)), "k0335"),
                change(7, KeyState::Live(at("s1", "k040", 0, 1)), "k040"),
            ];
            replica.apply_changes(&changes, 7, None).unwrap();
            replica.flush().unwrap();
            expected[5] = at("s1", "k005", 9, 2);
            expected.remove(33);
            expected.insert(33, at("s1", "k0335", 1, 1));
            keys.push(ItemKey::new("s1", "k0335").unwrap());
            keys.sort();
            assert_eq!(seen(&replica, &["s1", "s2"], &keys), expected);
            replica.close().unwrap();
        }
        let replica = reopen(dir.path());
        assert_eq!(seen(&replica, &["s1", "s2"], &keys), expected);

        // A bootstrap again (the cursor expired): k000 is gone at the
        // coordinator, k001 changed, k005 went back to version 1 (a restored
        // backup). Its chunks count over the records and chunks of the
        // epoch before, which go when it completes.
        replica.reset_cursor().unwrap();
        assert!(replica.begin_bootstrap(9).unwrap().sweep);
        let mut snapshot = expected[1..].to_vec();
        snapshot[0] = at("s1", "k001", 4, 3);
        snapshot[4] = at("s1", "k005", 1, 1);
        let (first, rest) = snapshot.split_at(50);
        let after = first.last().map(Item::key);
        replica
            .apply_snapshot_page(first.to_vec(), after, 2)
            .unwrap();
        assert_eq!(chunks::epochs(&replica.tree).unwrap(), vec![2, 1]);
        assert_eq!(replica.get(&keys[1]).unwrap(), Some(snapshot[0].clone()));
        assert_eq!(replica.get(&keys[5]).unwrap(), Some(snapshot[4].clone()));
        assert_eq!(
            replica.get(&keys[0]).unwrap(),
            Some(expected[0].clone()),
            "until the sweep"
        );
        replica.apply_snapshot_page(rest.to_vec(), None, 2).unwrap();
        assert_eq!(chunks::epochs(&replica.tree).unwrap(), vec![2]);
        assert_eq!(replica.epochs(), vec![2]);
        assert_eq!(replica.tree.scan_prefix(b"i").count(), 0, "all older");
        assert_eq!(seen(&replica, &["s1", "s2"], &keys), snapshot);
        assert_eq!(replica.meta().cursor, Some(9));
    }

    #[test]
    fn a_page_out_of_order_is_written_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        replica.begin_bootstrap(1).unwrap();
        let page = vec![item("b", 1, 1), item("a", 2, 1)];
        replica.apply_snapshot_page(page, None, 1).unwrap();
        assert_eq!(replica.tree.scan_prefix(b"c").count(), 0);
        let keys = [
            ItemKey::new("s1", "a").unwrap(),
            ItemKey::new("s1", "b").unwrap(),
        ];
        assert_eq!(
            seen(&replica, &["s1"], &keys),
            vec![item("a", 2, 1), item("b", 1, 1)]
        );
    }

    #[test]
    fn a_bootstrap_into_an_empty_replica_resumed_after_a_crash_counts_every_item_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = |sku: &str| Some(ItemKey::new("s1", sku).unwrap());
        {
            let replica = Replica::open(dir.path()).unwrap();
            assert!(!replica.begin_bootstrap(7).unwrap().sweep);
            replica
                .apply_snapshot_page(vec![item("a", 1, 1), item("b", 2, 1)], key("b"), 1)
                .unwrap();
            // Dropped without `close`, as in a crash.
        }
        let replica = reopen(dir.path());
        let bootstrap = replica.begin_bootstrap(9).unwrap();
        assert_eq!(
            (bootstrap.start_head, bootstrap.sweep),
            (7, false),
            "resumed"
        );
        replica
            .apply_snapshot_page(vec![item("c", 3, 1)], key("c"), 2)
            .unwrap();
        replica
            .apply_snapshot_page(vec![item("d", 4, 2)], None, 3)
            .unwrap();
        let items = replica.items().unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(replica.meta().digest(), digest_of(&items));
        assert_eq!(replica.meta().cursor, Some(7));
    }

    #[test]
    fn a_new_bootstrap_replaces_versions_the_coordinator_no_longer_has() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        replica.begin_bootstrap(1).unwrap();
        replica
            .apply_snapshot_page(vec![item("a", 9, 7)], None, 1)
            .unwrap();
        // The coordinator was restored from a backup where `a` is at version 3.
        replica.reset_cursor().unwrap();
        replica.begin_bootstrap(2).unwrap();
        replica
            .apply_snapshot_page(vec![item("a", 1, 3)], None, 2)
            .unwrap();
        assert_eq!(replica.items().unwrap(), vec![item("a", 1, 3)]);
        assert_eq!(replica.meta().digest(), digest_of(&[item("a", 1, 3)]));
    }

    #[test]
    fn after_a_stop_without_close_local_reads_wait_for_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path()).unwrap();
            assert!(replica.caught_up(), "a new replica has nothing to lose");
            replica.begin_bootstrap(1).unwrap();
            replica
                .apply_snapshot_page(vec![item("a", 1, 1)], None, 1)
                .unwrap();
            // Dropped without `close`, as in a crash.
        }
        let replica = reopen(dir.path());
        assert!(!replica.caught_up());
        replica.mark_caught_up();
        assert!(replica.caught_up());
        replica.close().unwrap();
        drop(replica);
        let replica = reopen(dir.path());
        assert!(replica.caught_up(), "after a clean close");
        drop(replica);
        assert!(!reopen(dir.path()).caught_up(), "the clean mark holds once");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path()).unwrap();
            replica.begin_bootstrap(4).unwrap();
            replica
                .apply_snapshot_page(
                    vec![item("a", 1, 1)],
                    Some(ItemKey::new("s1", "a").unwrap()),
                    1,
                )
                .unwrap();
            replica.close().unwrap();
        }
        let replica = reopen(dir.path());
        let meta = replica.meta();
        assert_eq!(meta.cursor, None);
        assert_eq!(meta.bootstrap.unwrap().after.unwrap().sku, "a");
        assert_eq!(replica.items().unwrap().len(), 1);
        assert_eq!(replica.list("s1", None, 10).unwrap().0.len(), 1);
        assert!(replica.list("s1", Some("a"), 10).unwrap().0.is_empty());
    }

    /// Opens `dir` (again, once sled lets go of it) keeping pages of
    /// changes in memory until `keys` keys wait, however long.
    fn reopen_deferring(dir: &Path, keys: usize) -> Replica {
        let after = Duration::from_secs(3600);
        reopen_with(dir, Flush { after, keys })
    }

    fn live(seq: u64, sku: &str, version: u64) -> Change {
        change(seq, KeyState::Live(item(sku, version, version)), sku)
    }

    #[test]
    fn a_page_of_changes_is_read_at_once_and_written_with_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let replica = reopen_deferring(dir.path(), 3);
        let a = ItemKey::new("s1", "a").unwrap();
        replica.apply_changes(&[live(1, "a", 1)], 1, None).unwrap();
        replica.apply_changes(&[live(2, "a", 2)], 2, None).unwrap();
        // Read, counted and passed at once...
        assert_eq!(replica.get(&a).unwrap(), Some(item("a", 2, 2)));
        assert_eq!(replica.list("s1", None, 10).unwrap().0, [item("a", 2, 2)]);
        assert_eq!(replica.meta().cursor, Some(2));
        assert_eq!(replica.meta().digest(), digest_of(&[item("a", 2, 2)]));
        assert_eq!(replica.remembered(), 0, "a synced state is not remembered");
        // ...and not written: a crash finds the replica as it was.
        drop(replica);
        let replica = reopen_deferring(dir.path(), 3);
        assert_eq!(
            (replica.meta().cursor, replica.get(&a).unwrap()),
            (None, None)
        );
        // Pulled again: the third key waiting writes all of them.
        replica.apply_changes(&[live(1, "a", 1)], 1, None).unwrap();
        replica.apply_changes(&[live(2, "a", 2)], 2, None).unwrap();
        replica.apply_changes(&[live(3, "b", 1)], 3, None).unwrap();
        replica.apply_changes(&[live(4, "c", 1)], 4, None).unwrap();
        drop(replica);
        let replica = reopen_deferring(dir.path(), 3);
        let written = [item("a", 2, 2), item("b", 1, 1), item("c", 1, 1)];
        assert_eq!(replica.meta().cursor, Some(4));
        assert_eq!(replica.meta().digest(), digest_of(&written));
        assert_eq!(replica.items().unwrap(), written);
        // A deletion in memory hides the written item; reading every item
        // writes what waits.
        let gone = change(5, KeyState::Deleted { version: 2 }, "b");
        replica.apply_changes(&[gone], 5, None).unwrap();
        let b = ItemKey::new("s1", "b").unwrap();
        assert_eq!(replica.get(&b).unwrap(), None);
        assert_eq!(replica.list("s1", None, 10).unwrap().0.len(), 2);
        assert_eq!(replica.items().unwrap().len(), 2);
        drop(replica);
        assert_eq!(reopen_deferring(dir.path(), 3).meta().cursor, Some(5));
    }

    #[test]
    fn a_page_of_changes_waits_no_longer_than_flush_after() {
        let dir = tempfile::tempdir().unwrap();
        let flush = Flush {
            after: Duration::ZERO,
            keys: usize::MAX,
        };
        let replica = Replica::open_with(dir.path(), flush).unwrap();
        replica.apply_changes(&[live(1, "a", 1)], 1, None).unwrap();
        drop(replica);
        assert_eq!(reopen(dir.path()).meta().cursor, Some(1));
    }

    #[test]
    fn a_bootstrap_counts_records_waiting_in_memory_as_held() {
        let dir = tempfile::tempdir().unwrap();
        let replica = reopen_deferring(dir.path(), 100);
        replica.begin_bootstrap(0).unwrap();
        replica.apply_snapshot_page(Vec::new(), None, 0).unwrap();
        replica.apply_changes(&[live(1, "a", 1)], 1, None).unwrap();
        // A new bootstrap whose snapshot no longer has `a` sweeps it,
        // though it was never written before the bootstrap began.
        assert!(replica.begin_bootstrap(1).unwrap().sweep);
        replica.apply_snapshot_page(Vec::new(), None, 0).unwrap();
        assert_eq!(replica.items().unwrap(), []);
        assert_eq!(replica.meta().digest(), Digest::default());
    }
}
