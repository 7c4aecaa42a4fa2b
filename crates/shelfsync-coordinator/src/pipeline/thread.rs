//! The sequencer's thread: takes every queued job as one group, fetches
//! what deciding it reads, decides it with [`sequencer::decide`], commits it
//! with one [`Ledger::commit`], raises the head and answers the jobs (the
//! module above says why in this order).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shelfsync_ledger::{CommitGroup, Ledger, LedgerError};
use shelfsync_proto::time::now_ms;
use shelfsync_sequencer::{self as sequencer, Answer, Request, View};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    ACK_PATH_NICE, Failure, GROUP_LINGER, ITEM_CACHE_ENTRIES, Job, MAX_EXPIRIES, MAX_GROUP, Wake,
    set_nice, unavailable,
};
use crate::digests::Digests;
use crate::failpoints;
use crate::metrics::Metrics;

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
        // A deliberate bug for the fault suite: a retry is decided anew.
        let lookup = !failpoints::triggered(failpoints::SKIP_IDEMPOTENCY_LOOKUP);
        (self.view).fetch(self.ledger.as_ref(), &requests, lookup)?;
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
        let (touched, transfer_ends) = (group.locations(), group.transfer_ends());
        let has_writes = !group.is_empty();
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
}
