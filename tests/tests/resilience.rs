//! End to end: the resilience policies' fields that only had in-process tests, enforced
//! by real sidecars configured by a real zone control plane: MeshHealthCheck's gRPC
//! check, MeshTimeout's `connectionTimeout`, `requestHeadersTimeout` and
//! `maxConnectionDuration`, MeshCircuitBreaker's `maxPendingRequests` and its
//! success-rate outlier detector.
//!
//! Each test first shows what happens without the field (so it fails when the sidecar
//! ignores it), then with it, and measures what a caller sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use causeway_tests::mesh::{
    MeshFixture, WAIT, answering, dataplane, ejections, failures, instances,
};
use causeway_tests::{Proc, admin_config, admin_metric, eventually, free_addr, plain_http, put};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Puts a policy through the global API at its path (`type` in lower case, plural).
async fn apply(fx: &MeshFixture, plural: &str, policy: Value) -> anyhow::Result<()> {
    let name = policy["name"]
        .as_str()
        .context("a policy name")?
        .to_string();
    put(&fx.c, &format!("/meshes/default/{plural}/{name}"), &policy).await
}

/// A Mesh-wide MeshTrafficPermission for every caller (plaintext ones included, in a
/// permissive mesh): `action`. Per-service permissions rank above it.
async fn every_caller(fx: &MeshFixture, action: &str) -> anyhow::Result<()> {
    apply(
        fx,
        "meshtrafficpermissions",
        json!({
        "type": "MeshTrafficPermission", "mesh": "default", "name": "every-caller",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": action}}]}}),
    )
    .await
}

/// Deletes a resource through the global API.
async fn delete(fx: &MeshFixture, path: &str) -> anyhow::Result<()> {
    let (s, v) = fx.c.call_retry(reqwest::Method::DELETE, path, None).await?;
    anyhow::ensure!(s.is_success(), "DELETE {path}: {s} {v}");
    Ok(())
}

/// Waits until the proxy on `admin` has a config for which `check` holds.
async fn config_has(
    what: &str,
    admin: std::net::SocketAddr,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let http = plain_http();
    eventually(what, WAIT, || async {
        let cfg = admin_config(&http, admin).await?;
        check(&cfg["config"]).then_some(())
    })
    .await
}

/// Round robin to `service`, so every instance takes its share whatever its latency.
async fn round_robin(fx: &MeshFixture, service: &str) -> anyhow::Result<()> {
    apply(fx, "meshloadbalancingstrategies", json!({
        "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": format!("rr-{service}"),
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": service},
                 "default": {"loadBalancer": {"type": "RoundRobin"}}}]}})).await
}

/// No retries to `service`, so every failure shows.
async fn no_retries(fx: &MeshFixture, service: &str) -> anyhow::Result<()> {
    apply(fx, "meshretries", json!({
        "type": "MeshRetry", "mesh": "default", "name": format!("no-retries-{service}"),
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": service},
                 "default": {"http": {"numRetries": 0}}}]}})).await
}

// === MeshHealthCheck: gRPC ===

/// One `grpc.health.v1.Health/Check` an application received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckSeen {
    /// `HealthCheckRequest.service`.
    service: String,
    authority: String,
}

/// A gRPC application in the test process (h2c), instance `name`:
/// `grpc.health.v1.Health/Check` answers SERVING while `serving` holds, NOT_SERVING
/// otherwise (`grpc-status` 0 either way, as a health service does), and records each
/// check in `checks`. Any other request is answered 200 with the instance's name.
async fn grpc_app(
    name: &'static str,
    serving: Arc<AtomicBool>,
    checks: Arc<Mutex<Vec<CheckSeen>>>,
) -> anyhow::Result<std::net::SocketAddr> {
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (serving, checks) = (serving.clone(), checks.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let (serving, checks) = (serving.clone(), checks.clone());
                    tokio::spawn(grpc_answer(name, req, respond, serving, checks));
                }
            });
        }
    });
    Ok(addr)
}

async fn grpc_answer(
    name: &'static str,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    serving: Arc<AtomicBool>,
    checks: Arc<Mutex<Vec<CheckSeen>>>,
) {
    let (parts, mut body) = req.into_parts();
    let mut msg = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        msg.extend_from_slice(&chunk);
    }
    if parts.uri.path() != "/grpc.health.v1.Health/Check" {
        let head = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(())
            .expect("a static answer");
        if let Ok(mut s) = respond.send_response(head, false) {
            let _ = s.send_data(Bytes::from_static(name.as_bytes()), true);
        }
        return;
    }
    // A gRPC frame (flag, length) holding HealthCheckRequest: field 1, the service
    // name (tag 0x0a, a one-byte length for the short names here).
    let service = match msg.get(5..) {
        Some([0x0a, _, name @ ..]) => String::from_utf8_lossy(name).into_owned(),
        _ => String::new(),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    checks
        .lock()
        .expect("checks lock")
        .push(CheckSeen { service, authority });
    // HealthCheckResponse: field 1 (varint), SERVING = 1, NOT_SERVING = 2.
    let status = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("a static answer");
    let Ok(mut s) = respond.send_response(head, false) else {
        return;
    };
    let _ = s.send_data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = s.send_trailers(trailers);
}

