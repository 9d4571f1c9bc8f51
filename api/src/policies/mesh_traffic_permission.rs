//! `MeshTrafficPermission`: which sources may call a service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec, at, idx};
use crate::target_ref::{
    Conf, PolicyItem, Rule, Sections, TargetRef, TargetRefKind, check_policy, check_spiffe_match,
};
pub use crate::target_ref::{SpiffeIdMatch, SpiffeMatch, SpiffeMatchType};

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
    /// Kuma 2.12+'s form: callers matched by SPIFFE id, for all inbound traffic of the
    /// selected proxies (each rule acts as a `from[]` entry for `{kind: Mesh}`). A caller
    /// that matches a `deny` entry is denied; otherwise one that matches an `allow` or
    /// `allowWithShadowDeny` entry is allowed. The lists of all matching policies add
    /// up (a more specific policy cannot drop a `deny`), and the sidecar checks every
    /// `deny` before any other rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<SpiffeRulesConf>>,
}

/// Callers by SPIFFE id (MeshTrafficPermission `rules[].default`).
///
/// ```yaml
/// default:
///   deny: [{spiffeID: {type: Prefix, value: spiffe://default.zone-1.mesh.local/ns/legacy/sa}}]
///   allow: [{spiffeID: {type: Prefix, value: spiffe://default.zone-1.mesh.local}}]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpiffeRulesConf {
    /// Callers always allowed, unless a `deny` matches them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<SpiffeMatch>>,
    /// Callers always denied, whatever else matches them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<SpiffeMatch>>,
    /// Callers allowed, and logged as if denied (to try a `deny` out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_with_shadow_deny: Option<Vec<SpiffeMatch>>,
}

impl Conf for SpiffeRulesConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let lists = [
            ("allow", &self.allow),
            ("deny", &self.deny),
            ("allowWithShadowDeny", &self.allow_with_shadow_deny),
        ];
        if lists
            .iter()
            .all(|(_, l)| l.as_ref().is_none_or(Vec::is_empty))
        {
            errors.push(
                path,
                "needs at least one entry in allow, deny or allowWithShadowDeny",
            );
        }
        for (name, list) in lists {
            for (i, m) in list.iter().flatten().enumerate() {
                let field = at(&at(&idx(&at(path, name), i), "spiffeID"), "value");
                errors.check(field, check_spiffe_match(&m.spiffe_id));
            }
        }
    }
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
        check_policy(
            errors,
            &self.target_ref,
            Sections {
                rules: Some(&self.rules),
                from: Some((&self.from, FROM_KINDS)),
                to: None,
            },
        );
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
                // Kuma 2.12+: callers by SPIFFE id, Kuma's and Causeway's id forms.
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "admin"},
                       "rules": [{"default": {
                           "deny": [{"spiffeID": {"type": "Prefix", "value": "spiffe://default.zone-1.mesh.local/ns/legacy/sa"}}],
                           "allow": [{"spiffeID": {"type": "Prefix", "value": "spiffe://default.zone-1.mesh.local"}},
                                     {"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}],
                           "allowWithShadowDeny": [{"spiffeID": {"type": "Exact", "value": "spiffe://td/ns/kuma-demo/sa/frontend"}}]}}]}),
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
                    &[("spec", "needs at least one entry in rules or from")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
                    &[(
                        "spec.to",
                        "unknown field `to`, expected one of: targetRef, from, rules",
                    )],
                ),
                (
                    json!({"rules": [
                        {"default": {}},
                        {"default": {"allow": [{"spiffeID": {"type": "Prefix", "value": "https://x"}}],
                                     "deny": [{"spiffeID": {"type": "Exact", "value": "spiffe://td.mesh.local"}},
                                              {"spiffeID": {"type": "Prefix", "value": "spiffe://Bad_Domain/ns"}}],
                                     "allowWithShadowDeny": [{"spiffeID": {"type": "Prefix", "value": "spiffe://td//ns"}}]}}]}),
                    &[
                        (
                            "spec.rules[0].default",
                            "needs at least one entry in allow, deny or allowWithShadowDeny",
                        ),
                        (
                            "spec.rules[1].default.allow[0].spiffeID.value",
                            "is not a SPIFFE id",
                        ),
                        (
                            "spec.rules[1].default.deny[0].spiffeID.value",
                            "has no path, so no workload has this id exactly",
                        ),
                        (
                            "spec.rules[1].default.deny[1].spiffeID.value",
                            "the trust domain",
                        ),
                        (
                            "spec.rules[1].default.allowWithShadowDeny[0].spiffeID.value",
                            "empty path segment",
                        ),
                    ],
                ),
                (
                    json!({"rules": [{"default": {"allow": [{"spiffeID": {"type": "Regex", "value": "spiffe://td"}}]}}]}),
                    &[(
                        "spec.rules[0].default.allow[0].spiffeID.type",
                        "unknown variant `Regex`",
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
