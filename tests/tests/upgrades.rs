//! End to end: HTTP/1.1 upgrades (WebSockets) through two sidecars with mTLS between
//! them, and an h2c upgrade answered in HTTP/1.1. Cross-zone WebSockets are in
//! `crosszone.rs`.

use std::time::Duration;

use causeway_tests::mesh::{MeshFixture, WAIT};
use causeway_tests::websocket;
use causeway_tests::{admin_metric, eventually, plain_http, put};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// backend's demo app behind its sidecar, and web's sidecar calling it, in a Strict
/// mesh: web's outbound port and admin address, and backend's sidecar's admin address.
async fn backend_and_web(
    fx: &MeshFixture,
) -> anyhow::Result<(
    u16,
    std::net::SocketAddr,
    std::net::SocketAddr,
    Vec<causeway_tests::Proc>,
)> {
    let called = fx.web_calls_backend().await?;
    Ok((
        called.out,
        called.web_admin,
        called.backend_admin,
        called.procs,
    ))
}

/// A WebSocket from web's application reaches backend's through both sidecars: text
/// and a 256 KiB binary message come back, the tunnel outlives the request timeout
/// (500ms) while idle, both sidecars count the 101, and a MeshTrafficPermission Deny
/// refuses a new WebSocket with 403 as it refuses requests. Without upgrades in the
/// sidecars the handshake fails (the `Upgrade` header would not reach the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_tunnelled_through_two_sidecars() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let (out, web_admin, backend_admin, _procs) = backend_and_web(&fx).await?;
    put(&fx.c, "/meshes/default/meshtimeouts/short", &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "short",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "500ms"}}}],
                 "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "500ms"}}}]}})).await?;
    let admin = plain_http();
    eventually("the short timeout in web's config", WAIT, || async {
        let cfg = causeway_tests::admin_config(&admin, web_admin).await?;
        (cfg["config"]["outbounds"][0]["timeouts"]["request"] == "500ms").then_some(())
    })
    .await?;

    let mut ws = websocket::open(out, "/ws").await?;
    for i in 0..20 {
        let text = format!("hello {i}");
        assert_eq!(
            websocket::echo(&mut ws, &text).await?,
            format!("backend-1: {text}")
        );
    }
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(websocket::echo_binary(&mut ws, big.clone()).await?, big);
    // Idle for twice the request timeout: a tunnel is not a request in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        websocket::echo(&mut ws, "still there").await?,
        "backend-1: still there"
    );
    let switched = "status_class=\"1xx\"}";
    let outbound = admin_metric(
        &admin,
        web_admin,
        &format!("causeway_requests_total{{direction=\"outbound\",service=\"backend\",peer=\"web\",{switched}"),
    )
    .await;
    let inbound = admin_metric(
        &admin,
        backend_admin,
        &format!("causeway_requests_total{{direction=\"inbound\",service=\"backend\",peer=\"web\",{switched}"),
    )
    .await;
    assert_eq!((outbound, inbound), (1.0, 1.0));

    // Permissions apply to upgrades as to requests.
    fx.permit("web-to-backend", "web", "backend", "Deny")
        .await?;
    let refused = eventually("a new WebSocket refused", WAIT, || async {
        match websocket::open(out, "/ws").await {
            Err(e) => Some(e.to_string()),
            Ok(_) => None,
        }
    })
    .await?;
    assert!(refused.contains("403"), "{refused}");
    // The open one was let in when it was opened; it stays up.
    assert_eq!(websocket::echo(&mut ws, "after").await?, "backend-1: after");
    Ok(())
}

/// An h2c upgrade is not tunnelled: the sidecars drop its `Upgrade` and the request is
/// answered in HTTP/1.1, as RFC 9113 lets a server do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_answered_in_http_1_1() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let (out, _, _, _procs) = backend_and_web(&fx).await?;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", out)).await?;
    tcp.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("upgrade: h2c"),
        "{head}"
    );
    Ok(())
}
