//! Matching and merge tables: each case lists the policies, the proxy, and the
//! expected effective configuration written out in full.

use serde_json::{Value, json};

use super::*;

/// A policy resource; `origin` is `None` for global.
fn policy(kind: &str, name: &str, origin: Option<&str>, spec: Value) -> Resource {
    let mut r = Resource::new(kind, Some("default"), name, spec);
    r.origin = origin.map(str::to_owned);
    r
}

/// A proxy in zone `eu` with one inbound `backend` (port 8080, `version: v2`) and
/// outbounds `db` and `redis`; `db` has the route `slow-report`.
fn backend_v2() -> Proxy {
    Proxy {
        name: "backend-1".to_owned(),
        labels: [("app".to_owned(), "backend".to_owned())].into(),
        zone: Some("eu".to_owned()),
        inbounds: vec![ProxyInbound {
            name: Some("http".to_owned()),
            port: 8080,
            service: "backend".to_owned(),
            tags: [("version".to_owned(), "v2".to_owned())].into(),
        }],
        outbounds: vec![
            ProxyOutbound {
                service: "db".to_owned(),
                routes: vec!["slow-report".to_owned()],
                ..Default::default()
            },
            ProxyOutbound {
                service: "redis".to_owned(),
                routes: vec![],
                ..Default::default()
            },
        ],
    }
}

fn merged(conf: Value, policies: &[&str]) -> Option<Merged> {
    Some(Merged {
        conf,
        policies: policies.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn to(target_ref: Value, default: Value) -> Value {
    json!({"targetRef": target_ref, "to": [{"targetRef": {"kind": "Mesh"}, "default": default}]})
}

/// Each top-level targetRef kind: matching ones merge from the least to the most
/// specific; non-matching ones (another service, another subset) are left out.
#[test]
fn every_top_level_kind() {
    let policies = [
        policy(
            "MeshTimeout",
            "mesh-wide",
            None,
            to(
                json!({"kind": "Mesh"}),
                json!({"connectionTimeout": "5s", "http": {"requestTimeout": "15s"}}),
            ),
        ),
        policy(
            "MeshTimeout",
            "subset-v2",
            None,
            to(
                json!({"kind": "MeshSubset", "tags": {"version": "v2"}}),
                json!({"http": {"requestTimeout": "10s"}}),
            ),
        ),
        policy(
            "MeshTimeout",
            "svc-backend",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "default": {"connectionTimeout": "1s"}}]}),
        ),
        policy(
            "MeshTimeout",
            "svc-subset",
            None,
            json!({"targetRef": {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}},
            "to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "default": {"http": {"requestTimeout": "3s"}}}]}),
        ),
        policy(
            "MeshTimeout",
            "other-service",
            None,
            to(
                json!({"kind": "MeshService", "name": "web"}),
                json!({"connectionTimeout": "9s"}),
            ),
        ),
        policy(
            "MeshTimeout",
            "subset-v1",
            None,
            to(
                json!({"kind": "MeshSubset", "tags": {"version": "v1"}}),
                json!({"connectionTimeout": "9s"}),
            ),
        ),
        policy(
            "MeshTimeout",
            "zone-us",
            None,
            to(
                json!({"kind": "MeshSubset", "tags": {"causeway.io/zone": "us"}}),
                json!({"connectionTimeout": "9s"}),
            ),
        ),
        policy(
            "MeshTimeout",
            "zone-eu",
            None,
            to(
                json!({"kind": "MeshSubset", "tags": {"causeway.io/zone": "eu"}}),
                json!({"idleTimeout": "1m"}),
            ),
        ),
    ];
    let got = effective("MeshTimeout", &policies, &backend_v2()).unwrap();
    let want = EffectiveConfig {
        proxy: None,
        inbounds: vec![InboundConfig {
            port: 8080,
            rules: vec![],
        }],
        outbounds: vec![
            OutboundConfig {
                service: "db".to_owned(),
                conf: merged(
                    json!({"connectionTimeout": "1s", "idleTimeout": "1m", "http": {"requestTimeout": "3s"}}),
                    &[
                        "mesh-wide",
                        "zone-eu",
                        "subset-v2",
                        "svc-backend",
                        "svc-subset",
                    ],
                ),
                routes: BTreeMap::new(),
            },
            OutboundConfig {
                service: "redis".to_owned(),
                conf: merged(
                    json!({"connectionTimeout": "5s", "idleTimeout": "1m", "http": {"requestTimeout": "10s"}}),
                    &["mesh-wide", "zone-eu", "subset-v2"],
                ),
                routes: BTreeMap::new(),
            },
        ],
        ignored: vec![],
    };
    assert_eq!(got, want);
}