/// MeshHealthCheck's gRPC check: backend, a gRPC service, has two instances; the
/// second's health service answers NOT_SERVING (it still serves calls). Without a
/// policy nothing checks it and both take calls. With a check every second (2 failures
/// out, 1 pass back in), web's sidecar asks each instance's health service for
/// `backend.v1` with authority `health.backend`, and takes backend-2 out; once its
/// health service answers SERVING, it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_takes_out_a_not_serving_endpoint_and_serving_brings_it_back()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    round_robin(&fx, "backend").await?;
    let mut procs: Vec<Proc> = Vec::new();
    let mut health = Vec::new();
    for name in ["backend-1", "backend-2"] {
        let serving = Arc::new(AtomicBool::new(name == "backend-1"));
        let checks = Arc::new(Mutex::new(Vec::new()));
        let app = grpc_app(name, serving.clone(), checks.clone()).await?;
        let dp = dataplane(name, "backend", free_addr().port(), app.port(), "grpc", &[]);
        procs.push(fx.sidecar("backend", dp).await?.0);
        health.push((serving, checks));
    }
    let (web, web_admin, out) = fx.web_calling("backend").await?;
    procs.push(web);
    config_has("web balancing backend round robin", web_admin, |c| {
        c["outbounds"][0]["loadBalancer"] == "RoundRobin"
    })
    .await?;
    let both = instances(&["backend-1", "backend-2"]);
    eventually("both instances answering", WAIT, || async {
        (answering(out, 20).await? == both).then_some(())
    })
    .await?;
    // No MeshHealthCheck: nobody asks, and the NOT_SERVING instance keeps its share.
    assert_eq!(answering(out, 20).await.context("calls")?, both);
    assert!(health[1].1.lock().expect("checks lock").is_empty());

    apply(&fx, "meshhealthchecks", json!({
        "type": "MeshHealthCheck", "mesh": "default", "name": "backend-grpc",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 1,
                             "grpc": {"serviceName": "backend.v1", "authority": "health.backend"}}}]}})).await?;
    let only_first = instances(&["backend-1"]);
    eventually("backend-2 taken out by NOT_SERVING", WAIT, || async {
        (answering(out, 20).await? == only_first).then_some(())
    })
    .await?;
    assert_eq!(answering(out, 20).await.context("calls")?, only_first);
    let seen = health[1].1.lock().expect("checks lock").clone();
    assert!(seen.len() >= 2, "backend-2 was checked twice: {seen:?}");
    assert!(
        seen.iter().all(|c| c
            == &CheckSeen {
                service: "backend.v1".into(),
                authority: "health.backend".into()
            }),
        "the checks ask for the configured service and authority: {seen:?}"
    );
    let http = plain_http();
    assert!(
        admin_metric(
            &http,
            web_admin,
            "causeway_health_checks_total{service=\"backend\",result=\"failed\"}"
        )
        .await
            >= 2.0
    );

    health[1].0.store(true, Ordering::SeqCst);
    eventually("backend-2 back once it answers SERVING", WAIT, || async {
        (answering(out, 20).await? == both).then_some(())
    })
    .await?;
    Ok(())
}

// === A destination that does not answer ===

/// A loopback port whose connects hang, held by the test so that a sidecar told to
/// listen there cannot (it retries its bind), while its Dataplane still names it:
///
/// - [`Silent::NoSynAck`]: a listener with a backlog of 0 whose one queued connection
///   is never accepted; the kernel then drops every later SYN, as a blackholed address
///   does (Linux: a full accept queue drops the SYN, SYN cookies or not).
/// - [`Silent::NoTls`]: a listener that accepts connections and never says a word, as
///   a hung process does: TCP connects, the TLS handshake never ends. Each accepted
///   connection is reported on `accepted`.
struct SilentPort {
    port: u16,
    /// The listener and the connections queued on it (NoSynAck); NoTls's live in
    /// the task that accepts them, until the test's runtime ends.
    _held: Option<(tokio::net::TcpListener, Vec<TcpStream>)>,
    accepted: tokio::sync::mpsc::UnboundedReceiver<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Silent {
    NoSynAck,
    NoTls,
}

impl SilentPort {
    async fn open(kind: Silent) -> anyhow::Result<SilentPort> {
        let addr = free_addr();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        if kind == Silent::NoTls {
            let listener = socket.listen(1024)?;
            tokio::spawn(async move {
                let mut conns = Vec::new();
                while let Ok((s, _)) = listener.accept().await {
                    conns.push(s);
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            });
            return Ok(SilentPort {
                port: addr.port(),
                _held: None,
                accepted,
            });
        }
        let listener = socket.listen(0)?;
        let mut queued = Vec::new();
        // Fill the accept queue until a connect hangs: then the port is silent.
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => queued.push(s),
                Ok(Err(e)) => anyhow::bail!("connecting to fill the queue: {e}"),
                Err(_) => {
                    return Ok(SilentPort {
                        port: addr.port(),
                        _held: Some((listener, queued)),
                        accepted,
                    });
                }
            }
        }
        anyhow::bail!("{addr} still takes connections with its accept queue full")
    }
}

