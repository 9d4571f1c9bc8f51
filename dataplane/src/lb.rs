//! Endpoint selection for one destination: priority groups (this zone first, then the
//! failover order), passive health (consecutive connect failures eject an endpoint for a
//! growing while), active health (MeshHealthCheck: see [`crate::health_check`]), and
//! the balancer the MeshLoadBalancingStrategy names: power of two
//! choices over peak-EWMA latency (default), least request, round robin or random.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use causeway_api::LoadBalancerType;
use causeway_api::proxy_config::{
    CircuitBreaker, Endpoint, EndpointGroup, OutlierDetection, Retry,
};

use crate::http::Pool;
use crate::outlier::{
    Admitted, Limit, Outcome, Streaks, Tally, ejection_time, may_eject, outliers,
};
use crate::retry::{Budget, HeaderRules};

/// How fast peak-EWMA forgets, unless the policy says (linkerd2-proxy's default decay).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint without samples yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// One endpoint with its load, latency estimate, health and connection pool.
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    pub(crate) active: AtomicU64,
    ewma: Mutex<(f64, Instant)>,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Pooled multiplexed connection (HTTP).
    pub(crate) pool: Pool,
    /// A background dial tests the endpoint (see [`EndpointState::start_probe`]).
    probing: AtomicBool,
    /// The verdict of its active health checks (true without any).
    active_healthy: AtomicBool,
    /// Its runs of failed answers, for outlier detection.
    streaks: Mutex<Streaks>,
    /// How many times outlier detection ejected it.
    outlier_ejections: AtomicU32,
    /// Its destination's peak-EWMA decay, in nanoseconds.
    decay_ns: AtomicU64,
    /// Its answers since the last judgement of the interval-based detectors.
    tally: Mutex<Tally>,
    /// The outbound request counters of the answers it gives, whose `peer_zone` is its
    /// zone: looked up once, at its first answer.
    pub(crate) answered: std::sync::OnceLock<Arc<crate::metrics::HttpStats>>,
}

impl EndpointState {
    fn new(endpoint: Endpoint) -> EndpointState {
        EndpointState {
            endpoint,
            active: AtomicU64::new(0),
            ewma: Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now())),
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            pool: Pool::default(),
            probing: AtomicBool::new(false),
            active_healthy: AtomicBool::new(true),
            streaks: Mutex::default(),
            outlier_ejections: AtomicU32::new(0),
            decay_ns: AtomicU64::new(EWMA_DECAY.as_nanos() as u64),
            tally: Mutex::default(),
            answered: std::sync::OnceLock::new(),
        }
    }

    /// Whether its last connection attempt failed (it may be back from ejection, but
    /// has not worked since).
    pub(crate) fn on_probation(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// Claims the endpoint's probe: true for one caller until [`EndpointState::probed`].
    pub(crate) fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The probe ended.
    pub(crate) fn probed(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Whether its active health checks pass (true when it has none).
    pub(crate) fn actively_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_actively_healthy(&self, healthy: bool) {
        self.active_healthy.store(healthy, Ordering::Relaxed);
    }

    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .expect("eject lock")
            .is_none_or(|t| now >= t)
    }

    /// Records a latency sample: peaks count at once, lower values decay in.
    pub(crate) fn observe(&self, rtt: Duration) {
        let sample = rtt.as_nanos() as f64;
        let mut g = self.ewma.lock().expect("ewma lock");
        let now = Instant::now();
        let elapsed = now.duration_since(g.1).as_secs_f64();
        let decay = self.decay_ns.load(Ordering::Relaxed).max(1) as f64 / 1e9;
        let w = (-elapsed / decay).exp();
        g.0 = if sample > g.0 {
            sample
        } else {
            g.0 * w + sample * (1.0 - w)
        };
        g.1 = now;
    }

    /// A connection worked: the endpoint is healthy again.
    pub(crate) fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.ejected_until.lock().expect("eject lock") = None;
        }
    }

    /// A connection failed: eject for 1 s, 2 s, 4 s ... up to 30 s.
    pub(crate) fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = Duration::from_secs(1 << (n - 1).min(5)).min(Duration::from_secs(30));
        *self.ejected_until.lock().expect("eject lock") = Some(Instant::now() + backoff);
        tracing::info!(endpoint = %format!("{}:{}", self.endpoint.address, self.endpoint.port), sni = self.endpoint.sni.as_deref().unwrap_or(""), failures = n, ?backoff, "endpoint ejected");
    }

    fn cost(&self, kind: LoadBalancerType) -> f64 {
        let active = self.active.load(Ordering::Relaxed) as f64;
        let weight = f64::from(self.endpoint.weight.max(1));
        match kind {
            LoadBalancerType::LeastRequest => active / weight,
            _ => self.ewma.lock().expect("ewma lock").0 * (active + 1.0) / weight,
        }
    }
}

