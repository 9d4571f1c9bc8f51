//! API tokens of both control planes (admin and read-only): high-entropy random strings
//! that are handed to the operator once and kept only as SHA-256 hashes, compared in
//! constant time. A copy of a data directory therefore holds no token.
//!
//! Handing out: the node that creates the tokens writes them (with the API CA
//! certificate, so the directory alone configures a client) into the directory given by
//! `--token-out-dir`, 0600 files in a 0700 directory, or, without that flag, prints them
//! once on standard output (never to the log, which is standard error).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File names in a `--token-out-dir`.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const READONLY_TOKEN_FILE: &str = "readonly-token";
pub const API_CA_FILE: &str = "api-ca.pem";

/// A new token: `cw_` and 32 random bytes in hex.
pub fn generate() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    format!("cw_{}", hex::encode(b))
}

/// SHA-256 of a token, hex: what is stored. A plain hash suffices (no salt or slow hash)
/// because the tokens are 256-bit random values, not passwords.
pub fn hash(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

/// Freshly created API tokens, in clear: only in memory until handed out.
#[derive(Clone)]
pub struct ApiTokens {
    pub admin: String,
    pub readonly: String,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTokens { .. }")
    }
}

impl ApiTokens {
    pub fn generate() -> ApiTokens {
        ApiTokens {
            admin: generate(),
            readonly: generate(),
        }
    }

    pub fn hashes(&self) -> TokenHashes {
        TokenHashes {
            admin_sha256: hash(&self.admin),
            readonly_sha256: hash(&self.readonly),
            retiring: Vec::new(),
        }
    }

    /// Hands the tokens to the operator: into `out_dir` (created 0700; files 0600, with
    /// the API CA certificate `ca_pem`), or printed once on standard output.
    pub fn hand_out(
        &self,
        out_dir: Option<&Path>,
        what: &str,
        ca_pem: &str,
    ) -> std::io::Result<()> {
        match out_dir {
            Some(dir) => {
                crate::private_dir(dir)?;
                crate::write_private(&dir.join(ADMIN_TOKEN_FILE), &format!("{}\n", self.admin))?;
                crate::write_private(
                    &dir.join(READONLY_TOKEN_FILE),
                    &format!("{}\n", self.readonly),
                )?;
                crate::write_private(&dir.join(API_CA_FILE), ca_pem)
            }
            None => {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{what} API tokens (shown once, not kept anywhere; store them now, or start with --token-out-dir DIR to have them written to files):\n  admin token     {}\n  read-only token {}",
                    self.admin, self.readonly
                )?;
                out.flush()
            }
        }
    }
}

/// What a control plane keeps of its API tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenHashes {
    pub admin_sha256: String,
    pub readonly_sha256: String,
    /// Tokens replaced by a rotation ([`TokenHashes::rotate`]), still accepted until
    /// their time is up (the zone API's tokens; the global API keeps its own records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringToken>,
}

/// A rotated-out token, accepted until `until_unix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiringToken {
    pub access: Access,
    pub sha256: String,
    pub until_unix: i64,
}

/// What a presented token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Admin,
    ReadOnly,
}

impl TokenHashes {
    /// The access `presented` grants at `now_unix`, if any (constant-time comparisons
    /// of the hashes).
    pub fn check(&self, presented: &str, now_unix: i64) -> Option<Access> {
        let h = hash(presented);
        let is = |sha: &str| crate::constant_time_eq(h.as_bytes(), sha.as_bytes());
        if is(&self.admin_sha256) {
            Some(Access::Admin)
        } else if is(&self.readonly_sha256) {
            Some(Access::ReadOnly)
        } else {
            self.retiring
                .iter()
                .find(|r| now_unix < r.until_unix && is(&r.sha256))
                .map(|r| r.access)
        }
    }

    /// Replaces the `access` token with a new one, shown once (returned); the old one
    /// keeps working for `overlap_secs`. Rotations whose overlap is over are forgotten.
    pub fn rotate(&mut self, access: Access, now_unix: i64, overlap_secs: i64) -> String {
        let token = generate();
        let current = match access {
            Access::Admin => &mut self.admin_sha256,
            Access::ReadOnly => &mut self.readonly_sha256,
        };
        let old = std::mem::replace(current, hash(&token));
        self.retiring.retain(|r| now_unix < r.until_unix);
        if overlap_secs > 0 {
            self.retiring.push(RetiringToken {
                access,
                sha256: old,
                until_unix: now_unix.saturating_add(overlap_secs),
            });
        }
        token
    }
}

/// Refuses an output directory inside the data dir: tokens there would defeat hashing.
pub fn check_out_dir(flag: &str, out_dir: &Path, data_dir: &Path) -> Result<(), String> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if abs(out_dir).starts_with(abs(data_dir)) {
        return Err(format!(
            "{flag} {} is inside the data dir {}: tokens must be handed out outside it; pick another directory",
            out_dir.display(),
            data_dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_token_works_for_the_overlap_and_then_never() {
        let t = ApiTokens::generate();
        let mut h = t.hashes();
        let new = h.rotate(Access::Admin, 1000, 60);
        assert_eq!(h.check(&new, 1000), Some(Access::Admin));
        assert_eq!(h.check(&t.admin, 1059), Some(Access::Admin));
        assert_eq!(h.check(&t.admin, 1060), None);
        assert_eq!(h.check(&t.readonly, 1060), Some(Access::ReadOnly));
        // A read-only token rotated out keeps read-only access only; no overlap: gone.
        let ro = h.rotate(Access::ReadOnly, 1100, 0);
        assert_eq!(h.check(&t.readonly, 1100), None);
        assert_eq!(h.check(&ro, 1100), Some(Access::ReadOnly));
        assert!(
            h.retiring.is_empty(),
            "the admin token's overlap is over: forgotten"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains(&new) && !json.contains(&ro));
        assert_eq!(serde_json::from_str::<TokenHashes>(&json).unwrap(), h);
    }

    #[test]
    fn only_hashes_are_kept_and_they_grant_the_right_access() {
        let t = ApiTokens::generate();
        assert_ne!(t.admin, t.readonly);
        assert!(t.admin.starts_with("cw_") && t.admin.len() == 67);
        let h = t.hashes();
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains(&t.admin) && !json.contains(&t.readonly));
        assert_eq!(h.check(&t.admin, 0), Some(Access::Admin));
        assert_eq!(h.check(&t.readonly, 0), Some(Access::ReadOnly));
        assert_eq!(h.check("cw_wrong", 0), None);
        assert_eq!(h.check(&h.admin_sha256, 0), None, "the hash is not a token");
        assert!(!format!("{t:?}").contains(&t.admin));
    }

    #[test]
    fn tokens_are_written_private_outside_the_data_dir() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("tokens");
        let t = ApiTokens::generate();
        t.hand_out(Some(&out), "test", "CA").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join(ADMIN_TOKEN_FILE)), 0o600);
        let read = std::fs::read_to_string(out.join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(read.trim(), t.admin);
        let data = tmp.path().join("data");
        assert!(check_out_dir("--token-out-dir", &data.join("t"), &data).is_err());
        assert!(check_out_dir("--token-out-dir", &out, &data).is_ok());
    }
}
