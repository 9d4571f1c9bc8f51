//! A small client of the global policy API: TLS trusting the cluster's CA, the bearer
//! token, failover across several addresses, retries while the cluster elects a leader.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where and how to reach the API.
#[derive(Clone)]
pub struct Connection {
    /// One or more base URLs (`https://127.0.0.1:7700`); the next is tried when one is down.
    pub addrs: Vec<String>,
    pub token: String,
    pub ca_pem: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    addrs: Vec<String>,
    token: String,
    http: reqwest::Client,
}

/// A failed call: what the API said (status and body), or why it could not be reached.
#[derive(Debug)]
pub enum CallError {
    Api { status: StatusCode, body: Value },
    Unreachable(String),
}

impl CallError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Api { status, .. } => Some(*status),
            CallError::Unreachable(_) => None,
        }
    }

    /// The API's message, or the transport error.
    pub fn message(&self) -> String {
        match self {
            CallError::Api { status, body } => body
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}: {body}")),
            CallError::Unreachable(e) => e.clone(),
        }
    }

    /// The API's field errors: `(field, reason)`.
    pub fn field_errors(&self) -> Vec<(String, String)> {
        let CallError::Api { body, .. } = self else {
            return vec![];
        };
        body.get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.get("field")?.as_str()?.to_owned(),
                    e.get("reason")?.as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl Client {
    pub fn new(conn: Connection) -> Result<Client, String> {
        if conn.addrs.is_empty() {
            return Err(
                "no API address: set `address` in the provider block or CAUSEWAY_ADDR".into(),
            );
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(20));
        if conn.addrs.iter().any(|a| a.starts_with("https://")) {
            let ca = conn.ca_pem.as_deref().ok_or(
                "the API uses TLS but no CA certificate is configured: set `ca_cert_file` (or `ca_cert`) in the provider block, or CAUSEWAY_CA_CERT",
            )?;
            let tls = causeway_pki::client_config(ca, None)
                .map_err(|e| format!("loading the CA certificate: {e}"))?;
            b = b.use_preconfigured_tls(tls);
        }
        Ok(Client {
            addrs: conn.addrs,
            token: conn.token,
            http: b
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))?,
        })
    }

    /// Sends a request, trying each address and retrying (with backoff, for at most 20 s)
    /// while no node answers or the cluster has no leader. Returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Value), CallError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut backoff = Duration::from_millis(100);
        let mut idx = 0;
        loop {
            let base = self.addrs[idx % self.addrs.len()].trim_end_matches('/');
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(v) = if_match {
                req = req.header(reqwest::header::IF_MATCH, v.to_string());
            }
            let err = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let value = if text.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    };
                    if status.is_success() {
                        return Ok((status, value));
                    }
                    let e = CallError::Api {
                        status,
                        body: value,
                    };
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        return Err(e);
                    }
                    e
                }
                Err(e) => {
                    idx += 1; // try the next node
                    CallError::Unreachable(format!("cannot reach {base}: {e}"))
                }
            };
            if Instant::now() + backoff >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// GET; `Ok(None)` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, CallError> {
        match self.call(Method::GET, path, None, None).await {
            Ok((_, v)) => Ok(Some(v)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
