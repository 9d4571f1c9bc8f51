//! The Causeway global control plane: a Raft-replicated policy store (tikv's `raft`
//! crate over RocksDB) and the global policy API.
//!
//! Layout follows raft-rs's split of algorithm and I/O: [`store`] is the durable state
//! (log, hard state, state machine), [`raft_node`] the Ready loop on its own thread,
//! `transport` the peer connections, `api` the REST surface. The crate must not hold
//! policy logic: what a resource means belongs to `causeway-api`.

pub mod access;
pub mod audit;
pub mod ca_rotation;
pub mod cluster_ca;
pub mod command;
pub mod join;
pub mod kds;
pub mod raft_node;
pub mod store;
pub mod token_keys;
/// Certificates and TLS configs (the shared `causeway-pki` crate).
pub use causeway_pki as tls;
/// Sealing of keys at rest (the shared `causeway-pki` module).
pub use causeway_pki::sealing;

mod api;
mod kds_tls;
mod metrics;
mod raft_identity;
mod transport;
pub mod zone_token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use causeway_listen::{Guarded, Limits};
use tokio::sync::watch;

use api::ApiState;
pub use api::openapi_document;
use causeway_pki::api_token::ApiTokens;
use command::{ClusterSecrets, Command, Member, SealedSecrets};
use raft_node::{RaftHandle, RaftSettings};
use store::Store;
use tls::{CertKey, RaftTls};

/// Common name of the CA that signs the API's generated certificates.
pub(crate) const API_CA_NAME: &str = "Causeway API CA";
/// Resource changes each node keeps for KDS deltas; a zone further behind gets a full
/// snapshot instead.
const CHANGELOG_RETENTION: u64 = 100_000;

/// Common name of the CA that signs zone certificates.
pub(crate) const ZONE_CA_NAME: &str = "Causeway Zone CA";

/// Settings of one global control plane node, parsed once at the binary's edge.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's Raft id (non-zero, unique in the cluster).
    pub node_id: u64,
    /// Where the RocksDB store and the API CA certificate are kept (0700). It holds no
    /// token in clear and no key unsealed.
    pub data_dir: PathBuf,
    /// Policy API listen address.
    pub api_addr: SocketAddr,
    /// Raft transport listen address.
    pub raft_addr: SocketAddr,
    /// KDS (zone sync, gRPC over TLS) listen address; `None` serves no zones.
    pub kds_addr: Option<SocketAddr>,
    pub kds: kds::KdsSettings,
    /// The seal key file (`--seal-key-file`, outside the data dir): every key in the
    /// store and the Raft log is sealed under it. Created on a first start when missing;
    /// every node of a cluster needs the same one.
    pub seal_key_file: PathBuf,
    /// The seal key being replaced (`--previous-seal-key-file`), during a seal key
    /// rotation: it opens what is sealed under it, and the node seals all of that again
    /// under `seal_key_file` at start.
    pub previous_seal_key_file: Option<PathBuf>,
    /// Where the node that forms the cluster writes the admin and read-only tokens (and
    /// the API CA certificate) once (`--token-out-dir`); `None` prints them once on
    /// standard output. Nodes keep only the tokens' hashes.
    pub token_out_dir: Option<PathBuf>,
    /// The initial cluster's other members: id -> Raft address.
    pub peers: BTreeMap<u64, String>,
    /// Join an existing cluster instead of forming one: start empty and wait for the
    /// leader (after `causeway cluster add-node`) to send a snapshot.
    pub join: bool,
    /// How Raft traffic between nodes is secured.
    pub raft_security: RaftSecurity,
    /// A join token from `causeway cluster add-node` (implies `join`): the node gets its
    /// Raft certificate, the members and the seal key from the cluster with it.
    pub join_token: Option<String>,
    /// The API's certificate; `None` issues one from the cluster's generated API CA.
    pub api_cert: Option<CertKey>,
    /// Serve the API over plain HTTP (never in production; tests of TLS itself use it).
    pub api_insecure_http: bool,
    pub raft: RaftSettings,
}

/// How Raft traffic between nodes is secured.
#[derive(Clone)]
pub enum RaftSecurity {
    /// Mutual TLS with certificates the cluster manages: generated when a node forms a
    /// cluster alone, issued with a join token to nodes that join (the default).
    Managed,
    /// Mutual TLS with the operator's certificates (`--raft-tls-*`), which must name
    /// `node-<id>.causeway-raft`.
    Files(RaftTls),
    /// Plain TCP (`--insecure-raft-plaintext`): anyone who reaches a Raft port can forge
    /// messages. Logged at every start.
    InsecurePlaintext,
}

/// Files the node that forms the cluster writes into `--token-out-dir`; every node also
/// writes the API CA certificate into its data dir.
pub use causeway_pki::api_token::{ADMIN_TOKEN_FILE, API_CA_FILE, READONLY_TOKEN_FILE};

/// The flags that name the seal key and the token output, for errors.
const SEAL_KEY_FLAG: &str = "--seal-key-file";
const PREVIOUS_SEAL_KEY_FLAG: &str = "--previous-seal-key-file";
const TOKEN_OUT_FLAG: &str = "--token-out-dir";

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    raft: RaftHandle,
    raft_thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api_handle: axum_server::Handle,
    /// Set when the node cannot go on (its seal key does not open the cluster's keys).
    fatal: watch::Receiver<Option<String>>,
}

