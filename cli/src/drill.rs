//! `causeway drill`: failover drills. `zone-down` creates a `Drill` (with its end time:
//! zones end it by themselves even if this command dies) and follows what the probes in
//! other zones report; `stop` ends one early; `list` shows drills and their reports.

use std::time::Duration;

use anyhow::{Context as _, bail};
use causeway_api::{
    DRILL_COOLDOWN, DRILL_WARMUP, DrillMode, DrillReportSpec, DrillSpec, PhaseStats,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{ApiError, Client};
use crate::config::ConnArgs;

#[derive(clap::Subcommand)]
pub(crate) enum DrillCmd {
    /// Take a zone down for everyone else for a while. With --probe, every other zone
    /// sends steady requests to that service and reports how long the outage took to
    /// detect, how traffic moved, and what it cost.
    ZoneDown {
        /// The zone to take down.
        #[arg(long)]
        zone: String,
        /// How the zone goes down. `drain`: an orderly exit (its ingresses refuse
        /// connections and its endpoints leave other zones' configs at once).
        /// `blackhole`: a dead network (its ingresses silently stop answering, no
        /// refusal or reset, and the control plane tells other zones nothing: their
        /// sidecars must detect the outage from the data plane).
        #[arg(long, value_enum, default_value_t = Mode::Drain)]
        mode: Mode,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// How long the zone stays down (it comes back by itself then).
        #[arg(long, default_value = "60s")]
        duration: String,
        /// A service to probe from every other zone (HTTP).
        #[arg(long)]
        probe: Option<String>,
        /// The drill's name (default `<zone>-down-<unix time>`).
        #[arg(long)]
        name: Option<String>,
        /// Start it and return; `causeway drill list` shows the report later.
        #[arg(long)]
        detach: bool,
    },
    /// End a drill early (default: every drill running now).
    Stop { name: Option<String> },
    /// Drills, running and past, with what their probes saw.
    List,
}

/// `--mode` of `causeway drill zone-down`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Mode {
    Drain,
    Blackhole,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn hms(t: OffsetDateTime) -> String {
    let t = t.time();
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

fn state(d: &DrillSpec, now: OffsetDateTime) -> &'static str {
    if now < d.starts_at {
        "starting"
    } else if d.active_at(now) {
        "running"
    } else if d.stopped_at.is_some_and(|s| s < d.ends_at) {
        "stopped"
    } else {
        "ended"
    }
}

async fn drills(client: &Client) -> anyhow::Result<Vec<(String, DrillSpec)>> {
    let v = client.get("/drills").await?;
    Ok(v["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                serde_json::from_value(r["spec"].clone()).ok()?,
            ))
        })
        .collect())
}

