//! End to end: `causeway dataplane install-redirect` in real network namespaces, with
//! nftables and with iptables-legacy. A workload namespace and a peer namespace joined
//! by a veth pair; small socket servers stand in for the sidecar's listeners, the
//! application and a remote service, each answering with its name (and the connection's
//! original destination), so each check says exactly where a connection landed.
//!
//! Needs root (network namespaces, CAP_NET_ADMIN), `ip`, `nft`, `iptables-legacy`,
//! `setpriv` and `python3`; `.ci/run` installs what is missing.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use causeway_tests::{causeway_bin, sh};

/// Listens on each `name:ip:port:proto` given and answers every TCP connection (or UDP
/// datagram) with its name and the connection's original destination (SO_ORIGINAL_DST
/// after a redirect, else the address it reached), then says `ready`.
const SERVER: &str = r#"
import socket, struct, sys, threading
def orig(c):
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)
        port, = struct.unpack("!H", raw[2:4])
        return socket.inet_ntoa(raw[4:8]) + ":" + str(port)
    except OSError:
        # No NAT on this connection: it went where it was sent.
        ip, port = c.getsockname()
        return ip + ":" + str(port)
def tcp(name, s):
    while True:
        c, _ = s.accept()
        c.sendall((name + " " + orig(c) + "\n").encode())
        c.close()
def udp(name, s):
    while True:
        _, peer = s.recvfrom(512)
        s.sendto(name.encode(), peer)
for spec in sys.argv[1:]:
    name, ip, port, proto = spec.split(":")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port)))
    if proto == "tcp":
        s.listen(16)
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(name, s), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Connects (`tcp IP PORT`) or sends a datagram (`udp IP PORT`) and prints the answer,
/// or `FAIL` when none comes within a second.
const CLIENT: &str = r#"
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((ip, port), timeout=1)
        print(s.recv(512).decode().strip())
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(b"q", (ip, port))
        print(s.recvfrom(512)[0].decode().strip())
except OSError:
    print("FAIL")
"#;

/// Two namespaces joined by a veth pair (workload 10.201.N.2, peer 10.201.N.1) and
/// the servers in them; all removed when dropped.
struct Net {
    workload: String,
    peer: String,
    subnet: u8,
    servers: Vec<Child>,
}

