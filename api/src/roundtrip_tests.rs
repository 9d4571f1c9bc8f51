//! Property tests: any valid resource survives YAML and JSON unchanged, as a
//! `Resource` and as its typed spec. One strategy per family of types: targetRefs,
//! `to[]` policies, `from[]` policies, routes, load balancing, top-level defaults,
//! Dataplane.

use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z]{1,8}(\\.io/[a-z]{1,5})?", "[A-Za-z0-9]{1,8}", 1..3)
}

fn duration(max_ms: u64) -> impl Strategy<Value = Duration> {
    (1..=max_ms).prop_map(Duration::from_millis)
}

fn percent() -> impl Strategy<Value = Percent> {
    (0u32..=200).prop_map(|half| Percent::new(f64::from(half) / 2.0))
}

fn top_ref() -> impl Strategy<Value = TargetRef> {
    prop_oneof![
        Just(TargetRef::mesh()),
        name().prop_map(|n| TargetRef::service(&n)),
        tags().prop_map(|tags| TargetRef {
            kind: TargetRefKind::MeshSubset,
            name: None,
            tags,
            ..TargetRef::mesh()
        }),
        (name(), tags()).prop_map(|(n, tags)| TargetRef {
            kind: TargetRefKind::MeshServiceSubset,
            name: Some(n),
            tags,
            ..TargetRef::mesh()
        }),
    ]
}

fn to_ref() -> impl Strategy<Value = TargetRef> {
    prop_oneof![
        Just(TargetRef::mesh()),
        name().prop_map(|n| TargetRef::service(&n))
    ]
}

fn item<C: Debug>(
    target_ref: impl Strategy<Value = TargetRef>,
    conf: impl Strategy<Value = C>,
) -> impl Strategy<Value = PolicyItem<C>> {
    (target_ref, conf).prop_map(|(target_ref, default)| PolicyItem {
        target_ref,
        default,
    })
}

fn timeout_conf() -> impl Strategy<Value = TimeoutConf> {
    (
        option::of(duration(3_600_000)),
        option::of(duration(86_400_000)),
        option::of((
            option::of(duration(86_400_000)),
            option::of(duration(86_400_000)),
        )),
    )
        .prop_map(|(connect, idle, http)| TimeoutConf {
            connect_timeout: connect,
            idle_timeout: idle,
            http: http.map(|(request, stream)| HttpTimeouts {
                request_timeout: request,
                stream_idle_timeout: stream,
                ..HttpTimeouts::default()
            }),
        })
}

fn mesh_timeout() -> impl Strategy<Value = MeshTimeoutSpec> {
    (
        top_ref(),
        vec(item(top_ref(), timeout_conf()), 0..3),
        vec(item(to_ref(), timeout_conf()), 1..3),
    )
        .prop_map(|(target_ref, from, to)| MeshTimeoutSpec {
            target_ref,
            from,
            rules: vec![],
            to,
        })
}

fn mesh_retry() -> impl Strategy<Value = MeshRetrySpec> {
    let http = (
        option::of(0u32..=20),
        option::of(duration(3_600_000)),
        option::of(percent()),
    )
        .prop_map(|(num_retries, per_try_timeout, budget)| HttpRetry {
            num_retries,
            per_try_timeout,
            retry_on: Some(vec![HttpRetryOn::ServerError, HttpRetryOn::Reset]),
            budget: budget.map(|percent| RetryBudget {
                percent: Some(percent),
                min_retry_concurrency: Some(3),
            }),
            ..HttpRetry::default()
        });
    let conf = (option::of(http), option::of(1u32..=20)).prop_map(|(http, attempts)| RetryConf {
        http,
        grpc: None,
        tcp: attempts.map(|a| TcpRetry {
            max_connect_attempt: Some(a),
        }),
    });
    (top_ref(), vec(item(to_ref(), conf), 1..3))
        .prop_map(|(target_ref, to)| MeshRetrySpec { target_ref, to })
}

