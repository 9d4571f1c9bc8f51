use super::*;

fn counts(requests: u64, failures: u64, latency_s: f64) -> Counts {
    let mut latency = vec![0; BUCKETS];
    latency[bucket(latency_s)] = requests;
    Counts {
        requests,
        failures,
        latency,
    }
}

fn key(service: &str, peer: &str) -> SignalKey {
    SignalKey {
        mesh: "default".into(),
        outbound: false,
        service: service.into(),
        peer: peer.into(),
        peer_zone: "zone-a".into(),
    }
}

#[test]
fn buckets_are_le_bounds() {
    assert_eq!(bucket(0.0), 0);
    assert_eq!(bucket(0.0005), 0);
    assert_eq!(bucket(0.0006), 1);
    assert_eq!(bucket(30.0), 24);
    assert_eq!(bucket(31.0), 25);
    assert_eq!(BUCKETS, 26);
}

#[test]
fn quantiles_interpolate_within_a_bucket() {
    // 100 requests spread evenly over (1ms, 2ms].
    let mut c = counts(100, 0, 0.0015);
    assert_eq!(c.quantile(0.5), Some(0.0015));
    assert!((c.quantile(0.99).unwrap() - 0.00199).abs() < 1e-9);
    // One slow request in 101: p99 stays in the fast bucket, the max is the slow one's.
    c.add(&counts(1, 1, 4.0));
    assert!(c.quantile(0.99).unwrap() < 0.002);
    assert!((c.quantile(1.0).unwrap() - 5.0).abs() < 1e-9);
    // Past the last bound: the last bound.
    assert_eq!(counts(3, 0, 100.0).quantile(0.5), Some(30.0));
    assert_eq!(Counts::default().quantile(0.5), None);
}

#[test]
fn success_rate_counts_failures_per_request() {
    assert_eq!(counts(10, 2, 0.01).success_rate(), Some(0.8));
    assert_eq!(Counts::default().success_rate(), None);
}

#[test]
fn windows_keep_one_five_and_fifteen_minutes() {
    let mut a = Aggregator::default();
    let t0 = 1_800_000_000_000;
    a.record(key("backend", "web"), &counts(10, 1, 0.01), t0);
    a.record(key("backend", "web"), &counts(5, 0, 0.01), t0 + 5_000);
    let w = a.windows(t0 + 6_000);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].1[0].requests, 15);
    assert_eq!(w[0].1[1].requests, 15);
    assert_eq!(w[0].1[2].requests, 15);
    // Two minutes on: gone from the 1-minute window, still in the 5 and 15.
    let w = a.windows(t0 + 120_000);
    assert_eq!(w[0].1[0].requests, 0);
    assert_eq!(w[0].1[1].requests, 15);
    assert_eq!(w[0].1[2].failures, 1);
    // Ten minutes on: only the 15-minute window.
    a.record(key("backend", "web"), &counts(1, 0, 0.01), t0 + 600_000);
    let w = a.windows(t0 + 600_000);
    assert_eq!(
        [w[0].1[0].requests, w[0].1[1].requests, w[0].1[2].requests],
        [1, 1, 16]
    );
    // A ring slot reused a lap later starts from zero.
    a.record(key("backend", "web"), &counts(2, 0, 0.01), t0 + 60_000 * 15);
    let w = a.windows(t0 + 60_000 * 15);
    assert_eq!(w[0].1[0].requests, 2);
    // Fifteen quiet minutes: forgotten.
    assert!(a.windows(t0 + 60_000 * 31).is_empty());
}

#[test]
fn the_signal_limit_drops_and_counts_new_signals_only() {
    let mut a = Aggregator::new(2);
    let t = 1_800_000_000_000;
    a.record(key("a", "x"), &counts(1, 0, 0.01), t);
    a.record(key("b", "x"), &counts(1, 0, 0.01), t);
    a.record(key("c", "x"), &counts(1, 0, 0.01), t);
    a.record(key("a", "x"), &counts(1, 0, 0.01), t);
    assert_eq!(a.len(), 2);
    assert_eq!(a.dropped(), 1);
    assert_eq!(a.windows(t)[0].1[0].requests, 2);
    // An empty delta creates nothing.
    a.record(key("d", "x"), &Counts::default(), t);
    assert_eq!(a.dropped(), 1);
    // The bound the docs state: a signal's rings take 2.6 KiB.
    assert_eq!(SIGNAL_BYTES, 2696);
}

fn signal(zone: &str, outbound: bool, service: &str, peer: &str, c: Counts) -> Signal {
    Signal {
        zone: zone.into(),
        outbound,
        service: service.into(),
        peer: peer.into(),
        peer_zone: String::new(),
        windows: vec![c.clone(), c.clone(), c],
    }
}