/// MeshLoadBalancingStrategy `localZone.affinityTags`: the class that takes a pick,
/// drawn by `roll` among the classes of `c` by their weights. `None` when the candidates
/// have no classes, or some have none (the local zone spills over to other zones: the
/// pick is among all of them).
fn affinity_class(c: &[&Arc<EndpointState>], roll: u64) -> Option<u32> {
    let mut classes: Vec<(u32, u64)> = Vec::new();
    for e in c {
        let a = e.endpoint.affinity?;
        if !classes.iter().any(|(class, _)| *class == a.class) {
            classes.push((a.class, u64::from(a.weight.max(1))));
        }
    }
    let total: u64 = classes.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    classes.sort_unstable();
    let mut pick = roll % total;
    for (class, weight) in classes {
        if pick < weight {
            return Some(class);
        }
        pick -= weight;
    }
    None
}

/// Where a keyed pick looks an endpoint up.
enum HashTable {
    Ring(crate::hash::Ring),
    Maglev(crate::hash::Maglev),
}

impl HashTable {
    fn pick(&self, key: u64, takes: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(r) => r.pick(key, takes),
            HashTable::Maglev(m) => m.pick(key, takes),
        }
    }
}

/// The endpoints of one destination.
pub(crate) struct Balancer {
    kind: LoadBalancerType,
    /// Fraction of a group that must be healthy for it to take all traffic.
    threshold: f64,
    groups: Vec<(String, Vec<Arc<EndpointState>>)>,
    next: AtomicUsize,
    /// LeastRequest: endpoints compared per pick.
    choice_count: usize,
    /// With active health checks: the percent of endpoints that must pass them for the
    /// verdicts to count (below it, every endpoint is used as if they passed).
    health_panic: Option<u32>,
    /// MeshCircuitBreaker: outlier detection and the caps on what is in flight.
    outliers: Option<OutlierDetection>,
    requests: Option<(u32, Limit)>,
    pending: Option<(u32, Limit)>,
    connections: Option<Limit>,
    retries: Option<Limit>,
    /// When the interval-based detectors judge next (set by the first answer).
    next_judgement: Mutex<Option<Instant>>,
    /// MeshRetry's budget for requests to this destination.
    retry_budget: Arc<Budget>,
    /// MeshRetry's retriable request and response headers, compiled.
    retry_headers: HeaderRules,
    /// RingHash or Maglev: the endpoints on their ring or table (indexes into the list
    /// beside it).
    ring: Option<(HashTable, Vec<Arc<EndpointState>>)>,
}

impl Balancer {
    /// Builds a balancer, reusing the state (stats, pools) of endpoints `old` had.
    pub(crate) fn new(
        kind: LoadBalancerType,
        threshold_percent: f64,
        groups: &[EndpointGroup],
        old: Option<&Balancer>,
    ) -> Balancer {
        let find = |e: &Endpoint| {
            old.and_then(|o| {
                o.groups
                    .iter()
                    .flat_map(|(_, es)| es.iter())
                    .find(|s| s.endpoint == *e)
                    .cloned()
            })
        };
        Balancer {
            kind,
            threshold: (threshold_percent / 100.0).clamp(0.0, 1.0),
            groups: groups
                .iter()
                .map(|g| {
                    (
                        g.zone.clone(),
                        g.endpoints
                            .iter()
                            .map(|e| {
                                find(e).unwrap_or_else(|| Arc::new(EndpointState::new(e.clone())))
                            })
                            .collect(),
                    )
                })
                .collect(),
            next: AtomicUsize::new(0),
            choice_count: 2,
            health_panic: None,
            outliers: None,
            requests: None,
            pending: None,
            connections: None,
            retries: None,
            next_judgement: Mutex::new(None),
            retry_budget: Arc::new(Budget::new(Retry::default_policy().budget)),
            retry_headers: HeaderRules::default(),
            ring: None,
        }
    }

    /// RingHash: places the endpoints on a ring (see [`crate::hash`]), so a keyed pick
    /// ([`Balancer::pick_keyed`]) sticks.
    pub(crate) fn with_ring(self, cfg: &causeway_api::proxy_config::RingHashConfig) -> Balancer {
        self.with_table(|ids| HashTable::Ring(crate::hash::Ring::new(cfg, ids)))
    }

    /// Maglev: a lookup table of the endpoints (see [`crate::hash::Maglev`]).
    pub(crate) fn with_maglev(self, cfg: &causeway_api::proxy_config::MaglevConfig) -> Balancer {
        self.with_table(|ids| HashTable::Maglev(crate::hash::Maglev::new(cfg.table_size, ids)))
    }