/// `db`, an HTTP service whose one endpoint is a [`SilentPort`], and web calling it, in
/// a Strict mesh. Waits until web's config has the endpoint.
struct SilentDestination {
    fx: MeshFixture,
    silent: SilentPort,
    web_admin: std::net::SocketAddr,
    out: u16,
    _procs: [Proc; 2],
}

impl SilentDestination {
    async fn start(kind: Silent) -> anyhow::Result<SilentDestination> {
        let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
        fx.permit("web-to-db", "web", "db", "Allow").await?;
        no_retries(&fx, "db").await?;
        let silent = SilentPort::open(kind).await?;
        let dp = dataplane("db-1", "db", silent.port, free_addr().port(), "http", &[]);
        let (db, _) = fx.sidecar("db", dp).await?;
        let (web, web_admin, out) = fx.web_calling("db").await?;
        let port = silent.port;
        config_has("db's silent endpoint in web's config", web_admin, |c| {
            let ob = &c["outbounds"][0];
            ob["groups"][0]["endpoints"][0]["port"] == port
                && ob["retry"]["http"]["numRetries"] == 0
        })
        .await?;
        Ok(SilentDestination {
            fx,
            silent,
            web_admin,
            out,
            _procs: [db, web],
        })
    }

    /// A call to db through web's sidecar: how long its answer took, its status, its
    /// `x-causeway-error` header and its body.
    async fn call(&self) -> anyhow::Result<(Duration, StatusCode, String, String)> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(0)
            .build()?;
        let t0 = Instant::now();
        let r = http
            .get(format!("http://127.0.0.1:{}/", self.out))
            .send()
            .await?;
        let took = t0.elapsed();
        let status = r.status();
        let error = r
            .headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((took, status, error, r.text().await?))
    }
}

/// MeshTimeout `connectionTimeout` on a destination: db's only endpoint never answers
/// a SYN. With `connectionTimeout: 500ms`, web's sidecar gives up the dial after half
/// a second and the caller gets 503 `no-endpoint` (the connect timed out after 500ms)
/// between 0.5 and 1.5 s; without it, the dial waits out the built-in 5 s, so no
/// answer comes within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_an_endpoint_that_never_answers_is_cut_at_the_connection_timeout()
-> anyhow::Result<()> {
    let d = SilentDestination::start(Silent::NoSynAck).await?;
    apply(&d.fx, "meshtimeouts", json!({
        "type": "MeshTimeout", "mesh": "default", "name": "db-connect",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                 "default": {"connectionTimeout": "500ms"}}]}})).await?;
    config_has("the connection timeout in web's config", d.web_admin, |c| {
        c["outbounds"][0]["timeouts"]["connect"] == "500ms"
    })
    .await?;
    let (took, status, error, body) = d.call().await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error} {body}");
    assert_eq!(error, "no-endpoint", "{body}");
    assert!(
        body.contains("timed out after 500ms"),
        "the answer says why: {body}"
    );
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(1500)).contains(&took),
        "answered after {took:?}"
    );

    // Without it, the built-in 5 s: still waiting at 2 s.
    delete(&d.fx, "/meshes/default/meshtimeouts/db-connect").await?;
    config_has(
        "the default connection timeout in web's config",
        d.web_admin,
        |c| c["outbounds"][0]["timeouts"]["connect"] == "5s",
    )
    .await?;
    let waited = tokio::time::timeout(Duration::from_secs(2), d.call()).await;
    assert!(
        waited.is_err(),
        "with the default 5 s the caller waits: {waited:?}"
    );
    Ok(())
}

/// MeshCircuitBreaker `maxPendingRequests`: db's only endpoint takes TCP connections
/// and never answers the TLS handshake, so a call waits for its connection (up to the
/// 5 s connect timeout). With `maxPendingRequests: 1`, while one call waits, the next
/// is answered 503 `overflow` at once (well within a second), its body naming the
/// limit, and web's sidecar does not even dial for it. Without it, a call made then
/// waits too (no answer within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_pending_requests_a_call_that_would_wait_is_answered_503_overflow()
-> anyhow::Result<()> {
    let mut d = SilentDestination::start(Silent::NoTls).await?;
    apply(&d.fx, "meshcircuitbreakers", json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "db-pending",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                 "default": {"connectionLimits": {"maxPendingRequests": 1}}}]}})).await?;
    config_has("the pending limit in web's config", d.web_admin, |c| {
        c["outbounds"][0]["circuitBreaker"]["maxPendingRequests"] == 1
    })
    .await?;
    let first = {
        let out = d.out;
        tokio::spawn(async move {
            plain_http()
                .get(format!("http://127.0.0.1:{out}/first"))
                .send()
                .await
        })
    };
    tokio::time::timeout(WAIT, d.silent.accepted.recv())
        .await
        .context("the first call's dial reaching the endpoint")?;
    let (took, status, error, body) = d.call().await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error, "overflow", "{body}");
    assert!(body.contains("maxPendingRequests (1)"), "{body}");
    // At once: not after the 5 s the first call may wait.
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert!(
        d.silent.accepted.try_recv().is_err(),
        "the call over the limit dialed the endpoint"
    );
    assert!(!first.is_finished(), "the first call still waits");
    first.abort();

    // Without the limit a call waits for a connection as well.
    delete(&d.fx, "/meshes/default/meshcircuitbreakers/db-pending").await?;
    config_has("no pending limit in web's config", d.web_admin, |c| {
        c["outbounds"][0]["circuitBreaker"]["maxPendingRequests"].is_null()
    })
    .await?;
    let waited = tokio::time::timeout(Duration::from_secs(1), d.call()).await;
    assert!(waited.is_err(), "without the limit it waits: {waited:?}");
    Ok(())
}

