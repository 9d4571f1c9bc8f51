//! End to end: sidecars (`causeway dataplane`) in front of demo apps, configured by a
//! zone control plane over DDS, traffic over mutual TLS between them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use causeway_tests::mesh::{
    MeshFixture, WAIT, answered_by, answering, dataplane, ejections, failures, instances,
    tagged_dataplane,
};
use causeway_tests::{
    Proc, admin_config, admin_metric, eventually, files_under, free_addr, plain_http,
    promtool_complaints, put,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_over_mtls_with_permissions_enforced_by_identity() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    fx.permit("web-to-echo", "web", "echo", "Allow").await?;
    let (backend_app, echo_app) = (free_addr(), free_addr());
    let _a = fx.app("backend-app", "backend", backend_app, false)?;
    let _e = fx.app("echo-app", "echo", echo_app, true)?;
    let (b_in, e_in, h2_in) = (free_addr().port(), free_addr().port(), free_addr().port());
    let h2_app = free_addr();
    let _h2 = fx.app("api-app", "api", h2_app, false)?;
    fx.permit("web-to-api", "web", "api", "Allow").await?;
    let (_bs, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-1",
                "backend",
                b_in,
                backend_app.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let (_es, _) = fx
        .sidecar(
            "echo",
            dataplane("echo-1", "echo", e_in, echo_app.port(), "tcp", &[]),
        )
        .await?;
    let (_hs, _) = fx
        .sidecar(
            "api",
            dataplane("api-1", "api", h2_in, h2_app.port(), "http2", &[]),
        )
        .await?;
    let (to_backend, to_echo, to_api) =
        (free_addr().port(), free_addr().port(), free_addr().port());
    let (_ws, web_admin) = fx
        .sidecar(
            "web",
            dataplane(
                "web-1",
                "web",
                free_addr().port(),
                free_addr().port(),
                "http",
                &[(to_backend, "backend"), (to_echo, "echo"), (to_api, "api")],
            ),
        )
        .await?;
    let http = plain_http();

    // HTTP/1.1 from the app, HTTP/2 over mTLS between sidecars; the backend sees web's identity.
    let v: Value = eventually("a call through both sidecars", WAIT, || async {
        let r = http
            .get(format!("http://127.0.0.1:{to_backend}/hello"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    })
    .await?;
    assert_eq!(v["service"], "backend");
    assert_eq!(v["path"], "/hello");
    assert_eq!(
        v["peer"], "spiffe://default/web",
        "the backend's sidecar passed on the verified identity"
    );
    let r = http
        .post(format!("http://127.0.0.1:{to_backend}/post"))
        .body("x".repeat(100_000))
        .send()
        .await?;
    let (status, text) = (r.status(), r.text().await?);
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{status} {text}"))?;
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["bodyBytes"], 100_000,
        "the whole body crossed both sidecars"
    );

    // HTTP/2 to an h2c application (polled: the demo apps start in the background).
    let v: Value = eventually("a call to the h2c app", WAIT, || async {
        let r = http
            .get(format!("http://127.0.0.1:{to_api}/h2"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    })
    .await?;
    assert_eq!(v["service"], "api");

    // TCP passthrough: bytes echo back through both sidecars.
    let echoed = eventually("an echo through both sidecars", WAIT, || async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", to_echo))
            .await
            .ok()?;
        s.write_all(b"ping over mtls").await.ok()?;
        let mut buf = [0u8; 14];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    })
    .await?;
    assert_eq!(&echoed, b"ping over mtls");

    // The inbound port refuses a plaintext client...
    let r = http.get(format!("http://127.0.0.1:{b_in}/")).send().await;
    assert!(r.is_err(), "plaintext to an mTLS inbound must fail: {r:?}");
    // ...and a TLS client without a mesh certificate.
    {
        let ca = causeway_global_cp::tls::generate_ca("not the mesh").unwrap();
        let tls = causeway_global_cp::tls::client_config(&ca.cert_pem, None)?;
        let c = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(5))
            .build()?;
        assert!(
            c.get(format!("https://127.0.0.1:{b_in}/"))
                .send()
                .await
                .is_err()
        );
    }

    // Allow -> Deny takes effect within a second, without restarting anything.
    fx.permit("web-to-backend", "web", "backend", "Deny")
        .await?;
    let t0 = Instant::now();
    let denied = eventually("the deny to apply", WAIT, || async {
        let r = http
            .get(format!("http://127.0.0.1:{to_backend}/again"))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::FORBIDDEN).then_some(r)
    })
    .await?;
    let took = t0.elapsed();
    let body = denied.text().await?;
    assert!(
        body.contains("spiffe://default/web") && body.contains("web-to-backend"),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "deny took {took:?}");

    // Metrics count both outcomes by service and peer.
    let m = http
        .get(format!("http://{web_admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let requests = |class: &str| {
        causeway_api::exposition::sum(
            &m,
            &format!(
                "causeway_requests_total{{mesh=\"default\",direction=\"outbound\",service=\"backend\",peer=\"web\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert!(requests("2xx") >= 1.0 && requests("4xx") >= 1.0, "{m}");
    let cfg: Value = admin_config(&http, web_admin)
        .await
        .context("the proxy's /config")?;
    assert_eq!(cfg["certificate"]["identity"], "spiffe://default/web");
    assert!(cfg["config"]["outbounds"].as_array().unwrap().len() == 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_come_and_go_and_traffic_survives_the_zone_control_plane() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    put(&fx.c, "/meshes/default/meshtrafficpermissions/all", &json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}})).await?;
    let (app1, app2) = (free_addr(), free_addr());
    let _a1 = fx.app("b1", "backend", app1, false)?;
    let _a2 = fx.app("b2", "backend", app2, false)?;
    let (s1, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-1",
                "backend",
                free_addr().port(),
                app1.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let (_s2, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-2",
                "backend",
                free_addr().port(),
                app2.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let (_ws, _, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{out}/");
    // Both instances get traffic.
    let seen = eventually("both backends answering", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            seen.insert(v["instance"].as_str()?.to_string());
        }
        (seen.len() == 2).then_some(seen)
    })
    .await?;
    assert_eq!(seen.len(), 2);

    // kill -9 one backend sidecar: it is taken out of rotation, no request fails for long.
    s1.kill();
    eventually("only b2 answering", WAIT, || async {
        for _ in 0..20 {
            let r = http.get(&url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            if v["instance"] != "b2" {
                return None;
            }
        }
        Some(())
    })
    .await?;

    // The zone control plane goes away: the sidecars keep their config and certificates.
    fx.zone.kill();
    for _ in 0..20 {
        let r = http.get(&url).send().await?;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "traffic while the zone control plane is down"
        );
    }
    // A sidecar dies while the zone is down: after the restart's grace period its
    // Dataplane goes; the live ones reconnect and stay.
    let gone_app = free_addr();
    let _a3 = fx.app("b3", "backend", gone_app, false)?;
    fx.zone.start()?;
    let dp3 = dataplane(
        "backend-3",
        "backend",
        free_addr().port(),
        gone_app.port(),
        "http",
        &[],
    );
    let (s3, _) = fx.sidecar("backend", dp3).await?;
    fx.zone.kill();
    s3.kill();
    fx.zone.start()?;
    let path3 = "/meshes/default/dataplanes/backend-3";
    let (s, v) = eventually("the zone API back", WAIT, || async {
        fx.zone.call(Method::GET, path3, None).await.ok()
    })
    .await?;
    assert_eq!(s, StatusCode::OK, "kept until the grace period ends: {v}");
    eventually("web-1 registered again", WAIT, || async {
        let (s, _) = fx
            .zone
            .call(Method::GET, "/meshes/default/dataplanes/web-1", None)
            .await
            .ok()?;
        (s == StatusCode::OK).then_some(())
    })
    .await?;
    eventually("backend-3 removed after the grace period", WAIT, || async {
        let (s, _) = fx.zone.call(Method::GET, path3, None).await.ok()?;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await
    .with_context(|| fx.zone.logs())?;
    let (s, _) = fx
        .zone
        .call(Method::GET, "/meshes/default/dataplanes/backend-2", None)
        .await?;
    assert_eq!(s, StatusCode::OK, "a live sidecar's Dataplane stays");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_failed_requests() -> anyhow::Result<()> {
    // 1-minute certificates renewed at 10%: a new certificate every 6 seconds.
    let fx = MeshFixture::start(
        json!({"mtls": {"mode": "Strict"}, "certificateTtl": "1m", "certificateRenewAt": "10%"}),
    )
    .await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let app = free_addr();
    let _a = fx.app("b1", "backend", app, false)?;
    let (_bs, b_admin) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-1",
                "backend",
                free_addr().port(),
                app.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let (_ws, w_admin, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{out}/");
    eventually("first call", WAIT, || async {
        http.get(&url)
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await?;
    let not_after = |admin: SocketAddr| {
        let http = http.clone();
        async move {
            let v: Value = admin_config(&http, admin)
                .await
                .context("the proxy's /config")?;
            v["certificate"]["notAfter"].as_i64().context("notAfter")
        }
    };
    let (w0, b0) = (not_after(w_admin).await?, not_after(b_admin).await?);
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut requests = 0;
    while Instant::now() < deadline {
        let r = http.get(&url).send().await?;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "request {requests} failed during rotation"
        );
        requests += 1;
        if not_after(w_admin).await? > w0 && not_after(b_admin).await? > b0 && requests > 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        not_after(w_admin).await? > w0,
        "web's certificate was renewed"
    );
    assert!(
        not_after(b_admin).await? > b0,
        "backend's certificate was renewed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_service_cannot_serve_another() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let token = fx.token("web").await?;
    let file = fx.dir.join("evil.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&dataplane(
            "evil",
            "backend",
            free_addr().port(),
            1,
            "http",
            &[],
        ))?,
    )?;
    let p = Proc::start(
        &fx.dir,
        "evil",
        &[
            "dataplane".into(),
            "--cp".into(),
            format!("https://{}", fx.dds),
            "--cp-ca-file".into(),
            fx.zone.dir.join("api-ca.pem").display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
            "--dataplane-file".into(),
            file.display().to_string(),
            "--admin-addr".into(),
            free_addr().to_string(),
        ],
    )?;
    eventually("the refusal", WAIT, || async {
        let log = std::fs::read_to_string(&p.log).ok()?;
        log.contains("the token is for service \\\"web\\\"")
            .then_some(())
            .or_else(|| log.contains("the token is for service").then_some(()))
    })
    .await
    .with_context(|| p.logs())?;
    let (s, _) = fx
        .zone
        .call(Method::GET, "/meshes/default/dataplanes/evil", None)
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing registered");
    Ok(())
}

/// A gRPC service for the test: the DDS service definition, answering Sign with an echo.
struct EchoGrpc;

#[tonic::async_trait]
impl causeway_api::kds::dds::dds_server::Dds for EchoGrpc {
    async fn sign(
        &self,
        req: tonic::Request<causeway_api::kds::dds::SignRequest>,
    ) -> Result<tonic::Response<causeway_api::kds::dds::SignResponse>, tonic::Status> {
        let r = req.into_inner();
        if r.token == "fail" {
            return Err(tonic::Status::permission_denied("told to fail"));
        }
        Ok(tonic::Response::new(causeway_api::kds::dds::SignResponse {
            cert_chain_pem: format!("echo:{}", r.token),
            ..Default::default()
        }))
    }

    type StreamStream = tokio_stream::wrappers::ReceiverStream<
        Result<causeway_api::kds::dds::ControlMessage, tonic::Status>,
    >;

    async fn stream(
        &self,
        _req: tonic::Request<tonic::Streaming<causeway_api::kds::dds::ProxyMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    type IngressStreamStream = Self::StreamStream;

    async fn ingress_stream(
        &self,
        _req: tonic::Request<tonic::Streaming<causeway_api::kds::dds::ProxyMessage>>,
    ) -> Result<tonic::Response<Self::IngressStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_sidecars_keeps_status_and_trailers() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-grpc", "web", "signer", "Allow").await?;
    let app = free_addr();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(causeway_api::kds::dds::dds_server::DdsServer::new(EchoGrpc))
            .serve(app),
    );
    let (_gs, signer_admin) = fx
        .sidecar(
            "signer",
            dataplane(
                "signer-1",
                "signer",
                free_addr().port(),
                app.port(),
                "grpc",
                &[],
            ),
        )
        .await?;
    let (_ws, web_admin, out) = fx.web_calling("signer").await?;
    let mut client = eventually("a gRPC channel through the sidecar", WAIT, || async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{out}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut c = causeway_api::kds::dds::dds_client::DdsClient::new(ch);
        c.sign(causeway_api::kds::dds::SignRequest {
            token: "probe".into(),
            csr_pem: String::new(),
            ..Default::default()
        })
        .await
        .ok()?;
        Some(c)
    })
    .await?;
    let r = client
        .sign(causeway_api::kds::dds::SignRequest {
            token: "hello".into(),
            csr_pem: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.cert_chain_pem, "echo:hello");
    // A gRPC error status travels back in the trailers.
    let e = client
        .sign(causeway_api::kds::dds::SignRequest {
            token: "fail".into(),
            csr_pem: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "told to fail");
    // Both sidecars count the calls by grpc-status (OK from the trailers, the failure
    // from its trailers-only answer), not as successes by their HTTP 200.
    let http = plain_http();
    let grpc = |d: &str, status: u32| {
        format!(
            "causeway_grpc_responses_total{{direction=\"{d}\",service=\"signer\",peer=\"web\",grpc_status=\"{status}\"}}"
        )
    };
    eventually("the calls counted by grpc-status", WAIT, || async {
        let web_ok = admin_metric(&http, web_admin, &grpc("outbound", 0)).await;
        let web_denied = admin_metric(&http, web_admin, &grpc("outbound", 7)).await;
        let signer_denied = admin_metric(&http, signer_admin, &grpc("inbound", 7)).await;
        let web_200 = admin_metric(
            &http,
            web_admin,
            "causeway_responses_total{direction=\"outbound\",service=\"signer\",peer=\"web\",code=\"200\"}",
        )
        .await;
        (web_ok >= 2.0 && web_denied == 1.0 && signer_denied == 1.0 && web_200 >= 3.0)
            .then_some(())
    })
    .await?;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_zone_ca_is_no_longer_trusted_and_sidecars_move_to_a_new_one()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let app = free_addr();
    let _a = fx.app("b1", "backend", app, false)?;
    let b_in = free_addr().port();
    let (_bs, _) = fx
        .sidecar(
            "backend",
            dataplane("backend-1", "backend", b_in, app.port(), "http", &[]),
        )
        .await?;
    let (_ws, w_admin, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    eventually("a first call", WAIT, || async {
        http.get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await?;

    // A "web" certificate under the zone's current intermediate, held by the test.
    let tls = fx.workload_tls("web", b"http/1.1").await?;
    let holder = || {
        reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
    };
    let url = format!("https://127.0.0.1:{b_in}/direct");
    let r = holder()?.get(&url).send().await?;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the certificate works before the revocation"
    );
    let old_issuer = {
        let v: Value = admin_config(&http, w_admin)
            .await
            .context("the proxy's /config")?;
        v["certificate"]["issuerSha256"]
            .as_str()
            .context("issuer")?
            .to_string()
    };

    let (s, v) =
        fx.c.call_retry(Method::POST, "/zones/zone-a/revoke-ca", None)
            .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"][0]["sha256"], old_issuer.as_str(), "{v}");

    // The backend's sidecar no longer accepts a certificate under the revoked CA.
    eventually("the revoked certificate refused", WAIT, || async {
        match holder().ok()?.get(&url).send().await {
            Ok(r) if r.status().is_success() => None,
            _ => Some(()),
        }
    })
    .await?;
    // The zone got a new intermediate; the sidecars renewed at once and talk again.
    eventually("web on a new CA, calls working", WAIT, || async {
        let v: Value = http
            .get(format!("http://{w_admin}/config"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let issuer = v["certificate"]["issuerSha256"].as_str()?;
        if issuer == old_issuer || v["config"]["revokedCas"][0] != old_issuer.as_str() {
            return None;
        }
        http.get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}{}", _ws.logs(), _bs.logs()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_then_exits() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-echo", "web", "echo", "Allow").await?;
    let app = free_addr();
    let _e = fx.app("echo-app", "echo", app, true)?;
    let (_es, _) = fx
        .sidecar(
            "echo",
            dataplane("echo-1", "echo", free_addr().port(), app.port(), "tcp", &[]),
        )
        .await?;
    let (web, _, out) = fx.web_calling("echo").await?;
    let mut open = eventually("a TCP connection through the sidecars", WAIT, || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", out))
            .await
            .ok()?;
        s.write_all(b"1").await.ok()?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .ok()?
            .ok()?;
        Some(s)
    })
    .await?;
    // SIGTERM: the open connection keeps working while new ones are refused.
    let term = std::thread::spawn(move || web.terminate(Duration::from_secs(20)).map(|_| web));
    let refused = eventually("new connections refused", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", out))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    open.write_all(b"still here").await?;
    let mut buf = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"still here", "an open connection survives the drain");
    refused?;
    drop(open);
    // Once the last connection closes, the process exits (well before --drain-seconds 5).
    let t0 = Instant::now();
    let web = term.join().expect("terminate thread")?;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exited {:?} after the last connection closed",
        t0.elapsed()
    );
    drop(web);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_sends_callers_elsewhere_without_a_failed_request() -> anyhow::Result<()>
{
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let (app1, app2) = (free_addr(), free_addr());
    let _a1 = fx.app("b1", "backend", app1, false)?;
    let _a2 = fx.app("b2", "backend", app2, false)?;
    let mut backends = Vec::new();
    for (name, app) in [("backend-1", app1), ("backend-2", app2)] {
        let dp = dataplane(name, "backend", free_addr().port(), app.port(), "http", &[]);
        backends.push(fx.sidecar("backend", dp).await?.0);
    }
    let (_ws, _, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{out}/");
    eventually("both backends answering", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            seen.insert(v["instance"].as_str()?.to_string());
        }
        (seen.len() == 2).then_some(())
    })
    .await?;

    // Four callers keep requests in flight throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        callers.spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        });
    }
    // With the zone control plane down, nobody tells web that backend-1 is going: only
    // backend-1 itself can. SIGTERM its sidecar: its callers hear GOAWAY, finish what is
    // in flight and go elsewhere, so it exits as soon as they have; a caller's pooled
    // connection that heard nothing would hold it for the whole drain (--drain-seconds 5).
    fx.zone.kill();
    let s1 = backends.remove(0);
    let t0 = Instant::now();
    let exited = tokio::task::spawn_blocking(move || s1.terminate(Duration::from_secs(20))).await?;
    let drain_took = t0.elapsed();
    exited?;
    // Traffic goes on, to backend-2.
    eventually("only b2 answering", WAIT, || async {
        for _ in 0..20 {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            if v["instance"] != "b2" {
                return None;
            }
        }
        Some(())
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = callers.join_next().await {
        let (o, f) = r?;
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 40, "traffic flowed throughout: {ok} requests");
    assert!(
        drain_took < Duration::from_secs(4),
        "the sidecar exited {drain_took:?} after SIGTERM: its callers' connections did not close"
    );
    Ok(())
}

/// An HTTP/1.1 application in the test process: `/slow` answers after `delay`,
/// `/stall` sends half its body at once and the rest after `delay`, any other path
/// answers at once. Each connection that closes while a slow answer is still due is
/// reported on the first channel: the caller gave up and the cancel reached the
/// application. Each slow request that arrives is reported on the second.
async fn slow_app(
    delay: Duration,
) -> anyhow::Result<(
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (cancelled_tx, cancelled) = tokio::sync::mpsc::unbounded_channel();
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let cancelled_tx = cancelled_tx.clone();
            let arrived_tx = arrived_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let slow = buf.starts_with(b"GET /slow");
                    let stall = buf.starts_with(b"GET /stall");
                    buf.drain(..end + 4);
                    if stall {
                        // Half the body, then nothing for `delay`, then the rest.
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut b = [0u8; 1];
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = s.read(&mut b) => {
                                let _ = cancelled_tx.send(());
                                return;
                            }
                        }
                        if s.write_all(b"world").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if slow {
                        let _ = arrived_tx.send(());
                        let mut b = [0u8; 1];
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = s.read(&mut b) => {
                                let _ = cancelled_tx.send(());
                                return;
                            }
                        }
                    }
                    let body: &[u8] = if slow { b"slow\n" } else { b"fast\n" };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(&[head.as_bytes(), body].concat())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, cancelled, arrived))
}

/// `slow` (a [`slow_app`] behind its sidecar) and web calling it, in a Strict mesh.
struct SlowService {
    fx: MeshFixture,
    web_admin: SocketAddr,
    /// slow's sidecar, and its inbound port.
    slow_admin: SocketAddr,
    slow_inbound: u16,
    out: u16,
    /// A patient client (20 s), without pooling.
    http: reqwest::Client,
    cancelled: tokio::sync::mpsc::UnboundedReceiver<()>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    _procs: [Proc; 2],
}

impl SlowService {
    async fn start(delay: Duration) -> anyhow::Result<SlowService> {
        let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
        fx.permit("web-to-slow", "web", "slow", "Allow").await?;
        let (app, cancelled, arrived) = slow_app(delay).await?;
        let slow_inbound = free_addr().port();
        let dp = dataplane("slow-1", "slow", slow_inbound, app.port(), "http", &[]);
        let (slow, slow_admin) = fx.sidecar("slow", dp).await?;
        let (web, web_admin, out) = fx.web_calling("slow").await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(SlowService {
            fx,
            web_admin,
            slow_admin,
            slow_inbound,
            out,
            http,
            cancelled,
            arrived,
            _procs: [slow, web],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_timeout_cuts_a_slow_answer_with_504_and_the_application_sees_the_cancel()
-> anyhow::Result<()> {
    const SLOW: Duration = Duration::from_secs(3);
    let SlowService {
        fx,
        web_admin,
        out,
        http,
        mut cancelled,
        _procs,
        ..
    } = SlowService::start(SLOW).await?;
    eventually("a fast answer through both sidecars", WAIT, || async {
        let r = http
            .get(format!("http://127.0.0.1:{out}/fast"))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await?;

    // Without a MeshTimeout the built-in request timeout (15s) lets the slow answer through.
    let t0 = Instant::now();
    let r = http
        .get(format!("http://127.0.0.1:{out}/slow"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await?, "slow\n");
    assert!(t0.elapsed() >= SLOW, "answered after {:?}", t0.elapsed());

    // A MeshTimeout for calls to slow, through the global API.
    put(
        &fx.c,
        "/meshes/default/meshtimeouts/slow-timeout",
        &json!({"type": "MeshTimeout", "mesh": "default", "name": "slow-timeout",
                "spec": {"targetRef": {"kind": "Mesh"},
                         "to": [{"targetRef": {"kind": "MeshService", "name": "slow"},
                                 "default": {"http": {"requestTimeout": "500ms"}}}]}}),
    )
    .await?;
    eventually("web's sidecar has the request timeout", WAIT, || async {
        let cfg: Value = http
            .get(format!("http://{web_admin}/config"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (cfg["config"]["outbounds"][0]["timeouts"]["request"] == "500ms").then_some(())
    })
    .await?;
    let t0 = Instant::now();
    let r = http
        .get(format!("http://127.0.0.1:{out}/slow"))
        .send()
        .await?;
    let took = t0.elapsed();
    let (status, error) = (r.status(), r.headers().get("x-causeway-error").cloned());
    let body = r.text().await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(
        error.as_ref().and_then(|v| v.to_str().ok()),
        Some("request-timeout"),
        "{body}"
    );
    assert!(body.contains("500ms"), "{body}");
    assert!(
        took < Duration::from_millis(2500),
        "the 504 came after {took:?}"
    );
    // The cancel crossed the mesh: web's sidecar reset the HTTP/2 stream, slow's
    // sidecar dropped the request and closed its connection to the application.
    tokio::time::timeout(Duration::from_secs(2), cancelled.recv())
        .await
        .context("the application's connection was not closed before its answer was due")?
        .context("the slow app stopped")?;
    // Other requests to slow go on.
    let r = http
        .get(format!("http://127.0.0.1:{out}/fast"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(())
}

/// Kuma's MeshTrafficPermission rules by SPIFFE id, enforced by the sidecar: an allow of
/// the whole trust domain by prefix lets web in; an exact deny of web, in another policy,
/// wins over it at once; removing the deny lets web in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_rules_allow_by_prefix_and_a_deny_wins() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let rules = |name: &str, list: &str, kind: &str, value: &str| {
        json!({"type": "MeshTrafficPermission", "mesh": "default", "name": name,
               "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                        "rules": [{"default": {list: [{"spiffeID": {"type": kind, "value": value}}]}}]}})
    };
    put(
        &fx.c,
        "/meshes/default/meshtrafficpermissions/trust-domain",
        &rules("trust-domain", "allow", "Prefix", "spiffe://default"),
    )
    .await?;
    let backend_app = free_addr();
    let _a = fx.app("backend-app", "backend", backend_app, false)?;
    let port = free_addr().port();
    let (_bs, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-1",
                "backend",
                port,
                backend_app.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let (_ws, _, out) = fx.web_calling("backend").await?;
    let http = plain_http();
    let status = || async {
        http.get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()
            .map(|r| r.status())
    };
    eventually("web allowed by the trust domain's prefix", WAIT, || async {
        (status().await? == StatusCode::OK).then_some(())
    })
    .await?;

    let deny = "/meshes/default/meshtrafficpermissions/no-web";
    put(
        &fx.c,
        deny,
        &rules("no-web", "deny", "Exact", "spiffe://default/web"),
    )
    .await?;
    eventually("web denied by the exact deny", WAIT, || async {
        (status().await? == StatusCode::FORBIDDEN).then_some(())
    })
    .await?;
    let (s, _) = fx.c.call_retry(Method::DELETE, deny, None).await?;
    assert!(s.is_success(), "{s}");
    eventually("web allowed again", WAIT, || async {
        (status().await? == StatusCode::OK).then_some(())
    })
    .await?;
    Ok(())
}

/// backend with two instances (backend-1 and backend-2, each an app and a sidecar),
/// balanced round robin, and web calling it.
struct TwoBackends {
    fx: MeshFixture,
    /// The apps' own addresses, to change how they answer.
    apps: Vec<SocketAddr>,
    /// The instances' sidecars' admin addresses.
    admins: Vec<SocketAddr>,
    web_admin: SocketAddr,
    out: u16,
    _procs: Vec<Proc>,
}

impl TwoBackends {
    async fn start() -> anyhow::Result<TwoBackends> {
        let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
        fx.permit("web-to-backend", "web", "backend", "Allow")
            .await?;
        // Round robin, so both instances take calls whatever their latency.
        put(&fx.c, "/meshes/default/meshloadbalancingstrategies/rr", &json!({
            "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "rr",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                     "default": {"loadBalancer": {"type": "RoundRobin"}}}]}})).await?;
        let mut procs = Vec::new();
        let mut apps = Vec::new();
        let mut admins = Vec::new();
        for name in ["backend-1", "backend-2"] {
            let app = free_addr();
            procs.push(fx.app(name, "backend", app, false)?);
            let dp = dataplane(name, "backend", free_addr().port(), app.port(), "http", &[]);
            let (sidecar, admin) = fx.sidecar("backend", dp).await?;
            procs.push(sidecar);
            admins.push(admin);
            apps.push(app);
        }
        let (web, web_admin, out) = fx.web_calling("backend").await?;
        procs.push(web);
        let http = plain_http();
        eventually("web balancing round robin", WAIT, || async {
            let cfg = admin_config(&http, web_admin).await?;
            (cfg["config"]["outbounds"][0]["loadBalancer"] == "RoundRobin").then_some(())
        })
        .await?;
        let two = TwoBackends {
            fx,
            apps,
            admins,
            web_admin,
            out,
            _procs: procs,
        };
        eventually("both instances answering", WAIT, || async {
            (two.answering().await? == instances(&["backend-1", "backend-2"])).then_some(())
        })
        .await?;
        Ok(two)
    }

    /// The instances that answer 20 calls with a success.
    async fn answering(&self) -> Option<std::collections::BTreeSet<String>> {
        answering(self.out, 20).await
    }

    /// Sets what backend-2's app answers: `POST /{what}/{status}` (`healthz` for its
    /// health endpoint, `answer` for every other request).
    async fn set_second(&self, what: &str, status: u16) -> anyhow::Result<()> {
        self.set(1, what, status).await
    }

    /// Sets what backend-`i + 1`'s app answers (see [`TwoBackends::set_second`]).
    async fn set(&self, i: usize, what: &str, status: u16) -> anyhow::Result<()> {
        let r = plain_http()
            .post(format!("http://{}/{what}/{status}", self.apps[i]))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{}", r.status());
        Ok(())
    }

    /// Applies a MeshRetry for backend with `http` as its HTTP part, and waits until
    /// web's config has it (`check` on its outbound's `retry`).
    async fn retry(&self, http: Value, check: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
        put(&self.fx.c, "/meshes/default/meshretries/backend", &json!({
            "type": "MeshRetry", "mesh": "default", "name": "backend",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                     "default": {"http": http}}]}})).await?;
        let client = plain_http();
        eventually("the MeshRetry in web's config", WAIT, || async {
            let cfg = admin_config(&client, self.web_admin).await?;
            check(&cfg["config"]["outbounds"][0]["retry"]).then_some(())
        })
        .await
    }
}

/// MeshHealthCheck, enforced: backend has two instances, both serving; the second's
/// application starts failing its health endpoint (it still answers requests). With no
/// policy nothing checks it and both take calls; a MeshHealthCheck on `/healthz` takes
/// it out of web's choice after two failed checks, and one passed check (its health
/// back) brings it in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_an_endpoint_out_and_a_passing_one_brings_it_back()
-> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    let both = instances(&["backend-1", "backend-2"]);
    two.set_second("healthz", 503).await?;
    // No MeshHealthCheck: no checks, backend-2 keeps its share.
    assert_eq!(two.answering().await.context("calls")?, both);

    put(&two.fx.c, "/meshes/default/meshhealthchecks/backend-health", &json!({
        "type": "MeshHealthCheck", "mesh": "default", "name": "backend-health",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 1,
                             "http": {"path": "/healthz"}}}]}})).await?;
    let only_first = instances(&["backend-1"]);
    eventually(
        "backend-2 taken out by its failing checks",
        WAIT,
        || async { (two.answering().await? == only_first).then_some(()) },
    )
    .await?;
    // It stays out: the next calls all go to backend-1.
    assert_eq!(two.answering().await.context("calls")?, only_first);
    let http = plain_http();
    assert!(
        admin_metric(
            &http,
            two.web_admin,
            "causeway_health_checks_total{service=\"backend\",result=\"failed\"}"
        )
        .await
            >= 2.0
    );
    two.set_second("healthz", 200).await?;
    eventually("backend-2 back once its check passes", WAIT, || async {
        (two.answering().await? == both).then_some(())
    })
    .await?;
    Ok(())
}

/// MeshCircuitBreaker outlier detection, enforced: backend-2 starts answering 500.
/// With no policy, web keeps sending it its share (half the calls fail); with a
/// MeshCircuitBreaker (3 consecutive 5xx, ejected 1 s at first), backend-2 is ejected
/// after its third 500 and calls succeed; once it answers 200 again it takes calls after
/// its ejection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_until_its_ejection_ends() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    // Retries off: the default retry would send each 500 on to backend-1.
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    two.set_second("answer", 500).await?;
    let only_first = instances(&["backend-1"]);
    // No circuit breaker: backend-2's 500s reach the caller.
    let http = plain_http();
    let mut failed = 0;
    for _ in 0..20 {
        let r = http
            .get(format!("http://127.0.0.1:{}/", two.out))
            .send()
            .await?;
        failed += usize::from(r.status() == StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(
        failed >= 8,
        "no outlier detection without a policy: {failed} of 20 failed"
    );

    put(&two.fx.c, "/meshes/default/meshcircuitbreakers/backend", &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"outlierDetection": {"baseEjectionTime": "1s", "maxEjectionPercent": 50,
                             "detectors": {"totalFailures": {"consecutive": 3}}}}}]}})).await?;
    // Ejected: 20 calls in a row all answered by backend-1 (within one ejection, 1 s,
    // or a later, longer one).
    eventually("backend-2 ejected after three 500s", WAIT, || async {
        (failures(two.out, 20).await? == 0).then_some(())
    })
    .await?;
    assert!(ejections(&http, two.web_admin, "backend").await >= 1.0);
    assert_eq!(two.answering().await.context("calls")?, only_first);
    // Healthy again: back after its ejection.
    two.set_second("answer", 200).await?;
    eventually("backend-2 back after its ejection", WAIT, || async {
        (two.answering().await? == instances(&["backend-1", "backend-2"])).then_some(())
    })
    .await?;
    Ok(())
}

/// MeshCircuitBreaker `maxRequests`, enforced: with 1 allowed in flight to `slow`, a
/// call made while a slow one waits is answered at once with 503 `overflow`; once the
/// slow one is answered, calls go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_requests_a_call_is_answered_503_overflow_at_once() -> anyhow::Result<()> {
    const SLOW: Duration = Duration::from_secs(3);
    let SlowService {
        fx,
        web_admin,
        out,
        http,
        mut arrived,
        _procs,
        ..
    } = SlowService::start(SLOW).await?;
    put(&fx.c, "/meshes/default/meshcircuitbreakers/one-at-a-time", &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "one-at-a-time",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "slow"},
                 "default": {"connectionLimits": {"maxRequests": 1}}}]}})).await?;
    eventually("the limit in web's config", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        (cfg["config"]["outbounds"][0]["circuitBreaker"]["maxRequests"] == 1).then_some(())
    })
    .await?;
    let fast = || http.get(format!("http://127.0.0.1:{out}/fast")).send();
    assert_eq!(fast().await?.status(), StatusCode::OK);
    let slow = tokio::spawn(http.get(format!("http://127.0.0.1:{out}/slow")).send());
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .context("the slow call reaching the application")?;
    // While it waits, the next call overflows, at once.
    let t0 = Instant::now();
    let r = (fast().await?, t0.elapsed());
    assert_eq!(r.0.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.0.headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok()),
        Some("overflow")
    );
    assert!(r.1 < Duration::from_secs(1), "answered after {:?}", r.1);
    assert_eq!(slow.await??.status(), StatusCode::OK);
    assert_eq!(fast().await?.status(), StatusCode::OK);
    Ok(())
}

/// MeshRetry, enforced: backend-2 answers 503. By default (no policy) a GET it fails
/// is retried once, on backend-1, so every call succeeds (within the budget); a POST,
/// which may have been processed, is not sent twice. A MeshRetry that lists POST has it retried, with its
/// body sent again; a body over 64 KiB is not kept for that, and not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_retried_on_the_other_instance_and_a_post_only_when_allowed()
-> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.set_second("answer", 503).await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{}/", two.out);
    // Few enough calls that the default budget (20% of the last 10 s's calls, which
    // include the fixture's 40) covers the retry of each one backend-2 fails.
    for i in 0..8 {
        let r = http.get(&url).send().await?;
        assert_eq!(r.status(), StatusCode::OK, "GET {i}");
        let v: Value = r.json().await?;
        assert_eq!(v["instance"], "backend-1");
    }
    let metric = |result: &str| {
        let series = format!("causeway_retries_total{{service=\"backend\",result=\"{result}\"}}");
        let http = http.clone();
        async move { admin_metric(&http, two.web_admin, &series).await }
    };
    assert!(metric("retried").await >= 3.0);

    let post = |len: usize| http.post(&url).body(vec![b'x'; len]).send();
    let mut failed = 0;
    for _ in 0..20 {
        failed += usize::from(post(1000).await?.status() == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        failed >= 5,
        "a POST is not retried by default: {failed} of 20 failed"
    );

    // Half the calls fail their first try: a budget for all of them.
    two.retry(
        json!({"retryOn": ["5xx", "HttpMethodPost"], "budget": {"percent": 100}}),
        |r| r["http"]["methods"] == json!(["POST"]),
    )
    .await?;
    for i in 0..20 {
        let r = post(20_000).await?;
        assert_eq!(r.status(), StatusCode::OK, "POST {i}");
        let v: Value = r.json().await?;
        assert_eq!(v["bodyBytes"], 20_000, "the body, sent again whole");
    }
    let mut failed = 0;
    for _ in 0..20 {
        failed += usize::from(post(100_000).await?.status() == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        failed >= 5,
        "a body over 64 KiB is not retried: {failed} of 20 failed"
    );
    assert!(metric("body_not_replayable").await >= 5.0);
    Ok(())
}

/// MeshRetry's budget: both instances answer 503, and a policy asks for 3 retries of
/// each call. The budget (20% of the window's requests, 1 more a second) keeps the
/// retries to a fifth of the calls (those of the fixture counted), not three times as
/// many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_gets_at_most_its_retry_budget_more_load() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(
        json!({"numRetries": 3, "backOff": {"baseInterval": "1ms", "maxInterval": "2ms"},
               "budget": {"percent": 20, "minRetryConcurrency": 1}}),
        |r| r["http"]["numRetries"] == 3 && r["budget"]["minRetryConcurrency"] == 1,
    )
    .await?;
    two.set(0, "answer", 503).await?;
    two.set_second("answer", 503).await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{}/", two.out);
    // The fixture's calls (all answered) are in the budget's window too.
    let earlier = admin_metric(
        &http,
        two.web_admin,
        "causeway_requests_total{direction=\"outbound\",service=\"backend\",peer=\"web\",status_class=\"2xx\"}",
    )
    .await;
    const CALLS: usize = 300;
    let t0 = Instant::now();
    for _ in 0..CALLS {
        assert_eq!(
            http.get(&url).send().await?.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let secs = t0.elapsed().as_secs_f64().ceil();
    let series =
        |result: &str| format!("causeway_retries_total{{service=\"backend\",result=\"{result}\"}}");
    let retried = admin_metric(&http, two.web_admin, &series("retried")).await;
    let refused = admin_metric(&http, two.web_admin, &series("budget_exhausted")).await;
    let cap = (CALLS as f64 + earlier) * 0.2 + secs + 1.0;
    assert!(
        (30.0..=cap).contains(&retried),
        "{retried} retries of {CALLS} calls in {secs} s (at most {cap})"
    );
    assert!(refused >= CALLS as f64 * 0.5, "{refused} retries refused");
    Ok(())
}

/// MeshRetry's per-try timeout: `/slow` answers after 3 s; with tries of 300 ms and
/// two retries, the call ends in about a second with 504 `per-try-timeout`, after
/// three tries reached the application (each cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_past_its_per_try_timeout_is_cancelled_and_tried_again() -> anyhow::Result<()> {
    let SlowService {
        fx,
        web_admin,
        out,
        http,
        mut arrived,
        mut cancelled,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    put(&fx.c, "/meshes/default/meshretries/slow", &json!({
        "type": "MeshRetry", "mesh": "default", "name": "slow",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "slow"},
                 "default": {"http": {"numRetries": 2, "perTryTimeout": "300ms", "retryOn": ["5xx"]}}}]}})).await?;
    eventually("the per-try timeout in web's config", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        (cfg["config"]["outbounds"][0]["retry"]["http"]["perTryTimeout"] == "300ms").then_some(())
    })
    .await?;
    let t0 = Instant::now();
    let r = http
        .get(format!("http://127.0.0.1:{out}/slow"))
        .send()
        .await?;
    let took = t0.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        r.headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok()),
        Some("per-try-timeout")
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    for i in 0..3 {
        tokio::time::timeout(WAIT, arrived.recv())
            .await
            .with_context(|| format!("try {i} reaching the application"))?;
        tokio::time::timeout(WAIT, cancelled.recv())
            .await
            .with_context(|| format!("try {i} cancelled"))?;
    }
    assert_eq!(
        admin_metric(
            &http,
            web_admin,
            "causeway_retries_total{service=\"slow\",result=\"retried\"}"
        )
        .await,
        2.0
    );
    Ok(())
}

