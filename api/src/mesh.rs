//! `Mesh`: a service mesh, its mutual TLS and certificate settings.

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::validation::{FieldError, validate_dns_subdomain, validate_name};

/// The spec of a `Mesh`. Every field is optional; an empty spec is a mesh without mTLS.
///
/// ```yaml
/// type: Mesh
/// name: default
/// spec:
///   mtls:
///     mode: Strict
///     backend: {type: builtin, keyType: ecdsaP256, caValidity: 87600h}
///   trustDomain: default.example.com
///   certificateTtl: 24h
///   certificateRenewAt: 70%
///   crossZone: true
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// Mutual TLS between the mesh's workloads. Absent: no mTLS, traffic is plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// The trust domain in workload identities, `spiffe://<trustDomain>/<service>`.
    /// A DNS subdomain. Absent: the mesh's name (see [`MeshSpec::trust_domain_or`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// How long a workload certificate is valid. From `1m` to `8760h` (one year).
    /// Default `24h`.
    #[serde(default = "default_certificate_ttl")]
    pub certificate_ttl: Duration,
    /// The point in a certificate's lifetime at which a proxy renews it, as a
    /// percentage of `certificateTtl`: 70 renews a 24h certificate after about 16.8h,
    /// leaving 7.2h to ride out a control-plane outage. From 10 to 90. Default 70.
    #[serde(default = "default_certificate_renew_at")]
    pub certificate_renew_at: Percent,
    /// Whether traffic may cross zones (through the zone ingresses). Default `true`.
    #[serde(default = "default_true")]
    pub cross_zone: bool,
    /// Transparent proxying: where a workload's connections to destinations outside
    /// the mesh go, and the range of the services' virtual IPs.
    #[serde(default, skip_serializing_if = "Networking::is_default")]
    pub networking: Networking,
}

/// A mesh's networking under transparent proxying.
///
/// ```yaml
/// networking:
///   outbound: {passthrough: false}
///   virtualIps: {cidr: 241.0.0.0/16}
///   dnsSuffix: mesh
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    /// Connections from redirected workloads to destinations outside the mesh.
    #[serde(default)]
    pub outbound: OutboundNetworking,
    /// Where the services' virtual IPs come from.
    #[serde(default)]
    pub virtual_ips: VirtualIpSettings,
    /// The DNS suffix of the mesh's names in the sidecars' DNS: `<service>.<suffix>`
    /// and `<service>.<zone>.<suffix>`. A DNS subdomain. Default `mesh`.
    #[serde(default = "default_dns_suffix")]
    pub dns_suffix: String,
}

fn default_dns_suffix() -> String {
    "mesh".to_string()
}

impl Default for Networking {
    fn default() -> Self {
        Networking {
            outbound: OutboundNetworking::default(),
            virtual_ips: VirtualIpSettings::default(),
            dns_suffix: default_dns_suffix(),
        }
    }
}

impl Networking {
    fn is_default(&self) -> bool {
        *self == Networking::default()
    }
}

/// What a sidecar does with a redirected connection to an address that is not a mesh
/// service's virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundNetworking {
    /// `true`: it connects to the original destination itself (as Kuma does by
    /// default); `false`: it closes the connection, so workloads reach only mesh
    /// services. Default `true`.
    #[serde(default = "default_true")]
    pub passthrough: bool,
}

impl Default for OutboundNetworking {
    fn default() -> Self {
        OutboundNetworking { passthrough: true }
    }
}

/// The range the global control plane allocates the services' virtual IPs from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualIpSettings {
    /// An IPv4 range, `/8` to `/30`. A service keeps its address when the range changes
    /// (a workload may hold it in a cache); new services get addresses from the new
    /// range. Default `241.0.0.0/16`, in the reserved 240.0.0.0/4, so no real
    /// destination is hidden.
    #[serde(default = "default_vip_cidr")]
    pub cidr: String,
}

impl Default for VirtualIpSettings {
    fn default() -> Self {
        VirtualIpSettings {
            cidr: default_vip_cidr(),
        }
    }
}

fn default_vip_cidr() -> String {
    crate::virtual_ip::DEFAULT_VIP_CIDR.to_string()
}

impl VirtualIpSettings {
    /// The range, parsed (a stored Mesh was checked when written; an unparsable one
    /// falls back to the default).
    pub fn range(&self) -> crate::virtual_ip::Ipv4Range {
        self.cidr.parse().unwrap_or_else(|_| {
            crate::virtual_ip::DEFAULT_VIP_CIDR
                .parse()
                .expect("the default range parses")
        })
    }
}

