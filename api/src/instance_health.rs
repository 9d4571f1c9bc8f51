//! A service instance's health as its callers see it, across zones.
//!
//! Causeway has no central prober: each sidecar decides which endpoints it sends traffic
//! to (passive health, outlier detection, MeshHealthCheck) and says so in its report to
//! its zone. The zone counts, per endpoint, how many of its proxies hold it out of
//! rotation and how many call it ([`out_endpoints`]), and sends that up with its golden
//! signals (`ZoneStats.out_endpoints`). The global control plane joins those counts with
//! the instances its Dataplanes declare ([`health`]) for the web UI's service page.
//!
//! Both are pure: reports in, counts out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inspect::ProxyReport;

/// The most endpoints one zone reports as out: past it, the ones fewest callers hold out
/// are left out (the report would otherwise grow with the zone).
pub const MAX_OUT_ENDPOINTS: usize = 1000;

/// The endpoints in rotation for none, some or all of the proxies that call them: each
/// one some proxy holds out, with how many do of how many call it. `reports` are the
/// zone's connected proxies' last reports, each with its mesh. Endpoints of other zones
/// (their ingresses, dialled by SNI) are left out: they are not instances.
pub fn out_endpoints<'a>(
    reports: impl IntoIterator<Item = (&'a str, &'a ProxyReport)>,
) -> Vec<crate::kds::OutEndpoint> {
    #[derive(Default)]
    struct Tally {
        callers: u32,
        out: u32,
        reason: Option<String>,
    }
    let mut tallies: BTreeMap<(&str, &str, &str, u16), Tally> = BTreeMap::new();
    for (mesh, report) in reports {
        for dest in &report.destinations {
            for e in dest.endpoints.iter().filter(|e| e.sni.is_none()) {
                let t = tallies
                    .entry((mesh, dest.service.as_str(), e.address.as_str(), e.port))
                    .or_default();
                t.callers += 1;
                if !e.healthy {
                    t.out += 1;
                    t.reason.get_or_insert_with(|| match &e.ejection {
                        Some(ej) => ej.reason.clone(),
                        None => "failing its health check".into(),
                    });
                }
            }
        }
    }
    let mut out: Vec<crate::kds::OutEndpoint> = tallies
        .into_iter()
        .filter(|(_, t)| t.out > 0)
        .map(
            |((mesh, service, address, port), t)| crate::kds::OutEndpoint {
                mesh: mesh.into(),
                service: service.into(),
                address: address.into(),
                port: port.into(),
                callers_out: t.out,
                callers: t.callers,
                reason: t.reason.unwrap_or_default(),
            },
        )
        .collect();
    if out.len() > MAX_OUT_ENDPOINTS {
        out.sort_by_key(|e| std::cmp::Reverse(e.callers_out));
        out.truncate(MAX_OUT_ENDPOINTS);
    }
    out
}

/// An endpoint some of a zone's proxies hold out, as a global node keeps it (one mesh's,
/// so without the mesh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutEndpoint {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub callers_out: u32,
    pub callers: u32,
    pub reason: String,
}

impl OutEndpoint {
    /// One a zone reported over KDS.
    pub fn reported(e: &crate::kds::OutEndpoint) -> OutEndpoint {
        OutEndpoint {
            service: e.service.clone(),
            address: e.address.clone(),
            port: u16::try_from(e.port).unwrap_or(0),
            callers_out: e.callers_out,
            callers: e.callers,
            reason: e.reason.clone(),
        }
    }
}

/// An instance's health, as [`health`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `healthy` (no caller holds it out), `degraded` (some do), `out` (every caller
    /// does) or `unknown` (its zone is not reporting).
    pub state: &'static str,
    /// Why, for people.
    pub why: String,
}

