//! HTTP/2 between sidecars (and to HTTP/2 applications), spoken through the `h2` crate
//! directly rather than through hyper.
//!
//! Client: a request is sent from the task of the application's connection and its
//! response read there; hyper's client passes each request through a channel to the
//! connection's task and spawns a task per request to wait for the response. Server: a
//! connection's requests run inside its task, each answering and then sending its
//! response body; hyper spawns a task per stream and another per response body. On the
//! proxy's hot path that was 10-20% of a sidecar's instructions per request.
//!
//! Liveness: a pooled client connection whose peer went silent (a frozen process, a
//! blackholed zone) would otherwise look alive until each request's timeout. Its task
//! sends an HTTP/2 PING every [`PING_INTERVAL`] while the connection is in use (a request
//! took it within [`RECENTLY_USED`]), every [`IDLE_PING_INTERVAL`] otherwise, and at once
//! when an idle connection is taken again. A PONG missing for the PING timeout declares
//! the connection dead: its task stops driving it, so the streams in flight on it fail at
//! once (and are retried elsewhere when they may be), and the pool reports it as the
//! endpoint failing (see [`crate::http::Slot`]). The timeout follows the PONGs' round
//! trip: four times its smoothed value, never under [`MIN_PING_TIMEOUT`] (a busy peer's
//! scheduling hiccup is not death) nor over [`MAX_PING_TIMEOUT`]. On a LAN or between
//! nearby zones a busy connection's silent peer is so found within
//! `PING_INTERVAL + MIN_PING_TIMEOUT` (750 ms), so calls move to live endpoints within a
//! second; an idle one's on its next use. The cost on the request path is one relaxed
//! load of a flag (a store and a wake once per ping interval).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::FusedFuture as _;
use futures::{FutureExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::http::{Body, BoxError, boxed};
use crate::proxy::Stream;

/// Stream and connection flow-control windows, both directions. Large: a slow reader
/// must not stall the connection's other streams, and a 10 ms cross-zone RTT still
/// moves 100 MB/s per stream.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Streams a caller may open at once on one connection (hyper's default).
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// A PING every this long on a connection in use.
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest wait for a PONG before the peer is declared dead.
pub(crate) const MIN_PING_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest wait for a PONG, however slow the path has been.
pub(crate) const MAX_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection a request took within this long is in use (pinged every
/// [`PING_INTERVAL`]).
const RECENTLY_USED: Duration = Duration::from_secs(10);
/// A PING every this long on an idle connection: thousands of idle pooled connections
/// cost little, and a dead one is found anyway when a request takes it.
pub(crate) const IDLE_PING_INTERVAL: Duration = Duration::from_secs(15);

/// One multiplexed HTTP/2 connection, as its requests see it. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct H2Sender {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<ConnState>,
    /// When it was opened (MeshTimeout `maxConnectionDuration` ages it out).
    opened: std::time::Instant,
}

/// What a connection's task tells its requests, and they tell it.
#[derive(Default)]
struct ConnState {
    /// Set when the connection's task ends (closed, failed, or drained after GOAWAY).
    closed: AtomicBool,
    /// Set (before `closed`) when the peer answered no PING in time.
    dead: AtomicBool,
    /// Set by a request taking the connection; cleared by each keepalive round.
    used: AtomicBool,
    /// Wakes the keepalive of an idle connection that a request took.
    wake: tokio::sync::Notify,
}

impl H2Sender {
    /// How long ago it was opened.
    pub(crate) fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// HTTP/2's handshake over `io`; the connection runs on a task of its own, which
    /// also keeps it alive (see the module's doc).
    pub(crate) async fn handshake<S: Stream>(io: S) -> std::io::Result<H2Sender> {
        H2Sender::handshake_with(io, PING_INTERVAL, MIN_PING_TIMEOUT).await
    }

    /// With a PING every `interval` while in use, and PING timeouts of at least
    /// `min_timeout`.
    async fn handshake_with<S: Stream>(
        io: S,
        interval: Duration,
        min_timeout: Duration,
    ) -> std::io::Result<H2Sender> {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(crate::http::MAX_HEADER_BYTES as u32)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(std::io::Error::other)?;
        let state = Arc::new(ConnState::default());
        let pings = conn
            .ping_pong()
            .expect("a new connection's PingPong is not taken");
        let st = state.clone();
        tokio::spawn(async move {
            let mut conn = Box::pin(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection closed");
                },
                timeout = keepalive(pings, &st, interval, min_timeout) => {
                    tracing::info!(timeout = %crate::timeout::show(timeout), "upstream HTTP/2 connection dropped: its peer answered no PING");
                    st.dead.store(true, Ordering::Relaxed);
                }
            }
            // Not driven any more: the streams still in flight on it fail now.
            drop(conn);
            st.closed.store(true, Ordering::Relaxed);
        });
        Ok(H2Sender {
            send,
            state,
            opened: std::time::Instant::now(),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Relaxed)
    }

    /// Whether the connection was dropped because its peer went silent.
    pub(crate) fn is_dead(&self) -> bool {
        self.state.dead.load(Ordering::Relaxed)
    }

    /// Which connection this is (clones share it).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.state) as usize
    }

    /// Waits until the connection takes a new stream. An error (the connection closed,
    /// or is going away) means nothing was sent.
    pub(crate) async fn ready(self) -> Result<ReadyH2, h2::Error> {
        // Marks it in use: a load on the hot path, a store once per keepalive round.
        if !self.state.used.load(Ordering::Relaxed) {
            self.state.used.store(true, Ordering::Relaxed);
            self.state.wake.notify_one();
        }
        Ok(ReadyH2(self.send.ready().await?))
    }
}

