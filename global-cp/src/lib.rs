//! The Causeway global control plane: a Raft-replicated policy store (tikv's `raft`
//! crate over RocksDB) and the global policy API.
//!
//! Layout follows raft-rs's split of algorithm and I/O: [`store`] is the durable state
//! (log, hard state, state machine), [`raft_node`] the Ready loop on its own thread,
//! `transport` the peer connections, `api` the REST surface. The crate must not hold
//! policy logic: what a resource means belongs to `causeway-api`.

pub mod command;
pub mod kds;
pub mod raft_node;
pub mod sealing;
pub mod store;
/// Certificates and TLS configs (the shared `causeway-pki` crate).
pub use causeway_pki as tls;

mod api;
mod metrics;
mod transport;
pub mod zone_token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

pub use api::openapi_document;
use api::{ApiState, Tokens};
use command::{ClusterSecrets, Command, Member};
use raft_node::{RaftHandle, RaftSettings};
use store::Store;
use tls::{CertKey, RaftTls};

/// Common name of the CA that signs the API's generated certificates.
const API_CA_NAME: &str = "Causeway API CA";
/// Resource changes each node keeps for KDS deltas; a zone further behind gets a full
/// snapshot instead.
const CHANGELOG_RETENTION: u64 = 100_000;

/// Common name of the CA that signs zone certificates.
const ZONE_CA_NAME: &str = "Causeway Zone CA";

/// Settings of one global control plane node, parsed once at the binary's edge.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's Raft id (non-zero, unique in the cluster).
    pub node_id: u64,
    /// Where the RocksDB store, the admin token and the API CA are kept.
    pub data_dir: PathBuf,
    /// Policy API listen address.
    pub api_addr: SocketAddr,
    /// Raft transport listen address.
    pub raft_addr: SocketAddr,
    /// KDS (zone sync, gRPC over TLS) listen address; `None` serves no zones.
    pub kds_addr: Option<SocketAddr>,
    pub kds: kds::KdsSettings,
    /// Key-encryption key for the mesh CA keys in the store; `None` stores them in clear
    /// (with a warning).
    pub secrets_key: Option<Arc<sealing::Sealer>>,
    /// The initial cluster's other members: id -> Raft address.
    pub peers: BTreeMap<u64, String>,
    /// Join an existing cluster instead of forming one: start empty and wait for the
    /// leader (after `causeway cluster add-node`) to send a snapshot.
    pub join: bool,
    /// Mutual TLS for Raft traffic; `None` runs it in plain TCP (local clusters only).
    pub raft_tls: Option<RaftTls>,
    /// The API's certificate; `None` issues one from the cluster's generated API CA.
    pub api_cert: Option<CertKey>,
    /// Serve the API over plain HTTP (never in production; tests of TLS itself use it).
    pub api_insecure_http: bool,
    pub raft: RaftSettings,
}

/// Files a node writes into its data dir for the CLI.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const READONLY_TOKEN_FILE: &str = "readonly-token";
pub const API_CA_FILE: &str = "api-ca.pem";

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    raft: RaftHandle,
    raft_thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api_handle: axum_server::Handle,
}

impl Node {
    /// Opens the store, starts Raft, the transport and (once the cluster has formed) the API.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        anyhow::ensure!(cfg.node_id != 0, "--node-id must be a positive integer");
        anyhow::ensure!(
            !cfg.peers.contains_key(&cfg.node_id),
            "--peer lists this node's own id {}",
            cfg.node_id
        );
        causeway_pki::private_dir(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let store = Store::open(&cfg.data_dir.join("db"))?;
        if store.is_empty() && !cfg.join {
            let mut voters: Vec<u64> = cfg.peers.keys().copied().collect();
            voters.push(cfg.node_id);
            voters.sort();
            tracing::info!(?voters, "forming a new cluster");
            store.bootstrap(voters)?;
        }
        if cfg.raft_tls.is_none() {
            tracing::warn!(
                "Raft traffic between nodes is NOT encrypted or authenticated (no --raft-tls-*). \
                 Fine on loopback; in production generate certificates with `causeway cluster gen-certs`."
            );
        }
        let raft_listener = tokio::net::TcpListener::bind(cfg.raft_addr)
            .await
            .with_context(|| format!("binding the Raft address {}", cfg.raft_addr))?;
        let rt = tokio::runtime::Handle::current();
        let peers = cfg.peers.clone();
        let tls = cfg.raft_tls.clone();
        let id = cfg.node_id;
        let (raft, thread) = raft_node::start_with(
            id,
            store.clone(),
            cfg.raft.clone(),
            raft_node::raft_logger(),
            |tx| {
                let mut ob = transport::TcpOutbox::new(rt, id, tx, tls.as_ref())?;
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
        let tls = cfg.raft_tls.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = transport::serve(raft_listener, tls.as_ref(), raft_tx).await {
                tracing::error!(error = %e, "raft transport stopped");
            }
        }));