/// Conflicts at the same specificity: zone origin beats global (whatever the names);
/// between equals the smaller name wins; another zone's policy does not apply.
#[test]
fn conflicts_origin_then_name() {
    let svc = json!({"kind": "MeshService", "name": "backend"});
    let table: Vec<(Vec<Resource>, Value, Vec<&str>)> = vec![
        (
            vec![
                policy(
                    "MeshTimeout",
                    "a-global",
                    Some("global"),
                    to(svc.clone(), json!({"connectionTimeout": "1s"})),
                ),
                policy(
                    "MeshTimeout",
                    "z-zone",
                    Some("eu"),
                    to(svc.clone(), json!({"connectionTimeout": "2s"})),
                ),
            ],
            json!({"connectionTimeout": "2s"}),
            vec!["a-global", "z-zone"],
        ),
        (
            vec![
                policy(
                    "MeshTimeout",
                    "bbb",
                    None,
                    to(
                        svc.clone(),
                        json!({"connectionTimeout": "2s", "idleTimeout": "2m"}),
                    ),
                ),
                policy(
                    "MeshTimeout",
                    "aaa",
                    None,
                    to(svc.clone(), json!({"connectionTimeout": "1s"})),
                ),
            ],
            json!({"connectionTimeout": "1s", "idleTimeout": "2m"}),
            vec!["bbb", "aaa"],
        ),
        (
            vec![
                policy(
                    "MeshTimeout",
                    "global",
                    None,
                    to(svc.clone(), json!({"connectionTimeout": "1s"})),
                ),
                policy(
                    "MeshTimeout",
                    "us-local",
                    Some("us"),
                    to(svc.clone(), json!({"connectionTimeout": "9s"})),
                ),
            ],
            json!({"connectionTimeout": "1s"}),
            vec!["global"],
        ),
        (
            // Specificity beats origin: a global MeshService policy wins over a
            // zone-origin Mesh one.
            vec![
                policy(
                    "MeshTimeout",
                    "zone-mesh",
                    Some("eu"),
                    to(
                        json!({"kind": "Mesh"}),
                        json!({"connectionTimeout": "9s", "idleTimeout": "9m"}),
                    ),
                ),
                policy(
                    "MeshTimeout",
                    "global-svc",
                    None,
                    to(svc.clone(), json!({"connectionTimeout": "1s"})),
                ),
            ],
            json!({"connectionTimeout": "1s", "idleTimeout": "9m"}),
            vec!["zone-mesh", "global-svc"],
        ),
    ];
    for (policies, conf, names) in table {
        let got = effective("MeshTimeout", &policies, &backend_v2()).unwrap();
        assert_eq!(got.outbounds[1].conf, merged(conf, &names), "{policies:?}");
    }
}

