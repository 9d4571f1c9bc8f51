//! Metrics exposition as Prometheus scrapes and `promtool check metrics` reads it: the
//! classic text format (0.0.4), from the OpenMetrics text the `prometheus-client`
//! registries write. The two differ in a counter family's name (OpenMetrics names it
//! without `_total`, its samples with), `# UNIT` lines and the final `# EOF`.

/// The content type of [`prometheus_text`]'s output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` in Prometheus' classic text format.
///
/// ```
/// let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# EOF\n";
/// assert_eq!(
///     causeway_api::exposition::prometheus_text(om),
///     "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n"
/// );
/// ```
pub fn prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    // The counter families, by name.
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
