//! Terraform schemas generated from the resource model's JSON Schema, and the conversion
//! between a spec (JSON, camelCase) and its Terraform value (snake_case attributes and
//! nested blocks).
//!
//! The typed policy resources are not written by hand: each one is the JSON Schema that
//! `causeway_api` derives from its Rust spec type, walked once. So a field added to a
//! policy shows up in the provider with the next build, with its doc comment as the
//! attribute's description, and the provider cannot drift from the API.
//!
//! The mapping: objects become nested blocks (`target_ref { kind = "Mesh" }`), lists of
//! objects repeated blocks (`to { ... }`), scalars attributes, maps of scalars `map`
//! attributes, lists of scalars `list` attributes. A tagged union (Mesh's CA backend)
//! becomes one block with the fields of every variant. A value that mixes numbers and
//! strings (a percentage like `70` or `"70%"`) is a string attribute. Anything else (a
//! free-form object) is a string attribute holding JSON.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use crate::value::Value;

/// A Terraform type, as the protocol spells it (JSON: `"string"`, `["list","string"]`).
#[derive(Debug, Clone, PartialEq)]
pub enum TfType {
    String,
    Number,
    Bool,
    List(Box<TfType>),
    Map(Box<TfType>),
    Object(BTreeMap<String, TfType>),
}

impl TfType {
    /// The type's JSON encoding, what `Schema.Attribute.type` holds.
    pub fn to_json(&self) -> Json {
        match self {
            TfType::String => json!("string"),
            TfType::Number => json!("number"),
            TfType::Bool => json!("bool"),
            TfType::List(t) => json!(["list", t.to_json()]),
            TfType::Map(t) => json!(["map", t.to_json()]),
            TfType::Object(attrs) => {
                let m: Map<String, Json> = attrs
                    .iter()
                    .map(|(k, t)| (k.clone(), t.to_json()))
                    .collect();
                json!(["object", m])
            }
        }
    }
}

/// Whether the user sets an attribute, the provider does, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Required,
    Optional,
    Computed,
    /// Set by the user or, when absent, by the provider.
    OptionalComputed,
}

/// How an attribute's value maps to JSON beyond its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coerce {
    /// The same value.
    None,
    /// A string that is sent as a number when it reads as one (`"70"` -> `70`).
    NumberOrString,
    /// A string holding JSON.
    Json,
}

#[derive(Debug, Clone)]
pub struct Attr {
    /// The Terraform name (`connect_timeout`).
    pub name: String,
    /// The JSON field it maps to (`connectTimeout`); `None` for provider-only attributes.
    pub json: Option<String>,
    pub ty: TfType,
    pub mode: Mode,
    pub sensitive: bool,
    pub description: String,
    pub coerce: Coerce,
    /// An older name still accepted (`connect_timeout`): Terraform warns where it is used.
    pub deprecated: bool,
}

impl Attr {
    /// An attribute that is not part of the spec (`name`, `version`, `token`...).
    pub fn new(name: &str, ty: TfType, mode: Mode, description: &str) -> Attr {
        Attr {
            name: name.to_owned(),
            json: None,
            ty,
            mode,
            sensitive: false,
            description: description.to_owned(),
            coerce: Coerce::None,
            deprecated: false,
        }
    }

