//! Span export: a bounded buffer per backend and a worker that takes the whole buffer
//! every [`FLUSH`] and sends it in batches, as the access-log sinks do (a request
//! pushes its span under a short lock and wakes nobody). Spans that find the buffer
//! full, or whose backend is away or refuses them, are dropped and counted
//! (`causeway_trace_spans_dropped_total`); the others are counted as exported.
//!
//! Backends: OTLP/gRPC (tonic, the official protos), OTLP/HTTP (the same protos as
//! `application/x-protobuf`, POSTed with hyper) when the OpenTelemetry endpoint is an
//! `http://` URL with a path, and Zipkin v2 JSON POSTed to its URL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::TraceBackendConfig;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;

use super::span::{Origin, Span, otlp_request, zipkin_json};
use crate::flush_buffer::{FLUSH, FlushBuffer};
use crate::metrics::Metrics;

/// Spans in one export at most.
const BATCH: usize = 512;

/// How long a backend may take to connect or take a batch.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The buffer between requests and an exporter's worker.
type Buffer = FlushBuffer<Span>;

/// How a worker sends a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    OtlpGrpc(String),
    OtlpHttp(String),
    Zipkin(String),
}

impl Wire {
    /// OTLP over HTTP when the endpoint is an http(s) URL with a path (the
    /// collector's `/v1/traces`), else over gRPC.
    fn of(backend: &TraceBackendConfig) -> Wire {
        match backend {
            TraceBackendConfig::Zipkin { url, .. } => Wire::Zipkin(url.clone()),
            TraceBackendConfig::OpenTelemetry { endpoint } => {
                let path = endpoint
                    .split_once("://")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map(|(_, path)| path);
                match path {
                    Some(p) if !p.is_empty() => Wire::OtlpHttp(endpoint.clone()),
                    _ => Wire::OtlpGrpc(crate::otlp::grpc_uri(endpoint)),
                }
            }
        }
    }

    /// The metrics label's index in [`super::BACKENDS`].
    fn backend(&self) -> usize {
        match self {
            Wire::OtlpGrpc(_) | Wire::OtlpHttp(_) => 0,
            Wire::Zipkin(_) => 1,
        }
    }
}

/// One backend of the proxy, with its worker.
pub(crate) struct Exporter {
    buffer: Arc<Buffer>,
    backend: usize,
    metrics: Arc<Metrics>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.buffer.close();
    }
}

impl Exporter {
    /// Starts the worker of `backend` for the spans of `origin`. Needs a Tokio runtime.
    pub(crate) fn start(
        backend: &TraceBackendConfig,
        origin: Origin,
        metrics: &Arc<Metrics>,
    ) -> Exporter {
        let buffer = Arc::new(Buffer::new());
        let wire = Wire::of(backend);
        let index = wire.backend();
        tokio::spawn(export(wire, origin, buffer.clone(), metrics.clone()));
        Exporter {
            buffer,
            backend: index,
            metrics: metrics.clone(),
        }
    }

    /// Offers a finished span; never waits. Full: dropped and counted.
    pub(crate) fn offer(&self, span: Span) {
        if !self.buffer.push(span) {
            self.metrics.trace_spans[self.backend]
                .1
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a batch's send failed with.
type SendError = Box<dyn std::error::Error + Send + Sync>;

/// The worker: every [`FLUSH`], the buffer in batches of up to [`BATCH`].
async fn export(wire: Wire, origin: Origin, buffer: Arc<Buffer>, metrics: Arc<Metrics>) {
    let (exported, dropped) = (
        &metrics.trace_spans[wire.backend()].0,
        &metrics.trace_spans[wire.backend()].1,
    );
    let mut grpc = match &wire {
        Wire::OtlpGrpc(uri) => {
            crate::otlp::channel(uri, BACKEND_TIMEOUT, "spans").map(TraceServiceClient::new)
        }
        _ => None,
    };
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut failing = false;
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !buffer.take(&mut batch) {
            return;
        }
        for chunk in batch.chunks(BATCH) {
            let n = chunk.len() as u64;
            let sent: Result<(), SendError> = match &wire {
                Wire::OtlpGrpc(_) => match grpc.as_mut() {
                    Some(client) => client
                        .export(otlp_request(&origin, chunk))
                        .await
                        .map(|_| ())
                        .map_err(Into::into),
                    None => Err("no client".into()),
                },
                Wire::OtlpHttp(url) => {
                    let body = otlp_request(&origin, chunk).encode_to_vec();
                    post(&http, url, "application/x-protobuf", body).await
                }
                Wire::Zipkin(url) => {
                    let mut body = Vec::with_capacity(chunk.len() * 1024);
                    zipkin_json(&origin, chunk, &mut body);
                    post(&http, url, "application/json", body).await
                }
            };
            match sent {
                Ok(()) => {
                    failing = false;
                    exported.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(backend = ?wire, error = %e, "tracing backend refused or unreachable; dropping spans");
                    }
                    failing = true;
                    dropped.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
    }
}

/// POSTs `body` to `url` (plain HTTP), within [`BACKEND_TIMEOUT`]; a non-2xx answer
/// is an error.
async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<(), SendError> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))?;
    let answer = tokio::time::timeout(BACKEND_TIMEOUT, async {
        let resp = client.request(req).await?;
        let status = resp.status();
        // Read the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        Ok::<_, SendError>(status)
    })
    .await
    .map_err(|_| "timed out")??;
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("answered {answer}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opentelemetry_endpoint_with_a_path_is_otlp_over_http() {
        let otel = |e: &str| Wire::of(&TraceBackendConfig::OpenTelemetry { endpoint: e.into() });
        assert_eq!(
            otel("collector:4317"),
            Wire::OtlpGrpc("http://collector:4317".into())
        );
        assert_eq!(
            otel("http://collector:4317"),
            Wire::OtlpGrpc("http://collector:4317".into())
        );
        assert_eq!(
            otel("http://collector:4318/v1/traces"),
            Wire::OtlpHttp("http://collector:4318/v1/traces".into())
        );
    }
}
