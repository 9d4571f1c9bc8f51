//! `MeshTrace`: distributed tracing: backend, propagation, sampling and span tags.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::percent::Percent;
use crate::spec::{Errors, Spec, at, check_header_name, idx};
use crate::target_ref::{TOP_KINDS, TargetRef};

/// The spec of a `MeshTrace`. It applies to whole proxies, so it has a top-level
/// `default` instead of `to[]`/`from[]`.
///
/// ```yaml
/// type: MeshTrace
/// mesh: default
/// name: tracing
/// spec:
///   targetRef: {kind: Mesh}
///   default:
///     backends:
///       - type: OpenTelemetry
///         openTelemetry: {endpoint: "otel-collector.observability:4317"}
///     propagation: [W3C]
///     sampling: {overall: 10, client: 100}
///     tags:
///       - {name: team, literal: payments}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTraceSpec {
    /// The proxies that trace. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The tracing configuration.
    pub default: TraceConf,
}

/// Tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TraceConf {
    /// Where spans go; at most one backend. An empty list turns tracing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<TraceBackend>>,
    /// Trace context headers read and written, in order of preference. Built-in
    /// default `[W3C]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Vec<Propagation>>,
    /// Which requests are traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Tags added to every span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<TraceTag>>,
}

/// A tracing backend, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceBackend {
    /// `Zipkin` or `OpenTelemetry`.
    #[serde(rename = "type")]
    pub kind: TraceBackendType,
    /// For `Zipkin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinBackend>,
    /// For `OpenTelemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OtelTraceBackend>,
    /// Kuma's Datadog backend settings. Refused: Causeway has no Datadog backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<serde_json::Value>,
}

/// Tracing backend types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TraceBackendType {
    /// A Zipkin collector (HTTP).
    Zipkin,
    /// An OpenTelemetry collector (OTLP/gRPC or OTLP/HTTP).
    OpenTelemetry,
    /// Kuma's Datadog agent backend. Refused: Causeway has no Datadog tracing backend.
    Datadog,
}

/// A Zipkin collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZipkinBackend {
    /// The collector URL, `http://host:port/path`, e.g.
    /// `http://zipkin.observability:9411/api/v2/spans`. Spans are POSTed to it as
    /// Zipkin v2 JSON. `https://` is refused: the sidecar has no TLS client for
    /// collectors yet.
    pub url: String,
    /// Use 128-bit trace ids. Built-in default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id128bit: Option<bool>,
    /// Client and server share span ids. Built-in default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
}

/// An OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelTraceBackend {
    /// The collector: `host:port` (or `http://host:port`) for OTLP/gRPC, or an
    /// `http://host:port/path` URL (`.../v1/traces`) for OTLP/HTTP (protobuf).
    /// Required. `https://` is refused: no TLS client for collectors yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Kuma 2.14's reference to a MeshOpenTelemetryBackend. Refused: Causeway has no
    /// MeshOpenTelemetryBackend yet; give the collector as `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<serde_json::Value>,
}

/// Trace context formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Propagation {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    #[serde(rename = "W3C")]
    W3c,
    /// Zipkin B3 (`b3`, `x-b3-traceid`, ...).
    B3,
}

/// Sampling rates, 0 to 100 percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct Sampling {
    /// Requests that start a trace here. Built-in default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<Percent>,
    /// Requests whose caller forced tracing (`x-client-trace-id`). Built-in default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Percent>,
    /// Requests sampled at random after the others. Built-in default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Percent>,
}

/// A span tag: a literal or a request header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceTag {
    /// The tag name.
    pub name: String,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// The value of a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
}

