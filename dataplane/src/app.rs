//! Connections from an inbound to its local application: keep-alive HTTP/1.1
//! connections reused one request at a time ([`crate::http1`]), or one multiplexed
//! HTTP/2 connection.
//!
//! A connection goes back to the pool when its exchange went through whole; a response
//! dropped half-read takes its connection with it (the app may still be writing), so a
//! reused connection never carries leftovers of an earlier exchange.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::http::{Body, Dial, NotReady, Pool};
use crate::http1::{self, Conn, SendError};
use crate::outlier::Limit;

/// Idle HTTP/1.1 connections kept per application; more are closed when they finish.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (apps close theirs
/// after a while too, and a reused one that the app just closed costs a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pools of one application address.
pub(crate) struct App {
    address: String,
    port: u16,
    /// Oldest first: checkin pushes at the back, checkout takes the freshest from it.
    idle: Mutex<VecDeque<(Instant, Conn)>>,
    h2: Pool,
}

/// Why a request did not reach the application, or broke on the way.
pub(crate) enum AppError {
    /// Nothing was sent: the application refused or could not be reached.
    Connect(std::io::Error),
    /// Nothing was sent: a connection was needed and `maxPendingRequests` (this many)
    /// were waiting for one already.
    Pending(u32),
    /// Nothing was sent: the request cannot go to the application as it is (kind
    /// `Unsupported`: a method the application's protocol cannot carry).
    Request(std::io::Error),
    /// The exchange failed after the request was (maybe) sent.
    Exchange(crate::http::BoxError),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Connect(e) => write!(f, "connecting: {e}"),
            AppError::Pending(max) => write!(f, "{max} requests wait for a connection already"),
            AppError::Request(e) => write!(f, "{e}"),
            AppError::Exchange(e) => match e.source() {
                Some(cause) => write!(f, "{e}: {cause}"),
                None => write!(f, "{e}"),
            },
        }
    }
}

impl From<AppError> for ProxyError {
    fn from(e: AppError) -> ProxyError {
        match e {
            AppError::Request(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                ProxyError::NotImplemented(e)
            }
            AppError::Request(e) => ProxyError::AppBadRequest(e),
            e @ AppError::Connect(_) => ProxyError::AppUnreachable(e.to_string()),
            AppError::Pending(max) => ProxyError::Overflow {
                service: "the application".into(),
                max,
                limit: "maxPendingRequests",
            },
            e @ AppError::Exchange(_) => ProxyError::AppFailed(e.to_string()),
        }
    }
}

impl App {
    pub(crate) fn new(address: &str, port: u16) -> Arc<App> {
        Arc::new(App {
            address: address.to_string(),
            port,
            idle: Mutex::default(),
            h2: Pool::default(),
        })
    }

    /// The application's address and port.
    pub(crate) fn address(&self) -> (&str, u16) {
        (&self.address, self.port)
    }

    /// Whether this pool reaches `address:port`.
    pub(crate) fn is(&self, address: &str, port: u16) -> bool {
        self.port == port && self.address == address
    }

    /// Sends an HTTP/1.1 request (origin-form target) on an idle connection or a new
    /// one. An idempotent request that an idle connection could not take (the app had
    /// closed it, and no byte of an answer came) is sent again, once, on a new connection.
    /// A dial (the request waits for a connection) takes a place under `pending`
    /// (MeshCircuitBreaker `maxPendingRequests`).
    pub(crate) async fn send_http1(
        self: &Arc<Self>,
        req: http::Request<Body>,
        connect_timeout: Duration,
        pending: Option<&Limit>,
    ) -> Result<http::Response<Body>, AppError> {
        let mut req = http1::Request::encode(req).map_err(AppError::Request)?;
        if let Some(conn) = self.checkout() {
            match conn.send(&mut req, self.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::Closed) if req.replayable => {}
                Err(e) => return Err(AppError::Exchange(e.into())),
            }
        }
        let _pending = match pending {
            None => None,
            Some(limit) => Some(limit.admit().ok_or(AppError::Pending(limit.max()))?),
        };
        // Boxed: the cold path's future would otherwise make every request's future large.
        let conn = Box::pin(crate::http::tcp_connect(
            &self.address,
            self.port,
            connect_timeout,
        ))
        .await
        .map_err(AppError::Connect)?;
        Conn::new(conn)
            .send(&mut req, self.clone())
            .await
            .map_err(|e| AppError::Exchange(e.into()))
    }

    /// Sends an HTTP/2 request (absolute target) on the app's multiplexed connection.
    /// Waiting for the connection takes a place under `pending` (MeshCircuitBreaker
    /// `maxPendingRequests`).
    pub(crate) async fn send_http2(
        &self,
        req: http::Request<Body>,
        connect_timeout: Duration,
        pending: Option<&Limit>,
    ) -> Result<http::Response<Body>, AppError> {
        let slot = self.h2.slot();
        let dial = || {
            Some(Dial {
                addr: self.address.clone(),
                port: self.port,
                tls: None,
                sni: String::new(),
                quic: false,
                connect_timeout,
            })
        };
        let waiting = match pending {
            None => None,
            Some(limit) => Some(limit.admit().ok_or(AppError::Pending(limit.max()))?),
        };
        let ready = slot.ready(dial).await.map_err(|e| match e {
            NotReady::Failed(e) => AppError::Connect(e),
            NotReady::NoDial => AppError::Connect(std::io::Error::other("no address")),
        })?;
        drop(waiting);
        ready.send(req).await.map_err(|e| {
            slot.forget();
            AppError::Exchange(e.into())
        })
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("app pool lock");
        while let Some((since, conn)) = idle.pop_back() {
            if since.elapsed() < IDLE_TIMEOUT && !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }
}

