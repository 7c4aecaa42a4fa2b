//! `shelfctl import FILE.csv`: loads or updates a catalog.
//!
//! The file is streamed, never held whole: one record is read, validated
//! ([`row`]) and handed to a task that strong-reads the item and makes the
//! one write the row calls for (create, set with the version it read, or
//! nothing). At most `--concurrency` rows are in flight at once on one
//! connection, and never two rows of the same key, so a file that names a key
//! twice is applied in file order. Running the same file twice changes
//! nothing the second time: every row then reads as unchanged.
//!
//! A row is *rejected* when its CSV line is malformed, a field breaks the
//! item rules, or the coordinator refuses its write; it is reported on stderr
//! with its 1-based line (the header is line 1) and counted in the summary.
//! A write that loses a race with another writer (version mismatch, already
//! exists) is planned again from a fresh read. Transport failures are retried
//! with the same idempotency key; when the connection is lost for good the
//! import stops with an error (exit 2) after printing what it did, and running
//! it again is safe.

pub mod row;

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shelfsync_core::ItemKey;
use shelfsync_proto::{Client, ErrorCode, ProtoError};
use tokio::task::{JoinError, JoinSet};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use row::{Columns, Plan, Row, plan};

/// Rows in flight when `--concurrency` is not given.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// The most rows in flight `--concurrency` allows (the coordinator accepts
/// 1024 concurrent streams per connection; each row uses one at a time).
pub const MAX_CONCURRENCY: usize = 1000;
/// Extra attempts of one request after a transport failure.
const RETRIES: u32 = 3;
/// Pause before the first retry; doubled for each later one.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How often one row is planned again after losing a race with another writer.
const REPLANS: u32 = 4;
/// Rejected lines listed in the summary; stderr has them all.
const LISTED_LINES: usize = 20;

/// What `shelfctl import` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The CSV file.
    pub path: PathBuf,
    /// Rows in flight at once, 1..=[`MAX_CONCURRENCY`].
    pub concurrency: usize,
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RowOutcome {
    Created,
    Updated,
    Unchanged,
    Rejected(String),
}

/// The counts of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Data rows read (the header not counted).
    pub rows: u64,
    /// Items created.
    pub created: u64,
    /// Items whose name or quantity was set.
    pub updated: u64,
    /// Rows that matched the item already.
    pub unchanged: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// The lowest `LISTED_LINES` rejected lines.
    pub rejected_lines: BTreeSet<u64>,
}

impl Summary {
    fn reject(&mut self, line: u64) {
        self.rejected += 1;
        self.rejected_lines.insert(line);
        if self.rejected_lines.len() > LISTED_LINES {
            self.rejected_lines.pop_last();
        }
    }

    fn counts(&self) -> String {
        format!(
            "created {}, updated {}, unchanged {}, rejected {}",
            self.created, self.updated, self.unchanged, self.rejected
        )
    }

    /// The summary printed at the end, one count per line.
    pub fn to_text(&self) -> String {
        let mut rejected = self.rejected.to_string();
        if self.rejected > 0 {
            let lines: Vec<String> = self.rejected_lines.iter().map(u64::to_string).collect();
            let noun = if self.rejected == 1 { "line" } else { "lines" };
            rejected.push_str(&format!(" ({noun} {}", lines.join(", ")));
            let more = self.rejected - self.rejected_lines.len() as u64;
            if more > 0 {
                rejected.push_str(&format!(" and {more} more; see stderr"));
            }
            rejected.push(')');
        }
        format!(
            "rows: {}\ncreated: {}\nupdated: {}\nunchanged: {}\nrejected: {rejected}\n",
            self.rows, self.created, self.updated, self.unchanged
        )
    }
}

/// Runs `shelfctl import`.
pub async fn run(config: &Config, settings: &Settings) -> anyhow::Result<Outcome> {
    let path = &settings.path;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(BufReader::new(file));
    let header = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {}", path.display()))?;
    let columns = Columns::from_header(header)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    let client = Arc::new(coordinator::connect(config).await?);

    let mut import = Import::new(size);
    let result = import.rows(&mut reader, &columns, &client, settings).await;
    import.progress.finish_and_clear();
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
    print!("{}", import.summary.to_text());
    result.with_context(|| {
        format!(
            "the import of {} stopped; the rows above were done and running it again is safe",
            path.display()
        )
    })?;
    Ok(if import.summary.rejected == 0 {
        Outcome::Success
    } else {
        Outcome::Attention
    })
}

