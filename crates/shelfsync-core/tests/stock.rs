//! Property tests for the stock rules across keys: random sequences of
//! single-key ops, lock ops, hold steps, batches and transfer steps over a
//! few locations and skus, with a moving clock.
//!
//! The harness keeps what the coordinator would store (item states, holds,
//! transfers) and commits a step only when the decision accepts it. After
//! every step it checks:
//! (a) `reserved + allowance <= quantity` and `held <= reserved` for every
//!     item, and `held` is exactly what the active holds account for;
//! (b) per sku, `sum(quantity) + in_transit` moved by exactly what the
//!     step adds, removes, fulfils, counts or writes off (an exact ledger);
//! (c) while a key has a live lock, every write to it carries that lock's
//!     token (the lock ops and the coordinator's expiries follow their own
//!     rules); a lock token once superseded (released, expired, granted
//!     again, its item deleted) is refused by every later write to its key
//!     that carries it;
//! (d) a hold is fulfilled, released or expired at most once;
//! (e) a refused step changes nothing, and an accepted one raises the
//!     version of each key it writes by exactly one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shelfsync_core::batch::{self, BatchLine};
use shelfsync_core::hold::{self, HoldStep, NewHold};
use shelfsync_core::transfer::{self, NewTransfer, TransferAmount, TransferStep};
use shelfsync_core::{
    Hold, HoldLine, HoldState, ItemKey, KeyState, Lock, LockTokens, Op, Precondition, Rejection,
    Transfer, apply,
};

const LOCATIONS: [&str; 3] = ["s1", "s2", "s3"];
const SKUS: [&str; 2] = ["a", "b"];
const KEYS: usize = LOCATIONS.len() * SKUS.len();

fn key(location: usize, sku: usize) -> ItemKey {
    ItemKey::new(
        LOCATIONS[location % LOCATIONS.len()],
        SKUS[sku % SKUS.len()],
    )
    .unwrap()
}

/// Key number `i` of the `KEYS` keys.
fn key_at(i: usize) -> ItemKey {
    key(i % LOCATIONS.len(), i / LOCATIONS.len())
}

/// Which lock token a write presents.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// None.
    No,
    /// The token of the lock stored on the key, live or not.
    Stored,
    /// One of the tokens ever granted on the key (by position).
    Issued(usize),
    /// Any number.
    Any(u64),
}

/// One request, with indexes into the harness's keys, holds and transfers.
#[derive(Debug, Clone)]
enum Step {
    Tick(u64),
    Single {
        key: usize,
        op: Op,
        expected: Option<u64>,
        token: Pick,
    },
    /// A grant on key number `key`, or on the `key`-th locked key when
    /// `relock` (so that holders meet and tokens get superseded).
    Grant {
        key: usize,
        relock: bool,
        holder: usize,
        ttl_ms: u64,
        token: Pick,
    },
    /// A renew of the `key`-th locked key.
    Renew {
        key: usize,
        token: Pick,
        ttl_ms: u64,
    },
    /// A release of the `key`-th locked key.
    Release {
        key: usize,
        token: Pick,
    },
    /// The coordinator's own expiry of the `key`-th locked key, naming
    /// the stored lock's token.
    Expire {
        key: usize,
    },
    HoldCreate {
        lines: Vec<(usize, u64)>,
        ttl_ms: u64,
        tokens: Pick,
    },
    HoldExtend {
        hold: usize,
        ttl_ms: u64,
    },
    HoldFulfil {
        hold: usize,
        tokens: Pick,
    },
    HoldRelease {
        hold: usize,
        tokens: Pick,
    },
    HoldExpire {
        hold: usize,
    },
    Batch {
        lines: Vec<(usize, Op, Option<u64>)>,
        tokens: Pick,
    },
    Ship {
        from: usize,
        to: usize,
        lines: Vec<(usize, u64)>,
        tokens: Pick,
    },
    Receive {
        transfer: usize,
        lines: Vec<(usize, u64)>,
        tokens: Pick,
    },
    Close {
        transfer: usize,
    },
}

/// What the coordinator would store.
#[derive(Debug, Clone, Default, PartialEq)]
struct Stored {
    items: BTreeMap<ItemKey, KeyState>,
    holds: Vec<Hold>,
    transfers: Vec<Transfer>,
}

