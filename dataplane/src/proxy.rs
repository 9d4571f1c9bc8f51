//! Listeners and the traffic through them. Inbound: terminate mTLS, authorize the caller's
//! SPIFFE id against the current permissions, forward to the application. Outbound: take
//! the application's connection or request, pick an endpoint, originate mTLS that checks
//! the destination's identity. Every decision reads the latest config, so a policy change
//! applies to the next request without restarting anything.
//!
//! This module holds what both directions share (the proxy's state, its balancers and
//! dials, the listeners); the stacks are in [`inbound`] and [`outbound`], and each
//! policy's logic in its own module ([`crate::timeout`], [`crate::retry`],
//! [`crate::outlier`], [`crate::lb`], [`crate::health_check`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_api::proxy_config::{
    HealthCheck, HttpRoute, InboundListener, OutboundKey, OutboundListener, Peer, ProxyConfig,
    Retry, RouteBackend, RouteFilter, ingress_sni,
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
use crate::identity::{ALPN_H2, ALPN_TCP, Identity, Revoked};
use crate::lb::{Balancer, EndpointState};
use crate::metrics::{HttpStats, Metrics};
use crate::outlier::Outcome;
use crate::replay::Replay;
use crate::retry;
use crate::timeout::{self, Exchange};

/// A client config and the identity it was built from. The identity itself is kept, not
/// its address: a renewed identity can be allocated where a dropped one was, and a
/// config cached by address would then present the dropped certificate (signed by a
/// root the mesh may have stopped trusting).
type CachedClientConfig = (Arc<Identity>, Arc<rustls::ClientConfig>);

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
    balancers: Mutex<HashMap<OutboundKey, Arc<Balancer>>>,
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
    /// Connection caps: inbound listeners together, outbound ones together.
    gates: [Arc<causeway_listen::Gate>; 2],
    /// Running active health checks, by outbound (port or virtual IP) and endpoint.
    health_checks: Mutex<HashMap<(OutboundKey, usize), RunningCheck>>,
    /// Route backends (MeshTCPRoute's and MeshHTTPRoute's, mirrors too), by outbound
    /// and backend (service and tags): each as a destination of its own (its
    /// endpoints and identity) with its balancer, shared by every route that sends
    /// there, so outlier detection sees all of an endpoint's traffic.
    route_balancers: Mutex<HashMap<(OutboundKey, String), RouteTarget>>,
    /// Mirrored copies in flight.
    mirrors: AtomicU64,
    /// MeshHTTPRoute's routes, compiled, by outbound.
    route_tables: Mutex<HashMap<OutboundKey, Arc<crate::route::RouteTable>>>,
    /// MeshRateLimit's buckets, by inbound port.
    rate_limits: Mutex<HashMap<u16, Arc<crate::rate_limit::InboundRateLimits>>>,
    /// MeshCircuitBreaker's inbound caps, by inbound port.
    inbound_caps: Mutex<HashMap<u16, Arc<InboundBreakers>>>,
    /// MeshAccessLog's loggers, by listener.
    pub(crate) access_logs: crate::access_log::AccessLogs,
    /// MeshTrace's tracer.
    pub(crate) traces: crate::trace::Traces,
    /// The resolvers the DNS server forwards to (`--dns-upstream`); unset or empty:
    /// the host's (`/etc/resolv.conf`).
    pub(crate) dns_upstreams: std::sync::OnceLock<Vec<SocketAddr>>,
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

/// Whether the current permissions let `peer` in; `Err` carries the reason. `Ok(Some)`
/// lets it in under `AllowWithShadowDeny`, with what a Deny would have said (the
/// caller logs and counts it).
pub(crate) fn authorize(
    ib: &InboundListener,
    mtls: MtlsMode,
    peer: Option<&Peer>,
) -> Result<Option<String>, String> {
    let Some(peer) = peer else {
        return match mtls {
            MtlsMode::Strict => Err("mutual TLS is required".into()),
            MtlsMode::Off => Ok(None),
            // Permissive: a plaintext caller is the anonymous identity. Only a rule for
            // every caller covers it; else the default (deny) applies, so permissions
            // hold for plaintext callers as for any other.
            MtlsMode::Permissive => anonymous(ib),
        };
    };
    for rule in &ib.permissions {
        if rule.source.matches(peer) {
            let peer = &peer.id;
            return match rule.action {
                Action::Allow => Ok(None),
                Action::AllowWithShadowDeny => Ok(Some(format!(
                    "{peer} would be denied calling {} (AllowWithShadowDeny in MeshTrafficPermission {})",
                    ib.service,
                    rule.policies.join(", ")
                ))),
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
            "{} may not call {}: no MeshTrafficPermission allows it",
            peer.id, ib.service
        )),
        _ => Ok(None),
    }
}

