//! The sidecar's workload identity: a key generated here, a certificate for
//! `spiffe://<trust-domain>/<service>` signed by the zone, and the rustls configs built
//! from them. Peers are verified against the mesh root and by SPIFFE id, not by DNS name.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use causeway_api::proxy_config::Peer;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN of sidecar-to-sidecar HTTP (multiplexed HTTP/2 over mTLS).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of sidecar-to-sidecar opaque TCP.
pub const ALPN_TCP: &[u8] = b"causeway-tcp";

/// Revoked intermediate CAs (SHA-256 of the DER, hex), shared with every verifier so a
/// revocation applies to the next handshake.
pub type Revoked = Arc<RwLock<HashSet<String>>>;

/// The first of `cas` that is revoked, if any.
pub fn revoked_among(cas: &[CertificateDer<'_>], revoked: &Revoked) -> Option<String> {
    let set = revoked.read().expect("revoked lock");
    if set.is_empty() {
        return None;
    }
    cas.iter()
        .map(|c| causeway_pki::sha256_hex(c))
        .find(|h| set.contains(h))
}

/// A certificate and what trusts it.
pub struct Identity {
    /// This proxy's SPIFFE id.
    pub id: String,
    pub not_after: i64,
    pub renew_at: i64,
    /// SHA-256 of the issuing (zone intermediate) CA, hex.
    pub issuer_sha256: Option<String>,
    /// SHA-256 of each root it trusts (the mesh's trust bundle), hex, sorted.
    pub trusted_sha256: Vec<String>,
    revoked: Revoked,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    anchors: Arc<Vec<rustls::pki_types::TrustAnchor<'static>>>,
    /// Inbound: client certificates required, chained to the mesh root.
    pub server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    causeway_pki::provider()
}

impl Identity {
    /// Builds the identity from the zone's answer: chain (leaf first), key, mesh root.
    pub fn new(
        chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
        renew_at: i64,
        revoked: Revoked,
    ) -> anyhow::Result<Identity> {
        let chain = causeway_pki::certs(chain_pem, "workload certificate")?;
        let key = causeway_pki::key(key_pem, "workload key")?;
        let info = causeway_pki::cert_info_der(&chain[0])?;
        let id = info
            .uris
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the workload certificate has no SPIFFE id"))?;
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        let mut trusted_sha256 = Vec::new();
        for c in causeway_pki::certs(trust_bundle_pem, "mesh trust bundle")? {
            anchors.push(webpki::anchor_from_trusted_cert(&c)?.to_owned());
            trusted_sha256.push(causeway_pki::sha256_hex(&c));
            roots.add(c)?;
        }
        trusted_sha256.sort();
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| anyhow::anyhow!("client verifier: {e}"))?;
        let verifier = Arc::new(RevocationAware {
            inner: webpki,
            revoked: revoked.clone(),
            trust_domain: trust_domain_of(&id).to_string(),
        });
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec(), b"http/1.1".to_vec()];
        Ok(Identity {
            id,
            not_after: info.not_after,
            renew_at,
            issuer_sha256: chain.get(1).map(|c| causeway_pki::sha256_hex(c)),
            trusted_sha256,
            revoked,
            chain,
            key,
            anchors: Arc::new(anchors),
            server: Arc::new(server),
        })
    }

    /// Outbound: presents this identity and accepts only a server whose certificate
    /// chains to the mesh root and names `expected` (a SPIFFE id).
    pub fn client_config(&self, expected: &str, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
        let verifier = SpiffeVerifier {
            anchors: self.anchors.clone(),
            expected: expected.to_string(),
            provider: provider(),
            revoked: self.revoked.clone(),
        };
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The SPIFFE id in a peer's leaf certificate.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    peer(certs).map(|p| p.id)
}

