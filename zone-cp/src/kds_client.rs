//! The KDS client: enrolls with the zone token once (and again with a new token, which
//! is how a cut-off zone comes back), then keeps one sync stream to a global node. It applies global's change sets atomically, reports the zone's own
//! resources (all of them on each connect, then changes), answers config dumps, renews
//! its certificate and fetches intermediate mesh CAs. Reconnects rotate through the
//! global addresses and back off with jitter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::kds::kds_client::KdsClient;
use causeway_api::kds::{
    Ack, Change, EnrollRequest, GlobalMessage, Heartbeat, Hello, IntermediateRequest, RenewRequest,
    ZoneChangeSet, ZoneInsight, ZoneMessage, ZoneSignal, ZoneStats, change, global_message,
    zone_message,
};
use causeway_api::{Resource, ResourceKey};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Shared;
use crate::store::{Identity, Intermediate, due_for_renewal};

/// Renew certificates once this share of their lifetime has passed.
const RENEW_AT_PERCENT: i64 = 70;

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One applied change set, for `/status`, tests and the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    pub revision: u64,
    pub full: bool,
    /// Resources and tombstones in the set.
    pub changes: usize,
    /// Encoded bytes of the set's messages.
    pub bytes: usize,
    /// Messages (chunks) the set came in.
    pub messages: usize,
    pub at_unix_ms: i64,
}

/// Runs until the process stops: connect, sync, back off, reconnect.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0usize;
    loop {
        let addr = shared.cfg.globals[attempt % shared.cfg.globals.len()].clone();
        attempt += 1;
        let started = Instant::now();
        match session(&shared, &addr).await {
            Ok(()) => tracing::info!(global = %addr, "KDS stream ended; reconnecting"),
            Err(e) => tracing::warn!(global = %addr, error = %e, "KDS session failed; retrying"),
        }
        shared.set_connected(None);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        // Full jitter: spread zones out after a global outage.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
}

fn endpoint(shared: &Shared, addr: &str, ca_pem: &str) -> anyhow::Result<Endpoint> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    Ok(Endpoint::from_shared(addr.to_string())
        .map_err(|e| anyhow::anyhow!("--global {addr:?}: {e}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(shared.cfg.heartbeat)
        .keep_alive_timeout(shared.cfg.heartbeat * 3)
        .keep_alive_while_idle(true))
}

async fn channel(
    shared: &Shared,
    addr: &str,
    ca_pem: &str,
    id: Option<&Identity>,
) -> anyhow::Result<Channel> {
    let mut ep = endpoint(shared, addr, ca_pem)?;
    if let Some(id) = id {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &id.cert_pem,
                &id.key_pem,
            ));
        ep = ep.tls_config(tls)?;
    }
    Ok(tokio::time::timeout(Duration::from_secs(10), ep.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))??)
}

fn client(ch: Channel) -> KdsClient<Channel> {
    KdsClient::new(ch)
        .max_decoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(2 * causeway_api::kds::MAX_MESSAGE_BYTES)
}

/// The zone's identity, enrolling with the token when it has none, or when the token
/// given is another than the one it enrolled with: a new zone token enrols the zone
/// again, keeping its store (for a zone cut off by a forced CA rotation, or whose
/// certificate was lost). Until that succeeds the zone keeps its current identity.
async fn identity(shared: &Shared, addr: &str) -> anyhow::Result<Identity> {
    let token = shared.cfg.token.as_deref().map(str::trim);
    let claims = token.and_then(|t| causeway_api::zone_token::peek(t).ok());
    let Some(id) = shared.store.identity()? else {
        let token = token.ok_or_else(|| {
            anyhow::anyhow!("this zone has not enrolled yet; pass --token-file with a zone token")
        })?;
        let claims = causeway_api::zone_token::peek(token)?;
        return Ok(enroll(shared, addr, token, claims).await?);
    };
    let (Some(token), Some(claims)) = (token, claims) else {
        return Ok(id);
    };
    if id.enrolled_with.is_empty() {
        // Enrolled by an earlier version, which did not record the token: take the one
        // given as that token (the usual case), so only a later one enrols again.
        let id = Identity {
            enrolled_with: claims.id,
            ..id
        };
        shared.store.set_identity(&id)?;
        return Ok(id);
    }
    if claims.id == id.enrolled_with
        || !shared
            .reenrolment
            .lock()
            .expect("reenrolment lock")
            .due(&claims.id)
    {
        return Ok(id);
    }
    let token_id = claims.id.clone();
    match enroll(shared, addr, token, claims).await {
        Ok(new) => {
            tracing::warn!(token_id = %token_id, "enrolled again with a new zone token (the store is kept)");
            Ok(new)
        }
        Err(e) => {
            let refused = matches!(e, EnrollError::Refused(_));
            tracing::warn!(token_id = %token_id, error = %e, refused, "a new zone token was given but enrolling with it failed; keeping the current certificate");
            shared
                .reenrolment
                .lock()
                .expect("reenrolment lock")
                .failed(&token_id, refused);
            Ok(id)
        }
    }
}

