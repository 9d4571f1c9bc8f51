//! The Causeway zone ingress: the door of a zone for traffic from other zones. It
//! registers its ZoneIngress with the zone control plane (with a zone-scoped ingress
//! token) and follows an [`IngressConfig`] over DDS: which TLS SNI reaches which local
//! sidecars. Each connection is routed by the SNI of its ClientHello and then spliced
//! byte for byte; the ingress holds no key or certificate of the mesh, so the mTLS stays
//! end to end between the calling sidecar and the called one. Unknown SNI, no SNI, or a
//! zone under a failover drill: the connection is closed. Under a blackhole drill the
//! ingress goes silent instead, as a dead network would: it stops accepting (TCP) and
//! drops every datagram (QUIC), connections in flight stall untouched, and when the
//! drill ends the stalled connections are closed and traffic is served again.
//!
//! Several ingresses per zone share the load: each registers its own ZoneIngress and
//! sidecars in other zones balance over all of them. It keeps routing on its last config
//! when the zone control plane is away.

mod admin;
pub mod cli;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod quic;
mod route;
mod sni;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_api::Resource;
use causeway_api::proxy_config::IngressConfig;
use causeway_dataplane::{ControlPlane, Registration};
use tokio::sync::watch;

/// Settings of an ingress, parsed once at the binary's edge.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    pub cp: ControlPlane,
    /// The ZoneIngress this ingress registers.
    pub ingress: Resource,
    /// Where it accepts other zones' connections.
    pub listen: SocketAddr,
    /// `/ready`, `/config`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// How long SIGTERM waits for open connections.
    pub drain: Duration,
    /// Also accept QUIC on the same port (UDP).
    pub quic: bool,
    /// TCP connections held at once; more are closed unserved.
    pub max_connections: usize,
}

/// Connection outcomes, for `/metrics`.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) forwarded: AtomicU64,
    pub(crate) refused_unknown_sni: AtomicU64,
    pub(crate) refused_not_tls: AtomicU64,
    pub(crate) refused_drill: AtomicU64,
    /// Closed unserved: the ingress held `--max-connections` already.
    pub(crate) refused_limit: AtomicU64,
    pub(crate) refused_no_config: AtomicU64,
    pub(crate) upstream_failed: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Streams accepted over QUIC (each also counted by outcome above).
    pub(crate) quic_streams: AtomicU64,
    /// Connections that stalled (then closed) because a blackhole drill silenced the
    /// ingress.
    pub(crate) stalled_drill: AtomicU64,
    /// By destination service (from the config's routes: an unknown SNI makes none).
    pub(crate) destinations: Mutex<std::collections::BTreeMap<String, Arc<Destination>>>,
}

/// Counters of one destination service.
#[derive(Default)]
pub(crate) struct Destination {
    pub(crate) forwarded: AtomicU64,
    pub(crate) upstream_failed: AtomicU64,
    pub(crate) active: AtomicU64,
    /// Read: from the other zone (in); written: to it (out). Counted as they move.
    pub(crate) bytes: Arc<causeway_dataplane::timeout::LiveBytes>,
}

impl Metrics {
    pub(crate) fn destination(&self, service: &str) -> Arc<Destination> {
        let mut d = self.destinations.lock().expect("metrics lock");
        if let Some(found) = d.get(service) {
            return found.clone();
        }
        d.entry(service.to_owned()).or_default().clone()
    }
}

/// The running ingress, shared by its connections.
pub(crate) struct Ingress {
    pub(crate) config: watch::Receiver<Option<Arc<IngressConfig>>>,
    /// Round-robin position over a service's endpoints.
    pub(crate) next: AtomicUsize,
    /// Endpoints that refused a connection lately, until when.
    pub(crate) ejected: Mutex<HashMap<(String, u16), Instant>>,
    pub(crate) active: AtomicU64,
    pub(crate) metrics: Metrics,
    /// The connection cap (a total: every caller of a NATed zone shares one address).
    pub(crate) gate: Arc<causeway_listen::Gate>,
}

fn is_silent(config: &Option<Arc<IngressConfig>>) -> bool {
    config
        .as_ref()
        .is_some_and(|c| c.silent && c.refusing.is_some())
}

impl Ingress {
    /// Whether a blackhole drill silences the ingress now.
    pub(crate) fn silent(&self) -> bool {
        is_silent(&self.config.borrow())
    }

    /// Completes when the ingress is (`true`) or is not (`false`) silent; at once if it
    /// already is. Never, once the config can no longer change.
    pub(crate) async fn until_silent(&self, silent: bool) {
        let mut config = self.config.clone();
        if config.wait_for(|c| is_silent(c) == silent).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the ingress until `stop` turns true, then drains.
pub async fn run(cfg: IngressSettings, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.ingress.kind == "ZoneIngress",
        "the ingress must register a ZoneIngress, not a {}",
        cfg.ingress.kind
    );
    causeway_api::validate(&cfg.ingress)
        .map_err(|e| anyhow::anyhow!("the ZoneIngress is invalid: {e}"))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding --listen {}: {e}", cfg.listen))?;
    tracing::info!(addr = %cfg.listen, "ingress listening (TLS routed by SNI, not terminated)");
    let (config_tx, config_rx) = watch::channel(None);
    let ingress = Arc::new(Ingress {
        config: config_rx,
        next: AtomicUsize::new(0),
        ejected: Mutex::new(HashMap::new()),
        active: AtomicU64::new(0),
        metrics: Metrics::default(),
        gate: causeway_listen::Gate::new(causeway_listen::Limits::total(cfg.max_connections)),
    });
    let json = serde_json::to_vec(&cfg.ingress)?;
    let mut tasks = vec![
        tokio::spawn(
            cfg.cp
                .clone()
                .follow_config(Registration::Ingress(json), config_tx),
        ),
        tokio::spawn(route::accept_loop(ingress.clone(), listener)),
    ];
    if cfg.quic {
        tasks.push(quic::serve(ingress.clone(), cfg.listen)?);
    }
    tasks.push(admin::serve(ingress.clone(), cfg.admin_addr).await?);
    let _ = stop.wait_for(|s| *s).await;
    tracing::info!(drain = ?cfg.drain, "draining");
    for t in &tasks {
        t.abort();
    }
    let deadline = Instant::now() + cfg.drain;
    while ingress.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(open = ingress.active.load(Ordering::Relaxed), "stopped");
    Ok(())
}