/// Pings the peer as long as it answers; returns the PING timeout that a PONG missed.
/// Every `interval` while the connection is in use, every [`IDLE_PING_INTERVAL`] (or at
/// its next use) otherwise.
async fn keepalive(
    mut pings: h2::PingPong,
    state: &ConnState,
    interval: Duration,
    min_timeout: Duration,
) -> Duration {
    let mut last_used = Instant::now();
    let mut rtt = PongRtt::default();
    loop {
        if state.used.swap(false, Ordering::Relaxed) {
            last_used = Instant::now();
        }
        if last_used.elapsed() < RECENTLY_USED {
            tokio::time::sleep(interval).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(IDLE_PING_INTERVAL) => {}
                () = state.wake.notified() => {}
            }
        }
        let timeout = rtt.timeout(min_timeout);
        let sent = Instant::now();
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => rtt.observe(sent.elapsed()),
            // The connection ended: its own future says how.
            Ok(Err(_)) => std::future::pending().await,
            Err(_) => return timeout,
        }
    }
}

/// The smoothed round trip of a connection's PONGs (TCP's SRTT, gain 1/8), which sets
/// how long the next PING may wait.
#[derive(Debug, Default, Clone, Copy)]
struct PongRtt {
    smoothed: Option<Duration>,
}

