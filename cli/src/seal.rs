//! `causeway seal generate-key|status`: the seal key that keeps the control planes' keys
//! sealed at rest, and its rotation. A rotation restarts each node with the new key as
//! `--seal-key-file` and the old one as `--previous-seal-key-file` (each seals what it
//! holds again at start), checks `causeway seal status` until every node runs with the new
//! key alone and holds nothing under another, then restarts them without the old key.

use std::path::PathBuf;

use serde_json::Value;

use crate::client::Client;
use crate::config::ConnArgs;

/// `causeway seal`: the seal key of the control planes.
#[derive(clap::Subcommand)]
pub(crate) enum SealCmd {
    /// Write a new seal key (32 random bytes, hex) to a new file (0600), for a first
    /// start or a rotation: give every global node the same file.
    GenerateKey {
        /// Where to write it, outside every data dir; an existing file is never
        /// overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Each global node's seal key (a fingerprint, never the key), how many of the keys
    /// its store holds are sealed under it, the previous key or neither, and what a
    /// rotation still waits for.
    Status,
}

pub(crate) async fn seal(conn: &ConnArgs, c: SealCmd) -> anyhow::Result<()> {
    match c {
        SealCmd::GenerateKey { out } => {
            generate_key(&out)?;
            println!(
                "wrote a new seal key to {} (0600): back it up, and give every node of the cluster a copy",
                out.display()
            );
            Ok(())
        }
        SealCmd::Status => {
            let client = Client::new(conn.resolve()?)?;
            let s = client.get("/cluster/seal").await?;
            print!("{}", render(&s));
            Ok(())
        }
    }
}

/// Writes a fresh key to `out`, never over an existing file.
fn generate_key(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "--out {} exists: a seal key file is never overwritten (it may be the only copy of a key); give another path",
                out.display()
            ),
            _ => anyhow::anyhow!("--out {}: {e}", out.display()),
        })?;
    f.write_all(causeway_global_cp::sealing::Sealer::generate_key_file().as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn render(s: &Value) -> String {
    let mut out = format!(
        "seal key {}: {}\n",
        s["keyId"].as_str().unwrap_or("?"),
        if s["done"] == true {
            "every node runs with it and holds nothing under another key"
        } else {
            "a rotation is under way"
        }
    );
    out.push_str(&format!(
        "{:<6} {:<18} {:<18} {:>6} {:>9} {:>8}\n",
        "NODE", "KEY", "PREVIOUS", "UNDER", "PREVIOUS", "NEITHER"
    ));
    for n in s["nodes"].as_array().into_iter().flatten() {
        if let Some(e) = n["error"].as_str() {
            out.push_str(&format!("{:<6} did not answer: {e}\n", n["node"]));
            continue;
        }
        out.push_str(&format!(
            "{:<6} {:<18} {:<18} {:>6} {:>9} {:>8}\n",
            n["node"],
            n["keyId"].as_str().unwrap_or("?"),
            n["previousKeyId"].as_str().unwrap_or("-"),
            n["sealedUnderKey"],
            n["sealedUnderPrevious"],
            n["sealedUnderNeither"],
        ));
    }
    for w in s["waiting"].as_array().into_iter().flatten() {
        out.push_str(&format!("waiting: {}\n", w.as_str().unwrap_or("?")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_opens_as_a_seal_key_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new.key");
        generate_key(&out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        causeway_global_cp::sealing::Sealer::from_file("--seal-key-file", &out).unwrap();
        let before = std::fs::read_to_string(&out).unwrap();
        let e = generate_key(&out).unwrap_err();
        assert!(e.to_string().contains("never overwritten"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), before);
    }

    #[test]
    fn the_status_names_each_node_and_what_the_rotation_waits_for() {
        let s = serde_json::json!({"keyId": "aaaa", "done": false,
            "waiting": ["node 2 runs with seal key bbbb, not aaaa: restart it"],
            "nodes": [{"node": 1, "keyId": "aaaa", "previousKeyId": "bbbb", "sealedUnderKey": 7,
                       "sealedUnderPrevious": 0, "sealedUnderNeither": 0},
                      {"node": 2, "keyId": "bbbb", "sealedUnderKey": 5,
                       "sealedUnderPrevious": 0, "sealedUnderNeither": 2}]});
        let text = render(&s);
        assert!(text.contains("a rotation is under way"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("1 ") && l.contains("bbbb") && l.contains(" 7 ")),
            "{text}"
        );
        assert!(
            text.contains("waiting: node 2 runs with seal key bbbb"),
            "{text}"
        );
    }
}
