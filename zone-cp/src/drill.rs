//! Failover drills in a zone. A `Drill` comes from global over KDS; the zone acts on it
//! by its own clock, so a drill ends at its expiry even if nobody is watching:
//!
//! - in `Drain` mode, the drilled zone's ingresses refuse traffic while it runs (see
//!   `dds::serve_ingress`) and every other zone drops the drilled zone's endpoints from
//!   its configs (`drilled_zones` in the mesh inputs), like a disabled zone;
//! - in `Blackhole` mode, the drilled zone's ingresses go silent (no answer, no refusal)
//!   and nothing else changes: other zones keep its endpoints and must detect the
//!   outage from the data plane, which is what the drill measures;
//! - every other zone probes the drill's service from a few seconds before until a few
//!   seconds after, through an in-process sidecar (`causeway_dataplane::run_embedded`)
//!   with its own workload certificate, so the probe reaches the service exactly as the
//!   zone's sidecars do, and writes what it saw as a `DrillReport` that goes up to global.
//!
//! The state version is bumped at each drill's start and end so configs follow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::{
    DrillReportSpec, DrillSpec, MAX_TIMELINE_STEPS, PhaseStats, Resource, ResourceKey, TimelineStep,
};
use time::OffsetDateTime;

use crate::Shared;
use crate::store::{Store, StoreError};

/// The identity (service name) the probes call with: `spiffe://<trust-domain>/causeway-drill-probe`.
pub(crate) const PROBE_SERVICE: &str = "causeway-drill-probe";
/// Requests per second each probe sends.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A probe request without an answer in this long failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every drill this zone knows, by name.
pub(crate) fn drills(store: &Store) -> Result<Vec<(String, DrillSpec)>, StoreError> {
    let (items, _) = store.list("Drill", "", None, |_| true, usize::MAX)?;
    Ok(items
        .into_iter()
        .filter_map(|r| Some((r.name.clone(), serde_json::from_value(r.spec).ok()?)))
        .collect())
}

/// Keeps configs and probes in step with drills: bumps the state at every start and end,
/// and starts a probe for each drill that needs one from this zone.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut changes = shared.state.subscribe();
    let mut probes: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let now = OffsetDateTime::now_utc();
        let all = drills(&shared.store).unwrap_or_default();
        probes.retain(|_, h| !h.is_finished());
        for (name, d) in &all {
            let (from, until) = d.probe_window();
            if d.probe.is_some()
                && d.zone != shared.cfg.zone
                && now >= from
                && now < until
                && !probes.contains_key(name)
                && !report_done(&shared, name, d)
            {
                tracing::info!(drill = %name, zone = %d.zone, service = ?d.probe, "probing for a failover drill");
                probes.insert(
                    name.clone(),
                    tokio::spawn(probe(shared.clone(), name.clone(), d.clone())),
                );
            }
        }
        // The next moment something changes by the clock alone.
        let next = all
            .iter()
            .flat_map(|(_, d)| {
                let (from, until) = d.probe_window();
                [from, d.starts_at, d.end(), until]
            })
            .filter(|t| *t > now)
            .min();
        let sleep = next.map_or(Duration::from_secs(3600), |t| {
            Duration::try_from(t - now).unwrap_or_default() + Duration::from_millis(5)
        });
        tokio::select! {
            c = changes.changed() => if c.is_err() { return },
            _ = tokio::time::sleep(sleep) => shared.state.send_modify(|v| *v += 1),
        }
    }
}

fn report_key(shared: &Shared, drill: &str, d: &DrillSpec) -> ResourceKey {
    ResourceKey {
        kind: "DrillReport".into(),
        mesh: d.mesh.clone(),
        name: format!("{drill}-{}", shared.cfg.zone),
    }
}

fn report_done(shared: &Shared, drill: &str, d: &DrillSpec) -> bool {
    shared
        .store
        .get(&report_key(shared, drill, d))
        .ok()
        .flatten()
        .is_some_and(|r| r.spec["state"] != "probing")
}

