//! `MeshTimeout`: connection, idle, request and stream timeouts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::spec::{Errors, Spec, at};
use crate::target_ref::{
    Conf, FROM_KINDS, PolicyItem, TO_ROUTE_KINDS, TOP_KINDS, TargetRef, check_items, require_some,
};

/// The spec of a `MeshTimeout`.
///
/// ```yaml
/// type: MeshTimeout
/// mesh: default
/// name: backend-timeouts
/// spec:
///   targetRef: {kind: MeshService, name: backend}
///   to:
///     - targetRef: {kind: MeshService, name: db}
///       default: {connectTimeout: 2s, http: {requestTimeout: 5s}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTimeoutSpec {
    /// The proxies this policy configures. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Timeouts for traffic the proxies receive, by source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<TimeoutConf>>,
    /// Timeouts for traffic the proxies send, by destination service or route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<TimeoutConf>>,
}

/// Timeouts. Every field is optional; an absent field keeps what a less specific
/// policy set, or the built-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TimeoutConf {
    /// How long to wait for a TCP (and TLS) connection to be established. From 1ms to
    /// 1h. Built-in default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// How long a connection may be idle (no bytes either way) before it is closed.
    /// `0s` disables it; at most 24h. Built-in default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// HTTP-level timeouts; ignored for TCP traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
}

/// HTTP timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpTimeouts {
    /// How long a whole request may take, from the first byte sent until the end of the
    /// response. `0s` disables it; at most 24h. Built-in default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// How long an HTTP/2 or gRPC stream may be idle. `0s` disables it; at most 24h.
    /// Built-in default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    /// How long a stream may live in total. `0s` disables it; at most 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    /// How long a connection may live in total before it is drained. `0s` disables it;
    /// at most 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// How long to wait for the request headers after a connection is accepted
    /// (inbound). `0s` disables it; at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
}

impl Conf for TimeoutConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let day = Duration::from_hours(24);
        errors.duration(
            at(path, "connectTimeout"),
            self.connect_timeout,
            Duration::from_millis(1),
            Duration::from_hours(1),
        );
        errors.duration(
            at(path, "idleTimeout"),
            self.idle_timeout,
            Duration::ZERO,
            day,
        );
        if let Some(http) = &self.http {
            let path = at(path, "http");
            for (field, value, max) in [
                ("requestTimeout", http.request_timeout, day),
                ("streamIdleTimeout", http.stream_idle_timeout, day),
                ("maxStreamDuration", http.max_stream_duration, day),
                ("maxConnectionDuration", http.max_connection_duration, day),
                (
                    "requestHeadersTimeout",
                    http.request_headers_timeout,
                    Duration::from_hours(1),
                ),
            ] {
                errors.duration(at(&path, field), value, Duration::ZERO, max);
            }
        }
    }
}

impl Spec for MeshTimeoutSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(
            errors,
            "spec",
            &[("from", self.from.len()), ("to", self.to.len())],
        );
        check_items(errors, "spec.from", &self.from, FROM_KINDS);
        check_items(errors, "spec.to", &self.to, TO_ROUTE_KINDS);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        table::<MeshTimeoutSpec>(
            &[
                json!({"targetRef": {"kind": "MeshService", "name": "backend"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                               "default": {"connectTimeout": "2s", "http": {"requestTimeout": "5s"}}}]}),
                json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "0s"}}],
                       "to": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "slow-report"},
                               "default": {"http": {"requestTimeout": "1m", "streamIdleTimeout": "0"}}}]}),
            ],
            &[
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "25h"}}}]}),
                    &[(
                        "spec.to[0].default.http.requestTimeout",
                        "must be between 0s and 24h (got 25h)",
                    )],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "0s", "idleTimeout": "1d"}}]}),
                    &[("spec.to[0].default.idleTimeout", "invalid duration \"1d\"")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "0s"}}],
                           "from": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {}}]}),
                    &[
                        (
                            "spec.from[0].targetRef.kind",
                            "kind MeshHTTPRoute is not allowed here",
                        ),
                        (
                            "spec.to[0].default.connectTimeout",
                            "must be between 1ms and 1h (got 0s)",
                        ),
                    ],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}}]}),
                    &[(
                        "spec.to[0].default.connectionTimeout",
                        "unknown field `connectionTimeout`",
                    )],
                ),
                (
                    // Shape errors in several places are all reported, the decoder's
                    // first.
                    json!({"form": [], "to": [
                        {"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}},
                        {"targetRef": {"kind": "Meshh"}, "default": {"http": {"requestTimeout": 5}}}]}),
                    &[
                        (
                            "spec.form",
                            "unknown field `form`, expected one of: targetRef, from, to",
                        ),
                        (
                            "spec.to[0].default.connectionTimeout",
                            "unknown field `connectionTimeout`",
                        ),
                        (
                            "spec.to[1].default.http.requestTimeout",
                            "invalid type: integer, expected string",
                        ),
                        (
                            "spec.to[1].targetRef.kind",
                            "unknown variant `Meshh`, expected one of `Mesh`, `MeshSubset`",
                        ),
                    ],
                ),
                (
                    json!({"targetRef": {"kind": "Mesh"}}),
                    &[("spec", "needs at least one entry in from or to")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}}, "default": {}}]}),
                    &[(
                        "spec.to[0].targetRef.kind",
                        "kind MeshSubset is not allowed here",
                    )],
                ),
            ],
        );
    }
}
