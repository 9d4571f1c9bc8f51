//! `GET /overview`: what the web UI's first page shows, in one read: the zones (online,
//! KDS lag, version, last seen), the meshes with their services, dataplanes and
//! policies, the drills running now, and the warnings an operator should act on (a zone
//! offline, a certificate near its end, a policy with fields the proxies do not
//! enforce). Any token may read it (the viewer role included); it holds no secret.
//!
//! [`summarize`] is pure (resources, zone statuses and the time in, JSON out), so the
//! counting and the warnings are tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Query, State};
use causeway_api::{DataplaneSpec, DrillSpec, Resource, Role, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ApiState, barrier};
use crate::command::IntermediateRecord;
use causeway_api::timestamp::rfc3339;

/// A certificate with less than this left is a warning.
const EXPIRY_WARNING_SECS: i64 = 7 * 24 * 3600;
/// The most resources of one kind and mesh read for the counts.
const MAX_PER_KIND: usize = 100_000;

#[derive(Deserialize, Default)]
pub(super) struct OverviewQuery {
    #[serde(default)]
    stale: bool,
}

/// Everything [`summarize`] reads.
#[derive(Default)]
pub(super) struct Inputs {
    /// Zone resources with `status` attached, as `GET /zones` lists them.
    pub zones: Vec<Value>,
    pub meshes: Vec<Resource>,
    pub dataplanes: Vec<Resource>,
    /// Every policy of every mesh.
    pub policies: Vec<Resource>,
    pub drills: Vec<Resource>,
    pub intermediates: Vec<IntermediateRecord>,
    /// Each mesh's root CA: the mesh and when the certificate expires (Unix seconds).
    pub root_cas: Vec<(String, i64)>,
}

pub(super) async fn overview(
    State(st): State<ApiState>,
    Query(q): Query<OverviewQuery>,
) -> ApiResult<Json<Value>> {
    barrier(&st, q.stale).await?;
    let store = &st.store;
    let all = |kind: &str, mesh: &str| -> ApiResult<Vec<Resource>> {
        Ok(store.list(kind, mesh, &[], None, MAX_PER_KIND)?.items)
    };
    let mut inputs = Inputs {
        meshes: all("Mesh", "")?,
        drills: all("Drill", "")?,
        intermediates: store.intermediates()?,
        ..Inputs::default()
    };
    for mesh in &inputs.meshes {
        if let Some(ca) = store.mesh_ca(&mesh.name)?
            && let Ok(info) = causeway_pki::cert_info(&ca.cert_pem)
        {
            inputs.root_cas.push((mesh.name.clone(), info.not_after));
        }
    }
    let mut zones: Vec<Value> = all("Zone", "")?
        .into_iter()
        .map(|z| serde_json::to_value(z).expect("resources serialize"))
        .collect();
    super::zones::attach_status(&st, &mut zones)?;
    inputs.zones = zones;
    for mesh in &inputs.meshes {
        inputs.dataplanes.extend(all("Dataplane", &mesh.name)?);
        for t in causeway_api::types() {
            if t.scope == Scope::Mesh && matches!(t.role, Role::Policy(_)) {
                inputs.policies.extend(all(t.kind, &mesh.name)?);
            }
        }
    }
    let now = time::OffsetDateTime::now_utc();
    Ok(Json(summarize(&inputs, now)))
}

