//! `causeway-bench stats`: the cost of the cross-zone golden signals (`causeway stat`) at
//! scale, in this process: a zone's aggregate for N services, each called by C callers
//! and calling C services (2·N·C signals), with traffic in every slot of the last 15
//! minutes (the rings are fixed arrays, so this is also the worst case per signal).
//! Reports the resident memory it took, per signal and in all, the time one heartbeat's
//! windows take to compute, and the size of the report a zone sends global each
//! heartbeat.

use std::time::Instant;

use causeway_api::kds::ZoneStats;
use causeway_api::stats::{Aggregator, BUCKETS, Counts, SIGNAL_BYTES, SignalKey};
use prost::Message as _;

pub(crate) fn stats(services: usize, callers: usize) -> anyhow::Result<()> {
    let pid = std::process::id();
    let before = crate::zones::rss(pid)?.0;
    let mut agg = Aggregator::new(usize::MAX);
    let start = 1_800_000_000_000u64;
    let mut latency = vec![0; BUCKETS];
    latency[3] = 9;
    latency[7] = 1;
    let delta = Counts {
        requests: 10,
        failures: 1,
        latency,
    };
    // A report every 10 s for 15 minutes: every ring slot in use.
    for tick in 0..90u64 {
        let now = start + tick * 10_000;
        for s in 0..services {
            for c in 1..=callers {
                let peer = format!("service-{}", (s + c) % services);
                for outbound in [false, true] {
                    let key = SignalKey {
                        mesh: "default".into(),
                        outbound,
                        service: format!("service-{s}"),
                        peer: peer.clone(),
                        peer_zone: if outbound {
                            String::new()
                        } else {
                            "zone-b".into()
                        },
                    };
                    agg.record(key, &delta, now);
                }
            }
        }
    }
    let after = crate::zones::rss(pid)?.0;
    let signals = agg.len();
    let t = Instant::now();
    let windows = agg.windows(start + 89 * 10_000);
    let compute = t.elapsed();
    let report = ZoneStats {
        signals: windows
            .into_iter()
            .map(|(k, w)| causeway_api::stats::zone_signal(k, w))
            .collect(),
        dropped: 0,
        out_endpoints: vec![],
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let grown = after.saturating_sub(before);
    println!(
        "cross-zone golden signals, {services} services x {callers} callers each way: {signals} signals"
    );
    println!(
        "zone memory: {:.1} MiB resident ({:.0} B per signal; rings {SIGNAL_BYTES} B fixed, the rest keys and map)",
        mib(grown),
        grown as f64 / signals as f64
    );
    println!(
        "one heartbeat's windows: {:.1} ms to compute; report to global {:.2} MiB ({:.0} B per signal)",
        compute.as_secs_f64() * 1e3,
        mib(report.encoded_len() as u64),
        report.encoded_len() as f64 / signals as f64
    );
    Ok(())
}
