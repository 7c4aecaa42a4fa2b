//! The checkers that need no search: no oversell anywhere (guarantee 2),
//! replicas equal to the coordinator at the end (guarantee 5), and local
//! reads that never go back in version at a store.

use std::collections::{BTreeMap, HashMap};

use super::{Anomaly, fmt_event, fmt_item, fmt_opt_item};
use crate::nemesis::history::{Event, Final, ItemState, Key, Op, Outcome};

/// Every item state observed anywhere has `reserved <= quantity`: answers
/// (`Ok` items and refusals' `current`), the coordinator's change histories
/// and end state, and every replica.
pub fn no_oversell(events: &[Event], fin: &Final) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let mut check = |key: &Key, item: &ItemState, place: &dyn Fn() -> String| {
        if item.reserved > item.quantity {
            let detail = format!("reserved > quantity: {} in {}", fmt_item(item), place());
            found.push(Anomaly::new("no_oversell", Some(key), detail));
        }
    };
    for e in events {
        let item = match &e.outcome {
            Outcome::Ok { item } => item.as_ref(),
            Outcome::Refused { current, .. } => current.as_ref(),
            Outcome::Indeterminate { .. } => None,
        };
        if let Some(item) = item {
            check(&e.key, item, &|| format!("the answer to {}", fmt_event(e)));
        }
    }
    for (key, changes) in &fin.histories {
        for change in changes {
            if let Some(item) = &change.item {
                check(key, item, &|| {
                    format!("the change log at seq {}", change.seq)
                });
            }
        }
    }
    for (key, item) in &fin.coordinator {
        if let Some(item) = item {
            check(key, item, &|| "the coordinator's end state".to_string());
        }
    }
    for replica in &fin.replicas {
        for (key, item) in &replica.items {
            if let Some(item) = item {
                check(key, item, &|| format!("the replica of {}", replica.store));
            }
        }
    }
    found
}

/// Every replica holds exactly the coordinator's state of each of its keys
/// (a key the coordinator does not list counts as absent), and the
/// coordinator confirmed its digest.
pub fn converged(fin: &Final) -> Vec<Anomaly> {
    let coordinator: HashMap<&Key, Option<&ItemState>> = fin
        .coordinator
        .iter()
        .map(|(key, item)| (key, item.as_ref()))
        .collect();
    let mut found = Vec::new();
    for replica in &fin.replicas {
        for (key, item) in &replica.items {
            let want = coordinator.get(key).copied().flatten();
            if item.as_ref() != want {
                let detail = format!(
                    "replica of {} holds {}, the coordinator {}",
                    replica.store,
                    fmt_opt_item(item.as_ref()),
                    fmt_opt_item(want)
                );
                found.push(Anomaly::new("converged", Some(key), detail));
            }
        }
        if replica.digest_ok != Some(true) {
            let detail = format!(
                "replica of {}: digest not confirmed (digest_ok = {:?})",
                replica.store, replica.digest_ok
            );
            found.push(Anomaly::new("converged", None, detail));
        }
    }
    found
}

