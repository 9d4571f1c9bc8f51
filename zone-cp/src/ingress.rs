//! Zone ingresses: what each one routes, and what it offers other zones. Both are a
//! pure function of the zone's dataplanes in the mesh, like proxy configs.
//!
//! An ingress never terminates the mesh's mTLS: it routes a connection by the SNI of its
//! ClientHello to a sidecar inbound, which terminates it. `service.mesh.causeway` reaches
//! any endpoint of the service; `<id>.service.mesh.causeway` one endpoint, so sidecars in
//! other zones can balance requests per endpoint rather than per ingress connection. A
//! service is offered once per set of tags its endpoints have (their inbound's, and
//! their port's: [`PORT_TAG`], [`PORT_NAME_TAG`]), so other zones take subsets and ports
//! of it as this zone does.

use std::collections::BTreeMap;

use causeway_api::proxy_config::{IngressConfig, IngressTarget, endpoint_sni, ingress_sni};
use causeway_api::{AvailableService, DataplaneSpec, PORT_NAME_TAG, PORT_TAG, Protocol};
use sha2::Digest as _;

use crate::proxy_config::{ComputeError, MeshInputs, decode};

/// The opaque id of a local endpoint in SNI: stable for the same address and port,
/// revealing neither.
pub fn endpoint_id(address: &str, port: u16) -> String {
    let digest = sha2::Sha256::digest(format!("{address}:{port}").as_bytes());
    format!("e{}", &hex::encode(&digest[..6]))
}

/// Why, and how, an ingress refuses all traffic (a failover drill on its zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What it logs.
    pub reason: String,
    /// As a dead network: no answer at all (a blackhole drill), rather than closing.
    pub silent: bool,
}

/// The routes of ingress `name` and the services it offers other zones.
pub fn compute(
    inputs: &MeshInputs,
    mesh: &str,
    name: &str,
    refusal: Option<Refusal>,
) -> Result<(IngressConfig, Vec<AvailableService>), ComputeError> {
    if inputs.mesh.is_none() {
        return Err(ComputeError::NoMesh(mesh.to_string()));
    }
    // (service, tags) -> (protocol, endpoints); the tags are the inbound's own and its
    // port's, so other zones pick subsets and ports as this zone does.
    type Offer = (Protocol, Vec<IngressTarget>);
    let mut services: BTreeMap<(String, BTreeMap<String, String>), Offer> = BTreeMap::new();
    for d in &inputs.dataplanes {
        let Ok(s) = decode::<DataplaneSpec>(d) else {
            continue;
        };
        let address = s.advertised_address.clone().unwrap_or(s.address.clone());
        for ib in &s.inbound {
            let mut tags = ib.tags.clone();
            tags.insert(PORT_TAG.into(), ib.port.to_string());
            if let Some(name) = &ib.name {
                tags.insert(PORT_NAME_TAG.into(), name.clone());
            }
            let e = services.entry((ib.service.clone(), tags)).or_default();
            e.0 = e.0.max(ib.protocol);
            e.1.push(IngressTarget {
                address: address.clone(),
                port: ib.port,
            });
        }
    }
    let mut routes = BTreeMap::new();
    let mut route_services = BTreeMap::new();
    let mut available = Vec::new();
    // Every endpoint of a service, whatever its tags, behind the service's own SNI.
    let mut by_service: BTreeMap<String, Vec<IngressTarget>> = BTreeMap::new();
    for ((service, tags), (protocol, mut targets)) in services {
        targets.sort();
        targets.dedup();
        let mut ids = Vec::with_capacity(targets.len());
        for t in &targets {
            let id = endpoint_id(&t.address, t.port);
            let sni = endpoint_sni(&id, &service, mesh);
            route_services.insert(sni.clone(), service.clone());
            routes.insert(sni, vec![t.clone()]);
            ids.push(id);
        }
        ids.sort();
        available.push(AvailableService {
            service: service.clone(),
            tags,
            instances: targets.len() as u32,
            protocol: Some(protocol),
            endpoints: ids,
        });
        by_service.entry(service).or_default().extend(targets);
    }
    for (service, mut targets) in by_service {
        targets.sort();
        targets.dedup();
        let sni = ingress_sni(&service, mesh);
        route_services.insert(sni.clone(), service);
        routes.insert(sni, targets);
    }
    let mut config = IngressConfig {
        version: String::new(),
        mesh: mesh.to_string(),
        zone: inputs.zone.clone(),
        name: name.to_string(),
        silent: refusal.as_ref().is_some_and(|r| r.silent),
        refusing: refusal.map(|r| r.reason),
        routes,
        services: route_services,
    };
    let body = serde_json::to_vec(&config).expect("configs serialize");
    config.version = hex::encode(&sha2::Sha256::digest(&body)[..8]);
    Ok((config, available))
}

#[cfg(test)]
mod tests {
    use causeway_api::Resource;
    use serde_json::json;

    use super::*;

