//! The MeshTimeout configurer: the effective MeshTimeout of a proxy, decoded once into
//! [`TimeoutConf`], laid over the built-in defaults for each listener
//! ([`Timeouts::INBOUND_DEFAULT`] for an inbound, [`Timeouts::DEFAULT`] for the rest).
//!
//! - Outbound: the destination's merged `to[]` configuration (`Mesh` and
//!   `MeshService <destination>` entries); and per route, where `to[]` entries name a
//!   `MeshHTTPRoute`, those merged over the destination's.
//! - Inbound: the merged `from[]` rule whose source is `Mesh`, which holds exactly the
//!   entries that apply to every caller; and the rules for one caller that a
//!   certificate proves (`MeshService`, `SpiffeId` sources, and callers by tags:
//!   `MeshSubset`, `MeshServiceSubset`), each over those.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`],
//! never replaced by the defaults.

use causeway_api::proxy_config::{CallerTimeouts, Timeouts};
use causeway_api::{EffectiveConfig, FromRule, Proxy, Resource, TargetRefKind, TimeoutConf};

use super::{ComputeError, caller_source, decode_conf, decode_outbounds, decode_routes};

/// The timeouts of each listener of a proxy, in the proxy's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerTimeouts {
    /// Each inbound's timeouts for every caller, and for the callers of some sources.
    pub(crate) inbounds: Vec<(Timeouts, Vec<CallerTimeouts>)>,
    pub(crate) outbounds: Vec<Timeouts>,
    /// Each outbound's routes with timeouts of their own, by MeshHTTPRoute name.
    pub(crate) routes: Vec<std::collections::BTreeMap<String, Timeouts>>,
}

/// The timeouts of `proxy`'s listeners from the mesh's MeshTimeout `policies`, in a
/// mesh with `trust_domain` (callers are told apart by their SPIFFE ids).
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<ListenerTimeouts, ComputeError> {
    let effective = causeway_api::effective("MeshTimeout", policies, proxy)
        .expect("MeshTimeout is a policy kind");
    from_effective(&effective, proxy, trust_domain)
}

/// [`configure`] from the effective configuration already computed.
pub(crate) fn from_effective(
    effective: &EffectiveConfig,
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<ListenerTimeouts, ComputeError> {
    let inbounds = proxy
        .inbounds
        .iter()
        .enumerate()
        .map(|(i, ib)| {
            let rules = effective
                .inbounds
                .get(i)
                .map(|c| c.rules.as_slice())
                .unwrap_or_default();
            let decode = |rule: &FromRule| {
                let what = || {
                    format!(
                        "the merged MeshTimeout from[] of inbound {} ({}) (policies {})",
                        ib.port,
                        ib.service,
                        rule.policies.join(", ")
                    )
                };
                decode_conf(&rule.conf, what)
                    .map(|c: TimeoutConf| over(Timeouts::INBOUND_DEFAULT, &c))
            };
            let every_caller = match rules.iter().find(|r| r.source.kind == TargetRefKind::Mesh) {
                None => Timeouts::INBOUND_DEFAULT,
                Some(rule) => decode(rule)?,
            };
            // Most specific first, as `effective` orders them; each is merged over
            // the entries for every caller already.
            let callers = rules
                .iter()
                .filter(|r| r.source.kind != TargetRefKind::Mesh)
                .filter_map(|r| caller_source(&r.source, trust_domain).map(|s| (s, r)))
                .map(|(source, r)| {
                    Ok(CallerTimeouts {
                        source,
                        timeouts: decode(r)?,
                    })
                })
                .collect::<Result<Vec<_>, ComputeError>>()?;
            Ok((every_caller, callers))
        })
        .collect::<Result<_, ComputeError>>()?;
    let outbounds = decode_outbounds::<TimeoutConf>("MeshTimeout", effective, proxy)?
        .into_iter()
        .map(|conf| conf.map_or(Timeouts::DEFAULT, |c| over_defaults(&c)))
        .collect();
    let routes = decode_routes("MeshTimeout", effective, proxy, over_defaults)?;
    Ok(ListenerTimeouts {
        inbounds,
        outbounds,
        routes,
    })
}

/// The fields `conf` sets, over the built-in defaults of an outbound or a route.
fn over_defaults(conf: &TimeoutConf) -> Timeouts {
    over(Timeouts::DEFAULT, conf)
}

/// The fields `conf` sets, over `base`.
fn over(base: Timeouts, conf: &TimeoutConf) -> Timeouts {
    let mut t = base;
    let set = |field: &mut causeway_api::Duration, v: Option<causeway_api::Duration>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut t.connect, conf.connect_timeout);
    set(&mut t.idle, conf.idle_timeout);
    if let Some(http) = &conf.http {
        set(&mut t.request, http.request_timeout);
        set(&mut t.stream_idle, http.stream_idle_timeout);
        set(&mut t.max_stream_duration, http.max_stream_duration);
        set(&mut t.max_connection_duration, http.max_connection_duration);
        set(&mut t.request_headers, http.request_headers_timeout);
    }
    t
}

