//! The admin listener: `/ready` (a config from the zone control plane), `/config` (the
//! current routes), `/metrics` (Prometheus).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Ingress;

pub(crate) async fn serve(
    ingress: Arc<Ingress>,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .with_state(ingress);
    causeway_dataplane::admin::serve_router(app, addr).await
}

async fn ready(State(i): State<Arc<Ingress>>) -> impl IntoResponse {
    match i.config.borrow().as_deref() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no config from the zone control plane yet\n",
        ),
        Some(_) => (StatusCode::OK, "ready\n"),
    }
}

async fn config(State(i): State<Arc<Ingress>>) -> impl IntoResponse {
    let cfg = i.config.borrow().clone();
    axum::Json(serde_json::json!({ "config": cfg.as_deref() }))
}

async fn metrics(State(i): State<Arc<Ingress>>) -> impl IntoResponse {
    let m = &i.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    out.push_str("# HELP causeway_ingress_connections_total Connections from other zones, by outcome.\n# TYPE causeway_ingress_connections_total counter\n");
    for (result, c) in [
        ("forwarded", &m.forwarded),
        ("refused_unknown_sni", &m.refused_unknown_sni),
        ("refused_not_tls", &m.refused_not_tls),
        ("refused_drill", &m.refused_drill),
        ("refused_limit", &m.refused_limit),
        ("stalled_drill", &m.stalled_drill),
        ("refused_no_config", &m.refused_no_config),
        ("upstream_failed", &m.upstream_failed),
    ] {
        let _ = writeln!(
            out,
            "causeway_ingress_connections_total{{result=\"{result}\"}} {}",
            get(c)
        );
    }
    let _ = writeln!(
        out,
        "# HELP causeway_ingress_quic_streams_total Streams accepted over QUIC.\n# TYPE causeway_ingress_quic_streams_total counter\ncauseway_ingress_quic_streams_total {}",
        get(&m.quic_streams)
    );
    let _ = writeln!(
        out,
        "# HELP causeway_ingress_active_connections Connections open now.\n# TYPE causeway_ingress_active_connections gauge\ncauseway_ingress_active_connections {}",
        get(&i.active)
    );
    let _ = writeln!(
        out,
        "# HELP causeway_ingress_bytes_total Bytes forwarded, by direction.\n# TYPE causeway_ingress_bytes_total counter\ncauseway_ingress_bytes_total{{direction=\"in\"}} {}\ncauseway_ingress_bytes_total{{direction=\"out\"}} {}",
        get(&m.bytes_in),
        get(&m.bytes_out)
    );
    destination_metrics(&i, &mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

/// The per-destination series, labelled with the ingress's mesh and zone.
fn destination_metrics(i: &Ingress, out: &mut String) {
    let cfg = i.config.borrow().clone();
    let (mesh, zone) = cfg
        .as_deref()
        .map_or(("", ""), |c| (c.mesh.as_str(), c.zone.as_str()));
    let destinations: Vec<(String, Arc<crate::Destination>)> = i
        .metrics
        .destinations
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    out.push_str("# HELP causeway_ingress_destination_connections_total Connections from other zones, by destination service and outcome.\n# TYPE causeway_ingress_destination_connections_total counter\n");
    for (service, d) in &destinations {
        for (result, c) in [
            ("forwarded", &d.forwarded),
            ("upstream_failed", &d.upstream_failed),
        ] {
            let _ = writeln!(
                out,
                "causeway_ingress_destination_connections_total{{mesh=\"{mesh}\",zone=\"{zone}\",service=\"{service}\",result=\"{result}\"}} {}",
                get(c)
            );
        }
    }
    out.push_str("# HELP causeway_ingress_destination_active_connections Connections open now, by destination service.\n# TYPE causeway_ingress_destination_active_connections gauge\n");
    for (service, d) in &destinations {
        let _ = writeln!(
            out,
            "causeway_ingress_destination_active_connections{{mesh=\"{mesh}\",zone=\"{zone}\",service=\"{service}\"}} {}",
            get(&d.active)
        );
    }
    out.push_str("# HELP causeway_ingress_destination_bytes_total Bytes forwarded by destination service and direction, counted as they move.\n# TYPE causeway_ingress_destination_bytes_total counter\n");
    for (service, d) in &destinations {
        for (direction, c) in [("in", &d.bytes.read), ("out", &d.bytes.written)] {
            let _ = writeln!(
                out,
                "causeway_ingress_destination_bytes_total{{mesh=\"{mesh}\",zone=\"{zone}\",service=\"{service}\",direction=\"{direction}\"}} {}",
                get(c)
            );
        }
    }
}
