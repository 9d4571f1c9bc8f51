//! A user-space link with a round-trip delay (tc netem is not available here): TCP and
//! UDP on one port, forwarded to a target port, each direction delayed by half the RTT
//! with order kept. Benchmarks put it between zones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Forwards TCP and UDP from `listen` to `target`, adding `rtt` to every round trip.
pub(crate) async fn spawn(
    listen: SocketAddr,
    target: SocketAddr,
    rtt: Duration,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let one_way = rtt / 2;
    let tcp = TcpListener::bind(listen).await?;
    let udp = Arc::new(UdpSocket::bind(listen).await?);
    Ok(vec![
        tokio::spawn(async move {
            while let Ok((client, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // The link ends TCP here, so the handshake it saves is paid instead
                    // before the client's first bytes: one more round trip.
                    tokio::join!(
                        pump(cr, sw, one_way, rtt),
                        pump(sr, cw, one_way, Duration::ZERO)
                    );
                });
            }
        }),
        tokio::spawn(udp_link(udp, target, one_way)),
    ])
}

/// Copies `r` to `w`, each chunk `delay` after it was read, in order; the first chunk
/// `first_extra` later still.
async fn pump<R, W>(mut r: R, mut w: W, delay: Duration, first_extra: Duration)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if buf.is_empty() || w.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut extra = first_extra;
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        let _ = tx.send((Instant::now() + delay + extra, buf[..n].to_vec()));
        extra = Duration::ZERO;
        if n == 0 {
            break;
        }
    }
    let _ = writer.await;
}

/// UDP: one upstream socket per client address, both directions delayed in order.
async fn udp_link(front: Arc<UdpSocket>, target: SocketAddr, delay: Duration) {
    let mut clients: HashMap<SocketAddr, mpsc::UnboundedSender<(Instant, Vec<u8>)>> =
        HashMap::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = front.recv_from(&mut buf).await {
        let at = Instant::now() + delay;
        let tx = match clients.get(&from) {
            Some(tx) => tx.clone(),
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(target).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                // Client to target.
                let sender = up.clone();
                tokio::spawn(async move {
                    while let Some((at, d)) = rx.recv().await {
                        tokio::time::sleep_until(at).await;
                        let _ = sender.send(&d).await;
                    }
                });
                // Target to client.
                let front = front.clone();
                let (btx, mut brx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    while let Some((at, d)) = brx.recv().await {
                        tokio::time::sleep_until(at).await;
                        let _ = front.send_to(&d, from).await;
                    }
                });
                tokio::spawn(async move {
                    let mut b = vec![0u8; 65536];
                    while let Ok(n) = up.recv(&mut b).await {
                        let _ = btx.send((Instant::now() + delay, b[..n].to_vec()));
                    }
                });
                clients.insert(from, tx.clone());
                tx
            }
        };
        let _ = tx.send((at, buf[..n].to_vec()));
    }
}