impl Net {
    fn new() -> anyhow::Result<Net> {
        // Distinct per test of this process, and per process most of the time.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = ((std::process::id() + seq * 97) % 250 + 1) as u8;
        let tag = format!("{n}-{}", std::process::id());
        let net = Net {
            workload: format!("cw-w-{tag}"),
            peer: format!("cw-p-{tag}"),
            subnet: n,
            servers: Vec::new(),
        };
        for ns in [&net.workload, &net.peer] {
            sh("ip", &["netns", "add", ns])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        let (w, p) = (format!("w{n}"), format!("p{n}"));
        sh(
            "ip",
            &[
                "link",
                "add",
                &w,
                "netns",
                &net.workload,
                "type",
                "veth",
                "peer",
                "name",
                &p,
                "netns",
                &net.peer,
            ],
        )?;
        for (ns, dev, ip) in [
            (&net.workload, &w, net.workload_ip()),
            (&net.peer, &p, net.peer_ip()),
        ] {
            sh(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            )?;
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }

    fn workload_ip(&self) -> String {
        format!("10.201.{}.2", self.subnet)
    }

    fn peer_ip(&self) -> String {
        format!("10.201.{}.1", self.subnet)
    }

    /// Starts a [`SERVER`] in `ns` and waits until it listens.
    fn serve(&mut self, ns: &str, specs: &[String]) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/python3", "-c", SERVER])
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        self.servers.push(child);
        anyhow::ensure!(line.trim() == "ready", "server in {ns}: {line:?}");
        Ok(())
    }

    /// Where a connection from the workload (as `uid`, root by default) lands: the
    /// answering server's name and the original destination it saw.
    fn call(
        &self,
        ns: &str,
        uid: Option<u32>,
        proto: &str,
        ip: &str,
        port: u16,
    ) -> anyhow::Result<String> {
        let mut args = vec!["netns".to_owned(), "exec".into(), ns.into()];
        if let Some(uid) = uid {
            args.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ]);
        }
        args.extend([
            "/usr/bin/python3".into(),
            "-c".into(),
            CLIENT.into(),
            proto.into(),
            ip.into(),
            port.to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(sh("ip", &args)?.trim().to_owned())
    }

    fn causeway(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = causeway_bin();
        let mut all = vec![
            "netns",
            "exec",
            &self.workload,
            bin.to_str().context("a UTF-8 path")?,
        ];
        all.extend(args);
        sh("ip", &all)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.workload, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The rules in the workload namespace, in `backend`'s words.
fn rules(net: &Net, backend: &str) -> anyhow::Result<String> {
    let ns = net.workload.as_str();
    Ok(match backend {
        "nftables" => sh("ip", &["netns", "exec", ns, "nft", "list", "ruleset"])?,
        _ => {
            sh(
                "ip",
                &["netns", "exec", ns, "iptables-legacy", "-t", "nat", "-S"],
            )? + &sh(
                "ip",
                &["netns", "exec", ns, "ip6tables-legacy", "-t", "nat", "-S"],
            )?
        }
    })
}

fn redirects_and_exempts_as_asked(backend: &str) -> anyhow::Result<()> {
    let mut net = Net::new()?;
    let (w, p) = (net.workload.clone(), net.peer.clone());
    let (wip, pip) = (net.workload_ip(), net.peer_ip());
    net.serve(
        &w,
        &[
            "sidecar-outbound:0.0.0.0:15001:tcp".into(),
            "sidecar-inbound:0.0.0.0:20001:tcp".into(),
            "app:0.0.0.0:8080:tcp".into(),
            "sidecar-dns:0.0.0.0:15053:udp".into(),
        ],
    )?;
    net.serve(
        &p,
        &[
            format!("remote:{pip}:80:tcp"),
            format!("remote-ssh:{pip}:22:tcp"),
            format!("remote-dns:{pip}:53:udp"),
        ],
    )?;
    let before = rules(&net, backend)?;
    assert_eq!(
        net.call(&w, None, "tcp", &pip, 80)?,
        format!("remote {pip}:80"),
        "no rules yet"
    );

    let installed = net.causeway(&[
        "dataplane",
        "install-redirect",
        "--backend",
        backend,
        "--uid",
        "4242",
        "--inbound",
        "8080:20001",
        "--dns-port",
        "15053",
        "--exclude-outbound-ports",
        "22",
    ])?;
    assert!(installed.contains("15001"), "{installed}");
    // Outbound: to the sidecar, which learns where the connection was going.
    assert_eq!(
        net.call(&w, None, "tcp", &pip, 80)?,
        format!("sidecar-outbound {pip}:80")
    );
    // The sidecar's own user, and an excluded port, go straight out.
    assert_eq!(
        net.call(&w, Some(4242), "tcp", &pip, 80)?,
        format!("remote {pip}:80")
    );
    assert_eq!(
        net.call(&w, None, "tcp", &pip, 22)?,
        format!("remote-ssh {pip}:22")
    );
    // DNS to the sidecar's DNS port.
    assert_eq!(net.call(&w, None, "udp", &pip, 53)?, "sidecar-dns");
    // Inbound to the application's port: to its sidecar listener.
    assert_eq!(
        net.call(&p, None, "tcp", &wip, 8080)?,
        format!("sidecar-inbound {wip}:8080")
    );
    // Loopback is left alone.
    assert_eq!(
        net.call(&w, None, "tcp", "127.0.0.1", 8080)?,
        "app 127.0.0.1:8080"
    );

    // Installing twice is refused; uninstalling restores the rules as they were.
    let again = net.causeway(&[
        "dataplane",
        "install-redirect",
        "--backend",
        backend,
        "--uid",
        "4242",
    ]);
    assert!(
        format!("{again:?}").contains("installed already"),
        "{again:?}"
    );
    net.causeway(&["dataplane", "uninstall-redirect", "--backend", backend])?;
    assert_eq!(rules(&net, backend)?, before);
    assert_eq!(
        net.call(&w, None, "tcp", &pip, 80)?,
        format!("remote {pip}:80")
    );
    assert_eq!(
        net.call(&p, None, "tcp", &wip, 8080)?,
        format!("app {wip}:8080")
    );
    Ok(())
}

/// It refuses, saying why, where it cannot work: without CAP_NET_ADMIN (another user
/// in the namespace), and over another mesh's rules (left as they were).
fn refuses_where_it_cannot_work(backend: &str) -> anyhow::Result<()> {
    let net = Net::new()?;
    let ns = net.workload.as_str();
    let bin = causeway_bin();
    let bin = bin.to_str().context("a UTF-8 path")?;
    let install = [
        "dataplane",
        "install-redirect",
        "--backend",
        backend,
        "--uid",
        "4242",
    ];
    let mut as_user = vec![
        "netns",
        "exec",
        ns,
        "setpriv",
        "--reuid=4242",
        "--regid=4242",
        "--clear-groups",
        "--inh-caps=-all",
        bin,
    ];
    as_user.extend(install);
    let refused = sh("ip", &as_user).expect_err("installed without CAP_NET_ADMIN");
    assert!(refused.to_string().contains("CAP_NET_ADMIN"), "{refused}");
    // Another mesh's rules.
    match backend {
        "nftables" => {
            sh(
                "ip",
                &["netns", "exec", ns, "nft", "add", "table", "ip", "kuma"],
            )?;
        }
        _ => {
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "iptables-legacy",
                    "-t",
                    "nat",
                    "-N",
                    "ISTIO_OUTPUT",
                ],
            )?;
        }
    }
    let before = rules(&net, backend)?;
    let refused = net
        .causeway(&install)
        .expect_err("installed over another mesh");
    assert!(refused.to_string().contains("another tool"), "{refused}");
    assert_eq!(rules(&net, backend)?, before, "nothing changed");
    Ok(())
}

#[test]
fn install_redirect_refuses_where_it_cannot_work_nftables() -> anyhow::Result<()> {
    refuses_where_it_cannot_work("nftables")
}

#[test]
fn install_redirect_refuses_where_it_cannot_work_iptables_legacy() -> anyhow::Result<()> {
    refuses_where_it_cannot_work("iptables-legacy")
}

#[test]
fn install_redirect_with_nftables() -> anyhow::Result<()> {
    redirects_and_exempts_as_asked("nftables")
}

#[test]
fn install_redirect_with_iptables_legacy() -> anyhow::Result<()> {
    redirects_and_exempts_as_asked("iptables-legacy")
}
