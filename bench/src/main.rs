//! Benchmarks that run Causeway and a peer side by side on this machine, in one run, and
//! print medians and ratios. Not tests: nothing here asserts, it measures.
//!
//! `causeway-bench global`: 256-byte writes to a three-node global control plane and to a
//! three-member etcd cluster (Debian's etcd-server) at 1, 16 and 64 concurrent clients, and
//! the write-unavailability window after `kill -9` of the leader.
//!
//! `causeway-bench zones`: a three-node global control plane and N zone control planes:
//! write-to-every-zone propagation latency, a new zone's initial sync time and memory after
//! a bulk policy load, and the bytes of a delta resume after `kill -9` against the full sync.
//!
//! `causeway-bench crosszone`: new connections from zone-a to a TCP echo in zone-b through
//! the sidecars and zone-b's ingress, over TCP and over QUIC, against direct: connections
//! per second and setup latency.
//!
//! `causeway-bench stats`: the memory and report size of the cross-zone golden signals
//! (`causeway stat`) at 1,000 services.
//!
//! `causeway-bench sidecar`: HTTP/1.1 to nginx direct, through two Causeway sidecars (mTLS)
//! and through an haproxy mTLS pair: wrk throughput, p50/p90/p99 at a fixed rate (h2load),
//! proxy CPU seconds and peak RSS, against the sidecar goals; with `--routes`, also through
//! the sidecars with 100 MeshHTTPRoute rules and a 90/10 split.
//!
//! `causeway-bench transparent`: transparent proxying's cost against an explicit
//! outbound port, side by side through one sidecar, in a network namespace the bench
//! makes: HTTP throughput and p50 to a virtual IP (redirected by `install-redirect`)
//! and to the explicit port, new TCP connections per second both ways, and DNS answers
//! per second and p99 from the sidecar (mesh names, forwarded names) against the
//! upstream resolver itself. Needs root (namespaces, nftables).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Parser;
use serde_json::{Value, json};

mod control;
mod crosszone;
mod delay;
mod sidecar;
mod stats;
mod transparent;
mod ui;
mod zones;

