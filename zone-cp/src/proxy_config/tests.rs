//! Golden files: `testdata/<case>.input.yaml` holds the zone's resources (several YAML
//! documents), `testdata/<case>.golden.yaml` the expected config. `UPDATE_GOLDEN=1 cargo
//! test` rewrites the golden files; a difference fails the test.

use super::*;

/// (case, zone, dataplane)
const CASES: &[(&str, &str, &str)] = &[
    // mTLS mesh, permissions by service and SPIFFE id, a local destination.
    ("mtls-permissions", "zone-a", "web-1"),
    // No mTLS: allow by default, no identities expected.
    ("no-mtls", "zone-a", "web-1"),
    // Remote zones through their ingresses, in the MeshLoadBalancingStrategy's order;
    // a disabled zone is left out.
    ("cross-zone-failover", "zone-a", "web-1"),
    // The same mesh with crossZone: false keeps traffic in the zone.
    ("cross-zone-off", "zone-a", "web-1"),
    // Destinations by port (`sectionName`), policies by port and namespace, route
    // backends by namespace and port, here and through another zone's ingress.
    ("ports-and-namespaces", "zone-a", "web-1"),
    // Transparent proxying: implicit outbounds at the services' virtual IPs (a listed
    // subset), beside an explicit one; passthrough off.
    ("transparent", "zone-a", "web-1"),
];

pub(super) fn inputs(case: &str, zone: &str) -> MeshInputs {
    let path = format!("{}/testdata/{case}.input.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut inputs = MeshInputs {
        zone: zone.into(),
        ..Default::default()
    };
    for r in Resource::from_yaml_documents(&text).unwrap_or_else(|e| panic!("{path}: {e}")) {
        causeway_api::validate(&r).unwrap_or_else(|e| panic!("{path}: {}: {e}", r.key()));
        match r.kind.as_str() {
            "Mesh" => inputs.mesh = Some(r),
            "Zone" => inputs.zones.push(r),
            "Dataplane" => inputs.dataplanes.push(r),
            "ZoneIngress" => inputs.ingresses.push(r),
            "VirtualIp" => inputs.add_virtual_ips(std::slice::from_ref(&r)),
            kind if causeway_api::type_info(kind).is_some_and(|t| t.is_policy()) => {
                inputs.policies.push(r)
            }
            kind => panic!("{path}: a {kind} is not an input of a proxy config"),
        }
    }
    inputs
}

/// Computes each case's config, renders it with `render` and compares it with
/// `testdata/<case>.golden.yaml` (rewritten with `UPDATE_GOLDEN=1`). Every mismatch is
/// reported at once.
/// Renders each case's config and compares it with `testdata/<case>.golden.yaml`
/// (`UPDATE_GOLDEN=1` writes it). A case listed for several dataplanes in a row has
/// one golden: their renders, as YAML documents in that order.
pub(super) fn check_goldens(cases: &[(&str, &str, &str)], render: impl Fn(&ProxyConfig) -> String) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut rendered: Vec<(&str, String)> = Vec::new();
    for (case, zone, dp) in cases {
        let inputs = inputs(case, zone);
        let dataplane = inputs
            .dataplanes
            .iter()
            .find(|d| d.name == *dp)
            .unwrap_or_else(|| panic!("{case}: no dataplane {dp}"));
        let config = compute(&inputs, dataplane).unwrap_or_else(|e| panic!("{case}: {e}"));
        let got = render(&config);
        match rendered.last_mut() {
            Some((last, text)) if last == case => {
                text.push_str("---\n");
                text.push_str(&got);
            }
            _ => rendered.push((case, got)),
        }
    }
    let mut failed = Vec::new();
    for (case, got) in rendered {
        let path = format!("{}/testdata/{case}.golden.yaml", env!("CARGO_MANIFEST_DIR"));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            failed.push(format!("--- {case}: want ({path})\n{want}\n--- got\n{got}"));
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        failed.join("\n")
    );
}

/// [`check_goldens`] of one field of the outbounds: each outbound's service and the
/// field (left out when `None`), under `name`.
pub(super) fn check_outbound_goldens<T: serde::Serialize>(
    cases: &[(&str, &str, &str)],
    name: &str,
    field: impl Fn(&causeway_api::proxy_config::OutboundListener) -> Option<&T>,
) {
    check_goldens(cases, |config| {
        let view: Vec<serde_json::Value> = config
            .outbounds
            .iter()
            .map(|o| {
                let mut v = serde_json::json!({ "service": o.service });
                if let Some(f) = field(o) {
                    v[name] = serde_json::to_value(f).expect("JSON");
                }
                v
            })
            .collect();
        serde_yaml::to_string(&view).expect("YAML")
    });
}

#[test]
fn golden_configs() {
    check_goldens(CASES, |config| serde_yaml::to_string(config).unwrap());
}

#[test]
fn a_changed_input_changes_the_version_and_an_unrelated_one_does_not() {
    let base = inputs("mtls-permissions", "zone-a");
    let dp = base
        .dataplanes
        .iter()
        .find(|d| d.name == "web-1")
        .unwrap()
        .clone();
    let v0 = compute(&base, &dp).unwrap().version;
    assert_eq!(compute(&base, &dp).unwrap().version, v0, "deterministic");
    // A new endpoint of a service web-1 calls: new version.
    let mut more = base.clone();
    let mut extra = more
        .dataplanes
        .iter()
        .find(|d| d.name == "backend-1")
        .unwrap()
        .clone();
    extra.name = "backend-9".into();
    extra.spec["address"] = serde_json::json!("10.0.0.99");
    more.dataplanes.push(extra);
    assert_ne!(compute(&more, &dp).unwrap().version, v0);
    // A policy for a service web-1 neither serves nor calls: same version.
    let mut unrelated = base.clone();
    let p = Resource::from_yaml(
        "type: MeshTrafficPermission\nmesh: default\nname: other\nspec:\n  targetRef: {kind: MeshService, name: db}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n",
    )
    .unwrap();
    unrelated.policies.push(p);
    assert_eq!(compute(&unrelated, &dp).unwrap().version, v0);
}

#[test]
fn no_mesh_is_an_error_not_a_panic() {
    let mut i = inputs("no-mtls", "zone-a");
    let dp = i.dataplanes[0].clone();
    i.mesh = None;
    assert_eq!(
        compute(&i, &dp),
        Err(ComputeError::NoMesh("default".into()))
    );
}

#[test]
fn a_drilled_zone_leaves_every_config_like_a_disabled_one() {
    let mut inputs = inputs("cross-zone-failover", "zone-a");
    let dp = inputs
        .dataplanes
        .iter()
        .find(|d| d.name == "web-1")
        .unwrap()
        .clone();
    let zones = |inputs: &MeshInputs| -> Vec<String> {
        compute(inputs, &dp).unwrap().outbounds[1]
            .groups
            .iter()
            .map(|g| g.zone.clone())
            .collect()
    };
    assert_eq!(zones(&inputs), ["zone-c", "zone-b"]);
    inputs.drilled_zones = vec!["zone-c".into()];
    assert_eq!(zones(&inputs), ["zone-b"]);
}
