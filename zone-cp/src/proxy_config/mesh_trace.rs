//! The MeshTrace configurer: the proxy's effective top-level `default` (the policies
//! that target it, the more specific merged over the others) as what the sidecar runs.
//! No backend (or an empty list): no tracing. Built-in defaults are filled in here, so
//! the sidecar reads no policy defaults of its own.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{SpanTag, TraceBackendConfig, TraceSampling, Tracing};
use causeway_api::{Propagation, Proxy, Resource, TraceBackendType, TraceConf};

use super::{ComputeError, decode_conf};

/// What `proxy` traces, if anything.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Option<Tracing>, ComputeError> {
    let effective =
        causeway_api::effective("MeshTrace", policies, proxy).expect("MeshTrace is a policy kind");
    let Some(merged) = &effective.proxy else {
        return Ok(None);
    };
    let conf: TraceConf = decode_conf(&merged.conf, || {
        format!(
            "the merged MeshTrace default (policies {})",
            merged.policies.join(", ")
        )
    })?;
    // Validation allows at most one backend.
    let Some(backend) = conf.backends.iter().flatten().find_map(|b| match b.kind {
        TraceBackendType::OpenTelemetry => Some(TraceBackendConfig::OpenTelemetry {
            endpoint: b.open_telemetry.as_ref()?.endpoint.clone()?,
        }),
        TraceBackendType::Zipkin => {
            let z = b.zipkin.as_ref()?;
            Some(TraceBackendConfig::Zipkin {
                url: z.url.clone(),
                trace_id128bit: z.trace_id128bit.unwrap_or(false),
                shared_span_context: z.shared_span_context.unwrap_or(true),
            })
        }
        TraceBackendType::Datadog => None,
    }) else {
        return Ok(None);
    };
    let sampling = conf.sampling.unwrap_or_default();
    let percent = |p: Option<causeway_api::Percent>| p.map_or(100.0, |p| p.value());
    Ok(Some(Tracing {
        backend,
        propagation: conf.propagation.unwrap_or_else(|| vec![Propagation::W3c]),
        sampling: TraceSampling {
            overall: percent(sampling.overall),
            client: percent(sampling.client),
            random: percent(sampling.random),
        },
        tags: conf
            .tags
            .iter()
            .flatten()
            .map(|t| SpanTag {
                name: t.name.clone(),
                literal: t.literal.clone(),
                header: t.header.as_ref().map(|h| h.name.to_ascii_lowercase()),
                default: t.header.as_ref().and_then(|h| h.default.clone()),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_trace/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // A mesh-wide OpenTelemetry MeshTrace with 10% sampling; web's own policy
        // (more specific) switches to Zipkin and adds tags; sampling merges.
        ("mesh_trace/mesh-and-service", "zone-a", "web-1"),
        // Only a backend named: the built-in defaults filled in.
        ("mesh_trace/defaults", "zone-a", "backend-1"),
        // An empty backend list turns tracing off.
        ("mesh_trace/off", "zone-a", "web-1"),
    ];

    #[test]
    fn golden_tracing() {
        check_goldens(CASES, |config| {
            serde_yaml::to_string(&serde_json::json!({
                "dataplane": config.dataplane,
                "tracing": config.tracing,
            }))
            .expect("YAML")
        });
    }
}
