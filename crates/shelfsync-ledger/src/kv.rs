//! The ledger over an ordered key-value [`Engine`], written once for every
//! engine.
//!
//! Keyspaces; a group is one atomic batch over them:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `items` | `location \0 sku` | [`ItemV`]: the key's state and its last change's seq |
//! | `log` | `location \0 seq` (8 bytes big-endian) | [`ChangeV`]: the change log, by location |
//! | `idem.<width>.<start>` | `store \0 idempotency key` | [`IdempotencyV`] |
//! | `deadlines` | expiry (8 bytes big-endian) `location \0 sku` | the lock's token |
//! | `holds` | hold id | [`HoldV`] |
//! | `hold_deadlines` | expiry (8 bytes big-endian) hold id | empty: the active holds |
//! | `hold_ends` | end (8 bytes big-endian) hold id | empty: the ended holds, for their removal |
//! | `hold_index` | `location \0 hold id`, for each location of its lines | empty: the active holds by location |
//! | `transfers` | transfer id | [`TransferV`] |
//! | `transfer_index` | `location \0 id`, for its `from` and its `to` | empty |
//! | `open_transfers` | the same, while the transfer is in transit | empty |
//! | `reports` | store id | [`ReportV`] |
//! | `meta` | `layout`, `head`, `oldest` | u64, big-endian |
//!
//! The log is keyed by location first, so a store's sync reads only its
//! locations' changes. A group writes each key's item once, with its last
//! state. Idempotency records go to the keyspace of their time bucket, and
//! expiry deletes whole keyspaces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use shelfsync_core::{Hold, HoldState, ItemKey, Transfer, TransferState};
use shelfsync_proto::Change;

use super::engine::{Engine, Write};
use super::records::{ChangeV, HoldV, IdempotencyV, ItemV, ReportV, TransferV, decode, encode};
use super::{
    Buckets, CommitGroup, Deadline, IdempotencyRecord, ItemRecord, LAYOUT, Ledger, LedgerError,
    StoredReport,
};
use shelfsync_core::FastMap;

/// Idempotency bucket keyspaces by (start, width).
type BucketMap<S> = BTreeMap<(u64, u64), S>;

/// The prefix of an idempotency bucket's keyspace name.
const BUCKET_PREFIX: &str = "idem.";

/// The ledger over the engine `E`.
pub struct KvLedger<E: Engine> {
    engine: E,
    items: E::Space,
    log: E::Space,
    deadlines: E::Space,
    holds: E::Space,
    hold_deadlines: E::Space,
    hold_ends: E::Space,
    hold_index: E::Space,
    transfers: E::Space,
    transfer_index: E::Space,
    open_transfers: E::Space,
    reports: E::Space,
    meta: E::Space,
    buckets: Buckets,
    /// Idempotency buckets by (start, width).
    idempotency: Mutex<BucketMap<E::Space>>,
    head: AtomicU64,
    oldest: AtomicU64,
}

impl<E: Engine> std::fmt::Debug for KvLedger<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvLedger").finish_non_exhaustive()
    }
}

/// `a \0 b`: an item's key, or an idempotency record's.
fn pair_key(a: &str, b: &str) -> Vec<u8> {
    [a.as_bytes(), &[0], b.as_bytes()].concat()
}

fn item_key(key: &ItemKey) -> Vec<u8> {
    pair_key(&key.location, &key.sku)
}

fn deadline_key(at_ms: u64, key: &ItemKey) -> Vec<u8> {
    [&at_ms.to_be_bytes()[..], &item_key(key)].concat()
}

fn hold_deadline_key(at_ms: u64, id: &str) -> Vec<u8> {
    [&at_ms.to_be_bytes()[..], id.as_bytes()].concat()
}

fn log_key(location: &str, seq: u64) -> Vec<u8> {
    [location.as_bytes(), &[0], &seq.to_be_bytes()].concat()
}

/// The first key after every `location \0 ...` key.
fn after_location(location: &str) -> Vec<u8> {
    [location.as_bytes(), &[1]].concat()
}

