//! The global control plane's metrics, in Prometheus' classic text format at `GET /metrics` on
//! the policy API (with either API token, as Prometheus' `authorization` sends it):
//! Raft, the API's requests, and KDS. Counters and histograms count as things happen;
//! the gauges (Raft's indexes and term, the zones' state) are read from the node at each
//! scrape, so they are never stale.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::raft_node::RaftView;
use crate::store::Store;

/// Buckets for latencies from 1 ms to about 16 s.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) method: String,
    /// The route's pattern (`/meshes/{mesh}/{plural}/{name}`), never the raw path, so
    /// the series stay few.
    pub(crate) route: String,
    pub(crate) code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ZoneLabels {
    pub(crate) zone: String,
}

/// Every metric of a node.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) api_requests: Family<RequestLabels, Counter>,
    pub(crate) api_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub(crate) leader_changes: Counter,
    raft_snapshots_built: Counter,
    raft_snapshots_installed: Counter,
    pub(crate) kds_sent_bytes: Family<ZoneLabels, Counter>,
    pub(crate) kds_full_sets: Family<ZoneLabels, Counter>,
    raft_term: Gauge,
    raft_is_leader: Gauge,
    raft_commit: Gauge,
    raft_applied: Gauge,
    raft_last_index: Gauge,
    raft_members: Gauge,
    disk_free_bytes: Gauge,
    disk_low: Gauge,
    kds_connected_zones: Gauge,
    zone_connected: Family<ZoneLabels, Gauge>,
    zone_lag_revisions: Family<ZoneLabels, Gauge>,
    zone_last_seen: Family<ZoneLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// The metrics of a node whose Raft proposals `proposals` times.
    pub(crate) fn new(proposals: Histogram) -> Metrics {
        let mut registry = Registry::with_prefix("causeway");
        let api_requests = Family::<RequestLabels, Counter>::default();
        let api_seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let m = Metrics {
            api_requests: api_requests.clone(),
            api_seconds: api_seconds.clone(),
            leader_changes: Counter::default(),
            raft_snapshots_built: Counter::default(),
            raft_snapshots_installed: Counter::default(),
            kds_sent_bytes: Family::default(),
            kds_full_sets: Family::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit: Gauge::default(),
            raft_applied: Gauge::default(),
            raft_last_index: Gauge::default(),
            raft_members: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_low: Gauge::default(),
            kds_connected_zones: Gauge::default(),
            zone_connected: Family::default(),
            zone_lag_revisions: Family::default(),
            zone_last_seen: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "api_requests",
            "Policy API requests, by method, route and status code",
            api_requests,
        );
        r.register(
            "api_request_duration_seconds",
            "Policy API request latency, by route",
            api_seconds,
        );
        r.register(
            "raft_term",
            "The node's current Raft term",
            m.raft_term.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 on the Raft leader, else 0",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times the node saw the leader change",
            m.leader_changes.clone(),
        );
        r.register(
            "raft_snapshots_built",
            "Raft snapshots this node built (as leader, for a follower too far behind to catch up from the log)",
            m.raft_snapshots_built.clone(),
        );
        r.register(
            "raft_snapshots_installed",
            "Raft snapshots this node installed from the leader",
            m.raft_snapshots_installed.clone(),
        );
        r.register(
            "raft_commit_index",
            "The node's Raft commit index",
            m.raft_commit.clone(),
        );
        r.register(
            "raft_applied_index",
            "The node's applied Raft index",
            m.raft_applied.clone(),
        );
        r.register(
            "raft_last_index",
            "The last index in the node's Raft log",
            m.raft_last_index.clone(),
        );
        r.register(
            "raft_members",
            "Raft members (voters and learners) the node knows",
            m.raft_members.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free space on the data dir's disk (measured every second)",
            m.disk_free_bytes.clone(),
        );
        r.register(
            "disk_low",
            "1 while the data dir's disk is under its reserve (--disk-reserve-mib) and writes are refused, else 0",
            m.disk_low.clone(),
        );
        r.register(
            "raft_proposal_duration_seconds",
            "From a write's proposal to its being applied on this node",
            proposals,
        );
        r.register(
            "kds_connected_zones",
            "Zones connected to this node over KDS",
            m.kds_connected_zones.clone(),
        );
        r.register(
            "kds_sent_bytes",
            "Bytes of change sets sent to a zone by this node",
            m.kds_sent_bytes.clone(),
        );
        r.register(
            "kds_full_sets",
            "Full resyncs (whole change sets) sent to a zone by this node",
            m.kds_full_sets.clone(),
        );
        r.register(
            "kds_zone_connected",
            "1 when the zone is connected to some global node, as its last status says",
            m.zone_connected.clone(),
        );
        r.register(
            "kds_zone_lag_revisions",
            "Global revisions the zone has not acknowledged yet",
            m.zone_lag_revisions.clone(),
        );
        r.register(
            "kds_zone_last_seen_seconds",
            "Seconds since the zone was last heard of",
            m.zone_last_seen.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text, with the gauges read from `view`, `store` and the number of
    /// zones `connected` to this node, at `now_ms`.
    pub(crate) fn render(
        &self,
        view: &RaftView,
        store: &Store,
        connected: usize,
        now_ms: i64,
    ) -> String {
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.raft_term, view.term);
        gauge(
            &self.raft_is_leader,
            u64::from(view.leader_id == view.id && view.id != 0),
        );
        gauge(&self.raft_commit, view.commit);
        gauge(&self.raft_applied, view.applied);
        gauge(&self.raft_last_index, view.last_index);
        gauge(&self.raft_members, view.progress.len() as u64);
        gauge(&self.disk_free_bytes, view.disk.free_bytes);
        gauge(&self.disk_low, u64::from(view.disk.low));
        gauge(&self.kds_connected_zones, connected as u64);
        // Counted by the store as they happen; the counters catch up at each scrape.
        let counts = store.snapshot_counts();
        for (counter, count) in [
            (&self.raft_snapshots_built, &counts.built),
            (&self.raft_snapshots_installed, &counts.installed),
        ] {
            let now = count.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let latest = store.last_change_index();
        for z in store.zone_statuses().unwrap_or_default() {
            let zone = ZoneLabels {
                zone: z.zone.clone(),
            };
            gauge(
                &self.zone_connected.get_or_create(&zone),
                u64::from(z.connected),
            );
            gauge(
                &self.zone_lag_revisions.get_or_create(&zone),
                latest.saturating_sub(z.revision_applied),
            );
            self.zone_last_seen
                .get_or_create(&zone)
                .set((now_ms - z.last_seen_unix_ms).max(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        causeway_api::exposition::prometheus_text(&out)
    }
}
