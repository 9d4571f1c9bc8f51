//! Computes a sidecar's [`ProxyConfig`] from the resource model: a pure function of the
//! mesh's resources as the zone holds them. Golden-file tests in `testdata/`.
//!
//! One configurer per policy, in a submodule named after it (`mesh_timeout`), with its
//! golden cases in `testdata/<policy>/`: it turns the policy's effective configuration
//! into the config's fields.

mod mesh_access_log;
mod mesh_circuit_breaker;
mod mesh_fault_injection;
mod mesh_health_check;
mod mesh_http_route;
mod mesh_load_balancing_strategy;
mod mesh_metric;
mod mesh_rate_limit;
mod mesh_retry;
mod mesh_tcp_route;
mod mesh_timeout;
mod mesh_trace;
mod mesh_traffic_permission;

use std::collections::{BTreeMap, BTreeSet};

use causeway_api::proxy_config::{
    Endpoint, EndpointGroup, InboundListener, OutboundListener, ProxyConfig, RouteBackend,
    TransparentListener, endpoint_sni, ingress_sni, spiffe_id,
};
use causeway_api::{
    Action, DataplaneSpec, EffectiveConfig, Merged, MeshSpec, MtlsMode, NAMESPACE_TAG,
    PORT_NAME_TAG, PORT_TAG, Protocol, Proxy, Resource, SERVICE_TAG, ServicePort, ZONE_TAG,
    ZoneIngressSpec,
};
use serde::de::DeserializeOwned;
use sha2::Digest as _;

/// What a zone holds of one mesh: the inputs of every proxy config in it.
#[derive(Debug, Default, Clone)]
pub struct MeshInputs {
    pub zone: String,
    pub mesh: Option<Resource>,
    /// This zone's dataplanes in the mesh.
    pub dataplanes: Vec<Resource>,
    /// Zone ingresses of the mesh (this zone's and others').
    pub ingresses: Vec<Resource>,
    /// Zone resources (a disabled zone gets no traffic).
    pub zones: Vec<Resource>,
    /// The mesh's policies.
    pub policies: Vec<Resource>,
    /// Revoked intermediate CAs of the mesh (SHA-256 hex).
    pub revoked_cas: Vec<String>,
    /// The mesh's trusted roots (SHA-256 hex), as global sent them; empty before.
    pub trusted_roots: Vec<String>,
    /// This zone's current intermediate CA of the mesh (SHA-256 hex).
    pub issuer: Option<String>,
    /// Zones a failover drill takes out of the mesh right now (drain mode: they leave
    /// every config).
    pub drilled_zones: Vec<String>,
    /// Zones a blackhole drill takes off the network right now: they stay in every
    /// config, and only their own ingresses change (they go silent).
    pub blackholed_zones: Vec<String>,
    /// The mesh services' virtual IPs (the global control plane's `VirtualIp`s), by
    /// service and the zone they pin (none: the service wherever it runs).
    pub virtual_ips: BTreeMap<(String, Option<String>), std::net::Ipv4Addr>,
}

impl MeshInputs {
    /// Takes the mesh's `VirtualIp` resources in (one that does not decode is left
    /// out: its service is then reachable by explicit outbounds only).
    pub fn add_virtual_ips(&mut self, resources: &[Resource]) {
        for r in resources {
            if let Ok(v) = decode::<causeway_api::VirtualIpSpec>(r) {
                self.virtual_ips.insert((v.service, v.zone), v.ip);
            }
        }
    }
}

/// An implicit outbound's virtual IP, and the zone it pins calls to.
pub(crate) type Implicit = (std::net::Ipv4Addr, Option<String>);