fn mesh_traffic_permission() -> impl Strategy<Value = MeshTrafficPermissionSpec> {
    let action = prop_oneof![
        Just(Action::Allow),
        Just(Action::Deny),
        Just(Action::AllowWithShadowDeny)
    ];
    (
        top_ref(),
        vec(
            item(
                top_ref(),
                action.prop_map(|action| TrafficPermissionConf { action }),
            ),
            1..4,
        ),
    )
        .prop_map(|(target_ref, from)| MeshTrafficPermissionSpec {
            target_ref,
            from,
            rules: vec![],
        })
}

fn mesh_fault_injection() -> impl Strategy<Value = MeshFaultInjectionSpec> {
    let fault = (200u16..=599, percent(), duration(3_600_000), percent()).prop_map(
        |(status, p1, d, p2)| HttpFault {
            abort: Some(Abort {
                http_status: status,
                percentage: p1,
            }),
            delay: Some(Delay {
                value: d,
                percentage: p2,
            }),
            response_bandwidth: None,
        },
    );
    (
        top_ref(),
        vec(
            item(
                top_ref(),
                vec(fault, 1..3).prop_map(|http| FaultInjectionConf { http: Some(http) }),
            ),
            1..3,
        ),
    )
        .prop_map(|(target_ref, from)| MeshFaultInjectionSpec {
            target_ref,
            from,
            rules: vec![],
        })
}

/// A weighted subset backend, as HTTP and TCP routes take them (weights >= 1 so a
/// route always sends somewhere).
fn backend_ref() -> impl Strategy<Value = BackendRef> {
    (name(), tags(), option::of(1u32..100)).prop_map(|(name, tags, weight)| BackendRef {
        kind: TargetRefKind::MeshServiceSubset,
        name: Some(name),
        labels: Default::default(),
        tags,
        port: None,
        namespace: None,
        weight,
    })
}

fn mesh_tcp_route() -> impl Strategy<Value = MeshTcpRouteSpec> {
    (top_ref(), name(), vec(backend_ref(), 1..3)).prop_map(|(target_ref, service, backends)| {
        MeshTcpRouteSpec {
            target_ref,
            to: vec![TcpRouteTo {
                target_ref: TargetRef::service(&service),
                default: Some(TcpRouteConf {
                    backend_refs: Some(backends),
                }),
                rules: vec![],
            }],
        }
    })
}

fn mesh_http_route() -> impl Strategy<Value = MeshHttpRouteSpec> {
    let backend = backend_ref();
    let rule = ("/[a-z]{0,8}", vec(backend, 1..3)).prop_map(|(path, backends)| HttpRouteRule {
        matches: vec![HttpRouteMatch {
            path: Some(PathMatch {
                kind: PathMatchType::PathPrefix,
                value: path,
            }),
            method: Some(Method::Get),
            ..HttpRouteMatch::default()
        }],
        default: HttpRouteConf {
            filters: None,
            backend_refs: Some(backends),
        },
    });
    (top_ref(), name(), rule).prop_map(|(target_ref, service, rule)| MeshHttpRouteSpec {
        target_ref,
        to: vec![HttpRouteTo {
            target_ref: TargetRef::service(&service),
            hostnames: vec![],
            rules: vec![rule],
        }],
    })
}

