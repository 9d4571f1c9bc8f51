//! Who may do what through the global API: named API tokens with a role, and the one
//! function that decides whether a token may make a request.
//!
//! Roles (what Kuma OSS's access control and Consul's ACLs give their users):
//! - `admin`: everything, including API tokens and the audit log;
//! - `mesh-editor`: reads everything an admin reads except tokens and the audit log, and
//!   changes only what lives inside its meshes (`/meshes/{mesh}/...`: policies, secrets,
//!   dataplane tokens), never a Mesh itself, zones or the cluster;
//! - `viewer`: reads the same, changes nothing.
//!
//! A token is kept as a record ([`ApiTokenRecord`]) holding its SHA-256, never the token.
//! Its id is the first 16 hex digits of that hash, so checking a request is one lookup;
//! the id gives nothing away (the tokens are 256-bit random values). The two tokens made
//! when the cluster formed keep the ids `admin` and `readonly`; until they are rotated or
//! revoked their records are derived from the cluster's token hashes.

use serde::{Deserialize, Serialize};

/// What a token may do (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiRole {
    Admin,
    MeshEditor,
    Viewer,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Admin => "admin",
            ApiRole::MeshEditor => "mesh-editor",
            ApiRole::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for ApiRole {
    type Err = String;
    fn from_str(s: &str) -> Result<ApiRole, String> {
        match s {
            "admin" => Ok(ApiRole::Admin),
            "mesh-editor" => Ok(ApiRole::MeshEditor),
            "viewer" => Ok(ApiRole::Viewer),
            other => Err(format!(
                "unknown role {other:?}; one of admin, mesh-editor, viewer"
            )),
        }
    }
}

/// Id of the admin token made when the cluster formed.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";
/// Id of the read-only token made when the cluster formed.
pub const BOOTSTRAP_READONLY_ID: &str = "readonly";
/// `expires_unix` of a token that does not expire (the bootstrap tokens, and tokens
/// rotated from them).
pub const NEVER: i64 = i64::MAX;

/// An API token as the cluster remembers it: never the token, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRecord {
    pub id: String,
    /// A label for people and the audit log; several tokens may share one (a rotated
    /// token's successor keeps its name).
    pub name: String,
    pub role: ApiRole,
    /// The meshes a mesh editor may change; empty for the other roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshes: Vec<String>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_unix: i64,
    /// [`NEVER`] when it does not expire.
    pub expires_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix: Option<i64>,
    /// The name of the token that issued it (`bootstrap` for the first two).
    pub created_by: String,
}

impl ApiTokenRecord {
    /// The id of the token whose hash is `sha256` (not a bootstrap token).
    pub fn id_of(sha256: &str) -> String {
        sha256.chars().take(16).collect()
    }

    /// The record of a bootstrap token never rotated nor revoked.
    pub fn bootstrap(id: &str, sha256: &str) -> ApiTokenRecord {
        let (name, role) = if id == BOOTSTRAP_ADMIN_ID {
            ("admin", ApiRole::Admin)
        } else {
            ("readonly", ApiRole::Viewer)
        };
        ApiTokenRecord {
            id: id.to_string(),
            name: name.to_string(),
            role,
            meshes: Vec::new(),
            sha256: sha256.to_string(),
            created_unix: 0,
            expires_unix: NEVER,
            revoked_unix: None,
            created_by: "bootstrap".to_string(),
        }
    }

    /// Whether the token works at `now_unix`.
    pub fn live(&self, now_unix: i64) -> bool {
        self.refusal(now_unix).is_none()
    }

    /// Why the token does not work at `now_unix`, if it does not.
    pub fn refusal(&self, now_unix: i64) -> Option<String> {
        if self.revoked_unix.is_some() {
            Some(format!("the API token {:?} was revoked", self.id))
        } else if now_unix >= self.expires_unix {
            Some(format!(
                "the API token {:?} expired (rotated, or past its validity); use its successor",
                self.id
            ))
        } else {
            None
        }
    }
}

/// Paths only an admin may use, even to read.
const ADMIN_ONLY: [&str; 2] = ["/api-tokens", "/audit"];

