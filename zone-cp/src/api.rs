//! The zone's REST API: the same read API as global (same paths, shapes and errors) for
//! what the zone holds, writes for zone-owned resources (dataplanes, ingresses,
//! zone-origin policies; the registration endpoint of dataplanes), `/status` and
//! `/sync` (wait until a global revision is applied). HTTPS from a CA generated in the
//! data dir, bearer tokens like global's.

use std::net::TcpListener;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use causeway_api::timestamp::rfc3339;
use causeway_api::{FieldError, Resource, ResourceKey, Scope, TypeInfo};
use causeway_listen::{Guarded, Limits};
use causeway_pki::api_token::{Access, ApiTokens, TokenHashes};
use causeway_pki::sealing::Sealer;
use causeway_pki::write_private;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shared;
use crate::api_ca::ApiCas;
use crate::store::LocalWriteError;

/// File in the data dir with the hashes of the API tokens (never the tokens).
const TOKEN_HASHES_FILE: &str = "api-token-hashes.json";

/// A seal key rotation: the API CA keys sealed again under the current seal key when
/// they are under the previous one. Returns whether they were.
pub(crate) fn reseal_api_ca_key(dir: &FsPath, sealer: &Sealer) -> anyhow::Result<bool> {
    let Some(mut cas) = ApiCas::load(dir)? else {
        return Ok(false);
    };
    if !cas.reseal(sealer)? {
        return Ok(false);
    }
    cas.save(dir, None)?;
    Ok(true)
}

/// Loads (or creates on first start) the API CAs and the API tokens' hashes. On first
/// start the tokens are handed out once (`token_out`, or standard output) and only their
/// hashes are kept; the CA keys are kept sealed.
pub(crate) fn local_credentials(
    dir: &FsPath,
    sealer: &Sealer,
    token_out: Option<&FsPath>,
) -> anyhow::Result<(TokenHashes, ApiCas)> {
    let read =
        |p: &FsPath| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let cas = match ApiCas::load(dir)? {
        Some(cas) => cas,
        None => {
            let (cas, _) = ApiCas::generate(sealer)?;
            cas.save(dir, None)?;
            cas
        }
    };
    let hashes_path = dir.join(TOKEN_HASHES_FILE);
    let hashes = if hashes_path.exists() {
        serde_json::from_str(&read(&hashes_path)?).with_context(|| {
            format!(
                "{} is damaged; remove it to create new API tokens at the next start",
                hashes_path.display()
            )
        })?
    } else {
        // Hand out first: tokens whose hashes were kept but that never reached the
        // operator would lock everyone out.
        let tokens = ApiTokens::generate();
        tokens
            .hand_out(token_out, "Causeway zone control plane", &cas.trust())
            .with_context(|| "handing out the zone API's tokens (--token-out-dir)")?;
        let hashes = tokens.hashes();
        write_private(
            &hashes_path,
            &serde_json::to_string(&hashes).expect("hashes encode"),
        )?;
        match token_out {
            Some(d) => {
                tracing::info!(dir = %d.display(), "wrote the zone API's admin and read-only tokens (the zone keeps only their hashes)")
            }
            None => tracing::info!(
                "printed the zone API's tokens on standard output, once (the zone keeps only their hashes)"
            ),
        }
        hashes
    };
    Ok((hashes, cas))
}

#[derive(Clone)]
struct ApiState {
    shared: Arc<Shared>,
    /// The token hashes, replaced by a rotation (and saved in the data dir first).
    tokens: Arc<std::sync::RwLock<TokenHashes>>,
    /// Held through a rotation, so two rotations never save over each other; the lock
    /// above is held only to swap the hashes, never across the file's fsync.
    rotating: Arc<tokio::sync::Mutex<()>>,
}

/// How long a client may take to send a request's headers (HTTP/1.1; counted from when
/// the connection waits for a request, so an idle keep-alive connection closes then
/// too): a slowloris client is cut off.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most a request's header section may take, over HTTP/1.1 and HTTP/2 alike.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Requests in flight on one HTTP/2 connection.
pub(crate) const MAX_STREAMS: u32 = 100;
/// How long a TLS handshake may take (axum-server's default for the API; set on DDS).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The API listener's HTTP limits (its TLS handshake has axum-server's 10 s).
fn limit_http(b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
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

/// The most a request body may take, as on the global API.
const MAX_BODY_BYTES: usize = 2 << 20;

/// How much of an oversized body is read and dropped so an HTTP/1.1 client gets its 413
/// (see `body_limit`); past it the connection is closed at once.
const MAX_DRAINED_BYTES: u64 = 32 << 20;
/// How long that may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request's body may take to arrive, once its headers have.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers 413 at once to a request whose declared body is over [`MAX_BODY_BYTES`],
/// before reading it (see the global API's `body_limit`, which this mirrors); a body
/// that declares no length is cut at the limit as it is read.
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

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    field: String,
    message: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.into(),
            message: message.into(),
            errors: Vec::new(),
        }
    }
}

