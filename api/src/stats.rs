//! Cross-zone golden signals without Prometheus: success rate, request rate and latency
//! percentiles per service, per zone and per service pair.
//!
//! Sidecars count per (direction, service, peer, peer zone) and send the deltas to their
//! zone control plane every few seconds (`ProxyStats` on DDS). The zone folds them into
//! fixed-size rings ([`Aggregator`]) and reports the 1-, 5- and 15-minute windows up over
//! KDS at each heartbeat (`ZoneStats`). The global control plane keeps each zone's last
//! report and merges them into the views ([`rows`]) that `GET /meshes/{mesh}/stats`
//! serves and `causeway stat` shows.
//!
//! Memory stays bounded: a signal's rings are fixed arrays ([`SIGNAL_BYTES`] in the
//! zone), a zone tracks at most [`MAX_SIGNALS`] of them (more are counted as dropped),
//! and a signal without traffic for 15 minutes is forgotten.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Latency bucket bounds, seconds: the sidecar's Prometheus histogram and these
/// summaries share them.
pub const LATENCY_BOUNDS_SECONDS: [f64; 25] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Latency buckets: one per bound, and one past the last.
pub const BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

/// The bucket of a latency: the first whose bound is at least it.
pub fn bucket(seconds: f64) -> usize {
    LATENCY_BOUNDS_SECONDS.partition_point(|b| *b < seconds)
}

/// How often a sidecar sends its deltas to its zone.
pub const PROXY_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Signals one zone tracks at most (all meshes); past it new ones are dropped and
/// counted, until old ones expire.
pub const MAX_SIGNALS: usize = 10_000;

/// Requests, failures and latency over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    /// Answers with a 5xx status, or gRPC calls that ended in a status other than OK.
    pub failures: u64,
    /// By the buckets of [`LATENCY_BOUNDS_SECONDS`] ([`BUCKETS`] long; shorter when
    /// empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len().min(BUCKETS), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a = a.saturating_add(*b);
        }
    }

    /// Successes per request, `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| 1.0 - self.failures.min(self.requests) as f64 / self.requests as f64)
    }

    /// The latency below which a share `q` (0 to 1) of requests finished, in seconds,
    /// interpolated within its bucket; `None` without requests. Past the last bound it
    /// is the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let Some(upper) = LATENCY_BOUNDS_SECONDS.get(i) else {
                    return LATENCY_BOUNDS_SECONDS.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_SECONDS[i - 1]
                };
                let within = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        LATENCY_BOUNDS_SECONDS.last().copied()
    }
}

/// What a zone aggregates over: one (mesh, direction, service, peer, peer zone) of its
/// proxies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalKey {
    pub mesh: String,
    /// `false`: `peer` called `service` (counted by the callee's sidecar); `true`:
    /// `service` called `peer` (counted by the caller's).
    pub outbound: bool,
    pub service: String,
    pub peer: String,
    /// The peer's zone where known (inbound: from the caller's certificate), else
    /// empty.
    pub peer_zone: String,
}

/// The windows a report carries, in this order.
pub const WINDOWS: [Window; 3] = [
    Window::OneMinute,
    Window::FiveMinutes,
    Window::FifteenMinutes,
];

/// A time window of the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    #[serde(rename = "1m")]
    OneMinute,
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "15m")]
    FifteenMinutes,
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        match s {
            "1m" => Ok(Window::OneMinute),
            "5m" => Ok(Window::FiveMinutes),
            "15m" => Ok(Window::FifteenMinutes),
            other => Err(format!("{other:?} is not a window: use 1m, 5m or 15m")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FiveMinutes => "5m",
            Window::FifteenMinutes => "15m",
        }
    }

    pub fn seconds(self) -> f64 {
        match self {
            Window::OneMinute => 60.0,
            Window::FiveMinutes => 300.0,
            Window::FifteenMinutes => 900.0,
        }
    }

    fn index(self) -> usize {
        match self {
            Window::OneMinute => 0,
            Window::FiveMinutes => 1,
            Window::FifteenMinutes => 2,
        }
    }
}

