use causeway_api::Propagation;
use causeway_api::proxy_config::{SpanTag, TraceSampling};

use super::*;

/// The outbound the client spans go through.
const OUTBOUND: OutboundKey = OutboundKey {
    vip: None,
    port: 10001,
};

fn meta(backend: TraceBackendConfig, overall: f64) -> Meta {
    Meta {
        conf: Tracing {
            backend,
            propagation: vec![Propagation::W3c],
            sampling: TraceSampling {
                overall,
                client: 100.0,
                random: 100.0,
            },
            tags: vec![
                SpanTag {
                    name: "team".into(),
                    literal: Some("payments".into()),
                    header: None,
                    default: None,
                },
                SpanTag {
                    name: "user".into(),
                    literal: None,
                    header: Some("x-user".into()),
                    default: None,
                },
                SpanTag {
                    name: "tenant".into(),
                    literal: None,
                    header: Some("x-tenant".into()),
                    default: Some("none".into()),
                },
                SpanTag {
                    name: "absent".into(),
                    literal: None,
                    header: Some("x-absent".into()),
                    default: None,
                },
            ],
        },
        mesh: "default".into(),
        zone: "zone-a".into(),
        identity: Some("spiffe://default/web".into()),
        own_service: "web".into(),
        outbounds: HashMap::from([(
            OUTBOUND,
            ("backend".into(), Some("spiffe://default/backend".into())),
        )]),
    }
}

fn otel() -> TraceBackendConfig {
    TraceBackendConfig::OpenTelemetry {
        endpoint: "collector:4317".into(),
    }
}

fn draws() -> Draws {
    Draws {
        sampling: 50.0,
        trace_id: [7; 16],
        span_id: [9; 8],
    }
}

fn request(headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::get("/items?x=1").header("host", "127.0.0.1:10001");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn outbound() -> Hop<'static> {
    Hop {
        kind: Kind::Client,
        outbound: Some(OUTBOUND),
        remote: Some("127.0.0.1:40000".parse().unwrap()),
        peer: None,
    }
}

#[test]
fn an_outbound_span_has_the_http_attributes_ids_and_tags() {
    let mut req = request(&[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-user", "alice"),
        ("user-agent", "curl/8"),
    ]);
    let span = begin(&meta(otel(), 100.0), &mut req, &outbound(), draws()).expect("sampled");
    assert_eq!(
        req.headers()["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0909090909090909-01"
    );
    assert_eq!(span.kind, Kind::Client);
    assert_eq!(span.name, "GET");
    assert_eq!(span.context.span_id, [9; 8]);
    assert_eq!(
        context::hex(&span.context.parent_span_id.unwrap()),
        "00f067aa0ba902b7"
    );
    let text = |s: &str| Value::Text(s.into());
    let shared = |s: &str| Value::Shared(s.into());
    assert_eq!(
        span.attributes,
        vec![
            ("http.request.method", text("GET")),
            ("url.path", text("/items")),
            ("url.scheme", text("http")),
            ("url.query", text("x=1")),
            ("server.address", text("127.0.0.1")),
            ("server.port", Value::Int(10001)),
            ("network.peer.address", text("127.0.0.1")),
            ("network.peer.port", Value::Int(40000)),
            ("network.protocol.version", text("1.1")),
            ("user_agent.original", text("curl/8")),
            ("causeway.mesh", shared("default")),
            ("causeway.zone", shared("zone-a")),
            ("causeway.service", shared("backend")),
            ("causeway.spiffe_id", shared("spiffe://default/web")),
            (
                "causeway.peer.spiffe_id",
                shared("spiffe://default/backend")
            ),
        ]
    );
    // A literal; a header; a header's default; an absent header without one: no tag.
    assert_eq!(
        span.tags,
        vec![
            ("team".to_owned(), "payments".to_owned()),
            ("user".to_owned(), "alice".to_owned()),
            ("tenant".to_owned(), "none".to_owned()),
        ]
    );
}

#[test]
fn an_inbound_span_names_the_caller_from_its_certificate() {
    let mut req = request(&[]);
    let hop = Hop {
        kind: Kind::Server,
        outbound: None,
        remote: None,
        peer: Some("spiffe://default/frontend"),
    };
    let span = begin(&meta(otel(), 100.0), &mut req, &hop, draws()).expect("sampled");
    assert_eq!(span.kind, Kind::Server);
    let attr = |k: &str| span.attributes.iter().find(|(n, _)| *n == k).cloned();
    assert_eq!(
        attr("causeway.peer.spiffe_id").map(|a| a.1),
        Some(Value::Text("spiffe://default/frontend".into()))
    );
    assert_eq!(
        attr("causeway.service").map(|a| a.1),
        Some(Value::Shared("web".into()))
    );
    // A new trace: a root span, 128-bit for OpenTelemetry.
    assert_eq!(span.context.parent_span_id, None);
    assert_eq!(span.context.trace_id, [7; 16]);
}

#[test]
fn an_unsampled_request_carries_its_decision_and_makes_no_span() {
    let mut req = request(&[]);
    let got = begin(&meta(otel(), 10.0), &mut req, &outbound(), draws());
    assert!(got.is_none());
    assert_eq!(
        req.headers()["traceparent"],
        "00-07070707070707070707070707070707-0909090909090909-00"
    );
}

#[test]
fn a_zipkin_server_span_shares_the_callers_id_and_new_traces_are_64_bit() {
    let zipkin = |shared| TraceBackendConfig::Zipkin {
        url: "http://zipkin:9411/api/v2/spans".into(),
        trace_id128bit: false,
        shared_span_context: shared,
    };
    let hop = Hop {
        kind: Kind::Server,
        outbound: None,
        remote: None,
        peer: None,
    };
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = request(&[("traceparent", caller)]);
    let span = begin(&meta(zipkin(true), 100.0), &mut req, &hop, draws()).unwrap();
    assert!(span.context.shared);
    assert_eq!(context::hex(&span.context.span_id), "00f067aa0ba902b7");
    assert_eq!(req.headers()["traceparent"], caller);
    let mut req = request(&[("traceparent", caller)]);
    let span = begin(&meta(zipkin(false), 100.0), &mut req, &hop, draws()).unwrap();
    assert!(!span.context.shared);
    assert_eq!(span.context.span_id, [9; 8]);
    // The client side never shares.
    let mut req = request(&[]);
    let span = begin(&meta(zipkin(true), 100.0), &mut req, &outbound(), draws()).unwrap();
    assert!(!span.context.shared);
    assert_eq!(
        context::hex(&span.context.trace_id),
        "00000000000000000707070707070707"
    );
}