impl Node {
    /// Opens the store, starts Raft, the transport and (once the cluster has formed) the API.
    pub async fn start(mut cfg: NodeConfig) -> anyhow::Result<Node> {
        anyhow::ensure!(cfg.node_id != 0, "--node-id must be a positive integer");
        anyhow::ensure!(
            !cfg.peers.contains_key(&cfg.node_id),
            "--peer lists this node's own id {}",
            cfg.node_id
        );
        causeway_pki::private_dir(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        if let Some(out) = &cfg.token_out_dir {
            causeway_pki::api_token::check_out_dir(TOKEN_OUT_FLAG, out, &cfg.data_dir)
                .map_err(anyhow::Error::msg)?;
        }
        let db_dir = cfg.data_dir.join("db");
        anyhow::ensure!(
            !db_dir.exists() || cfg.data_dir.join(sealing::SEAL_CHECK_FILE).exists(),
            "the data dir {} was written by an older version that kept tokens and keys in clear; migrating it is not supported: form a new cluster in a new --data-dir",
            cfg.data_dir.display()
        );
        // Bound before a join: once the join made this node a voter, the cluster needs it
        // to answer.
        let raft_listener = tokio::net::TcpListener::bind(cfg.raft_addr)
            .await
            .with_context(|| format!("binding the Raft address {}", cfg.raft_addr))?;
        // A node that joined once (its identity came from the cluster) never forms a
        // cluster of its own, even restarted without its token before its first snapshot.
        if matches!(cfg.raft_security, RaftSecurity::Managed)
            && raft_identity::joined(&cfg.data_dir)
        {
            cfg.join = true;
        }
        // A node joining with a token gets its certificate, the members and the seal key
        // from the cluster first.
        let joined = match (&cfg.join_token, &cfg.raft_security) {
            (Some(_), RaftSecurity::Files(_) | RaftSecurity::InsecurePlaintext) => anyhow::bail!(
                "--join-token gets this node a Raft certificate from the cluster; it does not go with --raft-tls-* or --insecure-raft-plaintext"
            ),
            (Some(token), RaftSecurity::Managed) if !raft_identity::exists(&cfg.data_dir) => {
                // What would fail after the join is checked before it.
                sealing::check_outside(SEAL_KEY_FLAG, &cfg.seal_key_file, &cfg.data_dir)?;
                let j = join::join(token, cfg.node_id)
                    .await
                    .context("joining the cluster with --join-token")?;
                sealing::Sealer::install_key_file(
                    SEAL_KEY_FLAG,
                    &cfg.seal_key_file,
                    &cfg.data_dir,
                    &j.response.seal_key,
                )?;
                tracing::info!(
                    node = cfg.node_id,
                    "joined with the join token: got this node's Raft certificate and the cluster's seal key"
                );
                Some(j)
            }
            _ => None,
        };
        if cfg.join_token.is_some() {
            cfg.join = true;
        }
        let (sealer, created) = sealing::Sealer::load(
            (SEAL_KEY_FLAG, &cfg.seal_key_file),
            cfg.previous_seal_key_file
                .as_deref()
                .map(|p| (PREVIOUS_SEAL_KEY_FLAG, p)),
            &cfg.data_dir,
        )?;
        if created {
            tracing::warn!(path = %cfg.seal_key_file.display(), "generated a new seal key: back it up now (losing it loses every key of the cluster) and give every node of the cluster a copy");
        }
        // The identity a join brought is kept at once: its token is spent.
        if let Some(j) = joined {
            raft_identity::save(
                &cfg.data_dir,
                &sealer,
                &j.response.raft_ca_pem,
                &CertKey {
                    cert_pem: j.response.cert_pem,
                    key_pem: j.key_pem,
                },
            )?;
            raft_identity::save_members(&cfg.data_dir, &j.response.members)?;
        }
        // The members a join named, until the store knows them (a restart before the
        // first snapshot).
        for m in raft_identity::members(&cfg.data_dir) {
            if m.id != cfg.node_id {
                cfg.peers.entry(m.id).or_insert(m.raft_addr);
            }
        }
        let sealer = Arc::new(sealer);
        // RocksDB would create it 0755 (and its files 0644; that cannot be changed).
        causeway_pki::private_dir(&db_dir)
            .with_context(|| format!("creating {}", db_dir.display()))?;
        let store = Store::open(&db_dir)?;
        match store.secrets() {
            Err(e) => anyhow::bail!(
                "the cluster secrets in {} do not decode ({e}): the data dir was probably written by an older version that kept tokens and keys in clear; migrating it is not supported: form a new cluster in a new --data-dir",
                db_dir.display()
            ),
            Ok(Some(s)) => {
                s.open(&sealer).map_err(|e| open_error(&cfg, &e))?;
            }
            Ok(None) => {}
        }
        if sealer.has_previous() {
            reseal_node(&cfg, &store, &sealer)?;
        }
        let forming = store.is_empty() && !cfg.join;
        let raft_tls = raft_tls(&cfg, &sealer, forming)?;
        if forming {
            let mut voters: Vec<u64> = cfg.peers.keys().copied().collect();
            voters.push(cfg.node_id);
            voters.sort();
            tracing::info!(?voters, "forming a new cluster");
            store.bootstrap(voters)?;
        }
        // The transport reads its TLS from here; housekeeping replaces it when the
        // cluster's Raft CA rotates.
        let raft_live = raft_tls
            .map(transport::LiveTls::new)
            .transpose()?
            .map(|live| watch::channel(live).0);
        let rt = tokio::runtime::Handle::current();
        let peers = cfg.peers.clone();
        let tls = raft_live.as_ref().map(watch::Sender::subscribe);
        let id = cfg.node_id;
        let (raft, thread) = raft_node::start_with(
            id,
            store.clone(),
            crate::raft_node::RaftSettings {
                disk_dir: Some(cfg.data_dir.clone()),
                ..cfg.raft.clone()
            },
            raft_node::raft_logger(),
            |tx| {
                let mut ob = transport::TcpOutbox::new(rt, id, tx, tls);
                for (pid, addr) in &peers {
                    raft_node::Outbox::set_address(&mut ob, *pid, addr);
                }
                Ok::<_, tls::TlsError>(ob)
            },
        )?;
        let mut tasks = Vec::new();
        let metrics = Arc::new(metrics::Metrics::new(raft.proposals()));
        // Leader changes, as this node sees them.
        let (mut seen, leader_changes) = (raft.view(), metrics.leader_changes.clone());
        tasks.push(tokio::spawn(async move {
            let mut leader = seen.borrow().leader_id;
            while seen.changed().await.is_ok() {
                let now = seen.borrow().leader_id;
                if now != leader && now != 0 {
                    leader_changes.inc();
                }
                leader = now;
            }
        }));
        let raft_tx = raft.sender();
        let tls = raft_live.as_ref().map(watch::Sender::subscribe);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = transport::serve(raft_listener, tls, raft_tx).await {
                tracing::error!(error = %e, "raft transport stopped");
            }
        }));

        let (fatal_tx, fatal) = watch::channel(None);
        let api_handle = axum_server::Handle::new();
        tasks.push(tokio::spawn(housekeeping(
            cfg.clone(),
            store.clone(),
            raft.clone(),
            sealer,
            fatal_tx,
            api_handle.clone(),
            metrics,
            raft_live,
        )));
        Ok(Node {
            raft,
            raft_thread: Some(thread),
            tasks,
            api_handle,
            fatal,
        })
    }

    /// Resolves with the reason when the node cannot go on (the cluster's keys arrived
    /// sealed under another seal key than this node's); pending forever otherwise.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        loop {
            if let Some(reason) = fatal.borrow_and_update().clone() {
                return reason;
            }
            if fatal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Resolves when the Raft thread has stopped on its own (a storage failure: a full
    /// disk, a corrupt entry): the node cannot serve any more, and must not look as if
    /// it could. Pending forever while it runs.
    pub async fn raft_stopped(&self) {
        let mut view = self.raft.view();
        // The thread holds the view's sender: the channel closes when it ends.
        while view.changed().await.is_ok() {}
    }

    /// Stops the API, the transport and the Raft thread.
    pub async fn shutdown(mut self) {
        self.api_handle
            .graceful_shutdown(Some(Duration::from_secs(2)));
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.raft.stop();
        if let Some(t) = self.raft_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// This node's Raft TLS identity (`None`: plaintext), from the operator's files, the data
/// dir (kept there by a join, or at bootstrap), or generated when the node forms a
/// cluster alone.
fn raft_tls(
    cfg: &NodeConfig,
    sealer: &sealing::Sealer,
    forming: bool,
) -> anyhow::Result<Option<RaftTls>> {
    let kept = match &cfg.raft_security {
        RaftSecurity::Files(t) => return Ok(Some(t.clone())),
        RaftSecurity::InsecurePlaintext => {
            tracing::warn!(
                "--insecure-raft-plaintext: Raft traffic between nodes is NOT encrypted or authenticated; anyone who reaches {} can forge Raft messages and read the cluster's state",
                cfg.raft_addr
            );
            return Ok(None);
        }
        RaftSecurity::Managed => raft_identity::load(&cfg.data_dir, sealer)?,
    };
    Ok(Some(match kept {
        Some(t) => t,
        None if forming && cfg.peers.is_empty() => {
            tracing::info!(
                "generated the cluster's Raft CA and this node's certificate (mutual TLS between nodes)"
            );
            raft_identity::bootstrap(&cfg.data_dir, sealer, cfg.node_id)?
        }
        None if forming => anyhow::bail!(
            "forming a cluster of several nodes at once (--peer) needs their Raft certificates (--raft-tls-ca/-cert/-key, from `causeway cluster gen-certs`); \
             or form it with one node and add the others with `causeway cluster add-node`, which prints each one's join token"
        ),
        None if cfg.join => anyhow::bail!(
            "--join needs --join-token (printed by `causeway cluster add-node`), or this node's Raft certificate (--raft-tls-ca/-cert/-key)"
        ),
        None => anyhow::bail!(
            "the data dir {} has no Raft certificate: it was written by a node that ran Raft in plaintext; start it with --insecure-raft-plaintext as before, or form a new cluster",
            cfg.data_dir.display()
        ),
    }))
}

/// A seal key rotation on this node, before its Raft loop starts: every key of the state
/// and of the node's Raft identity sealed under the previous key is sealed again under
/// the new one; the log up to the applied index and RocksDB's history are purged (so the
/// data dir holds nothing the previous key opens); then the data dir's check value
/// moves to the new key, so a start with the previous key alone is refused from now on.
fn reseal_node(cfg: &NodeConfig, store: &Store, sealer: &sealing::Sealer) -> anyhow::Result<()> {
    let in_state = store.map_sealed(|what, sealed| {
        sealer.reseal(sealed).with_context(|| {
            format!("{what} is sealed under neither {SEAL_KEY_FLAG} nor {PREVIOUS_SEAL_KEY_FLAG}")
        })
    })?;
    let own = raft_identity::reseal(&cfg.data_dir, sealer)?;
    store.purge_history()?;
    sealer.record_check(&cfg.data_dir).with_context(|| {
        format!(
            "writing {}",
            cfg.data_dir.join(sealing::SEAL_CHECK_FILE).display()
        )
    })?;
    tracing::warn!(
        resealed = in_state + own,
        key_id = %sealer.key_id(),
        previous_key_id = ?sealer.previous_key_id(),
        "seal key rotation: this node's keys are sealed under the new seal key; once `causeway seal status` shows every node on it with nothing under the previous key, restart the nodes without {PREVIOUS_SEAL_KEY_FLAG} and destroy the previous key"
    );
    Ok(())
}

/// The error of a seal key that does not open the cluster's keys.
fn open_error(cfg: &NodeConfig, e: &sealing::SealError) -> anyhow::Error {
    anyhow::anyhow!(
        "{SEAL_KEY_FLAG} {} does not open the cluster's keys ({e}): every node of a cluster needs the seal key file the cluster was formed with; start this node with a copy of it (and, as this node's data dir {} was set up with another key, empty it first: the cluster sends it everything again)",
        cfg.seal_key_file.display(),
        cfg.data_dir.display()
    )
}

/// Generates the cluster's tokens, CAs and signing keys: the tokens in clear (to hand out
/// once the proposal is committed) and what the log carries (hashes, sealed keys).
fn generate_secrets(
    sealer: &sealing::Sealer,
    raft_ca: Option<CertKey>,
) -> Result<(ApiTokens, SealedSecrets), String> {
    let api = tls::generate_ca(API_CA_NAME).map_err(|e| e.to_string())?;
    let zone = tls::generate_ca(ZONE_CA_NAME).map_err(|e| e.to_string())?;
    let dataplane_token_key = tls::dataplane_token::generate_key().map_err(|e| e.to_string())?;
    let tokens = ApiTokens::generate();
    let secrets = ClusterSecrets {
        tokens: tokens.hashes(),
        api_ca_cert_pem: api.cert_pem,
        api_ca_key_pem: api.key_pem,
        zone_token_key: hex::encode(rand::random::<[u8; 32]>()),
        zone_ca_cert_pem: zone.cert_pem,
        zone_ca_key_pem: zone.key_pem,
        dataplane_token_key,
        raft_ca_cert_pem: raft_ca
            .as_ref()
            .map_or_else(String::new, |c| c.cert_pem.clone()),
        raft_ca_key_pem: raft_ca.map_or_else(String::new, |c| c.key_pem),
    };
    Ok((tokens, SealedSecrets::seal(&secrets, sealer)))
}

/// Background duties of a node: form the cluster (first leader creates the tokens, the
/// CAs and keys, and hands the tokens out once), register this node's addresses, open
/// the cluster's keys, start the API.
#[allow(clippy::too_many_arguments)] // each is a handle the node's duties share
async fn housekeeping(
    cfg: NodeConfig,
    store: Store,
    raft: RaftHandle,
    sealer: Arc<sealing::Sealer>,
    fatal: watch::Sender<Option<String>>,
    api_handle: axum_server::Handle,
    metrics: Arc<metrics::Metrics>,
    raft_live: Option<watch::Sender<Arc<transport::LiveTls>>>,
) {
    // Only an identity the cluster manages follows its Raft CA (not the operator's files).
    let follows_raft_ca = matches!(cfg.raft_security, RaftSecurity::Managed);
    let mut view = raft.view();
    let me = Member {
        id: cfg.node_id,
        raft_addr: cfg.raft_addr.to_string(),
        api_addr: cfg.api_addr.to_string(),
    };
    let mut api_started = false;
    // What this node proposed to form the cluster, until it is committed (then the
    // tokens are handed out) or another leader's proposal won.
    let mut pending: Option<(ApiTokens, SealedSecrets)> = None;
    let mut opened: Option<Arc<ClusterSecrets>> = None;
    // KDS's TLS, once it serves: it follows the zone CAs of a rotation.
    let mut kds_tls_state: Option<kds_tls::KdsTls> = None;
    // The API's TLS (None: plain HTTP), the CA that signed the API's and KDS's server
    // certificates, and the API certificate served (empty: the operator's own): they
    // follow an API CA rotation.
    let mut api_tls: Option<axum_server::tls_rustls::RustlsConfig> = None;
    let mut served_by_api_ca = String::new();
    let mut api_trust_written: Vec<String> = Vec::new();
    // The Raft CAs this node's identity last followed.
    let mut raft_followed = String::new();
    let served_api_cert = watch::channel(String::new()).0;
    let mut last_attempt = tokio::time::Instant::now() - Duration::from_secs(10);
    loop {
        let v = view.borrow_and_update().clone();
        let sealed = store.secrets().ok().flatten();
        if v.leader_id != 0 && last_attempt.elapsed() > Duration::from_millis(500) {
            if sealed.is_none() && v.leader_id == cfg.node_id {
                last_attempt = tokio::time::Instant::now();
                if pending.is_none() {
                    // The Raft CA, when this node generated it forming the cluster.
                    let raft_ca = raft_identity::generated_ca(&cfg.data_dir, &sealer)
                        .unwrap_or_else(|e| {
                            tracing::error!(error = %e, "reading the Raft CA this node generated");
                            None
                        });
                    match generate_secrets(&sealer, raft_ca) {
                        // With a --token-out-dir the tokens are there before they can be
                        // committed, so a crash right after the commit cannot lose them
                        // (they are written again once committed; a proposal that loses
                        // to another leader's leaves stale files, which that leader
                        // overwrites when they share the directory).
                        Ok((tokens, sealed)) => match &cfg.token_out_dir {
                            Some(d) => match tokens.hand_out(
                                Some(d),
                                "Causeway global control plane",
                                &sealed.api_ca_cert_pem,
                            ) {
                                Ok(()) => pending = Some((tokens, sealed)),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "writing the API tokens to {TOKEN_OUT_FLAG} {}; will retry",
                                    d.display()
                                ),
                            },
                            None => pending = Some((tokens, sealed)),
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "generating the cluster's CAs and keys")
                        }
                    }
                }
                // The same proposal on a retry: an earlier one may have been committed
                // after all, and its tokens must be the ones handed out.
                if let Some((_, s)) = &pending {
                    if let Err(e) = raft
                        .propose(Command::InitCluster(Box::new(s.clone())))
                        .await
                    {
                        tracing::warn!(error = %e, "creating the cluster secrets failed; will retry");
                    } else {
                        tracing::info!("cluster formed: API tokens, CAs and keys created");
                    }
                }
            }
            let registered = store
                .members()
                .ok()
                .and_then(|m| m.get(&cfg.node_id).cloned());
            let is_voter = v.progress.iter().any(|p| p.id == cfg.node_id);
            if registered.as_ref() != Some(&me) && is_voter {
                last_attempt = tokio::time::Instant::now();
                if let Err(e) = raft.propose(Command::RegisterMember(me.clone())).await {
                    tracing::debug!(error = %e, "registering this node's addresses; will retry");
                }
            }
        }
        if let (Some(sealed), None) = (&sealed, &opened) {
            match sealed.open(&sealer) {
                Ok(s) => {
                    if let Err(e) =
                        tls::write_private(&cfg.data_dir.join(API_CA_FILE), &s.api_ca_cert_pem)
                    {
                        tracing::error!(error = %e, "writing the API CA certificate");
                    }
                    opened = Some(Arc::new(s));
                }
                Err(e) => {
                    let e = open_error(&cfg, &e);
                    tracing::error!("{e:#}");
                    fatal.send_replace(Some(format!("{e:#}")));
                    return;
                }
            }
        }
        if let Some(s) = opened.clone() {
            // Hand out the tokens this node created, once its proposal formed the cluster
            // (when another leader's won, that node hands out its own).
            if let Some((tokens, proposed)) = pending.take()
                && proposed.tokens == s.tokens
            {
                let out = cfg.token_out_dir.as_deref();
                match tokens.hand_out(out, "Causeway global control plane", &s.api_ca_cert_pem) {
                    Ok(()) => match out {
                        Some(d) => {
                            tracing::info!(dir = %d.display(), "wrote the admin and read-only API tokens (the nodes keep only their hashes)")
                        }
                        None => tracing::info!(
                            "printed the API tokens on standard output, once (the nodes keep only their hashes)"
                        ),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "writing the API tokens to {TOKEN_OUT_FLAG}; will retry");
                        pending = Some((tokens, proposed));
                    }
                }
            }
            if v.leader_id == cfg.node_id {
                ensure_mesh_cas(&store, &raft, &sealer).await;
            }
            let keep_from = store
                .last_change_index()
                .saturating_sub(CHANGELOG_RETENTION);
            if let Err(e) = store.prune_changes(keep_from) {
                tracing::warn!(error = %e, "pruning the KDS changelog");
            }
            if !api_started {
                api_started = true;
                let kds = match (cfg.kds_addr, &sealed) {
                    (Some(addr), Some(sealed)) => {
                        let svc = kds::KdsService::new(
                            store.clone(),
                            raft.clone(),
                            cfg.node_id,
                            cfg.kds.clone(),
                            (*s).clone(),
                            sealer.clone(),
                            metrics.clone(),
                        );
                        let tls = match kds_tls(&s, sealed, addr) {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::error!(error = %e, "the KDS server cannot start");
                                std::process::exit(1);
                            }
                        };
                        let (svc2, cfg2, configs) = (svc.clone(), cfg.clone(), tls.configs());
                        kds_tls_state = Some(tls);
                        tokio::spawn(async move {
                            if let Err(e) = serve_kds(&cfg2, configs, addr, svc2).await {
                                tracing::error!(error = %e, "the KDS server stopped");
                                std::process::exit(1);
                            }
                        });
                        Some(svc)
                    }
                    _ => None,
                };
                let state = ApiState {
                    raft: raft.clone(),
                    store: store.clone(),
                    secrets: s.clone(),
                    kds,
                    heartbeat: cfg.kds.heartbeat,
                    status_interval: cfg.kds.status_interval,
                    sealer: sealer.clone(),
                    metrics: metrics.clone(),
                    raft_tls: raft_live.as_ref().map(watch::Sender::subscribe),
                    api_cert: served_api_cert.subscribe(),
                };
                let api_ca = CertKey {
                    cert_pem: s.api_ca_cert_pem.clone(),
                    key_pem: s.api_ca_key_pem.clone(),
                };
                let api_cert = match issue_api_cert(&cfg, &api_ca) {
                    Ok(c) => c.or_else(|| cfg.api_cert.clone()),
                    Err(e) => {
                        tracing::error!(error = %e, "issuing the API server certificate");
                        std::process::exit(1);
                    }
                };
                api_tls = match (&api_cert, cfg.api_insecure_http) {
                    (Some(cert), false) => match api_server_config(cert) {
                        Ok(c) => Some(axum_server::tls_rustls::RustlsConfig::from_config(c)),
                        Err(e) => {
                            tracing::error!(error = %e, "the API's TLS config");
                            std::process::exit(1);
                        }
                    },
                    _ => None,
                };
                served_by_api_ca = tls::first_cert_sha256(&s.api_ca_cert_pem);
                if let (Some(cert), Some(_), None) = (&api_cert, &api_tls, &cfg.api_cert) {
                    served_api_cert.send_replace(cert.cert_pem.clone());
                }
                let tls_cfg = api_tls.clone();
                let cfg = cfg.clone();
                let handle = api_handle.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_api(&cfg, tls_cfg, state, handle).await {
                        tracing::error!(error = %e, "the policy API stopped");
                        std::process::exit(1);
                    }
                });
            }
        }
        if follows_raft_ca
            && opened.is_some()
            && let (Some(live), Some(sealed)) = (&raft_live, &sealed)
            && let Err(e) = follow_raft_ca(&cfg, &sealer, sealed, live, &mut raft_followed)
        {
            tracing::error!(error = %e, "following the cluster's Raft CA; will retry");
        }
        if api_started && let Some(sealed) = &sealed {
            let mut certs = ServedCerts {
                api: api_tls.as_ref(),
                kds: kds_tls_state.as_mut(),
                served_by: &mut served_by_api_ca,
                api_cert: &served_api_cert,
                trust_written: &mut api_trust_written,
            };
            if let Err(e) = follow_api_ca(&cfg, &sealer, sealed, &mut certs) {
                tracing::error!(error = %e, "following the cluster's API CA; will retry");
            }
        }
        if let (Some(t), Some(sealed)) = (&mut kds_tls_state, &sealed) {
            match t.follow(sealed) {
                Ok(true) => tracing::info!(
                    rotating = !sealed.zone_ca_previous_cert_pem.is_empty(),
                    "KDS follows the zone CAs: new handshakes admit certificates of the current zone CA{}",
                    if sealed.zone_ca_previous_cert_pem.is_empty() {
                        " alone"
                    } else {
                        " and of the one it replaces"
                    }
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "KDS cannot follow the zone CAs"),
            }
        }
        // Wake on any Raft change, or every 500 ms to retry.
        let _ = tokio::time::timeout(Duration::from_millis(500), view.changed()).await;
    }
}

