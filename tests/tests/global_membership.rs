//! End to end: membership changes, snapshots for new members, minority partitions, the CLI.

use std::time::Duration;

use causeway_tests::{GlobalCluster, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn put_meshes(c: &GlobalCluster, node: usize, prefix: &str, n: usize) {
    for k in 0..n {
        let name = format!("{prefix}-{k}");
        let (s, v) = c
            .call(
                node,
                Method::PUT,
                &format!("/meshes/{name}"),
                Some(&json!({"type": "Mesh", "name": name})),
            )
            .await
            .unwrap();
        assert!(s.is_success(), "{s} {v}");
    }
}

async fn stale_count(c: &GlobalCluster, i: usize) -> Option<usize> {
    let (s, v) = c
        .call(i, Method::GET, "/meshes?stale=true&limit=1000", None)
        .await
        .ok()?;
    (s == StatusCode::OK).then(|| v["items"].as_array().map_or(0, Vec::len))
}

/// A node added with `cluster add-node` after the log was compacted starts with an empty
/// data dir and catches up from a snapshot; a removed node no longer votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_after_compaction_and_remove_node() {
    let mut c = GlobalCluster::start(3, &["--snapshot-threshold", "20"])
        .await
        .unwrap();
    put_meshes(&c, 0, "before", 60).await;
    let leader = c.leader().await.unwrap();
    let (_, v) = c.call(leader, Method::GET, "/cluster", None).await.unwrap();
    assert!(
        v["first_log_index"].as_u64().unwrap() > 1,
        "the log was compacted: {v}"
    );

    // Add node 4 with the CLI, then start it empty with its join token: it gets its Raft
    // certificate, the members and the seal key from the cluster (its seal key path is
    // its own, and empty).
    let i4 = c.new_node(4, &["--snapshot-threshold", "20"]);
    let (raft4, api4) = (c.nodes[i4].raft.to_string(), c.nodes[i4].api.to_string());
    let token_file = c.tmp.path().join("node-4.join");
    let (ok, out, err) = c
        .cli(&[
            "cluster",
            "add-node",
            "--id",
            "4",
            "--raft-addr",
            &raft4,
            "--api-addr",
            &api4,
            "--token-out",
            token_file.to_str().unwrap(),
        ])
        .unwrap();
    assert!(ok, "add-node failed: {out}{err}");
    assert!(out.contains("--join-token-file"), "{out}");
    c.nodes[i4].seal_key = c.tmp.path().join("node-4.seal.key");
    c.nodes[i4].start_joining(&token_file).unwrap();
    c.wait_ready(i4).await.unwrap();
    eventually(
        "node 4 caught up from the snapshot",
        Duration::from_secs(30),
        || async { (stale_count(&c, i4).await? >= 60).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}{}", c.logs()));
    // The token hashes came with the snapshot: node 4 takes the admin token, and keeps
    // no token file of its own.
    let (s, _) = c.call(i4, Method::GET, "/meshes", None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(!c.nodes[i4].dir.join("admin-token").exists());

    let (ok, out, err) = c.cli(&["cluster", "status"]).unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("leader") || l.contains("follower"))
            .count(),
        5,
        "{out}"
    ); // header + 4

    // Remove a follower that is not node 4; it must stop counting as a voter.
    let leader = c.leader().await.unwrap();
    let gone = (0..3).find(|i| *i != leader).unwrap();
    let gone_id = c.nodes[gone].id.to_string();
    let (ok, out, err) = c.cli(&["cluster", "remove-node", &gone_id]).unwrap();
    assert!(ok, "remove-node failed: {out}{err}");
    let (_, v) = c.call(leader, Method::GET, "/cluster", None).await.unwrap();
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&c.nodes[gone].id), "{v}");
    // With the removed node stopped too, the remaining three still make progress...
    c.nodes[gone].kill();
    put_meshes(&c, leader, "after-remove", 5).await;
    // ...and with one more of them stopped, two of three voters are still a majority.
    let other = (0..c.nodes.len())
        .find(|i| *i != leader && *i != gone)
        .unwrap();
    c.nodes[other].kill();
    put_meshes(&c, leader, "two-of-three", 3).await;
}

