//! What each request does: the workloads, the op mix, and how an answered
//! op counts.
//!
//! - [`Workload::Optimistic`]: `add 1` with `expected_version` from the
//!   client's version cache, as an agent that knows the version from its
//!   replica would send it; a stale cache is a version-mismatch rejection.
//! - [`Workload::Delta`]: `remove 1` without `expected_version`, the atomic
//!   decrement that never conflicts.
//! - [`Workload::Mix`]: ops drawn from a weighted [`Mix`] (for example
//!   `add=40,remove=30,reserve=20,release=10`), amount 1, no
//!   `expected_version`; stock rules may reject some of them.
//! - [`Workload::HoldThenFulfil`]: a cart of `lines` distinct keys held
//!   (1 unit each), then the hold fulfilled: two requests, two commits and
//!   two item writes per line; the cart is one op.
//! - [`Workload::Batch`]: one batch of `lines` `remove 1` lines on distinct
//!   keys, all or none: one commit, one item write per line; the batch is
//!   one op.
//!
//! This module only decides the op; the driver fills in the key, the version
//! and the idempotency key, and [`crate::cart`] builds the requests of the
//! multi-key workloads. Every op ends as one [`Outcome`].

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use shelfsync_core::Op;
use shelfsync_proto::{ErrorCode, MAX_BATCH_LINES};

/// Lines per cart or batch when `--lines` is not given.
pub const DEFAULT_LINES: usize = 3;

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
    /// A hold of 1 unit on each of `lines` distinct keys, then its fulfil.
    HoldThenFulfil {
        /// Lines per cart, 1..=[`MAX_BATCH_LINES`].
        lines: usize,
    },
    /// One batch of `remove 1` on each of `lines` distinct keys.
    Batch {
        /// Lines per batch, 1..=[`MAX_BATCH_LINES`].
        lines: usize,
    },
}

impl Workload {
    /// The workload named `name` (`optimistic`, `delta`, `mix`,
    /// `hold-then-fulfil` or `batch`); `mix` is only valid with `mix` (the
    /// default mix when absent), `lines` only with `hold-then-fulfil` and
    /// `batch` ([`DEFAULT_LINES`] when absent).
    ///
    /// # Errors
    /// A message for an unknown name, a mix or lines given to a workload
    /// that takes none, or a line count outside 1..=[`MAX_BATCH_LINES`].
    pub fn new(name: &str, mix: Option<Mix>, lines: Option<usize>) -> Result<Self, String> {
        let cart_lines = || {
            let lines = lines.unwrap_or(DEFAULT_LINES);
            if (1..=MAX_BATCH_LINES).contains(&lines) {
                Ok(lines)
            } else {
                Err(format!("--lines must be between 1 and {MAX_BATCH_LINES}"))
            }
        };
        let workload = match name {
            "optimistic" => Workload::Optimistic,
            "delta" => Workload::Delta,
            "mix" => Workload::Mix(mix.clone().unwrap_or_default()),
            "hold-then-fulfil" => Workload::HoldThenFulfil {
                lines: cart_lines()?,
            },
            "batch" => Workload::Batch {
                lines: cart_lines()?,
            },
            other => {
                return Err(format!(
                    "unknown workload {other:?}: expected optimistic, delta, mix, \
                     hold-then-fulfil or batch"
                ));
            }
        };
        if mix.is_some() && !matches!(workload, Workload::Mix(_)) {
            return Err(format!("--mix applies to --workload mix, not {name}"));
        }
        if lines.is_some() && workload.lines().is_none() {
            return Err(format!(
                "--lines applies to --workload hold-then-fulfil or batch, not {name}"
            ));
        }
        Ok(workload)
    }

    /// Whether writes carry `expected_version` from the version cache.
    pub fn is_optimistic(&self) -> bool {
        matches!(self, Workload::Optimistic)
    }

    /// The lines of each op of a multi-key workload (distinct keys); `None`
    /// for the workloads that write one key per op.
    pub fn lines(&self) -> Option<usize> {
        match self {
            Workload::HoldThenFulfil { lines } | Workload::Batch { lines } => Some(*lines),
            Workload::Optimistic | Workload::Delta | Workload::Mix(_) => None,
        }
    }

    /// Item writes an accepted op makes: 1 for a single-key write, 2 per
    /// line for a cart (its hold and its fulfil), 1 per line for a batch.
    pub fn item_writes_per_op(&self) -> u64 {
        // At most MAX_BATCH_LINES lines: the conversion never saturates.
        let lines = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        match self {
            Workload::Optimistic | Workload::Delta | Workload::Mix(_) => 1,
            Workload::HoldThenFulfil { lines: n } => lines(*n).saturating_mul(2),
            Workload::Batch { lines: n } => lines(*n),
        }
    }

