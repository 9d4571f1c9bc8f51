//! API tokens with roles (see [`crate::access`]): issued, listed, rotated and revoked by
//! admins, and the audit log they read (see [`crate::audit`]). Also the check every
//! request's bearer token goes through.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::zones::{now_unix, require_mesh};
use super::{ApiError, ApiResult, ApiState};
use crate::access::{ApiRole, ApiTokenRecord, BOOTSTRAP_ADMIN_ID, BOOTSTRAP_READONLY_ID, NEVER};
use crate::audit::Actor;
use crate::command::{ApplyError, Command};
use crate::raft_node::RaftError;
use causeway_api::timestamp::rfc3339;

/// A new token's lifetime when the request names none.
const DEFAULT_VALIDITY: &str = "2160h";
/// How long a rotated token keeps working when the request names no overlap.
const DEFAULT_OVERLAP: &str = "1h";
/// The longest overlap: a rotation is meant to end.
const MAX_OVERLAP_SECS: u64 = 30 * 24 * 3600;

/// The token record a presented bearer token matches, if it works now; the error is
/// the 401 answer.
pub(super) fn check_bearer(st: &ApiState, presented: &str) -> Result<ApiTokenRecord, ApiError> {
    let unauthorized = |why: String| ApiError::new(StatusCode::UNAUTHORIZED, "Authorization", why);
    let h = causeway_pki::api_token::hash(presented);
    let tokens = &st.secrets.tokens;
    let ct = |a: &str| causeway_pki::constant_time_eq(h.as_bytes(), a.as_bytes());
    let bootstrap = if ct(&tokens.admin_sha256) {
        Some(BOOTSTRAP_ADMIN_ID)
    } else if ct(&tokens.readonly_sha256) {
        Some(BOOTSTRAP_READONLY_ID)
    } else {
        None
    };
    let id = bootstrap.map_or_else(|| ApiTokenRecord::id_of(&h), str::to_string);
    // One read; a bootstrap token never rotated nor revoked has no record, and its
    // hashes are in memory already.
    let record = match (st.store.stored_api_token(&id)?, bootstrap) {
        (Some(t), _) => Some(t),
        (None, Some(id)) => Some(ApiTokenRecord::bootstrap(id, &h)),
        (None, None) => None,
    }
    .filter(|t| causeway_pki::constant_time_eq(h.as_bytes(), t.sha256.as_bytes()))
    .ok_or_else(|| unauthorized("invalid token".into()))?;
    match record.refusal(now_unix()) {
        Some(why) => Err(unauthorized(why)),
        None => Ok(record),
    }
}

/// Who a token is, for the audit log.
pub(super) fn actor(t: &ApiTokenRecord) -> Actor {
    Actor {
        token_id: t.id.clone(),
        token_name: t.name.clone(),
        role: t.role,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateApiToken {
    name: String,
    role: String,
    #[serde(default)]
    meshes: Vec<String>,
    /// Go-style duration; default 2160h (90 days).
    valid_for: Option<String>,
}

fn check_token_name(name: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "name",
            "1 to 63 characters: letters, digits, '-', '_' or '.'",
        ))
    }
}

fn parse_duration(field: &str, v: &str) -> ApiResult<u64> {
    let d: causeway_api::Duration = v
        .parse()
        .map_err(|e: causeway_api::DurationError| ApiError::bad(field, e.to_string()))?;
    Ok(d.as_std().as_secs())
}

/// A token's lifetime in the API's answers.
fn expires_at(unix: i64) -> Value {
    if unix == NEVER {
        Value::Null
    } else {
        rfc3339(unix).into()
    }
}

fn listed(t: &ApiTokenRecord, now: i64) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role.as_str(),
        "meshes": t.meshes,
        "createdAt": (t.created_unix > 0).then(|| rfc3339(t.created_unix)),
        "createdBy": t.created_by,
        "expiresAt": expires_at(t.expires_unix),
        "revokedAt": t.revoked_unix.map(rfc3339),
        "live": t.live(now),
    })
}

/// A fresh token and its record.
fn mint(
    name: String,
    role: ApiRole,
    meshes: Vec<String>,
    expires_unix: i64,
    by: &str,
) -> (String, ApiTokenRecord) {
    let token = causeway_pki::api_token::generate();
    let sha256 = causeway_pki::api_token::hash(&token);
    let record = ApiTokenRecord {
        id: ApiTokenRecord::id_of(&sha256),
        name,
        role,
        meshes,
        sha256,
        created_unix: now_unix(),
        expires_unix,
        revoked_unix: None,
        created_by: by.to_string(),
    };
    (token, record)
}

fn issued(t: &ApiTokenRecord, token: String, extra: Value) -> Response {
    let mut v = listed(t, now_unix());
    v["token"] = token.into();
    if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), extra) {
        o.extend(extra);
    }
    (StatusCode::CREATED, Json(v)).into_response()
}

fn caller() -> String {
    crate::audit::current_actor().map_or_else(|| "unknown".into(), |a| a.token_name)
}

