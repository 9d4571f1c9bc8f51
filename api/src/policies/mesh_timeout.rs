//! `MeshTimeout`: connection, idle, request and stream timeouts.
//!
//! Field names follow Kuma's MeshTimeout (`connectionTimeout`, `idleTimeout`,
//! `http.requestTimeout`, ...). The connect timeout was first named `connectTimeout`
//! here; that name is still accepted (a serde alias, listed as deprecated in the JSON
//! Schema) and is written back as `connectionTimeout`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::spec::{Errors, Spec, at};
use crate::target_ref::{
    Conf, FROM_KINDS, PolicyItem, Rule, Sections, TO_ROUTE_KINDS, TargetRef, check_policy,
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
///       default: {connectionTimeout: 2s, http: {requestTimeout: 5s}}
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
    /// Timeouts for all traffic the proxies receive (Kuma 2.9+ `rules`; each acts as a
    /// `from[]` entry for `{kind: Mesh}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<TimeoutConf>>,
    /// Timeouts for traffic the proxies send, by destination service or route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<TimeoutConf>>,
}

/// Timeouts. Every field is optional; an absent field keeps what a less specific
/// policy set, or the built-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(transform = accept_old_connect_timeout_name)]
#[derive(Default)]
pub struct TimeoutConf {
    /// How long to wait for a connection to an endpoint to be established: the TCP
    /// connect, then the TLS handshake (or the QUIC stream through an ingress). From
    /// 1ms to 1h. Built-in default `5s`. Formerly `connectTimeout`, still accepted.
    // The Rust name stays `connect_timeout`: code that builds this struct keeps compiling.
    #[serde(
        default,
        rename = "connectionTimeout",
        alias = "connectTimeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// How long a connection may be idle (no bytes either way; for HTTP, no request in
    /// flight) before it is closed. `0s` disables it; at most 24h. Built-in default `1h`.
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
    /// How long a whole request may take to be answered: from the moment the proxy has
    /// the request's head until the response's head arrives (a streaming response
    /// body is then bounded by `streamIdleTimeout` and `maxStreamDuration`). Past it,
    /// the caller gets 504 and the upstream request is cancelled. `0s` disables it; at
    /// most 24h. Built-in default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// How long a response body may send nothing before the stream is reset. `0s`
    /// disables it; at most 24h. Built-in default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    /// How long a stream (a request and its whole response) may live in total: 504 if
    /// the response's head has not come by then, otherwise the stream is reset. `0s`
    /// (the built-in default) disables it; at most 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    /// How long an inbound connection may live in total before it is drained (HTTP/2
    /// GOAWAY; HTTP/1.1 closes after the request in flight). `0s` (the built-in
    /// default) disables it; at most 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// How long an inbound HTTP/1.1 connection may take to send a request's headers
    /// (HTTP/2 from other sidecars is not covered); in `to[]`, how long the application
    /// may. Built-in default 60s inbound, off outbound; `0s` disables it; at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
}

impl Conf for TimeoutConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let day = Duration::from_hours(24);
        errors.duration(
            at(path, "connectionTimeout"),
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

/// The schema names the old `connectTimeout` too (deprecated), so what the decoder
/// accepts the schema-driven checks (shape errors, `explain`) accept as well.
fn accept_old_connect_timeout_name(schema: &mut schemars::Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    if let Some(mut old) = properties.get("connectionTimeout").cloned() {
        if let Some(o) = old.as_object_mut() {
            o.insert(
                "description".into(),
                "Deprecated name of `connectionTimeout`; written back as `connectionTimeout`."
                    .into(),
            );
            o.insert("deprecated".into(), true.into());
        }
        properties.insert("connectTimeout".into(), old);
    }
}

impl Spec for MeshTimeoutSpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections {
                rules: Some(&self.rules),
                from: Some((&self.from, FROM_KINDS)),
                to: Some((&self.to, TO_ROUTE_KINDS)),
            },
        );
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
                               "default": {"connectionTimeout": "2s", "http": {"requestTimeout": "5s"}}}]}),
                // The old name of the connect timeout still decodes.
                json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}),
                // Kuma 2.9+: inbound rules for one inbound of labelled Dataplanes.
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "http"},
                       "rules": [{"default": {"connectionTimeout": "10s", "http": {"requestTimeout": "30s"}}}]}),
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
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "0s", "idleTimeout": "1d"}}]}),
                    &[("spec.to[0].default.idleTimeout", "invalid duration \"1d\"")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "0s"}}],
                           "from": [{"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {}}]}),
                    &[
                        (
                            "spec.from[0].targetRef.kind",
                            "kind MeshHTTPRoute is not allowed here",
                        ),
                        (
                            "spec.to[0].default.connectionTimeout",
                            "must be between 1ms and 1h (got 0s)",
                        ),
                    ],
                ),
                (
                    // A range error under the old name is reported under the canonical one.
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2h"}}]}),
                    &[(
                        "spec.to[0].default.connectionTimeout",
                        "must be between 1ms and 1h (got 2h)",
                    )],
                ),
                (
                    // Both names at once: one field given twice.
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "1s", "connectionTimeout": "2s"}}]}),
                    &[("spec.to[0].default", "duplicate field `connectionTimeout`")],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeOut": "1s"}}]}),
                    &[(
                        "spec.to[0].default.connectionTimeOut",
                        "unknown field `connectionTimeOut`",
                    )],
                ),
                (
                    // Shape errors in several places are all reported, the decoder's
                    // first; the old name is no shape error.
                    json!({"form": [], "to": [
                        {"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "1s", "idleTimout": "1s"}},
                        {"targetRef": {"kind": "Meshh"}, "default": {"http": {"requestTimeout": 5}}}]}),
                    &[
                        (
                            "spec.form",
                            "unknown field `form`, expected one of: targetRef, from, rules, to",
                        ),
                        (
                            "spec.to[0].default.idleTimout",
                            "unknown field `idleTimout`",
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
                    &[("spec", "needs at least one entry in rules or from or to")],
                ),
                (
                    json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "-bad"},
                           "rules": [{"default": {"http": {"requestTimeout": "25h"}}}, {"defaults": {}}]}),
                    &[
                        (
                            "spec.rules[1].defaults",
                            "unknown field `defaults`, expected one of: default",
                        ),
                        ("spec.rules[1].default", "is required"),
                    ],
                ),
                (
                    json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "-bad"},
                           "rules": [{"default": {"http": {"requestTimeout": "25h"}}}]}),
                    &[
                        ("spec.targetRef.sectionName", "not a valid DNS label"),
                        (
                            "spec.rules[0].default.http.requestTimeout",
                            "must be between 0s and 24h (got 25h)",
                        ),
                    ],
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

    #[test]
    fn the_old_connect_timeout_name_is_written_back_as_connection_timeout() {
        let old =
            json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "90s"}}]});
        let canonical = crate::spec::canonical_spec_of::<MeshTimeoutSpec>(&old).unwrap();
        assert_eq!(
            canonical["to"][0]["default"],
            json!({"connectionTimeout": "1m30s"})
        );
        let schema = crate::spec::spec_schema_of::<MeshTimeoutSpec>();
        let conf = &schema["$defs"]["TimeoutConf"]["properties"];
        assert_eq!(conf["connectTimeout"]["deprecated"], true, "{conf:#}");
        assert!(
            conf["connectionTimeout"]["deprecated"].is_null(),
            "{conf:#}"
        );
    }
}
