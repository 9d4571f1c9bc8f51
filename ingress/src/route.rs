//! Accepts other zones' connections, routes each by SNI to a local endpoint and splices
//! the bytes both ways.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use causeway_api::proxy_config::IngressTarget;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::Ingress;
use crate::sni::{NoSni, read_client_hello};

/// How long a peer may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to a local endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an endpoint that refused a connection is skipped.
const EJECT_FOR: Duration = Duration::from_secs(2);

pub(crate) async fn accept_loop(ingress: Arc<Ingress>, listener: TcpListener) {
    loop {
        // Silenced by a blackhole drill: accept nothing. Callers' connections wait in the
        // kernel's backlog unanswered, as they would behind a dead network.
        ingress.until_silent(false).await;
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = ingress.until_silent(true) => continue,
        };
        match accepted {
            Ok((sock, peer)) => {
                let slot = match ingress.gate.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        // Closed unserved (dropped here): the cap protects what is open.
                        ingress
                            .metrics
                            .refused_limit
                            .fetch_add(1, Ordering::Relaxed);
                        ingress.gate.note_refusal("ingress", peer.ip(), why);
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let ingress = ingress.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    ingress.active.fetch_add(1, Ordering::Relaxed);
                    handle(&ingress, sock, peer).await;
                    ingress.active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Routes one connection (a TCP connection, or a QUIC stream) by its SNI. When a
/// blackhole drill silences the ingress, the connection stalls: it is held open, nothing
/// read or written, until the drill ends, and then closed.
pub(crate) async fn handle<S>(ingress: &Ingress, sock: S, peer: std::net::SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut work = std::pin::pin!(route(ingress, sock, peer));
    tokio::select! {
        // Silence first: a connection must not be refused (closed) once it starts.
        biased;
        () = ingress.until_silent(true) => {}
        () = &mut work => return,
    }
    ingress
        .metrics
        .stalled_drill
        .fetch_add(1, Ordering::Relaxed);
    // `work` stays alive but is not polled: its sockets stay open and silent.
    ingress.until_silent(false).await;
}

async fn route<S>(ingress: &Ingress, mut sock: S, peer: std::net::SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let m = &ingress.metrics;
    let (sni, hello) = match tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(&mut sock)).await
    {
        Ok(Ok(v)) => v,
        Ok(Err(NoSni::Closed)) => return,
        Ok(Err(NoSni::Missing)) => {
            m.refused_not_tls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "refused a connection without SNI");
            return;
        }
        Ok(Err(NoSni::NotTls(e))) => {
            m.refused_not_tls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "refused a connection that is not TLS");
            return;
        }
        Err(_) => {
            m.refused_not_tls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "no ClientHello in time");
            return;
        }
    };
    let Some(cfg) = ingress.config.borrow().clone() else {
        m.refused_no_config.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, %sni, "refused: no config from the zone control plane yet");
        return;
    };
    if cfg.silent && cfg.refusing.is_some() {
        // A blackhole drill began while the ClientHello came in (after `handle` looked):
        // never refuse, stall as `handle` does, which now sees the silence.
        std::future::pending::<()>().await;
    }
    if let Some(reason) = &cfg.refusing {
        m.refused_drill.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, %sni, %reason, "refused");
        return;
    }
    let Some(targets) = cfg.routes.get(&sni) else {
        m.refused_unknown_sni.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %sni, "refused a connection for a destination this ingress does not serve");
        return;
    };
    let dest = m.destination(cfg.services.get(&sni).unwrap_or(&sni));
    let Some(mut upstream) = connect(ingress, targets).await else {
        m.upstream_failed.fetch_add(1, Ordering::Relaxed);
        dest.upstream_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %sni, "no local endpoint accepted the connection");
        return;
    };
    drop(cfg);
    m.forwarded.fetch_add(1, Ordering::Relaxed);
    dest.forwarded.fetch_add(1, Ordering::Relaxed);
    dest.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(&dest.active);
    if upstream.write_all(&hello).await.is_err() {
        return;
    }
    m.bytes_in.fetch_add(hello.len() as u64, Ordering::Relaxed);
    dest.bytes
        .read
        .fetch_add(hello.len() as u64, Ordering::Relaxed);
    let (to_upstream, to_peer, _) = causeway_dataplane::timeout::copy_until_idle(
        &mut sock,
        &mut upstream,
        None,
        Some(dest.bytes.clone()),
    )
    .await;
    m.bytes_in.fetch_add(to_upstream, Ordering::Relaxed);
    m.bytes_out.fetch_add(to_peer, Ordering::Relaxed);
}