#[cfg(test)]
mod tests {
    use causeway_api::{
        Duration, FromRule, InboundConfig, Merged, OutboundConfig, ProxyInbound, ProxyOutbound,
        TargetRef,
    };
    use serde_json::json;

    use super::*;
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_timeout/`: (case, zone, dataplane). The golden
    /// holds each listener's timeouts as `compute` puts them in the config.
    const CASES: &[(&str, &str, &str)] = &[
        // No MeshTimeout: every listener gets the built-in defaults.
        ("mesh_timeout/defaults", "zone-a", "web-1"),
        // A Mesh-wide policy sets some fields; the others keep their defaults.
        ("mesh_timeout/mesh-wide", "zone-a", "web-1"),
        // A MeshService-specific entry merges over the Mesh-wide one, for its
        // destination only.
        ("mesh_timeout/service-override", "zone-a", "web-1"),
        // Inbound: `from[]` with a Mesh source for every caller; web's entry over it
        // for web; callers by tags get theirs.
        ("mesh_timeout/inbound-from-mesh", "zone-a", "backend-1"),
        // Kuma's current form: a Dataplane target by labels, inbound `rules`, and a
        // destination by its MeshService labels.
        ("mesh_timeout/kuma-dataplane-rules", "zone-a", "web-1"),
    ];

    /// What the golden files show of a config: each listener's timeouts.
    #[derive(serde::Serialize)]
    struct View<'a> {
        inbounds: Vec<Listener<'a>>,
        outbounds: Vec<Listener<'a>>,
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Listener<'a> {
        port: u16,
        service: &'a str,
        timeouts: &'a Timeouts,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        caller_timeouts: &'a [CallerTimeouts],
    }

    #[test]
    fn golden_timeouts() {
        check_goldens(CASES, |config| {
            let view = View {
                inbounds: config
                    .inbounds
                    .iter()
                    .map(|l| Listener {
                        port: l.port,
                        service: &l.service,
                        timeouts: &l.timeouts,
                        caller_timeouts: &l.caller_timeouts,
                    })
                    .collect(),
                outbounds: config
                    .outbounds
                    .iter()
                    .map(|l| Listener {
                        port: l.port,
                        service: &l.service,
                        timeouts: &l.timeouts,
                        caller_timeouts: &[],
                    })
                    .collect(),
            };
            serde_yaml::to_string(&view).expect("YAML")
        });
    }

    fn proxy() -> Proxy {
        Proxy {
            zone: Some("zone-a".into()),
            inbounds: vec![ProxyInbound {
                port: 8080,
                service: "backend".into(),
                ..Default::default()
            }],
            outbounds: vec![ProxyOutbound {
                service: "db".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_merged_conf_that_does_not_decode_is_an_error_not_the_defaults() {
        let bad = Merged {
            conf: json!({"connectionTimeout": "soon"}),
            policies: vec!["a".into(), "b".into()],
        };
        let effective = EffectiveConfig {
            outbounds: vec![OutboundConfig {
                service: "db".into(),
                conf: Some(bad.clone()),
                routes: Default::default(),
            }],
            ..Default::default()
        };
        let err = from_effective(&effective, &proxy(), "td").unwrap_err();
        let ComputeError::Invalid { what, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(what, "the merged MeshTimeout to[] for db (policies a, b)");
        assert!(reason.contains("soon"), "{reason}");

        let effective = EffectiveConfig {
            inbounds: vec![InboundConfig {
                port: 8080,
                rules: vec![FromRule {
                    source: TargetRef::mesh(),
                    conf: json!({"http": {"requestTimeout": 5}}),
                    policies: vec!["c".into()],
                }],
            }],
            ..Default::default()
        };
        let err = from_effective(&effective, &proxy(), "td").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the merged MeshTimeout from[] of inbound 8080 (backend) (policies c) is invalid"
            ),
            "{err}"
        );
    }

    #[test]
    fn zero_turns_a_timeout_off_and_absent_fields_keep_their_default() {
        let conf: TimeoutConf =
            serde_json::from_value(json!({"idleTimeout": "0s", "http": {"requestTimeout": "0s", "maxStreamDuration": "1m"}}))
                .unwrap();
        let t = over_defaults(&conf);
        assert_eq!(t.idle, Duration::ZERO);
        assert_eq!(t.request, Duration::ZERO);
        assert_eq!(t.max_stream_duration, Duration::from_mins(1));
        assert_eq!(t.connect, Timeouts::DEFAULT.connect);
        assert_eq!(t.stream_idle, Timeouts::DEFAULT.stream_idle);
    }
}
