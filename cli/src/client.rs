//! A small client of the global policy API: TLS trusting the cluster's CA, bearer token,
//! failover across several addresses, and retries while the cluster elects a leader.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where and how to reach the API; see `config.rs` for how it is resolved.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// One or more base URLs (`https://127.0.0.1:7700`); the next is tried when one is down.
    pub(crate) addrs: Vec<String>,
    pub(crate) token: Option<String>,
    pub(crate) ca_pem: Option<String>,
}

pub(crate) struct Client {
    conn: Connection,
    http: reqwest::Client,
    /// Give up retrying after this long (leader elections take about a second).
    retry_for: Duration,
}

/// An error the API returned, printed as one line.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self
            .body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("");
        let errors = self
            .body
            .get("errors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let fields: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                let field = e.get("field")?.as_str()?;
                let reason = e.get("reason")?.as_str()?;
                (!field.is_empty()).then(|| format!("{field}: {reason}"))
            })
            .collect();
        if !fields.is_empty() && errors.len() > 1 {
            write!(
                f,
                "{} ({}): {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or(""),
                fields.join("; ")
            )
        } else if !msg.is_empty() {
            let field = fields
                .first()
                .map(|f| f.split(':').next().unwrap_or(""))
                .filter(|f| !f.is_empty());
            match field {
                Some(field) => write!(
                    f,
                    "{} {}: {field}: {msg}",
                    self.status.as_u16(),
                    self.status.canonical_reason().unwrap_or("")
                ),
                None => write!(
                    f,
                    "{} {}: {msg}",
                    self.status.as_u16(),
                    self.status.canonical_reason().unwrap_or("")
                ),
            }
        } else {
            write!(
                f,
                "{} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
        }
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub(crate) fn new(conn: Connection) -> anyhow::Result<Client> {
        if conn.addrs.is_empty() {
            bail!(
                "no API address: pass --addr, set CAUSEWAY_ADDR, or add a context with `causeway config add-context`"
            );
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15));
        if conn.addrs.iter().any(|a| a.starts_with("https://")) {
            let ca = conn.ca_pem.as_deref().context(
                "the API uses TLS but no CA certificate is configured: pass --ca-file (a node writes it to <data-dir>/api-ca.pem)",
            )?;
            let tls = causeway_global_cp::tls::client_config(ca, None)
                .context("loading the CA certificate")?;
            b = b.use_preconfigured_tls(tls);
        }
        Ok(Client {
            conn,
            http: b.build().context("building the HTTP client")?,
            retry_for: Duration::from_secs(10),
        })
    }

    /// The same client trusting `bundle_pem` besides its CA: during an API CA rotation
    /// the status (read over a connection the current CA verified) names the new one.
    pub(crate) fn trusting(&self, bundle_pem: &str) -> anyhow::Result<Client> {
        let mut conn = self.conn.clone();
        conn.ca_pem = Some(format!(
            "{}\n{bundle_pem}",
            conn.ca_pem.as_deref().unwrap_or("").trim_end()
        ));
        let mut c = Client::new(conn)?;
        c.retry_for = self.retry_for;
        Ok(c)
    }

    /// Sends a request, trying each address and retrying while no leader is elected.
    /// Returns the status and the JSON body (Null when empty).
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(100);
        let mut idx = 0;
        loop {
            let base = self.conn.addrs[idx % self.conn.addrs.len()].trim_end_matches('/');
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = &self.conn.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let retryable = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let value: Value = if text.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    };
                    if status.is_success() {
                        return Ok((status, value));
                    }
                    let err = ApiError {
                        status,
                        body: value,
                    };
                    if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= deadline {
                        return Err(err.into());
                    }
                    anyhow::Error::from(err)
                }
                Err(e) => {
                    let e = anyhow::Error::from(e).context(format!("cannot reach {base}"));
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    idx += 1; // try the next node
                    e
                }
            };
            tracing::debug!(error = %retryable, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.request(Method::GET, path, None).await?.1)
    }
}