/// Inside one policy, a `MeshService` `to[]` entry beats a `Mesh` one whatever the
/// order, and a later entry of the same kind beats an earlier one.
#[test]
fn entries_inside_one_policy() {
    let p = policy(
        "MeshTimeout",
        "one",
        None,
        json!({"to": [
        {"targetRef": {"kind": "MeshService", "name": "db"}, "default": {"connectionTimeout": "1s"}},
        {"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "5s", "idleTimeout": "1m"}},
        {"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "2m"}}]}),
    );
    let got = effective("MeshTimeout", &[p], &backend_v2()).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(
            json!({"connectionTimeout": "1s", "idleTimeout": "2m"}),
            &["one"]
        )
    );
    assert_eq!(
        got.outbounds[1].conf,
        merged(
            json!({"connectionTimeout": "5s", "idleTimeout": "2m"}),
            &["one"]
        )
    );
}

/// Per-route configuration: the destination's merged configuration plus the entries
/// that target the route.
#[test]
fn per_route() {
    let policies = [
        policy(
            "MeshTimeout",
            "defaults",
            None,
            to(
                json!({"kind": "Mesh"}),
                json!({"connectionTimeout": "5s", "http": {"requestTimeout": "15s"}}),
            ),
        ),
        policy(
            "MeshTimeout",
            "slow-report",
            None,
            json!({"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": {"kind": "MeshHTTPRoute", "name": "slow-report"}, "default": {"http": {"requestTimeout": "2m"}}},
            {"targetRef": {"kind": "MeshHTTPRoute", "name": "unused-route"}, "default": {"http": {"requestTimeout": "1h"}}}]}),
        ),
    ];
    let got = effective("MeshTimeout", &policies, &backend_v2()).unwrap();
    let db = &got.outbounds[0];
    assert_eq!(
        db.conf,
        merged(
            json!({"connectionTimeout": "5s", "http": {"requestTimeout": "15s"}}),
            &["defaults"]
        )
    );
    assert_eq!(
        db.routes,
        BTreeMap::from([(
            "slow-report".to_owned(),
            Merged {
                conf: json!({"connectionTimeout": "5s", "http": {"requestTimeout": "2m"}}),
                policies: vec!["defaults".to_owned(), "slow-report".to_owned()],
            }
        )])
    );
    assert!(got.outbounds[1].routes.is_empty());
}

/// Inbound rules: one per distinct source, most specific first, each holding every
/// entry whose source covers it.
#[test]
fn inbound_rules_by_source() {
    let policies = [
        policy(
            "MeshTrafficPermission",
            "allow-all",
            None,
            json!({"from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        ),
        policy(
            "MeshTrafficPermission",
            "backend-callers",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
            {"targetRef": {"kind": "MeshSubset", "tags": {"env": "dev"}}, "default": {"action": "Deny"}},
            {"targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"env": "dev"}}, "default": {"action": "AllowWithShadowDeny"}},
            {"targetRef": {"kind": "SpiffeId", "name": "spiffe://default/batch"}, "default": {"action": "Deny"}}]}),
        ),
        policy(
            "MeshTrafficPermission",
            "for-web-only",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "web"}, "from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}),
        ),
    ];
    let got = effective("MeshTrafficPermission", &policies, &backend_v2()).unwrap();
    let rule = |source: TargetRef, action: &str, names: &[&str]| FromRule {
        source,
        conf: json!({"action": action}),
        policies: names.iter().map(|n| (*n).to_owned()).collect(),
    };
    assert_eq!(
        got.inbounds,
        vec![InboundConfig {
            port: 8080,
            rules: vec![
                rule(
                    TargetRef::service_subset("web", [("env", "dev")]),
                    "AllowWithShadowDeny",
                    &["allow-all", "backend-callers"]
                ),
                // SpiffeId ranks with MeshService, above MeshSubset.
                rule(
                    TargetRef {
                        kind: TargetRefKind::SpiffeId,
                        name: Some("spiffe://default/batch".into()),
                        ..TargetRef::mesh()
                    },
                    "Deny",
                    &["allow-all", "backend-callers"],
                ),
                rule(
                    TargetRef::subset([("env", "dev")]),
                    "Deny",
                    &["allow-all", "backend-callers"]
                ),
                rule(TargetRef::mesh(), "Allow", &["allow-all"]),
            ],
        }]
    );
    assert_eq!(
        got.outbounds.iter().map(|o| &o.conf).collect::<Vec<_>>(),
        vec![&None, &None]
    );
}

/// A MeshService-level from entry of a less specific policy loses to a Mesh-level
/// entry of a more specific policy: the policy's own targetRef ranks first.
#[test]
fn top_level_specificity_before_entry_specificity() {
    let policies = [
        policy(
            "MeshTrafficPermission",
            "mesh-denies-web",
            None,
            json!({"from": [
            {"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}),
        ),
        policy(
            "MeshTrafficPermission",
            "backend-allows",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        ),
    ];
    let got = effective("MeshTrafficPermission", &policies, &backend_v2()).unwrap();
    assert_eq!(
        got.inbounds[0].rules,
        vec![
            FromRule {
                source: TargetRef::service("web"),
                conf: json!({"action": "Allow"}),
                policies: vec!["mesh-denies-web".into(), "backend-allows".into()]
            },
            FromRule {
                source: TargetRef::mesh(),
                conf: json!({"action": "Allow"}),
                policies: vec!["backend-allows".into()]
            },
        ]
    );
}

/// MeshHTTPRoute merges rules: equal matches merge their default (the more specific
/// policy on top), and the more specific policy's rules come first.
#[test]
fn http_route_rules_merge() {
    let api = json!([{"path": {"type": "PathPrefix", "value": "/api"}}]);
    let policies = [
        policy(
            "MeshHTTPRoute",
            "mesh-routes",
            None,
            json!({"to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "rules": [
            {"matches": api, "default": {"backendRefs": [{"kind": "MeshService", "name": "db", "weight": 1}],
                                         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-from", "value": "mesh"}]}}]}},
            {"default": {"backendRefs": [{"kind": "MeshService", "name": "db"}]}}]}]}),
        ),
        policy(
            "MeshHTTPRoute",
            "backend-canary",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "rules": [
            {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}], "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v2"}}]}},
            {"matches": api, "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v1"}, "weight": 90},
                {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v2"}, "weight": 10}]}}]}]}),
        ),
    ];
    let got = effective("MeshHTTPRoute", &policies, &backend_v2()).unwrap();
    let want = json!({"rules": [
        {"matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "1"}]}],
         "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v2"}}]}},
        {"matches": api, "default": {
            "backendRefs": [
                {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v1"}, "weight": 90},
                {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v2"}, "weight": 10}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-from", "value": "mesh"}]}}]}},
        {"default": {"backendRefs": [{"kind": "MeshService", "name": "db"}]}},
    ]});
    assert_eq!(
        got.outbounds[0].conf,
        merged(want, &["mesh-routes", "backend-canary"])
    );
    assert_eq!(got.outbounds[1].conf, None);
}

