//! What one measurement found, and the three ways it is written down.
//!
//! A [`Measurement`] is the outcome of driving the coordinator at one
//! connection count: ops answered and how (accepted, rejected by reason,
//! failed in transport), throughput and latency percentiles. An op is one
//! write, or for carts and batches one cart or batch of several item writes
//! (the workload names its lines). It is printed
//! as text for people ([`Measurement::text`]), as one JSON object per line
//! ([`Measurement::json_line`]), and appended to a CSV file with the same
//! fields ([`append_csv`]) that [`read_csv`] reads back for the chart.
//! In the CSV the rejections are one column, `reason=count` pairs joined by
//! `;` (empty when there were none).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// The outcome of one measurement (one connection count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Names the series this measurement belongs to in the chart.
    pub label: String,
    /// QUIC connections, one per store.
    pub connections: usize,
    /// Requests outstanding per connection.
    pub in_flight: usize,
    /// The workload (`optimistic`, `delta`, `mix:add=40,...`,
    /// `hold-then-fulfil:lines=3`, `batch:lines=3`).
    pub workload: String,
    /// The key distribution (`uniform`, `hot`, `zipf:0.99`).
    pub distribution: String,
    /// Size of the key space.
    pub keys: u64,
    /// Measured time in seconds (warmup excluded).
    pub duration_s: f64,
    /// Writes sent while measuring: `accepted + rejected + errors`.
    pub ops: u64,
    /// Writes the coordinator accepted.
    pub accepted: u64,
    /// Writes the coordinator refused, by reason (the wire error code).
    pub rejected: BTreeMap<String, u64>,
    /// Writes that got no answer (transport failure, timeout, odd reply).
    pub errors: u64,
    /// Answered writes (accepted + rejected) per second.
    pub writes_per_s: f64,
    /// Median latency of answered writes, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency, milliseconds.
    pub p999_ms: f64,
    /// Highest latency, milliseconds.
    pub max_ms: f64,
}

/// `value` rounded to `decimals` places, for output that stays readable.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl Measurement {
    /// All rejections, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Accepted writes per second.
    pub fn accepted_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            round(self.accepted as f64 / self.duration_s, 1)
        } else {
            0.0
        }
    }

    /// The measurement as one line of JSON.
    pub fn json_line(&self) -> String {
        // A struct of strings, numbers and a string map always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A few lines for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} connection(s) x {} in flight, {}, {} over {} keys, {:.2} s",
            self.label,
            self.connections,
            self.in_flight,
            self.workload,
            self.distribution,
            self.keys,
            self.duration_s
        );
        let _ = writeln!(
            out,
            "  writes/s {:.1}  accepted/s {:.1}  ops {} = accepted {} + rejected {} + errors {}",
            self.writes_per_s,
            self.accepted_per_s(),
            self.ops,
            self.accepted,
            self.rejected_total(),
            self.errors
        );
        if !self.rejected.is_empty() {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            let _ = writeln!(out, "  rejected: {}", reasons.join(", "));
            if self.rejected.contains_key("not_found") {
                let _ = writeln!(
                    out,
                    "  (not_found: the keys do not exist; run once with --preload)"
                );
            }
        }
        let _ = writeln!(
            out,
            "  latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        out
    }
}

/// A one-line-per-measurement table of a sweep, for the end of a run.
pub fn summary(rows: &[Measurement]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>11} {:>11} {:>11} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "connections",
        "writes/s",
        "accepted/s",
        "rejected",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for m in rows {
        let _ = writeln!(
            out,
            "{:>11} {:>11.1} {:>11.1} {:>9} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            m.connections,
            m.writes_per_s,
            m.accepted_per_s(),
            m.rejected_total(),
            m.errors,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.max_ms
        );
    }
    out
}

