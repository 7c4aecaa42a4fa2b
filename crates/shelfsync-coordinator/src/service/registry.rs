//! The store registry (`[[stores]]`): who may connect and which locations
//! each store may write and read. The service holds one behind a lock and
//! swaps it whole when the coordinator reloads its config on SIGHUP
//! ([`super::Service::reload`]); [`diff`] says what a reload changed.

use crate::config::StoreConfig;
use shelfsync_core::FastMap;

/// The registered stores, indexed by id.
#[derive(Debug, Default)]
pub struct Registry {
    stores: Vec<StoreConfig>,
    /// Index into `stores` by id: every request looks its store up.
    index: FastMap<String, usize>,
}

impl Registry {
    /// The registry of `stores` (ids already checked distinct).
    pub fn new(stores: Vec<StoreConfig>) -> Self {
        let index = (stores.iter().enumerate())
            .map(|(i, store)| (store.id.clone(), i))
            .collect();
        Registry { stores, index }
    }

    /// The store `id`, if registered.
    pub fn get(&self, id: &str) -> Option<&StoreConfig> {
        self.index.get(id).and_then(|&i| self.stores.get(i))
    }

    /// Every store, in registry order.
    pub fn stores(&self) -> &[StoreConfig] {
        &self.stores
    }
}

/// What a reload changed, by store id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Stores registered now.
    pub stores: usize,
    /// Ids new in the registry.
    pub added: Vec<String>,
    /// Ids no longer in it: their connections are closed.
    pub removed: Vec<String>,
    /// Ids whose name, interval or locations changed.
    pub changed: Vec<String>,
}

/// What replacing `old` with `new` changes.
pub fn diff(old: &Registry, new: &Registry) -> Reloaded {
    let mut reloaded = Reloaded {
        stores: new.stores.len(),
        ..Reloaded::default()
    };
    for store in &new.stores {
        match old.get(&store.id) {
            None => reloaded.added.push(store.id.clone()),
            Some(before) if !same(before, store) => reloaded.changed.push(store.id.clone()),
            Some(_) => {}
        }
    }
    for store in &old.stores {
        if new.get(&store.id).is_none() {
            reloaded.removed.push(store.id.clone());
        }
    }
    reloaded
}

fn same(a: &StoreConfig, b: &StoreConfig) -> bool {
    (a.name == b.name && a.sync_interval == b.sync_interval)
        && (a.writable == b.writable && a.readable == b.readable)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store(id: &str, writable: &[&str]) -> StoreConfig {
        StoreConfig {
            id: id.into(),
            name: String::new(),
            sync_interval: Duration::from_secs(5),
            writable: writable.iter().map(|l| l.to_string()).collect(),
            readable: vec![id.into()],
        }
    }

    #[test]
    fn a_reload_names_what_it_added_removed_and_changed() {
        let old = Registry::new(vec![
            store("s1", &["s1"]),
            store("s2", &["s2"]),
            store("s3", &["s3"]),
        ]);
        let new = Registry::new(vec![
            store("s1", &["s1"]),
            store("s3", &["s3", "online"]),
            store("s4", &["s4"]),
        ]);
        let reloaded = diff(&old, &new);
        assert_eq!(
            reloaded,
            Reloaded {
                stores: 3,
                added: vec!["s4".into()],
                removed: vec!["s2".into()],
                changed: vec!["s3".into()],
            }
        );
        assert_eq!(new.get("s3").map(|s| s.writable.len()), Some(2));
        assert!(new.get("s2").is_none());
    }
}
