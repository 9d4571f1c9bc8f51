//! Access-log sinks: a bounded buffer each, and a worker that takes the whole buffer
//! every [`FLUSH`] and writes it at once. A request's line (for a file or a TCP
//! collector: rendered on the request path) or entry (for OpenTelemetry) is pushed
//! under a short lock and wakes nobody: measured, waking a writer per entry (a channel)
//! and writing per entry cost the sidecar pair a third of its throughput, and so did
//! freeing whole entries on the worker thread (see `flush_buffer`). A file is written
//! by a thread of its own (file writes block); a TCP collector and an OpenTelemetry
//! collector by a task, which reconnects with a backoff and drops (and counts) what
//! arrives while its collector is away.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use causeway_api::access_log_format::{DEFAULT_HTTP_FORMAT, DEFAULT_TCP_FORMAT, Template};
use causeway_api::proxy_config::{AccessLogFormat, AccessLogSink};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::io::AsyncWriteExt as _;

use super::entry::{Entry, Value, Wanted, render_json, render_plain};
use crate::flush_buffer::{FlushBuffer, LineBuffer};
use crate::metrics::Metrics;

use crate::flush_buffer::FLUSH;

/// Log records in one OTLP export at most.
const OTLP_BATCH: usize = 512;

/// How long a TCP or OTLP collector may take to connect or take a batch.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The backends, as the metrics label them.
pub(crate) const BACKENDS: [&str; 3] = ["file", "tcp", "open_telemetry"];

/// The buffer between requests and a sink's worker.
type Buffer = FlushBuffer<Arc<Entry>>;

/// What a sink's worker takes.
enum Queue {
    /// Lines rendered on the request path (a file, a TCP collector).
    Lines { buffer: Arc<LineBuffer>, line: Line },
    /// Entries (OpenTelemetry, whose records carry typed attributes).
    Entries(Arc<Buffer>),
}

std::thread_local! {
    /// Where a request's line is rendered before it is copied into its sink's buffer:
    /// no allocation per line.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// One backend of one or more listeners.
pub(crate) struct Sink {
    queue: Queue,
    /// The headers its lines print.
    wanted: Wanted,
    backend: usize,
    metrics: Arc<Metrics>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        match &self.queue {
            Queue::Lines { buffer, .. } => buffer.close(),
            Queue::Entries(buffer) => buffer.close(),
        }
    }
}

impl Sink {
    /// Starts the worker of `sink`. Needs a Tokio runtime (for TCP and OTLP).
    pub(crate) fn start(sink: &AccessLogSink, metrics: &Arc<Metrics>) -> Sink {
        let m = metrics.clone();
        let (queue, wanted, backend) = match sink {
            AccessLogSink::File { path, format } => {
                let (line, buffer) = (Line::of(format.as_ref()), Arc::new(LineBuffer::new()));
                let (path, b) = (path.clone(), buffer.clone());
                let spawned = std::thread::Builder::new()
                    .name("access-log-file".into())
                    .spawn(move || write_file(&path, &b, &m));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "could not start an access-log file writer");
                }
                let wanted = line.wanted();
                (Queue::Lines { buffer, line }, wanted, 0)
            }
            AccessLogSink::Tcp { address, format } => {
                let (line, buffer) = (Line::of(format.as_ref()), Arc::new(LineBuffer::new()));
                tokio::spawn(write_tcp(address.clone(), buffer.clone(), m));
                let wanted = line.wanted();
                (Queue::Lines { buffer, line }, wanted, 1)
            }
            AccessLogSink::OpenTelemetry {
                endpoint,
                attributes,
            } => {
                let attributes: Vec<(String, Template)> = attributes
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), parse(v)?)))
                    .collect();
                let mut wanted = Line::of(None).wanted();
                wanted.add(&Wanted::of(attributes.iter().map(|(_, t)| t)));
                let buffer = Arc::new(Buffer::new());
                tokio::spawn(export_otlp(endpoint.clone(), attributes, buffer.clone(), m));
                (Queue::Entries(buffer), wanted, 2)
            }
        };
        Sink {
            queue,
            wanted,
            backend,
            metrics: metrics.clone(),
        }
    }

    /// The headers this sink's lines print.
    pub(crate) fn wanted(&self) -> &Wanted {
        &self.wanted
    }

    /// Whether this sink takes whole entries (OpenTelemetry) rather than lines.
    pub(crate) fn keeps_entries(&self) -> bool {
        matches!(self.queue, Queue::Entries(_))
    }

    /// Offers `entry` to the buffer; never waits. Full: dropped and counted. A file or
    /// TCP sink renders its line from it; a sink that keeps entries
    /// ([`Sink::keeps_entries`]) takes `shared`, the same entry behind an `Arc`, which
    /// the logger makes only when one of its sinks keeps entries.
    pub(crate) fn offer(&self, entry: &Entry, shared: Option<&Arc<Entry>>) {
        let taken = match &self.queue {
            Queue::Lines { buffer, line } => SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                line.render(entry, &mut scratch);
                buffer.push(&scratch)
            }),
            Queue::Entries(buffer) => shared.is_some_and(|e| buffer.push(e.clone())),
        };
        if !taken {
            self.metrics.access_log[self.backend]
                .1
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn parse(text: &str) -> Option<Template> {
    // Validated when the policy was written; an operator a newer control plane knows
    // and this sidecar does not is left out, said once here.
    match Template::parse(text) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(template = %text, error = %e, "access-log template refused; using the built-in line");
            None
        }
    }
}