impl PongRtt {
    fn observe(&mut self, sample: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// Four round trips, within [`min`, [`MAX_PING_TIMEOUT`]].
    fn timeout(&self, min: Duration) -> Duration {
        self.smoothed
            .map_or(min, |s| s * 4)
            .clamp(min, MAX_PING_TIMEOUT.max(min))
    }
}

/// A connection ready for one more request.
pub(crate) struct ReadyH2(h2::client::SendRequest<Bytes>);

impl ReadyH2 {
    /// Sends a request (absolute target) and waits for its response's head. A request
    /// body goes on being sent (on a task of its own) until it ends, the peer resets
    /// the stream, or the response body is dropped.
    pub(crate) async fn send(
        mut self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, h2::Error> {
        let (parts, body) = req.into_parts();
        let eos = body.is_end_stream();
        let (response, tx) = self
            .0
            .send_request(http::Request::from_parts(parts, ()), eos)?;
        let cancel = (!eos).then(|| {
            let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(send_body(None, body, tx, async move {
                let _ = cancelled.await;
            }));
            cancel
        });
        let response = response.await?;
        let length = content_length(response.headers());
        Ok(response.map(|recv| {
            boxed(RecvBody {
                recv,
                data_done: false,
                length,
                _cancel: cancel,
            })
        }))
    }
}

/// Serves HTTP/2 on `io`: each request is answered by `handle`, then its response body
/// sent. The requests in flight run inside the connection's task (no task spawned per
/// request): the connection is polled right after them, so what they queued is flushed
/// in the same turn. When `drain` completes, the connection says GOAWAY: the peer opens
/// no new stream on it (a sidecar dials another endpoint), the streams in flight finish,
/// then it closes. A request whose stream the peer resets before it is answered is
/// dropped (cancelled).
pub(crate) async fn serve<S, F, Fut>(
    io: S,
    handle: F,
    drain: impl Future<Output = ()>,
) -> Result<(), h2::Error>
where
    S: Stream,
    F: Fn(http::Request<Body>) -> Fut,
    Fut: Future<Output = http::Response<Body>>,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(crate::http::MAX_HEADER_BYTES as u32)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut drain = std::pin::pin!(drain.fuse());
    std::future::poll_fn(|cx| {
        if !drain.is_terminated() && drain.as_mut().poll(cx).is_ready() {
            conn.graceful_shutdown();
        }
        loop {
            while let Poll::Ready(Some(())) = in_flight.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let length = content_length(req.headers());
                    let answer = handle(req.map(|recv| {
                        if recv.is_end_stream() {
                            // No body (a GET): nothing to read, and no allocation.
                            return boxed(http_body_util::Empty::new());
                        }
                        boxed(RecvBody {
                            recv,
                            data_done: false,
                            length,
                            _cancel: None,
                        })
                    }));
                    in_flight.push(async move {
                        let mut respond = respond;
                        let mut answer = std::pin::pin!(answer);
                        // A caller that resets the stream gave up on it (its request
                        // timed out, say): the request is dropped with whatever it sent
                        // on, so the application sees the cancel too.
                        let answered = std::future::poll_fn(|cx| {
                            if let Poll::Ready(r) = answer.as_mut().poll(cx) {
                                return Poll::Ready(Some(r));
                            }
                            respond.poll_reset(cx).map(|_| None)
                        })
                        .await;
                        if let Some(resp) = answered {
                            respond_with(resp, respond).await;
                        }
                    });
                }
                // The connection closed (or failed): what is still in flight goes with it.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// A body up to this size that is already read in full goes out right behind its
/// response head, without waiting for flow control (h2 queues it until the window
/// allows): the usual small answer costs no flow-control round on the proxy's side.
const SMALL_BODY: usize = 16 * 1024;

async fn respond_with(resp: http::Response<Body>, mut respond: h2::server::SendResponse<Bytes>) {
    let (parts, mut body) = resp.into_parts();
    let head = http::Response::from_parts(parts, ());
    if body.is_end_stream() {
        if let Err(e) = respond.send_response(head, true) {
            tracing::debug!(error = %e, "sending a response head failed");
        }
        return;
    }
    // What the body has ready now, without waiting.
    let ready = body.frame().now_or_never();
    let mut tx = match respond.send_response(head, matches!(ready, Some(None))) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "sending a response head failed");
            return;
        }
    };
    let first = match ready {
        // The body ended with the head.
        Some(None) => return,
        Some(Some(Ok(frame)))
            if body.is_end_stream() && frame.data_ref().is_some_and(|d| d.len() <= SMALL_BODY) =>
        {
            let _ = tx.send_data(frame.into_data().unwrap_or_default(), true);
            return;
        }
        // Anything else (nothing yet, more to come, trailers, an error): as it comes.
        other => other,
    };
    // Boxed: a body that streams is the rare case; its state would make every
    // request's future larger (it is moved into the connection's set of requests).
    Box::pin(send_body(first, body, tx, std::future::pending())).await;
}

/// Sends a body on its stream (`first`: what a poll of it already gave), as the peer's
/// flow control allows, until the body ends, the peer resets the stream, or `cancelled`
/// resolves (the stream is then reset).
async fn send_body(
    mut first: Option<Option<Result<Frame<Bytes>, BoxError>>>,
    mut body: Body,
    mut tx: h2::SendStream<Bytes>,
    cancelled: impl Future<Output = ()>,
) {
    let mut cancelled = std::pin::pin!(cancelled);
    loop {
        let frame = if let Some(polled) = first.take() {
            polled
        } else {
            tokio::select! {
            biased;
            f = body.frame() => f,
            () = &mut cancelled => {
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            r = std::future::poll_fn(|cx| tx.poll_reset(cx)) => {
                tracing::debug!(reason = ?r, "stream reset by the peer");
                return;
            }
            }
        };
        let mut data = match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "body failed");
                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = tx.send_trailers(trailers);
                    }
                    return;
                }
            },
        };
        // The last chunk carries END_STREAM: no empty frame after it.
        let last = body.is_end_stream();
        if data.is_empty() {
            if last {
                let _ = tx.send_data(data, true);
                return;
            }
            continue;
        }
        loop {
            tx.reserve_capacity(data.len());
            let granted = tokio::select! {
                biased;
                c = std::future::poll_fn(|cx| tx.poll_capacity(cx)) => c,
                () = &mut cancelled => {
                    tx.send_reset(h2::Reason::CANCEL);
                    return;
                }
            };
            let n = match granted {
                Some(Ok(n)) => n.min(data.len()),
                // The stream was reset or the connection closed.
                None | Some(Err(_)) => return,
            };
            let chunk = data.split_to(n);
            let done = data.is_empty();
            if tx.send_data(chunk, done && last).is_err() {
                return;
            }
            if done {
                break;
            }
        }
        if last {
            return;
        }
    }
}