/// MeshRetry's header rules and rate-limited backoff: backend-2 answers 200 with
/// `x-state: busy`. Without a rule its answers reach the caller; with a
/// `retriableResponseHeaders` rule that matches, each is retried on backend-1. Then
/// backend-2 answers 503 with `Retry-After: 1`: a call it fails is retried after that
/// second (the backoff alone would be 25 ms at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_response_header_and_a_retry_after_are_honoured() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    let http = plain_http();
    let answer = |status: u16, header: &str| {
        let url = format!("http://{}/answer/{status}?header={header}", two.apps[1]);
        let http = http.clone();
        async move {
            let r = http.post(url).send().await?;
            anyhow::ensure!(r.status().is_success(), "{}", r.status());
            anyhow::Ok(())
        }
    };
    answer(200, "x-state:busy").await?;
    let both = instances(&["backend-1", "backend-2"]);
    assert_eq!(two.answering().await.context("calls")?, both);

    two.retry(
        json!({"retriableResponseHeaders": [{"name": "x-state", "type": "RegularExpression", "value": "busy|later"}],
               "budget": {"percent": 100}}),
        |r| r["http"]["retriableResponseHeaders"][0]["name"] == "x-state",
    )
    .await?;
    assert_eq!(
        two.answering().await.context("calls")?,
        instances(&["backend-1"])
    );

    answer(503, "retry-after:1").await?;
    let url = format!("http://127.0.0.1:{}/", two.out);
    let mut waited = 0;
    for i in 0..4 {
        let t0 = Instant::now();
        let r = http.get(&url).send().await?;
        let took = t0.elapsed();
        assert_eq!(r.status(), StatusCode::OK, "call {i}");
        assert!(took < Duration::from_secs(3), "call {i} took {took:?}");
        waited += usize::from(took >= Duration::from_secs(1));
    }
    assert!(waited >= 1, "no call waited for Retry-After");
    Ok(())
}

