//! HTTP between sidecars: one multiplexed HTTP/2 connection per endpoint, over mTLS
//! (ALPN `h2`), reused by every request from the application, so a new application
//! connection costs no handshake.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::http2::{H2Sender, ReadyH2};

/// The most a request's or an answer's header section may take, the same over
/// HTTP/1.1 (hyper's read buffer, which must hold the whole head) and HTTP/2
/// (SETTINGS_MAX_HEADER_LIST_SIZE, which counts 32 bytes more per field): 64 KiB, about
/// Envoy's 60 KiB. Past it a request is answered 431 over either protocol.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Any error a body or an exchange can end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type that crosses the proxy.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// Boxes any body.
pub(crate) fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// A short text body (the answers the proxy gives itself: see [`crate::error`]).
pub(crate) fn text(status: http::StatusCode, msg: impl Into<String>) -> http::Response<Body> {
    let body = boxed(http_body_util::Full::new(Bytes::from(msg.into())));
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

/// One pooled connection of an endpoint.
#[derive(Default)]
pub(crate) struct Slot {
    /// The live connection: the fast path takes no async lock.
    sender: std::sync::Mutex<Option<H2Sender>>,
    /// Held while dialing, so concurrent requests wait for one dial.
    dialing: tokio::sync::Mutex<()>,
    /// MeshTimeout `maxConnectionDuration` (nanoseconds; 0: none): an older connection
    /// takes no new request, and the next one dials a fresh connection. The old one
    /// finishes its requests in flight and closes when the last ends.
    max_age_ns: std::sync::atomic::AtomicU64,
}

impl Slot {
    /// The live connection, if any: the fast path, which needs no dial.
    pub(crate) fn live(&self) -> Option<H2Sender> {
        let max_age = self.max_age_ns.load(std::sync::atomic::Ordering::Relaxed);
        self.sender
            .lock()
            .expect("pool lock")
            .as_ref()
            .filter(|s| !s.is_closed())
            .filter(|s| max_age == 0 || s.age().as_nanos() < u128::from(max_age))
            .cloned()
    }

    /// Forgets this slot's connection (it failed), so the next request dials again.
    /// Whether it was dropped for its silent peer.
    pub(crate) fn forget(&self) -> bool {
        self.sender
            .lock()
            .expect("pool lock")
            .take()
            .is_some_and(|s| s.is_dead())
    }

    /// The pooled connection's id when it was dropped for its silent peer.
    fn dead(&self) -> Option<usize> {
        self.sender
            .lock()
            .expect("pool lock")
            .as_ref()
            .filter(|s| s.is_dead())
            .map(H2Sender::id)
    }

    /// A connection of this slot ready for one more request: the pooled one, or a new
    /// one when there is none, or it closed or is going away (its peer drains). `dial`
    /// is called only to dial.
    ///
    /// A pooled connection dropped because its peer went silent (no PONG: see
    /// [`crate::http2`]) is forgotten and reported once as `Failed`, so the caller counts
    /// the endpoint as failing and tries another, rather than dialing the silent peer.
    pub(crate) async fn ready(
        &self,
        dial: impl FnOnce() -> Option<Dial>,
    ) -> Result<ReadyH2, NotReady> {
        if let Some(id) = self.dead() {
            self.forget_if(id);
            return Err(NotReady::Failed(silent()));
        }
        if let Some(s) = self.live() {
            let id = s.id();
            match s.ready().await {
                Ok(r) => return Ok(r),
                Err(_) => self.forget_if(id),
            }
        }
        let dial = dial().ok_or(NotReady::NoDial)?;
        // Boxed: a dial's future is large, and requests rarely need one.
        let sender = Box::pin(self.sender(&dial))
            .await
            .map_err(NotReady::Failed)?;
        let id = sender.id();
        sender.ready().await.map_err(|e| {
            self.forget_if(id);
            NotReady::Failed(std::io::Error::other(e))
        })
    }

    /// Forgets the connection `id` if the slot still holds it: a request that saw it
    /// fail must not drop a newer one another request just dialed.
    fn forget_if(&self, id: usize) {
        let mut sender = self.sender.lock().expect("pool lock");
        if sender.as_ref().is_some_and(|s| s.id() == id) {
            *sender = None;
        }
    }

    /// The live connection, or a new one when there is none or it closed.
    async fn sender(&self, dial: &Dial) -> std::io::Result<H2Sender> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let sender = H2Sender::handshake(connect(dial).await?).await?;
        *self.sender.lock().expect("pool lock") = Some(sender.clone());
        Ok(sender)
    }
}

/// Why a slot gave no connection for a request. Nothing was sent either way.
pub(crate) enum NotReady {
    /// No way to dial yet (no workload certificate).
    NoDial,
    /// The dial failed, or the new connection took no stream.
    Failed(std::io::Error),
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
    /// The whole dial's limit (MeshTimeout `connectionTimeout`).
    pub(crate) connect_timeout: Duration,
}

