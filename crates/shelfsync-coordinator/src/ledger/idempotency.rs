//! Idempotency records of the sled ledger, stored so that a write adds no
//! sled key of its own.
//!
//! A new sled key costs about 10 µs (sled grows and copies a leaf for it),
//! several times an update of an existing key, and almost every write
//! records an idempotency key never seen before. So records are kept like a
//! small log-structured table:
//!
//! - **Recent records live in memory only.** [`IdempotencyStore::add`] puts
//!   a committed batch's records into an in-memory table. They are durable
//!   in the coordinator's write-ahead log, which keeps every group until
//!   [`IdempotencyStore::covered`] (the position through which every record
//!   is in a run) has passed it; recovery replays the log from there.
//! - **Runs.** Once the table holds [`SEAL_RECORDS`] records, or its oldest
//!   is [`SEAL_AFTER`] old, it is *sealed*: sorted by bucket and by a
//!   fingerprint (a fixed 64-bit hash of store and key) and written to sled
//!   as one run per bucket, in chunks of [`CHUNK`] records, a piece per
//!   [`IdempotencyStore::step`] (the pipeline steps every 50 ms). A piece
//!   is twice the records added since the step before, and at least
//!   [`PIECE_RECORDS`]: the writing keeps pace with the writes, twice
//!   over, in pieces that stay small and steady at any rate. A run's
//!   filter (a Bloom filter over fingerprints) is written last and marks it
//!   complete; chunks of an incomplete run are removed at open. A written
//!   table is then freed a piece per step as well ([`Retired`]): dropped
//!   whole, its 65,536 records and their plan (some half a million small
//!   allocations) took one step tens of milliseconds.
//! - **Merges.** Once a bucket has [`MERGE_FANIN`] runs of one size (the
//!   length of their filters), a step with no sealed table to write merges
//!   the oldest of them into one run, a piece per step: their chunks are
//!   read in fingerprint order and their records copied, as the bytes they
//!   are stored as, into the new run's chunks (a merge decodes only each
//!   record's fingerprint). The new run's filter is
//!   written with the sources' filters removed in one batch, so a crash
//!   leaves either the sources or the merged run complete; then the
//!   sources' chunks go. A lookup that chose runs a merge retired while it
//!   read them looks again. Merging keeps the filters a lookup asks few: a
//!   24 h bucket of a chain writing a thousand times a second holds some
//!   1,300 sealed runs, 40 to 70 once merged.
//! - **Buckets.** Records still go into the time buckets of the ledger's
//!   module docs, and expiry still removes whole buckets. A bucket created
//!   by this process has a Bloom filter of every key recorded in it, so a
//!   key never seen (nearly every write's) is answered from memory.
//! - **Layout 3** stored one sled key per record under the bucket
//!   (`d<end>` store `\0` key); such records are still read, one key each,
//!   until their bucket expires.
//!
//! | key after `d<end>` (8 bytes BE) | value |
//! |---|---|
//! | `\x02` run (8 BE) first fingerprint (8 BE) chunk (4 BE) | up to [`CHUNK`] records, by fingerprint |
//! | `\x03` run (8 BE) | the run's filter (layout 4; moved at open) |
//! | store `\0` key | one record (layout 3; read, never written) |
//!
//! A run's filter lives in a tree of its own, [`FILTER_TREE`], in pieces
//! of [`FILTER_PIECE_WORDS`] words under end (8 BE), run (8 BE) and piece
//! (4 BE), all of them written (and removed) in one batch. Whole filters
//! of 128 KiB and more, among the chunks and next to the items, made sled
//! rewrite every node near them as a file of its own at each write to it.
//!
//! Fingerprints only order and filter: every match compares the store and
//! the key themselves.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bloom::Bloom;
use super::sled::{decode, encode, printable, storage};
use super::{IdempotencyRecord, LedgerError};
use crate::FastMap;

/// Records in memory that make the table sealed and written as runs.
pub const SEAL_RECORDS: usize = 64 * 1024;
/// Age of the oldest record in memory that seals the table anyway, so that
/// a quiet coordinator's log does not keep growing behind it.
pub const SEAL_AFTER: Duration = Duration::from_secs(30);
/// Fewest records a step writes while a sealed table or a merge waits.
///
/// A step writes [`PIECE_INTAKE_FACTOR`] times the records added since the
/// step before when that is more. Writing a fixed 4,096 records a step
/// made a burst of work every 50 ms whatever the rate, and those bursts set
/// the tail of the write latency at moderate load (docs/performance.md).
pub const PIECE_RECORDS: usize = 512;
/// How much faster than records come in a step writes them: at twice the
/// intake, a sealed table is written before the next one fills.
pub const PIECE_INTAKE_FACTOR: usize = 2;
/// Pieces a merge writes per step. Merges take the steps that find no
/// sealed table waiting, about half of them: at two pieces a step,
/// [`MERGE_FANIN`] runs are merged in about half the time the next
/// [`MERGE_FANIN`] take to gather (at one, merging would only just keep up
/// with sealing).
pub const MERGE_PIECES: usize = 2;
/// Most records in one chunk of a run.
pub const CHUNK: usize = 32;
/// Most bytes of one chunk of a run (fewer records when they are large).
/// sled keeps up to 16 keys in a leaf (17 before it splits) and writes a
/// node past 128 KiB as a file of its own, created anew whenever the node
/// is rewritten: 32 records of some 350 bytes (an accepted write's record
/// holds the item) made every leaf of a run such a file
/// (docs/performance.md).
pub const CHUNK_BYTES: usize = 6 * 1024;
/// Filter bits per record in a run (about 1 % false positives with
/// [`RUN_PROBES`] probes).
const RUN_BITS_PER_RECORD: usize = 10;
/// Bit probes per fingerprint in a run's filter.
const RUN_PROBES: u64 = 7;
/// Runs of one size that a bucket gathers before they are merged into one.
/// Each merge rewrites its records, so a wide one rewrites each record
/// fewer times: with 32, a record is written once in a sealed run and once
/// more in a merged one (of about 2M records, which are not merged again
/// under [`MAX_MERGED_RECORDS`]). With 8 a record was rewritten twice, and
/// merges began after half a million records: in a run at half of the peak
/// that followed one at the peak, they took 14 % of the coordinator's CPU
/// (docs/performance.md).
pub const MERGE_FANIN: usize = 32;
/// Runs are not merged into one of more records than this (as their
/// filters' sizes bound them): a merge holds the new run's fingerprints in
/// memory, 8 bytes a record, and larger runs gain little.
pub const MAX_MERGED_RECORDS: usize = 16 * 1024 * 1024;

const CHUNK_TAG: u8 = 2;
/// The tag of a run's filter in the ledger's tree (layout 4): read at open
/// and moved to [`FILTER_TREE`].
const FILTER_TAG: u8 = 3;
/// The sled tree that holds the runs' filters.
pub const FILTER_TREE: &str = "idempotency-filters";
/// Words of a filter stored under one key (4 KiB, some 4.6 KiB encoded).
/// sled writes a node past 128 KiB as a file of its own, and rewrites a
/// whole node when it consolidates one; a filter of a sealed run alone is
/// 128 KiB, so whole filters made every node near them such a file, at
/// each write to any of its keys (docs/performance.md). Sixteen pieces,
/// sled's most keys in a leaf, stay far below that.
const FILTER_PIECE_WORDS: usize = 512;

/// One record of a run chunk, as read (and as a merge writes it again).
#[derive(Debug, Serialize, Deserialize)]
struct RunEntry {
    fp: u64,
    store: String,
    key: String,
    record: IdempotencyRecord,
}

/// One record of a run chunk, as written (the same fields, borrowed).
#[derive(Serialize)]
struct RunEntryRef<'a> {
    fp: u64,
    store: &'a str,
    key: &'a str,
    record: &'a IdempotencyRecord,
}

/// One record of a run chunk as the bytes it is stored as: what a merge
/// reads and copies, so that it neither decodes nor encodes a record.
#[derive(Debug)]
struct RawEntry {
    fp: u64,
    /// The chunk the record was read from (shared, not copied).
    chunk: sled::IVec,
    /// Where in `chunk` the record's encoding lies.
    span: Range<usize>,
}

/// A run entry's fingerprint; its other fields are skipped unread.
#[derive(Deserialize)]
struct EntryFp {
    fp: u64,
}

/// A run's Bloom filter over fingerprints; its size is a power of two.
#[derive(Debug, Serialize, Deserialize)]
struct RunFilter {
    words: Vec<u64>,
}

impl RunFilter {
    fn sized_for(records: usize) -> Self {
        let bits = (records.max(1) * RUN_BITS_PER_RECORD)
            .next_power_of_two()
            .max(64);
        RunFilter {
            words: vec![0; bits / 64],
        }
    }

    fn probes(&self, fp: u64) -> impl Iterator<Item = (usize, u64)> + use<> {
        let mask = (self.words.len() as u64 * 64).wrapping_sub(1);
        let (h1, h2) = (fp & 0xffff_ffff, (fp >> 32) | 1);
        (0..RUN_PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, fp: u64) {
        for (word, bit) in self.probes(fp) {
            if let Some(w) = self.words.get_mut(word) {
                *w |= bit;
            }
        }
    }

    fn may_contain(&self, fp: u64) -> bool {
        // A filter read from disk with no words (damaged) answers "maybe".
        self.words.is_empty()
            || self
                .probes(fp)
                .all(|(word, bit)| self.words.get(word).is_none_or(|w| w & bit != 0))
    }
}

/// The key of an idempotency record: its store and its idempotency key.
type RecordKey = (String, String);

/// A record of a sealed table in run order: its bucket's end, its
/// fingerprint and its key (which finds the record in the table without a
/// copy).
type Planned = (u64, u64, RecordKey);

/// Records not in a run yet, by (store, key), with their bucket end.
#[derive(Debug, Default)]
struct Table {
    /// Values boxed: a full table's slots stay a few MiB.
    records: FastMap<RecordKey, Box<(u64, IdempotencyRecord)>>,
    /// The lowest log position of a batch whose records are here.
    from: Option<u64>,
    /// When the first record came in.
    since: Option<Instant>,
}

impl Table {
    fn with_capacity(records: usize) -> Self {
        Table {
            records: FastMap::with_capacity_and_hasher(records, Default::default()),
            ..Table::default()
        }
    }

