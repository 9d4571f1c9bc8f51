//! The global policy API: REST over axum, TLS by default, bearer-token authentication.
//!
//! Writes are validated here, then proposed to Raft (from any node; a follower's proposal
//! is forwarded to the leader by Raft itself). Reads are linearizable through ReadIndex
//! unless the caller asks for `?stale=true`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use causeway_api::{FieldError, Resource, ResourceKey, Scope, TypeInfo};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::command::{ApplyError, Command, Member, WriteOutcome};
use crate::raft_node::{MemberChange, RaftError, RaftHandle};
use crate::store::{Store, StoreError};

mod affected;
mod api_ca;
mod api_tokens;
mod joining;
mod mesh_ca;
mod overview;
mod proxy_tokens;
mod raft_ca;
mod seal;
mod service_policies;
mod services;
mod stats;
mod ui;
mod zone_ca;
mod zones;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) raft: RaftHandle,
    pub(crate) store: Store,
    /// The cluster's secrets, opened: the API token hashes, the CAs, the signing keys.
    pub(crate) secrets: Arc<crate::command::ClusterSecrets>,
    /// The KDS service when this node serves zones (for live zone status and dumps).
    pub(crate) kds: Option<crate::kds::KdsService>,
    pub(crate) heartbeat: std::time::Duration,
    pub(crate) status_interval: std::time::Duration,
    /// Seals secrets (provided CA keys) at rest.
    pub(crate) sealer: Arc<crate::sealing::Sealer>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// This node's Raft identity as the transport uses it now (`None`: plaintext).
    pub(crate) raft_tls: crate::transport::TlsSource,
    /// The API certificate this node serves, from the API CA (empty: the operator's own
    /// with `--api-cert`, or plain HTTP).
    pub(crate) api_cert: tokio::sync::watch::Receiver<String>,
}

