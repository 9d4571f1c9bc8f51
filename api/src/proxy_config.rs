//! `ProxyConfig`: everything a sidecar needs, computed by its zone control plane from the
//! resource model and streamed over DDS. The sidecar runs on it alone: listeners,
//! identities to expect, who may call, where each destination's endpoints are and how to
//! pick one. Serialized as JSON on the wire and as YAML in golden files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Action, LoadBalancerType, MtlsMode, Protocol};

/// The configuration of one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Content hash: equal versions mean equal configs.
    pub version: String,
    pub mesh: String,
    /// The Dataplane's name.
    pub dataplane: String,
    pub zone: String,
    /// The Dataplane's address: where inbound listeners bind.
    pub address: String,
    /// mTLS mode of the mesh; `Off` also when the mesh has no mTLS.
    pub mtls: MtlsMode,
    /// The proxy's identity (`spiffe://<trust-domain>/<service>` of its first inbound);
    /// its certificate carries it.
    pub identity: Option<String>,
    pub inbounds: Vec<InboundListener>,
    pub outbounds: Vec<OutboundListener>,
    /// Revoked intermediate CAs of the mesh (SHA-256 of the DER, hex): a peer whose chain
    /// contains one is refused, in every zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_cas: Vec<String>,
}

/// Traffic to a service this proxy fronts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundListener {
    /// Where the proxy listens (mTLS when the mesh has it).
    pub port: u16,
    pub service: String,
    /// Where the application listens.
    pub app_address: String,
    pub app_port: u16,
    pub protocol: Protocol,
    pub tags: BTreeMap<String, String>,
    /// Who may call, first match wins; no match means [`InboundListener::default_action`].
    pub permissions: Vec<PermissionRule>,
    /// What happens to callers no rule matches: `Deny` with mTLS (deny by default),
    /// `Allow` without (no identities to check).
    pub default_action: Action,
}

/// One MeshTrafficPermission rule after merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRule {
    pub source: SourceMatch,
    pub action: Action,
    /// The policies behind the rule, for `/config` and inspection.
    pub policies: Vec<String>,
}

/// Which callers a rule covers, decided from the caller's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SourceMatch {
    /// Any caller with a mesh identity.
    Any,
    /// Callers whose identity is this SPIFFE id.
    Spiffe { id: String },
}

/// A destination this proxy's application calls on a local port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundListener {
    /// The local port the application connects to.
    pub port: u16,
    /// The local address the proxy listens on for it.
    pub address: String,
    pub service: String,
    pub protocol: Protocol,
    /// The identity the destination's certificate must carry.
    pub identity: Option<String>,
    pub load_balancer: LoadBalancerType,
    /// Endpoints in priority order: this zone's first, then other zones in failover
    /// order. The proxy uses the first group whose healthy share is at least
    /// `failoverThreshold`; below it, that group's healthy endpoints and the next
    /// group's share the traffic.
    pub groups: Vec<EndpointGroup>,
    /// Percent of a group's endpoints that must be healthy for it to take all traffic
    /// (MeshLoadBalancingStrategy `crossZone.failoverThreshold`, default 50).
    #[serde(default = "default_failover_threshold")]
    pub failover_threshold: f64,
}

fn default_failover_threshold() -> f64 {
    50.0
}

/// Endpoints of equal priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointGroup {
    /// The zone the endpoints are in.
    pub zone: String,
    pub endpoints: Vec<Endpoint>,
}

/// One place to send a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// Relative share of traffic (the instance count behind a zone ingress).
    pub weight: u32,
    /// Through another zone's ingress: the TLS SNI that names the destination, which
    /// the ingress routes on without terminating TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// The SNI a sidecar sends to another zone's ingress for `service` in `mesh`.
pub fn ingress_sni(service: &str, mesh: &str) -> String {
    format!("{service}.{mesh}.causeway")
}

/// The SNI that names one endpoint (`id` from the ingress's available services) of
/// `service` in `mesh` behind another zone's ingress.
pub fn endpoint_sni(id: &str, service: &str, mesh: &str) -> String {
    format!("{id}.{service}.{mesh}.causeway")
}

/// The configuration of one zone ingress: which SNI goes where. Computed by its zone
/// control plane from the zone's dataplanes, streamed over DDS like a [`ProxyConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressConfig {
    /// Content hash: equal versions mean equal configs.
    pub version: String,
    pub mesh: String,
    pub zone: String,
    /// The ZoneIngress's name.
    pub name: String,
    /// Set while the ingress must refuse all traffic (a failover drill on its zone), with
    /// the reason it logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusing: Option<String>,
    /// SNI -> the local endpoints (sidecar inbounds, which terminate the mTLS) it reaches.
    pub routes: BTreeMap<String, Vec<IngressTarget>>,
}

/// A local endpoint an ingress forwards to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTarget {
    pub address: String,
    pub port: u16,
}

/// The SPIFFE id of `service` in a mesh with `trust_domain`.
pub fn spiffe_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/{service}")
}
