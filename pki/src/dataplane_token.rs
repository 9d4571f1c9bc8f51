//! Dataplane and ingress tokens: `cwd1.<claims>.<signature>` and `cwi1.<claims>.<signature>`,
//! base64url JSON claims signed with the cluster's Ed25519 key. A dataplane token is bound
//! to one mesh and one service: a zone control plane signs a workload certificate only for
//! the service its token names. An ingress token is bound to one zone and grants no
//! certificate at all: an ingress forwards TLS it cannot read. Zones hold the public key
//! only (sent over KDS), so a zone can verify tokens but never mint one for another
//! zone.
//!
//! A token is a bootstrap credential with a lifetime of days. A proxy connected to its
//! zone gets it renewed ([`renewed`]): the zone signs the same claims (same id, so a
//! revocation still reaches them) with its own Ed25519 key, valid for
//! [`RENEWED_TOKEN_TTL_SECS`], again every [`RENEW_TOKEN_EVERY_SECS`] while the proxy
//! stays connected. Only that zone accepts them ([`verify_with_any`] with global's key
//! and its own).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const PREFIX: &str = "cwd1";
const INGRESS_PREFIX: &str = "cwi1";

/// What a dataplane token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneTokenClaims {
    pub mesh: String,
    pub service: String,
    /// Random id, for listing and revoking.
    pub id: String,
    pub iat: i64,
    pub exp: i64,
}

/// What an ingress token grants: registering a ZoneIngress in one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressTokenClaims {
    pub zone: String,
    /// Random id, for logs.
    pub id: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneTokenError {
    #[error("not a {0} token (expected {1}.<claims>.<signature>)")]
    Malformed(&'static str, &'static str),
    #[error("the token's signature does not verify (issued by another cluster, or altered)")]
    BadSignature,
    #[error("the token expired at {0} (Unix seconds); create a new one")]
    Expired(i64),
    #[error("the signing key is unusable: {0}")]
    Key(String),
}

/// A new Ed25519 signing key (PKCS#8 DER, hex) for the cluster.
pub fn generate_key() -> Result<String, DataplaneTokenError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| DataplaneTokenError::Key("generating an Ed25519 key".into()))?;
    Ok(hex::encode(pkcs8.as_ref()))
}

fn key_pair(key_hex: &str) -> Result<Ed25519KeyPair, DataplaneTokenError> {
    let der = hex::decode(key_hex).map_err(|e| DataplaneTokenError::Key(e.to_string()))?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| DataplaneTokenError::Key(e.to_string()))
}

/// The public half of a signing key, hex: what zones verify with.
pub fn public_key(key_hex: &str) -> Result<String, DataplaneTokenError> {
    Ok(hex::encode(key_pair(key_hex)?.public_key().as_ref()))
}

/// Signs dataplane `claims` with the cluster key.
pub fn create(key_hex: &str, claims: &DataplaneTokenClaims) -> Result<String, DataplaneTokenError> {
    sign(PREFIX, key_hex, claims)
}

/// Checks a dataplane token against the public key (hex) at `now` (Unix seconds).
pub fn verify(
    public_key_hex: &str,
    token: &str,
    now: i64,
) -> Result<DataplaneTokenClaims, DataplaneTokenError> {
    let claims: DataplaneTokenClaims = check(("dataplane", PREFIX), public_key_hex, token)?;
    not_expired(claims.exp, now)?;
    Ok(claims)
}

/// Signs ingress `claims` with the cluster key.
pub fn create_ingress(
    key_hex: &str,
    claims: &IngressTokenClaims,
) -> Result<String, DataplaneTokenError> {
    sign(INGRESS_PREFIX, key_hex, claims)
}

/// Checks an ingress token against the public key (hex) at `now` (Unix seconds).
pub fn verify_ingress(
    public_key_hex: &str,
    token: &str,
    now: i64,
) -> Result<IngressTokenClaims, DataplaneTokenError> {
    let claims: IngressTokenClaims = check(("ingress", INGRESS_PREFIX), public_key_hex, token)?;
    not_expired(claims.exp, now)?;
    Ok(claims)
}