/// An API error: status, message and the field errors behind it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, field: &str, reason: impl Into<String>) -> ApiError {
        let reason = reason.into();
        ApiError {
            status,
            message: reason.clone(),
            errors: vec![FieldError {
                field: field.into(),
                reason,
            }],
        }
    }
    fn bad(field: &str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, field, reason)
    }
    fn not_found(what: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "name", format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": self.status.as_u16(),
            "message": self.message,
            "errors": self.errors,
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "storage error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            format!("storage error: {e}"),
        )
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> ApiError {
        match e {
            RaftError::Rejected(ApplyError::Conflict { expected, found }) => ApiError::new(
                StatusCode::CONFLICT,
                "version",
                format!(
                    "version conflict: expected version {expected}, the resource is at {found}; read it again and retry"
                ),
            ),
            RaftError::Rejected(ApplyError::NotFound) => {
                ApiError::new(StatusCode::NOT_FOUND, "name", "not found")
            }
            RaftError::Rejected(e @ ApplyError::MeshMissing(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "mesh", e.to_string())
            }
            RaftError::Rejected(e @ ApplyError::MeshNotEmpty(_)) => {
                ApiError::new(StatusCode::CONFLICT, "name", e.to_string())
            }
            RaftError::Rejected(e @ ApplyError::OwnedElsewhere { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "origin", e.to_string())
            }
            // A change the cluster's state does not allow now (a rotation's step out of
            // turn, the last admin token): the caller must look again.
            RaftError::Rejected(ApplyError::Refused(why)) => {
                ApiError::new(StatusCode::CONFLICT, "", why)
            }
            RaftError::DiskLow(why) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "", why),
            e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", e.to_string()),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API CAs to trust global nodes' certificates from, as the cluster holds them now:
/// one, or two during an API CA rotation. What tokens carry and what nodes dial each
/// other with (the secrets opened at start may predate a rotation).
pub(crate) fn api_cas(st: &ApiState) -> ApiResult<String> {
    Ok(st
        .store
        .secrets()?
        .map(|s| crate::cluster_ca::api_trust(&s))
        .unwrap_or_else(|| st.secrets.api_ca_cert_pem.clone()))
}

/// Builds the router.
pub(crate) fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/cluster", get(cluster_status))
        .route("/cluster/seal", get(seal::status))
        .route(
            "/dataplane-token-keys",
            get(proxy_tokens::list_signing_keys),
        )
        .route(
            "/dataplane-token-keys/rotate",
            post(proxy_tokens::rotate_signing_key),
        )
        .route("/cluster/api-ca", get(api_ca::status))
        .route("/cluster/api-ca/rotate", post(api_ca::rotate))
        .route("/cluster/raft-ca", get(raft_ca::status))
        .route("/cluster/raft-ca/rotate", post(raft_ca::rotate))
        .route("/zone-ca", get(zone_ca::status))
        .route("/zone-ca/rotate", post(zone_ca::rotate))
        .route(
            "/zone-token-key/rotate",
            post(zone_ca::rotate_zone_token_key),
        )
        .route("/overview", get(overview::overview))
        .route("/whoami", get(api_tokens::whoami))
        .route(
            "/api-tokens",
            get(api_tokens::list).post(api_tokens::create),
        )
        .route(
            "/api-tokens/{id}",
            axum::routing::delete(api_tokens::revoke),
        )
        .route("/api-tokens/{id}/rotate", post(api_tokens::rotate))
        .route("/audit", get(api_tokens::audit_log))
        .route("/cluster/members", post(add_member))
        .route("/cluster/members/{id}/join-token", post(joining::new_token))
        .route(
            "/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/zones/{name}/token", post(zones::create_token))
        .route(
            "/zones/{name}/tokens",
            get(zones::list_tokens).delete(zones::revoke_all_tokens),
        )
        .route(
            "/zones/{name}/tokens/{id}",
            axum::routing::delete(zones::revoke_token),
        )
        .route(
            "/zones/{name}/ingress-token",
            post(proxy_tokens::create_ingress_token),
        )
        .route(
            "/zones/{name}/ingress-tokens",
            get(proxy_tokens::list_ingress_tokens).delete(proxy_tokens::revoke_all_ingress_tokens),
        )
        .route(
            "/zones/{name}/ingress-tokens/{id}",
            axum::routing::delete(proxy_tokens::revoke_ingress_token),
        )
        .route("/zones/{name}/config-dump", get(zones::config_dump))
        .route("/zones/{name}/revoke-ca", post(zones::revoke_ca))
        .route("/meshes/{mesh}/secrets", get(zones::list_secrets))
        .route(
            "/meshes/{mesh}/secrets/{name}",
            axum::routing::put(zones::put_secret).delete(zones::delete_secret),
        )
        .route(
            "/meshes/{mesh}/dataplane-token",
            post(proxy_tokens::create_dataplane_token),
        )
        .route(
            "/meshes/{mesh}/dataplane-tokens",
            get(proxy_tokens::list_dataplane_tokens).delete(proxy_tokens::revoke_service_tokens),
        )
        .route(
            "/meshes/{mesh}/dataplane-tokens/{id}",
            axum::routing::delete(proxy_tokens::revoke_dataplane_token),
        )
        .route("/meshes/{mesh}/stats", get(stats::mesh_stats))
        .route("/meshes/{mesh}/services", get(services::list))
        .route("/meshes/{mesh}/services/{name}", get(services::get))
        .route(
            "/meshes/{mesh}/dataplanes/{name}/inspect",
            get(zones::inspect_dataplane),
        )
        .route("/meshes/{mesh}/ca", get(mesh_ca::status))
        .route("/meshes/{mesh}/ca/rotate", post(mesh_ca::rotate))
        .route(
            "/meshes/{mesh}/{plural}/{name}/affected",
            get(affected::affected),
        )
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/{plural}", get(list_global))
        .route(
            "/{plural}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/ui/types.json", get(ui::types))
        .route(
            crate::join::JOIN_PATH,
            post(joining::join).layer(axum::extract::DefaultBodyLimit::max(joining::MAX_JOIN_BODY)),
        )
        .merge(authed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// How long a client may take to send a request's headers (HTTP/1.1; counted from when
/// the connection waits for a request, so an idle keep-alive connection closes then
/// too): a slowloris client is cut off.
pub(crate) const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most a request's header section may take, over HTTP/1.1 and HTTP/2 alike.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Requests in flight on one HTTP/2 connection.
pub(crate) const MAX_STREAMS: u32 = 100;
/// How long a TLS handshake may take (axum-server's default for the API; set on KDS).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The API listener's HTTP limits (its TLS handshake has axum-server's 10 s).
pub(crate) fn limit_http(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS)
        // A client gone without a word (host down, cable out) frees its connection, and
        // its place under the connection limit, within 80 s.
        .keep_alive_interval(Some(std::time::Duration::from_secs(60)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
}

/// The most a request body may take: a resource is a few KiB, and the largest (route
/// tables, a provided CA's chain) stay well under it.
pub(crate) const MAX_BODY_BYTES: usize = 2 << 20;

/// How much of an oversized body is read and dropped so an HTTP/1.1 client gets its 413
/// (see `body_limit`); past it the connection is closed at once.
const MAX_DRAINED_BYTES: u64 = 32 << 20;
/// How long that may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request's body may take to arrive, once its headers have.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers 413 to a request whose declared body is over [`MAX_BODY_BYTES`] without
/// keeping it: over HTTP/2 at once (then the stream is reset), over HTTP/1.1 at once to
/// a client that asked `Expect: 100-continue` (it never sends the body), else once the
/// body it is sending has been read and dropped. A body that declares no length is cut
/// at the limit as it is read, and answered 413 too.
async fn body_limit(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(n) = declared.filter(|n| *n > MAX_BODY_BYTES as u64) else {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return next.run(req).await;
        }
        // Every handler reads its body whole: read it here, within a deadline, so a
        // client that trickles it holds nothing for long.
        let (parts, body) = req.into_parts();
        let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
        return match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
            Ok(Ok(bytes)) => {
                next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                    .await
            }
            Ok(Err(_)) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("the body is over {MAX_BODY_BYTES} bytes, or broke off"),
            )
            .into_response(),
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body",
                format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
            .into_response(),
        };
    };
    let refused = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body",
        format!("the body is {n} bytes; the API accepts at most {MAX_BODY_BYTES}"),
    )
    .into_response();
    // An HTTP/1.1 client that did not ask `Expect: 100-continue` is sending the body
    // and reads no answer until it is done: read it and drop it (up to a bound, in a
    // bounded time), or it would see a closed connection instead of its 413. Over
    // HTTP/2 the stream is reset once answered (NO_ERROR), which clients expect.
    let expects = req.headers().contains_key(axum::http::header::EXPECT);
    if req.version() == axum::http::Version::HTTP_11 && !expects && n <= MAX_DRAINED_BYTES {
        use futures::StreamExt as _;
        let mut data = req.into_body().into_data_stream();
        let drain = async { while let Some(Ok(_)) = data.next().await {} };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    refused
}

