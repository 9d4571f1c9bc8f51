//! `GET /cluster/raft-ca` and `POST /cluster/raft-ca/rotate`: the CA of the nodes' Raft
//! certificates and its rotation while the cluster runs ([`crate::cluster_ca`]). Each
//! node reports the CAs its transport trusts and the CA of the certificate it presents
//! (`?local=true`, what nodes ask each other for); the status gathers every member's,
//! and a step waits for them (409 with what it waits for) unless forced:
//!
//! - `activate` waits until every node trusts the staged CA, so no node refuses a peer
//!   presenting a certificate from it;
//! - `finish` waits until every node presents a certificate from the new CA, so no
//!   node is cut off when the old one is dropped.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::mesh_ca::RotateRequest;
use super::zones::{FORWARDED_HEADER, ask_members};
use super::{ApiError, ApiResult, ApiState};
use crate::cluster_ca::RaftCaPhase;
use crate::command::{CaStep, Command, SealedSecrets};
use causeway_api::timestamp::rfc3339;

#[derive(Deserialize)]
pub(super) struct LocalQuery {
    /// This node only.
    #[serde(default)]
    local: bool,
}

/// One node's Raft identity as its transport uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeRaftCa {
    pub node: u64,
    /// SHA-256 of each CA its transport trusts.
    pub trusted: Vec<String>,
    /// SHA-256 of the CA (among those the cluster knows) that signed its certificate;
    /// empty when none did (the operator's own certificates, or plaintext).
    pub presenting: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the step after `phase` waits for, node by node: `staged` is the staged CA's
/// SHA-256, `signing` the signing one's.
pub(crate) fn waiting(
    phase: RaftCaPhase,
    staged: &str,
    signing: &str,
    nodes: &[NodeRaftCa],
) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if let Some(e) = &n.error {
            out.push(format!("node {} did not answer: {e}", n.node));
            continue;
        }
        match phase {
            RaftCaPhase::Steady => {}
            RaftCaPhase::Staged if !n.trusted.iter().any(|t| t == staged) => {
                out.push(format!("node {} does not trust the staged CA yet", n.node));
            }
            RaftCaPhase::Activated if n.presenting != signing => {
                out.push(format!(
                    "node {} still presents a certificate of the previous CA",
                    n.node
                ));
            }
            _ => {}
        }
    }
    out
}

fn secrets(st: &ApiState) -> ApiResult<SealedSecrets> {
    st.store
        .secrets()?
        .ok_or_else(|| internal("the cluster is not formed yet"))
}

fn local(st: &ApiState, s: &SealedSecrets) -> NodeRaftCa {
    let node = st.raft.view().borrow().id;
    let Some(live) = &st.raft_tls else {
        return NodeRaftCa {
            node,
            ..NodeRaftCa::default()
        };
    };
    let identity = live.borrow().identity.clone();
    let presenting = [
        &s.raft_ca_cert_pem,
        &s.raft_ca_staged_cert_pem,
        &s.raft_ca_previous_cert_pem,
    ]
    .into_iter()
    .find(|ca| !ca.is_empty() && causeway_pki::issued_by(&identity.node.cert_pem, ca))
    .map(|ca| causeway_pki::first_cert_sha256(ca))
    .unwrap_or_default();
    NodeRaftCa {
        node,
        trusted: crate::cluster_ca::shas(&identity.ca_pem),
        presenting,
        error: None,
    }
}

fn ca_json(pem: &str, role: &str) -> Value {
    json!({
        "sha256": causeway_pki::first_cert_sha256(pem),
        "role": role,
        "notAfter": causeway_pki::cert_info(pem).ok().map(|i| rfc3339(i.not_after)),
    })
}

async fn gather(st: &ApiState, headers: &HeaderMap, me: NodeRaftCa) -> ApiResult<Vec<NodeRaftCa>> {
    let mut nodes = vec![me.clone()];
    nodes.extend(
        ask_members(
            st,
            headers,
            "/cluster/raft-ca?local=true",
            me.node,
            |node, e| NodeRaftCa {
                node,
                error: Some(e),
                ..NodeRaftCa::default()
            },
        )
        .await?,
    );
    nodes.sort_by_key(|n| n.node);
    Ok(nodes)
}