/// How long a token a zone renewed lasts: a proxy that has not reached its zone for this
/// long needs a new token from global.
pub const RENEWED_TOKEN_TTL_SECS: i64 = 7 * 24 * 3600;
/// How often a zone renews the token of a proxy connected to it.
pub const RENEW_TOKEN_EVERY_SECS: i64 = 24 * 3600;

/// How long past its revocation a revoked token is still refused by name, when that is
/// later than its own expiry: renewals made before the revocation reached a zone live
/// up to [`RENEWED_TOKEN_TTL_SECS`]; the rest is for zones cut off from global.
pub const REVOCATION_HORIZON_SECS: i64 = 4 * RENEWED_TOKEN_TTL_SECS;

/// Until when zones must refuse a token that expires at `exp` and was revoked at
/// `revoked_unix`.
pub fn refused_until(exp: i64, revoked_unix: i64) -> i64 {
    exp.max(revoked_unix + REVOCATION_HORIZON_SECS)
}

/// Claims a zone can renew: dataplane and ingress tokens'.
pub trait Renewable: Clone {
    /// The token's id, which its revocation names.
    fn id(&self) -> &str;
    /// When it expires, Unix seconds.
    fn exp(&self) -> i64;
    fn set_times(&mut self, iat: i64, exp: i64);
}

/// Both kinds of claims carry `id`, `iat` and `exp`.
macro_rules! renewable {
    ($claims:ty) => {
        impl Renewable for $claims {
            fn id(&self) -> &str {
                &self.id
            }
            fn exp(&self) -> i64 {
                self.exp
            }
            fn set_times(&mut self, iat: i64, exp: i64) {
                (self.iat, self.exp) = (iat, exp);
            }
        }
    };
}
renewable!(DataplaneTokenClaims);
renewable!(IngressTokenClaims);

/// `claims` renewed at `now`: the same grant, issued now, for
/// [`RENEWED_TOKEN_TTL_SECS`].
pub fn renewed<T: Renewable>(claims: &T, now: i64) -> T {
    let mut c = claims.clone();
    c.set_times(now, now + RENEWED_TOKEN_TTL_SECS);
    c
}

/// Checks a token with `verify` against each of `public_keys` in turn (global's, then a
/// zone's renewal key): the first key whose signature matches decides.
pub fn verify_with_any<T>(
    verify: impl Fn(&str, &str, i64) -> Result<T, DataplaneTokenError>,
    public_keys: &[&str],
    token: &str,
    now: i64,
) -> Result<T, DataplaneTokenError> {
    for key in public_keys {
        match verify(key, token, now) {
            Err(DataplaneTokenError::BadSignature) => continue,
            decided => return decided,
        }
    }
    Err(DataplaneTokenError::BadSignature)
}

fn sign<T: Serialize>(
    prefix: &str,
    key_hex: &str,
    claims: &T,
) -> Result<String, DataplaneTokenError> {
    let kp = key_pair(key_hex)?;
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims encode"));
    let signed = format!("{prefix}.{payload}");
    let sig = B64.encode(kp.sign(signed.as_bytes()).as_ref());
    Ok(format!("{signed}.{sig}"))
}

/// Verifies the signature (over prefix and claims, so one kind of token never passes as
/// the other), then decodes.
fn check<T: DeserializeOwned>(
    (kind, prefix): (&'static str, &'static str),
    public_key_hex: &str,
    token: &str,
) -> Result<T, DataplaneTokenError> {
    let malformed = DataplaneTokenError::Malformed(kind, prefix);
    let mut parts = token.trim().split('.');
    let (Some(p), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed);
    };
    if p != prefix {
        return Err(malformed);
    }
    let sig = B64.decode(sig).map_err(|_| malformed.clone())?;
    let pk = hex::decode(public_key_hex).map_err(|e| DataplaneTokenError::Key(e.to_string()))?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(format!("{prefix}.{payload}").as_bytes(), &sig)
        .map_err(|_| DataplaneTokenError::BadSignature)?;
    B64.decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(malformed)
}

