//! The outbound stack: the application's connection or request, MeshCircuitBreaker's
//! caps, MeshRetry's tries (each through [`send_once`]: pick an endpoint, dial or reuse
//! a pooled connection, originate mTLS that checks the destination's identity), and
//! what each answer tells outlier detection.

use super::*;
use crate::{access_log, trace};

pub(super) async fn outbound_conn(
    proxy: &Arc<Proxy>,
    key: OutboundKey,
    tcp: TcpStream,
    as_tcp: bool,
) -> anyhow::Result<()> {
    let cfg = proxy
        .current()
        .ok_or_else(|| anyhow::anyhow!("no config yet"))?;
    // Borrowed, not cloned: an HTTP connection keeps only what it needs of it. A copy
    // per application connection of a destination with 100 MeshHTTPRoute rules was
    // 3.2 MiB of the client sidecar's peak RSS under the routes bench's 50 connections
    // (20.0 -> 16.8 MiB).
    let ob = cfg
        .outbounds
        .iter()
        .find(|o| o.key() == key)
        .ok_or_else(|| anyhow::anyhow!("no outbound at {key}"))?;
    let own = cfg
        .inbounds
        .first()
        .map(|i| i.service.clone())
        .unwrap_or_default();
    if ob.protocol == Protocol::Tcp || as_tcp {
        // MeshTCPRoute: a backend per connection.
        let (ob, b) = match proxy.route(ob) {
            Some((routed, b)) => ((*routed).clone(), b),
            None => (ob.clone(), proxy.balancer(ob)),
        };
        let Ok(_admitted) = b.admit_connection() else {
            proxy.metrics.circuit_breaker(&ob.service, "tcp_overflow");
            anyhow::bail!(
                "{} has its MeshCircuitBreaker maxConnections open already; connection closed",
                ob.service
            );
        };
        // RingHash: a connection has only its source address to key it by.
        let hash_key = keying(&ob).and_then(|keying| {
            let none = http::HeaderMap::new();
            let offered = crate::hash::Request {
                headers: &none,
                query: None,
                source: tcp.peer_addr().ok().map(|a| a.ip()),
            };
            crate::hash::request_key(keying, &offered, String::new).key
        });
        let mut log = proxy.access_logs.outbound(key).map(|logger| {
            let downstream = access_log::Downstream {
                peer: None,
                remote: tcp.peer_addr().ok(),
                local: tcp.local_addr().ok(),
            };
            access_log::PendingTcp::start(logger, downstream)
        });
        let mut tried = Vec::new();
        for _ in 0..ob.retry.tcp_connect_attempts.max(1) {
            let Some(ep) = b.pick_keyed(&tried, hash_key).or_else(|| b.pick(&[])) else {
                break;
            };
            tried.push(ep.clone());
            let Some(dial) = proxy.dial(&cfg, &ob, &ep, ALPN_TCP) else {
                anyhow::bail!("no workload certificate yet");
            };
            match crate::http::connect(&dial).await {
                Ok(up) => {
                    ep.succeeded();
                    let mut in_flight = InFlight::new(&ep);
                    in_flight.answered = true;
                    let idle = timeout::on(ob.timeouts.idle);
                    if let Some(log) = &mut log {
                        log.upstream = access_log::Upstream {
                            host: Some(format!("{}:{}", dial.addr, dial.port)),
                            zone: ep.endpoint.tags.get(causeway_api::ZONE_TAG).cloned(),
                            route: None,
                        };
                    }
                    return pipe(
                        proxy,
                        "outbound",
                        &ob.service,
                        (&own, ""),
                        tcp,
                        up,
                        idle,
                        log,
                    )
                    .await;
                }
                Err(e) => {
                    // A refusal and a connect timeout alike count against the endpoint.
                    tracing::info!(service = %ob.service, endpoint = %format!("{}:{}", dial.addr, dial.port), error = %e, "connect failed");
                    ep.failed();
                }
            }
        }
        if let Some(log) = log {
            log.finish(0, 0, Some("no_endpoint".into()));
        }
        anyhow::bail!("no endpoint of {} accepted a connection", ob.service);
    }
    let p = proxy.clone();
    let stats = proxy.metrics.http("outbound", &ob.service, &own, "");
    // Idle: no byte either way between the application and us for that long drains the
    // connection (closes it, or GOAWAY for an HTTP/2 application).
    let idle = timeout::on(ob.timeouts.idle);
    let request_headers = timeout::on(ob.timeouts.request_headers);
    // The zone this proxy's requests come from, as the destination's sidecar reads it.
    let zone = http::HeaderValue::from_str(&cfg.zone).ok();
    // Each request reads the config of its own time; this one is not kept alive.
    drop(cfg);
    let downstream = access_log::Downstream {
        peer: None,
        remote: tcp.peer_addr().ok(),
        local: tcp.local_addr().ok(),
    };
    let source = downstream.remote.map(|a| a.ip());
    let svc = hyper::service::service_fn(move |mut req| {
        let p = p.clone();
        let stats = stats.clone();
        let at = (key, source, zone.clone());
        // MeshTrace: this hop's span, its context written on the request (first, so
        // the access log sees the trace id that travels on).
        let traced = p.traces.current().and_then(|tracer| {
            let hop = trace::Hop {
                kind: trace::Kind::Client,
                outbound: Some(key),
                remote: downstream.remote,
                peer: None,
            };
            trace::start(tracer, &mut req, &hop)
        });
        // MeshAccessLog: the request's entry, when its destination logs.
        let logged = match p.access_logs.outbound(key) {
            Some(logger) => Err(access_log::start_http(logger, req, &downstream)),
            None => Ok(req),
        };
        async move {
            let answer = match logged {
                Ok(req) => outbound_request(&p, at, &stats, req).await,
                Err((req, entry)) => entry.respond(outbound_request(&p, at, &stats, req).await),
            };
            let answer = match traced {
                Some(span) => span.respond(answer),
                None => answer,
            };
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let (io, clock) = timeout::watch(tcp, idle);
    let drain = timeout::drain_when(std::future::pending(), None, clock, idle);
    let mut builder = crate::proxy::http_server();
    // MeshTimeout requestHeadersTimeout in to[]: how long the application may take to
    // send a request's headers (HTTP/1.1; hyper counts from when the connection waits
    // for a request, so a keep-alive connection idle that long is closed too).
    if let Some(d) = request_headers {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(d);
    }
    // With upgrades: a WebSocket from the application is tunnelled (crate::upgrade).
    let mut served = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
    tokio::select! {
        r = served.as_mut() => return r.map_err(|e| anyhow::anyhow!("{e}")),
        () = drain => served.as_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn outbound_request<B>(
    proxy: &Arc<Proxy>,
    (key, source, zone): (
        OutboundKey,
        Option<std::net::IpAddr>,
        Option<http::HeaderValue>,
    ),
    stats: &Arc<HttpStats>,
    req: http::Request<B>,
) -> http::Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::http::BoxError>,
{
    let started = Instant::now();
    let _in_flight = stats.start();
    let Some(cfg) = proxy.current() else {
        return answer_error(stats, started, ProxyError::NoConfig);
    };
    let Some(ob) = cfg.outbounds.iter().find(|o| o.key() == key) else {
        return answer_error(stats, started, ProxyError::ListenerRemoved("outbound"));
    };
    let (mut parts, body) = req.into_parts();
    let grpc = is_grpc(&parts.headers);
    // An upgrade (a WebSocket): the protocol asked for, and the caller's side of it.
    let upgrade = crate::upgrade::requested(&parts)
        .zip(parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    // HTTP/2 upstream: an absolute target, its authority from Host (HTTP/1.1 callers).
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(host) = parts.headers.get(http::header::HOST) {
        match http::uri::Authority::try_from(host.as_bytes()) {
            Ok(a) => uri.authority = Some(a),
            Err(_) => {
                return answer_error(stats, started, ProxyError::BadRequest("bad Host header"));
            }
        }
    }
    if uri.authority.is_none() {
        uri.authority = http::uri::Authority::try_from(ob.service.as_str()).ok();
    }
    uri.scheme = Some(http::uri::Scheme::HTTP);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = match http::Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => {
            return answer_error(stats, started, ProxyError::BadRequest("bad request target"));
        }
    };
    // MeshHTTPRoute: the route is chosen on the request as the application sent it.
    // No lock on the path of a destination without routes (most of them).
    let table = if ob.http_routes.is_empty() {
        None
    } else {
        proxy.route_table(key)
    };
    let route = table.as_deref().and_then(|t| t.find(&parts));
    parts.version = http::Version::HTTP_2;
    parts.headers.remove(http::header::HOST);
    strip_hop_by_hop(&mut parts.headers);
    // A drill probe asks which zone answered; the header does not travel upstream.
    let probe = parts.headers.remove(PROBE).is_some();
    // Only this sidecar says which try a request is, and which zone it comes from.
    parts.headers.remove(crate::inbound_breaker::ATTEMPT_HEADER);
    match zone {
        Some(zone) => parts.headers.insert(access_log::SOURCE_ZONE, zone),
        None => parts.headers.remove(access_log::SOURCE_ZONE),
    };
    // MeshAccessLog wants to know where the request went.
    let report = (
        probe,
        parts.extensions.get::<access_log::WhereTo>().is_some(),
    );
    let mut mirror = None;
    if let Some(route) = route.map(|c| &c.route) {
        if let Some(redirect) = crate::route::apply_request(route, &mut parts) {
            stats.record(redirect.status.as_u16(), started.elapsed());
            proxy.metrics.routed(&ob.service, &route.name, "redirect");
            return redirect_answer(redirect);
        }
        if upgrade.is_none() {
            mirror = mirror_of(route);
        }
    }
    if let Some((protocol, _)) = &upgrade {
        crate::upgrade::keep(&mut parts.headers, protocol.clone());
        parts.version = http::Version::HTTP_11;
    }
    let mut body = boxed(body);
    // The copy for a mirror: the head now, the body once the request has sent it.
    let mirrored = mirror.map(|backend| {
        let head = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let (teed, replay) = Replay::new(std::mem::replace(
            &mut body,
            boxed(http_body_util::Empty::new()),
        ));
        body = teed;
        (backend, head, replay)
    });
    let req = http::Request::from_parts(parts, body);
    // Where it goes: the route's backend by weight, else a MeshTCPRoute backend, else
    // the destination itself.
    let way = route.and_then(|c| c.pick());
    let routed = match (route, way) {
        (_, Some(way)) => {
            way.counter.fetch_add(1, Ordering::Relaxed);
            Some(way.target.clone())
        }
        (Some(c), None) if !c.route.backends.is_empty() => None,
        _ => proxy.route(ob),
    };
    let (target, b) = match &routed {
        Some((routed, b)) => (&**routed, b.clone()),
        None => (ob, proxy.balancer(ob)),
    };
    if let (Some(c), None) = (route, way) {
        proxy
            .metrics
            .routed(&ob.service, &c.route.name, &target.service);
    }
    // A route's own timeouts and retries, else the destination's.
    let timeouts = route
        .and_then(|c| c.route.timeouts.as_ref())
        .unwrap_or(&ob.timeouts);
    let retry = route
        .and_then(|c| {
            let own = c.retry.as_ref()?;
            let retry = c.route.retry.as_ref()?;
            Some((retry, &own.headers, own.budget.clone()))
        })
        .unwrap_or_else(|| (&target.retry, b.retry_headers(), b.retry_budget()));
    // RingHash: the request's key (a cookie made up for it goes on the answer).
    let keyed = keying(target).map(|keying| {
        let offered = crate::hash::Request {
            headers: req.headers(),
            query: req.uri().query(),
            source,
        };
        crate::hash::request_key(keying, &offered, || {
            format!("{:016x}", rand::random::<u64>())
        })
    });
    let (key, set_cookie) = keyed.map_or((None, None), |k| (k.key, k.set_cookie));
    let exchange = Exchange::start(timeouts, started);
    if let Some((_, caller)) = upgrade {
        let to = (target, &*b, key);
        return outbound_upgrade(proxy, &cfg, ob, to, req, caller, exchange, stats, started).await;
    }
    // The endpoints tried, the one that answered last.
    let mut tried = Vec::new();
    let result = exchange
        .head(outbound_exchange(
            proxy,
            &cfg,
            target,
            &b,
            retry,
            req,
            (report, key),
            exchange.deadline(),
            &mut tried,
        ))
        .await;
    if let Some((backend, head, replay)) = mirrored {
        send_mirror(proxy, &cfg, ob, backend, head, replay);
    }
    match result {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            if let Some(c) = route {
                crate::route::apply_response(&c.route, &mut parts.headers);
            }
            if let Some(cookie) = set_cookie.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
                parts.headers.append(http::header::SET_COOKIE, cookie);
            }
            if report.1
                && let Some(c) = route
            {
                let upstream = parts
                    .extensions
                    .get_or_insert_default::<access_log::Upstream>();
                upstream.route = Some(c.route.name.clone());
            }
            // Counted under the zone of the endpoint that answered (the last one
            // tried); the proxy's own answers (no endpoint) under the listener's
            // series, whose peer_zone is empty.
            let stats = tried
                .last()
                .map_or(stats, |ep| answered_stats(proxy, &cfg, ob, ep));
            stats.record(parts.status.as_u16(), started.elapsed());
            let body = match grpc {
                true => crate::metrics::count_grpc(stats, &parts.headers, body),
                false => body,
            };
            http::Response::from_parts(parts, exchange.body(body))
        }
        Err(e) => answer_error(stats, started, e),
    }
}

/// An upgrade (see [`crate::upgrade`]): the request goes to an endpoint of `target`
/// on a connection of its own, HTTP/1.1 over mTLS; a 101 answer splices the caller's
/// connection to it until either closes or it is idle for the destination's idle
/// timeout.
#[allow(clippy::too_many_arguments)]
async fn outbound_upgrade(
    proxy: &Arc<Proxy>,
    cfg: &ProxyConfig,
    ob: &OutboundListener,
    (target, b, key): (&OutboundListener, &Balancer, Option<u64>),
    req: http::Request<Body>,
    caller: hyper::upgrade::OnUpgrade,
    exchange: Exchange,
    stats: &HttpStats,
    started: Instant,
) -> http::Response<Body> {
    // HTTP/1.1 to the next sidecar: origin-form target, the authority in Host.
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(a) = uri.authority.take()
        && let Ok(host) = http::HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(http::header::HOST, host);
    }
    uri.scheme = None;
    parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    let req = http::Request::from_parts(parts, body);
    let service = &target.service;
    let sent = exchange
        .head(async {
            let ep = b
                .pick_keyed(&[], key)
                .ok_or_else(|| ProxyError::NoEndpoint {
                    service: service.clone(),
                    reason: "no endpoint is available".into(),
                })?;
            let dial = proxy
                .dial(cfg, target, &ep, crate::upgrade::ALPN_HTTP1)
                .ok_or(ProxyError::NoCertificate)?;
            let io = match crate::http::connect(&dial).await {
                Ok(io) => {
                    ep.succeeded();
                    io
                }
                Err(e) => {
                    ep.failed();
                    return Err(ProxyError::NoEndpoint {
                        service: service.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            crate::upgrade::send(io, req)
                .await
                .map_err(|e| ProxyError::Upstream {
                    service: service.clone(),
                    error: e.into(),
                })
        })
        .await;
    let (resp, upgraded) = match sent {
        Ok(sent) => sent,
        Err(e) => return answer_error(stats, started, e),
    };
    stats.record(resp.status().as_u16(), started.elapsed());
    let Some(up) = upgraded else {
        let (parts, body) = resp.into_parts();
        return http::Response::from_parts(parts, exchange.body(body));
    };
    let own = cfg
        .inbounds
        .first()
        .map(|i| i.service.clone())
        .unwrap_or_default();
    let (proxy, service) = (proxy.clone(), target.service.clone());
    let idle = timeout::on(ob.timeouts.idle);
    tokio::spawn(async move {
        match caller.await {
            Ok(down) => {
                let (down, up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(e) = pipe(
                    &proxy,
                    "outbound",
                    &service,
                    (&own, ""),
                    down,
                    up,
                    idle,
                    None,
                )
                .await
                {
                    tracing::debug!(%service, error = %e, "upgraded connection ended");
                }
            }
            Err(e) => {
                tracing::info!(%service, error = %e, "the application's side of an upgrade failed")
            }
        }
    });
    resp
}

/// How a destination keys its requests, when its balancer hashes them (RingHash,
/// Maglev).
fn keying(ob: &OutboundListener) -> Option<crate::hash::Keying<'_>> {
    ob.ring_hash
        .as_ref()
        .map(crate::hash::Keying::from)
        .or_else(|| ob.maglev.as_ref().map(crate::hash::Keying::from))
}

/// A route's redirect, answered by the proxy.
fn redirect_answer(redirect: crate::route::Redirect) -> http::Response<Body> {
    let mut r = crate::http::text(redirect.status, "");
    if let Ok(location) = http::HeaderValue::from_str(&redirect.location) {
        r.headers_mut().insert(http::header::LOCATION, location);
    }
    r
}

/// The backend a route mirrors this request to, if it has a mirror and the request
/// is in its share.
fn mirror_of(route: &HttpRoute) -> Option<&RouteBackend> {
    route.filters.iter().find_map(|f| match f {
        RouteFilter::Mirror {
            backend,
            percentage,
        } if rand::random::<f64>() * 100.0 < *percentage => Some(backend),
        _ => None,
    })
}

/// Most mirrored copies in flight per proxy: a slow mirror loses copies, never
/// holds memory or delays anything.
const MIRRORS_IN_FLIGHT: u64 = 256;

/// Sends a copy of a request to a mirror in the background, once the request's body
/// was sent whole (a body over the replay limit is not copied); the answer is dropped.
fn send_mirror(
    proxy: &Arc<Proxy>,
    cfg: &Arc<ProxyConfig>,
    ob: &OutboundListener,
    backend: &RouteBackend,
    (method, uri, headers): (http::Method, http::Uri, http::HeaderMap),
    replay: Replay,
) {
    let Some(body) = replay.again() else {
        proxy
            .metrics
            .mirrored(&ob.service, &backend.service, "dropped");
        return;
    };
    if proxy.mirrors.fetch_add(1, Ordering::Relaxed) >= MIRRORS_IN_FLIGHT {
        proxy.mirrors.fetch_sub(1, Ordering::Relaxed);
        proxy
            .metrics
            .mirrored(&ob.service, &backend.service, "dropped");
        return;
    }
    let (target, b) = proxy.backend_target(ob, backend);
    let (proxy, cfg, service) = (proxy.clone(), cfg.clone(), ob.service.clone());
    let limit = ob.timeouts.request;
    tokio::spawn(async move {
        let mut req = http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = headers;
        let mut tried = Vec::new();
        let send = send_once(
            &proxy,
            &cfg,
            &target,
            &b,
            req,
            (false, false),
            &mut tried,
            None,
            None,
        );
        let answered = match timeout::on(limit) {
            Some(limit) => tokio::time::timeout(limit, send).await.ok(),
            None => Some(send.await),
        };
        let result = match answered {
            Some(Ok(_)) => "answered",
            _ => "failed",
        };
        proxy.metrics.mirrored(&service, &target.service, result);
        proxy.mirrors.fetch_sub(1, Ordering::Relaxed);
    });
}

/// How a try failed.
enum TryFailure {
    /// Nothing was sent (no endpoint took a connection, no certificate): the request
    /// is given back.
    /// Boxed: the request is large, and this is the rare path.
    NotSent(ProxyError, Box<http::Request<Body>>),
    /// The exchange failed after the request went out.
    Failed(ProxyError, retry::Outcome),
}

impl TryFailure {
    fn error(self) -> ProxyError {
        match self {
            TryFailure::NotSent(e, _) | TryFailure::Failed(e, _) => e,
        }
    }
}

/// Whether a request is a gRPC call (retried by its gRPC status).
pub(super) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a response head (a trailers-only answer), if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Sends a request to the destination, up to its response's head, retrying what
/// MeshRetry says to retry (see [`crate::retry`]): each try goes to an endpoint not
/// tried yet when there is one, after a pause, within the retry budget and before
/// `deadline` (the request timeout).
#[allow(clippy::too_many_arguments)]
async fn outbound_exchange(
    proxy: &Proxy,
    cfg: &ProxyConfig,
    ob: &OutboundListener,
    b: &Arc<Balancer>,
    (retry, retry_headers, budget): (&Retry, &retry::HeaderRules, Arc<retry::Budget>),
    req: http::Request<Body>,
    (report, key): ((bool, bool), Option<u64>),
    deadline: Option<Instant>,
    tried: &mut Vec<Arc<EndpointState>>,
) -> Result<http::Response<Body>, ProxyError> {
    let _admitted = b.admit_request().map_err(|max| ProxyError::Overflow {
        service: ob.service.clone(),
        max,
        limit: "maxRequests",
    })?;
    let policy = retry::Policy::of(retry, retry_headers, is_grpc(req.headers()));
    let retries = policy.num_retries(req.headers());
    // Every request adds to the budget, retried or not: it is a share of the
    // destination's (or its route's) traffic.
    budget.deposit(Instant::now());
    if retries == 0 {
        return send_once(proxy, cfg, ob, b, req, report, tried, None, key)
            .await
            .map_err(TryFailure::error);
    }
    // What a retry needs to send the request again: its head and its body's copy.
    let (parts, body) = req.into_parts();
    let (method, uri, version, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.version,
        parts.headers.clone(),
    );
    let (body, replay) = Replay::new(body);
    let mut next = Some(http::Request::from_parts(parts, body));
    let mut permit = None;
    let mut n = 0;
    loop {
        let req = next.take().expect("a request for each try");
        let result = send_once(
            proxy,
            cfg,
            ob,
            b,
            req,
            report,
            tried,
            policy.per_try_timeout(),
            key,
        )
        .await;
        drop(permit.take());
        let outcome = match &result {
            Ok(r) => retry::Outcome::Answered {
                status: r.status().as_u16(),
                grpc: grpc_status(r.headers()),
            },
            Err(TryFailure::NotSent(ProxyError::NoEndpoint { .. }, _)) => {
                retry::Outcome::ConnectFailure
            }
            Err(TryFailure::NotSent(..)) => return result.map_err(TryFailure::error),
            Err(TryFailure::Failed(_, outcome)) => *outcome,
        };
        let answer_headers = result.as_ref().ok().map(http::Response::headers);
        if n >= retries || !policy.retries(&method, outcome, answer_headers) {
            return result.map_err(TryFailure::error);
        }
        let (result, unsent) = match result {
            Ok(r) => (Ok(r), None),
            Err(TryFailure::NotSent(e, req)) => (Err(e), Some(req)),
            Err(TryFailure::Failed(e, _)) => (Err(e), None),
        };
        let next_req = match unsent {
            Some(req) => *req,
            None => match replay.again() {
                Some(body) => {
                    let mut r = http::Request::new(body);
                    *r.method_mut() = method.clone();
                    *r.uri_mut() = uri.clone();
                    *r.version_mut() = version;
                    *r.headers_mut() = headers.clone();
                    r
                }
                None => {
                    proxy.metrics.retry(&ob.service, "body_not_replayable");
                    return result;
                }
            },
        };
        // Marked, so the destination's sidecar can cap the retries it takes in
        // (MeshCircuitBreaker maxRetries on its inbound).
        let mut next_req = next_req;
        next_req.headers_mut().insert(
            crate::inbound_breaker::ATTEMPT_HEADER,
            http::HeaderValue::from(n + 2),
        );
        let Ok(capped) = b.admit_retry() else {
            proxy
                .metrics
                .retry(&ob.service, "circuit_breaker_max_retries");
            return result;
        };
        let Some(p) = budget.withdraw(Instant::now()) else {
            proxy.metrics.retry(&ob.service, "budget_exhausted");
            return result;
        };
        let answer = result
            .as_ref()
            .ok()
            .map(|r| (r.status().as_u16(), r.headers()));
        let pause = policy.pause(n + 1, rand::random(), answer, std::time::SystemTime::now());
        if deadline.is_some_and(|d| Instant::now() + pause >= d) {
            proxy.metrics.retry(&ob.service, "past_deadline");
            return result;
        }
        // The failed answer is dropped (its stream cancelled) before the pause.
        drop(result);
        proxy.metrics.retry(&ob.service, "retried");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        permit = Some((p, capped));
        next = Some(next_req);
        n += 1;
    }
}

/// One try: picks an endpoint (one not in `tried` when there is one) and sends the
/// request to it, up to its response's head; another endpoint when a dial fails
/// (nothing was sent then). Within `per_try` when set.
#[allow(clippy::too_many_arguments)]
async fn send_once(
    proxy: &Proxy,
    cfg: &ProxyConfig,
    ob: &OutboundListener,
    b: &Balancer,
    req: http::Request<Body>,
    // A drill probe (the answer says which zone answered), and an access log (the
    // answer says which endpoint).
    (probe, wanted): (bool, bool),
    tried: &mut Vec<Arc<EndpointState>>,
    per_try: Option<Duration>,
    key: Option<u64>,
) -> Result<http::Response<Body>, TryFailure> {
    // Every endpoint tried already (a retry): any may take it again.
    if !tried.is_empty() && b.pick(tried).is_none() {
        tried.clear();
    }
    let mut last_err = String::from("no endpoints");
    // An endpoint on probation (back from ejection, no connection) that this request
    // left to a background dial: taken only when no other endpoint is left.
    let mut probed: Option<Arc<EndpointState>> = None;
    let mut deferred = false;
    for _ in 0..=CONNECT_ATTEMPTS {
        let Some(ep) = b.pick_keyed(tried, key).or_else(|| probed.take()) else {
            break;
        };
        if !deferred && ep.on_probation() && !ep.pool.has_live() {
            // Its peer may still be silent (a blackholed zone takes TCP connections
            // but never answers): a dial of its own finds out, within the connect
            // timeout, while this request goes to another endpoint.
            if ep.start_probe() {
                match proxy.dial(cfg, ob, &ep, ALPN_H2) {
                    Some(dial) => drop(tokio::spawn(probe_endpoint(ep.clone(), dial))),
                    None => ep.probed(),
                }
            }
            deferred = true;
            tried.push(ep.clone());
            probed = Some(ep);
            continue;
        }
        // Waiting for a connection (a dial, or a free stream) is capped by
        // maxPendingRequests.
        let pending = match b.admit_pending() {
            Ok(p) => p,
            Err(max) => {
                let e = ProxyError::Overflow {
                    service: ob.service.clone(),
                    max,
                    limit: "maxPendingRequests",
                };
                return Err(TryFailure::NotSent(e, Box::new(req)));
            }
        };
        let ready = ep
            .pool
            .slot()
            .ready(|| proxy.dial(cfg, ob, &ep, ALPN_H2))
            .await;
        drop(pending);
        let ready = match ready {
            Ok(r) => r,
            Err(NotReady::NoDial) => {
                return Err(TryFailure::NotSent(
                    ProxyError::NoCertificate,
                    Box::new(req),
                ));
            }
            Err(NotReady::Failed(e)) => {
                // Nothing was sent: safe to try another endpoint. A refusal and a
                // connect timeout alike count against the endpoint.
                last_err = e.to_string();
                ep.failed();
                tried.push(ep);
                continue;
            }
        };
        ep.succeeded();
        tried.push(ep.clone());
        let mut in_flight = InFlight::new(&ep);
        let result = match per_try {
            None => ready.send(req).await.map_err(Some),
            Some(t) => match tokio::time::timeout(t, ready.send(req)).await {
                Ok(r) => r.map_err(Some),
                Err(_) => Err(None),
            },
        };
        in_flight.answered = true;
        return match result {
            Ok(r) => {
                ep.observe(in_flight.started.elapsed());
                for _ in 0..b.record(&ep, Outcome::Status(r.status().as_u16())) {
                    proxy.metrics.circuit_breaker(&ob.service, "ejected");
                }
                if r.status() == http::StatusCode::SERVICE_UNAVAILABLE
                    && r.headers().contains_key(APP_UNAVAILABLE)
                {
                    // Its app is down: eject it so the next requests go elsewhere
                    // (another endpoint, or the next zone).
                    ep.failed();
                }
                let (mut parts, body) = r.into_parts();
                if probe
                    && let Some(zone) = ep.endpoint.tags.get(causeway_api::ZONE_TAG)
                    && let Ok(v) = http::HeaderValue::from_str(zone)
                {
                    parts.headers.insert(ANSWERED_FROM_ZONE, v);
                }
                if wanted {
                    parts.extensions.insert(access_log::Upstream {
                        host: Some(format!("{}:{}", ep.endpoint.address, ep.endpoint.port)),
                        zone: ep.endpoint.tags.get(causeway_api::ZONE_TAG).cloned(),
                        route: None,
                    });
                }
                Ok(http::Response::from_parts(parts, body))
            }
            Err(e) => {
                for _ in 0..b.record(&ep, Outcome::LocalFailure) {
                    proxy.metrics.circuit_breaker(&ob.service, "ejected");
                }
                if ep.pool.reset() {
                    // Its connection was dropped for a silent peer (no PONG): eject
                    // the endpoint, so the next requests go elsewhere.
                    ep.failed();
                }
                Err(match e {
                    None => {
                        let t = per_try.expect("only a per-try timeout gives no error");
                        TryFailure::Failed(
                            ProxyError::PerTryTimeout(t),
                            retry::Outcome::PerTryTimeout,
                        )
                    }
                    Some(e) => {
                        let outcome = if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                            retry::Outcome::RefusedStream
                        } else {
                            retry::Outcome::Reset
                        };
                        TryFailure::Failed(
                            ProxyError::Upstream {
                                service: ob.service.clone(),
                                error: Box::new(e),
                            },
                            outcome,
                        )
                    }
                })
            }
        };
    }
    Err(TryFailure::NotSent(
        ProxyError::NoEndpoint {
            service: ob.service.clone(),
            reason: last_err,
        },
        Box::new(req),
    ))
}

/// Dials an endpoint on probation in the background: it is healthy again when the dial
/// works, ejected for longer when it does not. Ends within the dial's connect timeout.
async fn probe_endpoint(ep: Arc<EndpointState>, dial: Dial) {
    match ep.pool.slot().ready(|| Some(dial)).await {
        Ok(_) => ep.succeeded(),
        Err(NotReady::Failed(e)) => {
            tracing::info!(endpoint = %format!("{}:{}", ep.endpoint.address, ep.endpoint.port), error = %e, "probe failed");
            ep.failed();
        }
        Err(NotReady::NoDial) => {}
    }
    ep.probed();
}

/// The outbound counters of the answers `ep` gives: its zone is their `peer_zone`.
/// Looked up once per endpoint, so an answer costs no lookup.
fn answered_stats<'a>(
    proxy: &Proxy,
    cfg: &ProxyConfig,
    ob: &OutboundListener,
    ep: &'a EndpointState,
) -> &'a Arc<crate::metrics::HttpStats> {
    ep.answered.get_or_init(|| {
        let own = cfg.inbounds.first().map_or("", |i| i.service.as_str());
        let zone = ep.endpoint.tags.get(causeway_api::ZONE_TAG);
        proxy.metrics.http(
            "outbound",
            &ob.service,
            own,
            zone.map_or("", String::as_str),
        )
    })
}
