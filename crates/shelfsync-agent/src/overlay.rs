//! States this agent's clients were answered with that the replica has not
//! synced yet: the accepted writes it forwarded and the strong reads it
//! served, in memory.
//!
//! A client reads its own write from this agent at once, yet the replica
//! itself is written only by the sync, once per change: a forwarded write
//! costs no replica write of its own. Each state is kept with the seq at
//! which the replica will have it (or a newer one): the write's own seq, or
//! the head a strong read was served at. Once the replica's cursor reaches
//! that seq the entry goes ([`Overlay::settle`]). Local reads take, per key,
//! the newer of the overlay's state and the replica's ([`newest`]).
//!
//! The states of pages of changes the replica applied in memory and has not
//! written to sled yet ([`crate::replica::Flush`]) are kept here too, as
//! synced states, until the write ([`Overlay::settle`]); they are not
//! counted as remembered.
//!
//! Nothing here is durable: after a crash the replica may be older than what
//! clients were told, so it answers no local read until a sync has caught
//! it up ([`crate::replica::Replica::caught_up`]).

use std::collections::BTreeMap;
use std::sync::RwLock;

use shelfsync_core::{Item, ItemKey, KeyState};

/// A state and the seq from which the replica has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    state: KeyState,
    seq: u64,
    /// Brought by the sync and applied in memory (not a client's answer).
    synced: bool,
}

/// The entries by key, and how many are remembered (not synced).
#[derive(Debug, Default)]
struct Entries {
    by_key: BTreeMap<ItemKey, Entry>,
    remembered: usize,
}

impl Entries {
    /// Keeps `state` unless the kept one is newer. A remembered state
    /// never takes the place of a synced one of the same version: the
    /// synced entry is what reads of an unwritten page go through, and a
    /// remembered one goes as soon as the sync passes its seq.
    fn put(&mut self, key: ItemKey, state: KeyState, seq: u64, synced: bool) {
        match self.by_key.get(&key) {
            Some(kept) if kept.state.version() > state.version() => {}
            Some(kept) if kept.synced && !synced && kept.state.version() == state.version() => {}
            _ => {
                let entry = Entry { state, seq, synced };
                let old = self.by_key.insert(key, entry);
                self.remembered += usize::from(!synced);
                self.remembered -= usize::from(old.is_some_and(|old| !old.synced));
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        self.by_key.retain(|_, entry| keep(entry));
        self.remembered = self.by_key.values().filter(|e| !e.synced).count();
    }
}

/// The states clients saw that the replica may not have yet, by key.
#[derive(Debug, Default)]
pub struct Overlay {
    entries: RwLock<Entries>,
}

impl Overlay {
    /// Remembers states clients are answered with: `(key, state, seq)`, the
    /// replica having the state (or a newer one) once its cursor is at `seq`.
    /// A state older than the one kept for its key is ignored.
    pub fn put(&self, states: impl IntoIterator<Item = (ItemKey, KeyState, u64)>) {
        self.put_as(states, false);
    }

    /// Keeps the states of a page of changes applied in memory: `(key,
    /// state, seq)` of each change, until the replica has written them.
    pub fn put_synced(&self, states: impl IntoIterator<Item = (ItemKey, KeyState, u64)>) {
        self.put_as(states, true);
    }

    fn put_as(&self, states: impl IntoIterator<Item = (ItemKey, KeyState, u64)>, synced: bool) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        for (key, state, seq) in states {
            entries.put(key, state, seq, synced);
        }
    }

    /// The state kept for `key`.
    pub fn get(&self, key: &ItemKey) -> Option<KeyState> {
        let entries = self.entries.read().ok()?;
        entries.by_key.get(key).map(|entry| entry.state.clone())
    }

    /// The states of `location` with skus after `after_sku`, in sku order
    /// (few: those since the last sync).
    pub fn after(&self, location: &str, after_sku: Option<&str>) -> Vec<(ItemKey, KeyState)> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        let from = ItemKey {
            location: location.to_string(),
            sku: after_sku.unwrap_or_default().to_string(),
        };
        entries
            .by_key
            .range(from..)
            .take_while(|(key, _)| key.location == location)
            .filter(|(key, _)| after_sku.is_none_or(|after| key.sku.as_str() > after))
            .map(|(key, entry)| (key.clone(), entry.state.clone()))
            .collect()
    }

    /// Drops the states a replica that has written everything up to
    /// `cursor` has (or has newer ones of).
    pub fn settle(&self, cursor: u64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.retain(|entry| entry.seq > cursor);
        }
    }

    /// Drops the remembered states a replica at `cursor` has (or has newer
    /// ones of), in memory or written; synced states wait for the write.
    pub fn settle_remembered(&self, cursor: u64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.retain(|entry| entry.synced || entry.seq > cursor);
        }
    }

    /// How many remembered states are kept.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |entries| entries.remembered)
    }

    /// Whether no remembered state is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The newer of two states of one key (the replica's when they tie).
pub fn newest(overlay: Option<KeyState>, replica: Option<KeyState>) -> Option<KeyState> {
    match (overlay, replica) {
        (Some(o), Some(r)) if o.version() > r.version() => Some(o),
        (Some(_), Some(r)) => Some(r),
        (o, r) => r.or(o),
    }
}

