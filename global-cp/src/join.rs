//! Joining a cluster with a join token, as kubeadm and Consul do. `causeway cluster
//! add-node` adds the member and returns a token that is single use and short-lived
//! (15 minutes unless asked otherwise); the cluster keeps only its hash.
//!
//! The node that joins generates its Raft key itself and sends only a CSR. The cluster
//! marks the token used through Raft (two nodes racing with one token cannot both get
//! in), signs the CSR with the cluster's Raft CA for the node id the token was issued to
//! (whatever the CSR asks for), and answers with the Raft CA, the certificate, the
//! current members and the seal key. The token carries the API CA, so the exchange is
//! verified TLS from its first byte, and nothing has to be copied between machines by
//! hand.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::command::Member;

/// Token format marker: `cwj1.<claims>`.
pub const PREFIX: &str = "cwj1";

/// How long a join token is valid unless the operator asks otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest validity a join token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The path the cluster serves joins on (no API token: the join token authenticates).
pub const JOIN_PATH: &str = "/cluster/join";

/// What a join token says. The secret makes it unguessable; the cluster finds it by the
/// hash of the whole token, so an altered token is an unknown one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The node id the token was issued for.
    pub node: u64,
    /// API addresses (`host:port`) of the members when it was issued.
    pub api: Vec<String>,
    /// PEM of the CA that signs the members' API certificates.
    pub ca: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// 32 random bytes, hex.
    pub secret: String,
}

/// The text is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a join token (expected cwj1.<claims>, as `causeway cluster add-node` prints it)")]
pub struct MalformedToken;

/// A new token for `node`, valid until `exp`.
pub fn create(node: u64, api: Vec<String>, ca: String, exp: i64) -> String {
    let claims = JoinClaims {
        node,
        api,
        ca,
        exp,
        secret: hex::encode(rand::random::<[u8; 32]>()),
    };
    let payload = B64.encode(serde_json::to_vec(&claims).expect("claims encode"));
    format!("{PREFIX}.{payload}")
}

/// Reads a token's claims.
pub fn parse(token: &str) -> Result<JoinClaims, MalformedToken> {
    let payload = token
        .trim()
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(MalformedToken)?;
    let bytes = B64.decode(payload).map_err(|_| MalformedToken)?;
    serde_json::from_slice(&bytes).map_err(|_| MalformedToken)
}

/// The hash the cluster keeps: hex SHA-256 of the trimmed token.
pub fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

/// What a joining node sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub csr_pem: String,
}

/// What the cluster answers.
#[derive(Serialize, Deserialize)]
pub struct JoinResponse {
    pub node: u64,
    pub raft_ca_pem: String,
    pub cert_pem: String,
    /// The seal key file's contents: every node of a cluster needs the same key.
    pub seal_key: String,
    pub members: Vec<Member>,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinResponse { .. }")
    }
}

/// The Raft identity a join produced: the response and the key generated here.
pub struct Joined {
    pub response: JoinResponse,
    pub key_pem: String,
}

/// Joins as node `node_id` with `token`: tries each API address the token names until
/// one answers, for up to a minute (the cluster may be electing a leader). A refusal
/// (unknown, used or expired token) ends it at once.
pub async fn join(token: &str, node_id: u64) -> anyhow::Result<Joined> {
    let claims = parse(token)?;
    anyhow::ensure!(
        claims.node == node_id,
        "the join token was issued for node {}, not {node_id}: start with --node-id {}",
        claims.node,
        claims.node
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    anyhow::ensure!(
        now < claims.exp,
        "the join token expired at {} (Unix seconds); issue a new one with `causeway cluster join-token --id {node_id}`",
        claims.exp
    );
    anyhow::ensure!(
        !claims.api.is_empty(),
        "the join token names no API address"
    );
    let csr = causeway_pki::generate_csr(&format!("causeway raft node {node_id}"))?;
    let tls = causeway_pki::client_config(&claims.ca, None).context("the join token's CA")?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // Longer than the cluster may take to burn the token and add the member.
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = JoinRequest {
        token: token.trim().to_string(),
        csr_pem: csr.csr_pem,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last_error = String::new();
    loop {
        for addr in &claims.api {
            let url = format!("https://{addr}{JOIN_PATH}");
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    let response: JoinResponse = r
                        .json()
                        .await
                        .with_context(|| format!("reading the answer of {url}"))?;
                    return Ok(Joined {
                        response,
                        key_pem: csr.key_pem,
                    });
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    anyhow::bail!(
                        "joining through {addr} was refused ({status}): {}",
                        v["message"].as_str().unwrap_or("no reason given")
                    );
                }
                Ok(r) => last_error = format!("{addr}: {}", r.status()),
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no member named by the join token answered the join: {last_error}");
        }
        tracing::info!(error = %last_error, "joining the cluster; will retry");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_any_change_makes_another_hash() {
        let t = create(4, vec!["127.0.0.1:1".into()], "CA".into(), 99);
        let c = parse(&t).unwrap();
        assert_eq!((c.node, c.exp, c.ca.as_str()), (4, 99, "CA"));
        assert_eq!(c.secret.len(), 64);
        assert_ne!(t, create(4, vec!["127.0.0.1:1".into()], "CA".into(), 99));
        assert_eq!(hash(&format!(" {t}\n")), hash(&t));
        let mut altered = t.clone();
        altered.pop();
        assert_ne!(hash(&altered), hash(&t));
        for bad in ["", "cwj1", "cwj1.!!", "cwz1.e30.sig", "cwj1.e30"] {
            assert_eq!(parse(bad), Err(MalformedToken), "{bad}");
        }
    }
}