    /// The record of `(store, key)`. Copies both to look up: only lookups
    /// that a filter let through come here.
    fn get(&self, store: &str, key: &str) -> Option<&(u64, IdempotencyRecord)> {
        self.records
            .get(&(store.to_owned(), key.to_owned()))
            .map(|value| &**value)
    }
}

/// A table being written as runs, all with the same run number.
#[derive(Debug)]
struct Sealed {
    run: u64,
    table: Table,
}

/// What memory holds of one bucket.
#[derive(Debug, Default)]
struct Bucket {
    /// Filter of every key recorded in this bucket by this process; `None`
    /// for a bucket found on disk at open.
    filter: Option<Arc<Bloom>>,
    /// The bucket's complete runs, oldest first.
    runs: Vec<(u64, Arc<RunFilter>)>,
    /// Whether the bucket holds layout-3 records (one key each).
    legacy: bool,
    /// Being expired: lookups skip it.
    expiring: bool,
}

#[derive(Debug, Default)]
struct State {
    buckets: BTreeMap<u64, Bucket>,
    recent: Table,
    sealed: Option<Arc<Sealed>>,
    next_run: u64,
    /// The highest log position added so far.
    last_position: u64,
    /// Records of buckets ending at or before this have expired: they no
    /// longer answer and are not written.
    expired_before: u64,
    /// Counts merges that replaced runs: a lookup that read runs a merge
    /// removed meanwhile looks again.
    generation: u64,
    /// Records added since the last step: what sizes its piece.
    intake: usize,
}

/// What the writer works on: the sealed table first; a merge of runs when
/// no table waits.
#[derive(Debug, Default)]
struct Writer {
    pending: Option<Pending>,
    merge: Option<Merge>,
    /// Written tables still to free, oldest first.
    retired: VecDeque<Retired>,
}

/// A sealed table whose runs are complete, with its plan: freed a piece
/// per step ([`free_piece`]) rather than at once, so that
/// freeing it is no burst of work either. No lookup finds it any more.
#[derive(Debug)]
struct Retired {
    sealed: Arc<Sealed>,
    order: Vec<Planned>,
}

/// A merge of [`MERGE_FANIN`] runs of one bucket, all of one size, into a
/// new run: their records read in fingerprint order and written again as
/// chunks, a piece per step. The new run's filter, written with the
/// sources' filters removed in one batch, completes it and retires them.
#[derive(Debug)]
struct Merge {
    end: u64,
    run: u64,
    sources: Vec<Source>,
    /// Fingerprints written so far, for the new run's filter.
    fps: Vec<u64>,
}

/// A run being merged: where its next chunk is read from, and the records
/// read and not yet written.
#[derive(Debug)]
struct Source {
    run: u64,
    /// The key at or after which its next chunk lies; `None` once all is read.
    next: Option<Vec<u8>>,
    buffered: VecDeque<RawEntry>,
}

/// The writer's progress through the sealed table: its records in run
/// order, each bucket's part of them with the part's filter, and how many
/// are written.
#[derive(Debug)]
struct Pending {
    sealed: Arc<Sealed>,
    order: Vec<Planned>,
    parts: Vec<(u64, Range<usize>, RunFilter)>,
    written: usize,
}

/// The live buckets' filters, newest first (`None`: a bucket found on
/// disk, which every lookup searches).
type Filters = Arc<Vec<Option<Arc<Bloom>>>>;

/// The idempotency records of one sled tree.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    tree: sled::Tree,
    /// The runs' filters, in pieces ([`FILTER_TREE`]).
    filter_tree: sled::Tree,
    /// Width of new buckets, milliseconds.
    bucket_ms: u64,
    /// [`SEAL_RECORDS`] and [`PIECE_RECORDS`] (smaller in tests).
    seal_records: usize,
    piece_records: usize,
    state: Arc<Mutex<State>>,
    /// A copy of the buckets' filters, replaced whenever a bucket comes or
    /// goes, so that a lookup of a key never recorded (nearly every
    /// write's) and a commit's filter updates never wait for `state`.
    filters: Arc<std::sync::RwLock<Filters>>,
    /// Held while runs are written or merged or buckets removed, one at a
    /// time.
    writer: Arc<Mutex<Writer>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IdempotencyStore {
    /// Finds every bucket in `tree` with its complete runs (filters read
    /// into memory) and whether it has layout-3 records; removes the chunks
    /// of runs a crash left incomplete.
    /// `position` is where the log's replay starts after ([`Ledger::position`]
    /// of the ledger): everything up to it is covered, and the next batch
    /// added holds the groups after it.
    ///
    /// [`Ledger::position`]: super::Ledger::position
    pub fn open(
        tree: sled::Tree,
        filter_tree: sled::Tree,
        bucket_ms: u64,
        position: u64,
    ) -> Result<Self, LedgerError> {
        let mut state = State {
            next_run: 1,
            last_position: position,
            ..State::default()
        };
        let mut start = b"d".to_vec();
        while let Some(entry) = tree.range(start..).next() {
            let (k, _) = entry.map_err(storage)?;
            if k.first() != Some(&b'd') {
                break;
            }
            let end = number_at(&k, 1)?;
            move_filters(&tree, &filter_tree, end)?;
            let mut bucket = Bucket::default();
            for (run, filter) in read_filters(&filter_tree, end)? {
                state.next_run = state.next_run.max(run.saturating_add(1));
                bucket.runs.push((run, Arc::new(filter)));
            }
            // The runs with chunks, one seek each.
            let chunks = tagged(end, CHUNK_TAG);
            let mut from = chunks.to_vec();
            let mut incomplete = Vec::new();
            while let Some(entry) = tree.range(from..).next() {
                let (k, _) = entry.map_err(storage)?;
                if !k.starts_with(&chunks) {
                    break;
                }
                let run = number_at(&k, 10)?;
                state.next_run = state.next_run.max(run.saturating_add(1));
                if !bucket.runs.iter().any(|(r, _)| *r == run) {
                    incomplete.push(run);
                }
                from = run_prefix(end, run.saturating_add(1)).to_vec();
            }
            for run in incomplete {
                tracing::info!(
                    bucket = end,
                    run,
                    "removing the chunks of an idempotency run without a filter (cut short by a crash, or merged into another)"
                );
                remove_prefix(&tree, run_prefix(end, run), usize::MAX)?;
            }
            // Layout-3 keys sort after the tags (a store id starts with a
            // letter or digit).
            bucket.legacy = tree
                .range(tagged(end, FILTER_TAG + 1).to_vec()..)
                .next()
                .transpose()
                .map_err(storage)?
                .is_some_and(|(k, _)| k.starts_with(&bucket_prefix(end)));
            state.buckets.insert(end, bucket);
            match end.checked_add(1) {
                Some(next) => start = bucket_prefix(next).to_vec(),
                None => break,
            }
        }
        remove_orphan_filters(&filter_tree, &state)?;
        state.recent = Table::with_capacity(SEAL_RECORDS);
        let store = IdempotencyStore {
            tree,
            filter_tree,
            bucket_ms: bucket_ms.max(1),
            seal_records: SEAL_RECORDS,
            piece_records: PIECE_RECORDS,
            state: Arc::new(Mutex::new(state)),
            filters: Arc::default(),
            writer: Arc::default(),
        };
        store.publish_filters(&lock(&store.state));
        Ok(store)
    }

    /// Replaces the copy of the buckets' filters; called under the state
    /// lock after buckets change.
    fn publish_filters(&self, state: &State) {
        let filters: Vec<Option<Arc<Bloom>>> = state
            .buckets
            .values()
            .rev()
            .filter(|b| !b.expiring)
            .map(|b| b.filter.clone())
            .collect();
        let mut published = self
            .filters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *published = Arc::new(filters);
    }

    /// Whether `(store, key)` may have a record: false when every live
    /// bucket's filter says it has never been recorded.
    fn may_contain(&self, store: &str, key: &str) -> bool {
        let filters = self
            .filters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        filters
            .iter()
            .any(|f| f.as_ref().is_none_or(|f| f.may_contain(store, key)))
    }

    /// The end of the bucket a record decided at `at_ms` goes into.
    fn bucket_end(&self, at_ms: u64) -> u64 {
        (at_ms / self.bucket_ms)
            .saturating_add(1)
            .saturating_mul(self.bucket_ms)
    }

    /// Adds the records of the batch that ends at log position `position`
    /// (0: not from the log) to memory. Batches come in log order without
    /// a gap, so a batch holds the groups after the previous one's position.
    pub fn add(&self, records: Vec<(String, String, IdempotencyRecord)>, position: u64) {
        // Filtered and boxed before the lock: the sequencer looks up under
        // it.
        let mut filters: Vec<(u64, Option<Arc<Bloom>>)> = Vec::new();
        let mut entries = Vec::with_capacity(records.len());
        for (store, key, record) in records {
            let end = self.bucket_end(record.at_ms);
            let filter = match filters.iter().find(|(e, _)| *e == end) {
                Some((_, filter)) => filter.clone(),
                None => {
                    let filter = self.filter_of(end);
                    filters.push((end, filter.clone()));
                    filter
                }
            };
            if let Some(filter) = filter {
                filter.insert(&store, &key);
            }
            entries.push(((store, key), Box::new((end, record))));
        }
        let mut state = lock(&self.state);
        let state = &mut *state;
        if !entries.is_empty() {
            state.intake = state.intake.saturating_add(entries.len());
            state.recent.records.extend(entries);
            if position > 0 {
                // A batch may hold several logged groups (the applier
                // merges what queued up): its records reach back to the
                // group after the last one added, not just to `position`.
                let first = state.last_position.saturating_add(1).min(position);
                let from = state.recent.from.get_or_insert(first);
                *from = (*from).min(first);
            }
            state.recent.since.get_or_insert_with(Instant::now);
        }
        state.last_position = state.last_position.max(position);
    }

    /// The filter of bucket `end`, made (with the bucket) if it is new.
    fn filter_of(&self, end: u64) -> Option<Arc<Bloom>> {
        let mut state = lock(&self.state);
        if let Some(bucket) = state.buckets.get(&end) {
            return bucket.filter.clone();
        }
        let filter = Arc::new(Bloom::default());
        state.buckets.insert(
            end,
            Bucket {
                filter: Some(filter.clone()),
                ..Bucket::default()
            },
        );
        self.publish_filters(&state);
        Some(filter)
    }

    /// The log position through which every added record is in a complete
    /// run (so durable after the next sled flush).
    pub fn covered(&self) -> u64 {
        let state = lock(&self.state);
        let sealed = state.sealed.as_ref().and_then(|s| s.table.from);
        match [sealed, state.recent.from].into_iter().flatten().min() {
            Some(from) => from - 1,
            None => state.last_position,
        }
    }

    /// The recorded outcome of `(store, key)`, newest first.
    pub fn lookup(&self, store: &str, key: &str) -> Result<Option<IdempotencyRecord>, LedgerError> {
        if !self.may_contain(store, key) {
            return Ok(None);
        }
        loop {
            let (found, generation) = self.lookup_once(store, key)?;
            if found.is_some() || lock(&self.state).generation == generation {
                return Ok(found);
            }
            // A merge replaced runs this lookup was reading: look again.
        }
    }

    /// One lookup, with the merge generation its runs were chosen at.
    fn lookup_once(
        &self,
        store: &str,
        key: &str,
    ) -> Result<(Option<IdempotencyRecord>, u64), LedgerError> {
        let fp = fingerprint(store, key);
        // What each bucket needs from disk, newest first; memory answers
        // the rest under the lock.
        let mut probes: Vec<(u64, Vec<u64>, bool)> = Vec::new();
        let generation;
        {
            let state = lock(&self.state);
            generation = state.generation;
            // The bucket filters know every key this process recorded,
            // those in memory included.
            let candidates: Vec<(u64, &Bucket)> = state
                .buckets
                .iter()
                .rev()
                .filter(|(_, b)| {
                    !b.expiring && b.filter.as_ref().is_none_or(|f| f.may_contain(store, key))
                })
                .map(|(end, b)| (*end, b))
                .collect();
            if candidates.is_empty() {
                return Ok((None, generation));
            }
            let sealed = state.sealed.as_ref().map(|s| &s.table);
            for table in std::iter::once(&state.recent).chain(sealed) {
                if let Some((end, record)) = table.get(store, key)
                    && *end > state.expired_before
                {
                    return Ok((Some(record.clone()), generation));
                }
            }
            for (end, bucket) in candidates {
                let runs: Vec<u64> = bucket
                    .runs
                    .iter()
                    .rev()
                    .filter(|(_, filter)| filter.may_contain(fp))
                    .map(|(run, _)| *run)
                    .collect();
                if !runs.is_empty() || bucket.legacy {
                    probes.push((end, runs, bucket.legacy));
                }
            }
        }
        for (end, runs, legacy) in probes {
            for run in runs {
                if let Some(record) = self.find_in_run(end, run, fp, store, key)? {
                    return Ok((Some(record), generation));
                }
            }
            if legacy {
                let k = legacy_key(end, store, key);
                if let Some(v) = self.tree.get(&k).map_err(storage)? {
                    return Ok((Some(decode(&k, &v)?), generation));
                }
            }
        }
        Ok((None, generation))
    }

    /// Looks for `(store, key)` in the chunks of `run` where `fp` falls:
    /// the last chunk starting at or before it, and earlier ones while
    /// they start at `fp` itself (equal fingerprints may span chunks).
    fn find_in_run(
        &self,
        end: u64,
        run: u64,
        fp: u64,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, LedgerError> {
        let chunks = self
            .tree
            .range(chunk_key(end, run, 0, 0)..=chunk_key(end, run, fp, u32::MAX));
        for entry in chunks.rev() {
            let (k, v) = entry.map_err(storage)?;
            let chunk: Vec<RunEntry> = decode(&k, &v)?;
            let from = chunk.partition_point(|e| e.fp < fp);
            for e in chunk.iter().skip(from).take_while(|e| e.fp == fp) {
                if e.store == store && e.key == key {
                    return Ok(Some(e.record.clone()));
                }
            }
            if chunk.first().is_none_or(|e| e.fp < fp) {
                break;
            }
        }
        Ok(None)
    }

    /// Moves records from memory to runs: seals the table when it is due
    /// (or has anything, with `all`), then writes one piece of the sealed
    /// table (or all of it, with `all`). The sled batches it applies are
    /// durable after the next sled flush.
    pub fn step(&self, all: bool) -> Result<(), LedgerError> {
        let mut writer = lock(&self.writer);
        let intake = std::mem::take(&mut lock(&self.state).intake);
        let piece = self
            .piece_records
            .max(intake.saturating_mul(PIECE_INTAKE_FACTOR));
        loop {
            if writer.pending.is_none() {
                let Some(sealed) = self.seal(all) else {
                    break;
                };
                writer.pending = Some(plan(sealed));
            }
            let budget = if all { usize::MAX } else { piece };
            if let Some(pending) = writer.pending.as_mut()
                && self.write_piece(pending, budget)?
                && let Some(pending) = writer.pending.take()
            {
                let retired = self.finish(pending)?;
                writer.retired.push_back(retired);
            }
            if !all {
                free_piece(&mut writer.retired, piece);
                return Ok(());
            }
        }
        // No table waits. A flush stops here (a merge only saves lookups
        // work, and one cut short is redone); a step merges some pieces.
        if all {
            writer.retired.clear();
        } else {
            free_piece(&mut writer.retired, piece);
            self.merge_piece(&mut writer, piece.saturating_mul(MERGE_PIECES))?;
        }
        Ok(())
    }

    /// Records of written tables not yet freed (their plans' entries
    /// aside).
    #[cfg(test)]
    fn retired_records(&self) -> usize {
        lock(&self.writer)
            .retired
            .iter()
            .map(|r| r.sealed.table.records.len())
            .sum()
    }

    /// Writes about `piece` records of the merge under way, first picking
    /// one if a bucket has [`MERGE_FANIN`] runs of one size.
    fn merge_piece(&self, writer: &mut Writer, piece: usize) -> Result<(), LedgerError> {
        if writer.merge.is_none() {
            writer.merge = self.plan_merge();
        }
        let Some(merge) = writer.merge.as_mut() else {
            return Ok(());
        };
        if merge.end <= lock(&self.state).expired_before {
            // The bucket expired meanwhile; its keys go with it.
            writer.merge = None;
            return Ok(());
        }
        let stop = merge.fps.len().saturating_add(piece);
        let mut batch = sled::Batch::default();
        let mut chunk: Vec<RawEntry> = Vec::with_capacity(CHUNK);
        let read_all = loop {
            for source in &mut merge.sources {
                self.refill(merge.end, source)?;
            }
            let next = merge
                .sources
                .iter()
                .enumerate()
                .filter_map(|(i, source)| source.buffered.front().map(|e| (e.fp, i)))
                .min();
            let Some((fp, i)) = next else {
                break true;
            };
            // Equal fingerprints stay in one chunk, as in a sealed run.
            let next_len = merge
                .sources
                .get(i)
                .and_then(|s| s.buffered.front())
                .map_or(0, |e| e.span.len());
            let full = chunk.len() >= CHUNK
                || chunk_bytes(&chunk).saturating_add(next_len) > CHUNK_BYTES - CHUNK_ENVELOPE;
            if full && chunk.last().is_some_and(|e| e.fp != fp) {
                put_chunk(&mut batch, merge, &mut chunk)?;
                if merge.fps.len() >= stop {
                    break false;
                }
            }
            if let Some(entry) = merge
                .sources
                .get_mut(i)
                .and_then(|s| s.buffered.pop_front())
            {
                chunk.push(entry);
            }
        };
        if !chunk.is_empty() {
            put_chunk(&mut batch, merge, &mut chunk)?;
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        if read_all && let Some(merge) = writer.merge.take() {
            self.complete_merge(merge)?;
        }
        Ok(())
    }

    /// The oldest [`MERGE_FANIN`] runs of one size (their filters' length)
    /// in the oldest bucket that has as many, with a run number for the
    /// merged one; none of a size whose merge could pass
    /// [`MAX_MERGED_RECORDS`].
    fn plan_merge(&self) -> Option<Merge> {
        let mut state = lock(&self.state);
        let expired_before = state.expired_before;
        let (end, runs) = state
            .buckets
            .iter()
            .filter(|(end, bucket)| **end > expired_before && !bucket.expiring)
            .find_map(|(end, bucket)| {
                let mut by_size: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
                for (run, filter) in &bucket.runs {
                    by_size.entry(filter.words.len()).or_default().push(*run);
                }
                by_size
                    .into_iter()
                    .find(|(words, runs)| mergeable(*words, runs.len()))
                    .map(|(_, runs)| (*end, runs))
            })?;
        let run = state.next_run;
        state.next_run += 1;
        let sources = runs
            .into_iter()
            .take(MERGE_FANIN)
            .map(|run| Source {
                run,
                next: Some(run_prefix(end, run).to_vec()),
                buffered: VecDeque::new(),
            })
            .collect();
        Some(Merge {
            end,
            run,
            sources,
            fps: Vec::new(),
        })
    }

    /// Reads the source's next chunk when it has no record buffered.
    fn refill(&self, end: u64, source: &mut Source) -> Result<(), LedgerError> {
        let prefix = run_prefix(end, source.run);
        while source.buffered.is_empty() {
            let Some(from) = source.next.take() else {
                return Ok(());
            };
            let Some(entry) = self.tree.range(from..).next() else {
                return Ok(());
            };
            let (k, v) = entry.map_err(storage)?;
            if !k.starts_with(&prefix) {
                return Ok(());
            }
            source.buffered = split_chunk(&k, &v)?.into();
            // The key right after this one.
            let mut next = k.to_vec();
            next.push(0);
            source.next = Some(next);
        }
        Ok(())
    }

    /// Completes a merged run: its filter is written and the sources'
    /// filters removed in one batch, so a crash leaves either the sources
    /// or the merged run complete (chunks of runs without a filter are
    /// removed at open). Then the sources' chunks go.
    fn complete_merge(&self, merge: Merge) -> Result<(), LedgerError> {
        let mut filter = RunFilter::sized_for(merge.fps.len());
        for fp in &merge.fps {
            filter.insert(*fp);
        }
        let mut batch = sled::Batch::default();
        put_filter(&mut batch, merge.end, merge.run, &filter)?;
        for source in &merge.sources {
            remove_filter(&self.filter_tree, &mut batch, merge.end, source.run)?;
        }
        self.filter_tree.apply_batch(batch).map_err(storage)?;
        let merged = |run: u64| merge.sources.iter().any(|s| s.run == run);
        {
            let mut state = lock(&self.state);
            state.generation += 1;
            if let Some(bucket) = state.buckets.get_mut(&merge.end) {
                let at = bucket
                    .runs
                    .iter()
                    .position(|(run, _)| merged(*run))
                    .unwrap_or(bucket.runs.len());
                bucket.runs.retain(|(run, _)| !merged(*run));
                let at = at.min(bucket.runs.len());
                bucket.runs.insert(at, (merge.run, Arc::new(filter)));
            }
        }
        for source in &merge.sources {
            remove_prefix(&self.tree, run_prefix(merge.end, source.run), usize::MAX)?;
        }
        tracing::debug!(
            bucket = merge.end,
            run = merge.run,
            records = merge.fps.len(),
            "merged idempotency runs"
        );
        Ok(())
    }

    /// Takes the in-memory table as the sealed one if it is due.
    fn seal(&self, all: bool) -> Option<Arc<Sealed>> {
        let mut state = lock(&self.state);
        let recent = &state.recent;
        let due = if all {
            !recent.records.is_empty()
        } else {
            recent.records.len() >= self.seal_records
                || recent.since.is_some_and(|t| t.elapsed() >= SEAL_AFTER)
        };
        if state.sealed.is_some() || !due {
            return None;
        }
        // Room for a full table, so it never grows (and rehashes) under
        // the lock.
        let table = std::mem::replace(&mut state.recent, Table::with_capacity(self.seal_records));
        let run = state.next_run;
        state.next_run += 1;
        let sealed = Arc::new(Sealed { run, table });
        state.sealed = Some(Arc::clone(&sealed));
        Some(sealed)
    }

    /// Writes whole chunks of `pending` until about `budget` records are
    /// written; true once all are.
    fn write_piece(&self, pending: &mut Pending, budget: usize) -> Result<bool, LedgerError> {
        let expired_before = lock(&self.state).expired_before;
        let stop = pending.written.saturating_add(budget);
        let mut batch = sled::Batch::default();
        let Pending {
            sealed,
            order,
            parts,
            written,
        } = pending;
        // Records per chunk: halved while a chunk encodes past CHUNK_BYTES,
        // doubled again (up to CHUNK) after one that takes under half.
        let mut per_chunk = CHUNK;
        for (end, range, _) in parts.iter() {
            while *written < range.end && *written < stop {
                let start = (*written).max(range.start);
                if *end <= expired_before {
                    *written = chunk_end(order, start, range.end, per_chunk);
                    continue;
                }
                let (cut, encoded) = loop {
                    let cut = chunk_end(order, start, range.end, per_chunk);
                    let chunk: Vec<RunEntryRef> = order[start..cut]
                        .iter()
                        .filter_map(|(_, fp, record_key)| {
                            let (_, record) = &**sealed.table.records.get(record_key)?;
                            Some(RunEntryRef {
                                fp: *fp,
                                store: &record_key.0,
                                key: &record_key.1,
                                record,
                            })
                        })
                        .collect();
                    let encoded = encode(&chunk)?;
                    if encoded.len() <= CHUNK_BYTES || per_chunk == 1 {
                        if encoded.len() * 2 <= CHUNK_BYTES {
                            per_chunk = (per_chunk * 2).min(CHUNK);
                        }
                        break (cut, encoded);
                    }
                    per_chunk /= 2;
                };
                *written = cut;
                let index = u32::try_from(start - range.start).unwrap_or(u32::MAX);
                batch.insert(
                    chunk_key(*end, sealed.run, order[start].1, index).to_vec(),
                    encoded,
                );
            }
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        Ok(*written >= order.len())
    }

    /// Writes the filters of a fully written sealed table, which completes
    /// its runs, then lets them answer in place of the table; returns the
    /// table and its plan, to be freed.
    fn finish(&self, pending: Pending) -> Result<Retired, LedgerError> {
        let expired_before = lock(&self.state).expired_before;
        let run = pending.sealed.run;
        let mut batch = sled::Batch::default();
        let mut runs = Vec::new();
        for (end, _, filter) in pending.parts {
            if end <= expired_before {
                continue;
            }
            put_filter(&mut batch, end, run, &filter)?;
            runs.push((end, Arc::new(filter)));
        }
        self.filter_tree.apply_batch(batch).map_err(storage)?;
        let mut state = lock(&self.state);
        for (end, filter) in runs {
            state
                .buckets
                .entry(end)
                .or_default()
                .runs
                .push((run, filter));
        }
        state.sealed = None;
        self.publish_filters(&state);
        Ok(Retired {
            sealed: pending.sealed,
            order: pending.order,
        })
    }

    /// Seals at `seal` records and writes `piece` per step.
    #[cfg(test)]
    pub fn set_sizes(&mut self, seal: usize, piece: usize) {
        self.seal_records = seal;
        self.piece_records = piece;
    }

    /// The bucket ends that hold records, newest first.
    #[cfg(test)]
    pub fn live_buckets(&self) -> Vec<u64> {
        lock(&self.state).buckets.keys().rev().copied().collect()
    }

    /// Removes up to `limit` records of the buckets that ended at or before
    /// `before_ms`, oldest first (records in memory, then keys on disk);
    /// returns how many went. A bucket is skipped by lookups from its
    /// first removal on, and forgotten once empty.
    pub fn expire(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError> {
        // No run is written meanwhile, so none lands in a removed bucket.
        let _writer = lock(&self.writer);
        let (expired, mut removed) = {
            let mut state = lock(&self.state);
            state.expired_before = state.expired_before.max(before_ms);
            let before = state.recent.records.len();
            state.recent.records.retain(|_, value| value.0 > before_ms);
            let removed = before - state.recent.records.len();
            let expired: Vec<u64> = state
                .buckets
                .iter_mut()
                .take_while(|(end, _)| **end <= before_ms)
                .map(|(end, bucket)| {
                    bucket.expiring = true;
                    *end
                })
                .collect();
            self.publish_filters(&state);
            (expired, removed)
        };
        for end in expired {
            // Filters first: a run without one is removed at open, a
            // filter without its run would only answer "maybe".
            removed += remove_prefix(&self.filter_tree, end.to_be_bytes(), limit - removed)?;
            if removed >= limit {
                break;
            }
            removed += remove_prefix(&self.tree, bucket_prefix(end), limit - removed)?;
            if self.tree.scan_prefix(bucket_prefix(end)).next().is_none() {
                let mut state = lock(&self.state);
                state.buckets.remove(&end);
                self.publish_filters(&state);
            }
            if removed >= limit {
                break;
            }
        }
        Ok(removed)
    }
}

/// Frees about `budget` records of the written tables in `retired`,
/// oldest first: the plan's entries, then the table's records once no
/// lookup still holds the table (one that does lets go within the lookup;
/// the next step goes on). A table is forgotten once both are empty.
fn free_piece(retired: &mut VecDeque<Retired>, budget: usize) {
    let mut left = budget;
    while left > 0 {
        let Some(front) = retired.front_mut() else {
            return;
        };
        let n = left.min(front.order.len());
        front.order.truncate(front.order.len() - n);
        left -= n;
        if left == 0 {
            return;
        }
        let Some(sealed) = Arc::get_mut(&mut front.sealed) else {
            return;
        };
        left -= sealed
            .table
            .records
            .extract_if(|_, _| true)
            .take(left)
            .count();
        if sealed.table.records.is_empty() {
            retired.pop_front();
        }
    }
}

/// Orders a sealed table for writing: by bucket, then fingerprint; each
/// bucket's part gets its filter.
fn plan(sealed: Arc<Sealed>) -> Pending {
    let mut order: Vec<Planned> = sealed
        .table
        .records
        .iter()
        .map(|(record_key, value)| {
            let fp = fingerprint(&record_key.0, &record_key.1);
            (value.0, fp, record_key.clone())
        })
        .collect();
    order.sort_unstable_by_key(|(end, fp, _)| (*end, *fp));
    let mut parts: Vec<(u64, Range<usize>, RunFilter)> = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let end = order[start].0;
        let stop = start + order[start..].partition_point(|e| e.0 == end);
        let mut filter = RunFilter::sized_for(stop - start);
        for (_, fp, _) in &order[start..stop] {
            filter.insert(*fp);
        }
        parts.push((end, start..stop, filter));
        start = stop;
    }
    Pending {
        sealed,
        order,
        parts,
        written: 0,
    }
}

/// Whether `runs` runs whose filters have `words` words each are merged:
/// enough of them, and a merged run within [`MAX_MERGED_RECORDS`] (a
/// filter has at least [`RUN_BITS_PER_RECORD`] bits per record, which
/// bounds a run's records).
fn mergeable(words: usize, runs: usize) -> bool {
    let records = words.saturating_mul(64) / RUN_BITS_PER_RECORD;
    runs >= MERGE_FANIN && records.saturating_mul(MERGE_FANIN) <= MAX_MERGED_RECORDS
}

/// Adds `chunk` to `batch` as the merged run's next chunk, and empties it.
fn put_chunk(
    batch: &mut sled::Batch,
    merge: &mut Merge,
    chunk: &mut Vec<RawEntry>,
) -> Result<(), LedgerError> {
    let Some(first) = chunk.first() else {
        return Ok(());
    };
    let index = u32::try_from(merge.fps.len()).unwrap_or(u32::MAX);
    batch.insert(
        chunk_key(merge.end, merge.run, first.fp, index).to_vec(),
        join_chunk(chunk)?,
    );
    merge.fps.extend(chunk.iter().map(|e| e.fp));
    chunk.clear();
    Ok(())
}

/// Room left in a merged chunk for its envelope and array header.
const CHUNK_ENVELOPE: usize = 16;

/// The bytes of the records of `chunk`.
fn chunk_bytes(chunk: &[RawEntry]) -> usize {
    chunk.iter().map(|e| e.span.len()).sum()
}

/// The tag of the stored-value envelope ([`encode`]) that a run chunk is
/// written under: a map of this one key to the array of entries.
const CHUNK_VERSION: &str = "V1";

/// The records of a run chunk as spans of its bytes, each with its
/// fingerprint: the chunk's envelope and array are read, each entry's
/// fields but `fp` skipped. Damaged bytes are a [`LedgerError::Corrupt`].
fn split_chunk(key: &[u8], chunk: &sled::IVec) -> Result<Vec<RawEntry>, LedgerError> {
    let corrupt = |detail: String| LedgerError::Corrupt {
        key: printable(key),
        detail,
    };
    let mut rd = std::io::Cursor::new(chunk.as_ref());
    let fields = rmp::decode::read_map_len(&mut rd).map_err(|e| corrupt(e.to_string()))?;
    let tag_len = rmp::decode::read_str_len(&mut rd).map_err(|e| corrupt(e.to_string()))?;
    let mut tag = [0u8; CHUNK_VERSION.len()];
    if fields != 1
        || usize::try_from(tag_len).ok() != Some(tag.len())
        || std::io::Read::read_exact(&mut rd, &mut tag).is_err()
        || tag != CHUNK_VERSION.as_bytes()
    {
        return Err(corrupt(format!(
            "a run chunk is not a {CHUNK_VERSION} record"
        )));
    }
    let n = rmp::decode::read_array_len(&mut rd).map_err(|e| corrupt(e.to_string()))?;
    // The count comes from disk: reserve no more than a chunk's worth.
    let mut entries = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(CHUNK));
    for _ in 0..n {
        let start = position(&rd);
        let EntryFp { fp } = EntryFp::deserialize(&mut rmp_serde::Deserializer::new(&mut rd))
            .map_err(|e| corrupt(e.to_string()))?;
        entries.push(RawEntry {
            fp,
            chunk: chunk.clone(),
            span: start..position(&rd),
        });
    }
    Ok(entries)
}

/// How far `rd` has read into its slice (never past its end).
fn position(rd: &std::io::Cursor<&[u8]>) -> usize {
    usize::try_from(rd.position()).map_or(rd.get_ref().len(), |p| p.min(rd.get_ref().len()))
}

/// The bytes of a run chunk of `entries`: the same as [`encode`] gives
/// for the records they were read from, built by copying their spans.
fn join_chunk(entries: &[RawEntry]) -> Result<Vec<u8>, LedgerError> {
    let failed = |e: rmp::encode::ValueWriteError| LedgerError::Storage(e.to_string());
    let bytes: usize = entries.iter().map(|e| e.span.len()).sum();
    let mut out = Vec::with_capacity(bytes + 16);
    rmp::encode::write_map_len(&mut out, 1).map_err(failed)?;
    rmp::encode::write_str(&mut out, CHUNK_VERSION).map_err(failed)?;
    let n = u32::try_from(entries.len())
        .map_err(|_| LedgerError::Storage("a run chunk of over 4G records".into()))?;
    rmp::encode::write_array_len(&mut out, n).map_err(failed)?;
    for entry in entries {
        let record = entry.chunk.get(entry.span.clone()).ok_or_else(|| {
            LedgerError::Storage("a run entry's span lies outside its chunk".into())
        })?;
        out.extend_from_slice(record);
    }
    Ok(out)
}

/// Where the chunk starting at `start` ends: after `records` records, or
/// later so that one fingerprint never spans a chunk edge, and never past
/// `limit`.
fn chunk_end(order: &[Planned], start: usize, limit: usize, records: usize) -> usize {
    let mut cut = (start + records.max(1)).min(limit);
    while cut < limit && cut > start && order[cut].1 == order[cut - 1].1 {
        cut += 1;
    }
    cut
}

/// FNV-1a over store, a zero byte and key: stable across builds, since
/// runs on disk are sorted by it. Not a defence against crafted keys; a
/// collision only puts records side by side.
fn fingerprint(store: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in store.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn bucket_prefix(end: u64) -> [u8; 9] {
    let mut k = [b'd'; 9];
    k[1..].copy_from_slice(&end.to_be_bytes());
    k
}

fn tagged(end: u64, tag: u8) -> [u8; 10] {
    let mut k = [tag; 10];
    k[..9].copy_from_slice(&bucket_prefix(end));
    k
}

fn run_prefix(end: u64, run: u64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..10].copy_from_slice(&tagged(end, CHUNK_TAG));
    k[10..].copy_from_slice(&run.to_be_bytes());
    k
}

/// The key of a filter piece in [`FILTER_TREE`]: bucket end, run and
/// piece, each big-endian.
fn filter_piece_key(end: u64, run: u64, piece: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&filter_run_prefix(end, run));
    k[16..].copy_from_slice(&piece.to_be_bytes());
    k
}

fn filter_run_prefix(end: u64, run: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&end.to_be_bytes());
    k[8..].copy_from_slice(&run.to_be_bytes());
    k
}

/// Adds the pieces of `filter`, the filter of run `run` of bucket `end`,
/// to `batch` (of [`FILTER_TREE`]).
fn put_filter(
    batch: &mut sled::Batch,
    end: u64,
    run: u64,
    filter: &RunFilter,
) -> Result<(), LedgerError> {
    for (piece, words) in filter.words.chunks(FILTER_PIECE_WORDS).enumerate() {
        let piece = u32::try_from(piece).unwrap_or(u32::MAX);
        batch.insert(filter_piece_key(end, run, piece).to_vec(), encode(words)?);
    }
    Ok(())
}

/// Adds the removal of every piece of run `run`'s filter to `batch`.
fn remove_filter(
    filter_tree: &sled::Tree,
    batch: &mut sled::Batch,
    end: u64,
    run: u64,
) -> Result<(), LedgerError> {
    for key in filter_tree.scan_prefix(filter_run_prefix(end, run)).keys() {
        batch.remove(key.map_err(storage)?);
    }
    Ok(())
}

/// The filters of bucket `end`'s runs, by run. Pieces are written and
/// removed a filter at a time in one batch, so a gap among them, or a
/// filter whose length is not a power of two, is damage.
fn read_filters(filter_tree: &sled::Tree, end: u64) -> Result<Vec<(u64, RunFilter)>, LedgerError> {
    let mut filters: Vec<(u64, RunFilter)> = Vec::new();
    let mut last_key = Vec::new();
    let mut expected = 0u32;
    for entry in filter_tree.scan_prefix(end.to_be_bytes()) {
        let (k, v) = entry.map_err(storage)?;
        let run = number_at(&k, 8)?;
        let piece = k
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| filter_damage(&k, "short key"))?;
        if filters.last().is_none_or(|(r, _)| *r != run) {
            check_filter(&last_key, filters.last())?;
            filters.push((run, RunFilter { words: Vec::new() }));
            expected = 0;
        }
        if piece != expected {
            return Err(filter_damage(&k, "a piece is missing"));
        }
        expected = expected.saturating_add(1);
        let words: Vec<u64> = decode(&k, &v)?;
        if let Some((_, filter)) = filters.last_mut() {
            filter.words.extend(words);
        }
        last_key = k.to_vec();
    }
    check_filter(&last_key, filters.last())?;
    Ok(filters)
}

