//! From the JSON Schema the API's types generate (draft 2020-12, as schemars writes it)
//! to the *structural* OpenAPI v3 schema a CustomResourceDefinition must carry.
//!
//! Kubernetes refuses a CRD schema with `$ref`, `const`, `uniqueItems`, `default`s it
//! cannot check, or alternatives (`oneOf`/`anyOf`) that declare types, and it needs a type
//! on every node. So references are inlined, a `const` becomes a one-value `enum`, a
//! `null` alternative becomes `nullable`, and alternatives merge into one node: objects
//! into the union of their properties, strings into the union of their values, a string
//! or an integer into `x-kubernetes-int-or-string`, anything else into a node that keeps
//! whatever it is given. The result is looser than the source schema on purpose: the API
//! server only screens and prunes; the API's own rules (the `validate` the REST API
//! uses) are the validating webhook's ([`crate::admission`]).

use serde_json::{Map, Value, json};

/// Formats the Kubernetes API server knows; schemars' others (`uint64`, `uint16`, ...)
/// are dropped (their bounds stay as `minimum`/`maximum`).
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "duration",
    "uuid",
    "ipv4",
    "ipv6",
    "cidr",
    "hostname",
    "uri",
    "email",
    "password",
];

/// Keywords carried over unchanged.
const KEPT: &[&str] = &[
    "description",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
];

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";
const INT_OR_STRING: &str = "x-kubernetes-int-or-string";

/// The structural form of `schema`, a root schema with its `$defs` (the shape
/// `TypeInfo::spec_schema` returns).
///
/// ```
/// let schema = serde_json::json!({
///     "type": "object",
///     "properties": {"mode": {"$ref": "#/$defs/Mode"}},
///     "$defs": {"Mode": {"oneOf": [{"const": "a"}, {"const": "b"}]}},
/// });
/// let s = causeway_k8s::structural::structural(&schema);
/// assert_eq!(s["properties"]["mode"], serde_json::json!({"type": "string", "enum": ["a", "b"]}));
/// ```
pub fn structural(schema: &Value) -> Value {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Value::Object(convert(schema, &defs, &mut Vec::new()))
}

fn preserve() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(PRESERVE.into(), Value::Bool(true));
    m
}

fn convert(node: &Value, defs: &Map<String, Value>, stack: &mut Vec<String>) -> Map<String, Value> {
    let Some(obj) = node.as_object() else {
        // `true` (anything) or `false` (nothing, never generated for a field).
        return preserve();
    };
    let mut out = Map::new();
    let mut nullable = false;

    // A reference is inlined; keywords beside it (a field's own description) win.
    if let Some(name) = obj
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        if stack.iter().any(|s| s == name) {
            // A recursive type: a CRD schema cannot say it, so its inner levels keep
            // whatever they are given (the zone validates them).
            out = preserve();
        } else if let Some(def) = defs.get(name) {
            stack.push(name.to_owned());
            out = convert(def, defs, stack);
            stack.pop();
        }
        nullable |= out.remove("nullable").is_some();
    }

    // Alternatives: `null` makes the node nullable; the rest merge into one node.
    let mut alternatives = Vec::new();
    for key in ["anyOf", "oneOf"] {
        for branch in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
            if branch.get("type").and_then(Value::as_str) == Some("null") {
                nullable = true;
                continue;
            }
            let mut b = convert(branch, defs, stack);
            nullable |= b.remove("nullable").is_some();
            alternatives.push(b);
        }
    }
    if !alternatives.is_empty() {
        overlay(&mut out, merge_alternatives(alternatives));
    }
    for part in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut p = convert(part, defs, stack);
        nullable |= p.remove("nullable").is_some();
        overlay(&mut out, p);
    }

    // The node's own keywords.
    let mut own = Map::new();
    let mut types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"null") {
        nullable = true;
        types.retain(|t| *t != "null");
    }
    let mut values: Option<Vec<Value>> = obj.get("enum").and_then(Value::as_array).cloned();
    if let Some(c) = obj.get("const") {
        values = Some(vec![c.clone()]);
    }
    if let Some(vs) = &mut values {
        if vs.iter().any(Value::is_null) {
            nullable = true;
            vs.retain(|v| !v.is_null());
        }
        if types.is_empty() {
            types.extend(vs.first().map(type_of_value));
        }
        own.insert("enum".into(), Value::Array(vs.clone()));
    }
    match types.as_slice() {
        [] => {}
        [t] => {
            own.insert("type".into(), Value::String((*t).to_owned()));
        }
        several => {
            let branches = several
                .iter()
                .map(|t| {
                    let mut m = Map::new();
                    m.insert("type".into(), Value::String((*t).to_owned()));
                    m
                })
                .collect();
            own.extend(merge_alternatives(branches));
        }
    }
    for key in KEPT {
        if let Some(v) = obj.get(*key) {
            own.insert((*key).into(), v.clone());
        }
    }
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(n) = obj.get(exclusive).filter(|v| v.is_number()) {
            own.insert(bound.into(), n.clone());
            own.insert(exclusive.into(), Value::Bool(true));
        }
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str)
        && KNOWN_FORMATS.contains(&f)
    {
        own.insert("format".into(), Value::String(f.to_owned()));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> = props
            .iter()
            .map(|(k, v)| (k.clone(), Value::Object(convert(v, defs, stack))))
            .collect();
        own.insert("properties".into(), Value::Object(converted));
    }
    if let Some(req) = obj.get("required").and_then(Value::as_array)
        && !req.is_empty()
    {
        own.insert("required".into(), Value::Array(req.clone()));
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(true)) => {
            own.insert(PRESERVE.into(), Value::Bool(true));
        }
        Some(schema @ Value::Object(_)) => {
            own.insert(
                "additionalProperties".into(),
                Value::Object(convert(schema, defs, stack)),
            );
        }
        // `false` is the default of a structural schema (unknown fields are pruned).
        _ => {}
    }
    if let Some(items) = obj.get("items") {
        own.insert("items".into(), Value::Object(convert(items, defs, stack)));
    } else if obj.contains_key("prefixItems") {
        // A tuple: a CRD can only say "an array".
        own.insert("items".into(), Value::Object(preserve()));
    }
    overlay(&mut out, own);
    finish(&mut out);
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    out
}

