//! End to end: three global nodes and zone control planes as real processes on loopback,
//! syncing over KDS (gRPC over TLS, zone certificates from zone tokens).

use std::time::Duration;

use anyhow::Context as _;
use causeway_tests::{GlobalCluster, ZoneCp, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(30);

fn timeout_policy(name: &str, connect: &str) -> Value {
    json!({
        "type": "MeshTimeout", "mesh": "default", "name": name,
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": connect}}]}
    })
}

async fn put(c: &GlobalCluster, path: &str, body: &Value) -> anyhow::Result<u64> {
    let (s, v) = c.call_retry(Method::PUT, path, Some(body)).await?;
    anyhow::ensure!(s.is_success(), "PUT {path}: {s} {v}");
    v["version"].as_u64().context("version")
}

async fn delete(c: &GlobalCluster, path: &str) -> anyhow::Result<()> {
    let (s, v) = c.call_retry(Method::DELETE, path, None).await?;
    anyhow::ensure!(s == StatusCode::NO_CONTENT, "DELETE {path}: {s} {v}");
    Ok(())
}

async fn mesh(c: &GlobalCluster) -> anyhow::Result<u64> {
    put(
        c,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
    )
    .await
}

async fn cluster() -> anyhow::Result<GlobalCluster> {
    GlobalCluster::start(3, &["--kds-heartbeat", "500ms"]).await
}

/// The zone list on global, by name.
async fn zones(c: &GlobalCluster) -> anyhow::Result<std::collections::HashMap<String, Value>> {
    let (s, v) = c.call_retry(Method::GET, "/zones", None).await?;
    anyhow::ensure!(s == StatusCode::OK, "{s} {v}");
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|z| (z["name"].as_str().unwrap_or("").to_string(), z))
        .collect())
}

