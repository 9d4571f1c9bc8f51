//! Rotations of the control plane's own CAs as they change the cluster's secrets: the
//! zone CA (zones' KDS client certificates) and the Raft CA (nodes' Raft certificates).
//! Pure: the store applies a step through these, so every node agrees, and they are
//! table-tested without a cluster.
//!
//! A step names the CA it expects to be signing (the SHA-256 of its certificate), so two
//! operators cannot interleave rotations: the second one's step is refused.
//!
//! - Zone CA: `Stage` makes the new CA sign at once and keeps the old one as `previous`
//!   (KDS admits both); `Finish` drops it. Zones need no step between: each renews as
//!   soon as global names the new CA.
//! - Raft CA and API CA: `Stage` adds the new CA as `staged`, trusted by every node but signing
//!   nothing; `Activate` makes it sign (each node issues itself a certificate from it)
//!   and keeps the old one as `previous`; `Finish` drops it. A node (or a zone, or a
//!   client of the API) must trust a CA before any peer presents a certificate from it,
//!   hence the extra step.

use crate::command::{CaStep, SealedSecrets};

/// Applies a zone CA step to `s`, or says why not (`s` unchanged).
pub fn apply_zone_ca(s: &mut SealedSecrets, expected: &str, step: CaStep) -> Result<(), String> {
    if causeway_pki::first_cert_sha256(&s.zone_ca_cert_pem) != expected {
        return Err(
            "the zone CA changed meanwhile; look again (causeway zone ca status) and retry".into(),
        );
    }
    let rotating = !s.zone_ca_previous_cert_pem.is_empty();
    match step {
        CaStep::Stage { .. } if rotating => Err(
            "a zone CA rotation is under way; finish it first (causeway zone ca rotate --step finish)"
                .into(),
        ),
        CaStep::Stage {
            cert_pem,
            key_sealed,
        } => {
            s.zone_ca_previous_cert_pem = std::mem::replace(&mut s.zone_ca_cert_pem, cert_pem);
            s.zone_ca_key_sealed = key_sealed;
            Ok(())
        }
        CaStep::Activate => Err(
            "the zone CA has no activate step: a staged zone CA signs at once".into(),
        ),
        CaStep::Finish if !rotating => Err("no zone CA rotation is under way".into()),
        CaStep::Finish => {
            s.zone_ca_previous_cert_pem.clear();
            Ok(())
        }
    }
}

pub use causeway_pki::ca_rotation::CaPhase;
use causeway_pki::ca_rotation::{Slots, apply_three_step, bundle};

/// Where the Raft CA's rotation stands.
pub fn raft_phase(s: &SealedSecrets) -> CaPhase {
    CaPhase::of(&s.raft_ca_staged_cert_pem, &s.raft_ca_previous_cert_pem)
}

/// Where the API CA's rotation stands.
pub fn api_phase(s: &SealedSecrets) -> CaPhase {
    CaPhase::of(&s.api_ca_staged_cert_pem, &s.api_ca_previous_cert_pem)
}

/// Applies a Raft CA step to `s`, or says why not (`s` unchanged).
pub fn apply_raft_ca(s: &mut SealedSecrets, expected: &str, step: CaStep) -> Result<(), String> {
    if s.raft_ca_key_sealed.is_empty() {
        return Err("this cluster's Raft certificates are the operator's (--raft-tls-ca/-cert/-key) or Raft runs in plaintext: the cluster holds no Raft CA to rotate".into());
    }
    apply_three_step(
        Slots {
            what: "Raft CA",
            status: "causeway cluster raft-ca status",
            cert: &mut s.raft_ca_cert_pem,
            key: &mut s.raft_ca_key_sealed,
            staged_cert: &mut s.raft_ca_staged_cert_pem,
            staged_key: &mut s.raft_ca_staged_key_sealed,
            previous: &mut s.raft_ca_previous_cert_pem,
        },
        expected,
        step,
    )
}

/// Applies an API CA step to `s`, or says why not (`s` unchanged).
pub fn apply_api_ca(s: &mut SealedSecrets, expected: &str, step: CaStep) -> Result<(), String> {
    apply_three_step(
        Slots {
            what: "API CA",
            status: "causeway cluster api-ca status",
            cert: &mut s.api_ca_cert_pem,
            key: &mut s.api_ca_key_sealed,
            staged_cert: &mut s.api_ca_staged_cert_pem,
            staged_key: &mut s.api_ca_staged_key_sealed,
            previous: &mut s.api_ca_previous_cert_pem,
        },
        expected,
        step,
    )
}

/// The API CAs clients and zones trust now: the signing one, and the staged or previous
/// one during a rotation.
pub fn api_trust(s: &SealedSecrets) -> String {
    bundle(&[
        &s.api_ca_cert_pem,
        &s.api_ca_staged_cert_pem,
        &s.api_ca_previous_cert_pem,
    ])
}

/// The Raft CAs every node trusts now: the signing one, and the staged or previous one
/// during a rotation (PEM, one after another).
pub fn raft_trust(s: &SealedSecrets) -> String {
    bundle(&[
        &s.raft_ca_cert_pem,
        &s.raft_ca_staged_cert_pem,
        &s.raft_ca_previous_cert_pem,
    ])
}