/// The stored state plus what the checks remember.
#[derive(Debug, Default)]
struct World {
    stored: Stored,
    now: u64,
    /// Every token ever granted, per key, in order.
    issued: BTreeMap<ItemKey, Vec<u64>>,
    /// Tokens released, expired, granted again or deleted with their item.
    superseded: BTreeSet<(ItemKey, u64)>,
    /// Holds that were fulfilled, released or expired.
    ended: BTreeSet<String>,
    next_id: u64,
}

/// What an accepted step writes.
struct Commit {
    items: Vec<(ItemKey, KeyState)>,
    holds: Option<Hold>,
    transfers: Option<Transfer>,
    /// Per sku, how much `sum(quantity) + in_transit` moves.
    ledger: BTreeMap<String, i128>,
}

impl Commit {
    fn items(items: Vec<(ItemKey, KeyState)>) -> Self {
        Commit {
            items,
            holds: None,
            transfers: None,
            ledger: BTreeMap::new(),
        }
    }

    fn book(mut self, sku: &str, delta: i128) -> Self {
        *self.ledger.entry(sku.to_string()).or_default() += delta;
        self
    }
}

impl World {
    fn state(&self, key: &ItemKey) -> KeyState {
        self.stored
            .items
            .get(key)
            .cloned()
            .unwrap_or(KeyState::Absent)
    }

    /// The `index`-th key (cyclically) that has a lock stored, live or not;
    /// key number `index` when none has.
    fn locked_key(&self, index: usize) -> ItemKey {
        let locked = self
            .stored
            .items
            .iter()
            .filter(|(_, state)| state.item().is_some_and(|item| item.lock.is_some()));
        locked
            .map(|(key, _)| key.clone())
            .cycle()
            .nth(index)
            .unwrap_or_else(|| key_at(index))
    }

    fn stored_token(&self, key: &ItemKey) -> Option<u64> {
        self.state(key)
            .item()
            .and_then(|item| item.lock.as_ref())
            .map(|lock| lock.token)
    }

    fn token(&self, key: &ItemKey, pick: Pick) -> Option<u64> {
        match pick {
            Pick::No => None,
            Pick::Stored => self.stored_token(key),
            Pick::Issued(i) => self
                .issued
                .get(key)
                .filter(|tokens| !tokens.is_empty())
                .map(|tokens| tokens[i % tokens.len()]),
            Pick::Any(token) => Some(token),
        }
    }

    fn tokens<'a>(&self, keys: impl IntoIterator<Item = &'a ItemKey>, pick: Pick) -> LockTokens {
        keys.into_iter()
            .filter_map(|key| Some((key.clone(), self.token(key, pick)?)))
            .collect()
    }

    /// Units of `sku` on hand everywhere plus in transit.
    fn total(&self, sku: &str) -> i128 {
        let on_hand: i128 = (0..LOCATIONS.len())
            .filter_map(|l| {
                let key = ItemKey::new(LOCATIONS[l], sku).unwrap();
                self.state(&key)
                    .item()
                    .map(|item| i128::from(item.quantity))
            })
            .sum();
        on_hand + i128::from(transfer::in_transit(&self.stored.transfers, sku))
    }

    /// The hold `index` places from the newest.
    fn hold(&self, index: usize) -> Option<Hold> {
        self.stored.holds.iter().rev().cycle().nth(index).cloned()
    }

    /// The transfer `index` places from the newest.
    fn transfer(&self, index: usize) -> Option<Transfer> {
        self.stored
            .transfers
            .iter()
            .rev()
            .cycle()
            .nth(index)
            .cloned()
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn states(&self, keys: &[ItemKey]) -> Vec<KeyState> {
        keys.iter().map(|key| self.state(key)).collect()
    }
}

/// The ledger movement of one accepted single-key op on `before`.
fn single_ledger(op: &Op, before: &KeyState) -> i128 {
    let old = before.item().map_or(0, |item| i128::from(item.quantity));
    match op {
        Op::Create { quantity, .. } => i128::from(*quantity),
        Op::Set {
            quantity: Some(q), ..
        } => i128::from(*q) - old,
        Op::Add { amount } => i128::from(*amount),
        Op::Remove { amount } | Op::Fulfil { amount } => -i128::from(*amount),
        Op::Delete => -old,
        _ => 0,
    }
}

