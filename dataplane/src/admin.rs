//! The admin listener: `/ready` (config, and certificate when mTLS is on), `/config`
//! (the current ProxyConfig with the certificate's identity and expiry; no keys),
//! `/metrics` (Prometheus). MeshMetric's Prometheus endpoints serve the same metrics
//! on the proxy's address, at the port and path the policy sets ([`serve_metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::proxy::Proxy;

pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .with_state(proxy);
    serve_router(app, addr).await
}

/// Binds `addr` (failing with the address in the message) and serves `app` on it.
pub async fn serve_router(
    app: Router,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin address {addr}: {e}"))?;
    tracing::info!(%addr, "admin listening");
    Ok(tokio::spawn(serve_bounded(listener, app, None)))
}

/// Connections an admin or metrics listener holds at once; more wait in the kernel's
/// backlog.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers, counted from when the
/// connection waits for one (so an idle keep-alive connection is closed then too).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's head may take (HTTP/1.1; hyper's floor is 8 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves `app` over HTTP/1.1 on `listener` with limits, as every listener must have:
/// a slow or silent client (slowloris) is cut off after [`HEADER_READ_TIMEOUT`], a
/// request head over [`MAX_HEAD_BYTES`] is refused, and at most [`MAX_CONNECTIONS`]
/// are served at once. With `mtls`, each connection is first a TLS handshake with that
/// proxy's workload certificate, which requires a client certificate of the mesh (the
/// handshake counts against the same timeout).
pub(crate) async fn serve_bounded(
    listener: tokio::net::TcpListener,
    app: Router,
    mtls: Option<Arc<Proxy>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mtls = mtls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let result = match mtls {
                None => {
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    builder.serve_connection(io, service).await
                }
                Some(proxy) => {
                    let Some(tls) = mtls_accept(&proxy, tcp).await else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(tls);
                    builder.serve_connection(io, service).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// The TLS side of a metrics endpoint served over the mesh's mTLS: the proxy's current
/// workload certificate (so renewals apply to the next scrape), HTTP/1.1 only, and a
/// client certificate of the mesh required. `None` when there is no certificate (the
/// mesh runs without mTLS) or the handshake fails or takes too long.
async fn mtls_accept(
    proxy: &Proxy,
    tcp: tokio::net::TcpStream,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let Some(id) = proxy.identity.borrow().clone() else {
        tracing::warn!(
            "a MeshMetric endpoint with mTLS has no workload certificate to serve (does the mesh run mTLS?); connection closed"
        );
        return None;
    };
    let mut cfg = (*id.server).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let accept = tokio_rustls::TlsAcceptor::from(Arc::new(cfg)).accept(tcp);
    match tokio::time::timeout(HEADER_READ_TIMEOUT, accept).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics scraper failed mutual TLS; refused");
            None
        }
        Err(_) => None,
    }
}

async fn ready(State(p): State<Arc<Proxy>>) -> impl IntoResponse {
    let cfg = p.config.borrow().clone();
    let id = p.identity.borrow().clone();
    match cfg {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no config from the control plane yet\n",
        ),
        Some(c) if c.mtls != causeway_api::MtlsMode::Off && id.is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no workload certificate yet\n",
        ),
        Some(_) => (StatusCode::OK, "ready\n"),
    }
}

async fn config(State(p): State<Arc<Proxy>>) -> impl IntoResponse {
    let cfg = p.config.borrow().clone();
    let id = p.identity.borrow().clone();
    axum::Json(json!({
        "config": cfg.as_deref(),
        "certificate": id.map(|i| json!({"identity": i.id, "notAfter": i.not_after, "renewAt": i.renew_at, "issuerSha256": i.issuer_sha256})),
    }))
}

async fn metrics(State(p): State<Arc<Proxy>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render_metrics(&p),
    )
}

/// The proxy's metrics, labelled with its mesh and zone (empty before its first
/// config).
pub(crate) fn render_metrics(p: &Proxy) -> String {
    let cfg = p.config.borrow().clone();
    let (mesh, zone) = cfg
        .as_deref()
        .map_or(("", ""), |c| (c.mesh.as_str(), c.zone.as_str()));
    p.metrics.render(crate::metrics::Place { mesh, zone })
}

/// Serves the metrics at `path` on `addr:port` (a MeshMetric `Prometheus` backend),
/// as the policy selects them and with its applications' (see
/// [`crate::metrics_content`]), until aborted; anything else there is 404. With `mtls`,
/// over the mesh's mTLS (see [`serve_bounded`]). Returns when the port cannot be bound
/// (the caller tries again).
pub(crate) async fn serve_metrics(
    proxy: Arc<Proxy>,
    addr: String,
    port: u16,
    path: String,
    mtls: bool,
) {
    let listener = match tokio::net::TcpListener::bind((addr.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, port, error = %e, "cannot serve metrics (MeshMetric); will retry");
            return;
        }
    };
    tracing::info!(%addr, port, %path, mtls, "serving metrics (MeshMetric)");
    let tls = mtls.then(|| proxy.clone());
    let app = Router::new()
        .fallback(move |State(p): State<Arc<Proxy>>, uri: axum::http::Uri| {
            let wanted = uri.path() == path;
            async move {
                if wanted {
                    // What the policy selects, and the applications' metrics.
                    let own = render_metrics(&p);
                    let content = p
                        .config
                        .borrow()
                        .as_ref()
                        .map(|c| c.metrics_content.clone())
                        .unwrap_or_default();
                    let text = crate::metrics_content::render(&own, &content).await;
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                        .into_response()
                } else {
                    (StatusCode::NOT_FOUND, "not found\n").into_response()
                }
            }
        })
        .with_state(proxy);
    serve_bounded(listener, app, tls).await;
}