#[test]
fn views_group_by_service_zone_caller_and_callee() {
    let signals = vec![
        signal("zone-a", false, "backend", "web", counts(60, 12, 0.01)),
        signal("zone-b", false, "backend", "web", counts(40, 8, 0.02)),
        signal("zone-b", false, "backend", "cron", counts(20, 0, 0.02)),
        signal("zone-a", true, "web", "backend", counts(100, 25, 0.03)),
    ];
    let all = Filter::default();
    let by_service = rows(&signals, By::Service, Window::OneMinute, &all);
    assert_eq!(by_service.len(), 1, "{by_service:?}");
    let r = &by_service[0];
    assert_eq!(
        (r.service.as_str(), r.requests, r.failures),
        ("backend", 120, 20)
    );
    assert!((r.success_rate.unwrap() - 100.0 / 120.0).abs() < 1e-9);
    assert!((r.requests_per_second - 2.0).abs() < 1e-9);
    assert!((r.zones["zone-a"] - 0.5).abs() < 1e-9);
    // Half the requests took up to 10 ms (in the 7.5-10 ms bucket), half 15-20 ms.
    assert_eq!(r.p50_ms, Some(10.0), "{r:?}");
    assert!(
        r.p99_ms.unwrap() > 15.0 && r.p99_ms.unwrap() <= 20.0,
        "{r:?}"
    );

    let by_zone = rows(&signals, By::Zone, Window::OneMinute, &all);
    let zones: Vec<_> = by_zone
        .iter()
        .map(|r| (r.zone.clone().unwrap(), r.success_rate.unwrap()))
        .collect();
    assert_eq!(zones[0], ("zone-a".into(), 0.8));
    assert_eq!(zones[1].0, "zone-b");

    let by_caller = rows(&signals, By::Caller, Window::OneMinute, &all);
    let callers: Vec<_> = by_caller.iter().map(|r| r.peer.clone().unwrap()).collect();
    assert_eq!(callers, ["cron", "web"]);

    let by_callee = rows(&signals, By::Callee, Window::FiveMinutes, &all);
    assert_eq!(by_callee.len(), 1);
    assert_eq!(by_callee[0].service, "web");
    assert_eq!(by_callee[0].peer.as_deref(), Some("backend"));
    assert_eq!(by_callee[0].success_rate, Some(0.75));

    let only_b = Filter {
        service: Some("backend".into()),
        zone: Some("zone-b".into()),
    };
    let r = rows(&signals, By::Service, Window::OneMinute, &only_b);
    assert_eq!(r[0].requests, 60);
    assert!(
        rows(
            &signals,
            By::Service,
            Window::OneMinute,
            &Filter {
                service: Some("nope".into()),
                zone: None
            }
        )
        .is_empty()
    );
}

#[test]
fn windows_and_groupings_parse_with_clear_errors() {
    assert_eq!(Window::parse("5m"), Ok(Window::FiveMinutes));
    assert!(Window::parse("2m").unwrap_err().contains("1m, 5m or 15m"));
    assert_eq!(By::parse("callee"), Ok(By::Callee));
    assert!(
        By::parse("pod")
            .unwrap_err()
            .contains("service, zone, caller or callee")
    );
}

#[test]
fn a_report_counts_only_what_its_sidecar_can_have_counted() {
    use crate::kds::dds::{ProxySignal, ProxyStats, SignalCounts};
    let signal =
        |service: &str, peer: &str, requests: u64, failures: u64, buckets: usize| ProxySignal {
            outbound: false,
            service: service.into(),
            peer: peer.into(),
            peer_zone: "zone-a".into(),
            counts: Some(SignalCounts {
                requests,
                failures,
                latency: vec![requests; buckets],
            }),
        };
    let mut a = Aggregator::default();
    let stats = ProxyStats {
        signals: vec![
            signal("backend", "web", 10, 50, BUCKETS + 7),
            // Another service's inbound, a name no service has, no counts at all.
            signal("payments", "web", 10, 0, 1),
            signal("backend", &"x".repeat(254), 10, 0, 1),
            ProxySignal {
                counts: None,
                ..signal("backend", "api", 1, 0, 1)
            },
        ],
    };
    a.record_report("default", &["backend".to_string()], stats, 60_000);
    let w = a.windows(60_000);
    assert_eq!(
        w.len(),
        1,
        "{:?}",
        w.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    assert_eq!(w[0].0, key("backend", "web"));
    let one_minute = &w[0].1[0];
    assert_eq!((one_minute.requests, one_minute.failures), (10, 10));
    assert_eq!(one_minute.latency.len(), BUCKETS);
    // At most MAX_SIGNALS_PER_REPORT of one report count.
    let many = ProxyStats {
        signals: (0..MAX_SIGNALS_PER_REPORT + 10)
            .map(|i| signal("backend", &format!("caller-{i}"), 1, 0, 1))
            .collect(),
    };
    let mut a = Aggregator::default();
    a.record_report("default", &["backend".to_string()], many, 60_000);
    assert_eq!(a.len(), MAX_SIGNALS_PER_REPORT);
}