fn hold_commit(step: HoldStep, ledger: impl Fn(&HoldLine) -> i128) -> Commit {
    let mut commit = Commit::items(Vec::new());
    for (line, state) in step.hold.lines.iter().zip(step.items) {
        commit = commit.book(&line.key.sku, ledger(line));
        commit.items.push((line.key.clone(), state));
    }
    commit.holds = Some(step.hold);
    commit
}

fn transfer_commit(step: TransferStep, keys: Vec<ItemKey>) -> Commit {
    let mut commit = Commit::items(keys.into_iter().zip(step.items).collect());
    commit.transfers = Some(step.transfer);
    commit
}

fn amounts(lines: &[(usize, u64)]) -> Vec<TransferAmount> {
    lines
        .iter()
        .map(|(sku, amount)| TransferAmount {
            sku: SKUS[sku % SKUS.len()].to_string(),
            amount: *amount,
        })
        .collect()
}

/// Decides a renew or release: the op names the token it presents.
fn lock_step(
    world: &World,
    key: usize,
    pick: Pick,
    presented: &mut Vec<(ItemKey, u64)>,
    op: impl Fn(u64) -> Op,
) -> Result<Commit, Rejection> {
    let key = world.locked_key(key);
    let token = world.token(&key, pick).unwrap_or(0);
    presented.push((key.clone(), token));
    let next = apply(
        &key,
        &world.state(&key),
        &op(token),
        Precondition::default(),
        world.now,
    )?;
    Ok(Commit::items(vec![(key, next)]))
}