fn check_filter(key: &[u8], filter: Option<&(u64, RunFilter)>) -> Result<(), LedgerError> {
    match filter {
        Some((_, f)) if !f.words.len().is_power_of_two() => Err(filter_damage(
            key,
            "a filter's length is not a power of two",
        )),
        _ => Ok(()),
    }
}

fn filter_damage(key: &[u8], detail: &str) -> LedgerError {
    LedgerError::Corrupt {
        key: printable(key),
        detail: format!("idempotency run filter: {detail}"),
    }
}

/// Removes up to `limit` keys of `tree` under `prefix` in one batch;
/// returns how many.
fn remove_prefix(
    tree: &sled::Tree,
    prefix: impl AsRef<[u8]>,
    limit: usize,
) -> Result<usize, LedgerError> {
    let mut batch = sled::Batch::default();
    let mut removed = 0;
    for key in tree.scan_prefix(prefix).keys().take(limit) {
        batch.remove(key.map_err(storage)?);
        removed += 1;
    }
    tree.apply_batch(batch).map_err(storage)?;
    Ok(removed)
}

/// Moves the filters that layout 4 kept in the ledger's tree (`\x03` run
/// after the bucket) to [`FILTER_TREE`]: the pieces first, then the old
/// key, so a crash between leaves both and the next open moves it again.
fn move_filters(tree: &sled::Tree, filter_tree: &sled::Tree, end: u64) -> Result<(), LedgerError> {
    for entry in tree.scan_prefix(tagged(end, FILTER_TAG)) {
        let (k, v) = entry.map_err(storage)?;
        let run = number_at(&k, 10)?;
        let filter: RunFilter = decode(&k, &v)?;
        let mut batch = sled::Batch::default();
        put_filter(&mut batch, end, run, &filter)?;
        filter_tree.apply_batch(batch).map_err(storage)?;
        tree.remove(&k).map_err(storage)?;
    }
    Ok(())
}

