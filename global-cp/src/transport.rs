//! The Raft transport: length-prefixed protobuf frames over TCP in mutual TLS (plain TCP
//! only with `--insecure-raft-plaintext`).
//!
//! Each node keeps one outbound connection per peer, fed by a queue; messages that cannot
//! be delivered are dropped (Raft retransmits) and the peer is reported unreachable. Inbound
//! connections only carry frames into the Raft thread.
//!
//! A peer's certificate names one node id (`node-<id>.causeway-raft`): a node dials that
//! name, and an inbound connection may only carry messages from the id its certificate
//! names, so one member cannot speak for another. Hostile connections are cheap: at most
//! [`MAX_HANDSHAKES`] handshakes run at once ([`MAX_HANDSHAKES_PER_HOST`] from one
//! address), each for at most [`HANDSHAKE_TIMEOUT`], and a
//! frame's buffer grows with the bytes that actually arrive, never with the length a
//! header claims.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::raft_node::{Msg, Outbox};
use crate::tls::{RaftTls, TlsError, raft_node_id, raft_node_name};

/// Largest frame accepted: snapshots of big stores travel in one message.
const MAX_FRAME: usize = 512 << 20;
/// A frame's buffer starts at most this big and grows as bytes arrive.
const INITIAL_FRAME_BUFFER: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an inbound connection may take to finish its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound handshakes in progress at once; more connections are closed at once. Members
/// keep their connections open, so a flood delays only members that reconnect during it.
pub(crate) const MAX_HANDSHAKES: usize = 256;
/// Inbound handshakes in progress at once from one address: a flood from one host
/// leaves the other slots to the members on other hosts.
pub(crate) const MAX_HANDSHAKES_PER_HOST: usize = 16;

/// The node's Raft TLS as it is now, with the configs built from it. A rotation of the
/// Raft CA replaces it while the node runs: new handshakes use the newest, and each
/// outbound link reconnects with it.
pub(crate) struct LiveTls {
    pub(crate) identity: RaftTls,
    client: Arc<rustls::ClientConfig>,
    acceptor: TlsAcceptor,
}

impl LiveTls {
    pub(crate) fn new(identity: RaftTls) -> Result<Arc<LiveTls>, TlsError> {
        Ok(Arc::new(LiveTls {
            client: identity.client()?,
            acceptor: TlsAcceptor::from(identity.server()?),
            identity,
        }))
    }
}

/// Where the transport reads its TLS from (`None`: plaintext).
pub(crate) type TlsSource = Option<watch::Receiver<Arc<LiveTls>>>;

/// Handshakes in progress, by source address.
#[derive(Default)]
struct Handshakes(std::sync::Mutex<HashMap<std::net::IpAddr, usize>>);

/// A handshake's place, given back when dropped.
struct HandshakeSlot {
    all: Arc<Handshakes>,
    from: std::net::IpAddr,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Handshakes {
    /// A place for a handshake from `from`, unless that host has its share.
    fn take(
        self: &Arc<Self>,
        from: std::net::IpAddr,
        global: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<HandshakeSlot> {
        let mut m = self.0.lock().expect("handshakes lock");
        let n = m.entry(from).or_default();
        if *n >= MAX_HANDSHAKES_PER_HOST {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            all: self.clone(),
            from,
            _global: global,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut m = self.all.0.lock().expect("handshakes lock");
        if let Some(n) = m.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.from);
            }
        }
    }
}

trait Conn: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Conn for T {}

/// Outbound side, owned by the Raft thread.
pub(crate) struct TcpOutbox {
    rt: tokio::runtime::Handle,
    raft_tx: Sender<Msg>,
    tls: TlsSource,
    peers: HashMap<u64, Peer>,
    my_id: u64,
}

struct Peer {
    addr: String,
    tx: UnboundedSender<Message>,
}

