//! QUIC from other zones' sidecars (with `--quic`): one QUIC connection per sidecar,
//! each stream one connection to route. A stream carries the mesh's TLS exactly as a
//! TCP connection does: the ingress reads its ClientHello, routes by SNI and splices,
//! never holding a mesh key. The outer QUIC certificate is self-signed and made at
//! start: it protects the stream headers on the wire, not the identity of anyone.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

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
    // Liveness as the sidecars see it: a sidecar gone silent for the idle timeout is
    // dropped here too, and the ingress's keep-alives keep a quiet connection open.
    transport.keep_alive_interval(Some(causeway_dataplane::quic::KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(
        causeway_dataplane::quic::IDLE_TIMEOUT,
    )?));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A UDP socket that drops every datagram, in and out, while a blackhole drill silences
/// the ingress: to QUIC peers the zone's network is dead (no answer, no close), so their
/// connections time out as they would in a real outage.
#[derive(Debug)]
struct SilenceableSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    silent: Arc<AtomicBool>,
}

impl quinn::AsyncUdpSocket for SilenceableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        if self.silent.load(Ordering::Relaxed) {
            return Ok(()); // "sent", into the void
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = self.inner.poll_recv(cx, bufs, meta);
            // Read and discarded while silent; polled again until nothing is left, so
            // the waker stays registered.
            if !(matches!(received, Poll::Ready(Ok(_))) && self.silent.load(Ordering::Relaxed)) {
                return received;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Binds UDP `addr` and routes every stream of every connection.
pub(crate) fn serve(
    ingress: Arc<Ingress>,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let bind_error = |e: io::Error| anyhow::anyhow!("binding QUIC (UDP) on {addr}: {e}");
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let silent = Arc::new(AtomicBool::new(ingress.silent()));
    let socket = Arc::new(SilenceableSocket {
        inner: runtime
            .wrap_udp_socket(std::net::UdpSocket::bind(addr).map_err(bind_error)?)
            .map_err(bind_error)?,
        silent: silent.clone(),
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config()?),
        socket,
        runtime,
    )
    .map_err(bind_error)?;
    let follow = ingress.clone();
    let silence = async move {
        loop {
            follow.until_silent(true).await;
            silent.store(true, Ordering::Relaxed);
            tracing::warn!("blackhole drill: QUIC goes silent");
            follow.until_silent(false).await;
            silent.store(false, Ordering::Relaxed);
            tracing::info!("blackhole drill over: QUIC answers again");
        }
    };
    tracing::info!(%addr, "ingress accepting QUIC");
    let accept = async move {
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
    };
    Ok(tokio::spawn(async move {
        // One task: the silence follower stops with the endpoint.
        tokio::select! {
            () = accept => {}
            () = silence => {}
        }
    }))
}
