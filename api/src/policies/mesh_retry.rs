//! `MeshRetry`: retries for HTTP, gRPC and TCP, with backoff and a retry budget.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::policies::mesh_http_route::{HeaderMatch, check_header_match};
use crate::spec::{Errors, Spec, at, check_header_name, check_status, idx};
use crate::target_ref::{Conf, PolicyItem, Sections, TO_ROUTE_KINDS, TargetRef, check_policy};

/// The spec of a `MeshRetry`.
///
/// ```yaml
/// type: MeshRetry
/// mesh: default
/// name: backend-retries
/// spec:
///   to:
///     - targetRef: {kind: MeshService, name: backend}
///       default:
///         http:
///           numRetries: 3
///           perTryTimeout: 500ms
///           backOff: {baseInterval: 25ms, maxInterval: 250ms}
///           retryOn: [5xx, ConnectFailure]
///           budget: {percent: 20, minRetryConcurrency: 3}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRetrySpec {
    /// The proxies whose outgoing requests are retried. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Retry settings by destination service or route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<RetryConf>>,
}

/// Retry settings per protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct RetryConf {
    /// For HTTP traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    /// For gRPC traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
    /// For TCP traffic: connection attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
}

/// HTTP retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpRetry {
    /// How many times to retry a failed request, 0 to 20. Built-in default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// The timeout of each try, more than 0s and at most 1h. Absent: only the
    /// request timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// The pause between tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    /// Which failures are retried. Built-in default `[5xx, Reset, ConnectFailure]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<HttpRetryOn>>,
    /// Status codes retried when `retryOn` has `RetriableStatusCodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_status_codes: Option<Vec<u16>>,
    /// A cap on retries, so retries cannot multiply an overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// The pause before retrying a rate-limited answer (429 or 503), from headers it
    /// carries. Default: `Retry-After`, at most 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Answers with a header that matches one of these are retried too, whatever their
    /// status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_response_headers: Option<Vec<HeaderMatch>>,
    /// When set, only requests with a header that matches one of these are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_request_headers: Option<Vec<HeaderMatch>>,
}

/// The pause a rate-limited answer asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitedBackOff {
    /// The headers read, in order; the first readable one gives the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_headers: Option<Vec<ResetHeader>>,
    /// The longest pause taken, more than 0s and at most 1h. Default `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// A header that says when to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResetHeader {
    /// The header's name.
    pub name: String,
    /// `Seconds` (to wait; an HTTP date is read too) or `UnixTimestamp` (when).
    pub format: ResetHeaderFormat,
}

/// How a reset header's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResetHeaderFormat {
    /// Seconds to wait (or, as `Retry-After` allows, an HTTP date).
    Seconds,
    /// The time to retry at, in seconds since the Unix epoch.
    UnixTimestamp,
}

/// gRPC retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct GrpcRetry {
    /// How many times to retry a failed call, 0 to 20. Built-in default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// The timeout of each try, more than 0s and at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// The pause between tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    /// Which status codes are retried. Built-in default `[Unavailable]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<GrpcRetryOn>>,
}

/// TCP retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct TcpRetry {
    /// How many times to try to connect, 1 to 20. Built-in default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempt: Option<u32>,
}

/// Exponential backoff with jitter between tries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct BackOff {
    /// The first pause, more than 0s and at most 1h. Built-in default `25ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Duration>,
    /// The longest pause; at least `baseInterval`. Built-in default ten times
    /// `baseInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// A retry budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct RetryBudget {
    /// Retries may be at most this share of the destination's requests over the last
    /// 10 seconds (Linkerd's budget: a burst from one broken connection is retried,
    /// a dead destination gets at most this much extra load), 0 to 100. Built-in
    /// default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// Retries always allowed at once, whatever the share (so a quiet destination can
    /// be retried at all). Built-in default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// HTTP failures that can be retried; in YAML a string: a name below, or an HTTP
