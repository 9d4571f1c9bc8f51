use serde_json::json;

use super::*;
use crate::registry::type_info;

/// The real registry plus a mesh-scoped type, until the policy types arrive.
fn registry() -> Vec<TypeInfo> {
    let mut types = crate::types().to_vec();
    types.push(TypeInfo {
        kind: "TestPolicy",
        plural: "testpolicies",
        scope: Scope::Mesh,
        role: crate::Role::Policy(crate::Enforcement::Full),
        sync: crate::SyncDirection::GlobalToZones,
        validate_spec: |_| vec![],
        canonical_spec: |spec| Ok(spec.clone()),
        spec_schema: || serde_json::json!({}),
    });
    types
}

fn errors_of(yaml: &str) -> Vec<FieldError> {
    let r = Resource::from_yaml(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    match validate_with(&r, &registry()) {
        Ok(()) => vec![],
        Err(e) => e.errors,
    }
}

#[test]
fn good_documents() {
    let table = [
        "type: Mesh\nname: default\n",
        "type: Mesh\nname: a\nspec: {}\n",
        "type: Mesh\nname: default\nlabels: {team: platform, example.com/owner: Jane_Doe.1, empty: ''}\n",
        "type: Zone\nname: eu-west-1\nspec: {enabled: false}\n",
        "type: TestPolicy\nmesh: default\nname: allow-all\n",
        "type: Mesh\nname: default\nversion: 7\ncreationTime: 2024-01-02T03:04:05Z\nmodificationTime: 2024-01-02T03:04:06.5+02:00\norigin: global\n",
    ];
    for yaml in table {
        assert_eq!(errors_of(yaml), vec![], "{yaml}");
    }
    let long = format!("type: Mesh\nname: {}\n", "a".repeat(63));
    assert_eq!(errors_of(&long), vec![]);
}

#[test]
fn bad_documents() {
    let long_name = format!("type: Mesh\nname: {}\n", "a".repeat(64));
    let long_value = format!("type: Mesh\nname: m\nlabels: {{app: {}}}\n", "v".repeat(64));
    let long_key = format!("type: Mesh\nname: m\nlabels: {{{}: x}}\n", "k".repeat(64));
    let long_key_field = format!("labels.{}", "k".repeat(64));
    let table: Vec<(&str, &str, &str)> = vec![
        (
            "type: Meshh\nname: default\n",
            "type",
            "unknown type \"Meshh\"; known types: Mesh, Zone, ",
        ),
        (
            "type: mesh\nname: default\n",
            "type",
            "unknown type \"mesh\"",
        ),
        (
            "type: Mesh\nname: Default\n",
            "name",
            "\"Default\" is not a valid DNS label: it contains 'D'",
        ),
        ("type: Mesh\nname: my_mesh\n", "name", "it contains '_'"),
        (&long_name, "name", "64 characters long, more than 63"),
        (
            "type: Mesh\nname: -mesh\n",
            "name",
            "starts or ends with '-'",
        ),
        (
            "type: Mesh\nname: mesh-\n",
            "name",
            "starts or ends with '-'",
        ),
        ("type: Mesh\nname: ''\n", "name", "it is empty"),
        ("type: TestPolicy\nname: p\n", "mesh", "is required"),
        (
            "type: TestPolicy\nmesh: Default\nname: p\n",
            "mesh",
            "not a valid DNS label",
        ),
        (
            "type: Mesh\nmesh: default\nname: m\n",
            "mesh",
            "must not be set: Mesh is a global resource",
        ),
        (
            "type: Zone\nmesh: default\nname: z\n",
            "mesh",
            "must not be set: Zone is a global resource",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'-app': x}\n",
            "labels.-app",
            "invalid label key \"-app\": it must start and end with a letter or digit",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'app key': x}\n",
            "labels.app key",
            "it contains ' '",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'Example.com/app': x}\n",
            "labels.Example.com/app",
            "the prefix before '/'",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'example.com/': x}\n",
            "labels.example.com/",
            "the name is empty",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'a/b/c': x}\n",
            "labels.a/b/c",
            "it contains '/'",
        ),
        (
            "type: Mesh\nname: m\nlabels: {'/app': x}\n",
            "labels./app",
            "the prefix before '/' must not be empty",
        ),
        (&long_key, &long_key_field, "more than 63"),
        (
            "type: Mesh\nname: m\nlabels: {app: 'a b'}\n",
            "labels.app",
            "invalid label value \"a b\": it contains ' '",
        ),
        (
            "type: Mesh\nname: m\nlabels: {app: '-x'}\n",
            "labels.app",
            "start and end with a letter or digit",
        ),
        (&long_value, "labels.app", "invalid label value"),
        (
            "type: Mesh\nname: m\nspec: {mtlss: {}}\n",
            "spec.mtlss",
            "unknown field `mtlss`, expected one of",
        ),
        (
            "type: Zone\nname: z\nspec: {enabled: true, token: abc}\n",
            "spec.token",
            "unknown field `token`",
        ),
        (
            "type: Zone\nname: z\nspec: [1]\n",
            "spec",
            "invalid type: sequence, expected struct ZoneSpec",
        ),
    ];
    for (yaml, field, reason) in table {
        let errors = errors_of(yaml);
        assert_eq!(errors.len(), 1, "{yaml}: {errors:?}");
        assert_eq!(errors[0].field, field, "{yaml}");
        assert!(
            errors[0].reason.contains(reason),
            "{yaml}: {}",
            errors[0].reason
        );
    }
}

