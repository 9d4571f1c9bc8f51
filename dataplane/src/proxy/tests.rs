//! The proxy's listeners on loopback, configured in-process (no control plane, mTLS
//! off): what MeshTimeout does to whole connections.

use std::time::{Duration, Instant};

use causeway_api::proxy_config::Timeouts;
use causeway_api::{Action, LoadBalancerType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A loopback port nothing listens on (just now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn inbound(port: u16, app_port: u16, timeouts: Timeouts) -> InboundListener {
    InboundListener {
        port,
        service: "backend".into(),
        app_address: "127.0.0.1".into(),
        app_port,
        protocol: Protocol::Http,
        tags: Default::default(),
        permissions: vec![],
        default_action: Action::Allow,
        timeouts,
        caller_timeouts: Vec::new(),
        faults: Vec::new(),
        rate_limits: Vec::new(),
        limits: None,
    }
}

fn outbound(port: u16, timeouts: Timeouts) -> OutboundListener {
    OutboundListener {
        port,
        address: "127.0.0.1".into(),
        service: "backend".into(),
        protocol: Protocol::Http,
        identity: None,
        load_balancer: LoadBalancerType::RoundRobin,
        choice_count: 2,
        ewma_decay: causeway_api::Duration::from_secs(10),
        ring_hash: None,
        maglev: None,
        groups: vec![],
        failover_threshold: 50.0,
        timeouts,
        health_check: None,
        circuit_breaker: None,
        retry: Default::default(),
        backends: Vec::new(),
        http_routes: Vec::new(),
    }
}

/// Runs a proxy with these listeners until the returned sender is dropped, and waits
/// until each of them accepts connections.
async fn proxy_with(
    inbounds: Vec<InboundListener>,
    outbounds: Vec<OutboundListener>,
) -> watch::Sender<bool> {
    let ports: Vec<u16> = inbounds
        .iter()
        .map(|l| l.port)
        .chain(outbounds.iter().map(|l| l.port))
        .collect();
    let cfg = ProxyConfig {
        version: "test".into(),
        mesh: "default".into(),
        dataplane: "test-1".into(),
        zone: "zone-a".into(),
        address: "127.0.0.1".into(),
        mtls: MtlsMode::Off,
        identity: None,
        inbounds,
        outbounds,
        revoked_cas: vec![],
    };
    let (_config_tx, config) = watch::channel(Some(Arc::new(cfg)));
    let (_identity_tx, identity) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let proxy = Proxy::new(config, identity);
    tokio::spawn(async move {
        let _keep = (_config_tx, _identity_tx);
        run_listeners(proxy, stop).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "port {port} never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_tx
}

/// Reads until the peer closes (or resets) the connection; what it sent before.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("the connection is still open after {limit:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_application_connection_idle_past_the_idle_timeout_is_closed() {
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.idle = causeway_api::Duration::from_millis(300);
    let _proxy = proxy_with(vec![], vec![outbound(port, t)]).await;
    let mut app = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    app.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await
        .unwrap();
    let asked = Instant::now();
    // No endpoint: the proxy answers itself, naming the cause; then nothing moves.
    let answer = read_to_close(&mut app, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-causeway-error: no-endpoint"), "{answer}");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "closed {:?} after the request, before the idle timeout",
        asked.elapsed()
    );
}

#[tokio::test]
async fn an_inbound_caller_slow_to_send_its_request_headers_is_cut_off() {
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.request_headers = causeway_api::Duration::from_millis(300);
    let _proxy = proxy_with(vec![inbound(port, free_port(), t)], vec![]).await;
    let mut caller = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    caller.write_all(b"GET / HTTP/1.1\r\nhost: ").await.unwrap();
    read_to_close(&mut caller, Duration::from_secs(3)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A keep-alive HTTP/1.1 application that answers every request with `ok`.
async fn ok_app() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut b = [0u8; 1024];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn an_inbound_connection_past_its_maximum_duration_is_drained() {
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.max_connection_duration = causeway_api::Duration::from_millis(400);
    let _proxy = proxy_with(vec![inbound(port, ok_app().await, t)], vec![]).await;
    let mut caller = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connected = Instant::now();
    caller
        .write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    caller.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The connection is kept alive, then closed once it is 400 ms old.
    read_to_close(&mut caller, Duration::from_secs(3)).await;
    assert!(
        connected.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        connected.elapsed()
    );
}

#[tokio::test]
async fn an_inbound_connection_is_kept_while_requests_come_and_closed_once_idle() {
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.idle = causeway_api::Duration::from_millis(800);
    let _proxy = proxy_with(vec![inbound(port, ok_app().await, t)], vec![]).await;
    let mut caller = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A request every 200 ms for two idle timeouts: the connection stays.
    for _ in 0..8 {
        caller
            .write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
            .await
            .unwrap();
        // The whole answer: its head, then the app's `ok`.
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut b = [0u8; 1024];
            let n = caller.read(&mut b).await.unwrap();
            assert!(n > 0, "closed while requests came");
            answer.extend_from_slice(&b[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = Instant::now();
    read_to_close(&mut caller, Duration::from_secs(3)).await;
    assert!(quiet.elapsed() >= Duration::from_millis(550));
}

#[tokio::test]
async fn a_dial_that_times_out_ejects_the_endpoint_and_requests_go_to_another() {
    let mut held = Vec::new();
    let (_full, dead) = crate::timeout::tests::full_listener(&mut held);
    let (in_port, out_port) = (free_port(), free_port());
    let endpoint = |port: u16| causeway_api::proxy_config::Endpoint {
        address: "127.0.0.1".into(),
        port,
        weight: 1,
        sni: None,
        quic: false,
        tags: Default::default(),
        affinity: None,
    };
    let mut t = Timeouts::DEFAULT;
    t.connect = causeway_api::Duration::from_millis(300);
    let mut ob = outbound(out_port, t);
    ob.groups = vec![causeway_api::proxy_config::EndpointGroup {
        zone: "zone-a".into(),
        // A dead endpoint (its dials hang) and this proxy's own inbound.
        endpoints: vec![endpoint(dead.port()), endpoint(in_port)],
    }];
    let app = ok_app().await;
    let _proxy = proxy_with(vec![inbound(in_port, app, Timeouts::DEFAULT)], vec![ob]).await;
    // Round robin would send every other request to the dead endpoint; once a dial to
    // it times out it is ejected, so at most one request waits for that dial.
    let mut waited = 0;
    for _ in 0..6 {
        let t0 = Instant::now();
        let mut caller = TcpStream::connect(("127.0.0.1", out_port)).await.unwrap();
        caller
            .write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut caller, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        if t0.elapsed() >= Duration::from_millis(300) {
            waited += 1;
        }
    }
    assert!(
        waited <= 1,
        "{waited} requests waited for a dial to the dead endpoint"
    );
}

#[test]
fn allow_with_shadow_deny_lets_in_and_says_what_a_deny_would_have() {
    use causeway_api::proxy_config::{PermissionRule, SourceMatch};
    let mut ib = inbound(1, 2, Timeouts::DEFAULT);
    ib.default_action = Action::Deny;
    ib.permissions = vec![PermissionRule {
        source: SourceMatch::Spiffe {
            id: "spiffe://td/web".into(),
        },
        action: Action::AllowWithShadowDeny,
        policies: vec!["shadow".into()],
    }];
    let web = authorize(
        &ib,
        MtlsMode::Strict,
        Some(&causeway_api::proxy_config::Peer::id("spiffe://td/web")),
    )
    .unwrap();
    assert!(
        web.as_deref()
            .is_some_and(|r| r.contains("would be denied") && r.contains("shadow")),
        "{web:?}"
    );
    assert!(
        authorize(
            &ib,
            MtlsMode::Strict,
            Some(&causeway_api::proxy_config::Peer::id("spiffe://td/other"))
        )
        .is_err()
    );
    ib.permissions[0].action = Action::Allow;
    assert_eq!(
        authorize(
            &ib,
            MtlsMode::Strict,
            Some(&causeway_api::proxy_config::Peer::id("spiffe://td/web"))
        ),
        Ok(None)
    );
}
