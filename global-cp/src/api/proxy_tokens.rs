//! Dataplane and ingress tokens: issued (signed with the cluster's Ed25519 key and
//! recorded through Raft, never stored), listed, and revoked. A revocation is sent to
//! every zone over KDS (`Trust.revoked_tokens`); zones then refuse the token's next
//! registration and certificate, and end the live streams of proxies that used it.
//!
//! A proxy's zone renews its token while it is connected, so a token past its expiry
//! may still be in use through its renewals: revocations take expired tokens too.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::zones::{
    CreateToken, PROXY_TOKEN_VALIDITY, check_zone_name, now_unix, require_mesh, token_issued,
    token_validity,
};
use super::{ApiError, ApiResult, ApiState};
use crate::command::{ApplyError, Command, ProxyTokenKind, ProxyTokenRecord};
use crate::raft_node::RaftError;
use crate::token_keys::{self, TokenSigningKey};
use causeway_api::timestamp::rfc3339;

/// The key that signs dataplane and ingress tokens: the newest from a rotation, or the
/// key the cluster formed with.
fn token_signing_key(st: &ApiState) -> ApiResult<String> {
    if let Some(k) = token_keys::current(&st.store.token_signing_keys()?) {
        return st.sealer.open(&k.key_sealed).map_err(internal);
    }
    let secrets = &st.secrets;
    if secrets.dataplane_token_key.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "",
            "this cluster has no dataplane token key (formed by an older version)",
        ));
    }
    Ok(secrets.dataplane_token_key.clone())
}

/// The key the cluster formed with, as the first entry of the rotated list.
fn formed_with(st: &ApiState) -> ApiResult<TokenSigningKey> {
    let public_key =
        causeway_pki::dataplane_token::public_key(&token_signing_key(st)?).map_err(internal)?;
    let sealed = st
        .store
        .secrets()?
        .ok_or_else(|| internal("the cluster's secrets are missing"))?
        .dataplane_token_key_sealed;
    Ok(TokenSigningKey {
        id: token_keys::key_id(&public_key),
        public_key,
        key_sealed: sealed,
        created: 0,
        retires_at: None,
    })
}

/// The keys as the API shows them (never a private key): the one that signs first.
fn key_listing(keys: &[TokenSigningKey], now: i64) -> Value {
    let shown: Vec<Value> = token_keys::verifying(keys, now)
        .into_iter()
        .map(|k| {
            json!({
                "id": k.id,
                "signs": k.retires_at.is_none(),
                "created": (k.created > 0).then(|| rfc3339(k.created)),
                "retiresAt": k.retires_at.map(rfc3339),
            })
        })
        .collect();
    json!({ "keys": shown })
}

/// `GET /dataplane-token-keys`: the keys that sign and verify dataplane and ingress
/// tokens (ids and dates only).
pub(super) async fn list_signing_keys(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    let mut keys = st.store.token_signing_keys()?;
    if keys.is_empty() {
        keys.push(formed_with(&st)?);
    }
    Ok(Json(key_listing(&keys, now_unix())))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateSigningKey {
    /// How long the key that signed until now still verifies (Go-style; default the
    /// default token validity, 168h; `0s` for a key that leaked).
    overlap: Option<String>,
}

/// At most this overlap: a dataplane token lasts up to a year, but an old key should
/// not verify for that long.
const MAX_KEY_OVERLAP_SECS: u64 = 30 * 24 * 3600;

/// `POST /dataplane-token-keys/rotate`: a new key signs dataplane and ingress tokens from
/// now on; the one before verifies the tokens it signed for the overlap, then not.
pub(super) async fn rotate_signing_key(
    State(st): State<ApiState>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: RotateSigningKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateSigningKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("", e.to_string()))?
    };
    let overlap: causeway_api::Duration = req
        .overlap
        .as_deref()
        .unwrap_or(PROXY_TOKEN_VALIDITY)
        .parse()
        .map_err(|e: causeway_api::DurationError| ApiError::bad("overlap", e.to_string()))?;
    if overlap.as_std().as_secs() > MAX_KEY_OVERLAP_SECS {
        return Err(ApiError::bad("overlap", "must be at most 720h (30 days)"));
    }
    st.raft.read_barrier().await?;
    let mut keys = st.store.token_signing_keys()?;
    let expected_current = token_keys::current(&keys).map(|k| k.id.clone());
    if keys.is_empty() {
        keys.push(formed_with(&st)?);
    }
    let private = causeway_pki::dataplane_token::generate_key().map_err(internal)?;
    let public_key = causeway_pki::dataplane_token::public_key(&private).map_err(internal)?;
    let now = now_unix();
    let new = TokenSigningKey {
        id: token_keys::key_id(&public_key),
        public_key,
        key_sealed: st.sealer.seal(&private),
        created: now,
        retires_at: None,
    };
    let new_id = new.id.clone();
    let keys = token_keys::rotated(keys, new, now, overlap.as_std().as_secs() as i64);
    st.raft
        .propose(Command::SetTokenSigningKeys {
            keys: keys.clone(),
            expected_current,
        })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(ApplyError::Refused(why)) => {
                ApiError::new(StatusCode::CONFLICT, "", why)
            }
            e => e.into(),
        })?;
    tracing::warn!(key = %new_id, overlap = %overlap, "rotated the dataplane and ingress token signing key");
    Ok(Json(key_listing(&keys, now)))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string())
}

