//! Stock clients: one per store, writing the store's own location (the
//! home) through the store's agent.
//!
//! A stock client ships transfers of one or two skus from its home to
//! another store's location, receives them in parts through the agent of
//! the store that writes the destination (now and then asking for more
//! than is left, which must be refused), and closes them (the rest is
//! lost) through either end's agent. Between transfers it changes its own
//! stock with single-key ops (counts, sales, deliveries, deletes), with
//! batches, some of whose lines are on hot keys of the shared location, and
//! with holds of 1–3 s on its own items that it fulfils, releases or lets
//! the coordinator expire, so that stock moves in every way the
//! conservation checker accounts for.

use std::sync::atomic::Ordering;

use super::{Client, Control, Recorder, Request, Targets, Workload};
use crate::nemesis::history::{BatchLine, Event, HoldLine, Key, Op, Outcome, Reply, Units};

/// Open transfers (and active holds) a client keeps track of.
const OPEN_MEMORY: usize = 6;

/// A transfer this client shipped and has not seen closed.
#[derive(Debug, Clone)]
struct Open {
    id: String,
    from: String,
    to: String,
    /// Per sku: shipped, received so far.
    lines: Vec<(String, u64, u64)>,
}

/// A stock client and the transfers and holds it keeps track of.
pub(super) struct StockClient {
    client: Client,
    stores: Vec<String>,
    home: usize,
    skus: Vec<String>,
    hot_keys: Vec<Key>,
    /// The last version seen per home key.
    versions: Vec<(Key, u64)>,
    open: Vec<Open>,
    /// Active holds this client made: id and lines.
    holds: Vec<(String, Vec<HoldLine>)>,
    /// A home key answered 404: create it next.
    missing: Option<Key>,
}

impl StockClient {
    pub(super) fn new(client: Client, workload: &Workload, home: usize) -> Self {
        let home_location = workload.stores[home].clone();
        let first = workload
            .skus
            .first()
            .map(|sku| Key::new(&home_location, sku));
        StockClient {
            client,
            stores: workload.stores.clone(),
            home,
            skus: workload.skus.clone(),
            hot_keys: workload.keys.clone(),
            versions: Vec::new(),
            open: Vec::new(),
            holds: Vec::new(),
            missing: first,
        }
    }

    fn home(&self) -> &str {
        &self.stores[self.home]
    }

    pub(super) async fn run(mut self, targets: &Targets, recorder: &Recorder, control: &Control) {
        while !control.stop.load(Ordering::Relaxed) {
            let (request, store) = self.next_request();
            if !self.send(targets, recorder, request, &store).await {
                return;
            }
        }
        // What it still holds goes back now, so the run need not wait for
        // the coordinator to expire it.
        let home = self.home().to_string();
        for (hold, lines) in std::mem::take(&mut self.holds) {
            let key = lines[0].key.clone();
            let request = Request::new(key, Op::HoldRelease { hold, lines });
            self.send(targets, recorder, request, &home).await;
        }
    }