/// Counts each request by its route's pattern and status, and times it.
async fn count(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let m = &st.metrics;
    m.api_requests
        .get_or_create(&crate::metrics::RequestLabels {
            method,
            route: route.clone(),
            code: resp.status().as_u16(),
        })
        .inc();
    m.api_seconds
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: the node's metrics (see [`crate::metrics`]), Prometheus text.
async fn metrics(State(st): State<ApiState>) -> Response {
    let view = st.raft.view().borrow().clone();
    let connected = st.kds.as_ref().map_or(0, |k| k.connected_zones());
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let text = st.metrics.render(&view, &st.store, connected, now_ms);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            causeway_api::exposition::PROMETHEUS_TEXT,
        )],
        text,
    )
        .into_response()
}

// === auth ===

async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "missing bearer token; pass an API token",
        )
        .into_response();
    };
    let token = match api_tokens::check_bearer(&st, presented) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let Err(why) = crate::access::authorize(&token, write, req.uri().path()) {
        return ApiError::new(StatusCode::FORBIDDEN, "Authorization", why).into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(token.clone());
    // Every write this request proposes carries who made it (the audit log).
    crate::audit::ACTOR
        .scope(api_tokens::actor(&token), next.run(req))
        .await
}

// === resources ===

#[derive(Deserialize, Default)]
struct ReadQuery {
    #[serde(default)]
    stale: bool,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    stale: bool,
    /// `key=value,other-key` (has the label).
    labels: Option<String>,
    limit: Option<usize>,
    /// Name of the last item of the previous page.
    after: Option<String>,
    /// Only resources of this origin: a zone's name, or `global`.
    origin: Option<String>,
}

#[derive(Deserialize, Default)]
struct DeleteQuery {
    version: Option<u64>,
}

fn type_for(plural: &str, scope: Scope) -> ApiResult<&'static TypeInfo> {
    let t = causeway_api::type_by_plural(plural).ok_or_else(|| {
        let known: Vec<&str> = causeway_api::types().iter().map(|t| t.plural).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "type",
            format!(
                "unknown resource type {plural:?}; known: {}",
                known.join(", ")
            ),
        )
    })?;
    if t.scope != scope {
        let hint = match t.scope {
            Scope::Global => format!("/{}", t.plural),
            Scope::Mesh => format!("/meshes/{{mesh}}/{}", t.plural),
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "type",
            format!("{} resources live under {hint}", t.kind),
        ));
    }
    Ok(t)
}

async fn barrier(st: &ApiState, stale: bool) -> ApiResult<()> {
    if !stale {
        st.raft.read_barrier().await?;
    }
    Ok(())
}

fn key(t: &TypeInfo, mesh: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: t.kind.to_string(),
        mesh: mesh.to_string(),
        name: name.to_string(),
    }
}

async fn do_get(
    st: &ApiState,
    t: &TypeInfo,
    mesh: &str,
    name: &str,
    q: ReadQuery,
) -> ApiResult<Json<Resource>> {
    barrier(st, q.stale).await?;
    match st.store.get(&key(t, mesh, name))? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found(describe(t, mesh, name))),
    }
}

fn describe(t: &TypeInfo, mesh: &str, name: &str) -> String {
    if mesh.is_empty() {
        format!("{} {name:?}", t.kind)
    } else {
        format!("{} {name:?} in mesh {mesh:?}", t.kind)
    }
}

fn parse_selector(s: &str) -> ApiResult<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
            None => (part, None),
        };
        if k.is_empty() {
            return Err(ApiError::bad(
                "labels",
                format!("selector term {part:?} has no key; use key=value or key"),
            ));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

async fn do_list(st: &ApiState, t: &TypeInfo, mesh: &str, q: ListQuery) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad("limit", "must be between 1 and 1000"));
    }
    let selector = parse_selector(q.labels.as_deref().unwrap_or(""))?;
    barrier(st, q.stale).await?;
    let page = match q.origin.as_deref() {
        None => st
            .store
            .list(t.kind, mesh, &selector, q.after.as_deref(), limit)?,
        Some(origin) => {
            // Pages of the filtered list: read on until `limit` match or the kind ends.
            let mut out = crate::store::Page::default();
            let mut after = q.after.clone();
            loop {
                let page = st
                    .store
                    .list(t.kind, mesh, &selector, after.as_deref(), 1000)?;
                for r in page.items {
                    if out.items.len() == limit {
                        out.next = out.items.last().map(|r: &Resource| r.name.clone());
                        return Ok(Json(json!({ "items": out.items, "next": out.next })));
                    }
                    if r.origin.as_deref().unwrap_or("global") == origin {
                        out.items.push(r);
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break out,
                }
            }
        }
    };
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

fn parse_body(body: &[u8]) -> ApiResult<Resource> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad("", "the body is not UTF-8"))?;
    let parsed = if text.trim_start().starts_with('{') {
        Resource::from_json(body)
    } else {
        Resource::from_yaml(text)
    };
    parsed.map_err(|e| ApiError::bad("", e.to_string()))
}