async fn wait_revision(z: &ZoneCp, revision: u64) -> anyhow::Result<()> {
    eventually(
        &format!("zone {} at revision {revision}", z.name),
        SYNC,
        || async {
            let s = z.status().await.ok()?;
            (s["revision"].as_u64()? >= revision).then_some(())
        },
    )
    .await
    .with_context(|| z.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reach_every_zone_and_zone_dataplanes_reach_global() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    let mut zs = Vec::new();
    for (i, name) in ["zone-a", "zone-b", "zone-c"].iter().enumerate() {
        // Each zone starts at a different global node.
        let z = ZoneCp::new(&c, name, c.kds_urls_from(i), &[]).await?;
        z.start()?;
        zs.push(z);
    }
    let v = put(
        &c,
        "/meshes/default/meshtimeouts/t1",
        &timeout_policy("t1", "2s"),
    )
    .await?;
    for z in &zs {
        let got = z
            .wait_for("/meshes/default/meshtimeouts/t1", true, SYNC)
            .await?;
        assert_eq!(got["spec"]["to"][0]["default"]["connectTimeout"], "2s");
        assert_eq!(got["version"], v, "the zone holds global's version");
        assert_eq!(got["origin"], "global");
    }
    // An update and a deletion propagate.
    put(
        &c,
        "/meshes/default/meshtimeouts/t1",
        &timeout_policy("t1", "9s"),
    )
    .await?;
    put(
        &c,
        "/meshes/default/meshtimeouts/t2",
        &timeout_policy("t2", "1s"),
    )
    .await?;
    for z in &zs {
        eventually("t1 updated", SYNC, || async {
            let (_, v) = z
                .call(Method::GET, "/meshes/default/meshtimeouts/t1", None)
                .await
                .ok()?;
            (v["spec"]["to"][0]["default"]["connectTimeout"] == "9s").then_some(())
        })
        .await?;
        z.wait_for("/meshes/default/meshtimeouts/t2", true, SYNC)
            .await?;
    }
    delete(&c, "/meshes/default/meshtimeouts/t2").await?;
    for z in &zs {
        z.wait_for("/meshes/default/meshtimeouts/t2", false, SYNC)
            .await?;
        // Global resources are read-only in a zone.
        let (s, v) = z
            .call(Method::DELETE, "/meshes/default/meshtimeouts/t1", None)
            .await?;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("global control plane"),
            "{v}"
        );
    }

    // Each zone gets its own intermediate CA for the mTLS mesh, signed by the mesh root.
    for z in &zs {
        eventually("an intermediate CA", SYNC, || async {
            let s = z.status().await.ok()?;
            (s["intermediates"][0]["mesh"] == "default").then_some(())
        })
        .await
        .with_context(|| z.logs())?;
    }

    // A dataplane registered in zone-a appears on global with the zone as origin.
    let dp = causeway_api::Resource::from_yaml(include_str!("../../examples/dataplane.yaml"))?;
    let path = format!("/meshes/default/dataplanes/{}", dp.name);
    let (s, v) = zs[0]
        .call(Method::PUT, &path, Some(&serde_json::to_value(&dp)?))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let on_global = eventually("the dataplane on global", SYNC, || async {
        match c.call_retry(Method::GET, &path, None).await {
            Ok((StatusCode::OK, v)) => Some(v),
            _ => None,
        }
    })
    .await
    .with_context(|| zs[0].logs())?;
    assert_eq!(on_global["origin"], "zone-a");
    // Global refuses to change what a zone owns.
    let (s, v) = c.call_retry(Method::DELETE, &path, None).await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Other zones do not receive zone-a's dataplanes.
    let (s, _) = zs[1].call(Method::GET, &path, None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // GET /zones: all three online, caught up, zone-a with one dataplane.
    eventually("zone status on global", SYNC, || async {
        let zones = zones(&c).await.ok()?;
        let all = ["zone-a", "zone-b", "zone-c"].iter().all(|n| {
            let st = &zones
                .get(*n)
                .map(|z| z["status"].clone())
                .unwrap_or_default();
            st["online"] == true && st["lag"] == 0 && st["version"] != ""
        });
        let dp = zones.get("zone-a")?["status"]["dataplanes"] == 1;
        (all && dp).then_some(())
    })
    .await
    .with_context(|| c.logs())?;
    let (ok, out, err) = c.cli(&["get", "zones"])?;
    assert!(ok, "{err}");
    assert_eq!(out.matches("online").count(), 3, "{out}");
    let (ok, out, err) = c.cli(&["inspect", "zone", "zone-a"])?;
    assert!(ok, "{err}");
    assert!(out.contains("online: true"), "{out}");

    // Any global node answers a config dump, asking the zone over its stream (forwarded
    // to the node that serves the zone when needed).
    for i in 0..c.nodes.len() {
        let (s, v) = c
            .call(i, Method::GET, "/zones/zone-a/config-dump", None)
            .await?;
        assert_eq!(s, StatusCode::OK, "node {i}: {v}");
        assert_eq!(v["status"]["zone"], "zone-a", "{v}");
        assert_eq!(v["owned"][0]["name"], dp.name.as_str(), "{v}");
    }

    // A zone-origin policy is reported up, and not sent to other zones.
    let mut retry = timeout_policy("zone-b-local", "3s");
    retry["type"] = json!("MeshTimeout");
    let (s, v) = zs[1]
        .call(
            Method::PUT,
            "/meshes/default/meshtimeouts/zone-b-local",
            Some(&retry),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A zone-local write is checked as global checks it: every field is enforced, so
    // it carries no warning.
    let metric = json!({"type": "MeshMetric", "mesh": "default", "name": "zone-b-metric",
        "spec": {"targetRef": {"kind": "Mesh"},
            "default": {"backends": [{"type": "Prometheus", "prometheus": {"mtls": true}}]}}});
    let (s, written) = zs[1]
        .call(
            Method::PUT,
            "/meshes/default/meshmetrics/zone-b-metric",
            Some(&metric),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{written}");
    assert!(written.get("warnings").is_none(), "{written}");
    let got = eventually("zone-b's policy on global", SYNC, || async {
        match c
            .call_retry(
                Method::GET,
                "/meshes/default/meshtimeouts/zone-b-local",
                None,
            )
            .await
        {
            Ok((StatusCode::OK, v)) => Some(v),
            _ => None,
        }
    })
    .await?;
    assert_eq!(got["origin"], "zone-b");
    let marker = put(
        &c,
        "/meshes/default/meshtimeouts/marker",
        &timeout_policy("marker", "1s"),
    )
    .await?;
    wait_revision(&zs[0], marker).await?;
    let (s, _) = zs[0]
        .call(
            Method::GET,
            "/meshes/default/meshtimeouts/zone-b-local",
            None,
        )
        .await?;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "zone-b's policy stays out of zone-a"
    );

    // A zone deletes its dataplane: gone from global too.
    let (s, _) = zs[0].call(Method::DELETE, &path, None).await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    eventually("the dataplane gone from global", SYNC, || async {
        matches!(
            c.call_retry(Method::GET, &path, None).await,
            Ok((StatusCode::NOT_FOUND, _))
        )
        .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_resumes_with_only_the_delta_and_serves_without_global() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    for i in 0..20 {
        put(
            &c,
            &format!("/meshes/default/meshtimeouts/p{i}"),
            &timeout_policy(&format!("p{i}"), "1s"),
        )
        .await?;
    }
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    z.start()?;
    let first = put(
        &c,
        "/meshes/default/meshtimeouts/marker",
        &timeout_policy("marker", "1s"),
    )
    .await?;
    wait_revision(&z, first).await?;
    let st = z.status().await?;
    assert!(
        st["syncs"][0]["full"].as_bool().unwrap(),
        "first sync is full: {st}"
    );
    assert!(st["resources"].as_u64().unwrap() >= 22, "{st}");

    // Kill the zone; change six things while it is down.
    z.kill();
    put(
        &c,
        "/meshes/default/meshtimeouts/p0",
        &timeout_policy("p0", "5s"),
    )
    .await?;
    put(
        &c,
        "/meshes/default/meshtimeouts/p1",
        &timeout_policy("p1", "5s"),
    )
    .await?;
    put(
        &c,
        "/meshes/default/meshtimeouts/new",
        &timeout_policy("new", "5s"),
    )
    .await?;
    delete(&c, "/meshes/default/meshtimeouts/p2").await?;
    delete(&c, "/meshes/default/meshtimeouts/p3").await?;
    let last = put(
        &c,
        "/meshes/default/meshtimeouts/p4",
        &timeout_policy("p4", "5s"),
    )
    .await?;
    z.start()?;
    wait_revision(&z, last).await?;
    let st = z.status().await?;
    let resume = &st["lastSync"];
    assert_eq!(resume["full"], false, "a resume is a delta: {st}");
    assert_eq!(
        resume["changes"], 6,
        "exactly the six changes, not the full set: {st}"
    );
    z.wait_for("/meshes/default/meshtimeouts/p2", false, SYNC)
        .await?;
    z.wait_for("/meshes/default/meshtimeouts/new", true, SYNC)
        .await?;
    // Global reports the same.
    eventually("global sees the delta resume", SYNC, || async {
        let zones = zones(&c).await.ok()?;
        let s = &zones.get("zone-a")?["status"];
        (s["lastSync"]["changes"] == 6 && s["lastSync"]["full"] == false).then_some(())
    })
    .await?;

    // Global goes away entirely; the zone keeps serving, even through a restart.
    for n in &c.nodes {
        n.kill();
    }
    z.kill();
    z.start()?;
    let got = z
        .wait_for("/meshes/default/meshtimeouts/p0", true, SYNC)
        .await?;
    assert_eq!(got["spec"]["to"][0]["default"]["connectTimeout"], "5s");
    let st = z.status().await?;
    assert_eq!(st["connected"], false);
    assert!(st["revision"].as_u64().unwrap() >= last);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_follow_a_new_leader_and_revoked_zones_are_refused() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    let leader = c.leader().await?;
    // Both zones start at the leader.
    let a = ZoneCp::new(&c, "zone-a", c.kds_urls_from(leader), &[]).await?;
    let b = ZoneCp::new(&c, "zone-b", c.kds_urls_from(leader), &[]).await?;
    a.start()?;
    b.start()?;
    let v = put(
        &c,
        "/meshes/default/meshtimeouts/before",
        &timeout_policy("before", "1s"),
    )
    .await?;
    wait_revision(&a, v).await?;
    wait_revision(&b, v).await?;

    c.nodes[leader].kill();
    let v = put(
        &c,
        "/meshes/default/meshtimeouts/after",
        &timeout_policy("after", "1s"),
    )
    .await?;
    a.wait_for("/meshes/default/meshtimeouts/after", true, SYNC)
        .await?;
    b.wait_for("/meshes/default/meshtimeouts/after", true, SYNC)
        .await?;
    wait_revision(&a, v).await?;
    for z in [&a, &b] {
        let st = z.status().await?;
        assert_ne!(
            st["global"],
            c.nodes[leader].kds_url(),
            "moved off the dead node: {st}"
        );
    }

    // Their data directories (store, keys) are private to the user that runs them.
    {
        use std::os::unix::fs::PermissionsExt as _;
        for dir in [&c.nodes[(leader + 1) % c.nodes.len()].dir, &a.dir, &b.dir] {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }

    // zone-b reports a dataplane of its own.
    let dp = causeway_api::Resource::from_yaml(include_str!("../../examples/dataplane.yaml"))?;
    let dp_path = format!("/meshes/default/dataplanes/{}", dp.name);
    let (s, v) = b
        .call(Method::PUT, &dp_path, Some(&serde_json::to_value(&dp)?))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    eventually("zone-b's dataplane on global", SYNC, || async {
        matches!(
            c.call_retry(Method::GET, &dp_path, None).await,
            Ok((StatusCode::OK, _))
        )
        .then_some(())
    })
    .await?;

    // Revoke zone-b's tokens: it is cut off, the global side logs who it refused, and
    // what it reported leaves global (and so every other zone).
    let (s, v) = c
        .call_retry(Method::DELETE, "/zones/zone-b/tokens", None)
        .await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    eventually("zone-b's dataplane gone from global", SYNC, || async {
        matches!(
            c.call_retry(Method::GET, &dp_path, None).await,
            Ok((StatusCode::NOT_FOUND, _))
        )
        .then_some(())
    })
    .await?;
    eventually("zone-b disconnected", SYNC, || async {
        let st = b.status().await.ok()?;
        (st["connected"] == false).then_some(())
    })
    .await?;
    put(
        &c,
        "/meshes/default/meshtimeouts/later",
        &timeout_policy("later", "1s"),
    )
    .await?;
    a.wait_for("/meshes/default/meshtimeouts/later", true, SYNC)
        .await?;
    let (s, _) = b
        .call(Method::GET, "/meshes/default/meshtimeouts/later", None)
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "a revoked zone gets nothing new");
    eventually("the refusal in a global log", SYNC, || async {
        c.nodes
            .iter()
            .any(|n| {
                std::fs::read_to_string(n.log_path())
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.contains("refused a zone control plane")
                            && l.contains("zone-b")
                            && l.contains("revoked")
                    })
            })
            .then_some(())
    })
    .await?;
    // A fresh zone-b (new data dir) cannot enroll with the revoked token either.
    let b2 = ZoneCp::new(&c, "zone-b", c.kds_urls_from(0), &[]).await?;
    let (s, _) = c
        .call_retry(Method::DELETE, "/zones/zone-b/tokens", None)
        .await?;
    assert_eq!(s, StatusCode::NO_CONTENT);
    b2.start()?;
    eventually("the enrollment refusal in zone-b's log", SYNC, || async {
        std::fs::read_to_string(b2.log_path())
            .ok()?
            .contains("enrollment refused")
            .then_some(())
    })
    .await?;

    // Disabling zone-a refuses it too.
    put(
        &c,
        "/zones/zone-a",
        &json!({"type": "Zone", "name": "zone-a", "spec": {"enabled": false}}),
    )
    .await?;
    eventually("zone-a disconnected", SYNC, || async {
        let st = a.status().await.ok()?;
        (st["connected"] == false).then_some(())
    })
    .await?;
    Ok(())
}

/// A zone token enrolls one zone, once: a copy of it, presented by another process with
/// its own key after the zone enrolled, is refused, and the zone it enrolled carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_zone_token_enrolls_nobody_else() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    let a = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    a.start()?;
    eventually("zone-a connected", SYNC, || async {
        let st = a.status().await.ok()?;
        (st["connected"] == true).then_some(())
    })
    .await
    .with_context(|| a.logs())?;
    let (s, v) = c
        .call_retry(Method::GET, "/zones/zone-a/tokens", None)
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["items"][0]["enrolledAt"].is_string(), "{v}");

    // Someone copied the token file: a second zone-a (its own data dir, so its own key)
    // tries to enroll with it.
    let mut thief = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    thief.token_file = a.token_file.clone();
    thief.start()?;
    eventually("the refusal in the copy's log", SYNC, || async {
        let log = std::fs::read_to_string(thief.log_path()).ok()?;
        (log.contains("enrollment refused") && log.contains("already used")).then_some(())
    })
    .await
    .with_context(|| thief.logs())?;
    if let Ok(st) = thief.status().await {
        assert_ne!(st["connected"], true, "the copy has no KDS session: {st}");
    }
    // The zone that enrolled is unaffected: it still gets new policy.
    put(
        &c,
        "/meshes/default/meshtimeouts/after-copy",
        &timeout_policy("after-copy", "1s"),
    )
    .await?;
    a.wait_for("/meshes/default/meshtimeouts/after-copy", true, SYNC)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_full_sync_arrives_in_chunks() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    // ~10 MiB of policy: more than one message may carry (8 MiB is the decode limit).
    let blob = "x".repeat(60);
    let mut tasks = tokio::task::JoinSet::new();
    let c = std::sync::Arc::new(c);
    for w in 0..8 {
        let c = c.clone();
        let blob = blob.clone();
        tasks.spawn(async move {
            for i in 0..90 {
                let name = format!("big-{w}-{i}");
                let mut p = timeout_policy(&name, "1s");
                // Many labels make each resource large (~14 KiB).
                let labels: serde_json::Map<String, Value> = (0..200)
                    .map(|k| (format!("k{k}"), Value::String(blob.clone())))
                    .collect();
                p["labels"] = Value::Object(labels);
                put(&c, &format!("/meshes/default/meshtimeouts/{name}"), &p).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let last = put(
        &c,
        "/meshes/default/meshtimeouts/last",
        &timeout_policy("last", "1s"),
    )
    .await?;
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(1), &[]).await?;
    z.start()?;
    wait_revision(&z, last).await?;
    let st = z.status().await?;
    let full = &st["syncs"][0];
    assert_eq!(full["full"], true, "{st}");
    assert!(full["changes"].as_u64().unwrap() >= 721, "{st}");
    assert!(full["bytes"].as_u64().unwrap() > 8 << 20, "{st}");
    assert!(full["messages"].as_u64().unwrap() >= 8, "chunked: {st}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_certificates_are_renewed_before_expiry() -> anyhow::Result<()> {
    let c = GlobalCluster::start(3, &["--kds-heartbeat", "500ms", "--zone-cert-ttl", "6s"]).await?;
    mesh(&c).await?;
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    z.start()?;
    let v = put(
        &c,
        "/meshes/default/meshtimeouts/a",
        &timeout_policy("a", "1s"),
    )
    .await?;
    wait_revision(&z, v).await?;
    let first = z.status().await?["certificateNotAfter"]
        .as_i64()
        .context("not after")?;
    // Renewed at 70% of 6 s, well before expiry, and the zone keeps syncing.
    eventually("a renewed certificate", SYNC, || async {
        let s = z.status().await.ok()?;
        (s["certificateNotAfter"].as_i64()? > first).then_some(())
    })
    .await
    .with_context(|| z.logs())?;
    for round in 0..2 {
        let v = put(
            &c,
            "/meshes/default/meshtimeouts/b",
            &timeout_policy("b", &format!("{}s", round + 2)),
        )
        .await?;
        wait_revision(&z, v).await?;
    }
    let log = std::fs::read_to_string(z.log_path())?;
    assert!(log.contains("renewed the zone certificate"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_leaves_a_silent_global_node_for_another() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    z.start()?;
    let v = put(
        &c,
        "/meshes/default/meshtimeouts/a",
        &timeout_policy("a", "1s"),
    )
    .await?;
    wait_revision(&z, v).await?;
    assert_eq!(z.status().await?["global"], c.nodes[0].kds_url());
    // SIGSTOP: the TCP connection stays open but nothing flows. Only the heartbeat
    // deadline can tell; the zone must give up on the node and use another.
    c.nodes[0].pause(true);
    let result = async {
        let v = eventually("a write through the other nodes", SYNC, || async {
            for i in 1..c.nodes.len() {
                if let Ok((s, v)) = c
                    .call(
                        i,
                        Method::PUT,
                        "/meshes/default/meshtimeouts/b",
                        Some(&timeout_policy("b", "1s")),
                    )
                    .await
                    && s.is_success()
                {
                    return v["version"].as_u64();
                }
            }
            None
        })
        .await?;
        wait_revision(&z, v).await?;
        let st = z.status().await?;
        anyhow::ensure!(
            st["global"] != c.nodes[0].kds_url(),
            "still on the silent node: {st}"
        );
        anyhow::Ok(())
    }
    .await;
    c.nodes[0].pause(false);
    result.with_context(|| z.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provided_mesh_ca_signs_the_zones_intermediates() -> anyhow::Result<()> {
    let c = cluster().await?;
    let ca = causeway_global_cp::tls::generate_ca("Example Corp mesh root")?;
    put(
        &c,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {}}),
    )
    .await?;
    // The key goes in a mesh secret (write-only); the Mesh names it.
    let (s, v) = c
        .call_retry(
            Method::PUT,
            "/meshes/default/secrets/root-key",
            Some(&json!(ca.key_pem)),
        )
        .await?;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = c
        .call_retry(Method::GET, "/meshes/default/secrets", None)
        .await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"][0]["name"], "root-key", "{v}");
    assert!(
        !v.to_string().contains("PRIVATE KEY"),
        "values are never returned: {v}"
    );
    put(
        &c,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict",
            "backend": {"type": "provided", "certPem": ca.cert_pem, "keySecretRef": "root-key"}}}}),
    )
    .await?;
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    z.start()?;
    eventually("an intermediate under the provided root", SYNC, || async {
        let (s, v) = c
            .call_retry(Method::GET, "/zones/zone-a/config-dump", None)
            .await
            .ok()?;
        if s != StatusCode::OK {
            return None;
        }
        let chain = v["intermediates"][0]["certPem"].as_str()?;
        chain.ends_with(ca.cert_pem.as_str()).then_some(())
    })
    .await
    .with_context(|| z.logs())?;
    Ok(())
}

/// A zone that beats every 500 ms and a global node on its default 5 s each judge the
/// other's silence by the other's stated interval, so the stream stays up (before, the
/// zone gave up on global after 1.5 s without a message and reconnected every two
/// seconds, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_and_global_with_different_heartbeats_stay_connected() -> anyhow::Result<()> {
    let c = GlobalCluster::start(1, &[]).await?;
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    z.start()?;
    eventually("the zone connected", SYNC, || async {
        (z.status().await.ok()?["connected"] == true).then_some(())
    })
    .await?;
    // Three of global's heartbeats: the zone's old limit, 1.5 s, passes ten times over.
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(16) {
        let st = z.status().await?;
        assert_eq!(st["connected"], true, "the zone lost global: {}", z.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(z.log_path())?;
    assert_eq!(
        log.matches("KDS stream open").count(),
        1,
        "the zone reconnected: {}",
        z.logs()
    );
    Ok(())
}

/// A zone whose disk fills refuses local writes (507, naming the data dir and the
/// reserve) before RocksDB meets a full disk, keeps applying what global sends, and
/// takes writes again once space returns, without a restart. The zone's data dir is a
/// 64 MiB tmpfs, filled but for 8 MiB under a 16 MiB reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_whose_disk_fills_refuses_local_writes_and_recovers() -> anyhow::Result<()> {
    let c = GlobalCluster::start(1, &["--kds-heartbeat", "500ms"]).await?;
    mesh(&c).await?;
    let z = ZoneCp::new(
        &c,
        "zone-a",
        c.kds_urls_from(0),
        &["--disk-reserve-mib", "16"],
    )
    .await?;
    std::fs::create_dir_all(&z.dir)?;
    let _tmpfs = causeway_tests::Tmpfs::mount(&z.dir, "64m")?;
    z.start()?;
    let local = |name: &str| {
        let mut p = timeout_policy(name, "3s");
        p["name"] = json!(name);
        p
    };
    let put_local = |name: &'static str| {
        let (z, body) = (&z, local(name));
        async move {
            z.call(
                Method::PUT,
                &format!("/meshes/default/meshtimeouts/{name}"),
                Some(&body),
            )
            .await
        }
    };
    eventually("the mesh in the zone", SYNC, || async {
        put_local("before")
            .await
            .ok()
            .filter(|(s, _)| *s == StatusCode::CREATED)
    })
    .await
    .with_context(|| z.logs())?;

    let filler = z.dir.join("filler");
    causeway_tests::fill_disk(&filler, 8 << 20)?;
    // Measured at most once a second, so the first write after the fill may still pass.
    let (_, refusal) = eventually("a local write refused", Duration::from_secs(10), || async {
        put_local("during")
            .await
            .ok()
            .filter(|(s, _)| *s == StatusCode::INSUFFICIENT_STORAGE)
    })
    .await?;
    let why = refusal.to_string();
    assert!(
        why.contains(&z.dir.display().to_string())
            && why.contains("16 MiB")
            && why.contains("--disk-reserve-mib"),
        "{why}"
    );
    let st = z.status().await?;
    assert_eq!(st["disk"]["writes_refused"], true, "{st}");
    assert!(z.metrics().await?.contains("causeway_zone_disk_low 1"));
    let (s, _) = put_local("refused").await?;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE);
    let (s, _) = z
        .call(Method::GET, "/meshes/default/meshtimeouts/refused", None)
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused write changed nothing");

    // What global sends still arrives: the reserve is for it.
    put(
        &c,
        "/meshes/default/meshtimeouts/from-global",
        &timeout_policy("from-global", "2s"),
    )
    .await?;
    z.wait_for("/meshes/default/meshtimeouts/from-global", true, SYNC)
        .await
        .with_context(|| z.logs())?;

    std::fs::remove_file(&filler)?;
    eventually(
        "local writes taken again",
        Duration::from_secs(10),
        || async {
            put_local("after")
                .await
                .ok()
                .filter(|(s, _)| *s == StatusCode::CREATED)
        },
    )
    .await
    .with_context(|| z.logs())?;
    assert_eq!(z.status().await?["disk"]["writes_refused"], false);
    assert!(z.metrics().await?.contains("causeway_zone_disk_low 0"));
    Ok(())
}