fn write_report(shared: &Shared, drill: &str, d: &DrillSpec, spec: &DrillReportSpec) {
    let key = report_key(shared, drill, d);
    let r = Resource::new(
        key.kind.clone(),
        Some(&key.mesh),
        key.name.clone(),
        serde_json::to_value(spec).expect("reports serialize"),
    );
    match shared
        .store
        .put_local(&shared.cfg.zone, r, OffsetDateTime::now_utc())
    {
        Ok((stored, _)) => shared.local_change(key, Some(stored)),
        Err(e) => tracing::warn!(drill, error = ?e, "writing the drill report"),
    }
}

/// One probe request: when, whether the service answered, how fast, from which zone.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: OffsetDateTime,
    pub(crate) ok: bool,
    pub(crate) latency_ms: f64,
    pub(crate) zone: Option<String>,
}

/// Probes `d.probe` from this zone through an in-process sidecar, writing its report
/// every second and a final one after the cool-down.
async fn probe(shared: Arc<Shared>, name: String, mut d: DrillSpec) {
    let mut drill_changes = shared.state.subscribe();
    let service = d.probe.clone().unwrap_or_default();
    let mut report = DrillReportSpec {
        drill: name.clone(),
        zone: shared.cfg.zone.clone(),
        drilled_zone: d.zone.clone(),
        service: service.clone(),
        state: "probing".into(),
        ..DrillReportSpec::default()
    };
    let fail = |report: &mut DrillReportSpec, e: String| {
        tracing::warn!(drill = %name, error = %e, "the drill probe cannot run");
        report.state = "failed".into();
        report.error = Some(e);
        write_report(&shared, &name, &d, report);
    };
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return fail(&mut report, format!("no local port for the probe: {e}")),
    };
    let dataplane = match probe_dataplane(&d.mesh, &service, port) {
        Ok(r) => r,
        Err(e) => return fail(&mut report, e),
    };
    let mesh = d.mesh.clone();
    let config = move |shared: &Shared| -> Result<causeway_api::proxy_config::ProxyConfig, String> {
        let inputs = crate::dds::mesh_inputs(shared, &mesh).map_err(|s| s.message().to_string())?;
        let mut c = crate::proxy_config::compute(&inputs, &dataplane).map_err(|e| e.to_string())?;
        c.inbounds.clear();
        Ok(c)
    };
    let first = match config(&shared) {
        Ok(c) => c,
        Err(e) => return fail(&mut report, e),
    };
    if first.outbounds[0].protocol == causeway_api::Protocol::Tcp {
        return fail(
            &mut report,
            format!(
                "{service} is not known as an HTTP service in this zone; the probe sends HTTP requests"
            ),
        );
    }
    let identity = match probe_identity(&shared, &d.mesh) {
        Ok(i) => i,
        Err(e) => return fail(&mut report, e),
    };
    let (config_tx, config_rx) = tokio::sync::watch::channel(Some(Arc::new(first)));
    let (_identity_tx, identity_rx) = tokio::sync::watch::channel(Some(Arc::new(identity)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sidecar = tokio::spawn(causeway_dataplane::run_embedded(
        config_rx,
        identity_rx,
        stop_rx,
    ));
    let follow = {
        let shared = shared.clone();
        let mut changes = shared.state.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if let Ok(c) = config(&shared) {
                    config_tx.send_if_modified(|old| {
                        let changed = old.as_ref().is_none_or(|o| o.version != c.version);
                        if changed {
                            *old = Some(Arc::new(c));
                        }
                        changed
                    });
                }
            }
        })
    };
    // Wait for the in-process sidecar's listener before counting anything.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .pool_max_idle_per_host(4)
        .build();
    let url = format!("http://127.0.0.1:{port}/");
    let (probe_header, zone_header) = causeway_dataplane::PROBE_HEADERS;
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = std::time::Instant::now();
    match client {
        Err(e) => fail(&mut report, e.to_string()),
        Ok(client) => loop {
            tick.tick().await;
            // The drill may have been stopped early: follow its current end, read again
            // only when the zone's state changed.
            if drill_changes.has_changed().unwrap_or(false) {
                drill_changes.borrow_and_update();
                if let Some((_, now_d)) = drills(&shared.store)
                    .ok()
                    .and_then(|all| all.into_iter().find(|(n, _)| *n == name))
                {
                    d = now_d;
                }
            }
            let now = OffsetDateTime::now_utc();
            if now >= d.probe_window().1 {
                report = summarize(&report, &d, &samples);
                report.state = "done".into();
                write_report(&shared, &name, &d, &report);
                tracing::info!(drill = %name, moved_after_ms = ?report.moved_after_ms, failed = report.failed_during_move, "drill probe done");
                break;
            }
            let started = std::time::Instant::now();
            let answer = client.get(&url).header(probe_header, "1").send().await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let (ok, zone) = match answer {
                // Any answer of the service counts, 403 included: it was reached. 5xx are
                // the mesh failing to reach it.
                Ok(r) => (
                    !r.status().is_server_error(),
                    r.headers()
                        .get(zone_header)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                ),
                Err(_) => (false, None),
            };
            samples.push(Sample {
                at: now,
                ok,
                latency_ms,
                zone,
            });
            if last_write.elapsed() >= Duration::from_secs(1) {
                report = summarize(&report, &d, &samples);
                write_report(&shared, &name, &d, &report);
                last_write = std::time::Instant::now();
            }
        },
    }
    let _ = stop_tx.send(true);
    follow.abort();
    sidecar.abort();
}

