//! JSON Schema for every resource type (generated from the Rust types by schemars, so
//! the schema and the parser cannot drift apart) and `explain`, which renders one
//! field's documentation the way `kubectl explain` does.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::enforcement::{Enforcement, Unenforced, unenforced_at};
use crate::registry::{Role, Scope, TypeInfo, type_by_plural, type_info, types};

/// The JSON Schema (draft 2020-12) of a whole resource of type `kind`: the envelope
/// (`type`, `mesh`, `name`, `labels`, server-set fields) with the type's `spec`. `None`
/// for an unknown kind.
///
/// ```
/// let schema = causeway_api::schema_for_kind("MeshTimeout").unwrap();
/// assert_eq!(schema["properties"]["type"]["const"], "MeshTimeout");
/// assert!(schema["required"].as_array().unwrap().contains(&"mesh".into()));
/// ```
pub fn schema_for_kind(kind: &str) -> Option<Value> {
    type_info(kind).map(resource_schema)
}

fn resource_schema(info: &TypeInfo) -> Value {
    let mut spec = (info.spec_schema)();
    let defs = spec
        .as_object_mut()
        .and_then(|s| {
            s.remove("$schema");
            s.remove("title");
            s.remove("$defs")
        })
        .unwrap_or_else(|| Value::Object(Map::new()));
    let description = spec
        .get("description")
        .and_then(Value::as_str)
        .map(|d| d.split("\n\n").next().unwrap_or(d).to_owned())
        .unwrap_or_default();
    let mut properties = json!({
        "type": {"const": info.kind, "description": format!("The resource type: `{}`.", info.kind)},
        "name": {
            "type": "string",
            "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
            "description": "Its name, a DNS label, unique per type and mesh."
        },
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Free-form labels, with Kubernetes label syntax."
        },
        "spec": spec,
        "version": {"type": "integer", "minimum": 0, "readOnly": true,
                    "description": "Server-set: the Raft index of the last write. Ignored on input."},
        "creationTime": {"type": "string", "format": "date-time", "readOnly": true,
                         "description": "Server-set: when it was created (RFC 3339)."},
        "modificationTime": {"type": "string", "format": "date-time", "readOnly": true,
                             "description": "Server-set: when it was last changed (RFC 3339)."},
        "origin": {"type": "string", "readOnly": true,
                   "description": "Server-set: where it was written, `global` or the name of a zone."}
    });
    let mut required = vec!["type", "name"];
    if info.scope == Scope::Mesh {
        properties["mesh"] = json!({
            "type": "string",
            "description": "The mesh it belongs to (a DNS label)."
        });
        required.push("mesh");
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": info.kind,
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
        "$defs": defs,
    })
}

/// Why [`explain`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The first segment is not a known type (or plural).
    #[error("unknown type {kind:?}; known types: {}", known.join(", "))]
    UnknownKind {
        /// What was asked for.
        kind: String,
        /// The known types.
        known: Vec<String>,
    },
    /// A segment names no field of the value before it.
    #[error("{path} has no field {field:?}{}", fields_hint(known))]
    UnknownField {
        /// The path up to the unknown field, e.g. `MeshTimeout.spec`.
        path: String,
        /// The unknown field.
        field: String,
        /// The fields that exist there.
        known: Vec<String>,
    },
}

fn fields_hint(known: &[String]) -> String {
    if known.is_empty() {
        "; it has no fields".to_owned()
    } else {
        format!("; its fields are: {}", known.join(", "))
    }
}

