//! End to end across zones: a global control plane, zones `zone-a` and `zone-b` each with
//! a zone control plane and an ingress (`causeway ingress`), demo apps behind sidecars.
//! Calls cross zones through the destination zone's ingress with mTLS end to end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use causeway_tests::{
    GlobalCluster, Proc, ZoneCp, admin_config, admin_metric, admin_ready, eventually, free_addr,
    plain_http, put, sh,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Zone {
    cp: ZoneCp,
    dds: SocketAddr,
}

struct Mesh {
    c: GlobalCluster,
    zones: Vec<Zone>,
    dir: PathBuf,
    /// Ingresses accept QUIC (and other zones' sidecars use it).
    quic: bool,
}

impl Mesh {
    /// One global node, a Strict-mTLS mesh that allows all traffic, and `zones`.
    async fn new(zones: &[&str]) -> anyhow::Result<Mesh> {
        let zones: Vec<(&str, usize)> = zones.iter().map(|z| (*z, 0)).collect();
        Mesh::on_nodes(1, &zones).await
    }

    /// [`Mesh::new`] with `nodes` global nodes, each zone connected to the node given.
    async fn on_nodes(nodes: u64, zones: &[(&str, usize)]) -> anyhow::Result<Mesh> {
        let c = GlobalCluster::start(nodes, &["--kds-heartbeat", "500ms"]).await?;
        put(
            &c,
            "/meshes/default",
            &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
        )
        .await?;
        put(&c, "/meshes/default/meshtrafficpermissions/all", &json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "all",
            "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}})).await?;
        let mut out = Vec::new();
        for (name, node) in zones {
            let dds = free_addr();
            let cp = ZoneCp::new(
                &c,
                name,
                c.kds_urls_from(*node),
                &["--dds-addr", &dds.to_string()],
            )
            .await?;
            cp.start()?;
            out.push(Zone { cp, dds });
        }
        for z in &out {
            eventually("the zone's intermediate CA", WAIT, || async {
                let s = z.cp.status().await.ok()?;
                (s["intermediates"][0]["mesh"] == "default").then_some(())
            })
            .await
            .with_context(|| z.cp.logs())?;
        }
        let dir = c.tmp.path().to_path_buf();
        Ok(Mesh {
            c,
            zones: out,
            dir,
            quic: false,
        })
    }

    fn zone(&self, name: &str) -> &Zone {
        self.zones
            .iter()
            .find(|z| z.cp.name == name)
            .expect("a zone of the fixture")
    }

    async fn token(&self, path: &str, body: Value) -> anyhow::Result<PathBuf> {
        let (s, v) = self.c.call_retry(Method::POST, path, Some(&body)).await?;
        anyhow::ensure!(s == StatusCode::CREATED, "{s} {v}");
        let file = self.dir.join(format!("{}.token", free_addr().port()));
        std::fs::write(&file, v["token"].as_str().context("token")?)?;
        Ok(file)
    }

    fn cp_args(&self, zone: &str, token: &std::path::Path) -> Vec<String> {
        let z = self.zone(zone);
        vec![
            "--cp".into(),
            format!("https://{}", z.dds),
            "--cp-ca-file".into(),
            z.cp.dir.join("api-ca.pem").display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ]
    }

    /// A demo app reporting `instance` in `zone`.
    fn app(&self, zone: &str, instance: &str, service: &str) -> anyhow::Result<(Proc, u16)> {
        let listen = free_addr();
        let app = Proc::demo_app(&self.dir, zone, instance, service, listen, false)?;
        Ok((app, listen.port()))
    }

    /// A sidecar in `zone` for `name` (inbound of `service` to `app_port` when given,
    /// outbounds to `calls`); returns it, its admin address and its outbound ports.
    async fn sidecar(
        &self,
        zone: &str,
        name: &str,
        service: &str,
        app_port: Option<u16>,
        calls: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr, Vec<u16>)> {
        let outs: Vec<u16> = calls.iter().map(|_| free_addr().port()).collect();
        let inbound: Vec<Value> = app_port
            .map(|p| json!({"port": free_addr().port(), "servicePort": p, "service": service, "protocol": "http"}))
            .into_iter()
            .collect();
        let inbound = if inbound.is_empty() {
            // A caller only: its identity comes from an inbound that nothing calls.
            vec![json!({"port": free_addr().port(), "service": service, "protocol": "http"})]
        } else {
            inbound
        };
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": {
            "address": "127.0.0.1",
            "inbound": inbound,
            "outbound": calls.iter().zip(&outs).map(|(s, p)| json!({"port": p, "service": s})).collect::<Vec<_>>(),
        }});
        let (p, admin) = self.start_sidecar(zone, service, dp, &[]).await?;
        Ok((p, admin, outs))
    }

    /// A sidecar in `zone` for the Dataplane `dp` of `service`, with `extra` flags;
    /// returns it and its admin address once it is ready.
    async fn start_sidecar(
        &self,
        zone: &str,
        service: &str,
        dp: Value,
        extra: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let name = dp["name"].as_str().context("a name")?.to_string();
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&dp)?)?;
        let token = self
            .token(
                "/meshes/default/dataplane-token",
                json!({"service": service}),
            )
            .await?;
        let admin = free_addr();
        let mut args = vec!["dataplane".to_string()];
        args.extend(self.cp_args(zone, &token));
        args.extend([
            "--dataplane-file".into(),
            file.display().to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let p = Proc::start(&self.dir, &format!("sidecar-{name}"), &args)?;
        admin_ready(&format!("sidecar {name}"), admin, &p).await?;
        Ok((p, admin))
    }

    /// An ingress for `zone`; returns it, its listen and admin addresses.
    async fn ingress(
        &self,
        zone: &str,
        name: &str,
    ) -> anyhow::Result<(Proc, SocketAddr, SocketAddr)> {
        let extra: &[&str] = if self.quic { &["--quic"] } else { &[] };
        self.ingress_with(zone, name, extra).await
    }

    /// An ingress for `zone` with extra flags (`--quic`).
    async fn ingress_with(
        &self,
        zone: &str,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr, SocketAddr)> {
        let token = self
            .token(&format!("/zones/{zone}/ingress-token"), json!({}))
            .await?;
        let (listen, admin) = (free_addr(), free_addr());
        let mut args = vec!["ingress".to_string()];
        args.extend(self.cp_args(zone, &token));
        args.extend([
            "--name".into(),
            name.into(),
            "--listen".into(),
            listen.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = Proc::start(&self.dir, name, &args)?;
        admin_ready(&format!("ingress {name}"), admin, &p).await?;
        Ok((p, listen, admin))
    }
}

/// One call through an outbound port: the demo app's answer.
async fn call(http: &reqwest::Client, port: u16) -> Option<Value> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A TLS handshake with `sni` to `addr`: the server's certificate chain, or the error.
async fn handshake(addr: SocketAddr, sni: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(causeway_tests::AcceptAnyServerForTest(
            provider,
        )))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await??;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_crosses_zones_through_the_ingress_with_mtls_end_to_end() -> anyhow::Result<()> {
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    // backend only in zone-b, two instances; two ingresses there share the load.
    let (_b1, p1) = m.app("zone-b", "b1", "backend")?;
    let (_b2, p2) = m.app("zone-b", "b2", "backend")?;
    let _s1 = m
        .sidecar("zone-b", "backend-1", "backend", Some(p1), &[])
        .await?;
    let _s2 = m
        .sidecar("zone-b", "backend-2", "backend", Some(p2), &[])
        .await?;
    let (_i1, ing1, admin1) = m.ingress("zone-b", "zone-b-ingress-1").await?;
    let (_i2, _ing2, admin2) = m.ingress("zone-b", "zone-b-ingress-2").await?;
    let (_web, web_admin, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let http = plain_http();

    // zone-a's web reaches both zone-b instances, per request, through both ingresses,
    // and the backend's sidecar saw web's own identity: the TLS went end to end.
    let seen = eventually("both zone-b backends answering in zone-a", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let v = call(&http, outs[0]).await?;
            assert_eq!(v["zone"], "zone-b");
            assert_eq!(v["peer"], "spiffe://default/web", "{v}");
            seen.insert(v["instance"].as_str()?.to_string());
        }
        (seen.len() == 2).then_some(seen)
    })
    .await
    .with_context(|| m.zone("zone-a").cp.logs())?;
    assert_eq!(seen.len(), 2);
    // web counts its calls under the zone that answered them.
    let by_zone = |zone: &str| {
        let series = format!(
            "causeway_requests_total{{direction=\"outbound\",service=\"backend\",peer=\"web\",peer_zone=\"{zone}\",status_class=\"2xx\"}}"
        );
        let http = http.clone();
        async move { admin_metric(&http, web_admin, &series).await }
    };
    assert!(by_zone("zone-b").await >= 40.0, "web's answers from zone-b");
    assert_eq!(by_zone("").await, 0.0, "no answer counted without its zone");
    for admin in [admin1, admin2] {
        let n = admin_metric(
            &http,
            admin,
            "causeway_ingress_connections_total{result=\"forwarded\"}",
        )
        .await;
        assert!(
            n >= 1.0,
            "every ingress carries some of the traffic ({admin}: {n})"
        );
        // ... counted per destination service, bytes both ways.
        let to_backend = |s: &str| {
            format!(
                "causeway_ingress_destination_{s}{{mesh=\"default\",zone=\"zone-b\",service=\"backend\"}}"
            )
        };
        let forwarded = admin_metric(&http, admin, &to_backend("connections_total")).await;
        let bytes = admin_metric(&http, admin, &to_backend("bytes_total")).await;
        assert!(
            forwarded >= 1.0 && bytes > 0.0,
            "{admin}: {forwarded} {bytes}"
        );
    }

    // The ZoneIngress on global lists what zone-b offers, with endpoint ids.
    let (s, v) =
        m.c.call_retry(
            Method::GET,
            "/meshes/default/zoneingresses/zone-b-ingress-1",
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["origin"], "zone-b");
    // One offer per port and tag set: backend's two instances listen on two ports.
    let offers = v["spec"]["availableServices"]
        .as_array()
        .context("available services")?;
    assert!(offers.iter().all(|o| o["service"] == "backend"), "{v}");
    let count = |key: &str| -> usize {
        offers
            .iter()
            .map(|o| match &o[key] {
                Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
                Value::Array(a) => a.len(),
                _ => 0,
            })
            .sum()
    };
    assert_eq!((count("instances"), count("endpoints")), (2, 2), "{v}");
    assert!(
        offers
            .iter()
            .all(|o| o["tags"]["causeway.io/port"].is_string()),
        "each offer says its port: {v}"
    );

    // The ingress does not terminate TLS: a handshake through it meets the backend
    // sidecar's own certificate (for spiffe://default/backend), which the ingress never had.
    let chain = handshake(ing1, "backend.default.causeway").await?;
    let leaf = causeway_pki::cert_info_der(&chain[0])?;
    assert!(
        leaf.uris.iter().any(|u| u == "spiffe://default/backend"),
        "the certificate behind the ingress is the backend's: {:?}",
        leaf.uris
    );
    let (_, cfg) = {
        let r = http.get(format!("http://{admin1}/config")).send().await?;
        (r.status(), r.text().await?)
    };
    assert!(
        !cfg.contains("PRIVATE KEY") && !cfg.contains("CERTIFICATE"),
        "{cfg}"
    );

    // What the ingress does not serve is refused: an unknown SNI, no TLS at all.
    let refused_before = admin_metric(
        &http,
        admin1,
        "causeway_ingress_connections_total{result=\"refused_unknown_sni\"}",
    )
    .await;
    assert!(handshake(ing1, "db.default.causeway").await.is_err());
    assert!(
        handshake(ing1, "backend.other-mesh.causeway")
            .await
            .is_err()
    );
    let refused = admin_metric(
        &http,
        admin1,
        "causeway_ingress_connections_total{result=\"refused_unknown_sni\"}",
    )
    .await;
    assert_eq!(refused - refused_before, 2.0);
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(ing1).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
        assert_eq!(
            n, 0,
            "plain HTTP gets nothing back, the connection is closed"
        );
    }

    // An ingress token grants no workload certificate.
    let token = m.token("/zones/zone-b/ingress-token", json!({})).await?;
    let err = sign_with(&m, "zone-b", &std::fs::read_to_string(&token)?).await;
    assert!(
        err.as_ref().is_err_and(|e| e.contains("dataplane token")),
        "{err:?}"
    );
    // And an ingress token for zone-b cannot register an ingress in zone-a.
    let args = {
        let mut a = vec!["ingress".to_string()];
        a.extend(m.cp_args("zone-a", &token));
        a.extend([
            "--name".into(),
            "sneaky".into(),
            "--listen".into(),
            free_addr().to_string(),
            "--admin-addr".into(),
            free_addr().to_string(),
        ]);
        a
    };
    let sneaky = Proc::start(&m.dir, "sneaky-ingress", &args)?;
    eventually("the zone-a refusal in the ingress's log", WAIT, || async {
        sneaky
            .logs()
            .contains("the ingress token is for zone \"zone-b\"")
            .then_some(())
    })
    .await
    .with_context(|| sneaky.logs())?;
    Ok(())
}

