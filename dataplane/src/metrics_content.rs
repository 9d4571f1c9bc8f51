//! What a MeshMetric endpoint serves: the proxy's metric families the policy selects
//! (`profiles`, `include`, `exclude`) and the applications' metrics, scraped at each
//! scrape and labelled with `app`. Selection works on the exposition text, so it covers
//! every family the proxy renders. The text functions are pure and tested below.

use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::{ApplicationEndpoint, MetricsContent};
use causeway_api::{ProfileName, Selector, SelectorType};
use http_body_util::{BodyExt as _, Empty, Limited};

/// The `Basic` profile: the golden signals.
pub(crate) const BASIC: &[&str] = &[
    "causeway_requests_total",
    "causeway_responses_total",
    "causeway_grpc_responses_total",
    "causeway_request_duration_seconds",
    "causeway_requests_in_flight",
    "causeway_proxy_errors_total",
    "causeway_tcp_connections_total",
    "causeway_tcp_denied_total",
    "causeway_tcp_bytes_total",
];

/// How long an application may take to answer a scrape, and how much it may send.
const APP_TIMEOUT: Duration = Duration::from_secs(5);
const APP_MAX_BYTES: usize = 16 << 20;

enum Matcher {
    Exact(String),
    Prefix(String),
    Contains(String),
    Regex(regex::Regex),
    /// A regex that does not compile (validated at write time; never matches).
    Never,
}

impl Matcher {
    fn new(s: &Selector) -> Matcher {
        let m = s.matches.clone();
        match s.kind {
            SelectorType::Exact => Matcher::Exact(m),
            SelectorType::Prefix => Matcher::Prefix(m),
            SelectorType::Contains => Matcher::Contains(m),
            SelectorType::Regex => regex::Regex::new(&m).map_or(Matcher::Never, Matcher::Regex),
        }
    }

    fn matches(&self, family: &str) -> bool {
        match self {
            Matcher::Exact(m) => family == m,
            Matcher::Prefix(m) => family.starts_with(m.as_str()),
            Matcher::Contains(m) => family.contains(m.as_str()),
            Matcher::Regex(r) => r.is_match(family),
            Matcher::Never => false,
        }
    }
}

/// A policy's choice of families, compiled.
pub(crate) struct Selection {
    all: bool,
    basic: bool,
    include: Vec<Matcher>,
    exclude: Vec<Matcher>,
}

impl Selection {
    pub(crate) fn new(c: &MetricsContent) -> Selection {
        Selection {
            all: c.profiles.is_empty() || c.profiles.contains(&ProfileName::All),
            basic: c.profiles.contains(&ProfileName::Basic),
            include: c.include.iter().map(Matcher::new).collect(),
            exclude: c.exclude.iter().map(Matcher::new).collect(),
        }
    }

    /// Whether `family` is served: included, or in a profile and not excluded.
    pub(crate) fn keeps(&self, family: &str) -> bool {
        if self.include.iter().any(|m| m.matches(family)) {
            return true;
        }
        let profiled = self.all || (self.basic && BASIC.contains(&family));
        profiled && !self.exclude.iter().any(|m| m.matches(family))
    }
}

/// The metric name of a sample line (up to its labels or value).
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// The lines of `text` (the text format) whose family `selection` keeps: `# HELP` and
/// `# TYPE` by the family they name, samples by theirs (a histogram's `_bucket`, `_sum`
/// and `_count` by the histogram's).
pub(crate) fn select(text: &str, selection: &Selection) -> String {
    let mut out = String::with_capacity(text.len());
    // The family the last `# TYPE` declared, and whether it is a histogram or summary.
    let mut declared: (&str, bool) = ("", false);
    for line in text.lines() {
        let family = if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or("");
            if line.starts_with("# TYPE ") {
                declared = (name, matches!(words.next(), Some("histogram" | "summary")));
            }
            name
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let name = sample_name(line);
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| declared.1 && *base == declared.0);
            base.unwrap_or(name)
        };
        if selection.keeps(family) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// An application's exposition with `app="name"` on every sample (OpenMetrics'
