//! Lock clients: each competes for the locks of the run's lock keys as
//! holder `h<client>`, with leases of 1–3 s, through its home agent.
//!
//! Holding a lock, a client mostly writes with its token; it also renews,
//! releases, takes the lock again (which supersedes its token), and writes
//! without a token or with a token it held before (both must be refused).
//! Without a lock it takes one, or writes without a token (refused while
//! another client holds the key) or with an old token. A refusal naming
//! `lock_lost` ends the client's idea of its lock; an indeterminate grant
//! leaves it without one (the lease ends by itself). When the run stops, a
//! client still holding a lock releases it.

use std::sync::atomic::Ordering;

use super::{Client, Control, Recorder, Request, Targets};
use crate::nemesis::history::{Event, Key, Op, Outcome, Reply};

/// Old tokens a client keeps, to try them again.
const STALE_MEMORY: usize = 4;

/// A lock client and the lock it believes it holds.
pub(super) struct LockClient {
    client: Client,
    keys: Vec<Key>,
    holder: String,
    /// The lock this client believes it holds: key and token.
    held: Option<(Key, u64)>,
    /// Tokens it held before (released, superseded, lost).
    stale: Vec<(Key, u64)>,
    /// A key answered 404: create it next.
    missing: Option<Key>,
}

impl LockClient {
    pub(super) fn new(client: Client, keys: Vec<Key>) -> Self {
        LockClient {
            holder: format!("h{}", client.id),
            client,
            keys,
            held: None,
            stale: Vec::new(),
            missing: None,
        }
    }

    pub(super) async fn run(mut self, targets: &Targets, recorder: &Recorder, control: &Control) {
        while !control.stop.load(Ordering::Relaxed) {
            if !self.step(targets, recorder).await {
                return;
            }
        }
        if let Some((key, token)) = self.held.take() {
            let request = Request {
                lock_token: Some(token),
                ..Request::new(key, Op::LockRelease { token })
            };
            self.send(targets, recorder, request).await;
        }
    }

    /// One op; false when there is no agent to send it to.
    async fn step(&mut self, targets: &Targets, recorder: &Recorder) -> bool {
        let request = self.next_request();
        self.send(targets, recorder, request).await
    }

    async fn send(&mut self, targets: &Targets, recorder: &Recorder, request: Request) -> bool {
        let Some((store, rest)) = targets.pick(u64::from(self.client.id)) else {
            return false;
        };
        let request = self.client.keyed(request);
        let event = self
            .client
            .perform(recorder, &store, &rest, request, None)
            .await;
        self.learn(&event);
        true
    }

    fn ttl_ms(&mut self) -> u64 {
        1_000 + 500 * self.client.rng.below(5)
    }

    fn write_op(&mut self) -> Op {
        let rng = &mut self.client.rng;
        let amount = 1 + rng.below(3);
        match rng.below(10) {
            0..=4 => Op::Add { amount },
            5..=7 => Op::Remove { amount },
            8 => Op::Reserve { amount: 1 },
            _ => Op::Release { amount: 1 },
        }
    }

    fn next_request(&mut self) -> Request {
        if let Some(key) = self.missing.take() {
            let op = Op::Create {
                name: format!("Count {}", key.sku),
                quantity: 20,
            };
            return Request::new(key, op);
        }
        let any_key = self.keys[self.client.rng.below(self.keys.len() as u64) as usize].clone();
        let roll = self.client.rng.below(100);
        if let Some((key, token)) = self.held.clone() {
            return match roll {
                0..=49 => Request {
                    lock_token: Some(token),
                    ..Request::new(key, self.write_op())
                },
                50..=59 => {
                    let ttl_ms = self.ttl_ms();
                    Request {
                        lock_token: Some(token),
                        ..Request::new(key, Op::LockRenew { token, ttl_ms })
                    }
                }
                60..=71 => Request {
                    lock_token: Some(token),
                    ..Request::new(key, Op::LockRelease { token })
                },
                72..=76 => self.grant(key),
                77..=88 => Request::new(any_key, self.write_op()),
                _ => self.stale_write(any_key),
            };
        }
        match roll {
            0..=39 => self.grant(any_key),
            40..=69 => Request::new(any_key, self.write_op()),
            70..=84 => self.stale_write(any_key),
            _ => Request::new(any_key, Op::Read { strong: true }),
        }
    }

    fn grant(&mut self, key: Key) -> Request {
        let op = Op::LockGrant {
            holder: self.holder.clone(),
            ttl_ms: self.ttl_ms(),
        };
        Request::new(key, op)
    }

    /// A write with a token this client held before, or a made-up old one.
    fn stale_write(&mut self, key: Key) -> Request {
        let (key, token) = match self.stale.len() as u64 {
            0 => (key, 1 + self.client.rng.below(3)),
            n => self.stale[self.client.rng.below(n) as usize].clone(),
        };
        Request {
            lock_token: Some(token),
            ..Request::new(key, self.write_op())
        }
    }

    fn forget(&mut self) {
        if let Some(old) = self.held.take() {
            if self.stale.len() >= STALE_MEMORY {
                self.stale.remove(0);
            }
            self.stale.push(old);
        }
    }

    /// What an answer says about the lock this client holds.
    fn learn(&mut self, event: &Event) {
        let lost = matches!(
            &event.reply,
            Some(Reply::Problem { kind, .. }) if kind == "lock_lost"
        );
        let mine = self
            .held
            .as_ref()
            .is_some_and(|(key, token)| *key == event.key && event.lock_token == Some(*token));
        match (&event.op, &event.outcome) {
            (_, Outcome::Refused { status: 404, .. }) => self.missing = Some(event.key.clone()),
            (Op::LockGrant { .. }, Outcome::Ok { .. }) => {
                self.forget();
                if let Some(Reply::Lock { token, .. }) = &event.reply {
                    self.held = Some((event.key.clone(), *token));
                }
            }
            // The grant may have taken effect: the lease ends by itself.
            (Op::LockGrant { .. }, Outcome::Indeterminate { .. }) => self.forget(),
            (Op::LockRelease { .. }, _) if mine => self.forget(),
            _ if mine && lost => self.forget(),
            _ => {}
        }
    }
}
