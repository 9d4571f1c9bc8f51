//! `causeway zone-cp`: runs a zone control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use causeway_zone_cp::{Zone, ZoneConfig};

/// Run a zone control plane: syncs policy from the global control plane over KDS,
/// keeps it in a local store (served through restarts even without global) and
/// serves the zone's API.
///
/// First start: `causeway zone-cp --zone zone-a --global https://127.0.0.1:7701
///   --token-file zone-a.token --data-dir /var/lib/causeway/zone-a --seal-key-file /etc/causeway/zone-a.seal.key
///   --token-out-dir /root/zone-a-credentials --api-addr 127.0.0.1:7710`
/// The zone's admin and read-only API tokens and its API CA are then in --token-out-dir
/// (or the tokens were printed once); the data dir keeps only their hashes.
#[derive(Debug, clap::Args)]
pub(crate) struct ZoneCpArgs {
    /// The zone's name (a DNS label); must match the token's.
    #[arg(long)]
    zone: String,
    /// KDS address of a global node, `https://HOST:PORT`. Repeat, or separate with
    /// commas, to list several; the zone fails over between them.
    #[arg(long = "global", value_delimiter = ',', required = true)]
    global: Vec<String>,
    /// File with the zone token from `causeway zone token create` (needed until the
    /// zone has enrolled; its certificate is used afterwards). A token other than the
    /// one it enrolled with enrols the zone again, keeping its store: for a zone cut
    /// off by a forced CA rotation, or whose certificate was lost.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Directory for the store (made 0700): the zone certificate and CA keys, sealed,
    /// and the API tokens' hashes.
    #[arg(long)]
    data_dir: PathBuf,
    /// Seal key file, outside --data-dir: the zone's private keys are sealed
    /// (AES-256-GCM) under it. Created (0600) on the first start when missing. Back it
    /// up: losing it loses the zone's keys (the zone must then be enrolled anew).
    #[arg(long)]
    seal_key_file: PathBuf,
    /// During a seal key rotation: the seal key being replaced (with the new one, from
    /// `causeway seal generate-key`, as --seal-key-file). The zone seals every key it
    /// holds again under the new one at start; afterwards it needs the old key no more,
    /// so leave this out from the next start and destroy the old key.
    #[arg(long)]
    previous_seal_key_file: Option<PathBuf>,
    /// Directory, outside --data-dir, where the first start writes the zone API's admin
    /// and read-only tokens and api-ca.pem (the zone keeps only the tokens' hashes).
    /// Without it, the tokens are printed once on standard output.
    #[arg(long)]
    token_out_dir: Option<PathBuf>,
    /// Zone API address (HTTPS).
    #[arg(long, default_value = "127.0.0.1:7710")]
    api_addr: SocketAddr,
    /// DDS address (gRPC over TLS, the zone API's CA) where sidecars get their
    /// certificate and config; without it the zone serves no sidecars.
    #[arg(long)]
    dds_addr: Option<SocketAddr>,
    /// KDS heartbeat interval (default 5s); a silent stream is re-opened after three.
    #[arg(long, default_value = "5s")]
    kds_heartbeat: String,
    /// After a restart, how long sidecars have to reconnect before the Dataplanes they
    /// had registered are removed.
    #[arg(long, default_value = "30s")]
    dataplane_grace: String,
    /// Longest wait between reconnect attempts (default 10s; jittered).
    #[arg(long, default_value = "10s")]
    reconnect_max: String,
    /// Free space to keep on the data dir's disk, in MiB: under it the zone refuses
    /// local writes (zone policies, proxy registrations: HTTP 507 or RESOURCE_EXHAUSTED,
    /// saying so) instead of failing in the middle of one, and takes them again as soon
    /// as space is freed. Policy from global, traffic and proxies already registered go on.
    #[arg(long, default_value_t = 256)]
    disk_reserve_mib: u64,
}

pub(crate) async fn run(a: ZoneCpArgs) -> anyhow::Result<()> {
    let token = match &a.token_file {
        Some(p) => Some(
            crate::config::read_trimmed(p)
                .with_context(|| format!("reading --token-file {}", p.display()))?,
        ),
        None => None,
    };
    let heartbeat = crate::global_cp::parse_duration("--kds-heartbeat", &a.kds_heartbeat)?;
    anyhow::ensure!(
        heartbeat >= Duration::from_millis(100),
        "--kds-heartbeat must be at least 100ms"
    );
    let backoff_max = crate::global_cp::parse_duration("--reconnect-max", &a.reconnect_max)?;
    let mut globals = Vec::new();
    for g in a.global.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
        let g = if g.contains("://") {
            g.to_string()
        } else {
            format!("https://{g}")
        };
        anyhow::ensure!(
            g.starts_with("https://"),
            "--global {g:?}: KDS runs over TLS; use https://HOST:PORT"
        );
        globals.push(g);
    }
    let cfg = ZoneConfig {
        zone: a.zone,
        globals,
        token,
        data_dir: a.data_dir,
        seal_key_file: a.seal_key_file,
        previous_seal_key_file: a.previous_seal_key_file,
        token_out_dir: a.token_out_dir,
        api_addr: a.api_addr,
        dds_addr: a.dds_addr,
        heartbeat,
        backoff_max: backoff_max.max(Duration::from_millis(200)),
        version: env!("CARGO_PKG_VERSION").to_string(),
        dataplane_grace: crate::global_cp::parse_duration("--dataplane-grace", &a.dataplane_grace)?,
        disk_reserve_bytes: a.disk_reserve_mib.saturating_mul(1024 * 1024),
    };
    tracing::info!(zone = %cfg.zone, globals = ?cfg.globals, api = %cfg.api_addr, data_dir = %cfg.data_dir.display(), "starting zone control plane");
    let zone = Zone::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    zone.shutdown().await;
    Ok(())
}