/// Whether to try enrolling again with a new token: once it is refused, never with that
/// token (it is spent, revoked or expired); after a failure to reach global, at most
/// every [`Reenrolment::RETRY`].
#[derive(Debug, Default)]
pub(crate) struct Reenrolment {
    refused: Option<String>,
    last_failure: Option<Instant>,
}

impl Reenrolment {
    const RETRY: Duration = Duration::from_secs(30);

    fn due(&self, token_id: &str) -> bool {
        self.refused.as_deref() != Some(token_id)
            && self.last_failure.is_none_or(|t| t.elapsed() >= Self::RETRY)
    }

    fn failed(&mut self, token_id: &str, refused: bool) {
        if refused {
            self.refused = Some(token_id.to_string());
        }
        self.last_failure = Some(Instant::now());
    }
}

/// Why enrolling failed: global refused the token, or it could not be asked.
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error("enrollment refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for EnrollError {
    fn from(e: crate::store::StoreError) -> Self {
        EnrollError::Other(e.into())
    }
}

/// Enrolls with `token`: a certificate for a key of the zone's, signed by global.
async fn enroll(
    shared: &Shared,
    addr: &str,
    token: &str,
    claims: causeway_api::zone_token::ZoneTokenClaims,
) -> Result<Identity, EnrollError> {
    if claims.zone != shared.cfg.zone {
        return Err(EnrollError::Refused(format!(
            "the token is for zone {:?}, but this is zone {:?}",
            claims.zone, shared.cfg.zone
        )));
    }
    // The token is single use: a retry after a lost answer must present the same key.
    let csr = match shared.store.enrollment_key()? {
        Some(key_pem) => {
            causeway_pki::csr_for_key(&shared.cfg.zone, &key_pem).map_err(anyhow::Error::from)?
        }
        None => {
            let csr = causeway_pki::generate_csr(&shared.cfg.zone).map_err(anyhow::Error::from)?;
            shared.store.set_enrollment_key(&csr.key_pem)?;
            csr
        }
    };
    let ch = channel(shared, addr, &claims.ca, None).await?;
    let resp = client(ch)
        .enroll(EnrollRequest {
            token: token.to_string(),
            csr_pem: csr.csr_pem,
            zone: shared.cfg.zone.clone(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                EnrollError::Other(anyhow::anyhow!("enrolling: {}", s.message()))
            }
            _ => EnrollError::Refused(s.message().to_string()),
        })?
        .into_inner();
    let info = causeway_pki::cert_info(&resp.cert_pem).map_err(anyhow::Error::from)?;
    let id = Identity {
        cert_pem: resp.cert_pem,
        key_pem: csr.key_pem,
        global_ca_pem: claims.ca,
        not_before: info.not_before,
        not_after: info.not_after,
        enrolled_with: claims.id,
    };
    shared.store.set_identity(&id)?;
    tracing::info!(zone = %shared.cfg.zone, not_after = id.not_after, "enrolled with the global control plane");
    Ok(id)
}

async fn renew(shared: &Shared, addr: &str, id: &Identity) -> anyhow::Result<Identity> {
    let csr = causeway_pki::generate_csr(&shared.cfg.zone)?;
    let ch = channel(shared, addr, &id.global_ca_pem, Some(id)).await?;
    let resp = client(ch)
        .renew(RenewRequest {
            csr_pem: csr.csr_pem,
        })
        .await
        .map_err(|s| anyhow::anyhow!("renewal refused: {}", s.message()))?
        .into_inner();
    let info = causeway_pki::cert_info(&resp.cert_pem)?;
    // The API CAs as last stored: global may have named new ones during this session.
    let global_ca_pem = shared
        .store
        .identity()?
        .map_or_else(|| id.global_ca_pem.clone(), |stored| stored.global_ca_pem);
    let new = Identity {
        cert_pem: resp.cert_pem,
        key_pem: csr.key_pem,
        global_ca_pem,
        not_before: info.not_before,
        not_after: info.not_after,
        enrolled_with: id.enrolled_with.clone(),
    };
    shared.store.set_identity(&new)?;
    tracing::info!(not_after = new.not_after, "renewed the zone certificate");
    Ok(new)
}

