//! The known resource types: name, URL plural, scope and spec validation.

use serde_json::Value;

use crate::dataplane::DataplaneSpec;
use crate::drill::{DrillReportSpec, DrillSpec};
use crate::mesh::MeshSpec;
use crate::policies::mesh_access_log::MeshAccessLogSpec;
use crate::policies::mesh_circuit_breaker::MeshCircuitBreakerSpec;
use crate::policies::mesh_fault_injection::MeshFaultInjectionSpec;
use crate::policies::mesh_health_check::MeshHealthCheckSpec;
use crate::policies::mesh_http_route::MeshHttpRouteSpec;
use crate::policies::mesh_load_balancing_strategy::MeshLoadBalancingStrategySpec;
use crate::policies::mesh_metric::MeshMetricSpec;
use crate::policies::mesh_rate_limit::MeshRateLimitSpec;
use crate::policies::mesh_retry::MeshRetrySpec;
use crate::policies::mesh_tcp_route::MeshTcpRouteSpec;
use crate::policies::mesh_timeout::MeshTimeoutSpec;
use crate::policies::mesh_trace::MeshTraceSpec;
use crate::policies::mesh_traffic_permission::MeshTrafficPermissionSpec;
use crate::spec::{Spec, canonical_spec_of, spec_schema_of, validate_spec_of};
use crate::validation::FieldError;
use crate::zone::ZoneSpec;
use crate::zone_ingress::ZoneIngressSpec;

/// Where a type's resources live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Outside any mesh (Mesh and Zone); their `mesh` field must be absent.
    Global,
    /// Inside a mesh; their `mesh` field is required.
    Mesh,
}

/// What the API knows about one resource type.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    /// The `type` field, e.g. `Mesh`.
    pub kind: &'static str,
    /// The URL path segment, e.g. `meshes` in `/meshes/{name}`.
    pub plural: &'static str,
    /// Whether its resources belong to a mesh.
    pub scope: Scope,
    /// Checks a spec of this type; the error paths start at the resource root
    /// (`spec.…`). Returns every problem found, or nothing when the spec is valid.
    pub validate_spec: fn(&Value) -> Vec<FieldError>,
    /// Decodes, checks and re-encodes a spec, so that equal meanings have equal JSON
    /// (`"70%"` becomes `70`, `90s` becomes `1m30s`); the errors of `validate_spec`
    /// otherwise. Policy matching merges canonical specs.
    pub canonical_spec: fn(&Value) -> Result<Value, Vec<FieldError>>,
    /// The JSON Schema (draft 2020-12) of the spec, generated from the Rust type and its
    /// doc comments, with its `$defs`.
    pub spec_schema: fn() -> Value,
}

impl TypeInfo {
    /// The entry of a type whose spec is `T`.
    const fn of<T: Spec>(kind: &'static str, plural: &'static str, scope: Scope) -> TypeInfo {
        TypeInfo {
            kind,
            plural,
            scope,
            validate_spec: validate_spec_of::<T>,
            canonical_spec: canonical_spec_of::<T>,
            spec_schema: spec_schema_of::<T>,
        }
    }
}

/// Every type, one line each. Adding a type: write its module (spec struct plus
/// `validate_spec`) and add its line here.
static TYPES: &[TypeInfo] = &[
    TypeInfo::of::<MeshSpec>("Mesh", "meshes", Scope::Global),
    TypeInfo::of::<ZoneSpec>("Zone", "zones", Scope::Global),
    TypeInfo::of::<DrillSpec>("Drill", "drills", Scope::Global),
    TypeInfo::of::<DataplaneSpec>("Dataplane", "dataplanes", Scope::Mesh),
    TypeInfo::of::<ZoneIngressSpec>("ZoneIngress", "zoneingresses", Scope::Mesh),
    TypeInfo::of::<MeshTrafficPermissionSpec>(
        "MeshTrafficPermission",
        "meshtrafficpermissions",
        Scope::Mesh,
    ),
    TypeInfo::of::<MeshHttpRouteSpec>("MeshHTTPRoute", "meshhttproutes", Scope::Mesh),
    TypeInfo::of::<MeshTcpRouteSpec>("MeshTCPRoute", "meshtcproutes", Scope::Mesh),
    TypeInfo::of::<MeshTimeoutSpec>("MeshTimeout", "meshtimeouts", Scope::Mesh),
    TypeInfo::of::<MeshRetrySpec>("MeshRetry", "meshretries", Scope::Mesh),
    TypeInfo::of::<MeshCircuitBreakerSpec>(
        "MeshCircuitBreaker",
        "meshcircuitbreakers",
        Scope::Mesh,
    ),
    TypeInfo::of::<MeshHealthCheckSpec>("MeshHealthCheck", "meshhealthchecks", Scope::Mesh),
    TypeInfo::of::<MeshFaultInjectionSpec>(
        "MeshFaultInjection",
        "meshfaultinjections",
        Scope::Mesh,
    ),
    TypeInfo::of::<MeshRateLimitSpec>("MeshRateLimit", "meshratelimits", Scope::Mesh),
    TypeInfo::of::<MeshLoadBalancingStrategySpec>(
        "MeshLoadBalancingStrategy",
        "meshloadbalancingstrategies",
        Scope::Mesh,
    ),
    TypeInfo::of::<MeshAccessLogSpec>("MeshAccessLog", "meshaccesslogs", Scope::Mesh),
    TypeInfo::of::<MeshTraceSpec>("MeshTrace", "meshtraces", Scope::Mesh),
    TypeInfo::of::<MeshMetricSpec>("MeshMetric", "meshmetrics", Scope::Mesh),
    TypeInfo::of::<DrillReportSpec>("DrillReport", "drillreports", Scope::Mesh),
];

