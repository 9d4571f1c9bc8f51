//! A node's Raft identity: the cluster's Raft CA and this node's certificate, bound to
//! its id (`node-<id>.causeway-raft`). Raft runs in mutual TLS unless the operator
//! passes `--insecure-raft-plaintext`.
//!
//! The identity comes from one of three places:
//! - the operator's own certificates (`--raft-tls-ca/-cert/-key`);
//! - bootstrap: a node that forms a new cluster alone generates the cluster's Raft CA
//!   (which then goes into the cluster's secrets, sealed, so any node can sign joins);
//! - a join token ([`crate::join`]).
//!
//! Generated identities are kept in `<data-dir>/raft/`: certificates in PEM, keys sealed
//! under the seal key, so a copy of the data dir holds no usable key.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use causeway_pki::sealing::Sealer;
use causeway_pki::{CertKey, RaftTls};

const DIR: &str = "raft";
const CA_CERT: &str = "ca.pem";
/// Only on the node that formed the cluster: the CA key, until (and after) it is in the
/// cluster's secrets.
const CA_KEY: &str = "ca-key.sealed";
const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node-key.sealed";
/// The members a join named.
const MEMBERS: &str = "members.json";

fn path(data_dir: &Path, file: &str) -> PathBuf {
    data_dir.join(DIR).join(file)
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn write(data_dir: &Path, file: &str, contents: &str) -> anyhow::Result<()> {
    causeway_pki::private_dir(&data_dir.join(DIR))?;
    let p = path(data_dir, file);
    causeway_pki::write_private(&p, contents).with_context(|| format!("writing {}", p.display()))
}

/// Whether this data dir holds a generated Raft identity.
pub(crate) fn exists(data_dir: &Path) -> bool {
    path(data_dir, NODE_CERT).exists()
}

/// Whether this data dir's identity came from a join (it holds no CA key).
pub(crate) fn joined(data_dir: &Path) -> bool {
    exists(data_dir) && !path(data_dir, CA_KEY).exists()
}

/// Keeps the members a join named, so the node can answer them until its store knows
/// them (a restart before the first snapshot).
pub(crate) fn save_members(
    data_dir: &Path,
    members: &[crate::command::Member],
) -> anyhow::Result<()> {
    write(
        data_dir,
        MEMBERS,
        &serde_json::to_string(members).expect("members encode"),
    )
}

/// The members a join named, if any.
pub(crate) fn members(data_dir: &Path) -> Vec<crate::command::Member> {
    std::fs::read_to_string(path(data_dir, MEMBERS))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The identity kept in `data_dir`, if any.
pub(crate) fn load(data_dir: &Path, sealer: &Sealer) -> anyhow::Result<Option<RaftTls>> {
    if !exists(data_dir) {
        return Ok(None);
    }
    let key = sealer
        .open(read(&path(data_dir, NODE_KEY))?.trim())
        .context("opening this node's Raft key (is --seal-key-file the cluster's key?)")?;
    let t = RaftTls {
        ca_pem: read(&path(data_dir, CA_CERT))?,
        node: CertKey {
            cert_pem: read(&path(data_dir, NODE_CERT))?,
            key_pem: key,
        },
    };
    t.server()?;
    t.client()?;
    Ok(Some(t))
}

/// Keeps an identity (the CA certificate and this node's certificate and key).
pub(crate) fn save(
    data_dir: &Path,
    sealer: &Sealer,
    ca_pem: &str,
    node: &CertKey,
) -> anyhow::Result<RaftTls> {
    let t = RaftTls {
        ca_pem: ca_pem.to_string(),
        node: node.clone(),
    };
    t.server()?;
    t.client()?;
    write(data_dir, CA_CERT, ca_pem)?;
    write(data_dir, NODE_KEY, &sealer.seal(&node.key_pem))?;
    // The certificate last: it marks the identity complete (see `exists`).
    write(data_dir, NODE_CERT, &node.cert_pem)?;
    Ok(t)
}

/// Generates the cluster's Raft CA and this node's certificate (a node forming a new
/// cluster alone).
pub(crate) fn bootstrap(data_dir: &Path, sealer: &Sealer, id: u64) -> anyhow::Result<RaftTls> {
    let ca = causeway_pki::generate_ca(causeway_pki::RAFT_CA_NAME)?;
    let node = causeway_pki::issue_raft_node(&ca, id)?;
    write(data_dir, CA_KEY, &sealer.seal(&ca.key_pem))?;
    save(data_dir, sealer, &ca.cert_pem, &node)
}

/// The Raft CA this node generated when it formed the cluster, if it did.
pub(crate) fn generated_ca(data_dir: &Path, sealer: &Sealer) -> anyhow::Result<Option<CertKey>> {
    let key = path(data_dir, CA_KEY);
    if !key.exists() {
        return Ok(None);
    }
    Ok(Some(CertKey {
        cert_pem: read(&path(data_dir, CA_CERT))?,
        key_pem: sealer
            .open(read(&key)?.trim())
            .context("opening the Raft CA key")?,
    }))
}

/// Seals this node's Raft keys again under the current seal key when they are under the
/// previous one (a seal key rotation). Returns how many were sealed again.
pub(crate) fn reseal(data_dir: &Path, sealer: &Sealer) -> anyhow::Result<usize> {
    let mut n = 0;
    for file in [NODE_KEY, CA_KEY] {
        let p = path(data_dir, file);
        if !p.exists() {
            continue;
        }
        let sealed = read(&p)?;
        if let Some(again) = sealer
            .reseal(sealed.trim())
            .with_context(|| format!("{} is sealed under neither seal key", p.display()))?
        {
            write(data_dir, file, &again)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrapped_identity_reloads_and_keeps_no_key_in_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&[1u8; 32]).unwrap();
        assert!(load(tmp.path(), &sealer).unwrap().is_none());
        let made = bootstrap(tmp.path(), &sealer, 3).unwrap();
        let again = load(tmp.path(), &sealer).unwrap().unwrap();
        assert_eq!(again.node.key_pem, made.node.key_pem);
        assert_eq!(again.ca_pem, made.ca_pem);
        let ca = generated_ca(tmp.path(), &sealer).unwrap().unwrap();
        assert!(causeway_pki::key_matches_cert(&ca.cert_pem, &ca.key_pem));
        let der = causeway_pki::certs(&made.node.cert_pem, "node")
            .unwrap()
            .remove(0);
        assert_eq!(causeway_pki::raft_node_id(&der), Some(3));
        for entry in std::fs::read_dir(tmp.path().join(DIR)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
        // Another seal key opens nothing.
        let other = Sealer::new(&[2u8; 32]).unwrap();
        assert!(load(tmp.path(), &other).is_err());
    }
}
