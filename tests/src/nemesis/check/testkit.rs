//! Test support for the checkers: a concise builder of histories ([`H`],
//! [`Ev`]), the end state a correct run would read back from the
//! acknowledged writes ([`H::final_from_changes`]), and a generator of
//! random valid histories driven by the model ([`random_history`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::model::{self, Answer, State};
use crate::nemesis::history::{Change, Event, Final, ItemState, Key, Op, Outcome, Replica};
use crate::rng::Rng;

/// The default key of a built history.
pub fn key() -> Key {
    Key::new("loc", "a")
}

/// An item named `n`.
pub fn it(quantity: u64, reserved: u64, version: u64) -> ItemState {
    ItemState {
        name: "n".into(),
        quantity,
        reserved,
        version,
    }
}

pub fn create(quantity: u64) -> Op {
    Op::Create {
        name: "n".into(),
        quantity,
    }
}
pub fn set_q(quantity: u64) -> Op {
    Op::Set {
        name: None,
        quantity: Some(quantity),
    }
}
pub fn add(amount: u64) -> Op {
    Op::Add { amount }
}
pub fn remove(amount: u64) -> Op {
    Op::Remove { amount }
}
pub fn reserve(amount: u64) -> Op {
    Op::Reserve { amount }
}
pub fn delete() -> Op {
    Op::Delete
}

/// A history under construction: events on [`key`] at store `s1` unless
/// told otherwise.
#[derive(Default)]
pub struct H {
    pub events: Vec<Event>,
}

/// The event just added, to refine.
pub struct Ev<'a>(&'a mut Event);

impl H {
    pub fn new() -> Self {
        H::default()
    }

    /// A write by `client` from `t0` to `t1` (outcome indeterminate until
    /// told), with idempotency key `k<id>`.
    pub fn write(&mut self, client: u32, op: Op, t0: u64, t1: u64) -> Ev<'_> {
        let id = self.events.len() as u64;
        self.push(client, op, t0, t1, Some(format!("k{id}")))
    }

    /// A read, strong or local.
    pub fn read(&mut self, client: u32, strong: bool, t0: u64, t1: u64) -> Ev<'_> {
        self.push(client, Op::Read { strong }, t0, t1, None)
    }

    /// A replay of write `original` (same op, key, store and idempotency
    /// key) from `t0` to `t1`.
    pub fn replay(&mut self, original: u64, t0: u64, t1: u64) -> Ev<'_> {
        let o = self.events[original as usize].clone();
        let ev = self.push(o.client, o.op, t0, t1, o.idempotency_key);
        ev.0.key = o.key;
        ev.0.store = o.store;
        ev.0.if_match = o.if_match;
        ev.0.replay_of = Some(original);
        ev
    }

    fn push(&mut self, client: u32, op: Op, t0: u64, t1: u64, idem: Option<String>) -> Ev<'_> {
        let id = self.events.len() as u64;
        self.events.push(Event {
            id,
            client,
            store: "s1".into(),
            key: key(),
            op,
            if_match: None,
            idempotency_key: idem,
            invoked_ns: t0,
            completed_ns: t1,
            outcome: Outcome::Indeterminate {
                reason: "timeout".into(),
            },
            attempts: 1,
            replay_of: None,
        });
        Ev(self.events.last_mut().unwrap())
    }

    /// The end state of a correct run where exactly the writes `ids` took
    /// effect, in that order: their changes (delete versions follow the
    /// previous change), the coordinator's last state per key, no replicas.
    pub fn final_from_changes(&self, ids: &[u64]) -> Final {
        let mut fin = Final::default();
        for (seq, &id) in ids.iter().enumerate() {
            let e = &self.events[id as usize];
            let item = match &e.outcome {
                Outcome::Ok { item } => item.clone(),
                _ => panic!("event {id} is not acknowledged"),
            };
            let pos = match fin.histories.iter().position(|(k, _)| *k == e.key) {
                Some(pos) => pos,
                None => {
                    fin.histories.push((e.key.clone(), Vec::new()));
                    fin.coordinator.push((e.key.clone(), None));
                    fin.histories.len() - 1
                }
            };
            let changes = &mut fin.histories[pos].1;
            let version = item.as_ref().map_or_else(
                || changes.last().map_or(1, |c: &Change| c.version + 1),
                |i| i.version,
            );
            changes.push(Change {
                seq: seq as u64 + 1,
                store: e.store.clone(),
                op_kind: format!("{:?}", e.op).to_lowercase(),
                idempotency_key: e.idempotency_key.clone().unwrap(),
                version,
                item: item.clone(),
            });
            fin.coordinator[pos].1 = item;
        }
        fin
    }
}

