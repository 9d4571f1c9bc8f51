//! `GET /meshes/{mesh}/dataplanes/{name}/inspect`: why a proxy is configured the way it
//! is. [`inspect`] is the zone's half, a pure function of the mesh's resources (the
//! same inputs and the same matching as [`crate::proxy_config::compute`]);
//! [`attach_proxy`] adds what the proxy itself reported over DDS (ACK/NACK,
//! certificate, endpoints). The API handler only looks the inputs up.
//!
//! Why the zone answers (and not the sidecar's admin port, nor global): the zone holds
//! every input of the computation and the proxy's DDS stream, so one place explains
//! both what was decided and what the proxy made of it. Global has the policies but
//! neither the proxy's stream nor its zone's view of endpoints.

use std::collections::BTreeSet;

use causeway_api::inspect::{
    ComputedConfig, DataplaneInspection, InboundInspection, KindMerged, KindOutbound, KindRules,
    OutboundInspection, PolicyNote, PolicyWarnings, ProxyReport, ProxyState,
};
use causeway_api::{DataplaneSpec, Proxy, Resource, TargetRef};
use serde_json::Value;

use crate::proxy_config::{self, MeshInputs};

/// The proxy as policy matching sees it: the same as `compute` builds (named and
/// labelled, and its destinations' routes).
fn matching_proxy(inputs: &MeshInputs, dataplane: &Resource, spec: &DataplaneSpec) -> Proxy {
    proxy_config::matching_proxy(inputs, dataplane, spec).0
}

/// What the policies of the mesh do to `dataplane` (a Dataplane of `inputs`' mesh),
/// and the version of the config computed for it; without the proxy's side (see
/// [`attach_proxy`]).
pub(crate) fn inspect(inputs: &MeshInputs, dataplane: &Resource) -> DataplaneInspection {
    let mut out = DataplaneInspection {
        mesh: dataplane.mesh.clone().unwrap_or_default(),
        name: dataplane.name.clone(),
        zone: inputs.zone.clone(),
        config: match proxy_config::compute(inputs, dataplane) {
            Ok(c) => ComputedConfig {
                version: Some(c.version),
                error: None,
            },
            Err(e) => ComputedConfig {
                version: None,
                error: Some(e.to_string()),
            },
        },
        ..DataplaneInspection::default()
    };
    let mut spec: DataplaneSpec = match serde_json::from_value(dataplane.spec.clone()) {
        Ok(s) => s,
        // The store validates Dataplanes; compute's error above says what is wrong.
        Err(_) => return out,
    };
    let vips = proxy_config::with_implicit_outbounds(inputs, &mut spec);
    let proxy = matching_proxy(inputs, dataplane, &spec);
    out.inbounds = spec
        .inbound
        .iter()
        .map(|ib| InboundInspection {
            port: ib.port,
            service: ib.service.clone(),
            policies: Vec::new(),
        })
        .collect();
    out.outbounds = spec
        .outbound
        .iter()
        .zip(&vips)
        .map(|(ob, vip)| OutboundInspection {
            port: ob.port,
            vip: vip.as_ref().map(|(ip, _)| *ip),
            zone: vip.as_ref().and_then(|(_, zone)| zone.clone()),
            service: ob.service.clone(),
            policies: Vec::new(),
            destinations: Vec::new(),
        })
        .collect();
    for t in causeway_api::types().iter().filter(|t| t.is_policy()) {
        let policies: Vec<Resource> = inputs
            .policies
            .iter()
            .filter(|p| p.kind == t.kind)
            .cloned()
            .collect();
        if policies.is_empty() {
            continue;
        }
        let eff = causeway_api::effective(t.kind, &policies, &proxy)
            .expect("the registry says this is a policy kind");
        let mut matched = BTreeSet::new();
        if let Some(m) = eff.proxy {
            matched.extend(m.policies.iter().cloned());
            out.proxy_policies.push(KindMerged {
                kind: t.kind.into(),
                merged: m,
            });
        }
        for (i, ib) in eff.inbounds.into_iter().enumerate() {
            if ib.rules.is_empty() {
                continue;
            }
            matched.extend(ib.rules.iter().flat_map(|r| r.policies.iter().cloned()));
            if let Some(slot) = out.inbounds.get_mut(i) {
                slot.policies.push(KindRules {
                    kind: t.kind.into(),
                    rules: ib.rules,
                });
            }
        }
        for (i, ob) in eff.outbounds.into_iter().enumerate() {
            if ob.conf.is_none() && ob.routes.is_empty() {
                continue;
            }
            matched.extend(ob.conf.iter().flat_map(|m| m.policies.iter().cloned()));
            matched.extend(ob.routes.values().flat_map(|m| m.policies.iter().cloned()));
            if let Some(slot) = out.outbounds.get_mut(i) {
                slot.policies.push(KindOutbound {
                    kind: t.kind.into(),
                    conf: ob.conf,
                    routes: ob.routes,
                });
            }
        }
        let ignored: BTreeSet<&str> = eff.ignored.iter().map(|p| p.name.as_str()).collect();
        out.ignored
            .extend(eff.ignored.iter().map(|p| PolicyNote::ignored(t.kind, p)));
        for p in &policies {
            if matched.contains(&p.name) {
                let warnings = causeway_api::warnings(p);
                if !warnings.is_empty() {
                    out.warnings.push(PolicyWarnings {
                        kind: t.kind.into(),
                        name: p.name.clone(),
                        warnings,
                    });
                }
            } else if !ignored.contains(p.name.as_str()) {
                out.unmatched.push(PolicyNote {
                    kind: t.kind.into(),
                    name: p.name.clone(),
                    reason: unmatched_reason(p, &inputs.zone, &spec),
                });
            }
        }
    }
    out
}