/// Decides `step` against the world. `presented` collects the lock tokens
/// the step carries as credentials, for check (c).
fn decide(
    world: &mut World,
    step: &Step,
    presented: &mut Vec<(ItemKey, u64)>,
) -> Result<Commit, Rejection> {
    let now = world.now;
    match step {
        Step::Tick(_) => Ok(Commit::items(Vec::new())),
        Step::Single {
            key,
            op,
            expected,
            token,
        } => {
            let key = key_at(*key);
            let before = world.state(&key);
            let lock_token = world.token(&key, *token);
            presented.extend(lock_token.map(|t| (key.clone(), t)));
            let expected_version = expected.map(|skew| (before.version() + skew).saturating_sub(1));
            let precondition = Precondition {
                expected_version,
                lock_token,
            };
            let next = apply(&key, &before, op, precondition, now)?;
            Ok(Commit::items(vec![(key.clone(), next)]).book(&key.sku, single_ledger(op, &before)))
        }
        Step::Grant {
            key,
            relock,
            holder,
            ttl_ms,
            token,
        } => {
            let key = if *relock {
                world.locked_key(*key)
            } else {
                key_at(*key)
            };
            let lock_token = world.token(&key, *token);
            presented.extend(lock_token.map(|t| (key.clone(), t)));
            let op = Op::LockGrant {
                holder: format!("counter-{holder}"),
                ttl_ms: *ttl_ms,
            };
            let precondition = Precondition {
                lock_token,
                ..Precondition::default()
            };
            let next = apply(&key, &world.state(&key), &op, precondition, now)?;
            Ok(Commit::items(vec![(key, next)]))
        }
        Step::Renew { key, token, ttl_ms } => {
            lock_step(world, *key, *token, presented, |token| Op::LockRenew {
                token,
                ttl_ms: *ttl_ms,
            })
        }
        Step::Release { key, token } => lock_step(world, *key, *token, presented, |token| {
            Op::LockRelease { token }
        }),
        Step::Expire { key } => {
            let key = world.locked_key(*key);
            let before = world.state(&key);
            let token = world.stored_token(&key).unwrap_or(0);
            let next = apply(
                &key,
                &before,
                &Op::LockExpire { token },
                Precondition::default(),
                now,
            )?;
            let lock = before.item().and_then(|item| item.lock.clone());
            assert!(
                lock.is_some_and(|lock| lock.token == token && lock.expires_at_ms <= now),
                "an expiry ended a lock that was not due: {before:?} at {now}"
            );
            Ok(Commit::items(vec![(key, next)]))
        }
        Step::HoldCreate {
            lines,
            ttl_ms,
            tokens,
        } => {
            let lines: Vec<HoldLine> = lines
                .iter()
                .map(|(key, amount)| HoldLine {
                    key: key_at(*key),
                    amount: *amount,
                })
                .collect();
            let keys: Vec<ItemKey> = lines.iter().map(|l| l.key.clone()).collect();
            let tokens = world.tokens(&keys, *tokens);
            presented.extend(tokens.clone());
            let request = NewHold {
                id: world.id("h"),
                owner: "cart-1".into(),
                lines,
                ttl_ms: *ttl_ms,
            };
            let step = hold::create(&request, &world.states(&keys), &tokens, now)?;
            Ok(hold_commit(step, |_| 0))
        }
        Step::HoldExtend { hold, ttl_ms } => {
            let Some(hold) = world.hold(*hold) else {
                return Ok(Commit::items(Vec::new()));
            };
            let mut commit = Commit::items(Vec::new());
            commit.holds = Some(hold::extend(&hold, *ttl_ms, now)?);
            Ok(commit)
        }
        Step::HoldFulfil { hold, tokens } | Step::HoldRelease { hold, tokens } => {
            let Some(hold) = world.hold(*hold) else {
                return Ok(Commit::items(Vec::new()));
            };
            let keys: Vec<ItemKey> = hold.lines.iter().map(|l| l.key.clone()).collect();
            let tokens = world.tokens(&keys, *tokens);
            presented.extend(tokens.clone());
            let states = world.states(&keys);
            if let Step::HoldFulfil { .. } = step {
                let fulfilled = hold::fulfil(&hold, &states, &tokens, now)?;
                return Ok(hold_commit(fulfilled, |line| -i128::from(line.amount)));
            }
            let released = hold::release(&hold, &states, &tokens, now)?;
            Ok(released.map_or_else(
                || Commit::items(Vec::new()),
                |step| hold_commit(step, |_| 0),
            ))
        }
        Step::HoldExpire { hold } => {
            let Some(hold) = world.hold(*hold) else {
                return Ok(Commit::items(Vec::new()));
            };
            let keys: Vec<ItemKey> = hold.lines.iter().map(|l| l.key.clone()).collect();
            let expired = hold::expire(&hold, &world.states(&keys), now)?;
            Ok(expired.map_or_else(
                || Commit::items(Vec::new()),
                |step| hold_commit(step, |_| 0),
            ))
        }
        Step::Batch { lines, tokens } => {
            let keys: Vec<ItemKey> = lines.iter().map(|(key, ..)| key_at(*key)).collect();
            let states = world.states(&keys);
            let lines: Vec<BatchLine> = lines
                .iter()
                .zip(&states)
                .map(|((key, op, skew), state)| BatchLine {
                    key: key_at(*key),
                    op: op.clone(),
                    expected_version: skew.map(|s| (state.version() + s).saturating_sub(1)),
                })
                .collect();
            let tokens = world.tokens(&keys, *tokens);
            presented.extend(tokens.clone());
            let next = batch::decide(&lines, &states, &tokens, now)?;
            let mut commit = Commit::items(keys.into_iter().zip(next).collect());
            for (line, before) in lines.iter().zip(&states) {
                commit = commit.book(&line.key.sku, single_ledger(&line.op, before));
            }
            Ok(commit)
        }
        Step::Ship {
            from,
            to,
            lines,
            tokens,
        } => {
            let request = NewTransfer {
                id: world.id("t"),
                from: LOCATIONS[from % LOCATIONS.len()].into(),
                to: LOCATIONS[to % LOCATIONS.len()].into(),
                lines: amounts(lines),
            };
            let keys: Vec<ItemKey> = lines.iter().map(|(sku, _)| key(*from, *sku)).collect();
            let tokens = world.tokens(&keys, *tokens);
            presented.extend(tokens.clone());
            let step = transfer::create(&request, &world.states(&keys), &tokens, now)?;
            Ok(transfer_commit(step, keys))
        }
        Step::Receive {
            transfer,
            lines,
            tokens,
        } => {
            let Some(transfer) = world.transfer(*transfer) else {
                return Ok(Commit::items(Vec::new()));
            };
            let to = LOCATIONS.iter().position(|l| *l == transfer.to).unwrap();
            let keys: Vec<ItemKey> = lines.iter().map(|(sku, _)| key(to, *sku)).collect();
            let tokens = world.tokens(&keys, *tokens);
            presented.extend(tokens.clone());
            let step = transfer::receive(
                &transfer,
                &amounts(lines),
                &world.states(&keys),
                &tokens,
                now,
            )?;
            Ok(transfer_commit(step, keys))
        }
        Step::Close { transfer } => {
            let Some(transfer) = world.transfer(*transfer) else {
                return Ok(Commit::items(Vec::new()));
            };
            let closed = transfer::close(&transfer)?;
            let mut commit = Commit::items(Vec::new());
            for line in &transfer.lines {
                commit = commit.book(&line.sku, -i128::from(line.in_transit()));
            }
            commit.transfers = Some(closed);
            Ok(commit)
        }
    }
}

