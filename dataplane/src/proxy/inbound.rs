//! The inbound stack: a caller's connection (mTLS terminated, the caller's SPIFFE id
//! read from its certificate), MeshCircuitBreaker's inbound caps and ejection of the
//! application (see [`crate::inbound_breaker`]), authorization against
//! the current permissions, the caller's timeouts, and the request forwarded to the
//! application over its own connection pool.

use super::*;
use crate::fault;
use crate::inbound_breaker::{Entry, is_retry};
use crate::outlier::{Admitted, Limit};
use crate::rate_limit::InboundRateLimits;

impl Proxy {
    /// An inbound's rate limits, if it has any: the same buckets while its settings
    /// stay, so they count across connections and config updates.
    fn rate_limits(&self, ib: &InboundListener) -> Option<Arc<InboundRateLimits>> {
        let mut map = self.rate_limits.lock().expect("rate limits lock");
        if ib.rate_limits.is_empty() {
            map.remove(&ib.port);
            return None;
        }
        if let Some(l) = map.get(&ib.port)
            && l.config == ib.rate_limits
        {
            return Some(l.clone());
        }
        let limits = Arc::new(InboundRateLimits::new(&ib.rate_limits));
        map.insert(ib.port, limits.clone());
        Some(limits)
    }

    /// An inbound's circuit breaking, if it has any: the same counters and ejection
    /// state while its settings stay, so they count across connections and config
    /// updates.
    fn inbound_breakers(&self, ib: &InboundListener) -> Option<Arc<InboundBreakers>> {
        let mut map = self.inbound_caps.lock().expect("inbound caps lock");
        if ib.limits.is_empty() {
            map.remove(&ib.port);
            return None;
        }
        if let Some(b) = map.get(&ib.port)
            && b.config == ib.limits
        {
            return Some(b.clone());
        }
        let breakers = Arc::new(InboundBreakers::new(&ib.limits));
        map.insert(ib.port, breakers.clone());
        Some(breakers)
    }
}