fn mesh_load_balancing() -> impl Strategy<Value = MeshLoadBalancingStrategySpec> {
    let conf =
        (vec(name(), 1..3), percent(), 2u32..=100).prop_map(|(zones, threshold, choices)| {
            let mut zones = zones;
            zones.sort();
            zones.dedup();
            LoadBalancingConf {
                locality_awareness: Some(LocalityAwareness {
                    disabled: None,
                    local_zone: Some(LocalZone {
                        affinity_tags: vec![AffinityTag {
                            key: "k8s.io/node".into(),
                            weight: None,
                        }],
                    }),
                    cross_zone: Some(CrossZone {
                        failover: vec![
                            Failover {
                                from: None,
                                to: FailoverTo {
                                    kind: FailoverToType::Only,
                                    zones,
                                },
                            },
                            Failover {
                                from: None,
                                to: FailoverTo {
                                    kind: FailoverToType::Any,
                                    zones: vec![],
                                },
                            },
                        ],
                        failover_threshold: Some(FailoverThreshold {
                            percentage: threshold,
                        }),
                    }),
                }),
                load_balancer: Some(LoadBalancer {
                    kind: LoadBalancerType::LeastRequest,
                    least_request: Some(LeastRequest {
                        choice_count: Some(choices),
                    }),
                    peak_ewma: None,
                    ring_hash: None,
                    maglev: None,
                }),
            }
        });
    (top_ref(), vec(item(to_ref(), conf), 1..3))
        .prop_map(|(target_ref, to)| MeshLoadBalancingStrategySpec { target_ref, to })
}

fn mesh_trace() -> impl Strategy<Value = MeshTraceSpec> {
    (top_ref(), percent(), percent(), name()).prop_map(|(target_ref, overall, client, host)| {
        MeshTraceSpec {
            target_ref,
            default: TraceConf {
                backends: Some(vec![TraceBackend {
                    kind: TraceBackendType::OpenTelemetry,
                    zipkin: None,
                    open_telemetry: Some(OtelTraceBackend {
                        endpoint: Some(format!("{host}:4317")),
                        backend_ref: None,
                    }),
                    datadog: None,
                }]),
                propagation: Some(vec![Propagation::W3c]),
                sampling: Some(Sampling {
                    overall: Some(overall),
                    client: Some(client),
                    random: None,
                }),
                tags: None,
            },
        }
    })
}

fn dataplane() -> impl Strategy<Value = DataplaneSpec> {
    let protocol = prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Http),
        Just(Protocol::Http2),
        Just(Protocol::Grpc)
    ];
    (
        any::<[u8; 4]>(),
        name(),
        tags(),
        protocol,
        1u16..10_000,
        vec(name(), 0..3),
    )
        .prop_map(|(ip, service, tags, protocol, port, outbound)| {
            let mut outbound = outbound;
            outbound.sort();
            outbound.dedup();
            DataplaneSpec {
                address: std::net::Ipv4Addr::from(ip).to_string(),
                advertised_address: None,
                inbound: vec![Inbound {
                    name: None,
                    port: 20_000 + port,
                    service_port: Some(port),
                    service_address: None,
                    service,
                    tags,
                    protocol,
                }],
                outbound: outbound
                    .into_iter()
                    .enumerate()
                    .map(|(i, service)| Outbound {
                        port: 10_001 + i as u16,
                        address: None,
                        service,
                        section_name: None,
                    })
                    .collect(),
                admin_port: 9901,
                transparent_proxying: (port % 2 == 0).then(|| crate::TransparentProxying {
                    outbound_port: 15_001,
                    services: (port % 4 == 0).then(|| vec!["backend".into()]),
                    dns_port: (port % 8 == 0).then_some(15_053),
                }),
            }
        })
}

fn mesh_circuit_breaker() -> impl Strategy<Value = MeshCircuitBreakerSpec> {
    let conf = || {
        (
            option::of(1u32..10_000),
            option::of(1u32..=1000),
            option::of(percent()),
            option::of(1_000u64..=3_600_000),
        )
            .prop_map(
                |(max_connections, consecutive, max_ejection, ejection_ms)| CircuitBreakerConf {
                    connection_limits: max_connections.map(|m| ConnectionLimits {
                        max_connections: Some(m),
                        ..ConnectionLimits::default()
                    }),
                    outlier_detection: Some(OutlierDetection {
                        base_ejection_time: ejection_ms.map(Duration::from_millis),
                        max_ejection_percent: max_ejection,
                        detectors: consecutive.map(|c| Detectors {
                            total_failures: Some(Consecutive { consecutive: c }),
                            ..Detectors::default()
                        }),
                        ..OutlierDetection::default()
                    }),
                },
            )
    };
    (
        top_ref(),
        vec(item(top_ref(), conf()), 0..2),
        vec(item(to_ref(), conf()), 1..3),
    )
        .prop_map(|(target_ref, from, to)| MeshCircuitBreakerSpec {
            target_ref,
            from,
            rules: vec![],
            to,
        })
}