/// A connection open to a destination, counted until dropped.
struct Active<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects to one of `targets`: round robin, skipping endpoints that refused lately
/// (unless all did), trying the next on failure.
async fn connect(ingress: &Ingress, targets: &[IngressTarget]) -> Option<TcpStream> {
    if targets.is_empty() {
        return None;
    }
    let start = ingress.next.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut order: Vec<&IngressTarget> = (0..targets.len())
        .map(|i| &targets[(start + i) % targets.len()])
        .collect();
    {
        let ejected = ingress.ejected.lock().expect("eject lock");
        // Healthy first, ejected last: stable partition keeps the round robin.
        order.sort_by_key(|t| {
            ejected
                .get(&(t.address.clone(), t.port))
                .is_some_and(|until| *until > now)
        });
    }
    for t in order {
        let addr = (t.address.as_str(), t.port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                ingress
                    .ejected
                    .lock()
                    .expect("eject lock")
                    .remove(&(t.address.clone(), t.port));
                return Some(s);
            }
            Ok(Err(e)) => {
                tracing::info!(endpoint = %format!("{}:{}", t.address, t.port), error = %e, "local endpoint refused; trying the next");
            }
            Err(_) => {
                tracing::info!(endpoint = %format!("{}:{}", t.address, t.port), "connecting to a local endpoint timed out; trying the next");
            }
        }
        ingress
            .ejected
            .lock()
            .expect("eject lock")
            .insert((t.address.clone(), t.port), Instant::now() + EJECT_FOR);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use causeway_api::proxy_config::IngressConfig;

    use super::*;

    fn ingress(silent: bool) -> Ingress {
        let cfg = IngressConfig {
            version: "1".into(),
            mesh: "default".into(),
            zone: "zone-b".into(),
            name: "ingress-1".into(),
            refusing: Some("drill".into()),
            silent,
            routes: Default::default(),
            services: Default::default(),
        };
        let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(cfg)));
        Ingress {
            config: rx,
            next: Default::default(),
            ejected: Default::default(),
            active: Default::default(),
            metrics: crate::Metrics::default(),
            gate: causeway_listen::Gate::new(causeway_listen::Limits::total(16)),
        }
    }

    /// A connection whose ClientHello arrives as a blackhole drill begins is never
    /// refused (closed): it stalls, as the silence promises. A failover drill refuses it.
    #[tokio::test]
    async fn a_blackhole_drill_that_begins_mid_hello_stalls_the_connection() {
        let peer = "127.0.0.1:1".parse().unwrap();
        let hello = crate::sni::tests::client_hello("e1.backend.default.causeway");

        let silent = ingress(true);
        let routed = tokio::time::timeout(
            Duration::from_millis(200),
            route(&silent, std::io::Cursor::new(hello.clone()), peer),
        )
        .await;
        assert!(routed.is_err(), "the connection was closed, not stalled");
        assert_eq!(silent.metrics.refused_drill.load(Ordering::Relaxed), 0);

        let refusing = ingress(false);
        tokio::time::timeout(
            Duration::from_millis(200),
            route(&refusing, std::io::Cursor::new(hello), peer),
        )
        .await
        .expect("a failover drill refuses at once");
        assert_eq!(refusing.metrics.refused_drill.load(Ordering::Relaxed), 1);
    }
}