fn upsert(r: &Resource) -> Change {
    Change {
        change: Some(change::Change::Upsert(
            serde_json::to_vec(r).expect("resources serialize"),
        )),
    }
}

/// State of one connected stream.
struct Stream {
    shared: Arc<Shared>,
    tx: mpsc::Sender<ZoneMessage>,
    incoming: Vec<Change>,
    incoming_full: bool,
    incoming_bytes: usize,
    incoming_messages: usize,
    seq: u64,
    /// Meshes whose intermediate CA was requested: the key waiting for its certificate.
    csr_keys: HashMap<String, (String, Instant)>,
    /// Global named a zone CA that did not sign this zone's certificate (a zone CA
    /// rotation): renew, and reconnect with the new certificate.
    renew_now: bool,
}

impl Stream {
    async fn send(&self, msg: zone_message::Msg) -> anyhow::Result<()> {
        self.tx
            .send(ZoneMessage { msg: Some(msg) })
            .await
            .map_err(|_| anyhow::anyhow!("the stream closed"))
    }

    /// Reports owned resources: everything (`full`) or the given changes, chunked.
    async fn report(&mut self, full: bool, changes: Vec<Change>) -> anyhow::Result<()> {
        let chunks = causeway_api::kds::chunk_changes(changes);
        let n = chunks.len();
        self.seq += 1;
        for (i, changes) in chunks.into_iter().enumerate() {
            self.send(zone_message::Msg::Resources(ZoneChangeSet {
                seq: self.seq,
                full,
                last: i + 1 == n,
                changes,
            }))
            .await?;
        }
        Ok(())
    }

    async fn insight(&self) -> anyhow::Result<()> {
        let counts = self.shared.counts();
        self.send(zone_message::Msg::Insight(ZoneInsight {
            version: self.shared.cfg.version.clone(),
            dataplanes: counts.dataplanes,
            zone_ingresses: counts.zone_ingresses,
            connected_proxies: self.shared.connected_proxies(),
            proxies_nacking: self.shared.proxies_nacking(),
            last_config_push_unix_ms: self.shared.last_push_ms(),
            resources: counts.resources,
            mesh_ca: self.shared.mesh_ca_progress(),
            trusted_api_ca_sha256: self
                .shared
                .store
                .identity()?
                .map(|id| causeway_pki::cert_shas(&id.global_ca_pem))
                .unwrap_or_default(),
        }))
        .await
    }

    /// Reports the zone's golden signals (the last 1, 5 and 15 minutes) and the
    /// endpoints its proxies hold out; each report replaces the last on global. Past the
    /// message limit the busiest signals go.
    async fn stats(&self) -> anyhow::Result<()> {
        let out_endpoints = {
            let proxies = self.shared.proxies.lock().expect("proxies lock");
            causeway_api::instance_health::out_endpoints(
                proxies
                    .values()
                    .filter_map(|p| p.report.as_ref().map(|r| (p.mesh.as_str(), r))),
            )
        };
        let (windows, dropped) = {
            let mut a = self.shared.signals.lock().expect("signals lock");
            let now = u64::try_from(now_ms()).unwrap_or(0);
            (a.windows(now), a.dropped())
        };
        let mut signals: Vec<ZoneSignal> = windows
            .into_iter()
            .map(|(k, w)| causeway_api::stats::zone_signal(k, w))
            .collect();
        let mut dropped = dropped;
        let limit = causeway_api::kds::MAX_MESSAGE_BYTES.saturating_sub(
            out_endpoints
                .iter()
                .map(|e| e.encoded_len() + 4)
                .sum::<usize>(),
        );
        if signals.iter().map(|s| s.encoded_len() + 4).sum::<usize>() > limit {
            signals.sort_by_key(|s| std::cmp::Reverse(s.windows.last().map_or(0, |w| w.requests)));
            let mut size = 0;
            let keep = signals
                .iter()
                .take_while(|s| {
                    size += s.encoded_len() + 4;
                    size <= limit
                })
                .count();
            dropped += (signals.len() - keep) as u64;
            signals.truncate(keep);
        }
        self.send(zone_message::Msg::Stats(ZoneStats {
            signals,
            dropped,
            out_endpoints,
        }))
        .await
    }

