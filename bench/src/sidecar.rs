//! `causeway-bench sidecar`: the same HTTP/1.1 load (`GET /` answered by nginx) over three
//! paths on loopback, in one run: (a) straight to nginx, (b) through two Causeway sidecars
//! (`causeway dataplane`, mTLS between them, configured by a global and a zone control
//! plane), (c) through two haproxy processes doing mTLS origination and termination (the
//! HTTP-mode pair of the reference baseline). For each: wrk closed-loop throughput, latency
//! percentiles at a fixed rate from h2load's per-request log, CPU seconds of each proxy
//! process during the wrk run and its peak RSS. Prints medians, ratios and the goals.
//!
//! With `--routes`, a fourth path: (d) the same client sidecar to a second destination,
//! `canary` (two instances tagged `version: v1` and `v2`, each a sidecar in front of the
//! same nginx), whose MeshHTTPRoute table has 100 rules; the request matches only the
//! last, which splits 90/10 by tag (see [`route_policies`]). Each instance's sidecar
//! counts the requests it received, so the split is measured over the bench's own
//! requests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{bin, free_port, median, percentile};

/// Longest wait for anything to start or become ready.
pub(crate) const READY: Duration = Duration::from_secs(60);
/// h2load connections for the fixed-rate measurement (the rate is split over them).
const H2LOAD_CLIENTS: u64 = 10;
/// wrk threads (as in the baseline).
const WRK_THREADS: u64 = 2;
/// Goals from the issue.
const GOAL_THROUGHPUT_VS_HAPROXY: f64 = 1.2;
const GOAL_RSS_MIB: f64 = 20.0;

// The reference baseline configs (shared/reference/baseline), verbatim but for the
// placeholders: 127.0.0.1:8080 (nginx), :9180 (haproxy outbound), :9543 (haproxy inbound),
// CERTS_DIR and RUN_DIR are replaced with this run's ports and folders.
const NGINX_CONF: &str = r#"worker_processes 1;
pid RUN_DIR/nginx-backend.pid;
error_log RUN_DIR/nginx-backend-error.log warn;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path RUN_DIR/cb; proxy_temp_path RUN_DIR/p;
  fastcgi_temp_path RUN_DIR/f; uwsgi_temp_path RUN_DIR/u; scgi_temp_path RUN_DIR/s;
  server { listen 127.0.0.1:8080 backlog=4096; location / { default_type text/plain; return 200 "ok\n"; } }
}
"#;

const HAP_CLIENT_HTTP: &str = r#"global
  nbthread 1
  maxconn 4000
  log stderr format short local0 err
defaults
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  maxconn 4000
  mode http
  option http-keep-alive
  http-reuse always
frontend outbound
  bind 127.0.0.1:9180
  default_backend to_server_sidecar
backend to_server_sidecar
  server peer 127.0.0.1:9543 ssl crt CERTS_DIR/client.pem ca-file CERTS_DIR/ca.crt verify required verifyhost server-sidecar sni str(server-sidecar) alpn http/1.1
"#;

const HAP_SERVER_HTTP: &str = r#"global
  nbthread 1
  maxconn 4000
  log stderr format short local0 err
defaults
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  maxconn 4000
  mode http
  option http-keep-alive
  http-reuse always
frontend inbound_mtls
  bind 127.0.0.1:9543 ssl crt CERTS_DIR/server.pem ca-file CERTS_DIR/ca.crt verify required alpn http/1.1
  default_backend app
backend app
  server app 127.0.0.1:8080
"#;

/// Fills the baseline placeholders.
pub(crate) struct Ports {
    pub(crate) nginx: u16,
    pub(crate) hap_out: u16,
    pub(crate) hap_in: u16,
}

fn fill(template: &str, p: &Ports, certs: &Path, run: &Path) -> String {
    template
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", p.nginx))
        .replace("127.0.0.1:9180", &format!("127.0.0.1:{}", p.hap_out))
        .replace("127.0.0.1:9543", &format!("127.0.0.1:{}", p.hap_in))
        .replace("CERTS_DIR", &certs.display().to_string())
        .replace("RUN_DIR", &run.display().to_string())
}

// === processes ===

/// A process this benchmark started, logging to a file, stopped on drop.
pub(crate) struct Svc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
    /// SIGTERM first and wait (nginx: the master then stops its worker), SIGKILL after 5 s.
    graceful: bool,
}

impl Svc {
    pub(crate) fn spawn(
        dir: &Path,
        name: &str,
        cmd: &mut Command,
        graceful: bool,
    ) -> anyhow::Result<Svc> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Svc {
            name: name.to_string(),
            log,
            child: Some(child),
            graceful,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails (with the log) if the process has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("{} exited ({status}){}", self.name, self.logs());
        }
        Ok(())
    }

    pub(crate) fn logs(&self) -> String {
        tail(&self.log, 20)
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if self.graceful && matches!(c.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "\n--- {} (last lines) ---\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

/// A tool from Debian, by name; the error names the package.
pub(crate) fn tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        bail!("{name} not found: apt-get install -y {package}");
    }
    Ok(p.into())
}

/// First line a command prints (stdout or stderr), for the header.
pub(crate) fn version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_default()
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields restart after its closing parenthesis
    // with field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("/proc/{pid}/stat: {stat}"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    anyhow::ensure!(f.len() > 12, "/proc/{pid}/stat: too few fields");
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / ticks_per_sec)
}

/// Peak resident set size (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Every process's parent, CPU ticks and name, from /proc (unreadable ones skipped).
pub(crate) fn all_processes() -> HashMap<u32, (u32, u64, String)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12
            && let (Ok(ppid), Ok(u), Ok(s)) =
                (f[1].parse(), f[11].parse::<u64>(), f[12].parse::<u64>())
        {
            out.insert(pid, (ppid, u + s, head[open + 1..].to_string()));
        }
    }
    out
}

/// The machine's steal time in ticks (the 8th figure of /proc/stat's `cpu` line): CPU a
/// virtual machine's hypervisor gave to its neighbours. No process shows it, yet it slows
/// every process measured.
fn parse_steal(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

pub(crate) fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_steal(&s))
        .unwrap_or(0)
}

