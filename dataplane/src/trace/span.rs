//! A finished span, and how it is written for each backend: OTLP (the official
//! protos, for gRPC and for HTTP) and Zipkin v2 JSON. Attribute names follow
//! OpenTelemetry's HTTP semantic conventions; Causeway's own are `causeway.*`.
//!
//! Pure: no I/O.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};

use super::context::{SpanContext, b3_trace_hex, hex};

/// Which side of a call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An outbound request (this proxy's application calls).
    Client,
    /// An inbound request (this proxy's application is called).
    Server,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Text(String),
    /// A value every span of the proxy (or of a destination) shares: no copy per span.
    Shared(Arc<str>),
    Int(i64),
}

/// What every span of one proxy shares: its resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Origin {
    /// The proxy's own service (`service.name`).
    pub(crate) service: String,
    pub(crate) mesh: String,
    pub(crate) zone: String,
    pub(crate) dataplane: String,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    pub(crate) context: SpanContext,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    /// Tags from MeshTrace (names chosen by the policy).
    pub(crate) tags: Vec<(String, String)>,
    /// The answer was an error (5xx; 4xx too for a client span, as the conventions
    /// say), with its status text.
    pub(crate) error: bool,
}

fn string_value(s: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

fn key_value(key: impl Into<String>, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..KeyValue::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One OTLP export: `spans` under `origin`'s resource.
pub(crate) fn otlp_request(origin: &Origin, spans: &[Span]) -> ExportTraceServiceRequest {
    let spans = spans.iter().map(otlp_span).collect();
    let resource = Resource {
        attributes: vec![
            key_value("service.name", string_value(&origin.service)),
            key_value("causeway.mesh", string_value(&origin.mesh)),
            key_value("causeway.zone", string_value(&origin.zone)),
            key_value("causeway.dataplane", string_value(&origin.dataplane)),
        ],
        ..Resource::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "causeway-dataplane".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn otlp_span(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let start = unix_nanos(s.start);
    let mut attributes: Vec<KeyValue> = s
        .attributes
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Text(t) => string_value(t.clone()),
                Value::Shared(t) => string_value(&**t),
                Value::Int(n) => Some(AnyValue {
                    value: Some(any_value::Value::IntValue(*n)),
                }),
            };
            key_value(*k, value)
        })
        .collect();
    attributes.extend(
        s.tags
            .iter()
            .map(|(k, v)| key_value(k.clone(), string_value(v.clone()))),
    );
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s
            .context
            .parent_span_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        flags: 0x100 | u32::from(s.context.sampled), // "has is_remote" | sampled
        name: s.name.clone(),
        kind: match s.kind {
            Kind::Client => span::SpanKind::Client,
            Kind::Server => span::SpanKind::Server,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + s.duration.as_nanos() as u64,
        attributes,
        status: Some(Status {
            code: if s.error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            ..Status::default()
        }),
        ..Default::default()
    }
}

/// Zipkin v2 JSON (`POST /api/v2/spans`): a list of spans, tags as strings, written
/// straight into `out` (no tree of values: a span is ~20 tags, and building a map of
/// them per span cost more than the request it describes).
pub(crate) fn zipkin_json(origin: &Origin, spans: &[Span], out: &mut Vec<u8>) {
    fn string(out: &mut Vec<u8>, s: &str) {
        serde_json::to_writer(&mut *out, s).expect("a string serializes into a Vec");
    }
    fn field(out: &mut Vec<u8>, key: &str, value: &str) {
        string(out, key);
        out.push(b':');
        string(out, value);
        out.push(b',');
    }
    use std::io::Write as _;
    out.push(b'[');
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let start = s
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        out.push(b'{');
        field(out, "traceId", &b3_trace_hex(&s.context.trace_id));
        field(out, "id", &hex(&s.context.span_id));
        if let Some(p) = &s.context.parent_span_id {
            field(out, "parentId", &hex(p));
        }
        let kind = match s.kind {
            Kind::Client => "CLIENT",
            Kind::Server => "SERVER",
        };
        field(out, "kind", kind);
        field(out, "name", &s.name);
        let _ = write!(
            out,
            "\"timestamp\":{},\"duration\":{},",
            start.as_micros() as u64,
            (s.duration.as_micros() as u64).max(1)
        );
        if s.context.shared {
            out.extend_from_slice(b"\"shared\":true,");
        }
        out.extend_from_slice(b"\"localEndpoint\":{\"serviceName\":");
        string(out, &origin.service);
        out.extend_from_slice(b"},\"tags\":{");
        let mut first = true;
        let mut tag = |out: &mut Vec<u8>, k: &str, v: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            string(out, k);
            out.push(b':');
            string(out, v);
        };
        for (k, v) in &s.attributes {
            match v {
                Value::Text(t) => tag(out, k, t),
                Value::Shared(t) => tag(out, k, t),
                Value::Int(n) => tag(out, k, &n.to_string()),
            }
        }
        for (k, v) in &s.tags {
            tag(out, k, v);
        }
        if s.error {
            tag(out, "error", "true");
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: Kind, parent: Option<[u8; 8]>) -> Span {
        Span {
            context: SpanContext {
                trace_id: [0x4b; 16],
                span_id: [0x01; 8],
                parent_span_id: parent,
                sampled: true,
                shared: false,
            },
            kind,
            name: "GET".into(),
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(3),
            attributes: vec![
                ("http.request.method", Value::Text("GET".into())),
                ("http.response.status_code", Value::Int(503)),
            ],
            tags: vec![("team".into(), "payments".into())],
            error: true,
        }
    }

    fn origin() -> Origin {
        Origin {
            service: "web".into(),
            mesh: "default".into(),
            zone: "zone-a".into(),
            dataplane: "web-1".into(),
        }
    }

    #[test]
    fn an_otlp_span_carries_ids_kind_times_attributes_tags_and_status() {
        let req = otlp_request(&origin(), &[span(Kind::Server, Some([0x02; 8]))]);
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![0x4b; 16]);
        assert_eq!(s.span_id, vec![0x01; 8]);
        assert_eq!(s.parent_span_id, vec![0x02; 8]);
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        let keys: Vec<&str> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["http.request.method", "http.response.status_code", "team"]
        );
        assert_eq!(
            s.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(
            s.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn a_root_otlp_span_has_no_parent() {
        let req = otlp_request(&origin(), &[span(Kind::Client, None)]);
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.kind, span::SpanKind::Client as i32);
    }

    #[test]
    fn a_zipkin_span_is_v2_json_with_string_tags() {
        let mut shared = span(Kind::Server, Some([0x02; 8]));
        shared.context.shared = true;
        let mut out = Vec::new();
        zipkin_json(
            &origin(),
            &[shared.clone(), span(Kind::Client, None)],
            &mut out,
        );
        let got: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(got.as_array().map(Vec::len), Some(2), "{got}");
        assert_eq!(got[1]["kind"], "CLIENT");
        assert!(got[1].get("parentId").is_none() && got[1].get("shared").is_none());
        assert_eq!(
            serde_json::Value::Array(vec![got[0].clone()]),
            serde_json::json!([{
                "traceId": "4b".repeat(16), "id": "01".repeat(8), "parentId": "02".repeat(8),
                "kind": "SERVER", "name": "GET", "timestamp": 1_700_000_000_000_000u64,
                "duration": 3000, "localEndpoint": {"serviceName": "web"}, "shared": true,
                "tags": {"http.request.method": "GET", "http.response.status_code": "503",
                         "team": "payments", "error": "true"}}])
        );
    }
}