/// How a sink prints an entry.
pub(crate) enum Line {
    /// A text line: the template for HTTP requests and the one for TCP connections
    /// (the same unless the built-in lines are used).
    Plain {
        http: Template,
        tcp: Template,
        omit_empty: bool,
    },
    Json {
        fields: Vec<(String, Template)>,
        omit_empty: bool,
    },
}

impl Line {
    pub(crate) fn of(format: Option<&AccessLogFormat>) -> Line {
        let default = || Line::Plain {
            http: Template::parse(DEFAULT_HTTP_FORMAT).expect("the built-in HTTP line"),
            tcp: Template::parse(DEFAULT_TCP_FORMAT).expect("the built-in TCP line"),
            omit_empty: false,
        };
        match format {
            None => default(),
            Some(AccessLogFormat::Plain { line, omit_empty }) => match parse(line) {
                Some(t) => Line::Plain {
                    http: t.clone(),
                    tcp: t,
                    omit_empty: *omit_empty,
                },
                None => default(),
            },
            Some(AccessLogFormat::Json { fields, omit_empty }) => {
                let parsed: Option<Vec<_>> = fields
                    .iter()
                    .map(|(k, v)| Some((k.clone(), parse(v)?)))
                    .collect();
                match parsed {
                    Some(fields) => Line::Json {
                        fields,
                        omit_empty: *omit_empty,
                    },
                    None => default(),
                }
            }
        }
    }

    /// The headers this line prints.
    fn wanted(&self) -> Wanted {
        match self {
            Line::Plain { http, tcp, .. } => Wanted::of([http, tcp]),
            Line::Json { fields, .. } => Wanted::of(fields.iter().map(|(_, t)| t)),
        }
    }

    /// Prints `entry` into `out`, newline-terminated.
    pub(crate) fn render(&self, entry: &Entry, out: &mut String) {
        match self {
            Line::Plain {
                http,
                tcp,
                omit_empty,
            } => {
                let t = if entry.http.is_some() { http } else { tcp };
                render_plain(t, *omit_empty, entry, out);
            }
            Line::Json { fields, omit_empty } => render_json(fields, *omit_empty, entry, out),
        }
        out.push('\n');
    }
}

/// The file worker: every [`FLUSH`], appends the buffer's lines in one write.
fn write_file(path: &str, buffer: &LineBuffer, metrics: &Metrics) {
    let (written, dropped) = (&metrics.access_log[0].0, &metrics.access_log[0].1);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    let mut file = match file {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(%path, error = %e, "cannot open the access-log file; its entries are dropped");
            None
        }
    };
    let mut text = String::new();
    let mut failing = false;
    loop {
        std::thread::sleep(FLUSH);
        let Some(n) = buffer.take(&mut text) else {
            return;
        };
        let written_now = match file.as_mut() {
            None => false,
            Some(f) => match f.write_all(text.as_bytes()) {
                Ok(()) => {
                    failing = false;
                    true
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(%path, error = %e, "access-log write failed");
                    }
                    failing = true;
                    false
                }
            },
        };
        if written_now {
            written.fetch_add(n, Ordering::Relaxed);
        } else {
            dropped.fetch_add(n, Ordering::Relaxed);
        }
        text.clear();
    }
}