/// A connection to an endpoint: TCP (or a QUIC stream through an ingress), then TLS
/// when the dial has it, all within the dial's connect timeout. A timeout is an error
/// of kind `TimedOut`, which callers count as the endpoint failing, like a refusal.
pub(crate) async fn connect(dial: &Dial) -> std::io::Result<Box<dyn crate::proxy::Stream>> {
    tokio::time::timeout(dial.connect_timeout, connect_now(dial))
        .await
        .map_err(|_| {
            timed_out(format!(
                "connecting to {}:{} timed out after {}",
                dial.addr,
                dial.port,
                crate::timeout::show(dial.connect_timeout)
            ))
        })?
}

async fn connect_now(dial: &Dial) -> std::io::Result<Box<dyn crate::proxy::Stream>> {
    if dial.quic {
        let addr = tokio::net::lookup_host((dial.addr.as_str(), dial.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} has no address", dial.addr)))?;
        let stream = crate::quic::open(addr).await?;
        return tls_over(dial, stream).await;
    }
    let tcp = TcpStream::connect((dial.addr.as_str(), dial.port)).await?;
    tcp.set_nodelay(true)?;
    tcp_keepalive(&tcp)?;
    tls_over(dial, tcp).await
}

/// The error of a pooled connection dropped for its silent peer.
fn silent() -> std::io::Error {
    timed_out("the peer answered no HTTP/2 PING in time".to_string())
}

fn timed_out(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, msg)
}

/// A TCP connection within `timeout`, Nagle off (requests are small).
pub(crate) async fn tcp_connect(
    addr: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((addr, port)))
        .await
        .map_err(|_| {
            timed_out(format!(
                "connecting to {addr}:{port} timed out after {}",
                crate::timeout::show(timeout)
            ))
        })??;
    tcp.set_nodelay(true)?;
    tcp_keepalive(&tcp)?;
    Ok(tcp)
}

/// TCP keepalive: the first probe after this long without a byte either way.
pub(crate) const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Then a probe every this long...
pub(crate) const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// ... and the connection fails after this many unanswered: a silent peer of a plain
/// TCP pipe is found within 10 s + 3 x 2 s = 16 s of the last byte.
pub(crate) const TCP_KEEPALIVE_PROBES: u32 = 3;

/// Turns TCP keepalive on (the safety net under plain TCP pipes; HTTP/2 connections
/// have PINGs, which see a silent peer sooner): every connection the sidecar dials or
/// accepts.
pub(crate) fn tcp_keepalive(tcp: &TcpStream) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
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
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
    }
}

