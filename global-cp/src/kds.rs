//! The KDS server: zone enrollment (token -> zone certificate), certificate renewal and
//! one sync stream per connected zone.
//!
//! Every global node serves KDS from its own replicated state: a follower's state may
//! trail the leader by a few milliseconds, which sync tolerates (each change set names
//! the revision it brings the zone to, and the next one follows). Writes a session makes
//! (zone-owned resources, zone status) go through Raft like any other, so a follower
//! forwards them. A zone may therefore connect to any node, and killing one node only
//! moves the zones it served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_api::kds::kds_server::Kds;
use causeway_api::kds::{
    Ack, Change, ChangeSet, ConfigDump, ConfigDumpRequest, EnrollRequest, EnrollResponse,
    GlobalMessage, Heartbeat, IntermediateCa, IntermediateRequest, MeshRoots, RenewRequest,
    RevokedCa, RevokedToken, Trust, ZoneAck, ZoneChangeSet, ZoneMessage, ZoneStats, change,
    global_message, zone_message,
};
use causeway_api::{Resource, ResourceKey};
use causeway_pki::{CertKey, Profile};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::command::{
    ApplyError, ClusterSecrets, Command, SealedSecrets, WriteOutcome, ZoneStatusRecord,
    ZoneTokenRecord,
};
use crate::raft_node::{RaftError, RaftHandle};
use crate::store::{Store, SyncSet};
use crate::zone_token;

/// URI SAN prefix of zone certificates: `spiffe://causeway.zone/<zone>/token/<id>`.
const ZONE_URI_PREFIX: &str = "spiffe://causeway.zone/";

/// KDS settings of a global node.
#[derive(Debug, Clone)]
pub struct KdsSettings {
    /// How often each end sends a heartbeat; a stream silent for three intervals is closed.
    pub heartbeat: Duration,
    /// How often a session writes the zone's status (last seen, revision) through Raft.
    pub status_interval: Duration,
    /// Lifetime of zone certificates (zones renew at 70%).
    pub zone_cert_ttl: Duration,
    /// Lifetime of zones' intermediate mesh CAs (zones renew at 70%).
    pub intermediate_ttl: Duration,
}

