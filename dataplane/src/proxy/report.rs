//! What this sidecar reports of itself to its zone, for `causeway inspect dataplane`:
//! its certificate, and each destination's endpoints with their health and ejection.
//!
//! Pushed, not pulled: the sidecar samples its state about once a second and sends a
//! [`ProxyReport`] up its DDS stream only when it differs from the last one. The zone
//! then answers `inspect` from what it holds, without a call to the proxy: it need not
//! reach the sidecar's admin port (loopback-only by default, and behind NAT on many
//! VMs), an answer costs no round trip per proxy, and a report is a few hundred bytes
//! sent when an endpoint is ejected or comes back, or the certificate is renewed. The
//! cost is up to a second of lag (the answer says when the report arrived) and no
//! per-request figures (load, latency) in it: `/metrics` has those.

use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::inspect::{CertificateReport, DestinationReport, ProxyReport};
use tokio::sync::watch;

use super::Proxy;

/// How often the state is sampled (a report is sent only when it changed).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Proxy {
    /// The proxy's state now, as the zone shows it.
    pub(crate) fn report(&self) -> ProxyReport {
        let (now, now_ms) = (Instant::now(), now_unix_ms());
        let certificate = self.identity.borrow().as_ref().map(|i| CertificateReport {
            identity: i.id.clone(),
            not_after: i.not_after,
            renew_at: i.renew_at,
            issuer_sha256: i.issuer_sha256.clone(),
            trusted_sha256: i.trusted_sha256.clone(),
        });
        let mut destinations = Vec::new();
        if let Some(cfg) = self.current() {
            let balancers = self.balancers.lock().expect("balancers lock").clone();
            let routes = self
                .route_balancers
                .lock()
                .expect("route balancers lock")
                .clone();
            for ob in &cfg.outbounds {
                if let Some(b) = balancers.get(&ob.key()) {
                    destinations.push(DestinationReport {
                        port: ob.port,
                        vip: ob.vip,
                        service: ob.service.clone(),
                        backend: None,
                        endpoints: b.report(now, now_ms),
                    });
                }
                // Every route backend once (MeshTCPRoute's, MeshHTTPRoute's, mirrors).
                let mut seen = std::collections::HashSet::new();
                for backend in super::route_backends(ob) {
                    let key = (ob.key(), super::backend_key(backend));
                    if !seen.insert(key.1.clone()) {
                        continue;
                    }
                    let Some((_, b)) = routes.get(&key) else {
                        continue;
                    };
                    let tags: Vec<String> = backend
                        .tags
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let label = if tags.is_empty() {
                        backend.service.clone()
                    } else {
                        format!("{}{{{}}}", backend.service, tags.join(","))
                    };
                    destinations.push(DestinationReport {
                        port: ob.port,
                        vip: ob.vip,
                        service: backend.service.clone(),
                        backend: Some(label),
                        endpoints: b.report(now, now_ms),
                    });
                }
            }
        }
        ProxyReport {
            certificate,
            destinations,
        }
    }
}

/// Keeps `tx` holding the proxy's current report: sampled every [`SAMPLE_EVERY`] and
/// at once when the config or the certificate changes; `tx` changes only when the
/// report does. Runs until aborted.
pub(crate) async fn keep_reporting(proxy: Arc<Proxy>, tx: watch::Sender<Option<Arc<ProxyReport>>>) {
    let mut config = proxy.config.clone();
    let mut identity = proxy.identity.clone();
    loop {
        let report = proxy.report();
        tx.send_if_modified(|current| {
            if current.as_deref() == Some(&report) {
                return false;
            }
            *current = Some(Arc::new(report));
            true
        });
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            Ok(()) = config.changed() => {
                // Let the listeners rebuild the balancers for the new config first.
                tokio::task::yield_now().await;
            }
            Ok(()) = identity.changed() => {}
        }
    }
}
