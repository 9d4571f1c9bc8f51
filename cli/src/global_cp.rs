//! `causeway global-cp`: flags (or a YAML file with the same settings) to a `NodeConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use causeway_global_cp::kds::KdsSettings;
use causeway_global_cp::raft_node::RaftSettings;
use causeway_global_cp::tls::{CertKey, RaftTls};
use causeway_global_cp::{Node, NodeConfig, RaftSecurity};
use serde::Deserialize;

/// Run one node of the global control plane.
///
/// A new cluster starts with one node, which generates the cluster's CAs (Raft between
/// nodes is mutual TLS):
///   causeway global-cp --node-id 1 --data-dir /tmp/cw1 --seal-key-file /tmp/cw-seal.key \
///       --token-out-dir /tmp/cw-tokens --api-addr 127.0.0.1:7700 --raft-addr 127.0.0.1:7702
/// It writes admin-token, readonly-token and api-ca.pem into --token-out-dir (or prints
/// the tokens once). Add each further node with `causeway cluster add-node`, which prints
/// a single-use join token, and start it with that token:
///   causeway global-cp --node-id 2 --data-dir /tmp/cw2 --seal-key-file /tmp/cw2-seal.key \
///       --api-addr 127.0.0.1:7710 --raft-addr 127.0.0.1:7712 --join-token-file /tmp/join-2
/// It gets its Raft certificate, the members and the seal key from the cluster.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct GlobalCpArgs {
    /// YAML file with these settings (keys as the flag names: node-id, data-dir, peer: [..]).
    /// Flags given on the command line win.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This node's id: a positive integer, unique in the cluster.
    #[arg(long)]
    node_id: Option<u64>,
    /// Directory for the store (made 0700). It holds no token and no unsealed key.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Policy API address (HTTPS).
    #[arg(long)]
    api_addr: Option<SocketAddr>,
    /// KDS address (gRPC over TLS) where zone control planes connect.
    #[arg(long)]
    kds_addr: Option<SocketAddr>,
    /// KDS heartbeat interval; a zone stream silent for three intervals is closed
    /// (default 5s).
    #[arg(long)]
    kds_heartbeat: Option<String>,
    /// Lifetime of zone certificates, renewed by zones at 70% (default 720h).
    #[arg(long)]
    zone_cert_ttl: Option<String>,
    /// Seal key file, outside --data-dir (required): every private key in the store is
    /// sealed (AES-256-GCM) under it. Created (0600) on a first start when missing; every
    /// node of a cluster needs the same file (`causeway cluster gen-certs` writes one,
    /// secrets.key). Back it up: losing it loses the keys.
    #[arg(long, alias = "secrets-key-file")]
    #[serde(alias = "secrets-key-file")]
    seal_key_file: Option<PathBuf>,
    /// During a seal key rotation: the seal key being replaced (with the new one, from
    /// `causeway seal generate-key`, as --seal-key-file). The node opens keys sealed
    /// under either and seals everything it holds again under the new one at start.
    /// Leave it out once `causeway seal status` shows the rotation done, then destroy the
    /// old key.
    #[arg(long)]
    previous_seal_key_file: Option<PathBuf>,
    /// Directory, outside --data-dir, where the node that forms the cluster writes the
    /// admin and read-only API tokens and api-ca.pem (once; nodes keep only the tokens'
    /// hashes). Without it, the tokens are printed once on standard output.
    #[arg(long)]
    token_out_dir: Option<PathBuf>,
    /// Raft transport address.
    #[arg(long)]
    raft_addr: Option<SocketAddr>,
    /// Another member of the initial cluster, as ID=HOST:PORT (its Raft address). Repeat.
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peer: Vec<String>,
    /// Join an existing cluster instead of forming one. Implied by --join-token; on its
    /// own (with --raft-tls-* certificates of your own) --peer lists the current members.
    #[arg(long)]
    join: bool,
    /// The join token `causeway cluster add-node` printed (single use, short-lived): the
    /// node gets its Raft certificate, the members and the seal key with it. Prefer
    /// --join-token-file: a command line is visible to other users of the machine.
    #[arg(long, conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Your own Raft certificates instead of the cluster's: the CA (PEM), with
    /// --raft-tls-cert and --raft-tls-key. Node certificates must name
    /// node-<id>.causeway-raft (`causeway cluster gen-certs` makes such a set).
    #[arg(long)]
    raft_tls_ca: Option<PathBuf>,
    #[arg(long)]
    raft_tls_cert: Option<PathBuf>,
    #[arg(long)]
    raft_tls_key: Option<PathBuf>,
    /// INSECURE: run Raft between nodes in plain TCP, unauthenticated. Anyone who reaches
    /// a Raft port can then forge messages and read the cluster's state. Logged at every
    /// start. Every node of the cluster needs it.
    #[arg(long)]
    insecure_raft_plaintext: bool,
    /// API certificate and key (PEM); by default one is issued from the cluster's API CA.
    #[arg(long)]
    api_cert: Option<PathBuf>,
    #[arg(long)]
    api_key: Option<PathBuf>,
    /// Compact the Raft log past this many entries (default 10000).
    #[arg(long)]
    snapshot_threshold: Option<u64>,
    /// Raft tick in milliseconds (default 50; elections start after 8-16 ticks of silence).
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Free space to keep on the data dir's disk, in MiB (default 256): under it the
    /// node refuses writes (HTTP 507, saying so) instead of failing in the middle of
    /// one, and takes them again as soon as space is freed. Reads and traffic go on.
    #[arg(long)]
    disk_reserve_mib: Option<u64>,
}