/// A leader cut off from the majority (SIGSTOP on the others) cannot acknowledge writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_acknowledge_writes() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    put_meshes(&c, 0, "ok", 1).await;
    let leader = c.leader().await.unwrap();
    for (i, n) in c.nodes.iter().enumerate() {
        if i != leader {
            n.pause(true);
        }
    }
    let (s, v) = c
        .call(
            leader,
            Method::PUT,
            "/meshes/minority",
            Some(&json!({"type": "Mesh", "name": "minority"})),
        )
        .await
        .unwrap();
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "a minority acknowledged a write: {v}"
    );
    // A linearizable read fails too; a stale read still answers.
    let (s, _) = c
        .call(leader, Method::GET, "/meshes/ok-0", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = c
        .call(leader, Method::GET, "/meshes/ok-0?stale=true", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    for n in &c.nodes {
        n.pause(false);
    }
    // Healed: writes work again, and the unacknowledged write may or may not exist, but the
    // cluster agrees on it.
    eventually("writes after healing", Duration::from_secs(30), || async {
        let (s, _) = c
            .call(
                0,
                Method::PUT,
                "/meshes/healed",
                Some(&json!({"type": "Mesh", "name": "healed"})),
            )
            .await
            .ok()?;
        s.is_success().then_some(())
    })
    .await
    .unwrap();
}

/// The CLI: apply several documents, get in every format, delete, clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_apply_get_delete() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    let file = c.tmp.path().join("res.yaml");
    std::fs::write(
        &file,
        "type: Mesh\nname: default\nspec:\n  mtls:\n    mode: Strict\n    backend: {type: builtin}\n---\ntype: Zone\nname: zone-a\nlabels: {cloud: aws}\nspec:\n  enabled: true\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("Mesh default created"), "{out}");
    assert!(out.contains("Zone zone-a created"), "{out}");
    let (ok, out, _) = c.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(ok && out.contains("Mesh default configured"), "{out}");

    let (ok, out, err) = c.cli(&["get", "meshes"]).unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("NAME") && out.contains("default"), "{out}");
    let (ok, out, _) = c.cli(&["get", "mesh", "default", "-o", "yaml"]).unwrap();
    assert!(
        ok && out.contains("mode: Strict") && out.contains("version:"),
        "{out}"
    );
    let (ok, out, _) = c
        .cli(&["get", "zones", "-o", "json", "-l", "cloud=aws"])
        .unwrap();
    assert!(ok && out.contains("\"zone-a\""), "{out}");

    // A bad document: one line, the field path, non-zero exit, nothing applied.
    std::fs::write(
        &file,
        "type: Mesh\nname: second\n---\ntype: Mesh\nname: Bad_Name\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(!ok, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("name"), "{err}");
    let (ok, _, err) = c.cli(&["get", "mesh", "second"]).unwrap();
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, err) = c.cli(&["delete", "zone", "zone-a"]).unwrap();
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, _, err) = c.cli(&["get", "nonsense"]).unwrap();
    assert!(!ok && err.contains("unknown resource type"), "{err}");
}

/// No silent no-ops: every field of every policy kind is enforced now (the last, a
/// MeshMetric endpoint over the mesh's mTLS, too), so writes carry no `warnings`,
/// `causeway apply` prints none and `causeway explain` says "ENFORCED: yes". (The
/// warning machinery itself is unit-tested in `causeway-api`'s `enforcement`, on a
/// table of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_enforced_so_writes_carry_no_warning() {
    let c = GlobalCluster::start(1, &[]).await.unwrap();
    let (s, _) = c
        .call(
            0,
            Method::PUT,
            "/meshes/default",
            Some(&json!({"type": "Mesh", "name": "default"})),
        )
        .await
        .unwrap();
    assert!(s.is_success(), "{s}");
    let metric = json!({"type": "MeshMetric", "mesh": "default", "name": "to-prometheus",
        "spec": {"targetRef": {"kind": "Mesh"},
            "default": {"backends": [{"type": "Prometheus", "prometheus": {"mtls": true}}]}}});
    let (s, body) = c
        .call(
            0,
            Method::PUT,
            "/meshes/default/meshmetrics/to-prometheus",
            Some(&metric),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(body["version"].as_u64().is_some(), "{body}");
    assert!(body.get("warnings").is_none(), "{body}");

    let file = c.tmp.path().join("policies.yaml");
    std::fs::write(
        &file,
        "type: MeshCircuitBreaker\nmesh: default\nname: per-caller\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {connectionLimits: {maxConnections: 10}}\n  - targetRef: {kind: MeshService, name: web}\n    default: {connectionLimits: {maxConnections: 5}}\n---\ntype: MeshMetric\nmesh: default\nname: to-prometheus-2\nspec:\n  targetRef: {kind: Mesh}\n  default: {backends: [{type: Prometheus, prometheus: {tls: {mode: ActiveMTLSBackend}}}]}\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("MeshCircuitBreaker per-caller in mesh default created"),
        "{out}"
    );
    assert!(
        out.contains("MeshMetric to-prometheus-2 in mesh default created"),
        "{out}"
    );
    assert!(!err.contains("Warning"), "{err}");

    let (ok, out, _) = c.cli(&["explain", "MeshMetric"]).unwrap();
    assert!(ok && out.contains("ENFORCED: yes"), "{out}");
}

