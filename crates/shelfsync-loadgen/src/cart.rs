//! The requests of the multi-key workloads and how their answers count.
//!
//! An [`Exchange`] is one op of [`Workload::HoldThenFulfil`] or
//! [`Workload::Batch`] on distinct keys ([`distinct_keys`]):
//!
//! - a cart sends `Hold` `Create` (1 unit on every line, for [`HOLD_TTL_MS`]),
//!   and once that hold is answered, `Hold` `Fulfil` naming the id the answer
//!   carries: two commits, two item writes per line. Each step has an
//!   idempotency key of its own (the op's, then `-hold` or `-fulfil`).
//! - a batch sends one `Batch` of `remove 1` lines: one commit, all or none.
//!
//! The op is accepted when its last step is; a refusal at any step (a hold
//! that lacks stock is not fulfilled) makes it rejected with the refusal's
//! code, as the single-key workloads count theirs; an answer of the wrong
//! kind makes it failed. Pure: the driver sends the requests, brings back
//! the answers and counts the [`Outcome`].
//!
//! [`Workload::HoldThenFulfil`]: crate::workload::Workload::HoldThenFulfil
//! [`Workload::Batch`]: crate::workload::Workload::Batch

use rand::Rng;
use shelfsync_core::{HoldLine, HoldState, ItemKey, Op};
use shelfsync_proto::{
    BatchLine, BatchRequest, HoldAck, HoldAction, HoldRequest, Request, Response,
};

use crate::keys::KeyPicker;
use crate::workload::Outcome;

/// How long a cart's hold lasts. Far longer than the round trip to its
/// fulfil, so a hold expires only when its fulfil was lost (the coordinator
/// then gives its units back itself).
pub const HOLD_TTL_MS: u64 = 10 * 60 * 1000;

/// `lines` distinct key indexes, each drawn from `picker`. A draw that
/// repeats an earlier line's key moves on to the next index not yet in the
/// op (after the last key comes the first), so a `hot` cart is keys 0, 1,
/// ..., `lines - 1`. At most as many lines as the picker has keys (the
/// flags make sure `--lines` is not more).
pub fn distinct_keys<R: Rng + ?Sized>(picker: &KeyPicker, rng: &mut R, lines: usize) -> Vec<u64> {
    let keys = picker.keys();
    let lines = usize::try_from(keys).map_or(lines, |keys| lines.min(keys));
    let mut chosen: Vec<u64> = Vec::with_capacity(lines);
    while chosen.len() < lines {
        let mut index = picker.pick(rng);
        // Ends: fewer indexes are taken than there are keys.
        while chosen.contains(&index) {
            index = (index + 1) % keys;
        }
        chosen.push(index);
    }
    chosen
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send this request and bring its answer to [`Exchange::answer`].
    Send(Request),
    /// The op is over.
    Done(Outcome),
}

/// One cart or batch, from its first request to its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The op's idempotency key; each step of a cart extends it.
    idempotency_key: String,
    /// Lines of the op.
    lines: usize,
    /// Which answer is awaited.
    stage: Stage,
}

/// Which answer an [`Exchange`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The cart's hold.
    Hold,
    /// The fulfil of the cart's hold.
    Fulfil,
    /// The batch.
    Batch,
}

impl Exchange {
    /// A cart of 1 unit on each of `keys` (distinct) for `owner`: the
    /// exchange, and its first request (the hold).
    pub fn hold_then_fulfil(
        keys: Vec<ItemKey>,
        owner: String,
        idempotency_key: String,
    ) -> (Exchange, Request) {
        let lines = keys.len();
        let request = Request::Hold(HoldRequest {
            idempotency_key: format!("{idempotency_key}-hold"),
            action: HoldAction::Create {
                owner,
                lines: keys
                    .into_iter()
                    .map(|key| HoldLine { key, amount: 1 })
                    .collect(),
                ttl_ms: HOLD_TTL_MS,
                lock_token: None,
            },
        });
        let exchange = Exchange {
            idempotency_key,
            lines,
            stage: Stage::Hold,
        };
        (exchange, request)
    }

    /// A batch of `remove 1` on each of `keys` (distinct): the exchange and
    /// its only request.
    pub fn batch(keys: Vec<ItemKey>, idempotency_key: String) -> (Exchange, Request) {
        let lines = keys.len();
        let request = Request::Batch(BatchRequest {
            idempotency_key: idempotency_key.clone(),
            lines: keys
                .into_iter()
                .map(|key| BatchLine {
                    key,
                    op: Op::Remove { amount: 1 },
                    expected_version: None,
                    lock_token: None,
                })
                .collect(),
        });
        let exchange = Exchange {
            idempotency_key,
            lines,
            stage: Stage::Batch,
        };
        (exchange, request)
    }

