//! The embedded ledger on sled.
//!
//! Everything lives in one sled tree under one-byte prefixes, so that one
//! `sled::Batch` covers an item, its change-log entry, its history index
//! entry, its idempotency record and the new head: after a crash they are
//! all present or all absent.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `i` | location `\0` sku | [`ItemRecord`] |
//! | `c` | seq (8 bytes, big-endian) | [`Change`] |
//! | `h` | location `\0` sku `\0` seq | empty: history index |
//! | `d` | store `\0` idempotency key | [`IdempotencyRecord`] |
//! | `x` | at_ms (8 bytes BE) store `\0` idempotency key | empty: expiry index |
//! | `m` | `head` / `oldest` | u64 big-endian |
//! | `r` | store | [`StoredReport`] |
//!
//! Values are msgpack wrapped in a version envelope ([`Stored`]), so a later
//! release can read records written by this one.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::ItemKey;
use shelfsync_proto::Change;

use super::{CommitBatch, IdempotencyRecord, ItemRecord, Ledger, LedgerError, StoredReport};

const HEAD: &[u8] = b"mhead";
const OLDEST: &[u8] = b"moldest";

/// Version envelope of every stored value.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    /// The first record format.
    V1(T),
}

/// The sled-backed ledger.
#[derive(Debug, Clone)]
pub struct SledLedger {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledLedger {
    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| LedgerError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let tree = db.open_tree("ledger").map_err(storage)?;
        Ok(SledLedger { db, tree })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LedgerError> {
        self.tree
            .get(key)
            .map_err(storage)?
            .map(|value| decode(key, &value))
            .transpose()
    }

    fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, LedgerError> {
        match self.tree.get(key).map_err(storage)? {
            None => Ok(None),
            Some(v) => Ok(Some(u64::from_be_bytes(v.as_ref().try_into().map_err(
                |_| LedgerError::Corrupt {
                    key: printable(key),
                    detail: "expected 8 bytes".into(),
                },
            )?))),
        }
    }
}

fn storage(err: sled::Error) -> LedgerError {
    LedgerError::Storage(err.to_string())
}

fn encode<T: Serialize>(value: T) -> Result<Vec<u8>, LedgerError> {
    rmp_serde::to_vec_named(&Stored::V1(value)).map_err(|e| LedgerError::Storage(e.to_string()))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, LedgerError> {
    match rmp_serde::from_slice::<Stored<T>>(bytes) {
        Ok(Stored::V1(value)) => Ok(value),
        Err(e) => Err(LedgerError::Corrupt {
            key: printable(key),
            detail: e.to_string(),
        }),
    }
}

fn printable(key: &[u8]) -> String {
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

fn history_prefix(key: &ItemKey) -> Vec<u8> {
    let mut k = item_key(key);
    k[0] = b'h';
    k.push(0);
    k
}

fn history_key(key: &ItemKey, seq: u64) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn idempotency_key(store: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + store.len() + key.len());
    k.push(b'd');
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn expiry_key(at_ms: u64, store: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + store.len() + key.len());
    k.push(b'x');
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
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
        self.get(&idempotency_key(store, key))
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), LedgerError> {
        let mut b = sled::Batch::default();
        for write in &batch.writes {
            let change = &write.change;
            let record = ItemRecord {
                state: change.state.clone(),
                seq: change.seq,
            };
            b.insert(item_key(&change.key), encode(&record)?);
            b.insert(&change_key(change.seq), encode(change)?);
            b.insert(history_key(&change.key, change.seq), &[] as &[u8]);
        }
        for (store, key, record) in &batch.idempotency {
            b.insert(idempotency_key(store, key), encode(record)?);
            b.insert(expiry_key(record.at_ms, store, key), &[] as &[u8]);
        }
        b.insert(HEAD, &batch.head.to_be_bytes());
        self.tree.apply_batch(b).map_err(storage)
    }

    fn flush(&self) -> Result<(), LedgerError> {
        self.db.flush().map(|_| ()).map_err(storage)
    }

    fn head(&self) -> Result<u64, LedgerError> {
        Ok(self.get_u64(HEAD)?.unwrap_or(0))
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
        let start = change_key(after.saturating_add(1));
        let end = change_key(until);
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.map_err(storage)?;
                decode(&k, &v)
            })
            .collect()
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
        for entry in self.tree.scan_prefix(history_prefix(key)).rev() {
            let (k, _) = entry.map_err(storage)?;
            if out.len() >= limit {
                break;
            }
            let Some(seq) = seq_of(&k) else { continue };
            if let Some(change) = self.get(&change_key(seq))? {
                out.push(change);
            }
        }
        Ok(out)
    }

    fn expire_idempotency(&self, before_ms: u64, limit: usize) -> Result<usize, LedgerError> {
        let end = {
            let mut k = vec![b'x'];
            k.extend_from_slice(&before_ms.to_be_bytes());
            k
        };
        let mut removed = 0;
        for entry in self.tree.range(b"x".to_vec()..end).take(limit) {
            let (index_key, _) = entry.map_err(storage)?;
            let rest = &index_key[9..];
            if let Some(split) = rest.iter().position(|b| *b == 0) {
                let store = String::from_utf8_lossy(&rest[..split]);
                let key = String::from_utf8_lossy(&rest[split + 1..]);
                let record_key = idempotency_key(&store, &key);
                if let Some(old) = self.tree.get(&record_key).map_err(storage)? {
                    let record: IdempotencyRecord = decode(&record_key, &old)?;
                    // Only remove the record this index entry points at: the
                    // key may have been reused since with a newer record.
                    if record.at_ms < before_ms {
                        let swapped = self
                            .tree
                            .compare_and_swap(&record_key, Some(old), None as Option<&[u8]>)
                            .map_err(storage)?;
                        removed += usize::from(swapped.is_ok());
                    }
                }
            }
            self.tree.remove(&index_key).map_err(storage)?;
        }
        Ok(removed)
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
        for change in self.changes(oldest.saturating_sub(1), until - 1, limit)? {
            b.remove(&change_key(change.seq));
            b.remove(history_key(&change.key, change.seq));
            removed += 1;
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
