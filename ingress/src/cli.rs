//! Command-line arguments of the ingress, shared by `causeway-ingress` and
//! `causeway ingress`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use causeway_dataplane::cli::{control_plane, exit_on_error, init_standalone, stop_on_signal};
use serde_json::json;

use crate::IngressSettings;

/// Run a zone ingress: registers with the zone control plane and routes other zones'
/// mTLS connections by SNI to this zone's sidecars, without terminating TLS.
///
/// causeway ingress --cp https://127.0.0.1:7711 --cp-ca-file zone/api-ca.pem
///   --token-file ingress.token --name zone-b-ingress-1 --listen 0.0.0.0:10001
///   --advertise ingress.zone-b.example.com:443
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The zone control plane's DDS address, `https://HOST:PORT`.
    #[arg(long)]
    pub cp: String,
    /// The CA of the zone control plane's certificate (`<zone data dir>/api-ca.pem`).
    #[arg(long)]
    pub cp_ca_file: PathBuf,
    /// The ingress token (`causeway ingress token create --zone Z`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The mesh whose traffic it carries.
    #[arg(short = 'm', long, default_value = "default")]
    pub mesh: String,
    /// The ZoneIngress's name, unique in the mesh (one per ingress instance).
    #[arg(long)]
    pub name: String,
    /// Where to accept other zones' connections.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The `HOST:PORT` other zones connect to, when it differs from --listen (a load
    /// balancer, NAT, or --listen on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Admin listener (`/ready`, `/config`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:9902")]
    pub admin_addr: SocketAddr,
    /// How long SIGTERM waits for open connections.
    #[arg(long, default_value = "10")]
    pub drain_seconds: u64,
    /// Also accept QUIC (UDP, same port): other zones' sidecars then carry their
    /// connections here as streams of one QUIC connection each.
    #[arg(long)]
    pub quic: bool,
    /// TCP connections from other zones held at once (default 16384): past it a new one
    /// is closed unserved and counted (`result="refused_limit"`). A total, with no cap
    /// per address: a zone behind a NAT comes from one. The ingress raises its
    /// open-file limit to the hard limit at start, and keeps this under half of it.
    #[arg(long, default_value_t = causeway_dataplane::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

impl Args {
    /// The ZoneIngress this ingress registers.
    pub fn zone_ingress(&self) -> anyhow::Result<causeway_api::Resource> {
        let mut spec = json!({
            "address": self.listen.ip().to_string(),
            "port": self.listen.port(),
            "adminPort": self.admin_addr.port(),
            "quic": self.quic,
        });
        match &self.advertise {
            Some(a) => {
                let (host, port) = a
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("--advertise {a:?}: expected HOST:PORT"))?;
                spec["advertisedAddress"] = json!(host);
                spec["advertisedPort"] = json!(port);
            }
            None if self.listen.ip().is_unspecified() => anyhow::bail!(
                "--listen {} is not an address other zones can reach; add --advertise HOST:PORT",
                self.listen
            ),
            None => {}
        }
        let r = causeway_api::Resource::from_json(
            json!({"type": "ZoneIngress", "mesh": self.mesh, "name": self.name, "spec": spec})
                .to_string()
                .as_bytes(),
        )?;
        causeway_api::validate(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(r)
    }
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = IngressSettings {
        cp: control_plane(&a.cp, &a.cp_ca_file, &a.token_file)?,
        ingress: a.zone_ingress()?,
        listen: a.listen,
        admin_addr: a.admin_addr,
        drain: Duration::from_secs(a.drain_seconds),
        quic: a.quic,
        max_connections: causeway_listen::connection_cap(a.max_connections, 2)
            .map_err(anyhow::Error::msg)?,
    };
    crate::run(cfg, stop_on_signal()).await
}

#[derive(clap::Parser)]
#[command(name = "causeway-ingress", version)]
struct Standalone {
    #[command(flatten)]
    args: Args,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
    /// text, or json (one object per line).
    #[arg(long, value_enum, default_value_t)]
    log_format: causeway_dataplane::cli::LogFormat,
}

/// Entry point of the standalone binary.
pub fn main() {
    use clap::Parser as _;
    let cli = Standalone::parse();
    init_standalone(cli.log, cli.log_format);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    exit_on_error(rt.block_on(run(cli.args)));
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec![
            "causeway-ingress",
            "--cp",
            "https://127.0.0.1:1",
            "--cp-ca-file",
            "ca.pem",
            "--token-file",
            "t",
            "--name",
            "ingress-1",
        ];
        v.extend_from_slice(extra);
        Standalone::parse_from(v).args
    }

    #[test]
    fn builds_its_zone_ingress_and_explains_bad_addresses() {
        let r = args(&["--listen", "127.0.0.1:10001"])
            .zone_ingress()
            .unwrap();
        assert_eq!(r.kind, "ZoneIngress");
        assert_eq!(r.spec["address"], "127.0.0.1");
        assert_eq!(r.spec["port"], 10001);
        let r = args(&[
            "--listen",
            "0.0.0.0:10001",
            "--advertise",
            "ing.example.com:443",
        ])
        .zone_ingress()
        .unwrap();
        assert_eq!(r.spec["advertisedAddress"], "ing.example.com");
        assert_eq!(r.spec["advertisedPort"], 443);
        let e = args(&["--listen", "0.0.0.0:10001"])
            .zone_ingress()
            .unwrap_err();
        assert!(e.to_string().contains("--advertise"), "{e}");
        let e = args(&["--listen", "127.0.0.1:1", "--advertise", "nohost"])
            .zone_ingress()
            .unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }
}