/// MeshCircuitBreaker `maxPendingRequests` on an inbound (`rules`): backend's
/// application never takes a connection (its accept queue is full), so each request
/// waits for its dial, up to the 5 s connect timeout. Without the policy two requests
/// sent at once both wait; with `maxPendingRequests: 1`, one of them is answered 503
/// `overflow` at once, its body naming the limit, while the other waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_inbound_max_pending_requests_a_request_is_answered_503_overflow()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Permissive"}})).await?;
    every_caller(&fx, "Allow").await?;
    let silent = SilentPort::open(Silent::NoSynAck).await?;
    let inbound = free_addr().port();
    let dp = dataplane("backend-1", "backend", inbound, silent.port, "http", &[]);
    let (_sidecar, admin) = fx.sidecar("backend", dp).await?;
    // One plaintext GET: how long it took and the answer, lower case.
    let call = || async move {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", inbound)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
            .await?;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        anyhow::Ok((
            t0.elapsed(),
            String::from_utf8_lossy(&got).to_ascii_lowercase(),
        ))
    };
    eventually("backend's inbound listening", WAIT, || async {
        TcpStream::connect(("127.0.0.1", inbound)).await.ok()
    })
    .await?;
    // Two requests at once: both dials hang, so both wait (for the 5 s connect timeout)
    // without the policy; with it, one of them is refused at once.
    let two_at_once = || async move {
        let (a, b) = tokio::join!(call(), call());
        let mut both = [a?, b?];
        both.sort_by_key(|(took, _)| *took);
        anyhow::Ok(both)
    };
    for (took, answer) in two_at_once().await? {
        assert!(
            took >= Duration::from_secs(4),
            "without the policy both wait: {took:?}"
        );
        assert!(answer.contains("app-unreachable"), "{answer}");
    }

    apply(
        &fx,
        "meshcircuitbreakers",
        json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend-pending",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "rules": [{"default": {"connectionLimits": {"maxPendingRequests": 1}}}]}}),
    )
    .await?;
    config_has("the pending cap on backend's inbound", admin, |c| {
        c["inbounds"][0]["limits"][0]["maxPendingRequests"] == 1
    })
    .await?;
    let [(took, refused), (waited, unreachable)] = two_at_once().await?;
    assert!(refused.starts_with("http/1.1 503"), "{refused}");
    assert!(refused.contains("x-causeway-error: overflow"), "{refused}");
    assert!(refused.contains("maxpendingrequests (1)"), "{refused}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(unreachable.contains("app-unreachable"), "{unreachable}");
    assert!(
        waited >= Duration::from_secs(4),
        "the other waited: {waited:?}"
    );
    Ok(())
}

// === The inbound, reached directly ===

/// A connection to an inbound, plaintext or mTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// How a test's client reaches backend's inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Plaintext, no identity (the mesh is Permissive).
    Plain,
    /// mTLS as `web`'s sidecar, with ALPN `http/1.1`.
    TlsHttp1,
    /// mTLS as `web`'s sidecar, with ALPN `h2`: the way sidecars call each other.
    TlsHttp2,
    /// mTLS as `admin`'s sidecar, with ALPN `http/1.1`.
    AdminHttp1,
}

/// `backend` (a demo app behind its sidecar) in a Permissive mesh, so the test can call
/// the sidecar's inbound port directly: in plaintext, and over mTLS with a certificate
/// of `web` (permitted), as web's sidecar does.
struct DirectInbound {
    fx: MeshFixture,
    inbound: u16,
    admin: std::net::SocketAddr,
    tls_http1: Arc<rustls::ClientConfig>,
    tls_http2: Arc<rustls::ClientConfig>,
    /// mTLS as `admin`'s sidecar (permitted too), HTTP/1.1: a second caller.
    tls_admin: Arc<rustls::ClientConfig>,
    _procs: [Proc; 2],
}

impl DirectInbound {
    async fn start() -> anyhow::Result<DirectInbound> {
        let fx = MeshFixture::start(json!({"mtls": {"mode": "Permissive"}})).await?;
        fx.permit("web-to-backend", "web", "backend", "Allow")
            .await?;
        fx.permit("admin-to-backend", "admin", "backend", "Allow")
            .await?;
        // Plaintext callers too (the anonymous identity: only a rule for every caller
        // covers it).
        every_caller(&fx, "Allow").await?;
        let app = free_addr();
        let a = fx.app("backend-1", "backend", app, false)?;
        let inbound = free_addr().port();
        let dp = dataplane("backend-1", "backend", inbound, app.port(), "http", &[]);
        let (s, admin) = fx.sidecar("backend", dp).await?;
        let b = DirectInbound {
            tls_http1: fx.workload_tls("web", b"http/1.1").await?,
            tls_http2: fx.workload_tls("web", b"h2").await?,
            tls_admin: fx.workload_tls("admin", b"http/1.1").await?,
            fx,
            inbound,
            admin,
            _procs: [a, s],
        };
        eventually("the app through its inbound", WAIT, || async {
            for caller in [Caller::Plain, Caller::TlsHttp1] {
                let mut s = b.connect(caller).await.ok()?;
                let mut buf = Vec::new();
                s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
                    .await
                    .ok()?;
                if read_response(&mut s, &mut buf).await.ok()??.0 != 200 {
                    return None;
                }
            }
            Some(())
        })
        .await?;
        Ok(b)
    }