/// A tag taken from a request header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderTag {
    /// The header name.
    pub name: String,
    /// The value when the header is absent. Absent: no tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl Spec for MeshTraceSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        let path = "spec.default";
        let d = &self.default;
        if let Some(backends) = &d.backends {
            if backends.len() > 1 {
                errors.push(
                    at(path, "backends"),
                    format!("at most one backend is supported (got {})", backends.len()),
                );
            }
            for (i, b) in backends.iter().enumerate() {
                let path = idx(&at(path, "backends"), i);
                if b.kind == TraceBackendType::Datadog || b.datadog.is_some() {
                    errors.push(
                        at(&path, "type"),
                        "Datadog: Causeway has no Datadog tracing backend; send spans with OpenTelemetry (the Datadog agent accepts OTLP) or Zipkin",
                    );
                    continue;
                }
                match (b.kind, &b.zipkin, &b.open_telemetry) {
                    (TraceBackendType::Zipkin, None, _) => {
                        errors.push(at(&path, "zipkin"), "is required for type Zipkin")
                    }
                    (TraceBackendType::OpenTelemetry, _, None) => {
                        errors.push(
                            at(&path, "openTelemetry"),
                            "is required for type OpenTelemetry",
                        );
                    }
                    _ => {}
                }
                if b.kind != TraceBackendType::Zipkin && b.zipkin.is_some() {
                    errors.push(
                        at(&path, "zipkin"),
                        format!("must not be set for type {:?}", b.kind),
                    );
                }
                if b.kind != TraceBackendType::OpenTelemetry && b.open_telemetry.is_some() {
                    errors.push(
                        at(&path, "openTelemetry"),
                        format!("must not be set for type {:?}", b.kind),
                    );
                }
                if let Some(z) = &b.zipkin {
                    errors.check(at(&at(&path, "zipkin"), "url"), check_http_url(&z.url));
                }
                if let Some(o) = &b.open_telemetry
                    && let Some(url) = o.endpoint.as_deref().filter(|e| e.contains("://"))
                {
                    // OTLP over HTTP (`http://collector:4318/v1/traces`), or gRPC to a
                    // URL without a path.
                    errors.check(
                        at(&at(&path, "openTelemetry"), "endpoint"),
                        check_http_url(url),
                    );
                } else if let Some(o) = &b.open_telemetry {
                    crate::policies::check_otel_endpoint(
                        errors,
                        &at(&path, "openTelemetry"),
                        &o.endpoint,
                        &o.backend_ref,
                    );
                }
            }
        }
        if let Some(p) = &d.propagation
            && p.is_empty()
        {
            errors.push(
                at(path, "propagation"),
                "must list at least one format; leave it out for [W3C]",
            );
        }
        if let Some(s) = &d.sampling {
            let path = at(path, "sampling");
            for (field, value) in [
                ("overall", s.overall),
                ("client", s.client),
                ("random", s.random),
            ] {
                errors.percent(at(&path, field), value, 0.0, 100.0);
            }
        }
        for (i, t) in d.tags.iter().flatten().enumerate() {
            let path = idx(&at(path, "tags"), i);
            errors.non_empty(at(&path, "name"), &t.name);
            match (&t.literal, &t.header) {
                (Some(_), Some(_)) => errors.push(path, "set literal or header, not both"),
                (None, None) => errors.push(path, "needs literal or header"),
                (None, Some(h)) => {
                    errors.check(at(&at(&path, "header"), "name"), check_header_name(&h.name))
                }
                (Some(_), None) => {}
            }
        }
    }
}