async fn zone_ca(c: &GlobalCluster) -> anyhow::Result<Value> {
    let (s, v) = c.call_retry(Method::GET, "/zone-ca", None).await?;
    anyhow::ensure!(s == StatusCode::OK, "GET /zone-ca: {s} {v}");
    Ok(v)
}

/// Whether `zone` last connected with a certificate of the signing zone CA.
async fn on_current_zone_ca(c: &GlobalCluster, zone: &str) -> anyhow::Result<bool> {
    let st = zone_ca(c).await?;
    let z = st["zones"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|z| z["zone"] == zone)
        .with_context(|| format!("{zone} listed in {st}"))?;
    Ok(z["onCurrent"] == true)
}

async fn connected(z: &ZoneCp) -> anyhow::Result<()> {
    eventually(&format!("{} connected", z.name), SYNC, || async {
        (z.status().await.ok()?["connected"] == true).then_some(())
    })
    .await
    .with_context(|| z.logs())
}

/// The credentials zones enrol and connect with rotate while the zones run: a new
/// zone-token key voids the tokens not used yet, and a new zone CA replaces every
/// zone's certificate without an operator touching a zone. Forcing the end past a zone
/// that did not follow leaves that zone's old certificate refused, until it is started
/// with a new zone token: it enrols again and keeps its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_token_key_and_the_zone_ca_rotate_while_zones_run() -> anyhow::Result<()> {
    let c = cluster().await?;
    mesh(&c).await?;
    let a = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    a.start()?;
    connected(&a).await?;

    // The zone-token key: a token issued before the rotation no longer enrols.
    let early = ZoneCp::new(&c, "zone-b", c.kds_urls_from(0), &[]).await?;
    let (ok, _, err) = c.cli(&["zone", "token", "rotate-key"])?;
    anyhow::ensure!(ok, "rotate-key: {err}");
    assert!(err.contains("1 issued token(s) not used yet"), "{err}");
    early.start()?;
    eventually("the old token refused", SYNC, || async {
        let log = std::fs::read_to_string(early.log_path()).ok()?;
        (log.contains("enrollment refused") && log.contains("zone-token key was rotated"))
            .then_some(())
    })
    .await
    .with_context(|| early.logs())?;
    early.kill();
    // A token signed with the new key does; the enrolled zone was never affected.
    let b = ZoneCp::new(&c, "zone-b", c.kds_urls_from(0), &[]).await?;
    b.start()?;
    connected(&b).await?;

    // The zone CA: staged, both zones renew and reconnect on their own, then finished.
    let before = zone_ca(&c).await?;
    assert_eq!(before["phase"], "steady", "{before}");
    let old_sha = before["cas"][0]["sha256"]
        .as_str()
        .context("sha")?
        .to_string();
    let (ok, out, err) = c.cli(&["zone", "ca", "rotate", "--timeout", "60s"])?;
    anyhow::ensure!(ok, "zone ca rotate: {err}\n{}", a.logs());
    assert!(
        err.contains("stage: done") && err.contains("finish: done"),
        "{err}"
    );
    assert!(out.starts_with("zone CA: steady"), "{out}");
    let after = zone_ca(&c).await?;
    let new_sha = after["cas"][0]["sha256"]
        .as_str()
        .context("sha")?
        .to_string();
    assert_ne!(new_sha, old_sha, "{after}");
    assert_eq!(after["cas"].as_array().map(Vec::len), Some(1), "{after}");
    for z in after["zones"].as_array().context("zones")? {
        assert_eq!(z["onCurrent"], true, "{after}");
    }
    for z in [&a, &b] {
        let log = std::fs::read_to_string(z.log_path())?;
        assert!(log.contains("the zone CA changed: renewed"), "{}", z.logs());
    }
    // Both zones still sync, on their new certificates.
    put(
        &c,
        "/meshes/default/meshtimeouts/after-rotation",
        &timeout_policy("after-rotation", "2s"),
    )
    .await?;
    for z in [&a, &b] {
        z.wait_for("/meshes/default/meshtimeouts/after-rotation", true, SYNC)
            .await?;
    }

    // A second rotation with zone-b frozen: the finish waits for it, and names it.
    b.pause(true);
    let (ok, _, err) = c.cli(&["zone", "ca", "rotate", "--timeout", "5s"])?;
    assert!(!ok, "the finish waited for nobody: {err}");
    assert!(
        err.contains("stage: done") && err.contains("zone zone-b"),
        "{err}"
    );
    let (ok, _, err) = c.cli(&["zone", "ca", "rotate", "--step", "finish", "--force"])?;
    anyhow::ensure!(ok, "forced finish: {err}");
    // zone-b wakes holding a certificate of the dropped CA: KDS refuses it.
    b.pause(false);
    let refused_before = std::fs::read_to_string(b.log_path())?
        .matches("KDS session failed")
        .count();
    eventually("zone-b refused on its old certificate", SYNC, || async {
        let log = std::fs::read_to_string(b.log_path()).ok()?;
        (log.matches("KDS session failed").count() >= refused_before + 2).then_some(())
    })
    .await
    .with_context(|| b.logs())?;
    assert_ne!(b.status().await?["connected"], true, "{}", b.logs());
    assert!(
        !on_current_zone_ca(&c, "zone-b").await?,
        "zone-b on the signing zone CA while cut off"
    );
    // zone-a followed both rotations and still syncs.
    put(
        &c,
        "/meshes/default/meshtimeouts/after-force",
        &timeout_policy("after-force", "3s"),
    )
    .await?;
    a.wait_for("/meshes/default/meshtimeouts/after-force", true, SYNC)
        .await?;

    // zone-b, restarted on its old token, is still refused; with a new token it enrols
    // again, keeps its store (what it held before, its API's tokens and CA) and syncs.
    let failures = |log: &str| log.matches("KDS session failed").count();
    let before_restart = failures(&std::fs::read_to_string(b.log_path())?);
    b.kill();
    b.start()?;
    eventually("zone-b refused again", SYNC, || async {
        let log = std::fs::read_to_string(b.log_path()).ok()?;
        (failures(&log) >= before_restart + 2).then_some(())
    })
    .await
    .with_context(|| b.logs())?;
    assert!(
        b.wait_for("/meshes/default/meshtimeouts/after-rotation", true, SYNC)
            .await
            .is_ok(),
        "zone-b lost what it held"
    );
    let (ok, _, err) = c.cli(&[
        "zone",
        "token",
        "create",
        "--zone",
        "zone-b",
        "--out",
        &b.token_file.display().to_string(),
    ])?;
    anyhow::ensure!(ok, "a new token: {err}");
    b.kill();
    b.start()?;
    b.wait_for("/meshes/default/meshtimeouts/after-force", true, SYNC)
        .await
        .with_context(|| b.logs())?;
    let log = std::fs::read_to_string(b.log_path())?;
    assert!(
        log.contains("enrolled again with a new zone token"),
        "{}",
        b.logs()
    );
    assert!(
        on_current_zone_ca(&c, "zone-b").await?,
        "zone-b not on the signing zone CA after enrolling again"
    );
    // The token is spent: a third start does not enrol again.
    b.kill();
    b.start()?;
    connected(&b).await?;
    let log = std::fs::read_to_string(b.log_path())?;
    assert_eq!(log.matches("enrolled again").count(), 1, "{}", b.logs());
    Ok(())
}

