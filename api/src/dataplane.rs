//! `Dataplane`: a workload's sidecar in universal mode (VMs, bare metal): where it
//! listens, which services it serves and which it calls.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec, at, check_host, check_service_name, idx};
use crate::target_ref::{PORT_NAME_TAG, PORT_TAG, SERVICE_TAG, ZONE_TAG, check_tags};

/// The spec of a `Dataplane`.
///
/// ```yaml
/// type: Dataplane
/// mesh: default
/// name: backend-vm-1
/// spec:
///   address: 10.0.1.15
///   inbound:
///     - {name: http, port: 20001, servicePort: 8080, service: backend, protocol: http, tags: {version: v2}}
///   outbound:
///     - {port: 10001, service: db}
///   adminPort: 9901
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneSpec {
    /// The IP address (or DNS name) at which other proxies in the zone reach this one.
    pub address: String,
    /// The address to advertise instead of `address`, when the workload is behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// The services this workload serves; at least one.
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    /// The services this workload calls, each on a local port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// The port of the proxy's admin endpoint (readiness, config dump), on
    /// 127.0.0.1. Default 9901.
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// Transparent proxying: the workload's traffic is redirected to the proxy
    /// (`causeway dataplane install-redirect`), which routes each connection by its
    /// original destination. Every mesh service is then an implicit outbound, reached
    /// at its virtual IP; explicit `outbound` entries keep working beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
}

/// How a redirected workload's outbound traffic reaches its proxy.
///
/// ```yaml
/// transparentProxying: {outboundPort: 15001, dnsPort: 15053, services: [backend, db]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransparentProxying {
    /// The port redirected outbound connections arrive on (install-redirect's
    /// `--outbound-port`). Default 15001.
    #[serde(default = "default_outbound_port")]
    pub outbound_port: u16,
    /// The mesh services this workload may call by virtual IP, for a large mesh where
    /// each proxy should hold only what it uses. Default: every service of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// The port the proxy serves DNS on (UDP and TCP, on loopback; install-redirect's
    /// `--dns-port`): `<service>.mesh` and `<service>.<zone>.mesh` resolve to virtual
    /// IPs, every other name through the host's resolvers. None: no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
}

fn default_outbound_port() -> u16 {
    15001
}

fn default_admin_port() -> u16 {
    9901
}

/// A service the workload serves: the proxy listens on `port` and forwards to
/// `serviceAddress:servicePort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inbound {
    /// The inbound's name, unique in the Dataplane (a DNS label that is not only
    /// digits, like `http` or `admin-api`). Policies pick one inbound with
    /// `targetRef: {kind: Dataplane, sectionName: <name>}` (or the port as a decimal
    /// string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port the proxy listens on for mesh traffic to this service.
    pub port: u16,
    /// The port the application listens on. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
    /// The address the application listens on. Default `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    /// The service name, e.g. `backend`. Policies select it with
    /// `{kind: MeshService, name: backend}`; it is also the tag `causeway.io/service`.
    pub service: String,
    /// Extra tags (`version: v2`, `k8s.io/node: n1`) for MeshSubset selection and
    /// locality affinity. `causeway.io/service` and `causeway.io/zone` are set by
    /// Causeway and must not be given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `tcp`, `http`, `http2` or `grpc`. Default `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Application protocols.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    Default,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque TCP.
    #[default]
    Tcp,
    /// HTTP/1.1.
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
}

