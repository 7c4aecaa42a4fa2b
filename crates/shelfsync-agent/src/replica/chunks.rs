//! A bootstrap into an empty replica keeps its items a run at a time.
//!
//! sled 0.34 splits a leaf every 16 keys and walks the tree for every key,
//! so a bootstrap of 1,000,000 items written one key per item spent most
//! of its time in sled. A snapshot page into an empty replica is written
//! as chunks instead: up to [`CHUNK_ITEMS`] live items of one location in
//! sku order per sled value, under `c` location `\0` the chunk's last sku.
//! A chunk's items are never rewritten: every later state of a key (a
//! change, a tombstone, a page of a later bootstrap) is a per-key record
//! (`i`), which takes precedence over the chunk's item. That holds because
//! chunks are only written while the replica has no per-key record at all,
//! and a bootstrap into a replica that holds anything writes per-key
//! records and removes every chunk when it completes.
//!
//! The pages of one bootstrap are disjoint ranges of keys in key order, so
//! chunks are too, and the chunk that can hold a key is the first whose
//! last sku is not below it.

use std::iter::Peekable;

use serde::{Deserialize, Serialize};
use shelfsync_core::{Item, ItemKey, KeyState};

use super::{Record, ReplicaError, decode, storage};

/// Most items in one chunk: a local read of a chunked key decodes at most
/// this many, and 32 per value made the bootstrap of 1,000,000 items
/// about ten times faster than one per value (docs/decisions.md).
pub(super) const CHUNK_ITEMS: usize = 32;
/// The prefix of chunks in the replica's tree.
pub(super) const PREFIX: u8 = b'c';

/// Live items of one location, in sku order, as a bootstrap copied them.
/// Each item is encoded on its own, so that a read decodes the skus and
/// the one item it wants (borrowed from the stored value), not all.
#[derive(Serialize, Deserialize)]
struct Chunk<'a> {
    /// The bootstrap epoch that wrote it.
    epoch: u64,
    #[serde(borrow)]
    skus: Vec<&'a str>,
    #[serde(borrow)]
    items: Vec<&'a serde_bytes::Bytes>,
}

/// Version envelope of a chunk (compact: fields by position).
#[derive(Serialize, Deserialize)]
enum Versioned<'a> {
    #[serde(borrow)]
    V1(Chunk<'a>),
}

fn corrupt(err: rmp_serde::decode::Error) -> ReplicaError {
    ReplicaError::Corrupt(err.to_string())
}

fn encode_compact<T: Serialize>(value: &T) -> Result<Vec<u8>, ReplicaError> {
    rmp_serde::to_vec(value).map_err(|e| ReplicaError::Storage(e.to_string()))
}

fn decode_chunk(bytes: &[u8]) -> Result<Chunk<'_>, ReplicaError> {
    let Versioned::V1(chunk) = rmp_serde::from_slice(bytes).map_err(corrupt)?;
    if chunk.skus.len() != chunk.items.len() {
        return Err(ReplicaError::Corrupt("chunk with unpaired skus".into()));
    }
    Ok(chunk)
}

fn decode_item(bytes: &[u8]) -> Result<Item, ReplicaError> {
    rmp_serde::from_slice(bytes).map_err(corrupt)
}

/// `location \0 sku`: the order of keys in the replica, without a prefix.
pub(super) fn key_bytes(location: &str, sku: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + location.len() + sku.len());
    k.extend_from_slice(location.as_bytes());
    k.push(0);
    k.extend_from_slice(sku.as_bytes());
    k
}

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(prefix);
    k.extend_from_slice(key);
    k
}

/// Whether `items` can go into chunks after `after`, the last key of the
/// bootstrap's previous page: in strictly increasing key order, all past
/// it. A page out of order (which the coordinator does not send) is
/// written key by key instead, so no chunk ever overlaps another.
pub(super) fn in_order(items: &[Item], after: Option<&ItemKey>) -> bool {
    let first_after = match (items.first(), after) {
        (Some(first), Some(after)) => {
            key_bytes(&first.location, &first.sku) > key_bytes(&after.location, &after.sku)
        }
        _ => true,
    };
    first_after
        && items.windows(2).all(|pair| {
            key_bytes(&pair[0].location, &pair[0].sku) < key_bytes(&pair[1].location, &pair[1].sku)
        })
}

/// A sled key and its value.
pub(super) type KeyValue = (Vec<u8>, Vec<u8>);