async fn reports(client: &Client, drill: &str, mesh: &str) -> Vec<DrillReportSpec> {
    let Ok(v) = client.get(&format!("/meshes/{mesh}/drillreports")).await else {
        return Vec::new();
    };
    let mut out: Vec<DrillReportSpec> = v["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_value::<DrillReportSpec>(r["spec"].clone()).ok())
        .filter(|r| r.drill == drill)
        .collect();
    out.sort_by(|a, b| a.zone.cmp(&b.zone));
    out
}

fn latency(p: &PhaseStats) -> String {
    match (p.p50_ms, p.p99_ms) {
        (Some(a), Some(b)) => format!("{a:.2}/{b:.2} ms"),
        _ => "-".into(),
    }
}

fn answered_by(p: &PhaseStats) -> String {
    let ok: u64 = p.zones.values().sum();
    if ok == 0 {
        return "-".into();
    }
    p.zones
        .iter()
        .map(|(z, n)| format!("{z} {:.0}%", *n as f64 * 100.0 / ok as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0))
}

/// The report of one probing zone, for people.
fn render(r: &DrillReportSpec) -> String {
    if let Some(e) = &r.error {
        return format!("  from {}: the probe could not run: {e}\n", r.zone);
    }
    let moved = if r.during.requests == 0 {
        "-".to_string()
    } else if !r.drilled_zone_served_before && r.failed_during_move == 0 {
        format!(
            "nothing to move ({} did not answer it before)",
            r.drilled_zone
        )
    } else {
        format!(
            "{} ({} requests failed during the move)",
            secs(r.moved_after_ms),
            r.failed_during_move
        )
    };
    format!(
        "  from {zone} ({state}):\n    detected, moved in   {moved}\n    requests (failed)    before {} ({})   during {} ({})   after {} ({})\n    latency p50/p99      before {}   during {}   after {}\n    answered by          before {}   during {}   after {}\n    recovered after      {}\n",
        r.before.requests,
        r.before.failed,
        r.during.requests,
        r.during.failed,
        r.after.requests,
        r.after.failed,
        latency(&r.before),
        latency(&r.during),
        latency(&r.after),
        answered_by(&r.before),
        answered_by(&r.during),
        answered_by(&r.after),
        secs(r.recovered_after_ms),
        zone = r.zone,
        state = r.state,
    )
}

pub(crate) async fn drill(conn: &ConnArgs, cmd: DrillCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match cmd {
        DrillCmd::ZoneDown {
            zone,
            mode,
            mesh,
            duration,
            probe,
            name,
            detach,
        } => {
            let duration: causeway_api::Duration = duration
                .parse()
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
            match client
                .request(Method::GET, &format!("/zones/{zone}"), None)
                .await
            {
                Ok(_) => {}
                Err(e)
                    if e.downcast_ref::<ApiError>()
                        .is_some_and(|a| a.status == StatusCode::NOT_FOUND) =>
                {
                    bail!(
                        "zone {zone:?} is not known to the global control plane (`causeway get zones`)"
                    )
                }
                Err(e) => return Err(e),
            }
            let now = OffsetDateTime::now_utc();
            let starts_at = if probe.is_some() {
                now + DRILL_WARMUP
            } else {
                now
            };
            let ends_at = starts_at + duration.as_std();
            let name = name.unwrap_or_else(|| format!("{zone}-down-{}", now.unix_timestamp()));
            let mode = match mode {
                Mode::Drain => DrillMode::Drain,
                Mode::Blackhole => DrillMode::Blackhole,
            };
            let body = json!({"type": "Drill", "name": name, "spec": {
                "type": "ZoneDown", "zone": zone, "mode": mode, "mesh": mesh, "probe": probe,
                "startsAt": rfc3339(starts_at), "endsAt": rfc3339(ends_at)}});
            client
                .request(Method::PUT, &format!("/drills/{name}"), Some(&body))
                .await?;
            let how = match mode {
                DrillMode::Drain => "down",
                DrillMode::Blackhole => "blackholed (silent)",
            };
            println!(
                "drill {name}: {zone} {how} from {} to {} UTC ({duration}); it ends by itself, `causeway drill stop {name}` ends it early",
                hms(starts_at),
                hms(ends_at)
            );
            if detach {
                return Ok(());
            }
            follow(&client, &name, &mesh).await
        }
        DrillCmd::Stop { name } => {
            let now = OffsetDateTime::now_utc();
            let mut stopped = 0;
            for (n, mut d) in drills(&client).await? {
                let wanted = match &name {
                    Some(want) => *want == n,
                    None => now < d.end(),
                };
                if !wanted {
                    continue;
                }
                if now >= d.end() {
                    println!("drill {n} already {}", state(&d, now));
                    stopped += 1;
                    continue;
                }
                d.stopped_at = Some(now);
                let body = json!({"type": "Drill", "name": n, "spec": d});
                client
                    .request(Method::PUT, &format!("/drills/{n}"), Some(&body))
                    .await?;
                println!("drill {n} stopped; {} is back", d.zone);
                stopped += 1;
            }
            match (stopped, name) {
                (0, Some(n)) => bail!("no drill named {n:?} (`causeway drill list`)"),
                (0, None) => println!("no drill is running"),
                _ => {}
            }
            Ok(())
        }
        DrillCmd::List => {
            let now = OffsetDateTime::now_utc();
            let mut all = drills(&client).await?;
            all.sort_by_key(|(_, d)| d.starts_at);
            if all.is_empty() {
                println!("no drills");
            }
            for (name, d) in all {
                println!(
                    "{name}: {:?} ({:?}) of {} in mesh {}, {} UTC - {} UTC, {}{}",
                    d.kind,
                    d.mode,
                    d.zone,
                    d.mesh,
                    rfc3339(d.starts_at),
                    rfc3339(d.end()),
                    state(&d, now),
                    d.probe
                        .as_ref()
                        .map(|p| format!(", probing {p}"))
                        .unwrap_or_default()
                );
                for r in reports(&client, &name, &d.mesh).await {
                    print!("{}", render(&r));
                }
            }
            Ok(())
        }
    }
}

/// Prints the probes' findings every second until their reports are done.
async fn follow(client: &Client, name: &str, mesh: &str) -> anyhow::Result<()> {
    let mut last_line = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("\nstopped following; the drill goes on (`causeway drill list`, `causeway drill stop {name}`)");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = OffsetDateTime::now_utc();
        let d = drills(client)
            .await?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .context("the drill was deleted")?;
        let reports = reports(client, name, mesh).await;
        let line: Vec<String> = reports
            .iter()
            .map(|r| {
                let cur = if now < d.starts_at {
                    &r.before
                } else if now < d.end() {
                    &r.during
                } else {
                    &r.after
                };
                format!(
                    "{}: {} sent, {} failed, answered by {}, p50 {}",
                    r.zone,
                    cur.requests,
                    cur.failed,
                    answered_by(cur),
                    cur.p50_ms.map_or("-".into(), |v| format!("{v:.2} ms"))
                )
            })
            .collect();
        let line = format!(
            "[{} {}] {}",
            hms(now),
            state(&d, now),
            if line.is_empty() {
                "waiting for the probes".into()
            } else {
                line.join("; ")
            }
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        let (_, until) = d.probe_window();
        let done = d.probe.is_none()
            || (!reports.is_empty() && reports.iter().all(|r| r.state != "probing"));
        if now >= until && (done || now >= until + DRILL_COOLDOWN) {
            println!("\nreport of drill {name}:");
            if reports.is_empty() {
                println!("  no probe reported (no --probe, or no other zone is connected)");
            }
            for r in &reports {
                print!("{}", render(r));
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_as_moved_cost_and_recovery() {
        let mut r = DrillReportSpec {
            drill: "d".into(),
            zone: "zone-a".into(),
            drilled_zone: "zone-b".into(),
            service: "backend".into(),
            state: "done".into(),
            drilled_zone_served_before: true,
            moved_after_ms: Some(120),
            failed_during_move: 2,
            recovered_after_ms: Some(800),
            ..Default::default()
        };
        r.during.requests = 10;
        r.during.zones.insert("zone-a".into(), 8);
        let text = render(&r);
        assert!(
            text.contains("detected, moved in   0.12 s (2 requests failed during the move)"),
            "{text}"
        );
        assert!(text.contains("recovered after      0.80 s"), "{text}");
        assert!(text.contains("during zone-a 100%"), "{text}");
    }
}