#[derive(Parser)]
#[command(about = "Causeway benchmarks against peers, measured in the same run")]
enum Bench {
    /// Global control plane writes vs etcd, and leader failover.
    Global {
        /// Seconds per measurement.
        #[arg(long, default_value = "5")]
        seconds: u64,
        /// Concurrent clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Repetitions (medians are reported).
        #[arg(long, default_value = "3")]
        runs: usize,
        /// Leader kills per system for the failover window.
        #[arg(long, default_value = "3")]
        kills: usize,
    },
    /// Policy propagation to zone control planes, a new zone's initial sync, delta resume.
    Zones {
        /// Zone control planes connected during the propagation measurement.
        #[arg(long, default_value = "10")]
        zones: usize,
        /// Sequential policy writes whose propagation to every zone is timed.
        #[arg(long, default_value = "1000")]
        writes: usize,
        /// Policies written before a new zone takes its initial (full) sync.
        #[arg(long, default_value = "10000")]
        policies: usize,
        /// Policy updates made while that zone is killed, before it resumes.
        #[arg(long, default_value = "100")]
        changes: usize,
    },
    /// New cross-zone connections through the ingress over TCP vs QUIC vs direct.
    Crosszone {
        /// Seconds per throughput measurement (latency takes half as long).
        #[arg(long, default_value = "5")]
        seconds: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value = "3")]
        runs: usize,
        /// Concurrent clients of the throughput measurement.
        #[arg(long, default_value = "16")]
        clients: usize,
        /// Round trip added between the zones (user space, TCP and UDP), milliseconds.
        #[arg(long, default_value = "10")]
        rtt_ms: u64,
    },
    /// HTTP through two sidecars (mTLS) vs direct to nginx vs an haproxy mTLS pair.
    Sidecar {
        /// Seconds per measurement (each of wrk and h2load).
        #[arg(long, default_value = "10")]
        seconds: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value = "3")]
        runs: usize,
        /// Fixed request rate (req/s) of the latency measurement.
        #[arg(long, default_value = "1000")]
        rate: u64,
        /// wrk connections for the throughput measurement.
        #[arg(long, default_value = "50")]
        connections: u64,
        /// The sidecar binary; default: the lean `causeway-dataplane` next to this bench
        /// when built (`cargo build --release -p causeway-dataplane`), else `causeway
        /// dataplane`.
        #[arg(long)]
        sidecar_bin: Option<PathBuf>,
        /// Extra argument for both sidecars (repeat it), e.g. `--sidecar-arg=--concurrency=2`.
        #[arg(long, allow_hyphen_values = true)]
        sidecar_arg: Vec<String>,
        /// Also apply a realistic set of resilience policies to the sidecar pair: a
        /// MeshTimeout with explicit values, a MeshCircuitBreaker (request cap and
        /// consecutive-failure outlier detection), a MeshRetry (2 retries, per-try
        /// timeout, budget) and a MeshHealthCheck (HTTP, every 5 s). Without it: a
        /// traffic permission and the built-in default timeouts and retries.
        #[arg(long)]
        policies: bool,
        /// Also log every request with MeshAccessLog: web's outbound to backend and
        /// backend's inbound each to a file (the built-in line), in the bench's
        /// temporary directory.
        #[arg(long)]
        access_log: bool,
        /// Also trace every request with MeshTrace (100% sampled): a CLIENT span at
        /// web's sidecar and a SERVER span at backend's, sent as Zipkin v2 JSON to a
        /// small HTTP collector in the bench process.
        #[arg(long)]
        trace: bool,
        /// With `--trace`: the share of requests traced (MeshTrace `sampling.overall`,
        /// 0 to 100), e.g. 1 for a production-like 1%.
        #[arg(long, default_value = "100")]
        trace_percent: u8,
        /// Also measure a fourth path: the sidecars with a MeshHTTPRoute table of 100
        /// rules in front of a second destination (`canary`, two instances tagged v1
        /// and v2), where the bench's request matches only the last, lowest-ranked rule,
        /// which splits 90/10 between v1 and v2. Reports the routes' cost against the
        /// sidecars without routes and the split observed over the bench's requests.
        #[arg(long)]
        routes: bool,
    },
    /// Transparent proxying vs an explicit outbound port through one sidecar: HTTP,
    /// new TCP connections, and the sidecar's DNS vs its upstream resolver (as root: it
    /// makes a network namespace and installs redirect rules in it).
    Transparent {
        /// Seconds per measurement.
        #[arg(long, default_value = "5")]
        seconds: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value = "3")]
        runs: usize,
        /// wrk connections for the HTTP throughput measurement.
        #[arg(long, default_value = "50")]
        connections: u64,
        /// Fixed request rate (req/s) of the HTTP latency measurement (h2load).
        #[arg(long, default_value = "1000")]
        rate: u64,
        /// Concurrent clients of the TCP connection-rate and the DNS measurements.
        #[arg(long, default_value = "16")]
        clients: usize,
        /// The sidecar binary; default: the lean release `causeway-dataplane`
        /// (target/release, `cargo build --release -p causeway-dataplane`), else the one
        /// next to this bench, else `causeway dataplane`.
        #[arg(long)]
        sidecar_bin: Option<PathBuf>,
        /// Internal: set when the bench re-executes itself inside the network namespace
        /// it made (by that name).
        #[arg(long, hide = true)]
        in_netns: Option<String>,
    },
    /// Internal: one load generator of `transparent`, run as the redirected workload's
    /// user (uid 65534); prints its result as one JSON line.
    #[command(hide = true)]
    TransparentLoad {
        /// `tcp` (connect, echo 64 bytes, close), `dns` (UDP A queries) or `http`
        /// (one GET, with `--once` only).
        kind: transparent::LoadKind,
        /// Where to: `IP:PORT`.
        target: std::net::SocketAddr,
        /// The name asked, for `dns`.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "1")]
        clients: usize,
        #[arg(long, default_value = "1")]
        seconds: u64,
        /// One request or connection; exit status 0 if it succeeded (readiness).
        #[arg(long)]
        once: bool,
    },
    /// Load time of every page of the web UI in a real headless Chromium, with a large
    /// fleet in the store (goal: every page under 300 ms).
    Ui {
        #[arg(long, default_value = "100")]
        zones: usize,
        #[arg(long, default_value = "1000")]
        services: usize,
        #[arg(long, default_value = "10000")]
        dataplanes: usize,
        /// Loads of each page.
        #[arg(long, default_value = "5")]
        runs: usize,
    },
    /// Memory and report size of a zone's golden signals (`causeway stat`) at scale.
    Stats {
        #[arg(long, default_value = "1000")]
        services: usize,
        /// Callers of each service (and services each calls).
        #[arg(long, default_value = "3")]
        callers: usize,
    },
}