impl ApiError {
    /// The JSON body of the error response.
    fn body(self) -> Value {
        let errors = if self.errors.is_empty() {
            vec![FieldError {
                field: self.field,
                reason: self.message.clone(),
            }]
        } else {
            self.errors
        };
        json!({"status": self.status.as_u16(), "message": self.message, "errors": errors})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "zone store error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    tokens: TokenHashes,
    listener: TcpListener,
    handle: axum_server::Handle,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let cert = crate::api_ca::first_cert(&shared, addr, |s| &mut s.api)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(
        causeway_pki::server_config(&cert, None, alpn)?,
    ));
    // An activated API CA rotation: new handshakes get a certificate from the new CA.
    tokio::spawn(crate::api_ca::follow_signing(
        shared.clone(),
        addr,
        "zone API",
        |s| &mut s.api,
        {
            let tls = tls.clone();
            move |cert| {
                tls.reload_from_config(Arc::new(causeway_pki::server_config(cert, None, alpn)?));
                Ok(())
            }
        },
    ));
    let state = ApiState {
        shared,
        tokens: Arc::new(std::sync::RwLock::new(tokens)),
        rotating: Arc::default(),
    };
    let authed = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/sync", get(wait_sync))
        .route("/api-tokens", get(list_api_tokens))
        .route("/api-tokens/{id}/rotate", post(rotate_api_token))
        .route("/token-renewal-key/rotate", post(rotate_renewal_key))
        .route("/api-ca", get(api_ca_status))
        .route("/api-ca/rotate", post(rotate_api_ca))
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/dataplanes/{name}/inspect",
            get(inspect_dataplane),
        )
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/{plural}", get(list_global))
        .route(
            "/{plural}/{name}",
            get(get_global).put(write_global).delete(write_global),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/ready", get(ready))
        .merge(authed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(body_limit))
        .with_state(state);
    tracing::info!(%addr, "zone API listening (HTTPS)");
    let mut server = axum_server::from_tcp_rustls(listener, tls);
    limit_http(server.http_builder());
    server
        .handle(handle)
        .map(|tls| Guarded::new(tls, "zone API", Limits::API))
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let checked = st.tokens.read().expect("token lock").check(presented, now);
    let Some(access) = checked else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "missing or invalid bearer token; use the zone's admin-token (from its --token-out-dir)",
        )
        .into_response();
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) && access != Access::Admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Authorization",
            "the read-only token cannot change anything",
        )
        .into_response();
    }
    if req.uri().path().starts_with("/api-tokens") && access != Access::Admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Authorization",
            "the API tokens are for the admin token only",
        )
        .into_response();
    }
    next.run(req).await
}

// === API tokens ===

/// The zone's two tokens by id, as `causeway token list` shows them.
const TOKEN_IDS: [(&str, Access, &str); 2] = [
    ("admin", Access::Admin, "admin"),
    ("readonly", Access::ReadOnly, "viewer"),
];

/// `GET /api-tokens`: the zone API's two tokens and the rotated-out ones still working.
async fn list_api_tokens(State(st): State<ApiState>) -> Json<Value> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let tokens = st.tokens.read().expect("token lock").clone();
    let mut items: Vec<Value> = TOKEN_IDS
        .iter()
        .map(|(id, _, role)| json!({"id": id, "name": id, "role": role, "live": true}))
        .collect();
    for r in tokens.retiring.iter().filter(|r| now < r.until_unix) {
        let (id, _, role) = TOKEN_IDS
            .iter()
            .find(|(_, a, _)| *a == r.access)
            .expect("every access has an id");
        items.push(json!({
            "id": format!("{id} (rotated out)"), "name": id, "role": role, "live": true,
            "expiresAt": rfc3339(r.until_unix),
        }));
    }
    Json(json!({ "items": items }))
}