/// The decision for a plaintext caller in a permissive mesh (see [`authorize`]).
fn anonymous(ib: &InboundListener) -> Result<Option<String>, String> {
    let rule = ib
        .permissions
        .iter()
        .find(|r| r.source == causeway_api::proxy_config::SourceMatch::Any);
    match rule.map(|r| (r.action, r)) {
        Some((Action::Allow, _)) => Ok(None),
        Some((Action::AllowWithShadowDeny, r)) => Ok(Some(format!(
            "a plaintext caller would be denied calling {} (AllowWithShadowDeny in MeshTrafficPermission {})",
            ib.service,
            r.policies.join(", ")
        ))),
        Some((Action::Deny, r)) => Err(format!(
            "a plaintext caller may not call {} (denied by MeshTrafficPermission {})",
            ib.service,
            r.policies.join(", ")
        )),
        None if ib.default_action == Action::Deny => Err(format!(
            "a plaintext caller may not call {}: no MeshTrafficPermission allows every caller",
            ib.service
        )),
        None => Ok(None),
    }
}

/// Logs and counts a call let in under `AllowWithShadowDeny`.
fn shadow_denied(proxy: &Proxy, service: &str, peer: Option<&Peer>, reason: &str) {
    tracing::info!(%service, %reason, "shadow deny");
    proxy.metrics.shadow_denied(service, peer_service(peer));
}

/// The service of a caller, for metric labels ("" without an identity).
fn peer_service(peer: Option<&Peer>) -> &str {
    peer.map(|p| service_of(&p.id)).unwrap_or("")
}

/// The caller's zone, from its certificate (its sidecar's zone signed it); empty when
/// unknown.
fn peer_zone(peer: Option<&Peer>) -> &str {
    peer.and_then(|p| p.tags.get(causeway_api::ZONE_TAG))
        .map_or("", String::as_str)
}

