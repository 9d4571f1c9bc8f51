//! The API side of joining ([`crate::join`]): issuing join tokens when a node is added,
//! and `POST /cluster/join`, which a node calls with its token and CSR. The join needs no
//! API token: the join token authenticates it, and is burnt through Raft before the
//! answer goes out.
//!
//! The node becomes a voter when it joins, not when the token is issued: burning the
//! token needs a quorum, and a quorum that counted a node still waiting for its
//! certificate could never form (a one-node cluster growing to two).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState};
use crate::command::{ApplyError, Command, JoinTokenRecord, Member};
use crate::join::{self, JoinRequest, JoinResponse};
use crate::raft_node::{MemberChange, RaftError};

/// Why a cluster cannot issue join tokens.
const NO_RAFT_CA: &str = "this cluster does not manage its Raft certificates (its nodes use --raft-tls-* files of their own, or run Raft in plaintext): start the new node with a certificate from your CA (--raft-tls-*), a copy of the seal key and --join --peer ...";

/// A join token's validity from the request's `token_ttl` (default 15m, at most 24h).
pub(super) fn token_ttl(field: &str, ttl: Option<&str>) -> ApiResult<Duration> {
    let Some(t) = ttl else {
        return Ok(join::DEFAULT_TTL);
    };
    let d = t
        .parse::<causeway_api::Duration>()
        .map_err(|e| ApiError::bad(field, format!("{t:?}: {e}")))?
        .as_std();
    if d < Duration::from_secs(1) || d > join::MAX_TTL {
        return Err(ApiError::bad(
            field,
            format!("{t:?}: a join token lives between 1s and 24h"),
        ));
    }
    Ok(d)
}

/// Whether the cluster can issue join tokens.
pub(super) fn manages_raft_certificates(st: &ApiState) -> bool {
    st.secrets.raft_ca().is_some()
}

/// Issues a join token for node `node` (to be added with these addresses when it
/// joins), valid for `ttl`: returns it and its expiry.
pub(super) async fn issue(
    st: &ApiState,
    node: u64,
    raft_addr: String,
    api_addr: String,
    ttl: Duration,
) -> ApiResult<(String, i64)> {
    if !manages_raft_certificates(st) {
        return Err(ApiError::new(StatusCode::CONFLICT, "", NO_RAFT_CA));
    }
    let mut api: Vec<String> = st
        .store
        .members()?
        .into_values()
        .filter(|m| m.id != node)
        .map(|m| m.api_addr)
        .collect();
    api.sort();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let exp = now + ttl.as_secs() as i64;
    let token = join::create(node, api, super::api_cas(st)?, exp);
    st.raft
        .propose(Command::AddJoinToken(JoinTokenRecord {
            node,
            raft_addr,
            api_addr,
            sha256: join::hash(&token),
            created_unix: now,
            expires_unix: exp,
            used: false,
        }))
        .await?;
    tracing::info!(node, expires_unix = exp, "issued a join token");
    Ok((token, exp))
}

/// The most a join request may take (a token and a CSR are about 2 KiB).
pub(super) const MAX_JOIN_BODY: usize = 16 << 10;

/// Cancels the join tokens of `node` (removed, or added and never joined).
pub(super) async fn cancel(st: &ApiState, node: u64) -> ApiResult<()> {
    st.raft.propose(Command::CancelJoinTokens { node }).await?;
    Ok(())
}

/// Whether `node` was added and holds a join token that still works.
pub(super) fn pending(st: &ApiState, node: u64) -> ApiResult<bool> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(st
        .store
        .join_tokens_of(node)?
        .iter()
        .any(|t| !t.used && now < t.expires_unix))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    #[serde(default)]
    token_ttl: Option<String>,
}

