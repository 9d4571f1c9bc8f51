//! Transparent redirection of a workload's traffic through its sidecar
//! (`causeway dataplane install-redirect`), as Kuma's and Istio's init steps do:
//!
//! - outbound TCP from the workload goes to the sidecar's outbound listener, and DNS
//!   (UDP and TCP port 53) to its DNS port when one is given;
//! - inbound TCP to an application's port goes to the sidecar's inbound listener in
//!   front of it (from the Dataplane: `servicePort` to `port`);
//! - exempt: the sidecar's own traffic (by its uid or gid, which it must run as),
//!   chosen ports and CIDRs, and loopback unless asked.
//!
//! The rules are a pure function of a [`Plan`], for nftables (one table of ours, IPv4 and
//! IPv6 at once) or iptables-legacy (chains of ours, per family), unit-tested without a
//! kernel; [`install`] and [`uninstall`] hand them to the system's tools. Everything
//! installed lives in what is named [`NAME`], so uninstalling removes exactly that.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The nftables table (family `inet`) and the prefix of the iptables chains.
pub const NAME: &str = "causeway";
const IPT_OUTPUT: &str = "CAUSEWAY_OUTPUT";
const IPT_PREROUTING: &str = "CAUSEWAY_PREROUTING";

/// Names other meshes' init steps give their rules: installing over them would make
/// two proxies fight for the same connections.
const OTHER_MESHES: &[&str] = &["ISTIO", "KUMA", "PROXY_INIT", "CONSUL", "istio", "kuma"];

/// What to redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The sidecar's outbound listener: every outbound TCP connection goes there.
    pub outbound_port: u16,
    /// (application port, the sidecar's inbound listener in front of it).
    pub inbound: Vec<(u16, u16)>,
    /// The sidecar runs as this user (or group): its own connections are not redirected.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Outbound connections to these ports, or into these networks, are left alone.
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Redirect outbound traffic to loopback too (default: left alone).
    pub redirect_loopback: bool,
    /// The sidecar's DNS port: the workload's DNS (port 53, UDP and TCP) goes there.
    pub dns_port: Option<u16>,
    /// IPv6 as well as IPv4.
    pub ipv6: bool,
}

/// A network, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a network like 10.0.0.0/8 or fd00::/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The tool the rules are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `nft`: one `inet` table for IPv4 and IPv6.
    Nftables,
    /// `iptables-legacy` and `ip6tables-legacy`.
    IptablesLegacy,
}

