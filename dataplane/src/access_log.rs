//! MeshAccessLog: an entry per HTTP request and per TCP connection, written to the
//! sinks the listener's policy names (a file, a TCP collector, OpenTelemetry).
//!
//! Logging never blocks traffic: the request's task builds the entry and offers it to
//! each sink's bounded queue; a full queue drops it and counts the drop
//! (`causeway_access_log_dropped_total`). Printing and writing happen on the sink's
//! own worker ([`sink`]). A listener without a log costs one atomic load per request.

mod entry;
mod sink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use causeway_api::proxy_config::{AccessLogSink, OutboundKey, Peer, ProxyConfig, SourceMatch};
use hyper::body::{Body as _, Frame, SizeHint};

use crate::http::{Body, BoxError};
use crate::metrics::Metrics;

pub(crate) use entry::{Context, Entry, Http, Wanted};
pub(crate) use sink::{BACKENDS, Sink};

/// The request header on which a caller's sidecar says its zone (set by the outbound,
/// trusted by the inbound only from an mTLS peer, never passed to the application).
pub(crate) const SOURCE_ZONE: http::HeaderName =
    http::HeaderName::from_static("x-causeway-source-zone");

/// Marks a request whose answer should say where it went ([`Upstream`]).
#[derive(Clone, Copy)]
pub(crate) struct WhereTo;

/// Where a logged request went: set on its answer's extensions by the stack.
#[derive(Clone, Default)]
pub(crate) struct Upstream {
    pub(crate) host: Option<String>,
    pub(crate) zone: Option<String>,
    pub(crate) route: Option<String>,
}

/// The sinks of one listener (or one caller of an inbound) and what its entries share.
pub(crate) struct Logger {
    context: Arc<Context>,
    sinks: Vec<Arc<Sink>>,
    /// The headers its sinks print.
    wanted: Wanted,
    /// Whether a sink keeps whole entries (see [`Sink::keeps_entries`]).
    keeps_entries: bool,
}

impl Logger {
    fn new(context: Arc<Context>, sinks: Vec<Arc<Sink>>) -> Logger {
        let mut wanted = Wanted::default();
        for sink in &sinks {
            wanted.add(sink.wanted());
        }
        Logger {
            keeps_entries: sinks.iter().any(|s| s.keeps_entries()),
            context,
            sinks,
            wanted,
        }
    }
}

impl Logger {
    fn log(&self, entry: Entry) {
        // An entry goes behind an `Arc` only for a sink that keeps it past the request
        // (OpenTelemetry); a line sink renders it here, and it is freed on this thread.
        if self.keeps_entries {
            let shared = Arc::new(entry);
            for sink in &self.sinks {
                sink.offer(&shared, Some(&shared));
            }
        } else {
            for sink in &self.sinks {
                sink.offer(&entry, None);
            }
        }
    }
}

/// An inbound's loggers by caller, most specific first (`None`: not logged).
type ByCaller = Vec<(SourceMatch, Option<Arc<Logger>>)>;

#[derive(Default)]
struct Listeners {
    outbound: HashMap<OutboundKey, Arc<Logger>>,
    inbound: HashMap<u16, ByCaller>,
}

/// Every listener's loggers, rebuilt at each config; sinks (and their connections and
/// files) are kept while the config still names them.
pub(crate) struct AccessLogs {
    any: AtomicBool,
    listeners: RwLock<Listeners>,
    sinks: Mutex<HashMap<AccessLogSink, Arc<Sink>>>,
    metrics: Arc<Metrics>,
}

impl AccessLogs {
    pub(crate) fn new(metrics: Arc<Metrics>) -> AccessLogs {
        AccessLogs {
            any: AtomicBool::new(false),
            listeners: RwLock::default(),
            sinks: Mutex::default(),
            metrics,
        }
    }