/// status code as a string (`"503"`, Kuma's form of `RetriableStatusCodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpRetryOn {
    /// `5xx` (also Kuma's `5XX`): any 5xx response (also connect failures and resets).
    ServerError,
    /// `GatewayError`: 502, 503 or 504.
    GatewayError,
    /// `Reset`: the connection was reset or closed before a response.
    Reset,
    /// `ConnectFailure`: the connection could not be established.
    ConnectFailure,
    /// `RefusedStream`: the upstream refused the HTTP/2 stream (REFUSED_STREAM).
    RefusedStream,
    /// `Retriable4xx`: 409 Conflict.
    Retriable4xx,
    /// `RetriableStatusCodes`: one of `retriableStatusCodes`.
    RetriableStatusCodes,
    /// `"503"`: this status code (Kuma's form).
    Status(u16),
    /// `HttpMethodGet`, `HttpMethodPost`, ...: Kuma's condition on the request method
    /// (retry only requests with one of the listed methods).
    Method(crate::policies::mesh_http_route::Method),
}

/// Kuma's retry conditions that name Envoy internals Causeway has no counterpart of.
const HTTP_RETRY_ON_REFUSED: &[(&str, &str)] = &[
    (
        "EnvoyRatelimited",
        "EnvoyRatelimited: Causeway's proxies are not Envoy and set no x-envoy-ratelimited header; retry on \"429\" instead",
    ),
    (
        "Http3PostConnectFailure",
        "Http3PostConnectFailure: Causeway has no HTTP/3 between proxies yet",
    ),
];

const HTTP_RETRY_ON_NAMES: &[(&str, HttpRetryOn)] = &[
    ("5xx", HttpRetryOn::ServerError),
    ("GatewayError", HttpRetryOn::GatewayError),
    ("Reset", HttpRetryOn::Reset),
    ("ConnectFailure", HttpRetryOn::ConnectFailure),
    ("RefusedStream", HttpRetryOn::RefusedStream),
    ("Retriable4xx", HttpRetryOn::Retriable4xx),
    ("RetriableStatusCodes", HttpRetryOn::RetriableStatusCodes),
];

impl std::str::FromStr for HttpRetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::policies::mesh_http_route::Method;
        if s == "5XX" {
            return Ok(HttpRetryOn::ServerError);
        }
        if let Some((_, on)) = HTTP_RETRY_ON_NAMES.iter().find(|(name, _)| *name == s) {
            return Ok(*on);
        }
        if let Some((_, reason)) = HTTP_RETRY_ON_REFUSED.iter().find(|(name, _)| *name == s) {
            return Err((*reason).to_owned());
        }
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) {
            let code: u16 = s
                .parse()
                .map_err(|_| format!("{s:?} is not a status code"))?;
            check_status(code)?;
            return Ok(HttpRetryOn::Status(code));
        }
        if let Some(method) = s.strip_prefix("HttpMethod") {
            let method: Result<Method, _> =
                serde_json::from_value(serde_json::Value::String(method.to_ascii_uppercase()));
            if let Ok(method) = method {
                return Ok(HttpRetryOn::Method(method));
            }
        }
        let names: Vec<&str> = HTTP_RETRY_ON_NAMES.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "unknown retry condition {s:?}; use one of {}, HttpMethodGet (or another method), or a status code like \"503\"",
            names.join(", ")
        ))
    }
}

impl fmt::Display for HttpRetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpRetryOn::Status(code) => write!(f, "{code}"),
            HttpRetryOn::Method(method) => {
                let upper = serde_json::to_value(method)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let mut chars = upper.chars();
                let first = chars.next().map(|c| c.to_string()).unwrap_or_default();
                write!(
                    f,
                    "HttpMethod{first}{}",
                    chars.as_str().to_ascii_lowercase()
                )
            }
            named => {
                let name = HTTP_RETRY_ON_NAMES
                    .iter()
                    .find(|(_, on)| on == named)
                    .map(|(n, _)| *n)
                    .expect("every named condition is in HTTP_RETRY_ON_NAMES");
                f.write_str(name)
            }
        }
    }
}

impl Serialize for HttpRetryOn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpRetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HttpRetryOn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HttpRetryOn".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A retry condition: 5xx (or 5XX), GatewayError, Reset, ConnectFailure, RefusedStream, Retriable4xx, RetriableStatusCodes, HttpMethodGet (or another method), or a status code as a string like \"503\".",
            "examples": ["5xx", "ConnectFailure", "503", "HttpMethodGet"]
        })
    }
}

/// gRPC status codes that can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = with_kuma_spelling)]
pub enum GrpcRetryOn {
    /// CANCELLED (Kuma spells it `Canceled`).
    #[serde(alias = "Canceled")]
    Cancelled,
    /// DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// INTERNAL.
    Internal,
    /// RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// UNAVAILABLE.
    Unavailable,
}

