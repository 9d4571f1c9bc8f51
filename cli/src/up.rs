//! `causeway up`: the whole mesh on loopback in one command, for a first look. It starts
//! real processes of this same binary: a three-node global control plane, zones `zone-a`
//! and `zone-b` with one ingress each, and demo services with sidecars (`frontend` in
//! zone-a calling `backend`, which runs in both zones). It shows progress, prints what
//! runs and what to try, and on Ctrl-C stops everything it started. State and logs stay
//! in the data directory; nothing else on the machine is touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Connection};

/// Start a whole mesh on loopback: 3 global nodes, zones zone-a and zone-b with an
/// ingress each, and demo services with sidecars. Ctrl-C stops it all.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Where state and logs go; it must not exist or be empty. Default: a new directory
    /// under the system's temp dir. Kept after Ctrl-C.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First port of the block `up` uses: BASE to BASE+240 on 127.0.0.1.
    #[arg(long, default_value = "7700")]
    port_base: u16,
}

/// Ports of everything `up` starts, as offsets from `--port-base`.
struct Ports(u16);

impl Ports {
    fn global(&self, i: u16) -> (u16, u16, u16) {
        let b = self.0 + 10 * i;
        (b, b + 1, b + 2) // api, kds, raft
    }
    fn zone(&self, i: u16) -> (u16, u16) {
        let b = self.0 + 100 + 10 * i;
        (b, b + 1) // api, dds
    }
    fn ingress(&self, i: u16) -> (u16, u16) {
        let b = self.0 + 120 + 10 * i;
        (b, b + 1) // listen, admin
    }
    /// A service instance: app, sidecar inbound, outbound, admin.
    fn service(&self, i: u16) -> (u16, u16, u16, u16) {
        let b = self.0 + 200 + 10 * i;
        (b, b + 1, b + 2, b + 3)
    }
    fn all(&self) -> Vec<u16> {
        let mut v = Vec::new();
        for i in 0..3 {
            let (a, k, r) = self.global(i);
            v.extend([a, k, r]);
        }
        for i in 0..2 {
            let (a, d) = self.zone(i);
            let (l, m) = self.ingress(i);
            v.extend([a, d, l, m]);
        }
        for i in 0..3 {
            let (a, b, c, d) = self.service(i);
            v.extend([a, b, c, d]);
        }
        v
    }
}

const ZONES: [&str; 2] = ["zone-a", "zone-b"];
/// Service instances: (name, service, zone index, calls backend).
const SERVICES: [(&str, &str, u16, bool); 3] = [
    ("frontend-1", "frontend", 0, true),
    ("backend-a", "backend", 0, false),
    ("backend-b", "backend", 1, false),
];

/// The processes `up` started; all are stopped when it ends, however it ends.
struct Children {
    exe: PathBuf,
    logs: PathBuf,
    procs: Vec<(String, Child)>,
    reported: Vec<String>,
}

