//! QUIC to other zones' ingresses: one QUIC connection per remote ingress (so, with one
//! ingress per zone, one per zone pair from this sidecar), opened on first use and
//! reused; every connection to that zone becomes one bidirectional stream of it, and the
//! mesh's mTLS runs inside the stream, end to end as over TCP.
//!
//! The outer QUIC handshake does not authenticate the ingress (it has no mesh identity
//! and holds no mesh key): like the TCP path it only carries bytes, and the inner mTLS
//! verifies the destination's SPIFFE id. The outer layer hides the SNI from the network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// ALPN of cross-zone QUIC.
pub const ALPN: &[u8] = b"causeway-xzone/1";

/// A QUIC PING this often keeps the connection to an ingress alive and shows whether
/// the ingress still answers.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Nothing heard from the ingress for this long (three keep-alives lost) closes the
/// connection: it leaves the pool and the next stream dials a new one. The ingress sets
/// the same (the smaller of both sides' applies).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A bidirectional QUIC stream as one byte stream.
pub(crate) type QuicStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

struct Client {
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// Held while connecting, so concurrent first streams share one connection.
    dialing: tokio::sync::Mutex<()>,
}

fn client() -> std::io::Result<&'static Client> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    Ok(CLIENT.get_or_init(|| Client {
        endpoint,
        connections: Mutex::new(HashMap::new()),
        dialing: tokio::sync::Mutex::new(()),
    }))
}

fn client_config() -> std::io::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OuterLayerOnly(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("a few seconds fit a VarInt"),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

fn live(c: &Client, addr: SocketAddr) -> Option<quinn::Connection> {
    c.connections
        .lock()
        .expect("quic lock")
        .get(&addr)
        .filter(|conn| conn.close_reason().is_none())
        .cloned()
}

/// A new stream to the ingress at `addr`, over its (shared) QUIC connection.
pub(crate) async fn open(addr: SocketAddr) -> std::io::Result<QuicStream> {
    let c = client()?;
    let conn = match live(c, addr) {
        Some(conn) => conn,
        None => {
            let _dialing = c.dialing.lock().await;
            match live(c, addr) {
                Some(conn) => conn,
                None => {
                    let conn = c
                        .endpoint
                        .connect_with(client_config()?, addr, "ingress.causeway")
                        .map_err(std::io::Error::other)?
                        .await
                        .map_err(std::io::Error::other)?;
                    tracing::info!(ingress = %addr, "QUIC connection to another zone's ingress");
                    c.connections
                        .lock()
                        .expect("quic lock")
                        .insert(addr, conn.clone());
                    conn
                }
            }
        }
    };
    let (send, recv) = conn.open_bi().await.map_err(std::io::Error::other)?;
    Ok(tokio::io::join(recv, send))
}

/// The outer QUIC layer's verifier: accepts the ingress's certificate (self-signed, no
/// mesh identity); the mTLS inside each stream is what authenticates the destination.
#[derive(Debug)]
struct OuterLayerOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for OuterLayerOnly {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