impl Default for KdsSettings {
    fn default() -> Self {
        KdsSettings {
            heartbeat: Duration::from_secs(5),
            status_interval: Duration::from_secs(5),
            zone_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            intermediate_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A zone session this node serves right now.
struct LiveSession {
    session: u64,
    status: ZoneStatusRecord,
    dump_tx: mpsc::Sender<DumpRequest>,
    /// The zone's last golden-signal report, and when it came.
    stats: Option<(Instant, Arc<ZoneStats>)>,
}

/// A question relayed to a zone (its state, or a dataplane's inspection: see
/// `ConfigDumpRequest`), and where its answer goes.
type DumpRequest = (
    Option<causeway_api::kds::ResourceKey>,
    oneshot::Sender<ConfigDump>,
);

struct Inner {
    store: Store,
    raft: RaftHandle,
    node_id: u64,
    settings: KdsSettings,
    /// The public half of the dataplane token key, derived once.
    dataplane_token_public_key: String,
    sealer: Arc<crate::sealing::Sealer>,
    sessions: Mutex<HashMap<String, LiveSession>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The KDS service; cheap to clone.
#[derive(Clone)]
pub struct KdsService {
    inner: Arc<Inner>,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What a zone receives from global: global-origin resources, and the ingresses other
/// zones report. Its own resources and other zones' dataplanes and policies stay put.
pub fn sent_to_zone(zone: &str, kind: &str, origin: &str) -> bool {
    origin == "global"
        || (origin != zone
            && causeway_api::type_info(kind)
                .is_some_and(|t| t.sync == causeway_api::SyncDirection::ZoneToGlobalToZones))
}

/// Resource types a zone may own and report up.
fn zone_may_own(kind: &str) -> bool {
    causeway_api::type_info(kind).is_some_and(|t| t.zone_may_write())
}

/// Parses the zone and token id out of a zone certificate.
fn zone_identity(der: &[u8]) -> Option<(String, String)> {
    let info = causeway_pki::cert_info_der(der).ok()?;
    info.uris.iter().find_map(|u| {
        let rest = u.strip_prefix(ZONE_URI_PREFIX)?;
        let (zone, id) = rest.split_once("/token/")?;
        Some((zone.to_string(), id.to_string()))
    })
}

fn send_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("storage: {e}"))
}

impl KdsService {
    /// Zones connected to this node now.
    pub(crate) fn connected_zones(&self) -> usize {
        self.inner.sessions.lock().expect("sessions lock").len()
    }

    pub(crate) fn new(
        store: Store,
        raft: RaftHandle,
        node_id: u64,
        settings: KdsSettings,
        secrets: ClusterSecrets,
        sealer: Arc<crate::sealing::Sealer>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> KdsService {
        KdsService {
            inner: Arc::new(Inner {
                store,
                raft,
                node_id,
                settings,
                dataplane_token_public_key: causeway_pki::dataplane_token::public_key(
                    &secrets.dataplane_token_key,
                )
                .unwrap_or_default(),
                sealer,
                sessions: Mutex::default(),
                metrics,
            }),
        }
    }

    /// The cluster's secrets as stored now: a rotation changes them while the node runs.
    fn stored_secrets(&self) -> Result<SealedSecrets, Status> {
        self.inner
            .store
            .secrets()
            .map_err(send_err)?
            .ok_or_else(|| Status::unavailable("the cluster is not formed yet"))
    }

    /// The CA that signs zone certificates now.
    fn zone_ca(&self) -> Result<CertKey, Status> {
        let s = self.stored_secrets()?;
        let key_pem = self
            .inner
            .sealer
            .open(&s.zone_ca_key_sealed)
            .map_err(|e| Status::internal(format!("opening the zone CA key: {e}")))?;
        Ok(CertKey {
            cert_pem: s.zone_ca_cert_pem,
            key_pem,
        })
    }

    /// Live sessions on this node, by zone.
    pub(crate) fn live_statuses(&self) -> HashMap<String, ZoneStatusRecord> {
        let sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions
            .iter()
            .map(|(z, s)| (z.clone(), s.status.clone()))
            .collect()
    }

    /// The golden signals of `mesh` that the zones connected to this node last
    /// reported, by zone.
    pub(crate) fn zone_stats(&self, mesh: &str) -> Vec<causeway_api::stats::ZoneReport> {
        let reports: Vec<(String, Instant, Arc<ZoneStats>)> = {
            let sessions = self.inner.sessions.lock().expect("sessions lock");
            sessions
                .iter()
                .filter_map(|(z, s)| {
                    s.stats
                        .as_ref()
                        .map(|(at, st)| (z.clone(), *at, st.clone()))
                })
                .collect()
        };
        reports
            .into_iter()
            .map(|(zone, at, st)| causeway_api::stats::ZoneReport {
                signals: st
                    .signals
                    .iter()
                    .filter(|s| s.mesh == mesh)
                    .map(|s| causeway_api::stats::Signal::reported(&zone, s))
                    .collect(),
                out_endpoints: st
                    .out_endpoints
                    .iter()
                    .filter(|e| e.mesh == mesh)
                    .map(causeway_api::instance_health::OutEndpoint::reported)
                    .collect(),
                zone,
                age_seconds: at.elapsed().as_secs_f64(),
                dropped: st.dropped,
            })
            .collect()
    }

    /// Asks a zone connected to this node for its config dump, or with
    /// `inspect_dataplane` for that dataplane's inspection; `None` when the zone is not
    /// connected to this node.
    pub(crate) async fn config_dump(
        &self,
        zone: &str,
        inspect_dataplane: Option<&ResourceKey>,
    ) -> Option<Result<ConfigDump, String>> {
        let tx = {
            let sessions = self.inner.sessions.lock().expect("sessions lock");
            sessions.get(zone)?.dump_tx.clone()
        };
        let (reply, rx) = oneshot::channel();
        if tx
            .send((inspect_dataplane.map(Into::into), reply))
            .await
            .is_err()
        {
            return Some(Err("the zone's session just ended; retry".into()));
        }
        Some(
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(json)) => Ok(json),
                Ok(Err(_)) => Err("the zone's session ended before it answered; retry".into()),
                Err(_) => Err("the zone did not answer within 10s".into()),
            },
        )
    }

    /// Whether `zone` may use KDS with the token `token_id`: the token is not revoked
    /// and the zone is not disabled. Refusals are logged with the peer address.
    fn check_allowed(
        &self,
        zone: &str,
        token_id: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let refuse = |reason: String| {
            tracing::warn!(zone, token_id, peer = ?peer, reason = %reason, "refused a zone control plane");
            Status::permission_denied(reason)
        };
        match self.inner.store.zone_token(zone, token_id) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(refuse(format!(
                    "the token {token_id} of zone {zone:?} was revoked (or never issued here); \
                     create a new one with `causeway zone token create --zone {zone}`"
                )));
            }
            Err(e) => return Err(send_err(e)),
        }
        let key = ResourceKey {
            kind: "Zone".into(),
            mesh: String::new(),
            name: zone.into(),
        };
        if let Ok(Some(z)) = self.inner.store.get(&key)
            && z.spec.get("enabled").and_then(|v| v.as_bool()) == Some(false)
        {
            return Err(refuse(format!(
                "zone {zone:?} is disabled; set spec.enabled: true on Zone {zone:?} to let it connect"
            )));
        }
        Ok(())
    }