/// A collector URL the sidecar can send to: `http://host:port[/path]`. `https://` is
/// refused with the reason (the sidecar has no TLS client for collectors yet), not
/// accepted and ignored.
fn check_http_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https:// collectors are not supported yet (the sidecar sends spans over plain HTTP); use http:// to a collector or agent on a trusted network"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("must be an http:// URL (got {url:?})"));
    };
    let host_port = rest.split_once('/').map_or(rest, |(h, _)| h);
    crate::spec::check_host_port(host_port).map_err(|e| format!("{url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<MeshTraceSpec>(
            &[
                json!({"targetRef": {"kind": "Mesh"}, "default": {
                    "backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector.observability:4317"}}],
                    "propagation": ["W3C", "B3"], "sampling": {"overall": 10, "client": "100%", "random": 50.5},
                    "tags": [{"name": "team", "literal": "payments"}, {"name": "user", "header": {"name": "x-user", "default": "anonymous"}}]}}),
                json!({"default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans", "traceId128bit": true}}]}}),
            ],
            &[
                (
                    json!({"default": {"sampling": {"overall": 101}}}),
                    &[(
                        "spec.default.sampling.overall",
                        "must be between 0% and 100% (got 101%)",
                    )],
                ),
                (
                    json!({"default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "zipkin:9411"}}, {"type": "OpenTelemetry"}]}}),
                    &[
                        (
                            "spec.default.backends",
                            "at most one backend is supported (got 2)",
                        ),
                        (
                            "spec.default.backends[0].zipkin.url",
                            "must be an http:// URL",
                        ),
                        (
                            "spec.default.backends[1].openTelemetry",
                            "is required for type OpenTelemetry",
                        ),
                    ],
                ),
                (
                    json!({"default": {"tags": [{"name": "a"}, {"name": "b", "literal": "x", "header": {"name": "y"}}]}}),
                    &[
                        ("spec.default.tags[0]", "needs literal or header"),
                        ("spec.default.tags[1]", "set literal or header, not both"),
                    ],
                ),
                (
                    json!({"default": {"propagation": ["Jaeger"]}}),
                    &[("spec.default.propagation[0]", "unknown variant `Jaeger`")],
                ),
                (json!({}), &[("spec.default", "is required")]),
            ],
        );
    }

    /// Kuma's Datadog backend is refused with the reason, not an unknown variant.
    #[test]
    fn datadog_is_refused_with_a_reason() {
        table::<MeshTraceSpec>(
            &[
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
                     "default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://jaeger:9411/api/v2/spans"}}]}}),
            ],
            &[(
                json!({"default": {"backends": [{"type": "Datadog", "datadog": {"url": "http://127.0.0.1:8126", "splitService": true}}]}}),
                &[(
                    "spec.default.backends[0].type",
                    "Datadog: Causeway has no Datadog tracing backend",
                )],
            )],
        );
    }

    /// Kuma 2.14's `backendRef` to a MeshOpenTelemetryBackend is refused with the
    /// reason; without it, the inline endpoint is required.
    #[test]
    fn otel_backend_ref_is_refused_with_a_reason() {
        let otel = |o: serde_json::Value| json!({"default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": o}]}});
        table::<MeshTraceSpec>(
            &[
                otel(json!({"endpoint": "otel-collector:4317"})),
                otel(json!({"endpoint": "http://otel-collector:4318/v1/traces"})),
                otel(json!({"endpoint": "http://otel-collector:4317"})),
            ],
            &[
                (
                    otel(json!({"endpoint": "https://otel-collector:4318/v1/traces"})),
                    &[(
                        "spec.default.backends[0].openTelemetry.endpoint",
                        "https:// collectors are not supported yet",
                    )],
                ),
                (
                    otel(json!({"endpoint": "http://otel-collector/v1/traces"})),
                    &[(
                        "spec.default.backends[0].openTelemetry.endpoint",
                        "has no port",
                    )],
                ),
                (
                    otel(
                        json!({"backendRef": {"kind": "MeshOpenTelemetryBackend", "labels": {"kuma.io/display-name": "otel"}}}),
                    ),
                    &[(
                        "spec.default.backends[0].openTelemetry.backendRef",
                        "MeshOpenTelemetryBackend: Causeway has no MeshOpenTelemetryBackend yet",
                    )],
                ),
                (
                    otel(json!({})),
                    &[(
                        "spec.default.backends[0].openTelemetry.endpoint",
                        "is required",
                    )],
                ),
            ],
        );
    }
}
