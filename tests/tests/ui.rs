//! The web UI in a real headless Chromium, against three real global nodes and a zone:
//! served by a follower at `/ui` over the API's TLS, signed in with a viewer's token
//! typed and submitted from the keyboard, the overview showing what the cluster holds,
//! a zone going offline showing as a warning, a page that fits a 390 px phone, landmarks
//! for screen readers, and sign-out.

use std::time::Duration;

use anyhow::Context;
use causeway_tests::browser::Browser;
use causeway_tests::{GlobalCluster, ZoneCp, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Where each page's screenshot goes: the test's output directory.
fn shot(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ui-screenshots")
        .join(format!("{name}.png"))
}

/// The text of the element `selector` in the page (`null` while it is absent).
fn text(selector: &str) -> String {
    format!("document.querySelector({selector:?})?.textContent ?? null")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_signs_in_with_a_token_and_shows_the_overview_in_chromium() -> anyhow::Result<()> {
    let c = GlobalCluster::start(3, &["--kds-heartbeat", "500ms"]).await?;
    let (s, v) = c
        .call_retry(
            Method::PUT,
            "/meshes/default",
            Some(&json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}})),
        )
        .await?;
    assert!(s.is_success(), "{v}");
    let (s, v) = c
        .call_retry(
            Method::PUT,
            "/meshes/default/meshtimeouts/t1",
            Some(&json!({"type": "MeshTimeout", "mesh": "default", "name": "t1",
                "spec": {"targetRef": {"kind": "Mesh"},
                         "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}})),
        )
        .await?;
    assert!(s.is_success(), "{v}");
    let zone = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    zone.start()?;
    let dp = causeway_api::Resource::from_yaml(include_str!("../../examples/dataplane.yaml"))?;
    let path = format!("/meshes/default/dataplanes/{}", dp.name);
    eventually(
        "the dataplane registered",
        Duration::from_secs(30),
        || async {
            let (s, _) = zone
                .call(Method::PUT, &path, Some(&serde_json::to_value(&dp).ok()?))
                .await
                .ok()?;
            (s == StatusCode::CREATED || s == StatusCode::OK).then_some(())
        },
    )
    .await?;
    eventually(
        "the dataplane on global",
        Duration::from_secs(30),
        || async {
            let (s, _) = c.call_retry(Method::GET, &path, None).await.ok()?;
            (s == StatusCode::OK).then_some(())
        },
    )
    .await?;

    // A zone's own resources, filtered by the API (the zone page reads these).
    for (origin, n) in [("zone-a", 1), ("zone-b", 0), ("global", 0)] {
        let (s, v) = c
            .call_retry(
                Method::GET,
                &format!("/meshes/default/dataplanes?origin={origin}"),
                None,
            )
            .await?;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["items"].as_array().map(Vec::len),
            Some(n),
            "{origin}: {v}"
        );
    }
    // A follower serves the UI, with a policy that lets no other origin's code run.
    let leader = c.leader().await?;
    let node = &c.nodes[(leader + 1) % 3];
    let page = c.http().get(format!("{}/ui", node.url())).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()?
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    let mut b = Browser::launch(1280, 900).await?;
    b.navigate(&format!("{}/ui", node.url())).await?;
    b.wait_for("the sign-in form", "document.activeElement?.id === 'token'")
        .await?;

    // A wrong token is refused with the API's reason, and nothing is shown.
    b.type_text("cw_not-a-token").await?;
    b.press("Enter").await?;
    let refused = b.wait_for("the refusal", &text("#signin-error")).await?;
    assert!(
        refused
            .as_str()
            .unwrap_or("")
            .starts_with("Sign-in refused:"),
        "{refused}"
    );
    assert_eq!(
        b.eval("document.getElementById('view').hidden").await?,
        true
    );

    // A viewer's token, typed and submitted from the keyboard.
    let readonly = std::fs::read_to_string(node.token_dir.join("readonly-token"))?;
    b.eval("document.getElementById('token').value = ''; document.getElementById('token').focus()")
        .await?;
    b.type_text(readonly.trim()).await?;
    b.press("Enter").await?;
    b.wait_for(
        "zone-a online on the overview",
        "document.querySelector('#count-zones .n')?.textContent === '1 / 1'",
    )
    .await?;
    let counts = b
        .eval(
            "['meshes','services','dataplanes','policies'].map(k => document.querySelector('#count-' + k + ' .n').textContent)",
        )
        .await?;
    assert_eq!(counts, json!(["1", "1", "1", "1"]));
    let zone_row = b
        .eval("[...document.querySelectorAll('table')[0].querySelectorAll('tbody td')].map(td => td.textContent)")
        .await?;
    assert_eq!(zone_row[0], "zone-a");
    assert_eq!(zone_row[1], "online");
    assert_eq!(
        b.eval(&text("#warnings")).await?,
        "Nothing needs attention."
    );
    b.screenshot(&shot("overview")).await?;
    // The token stays in this tab, never in the page's address.
    assert!(
        !b.eval("location.href")
            .await?
            .as_str()
            .unwrap_or("")
            .contains("cw_"),
        "the token in the URL"
    );
    // A viewer gets no control that changes anything.
    assert_eq!(
        b.eval("document.querySelectorAll('#view form, #view input, #view button').length")
            .await?,
        0
    );

    // Landmarks and names a screen reader announces.
    let landmarks = b
        .eval(
            "[!!document.querySelector('header'), document.querySelector('nav')?.getAttribute('aria-label'), !!document.querySelector('main'), !!document.querySelector('footer'), document.querySelector('table caption')?.textContent, document.documentElement.lang]",
        )
        .await?;
    assert_eq!(landmarks, json!([true, "Main", true, true, "Zones", "en"]));

    // The signed-in token is named, with its role.
    assert_eq!(b.eval(&text("#who")).await?, "readonly (viewer)");

    // A zone's page: its KDS session, and the dataplanes and services it registered.
    b.eval("location.hash = '#/zones/zone-a'").await?;
    let services = b
        .wait_for(
            "zone-a's services",
            "[...document.querySelectorAll('#zone-services li')].map(li => li.textContent).join()",
        )
        .await?;
    assert_eq!(services, "default/backend");
    // Its KDS history, asked of the zone over its stream: the change sets it applied.
    let history = b
        .wait_for(
            "zone-a's KDS history",
            "(rows => rows.length ? rows : null)([...document.querySelectorAll('#kds-history tbody tr')].map(tr => tr.children[3].textContent))",
        )
        .await?;
    assert!(
        history
            .as_array()
            .is_some_and(|h| h.contains(&json!("full"))),
        "its first sync was full: {history}"
    );
    b.screenshot(&shot("zone")).await?;
    assert!(
        b.eval("document.getElementById('view').textContent")
            .await?
            .as_str()
            .unwrap_or("")
            .contains("backend-vm-1"),
        "the dataplane listed"
    );
    assert_eq!(
        b.eval("document.querySelector('nav a[aria-current=page]').id")
            .await?,
        "nav-zones"
    );

    // Policies: listed by kind, shown as YAML, and a viewer gets no editor.
    b.eval("location.hash = '#/policies'").await?;
    b.wait_for(
        "the policy list",
        "document.querySelector('a[href=\"#/policies/default/meshtimeouts/t1\"]')",
    )
    .await?;
    b.screenshot(&shot("policies")).await?;
    b.eval("location.hash = '#/zones'").await?;
    b.wait_for(
        "the zone list",
        "document.querySelector('#view a[href=\"#/zones/zone-a\"]')",
    )
    .await?;
    b.screenshot(&shot("zones")).await?;
    b.eval("location.hash = '#/dataplanes'").await?;
    b.wait_for(
        "the dataplane list",
        "document.querySelector('#view a[href=\"#/dataplanes/default/backend-vm-1\"]')",
    )
    .await?;
    b.screenshot(&shot("dataplanes")).await?;
    b.eval("location.hash = '#/policies/default/meshtimeouts/t1'")
        .await?;
    let yaml = b
        .wait_for("the policy's YAML", &text("pre#policy-yaml"))
        .await?;
    assert!(
        yaml.as_str().unwrap_or("").contains("connectTimeout: 2s"),
        "{yaml}"
    );
    assert_eq!(b.eval(&text("#policy-affects")).await?, "1 proxy");
    assert_eq!(
        b.eval(&text("#policy-affected")).await?,
        "backend-vm-1 (zone-a)"
    );
    assert_eq!(
        b.eval(&text("#policy-warnings")).await?,
        "Every field is enforced by the proxies it affects."
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#view form, #view textarea, #view button').length")
            .await?,
        0,
        "a viewer gets no editor"
    );
    b.screenshot(&shot("policy-viewer")).await?;
    // Nor can a viewer's token write from the page's own origin.
    let refused = b
        .eval(&format!(
            "fetch('/meshes/default/meshtimeouts/t1', {{method: 'DELETE', headers: {{Authorization: 'Bearer {}'}}}}).then(r => r.status)",
            readonly.trim()
        ))
        .await?;
    assert_eq!(refused, 403);
    // From the keyboard: the first Tab reaches the skip link, which leads to the content.
    b.eval("location.reload()").await?;
    b.wait_for(
        "the page again, still signed in",
        "document.querySelector('#view h1')",
    )
    .await?;
    // A key sent while the reloaded page is not yet taking input is lost (focus stays
    // on the body): send it again then, but the first element Tab reaches must be the
    // skip link.
    let mut focused = serde_json::Value::Null;
    for _ in 0..10 {
        b.press("Tab").await?;
        focused = b
            .eval("document.activeElement === document.body ? null : document.activeElement.className")
            .await?;
        if !focused.is_null() {
            break;
        }
        b.wait_for(
            "a moment",
            "new Promise(ok => setTimeout(() => ok(true), 100))",
        )
        .await?;
    }
    assert_eq!(focused, "skip");
    b.press("Enter").await?;
    b.wait_for(
        "the content reached by the skip link",
        "document.activeElement.id === 'main' && location.hash.startsWith('#/policies/')",
    )
    .await?;

    // On a 390 px phone nothing overflows the page sideways (tables scroll in their box).
    b.set_width(390, 844).await?;
    b.eval("location.hash = '#/overview'").await?;
    let overflow = b
        .wait_for(
            "the narrow layout",
            "document.readyState === 'complete' && [document.documentElement.scrollWidth, window.innerWidth, [...document.querySelectorAll('body *')].filter(e => e.scrollWidth > 391 || e.getBoundingClientRect().width > 391).map(e => e.tagName + '#' + e.id + '.' + e.className + ':' + e.scrollWidth + '/' + Math.round(e.getBoundingClientRect().width)).slice(0, 8)]",
        )
        .await?;
    assert!(
        overflow[0].as_u64().unwrap_or(u64::MAX) <= 390,
        "the page is {overflow} px wide at 390"
    );
    b.screenshot(&shot("overview-390")).await?;
    b.set_width(1280, 900).await?;

    // A zone that goes away shows as a warning within a refresh of the overview.
    b.eval("location.hash = '#/overview'").await?;
    zone.kill();
    let warning = b
        .wait_for(
            "the offline warning",
            "document.querySelector('#warnings li[data-kind=\"zone-offline\"]')?.textContent",
        )
        .await?;
    assert!(
        warning
            .as_str()
            .unwrap_or("")
            .starts_with("zone zone-a is offline"),
        "{warning}"
    );
    assert_eq!(
        b.eval(&text("#count-zones .n")).await?,
        "0 / 1",
        "the count follows"
    );

    // Signing out forgets the token.
    b.eval("document.getElementById('signout').click()").await?;
    b.wait_for(
        "the sign-in form again",
        "!document.getElementById('signin').hidden",
    )
    .await?;
    assert_eq!(
        b.eval("sessionStorage.getItem('causeway.token')").await?,
        serde_json::Value::Null
    );

    // An admin edits the policy in place: a bad value is refused with its field, and
    // nothing changes; a good one is applied.
    let admin = node.admin_token().expect("the admin token");
    b.eval("document.getElementById('token').focus()").await?;
    b.type_text(&admin).await?;
    b.press("Enter").await?;
    b.wait_for(
        "signed in as admin",
        "document.getElementById('who').textContent.endsWith('(admin)')",
    )
    .await?;
    b.eval("location.hash = '#/policies/default/meshtimeouts/t1'")
        .await?;
    b.wait_for(
        "the editor",
        "document.querySelector('textarea#policy-yaml')?.value",
    )
    .await?;
    let edit = |to: &str| {
        format!(
            "(() => {{ const a = document.getElementById('policy-yaml'); a.value = a.value.replace(/connectTimeout: .*/, 'connectTimeout: {to}'); document.querySelector('#policy-form button').click(); return true; }})()"
        )
    };
    b.eval(&edit("soon")).await?;
    let refusal = match b
        .wait_for("the field error", &text("#policy-errors .field-errors"))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let seen = b
                .eval("document.getElementById('view').textContent + ' | ' + document.getElementById('status').textContent")
                .await?;
            anyhow::bail!("{e}: the page shows {seen}");
        }
    };
    b.screenshot(&shot("policy-edit-refused")).await?;
    assert!(
        refusal
            .as_str()
            .unwrap_or("")
            .contains("spec.to[0].default.connectTimeout"),
        "{refusal}"
    );
    // The error sits on its field: under the refused line of the YAML, where the
    // caret went.
    let marked = b
        .eval("[...document.querySelectorAll('#policy-annotated li.error-line')].map(li => li.textContent)")
        .await?;
    let marked: Vec<&str> = marked
        .as_array()
        .context("marked lines")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert!(
        marked[0].trim_start().starts_with("connectTimeout: soon")
            && marked[0].contains("spec.to[0].default.connectTimeout: "),
        "{marked:?}"
    );
    assert_eq!(
        b.eval("(() => { const a = document.getElementById('policy-yaml'); return [a.getAttribute('aria-invalid'), a.value.slice(a.selectionStart, a.selectionEnd).trim()]; })()")
            .await?,
        json!(["true", "connectTimeout: soon"]),
        "the caret is on the refused field"
    );
    // Where fields are found: nested keys, items of sequences, and a missing field's
    // nearest ancestor.
    let t = "type: MeshTimeout\\nname: t1\\nspec:\\n  targetRef:\\n    kind: Mesh\\n  to:\\n  - targetRef:\\n      kind: Mesh\\n    default:\\n      connectTimeout: 2s\\n  - targetRef:\\n      kind: MeshService\\n      name: db\\n    default:\\n      idleTimeout: 1s\\n";
    assert_eq!(
        b.eval(&format!(
            "(() => {{ const t = '{t}'; return ['spec.to[0].default.connectTimeout', 'spec.to[1].targetRef.name', 'spec.to[1].default.connectTimeout', 'spec.targetRef.kind', 'spec.from[0]', 'name', 'mesh'].map(f => yamlLine(t, f)); }})()"
        ))
        .await?,
        json!([9, 12, 13, 4, 2, 1, null])
    );
    let (_, v) = c
        .call_retry(Method::GET, "/meshes/default/meshtimeouts/t1", None)
        .await?;
    assert_eq!(
        v["spec"]["to"][0]["default"]["connectTimeout"], "2s",
        "unchanged"
    );
    b.eval(&edit("5s")).await?;
    b.wait_for("applied", "document.getElementById('policy-applied')")
        .await?;
    let (_, v) = c
        .call_retry(Method::GET, "/meshes/default/meshtimeouts/t1", None)
        .await?;
    assert_eq!(v["spec"]["to"][0]["default"]["connectTimeout"], "5s");
    let audit = c.call_retry(Method::GET, "/audit?limit=1", None).await?.1;
    assert!(
        audit.to_string().contains("MeshTimeout/default/t1"),
        "the UI's write is in the audit log: {audit}"
    );

    Ok(())
}