const SLOT_MS: u64 = 10_000;
const RECENT_SLOTS: usize = 6;
const MINUTE_MS: u64 = 60_000;
const MINUTE_SLOTS: usize = 15;

/// Counts of one slot of time. Latency counts are 32-bit (saturating): a slot holds a
/// minute at most, and they halve the rings' size.
#[derive(Clone, Copy)]
struct Slot {
    /// Which slot of time (ms since the epoch / the slot's length) this is.
    no: u64,
    requests: u64,
    failures: u64,
    latency: [u32; BUCKETS],
}

impl Slot {
    const EMPTY: Slot = Slot {
        no: u64::MAX,
        requests: 0,
        failures: 0,
        latency: [0; BUCKETS],
    };

    fn add(&mut self, no: u64, c: &Counts) {
        if self.no != no {
            *self = Slot { no, ..Slot::EMPTY };
        }
        self.requests = self.requests.saturating_add(c.requests);
        self.failures = self.failures.saturating_add(c.failures);
        for (a, b) in self.latency.iter_mut().zip(&c.latency) {
            *a = a.saturating_add(u32::try_from(*b).unwrap_or(u32::MAX));
        }
    }

    fn add_to(&self, out: &mut Counts) {
        out.requests += self.requests;
        out.failures += self.failures;
        if out.latency.len() < BUCKETS {
            out.latency.resize(BUCKETS, 0);
        }
        for (a, b) in out.latency.iter_mut().zip(&self.latency) {
            *a += u64::from(*b);
        }
    }
}

/// One signal's recent history: ten-second slots for the last minute, minute slots for
/// the last fifteen.
struct Rings {
    recent: [Slot; RECENT_SLOTS],
    minutes: [Slot; MINUTE_SLOTS],
    last_ms: u64,
}

/// The zone's memory per signal: its key's strings come on top.
pub const SIGNAL_BYTES: usize = std::mem::size_of::<Rings>();

/// Signals one sidecar report may carry; a sidecar has one per (direction, service,
/// peer, peer zone) it saw in a few seconds.
pub const MAX_SIGNALS_PER_REPORT: usize = 4096;

/// A zone's golden signals, from its proxies' deltas.
pub struct Aggregator {
    signals: HashMap<SignalKey, Box<Rings>>,
    max: usize,
    dropped: u64,
}

impl Default for Aggregator {
    fn default() -> Aggregator {
        Aggregator::new(MAX_SIGNALS)
    }
}

impl Aggregator {
    /// Tracks at most `max` signals.
    pub fn new(max: usize) -> Aggregator {
        Aggregator {
            signals: HashMap::new(),
            max,
            dropped: 0,
        }
    }

