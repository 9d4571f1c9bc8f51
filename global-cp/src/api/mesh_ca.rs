//! `GET /meshes/{mesh}/ca` and `POST /meshes/{mesh}/ca/rotate`: a mesh's root CA and
//! its rotation without a failed request ([`crate::ca_rotation`]). The status names the
//! roots, where the rotation stands, and each zone's progress (from its insight: the
//! roots it trusts, the root of its intermediate CA, how many of its sidecars trust
//! every root and hold a certificate from its current intermediate). A step waits for
//! the zones (409 with what it waits for), unless forced.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::zones::require_mesh;
use super::{ApiError, ApiResult, ApiState};
use crate::ca_rotation::{self, Phase, Step, ZoneProgress};
use crate::command::{ApplyError, Command, MeshCa, StagedCa};
use crate::raft_node::RaftError;
use causeway_api::timestamp::rfc3339;

fn mesh_ca(st: &ApiState, mesh: &str) -> ApiResult<MeshCa> {
    require_mesh(st, mesh)?;
    st.store.mesh_ca(mesh)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "mesh",
            format!("mesh {mesh:?} has no CA: its mTLS is off (or the CA is being created)"),
        )
    })
}

/// Every zone that ever reported, with whether it is online now and what it reported of
/// `mesh` (nothing yet: no sidecars, no roots).
fn progress(st: &ApiState, mesh: &str) -> ApiResult<Vec<ZoneProgress>> {
    Ok(super::zones::statuses_now(st)?
        .into_iter()
        .map(|(s, online)| {
            s.mesh_ca
                .iter()
                .find(|m| m.mesh == mesh)
                .cloned()
                .unwrap_or_default()
                .progress(&s.zone, online)
        })
        .collect())
}

/// The step that comes next from `phase`.
fn next_step(phase: Phase) -> &'static str {
    match phase {
        Phase::Steady => "stage",
        Phase::Staged => "activate",
        Phase::Activated => "finish",
    }
}

/// `GET /meshes/{mesh}/ca`.
pub(super) async fn status(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let ca = mesh_ca(&st, &mesh)?;
    let phase = Phase::of(&ca);
    let root = |pem: &str, role: &str| {
        let info = causeway_pki::cert_info(pem).ok();
        json!({"sha256": causeway_pki::first_cert_sha256(pem), "role": role,
               "notAfter": info.map(|i| rfc3339(i.not_after))})
    };
    let mut roots = vec![root(&ca.cert_pem, "signing")];
    roots.extend(ca.next.as_ref().map(|n| root(&n.cert_pem, "staged")));
    roots.extend(ca.previous.as_deref().map(|p| root(p, "previous")));
    let zones = progress(&st, &mesh)?;
    let step = next_step(phase);
    let waiting = match step_of(step) {
        Some(s) => ca_rotation::ready_for(&s, &bundle_sha(&ca), &zones).err(),
        None => None,
    };
    Ok(Json(json!({
        "mesh": mesh,
        "phase": phase.as_str(),
        "roots": roots,
        "zones": zones,
        "next": {"step": step, "ready": waiting.is_none(), "waiting": waiting.unwrap_or_default()},
    })))
}

fn bundle_sha(ca: &MeshCa) -> Vec<String> {
    ca_rotation::bundle(ca)
        .into_iter()
        .map(causeway_pki::first_cert_sha256)
        .collect()
}

/// The activate and finish steps (stage needs its new root first).
fn step_of(name: &str) -> Option<Step> {
    match name {
        "activate" => Some(Step::Activate),
        "finish" => Some(Step::Finish),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateRequest {
    /// `stage`, `activate` or `finish` (a zone CA: `stage` or `finish`).
    pub(super) step: String,
    /// Take the step without waiting for the zones.
    #[serde(default)]
    pub(super) force: bool,
}

/// `POST /meshes/{mesh}/ca/rotate` with `{"step": ..., "force": false}`.
pub(super) async fn rotate(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    Json(req): Json<RotateRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    st.raft.read_barrier().await?;
    let ca = mesh_ca(&st, &mesh)?;
    let step = match req.step.as_str() {
        "stage" => Step::Stage {
            ca: new_root(&st, &mesh)?,
        },
        other => step_of(other).ok_or_else(|| {
            ApiError::bad(
                "step",
                format!("{other:?} is no step of a rotation: stage, activate or finish"),
            )
        })?,
    };
    ca_rotation::apply(&ca, &step)
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "step", why))?;
    if !req.force
        && let Err(waiting) =
            ca_rotation::ready_for(&step, &bundle_sha(&ca), &progress(&st, &mesh)?)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "step",
            format!(
                "not yet: {} (retry when `GET /meshes/{mesh}/ca` says ready, or force it and risk failed requests)",
                waiting.join("; ")
            ),
        ));
    }
    let name = step.name();
    st.raft
        .propose(Command::RotateMeshCa {
            mesh: mesh.clone(),
            step,
        })
        .await
        .map_err(|e| match e {
            RaftError::Rejected(ApplyError::Refused(why)) => {
                ApiError::new(StatusCode::CONFLICT, "step", why)
            }
            e => e.into(),
        })?;
    tracing::info!(mesh = %mesh, step = name, forced = req.force, "mesh root CA rotation step");
    let ca = mesh_ca(&st, &mesh)?;
    Ok((
        StatusCode::OK,
        Json(json!({"mesh": mesh, "step": name, "phase": Phase::of(&ca).as_str()})),
    ))
}

/// A new root for a builtin CA, as its Mesh says (validity), its key sealed. A provided
/// CA is rotated by giving the Mesh the new one: it is staged by itself.
fn new_root(st: &ApiState, mesh: &str) -> ApiResult<StagedCa> {
    let key = causeway_api::ResourceKey {
        kind: "Mesh".into(),
        mesh: String::new(),
        name: mesh.into(),
    };
    let m = st
        .store
        .get(&key)?
        .ok_or_else(|| ApiError::not_found(format!("mesh {mesh:?}")))?;
    let spec: causeway_api::MeshSpec = serde_json::from_value(m.spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?;
    let builtin = match spec.mtls.map(|t| t.backend) {
        Some(causeway_api::CaBackend::Builtin(b)) => b,
        Some(causeway_api::CaBackend::Provided(_)) => {
            return Err(ApiError::bad(
                "step",
                "this mesh's CA is provided: put the new certificate and key secret in the Mesh (mtls.backend.provided) and it is staged by itself; then activate and finish",
            ));
        }
        None => return Err(ApiError::bad("mesh", "the mesh has no mTLS")),
    };
    let ca = causeway_pki::generate_ca_valid(
        &format!(
            "Causeway mesh {mesh} root CA {}",
            time::OffsetDateTime::now_utc().unix_timestamp()
        ),
        builtin.ca_validity.as_std(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string()))?;
    Ok(StagedCa {
        cert_pem: ca.cert_pem,
        key_pem: st.sealer.seal(&ca.key_pem),
    })
}
