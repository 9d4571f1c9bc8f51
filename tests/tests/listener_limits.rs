//! Every listener has limits, the same whatever the protocol: the sidecar's header
//! budget (64 KiB, `dataplane/src/http.rs`) over HTTP/1.1 and h2c alike, through both
//! sidecars to the application.

use causeway_tests::mesh::{MeshFixture, WebCallsBackend};
use serde_json::json;

/// A request with one header of `bytes` bytes through web's outbound (HTTP/1.1, or h2c
/// with prior knowledge): its status.
async fn call_with_header(out: u16, bytes: usize, h2c: bool) -> anyhow::Result<u16> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    if h2c {
        client = client.http2_prior_knowledge();
    }
    let r = client
        .build()?
        .get(format!("http://127.0.0.1:{out}/"))
        .header("x-big", "v".repeat(bytes))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// 40 KiB of headers pass the outbound, the sidecar-to-sidecar HTTP/2 and the inbound
/// over either protocol; 70 KiB get 431 over either (before: HTTP/1.1 let even 60 KiB
/// through while h2c answered 431 past 16 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_budget_is_the_same_over_http1_and_h2c() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs, out, ..
    } = fx.web_calls_backend().await?;
    for h2c in [false, true] {
        let proto = if h2c { "h2c" } else { "HTTP/1.1" };
        assert_eq!(
            call_with_header(out, 40 << 10, h2c).await?,
            200,
            "{proto}: 40 KiB"
        );
        assert_eq!(
            call_with_header(out, 70 << 10, h2c).await?,
            431,
            "{proto}: 70 KiB"
        );
    }
    Ok(())
}

/// One API under test: its address, the CA that signed its certificate, an admin token.
struct Api {
    addr: std::net::SocketAddr,
    ca: String,
    token: String,
}

/// A one-node global control plane and a zone, both up, and their two APIs. The cluster
/// and zone are returned to be kept alive for the test.
async fn both_apis() -> anyhow::Result<(
    causeway_tests::GlobalCluster,
    causeway_tests::ZoneCp,
    [Api; 2],
)> {
    use causeway_tests::{GlobalCluster, ZoneCp};
    let c = GlobalCluster::start(1, &[]).await?;
    let zone = ZoneCp::new(&c, "zone-a", vec![c.nodes[0].kds_url()], &[]).await?;
    zone.start()?;
    // The zone's API answers once it is up (its credentials are written then).
    zone.call(reqwest::Method::GET, "/status", None).await?;
    let apis = [
        Api {
            addr: c.nodes[0].api,
            ca: c.nodes[0].ca_pem().expect("the API CA"),
            token: c.token.clone(),
        },
        Api {
            addr: zone.api,
            ca: std::fs::read_to_string(zone.dir.join("api-ca.pem"))?,
            token: zone.admin_token().expect("the zone's admin token"),
        },
    ];
    Ok((c, zone, apis))
}

/// A client of an API over TLS trusting `ca_pem`, speaking HTTP/2 or HTTP/1.1 (ALPN).
fn api_client(ca_pem: &str, h2: bool) -> anyhow::Result<reqwest::Client> {
    let mut tls = causeway_pki::client_config(ca_pem, None)?;
    tls.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(20))
        .build()?)
}

/// A 20 MiB body to the global API and to a zone's API is answered 413, naming the
/// body, over HTTP/1.1 and HTTP/2 alike, without the API reading it (before: HTTP/2
/// clients saw their stream reset, and both protocols read 2 MiB first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_from_both_apis_over_both_protocols() -> anyhow::Result<()> {
    let (_c, _zone, apis) = both_apis().await?;
    let big = vec![b'a'; 20 << 20];
    for Api { addr, ca, token } in &apis {
        let url = format!("https://{addr}");
        for h2 in [false, true] {
            let r = api_client(ca, h2)?
                .put(format!("{url}/meshes/too-big"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(big.clone())
                .send()
                .await?;
            let version = r.version();
            let status = r.status();
            let body: serde_json::Value = r.json().await?;
            assert_eq!(status, 413, "{url} over {version:?}: {body}");
            assert_eq!(body["errors"][0]["field"], "body", "{body}");
            assert_eq!(
                version,
                if h2 {
                    reqwest::Version::HTTP_2
                } else {
                    reqwest::Version::HTTP_11
                }
            );
        }
    }
    Ok(())
}

/// Slowloris against both APIs: 40 clients that finish TLS and send half a request head,
/// and 40 that never start their TLS handshake, do not keep a request from being
/// answered at once, and each is cut off once its 10 s (header read, TLS handshake) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_of_the_apis_are_cut_off_and_others_served() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_c, _zone, apis) = both_apis().await?;
    for Api { addr, ca, .. } in &apis {
        let mut tls = causeway_pki::client_config(ca, None)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let mut slow = Vec::new();
        for _ in 0..40 {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let mut s = connector.connect(name.clone(), tcp).await?;
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n").await?;
            s.flush().await?;
            slow.push(s);
        }
        let mut half_open = Vec::new();
        for _ in 0..40 {
            half_open.push(tokio::net::TcpStream::connect(addr).await?);
        }
        let started = Instant::now();
        let ready = api_client(ca, false)?
            .get(format!("https://{addr}/ready"))
            .send()
            .await?;
        assert_eq!(
            ready.status(),
            200,
            "{addr}: answered while slow clients wait"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        for mut s in slow {
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                .await
                .context("a slow client still connected after 20 s")?;
            if let Ok(n) = read {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{addr}: {text}");
            }
        }
        for mut t in half_open {
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(20), t.read(&mut buf))
                .await
                .context("a half-open TLS handshake still open after 20 s")?
                .ok();
        }
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "{addr}: cut off before the stated 10 s ({:?})",
            started.elapsed()
        );
    }
    Ok(())
}

