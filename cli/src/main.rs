//! `causeway`: the one binary of the mesh. Operator commands (`apply`, `get`, `delete`,
//! `cluster ...`, `config ...`) talk to the global policy API; component subcommands
//! (`global-cp`) run the libraries. Flags are parsed here, once, and passed down.

mod access;
mod client;
mod config;
mod demo_app;
mod drill;
mod global_cp;
mod inspect;
mod install;
mod manual;
mod mesh_ca;
mod ops;
mod seal;
mod stat;
mod up;
mod zone;
mod zone_cp;

use clap::{Parser, Subcommand};

use causeway_dataplane::cli::init_logging;
use config::ConnArgs;

/// The release and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CAUSEWAY_GIT_COMMIT"),
    ")"
);

/// Causeway: a multi-zone service mesh.
///
/// Start a local three-node global control plane (see README), then drive it:
///   causeway apply -f mesh.yaml
///   causeway get meshes
///   causeway cluster status
#[derive(Parser)]
#[command(name = "causeway", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Log filter for components (also RUST_LOG), for example `info` or `causeway=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// How components log to standard error: text, or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: causeway_dataplane::cli::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a global control plane node.
    GlobalCp(Box<global_cp::GlobalCpArgs>),
    /// Run a zone control plane.
    ZoneCp(Box<zone_cp::ZoneCpArgs>),
    /// Zone tokens: `zone token create --zone zone-a`.
    #[command(subcommand)]
    Zone(zone::ZoneCmd),
    /// Run a sidecar (`dataplane --cp ... --token-file ... --dataplane-file ...`), or
    /// `dataplane token create --mesh M --service S`.
    Dataplane(Box<zone::DataplaneCmd>),
    /// Run a zone ingress (`ingress --cp ... --token-file ... --name ... --listen ...`),
    /// or `ingress token create --zone Z`.
    Ingress(Box<zone::IngressCmd>),
    /// A mesh's root CA: `ca status -m default`, and `ca rotate -m default` to move
    /// every zone and sidecar to a new root without a failed request.
    #[command(subcommand)]
    Ca(mesh_ca::CaCmd),
    /// The seal key of the control planes: `seal generate-key --out FILE` for a new one,
    /// `seal status` for each global node's key and where a rotation stands.
    #[command(subcommand)]
    Seal(seal::SealCmd),
    /// Mesh secrets, such as a provided CA's key: `secret set ca-key --from-file key.pem`.
    #[command(subcommand)]
    Secret(zone::SecretCmd),
    /// A small HTTP (or TCP echo) workload for tests and demos.
    DemoApp(demo_app::DemoAppArgs),
    /// Details of one object: `inspect zone zone-a`, `inspect dataplane web-1` (why a
    /// policy did or did not apply to a proxy).
    #[command(subcommand)]
    Inspect(zone::InspectCmd),
    /// Start a whole mesh on loopback (3 global nodes, two zones with ingresses, demo
    /// services with sidecars) and print what to try; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Failover drills: `drill zone-down --zone zone-b --probe backend`, `drill list`,
    /// `drill stop`.
    #[command(subcommand)]
    Drill(drill::DrillCmd),
    /// Create or update resources from YAML (several documents separated by ---).
    Apply(ops::ApplyArgs),
    /// Show resources: `get meshes`, `get mesh default -o yaml`, `get zones`.
    Get(ops::GetArgs),
    /// Golden signals across zones: success rate, requests per second, p50/p95/p99
    /// and each zone's share of the traffic, by service, zone, caller or callee.
    ///
    /// Sidecars report to their zone every 5 seconds and zones to global at each KDS
    /// heartbeat, so a change shows within about 10 seconds; no Prometheus needed.
    /// Examples: `causeway stat`, `causeway stat backend --by zone -w`,
    /// `causeway stat web --by callee --window 5m`.
    Stat(stat::StatArgs),
    /// Delete a resource: `delete mesh default`, `delete meshtrafficpermission allow-all -m default`.
    Delete(ops::DeleteArgs),
    /// Named API tokens with a role (admin, mesh-editor, viewer): `token create`,
    /// `token list`, `token rotate ID`, `token revoke ID`. Needs an admin token.
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// Who changed what through the global API, newest last: `audit --limit 20`,
    /// `audit --actor ci`. Needs an admin token.
    Audit(access::AuditArgs),
    /// Inspect and change the Raft cluster of the global control plane.
    #[command(subcommand)]
    Cluster(ops::ClusterCmd),
    /// Describe a resource type or one of its fields: `explain MeshTimeout.spec.to`.
    Explain {
        /// TYPE or TYPE.field.path (kind or plural, any case).
        path: String,
    },
    /// Kubernetes manifests, printed for `kubectl apply -f -`: `install crds`.
    #[command(subcommand)]
    Install(install::InstallCmd),
    /// Manage the CLI's named contexts (address, token, CA).
    #[command(subcommand)]
    Config(ops::ConfigCmd),
    /// Print a shell completion script: `source <(causeway completion bash)`, or save
    /// `causeway completion zsh` as `_causeway` on your `fpath`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (`causeway.1` and one per command) into a directory:
    /// `causeway man --out-dir target/man`, then `man -l target/man/causeway.1`.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, default_value = "target/man")]
        out_dir: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    // Documentation commands need no runtime.
    match &cli.cmd {
        Cmd::Completion { shell } => return manual::completion(*shell),
        Cmd::Man { out_dir } => {
            match manual::man_pages(out_dir) {
                Ok(pages) => println!("wrote {} man pages into {}", pages.len(), out_dir.display()),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
            return;
        }
        Cmd::Install(c) => {
            if let Err(e) = install::install(c) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    // reqwest is built without a default TLS provider; even plain-HTTP clients need one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A sidecar picks its own threads (--concurrency); everything else uses the default.
    let runtime = match &cli.cmd {
        Cmd::Dataplane(d) if d.cmd.is_none() && d.run.is_some() => {
            causeway_dataplane::cli::runtime(d.run.as_ref().expect("checked above"))
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("starting the tokio runtime");
    let result = runtime.block_on(async move {
        match cli.cmd {
            Cmd::GlobalCp(args) => {
                init_logging(&cli.log, cli.log_format);
                global_cp::run(*args).await
            }
            Cmd::ZoneCp(args) => {
                init_logging(&cli.log, cli.log_format);
                zone_cp::run(*args).await
            }
            Cmd::Up(a) => {
                init_logging(if cli.log == "info" { "warn" } else { &cli.log }, cli.log_format);
                up::run(a).await
            }
            Cmd::DemoApp(a) => {
                init_logging(&cli.log, cli.log_format);
                demo_app::run(a).await
            }
            Cmd::Ingress(i) if i.cmd.is_none() => {
                init_logging(&cli.log, cli.log_format);
                match i.run {
                    Some(args) => causeway_ingress::cli::run(args).await,
                    None => Err(anyhow::anyhow!("causeway ingress needs --cp, --cp-ca-file, --token-file, --name and --listen (or a subcommand: token)")),
                }
            }
            Cmd::Dataplane(d) if d.cmd.is_none() => {
                init_logging(&cli.log, cli.log_format);
                match d.run {
                    Some(args) => causeway_dataplane::cli::run(args).await,
                    None => Err(anyhow::anyhow!("causeway dataplane needs --cp, --cp-ca-file, --token-file and --dataplane-file (or a subcommand: token)")),
                }
            }
            cmd => {
                // Operator commands stay quiet unless asked: one clear line on error.
                init_logging(if cli.log == "info" { "warn" } else { &cli.log }, cli.log_format);
                match cmd {
                    Cmd::Drill(c) => drill::drill(&cli.conn, c).await,
                    Cmd::Apply(a) => ops::apply(&cli.conn, a).await,
                    Cmd::Get(a) => ops::get(&cli.conn, a).await,
                    Cmd::Stat(a) => stat::stat(&cli.conn, a).await,
                    Cmd::Delete(a) => ops::delete(&cli.conn, a).await,
                    Cmd::Cluster(c) => ops::cluster(&cli.conn, c).await,
                    Cmd::Token(c) => access::token(&cli.conn, c).await,
                    Cmd::Audit(a) => access::audit(&cli.conn, a).await,
                    Cmd::Config(c) => ops::config(&cli.conn, c).await,
                    Cmd::Explain { path } => causeway_api::explain(&path)
                        .map(|text| print!("{text}"))
                        .map_err(anyhow::Error::from),
                    Cmd::Zone(c) => zone::zone(&cli.conn, c).await,
                    Cmd::Inspect(c) => zone::inspect(&cli.conn, c).await,
                    Cmd::Secret(c) => zone::secret(&cli.conn, c).await,
                    Cmd::Ca(c) => mesh_ca::ca(&cli.conn, c).await,
                    Cmd::Seal(c) => seal::seal(&cli.conn, c).await,
                    Cmd::Dataplane(d) => match d.cmd {
                        Some(zone::DataplaneSub::Token(t)) => zone::dataplane_token(&cli.conn, t).await,
                        Some(zone::DataplaneSub::InstallRedirect(a)) => {
                            causeway_dataplane::cli::install_redirect(a).map(|done| print!("{done}"))
                        }
                        Some(zone::DataplaneSub::UninstallRedirect(a)) => {
                            causeway_dataplane::cli::uninstall_redirect(a).map(|done| print!("{done}"))
                        }
                        None => unreachable!("handled above"),
                    },
                    Cmd::Ingress(i) => match i.cmd {
                        Some(zone::IngressSub::Token(t)) => zone::ingress_token(&cli.conn, t).await,
                        None => unreachable!("handled above"),
                    },
                    Cmd::GlobalCp(_)
                    | Cmd::ZoneCp(_)
                    | Cmd::DemoApp(_)
                    | Cmd::Up(_)
                    | Cmd::Completion { .. }
                    | Cmd::Man { .. }
                    | Cmd::Install(_) => unreachable!("handled above"),
                }
            }
        }
    });
    if let Err(e) = result {
        // One line: the chain of causes, outermost first.
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