/// The chunks of one page (`items` [`in_order`]), stamped `epoch`, as
/// `(sled key, value)`.
pub(super) fn chunks(items: Vec<Item>, epoch: u64) -> Result<Vec<KeyValue>, ReplicaError> {
    let mut out = Vec::with_capacity(items.len() / CHUNK_ITEMS + 1);
    let mut run: Vec<Item> = Vec::with_capacity(CHUNK_ITEMS);
    for item in items {
        let other_location = run
            .last()
            .is_some_and(|last| last.location != item.location);
        if run.len() == CHUNK_ITEMS || other_location {
            out.push(chunk_entry(std::mem::take(&mut run), epoch)?);
        }
        run.push(item);
    }
    if !run.is_empty() {
        out.push(chunk_entry(run, epoch)?);
    }
    Ok(out)
}

fn chunk_entry(items: Vec<Item>, epoch: u64) -> Result<KeyValue, ReplicaError> {
    let last = items.last().map(|i| key_bytes(&i.location, &i.sku));
    let key = prefixed(PREFIX, &last.unwrap_or_default());
    let encoded = items
        .iter()
        .map(encode_compact)
        .collect::<Result<Vec<_>, _>>()?;
    let chunk = Chunk {
        epoch,
        skus: items.iter().map(|i| i.sku.as_str()).collect(),
        items: encoded.iter().map(|b| serde_bytes::Bytes::new(b)).collect(),
    };
    Ok((key, encode_compact(&Versioned::V1(chunk))?))
}

/// The record a chunk holds for `key`, if one does.
pub(super) fn lookup(tree: &sled::Tree, key: &ItemKey) -> Result<Option<Record>, ReplicaError> {
    let location = prefixed(PREFIX, &key_bytes(&key.location, ""));
    let start = prefixed(PREFIX, &key_bytes(&key.location, &key.sku));
    let Some(entry) = tree.range(start..).next() else {
        return Ok(None);
    };
    let (k, v) = entry.map_err(storage)?;
    if !k.starts_with(&location) {
        return Ok(None);
    }
    let chunk = decode_chunk(&v)?;
    let Ok(at) = chunk.skus.binary_search(&key.sku.as_str()) else {
        return Ok(None);
    };
    Ok(Some(Record {
        state: KeyState::Live(decode_item(chunk.items[at])?),
        epoch: chunk.epoch,
    }))
}

/// Whether the tree holds any chunk.
pub(super) fn any(tree: &sled::Tree) -> bool {
    tree.scan_prefix([PREFIX]).next().is_some()
}

/// The sled keys of every chunk.
pub(super) fn keys(tree: &sled::Tree) -> impl Iterator<Item = Result<sled::IVec, ReplicaError>> {
    tree.scan_prefix([PREFIX])
        .keys()
        .map(|k| k.map_err(storage))
}

/// One key of the replica as stored.
pub(super) struct Entry {
    /// `location \0 sku`.
    pub key: Vec<u8>,
    pub record: Record,
    /// Whether it is a chunk's item (else a per-key record).
    pub chunked: bool,
}

type Stored = Box<dyn Iterator<Item = Result<Entry, ReplicaError>>>;

/// The replica's keys from `start` (`location \0 sku` bytes, or a prefix
/// of them) on, in key order: per-key records (`prefix` `i`) over the
/// chunks' items of the same key.
pub(super) fn entries(tree: &sled::Tree, keyed: u8, start: &[u8]) -> Merged {
    let records = tree
        .range(prefixed(keyed, start)..)
        .take_while(move |e| e.as_ref().map_or(true, |(k, _)| k.first() == Some(&keyed)))
        .map(|entry| {
            let (k, v) = entry.map_err(storage)?;
            Ok(Entry {
                key: k[1..].to_vec(),
                record: decode(&v)?,
                chunked: false,
            })
        });
    let chunked = ChunkItems {
        chunks: tree.range(prefixed(PREFIX, start)..),
        items: Vec::new().into_iter(),
        epoch: 0,
        start: start.to_vec(),
    };
    Merged {
        records: (Box::new(records) as Stored).peekable(),
        chunked: (Box::new(chunked) as Stored).peekable(),
    }
}

/// The items of the chunks from a key on, one by one.
struct ChunkItems {
    chunks: sled::Iter,
    items: std::vec::IntoIter<Result<Item, ReplicaError>>,
    epoch: u64,
    /// Items before it (in the first chunk) are skipped.
    start: Vec<u8>,
}