/// The gRPC listeners (KDS on global, DDS on a zone): 40 silent TLS handshakes to each
/// are cut off after the stated 10 s (tonic, left to itself, waits forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_to_kds_and_dds_are_cut_off() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use causeway_tests::{GlobalCluster, ZoneCp, free_addr};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt as _;
    let c = GlobalCluster::start(1, &[]).await?;
    let dds = free_addr();
    let zone = ZoneCp::new(
        &c,
        "zone-a",
        vec![c.nodes[0].kds_url()],
        &["--dds-addr", &dds.to_string()],
    )
    .await?;
    zone.start()?;
    zone.call(reqwest::Method::GET, "/status", None).await?;
    causeway_tests::eventually("the DDS listener", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(dds).await.ok()
    })
    .await?;
    let started = Instant::now();
    let mut silent = Vec::new();
    for addr in [c.nodes[0].kds, dds] {
        for _ in 0..40 {
            silent.push((addr, tokio::net::TcpStream::connect(addr).await?));
        }
    }
    for (addr, mut s) in silent {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .with_context(|| format!("a silent handshake to {addr} still open after 20 s"))?
            .ok();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "cut off before the stated 10 s: {took:?}"
    );
    // The zone's own KDS session is untouched.
    let (s, v) = zone.call(reqwest::Method::GET, "/status", None).await?;
    assert_eq!(s, 200, "{v}");
    Ok(())
}

/// A flood of half-open connections to a sidecar's inbound (the port other sidecars and
/// zones reach): calls through it keep working, and each silent connection is cut off
/// once the inbound's 10 s TLS handshake timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_to_an_inbound_stops_nothing() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt as _;
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs,
        out,
        inbound,
        ..
    } = fx.web_calls_backend().await?;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", inbound)).await?);
    }
    let http = causeway_tests::plain_http();
    for _ in 0..20 {
        let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
        assert_eq!(r.status(), 200, "a call through the flooded inbound");
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    for mut s in silent {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(25), s.read(&mut buf))
            .await
            .context("a silent connection to the inbound still open after 25 s")?
            .ok();
    }
    Ok(())
}