/// Raft between nodes in mutual TLS with the operator's own certificates (from
/// `causeway cluster gen-certs`), the cluster formed by three nodes at once with --peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_over_mutual_tls_with_certificates_of_ones_own() {
    let certs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(causeway_tests::causeway_bin())
        .args(["cluster", "gen-certs", "--nodes", "1,2,3", "--out"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let key_mode = std::fs::metadata(certs.path().join("node-1-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let p = |f: String| certs.path().join(f).to_string_lossy().into_owned();
    let c = GlobalCluster::start_formed_at_once(3, |id| {
        vec![
            "--raft-tls-ca".into(),
            p("ca.pem".into()),
            "--raft-tls-cert".into(),
            p(format!("node-{id}.pem")),
            "--raft-tls-key".into(),
            p(format!("node-{id}-key.pem")),
        ]
    })
    .await
    .unwrap();
    put_meshes(&c, 1, "tls", 3).await;
    for i in 0..3 {
        let (s, _) = c.call(i, Method::GET, "/meshes/tls-2", None).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        let log = std::fs::read_to_string(c.nodes[i].log_path()).unwrap();
        assert!(
            !log.contains("NOT encrypted"),
            "node {} warned although TLS is on",
            c.nodes[i].id
        );
    }
    // Such a cluster issues no join tokens (it cannot sign certificates): add-node says
    // how to add a node with the operator's certificates instead.
    let mut c = c;
    let i4 = c.new_node(4, &[]);
    let (raft4, api4) = (c.nodes[i4].raft.to_string(), c.nodes[i4].api.to_string());
    let (ok, out, err) = c
        .cli(&[
            "cluster",
            "add-node",
            "--id",
            "4",
            "--raft-addr",
            &raft4,
            "--api-addr",
            &api4,
        ])
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("--raft-tls-cert") && !out.contains("join token"),
        "{out}"
    );
}

/// Every example in `examples/` (one per resource kind) is accepted by the global API
/// through `causeway apply`, and reads back with the same spec; but what the cluster
/// allocates itself (a VirtualIp) is refused, and there is one all the same, allocated
/// for the example Dataplane's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_policy_is_served_by_the_global_api() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    // The Mesh first: policies live in it.
    files.sort_by_key(|p| p.file_name() != Some(std::ffi::OsStr::new("mesh.yaml")));
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let allocated = causeway_api::Resource::from_yaml_documents(&text)
            .unwrap()
            .iter()
            .any(|r| {
                causeway_api::type_info(&r.kind)
                    .is_some_and(|t| t.role == causeway_api::Role::Allocated)
            });
        let (ok, out, err) = c.cli(&["apply", "-f", f.to_str().unwrap()]).unwrap();
        if allocated {
            assert!(
                !ok && err.contains("allocated by the global control plane"),
                "{}: {out}{err}",
                f.display()
            );
        } else {
            assert!(ok, "{}: {out}{err}", f.display());
        }
    }
    for t in causeway_api::types() {
        let (ok, out, err) = c
            .cli(&["get", t.plural, "-m", "default", "-o", "json"])
            .unwrap();
        assert!(ok, "{}: {err}", t.kind);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", t.kind));
        assert!(
            !v.as_array().unwrap().is_empty(),
            "no {} was stored",
            t.kind
        );
    }
}