/// A measurement as a CSV row: the rejections folded into one column.
#[derive(Debug, Serialize, Deserialize)]
struct CsvRow {
    label: String,
    connections: usize,
    in_flight: usize,
    workload: String,
    distribution: String,
    keys: u64,
    duration_s: f64,
    ops: u64,
    accepted: u64,
    rejected: String,
    errors: u64,
    writes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// The header line of the results CSV.
pub const CSV_HEADER: &str = "label,connections,in_flight,workload,distribution,keys,duration_s,ops,accepted,rejected,errors,writes_per_s,p50_ms,p99_ms,p999_ms,max_ms";

impl From<&Measurement> for CsvRow {
    fn from(m: &Measurement) -> Self {
        let rejected: Vec<String> = m
            .rejected
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        CsvRow {
            label: m.label.clone(),
            connections: m.connections,
            in_flight: m.in_flight,
            workload: m.workload.clone(),
            distribution: m.distribution.clone(),
            keys: m.keys,
            duration_s: m.duration_s,
            ops: m.ops,
            accepted: m.accepted,
            rejected: rejected.join(";"),
            errors: m.errors,
            writes_per_s: m.writes_per_s,
            p50_ms: m.p50_ms,
            p99_ms: m.p99_ms,
            p999_ms: m.p999_ms,
            max_ms: m.max_ms,
        }
    }
}

impl TryFrom<CsvRow> for Measurement {
    type Error = String;

