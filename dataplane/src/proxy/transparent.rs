//! Transparent proxying: the one listener that takes every redirected outbound
//! connection (`causeway dataplane install-redirect`). It reads the connection's original
//! destination from the kernel (SO_ORIGINAL_DST, through rustix's safe wrapper) and
//! routes it:
//! - to the outbound whose virtual IP it is, through the same stack as an explicit
//!   outbound, HTTP when the destination speaks it and the first bytes say so;
//! - anywhere else: to the original destination itself (the mesh's
//!   `networking.outbound.passthrough`), or closed.
//!
//! The sidecar's own connections are exempt from the redirect (by its uid or gid), so a
//! passed-through connection does not come back here.

use super::*;
use crate::metrics::TRANSPARENT_RESULTS;

/// How long a passed-through connection may take to connect.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the first bytes of a connection to an HTTP destination may take to say
/// whether it is HTTP. A client speaks first in HTTP; one that says nothing for this
/// long is proxied as TCP (a server-first protocol on an HTTP service's port).
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

/// Takes one redirected connection.
pub(super) async fn redirected_conn(proxy: &Arc<Proxy>, tcp: TcpStream) -> anyhow::Result<()> {
    let count = |result: &str| {
        let i = TRANSPARENT_RESULTS
            .iter()
            .position(|r| *r == result)
            .expect("a known result");
        proxy.metrics.transparent[i].fetch_add(1, Ordering::Relaxed);
    };
    let local = tcp.local_addr()?;
    let Some(dest) = original_destination(&tcp).filter(|d| *d != local) else {
        count("refused");
        anyhow::bail!(
            "a connection to {local} that was not redirected: the transparent listener takes redirected connections only"
        );
    };
    let cfg = proxy
        .current()
        .ok_or_else(|| anyhow::anyhow!("no config yet"))?;
    let vip = match dest.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let routed = vip.and_then(|ip| cfg.outbounds.iter().find(|o| o.vip == Some(ip)));
    if let Some(ob) = routed {
        let (key, http) = (ob.key(), ob.protocol != Protocol::Tcp);
        drop(cfg);
        count("mesh");
        let as_tcp = http && !speaks_http(&tcp).await;
        return outbound_conn(proxy, key, tcp, as_tcp).await;
    }
    let passthrough = cfg.transparent.as_ref().is_some_and(|t| t.passthrough);
    drop(cfg);
    if !passthrough {
        count("refused");
        anyhow::bail!(
            "{dest} is not a mesh service's virtual IP and the mesh's networking.outbound.passthrough is off"
        );
    }
    count("passthrough");
    let up = tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(dest))
        .await
        .map_err(|_| anyhow::anyhow!("passthrough to {dest}: no connection within 10s"))??;
    let _ = up.set_nodelay(true);
    let (_, _, r) = timeout::copy_until_idle(tcp, up, None, None).await;
    r.map_err(Into::into)
}

/// Where the application sent the connection before the redirect; `None` when it was
/// not redirected (the kernel keeps no NAT entry for it).
fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    match tcp.local_addr().ok()? {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(tcp)
            .ok()
            .map(SocketAddr::V4),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(tcp)
            .ok()
            .map(SocketAddr::V6),
    }
}

/// Whether the connection's first bytes are an HTTP/1 request line or the HTTP/2
/// preface; read with `peek`, so they stay for the stack that takes the connection.
async fn speaks_http(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        match http_verdict(&buf[..n]) {
            Some(verdict) => return verdict,
            // A request line cut short: wait for more. `peek` answers at once while
            // bytes wait, so pause rather than spin; this is a rare case (a client
            // that writes a method in pieces).
            None if n > 0 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None => return false,
        }
    }
}

/// The first bytes of an HTTP client: a request line's method and space, or the
/// HTTP/2 connection preface.
const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

/// Whether `first` (a connection's first bytes) starts HTTP: `Some(true)`,
/// `Some(false)` when it cannot any more, `None` when too few bytes have come to say.
pub(crate) fn http_verdict(first: &[u8]) -> Option<bool> {
    let mut could = false;
    for start in HTTP_STARTS {
        let n = first.len().min(start.len());
        if first[..n] == start[..n] {
            if first.len() >= start.len() {
                return Some(true);
            }
            could = true;
        }
    }
    if could { None } else { Some(false) }
}

#[cfg(test)]
mod tests {
    use super::http_verdict;

    #[test]
    fn http_is_told_from_other_protocols_by_the_first_bytes() {
        assert_eq!(http_verdict(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(http_verdict(b"DELETE /x HTTP/1.1"), Some(true));
        assert_eq!(http_verdict(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(true));
        // Redis, TLS, and a lowercase method are not HTTP.
        assert_eq!(http_verdict(b"*1\r\n$4\r\nPING\r\n"), Some(false));
        assert_eq!(http_verdict(&[0x16, 0x03, 0x01, 0x02]), Some(false));
        assert_eq!(http_verdict(b"get / HTTP/1.1"), Some(false));
        // Too early to say.
        assert_eq!(http_verdict(b"PO"), None);
        assert_eq!(http_verdict(b"PRI * HT"), None);
        assert_eq!(http_verdict(b""), None);
        // A method without its space: something else.
        assert_eq!(http_verdict(b"GETX"), Some(false));
    }
}