/// What a node serves from the API CA: the API's TLS (`None`: plain HTTP), KDS's, the CA
/// that signed their certificates (SHA-256), and the API certificate (for the status).
struct ServedCerts<'a> {
    api: Option<&'a axum_server::tls_rustls::RustlsConfig>,
    kds: Option<&'a mut kds_tls::KdsTls>,
    served_by: &'a mut String,
    api_cert: &'a watch::Sender<String>,
    /// The API CAs (SHA-256s) last written to the CA files.
    trust_written: &'a mut Vec<String>,
}

/// Keeps this node in step with the cluster's API CA: the CAs clients are told to trust
/// (`<data-dir>/api-ca.pem`, and the token dir's copy) are the rotation's, and the API's
/// and KDS's server certificates come from the signing CA, reloaded in place.
fn follow_api_ca(
    cfg: &NodeConfig,
    sealer: &sealing::Sealer,
    sealed: &SealedSecrets,
    served: &mut ServedCerts<'_>,
) -> anyhow::Result<()> {
    // The files are read only when the CAs changed since they were last written (this
    // runs on every housekeeping pass).
    let trust = cluster_ca::api_trust(sealed);
    let shas = cluster_ca::shas(&trust);
    if *served.trust_written != shas {
        let mut files = vec![cfg.data_dir.join(API_CA_FILE)];
        files.extend(cfg.token_out_dir.as_ref().map(|d| d.join(API_CA_FILE)));
        for f in files {
            let held = std::fs::read_to_string(&f).unwrap_or_default();
            if cluster_ca::shas(&held) != shas {
                tls::write_private(&f, &trust)
                    .with_context(|| format!("writing the API CAs to {}", f.display()))?;
                tracing::info!(file = %f.display(), cas = shas.len(), "wrote the API CAs clients trust");
            }
        }
        *served.trust_written = shas;
    }
    let signing = tls::first_cert_sha256(&sealed.api_ca_cert_pem);
    if *served.served_by == signing {
        return Ok(());
    }
    let ca = CertKey {
        cert_pem: sealed.api_ca_cert_pem.clone(),
        key_pem: sealer
            .open(&sealed.api_ca_key_sealed)
            .context("opening the API CA key")?,
    };
    if let Some(kds) = served.kds.as_deref_mut()
        && let Some(addr) = cfg.kds_addr
    {
        kds.set_cert(kds_cert(&ca, addr)?)?;
    }
    if let (Some(api), Some(cert)) = (served.api, issue_api_cert(cfg, &ca)?) {
        api.reload_from_config(api_server_config(&cert)?);
        served.api_cert.send_replace(cert.cert_pem);
    }
    *served.served_by = signing;
    tracing::info!("the API's and KDS's server certificates now come from the signing API CA");
    Ok(())
}

