//! MeshTimeout, enforced: the layer that bounds a request, its response body and its
//! connection in time. The values come from the listener's
//! [`Timeouts`](causeway_api::proxy_config::Timeouts) in the current config, read when a
//! request (or connection) starts; zero turns a timeout off.
//!
//! - Request (`http.requestTimeout`): from the moment the proxy has a request's head
//!   until the response's head arrives. The dials, the choice of endpoint and the
//!   upstream's think time all count; the response body does not (Envoy's route timeout
//!   runs until the response is complete: here a streaming body is bounded by the two
//!   timeouts below instead, so a long download or a gRPC stream is not cut at 15 s).
//!   Past it the exchange's future is dropped, which cancels the upstream request: an
//!   HTTP/2 stream is reset (RST_STREAM CANCEL), an HTTP/1.1 connection to the
//!   application is closed and never reused. The caller gets 504 with
//!   `x-causeway-error: request-timeout`.
//! - Maximum stream duration (`http.maxStreamDuration`): the whole exchange, request to
//!   the end of the response. Before the response's head: 504 (`max-stream-duration`);
//!   after it, the response body ends with an error, which resets the stream (HTTP/2)
//!   or closes the connection (HTTP/1.1).
//! - Stream idle (`http.streamIdleTimeout`): a response body that yields nothing for
//!   that long ends with an error, as above.
//! - Idle (`idleTimeout`): a connection on which no byte moved either way for that long
//!   is closed. For TCP both sides are closed; for HTTP the connection from the
//!   application (outbound) or from the peer (inbound).
//! - Connection age (`http.maxConnectionDuration`, inbound): past it the connection is
//!   drained like at SIGTERM (HTTP/2 GOAWAY; HTTP/1.1 closes after the request in
//!   flight).
//!
//! Connect timeouts are applied where the dial is ([`crate::http::connect`]) and the
//! request-headers timeout by hyper's HTTP/1.1 server on the inbound.
//!
//! Cost on the hot path: one timer (tokio's `timeout_at`) per request while waiting
//! for the response's head; a response body that is not complete with its head is
//! wrapped once (one small allocation), and arms a timer only when it has to wait for
//! data. A connection's idle clock is one atomic store per read or write that moved
//! bytes, and one timer per connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::Timeouts;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::http::{Body, BoxError};

/// `d`, or `None` when it is zero (off).
pub(crate) fn on(d: causeway_api::Duration) -> Option<Duration> {
    let d = d.as_std();
    (!d.is_zero()).then_some(d)
}

/// A duration as the policy writes it (`500ms`, `1m30s`).
pub(crate) fn show(d: Duration) -> String {
    causeway_api::Duration::from(d).to_string()
}

// === one exchange ===

/// The time limits of one HTTP exchange, fixed when it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    started: Instant,
    request: Option<Duration>,
    max_stream: Option<Duration>,
    stream_idle: Option<Duration>,
}

impl Exchange {
    /// The limits of `timeouts` for an exchange that started at `started`.
    pub(crate) fn start(timeouts: &Timeouts, started: std::time::Instant) -> Exchange {
        Exchange {
            started: Instant::from_std(started),
            request: on(timeouts.request),
            max_stream: on(timeouts.max_stream_duration),
            stream_idle: on(timeouts.stream_idle),
        }
    }

    /// When the response's head is due at the latest (the request timeout or the
    /// maximum stream duration, the earlier), if either is on.
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        let request = self.request.map(|d| self.started + d);
        let stream = self.max_stream.map(|d| self.started + d);
        request
            .into_iter()
            .chain(stream)
            .min()
            .map(Instant::into_std)
    }

    /// Runs `exchange` (which ends with the response's head) within the request
    /// timeout and the maximum stream duration. When either passes first, `exchange`
    /// is dropped (which cancels what it sent) and the matching error returned.
    pub(crate) async fn head<T>(
        &self,
        exchange: impl Future<Output = Result<T, ProxyError>>,
    ) -> Result<T, ProxyError> {
        let request = self.request.map(|d| (self.started + d, d));
        let stream = self.max_stream.map(|d| (self.started + d, d));
        let (deadline, error) = match (request, stream) {
            (None, None) => return exchange.await,
            (Some((at, d)), None) => (at, ProxyError::RequestTimeout(d)),
            (Some((at, d)), Some((s_at, _))) if at <= s_at => (at, ProxyError::RequestTimeout(d)),
            (_, Some((at, d))) => (at, ProxyError::MaxStreamDuration(d)),
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(error),
        }
    }

    /// The response body, ended with an error when it idles past the stream idle
    /// timeout or runs past the maximum stream duration. A body already complete is
    /// returned as it is.
    pub(crate) fn body(&self, body: Body) -> Body {
        if body.is_end_stream() || (self.stream_idle.is_none() && self.max_stream.is_none()) {
            return body;
        }
        BoxBody::new(TimedBody {
            inner: body,
            idle: self.stream_idle,
            end: self.max_stream.map(|d| (self.started + d, d)),
            last: Instant::now(),
            timer: None,
        })
    }
}

/// A body with a stream idle timeout and an end.
struct TimedBody {
    inner: Body,
    idle: Option<Duration>,
    /// The maximum stream duration's deadline, and the duration.
    end: Option<(Instant, Duration)>,
    /// When the body last gave a frame (or was made).
    last: Instant,
    /// Armed the first time the body has to wait; moved only when it fires early.
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    /// The earliest deadline now: the idle one from the last frame, or the end.
    fn due(&self) -> Option<Instant> {
        let idle = self.idle.map(|d| self.last + d);
        match (idle, self.end) {
            (Some(i), Some((e, _))) => Some(i.min(e)),
            (Some(i), None) => Some(i),
            (None, Some((e, _))) => Some(e),
            (None, None) => None,
        }
    }

