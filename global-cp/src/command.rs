//! Commands carried in Raft log entries, and the outcome of applying one.

use causeway_api::{Resource, ResourceKey};
use serde::{Deserialize, Serialize};

/// Who proposed an entry, so the proposing node (leader or follower) can answer its
/// waiting client when the entry is applied. `incarnation` is random per process start so
/// a restarted node never mistakes an old entry for a new proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct RequestId {
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) seq: u64,
}

/// The payload of a normal Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) req: Option<RequestId>,
    /// Proposer's wall clock (Unix ms), so every node stores the same timestamps.
    pub(crate) at_ms: i64,
    pub(crate) cmd: Command,
}

/// A change to the replicated state machine. Applying one is deterministic: every node
/// reaches the same state and the same outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a resource. `expected_version` is the optimistic-concurrency check:
    /// `Some(0)` means "must not exist yet", `Some(v)` means "must still be at version v".
    Put {
        resource: Box<Resource>,
        expected_version: Option<u64>,
    },
    /// Delete a resource, optionally only if it is still at `expected_version`.
    Delete {
        key: ResourceKey,
        expected_version: Option<u64>,
    },
    /// Created once by the first leader: API tokens and the CA of the API certificates.
    InitCluster(ClusterSecrets),
    /// A node announces its addresses (the Raft address and the API address).
    RegisterMember(Member),
}

/// Secrets every node of the cluster holds. Written to the data dir of every node.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub admin_token: String,
    pub readonly_token: String,
    pub api_ca_cert_pem: String,
    pub api_ca_key_pem: String,
}

impl std::fmt::Debug for ClusterSecrets {
    // Never print tokens or keys, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets { .. }")
    }
}

/// A member of the Raft group as the state machine knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The resource now has this version (the Raft index of the write).
    Written {
        version: u64,
        created: bool,
    },
    Deleted,
    Done,
}

/// Why a committed command changed nothing. Deterministic, so every node agrees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("version conflict: expected version {expected}, found {found}")]
    Conflict { expected: u64, found: u64 },
    #[error("not found")]
    NotFound,
    #[error("mesh {0:?} does not exist; create the Mesh first")]
    MeshMissing(String),
    #[error("mesh {0:?} still holds resources; delete them first")]
    MeshNotEmpty(String),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("commands serialize to JSON")
}