    fn with_table(
        mut self,
        build: impl FnOnce(&mut dyn Iterator<Item = (&str, u32)>) -> HashTable,
    ) -> Balancer {
        let endpoints: Vec<Arc<EndpointState>> = self.endpoints().cloned().collect();
        // An endpoint's identity on the ring: its address, and the SNI that names it
        // behind another zone's ingress.
        let ids: Vec<(String, u32)> = endpoints
            .iter()
            .map(|e| {
                let ep = &e.endpoint;
                let id = format!(
                    "{}:{}/{}",
                    ep.address,
                    ep.port,
                    ep.sni.as_deref().unwrap_or("")
                );
                (id, ep.weight)
            })
            .collect();
        let table = build(&mut ids.iter().map(|(id, w)| (id.as_str(), *w)));
        self.ring = Some((table, endpoints));
        self
    }

    /// MeshLoadBalancingStrategy's `leastRequest.choiceCount` and `peakEwma.decayTime`
    /// (the decay lives on each endpoint, which keeps its latency across rebuilds).
    pub(crate) fn with_choices(mut self, choice_count: u32, decay: Duration) -> Balancer {
        self.choice_count = (choice_count as usize).max(2);
        for e in self.endpoints() {
            e.decay_ns.store(decay.as_nanos() as u64, Ordering::Relaxed);
        }
        self
    }

    /// Sets the retry budget (kept across rebuilds by the caller).
    pub(crate) fn with_retry_budget(mut self, budget: Arc<Budget>) -> Balancer {
        self.retry_budget = budget;
        self
    }

    pub(crate) fn retry_budget(&self) -> Arc<Budget> {
        self.retry_budget.clone()
    }

    /// Sets the retriable headers (compiled from the config).
    pub(crate) fn with_retry_headers(mut self, headers: HeaderRules) -> Balancer {
        self.retry_headers = headers;
        self
    }

    pub(crate) fn retry_headers(&self) -> &HeaderRules {
        &self.retry_headers
    }

    /// Applies a MeshCircuitBreaker: caps and outlier detection. The caps count from
    /// zero in each new balancer (a config update), which at worst lets one update's
    /// worth of requests past them.
    pub(crate) fn with_circuit_breaker(mut self, cb: &CircuitBreaker) -> Balancer {
        self.outliers = cb.outlier_detection.clone();
        self.requests = cb.max_requests.map(|m| (m, Limit::new(m)));
        self.connections = cb.max_connections.map(Limit::new);
        self.retries = cb.max_retries.map(Limit::new);
        self.pending = cb.max_pending_requests.map(|m| (m, Limit::new(m)));
        self
    }

