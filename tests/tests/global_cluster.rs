//! End to end: three real `causeway global-cp` processes on loopback.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use causeway_tests::{GlobalCluster, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn mesh(name: &str) -> Value {
    json!({"type": "Mesh", "name": name, "labels": {"team": "core"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_node_are_read_back_from_every_node() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();

    // The tokens are handed out once, private, outside every data dir; no node keeps one.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let tokens = &c.nodes[0].token_dir;
        for f in ["admin-token", "readonly-token"] {
            let meta = std::fs::metadata(tokens.join(f)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
        for n in &c.nodes {
            assert!(!n.dir.join("admin-token").exists(), "node {}", n.id);
            assert!(n.dir.join("api-ca.pem").exists(), "node {}", n.id);
        }
    }

    for i in 0..3 {
        let name = format!("via-node-{}", c.nodes[i].id);
        let (s, v) = c
            .call(
                i,
                Method::PUT,
                &format!("/meshes/{name}"),
                Some(&mesh(&name)),
            )
            .await
            .unwrap();
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(v["version"].as_u64().unwrap() > 0);
        assert_eq!(v["origin"], "global");
    }
    // Linearizable reads: right after the writes, every node returns all three.
    for i in 0..3 {
        for j in 0..3 {
            let name = format!("via-node-{}", c.nodes[j].id);
            let (s, v) = c
                .call(i, Method::GET, &format!("/meshes/{name}"), None)
                .await
                .unwrap();
            assert_eq!(
                s,
                StatusCode::OK,
                "node {} reading {name}: {v}",
                c.nodes[i].id
            );
        }
        let (s, v) = c
            .call(i, Method::GET, "/meshes?labels=team=core", None)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    }

    // Optimistic concurrency.
    let (_, v) = c
        .call(0, Method::GET, "/meshes/via-node-1", None)
        .await
        .unwrap();
    let version = v["version"].as_u64().unwrap();
    let mut stale = mesh("via-node-1");
    stale["version"] = json!(version - 1);
    let (s, v) = c
        .call(1, Method::PUT, "/meshes/via-node-1", Some(&stale))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["errors"][0]["field"], "version");
    let mut fresh = mesh("via-node-1");
    fresh["version"] = json!(version);
    let (s, v) = c
        .call(1, Method::PUT, "/meshes/via-node-1", Some(&fresh))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["version"].as_u64().unwrap() > version);

    // Pagination walks every item exactly once.
    for k in 0..7 {
        let name = format!("page-{k}");
        c.call(
            0,
            Method::PUT,
            &format!("/meshes/{name}"),
            Some(&json!({"type": "Mesh", "name": name})),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (s, v) = c
            .call(2, Method::GET, &format!("/meshes?limit=3{after}"), None)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string()),
        );
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 10);

    // OpenAPI and cluster status.
    let (s, v) = c.call(0, Method::GET, "/openapi.json", None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/meshes/{name}"]["put"].is_object(), "{v}");
    assert!(
        v["paths"]["/meshes/{mesh}/meshtimeouts/{name}"]["put"].is_object(),
        "every policy type is served"
    );
    assert!(
        v["components"]["schemas"]["MeshTimeout"].is_object(),
        "per-type JSON Schema"
    );
    let (_, v) = c.call(0, Method::GET, "/cluster", None).await.unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["leader_id"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_bad_documents_change_nothing() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    let readonly = std::fs::read_to_string(c.nodes[0].token_dir.join("readonly-token")).unwrap();
    let body = mesh("guarded");
    let cases = [
        (None, StatusCode::UNAUTHORIZED),
        (Some("cw_wrong"), StatusCode::UNAUTHORIZED),
        (Some(readonly.trim()), StatusCode::FORBIDDEN),
    ];
    for (token, want) in cases {
        let (s, v) = c
            .call_with(0, token, Method::PUT, "/meshes/guarded", Some(&body))
            .await
            .unwrap();
        assert_eq!(s, want, "{v}");
        assert_eq!(v["errors"][0]["field"], "Authorization", "{v}");
    }
    // The read-only token reads.
    let (s, _) = c
        .call_with(0, Some(readonly.trim()), Method::GET, "/meshes", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);

    // Invalid documents: 400 with the field path, nothing written.
    let bad = [
        (
            json!({"type": "Mesh", "name": "Bad_Name"}),
            "/meshes/Bad_Name",
            "name",
        ),
        (
            json!({"type": "Mesh", "name": "guarded", "spec": {"mtls": {"mode": "Sometimes"}}}),
            "/meshes/guarded",
            "spec",
        ),
        (
            json!({"type": "Mesh", "name": "guarded", "nmae": "x"}),
            "/meshes/guarded",
            "",
        ),
        (
            json!({"type": "Zone", "name": "guarded"}),
            "/meshes/guarded",
            "type",
        ),
    ];
    for (doc, path, field) in bad {
        let (s, v) = c.call(1, Method::PUT, path, Some(&doc)).await.unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{doc}: {v}");
        let f = v["errors"][0]["field"].as_str().unwrap();
        assert!(
            f.starts_with(field),
            "{doc}: field {f:?}, want {field:?}: {v}"
        );
        assert!(!v["errors"][0]["reason"].as_str().unwrap().is_empty());
    }
    let (s, _) = c
        .call(2, Method::GET, "/meshes/guarded", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = c.call(2, Method::GET, "/meshes", None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
}

/// Writers hammer every node; the leader is killed with SIGKILL midway. Every write
/// that was acknowledged must be on every node afterwards, including the restarted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_the_leader() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    let leader = c.leader().await.unwrap();
    let c = Arc::new(tokio::sync::RwLock::new(c));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let c = c.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{k}");
                k += 1;
                let guard = c.read().await;
                // Writer w talks to node w % 3 and moves on when it is down.
                let target = (w + k) % 3;
                if !guard.nodes[target].is_running() {
                    continue;
                }
                if let Ok((StatusCode::CREATED, _)) = guard
                    .call(
                        target,
                        Method::PUT,
                        &format!("/meshes/{name}"),
                        Some(&mesh(&name)),
                    )
                    .await
                {
                    acked.push(name);
                }
            }
            acked
        }));
    }
    // Let writes flow, then kill the leader mid-stream.
    eventually("some writes", Duration::from_secs(20), || async {
        let g = c.read().await;
        let (_, v) = g
            .call(leader, Method::GET, "/meshes?stale=true&limit=50", None)
            .await
            .ok()?;
        (v["items"].as_array()?.len() >= 20).then_some(())
    })
    .await
    .unwrap();
    // Killed while writers are mid-request to it.
    c.read().await.nodes[leader].kill();
    // Writes continue through the survivors.
    let survivor = (leader + 1) % 3;
    let before = {
        let g = c.read().await;
        count(&g, survivor).await
    };
    eventually(
        "writes after the leader was killed",
        Duration::from_secs(20),
        || async {
            let g = c.read().await;
            (count(&g, survivor).await > before + 20).then_some(())
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 40,
        "only {} writes were acknowledged",
        acked.len()
    );

    // Restart the killed node; it catches up.
    let mut g = c.write().await;
    let peers = g.peers_of(leader);
    g.nodes[leader].start(&peers, false).unwrap();
    g.wait_ready(leader).await.unwrap();
    drop(g);
    let g = c.read().await;
    for i in 0..3 {
        let names = eventually(
            &format!("node {} has every acknowledged write", g.nodes[i].id),
            Duration::from_secs(30),
            || async {
                let names = all_names(&g, i).await?;
                acked.iter().all(|a| names.contains(a)).then_some(names)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}{}", g.logs()));
        assert!(names.len() >= acked.len());
    }
}

async fn count(c: &GlobalCluster, i: usize) -> usize {
    all_names(c, i).await.map_or(0, |n| n.len())
}

async fn all_names(c: &GlobalCluster, i: usize) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut after = String::new();
    loop {
        let (s, v) = c
            .call(
                i,
                Method::GET,
                &format!("/meshes?stale=true&limit=1000{after}"),
                None,
            )
            .await
            .ok()?;
        if s != StatusCode::OK {
            return None;
        }
        names.extend(
            v["items"]
                .as_array()?
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string)),
        );
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return Some(names),
        }
    }
}