/// The distinct locations of a hold's lines.
fn hold_locations(hold: &Hold) -> Vec<&str> {
    let mut locations: Vec<&str> = hold.lines.iter().map(|l| l.key.location.as_str()).collect();
    locations.sort_unstable();
    locations.dedup();
    locations
}

/// The oldest layout this build upgrades at open: the one before
/// `hold_index` (layout 8) and `open_transfers` (layout 9).
const UPGRADED: u64 = 7;
/// Transfers read at a time by an upgrade.
const UPGRADE_SLICE: usize = 10_000;

/// A `meta` entry holding `value`.
fn meta_put<S: Clone>(meta: &S, name: &str, value: u64) -> Write<S> {
    Write::Put(meta.clone(), name.into(), value.to_be_bytes().into())
}

fn seq_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The seq at the end of a log key.
fn log_seq(key: &[u8]) -> Result<u64, LedgerError> {
    let at = key.len().saturating_sub(8);
    seq_of(&key[at..]).ok_or_else(|| LedgerError::corrupt(key, "log key without a seq"))
}

/// `(start, width)` of a bucket keyspace named `idem.<width>.<start>`.
fn parse_bucket(name: &str) -> Option<(u64, u64)> {
    let (width, start) = name.strip_prefix(BUCKET_PREFIX)?.split_once('.')?;
    Some((start.parse().ok()?, width.parse().ok()?))
}

impl<E: Engine> KvLedger<E> {
    /// The ledger kept in `engine`: an empty engine gets this build's
    /// layout; one of another layout is refused.
    pub fn with_engine(engine: E, buckets: Buckets) -> Result<Self, LedgerError> {
        let meta = engine.space("meta")?;
        let read_u64 = |name: &str| -> Result<Option<u64>, LedgerError> {
            let corrupt = || LedgerError::corrupt(format!("meta/{name}").as_bytes(), "not 8 bytes");
            let value = engine.get(&meta, name.as_bytes())?;
            value
                .map(|v| seq_of(v.as_ref()).ok_or_else(corrupt))
                .transpose()
        };
        let mut upgrade = None;
        match read_u64("layout")? {
            None => engine.write(vec![meta_put(&meta, "layout", LAYOUT)], true)?,
            Some(LAYOUT) => {}
            Some(from @ UPGRADED..LAYOUT) => upgrade = Some(from),
            Some(other) => {
                return Err(LedgerError::Storage(format!(
                    "it has layout {other} and this build reads layout {LAYOUT} (and upgrades \
                     layouts {UPGRADED} and up) only. Start from an empty data_dir and reload \
                     the catalog (shelfctl import), or run the build that wrote it"
                )));
            }
        }
        let mut idempotency = BTreeMap::new();
        for name in engine.space_names()? {
            if let Some(bucket) = parse_bucket(&name) {
                idempotency.insert(bucket, engine.space(&name)?);
            }
        }
        let ledger = KvLedger {
            head: AtomicU64::new(read_u64("head")?.unwrap_or(0)),
            oldest: AtomicU64::new(read_u64("oldest")?.unwrap_or(1)),
            items: engine.space("items")?,
            log: engine.space("log")?,
            deadlines: engine.space("deadlines")?,
            holds: engine.space("holds")?,
            hold_deadlines: engine.space("hold_deadlines")?,
            hold_ends: engine.space("hold_ends")?,
            hold_index: engine.space("hold_index")?,
            transfers: engine.space("transfers")?,
            transfer_index: engine.space("transfer_index")?,
            open_transfers: engine.space("open_transfers")?,
            reports: engine.space("reports")?,
            meta,
            buckets,
            idempotency: Mutex::new(idempotency),
            engine,
        };
        if let Some(from) = upgrade {
            ledger.upgrade(from)?;
        }
        Ok(ledger)
    }

