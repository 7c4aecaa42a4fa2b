//! Which key each request writes: the key space and how keys are drawn.
//!
//! A run works on `keys` items in one location, with skus `k000000`,
//! `k000001`, ... ([`sku`]). For every request a [`KeyPicker`] draws an index
//! in `0..keys` from a [`KeyDistribution`]: uniform, one hot key (always index
//! 0), or Zipf, where index 0 is the most popular key and index `i` is
//! chosen with a weight of `1 / (i + 1)^exponent`. Parsing and drawing are
//! pure; the caller brings the random number generator.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// The Zipf exponent used when `--distribution zipf` gives none.
pub const DEFAULT_ZIPF_EXPONENT: f64 = 0.99;

/// How the key of each request is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Always the first key: every writer contends on one item.
    Hot,
    /// Zipf over the key ranks: a few keys take most of the writes.
    Zipf {
        /// The rank exponent; larger is more skewed. Positive and finite.
        exponent: f64,
    },
}

impl FromStr for KeyDistribution {
    type Err = String;

    /// Parses `uniform`, `hot`, `zipf` or `zipf:EXPONENT`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uniform" => return Ok(KeyDistribution::Uniform),
            "hot" => return Ok(KeyDistribution::Hot),
            "zipf" => {
                return Ok(KeyDistribution::Zipf {
                    exponent: DEFAULT_ZIPF_EXPONENT,
                });
            }
            _ => {}
        }
        let Some(exponent) = text.strip_prefix("zipf:") else {
            return Err(format!(
                "unknown distribution {text:?}: expected uniform, hot, zipf or zipf:EXPONENT"
            ));
        };
        let exponent: f64 = exponent
            .parse()
            .map_err(|_| format!("invalid zipf exponent {exponent:?}: expected a number"))?;
        if !(exponent.is_finite() && exponent > 0.0) {
            return Err(format!(
                "invalid zipf exponent {exponent}: it must be above 0 (use uniform for 0)"
            ));
        }
        Ok(KeyDistribution::Zipf { exponent })
    }
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDistribution::Uniform => f.write_str("uniform"),
            KeyDistribution::Hot => f.write_str("hot"),
            KeyDistribution::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

/// The sku of the key with index `index`: `k` and at least six digits.
pub fn sku(index: u64) -> String {
    format!("k{index:06}")
}

/// Draws key indexes in `0..keys` from a distribution.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    keys: u64,
    draw: Draw,
}

#[derive(Debug, Clone)]
enum Draw {
    Uniform,
    Hot,
    Zipf(Zipf<f64>),
}

impl KeyPicker {
    /// A picker over `keys` keys (at least 1).
    ///
    /// # Errors
    /// A message when `keys` is 0 or the Zipf parameters are unusable.
    pub fn new(distribution: KeyDistribution, keys: u64) -> Result<Self, String> {
        if keys == 0 {
            return Err("the key space needs at least one key".into());
        }
        let draw = match distribution {
            KeyDistribution::Uniform => Draw::Uniform,
            KeyDistribution::Hot => Draw::Hot,
            // The key count is at most a few million, exact in an f64.
            KeyDistribution::Zipf { exponent } => Draw::Zipf(
                Zipf::new(keys as f64, exponent)
                    .map_err(|e| format!("invalid zipf parameters: {e}"))?,
            ),
        };
        Ok(KeyPicker { keys, draw })
    }

