use proptest::prelude::*;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::*;
use crate::validation::validate;

const MESH: &str = "\
type: Mesh
name: default
labels:
  team: platform
spec:
  mtls:
    mode: Strict
    backend: {type: builtin}
  certificateTtl: 24h
";

#[test]
fn from_yaml_good() {
    let r = Resource::from_yaml(MESH).unwrap();
    assert_eq!(r.kind, "Mesh");
    assert_eq!(r.mesh, None);
    assert_eq!(r.name, "default");
    assert_eq!(r.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(r.spec["mtls"]["backend"]["type"], "builtin");
    assert_eq!(
        r.key(),
        ResourceKey {
            kind: "Mesh".into(),
            mesh: String::new(),
            name: "default".into()
        }
    );
    assert_eq!(r.key().to_string(), "Mesh/default");
    assert!(validate(&r).is_ok());

    // spec missing or null reads as {}.
    for yaml in [
        "type: Zone\nname: z\n",
        "type: Zone\nname: z\nspec:\n",
        "type: Zone\nname: z\nspec: null\n",
    ] {
        assert_eq!(Resource::from_yaml(yaml).unwrap().spec, json!({}), "{yaml}");
    }

    let r = Resource::from_yaml("type: MeshTimeout\nmesh: default\nname: t\n").unwrap();
    assert_eq!(r.key().to_string(), "MeshTimeout/default/t");
}

#[test]
fn server_set_fields() {
    let yaml = "type: Mesh\nname: m\nversion: 42\ncreationTime: 2024-05-06T07:08:09.123456789Z\nmodificationTime: 2024-05-06T09:08:09+02:00\norigin: zone-1\n";
    let r = Resource::from_yaml(yaml).unwrap();
    assert_eq!(r.version, Some(42));
    assert_eq!(
        r.creation_time,
        Some(OffsetDateTime::parse("2024-05-06T07:08:09.123456789Z", &Rfc3339).unwrap())
    );
    assert_eq!(
        r.modification_time,
        Some(OffsetDateTime::parse("2024-05-06T07:08:09Z", &Rfc3339).unwrap())
    );
    assert_eq!(r.origin.as_deref(), Some("zone-1"));
    let json: Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["creationTime"], "2024-05-06T07:08:09.123456789Z");
    assert_eq!(json["version"], 42);
    assert_eq!(Resource::from_json(r.to_json().as_bytes()).unwrap(), r);

    let err = Resource::from_yaml("type: Mesh\nname: m\ncreationTime: yesterday\n").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("creationTime"));
}

#[test]
fn serialization_omits_empty_fields() {
    let r = Resource::new("Mesh", None, "default", json!({}));
    assert_eq!(r.to_yaml(), "type: Mesh\nname: default\nspec: {}\n");
    assert_eq!(
        r.to_json(),
        "{\n  \"type\": \"Mesh\",\n  \"name\": \"default\",\n  \"spec\": {}\n}"
    );
}

#[test]
fn from_yaml_errors() {
    // (document, field, line, reason)
    let table: &[(&str, Option<&str>, Option<usize>, &str)] = &[
        (
            "type: Mesh\nnmae: default\n",
            Some("nmae"),
            Some(2),
            "unknown field `nmae`, expected one of: type, mesh, name, labels, spec",
        ),
        (
            "type: Mesh\nspec: {}\n",
            Some("name"),
            Some(1),
            "is required",
        ),
        ("name: default\n", Some("type"), Some(1), "is required"),
        (
            "type: Mesh\nname: [a]\n",
            Some("name"),
            Some(2),
            "invalid type: sequence, expected a string",
        ),
        (
            "type: Mesh\nname: m\nlabels: {app: [x]}\n",
            Some("labels.app"),
            Some(3),
            "invalid type: sequence, expected a string",
        ),
        (
            "type: Mesh\nname: m\nlabels: [x]\n",
            Some("labels"),
            Some(3),
            "invalid type: sequence, expected a map",
        ),
        (
            "type: Mesh\nname: m\nversion: -1\n",
            Some("version"),
            Some(3),
            "invalid value",
        ),
        (
            "type: Mesh\nname: m\nspec: {a: 1\n",
            None,
            Some(4),
            "did not find expected",
        ),
        ("- a\n- b\n", None, None, "expected struct Resource"),
        ("", None, None, "the document is empty"),
        ("# just a comment\n", None, None, "the document is empty"),
        (
            "type: Mesh\nname: a\n---\ntype: Mesh\nname: b\n",
            None,
            None,
            "more than one document",
        ),
    ];
    for &(yaml, field, line, reason) in table {
        let err = Resource::from_yaml(yaml).expect_err(yaml);
        assert_eq!(err.field.as_deref(), field, "{yaml}: {err}");
        if line.is_some() {
            assert_eq!(err.line, line, "{yaml}: {err}");
        }
        assert_eq!(err.document, None);
        assert!(err.reason.contains(reason), "{yaml}: {err}");
    }
    let err = Resource::from_yaml("type: Mesh\nnmae: default\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 2 column 1: nmae: unknown field `nmae`"),
        "{err}"
    );
}