impl Iterator for ChunkItems {
    type Item = Result<Entry, ReplicaError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.items.next() {
                let item = match item {
                    Ok(item) => item,
                    Err(err) => return Some(Err(err)),
                };
                let key = key_bytes(&item.location, &item.sku);
                if key < self.start {
                    continue;
                }
                let record = Record {
                    state: KeyState::Live(item),
                    epoch: self.epoch,
                };
                return Some(Ok(Entry {
                    key,
                    record,
                    chunked: true,
                }));
            }
            let (k, v) = match self.chunks.next()? {
                Ok(entry) => entry,
                Err(err) => return Some(Err(storage(err))),
            };
            if k.first() != Some(&PREFIX) {
                return None;
            }
            match decode_chunk(&v) {
                Ok(chunk) => {
                    self.epoch = chunk.epoch;
                    let items = chunk.items.iter().map(|bytes| decode_item(bytes));
                    self.items = items.collect::<Vec<_>>().into_iter();
                }
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

/// Two stored iterators merged by key, the per-key record winning a tie.
pub(super) struct Merged {
    records: Peekable<Stored>,
    chunked: Peekable<Stored>,
}

impl Iterator for Merged {
    type Item = Result<Entry, ReplicaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.records.peek(), self.chunked.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) | (Some(_), None) => std::cmp::Ordering::Less,
            (_, Some(Err(_))) | (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Ok(r)), Some(Ok(c))) => r.key.cmp(&c.key),
        };
        match order {
            std::cmp::Ordering::Less => self.records.next(),
            std::cmp::Ordering::Greater => self.chunked.next(),
            std::cmp::Ordering::Equal => {
                self.chunked.next();
                self.records.next()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(location: &str, sku: &str) -> Item {
        Item {
            location: location.into(),
            sku: sku.into(),
            name: "n".into(),
            version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_page_goes_into_chunks_only_in_key_order_after_the_last_page() {
        let key = |l: &str, s: &str| ItemKey::new(l, s).unwrap();
        let (a, b, b2) = (item("s1", "a"), item("s1", "b"), item("s2", "a"));
        let cases: Vec<(Vec<Item>, Option<ItemKey>, bool)> = vec![
            (vec![], None, true),
            (vec![], Some(key("s1", "z")), true),
            (vec![a.clone(), b.clone(), b2.clone()], None, true),
            (vec![b.clone(), a.clone()], None, false),
            (vec![a.clone(), a.clone()], None, false),
            (vec![b.clone()], Some(key("s1", "a")), true),
            (vec![b.clone()], Some(key("s1", "b")), false),
            (vec![a.clone()], Some(key("s1", "b")), false),
            // "s1" sorts before "s1x" however their skus compare.
            (vec![item("s1x", "a")], Some(key("s1", "z")), true),
        ];
        for (items, after, expected) in cases {
            assert_eq!(
                in_order(&items, after.as_ref()),
                expected,
                "{items:?} after {after:?}"
            );
        }
    }

    #[test]
    fn chunks_hold_one_location_at_most_chunk_items_each() {
        let mut items: Vec<Item> = (0..CHUNK_ITEMS + 3)
            .map(|i| item("s1", &format!("k{i:03}")))
            .collect();
        items.push(item("s2", "a"));
        let chunks = chunks(items.clone(), 4).unwrap();
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|(_, v)| decode_chunk(v).unwrap().items.len())
            .collect();
        assert_eq!(sizes, vec![CHUNK_ITEMS, 3, 1]);
        let last = format!("k{:03}", CHUNK_ITEMS - 1);
        assert_eq!(chunks[0].0, prefixed(PREFIX, &key_bytes("s1", &last)));
        let chunk = decode_chunk(&chunks[1].1).unwrap();
        assert_eq!(chunk.epoch, 4);
        assert_eq!(decode_item(chunk.items[2]).unwrap(), items[CHUNK_ITEMS + 2]);
        assert_eq!(chunk.skus[2], items[CHUNK_ITEMS + 2].sku);
    }

    #[test]
    fn a_chunk_that_does_not_decode_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("t").unwrap();
        let key = ItemKey::new("s1", "a").unwrap();
        tree.insert(prefixed(PREFIX, &key_bytes("s1", "b")), &[0xc1])
            .unwrap();
        assert!(matches!(lookup(&tree, &key), Err(ReplicaError::Corrupt(_))));
        let listed: Vec<_> = entries(&tree, b'i', b"").collect();
        assert!(matches!(listed[..], [Err(ReplicaError::Corrupt(_))]));
    }
}
