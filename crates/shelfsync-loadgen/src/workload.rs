//! What each request does: the three workloads and the op mix.
//!
//! - [`Workload::Optimistic`]: `add 1` with `expected_version` from the
//!   client's version cache, as an agent that knows the version from its
//!   replica would send it; a stale cache is a version-mismatch rejection.
//! - [`Workload::Delta`]: `remove 1` without `expected_version`, the atomic
//!   decrement that never conflicts.
//! - [`Workload::Mix`]: ops drawn from a weighted [`Mix`] (for example
//!   `add=40,remove=30,reserve=20,release=10`), amount 1, no
//!   `expected_version`; stock rules may reject some of them.
//!
//! This module only decides the op; the driver fills in the key, the version
//! and the idempotency key.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use shelfsync_core::Op;

/// An amount op a mix may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `quantity += 1`.
    Add,
    /// `quantity -= 1`.
    Remove,
    /// `reserved += 1`.
    Reserve,
    /// `reserved -= 1`.
    Release,
    /// `quantity -= 1` and `reserved -= 1`.
    Fulfil,
}

impl OpKind {
    const ALL: [OpKind; 5] = [
        OpKind::Add,
        OpKind::Remove,
        OpKind::Reserve,
        OpKind::Release,
        OpKind::Fulfil,
    ];

    /// The op's name as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Reserve => "reserve",
            OpKind::Release => "release",
            OpKind::Fulfil => "fulfil",
        }
    }

    /// The op with an amount of 1.
    pub fn op(self) -> Op {
        let amount = 1;
        match self {
            OpKind::Add => Op::Add { amount },
            OpKind::Remove => Op::Remove { amount },
            OpKind::Reserve => Op::Reserve { amount },
            OpKind::Release => Op::Release { amount },
            OpKind::Fulfil => Op::Fulfil { amount },
        }
    }
}

/// A weighted choice of amount ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Ops with a positive weight, in the order given.
    weights: Vec<(OpKind, u32)>,
    /// Sum of the weights; above zero.
    total: u32,
}

/// The mix used when `--workload mix` comes without `--mix`.
pub const DEFAULT_MIX: &str = "add=40,remove=30,reserve=20,release=10";

impl Mix {
    /// Draws the next op kind, each with probability weight / total.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> OpKind {
        let mut ticket = rng.random_range(0..self.total);
        for &(kind, weight) in &self.weights {
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        // Unreachable while total is the sum of the weights; any op is fine.
        self.weights.last().map_or(OpKind::Add, |(kind, _)| *kind)
    }

    /// The ops and their weights, in the order given.
    pub fn weights(&self) -> &[(OpKind, u32)] {
        &self.weights
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: vec![
                (OpKind::Add, 40),
                (OpKind::Remove, 30),
                (OpKind::Reserve, 20),
                (OpKind::Release, 10),
            ],
            total: 100,
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// Parses `op=weight,op=weight,...` with ops among add, remove, reserve,
    /// release and fulfil, each at most once, weights whole numbers; ops with
    /// weight 0 are left out, and at least one weight must be positive.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights: Vec<(OpKind, u32)> = Vec::new();
        let mut seen = Vec::new();
        let mut total: u32 = 0;
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("invalid mix {text:?}: empty entry"));
            }
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!(
                    "invalid mix entry {part:?}: expected OP=WEIGHT, e.g. add=40"
                ));
            };
            let name = name.trim();
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown op {name:?} in mix: expected add, remove, reserve, release or fulfil"
                    )
                })?;
            if seen.contains(&kind) {
                return Err(format!("op {name:?} appears twice in the mix"));
            }
            seen.push(kind);
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("invalid weight {weight:?} for {name}: expected a whole number")
            })?;
            total = total
                .checked_add(weight)
                .filter(|t| *t <= 1_000_000)
                .ok_or_else(|| format!("the weights of mix {text:?} add up to too much"))?;
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        if total == 0 {
            return Err(format!("mix {text:?} has no op with a positive weight"));
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, weight)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={weight}", kind.name())?;
        }
        Ok(())
    }
}

/// What the writes of a run do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// `add 1` with the cached `expected_version`.
    Optimistic,
    /// `remove 1` without `expected_version`.
    Delta,
    /// Amount-1 ops drawn from the mix, without `expected_version`.
    Mix(Mix),
}

