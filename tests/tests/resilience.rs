//! End to end: the resilience policies' fields that only had in-process tests, enforced
//! by real sidecars configured by a real zone control plane: MeshHealthCheck's gRPC
//! check.
//!
//! Each test first shows what happens without the field (so it fails when the sidecar
//! ignores it), then with it, and measures what a caller sees.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use causeway_tests::mesh::{MeshFixture, WAIT, dataplane};
use causeway_tests::{Proc, admin_config, admin_metric, eventually, free_addr, plain_http, put};
use serde_json::{Value, json};

/// Puts a policy through the global API at its path (`type` in lower case, plural).
async fn apply(fx: &MeshFixture, plural: &str, policy: Value) -> anyhow::Result<()> {
    let name = policy["name"]
        .as_str()
        .context("a policy name")?
        .to_string();
    put(&fx.c, &format!("/meshes/default/{plural}/{name}"), &policy).await
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

/// The instances that answer `n` calls through the outbound `out` with a success:
/// the `instance` of a demo app's JSON answer, or the whole body of another app's.
/// `None` when a call cannot be made.
async fn answering(out: u16, n: usize) -> Option<BTreeSet<String>> {
    let http = plain_http();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = http
            .get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            continue;
        }
        let text = r.text().await.ok()?;
        let name = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v["instance"].as_str()?.to_string(),
            Err(_) => text,
        };
        seen.insert(name);
    }
    Some(seen)
}

fn instances(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
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
