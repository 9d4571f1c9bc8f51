//! Certificates and rustls configurations shared by the global and the zone control
//! planes: generated CAs, server and client certificates, the mutual TLS of the Raft
//! transport, and CSR signing (zone certificates, zones' intermediate mesh CAs). A crate
//! of its own because both control planes need it and neither should depend on the
//! other. It only builds certificates and configs; it opens no sockets. It also holds
//! the dataplane tokens ([`dataplane_token`]): the global control plane signs them and
//! every zone verifies them, so both need the format. Both control planes also keep their
//! secrets at rest the same way: keys sealed ([`sealing`]), API tokens hashed and handed
//! out once ([`api_token`]).

pub mod api_token;
pub mod ca_rotation;
pub mod dataplane_token;
pub mod sealing;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Name every Raft peer certificate carries; peers are authenticated by the cluster CA.
pub const RAFT_SERVER_NAME: &str = "causeway-raft";

/// Common name of a cluster's Raft CA.
pub const RAFT_CA_NAME: &str = "Causeway Raft CA";

/// Lifetime of a node's Raft certificate, in days.
pub const RAFT_CERT_DAYS: i64 = 3650;

/// The names a Raft node certificate carries: the shared [`RAFT_SERVER_NAME`] and
/// `node-<id>.causeway-raft`, which binds the certificate to one node id (a peer
/// dials that name, and frames a connection carries must come from that id).
pub fn raft_node_names(id: u64) -> Vec<String> {
    vec![RAFT_SERVER_NAME.to_string(), raft_node_name(id)]
}

/// `node-<id>.causeway-raft`.
pub fn raft_node_name(id: u64) -> String {
    format!("node-{id}.{RAFT_SERVER_NAME}")
}

/// The node id a Raft certificate (DER) is bound to: its `node-<id>.causeway-raft`
/// name. `None` when it names no node or several.
pub fn raft_node_id(der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let suffix = format!(".{RAFT_SERVER_NAME}");
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => d.strip_suffix(&suffix)?.strip_prefix("node-")?.parse().ok(),
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found")]
    Missing { what: String, kind: &'static str },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("parsing a certificate: {0}")]
    Parse(String),
}

/// A PEM certificate chain and private key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what: what.into(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

pub fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Missing {
            what: what.into(),
            kind: "private key",
        })
}

fn roots(ca_pem: &str, what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, what)? {
        roots.add(c)?;
    }
    Ok(roots)
}

fn ca_params(common_name: &str) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    Ok(p)
}

/// Generates a self-signed CA named `common_name`, valid ten years.
pub fn generate_ca(common_name: &str) -> Result<CertKey, TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(common_name)?.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a leaf certificate for `names` (DNS names or IP addresses), signed by the CA
/// `ca` whose common name is `ca_name` (the issuer is rebuilt from name and key, so the
/// CA certificate need not be parsed).
pub fn issue(
    ca: &CertKey,
    ca_name: &str,
    names: &[String],
    days: i64,
) -> Result<CertKey, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(ca_name)?, ca_key);
    let mut p = CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        p.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The subject names for a server listening on `addr`'s host: the IP itself, plus
/// `localhost` for loopback.
pub fn server_names(host: &str, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = extra.to_vec();
    names.push(host.to_string());
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "localhost" {
        names.push("localhost".into());
        names.push("127.0.0.1".into());
    }
    names.sort();
    names.dedup();
    names
}

/// A TLS server config presenting `ck`, optionally requiring client certificates
/// from `client_ca_pem`.
pub fn server_config(
    ck: &CertKey,
    client_ca_pem: Option<&str>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client CA")?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(
        certs(&ck.cert_pem, "server certificate")?,
        key(&ck.key_pem, "server key")?,
    )?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A TLS server config presenting `ck` that asks for a client certificate from one of
/// the CAs in `client_cas_pem` and admits a client without one (the handler decides:
/// KDS lets a zone enrol with a token before it has a certificate).
pub fn server_config_client_optional(
    ck: &CertKey,
    client_cas_pem: &str,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let v = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_cas_pem, "client CA")?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(v)
        .with_single_cert(
            certs(&ck.cert_pem, "server certificate")?,
            key(&ck.key_pem, "server key")?,
        )?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Whether the first certificate in `cert_pem` was signed by the CA `ca_pem` and is
/// valid now (a zone asks it of its certificate when global names a new zone CA).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    certs(cert_pem, "certificate").is_ok_and(|chain| chain_issued_by(&chain, ca_pem))
}

