//! `MeshMetric`: which metrics proxies expose and where (Prometheus, OpenTelemetry).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::spec::{Errors, Spec, at, idx};
use crate::target_ref::{TOP_KINDS, TargetRef};

/// The spec of a `MeshMetric`. It applies to whole proxies, so it has a top-level
/// `default`.
///
/// ```yaml
/// type: MeshMetric
/// mesh: default
/// name: metrics
/// spec:
///   targetRef: {kind: Mesh}
///   default:
///     sidecar:
///       profiles: {appendProfiles: [{name: Basic}], exclude: [{type: Prefix, match: "http_"}]}
///     applications: [{path: /metrics, port: 8080}]
///     backends:
///       - type: Prometheus
///         prometheus: {port: 5670, path: /metrics}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshMetricSpec {
    /// The proxies this configures. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The metrics configuration.
    pub default: MetricConf,
}

/// Metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct MetricConf {
    /// The proxy's own metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarMetrics>,
    /// Application endpoints the proxy scrapes and serves together with its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<Vec<ApplicationMetrics>>,
    /// Where metrics are exposed or pushed. An empty list turns metrics off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<MetricBackend>>,
}

/// The proxy's own metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct SidecarMetrics {
    /// Which metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
    /// Also report metrics of clusters and listeners that took no traffic. Built-in
    /// default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unused: Option<bool>,
}

/// Metric selection: the families of `appendProfiles` (all without one) less those
/// `exclude` matches, plus those `include` matches (include wins over exclude, as in
/// Kuma). Names are the sidecar's metric family names (`causeway_requests_total`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct Profiles {
    /// Predefined sets: `All`, `Basic` (golden signals), `None`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub append_profiles: Vec<Profile>,
    /// Metrics added back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<Selector>,
    /// Metrics removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Selector>,
}

/// A predefined metric set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    /// `All`, `Basic` or `None`.
    pub name: ProfileName,
}

/// Predefined metric sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ProfileName {
    /// Every metric.
    All,
    /// The golden signals: requests, answers by status and grpc-status, latency,
    /// requests in flight, the proxy's own errors, TCP connections and bytes.
    Basic,
    /// No metric.
    None,
}

/// Metrics selected by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// `Exact`, `Prefix`, `Contains` or `Regex`.
    #[serde(rename = "type")]
    pub kind: SelectorType,
    /// The name, prefix or expression.
    #[serde(rename = "match")]
    pub matches: String,
}

/// Name matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SelectorType {
    /// The whole name.
    Exact,
    /// A prefix of the name.
    Prefix,
    /// A part of the name (Kuma 2.9+).
    Contains,
    /// A regular expression (RE2).
    Regex,
}

/// An application metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplicationMetrics {
    /// A name for its metrics' `app` label. Absent: the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path, starting with `/`. Built-in default `/metrics/prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The port on the workload.
    pub port: u16,
    /// The address. Built-in default `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A metrics backend, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricBackend {
    /// `Prometheus` or `OpenTelemetry`.
    #[serde(rename = "type")]
    pub kind: MetricBackendType,
    /// For `Prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusBackend>,
    /// For `OpenTelemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OtelMetricBackend>,
}

/// Metrics backend types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MetricBackendType {
    /// An endpoint Prometheus scrapes.
    Prometheus,
    /// Pushed to an OpenTelemetry collector (OTLP/gRPC).
    OpenTelemetry,
}

/// A Prometheus scrape endpoint on the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusBackend {
    /// The port. Built-in default 5670.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path, starting with `/`. Built-in default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Serve the endpoint over the mesh's mTLS (for a Prometheus inside the mesh).
    /// Built-in default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<bool>,
    /// Kuma's form of the same choice: `{mode: Disabled}` (plain HTTP) or
    /// `{mode: ActiveMTLSBackend}` (the mesh's mTLS, like `mtls: true`).
    /// `ProvidedTLS` is refused: Causeway cannot serve the endpoint with a certificate
    /// of your own yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
}

/// How the Prometheus endpoint is served (Kuma's `tls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusTls {
    /// `Disabled`, `ActiveMTLSBackend` or `ProvidedTLS` (refused).
    pub mode: PrometheusTlsMode,
}

