//! End to end: what a copy of a control plane's data directory gives away. A global node
//! and a zone run a Strict mesh (so there are API, zone and mesh CAs, token-signing keys,
//! the zone's certificate and its intermediate CA); their whole data directories are
//! copied while they run, and no file of the copies may hold any token the test was given
//! or any private key (as PEM, its base64 body, its raw DER bytes, or hex). The test learns
//! every key by opening the stores afterwards with the seal keys, which it alone was given
//! outside the data dirs. Then a node started without its seal key, or with another one,
//! refuses to start and names the flag.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use causeway_pki::sealing::Sealer;
use causeway_tests::mesh::{MeshFixture, WAIT};
use causeway_tests::secrets::{Key, global_keys, zone_keys};
use causeway_tests::{GlobalNode, ZoneCp, eventually, files_under, put};
use reqwest::Method;
use serde_json::json;

/// A copy of `dir` (as `cp -a` would make one: a backup, or a stolen disk), in `to`.
fn copy_dir(dir: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let dst = to.join(dir.file_name().context("a dir name")?);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(&dst)
        .status()?;
    anyhow::ensure!(st.success(), "cp -a {}", dir.display());
    Ok(dst)
}

/// What must not be found, as byte strings, with a name for the failure message.
#[derive(Default)]
struct Needles(Vec<(String, Vec<u8>)>);

impl Needles {
    fn token(&mut self, what: &str, token: &str) {
        let token = token.trim();
        assert!(token.len() >= 20, "{what}: {token:?} is no token");
        self.0.push((what.into(), token.as_bytes().to_vec()));
    }

