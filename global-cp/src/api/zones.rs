//! Zone endpoints: token issuance and revocation, zone status (attached to `GET /zones`)
//! and config dumps over the zone's KDS stream.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState};
use crate::command::{Command, ZoneStatusRecord, ZoneTokenRecord};
use crate::raft_node::RaftError;
use crate::zone_token::{self, ZoneTokenClaims};
use causeway_api::timestamp::rfc3339;

/// Default lifetime of a zone token: long enough to set a zone up and re-enroll it if
/// its data dir is lost; revoke it to cut the zone off.
pub(super) const ZONE_TOKEN_VALIDITY: &str = "8760h";
/// Default lifetime of a dataplane or ingress token: a week to start the proxy. Its zone
/// renews it while the proxy is connected (`causeway_pki::dataplane_token`), so a
/// running proxy outlives it.
pub(super) const PROXY_TOKEN_VALIDITY: &str = "168h";

pub(super) fn check_zone_name(name: &str) -> ApiResult<()> {
    if let Some(e) = causeway_api::validate_name("name", name).into_iter().next() {
        return Err(ApiError::bad("name", e.reason));
    }
    Ok(())
}

pub(super) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A token's `validFor`: a Go-style duration of at least a minute, else `default`.
pub(super) fn token_validity(
    valid_for: Option<&str>,
    default: &str,
) -> ApiResult<causeway_api::Duration> {
    let d: causeway_api::Duration = valid_for
        .unwrap_or(default)
        .parse()
        .map_err(|e: causeway_api::DurationError| ApiError::bad("validFor", e.to_string()))?;
    if d.as_std().as_secs() < 60 {
        return Err(ApiError::bad("validFor", "must be at least 1m"));
    }
    Ok(d)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateToken {
    /// Go-style duration, e.g. `24h`.
    valid_for: Option<String>,
}

impl CreateToken {
    /// The lifetime a create request (an empty body, or `{"validFor": ...}`) asks for,
    /// else `default`.
    pub(super) fn valid_for(body: &[u8], default: &str) -> ApiResult<causeway_api::Duration> {
        let req: CreateToken = if body.iter().all(u8::is_ascii_whitespace) {
            CreateToken::default()
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad("", e.to_string()))?
        };
        token_validity(req.valid_for.as_deref(), default)
    }
}

/// `POST /zones/{name}/token`: issues a token, shown once.
pub(super) async fn create_token(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    check_zone_name(&zone)?;
    let valid_for = CreateToken::valid_for(&body, ZONE_TOKEN_VALIDITY)?;
    let key = crate::zone_token::current_key(&st.store, &st.sealer)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "", e))?;
    let now = now_unix();
    let claims = ZoneTokenClaims {
        zone: zone.clone(),
        id: hex::encode(rand::random::<[u8; 8]>()),
        iat: now,
        exp: now + valid_for.as_std().as_secs() as i64,
        ca: super::api_cas(&st)?,
    };
    let token = zone_token::create(&key, &claims);
    st.raft
        .propose(Command::AddZoneToken(ZoneTokenRecord {
            zone: zone.clone(),
            id: claims.id.clone(),
            sha256: zone_token::hash(&token),
            created_unix: now,
            expires_unix: claims.exp,
            enrolled_key_sha256: None,
            enrolled_unix: None,
        }))
        .await?;
    tracing::info!(zone = %zone, token_id = %claims.id, "issued a zone token");
    Ok(token_issued(
        json!({ "zone": zone }),
        &claims.id,
        claims.exp,
        token,
    ))
}

/// The 201 answer to any token issue: what the token is for (`scope`, an object), its
/// id and expiry, and the token itself, shown this once.
pub(super) fn token_issued(mut scope: Value, id: &str, exp: i64, token: String) -> Response {
    if let Some(o) = scope.as_object_mut() {
        o.insert("id".into(), id.into());
        o.insert("expiresAt".into(), rfc3339(exp).into());
        o.insert("token".into(), token.into());
    }
    (StatusCode::CREATED, Json(scope)).into_response()
}