    fn peer_zone<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "KDS needs a zone certificate; enroll first with a zone token (Enroll)",
            )
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
        let (zone, id) = zone_identity(leaf).ok_or_else(|| {
            Status::unauthenticated("the client certificate is not a Causeway zone certificate")
        })?;
        self.check_allowed(&zone, &id, req.remote_addr())?;
        Ok((zone, id))
    }

    /// Which zone CA (current or previous, SHA-256) signed the certificate the caller
    /// presented: a zone CA rotation finishes once every zone's is the current one.
    fn signer_of<T>(&self, req: &Request<T>) -> String {
        let (Some(chain), Ok(s)) = (req.peer_certs(), self.stored_secrets()) else {
            return String::new();
        };
        [s.zone_ca_cert_pem, s.zone_ca_previous_cert_pem]
            .into_iter()
            .find(|ca| !ca.is_empty() && causeway_pki::chain_issued_by(&chain, ca))
            .map(|ca| causeway_pki::first_cert_sha256(&ca))
            .unwrap_or_default()
    }

    fn sign_zone_cert(
        &self,
        zone: &str,
        token_id: &str,
        csr: &str,
    ) -> Result<EnrollResponse, Status> {
        let ca = self.zone_ca()?;
        let cert = causeway_pki::sign_csr(
            &ca,
            csr,
            &Profile::Leaf {
                common_name: zone.to_string(),
                names: vec![format!("{ZONE_URI_PREFIX}{zone}/token/{token_id}")],
            },
            self.inner.settings.zone_cert_ttl,
        )
        .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let not_after = causeway_pki::cert_info(&cert)
            .map(|i| i.not_after)
            .unwrap_or_default();
        Ok(EnrollResponse {
            zone: zone.to_string(),
            cert_pem: cert,
            zone_ca_pem: ca.cert_pem,
            not_after,
        })
    }

    /// Creates the Zone resource on first enrollment so `GET /zones` lists the zone.
    async fn ensure_zone_resource(&self, zone: &str) {
        let key = ResourceKey {
            kind: "Zone".into(),
            mesh: String::new(),
            name: zone.into(),
        };
        if matches!(self.inner.store.get(&key), Ok(Some(_))) {
            return;
        }
        let r = Resource {
            kind: "Zone".into(),
            mesh: None,
            name: zone.into(),
            labels: Default::default(),
            spec: serde_json::json!({"enabled": true}),
            version: None,
            creation_time: None,
            modification_time: None,
            origin: None,
        };
        let _ = self
            .inner
            .raft
            .propose(Command::Put {
                resource: Box::new(r),
                expected_version: Some(0),
            })
            .await;
    }

    fn propose_status(&self, st: ZoneStatusRecord) {
        let raft = self.inner.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.propose(Command::ZoneStatus(Box::new(st))).await {
                tracing::debug!(error = %e, "recording zone status; the next report retries");
            }
        });
    }
}

/// Turns a change set into chunked messages.
fn change_set_messages(set: SyncSet, since: u64) -> Vec<GlobalMessage> {
    let mut changes: Vec<Change> = set
        .upserts
        .into_iter()
        .map(|b| Change {
            change: Some(change::Change::Upsert(b)),
        })
        .collect();
    changes.extend(set.tombstones.iter().map(|k| Change {
        change: Some(change::Change::Tombstone(k.into())),
    }));
    let chunks = causeway_api::kds::chunk_changes(changes);
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, changes)| GlobalMessage {
            msg: Some(global_message::Msg::Changes(ChangeSet {
                revision: set.revision,
                full: set.full,
                since: if set.full { 0 } else { since },
                last: i + 1 == n,
                changes,
            })),
        })
        .collect()
}

type Outbound = mpsc::Sender<Result<GlobalMessage, Status>>;

