//! The policies that configure one service's traffic, for the web UI's service page,
//! found with the matcher the zones build proxy configs with
//! ([`causeway_api::effective`]) rather than by reading target refs: a policy counts
//! when it changes the config of the service's instances (proxy-wide, the inbounds that
//! serve it, their calls out) or of its callers' outbound to it.
//!
//! Callers are matched one per kind (the same inbound services, tags and labels): a
//! service called from ten thousand proxies costs as much as its distinct callers. A
//! policy that targets one caller Dataplane by name among many alike may be missed.
//!
//! [`policies_for`] is pure (Dataplanes and policies in, rows out) and unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use causeway_api::{DataplaneSpec, Proxy, Resource};
use serde_json::{Value, json};

/// Its instances' proxy-wide config (MeshTrace, MeshMetric, ...).
const PROXY_WIDE: &str = "its sidecars (proxy-wide)";
/// Its instances' inbounds for the service: the calls it receives.
const INBOUND: &str = "calls it receives";
/// Its instances' outbounds.
const CALLS_OUT: &str = "its calls out";
/// Its callers' outbound to it.
const CALLS_TO: &str = "calls to it";

/// Each policy among `policies` that configures traffic of `service`, as
/// `{kind, name, applies: [how, ...]}`, by kind and name.
pub(super) fn policies_for(
    service: &str,
    dataplanes: &[Resource],
    policies: &[Resource],
) -> Vec<Value> {
    let mut by_kind: BTreeMap<&str, Vec<Resource>> = BTreeMap::new();
    for p in policies {
        by_kind.entry(&p.kind).or_default().push(p.clone());
    }
    // The service's instances (with their ports for it) and one caller of each kind.
    let mut instances: Vec<(Proxy, Vec<u16>)> = Vec::new();
    let mut callers: BTreeMap<String, Proxy> = BTreeMap::new();
    for dp in dataplanes {
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else {
            continue;
        };
        let ports: Vec<u16> = spec
            .inbound
            .iter()
            .filter(|i| i.service == service)
            .map(|i| i.port)
            .collect();
        let calls = spec.outbound.iter().any(|o| o.service == service);
        if ports.is_empty() && !calls {
            continue;
        }
        let proxy = Proxy::from_dataplane(&spec, dp.origin.as_deref()).named(&dp.name, &dp.labels);
        if calls {
            let kind = serde_json::to_string(&(
                spec.inbound
                    .iter()
                    .map(|i| (&i.service, &i.tags))
                    .collect::<Vec<_>>(),
                &dp.labels,
                dp.origin.as_deref(),
            ))
            .unwrap_or_default();
            callers.entry(kind).or_insert_with(|| proxy.clone());
        }
        if !ports.is_empty() {
            instances.push((proxy, ports));
        }
    }

    let mut found: BTreeMap<(String, String), BTreeSet<&'static str>> = BTreeMap::new();
    let mut note = |kind: &str, names: &[String], how: &'static str| {
        for name in names {
            found
                .entry((kind.to_string(), name.clone()))
                .or_default()
                .insert(how);
        }
    };
    for (kind, ps) in &by_kind {
        for (proxy, ports) in &instances {
            let Ok(eff) = causeway_api::effective(kind, ps, proxy) else {
                continue;
            };
            if let Some(m) = &eff.proxy {
                note(kind, &m.policies, PROXY_WIDE);
            }
            for inbound in eff.inbounds.iter().filter(|i| ports.contains(&i.port)) {
                for rule in &inbound.rules {
                    note(kind, &rule.policies, INBOUND);
                }
            }
            for out in &eff.outbounds {
                for m in out.conf.iter().chain(out.routes.values()) {
                    note(kind, &m.policies, CALLS_OUT);
                }
            }
        }
        for proxy in callers.values() {
            let Ok(eff) = causeway_api::effective(kind, ps, proxy) else {
                continue;
            };
            for out in eff.outbounds.iter().filter(|o| o.service == service) {
                for m in out.conf.iter().chain(out.routes.values()) {
                    note(kind, &m.policies, CALLS_TO);
                }
            }
        }
    }
    found
        .into_iter()
        .map(|((kind, name), how)| json!({"kind": kind, "name": name, "applies": how}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(name: &str, service: &str, outbound: &[&str]) -> Resource {
        let outbound: Vec<Value> = outbound
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"port": 10001 + i, "service": s}))
            .collect();
        let mut r = Resource::new(
            "Dataplane",
            Some("default"),
            name,
            json!({"address": "10.0.0.1", "inbound": [{"port": 8000, "service": service}],
                   "outbound": outbound}),
        );
        r.origin = Some("zone-a".into());
        r
    }

    fn policy(kind: &str, name: &str, spec: Value) -> Resource {
        Resource::new(kind, Some("default"), name, spec)
    }

    #[test]
    fn a_service_is_configured_by_what_matches_its_instances_and_its_callers() {
        let dps = [
            dp("web-1", "web", &["backend"]),
            dp("web-2", "web", &["backend"]),
            dp("backend-1", "backend", &["db"]),
            dp("db-1", "db", &[]),
        ];
        let policies = [
            // Calls to backend, from everyone: backend's callers.
            policy(
                "MeshTimeout",
                "to-backend",
                json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"connectTimeout": "2s"}}]}),
            ),
            // Every call of every proxy: backend's calls out and its callers'.
            policy(
                "MeshTimeout",
                "everything",
                json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}),
            ),
            // Who may call backend: its inbound.
            policy(
                "MeshTrafficPermission",
                "web-to-backend",
                json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}}]}),
            ),
            // Only db's inbound: not backend's business.
            policy(
                "MeshTrafficPermission",
                "backend-to-db",
                json!({"targetRef": {"kind": "MeshService", "name": "db"}, "from": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"action": "Allow"}}]}),
            ),
        ];
        let rows = policies_for("backend", &dps, &policies);
        let how = |name: &str| -> Vec<String> {
            rows.iter()
                .find(|r| r["name"] == name)
                .map(|r| {
                    r["applies"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h.as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(how("to-backend"), [CALLS_TO]);
        assert_eq!(how("everything"), [CALLS_TO, CALLS_OUT]);
        assert_eq!(how("web-to-backend"), [INBOUND]);
        assert!(how("backend-to-db").is_empty(), "{rows:?}");
        assert_eq!(rows.len(), 3);
        assert!(policies_for("nobody", &dps, &policies).is_empty());
    }
}