#[test]
fn from_json_errors() {
    let table: &[(&str, Option<&str>, Option<usize>, &str)] = &[
        (
            "{\"type\": \"Mesh\",\n \"nmae\": \"m\"}",
            Some("nmae"),
            Some(2),
            "unknown field `nmae`",
        ),
        ("{\"type\": \"Mesh\"}", Some("name"), Some(1), "is required"),
        (
            "{\"type\": \"Mesh\", \"name\": \"m\", \"labels\": {\"a\": 1}}",
            Some("labels.a"),
            Some(1),
            "invalid type: integer `1`, expected a string",
        ),
        ("{\"type\": \"Mesh\",", None, Some(1), "EOF while parsing"),
        ("", None, Some(1), "EOF while parsing"),
    ];
    for &(json, field, line, reason) in table {
        let err = Resource::from_json(json.as_bytes()).expect_err(json);
        assert_eq!(err.field.as_deref(), field, "{json}: {err}");
        assert_eq!(err.line, line, "{json}: {err}");
        assert!(err.reason.contains(reason), "{json}: {err}");
        assert!(!err.reason.contains(" at line "), "{json}: {err}");
    }
    let r = Resource::from_json(br#"{"type": "Zone", "name": "z", "spec": {"enabled": false}}"#)
        .unwrap();
    assert_eq!(r.spec, json!({"enabled": false}));
}

#[test]
fn from_yaml_documents_skips_empty_and_names_the_bad_document() {
    let good =
        "---\ntype: Mesh\nname: a\n---\n---\n# comment only\n---\ntype: Zone\nname: z\n...\n";
    let resources = Resource::from_yaml_documents(good).unwrap();
    let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "z"]);
    assert_eq!(Resource::from_yaml_documents("").unwrap(), vec![]);

    let bad =
        "type: Mesh\nname: a\n---\ntype: Zone\nname: z\nnmae: oops\n---\ntype: Zone\nname: y\n";
    let err = Resource::from_yaml_documents(bad).unwrap_err();
    assert_eq!(err.document, Some(2), "{err}");
    assert_eq!(err.field.as_deref(), Some("nmae"), "{err}");
    assert_eq!(err.line, Some(6), "{err}");
    assert!(
        err.to_string()
            .starts_with("document 2, line 6 column 1: nmae: unknown field `nmae`"),
        "{err}"
    );

    // Empty documents count in the numbering, since the user sees them.
    let err = Resource::from_yaml_documents("---\n---\ntype: Mesh\n").unwrap_err();
    assert_eq!(err.document, Some(2), "{err}");
    assert_eq!(err.field.as_deref(), Some("name"), "{err}");

    let err = Resource::from_yaml_documents("type: Mesh\nname: a\n---\nname: [\n").unwrap_err();
    assert_eq!(err.document, Some(2), "{err}");
}

// === round trips ===

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key =
        "([a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?";
    let value = "([A-Za-z0-9]([A-Za-z0-9_.-]{0,30}[A-Za-z0-9])?)?";
    proptest::collection::btree_map(key, value, 0..4)
}

