//! Rotating a mesh's root CA without a failed request.
//!
//! A peer accepts a certificate only if it chains to a root the peer trusts, so the new
//! root must be trusted everywhere before anything is signed under it, and the old one
//! trusted until nothing signed under it is left. Three steps, each a Raft command
//! ([`crate::command::Command::RotateMeshCa`]):
//!
//! 1. [`Step::Stage`]: a new root joins the trust bundle; the old one still signs. Zones
//!    get the bundle with their `Trust`, and their sidecars renew to pick it up.
//! 2. [`Step::Activate`]: the new root signs; the old one stays trusted. Zones ask for an
//!    intermediate CA under the new root, and their sidecars renew from it.
//! 3. [`Step::Finish`]: the old root leaves the bundle; sidecars renew to drop it.
//!
//! Each step waits until every zone reports that it and its sidecars follow the one
//! before ([`ready_for`], from the zones' `MeshCaProgress`). A provided CA rotates the
//! same way: a changed Mesh `mtls.backend.provided` stages the new one.
//!
//! Everything here is pure and unit-tested; the API (`api/mesh_ca.rs`) and the zones do
//! the rest.

use serde::{Deserialize, Serialize};

use crate::command::{MeshCa, StagedCa};

/// A step of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Trust `ca` too (a new root, its key sealed).
    Stage { ca: StagedCa },
    /// Sign with the staged root; keep trusting the old one.
    Activate,
    /// Stop trusting the old root.
    Finish,
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Stage { .. } => "stage",
            Step::Activate => "activate",
            Step::Finish => "finish",
        }
    }
}

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No rotation: one root.
    Steady,
    /// A new root is trusted, not signing yet.
    Staged,
    /// The new root signs; the old one is still trusted.
    Activated,
}

impl Phase {
    pub fn of(ca: &MeshCa) -> Phase {
        match (&ca.next, &ca.previous) {
            (Some(_), _) => Phase::Staged,
            (None, Some(_)) => Phase::Activated,
            (None, None) => Phase::Steady,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Staged => "staged",
            Phase::Activated => "activated",
        }
    }
}

/// `ca` after `step`, or why the step does not follow.
pub fn apply(ca: &MeshCa, step: &Step) -> Result<MeshCa, String> {
    let phase = Phase::of(ca);
    match (step, phase) {
        (Step::Stage { ca: staged }, Phase::Steady) => {
            if staged.cert_pem == ca.cert_pem {
                return Err("the staged root is the mesh's root already".into());
            }
            Ok(MeshCa {
                next: Some(staged.clone()),
                ..ca.clone()
            })
        }
        (Step::Activate, Phase::Staged) => {
            let next = ca.next.clone().expect("staged");
            Ok(MeshCa {
                cert_pem: next.cert_pem,
                key_pem: next.key_pem,
                next: None,
                previous: Some(ca.cert_pem.clone()),
            })
        }
        (Step::Finish, Phase::Activated) => Ok(MeshCa {
            previous: None,
            ..ca.clone()
        }),
        (step, phase) => Err(format!(
            "a rotation cannot {} now: the mesh's CA is {} ({})",
            step.name(),
            phase.as_str(),
            match phase {
                Phase::Steady => "stage a new root first",
                Phase::Staged => "activate the staged root next",
                Phase::Activated => "finish the rotation next",
            }
        )),
    }
}

/// The roots the mesh's proxies trust now: the signing one first.
pub fn bundle(ca: &MeshCa) -> Vec<&str> {
    let mut out = vec![ca.cert_pem.as_str()];
    out.extend(ca.next.as_ref().map(|n| n.cert_pem.as_str()));
    out.extend(ca.previous.as_deref());
    out
}

/// What a zone last reported of one mesh (its `MeshCaProgress`), as its status record
/// keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshReport {
    pub mesh: String,
    pub trusted: Vec<String>,
    pub intermediate_root: String,
    pub proxies: u64,
    pub proxies_trusting: u64,
    pub proxies_current: u64,
}

