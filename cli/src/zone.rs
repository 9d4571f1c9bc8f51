//! Zone commands: `zone token create|list|revoke|rotate-key`, `zone ca status|rotate`,
//! `zone api-ca status|bundle|rotate` and `zone rotate-renewal-key` (these two against
//! a zone's API), `inspect zone` and `inspect dataplane`.

use std::path::PathBuf;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::ConnArgs;

#[derive(clap::Subcommand)]
pub(crate) enum ZoneCmd {
    /// Zone tokens: a zone control plane presents one once to get its certificate.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The CA of zones' KDS certificates, and its rotation.
    #[command(subcommand)]
    Ca(ZoneCaCmd),
    /// Rotate the key a zone renews its proxies' tokens with. Point --addr, the token and
    /// the CA at the zone's API (its admin token). Every connected proxy gets a token
    /// renewed with the new key at once; tokens the old key renewed keep working for
    /// the overlap (default and at most 168h; `0s` for a leaked key: only the new key
    /// verifies then, and a proxy offline meanwhile needs a new token from global).
    RotateRenewalKey {
        #[arg(long)]
        overlap: Option<String>,
    },
    /// A zone's own API CA (it signs the zone API's and DDS's certificates, which the
    /// zone's sidecars, ingresses and clients verify), and its rotation. Point --addr,
    /// the token and the CA at the zone's API (its admin token to rotate).
    #[command(subcommand)]
    ApiCa(ZoneApiCaCmd),
    /// Revoke every intermediate CA issued to a zone: sidecars in every zone stop
    /// trusting its workloads' certificates. Disable the zone too to keep it from
    /// getting a new one.
    RevokeCa {
        #[arg(long)]
        zone: String,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum TokenCmd {
    /// Issue a token for a zone. It is printed once (or written to --out); the cluster
    /// keeps only its hash. A token enrolls one zone once (single use): a zone that lost
    /// its data dir needs a new one.
    Create {
        #[arg(long)]
        zone: String,
        /// How long the token may be used to enroll, e.g. 24h (default 8760h).
        #[arg(long)]
        valid_for: Option<String>,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List a zone's tokens (ids, expiry and when each enrolled; never the tokens).
    List {
        #[arg(long)]
        zone: String,
    },
    /// A new key signs zone tokens from now on. Tokens issued and not used yet stop
    /// working (the answer counts them; issue them again); enrolled zones are not
    /// affected: they connect with certificates, not tokens.
    RotateKey,
    /// Revoke one token (--id) or all of a zone's tokens. A zone whose token is revoked
    /// is refused at its next heartbeat.
    Revoke {
        #[arg(long)]
        zone: String,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum ZoneCaCmd {
    /// The zone CA (and the one it replaces during a rotation), and which CA each
    /// zone's certificate is from.
    Status,
    /// Rotate the zone CA: stage a new CA, which signs zone certificates at once while
    /// global still admits the old one's; every zone renews its certificate and
    /// reconnects on its own; finish (drop the old CA) once every zone connected with a
    /// certificate of the new one. An offline zone holds the finish up. Steps: stage,
    /// finish; `--force` finishes without waiting for the zones (those still on the
    /// old CA are refused until started with a new zone token, which enrols them again
    /// with their store kept).
    Rotate(crate::mesh_ca::RotateArgs),
}

#[derive(clap::Subcommand)]
pub(crate) enum ZoneApiCaCmd {
    /// The zone's API CAs (the staged or previous one during a rotation), which CA the
    /// API and DDS present a certificate of, and which CAs each connected proxy trusts.
    Status,
    /// Write the CAs clients of the zone's API should trust now (PEM, one or two) to a
    /// file, for --ca-file, a proxy's --cp-ca-file, or Terraform.
    Bundle {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the zone's API CA with its proxies connected: stage a new CA (the zone
    /// sends both CAs to every connected sidecar and ingress, which write them over
    /// their --cp-ca-file; the zone writes them to <data-dir>/api-ca.pem), activate it
    /// once every connected proxy trusts it (the API and DDS present certificates from
    /// it, reloaded in place), finish (the old CA is dropped). Copy the bundle
    /// (`bundle --out`) to proxies that are offline and other clients between stage and
    /// activate. Steps: stage, activate, finish; `--force` takes them without waiting
    /// (a proxy that did not follow cannot reconnect until its CA file is updated).
    Rotate(crate::mesh_ca::RotateArgs),
}

/// The zone API CA status for people.
fn render_zone_api_ca(s: &Value) -> String {
    use crate::mesh_ca::{cas_header, next_line, short_sha};
    let mut out = cas_header("zone API CA", s);
    out += &format!(
        "  API presents a certificate of {}, DDS of {}\n",
        short_sha(&s["serving"]["api"]),
        match short_sha(&s["serving"]["dds"]) {
            sha if sha.is_empty() => "(no DDS)".to_string(),
            sha => sha,
        }
    );
    for p in s["proxies"].as_array().into_iter().flatten() {
        let trusted: Vec<String> = p["trusted"]
            .as_array()
            .into_iter()
            .flatten()
            .map(short_sha)
            .collect();
        out += &format!(
            "  {:<32} trusts {}\n",
            p["proxy"].as_str().unwrap_or(""),
            if trusted.is_empty() {
                "(not reported yet)".to_string()
            } else {
                trusted.join(", ")
            }
        );
    }
    out + &next_line(s)
}

/// The zone CA status for people.
fn render_zone_ca(s: &Value) -> String {
    use crate::mesh_ca::{cas_header, next_line, short_sha};
    let mut out = cas_header("zone CA", s);
    for z in s["zones"].as_array().into_iter().flatten() {
        let from = match (z["onCurrent"] == true, short_sha(&z["caSha256"])) {
            (true, sha) => format!("the signing CA ({sha})"),
            (false, sha) if sha.is_empty() => "an unknown CA".to_string(),
            (false, sha) => format!("the previous CA ({sha})"),
        };
        let online = if z["online"] == true {
            "online"
        } else {
            "offline"
        };
        out += &format!(
            "  zone {:<12} {online:<7} certificate from {from}\n",
            z["zone"].as_str().unwrap_or("")
        );
    }
    out + &next_line(s)
}

pub(crate) async fn zone(conn: &ConnArgs, c: ZoneCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match c {
        ZoneCmd::Ca(ZoneCaCmd::Status) => {
            print!("{}", render_zone_ca(&client.get("/zone-ca").await?))
        }
        ZoneCmd::Ca(ZoneCaCmd::Rotate(args)) => {
            crate::mesh_ca::Rotation {
                status_path: "/zone-ca".into(),
                subject: "the zone CA".into(),
                render: render_zone_ca,
                retrust: false,
            }
            .run(&client, &args)
            .await?;
        }
        ZoneCmd::ApiCa(ZoneApiCaCmd::Status) => {
            print!("{}", render_zone_api_ca(&client.get("/api-ca").await?))
        }
        ZoneCmd::ApiCa(ZoneApiCaCmd::Bundle { out }) => {
            crate::mesh_ca::write_bundle(&client, "/api-ca", &out, "zone API CA").await?;
        }
        ZoneCmd::ApiCa(ZoneApiCaCmd::Rotate(args)) => {
            crate::mesh_ca::Rotation {
                status_path: "/api-ca".into(),
                subject: "the zone API CA".into(),
                render: render_zone_api_ca,
                retrust: true,
            }
            .run(&client, &args)
            .await?;
        }
        ZoneCmd::RotateRenewalKey { overlap } => {
            let body = match overlap {
                Some(o) => json!({"overlap": o}),
                None => json!({}),
            };
            let (_, v) = client
                .request(Method::POST, "/token-renewal-key/rotate", Some(&body))
                .await?;
            eprintln!(
                "rotated the zone's token-renewal key (now {}); connected proxies get tokens renewed with it; {}",
                v["keyId"].as_str().unwrap_or("?"),
                match v["previousVerifiesUntil"].as_str() {
                    Some(t) => format!("tokens the previous key renewed work until {t}"),
                    None => "tokens the previous key renewed no longer work".to_string(),
                }
            );
        }
        ZoneCmd::Token(TokenCmd::RotateKey) => {
            let (_, v) = client
                .request(Method::POST, "/zone-token-key/rotate", None)
                .await?;
            eprintln!(
                "rotated the zone-token key: new zone tokens are signed with the new key; {} issued token(s) not used yet no longer enrol (issue them again)",
                v["unusedTokensVoided"]
            );
        }
        ZoneCmd::RevokeCa { zone } => {
            let (_, v) = client
                .request(Method::POST, &format!("/zones/{zone}/revoke-ca"), None)
                .await?;
            let n = v["revoked"].as_array().map_or(0, Vec::len);
            eprintln!("revoked {n} intermediate CA(s) of zone {zone}");
        }
        ZoneCmd::Token(TokenCmd::Create {
            zone,
            valid_for,
            out,
        }) => {
            let body = match valid_for {
                Some(v) => json!({"validFor": v}),
                None => json!({}),
            };
            let (_, v) = client
                .request(Method::POST, &format!("/zones/{zone}/token"), Some(&body))
                .await?;
            let token = v
                .get("token")
                .and_then(Value::as_str)
                .context("the server sent no token")?;
            let id = v.get("id").and_then(Value::as_str).unwrap_or("");
            let exp = v.get("expiresAt").and_then(Value::as_str).unwrap_or("");
            match out {
                Some(path) => {
                    causeway_global_cp::tls::write_private(&path, &format!("{token}\n"))
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "zone token {id} for zone {zone} written to {} (expires {exp})",
                        path.display()
                    );
                }
                None => {
                    eprintln!("zone token {id} for zone {zone} (expires {exp}); shown once:");
                    println!("{token}");
                }
            }
        }
        ZoneCmd::Token(TokenCmd::List { zone }) => {
            let v = client.get(&format!("/zones/{zone}/tokens")).await?;
            let mut rows = vec![vec![
                "ID".to_string(),
                "CREATED".into(),
                "EXPIRES".into(),
                "ENROLLED".into(),
            ]];
            for (t, exp) in listed_tokens(&v) {
                // A spent token still names the enrolled zone's certificate: revoking it
                // cuts that zone off.
                let enrolled = match t.get("enrolledAt").and_then(Value::as_str) {
                    Some(at) => at.to_string(),
                    None => "- (unused)".into(),
                };
                rows.push(vec![field(t, "id"), field(t, "createdAt"), exp, enrolled]);
            }
            crate::ops::print_table(&rows);
        }
        ZoneCmd::Token(TokenCmd::Revoke { zone, id }) => {
            let path = match &id {
                Some(id) => format!("/zones/{zone}/tokens/{id}"),
                None => format!("/zones/{zone}/tokens"),
            };
            client.request(Method::DELETE, &path, None).await?;
            match id {
                Some(id) => eprintln!("revoked token {id} of zone {zone}"),
                None => eprintln!("revoked every token of zone {zone}"),
            }
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub(crate) enum InspectCmd {
    /// A zone's status (online, last seen, revision, lag, dataplanes), its tokens, and
    /// with --config-dump what the zone itself reports over KDS.
    Zone {
        name: String,
        #[arg(long)]
        config_dump: bool,
    },
    /// Why one proxy is configured the way it is: "why did my policy not apply?"
    ///
    /// Shows, for the Dataplane NAME: per inbound (and per caller) and per destination
    /// (and per route), the policies of each kind that matched, lowest priority first,
    /// and the configuration they merge to; the policies of the mesh that match nothing
    /// of this proxy, with what they target; policies ignored, and parts not enforced
    /// yet; the version of the config computed now (or why it cannot be); the last
    /// config the sidecar accepted (ACK) or rejected (NACK, with its reason); its
    /// certificate's expiry; each destination's endpoints with their health, health
    /// checks and ejections.
    ///
    /// Answered by the zone control plane the dataplane runs in: point the CLI at that
    /// zone's API (--addr https://<zone API>, --ca-file <zone data dir>/api-ca.pem,
    /// --token-file <the zone's --token-out-dir>/admin-token). Asked of the global control plane, it
    /// is relayed to that zone over KDS.
    ///
    /// The sidecar reports its certificate and endpoints when they change (sampled
    /// every second), so they may be a second old; the view says when they arrived.
    Dataplane {
        name: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// Output format: a readable view (table), or the API's answer as json or yaml.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: crate::ops::Output,
    },
}

pub(crate) async fn inspect(conn: &ConnArgs, c: InspectCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match c {
        InspectCmd::Zone { name, config_dump } => {
            let zone = client.get(&format!("/zones/{name}")).await?;
            let tokens = client.get(&format!("/zones/{name}/tokens")).await?;
            let mut out = json!({
                "zone": name,
                "spec": zone.get("spec"),
                "status": zone.get("status"),
                "tokens": tokens.get("items"),
            });
            if config_dump {
                out["configDump"] = client.get(&format!("/zones/{name}/config-dump")).await?;
            }
            print!("{}", serde_yaml::to_string(&out)?);
        }
        InspectCmd::Dataplane { name, mesh, output } => {
            let v = client
                .get(&format!("/meshes/{mesh}/dataplanes/{name}/inspect"))
                .await?;
            match output {
                crate::ops::Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                crate::ops::Output::Yaml => print!("{}", serde_yaml::to_string(&v)?),
                crate::ops::Output::Table => {
                    let i: causeway_api::inspect::DataplaneInspection =
                        serde_json::from_value(v).context("reading the inspection")?;
                    let now_ms =
                        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                    print!("{}", crate::inspect::render(&i, now_ms));
                }
            }
        }
    }
    Ok(())
}

/// `causeway dataplane`: run a sidecar, or manage dataplane tokens.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct DataplaneCmd {
    #[command(subcommand)]
    pub(crate) cmd: Option<DataplaneSub>,
    #[command(flatten)]
    pub(crate) run: Option<causeway_dataplane::cli::Args>,
}

#[derive(clap::Subcommand)]
pub(crate) enum DataplaneSub {
    /// Dataplane tokens: bound to one mesh and one service.
    #[command(subcommand)]
    Token(DataplaneTokenCmd),
    /// Send a workload's traffic through its sidecar with nftables or iptables-legacy
    /// (outbound TCP to the outbound listener, application ports to their inbound
    /// listeners, DNS to the sidecar's DNS port), leaving the sidecar's own traffic
    /// (--uid/--gid), chosen ports and networks, and loopback alone. Needs
    /// CAP_NET_ADMIN; --dry-run prints the rules.
    InstallRedirect(causeway_dataplane::cli::InstallRedirectArgs),
    /// Remove exactly what install-redirect put in.
    UninstallRedirect(causeway_dataplane::cli::UninstallRedirectArgs),
}

#[derive(clap::Subcommand)]
pub(crate) enum DataplaneTokenCmd {
    /// Issue a token with which a sidecar of SERVICE in MESH gets its certificate.
    Create {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(long)]
        service: String,
        /// How long the token is valid, e.g. 24h (default 168h). It starts the proxy:
        /// while connected, the proxy's zone renews it (and the proxy writes each
        /// renewal over its token file), so a running proxy outlives it.
        #[arg(long)]
        valid_for: Option<String>,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List a mesh's dataplane tokens: ids, service, expiry, revocation; never the
    /// tokens. Expired ones only with --expired.
    List {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        expired: bool,
    },
    /// Revoke one token (--id) or every live token of a service (--service). Every zone
    /// then refuses its next registration and certificate, and ends the streams of the
    /// sidecars that use it (they keep their last config until they get a new token).
    Revoke {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        id: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// The keys that sign and verify dataplane and ingress tokens (ids and dates).
    Keys,
    /// A new key signs dataplane and ingress tokens from now on; the previous one still
    /// verifies the tokens it signed for --overlap, then every zone refuses them (a
    /// running proxy keeps going on its zone's renewals, which its zone signs).
    RotateKey {
        /// How long the previous key still verifies, e.g. 24h (default 168h, the default
        /// token validity; at most 720h). 0s when it leaked: its tokens stop at once.
        #[arg(long)]
        overlap: Option<String>,
    },
}

fn print_signing_keys(v: &Value) {
    println!("{:<18} {:<6} {:<22} RETIRES", "KEY", "SIGNS", "CREATED");
    for k in v["keys"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<6} {:<22} {}",
            k["id"].as_str().unwrap_or("?"),
            if k["signs"] == true { "yes" } else { "no" },
            k["created"].as_str().unwrap_or("(cluster formed)"),
            k["retiresAt"].as_str().unwrap_or("-"),
        );
    }
}

pub(crate) async fn dataplane_token(conn: &ConnArgs, c: DataplaneTokenCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    let (mesh, service, valid_for, out) = match c {
        DataplaneTokenCmd::Create {
            mesh,
            service,
            valid_for,
            out,
        } => (mesh, service, valid_for, out),
        DataplaneTokenCmd::List {
            mesh,
            service,
            expired,
        } => {
            let mut path = format!("/meshes/{mesh}/dataplane-tokens?expired={expired}");
            if let Some(s) = service {
                path.push_str(&format!("&service={s}"));
            }
            return print_tokens(&client.get(&path).await?, true);
        }
        DataplaneTokenCmd::Keys => {
            print_signing_keys(&client.get("/dataplane-token-keys").await?);
            return Ok(());
        }
        DataplaneTokenCmd::RotateKey { overlap } => {
            let body = overlap.map(|o| json!({ "overlap": o }));
            let (_, v) = client
                .request(Method::POST, "/dataplane-token-keys/rotate", body.as_ref())
                .await?;
            eprintln!("a new key signs dataplane and ingress tokens from now on");
            print_signing_keys(&v);
            return Ok(());
        }
        DataplaneTokenCmd::Revoke { mesh, id, service } => {
            let path = match (&id, &service) {
                (Some(id), _) => format!("/meshes/{mesh}/dataplane-tokens/{id}"),
                (None, Some(s)) => format!("/meshes/{mesh}/dataplane-tokens?service={s}"),
                (None, None) => anyhow::bail!("name the token (--id) or the service (--service)"),
            };
            let (_, v) = client.request(Method::DELETE, &path, None).await?;
            return print_revoked(&v);
        }
    };
    let mut body = json!({ "service": service });
    if let Some(v) = valid_for {
        body["validFor"] = json!(v);
    }
    let (_, v) = client
        .request(
            Method::POST,
            &format!("/meshes/{mesh}/dataplane-token"),
            Some(&body),
        )
        .await?;
    print_token(
        &v,
        out,
        &format!("dataplane token for {service} in mesh {mesh}"),
    )
}

/// A string field of a listed token, empty when absent.
pub(crate) fn field(t: &Value, key: &str) -> String {
    t.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The tokens of a list answer (`items`), each with its expiry as shown: marked when past.
fn listed_tokens(v: &Value) -> impl Iterator<Item = (&Value, String)> {
    v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let exp = field(t, "expiresAt");
            if t.get("expired").and_then(Value::as_bool) == Some(true) {
                (t, format!("{exp} (expired)"))
            } else {
                (t, exp)
            }
        })
}

/// Prints a token list (`items` of the API's answer) as a table.
fn print_tokens(v: &Value, with_service: bool) -> anyhow::Result<()> {
    let mut head = vec!["ID".to_string()];
    if with_service {
        head.push("SERVICE".into());
    }
    head.extend(["CREATED".into(), "EXPIRES".into(), "REVOKED".into()]);
    let mut rows = vec![head];
    for (t, exp) in listed_tokens(v) {
        let mut row = vec![field(t, "id")];
        if with_service {
            row.push(field(t, "service"));
        }
        let revoked = t
            .get("revokedAt")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        row.extend([field(t, "createdAt"), exp, revoked]);
        rows.push(row);
    }
    crate::ops::print_table(&rows);
    Ok(())
}

fn print_revoked(v: &Value) -> anyhow::Result<()> {
    let ids: Vec<&str> = v
        .get("revoked")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    eprintln!("revoked {} token(s): {}", ids.len(), ids.join(", "));
    Ok(())
}

/// Prints a token the API issued, or writes it to `out` (mode 0600).
pub(crate) fn print_token(v: &Value, out: Option<PathBuf>, what: &str) -> anyhow::Result<()> {
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .context("the server sent no token")?;
    let exp = v.get("expiresAt").and_then(Value::as_str).unwrap_or("");
    match out {
        Some(path) => {
            causeway_global_cp::tls::write_private(&path, &format!("{token}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{what} written to {} (expires {exp})", path.display());
        }
        None => println!("{token}"),
    }
    Ok(())
}

/// `causeway ingress`: run a zone ingress, or issue ingress tokens.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct IngressCmd {
    #[command(subcommand)]
    pub(crate) cmd: Option<IngressSub>,
    #[command(flatten)]
    pub(crate) run: Option<causeway_ingress::cli::Args>,
}

#[derive(clap::Subcommand)]
pub(crate) enum IngressSub {
    /// Ingress tokens: bound to one zone, they register a ZoneIngress there.
    #[command(subcommand)]
    Token(IngressTokenCmd),
}

#[derive(clap::Subcommand)]
pub(crate) enum IngressTokenCmd {
    /// Issue a token with which an ingress registers in ZONE.
    Create {
        #[arg(long)]
        zone: String,
        /// How long the token is valid, e.g. 24h (default 168h). It starts the proxy:
        /// while connected, the proxy's zone renews it (and the proxy writes each
        /// renewal over its token file), so a running proxy outlives it.
        #[arg(long)]
        valid_for: Option<String>,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List a zone's ingress tokens: ids, expiry, revocation; never the tokens.
    List {
        #[arg(long)]
        zone: String,
        #[arg(long)]
        expired: bool,
    },
    /// Revoke one token (--id) or every live ingress token of the zone. The zone then
    /// refuses its next registration and ends the streams of the ingresses that use it.
    Revoke {
        #[arg(long)]
        zone: String,
        #[arg(long)]
        id: Option<String>,
    },
}

pub(crate) async fn ingress_token(conn: &ConnArgs, c: IngressTokenCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    let (zone, valid_for, out) = match c {
        IngressTokenCmd::Create {
            zone,
            valid_for,
            out,
        } => (zone, valid_for, out),
        IngressTokenCmd::List { zone, expired } => {
            let path = format!("/zones/{zone}/ingress-tokens?expired={expired}");
            return print_tokens(&client.get(&path).await?, false);
        }
        IngressTokenCmd::Revoke { zone, id } => {
            let path = match id {
                Some(id) => format!("/zones/{zone}/ingress-tokens/{id}"),
                None => format!("/zones/{zone}/ingress-tokens"),
            };
            let (_, v) = client.request(Method::DELETE, &path, None).await?;
            return print_revoked(&v);
        }
    };
    let body = match valid_for {
        Some(v) => json!({ "validFor": v }),
        None => json!({}),
    };
    let (_, v) = client
        .request(
            Method::POST,
            &format!("/zones/{zone}/ingress-token"),
            Some(&body),
        )
        .await?;
    print_token(&v, out, &format!("ingress token for zone {zone}"))
}

/// `causeway secret`: mesh secrets (a provided CA's key). Values are write-only.
#[derive(clap::Subcommand)]
pub(crate) enum SecretCmd {
    /// Store a secret from a file: `secret set ca-key --from-file ca-key.pem`.
    Set {
        name: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(long)]
        from_file: PathBuf,
    },
    /// List a mesh's secret names.
    List {
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
}

pub(crate) async fn secret(conn: &ConnArgs, c: SecretCmd) -> anyhow::Result<()> {
    let client = Client::new(conn.resolve()?)?;
    match c {
        SecretCmd::Set {
            name,
            mesh,
            from_file,
        } => {
            let value = std::fs::read_to_string(&from_file)
                .with_context(|| format!("reading {}", from_file.display()))?;
            client
                .request(
                    Method::PUT,
                    &format!("/meshes/{mesh}/secrets/{name}"),
                    Some(&Value::String(value)),
                )
                .await?;
            eprintln!("secret {name} stored in mesh {mesh}");
        }
        SecretCmd::List { mesh } => {
            let v = client.get(&format!("/meshes/{mesh}/secrets")).await?;
            for s in v["items"].as_array().into_iter().flatten() {
                println!("{}", s["name"].as_str().unwrap_or(""));
            }
        }
        SecretCmd::Delete { name, mesh } => {
            client
                .request(
                    Method::DELETE,
                    &format!("/meshes/{mesh}/secrets/{name}"),
                    None,
                )
                .await?;
            eprintln!("secret {name} deleted from mesh {mesh}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_ca_status_names_each_zones_ca_and_what_the_finish_waits_for() {
        let s = json!({"phase": "rotating",
            "cas": [{"sha256": "aaaaaaaaaaaaaaaa", "role": "signing", "notAfter": "2036-01-01T00:00:00Z"},
                    {"sha256": "bbbbbbbbbbbbbbbb", "role": "previous", "notAfter": "2035-01-01T00:00:00Z"}],
            "zones": [{"zone": "zone-a", "online": true, "caSha256": "aaaaaaaaaaaaaaaa", "onCurrent": true},
                      {"zone": "zone-b", "online": false, "caSha256": "bbbbbbbbbbbbbbbb", "onCurrent": false}],
            "next": {"step": "finish", "ready": false,
                     "waiting": ["zone zone-b: offline, last connected with a certificate of the previous CA"]}});
        let text = render_zone_ca(&s);
        assert!(text.starts_with("zone CA: rotating\n"), "{text}");
        assert!(text.contains("CA bbbbbbbbbbbb previous"), "{text}");
        assert!(
            text.contains(
                "zone zone-a       online  certificate from the signing CA (aaaaaaaaaaaa)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "zone zone-b       offline certificate from the previous CA (bbbbbbbbbbbb)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("next: finish (zone zone-b: offline, last connected with a certificate of the previous CA)\n"),
            "{text}"
        );
    }
}