/// MeshCircuitBreaker's interval-based detectors: backend-2 answers 500 to every call
/// (retries off, so the failures show). A failurePercentage detector, judging each
/// second the endpoints with 5 answers or more, ejects it once an interval is over;
/// then every call goes to backend-1. It has no run detector to fall back on: without
/// the interval's judgement backend-2 would keep its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_failures_over_an_interval_ejects_an_endpoint() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    two.set_second("answer", 500).await?;
    put(&two.fx.c, "/meshes/default/meshcircuitbreakers/backend", &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"outlierDetection": {"interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
                             "detectors": {"failurePercentage": {"minimumHosts": 2, "requestVolume": 5, "threshold": 50}}}}}]}})).await?;
    let http = plain_http();
    eventually("the detector in web's config", WAIT, || async {
        let cfg = admin_config(&http, two.web_admin).await?;
        let od = &cfg["config"]["outbounds"][0]["circuitBreaker"]["outlierDetection"];
        (od["failurePercentage"]["threshold"] == 50).then_some(())
    })
    .await?;
    eventually(
        "backend-2 ejected for its share of failures",
        WAIT,
        || async { (failures(two.out, 20).await? == 0).then_some(()) },
    )
    .await?;
    assert!(ejections(&http, two.web_admin, "backend").await >= 1.0);
    Ok(())
}

/// MeshCircuitBreaker on the inbound (`rules`): with 1 request at a time to slow's
/// application, a call made while a slow one waits is answered 503 `overflow` by slow's
/// sidecar, so the application never sees it; once the slow one is answered, calls go
/// through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_inbound_max_requests_the_application_is_spared() -> anyhow::Result<()> {
    let SlowService {
        fx,
        slow_admin,
        out,
        http,
        mut arrived,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    put(
        &fx.c,
        "/meshes/default/meshcircuitbreakers/slow-inbound",
        &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "slow-inbound",
        "spec": {"targetRef": {"kind": "MeshService", "name": "slow"},
                 "rules": [{"default": {"connectionLimits": {"maxRequests": 1}}}]}}),
    )
    .await?;
    eventually("the limit in slow's config", WAIT, || async {
        let cfg = admin_config(&http, slow_admin).await?;
        (cfg["config"]["inbounds"][0]["limits"][0]["maxRequests"] == 1).then_some(())
    })
    .await?;
    let call = |path: &str| http.get(format!("http://127.0.0.1:{out}{path}")).send();
    let slow = tokio::spawn(call("/slow"));
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .context("the slow call reaching the application")?;
    let r = call("/slow").await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok()),
        Some("overflow")
    );
    assert!(
        arrived.try_recv().is_err(),
        "the call over the cap reached the application"
    );
    assert_eq!(slow.await??.status(), StatusCode::OK);
    assert_eq!(call("/fast").await?.status(), StatusCode::OK);
    assert!(
        admin_metric(
            &http,
            slow_admin,
            "causeway_proxy_errors_total{direction=\"inbound\",service=\"slow\",peer=\"web\",error=\"overflow\"}"
        )
        .await
            >= 1.0
    );
    Ok(())
}

/// MeshCircuitBreaker's outlier detection on an inbound (`rules`): backend-2's
/// application answers 502 to everything; web does not retry. Without a policy about
/// half of web's calls fail, for as long as it lasts. With `gatewayFailures: 3` on
/// backend's inbound, backend-2's sidecar ejects its application after three 502s in a
/// row and answers for it (503 `app-ejected`, marked so web's sidecar takes backend-2
/// out of its choice), so web's calls all go to backend-1 and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_application_is_ejected_by_its_own_sidecar_and_callers_go_elsewhere()
-> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    two.set_second("answer", 502).await?;
    let failed = failures(two.out, 20).await.context("20 calls")?;
    assert!(
        (4..=16).contains(&failed),
        "without the policy about half fail: {failed} of 20"
    );
    put(
        &two.fx.c,
        "/meshes/default/meshcircuitbreakers/backend-inbound",
        &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "backend-inbound",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "rules": [{"default": {"outlierDetection": {"baseEjectionTime": "1m",
                     "detectors": {"gatewayFailures": {"consecutive": 3}}}}}]}}),
    )
    .await?;
    let http = plain_http();
    eventually("the detector on backend-2's inbound", WAIT, || async {
        let cfg = admin_config(&http, two.admins[1]).await?;
        let od = &cfg["config"]["inbounds"][0]["limits"][0]["outlierDetection"];
        (od["gatewayFailures"] == 3).then_some(())
    })
    .await?;
    eventually("every call succeeding", WAIT, || async {
        (failures(two.out, 20).await? == 0).then_some(())
    })
    .await?;
    assert!(
        admin_metric(
            &http,
            two.admins[1],
            "causeway_circuit_breaker_events_total{service=\"backend\",event=\"inbound_ejected\"}"
        )
        .await
            >= 1.0
    );
    // What web's sidecar was told, straight from backend-2's inbound metrics.
    assert!(
        admin_metric(
            &http,
            two.admins[1],
            "causeway_proxy_errors_total{direction=\"inbound\",service=\"backend\",peer=\"web\",error=\"app-ejected\"}"
        )
        .await
            >= 1.0
    );
    Ok(())
}

