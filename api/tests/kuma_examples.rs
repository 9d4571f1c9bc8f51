//! Kuma's documented policy examples (Kuma 2.9-2.14, universal form), rewritten in the
//! documented shapes under `tests/kuma_examples/<kind>.yaml`, are accepted by
//! [`causeway_api::validate`]; the few that use what Causeway lacks are refused with a
//! reason that says so, never an opaque decoding error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use causeway_api::{Resource, validate};

/// `(policy name, a fragment of the refusal's reason)`: the documented examples that use
/// something Causeway does not have. Every other example must be accepted.
const EXPECTED_REFUSALS: &[(&str, &str)] = &[
    ("edge-gateway-route", "Causeway has no gateways yet"),
    (
        "external-rate-limit",
        "Causeway has no external services yet",
    ),
    (
        "backend-regional-failover",
        "Causeway has no multi-zone services yet",
    ),
    ("datadog-tracing", "Causeway has no Datadog tracing backend"),
    ("gateway-tracing", "Causeway has no gateways yet"),
    (
        "otel-tracing-backend-ref",
        "Causeway has no MeshOpenTelemetryBackend yet",
    ),
    (
        "log-otel-backend-ref",
        "Causeway has no MeshOpenTelemetryBackend yet",
    ),
    (
        "metrics-otel-backend-ref",
        "Causeway has no MeshOpenTelemetryBackend yet",
    ),
    (
        "metrics-prometheus-provided-tls",
        "Causeway has no certificates of your own",
    ),
];

#[test]
fn kuma_documented_examples_are_accepted() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kuma_examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    // kind -> (accepted, total)
    let mut per_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let resources = Resource::from_yaml_documents(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for r in resources {
            let counts = per_kind.entry(r.kind.clone()).or_default();
            counts.1 += 1;
            match validate(&r) {
                Ok(()) => counts.0 += 1,
                Err(e) => {
                    println!("REFUSED {}: {e}", r.key());
                    refused.push((r.name.clone(), e.to_string()));
                }
            }
        }
    }
    let (accepted, total) = per_kind
        .values()
        .fold((0, 0), |(a, t), (ka, kt)| (a + ka, t + kt));
    for (kind, (a, t)) in &per_kind {
        println!("{kind}: {a}/{t}");
    }
    println!("accepted {accepted} of {total}");
    assert_eq!(per_kind.len(), 13, "one file per policy kind: {per_kind:?}");
    assert!(
        accepted * 100 >= total * 90,
        "only {accepted} of {total} accepted"
    );
    for (name, reason) in &refused {
        let expected = EXPECTED_REFUSALS.iter().find(|(n, _)| n == name);
        match expected {
            Some((_, fragment)) => assert!(
                reason.contains(fragment),
                "{name} is refused for another reason than {fragment:?}: {reason}"
            ),
            None => panic!("{name} is refused unexpectedly: {reason}"),
        }
    }
    for (name, _) in EXPECTED_REFUSALS {
        assert!(
            refused.iter().any(|(n, _)| n == name),
            "{name} is expected to be refused but is accepted"
        );
    }
}

/// The kinds the resilience and traffic-shaping work enforces: Kuma's documented
/// examples of them, once accepted, take effect as written; none of their fields warns.
#[test]
fn kuma_examples_of_enforced_kinds_take_effect_as_written() {
    const KINDS: &[&str] = &[
        "MeshTimeout",
        "MeshRetry",
        "MeshCircuitBreaker",
        "MeshHealthCheck",
        "MeshHTTPRoute",
        "MeshTCPRoute",
        "MeshFaultInjection",
        "MeshRateLimit",
        "MeshLoadBalancingStrategy",
        "MeshTrafficPermission",
    ];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kuma_examples");
    let mut warned = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("the examples") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("an example file");
        for r in Resource::from_yaml_documents(&text).expect("YAML documents") {
            if !KINDS.contains(&r.kind.as_str()) || validate(&r).is_err() {
                continue;
            }
            checked += 1;
            for w in causeway_api::warnings(&r) {
                println!("WARNED {} {}: {}: {}", r.kind, r.name, w.field, w.reason);
                warned.push((r.name.clone(), w.field.clone()));
            }
        }
    }
    println!("{checked} examples checked");
    assert!(checked >= 50, "{checked}");
    assert!(warned.is_empty(), "{warned:#?}");
}