/// CPU seconds that processes outside this benchmark's process tree used between two
/// snapshots, and the busiest of them. The machine may be shared (builds, tests); a
/// measurement they disturb is flagged rather than silently reported.
pub(crate) fn foreign_cpu(
    before: &HashMap<u32, (u32, u64, String)>,
    after: &HashMap<u32, (u32, u64, String)>,
    ticks_per_sec: f64,
) -> (f64, String) {
    let me = std::process::id();
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match after.get(&pid) {
                Some((ppid, _, _)) if *ppid != 0 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    let mut total = 0u64;
    let mut top = (0u64, String::new());
    for (pid, (_, t, name)) in after {
        if ours(*pid) {
            continue;
        }
        let d = t.saturating_sub(before.get(pid).map_or(0, |b| b.1));
        total += d;
        if d > top.0 {
            top = (d, name.clone());
        }
    }
    (total as f64 / ticks_per_sec, top.1)
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// === readiness ===

/// Polls `url` until it answers 200 (and `body`, if given), failing early when one of
/// `watch` exits, or at `deadline` with their logs.
pub(crate) async fn wait_ok(
    http: &reqwest::Client,
    url: &str,
    body: Option<&str>,
    deadline: Instant,
    watch: &mut [&mut Svc],
) -> anyhow::Result<()> {
    loop {
        let last = match http.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if status == StatusCode::OK && body.is_none_or(|b| b == text) {
                    return Ok(());
                }
                format!("{status} {}", text.trim())
            }
            Err(e) => e.to_string(),
        };
        for s in watch.iter_mut() {
            s.check_running()?;
        }
        if Instant::now() >= deadline {
            let logs: String = watch.iter().map(|s| s.logs()).collect();
            bail!("{url} not ready: {last}{logs}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Flags that give a one-node global control plane started under `dir` its seal key and
/// the directory it hands its API tokens out to, both beside its data dir.
/// A sidecar's config dump from its admin port (`GET /config`); null while it cannot
/// answer (the caller polls).
pub(crate) async fn config_dump(client: &reqwest::Client, admin: u16) -> Value {
    match client
        .get(format!("http://127.0.0.1:{admin}/config"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Starts the TCP echo demo app on `port` (logs in `dir/echo.log`).
pub(crate) fn tcp_echo(dir: &Path, causeway: &Path, port: u16) -> anyhow::Result<Svc> {
    Svc::spawn(
        dir,
        "echo",
        Command::new(causeway).args([
            "demo-app",
            "--tcp",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]),
        false,
    )
}

pub(crate) fn global_secret_flags(dir: &Path) -> [std::ffi::OsString; 4] {
    [
        "--seal-key-file".into(),
        dir.join("global-seal.key").into(),
        "--token-out-dir".into(),
        dir.join("global-tokens").into(),
    ]
}

/// The admin token the global node started with [`global_secret_flags`] hands out.
pub(crate) async fn global_admin_token(
    dir: &Path,
    deadline: Instant,
    owner: &mut Svc,
) -> anyhow::Result<String> {
    let t = wait_file(&dir.join("global-tokens/admin-token"), deadline, owner).await?;
    Ok(t.trim().to_string())
}

/// Waits for a file with content (credentials a control plane writes at start).
pub(crate) async fn wait_file(
    path: &Path,
    deadline: Instant,
    owner: &mut Svc,
) -> anyhow::Result<String> {
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s);
        }
        owner.check_running()?;
        if Instant::now() >= deadline {
            bail!("{} not written{}", path.display(), owner.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One API call with a bearer token, retrying 503s and connection errors until `deadline`;
/// other failures end it.
pub(crate) async fn api(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
    deadline: Instant,
) -> anyhow::Result<Value> {
    loop {
        let mut req = http
            .request(method.clone(), url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(5));
        if let Some(b) = body {
            req = req.json(b);
        }
        let failure = match req.send().await {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                if status.is_success() {
                    return Ok(v);
                }
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    bail!("{method} {url}: {status} {v}");
                }
                format!("{status} {v}")
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{method} {url}: {failure}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn https_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let tls = causeway_global_cp::tls::client_config(ca_pem, None)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()?)
}

// === the three paths ===

/// nginx, the backend of every path.
pub(crate) async fn start_nginx(
    dir: &Path,
    p: &Ports,
    http: &reqwest::Client,
    nginx: &Path,
) -> anyhow::Result<Svc> {
    let run = dir.join("nginx");
    std::fs::create_dir_all(&run)?;
    let conf = run.join("nginx.conf");
    std::fs::write(&conf, fill(NGINX_CONF, p, dir, &run))?;
    let mut svc = Svc::spawn(
        dir,
        "nginx",
        Command::new(nginx)
            .arg("-e")
            .arg(run.join("nginx-backend-error.log"))
            .arg("-c")
            .arg(&conf),
        true,
    )?;
    let url = format!("http://127.0.0.1:{}/", p.nginx);
    wait_ok(
        http,
        &url,
        Some("ok\n"),
        Instant::now() + READY,
        &mut [&mut svc],
    )
    .await?;
    Ok(svc)
}

/// CA, server certificate (SAN DNS:server-sidecar) and client certificate, as the
/// baseline's haproxy pair expects them: `ca.crt`, `server.pem` and `client.pem` (cert + key).
fn write_certs(certs: &Path) -> anyhow::Result<()> {
    use causeway_global_cp::tls;
    std::fs::create_dir_all(certs)?;
    const CA: &str = "causeway-bench haproxy CA";
    let ca = tls::generate_ca(CA)?;
    let server = tls::issue(&ca, CA, &["server-sidecar".to_string()], 30)?;
    let client = tls::issue(&ca, CA, &["client-sidecar".to_string()], 30)?;
    std::fs::write(certs.join("ca.crt"), &ca.cert_pem)?;
    std::fs::write(
        certs.join("server.pem"),
        format!("{}{}", server.cert_pem, server.key_pem),
    )?;
    std::fs::write(
        certs.join("client.pem"),
        format!("{}{}", client.cert_pem, client.key_pem),
    )?;
    Ok(())
}

/// The haproxy pair: outbound (originates mTLS) -> inbound (terminates it) -> nginx.
async fn start_haproxy(
    dir: &Path,
    p: &Ports,
    http: &reqwest::Client,
    haproxy: &Path,
) -> anyhow::Result<(Svc, Svc)> {
    let certs = dir.join("certs");
    write_certs(&certs)?;
    let run = dir.join("haproxy");
    std::fs::create_dir_all(&run)?;
    let start = |name: &str, template: &str| -> anyhow::Result<Svc> {
        let cfg = run.join(format!("{name}.cfg"));
        std::fs::write(&cfg, fill(template, p, &certs, &run))?;
        Svc::spawn(
            dir,
            name,
            Command::new(haproxy).arg("-db").arg("-f").arg(&cfg),
            false,
        )
    };
    let mut server = start("hap-server-sidecar-http", HAP_SERVER_HTTP)?;
    let mut client = start("hap-client-sidecar-http", HAP_CLIENT_HTTP)?;
    let url = format!("http://127.0.0.1:{}/", p.hap_out);
    wait_ok(
        http,
        &url,
        Some("ok\n"),
        Instant::now() + READY,
        &mut [&mut client, &mut server],
    )
    .await?;
    Ok((client, server))
}

/// A one-node global control plane, a zone, and the two sidecars with their tokens.
struct CausewayMesh {
    // Field order is drop order: sidecars first, then the zone, then global.
    web: Svc,
    backend: Svc,
    canary: Option<Canary>,
    _zone: Svc,
    _global: Svc,
    /// The web sidecar's outbound port for `backend`.
    outbound: u16,
    /// The web sidecar's admin port (its metrics).
    web_admin: u16,
}

/// `--routes`: the `canary` destination's two instances (sidecars tagged `version: v1`
/// and `v2`, both in front of nginx) and the web sidecar's outbound port for it.
struct Canary {
    v1: Svc,
    v2: Svc,
    v1_admin: u16,
    v2_admin: u16,
    outbound: u16,
}

/// How to run a sidecar: `causeway dataplane` by default, or a standalone
/// `causeway-dataplane` binary; plus extra arguments (such as `--concurrency 2`).
pub(crate) struct SidecarCmd {
    pub(crate) bin: Option<PathBuf>,
    pub(crate) args: Vec<String>,
    /// Apply [`resilience_policies`] too.
    pub(crate) policies: bool,
    /// Apply [`access_log_policy`] too.
    pub(crate) access_log: bool,
    /// Apply [`trace_policy`] too, with its collector, tracing this percentage.
    pub(crate) trace: Option<u8>,
    /// Also start the `canary` destination with [`route_policies`] and measure path (d).
    pub(crate) routes: bool,
}

/// Rules in the `canary` route table (the last one is the catch-all that splits).
const ROUTE_RULES: usize = 100;
/// The catch-all's weights: `version: v1` and `version: v2`.
const SPLIT_WEIGHTS: (u32, u32) = (90, 10);

/// `--routes`: a MeshHTTPRoute table of [`ROUTE_RULES`] rules for `canary`, written as
/// two policies so the sidecar's `causeway_route_requests_total{route}` shows which one a
/// request took: `canary-decoys` has 99 rules the bench's `GET /` (no query, no
/// `x-tenant` header) fails, `canary-split` the one it matches.
///
/// The zone ranks routes most specific first (exact path, longest prefix, regular
/// expression, then method, headers, query parameters), and the sidecar tries them in
/// that order until one holds. The catch-all has no condition at all, so it ranks below
/// every decoy and each request is tested against all 99 decoys first, a fifth of each
/// kind: 20 exact paths (`/api/v1/orders/N`: a string comparison), 20 prefixes
/// (`/tenants/tN`: a segment-prefix test), 20 regular expressions
/// (`/items/N/[0-9]+`, whole path), 20 header conditions (`x-tenant: tN`, absent from
/// the request) and 19 query parameters (`tenant=tN`; the request has none).
fn route_policies() -> Vec<(&'static str, Value)> {
    let mut decoys = Vec::new();
    for i in 0..ROUTE_RULES - 1 {
        let m = match i / 20 {
            0 => json!({"path": {"type": "Exact", "value": format!("/api/v1/orders/{i}")}}),
            1 => json!({"path": {"type": "PathPrefix", "value": format!("/tenants/t{i}")}}),
            2 => {
                json!({"path": {"type": "RegularExpression", "value": format!("/items/{i}/[0-9]+")}})
            }
            3 => json!({"headers": [{"name": "x-tenant", "value": format!("t{i}")}]}),
            _ => json!({"queryParams": [{"name": "tenant", "value": format!("t{i}")}]}),
        };
        decoys.push(json!({"matches": [m], "default": {}}));
    }
    let (v1, v2) = SPLIT_WEIGHTS;
    vec![
        (
            "/meshes/default/meshhttproutes/canary-decoys",
            json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "canary-decoys",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "canary"},
                                "rules": decoys}]}}),
        ),
        (
            "/meshes/default/meshhttproutes/canary-split",
            json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "canary-split",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "canary"},
                                "rules": [{"default": {"backendRefs": [
                                    {"kind": "MeshServiceSubset", "name": "canary", "tags": {"version": "v1"}, "weight": v1},
                                    {"kind": "MeshServiceSubset", "name": "canary", "tags": {"version": "v2"}, "weight": v2}]}}]}]}}),
        ),
    ]
}

