use serde_json::Value;

use crate::validation::decode_spec;
use serde_json::json;

use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

#[test]
fn good_minimal() {
    assert_eq!(validate_spec(&json!({})), vec![]);
    let spec: MeshSpec = decode_spec(&json!({})).unwrap();
    assert_eq!(spec, MeshSpec::default());
    assert_eq!(spec.certificate_ttl, Duration::from_hours(24));
    assert_eq!(spec.certificate_renew_at, Percent::new(70.0));
    assert!(spec.cross_zone);
    assert_eq!(spec.trust_domain_or("default"), "default");
    assert_eq!(spec.renew_after().as_secs(), 24 * 3600 * 7 / 10);
}

#[test]
fn good_full_builtin() {
    let value = json!({
        "mtls": {"mode": "Permissive", "backend": {"type": "builtin", "keyType": "rsa4096", "caValidity": "43800h"}},
        "trustDomain": "prod.example.com",
        "certificateTtl": "1h30m",
        "certificateRenewAt": "80%",
        "crossZone": false,
    });
    assert_eq!(validate_spec(&value), vec![]);
    let spec: MeshSpec = decode_spec(&value).unwrap();
    assert_eq!(
        spec,
        MeshSpec {
            mtls: Some(Mtls {
                mode: MtlsMode::Permissive,
                backend: CaBackend::Builtin(BuiltinCa {
                    key_type: KeyType::Rsa4096,
                    ca_validity: Duration::from_hours(43_800)
                }),
            }),
            trust_domain: Some("prod.example.com".to_owned()),
            certificate_ttl: Duration::from_mins(90),
            certificate_renew_at: Percent::new(80.0),
            cross_zone: false,
            networking: Default::default(),
        }
    );
    assert_eq!(spec.trust_domain_or("default"), "prod.example.com");
    // Serializing the typed spec gives a spec that decodes to the same value.
    let again: MeshSpec = decode_spec(&serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
}

/// Transparent proxying's settings: passthrough on and Kuma's range by default; a range
/// that is not one is refused with the field and the reason.
#[test]
fn networking_settings() {
    let spec: MeshSpec = decode_spec(&json!({})).unwrap();
    assert!(spec.networking.outbound.passthrough);
    assert_eq!(
        spec.networking.virtual_ips.range().to_string(),
        "241.0.0.0/16"
    );
    let spec: MeshSpec = decode_spec(&json!({"networking": {
        "outbound": {"passthrough": false}, "virtualIps": {"cidr": "242.1.0.0/24"}}}))
    .unwrap();
    assert!(!spec.networking.outbound.passthrough);
    assert_eq!(
        spec.networking.virtual_ips.range().to_string(),
        "242.1.0.0/24"
    );
    let errors = validate_spec(&json!({"networking": {"virtualIps": {"cidr": "242.1.0.1/24"}}}));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.networking.virtualIps.cidr");
    assert!(errors[0].reason.contains("host bits set"), "{errors:?}");
    let errors = validate_spec(&json!({"networking": {"outbound": {"passthru": true}}}));
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn good_builtin_defaults() {
    let spec: MeshSpec = decode_spec(&json!({"mtls": {}})).unwrap();
    let mtls = spec.mtls.unwrap();
    assert_eq!(mtls.mode, MtlsMode::Strict);
    assert_eq!(mtls.backend, CaBackend::Builtin(BuiltinCa::default()));
    assert_eq!(BuiltinCa::default().ca_validity, "87600h".parse().unwrap());
    assert_eq!(BuiltinCa::default().key_type, KeyType::EcdsaP256);
    let spec: MeshSpec = decode_spec(&json!({"mtls": {"backend": {"type": "builtin"}}})).unwrap();
    assert_eq!(
        spec.mtls.unwrap().backend,
        CaBackend::Builtin(BuiltinCa::default())
    );
}

#[test]
fn good_provided() {
    let value = json!({"mtls": {"mode": "Strict", "backend": {"type": "provided", "certPem": PEM, "keySecretRef": "mesh-ca-key"}}});
    assert_eq!(validate_spec(&value), vec![]);
    let spec: MeshSpec = decode_spec(&value).unwrap();
    assert_eq!(
        spec.mtls.unwrap().backend,
        CaBackend::Provided(ProvidedCa {
            cert_pem: PEM.to_owned(),
            key_secret_ref: "mesh-ca-key".to_owned()
        })
    );
    let json = serde_json::to_value(CaBackend::Provided(ProvidedCa {
        cert_pem: "p".to_owned(),
        key_secret_ref: "k".to_owned(),
    }))
    .unwrap();
    assert_eq!(
        json,
        json!({"type": "provided", "certPem": "p", "keySecretRef": "k"})
    );
}

#[test]
fn bad() {
    let provided = |extra: Value| {
        let mut backend = json!({"type": "provided", "certPem": PEM, "keySecretRef": "ca-key"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                backend.as_object_mut().unwrap().remove(k);
            } else {
                backend[k] = v.clone();
            }
        }
        json!({"mtls": {"backend": backend}})
    };
    let table = [
        (
            json!({"mtls": {"mode": "strict"}}),
            "spec.mtls.mode",
            "unknown variant `strict`, expected one of `Strict`, `Permissive`, `Off`",
        ),
        (
            json!({"mtls": {"mode": 1}}),
            "spec.mtls.mode",
            "invalid type",
        ),
        (
            json!({"mtls": {"backend": {"type": "vault"}}}),
            "spec.mtls.backend.type",
            "unknown variant `vault`, expected `builtin` or `provided`",
        ),
        (
            json!({"mtls": {"backend": {}}}),
            "spec.mtls.backend.type",
            "is required",
        ),
        (
            json!({"mtls": {"backend": {"type": "builtin", "keyType": "rsa1024"}}}),
            "spec.mtls.backend.keyType",
            "unknown variant `rsa1024`",
        ),
        (
            json!({"mtls": {"backend": {"type": "builtin", "caValidity": "10 years"}}}),
            "spec.mtls.backend.caValidity",
            "invalid duration \"10 years\": expected a number followed by a unit",
        ),
        (
            json!({"mtls": {"backend": {"type": "builtin", "caValidity": "1h"}}}),
            "spec.mtls.backend.caValidity",
            "must be at least certificateTtl (24h)",
        ),
        (
            json!({"mtls": {"backend": {"type": "builtin", "certPem": PEM}}}),
            "spec.mtls.backend",
            "`certPem` is only for `type: provided`",
        ),
        (
            json!({"mtls": {"backend": {"type": "builtin", "bogus": 1}}}),
            "spec.mtls.backend.bogus",
            "unknown field `bogus`",
        ),
        (
            json!({"mtls": {"enabled": true}}),
            "spec.mtls.enabled",
            "unknown field `enabled`, expected one of: mode, backend",
        ),
        (
            json!({"certificateTtl": "5 seconds"}),
            "spec.certificateTtl",
            "invalid duration \"5 seconds\": expected a number followed by a unit (ns, us, ms, s, m, h), like 500ms or 2s",
        ),
        (
            json!({"certificateTtl": "30s"}),
            "spec.certificateTtl",
            "must be between 1m and 8760h (got 30s)",
        ),
        (
            json!({"certificateTtl": "8761h"}),
            "spec.certificateTtl",
            "must be between 1m and 8760h (got 8761h)",
        ),
        (
            json!({"certificateRenewAt": 95}),
            "spec.certificateRenewAt",
            "must be between 10% and 90%",
        ),
        (
            json!({"certificateRenewAt": "5%"}),
            "spec.certificateRenewAt",
            "(got 5%)",
        ),
        (
            json!({"certificateRenewAt": "soon"}),
            "spec.certificateRenewAt",
            "invalid percentage \"soon\"",
        ),
        (
            json!({"trustDomain": "Prod_Domain"}),
            "spec.trustDomain",
            "not a valid DNS subdomain",
        ),
        (json!({"trustDomain": "a..b"}), "spec.trustDomain", "empty"),
        (
            json!({"trustDomain": ""}),
            "spec.trustDomain",
            "must not be empty",
        ),
        (
            json!({"crossZone": "no"}),
            "spec.crossZone",
            "expected a boolean",
        ),
        (
            provided(json!({"certPem": null})),
            "spec.mtls.backend.certPem",
            "is required",
        ),
        (
            provided(json!({"certPem": ""})),
            "spec.mtls.backend.certPem",
            "-----BEGIN CERTIFICATE-----",
        ),
        (
            provided(json!({"certPem": "not a pem"})),
            "spec.mtls.backend.certPem",
            "PEM-encoded certificate",
        ),
        (
            provided(json!({"certPem": format!("{PEM}-----BEGIN PRIVATE KEY-----\n")})),
            "spec.mtls.backend.certPem",
            "must not contain a private key",
        ),
        (
            provided(json!({"keySecretRef": null})),
            "spec.mtls.backend.keySecretRef",
            "is required",
        ),
        (
            provided(json!({"keySecretRef": ""})),
            "spec.mtls.backend.keySecretRef",
            "must name the secret",
        ),
        (
            provided(json!({"keySecretRef": "CA Key"})),
            "spec.mtls.backend.keySecretRef",
            "not a valid DNS label",
        ),
        (
            provided(json!({"keyType": "rsa2048"})),
            "spec.mtls.backend",
            "`keyType` is only for `type: builtin`",
        ),
    ];
    for (spec, field, reason) in table {
        let errors = validate_spec(&spec);
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert_eq!(errors[0].field, field, "{spec}: {errors:?}");
        assert!(
            errors[0].reason.contains(reason),
            "{spec}: {}",
            errors[0].reason
        );
    }
}

#[test]
fn reports_all_problems() {
    let errors = validate_spec(&json!({
        "mtls": {"backend": {"type": "provided", "certPem": "x", "keySecretRef": ""}},
        "trustDomain": "-bad",
        "certificateTtl": "0s",
        "certificateRenewAt": 100,
    }));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.trustDomain",
            "spec.certificateTtl",
            "spec.certificateRenewAt",
            "spec.mtls.backend.certPem",
            "spec.mtls.backend.keySecretRef"
        ]
    );
}