/// A peer as its leaf certificate proves it: its SPIFFE id (the first `spiffe://` URI
/// SAN) and the tags its zone signed in.
pub fn peer(certs: Option<&[CertificateDer<'_>]>) -> Option<Peer> {
    let leaf = certs?.first()?;
    let uris = causeway_pki::cert_info_der(leaf).ok()?.uris;
    let id = uris.iter().find(|u| u.starts_with("spiffe://"))?.clone();
    Some(Peer {
        id,
        tags: causeway_pki::tags_of(&uris),
    })
}

/// Verifies a server by chain to the mesh root and by SPIFFE id (the SNI names the
/// destination for ingresses; it is not what is trusted).
#[derive(Debug)]
struct SpiffeVerifier {
    anchors: Arc<Vec<rustls::pki_types::TrustAnchor<'static>>>,
    expected: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    revoked: Revoked,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::General(format!(
                "peer certificate does not chain to the mesh root: {e}"
            ))
        })?;
        if let Some(ca) = revoked_among(intermediates, &self.revoked) {
            return Err(rustls::Error::General(format!(
                "the peer's CA {ca} is revoked"
            )));
        }
        let id = peer_id(Some(std::slice::from_ref(end_entity)));
        if id.as_deref() != Some(self.expected.as_str()) {
            return Err(rustls::Error::General(format!(
                "peer identity {} is not the expected {}",
                id.as_deref().unwrap_or("(none)"),
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The trust domain of a SPIFFE id (`spiffe://<trust domain>/...`); empty when it is
/// not one.
fn trust_domain_of(id: &str) -> &str {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

/// Client certificates: webpki's checks, then the revocation list, then the trust
/// domain: a caller's SPIFFE id must be in this mesh's.
///
/// That last check stands in for X.509 name constraints on the zones' intermediate
/// CAs (`spiffe://<trust domain>` URI subtrees), which would have every verifier
/// enforce it. rustls-webpki 0.103 does not implement URI name constraints and fails
/// closed on them (every certificate under such a CA is refused), so the constraint is
/// enforced here instead, where the identity is read.
#[derive(Debug)]
struct RevocationAware {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
    trust_domain: String,
}

impl ClientCertVerifier for RevocationAware {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(ca) = revoked_among(intermediates, &self.revoked) {
            return Err(rustls::Error::General(format!(
                "the peer's CA {ca} is revoked"
            )));
        }
        let id = peer_id(Some(std::slice::from_ref(end_entity)));
        if id.as_deref().map(trust_domain_of) != Some(self.trust_domain.as_str()) {
            return Err(rustls::Error::General(format!(
                "the peer's identity {} is outside this mesh's trust domain {:?}",
                id.as_deref().unwrap_or("(none)"),
                self.trust_domain
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_pki::{Profile, generate_ca, generate_csr, sign_csr};

    /// A leaf named `id`, signed by `ca`: (its DER, the CA's DER).
    fn leaf(ca: &causeway_pki::CertKey, id: &str) -> CertificateDer<'static> {
        let csr = generate_csr("leaf").unwrap();
        let profile = Profile::Leaf {
            common_name: "leaf".into(),
            names: vec![id.to_string()],
        };
        let pem = sign_csr(
            ca,
            &csr.csr_pem,
            &profile,
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        causeway_pki::certs(&pem, "leaf").unwrap().remove(0)
    }

    #[test]
    fn a_caller_outside_the_mesh_trust_domain_is_refused_even_under_the_mesh_root() {
        let root = generate_ca("mesh root").unwrap();
        let csr = generate_csr("zone intermediate").unwrap();
        let profile = Profile::IntermediateCa {
            common_name: "zone intermediate".into(),
        };
        let intermediate = causeway_pki::CertKey {
            cert_pem: sign_csr(
                &root,
                &csr.csr_pem,
                &profile,
                std::time::Duration::from_secs(3600),
            )
            .unwrap(),
            key_pem: csr.key_pem,
        };
        let intermediate_der = causeway_pki::certs(&intermediate.cert_pem, "ca").unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(
                causeway_pki::certs(&root.cert_pem, "root")
                    .unwrap()
                    .remove(0),
            )
            .unwrap();
        let verifier = RevocationAware {
            inner: WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap(),
            revoked: Revoked::default(),
            trust_domain: trust_domain_of("spiffe://default/backend").to_string(),
        };
        let now = UnixTime::now();
        let ours = leaf(&intermediate, "spiffe://default/web");
        assert!(
            verifier
                .verify_client_cert(&ours, &intermediate_der, now)
                .is_ok()
        );
        let theirs = leaf(&intermediate, "spiffe://payments/web");
        let err = verifier
            .verify_client_cert(&theirs, &intermediate_der, now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside this mesh's trust domain \"default\""),
            "{err}"
        );
        // A certificate with no SPIFFE id at all is refused too.
        let none = leaf(&intermediate, "web.internal");
        assert!(
            verifier
                .verify_client_cert(&none, &intermediate_der, now)
                .is_err()
        );
        assert_eq!(trust_domain_of("spiffe://default"), "default");
        assert_eq!(trust_domain_of("https://default/x"), "");
    }
}
