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
use crate::cluster_ca::CaPhase;
use crate::command::{CaStep, Command, SealedSecrets};
use causeway_pki::ca_rotation::ca_json;

const LOCAL: &str = "/cluster/raft-ca?local=true";

#[derive(Deserialize)]
pub(super) struct LocalQuery {
    /// This node only.
    #[serde(default)]
    pub(super) local: bool,
}

/// One node's view of a control-plane CA: the Raft identity its transport uses, or the
/// API certificate it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeCa {
    pub node: u64,
    /// SHA-256 of each CA its transport trusts.
    pub trusted: Vec<String>,
    /// SHA-256 of the CA (among those the cluster knows) that signed its certificate;
    /// empty when none did (the operator's own certificates, or plaintext;
    /// [`OPERATORS`] for an API certificate the operator brought).
    pub presenting: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `presenting` of a node that serves the operator's own API certificate: it does not
/// follow the API CA, and no step waits for it.
pub(crate) const OPERATORS: &str = "operator's";

/// The CA among `cas` that signed the first certificate of `cert_pem` (SHA-256).
pub(crate) fn signer_among(cert_pem: &str, cas: &[&String]) -> String {
    cas.iter()
        .find(|ca| !ca.is_empty() && causeway_pki::issued_by(cert_pem, ca))
        .map(|ca| causeway_pki::first_cert_sha256(ca))
        .unwrap_or_default()
}

/// What the step after `phase` waits for, node by node: `staged` is the staged CA's
/// SHA-256, `signing` the signing one's.
pub(crate) fn waiting(
    phase: CaPhase,
    staged: &str,
    signing: &str,
    nodes: &[NodeCa],
) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if let Some(e) = &n.error {
            out.push(format!("node {} did not answer: {e}", n.node));
            continue;
        }
        match phase {
            CaPhase::Steady => {}
            CaPhase::Staged if !n.trusted.iter().any(|t| t == staged) => {
                out.push(format!("node {} does not trust the staged CA yet", n.node));
            }
            CaPhase::Activated if n.presenting != signing && n.presenting != OPERATORS => {
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

fn local(st: &ApiState, s: &SealedSecrets) -> NodeCa {
    let node = st.raft.view().borrow().id;
    let Some(live) = &st.raft_tls else {
        return NodeCa {
            node,
            ..NodeCa::default()
        };
    };
    let identity = live.borrow().identity.clone();
    let presenting = signer_among(
        &identity.node.cert_pem,
        &[
            &s.raft_ca_cert_pem,
            &s.raft_ca_staged_cert_pem,
            &s.raft_ca_previous_cert_pem,
        ],
    );
    NodeCa {
        node,
        trusted: crate::cluster_ca::shas(&identity.ca_pem),
        presenting,
        error: None,
    }
}

/// `me` and every other member's answer at `path` (its `?local=true` view).
pub(super) async fn gather(
    st: &ApiState,
    headers: &HeaderMap,
    path: &str,
    me: NodeCa,
) -> ApiResult<Vec<NodeCa>> {
    let mut nodes = vec![me.clone()];
    nodes.extend(
        ask_members(st, headers, path, me.node, |node, e| NodeCa {
            node,
            error: Some(e),
            ..NodeCa::default()
        })
        .await?,
    );
    nodes.sort_by_key(|n| n.node);
    Ok(nodes)
}

fn status_json(s: &SealedSecrets, nodes: &[NodeCa]) -> Value {
    let phase = crate::cluster_ca::raft_phase(s);
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
        "next": causeway_pki::ca_rotation::next_json(phase.next_step(), &waiting),
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
    let nodes = gather(&st, &headers, LOCAL, me).await?;
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
    let phase = crate::cluster_ca::raft_phase(&s);
    let step = three_step(&st, &req.step, causeway_pki::RAFT_CA_NAME, "a Raft CA")?;
    let signing = causeway_pki::first_cert_sha256(&s.raft_ca_cert_pem);
    // The step must follow the rotation's state before its readiness is worth asking.
    crate::cluster_ca::apply_raft_ca(&mut s.clone(), &signing, step.clone())
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "step", why))?;
    if !req.force && phase != CaPhase::Steady {
        let nodes = gather(&st, &headers, LOCAL, local(&st, &s)).await?;
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
    let nodes = gather(&st, &headers, LOCAL, local(&st, &s)).await?;
    Ok(Json(status_json(&s, &nodes)))
}

/// The step named `name` of a three-step rotation (the Raft CA's, the API CA's); staging
/// generates the new CA (`ca_name`) and seals its key.
pub(super) fn three_step(
    st: &ApiState,
    name: &str,
    ca_name: &str,
    what: &str,
) -> ApiResult<CaStep> {
    Ok(match name {
        "stage" => {
            let ca = causeway_pki::generate_ca(ca_name).map_err(internal)?;
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
                format!("{other:?} is no step of {what} rotation: stage, activate or finish"),
            ));
        }
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, trusted: &[&str], presenting: &str) -> NodeCa {
        NodeCa {
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
            waiting(CaPhase::Staged, "new", "old", &staged),
            ["node 2 does not trust the staged CA yet"]
        );
        let activated = [
            node(1, &["old", "new"], "new"),
            node(2, &["old", "new"], "old"),
        ];
        assert_eq!(
            waiting(CaPhase::Activated, "", "new", &activated),
            ["node 2 still presents a certificate of the previous CA"]
        );
        let unreachable = [NodeCa {
            node: 3,
            error: Some("connection refused".into()),
            ..NodeCa::default()
        }];
        for phase in [CaPhase::Steady, CaPhase::Staged, CaPhase::Activated] {
            assert_eq!(
                waiting(phase, "new", "new", &unreachable),
                ["node 3 did not answer: connection refused"]
            );
        }
        assert!(waiting(CaPhase::Steady, "", "old", &staged).is_empty());
    }
}