/// The Dataplane as its proxy serves it: under transparent proxying, its explicit
/// outbounds followed by one implicit outbound per virtual IP of the mesh (a service's,
/// and the service's in each zone; every service, or those its
/// `transparentProxying.services` lists), so policies match and configure them like
/// any other. Returns what makes each outbound implicit (none for an explicit one).
pub(crate) fn with_implicit_outbounds(
    inputs: &MeshInputs,
    spec: &mut DataplaneSpec,
) -> Vec<Option<Implicit>> {
    let mut vips = vec![None; spec.outbound.len()];
    let Some(tp) = &spec.transparent_proxying else {
        return vips;
    };
    let wanted = tp
        .services
        .as_ref()
        .map(|s| s.iter().collect::<BTreeSet<_>>());
    for ((service, zone), ip) in &inputs.virtual_ips {
        if wanted.as_ref().is_some_and(|w| !w.contains(service)) {
            continue;
        }
        spec.outbound.push(causeway_api::Outbound {
            port: 0,
            address: None,
            service: service.clone(),
            section_name: None,
        });
        vips.push(Some((*ip, zone.clone())));
    }
    vips
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error("mesh {0:?} is not known in this zone (yet)")]
    NoMesh(String),
    #[error("{what} is invalid: {reason}")]
    Invalid { what: String, reason: String },
}

pub(crate) fn decode<T: DeserializeOwned>(r: &Resource) -> Result<T, ComputeError> {
    decode_conf(&r.spec, || r.key().to_string())
}

/// Decodes a merged policy configuration; `what` names it in the error.
pub(crate) fn decode_conf<T: DeserializeOwned>(
    conf: &serde_json::Value,
    what: impl FnOnce() -> String,
) -> Result<T, ComputeError> {
    serde_json::from_value(conf.clone()).map_err(|e| ComputeError::Invalid {
        what: what(),
        reason: e.to_string(),
    })
}