fn mesh_health_check() -> impl Strategy<Value = MeshHealthCheckSpec> {
    let conf = (
        1u64..=60,
        1u32..=10,
        "/[a-z]{0,8}",
        proptest::sample::subsequence(vec![200u16, 204, 301, 404], 1..3),
    )
        .prop_map(|(interval, threshold, path, statuses)| HealthCheckConf {
            interval: Some(Duration::from_secs(interval)),
            timeout: Some(Duration::from_millis(interval * 500)),
            unhealthy_threshold: Some(threshold),
            http: Some(HttpHealthCheck {
                disabled: None,
                path: Some(path),
                expected_statuses: Some(statuses),
            }),
            ..HealthCheckConf::default()
        });
    (top_ref(), vec(item(to_ref(), conf), 1..3))
        .prop_map(|(target_ref, to)| MeshHealthCheckSpec { target_ref, to })
}

fn mesh_rate_limit() -> impl Strategy<Value = MeshRateLimitSpec> {
    let conf = (1u32..10_000, 50u64..=86_400_000, option::of(400u16..=599)).prop_map(
        |(num, ms, status)| RateLimitConf {
            local: Some(LocalRateLimit {
                http: Some(HttpRateLimit {
                    disabled: None,
                    request_rate: Some(Rate {
                        num,
                        interval: Duration::from_millis(ms),
                    }),
                    on_rate_limit: status.map(|s| OnRateLimit {
                        status: Some(s),
                        headers: None,
                    }),
                }),
                tcp: None,
            }),
        },
    );
    (top_ref(), vec(item(top_ref(), conf), 1..3)).prop_map(|(target_ref, from)| MeshRateLimitSpec {
        target_ref,
        from,
        rules: vec![],
        to: vec![],
    })
}

fn mesh_access_log() -> impl Strategy<Value = MeshAccessLogSpec> {
    let conf =
        ("/[a-z]{1,8}(/[a-z]{1,8})?", name(), 1u16..=65535).prop_map(|(path, host, port)| {
            AccessLogConf {
                backends: Some(vec![
                    AccessLogBackend {
                        kind: AccessLogBackendType::File,
                        file: Some(FileBackend {
                            path,
                            format: Some(LogFormat {
                                kind: LogFormatType::Plain,
                                plain: Some("%START_TIME%".into()),
                                json: None,
                                omit_empty_values: None,
                            }),
                        }),
                        tcp: None,
                        open_telemetry: None,
                    },
                    AccessLogBackend {
                        kind: AccessLogBackendType::Tcp,
                        file: None,
                        tcp: Some(TcpBackend {
                            address: format!("{host}:{port}"),
                            format: None,
                        }),
                        open_telemetry: None,
                    },
                ]),
            }
        });
    (top_ref(), vec(item(to_ref(), conf), 1..3)).prop_map(|(target_ref, to)| MeshAccessLogSpec {
        target_ref,
        from: vec![],
        rules: vec![],
        to,
    })
}

