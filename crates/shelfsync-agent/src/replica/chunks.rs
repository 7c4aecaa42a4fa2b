//! A bootstrap keeps the items it copies a run at a time.
//!
//! sled 0.34 splits a leaf every 16 keys and walks the tree for every key,
//! so a bootstrap of 1,000,000 items written one key per item spent most
//! of its time in sled. A snapshot page is written as chunks instead: up to
//! [`CHUNK_ITEMS`] live items of one location in sku order per sled value,
//! under `c`, the bootstrap's epoch (8 bytes, big-endian), location `\0`
//! the chunk's last sku. A chunk is never rewritten: every later state of
//! a key (a change, a tombstone) is a per-key record (`i`).
//!
//! Which state of a key counts: of its per-key record and the items the
//! chunks of each epoch hold for it, the one of the latest epoch; on a tie
//! the per-key record, since changes are applied (and stamped with the
//! epoch) only after that epoch's bootstrap completed. A bootstrap that
//! completes removes the chunks and records of earlier epochs.
//!
//! The pages of one bootstrap are disjoint ranges of keys in key order, so
//! an epoch's chunks are too, and the chunk of an epoch that can hold a key
//! is the first whose last sku is not below it.

use std::iter::Peekable;

use serde::{Deserialize, Serialize};
use shelfsync_core::{Item, ItemKey, KeyState};

use super::{Record, ReplicaError, decode, storage};

/// Most items in one chunk: a local read of a chunked key decodes the
/// skus of at most this many and one item (docs/decisions.md).
pub(super) const CHUNK_ITEMS: usize = 32;
/// The prefix of chunks in the replica's tree.
const PREFIX: u8 = b'c';

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

/// The sled key of epoch `epoch`'s chunks from `key` (`location \0 sku`
/// bytes, or a prefix of them) on.
fn chunk_key(epoch: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(PREFIX);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Whether `items` can go into chunks after `after`, the last key of the
/// bootstrap's previous page: in strictly increasing key order, all past
/// it. A page out of order (which the coordinator does not send) is
/// written key by key instead, so no chunk overlaps another of its epoch.
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
    let key = chunk_key(epoch, &last.unwrap_or_default());
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

/// The record epoch `epoch`'s chunks hold for `key`, if one does.
pub(super) fn lookup(
    tree: &sled::Tree,
    epoch: u64,
    key: &ItemKey,
) -> Result<Option<Record>, ReplicaError> {
    let location = chunk_key(epoch, &key_bytes(&key.location, ""));
    let start = chunk_key(epoch, &key_bytes(&key.location, &key.sku));
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

/// The epochs that have chunks in the tree, latest first.
pub(super) fn epochs(tree: &sled::Tree) -> Result<Vec<u64>, ReplicaError> {
    let mut epochs = Vec::new();
    let mut from = vec![PREFIX];
    while let Some(entry) = tree.range(from..).next() {
        let (k, _) = entry.map_err(storage)?;
        let Some(epoch) = k
            .strip_prefix(&[PREFIX])
            .and_then(|rest| rest.get(..8))
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_be_bytes)
        else {
            break;
        };
        epochs.push(epoch);
        let Some(next) = epoch.checked_add(1) else {
            break;
        };
        from = chunk_key(next, &[]);
    }
    epochs.reverse();
    Ok(epochs)
}

/// The sled keys of every chunk of an epoch before `epoch`.
pub(super) fn keys_before(
    tree: &sled::Tree,
    epoch: u64,
) -> impl Iterator<Item = Result<sled::IVec, ReplicaError>> {
    tree.range(vec![PREFIX]..chunk_key(epoch, &[]))
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

impl Entry {
    /// Whether this state of a key counts over `other`, of the same key.
    fn wins_over(&self, other: &Entry) -> bool {
        (self.record.epoch, !self.chunked) > (other.record.epoch, !other.chunked)
    }
}

type Stored = Box<dyn Iterator<Item = Result<Entry, ReplicaError>>>;

/// The replica's keys from `start` (`location \0 sku` bytes, or a prefix
/// of them) on, in key order, each in the state that counts: per-key
/// records (prefix `keyed`) merged with the items of the chunks of each of
/// `epochs`.
pub(super) fn entries(tree: &sled::Tree, keyed: u8, epochs: &[u64], start: &[u8]) -> Merged {
    let mut from = vec![keyed];
    from.extend_from_slice(start);
    let records = tree
        .range(from..)
        .take_while(move |e| e.as_ref().map_or(true, |(k, _)| k.first() == Some(&keyed)))
        .map(|entry| {
            let (k, v) = entry.map_err(storage)?;
            Ok(Entry {
                key: k[1..].to_vec(),
                record: decode(&v)?,
                chunked: false,
            })
        });
    let mut streams = vec![(Box::new(records) as Stored).peekable()];
    for &epoch in epochs {
        let chunked = ChunkItems {
            chunks: tree.range(chunk_key(epoch, start)..),
            prefix: chunk_key(epoch, &[]),
            items: Vec::new().into_iter(),
            epoch,
            start: start.to_vec(),
        };
        streams.push((Box::new(chunked) as Stored).peekable());
    }
    Merged { streams }
}

/// The items of one epoch's chunks from a key on, one by one.
struct ChunkItems {
    chunks: sled::Iter,
    /// The sled keys of this epoch's chunks start with it.
    prefix: Vec<u8>,
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
            if !k.starts_with(&self.prefix) {
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

/// Stored iterators merged by key: per key, the state that counts
/// ([`Entry::wins_over`]); an error as soon as one stream has one.
pub(super) struct Merged {
    streams: Vec<Peekable<Stored>>,
}

impl Iterator for Merged {
    type Item = Result<Entry, ReplicaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let heads: Vec<Option<&Result<Entry, ReplicaError>>> =
            self.streams.iter_mut().map(|s| s.peek()).collect();
        let mut best: Option<(usize, &Entry)> = None;
        for (at, head) in heads.iter().enumerate() {
            match head {
                Some(Err(_)) => {
                    drop(heads);
                    return self.streams[at].next();
                }
                Some(Ok(entry)) => {
                    let better = best.is_none_or(|(_, b)| {
                        entry.key < b.key || (entry.key == b.key && entry.wins_over(b))
                    });
                    if better {
                        best = Some((at, entry));
                    }
                }
                None => {}
            }
        }
        let at = best?.0;
        drop(heads);
        let chosen = self.streams[at].next();
        if let Some(Ok(entry)) = &chosen {
            // The same key in the other streams does not count.
            for stream in &mut self.streams {
                if stream
                    .peek()
                    .is_some_and(|h| h.as_ref().is_ok_and(|e| e.key == entry.key))
                {
                    stream.next();
                }
            }
        }
        chosen
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
        assert_eq!(chunks[0].0, chunk_key(4, &key_bytes("s1", &last)));
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
        tree.insert(chunk_key(3, &key_bytes("s1", "b")), &[0xc1])
            .unwrap();
        assert!(matches!(
            lookup(&tree, 3, &key),
            Err(ReplicaError::Corrupt(_))
        ));
        assert_eq!(epochs(&tree).unwrap(), vec![3]);
        let listed: Vec<_> = entries(&tree, b'i', &[3], b"").collect();
        assert!(matches!(listed[..], [Err(ReplicaError::Corrupt(_))]));
    }
}