/// Each of `proxy`'s outbounds' merged `to[]` configuration of the policy `kind` (one
/// of `policies`), decoded, in the proxy's order; `None` where no policy applies.
pub(crate) fn outbound_confs<T: DeserializeOwned>(
    kind: &str,
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Vec<Option<T>>, ComputeError> {
    let effective = causeway_api::effective(kind, policies, proxy)
        .unwrap_or_else(|_| panic!("{kind} is a policy kind"));
    decode_outbounds(kind, &effective, proxy)
}

/// [`outbound_confs`] from the effective configuration already computed.
pub(crate) fn decode_outbounds<T: DeserializeOwned>(
    kind: &str,
    effective: &EffectiveConfig,
    proxy: &Proxy,
) -> Result<Vec<Option<T>>, ComputeError> {
    proxy
        .outbounds
        .iter()
        .enumerate()
        .map(
            |(i, ob)| match effective.outbounds.get(i).and_then(|o| o.conf.as_ref()) {
                None => Ok(None),
                Some(Merged { conf, policies }) => decode_conf(conf, || {
                    format!(
                        "the merged {kind} to[] for {} (policies {})",
                        ob.service,
                        policies.join(", ")
                    )
                })
                .map(Some),
            },
        )
        .collect()
}

/// Each of `proxy`'s outbounds' per-route configurations of the policy `kind`: its
/// `to[]` entries for a MeshHTTPRoute merged over the destination's, decoded and made
/// into what the sidecar runs by `make`, by route name. A route without entries of its
/// own is not in the map.
pub(crate) fn decode_routes<T: DeserializeOwned, U>(
    kind: &str,
    effective: &EffectiveConfig,
    proxy: &Proxy,
    make: impl Fn(&T) -> U,
) -> Result<Vec<BTreeMap<String, U>>, ComputeError> {
    proxy
        .outbounds
        .iter()
        .enumerate()
        .map(|(i, ob)| {
            let Some(o) = effective.outbounds.get(i) else {
                return Ok(BTreeMap::new());
            };
            o.routes
                .iter()
                .map(|(route, Merged { conf, policies })| {
                    let what = || {
                        format!(
                            "the merged {kind} to[] for route {route} of {} (policies {})",
                            ob.service,
                            policies.join(", ")
                        )
                    };
                    let conf: T = decode_conf(conf, what)?;
                    Ok((route.clone(), make(&conf)))
                })
                .collect()
        })
        .collect()
}

/// The callers a `from[]` source stands for, as a certificate proves them: every
/// caller (`Mesh`), a service, a SPIFFE id, or callers by tags (`MeshSubset`;
/// `MeshServiceSubset` adds its service as `causeway.io/service`), which their zone
/// signs into their certificates. `None` for a source that names nothing.
pub(crate) fn caller_source(
    source: &causeway_api::TargetRef,
    trust_domain: &str,
) -> Option<causeway_api::proxy_config::SourceMatch> {
    use causeway_api::TargetRefKind;
    use causeway_api::proxy_config::SourceMatch;
    match (source.kind, source.name.as_deref()) {
        (TargetRefKind::Mesh, _) => Some(SourceMatch::Any),
        // In a namespace: its callers there, by the tags their certificates carry.
        (TargetRefKind::MeshService, Some(_)) if source.namespace.is_some() => {
            Some(SourceMatch::Tags {
                tags: source.canonical_tags(),
            })
        }
        (TargetRefKind::MeshService, Some(service)) => Some(SourceMatch::Spiffe {
            id: spiffe_id(trust_domain, service),
        }),
        (TargetRefKind::SpiffeId, Some(_)) => match source.spiffe_source()? {
            causeway_api::SpiffeSource::Exact(id) => {
                Some(SourceMatch::Spiffe { id: id.to_owned() })
            }
            causeway_api::SpiffeSource::Prefix(prefix) => Some(SourceMatch::SpiffePrefix {
                prefix: prefix.to_owned(),
            }),
        },
        (TargetRefKind::MeshSubset, _) => Some(SourceMatch::Tags {
            tags: source.tags.clone(),
        }),
        (TargetRefKind::MeshServiceSubset, Some(service)) => {
            let mut tags = source.tags.clone();
            tags.insert(SERVICE_TAG.into(), service.to_owned());
            Some(SourceMatch::Tags { tags })
        }
        _ => None,
    }
}

/// The proxy as policy matching sees it: named and labelled (for policies that target
/// Dataplanes), and each destination with the MeshHTTPRoutes that route it, which
/// per-route policies name; with the effective MeshHTTPRoute it took them from.
pub(crate) fn matching_proxy(
    inputs: &MeshInputs,
    dataplane: &Resource,
    spec: &DataplaneSpec,
) -> (Proxy, EffectiveConfig) {
    let mut proxy =
        Proxy::from_dataplane(spec, Some(&inputs.zone)).named(&dataplane.name, &dataplane.labels);
    // Each destination's ports and namespaces, for `to[]` entries that name them.
    let mesh_name = dataplane.mesh.as_deref().unwrap_or_default();
    if let Some(mesh_spec) = inputs
        .mesh
        .as_ref()
        .and_then(|m| decode::<MeshSpec>(m).ok())
    {
        for (ob, declared) in proxy.outbounds.iter_mut().zip(&spec.outbound) {
            (ob.ports, ob.namespaces) = destination_ports(
                inputs,
                mesh_name,
                &mesh_spec,
                &ob.service,
                declared.section_name.as_deref(),
            );
        }
    }
    let routes = mesh_http_route::effective(&policies_of(inputs, "MeshHTTPRoute"), &proxy);
    for (ob, conf) in proxy.outbounds.iter_mut().zip(&routes.outbounds) {
        ob.routes = conf
            .conf
            .as_ref()
            .map(|m| m.policies.clone())
            .unwrap_or_default();
    }
    (proxy, routes)
}

fn policies_of(inputs: &MeshInputs, kind: &str) -> Vec<Resource> {
    inputs
        .policies
        .iter()
        .filter(|p| p.kind == kind)
        .cloned()
        .collect()
}

/// The proxy config of `dataplane` (a Dataplane resource of the mesh).
pub fn compute(inputs: &MeshInputs, dataplane: &Resource) -> Result<ProxyConfig, ComputeError> {
    let mesh_name = dataplane.mesh.clone().unwrap_or_default();
    let mesh = inputs
        .mesh
        .as_ref()
        .ok_or_else(|| ComputeError::NoMesh(mesh_name.clone()))?;
    let mesh_spec: MeshSpec = decode(mesh)?;
    let mut spec: DataplaneSpec = decode(dataplane)?;
    let vips = with_implicit_outbounds(inputs, &mut spec);
    let trust_domain = mesh_spec.trust_domain_or(&mesh_name).to_string();
    let mtls = mesh_spec.mtls.as_ref().map_or(MtlsMode::Off, |m| m.mode);
    // Named and labelled, for policies that target Dataplanes (Kuma's current form).
    let http_route_policies = policies_of(inputs, "MeshHTTPRoute");
    let (proxy, http_routes_effective) = matching_proxy(inputs, dataplane, &spec);
    let timeouts =
        mesh_timeout::configure(&policies_of(inputs, "MeshTimeout"), &proxy, &trust_domain)?;
    let faults = mesh_fault_injection::configure(
        &policies_of(inputs, "MeshFaultInjection"),
        &proxy,
        &trust_domain,
    )?;
    let rate_limits =
        mesh_rate_limit::configure(&policies_of(inputs, "MeshRateLimit"), &proxy, &trust_domain)?;
    let (mut inbound_logs, mut outbound_logs) =
        mesh_access_log::configure(&policies_of(inputs, "MeshAccessLog"), &proxy, &trust_domain)?;
    let own_service = spec.inbound.first().map_or("", |ib| ib.service.as_str());
    let metrics = mesh_metric::configure(&policies_of(inputs, "MeshMetric"), &proxy, own_service)?;
    let tracing = mesh_trace::configure(&policies_of(inputs, "MeshTrace"), &proxy)?;
    let inbound_limits = mesh_circuit_breaker::configure_inbounds(
        &policies_of(inputs, "MeshCircuitBreaker"),
        &proxy,
        &trust_domain,
    )?;

    let permissions = causeway_api::effective(
        "MeshTrafficPermission",
        &policies_of(inputs, "MeshTrafficPermission"),
        &proxy,
    )
    .expect("MeshTrafficPermission is a policy kind");
    let inbounds = spec
        .inbound
        .iter()
        .enumerate()
        .map(|(i, ib)| {
            let rules = permissions
                .inbounds
                .get(i)
                .map(|c| c.rules.as_slice())
                .unwrap_or_default();
            let permissions = mesh_traffic_permission::configure(
                &trust_domain,
                &format!("{} ({})", ib.port, ib.service),
                rules,
            )?;
            let mut tags = ib.tags.clone();
            tags.insert(SERVICE_TAG.into(), ib.service.clone());
            tags.insert(ZONE_TAG.into(), inputs.zone.clone());
            Ok(InboundListener {
                port: ib.port,
                service: ib.service.clone(),
                app_address: ib
                    .service_address
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1".into()),
                app_port: ib.service_port.unwrap_or(ib.port),
                protocol: ib.protocol,
                tags,
                permissions,
                default_action: if mtls == MtlsMode::Off {
                    Action::Allow
                } else {
                    Action::Deny
                },
                timeouts: timeouts.inbounds[i].0,
                caller_timeouts: timeouts.inbounds[i].1.clone(),
                limits: inbound_limits[i].clone(),
                faults: faults[i].clone(),
                rate_limits: rate_limits[i].clone(),
                access_logs: std::mem::take(&mut inbound_logs[i]),
            })
        })
        .collect::<Result<_, ComputeError>>()?;

    let balancing = mesh_load_balancing_strategy::configure(
        &policies_of(inputs, "MeshLoadBalancingStrategy"),
        &proxy,
    )?;
    let protocols: Vec<Protocol> = spec
        .outbound
        .iter()
        .map(|ob| destination_protocol(inputs, &ob.service))
        .collect();
    let health_checks =
        mesh_health_check::configure(&policies_of(inputs, "MeshHealthCheck"), &proxy, &protocols)?;
    let circuit_breakers =
        mesh_circuit_breaker::configure(&policies_of(inputs, "MeshCircuitBreaker"), &proxy)?;
    let (mut retries, route_retries) =
        mesh_retry::configure(&policies_of(inputs, "MeshRetry"), &proxy)?;
    let routes = mesh_tcp_route::configure(&policies_of(inputs, "MeshTCPRoute"), &proxy)?;
    let mut http_routes = mesh_http_route::configure(
        &http_route_policies,
        &http_routes_effective,
        &proxy,
        |i, service, tags, weight| {
            let destination = (&mesh_name[..], &mesh_spec, &trust_domain[..], &balancing[i]);
            route_backend(inputs, destination, service, tags, weight)
        },
    )?;
    // Per-route timeouts and retries, where policies name the route.
    for (i, routes) in http_routes.iter_mut().enumerate() {
        for route in routes {
            route.timeouts = timeouts.routes[i].get(&route.name).copied();
            route.retry = route_retries[i].get(&route.name).cloned();
        }
    }
    let outbounds = spec
        .outbound
        .iter()
        .enumerate()
        .map(|(i, ob)| {
            let balancing = &balancing[i];
            let pinned = vips[i].as_ref().and_then(|(_, zone)| zone.clone());
            let mut groups = endpoint_groups(
                inputs,
                &mesh_name,
                &mesh_spec,
                &ob.service,
                &EndpointFilter {
                    section: ob.section_name.as_deref(),
                    tags: None,
                },
                balancing,
            );
            if let Some(zone) = &pinned {
                groups.retain(|g| g.zone == *zone);
            }
            OutboundListener {
                port: ob.port,
                vip: vips[i].as_ref().map(|(ip, _)| *ip),
                zone: pinned,
                address: ob.address.clone().unwrap_or_else(|| "127.0.0.1".into()),
                service: ob.service.clone(),
                protocol: protocols[i],
                identity: (mtls != MtlsMode::Off).then(|| spiffe_id(&trust_domain, &ob.service)),
                load_balancer: balancing.load_balancer(),
                choice_count: balancing.choice_count(),
                ewma_decay: balancing.ewma_decay(),
                ring_hash: balancing.ring_hash(),
                maglev: balancing.maglev(),
                groups,
                failover_threshold: balancing.failover_threshold(),
                timeouts: timeouts.outbounds[i],
                health_check: health_checks[i].clone(),
                circuit_breaker: circuit_breakers[i].clone(),
                retry: std::mem::take(&mut retries[i]),
                backends: routes[i]
                    .iter()
                    .map(|(service, tags, weight)| {
                        let destination =
                            (&mesh_name[..], &mesh_spec, &trust_domain[..], balancing);
                        route_backend(inputs, destination, service, tags, *weight)
                    })
                    .collect(),
                http_routes: std::mem::take(&mut http_routes[i]),
                access_log: std::mem::take(&mut outbound_logs[i]),
            }
        })
        .collect();

    let mut config = ProxyConfig {
        version: String::new(),
        mesh: mesh_name,
        dataplane: dataplane.name.clone(),
        zone: inputs.zone.clone(),
        address: spec.address.clone(),
        mtls,
        identity: spec
            .inbound
            .first()
            .map(|ib| spiffe_id(&trust_domain, &ib.service)),
        inbounds,
        outbounds,
        transparent: spec
            .transparent_proxying
            .as_ref()
            .map(|tp| TransparentListener {
                port: tp.outbound_port,
                passthrough: mesh_spec.networking.outbound.passthrough,
                dns_port: tp.dns_port,
                dns_suffix: mesh_spec.networking.dns_suffix.clone(),
            }),
        revoked_cas: inputs.revoked_cas.clone(),
        trusted_roots: if mtls != MtlsMode::Off {
            inputs.trusted_roots.clone()
        } else {
            Vec::new()
        },
        issuer: inputs.issuer.clone().filter(|_| mtls != MtlsMode::Off),
        metrics_endpoints: metrics.endpoints,
        metrics_content: metrics.content,
        metrics_push: metrics.push,
        tracing,
    };
    let body = serde_json::to_vec(&config).expect("configs serialize");
    config.version = hex::encode(&sha2::Sha256::digest(&body)[..8]);
    Ok(config)
}

/// A route's backend: `service`'s endpoints with `tags` (all of them when empty; a
/// backend's `port` is [`PORT_TAG`] there, its `namespace` [`NAMESPACE_TAG`]), and the
/// identity they prove. The destination's MeshLoadBalancingStrategy orders the
/// zones of a backend too: `destination` is (mesh, its spec, trust domain, balancing).
fn route_backend(
    inputs: &MeshInputs,
    (mesh_name, mesh_spec, trust_domain, balancing): (
        &str,
        &MeshSpec,
        &str,
        &mesh_load_balancing_strategy::Balancing,
    ),
    service: &str,
    tags: &BTreeMap<String, String>,
    weight: u32,
) -> RouteBackend {
    let mtls = mesh_spec.mtls.as_ref().map_or(MtlsMode::Off, |m| m.mode);
    RouteBackend {
        service: service.to_owned(),
        tags: tags.clone(),
        weight,
        identity: (mtls != MtlsMode::Off).then(|| spiffe_id(trust_domain, service)),
        groups: endpoint_groups(
            inputs,
            mesh_name,
            mesh_spec,
            service,
            &EndpointFilter {
                section: None,
                tags: Some(tags),
            },
            balancing,
        ),
    }
}

/// The protocol a service's inbounds declare here or in other zones (as their ingresses
/// report it); HTTP if any says so, else TCP.
fn destination_protocol(inputs: &MeshInputs, service: &str) -> Protocol {
    let local = inputs
        .dataplanes
        .iter()
        .filter_map(|d| decode::<DataplaneSpec>(d).ok())
        .flat_map(|s| s.inbound)
        .filter(|ib| ib.service == service)
        .map(|ib| ib.protocol);
    let remote = inputs
        .ingresses
        .iter()
        .filter_map(|i| decode::<ZoneIngressSpec>(i).ok())
        .flat_map(|s| s.available_services)
        .filter(|a| a.service == service)
        .filter_map(|a| a.protocol);
    local.chain(remote).max().unwrap_or(Protocol::Tcp)
}

fn zone_enabled(inputs: &MeshInputs, zone: &str) -> bool {
    !inputs
        .zones
        .iter()
        .any(|z| z.name == zone && z.spec.get("enabled").and_then(|v| v.as_bool()) == Some(false))
}

/// Endpoints of `service` that pass `filter`: this zone's group first, then other
/// zones' (through their ingresses) in the failover order of the effective
/// MeshLoadBalancingStrategy.
fn endpoint_groups(
    inputs: &MeshInputs,
    mesh: &str,
    mesh_spec: &MeshSpec,
    service: &str,
    filter: &EndpointFilter<'_>,
    balancing: &mesh_load_balancing_strategy::Balancing,
) -> Vec<EndpointGroup> {
    let (local, remote) = service_endpoints(inputs, mesh, mesh_spec, service);
    let keep = |endpoints: Vec<Endpoint>| -> Vec<Endpoint> {
        endpoints
            .into_iter()
            .filter(|e| filter.keeps(&e.tags))
            .map(|mut e| {
                // Known to the filter only: configs keep the tags their users gave.
                e.tags.remove(PORT_TAG);
                e.tags.remove(PORT_NAME_TAG);
                e
            })
            .collect()
    };
    let remote = remote
        .into_iter()
        .map(|(zone, endpoints)| (zone, keep(endpoints)))
        .filter(|(_, endpoints)| !endpoints.is_empty())
        .collect();
    balancing.groups(&inputs.zone, keep(local), remote)
}

/// Which of a service's endpoints a destination (or a route's backend) takes: those on
/// one port (`sectionName`: an inbound's name, or its port in decimal), with every one
/// of some tags (a subset; a namespace; [`PORT_TAG`] for a backend's `port`).
#[derive(Debug, Default)]
pub(crate) struct EndpointFilter<'a> {
    pub(crate) section: Option<&'a str>,
    pub(crate) tags: Option<&'a BTreeMap<String, String>>,
}

