//! The embedded engine: fjall, an LSM-tree store whose atomic batches span
//! keyspaces. A batch written with `PersistMode::SyncData` is appended to
//! fjall's journal and `fdatasync`ed before it becomes visible, so a
//! ledger commit is durable on return and readers never see more. After a
//! crash fjall replays its journal; nothing here keeps a log of its own.

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};

use super::engine::{Engine, Entries, Write};
use super::{Buckets, KvLedger, LAYOUT, LedgerError};

/// The engine's block cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// One keyspace's memtable before the engine flushes it.
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Journal kept before the engine flushes memtables to free it.
const JOURNAL_BYTES: u64 = 128 * 1024 * 1024;

/// The coordinator's ledger on fjall.
pub type FjallLedger = KvLedger<FjallEngine>;

/// A fjall database as an [`Engine`].
pub struct FjallEngine {
    db: Database,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallEngine").finish_non_exhaustive()
    }
}

fn storage(err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(err.to_string())
}

fn options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// Refuses a data directory written by a build from before fjall.
fn refuse_older(dir: &Path) -> Result<(), LedgerError> {
    let parent = dir.parent().unwrap_or(dir);
    let older = [dir.join("conf"), dir.join("db"), parent.join("wal")];
    if let Some(found) = older.iter().find(|p| p.exists()) {
        return Err(LedgerError::Storage(format!(
            "{} holds a ledger of an earlier layout ({} is there); this build keeps its \
             ledger in fjall (layout {LAYOUT}) and cannot read it. Start from an empty \
             data_dir and reload the catalog (shelfctl import), or run the earlier build",
            dir.display(),
            found.display()
        )));
    }
    Ok(())
}

impl KvLedger<FjallEngine> {
    /// Opens (or creates) the ledger in `dir`, bucketing idempotency records
    /// as `buckets` says.
    ///
    /// The engine's flush and compaction threads inherit the priority of
    /// the thread that opens it: opened from a background-priority one
    /// (as the coordinator does), they give way to the threads that
    /// requests wait for.
    pub fn open(dir: &Path, buckets: Buckets) -> Result<Self, LedgerError> {
        refuse_older(dir)?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| storage(format!("cannot open the ledger in {}: {e}", dir.display())))?;
        let ledger = KvLedger::with_engine(FjallEngine { db }, buckets);
        ledger.map_err(|e| storage(format!("the ledger in {}: {e}", dir.display())))
    }

    /// Bytes the ledger takes on disk (tables and journal).
    pub fn disk_space(&self) -> Result<u64, LedgerError> {
        self.engine().db.disk_space().map_err(storage)
    }
}

impl Engine for FjallEngine {
    type Space = Keyspace;
    type Bytes = Slice;

    fn space(&self, name: &str) -> Result<Keyspace, LedgerError> {
        self.db.keyspace(name, options).map_err(storage)
    }

    fn space_names(&self) -> Result<Vec<String>, LedgerError> {
        let names = self.db.list_keyspace_names();
        Ok(names.iter().map(|name| name.to_string()).collect())
    }

    fn drop_space(&self, space: Keyspace) -> Result<(), LedgerError> {
        self.db.delete_keyspace(space).map_err(storage)
    }

    fn get(&self, space: &Keyspace, key: &[u8]) -> Result<Option<Slice>, LedgerError> {
        space.get(key).map_err(storage)
    }

    fn range(
        &self,
        space: &Keyspace,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries<Slice>, LedgerError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let bounds = (Bound::Included(from), Bound::Excluded(to));
        let mut out = Vec::new();
        for guard in space.range::<&[u8], _>(bounds).take(limit) {
            out.push(guard.into_inner().map_err(storage)?);
        }
        Ok(out)
    }

    fn write(&self, batch: Vec<Write<Keyspace>>, durable: bool) -> Result<(), LedgerError> {
        let mut fjall_batch = self.db.batch();
        if durable {
            fjall_batch = fjall_batch.durability(Some(PersistMode::SyncData));
        }
        for write in batch {
            match write {
                Write::Put(space, key, value) => fjall_batch.insert(&space, key, value),
                Write::Delete(space, key) => fjall_batch.remove(&space, key),
            }
        }
        fjall_batch.commit().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ledger, contract};

    #[test]
    fn keeps_the_contract() {
        contract::run(&mut || {
            let dir = tempfile::tempdir().unwrap();
            let ledger = FjallLedger::open(&dir.path().join("ledger"), contract::BUCKETS).unwrap();
            contract::Fresh::new(ledger, dir)
        });
    }

    #[test]
    fn a_reopened_ledger_has_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let k = contract::key("s1", "milk");
        {
            let ledger = FjallLedger::open(&path, contract::BUCKETS).unwrap();
            contract::commit_puts(&ledger, vec![contract::put(1, &k, 1, 5)]);
            ledger.compact_changes(0, 10).unwrap();
        }
        let ledger = FjallLedger::open(&path, contract::BUCKETS).unwrap();
        assert_eq!(ledger.head().unwrap(), 1);
        assert_eq!(ledger.oldest().unwrap(), 2);
        assert_eq!(ledger.load(&k).unwrap().unwrap().seq, 1);
    }

    #[test]
    fn a_ledger_of_an_earlier_layout_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        let err = FjallLedger::open(&dir.path().join("ledger"), contract::BUCKETS).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("earlier layout"), "{message}");
        assert!(message.contains("empty data_dir"), "{message}");
    }
}
