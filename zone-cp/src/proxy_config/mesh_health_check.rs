//! The MeshHealthCheck configurer: each outbound's merged `to[]` configuration, decoded
//! once into [`HealthCheckConf`], over the built-in defaults (Kuma's: every 10 s, 2 s
//! to answer, 3 failures out, 1 pass back in, panic below 50% healthy). No policy, no
//! checks.
//!
//! Which check runs follows the destination's protocol, as in Kuma: gRPC for a gRPC
//! destination, else HTTP for an HTTP one, else TCP; a check that is `disabled` (or
//! absent) gives way to the next, and a TCP connect is the check of last resort.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use base64::Engine as _;
use causeway_api::proxy_config::{HealthCheck, HealthCheckKind};
use causeway_api::{Duration, HealthCheckConf, Protocol, Proxy, Resource};

use super::{ComputeError, outbound_confs};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// The health check of each of `proxy`'s outbounds, in its order; `protocols` are the
/// destinations' protocols, in the same order.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    protocols: &[Protocol],
) -> Result<Vec<Option<HealthCheck>>, ComputeError> {
    outbound_confs::<HealthCheckConf>("MeshHealthCheck", policies, proxy)?
        .into_iter()
        .zip(protocols)
        .zip(&proxy.outbounds)
        .map(|((conf, protocol), ob)| {
            conf.map(|c| over_defaults(&c, *protocol, &ob.service))
                .transpose()
        })
        .collect()
}

/// `conf` over the built-in defaults, for a destination `service` speaking `protocol`.
fn over_defaults(
    conf: &HealthCheckConf,
    protocol: Protocol,
    service: &str,
) -> Result<HealthCheck, ComputeError> {
    let enabled = |disabled: Option<bool>| disabled != Some(true);
    let grpc = conf
        .grpc
        .as_ref()
        .filter(|g| protocol == Protocol::Grpc && enabled(g.disabled));
    let http = conf
        .http
        .as_ref()
        .filter(|h| protocol != Protocol::Tcp && enabled(h.disabled));
    let check = if let Some(g) = grpc {
        HealthCheckKind::Grpc {
            service: g.service_name.clone().unwrap_or_default(),
            authority: g.authority.clone().unwrap_or_else(|| service.to_string()),
        }
    } else if let Some(h) = http {
        HealthCheckKind::Http {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            expected_statuses: h.expected_statuses.clone().unwrap_or_else(|| vec![200]),
        }
    } else {
        let tcp = conf.tcp.clone().unwrap_or_default();
        // Checked here, so the sidecar never meets bytes it cannot decode.
        let decodes = |field: &str, s: &String| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|_| s.clone())
                .map_err(|e| ComputeError::Invalid {
                    what: format!("MeshHealthCheck tcp.{field} for {service}"),
                    reason: format!("not base64: {e}"),
                })
        };
        HealthCheckKind::Tcp {
            send: tcp.send.as_ref().map(|s| decodes("send", s)).transpose()?,
            receive: tcp
                .receive
                .iter()
                .flatten()
                .map(|r| decodes("receive", r))
                .collect::<Result<_, _>>()?,
        }
    };
    let interval = conf.interval.unwrap_or(DEFAULT_INTERVAL);
    Ok(HealthCheck {
        interval,
        jitter: conf.interval_jitter.unwrap_or(Duration::ZERO),
        // Never longer than the interval (validation checks the policy's own pair; a
        // merge can pair one policy's timeout with another's interval).
        timeout: conf.timeout.unwrap_or(DEFAULT_TIMEOUT).min(interval),
        healthy_threshold: conf.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD),
        unhealthy_threshold: conf
            .unhealthy_threshold
            .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD),
        panic_threshold: conf
            .healthy_panic_threshold
            .map_or(DEFAULT_PANIC_THRESHOLD, |p| {
                (p.fraction() * 100.0).round() as u32
            }),
        check,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proxy_config::tests::check_outbound_goldens;

    /// Golden cases under `testdata/mesh_health_check/`: (case, zone, dataplane). The
    /// golden holds each outbound's health check as `compute` puts it in the config.
    const CASES: &[(&str, &str, &str)] = &[
        // One check per destination protocol; a MeshService entry over the Mesh one.
        ("mesh_health_check/protocols", "zone-a", "web-1"),
        // Kuma's Dataplane labels and MeshService labels; HTTP off falls back to TCP.
        ("mesh_health_check/kuma-dataplane-labels", "zone-a", "web-1"),
        // The same policy does not select web-2: no checks.
        (
            "mesh_health_check/kuma-dataplane-labels-unselected",
            "zone-a",
            "web-2",
        ),
    ];

    #[test]
    fn golden_health_checks() {
        check_outbound_goldens(CASES, "healthCheck", |o| o.health_check.as_ref());
    }

    #[test]
    fn a_timeout_is_never_longer_than_the_interval_and_bad_base64_is_an_error() {
        let conf: HealthCheckConf =
            serde_json::from_value(json!({"interval": "1s", "timeout": "5s"})).unwrap();
        let hc = over_defaults(&conf, Protocol::Http, "backend").unwrap();
        assert_eq!(hc.timeout, Duration::from_secs(1));
        assert_eq!(
            hc.check,
            HealthCheckKind::Tcp {
                send: None,
                receive: vec![]
            },
            "no HTTP check configured: a TCP connect"
        );
        let conf: HealthCheckConf =
            serde_json::from_value(json!({"tcp": {"send": "no!"}})).unwrap();
        let err = over_defaults(&conf, Protocol::Tcp, "db").unwrap_err();
        assert!(err.to_string().contains("tcp.send for db"), "{err}");
    }
}