    /// A new connection to the inbound as `caller`.
    async fn connect(&self, caller: Caller) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.inbound)).await?;
        let tls = match caller {
            Caller::Plain => return Ok(Box::new(tcp)),
            Caller::TlsHttp1 => &self.tls_http1,
            Caller::TlsHttp2 => &self.tls_http2,
            Caller::AdminHttp1 => &self.tls_admin,
        };
        let name = rustls::pki_types::ServerName::try_from("backend")?;
        let s = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        Ok(Box::new(s))
    }

    /// Sets backend's inbound MeshTimeout (`from` every caller) to `http` and waits
    /// until its sidecar has `key` = `value` in its inbound timeouts.
    async fn timeouts(&self, http: Value, key: &str, value: &str) -> anyhow::Result<()> {
        apply(
            &self.fx,
            "meshtimeouts",
            json!({
            "type": "MeshTimeout", "mesh": "default", "name": "backend-inbound",
            "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                     "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": http}}]}}),
        )
        .await?;
        config_has(
            &format!("{key} {value} on backend's inbound"),
            self.admin,
            |c| c["inbounds"][0]["timeouts"][key] == value,
        )
        .await
    }
}

/// MeshCircuitBreaker by caller on an inbound: backend's policy gives web (by its
/// service) `maxConnections: 1`, and every other caller no cap. Without it, web holds
/// two connections at once, each answered 200. With it, web's second connection is
/// closed once its handshake told who calls, while its first still works; admin (over
/// mTLS) and a plaintext caller each hold two as before. Once web's first closes, a new
/// one of web's is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_connection_cap_for_one_caller_applies_to_that_caller_alone()
-> anyhow::Result<()> {
    let b = DirectInbound::start().await?;
    // One GET on `s`: its status, or `None` when the connection was closed instead.
    async fn get(s: &mut Box<dyn Io>) -> Option<u16> {
        let mut buf = Vec::new();
        s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
            .await
            .ok()?;
        read_response(s, &mut buf)
            .await
            .ok()?
            .map(|(status, _)| status)
    }
    // Two connections of `caller` open at once, each asked once: their statuses.
    let two = |caller| {
        let b = &b;
        async move {
            let mut first = b.connect(caller).await?;
            let one = get(&mut first).await;
            let two = match b.connect(caller).await {
                Ok(mut second) => get(&mut second).await,
                Err(_) => None,
            };
            // The first still works while the second is refused.
            let again = get(&mut first).await;
            anyhow::Ok([one, two, again])
        }
    };
    assert_eq!(
        two(Caller::TlsHttp1).await?,
        [Some(200); 3],
        "without the cap"
    );
    apply(
        &b.fx,
        "meshcircuitbreakers",
        json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend-web",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                           "default": {"connectionLimits": {"maxConnections": 1}}}]}}),
    )
    .await?;
    config_has("web's cap on backend's inbound", b.admin, |c| {
        c["inbounds"][0]["limits"][0]["maxConnections"] == 1
    })
    .await?;
    assert_eq!(
        two(Caller::TlsHttp1).await?,
        [Some(200), None, Some(200)],
        "web: its second connection is closed"
    );
    for caller in [Caller::AdminHttp1, Caller::Plain] {
        assert_eq!(two(caller).await?, [Some(200); 3], "{caller:?} has no cap");
    }
    // The place is free again once web's connection closed (the sidecar saw it go).
    eventually("a new connection of web's let in", WAIT, || async {
        let mut s = b.connect(Caller::TlsHttp1).await.ok()?;
        (get(&mut s).await == Some(200)).then_some(())
    })
    .await?;
    let http = plain_http();
    assert!(
        admin_metric(
            &http,
            b.admin,
            "causeway_circuit_breaker_events_total{service=\"backend\",event=\"inbound_connection_overflow\"}"
        )
        .await
            >= 1.0
    );
    Ok(())
}

/// The identity header cannot be forged: a plaintext caller (no identity; the mesh is
/// Permissive) that sends `x-causeway-peer` naming another service reaches the
/// application without it, and an mTLS caller's header of that name is replaced by the
/// identity its certificate proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_header_never_reaches_the_application() -> anyhow::Result<()> {
    let b = DirectInbound::start().await?;
    // The demo app's answer: who it was told called, and the header itself.
    let peer_seen = |caller| {
        let b = &b;
        async move {
            let mut s = b.connect(caller).await?;
            s.write_all(
                b"GET / HTTP/1.1\r\nhost: backend\r\nx-causeway-peer: spiffe://default/admin\r\nconnection: close\r\n\r\n",
            )
            .await?;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let text = String::from_utf8_lossy(&got).into_owned();
            let body = text.split("\r\n\r\n").nth(1).context("a body")?;
            let v: Value = serde_json::from_str(body).with_context(|| text.clone())?;
            anyhow::Ok((v["peer"].clone(), v["headers"]["x-causeway-peer"].clone()))
        }
    };
    assert_eq!(peer_seen(Caller::Plain).await?, (json!(""), Value::Null));
    assert_eq!(
        peer_seen(Caller::TlsHttp1).await?,
        (json!("spiffe://default/web"), json!("spiffe://default/web"))
    );
    Ok(())
}

