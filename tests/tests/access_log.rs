//! End to end: MeshAccessLog. Real sidecars log real calls to a file, a TCP collector
//! (a listener in the test) and an OpenTelemetry collector (an OTLP/gRPC receiver built
//! from the official protos); a collector that is away costs no request.

use std::sync::{Arc, Mutex};

use causeway_tests::mesh::{MeshFixture, WAIT, WebCallsBackend, dataplane};
use causeway_tests::{admin_config, admin_metric, eventually, free_addr, plain_http, put};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

/// Lines a TCP collector received, from any connection.
type Lines = Arc<Mutex<Vec<String>>>;

/// A TCP collector on a free port: every line it reads.
async fn tcp_collector() -> anyhow::Result<(std::net::SocketAddr, Lines)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let lines = Lines::default();
    let got = lines.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(s).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    got.lock().unwrap().push(line);
                }
            });
        }
    });
    Ok((addr, lines))
}

/// An OTLP logs receiver: every export it took.
#[derive(Clone, Default)]
struct OtlpReceiver(Arc<Mutex<Vec<ExportLogsServiceRequest>>>);

#[tonic::async_trait]
impl LogsService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

async fn otlp_receiver() -> anyhow::Result<(std::net::SocketAddr, OtlpReceiver)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = OtlpReceiver::default();
    let service = LogsServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, receiver))
}