/// `--policies`: the resilience policies a production mesh would have on this pair, as
/// far as the proxies enforce them (the sidecars' timeouts and retries run with or
/// without it: the built-in defaults apply when no policy is written).
fn resilience_policies() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/meshes/default/meshtimeouts/web-and-backend",
            json!({"type": "MeshTimeout", "mesh": "default", "name": "web-and-backend",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                "default": {"connectionTimeout": "2s", "idleTimeout": "30m",
                                            "http": {"requestTimeout": "5s", "streamIdleTimeout": "1m"}}}],
                        "rules": [{"default": {"idleTimeout": "30m",
                                               "http": {"requestTimeout": "10s", "requestHeadersTimeout": "5s"}}}]}}),
        ),
        (
            "/meshes/default/meshcircuitbreakers/backend",
            json!({"type": "MeshCircuitBreaker", "mesh": "default", "name": "backend",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                "default": {"connectionLimits": {"maxRequests": 1024},
                                            "outlierDetection": {"baseEjectionTime": "30s", "maxEjectionPercent": 50,
                                                                 "detectors": {"totalFailures": {"consecutive": 5},
                                                                               "gatewayFailures": {"consecutive": 5}}}}}]}}),
        ),
        (
            "/meshes/default/meshretries/backend",
            json!({"type": "MeshRetry", "mesh": "default", "name": "backend",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                "default": {"http": {"numRetries": 2, "perTryTimeout": "2s",
                                                     "retryOn": ["5xx", "ConnectFailure"],
                                                     "budget": {"percent": 20}}}}]}}),
        ),
        (
            "/meshes/default/meshhealthchecks/backend",
            json!({"type": "MeshHealthCheck", "mesh": "default", "name": "backend",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                "default": {"interval": "5s", "timeout": "1s", "http": {"path": "/"}}}]}}),
        ),
    ]
}

