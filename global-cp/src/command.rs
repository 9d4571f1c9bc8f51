//! Commands carried in Raft log entries, and the outcome of applying one.

use causeway_api::{Resource, ResourceKey};
use causeway_pki::api_token::TokenHashes;

use crate::access::ApiTokenRecord;
use causeway_pki::sealing::{SealError, Sealer};
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
    /// Who asked for it through the API; applying the entry writes the audit log's
    /// entry (see [`crate::audit`]). `None` for the cluster's own writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) actor: Option<crate::audit::Actor>,
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
    /// Created once by the first leader: API token hashes, the CAs and signing keys
    /// (sealed).
    InitCluster(Box<SealedSecrets>),
    /// A node announces its addresses (the Raft address and the API address).
    RegisterMember(Member),
    /// A zone token was issued (only its hash is kept).
    AddZoneToken(ZoneTokenRecord),
    /// Spends a zone token on the enrolment of the key `key_sha256`: refused if the
    /// token is unknown, altered (`sha256` differs), expired at the entry's time, or
    /// already spent on another key. Raft orders two enrolments with one token, so only
    /// the first key wins.
    UseZoneToken {
        zone: String,
        id: String,
        sha256: String,
        key_sha256: String,
    },
    /// Records an issued dataplane or ingress token (never the token itself), so it can
    /// be listed and revoked.
    AddProxyToken(ProxyTokenRecord),
    /// Replaces the keys that sign dataplane and ingress tokens (a rotation, see
    /// [`crate::token_keys`]), if the key that signs is still `expected_current` (`None`:
    /// the key the cluster formed with); otherwise `Refused`.
    SetTokenSigningKeys {
        keys: Vec<crate::token_keys::TokenSigningKey>,
        expected_current: Option<String>,
    },
    /// Replaces the key that signs zone tokens (sealed). Tokens it signed and not yet
    /// used stop enrolling: their signature no longer verifies.
    SetZoneTokenKey {
        key_sealed: String,
    },
    /// A step of a zone CA rotation, if the CA that signs zone certificates is still
    /// the one whose certificate hashes to `expected_current_sha256`; else `Refused`.
    RotateZoneCa {
        expected_current_sha256: String,
        step: CaStep,
    },
    /// A step of an API CA rotation, if the CA that signs the nodes' API and KDS server
    /// certificates is still the one whose certificate hashes to
    /// `expected_current_sha256`; else `Refused`.
    RotateApiCa {
        expected_current_sha256: String,
        step: CaStep,
    },
    /// A step of a Raft CA rotation, if the CA that signs nodes' Raft certificates is
    /// still the one whose certificate hashes to `expected_current_sha256`; else
    /// `Refused`.
    RotateRaftCa {
        expected_current_sha256: String,
        step: CaStep,
    },
    /// Revokes dataplane or ingress tokens by id. Zones learn it over KDS and refuse the
    /// tokens' next registration and certificate. `NotFound` when none is known.
    RevokeProxyTokens {
        ids: Vec<String>,
    },
    /// Revokes one token of a zone, or all of them when `id` is `None`.
    RevokeZoneTokens {
        zone: String,
        id: Option<String>,
    },
    /// A KDS session's report about its zone. A report from an older session than the
    /// stored one is ignored, so a late "disconnected" never hides a newer connection.
    ZoneStatus(Box<ZoneStatusRecord>),
    /// Resources a zone owns, reported over KDS: created or updated ones and deletions.
    /// Entries that clash with a resource of another origin, or name a missing mesh, are
    /// refused one by one; the rest apply.
    ZoneSync {
        zone: String,
        upserts: Vec<Resource>,
        deletes: Vec<ResourceKey>,
    },
    /// The root CA of a mesh; set once for a builtin CA (`replace` false), replaced when
    /// a provided CA changes (`replace` true). Proposed by the leader.
    SetMeshCa {
        mesh: String,
        ca: MeshCa,
        #[serde(default)]
        replace: bool,
    },
    /// A step of a mesh's root CA rotation (see [`crate::ca_rotation`]); refused when it
    /// does not follow the rotation's state.
    RotateMeshCa {
        mesh: String,
        step: crate::ca_rotation::Step,
    },
    /// A secret of a mesh (a provided CA's key), sealed.
    PutSecret {
        mesh: String,
        name: String,
        value: String,
    },
    DeleteSecret {
        mesh: String,
        name: String,
    },
    /// An intermediate CA was issued to a zone (recorded so it can be revoked).
    RecordIntermediate(IntermediateRecord),
    /// Revokes every intermediate CA issued to a zone: no sidecar trusts them any more.
    RevokeIntermediates {
        zone: String,
    },
    /// A join token was issued for a node (`causeway cluster add-node`); only its hash
    /// is kept. The node becomes a member when it joins with it. Earlier tokens of the
    /// node stop working: only the newest one is good.
    AddJoinToken(JoinTokenRecord),
    /// A node joins with a join token: refused when the token is unknown, used or
    /// expired (at the entry's time, so every node agrees), else marked used, with every
    /// other token of the node. Raft orders two uses of one token, so only the first
    /// succeeds.
    UseJoinToken {
        sha256: String,
    },
    /// Every join token of a node stops working (`causeway cluster remove-node` of a
    /// node that was added and has not joined, or has).
    CancelJoinTokens {
        node: u64,
    },
    /// An API token was issued (its hash is kept, never the token).
    AddApiToken(ApiTokenRecord),
    /// Replaces the live API token `id` with `new` (same name, role and meshes); the old
    /// one keeps working for `overlap_secs` more, so clients move without downtime.
    /// Refused when `id` is unknown, expired or revoked.
    RotateApiToken {
        id: String,
        new: ApiTokenRecord,
        overlap_secs: u64,
    },
    /// Revokes an API token. Refused when it is the last live admin token: the cluster
    /// would have nobody left to manage it.
    RevokeApiToken {
        id: String,
    },
}

