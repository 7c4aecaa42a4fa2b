//! What the sequencer tells the rest of the coordinator after a commit,
//! besides the head: which subscribed stores to wake ([`Subscribers`]), and
//! when each location's transfers last changed ([`TransferMarks`]).
//!
//! A wake-up is a flag (a [`Notify`] permit), not a queue: a subscriber
//! that is slow to send its wake-ups gets one for many commits, and never
//! holds up the sequencer or the other subscribers.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use shelfsync_core::FastMap;
use shelfsync_proto::time::now_ms;

/// The subscriptions to each location.
#[derive(Default)]
pub struct Subscribers {
    by_location: Mutex<FastMap<String, Vec<Weak<Notify>>>>,
}

impl Subscribers {
    /// A flag raised after every commit that touches one of `locations`
    /// (until it is dropped).
    pub fn subscribe(&self, locations: &[String]) -> Arc<Notify> {
        let flag = Arc::new(Notify::new());
        if let Ok(mut by_location) = self.by_location.lock() {
            for location in locations {
                let subscribers = by_location.entry(location.clone()).or_default();
                subscribers.push(Arc::downgrade(&flag));
            }
        }
        flag
    }

    /// Raises the flag of every subscriber of `locations`, and forgets the
    /// subscriptions that ended.
    pub fn wake(&self, locations: &[String]) {
        if locations.is_empty() {
            return;
        }
        let Ok(mut by_location) = self.by_location.lock() else {
            return;
        };
        for location in locations {
            let Some(subscribers) = by_location.get_mut(location) else {
                continue;
            };
            subscribers.retain(|subscriber| match subscriber.upgrade() {
                Some(flag) => {
                    flag.notify_one();
                    true
                }
                None => false,
            });
            if subscribers.is_empty() {
                by_location.remove(location);
            }
        }
    }
}

/// When the transfers of each location last changed, on the coordinator's
/// clock (ms), for sync pages to tell replicas when to fetch them again.
/// Kept in memory: after a start every location counts as changed then.
pub struct TransferMarks {
    started_ms: u64,
    by_location: Mutex<FastMap<String, u64>>,
}

impl Default for TransferMarks {
    fn default() -> Self {
        TransferMarks {
            started_ms: now_ms(),
            by_location: Mutex::default(),
        }
    }
}

impl TransferMarks {
    /// Marks `locations` as changed now (later than any mark before,
    /// whatever the clock did).
    pub fn mark(&self, locations: &[String]) {
        if locations.is_empty() {
            return;
        }
        let Ok(mut marks) = self.by_location.lock() else {
            return;
        };
        for location in locations {
            let last = marks.get(location).copied().unwrap_or(self.started_ms);
            marks.insert(location.clone(), now_ms().max(last + 1));
        }
    }

    /// The latest mark of `locations`.
    pub fn latest(&self, locations: &[String]) -> u64 {
        let Ok(marks) = self.by_location.lock() else {
            return now_ms();
        };
        let mark = |l: &String| marks.get(l).copied().unwrap_or(self.started_ms);
        locations.iter().map(mark).max().unwrap_or(self.started_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::FutureExt;

    #[test]
    fn a_commit_wakes_the_subscribers_of_its_locations_once() {
        let subscribers = Subscribers::default();
        let both = subscribers.subscribe(&["s1".into(), "online".into()]);
        let other = subscribers.subscribe(&["s2".into()]);
        subscribers.wake(&["online".into()]);
        subscribers.wake(&["s1".into(), "online".into()]);
        // Two commits, one wake-up: the flag holds one permit.
        assert!(both.notified().now_or_never().is_some(), "not woken");
        assert!(
            both.notified().now_or_never().is_none(),
            "a second wake-up was queued"
        );
        assert!(
            other.notified().now_or_never().is_none(),
            "s2 was not written"
        );
        drop(other);
        subscribers.wake(&["s2".into()]);
        let left = subscribers.by_location.lock().map(|m| m.len()).unwrap_or(0);
        assert_eq!(left, 2, "the ended subscription is forgotten");
    }

    #[test]
    fn transfer_marks_only_grow() {
        let marks = TransferMarks::default();
        let start = marks.latest(&["s1".into()]);
        marks.mark(&["s1".into()]);
        let first = marks.latest(&["s1".into(), "s2".into()]);
        marks.mark(&["s1".into()]);
        assert!(first > start && marks.latest(&["s1".into()]) > first);
        assert_eq!(marks.latest(&["s2".into()]), start);
    }
}