    async fn handle(&mut self, m: GlobalMessage) -> anyhow::Result<()> {
        let bytes = m.encoded_len();
        let Some(msg) = m.msg else { return Ok(()) };
        match msg {
            global_message::Msg::Changes(set) => {
                if self.incoming_messages == 0 {
                    self.incoming_full = set.full;
                }
                self.incoming_bytes += bytes;
                self.incoming_messages += 1;
                self.incoming.extend(set.changes);
                if set.last {
                    self.apply(set.revision).await?;
                }
            }
            global_message::Msg::Heartbeat(_) => {}
            global_message::Msg::Trust(t) => {
                let store = &self.shared.store;
                if let Some(mut id) = store.identity()? {
                    if !t.zone_ca_pem.is_empty()
                        && !causeway_pki::issued_by(&id.cert_pem, &t.zone_ca_pem)
                    {
                        self.renew_now = true;
                    }
                    // An API CA rotation: trust what global names from the next
                    // connection on (this one stays up).
                    if !t.api_ca_bundle_pem.is_empty()
                        && causeway_pki::cert_shas(&t.api_ca_bundle_pem)
                            != causeway_pki::cert_shas(&id.global_ca_pem)
                    {
                        id.global_ca_pem = t.api_ca_bundle_pem.clone();
                        store.set_identity(&id)?;
                        tracing::info!(
                            cas = causeway_pki::cert_shas(&id.global_ca_pem).len(),
                            "the global control plane's API CAs changed: trusting them from the next connection"
                        );
                    }
                }
                let mut keys = vec![t.dataplane_token_public_key.clone()];
                keys.extend(t.retiring_token_public_keys.iter().cloned());
                if store.token_public_keys()? != keys {
                    store.set_token_public_keys(
                        &t.dataplane_token_public_key,
                        &t.retiring_token_public_keys,
                    )?;
                }
                let tokens: Vec<(String, i64)> = t
                    .revoked_tokens
                    .into_iter()
                    .map(|r| (r.id, r.expires_unix))
                    .collect();
                if store.revoked_tokens()? != tokens {
                    store.set_revoked_tokens(&tokens)?;
                    tracing::info!(
                        revoked = tokens.len(),
                        "revoked dataplane and ingress tokens updated"
                    );
                    // Streams of proxies with a revoked token end at the next state change.
                    self.shared.state.send_modify(|v| *v += 1);
                }
                let roots: Vec<crate::store::MeshRoots> = t
                    .mesh_roots
                    .into_iter()
                    .map(|r| crate::store::MeshRoots {
                        trusted_sha256: causeway_pki::certs(&r.bundle_pem, "mesh roots")
                            .unwrap_or_default()
                            .iter()
                            .map(|c| causeway_pki::sha256_hex(c))
                            .collect(),
                        mesh: r.mesh,
                        bundle_pem: r.bundle_pem,
                        signing_sha256: r.signing_sha256,
                    })
                    .collect();
                if store.mesh_roots()? != roots {
                    store.set_mesh_roots(&roots)?;
                    tracing::info!(
                        meshes = roots.len(),
                        rotating = roots.iter().filter(|r| r.trusted_sha256.len() > 1).count(),
                        "the meshes' trusted roots changed"
                    );
                    // Proxies' configs carry the roots: they renew to follow them.
                    self.shared.state.send_modify(|v| *v += 1);
                }
                let revoked: Vec<(String, String)> = t
                    .revoked_cas
                    .into_iter()
                    .map(|r| (r.mesh, r.sha256))
                    .collect();
                if store.revoked_cas()? != revoked {
                    store.set_revoked_cas(&revoked)?;
                    // A revoked intermediate of this zone is dropped; a new one is asked for.
                    for i in store.intermediates()? {
                        let der = causeway_pki::certs(&i.cert_pem, "intermediate")?.remove(0);
                        let sha = causeway_pki::sha256_hex(&der);
                        if revoked.iter().any(|(m, s)| *m == i.mesh && *s == sha) {
                            tracing::warn!(mesh = %i.mesh, "this zone's intermediate CA was revoked; asking for a new one");
                            store.delete_intermediate(&i.mesh)?;
                            self.csr_keys.remove(&i.mesh);
                        }
                    }
                    self.shared.state.send_modify(|v| *v += 1);
                    self.request_intermediates().await?;
                }
            }
            global_message::Msg::ZoneAck(a) => {
                if !a.refused.is_empty() {
                    tracing::warn!(refused = ?a.refused, "global refused some of this zone's resources");
                }
                self.shared.status.lock().expect("status lock").refused = a.refused;
            }
            global_message::Msg::ConfigDumpRequest(r) => {
                let (status, json) = match &r.inspect_dataplane {
                    None => (0, self.shared.config_dump()),
                    // `causeway inspect dataplane` asked of global.
                    Some(k) => {
                        let (status, json) =
                            crate::api::inspect_answer(&self.shared, &k.mesh, &k.name);
                        (u32::from(status.as_u16()), json)
                    }
                };
                self.send(zone_message::Msg::ConfigDump(
                    causeway_api::kds::ConfigDump {
                        id: r.id,
                        json,
                        status,
                    },
                ))
                .await?;
            }
            global_message::Msg::Intermediate(ca) => {
                let Some((key_pem, _)) = self.csr_keys.remove(&ca.mesh) else {
                    return Ok(());
                };
                if !ca.error.is_empty() {
                    tracing::info!(mesh = %ca.mesh, reason = %ca.error, "no intermediate CA yet; will retry");
                    return Ok(());
                }
                let info = causeway_pki::cert_info(&ca.cert_pem)?;
                self.shared.store.set_intermediate(&Intermediate {
                    mesh: ca.mesh.clone(),
                    cert_pem: ca.cert_pem,
                    key_pem,
                    root_pem: ca.root_pem,
                    not_before: info.not_before,
                    not_after: info.not_after,
                })?;
                tracing::info!(mesh = %ca.mesh, not_after = info.not_after, "stored the zone's intermediate CA");
                // Proxies' configs name the current intermediate: they renew from it.
                self.shared.state.send_modify(|v| *v += 1);
            }
        }
        Ok(())
    }

