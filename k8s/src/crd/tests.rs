use std::path::PathBuf;

use causeway_api::{Resource, type_info, validate};
use serde_json::{Value, json};

use super::*;

/// The keywords a CRD schema node may carry (apiextensions/v1 JSONSchemaProps, less
/// what a structural schema forbids: `$ref`, `definitions`, the junctors we never emit).
const ALLOWED: &[&str] = &[
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
];

/// Checks Kubernetes' rules for a structural schema on every node under `node`.
fn assert_structural(node: &Value, path: &str) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: a schema node must be an object, is {node}"));
    for key in obj.keys() {
        assert!(
            ALLOWED.contains(&key.as_str()),
            "{path}: keyword {key:?} is not allowed"
        );
    }
    let ty = obj.get("type").and_then(Value::as_str);
    let open = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    assert!(
        matches!(
            ty,
            Some("object" | "array" | "string" | "integer" | "number" | "boolean")
        ) || (ty.is_none() && (open || int_or_string)),
        "{path}: needs a type (has {ty:?})"
    );
    assert!(
        !(int_or_string && ty.is_some()),
        "{path}: int-or-string with a type"
    );
    if let Some(props) = obj.get("properties") {
        assert_eq!(ty, Some("object"), "{path}: properties on a non-object");
        assert!(
            !obj.contains_key("additionalProperties"),
            "{path}: properties and additionalProperties together"
        );
        for (name, p) in props.as_object().expect("properties is a map") {
            assert_structural(p, &format!("{path}.{name}"));
        }
    }
    if let Some(ap) = obj.get("additionalProperties") {
        assert!(
            ap.is_object(),
            "{path}: additionalProperties must be a schema"
        );
        assert_structural(ap, &format!("{path}.*"));
    }
    if ty == Some("array") {
        let items = obj
            .get("items")
            .unwrap_or_else(|| panic!("{path}: an array without items"));
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(values) = obj.get("enum") {
        assert!(
            values
                .as_array()
                .is_some_and(|v| !v.is_empty() && !v.contains(&Value::Null)),
            "{path}: enum must list values (null is `nullable`)"
        );
    }
}

#[test]
fn every_type_has_a_structural_crd() {
    for info in types() {
        let schema = object_schema(info);
        assert_structural(
            &schema["properties"]["spec"],
            &format!("{}.spec", info.kind),
        );
        let crd = definition(info);
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.plural, info.plural);
        assert_eq!(crd.spec.names.kind, info.kind);
        let scope = if info.scope == Scope::Mesh {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(crd.spec.scope, scope, "{}", info.kind);
    }
    assert_eq!(definitions().len(), types().len());
}

/// Where two JSON values first differ, for a readable failure.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, &format!("{path}.{k}")),
                (p, q) => Some(format!("{path}.{k}: {p:?} vs {q:?}")),
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        // JSONSchemaProps keeps bounds as f64: 65535 comes back as 65535.0.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn the_typed_crd_keeps_every_keyword_of_the_schema() {
    // k8s-openapi ignores keys it does not know; a keyword lost on the way would leave
    // a CRD that validates less than it says. So the typed CRD's schema must equal ours.
    for info in types() {
        let crd = serde_json::to_value(definition(info)).expect("serializes");
        let typed = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let ours = object_schema(info);
        assert_eq!(
            None,
            first_difference(typed, &ours, info.kind),
            "typed vs ours"
        );
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["kind"], "CustomResourceDefinition");
    }
}

/// The schema node a printer column's JSONPath leads to, under the object schema.
fn node_at<'a>(schema: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for segment in json_path.trim_start_matches('.').split('.') {
        let (field, indexed) = match segment.strip_suffix("[0]") {
            Some(f) => (f, true),
            None => (segment, false),
        };
        node = node.get("properties")?.get(field)?;
        if indexed {
            node = node.get("items")?;
        }
    }
    Some(node)
}