/// Keeps this node's Raft identity in step with the cluster's Raft CA: it trusts every CA
/// a rotation holds (the signing one, and the staged or previous one), and holds a
/// certificate from the signing one, issued by itself (every node can open the CA's
/// key). A change is saved in the data dir first (a restart keeps it), then handed to
/// the transport: new handshakes use it and outbound links reconnect with it.
fn follow_raft_ca(
    cfg: &NodeConfig,
    sealer: &sealing::Sealer,
    sealed: &SealedSecrets,
    live: &watch::Sender<Arc<transport::LiveTls>>,
    followed: &mut String,
) -> anyhow::Result<()> {
    // Certificates are parsed and checked only when the Raft CAs changed since the last
    // pass (this runs on every housekeeping pass).
    let seen = format!(
        "{}{}",
        sealed.raft_ca_cert_pem,
        cluster_ca::raft_trust(sealed)
    );
    if sealed.raft_ca_key_sealed.is_empty() || *followed == seen {
        return Ok(());
    }
    let current = live.borrow().identity.clone();
    let trust = cluster_ca::raft_trust(sealed);
    let trust_changed = cluster_ca::shas(&trust) != cluster_ca::shas(&current.ca_pem);
    let reissue = !tls::issued_by(&current.node.cert_pem, &sealed.raft_ca_cert_pem);
    if !trust_changed && !reissue {
        *followed = seen;
        return Ok(());
    }
    let node = if reissue {
        let ca = CertKey {
            cert_pem: sealed.raft_ca_cert_pem.clone(),
            key_pem: sealer
                .open(&sealed.raft_ca_key_sealed)
                .context("opening the Raft CA key")?,
        };
        tls::issue_raft_node(&ca, cfg.node_id)?
    } else {
        current.node.clone()
    };
    let identity = raft_identity::save(&cfg.data_dir, sealer, &trust, &node)?;
    live.send_replace(transport::LiveTls::new(identity)?);
    *followed = seen;
    tracing::info!(
        trusted = cluster_ca::shas(&trust).len(),
        reissued = reissue,
        "this node's Raft identity follows the cluster's Raft CA"
    );
    Ok(())
}