    /// A PEM private key: its body's long lines, and its DER bytes.
    fn pem_key(&mut self, what: &str, pem: &str) {
        assert!(pem.contains("PRIVATE KEY-----"), "{what} is a PEM key");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        for line in pem.lines().filter(|l| l.len() >= 40) {
            self.0
                .push((format!("{what} (PEM line)"), line.as_bytes().to_vec()));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .expect("a PEM body is base64");
        self.0.push((format!("{what} (DER)"), der));
    }

    /// A key kept as hex: the hex and the raw bytes.
    fn hex_key(&mut self, what: &str, hex_key: &str) {
        self.0
            .push((format!("{what} (hex)"), hex_key.as_bytes().to_vec()));
        self.0.push((
            format!("{what} (raw)"),
            hex::decode(hex_key).expect("a hex key"),
        ));
    }

    /// Fails naming every file of `dir` that holds a needle.
    fn assert_absent_under(&self, dir: &Path) {
        let mut found = Vec::new();
        let files = files_under(dir);
        assert!(files.len() >= 5, "a store's files: {files:?}");
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            if bytes
                .windows(b"PRIVATE KEY".len())
                .any(|w| w == b"PRIVATE KEY")
            {
                found.push(format!("{}: a PEM private key marker", f.display()));
            }
            for (what, needle) in &self.0 {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!("{}: {what}", f.display()));
                }
            }
        }
        assert!(found.is_empty(), "secrets in clear:\n{}", found.join("\n"));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_dir_holds_no_token_and_no_key() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let node = &fx.c.nodes[0];
    // More secrets for the store: a dataplane token and a mesh secret (a provided CA's
    // key) whose key only this test knows.
    let dp_token = fx.token("backend").await?;
    let provided = causeway_pki::generate_ca("a provided CA")?;
    let (s, v) =
        fx.c.call_retry(
            Method::PUT,
            "/meshes/default/secrets/provided-key",
            Some(&json!(provided.key_pem)),
        )
        .await?;
    anyhow::ensure!(s.is_success(), "put secret: {s} {v}");
    put(
        &fx.c,
        "/meshes/default/meshtimeouts/t",
        &json!({"type": "MeshTimeout", "mesh": "default", "name": "t",
                "spec": {"targetRef": {"kind": "Mesh"},
                         "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": "2s"}}]}}),
    )
    .await?;
    // The zone has used its API (its tokens) and holds its intermediate CA.
    fx.zone
        .wait_for(
            "/meshes/default/meshtimeouts/t",
            true,
            Duration::from_secs(30),
        )
        .await?;

    // The copies, taken while both run.
    let copies = tempfile::tempdir()?;
    let global_copy = copy_dir(&node.dir, copies.path())?;
    let zone_copy = copy_dir(&fx.zone.dir, copies.path())?;

    // Every token the test was given.
    let mut needles = Needles::default();
    for (what, dir) in [("global", &node.token_dir), ("zone", &fx.zone.token_dir())] {
        for f in ["admin-token", "readonly-token"] {
            needles.token(
                &format!("{what} {f}"),
                &std::fs::read_to_string(dir.join(f)).with_context(|| dir.display().to_string())?,
            );
        }
    }
    needles.token("zone token", &std::fs::read_to_string(&fx.zone.token_file)?);
    needles.token("dataplane token", &std::fs::read_to_string(&dp_token)?);
    needles.pem_key("the provided CA key", &provided.key_pem);

    // Stop both, then learn every key they hold by opening their stores with the seal
    // keys (which are not in the data dirs).
    node.kill();
    fx.zone.kill();
    for (what, key) in global_keys(node, &["default"])?
        .into_iter()
        .chain(zone_keys(&fx.zone)?)
    {
        match key {
            Key::Pem(pem) => needles.pem_key(&what, &pem),
            Key::Hex(h) => needles.hex_key(&what, &h),
        }
    }
    let sealer = Sealer::from_file("--seal-key-file", &node.seal_key_file())?;
    let store = causeway_global_cp::store::Store::open(&node.dir.join("db"))?;
    let secret = store
        .secret("default", "provided-key")?
        .context("the stored secret")?;
    assert_eq!(sealer.open(&secret)?, provided.key_pem);
    drop(store);

    needles.assert_absent_under(&global_copy);
    needles.assert_absent_under(&zone_copy);

    // Private directories, private files.
    for dir in [&node.dir, &fx.zone.dir] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&dir.join("db")), 0o700, "{}/db", dir.display());
        assert_eq!(mode(&dir.join("seal-check")), 0o600, "{}", dir.display());
    }
    for f in ["api-cas.json", "api-token-hashes.json"] {
        assert_eq!(mode(&fx.zone.dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&fx.zone.seal_key_file()), 0o600);
    Ok(())
}

/// A control plane process a test restarts.
trait Restart {
    fn restart(&mut self) -> anyhow::Result<()>;
    fn has_exited(&mut self) -> bool;
    fn log(&self) -> PathBuf;
}