/// Why a policy selects nothing of a proxy, in terms the operator can compare: what it
/// targets, next to what the proxy is.
fn unmatched_reason(p: &Resource, zone: &str, spec: &DataplaneSpec) -> String {
    if let Some(origin) = p.origin.as_deref()
        && origin != "global"
        && origin != zone
    {
        return format!("it was written in zone {origin} and applies only to proxies there");
    }
    let target = |v: &Value| -> String {
        serde_json::from_value::<TargetRef>(v.clone())
            .map(|t| t.to_string())
            .unwrap_or_else(|_| v.to_string())
    };
    let top = p
        .spec
        .get("targetRef")
        .map_or_else(|| "Mesh".to_owned(), target);
    let mut targets = Vec::new();
    for section in ["to", "from"] {
        let refs: Vec<String> = p
            .spec
            .get(section)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("targetRef"))
            .map(target)
            .collect();
        if !refs.is_empty() {
            targets.push(format!("{section}[]: {}", refs.join(", ")));
        }
    }
    let list = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let serves = list(spec.inbound.iter().map(|i| i.service.as_str()).collect());
    let calls = list(spec.outbound.iter().map(|o| o.service.as_str()).collect());
    let targets = if targets.is_empty() {
        String::new()
    } else {
        format!("; {}", targets.join("; "))
    };
    format!(
        "no part of it matches this proxy (targetRef: {top}{targets}); the proxy serves \
         {serves} and calls {calls}"
    )
}

/// Adds the proxy's side: its stream's state, and from its last report its
/// certificate and each destination's endpoints (joined to the outbounds by port).
pub(crate) fn attach_proxy(
    out: &mut DataplaneInspection,
    mut state: ProxyState,
    report: Option<&ProxyReport>,
) {
    if let Some(r) = report {
        state.certificate = r.certificate.clone();
        for ob in &mut out.outbounds {
            ob.destinations = r
                .destinations
                .iter()
                .filter(|d| d.port == ob.port && d.vip == ob.vip)
                .cloned()
                .collect();
        }
    }
    out.proxy = Some(state);
}

#[cfg(test)]
mod tests {
    use causeway_api::inspect::{
        CertificateReport, ConfigReply, DestinationReport, EndpointReport,
    };
    use serde_json::json;

    use super::*;