fn mesh_metric() -> impl Strategy<Value = MeshMetricSpec> {
    (top_ref(), 1u16..=65535, option::of("/[a-z]{1,8}")).prop_map(|(target_ref, port, path)| {
        MeshMetricSpec {
            target_ref,
            default: MetricConf {
                sidecar: Some(SidecarMetrics {
                    profiles: Some(Profiles {
                        append_profiles: vec![Profile {
                            name: ProfileName::Basic,
                        }],
                        include: vec![],
                        exclude: vec![],
                    }),
                    include_unused: None,
                }),
                applications: Some(vec![ApplicationMetrics {
                    name: None,
                    path: path.clone(),
                    port,
                    address: None,
                }]),
                backends: Some(vec![MetricBackend {
                    kind: MetricBackendType::Prometheus,
                    prometheus: Some(PrometheusBackend {
                        port: Some(5670),
                        path,
                        mtls: None,
                        tls: None,
                    }),
                    open_telemetry: None,
                }]),
            },
        }
    })
}

fn zone_ingress() -> impl Strategy<Value = ZoneIngressSpec> {
    (
        any::<[u8; 4]>(),
        1u16..=9000,
        option::of((name(), 1u16..=65535)),
        vec((name(), 0u32..100), 0..3),
    )
        .prop_map(|(ip, port, advertised, services)| ZoneIngressSpec {
            zone: Some("eu-west".into()),
            address: std::net::Ipv4Addr::from(ip).to_string(),
            port,
            advertised_address: advertised
                .as_ref()
                .map(|(host, _)| format!("{host}.example.com")),
            advertised_port: advertised.map(|(_, p)| p),
            available_services: services
                .into_iter()
                .map(|(service, instances)| AvailableService {
                    service,
                    tags: BTreeMap::new(),
                    instances,
                    protocol: None,
                    endpoints: Vec::new(),
                })
                .collect(),
            admin_port: 9901,
            quic: false,
        })
}

/// A set of MeshTimeout policies with varied targets, origins and names.
fn timeout_policies() -> impl Strategy<Value = Vec<Resource>> {
    let origin = prop_oneof![
        Just(None),
        Just(Some("global")),
        Just(Some("eu")),
        Just(Some("us"))
    ];
    let one_of_names = proptest::sample::select(vec!["backend", "web", "db"]);
    let target = prop_oneof![
        Just(TargetRef::mesh()),
        one_of_names.clone().prop_map(TargetRef::service),
        Just(TargetRef::subset([("version", "v2")])),
        one_of_names.prop_map(|n| TargetRef::service_subset(n, [("version", "v2")])),
    ];
    let to_target = prop_oneof![
        Just(TargetRef::mesh()),
        Just(TargetRef::service("db")),
        Just(TargetRef::service("redis"))
    ];
    vec(
        (target, origin, vec(item(to_target, timeout_conf()), 1..3)),
        0..6,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (target_ref, origin, to))| {
                let spec = MeshTimeoutSpec {
                    target_ref,
                    from: vec![],
                    rules: vec![],
                    to,
                };
                let mut r = Resource::new(
                    "MeshTimeout",
                    Some("default"),
                    format!("p{}", (i * 7) % 10),
                    serde_json::to_value(spec).expect("serializable"),
                );
                r.origin = origin.map(str::to_owned);
                r
            })
            .collect()
    })
}

