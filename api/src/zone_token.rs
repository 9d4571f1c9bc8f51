//! The public part of zone tokens: their claims, readable without the signing key. A
//! zone control plane reads them to learn its zone and the CA to trust; only the global
//! control plane, which holds the key, can verify the signature.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// Token format marker: `cwz1.<claims>.<signature>`.
pub const PREFIX: &str = "cwz1";

/// What a zone token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneTokenClaims {
    pub zone: String,
    /// Random id; names the token in listings and revocations.
    pub id: String,
    pub iat: i64,
    pub exp: i64,
    /// PEM of the CA that signs the global control plane's API and KDS certificates.
    pub ca: String,
}

/// The text is not a zone token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a zone token (expected cwz1.<claims>.<signature>)")]
pub struct MalformedToken;

/// Reads the claims without checking the signature: what a zone control plane does (it
/// does not hold the key) to learn the CA and its zone name.
pub fn peek(token: &str) -> Result<ZoneTokenClaims, MalformedToken> {
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MalformedToken);
    };
    let bytes = B64.decode(payload).map_err(|_| MalformedToken)?;
    serde_json::from_slice(&bytes).map_err(|_| MalformedToken)
}
