//! End to end: `causeway inspect dataplane NAME` against a real zone control plane with
//! real sidecars and demo apps: the policies that matched per destination and their
//! merge, the proxy's ACK, its certificate's expiry, its endpoints' health and
//! ejection; a NACK from a proxy that rejects its config; the same answer relayed by
//! global; and an unknown dataplane named in a 404.

use std::time::Duration;

use anyhow::Context as _;
use causeway_tests::mesh::{MeshFixture, WAIT, dataplane};
use causeway_tests::{eventually, free_addr, plain_http, put};
use serde_json::{Value, json};

/// `causeway inspect dataplane NAME -o json` on the zone.
fn inspect_json(fx: &MeshFixture, name: &str) -> Option<Value> {
    let (ok, out, _) = fx
        .zone_cli(&["inspect", "dataplane", name, "-o", "json"])
        .ok()?;
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The outbound of `inspection` to `service`.
fn outbound<'a>(inspection: &'a Value, service: &str) -> Option<&'a Value> {
    inspection["outbounds"]
        .as_array()?
        .iter()
        .find(|o| o["service"] == service)
}

/// The policies merged for `kind` on an outbound, and their merged conf.
fn merged<'a>(ob: &'a Value, kind: &str) -> Option<(Vec<&'a str>, &'a Value)> {
    let k = ob["policies"]
        .as_array()?
        .iter()
        .find(|k| k["kind"] == kind)?;
    let names = k["conf"]["policies"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    Some((names, &k["conf"]["conf"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_dataplane_shows_matched_policies_their_merge_the_ack_the_certificate_and_endpoint_health()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.permit("web-to-backend", "web", "backend", "Allow")
        .await?;
    // Two timeouts to backend (equally specific: "backend-a" wins, so it merges last),
    // a retry to backend, and a timeout for a service web does not call.
    for (name, to, conf) in [
        (
            "backend-a",
            "backend",
            json!({"connectionTimeout": "2s", "http": {"requestTimeout": "5s"}}),
        ),
        (
            "backend-b",
            "backend",
            json!({"connectionTimeout": "7s", "idleTimeout": "1m"}),
        ),
        ("to-cache", "cache", json!({"connectionTimeout": "1s"})),
    ] {
        put(
            &fx.c,
            &format!("/meshes/default/meshtimeouts/{name}"),
            &json!({"type": "MeshTimeout", "mesh": "default", "name": name, "spec": {
                "targetRef": {"kind": "MeshService", "name": "web"},
                "to": [{"targetRef": {"kind": "MeshService", "name": to}, "default": conf}]}}),
        )
        .await?;
    }
    put(
        &fx.c,
        "/meshes/default/meshretries/backend-retry",
        &json!({"type": "MeshRetry", "mesh": "default", "name": "backend-retry", "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {"http": {"numRetries": 1}}}]}}),
    )
    .await?;

    // backend-1 serves; backend-2's app is not running, so its sidecar answers that the
    // app is down and web's sidecar ejects it.
    let backend_app = free_addr();
    let _app = fx.app("backend-app", "backend", backend_app, false)?;
    let (_b1, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-1",
                "backend",
                free_addr().port(),
                backend_app.port(),
                "http",
                &[],
            ),
        )
        .await?;
    let b2_in = free_addr().port();
    let (_b2, _) = fx
        .sidecar(
            "backend",
            dataplane(
                "backend-2",
                "backend",
                b2_in,
                free_addr().port(),
                "http",
                &[],
            ),
        )
        .await?;
    let to_backend = free_addr().port();
    let (_web, _) = fx
        .sidecar(
            "web",
            dataplane(
                "web-1",
                "web",
                free_addr().port(),
                free_addr().port(),
                "http",
                &[(to_backend, "backend")],
            ),
        )
        .await?;

    // Traffic through web until its report shows backend-2 ejected and backend-1
    // healthy, with the config acknowledged.
    let http = plain_http();
    let v = eventually(
        "web-1's inspection with an ACK and an ejected endpoint",
        WAIT,
        || async {
            for _ in 0..4 {
                let _ = http
                    .get(format!("http://127.0.0.1:{to_backend}/"))
                    .send()
                    .await;
            }
            let v = inspect_json(&fx, "web-1")?;
            let endpoints = outbound(&v, "backend")?["destinations"][0]["endpoints"].as_array()?;
            let port_of = |p: u16| endpoints.iter().find(|e| e["port"] == p);
            let ejected = port_of(b2_in)?["ejection"].is_object();
            let acked = v["proxy"]["ack"]["version"] == v["config"]["version"];
            (acked && ejected && endpoints.len() == 2).then_some(v)
        },
    )
    .await
    .with_context(|| fx.zone.logs())?;

    assert_eq!(v["name"], "web-1");
    assert_eq!(v["zone"], "zone-a");
    let ob = outbound(&v, "backend").context("the backend outbound")?;
    assert_eq!(ob["port"], to_backend);
    let (names, conf) = merged(ob, "MeshTimeout").context("MeshTimeout on backend")?;
    assert_eq!(
        names,
        ["backend-b", "backend-a"],
        "lowest priority first: {v}"
    );
    assert_eq!(conf["connectionTimeout"], "2s", "backend-a wins: {v}");
    assert_eq!(
        conf["idleTimeout"], "1m",
        "what only backend-b sets stays: {v}"
    );
    assert_eq!(conf["http"]["requestTimeout"], "5s", "{v}");
    let (names, conf) = merged(ob, "MeshRetry").context("MeshRetry on backend")?;
    assert_eq!(names, ["backend-retry"]);
    assert_eq!(conf["http"]["numRetries"], 1);
    // The policy for a service web does not call is listed with the reason.
    let unmatched = v["unmatched"].as_array().context("unmatched policies")?;
    let to_cache = unmatched
        .iter()
        .find(|n| n["name"] == "to-cache")
        .with_context(|| format!("to-cache is unmatched: {v}"))?;
    assert!(
        to_cache["reason"]
            .as_str()
            .is_some_and(|r| r.contains("MeshService cache") && r.contains("calls backend")),
        "{to_cache}"
    );
    // The ACK is of the config computed now; the certificate is web's and in the future.
    assert!(v["proxy"]["nack"].is_null(), "{v}");
    let cert = &v["proxy"]["certificate"];
    assert_eq!(cert["identity"], "spiffe://default/web");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    assert!(
        cert["notAfter"].as_i64().context("notAfter")? > now,
        "{cert}"
    );
    // Endpoints with their health: backend-1 healthy, backend-2 ejected for failures.
    let endpoints = ob["destinations"][0]["endpoints"]
        .as_array()
        .context("endpoints")?;
    let b2 = endpoints
        .iter()
        .find(|e| e["port"] == b2_in)
        .context("b2")?;
    assert_eq!(b2["healthy"], false, "{b2}");
    assert_eq!(b2["ejection"]["reason"], "failed connections", "{b2}");
    let b1 = endpoints
        .iter()
        .find(|e| e["port"] != b2_in)
        .context("b1")?;
    assert_eq!(b1["healthy"], true, "{b1}");
    assert_eq!(b1["zone"], "zone-a");

    // The human view says the same.
    let (ok, text, err) = fx.zone_cli(&["inspect", "dataplane", "web-1"])?;
    assert!(ok, "{err}");
    for expected in [
        "Dataplane web-1 (mesh default, zone zone-a)",
        &format!("Outbound {to_backend} -> backend"),
        "  MeshTimeout: backend-b, backend-a",
        "\"connectionTimeout\":\"2s\"",
        "  MeshRetry: backend-retry",
        &format!(
            "  last ACK: version {}",
            v["config"]["version"].as_str().unwrap_or("")
        ),
        "  certificate: spiffe://default/web, expires ",
        &format!("127.0.0.1:{b2_in} (zone zone-a): UNHEALTHY, ejected (failed connections)"),
        "Policies of the mesh that do not apply here",
        "  MeshTimeout to-cache: ",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    // Asked of global, the zone answers through its KDS stream.
    let (ok, out, err) = fx.c.cli(&["inspect", "dataplane", "web-1", "-o", "json"])?;
    assert!(ok, "{err}");
    let relayed: Value = serde_json::from_str(&out)?;
    assert_eq!(relayed["zone"], "zone-a");
    let ob = outbound(&relayed, "backend").context("relayed backend outbound")?;
    assert_eq!(
        merged(ob, "MeshRetry").map(|m| m.0),
        Some(vec!["backend-retry"])
    );

    // An unknown dataplane: a 404 that names it, from the zone and from global.
    let (ok, _, err) = fx.zone_cli(&["inspect", "dataplane", "no-such-dp"])?;
    assert!(!ok);
    assert!(
        err.contains("404")
            && err.contains("Dataplane \"no-such-dp\" not found in mesh \"default\""),
        "{err}"
    );
    let (ok, _, err) = fx.c.cli(&["inspect", "dataplane", "no-such-dp"])?;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("\"no-such-dp\""),
        "{err}"
    );
    Ok(())
}

/// A proxy that rejects its config (as a sidecar does one it cannot read, for example
/// from a newer zone): a DDS client that NACKs what it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_dataplane_shows_a_nack_with_its_version_and_reason() -> anyhow::Result<()> {
    use causeway_api::kds::dds::dds_client::DdsClient;
    use causeway_api::kds::dds::{
        ProxyHello, ProxyMessage, ProxyNack, control_message, proxy_message,
    };
    use futures::StreamExt as _;

    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let ca = std::fs::read_to_string(fx.zone.dir.join("api-ca.pem"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", fx.dds))?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca)),
        )?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let (up, rx) = tokio::sync::mpsc::channel(4);
    let dp = dataplane(
        "nacker-1",
        "nacker",
        free_addr().port(),
        free_addr().port(),
        "http",
        &[],
    );
    up.send(ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(ProxyHello {
            token: std::fs::read_to_string(fx.token("nacker").await?)?,
            dataplane_json: serde_json::to_vec(&dp)?,
            ..ProxyHello::default()
        })),
    })
    .await?;
    let mut down = DdsClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let version = tokio::time::timeout(WAIT, async {
        while let Some(msg) = down.next().await {
            if let Some(control_message::Msg::Config(snap)) = msg?.msg {
                return Ok::<_, anyhow::Error>(snap.version);
            }
        }
        anyhow::bail!("the zone closed the stream before sending a config")
    })
    .await
    .context("no config within 30 s")??;
    up.send(ProxyMessage {
        msg: Some(proxy_message::Msg::Nack(ProxyNack {
            version: version.clone(),
            reason: "unknown variant `Brotli`".into(),
        })),
    })
    .await?;

    let v = eventually("nacker-1's NACK in its inspection", WAIT, || async {
        let v = inspect_json(&fx, "nacker-1")?;
        v["proxy"]["nack"].is_object().then_some(v)
    })
    .await
    .with_context(|| fx.zone.logs())?;
    assert_eq!(v["proxy"]["nack"]["version"], version.as_str());
    assert_eq!(v["proxy"]["nack"]["reason"], "unknown variant `Brotli`");
    assert!(v["proxy"]["ack"].is_null(), "{v}");
    let (ok, text, err) = fx.zone_cli(&["inspect", "dataplane", "nacker-1"])?;
    assert!(ok, "{err}");
    let line = text
        .lines()
        .find(|l| l.starts_with("  last NACK: "))
        .with_context(|| format!("no NACK line in:\n{text}"))?;
    assert!(
        line.starts_with(&format!("  last NACK: version {version} ("))
            && line.ends_with(" ago): unknown variant `Brotli`"),
        "{line}"
    );
    assert!(text.contains("  last ACK: none yet"), "{text}");
    drop(up);
    Ok(())
}