    /// Adds a proxy's delta for `key`, received at `now_ms` (ms since the epoch).
    pub fn record(&mut self, key: SignalKey, delta: &Counts, now_ms: u64) {
        if delta.requests == 0 {
            return;
        }
        let full = self.signals.len() >= self.max;
        let rings = match self.signals.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.dropped += 1;
                return;
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Box::new(Rings {
                recent: [Slot::EMPTY; RECENT_SLOTS],
                minutes: [Slot::EMPTY; MINUTE_SLOTS],
                last_ms: now_ms,
            })),
        };
        rings.last_ms = rings.last_ms.max(now_ms);
        let slot = now_ms / SLOT_MS;
        rings.recent[(slot % RECENT_SLOTS as u64) as usize].add(slot, delta);
        let minute = now_ms / MINUTE_MS;
        rings.minutes[(minute % MINUTE_SLOTS as u64) as usize].add(minute, delta);
    }

    /// Folds one sidecar's report (its `ProxyStats` over DDS), received at `now_ms`, for
    /// a proxy of `mesh` whose own services are `services`. What it cannot have counted
    /// is ignored: another service's signals, names no service could have, more than
    /// [`MAX_SIGNALS_PER_REPORT`] signals, latency buckets past [`BUCKETS`], and more
    /// failures than requests.
    pub fn record_report(
        &mut self,
        mesh: &str,
        services: &[String],
        stats: crate::kds::dds::ProxyStats,
        now_ms: u64,
    ) {
        for s in stats.signals.into_iter().take(MAX_SIGNALS_PER_REPORT) {
            let Some(c) = s.counts else { continue };
            let named = |n: &str| n.len() <= 253;
            if !services.contains(&s.service) || !named(&s.peer) || !named(&s.peer_zone) {
                continue;
            }
            let mut latency = c.latency;
            latency.truncate(BUCKETS);
            self.record(
                SignalKey {
                    mesh: mesh.to_owned(),
                    outbound: s.outbound,
                    service: s.service,
                    peer: s.peer,
                    peer_zone: s.peer_zone,
                },
                &Counts {
                    requests: c.requests,
                    failures: c.failures.min(c.requests),
                    latency,
                },
                now_ms,
            );
        }
    }

    /// Every signal's [`WINDOWS`] at `now_ms`, sorted by key; signals without traffic
    /// for fifteen minutes are forgotten first.
    pub fn windows(&mut self, now_ms: u64) -> Vec<(SignalKey, [Counts; 3])> {
        let horizon = MINUTE_MS * MINUTE_SLOTS as u64;
        self.signals
            .retain(|_, r| now_ms.saturating_sub(r.last_ms) < horizon);
        let slot = now_ms / SLOT_MS;
        let minute = now_ms / MINUTE_MS;
        let mut out: Vec<(SignalKey, [Counts; 3])> = self
            .signals
            .iter()
            .map(|(k, r)| {
                let mut w: [Counts; 3] = Default::default();
                for s in &r.recent {
                    if s.no <= slot && slot - s.no < RECENT_SLOTS as u64 {
                        s.add_to(&mut w[0]);
                    }
                }
                for s in &r.minutes {
                    if s.no <= minute && minute - s.no < 5 {
                        s.add_to(&mut w[1]);
                    }
                    if s.no <= minute && minute - s.no < MINUTE_SLOTS as u64 {
                        s.add_to(&mut w[2]);
                    }
                }
                (k.clone(), w)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Signals tracked now.
    pub fn len(&self) -> usize {
        self.signals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// Signals not tracked because the limit was reached, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A signal's windows as a zone reports them over KDS.
pub fn zone_signal(key: SignalKey, windows: [Counts; 3]) -> crate::kds::ZoneSignal {
    crate::kds::ZoneSignal {
        mesh: key.mesh,
        outbound: key.outbound,
        service: key.service,
        peer: key.peer,
        peer_zone: key.peer_zone,
        windows: windows
            .into_iter()
            .map(|c| crate::kds::WindowCounts {
                requests: c.requests,
                failures: c.failures,
                latency: c.latency,
            })
            .collect(),
    }
}

impl Signal {
    /// A signal `zone` reported over KDS.
    pub fn reported(zone: &str, s: &crate::kds::ZoneSignal) -> Signal {
        Signal {
            zone: zone.to_owned(),
            outbound: s.outbound,
            service: s.service.clone(),
            peer: s.peer.clone(),
            peer_zone: s.peer_zone.clone(),
            windows: s
                .windows
                .iter()
                .map(|w| Counts {
                    requests: w.requests,
                    failures: w.failures,
                    latency: w.latency.clone(),
                })
                .collect(),
        }
    }
}

/// One signal of one zone, as the global control plane holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    /// The zone of the proxies that counted it.
    pub zone: String,
    pub outbound: bool,
    pub service: String,
    pub peer: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_zone: String,
    /// Over [`WINDOWS`], in that order.
    pub windows: Vec<Counts>,
}

/// A zone's last report, as a global node holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneReport {
    pub zone: String,
    /// Seconds since the zone sent it.
    pub age_seconds: f64,
    /// Signals the zone dropped at its limit.
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub signals: Vec<Signal>,
    /// Endpoints (instances) of the zone that some of its proxies hold out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_endpoints: Vec<crate::instance_health::OutEndpoint>,
}

/// How [`rows`] groups signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// One row per service, as its sidecars served it, all zones together.
    Service,
    /// One row per service and zone it was served in.
    Zone,
    /// One row per service and caller (and the caller's zone), as the service's
    /// sidecars counted them.
    Caller,
    /// One row per service and what it called, as the service's sidecars counted
    /// them (failures include calls that never reached the callee).
    Callee,
}

impl By {
    pub fn parse(s: &str) -> Result<By, String> {
        match s {
            "service" => Ok(By::Service),
            "zone" => Ok(By::Zone),
            "caller" => Ok(By::Caller),
            "callee" => Ok(By::Callee),
            other => Err(format!(
                "{other:?} is not a grouping: use service, zone, caller or callee"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            By::Service => "service",
            By::Zone => "zone",
            By::Caller => "caller",
            By::Callee => "callee",
        }
    }
}

/// One line of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub service: String,
    /// The zone it was served in (by zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The caller (by caller) or the callee (by callee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The peer's zone, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_zone: Option<String>,
    pub requests: u64,
    pub failures: u64,
    /// Successes per request (0 to 1); absent without requests.
    pub success_rate: Option<f64>,
    pub requests_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of the requests (0 to 1) per zone of the service's sidecars that counted
    /// them.
    pub zones: BTreeMap<String, f64>,
}

/// What `GET /meshes/{mesh}/stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    pub mesh: String,
    pub window: Window,
    pub by: By,
    /// The zones whose reports went into it, with their age, without their signals.
    pub zones: Vec<ZoneReport>,
    /// Connected zones whose report could not be fetched, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing: BTreeMap<String, String>,
    pub rows: Vec<Row>,
}

/// Which signals a view shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this service's rows.
    pub service: Option<String>,
    /// Only what sidecars in this zone counted.
    pub zone: Option<String>,
}