/// Whether `token` may make a request with `method` (`write` is anything but GET,
/// HEAD and OPTIONS) to `path`; the refusal says why and what to do.
pub fn authorize(token: &ApiTokenRecord, write: bool, path: &str) -> Result<(), String> {
    if token.role == ApiRole::Admin {
        return Ok(());
    }
    let admin_only = ADMIN_ONLY
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if admin_only {
        return Err(format!(
            "{path} is for admin tokens only; the token {:?} is a {}",
            token.name,
            token.role.as_str()
        ));
    }
    if !write {
        return Ok(());
    }
    match token.role {
        ApiRole::Admin => Ok(()),
        ApiRole::Viewer => Err(format!(
            "the token {:?} is a viewer and cannot change anything; use an admin or mesh-editor token",
            token.name
        )),
        ApiRole::MeshEditor => {
            // `/meshes/{mesh}/<something>`: inside the mesh. `/meshes/{mesh}` itself
            // is the Mesh resource, which only an admin changes. A percent-encoded mesh
            // name never equals a granted one, so it is refused (never widened).
            let mut parts = path.trim_start_matches('/').split('/');
            let inside = match (parts.next(), parts.next(), parts.next()) {
                (Some("meshes"), Some(mesh), Some(rest)) if !rest.is_empty() => Some(mesh),
                _ => None,
            };
            // The mesh's root CA is the trust of every zone: admins rotate it.
            if inside.is_some() && path.split('/').nth(3) == Some("ca") {
                return Err(format!(
                    "the token {:?} is a mesh editor: rotating a mesh's root CA is for admin tokens",
                    token.name
                ));
            }
            match inside {
                Some(mesh) if token.meshes.iter().any(|m| m == mesh) => Ok(()),
                _ => Err(format!(
                    "the token {:?} is a mesh editor of {}: it changes only resources inside those meshes (/meshes/{{mesh}}/...), not {path}",
                    token.name,
                    token.meshes.join(", ")
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: ApiRole, meshes: &[&str]) -> ApiTokenRecord {
        ApiTokenRecord {
            role,
            meshes: meshes.iter().map(|m| m.to_string()).collect(),
            name: "ci".into(),
            ..ApiTokenRecord::bootstrap("x", "h")
        }
    }

    #[test]
    fn each_role_may_do_what_its_doc_says_and_nothing_more() {
        let admin = token(ApiRole::Admin, &[]);
        let editor = token(ApiRole::MeshEditor, &["payments", "shop"]);
        let viewer = token(ApiRole::Viewer, &[]);
        // (token, write, path, allowed)
        let table: &[(&ApiTokenRecord, bool, &str, bool)] = &[
            (&admin, true, "/meshes/default", true),
            (&admin, true, "/api-tokens", true),
            (&admin, false, "/audit", true),
            (&admin, true, "/cluster/members", true),
            (&editor, false, "/meshes", true),
            (&editor, false, "/meshes/other/meshtimeouts", true),
            (&editor, true, "/meshes/payments/meshtimeouts/t", true),
            (&editor, true, "/meshes/shop/secrets/ca-key", true),
            (&editor, true, "/meshes/shop/dataplane-token", true),
            (&editor, false, "/meshes/shop/ca", true),
            (&editor, true, "/meshes/shop/ca/rotate", false),
            (&admin, true, "/meshes/shop/ca/rotate", true),
            (&editor, true, "/meshes/other/meshtimeouts/t", false),
            (&editor, true, "/meshes/payments", false),
            (&editor, true, "/meshes/payments/", false),
            (&editor, true, "/meshes/pay%6dents/meshtimeouts/t", false),
            (&editor, true, "/zones/zone-a", false),
            (&editor, true, "/zones/zone-a/token", false),
            (&editor, true, "/cluster/members", false),
            (&editor, false, "/api-tokens", false),
            (&editor, false, "/api-tokens/abc", false),
            (&editor, false, "/audit", false),
            (&viewer, false, "/meshes/default/meshtimeouts", true),
            (&viewer, false, "/zones", true),
            (&viewer, true, "/meshes/default/meshtimeouts/t", false),
            (&viewer, false, "/audit", false),
            (&viewer, false, "/api-tokensx", true),
        ];
        for (t, write, path, allowed) in table {
            let got = authorize(t, *write, path);
            assert_eq!(
                got.is_ok(),
                *allowed,
                "{:?} write={write} {path}: {got:?}",
                t.role
            );
        }
        let why = authorize(&editor, true, "/meshes/other/meshtimeouts/t").unwrap_err();
        assert!(why.contains("payments, shop"), "{why}");
    }

    #[test]
    fn a_token_works_until_it_expires_or_is_revoked() {
        let mut t = token(ApiRole::Viewer, &[]);
        t.expires_unix = 100;
        assert!(t.live(99) && t.refusal(99).is_none());
        assert!(!t.live(100));
        assert!(t.refusal(100).unwrap().contains("expired"));
        t.expires_unix = NEVER;
        t.revoked_unix = Some(5);
        assert!(t.refusal(6).unwrap().contains("revoked"));
        assert_eq!(ApiTokenRecord::id_of(&"ab".repeat(32)), "abababababababab");
    }
}
