//! `causeway-bench zones`: a three-node global control plane and N zone control planes on
//! loopback. Measures how fast a policy write reaches every zone, how fast a new zone takes
//! a full snapshot (and its memory once it has), and how small a resume after `kill -9` is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{Proc, bin, free_port, futures_join, percentile, raft_cert_args, raft_certs};

/// Global nodes in the cluster.
const NODES: usize = 3;
/// Concurrent writers for the bulk policy load.
const WRITERS: usize = 32;
/// Longest wait for anything to start, form or sync.
const READY: Duration = Duration::from_secs(60);
/// How long one propagation may take before it counts as lost.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

fn policy(name: &str, connect: &str) -> Value {
    json!({
        "type": "MeshTimeout", "mesh": "default", "name": name,
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": connect}}]}
    })
}

/// The last `n` lines of a log file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "\n--- {} (last lines) ---\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok((f.try_clone()?.into(), f.into()))
}

/// An HTTPS client trusting the CA in `ca_pem`, with no overall timeout (set per request).
fn https_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let tls = causeway_global_cp::tls::client_config(ca_pem, None)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(WRITERS * 2)
        .build()?)
}

async fn body(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Resident set size of a process, in bytes; and its peak (VmHWM).
pub(crate) fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

// === global ===

pub(crate) struct Global {
    dir: PathBuf,
    api: Vec<u16>,
    kds: Vec<u16>,
    _procs: Vec<Proc>,
    http: reqwest::Client,
    pub(crate) token: String,
    leader: usize,
}

impl Global {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Global> {
        let api: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let raft: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let kds: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut procs = Vec::new();
        raft_certs(dir, NODES as u64)?;
        for i in 0..NODES {
            let (out, err) = log_file(&dir.join(format!("n{i}.log")))?;
            let mut cmd = Command::new(bin("causeway")?);
            cmd.args(["global-cp", "--node-id", &(i + 1).to_string()])
                .arg("--data-dir")
                .arg(dir.join(format!("n{i}")))
                .arg("--seal-key-file")
                .arg(dir.join("seal.key"))
                .arg("--token-out-dir")
                .arg(dir.join("tokens"))
                .args(["--api-addr", &format!("127.0.0.1:{}", api[i])])
                .args(["--raft-addr", &format!("127.0.0.1:{}", raft[i])])
                .args(["--kds-addr", &format!("127.0.0.1:{}", kds[i])])
                .args(["--kds-heartbeat", "1s"])
                .args(raft_cert_args(dir, i as u64 + 1))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for j in (0..NODES).filter(|j| *j != i) {
                cmd.args(["--peer", &format!("{}=127.0.0.1:{}", j + 1, raft[j])]);
            }
            procs.push(Proc(Some(
                cmd.spawn().context("spawning causeway global-cp")?,
            )));
        }
        let n0 = dir.join("n0");
        let deadline = Instant::now() + READY;
        let (token, ca) = loop {
            if let (Ok(t), Ok(ca)) = (
                std::fs::read_to_string(dir.join("tokens/admin-token")),
                std::fs::read_to_string(n0.join("api-ca.pem")),
            ) && !t.trim().is_empty()
                && ca.contains("END CERTIFICATE")
            {
                break (t.trim().to_string(), ca);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the global cluster did not write its credentials{}",
                    tail(&dir.join("n0.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut g = Global {
            dir: dir.to_path_buf(),
            api,
            kds,
            _procs: procs,
            http: https_client(&ca)?,
            token,
            leader: 0,
        };
        // Every node ready, then find the leader (writes go there directly).
        for i in 0..NODES {
            loop {
                let r = g
                    .http
                    .get(format!("{}/ready", g.url(i)))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "global node {} not ready{}",
                        i + 1,
                        tail(&dir.join(format!("n{i}.log")), 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        g.leader = loop {
            if let Ok(r) = g
                .http
                .get(format!("{}/cluster", g.url(0)))
                .bearer_auth(&g.token)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && let (StatusCode::OK, v) = body(r).await
                && let Some(id) = v["leader_id"].as_u64().filter(|id| *id > 0)
            {
                break id as usize - 1;
            }
            if Instant::now() >= deadline {
                bail!("no global leader{}", tail(&dir.join("n0.log"), 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(g)
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.api[i])
    }

    /// KDS URLs of every node, starting with node `first`.
    fn kds_urls_from(&self, first: usize) -> Vec<String> {
        (0..NODES)
            .map(|k| format!("https://127.0.0.1:{}", self.kds[(first + k) % NODES]))
            .collect()
    }

    /// PUT to the leader (other nodes if it fails), retrying 503s and connection errors
    /// for up to 15 s; returns the resource's `version`.
    pub(crate) async fn put(&self, path: &str, value: &Value) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut node = self.leader;
        loop {
            let r = self
                .http
                .put(format!("{}{path}", self.url(node)))
                .bearer_auth(&self.token)
                .json(value)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let failure = match r {
                Ok(r) => match body(r).await {
                    (s, v) if s.is_success() => {
                        return v["version"]
                            .as_u64()
                            .with_context(|| format!("PUT {path}: no version in {v}"));
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, v) => format!("503 {v}"),
                    (s, v) => bail!("PUT {path}: {s} {v}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "PUT {path}: {failure}{}",
                    tail(&self.dir.join(format!("n{node}.log")), 20)
                );
            }
            node = (node + 1) % NODES;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A zone token for `zone`, written to a file; returns the file.
    async fn zone_token(&self, zone: &str) -> anyhow::Result<PathBuf> {
        let r = self
            .http
            .post(format!("{}/zones/{zone}/token", self.url(self.leader)))
            .bearer_auth(&self.token)
            .json(&json!({}))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let (s, v) = body(r).await;
        anyhow::ensure!(s.is_success(), "POST /zones/{zone}/token: {s} {v}");
        let path = self.dir.join(format!("{zone}.token"));
        std::fs::write(
            &path,
            v["token"].as_str().context("no token in the answer")?,
        )?;
        Ok(path)
    }
}

// === zone ===

struct Zone {
    name: String,
    dir: PathBuf,
    api: u16,
    globals: Vec<String>,
    token_file: PathBuf,
    proc: Proc,
    http: Option<(reqwest::Client, String)>,
}

impl Zone {
    async fn new(g: &Global, name: &str, first_global: usize) -> anyhow::Result<Zone> {
        Ok(Zone {
            name: name.to_string(),
            dir: g.dir.join(format!("zone-{name}")),
            api: free_port(),
            globals: g.kds_urls_from(first_global),
            token_file: g.zone_token(name).await?,
            proc: Proc(None),
            http: None,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    fn logs(&self) -> String {
        tail(&self.log_path(), 20)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_file(&self.log_path())?;
        let child = Command::new(bin("causeway")?)
            .args(["zone-cp", "--zone", &self.name])
            .args(["--global", &self.globals.join(",")])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--seal-key-file")
            .arg(self.dir.with_extension("seal-key"))
            .arg("--token-out-dir")
            .arg(self.dir.with_extension("tokens"))
            .args(["--api-addr", &format!("127.0.0.1:{}", self.api)])
            .args(["--kds-heartbeat", "1s"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning causeway zone-cp")?;
        self.proc = Proc(Some(child));
        Ok(())
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.proc.kill();
    }

    fn pid(&self) -> Option<u32> {
        self.proc.0.as_ref().map(|c| c.id())
    }

    /// Waits for the zone's API credentials (written shortly after start) and builds a client.
    async fn connect(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let (Ok(t), Ok(ca)) = (
                std::fs::read_to_string(self.dir.with_extension("tokens").join("admin-token")),
                std::fs::read_to_string(self.dir.join("api-ca.pem")),
            ) && !t.trim().is_empty()
                && let Ok(http) = https_client(&ca)
            {
                self.http = Some((http, t.trim().to_string()));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "zone {} did not write its API credentials{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn get(&self, path: &str, timeout: Duration) -> anyhow::Result<(StatusCode, Value)> {
        let (http, token) = self.http.as_ref().context("zone API not connected")?;
        let r = http
            .get(format!("https://127.0.0.1:{}{path}", self.api))
            .bearer_auth(token)
            .timeout(timeout)
            .send()
            .await?;
        Ok(body(r).await)
    }

    async fn status(&self) -> anyhow::Result<Value> {
        let (s, v) = self.get("/status", Duration::from_secs(5)).await?;
        anyhow::ensure!(s == StatusCode::OK, "zone {} /status: {s} {v}", self.name);
        Ok(v)
    }

    /// One long poll: true once the zone applied `revision`, false on its 504.
    async fn sync_once(&self, revision: u64, wait: Duration) -> anyhow::Result<bool> {
        let path = format!(
            "/sync?revision={revision}&timeoutMs={}",
            wait.as_millis().max(1)
        );
        match self.get(&path, wait + Duration::from_secs(2)).await? {
            (StatusCode::OK, _) => Ok(true),
            (StatusCode::GATEWAY_TIMEOUT, _) => Ok(false),
            (s, v) => bail!("zone {} {path}: {s} {v}", self.name),
        }
    }

    /// Long-polls until the zone applied `revision`, tolerating an API not yet up.
    async fn wait_revision(&self, revision: u64, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let st = self.status().await.unwrap_or(Value::Null);
                bail!(
                    "zone {} did not reach revision {revision}: status {st}{}",
                    self.name,
                    self.logs()
                );
            }
            match self
                .sync_once(revision, left.min(Duration::from_secs(10)))
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

// === the benchmark ===

struct Row {
    figure: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

fn row(figure: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        goal: String::new(),
        met: None,
    }
}

fn goal(figure: impl Into<String>, value: impl Into<String>, goal: &str, met: bool) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        goal: goal.to_string(),
        met: Some(met),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", mib(b))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

pub(crate) async fn zones(
    zones: usize,
    writes: usize,
    policies: usize,
    changes: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        zones >= 1 && writes >= 1,
        "--zones and --writes must be >= 1"
    );
    anyhow::ensure!(
        changes <= policies,
        "--changes ({changes}) updates existing policies: at most --policies ({policies})"
    );
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    println!(
        "3 global nodes + {zones} zone control planes on loopback ({})",
        bin("causeway")?.display()
    );

    let g = Global::start(tmp.path()).await?;
    let mesh = g
        .put(
            "/meshes/default",
            &json!({"type": "Mesh", "name": "default", "spec": {}}),
        )
        .await?;
    let mut zs = Vec::new();
    for i in 0..zones {
        // Spread the zones over the global nodes, as a real deployment would.
        let mut z = Zone::new(&g, &format!("zone-{}", i + 1), i % NODES).await?;
        z.start()?;
        zs.push(z);
    }
    let deadline = Instant::now() + READY;
    for z in &mut zs {
        z.connect(deadline).await?;
        z.wait_revision(mesh, deadline).await?;
    }

    // 1. Propagation: sequential writes, each followed by a long poll on every zone.
    println!("[1/3] {writes} sequential policy writes, each awaited in all {zones} zones");
    let mut after_ack = Vec::with_capacity(writes);
    let mut with_write = Vec::with_capacity(writes);
    let mut lost = 0usize;
    for i in 0..writes {
        let name = format!("lat-{i}");
        let sent = Instant::now();
        let v = g
            .put(
                &format!("/meshes/default/meshtimeouts/{name}"),
                &policy(&name, "1s"),
            )
            .await?;
        let acked = Instant::now();
        let results = futures_join(zs.len(), |k| {
            let z = &zs[k];
            async move { (z, z.sync_once(v, SYNC_TIMEOUT).await) }
        })
        .await;
        let done = Instant::now();
        let mut all = true;
        for (z, r) in results {
            match r {
                Ok(true) => {}
                Ok(false) => all = false,
                Err(e) => {
                    all = false;
                    eprintln!("  write {i} (revision {v}), zone {}: {e:#}", z.name);
                }
            }
        }
        if all {
            after_ack.push(done - acked);
            with_write.push(done - sent);
        } else {
            lost += 1;
            eprintln!(
                "  write {i} (revision {v}) not applied in every zone within {SYNC_TIMEOUT:?}"
            );
        }
    }
    after_ack.sort();
    with_write.sort();
    let p99 = percentile(&after_ack, 0.99);
    rows.push(row(
        format!("propagation p50, ack -> all {zones} zones"),
        format!("{:.1} ms", percentile(&after_ack, 0.5)),
    ));
    rows.push(goal(
        format!("propagation p99, ack -> all {zones} zones"),
        format!("{p99:.1} ms"),
        "< 200 ms",
        p99 < 200.0 && lost == 0,
    ));
    rows.push(row(
        "write+propagate p50 (before PUT -> all)",
        format!("{:.1} ms", percentile(&with_write, 0.5)),
    ));
    rows.push(row(
        "write+propagate p99 (before PUT -> all)",
        format!("{:.1} ms", percentile(&with_write, 0.99)),
    ));
    if lost > 0 {
        rows.push(goal(
            format!("writes not in every zone within {SYNC_TIMEOUT:?}"),
            lost.to_string(),
            "0",
            false,
        ));
    }

    // 2. Initial sync of a new zone after a bulk load.
    println!("[2/3] {policies} policies with {WRITERS} writers, then a new zone");
    let next = AtomicU64::new(0);
    let max_version = AtomicU64::new(0);
    let load_started = Instant::now();
    let results = futures_join(WRITERS, |_| {
        let (g, next, max_version) = (&g, &next, &max_version);
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= policies {
                    return anyhow::Ok(());
                }
                let name = format!("p-{i}");
                let v = g
                    .put(
                        &format!("/meshes/default/meshtimeouts/{name}"),
                        &policy(&name, "1s"),
                    )
                    .await?;
                max_version.fetch_max(v, Ordering::Relaxed);
            }
        }
    })
    .await;
    let load_took = load_started.elapsed();
    for r in results {
        r?;
    }
    let last = max_version.load(Ordering::Relaxed).max(mesh);
    rows.push(row(
        format!("write {policies} policies ({WRITERS} writers)"),
        format!(
            "{:.2} s ({:.0} writes/s)",
            load_took.as_secs_f64(),
            policies as f64 / load_took.as_secs_f64()
        ),
    ));

    let mut fresh = Zone::new(&g, "zone-new", 0).await?;
    let started = Instant::now();
    fresh.start()?;
    let deadline = started + READY;
    fresh.connect(deadline).await?;
    fresh.wait_revision(last, deadline).await?;
    let initial = started.elapsed();
    let pid = fresh.pid().context("zone-new not running")?;
    let (rss_now, rss_peak) = rss(pid)?;
    let st = fresh.status().await?;
    anyhow::ensure!(
        st["revision"].as_u64().unwrap_or(0) >= last,
        "zone-new /status behind revision {last} after /sync said applied: {st}"
    );
    let full = st["syncs"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["full"] == true))
        .cloned()
        .with_context(|| format!("no full sync in zone-new's /status: {st}"))?;
    let full_bytes = full["bytes"].as_u64().context("full sync bytes")?;
    rows.push(goal(
        format!(
            "initial sync, new zone ({} resources)",
            st["resources"].as_u64().unwrap_or(0)
        ),
        format!("{:.2} s", initial.as_secs_f64()),
        "< 3 s",
        initial < Duration::from_secs(3),
    ));
    rows.push(goal(
        "new zone RSS once synced",
        format!("{:.1} MiB (peak {:.1})", mib(rss_now), mib(rss_peak)),
        "< 200 MiB",
        rss_now < 200 << 20,
    ));
    rows.push(row(
        "full sync: bytes / changes / messages",
        format!(
            "{} / {} / {}",
            human_bytes(full_bytes),
            full["changes"],
            full["messages"]
        ),
    ));

    // 3. Resume: kill -9, change things on global, restart with the same data dir.
    println!("[3/3] kill -9 the new zone, {changes} updates on global, restart it");
    fresh.kill();
    let mut last = last;
    for i in 0..changes {
        let name = format!("p-{i}");
        let v = g
            .put(
                &format!("/meshes/default/meshtimeouts/{name}"),
                &policy(&name, "7s"),
            )
            .await?;
        last = last.max(v);
    }
    let restarted = Instant::now();
    fresh.start()?;
    let deadline = restarted + READY;
    fresh.connect(deadline).await?;
    fresh.wait_revision(last, deadline).await?;
    let resume_took = restarted.elapsed();
    let st = fresh.status().await?;
    let resume = st["syncs"]
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .with_context(|| format!("no sync in zone-new's /status after the restart: {st}"))?;
    let resume_bytes = resume["bytes"].as_u64().context("resume bytes")?;
    let resume_changes = resume["changes"].as_u64().unwrap_or(0);
    let delta = resume["full"] == false;
    rows.push(goal(
        "resume after kill -9: kind / changes",
        format!(
            "{} / {resume_changes}",
            if delta { "delta" } else { "FULL" }
        ),
        &format!("delta / {changes}"),
        delta && resume_changes == changes as u64,
    ));
    rows.push(row(
        "resume bytes vs full sync bytes",
        format!(
            "{} vs {} = {:.2}%",
            human_bytes(resume_bytes),
            human_bytes(full_bytes),
            100.0 * resume_bytes as f64 / full_bytes.max(1) as f64
        ),
    ));
    rows.push(row(
        "resume: restart -> synced",
        format!("{:.2} s", resume_took.as_secs_f64()),
    ));

    println!();
    let w = rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
    let wv = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let wg = rows.iter().map(|r| r.goal.len()).max().unwrap_or(0).max(4);
    let line = |f: &str, v: &str, g: &str, m: &str| {
        println!("{}", format!("{f:<w$}  {v:<wv$}  {g:<wg$}  {m}").trim_end());
    };
    line("figure", "value", "goal", "");
    for r in &rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "",
        };
        line(&r.figure, &r.value, &r.goal, met);
    }
    Ok(())
}