/// `GET /zones/{name}/tokens`: the zone's tokens (ids and expiry, never the tokens).
pub(super) async fn list_tokens(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    check_zone_name(&zone)?;
    st.raft.read_barrier().await?;
    let items: Vec<Value> = st
        .store
        .zone_tokens(&zone)?
        .into_iter()
        .map(|t| {
            json!({
                "id": t.id,
                "createdAt": rfc3339(t.created_unix),
                "expiresAt": rfc3339(t.expires_unix),
                "expired": t.expires_unix <= now_unix(),
                // Zone tokens are single use: once one enrolled its zone, it is spent.
                "enrolledAt": t.enrolled_unix.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn revoke(st: &ApiState, zone: String, id: Option<String>) -> ApiResult<StatusCode> {
    check_zone_name(&zone)?;
    st.raft
        .propose(Command::RevokeZoneTokens {
            zone: zone.clone(),
            id: id.clone(),
        })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(crate::command::ApplyError::NotFound) => {
                ApiError::not_found(format!(
                    "token {:?} of zone {zone:?}",
                    id.clone().unwrap_or_default()
                ))
            }
            e => e.into(),
        })?;
    tracing::info!(zone = %zone, token_id = ?id, "revoked zone token(s)");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /zones/{name}/tokens/{id}`.
pub(super) async fn revoke_token(
    State(st): State<ApiState>,
    Path((zone, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    revoke(&st, zone, Some(id)).await
}

/// `DELETE /zones/{name}/tokens`: revokes every token of the zone.
pub(super) async fn revoke_all_tokens(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
) -> ApiResult<StatusCode> {
    revoke(&st, zone, None).await
}

/// Every zone's status, the freshest of this node's live session and the replicated
/// report, with whether it is online now.
pub(super) fn statuses_now(st: &ApiState) -> ApiResult<Vec<(ZoneStatusRecord, bool)>> {
    let mut statuses: std::collections::BTreeMap<String, ZoneStatusRecord> = st
        .store
        .zone_statuses()?
        .into_iter()
        .map(|s| (s.zone.clone(), s))
        .collect();
    if let Some(kds) = &st.kds {
        for (zone, live) in kds.live_statuses() {
            statuses.insert(zone, live);
        }
    }
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    // A report older than this means the session (or its node) is gone.
    let fresh_ms = (st.status_interval.max(st.heartbeat) * 3).as_millis() as i64;
    Ok(statuses
        .into_values()
        .map(|s| {
            let online = s.connected && now_ms - s.last_seen_unix_ms <= fresh_ms;
            (s, online)
        })
        .collect())
}

/// Adds `status` to each Zone item: the freshest of this node's live session and the
/// replicated report.
pub(super) fn attach_status(st: &ApiState, items: &mut [Value]) -> ApiResult<()> {
    let statuses: std::collections::HashMap<String, (ZoneStatusRecord, bool)> = statuses_now(st)?
        .into_iter()
        .map(|(s, online)| (s.zone.clone(), (s, online)))
        .collect();
    let last_change = st.store.last_change_index();
    for item in items {
        let Some(name) = item.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let status = match statuses.get(&name) {
            Some((s, online)) => {
                let online = *online;
                json!({
                    "online": online,
                    "connectedTo": if online { json!(s.node) } else { Value::Null },
                    "lastSeen": rfc3339(s.last_seen_unix_ms / 1000),
                    "connectedSince": rfc3339(s.connected_unix_ms / 1000),
                    "revisionApplied": s.revision_applied,
                    "lag": last_change.saturating_sub(s.revision_applied),
                    "lastSync": {"changes": s.last_set_changes, "full": s.last_set_full},
                    "version": s.version,
                    "dataplanes": s.dataplanes,
                    "zoneIngresses": s.zone_ingresses,
                    "connectedProxies": s.connected_proxies,
                    "proxiesNacking": s.proxies_nacking,
                    "resources": s.resources,
                    "lastConfigPush": if s.last_config_push_unix_ms > 0 {
                        json!(rfc3339(s.last_config_push_unix_ms / 1000))
                    } else {
                        Value::Null
                    },
                })
            }
            None => json!({"online": false}),
        };
        if let Some(obj) = item.as_object_mut() {
            obj.insert("status".into(), status);
        }
    }
    Ok(())
}

/// `GET /zones/{name}/config-dump`: asks the zone over its KDS stream. When another node
/// serves the zone, forwards the request there (once; a forwarded request is not
/// forwarded again).
pub(super) async fn config_dump(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    check_zone_name(&zone)?;
    let path = format!("/zones/{zone}/config-dump");
    relay_to_zone(&st, &zone, None, &path, &headers).await
}

/// `GET /meshes/{mesh}/dataplanes/{name}/inspect`: answered by the zone the dataplane
/// runs in (it holds the proxy's stream and reports), relayed over its KDS stream as
/// `config-dump` is; the answer is the zone API's, status included.
pub(super) async fn inspect_dataplane(
    State(st): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let key = causeway_api::ResourceKey {
        kind: "Dataplane".into(),
        mesh: mesh.clone(),
        name: name.clone(),
    };
    let dp = st.store.get(&key)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!(
                "Dataplane {name:?} not found in mesh {mesh:?}: a dataplane is known while its \
                 sidecar is connected to its zone (`causeway get dataplanes -m {mesh}` lists them)"
            ),
        )
    })?;
    let zone = dp.origin.clone().filter(|o| o != "global").ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!("Dataplane {name:?} has no zone; inspect it on its zone's control plane"),
        )
    })?;
    let path = format!("/meshes/{mesh}/dataplanes/{name}/inspect");
    relay_to_zone(&st, &zone, Some(&key), &path, &headers).await
}

/// Asks `zone` over its KDS stream (for its dump, or a dataplane's inspection), from
/// this node or by forwarding `path` once to the node that serves the zone.
async fn relay_to_zone(
    st: &ApiState,
    zone: &str,
    inspect_dataplane: Option<&causeway_api::ResourceKey>,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(kds) = &st.kds
        && let Some(result) = kds.config_dump(zone, inspect_dataplane).await
    {
        return match result {
            Ok(d) => {
                let status = match d.status {
                    0 => StatusCode::OK,
                    s => u16::try_from(s)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .unwrap_or(StatusCode::BAD_GATEWAY),
                };
                Ok(json_bytes(status, d.json))
            }
            Err(e) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "", e)),
        };
    }
    let not_connected = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!("zone {zone:?} is not connected to any global node"),
        )
    };
    let status = st.store.zone_status(zone)?.ok_or_else(not_connected)?;
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    if !status.connected || forwarded {
        return Err(not_connected());
    }
    let node = st
        .store
        .members()?
        .get(&status.node)
        .cloned()
        .ok_or_else(not_connected)?;
    let forward = async {
        let (status, body) = forward_get(st, &node.api_addr, path, headers).await?;
        // An inspection's answer passes through whatever it is (the zone's 404 for a
        // dataplane it does not know says so); a failed dump is this node's error.
        if status.is_success() || inspect_dataplane.is_some() {
            Ok((status, body))
        } else {
            Err(String::from_utf8_lossy(&body).into_owned())
        }
    };
    match forward.await {
        Ok((status, json)) => Ok(json_bytes(status, json)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "",
            format!(
                "zone {zone:?} is served by global node {} ({}), which did not answer: {e}",
                status.node, node.api_addr
            ),
        )),
    }
}

/// A 404 unless `mesh` exists.
pub(super) fn require_mesh(st: &ApiState, mesh: &str) -> ApiResult<()> {
    let mesh_key = causeway_api::ResourceKey {
        kind: "Mesh".into(),
        mesh: String::new(),
        name: mesh.to_owned(),
    };
    if st.store.get(&mesh_key)?.is_none() {
        return Err(ApiError::not_found(format!("mesh {mesh:?}")));
    }
    Ok(())
}

/// Marks a request one node forwarded to another (which answers it from its own zone
/// sessions, and forwards nothing further).
pub(super) const FORWARDED_HEADER: &str = "x-causeway-forwarded";

/// Asks every other member for its own answer at `path` (a `?local=true` view), in
/// parallel; a member that does not answer gets `unanswered(id, why)`.
pub(super) async fn ask_members<T: serde::de::DeserializeOwned>(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    path: &str,
    me: u64,
    unanswered: impl Fn(u64, String) -> T,
) -> ApiResult<Vec<T>> {
    let members = st.store.members()?;
    let asks = members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, m)| async move {
            let got = match forward_get(st, &m.api_addr, path, headers).await {
                Ok((s, body)) if s.is_success() => {
                    serde_json::from_slice::<T>(&body).map_err(|e| e.to_string())
                }
                Ok((s, body)) => Err(format!("{s}: {}", String::from_utf8_lossy(&body))),
                Err(e) => Err(e),
            };
            (*id, got)
        });
    Ok(futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|(id, got)| got.unwrap_or_else(|e| unanswered(id, e)))
        .collect())
}

/// Sends `GET path` on to the global node at `api_addr` with the caller's credentials,
/// marked forwarded: its status and body, or why it did not answer.
pub(super) async fn forward_get(
    st: &ApiState,
    api_addr: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<(StatusCode, Vec<u8>), String> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = format!("https://{api_addr}{path}");
    let cas = super::api_cas(st).map_err(|e| e.message)?;
    let tls = causeway_pki::client_config(&cas, None).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .get(&url)
        .header(axum::http::header::AUTHORIZATION, auth)
        .header(FORWARDED_HEADER, "1")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, body.to_vec()))
}

pub(super) fn json_bytes(status: StatusCode, json: Vec<u8>) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

/// `POST /zones/{name}/revoke-ca`: revokes every intermediate CA issued to the zone. Every
/// sidecar, in every zone, stops trusting certificates under them; the zone needs a new
/// intermediate (refused while it is disabled) and its sidecars new certificates.
pub(super) async fn revoke_ca(
    State(st): State<ApiState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    check_zone_name(&zone)?;
    st.raft
        .propose(Command::RevokeIntermediates { zone: zone.clone() })
        .await?;
    let revoked: Vec<Value> = st
        .store
        .intermediates()?
        .into_iter()
        .filter(|r| r.zone == zone && r.revoked)
        .map(|r| json!({"mesh": r.mesh, "sha256": r.sha256}))
        .collect();
    tracing::warn!(zone = %zone, count = revoked.len(), "revoked the zone's intermediate CAs");
    Ok(Json(json!({ "zone": zone, "revoked": revoked })))
}

/// `PUT /meshes/{mesh}/secrets/{name}`: stores a secret (the body, e.g. a provided CA's
/// PEM key), sealed. Never returned by the API.
pub(super) async fn put_secret(
    State(st): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_secret_name(&name)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad("", "the secret must be UTF-8 text (PEM)"))?;
    // Raw text, or a JSON string (what JSON clients send).
    let decoded: String;
    let value = if text.trim_start().starts_with('"') {
        decoded = serde_json::from_str(text).map_err(|e| ApiError::bad("", e.to_string()))?;
        decoded.as_str()
    } else {
        text
    };
    if value.trim().is_empty() {
        return Err(ApiError::bad("", "the secret is empty"));
    }
    let stored = st.sealer.seal(value);
    st.raft
        .propose(Command::PutSecret {
            mesh: mesh.clone(),
            name: name.clone(),
            value: stored,
        })
        .await?;
    tracing::info!(mesh = %mesh, secret = %name, "stored a secret");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /meshes/{mesh}/secrets/{name}`.
pub(super) async fn delete_secret(
    State(st): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_secret_name(&name)?;
    st.raft
        .propose(Command::DeleteSecret {
            mesh: mesh.clone(),
            name: name.clone(),
        })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(crate::command::ApplyError::NotFound) => {
                ApiError::not_found(format!("secret {name:?} in mesh {mesh:?}"))
            }
            e => e.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /meshes/{mesh}/secrets`: the names only.
pub(super) async fn list_secrets(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let names = st.store.secret_names(&mesh)?;
    Ok(Json(
        json!({ "items": names.into_iter().map(|n| json!({"name": n})).collect::<Vec<_>>() }),
    ))
}

fn check_secret_name(name: &str) -> ApiResult<()> {
    if let Some(e) = causeway_api::validate_name("name", name).into_iter().next() {
        return Err(ApiError::bad("name", e.reason));
    }
    Ok(())
}
