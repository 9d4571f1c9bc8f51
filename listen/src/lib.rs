//! Connection admission for the control planes' HTTP listeners (the global API, a
//! zone's API). hyper bounds what one connection may do (header size and read time,
//! streams), but not how many connections there are, nor how long one that finished
//! its TLS handshake may stay silent: it waits for HTTP/2's preface, or for the first
//! byte that tells the protocol, for ever. A client could hold every file descriptor
//! of the process that way.
//!
//! [`Guarded`] wraps an axum-server acceptor. A connection past
//! [`Limits::max_connections`], or past [`Limits::max_per_address`] from one IP
//! address, is closed at once, before its TLS handshake costs anything; an admitted one
//! whose first request byte does not come within [`Limits::first_byte`] of its
//! handshake is closed then. The bookkeeping ([`Gate`]) takes addresses as input and
//! holds no sockets, so it is unit-tested without any.
//!
//! The gRPC listeners (KDS, DDS) are served by tonic, which takes a stream of accepted
//! connections instead of an acceptor: [`incoming`] is that stream, behind the same
//! gate. There the first-byte deadline covers the TLS ClientHello (tonic runs the
//! handshake, under its own timeout, and HTTP/2 keepalive pings close a client that goes
//! silent after its preface).
//!
//! The data plane's listeners (a sidecar's inbound and outbound, a zone ingress) use the
//! [`Gate`] alone with a total cap ([`Limits::total`]): their callers may share one
//! address (every caller from another zone comes through its ingress, or a NAT), so a
//! per-address cap would cut real traffic. [`raise_fd_limit`] lifts the process's
//! descriptor limit first, so the cap, not the kernel, is what refuses.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "acceptor")]
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(any(feature = "acceptor", feature = "grpc"))]
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// How many connections a listener holds, and how soon a new one must speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from anywhere.
    pub max_connections: usize,
    /// Connections open at once from one IP address, so one host cannot take them all.
    pub max_per_address: usize,
    /// How long an admitted connection may take, after its handshake, to send the
    /// first byte of a request (HTTP/1.1's request line, HTTP/2's preface).
    pub first_byte: Duration,
}

impl Limits {
    /// KDS's and DDS's: one long-lived stream per zone or proxy, which reconnects after a
    /// break; a zone holds a few thousand proxies behind one address at most (a node
    /// running many sidecars counts once per sidecar).
    pub const GRPC: Limits = Limits {
        max_connections: 8192,
        max_per_address: 2048,
        first_byte: Duration::from_secs(10),
    };

    /// A total cap only (the address limit equals it), with no first-byte deadline of
    /// the gate's own: the data plane's listeners.
    pub const fn total(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            max_per_address: max_connections,
            first_byte: Duration::MAX,
        }
    }

    /// The APIs': their clients (CLI, Terraform, UI, scripts) hold a few connections
    /// each. The process's descriptor limit here is 20,000; RocksDB and the other
    /// listeners keep the rest.
    pub const API: Limits = Limits {
        max_connections: 1024,
        max_per_address: 256,
        first_byte: Duration::from_secs(10),
    };
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds [`Limits::max_connections`] already.
    Full,
    /// The address holds [`Limits::max_per_address`] already.
    AddressFull,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Full => "the listener is at its connection limit",
            Refused::AddressFull => "the address is at its connection limit",
        })
    }
}

