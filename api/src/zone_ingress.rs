//! `ZoneIngress`: a zone's gateway for traffic from other zones.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec, at, check_host, check_service_name, idx};
use crate::target_ref::check_tags;

/// The spec of a `ZoneIngress`. Other zones' proxies connect to
/// `advertisedAddress:advertisedPort` (or `address:port`) with an SNI that names the
/// destination; the ingress passes the TLS bytes to a local endpoint.
///
/// ```yaml
/// type: ZoneIngress
/// mesh: default
/// name: eu-west-ingress
/// spec:
///   zone: eu-west
///   address: 10.0.0.5
///   port: 10001
///   advertisedAddress: ingress.eu-west.example.com
///   advertisedPort: 443
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngressSpec {
    /// The zone the ingress belongs to. Set by the zone control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The address it listens on.
    pub address: String,
    /// The port it listens on.
    pub port: u16,
    /// The address other zones use, when it differs (a load balancer, NAT). Set
    /// together with `advertisedPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// The port other zones use, with `advertisedAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u16>,
    /// The services reachable through it, with their endpoint counts. Filled in by the
    /// zone control plane; users leave it empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_services: Vec<AvailableService>,
    /// The port of the ingress's admin endpoint, on 127.0.0.1. Default 9901.
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
}

fn default_admin_port() -> u16 {
    9901
}

/// A service reachable through an ingress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AvailableService {
    /// The service name.
    pub service: String,
    /// The tags its endpoints share (besides the service).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// How many healthy endpoints it has in the zone.
    pub instances: u32,
    /// The protocol its endpoints declare (HTTP if any does), so other zones' sidecars
    /// proxy it as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::Protocol>,
    /// Opaque ids of its endpoints: a sidecar in another zone names one in its SNI
    /// (`<id>.<service>.<mesh>.causeway`) to balance requests per endpoint rather than
    /// per ingress connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

impl Spec for ZoneIngressSpec {
    fn check(&self, errors: &mut Errors) {
        if let Some(zone) = &self.zone {
            errors
                .0
                .extend(crate::validation::validate_name("spec.zone", zone));
        }
        errors.check("spec.address", check_host(&self.address));
        errors.port("spec.port".to_owned(), Some(self.port));
        errors.port("spec.adminPort".to_owned(), Some(self.admin_port));
        if self.admin_port == self.port {
            errors.push(
                "spec.adminPort",
                format!("port {} is already used by spec.port", self.port),
            );
        }
        match (&self.advertised_address, self.advertised_port) {
            (Some(a), Some(p)) => {
                errors.check("spec.advertisedAddress", check_host(a));
                errors.port("spec.advertisedPort".to_owned(), Some(p));
            }
            (Some(_), None) => {
                errors.push("spec.advertisedPort", "is required with advertisedAddress")
            }
            (None, Some(_)) => {
                errors.push("spec.advertisedAddress", "is required with advertisedPort")
            }
            (None, None) => {}
        }
        for (i, s) in self.available_services.iter().enumerate() {
            let path = idx("spec.availableServices", i);
            errors.check(at(&path, "service"), check_service_name(&s.service));
            check_tags(errors, &at(&path, "tags"), &s.tags);
            for (j, id) in s.endpoints.iter().enumerate() {
                if id.is_empty()
                    || id.len() > 32
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                {
                    errors.push(
                        idx(&at(&path, "endpoints"), j),
                        "an endpoint id is 1-32 lowercase letters and digits",
                    );
                }
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
        table::<ZoneIngressSpec>(
            &[
                json!({"zone": "eu-west", "address": "10.0.0.5", "port": 10001, "advertisedAddress": "ingress.eu-west.example.com", "advertisedPort": 443,
                       "availableServices": [{"service": "backend", "tags": {"version": "v2"}, "instances": 3}]}),
                json!({"address": "10.0.0.5", "port": 10001}),
            ],
            &[
                (
                    json!({"address": "10.0.0.5", "port": 10001, "advertisedAddress": "lb.example.com"}),
                    &[("spec.advertisedPort", "is required with advertisedAddress")],
                ),
                (
                    json!({"address": "10.0.0.5", "port": 9901}),
                    &[("spec.adminPort", "port 9901 is already used by spec.port")],
                ),
                (
                    json!({"zone": "EU", "address": "10.0.0.5", "port": 0, "availableServices": [{"service": "", "instances": 1}]}),
                    &[
                        ("spec.zone", "not a valid DNS label"),
                        ("spec.port", "must be a port between 1 and 65535"),
                        (
                            "spec.availableServices[0].service",
                            "the service name is empty",
                        ),
                    ],
                ),
                (
                    json!({"address": "10.0.0.5", "port": 1, "availableServices": [{"service": "a"}]}),
                    &[("spec.availableServices[0].instances", "is required")],
                ),
                (
                    json!({"address": "10.0.0.5", "port": 1, "networking": {}}),
                    &[("spec.networking", "unknown field `networking`")],
                ),
            ],
        );
    }
}