impl Proxy {
    pub(crate) fn new(
        config: watch::Receiver<Option<Arc<ProxyConfig>>>,
        identity: watch::Receiver<Option<Arc<Identity>>>,
        max_connections: usize,
    ) -> Arc<Proxy> {
        let gate = || causeway_listen::Gate::new(causeway_listen::Limits::total(max_connections));
        let metrics = Arc::<Metrics>::default();
        Arc::new(Proxy {
            config,
            identity,
            access_logs: crate::access_log::AccessLogs::new(metrics.clone()),
            traces: crate::trace::Traces::new(metrics.clone()),
            metrics,
            balancers: Mutex::default(),
            client_configs: Mutex::default(),
            apps: Mutex::default(),
            active: AtomicU64::new(0),
            revoked: Revoked::default(),
            renew_now: Arc::default(),
            draining: watch::Sender::new(false),
            gates: [gate(), gate()],
            health_checks: Mutex::default(),
            inbound_caps: Mutex::default(),
            rate_limits: Mutex::default(),
            route_balancers: Mutex::default(),
            route_tables: Mutex::default(),
            mirrors: AtomicU64::new(0),
            dns_upstreams: std::sync::OnceLock::new(),
        })
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

    /// Where one connection or request to `ob` goes: with a MeshTCPRoute, a backend
    /// chosen by weight, as a destination of its own; `None` without one.
    fn route(&self, ob: &OutboundListener) -> Option<RouteTarget> {
        let backend = pick_backend(&ob.backends)?;
        Some(self.backend_target(ob, backend))
    }

    /// A route backend of `ob` as a destination, with its balancer.
    fn backend_target(&self, ob: &OutboundListener, backend: &RouteBackend) -> RouteTarget {
        let mut map = self.route_balancers.lock().expect("route balancers lock");
        map.entry((ob.key(), backend_key(backend)))
            .or_insert_with(|| {
                let listener = Arc::new(backend_listener(ob, backend));
                let b = Arc::new(new_balancer(&listener, None));
                (listener, b)
            })
            .clone()
    }

    /// The MeshHTTPRoutes of the outbound `key`, compiled; `None` without any.
    fn route_table(&self, key: OutboundKey) -> Option<Arc<crate::route::RouteTable>> {
        self.route_tables
            .lock()
            .expect("route tables lock")
            .get(&key)
            .cloned()
    }

    fn balancer(&self, ob: &OutboundListener) -> Arc<Balancer> {
        let mut map = self.balancers.lock().expect("balancers lock");
        map.entry(ob.key())
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

    /// Renews the certificate at once when the mesh's roots or the zone's intermediate CA
    /// moved on (a root CA rotation, a renewed intermediate): the renewal brings a
    /// certificate from the current intermediate and the current trust bundle.
    fn follow_mesh_ca(&self, cfg: &ProxyConfig) {
        let Some(id) = self.identity.borrow().clone() else {
            return;
        };
        let mut want = cfg.trusted_roots.clone();
        want.sort();
        let roots_moved = !want.is_empty() && want != id.trusted_sha256;
        let issuer_moved = cfg
            .issuer
            .as_ref()
            .is_some_and(|i| id.issuer_sha256.as_ref() != Some(i));
        if roots_moved || issuer_moved {
            tracing::info!(
                roots_moved,
                issuer_moved,
                "the mesh's CA moved on; renewing the workload certificate now"
            );
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
            let b = new_balancer(ob, map.get(&ob.key()).map(|b| &**b));
            if let Some(hc) = &ob.health_check {
                for ep in b.endpoints() {
                    let key = (ob.key(), Arc::as_ptr(ep) as usize);
                    let running = match checks.remove(&key) {
                        Some(r) if r.check == *hc => r,
                        _ => RunningCheck {
                            check: hc.clone(),
                            task: tokio::spawn(crate::health_check::run(
                                Arc::downgrade(self),
                                ob.key(),
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
            next.insert(ob.key(), Arc::new(b));
        }
        // What is left stops: its endpoint or its check is gone.
        *checks = wanted;
        *map = next;
        drop(map);
        let mut routes = self.route_balancers.lock().expect("route balancers lock");
        let mut next = HashMap::new();
        for ob in &cfg.outbounds {
            for backend in route_backends(ob) {
                let key = (ob.key(), backend_key(backend));
                if next.contains_key(&key) {
                    continue;
                }
                let listener = Arc::new(backend_listener(ob, backend));
                let old = routes.get(&key).map(|(_, b)| &**b);
                let b = Arc::new(new_balancer(&listener, old));
                next.insert(key, (listener, b));
            }
        }
        *routes = next.clone();
        drop(routes);
        *self.route_tables.lock().expect("route tables lock") = cfg
            .outbounds
            .iter()
            .filter(|ob| !ob.http_routes.is_empty())
            .map(|ob| {
                let way = |route: &str, backend: &RouteBackend| {
                    let target = next.get(&(ob.key(), backend_key(backend)))?.clone();
                    let counter = self
                        .metrics
                        .route_counter(&ob.service, route, &backend.service);
                    Some(crate::route::Way::new(backend.weight, target, counter))
                };
                (
                    ob.key(),
                    Arc::new(crate::route::RouteTable::new(&ob.http_routes, way)),
                )
            })
            .collect();
    }

    fn client_config(
        &self,
        expected: &str,
        alpn: &'static [u8],
    ) -> Option<Arc<rustls::ClientConfig>> {
        let id = self.identity.borrow().clone()?;
        let mut map = self.client_configs.lock().expect("client configs lock");
        if let Some((built_from, c)) = map.get(&(expected.to_string(), alpn))
            && Arc::ptr_eq(built_from, &id)
        {
            return Some(c.clone());
        }
        let c = id.client_config(expected, alpn).ok()?;
        map.insert((expected.to_string(), alpn), (id, c.clone()));
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

/// A route backend as a destination of its own, and its balancer.
pub(crate) type RouteTarget = (Arc<OutboundListener>, Arc<Balancer>);

/// A backend's identity among an outbound's backends: its service and tags.
fn backend_key(b: &RouteBackend) -> String {
    let mut key = b.service.clone();
    for (k, v) in &b.tags {
        key.push_str(&format!("\n{k}={v}"));
    }
    key
}

/// Every backend an outbound's routes send to: MeshTCPRoute's, MeshHTTPRoute's and
/// their mirrors'.
fn route_backends(ob: &OutboundListener) -> impl Iterator<Item = &RouteBackend> {
    let http = ob.http_routes.iter().flat_map(|r| {
        r.backends
            .iter()
            .chain(r.filters.iter().filter_map(|f| match f {
                RouteFilter::Mirror { backend, .. } => Some(backend),
                _ => None,
            }))
    });
    ob.backends.iter().chain(http)
}

/// One of `backends`, chosen at random by weight; `None` when there are none or every
/// weight is 0.
fn pick_backend(backends: &[RouteBackend]) -> Option<&RouteBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rand::random_range(0..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if pick < w {
            return true;
        }
        pick -= w;
        false
    })
}

/// A route backend as a destination: the outbound's settings (timeouts, retries,
/// circuit breaking) with the backend's service, identity and endpoints. Health checks
/// stay with the destination's own endpoints.
fn backend_listener(ob: &OutboundListener, backend: &RouteBackend) -> OutboundListener {
    OutboundListener {
        service: backend.service.clone(),
        identity: backend.identity.clone(),
        groups: backend.groups.clone(),
        backends: Vec::new(),
        http_routes: Vec::new(),
        access_log: Vec::new(),
        health_check: None,
        ..ob.clone()
    }
}

/// The balancer of an outbound, with its health checks' and circuit breaker's settings,
/// reusing the endpoint state of `old`.
fn new_balancer(ob: &OutboundListener, old: Option<&Balancer>) -> Balancer {
    let mut b = Balancer::new(ob.load_balancer, ob.failover_threshold, &ob.groups, old)
        .with_choices(ob.choice_count, ob.ewma_decay.as_std());
    if let Some(hc) = &ob.health_check {
        b = b.with_health_checks(hc.panic_threshold);
    }
    if let Some(cb) = &ob.circuit_breaker {
        b = b.with_circuit_breaker(cb);
    }
    if let Some(ring) = &ob.ring_hash {
        b = b.with_ring(ring);
    }
    if let Some(maglev) = &ob.maglev {
        b = b.with_maglev(maglev);
    }
    // MeshTimeout maxConnectionDuration: pooled connections to the endpoints age out.
    let max_age = timeout::on(ob.timeouts.max_connection_duration);
    for e in b.endpoints() {
        e.pool.set_max_age(max_age);
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
    // MeshMetric's Prometheus endpoints, by address, port, path and mTLS.
    let mut metrics = Listeners(HashMap::new());
    // MeshMetric's OTLP pushes, one task per collector and interval.
    let mut pushes: Listeners<causeway_api::proxy_config::MetricsPush> = Listeners(HashMap::new());
    loop {
        let cfg = config.borrow_and_update().clone();
        if let Some(cfg) = cfg {
            proxy.update_balancers(&cfg);
            if cfg.metrics_content.include_unused {
                // MeshMetric includeUnused: every destination reported from the start.
                let own = cfg.inbounds.first().map_or("", |i| i.service.as_str());
                for ob in &cfg.outbounds {
                    proxy.metrics.http("outbound", &ob.service, own, "");
                }
            }
            proxy.access_logs.update(&cfg);
            proxy.traces.update(&cfg);
            proxy.update_revoked(&cfg).await;
            proxy.follow_mesh_ca(&cfg);
            let mut want: Vec<(Side, String, u16)> = cfg
                .inbounds
                .iter()
                .map(|i| (Side::Inbound, cfg.address.clone(), i.port))
                .collect();
            // An implicit outbound has no listener: its connections come redirected.
            want.extend(
                cfg.outbounds
                    .iter()
                    .filter(|o| o.vip.is_none())
                    .map(|o| (Side::Outbound, o.address.clone(), o.port)),
            );
            if let Some(t) = &cfg.transparent {
                // Where the redirect sends IPv4 and IPv6 connections.
                for loopback in ["127.0.0.1", "::1"] {
                    want.push((Side::Transparent, loopback.into(), t.port));
                    if let Some(dns) = t.dns_port {
                        want.push((Side::Dns, loopback.into(), dns));
                    }
                }
            }
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
                let task = match k.0 {
                    Side::Dns => match k.1.parse::<std::net::IpAddr>() {
                        Ok(ip) => tokio::spawn(crate::dns::serve(p, SocketAddr::new(ip, k.2))),
                        Err(_) => continue,
                    },
                    _ => tokio::spawn(async move { listen(p, key).await }),
                };
                running.0.insert(k, task);
            }
            let want: Vec<(String, u16, String, bool)> = cfg
                .metrics_endpoints
                .iter()
                .map(|e| (cfg.address.clone(), e.port, e.path.clone(), e.mtls))
                .collect();
            metrics.0.retain(|k, task| {
                let keep = want.contains(k) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for k in want {
                if let std::collections::hash_map::Entry::Vacant(slot) = metrics.0.entry(k) {
                    let (addr, port, path, mtls) = slot.key().clone();
                    let task = crate::admin::serve_metrics(proxy.clone(), addr, port, path, mtls);
                    slot.insert(tokio::spawn(task));
                }
            }
            pushes.0.retain(|k, task| {
                let keep = cfg.metrics_push.contains(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            for target in &cfg.metrics_push {
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    pushes.0.entry(target.clone())
                {
                    let task = crate::metrics_push::push(proxy.clone(), target.clone());
                    slot.insert(tokio::spawn(task));
                }
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

/// The server side of an HTTP/1.1 or h2c listener (an application's outbound, a
/// plaintext or HTTP/1.1 inbound), with the same header budget over both protocols
/// ([`crate::http::MAX_HEADER_BYTES`]): past it, 431.
pub(crate) fn http_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(crate::http::MAX_HEADER_BYTES);
    builder
        .http2()
        .max_header_list_size(crate::http::MAX_HEADER_BYTES as u32);
    builder
}

/// What a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    /// Mesh traffic to an inbound of the workload.
    Inbound,
    /// The application's connections to one explicit outbound.
    Outbound,
    /// The application's redirected connections, to any destination (transparent
    /// proxying).
    Transparent,
    /// The application's redirected DNS queries, UDP and TCP.
    Dns,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Inbound => "inbound",
            Side::Outbound => "outbound",
            Side::Transparent => "transparent",
            Side::Dns => "dns",
        }
    }
}

/// The listener tasks, stopped when dropped: also when the task keeping them is
/// aborted at drain, so a draining sidecar refuses new connections at once.
struct Listeners<K = (Side, String, u16)>(HashMap<K, tokio::task::JoinHandle<()>>);

impl<K> Drop for Listeners<K> {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

async fn listen(proxy: Arc<Proxy>, (side, addr, port): (Side, String, u16)) {
    let listener = match TcpListener::bind((addr.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, port, side = side.name(), error = %e, "cannot listen; will retry");
            return;
        }
    };
    tracing::info!(%addr, port, side = side.name(), "listening");
    let inbound = side == Side::Inbound;
    let direction = usize::from(!inbound);
    let gate = proxy.gates[direction].clone();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(port, inbound, error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match gate.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Closed unserved (dropped here): the cap protects what is open.
                proxy.metrics.connections_refused[direction].fetch_add(1, Ordering::Relaxed);
                gate.note_refusal(if inbound { "inbound" } else { "outbound" }, peer.ip(), why);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let _ = crate::http::tcp_keepalive(&tcp);
        let p = proxy.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _g = p.guard();
            let r = match side {
                Side::Inbound => inbound_conn(&p, port, tcp, peer).await,
                Side::Outbound => {
                    let key = OutboundKey { vip: None, port };
                    outbound_conn(&p, key, tcp, false).await
                }
                Side::Transparent => transparent::redirected_conn(&p, tcp).await,
                // Served by crate::dns, not here.
                Side::Dns => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!(port, inbound, error = %e, "connection ended with an error");
            }
        });
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

/// Copies both ways until both sides close, or until no byte moved either way for
/// `idle` (both are closed then); counts the connection, and its bytes as they move.
#[allow(clippy::too_many_arguments)]
async fn pipe(
    proxy: &Proxy,
    direction: &'static str,
    service: &str,
    (peer, peer_zone): (&str, &str),
    a: impl Stream,
    b: impl Stream,
    idle: Option<Duration>,
    log: Option<crate::access_log::PendingTcp>,
) -> anyhow::Result<()> {
    let live = proxy.metrics.tcp(direction, service, peer, peer_zone);
    let (rx, tx, r) = timeout::copy_until_idle(a, b, idle, Some(live)).await;
    if let Some(log) = log {
        let flags = r.as_ref().err().map(|e| format!("connection_error: {e}"));
        log.finish(rx, tx, flags);
    }
    r.map_err(Into::into)
}

mod inbound;
mod outbound;
pub(crate) mod report;
mod transparent;

use crate::inbound_breaker::InboundBreakers;
use inbound::inbound_conn;
use outbound::outbound_conn;

#[cfg(test)]
mod tests;
