//! `causeway ca status|rotate`: a mesh's root CA and its rotation without a failed
//! request. `rotate` takes each step (stage a new root, activate it, finish by dropping
//! the old one) once every zone and its sidecars follow the step before, and shows
//! what it waits for meanwhile; `--step` takes one step only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::ConnArgs;

/// `causeway ca`: a mesh's root CA.
#[derive(clap::Subcommand)]
pub(crate) enum CaCmd {
    /// The mesh's roots (signing, staged, previous), where a rotation stands, and each
    /// zone's progress: the roots it trusts, the root of its intermediate CA, and how
    /// many of its sidecars trust every root and hold a certificate from its current
    /// intermediate.
    Status {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// Rotate the mesh's root CA without a failed request: stage a new root (trusted
    /// everywhere, not signing yet), activate it once every sidecar trusts it (zones
    /// get intermediate CAs from it and their sidecars renew), and finish once every
    /// sidecar holds a certificate from it (the old root is dropped). Each step waits
    /// for every zone; an offline zone holds the rotation up. Carries on from where a
    /// rotation stands (a provided CA is staged by giving the Mesh the new one).
    /// `--force` takes the step(s) without waiting for the zones (sidecars that do not
    /// follow yet fail their calls to those that do).
    Rotate {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        rotate: RotateArgs,
    },
}

/// How a rotation is taken from the CLI (the mesh root CA's, the zone CA's, the Raft
/// CA's).
#[derive(clap::Args)]
pub(crate) struct RotateArgs {
    /// Take this step only (the status names the next one).
    #[arg(long)]
    step: Option<String>,
    /// Take the step(s) without waiting for what the status says they wait for.
    #[arg(long)]
    force: bool,
    /// Give up waiting after this long, e.g. 10m.
    #[arg(long, default_value = "10m")]
    timeout: String,
}

pub(crate) async fn ca(conn: &ConnArgs, c: CaCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match c {
        CaCmd::Status { mesh } => {
            let s = client.get(&format!("/meshes/{mesh}/ca")).await?;
            print!("{}", render(&s));
            Ok(())
        }
        CaCmd::Rotate { mesh, rotate } => {
            Rotation {
                status_path: format!("/meshes/{mesh}/ca"),
                subject: format!("mesh {mesh}'s root CA"),
                render,
                retrust: false,
            }
            .run(&client, &rotate)
            .await
        }
    }
}

/// A rotation taken step by step through the API: the status names the next step and
/// whether the zones are ready for it (`next.step`, `next.ready`, `next.waiting`) and
/// the phase (`steady` once done). The mesh root CA's and the zone CA's work this way.
pub(crate) struct Rotation {
    /// Where the status is; steps are posted to `{status_path}/rotate`.
    pub status_path: String,
    /// What rotates, for messages ("mesh default's root CA").
    pub subject: String,
    pub render: fn(&Value) -> String,
    /// Trust the CAs the status names (`bundlePem`) for the next calls: the API CA's
    /// own rotation changes the certificates this client talks to.
    pub retrust: bool,
}

impl Rotation {
    /// Takes each step (or `--step` that one) once what it waits for is ready (or at
    /// once with `--force`), saying what it waits for meanwhile.
    pub(crate) async fn run(&self, base: &Client, args: &RotateArgs) -> anyhow::Result<()> {
        let timeout = args
            .timeout
            .parse::<causeway_api::Duration>()
            .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?
            .as_std();
        let (only, force) = (args.step.as_deref(), args.force);
        let mut retrusted: Option<(String, Client)> = None;
        let deadline = Instant::now() + timeout;
        let mut taken = 0;
        let mut said = String::new();
        loop {
            let s = retrusted
                .as_ref()
                .map_or(base, |(_, c)| c)
                .get(&self.status_path)
                .await?;
            if self.retrust
                && let Some(bundle) = s["bundlePem"].as_str()
                && retrusted.as_ref().is_none_or(|(b, _)| b != bundle)
            {
                retrusted = Some((bundle.to_string(), base.trusting(bundle)?));
            }
            let client = retrusted.as_ref().map_or(base, |(_, c)| c);
            let step = s["next"]["step"].as_str().unwrap_or("stage").to_string();
            // The whole rotation ends when there is one CA again.
            if only.is_none() && taken > 0 && s["phase"] == "steady" {
                eprintln!("rotation of {} finished", self.subject);
                print!("{}", (self.render)(&s));
                return Ok(());
            }
            if let Some(o) = only
                && o != step
            {
                anyhow::bail!(
                    "the rotation is {}: its next step is {step}, not {o}",
                    s["phase"].as_str().unwrap_or("?")
                );
            }
            if s["next"]["ready"] == true || force {
                client
                    .request(
                        Method::POST,
                        &format!("{}/rotate", self.status_path),
                        Some(&json!({"step": step, "force": force})),
                    )
                    .await?;
                taken += 1;
                eprintln!("{step}: done");
                said.clear();
                if only.is_some() {
                    return Ok(());
                }
                continue;
            }
            let waiting = waiting(&s);
            let now = format!("{step}: waiting for {}", waiting.join("; "));
            if now != said {
                eprintln!("{now}");
                said = now;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "gave up after {timeout:?} before {step}: {}; run it again to carry on, or --force",
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `bundle --out FILE` of the API CA's and a zone API CA's statuses: writes the CAs the
/// status at `status_path` says clients should trust (`bundlePem`) to `out`.
pub(crate) async fn write_bundle(
    client: &Client,
    status_path: &str,
    out: &std::path::Path,
    what: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let s = client.get(status_path).await?;
    let bundle = s["bundlePem"]
        .as_str()
        .context("the status names no CA bundle")?;
    causeway_global_cp::tls::write_private(out, bundle)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} {what}(s) to {}",
        s["cas"].as_array().map_or(0, Vec::len),
        out.display()
    );
    Ok(())
}

/// The first 12 hex digits of a SHA-256, for people.
pub(crate) fn short_sha(v: &Value) -> String {
    v.as_str().unwrap_or("").chars().take(12).collect()
}

/// What a rotation's next step waits for (`next.waiting`).
pub(crate) fn waiting(s: &Value) -> Vec<&str> {
    s["next"]["waiting"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `  LABEL SHA ROLE until NOT-AFTER`: one CA of a status.
pub(crate) fn ca_line(label: &str, ca: &Value) -> String {
    format!(
        "  {label} {} {:<8} until {}\n",
        short_sha(&ca["sha256"]),
        ca["role"].as_str().unwrap_or(""),
        ca["notAfter"].as_str().unwrap_or("?")
    )
}

/// `TITLE: PHASE` and a line per CA of a control-plane CA's status (the zone, Raft and
/// API CAs').
pub(crate) fn cas_header(title: &str, s: &Value) -> String {
    let mut out = format!("{title}: {}\n", s["phase"].as_str().unwrap_or("?"));
    for ca in s["cas"].as_array().into_iter().flatten() {
        out += &ca_line("CA", ca);
    }
    out
}

/// `  next: STEP (ready | what it waits for)`.
pub(crate) fn next_line(s: &Value) -> String {
    let waiting = waiting(s);
    format!(
        "  next: {} ({})\n",
        s["next"]["step"].as_str().unwrap_or("?"),
        if s["next"]["ready"] == true {
            "ready".to_string()
        } else {
            waiting.join("; ")
        }
    )
}

/// The status for people.
fn render(s: &Value) -> String {
    let mut out = format!(
        "mesh {}: {}\n",
        s["mesh"].as_str().unwrap_or("?"),
        s["phase"].as_str().unwrap_or("?")
    );
    for r in s["roots"].as_array().into_iter().flatten() {
        out += &ca_line("root", r);
    }
    for z in s["zones"].as_array().into_iter().flatten() {
        out += &format!(
            "  zone {:<12} {:<7} trusts {} root(s), intermediate from {}, sidecars {} trusting all / {} current of {}\n",
            z["zone"].as_str().unwrap_or(""),
            if z["online"] == true {
                "online"
            } else {
                "offline"
            },
            z["trusted"].as_array().map_or(0, Vec::len),
            short_sha(&z["intermediateRoot"]),
            z["proxiesTrusting"],
            z["proxiesCurrent"],
            z["proxies"],
        );
    }
    out += &next_line(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reads_as_roots_zones_and_what_comes_next() {
        let s = json!({"mesh": "default", "phase": "staged",
            "roots": [{"sha256": "aaaaaaaaaaaaaaaa", "role": "signing", "notAfter": "2036-01-01T00:00:00Z"},
                      {"sha256": "bbbbbbbbbbbbbbbb", "role": "staged", "notAfter": "2036-06-01T00:00:00Z"}],
            "zones": [{"zone": "zone-a", "online": true, "trusted": ["a", "b"], "intermediateRoot": "aaaaaaaaaaaaaaaa",
                       "proxies": 3, "proxiesTrusting": 2, "proxiesCurrent": 3}],
            "next": {"step": "activate", "ready": false, "waiting": ["zone zone-a: 2 of 3 sidecars trust the staged root"]}});
        let text = render(&s);
        assert!(text.starts_with("mesh default: staged\n"), "{text}");
        assert!(text.contains("root bbbbbbbbbbbb staged"), "{text}");
        assert!(
            text.contains("zone zone-a       online  trusts 2 root(s), intermediate from aaaaaaaaaaaa, sidecars 2 trusting all / 3 current of 3"),
            "{text}"
        );
        assert!(
            text.ends_with("next: activate (zone zone-a: 2 of 3 sidecars trust the staged root)\n"),
            "{text}"
        );
    }
}