    /// Admits a request waiting for a connection under `maxPendingRequests`:
    /// `Err(max)` when that many wait.
    pub(crate) fn admit_pending(&self) -> Result<Option<Admitted<'_>>, u32> {
        match &self.pending {
            None => Ok(None),
            Some((max, limit)) => limit.admit().map(Some).ok_or(*max),
        }
    }

    /// Admits a retry under `maxRetries`: `Err(())` when that many are in flight.
    pub(crate) fn admit_retry(&self) -> Result<Option<Admitted<'_>>, ()> {
        match &self.retries {
            None => Ok(None),
            Some(limit) => limit.admit().map(Some).ok_or(()),
        }
    }

    /// Admits a request under `maxRequests`: `Err(max)` when that many are in flight.
    pub(crate) fn admit_request(&self) -> Result<Option<Admitted<'_>>, u32> {
        match &self.requests {
            None => Ok(None),
            Some((max, limit)) => limit.admit().map(Some).ok_or(*max),
        }
    }

    /// Admits a TCP connection under `maxConnections`: `None` when over it.
    pub(crate) fn admit_connection(&self) -> Result<Option<Admitted<'_>>, ()> {
        match &self.connections {
            None => Ok(None),
            Some(limit) => limit.admit().map(Some).ok_or(()),
        }
    }

    /// Records an endpoint's answer for outlier detection; how many endpoints were
    /// ejected for it (this one for a streak, any for the interval's judgement).
    pub(crate) fn record(&self, ep: &EndpointState, outcome: Outcome) -> usize {
        self.record_at(ep, outcome, Instant::now())
    }

    /// [`Balancer::record`] at `now`.
    fn record_at(&self, ep: &EndpointState, outcome: Outcome, now: Instant) -> usize {
        let Some(od) = self.outliers.as_ref() else {
            return 0;
        };
        let mut ejected = 0;
        if od.success_rate.is_some() || od.failure_percentage.is_some() {
            ep.tally
                .lock()
                .expect("tally lock")
                .count(outcome, od.split_local_errors);
            ejected += self.judge(od, now);
        }
        if ep.streaks.lock().expect("streaks lock").record(outcome, od)
            && self.eject(ep, od, now, "failures in a row").is_some()
        {
            ejected += 1;
        }
        ejected
    }

    /// Once an interval has passed since the last judgement: the interval-based
    /// detectors judge every endpoint on its answers since, and their outliers are
    /// ejected. How many were.
    fn judge(&self, od: &OutlierDetection, now: Instant) -> usize {
        {
            let mut next = self.next_judgement.lock().expect("judgement lock");
            let due = next.is_some_and(|t| now >= t);
            if next.is_none() || due {
                *next = Some(now + od.interval.as_std());
            }
            if !due {
                return 0;
            }
        }
        let all: Vec<&Arc<EndpointState>> = self.endpoints().collect();
        let tallies: Vec<Tally> = all
            .iter()
            .map(|e| std::mem::take(&mut *e.tally.lock().expect("tally lock")))
            .collect();
        outliers(
            &tallies,
            od.success_rate.as_ref(),
            od.failure_percentage.as_ref(),
        )
        .into_iter()
        .filter(|&i| {
            self.eject(all[i], od, now, "its success rate or share of failures")
                .is_some()
        })
        .count()
    }

    /// Ejects an outlier unless it is out already or `maxEjectionPercent` forbids; the
    /// ejection's length when it was.
    fn eject(
        &self,
        ep: &EndpointState,
        od: &OutlierDetection,
        now: Instant,
        why: &'static str,
    ) -> Option<Duration> {
        let all: Vec<&Arc<EndpointState>> = self.endpoints().collect();
        let ejected = all.iter().filter(|e| !e.healthy(now)).count();
        if !ep.healthy(now) || !may_eject(ejected, all.len(), od.max_ejection_percent) {
            return None;
        }
        let n = ep.outlier_ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = ejection_time(od.base_ejection_time.as_std(), n);
        *ep.ejected_until.lock().expect("eject lock") = Some(now + time);
        tracing::warn!(endpoint = %format!("{}:{}", ep.endpoint.address, ep.endpoint.port), sni = ep.endpoint.sni.as_deref().unwrap_or(""), ejections = n, ?time, why, "outlier ejected");
        Some(time)
    }

    /// Makes active health verdicts count, while at least `panic_threshold` percent of
    /// the endpoints pass their checks.
    pub(crate) fn with_health_checks(mut self, panic_threshold: u32) -> Balancer {
        self.health_panic = Some(panic_threshold);
        self
    }

    /// Every endpoint, in priority order.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.groups.iter().flat_map(|(_, g)| g.iter())
    }

    /// Whether active health verdicts count now (checks on, and not in panic).
    fn checks_count(&self) -> bool {
        let Some(threshold) = self.health_panic else {
            return false;
        };
        let (mut all, mut passing) = (0u64, 0u64);
        for e in self.endpoints() {
            all += 1;
            passing += u64::from(e.actively_healthy());
        }
        passing * 100 >= u64::from(threshold) * all
    }

    /// Drops every pooled connection (after a trust change).
    pub(crate) async fn reset_pools(&self) {
        for (_, g) in &self.groups {
            for e in g {
                e.pool.reset();
            }
        }
    }

    /// Picks an endpoint, skipping `exclude`: from the first group whose healthy share
    /// meets the threshold; a group below it shares the traffic with the next ones
    /// (healthy endpoints only) until one meets it. When every endpoint is ejected,
    /// tries them anyway (better a retry than nothing).
    pub(crate) fn pick(&self, exclude: &[Arc<EndpointState>]) -> Option<Arc<EndpointState>> {
        self.pick_keyed(exclude, None)
    }

    /// [`Balancer::pick`] for a request with a RingHash key: among the endpoints the
    /// pick would consider, the one the key lands on in the ring.
    pub(crate) fn pick_keyed(
        &self,
        exclude: &[Arc<EndpointState>],
        key: Option<u64>,
    ) -> Option<Arc<EndpointState>> {
        let now = Instant::now();
        let excluded = |e: &Arc<EndpointState>| exclude.iter().any(|x| Arc::ptr_eq(x, e));
        let checks_count = self.checks_count();
        let usable = |e: &Arc<EndpointState>| {
            e.healthy(now) && (!checks_count || e.actively_healthy()) && !excluded(e)
        };
        let mut candidates: Vec<&Arc<EndpointState>> = Vec::new();
        for (_, group) in &self.groups {
            let before = candidates.len();
            candidates.extend(group.iter().filter(|e| usable(e)));
            let healthy = candidates.len() - before;
            if !group.is_empty()
                && healthy as f64 >= self.threshold * group.len() as f64
                && healthy > 0
            {
                break;
            }
        }
        if let Some(e) = self.choose_keyed(&candidates, key) {
            return Some(e.clone());
        }
        let all: Vec<&Arc<EndpointState>> = self.endpoints().filter(|e| !excluded(e)).collect();
        self.choose_keyed(&all, key).cloned()
    }

    /// With a key and a ring, the candidate the key lands on; else [`Self::choose`].
    /// With affinity classes, first a class by weight (by the key, so a key keeps its
    /// class), then a candidate of it.
    fn choose_keyed<'a>(
        &self,
        c: &[&'a Arc<EndpointState>],
        key: Option<u64>,
    ) -> Option<&'a Arc<EndpointState>> {
        let classed;
        let c = match affinity_class(c, key.unwrap_or_else(rand::random)) {
            Some(class) => {
                classed = c
                    .iter()
                    .filter(|e| e.endpoint.affinity.map(|a| a.class) == Some(class))
                    .copied()
                    .collect::<Vec<_>>();
                classed.as_slice()
            }
            None => c,
        };
        if let (Some(key), Some((ring, on_ring))) = (key, &self.ring) {
            let takes = |i: usize| c.iter().any(|e| Arc::ptr_eq(e, &on_ring[i]));
            if let Some(i) = ring.pick(key, takes) {
                return c.iter().find(|e| Arc::ptr_eq(e, &on_ring[i])).copied();
            }
        }
        self.choose(c)
    }

    fn choose<'a>(&self, c: &[&'a Arc<EndpointState>]) -> Option<&'a Arc<EndpointState>> {
        match c.len() {
            0 => None,
            1 => Some(c[0]),
            n => match self.kind {
                // By weight: an ingress with three instances behind it takes three shares.
                LoadBalancerType::RoundRobin => {
                    weighted(c, self.next.fetch_add(1, Ordering::Relaxed) as u64)
                }
                LoadBalancerType::Random
                | LoadBalancerType::RingHash
                | LoadBalancerType::Maglev => weighted(c, rand::random::<u64>()),
                LoadBalancerType::LeastRequest if self.choice_count > 2 && n > 2 => {
                    // choiceCount endpoints at random (all of them when there are no
                    // more), the least loaded of those.
                    let k = self.choice_count.min(n);
                    rand::seq::index::sample(&mut rand::rng(), n, k)
                        .into_iter()
                        .map(|i| c[i])
                        .min_by(|a, b| {
                            a.cost(self.kind)
                                .partial_cmp(&b.cost(self.kind))
                                .unwrap_or(std::cmp::Ordering::Equal)
                        })
                }
                kind => {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    Some(if c[a].cost(kind) <= c[b].cost(kind) {
                        c[a]
                    } else {
                        c[b]
                    })
                }
            },
        }
    }
}