/// A retry is marked by the caller's sidecar: backend-1 answers 503 to everything,
/// backend-2 is well, and web retries once (the default, within its budget). A call
/// that first went to backend-1 and was retried is answered by backend-2, whose
/// application sees `x-causeway-attempt: 2`; a call answered on its first try carries
/// no mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_marked_with_its_attempt() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.set(0, "answer", 503).await?;
    let http = plain_http();
    let (mut retried, mut first) = (0, 0);
    for _ in 0..20 {
        let r = http
            .get(format!("http://127.0.0.1:{}/", two.out))
            .send()
            .await?;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            // Not retried: over the retry budget (20%, three a second at least).
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await?;
        match body["headers"]["x-causeway-attempt"].as_str() {
            Some("2") => retried += 1,
            None => first += 1,
            other => panic!("attempt {other:?}"),
        }
    }
    assert!(retried >= 1 && first >= 1, "{retried} retried, {first} not");
    Ok(())
}

/// MeshCircuitBreaker `maxRetries` on an inbound (`rules`): slow allows 1 retried
/// request in flight. The test calls slow's sidecar directly over mTLS as web's sidecar
/// does, marking its requests as retries the way web's sidecar marks them. While one
/// retry of `/slow` waits at the application, another retry is answered 503 `overflow`
/// (naming maxRetries) at once and never reaches it, while a first try goes through.
/// Without the policy the second retry goes through too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_inbound_max_retries_a_retry_is_refused_and_the_application_spared()
-> anyhow::Result<()> {
    let SlowService {
        fx,
        slow_admin,
        slow_inbound,
        mut arrived,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    let tls = fx.workload_tls("web", b"http/1.1").await?;
    // One GET over mTLS as web: the answer's head, lower case.
    let call = |path: &'static str, attempt: u32| {
        let tls = tls.clone();
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", slow_inbound)).await?;
            let name = rustls::pki_types::ServerName::try_from("slow")?;
            let mut s = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nhost: slow\r\nconnection: close\r\nx-causeway-attempt: {attempt}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            anyhow::Ok(String::from_utf8_lossy(&got).to_ascii_lowercase())
        }
    };
    // Without the policy: two retries at once both reach the application.
    let held = tokio::spawn(call("/slow", 2));
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .context("the first retry")?;
    let second = tokio::spawn(call("/slow", 2));
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .context("without the policy, the second retry reaching the application")?;
    assert!(held.await??.starts_with("http/1.1 200"));
    assert!(second.await??.starts_with("http/1.1 200"));

    put(
        &fx.c,
        "/meshes/default/meshcircuitbreakers/slow-inbound",
        &json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "slow-inbound",
        "spec": {"targetRef": {"kind": "MeshService", "name": "slow"},
                 "rules": [{"default": {"connectionLimits": {"maxRetries": 1}}}]}}),
    )
    .await?;
    let http = plain_http();
    eventually("the retry cap in slow's config", WAIT, || async {
        let cfg = admin_config(&http, slow_admin).await?;
        (cfg["config"]["inbounds"][0]["limits"][0]["maxRetries"] == 1).then_some(())
    })
    .await?;
    let held = tokio::spawn(call("/slow", 2));
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .context("a retry")?;
    let t0 = Instant::now();
    let refused = call("/slow", 3).await?;
    assert!(refused.starts_with("http/1.1 503"), "{refused}");
    assert!(refused.contains("x-causeway-error: overflow"), "{refused}");
    assert!(refused.contains("maxretries (1)"), "{refused}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        arrived.try_recv().is_err(),
        "the retry over the cap reached the application"
    );
    // A first try is no retry.
    assert!(call("/fast", 1).await?.starts_with("http/1.1 200"));
    assert!(held.await??.starts_with("http/1.1 200"));
    Ok(())
}