impl http1::Checkin for App {
    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("app pool lock");
        // Close what has idled too long (the app has likely closed it: a socket
        // kept would sit in CLOSE_WAIT) before keeping this one.
        while idle
            .front()
            .is_some_and(|(since, _)| since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((Instant::now(), conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    const CONNECT: Duration = Duration::from_secs(5);

    /// A keep-alive HTTP/1.1 app on loopback that counts its connections and answers
    /// each request with `body`; `close_after` requests per connection, then it closes
    /// without saying so (as an app's idle timeout does).
    async fn app(body: &'static str, close_after: usize) -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..close_after {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut b = [0u8; 1024];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, conns)
    }

    fn get() -> http::Request<Body> {
        http::Request::builder()
            .uri("/")
            .header(http::header::HOST, "app")
            .body(crate::http::boxed(Empty::new().map_err(|n| match n {})))
            .unwrap()
    }

    async fn call(app: &Arc<App>) -> String {
        let resp = match app.send_http1(get(), CONNECT, None).await {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (port, conns) = app("hello", usize::MAX).await;
        let pool = App::new("127.0.0.1", port);
        for _ in 0..20 {
            assert_eq!(call(&pool).await, "hello");
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection for 20 calls"
        );
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_does_not_come_back() {
        let big: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
        let (port, conns) = app(big, usize::MAX).await;
        let pool = App::new("127.0.0.1", port);
        let Ok(resp) = pool.send_http1(get(), CONNECT, None).await else {
            panic!("request failed")
        };
        let mut body = resp.into_body();
        // Read one frame of the megabyte, then give up on the rest.
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(call(&pool).await.len(), 1 << 20);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            2,
            "the half-read one was not reused"
        );
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_failing_the_request() {
        let (port, conns) = app("ok", 1).await;
        let pool = App::new("127.0.0.1", port);
        for _ in 0..5 {
            assert_eq!(call(&pool).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    /// An h2c app on loopback that answers each request with its connection's number
    /// and counts the requests of each connection. With `drain_first`, the first
    /// connection answers its first request with a body that stays open, then says
    /// GOAWAY, as a draining sidecar or app does: it takes no new stream, yet stays up
    /// for the one in flight.
    async fn h2_app(drain_first: bool) -> (u16, Arc<Mutex<Vec<usize>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let counts = Arc::new(Mutex::new(Vec::new()));
        let counted = counts.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let counts = counted.clone();
                tokio::spawn(async move {
                    let index = {
                        let mut c = counts.lock().unwrap();
                        c.push(0);
                        c.len() - 1
                    };
                    let mut conn = h2::server::handshake(s).await.unwrap();
                    let mut open = Vec::new();
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let served = {
                            let mut c = counts.lock().unwrap();
                            c[index] += 1;
                            c[index]
                        };
                        let mut body = respond
                            .send_response(http::Response::new(()), false)
                            .unwrap();
                        let drain = drain_first && index == 0 && served == 1;
                        body.send_data(Bytes::from(index.to_string()), !drain)
                            .unwrap();
                        if drain {
                            open.push(body);
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (port, counts)
    }

    fn get_h2(app: &App) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://127.0.0.1:{}/", app.port))
            .body(crate::http::boxed(Empty::new().map_err(|n| match n {})))
            .unwrap()
    }

    /// The number of the app's connection that answered.
    async fn call_h2(app: &Arc<App>) -> usize {
        let resp = match app.send_http2(get_h2(app), CONNECT, None).await {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        std::str::from_utf8(&body).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn http2_requests_alternate_over_the_pooled_connections_each_dialed_once() {
        let (port, counts) = h2_app(false).await;
        let pool = App::new("127.0.0.1", port);
        for _ in 0..20 {
            call_h2(&pool).await;
        }
        assert_eq!(*counts.lock().unwrap(), [10, 10]);
    }

    #[tokio::test]
    async fn an_http2_connection_going_away_is_replaced_without_failing_a_request() {
        let (port, counts) = h2_app(true).await;
        let pool = App::new("127.0.0.1", port);
        // The first answer keeps its connection up after the app's GOAWAY.
        let Ok(first) = pool.send_http2(get_h2(&pool), CONNECT, None).await else {
            panic!("first request failed")
        };
        let mut first = first.into_body();
        assert!(first.frame().await.is_some());
        // Requests go on without a failure, to a connection dialed anew.
        let deadline = Instant::now() + Duration::from_secs(10);
        while call_h2(&pool).await < 2 {
            assert!(Instant::now() < deadline, "no new connection: {counts:?}");
        }
        drop(first);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool = App::new("127.0.0.1", port);
        assert!(matches!(
            pool.send_http1(get(), CONNECT, None).await,
            Err(AppError::Connect(_))
        ));
    }
}
