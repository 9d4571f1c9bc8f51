//! The Raft transport: length-prefixed protobuf frames over TCP, optionally in mutual TLS.
//!
//! Each node keeps one outbound connection per peer, fed by a queue; messages that cannot
//! be delivered are dropped (Raft retransmits) and the peer is reported unreachable. Inbound
//! connections only carry frames into the Raft thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::raft_node::{Msg, Outbox};
use crate::tls::{RAFT_SERVER_NAME, RaftTls, TlsError};

/// Largest frame accepted: snapshots of big stores travel in one message.
const MAX_FRAME: usize = 512 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

trait Conn: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Conn for T {}

/// Outbound side, owned by the Raft thread.
pub(crate) struct TcpOutbox {
    rt: tokio::runtime::Handle,
    raft_tx: Sender<Msg>,
    tls: Option<Arc<rustls::ClientConfig>>,
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
        tls: Option<&RaftTls>,
    ) -> Result<TcpOutbox, TlsError> {
        Ok(TcpOutbox {
            rt,
            raft_tx,
            tls: tls.map(RaftTls::client).transpose()?,
            peers: HashMap::new(),
            my_id,
        })
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
    tls: Option<Arc<rustls::ClientConfig>>,
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
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(RAFT_SERVER_NAME)
                    .expect("valid server name");
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TlsConnector::from(cfg.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
                Ok(Box::new(BufWriter::with_capacity(64 << 10, tls)))
            }
        }
    }

    async fn run(self, mut rx: UnboundedReceiver<Message>) {
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
    tls: Option<&RaftTls>,
    raft_tx: Sender<Msg>,
) -> Result<(), TlsError> {
    let acceptor = tls.map(|t| t.server().map(TlsAcceptor::from)).transpose()?;
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
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let result = match acceptor {
                Some(a) => match tokio::time::timeout(CONNECT_TIMEOUT * 5, a.accept(tcp)).await {
                    Ok(Ok(s)) => read_frames(s, &raft_tx).await,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "raft peer failed mutual TLS; refused");
                        return;
                    }
                    Err(_) => return,
                },
                None => read_frames(tcp, &raft_tx).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "raft inbound connection closed");
            }
        });
    }
}

async fn read_frames(s: impl AsyncRead + Unpin, raft_tx: &Sender<Msg>) -> std::io::Result<()> {
    let mut r = tokio::io::BufReader::with_capacity(64 << 10, s);
    let mut buf = Vec::new();
    loop {
        let len = r.read_u32().await? as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf).await?;
        let m = Message::parse_from_bytes(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if raft_tx.send(Msg::Raft(Box::new(m))).is_err() {
            return Ok(());
        }
    }
}
