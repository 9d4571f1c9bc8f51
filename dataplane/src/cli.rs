//! Command-line arguments of the sidecar, shared by `causeway-dataplane` and
//! `causeway dataplane`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::{ControlPlane, DataplaneConfig};

/// The zone control plane as the `--cp`, `--cp-ca-file` and `--token-file` flags of a
/// sidecar or an ingress name it. (Flags, not a flattened struct: clap cannot tell
/// whether an `Option` of nested flattened arguments is present.)
pub fn control_plane(
    cp: &str,
    cp_ca_file: &PathBuf,
    token_file: &PathBuf,
) -> anyhow::Result<ControlPlane> {
    Ok(ControlPlane {
        addr: if cp.contains("://") {
            cp.to_string()
        } else {
            format!("https://{cp}")
        },
        ca: crate::cp::Followed::new(
            read(cp_ca_file, "--cp-ca-file")?,
            Some(cp_ca_file.clone()),
            "zone API CAs",
        ),
        token: crate::cp::Followed::new(
            read(token_file, "--token-file")?.trim().to_string(),
            Some(token_file.clone()),
            "token",
        ),
    })
}

/// Run a sidecar: gets its certificate and config from the zone control plane and
/// proxies the workload's traffic.
///
/// causeway dataplane --cp https://127.0.0.1:7711 --cp-ca-file zone/api-ca.pem
///   --token-file web.token --dataplane-file web.yaml
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The zone control plane's DDS address, `https://HOST:PORT`.
    #[arg(long)]
    pub cp: String,
    /// The CA of the zone control plane's certificate (`<zone data dir>/api-ca.pem`).
    #[arg(long)]
    pub cp_ca_file: PathBuf,
    /// The dataplane token (`causeway dataplane token create --mesh M --service S`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The Dataplane resource (YAML or JSON) this sidecar registers.
    #[arg(long)]
    pub dataplane_file: PathBuf,
    /// Admin listener (`/ready`, `/config`, `/metrics`); default 127.0.0.1:<spec.adminPort>.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// How long SIGTERM waits for open connections.
    #[arg(long, default_value = "10")]
    pub drain_seconds: u64,
    /// Worker threads. 1 (the default) runs the proxy on a single thread, like a
    /// sidecar should: no cross-thread wake-ups, and the least memory.
    #[arg(long, default_value = "1")]
    pub concurrency: usize,
    /// Connections the inbound listeners hold at once (all inbound ports together), and
    /// as many for the outbound ones: past it a new connection is closed unserved and
    /// counted (`causeway_connections_refused_total`). No cap per caller address: the
    /// callers of another zone all come from its ingress. The sidecar raises its
    /// open-file limit to the hard limit at start, and keeps this under half of it.
    #[arg(long, default_value_t = crate::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Transparent proxying: the resolvers the sidecar's DNS server (the Dataplane's
    /// `transparentProxying.dnsPort`) sends names outside the mesh to, `IP:PORT`,
    /// comma-separated, tried in order. Default: the nameservers of /etc/resolv.conf.
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
}

/// The runtime a sidecar with these arguments runs on.
pub fn runtime(a: &Args) -> std::io::Result<tokio::runtime::Runtime> {
    if a.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.concurrency)
            .enable_all()
            .build()
    }
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// `causeway dataplane install-redirect`: sends a workload's traffic through its sidecar
/// (see [`crate::redirect`]). Needs CAP_NET_ADMIN; run it once per workload (a VM, or a
/// pod's init container), before the application starts.
#[derive(clap::Args, Debug)]
pub struct InstallRedirectArgs {
    /// The workload's Dataplane (YAML or JSON): each inbound's application port
    /// (`servicePort`) is redirected to its sidecar listener (`port`).
    #[arg(long)]
    pub dataplane_file: Option<PathBuf>,
    /// More inbound redirections, `APP_PORT:LISTENER_PORT`.
    #[arg(long = "inbound", value_name = "APP_PORT:LISTENER_PORT")]
    pub inbound: Vec<String>,
    /// The sidecar's outbound listener, where every outbound TCP connection goes.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The user the sidecar runs as: its own connections are left alone (this or --gid
    /// is required, or the sidecar's connections would loop back to it).
    #[arg(long)]
    pub uid: Option<u32>,
    /// The group the sidecar runs as, instead of (or besides) --uid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// Outbound ports left alone, comma-separated (for example 22).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Networks left alone, comma-separated (for example 169.254.169.254/32).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<crate::redirect::Cidr>,
    /// Redirect outbound connections to loopback addresses too.
    #[arg(long)]
    pub redirect_loopback: bool,
    /// The sidecar's DNS port: the workload's DNS queries (port 53) go there.
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// IPv4 only.
    #[arg(long)]
    pub no_ipv6: bool,
    /// nftables or iptables-legacy; default nftables when `nft` works here.
    #[arg(long, value_enum)]
    pub backend: Option<crate::redirect::Backend>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
}