        let (tokens_tx, tokens_rx) = watch::channel(None);
        let api_handle = axum_server::Handle::new();
        tasks.push(tokio::spawn(housekeeping(
            cfg.clone(),
            store.clone(),
            raft.clone(),
            tokens_tx,
            api_handle.clone(),
            tokens_rx,
            metrics,
        )));
        Ok(Node {
            raft,
            raft_thread: Some(thread),
            tasks,
            api_handle,
        })
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

fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("cw_{}", hex::encode(bytes))
}

/// Background duties of a node: form the cluster (first leader creates the tokens and the
/// API CA), register this node's addresses, write the token files, start the API.
async fn housekeeping(
    cfg: NodeConfig,
    store: Store,
    raft: RaftHandle,
    tokens_tx: watch::Sender<Option<Arc<Tokens>>>,
    api_handle: axum_server::Handle,
    tokens_rx: watch::Receiver<Option<Arc<Tokens>>>,
    metrics: Arc<metrics::Metrics>,
) {
    let mut view = raft.view();
    let me = Member {
        id: cfg.node_id,
        raft_addr: cfg.raft_addr.to_string(),
        api_addr: cfg.api_addr.to_string(),
    };
    let mut api_started = false;
    let mut last_attempt = tokio::time::Instant::now() - Duration::from_secs(10);
    loop {
        let v = view.borrow_and_update().clone();
        let secrets = store.secrets().ok().flatten();
        if v.leader_id != 0 && last_attempt.elapsed() > Duration::from_millis(500) {
            if secrets.is_none() && v.leader_id == cfg.node_id {
                last_attempt = tokio::time::Instant::now();
                let generated = tls::generate_ca(API_CA_NAME)
                    .and_then(|api| Ok((api, tls::generate_ca(ZONE_CA_NAME)?)))
                    .map_err(|e| e.to_string())
                    .and_then(|(api, zone)| {
                        let dp = tls::dataplane_token::generate_key().map_err(|e| e.to_string())?;
                        Ok((api, zone, dp))
                    });
                match generated {
                    Ok((ca, zone_ca, dataplane_token_key)) => {
                        let s = ClusterSecrets {
                            admin_token: generate_token(),
                            readonly_token: generate_token(),
                            api_ca_cert_pem: ca.cert_pem,
                            api_ca_key_pem: ca.key_pem,
                            zone_token_key: hex::encode(rand::random::<[u8; 32]>()),
                            zone_ca_cert_pem: zone_ca.cert_pem,
                            zone_ca_key_pem: zone_ca.key_pem,
                            dataplane_token_key,
                        };
                        if let Err(e) = raft.propose(Command::InitCluster(s)).await {
                            tracing::warn!(error = %e, "creating the cluster secrets failed; will retry");
                        } else {
                            tracing::info!("cluster formed: admin token and API CA created");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "generating the cluster's CAs and keys"),
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
        if let Some(s) = secrets {
            let changed = tokens_rx
                .borrow()
                .as_ref()
                .is_none_or(|t| t.admin != s.admin_token);
            if changed {
                if let Err(e) = write_secrets(&cfg.data_dir, &s) {
                    tracing::error!(error = %e, "writing the token files");
                }
                tokens_tx.send_replace(Some(Arc::new(Tokens {
                    admin: s.admin_token.clone(),
                    readonly: s.readonly_token.clone(),
                })));
            }
            if v.leader_id == cfg.node_id {
                ensure_mesh_cas(&store, &raft, cfg.secrets_key.as_deref()).await;
            }
            let keep_from = store
                .last_change_index()
                .saturating_sub(CHANGELOG_RETENTION);
            if let Err(e) = store.prune_changes(keep_from) {
                tracing::warn!(error = %e, "pruning the KDS changelog");
            }
            if !api_started {
                api_started = true;
                let kds = cfg.kds_addr.map(|addr| {
                    let svc = kds::KdsService::new(
                        store.clone(),
                        raft.clone(),
                        cfg.node_id,
                        cfg.kds.clone(),
                        s.clone(),
                        cfg.secrets_key.clone(),
                        metrics.clone(),
                    );
                    let (svc2, cfg2, s2) = (svc.clone(), cfg.clone(), s.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_kds(&cfg2, &s2, addr, svc2).await {
                            tracing::error!(error = %e, "the KDS server stopped");
                            std::process::exit(1);
                        }
                    });
                    svc
                });
                let state = ApiState {
                    raft: raft.clone(),
                    store: store.clone(),
                    tokens: tokens_rx.clone(),
                    kds,
                    heartbeat: cfg.kds.heartbeat,
                    status_interval: cfg.kds.status_interval,
                    sealer: cfg.secrets_key.clone(),
                    metrics: metrics.clone(),
                };
                let cfg = cfg.clone();
                let handle = api_handle.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_api(&cfg, &s, state, handle).await {
                        tracing::error!(error = %e, "the policy API stopped");
                        std::process::exit(1);
                    }
                });
            }
        }
        // Wake on any Raft change, or every 500 ms to retry.
        let _ = tokio::time::timeout(Duration::from_millis(500), view.changed()).await;
    }
}

fn write_secrets(dir: &Path, s: &ClusterSecrets) -> std::io::Result<()> {
    tls::write_private(&dir.join(ADMIN_TOKEN_FILE), &format!("{}\n", s.admin_token))?;
    tls::write_private(
        &dir.join(READONLY_TOKEN_FILE),
        &format!("{}\n", s.readonly_token),
    )?;
    tls::write_private(&dir.join(API_CA_FILE), &s.api_ca_cert_pem)
}

/// Generates the root CA of every mesh with builtin mTLS that has none yet (leader only;
/// the key travels through Raft to the other nodes and never to a zone).
async fn ensure_mesh_cas(store: &Store, raft: &RaftHandle, sealer: Option<&sealing::Sealer>) {
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
                        key_pem: match sealer {
                            Some(s) => s.seal(&ca.key_pem),
                            None => {
                                tracing::warn!(mesh = %mesh.name, "storing the mesh CA key UNENCRYPTED: start the global nodes with --secrets-key-file (see `causeway cluster gen-certs`)");
                                ca.key_pem
                            }
                        },
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
    sealer: Option<&sealing::Sealer>,
    mesh: &str,
    p: &causeway_api::ProvidedCa,
) {
    if let Ok(Some(cur)) = store.mesh_ca(mesh)
        && cur.cert_pem == p.cert_pem
    {
        return;
    }
    let Ok(Some(stored)) = store.secret(mesh, &p.key_secret_ref) else {
        tracing::debug!(mesh, secret = %p.key_secret_ref, "the provided CA's key secret does not exist yet");
        return;
    };
    let key = match sealing::reveal(&stored, sealer) {
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
    let cmd = Command::SetMeshCa {
        mesh: mesh.to_string(),
        ca: command::MeshCa {
            cert_pem: p.cert_pem.clone(),
            key_pem: stored,
        },
        replace: true,
    };
    match raft.propose(cmd).await {
        Ok(_) => tracing::info!(mesh, "installed the provided mesh CA"),
        Err(e) => tracing::debug!(error = %e, "installing a provided mesh CA; will retry"),
    }
}

/// Serves KDS over TLS: the node's certificate from the API CA (the CA zone tokens
/// carry); zone certificates (from the zone CA) are checked when presented and required
/// by every call except Enroll.
async fn serve_kds(
    cfg: &NodeConfig,
    s: &ClusterSecrets,
    addr: SocketAddr,
    svc: kds::KdsService,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !s.zone_ca_cert_pem.is_empty(),
        "this cluster has no zone CA (it was formed by an older version); form a new cluster to serve zones"
    );
    let ca = CertKey {
        cert_pem: s.api_ca_cert_pem.clone(),
        key_pem: s.api_ca_key_pem.clone(),
    };
    let cert = tls::issue(
        &ca,
        API_CA_NAME,
        &tls::server_names(&addr.ip().to_string(), &[]),
        825,
    )?;
    let tls_cfg = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            format!("{}{}", cert.cert_pem, s.api_ca_cert_pem),
            &cert.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&s.zone_ca_cert_pem))
        .client_auth_optional(true);
    let server = causeway_api::kds::kds_server::KdsServer::new(svc)
        .max_decoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES);
    tracing::info!(%addr, "KDS listening (gRPC over TLS)");
    tonic::transport::Server::builder()
        .tls_config(tls_cfg)?
        .http2_keepalive_interval(Some(cfg.kds.heartbeat))
        .add_service(server)
        .serve(addr)
        .await?;
    Ok(())
}

async fn serve_api(
    cfg: &NodeConfig,
    s: &ClusterSecrets,
    state: ApiState,
    handle: axum_server::Handle,
) -> anyhow::Result<()> {
    let app = api::router(state);
    if cfg.api_insecure_http {
        tracing::warn!(addr = %cfg.api_addr, "policy API on plain HTTP: tokens travel in clear");
        return Ok(axum_server::bind(cfg.api_addr)
            .handle(handle)
            .serve(app.into_make_service())
            .await?);
    }
    let cert = match &cfg.api_cert {
        Some(c) => c.clone(),
        None => {
            let ca = CertKey {
                cert_pem: s.api_ca_cert_pem.clone(),
                key_pem: s.api_ca_key_pem.clone(),
            };
            tls::issue(
                &ca,
                API_CA_NAME,
                &tls::server_names(&cfg.api_addr.ip().to_string(), &[]),
                825,
            )?
        }
    };
    let server = tls::server_config(&cert, None, &[b"h2", b"http/1.1"])?;
    let rustls_cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server));
    tracing::info!(addr = %cfg.api_addr, "policy API listening (HTTPS)");
    axum_server::bind_rustls(cfg.api_addr, rustls_cfg)
        .handle(handle)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
