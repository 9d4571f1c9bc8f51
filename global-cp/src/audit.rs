//! The audit log: every change made through the API, with who made it.
//!
//! The API's auth layer runs each request inside [`ACTOR`] (the token that made it).
//! [`crate::raft_node::RaftHandle::propose`] puts that actor in the Raft entry, and
//! applying the entry writes an [`AuditEntry`] in the same write batch as the change.
//! So every write the API makes is recorded, on every node, exactly when it happens,
//! including writes that were refused at apply time (their outcome says why), and no
//! handler can forget to. Changes zones report over KDS carry no actor and are not
//! audited: they are the zones' own state, not people's decisions.
//!
//! The log keeps the newest [`RETAINED`] entries; it travels in Raft snapshots with the
//! rest of the state.

use serde::{Deserialize, Serialize};

use crate::access::ApiRole;
use crate::command::Command;

/// How many entries the log keeps; older ones are dropped as new ones arrive.
pub const RETAINED: u64 = 10_000;

/// Who made a request: the API token it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub token_id: String,
    pub token_name: String,
    pub role: ApiRole,
}

tokio::task_local! {
    /// The actor of the API request this task serves.
    pub static ACTOR: Actor;
}

/// The actor of the current task, if it serves an API request.
pub fn current_actor() -> Option<Actor> {
    ACTOR.try_with(Actor::clone).ok()
}

/// One change, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Position in the log (1, 2, ...).
    pub seq: u64,
    /// The Raft index of the change.
    pub index: u64,
    /// When it was made, Unix milliseconds (the proposer's clock).
    pub at_unix_ms: i64,
    pub actor: Actor,
    /// What was done, e.g. `put`, `delete`, `issue dataplane token`.
    pub action: String,
    /// What it was done to, e.g. `MeshTimeout/default/backend-timeout`.
    pub target: String,
    /// `ok`, or why the change was refused.
    pub outcome: String,
}

/// A CA rotation's step, and the new CA's fingerprint when it is staged.
fn ca_step(step: &crate::command::CaStep) -> String {
    match step {
        crate::command::CaStep::Stage { cert_pem, .. } => {
            let sha = causeway_pki::first_cert_sha256(cert_pem);
            format!("stage CA {}", sha.get(..16).unwrap_or(&sha))
        }
        crate::command::CaStep::Activate => "activate".into(),
        crate::command::CaStep::Finish => "finish".into(),
    }
}

/// What a command does and to what, for the log. Never a secret: tokens and keys are
/// named by id, never included.
pub fn describe(cmd: &Command) -> (String, String) {
    let (action, target) = match cmd {
        Command::Put { resource, .. } => ("put", resource.key().to_string()),
        Command::Delete { key, .. } => ("delete", key.to_string()),
        Command::InitCluster(_) => ("form cluster", String::new()),
        Command::RegisterMember(m) => ("register member", format!("node {}", m.id)),
        Command::AddZoneToken(t) => (
            "issue zone token",
            format!("zone {} token {}", t.zone, t.id),
        ),
        Command::UseZoneToken { zone, id, .. } => {
            ("enroll zone", format!("zone {zone} token {id}"))
        }
        Command::AddProxyToken(t) => match t.kind {
            crate::command::ProxyTokenKind::Dataplane => (
                "issue dataplane token",
                format!("mesh {} service {} token {}", t.mesh, t.service, t.id),
            ),
            crate::command::ProxyTokenKind::Ingress => (
                "issue ingress token",
                format!("zone {} token {}", t.zone, t.id),
            ),
        },
        Command::SetTokenSigningKeys { keys, .. } => (
            "rotate the token-signing key",
            crate::token_keys::current(keys)
                .map(|k| format!("key {}", k.id))
                .unwrap_or_default(),
        ),
        Command::SetZoneTokenKey { .. } => ("rotate the zone-token key", String::new()),
        Command::RotateZoneCa { step, .. } => ("rotate the zone CA", ca_step(step)),
        Command::RotateRaftCa { step, .. } => ("rotate the Raft CA", ca_step(step)),
        Command::RotateApiCa { step, .. } => ("rotate the API CA", ca_step(step)),
        Command::RevokeProxyTokens { ids } => ("revoke proxy tokens", ids.join(", ")),
        Command::RevokeZoneTokens { zone, id } => (
            "revoke zone tokens",
            match id {
                Some(id) => format!("zone {zone} token {id}"),
                None => format!("zone {zone} (all tokens)"),
            },
        ),
        Command::ZoneStatus(s) => ("zone status", format!("zone {}", s.zone)),
        Command::ZoneSync { zone, .. } => ("zone sync", format!("zone {zone}")),
        Command::SetMeshCa { mesh, replace, .. } => (
            if *replace {
                "replace mesh CA"
            } else {
                "set mesh CA"
            },
            format!("mesh {mesh}"),
        ),
        Command::RotateMeshCa { mesh, step } => (
            match step {
                crate::ca_rotation::Step::Stage { .. } => "stage a new mesh root CA",
                crate::ca_rotation::Step::Activate => "activate the staged mesh root CA",
                crate::ca_rotation::Step::Finish => "finish the mesh root CA rotation",
            },
            format!("mesh {mesh}"),
        ),
        Command::PutSecret { mesh, name, .. } => ("put secret", format!("{mesh}/{name}")),
        Command::DeleteSecret { mesh, name } => ("delete secret", format!("{mesh}/{name}")),
        Command::RecordIntermediate(r) => (
            "issue intermediate CA",
            format!("zone {} mesh {}", r.zone, r.mesh),
        ),
        Command::RevokeIntermediates { zone } => {
            ("revoke intermediate CAs", format!("zone {zone}"))
        }
        Command::AddJoinToken(t) => ("issue join token", format!("node {}", t.node)),
        Command::UseJoinToken { .. } => ("join", String::new()),
        Command::CancelJoinTokens { node } => ("cancel join tokens", format!("node {node}")),
        Command::AddApiToken(t) => (
            "issue API token",
            format!("{} ({}) {}", t.name, t.role.as_str(), t.id),
        ),
        Command::RotateApiToken { id, new, .. } => {
            ("rotate API token", format!("{id} -> {}", new.id))
        }
        Command::RevokeApiToken { id } => ("revoke API token", id.clone()),
    };
    (action.to_string(), target)
}