    /// Applies a new config: the sinks it names (new ones started, the others
    /// stopped once their queue is written) and each listener's loggers.
    pub(crate) fn update(&self, cfg: &ProxyConfig) {
        let mut sinks = self.sinks.lock().expect("access log sinks lock");
        let mut kept = HashMap::new();
        let mut sinks_of = |wanted: &[AccessLogSink]| -> Vec<Arc<Sink>> {
            wanted
                .iter()
                .map(|s| {
                    let sink = match sinks.remove(s).or_else(|| kept.get(s).cloned()) {
                        Some(sink) => sink,
                        None => Arc::new(Sink::start(s, &self.metrics)),
                    };
                    kept.insert(s.clone(), sink.clone());
                    sink
                })
                .collect()
        };
        let own_service = cfg
            .inbounds
            .first()
            .map(|i| i.service.clone())
            .unwrap_or_default();
        let context = |direction, service: &str, destination_identity: Option<&String>| {
            Arc::new(Context {
                mesh: cfg.mesh.clone(),
                zone: cfg.zone.clone(),
                dataplane: cfg.dataplane.clone(),
                direction,
                own_service: own_service.clone(),
                own_identity: cfg.identity.clone(),
                service: service.to_owned(),
                destination_identity: destination_identity.cloned(),
            })
        };
        let mut next = Listeners::default();
        for ob in &cfg.outbounds {
            if !ob.access_log.is_empty() {
                let logger = Logger::new(
                    context("OUTBOUND", &ob.service, ob.identity.as_ref()),
                    sinks_of(&ob.access_log),
                );
                next.outbound.insert(ob.key(), Arc::new(logger));
            }
        }
        for ib in &cfg.inbounds {
            if ib.access_logs.is_empty() {
                continue;
            }
            let ctx = context("INBOUND", &ib.service, None);
            let by_caller = ib
                .access_logs
                .iter()
                .map(|c| {
                    let logger = (!c.sinks.is_empty())
                        .then(|| Arc::new(Logger::new(ctx.clone(), sinks_of(&c.sinks))));
                    (c.source.clone(), logger)
                })
                .collect();
            next.inbound.insert(ib.port, by_caller);
        }
        // What is left is no longer named: dropped, its worker ends.
        *sinks = kept;
        self.any.store(!sinks.is_empty(), Ordering::Relaxed);
        *self.listeners.write().expect("access log listeners lock") = next;
    }

    /// The logger of the outbound `key`, if it logs.
    pub(crate) fn outbound(&self, key: OutboundKey) -> Option<Arc<Logger>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let listeners = self.listeners.read().expect("access log listeners lock");
        listeners.outbound.get(&key).cloned()
    }

    /// The logger of a caller of the inbound on `port`, if its calls are logged: the
    /// first entry that matches its identity (a plaintext caller: only an entry for
    /// every caller).
    pub(crate) fn inbound(&self, port: u16, peer: Option<&Peer>) -> Option<Arc<Logger>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let listeners = self.listeners.read().expect("access log listeners lock");
        let by_caller = listeners.inbound.get(&port)?;
        let found = by_caller.iter().find(|(source, _)| match peer {
            Some(p) => source.matches(p),
            None => *source == SourceMatch::Any,
        })?;
        found.1.clone()
    }
}

/// The connection a request or a TCP stream came on.
#[derive(Clone, Default)]
pub(crate) struct Downstream {
    /// The caller's SPIFFE id (inbound, from its certificate).
    pub(crate) peer: Option<String>,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) local: Option<SocketAddr>,
}

/// An HTTP request being logged: what its start told, waiting for its end.
pub(crate) struct PendingHttp {
    logger: Arc<Logger>,
    start: SystemTime,
    started: Instant,
    http: Http,
    downstream: Downstream,
    source_zone: Option<String>,
    received: Arc<AtomicU64>,
    upstream: Upstream,
    flags: Option<String>,
}

/// Starts the entry of `req`: its head is kept, its body counted. The request goes
/// on marked [`WhereTo`], so the stack says where it went.
pub(crate) fn start_http<B>(
    logger: Arc<Logger>,
    req: http::Request<B>,
    downstream: &Downstream,
) -> (http::Request<Counted<B>>, PendingHttp) {
    let (mut parts, body) = req.into_parts();
    let received = Arc::new(AtomicU64::new(0));
    // Only a verified caller's sidecar says its zone.
    let source_zone = downstream
        .peer
        .as_ref()
        .and_then(|_| parts.headers.get(SOURCE_ZONE))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let logger_wanted = &logger.wanted;
    let http = Http {
        method: parts.method.clone(),
        path: parts.uri.path_and_query().map(|p| p.as_str().to_owned()),
        authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
        scheme: parts.uri.scheme_str().map(|s| match s {
            "https" => "https",
            _ => "http",
        }),
        version: parts.version,
        request: Wanted::pick(&logger_wanted.request, &parts.headers),
        ..Http::default()
    };
    let pending = PendingHttp {
        logger,
        start: SystemTime::now(),
        started: Instant::now(),
        http,
        downstream: downstream.clone(),
        source_zone,
        received: received.clone(),
        upstream: Upstream::default(),
        flags: None,
    };
    parts.extensions.insert(WhereTo);
    let body = Counted {
        inner: body,
        count: received,
    };
    (http::Request::from_parts(parts, body), pending)
}