impl MeshReport {
    pub fn reported(p: &causeway_api::kds::MeshCaProgress) -> MeshReport {
        MeshReport {
            mesh: p.mesh.clone(),
            trusted: p.trusted_sha256.clone(),
            intermediate_root: p.intermediate_root_sha256.clone(),
            proxies: p.proxies,
            proxies_trusting: p.proxies_trusting,
            proxies_current: p.proxies_current,
        }
    }

    /// As [`ready_for`] reads it.
    pub fn progress(&self, zone: &str, online: bool) -> ZoneProgress {
        ZoneProgress {
            zone: zone.into(),
            online,
            trusted: self.trusted.clone(),
            intermediate_root: self.intermediate_root.clone(),
            proxies: self.proxies,
            proxies_trusting: self.proxies_trusting,
            proxies_current: self.proxies_current,
        }
    }
}

/// What one zone reported of a mesh (its `MeshCaProgress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneProgress {
    pub zone: String,
    pub online: bool,
    /// SHA-256 of the roots the zone trusts.
    pub trusted: Vec<String>,
    /// SHA-256 of the root of its intermediate CA.
    pub intermediate_root: String,
    pub proxies: u64,
    /// Proxies trusting every root the zone trusts.
    pub proxies_trusting: u64,
    /// Proxies holding a certificate from the zone's current intermediate.
    pub proxies_current: u64,
}

