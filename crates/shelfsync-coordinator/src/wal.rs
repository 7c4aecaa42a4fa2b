//! The write-ahead log: where a decided group becomes durable.
//!
//! The pipeline acknowledges a group once its [`CommitBatch`] is appended
//! here and `fdatasync`ed; the batch reaches the ledger afterwards. So a
//! write waits for one small sequential write and one sync of its own file,
//! not for the ledger: sled's flush holds a lock that stalls every batch
//! written meanwhile (docs/performance.md), which made the ledger's flush the
//! ceiling of the write path.
//!
//! Each record is a group's number and its batch:
//!
//! ```text
//! length (u32, big-endian) · CRC-32 of the body (u32, big-endian) · body (msgpack)
//! ```
//!
//! Records live in segment files `wal/<first number, 20 digits>.log`. A new
//! segment starts once the current one passes [`SEGMENT_BYTES`]; segments
//! whose records the ledger holds durably are deleted then. At start,
//! [`recover`] puts every record the ledger does not hold yet into it
//! (the ledger stores the number of the last group it applied), flushes the
//! ledger and deletes the segments.
//!
//! A crash can only cut the last record of the last segment short: the
//! writer appends and syncs before anyone is answered, so a short or
//! mismatching record there was never acknowledged and is dropped. The same
//! anywhere else means the files were damaged, and the coordinator refuses
//! to start rather than skip acknowledged writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::{CommitBatch, Ledger, LedgerError};

/// A segment grows to about this size before the next one starts.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record accepted when reading: far above any batch the pipeline
/// writes, far below what garbage in a length field could claim.
const MAX_RECORD: usize = 256 * 1024 * 1024;
const HEADER: usize = 8;

/// One logged group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The group's number; the ledger remembers the last one it applied.
    pub number: u64,
    /// What the group writes.
    pub batch: CommitBatch,
}

/// The appending side, owned by the pipeline's log writer.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    size: u64,
    /// Every segment, oldest first, with the first number it holds; the
    /// last is the one appended to.
    segments: Vec<(u64, PathBuf)>,
    /// Encoding buffer, reused.
    buffer: Vec<u8>,
}

fn io(action: &str, path: &Path, err: std::io::Error) -> LedgerError {
    LedgerError::Storage(format!("cannot {action} {}: {err}", path.display()))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LedgerError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io("read", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| io("read", dir, e))?.path();
        let first = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Decodes the records of one segment. `last` says whether a damaged tail
/// may be dropped (the last segment) or is an error.
fn read_segment(path: &Path, last: bool) -> Result<Vec<Record>, LedgerError> {
    let bytes = fs::read(path).map_err(|e| io("read", path, e))?;
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let damaged = |detail: &str| LedgerError::Corrupt {
            key: format!("{} at byte {at}", path.display()),
            detail: format!(
                "{detail}; the write-ahead log is damaged before its end, \
                 so acknowledged writes may be missing: restore the data_dir from a backup"
            ),
        };
        let record = bytes
            .get(at..at + HEADER)
            .and_then(|header| {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                let body = bytes.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
                (len <= MAX_RECORD && crc32fast::hash(body) == crc).then_some(body)
            })
            .map(|body| rmp_serde::from_slice::<Record>(body).map(|r| (r, body.len())));
        match record {
            Some(Ok((record, len))) => {
                records.push(record);
                at += HEADER + len;
            }
            // A torn last record: never synced, never acknowledged.
            None if last => {
                tracing::warn!(
                    path = %path.display(),
                    at,
                    "dropping a torn record at the end of the write-ahead log"
                );
                break;
            }
            None => return Err(damaged("a record is short or fails its checksum")),
            Some(Err(err)) => return Err(damaged(&format!("a record does not decode: {err}"))),
        }
    }
    Ok(records)
}

/// A log ready for appending, after [`recover`].
#[derive(Debug)]
pub struct Recovered {
    /// The log, empty.
    pub wal: Wal,
    /// The number of the last group logged or applied (the next is one more).
    pub last_group: u64,
}

