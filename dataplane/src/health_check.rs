//! Active health checks (MeshHealthCheck): each sidecar checks every endpoint of a
//! destination that has a [`HealthCheck`] in its config, every `interval` plus up to
//! `jitter`, the way its requests reach it (mTLS to the endpoint's sidecar, through
//! another zone's ingress for a remote one), so a check sees what a request would:
//!
//! - **HTTP**: `GET path` on the endpoint's pooled HTTP/2 connection (the endpoint's
//!   sidecar passes it to the application); healthy when the status is expected.
//! - **gRPC**: `grpc.health.v1.Health/Check` the same way; healthy when the answer is
//!   SERVING with `grpc-status` 0.
//! - **TCP**: a connection (the endpoint's sidecar connects it to the application, and
//!   closes it when the application refuses); with `send`, the bytes are sent and every
//!   `receive` must arrive; without, the connection must stay open for the check's
//!   timeout.
//!
//! `unhealthyThreshold` failures in a row take the endpoint out of the balancer's
//! choice ([`crate::lb`]), `healthyThreshold` passes in a row bring it back. The active
//! verdict combines with the passive one (ejections): an endpoint takes requests when
//! neither rules it out, unless fewer than `panicThreshold` percent of the
//! destination's endpoints pass their checks (then the checks are ignored, as Envoy's
//! panic mode). Checks restart only when their configuration changes; the verdict
//! lives on the endpoint, across config updates.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::{HealthCheck, HealthCheckKind, OutboundKey};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::http::{NotReady, boxed};
use crate::identity::{ALPN_H2, ALPN_TCP};
use crate::lb::EndpointState;
use crate::proxy::Proxy;

/// Consecutive results of one endpoint's checks, and the verdict they lead to. Pure.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Verdicts {
    passes: u32,
    failures: u32,
}

impl Verdicts {
    /// Records a check's result on an endpoint that is `healthy` now; the new verdict
    /// when it changes.
    pub(crate) fn record(&mut self, passed: bool, healthy: bool, hc: &HealthCheck) -> Option<bool> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            (!healthy && self.passes >= hc.healthy_threshold.max(1)).then_some(true)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            (healthy && self.failures >= hc.unhealthy_threshold.max(1)).then_some(false)
        }
    }
}

/// The pause before the next check: the interval plus a random part of the jitter.
pub(crate) fn next_pause(hc: &HealthCheck, random: f64) -> Duration {
    hc.interval.as_std() + hc.jitter.as_std().mul_f64(random.clamp(0.0, 1.0))
}

/// Checks `ep`, an endpoint of the outbound `key`, until the proxy is gone or the
/// task is aborted (its endpoint left, or its check changed).
pub(crate) async fn run(
    proxy: Weak<Proxy>,
    key: OutboundKey,
    ep: Arc<EndpointState>,
    hc: HealthCheck,
) {
    let mut verdicts = Verdicts::default();
    let service = {
        let Some(p) = proxy.upgrade() else { return };
        let cfg = p.current();
        cfg.and_then(|c| {
            c.outbounds
                .iter()
                .find(|o| o.key() == key)
                .map(|o| o.service.clone())
        })
        .unwrap_or_default()
    };
    let endpoint = format!("{}:{}", ep.endpoint.address, ep.endpoint.port);
    loop {
        let result = {
            let Some(p) = proxy.upgrade() else { return };
            match tokio::time::timeout(hc.timeout.as_std(), check(&p, key, &ep, &hc)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {}",
                    crate::timeout::show(hc.timeout.as_std())
                )),
            }
        };
        if let Some(p) = proxy.upgrade() {
            p.metrics.health_check(&service, result.is_ok());
        }
        let healthy = ep.actively_healthy();
        if let Some(now) = verdicts.record(result.is_ok(), healthy, &hc) {
            ep.set_actively_healthy(now);
            match &result {
                Ok(()) => tracing::info!(
                    service,
                    endpoint,
                    "health check passes again: endpoint back"
                ),
                Err(e) => {
                    tracing::warn!(service, endpoint, error = %e, "health check failing: endpoint taken out")
                }
            }
        }
        tokio::time::sleep(next_pause(&hc, rand::random())).await;
    }
}