impl Children {
    fn spawn(&mut self, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log_path = self.logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    /// Fails (with the end of its log) if a process exited.
    fn check(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{name} exited ({status}):\n  {}", tail.join("\n  "));
            }
        }
        Ok(())
    }

    /// Reports, once each, processes that exited while the mesh runs.
    fn report_exits(&mut self) {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait()
                && !self.reported.contains(name)
            {
                eprintln!(
                    "! {name} exited ({status}); its log: {}",
                    self.logs.join(format!("{name}.log")).display()
                );
                self.reported.push(name.clone());
            }
        }
    }

    /// SIGTERM to all (they drain), then SIGKILL to what is left after `grace`.
    fn stop(&mut self, grace: Duration) {
        for (_, child) in self.procs.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.procs.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, failing early if a process exited.
async fn wait_for<T, F, Fut>(
    children: &mut Children,
    what: &str,
    timeout: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        children.check()?;
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}; logs in {}",
                children.logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step(n: usize, what: &str) -> Instant {
    eprint!("[{n}/5] {what} ... ");
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("ready ({:.1} s)", started.elapsed().as_secs_f64());
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn ready(http: &reqwest::Client, url: &str) -> Option<()> {
    let r = http.get(url).send().await.ok()?;
    r.status().is_success().then_some(())
}

fn prepare_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "causeway-up-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )),
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--data-dir {} is not empty; `up` starts a fresh mesh: pick another directory or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn check_ports(ports: &Ports) -> anyhow::Result<()> {
    for p in ports.all() {
        if TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!(
                "port {p} on 127.0.0.1 is in use; `up` needs {}-{}: stop what uses it or pass --port-base",
                ports.0,
                ports.0 + 240
            );
        }
    }
    Ok(())
}

async fn post_token(client: &Client, path: &str, body: Value, file: &Path) -> anyhow::Result<()> {
    let (_, v) = client.request(Method::POST, path, Some(&body)).await?;
    let token = v["token"].as_str().context("the API sent no token")?;
    causeway_global_cp::tls::write_private(file, &format!("{token}\n"))
        .with_context(|| format!("writing {}", file.display()))
}

pub(crate) async fn run(a: UpArgs) -> anyhow::Result<()> {
    let ports = Ports(a.port_base);
    anyhow::ensure!(
        a.port_base.checked_add(240).is_some(),
        "--port-base {} leaves no room for the 240 ports `up` needs",
        a.port_base
    );
    check_ports(&ports)?;
    let dir = prepare_dir(a.data_dir)?;
    let mut children = Children {
        exe: std::env::current_exe().context("finding this binary")?,
        logs: dir.join("logs"),
        procs: Vec::new(),
        reported: Vec::new(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    eprintln!(
        "Starting a Causeway mesh on 127.0.0.1 (state and logs in {})",
        dir.display()
    );

    // 1. Global control plane: node 1 forms the cluster alone (generating its CAs, the
    // Raft CA among them, and the seal key) and hands the API tokens out into
    // global-tokens/; nodes 2 and 3 are added one by one and join with single-use join
    // tokens, which bring them their Raft certificates and the seal key.
    let t = step(
        1,
        "global control plane, 3 Raft nodes (mutual TLS between them)",
    );
    let key_file = dir.join("global-seal.key");
    let tokens = dir.join("global-tokens");
    let global_args = |i: u16| {
        let (api, kds, raft) = ports.global(i);
        let mut args = strings(&["global-cp", "--node-id"]);
        args.push((i + 1).to_string());
        args.extend([
            "--data-dir".into(),
            dir.join(format!("global-{}", i + 1)).display().to_string(),
            "--api-addr".into(),
            format!("127.0.0.1:{api}"),
            "--kds-addr".into(),
            format!("127.0.0.1:{kds}"),
            "--raft-addr".into(),
            format!("127.0.0.1:{raft}"),
            "--seal-key-file".into(),
            key_file.display().to_string(),
        ]);
        args
    };
    let mut first = global_args(0);
    first.extend(["--token-out-dir".into(), tokens.display().to_string()]);
    children.spawn("global-1", &first)?;
    let g1 = dir.join("global-1");
    wait_for(
        &mut children,
        "the cluster to form",
        Duration::from_secs(60),
        || async {
            (tokens.join(causeway_global_cp::ADMIN_TOKEN_FILE).exists()
                && g1.join("api-ca.pem").exists())
            .then_some(())
        },
    )
    .await?;
    let token = crate::config::read_trimmed(&tokens.join(causeway_global_cp::ADMIN_TOKEN_FILE))?;
    let addrs: Vec<String> = (0..3)
        .map(|i| format!("https://127.0.0.1:{}", ports.global(i).0))
        .collect();
    let ca_pem = std::fs::read_to_string(g1.join("api-ca.pem"))?;
    let ready_http = reqwest::Client::builder()
        .use_preconfigured_tls(causeway_global_cp::tls::client_config(&ca_pem, None)?)
        .timeout(Duration::from_secs(5))
        .build()?;
    let client = Client::new(Connection {
        addrs: addrs.clone(),
        token: Some(token.clone()),
        ca_pem: Some(ca_pem),
    })?;
    for i in 1..3u16 {
        let (api, _, raft) = ports.global(i);
        let (_, v) = client
            .request(
                Method::POST,
                "/cluster/members",
                Some(&json!({"id": i + 1, "raft_addr": format!("127.0.0.1:{raft}"), "api_addr": format!("127.0.0.1:{api}")})),
            )
            .await?;
        let join = v["join_token"]
            .as_str()
            .context("the cluster issued no join token")?;
        let join_file = dir.join(format!("global-{}.join-token", i + 1));
        causeway_global_cp::tls::write_private(&join_file, &format!("{join}\n"))?;
        let mut args = global_args(i);
        args.extend(["--join-token-file".into(), join_file.display().to_string()]);
        children.spawn(&format!("global-{}", i + 1), &args)?;
        let url = format!("https://127.0.0.1:{api}/ready");
        wait_for(
            &mut children,
            &format!("global node {} to join", i + 1),
            Duration::from_secs(60),
            || ready(&ready_http, &url),
        )
        .await?;
    }
    client.get("/cluster").await?;
    done(t);

    // 2. The mesh and its first policy.
    let t = step(
        2,
        "mesh \"default\" with mTLS, traffic allowed between its services",
    );
    for (path, body) in [
        (
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict", "backend": {"type": "builtin"}}}}),
        ),
        (
            "/meshes/default/meshtrafficpermissions/allow-all",
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
                   "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}),
        ),
    ] {
        client.request(Method::PUT, path, Some(&body)).await?;
    }
    done(t);

    // 3. Zones.
    let t = step(3, "zones zone-a and zone-b");
    let globals: Vec<String> = (0..3)
        .map(|i| format!("https://127.0.0.1:{}", ports.global(i).1))
        .collect();
    for (i, zone) in ZONES.iter().enumerate() {
        let (api, dds) = ports.zone(i as u16);
        let token_file = dir.join(format!("{zone}.token"));
        post_token(
            &client,
            &format!("/zones/{zone}/token"),
            json!({}),
            &token_file,
        )
        .await?;
        let mut args = strings(&["zone-cp", "--zone", zone]);
        args.extend([
            "--token-file".into(),
            token_file.display().to_string(),
            "--data-dir".into(),
            dir.join(zone).display().to_string(),
            "--seal-key-file".into(),
            dir.join(format!("{zone}-seal.key")).display().to_string(),
            "--token-out-dir".into(),
            dir.join(format!("{zone}-tokens")).display().to_string(),
            "--api-addr".into(),
            format!("127.0.0.1:{api}"),
            "--dds-addr".into(),
            format!("127.0.0.1:{dds}"),
            "--global".into(),
            globals.join(","),
        ]);
        children.spawn(zone, &args)?;
    }
    wait_for(
        &mut children,
        "both zones online",
        Duration::from_secs(60),
        || async {
            let (_, v) = client.request(Method::GET, "/zones", None).await.ok()?;
            let online = v["items"]
                .as_array()?
                .iter()
                .filter(|z| z["status"]["online"] == true)
                .count();
            (online == ZONES.len()).then_some(())
        },
    )
    .await?;
    done(t);

    let cp_args = |zone: usize, token: &Path| -> Vec<String> {
        vec![
            "--cp".into(),
            format!("https://127.0.0.1:{}", ports.zone(zone as u16).1),
            "--cp-ca-file".into(),
            dir.join(ZONES[zone])
                .join("api-ca.pem")
                .display()
                .to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ]
    };

    // 4. One ingress per zone.
    let t = step(4, "an ingress per zone");
    for (i, zone) in ZONES.iter().enumerate() {
        let (listen, admin) = ports.ingress(i as u16);
        let token_file = dir.join(format!("{zone}-ingress.token"));
        post_token(
            &client,
            &format!("/zones/{zone}/ingress-token"),
            json!({}),
            &token_file,
        )
        .await?;
        let mut args = vec!["ingress".to_string()];
        args.extend(cp_args(i, &token_file));
        args.extend([
            "--name".into(),
            format!("{zone}-ingress"),
            "--listen".into(),
            format!("127.0.0.1:{listen}"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin}"),
        ]);
        children.spawn(&format!("{zone}-ingress"), &args)?;
    }
    for i in 0..ZONES.len() {
        let url = format!("http://127.0.0.1:{}/ready", ports.ingress(i as u16).1);
        wait_for(
            &mut children,
            "the ingresses",
            Duration::from_secs(60),
            || ready(&http, &url),
        )
        .await?;
    }
    done(t);

    // 5. Demo services behind sidecars.
    let t = step(
        5,
        "frontend (zone-a) -> backend (zone-a, zone-b), with sidecars",
    );
    for (i, (name, service, zone, calls)) in SERVICES.iter().enumerate() {
        let (app, inbound, outbound, admin) = ports.service(i as u16);
        let zone_name = ZONES[*zone as usize];
        let mut args = strings(&["demo-app", "--service", service, "--zone", zone_name]);
        args.extend([
            "--instance".into(),
            name.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{app}"),
        ]);
        if *calls {
            args.extend(["--call".into(), format!("http://127.0.0.1:{outbound}/")]);
        }
        children.spawn(&format!("{name}-app"), &args)?;
        let token_file = dir.join(format!("{name}.token"));
        post_token(
            &client,
            "/meshes/default/dataplane-token",
            json!({"service": service}),
            &token_file,
        )
        .await?;
        let mut spec = json!({
            "address": "127.0.0.1",
            "adminPort": admin,
            "inbound": [{"port": inbound, "servicePort": app, "service": service, "protocol": "http"}],
        });
        if *calls {
            spec["outbound"] = json!([{"port": outbound, "service": "backend"}]);
        }
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": spec});
        let dp_file = dir.join(format!("{name}.yaml"));
        std::fs::write(&dp_file, serde_yaml::to_string(&dp)?)?;
        let mut args = vec!["dataplane".to_string()];
        args.extend(cp_args(*zone as usize, &token_file));
        args.extend(["--dataplane-file".into(), dp_file.display().to_string()]);
        children.spawn(&format!("{name}-sidecar"), &args)?;
    }
    for i in 0..SERVICES.len() {
        let url = format!("http://127.0.0.1:{}/ready", ports.service(i as u16).3);
        wait_for(
            &mut children,
            "the sidecars",
            Duration::from_secs(60),
            || ready(&http, &url),
        )
        .await?;
    }
    let frontend = format!("http://127.0.0.1:{}/", ports.service(0).0);
    wait_for(
        &mut children,
        "frontend -> backend",
        Duration::from_secs(60),
        || ready(&http, &frontend),
    )
    .await?;
    done(t);

    // What to try.
    let spread = dir.join("backend-across-zones.yaml");
    std::fs::write(
        &spread,
        "type: MeshLoadBalancingStrategy\nmesh: default\nname: backend-across-zones\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: MeshService, name: backend}\n      default:\n        loadBalancer: {type: RoundRobin}\n        localityAwareness: {disabled: true}\n",
    )?;
    let api_list: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports.global(i).0))
        .collect();
    println!();
    println!("Causeway is up.");
    println!();
    println!(
        "  global control plane  {}  (Raft, 3 nodes)",
        api_list.join(", ")
    );
    for (i, zone) in ZONES.iter().enumerate() {
        let (api, dds) = ports.zone(i as u16);
        let (ing, _) = ports.ingress(i as u16);
        println!("  {zone:<20}  API 127.0.0.1:{api}, DDS 127.0.0.1:{dds}, ingress 127.0.0.1:{ing}");
    }
    for (i, (name, service, zone, _)) in SERVICES.iter().enumerate() {
        let (app, _, _, admin) = ports.service(i as u16);
        println!(
            "  {name:<20}  {service} in {}: app 127.0.0.1:{app}, sidecar admin 127.0.0.1:{admin}",
            ZONES[*zone as usize]
        );
    }
    println!();
    println!("  admin token  {token}");
    println!("  logs         {}", children.logs.display());
    println!();
    println!("Use it from another terminal:");
    println!();
    println!(
        "  export CAUSEWAY_ADDR={} CAUSEWAY_TOKEN={token} CAUSEWAY_CA_FILE={}",
        api_list.join(","),
        g1.join("api-ca.pem").display()
    );
    println!();
    println!("  # 1. call the frontend: it calls backend through its sidecar, over mTLS");
    println!("  curl -s {frontend}");
    println!(
        "  # 2. apply a policy: spread backend calls over both zones (zone-b's through its ingress)"
    );
    println!(
        "  causeway apply -f {} && for i in 1 2 3 4; do curl -s {frontend}; echo; done",
        spread.display()
    );
    println!(
        "  # 3. rehearse zone-b going down: zone-a's probe reports how traffic moved and what it cost"
    );
    println!("  causeway drill zone-down --zone zone-b --probe backend --duration 30s");
    println!();
    println!("Ctrl-C stops everything `up` started.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => children.report_exits(),
        }
    }
    eprintln!("\nstopping ...");
    children.stop(Duration::from_secs(10));
    eprintln!("stopped; state and logs are kept in {}", dir.display());
    Ok(())
}