/// Merges a page of the replica's live items of one location (`listed`, in
/// sku order, `full` when the replica had more after it) with the newest
/// states of the overlay's keys in the same range (`overlaid`), in sku
/// order. Past the last listed sku of a full page nothing is known of the
/// replica's items, so overlay states there are left to the next page.
pub fn merge(listed: Vec<Item>, full: bool, overlaid: Vec<(String, KeyState)>) -> Vec<Item> {
    let bound = listed.last().map(|item| item.sku.clone()).filter(|_| full);
    let mut merged: BTreeMap<String, Item> = listed
        .into_iter()
        .map(|item| (item.sku.clone(), item))
        .collect();
    for (sku, state) in overlaid {
        if bound.as_ref().is_some_and(|bound| &sku > bound) {
            continue;
        }
        match state {
            KeyState::Live(item) => {
                merged.insert(sku, item);
            }
            _ => {
                merged.remove(&sku);
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sku: &str) -> ItemKey {
        ItemKey::new("s1", sku).unwrap()
    }

    fn live(sku: &str, version: u64) -> KeyState {
        KeyState::Live(Item {
            version,
            ..Item::new(&key(sku), "n", 1, version)
        })
    }

    fn skus(items: &[Item]) -> Vec<(String, u64)> {
        items.iter().map(|i| (i.sku.clone(), i.version)).collect()
    }

    #[test]
    fn keeps_the_newer_state_and_settles_by_seq() {
        let overlay = Overlay::default();
        overlay.put([(key("a"), live("a", 3), 30), (key("b"), live("b", 1), 31)]);
        overlay.put([(key("a"), live("a", 2), 20)]);
        assert_eq!(
            overlay.get(&key("a")),
            Some(live("a", 3)),
            "an older state is ignored"
        );
        overlay.settle(30);
        assert_eq!(overlay.get(&key("a")), None);
        assert_eq!(overlay.get(&key("b")), Some(live("b", 1)));
        overlay.settle(31);
        assert!(overlay.is_empty());
    }

    #[test]
    fn synced_states_are_read_uncounted_and_stay_until_written() {
        let overlay = Overlay::default();
        overlay.put([(key("a"), live("a", 1), 10), (key("b"), live("b", 1), 11)]);
        // A page brings a newer `a` and a `c`: it replaces the remembered
        // `a`, and neither counts as remembered.
        overlay.put_synced([(key("a"), live("a", 2), 12), (key("c"), live("c", 1), 12)]);
        assert_eq!(overlay.len(), 1);
        assert_eq!(overlay.get(&key("a")), Some(live("a", 2)));
        // In memory at 12: `b` (11) is passed, the page's states stay.
        overlay.settle_remembered(12);
        assert_eq!((overlay.len(), overlay.get(&key("b"))), (0, None));
        assert_eq!(overlay.get(&key("c")), Some(live("c", 1)));
        // A client's answer that comes after the page (its cursor read
        // before the page moved it) leaves the synced `a` as it is, so
        // passing its seq does not drop what reads of `a` go through.
        overlay.put([(key("a"), live("a", 2), 12)]);
        overlay.settle_remembered(12);
        assert_eq!(overlay.get(&key("a")), Some(live("a", 2)));
        // Written at 12: they go.
        overlay.settle(12);
        assert_eq!(overlay.get(&key("a")), None);
        assert_eq!(overlay.get(&key("c")), None);
    }

    #[test]
    fn lists_one_location_after_a_sku() {
        let overlay = Overlay::default();
        let other = ItemKey::new("s10", "a").unwrap();
        overlay.put([
            (key("b"), live("b", 1), 1),
            (key("a"), live("a", 1), 1),
            (other.clone(), live("a", 1), 1),
        ]);
        let listed = |after| -> Vec<String> {
            let found = overlay.after("s1", after);
            found.into_iter().map(|(k, _)| k.sku).collect()
        };
        assert_eq!(listed(None), ["a", "b"]);
        assert_eq!(listed(Some("a")), ["b"]);
        assert!(listed(Some("b")).is_empty());
    }

    #[test]
    fn the_newest_state_wins_and_the_replica_on_a_tie() {
        let deleted = KeyState::Deleted { version: 4 };
        let cases = [
            (Some(live("a", 3)), Some(live("a", 2)), Some(live("a", 3))),
            (Some(live("a", 2)), Some(live("a", 3)), Some(live("a", 3))),
            (
                Some(deleted.clone()),
                Some(live("a", 3)),
                Some(deleted.clone()),
            ),
            (Some(live("a", 3)), None, Some(live("a", 3))),
            (None, Some(live("a", 3)), Some(live("a", 3))),
            (Some(live("a", 4)), Some(deleted.clone()), Some(deleted)),
            (None, None, None),
        ];
        for (overlay, replica, want) in cases {
            assert_eq!(
                newest(overlay.clone(), replica.clone()),
                want,
                "{overlay:?} {replica:?}"
            );
        }
    }

    #[test]
    fn a_merged_page_adds_replaces_and_hides_within_its_range() {
        let item = |sku, version| live(sku, version).item().cloned().unwrap();
        let listed = vec![item("b", 1), item("d", 1)];
        let overlaid = vec![
            ("a".to_string(), live("a", 1)),
            ("b".to_string(), live("b", 2)),
            ("d".to_string(), KeyState::Deleted { version: 2 }),
            ("e".to_string(), live("e", 1)),
        ];
        let merged = merge(listed.clone(), false, overlaid.clone());
        assert_eq!(
            skus(&merged),
            [("a".into(), 1), ("b".into(), 2), ("e".into(), 1)]
        );
        // A full page ends at its last listed sku: `e` waits for the next.
        let merged = merge(listed, true, overlaid);
        assert_eq!(skus(&merged), [("a".into(), 1), ("b".into(), 2)]);
    }
}