/// Stores an accepted step, checking (d) and (e) on the way.
fn commit(world: &mut World, commit: Commit) -> Result<(), TestCaseError> {
    for (key, next) in commit.items {
        let before = world.state(&key);
        prop_assert_eq!(next.version(), before.version() + 1, "one write to {}", key);
        // A lock whose token the key did not have before was just granted.
        let old = before.item().and_then(|item| item.lock.as_ref());
        let new = next.item().and_then(|item| item.lock.as_ref());
        if let Some(lock) = new.filter(|new| old.is_none_or(|old| old.token != new.token)) {
            world
                .issued
                .entry(key.clone())
                .or_default()
                .push(lock.token);
        }
        world.stored.items.insert(key, next);
    }
    if let Some(hold) = commit.holds {
        if hold.state != HoldState::Active {
            prop_assert!(
                world.ended.insert(hold.id.clone()),
                "hold {} ended twice",
                hold.id
            );
        }
        match world.stored.holds.iter_mut().find(|h| h.id == hold.id) {
            Some(stored) => *stored = hold,
            None => world.stored.holds.push(hold),
        }
    }
    if let Some(transfer) = commit.transfers {
        match world
            .stored
            .transfers
            .iter_mut()
            .find(|t| t.id == transfer.id)
        {
            Some(stored) => *stored = transfer,
            None => world.stored.transfers.push(transfer),
        }
    }
    Ok(())
}

/// Whether a lock keeps others out at `now`, as the spec says it (not
/// through the code under test).
fn live(lock: &Lock, now: u64) -> bool {
    now < lock.expires_at_ms
}

/// Checks that an accepted write to a key with a live lock carried that
/// lock's token, and that a grant never takes a live lock from another
/// holder. Renew, release and the coordinator's own expiries have rules of
/// their own, checked by the lock table tests.
fn check_fenced(
    world: &World,
    step: &Step,
    written: &[(ItemKey, KeyState)],
    presented: &[(ItemKey, u64)],
) -> Result<(), TestCaseError> {
    for (key, next) in written {
        let state = world.state(key);
        let Some(lock) = state.item().and_then(|item| item.lock.as_ref()) else {
            continue;
        };
        if !live(lock, world.now) {
            continue;
        }
        if let Step::Grant { .. } = step {
            let holder = next
                .item()
                .and_then(|item| item.lock.as_ref())
                .map(|l| &l.holder);
            prop_assert_eq!(
                holder,
                Some(&lock.holder),
                "{:?} took the lock of {}",
                step,
                key
            );
        }
        let own_rules = matches!(
            step,
            Step::Grant { .. }
                | Step::Renew { .. }
                | Step::Release { .. }
                | Step::Expire { .. }
                | Step::HoldExpire { .. }
        );
        if !own_rules {
            let token = presented.iter().find(|(k, _)| k == key).map(|(_, t)| *t);
            prop_assert_eq!(
                token,
                Some(lock.token),
                "{:?} wrote locked {} without its token",
                step,
                key
            );
        }
    }
    Ok(())
}

