//! The policy types, one module each. A policy's module holds its spec (serde +
//! schemars, documented field by field), its checks, and its validation table.

pub(crate) mod mesh_access_log;
pub(crate) mod mesh_circuit_breaker;
pub(crate) mod mesh_fault_injection;
pub(crate) mod mesh_health_check;
pub(crate) mod mesh_http_route;
pub(crate) mod mesh_load_balancing_strategy;
pub(crate) mod mesh_metric;
pub(crate) mod mesh_rate_limit;
pub(crate) mod mesh_retry;
pub(crate) mod mesh_tcp_route;
pub(crate) mod mesh_timeout;
pub(crate) mod mesh_trace;
pub(crate) mod mesh_traffic_permission;

use crate::spec::{Errors, at, check_host_port};

/// Checks an OpenTelemetry backend's collector at `path` (`...openTelemetry`): an
/// inline `endpoint` (`host:port`) is required; Kuma 2.14's `backendRef` to a
/// MeshOpenTelemetryBackend is refused with the reason.
pub(crate) fn check_otel_endpoint(
    errors: &mut Errors,
    path: &str,
    endpoint: &Option<String>,
    backend_ref: &Option<serde_json::Value>,
) {
    if backend_ref.is_some() {
        errors.push(
            at(path, "backendRef"),
            "MeshOpenTelemetryBackend: Causeway has no MeshOpenTelemetryBackend yet; give the collector inline as endpoint: <host>:<port>",
        );
        return;
    }
    match endpoint {
        Some(endpoint) => errors.check(at(path, "endpoint"), check_host_port(endpoint)),
        None => errors.push(at(path, "endpoint"), "is required"),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use serde_json::Value;

    use crate::spec::{Spec, canonical_spec_of, validate_spec_of};
    use crate::validation::decode_spec;

    /// Checks that every `good` spec is valid and survives decode → encode → decode
    /// unchanged, and that every `bad` spec gives exactly the listed `(field, reason
    /// fragment)` errors, in order.
    pub(crate) fn table<T: Spec + PartialEq + std::fmt::Debug>(
        good: &[Value],
        bad: &[(Value, &[(&str, &str)])],
    ) {
        for spec in good {
            assert_eq!(validate_spec_of::<T>(spec), vec![], "{spec:#}");
            let typed: T = decode_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e:?}"));
            let canonical =
                canonical_spec_of::<T>(spec).unwrap_or_else(|e| panic!("{spec}: {e:?}"));
            let again: T = decode_spec(&canonical).unwrap_or_else(|e| panic!("{canonical}: {e:?}"));
            assert_eq!(again, typed, "{spec}");
        }
        for (spec, want) in bad {
            let got = validate_spec_of::<T>(spec);
            let got_pairs: Vec<(&str, &str)> = got
                .iter()
                .map(|e| (e.field.as_str(), e.reason.as_str()))
                .collect();
            assert_eq!(got.len(), want.len(), "{spec}: {got_pairs:#?}");
            for ((field, reason), (want_field, want_reason)) in got_pairs.iter().zip(want.iter()) {
                assert_eq!(field, want_field, "{spec}: {got_pairs:#?}");
                assert!(
                    reason.contains(want_reason),
                    "{spec}: {field}: {reason:?} lacks {want_reason:?}"
                );
            }
        }
    }
}