/// Open connections, in all and per address.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    open: Mutex<Open>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// Counts a refusal and logs the 1st, 2nd, 4th, 8th... so a flood does not flood
    /// the log too.
    pub fn note_refusal(&self, listener: &str, addr: IpAddr, why: Refused) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(listener, peer = %addr, reason = %why, refused_so_far = n, "refused a connection");
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for one more connection from `addr`, held until the [`Slot`] drops.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refused> {
        // An IPv4 client of a dual-stack listener is one address, however written.
        let addr = addr.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refused::Full);
        }
        let n = open.per_address.entry(addr).or_insert(0);
        if *n >= self.limits.max_per_address {
            return Err(Refused::AddressFull);
        }
        *n += 1;
        open.total += 1;
        Ok(Slot {
            gate: self.clone(),
            addr,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.addr);
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime
/// does at start: the usual soft limit (1024) would refuse connections long before any
/// cap of ours. Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!(error = %e, "raising the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// A proxy's `--max-connections`, kept under `1/share` of the open-file limit (raised to
/// its hard limit first), so the cap, not the kernel, refuses a connection and the proxy
/// keeps descriptors for its upstream connections. `share` is how many descriptors one
/// admitted connection may cost: an ingress 2 (its upstream), a sidecar 4 (each direction
/// holds up to the cap, and each connection may need an upstream one).
pub fn connection_cap(asked: usize, share: u64) -> Result<usize, String> {
    if asked == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    let nofile = raise_fd_limit().unwrap_or(u64::MAX);
    let room = usize::try_from(nofile / share.max(1))
        .unwrap_or(usize::MAX)
        .max(1);
    if asked > room {
        tracing::warn!(
            asked,
            using = room,
            open_file_limit = nofile,
            "--max-connections is more than 1/{share} of the open-file limit (each connection may hold {share} descriptors); using {room}"
        );
    }
    Ok(asked.min(room))
}

/// An axum-server acceptor (plain, or TLS around plain) behind a [`Gate`].
#[cfg(feature = "acceptor")]
#[derive(Debug, Clone)]
pub struct Guarded<A> {
    inner: A,
    gate: Arc<Gate>,
    /// The listener's name, for the log.
    name: &'static str,
}

#[cfg(feature = "acceptor")]
impl<A> Guarded<A> {
    pub fn new(inner: A, name: &'static str, limits: Limits) -> Self {
        Guarded {
            inner,
            gate: Gate::new(limits),
            name,
        }
    }
}

#[cfg(feature = "acceptor")]
type Accepted<S, V> = Pin<Box<dyn Future<Output = io::Result<(Admitted<S>, V)>> + Send>>;

#[cfg(feature = "acceptor")]
impl<A, S> Accept<TcpStream, S> for Guarded<A>
where
    A: Accept<TcpStream, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Admitted<A::Stream>;
    type Service = A::Service;
    type Future = Accepted<A::Stream, A::Service>;

    fn accept(&self, tcp: TcpStream, service: S) -> Self::Future {
        let slot = match tcp.peer_addr() {
            Ok(peer) => self.gate.admit(peer.ip()).map_err(|why| {
                self.gate.note_refusal(self.name, peer.ip(), why);
                io::Error::other(why.to_string())
            }),
            Err(e) => Err(e),
        };
        let first_byte = self.gate.limits.first_byte;
        // Refused: the stream drops here, which closes it before any handshake.
        let handshake = slot.map(|slot| (slot, self.inner.accept(tcp, service)));
        Box::pin(async move {
            let (slot, handshake) = handshake?;
            let (stream, service) = handshake.await?;
            Ok((Admitted::new(stream, slot, first_byte), service))
        })
    }
}

