//! Listeners and the traffic through them. Inbound: terminate mTLS, authorize the caller's
//! SPIFFE id against the current permissions, forward to the application. Outbound: take
//! the application's connection or request, pick an endpoint, originate mTLS that checks
//! the destination's identity. Every decision reads the latest config, so a policy change
//! applies to the next request without restarting anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_api::proxy_config::{
    HealthCheck, InboundLimits, InboundListener, OutboundListener, ProxyConfig, ingress_sni,
};
use causeway_api::{Action, MtlsMode, Protocol};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::App;
use crate::error::{APP_UNAVAILABLE, ProxyError};
use crate::http::{Body, Dial, NotReady, boxed, strip_hop_by_hop};
use crate::identity::{ALPN_H2, ALPN_TCP, Identity, Revoked, peer_id};
use crate::lb::{Balancer, EndpointState};
use crate::metrics::{HttpStats, Metrics};
use crate::outlier::{Limit, Outcome};
use crate::replay::Replay;
use crate::retry;
use crate::timeout::{self, Exchange};

/// A client config and the identity (by address) it was built from.
type CachedClientConfig = (usize, Arc<rustls::ClientConfig>);

/// A connection the proxy can read and write.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Dials per try of an outbound request when endpoints refuse connections (TCP
/// connections take MeshRetry's `maxConnectAttempt`).
const CONNECT_ATTEMPTS: usize = 3;

/// The running proxy: the latest config and identity, balancers, metrics.
pub(crate) struct Proxy {
    pub(crate) config: watch::Receiver<Option<Arc<ProxyConfig>>>,
    pub(crate) identity: watch::Receiver<Option<Arc<Identity>>>,
    pub(crate) metrics: Arc<Metrics>,
    balancers: Mutex<HashMap<u16, Arc<Balancer>>>,
    client_configs: Mutex<HashMap<(String, &'static [u8]), CachedClientConfig>>,
    /// Connections to the application, per inbound port.
    apps: Mutex<HashMap<u16, Arc<App>>>,
    /// Connections in flight, for draining.
    pub(crate) active: AtomicU64,
    /// Revoked CAs of the mesh, from the config; every verifier reads it.
    pub(crate) revoked: Revoked,
    /// Fired when this proxy's own CA is revoked: renew the certificate now.
    pub(crate) renew_now: Arc<tokio::sync::Notify>,
    /// Turns true at SIGTERM: inbound connections say they are going away.
    draining: watch::Sender<bool>,
    /// Running active health checks, by outbound port and endpoint.
    health_checks: Mutex<HashMap<(u16, usize), RunningCheck>>,
    /// MeshCircuitBreaker's inbound caps, by inbound port.
    inbound_caps: Mutex<HashMap<u16, Arc<InboundCaps>>>,
}

/// One endpoint's health-check task, with the check it runs; aborted when dropped.
struct RunningCheck {
    check: HealthCheck,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request as in flight on an endpoint while alive; one that ends unanswered
/// (its request timed out and was dropped) still feeds the endpoint's latency, so a slow
/// endpoint is avoided.
struct InFlight<'a> {
    ep: &'a EndpointState,
    started: Instant,
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn new(ep: &'a EndpointState) -> InFlight<'a> {
        ep.active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            ep,
            started: Instant::now(),
            answered: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ep.active.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.ep.observe(self.started.elapsed());
        }
    }
}

/// Counts a connection as active while alive.
struct ActiveGuard(Arc<Proxy>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn service_of(spiffe: &str) -> &str {
    spiffe.rsplit('/').next().unwrap_or(spiffe)
}

/// Whether the current permissions let `peer` in; `Err` carries the reason.
pub(crate) fn authorize(
    ib: &InboundListener,
    mtls: MtlsMode,
    peer: Option<&str>,
) -> Result<(), String> {
    let Some(peer) = peer else {
        return if mtls == MtlsMode::Strict {
            Err("mutual TLS is required".into())
        } else {
            Ok(())
        };
    };
    for rule in &ib.permissions {
        if rule.source.matches(peer) {
            return match rule.action {
                Action::Allow | Action::AllowWithShadowDeny => Ok(()),
                Action::Deny => Err(format!(
                    "{peer} may not call {} (denied by MeshTrafficPermission {})",
                    ib.service,
                    rule.policies.join(", ")
                )),
            };
        }
    }
    match ib.default_action {
        Action::Deny => Err(format!(
            "{peer} may not call {}: no MeshTrafficPermission allows it",
            ib.service
        )),
        _ => Ok(()),
    }
}

impl Proxy {
    pub(crate) fn new(
        config: watch::Receiver<Option<Arc<ProxyConfig>>>,
        identity: watch::Receiver<Option<Arc<Identity>>>,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            config,
            identity,
            metrics: Arc::default(),
            balancers: Mutex::default(),
            client_configs: Mutex::default(),
            apps: Mutex::default(),
            active: AtomicU64::new(0),
            revoked: Revoked::default(),
            renew_now: Arc::default(),
            draining: watch::Sender::new(false),
            health_checks: Mutex::default(),
            inbound_caps: Mutex::default(),
        })
    }