/// `--access-log`: every request logged twice, as a production mesh with access logs
/// on would: by web's sidecar (outbound to backend) and by backend's (inbound), each to
/// a file in `dir`, in the built-in line.
fn access_log_policy(dir: &Path) -> (&'static str, Value) {
    (
        "/meshes/default/meshaccesslogs/web-and-backend",
        json!({"type": "MeshAccessLog", "mesh": "default", "name": "web-and-backend",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                "default": {"backends": [{"type": "File", "file": {"path": dir.join("outbound-access.log")}}]}}],
                        "rules": [{"default": {"backends": [{"type": "File", "file": {"path": dir.join("inbound-access.log")}}]}}]}}),
    )
}

/// `--trace`: `percent` of the requests traced by both sidecars, their spans POSTed as
/// Zipkin v2 JSON to `collector`.
fn trace_policy(collector: std::net::SocketAddr, percent: u8) -> (&'static str, Value) {
    (
        "/meshes/default/meshtraces/everything",
        json!({"type": "MeshTrace", "mesh": "default", "name": "everything",
               "spec": {"targetRef": {"kind": "Mesh"},
                        "default": {"sampling": {"overall": percent},
                                    "backends": [{"type": "Zipkin", "zipkin": {"url": format!("http://{collector}/api/v2/spans")}}]}}}),
    )
}

/// A Zipkin collector that takes every POST (Content-Length bodies, keep-alive) and
/// answers 202. Runs until the bench ends.
async fn span_collector() -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                    if s.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

impl SidecarCmd {
    pub(crate) fn command(&self) -> anyhow::Result<Command> {
        Ok(match &self.bin {
            Some(b) => Command::new(b),
            None => {
                let mut c = Command::new(bin("causeway")?);
                c.arg("dataplane");
                c
            }
        })
    }

    pub(crate) fn describe(&self) -> anyhow::Result<String> {
        let mut s = match &self.bin {
            Some(b) => b.display().to_string(),
            None => format!("{} dataplane", bin("causeway")?.display()),
        };
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if self.policies {
            let policies = resilience_policies();
            let kinds: Vec<&str> = policies
                .iter()
                .filter_map(|(_, p)| p["type"].as_str())
                .collect();
            s.push_str(&format!(
                "; policies: MeshTrafficPermission, {}",
                kinds.join(", ")
            ));
        }
        if self.access_log {
            s.push_str("; MeshAccessLog: web's outbound and backend's inbound to a file each");
        }
        if let Some(percent) = self.trace {
            s.push_str(&format!("; MeshTrace: {percent}% of requests, a span at each sidecar, Zipkin JSON to an in-bench collector"));
        }
        if self.routes {
            s.push_str(&format!(
                "; (d): {ROUTE_RULES} MeshHTTPRoute rules, the request matching the last, split {}/{} by tag",
                SPLIT_WEIGHTS.0, SPLIT_WEIGHTS.1
            ));
        }
        Ok(s)
    }
}

async fn start_causeway(
    dir: &Path,
    nginx_port: u16,
    plain: &reqwest::Client,
    sc: &SidecarCmd,
) -> anyhow::Result<CausewayMesh> {
    let deadline = Instant::now() + READY;
    let global = crate::control::Global::start(dir, deadline).await?;
    let put = |path: &'static str, v: Value| {
        let global = &global;
        async move { global.put(path, v).await }
    };
    global.allow("web", "backend").await?;
    if sc.policies {
        for (path, policy) in resilience_policies() {
            put(path, policy).await?;
        }
    }
    if sc.access_log {
        let (path, policy) = access_log_policy(dir);
        put(path, policy).await?;
    }
    if let Some(percent) = sc.trace {
        let collector = span_collector().await?;
        let (path, policy) = trace_policy(collector, percent);
        put(path, policy).await?;
    }
    if sc.routes {
        global.allow("web", "canary").await?;
        for (path, policy) in route_policies() {
            put(path, policy).await?;
        }
    }

    // The zone, with DDS for the sidecars.
    let mut zone = global.zone(dir, "zone-a").await?;
    let ztoken = wait_file(&zone.tokens.join("admin-token"), deadline, &mut zone.svc)
        .await?
        .trim()
        .to_string();
    let zca = wait_file(&zone.dir.join("api-ca.pem"), deadline, &mut zone.svc).await?;
    let z = https_client(&zca)?;
    let zapi = zone.api;
    // The zone's intermediate mesh CA, so the sidecars get certificates at once.
    loop {
        let st = api(
            &z,
            Method::GET,
            &format!("https://127.0.0.1:{zapi}/status"),
            &ztoken,
            None,
            deadline,
        )
        .await
        .unwrap_or(Value::Null);
        if st["intermediates"][0]["mesh"] == "default" {
            break;
        }
        zone.svc.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "zone-a has no intermediate CA for mesh default: {st}{}",
                zone.svc.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The sidecars.
    let outbound = free_port();
    let sidecar = |name: &'static str, service: &'static str, inbound: Value, outbound: Value| {
        let (global, zone) = (&global, &zone);
        async move {
            let mut command = sc.command()?;
            command.args(&sc.args);
            let spec = json!({"address": "127.0.0.1", "inbound": [inbound], "outbound": outbound});
            zone.sidecar(global, dir, command, name, service, spec)
                .await
        }
    };
    let (mut backend, backend_admin) = sidecar(
        "backend-1",
        "backend",
        json!({"port": free_port(), "servicePort": nginx_port, "service": "backend", "protocol": "http"}),
        json!([]),
    )
    .await?;
    let mut canary = None;
    let mut outbounds = vec![json!({"port": outbound, "service": "backend"})];
    if sc.routes {
        let instance = |version: &str| {
            json!({"port": free_port(), "servicePort": nginx_port, "service": "canary",
                   "protocol": "http", "tags": {"version": version}})
        };
        let (v1, v1_admin) = sidecar("canary-v1", "canary", instance("v1"), json!([])).await?;
        let (v2, v2_admin) = sidecar("canary-v2", "canary", instance("v2"), json!([])).await?;
        let port = free_port();
        outbounds.push(json!({"port": port, "service": "canary"}));
        canary = Some(Canary {
            v1,
            v2,
            v1_admin,
            v2_admin,
            outbound: port,
        });
    }
    let (mut web, web_admin) = sidecar(
        "web-1",
        "web",
        json!({"port": free_port(), "servicePort": free_port(), "service": "web", "protocol": "http"}),
        Value::Array(outbounds),
    )
    .await?;
    for admin in [backend_admin, web_admin] {
        wait_ok(
            plain,
            &format!("http://127.0.0.1:{admin}/ready"),
            None,
            deadline,
            &mut [&mut web, &mut backend, &mut zone.svc],
        )
        .await?;
    }
    // Ready sidecars may not know each other yet: wait for the whole path.
    wait_ok(
        plain,
        &format!("http://127.0.0.1:{outbound}/"),
        Some("ok\n"),
        deadline,
        &mut [&mut web, &mut backend, &mut zone.svc],
    )
    .await?;
    if let Some(c) = canary.as_mut() {
        for admin in [c.v1_admin, c.v2_admin] {
            wait_ok(
                plain,
                &format!("http://127.0.0.1:{admin}/ready"),
                None,
                deadline,
                &mut [&mut c.v1, &mut c.v2, &mut zone.svc],
            )
            .await?;
        }
        // The whole route table in the web sidecar's config, and both instances
        // answering through it.
        loop {
            let cfg = config_dump(plain, web_admin).await;
            let routes = cfg["config"]["outbounds"]
                .as_array()
                .and_then(|obs| obs.iter().find(|o| o["service"] == "canary"))
                .and_then(|o| o["httpRoutes"].as_array())
                .map_or(0, Vec::len);
            let v2_answered = inbound_requests(plain, c.v2_admin).await.unwrap_or(0) > 0;
            if routes == ROUTE_RULES && v2_answered {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "web has {routes} of {ROUTE_RULES} routes for canary (v2 answered: {v2_answered}){}",
                    web.logs()
                );
            }
            wait_ok(
                plain,
                &format!("http://127.0.0.1:{}/", c.outbound),
                Some("ok\n"),
                deadline,
                &mut [&mut web, &mut c.v1, &mut c.v2, &mut zone.svc],
            )
            .await?;
        }
    }
    Ok(CausewayMesh {
        web,
        backend,
        canary,
        _zone: zone.svc,
        _global: global.svc,
        outbound,
        web_admin,
    })
}