/// Accepted TCP connections of `listener`, admitted by a gate with `limits`: the
/// stream tonic's `serve_with_incoming` takes. Refused connections are closed at once
/// and logged like [`Guarded`]'s; accept errors (out of descriptors) are logged and
/// retried after a pause rather than ending the stream, which would stop the server.
#[cfg(feature = "grpc")]
pub fn incoming(
    listener: tokio::net::TcpListener,
    name: &'static str,
    limits: Limits,
) -> impl futures::Stream<Item = io::Result<Admitted<TcpStream>>> + Send + 'static {
    let gate = Gate::new(limits);
    futures::stream::unfold((listener, gate), move |(listener, gate)| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => match gate.admit(peer.ip()) {
                    Ok(slot) => {
                        let _ = tcp.set_nodelay(true);
                        let admitted = Admitted::new(tcp, slot, limits.first_byte);
                        return Some((Ok(admitted), (listener, gate)));
                    }
                    Err(why) => gate.note_refusal(name, peer.ip(), why),
                },
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// TLS streams for tonic's `serve_with_incoming`, run by us rather than by tonic so the
/// server's certificate (and the CAs it admits clients from) can change while it runs:
/// each admitted connection's handshake uses the config current when it starts, in a
/// task of its own under `handshake_timeout`, so a slow client holds up nobody else.
/// Live sessions keep the config they began with; tonic reads the peer's certificates
/// from the stream.
#[cfg(feature = "grpc")]
pub fn tls_incoming(
    admitted: impl futures::Stream<Item = io::Result<Admitted<TcpStream>>> + Send + 'static,
    configs: tokio::sync::watch::Receiver<Arc<tokio_rustls::rustls::ServerConfig>>,
    name: &'static str,
    handshake_timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<
    io::Result<tokio_rustls::server::TlsStream<Admitted<TcpStream>>>,
> {
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut admitted = std::pin::pin!(admitted);
        while let Some(conn) = admitted.next().await {
            let Ok(conn) = conn else { continue };
            let acceptor = tokio_rustls::TlsAcceptor::from(configs.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, error = %e, "a TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(listener = name, "a TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// tonic reads the peer's address (and, through its TLS layer, certificates) from here.
#[cfg(feature = "grpc")]
impl tonic::transport::server::Connected for Admitted<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// An admitted connection: it holds its [`Slot`], and fails its reads with `TimedOut`
/// if no byte arrives within the first-byte deadline.
pub struct Admitted<S> {
    inner: S,
    /// Until the first byte is read.
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, slot: Slot, first_byte: Duration) -> Self {
        Admitted {
            inner,
            // `Duration::MAX` ([`Limits::total`]): no deadline of ours.
            deadline: (first_byte != Duration::MAX)
                .then(|| Box::pin(tokio::time::sleep(first_byte))),
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request began within the first-byte deadline",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn limits(max_connections: usize, max_per_address: usize) -> Limits {
        Limits {
            max_connections,
            max_per_address,
            first_byte: Duration::from_secs(10),
        }
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let gate = Gate::new(limits(3, 2));
        let a1 = gate.admit(A).unwrap();
        let _a2 = gate.admit(A).unwrap();
        assert_eq!(gate.admit(A).unwrap_err(), Refused::AddressFull);
        // The same address written as IPv4-mapped IPv6 is the same address.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(gate.admit(mapped).unwrap_err(), Refused::AddressFull);
        let _b1 = gate.admit(B).unwrap();
        assert_eq!(gate.admit(B).unwrap_err(), Refused::Full);
        assert_eq!(gate.open(), 3);
        // A closed connection frees its place, for its address and in all.
        drop(a1);
        assert_eq!(gate.open(), 2);
        let _a3 = gate.admit(A).unwrap();
        assert_eq!(
            gate.admit(Ipv6Addr::LOCALHOST.into()).unwrap_err(),
            Refused::Full
        );
    }

    #[test]
    fn freed_places_leave_no_trace() {
        let gate = Gate::new(limits(10, 10));
        let slots: Vec<Slot> = (0..10).map(|_| gate.admit(A).unwrap()).collect();
        drop(slots);
        assert_eq!(gate.open(), 0);
        assert!(gate.open.lock().unwrap().per_address.is_empty());
    }

    fn admitted(
        first_byte: Duration,
    ) -> (Admitted<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let gate = Gate::new(limits(1, 1));
        let (server, client) = tokio::io::duplex(64);
        (
            Admitted::new(server, gate.admit(A).unwrap(), first_byte),
            client,
        )
    }

    #[tokio::test]
    async fn a_silent_connection_is_cut_off_at_its_first_byte_deadline() {
        let (mut server, _client) = admitted(Duration::from_millis(200));
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("cut off well before 5 s");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_connection_that_spoke_in_time_may_then_idle() {
        let (mut server, mut client) = admitted(Duration::from_millis(200));
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        // Past the deadline, a quiet connection is hyper's to time out, not ours.
        let idle = tokio::time::timeout(Duration::from_millis(600), server.read(&mut buf)).await;
        assert!(idle.is_err(), "still open: {idle:?}");
        client.write_all(b"y").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_its_ceiling() {
        use rustix::process::{Resource, getrlimit, setrlimit};
        // Lower the soft limit first, so the test proves a raise even where the soft
        // limit already equals the hard one.
        let mut lim = getrlimit(Resource::Nofile);
        let hard = lim.maximum;
        lim.current = Some(hard.map_or(1 << 20, |h| h - 1));
        setrlimit(Resource::Nofile, lim).unwrap();
        assert_ne!(getrlimit(Resource::Nofile).current, hard);
        assert_eq!(raise_fd_limit(), hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }

    #[test]
    fn a_connection_cap_stays_under_its_share_of_the_open_file_limit() {
        let nofile = raise_fd_limit().unwrap_or(u64::MAX);
        let room = |share: u64| usize::try_from(nofile / share).unwrap_or(usize::MAX);
        assert_eq!(connection_cap(10, 4), Ok(10.min(room(4))));
        assert_eq!(connection_cap(usize::MAX, 4), Ok(room(4)));
        assert_eq!(connection_cap(usize::MAX, 2), Ok(room(2)));
        assert!(connection_cap(0, 4).unwrap_err().contains("at least 1"));
    }

    #[test]
    fn a_total_cap_has_no_address_limit_and_no_first_byte_deadline() {
        let gate = Gate::new(Limits::total(2));
        let _a = gate.admit(A).unwrap();
        let _b = gate.admit(A).unwrap();
        assert_eq!(gate.admit(B).unwrap_err(), Refused::Full);
        gate.note_refusal("test", B, Refused::Full);
        assert_eq!(gate.refused(), 1);
        let (server, _client) = tokio::io::duplex(8);
        let slot = Gate::new(Limits::total(1)).admit(A).unwrap();
        assert!(
            Admitted::new(server, slot, Limits::total(1).first_byte)
                .deadline
                .is_none()
        );
    }

    #[cfg(feature = "grpc")]
    #[tokio::test]
    async fn the_grpc_stream_admits_up_to_the_limit_and_closes_the_rest() {
        use futures::StreamExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = Box::pin(incoming(listener, "test", limits(2, 1)));
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = stream.next().await.unwrap().unwrap();
        // A second from the same address is closed unread; the stream waits on.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(next.is_err(), "nothing admitted");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // Its place back, the address gets in again.
        drop(held);
        let _third = TcpStream::connect(addr).await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(again, Ok(Some(Ok(_)))), "admitted again");
        use tonic::transport::server::Connected as _;
        let info = again.unwrap().unwrap().unwrap().connect_info();
        assert_eq!(info.remote_addr().unwrap().ip(), A_LOCAL);
    }

    #[cfg(feature = "grpc")]
    const A_LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
}