/// A service on two ports: backend-1 serves `main` and `admin` (two applications, two
/// inbounds of `backend`, the first tagged `k8s.kuma.io/namespace: prod`). web calls
/// `main` and `admin` on outbounds of their own (`sectionName`), and all of backend on a
/// third. Each sectioned outbound reaches its port's application alone; a MeshHTTPRoute
/// `to[]` entry for `sectionName: admin` adds a response header on that outbound only
/// (not on `main`, nor on the third, which spans both ports); a route's backend by
/// `namespace` takes the prod endpoint alone, and one by `port` that port's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_called_and_configured_by_port_and_namespace() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let (main_app, admin_app) = (free_addr(), free_addr());
    let (main_port, admin_port) = (free_addr().port(), free_addr().port());
    let mut procs = vec![
        fx.app("backend-main", "backend", main_app, false)?,
        fx.app("backend-admin", "backend", admin_app, false)?,
    ];
    let backend = json!({"type": "Dataplane", "mesh": "default", "name": "backend-1", "spec": {
        "address": "127.0.0.1",
        "inbound": [
            {"name": "main", "port": main_port, "servicePort": main_app.port(), "service": "backend",
             "protocol": "http", "tags": {"k8s.kuma.io/namespace": "prod"}},
            {"name": "admin", "port": admin_port, "servicePort": admin_app.port(), "service": "backend",
             "protocol": "http"}]}});
    procs.push(fx.sidecar("backend", backend).await?.0);
    let (to_main, to_admin, to_all) = (free_addr().port(), free_addr().port(), free_addr().port());
    let web = json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_addr().port(), "servicePort": free_addr().port(), "service": "web", "protocol": "http"}],
        "outbound": [
            {"port": to_main, "service": "backend", "sectionName": "main"},
            {"port": to_admin, "service": "backend", "sectionName": admin_port.to_string()},
            {"port": to_all, "service": "backend"}]}});
    let (web, web_admin) = fx.sidecar("web", web).await?;
    procs.push(web);
    eventually("every port answering", WAIT, || async {
        (answering(to_all, 20).await? == instances(&["backend-main", "backend-admin"]))
            .then_some(())
    })
    .await?;
    assert_eq!(
        answering(to_main, 20).await,
        Some(instances(&["backend-main"]))
    );
    assert_eq!(
        answering(to_admin, 20).await,
        Some(instances(&["backend-admin"]))
    );

    // A policy for one port: a header on the admin port's answers only.
    put(&fx.c, "/meshes/default/meshhttproutes/admin-header", &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "admin-header",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "backend", "sectionName": "admin"},
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "default": {"filters": [{"type": "ResponseHeaderModifier",
                           "responseHeaderModifier": {"set": [{"name": "x-port", "value": "admin"}]}}]}}]}]}})).await?;
    let http = plain_http();
    eventually("the admin port's route in web's config", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        (cfg["config"]["outbounds"][1]["httpRoutes"][0]["name"] == "admin-header").then_some(())
    })
    .await?;
    let header = |out: u16| {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
            anyhow::Ok(
                r.headers()
                    .get("x-port")
                    .map(|v| v.to_str().unwrap_or("").to_owned()),
            )
        }
    };
    assert_eq!(header(to_admin).await?.as_deref(), Some("admin"));
    assert_eq!(header(to_main).await?, None, "main is another port");
    assert_eq!(
        header(to_all).await?,
        None,
        "the whole service spans two ports"
    );

    // Route backends by namespace, then by port, on the outbound to all of backend.
    let route = |name: &str, backend: Value| {
        json!({"type": "MeshHTTPRoute", "mesh": "default", "name": name,
               "spec": {"targetRef": {"kind": "Mesh"}, "to": [{
                   "targetRef": {"kind": "MeshService", "name": "backend"},
                   "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                              "default": {"backendRefs": [backend]}}]}]}})
    };
    put(
        &fx.c,
        "/meshes/default/meshhttproutes/to-prod",
        &route(
            "to-prod",
            json!({"kind": "MeshService", "name": "backend", "namespace": "prod"}),
        ),
    )
    .await?;
    eventually("only prod answering", WAIT, || async {
        (answering(to_all, 20).await? == instances(&["backend-main"])).then_some(())
    })
    .await?;
    let delete =
        fx.c.call_retry(
            Method::DELETE,
            "/meshes/default/meshhttproutes/to-prod",
            None,
        )
        .await?;
    anyhow::ensure!(delete.0.is_success(), "{delete:?}");
    put(
        &fx.c,
        "/meshes/default/meshhttproutes/to-admin-port",
        &route(
            "to-admin-port",
            json!({"kind": "MeshService", "name": "backend", "port": admin_port}),
        ),
    )
    .await?;
    eventually("only the admin port answering", WAIT, || async {
        (answering(to_all, 20).await? == instances(&["backend-admin"])).then_some(())
    })
    .await?;
    Ok(())
}

/// A Dataplane's name cannot be hijacked: while backend-1's sidecar is connected, a
/// sidecar of web (a valid token of another service) that registers a Dataplane named
/// backend-1 is refused, and backend-1's sidecar keeps its config; a second sidecar of
/// backend is refused too while the first holds the name, and takes it once the first
/// has gone. web may never take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_name_belongs_to_its_service_and_its_live_sidecar() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let app = free_addr();
    let _app = fx.app("backend-1", "backend", app, false)?;
    let inbound = free_addr().port();
    let dp = dataplane("backend-1", "backend", inbound, app.port(), "http", &[]);
    let (sidecar, admin) = fx.sidecar("backend", dp.clone()).await?;

    let hijack = dataplane(
        "backend-1",
        "web",
        free_addr().port(),
        free_addr().port(),
        "http",
        &[],
    );
    let refused = fx
        .register_as("web", &hijack)
        .await?
        .err()
        .context("web hijacked backend-1")?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("belongs to service \"backend\""),
        "{refused:?}"
    );
    let http = plain_http();
    let cfg = admin_config(&http, admin)
        .await
        .context("backend-1's config")?;
    assert_eq!(cfg["config"]["inbounds"][0]["service"], "backend", "{cfg}");
    assert_eq!(cfg["config"]["inbounds"][0]["port"], inbound, "{cfg}");

    let mut moved = dp.clone();
    moved["spec"]["inbound"][0]["port"] = json!(free_addr().port());
    let refused = fx
        .register_as("backend", &moved)
        .await?
        .err()
        .context("a second sidecar took a live name")?;
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");

    // Once the first sidecar has gone, its service may take the name; web still not.
    sidecar.kill();
    let stream = eventually("the name free for backend", WAIT, || async {
        fx.register_as("backend", &moved).await.ok()?.ok()
    })
    .await?;
    drop(stream);
    let again = eventually("the second sidecar gone", WAIT, || async {
        match fx.register_as("web", &hijack).await.ok()? {
            Err(status) if status.code() == tonic::Code::PermissionDenied => Some(status),
            _ => None,
        }
    })
    .await?;
    assert!(again.message().contains("belongs to service"), "{again:?}");
    Ok(())
}

/// A token starts a proxy; its zone renews it while the proxy is connected, so the proxy
/// outlives it: after the token it started with has expired, the sidecar restarts from
/// the renewal written over its token file, registers, gets its certificate and serves.
/// Revoking the token's id refuses its renewals too. Tokens last a week by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_outlives_its_token_through_its_zones_renewals() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    put(&fx.c, "/meshes/default/meshtrafficpermissions/all", &json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}})).await?;

    // The default lifetime is a week.
    let (s, v) =
        fx.c.call_retry(
            Method::POST,
            "/meshes/default/dataplane-token",
            Some(&json!({"service": "backend"})),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let expires = time::OffsetDateTime::parse(
        v["expiresAt"].as_str().context("expiresAt")?,
        &time::format_description::well_known::Rfc3339,
    )?;
    let week = expires - time::OffsetDateTime::now_utc();
    assert!(
        week > time::Duration::hours(167) && week <= time::Duration::hours(168),
        "default lifetime {week}"
    );

    // A token for a minute, the shortest there is.
    let (s, v) =
        fx.c.call_retry(
            Method::POST,
            "/meshes/default/dataplane-token",
            Some(&json!({"service": "backend", "validFor": "1m"})),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let original = v["token"].as_str().context("token")?.to_string();
    let id = v["id"].as_str().context("id")?.to_string();
    let token_file = fx.dir.join("backend-short.token");
    std::fs::write(&token_file, &original)?;
    let app = free_addr();
    let _app = fx.app("backend-1", "backend", app, false)?;
    let (backend, _) = fx
        .sidecar_with_token(
            dataplane(
                "backend-1",
                "backend",
                free_addr().port(),
                app.port(),
                "http",
                &[],
            ),
            &token_file,
            &[],
        )
        .await?;
    let (_web, _, out) = fx.web_calling("backend").await?;
    eventually("a call through both sidecars", WAIT, || async {
        (answering(out, 1).await? == instances(&["backend-1"])).then_some(())
    })
    .await?;
    // The zone's renewal, written over the token file (0600).
    let renewed = eventually("the renewed token in the file", WAIT, || async {
        let t = std::fs::read_to_string(&token_file).ok()?;
        let t = t.trim().to_string();
        (t.starts_with("cwd1.") && t != original.trim()).then_some(t)
    })
    .await?;
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&token_file)?.permissions().mode() & 0o777,
        0o600
    );

    // Once the first token has expired, it gets nothing; the renewal still does.
    let refused = eventually(
        "the first token expired",
        Duration::from_secs(90),
        || async { fx.sign_with(&original).await.ok()?.err() },
    )
    .await?;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");
    anyhow::ensure!(
        fx.sign_with(&renewed).await?.is_ok(),
        "the renewed token gets a certificate"
    );
    // The sidecar restarts from its token file: registered, certified, serving.
    backend.kill();
    eventually("backend-1 gone", WAIT, || async {
        (answering(out, 1).await? != instances(&["backend-1"])).then_some(())
    })
    .await?;
    backend.restart()?;
    eventually(
        "backend-1 serving again after a restart past its first token",
        WAIT,
        || async { (answering(out, 1).await? == instances(&["backend-1"])).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", backend.logs()))?;

    // Revoked by id (though it has expired): its renewals are refused too.
    let (s, v) =
        fx.c.call_retry(
            Method::DELETE,
            &format!("/meshes/default/dataplane-tokens/{id}"),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refused = eventually("the renewal refused", WAIT, || async {
        fx.sign_with(&renewed).await.ok()?.err()
    })
    .await?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    Ok(())
}

/// A zone's token-renewal key rotates: every connected sidecar gets a token renewed
/// with the new key at once, tokens the old key renewed work for the overlap (none with
/// `0s`), and traffic never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zones_token_renewal_key_rotates_under_connected_sidecars() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    put(&fx.c, "/meshes/default/meshtrafficpermissions/all", &json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}})).await?;
    let token_file = fx.token("backend").await?;
    let original = std::fs::read_to_string(&token_file)?.trim().to_string();
    let app = free_addr();
    let _app = fx.app("backend-1", "backend", app, false)?;
    let (_backend, _) = fx
        .sidecar_with_token(
            dataplane(
                "backend-1",
                "backend",
                free_addr().port(),
                app.port(),
                "http",
                &[],
            ),
            &token_file,
            &[],
        )
        .await?;
    let (_web, _, out) = fx.web_calling("backend").await?;
    let serving =
        || async { (answering(out, 1).await? == instances(&["backend-1"])).then_some(()) };
    eventually("a call through both sidecars", WAIT, serving).await?;
    let renewal = |than: String| {
        let token_file = token_file.clone();
        move || {
            let (token_file, than) = (token_file.clone(), than.clone());
            async move {
                let t = std::fs::read_to_string(&token_file)
                    .ok()?
                    .trim()
                    .to_string();
                (t.starts_with("cwd1.") && t != than).then_some(t)
            }
        }
    };
    let first = eventually("the zone's renewal", WAIT, renewal(original.clone())).await?;

    // With the default overlap, the new key renews at once and the old renewal still
    // works.
    let (ok, _, err) = fx.zone_cli(&["zone", "rotate-renewal-key"])?;
    anyhow::ensure!(ok, "rotate-renewal-key: {err}");
    assert!(err.contains("work until"), "{err}");
    let second = eventually("a renewal with the new key", WAIT, renewal(first.clone())).await?;
    assert!(
        fx.sign_with(&first).await?.is_ok(),
        "refused within the overlap"
    );
    assert!(fx.sign_with(&second).await?.is_ok());

    // A leaked key: no overlap. What it renewed is refused at once; the sidecar already
    // holds a renewal with the newest key and keeps serving.
    let (ok, _, err) = fx.zone_cli(&["zone", "rotate-renewal-key", "--overlap", "0s"])?;
    anyhow::ensure!(ok, "rotate-renewal-key: {err}");
    assert!(err.contains("no longer work"), "{err}");
    let third = eventually(
        "a renewal with the newest key",
        WAIT,
        renewal(second.clone()),
    )
    .await?;
    let refused = fx
        .sign_with(&second)
        .await?
        .expect_err("the leaked key's renewal works");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        fx.sign_with(&first).await?.is_err(),
        "an older renewal works"
    );
    assert!(fx.sign_with(&third).await?.is_ok());
    eventually("still serving", WAIT, serving).await?;

    // Longer than a renewal lives: refused, nothing rotated.
    let (ok, _, err) = fx.zone_cli(&["zone", "rotate-renewal-key", "--overlap", "200h"])?;
    assert!(!ok && err.contains("at most 168h"), "{err}");
    assert!(fx.sign_with(&third).await?.is_ok());
    Ok(())
}

/// A zone's own API CA rotates with its sidecars connected: staged, the zone sends both
/// CAs to every proxy, which writes them over its --cp-ca-file; activated once every
/// proxy trusts the new one, DDS and the zone API present certificates of it (reloaded
/// in place); finished, the old CA is dropped everywhere. Calls never fail, a client
/// that trusts only the old CA is refused after, and a restarted sidecar gets in with
/// the CA file it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zones_api_ca_rotates_under_connected_sidecars() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    put(&fx.c, "/meshes/default/meshtrafficpermissions/all", &json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}})).await?;
    let old_ca = std::fs::read_to_string(fx.zone.dir.join("api-ca.pem"))?;
    let old_sha = causeway_pki::first_cert_sha256(&old_ca);
    // The backend's sidecar has a CA file of its own, as on a host of its own.
    let backend_ca = fx.dir.join("backend-cp-ca.pem");
    std::fs::write(&backend_ca, &old_ca)?;
    let token_file = fx.token("backend").await?;
    let app = free_addr();
    let _app = fx.app("backend-1", "backend", app, false)?;
    let backend_dp = dataplane(
        "backend-1",
        "backend",
        free_addr().port(),
        app.port(),
        "http",
        &[],
    );
    let ca_arg = backend_ca.display().to_string();
    let own_ca = ["--cp-ca-file", ca_arg.as_str()];
    let (backend, _) = fx
        .sidecar_with_token(backend_dp.clone(), &token_file, &own_ca)
        .await?;
    let (_web, _, out) = fx.web_calling("backend").await?;
    let serving =
        || async { (answering(out, 1).await? == instances(&["backend-1"])).then_some(()) };
    eventually("a call through both sidecars", WAIT, serving).await?;

    // Calls go on through the whole rotation; none may fail.
    let calls = causeway_tests::mesh::CallsUnderway::start(out);

    let status = || async {
        let (ok, text, err) = fx.zone_cli(&["zone", "api-ca", "status"])?;
        anyhow::ensure!(ok, "status: {err}");
        Ok::<_, anyhow::Error>(text)
    };
    let (ok, _, err) = fx.zone_cli(&["zone", "api-ca", "rotate", "--step", "stage"])?;
    anyhow::ensure!(ok, "stage: {err}");
    // Every connected proxy, and the zone's own file, trusts both CAs.
    let trusting_both = |file: std::path::PathBuf| {
        move || {
            let file = file.clone();
            async move {
                let shas = causeway_pki::cert_shas(&std::fs::read_to_string(&file).ok()?);
                (shas.len() == 2).then_some(shas)
            }
        }
    };
    let both = eventually(
        "the backend's CA file holding both CAs",
        WAIT,
        trusting_both(backend_ca.clone()),
    )
    .await?;
    assert!(both.contains(&old_sha), "{both:?}");
    let new_sha = both
        .iter()
        .find(|s| **s != old_sha)
        .cloned()
        .context("the new CA")?;
    eventually(
        "the zone's api-ca.pem holding both",
        WAIT,
        trusting_both(fx.zone.dir.join("api-ca.pem")),
    )
    .await?;
    let staged = eventually(
        "every proxy reporting it trusts the staged CA",
        WAIT,
        || async {
            let text = status().await.ok()?;
            text.contains("next: activate (ready)").then_some(text)
        },
    )
    .await?;
    assert!(staged.contains("zone API CA: staged"), "{staged}");
    assert!(staged.contains("dataplane default/backend-1"), "{staged}");
    // Before activation DDS still presents the old CA's certificate.
    fx.dds_channel_trusting(&old_ca)
        .await
        .context("the old CA before activation")?;

    // The rest of the rotation: activate, then finish, as the CLI takes them.
    let (ok, text, err) = fx.zone_cli(&["zone", "api-ca", "rotate", "--timeout", "60s"])?;
    anyhow::ensure!(ok, "rotate: {err}");
    assert!(
        err.contains("rotation of the zone API CA finished"),
        "{err}"
    );
    assert!(text.contains("zone API CA: steady"), "{text}");

    // Only the new CA is trusted and presented now.
    let only_new = eventually(
        "the backend's CA file holding the new CA alone",
        WAIT,
        || async {
            let shas = causeway_pki::cert_shas(&std::fs::read_to_string(&backend_ca).ok()?);
            (shas == [new_sha.clone()]).then_some(())
        },
    );
    only_new.await?;
    assert_eq!(
        causeway_pki::cert_shas(&std::fs::read_to_string(fx.zone.dir.join("api-ca.pem"))?),
        std::slice::from_ref(&new_sha)
    );
    assert!(
        fx.dds_channel_trusting(&old_ca).await.is_err(),
        "DDS presents a certificate the old CA verifies"
    );
    let new_ca = std::fs::read_to_string(&backend_ca)?;
    fx.dds_channel_trusting(&new_ca)
        .await
        .context("DDS with the new CA")?;
    let old_only = fx.dir.join("old-zone-ca.pem");
    std::fs::write(&old_only, &old_ca)?;
    let refused = std::process::Command::new(causeway_tests::causeway_bin())
        .args(["zone", "api-ca", "status"])
        .env("CAUSEWAY_ADDR", format!("https://{}", fx.zone.api))
        .env(
            "CAUSEWAY_TOKEN",
            fx.zone.admin_token().context("admin token")?.trim(),
        )
        .env("CAUSEWAY_CA_FILE", &old_only)
        .env("CAUSEWAY_CONFIG", fx.dir.join("old-cli-config.yaml"))
        .output()?;
    assert!(
        !refused.status.success(),
        "the zone API answered a client of the old CA"
    );

    calls.stop_expecting_no_failure().await?;

    // A restarted sidecar gets in with the CA file it wrote.
    drop(backend);
    let (_backend, _) = fx
        .sidecar_with_token(backend_dp, &token_file, &own_ca)
        .await?;
    eventually("calls after the backend's restart", WAIT, serving).await?;
    Ok(())
}

/// Dataplane and ingress tokens can be listed and revoked. Once revoked (through global,
/// sent to the zone over KDS), a token registers nothing, gets no certificate, and the
/// stream it opened is ended; a new token of the same service works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_registers_nothing_and_gets_no_certificate() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let (file, id) = fx.token_with_id("backend").await?;
    let token = std::fs::read_to_string(file)?;
    let dp = |name: &str| {
        dataplane(
            name,
            "backend",
            free_addr().port(),
            free_addr().port(),
            "http",
            &[],
        )
    };
    let mut live = fx
        .register_with(&token, &dp("backend-1"))
        .await?
        .map_err(|s| anyhow::anyhow!("registering: {s:?}"))?;
    anyhow::ensure!(fx.sign_with(&token).await?.is_ok(), "a certificate before");

    let (s, v) =
        fx.c.call_retry(
            Method::GET,
            "/meshes/default/dataplane-tokens?service=backend",
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let listed = v["items"]
        .as_array()
        .and_then(|items| items.iter().find(|t| t["id"] == id.as_str()))
        .cloned()
        .with_context(|| format!("token {id} listed: {v}"))?;
    assert_eq!(listed["service"], "backend", "{listed}");
    assert!(listed["revokedAt"].is_null(), "{listed}");
    assert!(
        !v.to_string().contains(token.trim()),
        "the token itself is never listed"
    );

    let (s, v) =
        fx.c.call_retry(
            Method::DELETE,
            &format!("/meshes/default/dataplane-tokens/{id}"),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"], json!([id]), "{v}");

    // The live stream ends with the reason.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match live.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .context("the revoked token's stream still open")?;
    let status = ended.err().context("the stream ended without a status")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    // No new registration, no certificate.
    let refused = fx
        .register_with(&token, &dp("backend-2"))
        .await?
        .err()
        .context("a revoked token registered")?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = fx
        .sign_with(&token)
        .await?
        .err()
        .context("a revoked token got a certificate")?;
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // Another token of the same service is unaffected.
    let stream = fx
        .register_as("backend", &dp("backend-3"))
        .await?
        .map_err(|s| anyhow::anyhow!("a fresh token refused: {s:?}"))?;
    drop(stream);
    let (_, v) =
        fx.c.call_retry(
            Method::GET,
            "/meshes/default/dataplane-tokens?service=backend",
            None,
        )
        .await?;
    let revoked: Vec<&Value> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["revokedAt"].is_string())
        .collect();
    assert_eq!(revoked.len(), 1, "{v}");
    assert_eq!(revoked[0]["id"], id.as_str(), "{v}");

    // An ingress token: refused once revoked.
    let (s, v) =
        fx.c.call_retry(
            Method::POST,
            "/zones/zone-a/ingress-token",
            Some(&json!({})),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ingress_token = v["token"].as_str().context("token")?.to_string();
    let ingress_id = v["id"].as_str().context("id")?.to_string();
    let (s, v) =
        fx.c.call_retry(Method::GET, "/zones/zone-a/ingress-tokens", None)
            .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"][0]["id"], ingress_id.as_str(), "{v}");
    let ingress = json!({"type": "ZoneIngress", "mesh": "default", "name": "zone-a-ingress",
        "spec": {"zone": "zone-a", "address": "127.0.0.1", "port": free_addr().port()}});
    let open_ingress = || async {
        use causeway_api::kds::dds::{ProxyHello, ProxyMessage, proxy_message};
        let hello = ProxyMessage {
            msg: Some(proxy_message::Msg::Hello(ProxyHello {
                token: ingress_token.clone(),
                ingress_json: serde_json::to_vec(&ingress)?,
                ..Default::default()
            })),
        };
        let mut client =
            causeway_api::kds::dds::dds_client::DdsClient::new(fx.dds_channel().await?);
        let answer = match client.ingress_stream(futures::stream::iter([hello])).await {
            Ok(r) => r.into_inner().message().await.map(|_| ()),
            Err(status) => Err(status),
        };
        anyhow::Ok(answer)
    };
    open_ingress()
        .await?
        .map_err(|s| anyhow::anyhow!("the ingress token refused before: {s:?}"))?;
    let (s, v) =
        fx.c.call_retry(Method::DELETE, "/zones/zone-a/ingress-tokens", None)
            .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refused = eventually("the ingress token refused", WAIT, || async {
        open_ingress().await.ok()?.err()
    })
    .await?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    Ok(())
}

/// A Strict mesh where web called backend once through both sidecars: the fixture,
/// the processes, and web's sidecar's admin address.
async fn called_mesh() -> anyhow::Result<(MeshFixture, Vec<Proc>, SocketAddr)> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let called = fx.web_calls_backend().await?;
    Ok((fx, called.procs, called.web_admin))
}

/// No token and no key in any log: a whole mesh runs (a global node, a zone, two
/// sidecars, a call through them with mTLS), then every log it wrote is searched for
/// every token on disk (the admin and read-only API tokens of global and zone, the
/// zone's token, the dataplane tokens), every PEM private key on disk, every key the
/// control planes hold (read from their stores with their seal keys once stopped) and
/// the seal keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_ever_reaches_a_log() -> anyhow::Result<()> {
    let (fx, _procs, _) = called_mesh().await?;
    fx.c.nodes[0].kill();
    fx.zone.kill();
    let mut held = causeway_tests::secrets::global_keys(&fx.c.nodes[0], &["default"])?;
    held.extend(causeway_tests::secrets::zone_keys(&fx.zone)?);
    let files = files_under(&fx.dir);
    let logs: Vec<(String, String)> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(p).unwrap_or_default(),
            )
        })
        .collect();
    assert!(logs.len() >= 4, "the logs of the run: {logs:?}");
    let mut secrets: Vec<(String, String)> = vec![("secrets key".into(), "11".repeat(32))];
    for p in &files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        if name.contains("token") || name.contains("seal-key") {
            secrets.push((p.display().to_string(), text.trim().to_owned()));
        }
        // A private key's body, a line of it long enough to be its own.
        if let Some(body) = text.split("PRIVATE KEY-----").nth(1) {
            let line = body.lines().map(str::trim).find(|l| l.len() >= 40);
            if let Some(line) = line {
                secrets.push((p.display().to_string(), line.to_owned()));
            }
        }
    }
    for (what, key) in held {
        let secret = match key {
            causeway_tests::secrets::Key::Pem(pem) => pem
                .lines()
                .find(|l| l.len() >= 40)
                .context("a PEM body line")?
                .to_owned(),
            causeway_tests::secrets::Key::Hex(h) => h,
        };
        secrets.push((what, secret));
    }
    let tokens = secrets
        .iter()
        .filter(|(what, _)| what.contains("token") && !what.contains("key"))
        .count();
    assert!(
        tokens >= 3,
        "admin, zone and dataplane tokens at least: {secrets:?}"
    );
    assert!(secrets.len() > tokens + 1, "private keys too: {secrets:?}");
    for (log, text) in &logs {
        for (what, secret) in &secrets {
            assert!(
                secret.len() >= 16 && !text.contains(secret.as_str()),
                "{log} holds the secret of {what}"
            );
        }
    }
    Ok(())
}

/// `--log-format json`: every line a component logs is a JSON object with its level
/// and message.
#[test]
fn a_component_logs_json_when_asked() -> anyhow::Result<()> {
    let listen = free_addr();
    let mut child = std::process::Command::new(causeway_tests::causeway_bin())
        .args([
            "--log-format",
            "json",
            "demo-app",
            "--listen",
            &listen.to_string(),
            "--service",
            "x",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().context("stderr")?),
        &mut line,
    )?;
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "demo app listening", "{v}");
    Ok(())
}