/// Top-level `default` (MeshTrace): merged per proxy; lists replace, objects merge.
#[test]
fn proxy_level_default() {
    let policies = [
        policy(
            "MeshTrace",
            "mesh-tracing",
            None,
            json!({"default": {
            "backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317"}}],
            "sampling": {"overall": 10, "client": 100}}}),
        ),
        policy(
            "MeshTrace",
            "backend-tracing",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {
            "sampling": {"overall": "50%"}, "tags": [{"name": "team", "literal": "payments"}]}}),
        ),
        policy(
            "MeshTrace",
            "web-tracing",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "web"}, "default": {
            "backends": []}}),
        ),
    ];
    let got = effective("MeshTrace", &policies, &backend_v2()).unwrap();
    assert_eq!(
        got.proxy,
        merged(
            json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317"}}],
                   "sampling": {"overall": 50, "client": 100}, "tags": [{"name": "team", "literal": "payments"}]}),
            &["mesh-tracing", "backend-tracing"],
        )
    );
}

/// A proxy without inbounds gets only `Mesh`-targeted policies; no policies at all
/// gives empty configuration.
#[test]
fn no_inbounds_and_no_policies() {
    let proxy = Proxy {
        zone: None,
        inbounds: vec![],
        outbounds: vec![ProxyOutbound {
            service: "db".into(),
            routes: vec![],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies = [
        policy(
            "MeshRetry",
            "all",
            None,
            to(
                json!({"kind": "Mesh"}),
                json!({"tcp": {"maxConnectAttempt": 3}}),
            ),
        ),
        policy(
            "MeshRetry",
            "backend",
            None,
            to(
                json!({"kind": "MeshService", "name": "backend"}),
                json!({"tcp": {"maxConnectAttempt": 9}}),
            ),
        ),
    ];
    let got = effective("MeshRetry", &policies, &proxy).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(json!({"tcp": {"maxConnectAttempt": 3}}), &["all"])
    );
    let empty = effective("MeshRetry", &[], &proxy).unwrap();
    assert_eq!(
        empty.outbounds,
        vec![OutboundConfig {
            service: "db".into(),
            conf: None,
            routes: BTreeMap::new()
        }]
    );
}

/// Invalid policies and policies of another kind are reported, not merged; asking for
/// a kind that is not a policy is an error.
#[test]
fn ignored_and_errors() {
    let policies = [
        policy(
            "MeshTimeout",
            "good",
            None,
            to(json!({"kind": "Mesh"}), json!({"connectionTimeout": "1s"})),
        ),
        policy(
            "MeshTimeout",
            "bad",
            None,
            to(json!({"kind": "Mesh"}), json!({"connectionTimeout": "2h"})),
        ),
        policy(
            "MeshRetry",
            "retry",
            None,
            to(json!({"kind": "Mesh"}), json!({})),
        ),
    ];
    let got = effective("MeshTimeout", &policies, &backend_v2()).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(json!({"connectionTimeout": "1s"}), &["good"])
    );
    assert_eq!(
        got.ignored,
        vec![
            IgnoredPolicy {
                name: "bad".into(),
                reason: "spec.to[0].default.connectionTimeout: must be between 1ms and 1h (got 2h)"
                    .into()
            },
            IgnoredPolicy {
                name: "retry".into(),
                reason: "is a MeshRetry, not a MeshTimeout".into()
            },
        ]
    );
    for kind in ["Mesh", "Zone", "Dataplane", "ZoneIngress", "NoSuchKind"] {
        assert_eq!(
            effective(kind, &[], &backend_v2()),
            Err(NotAPolicyKind { kind: kind.into() })
        );
    }
}

/// Canonical forms merge: `"50%"` and `50`, `90s` and `1m30s` are the same value.
#[test]
fn canonical_values() {
    let policies = [policy(
        "MeshTimeout",
        "t",
        None,
        to(json!({"kind": "Mesh"}), json!({"idleTimeout": "90s"})),
    )];
    let got = effective("MeshTimeout", &policies, &backend_v2()).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(json!({"idleTimeout": "1m30s"}), &["t"])
    );
}

