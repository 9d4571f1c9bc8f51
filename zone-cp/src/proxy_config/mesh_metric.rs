//! The MeshMetric configurer: where a proxy serves its metrics for Prometheus, which
//! of them (profiles, include, exclude) and which applications' metrics it serves with
//! them. The policy applies to whole proxies (a top-level `default`); its merged
//! `backends` list replaces a less specific one whole, so an empty list turns the
//! endpoints off. The sidecar's admin address serves all of its own `/metrics` whatever
//! the policy says.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{
    ApplicationEndpoint, MetricsContent, MetricsEndpoint, MetricsPush,
};
use causeway_api::{MetricBackendType, MetricConf, PrometheusTlsMode, Proxy, Resource};

use super::{ComputeError, decode_conf};

/// Kuma's defaults for a `Prometheus` backend.
const DEFAULT_PORT: u16 = 5670;
const DEFAULT_PATH: &str = "/metrics";

/// Kuma's default push interval of an `OpenTelemetry` backend.
const DEFAULT_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What a proxy's MeshMetric configures: endpoints, their content, and pushes.
#[derive(Default)]
pub(crate) struct Configured {
    pub(crate) endpoints: Vec<MetricsEndpoint>,
    pub(crate) content: MetricsContent,
    pub(crate) push: Vec<MetricsPush>,
}

/// Kuma's defaults for an application endpoint.
const DEFAULT_APP_PATH: &str = "/metrics/prometheus";
const DEFAULT_APP_ADDRESS: &str = "127.0.0.1";

/// The Prometheus endpoints of `proxy`, in the merged policy's order, without
/// duplicates, what they serve, and the OTLP collectors it pushes to. `service` names
/// applications without a name.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    service: &str,
) -> Result<Configured, ComputeError> {
    let effective = causeway_api::effective("MeshMetric", policies, proxy)
        .expect("MeshMetric is a policy kind");
    let Some(merged) = effective.proxy else {
        return Ok(Default::default());
    };
    let conf: MetricConf = decode_conf(&merged.conf, || {
        format!(
            "the merged MeshMetric default (policies {})",
            merged.policies.join(", ")
        )
    })?;
    let mut endpoints: Vec<MetricsEndpoint> = Vec::new();
    let mut push: Vec<MetricsPush> = Vec::new();
    for backend in conf.backends.iter().flatten() {
        if backend.kind == MetricBackendType::OpenTelemetry {
            let otel = backend.open_telemetry.as_ref();
            if let Some(endpoint) = otel.and_then(|o| o.endpoint.clone()) {
                let p = MetricsPush {
                    endpoint,
                    interval: otel
                        .and_then(|o| o.refresh_interval)
                        .unwrap_or_else(|| DEFAULT_PUSH_INTERVAL.into()),
                };
                if !push.contains(&p) {
                    push.push(p);
                }
            }
            continue;
        }
        if backend.kind != MetricBackendType::Prometheus {
            continue;
        }
        let prometheus = backend.prometheus.as_ref();
        // `mtls: true` or Kuma's `tls.mode: ActiveMTLSBackend` (validation refused the
        // two when they disagree, and ProvidedTLS).
        let tls_mode = prometheus.and_then(|p| p.tls.as_ref()).map(|t| t.mode);
        let endpoint = MetricsEndpoint {
            port: prometheus.and_then(|p| p.port).unwrap_or(DEFAULT_PORT),
            path: prometheus
                .and_then(|p| p.path.clone())
                .unwrap_or_else(|| DEFAULT_PATH.to_owned()),
            mtls: prometheus.and_then(|p| p.mtls).unwrap_or(false)
                || tls_mode == Some(PrometheusTlsMode::ActiveMtlsBackend),
        };
        if !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    let profiles = conf
        .sidecar
        .as_ref()
        .and_then(|s| s.profiles.clone())
        .unwrap_or_default();
    let include_unused = conf
        .sidecar
        .as_ref()
        .and_then(|s| s.include_unused)
        .unwrap_or(false);
    let content = MetricsContent {
        profiles: profiles.append_profiles.iter().map(|p| p.name).collect(),
        include: profiles.include,
        exclude: profiles.exclude,
        applications: conf
            .applications
            .iter()
            .flatten()
            .map(|a| ApplicationEndpoint {
                name: a.name.clone().unwrap_or_else(|| service.to_owned()),
                address: a
                    .address
                    .clone()
                    .unwrap_or_else(|| DEFAULT_APP_ADDRESS.to_owned()),
                port: a.port,
                path: a
                    .path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_APP_PATH.to_owned()),
            })
            .collect(),
        include_unused,
    };
    Ok(Configured {
        endpoints,
        content,
        push,
    })
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_metric/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // A Mesh-wide endpoint with Kuma's defaults, replaced for web by a more
        // specific policy's port and path (and an OpenTelemetry backend it pushes
        // to); backend keeps the Mesh-wide one; admin has none (an
        // empty list).
        ("mesh_metric/by-service", "zone-a", "web-1"),
        ("mesh_metric/by-service", "zone-a", "backend-1"),
        ("mesh_metric/by-service", "zone-a", "admin-1"),
    ];

    #[test]
    fn golden_metrics_endpoints() {
        check_goldens(CASES, |config| {
            serde_yaml::to_string(&serde_json::json!({
                "dataplane": config.dataplane,
                "metricsEndpoints": config.metrics_endpoints,
                "metricsContent": config.metrics_content,
                "metricsPush": config.metrics_push,
            }))
            .expect("YAML")
        });
    }
}