/// `# EOF` dropped, so the proxy's text can follow).
pub(crate) fn with_app_label(text: &str, app: &str) -> String {
    let label = format!("app=\"{}\"", app.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        let line = line.trim_end();
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            out.push_str(line);
        } else {
            let name = sample_name(line);
            let rest = &line[name.len()..];
            out.push_str(name);
            match rest.strip_prefix('{') {
                Some(labels) if labels.trim_start().starts_with('}') => {
                    out.push('{');
                    out.push_str(&label);
                    out.push_str(labels.trim_start());
                }
                Some(labels) => {
                    out.push('{');
                    out.push_str(&label);
                    out.push(',');
                    out.push_str(labels);
                }
                None => {
                    out.push('{');
                    out.push_str(&label);
                    out.push('}');
                    out.push_str(rest);
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The client that scrapes applications.
type ScrapeClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// Scrapes one application's endpoint: its text, or why not.
async fn scrape(client: &ScrapeClient, app: &ApplicationEndpoint) -> Result<String, String> {
    let host = if app.address.contains(':') {
        format!("[{}]", app.address)
    } else {
        app.address.clone()
    };
    let url = format!("http://{host}:{}{}", app.port, app.path);
    let req = http::Request::get(&url)
        .header(http::header::ACCEPT, "text/plain; version=0.0.4")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(APP_TIMEOUT, async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), APP_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec())
            .map_err(|_| format!("{url} answered text that is not UTF-8"))
    })
    .await
    .map_err(|_| format!("{url} did not answer within {APP_TIMEOUT:?}"))?
}

/// What an endpoint serves: the proxy's metrics `content` selects, then each
/// application's, and `causeway_application_scrape_up{app}` (1 when its scrape
/// worked).
pub(crate) async fn render(own: &str, content: &MetricsContent) -> String {
    let mut out = select(own, &Selection::new(content));
    if content.applications.is_empty() {
        return out;
    }
    let client: ScrapeClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let scrapes =
        futures::future::join_all(content.applications.iter().map(|a| scrape(&client, a))).await;
    let mut up = String::from(
        "# HELP causeway_application_scrape_up Whether the last scrape of an application's metrics (MeshMetric applications) worked.\n# TYPE causeway_application_scrape_up gauge\n",
    );
    for (app, got) in content.applications.iter().zip(scrapes) {
        let name = app.name.replace('\\', "\\\\").replace('"', "\\\"");
        match got {
            Ok(text) => {
                out.push_str(&with_app_label(&text, &app.name));
                up.push_str(&format!(
                    "causeway_application_scrape_up{{app=\"{name}\"}} 1\n"
                ));
            }
            Err(e) => {
                tracing::debug!(app = %app.name, error = %e, "scraping an application's metrics");
                up.push_str(&format!(
                    "causeway_application_scrape_up{{app=\"{name}\"}} 0\n"
                ));
            }
        }
    }
    out.push_str(&up);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP causeway_requests_total Requests.
# TYPE causeway_requests_total counter
causeway_requests_total{service=\"a\"} 3
# HELP causeway_request_duration_seconds Latency.
# TYPE causeway_request_duration_seconds histogram
causeway_request_duration_seconds_bucket{le=\"+Inf\"} 3
causeway_request_duration_seconds_sum 0.1
causeway_request_duration_seconds_count 3
# HELP causeway_retries_total Retries.
# TYPE causeway_retries_total counter
causeway_retries_total{service=\"a\",result=\"retried\"} 1
";

    fn selection(
        profiles: &[ProfileName],
        include: &[(SelectorType, &str)],
        exclude: &[(SelectorType, &str)],
    ) -> Selection {
        let sel = |l: &[(SelectorType, &str)]| {
            l.iter()
                .map(|(kind, m)| Selector {
                    kind: *kind,
                    matches: m.to_string(),
                })
                .collect()
        };
        Selection::new(&MetricsContent {
            profiles: profiles.to_vec(),
            include: sel(include),
            exclude: sel(exclude),
            applications: vec![],
            include_unused: false,
        })
    }

    fn families(text: &str) -> Vec<&str> {
        let mut f: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        f.dedup();
        f
    }

    #[test]
    fn no_profile_serves_everything_and_basic_the_golden_signals() {
        assert_eq!(select(TEXT, &selection(&[], &[], &[])), TEXT);
        let basic = select(TEXT, &selection(&[ProfileName::Basic], &[], &[]));
        assert_eq!(
            families(&basic),
            [
                "causeway_requests_total",
                "causeway_request_duration_seconds"
            ]
        );
        // A histogram keeps its buckets, sum and count.
        assert!(
            basic.contains("causeway_request_duration_seconds_count 3"),
            "{basic}"
        );
        assert!(!basic.contains("retries"), "{basic}");
        assert_eq!(select(TEXT, &selection(&[ProfileName::None], &[], &[])), "");
    }

    #[test]
    fn include_wins_over_exclude_and_selectors_match_by_kind() {
        let s = selection(
            &[ProfileName::Basic],
            &[(SelectorType::Contains, "retries")],
            &[
                (SelectorType::Prefix, "causeway_request"),
                (SelectorType::Regex, "retries"),
            ],
        );
        let text = select(TEXT, &s);
        assert_eq!(families(&text), ["causeway_retries_total"], "{text}");
        let s = selection(
            &[],
            &[],
            &[(SelectorType::Exact, "causeway_requests_total")],
        );
        assert_eq!(
            families(&select(TEXT, &s)),
            [
                "causeway_request_duration_seconds",
                "causeway_retries_total"
            ]
        );
    }

    #[test]
    fn application_samples_get_the_app_label() {
        let app = "# HELP jobs_total Jobs.\n# TYPE jobs counter\njobs_total 5\njobs_total{queue=\"a\"} 2 1700000000\nup{} 1\n# EOF\n";
        assert_eq!(
            with_app_label(app, "worker"),
            "# HELP jobs_total Jobs.\n# TYPE jobs counter\njobs_total{app=\"worker\"} 5\njobs_total{app=\"worker\",queue=\"a\"} 2 1700000000\nup{app=\"worker\"} 1\n"
        );
    }
}