fn duration() -> impl Strategy<Value = crate::Duration> {
    (60u64..=8760 * 3600, 0u32..1000).prop_map(|(secs, millis)| {
        crate::Duration::from(std::time::Duration::new(secs, millis * 1_000_000))
    })
}

fn mesh_spec() -> impl Strategy<Value = Value> {
    use crate::mesh::*;
    let backend = prop_oneof![
        (prop_oneof![
            Just(KeyType::EcdsaP256),
            Just(KeyType::Rsa2048),
            Just(KeyType::Rsa4096)
        ])
        .prop_map(|key_type| CaBackend::Builtin(BuiltinCa {
            key_type,
            ca_validity: crate::Duration::from_hours(87_600)
        })),
        name().prop_map(|secret| CaBackend::Provided(ProvidedCa {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            key_secret_ref: secret,
        })),
    ];
    let mode = prop_oneof![
        Just(MtlsMode::Strict),
        Just(MtlsMode::Permissive),
        Just(MtlsMode::Off)
    ];
    let mtls =
        proptest::option::of((mode, backend).prop_map(|(mode, backend)| Mtls { mode, backend }));
    let percent = prop_oneof![
        (10u32..=90).prop_map(f64::from),
        (100u32..=900).prop_map(|p| f64::from(p) / 10.0)
    ];
    (
        mtls,
        proptest::option::of("[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}"),
        duration(),
        percent,
        any::<bool>(),
    )
        .prop_map(
            |(mtls, trust_domain, certificate_ttl, renew_at, cross_zone)| {
                serde_json::to_value(MeshSpec {
                    mtls,
                    trust_domain,
                    certificate_ttl,
                    certificate_renew_at: crate::Percent::new(renew_at),
                    cross_zone,
                    networking: Default::default(),
                })
                .unwrap()
            },
        )
}

fn zone_spec() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        proptest::option::of("[ -~]{0,40}|true|null|1e3|'x'|- a|: b"),
        proptest::option::of(name()),
        proptest::option::of(name()),
    )
        .prop_map(|(enabled, description, region, cloud)| {
            serde_json::to_value(crate::ZoneSpec {
                enabled,
                description,
                region,
                cloud,
            })
            .unwrap()
        })
}

fn timestamp() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
            + std::time::Duration::from_nanos(nanos.into())
    })
}

fn resource() -> impl Strategy<Value = Resource> {
    let kind_and_spec = prop_oneof![
        mesh_spec().prop_map(|spec| ("Mesh", spec)),
        zone_spec().prop_map(|spec| ("Zone", spec)),
    ];
    let server_set = (
        proptest::option::of(any::<u64>()),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
        proptest::option::of(prop_oneof![Just("global".to_owned()), name()]),
    );
    (kind_and_spec, name(), labels(), server_set).prop_map(
        |((kind, spec), name, labels, (version, creation_time, modification_time, origin))| {
            Resource {
                kind: kind.to_owned(),
                mesh: None,
                name,
                labels,
                spec,
                version,
                creation_time,
                modification_time,
                origin,
            }
        },
    )
}

proptest! {
    #[test]
    fn valid_resources_round_trip(r in resource()) {
        prop_assert_eq!(validate(&r), Ok(()));
        let yaml = r.to_yaml();
        prop_assert_eq!(&Resource::from_yaml(&yaml).unwrap(), &r, "{}", yaml);
        let json = r.to_json();
        prop_assert_eq!(&Resource::from_json(json.as_bytes()).unwrap(), &r, "{}", json);
        let docs = format!("{yaml}---\n{yaml}");
        prop_assert_eq!(Resource::from_yaml_documents(&docs).unwrap(), vec![r.clone(), r]);
    }
}

#[test]
fn a_resource_is_an_object_not_an_array() {
    let err = Resource::from_yaml("[Mesh, null, m]\n").unwrap_err();
    assert!(err.reason.contains("expected struct Resource"), "{err}");
    let err = Resource::from_json(br#"["Mesh", null, "m"]"#).unwrap_err();
    assert!(err.reason.contains("expected struct Resource"), "{err}");
}
