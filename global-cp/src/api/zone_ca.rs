//! The credentials zones enrol and connect with, and their rotation (admins only):
//!
//! - `POST /zone-token-key/rotate`: a new key signs zone tokens. Tokens the old one
//!   signed and not yet used stop enrolling; enrolled zones are unaffected (they hold
//!   certificates, not tokens).
//! - `GET /zone-ca`, `POST /zone-ca/rotate {"step": "stage"|"finish", "force"}`: the CA
//!   of zones' KDS client certificates. Staging makes a new CA sign at once while KDS
//!   admits certificates of either ([`crate::kds_tls`]); every zone renews as soon as
//!   global names the new CA (`Trust.zone_ca_pem`) and reconnects with its new
//!   certificate. Finishing drops the old CA once every zone presents a certificate
//!   from the new one (each session records which CA signed its zone's certificate).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::mesh_ca::RotateRequest;
use super::{ApiError, ApiResult, ApiState};
use crate::command::{CaStep, Command, SealedSecrets};
use causeway_pki::ca_rotation::ca_json;

/// A zone as a finishing rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZoneOnCa {
    pub zone: String,
    pub online: bool,
    /// SHA-256 of the CA that signed the certificate of its latest session.
    pub ca_sha256: String,
}

/// What finishing a rotation to the CA `current_sha256` waits for: every zone that ever
/// connected must have connected with a certificate from it (an offline zone holds it
/// up: once the old CA is dropped, its certificate no longer opens KDS).
pub(crate) fn waiting_to_finish(zones: &[ZoneOnCa], current_sha256: &str) -> Vec<String> {
    zones
        .iter()
        .filter(|z| z.ca_sha256 != current_sha256)
        .map(|z| {
            if z.online {
                format!(
                    "zone {}: still connected with a certificate of the previous CA",
                    z.zone
                )
            } else {
                format!(
                    "zone {}: offline, last connected with a certificate of the previous CA",
                    z.zone
                )
            }
        })
        .collect()
}

fn secrets(st: &ApiState) -> ApiResult<SealedSecrets> {
    st.store
        .secrets()?
        .ok_or_else(|| internal("the cluster is not formed yet"))
}

fn zones(st: &ApiState) -> ApiResult<Vec<ZoneOnCa>> {
    Ok(super::zones::statuses_now(st)?
        .into_iter()
        .map(|(s, online)| ZoneOnCa {
            zone: s.zone,
            online,
            ca_sha256: s.zone_ca_sha256,
        })
        .collect())
}

fn status_json(s: &SealedSecrets, zones: &[ZoneOnCa]) -> Value {
    let current = causeway_pki::first_cert_sha256(&s.zone_ca_cert_pem);
    let rotating = !s.zone_ca_previous_cert_pem.is_empty();
    let mut cas = vec![ca_json(&s.zone_ca_cert_pem, "signing")];
    if rotating {
        cas.push(ca_json(&s.zone_ca_previous_cert_pem, "previous"));
    }
    let waiting = if rotating {
        waiting_to_finish(zones, &current)
    } else {
        Vec::new()
    };
    let zones: Vec<Value> = zones
        .iter()
        .map(|z| {
            json!({
                "zone": z.zone,
                "online": z.online,
                "caSha256": z.ca_sha256,
                "onCurrent": z.ca_sha256 == current,
            })
        })
        .collect();
    json!({
        "phase": if rotating { "rotating" } else { "steady" },
        "cas": cas,
        "zones": zones,
        "next": causeway_pki::ca_rotation::next_json(
            if rotating { "finish" } else { "stage" },
            &waiting,
        ),
    })
}

/// `GET /zone-ca`: the zone CA (and the one it replaces during a rotation), which CA
/// each zone's certificate is from, and what the rotation's next step waits for.
pub(super) async fn status(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    Ok(Json(status_json(&secrets(&st)?, &zones(&st)?)))
}

/// `POST /zone-ca/rotate`.
pub(super) async fn rotate(
    State(st): State<ApiState>,
    Json(req): Json<RotateRequest>,
) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let s = secrets(&st)?;
    let current = causeway_pki::first_cert_sha256(&s.zone_ca_cert_pem);
    let step = match req.step.as_str() {
        "stage" => {
            let ca = causeway_pki::generate_ca(crate::ZONE_CA_NAME).map_err(internal)?;
            CaStep::Stage {
                cert_pem: ca.cert_pem,
                key_sealed: st.sealer.seal(&ca.key_pem),
            }
        }
        "finish" => {
            let waiting = waiting_to_finish(&zones(&st)?, &current);
            if !req.force && !s.zone_ca_previous_cert_pem.is_empty() && !waiting.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "step",
                    format!(
                        "not yet: {} (retry when `GET /zone-ca` says ready, or force it: those zones then enrol again with a new zone token)",
                        waiting.join("; ")
                    ),
                ));
            }
            CaStep::Finish
        }
        other => {
            return Err(ApiError::bad(
                "step",
                format!("{other:?} is no step of a zone CA rotation: stage or finish"),
            ));
        }
    };
    st.raft
        .propose(Command::RotateZoneCa {
            expected_current_sha256: current,
            step: step.clone(),
        })
        .await?;
    tracing::warn!(step = %req.step, "zone CA rotation step taken");
    Ok(Json(status_json(&secrets(&st)?, &zones(&st)?)))
}

/// `POST /zone-token-key/rotate`: a new key signs zone tokens; answers how many issued
/// tokens not yet used no longer enrol.
pub(super) async fn rotate_zone_token_key(State(st): State<ApiState>) -> ApiResult<Json<Value>> {
    st.raft.read_barrier().await?;
    let key = hex::encode(rand::random::<[u8; 32]>());
    st.raft
        .propose(Command::SetZoneTokenKey {
            key_sealed: st.sealer.seal(&key),
        })
        .await?;
    let now = super::zones::now_unix();
    let voided = st
        .store
        .all_zone_tokens()?
        .iter()
        .filter(|t| t.enrolled_unix.is_none() && t.expires_unix > now)
        .count();
    tracing::warn!(voided, "rotated the zone-token key");
    Ok(Json(json!({ "unusedTokensVoided": voided })))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, online: bool, ca: &str) -> ZoneOnCa {
        ZoneOnCa {
            zone: name.into(),
            online,
            ca_sha256: ca.into(),
        }
    }

    #[test]
    fn a_rotation_finishes_once_every_zone_connected_with_the_new_ca() {
        let zones = [
            zone("zone-a", true, "new"),
            zone("zone-b", true, "old"),
            zone("zone-c", false, "old"),
        ];
        assert_eq!(
            waiting_to_finish(&zones, "new"),
            vec![
                "zone zone-b: still connected with a certificate of the previous CA",
                "zone zone-c: offline, last connected with a certificate of the previous CA",
            ]
        );
        // A zone whose certificate is from neither (an unknown CA) holds it up too.
        assert_eq!(
            waiting_to_finish(&[zone("zone-d", true, "")], "new").len(),
            1
        );
        assert!(waiting_to_finish(&[zone("zone-a", false, "new")], "new").is_empty());
        assert!(waiting_to_finish(&[], "new").is_empty());
    }
}
