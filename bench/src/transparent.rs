//! `causeway-bench transparent`: what transparent proxying costs against an explicit
//! outbound port, measured side by side through one sidecar in one run. The web
//! sidecar's Dataplane has both an explicit outbound (a local port) to each destination
//! and `transparentProxying`, so the two paths share the sidecar, its upstream sidecars
//! and the machine's state, and differ only in how a connection reaches the sidecar:
//! to `127.0.0.1:<port>` (loopback, never redirected), or to the service's virtual IP,
//! redirected by `causeway dataplane install-redirect`'s nftables rules to the
//! transparent listener, which reads SO_ORIGINAL_DST and picks the outbound by it.
//!
//! - HTTP (nginx behind its own sidecar, mTLS between the sidecars): wrk's closed-loop
//!   requests per second and its p50, and the p50 and p99 at a fixed rate (h2load).
//!   wrk keeps its connections, so this is the redirect's cost per request once a
//!   connection is set up.
//! - TCP (`causeway demo-app --tcp` behind its sidecar): new connections per second, each
//!   connect, echo 64 bytes, close; here the redirect's per-connection cost (NAT on the
//!   first packet, the SO_ORIGINAL_DST lookup) is in every operation.
//! - DNS: A queries per second and p99 with concurrent UDP clients against the sidecar's
//!   DNS for `backend.mesh` (answered by the sidecar), against the upstream resolver
//!   directly, and for a name the sidecar forwards to that upstream.
//!
//! Redirect rules need a network namespace of their own: the bench, run as root, makes one
//! (loopback, and a veth pair to a second namespace as the default route, so virtual IPs
//! route and can be redirected), re-executes itself inside it with a hidden
//! `--in-netns`, and deletes both namespaces, with anything left running in them, when it
//! ends or fails. Inside, everything the bench starts runs as root, which
//! `install-redirect --uid 0` exempts; the load generators run as uid 65534 (`setpriv`),
//! the redirected workload, and so do those of the explicit paths, for a like-for-like
//! comparison. The bench itself is a debug build (it links RocksDB), so its own hot paths
//! do no DNS parsing: queries and the upstream's answer are encoded once with
//! hickory-proto and only their ids change.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::control::Global;
use crate::sidecar::{
    Ports, READY, SidecarCmd, Svc, all_processes, clock_ticks, cpu_seconds, foreign_cpu,
    parse_h2load_log, parse_wrk, run_tool, start_nginx, steal_ticks, tool, version, wait_ok,
};
use crate::{bin, free_port, median, percentile};

/// Goal from the issue: transparent within 5% of the explicit port's throughput.
const GOAL_RATIO: f64 = 0.95;
/// wrk threads, and h2load connections for the fixed-rate measurement (as `sidecar`).
const WRK_THREADS: u64 = 2;
const H2LOAD_CLIENTS: u64 = 10;
/// The redirected workload's user: the load generators run as it.
const WORKLOAD_UID: &str = "65534";
/// The port the TCP load dials on the echo service's virtual IP (any port redirects).
const ECHO_VIP_PORT: u16 = 6379;
/// A name outside the mesh, known to the in-bench upstream resolver only.
const OUTSIDE_NAME: &str = "outside.example.";
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const OUTSIDE_TTL: u32 = 42;
/// The mesh name asked of the sidecar.
const MESH_NAME: &str = "backend.mesh.";
/// How long a load generator waits for one DNS answer before counting it lost.
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one TCP operation (connect, echo, close) may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags of `causeway-bench transparent`.
pub(crate) struct Opts {
    pub(crate) seconds: u64,
    pub(crate) runs: usize,
    pub(crate) connections: u64,
    pub(crate) rate: u64,
    pub(crate) clients: usize,
    pub(crate) sidecar: SidecarCmd,
}

pub(crate) async fn transparent(o: Opts, in_netns: Option<String>) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.seconds >= 1 && o.runs >= 1 && o.clients >= 1,
        "--seconds, --runs and --clients must be >= 1"
    );
    anyhow::ensure!(
        o.rate >= H2LOAD_CLIENTS,
        "--rate must be at least {H2LOAD_CLIENTS} (h2load runs {H2LOAD_CLIENTS} connections)"
    );
    anyhow::ensure!(
        o.connections >= WRK_THREADS,
        "--connections must be >= {WRK_THREADS}"
    );
    match in_netns {
        None => outside().await,
        // Stop cleanly on Ctrl-C (or the outer bench's SIGINT): dropping the future
        // uninstalls the rules and stops every process.
        Some(ns) => tokio::select! {
            r = inside(&o, &ns) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        },
    }
}

// === the namespaces (outside) ===

/// The two namespaces this run made: deleted on drop, after killing whatever still runs
/// in them (only this bench's processes can).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> anyhow::Result<()> {
        sh("ip", &["netns", "add", &name])?;
        self.0.push(name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill")
                    .args(["-KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs a command to completion; its standard output, or an error with its standard error.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(1).map(|u| u == "0")
        })
        .unwrap_or(false)
}