#[test]
fn from_dataplane() {
    let spec: DataplaneSpec = crate::validation::decode_spec(&json!({
        "address": "10.0.0.1",
        "inbound": [{"port": 8080, "service": "backend", "tags": {"version": "v2"}}],
        "outbound": [{"port": 10001, "service": "db"}]}))
    .unwrap();
    let proxy = Proxy::from_dataplane(&spec, Some("eu"));
    assert_eq!(proxy.zone.as_deref(), Some("eu"));
    assert_eq!(proxy.inbounds[0].service, "backend");
    assert_eq!(
        proxy.inbounds[0].tags.get("version").map(String::as_str),
        Some("v2")
    );
    assert_eq!(
        proxy.outbounds,
        vec![ProxyOutbound {
            service: "db".into(),
            routes: vec![],
            ..Default::default()
        }]
    );
}

#[test]
fn from_dataplane_named() {
    let spec: DataplaneSpec = crate::validation::decode_spec(&json!({
        "address": "10.0.0.1",
        "inbound": [{"name": "http", "port": 8080, "service": "backend"}]}))
    .unwrap();
    let labels: BTreeMap<String, String> = [("app".to_owned(), "backend".to_owned())].into();
    let proxy = Proxy::from_dataplane(&spec, None).named("backend-1", &labels);
    assert_eq!(proxy.name, "backend-1");
    assert_eq!(proxy.labels, labels);
    assert_eq!(proxy.inbounds[0].name.as_deref(), Some("http"));
}

/// Dataplane `backend-1` (labels `app: backend`, `team: core`) in zone `eu` with the
/// inbounds `http` (8080, service `backend`) and an unnamed one (9090, service
/// `backend-admin`), calling `db`.
fn two_inbounds() -> Proxy {
    Proxy {
        name: "backend-1".to_owned(),
        labels: [
            ("app".to_owned(), "backend".to_owned()),
            ("team".to_owned(), "core".to_owned()),
        ]
        .into(),
        zone: Some("eu".to_owned()),
        inbounds: vec![
            ProxyInbound {
                name: Some("http".to_owned()),
                port: 8080,
                service: "backend".to_owned(),
                tags: BTreeMap::new(),
            },
            ProxyInbound {
                name: None,
                port: 9090,
                service: "backend-admin".to_owned(),
                tags: BTreeMap::new(),
            },
        ],
        outbounds: vec![ProxyOutbound {
            service: "db".to_owned(),
            routes: vec![],
            ..Default::default()
        }],
    }
}

/// `kind: Dataplane` matches by the Dataplane's name and labels, and ranks above every
/// older kind: Mesh < MeshSubset < MeshService < MeshServiceSubset < Dataplane by labels
/// < Dataplane by name. Non-matching names and labels are left out.
#[test]
fn dataplane_targets_match_and_rank() {
    let idle = |target_ref: Value, idle: &str| to(target_ref, json!({"idleTimeout": idle}));
    let policies = [
        policy(
            "MeshTimeout",
            "g-by-name",
            None,
            idle(json!({"kind": "Dataplane", "name": "backend-1"}), "6s"),
        ),
        policy(
            "MeshTimeout",
            "a-mesh",
            None,
            idle(json!({"kind": "Mesh"}), "1s"),
        ),
        policy(
            "MeshTimeout",
            "f-by-labels",
            None,
            idle(
                json!({"kind": "Dataplane", "labels": {"app": "backend"}}),
                "5s",
            ),
        ),
        policy(
            "MeshTimeout",
            "d-service",
            None,
            idle(json!({"kind": "MeshService", "name": "backend"}), "3s"),
        ),
        policy(
            "MeshTimeout",
            "c-subset",
            None,
            idle(
                json!({"kind": "MeshSubset", "tags": {"causeway.io/zone": "eu"}}),
                "2s",
            ),
        ),
        policy(
            "MeshTimeout",
            "e-service-subset",
            None,
            idle(
                json!({"kind": "MeshServiceSubset", "name": "backend", "tags": {"causeway.io/zone": "eu"}}),
                "4s",
            ),
        ),
        policy(
            "MeshTimeout",
            "x-other-name",
            None,
            idle(json!({"kind": "Dataplane", "name": "backend-2"}), "9s"),
        ),
        policy(
            "MeshTimeout",
            "x-other-labels",
            None,
            idle(
                json!({"kind": "Dataplane", "labels": {"app": "backend", "team": "edge"}}),
                "9s",
            ),
        ),
    ];
    let got = effective("MeshTimeout", &policies, &two_inbounds()).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(
            json!({"idleTimeout": "6s"}),
            &[
                "a-mesh",
                "c-subset",
                "d-service",
                "e-service-subset",
                "f-by-labels",
                "g-by-name"
            ]
        )
    );
    // Without the by-name policy, the by-labels one is the most specific.
    let got = effective("MeshTimeout", &policies[1..], &two_inbounds()).unwrap();
    assert_eq!(
        got.outbounds[0].conf.as_ref().map(|m| &m.conf),
        Some(&json!({"idleTimeout": "5s"}))
    );
    // A proxy without name and labels (Proxy::from_dataplane without named) matches
    // no Dataplane target.
    let anonymous = Proxy {
        name: String::new(),
        labels: BTreeMap::new(),
        ..two_inbounds()
    };
    let got = effective("MeshTimeout", &policies, &anonymous).unwrap();
    assert_eq!(
        got.outbounds[0].conf.as_ref().map(|m| m.policies.clone()),
        Some(vec![
            "a-mesh".to_owned(),
            "c-subset".to_owned(),
            "d-service".to_owned(),
            "e-service-subset".to_owned()
        ])
    );
}