    /// How many keys the picker draws from.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The index of the next key, in `0..keys`.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.draw {
            Draw::Uniform => rng.random_range(0..self.keys),
            Draw::Hot => 0,
            Draw::Zipf(zipf) => {
                // Zipf draws ranks 1..=keys as floats; rank 1 is index 0.
                let rank = zipf.sample(rng);
                (rank as u64).clamp(1, self.keys) - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn distributions_parse_and_print_back() {
        let cases = [
            ("uniform", KeyDistribution::Uniform, "uniform"),
            ("hot", KeyDistribution::Hot, "hot"),
            (
                "zipf",
                KeyDistribution::Zipf { exponent: 0.99 },
                "zipf:0.99",
            ),
            (
                "zipf:1.2",
                KeyDistribution::Zipf { exponent: 1.2 },
                "zipf:1.2",
            ),
            ("zipf:2", KeyDistribution::Zipf { exponent: 2.0 }, "zipf:2"),
        ];
        for (text, want, shown) in cases {
            let got: KeyDistribution = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), shown);
            assert_eq!(shown.parse::<KeyDistribution>().unwrap(), want);
        }
    }

    #[test]
    fn bad_distributions_are_refused_with_a_reason() {
        for (text, needle) in [
            ("", "unknown distribution"),
            ("normal", "expected uniform, hot, zipf"),
            ("zipf:", "invalid zipf exponent"),
            ("zipf:x", "invalid zipf exponent"),
            ("zipf:0", "must be above 0"),
            ("zipf:-1", "must be above 0"),
            ("zipf:inf", "must be above 0"),
            ("zipf:NaN", "must be above 0"),
            ("Uniform", "unknown distribution"),
        ] {
            let err = text.parse::<KeyDistribution>().unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn skus_are_fixed_width_and_valid() {
        assert_eq!(sku(0), "k000000");
        assert_eq!(sku(42), "k000042");
        assert_eq!(sku(1_234_567), "k1234567");
        for i in [0, 9_999, 10_000_000] {
            shelfsync_core::item::validate_id("sku", &sku(i)).unwrap();
        }
    }

    #[test]
    fn every_distribution_stays_in_bounds() {
        let mut rng = SmallRng::seed_from_u64(7);
        for keys in [1, 2, 10, 10_000] {
            for distribution in [
                KeyDistribution::Uniform,
                KeyDistribution::Hot,
                KeyDistribution::Zipf { exponent: 0.5 },
                KeyDistribution::Zipf { exponent: 0.99 },
                KeyDistribution::Zipf { exponent: 1.0 },
                KeyDistribution::Zipf { exponent: 3.0 },
            ] {
                let picker = KeyPicker::new(distribution, keys).unwrap();
                for _ in 0..5_000 {
                    let i = picker.pick(&mut rng);
                    assert!(i < keys, "{distribution} over {keys}: drew {i}");
                }
            }
        }
    }

    #[test]
    fn hot_is_always_the_first_key_and_uniform_covers_the_space() {
        let mut rng = SmallRng::seed_from_u64(1);
        let hot = KeyPicker::new(KeyDistribution::Hot, 100).unwrap();
        assert!((0..1000).all(|_| hot.pick(&mut rng) == 0));

        let uniform = KeyPicker::new(KeyDistribution::Uniform, 10).unwrap();
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[uniform.pick(&mut rng) as usize] += 1;
        }
        // Each key expects 1000 draws; 700 is far below any plausible run.
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
    }

    #[test]
    fn zipf_favours_the_first_keys() {
        let mut rng = SmallRng::seed_from_u64(3);
        let zipf = KeyPicker::new(KeyDistribution::Zipf { exponent: 0.99 }, 10_000).unwrap();
        let draws = 100_000;
        let mut first = 0;
        let mut top_ten = 0;
        for _ in 0..draws {
            let i = zipf.pick(&mut rng);
            first += u32::from(i == 0);
            top_ten += u32::from(i < 10);
        }
        // With s = 0.99 over 10,000 keys, key 0 gets about 10% of the draws
        // and the first ten about 29%; uniform would give 0.01% and 0.1%.
        assert!(first > draws / 20, "key 0 drawn {first} times");
        assert!(top_ten > draws / 5, "top ten drawn {top_ten} times");
        assert!(first < draws / 5, "key 0 drawn {first} times");
    }

    #[test]
    fn zero_keys_are_refused() {
        assert!(KeyPicker::new(KeyDistribution::Uniform, 0).is_err());
    }
}