/// Puts every logged group the ledger does not hold yet into it, makes the
/// ledger durable, removes the old segments and opens a fresh log. Run it
/// before anything reads the ledger.
pub fn recover(dir: &Path, ledger: &dyn Ledger) -> Result<Recovered, LedgerError> {
    fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let old = segments(dir)?;
    let applied = ledger.position()?;
    let mut last = applied;
    let mut replayed = 0usize;
    for (i, (_, path)) in old.iter().enumerate() {
        for record in read_segment(path, i + 1 == old.len())? {
            if record.number <= applied {
                continue;
            }
            let mut batch = record.batch;
            batch.position = record.number;
            ledger.commit(batch)?;
            last = last.max(record.number);
            replayed += 1;
        }
    }
    if replayed > 0 {
        tracing::info!(
            groups = replayed,
            last,
            "replayed the write-ahead log into the ledger"
        );
    }
    ledger.flush()?;
    for (_, path) in &old {
        fs::remove_file(path).map_err(|e| io("remove", path, e))?;
    }
    let wal = Wal::create(dir, last + 1)?;
    Ok(Recovered {
        wal,
        last_group: last,
    })
}

impl Wal {
    /// Starts an empty log in `dir` whose first record will be `first`.
    fn create(dir: &Path, first: u64) -> Result<Self, LedgerError> {
        let path = segment_path(dir, first);
        let file = open_segment(&path)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            file,
            size: 0,
            segments: vec![(first, path)],
            buffer: Vec::new(),
        };
        wal.sync_dir()?;
        Ok(wal)
    }

    /// Makes a new segment's directory entry durable.
    fn sync_dir(&self) -> Result<(), LedgerError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", &self.dir, e))
    }

    /// Appends `records` and syncs them to disk; once this returns they
    /// survive a crash.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a CommitBatch)>,
    ) -> Result<(), LedgerError> {
        #[derive(Serialize)]
        struct RecordRef<'a> {
            number: u64,
            batch: &'a CommitBatch,
        }
        self.buffer.clear();
        for (number, batch) in records {
            let start = self.buffer.len();
            self.buffer.extend_from_slice(&[0; HEADER]);
            rmp_serde::encode::write_named(&mut self.buffer, &RecordRef { number, batch })
                .map_err(|e| LedgerError::Storage(format!("cannot encode a log record: {e}")))?;
            let body = &self.buffer[start + HEADER..];
            let len = u32::try_from(body.len())
                .ok()
                .filter(|len| (*len as usize) <= MAX_RECORD)
                .ok_or_else(|| LedgerError::Storage("a log record is too large".into()))?;
            let crc = crc32fast::hash(body);
            self.buffer[start..start + 4].copy_from_slice(&len.to_be_bytes());
            self.buffer[start + 4..start + HEADER].copy_from_slice(&crc.to_be_bytes());
        }
        let path = self.current_path().to_path_buf();
        self.file
            .write_all(&self.buffer)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io("write", &path, e))?;
        self.size += self.buffer.len() as u64;
        Ok(())
    }

    fn current_path(&self) -> &Path {
        self.segments.last().map_or(self.dir.as_path(), |(_, p)| p)
    }

    /// Once the current segment is full: starts the next one at `next`
    /// and deletes the segments whose records are all at or below
    /// `durable_in_ledger`.
    pub fn maybe_rotate(&mut self, next: u64, durable_in_ledger: u64) -> Result<(), LedgerError> {
        if self.size < SEGMENT_BYTES {
            return Ok(());
        }
        let path = segment_path(&self.dir, next);
        self.file = open_segment(&path)?;
        self.size = 0;
        self.segments.push((next, path));
        self.sync_dir()?;
        // A segment's records end where the next segment's begin.
        while self.segments.len() > 1 && self.segments[1].0 <= durable_in_ledger.saturating_add(1) {
            let (_, old) = self.segments.remove(0);
            fs::remove_file(&old).map_err(|e| io("remove", &old, e))?;
        }
        Ok(())
    }
}