/// The health of the instance of `service` at `address` on `ports` (its inbounds for the
/// service) in `zone`: what that zone's callers report of it. `report` is the zone's
/// last report, `None` when the zone is offline or did not answer.
pub fn health(
    service: &str,
    address: &str,
    ports: &[u16],
    zone: &str,
    report: Option<&[OutEndpoint]>,
) -> Health {
    let Some(out) = report else {
        return Health {
            state: "unknown",
            why: format!("zone {zone} is not reporting"),
        };
    };
    let held: Vec<&OutEndpoint> = out
        .iter()
        .filter(|e| e.service == service && e.address == address && ports.contains(&e.port))
        .collect();
    let Some(worst) = held.iter().max_by_key(|e| (e.callers_out, e.callers)) else {
        return Health {
            state: "healthy",
            why: format!("no caller in {zone} holds it out"),
        };
    };
    Health {
        state: if worst.callers_out >= worst.callers {
            "out"
        } else {
            "degraded"
        },
        why: format!(
            "held out by {} of {} callers in {zone} ({})",
            worst.callers_out, worst.callers, worst.reason
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{DestinationReport, Ejection, EndpointReport, HealthCheckState};

    fn endpoint(address: &str, healthy: bool, sni: Option<&str>) -> EndpointReport {
        EndpointReport {
            address: address.into(),
            port: 8080,
            zone: "zone-a".into(),
            sni: sni.map(Into::into),
            healthy,
            health_check: (!healthy).then_some(HealthCheckState::Failing),
            ejection: None,
            connect_failures: 0,
            outlier_ejections: 0,
        }
    }

    fn report(endpoints: Vec<EndpointReport>) -> ProxyReport {
        ProxyReport {
            certificate: None,
            destinations: vec![DestinationReport {
                port: 10001,
                vip: None,
                service: "backend".into(),
                backend: None,
                endpoints,
            }],
        }
    }

    #[test]
    fn a_zone_counts_the_callers_holding_each_endpoint_out() {
        let mut ejected = endpoint("10.0.0.2", false, None);
        ejected.health_check = None;
        ejected.ejection = Some(Ejection {
            until: 0,
            reason: "outlier detection".into(),
        });
        let a = report(vec![
            endpoint("10.0.0.1", true, None),
            ejected,
            endpoint("192.0.2.9", false, Some("backend.zone-b")),
        ]);
        let b = report(vec![
            endpoint("10.0.0.1", true, None),
            endpoint("10.0.0.2", true, None),
        ]);
        let out = out_endpoints([("default", &a), ("default", &b)]);
        assert_eq!(
            out.len(),
            1,
            "only 10.0.0.2; another zone's ingress is no instance"
        );
        let e = &out[0];
        assert_eq!(
            (e.address.as_str(), e.callers_out, e.callers),
            ("10.0.0.2", 1, 2)
        );
        assert_eq!(e.reason, "outlier detection");
        assert!(out_endpoints([("default", &b)]).is_empty());
    }

    #[test]
    fn an_instance_is_healthy_degraded_out_or_unknown() {
        let held = |out: u32, of: u32| OutEndpoint {
            service: "backend".into(),
            address: "10.0.0.2".into(),
            port: 8080,
            callers_out: out,
            callers: of,
            reason: "failed connections".into(),
        };
        let h = |report: Option<&[OutEndpoint]>| {
            health("backend", "10.0.0.2", &[8080], "zone-a", report).state
        };
        assert_eq!(h(None), "unknown");
        assert_eq!(h(Some(&[])), "healthy");
        assert_eq!(h(Some(&[held(1, 3)])), "degraded");
        assert_eq!(h(Some(&[held(3, 3)])), "out");
        assert_eq!(
            health(
                "backend",
                "10.0.0.2",
                &[8080],
                "zone-a",
                Some(&[held(1, 3)])
            )
            .why,
            "held out by 1 of 3 callers in zone-a (failed connections)"
        );
        assert_eq!(
            health(
                "backend",
                "10.0.0.2",
                &[9090],
                "zone-a",
                Some(&[held(3, 3)])
            )
            .state,
            "healthy",
            "another port of the address is another instance"
        );
    }
}
