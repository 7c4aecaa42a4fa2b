//! The sync loop's decisions as a pure state machine: given what just
//! happened ([`Event`]), what to do next ([`Next`]). No sockets, no clock,
//! no replica: [`super::Syncer::run`] does what [`Next`] says and feeds
//! back what came of it, so every path (bootstrap, catching up page by
//! page, an expired cursor, a diverged digest, a failure) is unit-tested
//! here by driving [`Machine::step`].
//!
//! A round: bootstrap from snapshot pages when the replica has no cursor,
//! then change pages up to the head, then the open transfers if the last
//! page says they changed since they were fetched, then a report. Then
//! wait for the interval or a wake-up (from push, or after a diverged
//! digest), and start again. Any failure ends the round and waits a
//! backoff instead.

use shelfsync_core::ItemKey;

/// What the replica says at the start of a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The replica's cursor (`None`: it needs a bootstrap).
    pub cursor: Option<u64>,
    /// Where a bootstrap cut short resumes (after this key).
    pub resume_after: Option<ItemKey>,
    /// The `transfers_at` its open transfers were fetched for.
    pub transfers_fetched_at: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The interval passed or a wake-up came: a round starts.
    Start(Facts),
    /// A snapshot page was applied; `next` is where the following page
    /// starts (`None`: it was the last, and the replica's cursor is
    /// `cursor`).
    SnapshotApplied {
        /// The key to continue after.
        next: Option<ItemKey>,
        /// The replica's cursor after the page.
        cursor: Option<u64>,
    },
    /// A change page was applied.
    ChangesApplied {
        /// The cursor after it.
        next: u64,
        /// The coordinator's head when it was read.
        head: u64,
        /// When the transfers of the locations last changed.
        transfers_at: u64,
    },
    /// The cursor is older than the coordinator's log; the replica's
    /// cursor was reset.
    CursorExpired,
    /// The open transfers were fetched and kept.
    TransfersKept,
    /// The report was acknowledged, with the coordinator's verdict on the
    /// replica's digest.
    Reported {
        /// Whether the digest matched (`None`: not checked).
        digest_ok: Option<bool>,
    },
    /// The replica's cursor was reset after a diverged digest.
    CursorReset,
    /// A request or a replica write failed.
    Failed,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask for the snapshot page after `after` and apply it.
    Snapshot {
        /// The key to start after.
        after: Option<ItemKey>,
    },
    /// Ask for the changes after `after` and apply them.
    Changes {
        /// The cursor.
        after: u64,
    },
    /// Fetch the open transfers and keep them as of `at`.
    Transfers {
        /// The `transfers_at` they are fetched for.
        at: u64,
    },
    /// Send a report.
    Report,
    /// Reset the replica's cursor: its digest differs from the
    /// coordinator's, and a fresh bootstrap heals it.
    ResetCursor,
    /// Start the next round at once.
    Again,
    /// Wait for the interval or a wake-up, then start a round.
    Wait {
        /// After a failure: wait a backoff (capped at the interval) instead.
        failed: bool,
    },
}

/// Where a round is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    Bootstrapping,
    Pulling,
    Fetching,
    Reporting,
    Resetting,
}

/// The sync loop's state between events.
#[derive(Debug, Default)]
pub struct Machine {
    phase: Phase,
    /// The `transfers_at` the kept transfers were fetched for.
    transfers_fetched_at: u64,
    /// The last digest verdict: a second mismatch in a row waits for the
    /// interval instead of bootstrapping again at once.
    digest_ok: Option<bool>,
    /// Whether the reset under way should be followed by a round at once.
    again_after_reset: bool,
}

impl Machine {
    /// Decides what follows `event`. An event that does not fit the phase
    /// (an answer to a request not sent) ends the round as a failure.
    pub fn step(&mut self, event: Event) -> Next {
        match (self.phase, event) {
            (Phase::Idle, Event::Start(facts)) => {
                self.transfers_fetched_at = facts.transfers_fetched_at;
                match facts.cursor {
                    None => self.to(
                        Phase::Bootstrapping,
                        Next::Snapshot {
                            after: facts.resume_after,
                        },
                    ),
                    Some(after) => self.to(Phase::Pulling, Next::Changes { after }),
                }
            }
            (Phase::Bootstrapping, Event::SnapshotApplied { next, cursor }) => {
                match (next, cursor) {
                    (Some(after), _) => Next::Snapshot { after: Some(after) },
                    (None, Some(after)) => self.to(Phase::Pulling, Next::Changes { after }),
                    (None, None) => self.failed(),
                }
            }
            (
                Phase::Pulling,
                Event::ChangesApplied {
                    next,
                    head,
                    transfers_at,
                },
            ) => {
                if next < head {
                    Next::Changes { after: next }
                } else if transfers_at > self.transfers_fetched_at {
                    self.to(Phase::Fetching, Next::Transfers { at: transfers_at })
                } else {
                    self.to(Phase::Reporting, Next::Report)
                }
            }
            (Phase::Pulling, Event::CursorExpired) => {
                self.to(Phase::Bootstrapping, Next::Snapshot { after: None })
            }
            (Phase::Fetching, Event::TransfersKept) => self.to(Phase::Reporting, Next::Report),
            (Phase::Reporting, Event::Reported { digest_ok }) => {
                let before = std::mem::replace(&mut self.digest_ok, digest_ok);
                if digest_ok == Some(false) {
                    // At once the first time; if a fresh copy differs too,
                    // at the next interval, not in a tight loop of
                    // bootstraps against the coordinator.
                    self.again_after_reset = before != Some(false);
                    self.to(Phase::Resetting, Next::ResetCursor)
                } else {
                    self.to(Phase::Idle, Next::Wait { failed: false })
                }
            }
            (Phase::Resetting, Event::CursorReset) => match self.again_after_reset {
                true => self.to(Phase::Idle, Next::Again),
                false => self.to(Phase::Idle, Next::Wait { failed: false }),
            },
            (_, _) => self.failed(),
        }
    }