    pub fn sensitive(mut self) -> Attr {
        self.sensitive = true;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// At most one block, null when absent.
    Single,
    /// Repeated blocks, an empty list when absent.
    List,
}

#[derive(Debug, Clone)]
pub struct NestedBlock {
    pub name: String,
    pub json: String,
    pub nesting: Nesting,
    pub block: Block,
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub attrs: Vec<Attr>,
    pub blocks: Vec<NestedBlock>,
    pub description: String,
}

/// `connectTimeout` -> `connect_timeout`, `XXHash` -> `xxhash`, `http2` -> `http2`.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

// === generation ===

/// What one JSON Schema node becomes.
enum Shape {
    Scalar(TfType, Coerce),
    Object(Block),
    ListOfScalars(TfType),
    ListOfObjects(Block),
    MapOfScalars(TfType),
    Json,
}

/// The block of a spec whose JSON Schema (with `$defs`) is `root`.
pub fn block_from_json_schema(root: &Json) -> Block {
    match shape(root, root, 0) {
        Shape::Object(b) => b,
        _ => Block::default(),
    }
}

fn resolve<'a>(root: &'a Json, mut node: &'a Json) -> &'a Json {
    for _ in 0..32 {
        match node
            .get("$ref")
            .and_then(Json::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| root.get("$defs")?.get(name))
        {
            Some(def) => node = def,
            None => break,
        }
    }
    node
}

fn description(node: &Json) -> String {
    node.get("description")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_owned()
}

fn shape(root: &Json, node: &Json, depth: usize) -> Shape {
    if depth > 16 {
        return Shape::Json;
    }
    // A `$ref` with sibling properties (an internally tagged variant: its tag beside the
    // referenced struct) is the union of both.
    if node.get("$ref").is_some() && node.get("properties").is_some() {
        let mut merged = resolve(root, node).clone();
        merge_object(&mut merged, node);
        return shape(root, &merged, depth + 1);
    }
    let node = resolve(root, node);
    if let Some(variants) = node
        .get("anyOf")
        .or_else(|| node.get("oneOf"))
        .and_then(Json::as_array)
    {
        let variants: Vec<&Json> = variants
            .iter()
            .filter(|v| resolve(root, v).get("type").and_then(Json::as_str) != Some("null"))
            .collect();
        if variants.len() == 1 {
            return shape(root, variants[0], depth + 1);
        }
        let shapes: Vec<Shape> = variants.iter().map(|v| shape(root, v, depth + 1)).collect();
        if shapes.iter().all(|s| matches!(s, Shape::Object(_))) && !shapes.is_empty() {
            // A tagged union: one block with every variant's fields; only the fields
            // every variant requires stay required.
            let mut merged = Block {
                description: description(node),
                ..Block::default()
            };
            let blocks: Vec<Block> = shapes
                .into_iter()
                .filter_map(|s| match s {
                    Shape::Object(b) => Some(b),
                    _ => None,
                })
                .collect();
            for b in &blocks {
                for a in &b.attrs {
                    let everywhere = blocks.iter().all(|o| {
                        o.attrs
                            .iter()
                            .any(|x| x.name == a.name && x.mode == Mode::Required)
                    });
                    if let Some(existing) = merged.attrs.iter_mut().find(|x| x.name == a.name) {
                        if existing.description.is_empty() {
                            existing.description = a.description.clone();
                        }
                        continue;
                    }
                    let mut a = a.clone();
                    if a.mode == Mode::Required && !everywhere {
                        a.mode = Mode::Optional;
                    }
                    merged.attrs.push(a);
                }
                for nb in &b.blocks {
                    if !merged.blocks.iter().any(|x| x.name == nb.name) {
                        merged.blocks.push(nb.clone());
                    }
                }
            }
            return Shape::Object(merged);
        }
        if shapes.iter().all(|s| matches!(s, Shape::Scalar(..))) {
            let types: Vec<&TfType> = shapes
                .iter()
                .filter_map(|s| match s {
                    Shape::Scalar(t, _) => Some(t),
                    _ => None,
                })
                .collect();
            if types.iter().all(|t| **t == TfType::String) {
                return Shape::Scalar(TfType::String, Coerce::None);
            }
            return Shape::Scalar(TfType::String, Coerce::NumberOrString);
        }
        return Shape::Json;
    }
    if node.get("enum").is_some() || node.get("const").is_some() {
        return Shape::Scalar(TfType::String, Coerce::None);
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ if node.get("properties").is_some() => vec!["object"],
        _ => vec![],
    };
    match types.as_slice() {
        ["string"] => Shape::Scalar(TfType::String, Coerce::None),
        ["integer"] | ["number"] => Shape::Scalar(TfType::Number, Coerce::None),
        ["boolean"] => Shape::Scalar(TfType::Bool, Coerce::None),
        ["array"] => match node.get("items").map(|i| shape(root, i, depth + 1)) {
            Some(Shape::Scalar(t, Coerce::None)) => Shape::ListOfScalars(t),
            Some(Shape::Object(b)) => Shape::ListOfObjects(b),
            _ => Shape::Json,
        },
        ["object"] => {
            if let Some(props) = node.get("properties").and_then(Json::as_object) {
                Shape::Object(object_block(root, node, props, depth))
            } else {
                match node
                    .get("additionalProperties")
                    .map(|a| shape(root, a, depth + 1))
                {
                    Some(Shape::Scalar(t, Coerce::None)) => Shape::MapOfScalars(t),
                    _ => Shape::Json,
                }
            }
        }
        _ if types.len() > 1
            && types
                .iter()
                .all(|t| matches!(*t, "string" | "integer" | "number")) =>
        {
            Shape::Scalar(TfType::String, Coerce::NumberOrString)
        }
        _ => Shape::Json,
    }
}

/// Adds `extra`'s properties and required fields to the object schema `into`.
fn merge_object(into: &mut Json, extra: &Json) {
    let Some(obj) = into.as_object_mut() else {
        return;
    };
    obj.insert("type".into(), json!("object"));
    obj.entry("properties").or_insert_with(|| json!({}));
    if let (Some(Json::Object(p)), Some(Json::Object(e))) =
        (obj.get_mut("properties"), extra.get("properties"))
    {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    if let Some(Json::Array(req)) = extra.get("required") {
        let r = obj.entry("required").or_insert_with(|| json!([]));
        if let Some(r) = r.as_array_mut() {
            for x in req {
                if !r.contains(x) {
                    r.push(x.clone());
                }
            }
        }
    }
}

fn object_block(root: &Json, node: &Json, props: &Map<String, Json>, depth: usize) -> Block {
    let required: Vec<&str> = node
        .get("required")
        .and_then(Json::as_array)
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let mut block = Block {
        description: description(node),
        ..Block::default()
    };
    for (json_name, prop) in props {
        let name = snake_case(json_name);
        let desc = {
            let own = description(prop);
            if own.is_empty() {
                description(resolve(root, prop))
            } else {
                own
            }
        };
        let mode = if required.contains(&json_name.as_str()) {
            Mode::Required
        } else {
            Mode::Optional
        };
        let attr = |ty: TfType, coerce: Coerce| Attr {
            name: name.clone(),
            json: Some(json_name.clone()),
            ty,
            mode,
            sensitive: false,
            description: desc.clone(),
            coerce,
            deprecated: prop.get("deprecated").and_then(Json::as_bool) == Some(true),
        };
        match shape(root, prop, depth + 1) {
            Shape::Scalar(t, c) => block.attrs.push(attr(t, c)),
            Shape::ListOfScalars(t) => block
                .attrs
                .push(attr(TfType::List(Box::new(t)), Coerce::None)),
            Shape::MapOfScalars(t) => block
                .attrs
                .push(attr(TfType::Map(Box::new(t)), Coerce::None)),
            Shape::Json => block.attrs.push(attr(TfType::String, Coerce::Json)),
            Shape::Object(mut b) => {
                if b.description.is_empty() {
                    b.description = desc.clone();
                }
                block.blocks.push(NestedBlock {
                    name,
                    json: json_name.clone(),
                    nesting: Nesting::Single,
                    block: b,
                });
            }
            Shape::ListOfObjects(mut b) => {
                if b.description.is_empty() {
                    b.description = desc.clone();
                }
                block.blocks.push(NestedBlock {
                    name,
                    json: json_name.clone(),
                    nesting: Nesting::List,
                    block: b,
                });
            }
        }
    }
    block
}

// === protocol encoding ===

/// The block as the protocol's `Schema.Block`.
pub fn to_proto(b: &Block) -> crate::proto::schema::Block {
    use crate::proto::schema;
    schema::Block {
        version: 0,
        attributes: b
            .attrs
            .iter()
            .map(|a| schema::Attribute {
                name: a.name.clone(),
                r#type: a.ty.to_json().to_string().into_bytes(),
                nested_type: None,
                description: a.description.clone(),
                required: a.mode == Mode::Required,
                optional: matches!(a.mode, Mode::Optional | Mode::OptionalComputed),
                computed: matches!(a.mode, Mode::Computed | Mode::OptionalComputed),
                sensitive: a.sensitive,
                description_kind: crate::proto::StringKind::Markdown as i32,
                deprecated: a.deprecated,
            })
            .collect(),
        block_types: b
            .blocks
            .iter()
            .map(|nb| schema::NestedBlock {
                type_name: nb.name.clone(),
                block: Some(to_proto(&nb.block)),
                nesting: match nb.nesting {
                    Nesting::Single => schema::nested_block::NestingMode::Single,
                    Nesting::List => schema::nested_block::NestingMode::List,
                } as i32,
                // No bounds: a single block is optional (Terraform requires min = max
                // for it), repeated blocks are validated by the API.
                min_items: 0,
                max_items: 0,
            })
            .collect(),
        description: b.description.clone(),
        description_kind: crate::proto::StringKind::Markdown as i32,
        deprecated: false,
    }
}

// === values ===

/// A spec object as the block's Terraform value: every attribute present (null when
/// absent), single blocks null when absent, repeated blocks an empty list.
pub fn json_to_tf(b: &Block, obj: &Json) -> Value {
    let mut m = BTreeMap::new();
    for a in &b.attrs {
        let Some(key) = &a.json else { continue };
        let v = obj.get(key).unwrap_or(&Json::Null);
        let tv = match (a.coerce, v) {
            (_, Json::Null) => Value::Null,
            (Coerce::Json, v) => Value::String(v.to_string()),
            (Coerce::NumberOrString, Json::Number(n)) => Value::String(n.to_string()),
            (_, v) => crate::value::from_json(v),
        };
        m.insert(a.name.clone(), tv);
    }
    for nb in &b.blocks {
        let v = obj.get(&nb.json).unwrap_or(&Json::Null);
        let tv = match nb.nesting {
            Nesting::Single if v.is_object() => json_to_tf(&nb.block, v),
            Nesting::Single => Value::Null,
            Nesting::List => Value::List(
                v.as_array()
                    .map(|items| items.iter().map(|i| json_to_tf(&nb.block, i)).collect())
                    .unwrap_or_default(),
            ),
        };
        m.insert(nb.name.clone(), tv);
    }
    Value::Map(m)
}

/// A value the spec cannot take, with its Terraform path.
#[derive(Debug)]
pub struct ConvertError {
    pub path: Vec<Step>,
    pub reason: String,
}

/// One step of a Terraform attribute path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Attr(String),
    Index(i64),
    Key(String),
}

/// The block's Terraform value as a spec object: nulls and empty repeated blocks are
/// left out. Unknown values are an error (call this only on known values).
pub fn tf_to_json(b: &Block, v: &Value, path: &[Step]) -> Result<Json, ConvertError> {
    let mut out = Map::new();
    for a in &b.attrs {
        let Some(key) = &a.json else { continue };
        let here = with(path, Step::Attr(a.name.clone()));
        let jv = match (a.coerce, v.get(&a.name)) {
            (_, Value::Null) => continue,
            (_, Value::Unknown) => {
                return Err(ConvertError {
                    path: here,
                    reason: "is not known yet".into(),
                });
            }
            (Coerce::Json, Value::String(s)) => {
                serde_json::from_str(s).map_err(|e| ConvertError {
                    path: here.clone(),
                    reason: format!("must be JSON (use jsonencode): {e}"),
                })?
            }
            (Coerce::NumberOrString, Value::String(s)) => match s.parse::<serde_json::Number>() {
                Ok(n) => Json::Number(n),
                Err(_) => Json::String(s.clone()),
            },
            (_, other) => to_json(other, &here)?,
        };
        out.insert(key.clone(), jv);
    }
    for nb in &b.blocks {
        let here = with(path, Step::Attr(nb.name.clone()));
        match (nb.nesting, v.get(&nb.name)) {
            (_, Value::Null) => {}
            (Nesting::Single, inner) => {
                out.insert(nb.json.clone(), tf_to_json(&nb.block, inner, &here)?);
            }
            (Nesting::List, Value::List(items)) => {
                if items.is_empty() {
                    continue;
                }
                let mut arr = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    arr.push(tf_to_json(
                        &nb.block,
                        item,
                        &with(&here, Step::Index(i as i64)),
                    )?);
                }
                out.insert(nb.json.clone(), Json::Array(arr));
            }
            (Nesting::List, _) => {
                return Err(ConvertError {
                    path: here,
                    reason: "is not known yet".into(),
                });
            }
        }
    }
    Ok(Json::Object(out))
}