/// A call from web to backend is logged by both sidecars with what MeshAccessLog's
/// policies ask: backend's inbound, for calls from web, as JSON to a file (typed
/// fields: the caller's service, zone and SPIFFE id from its certificate, the
/// application's address, bytes, the W3C trace id) and as a plain line to a TCP
/// collector; web's outbound to backend in the built-in line to a file and as
/// OpenTelemetry log records (the line as body, template attributes, the trace id).
/// Each sidecar counts what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_logged_to_a_file_a_tcp_collector_and_opentelemetry() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs,
        web_admin,
        backend_admin,
        out,
        app,
        ..
    } = fx.web_calls_backend().await?;
    let (collector, lines) = tcp_collector().await?;
    let (otlp, receiver) = otlp_receiver().await?;
    let inbound_file = fx.dir.join("backend-inbound.json");
    let outbound_file = fx.dir.join("web-outbound.log");
    put(&fx.c, "/meshes/default/meshaccesslogs/backend-callers", &json!({
        "type": "MeshAccessLog", "mesh": "default", "name": "backend-callers",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                           "default": {"backends": [
                               {"type": "File", "file": {"path": inbound_file, "format": {"type": "Json", "json": [
                                   {"key": "direction", "value": "%KUMA_TRAFFIC_DIRECTION%"},
                                   {"key": "method", "value": "%REQ(:METHOD)%"},
                                   {"key": "path", "value": "%REQ(:PATH)%"},
                                   {"key": "status", "value": "%RESPONSE_CODE%"},
                                   {"key": "source", "value": "%KUMA_SOURCE_SERVICE%"},
                                   {"key": "sourceZone", "value": "%CAUSEWAY_SOURCE_ZONE%"},
                                   {"key": "peer", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
                                   {"key": "upstream", "value": "%UPSTREAM_HOST%"},
                                   {"key": "received", "value": "%BYTES_RECEIVED%"},
                                   {"key": "sent", "value": "%BYTES_SENT%"},
                                   {"key": "trace", "value": "%TRACE_ID%"},
                                   {"key": "route", "value": "%ROUTE_NAME%"}]}}},
                               {"type": "Tcp", "tcp": {"address": collector.to_string(), "format": {"type": "Plain",
                                   "plain": "%KUMA_TRAFFIC_DIRECTION% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE%"}}}]}}]}})).await?;
    put(&fx.c, "/meshes/default/meshaccesslogs/web-to-backend", &json!({
        "type": "MeshAccessLog", "mesh": "default", "name": "web-to-backend",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                         "default": {"backends": [
                             {"type": "File", "file": {"path": outbound_file}},
                             {"type": "OpenTelemetry", "openTelemetry": {"endpoint": otlp.to_string(),
                                 "attributes": [{"key": "status", "value": "%RESPONSE_CODE%"},
                                                {"key": "pair", "value": "%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE%"}]}}]}}]}})).await?;
    let http = plain_http();
    eventually("both sidecars configured to log", WAIT, || async {
        let backend = admin_config(&http, backend_admin).await?;
        let web = admin_config(&http, web_admin).await?;
        let inbound = backend["config"]["inbounds"][0]["accessLogs"]
            .as_array()?
            .len();
        let outbound = web["config"]["outbounds"][0]["accessLog"].as_array()?.len();
        (inbound == 1 && outbound == 2).then_some(())
    })
    .await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .post(format!("http://127.0.0.1:{out}/items?x=1"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("hello")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let answer_len = r.bytes().await?.len() as u64;

    // backend's inbound, as JSON to a file.
    let entry: Value = eventually("backend's entry in its file", WAIT, || async {
        let text = std::fs::read_to_string(&inbound_file).ok()?;
        let line = text.lines().find(|l| l.contains("/items?x=1"))?;
        serde_json::from_str(line).ok()
    })
    .await?;
    assert_eq!(
        entry,
        json!({"direction": "INBOUND", "method": "POST", "path": "/items?x=1", "status": 200,
               "source": "web", "sourceZone": "zone-a", "peer": "spiffe://default/web",
               "upstream": app.to_string(), "received": 5, "sent": answer_len,
               "trace": trace, "route": null}),
        "{entry}"
    );
    // ... and as a line to the TCP collector.
    eventually("backend's line at the TCP collector", WAIT, || async {
        let got = lines.lock().unwrap().clone();
        got.contains(&"INBOUND POST /items?x=1 200 web->backend".to_string())
            .then_some(())
    })
    .await?;
    // web's outbound, in the built-in line to a file.
    let line = eventually("web's entry in its file", WAIT, || async {
        let text = std::fs::read_to_string(&outbound_file).ok()?;
        text.lines()
            .find(|l| l.contains("/items?x=1"))
            .map(str::to_owned)
    })
    .await?;
    for part in [
        " default OUTBOUND \"POST /items?x=1 HTTP/1.1\" 200 - - 5 ",
        "\"web\" \"backend\" \"zone-a\" \"zone-a\" \"127.0.0.1\"",
        &format!("\"{trace}\""),
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    // ... and as an OpenTelemetry log record.
    let (record, resource) = eventually("web's record at the OTLP receiver", WAIT, || async {
        let exports = receiver.0.lock().unwrap().clone();
        exports.iter().find_map(|e| {
            let rl = e.resource_logs.first()?;
            let record = rl.scope_logs.first()?.log_records.iter().find(|r| {
                matches!(&r.body.as_ref().and_then(|b| b.value.clone()), Some(Any::StringValue(s)) if s.contains("/items?x=1"))
            })?;
            Some((record.clone(), rl.resource.clone()?))
        })
    })
    .await?;
    let attribute = |key: &str| {
        record
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    };
    assert_eq!(attribute("status"), Some(Any::IntValue(200)));
    assert_eq!(
        attribute("pair"),
        Some(Any::StringValue("web->backend".into()))
    );
    assert_eq!(hex::encode(&record.trace_id), trace);
    let service_name = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.clone()?.value);
    assert_eq!(service_name, Some(Any::StringValue("web".into())));

    // What each sidecar wrote, counted.
    let backend_file = r#"causeway_access_log_entries_total{backend="file"}"#;
    let backend_tcp = r#"causeway_access_log_entries_total{backend="tcp"}"#;
    let web_otlp = r#"causeway_access_log_entries_total{backend="open_telemetry"}"#;
    eventually("entries counted", WAIT, || async {
        let counted = admin_metric(&http, backend_admin, backend_file).await >= 1.0
            && admin_metric(&http, backend_admin, backend_tcp).await >= 1.0
            && admin_metric(&http, web_admin, web_otlp).await >= 1.0;
        counted.then_some(())
    })
    .await?;
    Ok(())
}

/// A TCP collector that nobody listens on costs no request: every call is answered,
/// and the entries that could not go are counted as dropped. A TCP connection gets an
/// entry of its own (the built-in TCP line: bytes each way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_away_costs_no_request_and_drops_are_counted() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs,
        web_admin,
        out,
        ..
    } = fx.web_calls_backend().await?;
    let nobody = free_addr();
    put(&fx.c, "/meshes/default/meshaccesslogs/web-to-backend", &json!({
        "type": "MeshAccessLog", "mesh": "default", "name": "web-to-backend",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                         "default": {"backends": [{"type": "Tcp", "tcp": {"address": nobody.to_string()}}]}}]}})).await?;
    let http = plain_http();
    eventually("web configured to log", WAIT, || async {
        let web = admin_config(&http, web_admin).await?;
        (web["config"]["outbounds"][0]["accessLog"].as_array()?.len() == 1).then_some(())
    })
    .await?;
    for _ in 0..50 {
        let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
        assert_eq!(r.status(), 200);
    }
    let dropped = r#"causeway_access_log_dropped_total{backend="tcp"}"#;
    let written = r#"causeway_access_log_entries_total{backend="tcp"}"#;
    eventually("the entries dropped, counted", WAIT, || async {
        (admin_metric(&http, web_admin, dropped).await >= 50.0).then_some(())
    })
    .await?;
    assert_eq!(admin_metric(&http, web_admin, written).await, 0.0);

    // A TCP destination: its connection's entry.
    let db_app = free_addr();
    let _db_app = fx.app("db-1", "db", db_app, true)?;
    fx.permit("web-to-db", "web", "db", "Allow").await?;
    let dp = dataplane("db-1", "db", free_addr().port(), db_app.port(), "tcp", &[]);
    let (_db, _) = fx.sidecar("db", dp).await?;
    let db_out = free_addr().port();
    let dp = dataplane(
        "web-2",
        "web",
        free_addr().port(),
        free_addr().port(),
        "http",
        &[(db_out, "db")],
    );
    let (_web2, _) = fx.sidecar("web", dp).await?;
    let tcp_file = fx.dir.join("web-db.log");
    put(&fx.c, "/meshes/default/meshaccesslogs/web-to-db", &json!({
        "type": "MeshAccessLog", "mesh": "default", "name": "web-to-db",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                         "default": {"backends": [{"type": "File", "file": {"path": tcp_file}}]}}]}})).await?;
    let line = eventually("a TCP connection's entry", WAIT, || async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", db_out))
            .await
            .ok()?;
        s.write_all(b"hello").await.ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        drop(s);
        let text = std::fs::read_to_string(&tcp_file).ok()?;
        text.lines().find(|l| l.contains("(db)")).map(str::to_owned)
    })
    .await?;
    assert!(
        line.contains("(web)->") && line.contains("sent 5 bytes, received: 5 bytes"),
        "{line}"
    );
    Ok(())
}
