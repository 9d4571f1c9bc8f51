//! The timeout layer on real loopback sockets: what each limit cuts, when, and what the
//! other side sees.

use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::Timeouts;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use std::time::Instant;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::app::App;
use crate::error::ERROR_HEADER;
use crate::http::{Dial, boxed};
use crate::http2::H2Sender;

fn ms(n: u64) -> causeway_api::Duration {
    causeway_api::Duration::from_millis(n)
}

fn timeouts(f: impl FnOnce(&mut Timeouts)) -> Timeouts {
    let mut t = Timeouts::DEFAULT;
    f(&mut t);
    t
}

fn get(uri: &str) -> http::Request<Body> {
    http::Request::builder()
        .uri(uri)
        .header(http::header::HOST, "app")
        .body(boxed(Empty::<Bytes>::new()))
        .unwrap()
}

/// Fails the test unless `f` completes within `limit`.
async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

#[tokio::test]
async fn a_request_past_its_timeout_answers_504_and_resets_the_upstream_http2_stream() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (reset_tx, reset_rx) = oneshot::channel();
    tokio::spawn(async move {
        // An upstream sidecar that takes the request and never answers.
        let (s, _) = l.accept().await.unwrap();
        let mut conn = h2::server::handshake(s).await.unwrap();
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        let _ = reset_tx.send(reason.ok());
    });
    let sender = H2Sender::handshake(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let exchange = Exchange::start(&timeouts(|t| t.request = ms(300)), started);
    let cut = exchange.head(async {
        let ready = sender.ready().await.map_err(|e| ProxyError::Upstream {
            service: "backend".into(),
            error: e.into(),
        })?;
        ready
            .send(get("http://backend/slow"))
            .await
            .map_err(|e| ProxyError::Upstream {
                service: "backend".into(),
                error: e.into(),
            })
    });
    let got = within("the request is cut", Duration::from_secs(5), cut).await;
    let took = started.elapsed();
    let Err(e) = got else {
        panic!("answered within the timeout")
    };
    assert!(matches!(e, ProxyError::RequestTimeout(_)), "{e:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let answer = e.into_response();
    assert_eq!(answer.status(), 504);
    assert_eq!(answer.headers()[ERROR_HEADER], "request-timeout");
    // The dropped exchange reset its stream: the upstream sees the cancel.
    let reason = within(
        "the upstream sees the reset",
        Duration::from_secs(5),
        reset_rx,
    )
    .await
    .unwrap();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
}

#[tokio::test]
async fn an_http1_request_past_its_timeout_closes_its_connection_to_the_application() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        // An application that reads the request and never answers, then reports
        // the connection's end.
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before the request came");
            buf.extend_from_slice(&b[..n]);
        }
        let mut b = [0u8; 1];
        let _ = closed_tx.send(s.read(&mut b).await.map_err(|e| e.kind()));
    });
    let app = App::new("127.0.0.1", port);
    let exchange = Exchange::start(&timeouts(|t| t.request = ms(200)), Instant::now());
    let cut = exchange.head(async {
        app.send_http1(get("/slow"), Duration::from_secs(5), None)
            .await
            .map_err(ProxyError::from)
    });
    let got = within("the request is cut", Duration::from_secs(5), cut).await;
    assert!(
        matches!(got, Err(ProxyError::RequestTimeout(_))),
        "{:?}",
        got.map(|r| r.status())
    );
    let end = within("the app sees the close", Duration::from_secs(5), closed_rx)
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the connection was closed, not kept for reuse: {end:?}"
    );
}

#[tokio::test]
async fn the_maximum_stream_duration_cuts_a_request_before_its_request_timeout() {
    let exchange = Exchange::start(
        &timeouts(|t| {
            t.request = ms(5000);
            t.max_stream_duration = ms(100);
        }),
        Instant::now(),
    );
    let cut = exchange.head(std::future::pending::<Result<(), ProxyError>>());
    let got = within("the request is cut", Duration::from_secs(5), cut).await;
    let e = got.unwrap_err();
    assert_eq!(e.label(), "max-stream-duration");
    assert_eq!(e.status(), 504);
}

/// A listener on loopback whose accept queue is full: a new connection's SYN is dropped,
/// so a dial to it neither succeeds nor fails until it times out.
pub(crate) fn full_listener(
    held: &mut Vec<std::net::TcpStream>,
) -> (socket2::Socket, std::net::SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => held.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (s, addr),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue never filled")
}

