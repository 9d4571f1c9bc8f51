//! Shape errors everywhere in a document at once. The path-tracking decoder stops at the
//! first field that does not fit; this walks the value against the type's generated
//! JSON Schema to find the others too (unknown fields, missing required fields, wrong
//! types, unknown enum values), so one response lists every problem.
//!
//! It checks only what the schema states for certain; patterns (durations) and the
//! variants of tagged unions are left to the decoder, whose error always comes first.

use serde_json::Value;

use crate::spec::{at, idx};
use crate::validation::FieldError;

/// The shape errors of `value` against `schema` (a root schema with `$defs`), paths
/// starting at `path`.
pub(crate) fn shape_errors(schema: &Value, value: &Value, path: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    walk(schema, schema, value, path, &mut out, 0);
    out
}

fn follow<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| root.get("$defs")?.get(name))
        {
            Some(def) => node = def,
            None => break,
        }
    }
    node
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "floating point number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "sequence",
        Value::Object(_) => "map",
    }
}

fn fits(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn walk(
    root: &Value,
    node: &Value,
    value: &Value,
    path: &str,
    out: &mut Vec<FieldError>,
    depth: usize,
) {
    if depth > 64 {
        return;
    }
    let node = follow(root, node);
    if let Some(variants) = node
        .get("anyOf")
        .or_else(|| node.get("oneOf"))
        .and_then(Value::as_array)
    {
        let variants: Vec<&Value> = variants.iter().map(|v| follow(root, v)).collect();
        let is_null = |v: &&Value| v.get("type").and_then(Value::as_str) == Some("null");
        if value.is_null() && variants.iter().any(is_null) {
            return;
        }
        let rest: Vec<&Value> = variants.into_iter().filter(|v| !is_null(v)).collect();
        let consts: Vec<&str> = rest
            .iter()
            .filter_map(|v| v.get("const").and_then(Value::as_str))
            .collect();
        if !rest.is_empty() && consts.len() == rest.len() {
            check_enum(value, &consts, path, out);
        } else if rest.len() == 1 {
            walk(root, rest[0], value, path, out, depth + 1);
        }
        return;
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        if names.len() == values.len() {
            check_enum(value, &names, path, out);
        }
        return;
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return,
    };
    // A duration (a string with a pattern) may also be a bare 0, as YAML reads `0`.
    let zero_duration = node.get("pattern").is_some() && value.as_u64() == Some(0);
    if !zero_duration && !types.iter().any(|t| fits(value, t)) {
        let expected: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        out.push(FieldError::new(
            path,
            format!(
                "invalid type: {}, expected {}",
                kind_of(value),
                expected.join(" or ")
            ),
        ));
        return;
    }
    match value {
        Value::Number(n) => {
            let (min, max) = (
                node.get("minimum").and_then(Value::as_f64),
                node.get("maximum").and_then(Value::as_f64),
            );
            if let Some(v) = n.as_f64()
                && (min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m))
            {
                out.push(FieldError::new(
                    path,
                    format!(
                        "invalid value: {n}, expected a number from {} to {}",
                        min.map_or("-inf".to_owned(), |m| m.to_string()),
                        max.map_or("inf".to_owned(), |m| m.to_string())
                    ),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = node.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(root, item_schema, item, &idx(path, i), out, depth + 1);
                }
            }
        }
        Value::Object(map) => {
            let properties = node.get("properties").and_then(Value::as_object);
            let additional = node.get("additionalProperties");
            for (key, child) in map {
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => {
                        walk(root, child_schema, child, &at(path, key), out, depth + 1)
                    }
                    None => match additional {
                        Some(Value::Bool(false)) => {
                            let expected: Vec<&str> = properties
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            out.push(FieldError::new(
                                at(path, key),
                                if expected.is_empty() {
                                    format!("unknown field `{key}`: no fields are allowed here")
                                } else {
                                    format!(
                                        "unknown field `{key}`, expected one of: {}",
                                        expected.join(", ")
                                    )
                                },
                            ));
                        }
                        Some(s @ Value::Object(_)) => {
                            walk(root, s, child, &at(path, key), out, depth + 1)
                        }
                        _ => {}
                    },
                }
            }
            for required in node
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(field) = required.as_str()
                    && !map.contains_key(field)
                {
                    out.push(FieldError::new(at(path, field), "is required"));
                }
            }
        }
        _ => {}
    }
}

fn check_enum(value: &Value, names: &[&str], path: &str, out: &mut Vec<FieldError>) {
    let expected = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match value.as_str() {
        Some(s) if names.contains(&s) => {}
        Some(s) => out.push(FieldError::new(
            path,
            format!("unknown variant `{s}`, expected one of {expected}"),
        )),
        None => out.push(FieldError::new(
            path,
            format!(
                "invalid type: {}, expected one of {expected}",
                kind_of(value)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::mesh_timeout::MeshTimeoutSpec;
    use crate::spec::spec_schema_of;

    #[test]
    fn finds_every_shape_error() {
        let schema = spec_schema_of::<MeshTimeoutSpec>();
        let spec = json!({"targetRef": {"kind": "Mesh", "nmae": "x"}, "to": [
            {"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": 0, "connectTimeout": 5, "http": []}},
            {"default": {}}]});
        let got: Vec<(String, String)> = shape_errors(&schema, &spec, "spec")
            .into_iter()
            .map(|e| (e.field, e.reason))
            .collect();
        let want = [
            (
                "spec.targetRef.nmae",
                "unknown field `nmae`, expected one of: kind, labels, name, namespace, proxyTypes, sectionName, tags",
            ),
            (
                "spec.to[0].default.connectTimeout",
                "invalid type: integer, expected string",
            ),
            (
                "spec.to[0].default.http",
                "invalid type: sequence, expected object",
            ),
            ("spec.to[1].targetRef", "is required"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(f, r)| (f.as_str(), r.as_str())).collect();
        assert_eq!(got, want);
        assert_eq!(shape_errors(&schema, &json!({"to": []}), "spec"), vec![]);
    }
}
