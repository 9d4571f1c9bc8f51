//! KDS's TLS, run by us rather than by tonic so the CAs it admits zones from can change
//! while the node runs: during a zone CA rotation KDS admits certificates of the new CA
//! and of the one it replaces, then of the new one alone, without a restart that would
//! cut every zone's session.
//!
//! [`KdsTls`] holds the node's KDS certificate and publishes a fresh rustls config
//! whenever the zone CAs in the cluster's secrets change; `causeway_listen::tls_incoming`
//! turns admitted TCP connections into TLS streams with the config current at each
//! handshake.

use std::sync::Arc;

use causeway_pki::CertKey;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::command::SealedSecrets;

/// The zone CAs KDS admits certificates from: the one that signs, and during a
/// rotation the one it replaces.
pub(crate) fn zone_cas(s: &SealedSecrets) -> String {
    let mut pem = s.zone_ca_cert_pem.trim_end().to_string();
    if !s.zone_ca_previous_cert_pem.is_empty() {
        pem.push('\n');
        pem.push_str(s.zone_ca_previous_cert_pem.trim_end());
    }
    pem.push('\n');
    pem
}

/// The node's KDS server certificate and the config built from it and the zone CAs.
pub(crate) struct KdsTls {
    /// The node's certificate chain (from the API CA, the CA zone tokens carry).
    cert: CertKey,
    trusted: String,
    tx: watch::Sender<Arc<ServerConfig>>,
}

impl KdsTls {
    pub(crate) fn new(cert: CertKey, secrets: &SealedSecrets) -> anyhow::Result<KdsTls> {
        let trusted = zone_cas(secrets);
        let cfg = build(&cert, &trusted)?;
        let (tx, _) = watch::channel(Arc::new(cfg));
        Ok(KdsTls { cert, trusted, tx })
    }

    /// The configs, newest first, for [`accept`].
    pub(crate) fn configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.tx.subscribe()
    }

    /// Presents `cert` from the next handshake on (an API CA rotation).
    pub(crate) fn set_cert(&mut self, cert: CertKey) -> anyhow::Result<()> {
        self.tx.send_replace(Arc::new(build(&cert, &self.trusted)?));
        self.cert = cert;
        Ok(())
    }

    /// Follows the zone CAs of `secrets`; true when they changed (the next handshake
    /// uses them; live sessions keep theirs).
    pub(crate) fn follow(&mut self, secrets: &SealedSecrets) -> anyhow::Result<bool> {
        let trusted = zone_cas(secrets);
        if trusted == self.trusted {
            return Ok(false);
        }
        self.tx.send_replace(Arc::new(build(&self.cert, &trusted)?));
        self.trusted = trusted;
        Ok(true)
    }
}

fn build(cert: &CertKey, zone_cas: &str) -> anyhow::Result<ServerConfig> {
    Ok(causeway_pki::server_config_client_optional(
        cert,
        zone_cas,
        &[b"h2"],
    )?)
}
