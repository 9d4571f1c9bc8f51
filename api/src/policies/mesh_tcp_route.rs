//! `MeshTCPRoute`: weighted TCP backends for a service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policies::mesh_http_route::{BackendRef, check_backend_refs};
use crate::spec::{Errors, Spec, at};
use crate::target_ref::{
    Conf, PolicyItem, TOP_KINDS, TargetRef, TargetRefKind, check_items, require_some,
};

/// The spec of a `MeshTCPRoute`: where connections to a service go, split by weight.
/// An HTTP route for the same destination takes precedence for HTTP traffic.
///
/// ```yaml
/// type: MeshTCPRoute
/// mesh: default
/// name: redis-blue-green
/// spec:
///   to:
///     - targetRef: {kind: MeshService, name: redis}
///       default:
///         backendRefs:
///           - {kind: MeshServiceSubset, name: redis, tags: {color: blue}, weight: 100}
///           - {kind: MeshServiceSubset, name: redis, tags: {color: green}, weight: 0}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTcpRouteSpec {
    /// The proxies whose outgoing connections are routed. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The routes, by destination service (`kind: MeshService`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<TcpRouteConf>>,
}

/// Where connections go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TcpRouteConf {
    /// The backends, split by weight. Absent: the destination service itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

impl Conf for TcpRouteConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        if let Some(refs) = &self.backend_refs {
            check_backend_refs(errors, &at(path, "backendRefs"), refs);
        }
    }
}

impl Spec for MeshTcpRouteSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(errors, "spec", &[("to", self.to.len())]);
        check_items(errors, "spec.to", &self.to, &[TargetRefKind::MeshService]);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<MeshTcpRouteSpec>(
            &[
                json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"},
                             "default": {"backendRefs": [
                                 {"kind": "MeshServiceSubset", "name": "redis", "tags": {"color": "blue"}, "weight": 100},
                                 {"kind": "MeshServiceSubset", "name": "redis", "tags": {"color": "green"}, "weight": 0}]}}]}),
            ],
            &[
                (
                    json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"}, "default": {"backendRefs": []}}]}),
                    &[(
                        "spec.to[0].default.backendRefs",
                        "needs at least one backend",
                    )],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "redis"}]}}]}),
                    &[
                        (
                            "spec.to[0].targetRef.kind",
                            "kind Mesh is not allowed here; use one of: MeshService",
                        ),
                        (
                            "spec.to[0].default.backendRefs[0].tags",
                            "must have at least one tag",
                        ),
                    ],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"}, "default": {"backendRefs": [{"kind": "MeshService", "name": "redis", "weight": -1}]}}]}),
                    &[(
                        "spec.to[0].default.backendRefs[0].weight",
                        "invalid value: integer `-1`",
                    )],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"}, "rules": []}]}),
                    &[
                        (
                            "spec.to[0].rules",
                            "unknown field `rules`, expected one of: targetRef, default",
                        ),
                        ("spec.to[0].default", "is required"),
                    ],
                ),
            ],
        );
    }
}