    /// Writes the indexes that layouts after `from` added, then marks the
    /// ledger [`LAYOUT`]. Interrupted, it runs again at the next open:
    /// what it writes is written the same again.
    fn upgrade(&self, from: u64) -> Result<(), LedgerError> {
        if from < 8 {
            // Layout 8: the active holds by location.
            let mut batch = Vec::new();
            for id in self.due_holds(u64::MAX - 1, usize::MAX)? {
                if let Some(hold) = self.hold(&id)? {
                    for location in hold_locations(&hold) {
                        let key = pair_key(location, &hold.id);
                        batch.push(Write::Put(self.hold_index.clone(), key, Vec::new()));
                    }
                }
            }
            self.engine.write(batch, false)?;
        }
        // Layout 9: the transfers in transit by location, read in slices.
        let mut after: Vec<u8> = Vec::new();
        loop {
            let slice = self
                .engine
                .range(&self.transfers, &after, &[0xff], UPGRADE_SLICE)?;
            let mut batch = Vec::new();
            for (k, v) in &slice {
                let transfer: Transfer = decode::<TransferV>(k.as_ref(), v.as_ref())?.into();
                if transfer.state == TransferState::InTransit {
                    for location in [&transfer.from, &transfer.to] {
                        let key = pair_key(location, &transfer.id);
                        batch.push(Write::Put(self.open_transfers.clone(), key, Vec::new()));
                    }
                }
            }
            self.engine.write(batch, false)?;
            match slice.last() {
                Some((k, _)) if slice.len() == UPGRADE_SLICE => after = [k.as_ref(), &[0]].concat(),
                _ => break,
            }
        }
        self.engine
            .write(vec![meta_put(&self.meta, "layout", LAYOUT)], true)
    }

    /// The engine under the ledger.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    fn read<T: DeserializeOwned>(
        &self,
        space: &E::Space,
        key: &[u8],
    ) -> Result<Option<T>, LedgerError> {
        let bytes = self.engine.get(space, key)?;
        bytes.map(|bytes| decode(key, bytes.as_ref())).transpose()
    }

    /// The distinct ids in an index keyed `location \0 id`: under
    /// `location`, or under every location (in id order) for `None`; at
    /// most `limit` entries are read.
    fn ids_by_location(
        &self,
        index: &E::Space,
        location: Option<&str>,
        limit: usize,
    ) -> Result<BTreeSet<String>, LedgerError> {
        let (from, to) = match location {
            Some(location) => (pair_key(location, ""), after_location(location)),
            None => (Vec::new(), vec![0xff]),
        };
        let entries = self.engine.range(index, &from, &to, limit)?;
        Ok((entries.iter())
            .filter_map(|(k, _)| k.as_ref().splitn(2, |b| *b == 0).nth(1))
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect())
    }

    fn buckets(&self) -> Result<MutexGuard<'_, BucketMap<E::Space>>, LedgerError> {
        self.idempotency
            .lock()
            .map_err(|_| LedgerError::Storage("the idempotency buckets' lock is poisoned".into()))
    }

    /// The keyspace of the bucket holding records decided at `at_ms`.
    fn bucket_for(&self, at_ms: u64) -> Result<E::Space, LedgerError> {
        let width = self.buckets.width_ms;
        let id = (at_ms - at_ms % width, width);
        let mut buckets = self.buckets()?;
        if let Some(space) = buckets.get(&id) {
            return Ok(space.clone());
        }
        let space = self
            .engine
            .space(&format!("{BUCKET_PREFIX}{}.{}", id.1, id.0))?;
        buckets.insert(id, space.clone());
        Ok(space)
    }

    /// The change to `location` at `seq`, and its key's previous change.
    fn get_change(
        &self,
        location: &str,
        seq: u64,
    ) -> Result<Option<(Change, Option<u64>)>, LedgerError> {
        let change = self.read::<ChangeV>(&self.log, &log_key(location, seq))?;
        Ok(change.map(|change| change.into_change(seq)))
    }
}