    fn resource(v: Value) -> Resource {
        let r: Resource = serde_json::from_value(v).expect("a resource");
        causeway_api::validate(&r).expect("a valid resource");
        r
    }

    fn inputs(policies: Vec<Value>) -> MeshInputs {
        MeshInputs {
            zone: "zone-a".into(),
            mesh: Some(resource(
                json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
            )),
            dataplanes: vec![web()],
            policies: policies.into_iter().map(resource).collect(),
            ..MeshInputs::default()
        }
    }

    fn web() -> Resource {
        resource(
            json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
                "address": "127.0.0.1",
                "inbound": [{"port": 10001, "service": "web", "protocol": "http"}],
                "outbound": [{"port": 20001, "service": "backend"}, {"port": 20002, "service": "db"}],
            }}),
        )
    }

    fn timeout(name: &str, to: &str, conf: Value) -> Value {
        json!({"type": "MeshTimeout", "mesh": "default", "name": name, "origin": "global", "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": to}, "default": conf}],
        }})
    }

    #[test]
    fn each_destination_lists_the_policies_that_matched_it_and_their_merge() {
        let out = inspect(
            &inputs(vec![
                timeout("a-backend", "backend", json!({"connectionTimeout": "2s"})),
                timeout(
                    "b-backend",
                    "backend",
                    json!({"connectionTimeout": "3s", "idleTimeout": "1m"}),
                ),
                json!({"type": "MeshRetry", "mesh": "default", "name": "retry-db", "spec": {
                    "targetRef": {"kind": "MeshService", "name": "web"},
                    "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                            "default": {"http": {"numRetries": 4}}}],
                }}),
            ]),
            &web(),
        );
        assert_eq!(
            (out.mesh.as_str(), out.name.as_str(), out.zone.as_str()),
            ("default", "web-1", "zone-a")
        );
        assert!(out.config.version.is_some(), "{:?}", out.config);
        let backend = &out.outbounds[0];
        assert_eq!((backend.port, backend.service.as_str()), (20001, "backend"));
        assert_eq!(backend.policies.len(), 1);
        assert_eq!(backend.policies[0].kind, "MeshTimeout");
        let m = backend.policies[0].conf.as_ref().expect("merged");
        // Equally specific: the first name wins, so it merges last.
        assert_eq!(
            m.policies,
            ["b-backend", "a-backend"],
            "lowest priority first"
        );
        assert_eq!(
            m.conf["connectionTimeout"], "2s",
            "a-backend wins where both set it"
        );
        assert_eq!(
            m.conf["idleTimeout"], "1m",
            "what only b-backend sets stays"
        );
        let db = &out.outbounds[1];
        assert_eq!(db.policies.len(), 1);
        assert_eq!(db.policies[0].kind, "MeshRetry");
        assert_eq!(
            db.policies[0].conf.as_ref().expect("merged").policies,
            ["retry-db"]
        );
        assert!(out.unmatched.is_empty(), "{:?}", out.unmatched);
        assert!(out.proxy.is_none(), "no proxy side before attach_proxy");
    }

    /// A MeshTimeout for a MeshHTTPRoute shows on the destination the route routes,
    /// under the route's name, merged over the destination's.
    #[test]
    fn a_policy_for_a_route_shows_under_the_route() {
        let out = inspect(
            &inputs(vec![
                json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "api", "spec": {
                    "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "default": {}}]}]}}),
                timeout("a-backend", "backend", json!({"connectionTimeout": "2s"})),
                json!({"type": "MeshTimeout", "mesh": "default", "name": "api-timeout", "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "api"},
                            "default": {"http": {"requestTimeout": "2s"}}}]}}),
            ]),
            &web(),
        );
        let backend = &out.outbounds[0];
        let timeouts = backend
            .policies
            .iter()
            .find(|k| k.kind == "MeshTimeout")
            .expect("MeshTimeout on backend");
        let route = timeouts.routes.get("api").expect("the route's entry");
        assert_eq!(route.policies, ["a-backend", "api-timeout"]);
        assert_eq!(route.conf["http"]["requestTimeout"], "2s");
        assert_eq!(route.conf["connectionTimeout"], "2s");
        assert!(
            backend.policies.iter().any(|k| k.kind == "MeshHTTPRoute"),
            "{backend:?}"
        );
    }

    #[test]
    fn a_policy_that_selects_nothing_here_is_listed_with_what_it_targets() {
        let out = inspect(
            &inputs(vec![
                timeout("to-cache", "cache", json!({"connectionTimeout": "2s"})),
                json!({"type": "MeshRetry", "mesh": "default", "name": "other-zone", "origin": "zone-b", "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                            "default": {"http": {"numRetries": 4}}}],
                }}),
            ]),
            &web(),
        );
        assert!(out.outbounds.iter().all(|o| o.policies.is_empty()));
        let notes: Vec<(&str, &str)> = out
            .unmatched
            .iter()
            .map(|n| (n.kind.as_str(), n.name.as_str()))
            .collect();
        assert_eq!(
            notes,
            [("MeshTimeout", "to-cache"), ("MeshRetry", "other-zone")]
        );
        assert_eq!(
            out.unmatched[0].reason,
            "no part of it matches this proxy (targetRef: Mesh; to[]: MeshService cache); \
             the proxy serves web and calls backend, db"
        );
        assert_eq!(
            out.unmatched[1].reason,
            "it was written in zone zone-b and applies only to proxies there"
        );
    }

    #[test]
    fn inbound_policies_are_listed_per_source() {
        let out = inspect(
            &inputs(vec![
                json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-frontend", "spec": {
                    "targetRef": {"kind": "MeshService", "name": "web"},
                    "from": [{"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Allow"}}],
                }}),
            ]),
            &web(),
        );
        let ib = &out.inbounds[0];
        assert_eq!((ib.port, ib.service.as_str()), (10001, "web"));
        assert_eq!(ib.policies[0].kind, "MeshTrafficPermission");
        let rule = &ib.policies[0].rules[0];
        assert_eq!(rule.source.to_string(), "MeshService frontend");
        assert_eq!(rule.policies, ["allow-frontend"]);
        assert_eq!(rule.conf["action"], "Allow");
    }

    #[test]
    fn a_config_that_cannot_be_computed_says_why() {
        let mut inputs = inputs(vec![]);
        inputs.mesh = None;
        let out = inspect(&inputs, &web());
        assert_eq!(out.config.version, None);
        assert_eq!(
            out.config.error.as_deref(),
            Some("mesh \"default\" is not known in this zone (yet)")
        );
    }

    #[test]
    fn the_proxys_report_joins_its_outbounds_by_port() {
        let mut out = inspect(&inputs(vec![]), &web());
        let endpoint = EndpointReport {
            address: "127.0.0.1".into(),
            port: 30001,
            zone: "zone-a".into(),
            sni: None,
            healthy: true,
            health_check: None,
            ejection: None,
            connect_failures: 0,
            outlier_ejections: 0,
        };
        let report = ProxyReport {
            certificate: Some(CertificateReport {
                identity: "spiffe://default/web".into(),
                not_after: 2_000_000_000,
                renew_at: 1_900_000_000,
                issuer_sha256: None,
                trusted_sha256: vec![],
            }),
            destinations: vec![DestinationReport {
                port: 20002,
                vip: None,
                service: "db".into(),
                backend: None,
                endpoints: vec![endpoint],
            }],
        };
        let state = ProxyState {
            nack: Some(ConfigReply {
                version: "v2".into(),
                at_unix_ms: 5,
                reason: Some("unknown field".into()),
            }),
            ..ProxyState::default()
        };
        attach_proxy(&mut out, state, Some(&report));
        assert!(out.outbounds[0].destinations.is_empty());
        assert_eq!(out.outbounds[1].destinations, report.destinations);
        let proxy = out.proxy.expect("attached");
        assert_eq!(proxy.certificate, report.certificate);
        assert_eq!(
            proxy.nack.and_then(|n| n.reason).as_deref(),
            Some("unknown field")
        );
    }
}
