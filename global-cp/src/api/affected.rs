//! `GET /meshes/{mesh}/{plural}/{name}/affected`: the proxies a policy configures, for
//! the web UI's policy page ("which proxies each one affects"). Each Dataplane of the
//! mesh is matched with the same code the zones use to build its config
//! ([`causeway_api::effective`]), with that policy alone, so the answer cannot drift
//! from what the proxies get. The answer also carries the policy's warnings: fields the
//! proxies do not enforce ([`causeway_api::warnings`]), and why a policy that affects no
//! proxy has no effect (a service it names that no Dataplane serves or calls).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use causeway_api::Proxy;
use causeway_api::{DataplaneSpec, Resource, ResourceKey, Role, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, barrier, type_for};

/// The most Dataplanes named in an answer (the count is always complete).
const MAX_NAMED: usize = 1000;

#[derive(Deserialize, Default)]
pub(super) struct AffectedQuery {
    #[serde(default)]
    stale: bool,
}

pub(super) async fn affected(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(q): Query<AffectedQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Mesh)?;
    if !matches!(t.role, Role::Policy(_)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "type",
            format!("{} is not a policy kind: it affects no proxy", t.kind),
        ));
    }
    barrier(&st, q.stale).await?;
    let key = ResourceKey {
        kind: t.kind.to_string(),
        mesh: mesh.clone(),
        name: name.clone(),
    };
    let policy = st
        .store
        .get(&key)?
        .ok_or_else(|| ApiError::not_found(format!("{} {name:?} in mesh {mesh:?}", t.kind)))?;
    let dataplanes = st
        .store
        .list("Dataplane", &mesh, &[], None, usize::MAX)?
        .items;
    Ok(Json(affected_by(&policy, &dataplanes)))
}

/// The Dataplanes among `dataplanes` that `policy` configures, and its warnings.
fn affected_by(policy: &Resource, dataplanes: &[Resource]) -> Value {
    let mut count = 0;
    let mut items = Vec::new();
    let mut served = BTreeSet::new();
    let mut called = BTreeSet::new();
    for dp in dataplanes {
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else {
            continue;
        };
        served.extend(spec.inbound.iter().map(|i| i.service.clone()));
        called.extend(spec.outbound.iter().map(|o| o.service.clone()));
        let proxy = Proxy::from_dataplane(&spec, dp.origin.as_deref()).named(&dp.name, &dp.labels);
        let Ok(eff) = causeway_api::effective(&policy.kind, std::slice::from_ref(policy), &proxy)
        else {
            continue;
        };
        if eff.is_empty() {
            continue;
        }
        count += 1;
        if items.len() < MAX_NAMED {
            items.push(
                json!({"dataplane": dp.name, "zone": dp.origin.as_deref().unwrap_or("global")}),
            );
        }
    }
    let mut warnings: Vec<Value> = causeway_api::warnings(policy)
        .into_iter()
        .map(|w| json!({"field": w.field, "reason": w.reason}))
        .collect();
    if count == 0 {
        warnings.extend(unknown_services(policy, &served, &called));
        if warnings.is_empty() {
            warnings.push(json!({"field": "spec.targetRef",
                "reason": "selects no proxy of the mesh today: the policy has no effect until a Dataplane it targets registers"}));
        }
    }
    json!({"count": count, "items": items, "warnings": warnings})
}

/// Why a policy that affects nothing does so: each service its target refs name that no
/// Dataplane serves (`targetRef`, `from`) or calls (`to`).
fn unknown_services(
    policy: &Resource,
    served: &BTreeSet<String>,
    called: &BTreeSet<String>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut check = |field: String, target: &Value, known: &BTreeSet<String>, what: &str| {
        if target["kind"] == "MeshService"
            && let Some(name) = target["name"].as_str()
            && !known.contains(name)
        {
            out.push(json!({"field": format!("{field}.name"),
                "reason": format!("no Dataplane of the mesh {what} service {name:?}")}));
        }
    };
    check(
        "spec.targetRef".into(),
        &policy.spec["targetRef"],
        served,
        "serves",
    );
    for (section, known, what) in [("to", called, "calls"), ("from", served, "serves")] {
        for (i, rule) in policy.spec[section]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            check(
                format!("spec.{section}[{i}].targetRef"),
                &rule["targetRef"],
                known,
                what,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(name: &str, service: &str, outbound: &str) -> Resource {
        let mut r = Resource::new(
            "Dataplane",
            Some("default"),
            name,
            json!({"address": "10.0.0.1", "inbound": [{"port": 8000, "service": service}],
                   "outbound": [{"port": 10001, "service": outbound}]}),
        );
        r.origin = Some("zone-a".into());
        r
    }

    #[test]
    fn a_policy_affects_the_proxies_its_target_refs_select() {
        let dps = [
            dp("web-1", "web", "backend"),
            dp("backend-1", "backend", "db"),
        ];
        let timeout = |target: Value, to: Value| {
            Resource::new(
                "MeshTimeout",
                Some("default"),
                "t",
                json!({"targetRef": target, "to": [{"targetRef": to, "default": {"connectTimeout": "2s"}}]}),
            )
        };
        let names = |v: Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["dataplane"].as_str().unwrap().to_string())
                .collect()
        };
        let all = affected_by(
            &timeout(json!({"kind": "Mesh"}), json!({"kind": "Mesh"})),
            &dps,
        );
        assert_eq!(all["count"], 2);
        let web = affected_by(
            &timeout(
                json!({"kind": "MeshService", "name": "web"}),
                json!({"kind": "Mesh"}),
            ),
            &dps,
        );
        assert_eq!(names(web), ["web-1"]);
        let to_db = affected_by(
            &timeout(
                json!({"kind": "Mesh"}),
                json!({"kind": "MeshService", "name": "db"}),
            ),
            &dps,
        );
        assert_eq!(names(to_db), ["backend-1"], "only the caller of db");
        let none = affected_by(
            &timeout(
                json!({"kind": "MeshService", "name": "nobody"}),
                json!({"kind": "Mesh"}),
            ),
            &dps,
        );
        assert_eq!(none["count"], 0);
        assert_eq!(
            none["warnings"],
            json!([{"field": "spec.targetRef.name", "reason": "no Dataplane of the mesh serves service \"nobody\""}]),
            "a policy with no effect says why"
        );
        assert_eq!(all["warnings"], json!([]), "every field enforced");
        let to_nobody = affected_by(
            &timeout(
                json!({"kind": "Mesh"}),
                json!({"kind": "MeshService", "name": "ghost"}),
            ),
            &dps,
        );
        assert_eq!(
            to_nobody["warnings"][0]["field"], "spec.to[0].targetRef.name",
            "{to_nobody}"
        );
    }
}