/// Sums a sidecar's Prometheus counters whose line starts with `prefix`.
async fn counter_sum(http: &reqwest::Client, admin: u16, selector: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(causeway_api::exposition::sum(&text, selector) as u64)
}

/// Requests a sidecar's inbound has answered, every status.
async fn inbound_requests(http: &reqwest::Client, admin: u16) -> anyhow::Result<u64> {
    counter_sum(
        http,
        admin,
        "causeway_requests_total{direction=\"inbound\"}",
    )
    .await
}

/// `--routes`: where the bench's requests to `canary` went, counted by the sidecars.
#[derive(Debug, Clone, Copy, Default)]
struct SplitCount {
    /// Answered by the v1 and the v2 instance.
    v1: u64,
    v2: u64,
    /// Taken by the catch-all (`canary-split`) and by any of the 99 decoys.
    last_rule: u64,
    decoys: u64,
}

impl SplitCount {
    async fn read(http: &reqwest::Client, mesh: &CausewayMesh) -> anyhow::Result<SplitCount> {
        let c = mesh.canary.as_ref().context("no canary")?;
        let routed = |route: &'static str| {
            let prefix =
                format!("causeway_route_requests_total{{service=\"canary\",route=\"{route}\"}}");
            async move { counter_sum(http, mesh.web_admin, &prefix).await }
        };
        Ok(SplitCount {
            v1: inbound_requests(http, c.v1_admin).await?,
            v2: inbound_requests(http, c.v2_admin).await?,
            last_rule: routed("canary-split").await?,
            decoys: routed("canary-decoys").await?,
        })
    }

    fn since(self, before: SplitCount) -> SplitCount {
        SplitCount {
            v1: self.v1 - before.v1,
            v2: self.v2 - before.v2,
            last_rule: self.last_rule - before.last_rule,
            decoys: self.decoys - before.decoys,
        }
    }

    fn add(&mut self, o: SplitCount) {
        self.v1 += o.v1;
        self.v2 += o.v2;
        self.last_rule += o.last_rule;
        self.decoys += o.decoys;
    }
}

// === load ===