/// Services and topology from real traffic: web's sidecar calls backend's through mTLS;
/// the services page shows backend's rate and success, the service page its instance,
/// caller and the permission that names it, and the topology an edge web -> backend
/// whose node opens the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_services_and_their_calls_from_real_traffic() -> anyhow::Result<()> {
    use causeway_tests::mesh::{MeshFixture, answering};
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let wb = fx.web_calls_backend().await?;
    answering(wb.out, 40).await;
    let node = &fx.c.nodes[0];
    let mut b = Browser::launch(1280, 900).await?;
    b.navigate(&format!("{}/ui#/services/default", node.url()))
        .await?;
    b.wait_for("the sign-in form", "document.activeElement?.id === 'token'")
        .await?;
    b.type_text(&node.admin_token().expect("the admin token"))
        .await?;
    b.press("Enter").await?;
    // The zones report every few seconds; the page refreshes every 5.
    let row = match b
        .wait_for(
            "backend's golden signals",
            "(() => { const a = document.querySelector('a[href=\"#/services/default/backend\"]'); const cells = a && [...a.closest('tr').children].map(td => td.textContent); return cells && cells[3] !== '-' && cells; })()",
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            let seen = b
                .eval("document.getElementById('view').textContent + ' | ' + document.getElementById('status').textContent")
                .await?;
            let (_, api) = fx
                .c
                .call_retry(Method::GET, "/meshes/default/stats?by=service", None)
                .await?;
            anyhow::bail!("{e}: the page shows {seen}; the API {api}");
        }
    };
    assert_eq!(row[1], "zone-a: 1", "{row}");
    assert_eq!(row[3], "100.0%", "{row}");
    b.screenshot(&shot("services")).await?;
    assert!(row[2].as_str().unwrap_or("0.0") != "0.0", "{row}");

    b.eval("location.hash = '#/services/default/backend'")
        .await?;
    let callers = b
        .wait_for(
            "web among backend's callers",
            "(() => { const t = [...document.querySelectorAll('table')].find(t => t.querySelector('caption')?.textContent === 'Callers'); return t && [...t.querySelectorAll('tbody td')].map(td => td.textContent); })()",
        )
        .await?;
    assert_eq!(callers[0], "web", "{callers}");
    let view = b
        .eval("document.getElementById('view').textContent")
        .await?;
    let view = view.as_str().unwrap_or("");
    assert!(view.contains("backend-1"), "the instance: {view}");
    assert!(
        view.contains("MeshTrafficPermissionweb-to-backendcalls it receives"),
        "the permission that targets it: {view}"
    );
    b.screenshot(&shot("service")).await?;

    // Web's sidecar as its zone sees it: its config accepted, its certificate, and
    // backend's endpoint healthy.
    b.eval("location.hash = '#/dataplanes/default/web-1'")
        .await?;
    b.wait_for("web-1's proxy state", &text("#nack")).await?;
    let view = b
        .eval("document.getElementById('view').textContent")
        .await?;
    let view = view.as_str().unwrap_or("");
    assert_eq!(b.eval(&text("#nack")).await?, "none", "{view}");
    assert!(view.contains("Accepted (ACK)"), "{view}");
    assert!(
        view.contains("spiffe://default/web"),
        "the certificate: {view}"
    );
    let endpoint = b
        .eval(
            "[...document.querySelectorAll('section.outbound tbody td')].map(td => td.textContent)",
        )
        .await?;
    assert_eq!(
        endpoint[0],
        format!("127.0.0.1:{}", wb.inbound),
        "{endpoint}"
    );
    assert_eq!(endpoint[2], "healthy", "{endpoint}");
    b.screenshot(&shot("dataplane")).await?;

    b.eval("location.hash = '#/topology/default'").await?;
    let edge = b
        .wait_for(
            "the edge web -> backend",
            "document.querySelector('#topology g.edge[data-from=web][data-to=backend] text')?.textContent",
        )
        .await?;
    assert!(
        edge.as_str().unwrap_or("").contains(" rps · 100.0% · p99 "),
        "{edge}"
    );
    b.screenshot(&shot("topology")).await?;
    b.eval("document.querySelector('#topology a.node[data-service=backend]').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        .await?;
    b.wait_for(
        "the service opened from the graph",
        "location.hash === '#/services/default/backend'",
    )
    .await?;
    // ... and from the service to one of its dataplanes.
    b.wait_for(
        "the instance link",
        "document.querySelector('a[href=\"#/dataplanes/default/backend-1\"]')",
    )
    .await?;
    b.eval("document.querySelector('a[href=\"#/dataplanes/default/backend-1\"]').click()")
        .await?;
    if let Err(e) = b
        .wait_for(
            "backend-1's page",
            "document.querySelector('#view h1')?.textContent === 'Dataplane backend-1' && document.getElementById('nack')",
        )
        .await
    {
        let seen = b
            .eval("location.hash + ' | ' + document.getElementById('view').textContent + ' | ' + document.getElementById('status').textContent")
            .await?;
        anyhow::bail!("{e}: {seen}");
    }

    // A second instance of backend whose app is down: web's sidecar's health checks
    // take it out of rotation, and the service page says so, while backend-1 stays
    // healthy. (Active checks: without them a balancer that favours the instance that
    // answers may never send the dead one enough calls to eject it.)
    let (s, v) =
        fx.c.call_retry(
            Method::PUT,
            "/meshes/default/meshhealthchecks/backend-health",
            Some(
                &json!({"type": "MeshHealthCheck", "mesh": "default", "name": "backend-health",
                "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {"interval": "1s", "timeout": "1s", "unhealthyThreshold": 2,
                                "healthyThreshold": 1, "http": {"path": "/"}}}]}}),
            ),
        )
        .await?;
    assert!(s.is_success(), "{v}");
    let dead_app = causeway_tests::free_addr().port();
    let (_backend2, _) = fx
        .sidecar(
            "backend",
            causeway_tests::mesh::dataplane(
                "backend-2",
                "backend",
                causeway_tests::free_addr().port(),
                dead_app,
                "http",
                &[],
            ),
        )
        .await?;
    b.eval("location.hash = '#/services/default/backend'")
        .await?;
    let health = "(() => { const t = [...document.querySelectorAll('table')].find(t => t.querySelector('caption')?.textContent === 'Instances'); return t && [...t.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent)); })()";
    let seen = b
        .wait_within(
            "backend-2 out of rotation",
            &format!("(() => {{ const rows = {health}; return rows && rows.some(r => r[0] === 'backend-2' && r[3] === 'out') && rows; }})()"),
            Duration::from_secs(60),
        )
        .await;
    let rows = match seen {
        Ok(rows) => rows,
        Err(e) => {
            let now = b.eval(health).await?;
            let (_, api) =
                fx.c.call_retry(Method::GET, "/meshes/default/services/backend", None)
                    .await?;
            let (_, web) =
                fx.c.call_retry(
                    Method::GET,
                    "/meshes/default/dataplanes/web-1/inspect",
                    None,
                )
                .await?;
            anyhow::bail!(
                "{e}: the page shows {now}; the API {api}; web-1's endpoints {}",
                web["outbounds"]
            );
        }
    };
    let rows = rows.as_array().context("rows")?;
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("backend-1")[3], "healthy", "{rows:?}");
    assert_eq!(
        row("backend-1")[4],
        "no caller in zone-a holds it out",
        "{rows:?}"
    );
    assert!(
        row("backend-2")[4].as_str().unwrap_or("")
            == "held out by 1 of 1 callers in zone-a (failing its health check)",
        "{rows:?}"
    );
    b.screenshot(&shot("service-instance-out")).await?;

    // Every page of this mesh fits a 390 px phone: nothing overflows sideways.
    b.set_width(390, 844).await?;
    for page in [
        "#/overview",
        "#/zones",
        "#/zones/zone-a",
        "#/services/default",
        "#/services/default/backend",
        "#/topology/default",
        "#/dataplanes/default",
        "#/dataplanes/default/web-1",
        "#/policies",
        "#/policies/default/meshtrafficpermissions/web-to-backend",
        "#/drills",
    ] {
        let width = b
            .eval(&format!(
                "new Promise(ok => {{ window.addEventListener('causeway:rendered', () => ok([document.documentElement.scrollWidth, window.innerWidth]), {{once: true}}); location.hash = {page:?}; }})"
            ))
            .await?;
        assert!(
            width[0].as_u64().unwrap_or(u64::MAX) <= 390 && width[1] == 390,
            "{page} is {width} px wide at 390"
        );
    }
    b.set_width(1280, 900).await?;

    // An admin starts a drill from the form, sees it running, and stops it.
    b.eval("location.hash = '#/drills'").await?;
    b.wait_for("the drill form", "document.getElementById('drill-form')")
        .await?;
    b.screenshot(&shot("drills")).await?;
    b.eval("document.getElementById('drill-duration').value = '5m'; document.querySelector('#drill-form button').click()")
        .await?;
    let state = b
        .wait_for("the drill's page", "location.hash.startsWith('#/drills/zone-a-down-') && document.getElementById('drill-state')?.textContent")
        .await?;
    assert_eq!(state, "running");
    let hash = b.eval("location.hash").await?;
    let drill = hash
        .as_str()
        .unwrap_or("")
        .trim_start_matches("#/drills/")
        .to_string();
    let (s, d) =
        fx.c.call_retry(Method::GET, &format!("/drills/{drill}"), None)
            .await?;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["spec"]["zone"], "zone-a");

    // A probing zone's report (as zone-b's drill runner would write it) shows as charts.
    let report = json!({"type": "DrillReport", "mesh": "default", "name": format!("{drill}-zone-a"),
        "spec": {"drill": drill, "zone": "zone-a", "drilledZone": "zone-b", "service": "backend",
            "state": "done",
            "before": {"requests": 50, "failed": 0, "p50Ms": 1.0, "p99Ms": 4.0, "zones": {"zone-a": 20, "zone-b": 30}},
            "during": {"requests": 50, "failed": 2, "p50Ms": 1.5, "p99Ms": 9.0, "zones": {"zone-a": 48}},
            "after": {"requests": 50, "failed": 0, "p50Ms": 1.0, "p99Ms": 4.5, "zones": {"zone-a": 25, "zone-b": 25}},
            "drilledZoneServedBefore": true, "movedAfterMs": 120, "failedDuringMove": 2, "recoveredAfterMs": 900}});
    let (s, v) = fx
        .zone
        .call(
            Method::PUT,
            &format!("/meshes/default/drillreports/{drill}-zone-a"),
            Some(&report),
        )
        .await?;
    assert!(s.is_success(), "{v}");
    let bars = b
        .wait_for(
            "the report's charts",
            "document.querySelectorAll('#chart-zones-zone-a rect').length",
        )
        .await?;
    assert_eq!(bars, 5, "zone-a and zone-b before and after, zone-a during");
    b.screenshot(&shot("drill")).await?;
    let view = b
        .eval("document.getElementById('view').textContent")
        .await?;
    assert!(
        view.as_str()
            .unwrap_or("")
            .contains("Traffic moved after120 ms"),
        "{view}"
    );
    b.eval("document.getElementById('drill-stop').click()")
        .await?;
    b.wait_for(
        "the drill stopped",
        "document.getElementById('drill-state')?.textContent === 'stopped'",
    )
    .await?;
    let (_, d) =
        fx.c.call_retry(Method::GET, &format!("/drills/{drill}"), None)
            .await?;
    assert!(d["spec"]["stoppedAt"].is_string(), "{d}");
    Ok(())
}
