//! MeshTrace: a span per HTTP request at each sidecar hop (CLIENT on the outbound,
//! SERVER on the inbound), the trace context read from the request ([`context`]),
//! this hop's span written on the request that goes on, and finished spans sent to
//! the policy's backend ([`export`]).
//!
//! Tracing never blocks traffic: the request's task builds its span and pushes it to
//! a bounded buffer; a worker sends it. A proxy without a MeshTrace costs one atomic
//! load per request. An unsampled request costs its context (ids, headers) and no
//! span, so the next hops follow the decision.
//!
//! Measured (`causeway-bench sidecar --trace`, every request sampled, Zipkin JSON, 2
//! cores): the sidecar pair's CPU per request goes 36 -> 45 us (a span at each
//! sidecar, exported). A first version that built each Zipkin span as a
//! `serde_json::Value` tree and copied the proxy's names into every span cost 62 us;
//! spans now share those names (`Value::Shared`) and JSON is written straight into
//! the batch's buffer.

mod context;
mod export;
mod span;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use causeway_api::proxy_config::{OutboundKey, ProxyConfig, TraceBackendConfig, Tracing};
use hyper::body::{Frame, SizeHint};

use crate::http::{Body, BoxError};
use crate::metrics::Metrics;

pub(crate) use span::Kind;
use span::{Origin, Span, Value};

/// The backends, as the metrics label them.
pub(crate) const BACKENDS: [&str; 2] = ["open_telemetry", "zipkin"];

/// What one proxy's spans share, for one config.
pub(crate) struct Tracer {
    meta: Meta,
    exporter: Arc<export::Exporter>,
}

/// What a span is made of besides its request: the policy and the proxy.
struct Meta {
    conf: Tracing,
    mesh: Arc<str>,
    zone: Arc<str>,
    /// This proxy's SPIFFE id.
    identity: Option<Arc<str>>,
    /// This proxy's service (its inbounds').
    own_service: Arc<str>,
    /// Each outbound's destination service and the identity it proves, by port.
    outbounds: HashMap<OutboundKey, (Arc<str>, Option<Arc<str>>)>,
}

/// The proxy's tracer, rebuilt at each config; the exporter (and its worker) is kept
/// while the backend and the proxy's resource stay the same.
pub(crate) struct Traces {
    any: AtomicBool,
    current: RwLock<Option<Arc<Tracer>>>,
    exporter: Mutex<Option<(TraceBackendConfig, Origin, Arc<export::Exporter>)>>,
    metrics: Arc<Metrics>,
}

impl Traces {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Traces {
        Traces {
            any: AtomicBool::new(false),
            current: RwLock::default(),
            exporter: Mutex::default(),
            metrics,
        }
    }

    /// Applies a new config.
    pub(crate) fn update(&self, cfg: &ProxyConfig) {
        let mut exporter = self.exporter.lock().expect("trace exporter lock");
        let Some(conf) = &cfg.tracing else {
            // Dropped: its worker sends what is left and ends.
            *exporter = None;
            self.any.store(false, Ordering::Relaxed);
            *self.current.write().expect("tracer lock") = None;
            return;
        };
        let own_service = cfg
            .inbounds
            .first()
            .map(|i| i.service.clone())
            .unwrap_or_default();
        let origin = Origin {
            service: own_service.clone(),
            mesh: cfg.mesh.clone(),
            zone: cfg.zone.clone(),
            dataplane: cfg.dataplane.clone(),
        };
        let running = match &*exporter {
            Some((b, o, e)) if *b == conf.backend && *o == origin => e.clone(),
            _ => Arc::new(export::Exporter::start(
                &conf.backend,
                origin.clone(),
                &self.metrics,
            )),
        };
        *exporter = Some((conf.backend.clone(), origin, running.clone()));
        let meta = Meta {
            conf: conf.clone(),
            mesh: cfg.mesh.as_str().into(),
            zone: cfg.zone.as_str().into(),
            identity: cfg.identity.as_deref().map(Into::into),
            own_service: own_service.as_str().into(),
            outbounds: cfg
                .outbounds
                .iter()
                .map(|o| {
                    let identity = o.identity.as_deref().map(Into::into);
                    (o.key(), (o.service.as_str().into(), identity))
                })
                .collect(),
        };
        let tracer = Tracer {
            meta,
            exporter: running,
        };
        *self.current.write().expect("tracer lock") = Some(Arc::new(tracer));
        self.any.store(true, Ordering::Relaxed);
    }

    /// The tracer, if this proxy traces.
    pub(crate) fn current(&self) -> Option<Arc<Tracer>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.current.read().expect("tracer lock").clone()
    }
}

/// Where a request came from and went, as its span names it.
pub(crate) struct Hop<'a> {
    pub(crate) kind: Kind,
    /// The outbound (a client span's names its destination); none inbound.
    pub(crate) outbound: Option<OutboundKey>,
    /// The caller's address.
    pub(crate) remote: Option<SocketAddr>,
    /// The caller's SPIFFE id (inbound, from its certificate).
    pub(crate) peer: Option<&'a str>,
}

/// A sampled request's span, waiting for its answer.
pub(crate) struct PendingSpan {
    tracer: Arc<Tracer>,
    span: Span,
    started: Instant,
}

/// Reads `req`'s trace context, decides whether it is sampled, and writes this hop's
/// span as the parent on it. Sampled: the span, to finish with the answer.
pub(crate) fn start<B>(
    tracer: Arc<Tracer>,
    req: &mut http::Request<B>,
    hop: &Hop<'_>,
) -> Option<PendingSpan> {
    let draws = Draws {
        sampling: rand::random::<f64>() * 100.0,
        trace_id: rand::random(),
        span_id: rand::random(),
    };
    let span = begin(&tracer.meta, req, hop, draws)?;
    Some(PendingSpan {
        tracer,
        span,
        started: Instant::now(),
    })
}