/// `causeway dataplane uninstall-redirect`: removes exactly what install-redirect put in.
#[derive(clap::Args, Debug)]
pub struct UninstallRedirectArgs {
    /// nftables or iptables-legacy; default nftables when `nft` works here.
    #[arg(long, value_enum)]
    pub backend: Option<crate::redirect::Backend>,
    /// Print what would be removed instead of removing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Installs the redirection `a` asks for; what was (or, dry, would be) installed.
pub fn install_redirect(a: InstallRedirectArgs) -> anyhow::Result<String> {
    let mut inbound = Vec::new();
    if let Some(path) = &a.dataplane_file {
        let text = read(path, "--dataplane-file")?;
        let r = if text.trim_start().starts_with('{') {
            causeway_api::Resource::from_json(text.as_bytes())
        } else {
            causeway_api::Resource::from_yaml(&text)
        }
        .with_context(|| format!("parsing {}", path.display()))?;
        let spec: causeway_api::DataplaneSpec = serde_json::from_value(r.spec)
            .with_context(|| format!("{}: not a Dataplane", path.display()))?;
        for ib in spec.inbound {
            if let Some(app) = ib.service_port.filter(|p| *p != ib.port) {
                inbound.push((app, ib.port));
            }
        }
    }
    for pair in &a.inbound {
        let parsed = pair
            .split_once(':')
            .and_then(|(app, l)| Some((app.parse().ok()?, l.parse().ok()?)));
        inbound.push(parsed.with_context(|| {
            format!("--inbound {pair:?}: give APP_PORT:LISTENER_PORT, like 8080:20001")
        })?);
    }
    let plan = crate::redirect::Plan {
        outbound_port: a.outbound_port,
        inbound,
        uid: a.uid,
        gid: a.gid,
        exclude_outbound_ports: a.exclude_outbound_ports,
        exclude_outbound_cidrs: a.exclude_outbound_cidrs,
        redirect_loopback: a.redirect_loopback,
        dns_port: a.dns_port,
        ipv6: !a.no_ipv6,
    };
    let backend = a.backend.unwrap_or_else(crate::redirect::detect);
    crate::redirect::install(&plan, backend, a.dry_run)
}

/// Removes the redirection; what was (or, dry, would be) removed.
pub fn uninstall_redirect(a: UninstallRedirectArgs) -> anyhow::Result<String> {
    let backend = a.backend.unwrap_or_else(crate::redirect::detect);
    crate::redirect::uninstall(backend, true, a.dry_run)
}

/// Parses the files and runs until SIGTERM or Ctrl-C.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let text = read(&a.dataplane_file, "--dataplane-file")?;
    let dataplane = if text.trim_start().starts_with('{') {
        causeway_api::Resource::from_json(text.as_bytes())
    } else {
        causeway_api::Resource::from_yaml(&text)
    }
    .with_context(|| format!("parsing {}", a.dataplane_file.display()))?;
    let cp = control_plane(&a.cp, &a.cp_ca_file, &a.token_file)?;
    let cfg = DataplaneConfig {
        cp,
        dataplane,
        admin_addr: a.admin_addr,
        drain: Duration::from_secs(a.drain_seconds),
        max_connections: causeway_listen::connection_cap(a.max_connections, 4)
            .map_err(anyhow::Error::msg)?,
        dns_upstreams: a.dns_upstream,
    };
    crate::run(cfg, stop_on_signal()).await
}

/// Turns true on SIGTERM or Ctrl-C: the start of a graceful drain.
pub fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    stop
}

#[derive(clap::Parser)]
#[command(name = "causeway-dataplane", version)]
struct Standalone {
    #[command(flatten)]
    args: Args,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
    /// text, or json (one object per line).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

/// Entry point of the standalone binary.
pub fn main() {
    use clap::Parser as _;
    let cli = Standalone::parse();
    init_standalone(cli.log, cli.log_format);
    let rt = runtime(&cli.args).expect("starting the tokio runtime");
    exit_on_error(rt.block_on(run(cli.args)));
}

/// What a lean binary sets up before its runtime: the TLS provider and logging to stderr.
pub fn init_standalone(log: String, format: LogFormat) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&log, format);
}

/// How logs are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log
    /// pipelines.
    Json,
}

/// Logs events that pass `filter` (or `RUST_LOG`, which wins) to standard error in
/// `format`. The first call wins; later ones change nothing.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Prints an error's chain of causes on one line and exits 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
