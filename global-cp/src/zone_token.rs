//! Zone tokens: `cwz1.<claims>.<signature>`, base64url JSON claims signed with the
//! cluster's HMAC-SHA256 key. The cluster stores only a SHA-256 of each token (to check
//! it was issued and is not revoked), never the token itself.
//!
//! The claims carry the API CA certificate, so a zone control plane given only the
//! token and an address can verify the global control plane's TLS certificate.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::Digest as _;

pub use causeway_api::zone_token::{PREFIX, ZoneTokenClaims, peek};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(transparent)]
    Malformed(#[from] causeway_api::zone_token::MalformedToken),
    #[error(
        "the zone token's signature does not verify (issued by another cluster, or before the zone-token key was rotated, or altered); create a new one"
    )]
    BadSignature,
    #[error("the zone token expired at {0} (Unix seconds); create a new one")]
    Expired(i64),
}

fn sign(key: &[u8], payload: &str) -> ring::hmac::Tag {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, payload.as_bytes())
}

/// Signs `claims` with `key`.
pub fn create(key: &[u8], claims: &ZoneTokenClaims) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims encode"));
    let sig = B64.encode(sign(key, &payload).as_ref());
    format!("{PREFIX}.{payload}.{sig}")
}

/// Checks signature and expiry at `now` (Unix seconds) and returns the claims.
pub fn verify(key: &[u8], token: &str, now: i64) -> Result<ZoneTokenClaims, TokenError> {
    let token = token.trim();
    let claims = peek(token)?;
    let (rest, sig) = token
        .rsplit_once('.')
        .ok_or(causeway_api::zone_token::MalformedToken)?;
    let payload = rest
        .split_once('.')
        .ok_or(causeway_api::zone_token::MalformedToken)?
        .1;
    let sig = B64
        .decode(sig)
        .map_err(|_| causeway_api::zone_token::MalformedToken)?;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&k, payload.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;
    if now >= claims.exp {
        return Err(TokenError::Expired(claims.exp));
    }
    Ok(claims)
}

/// The key that signs zone tokens now, read from the store at each use: a rotation
/// (`causeway zone token rotate-key`) replaces it while the nodes run.
pub(crate) fn current_key(
    store: &crate::store::Store,
    sealer: &crate::sealing::Sealer,
) -> Result<Vec<u8>, String> {
    let sealed = store
        .secrets()
        .map_err(|e| e.to_string())?
        .ok_or("the cluster is not formed yet")?
        .zone_token_key_sealed;
    let key = sealer.open(&sealed).map_err(|e| e.to_string())?;
    hex::decode(key)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| "this cluster has no zone token key (formed by an older version)".into())
}

/// The hash the cluster keeps, hex SHA-256 of the trimmed token.
pub fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ZoneTokenClaims {
        ZoneTokenClaims {
            zone: "zone-a".into(),
            id: "abc".into(),
            iat: 100,
            exp: 200,
            ca: "-----BEGIN CERTIFICATE-----".into(),
        }
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = create(key, &claims());
        assert_eq!(verify(key, &t, 150), Ok(claims()));
        assert_eq!(verify(key, &format!(" {t}\n"), 150), Ok(claims()));
        assert_eq!(peek(&t).unwrap(), claims());
        assert_eq!(verify(key, &t, 200), Err(TokenError::Expired(200)));
        assert_eq!(
            verify(b"another key of the same length!!", &t, 150),
            Err(TokenError::BadSignature)
        );
        // A zone name changed in the claims breaks the signature.
        let mut forged = claims();
        forged.zone = "zone-b".into();
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let sig = t.rsplit_once('.').unwrap().1;
        assert_eq!(
            verify(key, &format!("cwz1.{forged_payload}.{sig}"), 150),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "cwz1", "cwz1.x.y", "jwt.a.b", "cwz1.a.b.c"] {
            assert!(verify(key, bad, 150).is_err(), "{bad:?}");
        }
        assert_eq!(hash(&t), hash(&format!("{t}\n")));
        assert_ne!(hash(&t), hash(&create(key, &forged)));
    }
}
