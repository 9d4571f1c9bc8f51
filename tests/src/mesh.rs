//! A one-zone mesh for sidecar tests: a global control plane node, a zone control plane
//! with a DDS address, and helpers that start demo apps and sidecars (`causeway
//! dataplane`) with their tokens. Everything it starts lives in the cluster's temporary
//! directory and is killed on drop. Also the Dataplane resources those tests register,
//! and readers of the demo apps' answers.
//!
//! Used by `tests/tests/dataplane.rs`, `inspect.rs` and `resilience.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    GlobalCluster, Proc, ZoneCp, admin_metric, admin_ready, eventually, free_addr, plain_http, put,
};

/// How long the helpers wait for a process or a config to come.
pub const WAIT: Duration = Duration::from_secs(30);

/// A global node and a zone `zone-a` serving DDS; mesh `default` with the given spec.
pub struct MeshFixture {
    _keys: tempfile::TempDir,
    pub c: GlobalCluster,
    pub zone: ZoneCp,
    /// Where sidecars reach the zone.
    pub dds: SocketAddr,
    /// The cluster's temporary directory: logs, tokens, Dataplane files.
    pub dir: PathBuf,
}

impl MeshFixture {
    /// Starts the control planes with mesh `default` set to `mesh_spec`, and waits for
    /// the zone's intermediate CA when the mesh has mTLS.
    pub async fn start(mesh_spec: Value) -> anyhow::Result<MeshFixture> {
        // Keys sealed at rest under a seal key given to the node, as in production.
        let keys = tempfile::tempdir()?;
        let key_file = keys.path().join("secrets.key");
        std::fs::write(&key_file, "11".repeat(32))?;
        let key_arg = key_file.display().to_string();
        let c = GlobalCluster::start(
            1,
            &["--kds-heartbeat", "500ms", "--seal-key-file", &key_arg],
        )
        .await?;
        let needs_ca = mesh_spec["mtls"].is_object();
        put(
            &c,
            "/meshes/default",
            &json!({"type": "Mesh", "name": "default", "spec": mesh_spec}),
        )
        .await?;
        let dds = free_addr();
        let zone = ZoneCp::new(
            &c,
            "zone-a",
            c.kds_urls_from(0),
            &["--dds-addr", &dds.to_string(), "--dataplane-grace", "3s"],
        )
        .await?;
        zone.start()?;
        eventually("the zone's mesh", WAIT, || async {
            let s = zone.status().await.ok()?;
            let ca = !needs_ca || s["intermediates"][0]["mesh"] == "default";
            let mesh = zone
                .call(Method::GET, "/meshes/default", None)
                .await
                .is_ok_and(|(s, _)| s == StatusCode::OK);
            (ca && mesh).then_some(())
        })
        .await
        .with_context(|| zone.logs())?;
        let dir = c.tmp.path().to_path_buf();
        Ok(MeshFixture {
            _keys: keys,
            c,
            zone,
            dds,
            dir,
        })
    }

    /// A dataplane token for `service`, written to a file.
    pub async fn token(&self, service: &str) -> anyhow::Result<PathBuf> {
        Ok(self.token_with_id(service).await?.0)
    }

    /// A dataplane token for `service`, written to a file, and its id.
    pub async fn token_with_id(&self, service: &str) -> anyhow::Result<(PathBuf, String)> {
        let (s, v) = self
            .c
            .call_retry(
                Method::POST,
                "/meshes/default/dataplane-token",
                Some(&json!({"service": service})),
            )
            .await?;
        anyhow::ensure!(s == StatusCode::CREATED, "{s} {v}");
        let path = self
            .dir
            .join(format!("{service}-{}.token", free_addr().port()));
        std::fs::write(&path, v["token"].as_str().context("token")?)?;
        Ok((path, v["id"].as_str().context("id")?.to_string()))
    }