impl PendingHttp {
    /// Takes the answer's head; the entry is written when its body ends (or is
    /// dropped: the caller went away).
    pub(crate) fn respond(mut self, resp: http::Response<Body>) -> http::Response<Body> {
        let (mut parts, body) = resp.into_parts();
        if let Some(upstream) = parts.extensions.remove::<Upstream>() {
            self.upstream = upstream;
        }
        self.http.status = parts.status.as_u16();
        self.http.response = Wanted::pick(&self.logger.wanted.response, &parts.headers);
        self.http.response_duration = Some(self.started.elapsed());
        self.flags = parts
            .headers
            .get(crate::error::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = LoggedBody {
            inner: body,
            sent: 0,
            ended: None,
            pending: Some(self),
        };
        http::Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }

    fn finish(mut self, sent: u64, ended: Instant) {
        let entry = Entry {
            context: self.logger.context.clone(),
            start: self.start,
            duration: ended.duration_since(self.started),
            http: Some(std::mem::take(&mut self.http)),
            peer: self.downstream.peer.take(),
            source_zone: self.source_zone.take(),
            destination_zone: self.upstream.zone.take(),
            downstream_remote: self.downstream.remote,
            downstream_local: self.downstream.local,
            upstream_host: self.upstream.host.take(),
            route: self.upstream.route.take(),
            flags: self.flags.take(),
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: sent,
        };
        self.logger.log(entry);
    }
}

/// A request body that counts its bytes.
pub(crate) struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// A response body that counts its bytes, keeps its trailers, and writes the entry
/// when it ends or is dropped.
struct LoggedBody {
    inner: Body,
    sent: u64,
    /// When the last frame went out.
    ended: Option<Instant>,
    pending: Option<PendingHttp>,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(p) = &mut this.pending
                {
                    p.http.trailers = Some(Wanted::pick(&p.logger.wanted.response, trailers));
                }
                if this.inner.is_end_stream() {
                    this.ended = Some(Instant::now());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = &mut this.pending {
                    p.flags.get_or_insert_with(|| "upstream_reset".into());
                }
                this.ended = Some(Instant::now());
            }
            Poll::Ready(None) => {
                this.ended.get_or_insert_with(Instant::now);
            }
            Poll::Pending => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let ended = match self.ended {
            Some(t) => t,
            None if self.inner.is_end_stream() => Instant::now(),
            None => {
                // The caller went away before the answer's end.
                pending
                    .flags
                    .get_or_insert_with(|| "downstream_closed".into());
                Instant::now()
            }
        };
        pending.finish(self.sent, ended);
    }
}

/// A TCP connection being logged.
pub(crate) struct PendingTcp {
    logger: Arc<Logger>,
    start: SystemTime,
    started: Instant,
    downstream: Downstream,
    pub(crate) upstream: Upstream,
}

impl PendingTcp {
    pub(crate) fn start(logger: Arc<Logger>, downstream: Downstream) -> PendingTcp {
        PendingTcp {
            logger,
            start: SystemTime::now(),
            started: Instant::now(),
            downstream,
            upstream: Upstream::default(),
        }
    }

    /// Writes the entry: bytes from the caller (`received`) and to it (`sent`).
    pub(crate) fn finish(self, received: u64, sent: u64, flags: Option<String>) {
        let PendingTcp {
            logger,
            start,
            started,
            downstream,
            upstream,
        } = self;
        logger.log(Entry {
            context: logger.context.clone(),
            start,
            duration: started.elapsed(),
            http: None,
            peer: downstream.peer,
            source_zone: None,
            destination_zone: upstream.zone,
            downstream_remote: downstream.remote,
            downstream_local: downstream.local,
            upstream_host: upstream.host,
            route: upstream.route,
            flags,
            bytes_received: received,
            bytes_sent: sent,
        });
    }
}
