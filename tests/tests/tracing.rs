//! End to end: MeshTrace. A call from web to backend through two real sidecars is
//! traced: web's outbound span (CLIENT) is a child of the caller's traceparent,
//! backend's inbound span (SERVER) a child of web's, and the application sees the
//! inbound span as its parent. Spans go to an OTLP/gRPC receiver built from the
//! official protos, to an in-test HTTP receiver as Zipkin v2 JSON, and to the same
//! receiver as OTLP/HTTP protobuf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use causeway_tests::mesh::{MeshFixture, WAIT, WebCallsBackend};
use causeway_tests::{admin_config, admin_metric, eventually, plain_http, put};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// An OTLP trace receiver: every export it took.
#[derive(Clone, Default)]
struct OtlpReceiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn otlp_receiver() -> anyhow::Result<(std::net::SocketAddr, OtlpReceiver)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = OtlpReceiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, receiver))
}

/// What an HTTP receiver took: (path, content type, body), in order.
type Posts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A small HTTP/1.1 receiver (keep-alive, Content-Length bodies) that answers 202.
async fn http_receiver() -> anyhow::Result<(std::net::SocketAddr, Posts)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let posts = Posts::default();
    let got = posts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        if s.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let content_type = headers.get("content-type").cloned().unwrap_or_default();
                    got.lock().unwrap().push((path, content_type, body));
                    let answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                    if s.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, posts))
}

/// A span as the tests look at it, from OTLP or Zipkin.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    trace_id: String,
    id: String,
    parent: String,
    kind: &'static str,
    attributes: HashMap<String, String>,
    shared: bool,
}

fn otlp_spans(exports: &[ExportTraceServiceRequest]) -> Vec<Seen> {
    let mut out = Vec::new();
    for e in exports {
        for rs in &e.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.clone()?.value? {
                    Any::StringValue(s) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.clone().and_then(|v| v.value) {
                            Some(Any::StringValue(s)) => s,
                            Some(Any::IntValue(n)) => format!("int:{n}"),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                out.push(Seen {
                    service: service.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    kind: if s.kind == SpanKind::Client as i32 {
                        "CLIENT"
                    } else if s.kind == SpanKind::Server as i32 {
                        "SERVER"
                    } else {
                        "OTHER"
                    },
                    attributes,
                    shared: false,
                });
            }
        }
    }
    out
}

fn zipkin_spans(posts: &[(String, String, Vec<u8>)]) -> Vec<Seen> {
    let mut out = Vec::new();
    for (path, _, body) in posts.iter().filter(|(p, ..)| p == "/api/v2/spans") {
        let list: Vec<Value> =
            serde_json::from_slice(body).unwrap_or_else(|e| panic!("{path}: {e}"));
        for s in list {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            out.push(Seen {
                service: s["localEndpoint"]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                trace_id: text("traceId"),
                id: text("id"),
                parent: text("parentId"),
                kind: match s["kind"].as_str() {
                    Some("CLIENT") => "CLIENT",
                    Some("SERVER") => "SERVER",
                    _ => "OTHER",
                },
                attributes: s["tags"]
                    .as_object()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                            .collect()
                    })
                    .unwrap_or_default(),
                shared: s["shared"].as_bool().unwrap_or(false),
            });
        }
    }
    out
}

/// Puts the mesh-wide MeshTrace `default` and waits until both sidecars run it.
async fn trace_with(
    fx: &MeshFixture,
    calls: &WebCallsBackend,
    default: Value,
    backend_type: &str,
) -> anyhow::Result<()> {
    put(
        &fx.c,
        "/meshes/default/meshtraces/tracing",
        &json!({"type": "MeshTrace", "mesh": "default", "name": "tracing",
                "spec": {"targetRef": {"kind": "Mesh"}, "default": default}}),
    )
    .await?;
    let http = plain_http();
    let want = json!(backend_type);
    eventually("both sidecars tracing", WAIT, || async {
        let web = admin_config(&http, calls.web_admin).await?;
        let backend = admin_config(&http, calls.backend_admin).await?;
        let expected = json!(default["sampling"]["overall"].as_f64().unwrap_or(100.0));
        let ok = [web, backend].iter().all(|c| {
            let t = &c["config"]["tracing"];
            t["backend"]["type"] == want && t["sampling"]["overall"] == expected
        });
        ok.then_some(())
    })
    .await
}

/// Calls web's outbound to backend: the traceparent the application received.
async fn call(out: u16, path: &str, traceparent: Option<&str>) -> anyhow::Result<Value> {
    let mut req = plain_http()
        .get(format!("http://127.0.0.1:{out}{path}"))
        .header("x-user", "alice");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await?;
    anyhow::ensure!(r.status() == 200, "{}", r.status());
    Ok(r.json::<Value>().await?["headers"].clone())
}