/// The schema lists Kuma's `Canceled` too, which parses as `Cancelled`: what the
/// parser takes, the schema (and the CRDs made from it) must take.
fn with_kuma_spelling(schema: &mut schemars::Schema) {
    let kuma = serde_json::json!({
        "type": "string",
        "const": "Canceled",
        "description": "Kuma's spelling of `Cancelled`."
    });
    if let Some(serde_json::Value::Array(variants)) = schema.get_mut("oneOf") {
        variants.push(kuma);
    } else if let Some(serde_json::Value::Array(values)) = schema.get_mut("enum") {
        values.push("Canceled".into());
    }
}

fn check_back_off(errors: &mut Errors, path: &str, b: &BackOff) {
    let hour = Duration::from_hours(1);
    errors.positive_duration(at(path, "baseInterval"), b.base_interval, hour);
    errors.positive_duration(at(path, "maxInterval"), b.max_interval, hour);
    if let (Some(base), Some(max)) = (b.base_interval, b.max_interval)
        && max < base
    {
        errors.push(
            at(path, "maxInterval"),
            format!("must be at least baseInterval ({base}) (got {max})"),
        );
    }
}

impl Conf for RetryConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        let hour = Duration::from_hours(1);
        if let Some(http) = &self.http {
            let path = at(path, "http");
            errors.range(at(&path, "numRetries"), http.num_retries, 0, 20);
            errors.positive_duration(at(&path, "perTryTimeout"), http.per_try_timeout, hour);
            if let Some(b) = &http.back_off {
                check_back_off(errors, &at(&path, "backOff"), b);
            }
            for (i, code) in http.retriable_status_codes.iter().flatten().enumerate() {
                errors.check(
                    idx(&at(&path, "retriableStatusCodes"), i),
                    check_status(*code),
                );
            }
            let has_codes = http
                .retriable_status_codes
                .as_ref()
                .is_some_and(|c| !c.is_empty());
            let wants_codes = http
                .retry_on
                .iter()
                .flatten()
                .any(|r| *r == HttpRetryOn::RetriableStatusCodes);
            if wants_codes && !has_codes {
                errors.push(
                    at(&path, "retriableStatusCodes"),
                    "is required when retryOn has RetriableStatusCodes",
                );
            }
            if let Some(b) = &http.rate_limited_back_off {
                let path = at(&path, "rateLimitedBackOff");
                errors.positive_duration(at(&path, "maxInterval"), b.max_interval, hour);
                for (i, h) in b.reset_headers.iter().flatten().enumerate() {
                    errors.check(
                        at(&idx(&at(&path, "resetHeaders"), i), "name"),
                        check_header_name(&h.name),
                    );
                }
            }
            for (field, matches) in [
                ("retriableResponseHeaders", &http.retriable_response_headers),
                ("retriableRequestHeaders", &http.retriable_request_headers),
            ] {
                for (i, m) in matches.iter().flatten().enumerate() {
                    check_header_match(errors, &idx(&at(&path, field), i), m);
                }
            }
            if let Some(budget) = &http.budget {
                errors.percent(
                    at(&at(&path, "budget"), "percent"),
                    budget.percent,
                    0.0,
                    100.0,
                );
            }
        }
        if let Some(grpc) = &self.grpc {
            let path = at(path, "grpc");
            errors.range(at(&path, "numRetries"), grpc.num_retries, 0, 20);
            errors.positive_duration(at(&path, "perTryTimeout"), grpc.per_try_timeout, hour);
            if let Some(b) = &grpc.back_off {
                check_back_off(errors, &at(&path, "backOff"), b);
            }
        }
        if let Some(tcp) = &self.tcp {
            errors.range(
                at(&at(path, "tcp"), "maxConnectAttempt"),
                tcp.max_connect_attempt,
                1,
                20,
            );
        }
    }
}