impl Pool {
    /// Sets MeshTimeout `maxConnectionDuration` for the endpoint's connections (`None`:
    /// they live as long as they are used).
    pub(crate) fn set_max_age(&self, max_age: Option<Duration>) {
        let ns = max_age.map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        for s in &self.slots {
            s.max_age_ns.store(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The slot for the next request: requests alternate between the connections.
    pub(crate) fn slot(&self) -> &Slot {
        let i =
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % CONNECTIONS_PER_ENDPOINT;
        &self.slots[i]
    }

    /// Whether a connection of it is open.
    pub(crate) fn has_live(&self) -> bool {
        self.slots.iter().any(|s| s.live().is_some())
    }

    /// Forgets the connections (after an error or a trust change), so the next
    /// requests dial again. Whether one of them was dropped for its silent peer (the
    /// endpoint then counts as failing).
    pub(crate) fn reset(&self) -> bool {
        let mut dead = false;
        for s in &self.slots {
            dead |= s.forget();
        }
        dead
    }
}

/// Headers that describe one hop, not the request (RFC 9110 7.6.1).
pub(crate) fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    // One pass over the names (comparisons, no hashing): most messages carry none of
    // them, or only `connection`.
    let found: Vec<http::HeaderName> = h
        .keys()
        .filter(|n| {
            *n == CONNECTION
                || *n == TRANSFER_ENCODING
                || *n == UPGRADE
                || *n == KEEP_ALIVE
                || *n == PROXY_CONNECTION
                // gRPC needs "te: trailers" end to end over HTTP/2.
                || (*n == TE && h.get(TE).is_some_and(|v| v != "trailers"))
        })
        .cloned()
        .collect();
    for name in found {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Dial, NotReady, Slot, strip_hop_by_hop};

    /// An HTTP/2 server on loopback whose first connection answers one request and then
    /// freezes (holds the socket, never reads or answers again: a SIGSTOPped peer or a
    /// blackholed zone); later connections answer everything, `/slow` after 3 s.
    async fn freezing_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 0.. {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    let mut answered = 0;
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if n == 0 && answered == 1 {
                            let _frozen = (conn, req, respond);
                            std::future::pending::<()>().await;
                            return;
                        }
                        answered += 1;
                        let slow = req.uri().path() == "/slow";
                        tokio::spawn(async move {
                            if slow {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let _ = respond.send_response(http::Response::new(()), true);
                        });
                    }
                });
            }
        });
        addr
    }

    fn dial(addr: std::net::SocketAddr) -> Option<Dial> {
        Some(Dial {
            addr: addr.ip().to_string(),
            port: addr.port(),
            tls: None,
            sni: String::new(),
            quic: false,
            connect_timeout: Duration::from_secs(2),
        })
    }

    async fn get(slot: &Slot, addr: std::net::SocketAddr, path: &str) -> Result<u16, String> {
        let ready = match slot.ready(|| dial(addr)).await {
            Ok(r) => r,
            Err(NotReady::NoDial) => return Err("no dial".into()),
            Err(NotReady::Failed(e)) => return Err(format!("not ready: {e}")),
        };
        let req = http::Request::builder()
            .uri(format!("http://backend{path}"))
            .body(super::boxed(http_body_util::Empty::<bytes::Bytes>::new()))
            .unwrap();
        match ready.send(req).await {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => Err(format!("failed: {e}")),
        }
    }

    /// An HTTP/2 server on loopback that answers everything and counts connections.
    async fn counting_server() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        let _ = respond.send_response(http::Response::new(()), true);
                    }
                });
            }
        });
        (addr, count)
    }

    /// MeshTimeout `maxConnectionDuration` on pooled connections: without it one
    /// connection carries every request; past it, the next request opens a new one.
    #[tokio::test]
    async fn a_pooled_connection_past_its_max_age_takes_no_new_request() {
        let (addr, count) = counting_server().await;
        let pool = super::Pool::default();
        for _ in 0..5 {
            assert_eq!(get(pool.slot(), addr, "/").await, Ok(200));
        }
        let opened = count.load(std::sync::atomic::Ordering::SeqCst);
        assert!(opened <= super::CONNECTIONS_PER_ENDPOINT, "{opened}");
        // Every connection is past a 1 ns age at once: each request opens its own.
        pool.set_max_age(Some(Duration::from_nanos(1)));
        for _ in 0..4 {
            assert_eq!(get(pool.slot(), addr, "/").await, Ok(200));
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), opened + 4);
        // Off again: the slots keep the last ones.
        pool.set_max_age(None);
        for _ in 0..4 {
            assert_eq!(get(pool.slot(), addr, "/").await, Ok(200));
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), opened + 4);
    }

    #[tokio::test]
    async fn a_request_to_a_peer_gone_silent_fails_within_the_ping_timeout_and_the_next_redials() {
        let addr = freezing_server().await;
        let slot = Slot::default();
        assert_eq!(get(&slot, addr, "/").await, Ok(200));
        // The peer freezes on this one: it fails once a PING goes unanswered, long
        // before any request timeout.
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), get(&slot, addr, "/"))
            .await
            .expect("a request in flight to a silent peer fails, not hangs");
        let took = started.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(
            took < Duration::from_millis(3500),
            "detected after {took:?}"
        );
        eprintln!("silent peer detected after {took:?}");
        // The next request learns the endpoint failed (the caller ejects it and tries
        // another) ...
        let r = get(&slot, addr, "/").await;
        assert!(r.as_ref().is_err_and(|e| e.contains("PING")), "{r:?}");
        // ... and the one after dials a new connection, which answers.
        assert_eq!(get(&slot, addr, "/").await, Ok(200));
    }

    #[tokio::test]
    async fn a_slow_answer_from_a_live_peer_is_not_taken_for_silence() {
        let addr = freezing_server().await;
        let slot = Slot::default();
        // Connection 0 freezes on its second request: use it up first.
        assert_eq!(get(&slot, addr, "/").await, Ok(200));
        for _ in 0..2 {
            let _ = tokio::time::timeout(Duration::from_secs(10), get(&slot, addr, "/")).await;
        }
        // Three seconds of pings answered while the response is pending.
        assert_eq!(get(&slot, addr, "/slow").await, Ok(200));
        assert_eq!(get(&slot, addr, "/").await, Ok(200));
    }

    #[tokio::test]
    async fn dialed_tcp_connections_have_keepalive_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tcp = super::tcp_connect("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap();
        let s = socket2::SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), super::TCP_KEEPALIVE_IDLE);
        assert_eq!(
            s.tcp_keepalive_interval().unwrap(),
            super::TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            s.tcp_keepalive_retries().unwrap(),
            super::TCP_KEEPALIVE_PROBES
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("x-request-id", "7"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }

    #[test]
    fn te_trailers_travels_for_grpc() {
        let mut h = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut none = http::HeaderMap::new();
        strip_hop_by_hop(&mut none);
        assert!(none.is_empty());
    }
}