/// Generates the root CA of every mesh with builtin mTLS that has none yet (leader only;
/// the key travels through Raft to the other nodes and never to a zone).
async fn ensure_mesh_cas(store: &Store, raft: &RaftHandle, sealer: &sealing::Sealer) {
    let Ok(page) = store.list("Mesh", "", &[], None, 10_000) else {
        return;
    };
    for mesh in page.items {
        let Ok(spec) = serde_json::from_value::<causeway_api::MeshSpec>(mesh.spec.clone()) else {
            continue;
        };
        let b = match spec.mtls.map(|m| m.backend) {
            Some(causeway_api::CaBackend::Builtin(b)) => b,
            Some(causeway_api::CaBackend::Provided(p)) => {
                ensure_provided_ca(store, raft, sealer, &mesh.name, &p).await;
                continue;
            }
            None => continue,
        };
        if !matches!(store.mesh_ca(&mesh.name), Ok(None)) {
            continue;
        }
        let validity = b.ca_validity.as_std();
        match tls::generate_ca_valid(&format!("Causeway mesh {} root CA", mesh.name), validity) {
            Ok(ca) => {
                let cmd = Command::SetMeshCa {
                    replace: false,
                    mesh: mesh.name.clone(),
                    ca: command::MeshCa {
                        cert_pem: ca.cert_pem,
                        key_pem: sealer.seal(&ca.key_pem),
                        ..command::MeshCa::default()
                    },
                };
                match raft.propose(cmd).await {
                    Ok(_) => tracing::info!(mesh = %mesh.name, "created the mesh's root CA"),
                    Err(e) => tracing::debug!(error = %e, "creating a mesh CA; will retry"),
                }
            }
            Err(e) => tracing::error!(error = %e, mesh = %mesh.name, "generating a mesh CA"),
        }
    }
}