/// Makes the namespaces, runs this bench inside the workload's, and cleans up.
async fn outside() -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "causeway-bench transparent makes a network namespace and installs redirect rules in it: run it as root"
    );
    for (t, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("setpriv", "util-linux"),
    ] {
        tool(t, package)?;
    }
    let pid = std::process::id();
    let (ns, peer) = (format!("cwb-tp-{pid}"), format!("cwb-tpo-{pid}"));
    let mut namespaces = Namespaces(Vec::new());
    namespaces.add(ns.clone())?;
    namespaces.add(peer.clone())?;
    // The workload's namespace has a default route over a veth pair to the other one:
    // a virtual IP routes (and the redirect applies to it); loopback never redirects.
    for cmd in [
        format!("-n {ns} link set lo up"),
        format!("-n {ns} link add tp0 type veth peer name tp1 netns {peer}"),
        format!("-n {ns} addr add 10.77.0.1/24 dev tp0"),
        format!("-n {ns} link set tp0 up"),
        format!("-n {ns} route add default dev tp0"),
        format!("-n {peer} addr add 10.77.0.2/24 dev tp1"),
        format!("-n {peer} link set tp1 up"),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        sh("ip", &args)?;
    }
    // New connections at full rate: reuse TIME_WAIT ports for connections that do not
    // look like loopback ones (a virtual IP's), and every ephemeral port. The sysctls
    // are the namespace's own.
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
    ] {
        if let Err(e) = sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                &format!("{key}={value}"),
            ],
        ) {
            eprintln!("warning: {e}");
        }
    }

    let exe = std::env::current_exe()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .args(["--in-netns", &ns])
        .stdin(Stdio::null())
        .spawn()
        .context("ip netns exec")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
        }
    };
    let Some(status) = status else {
        // Interrupted: the bench inside stops its processes and rules on SIGINT.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(namespaces);
        bail!("interrupted");
    };
    drop(namespaces);
    anyhow::ensure!(
        status.success(),
        "the bench in namespace {ns} failed ({status})"
    );
    Ok(())
}

// === the mesh (inside) ===

/// Global and zone control planes, nginx's and the echo's sidecars, and web's sidecar
/// with explicit outbounds to both and transparent proxying.
struct Mesh {
    // Field order is drop order: sidecars first, then the apps, the zone, global.
    web: Svc,
    _backend: Svc,
    _echo_sidecar: Svc,
    _echo: Svc,
    _zone: Svc,
    _global: Svc,
    /// web's explicit outbounds: backend (HTTP) and echo (TCP).
    http_port: u16,
    tcp_port: u16,
    /// web's transparent listener and DNS.
    outbound_port: u16,
    dns_port: u16,
    backend_vip: Ipv4Addr,
    echo_vip: Ipv4Addr,
}