/// The state of a running import.
struct Import {
    summary: Summary,
    /// Keys with a row in flight.
    in_flight: HashSet<ItemKey>,
    progress: ProgressBar,
}

impl Import {
    fn new(size: u64) -> Self {
        // The bar follows the bytes read, since the row count is unknown
        // until the end; only on a terminal.
        let progress = if std::io::stdout().is_terminal() {
            ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stdout()).with_style(
                ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {percent:>3}% {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        } else {
            ProgressBar::hidden()
        };
        Import {
            summary: Summary::default(),
            in_flight: HashSet::new(),
            progress,
        }
    }

    /// Reads every record and imports it, at most `concurrency` at once.
    async fn rows<R: std::io::Read>(
        &mut self,
        reader: &mut csv::Reader<R>,
        columns: &Columns,
        client: &Arc<Client>,
        settings: &Settings,
    ) -> anyhow::Result<()> {
        let mut tasks: JoinSet<(Row, Result<RowOutcome, ProtoError>)> = JoinSet::new();
        let mut record = csv::StringRecord::new();
        loop {
            let read = reader.read_record(&mut record);
            self.progress.set_position(reader.position().byte());
            let line = match read {
                Ok(false) => break,
                Ok(true) => record.position().map_or(0, csv::Position::line),
                Err(err) => {
                    let Some(line) = err.position().map(csv::Position::line) else {
                        return Err(err)
                            .with_context(|| format!("cannot read {}", settings.path.display()));
                    };
                    self.summary.rows += 1;
                    self.record(line, RowOutcome::Rejected(csv_error(&err)));
                    continue;
                }
            };
            self.summary.rows += 1;
            let row = match Row::parse(&record, columns, line) {
                Ok(row) => row,
                Err(reason) => {
                    self.record(line, RowOutcome::Rejected(reason));
                    continue;
                }
            };
            while tasks.len() >= settings.concurrency || self.in_flight.contains(&row.key) {
                let Some(joined) = tasks.join_next().await else {
                    break;
                };
                self.finish(joined)?;
            }
            self.in_flight.insert(row.key.clone());
            let client = client.clone();
            tasks.spawn(async move {
                let outcome = import_row(&client, &row).await;
                (row, outcome)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            self.finish(joined)?;
        }
        Ok(())
    }

    /// Accounts for a finished row; a transport failure ends the import.
    fn finish(
        &mut self,
        joined: Result<(Row, Result<RowOutcome, ProtoError>), JoinError>,
    ) -> anyhow::Result<()> {
        let (row, outcome) = joined.context("an import task failed")?;
        self.in_flight.remove(&row.key);
        let outcome = outcome.with_context(|| format!("line {}: {}", row.line, row.key))?;
        self.record(row.line, outcome);
        Ok(())
    }

    fn record(&mut self, line: u64, outcome: RowOutcome) {
        match outcome {
            RowOutcome::Created => self.summary.created += 1,
            RowOutcome::Updated => self.summary.updated += 1,
            RowOutcome::Unchanged => self.summary.unchanged += 1,
            RowOutcome::Rejected(reason) => {
                self.summary.reject(line);
                self.progress
                    .suspend(|| eprintln!("rejected line {line}: {reason}"));
            }
        }
        self.progress.set_message(self.summary.counts());
    }
}

/// The reason of a malformed CSV record, in words.
fn csv_error(err: &csv::Error) -> String {
    match err.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => err.to_string(),
    }
}

/// Reads the row's item and makes the write the row calls for.
///
/// `Err` only for failures of the connection; refusals are rejections.
async fn import_row(client: &Client, row: &Row) -> Result<RowOutcome, ProtoError> {
    let mut salt = None;
    for _ in 0..REPLANS {
        let current = match retried(client, || coordinator::read(client, &row.key)).await {
            Ok(current) => current,
            Err(err) => return refusal(err),
        };
        let plan = plan(row, current.as_ref());
        let Some((op, expected_version)) = row.write(plan) else {
            return Ok(RowOutcome::Unchanged);
        };
        let idempotency_key = row.idempotency_key(plan, salt);
        let written = retried(client, || {
            coordinator::write(
                client,
                idempotency_key.clone(),
                &row.key,
                op.clone(),
                expected_version,
            )
        })
        .await;
        match written {
            Ok(ack) if ack.replayed && plan == Plan::Create => {
                // The coordinator recorded this very create before. Either it
                // was ours (an earlier attempt whose answer was lost) and the
                // item is there, or the item was created, deleted since, and
                // the record is stale: then create it under a new key.
                match coordinator::read(client, &row.key).await {
                    Ok(Some(_)) => return Ok(RowOutcome::Created),
                    Ok(None) => salt = Some(ack.seq),
                    Err(err) => return refusal(err),
                }
            }
            Ok(_) if plan == Plan::Create => return Ok(RowOutcome::Created),
            Ok(_) => return Ok(RowOutcome::Updated),
            // Another writer got there between our read and our write.
            Err(ProtoError::Refused(err))
                if matches!(
                    err.code,
                    ErrorCode::VersionMismatch | ErrorCode::AlreadyExists
                ) => {}
            Err(err) => return refusal(err),
        }
    }
    Ok(RowOutcome::Rejected(format!(
        "{} kept changing during the import; not written",
        row.key
    )))
}

/// A refusal becomes the row's rejection; anything else stops the import.
fn refusal(err: ProtoError) -> Result<RowOutcome, ProtoError> {
    match err {
        ProtoError::Refused(err) => Ok(RowOutcome::Rejected(format!(
            "refused by the coordinator ({}): {}",
            err.code.as_str(),
            err.message
        ))),
        other => Err(other),
    }
}

/// Runs `call` again after a retryable failure, with the same request (so
/// with the same idempotency key), while the connection is open.
async fn retried<T, F, Fut>(client: &Client, mut call: F) -> Result<T, ProtoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProtoError>>,
{
    let mut delay = RETRY_DELAY;
    for _ in 0..RETRIES {
        match call().await {
            Err(err) if err.is_retryable() && !client.is_closed() => {
                tracing::debug!(%err, "retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    call().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_the_lowest_rejected_lines() {
        let mut summary = Summary {
            rows: 30,
            created: 4,
            updated: 1,
            unchanged: 2,
            ..Summary::default()
        };
        assert_eq!(
            summary.to_text(),
            "rows: 30\ncreated: 4\nupdated: 1\nunchanged: 2\nrejected: 0\n"
        );
        summary.reject(9);
        assert!(summary.to_text().ends_with("rejected: 1 (line 9)\n"));
        summary.reject(3);
        assert!(summary.to_text().ends_with("rejected: 2 (lines 3, 9)\n"));
        for line in (100..123).rev() {
            summary.reject(line);
        }
        assert_eq!(summary.rejected, 25);
        assert_eq!(summary.rejected_lines.len(), LISTED_LINES);
        let text = summary.to_text();
        assert!(text.contains("(lines 3, 9, 100, "), "{text}");
        assert!(text.contains(", 117 and 5 more; see stderr)"), "{text}");
    }

    #[test]
    fn csv_errors_in_words() {
        let data = "location,sku,name,quantity\ns1,a,A,1\ns1,b,B\ns1,c,C,3,4\n";
        let mut reader = csv::Reader::from_reader(data.as_bytes());
        let mut found = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => found.push(format!("{}: ok", record.position().unwrap().line())),
                Err(err) => found.push(format!(
                    "{}: {}",
                    err.position().unwrap().line(),
                    csv_error(&err)
                )),
            }
        }
        assert_eq!(
            found,
            [
                "2: ok",
                "3: expected 4 fields, found 3",
                "4: expected 4 fields, found 5"
            ]
        );
    }
}