    /// Applies the collected change set atomically and acknowledges it.
    async fn apply(&mut self, revision: u64) -> anyhow::Result<()> {
        let changes = std::mem::take(&mut self.incoming);
        let bytes = std::mem::take(&mut self.incoming_bytes);
        let messages = std::mem::take(&mut self.incoming_messages);
        let full = self.incoming_full;
        let mut upserts = Vec::new();
        let mut tombstones = Vec::new();
        for c in changes {
            match c.change {
                Some(change::Change::Upsert(json)) => upserts.push(Resource::from_json(&json)?),
                Some(change::Change::Tombstone(k)) => tombstones.push(ResourceKey::from(k)),
                None => {}
            }
        }
        let shared = self.shared.clone();
        let n = tokio::task::spawn_blocking(move || {
            shared
                .store
                .apply_set(&shared.cfg.zone, revision, full, &upserts, &tombstones)
        })
        .await
        .expect("apply does not panic")?;
        self.shared.applied(SyncRecord {
            revision,
            full,
            changes: n,
            bytes,
            messages,
            at_unix_ms: now_ms(),
        });
        tracing::debug!(
            revision,
            full,
            changes = n,
            bytes,
            messages,
            "applied a change set"
        );
        self.send(zone_message::Msg::Ack(Ack {
            revision,
            applied_changes: n as u64,
        }))
        .await?;
        self.request_intermediates().await
    }

    /// Asks for an intermediate CA for every mesh with mTLS that lacks a fresh one.
    async fn request_intermediates(&mut self) -> anyhow::Result<()> {
        let meshes = self
            .shared
            .store
            .list(
                "Mesh",
                "",
                None,
                |m| m.spec.get("mtls").is_some(),
                usize::MAX,
            )?
            .0;
        let now = now_unix();
        for m in meshes {
            if let Some((_, asked)) = self.csr_keys.get(&m.name)
                && asked.elapsed() < Duration::from_secs(30)
            {
                continue;
            }
            // A root CA rotation moves signing to a new root: an intermediate from
            // another root is replaced too.
            let signing = self
                .shared
                .store
                .roots_of(&m.name)?
                .map(|r| r.signing_sha256);
            let fresh = self.shared.store.intermediate(&m.name)?.is_some_and(|i| {
                !due_for_renewal(i.not_before, i.not_after, now, RENEW_AT_PERCENT)
                    && signing.as_ref().is_none_or(|s| *s == i.root_sha256())
            });
            if fresh {
                continue;
            }
            let csr = causeway_pki::generate_csr(&format!("{} {}", m.name, self.shared.cfg.zone))?;
            self.csr_keys
                .insert(m.name.clone(), (csr.key_pem, Instant::now()));
            self.send(zone_message::Msg::IntermediateRequest(
                IntermediateRequest {
                    mesh: m.name.clone(),
                    csr_pem: csr.csr_pem,
                },
            ))
            .await?;
        }
        Ok(())
    }
}