impl TcpOutbox {
    pub(crate) fn new(
        rt: tokio::runtime::Handle,
        my_id: u64,
        raft_tx: Sender<Msg>,
        tls: TlsSource,
    ) -> TcpOutbox {
        TcpOutbox {
            rt,
            raft_tx,
            tls,
            peers: HashMap::new(),
            my_id,
        }
    }
}

impl Outbox for TcpOutbox {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            match self.peers.get(&m.to) {
                Some(p) => {
                    let _ = p.tx.send(m);
                }
                None => {
                    tracing::debug!(to = m.to, "no address for raft peer; message dropped");
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let _ = self.raft_tx.send(Msg::SnapshotSent(m.to, false));
                    }
                }
            }
        }
    }

    fn set_address(&mut self, id: u64, raft_addr: &str) {
        if id == self.my_id || self.peers.get(&id).is_some_and(|p| p.addr == raft_addr) {
            return;
        }
        let (tx, rx) = unbounded_channel();
        // Replacing the entry drops the old queue, which ends the old link task.
        self.peers.insert(
            id,
            Peer {
                addr: raft_addr.to_string(),
                tx,
            },
        );
        let link = Link {
            id,
            addr: raft_addr.to_string(),
            raft_tx: self.raft_tx.clone(),
            tls: self.tls.clone(),
        };
        self.rt.spawn(link.run(rx));
    }

    fn remove(&mut self, id: u64) {
        self.peers.remove(&id);
    }
}

/// One outbound connection to a peer.
struct Link {
    id: u64,
    addr: String,
    raft_tx: Sender<Msg>,
    tls: TlsSource,
}

impl Link {
    async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(BufWriter::with_capacity(64 << 10, tcp))),
            Some(live) => {
                let cfg = live.borrow().client.clone();
                // The peer must hold the certificate of the node id we mean to reach.
                let name = rustls::pki_types::ServerName::try_from(raft_node_name(self.id))
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TlsConnector::from(cfg).connect(name, tcp),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
                Ok(Box::new(BufWriter::with_capacity(64 << 10, tls)))
            }
        }
    }

    async fn run(mut self, mut rx: UnboundedReceiver<Message>) {
        let mut conn: Option<Box<dyn Conn>> = None;
        let mut backoff = Duration::from_millis(50);
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.push(first);
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            // A new Raft identity (a CA rotation): reconnect presenting it.
            if let Some(live) = &mut self.tls
                && live.has_changed().unwrap_or(false)
            {
                live.borrow_and_update();
                conn = None;
            }
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => {
                        backoff = Duration::from_millis(50);
                        conn = Some(c);
                    }
                    Err(e) => {
                        tracing::debug!(peer = self.id, addr = %self.addr, error = %e, "raft peer unreachable");
                        self.failed(&batch);
                        // Drop what queued up meanwhile; Raft resends what matters.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        while rx.try_recv().is_ok() {}
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let mut result = Ok(());
            for m in &batch {
                let bytes = m.write_to_bytes().expect("raft messages encode");
                result = async {
                    c.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                    c.write_all(&bytes).await
                }
                .await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = c.flush().await;
            }
            match result {
                Ok(()) => {
                    for m in batch
                        .iter()
                        .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                    {
                        let _ = self.raft_tx.send(Msg::SnapshotSent(m.to, true));
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = self.id, error = %e, "raft connection lost");
                    conn = None;
                    self.failed(&batch);
                }
            }
        }
    }

    fn failed(&self, batch: &[Message]) {
        let _ = self.raft_tx.send(Msg::Unreachable(self.id));
        for m in batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            let _ = self.raft_tx.send(Msg::SnapshotSent(m.to, false));
        }
    }
}