/// Per store and key, a local read never shows an older version than a
/// local read or an acknowledged write at that store that completed before
/// the read was sent (read-your-writes: an agent applies a write it
/// acknowledges to its replica first). Reads answered 404 are skipped, and
/// so are replays, which repeat an earlier answer.
pub fn monotonic_reads(events: &[Event]) -> Vec<Anomaly> {
    // Per (store, key): the events that set a floor, and the local reads.
    type Group<'a> = (Vec<(&'a Event, u64)>, Vec<(&'a Event, u64)>);
    let mut groups: BTreeMap<(&str, &Key), Group<'_>> = BTreeMap::new();
    for e in events {
        let Outcome::Ok { item: Some(item) } = &e.outcome else {
            continue;
        };
        let local_read = e.op == Op::Read { strong: false };
        if !(local_read || e.op.is_write() && e.replay_of.is_none()) {
            continue;
        }
        let (floors, reads) = groups.entry((e.store.as_str(), &e.key)).or_default();
        floors.push((e, item.version));
        if local_read {
            reads.push((e, item.version));
        }
    }
    let mut found = Vec::new();
    for ((_, key), (mut floors, mut reads)) in groups {
        floors.sort_by_key(|(e, _)| e.completed_ns);
        reads.sort_by_key(|(e, _)| e.invoked_ns);
        // Sweep: the highest version completed before each read was sent.
        let mut highest: Option<(&Event, u64)> = None;
        let mut next = floors.iter().peekable();
        for (read, version) in reads {
            while let Some(&&(e, v)) = next.peek() {
                if e.completed_ns >= read.invoked_ns {
                    break;
                }
                if highest.is_none_or(|(_, h)| v > h) {
                    highest = Some((e, v));
                }
                next.next();
            }
            if let Some((earlier, floor)) = highest
                && version < floor
            {
                let detail = format!(
                    "local read went back from version {floor} to {version}:\n    {}\n    then {}",
                    fmt_event(earlier),
                    fmt_event(read)
                );
                found.push(Anomaly::new("monotonic_reads", Some(key), detail));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::nemesis::history::Replica;

    #[test]
    fn no_oversell_accepts_reserved_up_to_quantity() {
        let mut h = H::new();
        let c = h.write(1, create(5), 0, 10).ok(it(5, 0, 1)).id();
        let r = h.write(1, reserve(5), 20, 30).ok(it(5, 5, 2)).id();
        h.write(1, reserve(1), 40, 50)
            .refused_with(409, it(5, 5, 2));
        let fin = h
            .final_from_changes(&[c, r])
            .replica("s1", Some(it(5, 5, 2)));
        assert!(no_oversell(&h.events, &fin).is_empty());
    }

    #[test]
    fn no_oversell_rejects_an_oversold_state_wherever_it_shows() {
        let mut h = H::new();
        h.write(1, reserve(6), 20, 30).ok(it(5, 6, 2));
        h.write(1, reserve(1), 40, 50)
            .refused_with(409, it(5, 7, 3));
        let r = h.write(1, reserve(1), 60, 70).ok(it(5, 8, 4)).id();
        let fin = h.final_from_changes(&[r]).replica("s2", Some(it(1, 2, 4)));
        let found = no_oversell(&h.events, &fin);
        // Two answers, the refusal's current, the change, the coordinator,
        // the replica.
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found.iter().all(|a| a.checker == "no_oversell"));
        assert!(found[0].detail.contains("q=5 r=6"), "{}", found[0]);
        assert!(found[5].detail.contains("replica of s2"), "{}", found[5]);
    }

    #[test]
    fn converged_accepts_equal_replicas_and_absent_keys() {
        let mut h = H::new();
        let c = h.write(1, create(5), 0, 10).ok(it(5, 0, 1)).id();
        let mut fin = h
            .final_from_changes(&[c])
            .replica("s1", Some(it(5, 0, 1)))
            .replica("s2", Some(it(5, 0, 1)));
        fin.replicas.push(Replica {
            store: "s3".into(),
            items: vec![(Key::new("loc", "never-written"), None)],
            digest_ok: Some(true),
        });
        assert!(converged(&fin).is_empty());
    }

    #[test]
    fn converged_rejects_a_replica_that_differs() {
        let mut h = H::new();
        let c = h.write(1, create(5), 0, 10).ok(it(5, 0, 1)).id();
        let a = h.write(1, add(1), 20, 30).ok(it(6, 0, 2)).id();
        let fin = h
            .final_from_changes(&[c, a])
            .replica("s1", Some(it(6, 0, 2)))
            .replica("s2", Some(it(5, 0, 1)))
            .replica("s3", None);
        let found = converged(&fin);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0]
                .detail
                .contains("replica of s2 holds \"n\" q=5 r=0 v=1")
        );
        assert!(
            found[0]
                .detail
                .contains("the coordinator \"n\" q=6 r=0 v=2")
        );
        assert!(found[1].detail.contains("replica of s3 holds absent"));
    }

    #[test]
    fn converged_rejects_an_unconfirmed_digest() {
        let mut fin = Final::default().replica("s1", None);
        fin.replicas[0].digest_ok = Some(false);
        let mut unknown = Final::default().replica("s2", None);
        unknown.replicas[0].digest_ok = None;
        assert_eq!(converged(&fin).len(), 1);
        assert_eq!(converged(&unknown).len(), 1);
        assert!(converged(&fin)[0].detail.contains("digest not confirmed"));
    }

    #[test]
    fn monotonic_reads_accepts_reads_that_move_forward() {
        let mut h = H::new();
        h.write(1, create(5), 0, 10).ok(it(5, 0, 1));
        h.read(2, false, 5, 15).ok(it(4, 0, 0)); // overlaps the create
        h.read(2, false, 20, 30).ok(it(5, 0, 1));
        h.read(3, false, 25, 35).ok(it(5, 0, 1));
        h.write(1, delete(), 40, 50).if_match(1).deleted();
        h.read(2, false, 60, 70).refused(404);
        h.write(1, add(1), 80, 90).store("s2").ok(it(6, 0, 3));
        h.read(2, false, 100, 110).ok(it(5, 0, 1)); // s2's write is not s1's
        assert!(monotonic_reads(&h.events).is_empty());
    }

    #[test]
    fn monotonic_reads_rejects_a_backwards_local_read() {
        let mut h = H::new();
        h.read(2, false, 0, 10).ok(it(5, 0, 3));
        h.read(3, false, 20, 30).ok(it(5, 0, 2));
        let found = monotonic_reads(&h.events);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].detail.contains("from version 3 to 2"),
            "{}",
            found[0]
        );
        assert!(
            found[0].detail.contains("#0 c2@s1 local read"),
            "{}",
            found[0]
        );
        assert!(
            found[0].detail.contains("#1 c3@s1 local read"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn monotonic_reads_rejects_a_read_that_misses_its_stores_write() {
        let mut h = H::new();
        h.write(1, add(1), 0, 10).ok(it(6, 0, 4));
        h.read(1, false, 20, 30).ok(it(5, 0, 3));
        h.read(1, true, 40, 50).ok(it(5, 0, 3)); // strong reads are not judged here
        assert_eq!(monotonic_reads(&h.events).len(), 1);
    }
}