/// Mutual TLS settings of a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    /// How strictly mTLS is enforced. Default `Strict`.
    #[serde(default)]
    pub mode: MtlsMode,
    /// The certificate authority that signs workload certificates. Default: a builtin CA.
    #[serde(default)]
    pub backend: CaBackend,
}

/// How strictly mTLS is enforced on inbound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum MtlsMode {
    /// Only mTLS traffic from mesh identities is accepted. The default.
    #[default]
    Strict,
    /// Both mTLS and plaintext are accepted; for migrating workloads into the mesh.
    Permissive,
    /// Certificates are issued but not required; traffic is plaintext.
    Off,
}

/// The certificate authority of a mesh, selected by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum CaBackend {
    /// `type: builtin`: the global control plane generates and keeps the CA.
    Builtin(BuiltinCa),
    /// `type: provided`: the user supplies the CA certificate and key.
    Provided(ProvidedCa),
}

impl Default for CaBackend {
    fn default() -> Self {
        CaBackend::Builtin(BuiltinCa::default())
    }
}

/// A CA that the global control plane generates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinCa {
    /// The CA's key algorithm. Default `ecdsaP256`.
    #[serde(default)]
    pub key_type: KeyType,
    /// How long the CA certificate is valid; at least `certificateTtl`. Default `87600h`
    /// (ten years).
    #[serde(default = "default_ca_validity")]
    pub ca_validity: Duration,
}

impl Default for BuiltinCa {
    fn default() -> Self {
        BuiltinCa {
            key_type: KeyType::default(),
            ca_validity: default_ca_validity(),
        }
    }
}

fn default_ca_validity() -> Duration {
    Duration::from_hours(87_600)
}

/// A CA that the user supplies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvidedCa {
    /// The CA certificate, PEM-encoded (`-----BEGIN CERTIFICATE-----`); a chain may
    /// follow it. Required. Must not contain the private key.
    pub cert_pem: String,
    /// The name of the secret in the mesh that holds the CA's private key (PEM). Required.
    pub key_secret_ref: String,
}

/// Key algorithm of a builtin CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyType {
    /// `ecdsaP256`: ECDSA on P-256. The default.
    #[default]
    EcdsaP256,
    /// `rsa2048`: RSA with a 2048-bit modulus.
    Rsa2048,
    /// `rsa4096`: RSA with a 4096-bit modulus.
    Rsa4096,
}

fn default_certificate_ttl() -> Duration {
    Duration::from_hours(24)
}

fn default_certificate_renew_at() -> Percent {
    Percent::new(70.0)
}

fn default_true() -> bool {
    true
}

// === impl MeshSpec ===

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            mtls: None,
            trust_domain: None,
            certificate_ttl: default_certificate_ttl(),
            certificate_renew_at: default_certificate_renew_at(),
            cross_zone: true,
            networking: Networking::default(),
        }
    }
}

impl MeshSpec {
    /// The trust domain: `trustDomain` if set, else the mesh's name.
    pub fn trust_domain_or<'a>(&'a self, mesh_name: &'a str) -> &'a str {
        self.trust_domain.as_deref().unwrap_or(mesh_name)
    }

    /// How long after issue a certificate should be renewed.
    pub fn renew_after(&self) -> std::time::Duration {
        self.certificate_ttl
            .as_std()
            .mul_f64(self.certificate_renew_at.fraction())
    }