// === reports (causeway inspect dataplane) ===

impl EndpointState {
    /// Its health as `causeway inspect dataplane` shows it, at `now` (the wall clock
    /// at `now` is `now_unix_ms`). Only what changes rarely, so that a report differs
    /// from the last one only when something happened.
    fn report(
        &self,
        zone: &str,
        checked: bool,
        now: Instant,
        now_unix_ms: i64,
    ) -> causeway_api::inspect::EndpointReport {
        use causeway_api::inspect::{Ejection, EndpointReport, HealthCheckState};
        let failures = self.failures.load(Ordering::Relaxed);
        let ejection = self
            .ejected_until
            .lock()
            .expect("eject lock")
            .filter(|until| *until > now)
            .map(|until| Ejection {
                // Rounded up to the second, so that one ejection reads the same in
                // every report.
                until: (now_unix_ms + until.duration_since(now).as_millis() as i64 + 999) / 1000,
                reason: if failures > 0 {
                    "failed connections".into()
                } else {
                    "outlier detection".into()
                },
            });
        let health_check = checked.then(|| {
            if self.actively_healthy() {
                HealthCheckState::Passing
            } else {
                HealthCheckState::Failing
            }
        });
        EndpointReport {
            address: self.endpoint.address.clone(),
            port: self.endpoint.port,
            zone: zone.to_owned(),
            sni: self.endpoint.sni.clone(),
            healthy: ejection.is_none() && health_check != Some(HealthCheckState::Failing),
            health_check,
            ejection,
            connect_failures: failures,
            outlier_ejections: self.outlier_ejections.load(Ordering::Relaxed),
        }
    }
}

impl Balancer {
    /// Every endpoint's health, in priority order (see [`EndpointState::report`]).
    pub(crate) fn report(
        &self,
        now: Instant,
        now_unix_ms: i64,
    ) -> Vec<causeway_api::inspect::EndpointReport> {
        let checked = self.health_panic.is_some();
        self.groups
            .iter()
            .flat_map(|(zone, g)| g.iter().map(move |e| (zone, e)))
            .map(|(zone, e)| e.report(zone, checked, now, now_unix_ms))
            .collect()
    }
}

