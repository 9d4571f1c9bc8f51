use serde_json::Value;

use super::*;

#[test]
fn every_type_has_a_schema_with_documented_fields() {
    for t in types() {
        let schema = schema_for_kind(t.kind).unwrap_or_else(|| panic!("{}", t.kind));
        assert_eq!(schema["properties"]["type"]["const"], t.kind);
        assert_eq!(schema["title"], t.kind);
        let spec = &schema["properties"]["spec"];
        assert!(
            spec.get("properties").is_some() || spec.get("$ref").is_some(),
            "{}: {spec}",
            t.kind
        );
        // Every property of every object (spec and $defs) has a description.
        let mut undocumented = Vec::new();
        collect_undocumented(&schema, &schema, t.kind, &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "{}: undocumented fields {undocumented:?}",
            t.kind
        );
        // Serializable as JSON (what the API serves).
        assert!(serde_json::to_string(&schema).is_ok());
    }
    assert!(schema_for_kind("Nope").is_none());
}

fn collect_undocumented(root: &Value, node: &Value, path: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    // A tag discriminator (`type: {const: builtin}`) documents itself.
                    let documented = prop.get("const").is_some()
                        || prop.get("description").is_some()
                        || resolve(root, prop).get("description").is_some();
                    if !documented {
                        out.push(format!("{path}.{name}"));
                    }
                }
            }
            for (key, value) in map {
                collect_undocumented(root, value, &format!("{path}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_undocumented(root, item, path, out);
            }
        }
        _ => {}
    }
}

#[test]
fn durations_and_percents_are_strings_or_numbers() {
    let schema = schema_for_kind("Mesh").unwrap();
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["certificateTtl"]["type"], "string");
    assert!(spec["certificateTtl"]["pattern"].is_string());
    let any_of = spec["certificateRenewAt"]["anyOf"].as_array().unwrap();
    assert_eq!(any_of[0]["type"], "number");
    assert_eq!(any_of[1]["type"], "string");
}

#[test]
fn explain_table() {
    let table: &[(&str, &[&str])] = &[
        (
            "MeshTimeout",
            &[
                "KIND:     MeshTimeout",
                "SCOPE:    mesh",
                "FIELDS:",
                "  spec\t<Object>",
                "  mesh\t<string> -required-",
            ],
        ),
        (
            "meshtimeouts.spec",
            &[
                "FIELD:    spec <Object>\n",
                "  targetRef\t<Object>",
                "  to\t<[]Object>",
            ],
        ),
        (
            "MeshTimeout.spec.to",
            &[
                "FIELD:    spec.to <[]Object>",
                "DESCRIPTION:\n    Timeouts for traffic the proxies send",
                "  targetRef\t<Object> -required-",
                "  default\t<Object> -required-",
            ],
        ),
        (
            "MeshTimeout.spec.to.default.http.requestTimeout",
            &[
                "FIELD:    spec.to.default.http.requestTimeout <string>",
                "How long a whole request may take",
            ],
        ),
        (
            "MeshTrafficPermission.spec.from.default.action",
            &[
                "<string> -required-",
                "VALUES:",
                "    Allow\tLet the traffic through.",
                "    AllowWithShadowDeny",
            ],
        ),
        (
            "Mesh.spec.certificateRenewAt",
            &["<number|string>", "The point in a certificate's lifetime"],
        ),
        ("Mesh", &["SCOPE:    global"]),
        (
            "Mesh.spec.mtls.backend",
            &[
                "<Object>",
                "  type\t<string> -required-",
                "  certPem\t<string>",
                "  caValidity\t<string>",
            ],
        ),
        ("Mesh.spec.mtls.backend.certPem", &["PEM-encoded"]),
        ("MeshTimeout.spec.targetRef.tags", &["<map[string]string>"]),
        (
            "MeshLoadBalancingStrategy.spec.to.default.localityAwareness.crossZone.failover.to.type",
            &["VALUES:", "    AnyExcept"],
        ),
        // What the proxies enforce, from the registry.
        ("MeshTrace", &["ENFORCED: yes\n"]),
        ("MeshAccessLog", &["ENFORCED: yes\n"]),
        ("MeshMetric", &["ENFORCED: yes"]),
        ("MeshMetric.spec.default.backends", &["ENFORCED: yes"]),
        ("MeshTrafficPermission", &["ENFORCED: yes\n"]),
        (
            "MeshTrafficPermission.spec.targetRef.namespace",
            &["ENFORCED: yes\n"],
        ),
        (
            "MeshTrafficPermission.spec.targetRef.kind",
            &["ENFORCED: yes\n"],
        ),
        ("MeshTCPRoute", &["ENFORCED: yes\n"]),
        ("MeshTimeout", &["ENFORCED: yes\n"]),
        (
            "MeshTimeout.spec.to.default.http.requestHeadersTimeout",
            &["ENFORCED: yes\n"],
        ),
        (
            "MeshTimeout.spec.to.default.http.requestTimeout",
            &["ENFORCED: yes\n"],
        ),
        (
            "MeshLoadBalancingStrategy.spec.to.default.loadBalancer",
            &[
                "  ringHash\t<Object>\n",
                "  peakEwma\t<Object>\n",
                "ENFORCED: yes\n",
            ],
        ),
        (
            "MeshLoadBalancingStrategy.spec.to.default.localityAwareness",
            &["ENFORCED: yes\n", "  localZone\t<Object>\n"],
        ),
    ];
    for (query, wants) in table {
        let text = explain(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        for want in *wants {
            assert!(text.contains(want), "{query}: {want:?} not in\n{text}");
        }
    }
}

/// Types that are not policies have nothing to enforce, and say nothing about it.
#[test]
fn explain_says_nothing_of_enforcement_for_other_types() {
    for query in ["Mesh", "Zone.spec", "Dataplane", "MeshTimeout.name"] {
        let text = explain(query).unwrap();
        assert!(!text.contains("ENFORCED"), "{query}:\n{text}");
    }
}

#[test]
fn explain_errors() {
    assert!(matches!(
        explain("Nope.spec"),
        Err(ExplainError::UnknownKind { .. })
    ));
    assert!(matches!(explain(""), Err(ExplainError::UnknownKind { .. })));
    let err = explain("MeshTimeout.spec.too").unwrap_err();
    assert_eq!(
        err.to_string(),
        "MeshTimeout.spec has no field \"too\"; its fields are: from, rules, targetRef, to"
    );
    let err = explain("MeshTimeout.spec.to.default.connectTimeout.x").unwrap_err();
    assert!(err.to_string().contains("it has no fields"), "{err}");
}
