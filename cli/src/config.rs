//! The CLI's config file of named contexts (like kubectl's and kumactl's), and how the
//! connection settings are resolved: flags, then `CAUSEWAY_*` variables, then the context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::client::Connection;

/// `~/.config/causeway/config.yaml`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current_context: Option<String>,
    #[serde(default)]
    pub(crate) contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Context {
    /// API address(es), comma-separated: `https://127.0.0.1:7700,https://127.0.0.1:7710`.
    pub(crate) addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    /// PEM file of the CA that signed the API certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
}

pub(crate) fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("causeway").join("config.yaml")
}

impl ConfigFile {
    pub(crate) fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                serde_yaml::from_str(&s).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves with mode 0600: contexts hold tokens.
    pub(crate) fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(serde_yaml::to_string(self)?.as_bytes())?;
        Ok(())
    }
}

/// Connection flags shared by every operator command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnArgs {
    /// API address(es) of the global control plane, comma-separated.
    #[arg(long, env = "CAUSEWAY_ADDR", global = true)]
    pub(crate) addr: Option<String>,
    /// API token (admin or read-only).
    #[arg(long, env = "CAUSEWAY_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the API token (for example <data-dir>/admin-token).
    #[arg(long, global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the API certificate (a node writes <data-dir>/api-ca.pem).
    #[arg(long, env = "CAUSEWAY_CA_FILE", global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Context of the config file to use instead of the current one.
    #[arg(long, global = true)]
    pub(crate) context: Option<String>,
    /// The CLI config file.
    #[arg(long = "cli-config", env = "CAUSEWAY_CONFIG", global = true)]
    pub(crate) cli_config: Option<PathBuf>,
}

impl ConnArgs {
    pub(crate) fn config_path(&self) -> PathBuf {
        self.cli_config.clone().unwrap_or_else(default_path)
    }

    /// Flags and environment win over the context, field by field.
    pub(crate) fn resolve(&self) -> anyhow::Result<Connection> {
        let file = ConfigFile::load(&self.config_path())?;
        let ctx_name = self.context.clone().or(file.current_context.clone());
        let ctx = match &ctx_name {
            Some(n) => Some(file.contexts.get(n).cloned().with_context(|| {
                format!("context {n:?} is not in {}", self.config_path().display())
            })?),
            None => None,
        };
        let addr = self
            .addr
            .clone()
            .or(ctx.as_ref().map(|c| c.addr.clone()))
            .unwrap_or_default();
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(read_trimmed(f)?),
            (None, None) => ctx.as_ref().and_then(|c| c.token.clone()),
        };
        let ca_file = self
            .ca_file
            .clone()
            .or(ctx.as_ref().and_then(|c| c.ca_file.clone()));
        let ca_pem = match ca_file {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the CA file {}", f.display()))?,
            ),
            None => None,
        };
        Ok(Connection {
            addrs: addr
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(normalize_addr)
                .collect(),
            token,
            ca_pem,
        })
    }
}

/// `127.0.0.1:7700` means `https://127.0.0.1:7700`: TLS is the default.
fn normalize_addr(a: &str) -> String {
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("https://{a}")
    }
}

pub(crate) fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}
