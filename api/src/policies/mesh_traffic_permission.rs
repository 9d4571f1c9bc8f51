//! `MeshTrafficPermission`: which sources may call a service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec};
use crate::target_ref::{
    Conf, PolicyItem, TOP_KINDS, TargetRef, TargetRefKind, check_items, require_some,
};

/// The spec of a `MeshTrafficPermission`. Sources are matched by service, tags or
/// SPIFFE id; a source that no entry matches is denied when mTLS is `Strict`.
///
/// ```yaml
/// type: MeshTrafficPermission
/// mesh: default
/// name: backend-callers
/// spec:
///   targetRef: {kind: MeshService, name: backend}
///   from:
///     - targetRef: {kind: MeshService, name: web}
///       default: {action: Allow}
///     - targetRef: {kind: MeshSubset, tags: {env: dev}}
///       default: {action: Deny}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrafficPermissionSpec {
    /// The proxies whose inbound traffic this policy authorizes. Default
    /// `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// What to do with traffic from each source: `Mesh`, `MeshSubset`, `MeshService`,
    /// `MeshServiceSubset` or `SpiffeId` (`spiffe://<trust-domain>/<service>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<TrafficPermissionConf>>,
}

/// The decision for one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPermissionConf {
    /// `Allow`, `Deny`, or `AllowWithShadowDeny` (allow, but log that a `Deny` would
    /// have refused it; for trying a stricter policy out). Required.
    pub action: Action,
}

/// What a traffic permission does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Let the traffic through.
    Allow,
    /// Refuse the connection or request (HTTP 403, gRPC PERMISSION_DENIED).
    Deny,
    /// Let the traffic through and log that it would be denied.
    AllowWithShadowDeny,
}

const FROM_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::SpiffeId,
];

impl Conf for TrafficPermissionConf {
    fn check(&self, _errors: &mut Errors, _path: &str) {}
}

impl Spec for MeshTrafficPermissionSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(errors, "spec", &[("from", self.from.len())]);
        check_items(errors, "spec.from", &self.from, FROM_KINDS);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<MeshTrafficPermissionSpec>(
            &[
                json!({"targetRef": {"kind": "MeshService", "name": "backend"},
                       "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}},
                                {"targetRef": {"kind": "SpiffeId", "name": "spiffe://default/batch"}, "default": {"action": "AllowWithShadowDeny"}},
                                {"targetRef": {"kind": "MeshSubset", "tags": {"env": "dev"}}, "default": {"action": "Deny"}}]}),
            ],
            &[
                (
                    json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "allow"}}]}),
                    &[("spec.from[0].default.action", "unknown variant `allow`")],
                ),
                (
                    json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
                    &[("spec.from[0].default.action", "is required")],
                ),
                (
                    json!({"from": []}),
                    &[("spec", "needs at least one entry in from")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
                    &[(
                        "spec.to",
                        "unknown field `to`, expected one of: targetRef, from",
                    )],
                ),
                (
                    json!({"targetRef": {"kind": "MeshService"},
                           "from": [{"targetRef": {"kind": "SpiffeId", "name": "spiffe://default"}, "default": {"action": "Deny"}},
                                    {"targetRef": {"kind": "MeshServiceSubset", "name": "web"}, "default": {"action": "Deny"}}]}),
                    &[
                        ("spec.targetRef.name", "is required for kind MeshService"),
                        ("spec.from[0].targetRef.name", "has no path"),
                        ("spec.from[1].targetRef.tags", "must have at least one tag"),
                    ],
                ),
            ],
        );
    }
}