/// Writes a Raft CA and certificates for nodes 1..=`nodes` into `dir`, as an operator
/// with a PKI of their own would: benchmarks form their clusters of several nodes at
/// once (with --peer), which needs the certificates up front (Raft is always mutual TLS).
fn raft_certs(dir: &std::path::Path, nodes: u64) -> anyhow::Result<()> {
    let ids: Vec<u64> = (1..=nodes).collect();
    let (ca, certs) = causeway_global_cp::tls::generate_raft_certs(&ids)?;
    std::fs::write(dir.join("raft-ca.pem"), &ca.cert_pem)?;
    for (id, ck) in certs {
        std::fs::write(dir.join(format!("raft-{id}.pem")), &ck.cert_pem)?;
        causeway_global_cp::tls::write_private(
            &dir.join(format!("raft-{id}-key.pem")),
            &ck.key_pem,
        )?;
    }
    Ok(())
}

/// The flags that give node `id` the certificates [`raft_certs`] wrote into `dir`.
fn raft_cert_args(dir: &std::path::Path, id: u64) -> Vec<String> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        "--raft-tls-ca".into(),
        p("raft-ca.pem".into()),
        "--raft-tls-cert".into(),
        p(format!("raft-{id}.pem")),
        "--raft-tls-key".into(),
        p(format!("raft-{id}-key.pem")),
    ]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("ephemeral port")
        .local_addr()
        .expect("addr")
        .port()
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    if name == "causeway" {
        if let Some(p) = std::env::var_os("CAUSEWAY_BIN") {
            return Ok(p.into());
        }
        let exe = std::env::current_exe()?;
        let p = exe.parent().context("exe dir")?.join("causeway");
        if p.exists() {
            return Ok(p);
        }
        bail!(
            "{} not found: cargo build --release -p causeway-cli -p causeway-bench",
            p.display()
        );
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        bail!("{name} not found: apt-get install etcd-server");
    }
    Ok(p.into())
}