/// The Dataplane the probe's in-process sidecar would register (it never does): one
/// outbound to `service` on `port`, and the probe's identity.
fn probe_dataplane(mesh: &str, service: &str, port: u16) -> Result<Resource, String> {
    let r = Resource::from_json(
        serde_json::json!({"type": "Dataplane", "mesh": mesh, "name": PROBE_SERVICE,
            "spec": {"address": "127.0.0.1",
                     // Never listened on (inbounds are dropped): it only names the identity.
                     "inbound": [{"port": port.checked_add(1).unwrap_or(1), "service": PROBE_SERVICE}],
                     "outbound": [{"port": port, "service": service}]}})
        .to_string()
        .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    causeway_api::validate(&r).map_err(|e| e.to_string())?;
    Ok(r)
}

/// A workload certificate for the probe, from this zone's intermediate CA.
fn probe_identity(
    shared: &Shared,
    mesh: &str,
) -> Result<causeway_dataplane::identity::Identity, String> {
    let csr = causeway_pki::generate_csr(PROBE_SERVICE).map_err(|e| e.to_string())?;
    let signed = crate::dds::sign_workload(
        shared,
        mesh,
        PROBE_SERVICE,
        &Default::default(),
        &csr.csr_pem,
    )
    .map_err(|s| s.message().to_string())?;
    causeway_dataplane::identity::Identity::new(
        &signed.cert_chain_pem,
        &csr.key_pem,
        &signed.trust_bundle_pem,
        signed.renew_at,
        Default::default(),
    )
    .map_err(|e| e.to_string())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some((sorted[i] * 100.0).round() / 100.0)
}

fn phase(samples: &[&Sample]) -> PhaseStats {
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut zones = BTreeMap::new();
    for s in samples.iter().filter(|s| s.ok) {
        *zones
            .entry(s.zone.clone().unwrap_or_else(|| "unknown".into()))
            .or_insert(0) += 1;
    }
    PhaseStats {
        requests: samples.len() as u64,
        failed: samples.iter().filter(|s| !s.ok).count() as u64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        zones,
    }
}

/// The samples step by step, aligned on the drill's start: the probe window cut into at
/// most [`MAX_TIMELINE_STEPS`] steps of whole seconds. Steps without a sample are left
/// out.
fn timeline(d: &DrillSpec, samples: &[Sample]) -> (u64, Vec<TimelineStep>) {
    let (from, to) = d.probe_window();
    let window_ms = ms(to - from).max(1);
    // Two steps are kept for the partial ones at either end: steps are aligned on the
    // drill's start, not on the window's.
    let steps = MAX_TIMELINE_STEPS as u64 - 2;
    let step_ms = window_ms.div_ceil(steps).div_ceil(1000).max(1) * 1000;
    let mut by_step: BTreeMap<i64, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        let offset = (s.at - d.starts_at).whole_milliseconds() as i64;
        by_step
            .entry(offset.div_euclid(step_ms as i64))
            .or_default()
            .push(s);
    }
    let timeline = by_step
        .into_iter()
        .map(|(i, in_step)| {
            let p = phase(&in_step);
            TimelineStep {
                at_ms: i * step_ms as i64,
                requests: p.requests,
                failed: p.failed,
                p99_ms: p.p99_ms,
                zones: p.zones,
            }
        })
        .collect();
    (step_ms, timeline)
}