    /// The checks that the shape alone does not express; paths start with `spec.`.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(trust_domain) = &self.trust_domain
            && let Err(reason) = validate_dns_subdomain(trust_domain)
        {
            errors.push(FieldError::new("spec.trustDomain", reason));
        }
        let (min_ttl, max_ttl) = (Duration::from_mins(1), Duration::from_hours(8760));
        if self.certificate_ttl < min_ttl || self.certificate_ttl > max_ttl {
            errors.push(FieldError::new(
                "spec.certificateTtl",
                format!(
                    "must be between {min_ttl} and {max_ttl} (got {})",
                    self.certificate_ttl
                ),
            ));
        }
        if let Err(reason) = self
            .networking
            .virtual_ips
            .cidr
            .parse::<crate::virtual_ip::Ipv4Range>()
        {
            errors.push(FieldError::new("spec.networking.virtualIps.cidr", reason));
        }
        if let Err(reason) = validate_dns_subdomain(&self.networking.dns_suffix) {
            errors.push(FieldError::new("spec.networking.dnsSuffix", reason));
        }
        let renew_at = self.certificate_renew_at.value();
        if !(10.0..=90.0).contains(&renew_at) {
            errors.push(FieldError::new(
                "spec.certificateRenewAt",
                format!(
                    "must be between 10% and 90% of the certificate's lifetime (got {renew_at}%)"
                ),
            ));
        }
        match self.mtls.as_ref().map(|m| &m.backend) {
            Some(CaBackend::Builtin(ca)) if ca.ca_validity < self.certificate_ttl => {
                errors.push(FieldError::new(
                    "spec.mtls.backend.caValidity",
                    format!(
                        "must be at least certificateTtl ({}) so the CA outlives the \
                         certificates it signs (got {})",
                        self.certificate_ttl, ca.ca_validity
                    ),
                ));
            }
            Some(CaBackend::Provided(ca)) => {
                if !ca.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    errors.push(FieldError::new(
                        "spec.mtls.backend.certPem",
                        "must be a PEM-encoded certificate (a block starting with -----BEGIN CERTIFICATE-----)",
                    ));
                }
                if ca.cert_pem.contains("PRIVATE KEY-----") {
                    errors.push(FieldError::new(
                        "spec.mtls.backend.certPem",
                        "must not contain a private key; put the key in the secret named by keySecretRef",
                    ));
                }
                if ca.key_secret_ref.is_empty() {
                    errors.push(FieldError::new(
                        "spec.mtls.backend.keySecretRef",
                        "must name the secret that holds the CA's private key",
                    ));
                } else {
                    errors.extend(validate_name(
                        "spec.mtls.backend.keySecretRef",
                        &ca.key_secret_ref,
                    ));
                }
            }
            Some(CaBackend::Builtin(_)) | None => {}
        }
        errors
    }
}

impl crate::spec::Spec for MeshSpec {
    fn check(&self, errors: &mut crate::spec::Errors) {
        errors.0.extend(MeshSpec::check(self));
    }
}

/// Decodes and checks a Mesh spec (what the registry entry does).
#[cfg(test)]
pub(crate) fn validate_spec(spec: &serde_json::Value) -> Vec<FieldError> {
    crate::spec::validate_spec_of::<MeshSpec>(spec)
}

// === impl Deserialize for CaBackend ===

/// Reads `type` and the fields of every backend in one pass, so errors keep their
/// field paths (serde's internally tagged enums buffer the content and lose them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCaBackend {
    #[serde(rename = "type")]
    kind: CaBackendKind,
    #[serde(default)]
    key_type: Option<KeyType>,
    #[serde(default)]
    ca_validity: Option<Duration>,
    #[serde(default)]
    cert_pem: Option<String>,
    #[serde(default)]
    key_secret_ref: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum CaBackendKind {
    Builtin,
    Provided,
}

impl<'de> Deserialize<'de> for CaBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawCaBackend::deserialize(deserializer)?;
        match raw.kind {
            CaBackendKind::Builtin => {
                if raw.cert_pem.is_some() || raw.key_secret_ref.is_some() {
                    let field = if raw.cert_pem.is_some() {
                        "certPem"
                    } else {
                        "keySecretRef"
                    };
                    return Err(de::Error::custom(format!(
                        "`{field}` is only for `type: provided`; a builtin CA takes keyType and caValidity"
                    )));
                }
                let defaults = BuiltinCa::default();
                Ok(CaBackend::Builtin(BuiltinCa {
                    key_type: raw.key_type.unwrap_or(defaults.key_type),
                    ca_validity: raw.ca_validity.unwrap_or(defaults.ca_validity),
                }))
            }
            CaBackendKind::Provided => {
                if raw.key_type.is_some() || raw.ca_validity.is_some() {
                    let field = if raw.key_type.is_some() {
                        "keyType"
                    } else {
                        "caValidity"
                    };
                    return Err(de::Error::custom(format!(
                        "`{field}` is only for `type: builtin`; a provided CA takes certPem and keySecretRef"
                    )));
                }
                Ok(CaBackend::Provided(ProvidedCa {
                    cert_pem: raw
                        .cert_pem
                        .ok_or_else(|| de::Error::missing_field("certPem"))?,
                    key_secret_ref: raw
                        .key_secret_ref
                        .ok_or_else(|| de::Error::missing_field("keySecretRef"))?,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