impl Restart for GlobalNode {
    fn restart(&mut self) -> anyhow::Result<()> {
        self.start(&[], false)
    }
    fn has_exited(&mut self) -> bool {
        self.exited().is_some()
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
}

impl Restart for &ZoneCp {
    fn restart(&mut self) -> anyhow::Result<()> {
        self.start()
    }
    fn has_exited(&mut self) -> bool {
        self.exited()
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
}

/// Starts `p` and expects it to exit on its own, its log naming `--seal-key-file` and
/// saying `why`.
async fn refuses_to_start(p: &mut impl Restart, why: &str) -> anyhow::Result<()> {
    std::fs::write(p.log(), "")?;
    p.restart()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !p.has_exited() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "still running ({why} expected)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(p.log())?;
    assert!(
        log.contains("--seal-key-file") && log.contains(why),
        "expected {why:?}: {log}"
    );
    Ok(())
}

/// With another key in its seal key file, then without the file: `p` refuses to start
/// both times, and no new key is made in place of the lost one. Then the key is put back.
async fn needs_its_seal_key(p: &mut impl Restart, key_file: &Path) -> anyhow::Result<()> {
    let original = std::fs::read_to_string(key_file)?;
    std::fs::write(key_file, Sealer::generate_key_file())?;
    refuses_to_start(p, "not the seal key").await?;
    std::fs::remove_file(key_file)?;
    refuses_to_start(p, "does not exist").await?;
    assert!(!key_file.exists());
    std::fs::write(key_file, original)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_seal_key_or_with_another_refuses_to_start() -> anyhow::Result<()> {
    let mut fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    fx.c.nodes[0].kill();
    fx.zone.kill();

    let key_file = fx.c.nodes[0].seal_key_file();
    needs_its_seal_key(&mut fx.c.nodes[0], &key_file).await?;
    // With its key back, it serves again.
    fx.c.nodes[0].start(&[], false)?;
    fx.c.wait_ready(0).await?;

    let mut zone = &fx.zone;
    needs_its_seal_key(&mut zone, &fx.zone.seal_key_file()).await?;
    fx.zone.start()?;
    fx.zone
        .wait_for("/meshes/default", true, Duration::from_secs(30))
        .await?;
    Ok(())
}

/// Kills the process it holds when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Without --token-out-dir, the node that forms the cluster prints the tokens once on
/// standard output, never on standard error (the log), and keeps none in its data dir;
/// a first start creates the seal key, 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_dir_the_tokens_are_printed_once_and_not_logged() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (data, key) = (tmp.path().join("data"), tmp.path().join("keys/seal.key"));
    let (out, err) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let api = causeway_tests::free_addr();
    let _node = KillOnDrop(
        std::process::Command::new(causeway_tests::causeway_bin())
            .args(["global-cp", "--node-id", "1", "--data-dir"])
            .arg(&data)
            .arg("--seal-key-file")
            .arg(&key)
            .args(["--api-addr", &api.to_string()])
            .args(["--raft-addr", &causeway_tests::free_addr().to_string()])
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
    );
    let (admin, readonly) = eventually("the tokens on stdout", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&out).ok()?;
        let token = |label: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|t| t.trim().to_string())
        };
        Some((token("admin token")?, token("read-only token")?))
    })
    .await
    .with_context(|| std::fs::read_to_string(&err).unwrap_or_default())?;
    assert_eq!(mode(&key), 0o600);
    let ca = eventually("the API CA", Duration::from_secs(30), || async {
        std::fs::read_to_string(data.join("api-ca.pem")).ok()
    })
    .await?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(causeway_global_cp::tls::client_config(&ca, None)?)
        .timeout(Duration::from_secs(5))
        .build()?;
    for token in [&admin, &readonly] {
        let status = eventually("the API", Duration::from_secs(30), || async {
            let r = http
                .get(format!("https://{api}/meshes"))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            Some(r.status())
        })
        .await?;
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    let printed = std::fs::read_to_string(&out)?;
    assert_eq!(printed.matches(admin.as_str()).count(), 1, "{printed}");
    let log = std::fs::read_to_string(&err)?;
    assert!(!log.contains(&admin) && !log.contains(&readonly), "{log}");
    let mut needles = Needles::default();
    needles.token("admin token", &admin);
    needles.token("read-only token", &readonly);
    needles.assert_absent_under(&data);
    Ok(())
}

/// A node given another seal key than the one the cluster was formed with stops as soon
/// as the cluster's keys reach it, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_seal_key_than_its_cluster_stops() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let other = tmp.path().join("other.key");
    let other_arg = other.display().to_string();
    // Formed at once (a node that joins with a token gets the cluster's key instead).
    let plain = "--insecure-raft-plaintext";
    let mut nodes = vec![
        GlobalNode::new(tmp.path(), 1, &[plain]),
        GlobalNode::new(tmp.path(), 2, &[plain]),
        GlobalNode::new(tmp.path(), 3, &[plain, "--seal-key-file", &other_arg]),
    ];
    let all: Vec<_> = nodes.iter().map(|n| (n.id, n.raft)).collect();
    for n in &mut nodes {
        let peers: Vec<_> = all.iter().filter(|(id, _)| *id != n.id).copied().collect();
        n.start(&peers, false)?;
    }
    // Whichever key formed the cluster, a node with the other one stops.
    let stopped = eventually("a node to stop", Duration::from_secs(30), || async {
        nodes.iter().position(|n| n.exited().is_some())
    })
    .await?;
    let log = std::fs::read_to_string(nodes[stopped].log_path())?;
    assert!(
        log.contains("--seal-key-file") && log.contains("does not open the cluster's keys"),
        "{log}"
    );
    Ok(())
}