/// A body that trickles (its headers arrive, then one byte of 100) is answered 408 by
/// both APIs once the 10 s body deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_gets_408_from_both_apis() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_c, _zone, apis) = both_apis().await?;
    for Api { addr, ca, token } in &apis {
        let mut tls = causeway_pki::client_config(ca, None)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut s = connector
            .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        let head = format!(
            "PUT /meshes/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await?;
        s.flush().await?;
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .context("no answer 20 s after a trickling body")??;
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{addr}: {text}");
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// Both APIs cap connections: 256 from one address (here 127.0.0.1), past which that
/// address's new connections are closed at once while another address (127.0.0.2) is
/// served, and its own again once it closes some. A connection that finishes its TLS
/// handshake and then says nothing, not even HTTP/2's preface, is closed after the
/// stated 10 s (before: held for ever, so silent clients could take every descriptor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_cap_connections_per_address_and_close_silent_ones() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt as _;
    const PER_ADDRESS: usize = 256;
    let (_c, _zone, apis) = both_apis().await?;
    let from = |ip: Ipv4Addr, ca: &str| -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(causeway_pki::client_config(ca, None)?)
            .local_address(IpAddr::V4(ip))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()?)
    };
    for Api { addr, ca, .. } in &apis {
        let ready = format!("https://{addr}/ready");
        // One connection over TLS (HTTP/2 by ALPN) that never sends its preface.
        let mut tls = causeway_pki::client_config(ca, None)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut silent = connector
            .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        let silent_since = Instant::now();
        // Then more plain connections than the address may hold: the extra ones are
        // closed at once (the others wait in their TLS handshake, which takes 10 s to
        // time out, so within 3 s only the refused ones are closed).
        let (closed, open) = causeway_tests::flood(*addr, PER_ADDRESS + 43).await?;
        // The harness's own clients may hold a connection or two from the address too.
        assert!(
            closed >= 44 && open.len() < PER_ADDRESS && open.len() >= PER_ADDRESS - 8,
            "{addr}: {closed} refused and {} held past {PER_ADDRESS} per address",
            open.len()
        );
        assert!(
            from(Ipv4Addr::LOCALHOST, ca)?
                .get(&ready)
                .send()
                .await
                .is_err(),
            "{addr}: a request from the full address was served"
        );
        let r = from(Ipv4Addr::new(127, 0, 0, 2), ca)?
            .get(&ready)
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{addr}: another address is served");
        drop(open);
        causeway_tests::eventually(
            "the address is served again once its connections close",
            Duration::from_secs(10),
            || async {
                let r = from(Ipv4Addr::LOCALHOST, ca).ok()?.get(&ready).send().await;
                r.ok().filter(|r| r.status() == 200)
            },
        )
        .await?;
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(20), async {
            // Whatever the server sends first (its HTTP/2 settings, if any), then the close.
            while let Ok(n) = silent.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
        .with_context(|| format!("{addr}: a silent connection still open after 20 s"))?;
        assert!(
            silent_since.elapsed() >= Duration::from_secs(9),
            "{addr}: closed before the stated 10 s ({:?})",
            silent_since.elapsed()
        );
    }
    Ok(())
}

/// KDS and DDS (gRPC over TLS) take at most 2048 connections from one address (8192 in
/// all): more are closed at once, before their TLS handshake, while another address is
/// served, and a connection that never sends its ClientHello is closed after the stated
/// 10 s, which frees its place (before: tonic took every connection, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kds_and_dds_cap_connections_per_address_and_close_silent_ones() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt as _;
    const PER_ADDRESS: usize = 2048;
    let c = causeway_tests::GlobalCluster::start(1, &[]).await?;
    let dds = causeway_tests::free_addr();
    let zone = causeway_tests::ZoneCp::new(
        &c,
        "zone-a",
        vec![c.nodes[0].kds_url()],
        &["--dds-addr", &dds.to_string()],
    )
    .await?;
    zone.start()?;
    zone.call(reqwest::Method::GET, "/status", None).await?;
    let listeners: [(&str, SocketAddr, String); 2] = [
        (
            "KDS",
            c.nodes[0].kds,
            c.nodes[0].ca_pem().expect("the API CA"),
        ),
        (
            "DDS",
            dds,
            std::fs::read_to_string(zone.dir.join("api-ca.pem"))?,
        ),
    ];
    // A TLS handshake from `ip`: whether the listener served it.
    let handshake = |addr: SocketAddr, ca: String, ip: [u8; 4]| async move {
        let tls = causeway_pki::client_config(&ca, None).ok()?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::from((ip, 0))).ok()?;
        let tcp = sock.connect(addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .ok()?
            .ok()
    };
    for (what, addr, ca) in listeners {
        let started = Instant::now();
        let (closed, mut open) = causeway_tests::flood(addr, PER_ADDRESS + 40).await?;
        // The zone's own stream to KDS comes from the address too.
        assert!(
            closed >= 40 && open.len() <= PER_ADDRESS && open.len() >= PER_ADDRESS - 4,
            "{what}: {closed} refused and {} held past {PER_ADDRESS} per address",
            open.len()
        );
        assert!(
            handshake(addr, ca.clone(), [127, 0, 0, 1]).await.is_none(),
            "{what}: a handshake from the full address was served; open {}; zone log: {}",
            open.len(),
            zone.logs()
        );
        assert!(
            handshake(addr, ca.clone(), [127, 0, 0, 2]).await.is_some(),
            "{what}: another address is served"
        );
        // The silent ones are closed at their first-byte deadline, freeing the address.
        let mut buf = [0u8; 1];
        let first = open.first_mut().expect("held connections");
        let cut = tokio::time::timeout(Duration::from_secs(20), first.read(&mut buf)).await;
        assert!(
            cut.is_ok(),
            "{what}: a silent connection outlived its deadline"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "{what}: cut before 10 s"
        );
        causeway_tests::eventually(
            &format!("{what} serving the address again"),
            Duration::from_secs(10),
            || handshake(addr, ca.clone(), [127, 0, 0, 1]),
        )
        .await?;
        drop(open);
    }
    // The zone is connected to global once the floods are over. (A reconnect from the
    // full address would be refused until the flood ends, as it should be; the zone's
    // stream itself should not break: `zones::a_zone_and_global_with_different_heartbeats_
    // stay_connected` holds that, on an unloaded pair.)
    causeway_tests::eventually(
        "the zone connected to global",
        Duration::from_secs(30),
        || async {
            let s = zone.status().await.ok()?;
            (s["connected"] == true).then_some(())
        },
    )
    .await
    .with_context(|| zone.logs())?;
    Ok(())
}

