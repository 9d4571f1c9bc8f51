//! End to end: MeshMetric. A real sidecar serves its metrics at the port and path a
//! policy's Prometheus backend sets, in an exposition Prometheus' own `promtool`
//! accepts, and stops when the policy's backends are emptied.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use causeway_tests::mesh::{MeshFixture, WAIT, WebCallsBackend};
use causeway_tests::{admin_config, eventually, free_addr, plain_http, promtool_complaints, put};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::metric;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_its_metrics_where_mesh_metric_says() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs,
        backend_admin,
        out,
        ..
    } = fx.web_calls_backend().await?;
    let port = free_addr().port();
    let policy = |backends: serde_json::Value| {
        json!({"type": "MeshMetric", "mesh": "default", "name": "backend-metrics",
               "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                        "default": {"backends": backends}}})
    };
    put(
        &fx.c,
        "/meshes/default/meshmetrics/backend-metrics",
        &policy(json!([{"type": "Prometheus", "prometheus": {"port": port, "path": "/stats/prometheus"}}])),
    )
    .await?;
    let http = plain_http();
    // A call, so the request counters have a sample.
    let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
    assert_eq!(r.status(), 200);
    let url = format!("http://127.0.0.1:{port}/stats/prometheus");
    let text = eventually(
        "backend's metrics at the policy's port and path",
        WAIT,
        || async {
            let r = http.get(&url).send().await.ok()?;
            let text = r.text().await.ok()?;
            (causeway_api::exposition::sum(
                &text,
                "causeway_requests_total{direction=\"inbound\",service=\"backend\",peer=\"web\"}",
            ) > 0.0)
                .then_some(text)
        },
    )
    .await?;
    if let Some(complaints) = promtool_complaints(&text)? {
        anyhow::bail!("promtool check metrics: {complaints}");
    }
    let other = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?;
    assert_eq!(other.status(), 404, "only the policy's path");

    // An empty list turns the endpoint off (the admin address keeps /metrics).
    put(
        &fx.c,
        "/meshes/default/meshmetrics/backend-metrics",
        &policy(json!([])),
    )
    .await?;
    eventually("the endpoint gone", WAIT, || async {
        let cfg = admin_config(&http, backend_admin).await?;
        let none = cfg["config"].get("metricsEndpoints").is_none();
        (none && http.get(&url).send().await.is_err()).then_some(())
    })
    .await?;
    let admin = http
        .get(format!("http://{backend_admin}/metrics"))
        .send()
        .await?;
    assert_eq!(admin.status(), 200);
    Ok(())
}

/// `prometheus.tls.mode: ActiveMTLSBackend` (or `mtls: true`): the endpoint is served
/// over the mesh's mTLS with the proxy's workload certificate, so a scraper holding a
/// certificate of the mesh reads it, while plain HTTP, or TLS without a certificate of
/// the mesh, gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_endpoint_over_mtls_answers_only_scrapers_of_the_mesh() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs, out, ..
    } = fx.web_calls_backend().await?;
    let port = free_addr().port();
    put(
        &fx.c,
        "/meshes/default/meshmetrics/backend-metrics",
        &json!({"type": "MeshMetric", "mesh": "default", "name": "backend-metrics",
                "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                         "default": {"backends": [{"type": "Prometheus",
                             "prometheus": {"port": port, "tls": {"mode": "ActiveMTLSBackend"}}}]}}}),
    )
    .await?;
    let r = plain_http()
        .get(format!("http://127.0.0.1:{out}/"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let scraper = fx.workload_tls("prometheus", b"http/1.1").await?;
    let mesh_client = reqwest::Client::builder()
        .use_preconfigured_tls((*scraper).clone())
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let url = format!("https://127.0.0.1:{port}/metrics");
    let text = eventually("a scrape over the mesh's mTLS", WAIT, || async {
        let text = mesh_client.get(&url).send().await.ok()?.text().await.ok()?;
        (causeway_api::exposition::sum(
            &text,
            "causeway_requests_total{direction=\"inbound\",service=\"backend\",peer=\"web\"}",
        ) > 0.0)
            .then_some(text)
    })
    .await?;
    if let Some(complaints) = promtool_complaints(&text)? {
        anyhow::bail!("promtool check metrics: {complaints}");
    }
    // Plain HTTP on the same port gets no answer...
    let plain = plain_http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // ...and neither does TLS without a certificate of the mesh.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let r = anonymous.get(&url).send().await;
    assert!(
        r.is_err(),
        "a scraper without a mesh certificate was answered: {r:?}"
    );
    Ok(())
}

/// The admin and metrics listeners have limits (dataplane/src/admin.rs): 50 clients
/// that send half a request head (slowloris) do not keep a scrape from being answered,
/// and each is cut off once the 10 s header-read timeout passes; a 32 KiB request head
/// is refused with 431, never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_of_the_admin_port_are_cut_off() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let called = fx.web_calls_backend().await?;
    let admin = called.backend_admin;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(s);
    }
    let started = std::time::Instant::now();
    let r = plain_http()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?;
    assert_eq!(
        r.status(),
        200,
        "a scrape is answered while slow clients wait"
    );
    for mut s in slow {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf))
            .await
            .context("a slow client still connected after 30 s")?;
        // Closed (or answered 408) without a response to its request.
        if let Ok(n) = read {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
        }
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(9),
        "cut off by the header-read timeout, not at once: {:?}",
        started.elapsed()
    );
    let mut big = tokio::net::TcpStream::connect(admin).await?;
    let filler = "a".repeat(32 * 1024);
    big.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nx-filler: {filler}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        big.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    Ok(())
}