    /// What one op is called in reports: write, cart or batch.
    pub fn op_noun(&self) -> &'static str {
        match self {
            Workload::Optimistic | Workload::Delta | Workload::Mix(_) => "write",
            Workload::HoldThenFulfil { .. } => "cart",
            Workload::Batch { .. } => "batch",
        }
    }

    /// The op of the next single-key write; `None` for the multi-key
    /// workloads, whose requests [`crate::cart`] builds.
    pub fn next_op<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Op> {
        match self {
            Workload::Optimistic => Some(OpKind::Add.op()),
            Workload::Delta => Some(OpKind::Remove.op()),
            Workload::Mix(mix) => Some(mix.pick(rng).op()),
            Workload::HoldThenFulfil { .. } | Workload::Batch { .. } => None,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Optimistic => f.write_str("optimistic"),
            Workload::Delta => f.write_str("delta"),
            Workload::Mix(mix) => write!(f, "mix:{mix}"),
            Workload::HoldThenFulfil { lines } => write!(f, "hold-then-fulfil:lines={lines}"),
            Workload::Batch { lines } => write!(f, "batch:lines={lines}"),
        }
    }
}

/// How one answered (or unanswered) op counts in a measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and durable (every step of it).
    Accepted,
    /// Refused by the coordinator, with the refusal's code; a multi-key op
    /// is refused as soon as one of its steps is.
    Rejected(ErrorCode),
    /// No usable answer: transport failure, timeout, or a reply of the
    /// wrong kind; the detail says which.
    Failed(String),
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
        let optimistic = Workload::new("optimistic", None, None).unwrap();
        assert!(optimistic.is_optimistic());
        assert_eq!(optimistic.next_op(&mut rng), Some(Op::Add { amount: 1 }));
        let delta = Workload::new("delta", None, None).unwrap();
        assert!(!delta.is_optimistic());
        assert_eq!(delta.next_op(&mut rng), Some(Op::Remove { amount: 1 }));
        let mix = Workload::new("mix", Some("release=1".parse().unwrap()), None).unwrap();
        assert_eq!(mix.next_op(&mut rng), Some(Op::Release { amount: 1 }));
        assert_eq!(mix.to_string(), "mix:release=1");
        assert_eq!(
            Workload::new("mix", None, None).unwrap().to_string(),
            format!("mix:{DEFAULT_MIX}")
        );
        for single in [&optimistic, &delta, &mix] {
            assert_eq!(single.lines(), None, "{single}");
            assert_eq!(single.item_writes_per_op(), 1, "{single}");
            assert_eq!(single.op_noun(), "write");
        }
        for kind in OpKind::ALL {
            kind.op().validate().unwrap();
            assert_eq!(kind.op().kind(), kind.name());
        }
    }

    #[test]
    fn carts_and_batches_count_their_lines() {
        let mut rng = SmallRng::seed_from_u64(5);
        // name, --lines, lines, item writes per op
        let cases = [
            ("hold-then-fulfil", None, 3, 6),
            ("hold-then-fulfil", Some(1), 1, 2),
            ("batch", None, 3, 3),
            ("batch", Some(100), 100, 100),
        ];
        for (name, lines, want_lines, writes) in cases {
            let workload = Workload::new(name, None, lines).unwrap();
            assert_eq!(workload.lines(), Some(want_lines), "{name} {lines:?}");
            assert_eq!(workload.item_writes_per_op(), writes, "{name} {lines:?}");
            assert_eq!(workload.to_string(), format!("{name}:lines={want_lines}"));
            assert!(!workload.is_optimistic());
            // Their requests are built elsewhere: no single-key op.
            assert_eq!(workload.next_op(&mut rng), None);
        }
        assert_eq!(Workload::HoldThenFulfil { lines: 2 }.op_noun(), "cart");
        assert_eq!(Workload::Batch { lines: 2 }.op_noun(), "batch");
    }

    #[test]
    fn bad_workloads_are_refused() {
        for (name, mix, lines, needle) in [
            ("pessimistic", None, None, "expected optimistic, delta, mix"),
            (
                "delta",
                Some(Mix::default()),
                None,
                "--mix applies to --workload mix",
            ),
            (
                "batch",
                Some(Mix::default()),
                None,
                "--mix applies to --workload mix",
            ),
            ("mix", None, Some(3), "--lines applies to"),
            ("optimistic", None, Some(1), "--lines applies to"),
            ("batch", None, Some(0), "between 1 and 100"),
            ("hold-then-fulfil", None, Some(101), "between 1 and 100"),
        ] {
            let err = Workload::new(name, mix, lines).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }
}
