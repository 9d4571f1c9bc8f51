//! The DDS server: where sidecars get their certificate (from a CSR and a dataplane
//! token) and, over one stream each, register their Dataplane and receive their
//! [`ProxyConfig`](causeway_api::proxy_config::ProxyConfig) again whenever an input
//! changes. Configs are recomputed on every change of the zone's state, but sent only
//! to the proxies whose config actually changed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::inspect::{ConfigReply, ProxyReport};
use causeway_api::kds::dds::dds_server::{Dds, DdsServer};
use causeway_api::kds::dds::{
    ConfigSnapshot, ControlMessage, CpTrust, ProxyMessage, RenewedToken, SignRequest, SignResponse,
    control_message, proxy_message,
};
use causeway_api::{
    DataplaneSpec, DrillMode, MeshSpec, Resource, ResourceKey, SERVICE_TAG, ZONE_TAG,
};
use causeway_pki::dataplane_token::{self, DataplaneTokenClaims, IngressTokenClaims};
use causeway_pki::{CertKey, Profile};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::proxy_config::{self, MeshInputs};
use crate::store::LocalWriteError;

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What the zone knows about a connected proxy, for `/status`, insight and `inspect`.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProxyStatus {
    pub(crate) mesh: String,
    pub(crate) dataplane: String,
    pub(crate) service: String,
    /// A zone ingress rather than a sidecar (`dataplane` is then the ZoneIngress's name).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ingress: bool,
    /// Unique per stream, so an old stream's end does not unregister a newer one.
    #[serde(skip)]
    pub(crate) stream: u64,
    pub(crate) connected_unix_ms: i64,
    pub(crate) sent_version: Option<String>,
    /// The last config it accepted.
    pub(crate) ack: Option<ConfigReply>,
    /// The last config it rejected and why, until it accepts a later one.
    pub(crate) nack: Option<ConfigReply>,
    /// What it last reported of itself (certificate, endpoints), for `inspect` only:
    /// too big for `/status`.
    #[serde(skip)]
    pub(crate) report: Option<ProxyReport>,
    /// When that report arrived, Unix ms; 0 if none yet.
    #[serde(skip)]
    pub(crate) reported_unix_ms: i64,
    /// Why its last report could not be read.
    #[serde(skip)]
    pub(crate) report_error: Option<String>,
    /// Why the zone cannot compute this proxy's config now (it keeps the last one
    /// sent); cleared once it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) compute_error: Option<String>,
    pub(crate) last_push_unix_ms: i64,
    /// The zone API CAs it last said it trusts (SHA-256s), after the zone sent them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) trusted_cp_ca_sha256: Vec<String>,
}

#[derive(Clone)]
pub(crate) struct DdsService {
    shared: Arc<Shared>,
}

impl DdsService {
    fn verify(&self, token: &str) -> Result<DataplaneTokenClaims, Status> {
        let keys = self.token_keys()?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let claims =
            dataplane_token::verify_with_any(dataplane_token::verify, &keys, token, now_unix())
                .map_err(|e| {
                    tracing::warn!(reason = %e, "refused a dataplane token");
                    Status::unauthenticated(e.to_string())
                })?;
        self.not_revoked("dataplane", &claims.id)?;
        Ok(claims)
    }

    /// The public keys that verify a proxy's token: global's (the signing one, and
    /// those a rotation keeps for its overlap), then this zone's renewal key and those
    /// its rotation keeps for their overlap.
    fn token_keys(&self) -> Result<Vec<String>, Status> {
        let mut keys = self
            .shared
            .store
            .token_public_keys()
            .map_err(|e| Status::internal(e.to_string()))?;
        if keys.is_empty() {
            return Err(Status::unavailable(
                "this zone has not received the token key from global yet; retry",
            ));
        }
        keys.push(self.shared.token_renewal.borrow().1.clone());
        keys.extend(
            self.shared
                .store
                .retiring_renewal_keys(now_unix())
                .map_err(|e| Status::internal(e.to_string()))?,
        );
        Ok(keys)
    }

    fn not_revoked(&self, kind: &str, id: &str) -> Result<(), Status> {
        not_revoked(&self.shared, kind, id)
    }