/// Groups `signals` by `by` over `window`: sorted by service, then zone, then peer.
pub fn rows(signals: &[Signal], by: By, window: Window, filter: &Filter) -> Vec<Row> {
    type Group = (String, Option<String>, Option<String>, Option<String>);
    let mut groups: BTreeMap<Group, (Counts, BTreeMap<String, u64>)> = BTreeMap::new();
    for s in signals {
        if s.outbound != (by == By::Callee)
            || filter.service.as_ref().is_some_and(|f| *f != s.service)
            || filter.zone.as_ref().is_some_and(|z| *z != s.zone)
        {
            continue;
        }
        let Some(c) = s.windows.get(window.index()) else {
            continue;
        };
        if c.requests == 0 {
            continue;
        }
        let peer_zone = || (!s.peer_zone.is_empty()).then(|| s.peer_zone.clone());
        let key = match by {
            By::Service => (s.service.clone(), None, None, None),
            By::Zone => (s.service.clone(), Some(s.zone.clone()), None, None),
            By::Caller | By::Callee => (s.service.clone(), None, Some(s.peer.clone()), peer_zone()),
        };
        let (total, zones) = groups.entry(key).or_default();
        total.add(c);
        *zones.entry(s.zone.clone()).or_default() += c.requests;
    }
    groups
        .into_iter()
        .map(|((service, zone, peer, peer_zone), (c, zones))| {
            let ms = |q| c.quantile(q).map(|s| (s * 1e6).round() / 1e3);
            Row {
                service,
                zone,
                peer,
                peer_zone,
                requests: c.requests,
                failures: c.failures,
                success_rate: c.success_rate(),
                requests_per_second: c.requests as f64 / window.seconds(),
                p50_ms: ms(0.5),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
                zones: zones
                    .into_iter()
                    .map(|(z, n)| (z, n as f64 / c.requests as f64))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