#[test]
fn reports_all_problems_together() {
    let yaml = "type: Zone\nmesh: x\nname: Zone_1\nlabels: {'bad key': 'bad value'}\nspec: {region: EU, cloud: '-'}\n";
    let r = Resource::from_yaml(yaml).unwrap();
    let err = validate(&r).unwrap_err();
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "mesh",
            "labels.bad key",
            "labels.bad key",
            "spec.region",
            "spec.cloud"
        ]
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("name: \"Zone_1\" is not a valid DNS label"),
        "{shown}"
    );
    assert!(shown.contains("; mesh: must not be set"), "{shown}");
    assert!(shown.matches("; ").count() >= 5, "{shown}");

    // An unknown type still gets its name and labels checked.
    let r = Resource::new("Nope", None, "Bad!", json!({}));
    let err = validate(&r).unwrap_err();
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["type", "name"]);
}

#[test]
fn display_and_serialize() {
    let err = ValidationErrors {
        errors: vec![
            FieldError::new("name", "is bad"),
            FieldError::new("spec.x", "is worse"),
        ],
    };
    assert_eq!(err.to_string(), "name: is bad; spec.x: is worse");
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"errors": [{"field": "name", "reason": "is bad"}, {"field": "spec.x", "reason": "is worse"}]})
    );
}

#[test]
fn name_rules() {
    for good in ["a", "0", "a-b", "default", "1-2-3", &"z".repeat(63)] {
        assert_eq!(validate_name("name", good), None, "{good}");
    }
    for bad in [
        "",
        "A",
        "a.b",
        "a_b",
        "-a",
        "a-",
        "ä",
        " a",
        &"z".repeat(64),
    ] {
        let err = validate_name("mesh", bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(err.field, "mesh");
        assert!(err.reason.contains("DNS label"), "{}", err.reason);
    }
}

#[test]
fn subdomain_rules() {
    for good in [
        "a",
        "example.com",
        "a-1.b-2.c",
        &format!("{}.{}", "a".repeat(63), "b".repeat(63)),
    ] {
        assert_eq!(validate_dns_subdomain(good), Ok(()), "{good}");
    }
    let too_long = vec!["a".repeat(63); 5].join(".");
    for bad in ["", ".", "a.", ".a", "A.com", "a_b.com", "-a.com", &too_long] {
        assert!(validate_dns_subdomain(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn spec_errors_use_the_registry_entry() {
    let mesh = type_info("Mesh").unwrap();
    let errors = (mesh.validate_spec)(&json!({"certificateTtl": "1d"}));
    assert_eq!(errors[0].field, "spec.certificateTtl");
}