/// The connected proxies (`dataplane MESH/NAME`, `ingress MESH/NAME`) and the zone API
/// CAs each last said it trusts.
fn proxies_trust(shared: &Shared) -> Vec<(String, Vec<String>)> {
    let proxies = shared.proxies.lock().expect("proxies lock");
    let mut out: Vec<(String, Vec<String>)> = proxies
        .iter()
        .map(|(key, p)| {
            let kind = if p.ingress { "ingress" } else { "dataplane" };
            (
                format!("{kind} {}/{}", key.mesh, key.name),
                p.trusted_cp_ca_sha256.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

fn api_ca_status_json(shared: &Shared) -> Value {
    let cas = shared.api_cas.borrow().clone();
    let serving = shared.serving_ca.lock().expect("serving lock").clone();
    crate::api_ca::status_json(&cas, &serving, &proxies_trust(shared))
}

/// `GET /api-ca`: the zone's own API CAs and where a rotation stands.
async fn api_ca_status(State(st): State<ApiState>) -> Json<Value> {
    Json(api_ca_status_json(&st.shared))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaRotateRequest {
    /// `stage`, `activate` or `finish`.
    step: String,
    /// Take it without waiting for the proxies (or the listeners' reload).
    #[serde(default)]
    force: bool,
}

/// `POST /api-ca/rotate` (`{"step": "stage"|"activate"|"finish", "force": false}`,
/// admins): takes the next step of the zone API CA's rotation (see `api_ca`). The CAs
/// are saved in the data dir before the answer; 409 with what it waits for when the
/// step is not ready (unless forced) or not the next one.
async fn rotate_api_ca(
    State(st): State<ApiState>,
    Json(req): Json<CaRotateRequest>,
) -> ApiResult<Json<Value>> {
    let _rotating = st.rotating.lock().await;
    let shared = st.shared.clone();
    let step = crate::api_ca::step_named(&req.step, &shared.sealer)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "step", why))?;
    let cas = shared.api_cas.borrow().clone();
    let mut next = (*cas).clone();
    next.apply(&cas.signing_sha256(), step)
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "step", why))?;
    if !req.force {
        let serving = shared.serving_ca.lock().expect("serving lock").clone();
        let waiting = crate::api_ca::waiting_for(&cas, &serving, &proxies_trust(&shared));
        if !waiting.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "step",
                format!(
                    "not yet: waiting for {} (retry when `GET /api-ca` says ready, or force it and risk cutting those proxies off)",
                    waiting.join("; ")
                ),
            ));
        }
    }
    let saved = tokio::task::spawn_blocking({
        let (next, dir, out) = (
            next.clone(),
            shared.cfg.data_dir.clone(),
            shared.cfg.token_out_dir.clone(),
        );
        move || next.save(&dir, out.as_deref())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?;
    saved.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            format!("saving the zone API CAs: {e:#}; nothing changed"),
        )
    })?;
    shared.api_cas.send_replace(Arc::new(next));
    tracing::warn!(step = %req.step, forced = req.force, "zone API CA rotation step taken");
    Ok(Json(api_ca_status_json(&shared)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Go-style duration; default 1h, at most 720h.
    overlap: Option<String>,
}

/// `POST /token-renewal-key/rotate` (`{"overlap": "168h"}`, admins): a new key renews
/// this zone's proxies' tokens. Every live proxy stream gets a token renewed with it at
/// once; tokens the old key renewed keep working for the overlap (default and at most
/// 168h, a renewal's lifetime; `0s` for a leaked key: only the new key verifies then,
/// and a proxy offline meanwhile needs a new token from global).
async fn rotate_renewal_key(
    State(st): State<ApiState>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "", e.to_string()))?
    };
    let max = causeway_pki::dataplane_token::RENEWED_TOKEN_TTL_SECS;
    let overlap: causeway_api::Duration =
        req.overlap.as_deref().unwrap_or("168h").parse().map_err(
            |e: causeway_api::DurationError| {
                ApiError::new(StatusCode::BAD_REQUEST, "overlap", e.to_string())
            },
        )?;
    let overlap_secs = overlap.as_std().as_secs() as i64;
    if overlap_secs > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "overlap",
            "at most 168h: no renewed token lives longer",
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let _rotating = st.rotating.lock().await;
    let shared = st.shared.clone();
    let key = tokio::task::spawn_blocking(move || {
        shared.store.rotate_token_renewal_key(now, overlap_secs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?;
    let public = causeway_pki::dataplane_token::public_key(&key)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?;
    st.shared
        .token_renewal
        .send_replace(Arc::new((key, public.clone())));
    let key_id = causeway_pki::sha256_hex(public.as_bytes());
    tracing::warn!(key = %&key_id[..16], overlap = %overlap, "rotated the zone's token-renewal key");
    Ok(Json(json!({
        "keyId": &key_id[..16],
        "previousVerifiesUntil": (overlap_secs > 0).then(|| rfc3339(now + overlap_secs)),
    })))
}

/// `POST /api-tokens/{admin|readonly}/rotate`: a new token, shown once; the old one
/// keeps working for the overlap. The new hashes are saved before the answer, so a
/// restart keeps the rotation.
async fn rotate_api_token(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let Some((_, access, _)) = TOKEN_IDS.iter().find(|(i, _, _)| *i == id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id",
            format!("no API token {id:?} here; a zone has `admin` and `readonly`"),
        ));
    };
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "", e.to_string()))?
    };
    let overlap: causeway_api::Duration = req.overlap.as_deref().unwrap_or("1h").parse().map_err(
        |e: causeway_api::DurationError| {
            ApiError::new(StatusCode::BAD_REQUEST, "overlap", e.to_string())
        },
    )?;
    let overlap_secs = overlap.as_std().as_secs();
    if overlap_secs > 30 * 24 * 3600 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "overlap",
            "at most 720h (30 days)",
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let path = st.shared.cfg.data_dir.join(TOKEN_HASHES_FILE);
    let _rotating = st.rotating.lock().await;
    let mut hashes = st.tokens.read().expect("token lock").clone();
    let token = hashes.rotate(*access, now, overlap_secs as i64);
    let text = serde_json::to_string(&hashes).expect("hashes encode");
    let saved = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || write_private(&path, &text)).await
    };
    if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            format!(
                "saving the new token hashes in {}: {e}; nothing changed",
                path.display()
            ),
        ));
    }
    *st.tokens.write().expect("token lock") = hashes.clone();
    let until = now.saturating_add(overlap_secs as i64);
    tracing::info!(token = %id, retiring = hashes.retiring.len(), "rotated a zone API token");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id, "name": id, "token": token,
            "replaces": id, "replacedTokenExpiresAt": rfc3339(until),
        })),
    )
        .into_response())
}

