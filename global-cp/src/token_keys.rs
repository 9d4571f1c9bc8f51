//! The keys that sign dataplane and ingress tokens (Ed25519), and their rotation.
//!
//! The cluster formed with one key (in its secrets). A rotation makes a new key the one
//! that signs, and keeps the one before verifying for an overlap (by default the default
//! token validity, so tokens already handed out keep working until they would expire
//! anyway; zero for a key that leaked), after which it is dropped. The list goes through
//! Raft (keys sealed); zones get the public keys that still verify in `Trust` and refuse a
//! token signed by any other. Tokens a zone renewed are signed by the zone's own key and
//! are not affected.
//!
//! The list logic here is pure: time comes in as an argument.

use serde::{Deserialize, Serialize};

/// One token-signing key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSigningKey {
    /// First 16 hex digits of the SHA-256 of the public key.
    pub id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// The private key (PKCS#8, hex), sealed.
    pub key_sealed: String,
    /// Unix seconds; 0 for the key the cluster formed with.
    pub created: i64,
    /// When it stops verifying; `None` for the key that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<i64>,
}

impl std::fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigningKey")
            .field("id", &self.id)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// The id of a public key (hex).
pub fn key_id(public_key: &str) -> String {
    causeway_pki::sha256_hex(public_key.as_bytes())[..16].to_string()
}

/// The key that signs now.
pub fn current(keys: &[TokenSigningKey]) -> Option<&TokenSigningKey> {
    keys.iter().rev().find(|k| k.retires_at.is_none())
}

/// The keys that verify tokens at `now`: the current one first, then the retiring ones.
pub fn verifying(keys: &[TokenSigningKey], now: i64) -> Vec<&TokenSigningKey> {
    let mut out: Vec<&TokenSigningKey> = current(keys).into_iter().collect();
    out.extend(
        keys.iter()
            .filter(|k| k.retires_at.is_some_and(|t| t > now)),
    );
    out
}

/// The list after a rotation at `now`: `new` signs; the key that signed until now
/// (the current one of `keys`: the stored list, or, before any rotation, the key the
/// cluster formed with alone) verifies for `overlap_secs` more; keys whose overlap has
/// ended are dropped.
pub fn rotated(
    keys: Vec<TokenSigningKey>,
    new: TokenSigningKey,
    now: i64,
    overlap_secs: i64,
) -> Vec<TokenSigningKey> {
    let mut out = keys;
    for k in &mut out {
        if k.retires_at.is_none() {
            k.retires_at = Some(now + overlap_secs.max(0));
        }
    }
    out.retain(|k| k.retires_at.is_some_and(|t| t > now));
    out.push(new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, created: i64) -> TokenSigningKey {
        TokenSigningKey {
            id: id.into(),
            public_key: format!("pub-{id}"),
            key_sealed: format!("sealed-{id}"),
            created,
            retires_at: None,
        }
    }

    #[test]
    fn a_rotation_signs_with_the_new_key_and_verifies_with_the_old_for_the_overlap() {
        // The first rotation starts from the key the cluster formed with.
        let keys = rotated(vec![key("formed", 0)], key("k1", 100), 100, 50);
        assert_eq!(current(&keys).map(|k| k.id.as_str()), Some("k1"));
        let ids =
            |now| -> Vec<String> { verifying(&keys, now).iter().map(|k| k.id.clone()).collect() };
        assert_eq!(ids(120), ["k1", "formed"]);
        assert_eq!(ids(150), ["k1"], "the overlap ended");

        // A second rotation within the overlap keeps both earlier keys until theirs end;
        // one after it drops the expired one from the list.
        let again = rotated(keys.clone(), key("k2", 130), 130, 100);
        let v: Vec<&str> = verifying(&again, 140)
            .iter()
            .map(|k| k.id.as_str())
            .collect();
        assert_eq!(v, ["k2", "formed", "k1"]);
        let later = rotated(again.clone(), key("k3", 200), 200, 0);
        let all: Vec<&str> = later.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(all, ["k1", "k3"], "formed (ended at 150) dropped");
        // Overlap zero (a leaked key): only the new key verifies from now on.
        let v: Vec<&str> = verifying(&later, 200)
            .iter()
            .map(|k| k.id.as_str())
            .collect();
        assert_eq!(v, ["k3", "k1"]);
        let v: Vec<&str> = verifying(&later, 231)
            .iter()
            .map(|k| k.id.as_str())
            .collect();
        assert_eq!(v, ["k3"]);
    }
}