    /// A TLS channel to the zone's DDS, as a sidecar opens it.
    pub async fn dds_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let ca_pem = std::fs::read_to_string(self.zone.dir.join("api-ca.pem"))?;
        self.dds_channel_trusting(&ca_pem).await
    }

    /// A TLS channel to the zone's DDS that trusts the CAs of `ca_pem` only.
    pub async fn dds_channel_trusting(
        &self,
        ca_pem: &str,
    ) -> anyhow::Result<tonic::transport::Channel> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("https://{}", self.dds))?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem)),
                )?
                .connect()
                .await?,
        )
    }

    /// Asks the zone for a workload certificate with `token`, as a sidecar renews.
    pub async fn sign_with(
        &self,
        token: &str,
    ) -> anyhow::Result<Result<causeway_api::kds::dds::SignResponse, tonic::Status>> {
        let csr = causeway_pki::generate_csr("any")?;
        let mut client =
            causeway_api::kds::dds::dds_client::DdsClient::new(self.dds_channel().await?);
        Ok(client
            .sign(causeway_api::kds::dds::SignRequest {
                token: token.to_string(),
                csr_pem: csr.csr_pem,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner))
    }

    /// Starts `causeway demo-app` as instance `name` of `service` on `listen` (a TCP
    /// echo with `tcp`).
    pub fn app(
        &self,
        name: &str,
        service: &str,
        listen: SocketAddr,
        tcp: bool,
    ) -> anyhow::Result<Proc> {
        Proc::demo_app(&self.dir, "zone-a", name, service, listen, tcp)
    }

    /// Puts the MeshTrafficPermission `name`: `action` for `from` calling `to`.
    pub async fn permit(
        &self,
        name: &str,
        from: &str,
        to: &str,
        action: &str,
    ) -> anyhow::Result<()> {
        let path = format!("/meshes/default/meshtrafficpermissions/{name}");
        let body = json!({"type": "MeshTrafficPermission", "mesh": "default", "name": name,
               "spec": {"targetRef": {"kind": "MeshService", "name": to},
                        "from": [{"targetRef": {"kind": "MeshService", "name": from},
                                  "default": {"action": action}}]}});
        put(&self.c, &path, &body).await
    }

    /// Starts a sidecar for `dataplane` (a Dataplane resource) once it is ready; returns
    /// it and its admin address.
    pub async fn sidecar(
        &self,
        service: &str,
        dataplane: Value,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        self.sidecar_with(service, dataplane, &[]).await
    }

    /// [`MeshFixture::sidecar`] with more flags.
    pub async fn sidecar_with(
        &self,
        service: &str,
        dataplane: Value,
        extra_args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let token = self.token(service).await?;
        self.sidecar_with_token(dataplane, &token, extra_args).await
    }

    /// [`MeshFixture::sidecar_with`] presenting the token in `token` (a file the sidecar
    /// writes renewals over); the zone's `api-ca.pem` is its `--cp-ca-file` unless
    /// `extra_args` names one.
    pub async fn sidecar_with_token(
        &self,
        dataplane: Value,
        token: &std::path::Path,
        extra_args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let name = dataplane["name"].as_str().context("name")?.to_string();
        let admin = free_addr();
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&dataplane)?)?;
        let zone_ca = self.zone.dir.join("api-ca.pem").display().to_string();
        let ca_args: Vec<String> = if extra_args.contains(&"--cp-ca-file") {
            Vec::new()
        } else {
            vec!["--cp-ca-file".into(), zone_ca]
        };
        let args: Vec<String> = vec![
            "dataplane".into(),
            "--cp".into(),
            format!("https://{}", self.dds),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(ca_args)
            .chain([
                "--token-file".into(),
                token.display().to_string(),
                "--dataplane-file".into(),
                file.display().to_string(),
                "--admin-addr".into(),
                admin.to_string(),
                "--drain-seconds".into(),
                "5".into(),
            ])
            .chain(extra_args.iter().map(|a| a.to_string()))
            .collect();
        let p = Proc::start(&self.dir, &format!("sidecar-{name}"), &args)?;
        admin_ready(&format!("sidecar {name}"), admin, &p).await?;
        Ok((p, admin))
    }

    /// A client TLS config holding a workload certificate of `service` (signed by the
    /// zone over DDS from a CSR, as a sidecar's), offering the ALPN `alpn`, and
    /// accepting any server certificate: for tests that call an inbound directly as
    /// that service's sidecar would.
    pub async fn workload_tls(
        &self,
        service: &str,
        alpn: &[u8],
    ) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let token = std::fs::read_to_string(self.token(service).await?)?;
        let csr = causeway_pki::generate_csr(service)?;
        let signed = causeway_api::kds::dds::dds_client::DdsClient::new(self.dds_channel().await?)
            .sign(causeway_api::kds::dds::SignRequest {
                token,
                csr_pem: csr.csr_pem,
                ..Default::default()
            })
            .await?
            .into_inner();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(crate::AcceptAnyServerForTest(
                provider,
            )))
            .with_client_auth_cert(
                causeway_pki::certs(&signed.cert_chain_pem, "chain")?,
                causeway_pki::key(&csr.key_pem, "key")?,
            )?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(std::sync::Arc::new(tls))
    }

    /// Opens a DDS stream as a sidecar of `service` would (its token), registering
    /// `dataplane` (a Dataplane resource): `Ok` with the stream (the registration holds
    /// while it is kept) once the zone sent a first config, or the status it refused
    /// with.
    pub async fn register_as(
        &self,
        service: &str,
        dataplane: &Value,
    ) -> anyhow::Result<
        Result<tonic::Streaming<causeway_api::kds::dds::ControlMessage>, tonic::Status>,
    > {
        let token = std::fs::read_to_string(self.token(service).await?)?;
        self.register_with(&token, dataplane).await
    }

    /// [`Self::register_as`] with a given token.
    pub async fn register_with(
        &self,
        token: &str,
        dataplane: &Value,
    ) -> anyhow::Result<
        Result<tonic::Streaming<causeway_api::kds::dds::ControlMessage>, tonic::Status>,
    > {
        use causeway_api::kds::dds::{ProxyHello, ProxyMessage, proxy_message};
        let token = token.to_string();
        let ch = self.dds_channel().await?;
        let hello = ProxyMessage {
            msg: Some(proxy_message::Msg::Hello(ProxyHello {
                token,
                dataplane_json: serde_json::to_vec(dataplane)?,
                ..Default::default()
            })),
        };
        // The stream stays open (the sender lives in a task) until the caller drops it.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello).await?;
        tokio::spawn(async move {
            tx.closed().await;
        });
        let mut client = causeway_api::kds::dds::dds_client::DdsClient::new(ch);
        let mut stream = match client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Ok(Err(status)),
        };
        match stream.message().await {
            Ok(Some(_)) => Ok(Ok(stream)),
            Ok(None) => anyhow::bail!("the zone closed the stream without a word"),
            Err(status) => Ok(Err(status)),
        }
    }

    /// A "web" sidecar with one outbound to `service`: the sidecar, its admin address
    /// and the outbound port.
    pub async fn web_calling(&self, service: &str) -> anyhow::Result<(Proc, SocketAddr, u16)> {
        let out = free_addr().port();
        let dp = dataplane(
            "web-1",
            "web",
            free_addr().port(),
            free_addr().port(),
            "http",
            &[(out, service)],
        );
        let (p, admin) = self.sidecar("web", dp).await?;
        Ok((p, admin, out))
    }

    /// backend's demo app (`backend-1`) behind its sidecar, and web's sidecar calling
    /// it, web allowed to: returns once a call goes through both sidecars.
    pub async fn web_calls_backend(&self) -> anyhow::Result<WebCallsBackend> {
        self.permit("web-to-backend", "web", "backend", "Allow")
            .await?;
        let app = free_addr();
        let backend_app = self.app("backend-1", "backend", app, false)?;
        let inbound = free_addr().port();
        let dp = dataplane("backend-1", "backend", inbound, app.port(), "http", &[]);
        let (backend, backend_admin) = self.sidecar("backend", dp).await?;
        let (web, web_admin, out) = self.web_calling("backend").await?;
        eventually("a call through both sidecars", WAIT, || async {
            (answering(out, 1).await? == instances(&["backend-1"])).then_some(())
        })
        .await?;
        Ok(WebCallsBackend {
            procs: vec![backend_app, backend, web],
            web_admin,
            backend_admin,
            out,
            app,
            inbound,
        })
    }

    /// Runs the CLI against the zone's API: see [`ZoneCp::cli`].
    pub fn zone_cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        self.zone.cli(args)
    }
}