/// One zone's sync stream.
struct Session {
    kds: KdsService,
    zone: String,
    token_id: String,
    peer: Option<SocketAddr>,
    status: ZoneStatusRecord,
    tx: Outbound,
    /// Chunks of a zone change set being received.
    incoming: Vec<Change>,
    incoming_full: bool,
    pending_dumps: HashMap<u64, oneshot::Sender<ConfigDump>>,
    next_dump: u64,
    /// Revision and kind (full or delta) of the last change set sent.
    last_sent: (u64, bool),
    /// When the zone's status was last written through Raft.
    last_status: Instant,
}

/// Why a session ended.
enum End {
    Closed,
    Refused(Status),
}

impl Session {
    async fn send(&self, msg: global_message::Msg) -> Result<(), End> {
        let msg = GlobalMessage { msg: Some(msg) };
        let zone = crate::metrics::ZoneLabels {
            zone: self.zone.clone(),
        };
        let m = &self.kds.inner.metrics;
        m.kds_sent_bytes
            .get_or_create(&zone)
            .inc_by(prost::Message::encoded_len(&msg) as u64);
        if let Some(global_message::Msg::Changes(set)) = &msg.msg
            && set.full
            && set.last
        {
            m.kds_full_sets.get_or_create(&zone).inc();
        }
        self.tx.send(Ok(msg)).await.map_err(|_| End::Closed)
    }

    fn register(&self, dump_tx: mpsc::Sender<DumpRequest>) {
        let mut sessions = self.kds.inner.sessions.lock().expect("sessions lock");
        sessions.insert(
            self.zone.clone(),
            LiveSession {
                session: self.status.session,
                status: self.status.clone(),
                dump_tx,
                stats: None,
            },
        );
    }

    fn publish(&self) {
        let mut sessions = self.kds.inner.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get_mut(&self.zone)
            && s.session == self.status.session
        {
            s.status = self.status.clone();
        }
    }