fn status_json(s: &SealedSecrets, nodes: &[NodeRaftCa]) -> Value {
    let phase = RaftCaPhase::of(s);
    let signing = causeway_pki::first_cert_sha256(&s.raft_ca_cert_pem);
    let staged = causeway_pki::first_cert_sha256(&s.raft_ca_staged_cert_pem);
    let mut cas = vec![ca_json(&s.raft_ca_cert_pem, "signing")];
    if !s.raft_ca_staged_cert_pem.is_empty() {
        cas.push(ca_json(&s.raft_ca_staged_cert_pem, "staged"));
    }
    if !s.raft_ca_previous_cert_pem.is_empty() {
        cas.push(ca_json(&s.raft_ca_previous_cert_pem, "previous"));
    }
    let waiting = waiting(phase, &staged, &signing, nodes);
    json!({
        "managed": !s.raft_ca_key_sealed.is_empty(),
        "phase": phase.name(),
        "cas": cas,
        "nodes": nodes,
        "next": {
            "step": phase.next_step(),
            "ready": waiting.is_empty(),
            "waiting": waiting,
        },
    })
}

/// `GET /cluster/raft-ca`.
pub(super) async fn status(
    State(st): State<ApiState>,
    Query(q): Query<LocalQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let s = secrets(&st)?;
    let me = local(&st, &s);
    if q.local || headers.contains_key(FORWARDED_HEADER) {
        return Ok(Json(serde_json::to_value(&me).expect("encodes")));
    }
    let nodes = gather(&st, &headers, me).await?;
    Ok(Json(status_json(&s, &nodes)))
}

/// `POST /cluster/raft-ca/rotate` with `{"step": ..., "force": false}`.
pub(super) async fn rotate(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<RotateRequest>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let s = secrets(&st)?;
    let phase = RaftCaPhase::of(&s);
    let step = match req.step.as_str() {
        "stage" => {
            let ca = causeway_pki::generate_ca(causeway_pki::RAFT_CA_NAME).map_err(internal)?;
            CaStep::Stage {
                cert_pem: ca.cert_pem,
                key_sealed: st.sealer.seal(&ca.key_pem),
            }
        }
        "activate" => CaStep::Activate,
        "finish" => CaStep::Finish,
        other => {
            return Err(ApiError::bad(
                "step",
                format!("{other:?} is no step of a Raft CA rotation: stage, activate or finish"),
            ));
        }
    };
    let signing = causeway_pki::first_cert_sha256(&s.raft_ca_cert_pem);
    // The step must follow the rotation's state before its readiness is worth asking.
    crate::cluster_ca::apply_raft_ca(&mut s.clone(), &signing, step.clone())
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "step", why))?;
    if !req.force && phase != RaftCaPhase::Steady {
        let nodes = gather(&st, &headers, local(&st, &s)).await?;
        let staged = causeway_pki::first_cert_sha256(&s.raft_ca_staged_cert_pem);
        let waiting = waiting(phase, &staged, &signing, &nodes);
        if !waiting.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "step",
                format!(
                    "not yet: {} (retry when `GET /cluster/raft-ca` says ready, or force it and risk cutting those nodes off)",
                    waiting.join("; ")
                ),
            ));
        }
    }
    st.raft
        .propose(Command::RotateRaftCa {
            expected_current_sha256: signing,
            step,
        })
        .await?;
    tracing::warn!(step = %req.step, "Raft CA rotation step taken");
    let s = secrets(&st)?;
    let nodes = gather(&st, &headers, local(&st, &s)).await?;
    Ok(Json(status_json(&s, &nodes)))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, trusted: &[&str], presenting: &str) -> NodeRaftCa {
        NodeRaftCa {
            node: id,
            trusted: trusted.iter().map(|s| s.to_string()).collect(),
            presenting: presenting.into(),
            error: None,
        }
    }

    #[test]
    fn each_step_waits_for_every_node() {
        let staged = [node(1, &["old", "new"], "old"), node(2, &["old"], "old")];
        assert_eq!(
            waiting(RaftCaPhase::Staged, "new", "old", &staged),
            ["node 2 does not trust the staged CA yet"]
        );
        let activated = [
            node(1, &["old", "new"], "new"),
            node(2, &["old", "new"], "old"),
        ];
        assert_eq!(
            waiting(RaftCaPhase::Activated, "", "new", &activated),
            ["node 2 still presents a certificate of the previous CA"]
        );
        let unreachable = [NodeRaftCa {
            node: 3,
            error: Some("connection refused".into()),
            ..NodeRaftCa::default()
        }];
        for phase in [
            RaftCaPhase::Steady,
            RaftCaPhase::Staged,
            RaftCaPhase::Activated,
        ] {
            assert_eq!(
                waiting(phase, "new", "new", &unreachable),
                ["node 3 did not answer: connection refused"]
            );
        }
        assert!(waiting(RaftCaPhase::Steady, "", "old", &staged).is_empty());
    }
}