/// Records an issued token, so it can be listed and revoked.
async fn record(st: &ApiState, t: ProxyTokenRecord) -> ApiResult<()> {
    st.raft.propose(Command::AddProxyToken(t)).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateDataplaneToken {
    service: String,
    /// Go-style duration; default 168h.
    valid_for: Option<String>,
}

/// `POST /meshes/{mesh}/dataplane-token`: a token bound to the mesh and one service,
/// with which a sidecar gets its workload certificate from its zone.
pub(super) async fn create_dataplane_token(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CreateDataplaneToken =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("", e.to_string()))?;
    causeway_api::check_service_name(&req.service).map_err(|e| ApiError::bad("service", e))?;
    let valid_for = token_validity(req.valid_for.as_deref(), PROXY_TOKEN_VALIDITY)?;
    st.raft.read_barrier().await?;
    require_mesh(&st, &mesh)?;
    let signing_key = token_signing_key(&st)?;
    let now = now_unix();
    let claims = causeway_pki::dataplane_token::DataplaneTokenClaims {
        mesh: mesh.clone(),
        service: req.service.clone(),
        id: hex::encode(rand::random::<[u8; 8]>()),
        iat: now,
        exp: now + valid_for.as_std().as_secs() as i64,
    };
    let token = causeway_pki::dataplane_token::create(&signing_key, &claims).map_err(internal)?;
    record(
        &st,
        ProxyTokenRecord {
            id: claims.id.clone(),
            kind: ProxyTokenKind::Dataplane,
            mesh: mesh.clone(),
            service: req.service.clone(),
            zone: String::new(),
            created_unix: now,
            expires_unix: claims.exp,
            revoked_unix: None,
        },
    )
    .await?;
    tracing::info!(mesh = %mesh, service = %req.service, token_id = %claims.id, "issued a dataplane token");
    Ok(token_issued(
        json!({ "mesh": mesh, "service": req.service }),
        &claims.id,
        claims.exp,
        token,
    ))
}

