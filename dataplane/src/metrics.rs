//! Prometheus metrics: requests by mesh, zone, direction, service, peer, peer zone and
//! status, the proxy's own answers by cause (the `x-causeway-error` label), latency
//! histograms, requests in flight, TCP bytes and connections; and the deltas of the
//! golden signals the sidecar sends its zone ([`Metrics::signal_deltas`], see
//! [`causeway_api::stats`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway_api::kds::dds::{ProxySignal, SignalCounts};
use causeway_api::stats::{BUCKETS, LATENCY_BOUNDS_SECONDS};

use crate::error::{LABELS, ProxyError};
use crate::timeout::LiveBytes;

/// Counters of one (direction, service, peer): atomics, so recording a request takes
/// no lock and allocates nothing. Connections look their handle up once.
pub(crate) struct HttpStats {
    by_class: [AtomicU64; 5],
    /// By exact status, 100 to 599.
    by_code: Box<[AtomicU64]>,
    /// gRPC calls by `grpc-status`, 0 to 16 (from the answer's trailers, or its head
    /// for a trailers-only answer).
    by_grpc_status: [AtomicU64; 17],
    /// By [`LATENCY_BOUNDS_SECONDS`], the last past them.
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    /// Requests waiting for their answer's head.
    in_flight: AtomicI64,
    sum_ns: AtomicU64,
    /// The proxy's own answers, by [`ProxyError::index`].
    errors: [AtomicU64; LABELS.len()],
}

impl Default for HttpStats {
    fn default() -> HttpStats {
        HttpStats {
            by_class: Default::default(),
            by_code: (100..600).map(|_| AtomicU64::new(0)).collect(),
            by_grpc_status: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            sum_ns: AtomicU64::new(0),
            errors: Default::default(),
        }
    }
}