fn expected_version(headers: &HeaderMap, body_version: Option<u64>) -> ApiResult<Option<u64>> {
    if let Some(v) = headers.get(axum::http::header::IF_MATCH) {
        let s = v.to_str().unwrap_or("").trim().trim_matches('"');
        return s.parse().map(Some).map_err(|_| {
            ApiError::bad(
                "If-Match",
                format!("expected a resource version number, got {s:?}"),
            )
        });
    }
    Ok(body_version)
}

async fn do_put(
    st: &ApiState,
    t: &TypeInfo,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    refuse_allocated(t)?;
    let mut r = parse_body(body)?;
    let mut errors = Vec::new();
    if r.kind != t.kind {
        errors.push(FieldError {
            field: "type".into(),
            reason: format!("is {:?} but this URL takes {}", r.kind, t.kind),
        });
    }
    if r.name != name {
        errors.push(FieldError {
            field: "name".into(),
            reason: format!("is {:?} but the URL names {name:?}", r.name),
        });
    }
    if t.scope == Scope::Mesh && r.mesh.as_deref() != Some(mesh) {
        // Mesh may be omitted in the body; the URL says it.
        if r.mesh.is_none() {
            r.mesh = Some(mesh.to_string());
        } else {
            errors.push(FieldError {
                field: "mesh".into(),
                reason: format!(
                    "is {:?} but the URL names mesh {mesh:?}",
                    r.mesh.as_deref().unwrap_or("")
                ),
            });
        }
    }
    if errors.is_empty()
        && let Err(v) = causeway_api::validate(&r)
    {
        errors = v.errors;
    }
    if !errors.is_empty() {
        let message = format!(
            "invalid {}: {}",
            describe(t, mesh, name),
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            errors,
        });
    }
    let expected = expected_version(headers, r.version)?;
    // Accepted, but the parts the proxies do not enforce yet are said so: no silent
    // no-ops.
    let warnings = causeway_api::warnings(&r);
    // Server-set fields are never taken from the client.
    r.version = None;
    r.creation_time = None;
    r.modification_time = None;
    r.origin = None;
    let k = r.key();
    let outcome = st
        .raft
        .propose(Command::Put {
            resource: Box::new(r),
            expected_version: expected,
        })
        .await?;
    let created = matches!(outcome, WriteOutcome::Written { created: true, .. });
    let stored = st
        .store
        .get(&k)?
        .ok_or_else(|| ApiError::not_found(describe(t, mesh, name)))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = causeway_api::WriteResponse {
        resource: &stored,
        warnings: &warnings,
    };
    Ok((status, Json(body)).into_response())
}

/// What the cluster allocates itself (VirtualIp) is read-only: a write would break the
/// promise that an address never changes.
fn refuse_allocated(t: &TypeInfo) -> ApiResult<()> {
    if t.role != causeway_api::Role::Allocated {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "type",
        format!(
            "{} resources are allocated by the global control plane (one per mesh service, \
             stable for the mesh's life) and cannot be written; set the range with the \
             Mesh's spec.networking.virtualIps.cidr",
            t.kind
        ),
    ))
}

async fn do_delete(
    st: &ApiState,
    t: &TypeInfo,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    q: DeleteQuery,
) -> ApiResult<StatusCode> {
    refuse_allocated(t)?;
    let expected = expected_version(headers, q.version)?;
    st.raft
        .propose(Command::Delete {
            key: key(t, mesh, name),
            expected_version: expected,
        })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(ApplyError::NotFound) => {
                ApiError::not_found(describe(t, mesh, name))
            }
            e => e.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_global(
    State(st): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Global)?;
    let Json(r) = do_get(&st, t, "", &name, q).await?;
    let mut v = serde_json::to_value(r).expect("resources serialize");
    if t.kind == "Zone" {
        zones::attach_status(&st, std::slice::from_mut(&mut v))?;
    }
    Ok(Json(v))
}

async fn list_global(
    State(st): State<ApiState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Global)?;
    let Json(mut v) = do_list(&st, t, "", q).await?;
    if t.kind == "Zone"
        && let Some(items) = v.get_mut("items").and_then(Value::as_array_mut)
    {
        zones::attach_status(&st, items)?;
    }
    Ok(Json(v))
}

async fn put_global(
    State(st): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let t = type_for(&plural, Scope::Global)?;
    do_put(&st, t, "", &name, &headers, &body).await
}

async fn delete_global(
    State(st): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let t = type_for(&plural, Scope::Global)?;
    do_delete(&st, t, "", &name, &headers, q).await
}

async fn get_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(q): Query<ReadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let t = type_for(&plural, Scope::Mesh)?;
    let Json(r) = do_get(&st, t, &mesh, &name, q).await?;
    Ok(in_format(&headers, &r))
}

