//! Hot-key clients: every op of SPEC §2, and now and then a batch of two
//! or three of them, on the run's hot keys, mostly through the client's
//! home agent; about one op in twenty an earlier definite write (or batch)
//! sent again with its idempotency key.

use std::sync::atomic::Ordering;

use super::{Client, Control, REPLAY_MEMORY, Recorder, Request, Targets};
use crate::nemesis::history::{BatchLine, Event, Key, Op, Outcome, Reply};

/// A hot-key client and what it remembers between ops.
pub(super) struct HotClient {
    client: Client,
    keys: Vec<Key>,
    /// The last version this client saw per key.
    versions: Vec<(Key, u64)>,
    /// Recent definite writes, for replays: (event id, request, store).
    answered: Vec<(u64, Request, String)>,
}

impl HotClient {
    pub(super) fn new(client: Client, keys: Vec<Key>) -> Self {
        HotClient {
            client,
            keys,
            versions: Vec::new(),
            answered: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, targets: &Targets, recorder: &Recorder, control: &Control) {
        while !control.stop.load(Ordering::Relaxed) {
            let agents = targets.len();
            if agents == 0 {
                return;
            }
            let rng = &mut self.client.rng;
            // Mostly the home agent, sometimes another.
            let pick = if rng.below(5) == 0 {
                rng.below(agents)
            } else {
                u64::from(self.client.id)
            };
            let (request, replay_of, home) = self.next_request();
            // A replay goes to the store that sent the original: an
            // idempotency key is that store's.
            let target = match home {
                Some(store) => targets.get(&store),
                None => targets.pick(pick),
            };
            let Some((store, rest)) = target else {
                return;
            };
            let event = self
                .client
                .perform(recorder, &store, &rest, request, replay_of)
                .await;
            self.learn(&event, &store);
        }
    }

    fn version_of(&self, key: &Key) -> Option<u64> {
        self.versions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// The next op: mostly a new one, sometimes an earlier write again.
    /// Returns the request, and for a replay the id of the original and
    /// the store that sent it.
    fn next_request(&mut self) -> (Request, Option<u64>, Option<String>) {
        let rng = &mut self.client.rng;
        if !self.answered.is_empty() && rng.below(20) == 0 {
            let i = rng.below(self.answered.len() as u64) as usize;
            let (id, request, store) = self.answered[i].clone();
            return (request, Some(id), Some(store));
        }
        if self.keys.len() >= 2 && rng.below(20) == 0 {
            let request = self.batch();
            return (self.client.keyed(request), None, None);
        }
        let key = self.keys[rng.below(self.keys.len() as u64) as usize].clone();
        let known = self.version_of(&key);
        let rng = &mut self.client.rng;
        let amount = 1 + rng.below(3);
        let roll = rng.below(100);
        let op = match roll {
            0..=14 => Op::Read { strong: false },
            15..=29 => Op::Read { strong: true },
            30..=39 => Op::Add {
                amount: 1 + rng.below(5),
            },
            40..=49 => Op::Remove { amount },
            50..=61 => Op::Reserve { amount },
            62..=69 => Op::Release { amount },
            70..=75 => Op::Fulfil { amount },
            76..=83 => {
                if rng.below(2) == 0 {
                    Op::Set {
                        name: None,
                        quantity: Some(5 + rng.below(20)),
                    }
                } else {
                    Op::Set {
                        name: Some(format!("Item {}", rng.below(1000))),
                        quantity: None,
                    }
                }
            }
            84..=91 => Op::Create {
                name: format!("Item {}", key.sku),
                quantity: 10 + rng.below(10),
            },
            _ => Op::Delete,
        };
        let if_match = match op {
            Op::Set { .. } | Op::Delete => Some(known.unwrap_or(1)),
            Op::Read { .. } | Op::Create { .. } => None,
            _ => known.filter(|_| rng.below(5) == 0),
        };
        let mut request = Request::new(key, op);
        request.if_match = if_match;
        (self.client.keyed(request), None, None)
    }

    /// A batch of amount ops on two or three distinct hot keys, a line now
    /// and then expecting the version this client last saw.
    fn batch(&mut self) -> Request {
        let mut keys = self.keys.clone();
        let rng = &mut self.client.rng;
        let n = 2 + rng.below(2).min(keys.len() as u64 - 2);
        let mut lines = Vec::new();
        for _ in 0..n {
            let key = keys.remove(rng.below(keys.len() as u64) as usize);
            let amount = 1 + rng.below(3);
            let op = match rng.below(5) {
                0 => Op::Add { amount },
                1 => Op::Remove { amount },
                2 => Op::Reserve { amount },
                3 => Op::Release { amount },
                _ => Op::Fulfil { amount },
            };
            let expect = rng.below(5) == 0;
            lines.push((key, op, expect));
        }
        let lines: Vec<BatchLine> = lines
            .into_iter()
            .map(|(key, op, expect)| BatchLine {
                expected_version: self.version_of(&key).filter(|_| expect),
                key,
                op,
            })
            .collect();
        Request::new(lines[0].key.clone(), Op::Batch { lines })
    }

    /// Remembers the versions an answer showed, and definite writes for
    /// replays.
    fn learn(&mut self, event: &Event, store: &str) {
        let mut seen = Vec::new();
        match (&event.outcome, &event.reply, &event.op) {
            (Outcome::Ok { item: Some(item) }, _, _) => {
                seen.push((event.key.clone(), item.version))
            }
            // A batch's refusal shows the refused line's item.
            (
                Outcome::Refused {
                    current: Some(item),
                    ..
                },
                _,
                op,
            ) if op.is_single_key() => seen.push((event.key.clone(), item.version)),
            (Outcome::Ok { .. }, Some(Reply::Items { items }), Op::Batch { lines }) => {
                for (line, item) in lines.iter().zip(items) {
                    if let Some(item) = item {
                        seen.push((line.key.clone(), item.version));
                    }
                }
            }
            _ => {}
        }
        for (key, version) in seen {
            match self.versions.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = version,
                None => self.versions.push((key, version)),
            }
        }
        // A lock's refusal (423) is not recorded under the idempotency
        // key: sent again, the request is decided anew, so it is no replay.
        let locked = matches!(event.outcome, Outcome::Refused { status: 423, .. });
        if event.op.is_write()
            && event.outcome.is_definite()
            && !locked
            && event.replay_of.is_none()
        {
            let request = Request {
                key: event.key.clone(),
                op: event.op.clone(),
                if_match: event.if_match,
                idempotency_key: event.idempotency_key.clone(),
                lock_token: event.lock_token,
            };
            if self.answered.len() >= REPLAY_MEMORY {
                self.answered.remove(0);
            }
            self.answered.push((event.id, request, store.to_string()));
        }
    }
}