/// A child process killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The system under test: how to start member `i`, write, and find the leader.
trait Cluster {
    fn name(&self) -> &'static str;
    fn start(&self, i: usize) -> anyhow::Result<()>;
    fn kill(&self, i: usize);
    fn urls(&self) -> Vec<String>;
    fn client(&self) -> reqwest::Client;
    fn write(
        &self,
        http: &reqwest::Client,
        url: &str,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send;
    fn leader(&self) -> impl Future<Output = Option<usize>> + Send;
}

// === Causeway ===

struct Causeway {
    dir: tempfile::TempDir,
    api: Vec<u16>,
    raft: Vec<u16>,
    procs: std::sync::Mutex<Vec<Proc>>,
    http: Option<reqwest::Client>,
    token: String,
}

impl Causeway {
    async fn new() -> anyhow::Result<Causeway> {
        let mut c = Causeway {
            dir: tempfile::tempdir()?,
            api: (0..3).map(|_| free_port()).collect(),
            raft: (0..3).map(|_| free_port()).collect(),
            procs: std::sync::Mutex::new((0..3).map(|_| Proc(None)).collect()),
            http: None,
            token: String::new(),
        };
        raft_certs(c.dir.path(), 3)?;
        for i in 0..3 {
            c.start(i)?;
        }
        let d = c.dir.path().join("n0");
        let deadline = Instant::now() + Duration::from_secs(30);
        let tokens = c.dir.path().join("tokens");
        while !(tokens.join("admin-token").exists() && d.join("api-ca.pem").exists()) {
            anyhow::ensure!(Instant::now() < deadline, "causeway cluster did not form");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.token = std::fs::read_to_string(tokens.join("admin-token"))?
            .trim()
            .to_string();
        let tls = causeway_global_cp::tls::client_config(
            &std::fs::read_to_string(d.join("api-ca.pem"))?,
            None,
        )?;
        c.http = Some(
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(128)
                .build()?,
        );
        Ok(c)
    }
}

impl Cluster for Causeway {
    fn name(&self) -> &'static str {
        "causeway"
    }
    fn start(&self, i: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("causeway")?);
        cmd.args(["global-cp", "--node-id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{i}")))
            .arg("--seal-key-file")
            .arg(self.dir.path().join("seal.key"))
            .arg("--token-out-dir")
            .arg(self.dir.path().join("tokens"))
            .args(["--api-addr", &format!("127.0.0.1:{}", self.api[i])])
            .args(["--raft-addr", &format!("127.0.0.1:{}", self.raft[i])])
            .args(raft_cert_args(self.dir.path(), i as u64 + 1))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for j in (0..3).filter(|j| *j != i) {
            cmd.args(["--peer", &format!("{}=127.0.0.1:{}", j + 1, self.raft[j])]);
        }
        self.procs.lock().expect("lock")[i] = Proc(Some(cmd.spawn()?));
        Ok(())
    }
    fn kill(&self, i: usize) {
        self.procs.lock().expect("lock")[i].kill();
    }
    fn urls(&self) -> Vec<String> {
        self.api
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect()
    }
    fn client(&self) -> reqwest::Client {
        self.http.clone().expect("started")
    }
    async fn write(
        &self,
        http: &reqwest::Client,
        url: &str,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> bool {
        // A Zone whose description makes the stored value about 256 bytes.
        let desc: String = value
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .take(200)
            .collect();
        let body = json!({"type": "Zone", "name": key, "spec": {"description": desc}});
        http.put(format!("{url}/zones/{key}"))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
    async fn leader(&self) -> Option<usize> {
        for url in self.urls() {
            if let Ok(r) = self
                .client()
                .get(format!("{url}/cluster"))
                .bearer_auth(&self.token)
                .send()
                .await
                && let Ok(v) = r.json::<Value>().await
                && let Some(id) = v["leader_id"].as_u64().filter(|id| *id > 0)
            {
                return Some(id as usize - 1);
            }
        }
        None
    }
}

// === etcd ===

struct Etcd {
    dir: tempfile::TempDir,
    client: Vec<u16>,
    peer: Vec<u16>,
    procs: std::sync::Mutex<Vec<Proc>>,
    http: reqwest::Client,
}

impl Etcd {
    async fn new() -> anyhow::Result<Etcd> {
        let e = Etcd {
            dir: tempfile::tempdir()?,
            client: (0..3).map(|_| free_port()).collect(),
            peer: (0..3).map(|_| free_port()).collect(),
            procs: std::sync::Mutex::new((0..3).map(|_| Proc(None)).collect()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(128)
                .build()?,
        };
        for i in 0..3 {
            e.start(i)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while e.leader().await.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "etcd cluster did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(e)
    }
}

impl Cluster for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn start(&self, i: usize) -> anyhow::Result<()> {
        let initial: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://127.0.0.1:{}", self.peer[j]))
            .collect();
        let data = self.dir.path().join(format!("e{i}"));
        let state = if data.exists() { "existing" } else { "new" };
        let child = Command::new(bin("etcd")?)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.client[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.client[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer[i]),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "bench",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.procs.lock().expect("lock")[i] = Proc(Some(child));
        Ok(())
    }
    fn kill(&self, i: usize) {
        self.procs.lock().expect("lock")[i].kill();
    }
    fn urls(&self) -> Vec<String> {
        self.client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }
    fn client(&self) -> reqwest::Client {
        self.http.clone()
    }
    async fn write(
        &self,
        http: &reqwest::Client,
        url: &str,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = json!({"key": b64.encode(format!("/bench/{key}")), "value": b64.encode(value)});
        http.post(format!("{url}/v3/kv/put"))
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
    async fn leader(&self) -> Option<usize> {
        for (i, url) in self.urls().iter().enumerate() {
            if let Ok(r) = self
                .http
                .post(format!("{url}/v3/maintenance/status"))
                .json(&json!({}))
                .send()
                .await
                && let Ok(v) = r.json::<Value>().await
            {
                let me = v["header"]["member_id"].as_str().map(str::to_string);
                let leader = v["leader"].as_str().map(str::to_string);
                if me.is_some() && me == leader {
                    return Some(i);
                }
            }
        }
        None
    }
}

// === measurements ===

#[derive(Debug, Clone, Copy)]
struct Load {
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

static KEY_SEQ: AtomicU64 = AtomicU64::new(0);

/// Closed loop: `clients` workers write to the leader for `secs` seconds.
async fn load<C: Cluster + Sync>(c: &C, clients: usize, secs: u64) -> anyhow::Result<Load> {
    let leader = c.leader().await.context("no leader")?;
    let url = c.urls()[leader].clone();
    let value = vec![b'v'; 256];
    let stop = Instant::now() + Duration::from_secs(secs);
    let http = c.client();
    let lat = futures_join(clients, |_| {
        let http = http.clone();
        let url = url.clone();
        let value = value.clone();
        async move {
            let mut lat = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < stop {
                let key = format!("b-{}", KEY_SEQ.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                if c.write(&http, &url, &key, &value, Duration::from_secs(5))
                    .await
                {
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }
    })
    .await;
    let mut all: Vec<Duration> = Vec::new();
    let mut failed = 0;
    for (l, f) in lat {
        all.extend(l);
        failed += f;
    }
    if failed > 0 {
        eprintln!(
            "  ({} {failed} failed writes at {clients} clients)",
            c.name()
        );
    }
    all.sort();
    Ok(Load {
        writes_per_sec: all.len() as f64 / secs as f64,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    })
}

/// Runs `n` copies of a future concurrently on the current task (no 'static needed).
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T>,
{
    let futs: Vec<_> = (0..n).map(|i| Box::pin(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    let mut pending: Vec<_> = futs.into_iter().map(Some).collect();
    // Poll all to completion together.
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for slot in pending.iter_mut() {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out.push(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

/// Kills the leader while 4 clients write to every member (moving on when one fails);
/// returns the time from the kill to the first write acknowledged after it.
async fn failover<C: Cluster + Sync>(c: &C) -> anyhow::Result<Duration> {
    let leader = c.leader().await.context("no leader")?;
    let urls = c.urls();
    let http = c.client();
    let value = vec![b'v'; 256];
    let stop = AtomicBool::new(false);
    let killed_at: std::sync::Mutex<Option<Instant>> = Default::default();
    let first_after: std::sync::Mutex<Option<Instant>> = Default::default();
    let writers = futures_join(4, |w| {
        let (http, urls, value) = (http.clone(), urls.clone(), value.clone());
        let (stop, killed_at, first_after) = (&stop, &killed_at, &first_after);
        async move {
            let mut target = w % urls.len();
            while !stop.load(Ordering::Relaxed) {
                let key = format!("f-{}", KEY_SEQ.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                // A short timeout, so a request stuck on the dead leader does not hide recovery.
                if c.write(
                    &http,
                    &urls[target],
                    &key,
                    &value,
                    Duration::from_millis(500),
                )
                .await
                {
                    let killed = *killed_at.lock().expect("lock");
                    if killed.is_some_and(|k| sent >= k) {
                        let now = Instant::now();
                        let mut f = first_after.lock().expect("lock");
                        if f.is_none_or(|x| now < x) {
                            *f = Some(now);
                        }
                    }
                } else {
                    target = (target + 1) % urls.len();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    });
    let killer = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        *killed_at.lock().expect("lock") = Some(Instant::now());
        c.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(15);
        while first_after.lock().expect("lock").is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(writers, killer);
    let (k, f) = (
        killed_at.lock().expect("lock").context("not killed")?,
        *first_after.lock().expect("lock"),
    );
    // Bring the old leader back for the next round.
    c.start(leader)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.leader().await.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "{} did not recover", c.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let the restarted member catch up
    f.map(|f| f - k)
        .context("no write succeeded within 15 s of the kill")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider; plain-HTTP clients need one too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Bench::parse() {
        Bench::Global {
            seconds,
            clients,
            runs,
            kills,
        } => global(seconds, &clients, runs, kills).await,
        Bench::Zones {
            zones,
            writes,
            policies,
            changes,
        } => zones::zones(zones, writes, policies, changes).await,
        Bench::Stats { services, callers } => stats::stats(services, callers),
        Bench::Ui {
            zones,
            services,
            dataplanes,
            runs,
        } => ui::ui(zones, services, dataplanes, runs).await,
        Bench::Crosszone {
            seconds,
            runs,
            clients,
            rtt_ms,
        } => crosszone::crosszone(seconds, runs, clients, rtt_ms).await,
        Bench::Sidecar {
            seconds,
            runs,
            rate,
            connections,
            sidecar_bin,
            sidecar_arg,
            policies,
            access_log,
            trace,
            trace_percent,
            routes,
        } => {
            let lean = std::env::current_exe()?.with_file_name("causeway-dataplane");
            let sc = sidecar::SidecarCmd {
                bin: sidecar_bin.or_else(|| lean.exists().then_some(lean)),
                args: sidecar_arg,
                policies,
                access_log,
                trace: trace.then_some(trace_percent.min(100)),
                routes,
            };
            sidecar::sidecar(seconds, runs, rate, connections, sc).await
        }
        Bench::Transparent {
            seconds,
            runs,
            connections,
            rate,
            clients,
            sidecar_bin,
            in_netns,
        } => {
            // The bench links RocksDB, so it is often a debug build: prefer the release
            // sidecar even then.
            let exe = std::env::current_exe()?;
            let lean = [
                exe.parent()
                    .and_then(Path::parent)
                    .map(|target| target.join("release/causeway-dataplane")),
                Some(exe.with_file_name("causeway-dataplane")),
            ]
            .into_iter()
            .flatten()
            .find(|p| p.exists());
            let opts = transparent::Opts {
                seconds,
                runs,
                connections,
                rate,
                clients,
                sidecar: sidecar::SidecarCmd {
                    bin: sidecar_bin.or(lean),
                    args: Vec::new(),
                    policies: false,
                    access_log: false,
                    trace: None,
                    routes: false,
                },
            };
            transparent::transparent(opts, in_netns).await
        }
        Bench::TransparentLoad {
            kind,
            target,
            name,
            clients,
            seconds,
            once,
        } => transparent::load(kind, target, &name, clients, seconds, once).await,
    }
}

async fn global(seconds: u64, clients: &[usize], runs: usize, kills: usize) -> anyhow::Result<()> {
    println!(
        "256-byte writes to a three-node cluster on loopback; medians of {runs} runs of {seconds}s"
    );
    let cw = Causeway::new().await?;
    let et = Etcd::new().await?;
    println!(
        "{:>7} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>9}",
        "clients", "causeway w/s", "p50 ms", "p99 ms", "etcd w/s", "p50 ms", "p99 ms", "ratio"
    );
    for &n in clients {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..runs {
            a.push(load(&cw, n, seconds).await?);
            b.push(load(&et, n, seconds).await?);
        }
        let m = |v: &[Load], f: fn(&Load) -> f64| median(v.iter().map(f).collect());
        let (aw, bw) = (m(&a, |l| l.writes_per_sec), m(&b, |l| l.writes_per_sec));
        println!(
            "{n:>7} | {aw:>12.0} {:>8.2} {:>8.2} | {bw:>12.0} {:>8.2} {:>8.2} | {:>8.2}x",
            m(&a, |l| l.p50_ms),
            m(&a, |l| l.p99_ms),
            m(&b, |l| l.p50_ms),
            m(&b, |l| l.p99_ms),
            aw / bw
        );
    }
    println!();
    println!("write-unavailability after kill -9 of the leader (4 clients, median of {kills})");
    for sys in [&cw as &dyn FailoverDyn, &et] {
        let mut w = Vec::new();
        for _ in 0..kills {
            w.push(sys.failover().await?.as_secs_f64() * 1000.0);
        }
        println!(
            "  {:>9}: {:>7.0} ms   (runs: {})",
            sys.name(),
            median(w.clone()),
            w.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Object-safe wrapper so both systems go through one loop.
trait FailoverDyn {
    fn name(&self) -> &'static str;
    fn failover(&self) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Duration>> + '_>>;
}

impl<C: Cluster + Sync> FailoverDyn for C {
    fn name(&self) -> &'static str {
        Cluster::name(self)
    }
    fn failover(&self) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Duration>> + '_>> {
        Box::pin(failover(self))
    }
}