/// Installs a provided CA (the user's certificate, its key from a mesh secret) when it
/// is not the mesh's CA yet. A missing secret or a key that does not match the
/// certificate is reported in the log and retried.
async fn ensure_provided_ca(
    store: &Store,
    raft: &RaftHandle,
    sealer: &sealing::Sealer,
    mesh: &str,
    p: &causeway_api::ProvidedCa,
) {
    let current = store.mesh_ca(mesh).ok().flatten();
    if let Some(cur) = &current
        && (cur.cert_pem == p.cert_pem
            || cur.next.as_ref().is_some_and(|n| n.cert_pem == p.cert_pem))
    {
        return;
    }
    let Ok(Some(stored)) = store.secret(mesh, &p.key_secret_ref) else {
        tracing::debug!(mesh, secret = %p.key_secret_ref, "the provided CA's key secret does not exist yet");
        return;
    };
    let key = match sealer.open(&stored) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(mesh, error = %e, "cannot read the provided CA's key");
            return;
        }
    };
    if !tls::key_matches_cert(&p.cert_pem, &key) {
        tracing::warn!(mesh, secret = %p.key_secret_ref, "the provided CA's key does not match its certificate");
        return;
    }
    // A mesh that has a CA already moves to the new one by a rotation (staged here; then
    // `causeway ca rotate`, which carries on from a staged root), so no sidecar meets a
    // root it does not trust.
    let cmd = match &current {
        Some(cur) => {
            if ca_rotation::Phase::of(cur) != ca_rotation::Phase::Steady {
                tracing::warn!(
                    mesh,
                    "the mesh's provided CA changed while a root CA rotation is under way: it is staged once that rotation finishes"
                );
                return;
            }
            Command::RotateMeshCa {
                mesh: mesh.to_string(),
                step: ca_rotation::Step::Stage {
                    ca: command::StagedCa {
                        cert_pem: p.cert_pem.clone(),
                        key_pem: stored,
                    },
                },
            }
        }
        None => Command::SetMeshCa {
            mesh: mesh.to_string(),
            ca: command::MeshCa {
                cert_pem: p.cert_pem.clone(),
                key_pem: stored,
                ..command::MeshCa::default()
            },
            replace: false,
        },
    };
    match raft.propose(cmd).await {
        Ok(_) if current.is_some() => tracing::info!(
            mesh,
            "staged the new provided mesh CA: trusted now, signing once the rotation goes on (`causeway ca rotate -m {mesh}`)"
        ),
        Ok(_) => tracing::info!(mesh, "installed the provided mesh CA"),
        Err(e) => tracing::debug!(error = %e, "installing a provided mesh CA; will retry"),
    }
}