    /// Takes the answer to the last request sent: the next request, or the
    /// op's outcome.
    pub fn answer(&mut self, response: Response) -> Next {
        match (self.stage, response) {
            (_, Response::Error(err)) => Next::Done(Outcome::Rejected(err.code)),
            (Stage::Hold, Response::Hold(ack)) => {
                if let Some(odd) = self.odd_hold(&ack, HoldState::Active) {
                    return Next::Done(Outcome::Failed(format!("hold answered {odd}")));
                }
                self.stage = Stage::Fulfil;
                Next::Send(Request::Hold(HoldRequest {
                    idempotency_key: format!("{}-fulfil", self.idempotency_key),
                    action: HoldAction::Fulfil {
                        id: ack.hold.id,
                        lock_token: None,
                    },
                }))
            }
            (Stage::Fulfil, Response::Hold(ack)) => {
                match self.odd_hold(&ack, HoldState::Fulfilled) {
                    Some(odd) => Next::Done(Outcome::Failed(format!("fulfil answered {odd}"))),
                    None => Next::Done(Outcome::Accepted),
                }
            }
            (Stage::Batch, Response::Batch(ack)) if ack.states.len() == self.lines => {
                Next::Done(Outcome::Accepted)
            }
            (Stage::Batch, Response::Batch(ack)) => Next::Done(Outcome::Failed(format!(
                "a batch of {} lines answered with {} states",
                self.lines,
                ack.states.len()
            ))),
            (stage, other) => Next::Done(Outcome::Failed(format!(
                "unexpected reply to a {}: {other:?}",
                stage.name()
            ))),
        }
    }

    /// What is wrong with a hold answered in a step that should leave it
    /// `want` with the cart's lines; `None` when nothing is.
    fn odd_hold(&self, ack: &HoldAck, want: HoldState) -> Option<String> {
        if ack.hold.state != want {
            Some(format!("a hold in state {}", ack.hold.state))
        } else if ack.hold.lines.len() != self.lines {
            Some(format!(
                "a hold of {} lines for a cart of {}",
                ack.hold.lines.len(),
                self.lines
            ))
        } else {
            None
        }
    }
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Hold => "hold",
            Stage::Fulfil => "fulfil",
            Stage::Batch => "batch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyDistribution;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use shelfsync_core::{Hold, Item, KeyState};
    use shelfsync_proto::{BatchAck, ErrorCode, WireError, WriteAck};

    fn keys(skus: &[&str]) -> Vec<ItemKey> {
        skus.iter()
            .map(|sku| ItemKey::new("bench", *sku).unwrap())
            .collect()
    }

    fn hold_ack(id: &str, skus: &[&str], state: HoldState) -> Response {
        let lines: Vec<HoldLine> = keys(skus)
            .into_iter()
            .map(|key| HoldLine { key, amount: 1 })
            .collect();
        let states = lines
            .iter()
            .map(|l| (9, KeyState::Live(Item::new(&l.key, "x", 10, 2))))
            .collect();
        Response::Hold(HoldAck {
            hold: Hold {
                id: id.into(),
                owner: "load-1-0".into(),
                lines,
                expires_at_ms: 1,
                state,
            },
            expires_in_ms: 1,
            states,
            replayed: false,
        })
    }

    fn refusal(code: ErrorCode) -> Response {
        Response::Error(WireError::new(code, "no"))
    }

    #[test]
    fn a_cart_holds_every_line_then_fulfils_the_hold_it_got() {
        let skus = ["k000001", "k000007", "k000003"];
        let (mut cart, first) =
            Exchange::hold_then_fulfil(keys(&skus), "load-2-0".into(), "lg-m0-2-0-5".into());
        assert_eq!(
            first,
            Request::Hold(HoldRequest {
                idempotency_key: "lg-m0-2-0-5-hold".into(),
                action: HoldAction::Create {
                    owner: "load-2-0".into(),
                    lines: keys(&skus)
                        .into_iter()
                        .map(|key| HoldLine { key, amount: 1 })
                        .collect(),
                    ttl_ms: HOLD_TTL_MS,
                    lock_token: None,
                },
            })
        );
        let next = cart.answer(hold_ack("h41", &skus, HoldState::Active));
        assert_eq!(
            next,
            Next::Send(Request::Hold(HoldRequest {
                idempotency_key: "lg-m0-2-0-5-fulfil".into(),
                action: HoldAction::Fulfil {
                    id: "h41".into(),
                    lock_token: None,
                },
            }))
        );
        let done = cart.answer(hold_ack("h41", &skus, HoldState::Fulfilled));
        assert_eq!(done, Next::Done(Outcome::Accepted));
    }

    #[test]
    fn a_refused_step_rejects_the_cart_with_its_code() {
        let skus = ["k000001", "k000002"];
        // A hold that lacks stock: no fulfil is sent.
        let (mut cart, _) = Exchange::hold_then_fulfil(keys(&skus), "o".into(), "c".into());
        assert_eq!(
            cart.answer(refusal(ErrorCode::InsufficientStock)),
            Next::Done(Outcome::Rejected(ErrorCode::InsufficientStock))
        );
        // A hold that ended before its fulfil.
        let (mut cart, _) = Exchange::hold_then_fulfil(keys(&skus), "o".into(), "c".into());
        assert!(matches!(
            cart.answer(hold_ack("h1", &skus, HoldState::Active)),
            Next::Send(_)
        ));
        assert_eq!(
            cart.answer(refusal(ErrorCode::Gone)),
            Next::Done(Outcome::Rejected(ErrorCode::Gone))
        );
    }