/// Top-level `rules` are inbound entries for every caller (a `Mesh` source);
/// `sectionName` narrows a policy's inbound entries to one inbound (by name or port)
/// and makes it more specific than the same target without it.
#[test]
fn rules_and_section_name() {
    let rules = |target_ref: Value, default: Value| json!({"targetRef": target_ref, "rules": [{"default": default}]});
    let policies = [
        policy(
            "MeshTimeout",
            "all-inbounds",
            None,
            rules(
                json!({"kind": "Dataplane", "labels": {"app": "backend"}}),
                json!({"idleTimeout": "1h", "http": {"requestTimeout": "30s"}}),
            ),
        ),
        policy(
            "MeshTimeout",
            "http-only",
            None,
            rules(
                json!({"kind": "Dataplane", "labels": {"app": "backend"}, "sectionName": "http"}),
                json!({"http": {"requestTimeout": "5s"}}),
            ),
        ),
        policy(
            "MeshTimeout",
            "admin-by-port",
            None,
            rules(
                json!({"kind": "Dataplane", "name": "backend-1", "sectionName": "9090"}),
                json!({"idleTimeout": "1m"}),
            ),
        ),
        policy(
            "MeshTimeout",
            "from-web",
            None,
            json!({"targetRef": {"kind": "MeshService", "name": "backend"},
                   "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"idleTimeout": "2h"}}]}),
        ),
    ];
    let got = effective("MeshTimeout", &policies, &two_inbounds()).unwrap();
    let rule = |source: TargetRef, conf: Value, names: &[&str]| FromRule {
        source,
        conf,
        policies: names.iter().map(|n| (*n).to_owned()).collect(),
    };
    assert_eq!(
        got.inbounds,
        vec![
            InboundConfig {
                port: 8080,
                rules: vec![
                    // The Dataplane policies' rules (Mesh source) cover web too, and
                    // their top-level targets outrank from-web's MeshService.
                    rule(
                        TargetRef::service("web"),
                        json!({"idleTimeout": "1h", "http": {"requestTimeout": "5s"}}),
                        &["from-web", "all-inbounds", "http-only"],
                    ),
                    rule(
                        TargetRef::mesh(),
                        json!({"idleTimeout": "1h", "http": {"requestTimeout": "5s"}}),
                        &["all-inbounds", "http-only"],
                    ),
                ],
            },
            InboundConfig {
                port: 9090,
                rules: vec![rule(
                    TargetRef::mesh(),
                    json!({"idleTimeout": "1m", "http": {"requestTimeout": "30s"}}),
                    &["all-inbounds", "admin-by-port"],
                )],
            },
        ]
    );
    // The section does not matter on the client side: the proxy calls db either way.
    assert_eq!(got.outbounds[0].conf, None);
}

/// A `to[]` MeshService named by labels (`kuma.io/display-name` or
/// `causeway.io/service`) is the destination of that name.
#[test]
fn to_service_by_labels() {
    let policies = [
        policy(
            "MeshTimeout",
            "by-display-name",
            None,
            json!({"to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "db"}},
                           "default": {"idleTimeout": "1m"}}]}),
        ),
        policy(
            "MeshTimeout",
            "by-service-label",
            None,
            json!({"to": [{"targetRef": {"kind": "MeshService", "labels": {"causeway.io/service": "db"}, "sectionName": "postgres"},
                           "default": {"http": {"requestTimeout": "2s"}}}]}),
        ),
        policy(
            "MeshTimeout",
            "other-service",
            None,
            json!({"to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "redis"}},
                           "default": {"idleTimeout": "9m"}}]}),
        ),
    ];
    // db's endpoints are all on its port `postgres` (5432): the section's entry applies.
    let mut proxy = two_inbounds();
    proxy.outbounds[0].ports = vec![crate::ServicePort {
        port: 5432,
        name: Some("postgres".into()),
    }];
    let got = effective("MeshTimeout", &policies, &proxy).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(
            json!({"idleTimeout": "1m", "http": {"requestTimeout": "2s"}}),
            &["by-service-label", "by-display-name"]
        )
    );
}

