//! QUIC from other zones' sidecars (with `--quic`): one QUIC connection per sidecar,
//! each stream one connection to route. A stream carries the mesh's TLS exactly as a
//! TCP connection does: the ingress reads its ClientHello, routes by SNI and splices,
//! never holding a mesh key. The outer QUIC certificate is self-signed and made at
//! start: it protects the stream headers on the wire, not the identity of anyone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Ingress;

fn server_config() -> anyhow::Result<quinn::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["ingress.causeway".to_string()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![causeway_dataplane::quic::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Binds UDP `addr` and routes every stream of every connection.
pub(crate) fn serve(
    ingress: Arc<Ingress>,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let endpoint = quinn::Endpoint::server(server_config()?, addr)
        .map_err(|e| anyhow::anyhow!("binding QUIC (UDP) on {addr}: {e}"))?;
    tracing::info!(%addr, "ingress accepting QUIC");
    Ok(tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                let peer = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                tracing::info!(%peer, "QUIC connection from another zone");
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let ingress = ingress.clone();
                    ingress.metrics.quic_streams.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        ingress.active.fetch_add(1, Ordering::Relaxed);
                        crate::route::handle(&ingress, tokio::io::join(recv, send), peer).await;
                        ingress.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            });
        }
    }))
}