/// A permissive mesh does not let plaintext callers past the permissions: they are the
/// anonymous identity, which only a rule for every caller covers. With the Mesh-wide
/// permission for every caller denied (web keeps backend's allow, which ranks above),
/// a plaintext call is answered 403 while web's mTLS call goes through; allowed again,
/// plaintext passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_in_a_permissive_mesh_are_held_to_the_permissions() -> anyhow::Result<()>
{
    let b = DirectInbound::start().await?;
    let status = |caller| {
        let b = &b;
        async move {
            let mut s = b.connect(caller).await?;
            let mut buf = Vec::new();
            s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
                .await?;
            let (status, _) = read_response(&mut s, &mut buf)
                .await?
                .context("an answer")?;
            anyhow::Ok(status)
        }
    };
    assert_eq!(status(Caller::Plain).await?, 200);
    every_caller(&b.fx, "Deny").await?;
    config_has("the deny on backend's inbound", b.admin, |c| {
        c["inbounds"][0]["permissions"]
            .as_array()
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r["source"]["kind"] == "any" && r["action"] == "Deny")
            })
    })
    .await?;
    assert_eq!(status(Caller::Plain).await?, 403, "plaintext, denied");
    assert_eq!(status(Caller::TlsHttp1).await?, 200, "web's own allow");
    every_caller(&b.fx, "Allow").await?;
    eventually("plaintext allowed again", WAIT, || async {
        (status(Caller::Plain).await.ok()? == 200).then_some(())
    })
    .await?;
    Ok(())
}

/// How a request sent slowly ended.
#[derive(Debug)]
enum SlowHead {
    /// The connection was cut (or answered early) while its head was still coming.
    Cut(Duration),
    /// The head went whole and was answered with this status.
    Answered(u16, Duration),
}

/// Sends a GET on `s` one header line every 200 ms, `lines` lines, then the end of its
/// head, and reads the answer.
async fn slow_head(mut s: Box<dyn Io>, lines: usize) -> anyhow::Result<SlowHead> {
    let t0 = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n").await?;
    let mut b = [0u8; 1024];
    for i in 0..lines {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = s.read(&mut b) => return Ok(SlowHead::Cut(t0.elapsed())),
        }
        if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            return Ok(SlowHead::Cut(t0.elapsed()));
        }
    }
    if s.write_all(b"\r\n").await.is_err() {
        return Ok(SlowHead::Cut(t0.elapsed()));
    }
    let mut buf = Vec::new();
    match read_response(&mut s, &mut buf).await {
        Ok(Some((status, _))) => Ok(SlowHead::Answered(status, t0.elapsed())),
        _ => Ok(SlowHead::Cut(t0.elapsed())),
    }
}

/// Reads one HTTP/1.1 response from `s` (`buf` keeps what came after it): its status
/// and whether it says `connection: close`; `None` when the connection ends first.
async fn read_response(
    s: &mut Box<dyn Io>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(u16, bool)>> {
    async fn more(s: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await?;
        buf.extend_from_slice(&b[..n]);
        Ok(n > 0)
    }
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if !more(s, buf).await? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    buf.drain(..end + 4);
    if head.contains("transfer-encoding: chunked") {
        while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
            if !more(s, buf).await? {
                return Ok(None);
            }
        }
        let end = buf
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .expect("found above");
        buf.drain(..end + 5);
    } else {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if !more(s, buf).await? {
                return Ok(None);
            }
        }
        buf.drain(..len);
    }
    Ok(Some((status, close)))
}

/// MeshTimeout `requestHeadersTimeout` on an inbound: a caller sends a request's head
/// one header line every 200 ms for 2.4 s, in plaintext and over mTLS (HTTP/1.1) at
/// once. Without the timeout the sidecar waits and both are answered 200; with
/// `requestHeadersTimeout: 1s` both connections are cut between 1 and 2 s, though
/// bytes kept coming. A request whose head comes at once still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_slowly_is_cut_at_the_request_headers_timeout() -> anyhow::Result<()> {
    let b = DirectInbound::start().await?;
    let b = &b;
    let both = |lines: usize| async move {
        let (plain, tls) = tokio::join!(
            async { slow_head(b.connect(Caller::Plain).await?, lines).await },
            async { slow_head(b.connect(Caller::TlsHttp1).await?, lines).await },
        );
        anyhow::Ok([("plaintext", plain?), ("mTLS", tls?)])
    };
    for (caller, r) in both(12).await? {
        match r {
            SlowHead::Answered(200, took) => assert!(took >= Duration::from_millis(2400)),
            other => panic!("{caller}: without the timeout the slow head is answered: {other:?}"),
        }
    }
    b.timeouts(
        json!({"requestHeadersTimeout": "1s"}),
        "requestHeaders",
        "1s",
    )
    .await?;
    for (caller, r) in both(12).await? {
        match r {
            SlowHead::Cut(took) => assert!(
                (Duration::from_millis(1000)..Duration::from_millis(2000)).contains(&took),
                "{caller}: cut after {took:?}"
            ),
            other => panic!("{caller}: the slow head was not cut: {other:?}"),
        }
    }
    for (caller, r) in both(0).await? {
        assert!(
            matches!(r, SlowHead::Answered(200, _)),
            "{caller}: a prompt request: {r:?}"
        );
    }
    Ok(())
}