/// A data dir an older version wrote (tokens and keys in clear, no seal check) is refused
/// at start with an error that says so, by both control planes; nothing is created in it.
#[test]
fn a_data_dir_from_before_sealing_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let global = tmp.path().join("global");
    std::fs::create_dir_all(global.join("db"))?;
    let zone = tmp.path().join("zone");
    std::fs::create_dir_all(&zone)?;
    std::fs::write(zone.join("admin-token"), "cw_old\n")?;
    let runs = [
        (
            &global,
            vec![
                "global-cp".to_string(),
                "--node-id".into(),
                "1".into(),
                "--api-addr".into(),
                causeway_tests::free_addr().to_string(),
                "--raft-addr".into(),
                causeway_tests::free_addr().to_string(),
            ],
        ),
        (
            &zone,
            vec![
                "zone-cp".to_string(),
                "--zone".into(),
                "zone-a".into(),
                "--global".into(),
                "https://127.0.0.1:1".into(),
                "--api-addr".into(),
                causeway_tests::free_addr().to_string(),
            ],
        ),
    ];
    for (dir, args) in runs {
        let key = dir.with_extension("seal.key");
        let out = std::process::Command::new(causeway_tests::causeway_bin())
            .args(&args)
            .arg("--data-dir")
            .arg(dir)
            .arg("--seal-key-file")
            .arg(&key)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("older version") && err.contains("not supported"),
            "{err}"
        );
        assert!(
            !key.exists(),
            "no seal key is made for a data dir it refuses"
        );
    }
    Ok(())
}

/// `GET /cluster/seal` from node `i`.
async fn seal_status(
    c: &causeway_tests::GlobalCluster,
    i: usize,
) -> anyhow::Result<serde_json::Value> {
    Ok(c.call(i, Method::GET, "/cluster/seal", None).await?.1)
}

/// Whether the zone holds an intermediate CA of `mesh`.
async fn has_intermediate(zone: &ZoneCp, mesh: &str) -> Option<()> {
    let s = zone.status().await.ok()?;
    s["intermediates"]
        .as_array()?
        .iter()
        .any(|i| i["mesh"] == mesh)
        .then_some(())
}

/// Every sealed value written anywhere under `dir` (store files, the Raft log, key
/// files), as found in the raw bytes.
fn sealed_values_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let prefix = b"sealed-v1:";
    let mut out = Vec::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let mut at = 0;
        while let Some(i) = bytes[at..]
            .windows(prefix.len())
            .position(|w| w == prefix)
            .map(|i| at + i)
        {
            let body: Vec<u8> = bytes[i + prefix.len()..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
                .copied()
                .collect();
            at = i + prefix.len() + body.len();
            out.push((
                f.clone(),
                format!("sealed-v1:{}", String::from_utf8_lossy(&body)),
            ));
        }
    }
    out
}

