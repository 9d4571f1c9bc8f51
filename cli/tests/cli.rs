//! The `causeway` binary's own behaviour: help, and one clear line on bad usage.
//! (Also makes `cargo test --workspace` build the binary the end-to-end tests run.)

use std::process::Command;

fn causeway(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .env_remove("CAUSEWAY_ADDR")
        .env_remove("CAUSEWAY_TOKEN")
        .env("CAUSEWAY_CONFIG", "/nonexistent/causeway-config.yaml")
        .output()
        .expect("running causeway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands() {
    let (ok, out, _) = causeway(&["--help"]);
    assert!(ok);
    for cmd in ["global-cp", "apply", "get", "delete", "cluster", "config"] {
        assert!(out.contains(cmd), "--help misses {cmd}: {out}");
    }
}

#[test]
fn missing_connection_settings_are_one_clear_line() {
    let (ok, _, err) = causeway(&["get", "meshes"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--addr") && err.contains("CAUSEWAY_ADDR"),
        "{err}"
    );
}

#[test]
fn global_cp_flag_errors_name_the_flag() {
    let (ok, _, err) = causeway(&[
        "global-cp",
        "--node-id",
        "1",
        "--data-dir",
        "/tmp/x",
        "--api-addr",
        "127.0.0.1:1",
        "--raft-addr",
        "127.0.0.1:2",
        "--peer",
        "two=127.0.0.1:3",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--peer") && err.contains("positive integer"),
        "{err}"
    );
    let (ok, _, err) = causeway(&["global-cp", "--data-dir", "/tmp/x"]);
    assert!(!ok && err.contains("--node-id is required"), "{err}");
}

#[test]
fn unknown_types_are_refused_before_any_connection() {
    let (ok, _, err) = causeway(&["get", "widgets", "--addr", "https://127.0.0.1:9"]);
    assert!(
        !ok && err.contains("unknown resource type") && err.contains("meshes"),
        "{err}"
    );
}

#[test]
fn explain_describes_a_field() {
    let (ok, out, err) = causeway(&["explain", "MeshTimeout.spec.to"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("targetRef") && out.contains("default"),
        "{out}"
    );
    let (ok, _, err) = causeway(&["explain", "MeshTimeout.spec.nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}