/// Runs a load tool to completion (killed on timeout or drop); returns what it printed.
pub(crate) async fn run_tool(
    dir: &Path,
    name: &str,
    cmd: &mut Command,
    limit: Duration,
) -> anyhow::Result<String> {
    let mut svc = Svc::spawn(dir, name, cmd, false)?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = svc.child.as_mut().context("spawned")?.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            bail!("{name} still running after {limit:?}{}", svc.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let out = std::fs::read_to_string(&svc.log)?;
    anyhow::ensure!(status.success(), "{name} failed ({status}){}", svc.logs());
    Ok(out)
}

pub(crate) struct Wrk {
    pub(crate) rps: f64,
    pub(crate) requests: u64,
    /// Non-2xx/3xx answers and socket errors, if any.
    pub(crate) errors: Option<String>,
}

pub(crate) fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut rps = None;
    let mut requests = None;
    let mut errors = Vec::new();
    for l in out.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some((n, _)) = l.split_once(" requests in ") {
            requests = n.trim().parse().ok();
        } else if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
            errors.push(l.to_string());
        }
    }
    Ok(Wrk {
        rps: rps.with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?,
        requests: requests.with_context(|| format!("no request count in wrk's output:\n{out}"))?,
        errors: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

pub(crate) struct Fixed {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    /// Answers per second actually completed.
    pub(crate) achieved: f64,
    /// Requests that failed or did not answer 200.
    pub(crate) failed: usize,
}

/// Latency percentiles (ms) from h2load's per-request log: start (µs since the epoch),
/// status (-1 on failure), µs to the end of the response.
pub(crate) fn parse_h2load_log(log: &str, seconds: u64) -> anyhow::Result<Fixed> {
    let mut ok = Vec::new();
    let mut failed = 0;
    for l in log.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        match (f[1].trim(), f[2].trim().parse::<u64>()) {
            ("200", Ok(us)) => ok.push(Duration::from_micros(us)),
            _ => failed += 1,
        }
    }
    anyhow::ensure!(!ok.is_empty(), "h2load logged no successful request");
    ok.sort();
    Ok(Fixed {
        p50: percentile(&ok, 0.5),
        p90: percentile(&ok, 0.9),
        p99: percentile(&ok, 0.99),
        achieved: ok.len() as f64 / seconds as f64,
        failed,
    })
}

/// One path under test.
struct Route {
    label: &'static str,
    url: String,
    /// Proxy processes whose CPU and memory are measured: (name, pid).
    procs: Vec<(&'static str, u32)>,
    /// Count where its requests went ([`SplitCount`]): the routed path.
    split: bool,
}

/// One run of one path.
struct Sample {
    wrk: Wrk,
    fixed: Fixed,
    /// CPU seconds of each proxy process during the wrk run.
    cpu: Vec<f64>,
    /// VmHWM of each proxy process after the run.
    peak: Vec<u64>,
    /// CPU seconds used by processes outside the benchmark meanwhile, and the busiest.
    foreign: (f64, String),
    /// CPU seconds the hypervisor took from this machine meanwhile.
    steal: f64,
    /// The routed path: where its requests went during both measurements.
    split: Option<SplitCount>,
}

impl Sample {
    /// Whether others took over 5% of one CPU over both measurements.
    fn disturbed(&self, seconds: u64) -> bool {
        self.foreign.0 + self.steal > 0.05 * 2.0 * seconds as f64
    }
}

struct Tools {
    wrk: PathBuf,
    h2load: PathBuf,
    ticks: f64,
}

async fn measure(
    dir: &Path,
    t: &Tools,
    p: &Route,
    seconds: u64,
    rate: u64,
    connections: u64,
) -> anyhow::Result<Sample> {
    let everyone = all_processes();
    let steal_before = steal_ticks();
    let cpu_before: Vec<f64> = p
        .procs
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid, t.ticks))
        .collect::<anyhow::Result<_>>()?;
    let out = run_tool(
        dir,
        "wrk",
        Command::new(&t.wrk)
            .args(["-t", &WRK_THREADS.to_string()])
            .args(["-c", &connections.to_string()])
            .args(["-d", &format!("{seconds}s")])
            .arg("--latency")
            .arg(&p.url),
        Duration::from_secs(seconds + 30),
    )
    .await?;
    let cpu: Vec<f64> = p
        .procs
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), before)| Ok(cpu_seconds(*pid, t.ticks)? - before))
        .collect::<anyhow::Result<_>>()?;
    let wrk = parse_wrk(&out)?;

    let log = dir.join("h2load-requests.tsv");
    let _ = std::fs::remove_file(&log);
    let per_client = rate as f64 / H2LOAD_CLIENTS as f64;
    run_tool(
        dir,
        "h2load",
        Command::new(&t.h2load)
            .arg("--h1")
            .args(["-c", &H2LOAD_CLIENTS.to_string()])
            .arg(format!("--rps={per_client}"))
            .args(["-D", &seconds.to_string()])
            .arg(format!("--log-file={}", log.display()))
            .arg(&p.url),
        Duration::from_secs(seconds + 30),
    )
    .await?;
    let fixed = parse_h2load_log(&std::fs::read_to_string(&log)?, seconds)?;
    let peak = p
        .procs
        .iter()
        .map(|(_, pid)| peak_rss(*pid))
        .collect::<anyhow::Result<_>>()?;
    let foreign = foreign_cpu(&everyone, &all_processes(), t.ticks);
    let steal = steal_ticks().saturating_sub(steal_before) as f64 / t.ticks;
    Ok(Sample {
        wrk,
        fixed,
        cpu,
        peak,
        foreign,
        steal,
        split: None,
    })
}

// === the benchmark ===

