//! The zone control plane's metrics, in Prometheus' classic text format at `GET /metrics` on the
//! zone API (with its API token): its KDS session with global, the proxies connected
//! over DDS, the configs it computes and pushes, their NACKs, and the certificates it
//! issues and holds. Counters and histograms count as things happen; the gauges are read
//! from the zone's state at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    /// `sidecar` or `ingress`.
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertLabels {
    /// `zone` (the zone's own certificate) or `mesh:<name>` (its intermediate CA).
    pub(crate) certificate: String,
}

/// Every metric of a zone control plane.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) computations: Family<KindLabels, Counter>,
    pub(crate) computation_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub(crate) pushes: Family<KindLabels, Counter>,
    pub(crate) nacks: Counter,
    pub(crate) certificates_issued: Counter,
    kds_connected: Gauge,
    kds_revision: Gauge,
    kds_last_sync: Gauge<f64, AtomicU64>,
    proxies: Family<KindLabels, Gauge>,
    proxies_nacking: Gauge,
    expiry: Family<CertLabels, Gauge<f64, AtomicU64>>,
    signals: Gauge,
    signals_dropped: Gauge,
    disk_free_bytes: Gauge,
    disk_low: Gauge,
}

fn computation_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("causeway_zone");
        let m = Metrics {
            registry: Registry::default(),
            computations: Family::default(),
            computation_seconds: Family::new_with_constructor(computation_histogram),
            pushes: Family::default(),
            nacks: Counter::default(),
            certificates_issued: Counter::default(),
            kds_connected: Gauge::default(),
            kds_revision: Gauge::default(),
            kds_last_sync: Gauge::default(),
            proxies: Family::default(),
            proxies_nacking: Gauge::default(),
            expiry: Family::default(),
            signals: Gauge::default(),
            signals_dropped: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_low: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "config_computations",
            "Configs computed for proxies, by kind",
            m.computations.clone(),
        );
        r.register(
            "config_computation_duration_seconds",
            "Time to compute one proxy's config",
            m.computation_seconds.clone(),
        );
        r.register(
            "config_pushes",
            "Configs sent to proxies (a changed version), by kind",
            m.pushes.clone(),
        );
        r.register("config_nacks", "Configs proxies rejected", m.nacks.clone());
        r.register(
            "certificates_issued",
            "Workload certificates signed for sidecars",
            m.certificates_issued.clone(),
        );
        r.register(
            "kds_connected",
            "1 while the zone has a KDS session with a global node",
            m.kds_connected.clone(),
        );
        r.register(
            "kds_revision",
            "The last global revision the zone applied",
            m.kds_revision.clone(),
        );
        r.register(
            "kds_last_sync_age_seconds",
            "Seconds since the zone last applied a change set from global",
            m.kds_last_sync.clone(),
        );
        r.register(
            "connected_proxies",
            "Proxies connected over DDS, by kind",
            m.proxies.clone(),
        );
        r.register(
            "proxies_nacking",
            "Proxies whose last reply rejected their config",
            m.proxies_nacking.clone(),
        );
        r.register(
            "certificate_expiry_seconds",
            "Seconds until a certificate the zone holds expires",
            m.expiry.clone(),
        );
        r.register(
            "golden_signals",
            "Golden signals (service, peer, direction) the zone aggregates for `causeway stat`",
            m.signals.clone(),
        );
        r.register(
            "golden_signals_dropped",
            "Golden signals not tracked since start because the zone held its limit of them",
            m.signals_dropped.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free space on the data dir's disk (measured at most once a second)",
            m.disk_free_bytes.clone(),
        );
        r.register(
            "disk_low",
            "1 while the data dir's disk is under its reserve (--disk-reserve-mib) and local writes are refused, else 0",
            m.disk_low.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one config computed for a proxy of `kind`, which took `took`.
    pub(crate) fn computed(&self, kind: &str, took: std::time::Duration) {
        let kind = KindLabels {
            kind: kind.to_owned(),
        };
        self.computations.get_or_create(&kind).inc();
        self.computation_seconds
            .get_or_create(&kind)
            .observe(took.as_secs_f64());
    }

    /// The exposition text, with the gauges read from `shared` at `now_ms`.
    pub(crate) fn render(&self, shared: &Shared, now_ms: i64) -> String {
        {
            let s = shared.status.lock().expect("status lock");
            self.kds_connected.set(i64::from(s.connected_to.is_some()));
            if let Some(last) = s.syncs.back() {
                self.kds_last_sync
                    .set((now_ms - last.at_unix_ms).max(0) as f64 / 1000.0);
            }
        }
        self.kds_revision
            .set(i64::try_from(*shared.revision.borrow()).unwrap_or(i64::MAX));
        {
            let proxies = shared.proxies.lock().expect("proxies lock");
            let ingresses = proxies.values().filter(|p| p.ingress).count();
            let kind = |k: &str| KindLabels { kind: k.to_owned() };
            self.proxies
                .get_or_create(&kind("sidecar"))
                .set((proxies.len() - ingresses) as i64);
            self.proxies
                .get_or_create(&kind("ingress"))
                .set(ingresses as i64);
            self.proxies_nacking
                .set(proxies.values().filter(|p| p.nack.is_some()).count() as i64);
        }
        {
            let signals = shared.signals.lock().expect("signals lock");
            self.signals.set(signals.len() as i64);
            self.signals_dropped
                .set(i64::try_from(signals.dropped()).unwrap_or(i64::MAX));
        }
        if let Some(disk) = shared.store.disk() {
            self.disk_free_bytes
                .set(i64::try_from(disk.free_bytes).unwrap_or(i64::MAX));
            self.disk_low.set(i64::from(disk.low));
        }
        let left = |not_after: i64| (not_after - now_ms / 1000) as f64;
        if let Ok(Some(identity)) = shared.store.identity() {
            self.expiry
                .get_or_create(&CertLabels {
                    certificate: "zone".into(),
                })
                .set(left(identity.not_after));
        }
        for i in shared.store.intermediates().unwrap_or_default() {
            self.expiry
                .get_or_create(&CertLabels {
                    certificate: format!("mesh:{}", i.mesh),
                })
                .set(left(i.not_after));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        causeway_api::exposition::prometheus_text(&out)
    }
}
