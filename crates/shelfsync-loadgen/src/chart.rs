//! The PNG chart: throughput and p99 latency against connection count.
//!
//! Two panels share the x axis (connections, log scale): writes per second
//! above, p99 latency in milliseconds below. Each label is one series, in
//! the order labels first appear, so a sweep, or several runs appended to
//! one CSV, make one picture. When a label has more than one measurement at
//! a connection count, the last one (the newest in the CSV) is drawn.
//!
//! Text is rendered with DejaVu Sans, carried in the binary
//! (`assets/DejaVuSans.ttf`, license beside it), so the chart looks the same
//! on any machine and needs no system font library.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::LoadError;
use crate::report::{Measurement, create_parent};

/// The font every text on the chart uses.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The font family name the chart asks plotters for.
pub(crate) const FAMILY: &str = "sans-serif";
/// Chart size in pixels.
const SIZE: (u32, u32) = (1200, 900);

/// One line on the chart: a label's points sorted by connection count.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The label.
    pub label: String,
    /// `(connections, writes/s, p99 ms)`, by connections.
    pub points: Vec<(usize, f64, f64)>,
}

/// Groups measurements into series, one per label in order of first
/// appearance; a later measurement at the same connection count replaces
/// an earlier one.
pub fn series(rows: &[Measurement]) -> Vec<Series> {
    let mut order: Vec<String> = Vec::new();
    let mut by_label: BTreeMap<&str, BTreeMap<usize, (f64, f64)>> = BTreeMap::new();
    for row in rows {
        if !order.contains(&row.label) {
            order.push(row.label.clone());
        }
        by_label
            .entry(&row.label)
            .or_default()
            .insert(row.connections, (row.writes_per_s, row.p99_ms));
    }
    order
        .into_iter()
        .map(|label| {
            let points = by_label
                .get(label.as_str())
                .map(|p| p.iter().map(|(&c, &(w, p99))| (c, w, p99)).collect())
                .unwrap_or_default();
            Series { label, points }
        })
        .collect()
}

pub(crate) fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font cannot be loaded".to_owned())
        })
        .clone()
}

/// Draws the chart of `rows` into the PNG file at `path`, creating its
/// directory.
///
/// # Errors
/// [`LoadError::Chart`] when there is nothing to draw or drawing fails,
/// [`LoadError::Io`] when the directory cannot be created.
pub fn draw(path: &Path, rows: &[Measurement]) -> Result<(), LoadError> {
    let fail = |detail: String| LoadError::Chart {
        path: path.to_path_buf(),
        detail,
    };
    let series = series(rows);
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(fail("no measurements to draw".into()));
    }
    create_parent(path)?;
    register_font().map_err(fail)?;
    plot(path, &series).map_err(fail)
}

fn plot(path: &Path, series: &[Series]) -> Result<(), String> {
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let lo = counts.first().copied().unwrap_or(1).max(1) as f64;
    let hi = counts.last().copied().unwrap_or(1).max(1) as f64;
    // A margin on the log axis so the end points are not on the frame.
    let x_range = (lo / 1.3)..(hi * 1.3);
    let key_points: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let max_of = |f: fn(&(usize, f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(f))
            .fold(0.0_f64, f64::max)
    };
    let writes_top = (max_of(|p| p.1) * 1.15).max(1.0);
    let p99_top = (max_of(|p| p.2) * 1.15).max(0.01);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            "shelfsync coordinator: writes/s and p99 latency by connection count",
            (FAMILY, 26),
        )
        .map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2 - 20);

    let panels = [
        (upper, "writes/s (accepted + rejected)", writes_top, 1usize),
        (lower, "p99 latency (ms)", p99_top, 2usize),
    ];
    for (area, y_desc, y_top, field) in panels {
        let mut chart = ChartBuilder::on(&area)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(90)
            .build_cartesian_2d(
                x_range
                    .clone()
                    .log_scale()
                    .with_key_points(key_points.clone()),
                0.0..y_top,
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("connections (log scale)")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{}", x.round()))
            .y_label_formatter(&|y| {
                if y_top >= 100.0 {
                    format!("{y:.0}")
                } else if y_top >= 1.0 {
                    format!("{y:.1}")
                } else {
                    format!("{y:.3}")
                }
            })
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .draw()
            .map_err(|e| err(&e))?;
        let lines = series.iter().map(|s| {
            let points = s.points.iter();
            let points = points.map(|p| (p.0 as f64, if field == 1 { p.1 } else { p.2 }));
            (s.label.clone(), points.collect())
        });
        draw_lines(&mut chart, lines)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws each `(label, points)` as a line with a dot at every point, in a
/// color of its own, and the legend of them all in the upper left.
pub(crate) fn draw_lines<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    lines: impl Iterator<Item = (String, Vec<(f64, f64)>)>,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    for (i, (label, points)) in lines.enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 16))
        .draw()
        .map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, connections: usize, writes: f64, p99: f64) -> Measurement {
        Measurement {
            label: label.into(),
            connections,
            in_flight: 1,
            workload: "optimistic".into(),
            distribution: "uniform".into(),
            keys: 10,
            duration_s: 1.0,
            ops: 1,
            accepted: 1,
            rejected: BTreeMap::new(),
            errors: 0,
            writes_per_s: writes,
            p50_ms: 0.1,
            p99_ms: p99,
            p999_ms: 0.3,
            max_ms: 0.4,
        }
    }

    #[test]
    fn series_follow_labels_and_keep_the_newest_point() {
        let rows = [
            row("b", 8, 800.0, 2.0),
            row("a", 1, 100.0, 1.0),
            row("b", 1, 150.0, 1.5),
            row("b", 8, 900.0, 2.5),
        ];
        let s = series(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label, "b");
        assert_eq!(s[0].points, vec![(1, 150.0, 1.5), (8, 900.0, 2.5)]);
        assert_eq!(s[1].points, vec![(1, 100.0, 1.0)]);
    }

    #[test]
    fn draws_a_png_for_one_or_many_points() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = dir.path().join("charts/sweep.png");
        let rows = [
            row("optimistic uniform", 1, 1200.0, 1.2),
            row("optimistic uniform", 8, 5200.0, 2.2),
            row("optimistic uniform", 64, 7100.0, 14.0),
            row("delta hot", 1, 1100.0, 1.4),
            row("delta hot", 64, 4100.0, 19.0),
        ];
        draw(&sweep, &rows).unwrap();
        let single = dir.path().join("single.png");
        draw(&single, &rows[..1]).unwrap();
        for path in [sweep, single] {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{}",
                path.display()
            );
        }
        let err = draw(&dir.path().join("none.png"), &[]).unwrap_err();
        assert!(err.to_string().contains("no measurements"), "{err}");
    }
}