pub(crate) async fn sidecar(
    seconds: u64,
    runs: usize,
    rate: u64,
    connections: u64,
    sc: SidecarCmd,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        seconds >= 1 && runs >= 1,
        "--seconds and --runs must be >= 1"
    );
    anyhow::ensure!(
        rate >= H2LOAD_CLIENTS,
        "--rate must be at least {H2LOAD_CLIENTS} (h2load runs {H2LOAD_CLIENTS} connections)"
    );
    anyhow::ensure!(
        connections >= WRK_THREADS,
        "--connections must be >= {WRK_THREADS}"
    );
    // Stop cleanly on Ctrl-C: dropping the future kills every process and the temp dir.
    tokio::select! {
        r = bench(seconds, runs, rate, connections, &sc) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn bench(
    seconds: u64,
    runs: usize,
    rate: u64,
    connections: u64,
    sc: &SidecarCmd,
) -> anyhow::Result<()> {
    let t = Tools {
        wrk: tool("wrk", "wrk")?,
        h2load: tool("h2load", "nghttp2-client")?,
        ticks: clock_ticks(),
    };
    let nginx = tool("nginx", "nginx")?;
    let haproxy = tool("haproxy", "haproxy")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let plain = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let ports = Ports {
        nginx: free_port(),
        hap_out: free_port(),
        hap_in: free_port(),
    };

    println!(
        "HTTP/1.1 GET / -> nginx `return 200 \"ok\\n\"` on loopback, {} CPUs; medians of {runs} run(s)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  throughput: wrk -t{WRK_THREADS} -c{connections} -d{seconds}s; latency: h2load --h1 -c{H2LOAD_CLIENTS} --rps={} -D {seconds} ({rate} req/s, from its per-request log)",
        rate as f64 / H2LOAD_CLIENTS as f64
    );
    println!(
        "  {} | {} | sidecar: {}",
        version(&nginx, "-v"),
        version(&haproxy, "-v")
            .split(" - ")
            .next()
            .unwrap_or_default(),
        sc.describe()?
    );

    let _nginx = start_nginx(dir, &ports, &plain, &nginx).await?;
    let (hap_client, hap_server) = start_haproxy(dir, &ports, &plain, &haproxy).await?;
    let mesh = start_causeway(dir, ports.nginx, &plain, sc).await?;

    let mut paths = vec![
        Route {
            label: "(a) direct to nginx",
            url: format!("http://127.0.0.1:{}/", ports.nginx),
            procs: vec![],
            split: false,
        },
        Route {
            label: "(b) causeway sidecars",
            url: format!("http://127.0.0.1:{}/", mesh.outbound),
            procs: vec![("web", mesh.web.pid()), ("backend", mesh.backend.pid())],
            split: false,
        },
        Route {
            label: "(c) haproxy pair",
            url: format!("http://127.0.0.1:{}/", ports.hap_out),
            procs: vec![("out", hap_client.pid()), ("in", hap_server.pid())],
            split: false,
        },
    ];
    if let Some(c) = &mesh.canary {
        paths.push(Route {
            label: "(d) sidecars + routes",
            url: format!("http://127.0.0.1:{}/", c.outbound),
            procs: vec![
                ("web", mesh.web.pid()),
                ("v1", c.v1.pid()),
                ("v2", c.v2.pid()),
            ],
            split: true,
        });
    }

    // Warm-up: connections between proxies, allocator pools, caches.
    for p in &paths {
        run_tool(
            dir,
            "wrk-warmup",
            Command::new(&t.wrk)
                .args(["-t", &WRK_THREADS.to_string()])
                .args(["-c", &connections.to_string()])
                .args(["-d", "1s"])
                .arg(&p.url),
            Duration::from_secs(30),
        )
        .await?;
    }

    let mut samples: Vec<Vec<Sample>> = paths.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        // Rotate the order so no path always runs first (or right after another).
        for k in 0..paths.len() {
            let i = (run + k) % paths.len();
            let p = &paths[i];
            eprintln!("run {}/{runs}: {}", run + 1, p.label);
            let before = match p.split {
                true => Some(SplitCount::read(&plain, &mesh).await?),
                false => None,
            };
            let mut s = measure(dir, &t, p, seconds, rate, connections).await?;
            if let Some(before) = before {
                s.split = Some(SplitCount::read(&plain, &mesh).await?.since(before));
            }
            if let Some(e) = &s.wrk.errors {
                eprintln!("  wrk errors on {}: {e}", p.label);
            }
            if s.fixed.failed > 0 {
                eprintln!(
                    "  h2load: {} failed or non-200 requests on {}",
                    s.fixed.failed, p.label
                );
            }
            if (s.fixed.achieved - rate as f64).abs() > rate as f64 * 0.05 {
                eprintln!(
                    "  h2load completed {:.0} req/s on {}, not {rate}",
                    s.fixed.achieved, p.label
                );
            }
            if s.disturbed(seconds) {
                eprintln!(
                    "  other processes used {:.1} CPU-s (busiest: {}) and the hypervisor took {:.1} CPU-s (steal) meanwhile: this run is disturbed",
                    s.foreign.0,
                    if s.foreign.1.is_empty() {
                        "none"
                    } else {
                        &s.foreign.1
                    },
                    s.steal
                );
            }
            samples[i].push(s);
        }
    }

    // Medians.
    let sum: Vec<Summary> = paths
        .iter()
        .zip(&samples)
        .map(|(p, ss)| {
            let m = |f: &dyn Fn(&Sample) -> f64| median(ss.iter().map(f).collect());
            Summary {
                rps: m(&|s| s.wrk.rps),
                requests: m(&|s| s.wrk.requests as f64),
                p50: m(&|s| s.fixed.p50),
                p90: m(&|s| s.fixed.p90),
                p99: m(&|s| s.fixed.p99),
                cpu: (0..p.procs.len()).map(|k| m(&|s| s.cpu[k])).collect(),
                // Peak over the whole benchmark (VmHWM only grows).
                peak: (0..p.procs.len())
                    .map(|k| ss.iter().map(|s| s.peak[k]).max().unwrap_or(0))
                    .collect(),
                runs_rps: ss.iter().map(|s| s.wrk.rps).collect(),
                errors: ss
                    .iter()
                    .filter(|s| s.wrk.errors.is_some() || s.fixed.failed > 0)
                    .count(),
                disturbed: ss.iter().filter(|s| s.disturbed(seconds)).count(),
            }
        })
        .collect();

    println!();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>7} {:>7} {:>7}  {:<26} {:>10}  peak RSS MiB",
        "path", "req/s", "p50 ms", "p90 ms", "p99 ms", "proxy CPU s during wrk", "CPU us/req",
    );
    for (p, s) in paths.iter().zip(&sum) {
        let (cpu, per_req, rss) = if p.procs.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let names = p.procs.iter().map(|(n, _)| *n);
            let cpu: Vec<String> = names
                .clone()
                .zip(&s.cpu)
                .map(|(n, c)| format!("{n} {c:.2}"))
                .collect();
            let rss: Vec<String> = names
                .zip(&s.peak)
                .map(|(n, b)| format!("{n} {:.1}", mib(*b)))
                .collect();
            let total: f64 = s.cpu.iter().sum();
            (
                cpu.join(" + "),
                format!("{:.1}", total * 1e6 / s.requests.max(1.0)),
                rss.join(", "),
            )
        };
        let _ = writeln!(
            out,
            "{:<22} {:>9.0} {:>7.3} {:>7.3} {:>7.3}  {cpu:<26} {per_req:>10}  {rss}",
            p.label, s.rps, s.p50, s.p90, s.p99
        );
    }
    print!("{out}");
    let runs_line: Vec<String> = paths
        .iter()
        .zip(&sum)
        .map(|(p, s)| {
            let v: Vec<String> = s.runs_rps.iter().map(|r| format!("{r:.0}")).collect();
            format!("{} {}", &p.label[..3], v.join("/"))
        })
        .collect();
    println!("req/s per run: {}", runs_line.join("; "));
    for (p, s) in paths.iter().zip(&sum) {
        if s.errors > 0 {
            println!(
                "WARNING: {} had errors in {} run(s) (see above)",
                p.label, s.errors
            );
        }
        if s.disturbed > 0 {
            println!(
                "WARNING: {}: other processes or the hypervisor (steal) took over 5% of a CPU in {} of {runs} run(s); figures are unreliable",
                p.label, s.disturbed
            );
        }
    }

    // Ratios and goals.
    let (a, b, c) = (&sum[0], &sum[1], &sum[2]);
    let added_b = b.p50 - a.p50;
    let added_c = c.p50 - a.p50;
    let worst_rss = b.peak.iter().copied().max().unwrap_or(0);
    let mut rows: Vec<(String, String, String, Option<bool>)> = vec![
        (
            "throughput (b)/(a): causeway vs direct".into(),
            format!("{:.2}x", b.rps / a.rps),
            String::new(),
            None,
        ),
        (
            "throughput (b)/(c): causeway vs haproxy".into(),
            format!("{:.2}x", b.rps / c.rps),
            format!(">= {GOAL_THROUGHPUT_VS_HAPROXY}x"),
            Some(b.rps / c.rps >= GOAL_THROUGHPUT_VS_HAPROXY),
        ),
        (
            format!("added p50 at {rate} req/s: causeway / haproxy"),
            format!("{added_b:.3} / {added_c:.3} ms"),
            "causeway <= haproxy".into(),
            Some(added_b <= added_c),
        ),
        (
            "peak RSS per sidecar (web, backend)".into(),
            format!("{:.1}, {:.1} MiB", mib(b.peak[0]), mib(b.peak[1])),
            format!("< {GOAL_RSS_MIB} MiB"),
            Some(mib(worst_rss) < GOAL_RSS_MIB),
        ),
    ];
    if let Some(d) = sum.get(3) {
        rows.extend(route_rows(rate, (b, c, d), &samples[3]));
        // Throughput moves between runs on this shared machine; the ratios within
        // each round (the paths measured one after another) are steadier.
        let per_run = |x: &Summary, y: &Summary| {
            let v: Vec<f64> = x
                .runs_rps
                .iter()
                .zip(&y.runs_rps)
                .map(|(x, y)| x / y)
                .collect();
            let list: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
            format!("{} (median {:.2}x)", list.join("/"), median(v))
        };
        println!(
            "ratio per run: (d)/(c) {}; (d)/(b) {}; (b)/(c) {}",
            per_run(d, c),
            per_run(d, b),
            per_run(b, c)
        );
    }
    println!();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wv = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let wg = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(4);
    let line = |f: &str, v: &str, g: &str, m: &str| {
        println!("{}", format!("{f:<w$}  {v:<wv$}  {g:<wg$}  {m}").trim_end());
    };
    line("figure", "value", "goal", "");
    for (f, v, g, met) in &rows {
        let m = match met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "",
        };
        line(f, v, g, m);
    }
    Ok(())
}