/// The value of the first sample of `series` (its name and labels, exactly) in an
/// exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The control planes' metrics: after a sidecar connected and a call went through it,
/// the global node (a single-node cluster: its leader) and the zone expose Raft, API,
/// KDS, DDS and certificate metrics that say so; and every query of the Grafana
/// dashboard shipped in `dashboards/` names a metric one of the components exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_export_metrics_the_dashboard_uses() -> anyhow::Result<()> {
    let (fx, _procs, web_admin) = called_mesh().await?;

    let global = eventually("the zone's status on global", WAIT, || async {
        let m = fx.c.metrics(0).await.ok()?;
        (sample(&m, "causeway_kds_zone_connected{zone=\"zone-a\"}") == Some(1.0)).then_some(m)
    })
    .await?;
    for (series, at_least) in [
        ("causeway_raft_is_leader", 1.0),
        ("causeway_raft_term", 1.0),
        ("causeway_raft_applied_index", 1.0),
        ("causeway_raft_members", 1.0),
        ("causeway_raft_proposal_duration_seconds_count", 1.0),
        // A single node builds and installs no snapshot; the counters are there.
        ("causeway_raft_snapshots_built_total", 0.0),
        ("causeway_raft_snapshots_installed_total", 0.0),
        ("causeway_kds_connected_zones", 1.0),
        ("causeway_kds_full_sets_total{zone=\"zone-a\"}", 1.0),
        (
            "causeway_api_requests_total{method=\"PUT\",route=\"/meshes/{mesh}/{plural}/{name}\",code=\"201\"}",
            1.0,
        ),
    ] {
        let v = sample(&global, series).with_context(|| format!("{series} in\n{global}"))?;
        assert!(v >= at_least, "{series} = {v}");
    }
    assert!(sample(&global, "causeway_kds_zone_lag_revisions{zone=\"zone-a\"}").is_some());

    let zone = fx.zone.metrics().await?;
    for (series, at_least) in [
        ("causeway_zone_kds_connected", 1.0),
        ("causeway_zone_kds_revision", 1.0),
        ("causeway_zone_connected_proxies{kind=\"sidecar\"}", 2.0),
        (
            "causeway_zone_config_computations_total{kind=\"sidecar\"}",
            2.0,
        ),
        ("causeway_zone_config_pushes_total{kind=\"sidecar\"}", 2.0),
        ("causeway_zone_certificates_issued_total", 2.0),
        (
            "causeway_zone_certificate_expiry_seconds{certificate=\"zone\"}",
            3600.0,
        ),
        (
            "causeway_zone_certificate_expiry_seconds{certificate=\"mesh:default\"}",
            3600.0,
        ),
    ] {
        let v = sample(&zone, series).with_context(|| format!("{series} in\n{zone}"))?;
        assert!(v >= at_least, "{series} = {v}");
    }
    assert_eq!(sample(&zone, "causeway_zone_proxies_nacking"), Some(0.0));

    // The dashboard's queries name only metrics that exist.
    let sidecar = plain_http()
        .get(format!("http://{web_admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    // Each exposition passes Prometheus' own linter.
    for (what, text) in [("global", &global), ("zone", &zone), ("sidecar", &sidecar)] {
        if let Some(complaints) = promtool_complaints(text)? {
            panic!("promtool check metrics on the {what}'s: {complaints}");
        }
    }
    // Every sample's name, and every declared family's with the suffixes its samples
    // take (a family may have no sample yet).
    let mut exported = std::collections::BTreeSet::new();
    for line in [&global, &zone, &sidecar].iter().flat_map(|t| t.lines()) {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let name = declared.split(' ').next().unwrap_or_default();
            for suffix in ["", "_total", "_bucket", "_count", "_sum"] {
                exported.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            exported.extend(line.split(['{', ' ']).next().map(str::to_owned));
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/causeway.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().context("an expr")?.to_owned());
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    for q in &queries {
        let names: Vec<&str> = q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("causeway_"))
            .collect();
        assert!(!names.is_empty(), "{q} names no causeway metric");
        for name in names {
            assert!(
                exported.contains(name),
                "{q}: {name} is not exported; exported: {exported:?}"
            );
        }
    }
    Ok(())
}

/// MeshTimeout per caller, enforced on the inbound: slow's policy gives web (by its
/// service) a request timeout of 500 ms, where every other caller keeps 15 s. web's
/// call to `/slow` (3 s) is answered 504 `request-timeout` by slow's sidecar within a
/// second or two (web's default retry tries once more), not after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_for_one_caller_applies_to_its_calls() -> anyhow::Result<()> {
    let SlowService {
        fx,
        slow_admin,
        out,
        http,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    put(
        &fx.c,
        "/meshes/default/meshtimeouts/slow-for-web",
        &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "slow-for-web",
        "spec": {"targetRef": {"kind": "MeshService", "name": "slow"},
                 "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                           "default": {"http": {"requestTimeout": "500ms"}}}]}}),
    )
    .await?;
    eventually("web's timeout in slow's config", WAIT, || async {
        let cfg = admin_config(&http, slow_admin).await?;
        let callers = &cfg["config"]["inbounds"][0]["callerTimeouts"];
        (callers[0]["timeouts"]["request"] == "500ms").then_some(())
    })
    .await?;
    let t0 = Instant::now();
    let r = http
        .get(format!("http://127.0.0.1:{out}/slow"))
        .send()
        .await?;
    let took = t0.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        r.headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok()),
        Some("request-timeout")
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    Ok(())
}

/// MeshRetry against a flaky backend: both instances answer 503 to 30% of calls, at
/// random. With retries off about 30% of calls fail; with a MeshRetry of 5 retries
/// under a 60% budget, under 1% do, and the retries stay within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_30pct_of_calls_gives_under_1pct_errors_with_retries()
-> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    let http = plain_http();
    for app in &two.apps {
        let r = http
            .post(format!("http://{app}/answer/503?percent=30"))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{}", r.status());
    }
    let url = format!("http://127.0.0.1:{}/", two.out);
    let failures = |n: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut failed = 0;
            for _ in 0..n {
                failed += usize::from(!http.get(&url).send().await?.status().is_success());
            }
            anyhow::Ok(failed)
        }
    };
    let without = failures(200).await?;
    assert!(
        (30..=90).contains(&without),
        "without retries about 30% fail: {without} of 200"
    );
    two.retry(
        json!({"numRetries": 5, "backOff": {"baseInterval": "1ms", "maxInterval": "5ms"},
               "budget": {"percent": 60}}),
        |r| r["http"]["numRetries"] == 5,
    )
    .await?;
    const CALLS: usize = 500;
    let with = failures(CALLS).await?;
    let refused = admin_metric(
        &http,
        two.web_admin,
        "causeway_retries_total{service=\"backend\",result=\"budget_exhausted\"}",
    )
    .await;
    assert!(
        with * 100 < CALLS,
        "with retries: {with} of {CALLS} failed ({refused} retries over the budget)"
    );
    let retried = admin_metric(
        &http,
        two.web_admin,
        "causeway_retries_total{service=\"backend\",result=\"retried\"}",
    )
    .await;
    assert!(
        retried > 0.0 && retried <= CALLS as f64 * 0.6,
        "{retried} retries for {CALLS} calls"
    );
    Ok(())
}

/// MeshFaultInjection, enforced on backend's sidecars for calls from web: an abort (503)
/// for 20% of calls and a 200 ms delay for 10%, each drawn on its own. Over 5,000 calls
/// the observed rates are within 2 points of those. Then a response bandwidth limit of
/// 1 Mbps makes a 125 kB answer take about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_aborts_and_delays_match_their_rates_and_bandwidth_is_limited()
-> anyhow::Result<()> {
    use futures::StreamExt as _;
    let two = TwoBackends::start().await?;
    // Retries off: web's sidecar would retry the aborts.
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    let faults = |http: Value| {
        json!({"type": "MeshFaultInjection", "mesh": "default", "name": "backend-faults",
               "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                        "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                                  "default": {"http": http}}]}})
    };
    put(
        &two.fx.c,
        "/meshes/default/meshfaultinjections/backend-faults",
        &faults(json!([
        {"abort": {"httpStatus": 503, "percentage": 20}},
        {"delay": {"value": "200ms", "percentage": 10}}])),
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("http://127.0.0.1:{}/", two.out);
    let call = |url: String| {
        let http = http.clone();
        async move {
            let t0 = Instant::now();
            let r = http.get(url).send().await?;
            let aborted = r.status() == StatusCode::SERVICE_UNAVAILABLE
                && r.headers()
                    .get("x-causeway-error")
                    .and_then(|v| v.to_str().ok())
                    == Some("fault-injected");
            anyhow::Ok((aborted, t0.elapsed()))
        }
    };
    // Both instances' sidecars have the policy: 40 calls in a row see aborts from both.
    eventually("aborts injected", WAIT, || async {
        let mut aborted = 0;
        for _ in 0..40 {
            aborted += usize::from(call(url.clone()).await.ok()?.0);
        }
        (aborted >= 2).then_some(())
    })
    .await?;
    const CALLS: usize = 5_000;
    let outcomes: Vec<(bool, Duration)> =
        futures::stream::iter((0..CALLS).map(|_| call(url.clone())))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let share = |n: usize| n as f64 * 100.0 / CALLS as f64;
    let aborted = share(outcomes.iter().filter(|(a, _)| *a).count());
    let delayed = share(
        outcomes
            .iter()
            .filter(|(_, t)| *t >= Duration::from_millis(200))
            .count(),
    );
    eprintln!("over {CALLS} calls: {aborted:.2}% aborted, {delayed:.2}% delayed");
    assert!(
        (18.0..=22.0).contains(&aborted),
        "{aborted}% aborted, want 20 +- 2"
    );
    assert!(
        (8.0..=12.0).contains(&delayed),
        "{delayed}% delayed, want 10 +- 2"
    );

    put(
        &two.fx.c,
        "/meshes/default/meshfaultinjections/backend-faults",
        &faults(json!([
        {"responseBandwidth": {"limit": "1Mbps", "percentage": 100}}])),
    )
    .await?;
    let big = format!("http://127.0.0.1:{}/bytes/125000", two.out);
    eventually("a 125 kB answer at 1 Mbps (125 kB/s)", WAIT, || async {
        let t0 = Instant::now();
        let body = http.get(&big).send().await.ok()?.bytes().await.ok()?;
        (body.len() == 125_000 && t0.elapsed() >= Duration::from_millis(900)).then_some(())
    })
    .await?;
    Ok(())
}

/// MeshRateLimit, enforced on slow's sidecar for calls from web: 7 requests per 10 s.
/// Of 20 calls made within the interval exactly 7 pass; the others are answered 429
/// with `retry-after` (the seconds until the bucket fills) and never reach the
/// application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_n_calls_in_one_interval_exactly_the_limit_pass() -> anyhow::Result<()> {
    let SlowService {
        fx,
        slow_admin,
        out,
        http,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    put(&fx.c, "/meshes/default/meshratelimits/slow-for-web", &json!({
        "type": "MeshRateLimit", "mesh": "default", "name": "slow-for-web",
        "spec": {"targetRef": {"kind": "MeshService", "name": "slow"},
                 "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                           "default": {"local": {"http": {"requestRate": {"num": 7, "interval": "10s"}}}}}]}})).await?;
    eventually("the limit in slow's config", WAIT, || async {
        let cfg = admin_config(&http, slow_admin).await?;
        let limits = &cfg["config"]["inbounds"][0]["rateLimits"];
        (limits[0]["http"]["rate"]["num"] == 7).then_some(())
    })
    .await?;
    let t0 = Instant::now();
    let (mut passed, mut limited) = (0, 0);
    for _ in 0..20 {
        let r = http
            .get(format!("http://127.0.0.1:{out}/fast"))
            .send()
            .await?;
        match r.status() {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.headers()["x-causeway-error"], "rate-limited");
                let wait: u64 = r.headers()["retry-after"].to_str()?.parse()?;
                assert!((1..=10).contains(&wait), "retry-after {wait}");
                limited += 1;
            }
            s => anyhow::bail!("unexpected {s}"),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the calls took one interval"
    );
    assert_eq!((passed, limited), (7, 13));
    Ok(())
}

/// Sends `hello` through a TCP outbound and reads it back: whether the echo came.
async fn echoes(out: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", out)).await?;
        s.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        anyhow::Ok(&buf == b"hello")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), exchange).await,
        Ok(Ok(true))
    )
}

/// MeshHealthCheck over TCP: db, a TCP echo service, has two instances, and db-2's
/// application stops (its sidecar still takes connections, then closes them). Without
/// checks some of web's connections fail; with a TCP check that sends `ping` and expects
/// it back, db-2 is taken out and every connection echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_health_check_takes_out_an_instance_whose_application_is_gone() -> anyhow::Result<()>
{
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-db", "web", "db", "Allow").await?;
    put(&fx.c, "/meshes/default/meshloadbalancingstrategies/rr", &json!({
        "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "rr",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                 "default": {"loadBalancer": {"type": "RoundRobin"}}}]}})).await?;
    let (mut apps, mut sidecars) = (Vec::new(), Vec::new());
    for name in ["db-1", "db-2"] {
        let app = free_addr();
        apps.push(fx.app(name, "db", app, true)?);
        let dp = dataplane(name, "db", free_addr().port(), app.port(), "tcp", &[]);
        sidecars.push(fx.sidecar("db", dp).await?.0);
    }
    let (_web, web_admin, out) = fx.web_calling("db").await?;
    let http = plain_http();
    eventually("web balancing db round robin over both", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        let ob = &cfg["config"]["outbounds"][0];
        let both = ob["groups"][0]["endpoints"].as_array()?.len() == 2;
        (both && ob["loadBalancer"] == "RoundRobin").then_some(())
    })
    .await?;
    eventually("both instances echo", WAIT, || async {
        for _ in 0..10 {
            if !echoes(out).await {
                return None;
            }
        }
        Some(())
    })
    .await?;
    drop(apps.remove(1));
    let mut failed = 0;
    for _ in 0..10 {
        failed += usize::from(!echoes(out).await);
    }
    assert!(
        failed >= 2,
        "without checks db-2 keeps its share: {failed} of 10 failed"
    );

    put(&fx.c, "/meshes/default/meshhealthchecks/db", &json!({
        "type": "MeshHealthCheck", "mesh": "default", "name": "db",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                 "default": {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 1,
                             "tcp": {"send": "cGluZw==", "receive": ["cGluZw=="]}}}]}})).await?;
    eventually("db-2 taken out by its failing TCP checks", WAIT, || async {
        for _ in 0..20 {
            if !echoes(out).await {
                return None;
            }
        }
        Some(())
    })
    .await?;
    assert!(
        admin_metric(
            &http,
            web_admin,
            "causeway_health_checks_total{service=\"db\",result=\"failed\"}"
        )
        .await
            >= 2.0
    );
    Ok(())
}

/// MeshTimeout `idleTimeout` on a TCP destination: with 1s, web's sidecar closes a
/// connection on which nothing moved for a second (both sides); with the default (1h)
/// it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_is_closed_at_its_idle_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-db", "web", "db", "Allow").await?;
    let app = free_addr();
    let _app = fx.app("db-1", "db", app, true)?;
    let dp = dataplane("db-1", "db", free_addr().port(), app.port(), "tcp", &[]);
    let _db = fx.sidecar("db", dp).await?.0;
    let (_web, web_admin, out) = fx.web_calling("db").await?;
    eventually("db echoes", WAIT, || async {
        echoes(out).await.then_some(())
    })
    .await?;
    // Open, echo once, then wait for the close: (closed, after how long).
    let idle_close = || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", out)).await?;
        s.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        let t0 = Instant::now();
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        );
        anyhow::Ok((closed, t0.elapsed()))
    };
    let (closed, _) = idle_close().await?;
    assert!(!closed, "the default idle timeout (1h) keeps it open");
    put(&fx.c, "/meshes/default/meshtimeouts/db-idle", &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "db-idle",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                 "default": {"idleTimeout": "1s"}}]}})).await?;
    let http = plain_http();
    eventually("the idle timeout in web's config", WAIT, || async {
        let cfg = admin_config(&http, web_admin).await?;
        (cfg["config"]["outbounds"][0]["timeouts"]["idle"] == "1s").then_some(())
    })
    .await?;
    let (closed, after) = idle_close().await?;
    assert!(closed, "closed at the idle timeout");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(3000)).contains(&after),
        "closed after {after:?}"
    );
    Ok(())
}