/// Checks (a) on every item and updates the superseded tokens for (c).
fn check_items(world: &mut World) -> Result<(), TestCaseError> {
    let mut held: BTreeMap<ItemKey, u64> = BTreeMap::new();
    for hold in world
        .stored
        .holds
        .iter()
        .filter(|h| h.state == HoldState::Active)
    {
        for line in &hold.lines {
            *held.entry(line.key.clone()).or_default() += line.amount;
        }
    }
    for (key, state) in &world.stored.items {
        let Some(item) = state.item() else { continue };
        prop_assert!(
            u128::from(item.reserved) + u128::from(item.allowance) <= u128::from(item.quantity),
            "{:?}",
            item
        );
        prop_assert!(item.held <= item.reserved, "{:?}", item);
        prop_assert_eq!(
            item.held,
            held.get(key).copied().unwrap_or(0),
            "held of {}",
            key
        );
    }
    for (key, tokens) in &world.issued {
        let lock = world
            .stored
            .items
            .get(key)
            .and_then(KeyState::item)
            .and_then(|i| i.lock.as_ref());
        for token in tokens {
            let current = lock.is_some_and(|lock| lock.token == *token && live(lock, world.now));
            if current {
                prop_assert!(
                    !world.superseded.contains(&(key.clone(), *token)),
                    "token {} of {} came back",
                    token,
                    key
                );
            } else {
                world.superseded.insert((key.clone(), *token));
            }
        }
    }
    Ok(())
}

fn run(initial: Vec<Option<u64>>, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut world = World::default();
    for (i, quantity) in initial.into_iter().enumerate() {
        if let Some(quantity) = quantity {
            let op = Op::Create {
                name: "Milk".into(),
                quantity,
            };
            let state = apply(
                &key_at(i),
                &KeyState::Absent,
                &op,
                Precondition::default(),
                0,
            )
            .unwrap();
            world.stored.items.insert(key_at(i), state);
        }
    }
    for step in steps {
        if let Step::Tick(ms) = step {
            world.now += ms;
        }
        let before = world.stored.clone();
        let totals: Vec<i128> = SKUS.iter().map(|sku| world.total(sku)).collect();
        let mut presented = Vec::new();
        let decided = decide(&mut world, &step, &mut presented);
        match decided {
            Ok(decided) => {
                // A step that writes nothing (releasing a released hold)
                // used no token; one that writes a key used its token.
                let stale: Vec<_> = presented
                    .iter()
                    .filter(|(key, _)| decided.items.iter().any(|(written, _)| written == key))
                    .filter(|presented| world.superseded.contains(presented))
                    .collect();
                prop_assert!(
                    stale.is_empty(),
                    "{:?} accepted superseded tokens {:?}",
                    step,
                    stale
                );
                check_fenced(&world, &step, &decided.items, &presented)?;
                let ledger = decided.ledger.clone();
                commit(&mut world, decided)?;
                for (sku, before) in SKUS.iter().zip(totals) {
                    let moved = ledger.get(*sku).copied().unwrap_or(0);
                    prop_assert_eq!(
                        world.total(sku),
                        before + moved,
                        "ledger of {} after {:?}",
                        sku,
                        step
                    );
                }
            }
            Err(_) => prop_assert_eq!(
                &world.stored,
                &before,
                "a refused {:?} changed something",
                step
            ),
        }
        check_items(&mut world)?;
    }
    Ok(())
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1u64..=3, 2 => 4u64..=8, 1 => Just(0u64)]
}

/// Lines over `0..range`: mostly 1..=`most` distinct ones, sometimes any
/// (none, or one twice).
fn lines(range: usize, most: usize) -> impl Strategy<Value = Vec<(usize, u64)>> {
    prop_oneof![
        5 => proptest::collection::btree_map(0..range, amount(), 1..=most)
            .prop_map(|lines| lines.into_iter().collect()),
        1 => proptest::collection::vec((0..range, amount()), 0..=most),
    ]
}

/// An index into the holds or transfers, counted from the newest.
fn recent() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0usize..2, 1 => 0usize..8]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => Just(Pick::No),
        3 => Just(Pick::Stored),
        2 => (0usize..4).prop_map(Pick::Issued),
        1 => (0u64..12).prop_map(Pick::Any),
    ]
}

fn expected() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 3 => Just(Some(1)), 1 => (0u64..3).prop_map(Some)]
}