    /// Which limit has passed at `now`, if any.
    fn expired(&self, now: Instant) -> Option<io::Error> {
        if let Some((end, d)) = self.end
            && now >= end
        {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("maximum stream duration ({}) reached", show(d)),
            ));
        }
        match self.idle {
            Some(d) if now >= self.last + d => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("stream idle timeout ({}): no data", show(d)),
            )),
            _ => None,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if this.idle.is_some() {
                this.last = Instant::now();
            }
            return Poll::Ready(frame);
        }
        // Nothing yet: wait on the earliest deadline. Deadlines only move later (a
        // frame moves the idle one), so the timer is armed once and moved only when it
        // fires before the body's current deadline.
        loop {
            let Some(due) = this.due() else {
                return Poll::Pending;
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            ready!(timer.as_mut().poll(cx));
            match this.expired(Instant::now()) {
                Some(e) => {
                    this.timer = None;
                    this.idle = None;
                    this.end = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    if let Some(timer) = this.timer.as_mut() {
                        timer.as_mut().reset(due);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === connections ===

/// When a connection last moved a byte, for its idle timeout.
#[derive(Debug)]
pub(crate) struct IdleClock {
    origin: Instant,
    /// Milliseconds from `origin` to the last read or write that moved bytes.
    last_ms: AtomicU64,
}

impl IdleClock {
    fn new() -> IdleClock {
        IdleClock {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once no byte moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.last() + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Bytes moved on connections, counted as they move (not when a connection ends), for
/// metrics a scrape reads while long connections are open.
#[derive(Debug, Default)]
pub struct LiveBytes {
    /// Read from the connections (received from their peer).
    pub read: AtomicU64,
    /// Written to them (sent to their peer).
    pub written: AtomicU64,
}

/// A connection that keeps its [`IdleClock`] (when it has an idle timeout) and counts
/// its bytes (and adds them to `live` as they move).
pub(crate) struct Watched<S> {
    inner: S,
    clock: Option<Arc<IdleClock>>,
    /// Bytes read from it, and written to it.
    pub(crate) read: u64,
    pub(crate) written: u64,
    live: Option<Arc<LiveBytes>>,
}

/// Wraps `io`; with an `idle` timeout, also returns the clock to wait on.
pub(crate) fn watch<S>(io: S, idle: Option<Duration>) -> (Watched<S>, Option<Arc<IdleClock>>) {
    let clock = idle.map(|_| Arc::new(IdleClock::new()));
    (
        Watched {
            inner: io,
            clock: clock.clone(),
            read: 0,
            written: 0,
            live: None,
        },
        clock,
    )
}

impl<S> Watched<S> {
    fn moved(&self) {
        if let Some(c) = &self.clock {
            c.touch();
        }
    }

    fn count(&mut self, read: usize, written: usize) {
        self.read += read as u64;
        self.written += written as u64;
        if let Some(live) = &self.live {
            live.read.fetch_add(read as u64, Ordering::Relaxed);
            live.written.fetch_add(written as u64, Ordering::Relaxed);
        }
        self.moved();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.count(n, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if n > 0 {
            this.count(0, n);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.count(0, n);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Runs `conn` (a connection's whole life) until it ends, or until its clock says it
/// has been idle for `idle`: then `conn` is dropped, which closes the connection, and
/// `None` is returned.
async fn unless_idle<F: Future>(
    conn: F,
    clock: Option<&IdleClock>,
    idle: Option<Duration>,
) -> Option<F::Output> {
    match (clock, idle) {
        (Some(clock), Some(idle)) => tokio::select! {
            r = conn => Some(r),
            () = clock.idle_for(idle) => None,
        },
        _ => Some(conn.await),
    }
}

/// Copies both ways between `a` and `b` until both sides close, or until no byte moved
/// for `idle` (then both are closed). Returns the bytes `a` sent and received, and how
/// the copy ended; with `live`, adds them there as they move (read: from `a`).
pub async fn copy_until_idle<A, B>(
    a: A,
    mut b: B,
    idle: Option<Duration>,
    live: Option<Arc<LiveBytes>>,
) -> (u64, u64, io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a, clock) = watch(a, idle);
    a.live = live;
    let result = {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        match unless_idle(copy, clock.as_deref(), idle).await {
            Some(r) => r.map(|_| ()),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "idle timeout ({}): no bytes either way",
                    show(idle.unwrap_or_default())
                ),
            )),
        }
    };
    (a.read, a.written, result)
}

/// When to drain an HTTP connection that starts now: when `drained` completes (SIGTERM),
/// when the connection reaches `max_age`, or when no byte moved on it for `idle` (its
/// clock from [`watch`]). Draining an idle connection closes it at once (HTTP/1.1) or
/// after a GOAWAY (HTTP/2), so a client that sends a request just then is told to go
/// elsewhere rather than seeing its connection cut.
pub(crate) fn drain_when(
    drained: impl Future<Output = ()>,
    max_age: Option<Duration>,
    clock: Option<Arc<IdleClock>>,
    idle: Option<Duration>,
) -> impl Future<Output = ()> {
    let aged = async move {
        match max_age {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let idled = async move {
        match (clock, idle) {
            (Some(clock), Some(idle)) => clock.idle_for(idle).await,
            _ => std::future::pending().await,
        }
    };
    async move {
        tokio::select! {
            () = drained => {}
            () = aged => {}
            () = idled => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