/// Renders the documentation of a type or one of its fields, like `kubectl explain`:
/// `KIND.path.to.field` (the kind or its plural, any case; list fields are walked into
/// without an index). Gives the field's type, description, allowed values and, for
/// objects, its fields.
///
/// ```
/// let text = causeway_api::explain("MeshTimeout.spec.to").unwrap();
/// assert!(text.contains("FIELD:    spec.to <[]Object>"));
/// assert!(text.contains("targetRef\t<Object> -required-"));
/// assert!(causeway_api::explain("MeshTimeout.spec.nope").is_err());
/// ```
pub fn explain(kind_and_path: &str) -> Result<String, ExplainError> {
    let mut segments = kind_and_path.trim().split('.').filter(|s| !s.is_empty());
    let kind = segments.next().unwrap_or_default();
    let info = types()
        .iter()
        .find(|t| t.kind.eq_ignore_ascii_case(kind))
        .or_else(|| type_by_plural(&kind.to_ascii_lowercase()))
        .ok_or_else(|| ExplainError::UnknownKind {
            kind: kind.to_owned(),
            known: types().iter().map(|t| t.kind.to_owned()).collect(),
        })?;
    let mut root = resource_schema(info);
    let defs = root.get("$defs").cloned().unwrap_or(Value::Null);
    merge_unions(&mut root, &defs);
    let mut node = &root;
    let mut path: Vec<&str> = Vec::new();
    let mut required = true;
    for segment in segments {
        let object = object_of(&root, node);
        let properties = object.get("properties").and_then(Value::as_object);
        match properties.and_then(|p| p.get(segment)) {
            Some(child) => {
                required = is_required(object, segment);
                node = child;
                path.push(segment);
            }
            None => {
                let mut prefix = info.kind.to_owned();
                for p in &path {
                    prefix.push('.');
                    prefix.push_str(p);
                }
                return Err(ExplainError::UnknownField {
                    path: prefix,
                    field: segment.to_owned(),
                    known: properties
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default(),
                });
            }
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "KIND:     {}", info.kind);
    if path.is_empty() {
        let _ = writeln!(
            out,
            "SCOPE:    {}",
            match info.scope {
                Scope::Global => "global",
                Scope::Mesh => "mesh",
            }
        );
    } else {
        let marker = if required { " -required-" } else { "" };
        let _ = writeln!(
            out,
            "FIELD:    {} <{}>{marker}",
            path.join("."),
            type_label(&root, node)
        );
    }
    push_enforcement(&mut out, info, &path);
    out.push('\n');
    if let Some(description) = description_of(&root, node) {
        out.push_str("DESCRIPTION:\n");
        push_indented(&mut out, &description, 4);
        out.push('\n');
    }
    let values = enum_values(&root, node);
    if !values.is_empty() {
        out.push_str("VALUES:\n");
        for (value, doc) in values {
            match doc {
                Some(doc) => {
                    let _ = writeln!(out, "    {value}\t{}", first_sentence(&doc));
                }
                None => {
                    let _ = writeln!(out, "    {value}");
                }
            }
        }
        out.push('\n');
    }
    let object = object_of(&root, node);
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        out.push_str("FIELDS:\n");
        for (name, child) in properties {
            let marker = if is_required(object, name) {
                " -required-"
            } else {
                ""
            };
            let mut child_path = path.clone();
            child_path.push(name.as_str());
            let enforced = match unenforced_at(info.kind, &child_path, true).as_slice() {
                [] => "",
                [only] if !only.path.contains('=') && only_at(only, &child_path) => {
                    " -not enforced yet-"
                }
                _ => " -partly enforced-",
            };
            let _ = writeln!(
                out,
                "  {name}\t<{}>{marker}{enforced}",
                type_label(&root, child)
            );
            if let Some(description) = description_of(&root, child) {
                push_indented(&mut out, &first_paragraph(&description), 4);
            }
            out.push('\n');
        }
    }
    Ok(out.trim_end().to_owned() + "\n")
}

/// The `ENFORCED:` line of a policy (and of a field in one): whether the proxies act on
/// it, and what of it they do not enforce yet.
fn push_enforcement(out: &mut String, info: &TypeInfo, path: &[&str]) {
    let Role::Policy(enforcement) = info.role else {
        return;
    };
    if !path.is_empty() && path[0] != "spec" {
        return;
    }
    match enforcement {
        Enforcement::NotYet => {
            let _ = writeln!(
                out,
                "ENFORCED: no: the proxies do not enforce {} yet (it is stored and synced to every zone, with no effect on traffic)",
                info.kind
            );
        }
        Enforcement::Full | Enforcement::Partial(_) => {
            // The kind's summary names its own gaps; a field also the common ones
            // (`namespace`, ...), which every kind shares.
            let marks = if path.len() <= 1 {
                unenforced_at(info.kind, &["spec"], false)
            } else {
                unenforced_at(info.kind, path, true)
            };
            if marks.is_empty() {
                out.push_str("ENFORCED: yes\n");
                return;
            }
            out.push_str("ENFORCED: partly; not yet:\n");
            for m in marks {
                let _ = writeln!(out, "    spec.{}: {}", m.path, m.reason);
            }
        }
    }
}

/// Whether a mark names exactly `path` (`spec.to.default.x` for `to[].default.x`).
fn only_at(mark: &Unenforced, path: &[&str]) -> bool {
    let keys: Vec<&str> = mark
        .path
        .split('.')
        .map(|k| k.strip_suffix("[]").unwrap_or(k))
        .collect();
    path.len() == keys.len() + 1 && path[1..] == keys[..]
}

