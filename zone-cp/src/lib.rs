//! The Causeway zone control plane: one per zone. It keeps a local RocksDB copy of what
//! the global control plane sends over KDS (meshes, policies, other zones' ingresses),
//! holds what the zone owns (its dataplanes, ingresses and zone-origin policies) and
//! reports that up, and serves the same read API as global for its zone. It keeps
//! serving its last known state when global is unreachable, across restarts.
//!
//! It must never change a global resource: writes here are zone-owned only. Layout:
//! [`store`] the durable state, `kds_client` the stream to global, `api` the REST surface.

mod api;
mod api_ca;
mod dds;
mod drill;
pub mod ingress;
mod inspect;
mod kds_client;
mod metrics;
pub mod proxy_config;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use causeway_api::{Resource, ResourceKey};
use tokio::sync::{Notify, watch};

pub use kds_client::SyncRecord;
use store::{Counts, Store};

/// Settings of a zone control plane, parsed once at the binary's edge.
#[derive(Clone)]
pub struct ZoneConfig {
    /// The zone's name (a DNS label); must match its token.
    pub zone: String,
    /// KDS addresses of global nodes (`https://host:port`); any of them will do.
    pub globals: Vec<String>,
    /// The zone token; needed until the zone has enrolled (then its certificate is used).
    pub token: Option<String>,
    /// The store and the API CA certificate (0700); no token and no unsealed key.
    pub data_dir: PathBuf,
    /// The seal key file (`--seal-key-file`, outside the data dir); created on the first
    /// start when missing.
    pub seal_key_file: PathBuf,
    /// The seal key being replaced (`--previous-seal-key-file`): the zone seals every
    /// key it holds again under `seal_key_file` at start.
    pub previous_seal_key_file: Option<PathBuf>,
    /// Where the first start writes the API tokens and CA (`--token-out-dir`); `None`
    /// prints the tokens once on standard output.
    pub token_out_dir: Option<PathBuf>,
    /// Read API (HTTPS) listen address.
    pub api_addr: SocketAddr,
    /// Where dataplanes and ingresses will fetch their config (DDS, with the dataplane).
    pub dds_addr: Option<SocketAddr>,
    /// KDS heartbeat interval; a stream silent for three is re-opened.
    pub heartbeat: Duration,
    /// Longest wait between reconnect attempts.
    pub backoff_max: Duration,
    /// Reported to global.
    pub version: String,
    /// After a restart, how long sidecars have to reconnect before the Dataplanes they
    /// registered are removed.
    pub dataplane_grace: Duration,
    /// Free space to keep on the data dir's disk: under it, local writes are refused
    /// (see [`Store::with_disk_reserve`]).
    pub disk_reserve_bytes: u64,
}

impl std::fmt::Debug for ZoneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneConfig")
            .field("zone", &self.zone)
            .field("globals", &self.globals)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

/// Files the first start writes into `--token-out-dir`; the data dir holds the API CA
/// certificate too.
pub use causeway_pki::api_token::{ADMIN_TOKEN_FILE, API_CA_FILE, READONLY_TOKEN_FILE};

/// Files an older version kept in clear in the data dir: their presence means a data
/// dir this version cannot take over.
const CLEAR_SECRET_FILES: [&str; 3] = [ADMIN_TOKEN_FILE, READONLY_TOKEN_FILE, "api-ca-key.pem"];

/// Sync state shown at `/status`.
#[derive(Debug, Default)]
pub(crate) struct SyncStatus {
    pub(crate) connected_to: Option<String>,
    /// The last change sets applied, newest last.
    pub(crate) syncs: VecDeque<SyncRecord>,
    pub(crate) refused: Vec<String>,
}

