//! A growing Bloom filter over idempotency keys.
//!
//! Almost every write carries an idempotency key never seen before, and
//! finding that out otherwise means searching memory and the runs of every
//! live bucket. A filter per bucket created by this process answers
//! "certainly absent" from memory for most of them. It never forgets a key
//! (no false negatives).
//!
//! A bucket holds as many keys as the chain writes in `idempotency_ttl`, from
//! thousands to tens of millions, so the filter grows instead of filling up:
//! it is a list of segments, each twice the size of the one before, and a
//! new segment starts when the newest holds its design load
//! ([`BITS_PER_KEY`] bits per key, about 0.8 % false positives each). A
//! lookup probes every segment; there are about log2 of (keys / first
//! capacity) of them. Bits are atomics, so inserts and lookups share a
//! segment without a lock; the list itself is behind a read-write lock that
//! is taken for writing only when a segment is added.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Bits of the first segment: 2^20 (128 KiB), about 100,000 keys.
const FIRST_BITS_LOG2: u32 = 20;
/// Bits of the largest segment: 2^31 (256 MiB); later segments stay at
/// this size.
const MAX_BITS_LOG2: u32 = 31;
/// Bits per key at a segment's design load.
const BITS_PER_KEY: u64 = 10;
/// Bit probes per key.
const PROBES: u64 = 7;

/// One segment: a classic Bloom filter of `2^bits_log2` bits.
#[derive(Debug)]
struct Segment {
    words: Box<[AtomicU64]>,
    bits_log2: u32,
    /// Keys inserted (approximately, under concurrent inserts).
    keys: AtomicU64,
}

impl Segment {
    fn new(bits_log2: u32) -> Self {
        Segment {
            words: (0..(1usize << bits_log2) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
            bits_log2,
            keys: AtomicU64::new(0),
        }
    }

    fn full(&self) -> bool {
        self.keys.load(Ordering::Relaxed) >= (1u64 << self.bits_log2) / BITS_PER_KEY
    }

    fn probes(&self, (h1, h2): (u64, u64)) -> impl Iterator<Item = (usize, u64)> + use<> {
        let mask = (1u64 << self.bits_log2) - 1;
        (0..PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&self, hashes: (u64, u64)) {
        for (word, bit) in self.probes(hashes) {
            self.words[word].fetch_or(bit, Ordering::Release);
        }
        self.keys.fetch_add(1, Ordering::Relaxed);
    }

    fn may_contain(&self, hashes: (u64, u64)) -> bool {
        self.probes(hashes)
            .all(|(word, bit)| self.words[word].load(Ordering::Acquire) & bit != 0)
    }
}

/// The filter.
#[derive(Debug)]
pub struct Bloom {
    /// Oldest first; the last takes the inserts.
    segments: RwLock<Vec<Arc<Segment>>>,
    hasher: std::hash::RandomState,
}

impl Default for Bloom {
    fn default() -> Self {
        Bloom {
            segments: RwLock::new(vec![Arc::new(Segment::new(FIRST_BITS_LOG2))]),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl Bloom {
    /// Two independent halves of one 64-bit hash of `(store, key)`, the
    /// second odd.
    fn hashes(&self, store: &str, key: &str) -> (u64, u64) {
        let mut h = self.hasher.build_hasher();
        h.write(store.as_bytes());
        h.write_u8(0);
        h.write(key.as_bytes());
        let hash = h.finish();
        (hash & 0xffff_ffff, (hash >> 32) | 1)
    }

    /// Records `(store, key)`.
    pub fn insert(&self, store: &str, key: &str) {
        let hashes = self.hashes(store, key);
        let newest = self.read().last().cloned();
        let newest = match newest {
            Some(newest) if !newest.full() => newest,
            _ => self.grow(),
        };
        newest.insert(hashes);
    }

    /// Adds a segment unless another insert just did; returns the newest.
    fn grow(&self) -> Arc<Segment> {
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match segments.last() {
            Some(newest) if !newest.full() => newest.clone(),
            newest => {
                let bits_log2 = newest
                    .map_or(FIRST_BITS_LOG2, |s| s.bits_log2 + 1)
                    .min(MAX_BITS_LOG2);
                let segment = Arc::new(Segment::new(bits_log2));
                segments.push(segment.clone());
                segment
            }
        }
    }

    /// False only when `(store, key)` was never inserted.
    pub fn may_contain(&self, store: &str, key: &str) -> bool {
        let hashes = self.hashes(store, key);
        self.read().iter().any(|s| s.may_contain(hashes))
    }

    /// How many segments the filter has grown to.
    #[cfg(test)]
    fn segments(&self) -> usize {
        self.read().len()
    }

    /// The segments, for reading (a poisoned lock still holds whole
    /// segments: they are only ever pushed).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn false_positives(bloom: &Bloom, tries: usize) -> usize {
        (0..tries)
            .filter(|i| bloom.may_contain("store-1", &format!("other-{i}")))
            .count()
    }

    #[test]
    fn never_forgets_and_rarely_imagines() {
        let bloom = Bloom::default();
        for i in 0..100_000 {
            bloom.insert("store-1", &format!("key-{i}"));
        }
        assert_eq!(bloom.segments(), 1);
        for i in 0..100_000 {
            assert!(bloom.may_contain("store-1", &format!("key-{i}")), "{i}");
        }
        // Design: about 0.8 % at this load.
        let imagined = false_positives(&bloom, 100_000);
        assert!(imagined < 1_500, "{imagined} false positives in 100,000");
        // The store is part of the key.
        let other_store = (0..1000)
            .filter(|i| bloom.may_contain("store-2", &format!("key-{i}")))
            .count();
        assert!(other_store < 20, "{other_store}");
    }

    #[test]
    fn grows_instead_of_filling_up() {
        let bloom = Bloom::default();
        // Past the first segment's design load (~105,000) into the third
        // (the second holds ~210,000 more).
        let keys = 400_000;
        for i in 0..keys {
            bloom.insert("store-1", &format!("key-{i}"));
        }
        assert_eq!(bloom.segments(), 3);
        for i in (0..keys).step_by(7) {
            assert!(bloom.may_contain("store-1", &format!("key-{i}")), "{i}");
        }
        // Each segment near its design load at most: the rate stays within
        // a few percent instead of climbing toward 100 %.
        let imagined = false_positives(&bloom, 100_000);
        assert!(imagined < 3_000, "{imagined} false positives in 100,000");
    }
}