pub(crate) fn parse_duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    s.parse::<causeway_api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e} (for example 5s, 500ms, 720h)"))
}

fn parse_peer(s: &str) -> anyhow::Result<(u64, String)> {
    let (id, addr) = s
        .split_once('=')
        .with_context(|| format!("--peer {s:?}: expected ID=HOST:PORT, like 2=127.0.0.1:7712"))?;
    let id: u64 = id
        .trim()
        .parse()
        .with_context(|| format!("--peer {s:?}: the id must be a positive integer"))?;
    addr.trim()
        .parse::<SocketAddr>()
        .with_context(|| format!("--peer {s:?}: {addr:?} is not HOST:PORT"))?;
    Ok((id, addr.trim().to_string()))
}

impl GlobalCpArgs {
    /// Fills unset flags from the `--config` file.
    fn merged(self) -> anyhow::Result<GlobalCpArgs> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: GlobalCpArgs =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(GlobalCpArgs {
            config: None,
            node_id: self.node_id.or(file.node_id),
            data_dir: self.data_dir.or(file.data_dir),
            api_addr: self.api_addr.or(file.api_addr),
            kds_addr: self.kds_addr.or(file.kds_addr),
            kds_heartbeat: self.kds_heartbeat.or(file.kds_heartbeat),
            zone_cert_ttl: self.zone_cert_ttl.or(file.zone_cert_ttl),
            seal_key_file: self.seal_key_file.or(file.seal_key_file),
            previous_seal_key_file: self.previous_seal_key_file.or(file.previous_seal_key_file),
            token_out_dir: self.token_out_dir.or(file.token_out_dir),
            raft_addr: self.raft_addr.or(file.raft_addr),
            peer: if self.peer.is_empty() {
                file.peer
            } else {
                self.peer
            },
            join: self.join || file.join,
            join_token: self.join_token.or(file.join_token),
            join_token_file: self.join_token_file.or(file.join_token_file),
            insecure_raft_plaintext: self.insecure_raft_plaintext || file.insecure_raft_plaintext,
            raft_tls_ca: self.raft_tls_ca.or(file.raft_tls_ca),
            raft_tls_cert: self.raft_tls_cert.or(file.raft_tls_cert),
            raft_tls_key: self.raft_tls_key.or(file.raft_tls_key),
            api_cert: self.api_cert.or(file.api_cert),
            api_key: self.api_key.or(file.api_key),
            snapshot_threshold: self.snapshot_threshold.or(file.snapshot_threshold),
            tick_ms: self.tick_ms.or(file.tick_ms),
            disk_reserve_mib: self.disk_reserve_mib.or(file.disk_reserve_mib),
        })
    }

    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let a = self.merged()?;
        let node_id = a.node_id.context("--node-id is required")?;
        let data_dir = a.data_dir.context("--data-dir is required")?;
        let api_addr = a.api_addr.context("--api-addr is required")?;
        let raft_addr = a.raft_addr.context("--raft-addr is required")?;
        let mut peers = BTreeMap::new();
        for p in &a.peer {
            let (id, addr) = parse_peer(p)?;
            if peers.insert(id, addr).is_some() {
                bail!("--peer: id {id} is given twice");
            }
        }
        if a.insecure_raft_plaintext && a.raft_tls_ca.is_some() {
            bail!("--insecure-raft-plaintext and --raft-tls-* contradict each other");
        }
        let raft_security = match (a.raft_tls_ca, a.raft_tls_cert, a.raft_tls_key) {
            (None, None, None) if a.insecure_raft_plaintext => RaftSecurity::InsecurePlaintext,
            (None, None, None) => RaftSecurity::Managed,
            (Some(ca), Some(cert), Some(key)) => {
                RaftSecurity::Files(RaftTls::load(&ca, &cert, &key)?)
            }
            _ => bail!("--raft-tls-ca, --raft-tls-cert and --raft-tls-key go together"),
        };
        let join_token = match (a.join_token, a.join_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading --join-token-file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let api_cert = match (a.api_cert, a.api_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(CertKey {
                cert_pem: std::fs::read_to_string(&c)
                    .with_context(|| format!("reading {}", c.display()))?,
                key_pem: std::fs::read_to_string(&k)
                    .with_context(|| format!("reading {}", k.display()))?,
            }),
            _ => bail!("--api-cert and --api-key go together"),
        };
        let mut raft = RaftSettings::default();
        if let Some(t) = a.snapshot_threshold {
            anyhow::ensure!(t >= 10, "--snapshot-threshold must be at least 10");
            raft.compact_threshold = t;
            raft.compact_keep = (t / 10).max(1);
        }
        if let Some(ms) = a.tick_ms {
            anyhow::ensure!(
                (10..=1000).contains(&ms),
                "--tick-ms must be between 10 and 1000"
            );
            raft.tick = Duration::from_millis(ms);
        }
        if let Some(mib) = a.disk_reserve_mib {
            raft.disk_reserve_bytes = mib.saturating_mul(1024 * 1024);
        }
        let mut kds = KdsSettings::default();
        if let Some(h) = &a.kds_heartbeat {
            let d = parse_duration("--kds-heartbeat", h)?;
            anyhow::ensure!(
                d >= Duration::from_millis(100),
                "--kds-heartbeat must be at least 100ms"
            );
            kds.heartbeat = d;
            kds.status_interval = d;
        }
        if let Some(t) = &a.zone_cert_ttl {
            let d = parse_duration("--zone-cert-ttl", t)?;
            anyhow::ensure!(
                d >= Duration::from_secs(5),
                "--zone-cert-ttl must be at least 5s"
            );
            kds.zone_cert_ttl = d;
        }
        Ok(NodeConfig {
            node_id,
            data_dir,
            api_addr,
            raft_addr,
            kds_addr: a.kds_addr,
            kds,
            seal_key_file: a.seal_key_file.context(
                "--seal-key-file is required: a file outside --data-dir for the key that seals the cluster's keys (created on a first start; give every node the same file and back it up)",
            )?,
            previous_seal_key_file: a.previous_seal_key_file,
            token_out_dir: a.token_out_dir,
            peers,
            join: a.join,
            raft_security,
            join_token,
            api_cert,
            api_insecure_http: false,
            raft,
        })
    }
}

pub(crate) async fn run(args: GlobalCpArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    tracing::info!(node = cfg.node_id, api = %cfg.api_addr, raft = %cfg.raft_addr, data_dir = %cfg.data_dir.display(), "starting global control plane node");
    let node = Node::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        reason = node.failed() => {
            node.shutdown().await;
            anyhow::bail!("{reason}");
        }
        () = node.raft_stopped() => {
            // Exit non-zero, so a supervisor restarts the node (and it starts clean, or
            // says at start what is wrong with its data).
            node.shutdown().await;
            anyhow::bail!("the Raft thread stopped (a storage failure; see the log above); this node cannot serve");
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