pub use causeway_pki::cert_shas as shas;

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> (SealedSecrets, causeway_pki::CertKey) {
        let zone = causeway_pki::generate_ca("zone").unwrap();
        let raft = causeway_pki::generate_ca("raft").unwrap();
        let clear = crate::command::ClusterSecrets {
            tokens: causeway_pki::api_token::TokenHashes {
                admin_sha256: String::new(),
                readonly_sha256: String::new(),
                retiring: Vec::new(),
            },
            api_ca_cert_pem: String::new(),
            api_ca_key_pem: String::new(),
            zone_token_key: String::new(),
            zone_ca_cert_pem: zone.cert_pem,
            zone_ca_key_pem: zone.key_pem,
            dataplane_token_key: String::new(),
            raft_ca_cert_pem: raft.cert_pem.clone(),
            raft_ca_key_pem: raft.key_pem.clone(),
        };
        let sealer = crate::sealing::Sealer::new(&[7u8; 32]).unwrap();
        (SealedSecrets::seal(&clear, &sealer), raft)
    }

    fn stage() -> (CaStep, String) {
        let ca = causeway_pki::generate_ca("new").unwrap();
        let sha = causeway_pki::first_cert_sha256(&ca.cert_pem);
        (
            CaStep::Stage {
                cert_pem: ca.cert_pem,
                key_sealed: "sealed-v1:new".into(),
            },
            sha,
        )
    }

    #[test]
    fn a_raft_ca_rotation_trusts_the_new_ca_before_it_signs_and_the_old_until_the_end() {
        let (mut s, old) = secrets();
        let old_sha = causeway_pki::first_cert_sha256(&old.cert_pem);
        let (step, new_sha) = stage();
        assert_eq!(raft_phase(&s), CaPhase::Steady);
        assert_eq!(shas(&raft_trust(&s)), std::slice::from_ref(&old_sha));

        // Out of order, or against a CA that is not signing: refused, nothing changes.
        let before = s.clone();
        for (expected, bad) in [
            (old_sha.as_str(), CaStep::Activate),
            (old_sha.as_str(), CaStep::Finish),
            ("stale", step.clone()),
        ] {
            assert!(apply_raft_ca(&mut s, expected, bad).is_err());
            assert!(s == before);
        }

        apply_raft_ca(&mut s, &old_sha, step.clone()).unwrap();
        assert_eq!(raft_phase(&s), CaPhase::Staged);
        // Staged: trusted by all, the old one still signs.
        let mut both = vec![old_sha.clone(), new_sha.clone()];
        both.sort();
        assert_eq!(shas(&raft_trust(&s)), both);
        assert_eq!(
            causeway_pki::first_cert_sha256(&s.raft_ca_cert_pem),
            old_sha
        );
        let why = apply_raft_ca(&mut s, &old_sha, step.clone()).unwrap_err();
        assert!(why.contains("next step is activate, not stage"), "{why}");

        apply_raft_ca(&mut s, &old_sha, CaStep::Activate).unwrap();
        assert_eq!(raft_phase(&s), CaPhase::Activated);
        assert_eq!(
            causeway_pki::first_cert_sha256(&s.raft_ca_cert_pem),
            new_sha
        );
        assert_eq!(s.raft_ca_key_sealed, "sealed-v1:new");
        assert_eq!(shas(&raft_trust(&s)), both);

        apply_raft_ca(&mut s, &new_sha, CaStep::Finish).unwrap();
        assert_eq!(raft_phase(&s), CaPhase::Steady);
        assert_eq!(shas(&raft_trust(&s)), [new_sha]);
    }

    #[test]
    fn a_cluster_without_its_own_raft_ca_has_none_to_rotate() {
        let (mut s, _) = secrets();
        s.raft_ca_cert_pem.clear();
        s.raft_ca_key_sealed.clear();
        let why = apply_raft_ca(&mut s, "", stage().0).unwrap_err();
        assert!(why.contains("operator's"), "{why}");
    }

    #[test]
    fn a_zone_ca_rotation_signs_with_the_new_ca_at_once_and_admits_the_old_until_finished() {
        let (mut s, _) = secrets();
        let old_sha = causeway_pki::first_cert_sha256(&s.zone_ca_cert_pem);
        let (step, new_sha) = stage();
        assert!(apply_zone_ca(&mut s, &old_sha, CaStep::Activate).is_err());
        assert!(apply_zone_ca(&mut s, &old_sha, CaStep::Finish).is_err());
        apply_zone_ca(&mut s, &old_sha, step.clone()).unwrap();
        assert_eq!(
            causeway_pki::first_cert_sha256(&s.zone_ca_cert_pem),
            new_sha
        );
        assert_eq!(
            causeway_pki::first_cert_sha256(&s.zone_ca_previous_cert_pem),
            old_sha
        );
        let why = apply_zone_ca(&mut s, &new_sha, step).unwrap_err();
        assert!(why.contains("under way"), "{why}");
        apply_zone_ca(&mut s, &new_sha, CaStep::Finish).unwrap();
        assert!(s.zone_ca_previous_cert_pem.is_empty());
    }
}