/// A join token as the cluster remembers it (see [`crate::join`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    /// The node id the token was issued for: the certificate it gets names that id.
    pub node: u64,
    /// The addresses the node is added with when it joins.
    pub raft_addr: String,
    pub api_addr: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub used: bool,
}

/// An intermediate CA issued to a zone for a mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateRecord {
    pub mesh: String,
    pub zone: String,
    /// SHA-256 of the certificate (DER), hex: how sidecars recognise it.
    pub sha256: String,
    pub not_after: i64,
    pub revoked: bool,
}

/// A zone token as the cluster remembers it: enough to check and revoke it, never the
/// token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneTokenRecord {
    pub zone: String,
    pub id: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    /// Once the token enrolled its zone: SHA-256 (hex) of the public key it enrolled.
    /// The token is then spent; only a retry with that same key (an answer lost on the
    /// way) gets a certificate again. The record stays: the zone's certificate names it,
    /// and revoking it cuts the zone off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_unix: Option<i64>,
}

/// What a proxy token grants (see `causeway_pki::dataplane_token`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ProxyTokenKind {
    /// A sidecar of one service in one mesh.
    Dataplane,
    /// A zone ingress of one zone.
    Ingress,
}

/// A dataplane or ingress token as the cluster remembers it: its claims, never the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTokenRecord {
    pub id: String,
    pub kind: ProxyTokenKind,
    /// The mesh and service of a dataplane token; empty for an ingress token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// The zone of an ingress token; empty for a dataplane token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix: Option<i64>,
}

/// What the global side knows about a zone's KDS session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatusRecord {
    pub zone: String,
    pub connected: bool,
    /// The global node serving the session.
    pub node: u64,
    /// Unique per session (random); orders reports together with `connected_unix_ms`.
    pub session: u64,
    pub connected_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    /// The last global revision the zone acknowledged.
    pub revision_applied: u64,
    /// Changes in the last change set it applied (a resume sends only the delta).
    pub last_set_changes: u64,
    pub last_set_full: bool,
    pub version: String,
    pub dataplanes: u64,
    pub zone_ingresses: u64,
    pub connected_proxies: u64,
    pub last_config_push_unix_ms: i64,
    pub resources: u64,
    /// Connected proxies rejecting their config (absent in records of older versions).
    #[serde(default)]
    pub proxies_nacking: u64,
    /// Per mesh with mTLS: how far the zone and its sidecars follow the mesh's roots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_ca: Vec<crate::ca_rotation::MeshReport>,
    /// SHA-256 of the zone CA that signed the certificate the session's zone presented
    /// (empty when it is neither the current nor the previous one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone_ca_sha256: String,
    /// SHA-256 of each API CA the zone trusts global's certificates from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_api_ca_sha256: Vec<String>,
}