    fn verify_ingress(&self, token: &str) -> Result<IngressTokenClaims, Status> {
        let keys = self.token_keys()?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let claims = dataplane_token::verify_with_any(
            dataplane_token::verify_ingress,
            &keys,
            token,
            now_unix(),
        )
        .map_err(|e| {
            tracing::warn!(reason = %e, "refused an ingress token");
            Status::unauthenticated(e.to_string())
        })?;
        self.not_revoked("ingress", &claims.id)?;
        if claims.zone != self.shared.cfg.zone {
            tracing::warn!(token_zone = %claims.zone, "refused an ingress token of another zone");
            return Err(Status::permission_denied(format!(
                "the ingress token is for zone {:?}; this is zone {:?}",
                claims.zone, self.shared.cfg.zone
            )));
        }
        Ok(claims)
    }
}

/// Refuses a token that global revoked (sent over KDS): at registration, at certificate
/// signing, and on a live stream at the next state change (a revocation is one).
fn not_revoked(shared: &Shared, kind: &str, id: &str) -> Result<(), Status> {
    let revoked = shared
        .store
        .revoked_tokens()
        .map_err(|e| Status::internal(e.to_string()))?;
    if revoked.iter().any(|(r, _)| r == id) {
        tracing::warn!(kind, token_id = %id, "refused a revoked token");
        return Err(Status::permission_denied(format!(
            "the {kind} token {id} was revoked; ask for a new one"
        )));
    }
    Ok(())
}

/// The mesh's resources as this zone holds them, cached per state version.
pub(crate) fn mesh_inputs(shared: &Shared, mesh: &str) -> Result<Arc<MeshInputs>, Status> {
    let version = *shared.state.borrow();
    if let Some((v, inputs)) = shared.inputs_cache.lock().expect("cache lock").get(mesh)
        && *v == version
    {
        return Ok(inputs.clone());
    }
    let store = &shared.store;
    let err = |e: crate::store::StoreError| Status::internal(e.to_string());
    let all = |kind: &str, m: &str| {
        store
            .list(kind, m, None, |_| true, usize::MAX)
            .map(|(items, _)| items)
    };
    let mut inputs = MeshInputs {
        zone: shared.cfg.zone.clone(),
        mesh: store
            .get(&ResourceKey {
                kind: "Mesh".into(),
                mesh: String::new(),
                name: mesh.into(),
            })
            .map_err(err)?,
        dataplanes: all("Dataplane", mesh).map_err(err)?,
        ingresses: all("ZoneIngress", mesh).map_err(err)?,
        zones: all("Zone", "").map_err(err)?,
        policies: Vec::new(),
        revoked_cas: store
            .revoked_cas()
            .map_err(err)?
            .into_iter()
            .filter(|(m, _)| m == mesh)
            .map(|(_, sha)| sha)
            .collect(),
        trusted_roots: store
            .roots_of(mesh)
            .map_err(err)?
            .map(|r| r.trusted_sha256)
            .unwrap_or_default(),
        issuer: store
            .intermediate_hashes(mesh)
            .map_err(err)?
            .map(|(sha, _)| sha),
        drilled_zones: Vec::new(),
        blackholed_zones: Vec::new(),
        virtual_ips: Default::default(),
    };
    inputs.add_virtual_ips(&all("VirtualIp", mesh).map_err(err)?);
    for t in causeway_api::types().iter().filter(|t| t.is_policy()) {
        inputs.policies.extend(all(t.kind, mesh).map_err(err)?);
    }
    let now = time::OffsetDateTime::now_utc();
    // A drained zone leaves every config; a blackholed one stays in them (other zones
    // hear nothing from the control plane), and only its own ingresses go silent.
    for (_, d) in crate::drill::drills(store).map_err(err)? {
        if d.mesh == mesh && d.active_at(now) {
            match d.mode {
                DrillMode::Drain => inputs.drilled_zones.push(d.zone),
                DrillMode::Blackhole => inputs.blackholed_zones.push(d.zone),
            }
        }
    }
    let inputs = Arc::new(inputs);
    shared
        .inputs_cache
        .lock()
        .expect("cache lock")
        .insert(mesh.to_string(), (version, inputs.clone()));
    Ok(inputs)
}

