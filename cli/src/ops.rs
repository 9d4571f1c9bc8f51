//! Operator commands: apply, get, delete, cluster, config.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use causeway_api::{Resource, Scope, TypeInfo};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::{ConfigFile, ConnArgs, Context, read_trimmed};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// YAML file with one or more documents, or - for standard input.
    #[arg(short = 'f', long = "file")]
    file: String,
}

#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// Resource type: kind or plural, any case (mesh, meshes, Zone, meshtrafficpermissions).
    r#type: String,
    /// Name of one resource; without it, list them.
    name: Option<String>,
    /// Mesh of mesh-scoped resources.
    #[arg(short = 'm', long, default_value = "default")]
    mesh: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Label selector for lists: key=value,key2 (has key2).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Read this node's state without a linearizable barrier.
    #[arg(long)]
    stale: bool,
}

#[derive(clap::Args)]
pub(crate) struct DeleteArgs {
    r#type: String,
    name: String,
    #[arg(short = 'm', long, default_value = "default")]
    mesh: String,
    /// Only delete if the resource is still at this version.
    #[arg(long)]
    if_version: Option<u64>,
}

#[derive(clap::Subcommand)]
pub(crate) enum ClusterCmd {
    /// Leader, term, indexes and every member with its role and lag.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Add a node. Prints its join token (single use, short-lived) and the command that
    /// starts it: with the token, the new node gets its Raft certificate (mutual TLS
    /// between nodes), the members and the seal key from the cluster, so nothing is
    /// copied by hand. The cluster keeps only the token's hash.
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its Raft address.
        #[arg(long)]
        raft_addr: String,
        /// Its API address.
        #[arg(long)]
        api_addr: String,
        /// How long the join token lives (at most 24h).
        #[arg(long, default_value = "15m")]
        token_ttl: String,
        /// Write the join token to this file (0600) instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// A new join token for a node that was added but has not joined yet (its token
    /// expired, or was lost).
    JoinToken {
        #[arg(long)]
        id: u64,
        /// How long the join token lives (at most 24h).
        #[arg(long, default_value = "15m")]
        token_ttl: String,
        /// Write the join token to this file (0600) instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// Remove a node from the cluster; it stops voting at once.
    RemoveNode { id: u64 },
    /// The CA of the nodes' Raft certificates, and its rotation while the cluster runs.
    #[command(subcommand)]
    RaftCa(RaftCaCmd),
    /// The CA of the nodes' API and KDS certificates (what the CLI, Terraform, zones
    /// and browsers verify), and its rotation.
    #[command(subcommand)]
    ApiCa(ApiCaCmd),
    /// Generate a cluster CA and per-node certificates for mutual TLS between nodes.
    GenCerts {
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        nodes: Vec<u64>,
        /// Output directory (created): ca.pem, node-<id>.pem, node-<id>-key.pem.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum RaftCaCmd {
    /// The Raft CA (and the staged or previous one during a rotation), the CAs each
    /// node trusts and the CA of the certificate it presents.
    Status,
    /// Rotate the Raft CA without stopping a node: stage a new CA (every node trusts
    /// it), activate it once every node does (each node issues itself a certificate
    /// from it and reconnects to its peers with it), finish once every node presents
    /// one (the old CA is dropped). Each step waits for every node; a node that is down
    /// holds the rotation up. Only for a cluster that made its own Raft CA (not
    /// --raft-tls-* files). Steps: stage, activate, finish; `--force` takes them
    /// without waiting for the nodes (a node that did not follow is cut off from the
    /// others and must join again).
    Rotate(crate::mesh_ca::RotateArgs),
}

#[derive(clap::Subcommand)]
pub(crate) enum ApiCaCmd {
    /// The API CA (and the staged or previous one during a rotation), which CA each
    /// node's certificate is from and which CAs each zone trusts.
    Status,
    /// Write the CAs clients should trust now (PEM, one or two) to a file, for the
    /// CLI's --ca-file, Terraform's ca_file or a browser.
    Bundle {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the API CA: stage a new CA (nodes write both to <data-dir>/api-ca.pem,
    /// zones trust both, new tokens carry both), activate it once every zone trusts it
    /// (every node serves API and KDS certificates from it, reloaded in place), finish
    /// once every node does (the old CA is dropped). Update your other clients' CA
    /// files (`bundle --out`) between stage and activate. Steps: stage, activate,
    /// finish; `--force` takes them without waiting (a zone that did not follow is cut
    /// off until it is started with a new zone token, which enrols it again).
    Rotate(crate::mesh_ca::RotateArgs),
}

/// The API CA status for people.
fn render_api_ca(s: &Value) -> String {
    use crate::mesh_ca::{cas_header, next_line, short_sha};
    let mut out = cas_header("API CA", s);
    for n in s["nodes"].as_array().into_iter().flatten() {
        out += &match n["error"].as_str() {
            Some(e) => format!("  node {:<3} did not answer: {e}\n", n["node"]),
            None => format!(
                "  node {:<3} serves a certificate of {}\n",
                n["node"],
                match n["presenting"].as_str().unwrap_or("") {
                    "operator's" => "the operator (--api-cert)".to_string(),
                    _ => short_sha(&n["presenting"]),
                }
            ),
        };
    }
    for z in s["zones"].as_array().into_iter().flatten() {
        out += &format!(
            "  zone {:<12} {:<7} trusts {} CA(s)\n",
            z["zone"].as_str().unwrap_or(""),
            if z["online"] == true {
                "online"
            } else {
                "offline"
            },
            z["trusted"].as_array().map_or(0, Vec::len)
        );
    }
    out + &next_line(s)
}

/// The Raft CA status for people.
fn render_raft_ca(s: &Value) -> String {
    use crate::mesh_ca::{cas_header, next_line, short_sha};
    let mut out = cas_header("Raft CA", s);
    for n in s["nodes"].as_array().into_iter().flatten() {
        out += &match n["error"].as_str() {
            Some(e) => format!("  node {:<3} did not answer: {e}\n", n["node"]),
            None => format!(
                "  node {:<3} trusts {} CA(s), presents a certificate of {}\n",
                n["node"],
                n["trusted"].as_array().map_or(0, Vec::len),
                match short_sha(&n["presenting"]) {
                    sha if sha.is_empty() => "no CA of the cluster".to_string(),
                    sha => sha,
                }
            ),
        };
    }
    out + &next_line(s)
}

#[derive(clap::Subcommand)]
pub(crate) enum ConfigCmd {
    /// Add (or replace) a context and make it current.
    AddContext {
        name: String,
        /// API address(es), comma-separated.
        #[arg(long = "api")]
        api: String,
        /// Read the admin token and the API CA from the directory a control plane handed
        /// them out to (its --token-out-dir: admin-token, api-ca.pem).
        #[arg(long, alias = "from-data-dir")]
        from_token_dir: Option<PathBuf>,
    },
    /// Switch the current context.
    UseContext { name: String },
    /// Print the config file, tokens masked.
    View,
}

/// Finds a type by kind or plural, ignoring case.
fn resolve_type(s: &str) -> anyhow::Result<&'static TypeInfo> {
    let l = s.to_ascii_lowercase();
    causeway_api::types()
        .iter()
        .find(|t| t.kind.to_ascii_lowercase() == l || t.plural == l)
        .with_context(|| {
            let known: Vec<&str> = causeway_api::types().iter().map(|t| t.plural).collect();
            format!("unknown resource type {s:?}; known: {}", known.join(", "))
        })
}

fn item_path(t: &TypeInfo, mesh: &str, name: &str) -> String {
    match t.scope {
        Scope::Global => format!("/{}/{name}", t.plural),
        Scope::Mesh => format!("/meshes/{mesh}/{}/{name}", t.plural),
    }
}

pub(crate) async fn apply(conn: &ConnArgs, a: ApplyArgs) -> anyhow::Result<()> {
    let text = if a.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file))?
    };
    let docs =
        Resource::from_yaml_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file))?;
    if docs.is_empty() {
        bail!("{}: no resources found", a.file);
    }
    // Validate everything before sending anything: a bad document changes nothing.
    for (i, r) in docs.iter().enumerate() {
        if let Err(e) = causeway_api::validate(r) {
            bail!(
                "{} document {} ({} {:?}): {e}",
                a.file,
                i + 1,
                r.kind,
                r.name
            );
        }
    }
    let client = Client::new(conn.resolve()?)?;
    for r in docs {
        let t = resolve_type(&r.kind)?;
        let path = item_path(t, r.mesh.as_deref().unwrap_or(""), &r.name);
        let body = serde_json::to_value(&r)?;
        let (status, stored) = client
            .request(Method::PUT, &path, Some(&body))
            .await
            .with_context(|| format!("{} {:?}", r.kind, r.name))?;
        let verb = if status == reqwest::StatusCode::CREATED {
            "created"
        } else {
            "configured"
        };
        let version = stored.get("version").and_then(Value::as_u64).unwrap_or(0);
        match &r.mesh {
            Some(m) => println!(
                "{} {} in mesh {m} {verb} (version {version})",
                t.kind, r.name
            ),
            None => println!("{} {} {verb} (version {version})", t.kind, r.name),
        }
        print_warnings(&stored);
    }
    Ok(())
}

