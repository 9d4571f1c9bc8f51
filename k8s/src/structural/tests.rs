use serde_json::json;

use super::*;

#[test]
fn references_are_inlined_and_the_fields_own_description_wins() {
    let s = structural(&json!({
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A", "description": "the field"},
            "b": {"$ref": "#/$defs/A"},
        },
        "$defs": {"A": {"type": "object", "description": "the type",
                        "properties": {"x": {"type": "integer", "format": "uint32", "minimum": 0}}}},
    }));
    assert_eq!(
        s["properties"]["a"],
        json!({"type": "object", "description": "the field",
               "properties": {"x": {"type": "integer", "minimum": 0}}})
    );
    assert_eq!(s["properties"]["b"]["description"], "the type");
}

#[test]
fn optional_values_are_nullable() {
    let s = structural(&json!({
        "type": "object",
        "properties": {
            "r": {"anyOf": [{"$ref": "#/$defs/R"}, {"type": "null"}]},
            "s": {"type": ["string", "null"]},
            "e": {"enum": ["x", null]},
        },
        "$defs": {"R": {"type": "string", "pattern": "^r"}},
    }));
    assert_eq!(
        s["properties"]["r"],
        json!({"type": "string", "pattern": "^r", "nullable": true})
    );
    assert_eq!(
        s["properties"]["s"],
        json!({"type": "string", "nullable": true})
    );
    assert_eq!(
        s["properties"]["e"],
        json!({"type": "string", "enum": ["x"], "nullable": true})
    );
}

#[test]
fn tagged_variants_merge_into_one_object() {
    // serde's `#[serde(tag = "type")]` enum, as schemars writes it.
    let s = structural(&json!({"oneOf": [
        {"type": "object", "properties": {"type": {"const": "Http"}, "path": {"type": "string"}},
         "required": ["type", "path"]},
        {"type": "object", "properties": {"type": {"const": "Tcp"}}, "required": ["type"]},
    ]}));
    assert_eq!(
        s,
        json!({"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["Http", "Tcp"]},
            "path": {"type": "string"},
        }})
    );
}

#[test]
fn unit_variants_merge_into_one_enum() {
    let s = structural(&json!({"description": "a mode", "oneOf": [
        {"type": "string", "const": "A", "description": "first"},
        {"type": "string", "enum": ["B", "C"]},
        {"type": "string", "const": "A", "description": "Kuma's spelling, the same value"},
    ]}));
    assert_eq!(
        s,
        json!({"type": "string", "enum": ["A", "B", "C"], "description": "a mode"})
    );
}

#[test]
fn a_string_or_an_integer_is_int_or_string_and_other_mixes_keep_anything() {
    let s = structural(&json!({"type": "object", "properties": {
        "percent": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "%$"}]},
        "either": {"type": ["string", "integer"]},
        "mixed": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"a": {"type": "string"}}}]},
        "any": true,
        "empty": {},
    }}));
    assert_eq!(
        s["properties"]["percent"],
        json!({"x-kubernetes-int-or-string": true})
    );
    assert_eq!(
        s["properties"]["either"],
        json!({"x-kubernetes-int-or-string": true})
    );
    for field in ["mixed", "any", "empty"] {
        assert_eq!(
            s["properties"][field],
            json!({"x-kubernetes-preserve-unknown-fields": true}),
            "{field}"
        );
    }
}

#[test]
fn keywords_kubernetes_refuses_are_translated_or_dropped() {
    let s = structural(&json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "T",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "n": {"type": "number", "exclusiveMinimum": 0, "default": 1, "readOnly": true},
            "l": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "examples": [["a"]]},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object"},
            "t": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "c": {"const": 3},
        },
    }));
    assert_eq!(
        s,
        json!({"type": "object", "properties": {
            "n": {"type": "number", "minimum": 0, "exclusiveMinimum": true},
            "l": {"type": "array", "items": {"type": "string"}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "t": {"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": true}},
            "c": {"type": "integer", "enum": [3]},
        }})
    );
}

#[test]
fn a_recursive_type_keeps_its_inner_levels_open() {
    let s = structural(&json!({
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
        }}},
    }));
    assert_eq!(s["properties"]["name"], json!({"type": "string"}));
    assert_eq!(
        s["properties"]["children"]["items"],
        json!({"x-kubernetes-preserve-unknown-fields": true})
    );
}