pub(super) async fn inbound_conn(
    proxy: &Arc<Proxy>,
    port: u16,
    tcp: TcpStream,
    from: SocketAddr,
) -> anyhow::Result<()> {
    let local = tcp.local_addr().ok();
    let cfg = proxy
        .current()
        .ok_or_else(|| anyhow::anyhow!("no config yet"))?;
    let ib = cfg
        .inbounds
        .iter()
        .find(|i| i.port == port)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no inbound on port {port}"))?;
    let tls = match cfg.mtls {
        MtlsMode::Off => false,
        MtlsMode::Strict => true,
        MtlsMode::Permissive => {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut b)).await??;
            n == 1 && b[0] == 0x16
        }
    };
    let (stream, peer, peer_cas, h2): (Box<dyn Stream>, Option<Peer>, Vec<String>, bool) = if tls {
        let id = proxy
            .identity
            .borrow()
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no workload certificate yet"))?;
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsAcceptor::from(id.server.clone()).accept(tcp),
        )
        .await??;
        let h2 = s.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        let certs = s.get_ref().1.peer_certificates();
        let peer = crate::identity::peer(certs);
        let cas = certs
            .map(|c| {
                c.iter()
                    .skip(1)
                    .map(|c| causeway_pki::sha256_hex(c))
                    .collect()
            })
            .unwrap_or_default();
        (Box::new(s), peer, cas, h2)
    } else {
        (Box::new(tcp), None, Vec::new(), false)
    };
    // MeshCircuitBreaker's entry for the caller; maxConnections: over it, the
    // connection is closed once its handshake told who calls.
    let breakers = proxy.inbound_breakers(&ib);
    let entry = breakers.as_deref().and_then(|b| b.entry(peer.as_ref()));
    let _admitted = match entry.and_then(|e| e.connections.as_ref()) {
        None => None,
        Some(limit) => match limit.admit() {
            Some(a) => Some(a),
            None => {
                proxy
                    .metrics
                    .circuit_breaker(&ib.service, "inbound_connection_overflow");
                anyhow::bail!(
                    "{} has its MeshCircuitBreaker maxConnections open already for {}; connection closed",
                    ib.service,
                    peer_service(peer.as_ref())
                );
            }
        },
    };
    // MeshRateLimit's connection rate, for the caller's entry.
    if let Some(limits) = proxy.rate_limits(&ib)
        && !limits.connection(peer.as_ref(), Instant::now())
    {
        // Counted as a denied connection (causeway_tcp_denied_total).
        proxy
            .metrics
            .denied("inbound", &ib.service, peer_service(peer.as_ref()));
        anyhow::bail!(
            "{} is over its MeshRateLimit connection rate; connection closed",
            ib.service
        );
    }
    // The caller's timeouts, now that its identity is known.
    let timeouts = *ib.timeouts_for(peer.as_ref());
    let downstream = crate::access_log::Downstream {
        peer: peer.as_ref().map(|p| p.id.clone()),
        remote: Some(from),
        local,
    };
    if ib.protocol == Protocol::Tcp {
        // MeshAccessLog: the connection's entry, when its caller's calls are logged.
        let log = proxy
            .access_logs
            .inbound(port, peer.as_ref())
            .map(|logger| {
                let mut log = crate::access_log::PendingTcp::start(logger, downstream.clone());
                log.upstream.host = Some(format!("{}:{}", ib.app_address, ib.app_port));
                log
            });
        match authorize(&ib, cfg.mtls, peer.as_ref()) {
            Err(reason) => {
                tracing::info!(service = %ib.service, %reason, "TCP connection denied");
                proxy
                    .metrics
                    .denied("inbound", &ib.service, peer_service(peer.as_ref()));
                if let Some(log) = log {
                    log.finish(0, 0, Some("denied".into()));
                }
                return Ok(());
            }
            Ok(Some(shadow)) => shadow_denied(proxy, &ib.service, peer.as_ref(), &shadow),
            Ok(None) => {}
        }
        let app = crate::http::tcp_connect(&ib.app_address, ib.app_port, timeouts.connect.as_std())
            .await?;
        return pipe(
            proxy,
            "inbound",
            &ib.service,
            (peer_service(peer.as_ref()), peer_zone(peer.as_ref())),
            stream,
            app,
            timeout::on(timeouts.idle),
            log,
        )
        .await;
    }
    let stats = proxy.metrics.http(
        "inbound",
        &ib.service,
        peer_service(peer.as_ref()),
        peer_zone(peer.as_ref()),
    );
    let conn = Arc::new(InboundConn {
        proxy: proxy.clone(),
        port,
        peer_header: peer
            .as_ref()
            .and_then(|p| http::HeaderValue::from_str(&p.id).ok()),
        peer,
        peer_cas,
        stats,
        app: Mutex::new(proxy.app(&ib)),
        service: ib.service.clone(),
        downstream,
    });
    // Idle (no byte either way for that long) and age: past either, the connection
    // drains like at SIGTERM.
    let idle = timeout::on(timeouts.idle);
    let (stream, clock) = timeout::watch(stream, idle);
    let drain = timeout::drain_when(
        proxy.drained(),
        timeout::on(timeouts.max_connection_duration),
        clock,
        idle,
    );
    if h2 {
        // Another sidecar: HTTP/2, negotiated in the mTLS handshake.
        return crate::http2::serve(
            stream,
            move |req| {
                let conn = conn.clone();
                async move { logged_inbound_request(&conn, req).await }
            },
            drain,
        )
        .await
        .map_err(Into::into);
    }
    // Plaintext (mTLS off or permissive), or a TLS caller that chose HTTP/1.1.
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let conn = conn.clone();
        async move {
            let req = req.map(boxed);
            Ok::<_, std::convert::Infallible>(logged_inbound_request(&conn, req).await)
        }
    });
    let mut builder = crate::proxy::http_server();
    // hyper counts from when the connection waits for a request (not from its first
    // byte, as Envoy does): a keep-alive connection idle that long is closed too.
    if let Some(d) = timeout::on(timeouts.request_headers) {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(d);
    }
    // With upgrades: a WebSocket from another sidecar is tunnelled (crate::upgrade).
    let mut served =
        std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc));
    tokio::select! {
        r = served.as_mut() => return r.map_err(|e| anyhow::anyhow!("{e}")),
        () = drain => served.as_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The header that tells the application which SPIFFE id called (none: no verified
/// identity).
const PEER_HEADER: http::HeaderName = http::HeaderName::from_static("x-causeway-peer");

/// What every request of one inbound connection shares.
struct InboundConn {
    proxy: Arc<Proxy>,
    port: u16,
    /// The caller's SPIFFE id, and as the header the app receives.
    peer: Option<Peer>,
    peer_header: Option<http::HeaderValue>,
    /// The caller's CA chain (SHA-256), checked against revocations at each request.
    peer_cas: Vec<String>,
    stats: Arc<HttpStats>,
    app: Mutex<Arc<App>>,
    service: String,
    /// The connection, as access-log entries name it.
    downstream: crate::access_log::Downstream,
}

/// A request authorized and shaped for the application, and how to send it.
struct Prepared {
    app: Arc<App>,
    /// What MeshFaultInjection does to this request.
    faults: fault::Plan,
    req: http::Request<Body>,
    /// The application speaks HTTP/2 (`http2`, `grpc`), else HTTP/1.1.
    h2: bool,
    exchange: Exchange,
    connect_timeout: Duration,
    /// The caller's idle timeout (for a tunnel after an upgrade).
    idle: Option<Duration>,
    /// MeshCircuitBreaker's entries now, if the inbound has any.
    breakers: Option<Arc<InboundBreakers>>,
}

/// Authorizes a request and shapes it for the application. Not async: its locals
/// (the request's parts, the config) then stay out of the request's future, which is
/// moved whole when the connection takes it in.
fn inbound_prepare(
    conn: &InboundConn,
    req: http::Request<Body>,
    started: Instant,
) -> Result<Prepared, ProxyError> {
    let proxy = &conn.proxy;
    // A connection made before its CA was revoked is cut off at the next request.
    let revoked = {
        let set = proxy.revoked.read().expect("revoked lock");
        !set.is_empty() && conn.peer_cas.iter().any(|c| set.contains(c))
    };
    if revoked {
        return Err(ProxyError::CaRevoked);
    }
    let cfg = proxy.current().ok_or(ProxyError::NoConfig)?;
    let ib = cfg
        .inbounds
        .iter()
        .find(|i| i.port == conn.port)
        .ok_or(ProxyError::ListenerRemoved("inbound"))?;
    if let Some(shadow) = authorize(ib, cfg.mtls, conn.peer.as_ref()).map_err(ProxyError::Denied)? {
        shadow_denied(proxy, &ib.service, conn.peer.as_ref(), &shadow);
    }
    if let Some(limits) = proxy.rate_limits(ib)
        && let Err((entry, wait)) = limits.request(conn.peer.as_ref(), Instant::now())
    {
        let http = entry.http.as_ref().expect("a request limit");
        return Err(ProxyError::RateLimited {
            status: http.status,
            set_headers: http.set_headers.clone(),
            add_headers: http.add_headers.clone(),
            retry_after: wait,
        });
    }
    let app = {
        let mut app = conn.app.lock().expect("app lock");
        if !app.is(&ib.app_address, ib.app_port) {
            *app = proxy.app(ib);
        }
        app.clone()
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Who called, as the application is told: only from a verified certificate. A
    // caller's own header of that name (a plaintext caller in a permissive mesh, say)
    // never reaches the application.
    parts.headers.remove(PEER_HEADER);
    parts.headers.remove(crate::access_log::SOURCE_ZONE);
    if let Some(v) = &conn.peer_header {
        parts.headers.insert(PEER_HEADER, v.clone());
    }
    let h2 = matches!(ib.protocol, Protocol::Http2 | Protocol::Grpc);
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    let authority = uri.authority.take();
    if h2 {
        // HTTP/2 names the target in full; the caller's authority travels on.
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(match authority {
            Some(a) => a,
            None => http::uri::Authority::try_from(
                format!("{}:{}", ib.app_address, ib.app_port).as_str(),
            )
            .map_err(|_| ProxyError::BadRequest("bad application address"))?,
        });
        parts.version = http::Version::HTTP_2;
    } else {
        // HTTP/1.1 to the app: origin-form target, the authority in Host.
        uri.scheme = None;
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Some(a) = authority
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            parts.headers.insert(http::header::HOST, v);
        } else if !parts.headers.contains_key(http::header::HOST)
            && let Ok(v) = http::HeaderValue::from_str(&ib.service)
        {
            parts.headers.insert(http::header::HOST, v);
        }
        parts.version = http::Version::HTTP_11;
    }
    parts.uri =
        http::Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("bad request target"))?;
    let faults = match fault::for_caller(&ib.faults, conn.peer.as_ref()) {
        [] => fault::Plan::default(),
        faults => fault::plan(faults, || rand::random::<f64>() * 100.0),
    };
    Ok(Prepared {
        app,
        faults,
        req: http::Request::from_parts(parts, body),
        h2,
        exchange: Exchange::start(ib.timeouts_for(conn.peer.as_ref()), started),
        connect_timeout: ib.timeouts_for(conn.peer.as_ref()).connect.as_std(),
        idle: timeout::on(ib.timeouts_for(conn.peer.as_ref()).idle),
        // No lock for an inbound without circuit breaking (most of them).
        breakers: (!ib.limits.is_empty())
            .then(|| proxy.inbound_breakers(ib))
            .flatten(),
    })
}

/// A request, with its access-log entry when the caller's calls are logged
/// (MeshAccessLog).
async fn logged_inbound_request(
    conn: &InboundConn,
    mut req: http::Request<Body>,
) -> http::Response<Body> {
    // MeshTrace: this hop's span, a child of the caller's; the application sees it as
    // its parent.
    let traced = conn.proxy.traces.current().and_then(|tracer| {
        let hop = crate::trace::Hop {
            kind: crate::trace::Kind::Server,
            outbound: None,
            remote: conn.downstream.remote,
            peer: conn.peer.as_ref().map(|p| p.id.as_str()),
        };
        crate::trace::start(tracer, &mut req, &hop)
    });
    let resp = match conn
        .proxy
        .access_logs
        .inbound(conn.port, conn.peer.as_ref())
    {
        None => inbound_request(conn, req).await,
        Some(logger) => {
            let (req, entry) = crate::access_log::start_http(logger, req, &conn.downstream);
            let mut resp = inbound_request(conn, req.map(boxed)).await;
            let app = conn.app.lock().expect("app lock").clone();
            let (address, port) = app.address();
            resp.extensions_mut().insert(crate::access_log::Upstream {
                host: Some(format!("{address}:{port}")),
                ..Default::default()
            });
            entry.respond(resp)
        }
    };
    match traced {
        Some(span) => span.respond(resp),
        None => resp,
    }
}

async fn inbound_request(conn: &InboundConn, req: http::Request<Body>) -> http::Response<Body> {
    let started = Instant::now();
    let _in_flight = conn.stats.start();
    let stats = &conn.stats;
    // An upgrade (a WebSocket): the protocol asked for, and the caller's side of it.
    let (mut parts, body) = req.into_parts();
    let upgrade = crate::upgrade::requested(&parts)
        .zip(parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let req = http::Request::from_parts(parts, body);
    let Prepared {
        app,
        faults,
        mut req,
        h2,
        exchange,
        connect_timeout,
        idle,
        breakers,
    } = match inbound_prepare(conn, req, started) {
        Ok(prepared) => prepared,
        Err(e) => return answer_error(stats, started, e),
    };
    // MeshCircuitBreaker: the caller's entry's caps (503 overflow at once over one),
    // and the application's ejection as that entry's callers see it.
    let entry = breakers
        .as_deref()
        .and_then(|b| b.entry(conn.peer.as_ref()));
    let _admitted = match entry {
        None => None,
        Some(entry) => match admit(conn, entry, req.headers(), started) {
            Ok(admitted) => Some(admitted),
            Err(e) => return answer_error(stats, started, e),
        },
    };
    if let Some((protocol, caller)) = upgrade
        && !h2
    {
        crate::upgrade::keep(req.headers_mut(), protocol);
        let plan = (faults, exchange, connect_timeout, idle);
        return inbound_upgrade(conn, &app, req, caller, plan, started).await;
    }
    let pending = entry.and_then(|e| e.pending.as_ref());
    let grpc = super::outbound::is_grpc(req.headers());
    // Boxed: the exchange's state would be most of this future's size, and the
    // connection moves the future (into its set of requests) before polling it. The
    // request timeout's timer lives in the same box.
    let resp = if h2 {
        Box::pin(exchange.head(async {
            inject(faults).await?;
            app.send_http2(req, connect_timeout, pending)
                .await
                .map_err(ProxyError::from)
        }))
        .await
    } else {
        Box::pin(exchange.head(async {
            inject(faults).await?;
            app.send_http1(req, connect_timeout, pending)
                .await
                .map_err(ProxyError::from)
        }))
        .await
    };
    // What the answer tells the outlier detection (not what the sidecar said itself).
    let outcome = match &resp {
        Ok(r) => Some(Outcome::Status(r.status().as_u16())),
        Err(
            ProxyError::AppUnreachable(_)
            | ProxyError::AppFailed(_)
            | ProxyError::RequestTimeout(_)
            | ProxyError::MaxStreamDuration(_),
        ) => Some(Outcome::LocalFailure),
        Err(_) => None,
    };
    if let (Some(entry), Some(outcome)) = (entry, outcome)
        && entry.record(outcome, Instant::now())
    {
        tracing::info!(service = %conn.service, "application ejected (MeshCircuitBreaker outlier detection)");
        conn.proxy
            .metrics
            .circuit_breaker(&conn.service, "inbound_ejected");
    }
    match resp {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            stats.record(parts.status.as_u16(), started.elapsed());
            let body = match faults.bandwidth {
                Some(kbps) => fault::throttle(body, kbps),
                None => body,
            };
            let body = match grpc {
                true => crate::metrics::count_grpc(stats, &parts.headers, body),
                false => body,
            };
            http::Response::from_parts(parts, exchange.body(body))
        }
        Err(e) => answer_error(stats, started, e),
    }
}

/// What a request takes from its caller's entry: a place under `maxRequests`, and
/// under `maxRetries` when it is a retry. Refused while the application is ejected for
/// the entry's callers.
fn admit<'a>(
    conn: &InboundConn,
    entry: &'a Entry,
    headers: &http::HeaderMap,
    now: Instant,
) -> Result<(Option<Admitted<'a>>, Option<Admitted<'a>>), ProxyError> {
    if let Some(left) = entry.ejected(now) {
        return Err(ProxyError::AppEjected {
            service: conn.service.clone(),
            left,
        });
    }
    let overflow = |limit: &Limit, name| ProxyError::Overflow {
        service: conn.service.clone(),
        max: limit.max(),
        limit: name,
    };
    let request = match &entry.requests {
        None => None,
        Some(limit) => Some(
            limit
                .admit()
                .ok_or_else(|| overflow(limit, "maxRequests"))?,
        ),
    };
    let retry = match &entry.retries {
        Some(limit) if is_retry(headers) => {
            Some(limit.admit().ok_or_else(|| overflow(limit, "maxRetries"))?)
        }
        _ => None,
    };
    Ok((request, retry))
}

