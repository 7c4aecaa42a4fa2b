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
//! whose records the ledger holds durably are deleted then.
//!
//! A segment that grows makes every sync a metadata change as well: the
//! filesystem allocates the new blocks and writes the file's new size (on a
//! journaling filesystem, with a journal commit). On this project's test
//! machines (ext4) a sync of an overwritten, already written range took
//! 20 to 40 % less time than one of an append (docs/performance.md). So
//! once a log has taken [`PREPARE_AFTER`] bytes, a background thread
//! prepares a **spare**: a segment file written full of zeros and synced
//! (`wal/spare.tmp`, renamed `wal/spare` when complete). The next segment is
//! the spare, renamed; records overwrite its zeros in place, and a sync
//! writes data only. A log that does not yet have a prepared segment
//! switches to the spare as soon as it is ready. A header of eight zero
//! bytes (no record is empty) marks the end of what was written. At start,
//! [`recover`] puts every record the ledger does not hold yet into it
//! (the ledger stores the number of the last group it applied), flushes the
//! ledger and deletes the segments.
//!
//! A crash can only cut the last record of the last segment short: the
//! writer appends and syncs before anyone is answered, so a short or
//! mismatching record there was never acknowledged and is dropped. A write
//! or sync that fails is the same case: nothing is appended after it (the
//! pipeline stops and the coordinator exits), so whatever part of that
//! record reached the disk is the log's last, and is replayed whole if its
//! length and CRC-32 check out, else dropped. The same
//! anywhere else means the files were damaged, and the coordinator refuses
//! to start rather than skip acknowledged writes; so does anything but zeros
//! after the end of an earlier segment's records.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::{CommitBatch, Ledger, LedgerError};

/// A segment grows to about this size before the next one starts; a spare
/// is zero-filled to it.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes a segment takes before the log asks for a spare: a log that
/// stays small (a quiet chain, a test) never writes one.
pub const PREPARE_AFTER: u64 = 4 * 1024 * 1024;
/// A spare being zero-filled, and a complete one.
const SPARE_TMP: &str = "spare.tmp";
const SPARE: &str = "spare";
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
    /// Bytes of records in the current segment: where the next one goes.
    size: u64,
    /// Whether the current segment is a spare (zero-filled ahead).
    prepared: bool,
    /// The size of a segment (and of a spare); [`SEGMENT_BYTES`] but in tests.
    segment_bytes: u64,
    spares: Spares,
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
        if bytes.get(at..at + HEADER) == Some(&[0; HEADER][..]) {
            // The end of the records: the rest of a spare's zeros. Past the
            // last segment it may hold a torn record's pages; past an
            // earlier one, anything but zeros is damage.
            if !last && bytes[at..].iter().any(|b| *b != 0) {
                return Err(LedgerError::Corrupt {
                    key: format!("{} at byte {at}", path.display()),
                    detail: "bytes follow the end of the records; the write-ahead log is \
                             damaged, so acknowledged writes may be missing: restore the \
                             data_dir from a backup"
                        .into(),
                });
            }
            break;
        }
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
    for leftover in [SPARE_TMP, SPARE] {
        let path = dir.join(leftover);
        if path.exists() {
            fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
        }
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
            prepared: false,
            segment_bytes: SEGMENT_BYTES,
            spares: Spares::default(),
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
        write_at(&self.file, &self.buffer, self.size)
            .and_then(|()| sync_data(&self.file))
            .map_err(|e| io("write", &path, e))?;
        self.size += self.buffer.len() as u64;
        Ok(())
    }

    fn current_path(&self) -> &Path {
        self.segments.last().map_or(self.dir.as_path(), |(_, p)| p)
    }

    /// Once the current segment is full, or a spare is ready for a log
    /// without a prepared segment: starts the next segment at `next` and
    /// deletes the segments whose records are all at or below
    /// `durable_in_ledger`. Asks for a spare once the segment has taken
    /// [`PREPARE_AFTER`] bytes.
    pub fn maybe_rotate(&mut self, next: u64, durable_in_ledger: u64) -> Result<(), LedgerError> {
        let ready = self.spares.poll();
        // A full segment goes; so does one that grows, once a spare is ready.
        let upgrade = ready && !self.prepared;
        if self.size < self.segment_bytes && !upgrade {
            if self.size >= PREPARE_AFTER.min(self.segment_bytes / 2) {
                self.spares.start(&self.dir, self.segment_bytes);
            }
            return Ok(());
        }
        let path = segment_path(&self.dir, next);
        let spare = self.spares.take();
        if let Some(spare) = &spare {
            fs::rename(spare, &path).map_err(|e| io("rename", spare, e))?;
        }
        self.file = open_segment(&path)?;
        self.size = 0;
        self.prepared = spare.is_some();
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

/// Writes `bytes` at `offset` of a segment (where the fault suite's
/// `coordinator-wal-write` failpoint refuses it).
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    fail::fail_point!(crate::failpoints::WAL_WRITE, |arg| Err(
        crate::failpoints::io_error(arg)
    ));
    file.write_all_at(bytes, offset)
}