/// A workload certificate for `service` in `mesh` from a CSR, signed by this zone's
/// intermediate CA of the mesh: for sidecars (after their token is checked) and for
/// the zone's own drill probes.
/// `tags` go into the certificate as URI SANs after the SPIFFE id, so callers can be
/// told apart by tag (MeshSubset sources).
pub(crate) fn sign_workload(
    shared: &Shared,
    mesh: &str,
    service: &str,
    tags: &std::collections::BTreeMap<String, String>,
    csr_pem: &str,
) -> Result<SignResponse, Status> {
    let spec = mesh_spec(shared, mesh)?;
    if spec.mtls.is_none() {
        return Err(Status::failed_precondition(format!(
            "mesh {:?} has no mTLS; there is no certificate to issue",
            mesh
        )));
    }
    let inter = shared
        .store
        .intermediate(mesh)
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| {
            Status::unavailable(format!(
                "this zone has no intermediate CA for mesh {:?} yet; retry",
                mesh
            ))
        })?;
    let ca = CertKey {
        cert_pem: first_cert(&inter.cert_pem),
        key_pem: inter.key_pem.clone(),
    };
    let id = causeway_api::proxy_config::spiffe_id(spec.trust_domain_or(mesh), service);
    let mut names = vec![id.clone()];
    names.extend(tags.iter().map(|(k, v)| causeway_pki::tag_uri(k, v)));
    let ttl = spec.certificate_ttl.as_std();
    let leaf = causeway_pki::sign_csr(
        &ca,
        csr_pem,
        &Profile::Leaf {
            common_name: service.to_string(),
            names,
        },
        ttl,
    )
    .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
    let info = causeway_pki::cert_info(&leaf).map_err(|e| Status::internal(e.to_string()))?;
    // From the issue time: not_before is backdated for clock skew.
    let issued = now_unix();
    let renew_at =
        issued + ((info.not_after - issued) as f64 * spec.certificate_renew_at.fraction()) as i64;
    tracing::debug!(%id, not_after = info.not_after, "issued a workload certificate");
    shared.metrics.certificates_issued.inc();
    // The mesh's roots (two during a root CA rotation), and always the one above this
    // certificate.
    let mut bundle = shared
        .store
        .roots_of(mesh)
        .map_err(|e| Status::internal(e.to_string()))?
        .map(|r| r.bundle_pem)
        .unwrap_or_default();
    if !bundle.contains(inter.root_pem.trim()) {
        bundle = format!("{}\n{bundle}", inter.root_pem.trim_end());
    }
    Ok(SignResponse {
        cert_chain_pem: format!("{leaf}{}", ca.cert_pem),
        trust_bundle_pem: bundle,
        not_before: info.not_before,
        not_after: info.not_after,
        renew_at,
    })
}

fn mesh_spec(shared: &Shared, mesh: &str) -> Result<MeshSpec, Status> {
    let key = ResourceKey {
        kind: "Mesh".into(),
        mesh: String::new(),
        name: mesh.into(),
    };
    let m = shared
        .store
        .get(&key)
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| Status::not_found(format!("mesh {mesh:?} is not known in this zone")))?;
    serde_json::from_value(m.spec).map_err(|e| Status::internal(e.to_string()))
}

/// The tags a workload certificate for the Dataplane `name` carries: the tags its
/// inbounds (all of the token's service) share, with the service and this zone as
/// `causeway.io/service` and `causeway.io/zone`. From the Dataplane as this zone
/// registered it (its DDS stream), so a sidecar cannot claim tags in its CSR; the
/// sidecar asks once its stream is up.
fn registered_tags(
    shared: &Shared,
    claims: &DataplaneTokenClaims,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, Status> {
    let key = ResourceKey {
        kind: "Dataplane".into(),
        mesh: claims.mesh.clone(),
        name: name.into(),
    };
    let dp = shared
        .store
        .get(&key)
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| {
            Status::unavailable(format!(
                "dataplane {name:?} is not registered with this zone yet (its DDS stream registers it); retry"
            ))
        })?;
    if dp.origin.as_deref() != Some(shared.cfg.zone.as_str()) {
        return Err(Status::permission_denied(format!(
            "dataplane {name:?} is not registered with this zone"
        )));
    }
    let spec: DataplaneSpec =
        serde_json::from_value(dp.spec).map_err(|e| Status::internal(e.to_string()))?;
    let mut inbounds = spec.inbound.iter();
    let mut tags = match inbounds.next() {
        Some(first) if first.service == claims.service => first.tags.clone(),
        _ => {
            return Err(Status::permission_denied(format!(
                "dataplane {name:?} does not serve {:?}",
                claims.service
            )));
        }
    };
    for ib in inbounds {
        if ib.service != claims.service {
            return Err(Status::permission_denied(format!(
                "dataplane {name:?} serves {:?} too; its token is for {:?}",
                ib.service, claims.service
            )));
        }
        tags.retain(|k, v| ib.tags.get(k) == Some(v));
    }
    tags.insert(SERVICE_TAG.into(), claims.service.clone());
    tags.insert(ZONE_TAG.into(), shared.cfg.zone.clone());
    Ok(tags)
}