/// An upgrade (see [`crate::upgrade`]): the request goes to the application on a
/// connection of its own; a 101 answer splices the caller's connection to it until
/// either closes or it is idle for the caller's idle timeout.
async fn inbound_upgrade(
    conn: &InboundConn,
    app: &App,
    req: http::Request<Body>,
    caller: hyper::upgrade::OnUpgrade,
    (faults, exchange, connect_timeout, idle): (fault::Plan, Exchange, Duration, Option<Duration>),
    started: Instant,
) -> http::Response<Body> {
    let stats = &conn.stats;
    let sent = exchange
        .head(async {
            inject(faults).await?;
            let (address, port) = app.address();
            let tcp = crate::http::tcp_connect(address, port, connect_timeout)
                .await
                .map_err(|e| ProxyError::AppUnreachable(e.to_string()))?;
            crate::upgrade::send(tcp, req)
                .await
                .map_err(|e| ProxyError::AppFailed(e.to_string()))
        })
        .await;
    let (resp, upgraded) = match sent {
        Ok(sent) => sent,
        Err(e) => return answer_error(stats, started, e),
    };
    stats.record(resp.status().as_u16(), started.elapsed());
    let Some(app_side) = upgraded else {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return http::Response::from_parts(parts, exchange.body(body));
    };
    let proxy = conn.proxy.clone();
    let service = conn.service.clone();
    let peer = peer_service(conn.peer.as_ref()).to_owned();
    let zone = peer_zone(conn.peer.as_ref()).to_owned();
    tokio::spawn(async move {
        match caller.await {
            Ok(caller) => {
                let (caller, app_side) = (TokioIo::new(caller), TokioIo::new(app_side));
                if let Err(e) = pipe(
                    &proxy,
                    "inbound",
                    &service,
                    (&peer, &zone),
                    caller,
                    app_side,
                    idle,
                    None,
                )
                .await
                {
                    tracing::debug!(%service, error = %e, "upgraded connection ended");
                }
            }
            Err(e) => {
                tracing::info!(%service, error = %e, "the caller's side of an upgrade failed")
            }
        }
    });
    resp
}

/// MeshFaultInjection before the application: the delay drawn, then the abort drawn
/// (answered instead of forwarding).
async fn inject(faults: fault::Plan) -> Result<(), ProxyError> {
    if let Some(d) = faults.delay {
        tokio::time::sleep(d).await;
    }
    match faults.abort {
        Some(status) => Err(ProxyError::FaultInjected { status }),
        None => Ok(()),
    }
}
