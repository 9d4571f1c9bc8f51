//! `MeshFaultInjection`: injected delays, aborts and bandwidth limits, for drills.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::spec::{Errors, Spec, at, check_status, idx};
use crate::target_ref::{
    Conf, FROM_KINDS, MatchedRule, PolicyItem, TOP_KINDS, TargetRef, check_items,
    check_matched_rules, require_some,
};

/// The spec of a `MeshFaultInjection`: faults injected into requests the proxies
/// receive, by source.
///
/// ```yaml
/// type: MeshFaultInjection
/// mesh: default
/// name: backend-chaos
/// spec:
///   targetRef: {kind: MeshService, name: backend}
///   from:
///     - targetRef: {kind: MeshService, name: web}
///       default:
///         http:
///           - abort: {httpStatus: 503, percentage: 10}
///           - delay: {value: 2s, percentage: "5%"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFaultInjectionSpec {
    /// The proxies whose inbound requests get faults. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Faults by source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<FaultInjectionConf>>,
    /// Faults for requests the proxies receive (Kuma 2.13+ `rules`): a rule without
    /// `matches` acts as a `from[]` entry for `{kind: Mesh}`; one with `matches` (callers
    /// by SPIFFE id) is accepted but not applied yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<MatchedRule<FaultInjectionConf>>,
}

/// The faults for one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct FaultInjectionConf {
    /// HTTP faults, each applied independently with its own percentage. A more specific
    /// policy's list replaces a less specific one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpFault>>,
}

/// One fault; at least one of `abort`, `delay`, `responseBandwidth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpFault {
    /// Answer with an error status instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// Wait before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Slow the response body down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

/// An injected error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// The status to answer with, 100 to 599.
    pub http_status: u16,
    /// The share of requests that get it, 0 to 100.
    pub percentage: Percent,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    /// How long, more than 0s and at most 1h.
    pub value: Duration,
    /// The share of requests that get it, 0 to 100.
    pub percentage: Percent,
}

/// An injected bandwidth limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBandwidth {
    /// The rate: a number and `kbps`, `Mbps` or `Gbps` (`100kbps`, `1Mbps`; Kuma's
    /// `50mbps` and `1gbps` are the same units).
    pub limit: String,
    /// The share of requests that get it, 0 to 100.
    pub percentage: Percent,
}

/// Parses a bandwidth like `100kbps` into kilobits per second.
pub fn parse_bandwidth(limit: &str) -> Result<u64, String> {
    let hint = "use a whole number and kbps, Mbps or Gbps, like 100kbps or 1Mbps";
    // Kuma's docs also write the units in lower case (`50mbps`).
    let units = [
        ("kbps", 1u64),
        ("Mbps", 1_000),
        ("mbps", 1_000),
        ("Gbps", 1_000_000),
        ("gbps", 1_000_000),
    ];
    for (unit, factor) in units {
        if let Some(n) = limit.strip_suffix(unit) {
            return match n.parse::<u64>() {
                Ok(n) if n > 0 => n
                    .checked_mul(factor)
                    .ok_or_else(|| format!("invalid bandwidth {limit:?}: too large")),
                _ => Err(format!("invalid bandwidth {limit:?}: {hint}")),
            };
        }
    }
    Err(format!("invalid bandwidth {limit:?}: {hint}"))
}

impl Conf for FaultInjectionConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        for (i, fault) in self.http.iter().flatten().enumerate() {
            let path = idx(&at(path, "http"), i);
            if fault.abort.is_none() && fault.delay.is_none() && fault.response_bandwidth.is_none()
            {
                errors.push(
                    &path,
                    "needs at least one of abort, delay or responseBandwidth",
                );
            }
            if let Some(a) = &fault.abort {
                let path = at(&path, "abort");
                errors.check(at(&path, "httpStatus"), check_status(a.http_status));
                errors.percent(at(&path, "percentage"), Some(a.percentage), 0.0, 100.0);
            }
            if let Some(d) = &fault.delay {
                let path = at(&path, "delay");
                errors.positive_duration(
                    at(&path, "value"),
                    Some(d.value),
                    Duration::from_hours(1),
                );
                errors.percent(at(&path, "percentage"), Some(d.percentage), 0.0, 100.0);
            }
            if let Some(b) = &fault.response_bandwidth {
                let path = at(&path, "responseBandwidth");
                errors.check(at(&path, "limit"), parse_bandwidth(&b.limit).map(|_| ()));
                errors.percent(at(&path, "percentage"), Some(b.percentage), 0.0, 100.0);
            }
        }
    }
}

impl Spec for MeshFaultInjectionSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(
            errors,
            "spec",
            &[("rules", self.rules.len()), ("from", self.from.len())],
        );
        check_matched_rules(errors, "spec.rules", &self.rules);
        check_items(errors, "spec.from", &self.from, FROM_KINDS);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    fn from(default: serde_json::Value) -> serde_json::Value {
        json!({"targetRef": {"kind": "MeshService", "name": "backend"},
               "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": default}]})
    }

    #[test]
    fn validation_table() {
        table::<MeshFaultInjectionSpec>(
            &[
                from(json!({"http": [
                {"abort": {"httpStatus": 503, "percentage": 10}},
                {"delay": {"value": "2s", "percentage": "5%"}, "responseBandwidth": {"limit": "1Mbps", "percentage": 50.5}}]})),
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
                       "rules": [{"default": {"http": [{"responseBandwidth": {"limit": "50mbps", "percentage": 50}}]}}]}),
            ],
            &[
                (
                    json!({"rules": [{"matches": [{"spiffeID": {"type": "Prefix", "value": "frontend"}}], "default": {}}]}),
                    &[(
                        "spec.rules[0].matches[0].spiffeID.value",
                        "is not a SPIFFE id",
                    )],
                ),
                (
                    from(json!({"http": [{"abort": {"httpStatus": 600, "percentage": 200}}]})),
                    &[
                        (
                            "spec.from[0].default.http[0].abort.httpStatus",
                            "between 100 and 599 (got 600)",
                        ),
                        (
                            "spec.from[0].default.http[0].abort.percentage",
                            "must be between 0% and 100% (got 200%)",
                        ),
                    ],
                ),
                (
                    from(json!({"http": [{}]})),
                    &[(
                        "spec.from[0].default.http[0]",
                        "needs at least one of abort, delay or responseBandwidth",
                    )],
                ),
                (
                    from(
                        json!({"http": [{"delay": {"value": "0s", "percentage": 1}}, {"responseBandwidth": {"limit": "10MB/s", "percentage": 1}}]}),
                    ),
                    &[
                        (
                            "spec.from[0].default.http[0].delay.value",
                            "must be more than 0s",
                        ),
                        (
                            "spec.from[0].default.http[1].responseBandwidth.limit",
                            "invalid bandwidth \"10MB/s\"",
                        ),
                    ],
                ),
                (
                    from(json!({"http": [{"delay": {"value": "2s"}}]})),
                    &[(
                        "spec.from[0].default.http[0].delay.percentage",
                        "is required",
                    )],
                ),
                (
                    from(json!({"http": [{"delay": {"value": "2s", "percentage": "ten"}}]})),
                    &[(
                        "spec.from[0].default.http[0].delay.percentage",
                        "invalid percentage \"ten\"",
                    )],
                ),
            ],
        );
    }
}