/// Requests one after another (every 100 ms) on one keep-alive HTTP/1.1 connection,
/// for up to `limit`: how many were answered 200, and when the sidecar closed the
/// connection, if it did. A status other than 200 is an error.
async fn keep_asking_http1(
    mut s: Box<dyn Io>,
    limit: Duration,
) -> anyhow::Result<(usize, Option<Duration>)> {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut ok = 0;
    while t0.elapsed() < limit {
        if s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
            .await
            .is_err()
        {
            return Ok((ok, Some(t0.elapsed())));
        }
        match read_response(&mut s, &mut buf).await {
            Ok(Some((200, close))) => {
                ok += 1;
                if close {
                    // Told: the sidecar closes after this answer.
                    return Ok((ok, Some(t0.elapsed())));
                }
            }
            Ok(Some((status, _))) => anyhow::bail!("answered {status} after {ok} requests"),
            // Closed between two requests (it was idle): no request was lost.
            Ok(None) | Err(_) => return Ok((ok, Some(t0.elapsed()))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((ok, None))
}

/// The same over one HTTP/2 connection: when the sidecar said GOAWAY or closed it, if
/// it did.
async fn keep_asking_http2(
    s: Box<dyn Io>,
    port: u16,
    limit: Duration,
) -> anyhow::Result<(usize, Option<Duration>)> {
    let t0 = Instant::now();
    let (client, conn) = h2::client::handshake(s).await?;
    let conn = tokio::spawn(conn);
    let mut ok = 0;
    while t0.elapsed() < limit {
        if conn.is_finished() {
            return Ok((ok, Some(t0.elapsed())));
        }
        let Ok(mut ready) = client.clone().ready().await else {
            return Ok((ok, Some(t0.elapsed())));
        };
        let req = http::Request::get(format!("http://127.0.0.1:{port}/")).body(())?;
        let Ok((resp, _)) = ready.send_request(req, true) else {
            return Ok((ok, Some(t0.elapsed())));
        };
        match resp.await {
            Ok(r) if r.status() == 200 => {
                let mut body = r.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                ok += 1;
            }
            Ok(r) => anyhow::bail!("answered {} after {ok} requests", r.status()),
            // Refused after a GOAWAY: the request was not processed.
            Err(e) if e.is_go_away() || e.is_remote() => {
                return Ok((ok, Some(t0.elapsed())));
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.abort();
    Ok((ok, None))
}

/// MeshTimeout `maxConnectionDuration` on an inbound: four callers each keep one
/// connection busy with a request every 100 ms: HTTP/1.1 and HTTP/2 (h2c) in plaintext,
/// HTTP/1.1 and HTTP/2 over mTLS (as sidecars call each other). Without it all stay
/// open for 2.5 s; with `maxConnectionDuration: 1s` the sidecar drains each between 1
/// and 2.5 s (HTTP/1.1: closed after an answer or while idle; HTTP/2: GOAWAY), and
/// every request sent before was answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_connection_is_drained_at_its_max_connection_duration() -> anyhow::Result<()> {
    let b = DirectInbound::start().await?;
    let all = |limit: Duration| {
        let b = &b;
        async move {
            let port = b.inbound;
            let (h1, h2c, tls_h1, tls_h2) = tokio::join!(
                async { keep_asking_http1(b.connect(Caller::Plain).await?, limit).await },
                async { keep_asking_http2(b.connect(Caller::Plain).await?, port, limit).await },
                async { keep_asking_http1(b.connect(Caller::TlsHttp1).await?, limit).await },
                async { keep_asking_http2(b.connect(Caller::TlsHttp2).await?, port, limit).await },
            );
            anyhow::Ok([
                ("plaintext HTTP/1.1", h1?),
                ("plaintext HTTP/2", h2c?),
                ("mTLS HTTP/1.1", tls_h1?),
                ("mTLS HTTP/2", tls_h2?),
            ])
        }
    };
    for (caller, (n, closed)) in all(Duration::from_millis(2500)).await? {
        assert_eq!(
            closed, None,
            "{caller}: without a maximum it stays open ({n} requests)"
        );
    }

    b.timeouts(
        json!({"maxConnectionDuration": "1s"}),
        "maxConnectionDuration",
        "1s",
    )
    .await?;
    for (caller, (n, closed)) in all(Duration::from_secs(10)).await? {
        let closed = closed.with_context(|| format!("{caller}: still open after 10 s"))?;
        assert!(
            (Duration::from_millis(1000)..Duration::from_millis(2500)).contains(&closed),
            "{caller}: drained after {closed:?}"
        );
        assert!(n >= 3, "{caller}: {n} requests answered before");
    }
    Ok(())
}

// === MeshCircuitBreaker: success rate ===

/// MeshCircuitBreaker's success-rate detector: backend has three instances and the
/// third answers 500 to every call (retries off, so the failures show): without a
/// policy a third of the calls fail. With a success-rate detector judging every second
/// the instances with 5 answers or more (3 needed) and a factor of 1 (the success
/// rates 100, 100 and 0 have mean 66.7 and deviation 47.1: the floor is 19.6), the
/// third is ejected and every call goes to the other two. No other detector is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_rate_far_below_the_others_ejects_an_endpoint() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    round_robin(&fx, "backend").await?;
    no_retries(&fx, "backend").await?;
    let mut procs = Vec::new();
    let mut apps = Vec::new();
    for name in ["backend-1", "backend-2", "backend-3"] {
        let app = free_addr();
        procs.push(fx.app(name, "backend", app, false)?);
        let dp = dataplane(name, "backend", free_addr().port(), app.port(), "http", &[]);
        procs.push(fx.sidecar("backend", dp).await?.0);
        apps.push(app);
    }
    let (web, web_admin, out) = fx.web_calling("backend").await?;
    procs.push(web);
    config_has("round robin without retries to backend", web_admin, |c| {
        let ob = &c["outbounds"][0];
        ob["loadBalancer"] == "RoundRobin"
            && ob["retry"]["http"]["numRetries"] == 0
            && ob["groups"][0]["endpoints"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    let all = instances(&["backend-1", "backend-2", "backend-3"]);
    eventually("the three instances answering", WAIT, || async {
        (answering(out, 30).await? == all).then_some(())
    })
    .await?;
    let http = plain_http();
    let r = http
        .post(format!("http://{}/answer/500", apps[2]))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{}", r.status());
    let failed = failures(out, 30).await.context("calls")?;
    assert!(
        (5..=15).contains(&failed),
        "without a detector backend-3 keeps its third: {failed} of 30 failed"
    );

    apply(&fx, "meshcircuitbreakers", json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend-success-rate",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"outlierDetection": {"interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
                             "detectors": {"successRate": {"minimumHosts": 3, "requestVolume": 5,
                                                           "standardDeviationFactor": 1.0}}}}}]}})).await?;
    config_has(
        "the success-rate detector in web's config",
        web_admin,
        |c| {
            let od = &c["outbounds"][0]["circuitBreaker"]["outlierDetection"];
            od["successRate"]["standardDeviationFactorThousandths"] == 1000
                && od["failurePercentage"].is_null()
                && od["totalFailures"].is_null()
        },
    )
    .await?;
    eventually("backend-3 ejected for its success rate", WAIT, || async {
        (failures(out, 20).await? == 0).then_some(())
    })
    .await?;
    assert_eq!(
        answering(out, 20).await.context("calls")?,
        instances(&["backend-1", "backend-2"])
    );
    assert!(ejections(&http, web_admin, "backend").await >= 1.0);
    Ok(())
}

