//! Certificates and rustls configurations: the API's generated CA and server
//! certificates, and the mutual TLS of the Raft transport.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Name every Raft peer certificate carries; peers are authenticated by the cluster CA.
pub const RAFT_SERVER_NAME: &str = "causeway-raft";

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
}

/// A PEM certificate chain and private key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

pub(crate) fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
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
    let ca = generate_ca("Causeway Raft CA")?;
    let mut out = Vec::new();
    for id in nodes {
        let ck = issue(
            &ca,
            "Causeway Raft CA",
            &[
                RAFT_SERVER_NAME.to_string(),
                format!("node-{id}.{RAFT_SERVER_NAME}"),
            ],
            3650,
        )?;
        out.push((*id, ck));
    }
    Ok((ca, out))
}