/// A resource as JSON, or as YAML for a client that accepts `application/yaml` (the web
/// UI's policy view, `curl -H 'Accept: application/yaml'`), in the shape `causeway apply`
/// takes back.
fn in_format(headers: &HeaderMap, r: &Resource) -> Response {
    let yaml = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/yaml"));
    if !yaml {
        return Json(r).into_response();
    }
    match serde_yaml::to_string(r) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/yaml; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            format!("encoding YAML: {e}"),
        )
        .into_response(),
    }
}

async fn list_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Mesh)?;
    do_list(&st, t, &mesh, q).await
}

async fn put_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let t = type_for(&plural, Scope::Mesh)?;
    do_put(&st, t, &mesh, &name, &headers, &body).await
}

async fn delete_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let t = type_for(&plural, Scope::Mesh)?;
    do_delete(&st, t, &mesh, &name, &headers, q).await
}

// === cluster ===

async fn ready(State(st): State<ApiState>) -> Response {
    let view = st.raft.view();
    if view.has_changed().is_err() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "the Raft thread has stopped (a storage failure); this node cannot serve",
        )
        .into_response();
    }
    let v = view.borrow().clone();
    if v.leader_id == 0 {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", "no leader known")
            .into_response();
    }
    (
        StatusCode::OK,
        Json(json!({"ready": true, "leader_id": v.leader_id, "applied_index": v.applied})),
    )
        .into_response()
}

/// The cluster as this node sees it. Lag per member is only known to the leader; a
/// follower reports `null` there and names the leader to ask.
async fn cluster_status(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    let v = st.raft.view().borrow().clone();
    let members = st.store.members()?;
    let mut list = Vec::new();
    let ids: std::collections::BTreeSet<u64> = v
        .progress
        .iter()
        .map(|p| p.id)
        .chain(members.keys().copied())
        .collect();
    for id in ids {
        let m = members.get(&id);
        let p = v.progress.iter().find(|p| p.id == id);
        let role = match p {
            None => "removed",
            Some(p) if !p.voter => "learner",
            Some(_) if id == v.leader_id => "leader",
            Some(_) => "follower",
        };
        if role == "removed" {
            continue;
        }
        let matched = p.and_then(|p| p.matched);
        list.push(json!({
            "id": id,
            "api_addr": m.map(|m| m.api_addr.as_str()),
            "raft_addr": m.map(|m| m.raft_addr.as_str()),
            "role": role,
            "voter": p.is_some_and(|p| p.voter),
            "matched_index": matched,
            "behind": matched.map(|m| v.last_index.saturating_sub(m)),
        }));
    }
    Ok(Json(json!({
        "served_by": v.id,
        "leader_id": v.leader_id,
        "leader_api_addr": members.get(&v.leader_id).map(|m| m.api_addr.clone()),
        "term": v.term,
        "commit_index": v.commit,
        "applied_index": v.applied,
        "disk": {
            "free_bytes": v.disk.free_bytes,
            "reserve_bytes": v.disk.reserve_bytes,
            "writes_refused": v.disk.low,
        },
        "first_log_index": v.first_index,
        "last_log_index": v.last_index,
        "role": v.role,
        "members": list,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: u64,
    raft_addr: String,
    api_addr: String,
    /// How long the join token lives (default 15m, at most 24h).
    #[serde(default)]
    token_ttl: Option<String>,
}

/// `POST /cluster/members`: when the cluster manages its Raft certificates, answers with
/// the new node's single-use join token (it becomes a voter when it joins with it);
/// otherwise adds the voter at once.
async fn add_member(State(st): State<ApiState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m: AddMember = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "",
            format!("expected {{id, raft_addr, api_addr, token_ttl}}: {e}"),
        )
    })?;
    if m.id == 0 {
        return Err(ApiError::bad("id", "must be a positive integer"));
    }
    let ttl = joining::token_ttl("token_ttl", m.token_ttl.as_deref())?;
    for (field, addr) in [("raft_addr", &m.raft_addr), ("api_addr", &m.api_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::bad(
                field,
                format!("{addr:?} is not an ip:port address"),
            ));
        }
    }
    let v = st.raft.view().borrow().clone();
    if v.progress.iter().any(|p| p.id == m.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "id",
            format!("node {} is already a member", m.id),
        ));
    }
    // A cluster that manages its Raft certificates adds the node when it joins with its
    // token; one on the operator's certificates adds it now.
    if joining::manages_raft_certificates(&st) {
        let (token, exp) = joining::issue(&st, m.id, m.raft_addr, m.api_addr, ttl).await?;
        return Ok(Json(
            json!({"added": m.id, "join_token": token, "expires_unix": exp}),
        ));
    }
    st.raft
        .change_members(MemberChange::Add(Member {
            id: m.id,
            raft_addr: m.raft_addr,
            api_addr: m.api_addr,
        }))
        .await?;
    Ok(Json(json!({"added": m.id})))
}