/// What [`MeshFixture::web_calls_backend`] started.
pub struct WebCallsBackend {
    /// backend's app and sidecar, web's sidecar.
    pub procs: Vec<Proc>,
    pub web_admin: SocketAddr,
    pub backend_admin: SocketAddr,
    /// web's outbound port to backend.
    pub out: u16,
    /// backend's application address.
    pub app: SocketAddr,
    /// backend's inbound port (mTLS, on 127.0.0.1).
    pub inbound: u16,
}

/// A Dataplane on 127.0.0.1: one inbound (`inbound` in front of the app on `app`,
/// speaking `protocol`) and the given outbounds (`(port, service)`).
pub fn dataplane(
    name: &str,
    service: &str,
    inbound: u16,
    app: u16,
    protocol: &str,
    outbound: &[(u16, &str)],
) -> Value {
    json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": inbound, "servicePort": app, "service": service, "protocol": protocol}],
        "outbound": outbound.iter().map(|(p, s)| json!({"port": p, "service": s})).collect::<Vec<_>>(),
    }})
}

/// A Dataplane on 127.0.0.1 with one HTTP inbound (on a free port, in front of the app
/// on `app`) carrying `tags` (a subset a route or a policy can pick), and no outbounds.
pub fn tagged_dataplane(name: &str, service: &str, app: u16, tags: Value) -> Value {
    json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_addr().port(), "servicePort": app, "service": service,
                     "protocol": "http", "tags": tags}],
    }})
}