/// MeshTimeout's body timeouts: `/stall` sends half its body, then nothing for 3 s.
/// With `streamIdleTimeout` 500ms the body ends in an error after about half a second
/// (and the application sees its connection closed); with `maxStreamDuration` 1s, after
/// about a second. With the defaults the whole body arrives after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_at_its_stream_idle_timeout_and_max_stream_duration()
-> anyhow::Result<()> {
    let SlowService {
        fx,
        web_admin,
        out,
        http,
        mut cancelled,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    let url = format!("http://127.0.0.1:{out}/stall");
    let read = || async {
        let t0 = Instant::now();
        let r = http.get(&url).send().await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "{}", r.status());
        let body = r.bytes().await;
        anyhow::Ok((body.is_ok_and(|b| &b[..] == b"helloworld"), t0.elapsed()))
    };
    let (whole, took) = read().await?;
    assert!(
        whole && took >= Duration::from_secs(3),
        "defaults: {whole} after {took:?}"
    );
    for (field, value, expect) in [
        ("streamIdleTimeout", "500ms", Duration::from_millis(500)),
        ("maxStreamDuration", "1s", Duration::from_secs(1)),
    ] {
        let mut http_timeouts = serde_json::Map::new();
        http_timeouts.insert(field.into(), json!(value));
        put(&fx.c, "/meshes/default/meshtimeouts/stall", &json!({
            "type": "MeshTimeout", "mesh": "default", "name": "stall",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "slow"},
                     "default": {"http": http_timeouts}}]}})).await?;
        let key = if field == "streamIdleTimeout" {
            "streamIdle"
        } else {
            "maxStreamDuration"
        };
        eventually(&format!("{field} in web's config"), WAIT, || async {
            let cfg = admin_config(&http, web_admin).await?;
            (cfg["config"]["outbounds"][0]["timeouts"][key] == value).then_some(())
        })
        .await?;
        let (whole, took) = read().await?;
        assert!(!whole, "{field}: the body was cut");
        assert!(
            took >= expect && took < expect + Duration::from_millis(1500),
            "{field} {value}: cut after {took:?}"
        );
        tokio::time::timeout(WAIT, cancelled.recv())
            .await
            .with_context(|| format!("{field}: the application seeing the cut"))?;
    }
    Ok(())
}

/// MeshTCPRoute, enforced: web calls `db`, a TCP destination (HTTP applications behind
/// TCP inbounds, so each answer names its instance). A route sends db's connections to
/// db (weight 1) and db-replica (weight 3): over 200 connections about three quarters
/// reach the replica, whose identity the mTLS handshake checks; before it, all reach db.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_splits_connections_between_backends_by_weight() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-db", "web", "db", "Allow").await?;
    fx.permit("web-to-replica", "web", "db-replica", "Allow")
        .await?;
    let mut procs = Vec::new();
    for (name, service) in [("db-1", "db"), ("replica-1", "db-replica")] {
        let app = free_addr();
        procs.push(fx.app(name, service, app, false)?);
        let dp = dataplane(name, service, free_addr().port(), app.port(), "tcp", &[]);
        procs.push(fx.sidecar(service, dp).await?.0);
    }
    let (_web, web_admin, out) = fx.web_calling("db").await?;
    // A new connection for each call.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()?;
    let instance = || async {
        let v: Value = http
            .get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["instance"].as_str().map(String::from)
    };
    eventually("db answering", WAIT, || async {
        (instance().await? == "db-1").then_some(())
    })
    .await?;
    put(&fx.c, "/meshes/default/meshtcproutes/db-split", &json!({
        "type": "MeshTCPRoute", "mesh": "default", "name": "db-split",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                         "default": {"backendRefs": [{"kind": "MeshService", "name": "db", "weight": 1},
                                                     {"kind": "MeshService", "name": "db-replica", "weight": 3}]}}]}})).await?;
    let admin = plain_http();
    eventually("the route in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        let backends = cfg["config"]["outbounds"][0]["backends"].as_array()?.len();
        (backends == 2).then_some(())
    })
    .await?;
    let mut replica = 0;
    const CALLS: usize = 200;
    for i in 0..CALLS {
        match instance().await.as_deref() {
            Some("replica-1") => replica += 1,
            Some("db-1") => {}
            other => anyhow::bail!("call {i}: {other:?}"),
        }
    }
    let share = replica as f64 / CALLS as f64;
    assert!(
        (0.65..=0.85).contains(&share),
        "{replica} of {CALLS} to the replica"
    );
    Ok(())
}

/// MeshTrafficPermission `AllowWithShadowDeny`: web's calls to slow go through, and
/// slow's sidecar counts each as one a Deny would have refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_deny_lets_calls_in_and_counts_them() -> anyhow::Result<()> {
    let SlowService {
        fx,
        slow_admin,
        out,
        http,
        _procs,
        ..
    } = SlowService::start(Duration::from_secs(3)).await?;
    let series =
        "causeway_shadow_denied_total{direction=\"inbound\",service=\"slow\",peer=\"web\"}";
    assert_eq!(
        http.get(format!("http://127.0.0.1:{out}/fast"))
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    assert_eq!(admin_metric(&http, slow_admin, series).await, 0.0);
    fx.permit("web-to-slow", "web", "slow", "AllowWithShadowDeny")
        .await?;
    eventually("calls counted as shadow-denied", WAIT, || async {
        let r = http
            .get(format!("http://127.0.0.1:{out}/fast"))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK && admin_metric(&http, slow_admin, series).await >= 1.0)
            .then_some(())
    })
    .await?;
    Ok(())
}

/// MeshHTTPRoute, enforced: backend has a v1 and a v2 instance, told apart by their
/// `version` tag. A canary route sends 90% of `/api` to v1 and 10% to v2, measured over
/// 5,000 calls within 2 points; the beta channel (`x-beta: true` on `/api`, a more
/// specific match) goes to v2 only. Without the route both instances share the calls
/// about equally, so the split fails with the enforcement removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_route_splits_90_10_and_a_header_picks_the_beta_subset() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    // Round robin: without routes, calls alternate between the versions.
    put(&fx.c, "/meshes/default/meshloadbalancingstrategies/rr", &json!({
        "type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "rr",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"loadBalancer": {"type": "RoundRobin"}}}]}})).await?;
    let mut procs = Vec::new();
    for (name, version) in [("backend-v1", "v1"), ("backend-v2", "v2")] {
        let app = free_addr();
        procs.push(fx.app(name, "backend", app, false)?);
        let dp = tagged_dataplane(name, "backend", app.port(), json!({"version": version}));
        procs.push(fx.sidecar("backend", dp).await?.0);
    }
    let (_web, web_admin, out) = fx.web_calling("backend").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let api = format!("http://127.0.0.1:{out}/api/items");
    eventually("both versions answering", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(answered_by(http.get(&api)).await.ok()?);
        }
        (seen == instances(&["backend-v1", "backend-v2"])).then_some(())
    })
    .await?;
    put(&fx.c, "/meshes/default/meshhttproutes/backend-canary", &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "backend-canary",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
                     {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                      "default": {"backendRefs": [
                          {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                          {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10}]}},
                     {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                   "headers": [{"name": "x-beta", "value": "true"}]}],
                      "default": {"backendRefs": [
                          {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}}]}]}})).await?;
    let admin = plain_http();
    eventually("the routes in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        let routes = cfg["config"]["outbounds"][0]["httpRoutes"]
            .as_array()?
            .len();
        (routes == 2).then_some(())
    })
    .await?;
    for i in 0..50 {
        let who = answered_by(http.get(&api).header("x-beta", "true")).await?;
        assert_eq!(who, "backend-v2", "beta call {i}");
    }
    const CALLS: usize = 5_000;
    let answers: Vec<String> = futures::stream::iter(
        (0..CALLS).map(|_| answered_by(http.get(&api).header("x-beta", "false"))),
    )
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    let v2 = answers.iter().filter(|a| *a == "backend-v2").count();
    let share = v2 as f64 * 100.0 / CALLS as f64;
    eprintln!("over {CALLS} calls to /api: {share:.2}% to v2");
    assert!(
        (8.0..=12.0).contains(&share),
        "{v2} of {CALLS} calls to v2 ({share:.2}%), want 10 +- 2"
    );
    assert_eq!(
        answers.len() - v2,
        answers.iter().filter(|a| *a == "backend-v1").count(),
        "every other call to v1"
    );
    // The sidecar counts the requests each route sent to each backend.
    let routed = admin_metric(
        &admin,
        web_admin,
        "causeway_route_requests_total{service=\"backend\",route=\"backend-canary\",backend=\"backend\"}",
    )
    .await;
    assert!(routed >= (CALLS + 50) as f64, "{routed}");
    Ok(())
}

/// MeshHTTPRoute filters and per-route policies, seen by the client and the application:
/// - `/old` is answered with the route's redirect (301 to https://example.com/new, the
///   query kept), and the application never sees it;
/// - `/v1/...` reaches the application as `/v2/...` on host `backend.internal`, with a
///   request header set and one removed, and the client sees a response header added;
/// - `/slow/mirrored` is mirrored to `slow` (an application that answers after 2 s): each
///   copy reaches it, and the primary answers as fast as calls without a mirror;
/// - a second MeshHTTPRoute sends `/slow` to the `slow` service, where it answers after
///   2 s; a MeshTimeout for that route alone (500ms) turns that into a 504, while the
///   destination's other routes keep the default timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_filters_rewrite_redirect_and_mirror_and_a_route_has_its_own_timeout()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    fx.permit("web-to-slow", "web", "slow", "Allow").await?;
    let mut procs = Vec::new();
    let app = free_addr();
    procs.push(fx.app("backend-1", "backend", app, false)?);
    let dp = dataplane(
        "backend-1",
        "backend",
        free_addr().port(),
        app.port(),
        "http",
        &[],
    );
    procs.push(fx.sidecar("backend", dp).await?.0);
    let (slow_app, _cancelled, mut arrived) = slow_app(Duration::from_secs(2)).await?;
    let dp = dataplane(
        "slow-1",
        "slow",
        free_addr().port(),
        slow_app.port(),
        "http",
        &[],
    );
    procs.push(fx.sidecar("slow", dp).await?.0);
    let (_web, web_admin, out) = fx.web_calling("backend").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = |path: &str| format!("http://127.0.0.1:{out}{path}");
    eventually("backend answering", WAIT, || async {
        answered_by(http.get(url("/"))).await.ok()
    })
    .await?;
    put(
        &fx.c,
        "/meshes/default/meshhttproutes/backend-routes",
        &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "backend-routes",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
             "default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "scheme": "https", "hostname": "example.com", "statusCode": 301,
                 "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "default": {"filters": [
                 {"type": "URLRewrite", "urlRewrite": {"hostname": "backend.internal",
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                 {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "x-route", "value": "rewritten"}], "remove": ["x-debug"]}},
                 {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                     "add": [{"name": "x-served-by", "value": "backend-routes"}]}}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/slow/mirrored"}}],
             "default": {"filters": [{"type": "RequestMirror", "requestMirror": {
                 "backendRef": {"kind": "MeshService", "name": "slow"}}}]}}]}]}}),
    )
    .await?;
    put(
        &fx.c,
        "/meshes/default/meshhttproutes/slow-route",
        &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "slow-route",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "slow"}]}}]}]}}),
    )
    .await?;
    let admin = plain_http();
    eventually("the routes in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        let routes = cfg["config"]["outbounds"][0]["httpRoutes"]
            .as_array()?
            .len();
        (routes == 4).then_some(())
    })
    .await?;

    // The redirect, answered by web's sidecar.
    let r = http.get(url("/old?x=1")).send().await?;
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://example.com/new?x=1")
    );

    // The rewrite and the header changes.
    let r = http
        .get(url("/v1/items?a=1"))
        .header("x-route", "original")
        .header("x-debug", "1")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("x-served-by").and_then(|v| v.to_str().ok()),
        Some("backend-routes")
    );
    let seen: Value = r.json().await?;
    assert_eq!(seen["path"], "/v2/items", "{seen}");
    assert_eq!(seen["query"], "a=1", "{seen}");
    assert_eq!(seen["headers"]["host"], "backend.internal", "{seen}");
    assert_eq!(seen["headers"]["x-route"], "rewritten", "{seen}");
    assert!(seen["headers"].get("x-debug").is_none(), "{seen}");

    // The mirror: every copy reaches slow, and the primary does not wait for it.
    let timed = |path: &'static str| {
        let http = http.clone();
        let url = url(path);
        async move {
            let mut took = Vec::new();
            for _ in 0..10 {
                let t0 = Instant::now();
                answered_by(http.get(&url)).await?;
                took.push(t0.elapsed());
            }
            took.sort();
            anyhow::Ok(took[took.len() / 2])
        }
    };
    let plain = timed("/v1/x").await?;
    let mirrored = timed("/slow/mirrored").await?;
    eprintln!("median: {plain:?} without a mirror, {mirrored:?} with one");
    assert!(
        mirrored < plain + Duration::from_millis(200) && mirrored < Duration::from_secs(1),
        "a mirrored call took {mirrored:?} (without a mirror {plain:?})"
    );
    let mut copies = 0;
    eventually("10 copies at the mirror", WAIT, || {
        while arrived.try_recv().is_ok() {
            copies += 1;
        }
        let done = copies >= 10;
        async move { done.then_some(()) }
    })
    .await?;

    // The route to slow: the default timeout lets its 2 s answer through...
    let t0 = Instant::now();
    let r = http.get(url("/slow/x")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await?, "slow\n");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    // ...and a MeshTimeout for that route alone cuts it at 500ms.
    put(
        &fx.c,
        "/meshes/default/meshtimeouts/slow-route",
        &json!({
        "type": "MeshTimeout", "mesh": "default", "name": "slow-route",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "slow-route"},
                         "default": {"http": {"requestTimeout": "500ms"}}}]}}),
    )
    .await?;
    eventually("the route's timeout in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        let routes = cfg["config"]["outbounds"][0]["httpRoutes"]
            .as_array()?
            .clone();
        routes
            .iter()
            .any(|r| r["name"] == "slow-route" && r["timeouts"]["request"] == "500ms")
            .then_some(())
    })
    .await?;
    let t0 = Instant::now();
    let r = http.get(url("/slow/x")).send().await?;
    let took = t0.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        r.headers()
            .get("x-causeway-error")
            .and_then(|v| v.to_str().ok()),
        Some("request-timeout")
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // The other routes keep the destination's timeout.
    let cfg = admin_config(&admin, web_admin).await.context("config")?;
    let routes = cfg["config"]["outbounds"][0]["httpRoutes"]
        .as_array()
        .context("routes")?
        .clone();
    assert!(
        routes
            .iter()
            .filter(|r| r["name"] == "backend-routes")
            .all(|r| r.get("timeouts").is_none()),
        "{routes:?}"
    );
    Ok(())
}