pub(crate) fn status_json(shared: &Shared) -> Value {
    let s = shared.status.lock().expect("status lock");
    let counts = shared.counts();
    let identity = shared.store.identity().ok().flatten();
    json!({
        "zone": shared.cfg.zone,
        "connected": s.connected_to.is_some(),
        "global": s.connected_to,
        "revision": *shared.revision.borrow(),
        "resources": counts.resources,
        "dataplanes": counts.dataplanes,
        "zoneIngresses": counts.zone_ingresses,
        "lastSync": s.syncs.back(),
        "syncs": s.syncs,
        "refused": s.refused,
        "certificateNotAfter": identity.map(|i| i.not_after),
        "disk": shared.store.disk().map(|d| json!({
            "free_bytes": d.free_bytes,
            "reserve_bytes": d.reserve_bytes,
            "writes_refused": d.low,
        })),
        "proxies": shared.proxies.lock().expect("proxies lock").values().cloned().collect::<Vec<_>>(),
        "intermediates": shared.store.intermediates().unwrap_or_default().iter().map(|i| json!({"mesh": i.mesh, "notAfter": i.not_after})).collect::<Vec<_>>(),
    })
}

async fn ready(State(st): State<ApiState>) -> Json<Value> {
    let connected = st
        .shared
        .status
        .lock()
        .expect("status lock")
        .connected_to
        .is_some();
    Json(json!({"ready": true, "revision": *st.shared.revision.borrow(), "connected": connected}))
}

async fn status(State(st): State<ApiState>) -> Json<Value> {
    Json(status_json(&st.shared))
}

/// `GET /metrics`: the zone's metrics (see [`crate::metrics`]), Prometheus text.
async fn metrics(State(st): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            causeway_api::exposition::PROMETHEUS_TEXT,
        )],
        st.shared.metrics.render(&st.shared, now_ms),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyncQuery {
    revision: u64,
    timeout_ms: Option<u64>,
}

