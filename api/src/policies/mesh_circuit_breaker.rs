//! `MeshCircuitBreaker`: connection limits and outlier detection.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::spec::{Errors, Spec, at};
use crate::target_ref::{
    Conf, FROM_KINDS, PolicyItem, Rule, Sections, TO_KINDS, TargetRef, check_policy,
};

/// The spec of a `MeshCircuitBreaker`.
///
/// ```yaml
/// type: MeshCircuitBreaker
/// mesh: default
/// name: backend-breaker
/// spec:
///   to:
///     - targetRef: {kind: MeshService, name: backend}
///       default:
///         connectionLimits: {maxConnections: 1024, maxPendingRequests: 128}
///         outlierDetection:
///           interval: 5s
///           baseEjectionTime: 30s
///           maxEjectionPercent: 20
///           detectors: {totalFailures: {consecutive: 5}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshCircuitBreakerSpec {
    /// The proxies this policy configures. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Limits on traffic the proxies receive, by source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<CircuitBreakerConf>>,
    /// Limits on all traffic the proxies receive (Kuma 2.9+ `rules`; each acts as a
    /// `from[]` entry for `{kind: Mesh}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<CircuitBreakerConf>>,
    /// Limits and outlier detection for traffic the proxies send, by destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<CircuitBreakerConf>>,
}

/// Circuit breaking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct CircuitBreakerConf {
    /// Caps on concurrent connections and requests; beyond them requests fail fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    /// Taking failing endpoints out of the load-balancing set for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Connection and request caps; each at least 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct ConnectionLimits {
    /// Concurrent connections to the destination. Built-in default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection. Built-in default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Concurrent requests (HTTP/2, gRPC). Built-in default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Concurrent retries. Built-in default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct OutlierDetection {
    /// Turns outlier detection off (for example in a more specific policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// How often endpoints are evaluated, from 100ms to 1h. Built-in default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long an endpoint is ejected the first time (multiplied by the number of
    /// ejections), from 1s to 1h. Built-in default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// The most endpoints that may be ejected at once, 0 to 100 percent. Built-in
    /// default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Percent>,
    /// Count local failures (connect errors, timeouts) apart from upstream answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    /// What makes an endpoint an outlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
}

/// Outlier detectors; any one that fires ejects the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct Detectors {
    /// Consecutive 5xx responses (or local failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Consecutive>,
    /// Consecutive 502, 503 and 504 responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<Consecutive>,
    /// Consecutive local failures; needs `splitExternalAndLocalErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<Consecutive>,
    /// A success rate well below the other endpoints'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    /// A failure percentage above a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

/// A count of consecutive failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Consecutive {
    /// How many in a row eject the endpoint, 1 to 1000.
    pub consecutive: u32,
}

/// Success-rate detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct SuccessRate {
    /// Endpoints needed with enough requests for the check to run. Built-in default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// Requests an endpoint needs in an interval to be judged. Built-in default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Ejected below mean - factor * stddev of the success rates; 0.1 to 10.
    /// Built-in default 1.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<f64>,
}

/// Failure-percentage detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct FailurePercentage {
    /// Endpoints needed with enough requests for the check to run. Built-in default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// Requests an endpoint needs in an interval to be judged. Built-in default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Ejected at or above this failure percentage, 0 to 100. Built-in default 85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Percent>,
}

impl Conf for CircuitBreakerConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        if let Some(l) = &self.connection_limits {
            let path = at(path, "connectionLimits");
            for (field, value) in [
                ("maxConnections", l.max_connections),
                ("maxPendingRequests", l.max_pending_requests),
                ("maxRequests", l.max_requests),
                ("maxRetries", l.max_retries),
            ] {
                errors.at_least(at(&path, field), value, 1);
            }
        }
        if let Some(o) = &self.outlier_detection {
            let path = at(path, "outlierDetection");
            errors.duration(
                at(&path, "interval"),
                o.interval,
                Duration::from_millis(100),
                Duration::from_hours(1),
            );
            errors.duration(
                at(&path, "baseEjectionTime"),
                o.base_ejection_time,
                Duration::from_secs(1),
                Duration::from_hours(1),
            );
            errors.percent(
                at(&path, "maxEjectionPercent"),
                o.max_ejection_percent,
                0.0,
                100.0,
            );
            if let Some(d) = &o.detectors {
                let path = at(&path, "detectors");
                for (field, c) in [
                    ("totalFailures", &d.total_failures),
                    ("gatewayFailures", &d.gateway_failures),
                    ("localOriginFailures", &d.local_origin_failures),
                ] {
                    errors.range(
                        at(&at(&path, field), "consecutive"),
                        c.as_ref().map(|c| c.consecutive),
                        1,
                        1000,
                    );
                }
                if d.local_origin_failures.is_some()
                    && o.split_external_and_local_errors != Some(true)
                {
                    errors.push(
                        at(&path, "localOriginFailures"),
                        "needs outlierDetection.splitExternalAndLocalErrors: true",
                    );
                }
                if let Some(s) = &d.success_rate {
                    errors.range(
                        at(&at(&path, "successRate"), "standardDeviationFactor"),
                        s.standard_deviation_factor,
                        0.1,
                        10.0,
                    );
                }
                if let Some(f) = &d.failure_percentage {
                    errors.percent(
                        at(&at(&path, "failurePercentage"), "threshold"),
                        f.threshold,
                        0.0,
                        100.0,
                    );
                }
            }
        }
    }
}

impl Spec for MeshCircuitBreakerSpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections {
                rules: Some(&self.rules),
                from: Some((&self.from, FROM_KINDS)),
                to: Some((&self.to, TO_KINDS)),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    fn to(default: serde_json::Value) -> serde_json::Value {
        json!({"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}]})
    }

    #[test]
    fn validation_table() {
        table::<MeshCircuitBreakerSpec>(
            &[
                to(
                    json!({"connectionLimits": {"maxConnections": 1024, "maxPendingRequests": 128, "maxRequests": 512, "maxRetries": 3},
                          "outlierDetection": {"interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 20,
                                               "splitExternalAndLocalErrors": true,
                                               "detectors": {"totalFailures": {"consecutive": 5}, "gatewayFailures": {"consecutive": 3},
                                                             "localOriginFailures": {"consecutive": 7},
                                                             "successRate": {"minimumHosts": 5, "requestVolume": 100, "standardDeviationFactor": 1.9},
                                                             "failurePercentage": {"threshold": "85%"}}}}),
                ),
                json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionLimits": {"maxConnections": 100}}}]}),
            ],
            &[
                (
                    to(json!({"connectionLimits": {"maxConnections": 0}})),
                    &[(
                        "spec.to[0].default.connectionLimits.maxConnections",
                        "must be at least 1 (got 0)",
                    )],
                ),
                (
                    to(
                        json!({"outlierDetection": {"interval": "10ms", "maxEjectionPercent": "120%"}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.outlierDetection.interval",
                            "must be between 100ms and 1h (got 10ms)",
                        ),
                        (
                            "spec.to[0].default.outlierDetection.maxEjectionPercent",
                            "must be between 0% and 100% (got 120%)",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"outlierDetection": {"detectors": {"totalFailures": {"consecutive": 0}, "localOriginFailures": {"consecutive": 2}}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.outlierDetection.detectors.totalFailures.consecutive",
                            "must be between 1 and 1000 (got 0)",
                        ),
                        (
                            "spec.to[0].default.outlierDetection.detectors.localOriginFailures",
                            "needs outlierDetection.splitExternalAndLocalErrors",
                        ),
                    ],
                ),
                (
                    to(json!({"outlierDetection": {"detectors": {"totalFailures": {}}}})),
                    &[(
                        "spec.to[0].default.outlierDetection.detectors.totalFailures.consecutive",
                        "is required",
                    )],
                ),
                (
                    to(
                        json!({"outlierDetection": {"detectors": {"successRate": {"standardDeviationFactor": 20}}}}),
                    ),
                    &[(
                        "spec.to[0].default.outlierDetection.detectors.successRate.standardDeviationFactor",
                        "must be between 0.1 and 10 (got 20)",
                    )],
                ),
            ],
        );
    }

    /// Kuma 2.9+ `rules`: limits and outlier detection for all inbound traffic.
    #[test]
    fn rules_table() {
        table::<MeshCircuitBreakerSpec>(
            &[
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "web"}},
                     "rules": [{"default": {"outlierDetection": {"interval": "5s", "maxEjectionPercent": 20,
                                                                 "detectors": {"totalFailures": {"consecutive": 10}}}}}]}),
            ],
            &[(
                json!({"rules": [{"default": {"outlierDetection": {"maxEjectionPercent": 120}}}]}),
                &[(
                    "spec.rules[0].default.outlierDetection.maxEjectionPercent",
                    "must be between 0% and 100%",
                )],
            )],
        );
    }
}