fn stock_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..20).prop_map(|quantity| Op::Create {
            name: "Milk".into(),
            quantity
        }),
        (0u64..20).prop_map(|q| Op::Set {
            name: None,
            quantity: Some(q)
        }),
        amount().prop_map(|amount| Op::Add { amount }),
        amount().prop_map(|amount| Op::Remove { amount }),
        amount().prop_map(|amount| Op::Reserve { amount }),
        amount().prop_map(|amount| Op::Release { amount }),
        amount().prop_map(|amount| Op::Fulfil { amount }),
        Just(Op::Delete),
    ]
}

fn lock_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1_000u64..=60_000, 1 => Just(999u64), 1 => Just(3_600_001u64)]
}

fn lock_steps() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..KEYS, any::<bool>(), 0usize..2, lock_ttl(), pick()).prop_map(
            |(key, relock, holder, ttl_ms, token)| Step::Grant {
                key,
                relock,
                holder,
                ttl_ms,
                token,
            }
        ),
        (0..KEYS, pick(), lock_ttl()).prop_map(|(key, token, ttl_ms)| Step::Renew {
            key,
            token,
            ttl_ms
        }),
        (0..KEYS, pick()).prop_map(|(key, token)| Step::Release { key, token }),
        (0..KEYS).prop_map(|key| Step::Expire { key }),
    ]
}

fn hold_steps() -> impl Strategy<Value = Step> {
    let ttl = prop_oneof![1_000u64..=20_000, 20_000u64..=120_000];
    prop_oneof![
        3 => (lines(KEYS, 3), ttl.clone(), pick()).prop_map(|(lines, ttl_ms, tokens)| {
            Step::HoldCreate {
                lines,
                ttl_ms,
                tokens,
            }
        }),
        1 => (recent(), ttl).prop_map(|(hold, ttl_ms)| Step::HoldExtend { hold, ttl_ms }),
        2 => (recent(), pick()).prop_map(|(hold, tokens)| Step::HoldFulfil { hold, tokens }),
        2 => (recent(), pick()).prop_map(|(hold, tokens)| Step::HoldRelease { hold, tokens }),
        2 => recent().prop_map(|hold| Step::HoldExpire { hold }),
    ]
}

fn transfer_steps() -> impl Strategy<Value = Step> {
    // Mostly to another location, sometimes to the same one.
    let offset = prop_oneof![8 => 1..LOCATIONS.len(), 1 => Just(0)];
    prop_oneof![
        2 => (0..LOCATIONS.len(), offset, lines(SKUS.len(), 2), pick()).prop_map(
            |(from, offset, lines, tokens)| Step::Ship {
                from,
                to: from + offset,
                lines,
                tokens
            }
        ),
        3 => (recent(), lines(SKUS.len(), 2), pick()).prop_map(|(transfer, lines, tokens)| {
            Step::Receive {
                transfer,
                lines,
                tokens,
            }
        }),
        1 => recent().prop_map(|transfer| Step::Close { transfer }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let single =
        (0..KEYS, stock_op(), expected(), pick()).prop_map(|(key, op, expected, token)| {
            Step::Single {
                key,
                op,
                expected,
                token,
            }
        });
    let batch_lines = prop_oneof![
        5 => proptest::collection::btree_map(0..KEYS, (stock_op(), expected()), 1..=3)
            .prop_map(|lines| lines.into_iter().map(|(key, (op, e))| (key, op, e)).collect()),
        1 => proptest::collection::vec((0..KEYS, stock_op(), expected()), 0..=3),
    ];
    let batch = (batch_lines, pick()).prop_map(|(lines, tokens)| Step::Batch { lines, tokens });
    // Mostly within lock leases, sometimes past holds' expiry.
    let tick = prop_oneof![4 => 0u64..=10_000, 1 => 10_000u64..=200_000];
    prop_oneof![
        3 => tick.prop_map(Step::Tick),
        4 => single,
        4 => lock_steps(),
        4 => hold_steps(),
        2 => batch,
        3 => transfer_steps(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any sequence of steps keeps the stock invariants, the ledger, the
    /// lock fencing and the once-only end of holds.
    #[test]
    fn stock_is_conserved_and_fenced(
        initial in proptest::collection::vec(proptest::option::weighted(0.8, 0u64..30), KEYS),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        run(initial, steps)?;
    }
}