fn with(path: &[Step], step: Step) -> Vec<Step> {
    let mut p = path.to_vec();
    p.push(step);
    p
}

/// A known Terraform value as JSON.
pub fn to_json(v: &Value, path: &[Step]) -> Result<Json, ConvertError> {
    Ok(match v {
        Value::Unknown => {
            return Err(ConvertError {
                path: path.to_vec(),
                reason: "is not known yet".into(),
            });
        }
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => Json::Number(n.clone()),
        Value::String(s) => Json::String(s.clone()),
        Value::List(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &with(path, Step::Index(i as i64))))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), to_json(x, &with(path, Step::Key(k.clone())))?)))
                .collect::<Result<_, ConvertError>>()?,
        ),
    })
}

/// The Terraform path of an API field path (`spec.to[0].default.connectTimeout` ->
/// `to[0].default.connect_timeout`), walking `spec_block` to translate names; `labels.x`
/// and the envelope fields map to themselves. Stops at the deepest part it can place.
pub fn api_path_to_tf(spec_block: &Block, field: &str) -> Vec<Step> {
    let mut segments = Vec::new();
    for part in field.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        segments.push(Step::Attr(name.to_owned()));
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                segments.push(Step::Index(i));
            }
        }
    }
    let mut out = Vec::new();
    let mut it = segments.into_iter().peekable();
    match it.next() {
        Some(Step::Attr(first)) if first == "spec" => {}
        Some(Step::Attr(first)) if first == "labels" => {
            out.push(Step::Attr(first));
            if let Some(Step::Attr(k)) = it.next() {
                out.push(Step::Key(k));
            }
            return out;
        }
        // Envelope fields are attributes of the same name; others (`Authorization`,
        // `origin`) are about no attribute.
        Some(Step::Attr(first)) if matches!(first.as_str(), "name" | "mesh" | "type") => {
            out.push(Step::Attr(first));
            return out;
        }
        _ => return out,
    }
    let mut block = spec_block;
    while let Some(step) = it.next() {
        let Step::Attr(name) = step else { break };
        if let Some(nb) = block.blocks.iter().find(|nb| nb.json == name) {
            out.push(Step::Attr(nb.name.clone()));
            if nb.nesting == Nesting::List {
                match it.next() {
                    Some(Step::Index(i)) => out.push(Step::Index(i)),
                    _ => break,
                }
            }
            block = &nb.block;
        } else if let Some(a) = block
            .attrs
            .iter()
            .find(|a| a.json.as_deref() == Some(name.as_str()))
        {
            out.push(Step::Attr(a.name.clone()));
            match (&a.ty, it.next()) {
                (TfType::List(_), Some(Step::Index(i))) => out.push(Step::Index(i)),
                (TfType::Map(_), Some(Step::Attr(k))) => out.push(Step::Key(k)),
                _ => {}
            }
            break;
        } else {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_cases() {
        for (a, b) in [
            ("connectTimeout", "connect_timeout"),
            ("targetRef", "target_ref"),
            ("http", "http"),
            ("backendRefs", "backend_refs"),
            ("http2", "http2"),
            ("maxRequestsPerIP", "max_requests_per_ip"),
        ] {
            assert_eq!(snake_case(a), b);
        }
    }

    fn timeout_block() -> Block {
        let info = causeway_api::type_info("MeshTimeout").unwrap();
        block_from_json_schema(&(info.spec_schema)())
    }

    #[test]
    fn mesh_timeout_mirrors_the_model() {
        let b = timeout_block();
        let to = b.blocks.iter().find(|nb| nb.name == "to").unwrap();
        assert_eq!(to.nesting, Nesting::List);
        let tr = to
            .block
            .blocks
            .iter()
            .find(|nb| nb.name == "target_ref")
            .unwrap();
        assert_eq!(tr.nesting, Nesting::Single);
        let kind = tr.block.attrs.iter().find(|a| a.name == "kind").unwrap();
        assert_eq!(kind.mode, Mode::Required);
        let default = to
            .block
            .blocks
            .iter()
            .find(|nb| nb.name == "default")
            .unwrap();
        let ct = default
            .block
            .attrs
            .iter()
            .find(|a| a.name == "connect_timeout")
            .unwrap();
        assert_eq!(ct.ty, TfType::String);
        assert!(!ct.description.is_empty());
        // The older name is still accepted, and Terraform warns where it is used.
        assert!(ct.deprecated);
        let current = default
            .block
            .attrs
            .iter()
            .find(|a| a.name == "connection_timeout")
            .unwrap();
        assert!(!current.deprecated);
        assert!(
            to_proto(&default.block)
                .attributes
                .iter()
                .any(|a| a.name == "connect_timeout" && a.deprecated)
        );
    }

    #[test]
    fn spec_round_trips_through_terraform_values() {
        let b = timeout_block();
        let spec = json!({"targetRef": {"kind": "MeshService", "name": "web"}, "to": [
            {"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s", "http": {"requestTimeout": "5s"}}}]});
        let tf = json_to_tf(&b, &spec);
        let Value::List(to) = tf.get("to") else {
            panic!("`to` is a list of blocks: {tf:?}")
        };
        assert_eq!(to.len(), 1);
        // Every attribute is present, null when unset.
        assert_eq!(tf.get("target_ref").get("tags"), &Value::Null);
        assert!(matches!(tf.get("target_ref"), Value::Map(m) if m.contains_key("tags")));
        assert_eq!(tf_to_json(&b, &tf, &[]).unwrap(), spec);
    }

    #[test]
    fn api_paths_become_terraform_paths() {
        let b = timeout_block();
        assert_eq!(
            api_path_to_tf(&b, "spec.to[1].default.connectTimeout"),
            vec![
                Step::Attr("to".into()),
                Step::Index(1),
                Step::Attr("default".into()),
                Step::Attr("connect_timeout".into())
            ]
        );
        assert_eq!(
            api_path_to_tf(&b, "labels.team"),
            vec![Step::Attr("labels".into()), Step::Key("team".into())]
        );
        assert_eq!(api_path_to_tf(&b, "name"), vec![Step::Attr("name".into())]);
    }

    /// Every served resource's spec has names that do not clash with the envelope
    /// attributes the provider adds.
    #[test]
    fn every_type_generates_a_clean_block() {
        for r in crate::resources::resources() {
            let crate::resources::Kind::Object { spec, .. } = &r.kind else {
                continue;
            };
            let names = spec
                .attrs
                .iter()
                .map(|a| &a.name)
                .chain(spec.blocks.iter().map(|b| &b.name));
            for name in names {
                assert!(
                    !crate::resources::ENVELOPE.contains(&name.as_str()),
                    "{}: {name}",
                    r.name
                );
            }
        }
    }
}