/// `DELETE /cluster/members/{id}`: removes a voter (and cancels any join token of it),
/// or cancels the join tokens of a node that was added and has not joined.
async fn remove_member(State(st): State<ApiState>, Path(id): Path<u64>) -> ApiResult<Json<Value>> {
    let v = st.raft.view().borrow().clone();
    if !v.progress.iter().any(|p| p.id == id) {
        st.raft.read_barrier().await?;
        if joining::pending(&st, id)? {
            joining::cancel(&st, id).await?;
            return Ok(Json(json!({"removed": id, "joined": false})));
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id",
            format!("node {id} is not a member"),
        ));
    }
    if v.progress.len() == 1 {
        return Err(ApiError::bad("id", "cannot remove the last member"));
    }
    st.raft.change_members(MemberChange::Remove(id)).await?;
    if joining::manages_raft_certificates(&st) {
        joining::cancel(&st, id).await?;
    }
    Ok(Json(json!({"removed": id})))
}

// === OpenAPI ===

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> Value {
    let mut paths = BTreeMap::new();
    let err = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let res = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}});
    let list = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResourceList"}}}});
    let written = json!({"description": "The resource as stored, with `warnings` when the proxies do not enforce all of it yet", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WrittenResource"}}}});
    let list_params = json!([
        {"name": "labels", "in": "query", "schema": {"type": "string"}, "description": "label selector: key=value,key2 (has key2)"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
        {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "the `next` value of the previous page"},
        {"name": "stale", "in": "query", "schema": {"type": "boolean"}, "description": "read this node's state without a linearizable barrier"}
    ]);
    for t in causeway_api::types() {
        let (base, mesh_param) = match t.scope {
            Scope::Global => (format!("/{}", t.plural), vec![]),
            Scope::Mesh => (
                format!("/meshes/{{mesh}}/{}", t.plural),
                vec![
                    json!({"name": "mesh", "in": "path", "required": true, "schema": {"type": "string"}}),
                ],
            ),
        };
        let mut item_params = mesh_param.clone();
        item_params.push(
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
        let mut lp = mesh_param.clone();
        lp.extend(list_params.as_array().expect("array").iter().cloned());
        paths.insert(
            base.clone(),
            json!({"get": {"summary": format!("List {} resources", t.kind), "parameters": lp, "responses": {"200": list, "default": err}}}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "parameters": item_params,
                "get": {"summary": if t.scope == Scope::Mesh { format!("Get a {} (as YAML with Accept: application/yaml)", t.kind) } else { format!("Get a {}", t.kind) }, "responses": {"200": res, "default": err}},
                "put": {"summary": format!("Create or replace a {} (optimistic concurrency: a `version` in the body or an If-Match header)", t.kind),
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}, "application/yaml": {}}},
                        "responses": {"200": written, "201": written, "default": err}},
                "delete": {"summary": format!("Delete a {}", t.kind), "responses": {"204": {"description": "Deleted"}, "default": err}}
            }),
        );
    }
    paths.insert("/cluster".into(), json!({"get": {"summary": "Raft cluster status", "responses": {"200": {"description": "status"}}}}));
    paths.insert("/dataplane-token-keys".into(), json!({"get": {"summary": "The keys that sign and verify dataplane and ingress tokens (ids and dates, never a key)", "responses": {"200": {"description": "keys"}}}}));
    paths.insert("/dataplane-token-keys/rotate".into(), json!({"post": {"summary": "A new key signs dataplane and ingress tokens; the previous one verifies for the overlap (body: overlap, default 168h, at most 720h; 0s for a leaked key). Admins only", "responses": {"200": {"description": "keys"}, "default": err}}}));
    paths.insert("/cluster/api-ca".into(), json!({"get": {"summary": "The CA of the nodes' API and KDS certificates (and the staged or previous one during a rotation), the bundle clients should trust (bundlePem), which CA each node's certificate is from, which CAs each zone trusts, and what the rotation's next step waits for (?local=true: this node only)", "responses": {"200": {"description": "API CA status"}}}}));
    paths.insert("/cluster/api-ca/rotate".into(), json!({"post": {"summary": "A step of an API CA rotation (body: step stage|activate|finish, force): stage a new CA every client and zone trusts, activate it (every node serves certificates from it), finish (drop the old one). Each step waits for the zones or nodes unless forced. Admins only", "responses": {"200": {"description": "API CA status"}, "default": err}}}));
    paths.insert("/cluster/raft-ca".into(), json!({"get": {"summary": "The CA of the nodes' Raft certificates (and the staged or previous one during a rotation), the CAs each node's transport trusts and the CA of the certificate it presents, and what the rotation's next step waits for (?local=true: this node only)", "responses": {"200": {"description": "Raft CA status"}}}}));
    paths.insert("/cluster/raft-ca/rotate".into(), json!({"post": {"summary": "A step of a Raft CA rotation (body: step stage|activate|finish, force): stage a new CA every node trusts, activate it (every node issues itself a certificate from it), finish (drop the old one). Each step waits for every node unless forced. Admins only", "responses": {"200": {"description": "Raft CA status"}, "default": err}}}));
    paths.insert("/zone-ca".into(), json!({"get": {"summary": "The CA of zones' KDS certificates (and the one it replaces during a rotation), which CA each zone's certificate is from, and what the rotation's next step waits for", "responses": {"200": {"description": "zone CA status"}}}}));
    paths.insert("/zone-ca/rotate".into(), json!({"post": {"summary": "A step of a zone CA rotation (body: step stage|finish, force). Stage: a new CA signs zone certificates and zones renew at once; finish: the old CA is dropped once every zone connected with a certificate of the new one. Admins only", "responses": {"200": {"description": "zone CA status"}, "default": err}}}));
    paths.insert("/zone-token-key/rotate".into(), json!({"post": {"summary": "A new key signs zone tokens; issued tokens not yet used stop enrolling (the answer counts them). Admins only", "responses": {"200": {"description": "rotated"}, "default": err}}}));
    paths.insert("/cluster/seal".into(), json!({"get": {"summary": "Each node's seal key (fingerprint) and how many stored keys are sealed under it, the previous key or neither; what a seal key rotation waits for (?local=true: this node only)", "responses": {"200": {"description": "seal status"}}}}));
    paths.insert("/cluster/members".into(), json!({"post": {"summary": "Add a node; answers with its single-use join token (body: id, raft_addr, api_addr, token_ttl)", "responses": {"200": {"description": "added"}, "default": err}}}));
    paths.insert("/cluster/members/{id}/join-token".into(), json!({"post": {"summary": "A new join token for a member that has not joined yet (body: token_ttl)", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "the token"}, "default": err}}}));
    paths.insert("/cluster/join".into(), json!({"post": {"summary": "A node joins with its join token and a CSR (authenticated by the join token, not an API token)", "security": [], "responses": {"200": {"description": "its Raft certificate, the CA, the members and the seal key"}, "401": err, "default": err}}}));
    paths.insert("/cluster/members/{id}".into(), json!({"delete": {"summary": "Remove a node", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "removed"}, "default": err}}}));
    paths.insert("/meshes/{mesh}/stats".into(), json!({"get": {
        "summary": "Golden signals across zones (success rate, requests per second, p50/p95/p99, each zone's share), from the zones' reports; what `causeway stat` shows",
        "parameters": [
            {"name": "mesh", "in": "path", "required": true, "schema": {"type": "string"}},
            {"name": "by", "in": "query", "schema": {"type": "string", "enum": ["service", "zone", "caller", "callee"], "default": "service"}},
            {"name": "window", "in": "query", "schema": {"type": "string", "enum": ["1m", "5m", "15m"], "default": "1m"}},
            {"name": "service", "in": "query", "schema": {"type": "string"}, "description": "only this service's rows"},
            {"name": "zone", "in": "query", "schema": {"type": "string"}, "description": "only what this zone's sidecars counted"},
            {"name": "raw", "in": "query", "schema": {"type": "boolean"}, "description": "the zones' reports as held, unmerged"}
        ],
        "responses": {"200": {"description": "the view: rows, the zones whose reports it holds (with their age), and the connected zones whose report was missing"}, "default": err}}}));
    let mesh_param =
        json!({"name": "mesh", "in": "path", "required": true, "schema": {"type": "string"}});
    let zone_param =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let id_param =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    paths.insert("/meshes/{mesh}/dataplane-token".into(), json!({"post": {"summary": "Issue a dataplane token for one service (body: service, validFor); shown once", "parameters": [mesh_param], "responses": {"201": {"description": "the token and its id"}, "default": err}}}));
    paths.insert("/meshes/{mesh}/dataplane-tokens".into(), json!({
        "get": {"summary": "List dataplane tokens (ids, service, expiry, revocation; never the tokens); ?service=S, ?expired=true", "parameters": [mesh_param], "responses": {"200": {"description": "items"}, "default": err}},
        "delete": {"summary": "Revoke every live token of a service (?service=S, required)", "parameters": [mesh_param], "responses": {"200": {"description": "the revoked ids"}, "404": err, "default": err}}}));
    paths.insert("/meshes/{mesh}/dataplane-tokens/{id}".into(), json!({"delete": {"summary": "Revoke a dataplane token: zones refuse its next registration and certificate and end its streams", "parameters": [mesh_param, id_param], "responses": {"200": {"description": "the revoked id"}, "404": err, "default": err}}}));
    paths.insert("/zones/{name}/ingress-token".into(), json!({"post": {"summary": "Issue an ingress token for one zone (body: validFor); shown once", "parameters": [zone_param], "responses": {"201": {"description": "the token and its id"}, "default": err}}}));
    paths.insert("/zones/{name}/ingress-tokens".into(), json!({
        "get": {"summary": "List a zone's ingress tokens; ?expired=true", "parameters": [zone_param], "responses": {"200": {"description": "items"}, "default": err}},
        "delete": {"summary": "Revoke every live ingress token of the zone", "parameters": [zone_param], "responses": {"200": {"description": "the revoked ids"}, "404": err, "default": err}}}));
    paths.insert("/zones/{name}/ingress-tokens/{id}".into(), json!({"delete": {"summary": "Revoke an ingress token", "parameters": [zone_param, id_param], "responses": {"200": {"description": "the revoked id"}, "404": err, "default": err}}}));
    paths.insert("/api-tokens".into(), json!({
        "get": {"summary": "List API tokens (id, name, role, meshes, expiry; never the tokens); ?all=true adds expired and revoked ones. Admin only", "responses": {"200": {"description": "items"}, "default": err}},
        "post": {"summary": "Issue a named API token (body: name, role admin|mesh-editor|viewer, meshes for a mesh-editor, validFor, default 2160h); shown once. Admin only", "responses": {"201": {"description": "the token and its id"}, "400": err, "default": err}}}));
    paths.insert("/api-tokens/{id}".into(), json!({"delete": {"summary": "Revoke an API token (not the last live admin token). Admin only", "parameters": [id_param], "responses": {"200": {"description": "the revoked id"}, "404": err, "409": err, "default": err}}}));
    paths.insert("/api-tokens/{id}/rotate".into(), json!({"post": {"summary": "Replace an API token with a new one of the same name, role and meshes; the old one works for the overlap (body: overlap, default 1h, at most 720h). `admin` and `readonly` are the bootstrap tokens. Admin only", "parameters": [id_param], "responses": {"201": {"description": "the new token, its id, and when the old one stops"}, "404": err, "409": err, "default": err}}}));
    paths.insert("/audit".into(), json!({"get": {"summary": "The audit log: every change made through the API, with the token that made it, newest last; ?limit=N (default 100), ?actor=NAME. Admin only", "responses": {"200": {"description": "items"}, "default": err}}}));
    paths.insert("/whoami".into(), json!({"get": {"summary": "The presented token's own record: id, name, role, meshes, expiry (never the token). Any token", "responses": {"200": {"description": "the token's record"}, "401": err}}}));
    paths.insert("/overview".into(), json!({"get": {"summary": "What the web UI's overview shows: zones (online, KDS lag, version, last seen), meshes with their services, dataplanes and policies, drills running, warnings; ?stale=true skips the read barrier. Any token", "responses": {"200": {"description": "the overview"}, "default": err}}}));
    paths.insert("/meshes/{mesh}/services".into(), json!({"get": {"summary": "The mesh's services (from its Dataplanes' inbounds) with their instance count per zone", "responses": {"200": {"description": "items"}, "404": err, "default": err}}}));
    paths.insert("/meshes/{mesh}/services/{name}".into(), json!({"get": {"summary": "One service's instances: Dataplane, zone, address", "responses": {"200": {"description": "the instances"}, "404": err, "default": err}}}));
    paths.insert("/meshes/{mesh}/ca".into(), json!({"get": {"summary": "The mesh's root CA: its roots (signing, staged, previous), where a rotation stands, each zone's progress, and whether the next step is ready", "parameters": [mesh_param], "responses": {"200": {"description": "the CA's status"}, "404": err, "default": err}}}));
    paths.insert("/meshes/{mesh}/ca/rotate".into(), json!({"post": {"summary": "A step of the mesh's root CA rotation (body: step stage|activate|finish, force): 409 with what it waits for until every zone and its sidecars follow (admins only)", "parameters": [mesh_param], "responses": {"200": {"description": "the step taken and the phase"}, "400": err, "409": err, "default": err}}}));
    paths.insert("/meshes/{mesh}/{plural}/{name}/affected".into(), json!({"get": {"summary": "The proxies (Dataplanes) a policy configures, matched as the zones match it: count, and up to 1,000 names with their zones", "responses": {"200": {"description": "count and items"}, "400": err, "404": err, "default": err}}}));
    paths.insert("/ui".into(), json!({"get": {"summary": "The web UI (HTML; it signs in with an API token it asks for)", "security": [], "responses": {"200": {"description": "the page"}}}}));
    paths.insert("/ready".into(), json!({"get": {"summary": "Readiness", "security": [], "responses": {"200": {"description": "ready"}, "503": err}}}));
    let mut schemas = serde_json::Map::new();
    for t in causeway_api::types() {
        if let Some(schema) = causeway_api::schema_for_kind(t.kind) {
            schemas.insert(t.kind.to_string(), schema);
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Causeway global policy API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Resource": {"type": "object", "required": ["type", "name"], "properties": {
                    "type": {"type": "string", "enum": causeway_api::types().iter().map(|t| t.kind).collect::<Vec<_>>()},
                    "mesh": {"type": "string"}, "name": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "spec": {"type": "object"},
                    "version": {"type": "integer", "readOnly": false, "description": "Raft index of the last write; on PUT, the expected version"},
                    "creationTime": {"type": "string", "format": "date-time", "readOnly": true},
                    "modificationTime": {"type": "string", "format": "date-time", "readOnly": true},
                    "origin": {"type": "string", "readOnly": true}
                }},
                "WrittenResource": {"allOf": [{"$ref": "#/components/schemas/Resource"}], "properties": {
                    "warnings": {"type": "array", "description": "The parts of the resource the proxies do not enforce yet (no effect on traffic); absent when there are none",
                        "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}}
                }},
                "ResourceList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}}, "next": {"type": ["string", "null"]}}},
                "Error": {"type": "object", "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}}}}
            }
        }
    });
    // One JSON Schema per type, generated from the Rust types in causeway-api.
    if let Some(Value::Object(m)) = doc.pointer_mut("/components/schemas") {
        m.extend(schemas);
    }
    doc
}