    fn to(&mut self, phase: Phase, next: Next) -> Next {
        self.phase = phase;
        next
    }

    fn failed(&mut self) -> Next {
        self.to(Phase::Idle, Next::Wait { failed: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sku: &str) -> ItemKey {
        ItemKey {
            location: "s1".into(),
            sku: sku.into(),
        }
    }

    fn start(cursor: Option<u64>) -> Event {
        Event::Start(Facts {
            cursor,
            resume_after: None,
            transfers_fetched_at: 10,
        })
    }

    fn page(next: u64, head: u64) -> Event {
        Event::ChangesApplied {
            next,
            head,
            transfers_at: 10,
        }
    }

    /// Steps through `script`, each event with the [`Next`] it must give.
    fn run(machine: &mut Machine, script: Vec<(Event, Next)>) {
        for (i, (event, want)) in script.into_iter().enumerate() {
            let shown = format!("{event:?}");
            assert_eq!(machine.step(event), want, "step {i}: {shown}");
        }
    }

    #[test]
    fn a_round_pulls_page_by_page_then_reports_then_waits() {
        run(
            &mut Machine::default(),
            vec![
                (start(Some(5)), Next::Changes { after: 5 }),
                (page(900, 2000), Next::Changes { after: 900 }),
                (page(2000, 2000), Next::Report),
                (
                    Event::Reported {
                        digest_ok: Some(true),
                    },
                    Next::Wait { failed: false },
                ),
                (start(Some(2000)), Next::Changes { after: 2000 }),
            ],
        );
    }

    #[test]
    fn an_empty_replica_bootstraps_then_pulls_from_the_snapshot_head() {
        let resumed = Event::Start(Facts {
            cursor: None,
            resume_after: Some(key("m")),
            transfers_fetched_at: 0,
        });
        run(
            &mut Machine::default(),
            vec![
                (
                    resumed,
                    Next::Snapshot {
                        after: Some(key("m")),
                    },
                ),
                (
                    Event::SnapshotApplied {
                        next: Some(key("t")),
                        cursor: None,
                    },
                    Next::Snapshot {
                        after: Some(key("t")),
                    },
                ),
                (
                    Event::SnapshotApplied {
                        next: None,
                        cursor: Some(42),
                    },
                    Next::Changes { after: 42 },
                ),
                (page(42, 42), Next::Transfers { at: 10 }),
                (Event::TransfersKept, Next::Report),
            ],
        );
    }

    #[test]
    fn an_expired_cursor_bootstraps_again() {
        run(
            &mut Machine::default(),
            vec![
                (start(Some(5)), Next::Changes { after: 5 }),
                (Event::CursorExpired, Next::Snapshot { after: None }),
            ],
        );
    }

    #[test]
    fn transfers_are_fetched_only_when_they_changed_since() {
        let mut machine = Machine::default();
        let changed = Event::ChangesApplied {
            next: 7,
            head: 7,
            transfers_at: 11,
        };
        run(
            &mut machine,
            vec![
                (start(Some(5)), Next::Changes { after: 5 }),
                (changed, Next::Transfers { at: 11 }),
                (Event::TransfersKept, Next::Report),
                (
                    Event::Reported { digest_ok: None },
                    Next::Wait { failed: false },
                ),
                (start(Some(7)), Next::Changes { after: 7 }),
                (page(7, 7), Next::Report),
            ],
        );
    }

    #[test]
    fn a_diverged_digest_resets_at_once_the_first_time_only() {
        let diverged = || Event::Reported {
            digest_ok: Some(false),
        };
        run(
            &mut Machine::default(),
            vec![
                (start(Some(5)), Next::Changes { after: 5 }),
                (page(5, 5), Next::Report),
                (diverged(), Next::ResetCursor),
                (Event::CursorReset, Next::Again),
                (start(None), Next::Snapshot { after: None }),
                (
                    Event::SnapshotApplied {
                        next: None,
                        cursor: Some(9),
                    },
                    Next::Changes { after: 9 },
                ),
                (page(9, 9), Next::Report),
                (diverged(), Next::ResetCursor),
                (Event::CursorReset, Next::Wait { failed: false }),
            ],
        );
    }

    #[test]
    fn a_failure_anywhere_waits_a_backoff_and_the_next_round_starts_afresh() {
        for failing_at in 0..4 {
            let mut machine = Machine::default();
            let steps = [
                start(None),
                Event::SnapshotApplied {
                    next: None,
                    cursor: Some(3),
                },
                page(3, 3),
                Event::Reported { digest_ok: None },
            ];
            for event in steps.into_iter().take(failing_at) {
                machine.step(event);
            }
            assert_eq!(machine.step(Event::Failed), Next::Wait { failed: true });
            assert_eq!(machine.step(start(Some(3))), Next::Changes { after: 3 });
        }
    }

    #[test]
    fn an_answer_out_of_turn_is_a_failure() {
        let mut machine = Machine::default();
        assert_eq!(machine.step(page(3, 3)), Next::Wait { failed: true });
        assert_eq!(machine.step(start(Some(1))), Next::Changes { after: 1 });
        assert_eq!(
            machine.step(Event::TransfersKept),
            Next::Wait { failed: true }
        );
    }
}