/// One connection: identity, stream, sync until the stream breaks.
async fn session(shared: &Arc<Shared>, addr: &str) -> anyhow::Result<()> {
    let mut id = identity(shared, addr).await?;
    if due_for_renewal(id.not_before, id.not_after, now_unix(), RENEW_AT_PERCENT) {
        id = renew(shared, addr, &id).await?;
    }
    let ch = channel(shared, addr, &id.global_ca_pem, Some(&id)).await?;
    let (tx, rx) = mpsc::channel(16);
    let since = shared.store.revision()?;
    tx.send(ZoneMessage {
        msg: Some(zone_message::Msg::Hello(Hello {
            zone: shared.cfg.zone.clone(),
            last_revision: since,
            version: shared.cfg.version.clone(),
        })),
    })
    .await
    .map_err(|_| anyhow::anyhow!("stream closed"))?;
    let mut inbound = client(ch)
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    shared.set_connected(Some(addr.to_string()));
    tracing::info!(global = %addr, since, "KDS stream open");
    let mut st = Stream {
        shared: shared.clone(),
        tx,
        incoming: Vec::new(),
        incoming_full: false,
        incoming_bytes: 0,
        incoming_messages: 0,
        seq: 0,
        csr_keys: HashMap::new(),
        renew_now: false,
    };
    // Everything the zone owns, then what it has; changes follow as they happen.
    shared.take_local_changes();
    let owned: Vec<Change> = shared
        .store
        .owned(&shared.cfg.zone)?
        .iter()
        .map(upsert)
        .collect();
    st.report(true, owned).await?;
    st.insight().await?;
    st.request_intermediates().await?;
    let hb = shared.cfg.heartbeat;
    let mut tick = tokio::time::interval(hb);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut dead_after = causeway_api::kds::silence_limit(hb, None);
    loop {
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(m)) => {
                    last_rx = Instant::now();
                    if let Some(global_message::Msg::Heartbeat(h)) = &m.msg {
                        dead_after = causeway_api::kds::silence_limit(hb, Some(h.interval_ms));
                    }
                    st.handle(m).await?;
                    if st.renew_now {
                        renew(shared, addr, &id).await?;
                        tracing::info!("the zone CA changed: renewed the zone certificate; reconnecting with it");
                        return Ok(());
                    }
                }
                Some(Err(s)) => anyhow::bail!("global closed the stream: {}", s.message()),
                None => return Ok(()),
            },
            _ = shared.local_changed.notified() => {
                let changes: Vec<Change> = shared
                    .take_local_changes()
                    .into_iter()
                    .map(|(k, r)| match r {
                        Some(r) => upsert(&r),
                        None => Change { change: Some(change::Change::Tombstone((&k).into())) },
                    })
                    .collect();
                if !changes.is_empty() {
                    st.report(false, changes).await?;
                    st.insight().await?;
                }
            }
            _ = tick.tick() => {
                if last_rx.elapsed() > dead_after {
                    anyhow::bail!("no message from global within three of its heartbeats ({dead_after:?}); reconnecting");
                }
                st.send(zone_message::Msg::Heartbeat(Heartbeat { sent_unix_ms: now_ms(), interval_ms: hb.as_millis() as u64 })).await?;
                st.insight().await?;
                st.stats().await?;
                if due_for_renewal(id.not_before, id.not_after, now_unix(), RENEW_AT_PERCENT) {
                    // Reconnect with a renewed certificate.
                    return Ok(());
                }
                st.request_intermediates().await?;
            }
        }
    }
}

/// Local changes waiting to be reported, latest per key (`None`: deleted).
pub(crate) type LocalChanges = BTreeMap<ResourceKey, Option<Resource>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_is_not_tried_again_and_an_unreachable_global_after_a_while() {
        let mut r = Reenrolment::default();
        assert!(r.due("t1"));
        r.failed("t1", false);
        assert!(
            !r.due("t1"),
            "retried at once after global could not be reached"
        );
        r.last_failure = Some(Instant::now() - Reenrolment::RETRY);
        assert!(r.due("t1"));
        r.failed("t1", true);
        r.last_failure = Some(Instant::now() - Reenrolment::RETRY);
        assert!(!r.due("t1"), "a refused token tried again");
        assert!(r.due("t2"), "a newer token is tried");
    }
}
