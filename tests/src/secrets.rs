//! Every private key a stopped control plane holds, read the way only its operator can:
//! by opening its store with its seal key (kept outside the data dir). Tests use them to
//! search logs and copied data dirs for keys that must never appear there.

use anyhow::Context as _;
use causeway_pki::sealing::Sealer;

use crate::{GlobalNode, ZoneCp};

/// A private key, as a control plane uses it.
pub enum Key {
    /// PEM (PKCS#8).
    Pem(String),
    /// Raw key bytes, hex (the token-signing keys).
    Hex(String),
}

/// Every key a stopped global node holds (the cluster's CAs and signing keys, the root CA
/// of each of `meshes`), named.
pub fn global_keys(node: &GlobalNode, meshes: &[&str]) -> anyhow::Result<Vec<(String, Key)>> {
    anyhow::ensure!(!node.is_running(), "node {} must be stopped", node.id);
    let sealer = Sealer::from_file("--seal-key-file", &node.seal_key_file())?;
    let store = causeway_global_cp::store::Store::open(&node.dir.join("db"))?;
    let s = store
        .secrets()?
        .context("the cluster's secrets")?
        .open(&sealer)?;
    let mut keys = vec![
        ("the API CA key".into(), Key::Pem(s.api_ca_key_pem)),
        ("the zone CA key".into(), Key::Pem(s.zone_ca_key_pem)),
        ("the zone token key".into(), Key::Hex(s.zone_token_key)),
        (
            "the dataplane token key".into(),
            Key::Hex(s.dataplane_token_key),
        ),
    ];
    if !s.raft_ca_key_pem.is_empty() {
        keys.push(("the Raft CA key".into(), Key::Pem(s.raft_ca_key_pem)));
    }
    // This node's own Raft key, kept sealed in its data dir.
    let raft_key = node.dir.join("raft").join("node-key.sealed");
    if raft_key.exists() {
        let sealed = std::fs::read_to_string(&raft_key)?;
        keys.push((
            "this node's Raft key".into(),
            Key::Pem(sealer.open(sealed.trim())?),
        ));
    }
    for mesh in meshes {
        let ca = store
            .mesh_ca(mesh)?
            .with_context(|| format!("mesh {mesh}'s CA"))?;
        keys.push((
            format!("mesh {mesh}'s root CA key"),
            Key::Pem(sealer.open(&ca.key_pem)?),
        ));
    }
    Ok(keys)
}

/// Every key a stopped zone holds: its certificate's, its intermediate CAs', its API CA's.
pub fn zone_keys(zone: &ZoneCp) -> anyhow::Result<Vec<(String, Key)>> {
    anyhow::ensure!(!zone.is_running(), "zone {} must be stopped", zone.name);
    let sealer = std::sync::Arc::new(Sealer::from_file("--seal-key-file", &zone.seal_key_file())?);
    let store = causeway_zone_cp::store::Store::open(&zone.dir.join("db"), sealer.clone())?;
    let id = store.identity()?.context("the zone's identity")?;
    let mut keys = vec![("the zone certificate's key".into(), Key::Pem(id.key_pem))];
    for i in store.intermediates()? {
        keys.push((
            format!("the intermediate CA key of mesh {}", i.mesh),
            Key::Pem(i.key_pem),
        ));
    }
    let cas: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zone.dir.join("api-cas.json"))?)?;
    let sealed = cas["keySealed"]
        .as_str()
        .context("the zone API CA's sealed key")?;
    keys.push((
        "the zone API CA key".into(),
        Key::Pem(sealer.open(sealed.trim())?),
    ));
    Ok(keys)
}