/// A service the workload calls: the application connects to
/// `address:port` and the proxy routes to the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Outbound {
    /// The local port.
    pub port: u16,
    /// The local address. Default `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The destination service.
    pub service: String,
    /// One port of the service (its endpoints' inbounds by `name`, or by port as a
    /// decimal string), for a service that serves several: only those endpoints are
    /// called, and `to[]` entries with that `sectionName` apply. Default: every
    /// endpoint of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl Spec for DataplaneSpec {
    fn check(&self, errors: &mut Errors) {
        errors.check("spec.address", check_host(&self.address));
        if let Some(a) = &self.advertised_address {
            errors.check("spec.advertisedAddress", check_host(a));
        }
        if self.inbound.is_empty() {
            errors.push(
                "spec.inbound",
                "needs at least one inbound: the service this workload serves",
            );
        }
        errors.port("spec.adminPort".to_owned(), Some(self.admin_port));
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        ports.insert(self.admin_port, "spec.adminPort".to_owned());
        let mut claim = |errors: &mut Errors, port: u16, field: String| {
            if let Some(first) = ports.get(&port) {
                errors.push(&field, format!("port {port} is already used by {first}"));
            } else {
                ports.insert(port, field);
            }
        };
        let mut names = BTreeMap::new();
        for (i, inbound) in self.inbound.iter().enumerate() {
            let path = idx("spec.inbound", i);
            if let Some(name) = &inbound.name {
                let field = at(&path, "name");
                if let Some(e) = crate::validation::validate_name("", name) {
                    errors.push(field, e.reason);
                } else if name.chars().all(|c| c.is_ascii_digit()) {
                    errors.push(
                        field,
                        format!("{name:?} is only digits, which sectionName reads as a port; give the inbound a name with a letter"),
                    );
                } else if let Some(first) = names.insert(name.clone(), field.clone()) {
                    errors.push(field, format!("{name:?} is already the name of {first}"));
                }
            }
            errors.port(at(&path, "port"), Some(inbound.port));
            claim(errors, inbound.port, at(&path, "port"));
            errors.port(at(&path, "servicePort"), inbound.service_port);
            if let Some(a) = &inbound.service_address {
                errors.check(at(&path, "serviceAddress"), check_host(a));
            }
            errors.check(at(&path, "service"), check_service_name(&inbound.service));
            for reserved in [SERVICE_TAG, ZONE_TAG, PORT_TAG, PORT_NAME_TAG] {
                if inbound.tags.contains_key(reserved) {
                    errors.push(
                        at(&at(&path, "tags"), reserved),
                        format!("is set by Causeway and must not be given (use the service field for {SERVICE_TAG})"),
                    );
                }
            }
            check_tags(errors, &at(&path, "tags"), &inbound.tags);
        }
        let mut services = BTreeSet::new();
        for (i, outbound) in self.outbound.iter().enumerate() {
            let path = idx("spec.outbound", i);
            errors.port(at(&path, "port"), Some(outbound.port));
            claim(errors, outbound.port, at(&path, "port"));
            if let Some(a) = &outbound.address {
                errors.check(at(&path, "address"), check_host(a));
            }
            errors.check(at(&path, "service"), check_service_name(&outbound.service));
            if let Some(section) = &outbound.section_name {
                errors.check(
                    at(&path, "sectionName"),
                    crate::target_ref::check_section_name(section),
                );
            }
            if !services.insert((&outbound.service, &outbound.section_name)) {
                errors.push(
                    at(&path, "service"),
                    match &outbound.section_name {
                        None => format!(
                            "service {:?} has an earlier outbound already",
                            outbound.service
                        ),
                        Some(section) => format!(
                            "port {section:?} of service {:?} has an earlier outbound already",
                            outbound.service
                        ),
                    },
                );
            }
        }
        if let Some(tp) = &self.transparent_proxying {
            let field = "spec.transparentProxying.outboundPort".to_owned();
            errors.port(field.clone(), Some(tp.outbound_port));
            claim(errors, tp.outbound_port, field);
            if let Some(dns) = tp.dns_port {
                let field = "spec.transparentProxying.dnsPort".to_owned();
                errors.port(field.clone(), Some(dns));
                claim(errors, dns, field);
            }
            for (i, service) in tp.services.iter().flatten().enumerate() {
                errors.check(
                    idx("spec.transparentProxying.services", i),
                    check_service_name(service),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<DataplaneSpec>(
            &[
                json!({"address": "10.0.1.15", "advertisedAddress": "203.0.113.7",
                       "inbound": [{"name": "http", "port": 20001, "servicePort": 8080, "service": "backend", "protocol": "http", "tags": {"version": "v2"}},
                                   {"port": 20002, "service": "backend-admin", "serviceAddress": "127.0.0.1", "protocol": "grpc"}],
                       "outbound": [{"port": 10001, "service": "db"}, {"port": 10002, "address": "127.0.0.2", "service": "redis"}],
                       "adminPort": 9902}),
                json!({"address": "backend-1.vms.internal", "inbound": [{"port": 8080, "service": "backend"}]}),
                json!({"address": "10.0.1.15", "inbound": [{"port": 8080, "service": "web"}],
                       "transparentProxying": {"outboundPort": 15001, "services": ["backend", "db"]}}),
            ],
            &[
                (
                    json!({"address": "10.0.0.1", "inbound": []}),
                    &[("spec.inbound", "needs at least one inbound")],
                ),
                (
                    json!({"address": "10.0.0.1", "inbound": [{"port": 15001, "service": "web"}],
                           "transparentProxying": {"services": ["b c"]}}),
                    &[
                        (
                            "spec.transparentProxying.outboundPort",
                            "port 15001 is already used by spec.inbound[0].port",
                        ),
                        (
                            "spec.transparentProxying.services[0]",
                            "not a valid service name",
                        ),
                    ],
                ),
                (
                    json!({"address": "not an address", "inbound": [{"port": 0, "service": "b c"}]}),
                    &[
                        ("spec.address", "must be an IP address or a DNS name"),
                        ("spec.inbound[0].port", "must be a port between 1 and 65535"),
                        ("spec.inbound[0].service", "not a valid service name"),
                    ],
                ),
                (
                    json!({"address": "10.0.0.1", "inbound": [{"port": 9901, "service": "a", "tags": {"causeway.io/service": "b"}}],
                           "outbound": [{"port": 10001, "service": "db"}, {"port": 10001, "service": "db"}]}),
                    &[
                        (
                            "spec.inbound[0].port",
                            "port 9901 is already used by spec.adminPort",
                        ),
                        (
                            "spec.inbound[0].tags.causeway.io/service",
                            "is set by Causeway",
                        ),
                        (
                            "spec.outbound[1].port",
                            "port 10001 is already used by spec.outbound[0].port",
                        ),
                        (
                            "spec.outbound[1].service",
                            "service \"db\" has an earlier outbound already",
                        ),
                    ],
                ),
                (
                    json!({"address": "10.0.0.1", "inbound": [{"port": 1, "service": "a", "protocol": "udp"}]}),
                    &[("spec.inbound[0].protocol", "unknown variant `udp`")],
                ),
                (
                    json!({"inbound": [{"port": 1, "service": "a"}]}),
                    &[("spec.address", "is required")],
                ),
                (
                    json!({"address": "10.0.0.1", "inbound": [
                        {"name": "http", "port": 1, "service": "a"},
                        {"name": "http", "port": 2, "service": "b"},
                        {"name": "8080", "port": 3, "service": "c"},
                        {"name": "Admin", "port": 4, "service": "d"}]}),
                    &[
                        (
                            "spec.inbound[1].name",
                            "\"http\" is already the name of spec.inbound[0].name",
                        ),
                        ("spec.inbound[2].name", "is only digits"),
                        ("spec.inbound[3].name", "not a valid DNS label"),
                    ],
                ),
            ],
        );
    }
}
