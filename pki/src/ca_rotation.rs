//! The three-step rotation of a CA that signs servers' (or peers') certificates while
//! their clients keep connecting: `Stage` adds the new CA as `staged`, trusted by every
//! client but signing nothing; `Activate` makes it sign and keeps the old one as
//! `previous` (still trusted, for certificates it signed that are still presented);
//! `Finish` drops it. A client must trust a CA before any server presents a certificate
//! from it, hence the step between.
//!
//! Pure rules over the slots that hold the CAs, shared by the global cluster's Raft and
//! API CAs (applied through Raft) and a zone's own API CA (applied to its data dir). A
//! step names the CA it expects to be signing (the SHA-256 of its certificate), so two
//! operators cannot interleave rotations: the second one's step is refused.

use serde::{Deserialize, Serialize};

/// A step of a CA rotation. The global zone CA takes `Stage` and `Finish` only (its new
/// CA signs at once); the three-step CAs take all three, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CaStep {
    Stage {
        cert_pem: String,
        key_sealed: String,
    },
    Activate,
    Finish,
}

/// Where a three-step rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaPhase {
    Steady,
    Staged,
    Activated,
}

impl CaPhase {
    /// The phase of a CA whose staged and previous certificates are these (empty: none).
    pub fn of(staged: &str, previous: &str) -> CaPhase {
        if !staged.is_empty() {
            CaPhase::Staged
        } else if !previous.is_empty() {
            CaPhase::Activated
        } else {
            CaPhase::Steady
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CaPhase::Steady => "steady",
            CaPhase::Staged => "staged",
            CaPhase::Activated => "activated",
        }
    }

    /// The step that comes next.
    pub fn next_step(self) -> &'static str {
        match self {
            CaPhase::Steady => "stage",
            CaPhase::Staged => "activate",
            CaPhase::Activated => "finish",
        }
    }
}

/// The fields a three-step rotation moves a CA between.
pub struct Slots<'a> {
    /// For messages: "Raft CA", "API CA".
    pub what: &'static str,
    /// The command that shows it, for messages.
    pub status: &'static str,
    pub cert: &'a mut String,
    pub key: &'a mut String,
    pub staged_cert: &'a mut String,
    pub staged_key: &'a mut String,
    pub previous: &'a mut String,
}

/// Applies `step` to `slots` if `expected` names the signing CA and the step is the one
/// that comes next; otherwise says why not, and nothing changes.
pub fn apply_three_step(slots: Slots<'_>, expected: &str, step: CaStep) -> Result<(), String> {
    let Slots {
        what,
        status,
        cert,
        key,
        staged_cert,
        staged_key,
        previous,
    } = slots;
    if crate::first_cert_sha256(cert) != expected {
        return Err(format!(
            "the {what} changed meanwhile; look again ({status}) and retry"
        ));
    }
    let phase = CaPhase::of(staged_cert, previous);
    let wrong = |name: &str| {
        Err(format!(
            "the {what} rotation is {}: its next step is {}, not {name}",
            phase.name(),
            phase.next_step()
        ))
    };
    match (phase, step) {
        (
            CaPhase::Steady,
            CaStep::Stage {
                cert_pem,
                key_sealed,
            },
        ) => {
            *staged_cert = cert_pem;
            *staged_key = key_sealed;
            Ok(())
        }
        (CaPhase::Staged, CaStep::Activate) => {
            *previous = std::mem::replace(cert, std::mem::take(staged_cert));
            *key = std::mem::take(staged_key);
            Ok(())
        }
        (CaPhase::Activated, CaStep::Finish) => {
            previous.clear();
            Ok(())
        }
        (_, CaStep::Stage { .. }) => wrong("stage"),
        (_, CaStep::Activate) => wrong("activate"),
        (_, CaStep::Finish) => wrong("finish"),
    }
}

/// The non-empty PEMs of `pems`, one after another, each ending in a newline: the CAs
/// a client trusts during a rotation.
pub fn bundle(pems: &[&str]) -> String {
    pems.iter()
        .filter(|pem| !pem.trim().is_empty())
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect()
}

/// One CA in a rotation's status, as the API shows it: `{"sha256", "role",
/// "notAfter"}` (RFC 3339; null when the certificate cannot be read).
pub fn ca_json(pem: &str, role: &str) -> serde_json::Value {
    let not_after = crate::cert_info(pem).ok().and_then(|i| {
        time::OffsetDateTime::from_unix_timestamp(i.not_after)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    serde_json::json!({
        "sha256": crate::first_cert_sha256(pem),
        "role": role,
        "notAfter": not_after,
    })
}

/// A rotation status's `next`: the step that comes next, whether it may be taken now,
/// and what it waits for otherwise (what the CLI's `rotate` follows).
pub fn next_json(step: &str, waiting: &[String]) -> serde_json::Value {
    serde_json::json!({
        "step": step,
        "ready": waiting.is_empty(),
        "waiting": waiting,
    })
}