/// `GET /sync?revision=R`: returns once the zone applied global revision R (or later).
async fn wait_sync(
    State(st): State<ApiState>,
    Query(q): Query<SyncQuery>,
) -> ApiResult<Json<Value>> {
    let mut rx = st.shared.revision.subscribe();
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(10_000).min(60_000));
    let reached = tokio::time::timeout(wait, rx.wait_for(|r| *r >= q.revision)).await;
    match reached {
        Ok(Ok(r)) => Ok(Json(json!({"revision": *r}))),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "revision",
            format!(
                "revision {} not applied within {wait:?} (at {})",
                q.revision,
                *st.shared.revision.borrow()
            ),
        )),
    }
}

fn type_for(plural: &str, scope: Scope) -> ApiResult<&'static TypeInfo> {
    let t = causeway_api::type_by_plural(plural).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "type",
            format!("unknown resource type {plural:?}"),
        )
    })?;
    if t.scope != scope {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "type",
            match t.scope {
                Scope::Global => format!("{} resources live under /{}", t.kind, t.plural),
                Scope::Mesh => format!(
                    "{} resources live under /meshes/{{mesh}}/{}",
                    t.kind, t.plural
                ),
            },
        ));
    }
    Ok(t)
}

fn describe(t: &TypeInfo, mesh: &str, name: &str) -> String {
    if mesh.is_empty() {
        format!("{} {name:?}", t.kind)
    } else {
        format!("{} {name:?} in mesh {mesh:?}", t.kind)
    }
}

fn key(t: &TypeInfo, mesh: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: t.kind.into(),
        mesh: mesh.into(),
        name: name.into(),
    }
}

#[derive(Deserialize, Default)]
struct ListQuery {
    labels: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn do_get(st: &ApiState, t: &TypeInfo, mesh: &str, name: &str) -> ApiResult<Json<Resource>> {
    st.shared
        .store
        .get(&key(t, mesh, name))?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "name",
                format!("{} not found in this zone", describe(t, mesh, name)),
            )
        })
}

fn do_list(st: &ApiState, t: &TypeInfo, mesh: &str, q: ListQuery) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let selector: Vec<(String, Option<String>)> = q
        .labels
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (p.to_string(), None),
        })
        .collect();
    let keep = |r: &Resource| {
        selector.iter().all(|(k, v)| match v {
            Some(v) => r.labels.get(k) == Some(v),
            None => r.labels.contains_key(k),
        })
    };
    let (items, next) = st
        .shared
        .store
        .list(t.kind, mesh, q.after.as_deref(), keep, limit)?;
    Ok(Json(json!({"items": items, "next": next})))
}

async fn get_global(
    State(st): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
) -> ApiResult<Json<Resource>> {
    let t = type_for(&plural, Scope::Global)?;
    do_get(&st, t, "", &name)
}

async fn list_global(
    State(st): State<ApiState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Global)?;
    do_list(&st, t, "", q)
}

async fn write_global(Path((plural, _)): Path<(String, String)>) -> ApiError {
    let kind = causeway_api::type_by_plural(&plural).map_or(plural.as_str(), |t| t.kind);
    ApiError::new(
        StatusCode::FORBIDDEN,
        "type",
        format!("{kind} resources are global: change them on the global control plane"),
    )
}

async fn get_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Resource>> {
    let t = type_for(&plural, Scope::Mesh)?;
    do_get(&st, t, &mesh, &name)
}

async fn list_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let t = type_for(&plural, Scope::Mesh)?;
    do_list(&st, t, &mesh, q)
}

fn local_error(t: &TypeInfo, mesh: &str, name: &str, e: LocalWriteError) -> ApiError {
    match e {
        LocalWriteError::NotOwned { origin } => ApiError::new(
            StatusCode::CONFLICT,
            "origin",
            format!(
                "{} belongs to {origin}; change it {}",
                describe(t, mesh, name),
                if origin == "global" {
                    "on the global control plane"
                } else {
                    "in that zone"
                }
            ),
        ),
        LocalWriteError::MeshMissing(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "mesh",
            format!("mesh {m:?} does not exist in this zone (meshes come from global)"),
        ),
        LocalWriteError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!("{} not found in this zone", describe(t, mesh, name)),
        ),
        LocalWriteError::DiskLow(why) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "", why),
        LocalWriteError::Store(e) => e.into(),
    }
}

