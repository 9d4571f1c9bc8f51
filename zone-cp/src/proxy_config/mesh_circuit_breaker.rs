//! The MeshCircuitBreaker configurer: each outbound's merged `to[]` configuration,
//! decoded once into [`CircuitBreakerConf`], over the built-in defaults. No policy, no
//! limits and no outlier detection beyond the passive ejection of endpoints that refuse
//! connections, which always applies.
//!
//! What is applied: `maxRequests` (HTTP), `maxPendingRequests` (HTTP requests waiting
//! for a connection), `maxConnections` (TCP) and `maxRetries` (retries in flight); the
//! consecutive detectors (`totalFailures`, `gatewayFailures`, `localOriginFailures`) and
//! the interval-based ones (`successRate`, `failurePercentage`, judged every
//! `interval`), with `baseEjectionTime` and `maxEjectionPercent`. An
//! `outlierDetection` without detectors ejects after 5 consecutive 5xx, as Envoy's.
//! Inbound, by caller (`from[]`, most specific first; `rules` for every caller):
//! `maxConnections` (caller connections), `maxRequests` (requests to the application),
//! `maxPendingRequests` (requests waiting for a dial to it), `maxRetries` (retried
//! requests, which callers' sidecars mark), and outlier detection of the application
//! itself (ejected, the sidecar answers 503 for it, as Envoy does for an inbound
//! cluster).
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{
    CallerLimits, CircuitBreaker, FailurePercentageDetector, InboundLimits, OutlierDetection,
    SuccessRateDetector,
};
use causeway_api::{CircuitBreakerConf, Duration, Proxy, Resource};

use super::{ComputeError, caller_source, decode_conf, outbound_confs};

const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 20;
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The circuit breaking of each of `proxy`'s inbounds, in its order, in a mesh with
/// `trust_domain`: an entry per effective `from[]` rule (most specific source first,
/// each merged over the less specific ones; `rules` are the `Mesh` source's) whose
/// source a certificate proves, and that sets anything.
pub(crate) fn configure_inbounds(
    policies: &[Resource],
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<Vec<Vec<CallerLimits>>, ComputeError> {
    let effective = causeway_api::effective("MeshCircuitBreaker", policies, proxy)
        .expect("MeshCircuitBreaker is a policy kind");
    proxy
        .inbounds
        .iter()
        .enumerate()
        .map(|(i, ib)| {
            let rules = effective
                .inbounds
                .get(i)
                .map(|c| c.rules.as_slice())
                .unwrap_or_default();
            let mut entries = Vec::new();
            for rule in rules {
                let Some(source) = caller_source(&rule.source, trust_domain) else {
                    continue;
                };
                let what = || {
                    format!(
                        "the merged MeshCircuitBreaker from[] of inbound {} ({}) (policies {})",
                        ib.port,
                        ib.service,
                        rule.policies.join(", ")
                    )
                };
                let conf: CircuitBreakerConf = decode_conf(&rule.conf, what)?;
                let l = conf.connection_limits.clone().unwrap_or_default();
                let limits = InboundLimits {
                    max_connections: l.max_connections,
                    max_requests: l.max_requests,
                    max_pending_requests: l.max_pending_requests,
                    max_retries: l.max_retries,
                    outlier_detection: outlier_detection(&conf),
                };
                if limits != InboundLimits::default() {
                    entries.push(CallerLimits { source, limits });
                }
            }
            Ok(entries)
        })
        .collect()
}

/// The circuit breaking of each of `proxy`'s outbounds, in its order.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Vec<Option<CircuitBreaker>>, ComputeError> {
    Ok(
        outbound_confs::<CircuitBreakerConf>("MeshCircuitBreaker", policies, proxy)?
            .into_iter()
            .map(|conf| conf.as_ref().map(over_defaults))
            .collect(),
    )
}