/// `POST /zones/{name}/ingress-token`: a token with which a zone ingress registers in
/// that zone. It grants no certificate: an ingress forwards TLS it cannot decrypt.
pub(super) async fn create_ingress_token(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    check_zone_name(&zone)?;
    let valid_for = CreateToken::valid_for(&body, PROXY_TOKEN_VALIDITY)?;
    let signing_key = token_signing_key(&st)?;
    let now = now_unix();
    let claims = causeway_pki::dataplane_token::IngressTokenClaims {
        zone: zone.clone(),
        id: hex::encode(rand::random::<[u8; 8]>()),
        iat: now,
        exp: now + valid_for.as_std().as_secs() as i64,
    };
    let token =
        causeway_pki::dataplane_token::create_ingress(&signing_key, &claims).map_err(internal)?;
    record(
        &st,
        ProxyTokenRecord {
            id: claims.id.clone(),
            kind: ProxyTokenKind::Ingress,
            mesh: String::new(),
            service: String::new(),
            zone: zone.clone(),
            created_unix: now,
            expires_unix: claims.exp,
            revoked_unix: None,
        },
    )
    .await?;
    tracing::info!(zone = %zone, token_id = %claims.id, "issued an ingress token");
    Ok(token_issued(
        json!({ "zone": zone }),
        &claims.id,
        claims.exp,
        token,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenFilter {
    /// Only the tokens of this service (dataplane tokens).
    service: Option<String>,
    /// Also the expired ones.
    #[serde(default)]
    expired: bool,
}

/// The records that match, linearizably read (a revocation just made is seen).
async fn matching(
    st: &ApiState,
    keep: impl Fn(&ProxyTokenRecord) -> bool,
) -> ApiResult<Vec<ProxyTokenRecord>> {
    st.raft.read_barrier().await?;
    let mut all = st.store.proxy_tokens()?;
    all.retain(|t| keep(t));
    all.sort_by_key(|t| (t.created_unix, t.id.clone()));
    Ok(all)
}

fn listed(t: &ProxyTokenRecord) -> Value {
    let mut v = json!({
        "id": t.id,
        "createdAt": rfc3339(t.created_unix),
        "expiresAt": rfc3339(t.expires_unix),
        "expired": t.expires_unix <= now_unix(),
        "revokedAt": t.revoked_unix.map(rfc3339),
    });
    if t.kind == ProxyTokenKind::Dataplane {
        v["service"] = json!(t.service);
    }
    v
}

/// The live tokens of `kind` issued for `scope` (a dataplane token's mesh, an ingress
/// token's zone), narrowed by the filter.
fn scoped<'a>(
    kind: ProxyTokenKind,
    scope: &'a str,
    f: &'a TokenFilter,
) -> impl Fn(&ProxyTokenRecord) -> bool + 'a {
    move |t| {
        let of_scope = match kind {
            ProxyTokenKind::Dataplane => t.mesh == scope,
            ProxyTokenKind::Ingress => t.zone == scope,
        };
        t.kind == kind
            && of_scope
            && f.service.as_deref().is_none_or(|s| t.service == s)
            && (f.expired || t.expires_unix > now_unix())
    }
}

/// `GET /meshes/{mesh}/dataplane-tokens[?service=S][&expired=true]`.
pub(super) async fn list_dataplane_tokens(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    Query(f): Query<TokenFilter>,
) -> ApiResult<Json<Value>> {
    let items = matching(&st, scoped(ProxyTokenKind::Dataplane, &mesh, &f)).await?;
    Ok(Json(
        json!({"items": items.iter().map(listed).collect::<Vec<_>>()}),
    ))
}

/// `GET /zones/{name}/ingress-tokens[?expired=true]`.
pub(super) async fn list_ingress_tokens(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
    Query(f): Query<TokenFilter>,
) -> ApiResult<Json<Value>> {
    check_zone_name(&zone)?;
    let items = matching(&st, scoped(ProxyTokenKind::Ingress, &zone, &f)).await?;
    Ok(Json(
        json!({"items": items.iter().map(listed).collect::<Vec<_>>()}),
    ))
}

/// Revokes the unrevoked tokens that match; 404 when there is none.
async fn revoke(
    st: &ApiState,
    what: String,
    keep: impl Fn(&ProxyTokenRecord) -> bool,
) -> ApiResult<Json<Value>> {
    let ids: Vec<String> = matching(st, keep)
        .await?
        .into_iter()
        .filter(|t| t.revoked_unix.is_none())
        .map(|t| t.id)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::not_found(what));
    }
    st.raft
        .propose(Command::RevokeProxyTokens { ids: ids.clone() })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(ApplyError::NotFound) => ApiError::not_found(what.clone()),
            e => e.into(),
        })?;
    tracing::info!(tokens = ?ids, "revoked {what}");
    Ok(Json(json!({"revoked": ids})))
}

/// `DELETE /meshes/{mesh}/dataplane-tokens/{id}`.
pub(super) async fn revoke_dataplane_token(
    State(st): State<ApiState>,
    Path((mesh, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let f = TokenFilter {
        expired: true,
        ..TokenFilter::default()
    };
    let keep = scoped(ProxyTokenKind::Dataplane, &mesh, &f);
    revoke(
        &st,
        format!("unrevoked dataplane token {id:?} in mesh {mesh:?}"),
        |t| t.id == id && keep(t),
    )
    .await
}

/// `DELETE /meshes/{mesh}/dataplane-tokens?service=S`: every unrevoked token of a service.
pub(super) async fn revoke_service_tokens(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    Query(mut f): Query<TokenFilter>,
) -> ApiResult<Json<Value>> {
    f.expired = true;
    let Some(service) = f.service.clone() else {
        return Err(ApiError::bad(
            "service",
            "name the service whose tokens to revoke (?service=NAME), or revoke one by id",
        ));
    };
    revoke(
        &st,
        format!("unrevoked dataplane tokens of service {service:?} in mesh {mesh:?}"),
        scoped(ProxyTokenKind::Dataplane, &mesh, &f),
    )
    .await
}

/// `DELETE /zones/{name}/ingress-tokens/{id}`.
pub(super) async fn revoke_ingress_token(
    State(st): State<ApiState>,
    Path((zone, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_zone_name(&zone)?;
    let f = TokenFilter {
        expired: true,
        ..TokenFilter::default()
    };
    let keep = scoped(ProxyTokenKind::Ingress, &zone, &f);
    revoke(
        &st,
        format!("unrevoked ingress token {id:?} of zone {zone:?}"),
        |t| t.id == id && keep(t),
    )
    .await
}

/// `DELETE /zones/{name}/ingress-tokens`: every unrevoked ingress token of the zone.
pub(super) async fn revoke_all_ingress_tokens(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    check_zone_name(&zone)?;
    let f = TokenFilter {
        expired: true,
        ..TokenFilter::default()
    };
    revoke(
        &st,
        format!("unrevoked ingress tokens of zone {zone:?}"),
        scoped(ProxyTokenKind::Ingress, &zone, &f),
    )
    .await
}