    fn try_from(row: CsvRow) -> Result<Self, String> {
        let mut rejected = BTreeMap::new();
        for pair in row.rejected.split(';').filter(|p| !p.is_empty()) {
            let (reason, n) = pair
                .split_once('=')
                .ok_or_else(|| format!("invalid rejected entry {pair:?}"))?;
            let n: u64 = n
                .parse()
                .map_err(|_| format!("invalid rejected count in {pair:?}"))?;
            rejected.insert(reason.to_owned(), n);
        }
        Ok(Measurement {
            label: row.label,
            connections: row.connections,
            in_flight: row.in_flight,
            workload: row.workload,
            distribution: row.distribution,
            keys: row.keys,
            duration_s: row.duration_s,
            ops: row.ops,
            accepted: row.accepted,
            rejected,
            errors: row.errors,
            writes_per_s: row.writes_per_s,
            p50_ms: row.p50_ms,
            p99_ms: row.p99_ms,
            p999_ms: row.p999_ms,
            max_ms: row.max_ms,
        })
    }
}

/// The CSV text of `rows`, with the header line first when `header`.
pub fn csv_text(rows: &[Measurement], header: bool) -> Result<String, String> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(header)
        .from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(CsvRow::from(row))
            .map_err(|e| e.to_string())?;
    }
    if header && rows.is_empty() {
        writer
            .write_record(CSV_HEADER.split(','))
            .map_err(|e| e.to_string())?;
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// Appends `rows` to the CSV file at `path`, writing the header first when
/// the file is new or empty. Creates the parent directory.
///
/// # Errors
/// [`LoadError::Csv`] when the file's header is not this version's (an
/// older layout must not be mixed with this one), I/O errors otherwise.
pub fn append_csv(path: &Path, rows: &[Measurement]) -> Result<(), LoadError> {
    let csv_error = |detail: String| LoadError::Csv {
        path: path.to_path_buf(),
        detail,
    };
    create_parent(path)?;
    let existing = match fs::File::open(path) {
        Ok(file) => {
            let mut first = String::new();
            BufReader::new(file)
                .read_line(&mut first)
                .map_err(|source| LoadError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })?;
            Some(first.trim_end().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(LoadError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let header = match existing.as_deref() {
        None | Some("") => true,
        Some(CSV_HEADER) => false,
        Some(other) => {
            return Err(csv_error(format!(
                "its header {other:?} is not the expected {CSV_HEADER:?}; use another file"
            )));
        }
    };
    let text = csv_text(rows, header).map_err(csv_error)?;
    let write_error = |source| LoadError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)
}

/// Reads every measurement of a results CSV.
///
/// # Errors
/// [`LoadError::Io`] when the file cannot be read, [`LoadError::Csv`] naming
/// the line when a row does not parse.
pub fn read_csv(path: &Path) -> Result<Vec<Measurement>, LoadError> {
    let file = fs::File::open(path).map_err(|source| LoadError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::Reader::from_reader(file);
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize::<CsvRow>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| LoadError::Csv {
            path: path.to_path_buf(),
            detail: format!("line {line}: {e}"),
        })?;
        rows.push(Measurement::try_from(row).map_err(|detail| LoadError::Csv {
            path: path.to_path_buf(),
            detail: format!("line {line}: {detail}"),
        })?);
    }
    Ok(rows)
}

/// Creates the directory `path` goes in, when it has one.
pub(crate) fn create_parent(path: &Path) -> Result<(), LoadError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).map_err(|source| LoadError::Io {
                action: "create directory",
                path: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Measurement {
        Measurement {
            label: "optimistic, uniform".into(),
            connections: 8,
            in_flight: 1,
            workload: "mix:add=40,remove=60".into(),
            distribution: "zipf:0.99".into(),
            keys: 10_000,
            duration_s: 10.002,
            ops: 1_250,
            accepted: 1_200,
            rejected: BTreeMap::from([
                ("version_mismatch".to_owned(), 40),
                ("insufficient_stock".to_owned(), 8),
            ]),
            errors: 2,
            writes_per_s: 124.8,
            p50_ms: 0.613,
            p99_ms: 2.1,
            p999_ms: 4.303,
            max_ms: 12.0,
        }
    }

    #[test]
    fn csv_rows_have_the_documented_layout() {
        let text = csv_text(&[sample()], true).unwrap();
        assert_eq!(
            text,
            format!(
                "{CSV_HEADER}\n\"optimistic, uniform\",8,1,\"mix:add=40,remove=60\",zipf:0.99,10000,10.002,1250,1200,insufficient_stock=8;version_mismatch=40,2,124.8,0.613,2.1,4.303,12.0\n"
            )
        );
        let mut clean = sample();
        clean.rejected.clear();
        let text = csv_text(&[clean], false).unwrap();
        assert!(text.starts_with("\"optimistic, uniform\",8,1,"), "{text}");
        assert!(text.contains(",1200,,2,"), "{text}");
        assert_eq!(csv_text(&[], true).unwrap(), format!("{CSV_HEADER}\n"));
    }

    #[test]
    fn csv_appends_with_one_header_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results/run.csv");
        append_csv(&path, &[sample()]).unwrap();
        let mut second = sample();
        second.connections = 64;
        second.rejected.clear();
        append_csv(&path, &[second.clone()]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("label,connections").count(), 1, "{text}");
        assert_eq!(read_csv(&path).unwrap(), vec![sample(), second]);
    }

    #[test]
    fn csv_with_another_header_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.csv");
        fs::write(&path, "a,b\n1,2\n").unwrap();
        let err = append_csv(&path, &[sample()]).unwrap_err();
        assert!(err.to_string().contains("not the expected"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a,b\n1,2\n");
    }

    #[test]
    fn bad_csv_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        let mut text = csv_text(&[sample()], true).unwrap();
        text.push_str("x,not-a-number,1,w,d,1,1,1,1,,0,1,1,1,1,1\n");
        fs::write(&path, text).unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn json_lines_carry_the_documented_fields() {
        let value: serde_json::Value = serde_json::from_str(&sample().json_line()).unwrap();
        let fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want: Vec<&str> = CSV_HEADER.split(',').collect();
        want.sort_unstable();
        let mut fields_sorted = fields.clone();
        fields_sorted.sort_unstable();
        assert_eq!(fields_sorted, want);
        assert_eq!(value["rejected"]["version_mismatch"], 40);
        assert_eq!(value["p999_ms"], 4.303);
        assert!(!sample().json_line().contains('\n'));
    }

    #[test]
    fn text_names_rejections_and_percentiles() {
        let text = sample().text();
        assert!(text.contains("version_mismatch 40"), "{text}");
        assert!(text.contains("p99.9 4.303"), "{text}");
        assert!(text.contains("accepted/s 120.0"), "{text}");
        let summary = summary(&[sample(), sample()]);
        assert_eq!(summary.lines().count(), 3, "{summary}");
    }
}
