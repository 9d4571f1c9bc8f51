//! The MeshFaultInjection configurer: the faults each inbound injects, by caller. The
//! effective `from[]` rules of an inbound (most specific source first, each merged over
//! the less specific ones; `rules` without `matches` are the `Mesh` source's) become
//! [`CallerFaults`] entries for the sources a certificate proves: every caller, a
//! service, a SPIFFE id, callers by tags. `rules` with `matches` are not applied (the
//! registry warns about them). A source whose `http` list is empty gets no faults,
//! which is how a more specific policy exempts a caller.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{CallerFaults, Fault, FaultAbort, FaultBandwidth, FaultDelay};
use causeway_api::{FaultInjectionConf, HttpFault, Proxy, Resource, parse_bandwidth};

use super::{ComputeError, caller_source, decode_conf};

/// The faults of each of `proxy`'s inbounds, in its order, in a mesh with
/// `trust_domain`.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<Vec<Vec<CallerFaults>>, ComputeError> {
    let effective = causeway_api::effective("MeshFaultInjection", policies, proxy)
        .expect("MeshFaultInjection is a policy kind");
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
                            "the merged MeshFaultInjection from[] of inbound {} ({}) (policies {})",
                            ib.port,
                            ib.service,
                            rule.policies.join(", ")
                        )
                    };
                    let conf: FaultInjectionConf = decode_conf(&rule.conf, what)?;
                    let faults = conf
                        .http
                        .unwrap_or_default()
                        .iter()
                        .map(|f| {
                            fault(f).map_err(|reason| ComputeError::Invalid {
                                what: what(),
                                reason,
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(CallerFaults { source, faults })
                })
                .collect()
        })
        .collect()
}

fn fault(f: &HttpFault) -> Result<Fault, String> {
    Ok(Fault {
        abort: f.abort.as_ref().map(|a| FaultAbort {
            http_status: a.http_status,
            percentage: a.percentage.fraction() * 100.0,
        }),
        delay: f.delay.as_ref().map(|d| FaultDelay {
            value: d.value,
            percentage: d.percentage.fraction() * 100.0,
        }),
        response_bandwidth: match &f.response_bandwidth {
            None => None,
            Some(b) => Some(FaultBandwidth {
                kbps: parse_bandwidth(&b.limit)?,
                percentage: b.percentage.fraction() * 100.0,
            }),
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_fault_injection/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // Every caller gets a Mesh-wide abort; web, by a more specific policy, a delay
        // and a bandwidth limit over it; callers by tags get theirs.
        ("mesh_fault_injection/by-caller", "zone-a", "backend-1"),
    ];

    #[test]
    fn golden_faults() {
        check_goldens(CASES, |config| {
            let view: Vec<serde_json::Value> = config
                .inbounds
                .iter()
                .map(|i| serde_json::json!({"port": i.port, "service": i.service, "faults": i.faults}))
                .collect();
            serde_yaml::to_string(&view).expect("YAML")
        });
    }
}