/// Accepts peer connections on `listener` and feeds their frames to the Raft thread.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: TlsSource,
    raft_tx: Sender<Msg>,
) -> Result<(), TlsError> {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_host = Arc::new(Handshakes::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let raft_tx = raft_tx.clone();
        let Some(acceptor) = tls.as_ref().map(|live| live.borrow().acceptor.clone()) else {
            tokio::spawn(async move {
                if let Err(e) = read_frames(tcp, &raft_tx, None).await {
                    tracing::debug!(%peer, error = %e, "raft inbound connection closed");
                }
            });
            continue;
        };
        let Some(permit) = handshakes
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|global| per_host.take(peer.ip(), global))
        else {
            tracing::debug!(%peer, "too many raft handshakes in progress; connection closed");
            continue;
        };
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "raft peer failed mutual TLS; refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "raft TLS handshake timed out");
                    return;
                }
            };
            let id = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| raft_node_id(c));
            let Some(id) = id else {
                tracing::warn!(%peer, "raft peer certificate names no node id (node-<id>.causeway-raft); refused");
                return;
            };
            if let Err(e) = read_frames(stream, &raft_tx, Some(id)).await {
                tracing::debug!(%peer, error = %e, "raft inbound connection closed");
            }
        });
    }
}

/// Reads frames until the connection ends. With `from`, a message from another node id
/// than the peer's certificate names ends the connection.
async fn read_frames(
    s: impl AsyncRead + Unpin,
    raft_tx: &Sender<Msg>,
    from: Option<u64>,
) -> std::io::Result<()> {
    let mut r = tokio::io::BufReader::with_capacity(64 << 10, s);
    loop {
        let m = read_frame(&mut r).await?;
        if let Some(id) = from
            && m.from != id
        {
            tracing::warn!(
                certificate = id,
                claimed = m.from,
                "raft message claims another node than its connection's certificate; connection closed"
            );
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "message from another node id",
            ));
        }
        if raft_tx.send(Msg::Raft(Box::new(m))).is_err() {
            return Ok(());
        }
    }
}

/// One length-prefixed frame. The buffer grows with the bytes that arrive, so a header
/// that claims a huge frame costs nothing until the bytes are really sent.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Message> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut buf = Vec::with_capacity(len.min(INITIAL_FRAME_BUFFER));
    let got = r.take(len as u64).read_to_end(&mut buf).await?;
    if got < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Message::parse_from_bytes(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(m: &Message) -> Vec<u8> {
        let bytes = m.write_to_bytes().unwrap();
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend(bytes);
        out
    }

    #[test]
    fn one_host_cannot_take_every_handshake_slot() {
        let global = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let slots = Arc::new(Handshakes::default());
        let take = |ip: &str| {
            let permit = global.clone().try_acquire_owned().ok()?;
            slots.take(ip.parse().unwrap(), permit)
        };
        let flood: Vec<_> = (0..MAX_HANDSHAKES_PER_HOST)
            .map(|_| take("10.0.0.9").expect("a slot"))
            .collect();
        assert!(
            take("10.0.0.9").is_none(),
            "the flooding host has its share"
        );
        let member = take("10.0.0.2").expect("a member on another host still gets one");
        drop(flood);
        assert!(
            take("10.0.0.9").is_some(),
            "slots come back when handshakes end"
        );
        drop(member);
        assert_eq!(global.available_permits(), MAX_HANDSHAKES);
    }

    #[tokio::test]
    async fn frames_are_bounded_and_must_come_from_the_certificates_node() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 2;
        m.term = 7;
        // A header claiming more than the limit is refused before anything is read.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let e = read_frame(&mut &huge[..]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // A header claiming 500 MiB with ten bytes behind it ends at the end of input.
        let mut short = ((500u32) << 20).to_be_bytes().to_vec();
        short.extend([0u8; 10]);
        let e = read_frame(&mut &short[..]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let (tx, rx) = std::sync::mpsc::channel();
        // From node 2 over node 2's connection: delivered.
        let bytes = frame(&m);
        let e = read_frames(&bytes[..], &tx, Some(2)).await.unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "input ends after it"
        );
        assert!(matches!(rx.try_recv(), Ok(Msg::Raft(got)) if got.term == 7));
        // Claiming node 2 over node 3's connection: refused, nothing delivered.
        let e = read_frames(&bytes[..], &tx, Some(3)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(rx.try_recv().is_err());
    }
}