/// A disk that fills does not fail a node in the middle of a write, nor leave it looking
/// healthy. The node's data moves to a 64 MiB tmpfs, which a file then fills but for
/// 8 MiB, under the node's 16 MiB reserve: writes are refused with 507 and the reason,
/// reads go on, and once the file is gone writes are taken again, without a restart.
/// With no reserve, a disk that does fill stops the Raft thread, and the process exits
/// non-zero, saying so; it starts again on the same data once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_refuses_writes_until_space_returns() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut c = GlobalCluster::start(1, &["--disk-reserve-mib", "16"]).await?;
    let (s, _) = c
        .call_retry(Method::PUT, "/meshes/before", Some(&mesh("before")))
        .await?;
    assert_eq!(s, StatusCode::CREATED);
    // Move the node's data onto a 64 MiB tmpfs.
    c.nodes[0].kill();
    let dir = c.nodes[0].dir.clone();
    let moved = dir.with_extension("orig");
    std::fs::rename(&dir, &moved)?;
    std::fs::create_dir(&dir)?;
    let _tmpfs = causeway_tests::Tmpfs::mount(&dir, "64m")?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(moved.join("."))
        .arg(&dir)
        .status()?;
    anyhow::ensure!(copied.success(), "copying the data");
    c.nodes[0].start(&[], false)?;
    c.wait_ready(0).await?;
    let (s, v) = c
        .call_retry(Method::PUT, "/meshes/roomy", Some(&mesh("roomy")))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Under the reserve: refused, saying why; the node stays up and reads.
    let filler = dir.join("filler");
    causeway_tests::fill_disk(&filler, 8 << 20)?;
    let refusal = eventually(
        "writes refused for want of space",
        Duration::from_secs(30),
        || async {
            let (s, v) = c
                .call(0, Method::PUT, "/meshes/during", Some(&mesh("during")))
                .await
                .ok()?;
            (s == StatusCode::INSUFFICIENT_STORAGE).then_some(v)
        },
    )
    .await
    .with_context(|| c.logs())?;
    let why = refusal["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("reserve of 16 MiB") && why.contains("--disk-reserve-mib"),
        "{refusal}"
    );
    assert!(c.nodes[0].exited().is_none(), "the node is still up");
    let (s, _) = c.call(0, Method::GET, "/meshes/before", None).await?;
    assert_eq!(s, StatusCode::OK);
    assert!(c.metrics(0).await?.contains("causeway_disk_low 1"));
    let (_, status) = c.call(0, Method::GET, "/cluster", None).await?;
    assert_eq!(status["disk"]["writes_refused"], true, "{status}");
    // (Writes before the once-a-second check saw the disk low went through.)
    let (s, _) = c
        .call(0, Method::PUT, "/meshes/refused", Some(&mesh("refused")))
        .await?;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE);
    let (s, _) = c.call(0, Method::GET, "/meshes/refused", None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused write changed nothing");

    // Space returns: writes are taken again, the same process.
    std::fs::remove_file(&filler)?;
    eventually("writes taken again", Duration::from_secs(30), || async {
        let (s, _) = c
            .call(0, Method::PUT, "/meshes/after", Some(&mesh("after")))
            .await
            .ok()?;
        (s == StatusCode::CREATED).then_some(())
    })
    .await?;
    assert!(c.logs().contains("writes are taken"), "{}", c.logs());

    // No reserve: the disk does fill, and the node exits non-zero rather than linger.
    c.nodes[0].kill();
    c.nodes[0].set_extra_args(&["--disk-reserve-mib", "0"]);
    c.nodes[0].start(&[], false)?;
    c.wait_ready(0).await?;
    causeway_tests::fill_disk(&filler, 0)?;
    let status = eventually("the node exiting", Duration::from_secs(30), || async {
        let exited = c.nodes[0].exited();
        if exited.is_none() {
            let _ = c
                .call(0, Method::PUT, "/meshes/full", Some(&mesh("full")))
                .await;
        }
        exited
    })
    .await;
    let log = std::fs::read_to_string(c.nodes[0].log_path()).unwrap_or_default();
    let status = status.with_context(|| log.clone())?;
    assert!(!status.success(), "{status:?}");
    assert!(log.contains("storage failure"), "{log}");
    assert!(log.contains("the Raft thread stopped"), "{log}");
    std::fs::remove_file(&filler)?;
    c.nodes[0].start(&[], false)?;
    c.wait_ready(0).await?;
    let (s, v) = c
        .call_retry(Method::PUT, "/meshes/last", Some(&mesh("last")))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = c.call_retry(Method::GET, "/meshes/after", None).await?;
    assert_eq!(s, StatusCode::OK, "the data from before survived");
    Ok(())
}