/// Asks `zone` for a workload certificate with `token`: the zone's refusal, if any.
async fn sign_with(m: &Mesh, zone: &str, token: &str) -> Result<(), String> {
    use causeway_api::kds::dds::SignRequest;
    use causeway_api::kds::dds::dds_client::DdsClient;
    let z = m.zone(zone);
    let ca = std::fs::read_to_string(z.cp.dir.join("api-ca.pem")).map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", z.dds))
        .map_err(|e| e.to_string())?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let csr = causeway_pki::generate_csr("x").map_err(|e| e.to_string())?;
    DdsClient::new(channel)
        .sign(SignRequest {
            token: token.to_string(),
            csr_pem: csr.csr_pem,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_local_fail_over_to_another_zone_at_once_and_a_disabled_zone_is_out()
-> anyhow::Result<()> {
    failover(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_calls_stay_local_fail_over_at_once_and_a_disabled_zone_is_out()
-> anyhow::Result<()> {
    failover(true).await
}

async fn failover(quic: bool) -> anyhow::Result<()> {
    let mut m = Mesh::new(&["zone-a", "zone-b"]).await?;
    m.quic = quic;
    let (local_app, pa) = m.app("zone-a", "a1", "backend")?;
    let (_bb, pb) = m.app("zone-b", "b1", "backend")?;
    let _local = m
        .sidecar("zone-a", "backend-a", "backend", Some(pa), &[])
        .await?;
    let _remote = m
        .sidecar("zone-b", "backend-b", "backend", Some(pb), &[])
        .await?;
    let _ia = m.ingress("zone-a", "zone-a-ingress").await?;
    let (_ib, _, ib_admin) = m.ingress("zone-b", "zone-b-ingress").await?;
    let (web, web_admin, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let http = plain_http();
    let out = outs[0];

    // Wait until zone-b is known to web as the failover group, then: all calls local.
    eventually("zone-b in web's config", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        let groups = &cfg["config"]["outbounds"][0]["groups"];
        (groups[0]["zone"] == "zone-a"
            && groups[1]["zone"] == "zone-b"
            && groups[1]["endpoints"][0]["quic"].as_bool().unwrap_or(false) == quic)
            .then_some(())
    })
    .await
    .with_context(|| web.logs())?;
    for _ in 0..30 {
        let v = call(&http, out).await.context("a local call")?;
        assert_eq!(
            v["zone"], "zone-a",
            "with a healthy local endpoint, calls stay local"
        );
    }

    // kill -9 zone-a's backend (the app; its sidecar lives on and still registers the
    // endpoint): traffic moves to zone-b on the data plane's evidence alone.
    local_app.kill();
    let killed = Instant::now();
    let mut failed = 0;
    let moved = loop {
        match call(&http, out).await {
            Some(v) if v["zone"] == "zone-b" => break killed.elapsed(),
            Some(_) => {}
            None => failed += 1,
        }
        anyhow::ensure!(killed.elapsed() < WAIT, "traffic never moved to zone-b");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("failover to zone-b: {moved:?}, {failed} failed requests");
    assert!(moved < Duration::from_secs(1), "failover took {moved:?}");
    assert!(failed <= 3, "{failed} requests failed during failover");
    for _ in 0..20 {
        let v = call(&http, out).await.context("a call after failover")?;
        assert_eq!(v["zone"], "zone-b");
    }
    let streams = admin_metric(&http, ib_admin, "causeway_ingress_quic_streams_total").await;
    assert_eq!(
        streams > 0.0,
        quic,
        "zone-b reached over QUIC iff its ingress offers it"
    );

    // zone-b disabled: its endpoints leave zone-a's configs, calls get no answer.
    put(
        &m.c,
        "/zones/zone-b",
        &json!({"type": "Zone", "name": "zone-b", "spec": {"enabled": false}}),
    )
    .await?;
    eventually(
        "zone-b's endpoints gone from web's config",
        WAIT,
        || async {
            let cfg: Value = http
                .get(format!("http://{web_admin}/config"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let groups = cfg["config"]["outbounds"][0]["groups"].as_array()?.clone();
            groups.iter().all(|g| g["zone"] != "zone-b").then_some(())
        },
    )
    .await?;
    let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_down_drill_moves_traffic_away_and_back_and_reports_it() -> anyhow::Result<()> {
    drill(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_zone_down_drill_moves_traffic_away_and_back() -> anyhow::Result<()> {
    drill(true).await
}

/// backend in zone-a and zone-b (an app and a sidecar in each, both zones' ingresses),
/// and web in zone-a calling it with calls spread round robin over both zones, so that
/// zone-b's loss has something to move. Ready once calls reach both zones.
struct SpreadBackend {
    web: Proc,
    web_admin: SocketAddr,
    /// web's outbound port for backend.
    out: u16,
    /// zone-b's ingress: its listen and admin addresses.
    ing_b: SocketAddr,
    ing_b_admin: SocketAddr,
    /// zone-b's ingress, backend app and sidecar, to freeze.
    zone_b: Vec<Proc>,
    /// zone-a's; all stopped before the control planes.
    _zone_a: Vec<Proc>,
    m: Mesh,
}

impl SpreadBackend {
    async fn start(quic: bool) -> anyhow::Result<SpreadBackend> {
        let mut m = Mesh::new(&["zone-a", "zone-b"]).await?;
        m.quic = quic;
        let mut procs = Vec::new();
        for (zone, app, sidecar) in [("zone-a", "a1", "backend-a"), ("zone-b", "b1", "backend-b")] {
            let (app, port) = m.app(zone, app, "backend")?;
            let sidecar = m
                .sidecar(zone, sidecar, "backend", Some(port), &[])
                .await?
                .0;
            procs.push(vec![app, sidecar]);
        }
        let (mut zone_a, mut zone_b) = (procs.remove(0), procs.remove(0));
        zone_a.push(m.ingress("zone-a", "zone-a-ingress").await?.0);
        let (ingress_b, ing_b, ing_b_admin) = m.ingress("zone-b", "zone-b-ingress").await?;
        zone_b.push(ingress_b);
        put(&m.c, "/meshes/default/meshloadbalancingstrategies/spread", &json!({
            "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "spread",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                     "default": {"loadBalancer": {"type": "RoundRobin"}, "localityAwareness": {"disabled": true}}}]}})).await?;
        let (web, web_admin, outs) = m
            .sidecar("zone-a", "web-1", "web", None, &["backend"])
            .await?;
        let http = plain_http();
        eventually("backend answering from both zones", WAIT, || async {
            let mut zones = std::collections::BTreeSet::new();
            for _ in 0..10 {
                zones.insert(call(&http, outs[0]).await?["zone"].as_str()?.to_string());
            }
            (zones.len() == 2).then_some(())
        })
        .await?;
        Ok(SpreadBackend {
            web,
            web_admin,
            out: outs[0],
            ing_b,
            ing_b_admin,
            zone_b,
            _zone_a: zone_a,
            m,
        })
    }

    /// Freezes (SIGSTOP) or thaws zone-b's ingress, backend app and sidecar: a zone whose
    /// network went dark, with no RST and no word from any control plane.
    fn freeze_zone_b(&self, frozen: bool) {
        for p in &self.zone_b {
            p.pause(frozen);
        }
    }
}

async fn drill(quic: bool) -> anyhow::Result<()> {
    let spread = SpreadBackend::start(quic).await?;
    let (m, ing_b, ing_b_admin, web_admin) = (
        &spread.m,
        spread.ing_b,
        spread.ing_b_admin,
        spread.web_admin,
    );
    let outs = [spread.out];
    let http = plain_http();

    // The drill, followed live by the CLI as an operator would.
    let mut cmd = m.c.cli_command(&[
        "drill",
        "zone-down",
        "--zone",
        "zone-b",
        "--probe",
        "backend",
        "--duration",
        "4s",
        "--name",
        "b-down",
    ]);
    let follower = std::thread::spawn(move || cmd.output());
    // While it runs: zone-b's ingress refuses, zone-b's endpoints leave zone-a's configs,
    // and every call is answered in zone-a.
    zone_b_in_configs(&http, web_admin, false, "zone-b down").await?;
    assert!(
        handshake(ing_b, "backend.default.causeway").await.is_err(),
        "zone-b's ingress refuses during the drill"
    );
    assert!(
        admin_metric(
            &http,
            ing_b_admin,
            "causeway_ingress_connections_total{result=\"refused_drill\"}"
        )
        .await
            >= 1.0
    );
    for _ in 0..10 {
        let v = call(&http, outs[0])
            .await
            .context("a call during the drill")?;
        assert_eq!(v["zone"], "zone-a");
    }
    // It ends by itself: zone-b is back.
    zone_b_in_configs(&http, web_admin, true, "zone-b back").await?;
    assert!(handshake(ing_b, "backend.default.causeway").await.is_ok());

    let out = follower.join().expect("the follower thread")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("report of drill b-down"), "{stdout}");
    assert!(stdout.contains("from zone-a (done)"), "{stdout}");
    assert!(stdout.contains("detected, moved in"), "{stdout}");

    // The report on global says what the probe in zone-a saw.
    let (s, v) =
        m.c.call_retry(
            Method::GET,
            "/meshes/default/drillreports/b-down-zone-a",
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v["spec"];
    assert_eq!(v["origin"], "zone-a");
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["drilledZoneServedBefore"], true, "{r}");
    assert!(r["before"]["zones"]["zone-b"].as_u64() > Some(0), "{r}");
    assert!(r["during"]["requests"].as_u64() >= Some(20), "{r}");
    let moved = r["movedAfterMs"].as_u64().context("moved")?;
    // Zone-b answers only until the drill reaches zone-a's configs (the move), at the
    // probe's pace of one call per 100 ms.
    let from_b = r["during"]["zones"]["zone-b"].as_u64().unwrap_or(0);
    assert!(
        from_b <= moved / 100 + 1,
        "zone-b answered only before traffic moved: {r}"
    );
    assert!(moved <= 1000, "traffic moved within a second: {r}");
    assert!(r["failedDuringMove"].as_u64() <= Some(5), "{r}");
    assert!(
        r["recoveredAfterMs"].as_u64().is_some(),
        "zone-b answered again after the drill: {r}"
    );
    assert!(r["after"]["zones"]["zone-b"].as_u64() > Some(0), "{r}");

    // `drill list` shows it ended, with the report; `drill stop` ends another early.
    let (ok, list, err) = m.c.cli(&["drill", "list"])?;
    assert!(ok, "{err}");
    assert!(
        list.contains("b-down: ZoneDown (Drain) of zone-b") && list.contains("ended"),
        "{list}"
    );
    // A detached drill (the CLI gone at once) ends by itself at its expiry.
    let (ok, _, err) = m.c.cli(&[
        "drill",
        "zone-down",
        "--zone",
        "zone-b",
        "--duration",
        "2s",
        "--name",
        "short",
        "--detach",
    ])?;
    assert!(ok, "{err}");
    zone_b_in_configs(&http, web_admin, false, "zone-b down by the detached drill").await?;
    zone_b_in_configs(
        &http,
        web_admin,
        true,
        "zone-b back at the detached drill's expiry",
    )
    .await?;
    let (ok, _, err) = m.c.cli(&[
        "drill",
        "zone-down",
        "--zone",
        "zone-b",
        "--duration",
        "10m",
        "--name",
        "long",
        "--detach",
    ])?;
    assert!(ok, "{err}");
    zone_b_in_configs(&http, web_admin, false, "zone-b down again").await?;
    let (ok, stopped, err) = m.c.cli(&["drill", "stop", "long"])?;
    assert!(
        ok && stopped.contains("drill long stopped"),
        "{stopped}{err}"
    );
    zone_b_in_configs(&http, web_admin, true, "zone-b back after the stop").await?;
    let (_, list, _) = m.c.cli(&["drill", "list"])?;
    assert!(
        list.contains("long: ZoneDown (Drain) of zone-b") && list.contains("stopped"),
        "{list}"
    );
    // A drill of an unknown zone is refused with the reason.
    let (ok, _, err) =
        m.c.cli(&["drill", "zone-down", "--zone", "nowhere", "--detach"])?;
    assert!(
        !ok && err.contains("zone \"nowhere\" is not known"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_drill_silences_the_zone_without_a_word_from_the_control_plane()
-> anyhow::Result<()> {
    blackhole(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_blackhole_drill_silences_the_zone_without_a_word_from_the_control_plane()
-> anyhow::Result<()> {
    blackhole(true).await
}

/// Whether `addr` answers nothing within a second and a half: a TCP connection is taken
/// (the kernel's backlog) but no TLS ServerHello, refusal or close comes back.
async fn tcp_silent(addr: SocketAddr) -> bool {
    tokio::time::timeout(
        Duration::from_millis(1500),
        handshake(addr, "backend.default.causeway"),
    )
    .await
    .is_err()
}

/// Whether a QUIC handshake with `addr` gets no answer at all (not even a refusal)
/// within a second and a half.
async fn quic_silent(addr: SocketAddr) -> anyhow::Result<bool> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(causeway_tests::AcceptAnyServerForTest(
            provider,
        )))
        .with_no_client_auth();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )));
    let connecting = endpoint.connect(addr, "ingress.causeway")?;
    // Any answer (a connection, or a close for the unknown ALPN) means it is not silent.
    let silent = tokio::time::timeout(Duration::from_millis(1500), connecting)
        .await
        .is_err();
    endpoint.close(0u32.into(), b"");
    Ok(silent)
}

/// A blackhole drill: zone-b's ingress goes silent (no refusal, no reset, over TCP and
/// QUIC) while the control plane tells zone-a nothing (zone-b's endpoints stay in its
/// configs); at the end the ingress answers again and zone-b serves again.
async fn blackhole(quic: bool) -> anyhow::Result<()> {
    let mut m = Mesh::new(&["zone-a", "zone-b"]).await?;
    m.quic = quic;
    let (_bb, pb) = m.app("zone-b", "b1", "backend")?;
    let _sb = m
        .sidecar("zone-b", "backend-b", "backend", Some(pb), &[])
        .await?;
    let _ia = m.ingress("zone-a", "zone-a-ingress").await?;
    let (_ib, ing_b, ing_b_admin) = m.ingress("zone-b", "zone-b-ingress").await?;
    let (_web, web_admin, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let http = plain_http();
    eventually("backend answering from zone-b", WAIT, || async {
        (call(&http, outs[0]).await?["zone"] == "zone-b").then_some(())
    })
    .await?;
    assert!(!tcp_silent(ing_b).await, "zone-b's ingress answers before");
    if quic {
        assert!(!quic_silent(ing_b).await?, "QUIC answers before");
    }

    let (ok, out, err) = m.c.cli(&[
        "drill",
        "zone-down",
        "--zone",
        "zone-b",
        "--mode",
        "blackhole",
        "--duration",
        "8s",
        "--name",
        "b-dark",
        "--detach",
    ])?;
    assert!(ok, "{err}");
    assert!(out.contains("zone-b blackholed (silent)"), "{out}");
    eventually("zone-b's ingress silent", WAIT, || async {
        tcp_silent(ing_b).await.then_some(())
    })
    .await?;
    if quic {
        assert!(quic_silent(ing_b).await?, "QUIC silent during the drill");
    }
    // Silent, not refusing: the ingress counted no refusal.
    assert_eq!(
        admin_metric(
            &http,
            ing_b_admin,
            "causeway_ingress_connections_total{result=\"refused_drill\"}"
        )
        .await,
        0.0
    );
    // The control plane says nothing: zone-b is still in zone-a's sidecar's config.
    let cfg = admin_config(&http, web_admin)
        .await
        .context("web's config")?;
    assert!(zone_b_groups(&cfg) > 0, "zone-b left the config: {cfg}");
    let (_, list, _) = m.c.cli(&["drill", "list"])?;
    assert!(
        list.contains("b-dark: ZoneDown (Blackhole) of zone-b"),
        "{list}"
    );

    // It ends by itself: the ingress answers again, and zone-b serves zone-a again.
    eventually("zone-b's ingress answering again", WAIT, || async {
        (!tcp_silent(ing_b).await).then_some(())
    })
    .await?;
    if quic {
        assert!(!quic_silent(ing_b).await?, "QUIC answers after the drill");
    }
    eventually(
        "backend answering from zone-b after the drill",
        WAIT,
        || async { (call(&http, outs[0]).await?["zone"] == "zone-b").then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_cross_zone_connections_are_streams_of_one_connection_with_mtls_inside()
-> anyhow::Result<()> {
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    let (b1_app, p1) = m.app("zone-b", "b1", "backend")?;
    let (_b2, p2) = m.app("zone-b", "b2", "backend")?;
    let _s1 = m
        .sidecar("zone-b", "backend-1", "backend", Some(p1), &[])
        .await?;
    let _s2 = m
        .sidecar("zone-b", "backend-2", "backend", Some(p2), &[])
        .await?;
    let (_ib, _, ib_admin) = m
        .ingress_with("zone-b", "zone-b-ingress", &["--quic"])
        .await?;
    let (web, web_admin, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let http = plain_http();
    let cfg = eventually(
        "zone-b's endpoints over QUIC in web's config",
        WAIT,
        || async {
            let cfg = admin_config(&http, web_admin).await?;
            let eps = cfg["config"]["outbounds"][0]["groups"][0]["endpoints"]
                .as_array()?
                .clone();
            (eps.len() == 2 && eps.iter().all(|e| e["quic"] == true)).then_some(cfg)
        },
    )
    .await
    .with_context(|| web.logs())?;
    assert_eq!(cfg["config"]["outbounds"][0]["groups"][0]["zone"], "zone-b");
    // Per request over both remote endpoints, the backend's sidecar seeing web's identity.
    let seen = eventually("both zone-b backends over QUIC", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let v = call(&http, outs[0]).await?;
            assert_eq!(v["peer"], "spiffe://default/web", "{v}");
            seen.insert(v["instance"].as_str()?.to_string());
        }
        (seen.len() == 2).then_some(seen)
    })
    .await
    .with_context(|| web.logs())?;
    assert_eq!(seen.len(), 2);
    let streams = admin_metric(&http, ib_admin, "causeway_ingress_quic_streams_total").await;
    let forwarded = admin_metric(
        &http,
        ib_admin,
        "causeway_ingress_connections_total{result=\"forwarded\"}",
    )
    .await;
    assert!(
        streams >= 2.0,
        "one stream per remote endpoint at least: {streams}"
    );
    assert_eq!(
        forwarded, streams,
        "every connection to zone-b came as a QUIC stream"
    );
    assert!(
        web.logs()
            .matches("QUIC connection to another zone's ingress")
            .count()
            == 1,
        "one QUIC connection for the zone: {}",
        web.logs()
    );

    // A remote endpoint whose app dies is ejected over QUIC too: the other answers.
    b1_app.kill();
    eventually("only b2 answering", WAIT, || async {
        for _ in 0..10 {
            let v = call(&http, outs[0]).await?;
            if v["instance"] != "b2" {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}

/// How many endpoint groups of web's outbound hold zone-b endpoints.
fn zone_b_groups(cfg: &Value) -> usize {
    cfg["config"]["outbounds"][0]["groups"]
        .as_array()
        .map_or(0, |g| {
            g.iter()
                .filter(|g| {
                    g["endpoints"].as_array().is_some_and(|e| {
                        e.iter().any(|e| e["tags"]["causeway.io/zone"] == "zone-b")
                    })
                })
                .count()
        })
}

/// Waits until zone-b's endpoints are in (or out of) the sidecar's config at `admin`.
async fn zone_b_in_configs(
    http: &reqwest::Client,
    admin: SocketAddr,
    present: bool,
    what: &str,
) -> anyhow::Result<()> {
    eventually(what, WAIT, || async {
        let cfg = admin_config(http, admin).await?;
        ((zone_b_groups(&cfg) > 0) == present).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_zone_is_detected_within_seconds_and_later_calls_do_not_hang() -> anyhow::Result<()>
{
    silent_zone(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_silent_zone_is_detected_within_seconds_and_later_calls_do_not_hang()
-> anyhow::Result<()> {
    silent_zone(true).await
}

/// A call's answering zone (`None`: it failed) and how long it took.
async fn timed_call(http: &reqwest::Client, port: u16) -> (Option<String>, Duration) {
    let started = Instant::now();
    let zone = call(http, port)
        .await
        .and_then(|v| v["zone"].as_str().map(str::to_string));
    (zone, started.elapsed())
}

/// Liveness of pooled connections: backend spread over zone-a and zone-b, then zone-b
/// blackholed (its ingress silent: no refusal, no close, the control plane telling
/// zone-a nothing). The sidecar's PINGs (HTTP/2 over TCP, and QUIC's keep-alives under
/// it) find the silent connection, drop it and eject zone-b's endpoint within seconds;
/// from then on every call is answered by zone-a at once, including while zone-b's
/// endpoint comes back from ejection and is probed again (its dials stall).
async fn silent_zone(quic: bool) -> anyhow::Result<()> {
    let spread = SpreadBackend::start(quic).await?;
    let (m, ing_b, web) = (&spread.m, spread.ing_b, &spread.web);
    let outs = [spread.out];

    let (ok, out, err) = m.c.cli(&[
        "drill",
        "zone-down",
        "--zone",
        "zone-b",
        "--mode",
        "blackhole",
        "--duration",
        "60s",
        "--name",
        "b-silent",
        "--detach",
    ])?;
    assert!(ok, "{err}");
    assert!(out.contains("zone-b blackholed (silent)"), "{out}");
    let drill = Instant::now();

    // Calls one after another (a client that waits longer than the request timeout, so
    // a hung call shows as one). Detection: the first of a run of quick zone-a answers
    // that lasts `RUN`, longer than zone-b's ejections (1 s, then 2 s, 4 s ...) and a
    // connect timeout (5 s): its probes must not hold calls up.
    const QUICK: Duration = Duration::from_secs(1);
    const RUN: Duration = Duration::from_secs(12);
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut run_from: Option<Instant> = None;
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    loop {
        anyhow::ensure!(
            drill.elapsed() < Duration::from_secs(45),
            "no run of quick zone-a answers {RUN:?} long within 45 s of the drill\n{}",
            web.logs()
        );
        let at = Instant::now();
        let (zone, took) = timed_call(&patient, outs[0]).await;
        if zone.as_deref() == Some("zone-a") && took < QUICK {
            let from = *run_from.get_or_insert(at);
            calls += 1;
            if from.elapsed() >= RUN {
                break;
            }
        } else {
            slowest = slowest.max(took);
            run_from = None;
            calls = 0;
        }
    }
    let detected = run_from.expect("a run").duration_since(drill);
    eprintln!(
        "quic={quic}: calls quick and from zone-a from {detected:?} after the drill \
         command on ({calls} calls over {RUN:?}); slowest call before that (the one \
         caught on the silent connection) {slowest:?}"
    );
    // It was the blackhole that did it: zone-b's ingress is silent, not refusing.
    assert!(tcp_silent(ing_b).await, "zone-b's ingress silent");
    // The drill reaches the ingress through the control planes (under a second, mostly);
    // then a PING interval plus its timeout (2 s) at most.
    assert!(
        detected < Duration::from_secs(8),
        "detected only after {detected:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a call hung {slowest:?}, as long as a request timeout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_gone_dark_costs_under_1pct_of_calls_and_none_after_the_first_second()
-> anyhow::Result<()> {
    dark_zone(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_zone_gone_dark_costs_under_1pct_of_calls_and_none_after_the_first_second()
-> anyhow::Result<()> {
    dark_zone(true).await
}

/// One call of the load in [`dark_zone`]: when it started (from the load's start), and
/// the zone that answered or the error.
struct Outcome {
    started: Duration,
    answer: Result<String, String>,
}

/// A zone that goes dark, with no policy written but the spread of backend over both
/// zones: zone-b's ingress, backend and its sidecar are frozen (SIGSTOP) under a load of
/// 200 calls a second from zone-a's web, then thawed. Calls move to zone-a within a
/// second, under 1% fail over the whole event and none after its first second, and
/// zone-b gets traffic again once it thaws. The calls caught in flight on the dark
/// connection are what the default retry (one, on a reset) sends on to zone-a.
async fn dark_zone(quic: bool) -> anyhow::Result<()> {
    const RATE: u32 = 200;
    const WARM: Duration = Duration::from_secs(2);
    const DARK: Duration = Duration::from_secs(5);
    const AFTER: Duration = Duration::from_secs(1);
    let spread = SpreadBackend::start(quic).await?;
    let out = spread.out;
    // A patient client, as a user's: a call hung on the dark zone shows as slow or
    // failed by the sidecar, not cut by this client.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let load = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    let mut frozen_at: Option<Duration> = None;
    let mut thawed = false;
    while load.elapsed() < WARM + DARK + AFTER {
        tick.tick().await;
        let started = load.elapsed();
        if frozen_at.is_none() && started >= WARM {
            spread.freeze_zone_b(true);
            frozen_at = Some(load.elapsed());
        }
        if !thawed && frozen_at.is_some_and(|f| started >= f + DARK) {
            spread.freeze_zone_b(false);
            thawed = true;
        }
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let answer = match client.get(format!("http://127.0.0.1:{out}/")).send().await {
                Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                    Ok(v) => Ok(v["zone"].as_str().unwrap_or("?").to_string()),
                    Err(e) => Err(format!("body: {e}")),
                },
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.headers()
                        .get("x-causeway-error")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                )),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(Outcome { started, answer });
        });
    }
    spread.freeze_zone_b(false);
    drop(tx);
    let mut outcomes = Vec::new();
    while let Some(o) = rx.recv().await {
        outcomes.push(o);
    }
    let frozen_at = frozen_at.context("the freeze")?;
    let thawed_at = frozen_at + DARK;
    outcomes.sort_by_key(|o| o.started);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.answer.is_err()).collect();
    let late_failures: Vec<String> = failed
        .iter()
        .filter(|o| o.started >= frozen_at + Duration::from_secs(1))
        .map(|o| format!("{:?}: {:?}", o.started, o.answer))
        .collect();
    // After the first second of the dark, zone-a answers every call until the thaw.
    let from_b_in_the_dark: Vec<Duration> = outcomes
        .iter()
        .filter(|o| {
            o.started >= frozen_at + Duration::from_secs(1)
                && o.started < thawed_at
                && o.answer.as_deref() == Ok("zone-b")
        })
        .map(|o| o.started)
        .collect();
    eprintln!(
        "quic={quic}: {} calls, {} failed ({:.2}%), {} after the first second; first errors: {:?}",
        outcomes.len(),
        failed.len(),
        100.0 * failed.len() as f64 / outcomes.len() as f64,
        late_failures.len(),
        failed
            .iter()
            .take(5)
            .map(|o| format!("{:?}: {:?}", o.started, o.answer))
            .collect::<Vec<_>>()
    );
    let expected = (RATE as f64 * (WARM + DARK + AFTER).as_secs_f64()) as usize;
    anyhow::ensure!(
        outcomes.len() >= expected * 9 / 10,
        "the load ran: {} of {expected} calls",
        outcomes.len()
    );
    anyhow::ensure!(
        failed.len() * 100 < outcomes.len(),
        "under 1% of calls fail: {} of {} did{}",
        failed.len(),
        outcomes.len(),
        spread.web.logs()
    );
    anyhow::ensure!(
        late_failures.is_empty(),
        "no call fails after the first second of the dark: {late_failures:?}"
    );
    anyhow::ensure!(
        from_b_in_the_dark.is_empty(),
        "calls moved to zone-a within a second: {} answered by zone-b (frozen at {frozen_at:?})",
        from_b_in_the_dark.len()
    );
    // Thawed: zone-b answers again.
    let http = plain_http();
    eventually("zone-b answering again after the thaw", WAIT, || async {
        for _ in 0..10 {
            if call(&http, out).await?["zone"] == "zone-b" {
                return Some(());
            }
        }
        None
    })
    .await?;
    Ok(())
}

/// WebSockets across zones: web in zone-a opens WebSockets to backend, whose calls go
/// round robin to its instance in zone-a and its instance in zone-b (through zone-b's
/// ingress, which passes the mTLS through). Each is answered by the instance it landed
/// on, with messages both ways, so some cross the zones: over TCP, then over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_zones_through_the_ingress() -> anyhow::Result<()> {
    websocket_across_zones(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_websocket_crosses_zones_through_the_ingress() -> anyhow::Result<()> {
    websocket_across_zones(true).await
}

async fn websocket_across_zones(quic: bool) -> anyhow::Result<()> {
    use causeway_tests::websocket;
    let s = SpreadBackend::start(quic).await?;
    let mut instances = std::collections::BTreeSet::new();
    for i in 0..6 {
        let mut ws = websocket::open(s.out, "/ws").await?;
        let answer = websocket::echo(&mut ws, &format!("hello {i}")).await?;
        let (instance, text) = answer
            .split_once(": ")
            .with_context(|| format!("answer {answer:?}"))?;
        assert_eq!(text, format!("hello {i}"));
        // The same instance answers for the whole of its WebSocket.
        for j in 0..5 {
            let again = websocket::echo(&mut ws, &format!("more {j}")).await?;
            assert_eq!(again, format!("{instance}: more {j}"));
        }
        instances.insert(instance.to_string());
    }
    assert_eq!(
        instances,
        ["a1", "b1"].map(String::from).into_iter().collect(),
        "both zones answered"
    );
    Ok(())
}

/// A MeshHTTPRoute backend that lives only in another zone: web in zone-a calls
/// backend (in zone-a); a route sends `/reports` to `reports`, which runs only in
/// zone-b, so those requests cross to zone-b's ingress while the others stay local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sends_requests_to_a_service_that_lives_only_in_another_zone() -> anyhow::Result<()>
{
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    let mut procs = Vec::new();
    for (zone, instance, service, sidecar) in [
        ("zone-a", "a1", "backend", "backend-a"),
        ("zone-b", "r1", "reports", "reports-b"),
    ] {
        let (app, port) = m.app(zone, instance, service)?;
        procs.push(app);
        procs.push(m.sidecar(zone, sidecar, service, Some(port), &[]).await?.0);
    }
    procs.push(m.ingress("zone-b", "zone-b-ingress").await?.0);
    put(
        &m.c,
        "/meshes/default/meshhttproutes/reports",
        &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "reports",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/reports"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "reports"}]}}]}]}}),
    )
    .await?;
    let (web, _, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    procs.push(web);
    let http = plain_http();
    let answer = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{}{path}", outs[0]);
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            Some((
                v["instance"].as_str()?.to_owned(),
                v["zone"].as_str()?.to_owned(),
            ))
        }
    };
    eventually("/reports answered in zone-b", WAIT, || async {
        (answer("/reports/q3").await? == ("r1".into(), "zone-b".into())).then_some(())
    })
    .await?;
    for _ in 0..10 {
        assert_eq!(
            answer("/reports/q3").await,
            Some(("r1".into(), "zone-b".into()))
        );
        assert_eq!(answer("/other").await, Some(("a1".into(), "zone-a".into())));
    }
    Ok(())
}

/// `causeway stat`: a backend in two zones that fails a fifth of its calls shows a
/// success rate of 80% (±3 points) for each zone, within 15 s of the calls, from the
/// sidecars' reports through their zones and global, with no Prometheus; the caller and
/// callee views name the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causeway_stat_shows_a_backend_failing_a_fifth_of_calls_per_zone() -> anyhow::Result<()> {
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    let mut procs = Vec::new();
    let http = plain_http();
    for (zone, app, sidecar) in [("zone-a", "a1", "backend-a"), ("zone-b", "b1", "backend-b")] {
        let (app, port) = m.app(zone, app, "backend")?;
        let (s, ..) = m.sidecar(zone, sidecar, "backend", Some(port), &[]).await?;
        procs.extend([app, s]);
        let r = http
            .post(format!("http://127.0.0.1:{port}/answer/500?percent=20"))
            .send()
            .await?;
        assert!(r.status().is_success(), "{}", r.status());
    }
    procs.push(m.ingress("zone-a", "zone-a-ingress").await?.0);
    procs.push(m.ingress("zone-b", "zone-b-ingress").await?.0);
    put(&m.c, "/meshes/default/meshloadbalancingstrategies/spread", &json!({
        "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "spread",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"loadBalancer": {"type": "RoundRobin"}, "localityAwareness": {"disabled": true}}}]}})).await?;
    let (_web, _, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let url = format!("http://127.0.0.1:{}/", outs[0]);
    eventually("backend answering from both zones", WAIT, || async {
        let mut zones = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            zones.insert(v["zone"].as_str()?.to_string());
        }
        (zones.len() == 2).then_some(())
    })
    .await?;

    // 4,000 calls, 2,000 per zone: 20% failing at random is 80% ± 0.9 points (1 sd).
    const CALLS: usize = 4000;
    let answered = futures::future::join_all((0..8).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut statuses = Vec::new();
            for _ in 0..CALLS / 8 {
                statuses.push(http.get(&url).send().await.map(|r| r.status()));
            }
            statuses
        }
    }))
    .await;
    let sent = Instant::now();
    let statuses: Vec<_> = answered.into_iter().flatten().collect::<Result<_, _>>()?;
    let failed = statuses.iter().filter(|s| s.is_server_error()).count();
    // The caller sees fewer failures than the backend makes: the default retry policy
    // tries a failed call again.
    let seen = 1.0 - failed as f64 / CALLS as f64;

    let stat = |args: &[&str]| -> anyhow::Result<Value> {
        let mut all = vec!["stat"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let (ok, out, err) = m.c.cli(&all)?;
        anyhow::ensure!(ok, "causeway stat: {err}");
        Ok(serde_json::from_str(&out)?)
    };
    // Each zone's sidecars reported all their calls.
    let by_zone = eventually("both zones' calls in `causeway stat`", WAIT, || async {
        let v = stat(&["backend", "--by", "zone"]).ok()?;
        let rows = v["rows"].as_array()?;
        let total: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
        (rows.len() == 2 && total >= CALLS as u64).then_some(v)
    })
    .await
    .with_context(|| m.c.logs())?;
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(15), "the stats took {took:?}");
    // The zone says how many signals it holds.
    let zone_b = m.zone("zone-b").cp.metrics().await?;
    let held = causeway_api::exposition::sum(&zone_b, "causeway_zone_golden_signals");
    assert!(held >= 1.0, "{zone_b}");
    for row in by_zone["rows"].as_array().context("rows")? {
        let rate = row["successRate"].as_f64().context("successRate")?;
        assert!((0.77..=0.83).contains(&rate), "{row}");
        assert!(row["p99Ms"].as_f64().context("p99")? > 0.0, "{row}");
        assert!(
            row["requestsPerSecond"].as_f64().context("rps")? > 0.0,
            "{row}"
        );
    }
    let zones: Vec<&str> = by_zone["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|r| r["zone"].as_str())
        .collect();
    assert_eq!(zones, ["zone-a", "zone-b"]);

    // By service: both zones together, each with about half the traffic.
    let v = stat(&["backend"])?;
    let row = &v["rows"][0];
    assert!(
        (0.77..=0.83).contains(&row["successRate"].as_f64().context("rate")?),
        "{v}"
    );
    let share = row["zones"]["zone-b"].as_f64().context("zone-b's share")?;
    assert!((0.4..=0.6).contains(&share), "{v}");
    // By caller: web, from zone-a (its certificate says so), into both zones.
    let v = stat(&["backend", "--by", "caller"])?;
    assert_eq!(v["rows"][0]["peer"], "web", "{v}");
    assert_eq!(v["rows"][0]["peerZone"], "zone-a", "{v}");
    // By callee: what web called, as web's sidecar counted it, retries included: what
    // web's application saw, one row per zone that answered.
    let v = stat(&["web", "--by", "callee"])?;
    let rows = v["rows"].as_array().context("rows")?;
    let zones: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["peerZone"].as_str()).collect();
    assert_eq!(zones, ["zone-a", "zone-b"].into(), "{v}");
    assert!(rows.iter().all(|r| r["peer"] == "backend"), "{v}");
    let (mut requests, mut failures) = (0, 0);
    for r in rows {
        requests += r["requests"].as_u64().context("requests")?;
        failures += r["failures"].as_u64().context("failures")?;
    }
    assert!(requests >= CALLS as u64, "{v}");
    let rate = 1.0 - failures as f64 / requests as f64;
    assert!((rate - seen).abs() < 0.01, "web saw {seen}, stat says {v}");
    // --zone: only what zone-b's sidecars counted.
    let v = stat(&["backend", "--zone", "zone-b"])?;
    assert_eq!(v["rows"][0]["zones"], json!({"zone-b": 1.0}), "{v}");
    // The table, as a user reads it.
    let (ok, table, err) = m.c.cli(&["stat", "backend", "--by", "zone"])?;
    assert!(ok, "{err}");
    assert!(table.contains("SUCCESS"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("backend  zone-b")),
        "{table}"
    );
    // A bad grouping is refused with the field named.
    let (ok, _, err) = m.c.cli(&["stat", "--by", "pod"])?;
    assert!(!ok && err.contains("pod"), "{err}");
    let (s, v) =
        m.c.call_retry(Method::GET, "/meshes/default/stats?window=2m", None)
            .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("window"), "{v}");
    Ok(())
}

/// Zones report their golden signals to the global node that serves them; every node
/// answers `GET /meshes/{mesh}/stats` with every connected zone, asking the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_global_node_shows_the_stats_of_zones_other_nodes_serve() -> anyhow::Result<()> {
    let m = Mesh::on_nodes(3, &[("zone-a", 0), ("zone-b", 1)]).await?;
    let http = plain_http();
    let mut procs = Vec::new();
    for (zone, app) in [("zone-a", "a1"), ("zone-b", "b1")] {
        let (app, port) = m.app(zone, app, "backend")?;
        let (s, ..) = m
            .sidecar(zone, &format!("backend-{zone}"), "backend", Some(port), &[])
            .await?;
        let (web, _, outs) = m
            .sidecar(zone, &format!("web-{zone}"), "web", None, &["backend"])
            .await?;
        procs.extend([app, s, web]);
        let url = format!("http://127.0.0.1:{}/", outs[0]);
        eventually("backend answering", WAIT, || async {
            let mut ok = 0;
            for _ in 0..50 {
                ok += usize::from(http.get(&url).send().await.ok()?.status() == StatusCode::OK);
            }
            (ok == 50).then_some(())
        })
        .await?;
    }
    for node in 0..3 {
        eventually(&format!("node {node} showing both zones"), WAIT, || async {
            let (s, v) =
                m.c.call(node, Method::GET, "/meshes/default/stats?by=zone", None)
                    .await
                    .ok()?;
            let zones: Vec<&str> = v["rows"]
                .as_array()?
                .iter()
                .filter(|r| r["requests"].as_u64().unwrap_or(0) >= 50)
                .filter_map(|r| r["zone"].as_str())
                .collect();
            (s == StatusCode::OK && zones == ["zone-a", "zone-b"] && v.get("missing").is_none())
                .then_some(())
        })
        .await
        .with_context(|| m.c.logs())?;
    }
    // A mesh that does not exist is a 404, not an empty view.
    let (s, _) = m.c.call(2, Method::GET, "/meshes/nope/stats", None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    Ok(())
}

/// An ingress holds at most `--max-connections` connections from other zones: a flood
/// past it is closed at once and counted, the zones' calls already connected go on, and
/// the places come back as the flood closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_caps_its_connections_and_serves_those_it_holds() -> anyhow::Result<()> {
    const CAP: usize = 30;
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    let (_b1, p1) = m.app("zone-b", "b1", "backend")?;
    let _s1 = m
        .sidecar("zone-b", "backend-1", "backend", Some(p1), &[])
        .await?;
    let (_ing, listen, admin) = m
        .ingress_with(
            "zone-b",
            "zone-b-ingress",
            &["--max-connections", &CAP.to_string()],
        )
        .await?;
    let (_web, _, outs) = m
        .sidecar("zone-a", "web-1", "web", None, &["backend"])
        .await?;
    let http = plain_http();
    eventually("zone-a reaching backend in zone-b", WAIT, || async {
        for _ in 0..10 {
            call(&http, outs[0]).await?;
        }
        Some(())
    })
    .await?;

    let (closed, open) = causeway_tests::flood(listen, CAP + 20).await?;
    // web's sidecar holds a connection or two of the cap through it.
    assert!(
        closed >= 20 && open.len() <= CAP && open.len() >= CAP - 4,
        "{closed} closed, {} held, cap {CAP}",
        open.len()
    );
    for _ in 0..10 {
        let v = call(&http, outs[0])
            .await
            .context("a call while the ingress is full")?;
        assert_eq!(v["zone"], "zone-b");
    }
    let refused = admin_metric(
        &http,
        admin,
        "causeway_ingress_connections_total{result=\"refused_limit\"}",
    )
    .await;
    assert!(refused >= 20.0, "refusals counted: {refused}");
    drop(open);
    eventually("a new connection held again", WAIT, || {
        causeway_tests::held_open(listen)
    })
    .await?;
    Ok(())
}

/// The web UI over two zones, in a real headless Chromium: both zones online, web's
/// calls to backend answered in both zones (the cross-zone edge dashed on the graph),
/// and a probing drill started from the UI whose report, written by zone-a's probes,
/// shows which zone answered before, during and after zone-b went down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_follows_two_zones_and_a_probing_drill() -> anyhow::Result<()> {
    use causeway_tests::browser::Browser;
    let spread = SpreadBackend::start(false).await?;
    let m = &spread.m;
    let http = plain_http();
    for _ in 0..40 {
        call(&http, spread.out).await;
    }
    let node = &m.c.nodes[0];
    let mut b = Browser::launch(1280, 900).await?;
    b.navigate(&format!("{}/ui", node.url())).await?;
    b.wait_for("the sign-in form", "document.activeElement?.id === 'token'")
        .await?;
    b.type_text(&node.admin_token().context("the admin token")?)
        .await?;
    b.press("Enter").await?;
    b.wait_for(
        "both zones online",
        "document.querySelector('#count-zones .n')?.textContent === '2 / 2'",
    )
    .await?;

    // web (zone-a) -> backend answered in zone-b: a cross-zone edge.
    b.eval("location.hash = '#/topology/default'").await?;
    b.wait_within(
        "a dashed edge web -> backend in zone-b",
        "document.querySelector('#topology g.edge.cross[data-from=web][data-to=backend][data-peer-zone=zone-b]')",
        WAIT,
    )
    .await?;
    assert_eq!(
        b.eval("document.querySelector('#topology g.edge[data-from=web][data-to=backend][data-peer-zone=zone-a]')?.classList.contains('cross')")
            .await?,
        false,
        "answered in web's own zone: not cross-zone"
    );

    // A probing drill from the form; zone-a's probes report who answered backend.
    b.eval("location.hash = '#/drills'").await?;
    b.wait_for("the drill form", "document.getElementById('drill-form')")
        .await?;
    b.eval("document.getElementById('drill-zone').value = 'zone-b'; document.getElementById('drill-probe').value = 'backend'; document.getElementById('drill-duration').value = '8s'; document.querySelector('#drill-form button').click()")
        .await?;
    b.wait_for(
        "the drill's page",
        "location.hash.startsWith('#/drills/zone-b-down-')",
    )
    .await?;
    // Warm-up 5 s, the drill 8 s, cool-down 10 s, then the report reaches global.
    b.wait_within(
        "zone-a's finished report",
        "[...document.querySelectorAll('section.report h3')].some(h => h.textContent.startsWith('From zone-a') && !h.textContent.includes('(running)') && !h.textContent.includes('(probing)'))",
        Duration::from_secs(90),
    )
    .await?;
    let state = b
        .eval("document.getElementById('drill-state').textContent")
        .await?;
    assert_eq!(state, "ended");
    let answered = b
        .eval("[...document.querySelectorAll('#chart-zones-zone-a rect title')].map(t => t.textContent)")
        .await?;
    let answered: Vec<&str> = answered
        .as_array()
        .context("bars")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        answered.iter().any(|t| t.starts_with("before, zone-b:")),
        "zone-b answered before: {answered:?}"
    );
    assert!(
        answered.iter().any(|t| t.starts_with("during, zone-a:")),
        "zone-a answered while zone-b was down: {answered:?}"
    );
    // Over time, step by step (a second each for a drill this short), not per phase.
    let during_steps = answered
        .iter()
        .filter(|t| t.starts_with("during, zone-a:"))
        .count();
    assert!(
        during_steps >= 4,
        "the 8 s drill drawn second by second: {answered:?}"
    );
    let p99_points = b
        .eval("document.querySelectorAll('#chart-p99-zone-a circle').length")
        .await?;
    assert!(
        p99_points.as_u64().unwrap_or(0) >= 8,
        "a p99 point per second of probing: {p99_points}"
    );
    b.screenshot(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("ui-screenshots")
            .join("drill-two-zones.png"),
    )
    .await?;
    Ok(())
}

/// A mesh's root CA rotates under continuous cross-zone traffic without a failed
/// request. `causeway ca rotate` stages a new root, activates it once every sidecar of
/// both zones trusts it, and finishes once every sidecar holds a certificate from it;
/// web's connections to backend (in both zones, zone-b's through its ingress) live one
/// second each, so handshakes keep happening at every step. At the end one root is left,
/// the new one, and every zone and sidecar follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_root_ca_rotates_under_cross_zone_traffic_without_a_failed_request()
-> anyhow::Result<()> {
    let spread = SpreadBackend::start(false).await?;
    let m = &spread.m;
    put(&m.c, "/meshes/default/meshtimeouts/short-connections", &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "short-connections",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"http": {"maxConnectionDuration": "1s"}}}]}})).await?;
    let status = || async {
        m.c.call_retry(Method::GET, "/meshes/default/ca", None)
            .await
            .map(|(_, v)| v)
    };
    // Both zones report their sidecars following the one root.
    let before = eventually("both zones reporting their sidecars", WAIT, || async {
        let s = status().await.ok()?;
        let zones = s["zones"].as_array()?;
        (zones.len() == 2
            && zones.iter().all(|z| {
                z["proxies"].as_u64() > Some(0)
                    && z["proxiesTrusting"] == z["proxies"]
                    && z["proxiesCurrent"] == z["proxies"]
            }))
        .then_some(s)
    })
    .await?;
    assert_eq!(before["phase"], "steady", "{before}");
    let old_root = before["roots"][0]["sha256"]
        .as_str()
        .context("root")?
        .to_string();
    // Out of order: refused, and nothing changes.
    let (s, v) =
        m.c.call(
            0,
            Method::POST,
            "/meshes/default/ca/rotate",
            Some(&json!({"step": "finish"})),
        )
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("stage a new root first"), "{v}");

    // Traffic from web (zone-a) to backend in both zones, all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, out) = (stop.clone(), spread.out);
        async move {
            let http = plain_http();
            let (mut ok, mut failed, mut zones) =
                (0u64, Vec::new(), std::collections::BTreeMap::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(format!("http://127.0.0.1:{out}/")).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok += 1;
                        if let Ok(v) = r.json::<Value>().await {
                            *zones
                                .entry(v["zone"].as_str().unwrap_or("?").to_string())
                                .or_insert(0u64) += 1;
                        }
                    }
                    Ok(r) => failed.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed, zones)
        }
    });
    // Zone-b's control plane goes silent first: the rotation stages the new root, then
    // waits for zone-b (its sidecars would be cut off from the new root).
    let zone_b_cp = &m.zones[1].cp;
    zone_b_cp.pause(true);
    eventually("zone-b offline", WAIT, || async {
        let s = status().await.ok()?;
        s["zones"]
            .as_array()?
            .iter()
            .any(|z| z["zone"] == "zone-b" && z["online"] == false)
            .then_some(())
    })
    .await?;
    let cli =
        m.c.cli_command(&["ca", "rotate", "-m", "default", "--timeout", "3m"]);
    let rotation = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        cli.output()
    });
    let held = eventually(
        "the rotation staged, and waiting for zone-b",
        WAIT,
        || async {
            let s = status().await.ok()?;
            (s["phase"] == "staged"
                && s["next"]["waiting"]
                    .to_string()
                    .contains("zone zone-b is offline"))
            .then_some(s)
        },
    )
    .await?;
    // It stays held while zone-b is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status().await?["phase"], "staged", "{held}");
    assert!(
        !rotation.is_finished(),
        "the rotation went on without zone-b"
    );
    zone_b_cp.pause(false);
    let out = rotation.await??;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "causeway ca rotate failed: {stderr}");
    for step in ["stage: done", "activate: done", "finish: done", "finished"] {
        assert!(stderr.contains(step), "{step:?} in {stderr}");
    }

    // One root left, the new one, and (the traffic still going) every zone and sidecar
    // follows it.
    let after = status().await?;
    assert_eq!(after["phase"], "steady", "{after}");
    let roots = after["roots"].as_array().context("roots")?;
    assert_eq!(roots.len(), 1, "{after}");
    let new_root = roots[0]["sha256"].as_str().context("root")?.to_string();
    assert_ne!(new_root, old_root, "{after}");
    let settled = eventually(
        "every zone and sidecar on the new root alone",
        WAIT,
        || async {
            let s = status().await.ok()?;
            s["zones"]
                .as_array()?
                .iter()
                .all(|z| {
                    z["trusted"] == json!([new_root])
                        && z["intermediateRoot"] == new_root
                        && z["proxiesTrusting"] == z["proxies"]
                        && z["proxiesCurrent"] == z["proxies"]
                })
                .then_some(s)
        },
    )
    .await;
    // A few more seconds of calls on the new certificates alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, zones) = traffic.await?;
    assert!(
        failed.is_empty(),
        "{} of {} calls failed during the rotation: {:?}\n{stderr}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "{ok} calls");
    assert!(
        zones.get("zone-b").copied().unwrap_or(0) > 10
            && zones.get("zone-a").copied().unwrap_or(0) > 10,
        "both zones answered all along: {zones:?}"
    );
    settled.map_err(|e| anyhow::anyhow!("{e}: {}", after))?;
    Ok(())
}

/// Zone-b's own API CA rotates while web (zone-a) calls backend in both zones, zone-b's
/// through its ingress: zone-b's sidecar and ingress each say they trust the staged CA
/// before it is activated, no call fails, and after the rotation zone-b's ingress,
/// restarted, reconnects to zone-b's DDS with the new CA alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zones_api_ca_rotates_under_its_ingress_without_a_failed_call() -> anyhow::Result<()> {
    let mut spread = SpreadBackend::start(false).await?;
    let zone_b = &spread.m.zones[1].cp;
    let status = || async {
        let (ok, _, err) = zone_b.cli(&["zone", "api-ca", "status"])?;
        anyhow::ensure!(ok, "status: {err}");
        let (s, v) = zone_b.call(Method::GET, "/api-ca", None).await?;
        anyhow::ensure!(s == StatusCode::OK, "{s} {v}");
        Ok(v)
    };
    let old_sha = status().await?["cas"][0]["sha256"]
        .as_str()
        .context("the signing CA")?
        .to_string();

    let calls = causeway_tests::mesh::CallsUnderway::start(spread.out);

    let (ok, _, err) = zone_b.cli(&["zone", "api-ca", "rotate", "--step", "stage"])?;
    anyhow::ensure!(ok, "stage: {err}");
    let staged = eventually("zone-b's proxies trusting the staged CA", WAIT, || async {
        let s = status().await.ok()?;
        (s["next"]["ready"] == true).then_some(s)
    })
    .await?;
    let new_sha = staged["cas"][1]["sha256"]
        .as_str()
        .context("staged")?
        .to_string();
    for proxy in [
        "ingress default/zone-b-ingress",
        "dataplane default/backend-b",
    ] {
        let p = staged["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["proxy"] == proxy)
            .with_context(|| format!("{proxy} in {staged}"))?;
        assert!(
            p["trusted"]
                .as_array()
                .is_some_and(|t| t.contains(&json!(new_sha))),
            "{staged}"
        );
    }
    let (ok, _, err) = zone_b.cli(&["zone", "api-ca", "rotate", "--timeout", "60s"])?;
    anyhow::ensure!(ok, "rotate: {err}");
    let after = status().await?;
    assert_eq!(after["phase"], "steady", "{after}");
    assert_eq!(after["cas"][0]["sha256"], json!(new_sha), "{after}");
    assert_eq!(after["serving"]["dds"], json!(new_sha), "{after}");
    assert_ne!(new_sha, old_sha);

    calls.stop_expecting_no_failure().await?;

    // The ingress, restarted, gets in with the new CA (its CA file, zone-b's
    // api-ca.pem, holds it alone now) and zone-b answers again.
    let ingress = spread.zone_b.pop().context("zone-b's ingress")?;
    drop(ingress);
    let (ingress, _, _) = spread.m.ingress("zone-b", "zone-b-ingress").await?;
    spread.zone_b.push(ingress);
    let http = plain_http();
    eventually("backend answering from zone-b again", WAIT, || async {
        for _ in 0..10 {
            if call(&http, spread.out).await?["zone"] == "zone-b" {
                return Some(());
            }
        }
        None
    })
    .await?;
    Ok(())
}

// === transparent proxying ===

/// Calls from the workload as an unprivileged user (uid 65534), so the redirect takes
/// them (the sidecars and control planes run as root, which install-redirect exempts):
/// `http URL` prints the body (or `FAIL <why>`); `tcp IP PORT` sends `PING` and prints
/// the echo; `raw IP PORT` prints the first line the server sends.
const CLIENT: &str = r#"
import socket, sys, urllib.request
kind = sys.argv[1]
try:
    if kind == "http":
        print(urllib.request.urlopen(sys.argv[2], timeout=5).read().decode())
    else:
        s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
        if kind == "tcp":
            s.sendall(b"PING\n")
        print(s.recv(512).decode().strip() or "FAIL closed")
except Exception as e:
    print("FAIL", e)
"#;

/// A DNS resolver on loopback that knows one name, `outside.example` (A 10.77.0.2, TTL
/// 42); NXDOMAIN for the rest. Serves until the test ends.
async fn upstream_resolver() -> anyhow::Result<SocketAddr> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut a = Message::new();
            a.set_id(q.id())
                .set_message_type(MessageType::Response)
                .add_queries(q.queries().iter().cloned());
            match q.queries().first() {
                Some(query) if query.name().to_ascii() == "outside.example." => {
                    if query.query_type() == hickory_proto::rr::RecordType::A {
                        a.add_answer(Record::from_rdata(
                            query.name().clone(),
                            42,
                            RData::A(A(std::net::Ipv4Addr::new(10, 77, 0, 2))),
                        ));
                    }
                }
                _ => {
                    a.set_response_code(ResponseCode::NXDomain);
                }
            }
            if let Ok(bytes) = a.to_vec() {
                let _ = sock.send_to(&bytes, from).await;
            }
        }
    });
    Ok(addr)
}

/// Asks the DNS server at `server` for `name`'s A record over UDP: the address and TTL.
async fn ask_dns(server: SocketAddr, name: &str) -> anyhow::Result<(std::net::Ipv4Addr, u32)> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut q = Message::new();
    q.set_id(7).set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&q.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await??;
    let a = Message::from_vec(&buf[..n])?;
    let record = a.answers().first().context("an answer")?;
    match record.data() {
        RData::A(ip) => Ok((ip.0, record.ttl())),
        other => anyhow::bail!("{other:?}"),
    }
}

/// Runs [`CLIENT`] as uid 65534 in this (the test's) network namespace.
fn call_as_workload(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", CLIENT])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A workload with no outbound in its Dataplane calls mesh services by virtual IP
/// through its sidecar, across zones: `install-redirect` (nftables, then
/// iptables-legacy) sends its connections to the sidecar's transparent listener, which
/// routes an HTTP call and a TCP connection through zone-b's ingress with mTLS; a
/// MeshTrafficPermission applies to them; a destination outside the mesh is passed
/// through, and refused once the mesh turns passthrough off; `uninstall-redirect`
/// leaves the namespace's rules as they were.
///
/// Runs in a network namespace of its own: this test makes one (loopback, and an
/// interface with the default route, so the virtual IPs and the outside address route)
/// and runs [`transparent_proxying_in_this_namespace`] in it, this same executable.
#[test]
fn a_redirected_workload_calls_mesh_services_by_virtual_ip_across_zones() -> anyhow::Result<()> {
    let ns = format!("cw-tp-{}", std::process::id());
    let outside = format!("cw-tpo-{}", std::process::id());
    struct Gone(Vec<String>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .status();
            }
        }
    }
    let mut gone = Gone(Vec::new());
    for n in [&ns, &outside] {
        sh("ip", &["netns", "add", n])?;
        gone.0.push(n.clone());
    }
    // The workload's resolver, as `ip netns exec` shows it to the namespace: an address
    // outside, so its queries are redirected to the sidecar like any host's.
    let etc = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
    std::fs::create_dir_all(&etc)?;
    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _etc = Removed(etc.clone());
    std::fs::write(etc.join("resolv.conf"), "nameserver 10.77.0.2\n")?;
    // The workload's namespace reaches the outside one over a veth pair, its default
    // route: the virtual IPs route (to be redirected), and so does an address outside
    // the mesh (not a local one, which goes over loopback and is never redirected).
    for cmd in [
        format!("-n {ns} link set lo up"),
        format!("-n {ns} link add tp0 type veth peer name tp1 netns {outside}"),
        format!("-n {ns} addr add 10.77.0.1/24 dev tp0"),
        format!("-n {ns} link set tp0 up"),
        format!("-n {ns} route add default dev tp0"),
        format!("-n {outside} addr add 10.77.0.2/24 dev tp1"),
        format!("-n {outside} link set tp1 up"),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        sh("ip", &args)?;
    }
    // Outside the mesh: a server that says "outside" to every connection.
    let server = "import socket\ns = socket.create_server(('10.77.0.2', 8099))\nprint('ready', flush=True)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'outside\\n')\n    c.close()\n";
    let mut outside_server = std::process::Command::new("ip")
        .args(["netns", "exec", &outside, "/usr/bin/python3", "-c", server])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    struct Killed<'a>(&'a mut std::process::Child);
    impl Drop for Killed<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Killed(&mut outside_server);
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().context("stdout")?),
        &mut ready,
    )?;
    anyhow::ensure!(ready.trim() == "ready", "the outside server: {ready:?}");
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--exact",
            "transparent_proxying_in_this_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env("CAUSEWAY_TEST_NETNS", &ns)
        .output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success() && text.contains("1 passed"),
        "in the namespace: {text}"
    );
    Ok(())
}

