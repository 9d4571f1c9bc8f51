//! End to end: named API tokens with roles, their rotation and revocation, and the audit
//! log, on three real `causeway global-cp` processes, through the API and the CLI.

use std::time::Duration;

use causeway_tests::{GlobalCluster, eventually, put};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn timeout(mesh: &str, name: &str) -> Value {
    json!({"type": "MeshTimeout", "mesh": mesh, "name": name,
           "spec": {"targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"},
                            "default": {"http": {"requestTimeout": "5s"}}}]}})
}

/// Issues a token through the CLI; returns (id, token).
fn create_token(c: &GlobalCluster, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let (ok, out, err) = c.cli(&all).unwrap();
    assert!(ok, "token create {args:?}: {err}");
    let id = err
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no id in {err:?}"))
        .to_string();
    (id, out.trim().to_string())
}

/// The status node `i` answers `token` with for a write of a MeshTimeout at `path`.
async fn write_status(
    c: &GlobalCluster,
    i: usize,
    token: &str,
    mesh: &str,
    name: &str,
) -> StatusCode {
    let path = format!("/meshes/{mesh}/meshtimeouts/{name}");
    let (s, _) = c
        .call_with(
            i,
            Some(token),
            Method::PUT,
            &path,
            Some(&timeout(mesh, name)),
        )
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_token_changes_and_the_audit_log_names_who_did_it() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    for m in ["payments", "shop"] {
        put(
            &c,
            &format!("/meshes/{m}"),
            &json!({"type": "Mesh", "name": m}),
        )
        .await
        .unwrap();
    }
    let (editor_id, editor) = create_token(
        &c,
        &[
            "--name",
            "ci",
            "--role",
            "mesh-editor",
            "--mesh",
            "payments",
        ],
    );
    let (_, viewer) = create_token(&c, &["--name", "dashboards", "--role", "viewer"]);

    // The editor changes its mesh, through any node (the token is replicated).
    let last = c.nodes.len() - 1;
    eventually("the editor token works on the last node", WAIT, || async {
        (write_status(&c, last, &editor, "payments", "from-ci").await == StatusCode::CREATED)
            .then_some(())
    })
    .await
    .unwrap();
    // ... and nothing else: another mesh, a Mesh itself, zones, tokens, the audit log.
    assert_eq!(
        write_status(&c, 0, &editor, "shop", "from-ci").await,
        StatusCode::FORBIDDEN
    );
    let forbidden = [
        (
            Method::PUT,
            "/meshes/payments",
            Some(json!({"type": "Mesh", "name": "payments"})),
        ),
        (Method::POST, "/zones/zone-a/token", None),
        (Method::GET, "/api-tokens", None),
        (Method::GET, "/audit", None),
    ];
    for (method, path, body) in &forbidden {
        let (s, v) = c
            .call_with(0, Some(&editor), method.clone(), path, body.as_ref())
            .await
            .unwrap();
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert_eq!(v["errors"][0]["field"], "Authorization", "{v}");
    }
    // It reads like a viewer; a viewer reads and changes nothing.
    let (s, _) = c
        .call_with(
            0,
            Some(&editor),
            Method::GET,
            "/meshes/shop/meshtimeouts",
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        write_status(&c, 0, &viewer, "payments", "from-viewer").await,
        StatusCode::FORBIDDEN
    );
    let (s, _) = c
        .call_with(
            0,
            Some(&viewer),
            Method::GET,
            "/meshes/payments/meshtimeouts/from-ci",
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);

    // The audit log names the token behind each change, and only changes are in it.
    let (ok, out, err) = c.cli(&["audit", "--limit", "100"]).unwrap();
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("MeshTimeout/payments/from-ci"))
        .unwrap_or_else(|| panic!("no audit entry for the editor's write:\n{out}"));
    assert!(
        line.contains(&format!("ci ({editor_id})"))
            && line.contains("mesh-editor")
            && line.contains(" put "),
        "{line}"
    );
    assert!(
        out.contains("admin (admin)") && out.contains("Mesh/payments"),
        "{out}"
    );
    assert!(out.contains("issue API token"), "{out}");
    assert!(
        !out.contains("from-viewer") && !out.contains("shop/from-ci"),
        "{out}"
    );
    let (_, v) = c
        .call(0, Method::GET, "/audit?actor=ci", None)
        .await
        .unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["outcome"], "ok", "{v}");
    // Every node keeps the same log (it is written when the change applies).
    let (_, on_last) = c
        .call(last, Method::GET, "/audit?actor=ci", None)
        .await
        .unwrap();
    assert_eq!(on_last["items"], v["items"]);

    // Revoked: refused at once on every node, and the list says so.
    let (ok, _, err) = c.cli(&["token", "revoke", &editor_id]).unwrap();
    assert!(ok, "{err}");
    for i in 0..c.nodes.len() {
        eventually("the revoked token is refused", WAIT, || async {
            let (s, v) = c
                .call_with(i, Some(&editor), Method::GET, "/meshes", None)
                .await
                .ok()?;
            (s == StatusCode::UNAUTHORIZED && v["message"].as_str()?.contains("revoked"))
                .then_some(())
        })
        .await
        .unwrap();
    }
    let (ok, out, _) = c.cli(&["token", "list", "--all"]).unwrap();
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with(&editor_id)).unwrap();
    assert!(row.contains("revoked") && row.contains("payments"), "{row}");

    // Bad requests change nothing.
    for (body, field) in [
        (json!({"name": "x", "role": "mesh-editor"}), "meshes"),
        (
            json!({"name": "x", "role": "viewer", "meshes": ["payments"]}),
            "meshes",
        ),
        (json!({"name": "x", "role": "root"}), "role"),
        (
            json!({"name": "x", "role": "mesh-editor", "meshes": ["nope"]}),
            "meshes[0]",
        ),
        (json!({"name": "no spaces", "role": "viewer"}), "name"),
    ] {
        let (s, v) = c
            .call(0, Method::POST, "/api-tokens", Some(&body))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    let (_, v) = c
        .call(0, Method::GET, "/api-tokens?all=true", None)
        .await
        .unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 4, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_rotates_without_downtime_and_the_last_admin_stays() {
    let c = GlobalCluster::start(3, &[]).await.unwrap();
    let old = c.token.clone();

    // Rotating the bootstrap admin token: the new one works, the old one too, for the
    // overlap, then no more.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new-admin-token");
    let (ok, _, err) = c
        .cli(&[
            "token",
            "rotate",
            "admin",
            "--overlap",
            "3s",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("admin keeps working until"), "{err}");
    let new = std::fs::read_to_string(&out).unwrap().trim().to_string();
    assert_ne!(new, old);
    for token in [&old, &new] {
        let (s, v) = c
            .call_with(0, Some(token), Method::GET, "/meshes", None)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    eventually(
        "the old admin token expires after the overlap",
        WAIT,
        || async {
            let (s, v) = c
                .call_with(1, Some(&old), Method::GET, "/meshes", None)
                .await
                .ok()?;
            (s == StatusCode::UNAUTHORIZED && v["message"].as_str()?.contains("expired"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    let (s, v) = c
        .call_with(
            1,
            Some(&new),
            Method::PUT,
            "/meshes/after",
            Some(&json!({"type": "Mesh", "name": "after"})),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The successor keeps the name and role; the last live admin token cannot go.
    let (_, v) = c
        .call_with(0, Some(&new), Method::GET, "/api-tokens", None)
        .await
        .unwrap();
    let live: Vec<&Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin")
        .collect();
    assert_eq!(live.len(), 1, "{v}");
    assert_eq!(live[0]["name"], "admin");
    let new_id = live[0]["id"].as_str().unwrap().to_string();
    let (s, v) = c
        .call_with(
            0,
            Some(&new),
            Method::DELETE,
            &format!("/api-tokens/{new_id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("last live admin"),
        "{v}"
    );
    let (s, _) = c
        .call_with(2, Some(&new), Method::GET, "/meshes", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);

    // An expired token is not rotated again.
    let (s, v) = c
        .call_with(
            0,
            Some(&new),
            Method::POST,
            "/api-tokens/admin/rotate",
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_api_token_rotates_with_an_overlap_and_the_rotation_survives_a_restart() {
    use causeway_tests::{ZoneCp, causeway_bin};
    let c = GlobalCluster::start(1, &[]).await.unwrap();
    let z = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[])
        .await
        .unwrap();
    z.start().unwrap();
    z.status().await.unwrap();
    let old = z.admin_token().unwrap();
    let readonly = std::fs::read_to_string(z.token_dir().join("readonly-token")).unwrap();
    let ca_file = z.dir.join("api-ca.pem");
    let tls =
        causeway_global_cp::tls::client_config(&std::fs::read_to_string(&ca_file).unwrap(), None)
            .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let status = |token: String, path: &'static str| {
        let http = http.clone();
        let url = format!("https://{}{path}", z.api);
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
                .ok()
        }
    };

    // The same CLI command as for global, pointed at the zone.
    let out_file = c.tmp.path().join("zone-admin-token");
    let out = std::process::Command::new(causeway_bin())
        .args(["token", "rotate", "admin", "--overlap", "3s", "--out"])
        .arg(&out_file)
        .env("CAUSEWAY_ADDR", format!("https://{}", z.api))
        .env("CAUSEWAY_TOKEN", &old)
        .env("CAUSEWAY_CA_FILE", &ca_file)
        .env("CAUSEWAY_CONFIG", c.tmp.path().join("zone-cli.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = std::fs::read_to_string(&out_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new, old);
    assert_eq!(status(new.clone(), "/status").await, Some(StatusCode::OK));
    assert_eq!(status(old.clone(), "/status").await, Some(StatusCode::OK));
    // Only the admin token sees or rotates tokens.
    assert_eq!(
        status(readonly.trim().to_string(), "/api-tokens").await,
        Some(StatusCode::FORBIDDEN)
    );
    eventually(
        "the old zone admin token stops after the overlap",
        WAIT,
        || async {
            (status(old.clone(), "/status").await? == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await
    .unwrap();

    // The rotation was saved: after a restart the new token works and the old does not.
    z.kill();
    z.start().unwrap();
    eventually("the restarted zone takes the new token", WAIT, || async {
        (status(new.clone(), "/status").await? == StatusCode::OK).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(status(old, "/status").await, Some(StatusCode::UNAUTHORIZED));
}