/// A mesh's root CA. The key never leaves the global control plane, and is sealed
/// (`sealed-v1:...`, see [`crate::sealing`]).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshCa {
    /// The root that signs zones' intermediate CAs.
    pub cert_pem: String,
    pub key_pem: String,
    /// A root staged by a rotation: trusted everywhere, signing nothing yet (its key
    /// sealed). See [`crate::ca_rotation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<StagedCa>,
    /// The root a rotation replaced: still trusted, until the rotation finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// A root staged by a root CA rotation.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for StagedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StagedCa { .. }")
    }
}

impl MeshCa {
    /// Its sealed keys: the root's, and a staged root's.
    pub fn sealed_mut(&mut self) -> Vec<&mut String> {
        let mut out = vec![&mut self.key_pem];
        out.extend(self.next.as_mut().map(|n| &mut n.key_pem));
        out
    }
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshCa { .. }")
    }
}

/// The cluster's secrets as the Raft log, its snapshots and the store hold them: the API
/// tokens only as hashes, every key sealed under the nodes' seal key (`sealed-v1:...`,
/// see [`crate::sealing`]). Created once, by the first leader.
///
/// A store written before tokens were hashed holds `admin_token` instead of `tokens`: it
/// does not decode, and the node refuses to start (no migration).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SealedSecrets {
    pub tokens: TokenHashes,
    pub api_ca_cert_pem: String,
    pub api_ca_key_sealed: String,
    /// During an API CA rotation: the new CA, trusted by clients and zones before it
    /// signs the nodes' server certificates...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_ca_staged_cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_ca_staged_key_sealed: String,
    /// ... and once it signs, the CA it replaced, trusted until the rotation finishes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_ca_previous_cert_pem: String,
    /// HMAC-SHA256 key that signs zone tokens (hex), sealed.
    pub zone_token_key_sealed: String,
    /// The CA of zone certificates (KDS client certificates).
    pub zone_ca_cert_pem: String,
    pub zone_ca_key_sealed: String,
    /// During a zone CA rotation, the CA it replaces: KDS still admits zones with its
    /// certificates until the rotation finishes; it signs nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone_ca_previous_cert_pem: String,
    /// Ed25519 key (PKCS#8, hex) that signs dataplane tokens, sealed.
    pub dataplane_token_key_sealed: String,
    /// The Raft CA, when the cluster generated it (formed by one node); empty when the
    /// operator brought the nodes' certificates (`--raft-tls-*`) or runs Raft in
    /// plaintext. It signs the certificates of nodes that join with a join token.
    #[serde(default)]
    pub raft_ca_cert_pem: String,
    #[serde(default)]
    pub raft_ca_key_sealed: String,
    /// During a Raft CA rotation, the new CA, trusted by every node before it signs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub raft_ca_staged_cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub raft_ca_staged_key_sealed: String,
    /// After a Raft CA rotation's activation, the CA it replaced, trusted until every
    /// node presents a certificate of the new one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub raft_ca_previous_cert_pem: String,
}

impl std::fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedSecrets { .. }")
    }
}

impl SealedSecrets {
    /// Every sealed key held, named (a seal key rotation seals each again).
    pub fn sealed_mut(&mut self) -> Vec<(&'static str, &mut String)> {
        let mut out = vec![
            ("the API CA key", &mut self.api_ca_key_sealed),
            ("the zone token key", &mut self.zone_token_key_sealed),
            ("the zone CA key", &mut self.zone_ca_key_sealed),
            (
                "the dataplane token key",
                &mut self.dataplane_token_key_sealed,
            ),
        ];
        if !self.raft_ca_key_sealed.is_empty() {
            out.push(("the Raft CA key", &mut self.raft_ca_key_sealed));
        }
        if !self.api_ca_staged_key_sealed.is_empty() {
            out.push(("the staged API CA key", &mut self.api_ca_staged_key_sealed));
        }
        if !self.raft_ca_staged_key_sealed.is_empty() {
            out.push((
                "the staged Raft CA key",
                &mut self.raft_ca_staged_key_sealed,
            ));
        }
        out
    }

