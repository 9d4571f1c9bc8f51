//! The MeshRetry configurer: each outbound's merged `to[]` configuration, decoded once
//! into [`RetryConf`], over the built-in defaults ([`Retry::default_policy`]), which
//! apply without any policy too: retries are on by default, under a budget.
//!
//! Folded here so the sidecar has one list per protocol: `retriableStatusCodes` joins
//! `retryOn` as status codes (when `retryOn` has `RetriableStatusCodes`), and Kuma's
//! `HttpMethod*` conditions become the list of methods retried.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{BackOffPolicy, Retry};
use causeway_api::{BackOff, Duration, HttpRetryOn, Proxy, ResetHeader, Resource, RetryConf};

use std::collections::BTreeMap;

use super::{ComputeError, decode_outbounds, decode_routes};

/// Retries per route with entries of their own, by MeshHTTPRoute name.
pub(crate) type RouteRetries = BTreeMap<String, Retry>;

/// The retries of each of `proxy`'s outbounds, in its order, and of their routes that
/// `to[]` entries name (merged over the destination's).
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<(Vec<Retry>, Vec<RouteRetries>), ComputeError> {
    let effective =
        causeway_api::effective("MeshRetry", policies, proxy).expect("MeshRetry is a policy kind");
    let outbounds = decode_outbounds::<RetryConf>("MeshRetry", &effective, proxy)?
        .into_iter()
        .map(|conf| {
            conf.as_ref()
                .map_or_else(Retry::default_policy, over_defaults)
        })
        .collect();
    let routes = decode_routes("MeshRetry", &effective, proxy, over_defaults)?;
    Ok((outbounds, routes))
}

fn back_off(b: Option<&BackOff>) -> BackOffPolicy {
    let Some(b) = b else {
        return BackOffPolicy::DEFAULT;
    };
    let base = b
        .base_interval
        .unwrap_or(BackOffPolicy::DEFAULT.base_interval);
    let max = b.max_interval.unwrap_or_else(|| {
        Duration::from_millis((base.as_std().as_millis() as u64).saturating_mul(10))
    });
    BackOffPolicy {
        base_interval: base,
        max_interval: max.max(base),
    }
}

fn over_defaults(conf: &RetryConf) -> Retry {
    let mut r = Retry::default_policy();
    if let Some(http) = &conf.http {
        let p = &mut r.http;
        if let Some(n) = http.num_retries {
            p.num_retries = n;
        }
        if let Some(t) = http.per_try_timeout {
            p.per_try_timeout = t;
        }
        if http.back_off.is_some() {
            p.back_off = back_off(http.back_off.as_ref());
        }
        if let Some(on) = &http.retry_on {
            p.retry_on.clear();
            p.methods.clear();
            for c in on {
                match c {
                    HttpRetryOn::Method(m) => {
                        let upper = serde_json::to_value(m)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if !p.methods.contains(&upper) {
                            p.methods.push(upper);
                        }
                    }
                    HttpRetryOn::RetriableStatusCodes => {
                        for code in http.retriable_status_codes.iter().flatten() {
                            p.retry_on.push(HttpRetryOn::Status(*code));
                        }
                    }
                    other => p.retry_on.push(*other),
                }
            }
            // Only methods listed: the default conditions, for those methods.
            if p.retry_on.is_empty() && !p.methods.is_empty() {
                p.retry_on = Retry::default_policy().http.retry_on;
            }
            p.retry_on.dedup();
        }
        if let Some(h) = &http.retriable_response_headers {
            p.retriable_response_headers = h.clone();
        }
        if let Some(h) = &http.retriable_request_headers {
            p.retriable_request_headers = h.clone();
        }
        if let Some(b) = &http.rate_limited_back_off {
            let rl = &mut p.rate_limited_back_off;
            if let Some(headers) = &b.reset_headers {
                rl.reset_headers = headers
                    .iter()
                    .map(|h| ResetHeader {
                        name: h.name.to_ascii_lowercase(),
                        format: h.format,
                    })
                    .collect();
            }
            if let Some(max) = b.max_interval {
                rl.max_interval = max;
            }
        }
        if let Some(b) = &http.budget {
            if let Some(pct) = b.percent {
                r.budget.percent = (pct.fraction() * 100.0).round() as u32;
            }
            if let Some(m) = b.min_retry_concurrency {
                r.budget.min_retry_concurrency = m;
            }
        }
    }
    if let Some(grpc) = &conf.grpc {
        let p = &mut r.grpc;
        if let Some(n) = grpc.num_retries {
            p.num_retries = n;
        }
        if let Some(t) = grpc.per_try_timeout {
            p.per_try_timeout = t;
        }
        if grpc.back_off.is_some() {
            p.back_off = back_off(grpc.back_off.as_ref());
        }
        if let Some(on) = &grpc.retry_on {
            p.retry_on = on.clone();
            p.retry_on.dedup();
        }
    }
    if let Some(n) = conf.tcp.as_ref().and_then(|t| t.max_connect_attempt) {
        r.tcp_connect_attempts = n;
    }
    r
}

#[cfg(test)]
mod tests {
    use causeway_api::GrpcRetryOn;
    use serde_json::json;

    use super::*;
    use crate::proxy_config::tests::check_outbound_goldens;

    /// Golden cases under `testdata/mesh_retry/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // A Mesh-wide policy for every protocol; backend's entry (Kuma's forms: status
        // codes as strings, methods) merges over it; db has no entry of its own.
        ("mesh_retry/mesh-wide-and-service", "zone-a", "web-1"),
    ];

    fn conf(v: serde_json::Value) -> RetryConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_codes_and_methods_fold_into_the_conditions() {
        let r = over_defaults(&conf(json!({"http": {
            "retryOn": ["RetriableStatusCodes", "Reset", "HttpMethodPost", "HttpMethodGet", "429"],
            "retriableStatusCodes": [503, 409]
        }})));
        assert_eq!(
            r.http.retry_on,
            [
                HttpRetryOn::Status(503),
                HttpRetryOn::Status(409),
                HttpRetryOn::Reset,
                HttpRetryOn::Status(429)
            ]
        );
        assert_eq!(r.http.methods, ["POST", "GET"]);
        // Methods alone: the default conditions for those methods.
        let r = over_defaults(&conf(json!({"http": {"retryOn": ["HttpMethodPost"]}})));
        assert_eq!(r.http.retry_on, Retry::default_policy().http.retry_on);
        assert_eq!(r.http.methods, ["POST"]);
    }

    #[test]
    fn unset_fields_keep_the_defaults_and_max_interval_follows_base() {
        let r = over_defaults(&conf(
            json!({"http": {"backOff": {"baseInterval": "100ms"}},
                                          "grpc": {"retryOn": ["Cancelled"]}}),
        ));
        assert_eq!(r.http.num_retries, 1);
        assert_eq!(r.http.back_off.max_interval, Duration::from_secs(1));
        assert_eq!(r.grpc.retry_on, [GrpcRetryOn::Cancelled]);
        assert_eq!(r.grpc.back_off, BackOffPolicy::DEFAULT);
        assert_eq!(r.tcp_connect_attempts, 5);
        assert_eq!(r.budget, Retry::default_policy().budget);
        assert!(over_defaults(&conf(json!({}))).is_default());
    }

    #[test]
    fn golden_retries() {
        check_outbound_goldens(CASES, "retry", |o| Some(&o.retry));
    }
}