impl<E: Engine> Ledger for KvLedger<E> {
    fn commit(&self, group: CommitGroup) -> Result<(), LedgerError> {
        let mut batch = Vec::with_capacity(group.writes.len() * 3 + 1);
        // Each key's last state only: the batch is atomic, so the states
        // before it in the group are never seen anyway.
        let mut last: FastMap<&ItemKey, &Change> = FastMap::default();
        // Deadline keys to set (`Some(token)`) or clear, the group's last
        // word on each.
        let mut deadlines: BTreeMap<Vec<u8>, Option<u64>> = BTreeMap::new();
        for write in &group.writes {
            let change = &write.change;
            last.insert(&change.key, change);
            let lock = change.state.item().and_then(|item| item.lock.as_ref());
            if write.prior_lock_expiry != lock.map(|lock| lock.expires_at_ms) {
                if let Some(at_ms) = write.prior_lock_expiry {
                    deadlines.insert(deadline_key(at_ms, &change.key), None);
                }
                if let Some(lock) = lock {
                    let key = deadline_key(lock.expires_at_ms, &change.key);
                    deadlines.insert(key, Some(lock.token));
                }
            }
            batch.push(Write::Put(
                self.log.clone(),
                log_key(&change.key.location, change.seq),
                encode(&ChangeV::new(change, write.prior_seq))?,
            ));
        }
        for (key, change) in last {
            let record = ItemV::V1(ItemRecord {
                state: change.state.clone(),
                seq: change.seq,
            });
            batch.push(Write::Put(
                self.items.clone(),
                item_key(key),
                encode(&record)?,
            ));
        }
        for (key, token) in deadlines {
            batch.push(match token {
                Some(token) => Write::Put(self.deadlines.clone(), key, token.to_be_bytes().into()),
                None => Write::Delete(self.deadlines.clone(), key),
            });
        }
        // The same for holds: each hold's last state, and its deadline
        // moved, kept or ended.
        let mut holds: BTreeMap<&str, &Hold> = BTreeMap::new();
        let mut hold_deadlines: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for write in &group.holds {
            let hold = &write.hold;
            holds.insert(&hold.id, hold);
            if let Some(at_ms) = write.prior_expiry {
                hold_deadlines.insert(hold_deadline_key(at_ms, &hold.id), false);
            }
            if hold.state == HoldState::Active {
                hold_deadlines.insert(hold_deadline_key(hold.expires_at_ms, &hold.id), true);
            }
            if let Some(at_ms) = write.ended_at_ms {
                let key = hold_deadline_key(at_ms, &hold.id);
                batch.push(Write::Put(self.hold_ends.clone(), key, Vec::new()));
            }
        }
        for (id, hold) in holds {
            for location in hold_locations(hold) {
                let key = pair_key(location, id);
                batch.push(match hold.state {
                    HoldState::Active => Write::Put(self.hold_index.clone(), key, Vec::new()),
                    _ => Write::Delete(self.hold_index.clone(), key),
                });
            }
            let value = encode(&HoldV::V1(hold.clone()))?;
            batch.push(Write::Put(
                self.holds.clone(),
                id.as_bytes().to_vec(),
                value,
            ));
        }
        for (key, active) in hold_deadlines {
            batch.push(match active {
                true => Write::Put(self.hold_deadlines.clone(), key, Vec::new()),
                false => Write::Delete(self.hold_deadlines.clone(), key),
            });
        }
        let transfers: BTreeMap<&str, &Transfer> =
            group.transfers.iter().map(|t| (t.id.as_str(), t)).collect();
        for (id, transfer) in transfers {
            let value = encode(&TransferV::V1(transfer.clone()))?;
            batch.push(Write::Put(
                self.transfers.clone(),
                id.as_bytes().to_vec(),
                value,
            ));
            // The same keys for every step of a transfer: written again, no harm.
            for location in [&transfer.from, &transfer.to] {
                let key = pair_key(location, id);
                batch.push(Write::Put(
                    self.transfer_index.clone(),
                    key.clone(),
                    Vec::new(),
                ));
                batch.push(match transfer.state {
                    TransferState::InTransit => {
                        Write::Put(self.open_transfers.clone(), key, Vec::new())
                    }
                    TransferState::Closed => Write::Delete(self.open_transfers.clone(), key),
                });
            }
        }
        for entry in group.idempotency {
            let bucket = self.bucket_for(entry.record.at_ms)?;
            let key = pair_key(&entry.store, &entry.key);
            let record = encode(&IdempotencyV::V1(entry.record))?;
            batch.push(Write::Put(bucket, key, record));
        }
        let head = group.head.max(self.head.load(Ordering::Acquire));
        batch.push(meta_put(&self.meta, "head", head));
        self.engine.write(batch, true)?;
        self.head.store(head, Ordering::Release);
        Ok(())
    }

