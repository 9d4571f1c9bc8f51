//! Harness for end-to-end tests: starts real `causeway` processes on free loopback ports in
//! temporary directories, waits for readiness by polling with a deadline, and kills every
//! process it started when dropped. Test code only; nothing here ships.

pub mod browser;
pub mod mesh;
pub mod secrets;
pub mod websocket;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Runs a command; its standard output, or an error with its standard error.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An outside tool a test runs: the file `$env` names, else `name` on PATH. Without
/// one the test fails with `how_to_get`; it never skips.
pub fn external_tool(env: &str, name: &str, how_to_get: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("no {name}: set {env} or put {name} on PATH ({how_to_get})"))
}

/// The `causeway` binary: `$CAUSEWAY_BIN`, or `target/<profile>/causeway` next to the test.
pub fn causeway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAUSEWAY_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/causeway
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("causeway");
    assert!(
        bin.exists(),
        "{} not built; run `cargo build -p causeway-cli` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A free loopback address for a process to bind. Picked below Linux's ephemeral range
/// (32768+), so an outgoing connection of any process cannot take it between this check
/// and the bind; random, so parallel tests rarely pick the same one.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = ((std::process::id() ^ nanos) % 16000) as u16;
        let _ = NEXT.compare_exchange(0, 12000 + seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..20000 {
        let mut port = NEXT.fetch_add(1, Ordering::Relaxed);
        if !(12000..32000).contains(&port) {
            port = 12000 + port % 20000;
            NEXT.store(port + 1, Ordering::Relaxed);
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local addr");
        }
    }
    panic!("no free port between 12000 and 32000")
}

/// Every file under `dir`, recursively (logs, data dirs).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A plain-HTTP client for sidecar admin and outbound ports: no pooling, 5 s timeout.
pub fn plain_http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// `PUT` a resource through the cluster's API, failing on anything but success.
pub async fn put(c: &GlobalCluster, path: &str, body: &Value) -> anyhow::Result<()> {
    let (s, v) = c.call_retry(Method::PUT, path, Some(body)).await?;
    anyhow::ensure!(s.is_success(), "PUT {path}: {s} {v}");
    Ok(())
}

/// Opens `n` TCP connections to `addr` that send nothing, and sorts them within 3 s:
/// how many the listener closed (refused at its cap), and the ones it holds.
pub async fn flood(
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<(usize, Vec<tokio::net::TcpStream>)> {
    use tokio::io::AsyncReadExt as _;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(tokio::net::TcpStream::connect(addr).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut closed, mut open) = (0, Vec::new());
    for mut s in held {
        let mut buf = [0u8; 16];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(_) => closed += 1,
            Err(_) => open.push(s),
        }
    }
    Ok((closed, open))
}

/// Whether a new connection to `addr` is held (not closed within half a second).
pub async fn held_open(addr: SocketAddr) -> Option<()> {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
        .await
        .is_err()
        .then_some(())
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the proxy `p` (a sidecar or an ingress) answers `/ready` on its admin
/// address; on a timeout the error carries its log.
pub async fn admin_ready(what: &str, admin: SocketAddr, p: &Proc) -> anyhow::Result<()> {
    let http = plain_http();
    eventually(
        &format!("{what} ready"),
        Duration::from_secs(30),
        || async {
            let r = http
                .get(format!("http://{admin}/ready"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await
    .with_context(|| p.logs())
}

/// A proxy's `/config` (its config and certificate), or `None` while it cannot answer.
pub async fn admin_config(http: &reqwest::Client, admin: SocketAddr) -> Option<Value> {
    http.get(format!("http://{admin}/config"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The sum of the series a selector picks (`name{labels}`: the series that carry all
/// these labels, see `causeway_api::exposition::sum`) on a proxy's `/metrics`; 0 when
/// absent or unreachable.
pub async fn admin_metric(http: &reqwest::Client, admin: SocketAddr, series: &str) -> f64 {
    let text = match http.get(format!("http://{admin}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    causeway_api::exposition::sum(&text, series)
}

/// Sends `sig` (`-STOP`, `-TERM` ...) to a child process.
fn signal(c: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status();
}

/// Sends a request; returns the status and the JSON body (Null when empty).
pub async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, Value)> {
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, v))
}

/// One global control plane node process.
pub struct GlobalNode {
    pub id: u64,
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub raft: SocketAddr,
    /// KDS address (zones connect here).
    pub kds: SocketAddr,
    /// The seal key file (outside the data dir; created by the first node to start).
    pub seal_key: PathBuf,
    /// Where the node that forms the cluster writes the API tokens.
    pub token_dir: PathBuf,
    /// Behind a lock so a test can kill a node while other tasks are mid-request to it.
    child: std::sync::Mutex<Option<Child>>,
    extra_args: Vec<String>,
}

impl GlobalNode {
    /// Node `id` of the cluster in `tmp` (not started): its data dir `node-<id>`, the
    /// cluster's seal key `seal.key` and token dir `tokens`, beside the data dirs.
    pub fn new(tmp: &Path, id: u64, extra_args: &[&str]) -> GlobalNode {
        GlobalNode {
            id,
            dir: tmp.join(format!("node-{id}")),
            api: free_addr(),
            raft: free_addr(),
            kds: free_addr(),
            seal_key: tmp.join("seal.key"),
            token_dir: tmp.join("tokens"),
            child: Default::default(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().expect("child lock").is_some()
    }

    /// The flags its next start adds (it keeps them for later starts).
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("child lock")
            .as_ref()
            .map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Starts the process with the given initial peers (`id -> raft addr`).
    pub fn start(&mut self, peers: &[(u64, SocketAddr)], join: bool) -> anyhow::Result<()> {
        let mut args: Vec<String> = peers
            .iter()
            .flat_map(|(id, addr)| ["--peer".to_string(), format!("{id}={addr}")])
            .collect();
        if join {
            args.push("--join".into());
        }
        self.spawn(&args)
    }

    /// Starts the process as a node that joins with the join token in `token_file`
    /// (from `cluster add-node`): it gets its Raft certificate, the members and the seal
    /// key from the cluster.
    pub fn start_joining(&mut self, token_file: &Path) -> anyhow::Result<()> {
        self.spawn(&["--join-token-file".into(), token_file.display().to_string()])
    }

    fn spawn(&mut self, args: &[String]) -> anyhow::Result<()> {
        assert!(!self.is_running(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(causeway_bin());
        cmd.arg("global-cp")
            .args(["--node-id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--api-addr", &self.api.to_string()])
            .args(["--raft-addr", &self.raft.to_string()])
            .args(["--kds-addr", &self.kds.to_string()])
            .args(&self.extra_args)
            .args(args)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.extra_args.iter().any(|a| a == "--seal-key-file") {
            cmd.arg("--seal-key-file").arg(&self.seal_key);
        }
        if !self.extra_args.iter().any(|a| a == "--token-out-dir") {
            cmd.arg("--token-out-dir").arg(&self.token_dir);
        }
        *self.child.lock().expect("child lock") =
            Some(cmd.spawn().context("spawning causeway global-cp")?);
        Ok(())
    }

    /// The seal key file it is started with: its `--seal-key-file` extra flag, or the
    /// cluster's `seal.key`.
    pub fn seal_key_file(&self) -> PathBuf {
        self.extra_args
            .windows(2)
            .find(|w| w[0] == "--seal-key-file")
            .map_or_else(|| self.seal_key.clone(), |w| PathBuf::from(&w[1]))
    }

    /// The process's exit status, once it has exited on its own (then it counts as
    /// stopped).
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().expect("child lock");
        let status = child.as_mut()?.try_wait().ok()??;
        *child = None;
        Some(status)
    }

    /// `kill -9`.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the process stays alive but silent, like a partitioned host.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = self.child.lock().expect("child lock").as_ref() {
            signal(c, if paused { "-STOP" } else { "-CONT" });
        }
    }

    /// The admin token, as the node that formed the cluster handed it out.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.token_dir.join("admin-token"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn ca_pem(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("api-ca.pem")).ok()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.api)
    }

    pub fn kds_url(&self) -> String {
        format!("https://{}", self.kds)
    }
}

impl Drop for GlobalNode {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}

/// A cluster of global control plane processes in one temporary directory.
pub struct GlobalCluster {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<GlobalNode>,
    http: Option<reqwest::Client>,
    pub token: String,
}

impl GlobalCluster {
    /// Starts a cluster of `n` nodes as an operator would: the first forms it alone
    /// (generating its CAs), and each other is added with `POST /cluster/members` and
    /// started with its join token, one after the other. Each joining node has a seal key
    /// path of its own, which the cluster fills. Waits until the API answers on all.
    pub async fn start(n: u64, extra_args: &[&str]) -> anyhow::Result<GlobalCluster> {
        let tmp = tempfile::tempdir()?;
        let mut nodes: Vec<GlobalNode> = (1..=n)
            .map(|id| GlobalNode::new(tmp.path(), id, extra_args))
            .collect();
        nodes[0].start(&[], false)?;
        let mut c = GlobalCluster::of(tmp, nodes);
        c.wait_formed().await?;
        for i in 1..c.nodes.len() {
            c.join(i).await?;
        }
        Ok(c)
    }

    /// Starts `n` nodes that form a cluster at once (each given the others with --peer),
    /// as with the operator's own Raft certificates or --insecure-raft-plaintext;
    /// `args_of(id)` are each node's extra flags. Waits until the API answers on all.
    pub async fn start_formed_at_once(
        n: u64,
        args_of: impl Fn(u64) -> Vec<String>,
    ) -> anyhow::Result<GlobalCluster> {
        let tmp = tempfile::tempdir()?;
        let nodes: Vec<GlobalNode> = (1..=n)
            .map(|id| {
                let args = args_of(id);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                GlobalNode::new(tmp.path(), id, &args)
            })
            .collect();
        let mut c = GlobalCluster::of(tmp, nodes);
        for i in 0..c.nodes.len() {
            let peers = c.peers_of(i);
            c.nodes[i].start(&peers, false)?;
        }
        c.wait_formed().await?;
        Ok(c)
    }

    /// The cluster of `nodes` in `tmp`, before it has formed.
    fn of(tmp: tempfile::TempDir, nodes: Vec<GlobalNode>) -> GlobalCluster {
        GlobalCluster {
            tmp,
            nodes,
            http: None,
            token: String::new(),
        }
    }

    /// Adds node `i` (not started) as a member, starts it with its join token and waits
    /// until it is ready.
    pub async fn join(&mut self, i: usize) -> anyhow::Result<()> {
        let token_file = self.add_member(i).await?;
        let node = &mut self.nodes[i];
        node.seal_key = self.tmp.path().join(format!("node-{}.seal.key", node.id));
        node.start_joining(&token_file)?;
        self.wait_ready(i).await
    }

    /// Adds node `i` as a member through a running node; returns the file holding its
    /// join token.
    pub async fn add_member(&self, i: usize) -> anyhow::Result<PathBuf> {
        let node = &self.nodes[i];
        let body = serde_json::json!({
            "id": node.id,
            "raft_addr": node.raft.to_string(),
            "api_addr": node.api.to_string(),
        });
        let via = self
            .nodes
            .iter()
            .position(|n| n.is_running())
            .context("no node is running")?;
        let (status, v) = self
            .call(via, Method::POST, "/cluster/members", Some(&body))
            .await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "adding node {}: {status} {v}",
            node.id
        );
        let token = v["join_token"].as_str().context("no join token")?;
        let file = self.tmp.path().join(format!("join-{}.token", node.id));
        std::fs::write(&file, token)?;
        Ok(file)
    }

    async fn wait_formed(&mut self) -> anyhow::Result<()> {
        let first = &self.nodes[0];
        let (token, ca) = eventually(
            "the admin token and CA files",
            Duration::from_secs(30),
            || async { Some((first.admin_token()?, first.ca_pem()?)) },
        )
        .await
        .with_context(|| self.logs())?;
        self.trust(&ca)?;
        self.token = token;
        for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].is_running()) {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// Makes the test's API client trust `ca_pem` (after an API CA rotation, the file a
    /// node writes).
    pub fn trust(&mut self, ca_pem: &str) -> anyhow::Result<()> {
        let tls = causeway_global_cp::tls::client_config(ca_pem, None)?;
        self.http = Some(
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(Duration::from_secs(10))
                .build()?,
        );
        Ok(())
    }

    /// Waits until node `i` answers `/ready` with a leader.
    pub async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("{}/ready", self.nodes[i].url());
        let http = self.http();
        eventually(
            &format!("node {} ready", self.nodes[i].id),
            Duration::from_secs(30),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await
        .with_context(|| self.logs())?;
        Ok(())
    }

    pub fn http(&self) -> reqwest::Client {
        self.http.clone().expect("cluster formed")
    }

    /// Node `i`'s `/metrics` (text), with the admin token.
    pub async fn metrics(&self, i: usize) -> anyhow::Result<String> {
        let token = self.nodes[i].admin_token().context("the admin token")?;
        let r = self
            .http()
            .get(format!("{}/metrics", self.nodes[i].url()))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "metrics: {}", r.status());
        Ok(r.text().await?)
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("\n--- node {} log (last lines) ---\n", n.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// One API call to node `i` with `token` (None: no Authorization header).
    pub async fn call_with(
        &self,
        i: usize,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http()
            .request(method, format!("{}{path}", self.nodes[i].url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        send(req).await
    }

    /// One API call to node `i` with the admin token.
    pub async fn call(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.call_with(i, Some(&self.token), method, path, body)
            .await
    }

    /// Index of the node that currently leads, as seen by any running node.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        eventually("a leader", Duration::from_secs(30), || async {
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.is_running() {
                    continue;
                }
                if let Ok((StatusCode::OK, v)) = self.call(i, Method::GET, "/cluster", None).await {
                    let leader = v["leader_id"].as_u64().unwrap_or(0);
                    if let Some(li) = self
                        .nodes
                        .iter()
                        .position(|n| n.id == leader && n.is_running())
                    {
                        return Some(li);
                    }
                }
            }
            None
        })
        .await
    }

    /// Runs the CLI with this cluster's connection settings and returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = self.cli_command(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The CLI with this cluster's connection settings, not started.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.url())
            .collect();
        let ca = self.nodes[0].dir.join("api-ca.pem");
        let mut cmd = Command::new(causeway_bin());
        cmd.args(args)
            .env("CAUSEWAY_ADDR", addrs.join(","))
            .env("CAUSEWAY_TOKEN", &self.token)
            .env("CAUSEWAY_CA_FILE", ca)
            .env("CAUSEWAY_CONFIG", self.tmp.path().join("cli-config.yaml"));
        cmd
    }

    /// Adds a node process that will join (after `cluster add-node`), not yet started.
    pub fn new_node(&mut self, id: u64, extra_args: &[&str]) -> usize {
        self.nodes
            .push(GlobalNode::new(self.tmp.path(), id, extra_args));
        self.nodes.len() - 1
    }

    /// Peers of node `i` (everyone else's Raft address).
    pub fn peers_of(&self, i: usize) -> Vec<(u64, SocketAddr)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| (n.id, n.raft))
            .collect()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One zone control plane process.
pub struct ZoneCp {
    pub name: String,
    pub dir: PathBuf,
    pub api: SocketAddr,
    /// KDS addresses of global nodes, in the order the zone tries them.
    pub globals: Vec<String>,
    pub token_file: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
    extra_args: Vec<String>,
    /// The API client and the CAs it trusts.
    http: std::sync::Mutex<Option<(reqwest::Client, String)>>,
}

impl ZoneCp {
    /// A zone (not started) with a token issued by `cluster`, under the cluster's temp dir.
    pub async fn new(
        cluster: &GlobalCluster,
        name: &str,
        globals: Vec<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<ZoneCp> {
        let token_file = cluster
            .tmp
            .path()
            .join(format!("{name}-{}.token", rand_suffix()));
        let (status, v) = cluster
            .call_retry(
                Method::POST,
                &format!("/zones/{name}/token"),
                Some(&serde_json::json!({})),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "token create: {status} {v}");
        std::fs::write(&token_file, v["token"].as_str().context("token")?)?;
        let api = free_addr();
        Ok(ZoneCp {
            name: name.to_string(),
            dir: cluster
                .tmp
                .path()
                .join(format!("zone-{name}-{}", api.port())),
            api,
            globals,
            token_file,
            child: Default::default(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            http: Default::default(),
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// The flags its next start adds (it keeps them for later starts).
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// The zone's seal key file, beside its data dir.
    pub fn seal_key_file(&self) -> PathBuf {
        self.dir.with_extension("seal-key")
    }

    /// Where the zone's first start writes its API tokens, beside its data dir.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.with_extension("tokens")
    }

    /// The zone API's admin token, once handed out.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.token_dir().join("admin-token"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Runs the CLI against the zone's API (not global's, as [`GlobalCluster::cli`]
    /// does) with its admin token and the CAs in its data dir: whether it succeeded, its
    /// stdout and its stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let token = self.admin_token().context("the zone's admin token")?;
        let out = Command::new(causeway_bin())
            .args(args)
            .env("CAUSEWAY_ADDR", format!("https://{}", self.api))
            .env("CAUSEWAY_TOKEN", token.trim())
            .env("CAUSEWAY_CA_FILE", self.dir.join("api-ca.pem"))
            .env(
                "CAUSEWAY_CONFIG",
                self.dir.with_extension("cli-config.yaml"),
            )
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn logs(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let mut out = format!("\n--- zone {} log (last lines) ---\n", self.name);
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    pub fn start(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().expect("child lock");
        assert!(child.is_none(), "zone {} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(causeway_bin());
        cmd.arg("zone-cp")
            .args(["--zone", &self.name])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--api-addr", &self.api.to_string()])
            .args(["--kds-heartbeat", "500ms", "--reconnect-max", "1s"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.extra_args.iter().any(|a| a == "--seal-key-file") {
            cmd.arg("--seal-key-file").arg(self.seal_key_file());
        }
        if !self.extra_args.iter().any(|a| a == "--token-out-dir") {
            cmd.arg("--token-out-dir").arg(self.token_dir());
        }
        for g in &self.globals {
            cmd.args(["--global", g]);
        }
        *child = Some(cmd.spawn().context("spawning causeway zone-cp")?);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().expect("child lock").is_some()
    }

    /// Whether the process has exited on its own (then it counts as stopped).
    pub fn exited(&self) -> bool {
        let mut child = self.child.lock().expect("child lock");
        let done = child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if done {
            *child = None;
        }
        done
    }

    /// SIGSTOP / SIGCONT: the zone control plane stays alive but silent, as when its
    /// host is cut off; its sidecars and ingresses keep serving.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = self.child.lock().expect("child lock").as_ref() {
            signal(c, if paused { "-STOP" } else { "-CONT" });
        }
    }

    /// `kill -9`.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client trusting the CAs in the zone's `api-ca.pem`, made again when they
    /// change (a rotation of the zone's API CA), and the admin token.
    async fn client(&self) -> anyhow::Result<(reqwest::Client, String)> {
        let (token, ca) = eventually(
            &format!("zone {} credentials", self.name),
            Duration::from_secs(30),
            || async {
                let t = self.admin_token()?;
                let ca = std::fs::read_to_string(self.dir.join("api-ca.pem")).ok()?;
                Some((t, ca))
            },
        )
        .await
        .with_context(|| self.logs())?;
        if let Some((http, cached_ca)) = self.http.lock().expect("http lock").clone()
            && cached_ca == ca
        {
            return Ok((http, token));
        }
        let tls = causeway_global_cp::tls::client_config(&ca, None)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()?;
        *self.http.lock().expect("http lock") = Some((http.clone(), ca));
        Ok((http, token))
    }

    /// One call to the zone's API with its admin token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (http, token) = self.client().await?;
        let mut req = http
            .request(method, format!("https://{}{path}", self.api))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        send(req).await
    }

    /// The zone's `/metrics` (text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (http, token) = self.client().await?;
        let r = http
            .get(format!("https://{}/metrics", self.api))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "metrics: {}", r.status());
        Ok(r.text().await?)
    }

    /// The zone's `/status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let (s, v) = self.call(Method::GET, "/status", None).await?;
        anyhow::ensure!(s == StatusCode::OK, "status: {s} {v}");
        Ok(v)
    }

    /// Waits until the zone holds `path` with a 200 (or, with `present = false`, a 404).
    pub async fn wait_for(
        &self,
        path: &str,
        present: bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let want = if present {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        eventually(
            &format!(
                "{path} {} in zone {}",
                if present { "present" } else { "gone" },
                self.name
            ),
            timeout,
            || async {
                match self.call(Method::GET, path, None).await {
                    Ok((s, v)) if s == want => Some(v),
                    _ => None,
                }
            },
        )
        .await
        .with_context(|| self.logs())
    }
}

impl Drop for ZoneCp {
    fn drop(&mut self) {
        self.kill();
    }
}

impl GlobalCluster {
    /// Calls any running node, retrying 503s and unreachable nodes for up to 15 s.
    pub async fn call_retry(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut i = 0;
        loop {
            let idx = i % self.nodes.len();
            i += 1;
            if !self.nodes[idx].is_running() {
                continue;
            }
            match self.call(idx, method.clone(), path, body).await {
                Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// KDS URLs of all nodes, starting with node `first`.
    pub fn kds_urls_from(&self, first: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n)
            .map(|k| self.nodes[(first + k) % n].kds_url())
            .collect()
    }
}

/// Any `causeway` subcommand as a process (sidecars, demo apps), killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    args: Vec<String>,
    child: std::sync::Mutex<Option<Child>>,
}

impl Proc {
    /// Starts `causeway <args>`, logging to `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Proc> {
        let p = Proc {
            name: name.to_string(),
            log: dir.join(format!("{name}.log")),
            args: args.to_vec(),
            child: Default::default(),
        };
        p.restart()?;
        Ok(p)
    }

    /// Starts `causeway demo-app` as instance `instance` of `service` in `zone`, on
    /// `listen` (a TCP echo with `tcp`), logging to `<dir>/<instance>.log`.
    pub fn demo_app(
        dir: &Path,
        zone: &str,
        instance: &str,
        service: &str,
        listen: SocketAddr,
        tcp: bool,
    ) -> anyhow::Result<Proc> {
        let mut args: Vec<String> = [
            "demo-app",
            "--listen",
            &listen.to_string(),
            "--service",
            service,
            "--zone",
            zone,
            "--instance",
            instance,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if tcp {
            args.push("--tcp".into());
        }
        Proc::start(dir, instance, &args)
    }

    /// Starts it again (after `kill`), with the same arguments.
    pub fn restart(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(causeway_bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning causeway {}", self.args.join(" ")))?;
        *self.child.lock().expect("child lock") = Some(child);
        Ok(())
    }

    /// Freezes the process (SIGSTOP: its sockets stay open and silent, as on a host
    /// whose network went dark) or thaws it (SIGCONT).
    pub fn pause(&self, paused: bool) {
        if let Some(c) = self.child.lock().expect("child lock").as_ref() {
            signal(c, if paused { "-STOP" } else { "-CONT" });
        }
    }

    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit (up to `timeout`).
    pub fn terminate(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.lock().expect("child lock").take() else {
            return Ok(());
        };
        signal(&c, "-TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        bail!("{} did not exit within {timeout:?} of SIGTERM", self.name)
    }

    pub fn logs(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let mut out = format!("\n--- {} log (last lines) ---\n", self.name);
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// TEST ONLY: a TLS client verifier that accepts any server certificate, for tests of
/// what the server side does (a revocation, an ingress that must not terminate TLS).
#[derive(Debug)]
pub struct AcceptAnyServerForTest(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerForTest {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `promtool check metrics` on `text`: its complaints, if any.
pub fn promtool_complaints(text: &str) -> anyhow::Result<Option<String>> {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("promtool (Debian's prometheus package)")?;
    std::io::Write::write_all(
        &mut promtool.stdin.take().context("stdin")?,
        text.as_bytes(),
    )?;
    let out = promtool.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((!out.status.success() || !said.is_empty()).then_some(said))
}

/// A tmpfs of `size` mounted at `dir` (which must exist), unmounted when dropped.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> anyhow::Result<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?
            .success();
        anyhow::ensure!(ok, "mounting a tmpfs at {} (needs root)", dir.display());
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with `filler`, then frees `leave` bytes of it.
pub fn fill_disk(filler: &std::path::Path, leave: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(filler)?;
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    let len = f.metadata()?.len();
    f.set_len(len.saturating_sub(leave))?;
    Ok(())
}
