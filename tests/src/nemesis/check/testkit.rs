//! Test support for the checkers: a concise builder of histories ([`H`],
//! [`Ev`]), the end state a correct run would read back from the
//! acknowledged writes ([`H::final_from_changes`]), change logs built
//! commit by commit ([`Log`]) or as a lock's life on one key ([`LockLog`]),
//! and a generator of random valid histories driven by the model
//! ([`random_history`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::model::{self, Answer, State};
use crate::nemesis::history::{
    Change, Event, Final, ItemState, Key, LockState, Op, OpArgs, Outcome, Replica, Reply,
    TransferLineView, TransferView,
};
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
            lock_token: None,
            reply: None,
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
                op_kind: e.op.log_kind().unwrap_or("?").to_string(),
                idempotency_key: e.idempotency_key.clone().unwrap(),
                version,
                item: item.clone(),
                at_ms: 0,
                commit_end: 0,
                args: OpArgs {
                    amount: e.op.amount(),
                    quantity: match &e.op {
                        Op::Create { quantity, .. } => Some(*quantity),
                        Op::Set { quantity, .. } => *quantity,
                        _ => None,
                    },
                    ..OpArgs::default()
                },
                lock: None,
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
    /// A 2xx without an item, with what the answer carried.
    pub fn ok_reply(self, reply: Reply) -> Self {
        self.0.reply = Some(reply);
        self.outcome(Outcome::Ok { item: None })
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

/// `OpArgs` with an amount.
pub fn amt(amount: u64) -> OpArgs {
    OpArgs {
        amount: Some(amount),
        ..OpArgs::default()
    }
}
/// `OpArgs` with a quantity (create, set).
pub fn qty(quantity: u64) -> OpArgs {
    OpArgs {
        quantity: Some(quantity),
        ..OpArgs::default()
    }
}
/// `OpArgs` of a transfer step.
pub fn tx(transfer: &str, amount: u64) -> OpArgs {
    OpArgs {
        transfer: Some(transfer.into()),
        ..amt(amount)
    }
}
/// `OpArgs` of a hold step.
pub fn hold(hold: &str, amount: u64) -> OpArgs {
    OpArgs {
        hold: Some(hold.into()),
        ..amt(amount)
    }
}

/// A change log across keys, built commit by commit, and the transfers
/// read back, in a [`Final`].
#[derive(Default)]
pub struct Log {
    pub fin: Final,
}

impl Log {
    pub fn new() -> Self {
        Log::default()
    }

    /// Appends one commit of `store` under `idem`: per entry the key, the
    /// op's name, its fields and the quantity after (`None`: deleted);
    /// each change gets the next seq and its key's next version.
    pub fn commit(
        &mut self,
        store: &str,
        idem: &str,
        entries: &[(Key, &str, OpArgs, Option<u64>)],
    ) -> &mut Self {
        let first = self.fin.log().last().map_or(1, |(_, c)| c.seq + 1);
        let end = first + entries.len() as u64 - 1;
        for (seq, (key, kind, args, quantity)) in (first..).zip(entries) {
            let pos = match self.fin.histories.iter().position(|(k, _)| k == key) {
                Some(pos) => pos,
                None => {
                    self.fin.histories.push((key.clone(), Vec::new()));
                    self.fin.coordinator.push((key.clone(), None));
                    self.fin.histories.len() - 1
                }
            };
            let changes = &mut self.fin.histories[pos].1;
            let version = changes.last().map_or(1, |c| c.version + 1);
            let item = quantity.map(|q| it(q, 0, version));
            changes.push(Change {
                seq,
                store: store.into(),
                op_kind: kind.to_string(),
                idempotency_key: idem.into(),
                version,
                item: item.clone(),
                at_ms: seq,
                commit_end: end,
                args: args.clone(),
                lock: None,
            });
            self.fin.coordinator[pos].1 = item;
        }
        self
    }

    /// Sets what reading transfer `id` back gave: per line `(sku,
    /// shipped, received, lost)`.
    pub fn transfer(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        state: &str,
        lines: &[(&str, u64, u64, u64)],
    ) {
        let view = TransferView {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            state: state.into(),
            lines: lines
                .iter()
                .map(|&(sku, shipped, received, lost)| TransferLineView {
                    sku: sku.into(),
                    shipped,
                    received,
                    lost,
                })
                .collect(),
        };
        self.fin.transfers.retain(|(t, _)| t != id);
        self.fin.transfers.push((id.into(), Some(view)));
    }
}

/// One key's ([`key`]) change log with locks, built in order, and the
/// events of the requests behind it: each change gets the next seq and
/// version, the item `n` q=10, and the lock a correct coordinator stores;
/// each but the coordinator's expiries an acknowledged event of store
/// `s1` with its idempotency key and `Lock-Token`. Times are ms.
#[derive(Default)]
pub struct LockLog {
    pub events: Vec<Event>,
    pub changes: Vec<Change>,
}

impl LockLog {
    pub fn new() -> Self {
        LockLog::default()
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        idem: &str,
        at_ms: u64,
        kind: &str,
        args: OpArgs,
        op: Option<Op>,
        token: Option<u64>,
    ) {
        let version = self.changes.len() as u64 + 1;
        let before = self.changes.last().and_then(|c| c.lock.clone());
        let lock = match kind {
            "lock_grant" => Some(LockState {
                holder: args.holder.clone().unwrap_or_default(),
                token: version,
                expires_at_ms: at_ms + args.ttl_ms.unwrap_or(0),
            }),
            "lock_renew" => before.map(|mut l| {
                if Some(l.token) == args.token {
                    l.expires_at_ms = at_ms + args.ttl_ms.unwrap_or(0);
                }
                l
            }),
            "lock_release" | "lock_expire" => None,
            _ => before,
        };
        let item = it(10, 0, version);
        let store = if op.is_some() { "s1" } else { "coordinator" };
        self.changes.push(Change {
            seq: version,
            store: store.into(),
            op_kind: kind.into(),
            idempotency_key: idem.into(),
            version,
            item: Some(item.clone()),
            at_ms,
            commit_end: version,
            args,
            lock,
        });
        let Some(op) = op else {
            return;
        };
        let reply = match &op {
            Op::LockGrant { holder, .. } => Some(Reply::Lock {
                token: version,
                holder: holder.clone(),
            }),
            _ => None,
        };
        let item = (!op.is_lock_op()).then_some(item);
        self.events.push(Event {
            id: self.events.len() as u64,
            client: 1,
            store: "s1".into(),
            key: key(),
            op,
            if_match: None,
            idempotency_key: Some(idem.into()),
            invoked_ns: (at_ms - 1) * 1_000_000,
            completed_ns: (at_ms + 1) * 1_000_000,
            outcome: Outcome::Ok { item },
            attempts: 1,
            replay_of: None,
            lock_token: token,
            reply,
        });
    }

    /// A write (`create`, `add` or `remove`) with `token`.
    pub fn write(&mut self, idem: &str, at_ms: u64, token: Option<u64>, kind: &str) {
        let (op, args) = match kind {
            "create" => (create(10), qty(10)),
            "add" => (add(1), amt(1)),
            _ => (remove(1), amt(1)),
        };
        self.push(idem, at_ms, kind, args, Some(op), token);
    }

    pub fn grant(&mut self, idem: &str, at_ms: u64, holder: &str, ttl_ms: u64) {
        let args = OpArgs {
            holder: Some(holder.into()),
            ttl_ms: Some(ttl_ms),
            ..OpArgs::default()
        };
        let op = Op::LockGrant {
            holder: holder.into(),
            ttl_ms,
        };
        self.push(idem, at_ms, "lock_grant", args, Some(op), None);
    }

    pub fn renew(&mut self, idem: &str, at_ms: u64, token: u64, ttl_ms: u64) {
        let args = OpArgs {
            token: Some(token),
            ttl_ms: Some(ttl_ms),
            ..OpArgs::default()
        };
        let op = Op::LockRenew { token, ttl_ms };
        self.push(idem, at_ms, "lock_renew", args, Some(op), Some(token));
    }

    pub fn release(&mut self, idem: &str, at_ms: u64, token: u64) {
        let args = OpArgs {
            token: Some(token),
            ..OpArgs::default()
        };
        let op = Op::LockRelease { token };
        self.push(idem, at_ms, "lock_release", args, Some(op), Some(token));
    }

    /// The coordinator's expiry of `token`.
    pub fn expire(&mut self, at_ms: u64, token: u64) {
        let args = OpArgs {
            token: Some(token),
            ..OpArgs::default()
        };
        let idem = format!("lock-expiry:{}:{token}", key());
        self.push(&idem, at_ms, "lock_expire", args, None, None);
    }

    /// The log as read at its last change's time.
    pub fn fin(&self) -> Final {
        Final {
            histories: vec![(key(), self.changes.clone())],
            read_at_ms: self.changes.last().map_or(0, |c| c.at_ms),
            ..Final::default()
        }
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