/// A damaged store (here its CURRENT file overwritten) stops a global node and a zone at
/// start with an error that names the data dir, says it is damaged and what to do; the
/// process exits non-zero rather than serve or start from empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_dir_is_named_at_start() -> anyhow::Result<()> {
    let mut c = GlobalCluster::start(1, &[]).await?;
    let zone = causeway_tests::ZoneCp::new(&c, "zone-a", vec![c.nodes[0].kds_url()], &[]).await?;
    zone.start()?;
    zone.call(Method::GET, "/status", None).await?;
    zone.kill();
    c.nodes[0].kill();
    for db in [c.nodes[0].dir.join("db"), zone.dir.join("db")] {
        std::fs::write(db.join("CURRENT"), "not a manifest name\n")?;
    }
    c.nodes[0].start(&[], false)?;
    zone.start()?;
    let status = eventually("the node to exit", Duration::from_secs(30), || async {
        c.nodes[0].exited()
    })
    .await?;
    assert!(!status.success());
    eventually("the zone to exit", Duration::from_secs(30), || async {
        zone.exited().then_some(())
    })
    .await?;
    for (log, dir) in [
        (c.nodes[0].log_path(), c.nodes[0].dir.join("db")),
        (zone.log_path(), zone.dir.join("db")),
    ] {
        let log = std::fs::read_to_string(log)?;
        assert!(
            log.contains(&format!("{} is damaged", dir.display()))
                && log.contains("restore the data dir from a backup"),
            "{log}"
        );
    }
    Ok(())
}