/// State shared by the KDS client and the API.
pub(crate) struct Shared {
    pub(crate) cfg: ZoneConfig,
    pub(crate) store: Store,
    pub(crate) revision: watch::Sender<u64>,
    pub(crate) status: Mutex<SyncStatus>,
    local: Mutex<kds_client::LocalChanges>,
    pub(crate) local_changed: Notify,
    /// Bumped on every change of the stored state; proxies' configs follow it.
    pub(crate) state: watch::Sender<u64>,
    pub(crate) inputs_cache: Mutex<HashMap<String, (u64, Arc<proxy_config::MeshInputs>)>>,
    /// Proxies connected over DDS.
    pub(crate) proxies: Mutex<dds::Proxies>,
    /// Sidecars whose stream ended lately, by mesh, with when: until they are back (or
    /// a minute has passed) a root CA rotation waits for them, as they may be
    /// reconnecting with roots they have not followed yet.
    pub(crate) lately_gone: Mutex<HashMap<ResourceKey, (String, std::time::Instant)>>,
    last_push_ms: AtomicI64,
    pub(crate) metrics: metrics::Metrics,
    /// The golden signals the zone's sidecars report, reported up to global.
    pub(crate) signals: Mutex<causeway_api::stats::Aggregator>,
    /// The key this zone renews its proxies' tokens with (private, PKCS#8 hex) and its
    /// public half (hex), which verifies them. A rotation replaces it, and every live
    /// proxy stream renews its token with the new one at once.
    pub(crate) token_renewal: watch::Sender<Arc<(String, String)>>,
    /// Opens the keys the zone holds outside its store (its API CAs').
    pub(crate) sealer: Arc<causeway_pki::sealing::Sealer>,
    /// The zone's own API CAs; a rotation step replaces them (saved in the data dir
    /// first), the API and DDS reissue their certificates when the signing one changes,
    /// and every proxy stream sends its proxy what to trust.
    pub(crate) api_cas: watch::Sender<Arc<api_ca::ApiCas>>,
    /// Which API CA signed what the API and DDS present now.
    pub(crate) serving_ca: Mutex<api_ca::Serving>,
    /// Attempts to enrol again with a new zone token.
    pub(crate) reenrolment: Mutex<kds_client::Reenrolment>,
}

impl Shared {
    pub(crate) fn set_connected(&self, to: Option<String>) {
        let mut s = self.status.lock().expect("status lock");
        s.connected_to = to;
    }

    pub(crate) fn applied(&self, rec: SyncRecord) {
        let revision = rec.revision;
        {
            let mut s = self.status.lock().expect("status lock");
            s.syncs.push_back(rec);
            while s.syncs.len() > 50 {
                s.syncs.pop_front();
            }
        }
        self.revision.send_replace(revision);
        self.state.send_modify(|v| *v += 1);
    }

