//! Failover drills: `Drill` (global, written by operators with `causeway drill`) and
//! `DrillReport` (mesh-scoped, written by each probing zone and reported up to global).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::spec::{Errors, Spec, check_service_name};

/// How long probes run before a drill starts (to measure "before"), when the drill was
/// created with `causeway drill` (which sets `startsAt` that far ahead).
pub const DRILL_WARMUP: std::time::Duration = std::time::Duration::from_secs(5);
/// How long probes run after a drill ends, to measure recovery.
pub const DRILL_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest drill.
const MAX_DRILL: time::Duration = time::Duration::hours(24);

/// What a drill rehearses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DrillType {
    /// The zone is down for everyone else (how, see [`DrillMode`]). Its own workloads
    /// keep running.
    ZoneDown,
}

/// How a drilled zone goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum DrillMode {
    /// An orderly exit: the zone's ingresses refuse connections and its endpoints leave
    /// the other zones' configs, so their sidecars stop sending there at once.
    #[default]
    Drain,
    /// A dead network: the zone's ingresses silently stop answering (no refusal, no
    /// reset; connections in flight stall), and the control plane tells the other zones
    /// nothing. Their sidecars must find out from the data plane alone.
    Blackhole,
}

/// The spec of a `Drill`: a rehearsal of a zone failure with a fixed window. Zones act
/// on it by their clocks, so it ends at `endsAt` even if whoever started it is gone.
///
/// ```yaml
/// type: Drill
/// name: zone-b-down
/// spec:
///   type: ZoneDown
///   zone: zone-b
///   mesh: default
///   probe: backend
///   startsAt: "2026-11-22T10:00:05Z"
///   endsAt: "2026-11-22T10:01:05Z"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillSpec {
    /// What is rehearsed.
    #[serde(rename = "type")]
    pub kind: DrillType,
    /// The zone taken out.
    pub zone: String,
    /// How it goes down: `Drain` (default) or `Blackhole`.
    #[serde(default, skip_serializing_if = "is_drain")]
    pub mode: DrillMode,
    /// The mesh whose traffic is drilled (and probed). Default `default`.
    #[serde(default = "default_mesh")]
    pub mesh: String,
    /// A service every other zone sends steady requests to while the drill runs (from a
    /// few seconds before until a few seconds after); their findings are `DrillReport`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// When the zone goes down (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub starts_at: OffsetDateTime,
    /// When it comes back by itself (RFC 3339); at most 24 hours after `startsAt`.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub ends_at: OffsetDateTime,
    /// Set by `causeway drill stop`: the drill ended early, at this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>")]
    pub stopped_at: Option<OffsetDateTime>,
}

fn is_drain(mode: &DrillMode) -> bool {
    *mode == DrillMode::Drain
}

fn default_mesh() -> String {
    "default".into()
}

impl DrillSpec {
    /// When the zone comes back: the expiry, or the stop if earlier.
    pub fn end(&self) -> OffsetDateTime {
        match self.stopped_at {
            Some(s) if s < self.ends_at => s.max(self.starts_at),
            _ => self.ends_at,
        }
    }

    /// Whether the zone is down at `now`.
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        now >= self.starts_at && now < self.end()
    }

    /// When probes run: from the warm-up before the start to the cool-down after the end.
    pub fn probe_window(&self) -> (OffsetDateTime, OffsetDateTime) {
        (self.starts_at - DRILL_WARMUP, self.end() + DRILL_COOLDOWN)
    }
}

impl Spec for DrillSpec {
    fn check(&self, errors: &mut Errors) {
        errors
            .0
            .extend(crate::validation::validate_name("spec.zone", &self.zone));
        errors
            .0
            .extend(crate::validation::validate_name("spec.mesh", &self.mesh));
        if let Some(p) = &self.probe {
            errors.check("spec.probe", check_service_name(p));
        }
        if self.ends_at <= self.starts_at {
            errors.push("spec.endsAt", "must be after spec.startsAt");
        } else if self.ends_at - self.starts_at > MAX_DRILL {
            errors.push("spec.endsAt", "a drill lasts at most 24h");
        }
    }
}

/// Requests of one phase of a drill, as a probe saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PhaseStats {
    /// Requests sent.
    pub requests: u64,
    /// Requests without an answer from the service (refused, timed out, 5xx from the
    /// mesh).
    pub failed: u64,
    /// Median latency of the successful requests, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of the successful requests, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Successful requests by the zone that answered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, u64>,
}

/// The most steps in a report's timeline: the probe window is cut into at most this many
/// (of at least a second each), so a 24 h drill's report stays small.
pub const MAX_TIMELINE_STEPS: usize = 120;

/// One step of a probe's timeline: what the requests sent in it saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimelineStep {
    /// The step's start, milliseconds from the drill's start (negative before it).
    pub at_ms: i64,
    /// Requests sent in the step.
    pub requests: u64,
    /// Of those, the ones without an answer from the service.
    pub failed: u64,
    /// 99th percentile latency of its successful requests, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Successful requests by the zone that answered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, u64>,
}

