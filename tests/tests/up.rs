//! `causeway up` end to end: the one-command quickstart starts a whole mesh, the frontend
//! answers through backend over mTLS, a policy spreads calls over both zones, and SIGTERM
//! stops every process it started while keeping its data directory.

use std::time::Duration;

use anyhow::Context as _;
use causeway_tests::{Proc, eventually};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// `up` stopped with SIGTERM (so it stops its children) however the test ends.
struct Up(Proc);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.terminate(Duration::from_secs(20));
    }
}

/// A block of 241 free ports above Linux's ephemeral range, where no outgoing
/// connection and no other test (they pick below 32000) takes one meanwhile.
fn free_block() -> u16 {
    let seed = std::process::id() as u16;
    for i in 0..200u16 {
        let base = 61000 + (seed.wrapping_add(i * 17) % 16) * 250;
        if (base..=base + 240).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of ports above 61000")
}

fn output(p: &Proc) -> String {
    std::fs::read_to_string(&p.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_mesh_that_answers_across_zones_and_stops_it_all() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("mesh");
    let base = free_block();
    let up = Up(Proc::start(
        tmp.path(),
        "up",
        &[
            "up".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--port-base".into(),
            base.to_string(),
        ],
    )?);
    eventually("causeway up", WAIT, || async {
        output(&up.0).contains("Causeway is up.").then_some(())
    })
    .await
    .with_context(|| up.0.logs())?;
    let out = output(&up.0);
    for step in 1..=5 {
        assert!(
            out.contains(&format!("[{step}/5]")),
            "progress shown: {out}"
        );
    }
    let token = std::fs::read_to_string(data.join("global-tokens/admin-token"))?;
    assert!(out.contains(token.trim()), "the admin token is printed");
    assert!(
        out.contains("causeway apply -f"),
        "commands to try are printed"
    );

    // 1. The frontend answers, through backend, with mTLS between them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let frontend = format!("http://127.0.0.1:{}/", base + 200);
    let v: Value = http.get(&frontend).send().await?.json().await?;
    assert_eq!(v["service"], "frontend");
    assert_eq!(v["upstream"]["service"], "backend");
    assert_eq!(
        v["upstream"]["zone"], "zone-a",
        "calls stay local by default"
    );
    assert_eq!(v["upstream"]["peer"], "spiffe://default/frontend");

    // 2. The printed policy spreads calls over both zones (zone-b through its ingress).
    let ca = data.join("global-1/api-ca.pem");
    let apply = std::process::Command::new(causeway_tests::causeway_bin())
        .args(["apply", "-f"])
        .arg(data.join("backend-across-zones.yaml"))
        .env(
            "CAUSEWAY_ADDR",
            format!("127.0.0.1:{base},127.0.0.1:{}", base + 10),
        )
        .env("CAUSEWAY_TOKEN", token.trim())
        .env("CAUSEWAY_CA_FILE", &ca)
        .output()?;
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    eventually("backend answering from both zones", WAIT, || async {
        let mut zones = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let v: Value = http.get(&frontend).send().await.ok()?.json().await.ok()?;
            zones.insert(v["upstream"]["zone"].as_str()?.to_string());
        }
        (zones.len() == 2).then_some(())
    })
    .await?;

    // SIGTERM: every process it started stops; its data stays.
    let pids_before = children_of(&data);
    assert!(pids_before >= 10, "{pids_before} processes of the mesh");
    up.0.terminate(Duration::from_secs(30))?;
    assert_eq!(children_of(&data), 0, "no process of the mesh is left");
    assert!(http.get(&frontend).send().await.is_err());
    assert!(data.join("global-1").is_dir() && data.join("logs").is_dir());
    Ok(())
}

/// How many live processes have the mesh's data dir on their command line.
fn children_of(data: &std::path::Path) -> usize {
    let needle = data.display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c).replace('\0', " ");
                        c.contains(&needle) && !c.contains(" up ")
                    }) && std::fs::read_to_string(e.path().join("stat"))
                        .is_ok_and(|s| !s.contains(") Z "))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The binary says which commit it was built from, and writes completion scripts and
/// man pages from its own flags.
#[test]
fn the_cli_names_its_commit_and_documents_itself() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(causeway_tests::causeway_bin())
            .args(args)
            .output()
            .expect("running causeway");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = run(&["--version"]);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built from this checkout (a later commit rebuilds it).
        Some(commit) => assert!(version.contains(&format!("({commit})")), "{version}"),
        None => assert!(version.contains("(unknown)"), "{version}"),
    }
    assert!(run(&["completion", "bash"]).contains("complete -F _causeway"));
    assert!(run(&["completion", "zsh"]).starts_with("#compdef causeway"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let dir_arg = dir.path().to_str().expect("a UTF-8 path");
    assert!(run(&["man", "--out-dir", dir_arg]).starts_with("wrote "));
    let page = std::fs::read_to_string(dir.path().join("causeway-apply.1")).expect("a page");
    assert!(page.contains("YAML"), "{page}");
}
