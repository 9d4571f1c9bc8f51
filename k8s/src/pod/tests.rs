use k8s_openapi::List;
use serde_json::{Value, json};

use super::*;

fn fixture<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn demo() -> (Pod, Namespace, Vec<Service>) {
    let services: List<Service> = fixture("services-demo.json");
    (
        fixture("pod-backend.json"),
        fixture("namespace-demo.json"),
        services.items,
    )
}

/// Changes a fixture through its JSON, as a different answer of the API server.
fn edited<T: serde::Serialize + serde::de::DeserializeOwned>(
    v: &T,
    edit: impl FnOnce(&mut Value),
) -> T {
    let mut json = serde_json::to_value(v).expect("serializes");
    edit(&mut json);
    serde_json::from_value(json).expect("still the type")
}

fn settings() -> Settings {
    Settings::default()
}

#[test]
fn a_running_pod_gets_an_inbound_per_service_port_it_serves() {
    let (pod, ns, services) = demo();
    let (dp, problems) = dataplane_for(&pod, &ns, &services, &settings()).expect("a Dataplane");
    causeway_api::validate(&dp).expect("the API accepts it");
    assert_eq!(dp.kind, "Dataplane");
    assert_eq!(dp.mesh.as_deref(), Some("default"));
    assert!(
        dp.name.starts_with("backend-7d4b9c6f8-x2x9q-demo-"),
        "{}",
        dp.name
    );
    assert_eq!(dp.labels[POD_LABEL], "backend-7d4b9c6f8-x2x9q");
    assert_eq!(dp.labels[NAMESPACE_TAG], "demo");
    let tags = json!({"app": "backend", "pod-template-hash": "7d4b9c6f8", "version": "v2",
                      "k8s.kuma.io/namespace": "demo"});
    assert_eq!(
        dp.spec,
        json!({
            "address": "10.244.2.17",
            "inbound": [
                // backend:80 -> the container port named http (8080), the second declared.
                {"name": "http", "port": 15101, "servicePort": 8080, "service": "backend_demo_svc_80",
                 "protocol": "http", "tags": tags},
                // The protocol from the Service's annotation.
                {"name": "metrics", "port": 15102, "servicePort": 9090,
                 "service": "backend-ops_demo_svc_9090", "protocol": "http", "tags": tags},
                // No targetPort: the Service's own port.
                {"name": "admin", "port": 15100, "servicePort": 7000,
                 "service": "backend-ops_demo_svc_7000", "protocol": "tcp", "tags": tags},
            ],
            "adminPort": 9901,
            "transparentProxying": {"outboundPort": 15001, "dnsPort": 15053},
        })
    );
    let reasons: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.port.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], ("backend-ops:53", "only TCP ports are proxied"));
    assert_eq!(reasons[1].0, "backend-ops:6060");
    assert!(
        reasons[1].1.contains("do not declare port 6060"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "backend-ops:9091");
    assert!(
        reasons[2].1.contains("\"grpc\" names no port"),
        "{reasons:?}"
    );
}