/// Medians of one path's runs.
struct Summary {
    rps: f64,
    requests: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    cpu: Vec<f64>,
    peak: Vec<u64>,
    runs_rps: Vec<f64>,
    errors: usize,
    disturbed: usize,
}

impl Summary {
    /// Proxy CPU microseconds per request during wrk, all its proxies together.
    fn cpu_per_request(&self) -> f64 {
        self.cpu.iter().sum::<f64>() * 1e6 / self.requests.max(1.0)
    }
}

/// `--routes`: path (d) against the goal, its cost against (b) (the same sidecars
/// without routes), and the split observed over all of (d)'s requests.
fn route_rows(
    rate: u64,
    (b, c, d): (&Summary, &Summary, &Summary),
    samples: &[Sample],
) -> Vec<(String, String, String, Option<bool>)> {
    let mut total = SplitCount::default();
    for s in samples.iter().filter_map(|s| s.split) {
        total.add(s);
    }
    let n = (total.v1 + total.v2) as f64;
    let want = f64::from(SPLIT_WEIGHTS.1) / f64::from(SPLIT_WEIGHTS.0 + SPLIT_WEIGHTS.1);
    let got = total.v2 as f64 / n.max(1.0);
    // Each request picks its backend independently: the v2 share over n requests has a
    // standard deviation of sqrt(p(1-p)/n).
    let sigma = (want * (1.0 - want) / n.max(1.0)).sqrt();
    let (cpu_b, cpu_c, cpu_d) = (
        b.cpu_per_request(),
        c.cpu_per_request(),
        d.cpu_per_request(),
    );
    vec![
        (
            "throughput (d)/(c): causeway + routes vs haproxy".into(),
            format!("{:.2}x", d.rps / c.rps),
            format!(">= {GOAL_THROUGHPUT_VS_HAPROXY}x"),
            Some(d.rps / c.rps >= GOAL_THROUGHPUT_VS_HAPROXY),
        ),
        (
            "routes' cost: throughput (d)/(b)".into(),
            format!("{:.2}x ({:.0} vs {:.0} req/s)", d.rps / b.rps, d.rps, b.rps),
            String::new(),
            None,
        ),
        (
            format!("routes' cost: p50 at {rate} req/s (d) - (b)"),
            format!("{:+.3} ms ({:.3} vs {:.3})", d.p50 - b.p50, d.p50, b.p50),
            String::new(),
            None,
        ),
        (
            "routes' cost: CPU us/req (d) - (b)".into(),
            format!("{:+.1} ({cpu_d:.1} vs {cpu_b:.1})", cpu_d - cpu_b),
            String::new(),
            None,
        ),
        (
            "CPU per request vs haproxy: (b), (d)".into(),
            format!("{:.2}x, {:.2}x", cpu_b / cpu_c, cpu_d / cpu_c),
            String::new(),
            None,
        ),
        (
            format!("split to v2 over (d)'s {n:.0} requests"),
            format!("{:.2}% (v1 {}, v2 {})", got * 100.0, total.v1, total.v2),
            format!("{:.0}% +- {:.2} (3 sd)", want * 100.0, 3.0 * sigma * 100.0),
            Some((got - want).abs() <= 3.0 * sigma),
        ),
        (
            format!("took the last of the {ROUTE_RULES} rules"),
            format!("{} (a decoy: {})", total.last_rule, total.decoys),
            "all, none".into(),
            // Routed requests wrk cut off at its end were never answered: `>=`.
            Some(total.decoys == 0 && total.last_rule as f64 >= n),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line() {
        let stat = "cpu  5311104 435367 536416 1252331 38281 0 57454 82334 0 0\n\
                    cpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(super::parse_steal(stat), Some(82334));
        assert_eq!(super::parse_steal("intr 1 2 3\n"), None);
    }
}