/// The spans of `trace_id`, once there are `n` of them.
async fn spans_of(
    what: &str,
    trace_id: &str,
    n: usize,
    seen: impl Fn() -> Vec<Seen>,
) -> anyhow::Result<(Seen, Seen)> {
    eventually(what, WAIT, || async {
        let spans: Vec<Seen> = seen()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if spans.len() < n {
            return None;
        }
        assert_eq!(spans.len(), n, "{spans:#?}");
        let client = spans.iter().find(|s| s.kind == "CLIENT")?.clone();
        let server = spans.iter().find(|s| s.kind == "SERVER")?.clone();
        Some((client, server))
    })
    .await
}

/// The parts of a `traceparent`: (trace id, parent id, flags).
fn parts(tp: &Value) -> (String, String, String) {
    let tp = tp
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent: {tp}"));
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A call in the caller's trace gets web's CLIENT span (child of the caller's span)
/// and backend's SERVER span (child of web's), with OpenTelemetry's HTTP attributes,
/// the mesh, zone and SPIFFE ids and the policy's tags; the application sees the
/// SERVER span as its parent. A call without a traceparent starts a new trace.
/// Each sidecar counts what it exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_gets_a_client_and_a_server_span_in_the_callers_trace_over_otlp()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let calls = fx.web_calls_backend().await?;
    let (otlp, receiver) = otlp_receiver().await?;
    trace_with(
        &fx,
        &calls,
        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": otlp.to_string()}}],
               "tags": [{"name": "team", "literal": "payments"},
                        {"name": "user", "header": {"name": "x-user"}},
                        {"name": "tenant", "header": {"name": "x-tenant", "default": "none"}}]}),
        "openTelemetry",
    )
    .await?;
    let seen = || otlp_spans(&receiver.0.lock().unwrap());

    let headers = call(
        calls.out,
        "/items?x=1",
        Some(&format!("00-{TRACE}-{CALLER_SPAN}-01")),
    )
    .await?;
    let (client, server) = spans_of("both spans of the call", TRACE, 2, seen).await?;
    assert_eq!(client.service, "web");
    assert_eq!(server.service, "backend");
    assert_eq!(client.parent, CALLER_SPAN, "{client:#?}");
    assert_eq!(server.parent, client.id, "{server:#?}");
    assert_ne!(server.id, client.id);
    // The application's parent is backend's inbound span.
    assert_eq!(
        parts(&headers["traceparent"]),
        (TRACE.into(), server.id.clone(), "01".into())
    );
    let attr = |s: &Seen, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    for s in [&client, &server] {
        assert_eq!(attr(s, "http.request.method"), "GET", "{s:#?}");
        assert_eq!(attr(s, "url.path"), "/items");
        assert_eq!(attr(s, "url.query"), "x=1");
        assert_eq!(attr(s, "http.response.status_code"), "int:200");
        assert_eq!(attr(s, "network.peer.address"), "127.0.0.1");
        assert_eq!(attr(s, "causeway.mesh"), "default");
        assert_eq!(attr(s, "causeway.zone"), "zone-a");
        assert_eq!(attr(s, "team"), "payments");
        assert_eq!(attr(s, "user"), "alice");
        assert_eq!(attr(s, "tenant"), "none");
    }
    assert_eq!(attr(&client, "causeway.service"), "backend");
    assert_eq!(attr(&client, "causeway.spiffe_id"), "spiffe://default/web");
    assert_eq!(
        attr(&client, "causeway.peer.spiffe_id"),
        "spiffe://default/backend"
    );
    assert_eq!(attr(&server, "causeway.service"), "backend");
    assert_eq!(
        attr(&server, "causeway.spiffe_id"),
        "spiffe://default/backend"
    );
    // The caller's identity, from its certificate.
    assert_eq!(
        attr(&server, "causeway.peer.spiffe_id"),
        "spiffe://default/web"
    );
    assert_eq!(attr(&server, "network.protocol.version"), "2");

    // No traceparent: web starts a trace, and backend's span joins it.
    let headers = call(calls.out, "/new", None).await?;
    let (trace, parent, flags) = parts(&headers["traceparent"]);
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "01");
    let (client, server) = spans_of("the new trace's spans", &trace, 2, seen).await?;
    assert_eq!(client.parent, "", "a root span: {client:#?}");
    assert_eq!(server.parent, client.id);
    assert_eq!(parent, server.id);

    let http = plain_http();
    let exported = r#"causeway_trace_spans_exported_total{backend="open_telemetry"}"#;
    eventually("spans counted", WAIT, || async {
        let counted = admin_metric(&http, calls.web_admin, exported).await >= 2.0
            && admin_metric(&http, calls.backend_admin, exported).await >= 2.0;
        counted.then_some(())
    })
    .await?;
    Ok(())
}

