//! `MeshHealthCheck`: active HTTP, TCP and gRPC health checks of destinations.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::spec::{Errors, Spec, at, check_status, idx};
use crate::target_ref::{Conf, PolicyItem, Sections, TO_KINDS, TargetRef, check_policy};

/// The spec of a `MeshHealthCheck`.
///
/// ```yaml
/// type: MeshHealthCheck
/// mesh: default
/// name: backend-health
/// spec:
///   to:
///     - targetRef: {kind: MeshService, name: backend}
///       default:
///         interval: 10s
///         timeout: 2s
///         unhealthyThreshold: 3
///         healthyThreshold: 1
///         http: {path: /healthz, expectedStatuses: [200]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHealthCheckSpec {
    /// The proxies that run the checks. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The checks, by destination service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<HealthCheckConf>>,
}

/// An active health check. The protocol check used follows the destination's
/// protocol: gRPC, then HTTP, then TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HealthCheckConf {
    /// Time between checks, from 1s to 1h. Built-in default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long to wait for an answer, more than 0s and at most `interval`. Built-in
    /// default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed checks in a row that mark an endpoint unhealthy, at least 1. Built-in
    /// default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that mark it healthy again, at least 1. Built-in
    /// default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// A random delay added to each interval, at most 1h, so checks spread out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Duration>,
    /// When fewer than this share of endpoints are healthy, traffic goes to all of them
    /// (panic mode), 0 to 100. Built-in default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percent>,
    /// An HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// A TCP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// A gRPC check (`grpc.health.v1.Health/Check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

/// An HTTP health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpHealthCheck {
    /// Turns the HTTP check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// The path requested, starting with `/`. Built-in default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Statuses that count as healthy. Built-in default `[200]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

/// A TCP health check: connect, optionally send bytes and expect an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TcpHealthCheck {
    /// Turns the TCP check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Bytes to send, base64. Absent: only connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Byte strings, base64, that must all appear in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

/// A gRPC health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct GrpcHealthCheck {
    /// Turns the gRPC check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// The service name sent in the check. Absent: the whole server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The `:authority` sent. Absent: the destination service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl Conf for HealthCheckConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let hour = Duration::from_hours(1);
        errors.duration(
            at(path, "interval"),
            self.interval,
            Duration::from_secs(1),
            hour,
        );
        errors.positive_duration(at(path, "timeout"), self.timeout, hour);
        if let (Some(timeout), Some(interval)) = (self.timeout, self.interval)
            && timeout > interval
        {
            errors.push(
                at(path, "timeout"),
                format!("must be at most interval ({interval}) (got {timeout})"),
            );
        }
        errors.range(
            at(path, "unhealthyThreshold"),
            self.unhealthy_threshold,
            1,
            1000,
        );
        errors.range(
            at(path, "healthyThreshold"),
            self.healthy_threshold,
            1,
            1000,
        );
        errors.duration(
            at(path, "intervalJitter"),
            self.interval_jitter,
            Duration::ZERO,
            hour,
        );
        errors.percent(
            at(path, "healthyPanicThreshold"),
            self.healthy_panic_threshold,
            0.0,
            100.0,
        );
        if let Some(http) = &self.http {
            let path = at(path, "http");
            if let Some(p) = &http.path
                && !p.starts_with('/')
            {
                errors.push(
                    at(&path, "path"),
                    format!("must start with '/' (got {p:?})"),
                );
            }
            if let Some(statuses) = &http.expected_statuses {
                if statuses.is_empty() {
                    errors.push(
                        at(&path, "expectedStatuses"),
                        "must not be empty; leave it out for [200]",
                    );
                }
                for (i, s) in statuses.iter().enumerate() {
                    errors.check(idx(&at(&path, "expectedStatuses"), i), check_status(*s));
                }
            }
        }
        if let Some(tcp) = &self.tcp {
            let path = at(path, "tcp");
            let base64 = |s: &str| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
                    && s.len().is_multiple_of(4)
            };
            if let Some(send) = &tcp.send
                && !base64(send)
            {
                errors.push(at(&path, "send"), "must be base64 (like aGVsbG8=)");
            }
            for (i, r) in tcp.receive.iter().flatten().enumerate() {
                if !base64(r) {
                    errors.push(
                        idx(&at(&path, "receive"), i),
                        "must be base64 (like aGVsbG8=)",
                    );
                }
            }
        }
    }
}

impl Spec for MeshHealthCheckSpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections::to_only(&self.to, TO_KINDS),
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
        table::<MeshHealthCheckSpec>(
            &[to(
                json!({"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3, "healthyThreshold": 1,
                          "intervalJitter": "1s", "healthyPanicThreshold": 50,
                          "http": {"path": "/healthz", "expectedStatuses": [200, 204]},
                          "tcp": {"send": "cGluZw==", "receive": ["cG9uZw=="]},
                          "grpc": {"serviceName": "backend.v1", "authority": "backend"}}),
            )],
            &[
                (
                    to(json!({"interval": "5s", "timeout": "10s"})),
                    &[(
                        "spec.to[0].default.timeout",
                        "must be at most interval (5s) (got 10s)",
                    )],
                ),
                (
                    to(json!({"interval": "100ms", "unhealthyThreshold": 0})),
                    &[
                        (
                            "spec.to[0].default.interval",
                            "must be between 1s and 1h (got 100ms)",
                        ),
                        (
                            "spec.to[0].default.unhealthyThreshold",
                            "must be between 1 and 1000 (got 0)",
                        ),
                    ],
                ),
                (
                    to(json!({"http": {"path": "healthz", "expectedStatuses": [200, 700]}})),
                    &[
                        ("spec.to[0].default.http.path", "must start with '/'"),
                        (
                            "spec.to[0].default.http.expectedStatuses[1]",
                            "between 100 and 599 (got 700)",
                        ),
                    ],
                ),
                (
                    to(json!({"tcp": {"send": "not base64!"}})),
                    &[("spec.to[0].default.tcp.send", "must be base64")],
                ),
                (
                    to(json!({"grpc": {"service": "x"}})),
                    &[("spec.to[0].default.grpc.service", "unknown field `service`")],
                ),
            ],
        );
    }
}