/// The resource of a typed spec is valid and survives YAML and JSON unchanged.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    kind: &str,
    spec: &T,
) -> Result<(), TestCaseError> {
    let mut r = Resource::new(
        kind,
        Some("default"),
        "example",
        serde_json::to_value(spec).expect("serializable"),
    );
    r.labels.insert("team".into(), "platform".into());
    if let Err(e) = validate(&r) {
        return Err(TestCaseError::fail(format!(
            "{kind} not valid: {e}\n{}",
            r.to_yaml()
        )));
    }
    let from_yaml =
        Resource::from_yaml(&r.to_yaml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&from_yaml, &r);
    let from_json = Resource::from_json(r.to_json().as_bytes())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&from_json, &r);
    let typed: T = decode_spec(&from_yaml.spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&typed, spec);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn timeout_round_trips(spec in mesh_timeout()) { round_trips("MeshTimeout", &spec)?; }

    #[test]
    fn retry_round_trips(spec in mesh_retry()) { round_trips("MeshRetry", &spec)?; }

    #[test]
    fn traffic_permission_round_trips(spec in mesh_traffic_permission()) { round_trips("MeshTrafficPermission", &spec)?; }

    #[test]
    fn fault_injection_round_trips(spec in mesh_fault_injection()) { round_trips("MeshFaultInjection", &spec)?; }

    #[test]
    fn http_route_round_trips(spec in mesh_http_route()) { round_trips("MeshHTTPRoute", &spec)?; }

    #[test]
    fn load_balancing_round_trips(spec in mesh_load_balancing()) { round_trips("MeshLoadBalancingStrategy", &spec)?; }

    #[test]
    fn trace_round_trips(spec in mesh_trace()) { round_trips("MeshTrace", &spec)?; }

    #[test]
    fn dataplane_round_trips(spec in dataplane()) { round_trips("Dataplane", &spec)?; }

    #[test]
    fn circuit_breaker_round_trips(spec in mesh_circuit_breaker()) { round_trips("MeshCircuitBreaker", &spec)?; }

    #[test]
    fn health_check_round_trips(spec in mesh_health_check()) { round_trips("MeshHealthCheck", &spec)?; }

    #[test]
    fn rate_limit_round_trips(spec in mesh_rate_limit()) { round_trips("MeshRateLimit", &spec)?; }

    #[test]
    fn access_log_round_trips(spec in mesh_access_log()) { round_trips("MeshAccessLog", &spec)?; }

    #[test]
    fn metric_round_trips(spec in mesh_metric()) { round_trips("MeshMetric", &spec)?; }

    #[test]
    fn tcp_route_round_trips(spec in mesh_tcp_route()) { round_trips("MeshTCPRoute", &spec)?; }

    #[test]
    fn zone_ingress_round_trips(spec in zone_ingress()) { round_trips("ZoneIngress", &spec)?; }

    /// The effective configuration does not depend on the order policies come in.
    #[test]
    fn effective_ignores_input_order(policies in timeout_policies().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle()))) {
        let (policies, shuffled) = policies;
        let proxy = Proxy {
            zone: Some("eu".into()),
            inbounds: vec![ProxyInbound { port: 8080, service: "backend".into(), tags: [("version".to_owned(), "v2".to_owned())].into(), ..Default::default() }],
            outbounds: vec![
                ProxyOutbound { service: "db".into(), ..Default::default() },
                ProxyOutbound { service: "redis".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let a = effective("MeshTimeout", &policies, &proxy).expect("MeshTimeout is a policy");
        let b = effective("MeshTimeout", &shuffled, &proxy).expect("MeshTimeout is a policy");
        // Equal names make the order of equals arbitrary only when everything else is
        // equal too; the merged configuration must not change.
        prop_assert_eq!(a.outbounds.iter().map(|o| o.conf.as_ref().map(|m| &m.conf)).collect::<Vec<_>>(),
                        b.outbounds.iter().map(|o| o.conf.as_ref().map(|m| &m.conf)).collect::<Vec<_>>());
        prop_assert!(a.ignored.is_empty());
    }

    /// Validation never panics, whatever JSON it is given.
    #[test]
    fn validation_never_panics(spec in any_json(), kind in proptest::sample::select(types().iter().map(|t| t.kind).collect::<Vec<_>>())) {
        let r = Resource::new(kind, Some("default"), "x", spec);
        let _ = validate(&r);
    }
}

fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-zA-Z0-9 %./:-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("Mesh"),
            Just("MeshService"),
            Just("5s"),
            Just("50%"),
            Just("targetRef"),
            Just("default")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    Just("targetRef".to_owned()),
                    Just("to".to_owned()),
                    Just("from".to_owned()),
                    Just("default".to_owned()),
                    Just("kind".to_owned()),
                    Just("name".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
