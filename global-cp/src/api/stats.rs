//! `GET /meshes/{mesh}/stats`: the mesh's golden signals across zones (see
//! [`causeway_api::stats`]), by service, zone, caller or callee, over the last 1, 5 or
//! 15 minutes.
//!
//! Zones report to whichever global node serves their KDS session, and the reports stay
//! in that node's memory (they change every few seconds; Raft is no place for them). A
//! node answers from its own sessions and asks each other node that serves a connected
//! zone for that zone's report (`?raw=true`, marked forwarded so it goes no further).
//! A zone whose report cannot be had is named under `missing`, and the rest is shown.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use causeway_api::stats::{By, Filter, StatsView, Window, ZoneReport};
use serde::Deserialize;

use super::zones::{FORWARDED_HEADER, forward_get, json_bytes, require_mesh};
use super::{ApiError, ApiResult, ApiState};

#[derive(Deserialize)]
pub(super) struct StatsQuery {
    window: Option<String>,
    by: Option<String>,
    service: Option<String>,
    zone: Option<String>,
    /// The zones' reports as held, unmerged (what nodes ask each other for).
    #[serde(default)]
    raw: bool,
}

pub(super) async fn mesh_stats(
    State(st): State<ApiState>,
    Path(mesh): Path<String>,
    Query(q): Query<StatsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let window = Window::parse(q.window.as_deref().unwrap_or("1m"))
        .map_err(|e| ApiError::bad("window", e))?;
    let by = By::parse(q.by.as_deref().unwrap_or("service")).map_err(|e| ApiError::bad("by", e))?;
    require_mesh(&st, &mesh)?;
    let (mut reports, missing) = zone_reports(&st, &mesh, &headers).await?;
    if q.raw {
        let json = serde_json::to_vec(&reports).expect("reports serialize");
        return Ok(json_bytes(StatusCode::OK, json));
    }
    let signals: Vec<_> = reports
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.signals))
        .collect();
    let filter = Filter {
        service: q.service,
        zone: q.zone,
    };
    reports.sort_by(|a, b| a.zone.cmp(&b.zone));
    let view = StatsView {
        rows: causeway_api::stats::rows(&signals, by, window, &filter),
        mesh,
        window,
        by,
        zones: reports,
        missing,
    };
    let json = serde_json::to_vec(&view).expect("views serialize");
    Ok(json_bytes(StatusCode::OK, json))
}

/// Adds the reports of connected zones that other nodes serve, asking each such node
/// once; a zone whose report could not be had goes to `missing` with the reason.
/// The last report of every zone for `mesh`: the ones connected to this node, and (on a
/// request not forwarded already) the others' from the nodes they are connected to.
/// Zones whose report could not be had are in the second part, with why.
pub(super) async fn zone_reports(
    st: &ApiState,
    mesh: &str,
    headers: &HeaderMap,
) -> ApiResult<(Vec<ZoneReport>, BTreeMap<String, String>)> {
    let mut reports = st
        .kds
        .as_ref()
        .map(|k| k.zone_stats(mesh))
        .unwrap_or_default();
    let mut missing = BTreeMap::new();
    if !headers.contains_key(FORWARDED_HEADER) {
        gather_from_peers(st, mesh, headers, &mut reports, &mut missing).await?;
    }
    Ok((reports, missing))
}

async fn gather_from_peers(
    st: &ApiState,
    mesh: &str,
    headers: &HeaderMap,
    reports: &mut Vec<ZoneReport>,
    missing: &mut BTreeMap<String, String>,
) -> ApiResult<()> {
    let me = st.raft.view().borrow().id;
    let have: BTreeSet<String> = reports.iter().map(|r| r.zone.clone()).collect();
    let mut by_node: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for z in st.store.zone_statuses()? {
        if z.connected && z.node != me && !have.contains(&z.zone) {
            by_node.entry(z.node).or_default().push(z.zone);
        }
    }
    if by_node.is_empty() {
        return Ok(());
    }
    let members = st.store.members()?;
    let path = format!("/meshes/{mesh}/stats?raw=true");
    let asks = by_node.into_iter().map(|(node, zones)| {
        let addr = members.get(&node).map(|m| m.api_addr.clone());
        let path = path.clone();
        async move {
            let got = match addr {
                None => Err(format!("global node {node} is not a member")),
                Some(addr) => match forward_get(st, &addr, &path, headers).await {
                    Ok((s, body)) if s.is_success() => {
                        serde_json::from_slice::<Vec<ZoneReport>>(&body).map_err(|e| e.to_string())
                    }
                    Ok((s, body)) => Err(format!("{s}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => Err(e),
                },
            };
            (node, zones, got)
        }
    });
    for (node, zones, got) in futures::future::join_all(asks).await {
        match got {
            Ok(theirs) => {
                for zone in zones {
                    match theirs.iter().find(|r| r.zone == zone) {
                        Some(r) => reports.push(r.clone()),
                        None => {
                            missing.insert(
                                zone,
                                format!("global node {node} holds no report of it yet"),
                            );
                        }
                    }
                }
            }
            Err(e) => {
                for zone in zones {
                    missing.insert(zone, format!("global node {node} did not answer: {e}"));
                }
            }
        }
    }
    Ok(())
}