fn open_segment(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io("create", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SledLedger;
    use crate::ledger::sled::DEFAULT_IDEMPOTENCY_BUCKET;
    use crate::ledger::sled::tests::reopen;

    fn batch(head: u64) -> CommitBatch {
        CommitBatch {
            head,
            ..CommitBatch::default()
        }
    }

    #[test]
    fn logged_groups_reach_the_ledger_at_recovery_and_only_once() {
        let data = tempfile::tempdir().unwrap();
        let wal_dir = data.path().join("wal");
        {
            let ledger = SledLedger::open(&data.path().join("ledger")).unwrap();
            let Recovered {
                mut wal,
                last_group,
            } = recover(&wal_dir, &ledger).unwrap();
            assert_eq!(last_group, 0);
            wal.append([(1, &batch(3)), (2, &batch(5))]).unwrap();
            wal.append([(3, &batch(9))]).unwrap();
            // Group 1 reached the ledger before the crash; 2 and 3 did not.
            let mut applied = batch(3);
            applied.position = 1;
            ledger.commit(applied).unwrap();
            ledger.flush().unwrap();
        }
        let ledger = reopen(&data.path().join("ledger"), DEFAULT_IDEMPOTENCY_BUCKET);
        let recovered = recover(&wal_dir, &ledger).unwrap();
        assert_eq!(recovered.last_group, 3);
        assert_eq!(ledger.head().unwrap(), 9);
        assert_eq!(ledger.position().unwrap(), 3);
        // The old segments are gone; a fresh one starts at 4.
        let names: Vec<u64> = segments(&wal_dir).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(names, [4]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_before_the_end_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open(&dir.path().join("ledger")).unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = recover(&wal_dir, &ledger).unwrap().wal;
        wal.append([(1, &batch(1)), (2, &batch(2))]).unwrap();
        let path = wal.current_path().to_path_buf();
        drop(wal);
        let full = fs::read(&path).unwrap();

        // Cut inside the second record: the first survives.
        fs::write(&path, &full[..full.len() - 3]).unwrap();
        let records = read_segment(&path, true).unwrap();
        assert_eq!(records.iter().map(|r| r.number).collect::<Vec<_>>(), [1]);

        // A flipped byte in the first record of an earlier segment is damage.
        let mut flipped = full.clone();
        flipped[HEADER + 2] ^= 0xff;
        fs::write(&path, &flipped).unwrap();
        let err = read_segment(&path, false).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        // A length field of garbage is refused without allocating it.
        let mut garbage = full;
        garbage[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        fs::write(&path, &garbage).unwrap();
        assert!(read_segment(&path, false).is_err());
        assert!(read_segment(&path, true).unwrap().is_empty());
    }

    #[test]
    fn full_segments_rotate_and_go_once_the_ledger_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open(&dir.path().join("ledger")).unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = recover(&wal_dir, &ledger).unwrap().wal;
        wal.append([(1, &batch(1))]).unwrap();
        wal.size = SEGMENT_BYTES; // as if full
        // The ledger holds nothing yet: the first segment stays.
        wal.maybe_rotate(2, 0).unwrap();
        wal.append([(2, &batch(2))]).unwrap();
        let firsts = |w: &Wal| w.segments.iter().map(|s| s.0).collect::<Vec<_>>();
        assert_eq!(firsts(&wal), [1, 2]);
        wal.size = SEGMENT_BYTES;
        // Group 1 is in the ledger: segment 1 goes, segment 2 (group 2) stays.
        wal.maybe_rotate(3, 1).unwrap();
        assert_eq!(firsts(&wal), [2, 3]);
        let on_disk: Vec<u64> = segments(&wal_dir).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(on_disk, [2, 3]);
    }
}