/// The overview of `inputs` at `now`.
pub(super) fn summarize(inputs: &Inputs, now: time::OffsetDateTime) -> Value {
    let mut warnings: Vec<Value> = Vec::new();
    let mut warn = |kind: &str, subject: String, text: String| {
        warnings.push(json!({"kind": kind, "subject": subject, "text": text}));
    };

    let mut zones = Vec::new();
    for z in &inputs.zones {
        let name = z["name"].as_str().unwrap_or_default().to_string();
        let s = &z["status"];
        let online = s["online"].as_bool().unwrap_or(false);
        if !online {
            let seen = s["lastSeen"].as_str().map_or_else(
                || "never connected".to_string(),
                |t| format!("last seen {t}"),
            );
            warn(
                "zone-offline",
                name.clone(),
                format!("zone {name} is offline ({seen})"),
            );
        }
        let nacking = s["proxiesNacking"].as_u64().unwrap_or(0);
        if online && nacking > 0 {
            warn(
                "proxies-nacking",
                name.clone(),
                format!(
                    "zone {name}: {nacking} {} rejecting {} config (NACK); the dataplane's page says why",
                    if nacking == 1 {
                        "proxy is"
                    } else {
                        "proxies are"
                    },
                    if nacking == 1 { "its" } else { "their" }
                ),
            );
        }
        zones.push(json!({
            "name": name,
            "online": online,
            "lag": s["lag"].as_u64(),
            "version": s["version"].as_str(),
            "lastSeen": s["lastSeen"].as_str(),
            "dataplanes": s["dataplanes"].as_u64().unwrap_or(0),
            "connectedProxies": s["connectedProxies"].as_u64().unwrap_or(0),
        }));
    }

    // Per mesh: its services (from its dataplanes' inbounds), dataplanes and policies.
    #[derive(Default)]
    struct Counts {
        services: BTreeSet<String>,
        dataplanes: usize,
        policies: BTreeMap<String, usize>,
    }
    let mut per_mesh: BTreeMap<&str, Counts> = inputs
        .meshes
        .iter()
        .map(|m| (m.name.as_str(), Counts::default()))
        .collect();
    for dp in &inputs.dataplanes {
        let Some(c) = dp.mesh.as_deref().and_then(|m| per_mesh.get_mut(m)) else {
            continue;
        };
        c.dataplanes += 1;
        if let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) {
            c.services
                .extend(spec.inbound.into_iter().map(|i| i.service));
        }
    }
    for p in &inputs.policies {
        if let Some(c) = p.mesh.as_deref().and_then(|m| per_mesh.get_mut(m)) {
            *c.policies.entry(p.kind.clone()).or_default() += 1;
        }
        let unenforced = causeway_api::warnings(p);
        if !unenforced.is_empty() {
            let subject = format!("{}/{}/{}", p.kind, p.mesh.as_deref().unwrap_or(""), p.name);
            let fields: Vec<&str> = unenforced.iter().map(|w| w.field.as_str()).collect();
            warn(
                "unenforced",
                subject.clone(),
                format!(
                    "{subject} has fields the proxies do not enforce: {}",
                    fields.join(", ")
                ),
            );
        }
    }
    let meshes: Vec<Value> = inputs
        .meshes
        .iter()
        .map(|m| {
            let c = &per_mesh[m.name.as_str()];
            json!({
                "name": m.name,
                "mtls": m.spec["mtls"]["mode"].as_str().unwrap_or(if m.spec.get("mtls").is_some() { "Strict" } else { "Off" }),
                "services": c.services.len(),
                "dataplanes": c.dataplanes,
                "policies": c.policies.values().sum::<usize>(),
                "policiesByKind": c.policies,
            })
        })
        .collect();

    let now_unix = now.unix_timestamp();
    let mut expiry = |subject: String, what: String, not_after: i64| {
        let left = not_after - now_unix;
        if left >= EXPIRY_WARNING_SECS {
            return;
        }
        let text = if left <= 0 {
            format!("{what} expired at {}", rfc3339(not_after))
        } else {
            format!(
                "{what} expires at {} (in {} h)",
                rfc3339(not_after),
                left / 3600
            )
        };
        warn("certificate-expiry", subject, text);
    };
    for (mesh, not_after) in &inputs.root_cas {
        expiry(mesh.clone(), format!("mesh {mesh}'s root CA"), *not_after);
    }
    for i in inputs.intermediates.iter().filter(|i| !i.revoked) {
        expiry(
            format!("{}/{}", i.zone, i.mesh),
            format!("zone {}'s intermediate CA for mesh {}", i.zone, i.mesh),
            i.not_after,
        );
    }

    let drills: Vec<Value> = inputs
        .drills
        .iter()
        .filter_map(|d| {
            let spec = serde_json::from_value::<DrillSpec>(d.spec.clone()).ok()?;
            (now < spec.end()).then(|| {
                json!({
                    "name": d.name,
                    "zone": spec.zone,
                    "state": if spec.active_at(now) { "running" } else { "starting" },
                    "startsAt": spec.starts_at.unix_timestamp(),
                    "endsAt": spec.end().unix_timestamp(),
                })
            })
        })
        .collect();

    json!({
        "zones": zones,
        "meshes": meshes,
        "totals": {
            "zones": inputs.zones.len(),
            "zonesOnline": zones.iter().filter(|z| z["online"] == true).count(),
            "meshes": inputs.meshes.len(),
            "services": per_mesh.values().map(|c| c.services.len()).sum::<usize>(),
            "dataplanes": inputs.dataplanes.len(),
            "policies": inputs.policies.len(),
        },
        "drills": drills,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str, mesh: Option<&str>, name: &str, spec: Value) -> Resource {
        let mut r = Resource::new(kind, mesh, name, spec);
        r.version = Some(1);
        r
    }

    fn dataplane(mesh: &str, name: &str, services: &[&str]) -> Resource {
        let inbound: Vec<Value> = services
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"port": 8000 + i, "service": s}))
            .collect();
        res(
            "Dataplane",
            Some(mesh),
            name,
            json!({"address": "10.0.0.1", "inbound": inbound}),
        )
    }

    #[test]
    fn the_overview_counts_per_mesh_and_warns_about_what_needs_an_operator() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let inputs = Inputs {
            zones: vec![
                json!({"name": "zone-a", "status": {"online": true, "lag": 0, "version": "0.1.0", "lastSeen": "2027-01-15T08:00:00Z", "dataplanes": 2, "proxiesNacking": 2}}),
                json!({"name": "zone-b", "status": {"online": false, "lastSeen": "2027-01-15T07:00:00Z"}}),
                json!({"name": "zone-c", "status": {"online": false}}),
            ],
            meshes: vec![
                res(
                    "Mesh",
                    None,
                    "default",
                    json!({"mtls": {"mode": "Permissive"}}),
                ),
                res("Mesh", None, "payments", json!({})),
            ],
            dataplanes: vec![
                dataplane("default", "web-1", &["web"]),
                dataplane("default", "web-2", &["web"]),
                dataplane("default", "backend-1", &["backend", "backend-admin"]),
                dataplane("payments", "ledger-1", &["ledger"]),
            ],
            policies: vec![
                res(
                    "MeshTimeout",
                    Some("default"),
                    "t",
                    json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}),
                ),
                res(
                    "MeshTimeout",
                    Some("payments"),
                    "t",
                    json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}),
                ),
            ],
            drills: Vec::new(),
            intermediates: vec![
                IntermediateRecord {
                    mesh: "default".into(),
                    zone: "zone-a".into(),
                    sha256: "x".into(),
                    not_after: 1_800_000_000 + 3 * 24 * 3600,
                    revoked: false,
                },
                IntermediateRecord {
                    mesh: "default".into(),
                    zone: "zone-b".into(),
                    sha256: "y".into(),
                    not_after: 1_800_000_000 + 300 * 24 * 3600,
                    revoked: false,
                },
            ],
            root_cas: vec![
                ("default".into(), 1_800_000_000 + 5 * 365 * 24 * 3600),
                ("payments".into(), 1_800_000_000 - 3600),
            ],
        };
        let v = summarize(&inputs, now);
        assert_eq!(
            v["totals"],
            json!({"zones": 3, "zonesOnline": 1, "meshes": 2, "services": 4, "dataplanes": 4, "policies": 2})
        );
        assert_eq!(v["meshes"][0]["name"], "default");
        assert_eq!(v["meshes"][0]["mtls"], "Permissive");
        assert_eq!(v["meshes"][0]["services"], 3);
        assert_eq!(v["meshes"][0]["dataplanes"], 3);
        assert_eq!(v["meshes"][0]["policiesByKind"]["MeshTimeout"], 1);
        assert_eq!(v["meshes"][1]["mtls"], "Off");
        let texts: Vec<&str> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["text"].as_str().unwrap())
            .collect();
        assert!(
            texts.contains(&"zone zone-b is offline (last seen 2027-01-15T07:00:00Z)"),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"zone zone-c is offline (never connected)"),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t
                .starts_with("zone zone-a's intermediate CA for mesh default expires at")
                && t.ends_with("(in 72 h)")),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"mesh payments's root CA expired at 2027-01-15T07:00:00Z"),
            "{texts:?}"
        );
        assert_eq!(
            texts.len(),
            5,
            "the far expiry and enforced policies are no warning: {texts:?}"
        );
    }
}
