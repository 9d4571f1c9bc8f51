//! `GET /meshes/{mesh}/{plural}/{name}/affected`: the proxies a policy configures, for
//! the web UI's policy page ("which proxies each one affects"). Each Dataplane of the
//! mesh is matched with the same code the zones use to build its config
//! ([`causeway_api::effective`]), with that policy alone, so the answer cannot drift
//! from what the proxies get.

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

/// The Dataplanes among `dataplanes` that `policy` configures.
fn affected_by(policy: &Resource, dataplanes: &[Resource]) -> Value {
    let mut count = 0;
    let mut items = Vec::new();
    for dp in dataplanes {
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else {
            continue;
        };
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
    json!({"count": count, "items": items})
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
    }
}