/// A set of instance names, to compare with [`answering`].
pub fn instances(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The instances that answer `n` calls through the outbound `out` with a success:
/// the `instance` of a demo app's JSON answer, or the whole body of another app's.
/// `None` when a call cannot be made.
pub async fn answering(out: u16, n: usize) -> Option<BTreeSet<String>> {
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

/// The demo-app instance that answered a call, or an error with the status when it was
/// not a success.
pub async fn answered_by(req: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let r = req.send().await?;
    anyhow::ensure!(r.status().is_success(), "answered {}", r.status());
    let v: Value = r.json().await?;
    v["instance"]
        .as_str()
        .map(String::from)
        .context("an instance in the answer")
}

/// How many of `n` calls through the outbound `out` are not answered with a success.
/// `None` when a call cannot be made.
pub async fn failures(out: u16, n: usize) -> Option<usize> {
    let http = plain_http();
    let mut failed = 0;
    for _ in 0..n {
        let r = http
            .get(format!("http://127.0.0.1:{out}/"))
            .send()
            .await
            .ok()?;
        failed += usize::from(!r.status().is_success());
    }
    Some(failed)
}

/// How many times the sidecar on `admin` has ejected an endpoint of `service` (its
/// circuit breaker's `ejected` events).
pub async fn ejections(http: &reqwest::Client, admin: SocketAddr, service: &str) -> f64 {
    let series =
        format!("causeway_circuit_breaker_events_total{{service=\"{service}\",event=\"ejected\"}}");
    admin_metric(http, admin, &series).await
}

/// Calls to `http://127.0.0.1:PORT/` one after another (10 ms apart) until
/// [`CallsUnderway::stop`], counting those that succeeded and why the others failed:
/// for rotations that must not fail a call.
pub struct CallsUnderway {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl CallsUnderway {
    pub fn start(port: u16) -> CallsUnderway {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let http = plain_http();
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http.get(format!("http://127.0.0.1:{port}/")).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failed)
            }
        });
        CallsUnderway { stop, task }
    }

    /// Stops calling; fails unless calls were made and none failed.
    pub async fn stop_expecting_no_failure(self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self.task.await?;
        anyhow::ensure!(ok > 0, "no call was made");
        anyhow::ensure!(
            failed.is_empty(),
            "{} of {} calls failed: {failed:?}",
            failed.len(),
            ok as usize + failed.len()
        );
        Ok(())
    }
}