/// The endpoint at position `at` (modulo the total weight) when each takes as many
/// positions as its weight.
fn weighted<'a>(c: &[&'a Arc<EndpointState>], at: u64) -> Option<&'a Arc<EndpointState>> {
    let total: u64 = c.iter().map(|e| u64::from(e.endpoint.weight.max(1))).sum();
    let mut at = at % total.max(1);
    for e in c {
        let w = u64::from(e.endpoint.weight.max(1));
        if at < w {
            return Some(e);
        }
        at -= w;
    }
    c.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str) -> Endpoint {
        Endpoint {
            address: addr.into(),
            port: 1,
            weight: 1,
            sni: None,
            quic: false,
            tags: Default::default(),
            affinity: None,
        }
    }

    fn groups() -> Vec<EndpointGroup> {
        vec![
            EndpointGroup {
                zone: "a".into(),
                endpoints: vec![ep("a1"), ep("a2")],
            },
            EndpointGroup {
                zone: "b".into(),
                endpoints: vec![ep("b1")],
            },
        ]
    }

    /// Affinity classes 90 : 9 : 1 take about that share of picks, whatever the
    /// balancer; a keyed pick keeps its class; with another zone's endpoints among the
    /// candidates (spillover) the classes no longer apply.
    #[test]
    fn affinity_classes_share_picks_by_weight() {
        let with = |addr: &str, class: u32, weight: u32| {
            let mut e = ep(addr);
            e.affinity = Some(causeway_api::proxy_config::Affinity { class, weight });
            e
        };
        let local = EndpointGroup {
            zone: "a".into(),
            endpoints: vec![
                with("node", 0, 90),
                with("az-1", 1, 9),
                with("az-2", 1, 9),
                with("rest", 2, 1),
            ],
        };
        for kind in [LoadBalancerType::RoundRobin, LoadBalancerType::PeakEwma] {
            let b = Balancer::new(kind, 50.0, std::slice::from_ref(&local), None);
            let mut counts = std::collections::BTreeMap::new();
            for _ in 0..10_000 {
                let e = b.pick(&[]).unwrap();
                *counts.entry(e.endpoint.address.clone()).or_insert(0) += 1;
            }
            let node = counts["node"];
            let az = counts["az-1"] + counts["az-2"];
            assert!((8800..=9400).contains(&node), "{kind:?}: {counts:?}");
            assert!((700..=1100).contains(&az), "{kind:?}: {counts:?}");
            assert!(
                counts.get("rest").copied().unwrap_or(0) < 250,
                "{kind:?}: {counts:?}"
            );
            // The two of a class share it.
            assert!(counts["az-1"] > 200 && counts["az-2"] > 200, "{counts:?}");
        }
        let b = Balancer::new(
            LoadBalancerType::Random,
            50.0,
            std::slice::from_ref(&local),
            None,
        );
        for key in 0..100u64 {
            let first = b.pick_keyed(&[], Some(key)).unwrap();
            let class = first.endpoint.affinity.unwrap().class;
            for _ in 0..5 {
                let again = b.pick_keyed(&[], Some(key)).unwrap();
                assert_eq!(again.endpoint.affinity.unwrap().class, class);
            }
        }
        let a = |addr: &str| ep(addr);
        let mixed = [with("node", 0, 90), a("remote")];
        let states: Vec<Arc<EndpointState>> = mixed
            .iter()
            .map(|e| Arc::new(EndpointState::new(e.clone())))
            .collect();
        let refs: Vec<&Arc<EndpointState>> = states.iter().collect();
        assert_eq!(affinity_class(&refs, 0), None);
    }

    #[test]
    fn a_report_shows_each_endpoints_zone_health_and_ejection_and_reads_the_same_until_it_changes()
    {
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), None)
            .with_health_checks(50);
        let now = Instant::now();
        let healthy = b.report(now, 1_000_000);
        assert_eq!(healthy.len(), 3);
        assert_eq!(
            healthy
                .iter()
                .map(|e| (e.address.as_str(), e.zone.as_str()))
                .collect::<Vec<_>>(),
            [("a1", "a"), ("a2", "a"), ("b1", "b")]
        );
        assert!(healthy.iter().all(|e| e.healthy && e.ejection.is_none()));
        assert_eq!(
            healthy[0].health_check,
            Some(causeway_api::inspect::HealthCheckState::Passing)
        );

        b.groups[0].1[0].failed();
        b.groups[0].1[1].set_actively_healthy(false);
        let now = Instant::now();
        let r = b.report(now, 1_000_000);
        assert!(!r[0].healthy);
        assert_eq!(r[0].connect_failures, 1);
        let ejection = r[0]
            .ejection
            .clone()
            .expect("ejected after a connect failure");
        assert_eq!(ejection.reason, "failed connections");
        assert_eq!(ejection.until, 1_001, "1 s after the failure, rounded up");
        assert!(!r[1].healthy && r[1].ejection.is_none());
        assert_eq!(
            r[1].health_check,
            Some(causeway_api::inspect::HealthCheckState::Failing)
        );
        // Sampled again a little later (the wall clock moved as much): the same report.
        let later = now + Duration::from_millis(300);
        assert_eq!(b.report(later, 1_000_300), r);
        // Once the ejection is over, it is not shown any more.
        assert!(
            b.report(now + Duration::from_secs(2), 1_002_000)[0]
                .ejection
                .is_none()
        );
    }

    #[test]
    fn local_zone_first_then_failover_when_ejected() {
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), None);
        for _ in 0..10 {
            assert!(b.pick(&[]).unwrap().endpoint.address.starts_with('a'));
        }
        for e in &b.groups[0].1 {
            e.failed();
        }
        assert_eq!(b.pick(&[]).unwrap().endpoint.address, "b1");
        b.groups[0].1[0].succeeded();
        assert_eq!(b.pick(&[]).unwrap().endpoint.address, "a1");
    }

    #[test]
    fn below_the_threshold_the_next_zone_shares_the_traffic() {
        let three = vec![
            EndpointGroup {
                zone: "a".into(),
                endpoints: vec![ep("a1"), ep("a2"), ep("a3")],
            },
            EndpointGroup {
                zone: "b".into(),
                endpoints: vec![ep("b1")],
            },
        ];
        let picks = |b: &Balancer| -> std::collections::BTreeSet<String> {
            (0..50)
                .map(|_| b.pick(&[]).unwrap().endpoint.address.clone())
                .collect()
        };
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &three, None);
        b.groups[0].1[0].failed();
        // 2 of 3 healthy (67% >= 50%): zone a alone.
        assert_eq!(picks(&b), ["a2", "a3"].map(String::from).into());
        b.groups[0].1[1].failed();
        // 1 of 3 (33% < 50%): a3 and zone b share.
        assert_eq!(picks(&b), ["a3", "b1"].map(String::from).into());
        // With a 30% threshold, a3 alone suffices.
        let low = Balancer::new(LoadBalancerType::RoundRobin, 30.0, &three, Some(&b));
        assert_eq!(picks(&low), ["a3"].map(String::from).into());
    }

    #[test]
    fn failed_health_checks_take_an_endpoint_out_unless_most_fail() {
        let picks = |b: &Balancer| -> std::collections::BTreeSet<String> {
            (0..50)
                .map(|_| b.pick(&[]).unwrap().endpoint.address.clone())
                .collect()
        };
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), None)
            .with_health_checks(50);
        b.groups[0].1[0].set_actively_healthy(false);
        // a1 fails its checks: a2 alone (2 of 3 pass, above the panic threshold).
        assert_eq!(picks(&b), ["a2"].map(String::from).into());
        // Without checks configured, a verdict does not count.
        let unchecked = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), Some(&b));
        assert_eq!(picks(&unchecked), ["a1", "a2"].map(String::from).into());
        // a2 fails too: 1 of 3 pass, below 50%: panic, the checks are ignored.
        b.groups[0].1[1].set_actively_healthy(false);
        assert_eq!(picks(&b), ["a1", "a2"].map(String::from).into());
        // With a panic threshold of 30%, zone b takes the traffic instead.
        let strict = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), Some(&b))
            .with_health_checks(30);
        assert_eq!(picks(&strict), ["b1"].map(String::from).into());
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint_and_state_survives_rebuilds() {
        let b = Balancer::new(LoadBalancerType::PeakEwma, 50.0, &groups(), None);
        b.groups[0].1[0].observe(Duration::from_millis(50));
        b.groups[0].1[1].observe(Duration::from_micros(200));
        let fast = (0..100)
            .filter(|_| b.pick(&[]).unwrap().endpoint.address == "a2")
            .count();
        assert_eq!(fast, 100, "with two endpoints P2C always compares both");
        let rebuilt = Balancer::new(LoadBalancerType::PeakEwma, 50.0, &groups(), Some(&b));
        assert!(Arc::ptr_eq(&rebuilt.groups[0].1[0], &b.groups[0].1[0]));
        assert_eq!(rebuilt.pick(&[]).unwrap().endpoint.address, "a2");
        // Excluding the fast one (a retry) gives the other.
        assert_eq!(
            rebuilt
                .pick(&[rebuilt.groups[0].1[1].clone()])
                .unwrap()
                .endpoint
                .address,
            "a1"
        );
    }

    fn circuit_breaker(cb: serde_json::Value) -> CircuitBreaker {
        serde_json::from_value(cb).unwrap()
    }

    #[test]
    fn a_failure_share_judged_each_interval_ejects_the_outlier() {
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), None)
            .with_circuit_breaker(&circuit_breaker(serde_json::json!({
                "outlierDetection": {"baseEjectionTime": "30s", "maxEjectionPercent": 50, "splitLocalErrors": false,
                                     "interval": "10s",
                                     "failurePercentage": {"minimumHosts": 3, "requestVolume": 10, "threshold": 50}}})));
        let [a1, a2, b1] = [&b.groups[0].1[0], &b.groups[0].1[1], &b.groups[1].1[0]];
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            b.record_at(a1, Outcome::Status(200), t0),
            0,
            "starts the interval"
        );
        // In the interval: a1 fails 3 of 12, a2 5 of 12 (never in a run long enough
        // for a streak detector, which are off anyway), b1 all 12.
        for i in 0..12 {
            for (ep, failed) in [(a1, i % 4 == 0), (a2, i % 2 == 0 && i < 10), (b1, true)] {
                let status = if failed { 503 } else { 200 };
                assert_eq!(b.record_at(ep, Outcome::Status(status), at(1)), 0);
            }
        }
        // The interval is over: the next answer judges it.
        assert_eq!(b.record_at(a1, Outcome::Status(200), at(11)), 1);
        assert!(!b1.healthy(at(11)), "b1 failed every answer: ejected");
        assert!(a1.healthy(at(11)) && a2.healthy(at(11)));
        // The next interval starts from zero: b1's old failures do not count again.
        assert_eq!(b.record_at(a2, Outcome::Status(200), at(22)), 0);
    }

    #[test]
    fn pending_and_retry_caps_admit_up_to_their_max() {
        let b = Balancer::new(LoadBalancerType::RoundRobin, 50.0, &groups(), None)
            .with_circuit_breaker(&circuit_breaker(serde_json::json!({
                "maxPendingRequests": 1, "maxRetries": 2})));
        let p = b.admit_pending().unwrap();
        assert_eq!(b.admit_pending().err(), Some(1));
        drop(p);
        assert!(b.admit_pending().is_ok());
        let (r1, r2) = (b.admit_retry().unwrap(), b.admit_retry().unwrap());
        assert!(b.admit_retry().is_err());
        drop((r1, r2));
        assert!(b.admit_retry().is_ok());
    }

    #[test]
    fn round_robin_and_random_follow_endpoint_weights() {
        let mut heavy = ep("a1");
        heavy.weight = 3;
        let groups = vec![EndpointGroup {
            zone: "a".into(),
            endpoints: vec![heavy, ep("a2")],
        }];
        for kind in [LoadBalancerType::RoundRobin, LoadBalancerType::Random] {
            let b = Balancer::new(kind, 50.0, &groups, None);
            let a1 = (0..4000)
                .filter(|_| b.pick(&[]).unwrap().endpoint.address == "a1")
                .count();
            assert!(
                (2800..=3200).contains(&a1),
                "{kind:?}: a1 took {a1} of 4000"
            );
        }
    }

    #[test]
    fn least_request_compares_choice_count_endpoints() {
        let groups = vec![EndpointGroup {
            zone: "a".into(),
            endpoints: (0..5).map(|i| ep(&format!("a{i}"))).collect(),
        }];
        // Four endpoints busy, one idle: comparing all five always finds the idle one;
        // two at a time mostly miss it.
        let busy = |b: &Balancer| {
            for e in &b.groups[0].1[1..] {
                e.active.store(10, Ordering::Relaxed);
            }
        };
        let all = Balancer::new(LoadBalancerType::LeastRequest, 50.0, &groups, None)
            .with_choices(5, EWMA_DECAY);
        busy(&all);
        assert!((0..200).all(|_| all.pick(&[]).unwrap().endpoint.address == "a0"));
        let two = Balancer::new(LoadBalancerType::LeastRequest, 50.0, &groups, None);
        busy(&two);
        let idle = (0..1000)
            .filter(|_| two.pick(&[]).unwrap().endpoint.address == "a0")
            .count();
        assert!(
            idle < 600,
            "two choices found the idle one {idle} times of 1000"
        );
    }

    #[test]
    fn a_shorter_decay_forgets_a_peak_sooner() {
        let b = Balancer::new(LoadBalancerType::PeakEwma, 50.0, &groups(), None)
            .with_choices(2, Duration::from_millis(1));
        let e = &b.groups[0].1[0];
        e.observe(Duration::from_millis(100));
        // Backdate the last sample: with a 1 ms decay, 50 ms later the peak is gone.
        e.ewma.lock().unwrap().1 -= Duration::from_millis(50);
        e.observe(Duration::from_micros(100));
        let now = e.ewma.lock().unwrap().0;
        assert!(now < 200_000.0, "{now} ns");
    }
}