/// Whether `step` may run now, given the roots (`bundle_sha`, the signing one first) and
/// every zone's progress; otherwise what it waits for, zone by zone. An offline zone
/// holds a rotation up: its sidecars would be cut off by the next step.
pub fn ready_for(
    step: &Step,
    bundle_sha: &[String],
    zones: &[ZoneProgress],
) -> Result<(), Vec<String>> {
    let mut waiting = Vec::new();
    let trusts_all = |z: &ZoneProgress| {
        let mut a = z.trusted.clone();
        let mut b = bundle_sha.to_vec();
        a.sort();
        b.sort();
        a == b
    };
    for z in zones {
        // Staging only adds trust: a zone that is away gets the new root when it returns.
        if matches!(step, Step::Stage { .. }) {
            continue;
        }
        if !z.online {
            waiting.push(format!("zone {} is offline", z.zone));
            continue;
        }
        match step {
            // Nothing to wait for: staging only adds trust.
            Step::Stage { .. } => {}
            // Every sidecar must trust the staged root before anything is signed by it.
            Step::Activate => {
                if !trusts_all(z) {
                    waiting.push(format!(
                        "zone {} has not received the staged root yet",
                        z.zone
                    ));
                } else if z.proxies_trusting < z.proxies {
                    waiting.push(format!(
                        "zone {}: {} of {} sidecars trust the staged root",
                        z.zone, z.proxies_trusting, z.proxies
                    ));
                }
            }
            // Nothing signed by the old root may be left.
            Step::Finish => {
                let signing = bundle_sha.first().map(String::as_str).unwrap_or_default();
                if z.intermediate_root != signing {
                    waiting.push(format!(
                        "zone {} has no intermediate CA from the new root yet",
                        z.zone
                    ));
                } else if z.proxies_current < z.proxies {
                    waiting.push(format!(
                        "zone {}: {} of {} sidecars hold a certificate from the new root",
                        z.zone, z.proxies_current, z.proxies
                    ));
                }
            }
        }
    }
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(cert: &str) -> MeshCa {
        MeshCa {
            cert_pem: cert.into(),
            key_pem: format!("key of {cert}"),
            ..MeshCa::default()
        }
    }

    fn staged(cert: &str) -> Step {
        Step::Stage {
            ca: StagedCa {
                cert_pem: cert.into(),
                key_pem: format!("key of {cert}"),
            },
        }
    }

    #[test]
    fn a_rotation_stages_activates_and_finishes_in_that_order() {
        let old = ca("A");
        assert_eq!(bundle(&old), ["A"]);
        let s = apply(&old, &staged("B")).unwrap();
        assert_eq!(Phase::of(&s), Phase::Staged);
        assert_eq!(s.cert_pem, "A", "the old root still signs");
        assert_eq!(bundle(&s), ["A", "B"]);
        let a = apply(&s, &Step::Activate).unwrap();
        assert_eq!(Phase::of(&a), Phase::Activated);
        assert_eq!((a.cert_pem.as_str(), a.key_pem.as_str()), ("B", "key of B"));
        assert_eq!(bundle(&a), ["B", "A"], "both trusted, the new one signs");
        let f = apply(&a, &Step::Finish).unwrap();
        assert_eq!(Phase::of(&f), Phase::Steady);
        assert_eq!(bundle(&f), ["B"]);
        // Out of order: refused, with what comes next.
        assert!(
            apply(&old, &Step::Activate)
                .unwrap_err()
                .contains("stage a new root first")
        );
        assert!(apply(&old, &Step::Finish).is_err());
        assert!(
            apply(&s, &staged("C"))
                .unwrap_err()
                .contains("activate the staged root next")
        );
        assert!(apply(&s, &Step::Finish).is_err());
        assert!(
            apply(&a, &staged("C"))
                .unwrap_err()
                .contains("finish the rotation next")
        );
        assert!(apply(&old, &staged("A")).is_err(), "the same root again");
    }

    #[test]
    fn each_step_waits_for_every_zone_and_its_sidecars() {
        let both = vec!["B".to_string(), "A".to_string()];
        let zone = |trusted: &[&str], root: &str, proxies, trusting, current| ZoneProgress {
            zone: "zone-a".into(),
            online: true,
            trusted: trusted.iter().map(|s| s.to_string()).collect(),
            intermediate_root: root.into(),
            proxies,
            proxies_trusting: trusting,
            proxies_current: current,
        };
        let staged_bundle = vec!["A".to_string(), "B".to_string()];
        // Activate: the zone must hold both roots, and every sidecar trust them.
        let waits = ready_for(
            &Step::Activate,
            &staged_bundle,
            &[zone(&["A"], "A", 3, 3, 3)],
        )
        .unwrap_err();
        assert!(
            waits[0].contains("not received the staged root"),
            "{waits:?}"
        );
        let waits = ready_for(
            &Step::Activate,
            &staged_bundle,
            &[zone(&["A", "B"], "A", 3, 2, 3)],
        )
        .unwrap_err();
        assert_eq!(
            waits,
            ["zone zone-a: 2 of 3 sidecars trust the staged root"]
        );
        assert!(
            ready_for(
                &Step::Activate,
                &staged_bundle,
                &[zone(&["B", "A"], "A", 3, 3, 3)]
            )
            .is_ok()
        );
        // Finish: the zone's intermediate and every sidecar's certificate from the new root.
        let waits =
            ready_for(&Step::Finish, &both, &[zone(&["A", "B"], "A", 3, 3, 3)]).unwrap_err();
        assert!(
            waits[0].contains("no intermediate CA from the new root"),
            "{waits:?}"
        );
        let waits =
            ready_for(&Step::Finish, &both, &[zone(&["A", "B"], "B", 3, 3, 1)]).unwrap_err();
        assert_eq!(
            waits,
            ["zone zone-a: 1 of 3 sidecars hold a certificate from the new root"]
        );
        assert!(ready_for(&Step::Finish, &both, &[zone(&["A", "B"], "B", 3, 3, 3)]).is_ok());
        // An offline zone holds every step up.
        let mut off = zone(&["A", "B"], "B", 0, 0, 0);
        off.online = false;
        assert_eq!(
            ready_for(&Step::Finish, &both, &[off]).unwrap_err(),
            ["zone zone-a is offline"]
        );
    }
}