#[test]
fn printer_columns_show_fields_that_exist_with_their_types() {
    for info in types() {
        let schema = object_schema(info);
        let cols = columns(info);
        assert!(cols.len() >= 2, "{}: only {:?}", info.kind, cols);
        for c in cols {
            if c.json_path.starts_with(".metadata.") {
                continue;
            }
            let node = node_at(&schema, c.json_path)
                .unwrap_or_else(|| panic!("{}: column {} names no field", info.kind, c.json_path));
            let ty = node["type"].as_str();
            let expected = match c.kind {
                // An RFC 3339 time, which kubectl shows as an age.
                "date" => "string",
                k => k,
            };
            assert_eq!(ty, Some(expected), "{}: {}", info.kind, c.json_path);
        }
    }
    let mesh = columns(type_info("MeshRetry").expect("known"));
    assert_eq!(mesh[0].json_path, ".metadata.labels.causeway\\.io/mesh");
}

/// Whether `value` passes the API server's checks against a structural `schema` node:
/// types, enums, required fields, and no field it would prune. Returns the first
/// problem's path.
fn admits(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if value.is_null() {
        return if schema["nullable"] == json!(true) {
            Ok(())
        } else {
            Err(format!("{path}: null"))
        };
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return if value.is_string() || value.is_i64() || value.is_u64() {
            Ok(())
        } else {
            Err(format!("{path}: not an int or a string"))
        };
    }
    let open = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    let ok = match schema["type"].as_str() {
        None => open,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(_) => false,
    };
    if !ok {
        return Err(format!("{path}: {value} is not a {}", schema["type"]));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        return Err(format!("{path}: {value} is not one of {values:?}"));
    }
    if let Some(obj) = value.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap_or_default()) {
                return Err(format!("{path}: {r} is required"));
            }
        }
        for (k, v) in obj {
            let sub = format!("{path}.{k}");
            if let Some(p) = schema["properties"].get(k) {
                admits(p, v, &sub)?;
            } else if let Some(ap) = schema.get("additionalProperties") {
                admits(ap, v, &sub)?;
            } else if !open {
                return Err(format!(
                    "{sub}: unknown to the schema (the API server would prune it)"
                ));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            admits(items, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn yaml_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_resource_the_api_accepts_passes_its_crd_unpruned() {
    // The repository's examples (one per type) and Kuma's documented policy examples:
    // what the REST API accepts, the API server must take whole as an object.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = std::collections::BTreeSet::new();
    let mut count = 0;
    for dir in ["examples", "api/tests/kuma_examples"] {
        for file in yaml_files(root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("readable");
            let resources = Resource::from_yaml_documents(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for r in resources {
                if validate(&r).is_err() {
                    continue; // Refused by the API (what Causeway lacks): not for a CRD either.
                }
                let info = type_info(&r.kind).expect("a known kind");
                // The API server checks metadata itself; the spec is the CRD's.
                let schema = object_schema(info);
                admits(
                    &schema["properties"]["spec"],
                    &r.spec,
                    &format!("{}/{}.spec", r.kind, r.name),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                checked.insert(r.kind.clone());
                count += 1;
            }
        }
    }
    assert_eq!(
        checked.len(),
        types().len(),
        "a type without an example: {checked:?}"
    );
    assert!(count > 50, "only {count} resources");
}

#[test]
fn the_crds_refuse_what_the_api_refuses_by_shape() {
    // The API server screens before the zone validates: a wrong type or an unknown
    // enum value is refused at `kubectl apply`.
    let info = type_info("MeshTimeout").expect("known");
    let schema = object_schema(info);
    let schema = &schema["properties"]["spec"];
    let object = |spec: Value| spec;
    let good = json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                      "default": {"connectionTimeout": "2s"}}]});
    admits(schema, &object(good), "t").expect("accepted");
    let bad_kind = json!({"targetRef": {"kind": "Galaxy"}});
    assert!(admits(schema, &object(bad_kind), "t").is_err());
    let bad_type = json!({"to": "everything"});
    assert!(admits(schema, &object(bad_type), "t").is_err());
}

#[test]
fn the_yaml_stream_holds_every_crd() {
    let text = definitions_yaml();
    let docs: Vec<CustomResourceDefinition> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).expect("each document is a CRD"))
        .collect();
    assert_eq!(docs.len(), types().len());
    assert_eq!(docs, definitions());
}