/// A sidecar holds at most `--max-connections` inbound connections: a flood past it is
/// closed at once and counted, the callers already connected go on being served, and
/// the places come back as connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_caps_its_inbound_connections_and_serves_those_it_holds() -> anyhow::Result<()> {
    use causeway_tests::mesh::{answering, dataplane, instances};
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    const CAP: usize = 40;
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let app = causeway_tests::free_addr();
    let _backend_app = fx.app("backend-1", "backend", app, false)?;
    let inbound = causeway_tests::free_addr().port();
    let dp = dataplane("backend-1", "backend", inbound, app.port(), "http", &[]);
    let (_backend, backend_admin) = fx
        .sidecar_with("backend", dp, &["--max-connections", &CAP.to_string()])
        .await?;
    let (_web, _, out) = fx.web_calling("backend").await?;
    causeway_tests::eventually(
        "a call through both sidecars",
        Duration::from_secs(30),
        || async { (answering(out, 1).await? == instances(&["backend-1"])).then_some(()) },
    )
    .await?;
    // Enough calls that web's sidecar dialed both of the endpoint's pooled connections.
    assert_eq!(answering(out, 10).await, Some(instances(&["backend-1"])));

    let (closed, open) = causeway_tests::flood(
        std::net::SocketAddr::from(([127, 0, 0, 1], inbound)),
        CAP + 20,
    )
    .await?;
    // web's sidecar holds a connection or two of the cap.
    assert!(
        closed >= 20 && open.len() <= CAP && open.len() >= CAP - 4,
        "{closed} closed, {} held, cap {CAP}",
        open.len()
    );
    // web's pooled connection is one of those held: calls go on.
    for _ in 0..10 {
        assert_eq!(
            answering(out, 1).await,
            Some(instances(&["backend-1"])),
            "a call while the inbound is full"
        );
    }
    let metrics = causeway_tests::plain_http()
        .get(format!("http://{backend_admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("causeway_connections_refused_total{direction=\"inbound\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 20.0, "refusals counted: {refused}");
    // Places come back as connections close.
    drop(open);
    causeway_tests::eventually(
        "a new connection held again",
        Duration::from_secs(10),
        || async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", inbound))
                .await
                .ok()?;
            let mut buf = [0u8; 1];
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Without any MeshTimeout, a sidecar's inbound gives an HTTP/1.1 caller the stated 60 s
/// to send a request's headers: a slowloris caller (plaintext, in a Permissive mesh) is
/// cut off then, and other callers are served meanwhile (before: held for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_cuts_off_a_slowloris_caller_after_the_default_60_seconds() -> anyhow::Result<()>
{
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Permissive"}})).await?;
    let WebCallsBackend {
        procs: _procs,
        out,
        inbound,
        ..
    } = fx.web_calls_backend().await?;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", inbound)).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n")
        .await?;
    let started = Instant::now();
    let http = causeway_tests::plain_http();
    // Served meanwhile: web through the mesh, and another plaintext caller (refused by
    // the permissions as anonymous, which is an answer).
    for _ in 0..5 {
        let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!("http://127.0.0.1:{inbound}/"))
            .send()
            .await?;
        assert_eq!(r.status(), 403);
    }
    let mut buf = [0u8; 256];
    let cut = tokio::time::timeout(Duration::from_secs(90), async {
        // Whatever it answers (a 408, or nothing), then the close.
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        cut.is_ok(),
        "the slowloris caller still connected after 90 s"
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(55) && after <= Duration::from_secs(75),
        "cut off after {after:?}, not the stated 60 s"
    );
    Ok(())
}
