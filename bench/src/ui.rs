//! `causeway-bench ui`: how long each page of the web UI takes to load with a large fleet
//! in the store (by default 100 zones, 1,000 services and 10,000 dataplanes, issue 17's
//! goal: every page under 300 ms). Three real global nodes hold it; a real headless
//! Chromium loads each page, and the page itself measures from the navigation to its
//! content on screen (the UI's `causeway:rendered` event), API calls and rendering
//! included. Medians and worst of `runs` loads per page.

use std::time::Instant;

use causeway_tests::browser::Browser;
use serde_json::{Value, json};

use crate::zones::Global;

/// The goal for every page.
const GOAL_MS: f64 = 300.0;
/// Writes in flight while the store is filled.
const CONCURRENCY: usize = 32;

pub(crate) async fn ui(
    zones: usize,
    services: usize,
    dataplanes: usize,
    runs: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        zones >= 1 && services >= 1 && dataplanes >= services && runs >= 1,
        "--zones, --services and --runs must be >= 1, and --dataplanes >= --services"
    );
    let tmp = tempfile::tempdir()?;
    let g = Global::start(tmp.path()).await?;
    println!(
        "filling three global nodes: {zones} zones, {services} services, {dataplanes} dataplanes, 100 policies"
    );
    let filled = Instant::now();
    g.put(
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
    )
    .await?;
    let mut writes: Vec<(String, Value)> = Vec::new();
    for z in 0..zones {
        let name = format!("zone-{z}");
        writes.push((
            format!("/zones/{name}"),
            json!({"type": "Zone", "name": name, "spec": {}}),
        ));
    }
    for d in 0..dataplanes {
        let name = format!("dp-{d}");
        writes.push((
            format!("/meshes/default/dataplanes/{name}"),
            json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": {
                "address": format!("10.{}.{}.{}", d / 65536 % 256, d / 256 % 256, d % 256),
                "inbound": [{"port": 20001, "servicePort": 8080, "service": format!("service-{}", d % services), "protocol": "http"}],
                "outbound": [{"port": 10001, "service": format!("service-{}", (d + 1) % services)}]}}),
        ));
    }
    for p in 0..100 {
        let name = format!("timeout-{p}");
        writes.push((
            format!("/meshes/default/meshtimeouts/{name}"),
            json!({"type": "MeshTimeout", "mesh": "default", "name": name, "spec": {
                "targetRef": {"kind": "MeshService", "name": format!("service-{p}")},
                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}}),
        ));
    }
    for chunk in writes.chunks(CONCURRENCY) {
        let results = crate::futures_join(chunk.len(), |i| g.put(&chunk[i].0, &chunk[i].1)).await;
        for r in results {
            r?;
        }
    }
    println!("  filled in {:.1} s", filled.elapsed().as_secs_f64());

    let mut b = Browser::launch(1280, 900).await?;
    b.navigate(&format!("{}/ui", g.url(0))).await?;
    b.wait_for("the sign-in form", "document.getElementById('token')")
        .await?;
    b.eval(&format!(
        "sessionStorage.setItem('causeway.token', {:?}); location.reload(); true",
        g.token
    ))
    .await?;
    b.wait_for(
        "the overview",
        "document.querySelector('#count-dataplanes .n')?.textContent",
    )
    .await?;

    let pages = [
        ("overview", "#/overview".to_string()),
        ("zones", "#/zones".to_string()),
        ("zone", "#/zones/zone-0".to_string()),
        ("services", "#/services/default".to_string()),
        ("service", "#/services/default/service-0".to_string()),
        ("topology", "#/topology/default".to_string()),
        ("dataplanes", "#/dataplanes/default".to_string()),
        ("dataplane", "#/dataplanes/default/dp-0".to_string()),
        ("policies", "#/policies".to_string()),
        (
            "policy",
            "#/policies/default/meshtimeouts/timeout-0".to_string(),
        ),
        ("drills", "#/drills".to_string()),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
    // Round-robin, so every load is a real navigation (a new hash).
    for _ in 0..runs {
        for (i, (_, hash)) in pages.iter().enumerate() {
            let ms = b
                .eval(&format!(
                    "new Promise((ok, fail) => {{ const t0 = performance.now(); \
                     window.addEventListener('causeway:rendered', () => ok(performance.now() - t0), {{once: true}}); \
                     setTimeout(() => fail(new Error('not rendered within 60 s')), 60000); \
                     location.hash = {hash:?}; }})"
                ))
                .await?;
            times[i].push(ms.as_f64().unwrap_or(f64::NAN));
        }
    }
    println!(
        "\npage load in Chromium, navigation to content on screen ({runs} loads each; goal < {GOAL_MS:.0} ms)"
    );
    println!("{:<12} {:>10} {:>10}  goal", "page", "median", "worst");
    let mut all_met = true;
    for (i, (name, _)) in pages.iter().enumerate() {
        let worst = times[i].iter().cloned().fold(0.0, f64::max);
        let median = crate::median(times[i].clone());
        let met = median < GOAL_MS;
        all_met &= met;
        println!(
            "{name:<12} {median:>8.1} ms {worst:>7.1} ms  {}",
            if met { "met" } else { "NOT MET" }
        );
    }
    println!(
        "\n{}",
        if all_met {
            "every page's median under the goal"
        } else {
            "some pages miss the goal (see NOT MET)"
        }
    );
    Ok(())
}