/// `PUT /meshes/{mesh}/{plural}/{name}`: creates or replaces a zone-owned resource
/// (dataplanes register here) and reports it to global.
async fn put_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let t = type_for(&plural, Scope::Mesh)?;
    refuse_unwritable(t)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "", "the body is not UTF-8"))?;
    let mut r = if text.trim_start().starts_with('{') {
        Resource::from_json(&body)
    } else {
        Resource::from_yaml(text)
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "", e.to_string()))?;
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
    match &r.mesh {
        None => r.mesh = Some(mesh.clone()),
        Some(m) if *m != mesh => errors.push(FieldError {
            field: "mesh".into(),
            reason: format!("is {m:?} but the URL names mesh {mesh:?}"),
        }),
        Some(_) => {}
    }
    if errors.is_empty()
        && let Err(v) = causeway_api::validate(&r)
    {
        errors = v.errors;
    }
    if !errors.is_empty() {
        let message = format!(
            "invalid {}: {}",
            describe(t, &mesh, &name),
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            field: String::new(),
            message,
            errors,
        });
    }
    let warnings = causeway_api::warnings(&r);
    let zone = st.shared.cfg.zone.clone();
    let (stored, created) = st
        .shared
        .store
        .put_local(&zone, r, time::OffsetDateTime::now_utc())
        .map_err(|e| local_error(t, &mesh, &name, e))?;
    st.shared.local_change(stored.key(), Some(stored.clone()));
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = causeway_api::WriteResponse {
        resource: &stored,
        warnings: &warnings,
    };
    Ok((code, Json(body)).into_response())
}

/// A zone writes policies and what runs in it, nothing the global control plane owns
/// alone (a VirtualIp it allocated).
fn refuse_unwritable(t: &causeway_api::TypeInfo) -> ApiResult<()> {
    if t.zone_may_write() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "type",
        format!(
            "{} resources are written by the global control plane only; a zone reads them",
            t.kind
        ),
    ))
}

async fn delete_in_mesh(
    State(st): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let t = type_for(&plural, Scope::Mesh)?;
    refuse_unwritable(t)?;
    let k = key(t, &mesh, &name);
    st.shared
        .store
        .delete_local(&st.shared.cfg.zone, &k)
        .map_err(|e| local_error(t, &mesh, &name, e))?;
    st.shared.local_change(k, None);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /meshes/{mesh}/dataplanes/{name}/inspect`: which policies matched the proxy per
/// inbound, destination and route, what they merged to, the config computed for it,
/// and what the proxy reported (ACK/NACK, certificate, endpoints). See
/// [`crate::inspect`].
async fn inspect_dataplane(
    State(st): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> Response {
    let (status, json) = inspect_answer(&st.shared, &mesh, &name);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

/// The inspection of a dataplane as the API answers it (status and JSON body), for
/// this API and for global, which relays the question over KDS.
pub(crate) fn inspect_answer(shared: &Shared, mesh: &str, name: &str) -> (StatusCode, Vec<u8>) {
    match inspection(shared, mesh, name) {
        Ok(i) => (
            StatusCode::OK,
            serde_json::to_vec(&i).expect("inspections serialize"),
        ),
        Err(e) => (
            e.status,
            serde_json::to_vec(&e.body()).expect("errors serialize"),
        ),
    }
}

fn inspection(
    shared: &Shared,
    mesh: &str,
    name: &str,
) -> ApiResult<causeway_api::inspect::DataplaneInspection> {
    let t = type_for("dataplanes", Scope::Mesh)?;
    let zone = &shared.cfg.zone;
    let dp = shared.store.get(&key(t, mesh, name))?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!(
                "Dataplane {name:?} not found in mesh {mesh:?} in zone {zone}: a dataplane is \
                 known while its sidecar is connected; ask the zone it runs in \
                 (`causeway get dataplanes -m {mesh}` on global lists them with their zone)"
            ),
        )
    })?;
    if let Some(origin) = dp.origin.as_deref()
        && origin != zone
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "name",
            format!(
                "Dataplane {name:?} runs in zone {origin}; inspect it on that zone's control plane"
            ),
        ));
    }
    let inputs = crate::dds::mesh_inputs(shared, mesh)
        .map_err(|s| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", s.message()))?;
    let mut out = crate::inspect::inspect(&inputs, &dp);
    let proxy = shared
        .proxies
        .lock()
        .expect("proxies lock")
        .get(&dp.key())
        .cloned();
    if let Some(p) = proxy {
        let state = causeway_api::inspect::ProxyState {
            connected_unix_ms: p.connected_unix_ms,
            sent_version: p.sent_version,
            ack: p.ack,
            nack: p.nack,
            certificate: None,
            reported_unix_ms: p.reported_unix_ms,
            report_error: p.report_error,
        };
        crate::inspect::attach_proxy(&mut out, state, p.report.as_ref());
    }
    Ok(out)
}
