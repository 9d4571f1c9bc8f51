//! The known resource types: name, URL plural, scope, role, sync direction, spec
//! validation, and for policies what the proxies enforce. Every other place (policy
//! matching, the zone's DDS inputs, KDS, Terraform, the warnings a write gets) asks
//! this table; nothing keeps a list of its own.

use serde_json::Value;

use crate::dataplane::DataplaneSpec;
use crate::drill::{DrillReportSpec, DrillSpec};
use crate::enforcement::{Enforcement, Unenforced};
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
use crate::virtual_ip::VirtualIpSpec;
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

/// What a type is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Settings of the mesh or the fleet (Mesh, Zone).
    Config,
    /// A policy: a `targetRef` and the `to`/`from`/`rules` the proxies act on, with what
    /// of it they enforce.
    Policy(Enforcement),
    /// Written by a zone about what runs there (Dataplane, ZoneIngress, DrillReport).
    ZoneReported,
    /// A rehearsal with a window of its own (Drill), started with `causeway drill`.
    Operation,
    /// Allocated by the global control plane itself (VirtualIp): read-only to users and
    /// zones.
    Allocated,
}

/// Which way a type's resources travel between the global and the zone control planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDirection {
    /// Written at global, sent to every zone. Policies may also be written in a zone
    /// (zone-local), which reports them up.
    GlobalToZones,
    /// Written by a zone and reported up; other zones do not get them.
    ZoneToGlobal,
    /// Written by a zone, reported up, and sent on to every other zone (a zone ingress:
    /// how the other zones reach this one).
    ZoneToGlobalToZones,
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
    /// What it is for; for a policy, what of it the proxies enforce.
    pub role: Role,
    /// Which way it syncs.
    pub sync: SyncDirection,
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
    const fn of<T: Spec>(
        kind: &'static str,
        plural: &'static str,
        scope: Scope,
        role: Role,
        sync: SyncDirection,
    ) -> TypeInfo {
        TypeInfo {
            kind,
            plural,
            scope,
            role,
            sync,
            validate_spec: validate_spec_of::<T>,
            canonical_spec: canonical_spec_of::<T>,
            spec_schema: spec_schema_of::<T>,
        }
    }

    /// A mesh-scoped policy written at global (or in a zone), synced down.
    const fn policy<T: Spec>(
        kind: &'static str,
        plural: &'static str,
        enforced: Enforcement,
    ) -> TypeInfo {
        TypeInfo::of::<T>(
            kind,
            plural,
            Scope::Mesh,
            Role::Policy(enforced),
            SyncDirection::GlobalToZones,
        )
    }

    /// Whether it is a policy (matched and merged by [`crate::effective`]).
    pub fn is_policy(&self) -> bool {
        matches!(self.role, Role::Policy(_))
    }

    /// Whether users configure it through the API, the CLI and Terraform (config and
    /// policies), rather than zones reporting it or `causeway drill` starting it.
    pub fn is_configuration(&self) -> bool {
        matches!(self.role, Role::Config | Role::Policy(_))
    }

    /// Whether a zone may write resources of this type itself and report them up.
    pub fn zone_may_write(&self) -> bool {
        matches!(self.role, Role::Policy(_) | Role::ZoneReported)
    }
}

/// Fields of Kuma's current API that every policy accepts and no proxy acts on yet;
/// they warn in every kind the proxies enforce (fully or in part).
pub(crate) const COMMON_UNENFORCED: &[Unenforced] = &[];