/// Prints the `warnings` of a write's answer (parts of it the proxies do not enforce
/// yet) on standard error, one per line, like kubectl's.
fn print_warnings(answer: &Value) {
    let Ok(warnings) = serde_json::from_value::<Vec<causeway_api::FieldWarning>>(
        answer.get("warnings").cloned().unwrap_or(Value::Null),
    ) else {
        return;
    };
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

fn print_resources(
    items: &[Value],
    t: &TypeInfo,
    output: Output,
    single: bool,
) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let v = if single {
                items[0].clone()
            } else {
                Value::Array(items.to_vec())
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml::to_string(it)?);
            }
        }
        Output::Table if t.kind == "Zone" => print_zones(items),
        Output::Table if t.kind == "VirtualIp" => print_virtual_ips(items),
        Output::Table => {
            let mut rows = vec![match t.scope {
                Scope::Mesh => vec![
                    "MESH".to_string(),
                    "NAME".into(),
                    "VERSION".into(),
                    "MODIFIED".into(),
                    "LABELS".into(),
                ],
                Scope::Global => vec![
                    "NAME".to_string(),
                    "VERSION".into(),
                    "MODIFIED".into(),
                    "LABELS".into(),
                ],
            }];
            for it in items {
                let s = |k: &str| {
                    it.get(k)
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .unwrap_or_default()
                };
                let labels = it
                    .get("labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let mut row = vec![];
                if t.scope == Scope::Mesh {
                    row.push(s("mesh"));
                }
                row.extend([s("name"), s("version"), s("modificationTime"), labels]);
                rows.push(row);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

/// Virtual IPs: the service (and the zone it pins) each stands for.
fn print_virtual_ips(items: &[Value]) {
    let mut rows = vec![
        ["MESH", "SERVICE", "ZONE", "IP", "NAME"]
            .map(String::from)
            .to_vec(),
    ];
    for it in items {
        let s = |pointer: &str| {
            it.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string()
        };
        rows.push(vec![
            s("/mesh"),
            s("/spec/service"),
            s("/spec/zone"),
            s("/spec/ip"),
            s("/name"),
        ]);
    }
    print_table(&rows);
}

/// Zones with their KDS status.
fn print_zones(items: &[Value]) {
    let mut rows = vec![
        [
            "NAME",
            "ENABLED",
            "STATUS",
            "LAST SEEN",
            "REVISION",
            "LAG",
            "VERSION",
            "DATAPLANES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for it in items {
        let st = it.get("status").cloned().unwrap_or(Value::Null);
        let s = |v: Option<&Value>| {
            v.map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_else(|| "-".into())
        };
        let online = st.get("online").and_then(Value::as_bool) == Some(true);
        let enabled = it.pointer("/spec/enabled").and_then(Value::as_bool) != Some(false);
        rows.push(vec![
            s(it.get("name")),
            enabled.to_string(),
            if online { "online" } else { "offline" }.into(),
            s(st.get("lastSeen")),
            s(st.get("revisionApplied")),
            s(st.get("lag")),
            s(st.get("version")),
            s(st.get("dataplanes")),
        ]);
    }
    print_table(&rows);
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

pub(crate) async fn get(conn: &ConnArgs, a: GetArgs) -> anyhow::Result<()> {
    let t = resolve_type(&a.r#type)?;
    let client = Client::new(conn.resolve()?)?;
    let stale = if a.stale { "stale=true" } else { "" };
    if let Some(name) = &a.name {
        let v = client
            .get(&format!("{}?{stale}", item_path(t, &a.mesh, name)))
            .await?;
        return print_resources(&[v], t, a.output, true);
    }
    let base = match t.scope {
        Scope::Global => format!("/{}", t.plural),
        Scope::Mesh => format!("/meshes/{}/{}", a.mesh, t.plural),
    };
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec!["limit=500".to_string()];
        if let Some(s) = &a.selector {
            q.push(format!("labels={}", urlencode(s)));
        }
        if let Some(n) = &after {
            q.push(format!("after={}", urlencode(n)));
        }
        if a.stale {
            q.push(stale.into());
        }
        let page = client.get(&format!("{base}?{}", q.join("&"))).await?;
        items.extend(
            page.get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        match page.get("next").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    if items.is_empty() && matches!(a.output, Output::Table) {
        match t.scope {
            Scope::Mesh => eprintln!("no {} in mesh {}", t.plural, a.mesh),
            Scope::Global => eprintln!("no {}", t.plural),
        }
        return Ok(());
    }
    print_resources(&items, t, a.output, false)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn delete(conn: &ConnArgs, a: DeleteArgs) -> anyhow::Result<()> {
    let t = resolve_type(&a.r#type)?;
    let client = Client::new(conn.resolve()?)?;
    let mut path = item_path(t, &a.mesh, &a.name);
    if let Some(v) = a.if_version {
        path.push_str(&format!("?version={v}"));
    }
    client.request(Method::DELETE, &path, None).await?;
    println!("{} {} deleted", t.kind, a.name);
    Ok(())
}

pub(crate) async fn cluster(conn: &ConnArgs, c: ClusterCmd) -> anyhow::Result<()> {
    if let ClusterCmd::GenCerts { nodes, out } = &c {
        return gen_certs(nodes, out);
    }
    let resolved = conn.resolve()?;
    let client = Client::new(resolved.clone())?;
    match c {
        ClusterCmd::Status { output } => {
            let mut v = client.get("/cluster").await?;
            // Only the leader knows every member's lag: ask it when we reached a follower.
            if v.get("role").and_then(Value::as_str) != Some("leader")
                && let Some(addr) = v.get("leader_api_addr").and_then(Value::as_str)
            {
                let mut c2 = resolved.clone();
                c2.addrs = vec![format!("https://{addr}")];
                if let Ok(lv) = async { Client::new(c2)?.get("/cluster").await }.await {
                    v = lv;
                }
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Yaml => print!("{}", serde_yaml::to_string(&v)?),
                Output::Table => {
                    let g = |k: &str| v.get(k).map(|x| x.to_string()).unwrap_or_default();
                    println!(
                        "leader: {}   term: {}   commit: {}   applied: {}   log: {}..{}",
                        g("leader_id"),
                        g("term"),
                        g("commit_index"),
                        g("applied_index"),
                        g("first_log_index"),
                        g("last_log_index")
                    );
                    let mut rows = vec![vec![
                        "ID".to_string(),
                        "ROLE".into(),
                        "API".into(),
                        "RAFT".into(),
                        "BEHIND".into(),
                    ]];
                    for m in v
                        .get("members")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                    {
                        let s = |k: &str| match m.get(k) {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Null) | None => "-".into(),
                            Some(x) => x.to_string(),
                        };
                        rows.push(vec![
                            s("id"),
                            s("role"),
                            s("api_addr"),
                            s("raft_addr"),
                            s("behind"),
                        ]);
                    }
                    print_table(&rows);
                }
            }
        }
        ClusterCmd::AddNode {
            id,
            raft_addr,
            api_addr,
            token_ttl,
            token_out,
        } => {
            let (_, v) = client
                .request(
                    Method::POST,
                    "/cluster/members",
                    Some(&json!({"id": id, "raft_addr": raft_addr, "api_addr": api_addr, "token_ttl": token_ttl})),
                )
                .await?;
            let start = format!(
                "causeway global-cp --node-id {id} --raft-addr {raft_addr} --api-addr {api_addr} --data-dir <empty dir> --seal-key-file <path outside it>"
            );
            match v["join_token"].as_str() {
                Some(token) => {
                    println!("node {id} becomes a voter when it joins with its token.");
                    hand_out_join_token(id, token, &v, token_out.as_deref(), &start)?;
                }
                None => {
                    // The cluster runs on the operator's own Raft certificates.
                    let v = client.get("/cluster").await.unwrap_or_default();
                    let peers: Vec<String> = v["members"]
                        .as_array()
                        .map(|ms| {
                            ms.iter()
                                .filter(|m| m["id"].as_u64() != Some(id))
                                .filter_map(|m| {
                                    Some(format!(
                                        "--peer {}={}",
                                        m["id"].as_u64()?,
                                        m["raft_addr"].as_str()?
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    println!(
                        "node {id} added. This cluster uses your own Raft certificates: give the node one from your CA and a copy of the seal key, and start it with\n  {start} --join --raft-tls-ca .. --raft-tls-cert .. --raft-tls-key .. {}",
                        peers.join(" ")
                    );
                }
            }
        }
        ClusterCmd::JoinToken {
            id,
            token_ttl,
            token_out,
        } => {
            let (_, v) = client
                .request(
                    Method::POST,
                    &format!("/cluster/members/{id}/join-token"),
                    Some(&json!({"token_ttl": token_ttl})),
                )
                .await?;
            let token = v["join_token"]
                .as_str()
                .context("the answer holds no join token")?;
            hand_out_join_token(
                id,
                token,
                &v,
                token_out.as_deref(),
                &format!("causeway global-cp --node-id {id} ..."),
            )?;
        }
        ClusterCmd::RemoveNode { id } => {
            client
                .request(Method::DELETE, &format!("/cluster/members/{id}"), None)
                .await?;
            println!("node {id} removed");
        }
        ClusterCmd::ApiCa(ApiCaCmd::Status) => {
            print!("{}", render_api_ca(&client.get("/cluster/api-ca").await?));
        }
        ClusterCmd::ApiCa(ApiCaCmd::Bundle { out }) => {
            crate::mesh_ca::write_bundle(&client, "/cluster/api-ca", &out, "API CA").await?;
        }
        ClusterCmd::ApiCa(ApiCaCmd::Rotate(args)) => {
            crate::mesh_ca::Rotation {
                status_path: "/cluster/api-ca".into(),
                subject: "the API CA".into(),
                render: render_api_ca,
                retrust: true,
            }
            .run(&client, &args)
            .await?;
        }
        ClusterCmd::RaftCa(RaftCaCmd::Status) => {
            print!("{}", render_raft_ca(&client.get("/cluster/raft-ca").await?));
        }
        ClusterCmd::RaftCa(RaftCaCmd::Rotate(args)) => {
            crate::mesh_ca::Rotation {
                status_path: "/cluster/raft-ca".into(),
                subject: "the Raft CA".into(),
                render: render_raft_ca,
                retrust: false,
            }
            .run(&client, &args)
            .await?;
        }
        ClusterCmd::GenCerts { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Prints a join token (or writes it to `out`, 0600) and how to start the node with it.
fn hand_out_join_token(
    id: u64,
    token: &str,
    v: &Value,
    out: Option<&std::path::Path>,
    start: &str,
) -> anyhow::Result<()> {
    let expires = v["expires_unix"]
        .as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    let flag = match out {
        Some(path) => {
            causeway_global_cp::tls::write_private(path, &format!("{token}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote node {id}'s join token to {} (single use; expires {expires})",
                path.display()
            );
            format!("--join-token-file {}", path.display())
        }
        None => {
            println!("join token for node {id} (single use; expires {expires}):\n  {token}");
            "--join-token-file <a file holding the token>".to_string()
        }
    };
    println!("start the node with\n  {start} {flag}");
    Ok(())
}

fn gen_certs(nodes: &[u64], out: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (ca, certs) = causeway_global_cp::tls::generate_raft_certs(nodes)?;
    std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
    let ca_key = out.join("ca-key.pem");
    std::fs::write(&ca_key, &ca.key_pem)?;
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o600))?;
    for (id, ck) in certs {
        std::fs::write(out.join(format!("node-{id}.pem")), &ck.cert_pem)?;
        let k = out.join(format!("node-{id}-key.pem"));
        std::fs::write(&k, &ck.key_pem)?;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
    }
    let secrets = out.join("secrets.key");
    if !secrets.exists() {
        causeway_global_cp::tls::write_private(
            &secrets,
            &causeway_global_cp::sealing::Sealer::generate_key_file(),
        )?;
    }
    println!(
        "wrote {}/ca.pem, node-<id>.pem/node-<id>-key.pem for nodes {nodes:?} and secrets.key (the seal key: back it up, losing it loses the cluster's keys); start each node with\n  --raft-tls-ca {0}/ca.pem --raft-tls-cert {0}/node-<id>.pem --raft-tls-key {0}/node-<id>-key.pem --seal-key-file {0}/secrets.key",
        out.display()
    );
    Ok(())
}

pub(crate) async fn config(conn: &ConnArgs, c: ConfigCmd) -> anyhow::Result<()> {
    let path = conn.config_path();
    let mut file = ConfigFile::load(&path)?;
    match c {
        ConfigCmd::AddContext {
            name,
            api,
            from_token_dir,
        } => {
            let (token, ca_file) = match &from_token_dir {
                Some(d) => (
                    Some(
                        read_trimmed(&d.join(causeway_global_cp::ADMIN_TOKEN_FILE)).with_context(
                            || format!("--from-token-dir {}: no admin token there; control planes keep no token in their data dir, pass the --token-out-dir they were started with", d.display()),
                        )?,
                    ),
                    Some(
                        std::fs::canonicalize(d.join(causeway_global_cp::API_CA_FILE))
                            .with_context(|| format!("no API CA in {}", d.display()))?,
                    ),
                ),
                None => (
                    conn.token.clone().or(conn
                        .token_file
                        .as_deref()
                        .map(read_trimmed)
                        .transpose()?),
                    conn.ca_file.clone(),
                ),
            };
            file.contexts.insert(
                name.clone(),
                Context {
                    addr: api,
                    token,
                    ca_file,
                },
            );
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!(
                "context {name} added to {} and made current",
                path.display()
            );
        }
        ConfigCmd::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                bail!("context {name:?} is not in {}", path.display());
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("now using context {name}");
        }
        ConfigCmd::View => {
            for ctx in file.contexts.values_mut() {
                if ctx.token.is_some() {
                    ctx.token = Some("********".into());
                }
            }
            print!("{}", serde_yaml::to_string(&file)?);
        }
    }
    Ok(())
}
