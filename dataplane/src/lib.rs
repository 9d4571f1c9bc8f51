//! The Causeway sidecar. It runs beside one workload: gets a workload certificate from its
//! zone control plane (key generated here, CSR plus dataplane token), registers its
//! Dataplane over DDS and follows its ProxyConfig, terminates and originates mutual TLS,
//! authorizes callers by SPIFFE id, and proxies TCP, HTTP/1.1, HTTP/2 and gRPC. It keeps
//! serving its last config and certificate when the control plane is away.
//!
//! Lean on purpose: no storage, no control-plane code. `cp` talks to the zone,
//! `identity` holds certificates and TLS configs, `proxy` the listeners, `lb` endpoint
//! choice, `http` the pooled connections between sidecars, `timeout` MeshTimeout's
//! limits, `error` the answers the proxy gives itself, `admin` the admin listener.

mod access_log;
pub mod admin;
mod app;
pub mod cli;
pub mod cp;
mod dns;
mod error;
mod fault;
mod flush_buffer;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hash;
mod header_match;
mod health_check;
mod http;
mod http1;
mod http2;
pub mod identity;
mod inbound_breaker;
mod lb;
mod metrics;
mod metrics_content;
mod metrics_push;
mod otlp;
mod outlier;
mod proxy;
pub mod quic;
mod rate_limit;
pub mod redirect;
mod replay;
mod retry;
mod route;
pub mod timeout;
mod trace;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use causeway_api::{DataplaneSpec, Resource};
use tokio::sync::watch;

pub use cp::{ControlPlane, Registration};

/// Settings of a sidecar, parsed once at the binary's edge.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub cp: ControlPlane,
    /// The Dataplane resource this sidecar registers.
    pub dataplane: Resource,
    /// Admin listener; default `127.0.0.1:<spec.adminPort>`.
    pub admin_addr: Option<SocketAddr>,
    /// How long SIGTERM waits for open connections to finish.
    pub drain: Duration,
    /// Connections the inbound listeners hold at once, and the outbound ones (each).
    pub max_connections: usize,
    /// The resolvers the DNS server forwards other names to; empty: the host's.
    pub dns_upstreams: Vec<SocketAddr>,
}

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Proxies for a config and identity the caller provides, without a control-plane
/// connection: what a zone control plane runs in-process to probe a service the way
/// sidecars reach it (failover drills). Runs until `stop` turns true.
pub async fn run_embedded(
    config: watch::Receiver<Option<Arc<causeway_api::proxy_config::ProxyConfig>>>,
    identity: watch::Receiver<Option<Arc<identity::Identity>>>,
    stop: watch::Receiver<bool>,
) {
    let proxy = proxy::Proxy::new(config, identity, DEFAULT_MAX_CONNECTIONS);
    proxy::run_listeners(proxy, stop).await;
}

/// The request header a drill probe sends, and the response header naming the zone that
/// answered it.
pub const PROBE_HEADERS: (&str, &str) = ("x-causeway-probe", "x-causeway-zone");

/// Runs the sidecar until `stop` turns true, then drains.
pub async fn run(cfg: DataplaneConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    causeway_api::validate(&cfg.dataplane)
        .map_err(|e| anyhow::anyhow!("the Dataplane is invalid: {e}"))?;
    anyhow::ensure!(
        cfg.dataplane.kind == "Dataplane",
        "the dataplane file must hold a Dataplane, not a {}",
        cfg.dataplane.kind
    );
    let spec: DataplaneSpec = serde_json::from_value(cfg.dataplane.spec.clone())?;
    let admin_addr = cfg
        .admin_addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], spec.admin_port)));
    let (config_tx, config_rx) = watch::channel(None);
    let (identity_tx, identity_rx) = watch::channel(None);
    let proxy = proxy::Proxy::new(config_rx, identity_rx, cfg.max_connections);
    let _ = proxy.dns_upstreams.set(cfg.dns_upstreams.clone());
    let json = serde_json::to_vec(&cfg.dataplane)?;
    let (report_tx, report_rx) = watch::channel(None);
    let mut tasks = vec![
        tokio::spawn(cfg.cp.clone().follow_config_reporting(
            cp::Registration::Dataplane(json),
            config_tx,
            report_rx,
            Some(proxy.metrics.clone()),
        )),
        tokio::spawn(proxy::run_listeners(proxy.clone(), stop.clone())),
        tokio::spawn(proxy::report::keep_reporting(proxy.clone(), report_tx)),
    ];
    // The certificate is needed only with mTLS; ask for it once the config says so.
    let (p, c, name) = (proxy.clone(), cfg.cp.clone(), cfg.dataplane.name.clone());
    tasks.push(tokio::spawn(async move {
        let mut config = p.config.clone();
        loop {
            let wants = config
                .borrow_and_update()
                .as_ref()
                .is_some_and(|c| c.mtls != causeway_api::MtlsMode::Off);
            if wants {
                // After the first config: the stream has registered the Dataplane, whose
                // tags the certificate carries.
                c.keep_identity(name, identity_tx, p.revoked.clone(), p.renew_now.clone())
                    .await;
                return;
            }
            if config.changed().await.is_err() {
                return;
            }
        }
    }));
    let admin = admin::serve(proxy.clone(), admin_addr).await?;
    tasks.push(admin);
    let _ = stop.wait_for(|s| *s).await;
    tracing::info!(drain = ?cfg.drain, "draining");
    for t in &tasks {
        t.abort();
    }
    proxy.drain();
    let deadline = Instant::now() + cfg.drain;
    while proxy.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(open = proxy.active.load(Ordering::Relaxed), "stopped");
    let _ = Arc::strong_count(&proxy);
    Ok(())
}