    async fn run(
        mut self,
        mut inbound: Streaming<ZoneMessage>,
        mut dump_rx: mpsc::Receiver<DumpRequest>,
        mut since: u64,
    ) -> Result<(), End> {
        let settings = self.kds.inner.settings.clone();
        let mut dead_after = causeway_api::kds::silence_limit(settings.heartbeat, None);
        let mut view = self.kds.inner.raft.view();
        let mut tick = tokio::time::interval(settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut first = true;
        let mut sent_trust: Option<Trust> = None;
        loop {
            // Trust first, and again whenever it changes (a revocation).
            let trust = self.trust();
            if sent_trust.as_ref() != Some(&trust) {
                self.send(global_message::Msg::Trust(trust.clone())).await?;
                sent_trust = Some(trust);
            }
            if first || self.kds.inner.store.last_change_index() > since {
                first = false;
                let store = self.kds.inner.store.clone();
                let zone = self.zone.clone();
                let set = tokio::task::spawn_blocking(move || {
                    store.changes_since(since, &|kind, origin| sent_to_zone(&zone, kind, origin))
                })
                .await
                .expect("changes_since does not panic");
                match set {
                    Ok(set) if set.full || set.revision > since => {
                        let (revision, full) = (set.revision, set.full);
                        let count = set.upserts.len() + set.tombstones.len();
                        for m in change_set_messages(set, since) {
                            self.send(m.msg.expect("built with a message")).await?;
                        }
                        tracing::debug!(zone = %self.zone, since, revision, full, count, "sent a change set");
                        self.last_sent = (revision, full);
                        since = revision;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(End::Refused(send_err(e))),
                }
            }
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        return Err(End::Refused(Status::unavailable("this global node is shutting down; reconnect")));
                    }
                }
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => {
                        last_rx = Instant::now();
                        if let Some(zone_message::Msg::Heartbeat(h)) = &m.msg {
                            dead_after = causeway_api::kds::silence_limit(settings.heartbeat, Some(h.interval_ms));
                        }
                        self.status.last_seen_unix_ms = now_ms();
                        self.handle(m).await?;
                        self.publish();
                    }
                    Some(Err(e)) => {
                        tracing::info!(zone = %self.zone, error = %e, "zone stream broke");
                        return Err(End::Closed);
                    }
                    None => return Err(End::Closed),
                },
                _ = tick.tick() => {
                    if last_rx.elapsed() > dead_after {
                        tracing::warn!(zone = %self.zone, silent_ms = last_rx.elapsed().as_millis() as u64, limit_ms = dead_after.as_millis() as u64, "no message from the zone within three of its heartbeats; closing its stream");
                        return Err(End::Refused(Status::deadline_exceeded("no heartbeat from the zone; reconnect")));
                    }
                    self.kds.check_allowed(&self.zone, &self.token_id, self.peer).map_err(End::Refused)?;
                    self.send(global_message::Msg::Heartbeat(Heartbeat { sent_unix_ms: now_ms(), interval_ms: settings.heartbeat.as_millis() as u64 })).await?;
                    if self.last_status.elapsed() >= settings.status_interval {
                        self.last_status = Instant::now();
                        self.kds.propose_status(self.status.clone());
                    }
                }
                Some((inspect_dataplane, reply)) = dump_rx.recv() => {
                    self.next_dump += 1;
                    self.pending_dumps.insert(self.next_dump, reply);
                    self.send(global_message::Msg::ConfigDumpRequest(ConfigDumpRequest { id: self.next_dump, inspect_dataplane })).await?;
                }
            }
        }
    }

    async fn handle(&mut self, m: ZoneMessage) -> Result<(), End> {
        let Some(msg) = m.msg else { return Ok(()) };
        match msg {
            zone_message::Msg::Hello(_) => {}
            zone_message::Msg::Heartbeat(_) => {}
            zone_message::Msg::Ack(Ack {
                revision,
                applied_changes,
            }) => {
                self.status.revision_applied = revision;
                self.status.last_set_changes = applied_changes;
                if revision == self.last_sent.0 {
                    self.status.last_set_full = self.last_sent.1;
                }
                // Progress shows on every node within a second, not only at the next
                // status interval; at most one write per second per zone.
                let min_gap = Duration::from_secs(1).min(self.kds.inner.settings.status_interval);
                if self.last_status.elapsed() >= min_gap {
                    self.last_status = Instant::now();
                    self.kds.propose_status(self.status.clone());
                }
            }
            zone_message::Msg::Insight(i) => {
                self.status.version = i.version;
                self.status.dataplanes = i.dataplanes;
                self.status.zone_ingresses = i.zone_ingresses;
                self.status.connected_proxies = i.connected_proxies;
                self.status.proxies_nacking = i.proxies_nacking;
                self.status.last_config_push_unix_ms = i.last_config_push_unix_ms;
                self.status.resources = i.resources;
                self.status.mesh_ca = i
                    .mesh_ca
                    .iter()
                    .map(crate::ca_rotation::MeshReport::reported)
                    .collect();
                self.status.trusted_api_ca_sha256 = i.trusted_api_ca_sha256;
            }
            zone_message::Msg::Resources(set) => self.zone_resources(set).await?,
            zone_message::Msg::IntermediateRequest(r) => {
                let mut reply = self.intermediate(r);
                if reply.error.is_empty()
                    && let Err(e) = self.record_intermediate(&reply).await
                {
                    reply = IntermediateCa {
                        mesh: reply.mesh,
                        error: format!("recording the intermediate CA: {e}; retry"),
                        ..Default::default()
                    };
                }
                self.send(global_message::Msg::Intermediate(reply)).await?;
            }
            zone_message::Msg::ConfigDump(d) => {
                if let Some(reply) = self.pending_dumps.remove(&d.id) {
                    let _ = reply.send(d);
                }
            }
            zone_message::Msg::Stats(stats) => {
                let mut sessions = self.kds.inner.sessions.lock().expect("sessions lock");
                if let Some(s) = sessions.get_mut(&self.zone)
                    && s.session == self.status.session
                {
                    s.stats = Some((Instant::now(), Arc::new(stats)));
                }
            }
        }
        Ok(())
    }

    /// What the zone must trust and distrust: the dataplane token key, each mesh's roots,
    /// revoked CAs and revoked dataplane and ingress tokens.
    fn trust(&self) -> Trust {
        let revoked_cas = self
            .kds
            .inner
            .store
            .intermediates()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.revoked)
            .map(|r| RevokedCa {
                mesh: r.mesh,
                sha256: r.sha256,
            })
            .collect();
        let revoked_tokens = self
            .kds
            .inner
            .store
            .revoked_proxy_tokens(now_unix())
            .unwrap_or_default()
            .into_iter()
            .map(|(t, until)| RevokedToken {
                id: t.id,
                expires_unix: until,
            })
            .collect();
        // After a rotation the list decides (the signing key, then those still in their
        // overlap, which drop out when it ends); before any, the cluster's first key.
        let signing = self
            .kds
            .inner
            .store
            .token_signing_keys()
            .unwrap_or_default();
        let verifying = crate::token_keys::verifying(&signing, now_unix());
        let (dataplane_token_public_key, retiring_token_public_keys) = match verifying.split_first()
        {
            Some((current, retiring)) => (
                current.public_key.clone(),
                retiring.iter().map(|k| k.public_key.clone()).collect(),
            ),
            None => (
                self.kds.inner.dataplane_token_public_key.clone(),
                Vec::new(),
            ),
        };
        let secrets = self.kds.stored_secrets().ok();
        Trust {
            dataplane_token_public_key,
            retiring_token_public_keys,
            revoked_cas,
            revoked_tokens,
            mesh_roots: mesh_roots(&self.kds.inner.store),
            zone_ca_pem: secrets
                .as_ref()
                .map(|s| s.zone_ca_cert_pem.clone())
                .unwrap_or_default(),
            api_ca_bundle_pem: secrets
                .as_ref()
                .map(crate::cluster_ca::api_trust)
                .unwrap_or_default(),
        }
    }

    /// Records an issued intermediate through Raft, so it can be revoked.
    async fn record_intermediate(&self, ca: &IntermediateCa) -> Result<(), String> {
        let der = causeway_pki::certs(&ca.cert_pem, "intermediate")
            .map_err(|e| e.to_string())?
            .remove(0);
        let rec = crate::command::IntermediateRecord {
            mesh: ca.mesh.clone(),
            zone: self.zone.clone(),
            sha256: causeway_pki::sha256_hex(&der),
            not_after: ca.not_after,
            revoked: false,
        };
        self.kds
            .inner
            .raft
            .propose(Command::RecordIntermediate(rec))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn intermediate(&self, r: IntermediateRequest) -> IntermediateCa {
        let fail = |error: String| IntermediateCa {
            mesh: r.mesh.clone(),
            error,
            ..Default::default()
        };
        let ca = match self.kds.inner.store.mesh_ca(&r.mesh) {
            Ok(Some(ca)) => ca,
            Ok(None) => {
                return fail(format!(
                    "mesh {:?} has no CA yet (mTLS off, or the global control plane is creating it); retry later",
                    r.mesh
                ));
            }
            Err(e) => return fail(format!("storage: {e}")),
        };
        let key_pem = match self.kds.inner.sealer.open(&ca.key_pem) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(mesh = %r.mesh, error = %e, "cannot use the mesh CA key");
                return fail(format!(
                    "the global node cannot use mesh {:?}'s CA key: {e}",
                    r.mesh
                ));
            }
        };
        let root = CertKey {
            cert_pem: ca.cert_pem.clone(),
            key_pem,
        };
        // Never outlive the root.
        let root_left = causeway_pki::cert_info(&root.cert_pem)
            .map(|i| Duration::from_secs((i.not_after - now_unix()).max(60) as u64))
            .unwrap_or(self.kds.inner.settings.intermediate_ttl);
        let ttl = self.kds.inner.settings.intermediate_ttl.min(root_left);
        match causeway_pki::sign_csr(
            &root,
            &r.csr_pem,
            &Profile::IntermediateCa {
                common_name: format!("Causeway mesh {} zone {}", r.mesh, self.zone),
            },
            ttl,
        ) {
            Ok(cert) => {
                tracing::info!(zone = %self.zone, mesh = %r.mesh, "issued the zone's intermediate CA");
                IntermediateCa {
                    mesh: r.mesh.clone(),
                    not_after: causeway_pki::cert_info(&cert)
                        .map(|i| i.not_after)
                        .unwrap_or_default(),
                    cert_pem: format!("{cert}{}", ca.cert_pem),
                    root_pem: ca.cert_pem,
                    error: String::new(),
                }
            }
            Err(e) => fail(format!("csr_pem: {e}")),
        }
    }

    /// Collects a zone change set; on its last chunk, reconciles it with what global
    /// holds for the zone and writes the difference through Raft.
    async fn zone_resources(&mut self, set: ZoneChangeSet) -> Result<(), End> {
        if self.incoming.is_empty() {
            self.incoming_full = set.full;
        }
        self.incoming.extend(set.changes);
        if !set.last {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.incoming);
        let full = self.incoming_full;
        let mut refused: Vec<String> = Vec::new();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for c in changes {
            match c.change {
                Some(change::Change::Upsert(json)) => match Resource::from_json(&json) {
                    Ok(r) if !zone_may_own(&r.kind) => {
                        refused.push(format!("{}: a zone cannot own a {}", r.key(), r.kind))
                    }
                    Ok(r) => match causeway_api::validate(&r) {
                        Ok(()) => upserts.push(r),
                        Err(e) => refused.push(format!("{}: {e}", r.key())),
                    },
                    Err(e) => refused.push(format!("invalid resource: {e}")),
                },
                Some(change::Change::Tombstone(k)) => deletes.push(ResourceKey::from(k)),
                None => {}
            }
        }
        let store = self.kds.inner.store.clone();
        let zone = self.zone.clone();
        let held = tokio::task::spawn_blocking(move || store.resources_of_origin(&zone))
            .await
            .expect("scan does not panic")
            .map_err(|e| End::Refused(send_err(e)))?;
        let held: HashMap<ResourceKey, Resource> = held.into_iter().map(|r| (r.key(), r)).collect();
        if full {
            let sent: std::collections::HashSet<ResourceKey> =
                upserts.iter().map(Resource::key).collect();
            deletes.extend(held.keys().filter(|k| !sent.contains(*k)).cloned());
        }
        deletes.retain(|k| held.contains_key(k));
        upserts.retain(|r| {
            held.get(&r.key())
                .is_none_or(|h| h.spec != r.spec || h.labels != r.labels)
        });
        let (n_up, n_del) = (upserts.len(), deletes.len());
        // Bounded entries: a zone with many dataplanes reports in several writes.
        let mut deletes = deletes.into_iter();
        let mut upserts = upserts.into_iter();
        loop {
            let d: Vec<_> = deletes.by_ref().take(1000).collect();
            let u: Vec<_> = upserts.by_ref().take(1000).collect();
            if d.is_empty() && u.is_empty() {
                break;
            }
            match self
                .kds
                .inner
                .raft
                .propose(Command::ZoneSync {
                    zone: self.zone.clone(),
                    upserts: u,
                    deletes: d,
                })
                .await
            {
                Ok(WriteOutcome::ZoneSynced { refused: r }) => {
                    refused.extend(r.into_iter().map(|(k, why)| format!("{k}: {why}")))
                }
                Ok(_) => {}
                Err(e) => {
                    // The zone resends everything on its next connection.
                    return Err(End::Refused(Status::unavailable(format!(
                        "recording the zone's resources: {e}; reconnect"
                    ))));
                }
            }
        }
        if !refused.is_empty() {
            tracing::warn!(zone = %self.zone, ?refused, "refused some of the zone's resources");
        }
        tracing::debug!(zone = %self.zone, full, upserts = n_up, deletes = n_del, "recorded zone resources");
        self.send(global_message::Msg::ZoneAck(ZoneAck {
            seq: set.seq,
            refused,
        }))
        .await
    }
}

