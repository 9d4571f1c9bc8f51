//! `MeshRateLimit`: local HTTP request and TCP connection rate limits.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::policies::mesh_http_route::Header;
use crate::spec::{Errors, Spec, at, check_header_name, idx};
use crate::target_ref::{
    Conf, FROM_KINDS, PolicyItem, Rule, TOP_KINDS, TargetRef, check_items, check_rules,
    require_some,
};

/// The spec of a `MeshRateLimit`: limits on what the proxies accept, by source. Each
/// proxy counts on its own (local rate limiting).
///
/// ```yaml
/// type: MeshRateLimit
/// mesh: default
/// name: backend-rate-limit
/// spec:
///   targetRef: {kind: MeshService, name: backend}
///   from:
///     - targetRef: {kind: Mesh}
///       default:
///         local:
///           http:
///             requestRate: {num: 100, interval: 1s}
///             onRateLimit: {status: 429, headers: {set: [{name: x-rate-limited, value: "true"}]}}
///           tcp:
///             connectionRate: {num: 50, interval: 1s}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRateLimitSpec {
    /// The proxies whose inbound traffic is limited. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Limits by source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<RateLimitConf>>,
    /// Limits on all traffic the proxies receive (Kuma 2.9+ `rules`; each acts as a
    /// `from[]` entry for `{kind: Mesh}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<RateLimitConf>>,
    /// Kuma's `to[]` limits traffic to a MeshExternalService or through a gateway;
    /// Causeway has neither yet, so any entry is refused with that reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<RateLimitConf>>,
}

/// Rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct RateLimitConf {
    /// Limits counted by each proxy on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRateLimit>,
}

/// Local rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct LocalRateLimit {
    /// For HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRateLimit>,
    /// For TCP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRateLimit>,
}

/// An HTTP request rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpRateLimit {
    /// Turns the limit off (for example for one source in a more specific entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// How many requests per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    /// The answer to a limited request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

/// A TCP connection rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TcpRateLimit {
    /// Turns the limit off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// How many new connections per interval; more are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

/// A rate: `num` per `interval` (a token bucket of `num` tokens refilled each interval).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    /// How many, at least 1.
    pub num: u32,
    /// Per how long, from 50ms to 24h.
    pub interval: Duration,
}

/// The answer to a limited request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct OnRateLimit {
    /// The status, 400 to 599. Built-in default 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Headers added to the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<ResponseHeaders>,
}

/// Headers of a generated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct ResponseHeaders {
    /// Headers to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Headers to set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
}

fn check_rate(errors: &mut Errors, path: String, rate: &Option<Rate>) {
    if let Some(rate) = rate {
        errors.at_least(at(&path, "num"), Some(rate.num), 1);
        errors.duration(
            at(&path, "interval"),
            Some(rate.interval),
            Duration::from_millis(50),
            Duration::from_hours(24),
        );
    }
}

impl Conf for RateLimitConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let Some(local) = &self.local else { return };
        let path = at(path, "local");
        if let Some(http) = &local.http {
            let path = at(&path, "http");
            check_rate(errors, at(&path, "requestRate"), &http.request_rate);
            if http.disabled != Some(true) && http.request_rate.is_none() {
                errors.push(
                    at(&path, "requestRate"),
                    "is required unless disabled is true",
                );
            }
            if let Some(on) = &http.on_rate_limit {
                let path = at(&path, "onRateLimit");
                errors.range(at(&path, "status"), on.status, 400, 599);
                if let Some(h) = &on.headers {
                    for (list, headers) in [("add", &h.add), ("set", &h.set)] {
                        for (i, header) in headers.iter().enumerate() {
                            errors.check(
                                at(&idx(&at(&at(&path, "headers"), list), i), "name"),
                                check_header_name(&header.name),
                            );
                        }
                    }
                }
            }
        }
        if let Some(tcp) = &local.tcp {
            let path = at(&path, "tcp");
            check_rate(errors, at(&path, "connectionRate"), &tcp.connection_rate);
            if tcp.disabled != Some(true) && tcp.connection_rate.is_none() {
                errors.push(
                    at(&path, "connectionRate"),
                    "is required unless disabled is true",
                );
            }
        }
    }
}