impl HttpStats {
    /// Counts a gRPC call's status (a code past 16 is counted as 2, UNKNOWN).
    pub(crate) fn grpc(&self, code: u32) {
        let i = if code <= 16 { code as usize } else { 2 };
        self.by_grpc_status[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, status: u16, took: Duration) {
        if let Some(c) = self.by_code.get(usize::from(status).wrapping_sub(100)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.buckets[causeway_api::stats::bucket(took.as_secs_f64())]
            .fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts a request in flight until the guard drops (when its answer's head is
    /// ready).
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// What the golden signals count of it so far: requests, failures (5xx, or a
    /// gRPC status other than OK) and latency buckets.
    fn signal_totals(&self) -> [u64; 2 + BUCKETS] {
        let mut out = [0; 2 + BUCKETS];
        out[0] = self.count.load(Ordering::Relaxed);
        out[1] = self.by_class[4].load(Ordering::Relaxed)
            + self.by_grpc_status[1..]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>();
        for (o, b) in out[2..].iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        out
    }

    /// Counts an answer the proxy gave itself (also recorded as a request).
    pub(crate) fn error(&self, e: &ProxyError) {
        self.errors[e.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight ([`HttpStats::start`]).
pub(crate) struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// (direction, service, peer, peer zone). Outbound, `service` is the destination and
/// `peer` this proxy's service; the peer's zone is known inbound (from the caller's
/// certificate).
type Labels = (&'static str, String, String, String);

/// The labels of one series of golden signals ([`Metrics::signal_deltas`]).
pub(crate) type SignalLabels = Labels;

/// This proxy's mesh and zone, labels of every series.
#[derive(Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) mesh: &'a str,
    pub(crate) zone: &'a str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// TCP counters of one (direction, service, peer): bytes are added as they move.
#[derive(Default)]
struct Tcp {
    connections: AtomicU64,
    denied: AtomicU64,
    /// Read: received from the side that opened the connection; written: sent to it.
    bytes: Arc<LiveBytes>,
}

/// Counters of one proxy.
#[derive(Default)]
pub(crate) struct Metrics {
    http: Mutex<BTreeMap<Labels, Arc<HttpStats>>>,
    tcp: Mutex<BTreeMap<Labels, Arc<Tcp>>>,
    /// Active health checks by destination service: (passed, failed).
    health_checks: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Circuit breaking by (destination service, event).
    circuit_breaker: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Calls let in under AllowWithShadowDeny, by (this proxy's service, caller).
    shadow_denied: Mutex<BTreeMap<(String, String), u64>>,
    /// Retry decisions by (destination service, result).
    retries: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Requests that took a MeshHTTPRoute, by (destination service, route, backend
    /// service).
    routed: Mutex<BTreeMap<(String, String, String), Arc<AtomicU64>>>,
    /// Mirrored copies by (destination service, mirror service, result).
    mirrored: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// MeshAccessLog entries by backend ([`crate::access_log::BACKENDS`]): (written,
    /// dropped).
    pub(crate) access_log: [(AtomicU64, AtomicU64); 3],
    /// MeshTrace spans by backend ([`crate::trace::BACKENDS`]): (exported, dropped).
    pub(crate) trace_spans: [(AtomicU64, AtomicU64); 2],
    /// MeshMetric OTLP pushes: (done, failed).
    pub(crate) metric_pushes: [AtomicU64; 2],
    /// Connections closed unserved at the connection cap: (inbound, outbound).
    pub(crate) connections_refused: [AtomicU64; 2],
    /// Redirected connections by what became of them ([`TRANSPARENT_RESULTS`]).
    pub(crate) transparent: [AtomicU64; 3],
    /// DNS queries by how they were answered ([`DNS_RESULTS`]).
    dns: [AtomicU64; 4],
}

/// How a DNS query was answered: a mesh name by the sidecar, by an upstream resolver,
/// SERVFAIL (no upstream answered, or too many queries in flight), or not at all (not
/// a DNS message).
pub(crate) const DNS_RESULTS: [&str; 4] = ["mesh", "upstream", "servfail", "dropped"];

/// What became of a redirected connection: a mesh service's (by its virtual IP),
/// passed through to its original destination, or closed.
pub(crate) const TRANSPARENT_RESULTS: [&str; 3] = ["mesh", "passthrough", "refused"];

impl Metrics {
    fn render_access_log(&self, out: &mut String) {
        let backends = crate::access_log::BACKENDS;
        out.push_str("# HELP causeway_access_log_entries_total Access-log entries written, by backend (MeshAccessLog).\n");
        out.push_str("# TYPE causeway_access_log_entries_total counter\n");
        for (i, b) in backends.iter().enumerate() {
            let n = self.access_log[i].0.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "causeway_access_log_entries_total{{backend=\"{b}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_access_log_dropped_total Access-log entries dropped (queue full, collector away, write failed), by backend.\n");
        out.push_str("# TYPE causeway_access_log_dropped_total counter\n");
        for (i, b) in backends.iter().enumerate() {
            let n = self.access_log[i].1.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "causeway_access_log_dropped_total{{backend=\"{b}\"}} {n}"
            );
        }
    }

    fn render_trace_spans(&self, out: &mut String) {
        let backends = crate::trace::BACKENDS;
        out.push_str("# HELP causeway_trace_spans_exported_total Spans a tracing backend took, by backend (MeshTrace).\n");
        out.push_str("# TYPE causeway_trace_spans_exported_total counter\n");
        for (i, b) in backends.iter().enumerate() {
            let n = self.trace_spans[i].0.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "causeway_trace_spans_exported_total{{backend=\"{b}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_trace_spans_dropped_total Spans dropped (queue full, backend away or refusing), by backend.\n");
        out.push_str("# TYPE causeway_trace_spans_dropped_total counter\n");
        for (i, b) in backends.iter().enumerate() {
            let n = self.trace_spans[i].1.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "causeway_trace_spans_dropped_total{{backend=\"{b}\"}} {n}"
            );
        }
    }

    /// The counters of HTTP requests in `direction` for `service` (this proxy's for
    /// inbound, the destination for outbound) and `peer` (the other side's service).
    /// `peer_zone`: the peer's zone where known, else empty.
    pub(crate) fn http(
        &self,
        direction: &'static str,
        service: &str,
        peer: &str,
        peer_zone: &str,
    ) -> Arc<HttpStats> {
        let mut m = self.http.lock().expect("metrics lock");
        m.entry((
            direction,
            service.to_string(),
            peer.to_string(),
            peer_zone.to_string(),
        ))
        .or_default()
        .clone()
    }

    /// What each (direction, service, peer, peer zone) counted since the last call
    /// (`last` holds the totals then): the golden signals a sidecar sends its zone.
    pub(crate) fn signal_deltas(
        &self,
        last: &mut HashMap<Labels, [u64; 2 + BUCKETS]>,
    ) -> Vec<ProxySignal> {
        let http = self.http.lock().expect("metrics lock").clone();
        let mut out = Vec::new();
        for (labels, h) in http {
            let now = h.signal_totals();
            let before = last.insert(labels.clone(), now).unwrap_or([0; 2 + BUCKETS]);
            let delta: Vec<u64> = now
                .iter()
                .zip(before)
                .map(|(n, b)| n.saturating_sub(b))
                .collect();
            if delta[0] == 0 {
                continue;
            }
            let (direction, service, peer, peer_zone) = labels;
            out.push(ProxySignal {
                outbound: direction == "outbound",
                // Outbound, the proxy's own service called the destination.
                service: if direction == "outbound" {
                    peer.clone()
                } else {
                    service.clone()
                },
                peer: if direction == "outbound" {
                    service
                } else {
                    peer
                },
                peer_zone,
                counts: Some(SignalCounts {
                    requests: delta[0],
                    failures: delta[1],
                    latency: delta[2..].to_vec(),
                }),
            });
        }
        out
    }

    /// Counts a TCP connection that starts; its bytes go to the counters returned, as
    /// they move.
    /// Counts a DNS query answered with `result` (one of [`DNS_RESULTS`]).
    pub(crate) fn dns_answered(&self, result: &str) {
        if let Some(i) = DNS_RESULTS.iter().position(|r| *r == result) {
            self.dns[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn tcp(
        &self,
        direction: &'static str,
        service: &str,
        peer: &str,
        peer_zone: &str,
    ) -> Arc<LiveBytes> {
        let mut m = self.tcp.lock().expect("metrics lock");
        let t = m
            .entry((
                direction,
                service.to_string(),
                peer.to_string(),
                peer_zone.to_string(),
            ))
            .or_default();
        t.connections.fetch_add(1, Ordering::Relaxed);
        t.bytes.clone()
    }

    pub(crate) fn denied(&self, direction: &'static str, service: &str, peer: &str) {
        let mut m = self.tcp.lock().expect("metrics lock");
        m.entry((
            direction,
            service.to_string(),
            peer.to_string(),
            String::new(),
        ))
        .or_default()
        .denied
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one active health check of an endpoint of `service`.
    pub(crate) fn health_check(&self, service: &str, passed: bool) {
        let mut m = self.health_checks.lock().expect("metrics lock");
        let c = m.entry(service.to_string()).or_default();
        if passed {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }

    /// Counts a circuit-breaking `event` (`ejected`, `tcp_overflow`) for `service`.
    pub(crate) fn circuit_breaker(&self, service: &str, event: &'static str) {
        *self
            .circuit_breaker
            .lock()
            .expect("metrics lock")
            .entry((service.to_string(), event))
            .or_default() += 1;
    }

    /// Counts a call from `peer` to `service` that a Deny would have refused, let in
    /// under MeshTrafficPermission's `AllowWithShadowDeny`.
    pub(crate) fn shadow_denied(&self, service: &str, peer: &str) {
        *self
            .shadow_denied
            .lock()
            .expect("metrics lock")
            .entry((service.to_string(), peer.to_string()))
            .or_default() += 1;
    }

    /// Counts a failed try of a request to `service` that MeshRetry would retry, by
    /// what became of it: `retried`, or not because of `budget_exhausted`,
    /// `body_not_replayable` or `past_deadline` (the pause would end past the request
    /// timeout).
    pub(crate) fn retry(&self, service: &str, result: &'static str) {
        *self
            .retries
            .lock()
            .expect("metrics lock")
            .entry((service.to_string(), result))
            .or_default() += 1;
    }

    /// Counts a request to `service` that took `route` and went to `backend`.
    pub(crate) fn routed(&self, service: &str, route: &str, backend: &str) {
        self.route_counter(service, route, backend)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of requests to `service` that took `route` to `backend`, for a
    /// route table to keep: counting is then one atomic add, no lock.
    pub(crate) fn route_counter(
        &self,
        service: &str,
        route: &str,
        backend: &str,
    ) -> Arc<AtomicU64> {
        self.routed
            .lock()
            .expect("metrics lock")
            .entry((service.to_string(), route.to_string(), backend.to_string()))
            .or_default()
            .clone()
    }

    /// Counts a mirrored copy of a request to `service` sent to `mirror`, by what
    /// became of it: `answered`, `failed`, or `dropped` (too many copies in flight, or
    /// a body too long to copy).
    pub(crate) fn mirrored(&self, service: &str, mirror: &str, result: &'static str) {
        *self
            .mirrored
            .lock()
            .expect("metrics lock")
            .entry((service.to_string(), mirror.to_string(), result))
            .or_default() += 1;
    }

    /// The Prometheus text exposition, every request and TCP series labelled with
    /// `place`.
    pub(crate) fn render(&self, place: Place<'_>) -> String {
        let mut out = String::new();
        self.render_access_log(&mut out);
        self.render_trace_spans(&mut out);
        out.push_str("# HELP causeway_metric_pushes_total Pushes of the metrics to OpenTelemetry collectors (MeshMetric), by result.\n");
        out.push_str("# TYPE causeway_metric_pushes_total counter\n");
        for (i, result) in ["ok", "failed"].iter().enumerate() {
            let _ = writeln!(
                out,
                "causeway_metric_pushes_total{{result=\"{result}\"}} {}",
                self.metric_pushes[i].load(Ordering::Relaxed)
            );
        }
        counter_family(
            &mut out,
            "causeway_connections_refused_total",
            "Connections closed unserved because the listeners held --max-connections already, by direction.",
            "direction",
            &["inbound", "outbound"],
            &self.connections_refused,
        );
        counter_family(
            &mut out,
            "causeway_transparent_connections_total",
            "Redirected connections (transparent proxying) by result: to a mesh service by its virtual IP, passed through to a destination outside the mesh, or refused.",
            "result",
            &TRANSPARENT_RESULTS,
            &self.transparent,
        );
        counter_family(
            &mut out,
            "causeway_dns_queries_total",
            "DNS queries the sidecar took (transparent proxying), by result: a mesh name it answered, answered by an upstream resolver, SERVFAIL, or dropped (not DNS).",
            "result",
            &DNS_RESULTS,
            &self.dns,
        );
        let http = self.http.lock().expect("metrics lock").clone();
        let tcp = self.tcp.lock().expect("metrics lock").clone();
        let (mesh, zone) = (escape(place.mesh), escape(place.zone));
        let labels = |d: &str, s: &str, p: &str, pz: &str| {
            format!(
                "mesh=\"{mesh}\",zone=\"{zone}\",direction=\"{d}\",service=\"{s}\",peer=\"{p}\",peer_zone=\"{}\"",
                escape(pz)
            )
        };
        out.push_str("# HELP causeway_requests_total HTTP requests the sidecar proxied, by direction, service, peer and status class.\n");
        out.push_str("# TYPE causeway_requests_total counter\n");
        for ((d, s, p, pz), h) in &http {
            for (i, c) in CLASSES.iter().enumerate() {
                let n = h.by_class[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "causeway_requests_total{{{},status_class=\"{c}\"}} {n}",
                        labels(d, s, p, pz)
                    );
                }
            }
        }
        out.push_str("# HELP causeway_responses_total HTTP answers by direction, service, peer and exact status code.\n");
        out.push_str("# TYPE causeway_responses_total counter\n");
        for ((d, s, p, pz), h) in &http {
            for (i, c) in h.by_code.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "causeway_responses_total{{{},code=\"{}\"}} {n}",
                        labels(d, s, p, pz),
                        i + 100
                    );
                }
            }
        }
        out.push_str("# HELP causeway_grpc_responses_total gRPC calls by direction, service, peer and grpc-status (a failed call is not a success because its HTTP status is 200).\n");
        out.push_str("# TYPE causeway_grpc_responses_total counter\n");
        for ((d, s, p, pz), h) in &http {
            for (code, c) in h.by_grpc_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "causeway_grpc_responses_total{{{},grpc_status=\"{code}\"}} {n}",
                        labels(d, s, p, pz)
                    );
                }
            }
        }
        out.push_str("# HELP causeway_request_duration_seconds HTTP request latency through the sidecar, by direction and service.\n");
        out.push_str("# TYPE causeway_request_duration_seconds histogram\n");
        for ((d, s, p, pz), h) in &http {
            let l = labels(d, s, p, pz);
            let mut cumulative = 0;
            for (i, b) in LATENCY_BOUNDS_SECONDS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "causeway_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "causeway_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "causeway_request_duration_seconds_sum{{{l}}} {sum}");
            let _ = writeln!(
                out,
                "causeway_request_duration_seconds_count{{{l}}} {count}"
            );
        }
        out.push_str(
            "# HELP causeway_requests_in_flight HTTP requests waiting for their answer's head.\n",
        );
        out.push_str("# TYPE causeway_requests_in_flight gauge\n");
        for ((d, s, p, pz), h) in &http {
            let _ = writeln!(
                out,
                "causeway_requests_in_flight{{{}}} {}",
                labels(d, s, p, pz),
                h.in_flight.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP causeway_proxy_errors_total Requests the sidecar answered itself, by cause (the x-causeway-error label).\n");
        out.push_str("# TYPE causeway_proxy_errors_total counter\n");
        for ((d, s, p, pz), h) in &http {
            for (i, label) in LABELS.iter().enumerate() {
                let n = h.errors[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "causeway_proxy_errors_total{{{},error=\"{label}\"}} {n}",
                        labels(d, s, p, pz)
                    );
                }
            }
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str(
            "# HELP causeway_tcp_connections_total TCP connections the sidecar proxied.\n",
        );
        out.push_str("# TYPE causeway_tcp_connections_total counter\n");
        for ((d, s, p, pz), t) in &tcp {
            let _ = writeln!(
                out,
                "causeway_tcp_connections_total{{{}}} {}",
                labels(d, s, p, pz),
                get(&t.connections)
            );
        }
        out.push_str("# HELP causeway_tcp_denied_total TCP connections the sidecar refused (MeshTrafficPermission).\n");
        out.push_str("# TYPE causeway_tcp_denied_total counter\n");
        for ((d, s, p, pz), t) in &tcp {
            let _ = writeln!(
                out,
                "causeway_tcp_denied_total{{{}}} {}",
                labels(d, s, p, pz),
                get(&t.denied)
            );
        }
        out.push_str("# HELP causeway_tcp_bytes_total TCP bytes, received from and sent to the side that opened the connection, counted as they move.\n");
        out.push_str("# TYPE causeway_tcp_bytes_total counter\n");
        for ((d, s, p, pz), t) in &tcp {
            let l = labels(d, s, p, pz);
            let _ = writeln!(
                out,
                "causeway_tcp_bytes_total{{{l},flow=\"received\"}} {}",
                get(&t.bytes.read)
            );
            let _ = writeln!(
                out,
                "causeway_tcp_bytes_total{{{l},flow=\"sent\"}} {}",
                get(&t.bytes.written)
            );
        }
        out.push_str("# HELP causeway_circuit_breaker_events_total MeshCircuitBreaker events (overflows, ejections), by service.\n");
        out.push_str("# TYPE causeway_circuit_breaker_events_total counter\n");
        for ((s, event), n) in self.circuit_breaker.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "causeway_circuit_breaker_events_total{{service=\"{s}\",event=\"{event}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_shadow_denied_total Calls let in under AllowWithShadowDeny that a Deny would have refused.\n");
        out.push_str("# TYPE causeway_shadow_denied_total counter\n");
        for ((s, p), n) in self.shadow_denied.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "causeway_shadow_denied_total{{direction=\"inbound\",service=\"{s}\",peer=\"{p}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP causeway_retries_total MeshRetry decisions, by destination and result.\n",
        );
        out.push_str("# TYPE causeway_retries_total counter\n");
        for ((s, result), n) in self.retries.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "causeway_retries_total{{service=\"{s}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_route_requests_total Requests that took a MeshHTTPRoute, by route and backend.\n");
        out.push_str("# TYPE causeway_route_requests_total counter\n");
        for ((s, route, backend), n) in self.routed.lock().expect("metrics lock").iter() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "causeway_route_requests_total{{service=\"{s}\",route=\"{route}\",backend=\"{backend}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_mirrored_requests_total Mirrored copies of requests, by mirror and result.\n");
        out.push_str("# TYPE causeway_mirrored_requests_total counter\n");
        for ((s, mirror, result), n) in self.mirrored.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "causeway_mirrored_requests_total{{service=\"{s}\",mirror=\"{mirror}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP causeway_health_checks_total Active health checks, by destination and result.\n");
        out.push_str("# TYPE causeway_health_checks_total counter\n");
        for (s, (passed, failed)) in self.health_checks.lock().expect("metrics lock").iter() {
            for (result, n) in [("passed", passed), ("failed", failed)] {
                let _ = writeln!(
                    out,
                    "causeway_health_checks_total{{service=\"{s}\",result=\"{result}\"}} {n}"
                );
            }
        }
        out
    }
}

/// A counter family with one label whose values are fixed: its HELP and TYPE, then one
/// line per value, `counters[i]` for `values[i]`.
fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[AtomicU64],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (v, c) in values.iter().zip(counters) {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{v}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
}

/// A label value as the exposition format writes it.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// Counts a gRPC answer's `grpc-status` in `stats`: from its head for a trailers-only
/// answer, else from its trailers as they pass.
pub(crate) fn count_grpc(
    stats: &Arc<HttpStats>,
    headers: &http::HeaderMap,
    body: crate::http::Body,
) -> crate::http::Body {
    if let Some(code) = grpc_status(headers) {
        stats.grpc(code);
        return body;
    }
    http_body_util::BodyExt::boxed(GrpcTrailers {
        inner: body,
        stats: stats.clone(),
    })
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A gRPC answer's body, counting the status its trailers carry.
struct GrpcTrailers {
    inner: crate::http::Body,
    stats: Arc<HttpStats>,
}

impl hyper::body::Body for GrpcTrailers {
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(grpc_status)
        {
            self.stats.grpc(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        let h = m.http("inbound", "web", "frontend", "zone-a");
        let in_flight = h.start();
        h.record(200, Duration::from_millis(3));
        h.record(403, Duration::from_micros(100));
        h.error(&ProxyError::Denied("no".into()));
        let bytes = m.tcp("outbound", "db", "web", "");
        bytes.read.fetch_add(10, Ordering::Relaxed);
        bytes.written.fetch_add(20, Ordering::Relaxed);
        m.health_check("backend", false);
        m.circuit_breaker("backend", "ejected");
        m.retry("backend", "budget_exhausted");
        m.routed("backend", "canary", "backend");
        m.mirrored("backend", "shadow", "dropped");
        let t = m.render(Place {
            mesh: "default",
            zone: "zone-b",
        });
        assert!(t.contains("causeway_requests_in_flight{mesh=\"default\",zone=\"zone-b\",direction=\"inbound\",service=\"web\",peer=\"frontend\",peer_zone=\"zone-a\"} 1"), "{t}");
        drop(in_flight);
        let t = m.render(Place {
            mesh: "default",
            zone: "zone-b",
        });
        assert!(t.contains("causeway_requests_in_flight{mesh=\"default\",zone=\"zone-b\",direction=\"inbound\",service=\"web\",peer=\"frontend\",peer_zone=\"zone-a\"} 0"), "{t}");
        assert!(t.contains("causeway_route_requests_total{service=\"backend\",route=\"canary\",backend=\"backend\"} 1"), "{t}");
        assert!(t.contains("causeway_mirrored_requests_total{service=\"backend\",mirror=\"shadow\",result=\"dropped\"} 1"), "{t}");
        assert!(t.contains("causeway_requests_total{mesh=\"default\",zone=\"zone-b\",direction=\"inbound\",service=\"web\",peer=\"frontend\",peer_zone=\"zone-a\",status_class=\"2xx\"} 1"), "{t}");
        assert!(t.contains("status_class=\"4xx\"} 1"), "{t}");
        assert!(t.contains("le=\"0.005\"} 2"), "{t}");
        assert!(t.contains("le=\"0.002\"} 1"), "{t}");
        assert!(
            t.contains("peer_zone=\"zone-a\",error=\"denied\"} 1"),
            "{t}"
        );
        assert!(t.contains("le=\"0.001\"} 1"), "{t}");
        assert!(t.contains("causeway_tcp_bytes_total{mesh=\"default\",zone=\"zone-b\",direction=\"outbound\",service=\"db\",peer=\"web\",peer_zone=\"\",flow=\"sent\"} 20"), "{t}");
        assert!(
            t.contains("causeway_health_checks_total{service=\"backend\",result=\"failed\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("causeway_retries_total{service=\"backend\",result=\"budget_exhausted\"} 1"),
            "{t}"
        );
    }

    #[test]
    fn signal_deltas_count_since_the_last_report_with_failures() {
        let m = Metrics::default();
        let inbound = m.http("inbound", "backend", "web", "zone-a");
        let outbound = m.http("outbound", "db", "backend", "");
        let mut last = HashMap::new();
        inbound.record(200, Duration::from_millis(3));
        inbound.record(503, Duration::from_millis(40));
        inbound.record(200, Duration::from_millis(3));
        inbound.grpc(14);
        outbound.record(200, Duration::from_millis(1));
        let mut d = m.signal_deltas(&mut last);
        d.sort_by_key(|s| s.outbound);
        assert_eq!(d.len(), 2);
        let (i, o) = (&d[0], &d[1]);
        assert_eq!(
            (
                i.outbound,
                i.service.as_str(),
                i.peer.as_str(),
                i.peer_zone.as_str()
            ),
            (false, "backend", "web", "zone-a")
        );
        let c = i.counts.as_ref().unwrap();
        // A 503 and a gRPC UNAVAILABLE (answered 200) are failures.
        assert_eq!((c.requests, c.failures), (3, 2));
        assert_eq!(c.latency[causeway_api::stats::bucket(0.003)], 2);
        assert_eq!(c.latency.len(), BUCKETS);
        // Outbound: this proxy's service called the destination.
        assert_eq!(
            (o.outbound, o.service.as_str(), o.peer.as_str()),
            (true, "backend", "db")
        );
        // Nothing new: nothing to send; then only what is new.
        assert!(m.signal_deltas(&mut last).is_empty());
        inbound.record(200, Duration::from_millis(3));
        let d = m.signal_deltas(&mut last);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].counts.as_ref().unwrap().requests, 1);
        assert_eq!(d[0].counts.as_ref().unwrap().failures, 0);
    }
}
