//! `causeway inspect dataplane`: what one proxy is configured with and how it is doing,
//! as the zone control plane serves it (`GET /meshes/{mesh}/dataplanes/{name}/inspect`)
//! and the CLI reads it. Also the report a sidecar sends its zone over DDS
//! ([`ProxyReport`]), from which the runtime half of the answer comes.
//!
//! The answer has two halves with different sources:
//! - what the zone computes (pure, from the resources it holds): per inbound, per
//!   destination and per route, which policies of each kind matched and what they
//!   merged to ([`crate::effective`]), the policies of the mesh that matched nothing
//!   here and why, and the version of the config computed now;
//! - what the proxy told the zone over its DDS stream: the last config it accepted
//!   (ACK) or rejected (NACK, with the reason), its certificate, and its endpoints'
//!   health and ejections (a [`ProxyReport`], with the time it arrived).
//!
//! Types only; no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::effective::{FromRule, IgnoredPolicy, Merged};
use crate::enforcement::FieldWarning;

/// What a sidecar reports of itself to its zone (the JSON of DDS's `ProxyReport`).
/// Only what changes rarely is in it (no load, no latency), so that it is sent when
/// something changed, not on a timer; `/metrics` has the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// Its workload certificate; `None` without mTLS or before the first is issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    /// Its destinations' endpoints, one entry per outbound and per MeshTCPRoute
    /// backend of an outbound.
    #[serde(default)]
    pub destinations: Vec<DestinationReport>,
}

/// A proxy's workload certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateReport {
    /// Its SPIFFE id.
    pub identity: String,
    /// When it expires, Unix seconds.
    pub not_after: i64,
    /// When the proxy renews it, Unix seconds.
    pub renew_at: i64,
    /// SHA-256 (DER, hex) of the intermediate CA that issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_sha256: Option<String>,
    /// SHA-256 (DER, hex) of each root the proxy trusts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_sha256: Vec<String>,
}

/// The endpoints of one destination, as the proxy's balancer holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationReport {
    /// The outbound's port.
    pub port: u16,
    /// The outbound's virtual IP, for an implicit one (`port` 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// The service called: the outbound's, or a route backend's.
    pub service: String,
    /// Set for a MeshTCPRoute backend of the outbound (its service and tags, as
    /// `service{k=v}`); `None` for the outbound's own endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// In priority order (this zone first, then the failover order).
    pub endpoints: Vec<EndpointReport>,
}

/// One endpoint and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    pub address: String,
    pub port: u16,
    /// The zone it is in (another zone's endpoints are its ingress).
    pub zone: String,
    /// The SNI it is dialled with, when it is another zone's ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Whether the proxy sends it traffic now: not ejected and not failing its active
    /// health checks.
    pub healthy: bool,
    /// Its MeshHealthCheck verdict; `None` when it is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckState>,
    /// Set while it is ejected (passive health or outlier detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<Ejection>,
    /// Failed connections in a row, as passive health counts them (0 once one works).
    pub connect_failures: u32,
    /// How many times MeshCircuitBreaker's outlier detection ejected it.
    pub outlier_ejections: u32,
}

/// An active health check's verdict on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheckState {
    Passing,
    Failing,
}

/// Why and until when an endpoint is out of rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ejection {
    /// Unix seconds (rounded up).
    pub until: i64,
    /// `failed connections` (passive health: connections refused or timed out, or the
    /// peer sidecar answering that its app is down) or `outlier detection`
    /// (MeshCircuitBreaker).
    pub reason: String,
}

/// The answer of `GET /meshes/{mesh}/dataplanes/{name}/inspect`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneInspection {
    pub mesh: String,
    pub name: String,
    /// The zone whose control plane answered (and configures the proxy).
    pub zone: String,
    /// The version of the config the zone computes for it now, or why it cannot.
    pub config: ComputedConfig,
    /// The proxy's side; `None` when no sidecar of that name is connected now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyState>,
    /// Policies of kinds that configure the whole proxy (top-level `default`, such as
    /// MeshTrace and MeshMetric).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_policies: Vec<KindMerged>,
    /// Per inbound, in the Dataplane's order.
    pub inbounds: Vec<InboundInspection>,
    /// Per destination, in the Dataplane's order.
    pub outbounds: Vec<OutboundInspection>,
    /// Policies of the mesh that match nothing of this proxy, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<PolicyNote>,
    /// Policies left out because they cannot be used (see [`IgnoredPolicy`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<PolicyNote>,
    /// Matched policies with parts the proxies do not enforce yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PolicyWarnings>,
}

/// The config the zone computes for the proxy now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputedConfig {
    /// Its version (a content hash), as sent to the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why it cannot be computed (the proxy keeps its last config meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A connected proxy as its zone knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    /// When its current DDS stream opened, Unix ms.
    pub connected_unix_ms: i64,
    /// The last config version sent to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_version: Option<String>,
    /// The last config it accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<ConfigReply>,
    /// The last config it rejected, unless it accepted a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<ConfigReply>,
    /// Its certificate, as it reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    /// When its last [`ProxyReport`] arrived, Unix ms; 0 if none yet.
    pub reported_unix_ms: i64,
    /// Why its last report could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_error: Option<String>,
}

/// A proxy's ACK or NACK of one config version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReply {
    pub version: String,
    /// Unix ms.
    pub at_unix_ms: i64,
    /// A NACK's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The merged configuration of one policy kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindMerged {
    pub kind: String,
    #[serde(flatten)]
    pub merged: Merged,
}

/// One inbound and the policies that configure it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundInspection {
    pub port: u16,
    pub service: String,
    /// Per policy kind that matched it (registry order): one rule per source, most
    /// specific first.
    pub policies: Vec<KindRules>,
}

/// The `from[]`/`rules[]` of one policy kind on an inbound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindRules {
    pub kind: String,
    pub rules: Vec<FromRule>,
}

/// One destination, the policies that configure it, and its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundInspection {
    pub port: u16,
    /// An implicit outbound's virtual IP (transparent proxying; `port` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// The zone an implicit outbound pins calls to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub service: String,
    /// Per policy kind that matched it (registry order).
    pub policies: Vec<KindOutbound>,
    /// Its endpoints as the proxy last reported them (then its route backends'); empty
    /// when the proxy has not reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationReport>,
}

/// What one policy kind configures for a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindOutbound {
    pub kind: String,
    /// For all traffic to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Merged>,
    /// Per route (MeshHTTPRoute name): the destination's with the route's on top.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Merged>,
}

/// A policy that does not apply here, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNote {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

impl PolicyNote {
    /// An [`IgnoredPolicy`] of `kind`.
    pub fn ignored(kind: &str, p: &IgnoredPolicy) -> PolicyNote {
        PolicyNote {
            kind: kind.to_owned(),
            name: p.name.clone(),
            reason: p.reason.clone(),
        }
    }
}

/// A matched policy's parts that have no effect yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyWarnings {
    pub kind: String,
    pub name: String,
    pub warnings: Vec<FieldWarning>,
}