/// All known types, in registry order.
pub fn types() -> &'static [TypeInfo] {
    TYPES
}

/// The type whose `type` field is exactly `kind` (`"Mesh"`).
pub fn type_info(kind: &str) -> Option<&'static TypeInfo> {
    TYPES.iter().find(|t| t.kind == kind)
}

/// The type whose URL segment is exactly `plural` (`"meshes"`).
pub fn type_by_plural(plural: &str) -> Option<&'static TypeInfo> {
    TYPES.iter().find(|t| t.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(type_info("Mesh").map(|t| t.plural), Some("meshes"));
        assert_eq!(type_info("Zone").map(|t| t.scope), Some(Scope::Global));
        assert_eq!(type_by_plural("zones").map(|t| t.kind), Some("Zone"));
        assert!(type_info("mesh").is_none());
        assert!(type_by_plural("mesh").is_none());
    }

    #[test]
    fn every_type_is_registered() {
        let kinds: Vec<&str> = TYPES.iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            [
                "Mesh",
                "Zone",
                "Drill",
                "Dataplane",
                "ZoneIngress",
                "MeshTrafficPermission",
                "MeshHTTPRoute",
                "MeshTCPRoute",
                "MeshTimeout",
                "MeshRetry",
                "MeshCircuitBreaker",
                "MeshHealthCheck",
                "MeshFaultInjection",
                "MeshRateLimit",
                "MeshLoadBalancingStrategy",
                "MeshAccessLog",
                "MeshTrace",
                "MeshMetric",
                "DrillReport",
            ]
        );
        for t in &TYPES[3..] {
            assert_eq!(t.scope, Scope::Mesh, "{}", t.kind);
            // The URL plural is the English plural of the lowercase kind.
            let lower = t.kind.to_ascii_lowercase();
            let plural = if let Some(stem) = lower.strip_suffix('y') {
                format!("{stem}ies")
            } else if lower.ends_with('s') {
                format!("{lower}es")
            } else {
                format!("{lower}s")
            };
            assert_eq!(t.plural, plural, "{}", t.kind);
        }
    }

    /// Envelope and spec problems of a policy come back together, envelope first.
    #[test]
    fn validate_reports_envelope_and_spec_problems_together() {
        let r = crate::Resource::from_yaml(
            "type: MeshRetry\nname: Bad_Name\nspec:\n  to:\n  - targetRef: {kind: MeshService}\n    default: {http: {numRetries: 99}}\n",
        )
        .unwrap();
        let errors = crate::validate(&r).unwrap_err().errors;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "mesh",
                "spec.to[0].targetRef.name",
                "spec.to[0].default.http.numRetries"
            ]
        );
    }

    #[test]
    fn kinds_and_plurals_are_unique_and_well_formed() {
        for (i, t) in TYPES.iter().enumerate() {
            assert!(
                TYPES[..i]
                    .iter()
                    .all(|o| o.kind != t.kind && o.plural != t.plural),
                "{t:?}"
            );
            assert_eq!(t.plural, t.plural.to_ascii_lowercase(), "{t:?}");
            assert!(
                t.kind.starts_with(|c: char| c.is_ascii_uppercase()),
                "{t:?}"
            );
            // An empty spec is well-formed JSON for every type; whether it is valid is
            // the type's business, but it must not panic.
            let _ = (t.validate_spec)(&serde_json::json!({}));
        }
    }
}
