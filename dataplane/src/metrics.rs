//! Prometheus metrics: requests by direction, service, peer service and status class,
//! latency histograms, TCP bytes and connections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency histogram bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Http {
    by_class: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default, Clone)]
struct Tcp {
    connections: u64,
    denied: u64,
    rx: u64,
    tx: u64,
}

/// Counters of one proxy.
#[derive(Default)]
pub(crate) struct Metrics {
    http: Mutex<BTreeMap<(&'static str, String, String), Http>>,
    tcp: Mutex<BTreeMap<(&'static str, String, String), Tcp>>,
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// One HTTP request: `service` is this proxy's (inbound) or the destination (outbound);
    /// `peer` the other side's service.
    pub(crate) fn request(
        &self,
        direction: &'static str,
        service: &str,
        peer: &str,
        status: u16,
        took: Duration,
    ) {
        let mut m = self.http.lock().expect("metrics lock");
        let h = m
            .entry((direction, service.to_string(), peer.to_string()))
            .or_default();
        *h.by_class.entry(class(status)).or_default() += 1;
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    pub(crate) fn tcp(&self, direction: &'static str, service: &str, peer: &str, rx: u64, tx: u64) {
        let mut m = self.tcp.lock().expect("metrics lock");
        let t = m
            .entry((direction, service.to_string(), peer.to_string()))
            .or_default();
        t.connections += 1;
        t.rx += rx;
        t.tx += tx;
    }

    pub(crate) fn denied(&self, direction: &'static str, service: &str, peer: &str) {
        let mut m = self.tcp.lock().expect("metrics lock");
        m.entry((direction, service.to_string(), peer.to_string()))
            .or_default()
            .denied += 1;
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let http = self.http.lock().expect("metrics lock").clone();
        let tcp = self.tcp.lock().expect("metrics lock").clone();
        let labels =
            |d: &str, s: &str, p: &str| format!("direction=\"{d}\",service=\"{s}\",peer=\"{p}\"");
        out.push_str("# TYPE causeway_requests_total counter\n");
        for ((d, s, p), h) in &http {
            for (c, n) in &h.by_class {
                let _ = writeln!(
                    out,
                    "causeway_requests_total{{{},status_class=\"{c}\"}} {n}",
                    labels(d, s, p)
                );
            }
        }
        out.push_str("# TYPE causeway_request_duration_seconds histogram\n");
        for ((d, s, p), h) in &http {
            let l = labels(d, s, p);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "causeway_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "causeway_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "causeway_request_duration_seconds_sum{{{l}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "causeway_request_duration_seconds_count{{{l}}} {}",
                h.count
            );
        }
        out.push_str("# TYPE causeway_tcp_connections_total counter\n");
        for ((d, s, p), t) in &tcp {
            let l = labels(d, s, p);
            let _ = writeln!(
                out,
                "causeway_tcp_connections_total{{{l}}} {}",
                t.connections
            );
            let _ = writeln!(out, "causeway_tcp_denied_total{{{l}}} {}", t.denied);
            let _ = writeln!(
                out,
                "causeway_tcp_bytes_total{{{l},flow=\"received\"}} {}",
                t.rx
            );
            let _ = writeln!(
                out,
                "causeway_tcp_bytes_total{{{l},flow=\"sent\"}} {}",
                t.tx
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("inbound", "web", "frontend", 200, Duration::from_millis(3));
        m.request(
            "inbound",
            "web",
            "frontend",
            403,
            Duration::from_micros(100),
        );
        m.tcp("outbound", "db", "web", 10, 20);
        let t = m.render();
        assert!(t.contains("causeway_requests_total{direction=\"inbound\",service=\"web\",peer=\"frontend\",status_class=\"2xx\"} 1"), "{t}");
        assert!(t.contains("status_class=\"4xx\"} 1"), "{t}");
        assert!(t.contains("le=\"0.005\"} 2"), "{t}");
        assert!(t.contains("le=\"0.001\"} 1"), "{t}");
        assert!(t.contains("causeway_tcp_bytes_total{direction=\"outbound\",service=\"db\",peer=\"web\",flow=\"sent\"} 20"), "{t}");
    }
}
