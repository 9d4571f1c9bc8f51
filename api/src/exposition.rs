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

/// The sum of the samples in `text` (the text format) that `selector` picks: a metric
/// name, optionally with labels in braces (`name{a="x",b="y"}`), which a sample must
/// all carry (it may carry more). Label order does not matter; unparsable lines are
/// skipped. What tests and the bench read metrics with.
///
/// ```
/// let text = "x_total{mesh=\"m\",peer=\"web\",code=\"200\"} 3\nx_total{peer=\"web\",code=\"503\"} 1\n";
/// assert_eq!(causeway_api::exposition::sum(text, "x_total{code=\"200\",peer=\"web\"}"), 3.0);
/// assert_eq!(causeway_api::exposition::sum(text, "x_total{peer=\"web\"}"), 4.0);
/// assert_eq!(causeway_api::exposition::sum(text, "x_total"), 4.0);
/// assert_eq!(causeway_api::exposition::sum(text, "y_total"), 0.0);
/// ```
pub fn sum(text: &str, selector: &str) -> f64 {
    let Some((name, wanted)) = sample_parts(selector.trim()) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let (n, labels) = sample_parts(series)?;
            (n == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// One sample line of the text format: its name, labels (values unescaped) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

/// Parses a sample line (`name{a="x"} 1.5`, optionally with a timestamp); `None` for a
/// comment, a blank or a line it cannot read.
///
/// ```
/// let s = causeway_api::exposition::parse_sample(r#"x_total{a="q\"uote",b="2"} 3 1700000000"#).unwrap();
/// assert_eq!((s.name, s.value), ("x_total", 3.0));
/// assert_eq!(s.labels, [("a", "q\"uote".to_string()), ("b", "2".to_string())]);
/// ```
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('}') {
        Some(close) if line[..close].contains('{') => (&line[..=close], &line[close + 1..]),
        _ => line.split_once(' ')?,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = sample_parts(series)?;
    let labels = labels
        .into_iter()
        .map(|(k, v)| {
            let mut out = String::with_capacity(v.len());
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match (c, c == '\\') {
                    (_, true) => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some(other) => out.push(other),
                        None => {}
                    },
                    (c, false) => out.push(c),
                }
            }
            (k, out)
        })
        .collect();
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A series' name and its `label="value"` pairs (values still escaped).
fn sample_parts(series: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new()));
    };
    let mut rest = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=\"")?;
        // The value ends at the first quote not escaped by a backslash.
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..i)?;
        labels.push((label.trim_start_matches(',').trim(), value));
        rest = after.get(i + 1..)?.trim_start_matches(',');
    }
    Some((name, labels))
}