#[tokio::test]
async fn a_dial_to_an_endpoint_that_never_accepts_fails_at_the_connect_timeout() {
    let mut held = Vec::new();
    let (_listener, addr) = full_listener(&mut held);
    let dial = Dial {
        addr: "127.0.0.1".into(),
        port: addr.port(),
        tls: None,
        sni: String::new(),
        quic: false,
        connect_timeout: Duration::from_millis(400),
    };
    let started = std::time::Instant::now();
    let dialed = within(
        "the dial fails",
        Duration::from_secs(5),
        crate::http::connect(&dial),
    );
    let Err(e) = dialed.await else {
        panic!("connected to a full accept queue")
    };
    let took = started.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("timed out after 400ms"), "{e}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The application's dial too.
    let dialed = crate::http::tcp_connect("127.0.0.1", addr.port(), Duration::from_millis(200));
    let Err(e) = within("the dial fails", Duration::from_secs(5), dialed).await else {
        panic!("connected to a full accept queue")
    };
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
}

/// Two connected loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.unwrap(), b.unwrap().0)
}

#[tokio::test]
async fn a_tcp_pipe_is_closed_on_both_sides_after_its_idle_timeout_and_not_before() {
    let (mut client, proxy_in) = socket_pair().await;
    let (proxy_out, mut server) = socket_pair().await;
    let idle = Duration::from_millis(600);
    let piped = tokio::spawn(copy_until_idle(proxy_in, proxy_out, Some(idle), None));
    // Bytes every 100 ms, either way, for well over an idle timeout: the pipe stays up.
    let mut b = [0u8; 4];
    for i in 0..9 {
        if i % 2 == 0 {
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut b).await.unwrap();
        } else {
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut b).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then nothing: both ends see the close.
    let quiet = Instant::now();
    let n = within(
        "the client sees the close",
        Duration::from_secs(3),
        client.read(&mut b),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let n = within(
        "the server sees the close",
        Duration::from_secs(3),
        server.read(&mut b),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(450),
        "closed too early"
    );
    let (from_client, to_client, r) = piped.await.unwrap();
    assert_eq!((from_client, to_client), (20, 16));
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
}

/// A body fed frame by frame through a channel.
fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body) {
    let (tx, rx) = mpsc::channel(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (tx, boxed(StreamBody::new(stream)))
}

#[tokio::test]
async fn a_response_body_that_sends_nothing_for_the_stream_idle_timeout_ends_with_an_error() {
    let exchange = Exchange::start(&timeouts(|t| t.stream_idle = ms(500)), Instant::now());
    let (tx, body) = channel_body();
    let mut body = exchange.body(body);
    // Frames that keep coming keep it open past the idle timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
    }
    let quiet = Instant::now();
    let e = within("the idle body fails", Duration::from_secs(3), body.frame())
        .await
        .unwrap()
        .unwrap_err();
    assert!(quiet.elapsed() >= Duration::from_millis(500));
    assert!(e.to_string().contains("stream idle timeout (500ms)"), "{e}");
    drop(tx);
}

#[tokio::test]
async fn the_maximum_stream_duration_ends_a_body_that_keeps_streaming() {
    let started = Instant::now();
    let exchange = Exchange::start(
        &timeouts(|t| {
            t.stream_idle = causeway_api::Duration::ZERO;
            t.max_stream_duration = ms(400);
        }),
        started,
    );
    let (tx, body) = channel_body();
    let mut body = exchange.body(body);
    tokio::spawn(async move {
        while tx
            .send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let e = within("the stream is cut", Duration::from_secs(3), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the body ended"),
            }
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        e.to_string().contains("maximum stream duration (400ms)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_tcp_pipe_counts_its_bytes_while_it_is_open() {
    let (mut client, proxy_in) = socket_pair().await;
    let (proxy_out, mut server) = socket_pair().await;
    let live = Arc::new(LiveBytes::default());
    let piped = tokio::spawn(copy_until_idle(
        proxy_in,
        proxy_out,
        None,
        Some(live.clone()),
    ));
    let mut b = [0u8; 5];
    client.write_all(b"hello").await.unwrap();
    server.read_exact(&mut b).await.unwrap();
    server.write_all(b"hi").await.unwrap();
    client.read_exact(&mut b[..2]).await.unwrap();
    // Still open, and already counted: a scrape sees a long connection's traffic.
    assert_eq!(live.read.load(Ordering::Relaxed), 5);
    assert_eq!(live.written.load(Ordering::Relaxed), 2);
    drop(client);
    drop(server);
    let (from_client, to_client, _) = piped.await.unwrap();
    assert_eq!((from_client, to_client), (5, 2));
}
