//! The metrics both services serve at `/metrics`, in the Prometheus text
//! format (version 0.0.4) that every scraper and `promtool check metrics`
//! read. `prometheus-client` encodes OpenMetrics, which names a counter's
//! family without its `_total` suffix in `# HELP` and `# TYPE` and ends with
//! `# EOF`; [`prometheus_text`] rewrites those lines and leaves every
//! sample as it is.

/// The `Content-Type` of [`prometheus_text`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` (as `prometheus_client::encoding::text::encode` writes it)
/// in the Prometheus text format.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_and_the_eof_goes() {
        let openmetrics = "\
# HELP shelfsync_writes Writes decided, by op and outcome.
# TYPE shelfsync_writes counter
shelfsync_writes_total{op=\"add\",outcome=\"accepted\"} 3
# HELP shelfsync_head_sequence Durable head.
# TYPE shelfsync_head_sequence gauge
shelfsync_head_sequence 7
# HELP shelfsync_flush_seconds Commit time.
# TYPE shelfsync_flush_seconds histogram
# UNIT shelfsync_flush_seconds seconds
shelfsync_flush_seconds_sum 0.5
shelfsync_flush_seconds_count 2
shelfsync_flush_seconds_bucket{le=\"+Inf\"} 2
# HELP shelfsync_syncs Syncs that completed.
# TYPE shelfsync_syncs counter
shelfsync_syncs_total 9
# EOF
";
        let want = "\
# HELP shelfsync_writes_total Writes decided, by op and outcome.
# TYPE shelfsync_writes_total counter
shelfsync_writes_total{op=\"add\",outcome=\"accepted\"} 3
# HELP shelfsync_head_sequence Durable head.
# TYPE shelfsync_head_sequence gauge
shelfsync_head_sequence 7
# HELP shelfsync_flush_seconds Commit time.
# TYPE shelfsync_flush_seconds histogram
shelfsync_flush_seconds_sum 0.5
shelfsync_flush_seconds_count 2
shelfsync_flush_seconds_bucket{le=\"+Inf\"} 2
# HELP shelfsync_syncs_total Syncs that completed.
# TYPE shelfsync_syncs_total counter
shelfsync_syncs_total 9
";
        assert_eq!(prometheus_text(openmetrics), want);
    }
}
