use crate::validation::decode_spec;
use serde_json::json;

use super::*;

#[test]
fn good() {
    for spec in [
        json!({}),
        json!({"enabled": false}),
        json!({"enabled": true, "description": "Frankfurt — main cluster", "region": "eu-central-1", "cloud": "aws"}),
        json!({"description": "é".repeat(256)}),
    ] {
        assert_eq!(validate_spec(&spec), vec![], "{spec}");
    }
    let spec: ZoneSpec = decode_spec(&json!({})).unwrap();
    assert_eq!(spec, ZoneSpec::default());
    assert!(spec.enabled);
}

#[test]
fn bad() {
    let table = [
        (
            json!({"description": "x".repeat(257)}),
            "spec.description",
            "at most 256 characters (got 257)",
        ),
        (
            json!({"region": "EU_West"}),
            "spec.region",
            "not a valid DNS label",
        ),
        (json!({"region": ""}), "spec.region", "empty"),
        (
            json!({"cloud": "-aws"}),
            "spec.cloud",
            "starts or ends with '-'",
        ),
        (
            json!({"enabled": "yes"}),
            "spec.enabled",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            json!({"token": "secret"}),
            "spec.token",
            "unknown field `token`",
        ),
        (json!([]), "spec", "expected struct ZoneSpec"),
    ];
    for (spec, field, reason) in table {
        let errors = validate_spec(&spec);
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert_eq!(errors[0].field, field, "{spec}");
        assert!(
            errors[0].reason.contains(reason),
            "{spec}: {}",
            errors[0].reason
        );
    }
}

#[test]
fn reports_all_problems() {
    let errors =
        validate_spec(&json!({"description": "x".repeat(300), "region": "A", "cloud": "B"}));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.description", "spec.region", "spec.cloud"]);
}