/// The random numbers a request's trace takes.
struct Draws {
    /// Uniform in [0, 100).
    sampling: f64,
    trace_id: context::TraceId,
    span_id: context::SpanId,
}

/// [`start`] without randomness: the context written on `req`, and the span when
/// sampled.
fn begin<B>(meta: &Meta, req: &mut http::Request<B>, hop: &Hop<'_>, draws: Draws) -> Option<Span> {
    let conf = &meta.conf;
    let incoming = context::extract(req.headers(), &conf.propagation);
    let client_forced = req.headers().contains_key(context::CLIENT_TRACE_ID);
    let sampled = context::decide(
        &conf.sampling,
        incoming.sampled,
        client_forced,
        draws.sampling,
    );
    let (trace_id128, shared) = match &conf.backend {
        TraceBackendConfig::Zipkin {
            trace_id128bit,
            shared_span_context,
            ..
        } => (
            *trace_id128bit,
            *shared_span_context && hop.kind == Kind::Server,
        ),
        TraceBackendConfig::OpenTelemetry { .. } => (true, false),
    };
    let ctx = context::begin(
        &incoming,
        sampled,
        draws.trace_id,
        draws.span_id,
        trace_id128,
        shared,
    );
    context::inject(req.headers_mut(), &ctx, &conf.propagation);
    sampled.then(|| span_of(meta, req, hop, ctx))
}

/// The span of `req` as it starts: its name and request attributes.
fn span_of<B>(
    tracer: &Meta,
    req: &http::Request<B>,
    hop: &Hop<'_>,
    context: context::SpanContext,
) -> Span {
    let text = |s: &str| Value::Text(s.to_owned());
    let headers = req.headers();
    let shared = |s: &Arc<str>| Value::Shared(s.clone());
    let (service, peer_identity) = match hop.kind {
        Kind::Client => match hop.outbound.and_then(|k| tracer.outbounds.get(&k)) {
            Some((service, identity)) => (shared(service), identity.as_ref().map(shared)),
            None => (text(""), None),
        },
        Kind::Server => (shared(&tracer.own_service), hop.peer.map(text)),
    };
    let mut attributes = Vec::with_capacity(20);
    attributes.extend([
        ("http.request.method", text(req.method().as_str())),
        ("url.path", text(req.uri().path())),
        ("url.scheme", text("http")),
    ]);
    if let Some(q) = req.uri().query() {
        attributes.push(("url.query", text(q)));
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok());
    if let Some(host) = host {
        let authority = http::uri::Authority::try_from(host).ok();
        let name = authority.as_ref().map_or(host, |a| a.host());
        attributes.push(("server.address", text(name)));
        if let Some(port) = authority.and_then(|a| a.port_u16()) {
            attributes.push(("server.port", Value::Int(i64::from(port))));
        }
    }
    if let Some(remote) = hop.remote {
        attributes.push(("network.peer.address", text(&remote.ip().to_string())));
        attributes.push(("network.peer.port", Value::Int(i64::from(remote.port()))));
    }
    let version = match req.version() {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    attributes.push(("network.protocol.version", text(version)));
    if let Some(ua) = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(("user_agent.original", text(ua)));
    }
    attributes.push(("causeway.mesh", shared(&tracer.mesh)));
    attributes.push(("causeway.zone", shared(&tracer.zone)));
    attributes.push(("causeway.service", service));
    if let Some(id) = &tracer.identity {
        attributes.push(("causeway.spiffe_id", shared(id)));
    }
    if let Some(id) = peer_identity {
        attributes.push(("causeway.peer.spiffe_id", id));
    }
    let tags = tracer
        .conf
        .tags
        .iter()
        .filter_map(|t| {
            let value = match (&t.literal, &t.header) {
                (Some(l), _) => l.clone(),
                (None, Some(h)) => match headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
                    Some(v) => v.to_owned(),
                    None => t.default.clone()?,
                },
                (None, None) => return None,
            };
            Some((t.name.clone(), value))
        })
        .collect();
    Span {
        context,
        kind: hop.kind,
        // OpenTelemetry's HTTP span name: the method (the path is not low-cardinality).
        name: req.method().as_str().to_owned(),
        start: SystemTime::now(),
        duration: std::time::Duration::ZERO,
        attributes,
        tags,
        error: false,
    }
}

impl PendingSpan {
    /// Takes the answer's status; the span ends with the answer's body (or when the
    /// caller drops it).
    pub(crate) fn respond(mut self, resp: http::Response<Body>) -> http::Response<Body> {
        let status = resp.status().as_u16();
        self.span
            .attributes
            .push(("http.response.status_code", Value::Int(i64::from(status))));
        self.span.error = status >= 500 || (self.span.kind == Kind::Client && status >= 400);
        if self.span.error {
            self.span
                .attributes
                .push(("error.type", Value::Text(status.to_string())));
        }
        let (parts, body) = resp.into_parts();
        let body = TracedBody {
            inner: body,
            pending: Some(self),
        };
        http::Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }

    fn finish(mut self) {
        self.span.duration = self.started.elapsed();
        self.tracer.exporter.offer(self.span);
    }
}

/// A response body that ends its request's span when it ends or is dropped.
struct TracedBody {
    inner: Body,
    pending: Option<PendingSpan>,
}

impl hyper::body::Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended && let Some(p) = this.pending.take() {
            p.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.finish();
        }
    }
}

#[cfg(test)]
mod tests;