impl Spec for MeshRetrySpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections::to_only(&self.to, TO_ROUTE_KINDS),
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
        table::<MeshRetrySpec>(
            &[
                to(
                    json!({"http": {"numRetries": 3, "perTryTimeout": "500ms", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                                   "retryOn": ["5xx", "ConnectFailure", "RetriableStatusCodes"], "retriableStatusCodes": [429],
                                   "budget": {"percent": "20%", "minRetryConcurrency": 3}},
                          "grpc": {"numRetries": 2, "retryOn": ["Unavailable", "DeadlineExceeded"]},
                          "tcp": {"maxConnectAttempt": 3}}),
                ),
                // Kuma's header conditions and rate-limited backoff.
                to(
                    json!({"http": {"retriableResponseHeaders": [{"name": "x-retry", "type": "Present"}, {"name": "x-state", "type": "RegularExpression", "value": "busy|later"}],
                                   "retriableRequestHeaders": [{"name": "x-idempotent", "value": "true"}],
                                   "rateLimitedBackOff": {"resetHeaders": [{"name": "Retry-After", "format": "Seconds"}, {"name": "x-ratelimit-reset", "format": "UnixTimestamp"}], "maxInterval": "10s"}}}),
                ),
                // Kuma's conditions: 5XX, status codes as strings, request methods, Canceled.
                to(
                    json!({"http": {"retryOn": ["5XX", "GatewayError", "Reset", "Retriable4xx", "429", "503", "HttpMethodGet", "HttpMethodPost"]},
                      "grpc": {"retryOn": ["Canceled", "ResourceExhausted"]}}),
                ),
            ],
            &[
                (
                    to(json!({"http": {"numRetries": 50}})),
                    &[(
                        "spec.to[0].default.http.numRetries",
                        "must be between 0 and 20 (got 50)",
                    )],
                ),
                (
                    to(
                        json!({"http": {"backOff": {"baseInterval": "1s", "maxInterval": "100ms"}, "perTryTimeout": "0s"}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.http.perTryTimeout",
                            "must be more than 0s",
                        ),
                        (
                            "spec.to[0].default.http.backOff.maxInterval",
                            "must be at least baseInterval (1s) (got 100ms)",
                        ),
                    ],
                ),
                (
                    to(json!({"http": {"retryOn": ["5XY"]}})),
                    &[(
                        "spec.to[0].default.http.retryOn[0]",
                        "unknown retry condition \"5XY\"; use one of 5xx, GatewayError",
                    )],
                ),
                (
                    to(json!({"http": {"retryOn": ["EnvoyRatelimited"]}})),
                    &[(
                        "spec.to[0].default.http.retryOn[0]",
                        "Causeway's proxies are not Envoy",
                    )],
                ),
                (
                    to(json!({"http": {"retryOn": ["099"]}})),
                    &[(
                        "spec.to[0].default.http.retryOn[0]",
                        "must be an HTTP status code between 100 and 599 (got 99)",
                    )],
                ),
                (
                    to(
                        json!({"http": {"retryOn": ["RetriableStatusCodes"], "budget": {"percent": 101}}, "tcp": {"maxConnectAttempt": 0}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.http.retriableStatusCodes",
                            "is required when retryOn has RetriableStatusCodes",
                        ),
                        (
                            "spec.to[0].default.http.budget.percent",
                            "must be between 0% and 100% (got 101%)",
                        ),
                        (
                            "spec.to[0].default.tcp.maxConnectAttempt",
                            "must be between 1 and 20 (got 0)",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"http": {"retriableResponseHeaders": [{"name": "x-state", "type": "RegularExpression", "value": "(busy"}, {"name": "x-retry", "type": "Present", "value": "1"}],
                                       "rateLimitedBackOff": {"resetHeaders": [{"name": "bad name", "format": "Seconds"}], "maxInterval": "0s"}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.http.rateLimitedBackOff.maxInterval",
                            "must be more than 0s",
                        ),
                        (
                            "spec.to[0].default.http.rateLimitedBackOff.resetHeaders[0].name",
                            "",
                        ),
                        (
                            "spec.to[0].default.http.retriableResponseHeaders[0].value",
                            "not a valid regular expression",
                        ),
                        (
                            "spec.to[0].default.http.retriableResponseHeaders[1].value",
                            "must not be set for type Present",
                        ),
                    ],
                ),
                (
                    to(json!({"http": {"retriableStatusCodes": [99]}})),
                    &[(
                        "spec.to[0].default.http.retriableStatusCodes[0]",
                        "between 100 and 599 (got 99)",
                    )],
                ),
                (
                    json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
                    &[(
                        "spec.from",
                        "unknown field `from`, expected one of: targetRef, to",
                    )],
                ),
            ],
        );
    }
}
