//! The web UI in a real headless Chromium, against three real global nodes and a zone:
//! served by a follower at `/ui` over the API's TLS, signed in with a viewer's token
//! typed and submitted from the keyboard, the overview showing what the cluster holds,
//! a zone going offline showing as a warning, a page that fits a 390 px phone, landmarks
//! for screen readers, and sign-out.

use std::time::Duration;

use causeway_tests::browser::Browser;
use causeway_tests::{GlobalCluster, ZoneCp, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

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

    // On a 390 px phone nothing overflows the page sideways (tables scroll in their box).
    b.set_width(390, 844).await?;
    let overflow = b
        .wait_for(
            "the narrow layout",
            "window.innerWidth === 390 && [document.documentElement.scrollWidth]",
        )
        .await?;
    assert!(
        overflow[0].as_u64().unwrap_or(u64::MAX) <= 390,
        "the page is {overflow} px wide at 390"
    );
    b.set_width(1280, 900).await?;

    // A zone that goes away shows as a warning within a refresh.
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
    Ok(())
}
