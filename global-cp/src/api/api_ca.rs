//! `GET /cluster/api-ca` and `POST /cluster/api-ca/rotate`: the CA of the nodes' API and
//! KDS server certificates, and its rotation while clients and zones keep connecting
//! ([`crate::cluster_ca`]). Its clients are the CLI, Terraform and the UI's browser
//! (each with a CA file), the zones (told over KDS, `Trust.api_ca_bundle_pem`), the
//! nodes themselves (they ask each other) and the tokens that carry it (zone and join
//! tokens):
//!
//! 1. `stage`: a new CA, trusted before it signs. Nodes write both CAs to
//!    `<data-dir>/api-ca.pem`, zones keep both, tokens carry both. The status carries
//!    the bundle (`bundlePem`; `causeway cluster api-ca bundle --out FILE`) for the
//!    operator's other clients.
//! 2. `activate`, once every zone trusts the staged CA: it signs; every node issues its
//!    API and KDS certificates from it and reloads them in place.
//! 3. `finish`, once every node serves certificates of the new CA: the old one is
//!    dropped from the bundle.
//!
//! A node started with the operator's own API certificate (`--api-cert`) keeps it: its
//! KDS certificate follows the CA, its API certificate does not.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::mesh_ca::RotateRequest;
use super::raft_ca::{LocalQuery, NodeCa, OPERATORS, gather, signer_among, three_step};
use super::zones::FORWARDED_HEADER;
use super::{ApiError, ApiResult, ApiState};
use crate::cluster_ca::CaPhase;
use crate::command::{Command, SealedSecrets};
use causeway_pki::ca_rotation::ca_json;

const LOCAL: &str = "/cluster/api-ca?local=true";

/// A zone as an API CA rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZoneTrust {
    pub zone: String,
    pub online: bool,
    /// SHA-256 of each API CA it trusts.
    pub trusted: Vec<String>,
}

/// What the step after `phase` waits for: before `activate`, every zone must trust the
/// staged CA (or its next connection, to a node serving the new certificate, fails);
/// before `finish`, every node must serve certificates of the signing CA.
pub(crate) fn waiting(
    phase: CaPhase,
    staged: &str,
    signing: &str,
    nodes: &[NodeCa],
    zones: &[ZoneTrust],
) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let e = n.error.as_ref()?;
            Some(format!("node {} did not answer: {e}", n.node))
        })
        .collect();
    match phase {
        CaPhase::Steady => {}
        CaPhase::Staged => out.extend(
            zones
                .iter()
                .filter(|z| !z.trusted.iter().any(|t| t == staged))
                .map(|z| {
                    format!(
                        "zone {}{} does not trust the staged CA yet",
                        z.zone,
                        if z.online { "" } else { " (offline)" }
                    )
                }),
        ),
        CaPhase::Activated => out.extend(
            nodes
                .iter()
                .filter(|n| {
                    n.error.is_none() && n.presenting != signing && n.presenting != OPERATORS
                })
                .map(|n| {
                    format!(
                        "node {} still serves a certificate of the previous CA",
                        n.node
                    )
                }),
        ),
    }
    out
}

fn secrets(st: &ApiState) -> ApiResult<SealedSecrets> {
    st.store.secrets()?.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            "the cluster is not formed yet",
        )
    })
}

fn local(st: &ApiState, s: &SealedSecrets) -> NodeCa {
    let cert = st.api_cert.borrow().clone();
    NodeCa {
        node: st.raft.view().borrow().id,
        trusted: crate::cluster_ca::shas(&crate::cluster_ca::api_trust(s)),
        presenting: if cert.is_empty() {
            OPERATORS.to_string()
        } else {
            signer_among(
                &cert,
                &[
                    &s.api_ca_cert_pem,
                    &s.api_ca_staged_cert_pem,
                    &s.api_ca_previous_cert_pem,
                ],
            )
        },
        error: None,
    }
}

fn zones(st: &ApiState) -> ApiResult<Vec<ZoneTrust>> {
    Ok(super::zones::statuses_now(st)?
        .into_iter()
        .map(|(s, online)| ZoneTrust {
            zone: s.zone,
            online,
            trusted: s.trusted_api_ca_sha256,
        })
        .collect())
}