/// The local ports of the established TCP connections to 127.0.0.1:`port`, from
/// `/proc/net/tcp`: the connections a sidecar holds to another's inbound.
fn connections_to(port: u16) -> std::collections::BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let remote_port = u16::from_str_radix(remote.split(':').nth(1)?, 16).ok()?;
            let local_port = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            (remote_port == port && *state == "01").then_some(local_port)
        })
        .collect()
}

/// MeshTimeout `maxConnectionDuration` outbound (`to[]`): web's sidecar keeps a small
/// pool of connections to backend's sidecar; with the policy (300ms), a pooled
/// connection older than that takes no new request, so over 3 s of steady calls web
/// opens many connections, one after another, and every call still succeeds. Without
/// it the same pool carries every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_to_a_destination_age_out_at_max_connection_duration()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let app = free_addr();
    let inbound = free_addr().port();
    let _app = fx.app("backend-1", "backend", app, false)?;
    let dp = dataplane("backend-1", "backend", inbound, app.port(), "http", &[]);
    let (_backend, _) = fx.sidecar("backend", dp).await?;
    let (_web, web_admin, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{out}/");
    eventually("backend answering", WAIT, || async {
        http.get(&url)
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await?;
    // Steady calls for `window`; every local port seen connected to backend's inbound.
    let calls_for = |window: Duration| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut ports = std::collections::BTreeSet::new();
            let until = Instant::now() + window;
            while Instant::now() < until {
                let r = http.get(&url).send().await?;
                anyhow::ensure!(r.status().is_success(), "answered {}", r.status());
                ports.extend(connections_to(inbound));
            }
            anyhow::Ok(ports)
        }
    };
    let without = calls_for(Duration::from_secs(2)).await?;
    put(&fx.c, "/meshes/default/meshtimeouts/short-lived", &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "short-lived",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"http": {"maxConnectionDuration": "300ms"}}}]}})).await?;
    let admin = plain_http();
    eventually("the policy in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        (cfg["config"]["outbounds"][0]["timeouts"]["maxConnectionDuration"] == "300ms")
            .then_some(())
    })
    .await?;
    let with = calls_for(Duration::from_secs(3)).await?;
    eprintln!(
        "connections: {} without the policy, {} with it",
        without.len(),
        with.len()
    );
    assert!(without.len() <= 3, "{without:?}");
    assert!(with.len() >= 6, "{with:?}");
    Ok(())
}
