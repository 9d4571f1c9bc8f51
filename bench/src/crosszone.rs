//! `causeway-bench crosszone`: new connections from zone-a to a TCP echo service in
//! zone-b, through zone-a's sidecar and zone-b's ingress and sidecar (mTLS end to end),
//! with the ingress on plain TCP and then on QUIC, against connecting to the echo
//! directly. Each connection: connect, send 64 bytes, read them back, close. Reports
//! connections per second with N concurrent clients and the setup latency (connect to
//! echo) with one client, as medians of the runs.
//!
//! Between the zones runs a user-space link adding `--rtt-ms` to every round trip (TCP
//! and UDP alike), as between regions: a new connection over TCP pays a TCP handshake to
//! the ingress, then the inner TLS and the echo; over QUIC the stream opens on the shared
//! connection without a round trip. With `--rtt-ms 0` everything is plain loopback.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::control::{Global, Zone};
use crate::sidecar::{READY, Svc};
use crate::{bin, free_port, median};

/// One connection's work: connect, echo 64 bytes, close.
async fn one(port: u16) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let msg = [7u8; 64];
    s.write_all(&msg).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    anyhow::ensure!(back == msg, "the echo differs");
    Ok(t0.elapsed())
}

struct Result {
    conns_per_sec: f64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` loops of new connections for `seconds`; latency from a separate 1-client run.
async fn measure(port: u16, clients: usize, seconds: u64) -> anyhow::Result<Result> {
    // Throughput.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(5), one(port)).await {
                    Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let conns_per_sec = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    // Latency, one at a time.
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds.div_ceil(2)) {
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(5), one(port)).await {
            lat.push(d);
        }
    }
    lat.sort();
    Ok(Result {
        conns_per_sec,
        failed: failed.load(Ordering::Relaxed),
        p50_ms: crate::percentile(&lat, 0.5),
        p99_ms: crate::percentile(&lat, 0.99),
    })
}

/// The mesh: global, zones a and b, echo in zone-b, a caller sidecar in zone-a.
struct Mesh {
    // Drop order: sidecars, ingress, zones, global.
    web: Svc,
    _echo_sidecar: Svc,
    ingress: Option<Svc>,
    _echo: Svc,
    _zones: Vec<Zone>,
    _global: Global,
    outbound: u16,
    echo_port: u16,
    web_admin: u16,
    ingress_args: Vec<String>,
    _link: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(dir: &Path, rtt: Duration) -> anyhow::Result<Mesh> {
    let causeway = bin("causeway")?;
    let deadline = Instant::now() + READY;
    let global = Global::start(dir, deadline).await?;
    global.allow("web", "echo").await?;
    let mut zones = Vec::new();
    for zone in ["zone-a", "zone-b"] {
        zones.push(global.zone(dir, zone).await?);
    }

    // zone-b: the echo app, its sidecar, the ingress.
    let echo_port = free_port();
    let echo = crate::sidecar::tcp_echo(dir, &causeway, echo_port)?;
    let sidecar = |name: &'static str, zone: usize, service: &'static str, spec: Value| {
        let (global, zones, causeway) = (&global, &zones, &causeway);
        async move {
            let mut command = Command::new(causeway);
            command.arg("dataplane");
            zones[zone]
                .sidecar(global, dir, command, name, service, spec)
                .await
        }
    };
    let (echo_sidecar, _) = sidecar(
        "echo-1",
        1,
        "echo",
        json!({"address": "127.0.0.1",
               "inbound": [{"port": free_port(), "servicePort": echo_port, "service": "echo", "protocol": "tcp"}]}),
    )
    .await?;
    let v = global
        .call(
            Method::POST,
            "/zones/zone-b/ingress-token",
            Some(&json!({})),
            deadline,
        )
        .await?;
    let ingress_token = dir.join("ingress.token");
    std::fs::write(&ingress_token, v["token"].as_str().context("no token")?)?;
    let mut ingress_args = vec!["ingress".to_string()];
    ingress_args.extend(zones[1].cp_args(&ingress_token));
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    ingress_args.extend([
        "--name".into(),
        "zone-b-ingress".into(),
        "--listen".into(),
        listen.to_string(),
        "--admin-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ]);
    let mut link = Vec::new();
    if !rtt.is_zero() {
        // Other zones reach the ingress through the delayed link.
        let front = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        link = crate::delay::spawn(front, listen, rtt).await?;
        ingress_args.extend(["--advertise".into(), front.to_string()]);
    }
    let ingress = Svc::spawn(
        dir,
        "ingress-tcp",
        Command::new(&causeway)
            .args(&ingress_args)
            .env("RUST_LOG", "warn"),
        false,
    )?;
    // zone-a: the caller.
    let outbound = free_port();
    let (web, web_admin) = sidecar(
        "web-1",
        0,
        "web",
        json!({"address": "127.0.0.1",
               "inbound": [{"port": free_port(), "service": "web", "protocol": "tcp"}],
               "outbound": [{"port": outbound, "service": "echo"}]}),
    )
    .await?;
    let mut mesh = Mesh {
        web,
        _echo_sidecar: echo_sidecar,
        ingress: Some(ingress),
        _echo: echo,
        _zones: zones,
        _global: global,
        outbound,
        echo_port,
        web_admin,
        ingress_args,
        _link: link,
    };
    mesh.wait_path(false).await?;
    Ok(mesh)
}

impl Mesh {
    /// Waits until zone-a's sidecar reaches echo through the ingress (over QUIC or not).
    async fn wait_path(&mut self, quic: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        let plain = reqwest::Client::new();
        loop {
            let cfg: Value = match plain
                .get(format!("http://127.0.0.1:{}/config", self.web_admin))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let eps = &cfg["config"]["outbounds"][0]["groups"][0]["endpoints"];
            let ready = eps
                .as_array()
                .is_some_and(|e| !e.is_empty() && e.iter().all(|e| (e["quic"] == true) == quic));
            if ready && one(self.outbound).await.is_ok() {
                return Ok(());
            }
            self.web.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "zone-a never reached echo in zone-b (quic: {quic}): {cfg}{}",
                    self.web.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts zone-b's ingress with QUIC on.
    async fn switch_to_quic(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.ingress = None;
        let mut args = self.ingress_args.clone();
        args.push("--quic".into());
        self.ingress = Some(Svc::spawn(
            dir,
            "ingress-quic",
            Command::new(bin("causeway")?)
                .args(&args)
                .env("RUST_LOG", "warn"),
            false,
        )?);
        self.wait_path(true).await
    }
}

pub(crate) async fn crosszone(
    seconds: u64,
    runs: usize,
    clients: usize,
    rtt_ms: u64,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    println!(
        "crosszone: new connections zone-a -> echo in zone-b (64-byte echo each), {rtt_ms} ms round trip between the zones, {clients} clients for throughput, 1 for latency, {seconds} s, {runs} runs, medians"
    );
    let mut mesh = start(dir, Duration::from_millis(rtt_ms)).await?;
    // Same process, alternating, so drift hits every path alike.
    let mut direct = Vec::new();
    let mut tcp = Vec::new();
    for _ in 0..runs {
        direct.push(measure(mesh.echo_port, clients, seconds).await?);
        tcp.push(measure(mesh.outbound, clients, seconds).await?);
    }
    mesh.switch_to_quic(dir).await?;
    let mut quic = Vec::new();
    for _ in 0..runs {
        quic.push(measure(mesh.outbound, clients, seconds).await?);
    }
    let row = |name: &str, r: &[Result]| {
        let cps = median(r.iter().map(|x| x.conns_per_sec).collect());
        let p50 = median(r.iter().map(|x| x.p50_ms).collect());
        let p99 = median(r.iter().map(|x| x.p99_ms).collect());
        let failed: u64 = r.iter().map(|x| x.failed).sum();
        println!(
            "  {name:<28} {cps:>9.0} conn/s   setup p50 {p50:>6.3} ms   p99 {p99:>6.3} ms   failed {failed}"
        );
        (cps, p50)
    };
    println!();
    let (d_cps, d_p50) = row("direct (no mesh)", &direct);
    let (t_cps, t_p50) = row("cross-zone, ingress TCP", &tcp);
    let (q_cps, q_p50) = row("cross-zone, ingress QUIC", &quic);
    println!();
    println!(
        "  QUIC vs TCP: {:.2}x connections/s, setup p50 {:.2}x; vs direct: TCP {:.2}x, QUIC {:.2}x conn/s (added p50 TCP +{:.3} ms, QUIC +{:.3} ms)",
        q_cps / t_cps,
        q_p50 / t_p50,
        t_cps / d_cps,
        q_cps / d_cps,
        t_p50 - d_p50,
        q_p50 - d_p50
    );
    Ok(())
}