/// The body of [`a_redirected_workload_calls_mesh_services_by_virtual_ip_across_zones`],
/// run by it inside the namespace it made (ignored otherwise: it installs redirect rules
/// where it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_redirected_workload_calls_mesh_services_by_virtual_ip_across_zones in a namespace of its own"]
async fn transparent_proxying_in_this_namespace() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var_os("CAUSEWAY_TEST_NETNS").is_some(),
        "run only in the namespace a_redirected_workload_calls_mesh_services_by_virtual_ip_across_zones makes"
    );
    let m = Mesh::new(&["zone-a", "zone-b"]).await?;
    let http = plain_http();
    // In zone-b, behind its ingress: backend (HTTP) and cache (a TCP echo).
    let (_ingress_b, _, _) = m.ingress("zone-b", "zone-b-ingress").await?;
    let (_backend_app, backend_port) = m.app("zone-b", "backend-1", "backend")?;
    let (_backend, _, _) = m
        .sidecar("zone-b", "backend-1", "backend", Some(backend_port), &[])
        .await?;
    let cache_addr = free_addr();
    let _cache_app = Proc::demo_app(&m.dir, "zone-b", "cache-1", "cache", cache_addr, true)?;
    let cache_dp = json!({"type": "Dataplane", "mesh": "default", "name": "cache-1", "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_addr().port(), "servicePort": cache_addr.port(), "service": "cache", "protocol": "tcp"}],
    }});
    let (_cache, _) = m.start_sidecar("zone-b", "cache", cache_dp, &[]).await?;
    // In zone-a: web, with no outbound at all, and its sidecar's DNS; names outside
    // the mesh go to a resolver that knows one.
    let outbound_port = free_addr().port();
    let dns_port = free_addr().port();
    let web_dp = json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_addr().port(), "service": "web", "protocol": "http"}],
        "transparentProxying": {"outboundPort": outbound_port, "dnsPort": dns_port},
    }});
    let upstream = upstream_resolver().await?;
    let (_web, web_admin) = m
        .start_sidecar(
            "zone-a",
            "web",
            web_dp,
            &["--dns-upstream", &upstream.to_string()],
        )
        .await?;

    // The global control plane gave each service a virtual IP; web's sidecar has both.
    let vip = |service: &'static str| {
        let m = &m;
        async move {
            let (s, v) =
                m.c.call(
                    0,
                    Method::GET,
                    &format!("/meshes/default/virtualips/{service}"),
                    None,
                )
                .await
                .ok()?;
            (s == StatusCode::OK).then(|| v["spec"]["ip"].as_str().map(String::from))?
        }
    };
    let backend_vip = eventually("backend's virtual IP", WAIT, || vip("backend")).await?;
    let cache_vip = eventually("cache's virtual IP", WAIT, || vip("cache")).await?;
    assert!(backend_vip.starts_with("241.0."), "{backend_vip}");
    assert_ne!(backend_vip, cache_vip);
    // Allocated, not written: neither global nor a zone takes a write of one.
    let moved = json!({"type": "VirtualIp", "mesh": "default", "name": "backend",
                       "spec": {"service": "backend", "ip": "241.0.9.9"}});
    let path = "/meshes/default/virtualips/backend";
    let (s, v) = m.c.call(0, Method::PUT, path, Some(&moved)).await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("allocated"),
        "{v}"
    );
    let (s, _) = m.c.call(0, Method::DELETE, path, None).await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = m
        .zone("zone-a")
        .cp
        .call(Method::PUT, path, Some(&moved))
        .await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(vip("backend").await.as_deref(), Some(backend_vip.as_str()));
    eventually("web's implicit outbounds", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        let vips: Vec<&str> = cfg["config"]["outbounds"]
            .as_array()?
            .iter()
            .filter_map(|o| o["vip"].as_str())
            .collect();
        (vips.contains(&backend_vip.as_str()) && vips.contains(&cache_vip.as_str())).then_some(())
    })
    .await
    .with_context(|| m.zone("zone-a").cp.logs())?;
    // `causeway inspect` names them by address (and pinned zone).
    let (ok, text, err) = m
        .zone("zone-a")
        .cp
        .cli(&["inspect", "dataplane", "web-1"])?;
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!("Outbound {backend_vip} -> backend\n")),
        "{text}"
    );
    assert!(text.contains("-> cache in zone zone-b"), "{text}");

    let rules = || -> anyhow::Result<String> {
        Ok(sh("nft", &["list", "ruleset"])?
            + &sh("iptables-legacy", &["-t", "nat", "-S"])?
            + &sh("ip6tables-legacy", &["-t", "nat", "-S"])?)
    };
    let before = rules()?;
    let port = outbound_port.to_string();
    let dns = dns_port.to_string();
    let backend_url = format!("http://{backend_vip}/");
    for backend in ["nftables", "iptables-legacy"] {
        let bin = causeway_tests::causeway_bin();
        let install = [
            "dataplane",
            "install-redirect",
            "--backend",
            backend,
            "--uid",
            "0",
            "--outbound-port",
            &port,
            "--dns-port",
            &dns,
        ];
        sh(bin.to_str().context("a UTF-8 path")?, &install)?;
        // HTTP by name of nothing but an address: through web's sidecar, zone-b's
        // ingress and backend's sidecar (mutual TLS on the way).
        let answer = eventually("an HTTP call to backend's virtual IP", WAIT, || async {
            let out = call_as_workload(&["http", &backend_url]).ok()?;
            serde_json::from_str::<Value>(&out).ok()
        })
        .await?;
        assert_eq!(answer["instance"], "backend-1", "{backend}: {answer}");
        assert_eq!(answer["zone"], "zone-b", "{backend}: {answer}");
        // TCP, any port of the address.
        assert_eq!(
            call_as_workload(&["tcp", &cache_vip, "6379"])?,
            "PING",
            "{backend}"
        );
        sh(
            bin.to_str().context("a UTF-8 path")?,
            &["dataplane", "uninstall-redirect", "--backend", backend],
        )?;
        assert_eq!(
            rules()?,
            before,
            "{backend}: uninstall-redirect left the rules as they were"
        );
        // Without the redirect, the virtual IP leads nowhere.
        assert!(call_as_workload(&["tcp", &cache_vip, "6379"])?.starts_with("FAIL"));
    }
    let bin = causeway_tests::causeway_bin();
    let bin = bin.to_str().context("a UTF-8 path")?;
    sh(
        bin,
        &[
            "dataplane",
            "install-redirect",
            "--uid",
            "0",
            "--outbound-port",
            &port,
            "--dns-port",
            &dns,
        ],
    )?;
    // By name: the application resolves through its resolver (redirected to the
    // sidecar's DNS), then connects to the virtual IP.
    let by_name = call_as_workload(&["http", "http://backend.mesh/"])?;
    let by_name: Value = serde_json::from_str(&by_name).context(by_name)?;
    assert_eq!(by_name["instance"], "backend-1", "{by_name}");
    assert_eq!(
        call_as_workload(&["tcp", "cache.mesh", "6379"])?,
        "PING",
        "TCP by name"
    );
    assert_eq!(
        call_as_workload(&["tcp", "cache.zone-b.mesh", "6379"])?,
        "PING",
        "a zone's name"
    );
    assert!(
        call_as_workload(&["tcp", "cache.zone-c.mesh", "6379"])?.starts_with("FAIL"),
        "no such zone: no such name"
    );
    // A name outside the mesh: the upstream's answer, TTL and all.
    let asked = ask_dns(
        SocketAddr::from(([127, 0, 0, 1], dns_port)),
        "outside.example.",
    )
    .await?;
    assert_eq!(asked, ("10.77.0.2".parse()?, 42));
    assert!(
        admin_metric(
            &http,
            web_admin,
            "causeway_dns_queries_total{result=\"upstream\"}"
        )
        .await
            >= 1.0
    );
    let mesh_count = admin_metric(
        &http,
        web_admin,
        "causeway_transparent_connections_total{result=\"mesh\"}",
    )
    .await;
    assert!(mesh_count >= 4.0, "{mesh_count}");

    // A MeshTrafficPermission applies: web may not call backend, and is told so.
    put(&m.c, "/meshes/default/meshtrafficpermissions/no-web-to-backend", &json!({
        "type": "MeshTrafficPermission", "mesh": "default", "name": "no-web-to-backend",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}})).await?;
    eventually("web denied", WAIT, || async {
        let out = call_as_workload(&["http", &backend_url]).ok()?;
        out.contains("403").then_some(())
    })
    .await?;

    // Outside the mesh (the outside namespace's server): passed through to the
    // address itself...
    let outside_port = "8099";
    assert_eq!(
        call_as_workload(&["raw", "outside.example", outside_port])?,
        "outside"
    );
    let passed = admin_metric(
        &http,
        web_admin,
        "causeway_transparent_connections_total{result=\"passthrough\"}",
    )
    .await;
    assert!(passed >= 1.0, "{passed}");
    // ... and refused once the mesh says so.
    put(
        &m.c,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"},
            "networking": {"outbound": {"passthrough": false}}}}),
    )
    .await?;
    eventually("passthrough off", WAIT, || async {
        let out = call_as_workload(&["raw", "10.77.0.2", outside_port]).ok()?;
        out.starts_with("FAIL").then_some(())
    })
    .await?;
    let refused = admin_metric(
        &http,
        web_admin,
        "causeway_transparent_connections_total{result=\"refused\"}",
    )
    .await;
    assert!(refused >= 1.0, "{refused}");
    // Mesh services still answer.
    assert_eq!(call_as_workload(&["tcp", &cache_vip, "80"])?, "PING");
    sh(bin, &["dataplane", "uninstall-redirect"])?;
    Ok(())
}