/// Puts `over`'s keywords on `base`; a `description` from `over` (the field's own) wins.
fn overlay(base: &mut Map<String, Value>, over: Map<String, Value>) {
    for (k, v) in over {
        match (k.as_str(), base.get_mut(&k)) {
            ("properties", Some(Value::Object(existing))) => {
                if let Value::Object(more) = v {
                    existing.extend(more);
                }
            }
            _ => {
                base.insert(k, v);
            }
        }
    }
}

/// Gives a node a type when it has none, and keeps the structural rules between
/// keywords: an untyped node keeps whatever it is given, an object without properties
/// keeps its fields (instead of pruning them all), properties and additionalProperties
/// never both.
fn finish(node: &mut Map<String, Value>) {
    if node.contains_key(PRESERVE) && node.get("type").is_none() && !node.contains_key("properties")
    {
        return;
    }
    if node.contains_key(INT_OR_STRING) {
        node.remove("type");
        return;
    }
    if !node.contains_key("type") {
        if node.contains_key("properties") || node.contains_key("additionalProperties") {
            node.insert("type".into(), json!("object"));
        } else if node.contains_key("items") {
            node.insert("type".into(), json!("array"));
        } else {
            node.insert(PRESERVE.into(), Value::Bool(true));
            return;
        }
    }
    match node.get("type").and_then(Value::as_str) {
        Some("object") => {
            if node.contains_key("properties") {
                node.remove("additionalProperties");
            } else if !node.contains_key("additionalProperties") {
                node.insert(PRESERVE.into(), Value::Bool(true));
            }
        }
        Some("array") if !node.contains_key("items") => {
            node.insert("items".into(), Value::Object(preserve()));
        }
        _ => {}
    }
}

fn type_of_value(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Array(_) => "array",
        _ => "object",
    }
}

/// One node for a value that may take any of `branches`' shapes.
fn merge_alternatives(mut branches: Vec<Map<String, Value>>) -> Map<String, Value> {
    if branches.len() == 1 {
        return branches.pop().unwrap_or_default();
    }
    let kinds: Vec<Option<&str>> = branches
        .iter()
        .map(|b| {
            if b.contains_key(INT_OR_STRING) {
                Some("int-or-string")
            } else {
                b.get("type").and_then(Value::as_str)
            }
        })
        .collect();
    let same = kinds.windows(2).all(|w| w[0] == w[1]);
    let mut merged = Map::new();
    match (same, kinds[0]) {
        (true, Some("object")) => {
            let mut properties: Map<String, Value> = Map::new();
            let mut required: Option<Vec<Value>> = None;
            let mut keeps_unknown = false;
            for b in &branches {
                keeps_unknown |= b.contains_key(PRESERVE) && !b.contains_key("properties");
                for (name, prop) in b
                    .get("properties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let prop = prop.as_object().cloned().unwrap_or_default();
                    let joined = match properties.remove(name) {
                        Some(Value::Object(existing)) if existing != prop => {
                            merge_alternatives(vec![existing, prop])
                        }
                        _ => prop,
                    };
                    properties.insert(name.clone(), Value::Object(joined));
                }
                let mine = b
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                required = Some(match required {
                    None => mine,
                    Some(r) => r.into_iter().filter(|x| mine.contains(x)).collect(),
                });
            }
            merged.insert("type".into(), json!("object"));
            if keeps_unknown {
                merged.insert(PRESERVE.into(), Value::Bool(true));
            }
            if !properties.is_empty() {
                merged.insert("properties".into(), Value::Object(properties));
            }
            if let Some(r) = required.filter(|r| !r.is_empty()) {
                merged.insert("required".into(), Value::Array(r));
            }
        }
        (true, Some("string")) => {
            merged.insert("type".into(), json!("string"));
            // Values of the branches only when every branch lists its values.
            let all: Option<Vec<Value>> = branches
                .iter()
                .map(|b| b.get("enum").and_then(Value::as_array).cloned())
                .collect::<Option<Vec<_>>>()
                .map(|lists| lists.into_iter().flatten().collect());
            if let Some(values) = all {
                let mut unique: Vec<Value> = Vec::with_capacity(values.len());
                for v in values {
                    if !unique.contains(&v) {
                        unique.push(v);
                    }
                }
                merged.insert("enum".into(), Value::Array(unique));
            }
        }
        (true, Some("array")) => {
            let items = branches
                .iter()
                .map(|b| {
                    b.get("items")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_else(preserve)
                })
                .collect();
            merged.insert("type".into(), json!("array"));
            merged.insert("items".into(), Value::Object(merge_alternatives(items)));
        }
        (true, Some(scalar)) => {
            merged.insert("type".into(), Value::String(scalar.to_owned()));
        }
        _ if kinds
            .iter()
            .all(|k| matches!(k, Some("string" | "integer" | "int-or-string"))) =>
        {
            merged.insert(INT_OR_STRING.into(), Value::Bool(true));
        }
        _ if kinds
            .iter()
            .all(|k| matches!(k, Some("number" | "integer"))) =>
        {
            merged.insert("type".into(), json!("number"));
        }
        _ => return preserve(),
    }
    merged
}

#[cfg(test)]
mod tests;