/// One check of `ep`.
async fn check(
    proxy: &Proxy,
    key: OutboundKey,
    ep: &EndpointState,
    hc: &HealthCheck,
) -> Result<(), String> {
    let cfg = proxy.current().ok_or("no config")?;
    let ob = cfg
        .outbounds
        .iter()
        .find(|o| o.key() == key)
        .ok_or("the outbound is gone")?;
    match &hc.check {
        HealthCheckKind::Tcp { send, receive } => {
            let dial = proxy
                .dial(&cfg, ob, ep, ALPN_TCP)
                .ok_or("no workload certificate yet")?;
            let mut conn = crate::http::connect(&dial)
                .await
                .map_err(|e| e.to_string())?;
            tcp_exchange(&mut conn, send.as_deref(), receive, hc.timeout.as_std()).await
        }
        HealthCheckKind::Http {
            path,
            expected_statuses,
        } => {
            let req = http::Request::get(format!("http://{}{path}", ob.service))
                .header(http::header::USER_AGENT, "causeway-health-check")
                .body(boxed(http_body_util::Empty::<Bytes>::new()))
                .map_err(|e| format!("the check's request: {e}"))?;
            let status = send(proxy, &cfg, ob, ep, req).await?.status();
            if expected_statuses.contains(&status.as_u16()) {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        }
        HealthCheckKind::Grpc { service, authority } => {
            let req =
                http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .body(boxed(http_body_util::Full::new(grpc_check_request(
                        service,
                    ))))
                    .map_err(|e| format!("the check's request: {e}"))?;
            let resp = send(proxy, &cfg, ob, ep, req).await?;
            let headers = resp.headers().clone();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            grpc_verdict(&headers, &trailers, &collected.to_bytes())
        }
    }
}

/// Sends a check's request on the endpoint's pooled connection.
async fn send(
    proxy: &Proxy,
    cfg: &causeway_api::proxy_config::ProxyConfig,
    ob: &causeway_api::proxy_config::OutboundListener,
    ep: &EndpointState,
    req: http::Request<crate::http::Body>,
) -> Result<http::Response<crate::http::Body>, String> {
    let ready = match ep
        .pool
        .slot()
        .ready(|| proxy.dial(cfg, ob, ep, ALPN_H2))
        .await
    {
        Ok(r) => r,
        Err(NotReady::NoDial) => return Err("no workload certificate yet".into()),
        Err(NotReady::Failed(e)) => return Err(e.to_string()),
    };
    ready.send(req).await.map_err(|e| e.to_string())
}

/// A TCP check on an open connection: send `send` and wait for every `receive` (both
/// base64); without `send`, the connection must stay open for `timeout` (the
/// endpoint's sidecar closes it when its application refuses it).
async fn tcp_exchange(
    conn: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    send: Option<&str>,
    receive: &[String],
    timeout: Duration,
) -> Result<(), String> {
    use base64::Engine as _;
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("bad base64 in the check: {e}"))
    };
    let mut buf = vec![0u8; 4096];
    let Some(send) = send else {
        // Stays open for the whole check (the caller's timeout ends it): healthy.
        return match tokio::time::timeout(timeout, conn.read(&mut buf)).await {
            Err(_) | Ok(Ok(1..)) => Ok(()),
            Ok(Ok(0)) => Err("the endpoint closed the connection".into()),
            Ok(Err(e)) => Err(e.to_string()),
        };
    };
    conn.write_all(&b64(send)?)
        .await
        .map_err(|e| e.to_string())?;
    conn.flush().await.map_err(|e| e.to_string())?;
    let wanted: Vec<Vec<u8>> = receive.iter().map(|r| b64(r)).collect::<Result<_, _>>()?;
    let mut got = Vec::new();
    while !wanted
        .iter()
        .all(|w| got.windows(w.len().max(1)).any(|win| win == w.as_slice()) || w.is_empty())
    {
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the endpoint closed the connection before the expected answer".into());
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 64 * 1024 {
            return Err("no expected answer in the first 64 KiB".into());
        }
    }
    Ok(())
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// 1 is SERVING.
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// A gRPC message frame: uncompressed, length-prefixed.
fn grpc_check_request(service: &str) -> Bytes {
    use prost::Message as _;
    let msg = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

/// Whether a gRPC health answer says SERVING: `grpc-status` 0 (in the trailers, or the
/// headers of a trailers-only answer) and a response message with status 1.
fn grpc_verdict(
    headers: &http::HeaderMap,
    trailers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    use prost::Message as _;
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .ok_or("no grpc-status in the answer")?;
    if status != "0" {
        let msg = trailers
            .get("grpc-message")
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!("grpc-status {status} {msg}"));
    }
    let msg = body
        .get(5..)
        .filter(|_| body.first() == Some(&0))
        .ok_or("no uncompressed response message")?;
    let resp = HealthCheckResponse::decode(msg).map_err(|e| format!("bad answer: {e}"))?;
    if resp.status == SERVING {
        Ok(())
    } else {
        Err(format!("not serving (status {})", resp.status))
    }
}

#[cfg(test)]
mod tests;
