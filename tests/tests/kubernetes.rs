//! Kubernetes manifests as a user gets them: `causeway install crds`, run as a process,
//! prints one CRD per resource type, and each is valid against Kubernetes 1.33's own
//! OpenAPI schema, checked offline in strict mode (unknown fields refused) by
//! `kubernetes-validate` from PyPI. No API server can run here; `kubectl` cannot check a
//! manifest without one (its `--dry-run=client` still downloads the server's schema).
//!
//! The validator is `$CAUSEWAY_KUBERNETES_VALIDATE` (`make test` installs it in a venv
//! and sets it), else `kubernetes-validate` on PATH; without one this test fails, it
//! never skips.

use std::path::PathBuf;
use std::process::Command;

use causeway_tests::causeway_bin;

/// The `kubernetes-validate` executable, or a failure that says how to get one.
fn validator() -> PathBuf {
    causeway_tests::external_tool(
        "CAUSEWAY_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        "`pip install kubernetes-validate==1.37.0`; `make test` installs it",
    )
}

/// Validates a manifest file against Kubernetes 1.33: (success, what it printed).
fn validate(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(file)
        .output()
        .expect("kubernetes-validate runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn install_crds_prints_a_valid_crd_for_every_resource_type() {
    let out = Command::new(causeway_bin())
        .args(["install", "crds"])
        .output()
        .expect("causeway runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");

    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).expect("each document is YAML"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(docs.len(), causeway_api::types().len(), "{names:?}");
    for info in causeway_api::types() {
        let name = format!("{}.causeway.io", info.plural);
        let doc = docs
            .iter()
            .find(|d| d["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no CRD {name} in {names:?}"));
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(doc["spec"]["names"]["kind"], info.kind);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("crds.yaml");
    std::fs::write(&file, &text).expect("written");
    let (ok, report) = validate(&file);
    assert!(ok, "kubernetes-validate refused the CRDs:\n{report}");
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, docs.len(), "{report}");

    // The validator is strict: one unknown field in one CRD and it says so.
    let broken = text.replacen("  scope: ", "  scopes: Cluster\n  scope: ", 1);
    std::fs::write(&file, broken).expect("written");
    let (ok, report) = validate(&file);
    assert!(!ok, "a CRD with an unknown field passed:\n{report}");
    assert!(report.contains("'scopes' was unexpected"), "{report}");
}

#[test]
fn install_help_says_what_the_crds_are() {
    let out = Command::new(causeway_bin())
        .args(["install", "crds", "--help"])
        .output()
        .expect("causeway runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("kubectl apply -f -"), "{help}");
    assert!(help.contains("causeway.io/mesh"), "{help}");
}