/// `POST /api-tokens`: issues a named token with a role; shown once.
pub(super) async fn create(State(st): State<ApiState>, body: Bytes) -> ApiResult<Response> {
    let req: CreateApiToken =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("", e.to_string()))?;
    check_token_name(&req.name)?;
    let role: ApiRole = req
        .role
        .parse()
        .map_err(|e: String| ApiError::bad("role", e))?;
    match role {
        ApiRole::MeshEditor if req.meshes.is_empty() => {
            return Err(ApiError::bad(
                "meshes",
                "a mesh-editor token needs at least one mesh",
            ));
        }
        ApiRole::Admin | ApiRole::Viewer if !req.meshes.is_empty() => {
            return Err(ApiError::bad(
                "meshes",
                format!(
                    "only a mesh-editor token is scoped to meshes; a {} token reaches every mesh",
                    role.as_str()
                ),
            ));
        }
        _ => {}
    }
    let valid_secs = parse_duration(
        "validFor",
        req.valid_for.as_deref().unwrap_or(DEFAULT_VALIDITY),
    )?;
    if valid_secs < 60 {
        return Err(ApiError::bad("validFor", "must be at least 1m"));
    }
    st.raft.read_barrier().await?;
    for (i, mesh) in req.meshes.iter().enumerate() {
        require_mesh(&st, mesh).map_err(|_| {
            ApiError::bad(
                &format!("meshes[{i}]"),
                format!("mesh {mesh:?} does not exist; create it first"),
            )
        })?;
    }
    let mut meshes = req.meshes;
    meshes.sort();
    meshes.dedup();
    let expires = now_unix().saturating_add(valid_secs as i64);
    let (token, record) = mint(req.name, role, meshes, expires, &caller());
    st.raft
        .propose(Command::AddApiToken(record.clone()))
        .await?;
    tracing::info!(token_id = %record.id, name = %record.name, role = record.role.as_str(), "issued an API token");
    Ok(issued(&record, token, json!({})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Also the expired and revoked ones.
    #[serde(default)]
    all: bool,
}

/// `GET /whoami`: the presented token's own record (never the token): who the caller is
/// and what it may change. Any live token may read its own; the web UI uses it to show
/// edit controls only to those who may edit.
pub(super) async fn whoami(axum::Extension(token): axum::Extension<ApiTokenRecord>) -> Json<Value> {
    Json(listed(&token, now_unix()))
}

/// `GET /api-tokens[?all=true]`: the live tokens (never the tokens themselves).
pub(super) async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let now = now_unix();
    let items: Vec<Value> = st
        .store
        .api_tokens()?
        .iter()
        .filter(|t| q.all || t.live(now))
        .map(|t| listed(t, now))
        .collect();
    Ok(Json(json!({ "items": items })))
}

fn refused(e: RaftError, id: &str) -> ApiError {
    match e {
        RaftError::Rejected(ApplyError::NotFound) => {
            ApiError::not_found(format!("API token {id:?}"))
        }
        RaftError::Rejected(ApplyError::Refused(why)) => {
            ApiError::new(StatusCode::CONFLICT, "id", why)
        }
        e => e.into(),
    }
}

/// `DELETE /api-tokens/{id}`: the token stops working on every node at once.
pub(super) async fn revoke(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    st.raft
        .propose(Command::RevokeApiToken { id: id.clone() })
        .await
        .map_err(|e| refused(e, &id))?;
    tracing::info!(token_id = %id, "revoked an API token");
    Ok(Json(json!({ "revoked": id })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateRequest {
    /// Go-style duration; default 1h.
    overlap: Option<String>,
}

/// `POST /api-tokens/{id}/rotate`: a new token with the old one's name, role, meshes
/// and lifetime; the old one keeps working for the overlap (default an hour), so clients
/// move to the new one without downtime.
pub(super) async fn rotate(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("", e.to_string()))?
    };
    let overlap_secs =
        parse_duration("overlap", req.overlap.as_deref().unwrap_or(DEFAULT_OVERLAP))?;
    if overlap_secs > MAX_OVERLAP_SECS {
        return Err(ApiError::bad("overlap", "at most 720h (30 days)"));
    }
    st.raft.read_barrier().await?;
    let old = st
        .store
        .api_token(&id)?
        .ok_or_else(|| ApiError::not_found(format!("API token {id:?}")))?;
    let now = now_unix();
    let expires = if old.expires_unix == NEVER {
        NEVER
    } else {
        now.saturating_add(old.expires_unix.saturating_sub(old.created_unix))
    };
    let (token, new) = mint(
        old.name.clone(),
        old.role,
        old.meshes.clone(),
        expires,
        &caller(),
    );
    st.raft
        .propose(Command::RotateApiToken {
            id: id.clone(),
            new: new.clone(),
            overlap_secs,
        })
        .await
        .map_err(|e| refused(e, &id))?;
    let old_until = rfc3339(
        old.expires_unix
            .min(now.saturating_add(overlap_secs as i64)),
    );
    tracing::info!(token_id = %id, successor = %new.id, "rotated an API token");
    Ok(issued(
        &new,
        token,
        json!({ "replaces": id, "replacedTokenExpiresAt": old_until }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// How many entries, newest last; default 100, at most 10000.
    limit: Option<usize>,
    /// Only the changes made with tokens of this name.
    actor: Option<String>,
}

/// `GET /audit[?limit=N][&actor=NAME]`: who changed what, newest last.
pub(super) async fn audit_log(
    State(st): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::audit::RETAINED as usize).contains(&limit) {
        return Err(ApiError::bad("limit", "between 1 and 10000"));
    }
    st.raft.read_barrier().await?;
    let items: Vec<Value> = st
        .store
        .audit_entries(limit, |e| {
            q.actor.as_deref().is_none_or(|a| e.actor.token_name == a)
        })?
        .into_iter()
        .map(|e| {
            let at =
                time::OffsetDateTime::from_unix_timestamp_nanos(e.at_unix_ms as i128 * 1_000_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    });
            json!({
                "seq": e.seq,
                "at": at,
                "tokenId": e.actor.token_id,
                "tokenName": e.actor.token_name,
                "role": e.actor.role.as_str(),
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