/// [`issued_by`] for a chain as a TLS peer presents it (leaf first).
pub fn chain_issued_by(chain: &[CertificateDer<'_>], ca_pem: &str) -> bool {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(roots) = roots(ca_pem, "CA") else {
        return false;
    };
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .is_ok_and(|v| {
            v.verify_client_cert(
                end_entity,
                intermediates,
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
        })
}

/// A TLS client config trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&CertKey>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem, "CA")?);
    Ok(match client {
        Some(ck) => builder.with_client_auth_cert(
            certs(&ck.cert_pem, "client certificate")?,
            key(&ck.key_pem, "client key")?,
        )?,
        None => builder.with_no_client_auth(),
    })
}

/// Mutual TLS for the Raft transport: the cluster CA and this node's certificate.
#[derive(Clone)]
pub struct RaftTls {
    pub ca_pem: String,
    pub node: CertKey,
}

impl RaftTls {
    /// Loads the CA certificate, node certificate and node key from PEM files.
    pub fn load(ca: &Path, cert: &Path, key_path: &Path) -> Result<RaftTls, TlsError> {
        let t = RaftTls {
            ca_pem: read(ca)?,
            node: CertKey {
                cert_pem: read(cert)?,
                key_pem: read(key_path)?,
            },
        };
        // Fail at start-up, not at the first connection.
        t.server()?;
        t.client()?;
        Ok(t)
    }

    pub fn server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(Arc::new(server_config(
            &self.node,
            Some(&self.ca_pem),
            &[],
        )?))
    }

    pub fn client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        Ok(Arc::new(client_config(&self.ca_pem, Some(&self.node))?))
    }
}

/// Generates a cluster CA and one certificate per node, for `causeway cluster gen-certs`.
pub fn generate_raft_certs(nodes: &[u64]) -> Result<(CertKey, Vec<(u64, CertKey)>), TlsError> {
    let ca = generate_ca(RAFT_CA_NAME)?;
    let mut out = Vec::new();
    for id in nodes {
        out.push((*id, issue_raft_node(&ca, *id)?));
    }
    Ok((ca, out))
}

/// A certificate and key for Raft node `id`, signed by the cluster's Raft CA `ca`.
pub fn issue_raft_node(ca: &CertKey, id: u64) -> Result<CertKey, TlsError> {
    issue(ca, RAFT_CA_NAME, &raft_node_names(id), RAFT_CERT_DAYS)
}

// === Secret files and tokens ===

/// Writes `contents` to `path` with mode 0600, atomically (a temp file renamed over it):
/// for keys and tokens, which must never be readable by other users.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `dir` if missing and makes it 0700, an existing one too: a control plane's
/// data directory holds its store and keys, which no other user may read. RocksDB
/// creates its files 0644 and its directories 0755, and the Rust bindings cannot change
/// that (its POSIX file system hard-codes `allow_non_owner_access`), so a 0700 directory
/// around the store is what keeps them private; what they hold is sealed or hashed anyway.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches_cert(cert_pem: &str, key_pem: &str) -> bool {
    use x509_parser::prelude::*;
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok(mut certs) = certs(cert_pem, "certificate") else {
        return false;
    };
    let der = certs.remove(0);
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// SHA-256 of bytes (a certificate's DER), hex: how CAs are named in revocation lists.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    hex::encode(d.as_ref())
}

/// SHA-256 (hex) of the first certificate in `pem` (DER): how roots and intermediates are
/// named across the mesh; empty when `pem` holds none.
pub fn first_cert_sha256(pem: &str) -> String {
    certs(pem, "certificate")
        .ok()
        .and_then(|c| c.into_iter().next())
        .map(|der| sha256_hex(&der))
        .unwrap_or_default()
}

/// SHA-256 (hex) of each certificate in `pem`, sorted: how a set of trusted CAs is
/// compared (the order and formatting of a bundle do not matter).
pub fn cert_shas(pem: &str) -> Vec<String> {
    let mut out: Vec<String> = certs(pem, "CA")
        .unwrap_or_default()
        .iter()
        .map(|der| sha256_hex(der))
        .collect();
    out.sort();
    out
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// === CSRs, intermediate CAs and certificate inspection ===

/// A freshly generated key and a certificate signing request for it. The key stays with
/// the caller; only the CSR travels.
pub struct Csr {
    pub csr_pem: String,
    pub key_pem: String,
}

/// Generates a P-256 key and a CSR with `common_name` as its subject.
pub fn generate_csr(common_name: &str) -> Result<Csr, TlsError> {
    csr_for_key(common_name, &KeyPair::generate()?.serialize_pem())
}

/// A CSR with `common_name` as its subject for an existing key (PEM): a request retried
/// after a lost answer carries the same key.
pub fn csr_for_key(common_name: &str, key_pem: &str) -> Result<Csr, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    let csr = p.serialize_request(&key)?;
    Ok(Csr {
        csr_pem: csr.pem()?,
        key_pem: key_pem.to_string(),
    })
}