impl EndpointFilter<'_> {
    fn keeps(&self, tags: &BTreeMap<String, String>) -> bool {
        let on_port = self.section.is_none_or(|s| {
            tags.get(PORT_TAG).map(String::as_str) == Some(s)
                || tags.get(PORT_NAME_TAG).map(String::as_str) == Some(s)
        });
        on_port
            && self
                .tags
                .is_none_or(|want| want.iter().all(|(k, v)| tags.get(k) == Some(v)))
    }
}

/// The ports and namespaces of the endpoints an outbound to `service` (on `section`,
/// if given) reaches, for matching `to[]` entries with a `sectionName` or `namespace`.
fn destination_ports(
    inputs: &MeshInputs,
    mesh: &str,
    mesh_spec: &MeshSpec,
    service: &str,
    section: Option<&str>,
) -> (Vec<ServicePort>, Vec<Option<String>>) {
    let (local, remote) = service_endpoints(inputs, mesh, mesh_spec, service);
    let filter = EndpointFilter {
        section,
        tags: None,
    };
    let mut ports = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for e in local
        .iter()
        .chain(remote.values().flatten())
        .filter(|e| filter.keeps(&e.tags))
    {
        ports.insert(ServicePort {
            // An ingress that does not say (an older zone): port 0, which no
            // sectionName names.
            port: e
                .tags
                .get(PORT_TAG)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            name: e.tags.get(PORT_NAME_TAG).cloned(),
        });
        namespaces.insert(e.tags.get(NAMESPACE_TAG).cloned());
    }
    (
        ports.into_iter().collect(),
        namespaces.into_iter().collect(),
    )
}