    fn load(&self, key: &ItemKey) -> Result<Option<ItemRecord>, LedgerError> {
        Ok(self
            .read::<ItemV>(&self.items, &item_key(key))?
            .map(Into::into))
    }

    fn idempotency(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, LedgerError> {
        let k = pair_key(store, key);
        let buckets: Vec<E::Space> = self.buckets()?.values().rev().cloned().collect();
        for bucket in buckets {
            if let Some(record) = self.read::<IdempotencyV>(&bucket, &k)? {
                return Ok(Some(record.into()));
            }
        }
        Ok(None)
    }

    fn change(&self, location: &str, seq: u64) -> Result<Option<Change>, LedgerError> {
        Ok(self.get_change(location, seq)?.map(|(change, _)| change))
    }

    fn due_locks(&self, now_ms: u64, limit: usize) -> Result<Vec<Deadline>, LedgerError> {
        let to = now_ms.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for (k, v) in self.engine.range(&self.deadlines, &[], &to, limit)? {
            let (k, v) = (k.as_ref(), v.as_ref());
            let corrupt = || LedgerError::corrupt(k, "not a lock deadline");
            let at_ms = k.get(..8).and_then(seq_of).ok_or_else(corrupt)?;
            let (location, sku) = k[8..]
                .iter()
                .position(|b| *b == 0)
                .map(|at| (&k[8..8 + at], &k[9 + at..]))
                .ok_or_else(corrupt)?;
            let key = ItemKey {
                location: String::from_utf8_lossy(location).into_owned(),
                sku: String::from_utf8_lossy(sku).into_owned(),
            };
            let token = seq_of(v).ok_or_else(corrupt)?;
            out.push(Deadline { at_ms, key, token });
        }
        Ok(out)
    }

    fn hold(&self, id: &str) -> Result<Option<Hold>, LedgerError> {
        Ok(self
            .read::<HoldV>(&self.holds, id.as_bytes())?
            .map(Into::into))
    }

    fn due_holds(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, LedgerError> {
        let to = now_ms.saturating_add(1).to_be_bytes();
        let due = self.engine.range(&self.hold_deadlines, &[], &to, limit)?;
        due.into_iter()
            .map(|(k, _)| {
                let id = k.as_ref().get(8..).filter(|id| !id.is_empty());
                let id =
                    id.ok_or_else(|| LedgerError::corrupt(k.as_ref(), "not a hold deadline"))?;
                Ok(String::from_utf8_lossy(id).into_owned())
            })
            .collect()
    }

    fn forget_holds(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError> {
        let ended = self
            .engine
            .range(&self.hold_ends, &[], &before_ms.to_be_bytes(), limit)?;
        let mut batch = Vec::with_capacity(ended.len() * 2);
        for (k, _) in ended {
            let k = k.as_ref();
            let id = k
                .get(8..)
                .ok_or_else(|| LedgerError::corrupt(k, "not a hold end"))?;
            batch.push(Write::Delete(self.holds.clone(), id.to_vec()));
            batch.push(Write::Delete(self.hold_ends.clone(), k.to_vec()));
        }
        let forgotten = batch.len() / 2;
        if forgotten > 0 {
            self.engine.write(batch, false)?;
        }
        Ok(forgotten)
    }

    fn active_holds(&self, location: &str, limit: usize) -> Result<Vec<Hold>, LedgerError> {
        let ids = self.ids_by_location(&self.hold_index, Some(location), limit)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(hold) = self.hold(&id)? {
                out.push(hold);
            }
        }
        Ok(out)
    }

    fn transfer(&self, id: &str) -> Result<Option<Transfer>, LedgerError> {
        Ok(self
            .read::<TransferV>(&self.transfers, id.as_bytes())?
            .map(Into::into))
    }

    fn transfers(
        &self,
        location: Option<&str>,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<Transfer>, LedgerError> {
        if location.is_none() && !open_only {
            let all = self.engine.range(&self.transfers, &[], &[0xff], limit)?;
            return all
                .into_iter()
                .map(|(k, v)| Ok(decode::<TransferV>(k.as_ref(), v.as_ref())?.into()))
                .collect();
        }
        let index = match open_only {
            true => &self.open_transfers,
            false => &self.transfer_index,
        };
        let ids = self.ids_by_location(index, location, limit)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(transfer) = self.transfer(&id)? {
                out.push(transfer);
            }
        }
        Ok(out)
    }

    fn head(&self) -> Result<u64, LedgerError> {
        Ok(self.head.load(Ordering::Acquire))
    }

    fn oldest(&self) -> Result<u64, LedgerError> {
        let head = self.head.load(Ordering::Acquire);
        Ok(self.oldest.load(Ordering::Acquire).min(head + 1))
    }

    fn location_changes(
        &self,
        location: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Change>, LedgerError> {
        let from = log_key(location, after.saturating_add(1).max(self.oldest()?));
        // Just past `until`'s key and before any other seq's.
        let to = [&log_key(location, until)[..], &[0]].concat();
        let mut out = Vec::new();
        for (k, v) in self.engine.range(&self.log, &from, &to, limit)? {
            let (k, v) = (k.as_ref(), v.as_ref());
            out.push(decode::<ChangeV>(k, v)?.into_change(log_seq(k)?).0);
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
        let from = match after_sku {
            Some(sku) => [&prefix[..], sku.as_bytes(), &[0]].concat(),
            None => prefix.clone(),
        };
        let entries = self
            .engine
            .range(&self.items, &from, &after_location(location), limit)?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let (k, v) = (k.as_ref(), v.as_ref());
            let sku = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((sku, decode::<ItemV>(k, v)?.into()));
        }
        Ok(out)
    }

    fn locations(&self) -> Result<Vec<String>, LedgerError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        // One seek per location, not a scan of every item.
        while let Some((k, _)) = self.engine.range(&self.items, &from, &[0xff], 1)?.pop() {
            let k = k.as_ref();
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let location = String::from_utf8_lossy(&k[..end]).into_owned();
            from = after_location(&location);
            out.push(location);
        }
        Ok(out)
    }

    fn history(&self, key: &ItemKey, limit: usize) -> Result<Vec<Change>, LedgerError> {
        let oldest = self.oldest()?;
        let mut next = self.load(key)?.map(|record| record.seq);
        let mut out = Vec::new();
        while let Some(seq) = next.filter(|s| *s >= oldest && out.len() < limit) {
            let Some((change, prior)) = self.get_change(&key.location, seq)? else {
                break;
            };
            out.push(change);
            next = prior;
        }
        Ok(out)
    }

    fn expire_idempotency(&self, before_ms: u64) -> Result<usize, LedgerError> {
        let mut expired = Vec::new();
        // Whole buckets only: one goes once its end is before `before_ms`.
        self.buckets()?.retain(|&(start, width), space| {
            let keep = start.saturating_add(width) > before_ms;
            if !keep {
                expired.push(space.clone());
            }
            keep
        });
        let dropped = expired.len();
        for space in expired {
            self.engine.drop_space(space)?;
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
        let mut batch = Vec::new();
        for location in self.locations()? {
            let (from, to) = (log_key(&location, oldest), log_key(&location, until));
            for (k, _) in self.engine.range(&self.log, &from, &to, limit)? {
                batch.push(Write::Delete(self.log.clone(), k.as_ref().to_vec()));
            }
        }
        let removed = batch.len();
        batch.push(meta_put(&self.meta, "oldest", until));
        self.engine.write(batch, false)?;
        self.oldest.store(until, Ordering::Release);
        Ok(removed)
    }

    fn save_report(&self, store: &str, report: &StoredReport) -> Result<(), LedgerError> {
        let value = encode(&ReportV::from(report))?;
        let put = Write::Put(self.reports.clone(), store.as_bytes().to_vec(), value);
        self.engine.write(vec![put], false)
    }

    fn reports(&self) -> Result<Vec<(String, StoredReport)>, LedgerError> {
        let mut out = Vec::new();
        for (k, v) in self.engine.range(&self.reports, &[], &[0xff], usize::MAX)? {
            let (k, v) = (k.as_ref(), v.as_ref());
            let store = String::from_utf8_lossy(k).into_owned();
            out.push((store, decode::<ReportV>(k, v)?.into()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract;
    use crate::engine::{MemoryEngine, MemoryLedger};

    #[test]
    fn keeps_the_contract_in_memory() {
        contract::run(&mut || {
            contract::Fresh::new(MemoryLedger::new(contract::BUCKETS).unwrap(), ())
        });
    }

    #[test]
    fn another_layout_is_refused_with_what_to_do() {
        let engine = MemoryEngine::default();
        let meta = engine.space("meta").unwrap();
        let layout = Write::Put(meta, b"layout".to_vec(), 6u64.to_be_bytes().to_vec());
        engine.write(vec![layout], true).unwrap();
        let err = KvLedger::with_engine(engine, contract::BUCKETS).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("layout 6"), "{message}");
        assert!(message.contains("empty data_dir"), "{message}");
    }

    #[test]
    fn a_ledger_of_the_layout_before_gets_its_active_holds_indexed() {
        let hold = |id: &str, state| contract::hold_at("s1", id, 900, state);
        // What layout 7 kept: the holds and the active ones' deadlines.
        let engine = MemoryEngine::default();
        let space = |name: &str| engine.space(name).unwrap();
        let put = |name: &str, key: Vec<u8>, value: Vec<u8>| Write::Put(space(name), key, value);
        let stored = |h: Hold| encode(&HoldV::V1(h)).unwrap();
        let batch = vec![
            put("meta", b"layout".to_vec(), UPGRADED.to_be_bytes().to_vec()),
            put(
                "holds",
                b"h1".to_vec(),
                stored(hold("h1", HoldState::Active)),
            ),
            put(
                "holds",
                b"h2".to_vec(),
                stored(hold("h2", HoldState::Released)),
            ),
            put("hold_deadlines", hold_deadline_key(900, "h1"), Vec::new()),
        ];
        engine.write(batch, true).unwrap();

        let ledger = KvLedger::with_engine(engine, contract::BUCKETS).unwrap();
        let active = ledger.active_holds("s1", 10).unwrap();
        assert_eq!(active.into_iter().map(|h| h.id).collect::<Vec<_>>(), ["h1"]);
        let layout = ledger.engine().get(&ledger.meta, b"layout").unwrap();
        assert_eq!(layout.as_deref().and_then(seq_of), Some(LAYOUT));
    }

    #[test]
    fn a_ledger_of_layout_8_gets_its_transfers_in_transit_indexed() {
        let transfer = |id: &str, state| contract::transfer(id, "s1", "s2", state);
        let engine = MemoryEngine::default();
        let space = |name: &str| engine.space(name).unwrap();
        let put = |name: &str, key: Vec<u8>, value: Vec<u8>| Write::Put(space(name), key, value);
        let stored = |t: Transfer| encode(&TransferV::V1(t)).unwrap();
        // More transfers than one slice of the upgrade reads, one in transit.
        let mut batch = vec![put("meta", b"layout".to_vec(), 8u64.to_be_bytes().to_vec())];
        for n in 0..UPGRADE_SLICE + 5 {
            let id = format!("t{n:06}");
            let state = match n {
                n if n == UPGRADE_SLICE + 2 => TransferState::InTransit,
                _ => TransferState::Closed,
            };
            batch.push(put(
                "transfers",
                id.clone().into_bytes(),
                stored(transfer(&id, state)),
            ));
        }
        engine.write(batch, true).unwrap();

        let ledger = KvLedger::with_engine(engine, contract::BUCKETS).unwrap();
        for location in [Some("s1"), Some("s2"), None] {
            let open = ledger.transfers(location, true, 10).unwrap();
            let ids: Vec<String> = open.into_iter().map(|t| t.id).collect();
            assert_eq!(ids, [format!("t{:06}", UPGRADE_SLICE + 2)], "{location:?}");
        }
        let layout = ledger.engine().get(&ledger.meta, b"layout").unwrap();
        assert_eq!(layout.as_deref().and_then(seq_of), Some(LAYOUT));
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
