//! A lean HTTP/1.1 client for the inbound's local application: one request at a time
//! on a keep-alive connection, the response read straight from the socket.
//!
//! hyper's client runs a task per connection and hands every request and response
//! across a channel to it; on the inbound that cost a quarter of the sidecar's CPU per
//! request. Here the request's own task writes the request (head and a body already in
//! hand go out in one write) and the response body reads the socket when polled. A
//! request body that is still arriving streams from a task of its own, so an app may
//! answer before it has read the whole request.
//!
//! Framing follows RFC 9112: `content-length`, `chunked` (with trailers) or read to
//! close; 1xx answers are skipped; HEAD, 204 and 304 carry no body. A connection is
//! handed back ([`Checkin`]) only when both its request and its response went through
//! whole, so a reused connection never carries leftovers of an earlier exchange.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::http::Body;

/// The most a response head (or a trailer section) may take.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// How much the read buffer grows by when it is full.
const READ_CHUNK: usize = 16 * 1024;

/// Takes a connection back when its exchange has completed.
pub(crate) trait Checkin: Send + Sync + 'static {
    fn checkin(&self, conn: Conn);
}

/// One keep-alive connection to the application.
pub(crate) struct Conn {
    io: Arc<TcpStream>,
    buf: BytesMut,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection closed before a byte of the response came: an idle connection the
    /// app had closed. The app may or may not have seen the request.
    Closed,
    Io(io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Closed => f.write_str("the application closed the connection"),
            SendError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

/// A connection the app had closed or reset, before anything of a response came.
fn closed_or(e: io::Error) -> SendError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => SendError::Closed,
        _ => SendError::Io(e),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Conn {
        Conn {
            io: Arc::new(io),
            buf: BytesMut::new(),
        }
    }

    /// Whether the app closed this idle connection (or sent bytes nobody asked for).
    /// Free when nothing arrived: the socket is read only when it is known readable.
    pub(crate) fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` (origin-form target, `host` set) and reads the response head. The
    /// response's body hands the connection to `pool` once the exchange is complete.
    /// A body still streaming is taken out of `req`; the rest stays for a retry.
    pub(crate) async fn send(
        mut self,
        req: &mut Request,
        pool: Arc<dyn Checkin>,
    ) -> Result<http::Response<Body>, SendError> {
        let no_body = req.no_body;
        write_all(&self.io, &req.head).await.map_err(closed_or)?;
        let writer = req.rest.take().map(|rest| {
            let io = self.io.clone();
            tokio::spawn(async move {
                let written = write_body(&io, rest).await;
                if written.is_err() {
                    // The app waits for the rest of a body that will not come: end the
                    // connection, so the app stops waiting and our reader sees the end.
                    let _ = socket2::SockRef::from(&*io).shutdown(std::net::Shutdown::Both);
                }
                written
            })
        });
        let guard = AbortOnDrop(writer);
        // Whether any byte of an answer came: only before that may the request be retried.
        let mut answered = false;
        let (parts, framing, keep_alive) = loop {
            let (parts, framing, keep_alive) = self.read_head(no_body, &mut answered).await?;
            // 1xx are interim answers; the final one follows (101 would switch protocols,
            // and the inbound never forwards `upgrade`).
            if parts.status.is_informational() {
                if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    return Err(invalid("unexpected 101 Switching Protocols").into());
                }
                continue;
            }
            break (parts, framing, keep_alive);
        };
        let mut body = ResponseBody {
            conn: Some(self),
            framing,
            keep_alive,
            writer: guard,
            pool,
        };
        body.settle();
        Ok(http::Response::from_parts(parts, crate::http::boxed(body)))
    }

    /// Reads and parses one response head.
    async fn read_head(
        &mut self,
        no_body: bool,
        read_any: &mut bool,
    ) -> Result<(http::response::Parts, Framing, bool), SendError> {
        *read_any |= !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, no_body)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(invalid("response head too large").into());
                }
            }
            self.buf.reserve(READ_CHUNK);
            let n = std::future::poll_fn(|cx| read_some(&self.io, &mut self.buf, cx))
                .await
                .map_err(|e| {
                    if *read_any {
                        SendError::Io(e)
                    } else {
                        closed_or(e)
                    }
                })?;
            if n == 0 {
                return Err(if *read_any {
                    SendError::Io(invalid("the application closed mid-response"))
                } else {
                    SendError::Closed
                });
            }
            *read_any = true;
        }
    }
}

/// A request encoded for the wire: its head (with the body when it was in hand), and
/// the body still to stream otherwise.
pub(crate) struct Request {
    head: Vec<u8>,
    rest: Option<Streamed>,
    /// A HEAD request: its response has no body whatever its headers say.
    no_body: bool,
    /// Whether the request may be sent again after a connection closed under it:
    /// encoded whole and idempotent (RFC 9110 9.2.2).
    pub(crate) replayable: bool,
}

impl Request {
    /// Encodes `req`. A body ready now goes into the head's buffer with a
    /// `content-length`; one still arriving keeps the caller's `content-length`, or
    /// the body's exact size, or is sent chunked.
    pub(crate) fn encode(req: http::Request<Body>) -> Result<Request, io::Error> {
        let (parts, mut body) = req.into_parts();
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        if !parts.headers.contains_key(http::header::HOST)
            && let Some(a) = parts.uri.authority()
        {
            put_header(&mut head, "host", a.as_str().as_bytes());
        }
        for (name, value) in &parts.headers {
            put_header(&mut head, name.as_str(), value.as_bytes());
        }
        if parts.method == http::Method::CONNECT {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "CONNECT is not forwarded to an HTTP/1.1 application",
            ));
        }
        let declared = match parts.headers.get(http::header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                parse_length(v.as_bytes())
                    .ok_or_else(|| invalid("bad content-length in the request"))?,
            ),
        };
        let no_body = parts.method == http::Method::HEAD;
        let idempotent = parts.method.is_idempotent();
        let sends_length = matches!(
            parts.method,
            http::Method::POST | http::Method::PUT | http::Method::PATCH
        );

        // The body in hand now, or its first frame.
        let first = if body.is_end_stream() {
            Some(None)
        } else {
            body.frame().now_or_never()
        };
        let first = match first {
            Some(Some(Err(e))) => return Err(io::Error::other(e)),
            other => other,
        };
        let complete = match &first {
            Some(None) => Some(Bytes::new()),
            Some(Some(Ok(f))) if body.is_end_stream() && f.is_data() => f.data_ref().cloned(),
            _ => None,
        };
        if let Some(data) = complete {
            match declared {
                Some(n) if n != data.len() as u64 => {
                    return Err(invalid(
                        "the request body does not match its content-length",
                    ));
                }
                Some(_) => {}
                None if data.is_empty() && !sends_length => {}
                None => put_header(
                    &mut head,
                    "content-length",
                    data.len().to_string().as_bytes(),
                ),
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&data);
            return Ok(Request {
                head,
                rest: None,
                no_body,
                replayable: idempotent,
            });
        }

        let framing = match declared.or_else(|| body.size_hint().exact()) {
            Some(n) => {
                if declared.is_none() {
                    put_header(&mut head, "content-length", n.to_string().as_bytes());
                }
                BodyFraming::Length(n)
            }
            None => {
                put_header(&mut head, "transfer-encoding", b"chunked");
                BodyFraming::Chunked
            }
        };
        head.extend_from_slice(b"\r\n");
        Ok(Request {
            head,
            rest: Some(Streamed {
                first: first.flatten().and_then(Result::ok),
                body,
                framing,
            }),
            no_body,
            replayable: false,
        })
    }
}

/// A content-length value: digits only (no sign, no spaces inside), as RFC 9110 8.6 has it.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Fields a trailer section must not carry (RFC 9110 6.5.1): framing and routing, which
/// a recipient would otherwise take as if they came in the head.
fn allowed_in_trailers(name: &http::HeaderName) -> bool {
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRAILER, TRANSFER_ENCODING};
    ![
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        TE,
        TRAILER,
        CONTENT_TYPE,
    ]
    .contains(name)
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A request body to stream: the frame already taken while encoding, then the rest.
struct Streamed {
    first: Option<Frame<Bytes>>,
    body: Body,
    framing: BodyFraming,
}

/// How a streamed request body is delimited.
#[derive(Clone, Copy)]
enum BodyFraming {
    Length(u64),
    Chunked,
}

/// Streams a request body; an error leaves the connection unusable.
async fn write_body(io: &TcpStream, rest: Streamed) -> io::Result<()> {
    let Streamed {
        mut first,
        mut body,
        framing,
    } = rest;
    let mut sent = 0u64;
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => match body.frame().await {
                Some(f) => f.map_err(io::Error::other)?,
                None => break,
            },
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                match framing {
                    BodyFraming::Length(n) if sent > n => {
                        return Err(invalid(
                            "the request body is longer than its content-length",
                        ));
                    }
                    BodyFraming::Length(_) => write_all(io, &data).await?,
                    BodyFraming::Chunked => {
                        write_all(io, format!("{:x}\r\n", data.len()).as_bytes()).await?;
                        write_all(io, &data).await?;
                        write_all(io, b"\r\n").await?;
                    }
                }
            }
            Err(frame) => {
                // Trailers travel only in a chunked body; HTTP/1.1 has nowhere else.
                if let (Ok(trailers), BodyFraming::Chunked) = (frame.into_trailers(), framing) {
                    let mut end = b"0\r\n".to_vec();
                    for (name, value) in &trailers {
                        if allowed_in_trailers(name) {
                            put_header(&mut end, name.as_str(), value.as_bytes());
                        }
                    }
                    end.extend_from_slice(b"\r\n");
                    return write_all(io, &end).await;
                }
            }
        }
    }
    match framing {
        BodyFraming::Length(n) if sent != n => Err(invalid(
            "the request body is shorter than its content-length",
        )),
        BodyFraming::Length(_) => Ok(()),
        BodyFraming::Chunked => write_all(io, b"0\r\n\r\n").await,
    }
}

async fn write_all(io: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match io.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what the socket has into `buf` (which has spare room); 0 at end of stream.
///
/// A read that leaves room in `buf` drained the socket (epoll is edge-triggered), so it
/// also clears the socket's readiness, as tokio's own `poll_read` does: otherwise the
/// next exchange on this kept-alive connection (and the pool's [`Conn::is_closed`]
/// probe) would first pay a `recvfrom` that fails with `EAGAIN`, one wasted syscall per
/// request (measured with `perf trace` on the inbound sidecars). The readiness cleared
/// is the one seen before the read, so an event that comes after it is not lost.
fn read_some(io: &TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    loop {
        let room = buf.capacity() - buf.len();
        let mut drained = None;
        let read = io.try_io(tokio::io::Interest::READABLE, || {
            let n = io.try_read_buf(buf)?;
            if n > 0 && n < room {
                drained = Some(n);
                // Tells `try_io` to clear the readiness it saw before this read.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        if let Some(n) = drained {
            return Poll::Ready(Ok(n));
        }
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(io.poll_read_ready(cx))?;
            }
            other => return Poll::Ready(other),
        }
    }
}

/// How a response body is delimited, and how far it has been read.
#[derive(Debug, PartialEq)]
enum Framing {
    /// Read in full (or none at all).
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the app closes the connection.
    Close,
}

#[derive(Debug, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Parses a response head off the front of `buf`, if it is all there.
fn parse_head(
    buf: &mut BytesMut,
    no_body: bool,
) -> Result<Option<(http::response::Parts, Framing, bool)>, io::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let status = http::StatusCode::from_u16(code).map_err(|_| invalid("bad response status"))?;
    let http10 = resp.version == Some(0);
    // Where each name and value sits in the head, so the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let fields: Vec<(http::HeaderName, (usize, usize))> = resp
        .headers
        .iter()
        .map(|h| {
            http::HeaderName::from_bytes(h.name.as_bytes())
                .map(|n| (n, at(h.value)))
                .map_err(|_| invalid("bad header name in the response"))
        })
        .collect::<Result<_, _>>()?;
    let head = buf.split_to(len).freeze();

    let mut map = http::HeaderMap::with_capacity(fields.len());
    for (name, (start, n)) in fields {
        let value = http::HeaderValue::from_maybe_shared(head.slice(start..start + n))
            .map_err(|_| invalid("bad header value in the response"))?;
        map.append(name, value);
    }

    let mut keep_alive = !http10;
    for v in map.get_all(http::header::CONNECTION) {
        for token in v.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                keep_alive = true;
            }
        }
    }

    let framing = if status.is_informational()
        || no_body
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if let Some(chunked) = map
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(|te| {
            let last = te.to_str().unwrap_or("").rsplit(',').next().unwrap_or("");
            last.trim().eq_ignore_ascii_case("chunked")
        })
    {
        // Both framings named, or a transfer coding from an HTTP/1.0 app: the coding
        // frames this response (the length must not travel on), and the connection
        // ends with it, as RFC 9112 6.3 asks.
        if map.remove(http::header::CONTENT_LENGTH).is_some() || http10 || !chunked {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if map.contains_key(http::header::CONTENT_LENGTH) {
        let mut lengths = map
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(parse_length);
        let first = lengths.next();
        match first {
            Some(Some(n)) if lengths.all(|l| l == Some(n)) => Framing::Length(n),
            _ => return Err(invalid("bad content-length in the response")),
        }
    } else {
        keep_alive = false;
        Framing::Close
    };
    let framing = match framing {
        Framing::Length(0) => Framing::Done,
        f => f,
    };

    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = if http10 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    parts.headers = map;
    Ok(Some((parts, framing, keep_alive)))
}

/// Aborts a request body's writer that is still running when the exchange ends.
struct AbortOnDrop(Option<JoinHandle<io::Result<()>>>);

impl AbortOnDrop {
    /// Whether the request body went out whole (or there was none to stream).
    fn finished_ok(&mut self) -> bool {
        match self.0.as_mut() {
            None => true,
            Some(h) => matches!(h.now_or_never(), Some(Ok(Ok(())))),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A response body read from the connection as it is polled.
struct ResponseBody {
    /// Until the body has been read in full.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    writer: AbortOnDrop,
    pool: Arc<dyn Checkin>,
}

impl ResponseBody {
    /// Moves past framing that is already buffered (a chunk's CRLF, the last chunk, an
    /// empty trailer section), so the end is seen with the last data, and hands the
    /// connection back once the body is done.
    fn settle(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        loop {
            let buf = &mut conn.buf;
            match &self.framing {
                Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return;
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Size) if buf.starts_with(b"0\r\n\r\n") => {
                    buf.advance(5);
                    self.framing = Framing::Done;
                }
                _ => break,
            }
        }
        if self.framing == Framing::Done {
            self.release();
        }
    }

    fn release(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
            && self.writer.finished_ok()
        {
            self.pool.checkin(conn);
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = &mut self.conn else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut self.framing {
                Framing::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !buf.is_empty() => {
                    let data = take_up_to(buf, left);
                    if *left == 0 {
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                    let data = take_up_to(buf, left);
                    if *left == 0 {
                        self.framing = Framing::Chunked(Chunk::DataEnd);
                        self.settle();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(invalid("bad chunk end"))));
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                    continue;
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        buf.advance(len);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= 1024 => {}
                    _ => return Poll::Ready(Some(Err(invalid("bad chunk size line")))),
                },
                Framing::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.release();
                        return Poll::Ready(None);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = http::HeaderMap::new();
                            for f in fields {
                                let (Ok(name), Ok(value)) = (
                                    http::HeaderName::from_bytes(f.name.as_bytes()),
                                    http::HeaderValue::from_bytes(f.value),
                                ) else {
                                    return Poll::Ready(Some(Err(invalid("bad trailer"))));
                                };
                                if allowed_in_trailers(&name) {
                                    trailers.append(name, value);
                                }
                            }
                            buf.advance(len);
                            self.release();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                        _ => return Poll::Ready(Some(Err(invalid("bad trailer section")))),
                    }
                }
                _ => {}
            }
            // More bytes needed.
            buf.reserve(READ_CHUNK);
            let n = match ready!(read_some(&conn.io, buf, cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if n == 0 {
                if self.framing == Framing::Close {
                    self.keep_alive = false;
                    self.release();
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(invalid(
                    "the application closed the connection before the body's end",
                ))));
            }
        }
    }
}

/// The buffered bytes of a body, up to the `left` still to come (which it counts down).
fn take_up_to(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = (*left).min(buf.len() as u64) as usize;
    *left -= n as u64;
    buf.split_to(n).freeze()
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = self.poll_body(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken exchange: the connection goes with it.
            self.conn = None;
            self.framing = Framing::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::{Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::app::{App, AppError};
    use crate::http::BoxError;

    /// The application's connect timeout in these tests.
    const CONNECT: Duration = Duration::from_secs(5);

    /// What the scripted app does with one request.
    struct Answer {
        bytes: &'static [u8],
        /// Answer as soon as the head is in, without reading the body.
        early: bool,
        /// Close the connection after answering.
        close: bool,
    }

    fn answer(bytes: &'static [u8]) -> Answer {
        Answer {
            bytes,
            early: false,
            close: false,
        }
    }

    /// An app on loopback that answers requests, in order across its connections,
    /// with `answers`, and reports each request as it arrived on the wire.
    struct Scripted {
        pool: Arc<App>,
        conns: Arc<AtomicUsize>,
        seen: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    async fn scripted(answers: Vec<Answer>) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(app_conn(s, answers.clone(), tx.clone()));
            }
        });
        Scripted {
            pool: App::new("127.0.0.1", port),
            conns,
            seen,
        }
    }

    async fn app_conn(
        mut s: TcpStream,
        answers: Arc<Mutex<VecDeque<Answer>>>,
        seen: mpsc::UnboundedSender<Vec<u8>>,
    ) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            };
            let Some(a) = answers.lock().unwrap().pop_front() else {
                return;
            };
            if a.early {
                let _ = s.write_all(a.bytes).await;
                // Keep reading what comes, so the client's writes do not fail.
                while read_more(&mut s, &mut buf).await {}
                return;
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let end = if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
            {
                let end = head_end + n.trim().parse::<usize>().unwrap();
                while buf.len() < end {
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
                end
            } else if head.contains("transfer-encoding: chunked") {
                loop {
                    let body = &buf[head_end..];
                    if let Some(i) = body.windows(5).position(|w| w == b"\r\n0\r\n")
                        && let Some(j) = body[i + 5..].windows(2).position(|w| w == b"\r\n")
                        && (j == 0 || body[i + 5..].windows(4).any(|w| w == b"\r\n\r\n"))
                    {
                        let rest = &body[i + 5..];
                        break head_end
                            + i
                            + 5
                            + if j == 0 {
                                2
                            } else {
                                rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
                            };
                    }
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
            } else {
                head_end
            };
            let _ = seen.send(buf.drain(..end).collect());
            if s.write_all(a.bytes).await.is_err() || a.close {
                return;
            }
        }
    }

    async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut b = [0u8; 4096];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    fn request(method: &str, body: Body) -> http::Request<Body> {
        http::Request::builder()
            .method(method)
            .uri("/path?q=1")
            .header(http::header::HOST, "app")
            .body(body)
            .unwrap()
    }

    fn empty() -> Body {
        crate::http::boxed(Empty::new().map_err(|n| match n {}))
    }

    /// The answer's head; the test fails if there is none within a deadline.
    async fn send(pool: &Arc<App>, req: http::Request<Body>) -> http::Response<Body> {
        let resp =
            tokio::time::timeout(Duration::from_secs(10), pool.send_http1(req, CONNECT, None))
                .await
                .expect("an answer");
        match resp {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        }
    }

    async fn call(
        pool: &Arc<App>,
        req: http::Request<Body>,
    ) -> (http::StatusCode, String, Option<http::HeaderMap>) {
        let resp = send(pool, req).await;
        let status = resp.status();
        // A deadline, so a body that never ends fails the test instead of hanging it.
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("the body ends")
            .unwrap();
        let trailers = body.trailers().cloned();
        let text = String::from_utf8(body.to_bytes().to_vec()).unwrap();
        (status, text, trailers)
    }

    #[tokio::test]
    async fn a_chunked_answer_arrives_whole_with_its_trailers_and_the_connection_is_reused() {
        let mut app = scripted(vec![
            answer(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ngrpc-status: 0\r\ncontent-length: 1\r\n\r\n",
            ),
            answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ])
        .await;
        let (status, body, trailers) = call(&app.pool, request("GET", empty())).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello, world");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(
            !trailers.contains_key("content-length"),
            "framing fields never come from trailers: {trailers:?}"
        );
        assert_eq!(call(&app.pool, request("GET", empty())).await.1, "ok");
        assert_eq!(
            app.conns.load(Ordering::SeqCst),
            1,
            "one connection for both"
        );
        let first = app.seen.recv().await.unwrap();
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("host: app\r\n"), "{first}");
        assert!(
            !first.contains("content-length"),
            "a GET without body: {first}"
        );
    }

    #[tokio::test]
    async fn an_answer_delimited_by_close_is_read_to_the_end_and_its_connection_not_reused() {
        let app = scripted(vec![
            Answer {
                close: true,
                ..answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            },
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        assert_eq!(
            call(&app.pool, request("GET", empty())).await.1,
            "until the end"
        );
        assert_eq!(call(&app.pool, request("GET", empty())).await.1, "ok");
        assert_eq!(app.conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_bodiless_answers_end_at_their_head() {
        let app = scripted(vec![
            answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone"),
            // A HEAD's answer names the length it would have, and sends nothing.
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
            answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"),
        ])
        .await;
        let (status, body, _) = call(&app.pool, request("POST", empty())).await;
        assert_eq!((status.as_u16(), body.as_str()), (201, "done"));
        let (status, body, _) = call(&app.pool, request("HEAD", empty())).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, ""));
        let (status, body, _) = call(&app.pool, request("DELETE", empty())).await;
        assert_eq!((status.as_u16(), body.as_str()), (204, ""));
        let (status, body, _) = call(&app.pool, request("GET", empty())).await;
        assert_eq!((status.as_u16(), body.as_str()), (304, ""));
        assert_eq!(call(&app.pool, request("GET", empty())).await.1, "last");
        assert_eq!(app.conns.load(Ordering::SeqCst), 1, "all on one connection");
    }

    #[tokio::test]
    async fn a_body_in_hand_goes_with_its_length_and_a_streamed_one_chunked_with_trailers() {
        let mut app = scripted(vec![
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        // In hand: one write, with its length; an empty POST says so too.
        let full = crate::http::boxed(Full::new(Bytes::from_static(b"payload")));
        assert_eq!(call(&app.pool, request("POST", full)).await.1, "ok");
        let seen = String::from_utf8(app.seen.recv().await.unwrap()).unwrap();
        assert!(seen.contains("content-length: 7\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\npayload"), "{seen}");
        assert_eq!(call(&app.pool, request("POST", empty())).await.1, "ok");
        let seen = String::from_utf8(app.seen.recv().await.unwrap()).unwrap();
        assert!(seen.contains("content-length: 0\r\n"), "{seen}");

        // Streamed: chunks sent as they come, trailers after the last.
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let pool = app.pool.clone();
        let call =
            tokio::spawn(
                async move { call(&pool, request("PUT", crate::http::boxed(stream))).await },
            );
        for part in ["first ", "second"] {
            tx.send(Ok(Frame::data(Bytes::from_static(part.as_bytes()))))
                .await
                .unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        // Framing fields never travel as trailers.
        trailers.insert("content-length", http::HeaderValue::from_static("99"));
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        assert_eq!(call.await.unwrap().1, "ok");
        let seen = String::from_utf8(app.seen.recv().await.unwrap()).unwrap();
        assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
        assert!(
            seen.ends_with("\r\n\r\n6\r\nfirst \r\n6\r\nsecond\r\n0\r\nx-checksum: abc\r\n\r\n"),
            "{seen}"
        );
        assert_eq!(app.conns.load(Ordering::SeqCst), 1, "all on one connection");
    }

    #[tokio::test]
    async fn an_app_may_answer_before_it_has_read_the_body() {
        let app = scripted(vec![
            Answer {
                early: true,
                ..answer(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo long")
            },
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        // A body that never ends: the answer must not wait for it.
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"start"))))
            .await
            .unwrap();
        let stream = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let (status, body, _) = call(&app.pool, request("POST", crate::http::boxed(stream))).await;
        assert_eq!((status.as_u16(), body.as_str()), (413, "too long"));
        // That connection still had a request half-sent: it is not reused.
        assert_eq!(call(&app.pool, request("GET", empty())).await.1, "ok");
        assert_eq!(app.conns.load(Ordering::SeqCst), 2);
        drop(tx);
    }

    #[tokio::test]
    async fn a_malformed_answer_is_an_error_and_its_connection_is_dropped() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\nok",
            b"NOT HTTP AT ALL\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        ] {
            let app = scripted(vec![answer(bad)]).await;
            match app
                .pool
                .send_http1(request("GET", empty()), CONNECT, None)
                .await
            {
                Err(AppError::Exchange(e)) => assert!(!e.to_string().is_empty()),
                Err(e) => panic!("{}: {e}", String::from_utf8_lossy(bad)),
                Ok(r) => panic!("{}: answered {}", String::from_utf8_lossy(bad), r.status()),
            }
        }
        // A body cut short by the app closing is an error, not a short body.
        let app = scripted(vec![Answer {
            close: true,
            ..answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
        }])
        .await;
        let resp = send(&app.pool, request("GET", empty())).await;
        assert!(resp.into_body().collect().await.is_err());
    }

    #[tokio::test]
    async fn a_bad_chunk_size_is_an_error() {
        let app = scripted(vec![answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5garbage\r\nhello\r\n0\r\n\r\n",
        )])
        .await;
        let resp = send(&app.pool, request("GET", empty())).await;
        assert!(resp.into_body().collect().await.is_err());
    }

    #[tokio::test]
    async fn both_framings_named_the_coding_wins_the_length_goes_and_so_does_the_connection() {
        let app = scripted(vec![
            answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            ),
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        let resp = send(&app.pool, request("GET", empty())).await;
        assert!(!resp.headers().contains_key("content-length"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(call(&app.pool, request("GET", empty())).await.1, "ok");
        assert_eq!(app.conns.load(Ordering::SeqCst), 2, "not reused");
    }

    #[tokio::test]
    async fn a_request_body_that_fails_midway_ends_the_exchange_instead_of_hanging_it() {
        let app = scripted(vec![answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )])
        .await;
        // 100 bytes announced, 5 sent, then the caller's stream breaks.
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut req = request("PUT", crate::http::boxed(stream));
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("100"),
        );
        let pool = app.pool.clone();
        let sent =
            tokio::spawn(async move { pool.send_http1(req, CONNECT, None).await.map(|_| ()) });
        tx.send(Ok(Frame::data(Bytes::from_static(b"start"))))
            .await
            .unwrap();
        tx.send(Err("the caller reset its stream".into()))
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("the exchange ended")
            .unwrap();
        assert!(matches!(result, Err(AppError::Exchange(_))));
    }

    #[tokio::test]
    async fn a_request_the_app_drops_unanswered_is_sent_again_once_at_most() {
        let ok = || answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let dropped = || Answer {
            close: true,
            ..answer(b"")
        };
        let mut app = scripted(vec![
            ok(),
            ok(),
            ok(),
            dropped(),
            dropped(),
            dropped(),
            dropped(),
        ])
        .await;
        // Three idle connections in the pool.
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let pool = app.pool.clone();
                tokio::spawn(async move { call(&pool, request("GET", empty())).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().1, "ok");
        }
        for _ in 0..3 {
            app.seen.recv().await.unwrap();
        }
        // The app takes the request and closes without answering (as a crashing
        // handler does): sent on an idle connection, again on a new one, then given up.
        assert!(matches!(
            app.pool
                .send_http1(request("GET", empty()), CONNECT, None)
                .await,
            Err(AppError::Exchange(_))
        ));
        let mut seen = 0;
        while app.seen.try_recv().is_ok() {
            seen += 1;
        }
        assert_eq!(seen, 2, "the request reached the app twice, not more");
    }

    #[tokio::test]
    async fn connect_is_refused_before_anything_is_sent() {
        let app = scripted(vec![]).await;
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("app:443")
            .body(empty())
            .unwrap();
        match app.pool.send_http1(connect, CONNECT, None).await {
            Err(AppError::Request(e)) => assert_eq!(e.kind(), io::ErrorKind::Unsupported),
            Err(e) => panic!("{e}"),
            Ok(r) => panic!("answered {}", r.status()),
        }
        assert_eq!(app.conns.load(Ordering::SeqCst), 0);
    }
}
