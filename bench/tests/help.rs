//! The benchmark harness explains itself (and `cargo test --workspace` builds it, so it
//! never rots).

#[test]
fn bench_help_names_the_benchmarks() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_causeway-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("global"));
}
