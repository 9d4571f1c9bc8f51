//! Raft between global nodes is mutual TLS by default, attacked with real processes and
//! real bytes: forged frames from outside, a certificate from another CA, a member that
//! speaks for another, join tokens reused, altered, expired or used by the wrong node, a
//! flood of half-open handshakes, and the plaintext mode that exists only behind a flag
//! whose name says it is insecure (where the same forged frame does take over, which
//! shows the attack is real).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_pki::CertKey;
use causeway_pki::sealing::Sealer;
use causeway_tests::{GlobalCluster, GlobalNode, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A Raft MsgHeartbeat as the transport frames it (a length-prefixed eraftpb.Message),
/// hand-encoded: msg_type (1) = 8, to (2), from (3), term (4).
fn heartbeat_frame(from: u64, to: u64, term: u64) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut msg = Vec::new();
    for (field, value) in [(1u64, 8u64), (2, to), (3, from), (4, term)] {
        varint(field << 3, &mut msg);
        varint(value, &mut msg);
    }
    let mut frame = (msg.len() as u32).to_be_bytes().to_vec();
    frame.extend(msg);
    frame
}

/// The Raft term node `i` is in.
async fn term(c: &GlobalCluster, i: usize) -> anyhow::Result<u64> {
    let (s, v) = c.call(i, Method::GET, "/cluster", None).await?;
    anyhow::ensure!(s == StatusCode::OK, "GET /cluster: {s} {v}");
    v["term"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no term in {v}"))
}

/// Sends `bytes` on a plain TCP connection, then reads until the node closes it (or 3 s
/// pass, which is what a node that reads on would look like).
fn send_plain(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(bytes)?;
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Connects in TLS as `client` (trusting `ca_pem` for the node, named `name`), sends
/// `bytes`, and reads until the node closes the connection or 3 s pass.
fn send_tls(addr: SocketAddr, name: &str, ca_pem: &str, client: &CertKey, bytes: &[u8]) {
    let cfg = causeway_pki::client_config(ca_pem, Some(client)).expect("client config");
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("connection");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if tls.write_all(bytes).and_then(|()| tls.flush()).is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A node's own Raft certificate and key, as only its operator can read them: the key
/// opened with the node's seal key.
fn raft_identity_of(node: &GlobalNode) -> anyhow::Result<(String, CertKey)> {
    let dir = node.dir.join("raft");
    let sealer = Sealer::from_file("--seal-key-file", &node.seal_key_file())?;
    let key_pem = sealer.open(read(&dir.join("node-key.sealed")).trim())?;
    Ok((
        read(&dir.join("ca.pem")),
        CertKey {
            cert_pem: read(&dir.join("node.pem")),
            key_pem,
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_frames_change_nothing_unless_raft_runs_in_plaintext() -> anyhow::Result<()> {
    // The control: with --insecure-raft-plaintext, one forged heartbeat from outside
    // takes a node over to the attacker's term.
    let plain =
        GlobalCluster::start_formed_at_once(3, |_| vec!["--insecure-raft-plaintext".to_string()])
            .await?;
    let forged = term(&plain, 0).await? + 1000;
    let n = &plain.nodes[0];
    send_plain(n.raft, &heartbeat_frame(2, n.id, forged))?;
    eventually(
        "the forged term to take",
        Duration::from_secs(10),
        || async { (term(&plain, 0).await.ok()? >= forged).then_some(()) },
    )
    .await?;
    let log = read(&n.log_path());
    assert!(
        log.contains("--insecure-raft-plaintext: Raft traffic between nodes is NOT encrypted"),
        "{log}"
    );
    drop(plain);

    // By default Raft is mutual TLS: the same bytes are refused at the handshake.
    let c = GlobalCluster::start(3, &[]).await?;
    let mut forged = 0;
    for i in 0..3 {
        forged = forged.max(term(&c, i).await? + 1000);
    }
    for n in &c.nodes {
        let other = if n.id == 1 { 2 } else { 1 };
        send_plain(n.raft, &heartbeat_frame(other, n.id, forged))?;
    }
    // A certificate the attacker minted for "node 2" from a CA of their own is refused.
    let (cluster_ca, _) = raft_identity_of(&c.nodes[0])?;
    let rogue_ca = causeway_pki::generate_ca(causeway_pki::RAFT_CA_NAME)?;
    let rogue = causeway_pki::issue_raft_node(&rogue_ca, 2)?;
    let target = &c.nodes[0];
    send_tls(
        target.raft,
        &causeway_pki::raft_node_name(target.id),
        &cluster_ca,
        &rogue,
        &heartbeat_frame(2, target.id, forged),
    );
    // A member cannot speak for another: node 2's real certificate carrying a frame
    // that claims to come from node 3 ends the connection.
    let (_, node2) = raft_identity_of(&c.nodes[1])?;
    send_tls(
        target.raft,
        &causeway_pki::raft_node_name(target.id),
        &cluster_ca,
        &node2,
        &heartbeat_frame(3, target.id, forged),
    );
    // Writes still commit and read back on every node, and none took the forged term.
    let (s, v) = c
        .call(
            0,
            Method::PUT,
            "/meshes/after-attack",
            Some(&json!({"type": "Mesh", "name": "after-attack"})),
        )
        .await?;
    assert!(s.is_success(), "{s} {v}");
    for i in 0..3 {
        let (s, _) = c.call(i, Method::GET, "/meshes/after-attack", None).await?;
        assert_eq!(s, StatusCode::OK, "node {}", c.nodes[i].id);
        let t = term(&c, i).await?;
        assert!(
            t < forged,
            "node {} is in the forged term {t}",
            c.nodes[i].id
        );
    }
    let log = read(&target.log_path());
    assert!(
        log.contains("raft peer failed mutual TLS; refused"),
        "{log}"
    );
    assert!(
        log.contains("raft message claims another node than its connection's certificate"),
        "{log}"
    );
    assert!(!log.contains("NOT encrypted"), "{log}");
    Ok(())
}

/// POSTs a join with `token` (and a fresh CSR) to node `i`; no API token.
async fn post_join(
    c: &GlobalCluster,
    i: usize,
    token: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let csr = causeway_pki::generate_csr("attacker")?;
    c.call_with(
        i,
        None,
        Method::POST,
        "/cluster/join",
        Some(&json!({"token": token, "csr_pem": csr.csr_pem})),
    )
    .await
}

/// Waits until `node` exits on its own; returns its log.
async fn exits(node: &GlobalNode) -> anyhow::Result<String> {
    let status = eventually(
        &format!("node {} to exit", node.id),
        Duration::from_secs(30),
        || async { node.exited() },
    )
    .await?;
    assert!(!status.success(), "node {} exited with {status}", node.id);
    Ok(read(&node.log_path()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_works_once_for_its_node_before_it_expires() -> anyhow::Result<()> {
    let mut c = GlobalCluster::start(1, &[]).await?;
    let elsewhere = tempfile::tempdir()?;
    let i2 = c.new_node(2, &[]);
    let token_file = c.add_member(i2).await?;
    let token = read(&token_file).trim().to_string();
    let mut tokens = vec![token.clone()];

    // Started as another node, it is refused before anything is sent.
    let mut wrong = GlobalNode::new(elsewhere.path(), 5, &[]);
    wrong.start_joining(&token_file)?;
    let log = exits(&wrong).await?;
    assert!(
        log.contains("the join token was issued for node 2, not 5"),
        "{log}"
    );
    // Altered, it is unknown.
    let altered = format!("{}A", token);
    let (s, v) = post_join(&c, 0, &altered).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown join token"),
        "{v}"
    );

    // The real node joins with it, and gets the cluster's seal key at a path of its own.
    c.nodes[i2].seal_key = c.tmp.path().join("node-2.seal.key");
    c.nodes[i2].start_joining(&token_file)?;
    c.wait_ready(i2).await?;
    assert_eq!(
        read(&c.nodes[i2].seal_key),
        read(&c.nodes[0].seal_key_file()),
        "the joined node holds the cluster's seal key"
    );
    // Spent: whoever reads the token later cannot use it, over the API or as a node.
    let (s, v) = post_join(&c, 1, &token).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("already used"),
        "{v}"
    );
    let mut again = GlobalNode::new(elsewhere.path(), 2, &[]);
    again.start_joining(&token_file)?;
    let log = exits(&again).await?;
    assert!(log.contains("already used"), "{log}");

    // An expired token is refused; `causeway cluster join-token` issues a new one.
    let i3 = c.new_node(3, &[]);
    let body = json!({
        "id": 3,
        "raft_addr": c.nodes[i3].raft.to_string(),
        "api_addr": c.nodes[i3].api.to_string(),
        "token_ttl": "1s",
    });
    let (s, v) = c
        .call(0, Method::POST, "/cluster/members", Some(&body))
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let short = v["join_token"].as_str().unwrap().to_string();
    let expires = v["expires_unix"].as_i64().unwrap();
    tokens.push(short.clone());
    let short_file = c.tmp.path().join("join-3-short.token");
    std::fs::write(&short_file, &short)?;
    eventually("the token to expire", Duration::from_secs(10), || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        (now > expires).then_some(())
    })
    .await?;
    c.nodes[i3].seal_key = c.tmp.path().join("node-3.seal.key");
    c.nodes[i3].start_joining(&short_file)?;
    let log = exits(&c.nodes[i3]).await?;
    assert!(log.contains("expired"), "{log}");
    let fresh_file = c.tmp.path().join("join-3.token");
    let (ok, out, err) = c.cli(&[
        "cluster",
        "join-token",
        "--id",
        "3",
        "--token-out",
        fresh_file.to_str().unwrap(),
    ])?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("--join-token-file"), "{out}");
    tokens.push(read(&fresh_file).trim().to_string());
    c.nodes[i3].start_joining(&fresh_file)?;
    c.wait_ready(i3).await?;

    // Three members in mutual TLS: a write commits and reads back on each.
    let (s, v) = c
        .call(
            2,
            Method::PUT,
            "/meshes/joined",
            Some(&json!({"type": "Mesh", "name": "joined"})),
        )
        .await?;
    assert!(s.is_success(), "{s} {v}");
    for i in 0..3 {
        let (s, _) = c.call(i, Method::GET, "/meshes/joined", None).await?;
        assert_eq!(s, StatusCode::OK);
        // Every node knows all three voters (a joined node learns the membership from
        // a snapshot, not by replaying a log that does not hold the first member).
        let (_, v) = c.call(i, Method::GET, "/cluster", None).await?;
        let voters = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        assert_eq!(voters, 3, "node {}: {v}", c.nodes[i].id);
    }
    // Only a node's newest token works: re-issuing one retires the one before.
    let i4 = c.new_node(4, &[]);
    let first = read(&c.add_member(i4).await?).trim().to_string();
    let (s, v) = c
        .call(
            0,
            Method::POST,
            "/cluster/members/4/join-token",
            Some(&json!({})),
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    tokens.extend([first.clone(), v["join_token"].as_str().unwrap().to_string()]);
    let (s, v) = post_join(&c, 0, &first).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // `cluster remove-node` of a node that was added and never joined cancels its
    // tokens: the newest one is refused too.
    let (ok, out, err) = c.cli(&["cluster", "remove-node", "4"])?;
    assert!(ok, "{out}{err}");
    let (s, v) = post_join(&c, 0, &tokens[tokens.len() - 1]).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        c.call(0, Method::GET, "/cluster", None).await?.1["members"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "node 4 never became a member"
    );
    // A joined node restarted without its token (or any --peer) comes back: it never
    // forms a cluster of its own.
    c.nodes[i2].kill();
    c.nodes[i2].start(&[], false)?;
    c.wait_ready(i2).await?;
    let (_, v) = c.call(i2, Method::GET, "/cluster", None).await?;
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");

    // No log holds a join token (node 4 never started).
    for n in c
        .nodes
        .iter()
        .chain([&wrong, &again])
        .filter(|n| n.log_path().exists())
    {
        let log = read(&n.log_path());
        for t in &tokens {
            assert!(
                !log.contains(t.as_str()),
                "node {}'s log holds a join token",
                n.id
            );
        }
    }
    Ok(())
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_handshakes_costs_little_and_stops_nothing() -> anyhow::Result<()> {
    const FLOOD: usize = 400;
    let c = GlobalCluster::start(3, &[]).await?;
    let target = &c.nodes[0];
    let pid = target.pid().expect("running");
    let before = rss_kib(pid);
    // Half never send a byte; half send the first bytes of a TLS record and stop.
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(target.raft)?;
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])?;
        }
        flood.push(s);
    }
    // The members' own connections are up: writes commit and reach the flooded node.
    for k in 0..5 {
        let name = format!("during-flood-{k}");
        let (s, v) = c
            .call(
                1,
                Method::PUT,
                &format!("/meshes/{name}"),
                Some(&json!({"type": "Mesh", "name": name})),
            )
            .await?;
        assert!(s.is_success(), "{s} {v}");
        let (s, _) = c
            .call(0, Method::GET, &format!("/meshes/{name}"), None)
            .await?;
        assert_eq!(s, StatusCode::OK);
    }
    let during = rss_kib(pid);
    let per_conn = during.saturating_sub(before) * 1024 / FLOOD as u64;
    eprintln!(
        "RSS {before} KiB before, {during} KiB with {FLOOD} half-open connections: {per_conn} B each"
    );
    assert!(
        per_conn <= 8 * 1024,
        "each half-open connection costs {per_conn} B ({before} -> {during} KiB)"
    );
    // Each is cut off within the handshake timeout (3 s), or at once past the limit of
    // handshakes in progress.
    let started = std::time::Instant::now();
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => {} // a TLS alert, then the close
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a half-open connection was kept past 10 s"
            ),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_raft_is_a_flag_and_a_cluster_of_several_at_once_needs_certificates()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Without certificates, nodes that would form a cluster together are refused: only
    // a node forming one alone can generate the cluster's Raft CA.
    let mut a = GlobalNode::new(tmp.path(), 1, &[]);
    a.start(&[(2, causeway_tests::free_addr())], false)?;
    let log = exits(&a).await?;
    assert!(
        log.contains("needs their Raft certificates") && log.contains("causeway cluster add-node"),
        "{log}"
    );
    // --join without a token or certificates says what it needs.
    let mut b = GlobalNode::new(tmp.path(), 2, &[]);
    b.start(&[(1, causeway_tests::free_addr())], true)?;
    let log = exits(&b).await?;
    assert!(log.contains("--join needs --join-token"), "{log}");
    // The insecure flag is said at every start.
    let mut p =
        GlobalCluster::start_formed_at_once(1, |_| vec!["--insecure-raft-plaintext".to_string()])
            .await?;
    p.nodes[0].kill();
    p.nodes[0].start(&[], false)?;
    p.wait_ready(0).await?;
    let warned = read(&p.nodes[0].log_path())
        .matches("--insecure-raft-plaintext: Raft traffic between nodes is NOT encrypted")
        .count();
    assert_eq!(warned, 2);
    Ok(())
}

async fn raft_ca_status(c: &GlobalCluster) -> anyhow::Result<serde_json::Value> {
    let (s, v) = c.call(0, Method::GET, "/cluster/raft-ca", None).await?;
    anyhow::ensure!(s == StatusCode::OK, "GET /cluster/raft-ca: {s} {v}");
    Ok(v)
}

/// The Raft CA rotates while the cluster runs and writes: every node trusts the new CA
/// before any presents a certificate from it, each issues itself one and reconnects with
/// it, and once the old CA is dropped a node's old certificate opens nothing. A node
/// restarted afterwards comes back on its new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_ca_rotates_while_the_cluster_writes() -> anyhow::Result<()> {
    let mut c = GlobalCluster::start(3, &[]).await?;
    let (old_ca, old_node2) = raft_identity_of(&c.nodes[1])?;
    let before = raft_ca_status(&c).await?;
    assert_eq!(before["phase"], "steady", "{before}");
    assert_eq!(before["next"]["ready"], true, "{before}");
    let old_sha = before["cas"][0]["sha256"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for n in before["nodes"].as_array().into_iter().flatten() {
        assert_eq!(n["presenting"], old_sha.as_str(), "{before}");
    }

    // Writes go on, through every node, while the CLI takes the three steps.
    let mut rotate = c
        .cli_command(&["cluster", "raft-ca", "rotate", "--timeout", "60s"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut writes = 0;
    while rotate.try_wait()?.is_none() || writes < 6 {
        let i = writes % 3;
        let name = format!("during-rotation-{writes}");
        let (s, v) = c
            .call(
                i,
                Method::PUT,
                &format!("/meshes/{name}"),
                Some(&json!({"type": "Mesh", "name": name})),
            )
            .await?;
        assert!(s.is_success(), "write {writes} through node {i}: {s} {v}");
        writes += 1;
    }
    eprintln!("{writes} writes during the rotation");
    let rotation = rotate.wait_with_output()?;
    let err = String::from_utf8_lossy(&rotation.stderr);
    anyhow::ensure!(
        rotation.status.success(),
        "raft-ca rotate: {err}\n{}",
        c.logs()
    );
    for step in ["stage: done", "activate: done", "finish: done"] {
        assert!(err.contains(step), "{err}");
    }
    for i in 0..3 {
        let (s, _) = c
            .call(
                i,
                Method::GET,
                &format!("/meshes/during-rotation-{}", writes - 1),
                None,
            )
            .await?;
        assert_eq!(s, StatusCode::OK, "node {i} has every write");
    }
    let after = raft_ca_status(&c).await?;
    assert_eq!(after["phase"], "steady", "{after}");
    let new_sha = after["cas"][0]["sha256"].as_str().unwrap_or("").to_string();
    assert_ne!(new_sha, old_sha, "{after}");
    assert_eq!(after["cas"].as_array().map(Vec::len), Some(1), "{after}");
    for n in after["nodes"].as_array().into_iter().flatten() {
        assert_eq!(n["presenting"], new_sha.as_str(), "{after}");
        assert_eq!(n["trusted"], json!([new_sha]), "{after}");
    }
    // Each data dir holds the new identity: a certificate from the new CA, trusting it
    // alone.
    for n in &c.nodes {
        let (ca, node) = raft_identity_of(n)?;
        assert!(
            !causeway_pki::issued_by(&node.cert_pem, &old_ca),
            "node {}",
            n.id
        );
        assert!(
            causeway_pki::issued_by(&node.cert_pem, &ca),
            "node {}",
            n.id
        );
        assert!(
            !ca.contains(old_ca.trim()),
            "node {} still trusts the old CA",
            n.id
        );
    }

    // Node 2's old certificate (a copy an attacker kept) no longer opens Raft.
    let refusals = |n: &GlobalNode| {
        read(&n.log_path())
            .matches("raft peer failed mutual TLS")
            .count()
    };
    let target = &c.nodes[0];
    let refused_before = refusals(target);
    let mut forged = 0;
    for i in 0..3 {
        forged = forged.max(term(&c, i).await? + 1000);
    }
    send_tls(
        target.raft,
        &causeway_pki::raft_node_name(target.id),
        &raft_identity_of(target)?.0,
        &old_node2,
        &heartbeat_frame(2, target.id, forged),
    );
    eventually(
        "the old certificate refused",
        Duration::from_secs(10),
        || async { (refusals(target) > refused_before).then_some(()) },
    )
    .await?;
    assert!(
        term(&c, 0).await? < forged,
        "the old certificate's frame took"
    );

    // A node restarted on its new identity rejoins and catches up.
    c.nodes[2].kill();
    let (s, v) = c
        .call(
            0,
            Method::PUT,
            "/meshes/while-node-3-was-down",
            Some(&json!({"type": "Mesh", "name": "while-node-3-was-down"})),
        )
        .await?;
    assert!(s.is_success(), "{s} {v}");
    c.nodes[2].start(&[], false)?;
    c.wait_ready(2).await?;
    eventually("node 3 caught up", Duration::from_secs(30), || async {
        let (s, _) = c
            .call(2, Method::GET, "/meshes/while-node-3-was-down", None)
            .await
            .ok()?;
        (s == StatusCode::OK).then_some(())
    })
    .await?;
    Ok(())
}