    /// Seals freshly generated keys (`secrets`) for the log.
    pub fn seal(secrets: &ClusterSecrets, sealer: &Sealer) -> SealedSecrets {
        SealedSecrets {
            tokens: secrets.tokens.clone(),
            api_ca_cert_pem: secrets.api_ca_cert_pem.clone(),
            api_ca_key_sealed: sealer.seal(&secrets.api_ca_key_pem),
            api_ca_staged_cert_pem: String::new(),
            api_ca_staged_key_sealed: String::new(),
            api_ca_previous_cert_pem: String::new(),
            zone_token_key_sealed: sealer.seal(&secrets.zone_token_key),
            zone_ca_cert_pem: secrets.zone_ca_cert_pem.clone(),
            zone_ca_key_sealed: sealer.seal(&secrets.zone_ca_key_pem),
            zone_ca_previous_cert_pem: String::new(),
            dataplane_token_key_sealed: sealer.seal(&secrets.dataplane_token_key),
            raft_ca_staged_cert_pem: String::new(),
            raft_ca_staged_key_sealed: String::new(),
            raft_ca_previous_cert_pem: String::new(),
            raft_ca_cert_pem: secrets.raft_ca_cert_pem.clone(),
            raft_ca_key_sealed: if secrets.raft_ca_key_pem.is_empty() {
                String::new()
            } else {
                sealer.seal(&secrets.raft_ca_key_pem)
            },
        }
    }

    /// The keys in clear, for this process's memory only.
    pub fn open(&self, sealer: &Sealer) -> Result<ClusterSecrets, SealError> {
        Ok(ClusterSecrets {
            tokens: self.tokens.clone(),
            api_ca_cert_pem: self.api_ca_cert_pem.clone(),
            api_ca_key_pem: sealer.open(&self.api_ca_key_sealed)?,
            zone_token_key: sealer.open(&self.zone_token_key_sealed)?,
            zone_ca_cert_pem: self.zone_ca_cert_pem.clone(),
            zone_ca_key_pem: sealer.open(&self.zone_ca_key_sealed)?,
            dataplane_token_key: sealer.open(&self.dataplane_token_key_sealed)?,
            raft_ca_cert_pem: self.raft_ca_cert_pem.clone(),
            raft_ca_key_pem: if self.raft_ca_key_sealed.is_empty() {
                String::new()
            } else {
                sealer.open(&self.raft_ca_key_sealed)?
            },
        })
    }
}

/// The steps of a control-plane CA rotation (see the API modules `zone_ca` and
/// `raft_ca`). The zone CA takes `Stage` and `Finish`: a new zone CA signs at once while
/// KDS admits certificates of either, zones move to it on their own, and the old one is
/// dropped once every zone presents one. The Raft CA takes all three: a node must trust
/// the new CA (`Stage`) before any peer presents a certificate from it (`Activate`:
/// it signs, every node issues itself a certificate), and the old one is dropped
/// (`Finish`) once every node presents one.
pub use causeway_pki::ca_rotation::CaStep;

/// The cluster's secrets opened: held in memory only, never serialized (the store and
/// the log hold [`SealedSecrets`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub tokens: TokenHashes,
    pub api_ca_cert_pem: String,
    pub api_ca_key_pem: String,
    /// HMAC-SHA256 key that signs zone tokens, hex.
    pub zone_token_key: String,
    pub zone_ca_cert_pem: String,
    pub zone_ca_key_pem: String,
    /// Ed25519 key (PKCS#8, hex) that signs dataplane tokens; zones get its public half.
    pub dataplane_token_key: String,
    /// The Raft CA when the cluster generated it; both empty otherwise.
    pub raft_ca_cert_pem: String,
    pub raft_ca_key_pem: String,
}

impl ClusterSecrets {
    /// The Raft CA that signs joining nodes' certificates, when the cluster has one.
    pub fn raft_ca(&self) -> Option<causeway_pki::CertKey> {
        (!self.raft_ca_key_pem.is_empty()).then(|| causeway_pki::CertKey {
            cert_pem: self.raft_ca_cert_pem.clone(),
            key_pem: self.raft_ca_key_pem.clone(),
        })
    }
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
    /// A zone's report applied; these entries were refused (key and reason).
    ZoneSynced {
        refused: Vec<(ResourceKey, String)>,
    },
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
    #[error("{key} belongs to {origin}; change it there")]
    OwnedElsewhere { key: String, origin: String },
    /// A join or zone token that cannot be used (unknown, used, expired).
    #[error("{0}")]
    Token(String),
    /// A change that would leave the cluster in a state it must not be in (no admin
    /// token left, rotating a dead token).
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("commands serialize to JSON")
}