/// A `to[]` entry with a `sectionName` applies to a destination whose endpoints are
/// all on that port (by name or number), and ranks above the service's entry without
/// it; with a `namespace`, to one whose endpoints are all in that namespace. A
/// destination with endpoints on several ports (or in several namespaces), or with none
/// yet, takes neither.
#[test]
fn to_a_port_or_a_namespace_of_a_service() {
    let policies = [policy(
        "MeshTimeout",
        "db-ports",
        None,
        json!({"to": [
            {"targetRef": {"kind": "MeshService", "name": "db", "sectionName": "5432"},
             "default": {"connectionTimeout": "2s"}},
            {"targetRef": {"kind": "MeshService", "name": "db"},
             "default": {"connectionTimeout": "9s", "idleTimeout": "1m"}},
            {"targetRef": {"kind": "MeshService", "name": "db", "namespace": "prod"},
             "default": {"idleTimeout": "5m"}},
        ]}),
    )];
    let port = |port, name: Option<&str>| crate::ServicePort {
        port,
        name: name.map(str::to_owned),
    };
    let conf = |ports: Vec<crate::ServicePort>, namespaces: Vec<Option<&str>>| {
        let mut proxy = two_inbounds();
        proxy.outbounds[0].ports = ports;
        proxy.outbounds[0].namespaces = namespaces
            .into_iter()
            .map(|n| n.map(str::to_owned))
            .collect();
        let got = effective("MeshTimeout", &policies, &proxy).unwrap();
        got.outbounds[0].conf.as_ref().map(|m| m.conf.clone())
    };
    assert_eq!(
        conf(vec![port(5432, Some("postgres"))], vec![Some("prod")]),
        Some(json!({"connectionTimeout": "2s", "idleTimeout": "5m"}))
    );
    assert_eq!(
        conf(vec![port(5432, None), port(5433, None)], vec![None]),
        Some(json!({"connectionTimeout": "9s", "idleTimeout": "1m"})),
        "two ports: the service's entry only"
    );
    assert_eq!(
        conf(vec![], vec![]),
        Some(json!({"connectionTimeout": "9s", "idleTimeout": "1m"})),
        "no endpoints yet"
    );
    assert_eq!(
        conf(vec![port(5432, None)], vec![Some("prod"), Some("dev")]),
        Some(json!({"connectionTimeout": "2s", "idleTimeout": "1m"})),
        "two namespaces"
    );
}

/// A top-level `namespace` selects the proxies whose inbounds (or Dataplane labels)
/// carry it as `k8s.kuma.io/namespace`.
#[test]
fn a_namespace_selects_the_proxies_in_it() {
    let policies = [policy(
        "MeshTimeout",
        "in-prod",
        None,
        json!({"targetRef": {"kind": "MeshService", "name": "backend", "namespace": "prod"},
               "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}),
    )];
    let mut proxy = two_inbounds();
    let got = effective("MeshTimeout", &policies, &proxy).unwrap();
    assert!(got.inbounds[0].rules.is_empty(), "not in a namespace");
    proxy.inbounds[0]
        .tags
        .insert(crate::NAMESPACE_TAG.into(), "prod".into());
    let got = effective("MeshTimeout", &policies, &proxy).unwrap();
    assert_eq!(got.inbounds[0].rules.len(), 1, "in prod");
    proxy.inbounds[0]
        .tags
        .insert(crate::NAMESPACE_TAG.into(), "dev".into());
    let got = effective("MeshTimeout", &policies, &proxy).unwrap();
    assert!(got.inbounds[0].rules.is_empty(), "in dev");
}

/// MeshTrafficPermission's SPIFFE lists add up across policies (a more specific policy
/// cannot drop a less specific one's `deny`), and sit beside `from[]` decisions in the
/// `Mesh` source's rule.
#[test]
fn traffic_permission_spiffe_rules_append() {
    let m = |kind: &str, value: &str| json!({"spiffeID": {"type": kind, "value": value}});
    let policies = [
        policy(
            "MeshTrafficPermission",
            "mesh-wide",
            None,
            json!({"targetRef": {"kind": "Mesh"}, "rules": [{"default": {
                "deny": [m("Prefix", "spiffe://td/ns/legacy")],
                "allow": [m("Prefix", "spiffe://td")]}}]}),
        ),
        policy(
            "MeshTrafficPermission",
            "backend-owner",
            None,
            json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}}, "rules": [{"default": {
                "allow": [m("Prefix", "spiffe://td"), m("Exact", "spiffe://td/ns/legacy/sa/batch")],
                "allowWithShadowDeny": [m("Prefix", "spiffe://td/ns/test")]}}],
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        ),
    ];
    let got = effective("MeshTrafficPermission", &policies, &two_inbounds()).unwrap();
    assert_eq!(
        got.inbounds[0].rules,
        vec![FromRule {
            source: TargetRef::mesh(),
            conf: json!({
                "action": "Allow",
                "deny": [m("Prefix", "spiffe://td/ns/legacy")],
                "allow": [m("Prefix", "spiffe://td"), m("Exact", "spiffe://td/ns/legacy/sa/batch")],
                "allowWithShadowDeny": [m("Prefix", "spiffe://td/ns/test")]}),
            policies: vec!["mesh-wide".to_owned(), "backend-owner".to_owned()],
        }]
    );
    // Other kinds keep merge-patch: a list replaces the one before it.
    let policies = [
        policy(
            "MeshAccessLog",
            "a",
            None,
            json!({"rules": [{"default": {"backends": [{"type": "File", "file": {"path": "/a"}}]}}]}),
        ),
        policy(
            "MeshAccessLog",
            "b",
            None,
            json!({"targetRef": {"kind": "Dataplane", "name": "backend-1"},
                   "rules": [{"default": {"backends": [{"type": "File", "file": {"path": "/b"}}]}}]}),
        ),
    ];
    let got = effective("MeshAccessLog", &policies, &two_inbounds()).unwrap();
    assert_eq!(
        got.inbounds[0].rules[0].conf,
        json!({"backends": [{"type": "File", "file": {"path": "/b"}}]})
    );
}