/// `fdatasync`s a segment (where the fault suite's `coordinator-wal-sync`
/// failpoint refuses it).
fn sync_data(file: &File) -> std::io::Result<()> {
    fail::fail_point!(crate::failpoints::WAL_SYNC, |arg| Err(
        crate::failpoints::io_error(arg)
    ));
    file.sync_data()
}

fn open_segment(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io("create", path, e))
}

/// A spare being prepared: its thread, and what tells it to stop.
type Preparing = (JoinHandle<Result<PathBuf, LedgerError>>, Arc<AtomicBool>);

/// The spare segment: prepared on a thread of its own, off the path of
/// every write.
#[derive(Debug, Default)]
struct Spares {
    preparing: Option<Preparing>,
    /// A complete spare, synced and renamed.
    ready: Option<PathBuf>,
    /// A preparation failed: none is started again until the next segment.
    failed: bool,
}

impl Spares {
    /// Starts preparing a spare in `dir`, unless one is ready, under way or
    /// failed for this segment.
    fn start(&mut self, dir: &Path, bytes: u64) {
        if self.ready.is_some() || self.preparing.is_some() || self.failed {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, stopped) = (dir.to_path_buf(), stop.clone());
        // Started from the sequencer, the thread would inherit its raised
        // priority; zero-filling a segment is background work, like the
        // applier's.
        let spawned = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || {
                crate::pipeline::set_nice(crate::pipeline::APPLIER_NICE);
                prepare(&dir, bytes, &stopped)
            });
        match spawned {
            Ok(thread) => self.preparing = Some((thread, stop)),
            Err(err) => self.give_up(&LedgerError::Storage(format!(
                "cannot start a thread to prepare a log segment: {err}"
            ))),
        }
    }

    /// Whether a spare is ready, collecting a preparation that finished.
    fn poll(&mut self) -> bool {
        if self
            .preparing
            .as_ref()
            .is_some_and(|(thread, _)| thread.is_finished())
        {
            self.collect();
        }
        self.ready.is_some()
    }

    /// Waits for the preparation under way and keeps its spare.
    fn collect(&mut self) {
        let Some((thread, _)) = self.preparing.take() else {
            return;
        };
        match thread.join() {
            Ok(Ok(spare)) => self.ready = Some(spare),
            Ok(Err(err)) => self.give_up(&err),
            Err(_) => self.give_up(&LedgerError::Storage(
                "preparing a log segment panicked".into(),
            )),
        }
    }

    /// The ready spare, for the next segment; a segment without one grows
    /// as it is written.
    fn take(&mut self) -> Option<PathBuf> {
        self.failed = false;
        self.ready.take()
    }

    fn give_up(&mut self, err: &LedgerError) {
        tracing::warn!(error = %err, "no spare log segment; the next one grows as it is written, with slower syncs");
        self.failed = true;
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Some((thread, stop)) = self.preparing.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Bytes of zeros a spare is written and synced in at a time, and the pause
/// after each: about 50 MB/s, a 64 MiB spare in some 1.5 s, and at most a
/// quarter of a MiB for a log sync to queue behind. Written at once, the
/// zeros made syncs of the log wait up to 20 ms (docs/performance.md).
const SPARE_CHUNK: usize = 256 * 1024;
const SPARE_PAUSE: Duration = Duration::from_millis(4);

/// Writes `bytes` of zeros to `dir/spare.tmp`, syncs it and renames it to
/// `dir/spare`, which it returns. Gives up early when `stop` is set.
fn prepare(dir: &Path, bytes: u64, stop: &AtomicBool) -> Result<PathBuf, LedgerError> {
    let tmp = dir.join(SPARE_TMP);
    let mut file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    let zeros = vec![0u8; SPARE_CHUNK];
    let mut written = 0u64;
    while written < bytes {
        if written > 0 {
            std::thread::sleep(SPARE_PAUSE);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(LedgerError::Storage("the log closed".into()));
        }
        let len =
            usize::try_from(bytes - written).map_or(SPARE_CHUNK, |left| left.min(SPARE_CHUNK));
        file.write_all(&zeros[..len])
            .and_then(|()| file.sync_data())
            .map_err(|e| io("write", &tmp, e))?;
        written += len as u64;
    }
    file.sync_all().map_err(|e| io("sync", &tmp, e))?;
    let spare = dir.join(SPARE);
    fs::rename(&tmp, &spare).map_err(|e| io("rename", &tmp, e))?;
    Ok(spare)
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

    /// Appends empty groups from `*number` on, rotating as the pipeline
    /// does, until `until` says stop.
    fn fill(wal: &mut Wal, number: &mut u64, until: impl Fn(&Wal) -> bool) {
        while !until(wal) {
            *number += 1;
            wal.append([(*number, &batch(*number))]).unwrap();
            wal.maybe_rotate(*number + 1, 0).unwrap();
        }
    }

    #[test]
    fn a_spare_becomes_the_next_segment_and_recovery_reads_up_to_its_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut number = 0;
        {
            let ledger = SledLedger::open(&dir.path().join("ledger")).unwrap();
            let mut wal = recover(&wal_dir, &ledger).unwrap().wal;
            wal.segment_bytes = 4096;
            // Past half a segment the log asks for a spare.
            fill(&mut wal, &mut number, |w| w.spares.preparing.is_some());
            assert!(!wal.prepared);
            wal.spares.collect();
            assert_eq!(fs::metadata(wal_dir.join(SPARE)).unwrap().len(), 4096);
            // A log without a prepared segment takes the spare at once.
            wal.maybe_rotate(number + 1, 0).unwrap();
            assert!(wal.prepared);
            assert!(!wal_dir.join(SPARE).exists());
            let first_prepared = number + 1;
            assert_eq!(wal.segments.last().unwrap().0, first_prepared);
            // Records overwrite the zeros: the file keeps its length.
            fill(&mut wal, &mut number, |w| w.size > 100);
            let path = wal.current_path().to_path_buf();
            assert_eq!(fs::metadata(&path).unwrap().len(), 4096);
            // Filled up, it is followed by the next spare (or, if that is
            // not ready yet, a growing segment).
            fill(&mut wal, &mut number, |w| w.segments.len() == 3);
            fill(&mut wal, &mut number, |w| w.size > 0);
            // A spare under way or left over at a crash is not a segment.
            wal.spares.collect();
        }
        let ledger = reopen(&dir.path().join("ledger"), DEFAULT_IDEMPOTENCY_BUCKET);
        let recovered = recover(&wal_dir, &ledger).unwrap();
        assert_eq!(recovered.last_group, number);
        assert_eq!(ledger.head().unwrap(), number);
        let left: Vec<String> = fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [format!("{:020}.log", number + 1)]);
    }

    #[test]
    fn only_zeros_may_follow_the_records_of_an_earlier_segment() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SledLedger::open(&dir.path().join("ledger")).unwrap();
        let mut wal = recover(&dir.path().join("wal"), &ledger).unwrap().wal;
        wal.append([(1, &batch(1)), (2, &batch(2))]).unwrap();
        let path = wal.current_path().to_path_buf();
        drop(wal);
        let records = fs::read(&path).unwrap();
        let mut zeros = records.clone();
        zeros.resize(records.len() + 1000, 0);
        fs::write(&path, &zeros).unwrap();
        for last in [true, false] {
            let numbers: Vec<u64> = read_segment(&path, last)
                .unwrap()
                .iter()
                .map(|r| r.number)
                .collect();
            assert_eq!(numbers, [1, 2]);
        }
        // A record's pages past a zeroed header: torn at the end of the
        // last segment (never acknowledged), damage in an earlier one.
        let mut stray = zeros;
        stray[records.len() + 500] = 7;
        fs::write(&path, &stray).unwrap();
        assert_eq!(read_segment(&path, true).unwrap().len(), 2);
        let err = read_segment(&path, false).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
