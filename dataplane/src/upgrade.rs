//! HTTP/1.1 upgrades (WebSocket, and any other `Upgrade` protocol) through the mesh.
//!
//! The application's upgrade request reaches its outbound as HTTP/1.1. The outbound
//! sends it to the chosen endpoint's sidecar on a connection of its own, mTLS with the
//! ALPN `http/1.1` (through other zones' ingresses too, which pass TLS through), and
//! that sidecar sends it on to its application on a fresh connection. When the
//! application answers `101 Switching Protocols`, each sidecar answers its caller 101
//! and splices the two upgraded connections, byte for byte, until either side closes
//! or nothing moves for the idle timeout. Any other answer travels back as an ordinary
//! response. Authorization, rate limits, faults, routes and the request timeout (up to
//! the 101) apply as to any request.
//!
//! A dedicated connection per upgrade, rather than an HTTP/2 extended CONNECT stream
//! on the pooled connection, keeps a long-lived tunnel off the connections that carry
//! requests and lets the same inbound code serve plaintext callers.
//!
//! `h2c` is not tunnelled: RFC 9113 (§3.1) lets a server ignore an h2c upgrade and answer
//! in HTTP/1.1, which is what the sidecars do (the `Upgrade` header is dropped).

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;

use crate::http::{Body, boxed};

/// The ALPN a sidecar offers to carry an upgrade to another sidecar.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` header when
/// `Connection` lists `upgrade`. `None` for other requests, and for `h2c`.
pub(crate) fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = parts.headers.get(UPGRADE)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|p| p.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (asks && !h2c).then(|| protocol.clone())
}

/// Puts an upgrade's own headers back on a request whose hop-by-hop headers were
/// stripped: `Connection: upgrade` and the `Upgrade` it asked for.
pub(crate) fn keep(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Sends `req` (origin-form, with its `Host`) over `io`, a new connection, as
/// HTTP/1.1. A 101 answer comes with the upgraded connection; any other with its
/// body, and the connection ends with it.
pub(crate) async fn send(
    io: impl crate::proxy::Stream,
    req: http::Request<Body>,
) -> Result<(http::Response<Body>, Option<hyper::upgrade::Upgraded>), hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok((resp.map(boxed), None));
    }
    let upgraded = hyper::upgrade::on(&mut resp).await?;
    let (parts, _) = resp.into_parts();
    Ok((
        http::Response::from_parts(parts, boxed(http_body_util::Empty::new())),
        Some(upgraded),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: http::Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().version(version).uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_upgrade_is_asked_with_connection_upgrade_and_is_not_h2c() {
        let h11 = http::Version::HTTP_11;
        let ws = parts(
            h11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(requested(&ws).unwrap(), "websocket");
        // Without `upgrade` among the Connection tokens, Upgrade is just a header.
        assert!(requested(&parts(h11, &[("upgrade", "websocket")])).is_none());
        assert!(requested(&parts(h11, &[("connection", "upgrade")])).is_none());
        // h2c is ignored: answered in HTTP/1.1.
        let h2c = parts(
            h11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
        );
        assert!(requested(&h2c).is_none());
        // Only HTTP/1.1 upgrades.
        let h2 = parts(
            http::Version::HTTP_2,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        assert!(requested(&h2).is_none());
    }
}