/// Every type, one line each. Adding a type: write its module (spec struct plus
/// `validate_spec`) and add its line here.
static TYPES: &[TypeInfo] = &[
    TypeInfo::of::<MeshSpec>(
        "Mesh",
        "meshes",
        Scope::Global,
        Role::Config,
        SyncDirection::GlobalToZones,
    ),
    TypeInfo::of::<ZoneSpec>(
        "Zone",
        "zones",
        Scope::Global,
        Role::Config,
        SyncDirection::GlobalToZones,
    ),
    TypeInfo::of::<DrillSpec>(
        "Drill",
        "drills",
        Scope::Global,
        Role::Operation,
        SyncDirection::GlobalToZones,
    ),
    TypeInfo::of::<DataplaneSpec>(
        "Dataplane",
        "dataplanes",
        Scope::Mesh,
        Role::ZoneReported,
        SyncDirection::ZoneToGlobal,
    ),
    TypeInfo::of::<ZoneIngressSpec>(
        "ZoneIngress",
        "zoneingresses",
        Scope::Mesh,
        Role::ZoneReported,
        SyncDirection::ZoneToGlobalToZones,
    ),
    TypeInfo::policy::<MeshTrafficPermissionSpec>(
        "MeshTrafficPermission",
        "meshtrafficpermissions",
        Enforcement::Full,
    ),
    TypeInfo::policy::<MeshHttpRouteSpec>("MeshHTTPRoute", "meshhttproutes", Enforcement::Full),
    TypeInfo::policy::<MeshTcpRouteSpec>("MeshTCPRoute", "meshtcproutes", Enforcement::Full),
    TypeInfo::policy::<MeshTimeoutSpec>("MeshTimeout", "meshtimeouts", Enforcement::Full),
    TypeInfo::policy::<MeshRetrySpec>("MeshRetry", "meshretries", Enforcement::Full),
    TypeInfo::policy::<MeshCircuitBreakerSpec>(
        "MeshCircuitBreaker",
        "meshcircuitbreakers",
        Enforcement::Full,
    ),
    TypeInfo::policy::<MeshHealthCheckSpec>(
        "MeshHealthCheck",
        "meshhealthchecks",
        Enforcement::Full,
    ),
    TypeInfo::policy::<MeshFaultInjectionSpec>(
        "MeshFaultInjection",
        "meshfaultinjections",
        Enforcement::Full,
    ),
    TypeInfo::policy::<MeshRateLimitSpec>("MeshRateLimit", "meshratelimits", Enforcement::Full),
    TypeInfo::policy::<MeshLoadBalancingStrategySpec>(
        "MeshLoadBalancingStrategy",
        "meshloadbalancingstrategies",
        Enforcement::Full,
    ),
    TypeInfo::policy::<MeshAccessLogSpec>("MeshAccessLog", "meshaccesslogs", Enforcement::Full),
    TypeInfo::policy::<MeshTraceSpec>("MeshTrace", "meshtraces", Enforcement::Full),
    TypeInfo::policy::<MeshMetricSpec>("MeshMetric", "meshmetrics", Enforcement::Full),
    TypeInfo::of::<DrillReportSpec>(
        "DrillReport",
        "drillreports",
        Scope::Mesh,
        Role::ZoneReported,
        SyncDirection::ZoneToGlobal,
    ),
    TypeInfo::of::<VirtualIpSpec>(
        "VirtualIp",
        "virtualips",
        Scope::Mesh,
        Role::Allocated,
        SyncDirection::GlobalToZones,
    ),
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
                "VirtualIp",
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

    /// Each type's role and sync direction, pinned: KDS, DDS, Terraform and policy
    /// matching all decide by them.
    #[test]
    fn roles_and_sync_directions() {
        let described: Vec<(&str, &str, SyncDirection)> = TYPES
            .iter()
            .map(|t| {
                let role = match t.role {
                    Role::Config => "config",
                    Role::Policy(_) => "policy",
                    Role::ZoneReported => "zone-reported",
                    Role::Operation => "operation",
                    Role::Allocated => "allocated",
                };
                (t.kind, role, t.sync)
            })
            .collect();
        use SyncDirection::*;
        let mut want = vec![
            ("Mesh", "config", GlobalToZones),
            ("Zone", "config", GlobalToZones),
            ("Drill", "operation", GlobalToZones),
            ("Dataplane", "zone-reported", ZoneToGlobal),
            ("ZoneIngress", "zone-reported", ZoneToGlobalToZones),
        ];
        for kind in &described[5..18] {
            want.push((kind.0, "policy", GlobalToZones));
        }
        want.push(("DrillReport", "zone-reported", ZoneToGlobal));
        want.push(("VirtualIp", "allocated", GlobalToZones));
        assert_eq!(described, want);
        assert_eq!(TYPES.iter().filter(|t| t.is_policy()).count(), 13);
        let configured: Vec<&str> = TYPES
            .iter()
            .filter(|t| !t.is_configuration())
            .map(|t| t.kind)
            .collect();
        assert_eq!(
            configured,
            [
                "Drill",
                "Dataplane",
                "ZoneIngress",
                "DrillReport",
                "VirtualIp"
            ]
        );
        for t in TYPES {
            // Zones write policies (zone-local) and what they report, nothing else.
            assert_eq!(
                t.zone_may_write(),
                t.is_policy() || t.role == Role::ZoneReported,
                "{}",
                t.kind
            );
            // Only policies are mesh-scoped among the types users configure.
            if t.is_policy() {
                assert_eq!(t.scope, Scope::Mesh, "{}", t.kind);
            }
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