#[tonic::async_trait]
impl Kds for KdsService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = req.remote_addr();
        let r = req.into_inner();
        let key = zone_token::current_key(&self.inner.store, &self.inner.sealer)
            .map_err(Status::unavailable)?;
        let claims = zone_token::verify(&key, &r.token, now_unix()).map_err(|e| {
            tracing::warn!(peer = ?peer, zone = %r.zone, reason = %e, "refused a zone enrollment");
            Status::unauthenticated(e.to_string())
        })?;
        if !r.zone.is_empty() && r.zone != claims.zone {
            tracing::warn!(peer = ?peer, zone = %r.zone, token_zone = %claims.zone, "refused a zone enrollment: token of another zone");
            return Err(Status::permission_denied(format!(
                "the token is for zone {:?}, not {:?}",
                claims.zone, r.zone
            )));
        }
        // Revocations are writes; read them linearizably.
        self.inner
            .raft
            .read_barrier()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match self.inner.store.zone_token(&claims.zone, &claims.id) {
            Ok(Some(ZoneTokenRecord { sha256, .. })) if sha256 == zone_token::hash(&r.token) => {}
            Ok(_) => {
                tracing::warn!(peer = ?peer, zone = %claims.zone, token_id = %claims.id, "refused a zone enrollment: token revoked");
                return Err(Status::permission_denied(format!(
                    "the token {} of zone {:?} was revoked; create a new one with `causeway zone token create --zone {}`",
                    claims.id, claims.zone, claims.zone
                )));
            }
            Err(e) => return Err(send_err(e)),
        }
        self.check_allowed(&claims.zone, &claims.id, peer)?;
        // The token is spent on this key before anything is signed: a second enrolment
        // with it, by anyone holding another key, is refused.
        let key_sha256 = causeway_pki::csr_public_key_sha256(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        self.inner
            .raft
            .propose(Command::UseZoneToken {
                zone: claims.zone.clone(),
                id: claims.id.clone(),
                sha256: zone_token::hash(&r.token),
                key_sha256,
            })
            .await
            .map_err(|e| match e {
                RaftError::Rejected(ApplyError::Token(why)) => {
                    tracing::warn!(peer = ?peer, zone = %claims.zone, token_id = %claims.id, reason = %why, "refused a zone enrollment");
                    Status::permission_denied(why)
                }
                e => Status::unavailable(e.to_string()),
            })?;
        let resp = self.sign_zone_cert(&claims.zone, &claims.id, &r.csr_pem)?;
        self.ensure_zone_resource(&claims.zone).await;
        tracing::info!(zone = %claims.zone, token_id = %claims.id, peer = ?peer, "zone enrolled");
        Ok(Response::new(resp))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        let (zone, token_id) = self.peer_zone(&req)?;
        let resp = self.sign_zone_cert(&zone, &token_id, &req.get_ref().csr_pem)?;
        tracing::info!(zone = %zone, "renewed the zone certificate");
        Ok(Response::new(resp))
    }

    type SyncStream = ReceiverStream<Result<GlobalMessage, Status>>;

    async fn sync(
        &self,
        req: Request<Streaming<ZoneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let (zone, token_id) = self.peer_zone(&req)?;
        let zone_ca_sha256 = self.signer_of(&req);
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let kds = self.clone();
        let hello_deadline = self.inner.settings.heartbeat * 3;
        tokio::spawn(async move {
            let hello = match tokio::time::timeout(hello_deadline, inbound.next()).await {
                Ok(Some(Ok(ZoneMessage {
                    msg: Some(zone_message::Msg::Hello(h)),
                }))) => h,
                _ => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "the first message on a KDS stream must be a Hello",
                        )))
                        .await;
                    return;
                }
            };
            if hello.zone != zone {
                let _ = tx
                    .send(Err(Status::permission_denied(format!(
                        "the certificate is for zone {zone:?}, the Hello names {:?}",
                        hello.zone
                    ))))
                    .await;
                return;
            }
            let now = now_ms();
            let status = ZoneStatusRecord {
                zone: zone.clone(),
                connected: true,
                node: kds.inner.node_id,
                session: rand::random(),
                connected_unix_ms: now,
                last_seen_unix_ms: now,
                revision_applied: hello.last_revision,
                version: hello.version.clone(),
                zone_ca_sha256,
                ..Default::default()
            };
            tracing::info!(zone = %zone, peer = ?peer, since = hello.last_revision, "zone connected");
            let (dump_tx, dump_rx) = mpsc::channel(4);
            let session = Session {
                kds: kds.clone(),
                zone: zone.clone(),
                token_id,
                peer,
                status,
                tx: tx.clone(),
                incoming: Vec::new(),
                incoming_full: false,
                pending_dumps: HashMap::new(),
                next_dump: 0,
                last_sent: (0, false),
                // The first acknowledgement (initial sync done) is recorded at once.
                last_status: Instant::now()
                    .checked_sub(Duration::from_secs(60))
                    .unwrap_or_else(Instant::now),
            };
            session.register(dump_tx);
            kds.propose_status(session.status.clone());
            let session_id = session.status.session;
            let end = session.run(inbound, dump_rx, hello.last_revision).await;
            if let Err(End::Refused(st)) = end {
                let _ = tx.send(Err(st)).await;
            }
            let last = {
                let mut sessions = kds.inner.sessions.lock().expect("sessions lock");
                match sessions.get(&zone) {
                    Some(s) if s.session == session_id => sessions.remove(&zone).map(|s| s.status),
                    _ => None,
                }
            };
            if let Some(mut st) = last {
                st.connected = false;
                st.last_seen_unix_ms = now_ms();
                kds.propose_status(st);
            }
            tracing::info!(zone = %zone, "zone disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Each mesh's roots (two during a root CA rotation) and the one that signs, for
/// `Trust` (see [`crate::ca_rotation`]).
fn mesh_roots(store: &Store) -> Vec<MeshRoots> {
    let Ok(meshes) = store.list("Mesh", "", &[], None, usize::MAX) else {
        return Vec::new();
    };
    meshes
        .items
        .iter()
        .filter_map(|m| {
            let ca = store.mesh_ca(&m.name).ok()??;
            let signing = causeway_pki::certs(&ca.cert_pem, "mesh root")
                .ok()?
                .into_iter()
                .next()?;
            Some(MeshRoots {
                mesh: m.name.clone(),
                bundle_pem: crate::ca_rotation::bundle(&ca)
                    .iter()
                    .map(|pem| format!("{}\n", pem.trim_end()))
                    .collect(),
                signing_sha256: causeway_pki::sha256_hex(&signing),
            })
        })
        .collect()
}
