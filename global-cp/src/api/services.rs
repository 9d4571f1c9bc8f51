//! `GET /meshes/{mesh}/services[/{name}]`: a mesh's services as its Dataplanes' inbounds
//! declare them, with their instances by zone: what the web UI's services pages show,
//! computed in one read of the store instead of a client paging through every Dataplane.
//!
//! [`services`] is pure (Dataplanes in, rows out) and unit-tested.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use causeway_api::instance_health;
use causeway_api::{DataplaneSpec, Resource, Role, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

use super::zones::require_mesh;
use super::{ApiError, ApiResult, ApiState, barrier};

/// The most Dataplanes of one mesh read.
const MAX_DATAPLANES: usize = 1_000_000;

#[derive(Deserialize, Default)]
pub(super) struct ServicesQuery {
    #[serde(default)]
    stale: bool,
}

fn dataplanes(st: &ApiState, mesh: &str) -> ApiResult<Vec<Resource>> {
    require_mesh(st, mesh)?;
    Ok(st
        .store
        .list("Dataplane", mesh, &[], None, MAX_DATAPLANES)?
        .items)
}

/// `GET /meshes/{mesh}/services`: every service with its instance count per zone.
pub(super) async fn list(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    Query(q): Query<ServicesQuery>,
) -> ApiResult<Json<Value>> {
    barrier(&st, q.stale).await?;
    let dps = dataplanes(&st, &mesh)?;
    let items: Vec<Value> = services(&dps)
        .into_iter()
        .map(|(service, instances)| {
            let mut by_zone: BTreeMap<&str, usize> = BTreeMap::new();
            for i in &instances {
                *by_zone.entry(i.zone).or_default() += 1;
            }
            json!({"service": service, "instances": instances.len(), "zones": by_zone})
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /meshes/{mesh}/services/{name}`: one service's instances (Dataplane, zone,
/// address, ports) with their health as their zone's callers report it
/// ([`causeway_api::instance_health`]), and the policies that configure its traffic
/// ([`super::service_policies`]).
pub(super) async fn get(
    State(st): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
    Query(q): Query<ServicesQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    barrier(&st, q.stale).await?;
    let dps = dataplanes(&st, &mesh)?;
    let all = services(&dps);
    let Some(instances) = all.get(name.as_str()) else {
        return Err(ApiError::not_found(format!(
            "service {name:?} in mesh {mesh:?} (no Dataplane serves it)"
        )));
    };
    let (reports, _) = super::stats::zone_reports(&st, &mesh, &headers).await?;
    let items: Vec<Value> = instances
        .iter()
        .map(|i| {
            let report = reports
                .iter()
                .find(|r| r.zone == i.zone)
                .map(|r| r.out_endpoints.as_slice());
            let health = instance_health::health(&name, &i.address, &i.ports, i.zone, report);
            json!({"dataplane": i.dataplane, "zone": i.zone, "address": i.address,
                   "ports": i.ports, "health": health})
        })
        .collect();
    let mut policies = Vec::new();
    for t in causeway_api::types() {
        if t.scope == Scope::Mesh && matches!(t.role, Role::Policy(_)) {
            policies.extend(
                st.store
                    .list(t.kind, &mesh, &[], None, MAX_DATAPLANES)?
                    .items,
            );
        }
    }
    let policies = super::service_policies::policies_for(&name, &dps, &policies);
    Ok(Json(
        json!({"service": name, "mesh": mesh, "instances": items, "policies": policies}),
    ))
}

/// One instance of a service.
#[derive(Debug, PartialEq)]
pub(super) struct Instance<'a> {
    pub dataplane: &'a str,
    /// The zone that registered it (`global` for one written through this API).
    pub zone: &'a str,
    pub address: String,
    /// Its inbound ports for the service.
    pub ports: Vec<u16>,
}

/// Services by name, each with its instances in Dataplane name order. A Dataplane
/// counts once per service it serves, however many inbounds it has for it.
pub(super) fn services(dps: &[Resource]) -> BTreeMap<String, Vec<Instance<'_>>> {
    let mut out: BTreeMap<String, Vec<Instance<'_>>> = BTreeMap::new();
    for dp in dps {
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else {
            continue;
        };
        let mut mine: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
        for inbound in &spec.inbound {
            mine.entry(&inbound.service).or_default().push(inbound.port);
        }
        for (service, ports) in mine {
            out.entry(service.to_string()).or_default().push(Instance {
                dataplane: &dp.name,
                zone: dp.origin.as_deref().unwrap_or("global"),
                address: spec.address.clone(),
                ports,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(name: &str, zone: &str, services: &[&str]) -> Resource {
        let inbound: Vec<Value> = services
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"port": 8000 + i, "service": s}))
            .collect();
        let mut r = Resource::new(
            "Dataplane",
            Some("default"),
            name,
            json!({"address": "10.0.0.1", "inbound": inbound}),
        );
        r.origin = Some(zone.into());
        r
    }

    #[test]
    fn services_group_instances_by_what_their_inbounds_serve() {
        let dps = vec![
            dp("backend-1", "zone-a", &["backend", "backend", "admin"]),
            dp("backend-2", "zone-b", &["backend"]),
            dp("web-1", "zone-a", &["web"]),
        ];
        let s = services(&dps);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["admin", "backend", "web"]);
        let backend: Vec<(&str, &str)> =
            s["backend"].iter().map(|i| (i.dataplane, i.zone)).collect();
        assert_eq!(backend, [("backend-1", "zone-a"), ("backend-2", "zone-b")]);
        assert_eq!(
            s["backend"][0].ports,
            [8000, 8001],
            "one instance, both its ports"
        );
    }
}