    fn dataplane(name: &str, address: &str, inbounds: serde_json::Value) -> Resource {
        Resource::from_json(
            json!({"type": "Dataplane", "mesh": "default", "name": name,
                   "spec": {"address": address, "inbound": inbounds}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn inputs(dataplanes: Vec<Resource>) -> MeshInputs {
        MeshInputs {
            zone: "zone-b".into(),
            mesh: Some(
                Resource::from_json(br#"{"type":"Mesh","name":"default","spec":{}}"#).unwrap(),
            ),
            dataplanes,
            ..MeshInputs::default()
        }
    }

    /// A service is offered once per port and set of tags, each with its tags and
    /// port, so other zones can call one port or one subset of it; its own SNI still
    /// reaches every endpoint.
    #[test]
    fn offers_a_service_per_port_and_tags() {
        let i = inputs(vec![
            dataplane(
                "db-1",
                "10.0.0.1",
                json!([{"name": "postgres", "port": 5432, "service": "db", "tags": {"version": "v2"}},
                       {"port": 9102, "service": "db", "protocol": "http"}]),
            ),
            dataplane(
                "db-2",
                "10.0.0.2",
                json!([{"name": "postgres", "port": 5432, "service": "db", "tags": {"version": "v2"}}]),
            ),
        ]);
        let (cfg, available) = compute(&i, "default", "ingress-1", None).unwrap();
        let offers: Vec<(BTreeMap<String, String>, u32)> = available
            .iter()
            .map(|a| (a.tags.clone(), a.instances))
            .collect();
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            offers,
            [
                (
                    tags(&[
                        (PORT_TAG, "5432"),
                        (PORT_NAME_TAG, "postgres"),
                        ("version", "v2")
                    ]),
                    2
                ),
                (tags(&[(PORT_TAG, "9102")]), 1),
            ]
        );
        assert_eq!(available[1].protocol, Some(Protocol::Http));
        assert_eq!(cfg.routes["db.default.causeway"].len(), 3);
        // Valid in a ZoneIngress, which the zone reports them in.
        let ingress = Resource::from_json(
            json!({"type": "ZoneIngress", "mesh": "default", "name": "ingress-1",
                   "spec": {"zone": "zone-b", "address": "10.0.0.9", "port": 10001,
                            "availableServices": available}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        causeway_api::validate(&ingress).unwrap();
    }

    #[test]
    fn routes_each_service_and_each_endpoint_and_offers_them() {
        let i = inputs(vec![
            dataplane(
                "backend-1",
                "10.0.0.1",
                json!([{"port": 8001, "service": "backend", "protocol": "http"}]),
            ),
            dataplane(
                "backend-2",
                "10.0.0.2",
                json!([{"port": 8001, "service": "backend"}]),
            ),
            dataplane("db-1", "10.0.0.3", json!([{"port": 5432, "service": "db"}])),
        ]);
        let (cfg, available) = compute(&i, "default", "ingress-1", None).unwrap();
        let t = |a: &str, p| IngressTarget {
            address: a.into(),
            port: p,
        };
        assert_eq!(
            cfg.routes["backend.default.causeway"],
            vec![t("10.0.0.1", 8001), t("10.0.0.2", 8001)]
        );
        let id = endpoint_id("10.0.0.2", 8001);
        assert_eq!(
            cfg.routes[&format!("{id}.backend.default.causeway")],
            vec![t("10.0.0.2", 8001)]
        );
        assert_eq!(cfg.routes.len(), 5, "{:?}", cfg.routes.keys());
        assert_eq!(available.len(), 2);
        assert_eq!(available[0].service, "backend");
        assert_eq!(available[0].instances, 2);
        assert_eq!(available[0].protocol, Some(Protocol::Http));
        assert!(available[0].endpoints.contains(&id));
        assert_eq!(available[1].protocol, Some(Protocol::Tcp));
        // The ids are valid in a ZoneIngress and stable.
        assert_eq!(id, endpoint_id("10.0.0.2", 8001));
        assert_ne!(id, endpoint_id("10.0.0.2", 8002));
        // Same inputs, same version; a refusal changes it.
        assert_eq!(
            compute(&i, "default", "ingress-1", None).unwrap().0.version,
            cfg.version
        );
        let refusal = |silent| Refusal {
            reason: "drill".into(),
            silent,
        };
        let refusing = compute(&i, "default", "ingress-1", Some(refusal(false)))
            .unwrap()
            .0;
        assert_ne!(refusing.version, cfg.version);
        assert_eq!(refusing.refusing.as_deref(), Some("drill"));
        assert!(!refusing.silent);
        // A blackhole drill: refusing, silently.
        let silent = compute(&i, "default", "ingress-1", Some(refusal(true)))
            .unwrap()
            .0;
        assert!(silent.silent && silent.refusing.is_some());
        assert_ne!(silent.version, refusing.version);
    }

    #[test]
    fn no_mesh_no_config() {
        let mut i = inputs(vec![]);
        i.mesh = None;
        assert!(compute(&i, "default", "ingress-1", None).is_err());
    }
}
