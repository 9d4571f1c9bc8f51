//! The MeshRateLimit configurer: each inbound's local rate limits, by caller. The
//! effective `from[]` rules (most specific source first, each merged over the less
//! specific ones; `rules` are the `Mesh` source's) become [`CallerRateLimit`] entries for
//! the sources a certificate proves: every caller, a service, a SPIFFE id, callers by
//! tags. `disabled: true` (or no rate) leaves that
//! protocol unlimited for the entry's callers, which is how a more specific policy
//! exempts a caller.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{CallerRateLimit, HttpRateLimitPolicy, RatePolicy};
use causeway_api::{Proxy, RateLimitConf, Resource};

use super::{ComputeError, caller_source, decode_conf};

/// The rate limits of each of `proxy`'s inbounds, in its order, in a mesh with
/// `trust_domain`.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<Vec<Vec<CallerRateLimit>>, ComputeError> {
    let effective = causeway_api::effective("MeshRateLimit", policies, proxy)
        .expect("MeshRateLimit is a policy kind");
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
            rules
                .iter()
                .filter_map(|r| caller_source(&r.source, trust_domain).map(|s| (s, r)))
                .map(|(source, rule)| {
                    let what = || {
                        format!(
                            "the merged MeshRateLimit from[] of inbound {} ({}) (policies {})",
                            ib.port,
                            ib.service,
                            rule.policies.join(", ")
                        )
                    };
                    let conf: RateLimitConf = decode_conf(&rule.conf, what)?;
                    Ok(limits(source, &conf))
                })
                .collect()
        })
        .collect()
}

fn limits(
    source: causeway_api::proxy_config::SourceMatch,
    conf: &RateLimitConf,
) -> CallerRateLimit {
    let local = conf.local.clone().unwrap_or_default();
    let http = local
        .http
        .filter(|h| h.disabled != Some(true))
        .and_then(|h| {
            let rate = h.request_rate?;
            let on = h.on_rate_limit.unwrap_or_default();
            let headers = on.headers.unwrap_or_default();
            let pairs = |hs: &[causeway_api::Header]| {
                hs.iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                    .collect()
            };
            Some(HttpRateLimitPolicy {
                rate: RatePolicy {
                    num: rate.num,
                    interval: rate.interval,
                },
                status: on.status.unwrap_or(429),
                set_headers: pairs(&headers.set),
                add_headers: pairs(&headers.add),
            })
        });
    let tcp = local
        .tcp
        .filter(|t| t.disabled != Some(true))
        .and_then(|t| t.connection_rate)
        .map(|r| RatePolicy {
            num: r.num,
            interval: r.interval,
        });
    CallerRateLimit { source, http, tcp }
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_rate_limit/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // Every caller of backend shares a Mesh-wide HTTP limit; web gets its own,
        // with Kuma's answer headers; admin is exempt; TCP for the db inbound; callers
        // by tags get their own.
        ("mesh_rate_limit/by-caller", "zone-a", "backend-1"),
    ];

    #[test]
    fn golden_rate_limits() {
        check_goldens(CASES, |config| {
            let view: Vec<serde_json::Value> = config
                .inbounds
                .iter()
                .map(|i| serde_json::json!({"port": i.port, "service": i.service, "rateLimits": i.rate_limits}))
                .collect();
            serde_yaml::to_string(&view).expect("YAML")
        });
    }
}