impl Spec for MeshRateLimitSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(
            errors,
            "spec",
            &[
                ("rules", self.rules.len()),
                ("from", self.from.len()),
                ("to", self.to.len()),
            ],
        );
        check_rules(errors, "spec.rules", &self.rules);
        for (i, item) in self.to.iter().enumerate() {
            let path = crate::spec::idx("spec.to", i);
            if item.target_ref.kind == crate::target_ref::TargetRefKind::MeshExternalService {
                item.target_ref
                    .check(errors, &crate::spec::at(&path, "targetRef"), &[]);
            } else {
                errors.push(
                    path,
                    "to[] limits traffic to external services or through gateways, and Causeway has no external services or gateways yet; limit what a service receives with rules or from",
                );
            }
        }
        check_items(errors, "spec.from", &self.from, FROM_KINDS);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    fn from(default: serde_json::Value) -> serde_json::Value {
        json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": default}]})
    }

    #[test]
    fn validation_table() {
        table::<MeshRateLimitSpec>(
            &[
                from(
                    json!({"local": {"http": {"requestRate": {"num": 100, "interval": "1s"},
                                               "onRateLimit": {"status": 429, "headers": {"set": [{"name": "x-rate-limited", "value": "true"}]}}},
                                      "tcp": {"connectionRate": {"num": 50, "interval": "1s"}}}}),
                ),
                from(json!({"local": {"http": {"disabled": true}}})),
            ],
            &[
                (
                    from(
                        json!({"local": {"http": {"requestRate": {"num": 0, "interval": "10ms"}}}}),
                    ),
                    &[
                        (
                            "spec.from[0].default.local.http.requestRate.num",
                            "must be at least 1 (got 0)",
                        ),
                        (
                            "spec.from[0].default.local.http.requestRate.interval",
                            "must be between 50ms and 24h (got 10ms)",
                        ),
                    ],
                ),
                (
                    from(json!({"local": {"http": {"onRateLimit": {"status": 200}}, "tcp": {}}})),
                    &[
                        (
                            "spec.from[0].default.local.http.requestRate",
                            "is required unless disabled is true",
                        ),
                        (
                            "spec.from[0].default.local.http.onRateLimit.status",
                            "must be between 400 and 599 (got 200)",
                        ),
                        (
                            "spec.from[0].default.local.tcp.connectionRate",
                            "is required unless disabled is true",
                        ),
                    ],
                ),
                (
                    from(
                        json!({"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}, "onRateLimit": {"headers": {"add": [{"name": "bad header", "value": "x"}]}}}}}),
                    ),
                    &[(
                        "spec.from[0].default.local.http.onRateLimit.headers.add[0].name",
                        "not a valid HTTP header name",
                    )],
                ),
                (
                    from(json!({"global": {}})),
                    &[(
                        "spec.from[0].default.global",
                        "unknown field `global`, expected one of: local",
                    )],
                ),
            ],
        );
    }

    /// Kuma 2.9+ `rules`; `to[]` (external services, gateways) is refused with why.
    #[test]
    fn kuma_forms_table() {
        table::<MeshRateLimitSpec>(
            &[
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "http"},
                     "rules": [{"default": {"local": {"http": {"requestRate": {"num": 5, "interval": "10s"},
                                                              "onRateLimit": {"status": 423}}}}}]}),
            ],
            &[
                (
                    json!({"rules": [{"default": {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}, "onRateLimit": {"status": 99}}}}}]}),
                    &[(
                        "spec.rules[0].default.local.http.onRateLimit.status",
                        "must be between 400 and 599 (got 99)",
                    )],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshExternalService", "name": "httpbin"}, "default": {}},
                                  {"targetRef": {"kind": "Mesh"}, "default": {}}]}),
                    &[
                        (
                            "spec.to[0].targetRef.kind",
                            "MeshExternalService: Causeway has no external services yet",
                        ),
                        (
                            "spec.to[1]",
                            "Causeway has no external services or gateways yet",
                        ),
                    ],
                ),
            ],
        );
    }
}