/// The node's KDS certificate, from the API CA (the CA zone tokens carry), and the TLS
/// that follows the zone CAs ([`kds_tls`]).
fn kds_tls(
    s: &ClusterSecrets,
    sealed: &SealedSecrets,
    addr: SocketAddr,
) -> anyhow::Result<kds_tls::KdsTls> {
    anyhow::ensure!(
        !s.zone_ca_cert_pem.is_empty(),
        "this cluster has no zone CA (it was formed by an older version); form a new cluster to serve zones"
    );
    let ca = CertKey {
        cert_pem: s.api_ca_cert_pem.clone(),
        key_pem: s.api_ca_key_pem.clone(),
    };
    kds_tls::KdsTls::new(kds_cert(&ca, addr)?, sealed)
}

/// KDS's server certificate from the API CA, with the CA after it (zones verify the
/// chain against the CA their token carried).
fn kds_cert(api_ca: &CertKey, addr: SocketAddr) -> anyhow::Result<CertKey> {
    let cert = tls::issue(
        api_ca,
        API_CA_NAME,
        &tls::server_names(&addr.ip().to_string(), &[]),
        825,
    )?;
    Ok(CertKey {
        cert_pem: format!("{}{}", cert.cert_pem, api_ca.cert_pem),
        key_pem: cert.key_pem,
    })
}

