//! `causeway stat [SERVICE]`: the mesh's golden signals across zones, from
//! `GET /meshes/{mesh}/stats` (see `causeway_api::stats`): success rate, requests per
//! second, p50/p95/p99 latency and each zone's share of the traffic, by service, zone,
//! caller or callee; `-w` redraws it every two seconds. Rendering is a pure function of
//! the answer, tested below.

use std::fmt::Write as _;

use anyhow::Context as _;
use causeway_api::stats::{By, Row, StatsView};

use crate::client::Client;
use crate::config::ConnArgs;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ByArg {
    /// One row per service, as its sidecars served it, all zones together.
    Service,
    /// One row per service and zone it was served in.
    Zone,
    /// One row per service and caller (with the caller's zone).
    Caller,
    /// One row per service and what it called (failures include calls that never
    /// reached the callee, as when its zone is dark).
    Callee,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum WindowArg {
    #[value(name = "1m")]
    OneMinute,
    #[value(name = "5m")]
    FiveMinutes,
    #[value(name = "15m")]
    FifteenMinutes,
}

#[derive(clap::Args)]
pub(crate) struct StatArgs {
    /// Only this service (by callee: only what it called).
    service: Option<String>,
    #[arg(short = 'm', long, default_value = "default")]
    mesh: String,
    /// Only what the sidecars of this zone counted.
    #[arg(long)]
    zone: Option<String>,
    #[arg(long, value_enum, default_value = "service")]
    by: ByArg,
    /// Over the last minute, five or fifteen.
    #[arg(long, value_enum, default_value = "1m")]
    window: WindowArg,
    /// Redraw every two seconds until interrupted.
    #[arg(short = 'w', long)]
    watch: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: crate::ops::Output,
}

pub(crate) async fn stat(conn: &ConnArgs, a: StatArgs) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    let by = match a.by {
        ByArg::Service => "service",
        ByArg::Zone => "zone",
        ByArg::Caller => "caller",
        ByArg::Callee => "callee",
    };
    let window = match a.window {
        WindowArg::OneMinute => "1m",
        WindowArg::FiveMinutes => "5m",
        WindowArg::FifteenMinutes => "15m",
    };
    let mut path = format!("/meshes/{}/stats?by={by}&window={window}", a.mesh);
    if let Some(s) = &a.service {
        let _ = write!(path, "&service={s}");
    }
    if let Some(z) = &a.zone {
        let _ = write!(path, "&zone={z}");
    }
    loop {
        let v = client.get(&path).await?;
        let text = match a.output {
            crate::ops::Output::Json => serde_json::to_string_pretty(&v)? + "\n",
            crate::ops::Output::Yaml => serde_yaml::to_string(&v)?,
            crate::ops::Output::Table => {
                let view: StatsView = serde_json::from_value(v).context("reading the stats")?;
                render(&view)
            }
        };
        if !a.watch {
            print!("{text}");
            return Ok(());
        }
        // Clear the screen and draw from its top.
        print!("\x1b[2J\x1b[H{text}");
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}ms"),
        Some(ms) if ms >= 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

fn zones(r: &Row) -> String {
    r.zones
        .iter()
        .map(|(z, share)| format!("{z} {:.0}%", share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of a view, with a line on where its numbers come from.
pub(crate) fn render(v: &StatsView) -> String {
    let mut out = String::new();
    let from: Vec<String> = v
        .zones
        .iter()
        .map(|z| format!("{} ({:.0}s ago)", z.zone, z.age_seconds))
        .collect();
    let _ = writeln!(
        out,
        "mesh {}, last {}, by {}; reports from: {}",
        v.mesh,
        v.window.as_str(),
        v.by.as_str(),
        if from.is_empty() {
            "no zone yet".to_owned()
        } else {
            from.join(", ")
        }
    );
    for (zone, why) in &v.missing {
        let _ = writeln!(out, "missing zone {zone}: {why}");
    }
    let dropped: u64 = v.zones.iter().map(|z| z.dropped).sum();
    if dropped > 0 {
        let _ = writeln!(
            out,
            "note: zones dropped {dropped} signals at their limit; totals may be low"
        );
    }
    if v.rows.is_empty() {
        out.push_str("no traffic in this window\n");
        return out;
    }
    let first = match v.by {
        By::Service => vec!["SERVICE"],
        By::Zone => vec!["SERVICE", "ZONE"],
        By::Caller => vec!["SERVICE", "CALLER"],
        By::Callee => vec!["SERVICE", "CALLEE"],
    };
    let mut table: Vec<Vec<String>> = vec![
        first
            .iter()
            .chain(&["SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "ZONES"])
            .map(|s| s.to_string())
            .collect(),
    ];
    for r in &v.rows {
        let mut line = vec![r.service.clone()];
        match v.by {
            By::Service => {}
            By::Zone => line.push(r.zone.clone().unwrap_or_default()),
            By::Caller | By::Callee => {
                let peer = r.peer.clone().unwrap_or_default();
                line.push(match &r.peer_zone {
                    Some(z) => format!("{peer}@{z}"),
                    None => peer,
                });
            }
        }
        line.extend([
            r.success_rate.map_or("-".into(), percent),
            format!("{:.1}", r.requests_per_second),
            millis(r.p50_ms),
            millis(r.p95_ms),
            millis(r.p99_ms),
            r.requests.to_string(),
            zones(r),
        ]);
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| table.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::stats::{Window, ZoneReport};
    use std::collections::BTreeMap;

    fn view(by: By) -> StatsView {
        StatsView {
            mesh: "default".into(),
            window: Window::OneMinute,
            by,
            zones: vec![ZoneReport {
                zone: "zone-a".into(),
                age_seconds: 2.2,
                dropped: 0,
                signals: vec![],
                out_endpoints: vec![],
            }],
            missing: BTreeMap::from([("zone-c".into(), "global node 2 did not answer".into())]),
            rows: vec![Row {
                service: "backend".into(),
                zone: None,
                peer: Some("web".into()),
                peer_zone: Some("zone-b".into()),
                requests: 600,
                failures: 120,
                success_rate: Some(0.8),
                requests_per_second: 10.0,
                p50_ms: Some(1.234),
                p95_ms: Some(12.5),
                p99_ms: Some(250.0),
                zones: BTreeMap::from([("zone-a".into(), 0.25), ("zone-b".into(), 0.75)]),
            }],
        }
    }

    #[test]
    fn the_table_shows_success_rate_rate_latency_and_zone_shares() {
        let t = render(&view(By::Caller));
        assert!(
            t.starts_with("mesh default, last 1m, by caller; reports from: zone-a (2s ago)\n"),
            "{t}"
        );
        assert!(
            t.contains("missing zone zone-c: global node 2 did not answer"),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2], "SERVICE  CALLER      SUCCESS  RPS   P50     P95     P99    REQUESTS  ZONES",
            "{t}"
        );
        assert!(
            lines[3].starts_with("backend  web@zone-b  80.00%   10.0  1.23ms  12.5ms  250ms  600"),
            "{t}"
        );
        assert!(lines[3].ends_with("zone-a 25%, zone-b 75%"), "{t}");
    }

    #[test]
    fn an_empty_window_says_so() {
        let mut v = view(By::Service);
        v.rows.clear();
        v.zones.clear();
        let t = render(&v);
        assert!(t.contains("reports from: no zone yet"), "{t}");
        assert!(t.ends_with("no traffic in this window\n"), "{t}");
    }
}