/// An application's metrics endpoint: a small HTTP server answering `text` to any GET.
async fn app_metrics(text: &'static str) -> anyhow::Result<std::net::SocketAddr> {
    let app =
        axum::Router::new().route("/metrics", axum::routing::get(move || async move { text }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// MeshMetric's profiles select what the endpoint serves (Basic, less an excluded
/// prefix, plus an included family that Basic lacks), and its applications' metrics
/// are served with the sidecar's, labelled with `app`; an application that does not
/// answer shows as `causeway_application_scrape_up 0`. Every variant passes promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_metric_profiles_select_the_families_and_applications_are_served_with_them()
-> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs, out, ..
    } = fx.web_calls_backend().await?;
    let app = app_metrics(
        "# HELP orders_total Orders taken.\n# TYPE orders_total counter\norders_total{kind=\"book\"} 7\n",
    )
    .await?;
    let gone = free_addr();
    let port = free_addr().port();
    put(&fx.c, "/meshes/default/meshmetrics/backend-metrics", &json!({
        "type": "MeshMetric", "mesh": "default", "name": "backend-metrics",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {
                     "sidecar": {"profiles": {
                         "appendProfiles": [{"name": "Basic"}],
                         "exclude": [{"type": "Prefix", "match": "causeway_responses"}],
                         "include": [{"type": "Regex", "match": "^causeway_access_log_.*"}]}},
                     "applications": [
                         {"name": "orders", "port": app.port(), "path": "/metrics"},
                         {"name": "gone", "port": gone.port(), "path": "/metrics"}],
                     "backends": [{"type": "Prometheus", "prometheus": {"port": port, "path": "/metrics"}}]}}})).await?;
    let http = plain_http();
    let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
    assert_eq!(r.status(), 200);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually(
        "the selected metrics at the policy's endpoint",
        WAIT,
        || async {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            text.contains("orders_total").then_some(text)
        },
    )
    .await?;
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    // Basic's golden signals, less the excluded, plus the included.
    for kept in [
        "causeway_requests_total",
        "causeway_request_duration_seconds",
        "causeway_requests_in_flight",
        "causeway_access_log_entries_total",
    ] {
        assert!(families.contains(kept), "{kept} missing: {text}");
    }
    for dropped in [
        "causeway_responses_total",
        "causeway_retries_total",
        "causeway_trace_spans_exported_total",
    ] {
        assert!(!families.contains(dropped), "{dropped} served: {text}");
    }
    // The application's, labelled; the one that does not answer, said so.
    assert!(
        text.contains("orders_total{app=\"orders\",kind=\"book\"} 7"),
        "{text}"
    );
    assert!(
        text.contains("causeway_application_scrape_up{app=\"orders\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("causeway_application_scrape_up{app=\"gone\"} 0"),
        "{text}"
    );
    if let Some(complaints) = promtool_complaints(&text)? {
        anyhow::bail!("promtool check metrics: {complaints}");
    }
    Ok(())
}

/// An OTLP metrics receiver built from the official protos: every export it took.
#[derive(Clone, Default)]
struct MetricsReceiver(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A MeshMetric `OpenTelemetry` backend: the sidecar pushes its metrics to a real OTLP
/// receiver every `refreshInterval`, as the profile selects them: the request counter
/// as a cumulative monotonic sum with the series' labels as attributes, the latency as
/// a histogram with the sidecar's bounds, the proxy on the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_metric_pushes_to_an_opentelemetry_collector() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs, out, ..
    } = fx.web_calls_backend().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = listener.local_addr()?;
    let receiver = MetricsReceiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    put(
        &fx.c,
        "/meshes/default/meshmetrics/backend-otel",
        &json!({
        "type": "MeshMetric", "mesh": "default", "name": "backend-otel",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
                 "default": {
                     "sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}]}},
                     "backends": [{"type": "OpenTelemetry", "openTelemetry": {
                         "endpoint": collector.to_string(), "refreshInterval": "1s"}}]}}}),
    )
    .await?;
    let http = plain_http();
    let r = http.get(format!("http://127.0.0.1:{out}/")).send().await?;
    assert_eq!(r.status(), 200);
    let export = eventually("backend's metrics at the collector", WAIT, || async {
        let exports = receiver.0.lock().unwrap().clone();
        exports.into_iter().rev().find(|e| {
            e.resource_metrics.iter().any(|rm| {
                rm.scope_metrics.iter().any(|sm| {
                    sm.metrics
                        .iter()
                        .any(|m| m.name == "causeway_request_duration_seconds")
                })
            })
        })
    })
    .await?;
    let rm = &export.resource_metrics[0];
    let resource: Vec<(String, String)> = rm
        .resource
        .as_ref()
        .context("resource")?
        .attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                Some((kv.key.clone(), s.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(
        resource.contains(&("service.name".into(), "backend".into())),
        "{resource:?}"
    );
    let metrics = &rm.scope_metrics[0].metrics;
    let find = |name: &str| metrics.iter().find(|m| m.name == name);
    // Basic: no retries, no access-log counters.
    assert!(find("causeway_retries_total").is_none());
    assert!(find("causeway_access_log_entries_total").is_none());
    let Some(metric::Data::Sum(requests)) =
        &find("causeway_requests_total").context("requests")?.data
    else {
        panic!("causeway_requests_total is not a sum");
    };
    assert!(requests.is_monotonic);
    let inbound = requests
        .data_points
        .iter()
        .find(|p| {
            let has = |k: &str, v: &str| {
                p.attributes.iter().any(|kv| {
                    kv.key == k
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == v)
                })
            };
            has("direction", "inbound") && has("peer", "web") && has("status_class", "2xx")
        })
        .context("backend's inbound 2xx from web")?;
    assert!(
        matches!(inbound.value, Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) if v >= 1.0),
        "{inbound:?}"
    );
    let Some(metric::Data::Histogram(latency)) = &find("causeway_request_duration_seconds")
        .context("latency")?
        .data
    else {
        panic!("causeway_request_duration_seconds is not a histogram");
    };
    let p = &latency.data_points[0];
    assert_eq!(p.explicit_bounds.len(), 25);
    assert_eq!(p.bucket_counts.len(), 26);
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
    Ok(())
}

