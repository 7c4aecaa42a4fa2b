//! The measuring side of `shelfsync-loadgen fleet`: pure bookkeeping the
//! running fleet feeds, and what it writes out.
//!
//! [`Propagation`] pairs each write's acknowledgement (seen by the writer)
//! with the change's arrival in the replica of the store that reads its
//! location, whichever comes first, and keeps the gaps in an HDR histogram.
//! [`ProcSample`] reads a process's CPU time and resident memory from
//! `/proc/<pid>/stat` and `/proc/<pid>/status` (the coordinator's), and
//! [`cpu_percent`] turns two samples into % of one core. [`FleetRow`] is
//! one run as a CSV row; [`append_csv`] and [`draw`] write the CSV and a
//! PNG of every row in it (coordinator CPU and propagation p99 against the
//! store count, one series per label), as `run` does for its measurements.
//! Nothing here does network I/O or reads a clock: callers pass instants.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::report::{create_parent, round};

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`: the
/// kernel's `USER_HZ`, which is 100 on every architecture Linux exports it
/// for (`getconf CLK_TCK`).
pub const USER_HZ: f64 = 100.0;
/// Longest propagation the histogram holds, microseconds (10 minutes).
const MAX_PROPAGATION_US: u64 = 600_000_000;

/// A propagation histogram in microseconds.
///
/// # Errors
/// Never with these bounds; an error names the histogram when it does.
pub fn histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_PROPAGATION_US, 3)
        .map_err(|e| LoadError::Internal(format!("cannot create a histogram: {e}")))
}

/// One store's pairing of acknowledged writes with their arrival in its
/// replica. Keys are `(sku, version)`: the store's locations are its own,
/// so a version names one write.
#[derive(Debug)]
pub struct Propagation {
    /// Acknowledged, not yet arrived: when the acknowledgement came.
    acked: HashMap<(String, u64), Instant>,
    /// Arrived before its acknowledgement reached the writer.
    early: HashMap<(String, u64), Instant>,
    /// Acknowledgement to arrival, microseconds; an arrival before the
    /// acknowledgement counts as 0.
    latency: Histogram<u64>,
}

impl Propagation {
    /// An empty tracker.
    ///
    /// # Errors
    /// See [`histogram`].
    pub fn new() -> Result<Self, LoadError> {
        Ok(Propagation {
            acked: HashMap::new(),
            early: HashMap::new(),
            latency: histogram()?,
        })
    }

    /// The writer was told at `at` that the write made `version` of `sku`.
    pub fn acked(&mut self, sku: &str, version: u64, at: Instant) {
        let key = (sku.to_owned(), version);
        match self.early.remove(&key) {
            Some(_) => self.record(Duration::ZERO),
            None => {
                self.acked.insert(key, at);
            }
        }
    }

    /// The replica applied `version` of `sku` (written by the writer) at `at`.
    pub fn arrived(&mut self, sku: &str, version: u64, at: Instant) {
        let key = (sku.to_owned(), version);
        match self.acked.remove(&key) {
            Some(acked) => self.record(at.saturating_duration_since(acked)),
            None => {
                self.early.insert(key, at);
            }
        }
    }

    fn record(&mut self, gap: Duration) {
        let us = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us);
    }

    /// Acknowledged writes not (yet) in the replica.
    pub fn outstanding(&self) -> usize {
        self.acked.len()
    }

    /// The gaps recorded so far.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }
}

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system time of every thread, in [`USER_HZ`] ticks.
    pub cpu_ticks: u64,
    /// Resident memory (`VmRSS`), KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    ///
    /// # Errors
    /// [`LoadError::Usage`] naming the pid when the process is gone or the
    /// files do not parse.
    pub fn read(pid: u32) -> Result<Self, LoadError> {
        let read = |name: &str| {
            fs::read_to_string(format!("/proc/{pid}/{name}")).map_err(|e| {
                LoadError::Usage(format!("--coordinator-pid {pid}: cannot read /proc: {e}"))
            })
        };
        let bad = |what: &str| LoadError::Usage(format!("--coordinator-pid {pid}: no {what}"));
        let cpu_ticks = parse_cpu_ticks(&read("stat")?).ok_or_else(|| bad("CPU times"))?;
        let rss_kib = parse_rss_kib(&read("status")?).ok_or_else(|| bad("VmRSS"))?;
        Ok(ProcSample { cpu_ticks, rss_kib })
    }
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU use between two samples `elapsed` apart, in % of one core.
pub fn cpu_percent(before: u64, after: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 * 100.0 / USER_HZ / secs
}

/// `total` spread over `stores` and `elapsed`: per store per second.
pub fn per_store_per_s(total: u64, stores: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if stores == 0 || secs <= 0.0 {
        return 0.0;
    }
    total as f64 / stores as f64 / secs
}

/// The p50, p99 and max of a microsecond histogram, in milliseconds
/// (zeros when it is empty).
pub fn percentiles_ms(latency: &Histogram<u64>) -> (f64, f64, f64) {
    if latency.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    (
        ms(latency.value_at_quantile(0.50)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max()),
    )
}

/// One fleet run as a CSV row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRow {
    /// Series name.
    pub label: String,
    /// Stores in the fleet.
    pub stores: usize,
    /// Sync interval, ms.
    pub interval_ms: u64,
    /// Whether the stores held subscriptions.
    pub push: bool,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    /// Syncs per second, all stores.
    pub syncs_per_s: f64,
    /// Coordinator CPU, % of one core (empty without a pid).
    pub coordinator_cpu_pct: Option<f64>,
    /// Coordinator resident memory at the end, MiB (empty without a pid).
    pub coordinator_rss_mib: Option<f64>,
    /// UDP bytes each store sent per second.
    pub tx_bytes_per_store_s: f64,
    /// UDP bytes each store received per second.
    pub rx_bytes_per_store_s: f64,
    /// Propagation p50, ms.
    pub propagation_p50_ms: f64,
    /// Propagation p99, ms.
    pub propagation_p99_ms: f64,
    /// Longest propagation, ms.
    pub propagation_max_ms: f64,
}

/// The CSV header [`append_csv`] writes and expects.
pub const CSV_HEADER: &str = "label,stores,interval_ms,push,writes_per_s,syncs_per_s,\
coordinator_cpu_pct,coordinator_rss_mib,tx_bytes_per_store_s,rx_bytes_per_store_s,\
propagation_p50_ms,propagation_p99_ms,propagation_max_ms";

/// Appends `row` to the CSV at `path` (with the header when the file is
/// new or empty); returns every row the file then holds.
///
/// # Errors
/// [`LoadError::Csv`] when the file has another header or a row does not
/// parse, I/O errors naming the path.
pub fn append_csv(path: &Path, row: &FleetRow) -> Result<Vec<FleetRow>, LoadError> {
    let csv_error = |detail: String| LoadError::Csv {
        path: path.to_path_buf(),
        detail,
    };
    let io = |action: &'static str| {
        move |source| LoadError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    create_parent(path)?;
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("read")(e)),
    };
    let mut rows = parse_csv(&existing).map_err(csv_error)?;
    let mut writer = csv::WriterBuilder::new()
        .has_headers(existing.trim().is_empty())
        .from_writer(Vec::new());
    writer
        .serialize(row)
        .map_err(|e| csv_error(e.to_string()))?;
    let text = writer.into_inner().map_err(|e| csv_error(e.to_string()))?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(&text))
        .map_err(io("write"))?;
    rows.push(row.clone());
    Ok(rows)
}

/// The rows of a fleet CSV's text (none for an empty text).
///
/// # Errors
/// A message naming the header or the line that does not fit.
pub fn parse_csv(text: &str) -> Result<Vec<FleetRow>, String> {
    let Some(first) = text.lines().next() else {
        return Ok(Vec::new());
    };
    if first.trim_end() != CSV_HEADER {
        return Err(format!(
            "its header {first:?} is not the expected {CSV_HEADER:?}; use another file"
        ));
    }
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .deserialize()
        .enumerate()
        .map(|(i, row)| row.map_err(|e| format!("line {}: {e}", i + 2)))
        .collect()
}

/// Draws coordinator CPU and propagation p99 against the store count, one
/// series per label (a later row at the same count replaces an earlier).
///
/// # Errors
/// [`LoadError::Chart`] when there is nothing to draw or drawing fails.
pub fn draw(path: &Path, rows: &[FleetRow]) -> Result<(), LoadError> {
    let fail = |detail: String| LoadError::Chart {
        path: path.to_path_buf(),
        detail,
    };
    if rows.is_empty() {
        return Err(fail("no fleet runs to draw".into()));
    }
    create_parent(path)?;
    crate::chart::register_font().map_err(fail)?;
    plot(path, &series(rows)).map_err(fail)
}

/// One line on the chart: a label and its `(stores, cpu %, p99 ms)` points.
pub type Series = (String, Vec<(usize, f64, f64)>);

/// The series of `rows`, in order of first appearance.
pub fn series(rows: &[FleetRow]) -> Vec<Series> {
    let mut order: Vec<String> = Vec::new();
    let mut by_label: BTreeMap<&str, BTreeMap<usize, (f64, f64)>> = BTreeMap::new();
    for row in rows {
        if !order.contains(&row.label) {
            order.push(row.label.clone());
        }
        by_label.entry(&row.label).or_default().insert(
            row.stores,
            (
                row.coordinator_cpu_pct.unwrap_or(0.0),
                row.propagation_p99_ms,
            ),
        );
    }
    order
        .into_iter()
        .map(|label| {
            let points = by_label
                .get(label.as_str())
                .map(|p| p.iter().map(|(&n, &(c, l))| (n, c, l)).collect())
                .unwrap_or_default();
            (label, points)
        })
        .collect()
}

fn plot(path: &Path, series: &[Series]) -> Result<(), String> {
    const FAMILY: &str = crate::chart::FAMILY;
    let size = (1200u32, 900u32);
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let all = || series.iter().flat_map(|s| s.1.iter());
    let x_top = all().map(|p| p.0).max().unwrap_or(1) as f64 * 1.1;
    let cpu_top = (all().map(|p| p.1).fold(0.0, f64::max) * 1.15).max(1.0);
    let p99_top = (all().map(|p| p.2).fold(0.0, f64::max) * 1.15).max(1.0);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            "shelfsync fleet: coordinator CPU and propagation p99 by store count",
            (FAMILY, 26),
        )
        .map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(size.1 / 2 - 20);
    for (area, y_desc, y_top, second) in [
        (upper, "coordinator CPU (% of one core)", cpu_top, false),
        (lower, "propagation p99 (ms)", p99_top, true),
    ] {
        let mut chart = ChartBuilder::on(&area)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..x_top, 0.0..y_top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("stores")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_desc)
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .draw()
            .map_err(|e| err(&e))?;
        let lines = series.iter().map(|(label, points)| {
            let points = points.iter();
            let points = points.map(|p| (p.0 as f64, if second { p.2 } else { p.1 }));
            (label.clone(), points.collect())
        });
        crate::chart::draw_lines(&mut chart, lines)?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_pairs_acks_with_arrivals_in_either_order() {
        let t0 = Instant::now();
        let mut p = Propagation::new().unwrap();
        // Ack first, arrival 40 ms later.
        p.acked("a", 1, t0);
        assert_eq!(p.outstanding(), 1);
        p.arrived("a", 1, t0 + Duration::from_millis(40));
        assert_eq!(p.outstanding(), 0);
        // Arrival before the writer heard the ack: 0.
        p.arrived("a", 2, t0 + Duration::from_millis(50));
        assert_eq!(p.outstanding(), 0);
        p.acked("a", 2, t0 + Duration::from_millis(55));
        // Another version of the key is a separate write.
        p.acked("a", 3, t0 + Duration::from_millis(60));
        assert_eq!(p.outstanding(), 1);
        // An arrival of another sku does not match it.
        p.arrived("b", 3, t0 + Duration::from_millis(70));
        assert_eq!(p.outstanding(), 1);
        let h = p.latency();
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 0);
        assert!(h.equivalent(h.max(), 40_000), "{}", h.max());
    }

    #[test]
    fn proc_files_parse() {
        // A name with a space and a parenthesis, as comm may hold.
        let stat = "4242 (shelfsync (co) R 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_cpu_ticks("4242 (x) R 1"), None);
        assert_eq!(parse_cpu_ticks("no name"), None);
        let status = "Name:\tshelfsync\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(parse_rss_kib(status), Some(123_456));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn cpu_and_rates_are_per_second() {
        // 250 ticks of 10 ms in 10 s: 25 % of one core.
        assert_eq!(cpu_percent(1000, 1250, Duration::from_secs(10)), 25.0);
        assert_eq!(cpu_percent(1250, 1000, Duration::from_secs(10)), 0.0);
        assert_eq!(cpu_percent(0, 100, Duration::ZERO), 0.0);
        assert_eq!(
            per_store_per_s(1_000_000, 1000, Duration::from_secs(5)),
            200.0
        );
        assert_eq!(per_store_per_s(10, 0, Duration::from_secs(1)), 0.0);
        let mut h = histogram().unwrap();
        assert_eq!(percentiles_ms(&h), (0.0, 0.0, 0.0));
        for us in 1..=1000 {
            h.record(us * 100).unwrap();
        }
        let (p50, p99, max) = percentiles_ms(&h);
        assert!((p50 - 50.0).abs() < 0.1, "{p50}");
        assert!((p99 - 99.0).abs() < 0.1, "{p99}");
        assert!((max - 100.0).abs() < 0.1, "{max}");
    }

    fn row(label: &str, stores: usize, cpu: f64, p99: f64) -> FleetRow {
        FleetRow {
            label: label.into(),
            stores,
            interval_ms: 1000,
            push: true,
            writes_per_s: 2000.0,
            syncs_per_s: 1000.0,
            coordinator_cpu_pct: Some(cpu),
            coordinator_rss_mib: None,
            tx_bytes_per_store_s: 120.5,
            rx_bytes_per_store_s: 300.0,
            propagation_p50_ms: 3.0,
            propagation_p99_ms: p99,
            propagation_max_ms: 90.0,
        }
    }

    #[test]
    fn the_csv_grows_by_a_row_a_run_and_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("out/fleet.csv");
        let rows = append_csv(&csv, &row("push", 100, 4.0, 20.0)).unwrap();
        assert_eq!(rows.len(), 1);
        let rows = append_csv(&csv, &row("push", 1000, 30.0, 80.0)).unwrap();
        assert_eq!(
            rows,
            vec![row("push", 100, 4.0, 20.0), row("push", 1000, 30.0, 80.0)]
        );
        let text = fs::read_to_string(&csv).unwrap();
        assert!(text.starts_with(CSV_HEADER), "{text}");
        assert_eq!(text.lines().count(), 3);
        let png = dir.path().join("fleet.png");
        draw(&png, &rows).unwrap();
        assert!(fs::read(&png).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
        // Another file's header is refused, not mixed.
        let other = dir.path().join("other.csv");
        fs::write(&other, "label,connections\nx,1\n").unwrap();
        let err = append_csv(&other, &row("x", 1, 1.0, 1.0)).unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
        assert!(draw(&dir.path().join("none.png"), &[]).is_err());
    }

    #[test]
    fn series_keep_the_newest_point_per_store_count() {
        let s = series(&[
            row("poll", 10, 1.0, 500.0),
            row("push", 10, 2.0, 5.0),
            row("poll", 10, 1.5, 450.0),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], ("poll".to_owned(), vec![(10, 1.5, 450.0)]));
        assert_eq!(s[1].1, vec![(10, 2.0, 5.0)]);
    }
}
