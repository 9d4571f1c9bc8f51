//! `GET /cluster/seal`: which seal key each node of the cluster runs with, and how many
//! of the keys its store holds are sealed under that key, under the previous one (a
//! rotation under way) or under neither. It is what an operator reads during a seal key
//! rotation before restarting the nodes without the previous key and destroying it
//! (docs/global-control-plane.md, "Rotating the seal key").
//!
//! Each node answers for itself (`?local=true`, what nodes ask each other for) and, by
//! default, gathers every member's answer, as the stats do.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use causeway_pki::sealing::SealedUnder;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::zones::{FORWARDED_HEADER, ask_members};
use super::{ApiError, ApiResult, ApiState};

#[derive(Deserialize)]
pub(super) struct SealQuery {
    /// This node only.
    #[serde(default)]
    local: bool,
}

/// One node's seal key and what its store holds under it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeSeal {
    pub node: u64,
    /// Fingerprint of the node's seal key.
    pub key_id: String,
    /// Fingerprint of the key it was started with as `--previous-seal-key-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    pub sealed_under_key: u64,
    pub sealed_under_previous: u64,
    /// Keys its own seal key cannot open: sealed by a node on another key.
    pub sealed_under_neither: u64,
    /// Why the node could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn local(st: &ApiState) -> ApiResult<NodeSeal> {
    let mut me = NodeSeal {
        node: st.raft.view().borrow().id,
        key_id: st.sealer.key_id(),
        previous_key_id: st.sealer.previous_key_id(),
        ..NodeSeal::default()
    };
    st.store.map_sealed(|_, sealed| {
        match st.sealer.sealed_under(sealed) {
            SealedUnder::Current => me.sealed_under_key += 1,
            SealedUnder::Previous => me.sealed_under_previous += 1,
            SealedUnder::Unknown => me.sealed_under_neither += 1,
        }
        Ok::<_, ApiError>(None)
    })?;
    Ok(me)
}

/// What a rotation still waits for, node by node, measured against `key_id` (the key
/// of the node asked); empty when every node runs with that key alone and holds
/// nothing under another.
pub(crate) fn waiting(key_id: &str, nodes: &[NodeSeal]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if let Some(e) = &n.error {
            out.push(format!("node {} did not answer: {e}", n.node));
        } else if n.key_id != key_id {
            out.push(format!(
                "node {} runs with seal key {}, not {key_id}: restart it with the new key as --seal-key-file and its current one as --previous-seal-key-file",
                n.node, n.key_id
            ));
        } else if n.sealed_under_previous > 0 || n.sealed_under_neither > 0 {
            out.push(format!(
                "node {} holds {} keys sealed under another seal key (written while some node was on it): restart it again with both keys",
                n.node,
                n.sealed_under_previous + n.sealed_under_neither
            ));
        } else if n.previous_key_id.is_some() {
            out.push(format!(
                "node {} is done; restart it without --previous-seal-key-file",
                n.node
            ));
        }
    }
    out
}

/// `GET /cluster/seal`.
pub(super) async fn status(
    State(st): State<ApiState>,
    Query(q): Query<SealQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let me = local(&st)?;
    if q.local || headers.contains_key(FORWARDED_HEADER) {
        return Ok(Json(serde_json::to_value(&me).expect("encodes")));
    }
    let mut nodes = vec![me.clone()];
    nodes.extend(
        ask_members(
            &st,
            &headers,
            "/cluster/seal?local=true",
            me.node,
            |node, e| NodeSeal {
                node,
                error: Some(e),
                ..NodeSeal::default()
            },
        )
        .await?,
    );
    nodes.sort_by_key(|n| n.node);
    let waiting = waiting(&me.key_id, &nodes);
    Ok(Json(json!({
        "keyId": me.key_id,
        "done": waiting.is_empty(),
        "waiting": waiting,
        "nodes": nodes,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, key: &str) -> NodeSeal {
        NodeSeal {
            node: id,
            key_id: key.into(),
            sealed_under_key: 6,
            ..NodeSeal::default()
        }
    }

    #[test]
    fn a_rotation_waits_for_every_node_on_the_new_key_alone_with_nothing_under_another() {
        let steady = [node(1, "new"), node(2, "new"), node(3, "new")];
        assert!(waiting("new", &steady).is_empty());

        // Node 2 still on the old key; node 3 on both with a straggler; node 1 done
        // but still given the previous key; an unreachable node is named too.
        let mut rotating = steady.clone();
        rotating[0].previous_key_id = Some("old".into());
        rotating[1].key_id = "old".into();
        rotating[2].previous_key_id = Some("old".into());
        rotating[2].sealed_under_previous = 1;
        let mut nodes = rotating.to_vec();
        nodes.push(NodeSeal {
            node: 4,
            error: Some("connection refused".into()),
            ..NodeSeal::default()
        });
        let w = waiting("new", &nodes);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].contains("node 1 is done; restart it without"), "{w:?}");
        assert!(
            w[1].contains("node 2 runs with seal key old, not new"),
            "{w:?}"
        );
        assert!(w[2].contains("node 3 holds 1 keys"), "{w:?}");
        assert!(w[3].contains("node 4 did not answer"), "{w:?}");
    }
}