fn over_defaults(conf: &CircuitBreakerConf) -> CircuitBreaker {
    let limits = conf.connection_limits.clone().unwrap_or_default();
    CircuitBreaker {
        max_requests: limits.max_requests,
        max_connections: limits.max_connections,
        max_pending_requests: limits.max_pending_requests,
        max_retries: limits.max_retries,
        outlier_detection: outlier_detection(conf),
    }
}

/// The outlier detection `conf` asks for, over the built-in defaults; `None` when off.
fn outlier_detection(conf: &CircuitBreakerConf) -> Option<OutlierDetection> {
    conf.outlier_detection
        .as_ref()
        .filter(|o| o.disabled != Some(true))
        .map(|o| {
            let d = o.detectors.clone().unwrap_or_default();
            let none = d.total_failures.is_none()
                && d.gateway_failures.is_none()
                && d.local_origin_failures.is_none()
                && d.success_rate.is_none()
                && d.failure_percentage.is_none();
            OutlierDetection {
                base_ejection_time: o.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION_TIME),
                max_ejection_percent: o
                    .max_ejection_percent
                    .map_or(DEFAULT_MAX_EJECTION_PERCENT, |p| {
                        (p.fraction() * 100.0).round() as u32
                    }),
                split_local_errors: o.split_external_and_local_errors == Some(true),
                total_failures: d
                    .total_failures
                    .map(|c| c.consecutive)
                    .or(none.then_some(DEFAULT_CONSECUTIVE_5XX)),
                gateway_failures: d.gateway_failures.map(|c| c.consecutive),
                local_origin_failures: d.local_origin_failures.map(|c| c.consecutive),
                interval: o.interval.unwrap_or(DEFAULT_INTERVAL),
                success_rate: d.success_rate.as_ref().map(|sr| SuccessRateDetector {
                    minimum_hosts: sr.minimum_hosts.unwrap_or(5),
                    request_volume: sr.request_volume.unwrap_or(100),
                    standard_deviation_factor_thousandths: (sr
                        .standard_deviation_factor
                        .unwrap_or(1.9)
                        * 1000.0)
                        .round() as u32,
                }),
                failure_percentage: d.failure_percentage.as_ref().map(|fp| {
                    FailurePercentageDetector {
                        minimum_hosts: fp.minimum_hosts.unwrap_or(5),
                        request_volume: fp.request_volume.unwrap_or(50),
                        threshold: fp
                            .threshold
                            .map_or(85, |p| (p.fraction() * 100.0).round() as u32),
                    }
                }),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_config::tests::{check_goldens, check_outbound_goldens};

    /// Golden cases under `testdata/mesh_circuit_breaker/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // A Mesh-wide policy with limits and detectors; backend's entry turns outlier
        // detection off, db's (Kuma's labels form) lowers a limit.
        (
            "mesh_circuit_breaker/limits-and-detectors",
            "zone-a",
            "web-1",
        ),
    ];

    #[test]
    fn an_outlier_detection_without_detectors_ejects_after_five_5xx() {
        let conf: CircuitBreakerConf =
            serde_json::from_value(serde_json::json!({"outlierDetection": {}})).unwrap();
        let o = over_defaults(&conf).outlier_detection.unwrap();
        assert_eq!(o.total_failures, Some(5));
        assert_eq!((o.gateway_failures, o.local_origin_failures), (None, None));
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_percent, 20);
    }

    #[test]
    fn golden_inbound_limits() {
        check_goldens(
            &[("mesh_circuit_breaker/inbound-limits", "zone-a", "backend-1")],
            |config| {
                let view: Vec<serde_json::Value> = config
                    .inbounds
                    .iter()
                    .map(|i| serde_json::json!({"port": i.port, "service": i.service, "limits": i.limits}))
                    .collect();
                serde_yaml::to_string(&view).expect("YAML")
            },
        );
    }

    #[test]
    fn golden_circuit_breakers() {
        check_outbound_goldens(CASES, "circuitBreaker", |o| o.circuit_breaker.as_ref());
    }
}