/// Serves KDS over TLS ([`kds_tls`]): zone certificates (from the zone CA, or the one
/// it replaces during a rotation) are checked when presented and required by every
/// call except Enroll.
async fn serve_kds(
    cfg: &NodeConfig,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
    addr: SocketAddr,
    svc: kds::KdsService,
) -> anyhow::Result<()> {
    let server = causeway_api::kds::kds_server::KdsServer::new(svc)
        .max_decoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES);
    let admitted = causeway_listen::incoming(
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the KDS address {addr}"))?,
        "KDS",
        causeway_listen::Limits::GRPC,
    );
    tracing::info!(%addr, "KDS listening (gRPC over TLS)");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(cfg.kds.heartbeat))
        .http2_max_header_list_size(api::MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(api::MAX_STREAMS)
        .add_service(server)
        .serve_with_incoming(causeway_listen::tls_incoming(
            admitted,
            configs,
            "KDS",
            api::TLS_HANDSHAKE_TIMEOUT,
        ))
        .await?;
    Ok(())
}

/// The node's API server certificate from the API CA: `--api-cert` when the operator
/// brought one (`None` then: it does not follow the API CA).
fn issue_api_cert(cfg: &NodeConfig, api_ca: &CertKey) -> anyhow::Result<Option<CertKey>> {
    if cfg.api_cert.is_some() {
        return Ok(None);
    }
    Ok(Some(tls::issue(
        api_ca,
        API_CA_NAME,
        &tls::server_names(&cfg.api_addr.ip().to_string(), &[]),
        825,
    )?))
}

/// The API's TLS config presenting `cert`.
fn api_server_config(cert: &CertKey) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(Arc::new(tls::server_config(
        cert,
        None,
        &[b"h2", b"http/1.1"],
    )?))
}

/// Serves the API: over TLS with `tls` (reloaded in place when the API CA rotates),
/// or in plain HTTP with `--api-insecure-http`.
async fn serve_api(
    cfg: &NodeConfig,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    state: ApiState,
    handle: axum_server::Handle,
) -> anyhow::Result<()> {
    let app = api::router(state);
    let Some(rustls_cfg) = tls else {
        tracing::warn!(addr = %cfg.api_addr, "policy API on plain HTTP: tokens travel in clear");
        let mut server = axum_server::bind(cfg.api_addr);
        api::limit_http(server.http_builder());
        return Ok(server
            .handle(handle)
            .map(|plain| Guarded::new(plain, "global API", Limits::API))
            .serve(app.into_make_service())
            .await?);
    };
    tracing::info!(addr = %cfg.api_addr, "policy API listening (HTTPS)");
    let mut server = axum_server::bind_rustls(cfg.api_addr, rustls_cfg);
    api::limit_http(server.http_builder());
    server
        .handle(handle)
        .map(|tls| Guarded::new(tls, "global API", Limits::API))
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