/// A MeshTCPRoute's Kuma form (`to[].rules[0].default`) merges with the older
/// `to[].default` form of another policy into one rule.
#[test]
fn tcp_route_rules_and_default_merge() {
    let backend = |name: &str| json!({"backendRefs": [{"kind": "MeshService", "name": name}]});
    let policies = [
        policy(
            "MeshTCPRoute",
            "old-form",
            None,
            json!({"to": [{"targetRef": {"kind": "MeshService", "name": "db"}, "default": backend("db-v1")}]}),
        ),
        policy(
            "MeshTCPRoute",
            "kuma-form",
            None,
            json!({"targetRef": {"kind": "Dataplane", "name": "backend-1"},
                   "to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "db"}},
                           "rules": [{"default": backend("db-v2")}]}]}),
        ),
    ];
    let got = effective("MeshTCPRoute", &policies, &two_inbounds()).unwrap();
    assert_eq!(
        got.outbounds[0].conf,
        merged(
            json!({"rules": [{"default": backend("db-v2")}]}),
            &["old-form", "kuma-form"]
        )
    );
}

/// MeshFaultInjection rules with `matches` (callers by SPIFFE id, exact or by prefix)
/// are entries for those callers, more specific than the rules without, which apply to
/// every caller.
#[test]
fn matched_rules_are_entries_for_their_callers() {
    let policies = [policy(
        "MeshFaultInjection",
        "faults",
        None,
        json!({"rules": [
            {"matches": [{"spiffeID": {"type": "Exact", "value": "spiffe://td/ns/demo/sa/frontend"}},
                         {"spiffeID": {"type": "Prefix", "value": "spiffe://td/ns/legacy"}}],
             "default": {"http": [{"abort": {"httpStatus": 500, "percentage": 10}}]}},
            {"default": {"http": [{"delay": {"value": "1s", "percentage": 5}}]}}]}),
    )];
    let got = effective("MeshFaultInjection", &policies, &two_inbounds()).unwrap();
    let abort = json!({"http": [{"abort": {"httpStatus": 500, "percentage": 10}}]});
    let sources: Vec<(Option<crate::SpiffeSource<'_>>, &Value)> = got.inbounds[0]
        .rules
        .iter()
        .map(|r| (r.source.spiffe_source(), &r.conf))
        .collect();
    assert_eq!(
        sources,
        vec![
            (
                Some(crate::SpiffeSource::Exact(
                    "spiffe://td/ns/demo/sa/frontend"
                )),
                &abort
            ),
            (
                Some(crate::SpiffeSource::Prefix("spiffe://td/ns/legacy")),
                &abort
            ),
            (
                None,
                &json!({"http": [{"delay": {"value": "1s", "percentage": 5}}]})
            ),
        ]
    );
    assert_eq!(got.inbounds[0].rules[2].source, TargetRef::mesh());
}
