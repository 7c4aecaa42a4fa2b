//! A small pseudo-random generator for test workloads and fault injection.
//!
//! SplitMix64: fast, good enough to spread ops over keys and to make garbage
//! datagrams, and seedable, so a failing run can be repeated by its seed.
//! Not for anything that needs unpredictability.

use std::time::{SystemTime, UNIX_EPOCH};

/// A seeded pseudo-random generator.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator that produces the same sequence for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator seeded from the clock; print [`Rng::seed_from_clock`]'s
    /// value and use [`Rng::seeded`] to repeat a run.
    pub fn from_clock() -> Self {
        Rng::seeded(Rng::seed_from_clock())
    }

    /// A seed taken from the clock.
    pub fn seed_from_clock() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // The modulo bias is irrelevant for test workloads.
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::seeded(7), Rng::seeded(7));
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert!((0..1000).all(|_| a.below(5) < 5));
    }
}