/// `sidecar.includeUnused`: a destination nothing called yet is reported from the start
/// (its latency histogram at zero) once the policy says so, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_unused_reports_a_destination_before_any_call() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let dp = causeway_tests::mesh::dataplane(
        "idle-1",
        "idle",
        free_addr().port(),
        free_addr().port(),
        "http",
        &[(free_addr().port(), "backend")],
    );
    let (_idle, admin) = fx.sidecar("idle", dp).await?;
    let series = "causeway_request_duration_seconds_count{direction=\"outbound\",service=\"backend\",peer=\"idle\"}";
    let http = plain_http();
    let scrape = || async {
        http.get(format!("http://{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    let before = scrape().await.context("idle's metrics")?;
    assert!(
        !before.contains("service=\"backend\",peer=\"idle\""),
        "{before}"
    );
    put(&fx.c, "/meshes/default/meshmetrics/idle-metrics", &json!({
        "type": "MeshMetric", "mesh": "default", "name": "idle-metrics",
        "spec": {"targetRef": {"kind": "MeshService", "name": "idle"},
                 "default": {"sidecar": {"includeUnused": true},
                             "backends": [{"type": "Prometheus", "prometheus": {"port": free_addr().port()}}]}}})).await?;
    let text = eventually("backend reported before any call", WAIT, || async {
        let text = scrape().await?;
        text.lines()
            .any(|l| {
                l.starts_with("causeway_request_duration_seconds_count")
                    && l.contains("service=\"backend\",peer=\"idle\"")
            })
            .then_some(text)
    })
    .await?;
    assert_eq!(causeway_api::exposition::sum(&text, series), 0.0, "{text}");
    Ok(())
}