impl Plan {
    /// Why this plan cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.uid.is_none() && self.gid.is_none() {
            return Err("give --uid or --gid, the user or group the sidecar runs as: its own connections must not be sent back to itself".into());
        }
        if self.outbound_port == 0 {
            return Err("--outbound-port must be the sidecar's outbound listener port".into());
        }
        Ok(())
    }

    fn cidrs(&self, v6: bool) -> Vec<String> {
        self.exclude_outbound_cidrs
            .iter()
            .filter(|c| c.addr.is_ipv6() == v6)
            .map(ToString::to_string)
            .collect()
    }

    /// The nftables script that installs the rules (for `nft -f -`).
    pub fn nft_script(&self) -> String {
        let set = |items: Vec<String>| format!("{{ {} }}", items.join(", "));
        let mut out = vec![
            format!("table inet {NAME} {{"),
            "  chain output {".into(),
            "    type nat hook output priority -100; policy accept;".into(),
        ];
        if !self.ipv6 {
            out.push("    meta nfproto ipv6 return".into());
        }
        if let Some(uid) = self.uid {
            out.push(format!("    meta skuid {uid} return"));
        }
        if let Some(gid) = self.gid {
            out.push(format!("    meta skgid {gid} return"));
        }
        // DNS before the loopback exemption: a host resolver on loopback
        // (systemd-resolved's 127.0.0.53) must reach the sidecar's DNS too.
        if let Some(dns) = self.dns_port {
            out.push(format!("    udp dport 53 redirect to :{dns}"));
            out.push(format!("    tcp dport 53 redirect to :{dns}"));
        }
        if !self.redirect_loopback {
            out.push("    oifname \"lo\" return".into());
        }
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let cidrs = self.cidrs(v6);
            if !cidrs.is_empty() {
                out.push(format!("    {family} daddr {} return", set(cidrs)));
            }
        }
        if !self.exclude_outbound_ports.is_empty() {
            let ports = self.exclude_outbound_ports.iter().map(u16::to_string);
            out.push(format!("    tcp dport {} return", set(ports.collect())));
        }
        out.push(format!(
            "    meta l4proto tcp redirect to :{}",
            self.outbound_port
        ));
        out.push("  }".into());
        out.push("  chain prerouting {".into());
        out.push("    type nat hook prerouting priority -100; policy accept;".into());
        if !self.ipv6 {
            out.push("    meta nfproto ipv6 return".into());
        }
        for (app, listener) in &self.inbound {
            out.push(format!("    tcp dport {app} redirect to :{listener}"));
        }
        out.push("  }".into());
        out.push("}".into());
        out.join("\n") + "\n"
    }

    /// The `iptables-legacy-restore --noflush` input for IPv4 (`v6` false) or IPv6.
    pub fn iptables_restore(&self, v6: bool) -> String {
        let mut out = vec![
            "*nat".to_owned(),
            format!(":{IPT_OUTPUT} - [0:0]"),
            format!(":{IPT_PREROUTING} - [0:0]"),
        ];
        for (chain, ours, protos) in [
            ("OUTPUT", IPT_OUTPUT, &["tcp", "udp"][..]),
            ("PREROUTING", IPT_PREROUTING, &["tcp"][..]),
        ] {
            for p in protos {
                out.push(format!("-A {chain} -p {p} -j {ours}"));
            }
        }
        let o = |rule: String| format!("-A {IPT_OUTPUT} {rule}");
        if let Some(uid) = self.uid {
            out.push(o(format!("-m owner --uid-owner {uid} -j RETURN")));
        }
        if let Some(gid) = self.gid {
            out.push(o(format!("-m owner --gid-owner {gid} -j RETURN")));
        }
        // DNS before the loopback exemption (see the nftables script).
        if let Some(dns) = self.dns_port {
            for p in ["udp", "tcp"] {
                out.push(o(format!("-p {p} --dport 53 -j REDIRECT --to-ports {dns}")));
            }
        }
        if !self.redirect_loopback {
            out.push(o("-o lo -j RETURN".into()));
        }
        for cidr in self.cidrs(v6) {
            out.push(o(format!("-d {cidr} -j RETURN")));
        }
        if !self.exclude_outbound_ports.is_empty() {
            let ports: Vec<String> = self
                .exclude_outbound_ports
                .iter()
                .map(u16::to_string)
                .collect();
            // multiport takes 15 ports a rule.
            for chunk in ports.chunks(15) {
                out.push(o(format!(
                    "-p tcp -m multiport --dports {} -j RETURN",
                    chunk.join(",")
                )));
            }
        }
        out.push(o(format!(
            "-p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        )));
        for (app, listener) in &self.inbound {
            out.push(format!(
                "-A {IPT_PREROUTING} -p tcp --dport {app} -j REDIRECT --to-ports {listener}"
            ));
        }
        out.push("COMMIT".into());
        out.join("\n") + "\n"
    }
}

/// The commands that remove what [`install`] put in, for `backend`.
fn uninstall_steps(backend: Backend, ipv6: bool) -> Vec<Vec<String>> {
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    match backend {
        Backend::Nftables => vec![words(&format!("nft delete table inet {NAME}"))],
        Backend::IptablesLegacy => {
            let mut steps = Vec::new();
            let tools: &[&str] = if ipv6 {
                &["iptables-legacy", "ip6tables-legacy"]
            } else {
                &["iptables-legacy"]
            };
            for tool in tools {
                for (chain, ours, protos) in [
                    ("OUTPUT", IPT_OUTPUT, &["tcp", "udp"][..]),
                    ("PREROUTING", IPT_PREROUTING, &["tcp"][..]),
                ] {
                    for p in protos {
                        steps.push(words(&format!("{tool} -t nat -D {chain} -p {p} -j {ours}")));
                    }
                }
                for ours in [IPT_OUTPUT, IPT_PREROUTING] {
                    steps.push(words(&format!("{tool} -t nat -F {ours}")));
                    steps.push(words(&format!("{tool} -t nat -X {ours}")));
                }
            }
            steps
        }
    }
}

/// Runs `program args`, feeding it `input`; its standard output, or an error that says
/// what failed and why.
fn run(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{program} is not installed here (choose another --backend, or install it)"
            ),
            _ => anyhow::anyhow!("running {program}: {e}"),
        })?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("piped above")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Operation not permitted") || err.contains("Permission denied") {
            anyhow::bail!(
                "{program} {}: not permitted: redirecting traffic needs CAP_NET_ADMIN (run it as root, or in the workload's init container with that capability)",
                args.join(" ")
            );
        }
        anyhow::bail!("{program} {} failed: {}", args.join(" "), err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The backend to use when none is asked for: nftables when `nft` works here, else
/// iptables-legacy.
pub fn detect() -> Backend {
    match run("nft", &["list", "tables"], None) {
        Ok(_) => Backend::Nftables,
        Err(_) => Backend::IptablesLegacy,
    }
}

/// What is installed now, in the tool's own words: ours, and other meshes' rules.
fn current(backend: Backend, ipv6: bool) -> anyhow::Result<String> {
    match backend {
        Backend::Nftables => run("nft", &["list", "ruleset"], None),
        Backend::IptablesLegacy => {
            let mut all = run("iptables-legacy", &["-t", "nat", "-S"], None)?;
            if ipv6 {
                all += &run("ip6tables-legacy", &["-t", "nat", "-S"], None)?;
            }
            Ok(all)
        }
    }
}

/// Installs `plan` with `backend`; with `dry_run`, only says what it would do. Refuses
/// when the rules are there already, or another mesh's are.
pub fn install(plan: &Plan, backend: Backend, dry_run: bool) -> anyhow::Result<String> {
    plan.check().map_err(anyhow::Error::msg)?;
    let scripts: Vec<(&str, Vec<&str>, String)> = match backend {
        Backend::Nftables => vec![("nft", vec!["-f", "-"], plan.nft_script())],
        Backend::IptablesLegacy => {
            let mut s = vec![(
                "iptables-legacy-restore",
                vec!["--noflush"],
                plan.iptables_restore(false),
            )];
            if plan.ipv6 {
                s.push((
                    "ip6tables-legacy-restore",
                    vec!["--noflush"],
                    plan.iptables_restore(true),
                ));
            }
            s
        }
    };
    let shown: String = scripts
        .iter()
        .map(|(tool, args, script)| format!("# {tool} {}\n{script}", args.join(" ")))
        .collect();
    if dry_run {
        return Ok(shown);
    }
    let now = current(backend, plan.ipv6)?;
    let ours = match backend {
        Backend::Nftables => now.contains(&format!("table inet {NAME}")),
        Backend::IptablesLegacy => now.contains(IPT_OUTPUT),
    };
    if ours {
        anyhow::bail!(
            "the redirection is installed already; run `causeway dataplane uninstall-redirect` first"
        );
    }
    if let Some(other) = OTHER_MESHES.iter().find(|n| now.contains(*n)) {
        anyhow::bail!(
            "rules of another tool ({other}...) redirect traffic here already; remove them first (two proxies would fight for the same connections)"
        );
    }
    for (tool, args, script) in &scripts {
        run(tool, args, Some(script))?;
    }
    Ok(shown)
}

/// Removes what [`install`] put in with `backend` (nothing else); with `dry_run`, only
/// says what it would do.
pub fn uninstall(backend: Backend, ipv6: bool, dry_run: bool) -> anyhow::Result<String> {
    let steps = uninstall_steps(backend, ipv6);
    let shown: String = steps.iter().map(|s| s.join(" ") + "\n").collect();
    if dry_run {
        return Ok(shown);
    }
    let now = current(backend, ipv6)?;
    let installed = match backend {
        Backend::Nftables => now.contains(&format!("table inet {NAME}")),
        Backend::IptablesLegacy => now.contains(IPT_OUTPUT),
    };
    if !installed {
        anyhow::bail!("no redirection of Causeway's is installed here ({backend:?})");
    }
    for step in &steps {
        let args: Vec<&str> = step[1..].iter().map(String::as_str).collect();
        // ip6tables may have nothing of ours when it was installed without IPv6.
        if let Err(e) = run(&step[0], &args, None)
            && step[0] != "ip6tables-legacy"
        {
            return Err(e);
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            outbound_port: 15001,
            inbound: vec![(8080, 20001)],
            uid: Some(5678),
            gid: None,
            exclude_outbound_ports: vec![22, 9901],
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            redirect_loopback: false,
            dns_port: Some(15053),
            ipv6: true,
        }
    }

    #[test]
    fn nftables_rules_exempt_the_sidecar_then_redirect_the_rest() {
        let script = plan().nft_script();
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l:?} in\n{script}"))
        };
        let redirect = at("meta l4proto tcp redirect to :15001");
        // Every exemption comes before the redirect, DNS before the catch-all.
        for l in [
            "meta skuid 5678 return",
            "oifname \"lo\" return",
            "ip daddr { 10.0.0.0/8 } return",
            "ip6 daddr { fd00::/8 } return",
            "tcp dport { 22, 9901 } return",
            "udp dport 53 redirect to :15053",
        ] {
            assert!(at(l) < redirect, "{l}");
        }
        assert!(
            at("tcp dport 8080 redirect to :20001") > redirect,
            "inbound, prerouting"
        );
        // DNS to a resolver on loopback is redirected too, but not the sidecar's own.
        let dns = at("udp dport 53 redirect to :15053");
        assert!(at("meta skuid 5678 return") < dns);
        assert!(dns < at("oifname \"lo\" return"));
        assert!(!script.contains("nfproto ipv6 return"));
        let v4 = Plan {
            ipv6: false,
            redirect_loopback: true,
            dns_port: None,
            ..plan()
        }
        .nft_script();
        assert!(v4.contains("meta nfproto ipv6 return"));
        assert!(!v4.contains("oifname \"lo\"") && !v4.contains("dport 53"));
    }

    #[test]
    fn iptables_rules_per_family() {
        let v4 = plan().iptables_restore(false);
        assert!(v4.starts_with("*nat\n:CAUSEWAY_OUTPUT - [0:0]\n"));
        assert!(v4.contains("-A OUTPUT -p tcp -j CAUSEWAY_OUTPUT\n"));
        assert!(v4.contains("-A CAUSEWAY_OUTPUT -m owner --uid-owner 5678 -j RETURN\n"));
        assert!(v4.contains("-A CAUSEWAY_OUTPUT -d 10.0.0.0/8 -j RETURN\n"));
        assert!(!v4.contains("fd00::/8"));
        assert!(v4.contains("-p tcp -m multiport --dports 22,9901 -j RETURN\n"));
        assert!(v4.contains("-A CAUSEWAY_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053\n"));
        // DNS to a resolver on loopback is redirected too.
        let dns = v4.find("--dport 53 -j REDIRECT").unwrap();
        assert!(dns < v4.find("-o lo -j RETURN").unwrap());
        assert!(
            v4.contains(
                "-A CAUSEWAY_PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 20001\n"
            )
        );
        assert!(v4.ends_with(
            "-A CAUSEWAY_PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 20001\nCOMMIT\n"
        ));
        let v6 = plan().iptables_restore(true);
        assert!(v6.contains("-d fd00::/8") && !v6.contains("10.0.0.0/8"));
    }

    #[test]
    fn uninstalling_removes_only_ours() {
        let nft = uninstall_steps(Backend::Nftables, true);
        assert_eq!(nft, [vec!["nft", "delete", "table", "inet", "causeway"]]);
        let ipt = uninstall_steps(Backend::IptablesLegacy, false);
        assert!(ipt.iter().all(|s| s[0] == "iptables-legacy"));
        assert!(
            ipt.iter()
                .all(|s| s.iter().any(|w| w.starts_with("CAUSEWAY_")))
        );
        assert_eq!(
            uninstall_steps(Backend::IptablesLegacy, true).len(),
            2 * ipt.len()
        );
    }

    #[test]
    fn a_plan_that_would_loop_or_a_bad_network_is_refused() {
        let no_owner = Plan {
            uid: None,
            gid: None,
            ..plan()
        };
        assert!(no_owner.check().unwrap_err().contains("--uid or --gid"));
        assert!(plan().check().is_ok());
        assert!(
            "10.0.0.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!("ten".parse::<Cidr>().is_err());
        assert_eq!("fd00::1".parse::<Cidr>().unwrap().prefix, 128);
    }
}