/// Callers by tags: web-v1 and web-v2 are both `web`, with `version` tags on their
/// Dataplanes. Their zone signs those tags into their certificates, so backend's
/// sidecar can tell them apart: a MeshTrafficPermission that allows every caller and
/// denies `MeshSubset {version: v2}` lets web-v1 in and answers web-v2 403. Without the
/// tags in the certificate the Deny would not match, and web-v2 would get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_subset_deny_denies_the_callers_with_its_tags() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let permission = |deny: bool| {
        let mut from = vec![json!({"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}})];
        if deny {
            from.push(
                json!({"targetRef": {"kind": "MeshSubset", "tags": {"version": "v2"}},
                             "default": {"action": "Deny"}}),
            );
        }
        json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "backend-callers",
               "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": from}})
    };
    let path = "/meshes/default/meshtrafficpermissions/backend-callers";
    put(&fx.c, path, &permission(false)).await?;
    let app = free_addr();
    let mut procs = vec![fx.app("backend-1", "backend", app, false)?];
    let dp = dataplane(
        "backend-1",
        "backend",
        free_addr().port(),
        app.port(),
        "http",
        &[],
    );
    procs.push(fx.sidecar("backend", dp).await?.0);
    let mut outs = Vec::new();
    for version in ["v1", "v2"] {
        let out = free_addr().port();
        let mut dp = tagged_dataplane(
            &format!("web-{version}"),
            "web",
            free_addr().port(),
            json!({"version": version}),
        );
        dp["spec"]["outbound"] = json!([{"port": out, "service": "backend"}]);
        procs.push(fx.sidecar("web", dp).await?.0);
        outs.push(out);
    }
    let http = plain_http();
    let status = |out: u16| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{out}/"))
                .send()
                .await
                .ok()
                .map(|r| r.status())
        }
    };
    for out in &outs {
        eventually("both versions of web let in", WAIT, || async {
            (status(*out).await? == StatusCode::OK).then_some(())
        })
        .await?;
    }
    put(&fx.c, path, &permission(true)).await?;
    eventually("web-v2 denied", WAIT, || async {
        (status(outs[1]).await? == StatusCode::FORBIDDEN).then_some(())
    })
    .await?;
    for i in 0..10 {
        assert_eq!(
            status(outs[0]).await,
            Some(StatusCode::OK),
            "web-v1 call {i}"
        );
        assert_eq!(
            status(outs[1]).await,
            Some(StatusCode::FORBIDDEN),
            "web-v2 call {i}"
        );
    }
    Ok(())
}

/// MeshLoadBalancingStrategy RingHash and Maglev, enforced: backend has two instances. Hashing by
/// the `x-user` header, every call of one user goes to one instance, and the users
/// spread over both; hashing by a cookie with a ttl, the first answer sets the cookie
/// and the calls that send it back stick. With endpoints picked at random (ring hash
/// not enforced), a user's 20 calls would reach both instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_sticks_a_key_to_an_instance() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    let ring_hash = |policies: Value| {
        json!({"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "rr",
               "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                        "default": {"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": policies}}}}]}})
    };
    let path = "/meshes/default/meshloadbalancingstrategies/rr";
    put(
        &two.fx.c,
        path,
        &ring_hash(json!([{"type": "Header", "header": {"name": "x-user"}}])),
    )
    .await?;
    let admin = plain_http();
    eventually("ring hash in web's config", WAIT, || async {
        let cfg = admin_config(&admin, two.web_admin).await?;
        let ob = &cfg["config"]["outbounds"][0];
        (ob["ringHash"]["hashPolicies"][0]["type"] == "Header").then_some(())
    })
    .await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{}/", two.out);
    let mut used = std::collections::BTreeSet::new();
    for user in 0..16 {
        let user = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(answered_by(http.get(&url).header("x-user", &user)).await?);
        }
        assert_eq!(seen.len(), 1, "{user} reached {seen:?}");
        used.extend(seen);
    }
    assert_eq!(used, instances(&["backend-1", "backend-2"]), "users spread");

    put(
        &two.fx.c,
        path,
        &ring_hash(
            json!([{"type": "Cookie", "cookie": {"name": "sticky", "ttl": "1h", "path": "/"}}]),
        ),
    )
    .await?;
    eventually("the cookie policy in web's config", WAIT, || async {
        let cfg = admin_config(&admin, two.web_admin).await?;
        let ob = &cfg["config"]["outbounds"][0];
        (ob["ringHash"]["hashPolicies"][0]["type"] == "Cookie").then_some(())
    })
    .await?;
    let mut used = std::collections::BTreeSet::new();
    for client in 0..8 {
        let first = http.get(&url).send().await?;
        let cookie = first
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("a cookie set on the first answer")?
            .to_owned();
        assert!(
            cookie.starts_with("sticky=") && cookie.contains("Max-Age=3600"),
            "{cookie}"
        );
        let first: Value = first.json().await?;
        let value = cookie.split(';').next().unwrap_or_default().to_owned();
        for i in 0..10 {
            let again = http.get(&url).header("cookie", &value).send().await?;
            assert!(again.headers().get("set-cookie").is_none(), "set once");
            let again: Value = again.json().await?;
            assert_eq!(
                again["instance"], first["instance"],
                "client {client}, call {i}"
            );
        }
        used.insert(first["instance"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(used.len(), 2, "clients spread: {used:?}");

    // Maglev, by the same header: sticky too.
    put(&two.fx.c, path, &json!({"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "rr",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65537,
                     "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]}}}}]}})).await?;
    eventually("Maglev in web's config", WAIT, || async {
        let cfg = admin_config(&admin, two.web_admin).await?;
        (cfg["config"]["outbounds"][0]["maglev"]["tableSize"] == 65537).then_some(())
    })
    .await?;
    let mut used = std::collections::BTreeSet::new();
    for user in 0..16 {
        let user = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(answered_by(http.get(&url).header("x-user", &user)).await?);
        }
        assert_eq!(seen.len(), 1, "Maglev: {user} reached {seen:?}");
        used.extend(seen);
    }
    assert_eq!(used, instances(&["backend-1", "backend-2"]), "users spread");
    Ok(())
}

/// MeshLoadBalancingStrategy `localZone.affinityTags`: web runs on node n1; backend has
/// an instance on n1 and two on n2. With affinity by `node` (default weights: 9 for the
/// same node, 1 for the rest), about 90% of web's calls stay on n1; without it, a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_tags_keep_most_calls_on_the_callers_node() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    let lb = |affinity: Value| {
        json!({"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "backend-lb",
               "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                        "default": {"loadBalancer": {"type": "RoundRobin"},
                                    "localityAwareness": {"localZone": {"affinityTags": affinity}}}}]}})
    };
    let path = "/meshes/default/meshloadbalancingstrategies/backend-lb";
    put(&fx.c, path, &lb(json!([]))).await?;
    let mut procs = Vec::new();
    for (name, node) in [
        ("backend-n1", "n1"),
        ("backend-n2a", "n2"),
        ("backend-n2b", "n2"),
    ] {
        let app = free_addr();
        procs.push(fx.app(name, "backend", app, false)?);
        let dp = tagged_dataplane(name, "backend", app.port(), json!({"node": node}));
        procs.push(fx.sidecar("backend", dp).await?.0);
    }
    let out = free_addr().port();
    let mut web = tagged_dataplane("web-1", "web", free_addr().port(), json!({"node": "n1"}));
    web["spec"]["outbound"] = json!([{"port": out, "service": "backend"}]);
    let (_web, web_admin) = fx.sidecar("web", web).await?;
    procs.push(_web);
    let http = plain_http();
    let url = format!("http://127.0.0.1:{out}/");
    let share_on_n1 = |calls: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut n1 = 0;
            for _ in 0..calls {
                if answered_by(http.get(&url)).await? == "backend-n1" {
                    n1 += 1;
                }
            }
            anyhow::Ok(n1 as f64 / calls as f64)
        }
    };
    eventually("all three instances answering", WAIT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            seen.insert(answered_by(http.get(&url)).await.ok()?);
        }
        (seen.len() == 3).then_some(())
    })
    .await?;
    let without = share_on_n1(300).await?;
    put(&fx.c, path, &lb(json!([{"key": "node"}]))).await?;
    let admin = plain_http();
    eventually("affinity classes in web's config", WAIT, || async {
        let cfg = admin_config(&admin, web_admin).await?;
        let eps = cfg["config"]["outbounds"][0]["groups"][0]["endpoints"]
            .as_array()?
            .clone();
        eps.iter().all(|e| e["affinity"].is_object()).then_some(())
    })
    .await?;
    let with = share_on_n1(500).await?;
    eprintln!("share of calls on n1: {without:.3} without affinity, {with:.3} with");
    assert!((0.25..=0.42).contains(&without), "{without}");
    assert!((0.85..=0.95).contains(&with), "{with}");
    Ok(())
}

/// MeshFaultInjection `rules` with `matches` (Kuma 2.13): each rule injects its faults
/// into the calls of the callers it matches by SPIFFE id. One rule aborts another
/// caller's calls with 418, one aborts web's (matched by a prefix of whole path
/// segments) with 500: web's calls get 500, never 418.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_rule_for_a_spiffe_id_applies_to_that_caller_only() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    let abort =
        |status: u16| json!({"http": [{"abort": {"httpStatus": status, "percentage": 100}}]});
    put(&two.fx.c, "/meshes/default/meshfaultinjections/by-id", &json!({
        "type": "MeshFaultInjection", "mesh": "default", "name": "by-id",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"spiffeID": {"type": "Exact", "value": "spiffe://default/other"}}], "default": abort(418)},
            {"matches": [{"spiffeID": {"type": "Prefix", "value": "spiffe://default/web"}}], "default": abort(500)}]}})).await?;
    let http = plain_http();
    let url = format!("http://127.0.0.1:{}/", two.out);
    let status = || async { http.get(&url).send().await.ok().map(|r| r.status()) };
    eventually("both instances abort web's calls", WAIT, || async {
        for _ in 0..10 {
            if status().await? != StatusCode::INTERNAL_SERVER_ERROR {
                return None;
            }
        }
        Some(())
    })
    .await?;
    for i in 0..20 {
        assert_eq!(
            status().await,
            Some(StatusCode::INTERNAL_SERVER_ERROR),
            "call {i}"
        );
    }
    Ok(())
}

/// Per-route retries and route matches by method, query parameter and regular
/// expression: backend-2 answers 500 to everything and the destination's retries are
/// off, so about half of the plain calls fail; the route `retried` (GET with
/// `?retry=yes`, or a path like `/items/42`) has a MeshRetry of its own (3 retries on
/// 5xx, a budget of its own as large as its traffic), so every one of its calls
/// succeeds. A POST with `?retry=yes` is not on the
/// route and fails as often as plain calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_has_its_own_retries_and_matches_by_method_query_and_regex() -> anyhow::Result<()> {
    let two = TwoBackends::start().await?;
    two.retry(json!({"numRetries": 0}), |r| r["http"]["numRetries"] == 0)
        .await?;
    two.set(1, "answer", 500).await?;
    put(
        &two.fx.c,
        "/meshes/default/meshhttproutes/retried",
        &json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "retried",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"method": "GET", "queryParams": [{"name": "retry", "value": "yes"}]},
                         {"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
             "default": {}}]}]}}),
    )
    .await?;
    put(&two.fx.c, "/meshes/default/meshretries/retried", &json!({
        "type": "MeshRetry", "mesh": "default", "name": "retried",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "retried"},
                 "default": {"http": {"numRetries": 3, "retryOn": ["5xx"], "budget": {"percent": 100}}}}]}})).await?;
    let admin = plain_http();
    eventually("the route's retries in web's config", WAIT, || async {
        let cfg = admin_config(&admin, two.web_admin).await?;
        let routes = cfg["config"]["outbounds"][0]["httpRoutes"]
            .as_array()?
            .clone();
        (routes.len() == 2 && routes.iter().all(|r| r["retry"]["http"]["numRetries"] == 3))
            .then_some(())
    })
    .await?;
    let http = plain_http();
    let base = format!("http://127.0.0.1:{}", two.out);
    let failures = |method: reqwest::Method, path: &'static str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let mut failed = 0;
            for _ in 0..40 {
                if !http
                    .request(method.clone(), &url)
                    .send()
                    .await?
                    .status()
                    .is_success()
                {
                    failed += 1;
                }
            }
            anyhow::Ok(failed)
        }
    };
    assert_eq!(
        failures(Method::GET, "/x?retry=yes").await?,
        0,
        "GET ?retry=yes"
    );
    assert_eq!(failures(Method::GET, "/items/42").await?, 0, "/items/42");
    let plain = failures(Method::GET, "/x").await?;
    let post = failures(Method::POST, "/x?retry=yes").await?;
    let partial = failures(Method::GET, "/items/42/x").await?;
    assert!(
        (8..=32).contains(&plain),
        "{plain} of 40 plain calls failed"
    );
    assert!((8..=32).contains(&post), "{post} of 40 POSTs failed");
    assert!(
        (8..=32).contains(&partial),
        "{partial} of 40 calls to /items/42/x failed"
    );
    Ok(())
}

/// The key that signs dataplane tokens rotates: a token the previous key signed still
/// gets certificates during the overlap and is refused by the zone once it ends; tokens
/// signed after the rotation work; `causeway dataplane token keys` shows both keys, then
/// one. A rotation with no overlap (a key that leaked) stops its tokens at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_signing_key_rotates_and_old_tokens_end_with_the_overlap() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let token = |path: std::path::PathBuf| std::fs::read_to_string(path);
    let old = token(fx.token("backend").await?)?;
    anyhow::ensure!(fx.sign_with(&old).await?.is_ok(), "the first token works");
    let refused = |t: String| {
        let fx = &fx;
        move || {
            let t = t.clone();
            async move {
                match fx.sign_with(&t).await.ok()? {
                    Err(s) if s.code() == tonic::Code::Unauthenticated => Some(s),
                    _ => None,
                }
            }
        }
    };

    let (ok, out, err) =
        fx.c.cli(&["dataplane", "token", "rotate-key", "--overlap", "10s"])?;
    anyhow::ensure!(ok, "rotate-key: {err}");
    let started = Instant::now();
    // Both keys listed, the new one signing.
    assert!(
        out.lines().filter(|l| l.contains(" yes ")).count() == 1,
        "{out}"
    );
    assert!(
        out.lines().filter(|l| l.contains(" no ")).count() == 1,
        "{out}"
    );
    // The old token still works in its overlap; a new one works once the zone has the
    // new key.
    let answer = fx.sign_with(&old).await?;
    assert!(
        answer.is_ok() || started.elapsed() >= Duration::from_secs(10),
        "refused within the overlap: {answer:?}"
    );
    let new = token(fx.token("backend").await?)?;
    eventually("the new token accepted", WAIT, || async {
        fx.sign_with(&new).await.ok()?.ok()
    })
    .await?;
    // Once the overlap ends, every zone refuses the old token.
    let why = eventually("the old token refused", WAIT, refused(old.clone())).await?;
    // (The overlap ends on a whole second, counted from before the CLI returned.)
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "refused after {:?}, within the overlap: {why:?}",
        started.elapsed()
    );
    assert!(fx.sign_with(&new).await?.is_ok());
    let (_, v) =
        fx.c.call_retry(Method::GET, "/dataplane-token-keys", None)
            .await?;
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{v}");

    // A key that leaked: no overlap, its tokens stop at once, new ones work.
    let (ok, _, err) =
        fx.c.cli(&["dataplane", "token", "rotate-key", "--overlap", "0s"])?;
    anyhow::ensure!(ok, "rotate-key: {err}");
    eventually("the leaked key's token refused", WAIT, refused(new.clone())).await?;
    let newest = token(fx.token("backend").await?)?;
    eventually("a token from the newest key accepted", WAIT, || async {
        fx.sign_with(&newest).await.ok()?.ok()
    })
    .await?;
    // Too long an overlap is refused, naming the field; nothing changes.
    let (s, v) =
        fx.c.call_retry(
            Method::POST,
            "/dataplane-token-keys/rotate",
            Some(&json!({"overlap": "9000h"})),
        )
        .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("overlap"), "{v}");
    let (_, v) =
        fx.c.call_retry(Method::GET, "/dataplane-token-keys", None)
            .await?;
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{v}");
    Ok(())
}