/// The seal key rotates with real processes, node by node: a three-node cluster and a
/// zone in a Strict mesh (with a mesh secret and a rotated token-signing key). Each node
/// restarts with a new key and its old one as the previous key; `causeway seal status`
/// follows the rotation; then each
/// restarts with the new key alone, and the mesh still works (a dataplane token is
/// signed, a new mesh gets its CA and the zone an intermediate from it). Afterwards no
/// sealed value anywhere in the data dirs (stores, Raft logs, key files) opens with an
/// old key, every key opens with the new ones, and an old key alone is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seal_key_rotates_node_by_node_and_the_old_keys_open_nothing_after()
-> anyhow::Result<()> {
    let hb = ["--kds-heartbeat", "500ms"];
    let mut c = causeway_tests::GlobalCluster::start(3, &hb).await?;
    put(
        &c,
        "/meshes/default",
        &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
    )
    .await?;
    let provided = causeway_pki::generate_ca("a provided CA")?;
    let (s, v) = c
        .call_retry(
            Method::PUT,
            "/meshes/default/secrets/provided-key",
            Some(&json!(provided.key_pem)),
        )
        .await?;
    anyhow::ensure!(s.is_success(), "put secret: {s} {v}");
    let mut zone = ZoneCp::new(&c, "zone-a", c.kds_urls_from(0), &[]).await?;
    zone.start()?;
    eventually(
        "the zone's intermediate CA",
        Duration::from_secs(60),
        || has_intermediate(&zone, "default"),
    )
    .await
    .with_context(|| zone.logs())?;

    // A rotated token-signing key is kept sealed too.
    let (ok, _, err) = c.cli(&["dataplane", "token", "rotate-key"])?;
    anyhow::ensure!(ok, "rotate-key: {err}");

    // Steady: one key, nothing under another.
    let (ok, out, err) = c.cli(&["seal", "status"])?;
    anyhow::ensure!(ok, "seal status: {err}");
    assert!(out.contains("every node runs with it"), "{out}");
    let before = seal_status(&c, 0).await?;
    let old_id = before["keyId"].as_str().context("keyId")?.to_string();
    assert_eq!(
        before["nodes"].as_array().map(Vec::len),
        Some(3),
        "{before}"
    );

    // The new key, one copy per node (each node has a key file of its own).
    let tmp = c.tmp.path().to_path_buf();
    let new_key = tmp.join("new-seal.key");
    let (ok, _, err) = c.cli(&[
        "seal",
        "generate-key",
        "--out",
        &new_key.display().to_string(),
    ])?;
    anyhow::ensure!(ok, "generate-key: {err}");
    let old_keys: Vec<PathBuf> = c.nodes.iter().map(|n| n.seal_key_file()).collect();
    let new_keys: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = tmp.join(format!("node-{}.new-seal.key", i + 1));
            std::fs::copy(&new_key, &p).map(|_| p)
        })
        .collect::<Result<_, _>>()?;
    let arg = |p: &Path| p.display().to_string();

    // Node by node, with both keys.
    for i in 0..3 {
        c.nodes[i].kill();
        let (new, old) = (arg(&new_keys[i]), arg(&old_keys[i]));
        c.nodes[i].set_extra_args(&[
            hb[0],
            hb[1],
            "--seal-key-file",
            &new,
            "--previous-seal-key-file",
            &old,
        ]);
        c.nodes[i].start(&[], false)?;
        c.wait_ready(i).await?;
        if i == 0 {
            // The others still run with the old key: named.
            let s = seal_status(&c, 0).await?;
            assert_eq!(s["done"], false, "{s}");
            assert!(
                s["waiting"]
                    .to_string()
                    .contains(&format!("runs with seal key {old_id}")),
                "{s}"
            );
        }
    }
    let rolled = eventually(
        "every node on the new key, nothing under the old",
        WAIT,
        || async {
            let s = seal_status(&c, 1).await.ok()?;
            s["nodes"]
                .as_array()?
                .iter()
                .all(|n| {
                    n["keyId"] == s["keyId"]
                        && n["previousKeyId"] == old_id
                        && n["sealedUnderPrevious"] == 0
                        && n["sealedUnderNeither"] == 0
                        && n["sealedUnderKey"].as_u64() >= Some(9)
                })
                .then_some(s)
        },
    )
    .await?;
    assert_ne!(rolled["keyId"], old_id, "{rolled}");
    assert!(
        rolled["waiting"]
            .to_string()
            .contains("restart it without --previous-seal-key-file"),
        "{rolled}"
    );

    // Then without the old key.
    for (i, new) in new_keys.iter().enumerate() {
        c.nodes[i].kill();
        let new = arg(new);
        c.nodes[i].set_extra_args(&[hb[0], hb[1], "--seal-key-file", &new]);
        c.nodes[i].start(&[], false)?;
        c.wait_ready(i).await?;
    }
    let (ok, out, err) = c.cli(&["seal", "status"])?;
    anyhow::ensure!(ok, "seal status: {err}");
    assert!(out.contains("every node runs with it"), "{out}");

    // The zone: the same, with its own key, replaced in place at the end.
    let zone_key = zone.seal_key_file();
    let (zone_old, zone_new) = (tmp.join("zone-old.key"), tmp.join("zone-new.key"));
    std::fs::copy(&zone_key, &zone_old)?;
    std::fs::write(&zone_new, Sealer::generate_key_file())?;
    zone.kill();
    zone.set_extra_args(&[
        "--seal-key-file",
        &arg(&zone_new),
        "--previous-seal-key-file",
        &arg(&zone_old),
    ]);
    zone.start()?;
    eventually("the zone back with both keys", WAIT, || {
        has_intermediate(&zone, "default")
    })
    .await
    .with_context(|| zone.logs())?;
    zone.kill();
    std::fs::copy(&zone_new, &zone_key)?;
    zone.set_extra_args(&[]);
    zone.start()?;

    // The mesh works on the new keys: a dataplane token is signed, a new mesh gets a
    // root CA and the zone an intermediate CA from it.
    let (s, v) = c
        .call_retry(
            Method::POST,
            "/meshes/default/dataplane-token",
            Some(&json!({"service": "backend"})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
    put(
        &c,
        "/meshes/second",
        &json!({"type": "Mesh", "name": "second", "spec": {"mtls": {"mode": "Strict"}}}),
    )
    .await?;
    eventually("the zone's intermediate CA of mesh second", WAIT, || {
        has_intermediate(&zone, "second")
    })
    .await
    .with_context(|| zone.logs())?;

    // Stopped: every key opens with the new keys; nothing sealed anywhere opens with the
    // old ones; the old key alone is refused.
    for n in &c.nodes {
        n.kill();
    }
    zone.kill();
    let mut keys = zone_keys(&zone)?;
    for n in &c.nodes {
        keys.extend(global_keys(n, &["default", "second"])?);
    }
    assert!(keys.len() >= 10, "{}", keys.len());
    let old_sealers: Vec<Sealer> = old_keys
        .iter()
        .chain([&zone_old])
        .map(|p| Sealer::from_file("--seal-key-file", p))
        .collect::<Result<_, _>>()?;
    let new_sealer = Sealer::from_file("--seal-key-file", &new_key)?;
    let zone_sealer = Sealer::from_file("--seal-key-file", &zone_new)?;
    for (dir, sealer) in c
        .nodes
        .iter()
        .map(|n| (&n.dir, &new_sealer))
        .chain([(&zone.dir, &zone_sealer)])
    {
        let found = sealed_values_under(dir);
        assert!(found.len() >= 5, "{}: {found:?}", dir.display());
        let mut under_old = Vec::new();
        for (file, v) in &found {
            if old_sealers.iter().any(|o| o.open(v).is_ok()) {
                under_old.push(file.display().to_string());
            }
        }
        assert!(
            under_old.is_empty(),
            "sealed under an old key after the rotation: {under_old:?}"
        );
        assert!(
            found.iter().any(|(_, v)| sealer.open(v).is_ok()),
            "{}: nothing opens with the new key",
            dir.display()
        );
    }
    c.nodes[0].set_extra_args(&[hb[0], hb[1], "--seal-key-file", &arg(&old_keys[0])]);
    refuses_to_start(&mut c.nodes[0], "not the seal key").await?;
    Ok(())
}