async fn start_mesh(
    dir: &Path,
    nginx_port: u16,
    upstream: SocketAddr,
    plain: &reqwest::Client,
    sc: &SidecarCmd,
) -> anyhow::Result<Mesh> {
    let causeway = bin("causeway")?;
    let deadline = Instant::now() + READY;
    let mut global = Global::start(dir, deadline).await?;
    for to in ["backend", "echo"] {
        global.allow("web", to).await?;
    }
    // The zone, with DDS for the sidecars.
    let mut zone = global.zone(dir, "zone-a").await?;

    let sidecar = |name: &'static str, service: &'static str, spec: Value, extra: Vec<String>| {
        let (global, zone) = (&global, &zone);
        async move {
            let mut command = sc.command()?;
            command.args(&extra);
            zone.sidecar(global, dir, command, name, service, spec)
                .await
        }
    };
    let (mut backend, backend_admin) = sidecar(
        "backend-1",
        "backend",
        json!({"address": "127.0.0.1",
               "inbound": [{"port": free_port(), "servicePort": nginx_port, "service": "backend", "protocol": "http"}]}),
        Vec::new(),
    )
    .await?;
    let echo_port = free_port();
    let mut echo = crate::sidecar::tcp_echo(dir, &causeway, echo_port)?;
    let (mut echo_sidecar, echo_admin) = sidecar(
        "echo-1",
        "echo",
        json!({"address": "127.0.0.1",
               "inbound": [{"port": free_port(), "servicePort": echo_port, "service": "echo", "protocol": "tcp"}]}),
        Vec::new(),
    )
    .await?;
    let (http_port, tcp_port, outbound_port, dns_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (mut web, web_admin) = sidecar(
        "web-1",
        "web",
        json!({"address": "127.0.0.1",
               "inbound": [{"port": free_port(), "servicePort": free_port(), "service": "web", "protocol": "http"}],
               "outbound": [{"port": http_port, "service": "backend"}, {"port": tcp_port, "service": "echo"}],
               "transparentProxying": {"outboundPort": outbound_port, "dnsPort": dns_port}}),
        vec!["--dns-upstream".into(), upstream.to_string()],
    )
    .await?;
    for admin in [backend_admin, echo_admin, web_admin] {
        wait_ok(
            plain,
            &format!("http://127.0.0.1:{admin}/ready"),
            None,
            deadline,
            &mut [
                &mut web,
                &mut backend,
                &mut echo_sidecar,
                &mut echo,
                &mut zone.svc,
            ],
        )
        .await?;
    }

    // The virtual IPs the global control plane allocated, and both in web's config.
    let mut vips = Vec::new();
    for service in ["backend", "echo"] {
        let ip = loop {
            let path = format!("/meshes/default/virtualips/{service}");
            let until = Instant::now() + Duration::from_secs(2);
            if let Ok(v) = global.call(Method::GET, &path, None, until).await
                && let Some(ip) = v["spec"]["ip"].as_str().and_then(|s| s.parse().ok())
            {
                break ip;
            }
            global.svc.check_running()?;
            if Instant::now() >= deadline {
                bail!("no virtual IP for {service}{}", global.svc.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        vips.push(ip);
    }
    let (backend_vip, echo_vip): (Ipv4Addr, Ipv4Addr) = (vips[0], vips[1]);
    loop {
        let cfg = crate::sidecar::config_dump(plain, web_admin).await;
        let has: Vec<String> = cfg["config"]["outbounds"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(|o| o["vip"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if has.contains(&backend_vip.to_string()) && has.contains(&echo_vip.to_string()) {
            break;
        }
        web.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "web's sidecar has no implicit outbounds at {backend_vip} and {echo_vip} (has {has:?}){}",
                web.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The explicit path end to end (the sidecars know each other).
    wait_ok(
        plain,
        &format!("http://127.0.0.1:{http_port}/"),
        Some("ok\n"),
        deadline,
        &mut [&mut web, &mut backend, &mut zone.svc],
    )
    .await?;
    Ok(Mesh {
        web,
        _backend: backend,
        _echo_sidecar: echo_sidecar,
        _echo: echo,
        _zone: zone.svc,
        _global: global.svc,
        http_port,
        tcp_port,
        outbound_port,
        dns_port,
        backend_vip,
        echo_vip,
    })
}

/// `install-redirect`'s rules in this namespace, for every user but root; removed on drop
/// (deleting the namespace would too, but a bench interrupted before it should not leave
/// them behind either).
struct Redirect {
    causeway: PathBuf,
}

impl Redirect {
    fn install(outbound_port: u16, dns_port: u16) -> anyhow::Result<Redirect> {
        let causeway = bin("causeway")?;
        let out = Command::new(&causeway)
            .args(["dataplane", "install-redirect", "--uid", "0"])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--dns-port", &dns_port.to_string()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "install-redirect failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Redirect { causeway })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = Command::new(&self.causeway)
            .args(["dataplane", "uninstall-redirect"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// === the upstream resolver (inside) ===

/// A DNS query for `name`'s A record, id 0, recursion desired.
fn query_bytes(name: &str) -> anyhow::Result<Vec<u8>> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut q = Message::new();
    q.set_id(0).set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(q.to_vec()?)
}

/// The upstream's answer: [`OUTSIDE_NAME`]'s A record, NXDOMAIN for anything else.
fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
    let q = Message::from_vec(query).ok()?;
    let mut a = Message::new();
    a.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .add_queries(q.queries().iter().cloned());
    match q.queries().first() {
        Some(query) if query.name().to_ascii().eq_ignore_ascii_case(OUTSIDE_NAME) => {
            if query.query_type() == RecordType::A {
                a.add_answer(Record::from_rdata(
                    query.name().clone(),
                    OUTSIDE_TTL,
                    RData::A(A(OUTSIDE_IP)),
                ));
            }
        }
        _ => {
            a.set_response_code(ResponseCode::NXDomain);
        }
    }
    a.to_vec().ok()
}

/// Aborts its task when dropped: the resolver lives as long as the bench holds it.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The upstream resolver, on UDP loopback. The bench's query for [`OUTSIDE_NAME`] (as
/// the sidecar forwards it, byte for byte) gets an answer encoded once, its id patched;
/// anything else is decoded and answered by [`upstream_answer`].
async fn upstream_resolver() -> anyhow::Result<(SocketAddr, Task)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    let canned_query = query_bytes(OUTSIDE_NAME)?;
    let canned_answer = upstream_answer(&canned_query).context("encoding the answer")?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let q = &buf[..n];
            let answer = if n == canned_query.len() && q[2..] == canned_query[2..] {
                let mut a = canned_answer.clone();
                a[..2].copy_from_slice(&q[..2]);
                Some(a)
            } else {
                upstream_answer(q)
            };
            if let Some(a) = answer {
                let _ = sock.send_to(&a, from).await;
            }
        }
    });
    Ok((addr, Task(task)))
}

// === the load generators (a hidden subcommand, run as the workload's user) ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoadKind {
    Tcp,
    Dns,
    Http,
}

impl LoadKind {
    fn arg(self) -> &'static str {
        match self {
            LoadKind::Tcp => "tcp",
            LoadKind::Dns => "dns",
            LoadKind::Http => "http",
        }
    }
}

/// One connection: connect, echo 64 bytes, close.
async fn echo_once(target: SocketAddr) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    let msg = [7u8; 64];
    s.write_all(&msg).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    anyhow::ensure!(back == msg, "the echo differs");
    Ok(())
}

/// One `GET /` on a new connection; nginx's `ok` (readiness only).
async fn http_once(target: SocketAddr) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(target).await?;
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    Ok(())
}

/// Whether `answer` answers query `id` with at least one record.
fn answered(answer: &[u8], id: [u8; 2]) -> bool {
    answer.len() >= 12
        && answer[..2] == id
        && answer[2] & 0x80 != 0 // a response
        && answer[3] & 0x0f == 0 // NOERROR
        && u16::from_be_bytes([answer[6], answer[7]]) >= 1
}

/// One UDP client: queries one after another until `end` (just one if `end` is `None`);
/// latencies and failures.
async fn dns_client(
    target: SocketAddr,
    query: Arc<Vec<u8>>,
    first_id: u16,
    end: Option<Instant>,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(target).await?;
    let mut q = query.to_vec();
    let mut buf = vec![0u8; 4096];
    let (mut lat, mut failed) = (Vec::new(), 0u64);
    let mut id = first_id;
    loop {
        id = id.wrapping_add(1);
        let want = id.to_be_bytes();
        q[..2].copy_from_slice(&want);
        let t = Instant::now();
        let ok = match sock.send(&q).await {
            Ok(_) => {
                let r = tokio::time::timeout(DNS_TIMEOUT, async {
                    loop {
                        let n = sock.recv(&mut buf).await?;
                        // A late answer to an earlier (timed out) query is not this one's.
                        if buf[..n].get(..2) == Some(&want[..]) {
                            return Ok::<_, std::io::Error>(n);
                        }
                    }
                })
                .await;
                matches!(r, Ok(Ok(n)) if answered(&buf[..n], want))
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                false
            }
        };
        match ok {
            true => lat.push(t.elapsed()),
            false => failed += 1,
        }
        if end.is_none_or(|end| Instant::now() >= end) {
            return Ok((lat, failed));
        }
    }
}

/// One TCP client: connections one after another until `end`.
async fn tcp_client(target: SocketAddr, end: Instant) -> (Vec<Duration>, u64) {
    let (mut lat, mut failed) = (Vec::new(), 0u64);
    while Instant::now() < end {
        let t = Instant::now();
        match tokio::time::timeout(TCP_TIMEOUT, echo_once(target)).await {
            Ok(Ok(())) => lat.push(t.elapsed()),
            _ => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (lat, failed)
}

/// What a load generator prints, as one JSON line.
#[derive(Debug, Clone, Copy)]
struct Load {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// `causeway-bench transparent-load`: `clients` concurrent clients of `kind` against
/// `target` for `seconds`; or, with `once`, one operation (readiness).
pub(crate) async fn load(
    kind: LoadKind,
    target: SocketAddr,
    name: &str,
    clients: usize,
    seconds: u64,
    once: bool,
) -> anyhow::Result<()> {
    let query = Arc::new(match kind {
        LoadKind::Dns => query_bytes(name)?,
        _ => Vec::new(),
    });
    if once {
        return tokio::time::timeout(TCP_TIMEOUT, async {
            match kind {
                LoadKind::Tcp => echo_once(target).await,
                LoadKind::Http => http_once(target).await,
                LoadKind::Dns => {
                    let (lat, _) = dns_client(target, query, 1, None).await?;
                    anyhow::ensure!(!lat.is_empty(), "no answer from {target} for {name}");
                    Ok(())
                }
            }
        })
        .await
        .with_context(|| format!("{target}: timed out"))?;
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let query = query.clone();
        tasks.push(tokio::spawn(async move {
            match kind {
                LoadKind::Tcp => Ok(tcp_client(target, end).await),
                // Ids apart, so each client's late answers are told from its own.
                LoadKind::Dns => {
                    dns_client(target, query, (i as u16).wrapping_mul(4099), Some(end)).await
                }
                LoadKind::Http => bail!("http has no load generator here: wrk does that"),
            }
        }));
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await??;
        lat.extend(l);
        failed += f;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{}",
        json!({"per_sec": lat.len() as f64 / elapsed, "p50_ms": percentile(&lat, 0.5),
               "p99_ms": percentile(&lat, 0.99), "failed": failed})
    );
    Ok(())
}

/// A command run as the workload's user, so the redirect applies to it.
fn as_workload(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={WORKLOAD_UID}"),
        &format!("--regid={WORKLOAD_UID}"),
        "--clear-groups",
    ])
    .arg(program);
    c
}

/// The load generator's command line.
fn load_command(
    kind: LoadKind,
    target: SocketAddr,
    name: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Command> {
    let mut c = as_workload(&std::env::current_exe()?);
    c.args(["transparent-load", kind.arg(), &target.to_string()])
        .args(["--name", name])
        .args(["--clients", &clients.to_string()])
        .args(["--seconds", &seconds.to_string()]);
    Ok(c)
}

/// Runs a load generator as the workload's user and reads its result.
async fn run_load(
    dir: &Path,
    kind: LoadKind,
    target: SocketAddr,
    name: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Load> {
    let out = run_tool(
        dir,
        &format!("load-{}", kind.arg()),
        &mut load_command(kind, target, name, clients, seconds)?,
        Duration::from_secs(seconds + 30),
    )
    .await?;
    let v: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no result from the load generator:\n{out}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Load {
        per_sec: f("per_sec"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
        failed: v["failed"].as_u64().unwrap_or(0),
    })
}

/// Waits until one operation of `kind` against `target` succeeds as the workload.
async fn wait_probe(
    dir: &Path,
    kind: LoadKind,
    target: SocketAddr,
    name: &str,
    web: &mut Svc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        let mut cmd = load_command(kind, target, name, 1, 1)?;
        cmd.arg("--once");
        let last = match run_tool(dir, "probe", &mut cmd, Duration::from_secs(15)).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        web.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "{} {target} {name} never answered the workload: {last:#}{}",
                kind.arg(),
                web.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === the measurements (inside) ===

/// The CPU others used while a measurement ran: processes outside this bench's tree
/// (builds and tests on a shared machine) and the hypervisor (steal).
struct Others {
    before: std::collections::HashMap<u32, (u32, u64, String)>,
    steal: u64,
}

impl Others {
    fn start() -> Others {
        Others {
            before: all_processes(),
            steal: steal_ticks(),
        }
    }

    /// What took over 5% of one CPU over `seconds`, if anything: the run is disturbed.
    fn disturbed(self, ticks: f64, seconds: f64) -> Option<String> {
        let (cpu, busiest) = foreign_cpu(&self.before, &all_processes(), ticks);
        let steal = steal_ticks().saturating_sub(self.steal) as f64 / ticks;
        (cpu + steal > 0.05 * seconds).then(|| {
            format!("other processes used {cpu:.1} CPU-s (busiest: {busiest}), the hypervisor took {steal:.1}")
        })
    }
}

/// One HTTP run of one path.
struct HttpSample {
    rps: f64,
    /// wrk's p50 under its closed loop.
    wrk_p50: f64,
    /// p50 and p99 at the fixed rate.
    p50: f64,
    p99: f64,
    /// web's sidecar CPU microseconds per request during wrk.
    cpu_us: f64,
    errors: Option<String>,
    disturbed: Option<String>,
}

/// One TCP or DNS run of one path.
struct LoadSample {
    load: Load,
    /// web's sidecar CPU microseconds per operation (NaN: not through it).
    cpu_us: f64,
    disturbed: Option<String>,
}

/// wrk's `50%` line under `--latency`, in milliseconds.
fn parse_wrk_p50(out: &str) -> Option<f64> {
    let v = out
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("50%"))?
        .trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|n| n * scale)
}

struct Tools {
    wrk: PathBuf,
    h2load: PathBuf,
    ticks: f64,
}

async fn measure_http(
    dir: &Path,
    t: &Tools,
    o: &Opts,
    url: &str,
    web_pid: u32,
) -> anyhow::Result<HttpSample> {
    let others = Others::start();
    let cpu_before = cpu_seconds(web_pid, t.ticks)?;
    let out = run_tool(
        dir,
        "wrk",
        as_workload(&t.wrk)
            .args(["-t", &WRK_THREADS.to_string()])
            .args(["-c", &o.connections.to_string()])
            .args(["-d", &format!("{}s", o.seconds)])
            .arg("--latency")
            .arg(url),
        Duration::from_secs(o.seconds + 30),
    )
    .await?;
    let cpu = cpu_seconds(web_pid, t.ticks)? - cpu_before;
    let wrk = parse_wrk(&out)?;
    let wrk_p50 = parse_wrk_p50(&out).unwrap_or(f64::NAN);

    // h2load runs as the workload too: its log goes to a folder that user may write.
    let log = dir.join("load").join("h2load-requests.tsv");
    let _ = std::fs::remove_file(&log);
    run_tool(
        dir,
        "h2load",
        as_workload(&t.h2load)
            .arg("--h1")
            .args(["-c", &H2LOAD_CLIENTS.to_string()])
            .arg(format!("--rps={}", o.rate as f64 / H2LOAD_CLIENTS as f64))
            .args(["-D", &o.seconds.to_string()])
            .arg(format!("--log-file={}", log.display()))
            .arg(url),
        Duration::from_secs(o.seconds + 30),
    )
    .await?;
    let fixed = parse_h2load_log(&std::fs::read_to_string(&log)?, o.seconds)?;
    let mut errors = wrk.errors;
    if fixed.failed > 0 {
        let e = format!("h2load: {} failed or non-200", fixed.failed);
        errors = Some(errors.map_or(e.clone(), |w| format!("{w}; {e}")));
    }
    Ok(HttpSample {
        rps: wrk.rps,
        wrk_p50,
        p50: fixed.p50,
        p99: fixed.p99,
        cpu_us: cpu * 1e6 / wrk.requests.max(1) as f64,
        errors,
        disturbed: others.disturbed(t.ticks, 2.0 * o.seconds as f64),
    })
}

/// One TCP or DNS run of one path.
async fn measure_load(
    dir: &Path,
    t: &Tools,
    o: &Opts,
    (kind, target, name): (LoadKind, SocketAddr, &str),
    web_pid: Option<u32>,
) -> anyhow::Result<LoadSample> {
    let others = Others::start();
    let cpu_before = match web_pid {
        Some(pid) => cpu_seconds(pid, t.ticks)?,
        None => 0.0,
    };
    let l = run_load(dir, kind, target, name, o.clients, o.seconds).await?;
    let cpu_us = match web_pid {
        Some(pid) => {
            (cpu_seconds(pid, t.ticks)? - cpu_before) * 1e6 / (l.per_sec * o.seconds as f64)
        }
        None => f64::NAN,
    };
    Ok(LoadSample {
        load: l,
        cpu_us,
        disturbed: others.disturbed(t.ticks, o.seconds as f64),
    })
}

async fn inside(o: &Opts, ns: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let t = Tools {
        wrk: tool("wrk", "wrk")?,
        h2load: tool("h2load", "nghttp2-client")?,
        ticks: clock_ticks(),
    };
    let nginx = tool("nginx", "nginx")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // The workload's user reaches `load/` (h2load's log), and nothing else in here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::create_dir(dir.join("load"))?;
    std::fs::set_permissions(dir.join("load"), std::fs::Permissions::from_mode(0o777))?;
    let plain = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;

    println!(
        "transparent proxying vs explicit outbound ports, one web sidecar, in network namespace {ns}; {} CPUs; medians of {} run(s) of {} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.runs,
        o.seconds
    );
    println!(
        "  HTTP: GET / -> nginx behind its sidecar (mTLS); wrk -t{WRK_THREADS} -c{} and h2load --h1 -c{H2LOAD_CLIENTS} at {} req/s, as uid {WORKLOAD_UID}",
        o.connections, o.rate
    );
    println!(
        "  TCP: connect, echo 64 bytes, close, to demo-app --tcp behind its sidecar; DNS: UDP A queries; {} clients each, as uid {WORKLOAD_UID}",
        o.clients
    );
    println!(
        "  {} | {} | sidecar: {}",
        version(&t.wrk, "-v"),
        version(&nginx, "-v"),
        o.sidecar.describe()?
    );

    let (upstream, _resolver) = upstream_resolver().await?;
    let nginx_port = free_port();
    let _nginx = start_nginx(
        dir,
        &Ports {
            nginx: nginx_port,
            hap_out: 0,
            hap_in: 0,
        },
        &plain,
        &nginx,
    )
    .await?;
    let mut mesh = start_mesh(dir, nginx_port, upstream, &plain, &o.sidecar).await?;
    let _redirect = Redirect::install(mesh.outbound_port, mesh.dns_port)?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let http_vip = SocketAddr::from((mesh.backend_vip, 80));
    let echo_vip = SocketAddr::from((mesh.echo_vip, ECHO_VIP_PORT));
    let dns = local(mesh.dns_port);
    for (kind, target, name) in [
        (LoadKind::Http, http_vip, ""),
        (LoadKind::Tcp, echo_vip, ""),
        (LoadKind::Tcp, local(mesh.tcp_port), ""),
        (LoadKind::Dns, dns, MESH_NAME),
        (LoadKind::Dns, dns, OUTSIDE_NAME),
        (LoadKind::Dns, upstream, OUTSIDE_NAME),
    ] {
        wait_probe(dir, kind, target, name, &mut mesh.web).await?;
    }
    println!(
        "  virtual IPs: backend {}, echo {}; web's transparent listener :{}, DNS :{}, upstream resolver {upstream}",
        mesh.backend_vip, mesh.echo_vip, mesh.outbound_port, mesh.dns_port
    );

    let web_pid = mesh.web.pid();
    let http_paths = [
        (
            "HTTP explicit port",
            format!("http://127.0.0.1:{}/", mesh.http_port),
        ),
        ("HTTP transparent VIP", format!("http://{http_vip}/")),
    ];
    let tcp_paths = [
        ("TCP explicit port", local(mesh.tcp_port)),
        ("TCP transparent VIP", echo_vip),
    ];
    let dns_paths = [
        ("DNS upstream direct", upstream, OUTSIDE_NAME, false),
        ("DNS sidecar, mesh name", dns, MESH_NAME, true),
        ("DNS sidecar, forwarded", dns, OUTSIDE_NAME, true),
    ];
    // Warm-up: connections between the sidecars, allocator pools, caches.
    for (_, url) in &http_paths {
        run_tool(
            dir,
            "wrk-warmup",
            as_workload(&t.wrk)
                .args(["-t", &WRK_THREADS.to_string()])
                .args(["-c", &o.connections.to_string()])
                .args(["-d", "1s"])
                .arg(url),
            Duration::from_secs(30),
        )
        .await?;
    }

    let mut http: Vec<Vec<HttpSample>> = vec![Vec::new(), Vec::new()];
    let mut tcp: Vec<Vec<LoadSample>> = vec![Vec::new(), Vec::new()];
    let mut dnss: Vec<Vec<LoadSample>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let flag = |label: &str, d: &Option<String>| {
        if let Some(d) = d {
            eprintln!("  {label}: {d}: this run is disturbed");
        }
    };
    for run in 0..o.runs {
        // Rotate the order so neither path always goes first.
        for k in 0..http_paths.len() {
            let i = (run + k) % http_paths.len();
            eprintln!("run {}/{}: {}", run + 1, o.runs, http_paths[i].0);
            let s = measure_http(dir, &t, o, &http_paths[i].1, web_pid).await?;
            if let Some(e) = &s.errors {
                eprintln!("  errors on {}: {e}", http_paths[i].0);
            }
            flag(http_paths[i].0, &s.disturbed);
            http[i].push(s);
        }
        for k in 0..tcp_paths.len() {
            let i = (run + k) % tcp_paths.len();
            eprintln!("run {}/{}: {}", run + 1, o.runs, tcp_paths[i].0);
            let target = (LoadKind::Tcp, tcp_paths[i].1, "");
            let s = measure_load(dir, &t, o, target, Some(web_pid)).await?;
            flag(tcp_paths[i].0, &s.disturbed);
            tcp[i].push(s);
        }
        for k in 0..dns_paths.len() {
            let i = (run + k) % dns_paths.len();
            let (label, target, name, through) = dns_paths[i];
            eprintln!("run {}/{}: {label}", run + 1, o.runs);
            let pid = through.then_some(web_pid);
            let s = measure_load(dir, &t, o, (LoadKind::Dns, target, name), pid).await?;
            flag(label, &s.disturbed);
            dnss[i].push(s);
        }
    }

    // === report ===
    let m = median;
    println!();
    println!(
        "{:<24} {:>9} {:>11} {:>13} {:>13} {:>13}  errors",
        "HTTP path", "req/s", "wrk p50 ms", "p50 ms @rate", "p99 ms @rate", "web CPU us/req"
    );
    let mut hs = Vec::new();
    for ((label, _), ss) in http_paths.iter().zip(&http) {
        let rps = m(ss.iter().map(|s| s.rps).collect());
        let p50 = m(ss.iter().map(|s| s.p50).collect());
        let errs = ss.iter().filter(|s| s.errors.is_some()).count();
        println!(
            "{label:<24} {rps:>9.0} {:>11.3} {p50:>13.3} {:>13.3} {:>13.1}  {errs}",
            m(ss.iter().map(|s| s.wrk_p50).collect()),
            m(ss.iter().map(|s| s.p99).collect()),
            m(ss.iter().map(|s| s.cpu_us).collect()),
        );
        hs.push((rps, p50));
    }
    println!();
    println!(
        "{:<24} {:>9} {:>11} {:>13} {:>13} {:>13}  failed",
        "TCP path", "conn/s", "", "p50 ms", "p99 ms", "web CPU us/conn"
    );
    let mut ts = Vec::new();
    for ((label, _), ss) in tcp_paths.iter().zip(&tcp) {
        let cps = m(ss.iter().map(|s| s.load.per_sec).collect());
        let failed: u64 = ss.iter().map(|s| s.load.failed).sum();
        println!(
            "{label:<24} {cps:>9.0} {:>11} {:>13.3} {:>13.3} {:>13.1}  {failed}",
            "",
            m(ss.iter().map(|s| s.load.p50_ms).collect()),
            m(ss.iter().map(|s| s.load.p99_ms).collect()),
            m(ss.iter().map(|s| s.cpu_us).collect()),
        );
        ts.push(cps);
    }
    println!();
    println!(
        "{:<24} {:>9} {:>11} {:>13} {:>13} {:>13}  lost",
        "DNS (UDP, A)", "answers/s", "", "p50 ms", "p99 ms", "web CPU us/q"
    );
    let mut ds = Vec::new();
    for ((label, _, _, through), ss) in dns_paths.iter().zip(&dnss) {
        let qps = m(ss.iter().map(|s| s.load.per_sec).collect());
        let p99 = m(ss.iter().map(|s| s.load.p99_ms).collect());
        let failed: u64 = ss.iter().map(|s| s.load.failed).sum();
        let cpu = if *through {
            format!("{:.1}", m(ss.iter().map(|s| s.cpu_us).collect()))
        } else {
            "-".into()
        };
        println!(
            "{label:<24} {qps:>9.0} {:>11} {:>13.3} {p99:>13.3} {cpu:>13}  {failed}",
            "",
            m(ss.iter().map(|s| s.load.p50_ms).collect()),
        );
        ds.push((qps, p99));
    }
    // Both paths of a round run back to back, so the machine's drift between rounds
    // cancels in each round's ratio: the goal is judged on their median.
    let ratios = |a: Vec<f64>, b: Vec<f64>| -> (f64, String) {
        let r: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
        let list: Vec<String> = r.iter().map(|r| format!("{r:.3}")).collect();
        (median(r), list.join("/"))
    };
    let (http_ratio, http_runs) = ratios(
        http[1].iter().map(|s| s.rps).collect(),
        http[0].iter().map(|s| s.rps).collect(),
    );
    let (tcp_ratio, tcp_runs) = ratios(
        tcp[1].iter().map(|s| s.load.per_sec).collect(),
        tcp[0].iter().map(|s| s.load.per_sec).collect(),
    );
    println!();
    println!("transparent/explicit per run: HTTP req/s {http_runs}; TCP conn/s {tcp_runs}");
    let disturbed = http
        .iter()
        .flatten()
        .filter(|s| s.disturbed.is_some())
        .count()
        + tcp
            .iter()
            .chain(&dnss)
            .flatten()
            .filter(|s| s.disturbed.is_some())
            .count();
    if disturbed > 0 {
        println!(
            "WARNING: other processes or the hypervisor took over 5% of a CPU in {disturbed} of {} measurements (see above); figures are unreliable",
            (http_paths.len() + tcp_paths.len() + dns_paths.len()) * o.runs
        );
    }

    let rows: Vec<(String, String, String, Option<bool>)> = vec![
        (
            "HTTP req/s transparent/explicit, median per run".into(),
            format!(
                "{http_ratio:.3}x (of medians: {:.3}x, {:.0} vs {:.0})",
                hs[1].0 / hs[0].0,
                hs[1].0,
                hs[0].0
            ),
            format!(">= {GOAL_RATIO}x"),
            Some(http_ratio >= GOAL_RATIO),
        ),
        (
            format!("HTTP p50 at {} req/s, transparent - explicit", o.rate),
            format!(
                "{:+.3} ms ({:.3} vs {:.3})",
                hs[1].1 - hs[0].1,
                hs[1].1,
                hs[0].1
            ),
            String::new(),
            None,
        ),
        (
            "TCP conn/s transparent/explicit, median per run".into(),
            format!(
                "{tcp_ratio:.3}x (of medians: {:.3}x, {:.0} vs {:.0})",
                ts[1] / ts[0],
                ts[1],
                ts[0]
            ),
            format!(">= {GOAL_RATIO}x"),
            Some(tcp_ratio >= GOAL_RATIO),
        ),
        (
            "DNS mesh name: sidecar/upstream answers/s".into(),
            format!(
                "{:.2}x (p99 {:.3} vs {:.3} ms)",
                ds[1].0 / ds[0].0,
                ds[1].1,
                ds[0].1
            ),
            String::new(),
            None,
        ),
        (
            "DNS forwarded: via sidecar/direct answers/s".into(),
            format!(
                "{:.2}x (p99 {:.3} vs {:.3} ms)",
                ds[2].0 / ds[0].0,
                ds[2].1,
                ds[0].1
            ),
            String::new(),
            None,
        ),
    ];
    println!();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wv = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let wg = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(4);
    let line = |f: &str, v: &str, g: &str, met: &str| {
        println!(
            "{}",
            format!("{f:<w$}  {v:<wv$}  {g:<wg$}  {met}").trim_end()
        );
    };
    line("figure", "value", "goal", "");
    for (f, v, g, met) in &rows {
        let met = match met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "",
        };
        line(f, v, g, met);
    }
    let met = http_ratio >= GOAL_RATIO && tcp_ratio >= GOAL_RATIO;
    println!();
    println!(
        "goal: transparent within 5% of explicit throughput: {} (HTTP {http_ratio:.3}x, TCP connections {tcp_ratio:.3}x)",
        if met { "met" } else { "NOT MET" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_p50_is_read_in_milliseconds_whatever_the_unit() {
        let out = "  Latency Distribution\n     50%  312.00us\n     75%    1.20ms\n";
        assert_eq!(super::parse_wrk_p50(out), Some(0.312));
        assert_eq!(super::parse_wrk_p50("     50%    1.50ms\n"), Some(1.5));
        assert_eq!(super::parse_wrk_p50("     50%    2.00s\n"), Some(2000.0));
        assert_eq!(super::parse_wrk_p50("no latency here\n"), None);
    }

    #[test]
    fn an_answer_counts_only_for_its_own_id_with_a_record() {
        let q = super::query_bytes(super::OUTSIDE_NAME).expect("a query");
        let a = super::upstream_answer(&q).expect("an answer");
        assert!(super::answered(&a, [0, 0]));
        assert!(!super::answered(&a, [0, 1]), "another id");
        assert!(!super::answered(&q, [0, 0]), "a query is no answer");
        let other = super::query_bytes("elsewhere.example.").expect("a query");
        let nx = super::upstream_answer(&other).expect("an answer");
        assert!(!super::answered(&nx, [0, 0]), "NXDOMAIN");
    }
}