    #[test]
    fn odd_answers_fail_the_cart() {
        let skus = ["k000001", "k000002"];
        let write_ack = Response::Write(WriteAck {
            seq: 1,
            state: KeyState::Absent,
            replayed: false,
        });
        let cases: Vec<(Vec<Response>, &str)> = vec![
            (vec![write_ack.clone()], "unexpected reply to a hold"),
            (
                vec![hold_ack("h1", &skus, HoldState::Expired)],
                "hold answered a hold in state expired",
            ),
            (
                vec![hold_ack("h1", &skus[..1], HoldState::Active)],
                "a hold of 1 lines for a cart of 2",
            ),
            (
                vec![hold_ack("h1", &skus, HoldState::Active), write_ack],
                "unexpected reply to a fulfil",
            ),
            (
                vec![
                    hold_ack("h1", &skus, HoldState::Active),
                    hold_ack("h1", &skus, HoldState::Active),
                ],
                "fulfil answered a hold in state active",
            ),
        ];
        for (answers, needle) in cases {
            let (mut cart, _) = Exchange::hold_then_fulfil(keys(&skus), "o".into(), "c".into());
            let mut last = None;
            for answer in answers {
                last = Some(cart.answer(answer));
            }
            match last {
                Some(Next::Done(Outcome::Failed(detail))) => {
                    assert!(detail.contains(needle), "{detail}")
                }
                other => panic!("{needle}: got {other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_removes_one_from_every_line_in_one_request() {
        let skus = ["k000004", "k000002", "k000009"];
        let (mut batch, request) = Exchange::batch(keys(&skus), "lg-m1-1-0-3".into());
        let Request::Batch(sent) = &request else {
            panic!("not a batch: {request:?}");
        };
        assert_eq!(sent.idempotency_key, "lg-m1-1-0-3");
        assert_eq!(sent.lines.len(), 3);
        for (line, key) in sent.lines.iter().zip(keys(&skus)) {
            assert_eq!(line.key, key);
            assert_eq!(line.op, Op::Remove { amount: 1 });
            assert_eq!((line.expected_version, line.lock_token), (None, None));
        }
        let ack = |states: usize| {
            Response::Batch(BatchAck {
                seq: 5,
                states: vec![KeyState::Absent; states],
                replayed: false,
            })
        };
        assert_eq!(batch.clone().answer(ack(3)), Next::Done(Outcome::Accepted));
        let short = batch.clone().answer(ack(2));
        assert!(
            matches!(&short, Next::Done(Outcome::Failed(d)) if d.contains("3 lines answered with 2")),
            "{short:?}"
        );
        assert_eq!(
            batch.clone().answer(refusal(ErrorCode::InsufficientStock)),
            Next::Done(Outcome::Rejected(ErrorCode::InsufficientStock))
        );
        let odd = batch.answer(hold_ack("h1", &skus, HoldState::Active));
        assert!(
            matches!(&odd, Next::Done(Outcome::Failed(d)) if d.contains("unexpected reply to a batch")),
            "{odd:?}"
        );
    }

    #[test]
    fn cart_keys_are_distinct_and_follow_the_distribution() {
        let mut rng = SmallRng::seed_from_u64(9);
        // Hot: the hot key and the ones after it.
        let hot = KeyPicker::new(KeyDistribution::Hot, 100).unwrap();
        assert_eq!(distinct_keys(&hot, &mut rng, 3), [0, 1, 2]);
        // As many lines as keys: every key once, whatever the draws.
        let all = KeyPicker::new(KeyDistribution::Uniform, 5).unwrap();
        for _ in 0..200 {
            let mut drawn = distinct_keys(&all, &mut rng, 5);
            drawn.sort_unstable();
            assert_eq!(drawn, [0, 1, 2, 3, 4]);
        }
        // More lines than keys: each key once.
        assert_eq!(distinct_keys(&hot, &mut rng, 0), Vec::<u64>::new());
        let two = KeyPicker::new(KeyDistribution::Hot, 2).unwrap();
        assert_eq!(distinct_keys(&two, &mut rng, 3), [0, 1]);
        // Zipf: distinct, in bounds, and the first line is a zipf draw (key
        // 0 leads far more often than a uniform 1 in 10,000).
        let zipf = KeyPicker::new(KeyDistribution::Zipf { exponent: 0.99 }, 10_000).unwrap();
        let mut first_is_hot = 0;
        for _ in 0..2_000 {
            let drawn = distinct_keys(&zipf, &mut rng, 4);
            assert_eq!(drawn.len(), 4);
            assert!(drawn.iter().all(|&i| i < 10_000), "{drawn:?}");
            for (i, a) in drawn.iter().enumerate() {
                assert!(!drawn[i + 1..].contains(a), "{drawn:?}");
            }
            first_is_hot += u32::from(drawn[0] == 0);
        }
        assert!(first_is_hot > 100, "key 0 led {first_is_hot} carts");
    }
}