/// SHA-256 (hex) of the public key a CSR carries, once its signature is verified (so
/// the sender holds the key): a retried request with the same key is recognisable.
pub fn csr_public_key_sha256(csr_pem: &str) -> Result<String, TlsError> {
    use rcgen::PublicKeyData as _;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    Ok(sha256_hex(csr.public_key.der_bytes()))
}

/// What a certificate signed from a CSR is for. The signer decides subject and names;
/// whatever the CSR asked for is ignored except its public key.
pub enum Profile {
    /// A client and server certificate with these subject alternative names (DNS names,
    /// IP addresses, or URIs when they contain `://`).
    Leaf {
        common_name: String,
        names: Vec<String>,
    },
    /// A CA that may sign leaves but no further CAs (path length 0).
    IntermediateCa { common_name: String },
}

/// Signs `csr_pem` with the CA `ca` (its certificate PEM and key), valid for `ttl`.
/// Returns the certificate PEM.
pub fn sign_csr(
    ca: &CertKey,
    csr_pem: &str,
    profile: &Profile,
    ttl: std::time::Duration,
) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let mut p = match profile {
        Profile::Leaf { common_name, names } => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, common_name.as_str());
            for n in names {
                p.subject_alt_names.push(if n.contains("://") {
                    rcgen::SanType::URI(n.as_str().try_into()?)
                } else if let Ok(ip) = n.parse::<IpAddr>() {
                    rcgen::SanType::IpAddress(ip)
                } else {
                    rcgen::SanType::DnsName(n.as_str().try_into()?)
                });
            }
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p
        }
        Profile::IntermediateCa { common_name } => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, common_name.as_str());
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p
        }
    };
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + ttl;
    p.use_authority_key_identifier_extension = true;
    csr.params = p;
    Ok(csr.signed_by(&issuer)?.pem())
}

/// Generates a self-signed CA named `common_name`, valid for `validity`.
pub fn generate_ca_valid(
    common_name: &str,
    validity: std::time::Duration,
) -> Result<CertKey, TlsError> {
    let key = KeyPair::generate()?;
    let mut p = ca_params(common_name)?;
    p.not_after = time::OffsetDateTime::now_utc() + validity;
    let cert = p.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub uris: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
}

/// Parses a DER certificate.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                uris.push(u.to_string());
            }
        }
    }
    Ok(CertInfo {
        common_name,
        uris,
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
    })
}

/// How a workload certificate carries one of its Dataplane's tags: a URI SAN
/// `causeway-tag://<name>/<value>`, both percent-encoded (tag names have `/` in them).
/// The zone writes them from the registered Dataplane, never from the CSR.
const TAG_URI: &str = "causeway-tag://";

/// What is left unencoded in a tag URI: letters, digits and `-._~`.
const TAG_CHARS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URI SAN that carries the tag `name: value`.
pub fn tag_uri(name: &str, value: &str) -> String {
    format!(
        "{TAG_URI}{}/{}",
        percent_encoding::utf8_percent_encode(name, TAG_CHARS),
        percent_encoding::utf8_percent_encode(value, TAG_CHARS)
    )
}