/// Replaces each `oneOf` of objects (a union tagged by `type`, like a CA backend) with
/// one object holding every variant's fields, so a path can walk into any of them.
fn merge_unions(node: &mut Value, defs: &Value) {
    match node {
        Value::Object(map) => {
            let union = map
                .get("oneOf")
                .and_then(Value::as_array)
                .filter(|variants| {
                    variants
                        .iter()
                        .all(|v| v.get("const").is_none() && v.get("enum").is_none())
                });
            if let Some(variants) = union {
                let mut properties = Map::new();
                let mut required: Option<Vec<Value>> = None;
                for variant in variants {
                    let referenced = variant
                        .get("$ref")
                        .and_then(Value::as_str)
                        .and_then(|r| r.strip_prefix("#/$defs/"))
                        .and_then(|name| defs.get(name));
                    for part in [Some(variant), referenced].into_iter().flatten() {
                        if let Some(Value::Object(props)) = part.get("properties") {
                            for (k, v) in props {
                                properties.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                    let names: Vec<Value> = [Some(variant), referenced]
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("required").and_then(Value::as_array))
                        .flatten()
                        .cloned()
                        .collect();
                    required = Some(match required {
                        None => names,
                        Some(all) => all.into_iter().filter(|n| names.contains(n)).collect(),
                    });
                }
                map.remove("oneOf");
                map.insert("type".to_owned(), json!("object"));
                map.insert("properties".to_owned(), Value::Object(properties));
                map.insert(
                    "required".to_owned(),
                    Value::Array(required.unwrap_or_default()),
                );
            }
            for value in map.values_mut() {
                merge_unions(value, defs);
            }
        }
        Value::Array(items) => {
            for item in items {
                merge_unions(item, defs);
            }
        }
        _ => {}
    }
}

/// Follows `$ref`s and `Option`'s `anyOf [X, null]` to the schema that says what a
/// value is.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..32 {
        if let Some(name) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
        {
            node = def;
            continue;
        }
        if let Some(variants) = node
            .get("anyOf")
            .or_else(|| node.get("oneOf"))
            .and_then(Value::as_array)
        {
            let non_null: Vec<&Value> = variants
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if non_null.len() == 1 && non_null.len() < variants.len() {
                node = non_null[0];
                continue;
            }
        }
        break;
    }
    node
}

/// The object schema a path walks into from `node`: through refs, options and lists.
fn object_of<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = resolve(root, node);
    for _ in 0..8 {
        match node.get("items") {
            Some(items) if types_of(node).contains(&"array") => node = resolve(root, items),
            _ => break,
        }
    }
    node
}

fn types_of(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    }
}

fn is_required(object: &Value, field: &str) -> bool {
    object
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|f| f == field))
}

/// `string`, `integer`, `Object`, `[]Object`, `map[string]string`, `number|string`, ...
fn type_label(root: &Value, node: &Value) -> String {
    let node = resolve(root, node);
    if let Some(variants) = node.get("anyOf").and_then(Value::as_array) {
        let labels: Vec<String> = variants.iter().map(|v| type_label(root, v)).collect();
        return labels.join("|");
    }
    if node.get("oneOf").is_some() || node.get("enum").is_some() || node.get("const").is_some() {
        return "string".to_owned();
    }
    let types = types_of(node);
    match types.first().copied() {
        Some("array") => format!(
            "[]{}",
            node.get("items")
                .map(|i| type_label(root, i))
                .unwrap_or_else(|| "any".to_owned())
        ),
        Some("object") => match node.get("additionalProperties") {
            Some(v @ Value::Object(_)) if node.get("properties").is_none() => {
                format!("map[string]{}", type_label(root, v))
            }
            _ => "Object".to_owned(),
        },
        Some(t) => t.to_owned(),
        None if node.get("properties").is_some() => "Object".to_owned(),
        None => "any".to_owned(),
    }
}

/// The field's own description, else its type's.
fn description_of(root: &Value, node: &Value) -> Option<String> {
    node.get("description")
        .or_else(|| resolve(root, node).get("description"))
        .or_else(|| object_of(root, node).get("description"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The allowed values of an enum, with their docs.
fn enum_values(root: &Value, node: &Value) -> Vec<(String, Option<String>)> {
    let node = object_of(root, node);
    let show = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| (show(v), None)).collect();
    }
    if let Some(variants) = node.get("oneOf").and_then(Value::as_array) {
        return variants
            .iter()
            .flat_map(|v| {
                let doc = v
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let values: Vec<Value> = match (v.get("const"), v.get("enum")) {
                    (Some(c), _) => vec![c.clone()],
                    (None, Some(Value::Array(e))) => e.clone(),
                    _ => vec![],
                };
                values
                    .into_iter()
                    .map(move |value| (show(&value), doc.clone()))
            })
            .collect();
    }
    Vec::new()
}

fn first_paragraph(text: &str) -> String {
    text.split("\n\n").next().unwrap_or(text).to_owned()
}

fn first_sentence(text: &str) -> String {
    first_paragraph(text).replace('\n', " ")
}

fn push_indented(out: &mut String, text: &str, indent: usize) {
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{:indent$}{line}", "");
        }
    }
}

#[cfg(test)]
mod tests;