fn first_cert(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(i) => format!("{}\n", &pem[..i + END.len()]),
        None => pem.to_string(),
    }
}

#[tonic::async_trait]
impl Dds for DdsService {
    async fn sign(&self, req: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let r = req.into_inner();
        let claims = self.verify(&r.token)?;
        let tags = if r.dataplane.is_empty() {
            std::collections::BTreeMap::new()
        } else {
            registered_tags(&self.shared, &claims, &r.dataplane)?
        };
        sign_workload(
            &self.shared,
            &claims.mesh,
            &claims.service,
            &tags,
            &r.csr_pem,
        )
        .map(Response::new)
    }

    type StreamStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.next()).await {
            Ok(Some(Ok(ProxyMessage {
                msg: Some(proxy_message::Msg::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a ProxyHello",
                ));
            }
        };
        let claims = self.verify(&hello.token)?;
        let dp = Resource::from_json(&hello.dataplane_json)
            .map_err(|e| Status::invalid_argument(format!("dataplane: {e}")))?;
        check_dataplane(&dp, &claims)?;
        claim_name(&self.shared, &dp, &claims)?;
        let key = register(&self.shared, dp)?.key();
        let stream_id: u64 = rand::random();
        self.shared.proxies.lock().expect("proxies lock").insert(
            key.clone(),
            ProxyStatus {
                mesh: claims.mesh.clone(),
                dataplane: key.name.clone(),
                service: claims.service.clone(),
                ingress: false,
                stream: stream_id,
                connected_unix_ms: now_ms(),
                ..ProxyStatus::default()
            },
        );
        self.shared
            .lately_gone
            .lock()
            .expect("lately gone lock")
            .remove(&key);
        tracing::info!(dataplane = %key, "proxy connected");
        let (tx, rx) = mpsc::channel(4);
        renew_token(
            self.shared.clone(),
            "dataplane",
            claims.clone(),
            dataplane_token::create,
            tx.clone(),
        );
        send_cp_trust(self.shared.clone(), tx.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let end = serve_proxy(&shared, &key, stream_id, &claims.id, inbound, &tx).await;
            if let Err(st) = end {
                let _ = tx.send(Err(st)).await;
            }
            unregister(&shared, &key, stream_id);
            tracing::info!(dataplane = %key, "proxy disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type IngressStreamStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn ingress_stream(
        &self,
        req: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::IngressStreamStream>, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.next()).await {
            Ok(Some(Ok(ProxyMessage {
                msg: Some(proxy_message::Msg::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a ProxyHello",
                ));
            }
        };
        let claims = self.verify_ingress(&hello.token)?;
        let r = Resource::from_json(&hello.ingress_json)
            .map_err(|e| Status::invalid_argument(format!("ingress: {e}")))?;
        let r = check_ingress(&r, &self.shared.cfg.zone)?;
        let key = register(&self.shared, r)?.key();
        let stream_id: u64 = rand::random();
        self.shared.proxies.lock().expect("proxies lock").insert(
            key.clone(),
            ProxyStatus {
                mesh: key.mesh.clone(),
                dataplane: key.name.clone(),
                service: String::new(),
                ingress: true,
                stream: stream_id,
                connected_unix_ms: now_ms(),
                ..ProxyStatus::default()
            },
        );
        tracing::info!(ingress = %key, token_id = %claims.id, ?peer, "zone ingress connected");
        let (tx, rx) = mpsc::channel(4);
        renew_token(
            self.shared.clone(),
            "ingress",
            claims.clone(),
            dataplane_token::create_ingress,
            tx.clone(),
        );
        send_cp_trust(self.shared.clone(), tx.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let end = serve_ingress(&shared, &key, stream_id, &claims.id, inbound, &tx).await;
            if let Err(st) = end {
                let _ = tx.send(Err(st)).await;
            }
            unregister(&shared, &key, stream_id);
            tracing::info!(ingress = %key, "zone ingress disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends a proxy its token renewed by this zone (see `causeway_pki::dataplane_token`):
/// now, again every `RENEW_TOKEN_EVERY_SECS` while its stream lives and its token is
/// not revoked, and at once when the zone's renewal key rotates. The renewal keeps the grant and id of the token the proxy presented,
/// so the token it started with may expire while it runs, restarts or reconnects.
fn renew_token<C>(
    shared: Arc<Shared>,
    kind: &'static str,
    claims: C,
    mint: fn(&str, &C) -> Result<String, dataplane_token::DataplaneTokenError>,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
) where
    C: dataplane_token::Renewable + Send + 'static,
{
    tokio::spawn(async move {
        let mut keys = shared.token_renewal.subscribe();
        loop {
            if not_revoked(&shared, kind, claims.id()).is_err() {
                return;
            }
            let renewed = dataplane_token::renewed(&claims, now_unix());
            let expires_unix = renewed.exp();
            let key = keys.borrow_and_update().0.clone();
            match mint(&key, &renewed) {
                Ok(token) => {
                    let msg = ControlMessage {
                        msg: Some(control_message::Msg::RenewedToken(RenewedToken {
                            token,
                            expires_unix,
                        })),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(kind, error = %e, "cannot renew a proxy's token"),
            }
            // Daily, or at once when the renewal key rotates.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(
                    dataplane_token::RENEW_TOKEN_EVERY_SECS as u64,
                )) => {}
                changed = keys.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
}

/// Sends a proxy the zone API CAs it must trust to reach DDS: now, and whenever a
/// rotation changes them, until its stream ends. It answers with what it trusts
/// (recorded by `next_event`).
fn send_cp_trust(shared: Arc<Shared>, tx: mpsc::Sender<Result<ControlMessage, Status>>) {
    tokio::spawn(async move {
        let mut cas = shared.api_cas.subscribe();
        loop {
            let ca_bundle_pem = cas.borrow_and_update().trust();
            let msg = ControlMessage {
                msg: Some(control_message::Msg::CpTrust(CpTrust { ca_bundle_pem })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            tokio::select! {
                changed = cas.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
}

/// A ZoneIngress as the zone registers it: validated, in this zone, and with the
/// services it offers left to the zone to fill in.
fn check_ingress(r: &Resource, zone: &str) -> Result<Resource, Status> {
    if r.kind != "ZoneIngress" {
        return Err(Status::invalid_argument(
            "ingress: type must be ZoneIngress",
        ));
    }
    let mut r = r.clone();
    let mut spec: causeway_api::ZoneIngressSpec = serde_json::from_value(r.spec.clone())
        .map_err(|e| Status::invalid_argument(format!("ingress: {e}")))?;
    if let Some(z) = &spec.zone
        && z != zone
    {
        return Err(Status::permission_denied(format!(
            "the ZoneIngress says zone {z:?}; this is zone {zone:?}"
        )));
    }
    spec.zone = Some(zone.to_string());
    spec.available_services.clear();
    r.spec = serde_json::to_value(&spec).expect("specs serialize");
    causeway_api::validate(&r).map_err(|e| Status::invalid_argument(format!("ingress: {e}")))?;
    Ok(r)
}

/// Registers `r` (a Dataplane or ZoneIngress) as owned by this zone for as long as its
/// stream lives.
fn register(shared: &Shared, r: Resource) -> Result<Resource, Status> {
    let zone = shared.cfg.zone.clone();
    let kind = r.kind.clone();
    let (stored, _) = shared
        .store
        .put_local(&zone, r, time::OffsetDateTime::now_utc())
        .map_err(|e| match e {
            LocalWriteError::NotOwned { origin } => {
                Status::already_exists(format!("a {kind} of that name belongs to {origin}"))
            }
            LocalWriteError::MeshMissing(m) => {
                Status::not_found(format!("mesh {m:?} is not known in this zone"))
            }
            LocalWriteError::DiskLow(why) => Status::resource_exhausted(why),
            e => Status::internal(format!("{e:?}")),
        })?;
    let key = stored.key();
    let _ = shared.store.set_stream_registered(&key, true);
    shared.local_change(key, Some(stored.clone()));
    Ok(stored)
}

/// Ends a stream's registration, unless a newer stream took it over.
fn unregister(shared: &Shared, key: &ResourceKey, stream_id: u64) {
    let ours = {
        let mut proxies = shared.proxies.lock().expect("proxies lock");
        match proxies.get(key) {
            Some(p) if p.stream == stream_id => {
                if !p.ingress {
                    shared
                        .lately_gone
                        .lock()
                        .expect("lately gone lock")
                        .insert(key.clone(), (p.mesh.clone(), std::time::Instant::now()));
                }
                proxies.remove(key).is_some()
            }
            _ => false,
        }
    };
    if ours {
        // Gone: its endpoints leave every config.
        forget(shared, key);
    }
}

/// Sends the ingress its routes whenever they change, and keeps the services its
/// ZoneIngress offers other zones up to date, until the stream ends.
async fn serve_ingress(
    shared: &Arc<Shared>,
    key: &ResourceKey,
    stream_id: u64,
    token_id: &str,
    mut inbound: Streaming<ProxyMessage>,
    tx: &mpsc::Sender<Result<ControlMessage, Status>>,
) -> Result<(), Status> {
    let mut changes = shared.state.subscribe();
    let mut sent: Option<String> = None;
    loop {
        not_revoked(shared, "ingress", token_id)?;
        changes.borrow_and_update();
        let current = shared
            .store
            .get(key)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found("the ZoneIngress was removed"))?;
        let inputs = mesh_inputs(shared, &key.mesh)?;
        let zone = &shared.cfg.zone;
        let refusal = if inputs.drilled_zones.contains(zone) {
            Some(crate::ingress::Refusal {
                reason: format!("a failover drill takes zone {zone} down"),
                silent: false,
            })
        } else if inputs.blackholed_zones.contains(zone) {
            Some(crate::ingress::Refusal {
                reason: format!("a blackhole drill takes zone {zone} off the network"),
                silent: true,
            })
        } else {
            None
        };
        let started = std::time::Instant::now();
        let computed = crate::ingress::compute(&inputs, &key.mesh, &key.name, refusal);
        shared.metrics.computed("ingress", started.elapsed());
        record_compute_error(shared, key, stream_id, computed.as_ref().err());
        match computed {
            Ok((cfg, available)) => {
                let mut spec: causeway_api::ZoneIngressSpec =
                    serde_json::from_value(current.spec.clone())
                        .map_err(|e| Status::internal(e.to_string()))?;
                if spec.available_services != available {
                    // Reported to global, and from there to other zones.
                    spec.available_services = available;
                    let mut r = current.clone();
                    r.spec = serde_json::to_value(&spec).expect("specs serialize");
                    register(shared, r)?;
                }
                if sent.as_deref() != Some(cfg.version.as_str()) {
                    let json = serde_json::to_vec(&cfg).expect("configs serialize");
                    push(shared, key, stream_id, tx, &cfg.version, json).await?;
                    sent = Some(cfg.version);
                }
            }
            Err(e) => {
                tracing::warn!(ingress = %key, error = %e, "cannot compute the ingress's config yet")
            }
        }
        // An ingress counts no golden signals.
        if !next_event(shared, key, stream_id, &[], &mut changes, &mut inbound).await {
            return Ok(());
        }
    }
}

fn forget(shared: &Shared, key: &ResourceKey) {
    if shared.store.delete_local(&shared.cfg.zone, key).is_ok() {
        shared.local_change(key.clone(), None);
    }
    let _ = shared.store.set_stream_registered(key, false);
}

/// After a restart: Dataplanes whose sidecars registered them before it and have not
/// come back within `grace` died meanwhile; remove them so no config routes to them.
pub(crate) async fn forget_absent_after(shared: Arc<Shared>, grace: Duration) {
    tokio::time::sleep(grace).await;
    let Ok(keys) = shared.store.stream_registered() else {
        return;
    };
    for key in keys {
        let live = shared
            .proxies
            .lock()
            .expect("proxies lock")
            .contains_key(&key);
        if !live {
            tracing::info!(dataplane = %key, "its sidecar did not come back after the restart; removing it");
            forget(&shared, &key);
        }
    }
}

/// A token for service A can never register a dataplane of service B.
fn check_dataplane(dp: &Resource, claims: &DataplaneTokenClaims) -> Result<(), Status> {
    if dp.kind != "Dataplane" {
        return Err(Status::invalid_argument(
            "dataplane: type must be Dataplane",
        ));
    }
    if dp.mesh.as_deref() != Some(claims.mesh.as_str()) {
        return Err(Status::permission_denied(format!(
            "the token is for mesh {:?}, the Dataplane is in {:?}",
            claims.mesh,
            dp.mesh.as_deref().unwrap_or("")
        )));
    }
    causeway_api::validate(dp).map_err(|e| Status::invalid_argument(format!("dataplane: {e}")))?;
    let spec: DataplaneSpec = serde_json::from_value(dp.spec.clone())
        .map_err(|e| Status::invalid_argument(format!("dataplane: {e}")))?;
    if let Some(other) = spec.inbound.iter().find(|i| i.service != claims.service) {
        return Err(Status::permission_denied(format!(
            "the token is for service {:?}; it cannot register an inbound of {:?}",
            claims.service, other.service
        )));
    }
    Ok(())
}

/// Whether the sidecar of `claims` may register `dp` under its name: a name belongs to
/// the service whose sidecar registered it, and is free again for that service's
/// sidecars only once the stream holding it has ended. Otherwise any token could
/// register another live Dataplane's name and reconfigure its sidecar.
fn claim_name(shared: &Shared, dp: &Resource, claims: &DataplaneTokenClaims) -> Result<(), Status> {
    let key = dp.key();
    let existing = shared
        .store
        .get(&key)
        .map_err(|e| Status::internal(e.to_string()))?;
    let Some(existing) = existing.filter(|r| r.kind == "Dataplane") else {
        return Ok(());
    };
    let owner = serde_json::from_value::<DataplaneSpec>(existing.spec)
        .ok()
        .and_then(|s| s.inbound.first().map(|i| i.service.clone()));
    if let Some(owner) = owner
        && owner != claims.service
    {
        return Err(Status::permission_denied(format!(
            "dataplane {:?} belongs to service {owner:?}; a token for {:?} cannot take its name",
            key.name, claims.service
        )));
    }
    let live = shared
        .proxies
        .lock()
        .expect("proxies lock")
        .contains_key(&key);
    if live {
        return Err(Status::already_exists(format!(
            "dataplane {:?} is connected from another sidecar; its name is free once that one has gone",
            key.name
        )));
    }
    Ok(())
}

/// Sends the proxy its config whenever it changes, until the stream ends.
async fn serve_proxy(
    shared: &Arc<Shared>,
    key: &ResourceKey,
    stream_id: u64,
    token_id: &str,
    mut inbound: Streaming<ProxyMessage>,
    tx: &mpsc::Sender<Result<ControlMessage, Status>>,
) -> Result<(), Status> {
    let mut changes = shared.state.subscribe();
    let mut sent: Option<String> = None;
    loop {
        not_revoked(shared, "dataplane", token_id)?;
        changes.borrow_and_update();
        let dp = shared
            .store
            .get(key)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found("the Dataplane was removed"))?;
        let inputs = mesh_inputs(shared, &key.mesh)?;
        let started = std::time::Instant::now();
        let computed = proxy_config::compute(&inputs, &dp);
        shared.metrics.computed("sidecar", started.elapsed());
        record_compute_error(shared, key, stream_id, computed.as_ref().err());
        match computed {
            Ok(cfg) if sent.as_deref() != Some(cfg.version.as_str()) => {
                let json = serde_json::to_vec(&cfg).expect("configs serialize");
                push(shared, key, stream_id, tx, &cfg.version, json).await?;
                sent = Some(cfg.version);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dataplane = %key, error = %e, "cannot compute the proxy's config yet")
            }
        }
        // Golden signals are taken for the services the dataplane serves only.
        let services: Vec<String> = serde_json::from_value::<DataplaneSpec>(dp.spec.clone())
            .map(|s| s.inbound.into_iter().map(|i| i.service).collect())
            .unwrap_or_default();
        if !next_event(
            shared,
            key,
            stream_id,
            &services,
            &mut changes,
            &mut inbound,
        )
        .await
        {
            return Ok(());
        }
    }
}

/// Sends a config snapshot down a stream and records it.
async fn push(
    shared: &Shared,
    key: &ResourceKey,
    stream_id: u64,
    tx: &mpsc::Sender<Result<ControlMessage, Status>>,
    version: &str,
    json: Vec<u8>,
) -> Result<(), Status> {
    tx.send(Ok(ControlMessage {
        msg: Some(control_message::Msg::Config(ConfigSnapshot {
            version: version.to_string(),
            json,
        })),
    }))
    .await
    .map_err(|_| Status::cancelled("the proxy is gone"))?;
    update(shared, key, stream_id, |p| {
        p.sent_version = Some(version.to_string());
        p.last_push_unix_ms = now_ms();
    });
    shared.touch_push();
    let kind = if key.kind == "ZoneIngress" {
        "ingress"
    } else {
        "sidecar"
    };
    shared
        .metrics
        .pushes
        .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
        .inc();
    Ok(())
}

/// Waits for a state change (true) or records the proxy's ACK or NACK (true); false
/// when either side ended.
async fn next_event(
    shared: &Shared,
    key: &ResourceKey,
    stream_id: u64,
    services: &[String],
    changes: &mut tokio::sync::watch::Receiver<u64>,
    inbound: &mut Streaming<ProxyMessage>,
) -> bool {
    tokio::select! {
        c = changes.changed() => c.is_ok(),
        msg = inbound.next() => match msg {
            Some(Ok(ProxyMessage { msg: Some(proxy_message::Msg::Ack(a)) })) => {
                update(shared, key, stream_id, |p| {
                    p.ack = Some(ConfigReply { version: a.version, at_unix_ms: now_ms(), reason: None });
                    p.nack = None;
                });
                true
            }
            Some(Ok(ProxyMessage { msg: Some(proxy_message::Msg::Nack(n)) })) => {
                shared.metrics.nacks.inc();
                tracing::warn!(proxy = %key, version = %n.version, reason = %n.reason, "a proxy rejected its config");
                update(shared, key, stream_id, |p| {
                    p.nack = Some(ConfigReply { version: n.version, at_unix_ms: now_ms(), reason: Some(n.reason) });
                });
                true
            }
            Some(Ok(ProxyMessage { msg: Some(proxy_message::Msg::Report(r)) })) => {
                let report = serde_json::from_slice::<ProxyReport>(&r.json);
                update(shared, key, stream_id, |p| {
                    p.reported_unix_ms = now_ms();
                    match report {
                        Ok(r) => {
                            p.report = Some(r);
                            p.report_error = None;
                        }
                        // A newer sidecar's report: keep the last readable one, say why.
                        Err(e) => p.report_error = Some(e.to_string()),
                    }
                });
                true
            }
            Some(Ok(ProxyMessage { msg: Some(proxy_message::Msg::CpTrusted(t)) })) => {
                update(shared, key, stream_id, |p| p.trusted_cp_ca_sha256 = t.ca_sha256);
                true
            }
            Some(Ok(ProxyMessage { msg: Some(proxy_message::Msg::Stats(s)) })) => {
                record_signals(shared, &key.mesh, services, s);
                true
            }
            Some(Ok(_)) => true,
            Some(Err(_)) | None => false,
        },
    }
}

/// Folds a sidecar's golden-signal deltas into the zone's aggregate
/// ([`causeway_api::stats::Aggregator::record_report`] ignores what it cannot have
/// counted).
fn record_signals(
    shared: &Shared,
    mesh: &str,
    services: &[String],
    stats: causeway_api::kds::dds::ProxyStats,
) {
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let mut signals = shared.signals.lock().expect("signals lock");
    signals.record_report(mesh, services, stats, now);
}

/// Shows why a proxy's config cannot be computed (or that it can again) in the zone's
/// status, where `causeway inspect zone --config-dump` and the zone API read it.
fn record_compute_error(
    shared: &Shared,
    key: &ResourceKey,
    stream_id: u64,
    error: Option<&impl std::fmt::Display>,
) {
    let error = error.map(ToString::to_string);
    update(shared, key, stream_id, |p| p.compute_error = error);
}

fn update(shared: &Shared, key: &ResourceKey, stream_id: u64, f: impl FnOnce(&mut ProxyStatus)) {
    let mut proxies = shared.proxies.lock().expect("proxies lock");
    if let Some(p) = proxies.get_mut(key)
        && p.stream == stream_id
    {
        f(p);
    }
}

/// Serves DDS over TLS with a certificate from the zone's API CA, reissued when an API
/// CA rotation activates a new one (new handshakes get it; live streams keep theirs).
pub(crate) async fn serve(shared: Arc<Shared>, addr: SocketAddr) -> anyhow::Result<()> {
    let config = |cert: &causeway_pki::CertKey| -> anyhow::Result<_> {
        Ok(Arc::new(causeway_pki::server_config(cert, None, &[b"h2"])?))
    };
    let first = crate::api_ca::first_cert(&shared, addr, |s| &mut s.dds)?;
    let (configs_tx, configs) = tokio::sync::watch::channel(config(&first)?);
    tokio::spawn(crate::api_ca::follow_signing(
        shared.clone(),
        addr,
        "DDS",
        |s| &mut s.dds,
        move |cert| {
            configs_tx.send_replace(config(cert)?);
            Ok(())
        },
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the DDS address {addr}: {e}"))?;
    tracing::info!(%addr, "DDS listening (gRPC over TLS)");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_max_header_list_size(crate::api::MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(crate::api::MAX_STREAMS)
        .add_service(DdsServer::new(DdsService { shared }))
        .serve_with_incoming(causeway_listen::tls_incoming(
            causeway_listen::incoming(listener, "DDS", causeway_listen::Limits::GRPC),
            configs,
            "DDS",
            crate::api::TLS_HANDSHAKE_TIMEOUT,
        ))
        .await?;
    Ok(())
}

/// Proxies connected right now, by Dataplane.
pub(crate) type Proxies = HashMap<ResourceKey, ProxyStatus>;