/// The tags a certificate's URI SANs carry (see [`tag_uri`]); others are skipped.
pub fn tags_of(uris: &[String]) -> std::collections::BTreeMap<String, String> {
    uris.iter()
        .filter_map(|u| {
            let (name, value) = u.strip_prefix(TAG_URI)?.split_once('/')?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            Some((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Parses the first certificate of a PEM chain.
pub fn cert_info(pem: &str) -> Result<CertInfo, TlsError> {
    let first = certs(pem, "certificate")?.remove(0);
    cert_info_der(&first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_by_tells_which_ca_signed_a_zone_certificate() {
        let old = generate_ca("zone CA").unwrap();
        let new = generate_ca("zone CA").unwrap();
        let csr = generate_csr("zone-a").unwrap();
        let profile = Profile::Leaf {
            common_name: "zone-a".into(),
            names: vec!["spiffe://causeway/zone/zone-a".into()],
        };
        let cert = sign_csr(
            &old,
            &csr.csr_pem,
            &profile,
            std::time::Duration::from_secs(600),
        )
        .unwrap();
        // The two CAs share a name: only the signature tells them apart.
        assert!(issued_by(&cert, &old.cert_pem));
        assert!(!issued_by(&cert, &new.cert_pem));
        assert!(issued_by(
            &cert,
            &format!("{}{}", new.cert_pem, old.cert_pem)
        ));
        assert!(!issued_by("not a certificate", &old.cert_pem));
        assert!(!issued_by(&cert, ""));
    }

    #[test]
    fn a_raft_certificate_names_exactly_one_node() {
        let ca = generate_ca(RAFT_CA_NAME).unwrap();
        let node = issue_raft_node(&ca, 42).unwrap();
        let der = certs(&node.cert_pem, "node").unwrap().remove(0);
        assert_eq!(raft_node_id(&der), Some(42));
        // A certificate of the right CA that names no node (or two) is bound to none.
        for names in [
            vec![RAFT_SERVER_NAME.to_string()],
            vec![raft_node_name(1), raft_node_name(2)],
        ] {
            let ck = issue(&ca, RAFT_CA_NAME, &names, 1).unwrap();
            let der = certs(&ck.cert_pem, "other").unwrap().remove(0);
            assert_eq!(raft_node_id(&der), None, "{names:?}");
        }
    }

    #[test]
    fn a_csr_is_known_again_by_its_key() {
        let first = generate_csr("zone-a").unwrap();
        let again = csr_for_key("zone-a", &first.key_pem).unwrap();
        let other = generate_csr("zone-a").unwrap();
        let key = |c: &Csr| csr_public_key_sha256(&c.csr_pem).unwrap();
        assert_eq!(key(&first), key(&again));
        assert_ne!(key(&first), key(&other));
        assert!(csr_public_key_sha256("not a csr").is_err());
    }

    #[test]
    fn tags_travel_in_uri_sans_and_come_back_whole() {
        let tags = [
            ("version", "v2"),
            ("causeway.io/zone", "zone-a"),
            ("team", "a b/c%"),
        ];
        let mut uris = vec!["spiffe://default/backend".to_string()];
        uris.extend(tags.iter().map(|(k, v)| tag_uri(k, v)));
        assert_eq!(uris[2], "causeway-tag://causeway.io%2Fzone/zone-a");
        let ca = generate_ca("test ca").unwrap();
        let csr = generate_csr("ignored").unwrap();
        let leaf = sign_csr(
            &ca,
            &csr.csr_pem,
            &Profile::Leaf {
                common_name: "backend".into(),
                names: uris.clone(),
            },
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        let info = cert_info(&leaf).unwrap();
        assert_eq!(info.uris, uris);
        let back = tags_of(&info.uris);
        assert_eq!(
            back,
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        );
    }

    #[test]
    fn signs_a_csr_with_the_signers_names_not_the_requesters() {
        let ca = generate_ca("Test Zone CA").unwrap();
        let csr = generate_csr("evil-name").unwrap();
        let cert = sign_csr(
            &ca,
            &csr.csr_pem,
            &Profile::Leaf {
                common_name: "zone-a".into(),
                names: vec!["spiffe://causeway/zone/zone-a".into()],
            },
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let info = cert_info(&cert).unwrap();
        assert_eq!(info.common_name, "zone-a");
        assert_eq!(info.uris, vec!["spiffe://causeway/zone/zone-a".to_string()]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((info.not_after - now - 3600).abs() < 60);
        // The certificate verifies against the CA in a real handshake config.
        let server = CertKey {
            cert_pem: cert.clone(),
            key_pem: csr.key_pem.clone(),
        };
        server_config(&server, Some(&ca.cert_pem), &[]).unwrap();
        client_config(&ca.cert_pem, Some(&server)).unwrap();
    }

    #[test]
    fn a_key_matches_only_its_certificate() {
        let a = generate_ca("a").unwrap();
        let b = generate_ca("b").unwrap();
        assert!(key_matches_cert(&a.cert_pem, &a.key_pem));
        assert!(!key_matches_cert(&a.cert_pem, &b.key_pem));
        assert!(!key_matches_cert("junk", &a.key_pem));
    }

    #[test]
    fn intermediate_ca_chains_to_the_root() {
        let root = generate_ca("mesh root").unwrap();
        let csr = generate_csr("zone-a intermediate").unwrap();
        let pem = sign_csr(
            &root,
            &csr.csr_pem,
            &Profile::IntermediateCa {
                common_name: "default zone-a".into(),
            },
            std::time::Duration::from_secs(86400),
        )
        .unwrap();
        // The intermediate can sign a leaf, and webpki accepts leaf -> intermediate -> root.
        let inter = CertKey {
            cert_pem: pem.clone(),
            key_pem: csr.key_pem,
        };
        let leaf_csr = generate_csr("x").unwrap();
        let leaf = sign_csr(
            &inter,
            &leaf_csr.csr_pem,
            &Profile::Leaf {
                common_name: "backend".into(),
                names: vec!["spiffe://default/backend".into()],
            },
            std::time::Duration::from_secs(600),
        )
        .unwrap();
        let chain: Vec<_> = certs(&format!("{leaf}{pem}"), "chain").unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&root.cert_pem, "root").unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
            .expect("leaf -> zone intermediate -> mesh root verifies");
        // Without the intermediate the leaf does not verify.
        assert!(
            verifier
                .verify_client_cert(&chain[0], &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
        assert_eq!(cert_info(&pem).unwrap().common_name, "default zone-a");
        assert!(
            sign_csr(
                &root,
                "not a csr",
                &Profile::IntermediateCa {
                    common_name: "x".into()
                },
                std::time::Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