/// Every endpoint of `service`, this zone's and, by zone, other zones' (through their
/// ingresses), each with its tags and its port's ([`PORT_TAG`], [`PORT_NAME_TAG`]).
fn service_endpoints(
    inputs: &MeshInputs,
    mesh: &str,
    mesh_spec: &MeshSpec,
    service: &str,
) -> (Vec<Endpoint>, BTreeMap<String, Vec<Endpoint>>) {
    let mut local = Vec::new();
    for d in &inputs.dataplanes {
        let Ok(s) = decode::<DataplaneSpec>(d) else {
            continue;
        };
        for ib in s.inbound.iter().filter(|ib| ib.service == service) {
            let mut tags = ib.tags.clone();
            tags.insert(SERVICE_TAG.into(), service.into());
            tags.insert(ZONE_TAG.into(), inputs.zone.clone());
            tags.insert(PORT_TAG.into(), ib.port.to_string());
            if let Some(name) = &ib.name {
                tags.insert(PORT_NAME_TAG.into(), name.clone());
            }
            local.push(Endpoint {
                address: s
                    .advertised_address
                    .clone()
                    .unwrap_or_else(|| s.address.clone()),
                port: ib.port,
                weight: 1,
                sni: None,
                quic: false,
                tags,
                affinity: None,
            });
        }
    }
    local.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    let mut remote: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    // Ingresses route on the SNI of the mesh's mTLS: without it, no cross-zone traffic.
    let mtls = mesh_spec
        .mtls
        .as_ref()
        .is_some_and(|m| m.mode != MtlsMode::Off);
    if mesh_spec.cross_zone && mtls {
        for ing in &inputs.ingresses {
            let Ok(s) = decode::<ZoneIngressSpec>(ing) else {
                continue;
            };
            let zone = s
                .zone
                .clone()
                .or_else(|| ing.origin.clone())
                .unwrap_or_default();
            if zone == inputs.zone
                || zone.is_empty()
                || !zone_enabled(inputs, &zone)
                || inputs.drilled_zones.contains(&zone)
            {
                continue;
            }
            let address = s
                .advertised_address
                .clone()
                .unwrap_or_else(|| s.address.clone());
            let port = s.advertised_port.unwrap_or(s.port);
            for av in s
                .available_services
                .iter()
                .filter(|a| a.service == service && a.instances > 0)
            {
                let mut tags = av.tags.clone();
                tags.insert(SERVICE_TAG.into(), service.into());
                tags.insert(ZONE_TAG.into(), zone.clone());
                let group = remote.entry(zone.clone()).or_default();
                if av.endpoints.is_empty() {
                    // An ingress that does not name endpoints: one weighted entry.
                    group.push(Endpoint {
                        address: address.clone(),
                        port,
                        weight: av.instances,
                        sni: Some(ingress_sni(service, mesh)),
                        quic: s.quic,
                        tags,
                        affinity: None,
                    });
                    continue;
                }
                // One entry per remote endpoint (through this ingress), so requests are
                // balanced per endpoint and a dead one is ejected alone.
                for id in &av.endpoints {
                    group.push(Endpoint {
                        address: address.clone(),
                        port,
                        weight: 1,
                        sni: Some(endpoint_sni(id, service, mesh)),
                        quic: s.quic,
                        tags: tags.clone(),
                        affinity: None,
                    });
                }
            }
        }
    }
    (local, remote)
}

#[cfg(test)]
mod tests;
