//! What deciding a group reads, brought from the ledger into the [`View`]
//! before [`decide`](crate::decide) runs: it sits beside the decision so
//! that a new kind of request names what it reads where it is decided.

use shelfsync_core::ItemKey;
use shelfsync_ledger::{Action, Ledger, LedgerError, Object, Recorded};

use crate::{Request, View, transfers};

impl View {
    /// Brings into the view what deciding `requests` reads: the keys they
    /// name (kept from earlier groups when already there), each write's
    /// idempotency record and what an accepted one points to, and the holds
    /// and transfers that steps name. With `lookup_idempotency` false (a
    /// deliberate bug of the fault suite) a retry is decided anew.
    pub fn fetch(
        &mut self,
        ledger: &dyn Ledger,
        requests: &[Request],
        lookup_idempotency: bool,
    ) -> Result<(), LedgerError> {
        self.idempotency.clear();
        self.changes.clear();
        self.holds.clear();
        self.transfers.clear();
        for request in requests {
            let (store, idempotency_key) = match request {
                Request::Read(key) => {
                    self.load(ledger, key)?;
                    continue;
                }
                Request::Write(command) => {
                    for line in &command.lines {
                        self.load(ledger, &line.key)?;
                    }
                    (&command.store, &command.idempotency_key)
                }
                Request::Step(step) => {
                    let new_keys = match &step.action {
                        Action::HoldCreate { lines, .. } => {
                            lines.iter().map(|l| l.key.clone()).collect()
                        }
                        Action::TransferCreate { from, lines, .. } => transfers::keys(from, lines),
                        _ => Vec::new(),
                    };
                    for key in &new_keys {
                        self.load(ledger, key)?;
                    }
                    if let Some(id) = step.action.id() {
                        self.load_object(ledger, step.action.is_transfer(), id)?;
                    }
                    (&step.store, &step.idempotency_key)
                }
            };
            let id = (store.clone(), idempotency_key.clone());
            if !lookup_idempotency || self.idempotency.contains_key(&id) {
                continue;
            }
            let Some(record) = ledger.idempotency(&id.0, &id.1)? else {
                continue;
            };
            match &record.outcome {
                Recorded::Accepted { seq, locations, .. } => {
                    for (location, seq) in locations.iter().zip(*seq..) {
                        if let Some(change) = ledger.change(location, seq)? {
                            self.changes.insert(seq, change);
                        }
                    }
                }
                Recorded::Step { action, id } => {
                    self.load_object(ledger, action.is_transfer(), id)?;
                }
                Recorded::Rejected { .. } | Recorded::StepRejected { .. } => {}
            }
            self.idempotency.insert(id, record);
        }
        Ok(())
    }

    /// Brings a hold (or a transfer) and the states of the keys it writes
    /// into the view, unless it is there.
    fn load_object(
        &mut self,
        ledger: &dyn Ledger,
        transfer: bool,
        id: &str,
    ) -> Result<(), LedgerError> {
        let object = match transfer {
            false if !self.holds.contains_key(id) => {
                let hold = ledger.hold(id)?;
                self.holds.insert(id.to_string(), hold.clone());
                hold.map(Object::Hold)
            }
            true if !self.transfers.contains_key(id) => {
                let found = ledger.transfer(id)?;
                self.transfers.insert(id.to_string(), found.clone());
                found.map(Object::Transfer)
            }
            _ => None,
        };
        for key in object.iter().flat_map(Object::keys) {
            self.load(ledger, &key)?;
        }
        Ok(())
    }

    /// Brings a key's state into the view, unless it is there.
    fn load(&mut self, ledger: &dyn Ledger, key: &ItemKey) -> Result<(), LedgerError> {
        if !self.items.contains_key(key) {
            let record = ledger.load(key)?;
            self.items.insert(key.clone(), record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shelfsync_core::{ItemKey, KeyState, Op};
    use shelfsync_ledger::engine::MemoryLedger;
    use shelfsync_ledger::{Buckets, Ledger, Line};

    use crate::{Answer, Command, Request, View, decide};

    const NOW: u64 = 1_000_000;
    const TTL: u64 = 60_000;

    fn write(idempotency_key: &str, op: Op) -> Request {
        Request::Write(Command {
            store: "s1".into(),
            idempotency_key: idempotency_key.into(),
            lines: vec![Line {
                key: ItemKey::new("s1", "milk").unwrap(),
                op,
                expected_version: None,
                lock_token: None,
            }],
        })
    }

    fn create() -> Request {
        let name = "milk".into();
        write("k1", Op::Create { name, quantity: 5 })
    }

    /// Decides `requests` on a fresh view fetched from `ledger` and commits
    /// the group; returns the answers.
    fn round(ledger: &dyn Ledger, requests: &[Request], lookup: bool) -> Vec<Answer> {
        let mut view = View::default();
        view.fetch(ledger, requests, lookup).unwrap();
        let decision = decide(requests, &mut view, ledger.head().unwrap(), NOW, TTL);
        ledger.commit(decision.group).unwrap();
        decision.answers
    }

    /// `(seq, quantity, replayed)` of an accepted single-line answer.
    fn accepted(answer: &Answer) -> (u64, u64, bool) {
        match answer {
            Answer::Accepted { changes, replayed } => match &changes[..] {
                [(seq, KeyState::Live(item))] => (*seq, item.quantity, *replayed),
                other => panic!("unexpected changes {other:?}"),
            },
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn a_retry_is_answered_from_what_fetch_brings() {
        let ledger = MemoryLedger::new(Buckets { width_ms: TTL }).unwrap();
        assert_eq!(
            accepted(&round(&ledger, &[create()], true)[0]),
            (1, 5, false)
        );
        let remove = write("k2", Op::Remove { amount: 2 });
        assert_eq!(accepted(&round(&ledger, &[remove], true)[0]), (2, 3, false));
        // Fetched from the ledger alone (a fresh view): the record and the
        // change it points to answer the retry as it was first answered,
        // not with the key's state now, and nothing is written.
        let retry = round(&ledger, &[create()], true);
        assert_eq!(accepted(&retry[0]), (1, 5, true));
        assert_eq!(ledger.head().unwrap(), 2);
    }

    #[test]
    fn without_the_lookup_a_retry_is_decided_anew() {
        let ledger = MemoryLedger::new(Buckets { width_ms: TTL }).unwrap();
        round(&ledger, &[create()], true);
        let retry = round(&ledger, &[create()], false);
        // The key exists now: a second create is refused, not replayed.
        assert!(matches!(retry[0], Answer::Refused(_)), "{retry:?}");
    }
}