/// The API CA rotates while a zone stays connected and the CLI drives it: zones trust
/// the new CA before any node serves a certificate from it, every node then serves one
/// (reloaded in place), and afterwards a client that trusts only the old CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_ca_rotates_while_a_zone_stays_connected() -> anyhow::Result<()> {
    let mut c = cluster().await?;
    mesh(&c).await?;
    let a = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    a.start()?;
    connected(&a).await?;
    let old_ca = c.nodes[0].ca_pem().context("api-ca.pem")?;

    let (ok, out, err) = c.cli(&["cluster", "api-ca", "rotate", "--timeout", "60s"])?;
    anyhow::ensure!(ok, "api-ca rotate: {err}\n{}{}", c.logs(), a.logs());
    for step in ["stage: done", "activate: done", "finish: done"] {
        assert!(err.contains(step), "{err}");
    }
    assert!(out.starts_with("API CA: steady"), "{out}");
    // Every node wrote the new CA alone for its clients; the test's client takes it.
    let new_ca = c.nodes[0].ca_pem().context("api-ca.pem")?;
    assert_eq!(causeway_pki::cert_shas(&new_ca).len(), 1, "{new_ca}");
    assert_ne!(
        causeway_pki::cert_shas(&new_ca),
        causeway_pki::cert_shas(&old_ca)
    );
    for n in &c.nodes {
        assert_eq!(
            n.ca_pem().as_deref(),
            Some(new_ca.as_str()),
            "node {}",
            n.id
        );
    }
    let stale = reqwest::Client::builder()
        .use_preconfigured_tls(causeway_pki::client_config(&old_ca, None)?)
        .timeout(Duration::from_secs(5))
        .build()?;
    c.trust(&new_ca)?;
    let (s, st) = c.call(0, Method::GET, "/cluster/api-ca", None).await?;
    assert_eq!(s, StatusCode::OK, "{st}");
    let new_sha = st["cas"][0]["sha256"].as_str().context("sha")?.to_string();
    assert_eq!(st["cas"].as_array().map(Vec::len), Some(1), "{st}");
    for n in st["nodes"].as_array().context("nodes")? {
        assert_eq!(n["presenting"], new_sha.as_str(), "{st}");
    }
    // The zone drops the old CA at its next report.
    eventually("zone-a trusting the new API CA alone", SYNC, || async {
        let (_, st) = c.call(0, Method::GET, "/cluster/api-ca", None).await.ok()?;
        (st["zones"][0]["trusted"] == json!([new_sha])).then_some(())
    })
    .await?;
    // A client that kept the old CA file is refused by every node's API.
    for n in &c.nodes {
        let r = stale.get(format!("{}/ready", n.url())).send().await;
        assert!(
            r.is_err(),
            "node {} still serves the old CA's certificate",
            n.id
        );
    }

    // The zone kept syncing, and reconnects on the new CA after a restart.
    put(
        &c,
        "/meshes/default/meshtimeouts/after-api-ca",
        &timeout_policy("after-api-ca", "2s"),
    )
    .await?;
    a.wait_for("/meshes/default/meshtimeouts/after-api-ca", true, SYNC)
        .await?;
    a.kill();
    a.start()?;
    connected(&a).await?;
    // A token issued now carries the new CA: a new zone enrols with it.
    let b = ZoneCp::new(&c, "zone-b", c.kds_urls_from(0), &[]).await?;
    b.start()?;
    connected(&b).await?;
    // The CLI writes the bundle for other clients.
    let file = c.tmp.path().join("bundle.pem");
    let (ok, _, err) = c.cli(&[
        "cluster",
        "api-ca",
        "bundle",
        "--out",
        &file.display().to_string(),
    ])?;
    anyhow::ensure!(ok, "bundle: {err}");
    assert_eq!(
        causeway_pki::cert_shas(&std::fs::read_to_string(&file)?),
        [new_sha]
    );
    Ok(())
}
