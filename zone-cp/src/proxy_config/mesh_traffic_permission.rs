//! The MeshTrafficPermission configurer: the effective permissions of each inbound, as
//! rules a sidecar checks against the caller's certificate (first match wins).
//!
//! - `from[]` entries: one rule per source, matched against the caller's certificate:
//!   its SPIFFE id, or for sources by tags (`MeshSubset`, `MeshServiceSubset`) the
//!   tags its zone signed in from its registered Dataplane.
//! - Kuma's `rules[].default` lists (merged into the `Mesh`-source rule, each list the
//!   sum of every matching policy's): every `deny` entry comes first, so nothing can
//!   override it; then the `from[]` rules; then `allow` and `allowWithShadowDeny`.
//!   A caller no rule matches gets the inbound's default action.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{PermissionRule, SourceMatch};
use causeway_api::{
    Action, FromRule, SpiffeMatch, SpiffeMatchType, SpiffeRulesConf, TargetRefKind,
};

use super::ComputeError;

/// The permission rules of one inbound from its effective MeshTrafficPermission rules
/// (most specific source first, as `effective` orders them).
pub(crate) fn configure(
    trust_domain: &str,
    inbound: &str,
    rules: &[FromRule],
) -> Result<Vec<PermissionRule>, ComputeError> {
    let mut denied = Vec::new();
    let mut by_source = Vec::new();
    let mut allowed = Vec::new();
    for r in rules {
        if r.conf.get("action").is_some() {
            by_source.extend(from_entry(trust_domain, r, inbound)?);
        }
        // Rules entries are for every caller: they live in the `Mesh`-source rule (the
        // more specific rules repeat them, merged in, and are not read for them).
        if r.source.kind != TargetRefKind::Mesh {
            continue;
        }
        let lists = SpiffeLists::of(r, inbound)?;
        let rule = |m: &SpiffeMatch, action: Action| PermissionRule {
            source: source_of(m),
            action,
            policies: r.policies.clone(),
        };
        denied.extend(lists.deny.iter().map(|m| rule(m, Action::Deny)));
        allowed.extend(lists.allow.iter().map(|m| rule(m, Action::Allow)));
        allowed.extend(
            lists
                .allow_with_shadow_deny
                .iter()
                .map(|m| rule(m, Action::AllowWithShadowDeny)),
        );
    }
    denied.extend(by_source);
    denied.extend(allowed);
    Ok(denied)
}

/// The `rules[].default` lists of a merged rule (empty when it has none).
#[derive(Default)]
struct SpiffeLists {
    allow: Vec<SpiffeMatch>,
    deny: Vec<SpiffeMatch>,
    allow_with_shadow_deny: Vec<SpiffeMatch>,
}

impl SpiffeLists {
    fn of(r: &FromRule, inbound: &str) -> Result<SpiffeLists, ComputeError> {
        let mut lists = serde_json::Map::new();
        for key in ["allow", "deny", "allowWithShadowDeny"] {
            if let Some(v) = r.conf.get(key) {
                lists.insert(key.to_owned(), v.clone());
            }
        }
        if lists.is_empty() {
            return Ok(SpiffeLists::default());
        }
        let conf: SpiffeRulesConf = serde_json::from_value(serde_json::Value::Object(lists))
            .map_err(|e| invalid(r, inbound, e))?;
        Ok(SpiffeLists {
            allow: conf.allow.unwrap_or_default(),
            deny: conf.deny.unwrap_or_default(),
            allow_with_shadow_deny: conf.allow_with_shadow_deny.unwrap_or_default(),
        })
    }
}

fn invalid(r: &FromRule, inbound: &str, e: serde_json::Error) -> ComputeError {
    ComputeError::Invalid {
        what: format!(
            "the merged MeshTrafficPermission of inbound {inbound} (policies {})",
            r.policies.join(", ")
        ),
        reason: e.to_string(),
    }
}

fn source_of(m: &SpiffeMatch) -> SourceMatch {
    let value = m.spiffe_id.value.clone();
    match m.spiffe_id.kind {
        SpiffeMatchType::Exact => SourceMatch::Spiffe { id: value },
        SpiffeMatchType::Prefix => SourceMatch::SpiffePrefix { prefix: value },
    }
}

/// The rule of one `from[]` source, if a certificate can prove it.
fn from_entry(
    trust_domain: &str,
    r: &FromRule,
    inbound: &str,
) -> Result<Option<PermissionRule>, ComputeError> {
    let action: Action =
        serde_json::from_value(r.conf["action"].clone()).map_err(|e| invalid(r, inbound, e))?;
    let Some(source) = super::caller_source(&r.source, trust_domain) else {
        return Ok(None);
    };
    Ok(Some(PermissionRule {
        source,
        action,
        policies: r.policies.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_traffic_permission/`: (case, zone, dataplane).
    /// The golden holds each inbound's permission rules and default action.
    const CASES: &[(&str, &str, &str)] = &[
        // Kuma's rules: deny lists first (a more specific policy cannot drop them), then
        // the from[] rules, then the allow lists; exact ids and prefixes.
        (
            "mesh_traffic_permission/spiffe-rules",
            "zone-a",
            "backend-1",
        ),
    ];

    #[test]
    fn golden_permissions() {
        check_goldens(CASES, |config| {
            let view: Vec<serde_json::Value> = config
                .inbounds
                .iter()
                .map(|ib| {
                    serde_json::json!({"port": ib.port, "service": ib.service,
                        "permissions": ib.permissions, "defaultAction": ib.default_action})
                })
                .collect();
            serde_yaml::to_string(&view).expect("views serialize")
        });
    }
}