/// Removes the filters of buckets that have no key left in the ledger's
/// tree. Expiry removes a bucket's filters before its chunks, so only a
/// damaged or hand-edited database has such filters; they would only make
/// lookups read a bucket that holds nothing.
fn remove_orphan_filters(filter_tree: &sled::Tree, state: &State) -> Result<(), LedgerError> {
    let mut from = Vec::new();
    while let Some(entry) = filter_tree.range(from.clone()..).next() {
        let (k, _) = entry.map_err(storage)?;
        let end = number_at(&k, 0)?;
        if !state.buckets.contains_key(&end) {
            tracing::info!(
                bucket = end,
                "removing the filters of an idempotency bucket that has no records"
            );
            remove_prefix(filter_tree, end.to_be_bytes(), usize::MAX)?;
        }
        match end.checked_add(1) {
            Some(next) => from = next.to_be_bytes().to_vec(),
            None => break,
        }
    }
    Ok(())
}

fn chunk_key(end: u64, run: u64, first_fp: u64, index: u32) -> [u8; 30] {
    let mut k = [0u8; 30];
    k[..18].copy_from_slice(&run_prefix(end, run));
    k[18..26].copy_from_slice(&first_fp.to_be_bytes());
    k[26..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The layout-3 key of one record: `d<end>` store `\0` key.
pub(super) fn legacy_key(end: u64, store: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + store.len() + key.len());
    k.extend_from_slice(&bucket_prefix(end));
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn number_at(k: &[u8], at: usize) -> Result<u64, LedgerError> {
    k.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| LedgerError::Corrupt {
            key: printable(k),
            detail: "short idempotency key".into(),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shelfsync_core::{ItemKey, Op};
    use shelfsync_proto::{ErrorCode, WireError};

    use super::*;
    use crate::ledger::sled::tests::reopen;
    use crate::ledger::{CommitBatch, Ledger, Outcome, SledLedger};

    const BUCKET: Duration = Duration::from_millis(1000);

    fn record(at_ms: u64, note: &str) -> IdempotencyRecord {
        IdempotencyRecord {
            key: ItemKey::new("s1", "a").unwrap(),
            op: Op::Add { amount: 1 },
            expected_version: None,
            outcome: Outcome::Rejected(WireError::new(ErrorCode::NotFound, note)),
            at_ms,
        }
    }

    /// Commits records for keys `k<i>` of `store`, decided at `at_ms`, 50
    /// to a batch, each batch at the next log position after `position`
    /// (0: none); returns the last position used.
    fn commit_records(
        ledger: &SledLedger,
        store: &str,
        keys: Range<u32>,
        at_ms: u64,
        mut position: u64,
    ) -> u64 {
        let all: Vec<u32> = keys.collect();
        for commit in all.chunks(50) {
            let idempotency = commit
                .iter()
                .map(|i| {
                    (
                        store.to_owned(),
                        format!("k{i}"),
                        record(at_ms, &format!("r{i}")),
                    )
                })
                .collect();
            if position > 0 {
                position += 1;
            }
            ledger
                .commit(CommitBatch {
                    idempotency,
                    position,
                    ..CommitBatch::default()
                })
                .unwrap();
        }
        position
    }

    fn assert_all_found(ledger: &SledLedger, store: &str, keys: Range<u32>, at_ms: u64) {
        for i in keys {
            assert_eq!(
                ledger.idempotency(store, &format!("k{i}")).unwrap(),
                Some(record(at_ms, &format!("r{i}"))),
                "{store} k{i}"
            );
        }
    }

    /// How many runs have a filter in the filter tree.
    fn filters_stored(ledger: &SledLedger) -> usize {
        let tree = ledger.db().open_tree(FILTER_TREE).unwrap();
        tree.iter()
            .keys()
            .filter(|k| {
                k.as_ref()
                    .is_ok_and(|k| k.get(16..20) == Some(&[0, 0, 0, 0][..]))
            })
            .count()
    }

    /// How many keys of the tree carry `tag` after a bucket prefix.
    fn keys_with_tag(ledger: &SledLedger, tag: u8) -> usize {
        ledger
            .tree()
            .scan_prefix(b"d")
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| k.get(9) == Some(&tag)))
            .count()
    }

    #[test]
    fn records_stay_in_memory_until_sealed_then_are_found_in_runs_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
            commit_records(&ledger, "store-1", 0..1000, 10, 0);
            // Two buckets in one table.
            commit_records(&ledger, "store-2", 0..120, 1500, 0);
            assert_eq!(keys_with_tag(&ledger, CHUNK_TAG), 0, "nothing on disk yet");
            // A step does not seal a table that is neither full nor old.
            ledger.checkpoint().unwrap();
            assert_eq!(keys_with_tag(&ledger, CHUNK_TAG), 0);
            assert_all_found(&ledger, "store-1", 0..1000, 10);
            ledger.flush().unwrap();
            assert_eq!(filters_stored(&ledger), 2, "one run per bucket");
            assert_eq!(
                keys_with_tag(&ledger, CHUNK_TAG),
                1000usize.div_ceil(CHUNK) + 120usize.div_ceil(CHUNK)
            );
            assert_all_found(&ledger, "store-1", 0..1000, 10);
            commit_records(&ledger, "store-1", 1000..1300, 20, 0);
            ledger.flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_all_found(&ledger, "store-1", 0..1000, 10);
        assert_all_found(&ledger, "store-1", 1000..1300, 20);
        assert_all_found(&ledger, "store-2", 0..120, 1500);
        for (store, key) in [("store-1", "k1300"), ("store-2", "k500"), ("store-3", "k1")] {
            assert_eq!(
                ledger.idempotency(store, key).unwrap(),
                None,
                "{store} {key}"
            );
        }
        // New runs after the restart do not reuse a number.
        commit_records(&ledger, "store-3", 0..60, 40, 0);
        ledger.flush().unwrap();
        assert_eq!(filters_stored(&ledger), 4);
        assert_all_found(&ledger, "store-3", 0..60, 40);
        assert_all_found(&ledger, "store-2", 0..120, 1500);
    }

    #[test]
    fn a_sealed_table_is_written_in_pieces_and_answers_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        let (seal, piece) = (2000, 300);
        ledger.idempotency_store_mut().set_sizes(seal, piece);
        let store = ledger.idempotency_store();
        // Records come in 100 between steps, as writes go on between the
        // pipeline's steps: twice that is under the smallest piece.
        let seal_at = u32::try_from(seal).unwrap();
        for from in (0..seal_at).step_by(100) {
            commit_records(&ledger, "store-1", from..from + 100, 10, 0);
            store.step(false).unwrap();
        }
        // Sealed, one piece written, no filter yet.
        let chunks = keys_with_tag(&ledger, CHUNK_TAG);
        assert!(chunks > 0 && chunks < seal / CHUNK, "{chunks}");
        assert_eq!(filters_stored(&ledger), 0);
        // Records added meanwhile go into a new table.
        let n = seal_at + 100;
        commit_records(&ledger, "store-1", seal_at..n, 10, 0);
        commit_records(&ledger, "store-2", 0..10, 10, 0);
        for i in (0..n).step_by(97) {
            assert!(
                ledger
                    .idempotency("store-1", &format!("k{i}"))
                    .unwrap()
                    .is_some()
            );
        }
        let mut steps = 1;
        while filters_stored(&ledger) == 0 {
            store.step(false).unwrap();
            steps += 1;
            assert!(steps < 1000);
        }
        // Whole chunks per piece: a step writes a little over its budget.
        assert_eq!(steps, seal.div_ceil(piece.next_multiple_of(CHUNK)));
        assert_all_found(&ledger, "store-1", 0..n, 10);
        assert_all_found(&ledger, "store-2", 0..10, 10);
    }

    /// A ledger whose idempotency store seals at 2,000 records and writes
    /// pieces of 300, with one table of 2,000 records (100 coming in per
    /// step) written: its runs complete, the table not yet freed.
    fn one_written_table() -> (tempfile::TempDir, SledLedger) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        ledger.idempotency_store_mut().set_sizes(2000, 300);
        let store = ledger.idempotency_store();
        for from in (0..2000).step_by(100) {
            commit_records(&ledger, "store-1", from..from + 100, 10, 0);
            store.step(false).unwrap();
        }
        while filters_stored(&ledger) == 0 {
            store.step(false).unwrap();
        }
        (dir, ledger)
    }

    #[test]
    fn a_written_table_is_freed_a_piece_per_step() {
        let (_dir, ledger) = one_written_table();
        let (seal, piece) = (2000, 300);
        let store = ledger.idempotency_store();
        // Complete: the runs answer, and the step that wrote the filter
        // freed only its plan's first entries, none of the records.
        assert_all_found(&ledger, "store-1", 0..2000, 10);
        assert_eq!(store.retired_records(), seal);
        // Then a piece a step: the plan's rest (2,000 - 300), then the
        // records, 300 a step at most, until none is left.
        let mut left = seal;
        let mut steps = 0;
        while left > 0 {
            store.step(false).unwrap();
            let now = store.retired_records();
            assert!(now <= left && left - now <= piece, "{left} -> {now}");
            left = now;
            steps += 1;
            assert!(steps < 100);
        }
        // 2 x 2,000 entries, 300 a step: 14 steps, the one that finished
        // the table among them.
        assert_eq!(steps + 1, (2 * seal).div_ceil(piece));
        assert_all_found(&ledger, "store-1", 0..2000, 10);
    }

    #[test]
    fn a_flush_frees_written_tables_at_once() {
        let (_dir, ledger) = one_written_table();
        let store = ledger.idempotency_store();
        assert_eq!(store.retired_records(), 2000);
        store.step(true).unwrap();
        assert_eq!(store.retired_records(), 0);
        assert_all_found(&ledger, "store-1", 0..2000, 10);
    }

    #[test]
    fn a_step_writes_twice_what_came_in_since_the_step_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        ledger.idempotency_store_mut().set_sizes(1000, 100);
        let store = ledger.idempotency_store();
        // 1,000 records since the last step: the step seals them and may
        // write 2,000, so it writes the table whole, where pieces of the
        // smallest size would take ten steps.
        commit_records(&ledger, "store-1", 0..1000, 10, 0);
        store.step(false).unwrap();
        assert_eq!(filters_stored(&ledger), 1);
        assert_eq!(keys_with_tag(&ledger, CHUNK_TAG), 1000usize.div_ceil(CHUNK));
        // The next table fills 100 records between steps: the step that
        // seals it writes twice those (200, in whole chunks 224), the
        // steps after it, with nothing coming in, the smallest piece (100,
        // in whole chunks 128).
        for from in (1000..1900).step_by(100) {
            commit_records(&ledger, "store-1", from..from + 100, 10, 0);
            store.step(false).unwrap();
        }
        let chunks = || keys_with_tag(&ledger, CHUNK_TAG);
        let before = chunks();
        commit_records(&ledger, "store-1", 1900..2000, 10, 0);
        store.step(false).unwrap();
        assert_eq!(chunks() - before, 224 / CHUNK);
        let before = chunks();
        store.step(false).unwrap();
        assert_eq!(chunks() - before, 128 / CHUNK);
        let mut steps = 2;
        while filters_stored(&ledger) == 1 {
            store.step(false).unwrap();
            steps += 1;
            assert!(steps < 100);
        }
        assert_eq!(steps, 1 + (1000 - 224usize).div_ceil(128));
        assert_all_found(&ledger, "store-1", 0..2000, 10);
    }

    #[test]
    fn the_position_stays_behind_records_in_memory_and_recovery_brings_them_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
            // Records from outside the log (position 0), log positions up
            // to 10 without records, then 11..=14 (50 records each); a
            // checkpoint seals nothing.
            let last = commit_records(&ledger, "store-1", 0..200, 10, 0);
            assert_eq!(last, 0);
            ledger
                .commit(CommitBatch {
                    position: 10,
                    ..CommitBatch::default()
                })
                .unwrap();
            let last = commit_records(&ledger, "store-2", 0..200, 10, 10);
            assert_eq!(last, 14);
            // The tree has batch 14, the records of 11..=14 are in memory.
            assert_eq!(ledger.checkpoint().unwrap(), 10);
            assert_eq!(ledger.position().unwrap(), 10);
            // A crash: nothing flushes the records.
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(ledger.position().unwrap(), 10);
        for i in [0, 199] {
            assert_eq!(
                ledger.idempotency("store-2", &format!("k{i}")).unwrap(),
                None
            );
        }
        // What recovery does: the same batches again, from 11.
        assert_eq!(commit_records(&ledger, "store-2", 0..200, 10, 10), 14);
        assert_all_found(&ledger, "store-2", 0..200, 10);
        ledger.flush().unwrap();
        assert_eq!(ledger.position().unwrap(), 14);
        // Flushed: a checkpoint with nothing in memory covers everything.
        assert_eq!(ledger.checkpoint().unwrap(), 14);
    }

    #[test]
    fn a_batch_of_several_groups_is_covered_from_its_first_group() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
            let batch = |position, idempotency| CommitBatch {
                position,
                idempotency,
                ..CommitBatch::default()
            };
            ledger.commit(batch(1, Vec::new())).unwrap();
            // Groups 2..=5 merged into one batch, with records.
            let records = vec![("store-1".into(), "k".into(), record(10, "r"))];
            ledger.commit(batch(5, records)).unwrap();
            assert_eq!(ledger.checkpoint().unwrap(), 1);
        }
        let ledger = reopen(dir.path(), BUCKET);
        // Recovery replays groups 2.. one at a time.
        assert_eq!(ledger.position().unwrap(), 1);
        for position in 2..=5 {
            let idempotency = if position == 3 {
                vec![("store-1".into(), "k".into(), record(10, "r"))]
            } else {
                Vec::new()
            };
            ledger
                .commit(CommitBatch {
                    position,
                    idempotency,
                    ..CommitBatch::default()
                })
                .unwrap();
        }
        assert_eq!(ledger.checkpoint().unwrap(), 2);
        assert_eq!(
            ledger.idempotency("store-1", "k").unwrap(),
            Some(record(10, "r"))
        );
    }

    #[test]
    fn a_reopened_ledger_with_nothing_in_memory_covers_its_position() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
            for position in 1..=3 {
                ledger
                    .commit(CommitBatch {
                        position,
                        ..CommitBatch::default()
                    })
                    .unwrap();
            }
            assert_eq!(ledger.checkpoint().unwrap(), 3);
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(ledger.checkpoint().unwrap(), 3);
        assert_eq!(ledger.position().unwrap(), 3);
    }

    #[test]
    fn chunks_of_a_run_left_incomplete_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
            ledger.idempotency_store_mut().set_sizes(1000, 100);
            // A step between, so that the step that seals has seen 100
            // records come in, not 1,000, and writes a piece only.
            commit_records(&ledger, "store-1", 0..900, 10, 0);
            ledger.idempotency_store().step(false).unwrap();
            commit_records(&ledger, "store-1", 900..1000, 10, 0);
            // One piece, then a crash.
            ledger.idempotency_store().step(false).unwrap();
            assert!(keys_with_tag(&ledger, CHUNK_TAG) > 0);
            ledger.db().flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(keys_with_tag(&ledger, CHUNK_TAG), 0);
        assert_eq!(ledger.idempotency("store-1", "k0").unwrap(), None);
    }

    #[test]
    fn equal_fingerprints_across_chunk_edges_are_all_found() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        let store = ledger.idempotency_store();
        // 3 chunks' worth sharing one fingerprint, between others.
        let mut table = Table::default();
        let mut add = |key: String, fp_note: u64| {
            table.records.insert(
                ("s".into(), key.clone()),
                Box::new((1000, record(fp_note, &key))),
            );
        };
        for i in 0..CHUNK * 3 {
            add(format!("same{i}"), 1);
        }
        for i in 0..CHUNK * 2 {
            add(format!("other{i}"), 2);
        }
        let mut pending = plan(Arc::new(Sealed { run: 1, table }));
        // Fake fingerprints: 42 for "same", 41/43 alternating for "other".
        for (i, entry) in pending.order.iter_mut().enumerate() {
            entry.1 = if entry.2.1.starts_with("same") {
                42
            } else if i % 2 == 0 {
                41
            } else {
                43
            };
        }
        pending.order.sort_by_key(|e| e.1);
        let fp_of = |key: &str, order: &[Planned]| {
            order.iter().find(|e| e.2.1 == key).map(|e| e.1).unwrap()
        };
        let order = pending.order.clone();
        // Chunk edges never split a fingerprint.
        let mut start = 0;
        while start < order.len() {
            let cut = chunk_end(&order, start, order.len(), CHUNK);
            assert!(cut == order.len() || order[cut].1 != order[cut - 1].1);
            start = cut;
        }
        assert!(store.write_piece(&mut pending, usize::MAX).unwrap());
        for (_, _, (_, key)) in &order {
            let found = store
                .find_in_run(1000, 1, fp_of(key, &order), "s", key)
                .unwrap();
            assert_eq!(
                found.map(|r| r.outcome),
                Some(record(0, key).outcome),
                "{key}"
            );
        }
        assert_eq!(store.find_in_run(1000, 1, 42, "s", "other0").unwrap(), None);
        assert_eq!(store.find_in_run(1000, 1, 44, "s", "x").unwrap(), None);
    }

    #[test]
    fn layout_3_records_are_read_and_expire_with_their_bucket() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("ledger").unwrap();
            tree.insert(b"mformat", &3u64.to_be_bytes()).unwrap();
            tree.insert(b"mposition", &7u64.to_be_bytes()).unwrap();
            tree.insert(
                legacy_key(1000, "store-1", "old"),
                encode(record(5, "old")).unwrap(),
            )
            .unwrap();
            db.flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        // Layout 3 kept nothing in memory: its position is the tree's.
        assert_eq!(ledger.position().unwrap(), 7);
        assert_eq!(
            ledger.idempotency("store-1", "old").unwrap(),
            Some(record(5, "old"))
        );
        assert_eq!(ledger.idempotency("store-1", "new").unwrap(), None);
        // New records of the same bucket go into a run beside it.
        commit_records(&ledger, "store-1", 0..10, 500, 7);
        assert_eq!(ledger.checkpoint().unwrap(), 7);
        assert_eq!(ledger.position().unwrap(), 7);
        ledger.flush().unwrap();
        assert_all_found(&ledger, "store-1", 0..10, 500);
        // The record, the run's chunk and its filter.
        assert_eq!(ledger.expire_idempotency(1000, 100).unwrap(), 3);
        assert_eq!(ledger.idempotency("store-1", "old").unwrap(), None);
        assert_eq!(ledger.idempotency("store-1", "k1").unwrap(), None);
        assert!(ledger.tree().scan_prefix(b"d").next().is_none());
    }

    #[test]
    fn expiry_removes_records_in_memory_and_on_disk_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        commit_records(&ledger, "store-1", 0..500, 100, 0);
        ledger.flush().unwrap();
        commit_records(&ledger, "store-1", 500..600, 200, 0);
        commit_records(&ledger, "store-1", 600..700, 1500, 0);
        // Bucket 1000: 100 records in memory, a run's chunks and filter;
        // bucket 2000: 100 records in memory.
        let keys = 500usize.div_ceil(CHUNK) + 1;
        assert_eq!(ledger.expire_idempotency(1000, 103).unwrap(), 103);
        // Half-expired: skipped by lookups, gone on the next round.
        assert_eq!(ledger.idempotency("store-1", "k5").unwrap(), None);
        assert_eq!(ledger.idempotency("store-1", "k550").unwrap(), None);
        assert_eq!(ledger.expire_idempotency(1000, 100).unwrap(), keys - 3);
        assert_eq!(ledger.idempotency_store().live_buckets(), [2000]);
        assert_all_found(&ledger, "store-1", 600..700, 1500);
        // Written later, the expired bucket's records stay gone.
        ledger.flush().unwrap();
        assert_eq!(ledger.idempotency_store().live_buckets(), [2000]);
        assert_eq!(ledger.idempotency("store-1", "k1").unwrap(), None);
        assert_all_found(&ledger, "store-1", 600..700, 1500);
    }

    /// Writes `runs` runs of 40 records each (keys `k0`.. of `store-1`,
    /// decided at 10 ms: bucket 1000) through steps that seal at 40.
    fn ledger_with_runs(dir: &std::path::Path, runs: u32) -> SledLedger {
        let mut ledger = SledLedger::open_with(dir, BUCKET).unwrap();
        ledger.idempotency_store_mut().set_sizes(40, 64);
        for i in 0..runs {
            commit_records(&ledger, "store-1", i * 40..(i + 1) * 40, 10, 0);
            // Seals the table and writes it whole; merges nothing yet.
            ledger.idempotency_store().step(false).unwrap();
        }
        ledger
    }

    const FANIN: u32 = MERGE_FANIN as u32;

    #[test]
    fn runs_of_one_size_are_merged_into_one_and_every_record_stays_found() {
        let dir = tempfile::tempdir().unwrap();
        let n = FANIN * 40;
        {
            let ledger = ledger_with_runs(dir.path(), FANIN);
            assert_eq!(filters_stored(&ledger), MERGE_FANIN);
            let mut steps = 0;
            while filters_stored(&ledger) > 1 {
                ledger.idempotency_store().step(false).unwrap();
                steps += 1;
                assert!(steps < 100, "the merge never completes");
                // Found all along, in the sources or the merged run.
                assert_all_found(&ledger, "store-1", 0..n, 10);
            }
            assert!(steps > 1, "written in pieces");
            // The sources' chunks are gone; the merged run has its own.
            assert_eq!(
                keys_with_tag(&ledger, CHUNK_TAG),
                (n as usize).div_ceil(CHUNK)
            );
            assert_all_found(&ledger, "store-1", 0..n, 10);
            assert_eq!(
                ledger.idempotency("store-1", &format!("k{n}")).unwrap(),
                None
            );
            ledger.flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(filters_stored(&ledger), 1);
        assert_all_found(&ledger, "store-1", 0..n, 10);
    }

    #[test]
    fn a_merge_cut_short_leaves_the_runs_it_was_merging() {
        let dir = tempfile::tempdir().unwrap();
        let n = FANIN * 40;
        {
            let ledger = ledger_with_runs(dir.path(), FANIN);
            let before = keys_with_tag(&ledger, CHUNK_TAG);
            ledger.idempotency_store().step(false).unwrap();
            // Nothing came in since the last step: a merge step writes
            // MERGE_PIECES of the smallest piece (64), in whole chunks.
            assert_eq!(
                keys_with_tag(&ledger, CHUNK_TAG) - before,
                MERGE_PIECES * 64 / CHUNK,
                "a piece is written"
            );
            assert_eq!(filters_stored(&ledger), MERGE_FANIN);
            // A crash: the merge goes no further.
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(filters_stored(&ledger), MERGE_FANIN);
        assert_eq!(
            keys_with_tag(&ledger, CHUNK_TAG),
            MERGE_FANIN * 40usize.div_ceil(CHUNK),
            "the merged run's chunks are removed"
        );
        assert_all_found(&ledger, "store-1", 0..n, 10);
    }

    #[test]
    fn a_bucket_that_expires_during_a_merge_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ledger_with_runs(dir.path(), FANIN);
        let store = ledger.idempotency_store();
        store.step(false).unwrap();
        let filter_tree = ledger.db().open_tree(FILTER_TREE).unwrap();
        let on_disk = ledger.tree().scan_prefix(b"d").count() + filter_tree.len();
        assert_eq!(
            ledger.expire_idempotency(1000, usize::MAX).unwrap(),
            on_disk
        );
        for _ in 0..20 {
            store.step(false).unwrap();
        }
        assert!(
            ledger.tree().scan_prefix(b"d").next().is_none() && filter_tree.is_empty(),
            "nothing written after expiry"
        );
        assert_eq!(store.live_buckets(), Vec::<u64>::new());
    }

    #[test]
    fn sealed_runs_are_merged_once_in_thirty_twos() {
        let words = |records: usize| RunFilter::sized_for(records).words.len();
        // A full sealed table's runs merge once there are 32 of them.
        assert_eq!(MERGE_FANIN, 32);
        assert!(mergeable(words(SEAL_RECORDS), MERGE_FANIN));
        assert!(!mergeable(words(SEAL_RECORDS), MERGE_FANIN - 1));
        // Smaller runs (a table sealed for its age) merge the same way.
        assert!(mergeable(words(SEAL_RECORDS / 4), MERGE_FANIN));
        // Merged runs (32 sealed tables, about 2M records) stay as they are.
        assert!(!mergeable(words(SEAL_RECORDS * 32), MERGE_FANIN));
    }

    /// Run entries of every shape a record takes: rejected, accepted with
    /// an item (and an optional field set), accepted as a delete.
    fn varied_entries() -> Vec<RunEntry> {
        let key = ItemKey::new("s1", "milk").unwrap();
        let item = shelfsync_core::Item {
            location: key.location.clone(),
            sku: key.sku.clone(),
            name: "Milk 1 l, \u{e9}t\u{e9}".into(),
            quantity: u64::MAX,
            reserved: 3,
            version: 7,
        };
        let accepted = |state, op, expected_version| IdempotencyRecord {
            key: key.clone(),
            op,
            expected_version,
            outcome: Outcome::Accepted { seq: 42, state },
            at_ms: 1_700_000_000_000,
        };
        let records = [
            record(5, "rejected"),
            accepted(
                shelfsync_core::KeyState::Live(item),
                Op::Create {
                    name: "Milk".into(),
                    quantity: 9,
                },
                Some(6),
            ),
            accepted(
                shelfsync_core::KeyState::Deleted { version: 8 },
                Op::Delete,
                None,
            ),
            record(u64::MAX, &"x".repeat(300)),
        ];
        records
            .into_iter()
            .enumerate()
            .map(|(i, record)| RunEntry {
                fp: fingerprint("store-1", &format!("k{i}")),
                store: "store-1".into(),
                key: format!("k{i}"),
                record,
            })
            .collect()
    }

    #[test]
    fn a_merged_chunk_is_byte_for_byte_the_encoding_of_its_records() {
        let entries = varied_entries();
        let chunk = sled::IVec::from(encode(&entries).unwrap());
        let raw = split_chunk(b"k", &chunk).unwrap();
        assert_eq!(
            raw.iter().map(|e| e.fp).collect::<Vec<_>>(),
            entries.iter().map(|e| e.fp).collect::<Vec<_>>()
        );
        // All of them, and a selection drawn from two chunks, as a merge
        // takes them: the bytes that encoding the records gives.
        assert_eq!(join_chunk(&raw).unwrap(), chunk.to_vec());
        let other = sled::IVec::from(encode(&entries[2..]).unwrap());
        let mut picked = split_chunk(b"k", &other).unwrap();
        picked.insert(0, split_chunk(b"k", &chunk).unwrap().remove(1));
        let expected: Vec<&RunEntry> = vec![&entries[1], &entries[2], &entries[3]];
        let joined = join_chunk(&picked).unwrap();
        assert_eq!(joined, encode(&expected).unwrap());
        let read: Vec<RunEntry> = decode(b"k", &joined).unwrap();
        assert_eq!(read[0].record, entries[1].record);
        assert_eq!(
            join_chunk(&[]).unwrap(),
            encode(Vec::<RunEntry>::new()).unwrap()
        );
    }

    #[test]
    fn a_damaged_chunk_is_corrupt_not_a_panic() {
        let chunk = encode(varied_entries()).unwrap();
        for cut in 0..chunk.len() {
            let damaged = sled::IVec::from(&chunk[..cut]);
            assert!(
                matches!(
                    split_chunk(b"k", &damaged),
                    Err(LedgerError::Corrupt { .. })
                ),
                "cut at {cut}"
            );
        }
        let other_version = sled::IVec::from(
            rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("V9", 0u8)])).unwrap(),
        );
        assert!(matches!(
            split_chunk(b"k", &other_version),
            Err(LedgerError::Corrupt { .. })
        ));
        // A count far past the bytes there: an error, and no huge reservation.
        let mut lying = Vec::new();
        rmp::encode::write_map_len(&mut lying, 1).unwrap();
        rmp::encode::write_str(&mut lying, CHUNK_VERSION).unwrap();
        rmp::encode::write_array_len(&mut lying, u32::MAX).unwrap();
        assert!(matches!(
            split_chunk(b"k", &sled::IVec::from(lying)),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn run_filters_never_forget_and_rarely_imagine() {
        let mut filter = RunFilter::sized_for(10_000);
        let fps: Vec<u64> = (0..10_000u32)
            .map(|i| fingerprint("s", &format!("k{i}")))
            .collect();
        for fp in &fps {
            filter.insert(*fp);
        }
        assert!(fps.iter().all(|fp| filter.may_contain(*fp)));
        let imagined = (0..10_000u32)
            .filter(|i| filter.may_contain(fingerprint("s", &format!("x{i}"))))
            .count();
        assert!(imagined < 200, "{imagined} false positives in 10,000");
    }

    #[test]
    fn a_sealed_runs_filter_is_stored_in_pieces_that_keep_sled_nodes_small() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree(FILTER_TREE).unwrap();
        // A run of SEAL_RECORDS records: a filter of 128 KiB.
        let mut filter = RunFilter::sized_for(SEAL_RECORDS);
        assert_eq!(filter.words.len() * 8, 128 * 1024);
        for i in 0..SEAL_RECORDS as u64 {
            filter.insert(fingerprint("s", &format!("k{i}")));
        }
        let mut batch = sled::Batch::default();
        put_filter(&mut batch, 7, 3, &filter).unwrap();
        tree.apply_batch(batch).unwrap();
        assert_eq!(tree.len(), filter.words.len() / FILTER_PIECE_WORDS);
        // sled writes a node past 128 KiB as a file of its own; a leaf holds
        // at most 16 keys.
        for entry in tree.iter() {
            let (k, v) = entry.unwrap();
            assert!(
                16 * (k.len() + v.len()) < 100 * 1024,
                "a piece of {} bytes",
                v.len()
            );
        }
        let read = read_filters(&tree, 7).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, 3);
        assert_eq!(read[0].1.words, filter.words);
        assert!(read_filters(&tree, 8).unwrap().is_empty());
    }

    #[test]
    fn a_filter_missing_a_piece_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree(FILTER_TREE).unwrap();
        let filter = RunFilter::sized_for(SEAL_RECORDS);
        let mut batch = sled::Batch::default();
        put_filter(&mut batch, 7, 3, &filter).unwrap();
        tree.apply_batch(batch).unwrap();
        tree.remove(filter_piece_key(7, 3, 5)).unwrap();
        assert!(matches!(
            read_filters(&tree, 7),
            Err(LedgerError::Corrupt { .. })
        ));
        // The last piece gone: a length that is no power of two.
        let last = u32::try_from(filter.words.len() / FILTER_PIECE_WORDS - 1).unwrap();
        tree.clear().unwrap();
        let mut batch = sled::Batch::default();
        put_filter(&mut batch, 7, 3, &filter).unwrap();
        tree.apply_batch(batch).unwrap();
        tree.remove(filter_piece_key(7, 3, last)).unwrap();
        assert!(matches!(
            read_filters(&tree, 7),
            Err(LedgerError::Corrupt { .. })
        ));
        // A piece that is not an array of words.
        tree.insert(filter_piece_key(7, 3, last), b"\x91\xc0".to_vec())
            .unwrap();
        assert!(matches!(
            read_filters(&tree, 7),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn filters_a_layout_4_ledger_kept_in_its_tree_are_moved_and_every_record_found() {
        let dir = tempfile::tempdir().unwrap();
        let runs = 3;
        {
            let ledger = ledger_with_runs(dir.path(), runs);
            ledger.idempotency_store().step(false).unwrap();
            // Back to layout 4: whole filters under `\x03` run in the
            // ledger's tree, none in the filter tree.
            let filter_tree = ledger.db().open_tree(FILTER_TREE).unwrap();
            let end = ledger.idempotency_store().live_buckets()[0];
            for (run, filter) in read_filters(&filter_tree, end).unwrap() {
                let mut old = run_prefix(end, run);
                old[9] = FILTER_TAG;
                ledger.tree().insert(old, encode(&filter).unwrap()).unwrap();
            }
            filter_tree.clear().unwrap();
            ledger
                .tree()
                .insert(b"mformat", &4u64.to_be_bytes())
                .unwrap();
            ledger.flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(filters_stored(&ledger), runs as usize);
        assert_eq!(keys_with_tag(&ledger, FILTER_TAG), 0);
        assert_eq!(
            ledger.tree().get(b"mformat").unwrap().as_deref(),
            Some(&5u64.to_be_bytes()[..])
        );
        assert_all_found(&ledger, "store-1", 0..runs * 40, 10);
    }

    #[test]
    fn filters_of_a_bucket_without_records_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = ledger_with_runs(dir.path(), 2);
            let filter_tree = ledger.db().open_tree(FILTER_TREE).unwrap();
            let mut batch = sled::Batch::default();
            put_filter(&mut batch, 1, 1, &RunFilter::sized_for(40)).unwrap();
            filter_tree.apply_batch(batch).unwrap();
            assert_eq!(filters_stored(&ledger), 3);
            ledger.flush().unwrap();
        }
        let ledger = reopen(dir.path(), BUCKET);
        assert_eq!(filters_stored(&ledger), 2);
        assert_all_found(&ledger, "store-1", 0..80, 10);
    }

    #[test]
    fn chunks_of_large_records_stay_under_chunk_bytes_in_sealed_and_merged_runs() {
        let dir = tempfile::tempdir().unwrap();
        // Records of some 600 bytes: 32 to a chunk would take 19 KiB.
        let note = |i: u32| format!("r{i}-{}", "n".repeat(560));
        let store = "s".repeat(20);
        let n = FANIN * 40;
        let mut ledger = SledLedger::open_with(dir.path(), BUCKET).unwrap();
        ledger.idempotency_store_mut().set_sizes(40, 64);
        for run in 0..FANIN {
            let idempotency = (run * 40..(run + 1) * 40)
                .map(|i| (store.clone(), format!("k{i}"), record(10, &note(i))))
                .collect();
            ledger
                .commit(CommitBatch {
                    idempotency,
                    ..CommitBatch::default()
                })
                .unwrap();
            ledger.idempotency_store().step(false).unwrap();
        }
        let chunk_sizes = |ledger: &SledLedger| -> Vec<usize> {
            ledger
                .tree()
                .scan_prefix(b"d")
                .filter_map(Result::ok)
                .filter(|(k, _)| k.get(9) == Some(&CHUNK_TAG))
                .map(|(_, v)| v.len())
                .collect()
        };
        let sealed = chunk_sizes(&ledger);
        assert!(
            sealed.len() > (n as usize).div_ceil(CHUNK) * 2,
            "{} chunks",
            sealed.len()
        );
        assert!(sealed.iter().all(|&len| len <= CHUNK_BYTES), "{sealed:?}");
        let mut steps = 0;
        while filters_stored(&ledger) > 1 {
            ledger.idempotency_store().step(false).unwrap();
            steps += 1;
            assert!(steps < 1000, "the merge never completes");
        }
        let merged = chunk_sizes(&ledger);
        assert!(merged.iter().all(|&len| len <= CHUNK_BYTES), "{merged:?}");
        // Filled close to the limit, not one record each.
        assert!(merged.len() < (n as usize) / 4, "{} chunks", merged.len());
        for i in 0..n {
            assert_eq!(
                ledger.idempotency(&store, &format!("k{i}")).unwrap(),
                Some(record(10, &note(i)))
            );
        }
    }
}
