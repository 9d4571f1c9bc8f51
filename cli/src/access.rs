//! API access commands: `token create|list|rotate|revoke` (named API tokens with a role)
//! and `audit` (who changed what). Both need an admin token.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::ConnArgs;
use crate::zone::{field, print_token};

#[derive(clap::Subcommand)]
pub(crate) enum TokenCmd {
    /// Issue a named API token with a role; it is printed once (or written to --out) and
    /// the cluster keeps only its hash. Roles: admin (everything), mesh-editor (changes
    /// only what lives in its --mesh meshes; reads the rest), viewer (reads only).
    /// Examples: `token create --name ci --role mesh-editor --mesh payments`,
    /// `token create --name dashboards --role viewer --valid-for 720h`.
    Create {
        /// A label shown in `token list` and the audit log.
        #[arg(long)]
        name: String,
        /// admin, mesh-editor or viewer.
        #[arg(long)]
        role: String,
        /// A mesh a mesh-editor may change (repeat for several).
        #[arg(short = 'm', long = "mesh")]
        meshes: Vec<String>,
        /// How long the token works, e.g. 24h (default 2160h, 90 days).
        #[arg(long)]
        valid_for: Option<String>,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the API tokens (ids, names, roles, expiry; never the tokens). The tokens
    /// made when the cluster formed have the ids `admin` and `readonly`.
    List {
        /// Also the expired and revoked ones.
        #[arg(long)]
        all: bool,
    },
    /// Replace a token with a new one (same name, role and meshes) without downtime:
    /// the old one keeps working for --overlap, time to move clients to the new one.
    /// `token rotate admin --out new-admin-token` rotates the bootstrap admin token.
    Rotate {
        /// The id of the token to replace (see `token list`).
        id: String,
        /// How long the old token keeps working, e.g. 30m (default 1h, at most 720h).
        #[arg(long)]
        overlap: Option<String>,
        /// Write the new token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a token: it stops working at once, on every node. The last live admin
    /// token cannot be revoked.
    Revoke {
        /// The id of the token (see `token list`).
        id: String,
    },
}

pub(crate) async fn token(conn: &ConnArgs, c: TokenCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match c {
        TokenCmd::Create {
            name,
            role,
            meshes,
            valid_for,
            out,
        } => {
            let mut body = json!({ "name": name, "role": role, "meshes": meshes });
            if let Some(v) = valid_for {
                body["validFor"] = json!(v);
            }
            let (_, v) = client
                .request(Method::POST, "/api-tokens", Some(&body))
                .await?;
            eprintln!("issued API token {} ({role})", field(&v, "id"));
            print_token(&v, out, &format!("API token {name}"))
        }
        TokenCmd::List { all } => {
            let v = client.get(&format!("/api-tokens?all={all}")).await?;
            print_api_tokens(&v);
            Ok(())
        }
        TokenCmd::Rotate { id, overlap, out } => {
            let mut body = json!({});
            if let Some(o) = overlap {
                body["overlap"] = json!(o);
            }
            let (_, v) = client
                .request(
                    Method::POST,
                    &format!("/api-tokens/{id}/rotate"),
                    Some(&body),
                )
                .await?;
            eprintln!(
                "API token {id} is replaced by {}; {id} keeps working until {}",
                field(&v, "id"),
                field(&v, "replacedTokenExpiresAt")
            );
            print_token(&v, out, &format!("API token {}", field(&v, "name")))
        }
        TokenCmd::Revoke { id } => {
            client
                .request(Method::DELETE, &format!("/api-tokens/{id}"), None)
                .await?;
            eprintln!("revoked API token {id}");
            Ok(())
        }
    }
}

fn print_api_tokens(v: &Value) {
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "ROLE",
            "MESHES",
            "CREATED BY",
            "EXPIRES",
            "STATE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for t in v
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let meshes: Vec<&str> = t
            .get("meshes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let state = if t.get("revokedAt").is_some_and(|r| !r.is_null()) {
            "revoked"
        } else if t.get("live").and_then(Value::as_bool) == Some(true) {
            "live"
        } else {
            "expired"
        };
        let expires = t
            .get("expiresAt")
            .and_then(Value::as_str)
            .unwrap_or("never")
            .to_string();
        rows.push(vec![
            field(t, "id"),
            field(t, "name"),
            field(t, "role"),
            if meshes.is_empty() {
                "-".into()
            } else {
                meshes.join(",")
            },
            field(t, "createdBy"),
            expires,
            state.into(),
        ]);
    }
    crate::ops::print_table(&rows);
}

#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    /// How many entries, newest last (at most 10000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only the changes made with tokens of this name.
    #[arg(long)]
    actor: Option<String>,
}

/// `causeway audit`: who changed what through the API, newest last.
pub(crate) async fn audit(conn: &ConnArgs, a: AuditArgs) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    let mut path = format!("/audit?limit={}", a.limit);
    if let Some(actor) = &a.actor {
        path.push_str(&format!("&actor={actor}"));
    }
    let v = client.get(&path).await?;
    let mut rows = vec![
        ["TIME", "TOKEN", "ROLE", "ACTION", "TARGET", "OUTCOME"]
            .map(String::from)
            .to_vec(),
    ];
    for e in v
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push(vec![
            field(e, "at"),
            format!("{} ({})", field(e, "tokenName"), field(e, "tokenId")),
            field(e, "role"),
            field(e, "action"),
            field(e, "target"),
            field(e, "outcome"),
        ]);
    }
    crate::ops::print_table(&rows);
    Ok(())
}