    /// A config was pushed to a proxy just now.
    pub(crate) fn touch_push(&self) {
        let ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        self.last_push_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn last_push_ms(&self) -> i64 {
        self.last_push_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn connected_proxies(&self) -> u64 {
        self.proxies.lock().expect("proxies lock").len() as u64
    }

    /// Per mesh with known roots: how far this zone and its sidecars follow them (a root
    /// CA rotation waits on it), from the sidecars' last reports.
    pub(crate) fn mesh_ca_progress(&self) -> Vec<causeway_api::kds::MeshCaProgress> {
        let roots = self.store.mesh_roots().unwrap_or_default();
        let zone = self.cfg.zone.as_str();
        // The sidecars registered here, connected now or not: one whose stream is down
        // (reconnecting after this zone was away) has not followed the roots yet and
        // must hold a rotation up, so it counts until it is forgotten.
        let registered = |mesh: &str| {
            self.store
                .list(
                    "Dataplane",
                    mesh,
                    None,
                    |d| d.origin.as_deref() == Some(zone),
                    usize::MAX,
                )
                .map_or(0, |(items, _)| items.len() as u64)
        };
        let intermediates: Vec<(Option<(String, String)>, u64)> = roots
            .iter()
            .map(|r| {
                (
                    self.store.intermediate_hashes(&r.mesh).ok().flatten(),
                    registered(&r.mesh),
                )
            })
            .collect();
        // Sidecars gone within the last minute and not back: counted, not following.
        let gone: Vec<String> = {
            let mut lately = self.lately_gone.lock().expect("lately gone lock");
            lately.retain(|_, (_, at)| at.elapsed() < std::time::Duration::from_secs(60));
            lately.values().map(|(mesh, _)| mesh.clone()).collect()
        };
        let proxies = self.proxies.lock().expect("proxies lock");
        roots
            .iter()
            .zip(intermediates)
            .map(|(r, (inter, registered))| {
                let (current, intermediate_root) = match inter {
                    Some((sha, root)) => (Some(sha), root),
                    None => (None, String::new()),
                };
                let mut p = causeway_api::kds::MeshCaProgress {
                    mesh: r.mesh.clone(),
                    trusted_sha256: r.trusted_sha256.clone(),
                    intermediate_root_sha256: intermediate_root,
                    ..Default::default()
                };
                for x in proxies.values().filter(|x| !x.ingress && x.mesh == r.mesh) {
                    p.proxies += 1;
                    let cert = x.report.as_ref().and_then(|rep| rep.certificate.as_ref());
                    if cert.is_some_and(|c| {
                        r.trusted_sha256
                            .iter()
                            .all(|t| c.trusted_sha256.contains(t))
                    }) {
                        p.proxies_trusting += 1;
                    }
                    if cert.is_some_and(|c| c.issuer_sha256.is_some() && c.issuer_sha256 == current)
                    {
                        p.proxies_current += 1;
                    }
                }
                p.proxies += gone.iter().filter(|m| **m == r.mesh).count() as u64;
                p.proxies = p.proxies.max(registered);
                p
            })
            .collect()
    }

    /// Connected proxies whose last reply rejected their config.
    pub(crate) fn proxies_nacking(&self) -> u64 {
        let proxies = self.proxies.lock().expect("proxies lock");
        proxies.values().filter(|p| p.nack.is_some()).count() as u64
    }

    /// Records a local change for the KDS client to report.
    pub(crate) fn local_change(&self, key: ResourceKey, r: Option<Resource>) {
        self.local.lock().expect("local lock").insert(key, r);
        self.local_changed.notify_one();
        self.state.send_modify(|v| *v += 1);
    }

    pub(crate) fn take_local_changes(&self) -> kds_client::LocalChanges {
        std::mem::take(&mut *self.local.lock().expect("local lock"))
    }

    pub(crate) fn counts(&self) -> Counts {
        self.store.counts(&self.cfg.zone).unwrap_or_default()
    }

    /// The zone's state as JSON, for `GET /zones/{name}/config-dump` on global.
    pub(crate) fn config_dump(&self) -> Vec<u8> {
        let status = api::status_json(self);
        let owned = self.store.owned(&self.cfg.zone).unwrap_or_default();
        let intermediates: Vec<_> = self
            .store
            .intermediates()
            .unwrap_or_default()
            .into_iter()
            .map(|i| serde_json::json!({"mesh": i.mesh, "certPem": i.cert_pem, "notAfter": i.not_after}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "status": status,
            "owned": owned,
            "intermediates": intermediates,
        }))
        .expect("dump serializes")
    }
}

/// A running zone control plane.
pub struct Zone {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api_handle: axum_server::Handle,
}

impl Zone {
    /// Opens the store, starts the API (serving whatever is stored) and the KDS client.
    pub async fn start(cfg: ZoneConfig) -> anyhow::Result<Zone> {
        if let Some(e) = causeway_api::validate_name("--zone", &cfg.zone)
            .into_iter()
            .next()
        {
            anyhow::bail!("--zone {:?}: {}", cfg.zone, e.reason);
        }
        anyhow::ensure!(
            !cfg.globals.is_empty(),
            "--global is required (a KDS address of the global control plane)"
        );
        causeway_pki::private_dir(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        if let Some(out) = &cfg.token_out_dir {
            causeway_pki::api_token::check_out_dir("--token-out-dir", out, &cfg.data_dir)
                .map_err(anyhow::Error::msg)?;
        }
        let db_dir = cfg.data_dir.join("db");
        let old = CLEAR_SECRET_FILES
            .iter()
            .any(|f| cfg.data_dir.join(f).exists())
            || (db_dir.exists()
                && !cfg
                    .data_dir
                    .join(causeway_pki::sealing::SEAL_CHECK_FILE)
                    .exists());
        anyhow::ensure!(
            !old,
            "the data dir {} was written by an older version that kept tokens and keys in clear; migrating it is not supported: start the zone with a new --data-dir and a new zone token",
            cfg.data_dir.display()
        );
        let (sealer, created) = causeway_pki::sealing::Sealer::load(
            ("--seal-key-file", &cfg.seal_key_file),
            cfg.previous_seal_key_file
                .as_deref()
                .map(|p| ("--previous-seal-key-file", p)),
            &cfg.data_dir,
        )?;
        if created {
            tracing::warn!(path = %cfg.seal_key_file.display(), "generated a new seal key: back it up now (losing it loses the zone's keys)");
        }
        let sealer = Arc::new(sealer);
        // RocksDB would create it 0755 (and its files 0644; that cannot be changed).
        causeway_pki::private_dir(&db_dir)
            .with_context(|| format!("creating {}", db_dir.display()))?;
        let store = Store::open(&db_dir, sealer.clone())?
            .with_disk_reserve(cfg.data_dir.clone(), cfg.disk_reserve_bytes);
        if sealer.has_previous() {
            // A seal key rotation: everything sealed again under the new key, the
            // store's history purged, then the check value moved, so the previous key
            // is needed no more (a zone seals only its own keys).
            let n = store.reseal()? + usize::from(api::reseal_api_ca_key(&cfg.data_dir, &sealer)?);
            sealer
                .record_check(&cfg.data_dir)
                .with_context(|| format!("writing the seal check in {}", cfg.data_dir.display()))?;
            tracing::warn!(
                resealed = n,
                key_id = %sealer.key_id(),
                "seal key rotation: every key of this zone is sealed under the new seal key; restart it without --previous-seal-key-file and destroy the previous key"
            );
        }
        if store
            .identity()
            .with_context(|| format!("--seal-key-file {}", cfg.seal_key_file.display()))?
            .is_none()
        {
            let token = cfg.token.as_deref().context(
                "this zone has not enrolled yet: pass --token-file with a token from `causeway zone token create`",
            )?;
            let claims = causeway_api::zone_token::peek(token)
                .context("the --token-file does not hold a zone token")?;
            anyhow::ensure!(
                claims.zone == cfg.zone,
                "the token is for zone {:?}, but --zone is {:?}",
                claims.zone,
                cfg.zone
            );
        }
        if cfg.dds_addr.is_some() {
            tracing::info!(
                "--dds-addr noted; dataplanes register through the zone API until DDS lands"
            );
        }
        let renewal_key = store.token_renewal_key()?;
        let renewal_public = causeway_pki::dataplane_token::public_key(&renewal_key)
            .context("the zone's token renewal key")?;
        let revision = store.revision()?;
        let (revision_tx, _) = watch::channel(revision);
        let (tokens, api_cas) =
            api::local_credentials(&cfg.data_dir, &sealer, cfg.token_out_dir.as_deref())?;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            store,
            revision: revision_tx,
            status: Mutex::default(),
            local: Mutex::default(),
            local_changed: Notify::new(),
            state: watch::channel(0).0,
            inputs_cache: Mutex::default(),
            proxies: Mutex::default(),
            lately_gone: Mutex::default(),
            last_push_ms: AtomicI64::new(0),
            metrics: metrics::Metrics::default(),
            signals: Mutex::default(),
            token_renewal: watch::channel(Arc::new((renewal_key, renewal_public))).0,
            sealer: sealer.clone(),
            api_cas: watch::channel(Arc::new(api_cas)).0,
            serving_ca: Mutex::default(),
            reenrolment: Mutex::default(),
        });
        let api_handle = axum_server::Handle::new();
        let mut tasks = Vec::new();
        let (s, h) = (shared.clone(), api_handle.clone());
        let listener = std::net::TcpListener::bind(cfg.api_addr)
            .with_context(|| format!("binding the zone API address {}", cfg.api_addr))?;
        listener.set_nonblocking(true)?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = api::serve(s, tokens, listener, h).await {
                tracing::error!(error = %e, "the zone API stopped");
                std::process::exit(1);
            }
        }));
        if let Some(addr) = cfg.dds_addr {
            tasks.push(tokio::spawn(dds::forget_absent_after(
                shared.clone(),
                cfg.dataplane_grace,
            )));
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = dds::serve(s, addr).await {
                    tracing::error!(error = %e, "the DDS server stopped");
                    std::process::exit(1);
                }
            }));
        }
        tracing::info!(zone = %cfg.zone, revision, api = %cfg.api_addr, "zone control plane serving its stored state");
        tasks.push(tokio::spawn(drill::run(shared.clone())));
        tasks.push(tokio::spawn(kds_client::run(shared)));
        Ok(Zone { tasks, api_handle })
    }

    pub async fn shutdown(mut self) {
        self.api_handle
            .graceful_shutdown(Some(Duration::from_secs(2)));
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}