    /// An inbound's caps, if it has any: the same ones while its settings stay, so
    /// they count across connections and config updates.
    fn inbound_caps(&self, ib: &InboundListener) -> Option<Arc<InboundCaps>> {
        let mut map = self.inbound_caps.lock().expect("inbound caps lock");
        let Some(limits) = &ib.limits else {
            map.remove(&ib.port);
            return None;
        };
        if let Some(c) = map.get(&ib.port)
            && c.limits == *limits
        {
            return Some(c.clone());
        }
        let caps = Arc::new(InboundCaps {
            limits: limits.clone(),
            connections: limits.max_connections.map(Limit::new),
            requests: limits.max_requests.map(Limit::new),
        });
        map.insert(ib.port, caps.clone());
        Some(caps)
    }

    /// Starts the drain: every inbound HTTP connection asks its peer to go elsewhere
    /// (HTTP/2 GOAWAY; HTTP/1.1 closes after the request in flight).
    pub(crate) fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Completes when the drain starts.
    fn drained(&self) -> impl Future<Output = ()> + use<> {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    pub(crate) fn current(&self) -> Option<Arc<ProxyConfig>> {
        self.config.borrow().clone()
    }

    fn guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// The connections to an inbound's application (new ones when its address changed).
    fn app(&self, ib: &InboundListener) -> Arc<App> {
        let mut map = self.apps.lock().expect("apps lock");
        match map.get(&ib.port) {
            Some(app) if app.is(&ib.app_address, ib.app_port) => app.clone(),
            _ => {
                let app = App::new(&ib.app_address, ib.app_port);
                map.insert(ib.port, app.clone());
                app
            }
        }
    }

    fn balancer(&self, ob: &OutboundListener) -> Arc<Balancer> {
        let mut map = self.balancers.lock().expect("balancers lock");
        map.entry(ob.port)
            .or_insert_with(|| Arc::new(new_balancer(ob, None)))
            .clone()
    }

    /// Applies a new revocation list: pooled connections are dropped so every peer is
    /// verified again, and a revoked own CA triggers an immediate renewal.
    async fn update_revoked(&self, cfg: &ProxyConfig) {
        let new: std::collections::HashSet<String> = cfg.revoked_cas.iter().cloned().collect();
        {
            let mut cur = self.revoked.write().expect("revoked lock");
            if *cur == new {
                return;
            }
            *cur = new.clone();
        }
        tracing::warn!(
            revoked = new.len(),
            "the mesh's revoked CAs changed; re-verifying peers"
        );
        let balancers: Vec<Arc<Balancer>> = self
            .balancers
            .lock()
            .expect("balancers lock")
            .values()
            .cloned()
            .collect();
        for b in balancers {
            b.reset_pools().await;
        }
        let own = self
            .identity
            .borrow()
            .as_ref()
            .and_then(|i| i.issuer_sha256.clone());
        if own.is_some_and(|o| new.contains(&o)) {
            self.renew_now.notify_one();
        }
    }

    /// Rebuilds balancers from a new config, keeping endpoint state, and starts or
    /// stops the endpoints' health checks to match it.
    pub(crate) fn update_balancers(self: &Arc<Self>, cfg: &ProxyConfig) {
        let mut map = self.balancers.lock().expect("balancers lock");
        let mut next = HashMap::new();
        let mut checks = self.health_checks.lock().expect("health checks lock");
        let mut wanted = HashMap::new();
        for ob in &cfg.outbounds {
            let b = new_balancer(ob, map.get(&ob.port).map(|b| &**b));
            if let Some(hc) = &ob.health_check {
                for ep in b.endpoints() {
                    let key = (ob.port, Arc::as_ptr(ep) as usize);
                    let running = match checks.remove(&key) {
                        Some(r) if r.check == *hc => r,
                        _ => RunningCheck {
                            check: hc.clone(),
                            task: tokio::spawn(crate::health_check::run(
                                Arc::downgrade(self),
                                ob.port,
                                ep.clone(),
                                hc.clone(),
                            )),
                        },
                    };
                    wanted.insert(key, running);
                }
            } else {
                // No checks (any more): the endpoints' verdicts no longer hold.
                for ep in b.endpoints() {
                    ep.set_actively_healthy(true);
                }
            }
            next.insert(ob.port, Arc::new(b));
        }
        // What is left stops: its endpoint or its check is gone.
        *checks = wanted;
        *map = next;
    }

    fn client_config(
        &self,
        expected: &str,
        alpn: &'static [u8],
    ) -> Option<Arc<rustls::ClientConfig>> {
        let id = self.identity.borrow().clone()?;
        let tag = Arc::as_ptr(&id) as usize;
        let mut map = self.client_configs.lock().expect("client configs lock");
        if let Some((t, c)) = map.get(&(expected.to_string(), alpn))
            && *t == tag
        {
            return Some(c.clone());
        }
        let c = id.client_config(expected, alpn).ok()?;
        map.insert((expected.to_string(), alpn), (tag, c.clone()));
        Some(c)
    }

    pub(crate) fn dial(
        &self,
        cfg: &ProxyConfig,
        ob: &OutboundListener,
        ep: &EndpointState,
        alpn: &'static [u8],
    ) -> Option<Dial> {
        let tls = match (cfg.mtls, &ob.identity) {
            (MtlsMode::Off, _) | (_, None) => None,
            (_, Some(expected)) => Some(self.client_config(expected, alpn)?),
        };
        Some(Dial {
            addr: ep.endpoint.address.clone(),
            port: ep.endpoint.port,
            tls,
            sni: ep
                .endpoint
                .sni
                .clone()
                .unwrap_or_else(|| ingress_sni(&ob.service, &cfg.mesh)),
            quic: ep.endpoint.quic,
            connect_timeout: ob.timeouts.connect.as_std(),
        })
    }
}

/// The balancer of an outbound, with its health checks' and circuit breaker's settings,
/// reusing the endpoint state of `old`.
fn new_balancer(ob: &OutboundListener, old: Option<&Balancer>) -> Balancer {
    let mut b = Balancer::new(ob.load_balancer, ob.failover_threshold, &ob.groups, old);
    if let Some(hc) = &ob.health_check {
        b = b.with_health_checks(hc.panic_threshold);
    }
    if let Some(cb) = &ob.circuit_breaker {
        b = b.with_circuit_breaker(cb);
    }
    // The budget's window survives config updates, whatever their settings: it counts
    // the destination's traffic.
    let budget = match old {
        Some(o) => {
            let budget = o.retry_budget();
            budget.set_policy(ob.retry.budget);
            budget
        }
        None => Arc::new(retry::Budget::new(ob.retry.budget)),
    };
    b.with_retry_budget(budget)
        .with_retry_headers(retry::HeaderRules::new(&ob.retry.http))
}

// === listeners ===

/// Keeps one listener per inbound and outbound of the current config.
pub(crate) async fn run_listeners(proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    let mut config = proxy.config.clone();
    let mut running = Listeners(HashMap::new());
    loop {
        let cfg = config.borrow_and_update().clone();
        if let Some(cfg) = cfg {
            proxy.update_balancers(&cfg);
            proxy.update_revoked(&cfg).await;
            let mut want: Vec<(bool, String, u16)> = cfg
                .inbounds
                .iter()
                .map(|i| (true, cfg.address.clone(), i.port))
                .collect();
            want.extend(
                cfg.outbounds
                    .iter()
                    .map(|o| (false, o.address.clone(), o.port)),
            );
            running.0.retain(|k, task| {
                let keep = want.contains(k) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for k in want {
                if running.0.contains_key(&k) {
                    continue;
                }
                let (p, key) = (proxy.clone(), k.clone());
                running
                    .0
                    .insert(k, tokio::spawn(async move { listen(p, key).await }));
            }
        }
        tokio::select! {
            c = config.changed() => if c.is_err() { break },
            _ = stop.changed() => break,
            // Retry listeners that failed to bind.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The listener tasks, stopped when dropped: also when the task keeping them is
/// aborted at drain, so a draining sidecar refuses new connections at once.
struct Listeners(HashMap<(bool, String, u16), tokio::task::JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

async fn listen(proxy: Arc<Proxy>, (inbound, addr, port): (bool, String, u16)) {
    let listener = match TcpListener::bind((addr.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, port, inbound, error = %e, "cannot listen; will retry");
            return;
        }
    };
    tracing::info!(%addr, port, direction = if inbound { "inbound" } else { "outbound" }, "listening");
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let _ = crate::http::tcp_keepalive(&tcp);
        let p = proxy.clone();
        tokio::spawn(async move {
            let _g = p.guard();
            let r = if inbound {
                inbound_conn(&p, port, tcp, peer).await
            } else {
                outbound_conn(&p, port, tcp).await
            };
            if let Err(e) = r {
                tracing::debug!(port, inbound, error = %e, "connection ended with an error");
            }
        });
    }
}

// === inbound ===

/// MeshCircuitBreaker's caps on one inbound: caller connections and requests to the
/// application at once.
struct InboundCaps {
    limits: InboundLimits,
    connections: Option<Limit>,
    requests: Option<Limit>,
}

async fn inbound_conn(
    proxy: &Arc<Proxy>,
    port: u16,
    tcp: TcpStream,
    _from: SocketAddr,
) -> anyhow::Result<()> {
    let cfg = proxy
        .current()
        .ok_or_else(|| anyhow::anyhow!("no config yet"))?;
    let ib = cfg
        .inbounds
        .iter()
        .find(|i| i.port == port)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no inbound on port {port}"))?;
    // maxConnections: over it, the connection is closed before its handshake.
    let caps = proxy.inbound_caps(&ib);
    let _admitted = match caps.as_ref().and_then(|c| c.connections.as_ref()) {
        None => None,
        Some(limit) => match limit.admit() {
            Some(a) => Some(a),
            None => {
                proxy
                    .metrics
                    .circuit_breaker(&ib.service, "inbound_connection_overflow");
                anyhow::bail!(
                    "{} has its MeshCircuitBreaker maxConnections open already; connection closed",
                    ib.service
                );
            }
        },
    };
    let tls = match cfg.mtls {
        MtlsMode::Off => false,
        MtlsMode::Strict => true,
        MtlsMode::Permissive => {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut b)).await??;
            n == 1 && b[0] == 0x16
        }
    };
    let (stream, peer, peer_cas, h2): (Box<dyn Stream>, Option<String>, Vec<String>, bool) = if tls
    {
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
        let peer = peer_id(certs);
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
    // The caller's timeouts, now that its identity is known.
    let timeouts = *ib.timeouts_for(peer.as_deref());
    if ib.protocol == Protocol::Tcp {
        if let Err(reason) = authorize(&ib, cfg.mtls, peer.as_deref()) {
            tracing::info!(service = %ib.service, %reason, "TCP connection denied");
            proxy.metrics.denied(
                "inbound",
                &ib.service,
                peer.as_deref().map(service_of).unwrap_or(""),
            );
            return Ok(());
        }
        let app = crate::http::tcp_connect(&ib.app_address, ib.app_port, timeouts.connect.as_std())
            .await?;
        return pipe(
            proxy,
            "inbound",
            &ib.service,
            peer.as_deref().map(service_of).unwrap_or(""),
            stream,
            app,
            timeout::on(timeouts.idle),
        )
        .await;
    }
    let stats = proxy.metrics.http(
        "inbound",
        &ib.service,
        peer.as_deref().map(service_of).unwrap_or(""),
    );
    let conn = Arc::new(InboundConn {
        proxy: proxy.clone(),
        port,
        peer_header: peer
            .as_deref()
            .and_then(|p| http::HeaderValue::from_str(p).ok()),
        peer,
        peer_cas,
        stats,
        app: Mutex::new(proxy.app(&ib)),
        caps: caps.clone(),
        service: ib.service.clone(),
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
                async move { inbound_request(&conn, req).await }
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
            Ok::<_, std::convert::Infallible>(inbound_request(&conn, req).await)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper counts from when the connection waits for a request (not from its first
    // byte, as Envoy does): a keep-alive connection idle that long is closed too.
    if let Some(d) = timeout::on(timeouts.request_headers) {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(d);
    }
    let mut served = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), svc));
    tokio::select! {
        r = served.as_mut() => return r.map_err(|e| anyhow::anyhow!("{e}")),
        () = drain => served.as_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// What every request of one inbound connection shares.
struct InboundConn {
    proxy: Arc<Proxy>,
    port: u16,
    /// The caller's SPIFFE id, and as the header the app receives.
    peer: Option<String>,
    peer_header: Option<http::HeaderValue>,
    /// The caller's CA chain (SHA-256), checked against revocations at each request.
    peer_cas: Vec<String>,
    stats: Arc<HttpStats>,
    app: Mutex<Arc<App>>,
    /// MeshCircuitBreaker's caps when the connection came (maxRequests).
    caps: Option<Arc<InboundCaps>>,
    service: String,
}

/// A request authorized and shaped for the application, and how to send it.
struct Prepared {
    app: Arc<App>,
    req: http::Request<Body>,
    /// The application speaks HTTP/2 (`http2`, `grpc`), else HTTP/1.1.
    h2: bool,
    exchange: Exchange,
    connect_timeout: Duration,
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
    authorize(ib, cfg.mtls, conn.peer.as_deref()).map_err(ProxyError::Denied)?;
    let app = {
        let mut app = conn.app.lock().expect("app lock");
        if !app.is(&ib.app_address, ib.app_port) {
            *app = proxy.app(ib);
        }
        app.clone()
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = &conn.peer_header {
        parts.headers.insert("x-causeway-peer", v.clone());
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
    Ok(Prepared {
        app,
        req: http::Request::from_parts(parts, body),
        h2,
        exchange: Exchange::start(ib.timeouts_for(conn.peer.as_deref()), started),
        connect_timeout: ib.timeouts_for(conn.peer.as_deref()).connect.as_std(),
    })
}

async fn inbound_request(conn: &InboundConn, req: http::Request<Body>) -> http::Response<Body> {
    let started = Instant::now();
    let stats = &conn.stats;
    // maxRequests: over it, 503 overflow at once.
    let _admitted = match conn.caps.as_ref().and_then(|c| c.requests.as_ref()) {
        None => None,
        Some(limit) => match limit.admit() {
            Some(a) => Some(a),
            None => {
                let e = ProxyError::Overflow {
                    service: conn.service.clone(),
                    max: limit.max(),
                    limit: "maxRequests",
                };
                return answer_error(stats, started, e);
            }
        },
    };
    let Prepared {
        app,
        req,
        h2,
        exchange,
        connect_timeout,
    } = match inbound_prepare(conn, req, started) {
        Ok(prepared) => prepared,
        Err(e) => return answer_error(stats, started, e),
    };
    // Boxed: the exchange's state would be most of this future's size, and the
    // connection moves the future (into its set of requests) before polling it. The
    // request timeout's timer lives in the same box.
    let resp = if h2 {
        Box::pin(exchange.head(async {
            app.send_http2(req, connect_timeout)
                .await
                .map_err(ProxyError::from)
        }))
        .await
    } else {
        Box::pin(exchange.head(async {
            app.send_http1(req, connect_timeout)
                .await
                .map_err(ProxyError::from)
        }))
        .await
    };
    match resp {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            stats.record(parts.status.as_u16(), started.elapsed());
            http::Response::from_parts(parts, exchange.body(body))
        }
        Err(e) => answer_error(stats, started, e),
    }
}

/// The proxy's own answer for `e`, counted in `stats`.
fn answer_error(stats: &HttpStats, started: Instant, e: ProxyError) -> http::Response<Body> {
    stats.error(&e);
    let r = e.into_response();
    stats.record(r.status().as_u16(), started.elapsed());
    r
}

/// Sent by a failover drill's probe to its own outbound: answer with
/// [`ANSWERED_FROM_ZONE`].
pub(crate) const PROBE: http::HeaderName = http::HeaderName::from_static("x-causeway-probe");
/// The zone of the endpoint that answered a probe's request.
pub(crate) const ANSWERED_FROM_ZONE: http::HeaderName =
    http::HeaderName::from_static("x-causeway-zone");

// === outbound ===

async fn outbound_conn(proxy: &Arc<Proxy>, port: u16, tcp: TcpStream) -> anyhow::Result<()> {
    let cfg = proxy
        .current()
        .ok_or_else(|| anyhow::anyhow!("no config yet"))?;
    let ob = cfg
        .outbounds
        .iter()
        .find(|o| o.port == port)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no outbound on port {port}"))?;
    let own = cfg
        .inbounds
        .first()
        .map(|i| i.service.clone())
        .unwrap_or_default();
    if ob.protocol == Protocol::Tcp {
        let b = proxy.balancer(&ob);
        let Ok(_admitted) = b.admit_connection() else {
            proxy.metrics.circuit_breaker(&ob.service, "tcp_overflow");
            anyhow::bail!(
                "{} has its MeshCircuitBreaker maxConnections open already; connection closed",
                ob.service
            );
        };
        let mut tried = Vec::new();
        for _ in 0..ob.retry.tcp_connect_attempts.max(1) {
            let Some(ep) = b.pick(&tried).or_else(|| b.pick(&[])) else {
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
                    return pipe(proxy, "outbound", &ob.service, &own, tcp, up, idle).await;
                }
                Err(e) => {
                    // A refusal and a connect timeout alike count against the endpoint.
                    tracing::info!(service = %ob.service, endpoint = %format!("{}:{}", dial.addr, dial.port), error = %e, "connect failed");
                    ep.failed();
                }
            }
        }
        anyhow::bail!("no endpoint of {} accepted a connection", ob.service);
    }
    let p = proxy.clone();
    let stats = proxy.metrics.http("outbound", &ob.service, &own);
    let svc = hyper::service::service_fn(move |req| {
        let p = p.clone();
        let stats = stats.clone();
        async move { Ok::<_, std::convert::Infallible>(outbound_request(&p, port, &stats, req).await) }
    });
    // Idle: no byte either way between the application and us for that long drains the
    // connection (closes it, or GOAWAY for an HTTP/2 application).
    let idle = timeout::on(ob.timeouts.idle);
    let (io, clock) = timeout::watch(tcp, idle);
    let drain = timeout::drain_when(std::future::pending(), None, clock, idle);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut served = std::pin::pin!(builder.serve_connection(TokioIo::new(io), svc));
    tokio::select! {
        r = served.as_mut() => return r.map_err(|e| anyhow::anyhow!("{e}")),
        () = drain => served.as_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn outbound_request(
    proxy: &Proxy,
    port: u16,
    stats: &HttpStats,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let started = Instant::now();
    let Some(cfg) = proxy.current() else {
        return answer_error(stats, started, ProxyError::NoConfig);
    };
    let Some(ob) = cfg.outbounds.iter().find(|o| o.port == port) else {
        return answer_error(stats, started, ProxyError::ListenerRemoved("outbound"));
    };
    let exchange = Exchange::start(&ob.timeouts, started);
    let (mut parts, body) = req.into_parts();
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
    parts.version = http::Version::HTTP_2;
    parts.headers.remove(http::header::HOST);
    strip_hop_by_hop(&mut parts.headers);
    // A drill probe asks which zone answered; the header does not travel upstream.
    let probe = parts.headers.remove(PROBE).is_some();
    let req = http::Request::from_parts(parts, boxed(body));
    match exchange
        .head(outbound_exchange(
            proxy,
            &cfg,
            ob,
            req,
            probe,
            exchange.deadline(),
        ))
        .await
    {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            stats.record(parts.status.as_u16(), started.elapsed());
            http::Response::from_parts(parts, exchange.body(body))
        }
        Err(e) => answer_error(stats, started, e),
    }
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
fn is_grpc(headers: &http::HeaderMap) -> bool {
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
async fn outbound_exchange(
    proxy: &Proxy,
    cfg: &ProxyConfig,
    ob: &OutboundListener,
    req: http::Request<Body>,
    probe: bool,
    deadline: Option<Instant>,
) -> Result<http::Response<Body>, ProxyError> {
    let b = proxy.balancer(ob);
    let _admitted = b.admit_request().map_err(|max| ProxyError::Overflow {
        service: ob.service.clone(),
        max,
        limit: "maxRequests",
    })?;
    let policy = retry::Policy::of(&ob.retry, b.retry_headers(), is_grpc(req.headers()));
    let retries = policy.num_retries(req.headers());
    // Every request adds to the budget, retried or not: it is a share of the
    // destination's traffic.
    let budget = b.retry_budget();
    budget.deposit(Instant::now());
    let mut tried = Vec::new();
    if retries == 0 {
        return send_once(proxy, cfg, ob, &b, req, probe, &mut tried, None)
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
            &b,
            req,
            probe,
            &mut tried,
            policy.per_try_timeout(),
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
    probe: bool,
    tried: &mut Vec<Arc<EndpointState>>,
    per_try: Option<Duration>,
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
        let Some(ep) = b.pick(tried).or_else(|| probed.take()) else {
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

/// Copies both ways until both sides close, or until no byte moved either way for
/// `idle` (both are closed then); counts bytes.
async fn pipe(
    proxy: &Proxy,
    direction: &'static str,
    service: &str,
    peer: &str,
    a: impl Stream,
    b: impl Stream,
    idle: Option<Duration>,
) -> anyhow::Result<()> {
    let (rx, tx, r) = timeout::copy_until_idle(a, b, idle).await;
    proxy.metrics.tcp(direction, service, peer, rx, tx);
    r.map_err(Into::into)
}

#[cfg(test)]
mod tests;