/// The spec of a `DrillReport`: what one zone's probe saw during a drill. Written by
/// that zone's control plane (named `<drill>-<zone>`), reported up to global.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillReportSpec {
    /// The drill.
    pub drill: String,
    /// The zone the probe ran in.
    pub zone: String,
    /// The zone the drill took out.
    pub drilled_zone: String,
    /// The probed service.
    pub service: String,
    /// `probing` while it runs, `done` after the cool-down, `failed` with `error`.
    pub state: String,
    /// Why the probe could not run, with `state: failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub before: PhaseStats,
    pub during: PhaseStats,
    pub after: PhaseStats,
    /// Whether the drilled zone answered any of the probe's requests before the drill.
    pub drilled_zone_served_before: bool,
    /// Time to detect the outage: from the start of the drill until the last request
    /// that failed or still reached the drilled zone, after which traffic had moved. 0
    /// when nothing had to move.
    pub moved_after_ms: Option<u64>,
    /// Requests that failed while the outage was being detected.
    pub failed_during_move: u64,
    /// From the end of the drill until the drilled zone answered again (when it did
    /// before), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_after_ms: Option<u64>,
    /// The width of each timeline step, milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_ms: u64,
    /// The probe's requests over time, one entry per step that sent any, in order:
    /// who answered, what failed and how fast, for charts of the whole drill.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineStep>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Spec for DrillReportSpec {
    fn check(&self, errors: &mut Errors) {
        errors
            .0
            .extend(crate::validation::validate_name("spec.zone", &self.zone));
        errors.0.extend(crate::validation::validate_name(
            "spec.drilledZone",
            &self.drilled_zone,
        ));
        errors.check("spec.service", check_service_name(&self.service));
        if self.timeline.len() > MAX_TIMELINE_STEPS {
            errors.push(
                "spec.timeline",
                format!(
                    "{} steps: at most {MAX_TIMELINE_STEPS}",
                    self.timeline.len()
                ),
            );
        }
        if !self.timeline.is_empty() && self.step_ms == 0 {
            errors.push("spec.stepMs", "a timeline needs its step width (> 0)");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<DrillSpec>(
            &[
                json!({"type": "ZoneDown", "zone": "zone-b", "probe": "backend",
                       "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                json!({"type": "ZoneDown", "zone": "zone-b", "mode": "Blackhole",
                       "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                json!({"type": "ZoneDown", "zone": "zone-b", "mesh": "payments",
                       "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z",
                       "stoppedAt": "2026-11-22T10:00:30Z"}),
            ],
            &[
                (
                    json!({"type": "ZoneDown", "zone": "Zone B", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                    &[("spec.zone", "")],
                ),
                (
                    json!({"type": "ZoneDown", "zone": "zone-b", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:00:05Z"}),
                    &[("spec.endsAt", "must be after spec.startsAt")],
                ),
                (
                    json!({"type": "ZoneDown", "zone": "zone-b", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-24T10:00:05Z"}),
                    &[("spec.endsAt", "at most 24h")],
                ),
                (
                    json!({"type": "ZoneDown", "zone": "zone-b", "mode": "Unplug", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                    &[(
                        "spec.mode",
                        "unknown variant `Unplug`, expected `Drain` or `Blackhole`",
                    )],
                ),
                (
                    json!({"type": "RegionDown", "zone": "zone-b", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                    &[("spec.type", "")],
                ),
                (
                    json!({"type": "ZoneDown", "zone": "zone-b", "probe": "bad name", "startsAt": "2026-11-22T10:00:05Z", "endsAt": "2026-11-22T10:01:05Z"}),
                    &[("spec.probe", "")],
                ),
            ],
        );
    }

    #[test]
    fn active_between_start_and_the_earlier_of_expiry_and_stop() {
        let t = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        let mut d = DrillSpec {
            kind: DrillType::ZoneDown,
            zone: "zone-b".into(),
            mode: DrillMode::Drain,
            mesh: "default".into(),
            probe: None,
            starts_at: t("2026-11-22T10:00:00Z"),
            ends_at: t("2026-11-22T10:01:00Z"),
            stopped_at: None,
        };
        assert!(!d.active_at(t("2026-11-22T09:59:59Z")));
        assert!(d.active_at(t("2026-11-22T10:00:00Z")));
        assert!(!d.active_at(t("2026-11-22T10:01:00Z")), "ends by itself");
        d.stopped_at = Some(t("2026-11-22T10:00:10Z"));
        assert!(!d.active_at(t("2026-11-22T10:00:10Z")), "stopped early");
        assert_eq!(d.probe_window().1, t("2026-11-22T10:00:20Z"));
        assert_eq!(d.probe_window().0, t("2026-11-22T09:59:55Z"));
    }
}