/// `POST /cluster/members/{id}/join-token`: a new join token for a node that was added
/// and has not joined yet (its first token expired or was lost), with the addresses it
/// was added with.
pub(super) async fn new_token(
    State(st): State<ApiState>,
    Path(id): Path<u64>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: NewToken = if body.is_empty() {
        NewToken::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad("", format!("expected {{token_ttl}}: {e}")))?
    };
    let ttl = token_ttl("token_ttl", req.token_ttl.as_deref())?;
    let v = st.raft.view().borrow().clone();
    if v.progress.iter().any(|p| p.id == id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "id",
            format!("node {id} has joined already"),
        ));
    }
    st.raft.read_barrier().await?;
    let Some(last) = st.store.join_tokens_of(id)?.pop() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id",
            format!("node {id} was never added; add it with `causeway cluster add-node` first"),
        ));
    };
    let (token, exp) = issue(&st, id, last.raft_addr, last.api_addr, ttl).await?;
    Ok(Json(
        json!({"id": id, "join_token": token, "expires_unix": exp}),
    ))
}

/// `POST /cluster/join`: checks the token (and the CSR), burns the token through Raft,
/// and answers with this node's Raft certificate, the CA, the members and the seal key.
pub(super) async fn join(State(st): State<ApiState>, body: Bytes) -> ApiResult<Json<JoinResponse>> {
    let req: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("", format!("expected {{token, csr_pem}}: {e}")))?;
    let Some(ca) = st.secrets.raft_ca() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "", NO_RAFT_CA));
    };
    let refused = |why: String| ApiError::new(StatusCode::UNAUTHORIZED, "token", why);
    let sha256 = join::hash(&req.token);
    // The token may have been issued through another node a moment ago.
    st.raft.read_barrier().await?;
    let Some(record) = st.store.join_token(&sha256)? else {
        return Err(refused(
            "unknown join token (not issued by this cluster, or altered)".into(),
        ));
    };
    // Refused here already when it cannot succeed, so a replayed token costs no Raft
    // entry (the state machine decides again, for racing uses).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if record.used || now >= record.expires_unix {
        return Err(refused(format!(
            "the join token was already used, replaced by a newer one, or expired; issue a new one with `causeway cluster join-token --id {}`",
            record.node
        )));
    }
    // A member's identity is not handed out again: a node that lost its data dir is
    // removed and added anew.
    if st
        .raft
        .view()
        .borrow()
        .progress
        .iter()
        .any(|p| p.id == record.node)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token",
            format!(
                "node {} is a member already; to bring it back with an empty data dir, remove it (`causeway cluster remove-node {}`) and add it again",
                record.node, record.node
            ),
        ));
    }
    // Sign first, so a bad CSR does not burn the token.
    let names = causeway_pki::raft_node_names(record.node);
    let cert_pem = causeway_pki::sign_csr(
        &ca,
        &req.csr_pem,
        &causeway_pki::Profile::Leaf {
            common_name: names[1].clone(),
            names,
        },
        Duration::from_secs(causeway_pki::RAFT_CERT_DAYS as u64 * 86_400),
    )
    .map_err(|e| ApiError::bad("csr_pem", format!("not a usable CSR: {e}")))?;
    st.raft
        .propose(Command::UseJoinToken { sha256 })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(ApplyError::Token(why)) => refused(why),
            e => e.into(),
        })?;
    // Now a voter (a racing join of the same node may have made it one meanwhile).
    let v = st.raft.view().borrow().clone();
    if !v.progress.iter().any(|p| p.id == record.node) {
        st.raft
            .change_members(MemberChange::Add(Member {
                id: record.node,
                raft_addr: record.raft_addr.clone(),
                api_addr: record.api_addr.clone(),
            }))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "",
                    format!(
                        "the join token was used, but adding node {} failed ({e}); issue a new token with `causeway cluster join-token --id {}`",
                        record.node, record.node
                    ),
                )
            })?;
    }
    let members = st.store.members()?.into_values().collect();
    tracing::info!(
        node = record.node,
        "a node joined with its join token: issued its Raft certificate"
    );
    Ok(Json(JoinResponse {
        node: record.node,
        raft_ca_pem: ca.cert_pem,
        cert_pem,
        seal_key: st.sealer.key_file_contents(),
        members,
    }))
}