fn ms(d: time::Duration) -> u64 {
    d.whole_milliseconds().max(0) as u64
}

/// What the samples say about the drill `d`: per phase, how long traffic took to move
/// off the drilled zone and what that cost, and how long it took to come back.
pub(crate) fn summarize(
    base: &DrillReportSpec,
    d: &DrillSpec,
    samples: &[Sample],
) -> DrillReportSpec {
    let (start, end) = (d.starts_at, d.end());
    let before: Vec<&Sample> = samples.iter().filter(|s| s.at < start).collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= start && s.at < end)
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= end).collect();
    let in_drilled = |s: &Sample| s.ok && s.zone.as_deref() == Some(d.zone.as_str());
    let served_before = before.iter().any(|s| in_drilled(s));
    // Traffic has moved after the last request that failed or still reached the zone.
    let last_bad = during.iter().rposition(|s| !s.ok || in_drilled(s));
    let (moved_after_ms, failed_during_move) = match last_bad {
        None if during.is_empty() => (None, 0),
        None => (Some(0), 0),
        Some(i) => {
            let moved_at = during.get(i + 1).map(|s| s.at);
            let failed = during[..=i].iter().filter(|s| !s.ok).count() as u64;
            (moved_at.map(|t| ms(t - start)), failed)
        }
    };
    let recovered_after_ms = if served_before {
        after.iter().find(|s| in_drilled(s)).map(|s| ms(s.at - end))
    } else {
        after.iter().find(|s| s.ok).map(|s| ms(s.at - end))
    };
    let (step_ms, timeline) = timeline(d, samples);
    DrillReportSpec {
        step_ms,
        timeline,
        before: phase(&before),
        during: phase(&during),
        after: phase(&after),
        drilled_zone_served_before: served_before,
        moved_after_ms,
        failed_during_move,
        recovered_after_ms,
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: f64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_000_000).unwrap() + time::Duration::seconds_f64(s)
    }

    fn drill() -> DrillSpec {
        DrillSpec {
            kind: causeway_api::DrillType::ZoneDown,
            zone: "zone-b".into(),
            mode: causeway_api::DrillMode::Drain,
            mesh: "default".into(),
            probe: Some("backend".into()),
            starts_at: at(10.0),
            ends_at: at(20.0),
            stopped_at: None,
        }
    }

    fn sample(t: f64, ok: bool, zone: &str) -> Sample {
        Sample {
            at: at(t),
            ok,
            latency_ms: t,
            zone: ok.then(|| zone.to_string()),
        }
    }

    #[test]
    fn measures_the_move_its_cost_and_the_recovery() {
        let mut samples = Vec::new();
        // Before: both zones answer.
        for i in 0..10 {
            samples.push(sample(
                5.0 + i as f64 * 0.1,
                true,
                if i % 2 == 0 { "zone-a" } else { "zone-b" },
            ));
        }
        // During: one more answer from zone-b (an open connection), two failures, then zone-a.
        samples.push(sample(10.1, true, "zone-b"));
        samples.push(sample(10.2, false, ""));
        samples.push(sample(10.3, false, ""));
        for i in 0..20 {
            samples.push(sample(10.4 + i as f64 * 0.1, true, "zone-a"));
        }
        // After: zone-a, then zone-b is back 0.5 s after the end.
        samples.push(sample(20.2, true, "zone-a"));
        samples.push(sample(20.5, true, "zone-b"));
        let r = summarize(&DrillReportSpec::default(), &drill(), &samples);
        assert!(r.drilled_zone_served_before);
        assert_eq!(r.before.requests, 10);
        assert_eq!(r.before.zones["zone-b"], 5);
        assert_eq!(r.during.requests, 23);
        assert_eq!(r.during.failed, 2);
        assert_eq!(r.moved_after_ms, Some(400));
        assert_eq!(r.failed_during_move, 2);
        assert_eq!(r.recovered_after_ms, Some(500));
        assert_eq!(r.after.requests, 2);
        // Over time, second by second from the drill's start: zone-b answered until
        // the second after the start, zone-a after it.
        assert_eq!(r.step_ms, 1000);
        let at = |ms: i64| r.timeline.iter().find(|s| s.at_ms == ms).unwrap();
        assert_eq!(
            at(-5000).zones,
            BTreeMap::from([("zone-a".into(), 5), ("zone-b".into(), 5)])
        );
        assert_eq!(at(0).failed, 2, "the first second of the drill");
        assert_eq!(at(0).zones["zone-b"], 1);
        assert_eq!(r.timeline.iter().map(|s| s.failed).sum::<u64>(), 2);
        assert!(
            r.timeline
                .iter()
                .filter(|s| s.at_ms >= 1000 && s.at_ms < 10_000)
                .all(|s| s.zones.keys().eq(["zone-a"]))
        );
        assert_eq!(at(10_000).zones["zone-b"], 1, "back after the end");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["timeline"][0]["atMs"], -5000);
        assert!(r.timeline.len() <= MAX_TIMELINE_STEPS);
    }

    #[test]
    fn a_long_drill_keeps_its_timeline_within_the_step_limit() {
        let mut d = drill();
        d.ends_at = d.starts_at + time::Duration::hours(24);
        // One sample a second over the whole window.
        let (from, to) = d.probe_window();
        let n = (to - from).whole_seconds();
        let samples: Vec<Sample> = (0..n)
            .map(|i| Sample {
                at: from + time::Duration::seconds(i),
                ok: true,
                latency_ms: 1.0,
                zone: Some("zone-a".into()),
            })
            .collect();
        let r = summarize(&DrillReportSpec::default(), &d, &samples);
        assert!(
            r.timeline.len() <= MAX_TIMELINE_STEPS,
            "{}",
            r.timeline.len()
        );
        assert!(r.timeline.len() >= MAX_TIMELINE_STEPS - 2);
        assert_eq!(r.step_ms % 1000, 0);
        assert_eq!(r.timeline.iter().map(|s| s.requests).sum::<u64>(), n as u64);
    }

    #[test]
    fn nothing_to_move_when_the_zone_never_served_and_a_stop_ends_it_early() {
        let mut d = drill();
        d.stopped_at = Some(at(12.0));
        let samples = vec![
            sample(9.0, true, "zone-a"),
            sample(10.5, true, "zone-a"),
            sample(12.5, true, "zone-a"),
        ];
        let r = summarize(&DrillReportSpec::default(), &d, &samples);
        assert!(!r.drilled_zone_served_before);
        assert_eq!(r.moved_after_ms, Some(0));
        assert_eq!(r.failed_during_move, 0);
        assert_eq!(r.after.requests, 1, "after the stop is after");
        assert_eq!(r.recovered_after_ms, Some(500));
    }
}
