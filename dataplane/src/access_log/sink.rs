//! Access-log sinks: a bounded queue each, and a worker that prints and writes what
//! it takes from it. A file is written by a thread of its own (file writes block); a
//! TCP collector and an OpenTelemetry collector by a task, which reconnects with a
//! backoff and drops (and counts) what arrives while its collector is away.

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

use super::entry::{Entry, Value, render_json, render_plain};
use crate::metrics::Metrics;

/// Entries a sink holds while its worker is behind; more are dropped.
pub(crate) const QUEUE: usize = 8192;

/// Log records in one OTLP export, and the longest a record waits for its batch.
const OTLP_BATCH: usize = 512;
const OTLP_LINGER: Duration = Duration::from_secs(1);

/// How long a TCP or OTLP collector may take to connect or take a batch.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The backends, as the metrics label them.
pub(crate) const BACKENDS: [&str; 3] = ["file", "tcp", "open_telemetry"];

enum Queue {
    Thread(std::sync::mpsc::SyncSender<Arc<Entry>>),
    Task(tokio::sync::mpsc::Sender<Arc<Entry>>),
}

/// One backend of one or more listeners.
pub(crate) struct Sink {
    queue: Queue,
    backend: usize,
    metrics: Arc<Metrics>,
}

impl Sink {
    /// Starts the worker of `sink`. Needs a Tokio runtime (for TCP and OTLP).
    pub(crate) fn start(sink: &AccessLogSink, metrics: &Arc<Metrics>) -> Sink {
        let m = metrics.clone();
        let (queue, backend) = match sink {
            AccessLogSink::File { path, format } => {
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
                let (path, line) = (path.clone(), Line::of(format.as_ref()));
                let spawned = std::thread::Builder::new()
                    .name("access-log-file".into())
                    .spawn(move || write_file(&path, &line, &rx, &m));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "could not start an access-log file writer");
                }
                (Queue::Thread(tx), 0)
            }
            AccessLogSink::Tcp { address, format } => {
                let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
                let line = Line::of(format.as_ref());
                tokio::spawn(write_tcp(address.clone(), line, rx, m));
                (Queue::Task(tx), 1)
            }
            AccessLogSink::OpenTelemetry {
                endpoint,
                attributes,
            } => {
                let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
                let attributes = attributes
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), parse(v)?)))
                    .collect();
                tokio::spawn(export_otlp(endpoint.clone(), attributes, rx, m));
                (Queue::Task(tx), 2)
            }
        };
        Sink {
            queue,
            backend,
            metrics: metrics.clone(),
        }
    }

    /// Offers an entry to the queue; never waits. Full (or its worker gone): dropped
    /// and counted.
    pub(crate) fn offer(&self, entry: &Arc<Entry>) {
        let queued = match &self.queue {
            Queue::Thread(tx) => tx.try_send(entry.clone()).is_ok(),
            Queue::Task(tx) => tx.try_send(entry.clone()).is_ok(),
        };
        if !queued {
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

/// The file worker: appends lines, flushing whenever its queue is empty.
fn write_file(
    path: &str,
    line: &Line,
    rx: &std::sync::mpsc::Receiver<Arc<Entry>>,
    metrics: &Metrics,
) {
    let (written, dropped) = (&metrics.access_log[0].0, &metrics.access_log[0].1);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    let mut file = match file {
        Ok(f) => std::io::BufWriter::with_capacity(64 * 1024, f),
        Err(e) => {
            tracing::warn!(%path, error = %e, "cannot open the access-log file; its entries are dropped");
            for _ in rx.iter() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let mut buf = String::new();
    let mut failing = false;
    loop {
        let entry = match rx.try_recv() {
            Ok(e) => e,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                let _ = file.flush();
                match rx.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        buf.clear();
        line.render(&entry, &mut buf);
        match file.write_all(buf.as_bytes()) {
            Ok(()) => {
                failing = false;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%path, error = %e, "access-log write failed");
                }
                failing = true;
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = file.flush();
}

/// Reconnect backoff to a collector: doubles from 100 ms up to 5 s.
fn backoff(last: Duration) -> Duration {
    (last * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// The TCP worker: a line per entry over one connection, flushed whenever its queue
/// is empty. While the collector is unreachable, entries are dropped until the next
/// attempt.
async fn write_tcp(
    address: String,
    line: Line,
    mut rx: tokio::sync::mpsc::Receiver<Arc<Entry>>,
    metrics: Arc<Metrics>,
) {
    let (written, dropped) = (&metrics.access_log[1].0, &metrics.access_log[1].1);
    let mut conn: Option<tokio::io::BufWriter<tokio::net::TcpStream>> = None;
    let mut wait = Duration::ZERO;
    let mut next_try = Instant::now();
    let mut buf = String::new();
    while let Some(entry) = rx.recv().await {
        if conn.is_none() {
            if Instant::now() < next_try {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match tokio::time::timeout(COLLECTOR_TIMEOUT, tokio::net::TcpStream::connect(&address))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(tokio::io::BufWriter::with_capacity(64 * 1024, s));
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
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        buf.clear();
        line.render(&entry, &mut buf);
        let mut sent = c.write_all(buf.as_bytes()).await;
        if sent.is_ok() && rx.is_empty() {
            sent = c.flush().await;
        }
        match sent {
            Ok(()) => {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "access-log collector connection lost");
                dropped.fetch_add(1, Ordering::Relaxed);
                conn = None;
                wait = backoff(wait);
                next_try = Instant::now() + wait;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.flush().await;
    }
}

/// The OTLP worker: batches of up to [`OTLP_BATCH`] records, each sent within
/// [`OTLP_LINGER`] of its first record, over OTLP/gRPC.
async fn export_otlp(
    endpoint: String,
    attributes: Vec<(String, Template)>,
    mut rx: tokio::sync::mpsc::Receiver<Arc<Entry>>,
    metrics: Arc<Metrics>,
) {
    let (written, dropped) = (&metrics.access_log[2].0, &metrics.access_log[2].1);
    let uri = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let channel = match tonic::transport::Endpoint::from_shared(uri) {
        Ok(e) => e
            .connect_timeout(COLLECTOR_TIMEOUT)
            .timeout(COLLECTOR_TIMEOUT)
            .connect_lazy(),
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, "bad OpenTelemetry endpoint; its entries are dropped");
            while rx.recv().await.is_some() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let mut client = LogsServiceClient::new(channel);
    let body = Line::of(None);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + OTLP_LINGER;
        let mut batch = vec![first];
        while batch.len() < OTLP_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let n = batch.len() as u64;
        let request = otlp_request(&batch, &body, &attributes);
        match client.export(request).await {
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
