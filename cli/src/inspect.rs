//! `causeway inspect dataplane NAME`: the human view of
//! `GET /meshes/{mesh}/dataplanes/{name}/inspect` (see `causeway_api::inspect`), or
//! the answer as it is with `-o json|yaml`. Rendering is a pure function of the answer
//! and the time, tested below.

use std::fmt::Write as _;

use causeway_api::inspect::{
    DataplaneInspection, DestinationReport, EndpointReport, HealthCheckState,
};

/// A Unix time in seconds as RFC 3339 (UTC), or the number when out of range.
fn date(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_s.to_string())
}

/// A span of seconds, roughly: `3d4h`, `5h2m`, `42s`.
fn span(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// How long ago a Unix ms time was, from `now_ms`.
fn ago(at_ms: i64, now_ms: i64) -> String {
    format!("{} ago", span((now_ms - at_ms) / 1000))
}

fn endpoint_line(e: &EndpointReport, now_ms: i64) -> String {
    let mut state = if e.healthy {
        "healthy".to_owned()
    } else {
        "UNHEALTHY".to_owned()
    };
    if let Some(ej) = &e.ejection {
        let left = ej.until - now_ms / 1000;
        let _ = write!(
            state,
            ", ejected ({}) until {} ({left_s} left)",
            ej.reason,
            date(ej.until),
            left_s = span(left.max(0))
        );
    }
    match e.health_check {
        Some(HealthCheckState::Passing) => state.push_str(", health checks passing"),
        Some(HealthCheckState::Failing) => state.push_str(", health checks FAILING"),
        None => {}
    }
    if e.connect_failures > 0 {
        let _ = write!(
            state,
            ", failed connections in a row: {}",
            e.connect_failures
        );
    }
    if e.outlier_ejections > 0 {
        let _ = write!(
            state,
            ", ejected {} times as an outlier",
            e.outlier_ejections
        );
    }
    let via = e
        .sni
        .as_deref()
        .map(|s| format!(" via ingress, SNI {s}"))
        .unwrap_or_default();
    format!("{}:{} (zone {}{via}): {state}", e.address, e.port, e.zone)
}

fn destination_lines(out: &mut String, d: &DestinationReport, now_ms: i64) {
    match &d.backend {
        None => {
            let _ = writeln!(out, "  endpoints:");
        }
        Some(b) => {
            let _ = writeln!(out, "  endpoints of route backend {b}:");
        }
    }
    if d.endpoints.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for e in &d.endpoints {
        let _ = writeln!(out, "    {}", endpoint_line(e, now_ms));
    }
}

fn json(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The human view, at `now_ms` (Unix ms).
pub(crate) fn render(i: &DataplaneInspection, now_ms: i64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Dataplane {} (mesh {}, zone {})", i.name, i.mesh, i.zone);
    match (&i.config.version, &i.config.error) {
        (Some(v), _) => {
            let _ = writeln!(o, "  config computed now: version {v}");
        }
        (None, Some(e)) => {
            let _ = writeln!(
                o,
                "  config computed now: CANNOT BE COMPUTED: {e} (the proxy keeps its last one)"
            );
        }
        (None, None) => {}
    }
    match &i.proxy {
        None => {
            let _ = writeln!(o, "  sidecar: not connected to this zone now");
        }
        Some(p) => {
            let _ = writeln!(
                o,
                "  sidecar: connected {}",
                ago(p.connected_unix_ms, now_ms)
            );
            if let Some(v) = &p.sent_version {
                let _ = writeln!(o, "  last config sent: version {v}");
            }
            match &p.ack {
                Some(a) => {
                    let _ = writeln!(
                        o,
                        "  last ACK: version {} ({})",
                        a.version,
                        ago(a.at_unix_ms, now_ms)
                    );
                }
                None => {
                    let _ = writeln!(o, "  last ACK: none yet");
                }
            }
            if let Some(n) = &p.nack {
                let _ = writeln!(
                    o,
                    "  last NACK: version {} ({}): {}",
                    n.version,
                    ago(n.at_unix_ms, now_ms),
                    n.reason.as_deref().unwrap_or("")
                );
            }
            match &p.certificate {
                Some(c) => {
                    let left = c.not_after - now_ms / 1000;
                    let when = if left > 0 {
                        format!("in {}", span(left))
                    } else {
                        format!("EXPIRED {} ago", span(-left))
                    };
                    let _ = writeln!(
                        o,
                        "  certificate: {}, expires {} ({when}), renews at {}",
                        c.identity,
                        date(c.not_after),
                        date(c.renew_at)
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "  certificate: none reported (no mTLS, or not issued yet)"
                    );
                }
            }
            if p.reported_unix_ms > 0 {
                let _ = writeln!(o, "  state reported {}", ago(p.reported_unix_ms, now_ms));
            }
            if let Some(e) = &p.report_error {
                let _ = writeln!(o, "  its last report could not be read: {e}");
            }
        }
    }
    for k in &i.proxy_policies {
        let _ = writeln!(
            o,
            "\nWhole proxy\n  {}: {}\n      {}",
            k.kind,
            k.merged.policies.join(", "),
            json(&k.merged.conf)
        );
    }
    for ib in &i.inbounds {
        let _ = writeln!(o, "\nInbound {} ({})", ib.port, ib.service);
        if ib.policies.is_empty() {
            let _ = writeln!(o, "  no policies");
        }
        for k in &ib.policies {
            let _ = writeln!(o, "  {}", k.kind);
            for r in &k.rules {
                let _ = writeln!(
                    o,
                    "    from {}: {}\n        {}",
                    r.source,
                    r.policies.join(", "),
                    json(&r.conf)
                );
            }
        }
    }
    for ob in &i.outbounds {
        match (ob.vip, &ob.zone) {
            (Some(vip), Some(zone)) => {
                let _ = writeln!(o, "\nOutbound {vip} -> {} in zone {zone}", ob.service);
            }
            (Some(vip), None) => {
                let _ = writeln!(o, "\nOutbound {vip} -> {}", ob.service);
            }
            (None, _) => {
                let _ = writeln!(o, "\nOutbound {} -> {}", ob.port, ob.service);
            }
        }
        if ob.policies.is_empty() {
            let _ = writeln!(o, "  no policies");
        }
        for k in &ob.policies {
            match &k.conf {
                Some(m) => {
                    let _ = writeln!(
                        o,
                        "  {}: {}\n      {}",
                        k.kind,
                        m.policies.join(", "),
                        json(&m.conf)
                    );
                }
                None => {
                    let _ = writeln!(o, "  {}: (routes only)", k.kind);
                }
            }
            for (route, m) in &k.routes {
                let _ = writeln!(
                    o,
                    "    route {route}: {}\n        {}",
                    m.policies.join(", "),
                    json(&m.conf)
                );
            }
        }
        if i.proxy.is_some() && ob.destinations.is_empty() {
            let _ = writeln!(o, "  endpoints: not reported yet");
        }
        for d in &ob.destinations {
            destination_lines(&mut o, d, now_ms);
        }
    }
    if !i.unmatched.is_empty() {
        let _ = writeln!(o, "\nPolicies of the mesh that do not apply here");
        for n in &i.unmatched {
            let _ = writeln!(o, "  {} {}: {}", n.kind, n.name, n.reason);
        }
    }
    if !i.ignored.is_empty() {
        let _ = writeln!(o, "\nPolicies ignored");
        for n in &i.ignored {
            let _ = writeln!(o, "  {} {}: {}", n.kind, n.name, n.reason);
        }
    }
    if !i.warnings.is_empty() {
        let _ = writeln!(
            o,
            "\nParts of matched policies the proxies do not enforce yet"
        );
        for w in &i.warnings {
            for f in &w.warnings {
                let _ = writeln!(o, "  {} {}: {f}", w.kind, w.name);
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use causeway_api::Merged;
    use causeway_api::inspect::{
        CertificateReport, ConfigReply, Ejection, KindOutbound, OutboundInspection, PolicyNote,
        ProxyState,
    };
    use serde_json::json;

    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn inspection() -> DataplaneInspection {
        DataplaneInspection {
            mesh: "default".into(),
            name: "web-1".into(),
            zone: "zone-a".into(),
            config: causeway_api::inspect::ComputedConfig {
                version: Some("abc123".into()),
                error: None,
            },
            proxy: Some(ProxyState {
                connected_unix_ms: NOW_MS - 65_000,
                sent_version: Some("abc123".into()),
                ack: Some(ConfigReply {
                    version: "abc000".into(),
                    at_unix_ms: NOW_MS - 60_000,
                    reason: None,
                }),
                nack: Some(ConfigReply {
                    version: "abc123".into(),
                    at_unix_ms: NOW_MS - 2_000,
                    reason: Some("unknown variant `Brotli`".into()),
                }),
                certificate: Some(CertificateReport {
                    identity: "spiffe://default/web".into(),
                    not_after: NOW_MS / 1000 + 86_400 + 3600,
                    renew_at: NOW_MS / 1000 + 3600,
                    issuer_sha256: None,
                    trusted_sha256: vec![],
                }),
                reported_unix_ms: NOW_MS - 1_000,
                report_error: None,
            }),
            outbounds: vec![OutboundInspection {
                port: 20001,
                vip: None,
                zone: None,
                service: "backend".into(),
                policies: vec![KindOutbound {
                    kind: "MeshTimeout".into(),
                    conf: Some(Merged {
                        conf: json!({"connectionTimeout": "2s"}),
                        policies: vec!["b".into(), "a".into()],
                    }),
                    routes: Default::default(),
                }],
                destinations: vec![DestinationReport {
                    port: 20001,
                    vip: None,
                    service: "backend".into(),
                    backend: None,
                    endpoints: vec![EndpointReport {
                        address: "127.0.0.1".into(),
                        port: 30001,
                        zone: "zone-a".into(),
                        sni: None,
                        healthy: false,
                        health_check: None,
                        ejection: Some(Ejection {
                            until: NOW_MS / 1000 + 4,
                            reason: "failed connections".into(),
                        }),
                        connect_failures: 3,
                        outlier_ejections: 0,
                    }],
                }],
            }],
            unmatched: vec![PolicyNote {
                kind: "MeshRetry".into(),
                name: "to-cache".into(),
                reason: "no part of it matches this proxy".into(),
            }],
            ..DataplaneInspection::default()
        }
    }

    #[test]
    fn the_human_view_shows_policies_per_destination_the_replies_the_certificate_and_endpoints() {
        let text = render(&inspection(), NOW_MS);
        let expected = "\
Dataplane web-1 (mesh default, zone zone-a)
  config computed now: version abc123
  sidecar: connected 1m5s ago
  last config sent: version abc123
  last ACK: version abc000 (1m0s ago)
  last NACK: version abc123 (2s ago): unknown variant `Brotli`
  certificate: spiffe://default/web, expires 2023-11-15T23:13:20Z (in 1d1h), renews at 2023-11-14T23:13:20Z
  state reported 1s ago

Outbound 20001 -> backend
  MeshTimeout: b, a
      {\"connectionTimeout\":\"2s\"}
  endpoints:
    127.0.0.1:30001 (zone zone-a): UNHEALTHY, ejected (failed connections) until 2023-11-14T22:13:24Z (4s left), failed connections in a row: 3

Policies of the mesh that do not apply here
  MeshRetry to-cache: no part of it matches this proxy
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_proxy_that_is_not_connected_and_a_config_that_cannot_be_computed_are_said_so() {
        let mut i = inspection();
        i.proxy = None;
        i.config.version = None;
        i.config.error = Some("mesh \"default\" is not known in this zone (yet)".into());
        let text = render(&i, NOW_MS);
        assert!(
            text.contains("  sidecar: not connected to this zone now\n"),
            "{text}"
        );
        assert!(
            text.contains("CANNOT BE COMPUTED: mesh \"default\" is not known"),
            "{text}"
        );
    }
}