fn status_json(s: &SealedSecrets, nodes: &[NodeCa], zones: &[ZoneTrust]) -> Value {
    let phase = crate::cluster_ca::api_phase(s);
    let signing = causeway_pki::first_cert_sha256(&s.api_ca_cert_pem);
    let staged = causeway_pki::first_cert_sha256(&s.api_ca_staged_cert_pem);
    let mut cas = vec![ca_json(&s.api_ca_cert_pem, "signing")];
    if !s.api_ca_staged_cert_pem.is_empty() {
        cas.push(ca_json(&s.api_ca_staged_cert_pem, "staged"));
    }
    if !s.api_ca_previous_cert_pem.is_empty() {
        cas.push(ca_json(&s.api_ca_previous_cert_pem, "previous"));
    }
    let waiting = waiting(phase, &staged, &signing, nodes, zones);
    let zones: Vec<Value> = zones
        .iter()
        .map(|z| json!({"zone": z.zone, "online": z.online, "trusted": z.trusted}))
        .collect();
    json!({
        "phase": phase.name(),
        "cas": cas,
        "bundlePem": crate::cluster_ca::api_trust(s),
        "nodes": nodes,
        "zones": zones,
        "next": causeway_pki::ca_rotation::next_json(phase.next_step(), &waiting),
    })
}

/// `GET /cluster/api-ca`.
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
    Ok(Json(status_json(&s, &nodes, &zones(&st)?)))
}

/// `POST /cluster/api-ca/rotate` with `{"step": ..., "force": false}`.
pub(super) async fn rotate(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<RotateRequest>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let s = secrets(&st)?;
    let phase = crate::cluster_ca::api_phase(&s);
    let step = three_step(&st, &req.step, crate::API_CA_NAME, "an API CA")?;
    let signing = causeway_pki::first_cert_sha256(&s.api_ca_cert_pem);
    crate::cluster_ca::apply_api_ca(&mut s.clone(), &signing, step.clone())
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "step", why))?;
    if !req.force && phase != CaPhase::Steady {
        let nodes = gather(&st, &headers, LOCAL, local(&st, &s)).await?;
        let staged = causeway_pki::first_cert_sha256(&s.api_ca_staged_cert_pem);
        let waiting = waiting(phase, &staged, &signing, &nodes, &zones(&st)?);
        if !waiting.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "step",
                format!(
                    "not yet: {} (retry when `GET /cluster/api-ca` says ready, or force it and risk cutting those zones or clients off)",
                    waiting.join("; ")
                ),
            ));
        }
    }
    st.raft
        .propose(Command::RotateApiCa {
            expected_current_sha256: signing,
            step,
        })
        .await?;
    tracing::warn!(step = %req.step, "API CA rotation step taken");
    let s = secrets(&st)?;
    let nodes = gather(&st, &headers, LOCAL, local(&st, &s)).await?;
    Ok(Json(status_json(&s, &nodes, &zones(&st)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, presenting: &str) -> NodeCa {
        NodeCa {
            node: id,
            presenting: presenting.into(),
            ..NodeCa::default()
        }
    }

    fn zone(name: &str, online: bool, trusted: &[&str]) -> ZoneTrust {
        ZoneTrust {
            zone: name.into(),
            online,
            trusted: trusted.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn activation_waits_for_the_zones_and_the_finish_for_the_nodes() {
        let zones = [
            zone("zone-a", true, &["old", "new"]),
            zone("zone-b", false, &["old"]),
        ];
        let nodes = [node(1, "old"), node(2, OPERATORS)];
        assert_eq!(
            waiting(CaPhase::Staged, "new", "old", &nodes, &zones),
            ["zone zone-b (offline) does not trust the staged CA yet"]
        );
        // A node on the operator's own API certificate is not waited for.
        assert_eq!(
            waiting(CaPhase::Activated, "", "new", &nodes, &zones),
            ["node 1 still serves a certificate of the previous CA"]
        );
        let gone = NodeCa {
            node: 3,
            error: Some("timed out".into()),
            ..NodeCa::default()
        };
        assert_eq!(
            waiting(CaPhase::Steady, "", "new", &[gone], &[]),
            ["node 3 did not answer: timed out"]
        );
        assert!(waiting(CaPhase::Steady, "", "old", &nodes, &zones).is_empty());
    }
}