    /// Sends `request` through `store`'s agent; false when there is none.
    async fn send(
        &mut self,
        targets: &Targets,
        recorder: &Recorder,
        request: Request,
        store: &str,
    ) -> bool {
        let Some((store, rest)) = targets.get(store) else {
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

    fn home_key(&mut self) -> Key {
        let sku = &self.skus[self.client.rng.below(self.skus.len() as u64) as usize];
        Key::new(self.home(), sku)
    }

    fn version_of(&self, key: &Key) -> Option<u64> {
        self.versions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// The next request and the store whose agent is to take it.
    fn next_request(&mut self) -> (Request, String) {
        let home = self.home().to_string();
        if let Some(key) = self.missing.take() {
            let op = Op::Create {
                name: format!("Item {}", key.sku),
                quantity: 10 + self.client.rng.below(10),
            };
            return (Request::new(key, op), home);
        }
        let roll = self.client.rng.below(100);
        match roll {
            0..=15 => (self.ship(), home),
            16..=33 if !self.open.is_empty() => self.receive(),
            34..=40 if !self.open.is_empty() => self.close(),
            41..=50 => (self.batch(), home),
            51..=57 => (self.hold(), home),
            58..=63 if !self.holds.is_empty() => (self.end_hold(), home),
            64..=89 => (self.single(), home),
            _ => {
                let key = self.home_key();
                let strong = self.client.rng.below(2) == 0;
                (Request::new(key, Op::Read { strong }), home)
            }
        }
    }

    fn ship(&mut self) -> Request {
        let rng = &mut self.client.rng;
        let others = self.stores.len() as u64 - 1;
        let to = (self.home as u64 + 1 + rng.below(others.max(1))) % self.stores.len() as u64;
        let mut skus = self.skus.clone();
        let n = 1 + rng.below(2).min(skus.len() as u64 - 1);
        let mut lines = Vec::new();
        for _ in 0..n {
            let sku = skus.remove(rng.below(skus.len() as u64) as usize);
            lines.push(Units {
                sku,
                amount: 1 + rng.below(3),
            });
        }
        let key = Key::new(self.home(), &lines[0].sku);
        let op = Op::TransferCreate {
            from: self.home().to_string(),
            to: self.stores[to as usize].clone(),
            lines,
        };
        Request::new(key, op)
    }

    /// A receipt of part of an open transfer, at its destination's agent;
    /// one in ten asks for one more unit than is left.
    fn receive(&mut self) -> (Request, String) {
        let rng = &mut self.client.rng;
        let i = rng.below(self.open.len() as u64) as usize;
        let open = &self.open[i];
        let over = rng.below(10) == 0;
        let mut lines = Vec::new();
        for (sku, shipped, received) in &open.lines {
            let left = shipped.saturating_sub(*received);
            let amount = match (over, left) {
                (true, _) => left + 1,
                (false, 0) => continue,
                (false, left) => 1 + rng.below(left),
            };
            lines.push(Units {
                sku: sku.clone(),
                amount,
            });
        }
        if lines.is_empty() {
            return self.close();
        }
        let key = Key::new(&open.to, &lines[0].sku);
        let op = Op::TransferReceive {
            transfer: open.id.clone(),
            to: open.to.clone(),
            lines,
        };
        (Request::new(key, op), open.to.clone())
    }

    /// A close of an open transfer, through either end's agent.
    fn close(&mut self) -> (Request, String) {
        let rng = &mut self.client.rng;
        let open = &self.open[rng.below(self.open.len() as u64) as usize];
        let store = match rng.below(2) {
            0 => open.from.clone(),
            _ => open.to.clone(),
        };
        let key = Key::new(&open.from, &open.lines[0].0);
        let op = Op::TransferClose {
            transfer: open.id.clone(),
        };
        (Request::new(key, op), store)
    }

    /// A batch over the home keys and, one time in three, a hot key.
    fn batch(&mut self) -> Request {
        let mut keys: Vec<Key> = self.skus.iter().map(|s| Key::new(self.home(), s)).collect();
        let rng = &mut self.client.rng;
        if !self.hot_keys.is_empty() && rng.below(3) == 0 {
            keys.push(self.hot_keys[rng.below(self.hot_keys.len() as u64) as usize].clone());
        }
        let mut lines = Vec::new();
        while !keys.is_empty() && (lines.len() < 2 || rng.below(2) == 0) {
            let key = keys.remove(rng.below(keys.len() as u64) as usize);
            let amount = 1 + rng.below(3);
            let op = match rng.below(6) {
                0 | 1 => Op::Add { amount },
                2 => Op::Remove { amount },
                3 => Op::Reserve { amount },
                4 => Op::Release { amount },
                _ => Op::Fulfil { amount },
            };
            lines.push(BatchLine {
                key,
                op,
                expected_version: None,
            });
        }
        Request::new(lines[0].key.clone(), Op::Batch { lines })
    }

    /// A hold of one or two home items for 1–3 s.
    fn hold(&mut self) -> Request {
        let mut skus = self.skus.clone();
        let rng = &mut self.client.rng;
        let n = 1 + rng.below(2).min(skus.len() as u64 - 1);
        let mut lines = Vec::new();
        for _ in 0..n {
            let sku = skus.remove(rng.below(skus.len() as u64) as usize);
            lines.push(HoldLine {
                key: Key::new(&self.stores[self.home], &sku),
                amount: 1 + rng.below(2),
            });
        }
        let ttl_ms = 1_000 + 500 * rng.below(5);
        Request::new(lines[0].key.clone(), Op::HoldCreate { lines, ttl_ms })
    }

    /// A fulfilment (two in three) or a release of an active hold.
    fn end_hold(&mut self) -> Request {
        let rng = &mut self.client.rng;
        let (hold, lines) = self.holds[rng.below(self.holds.len() as u64) as usize].clone();
        let key = lines[0].key.clone();
        let op = match rng.below(3) {
            0 => Op::HoldRelease { hold, lines },
            _ => Op::HoldFulfil { hold, lines },
        };
        Request::new(key, op)
    }

    fn single(&mut self) -> Request {
        let key = self.home_key();
        let known = self.version_of(&key);
        let rng = &mut self.client.rng;
        let amount = 1 + rng.below(3);
        let op = match rng.below(100) {
            0..=24 => Op::Add {
                amount: 1 + rng.below(5),
            },
            25..=49 => Op::Remove { amount },
            50..=59 => Op::Reserve { amount },
            60..=69 => Op::Release { amount },
            70..=79 => Op::Fulfil { amount },
            80..=89 => Op::Set {
                name: None,
                quantity: Some(5 + rng.below(20)),
            },
            90..=95 => Op::Create {
                name: format!("Item {}", key.sku),
                quantity: 10 + rng.below(10),
            },
            _ => Op::Delete,
        };
        let if_match = match op {
            Op::Set { .. } | Op::Delete => Some(known.unwrap_or(1)),
            _ => None,
        };
        Request {
            if_match,
            ..Request::new(key, op)
        }
    }

    /// Keeps track of transfers and versions from an answer.
    fn learn(&mut self, event: &Event) {
        if let Outcome::Ok { item: Some(item) } = &event.outcome {
            self.saw(&event.key, item.version);
        }
        if let (
            Outcome::Refused {
                current: Some(item),
                ..
            },
            true,
        ) = (&event.outcome, event.op.is_single_key())
        {
            self.saw(&event.key, item.version);
        }
        let ok = matches!(event.outcome, Outcome::Ok { .. });
        let status = match event.outcome {
            Outcome::Refused { status, .. } => Some(status),
            _ => None,
        };
        match (&event.op, &event.reply) {
            (Op::Read { .. } | Op::Add { .. } | Op::Remove { .. }, _)
                if status == Some(404) && event.key.location == self.home() =>
            {
                self.missing = Some(event.key.clone());
            }
            // An answer without lines is not kept: it could not be
            // received, closed or ended by line.
            (Op::TransferCreate { from, to, .. }, Some(Reply::Transfer(t)))
                if ok && !t.lines.is_empty() =>
            {
                if self.open.len() >= OPEN_MEMORY {
                    self.open.remove(0);
                }
                self.open.push(Open {
                    id: t.id.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    lines: t
                        .lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.shipped, l.received))
                        .collect(),
                });
            }
            (Op::TransferReceive { transfer, .. }, Some(Reply::Transfer(t))) if ok => {
                if let Some(open) = self.open.iter_mut().find(|o| &o.id == transfer) {
                    open.lines = t
                        .lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.shipped, l.received))
                        .collect();
                }
            }
            (Op::TransferReceive { transfer, .. } | Op::TransferClose { transfer }, _)
                if ok || matches!(status, Some(404 | 410)) =>
            {
                let closed = matches!(event.op, Op::TransferClose { .. }) || status == Some(410);
                if closed || status == Some(404) {
                    self.open.retain(|o| &o.id != transfer);
                }
            }
            (Op::HoldCreate { .. }, Some(Reply::Hold { id, lines, .. }))
                if ok && !lines.is_empty() =>
            {
                if self.holds.len() >= OPEN_MEMORY {
                    self.holds.remove(0);
                }
                self.holds.push((id.clone(), lines.clone()));
            }
            (Op::HoldFulfil { hold, .. } | Op::HoldRelease { hold, .. }, _)
                if ok || matches!(status, Some(404 | 410)) =>
            {
                self.holds.retain(|(id, _)| id != hold);
            }
            (Op::Batch { lines }, Some(Reply::Items { items })) if ok => {
                for (line, item) in lines.iter().zip(items) {
                    if let Some(item) = item {
                        self.saw(&line.key, item.version);
                    }
                }
            }
            _ => {}
        }
    }

    fn saw(&mut self, key: &Key, version: u64) {
        match self.versions.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = version,
            None => self.versions.push((key.clone(), version)),
        }
    }
}