impl Ev<'_> {
    pub fn ok(self, item: ItemState) -> Self {
        self.outcome(Outcome::Ok { item: Some(item) })
    }
    /// A delete's 204.
    pub fn deleted(self) -> Self {
        self.outcome(Outcome::Ok { item: None })
    }
    pub fn refused(self, status: u16) -> Self {
        self.outcome(Outcome::Refused {
            status,
            current: None,
        })
    }
    pub fn refused_with(self, status: u16, current: ItemState) -> Self {
        self.outcome(Outcome::Refused {
            status,
            current: Some(current),
        })
    }
    pub fn indet(self) -> Self {
        self.outcome(Outcome::Indeterminate {
            reason: "timeout".into(),
        })
    }
    pub fn outcome(self, outcome: Outcome) -> Self {
        self.0.outcome = outcome;
        self
    }
    pub fn if_match(self, version: u64) -> Self {
        self.0.if_match = Some(version);
        self
    }
    pub fn store(self, store: &str) -> Self {
        self.0.store = store.into();
        self
    }
    pub fn on(self, key: Key) -> Self {
        self.0.key = key;
        self
    }
    pub fn id(&self) -> u64 {
        self.0.id
    }
}

/// Extends a [`Final`] in tests.
pub trait FinalExt {
    /// Adds a replica of `store` holding `item` for [`key`], digest confirmed.
    fn replica(self, store: &str, item: Option<ItemState>) -> Final;
}

impl FinalExt for Final {
    fn replica(mut self, store: &str, item: Option<ItemState>) -> Final {
        self.replicas.push(Replica {
            store: store.into(),
            items: vec![(key(), item)],
            digest_ok: Some(true),
        });
        self
    }
}

/// A valid history of `n_ops` ops on [`key`] by `clients` concurrent
/// clients: each op takes effect at a random instant between its call and
/// its return, by the model. About `indet_per_mille`‰ of the ops end
/// indeterminate, half of them having taken effect.
pub fn random_history(seed: u64, n_ops: u64, clients: u32, indet_per_mille: u64) -> Vec<Event> {
    struct Flight {
        event: Event,
        answer: Option<Answer>,
        lost: bool,
    }
    let mut rng = Rng::seeded(seed);
    let mut state = State::INITIAL;
    let mut flights: Vec<Option<Flight>> = (0..clients).map(|_| None).collect();
    let mut events = Vec::new();
    let (mut now, mut issued) = (0u64, 0u64);
    while issued < n_ops || flights.iter().any(Option::is_some) {
        now += 1 + rng.below(3);
        let c = rng.below(u64::from(clients)) as usize;
        let Some(f) = &mut flights[c] else {
            if issued < n_ops {
                let op = random_op(&mut rng, &state);
                let if_match = matches!(op, Op::Set { .. } | Op::Delete).then(|| state.version());
                let idem = op.is_write().then(|| format!("k{issued}"));
                let mut h = H::new();
                let mut event = h.push(c as u32, op, now, 0, idem).0.clone();
                (event.id, event.if_match) = (issued, if_match);
                issued += 1;
                flights[c] = Some(Flight {
                    event,
                    answer: None,
                    lost: false,
                });
            }
            continue;
        };
        if f.answer.is_none() && !f.lost {
            // The op's instant of effect, or its loss.
            if rng.below(1000) < indet_per_mille / 2 {
                f.lost = true;
            } else {
                let (next, answer) = model::step(&state, &f.event.op, f.event.if_match);
                state = next;
                f.answer = Some(answer);
            }
            continue;
        }
        let indet = f.lost || rng.below(1000) < indet_per_mille / 2;
        f.event.completed_ns = now;
        f.event.outcome = match f.answer.take() {
            _ if indet => Outcome::Indeterminate {
                reason: "timeout".into(),
            },
            Some(Answer::Ok(item)) => Outcome::Ok { item },
            Some(Answer::Refused(status)) => Outcome::Refused {
                status,
                current: None,
            },
            None => unreachable!(),
        };
        events.extend(flights[c].take().map(|f| f.event));
    }
    events.sort_by_key(|e| e.id);
    events
}

fn random_op(rng: &mut Rng, state: &State) -> Op {
    let amount = 1 + rng.below(4);
    if let State::Absent { .. } = state {
        return if rng.below(10) == 0 {
            add(1)
        } else {
            create(rng.below(20))
        };
    }
    match rng.below(100) {
        0..25 => add(amount),
        25..40 => remove(amount),
        40..55 => reserve(amount),
        55..65 => Op::Release { amount },
        65..75 => Op::Fulfil { amount },
        75..95 => Op::Read { strong: true },
        95..98 => set_q(rng.below(30)),
        _ => delete(),
    }
}