fn not_expired(exp: i64, now: i64) -> Result<(), DataplaneTokenError> {
    if now >= exp {
        return Err(DataplaneTokenError::Expired(exp));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_mesh_and_service_and_unforgeable() {
        let key = generate_key().unwrap();
        let public = public_key(&key).unwrap();
        let claims = DataplaneTokenClaims {
            mesh: "default".into(),
            service: "backend".into(),
            id: "1".into(),
            iat: 10,
            exp: 100,
        };
        let t = create(&key, &claims).unwrap();
        assert_eq!(verify(&public, &t, 50), Ok(claims.clone()));
        assert_eq!(
            verify(&public, &t, 100),
            Err(DataplaneTokenError::Expired(100))
        );
        // Another cluster's key does not verify it.
        let other = public_key(&generate_key().unwrap()).unwrap();
        assert_eq!(
            verify(&other, &t, 50),
            Err(DataplaneTokenError::BadSignature)
        );
        // Changing the service in the claims breaks the signature.
        let mut forged = claims;
        forged.service = "db".into();
        let payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let sig = t.rsplit_once('.').unwrap().1;
        assert_eq!(
            verify(&public, &format!("cwd1.{payload}.{sig}"), 50),
            Err(DataplaneTokenError::BadSignature)
        );
        for bad in ["", "cwd1.a", "cwz1.a.b", "cwd1.a.b.c"] {
            assert!(verify(&public, bad, 50).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_zone_renews_a_token_that_only_it_accepts_with_the_same_grant() {
        let global = generate_key().unwrap();
        let zone = generate_key().unwrap();
        let other_zone = generate_key().unwrap();
        let claims = DataplaneTokenClaims {
            mesh: "default".into(),
            service: "backend".into(),
            id: "t1".into(),
            iat: 10,
            exp: 100,
        };
        let original = create(&global, &claims).unwrap();
        let now = 1_000;
        let renewed_claims = renewed(&claims, now);
        assert_eq!(
            (renewed_claims.iat, renewed_claims.exp),
            (now, now + RENEWED_TOKEN_TTL_SECS)
        );
        let renewal = create(&zone, &renewed_claims).unwrap();
        let keys = [public_key(&global).unwrap(), public_key(&zone).unwrap()];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // The original has expired; the renewal carries the same grant and id.
        assert_eq!(
            verify_with_any(verify, &keys, &original, now),
            Err(DataplaneTokenError::Expired(100))
        );
        let got = verify_with_any(verify, &keys, &renewal, now).unwrap();
        assert_eq!((got.id.as_str(), got.service.as_str()), ("t1", "backend"));
        // Another zone does not take it.
        let elsewhere = [
            public_key(&global).unwrap(),
            public_key(&other_zone).unwrap(),
        ];
        let elsewhere: Vec<&str> = elsewhere.iter().map(String::as_str).collect();
        assert_eq!(
            verify_with_any(verify, &elsewhere, &renewal, now),
            Err(DataplaneTokenError::BadSignature)
        );
        // And it expires in its turn.
        assert_eq!(
            verify_with_any(verify, &keys, &renewal, now + RENEWED_TOKEN_TTL_SECS),
            Err(DataplaneTokenError::Expired(now + RENEWED_TOKEN_TTL_SECS))
        );
    }

    #[test]
    fn ingress_tokens_are_bound_to_a_zone_and_never_pass_as_dataplane_tokens() {
        let key = generate_key().unwrap();
        let public = public_key(&key).unwrap();
        let claims = IngressTokenClaims {
            zone: "zone-b".into(),
            id: "1".into(),
            iat: 10,
            exp: 100,
        };
        let t = create_ingress(&key, &claims).unwrap();
        assert!(t.starts_with("cwi1."));
        assert_eq!(verify_ingress(&public, &t, 50), Ok(claims));
        assert_eq!(
            verify_ingress(&public, &t, 100),
            Err(DataplaneTokenError::Expired(100))
        );
        // Same key, other kind: refused both ways, even with the prefix swapped.
        assert!(matches!(
            verify(&public, &t, 50),
            Err(DataplaneTokenError::Malformed(..))
        ));
        let swapped = t.replacen("cwi1", "cwd1", 1);
        assert_eq!(
            verify(&public, &swapped, 50),
            Err(DataplaneTokenError::BadSignature)
        );
        let dp = create(
            &key,
            &DataplaneTokenClaims {
                mesh: "m".into(),
                service: "s".into(),
                id: "2".into(),
                iat: 10,
                exp: 100,
            },
        )
        .unwrap();
        assert!(verify_ingress(&public, &dp, 50).is_err());
    }
}
