//! The proxy's listeners on loopback, configured in-process (no control plane, mTLS
//! off): what MeshTimeout does to whole connections.

use std::sync::atomic::Ordering;
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
        access_logs: Vec::new(),
        limits: Vec::new(),
    }
}

fn outbound(port: u16, timeouts: Timeouts) -> OutboundListener {
    OutboundListener {
        port,
        vip: None,
        zone: None,
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
        access_log: Vec::new(),
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
        transparent: None,
        zone: "zone-a".into(),
        address: "127.0.0.1".into(),
        mtls: MtlsMode::Off,
        identity: None,
        inbounds,
        outbounds,
        revoked_cas: vec![],
        trusted_roots: vec![],
        issuer: None,
        metrics_endpoints: vec![],
        metrics_content: Default::default(),
        metrics_push: vec![],
        tracing: None,
    };
    let (_config_tx, config) = watch::channel(Some(Arc::new(cfg)));
    let (_identity_tx, identity) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let proxy = Proxy::new(config, identity, crate::DEFAULT_MAX_CONNECTIONS);
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
    counting_app(200, at_once()).await.0
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

#[tokio::test]
async fn an_application_slow_to_send_its_request_headers_to_an_outbound_is_cut_off() {
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.request_headers = causeway_api::Duration::from_millis(300);
    let _proxy = proxy_with(vec![], vec![outbound(port, t)]).await;
    let mut app = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    app.write_all(b"GET / HTTP/1.1\r\nhost: ").await.unwrap();
    read_to_close(&mut app, Duration::from_secs(3)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A keep-alive HTTP/1.1 application that answers each request with `status` and `ok`
/// once `release` lets it (at once when it holds permits), counting the requests it
/// received.
async fn counting_app(
    status: u16,
    release: Arc<tokio::sync::Semaphore>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (counted, release) = (counted.clone(), release.clone());
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
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(permit) = release.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// One request on a new connection to `port`: the answer's head and body.
async fn ask(port: u16, extra: &str) -> String {
    let mut caller = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n{extra}\r\n");
    caller.write_all(req.as_bytes()).await.unwrap();
    read_to_close(&mut caller, Duration::from_secs(10)).await
}

fn for_every_caller(
    limits: causeway_api::proxy_config::InboundLimits,
) -> Vec<causeway_api::proxy_config::CallerLimits> {
    vec![causeway_api::proxy_config::CallerLimits {
        source: causeway_api::proxy_config::SourceMatch::Any,
        limits,
    }]
}

/// Plenty of permits: an application that answers at once.
fn at_once() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(1 << 20))
}

#[tokio::test]
async fn an_application_that_keeps_failing_is_ejected_and_its_callers_answered_for_it() {
    let (app, seen) = counting_app(502, at_once()).await;
    let port = free_port();
    let mut ib = inbound(port, app, Timeouts::DEFAULT);
    ib.limits = for_every_caller(causeway_api::proxy_config::InboundLimits {
        outlier_detection: Some(causeway_api::proxy_config::OutlierDetection {
            base_ejection_time: causeway_api::Duration::from_secs(30),
            max_ejection_percent: 20,
            split_local_errors: false,
            total_failures: None,
            gateway_failures: Some(3),
            local_origin_failures: None,
            interval: causeway_api::Duration::from_secs(10),
            success_rate: None,
            failure_percentage: None,
        }),
        ..Default::default()
    });
    let _proxy = proxy_with(vec![ib], vec![]).await;
    for _ in 0..3 {
        let answer = ask(port, "").await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    // Ejected: answered by the sidecar, marked for the callers' sidecars, and the
    // application is spared.
    for _ in 0..5 {
        let answer = ask(port, "").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("x-causeway-error: app-ejected"), "{answer}");
        assert!(
            answer.contains("x-causeway-unavailable: ejected"),
            "{answer}"
        );
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_over_the_inbound_max_retries_are_answered_503_overflow() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (app, seen) = counting_app(200, release.clone()).await;
    let port = free_port();
    let mut ib = inbound(port, app, Timeouts::DEFAULT);
    ib.limits = for_every_caller(causeway_api::proxy_config::InboundLimits {
        max_retries: Some(1),
        ..Default::default()
    });
    let _proxy = proxy_with(vec![ib], vec![]).await;
    // One retry waits at the application.
    let held = tokio::spawn(ask(port, "x-causeway-attempt: 2\r\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "the retry never reached the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another retry is refused; a first try is not a retry and goes through.
    let answer = ask(port, "x-causeway-attempt: 3\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-causeway-error: overflow"), "{answer}");
    assert!(answer.contains("maxRetries (1)"), "{answer}");
    let first = tokio::spawn(ask(port, "x-causeway-attempt: 1\r\n"));
    while seen.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the first try never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.add_permits(2);
    assert!(held.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
    // Its place is free again.
    release.add_permits(1);
    let answer = ask(port, "x-causeway-attempt: 2\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_request_over_the_inbound_max_pending_requests_is_answered_503_overflow() {
    let mut held = Vec::new();
    // The application's accept queue is full: a dial to it hangs.
    let (_full, app) = crate::timeout::tests::full_listener(&mut held);
    let port = free_port();
    let mut t = Timeouts::DEFAULT;
    t.connect = causeway_api::Duration::from_secs(3);
    let mut ib = inbound(port, app.port(), t);
    ib.limits = for_every_caller(causeway_api::proxy_config::InboundLimits {
        max_pending_requests: Some(1),
        ..Default::default()
    });
    let _proxy = proxy_with(vec![ib], vec![]).await;
    let waiting = tokio::spawn(ask(port, ""));
    // The second request while the first waits for its dial: refused at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t0 = Instant::now();
        let answer = ask(port, "").await;
        if answer.contains("maxPendingRequests (1)") {
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(answer.contains("x-causeway-error: overflow"), "{answer}");
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
            break;
        }
        // The first had not started its dial yet: this one waited out the timeout.
        assert!(Instant::now() < deadline, "never refused: {answer}");
    }
    assert!(!waiting.is_finished(), "the first still waits for its dial");
}

#[test]
fn a_plaintext_caller_in_a_permissive_mesh_is_the_anonymous_identity() {
    use causeway_api::proxy_config::{PermissionRule, SourceMatch};
    let mut ib = inbound(1, 2, Timeouts::DEFAULT);
    ib.default_action = Action::Deny;
    let rule = |source, action| PermissionRule {
        source,
        action,
        policies: vec!["p".into()],
    };
    // No rule for every caller: the default (deny) holds; a rule for one service does
    // not cover it.
    ib.permissions = vec![rule(
        SourceMatch::Spiffe {
            id: "spiffe://td/web".into(),
        },
        Action::Allow,
    )];
    assert!(authorize(&ib, MtlsMode::Permissive, None).is_err());
    ib.permissions.push(rule(SourceMatch::Any, Action::Allow));
    assert_eq!(authorize(&ib, MtlsMode::Permissive, None), Ok(None));
    ib.permissions[1].action = Action::Deny;
    assert!(authorize(&ib, MtlsMode::Permissive, None).is_err());
    ib.permissions[1].action = Action::AllowWithShadowDeny;
    assert!(authorize(&ib, MtlsMode::Permissive, None).is_ok_and(|s| s.is_some()));
    // Without mTLS there are no identities to check; with Strict, none may come.
    assert_eq!(authorize(&ib, MtlsMode::Off, None), Ok(None));
    assert!(authorize(&ib, MtlsMode::Strict, None).is_err());
}

/// An identity for `spiffe_id`, signed by `root` (a leaf straight under the root).
fn identity_under(root: &causeway_pki::CertKey, spiffe_id: &str) -> Identity {
    let csr = causeway_pki::generate_csr("leaf").unwrap();
    let profile = causeway_pki::Profile::Leaf {
        common_name: "leaf".into(),
        names: vec![spiffe_id.to_string()],
    };
    let chain =
        causeway_pki::sign_csr(root, &csr.csr_pem, &profile, Duration::from_secs(3600)).unwrap();
    Identity::new(&chain, &csr.key_pem, &root.cert_pem, 0, Revoked::default()).unwrap()
}

/// The SPIFFE id of the certificate a client config presents.
fn presented_id(cfg: &rustls::ClientConfig) -> String {
    let key = cfg
        .client_auth_cert_resolver
        .resolve(&[], &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
        .expect("a client certificate");
    causeway_pki::cert_info_der(&key.cert[0]).unwrap().uris[0].clone()
}

/// Outbound mTLS presents the newest certificate after every renewal, even when a
/// renewed identity is replaced before any connection used it (its successor can then be
/// allocated where an older identity was: a cache keyed by address served the older
/// certificate, which a root CA rotation had made untrusted).
#[test]
fn outbound_mtls_presents_the_newest_certificate_after_every_renewal() {
    let root = causeway_pki::generate_ca("mesh root").unwrap();
    let (config_tx, config) = watch::channel(None);
    let (identity_tx, identity) = watch::channel(None);
    let proxy = Proxy::new(config, identity, crate::DEFAULT_MAX_CONNECTIONS);
    let expected = "spiffe://default/backend";
    for generation in 0..12 {
        let id = format!("spiffe://default/web-{generation}");
        identity_tx.send_replace(Some(Arc::new(identity_under(&root, &id))));
        // Every other identity is renewed away before any connection is dialed.
        if generation % 2 == 1 {
            continue;
        }
        let cfg = proxy
            .client_config(expected, ALPN_H2)
            .expect("a client config");
        assert_eq!(presented_id(&cfg), id, "generation {generation}");
    }
    drop(config_tx);
}