/// Reconnect backoff to a collector: doubles from 100 ms up to 5 s.
fn backoff(last: Duration) -> Duration {
    (last * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// The TCP worker: every [`FLUSH`], the buffer's lines in one write over one
/// connection. While the collector is unreachable, entries are dropped until the next
/// attempt.
async fn write_tcp(address: String, buffer: Arc<LineBuffer>, metrics: Arc<Metrics>) {
    let (written, dropped) = (&metrics.access_log[1].0, &metrics.access_log[1].1);
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut wait = Duration::ZERO;
    let mut next_try = Instant::now();
    let mut text = String::new();
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        text.clear();
        let Some(n) = buffer.take(&mut text) else {
            return;
        };
        if n == 0 {
            continue;
        }
        if conn.is_none() && Instant::now() >= next_try {
            match tokio::time::timeout(COLLECTOR_TIMEOUT, tokio::net::TcpStream::connect(&address))
                .await
            {
                Ok(Ok(s)) => {
                    conn = Some(s);
                    wait = Duration::ZERO;
                }
                Ok(Err(e)) => {
                    wait = backoff(wait);
                    tracing::warn!(%address, error = %e, retry_in = ?wait, "access-log collector unreachable");
                }
                Err(_) => {
                    wait = backoff(wait);
                    tracing::warn!(%address, retry_in = ?wait, "access-log collector did not answer");
                }
            }
            next_try = Instant::now() + wait;
        }
        let Some(c) = conn.as_mut() else {
            dropped.fetch_add(n, Ordering::Relaxed);
            continue;
        };
        match c.write_all(text.as_bytes()).await {
            Ok(()) => {
                written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "access-log collector connection lost");
                dropped.fetch_add(n, Ordering::Relaxed);
                conn = None;
                wait = backoff(wait);
                next_try = Instant::now() + wait;
            }
        }
    }
}

/// The OTLP worker: every [`FLUSH`], the buffer's records in exports of up to
/// [`OTLP_BATCH`], over OTLP/gRPC.
async fn export_otlp(
    endpoint: String,
    attributes: Vec<(String, Template)>,
    buffer: Arc<Buffer>,
    metrics: Arc<Metrics>,
) {
    let (written, dropped) = (&metrics.access_log[2].0, &metrics.access_log[2].1);
    let channel = crate::otlp::channel(&endpoint, COLLECTOR_TIMEOUT, "entries");
    let mut client = channel.map(LogsServiceClient::new);
    let body = Line::of(None);
    let mut failing = false;
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !buffer.take(&mut batch) {
            return;
        }
        for chunk in batch.chunks(OTLP_BATCH) {
            let n = chunk.len() as u64;
            let Some(client) = client.as_mut() else {
                dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            };
            match client.export(otlp_request(chunk, &body, &attributes)).await {
                Ok(_) => {
                    failing = false;
                    written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(%endpoint, error = %e, "OpenTelemetry collector refused or unreachable; dropping log records");
                    }
                    failing = true;
                    dropped.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
    }
}

fn string_value(s: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

fn key_value(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value,
        ..KeyValue::default()
    }
}

/// One export: the batch's records under this proxy's resource.
pub(crate) fn otlp_request(
    batch: &[Arc<Entry>],
    body: &Line,
    attributes: &[(String, Template)],
) -> ExportLogsServiceRequest {
    let now = unix_nanos(SystemTime::now());
    let mut line = String::new();
    let records = batch
        .iter()
        .map(|entry| {
            line.clear();
            body.render(entry, &mut line);
            line.pop();
            let attributes = attributes
                .iter()
                .filter_map(|(key, template)| {
                    let value = match template.single() {
                        Some(op) => match entry.value(op) {
                            Value::Empty => return None,
                            Value::Text(s) => string_value(s.into_owned()),
                            Value::Number(n) => Some(AnyValue {
                                value: Some(any_value::Value::IntValue(n as i64)),
                            }),
                        },
                        None => {
                            let mut s = String::new();
                            render_plain(template, false, entry, &mut s);
                            string_value(s)
                        }
                    };
                    Some(key_value(key, value))
                })
                .collect();
            let trace_id = entry
                .value(&causeway_api::access_log_format::Operator::TraceId)
                .text()
                .and_then(|t| hex_bytes(&t))
                .unwrap_or_default();
            LogRecord {
                time_unix_nano: unix_nanos(entry.start),
                observed_time_unix_nano: now,
                severity_number: 9, // INFO
                severity_text: "INFO".into(),
                body: string_value(line.clone()),
                attributes,
                trace_id,
                ..LogRecord::default()
            }
        })
        .collect();
    let context = batch.first().map(|e| e.context.clone()).unwrap_or_default();
    let resource = Resource {
        attributes: vec![
            key_value("service.name", string_value(context.own_service.clone())),
            key_value("causeway.mesh", string_value(context.mesh.clone())),
            key_value("causeway.zone", string_value(context.zone.clone())),
            key_value(
                "causeway.dataplane",
                string_value(context.dataplane.clone()),
            ),
        ],
        ..Resource::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "causeway-dataplane".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
