//! The sequencer's thread: takes every queued job as one group, fetches
//! what deciding it reads, decides it with [`sequencer::decide`], commits it
//! with one [`Ledger::commit`], raises the head and answers the jobs (the
//! module above says why in this order).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shelfsync_core::ItemKey;
use shelfsync_ledger::{Action, CommitGroup, Ledger, LedgerError, Object, Recorded};
use shelfsync_proto::time::now_ms;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    ACK_PATH_NICE, Failure, GROUP_LINGER, ITEM_CACHE_ENTRIES, Job, MAX_EXPIRIES, MAX_GROUP, Wake,
    set_nice, unavailable,
};
use crate::digests::Digests;
use crate::failpoints;
use crate::metrics::Metrics;
use crate::sequencer::{self, Answer, Request, View};

pub(super) struct Sequencer {
    pub(super) ledger: Arc<dyn Ledger>,
    pub(super) wake: Arc<Wake>,
    pub(super) ttl_ms: u64,
    pub(super) head: u64,
    pub(super) head_tx: watch::Sender<u64>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) failed: Arc<Failure>,
    pub(super) digests: Arc<Digests>,
    /// Item states kept between groups (a cache of the ledger's); the
    /// idempotency records and changes are fetched per group.
    pub(super) view: View,
}

impl Sequencer {
    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        set_nice(ACK_PATH_NICE);
        let mut last_group = 0;
        while let Some(first) = jobs.blocking_recv() {
            if last_group > 1 {
                std::thread::sleep(GROUP_LINGER);
            }
            let (mut requests, mut replies) = (Vec::new(), Vec::new());
            let (mut stop, mut tick) = (false, false);
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Work {
                        request,
                        queued,
                        reply,
                    } => {
                        self.metrics.observe_key_wait(queued.elapsed());
                        requests.push(request);
                        replies.push(reply);
                    }
                    Job::Tick => tick = true,
                    Job::Stop => {
                        stop = true;
                        break;
                    }
                }
                if requests.len() < MAX_GROUP {
                    next = jobs.try_recv().ok();
                }
            }
            last_group = requests.len();
            let mut group = Ok(());
            if tick {
                group = self.expire(&mut requests, &mut replies);
            }
            if let Err(err) = group.and_then(|()| self.run_group(requests, replies)) {
                tracing::error!(error = %err, "the ledger failed; the pipeline stops");
                self.failed.set(&err);
                jobs.close();
                while let Ok(Job::Work { reply, .. }) = jobs.try_recv() {
                    let _ = reply.send(Answer::Refused(unavailable()));
                }
                return;
            }
            if stop {
                return;
            }
        }
    }

    /// Adds to the group the coordinator's own writes that end the locks
    /// past their lease and the holds past their expiry; nobody waits for
    /// their answers.
    fn expire(
        &self,
        requests: &mut Vec<Request>,
        replies: &mut Vec<oneshot::Sender<Answer>>,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        for due in self.ledger.due_locks(now, MAX_EXPIRIES)? {
            requests.push(Request::Write(sequencer::lock_expiry(due)));
            replies.push(oneshot::channel().0);
        }
        for id in self.ledger.due_holds(now, MAX_EXPIRIES)? {
            requests.push(Request::Step(sequencer::hold_expiry(id)));
            replies.push(oneshot::channel().0);
        }
        Ok(())
    }

    /// Fetches, decides, commits and answers one group. On an error the
    /// group's jobs are answered `unavailable` (dropped replies do that).
    fn run_group(
        &mut self,
        requests: Vec<Request>,
        replies: Vec<oneshot::Sender<Answer>>,
    ) -> Result<(), LedgerError> {
        if requests.is_empty() {
            return Ok(());
        }
        self.fetch(&requests)?;
        let sequencer::Decision {
            group,
            replaced,
            answers,
        } = sequencer::decide(&requests, &mut self.view, self.head, now_ms(), self.ttl_ms);
        for (request, answer) in requests.iter().zip(&answers) {
            self.metrics.count(request, answer);
        }
        self.metrics.observe_group(requests.len());
        for (write, before) in group.writes.iter().zip(&replaced) {
            let change = &write.change;
            self.digests
                .apply(&change.key.location, change.seq, before, &change.state);
        }
        let head = group.head;
        let (touched, transfer_ends) = touched(&group);
        let has_writes = !(group.writes.is_empty()
            && group.idempotency.is_empty()
            && group.holds.is_empty()
            && group.transfers.is_empty());
        if has_writes && failpoints::triggered(failpoints::ACK_BEFORE_DURABLE) {
            // A deliberate bug for the fault suite: answered before the
            // commit, which comes a moment later.
            self.answer(replies, answers, head);
            std::thread::sleep(Duration::from_millis(50));
            self.commit(group)?;
        } else {
            if has_writes {
                self.commit(group)?;
            }
            self.wake.transfers.mark(&transfer_ends);
            self.answer(replies, answers, head);
        }
        // Durable and readable: the subscribers may sync.
        self.wake.subscribers.wake(&touched);
        if self.view.items.len() > ITEM_CACHE_ENTRIES {
            self.view.items.clear();
        }
        Ok(())
    }

    /// Commits `group`; returns once it is durable.
    fn commit(&self, group: CommitGroup) -> Result<(), LedgerError> {
        let started = Instant::now();
        fail::fail_point!(failpoints::LEDGER_COMMIT, |arg| Err(LedgerError::Storage(
            format!(
                "cannot commit to the ledger (injected): {}",
                failpoints::io_error(arg)
            )
        )));
        self.ledger.commit(group)?;
        self.metrics.observe_flush(started.elapsed());
        // Durable and not yet acknowledged: where the fault suite crashes.
        failpoints::crash_point(failpoints::AFTER_COMMIT_BEFORE_ACK);
        Ok(())
    }

    /// Raises the head, then answers: a reader that comes after an
    /// acknowledgement sees the write.
    fn answer(&mut self, replies: Vec<oneshot::Sender<Answer>>, answers: Vec<Answer>, head: u64) {
        self.head = head;
        self.head_tx.send_if_modified(|current| {
            let raised = head > *current;
            *current = (*current).max(head);
            raised
        });
        self.metrics.set_head(head);
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// Brings into the view what deciding `requests` reads.
    fn fetch(&mut self, requests: &[Request]) -> Result<(), LedgerError> {
        self.view.idempotency.clear();
        self.view.changes.clear();
        self.view.holds.clear();
        self.view.transfers.clear();
        for request in requests {
            let (store, idempotency_key) = match request {
                Request::Read(key) => {
                    self.load(key)?;
                    continue;
                }
                Request::Write(command) => {
                    for line in &command.lines {
                        self.load(&line.key)?;
                    }
                    (&command.store, &command.idempotency_key)
                }
                Request::Step(step) => {
                    let new_keys = match &step.action {
                        Action::HoldCreate { lines, .. } => {
                            lines.iter().map(|l| l.key.clone()).collect()
                        }
                        Action::TransferCreate { from, lines, .. } => {
                            sequencer::transfers::keys(from, lines)
                        }
                        _ => Vec::new(),
                    };
                    for key in &new_keys {
                        self.load(key)?;
                    }
                    if let Some(id) = step.action.id() {
                        self.load_object(step.action.is_transfer(), id)?;
                    }
                    (&step.store, &step.idempotency_key)
                }
            };
            // A deliberate bug for the fault suite: a retry is decided anew.
            if failpoints::triggered(failpoints::SKIP_IDEMPOTENCY_LOOKUP) {
                continue;
            }
            let id = (store.clone(), idempotency_key.clone());
            if self.view.idempotency.contains_key(&id) {
                continue;
            }
            let Some(record) = self.ledger.idempotency(&id.0, &id.1)? else {
                continue;
            };
            match &record.outcome {
                Recorded::Accepted { seq, locations, .. } => {
                    for (location, seq) in locations.iter().zip(*seq..) {
                        if let Some(change) = self.ledger.change(location, seq)? {
                            self.view.changes.insert(seq, change);
                        }
                    }
                }
                Recorded::Step { action, id } => self.load_object(action.is_transfer(), id)?,
                Recorded::Rejected { .. } | Recorded::StepRejected { .. } => {}
            }
            self.view.idempotency.insert(id, record);
        }
        Ok(())
    }

    /// Brings a hold (or a transfer) and the states of the keys it writes
    /// into the view, unless it is there.
    fn load_object(&mut self, transfer: bool, id: &str) -> Result<(), LedgerError> {
        let object = match transfer {
            false if !self.view.holds.contains_key(id) => {
                let hold = self.ledger.hold(id)?;
                self.view.holds.insert(id.to_string(), hold.clone());
                hold.map(Object::Hold)
            }
            true if !self.view.transfers.contains_key(id) => {
                let found = self.ledger.transfer(id)?;
                self.view.transfers.insert(id.to_string(), found.clone());
                found.map(Object::Transfer)
            }
            _ => None,
        };
        for key in object.iter().flat_map(Object::keys) {
            self.load(&key)?;
        }
        Ok(())
    }

    /// Brings a key's state into the view, unless it is there.
    fn load(&mut self, key: &ItemKey) -> Result<(), LedgerError> {
        if !self.view.items.contains_key(key) {
            let record = self.ledger.load(key)?;
            self.view.items.insert(key.clone(), record);
        }
        Ok(())
    }
}

/// The locations a group's changes and transfers touch, and the ends of
/// its transfers, each list sorted and distinct.
fn touched(group: &CommitGroup) -> (Vec<String>, Vec<String>) {
    let mut ends: Vec<&str> = (group.transfers.iter())
        .flat_map(|t| [t.from.as_str(), t.to.as_str()])
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let mut all: Vec<&str> = group
        .writes
        .iter()
        .map(|w| w.change.key.location.as_str())
        .collect();
    all.extend(&ends);
    all.sort_unstable();
    all.dedup();
    let owned = |list: Vec<&str>| list.into_iter().map(str::to_owned).collect();
    (owned(all), owned(ends))
}
