//! The ordered key-value store under [`super::KvLedger`]: named keyspaces,
//! point reads, range reads and atomic batches, nothing more. The ledger's
//! logic is written once over this trait; an engine is only glue.
//!
//! Engines: [`super::fjall::FjallEngine`] on disk and, for tests (this
//! crate's, and others' with the `testing` feature), `MemoryEngine` below,
//! a `BTreeMap` per keyspace.

use super::LedgerError;

/// One write of a batch.
#[derive(Debug)]
pub enum Write<S> {
    /// Sets `key` to `value` in the keyspace.
    Put(S, Vec<u8>, Vec<u8>),
    /// Removes `key` from the keyspace.
    Delete(S, Vec<u8>),
}

/// Entries as a range read returns them: `(key, value)` in key order.
pub type Entries<B> = Vec<(B, B)>;

/// An ordered key-value store with named keyspaces.
pub trait Engine: Send + Sync + 'static {
    /// A handle on one keyspace.
    type Space: Clone + Send + Sync + 'static;
    /// A value (or key) as the engine hands it out.
    type Bytes: AsRef<[u8]>;

    /// The keyspace `name`, created when missing.
    fn space(&self, name: &str) -> Result<Self::Space, LedgerError>;

    /// The names of every keyspace.
    fn space_names(&self) -> Result<Vec<String>, LedgerError>;

    /// Deletes a keyspace and everything in it.
    fn drop_space(&self, space: Self::Space) -> Result<(), LedgerError>;

    /// The value under `key`.
    fn get(&self, space: &Self::Space, key: &[u8]) -> Result<Option<Self::Bytes>, LedgerError>;

    /// Up to `limit` entries with `from <= key < to`, in key order.
    fn range(
        &self,
        space: &Self::Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries<Self::Bytes>, LedgerError>;

    /// Applies `batch` atomically: readers see all of it or none. With
    /// `durable`, returns once it is on disk.
    fn write(&self, batch: Vec<Write<Self::Space>>, durable: bool) -> Result<(), LedgerError>;
}

#[cfg(any(test, feature = "testing"))]
pub use memory::{MemoryEngine, MemoryLedger};

/// The twin of the fjall engine that tests run the ledger on.
#[cfg(any(test, feature = "testing"))]
mod memory {
    use std::collections::BTreeMap;
    use std::ops::Bound;
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    use super::{Engine, Entries, Write};
    use crate::{Buckets, KvLedger, LedgerError};

    /// An engine in memory: nothing is durable.
    #[derive(Debug, Default)]
    pub struct MemoryEngine {
        spaces: RwLock<Spaces>,
    }

    type Spaces = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

    /// A ledger in memory: the same contract as [`crate::FjallLedger`],
    /// nothing durable.
    pub type MemoryLedger = KvLedger<MemoryEngine>;

    impl MemoryLedger {
        /// An empty ledger bucketing idempotency records as `buckets` says.
        pub fn new(buckets: Buckets) -> Result<Self, LedgerError> {
            KvLedger::with_engine(MemoryEngine::default(), buckets)
        }
    }

    fn poisoned<T>(_: T) -> LedgerError {
        LedgerError::Storage("the memory engine's lock is poisoned".into())
    }

    impl MemoryEngine {
        fn read(&self) -> Result<RwLockReadGuard<'_, Spaces>, LedgerError> {
            self.spaces.read().map_err(poisoned)
        }

        fn write_lock(&self) -> Result<RwLockWriteGuard<'_, Spaces>, LedgerError> {
            self.spaces.write().map_err(poisoned)
        }
    }

    impl Engine for MemoryEngine {
        type Space = String;
        type Bytes = Vec<u8>;

        fn space(&self, name: &str) -> Result<String, LedgerError> {
            self.write_lock()?.entry(name.to_string()).or_default();
            Ok(name.to_string())
        }

        fn space_names(&self) -> Result<Vec<String>, LedgerError> {
            Ok(self.read()?.keys().cloned().collect())
        }

        fn drop_space(&self, space: String) -> Result<(), LedgerError> {
            self.write_lock()?.remove(&space);
            Ok(())
        }

        fn get(&self, space: &String, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
            Ok(self.read()?.get(space).and_then(|s| s.get(key)).cloned())
        }

        fn range(
            &self,
            space: &String,
            from: &[u8],
            to: &[u8],
            limit: usize,
        ) -> Result<Entries<Vec<u8>>, LedgerError> {
            let spaces = self.read()?;
            let Some(entries) = spaces.get(space).filter(|_| from < to) else {
                return Ok(Vec::new());
            };
            let bounds = (Bound::Included(from), Bound::Excluded(to));
            Ok(entries
                .range::<[u8], _>(bounds)
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }

        fn write(&self, batch: Vec<Write<String>>, _durable: bool) -> Result<(), LedgerError> {
            let mut spaces = self.write_lock()?;
            for write in batch {
                match write {
                    Write::Put(space, key, value) => {
                        spaces.entry(space).or_default().insert(key, value);
                    }
                    Write::Delete(space, key) => {
                        if let Some(entries) = spaces.get_mut(&space) {
                            entries.remove(&key);
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
