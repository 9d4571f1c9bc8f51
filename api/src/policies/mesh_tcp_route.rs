//! `MeshTCPRoute`: weighted TCP backends for a service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policies::mesh_http_route::{BackendRef, check_backend_refs};
use crate::spec::{Errors, Spec, at, idx};
use crate::target_ref::{Conf, Rule, TOP_KINDS, TargetRef, TargetRefKind, require_some};

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
///     # or Kuma's form: one rule
///     - targetRef: {kind: MeshService, labels: {kuma.io/display-name: db}}
///       rules:
///         - default:
///             backendRefs: [{kind: MeshService, name: db-replica}]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTcpRouteSpec {
    /// The proxies whose outgoing connections are routed. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The routes, by destination service (`kind: MeshService`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<TcpRouteTo>,
}

/// The route for one destination: `default`, or Kuma's `rules` with exactly one rule
/// (the same thing; matching merges a rule's `default` like a `default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteTo {
    /// The destination service (`kind: MeshService`).
    pub target_ref: TargetRef,
    /// Where its connections go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TcpRouteConf>,
    /// Kuma's form: exactly one rule, whose `default` says where connections go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<TcpRouteConf>>,
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
        for (i, to) in self.to.iter().enumerate() {
            let path = idx("spec.to", i);
            to.target_ref.check(
                errors,
                &at(&path, "targetRef"),
                &[TargetRefKind::MeshService],
            );
            match (&to.default, to.rules.len()) {
                (Some(_), 0) | (None, 1) => {}
                (Some(_), _) => {
                    errors.push(at(&path, "rules"), "set default or rules, not both");
                }
                (None, 0) => errors.push(&path, "needs default or rules"),
                (None, _) => errors.push(
                    at(&path, "rules"),
                    "takes exactly one rule: a TCP route has no matches to choose between rules",
                ),
            }
            if let Some(d) = &to.default {
                d.check(errors, &at(&path, "default"));
            }
            crate::target_ref::check_rules(errors, &at(&path, "rules"), &to.rules);
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
        table::<MeshTcpRouteSpec>(
            &[
                json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"},
                             "default": {"backendRefs": [
                                 {"kind": "MeshServiceSubset", "name": "redis", "tags": {"color": "blue"}, "weight": 100},
                                 {"kind": "MeshServiceSubset", "name": "redis", "tags": {"color": "green"}, "weight": 0}]}}]}),
                // Kuma's form: one rule, services by labels, a port.
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "frontend"}},
                       "to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "db"}, "sectionName": "postgres"},
                               "rules": [{"default": {"backendRefs": [
                                   {"kind": "MeshService", "labels": {"kuma.io/display-name": "db-replica"}, "port": 5432}]}}]}]}),
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
                    &[("spec.to[0]", "needs default or rules")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshService", "name": "redis"},
                                   "default": {}, "rules": [{"default": {}}]},
                                  {"targetRef": {"kind": "MeshService", "name": "redis"},
                                   "rules": [{"default": {}}, {"default": {"backendRefs": []}}]}]}),
                    &[
                        ("spec.to[0].rules", "set default or rules, not both"),
                        ("spec.to[1].rules", "takes exactly one rule"),
                        (
                            "spec.to[1].rules[1].default.backendRefs",
                            "needs at least one backend",
                        ),
                    ],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "db"}},
                                   "rules": [{"default": {"backendRefs": [{"kind": "MeshExternalService", "name": "rds"}]}}]}]}),
                    &[(
                        "spec.to[0].rules[0].default.backendRefs[0].kind",
                        "MeshExternalService: Causeway has no external services yet",
                    )],
                ),
            ],
        );
    }
}