/// Sampling 0%: a call that starts here is not traced, and says so to the next hops
/// (flags 00), which follow; a caller's sampled decision is still respected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_emits_no_spans_and_a_callers_decision_is_respected() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let calls = fx.web_calls_backend().await?;
    let (otlp, receiver) = otlp_receiver().await?;
    trace_with(
        &fx,
        &calls,
        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": otlp.to_string()}}],
               "sampling": {"overall": 0}}),
        "openTelemetry",
    )
    .await?;
    let mut unsampled = Vec::new();
    for _ in 0..10 {
        let headers = call(calls.out, "/unsampled", None).await?;
        let (trace, _, flags) = parts(&headers["traceparent"]);
        assert_eq!(flags, "00");
        unsampled.push(trace);
    }
    // A caller that sampled: traced whatever the rate. Its spans come after the
    // others would have (same workers, in order), so none of those means none sent.
    call(
        calls.out,
        "/sampled",
        Some(&format!("00-{TRACE}-{CALLER_SPAN}-01")),
    )
    .await?;
    let seen = || otlp_spans(&receiver.0.lock().unwrap());
    spans_of("the sampled call's spans", TRACE, 2, seen).await?;
    let all = seen();
    assert!(
        all.iter().all(|s| !unsampled.contains(&s.trace_id)),
        "{all:#?}"
    );
    assert_eq!(all.len(), 2, "{all:#?}");
    Ok(())
}

/// Zipkin: v2 JSON POSTed to the collector's URL, B3 headers read and written next
/// to W3C's, and the server span sharing the client's id (Zipkin's default shared
/// span context). Then OTLP over HTTP: the same spans as protobuf POSTed to
/// `/v1/traces`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_json_and_otlp_over_http_get_the_spans() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let calls = fx.web_calls_backend().await?;
    let (collector, posts) = http_receiver().await?;
    trace_with(
        &fx,
        &calls,
        json!({"backends": [{"type": "Zipkin", "zipkin": {"url": format!("http://{collector}/api/v2/spans")}}],
               "propagation": ["W3C", "B3"]}),
        "zipkin",
    )
    .await?;
    let headers = call(
        calls.out,
        "/zipkin",
        Some(&format!("00-{TRACE}-{CALLER_SPAN}-01")),
    )
    .await?;
    let seen = || zipkin_spans(&posts.lock().unwrap());
    let (client, server) = spans_of("both Zipkin spans", TRACE, 2, seen).await?;
    assert_eq!(client.parent, CALLER_SPAN, "{client:#?}");
    assert_eq!(server.id, client.id, "shared: {server:#?}");
    assert!(server.shared && !client.shared);
    assert_eq!(client.service, "web");
    assert_eq!(server.service, "backend");
    assert_eq!(server.attributes["http.response.status_code"], "200");
    assert_eq!(
        server.attributes["causeway.peer.spiffe_id"],
        "spiffe://default/web"
    );
    assert_eq!(parts(&headers["traceparent"]).1, server.id);
    assert_eq!(headers["x-b3-traceid"], TRACE);
    assert_eq!(headers["x-b3-spanid"], server.id.as_str());
    assert_eq!(headers["x-b3-sampled"], "1");
    assert!(
        posts
            .lock()
            .unwrap()
            .iter()
            .all(|(_, ct, _)| ct == "application/json")
    );

    // OTLP/HTTP: an OpenTelemetry endpoint with a path.
    trace_with(
        &fx,
        &calls,
        json!({"backends": [{"type": "OpenTelemetry",
                             "openTelemetry": {"endpoint": format!("http://{collector}/v1/traces")}}]}),
        "openTelemetry",
    )
    .await?;
    let trace = "11112222333344445555666677778888";
    call(
        calls.out,
        "/otlp-http",
        Some(&format!("00-{trace}-{CALLER_SPAN}-01")),
    )
    .await?;
    let seen = || {
        let exports: Vec<ExportTraceServiceRequest> = posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ct, _)| p == "/v1/traces" && ct == "application/x-protobuf")
            .map(|(_, _, body)| {
                ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf")
            })
            .collect();
        otlp_spans(&exports)
    };
    let (client, server) = spans_of("both OTLP/HTTP spans", trace, 2, seen).await?;
    assert_eq!(server.parent, client.id);
    assert_eq!(client.parent, CALLER_SPAN);
    Ok(())
}

/// A backend nobody listens on costs no request: every call is answered, and the
/// spans that could not go are counted as dropped, none as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_away_costs_no_request_and_drops_are_counted() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let calls = fx.web_calls_backend().await?;
    let nobody = causeway_tests::free_addr();
    trace_with(
        &fx,
        &calls,
        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": nobody.to_string()}}]}),
        "openTelemetry",
    )
    .await?;
    for _ in 0..20 {
        call(calls.out, "/", None).await?;
    }
    let http = plain_http();
    let dropped = r#"causeway_trace_spans_dropped_total{backend="open_telemetry"}"#;
    let exported = r#"causeway_trace_spans_exported_total{backend="open_telemetry"}"#;
    eventually("the spans dropped, counted", WAIT, || async {
        (admin_metric(&http, calls.web_admin, dropped).await >= 20.0).then_some(())
    })
    .await?;
    assert_eq!(admin_metric(&http, calls.web_admin, exported).await, 0.0);
    Ok(())
}