#[test]
fn listener_ports_follow_the_declared_tcp_ports_in_order() {
    let (pod, ..) = demo();
    assert_eq!(
        inbound_listener_ports(&pod),
        BTreeMap::from([(7000, 15100), (8080, 15101), (9090, 15102)])
    );
    // Declared in another order, same answer: the rule reads only the set of ports.
    let shuffled = edited(&pod, |p| {
        p["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .expect("ports")
            .reverse()
    });
    assert_eq!(
        inbound_listener_ports(&shuffled),
        inbound_listener_ports(&pod)
    );
}

#[test]
fn the_mesh_comes_from_the_pod_then_the_namespace_then_default() {
    let (pod, ns, services) = demo();
    let mesh_of = |pod: &Pod, ns: &Namespace| {
        dataplane_for(pod, ns, &services, &settings())
            .expect("a Dataplane")
            .0
            .mesh
    };
    let ns_in_payments = edited(&ns, |n| n["metadata"]["labels"][MESH] = json!("payments"));
    assert_eq!(mesh_of(&pod, &ns_in_payments).as_deref(), Some("payments"));
    let pod_in_edge = edited(&pod, |p| {
        p["metadata"]["annotations"] = json!({MESH: "edge"});
    });
    assert_eq!(
        mesh_of(&pod_in_edge, &ns_in_payments).as_deref(),
        Some("edge")
    );
    assert_eq!(mesh_of(&pod, &ns).as_deref(), Some("default"));
}

#[test]
fn protocols_from_app_protocol_or_the_annotation() {
    let (pod, ns, services) = demo();
    let with = |app_protocol: &str| {
        let svc = edited(&services[0], |s| {
            s["spec"]["ports"][0]["appProtocol"] = json!(app_protocol)
        });
        dataplane_for(&pod, &ns, &[svc], &settings())
    };
    for (given, expected) in [
        ("kubernetes.io/h2c", "http2"),
        ("grpc", "grpc"),
        ("HTTP", "http"),
        ("tcp", "tcp"),
    ] {
        let (dp, _) = with(given).expect("a Dataplane");
        assert_eq!(dp.spec["inbound"][0]["protocol"], expected, "{given}");
    }
    // An unknown one is named, and the port is left out (here: the pod's only one).
    assert_eq!(with("kafka").unwrap_err(), Skipped::NoInbound);
    let svc = edited(&services[0], |s| {
        s["spec"]["ports"][0]["appProtocol"] = json!("kafka")
    });
    let both = [svc, services[1].clone()];
    let (_, problems) = dataplane_for(&pod, &ns, &both, &settings()).expect("a Dataplane");
    assert!(
        problems
            .iter()
            .any(|p| p.port == "backend:80" && p.reason.contains("\"kafka\"")),
        "{problems:?}"
    );
}

#[test]
fn pods_outside_the_mesh_or_not_running_get_none() {
    let (pod, ns, services) = demo();
    let skip =
        |pod: &Pod, ns: &Namespace| dataplane_for(pod, ns, &services, &settings()).unwrap_err();
    let unlabelled = edited(&ns, |n| {
        n["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove(INJECTION);
    });
    assert!(matches!(skip(&pod, &unlabelled), Skipped::NotInMesh(r) if r.contains("demo")));
    let opted_out = edited(&pod, |p| {
        p["metadata"]["annotations"] = json!({INJECTION: "disabled"})
    });
    assert!(matches!(skip(&opted_out, &ns), Skipped::NotInMesh(r) if r.contains("opted out")));
    let host = edited(&pod, |p| p["spec"]["hostNetwork"] = json!(true));
    assert_eq!(skip(&host, &ns), Skipped::HostNetwork);
    let pending = edited(&pod, |p| {
        p["status"] = json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]})
    });
    assert_eq!(skip(&pending, &ns), Skipped::NoAddress);
    let done = edited(&pod, |p| p["status"]["phase"] = json!("Succeeded"));
    assert_eq!(skip(&done, &ns), Skipped::Gone);
    let deleting = edited(&pod, |p| {
        p["metadata"]["deletionTimestamp"] = json!("2026-12-01T10:00:00Z")
    });
    assert_eq!(skip(&deleting, &ns), Skipped::Gone);
    let unselected = edited(&pod, |p| p["metadata"]["labels"]["app"] = json!("batch"));
    assert_eq!(skip(&unselected, &ns), Skipped::NoInbound);
}

#[test]
fn two_service_ports_to_one_container_port_are_one_inbound() {
    let (pod, ns, services) = demo();
    let twin = edited(&services[0], |s| {
        s["metadata"]["name"] = json!("backend-alias")
    });
    let (dp, problems) =
        dataplane_for(&pod, &ns, &[services[0].clone(), twin], &settings()).expect("a Dataplane");
    causeway_api::validate(&dp).expect("the API accepts it");
    let inbound = dp.spec["inbound"].as_array().expect("inbounds");
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0]["service"], "backend_demo_svc_80");
    // Its port name was shared, so the inbound has none (names are unique).
    assert_eq!(inbound[0].get("name"), None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].reason.contains("8080"), "{problems:?}");
}

#[test]
fn names_are_dns_labels_unique_per_pod_and_stable() {
    let a = dataplane_name("web-prod", "a");
    let b = dataplane_name("web", "prod-a");
    assert_ne!(a, b);
    assert_eq!(a, dataplane_name("web-prod", "a"));
    // Pinned (FNV-1a of "demo/web-0", computed apart): a release that changed it would
    // orphan every Dataplane of a cluster.
    assert_eq!(dataplane_name("web-0", "demo"), "web-0-demo-0f27cbee");
    let long = dataplane_name(
        &format!("{}.x", "a".repeat(250)),
        "namespace-with-a-long-name",
    );
    for name in [&a, &b, &long, &dataplane_name("web-0", "demo")] {
        assert!(
            causeway_api::validate_name("name", name).is_none(),
            "{name}"
        );
    }
}
