//! HTTP between sidecars: one multiplexed HTTP/2 connection per endpoint, over mTLS
//! (ALPN `h2`), reused by every request from the application, so a new application
//! connection costs no handshake.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// The body type that crosses the proxy.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Boxes any hyper body.
pub(crate) fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    b.boxed()
}

/// A short text body (errors the proxy itself returns).
pub(crate) fn text(status: http::StatusCode, msg: impl Into<String>) -> http::Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(msg.into()))
        .map_err(|never| match never {})
        .boxed();
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-causeway-proxy", "1")
        .body(body)
        .expect("static response parts are valid")
}

/// Multiplexed connections kept per endpoint. Each HTTP/2 connection is driven by one
/// task, so more than one lets both cores work; requests alternate between them.
const CONNECTIONS_PER_ENDPOINT: usize = 2;

/// One endpoint's pooled connections.
#[derive(Default)]
pub(crate) struct Pool {
    slots: [Slot; CONNECTIONS_PER_ENDPOINT],
    next: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Slot {
    /// The live connection: the fast path takes no async lock.
    sender: std::sync::Mutex<Option<SendRequest<Body>>>,
    /// Held while dialing, so concurrent requests wait for one dial.
    dialing: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<SendRequest<Body>> {
        self.sender
            .lock()
            .expect("pool lock")
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }
}

/// How to reach an endpoint.
pub(crate) struct Dial {
    pub(crate) addr: String,
    pub(crate) port: u16,
    /// mTLS client config (checks the destination's identity); `None` for plaintext.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// SNI: the destination's name, which an ingress routes on.
    pub(crate) sni: String,
    /// Through another zone's ingress over QUIC (a stream of its shared connection).
    pub(crate) quic: bool,
}

/// A TCP (and TLS) connection to an endpoint.
pub(crate) async fn connect(dial: &Dial) -> std::io::Result<Box<dyn crate::proxy::Stream>> {
    if dial.quic {
        let addr = tokio::net::lookup_host((dial.addr.as_str(), dial.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} has no address", dial.addr)))?;
        let stream = tokio::time::timeout(Duration::from_secs(5), crate::quic::open(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "QUIC timed out"))??;
        return tls_over(dial, stream).await;
    }
    let tcp = tcp_connect(&dial.addr, dial.port).await?;
    tls_over(dial, tcp).await
}

/// A TCP connection with a 5 s connect timeout and Nagle off (requests are small).
pub(crate) async fn tcp_connect(addr: &str, port: u16) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((addr, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The mesh's mTLS over `io` when the dial has it.
async fn tls_over<S: crate::proxy::Stream>(
    dial: &Dial,
    tcp: S,
) -> std::io::Result<Box<dyn crate::proxy::Stream>> {
    match &dial.tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let name = ServerName::try_from(dial.sni.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
            Ok(Box::new(tls))
        }
    }
}

impl Pool {
    fn slot(&self) -> &Slot {
        let i =
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % CONNECTIONS_PER_ENDPOINT;
        &self.slots[i]
    }

    /// A live pooled sender, if its slot has one: the fast path, which needs no dial.
    pub(crate) fn live(&self) -> Option<SendRequest<Body>> {
        self.slot().live()
    }

    /// A pooled sender, connecting when its slot has none or it closed.
    pub(crate) async fn sender(&self, dial: &Dial) -> std::io::Result<SendRequest<Body>> {
        let slot = self.slot();
        if let Some(s) = slot.live() {
            return Ok(s);
        }
        let _dialing = slot.dialing.lock().await;
        if let Some(s) = slot.live() {
            return Ok(s);
        }
        let io = connect(dial).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .adaptive_window(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection closed");
            }
        });
        *slot.sender.lock().expect("pool lock") = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets the connections (after an error or a trust change), so the next
    /// requests dial again.
    pub(crate) fn reset(&self) {
        for s in &self.slots {
            *s.sender.lock().expect("pool lock") = None;
        }
    }
}

/// Headers that describe one hop, not the request (RFC 9110 7.6.1).
pub(crate) fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ] {
        // gRPC needs "te: trailers" end to end over HTTP/2.
        if name == "te" && h.get(name).is_some_and(|v| v == "trailers") {
            continue;
        }
        h.remove(name);
    }
}