/// `content-length`, when it is one number.
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A body read from an HTTP/2 stream; gives its flow-control window back as it is read.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// From `content-length`, so an HTTP/1.1 peer gets a length rather than chunks.
    length: Option<u64>,
    /// A response's: dropping it stops the request body still being sent.
    _cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt as _, Full, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn the_ping_timeout_follows_the_pong_round_trip_within_bounds() {
        let mut rtt = PongRtt::default();
        // Nothing measured yet: the floor.
        assert_eq!(rtt.timeout(MIN_PING_TIMEOUT), MIN_PING_TIMEOUT);
        // A LAN's round trips: still the floor.
        rtt.observe(Duration::from_millis(1));
        assert_eq!(rtt.timeout(MIN_PING_TIMEOUT), MIN_PING_TIMEOUT);
        // A far zone (200 ms): four round trips.
        let mut far = PongRtt::default();
        far.observe(Duration::from_millis(200));
        assert_eq!(far.timeout(MIN_PING_TIMEOUT), Duration::from_millis(800));
        // One slow PONG moves the estimate an eighth of the way.
        far.observe(Duration::from_millis(1000));
        assert_eq!(far.timeout(MIN_PING_TIMEOUT), Duration::from_millis(1200));
        // Never past the ceiling.
        far.observe(Duration::from_secs(30));
        assert_eq!(far.timeout(MIN_PING_TIMEOUT), MAX_PING_TIMEOUT);
    }

    /// A client connected to `serve(handle)` over an in-memory pipe.
    async fn pair<F, Fut>(handle: F) -> H2Sender
    where
        F: Fn(http::Request<Body>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<Body>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = serve(server, handle, std::future::pending()).await;
        });
        H2Sender::handshake(client).await.unwrap()
    }

    fn request(body: Body) -> http::Request<Body> {
        http::Request::builder()
            .uri("http://backend/echo")
            .body(body)
            .unwrap()
    }

    /// A body fed chunk by chunk through a channel.
    fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body) {
        let (tx, rx) = mpsc::channel(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        (tx, boxed(StreamBody::new(stream)))
    }

    /// Echoes the request body back as it arrives, with the request's trailers.
    async fn echo(req: http::Request<Body>) -> http::Response<Body> {
        http::Response::new(req.into_body())
    }

    #[tokio::test]
    async fn a_large_body_crosses_both_ways_beyond_the_flow_control_windows() {
        let sender = pair(echo).await;
        let big = Bytes::from(vec![7u8; 9 << 20]); // over the 4 MiB connection window
        let resp = sender
            .ready()
            .await
            .unwrap()
            .send(request(boxed(Full::new(big.clone()))))
            .await
            .unwrap();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), big.len());
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn ready_small_bodies_empty_bodies_and_trailers_only_answers_arrive_whole() {
        let sender = pair(|req: http::Request<Body>| async move {
            match req.uri().path() {
                "/small" => http::Response::new(boxed(Full::new(Bytes::from_static(b"ok\n")))),
                "/empty" => http::Response::builder()
                    .status(204)
                    .body(boxed(http_body_util::Empty::<Bytes>::new()))
                    .unwrap(),
                _ => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
                    let frames =
                        futures::stream::iter([Ok::<_, BoxError>(Frame::trailers(trailers))]);
                    http::Response::new(boxed(StreamBody::new(frames)))
                }
            }
        })
        .await;
        let get = |path: &'static str| {
            let sender = sender.clone();
            async move {
                let req = http::Request::builder()
                    .uri(format!("http://backend{path}"))
                    .body(boxed(http_body_util::Empty::<Bytes>::new()))
                    .unwrap();
                let resp = sender.ready().await.unwrap().send(req).await.unwrap();
                let status = resp.status();
                (status, resp.into_body().collect().await.unwrap())
            }
        };
        let (status, small) = get("/small").await;
        assert_eq!(status, 200);
        assert_eq!(small.to_bytes(), "ok\n");
        let (status, empty) = get("/empty").await;
        assert_eq!(status, 204);
        assert!(empty.to_bytes().is_empty());
        let (_, trailers_only) = get("/grpc").await;
        assert_eq!(trailers_only.trailers().unwrap()["grpc-status"], "5");
    }

    #[tokio::test]
    async fn a_response_streams_while_its_request_body_is_still_being_sent() {
        let sender = pair(echo).await;
        let (tx, body) = channel_body();
        let resp = sender.ready().await.unwrap().send(request(body));
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping 1"))))
            .await
            .unwrap();
        // The response head and the first echo arrive before the request ends.
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("response head before the request body ended")
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ping 1");
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping 2"))))
            .await
            .unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "ping 2");
        // Trailers end the request; they come back as the response's trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(last.trailers_ref().unwrap()["grpc-status"], "0");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn dropping_a_response_stops_its_request_body() {
        let (seen_tx, mut seen) = mpsc::channel::<Option<Bytes>>(16);
        let sender = pair(move |req: http::Request<Body>| {
            let seen_tx = seen_tx.clone();
            async move {
                // Reports what arrives, and the end (or reset) of the request body.
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(Ok(f)) = body.frame().await {
                        if let Ok(d) = f.into_data() {
                            let _ = seen_tx.send(Some(d)).await;
                        }
                    }
                    let _ = seen_tx.send(None).await;
                });
                http::Response::new(boxed(StreamBody::new(futures::stream::pending::<
                    Result<Frame<Bytes>, BoxError>,
                >())))
            }
        })
        .await;
        let (tx, body) = channel_body();
        let resp = sender.ready().await.unwrap().send(request(body));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(seen.recv().await.unwrap().unwrap(), "a");
        drop(resp);
        // The stream is reset: the server's body ends without more data, and the
        // client's body task lets go of its source.
        let end = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the request body ended");
        assert_eq!(end, Some(None));
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the request body's source was dropped");
    }

    #[tokio::test]
    async fn a_closed_connection_is_seen_and_takes_no_new_request() {
        let (client, server) = tokio::io::duplex(1024);
        let sender = tokio::join!(H2Sender::handshake(client), async move {
            // A server that completes the handshake and then goes away.
            let conn = h2::server::handshake(server).await.unwrap();
            drop(conn);
        })
        .0
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sender.is_closed() {
            assert!(std::time::Instant::now() < deadline, "never seen closed");
            tokio::task::yield_now().await;
        }
        assert!(sender.ready().await.is_err());
    }

    #[tokio::test]
    async fn draining_says_goaway_finishes_the_streams_in_flight_then_closes() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = serve(server, echo, async {
                let _ = drained.await;
            })
            .await;
            let _ = ended_tx.send(r.is_ok());
        });
        let sender = H2Sender::handshake(client).await.unwrap();
        // A request in flight: its body (and so the echoed answer) still streaming.
        let (tx, body) = channel_body();
        let resp = sender
            .clone()
            .ready()
            .await
            .unwrap()
            .send(request(body))
            .await
            .unwrap();
        drain.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sender.clone().ready().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "no GOAWAY seen");
            tokio::task::yield_now().await;
        }
        // The request in flight still goes through whole.
        tx.send(Ok(Frame::data(Bytes::from_static(b"after the GOAWAY"))))
            .await
            .unwrap();
        drop(tx);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"after the GOAWAY");
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(
            matches!(ended, Ok(Ok(true))),
            "the connection closed cleanly"
        );
    }
}
