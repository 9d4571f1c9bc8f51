//! The binary's edge: it refuses to run outside Terraform, and under Terraform it prints
//! go-plugin's handshake line and listens on loopback. (The provider's behaviour with the
//! real Terraform binary is tested in `tests/tests/terraform.rs`.)

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-causeway");
const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

#[test]
fn refuses_to_run_by_hand() {
    let out = Command::new(BIN)
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .output()
        .expect("run the provider");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Terraform plugin"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed a handshake without the cookie"
    );
}

#[test]
fn prints_the_handshake_and_listens_on_loopback() {
    let mut child = Command::new(BIN)
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_CLIENT_CERT", "unused: any value asks for TLS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the handshake");
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    let connected = parts
        .get(3)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| {
            (
                a.ip().is_loopback(),
                std::net::TcpStream::connect(a).is_ok(),
            )
        });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(parts.len(), 6, "{line}");
    assert_eq!(&parts[..3], ["1", "6", "tcp"], "{line}");
    assert_eq!(parts[4], "grpc", "{line}");
    assert!(parts[5].len() > 100, "no certificate in {line}");
    assert_eq!(connected, Some((true, true)), "{line}");
}