/// TLS modes of the Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PrometheusTlsMode {
    /// Plain HTTP.
    Disabled,
    /// A certificate you provide. Refused: Causeway has no such certificates yet.
    #[serde(rename = "ProvidedTLS")]
    ProvidedTls,
    /// The mesh's mTLS.
    #[serde(rename = "ActiveMTLSBackend")]
    ActiveMtlsBackend,
}

/// An OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelMetricBackend {
    /// `host:port` of the collector's OTLP/gRPC endpoint. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Kuma 2.14's reference to a MeshOpenTelemetryBackend. Refused: Causeway has no
    /// MeshOpenTelemetryBackend yet; give the collector as `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<serde_json::Value>,
    /// How often metrics are pushed, from 1s to 1h. Built-in default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
}

fn check_path(errors: &mut Errors, field: String, path: &Option<String>) {
    if let Some(p) = path
        && !p.starts_with('/')
    {
        errors.push(field, format!("must start with '/' (got {p:?})"));
    }
}

impl Spec for MeshMetricSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        let path = "spec.default";
        let d = &self.default;
        if let Some(profiles) = d.sidecar.as_ref().and_then(|s| s.profiles.as_ref()) {
            let path = at(&at(path, "sidecar"), "profiles");
            for (list, selectors) in [
                ("include", &profiles.include),
                ("exclude", &profiles.exclude),
            ] {
                for (i, s) in selectors.iter().enumerate() {
                    let field = at(&idx(&at(&path, list), i), "match");
                    errors.non_empty(field.clone(), &s.matches);
                    if s.kind == SelectorType::Regex
                        && let Err(e) = regex::Regex::new(&s.matches)
                    {
                        errors.push(field, format!("is not a regular expression: {e}"));
                    }
                }
            }
        }
        for (i, app) in d.applications.iter().flatten().enumerate() {
            let path = idx(&at(path, "applications"), i);
            errors.port(at(&path, "port"), Some(app.port));
            check_path(errors, at(&path, "path"), &app.path);
            if let Some(address) = &app.address {
                errors.check(at(&path, "address"), crate::spec::check_host(address));
            }
        }
        let mut prometheus = 0;
        for (i, b) in d.backends.iter().flatten().enumerate() {
            let path = idx(&at(path, "backends"), i);
            match (b.kind, &b.prometheus, &b.open_telemetry) {
                (MetricBackendType::Prometheus, None, _) => {
                    errors.push(at(&path, "prometheus"), "is required for type Prometheus");
                }
                (MetricBackendType::OpenTelemetry, _, None) => {
                    errors.push(
                        at(&path, "openTelemetry"),
                        "is required for type OpenTelemetry",
                    );
                }
                _ => {}
            }
            if b.kind != MetricBackendType::Prometheus && b.prometheus.is_some() {
                errors.push(
                    at(&path, "prometheus"),
                    format!("must not be set for type {:?}", b.kind),
                );
            }
            if b.kind != MetricBackendType::OpenTelemetry && b.open_telemetry.is_some() {
                errors.push(
                    at(&path, "openTelemetry"),
                    format!("must not be set for type {:?}", b.kind),
                );
            }
            if let Some(p) = &b.prometheus {
                prometheus += 1;
                if prometheus == 2 {
                    errors.push(&path, "only one Prometheus backend is allowed");
                }
                errors.port(at(&at(&path, "prometheus"), "port"), p.port);
                if let Some(tls) = &p.tls {
                    let field = at(&at(&at(&path, "prometheus"), "tls"), "mode");
                    let as_mtls = match tls.mode {
                        PrometheusTlsMode::Disabled => Some(false),
                        PrometheusTlsMode::ActiveMtlsBackend => Some(true),
                        PrometheusTlsMode::ProvidedTls => {
                            errors.push(
                                field.clone(),
                                "ProvidedTLS: Causeway has no certificates of your own for the Prometheus endpoint yet; use ActiveMTLSBackend (the mesh's mTLS) or Disabled",
                            );
                            None
                        }
                    };
                    if let (Some(want), Some(mtls)) = (as_mtls, p.mtls)
                        && want != mtls
                    {
                        errors.push(field, format!("contradicts mtls: {mtls}; set one of them"));
                    }
                }
                check_path(errors, at(&at(&path, "prometheus"), "path"), &p.path);
            }
            if let Some(o) = &b.open_telemetry {
                let path = at(&path, "openTelemetry");
                crate::policies::check_otel_endpoint(errors, &path, &o.endpoint, &o.backend_ref);
                errors.duration(
                    at(&path, "refreshInterval"),
                    o.refresh_interval,
                    Duration::from_secs(1),
                    Duration::from_hours(1),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<MeshMetricSpec>(
            &[
                json!({"targetRef": {"kind": "Mesh"}, "default": {
                    "sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}], "include": [{"type": "Regex", "match": "^tcp_"}, {"type": "Contains", "match": "upstream_rq"}], "exclude": [{"type": "Prefix", "match": "http_"}]}, "includeUnused": false},
                    "applications": [{"name": "backend", "path": "/metrics", "port": 8080}],
                    "backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "path": "/metrics"}},
                                 {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector:4317", "refreshInterval": "30s"}}]}}),
                json!({"default": {"backends": []}}),
            ],
            &[
                (
                    json!({"default": {"applications": [{"port": 0, "path": "metrics"}]}}),
                    &[
                        (
                            "spec.default.applications[0].port",
                            "must be a port between 1 and 65535",
                        ),
                        ("spec.default.applications[0].path", "must start with '/'"),
                    ],
                ),
                (
                    json!({"default": {"backends": [{"type": "Prometheus", "prometheus": {}}, {"type": "Prometheus", "prometheus": {"port": 9090}}]}}),
                    &[(
                        "spec.default.backends[1]",
                        "only one Prometheus backend is allowed",
                    )],
                ),
                (
                    json!({"default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317", "refreshInterval": "100ms"}, "prometheus": {}}]}}),
                    &[
                        (
                            "spec.default.backends[0].prometheus",
                            "must not be set for type OpenTelemetry",
                        ),
                        (
                            "spec.default.backends[0].openTelemetry.refreshInterval",
                            "must be between 1s and 1h (got 100ms)",
                        ),
                    ],
                ),
                (
                    json!({"default": {"sidecar": {"profiles": {"appendProfiles": [{"name": "Everything"}]}}}}),
                    &[(
                        "spec.default.sidecar.profiles.appendProfiles[0].name",
                        "unknown variant `Everything`",
                    )],
                ),
                (
                    json!({"default": {"sidecar": {"profiles": {"exclude": [{"type": "Regex", "match": "causeway_(tcp"}]}}}}),
                    &[(
                        "spec.default.sidecar.profiles.exclude[0].match",
                        "is not a regular expression",
                    )],
                ),
                (
                    json!({"default": {"applications": [{"port": 70000}]}}),
                    &[(
                        "spec.default.applications[0].port",
                        "invalid value: integer `70000`",
                    )],
                ),
            ],
        );
    }

    /// Kuma's `prometheus.tls.mode`: Disabled and ActiveMTLSBackend are `mtls` false and
    /// true; ProvidedTLS is refused with the reason.
    #[test]
    fn prometheus_tls_table() {
        let tls = |mode: &str, mtls: Option<bool>| {
            let mut p = json!({"port": 5670, "tls": {"mode": mode}});
            if let Some(m) = mtls {
                p["mtls"] = m.into();
            }
            json!({"default": {"backends": [{"type": "Prometheus", "prometheus": p}]}})
        };
        table::<MeshMetricSpec>(
            &[tls("Disabled", None), tls("ActiveMTLSBackend", Some(true))],
            &[
                (
                    tls("ProvidedTLS", None),
                    &[(
                        "spec.default.backends[0].prometheus.tls.mode",
                        "Causeway has no certificates of your own",
                    )],
                ),
                (
                    tls("Disabled", Some(true)),
                    &[(
                        "spec.default.backends[0].prometheus.tls.mode",
                        "contradicts mtls: true",
                    )],
                ),
            ],
        );
    }
}