impl Workload {
    /// The workload named `name` (`optimistic`, `delta` or `mix`); `mix` is
    /// only valid with `mix` (the default mix when absent).
    ///
    /// # Errors
    /// A message for an unknown name, or a mix given to another workload.
    pub fn new(name: &str, mix: Option<Mix>) -> Result<Self, String> {
        let workload = match name {
            "optimistic" => Workload::Optimistic,
            "delta" => Workload::Delta,
            "mix" => return Ok(Workload::Mix(mix.unwrap_or_default())),
            other => {
                return Err(format!(
                    "unknown workload {other:?}: expected optimistic, delta or mix"
                ));
            }
        };
        if mix.is_some() {
            return Err(format!("--mix applies to --workload mix, not {name}"));
        }
        Ok(workload)
    }

    /// Whether writes carry `expected_version` from the version cache.
    pub fn is_optimistic(&self) -> bool {
        matches!(self, Workload::Optimistic)
    }

    /// The op of the next write.
    pub fn next_op<R: Rng + ?Sized>(&self, rng: &mut R) -> Op {
        match self {
            Workload::Optimistic => OpKind::Add.op(),
            Workload::Delta => OpKind::Remove.op(),
            Workload::Mix(mix) => mix.pick(rng).op(),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Optimistic => f.write_str("optimistic"),
            Workload::Delta => f.write_str("delta"),
            Workload::Mix(mix) => write!(f, "mix:{mix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn mixes_parse_and_print_back() {
        let cases = [
            (DEFAULT_MIX, DEFAULT_MIX, 100),
            ("add=1", "add=1", 1),
            (" reserve = 5 , fulfil=5,add=0", "reserve=5,fulfil=5", 10),
            (
                "fulfil=1,release=2,reserve=3,remove=4,add=5",
                "fulfil=1,release=2,reserve=3,remove=4,add=5",
                15,
            ),
        ];
        for (text, shown, total) in cases {
            let mix: Mix = text.parse().unwrap();
            assert_eq!(mix.to_string(), shown, "{text}");
            assert_eq!(mix.total, total, "{text}");
            assert_eq!(shown.parse::<Mix>().unwrap(), mix);
        }
        assert_eq!(DEFAULT_MIX.parse::<Mix>().unwrap(), Mix::default());
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        for (text, needle) in [
            ("", "empty entry"),
            ("add=40,", "empty entry"),
            ("add", "expected OP=WEIGHT"),
            ("set=1", "unknown op \"set\""),
            ("delete=1", "unknown op"),
            ("add=x", "invalid weight"),
            ("add=-1", "invalid weight"),
            ("add=1.5", "invalid weight"),
            ("add=1,add=2", "appears twice"),
            ("add=0,remove=0", "no op with a positive weight"),
            ("add=5000000000", "invalid weight"),
            ("add=900000,remove=900000", "too much"),
        ] {
            let err = text.parse::<Mix>().unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn mix_draws_follow_the_weights() {
        let mix: Mix = "add=70,remove=0,fulfil=30".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(11);
        let (mut add, mut fulfil) = (0, 0);
        for _ in 0..10_000 {
            match mix.pick(&mut rng) {
                OpKind::Add => add += 1,
                OpKind::Fulfil => fulfil += 1,
                other => panic!("drew {other:?}, which has no weight"),
            }
        }
        assert!((6_500..7_500).contains(&add), "add {add}");
        assert!((2_500..3_500).contains(&fulfil), "fulfil {fulfil}");
    }

    #[test]
    fn workloads_build_their_ops() {
        let mut rng = SmallRng::seed_from_u64(5);
        let optimistic = Workload::new("optimistic", None).unwrap();
        assert!(optimistic.is_optimistic());
        assert_eq!(optimistic.next_op(&mut rng), Op::Add { amount: 1 });
        let delta = Workload::new("delta", None).unwrap();
        assert!(!delta.is_optimistic());
        assert_eq!(delta.next_op(&mut rng), Op::Remove { amount: 1 });
        let mix = Workload::new("mix", Some("release=1".parse().unwrap())).unwrap();
        assert_eq!(mix.next_op(&mut rng), Op::Release { amount: 1 });
        assert_eq!(mix.to_string(), "mix:release=1");
        assert_eq!(
            Workload::new("mix", None).unwrap().to_string(),
            format!("mix:{DEFAULT_MIX}")
        );
        for kind in OpKind::ALL {
            kind.op().validate().unwrap();
            assert_eq!(kind.op().kind(), kind.name());
        }
    }

    #[test]
    fn bad_workloads_are_refused() {
        let err = Workload::new("pessimistic", None).unwrap_err();
        assert!(err.contains("expected optimistic, delta or mix"), "{err}");
        let err = Workload::new("delta", Some(Mix::default())).unwrap_err();
        assert!(err.contains("--mix applies to --workload mix"), "{err}");
    }
}
