//! `causeway demo-app`: a small workload for tests and the quickstart. HTTP mode answers
//! every request with JSON naming its service, zone and instance (and the caller's
//! identity the sidecar passed on), and the request as it arrived (method, path, query,
//! headers); TCP mode echoes bytes back. `GET /healthz` answers
//! the app's health status (200 unless set otherwise), which `POST /healthz/{status}`
//! changes, so tests can make an instance fail its health checks while it serves; and
//! `POST /answer/{status}` sets the status every other request is answered with (200
//! at first), with `?percent=N` for only N% of them at random (the rest 200), and with
//! `?header=name:value` a header added to those answers, so tests can make an instance
//! fail its calls, some of them, or ask for a retry. `GET /bytes/{n}` answers n bytes.
//! `GET /ws` is a WebSocket that answers each text message with `<instance>: <text>`
//! (and echoes binary ones), for tests of upgrades through the mesh.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoAppArgs {
    /// Where to listen (`--addr` is the CLI's global API address flag).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The service name it reports.
    #[arg(long, default_value = "demo")]
    service: String,
    /// The zone it reports.
    #[arg(long, default_value = "")]
    zone: String,
    /// The instance name it reports (default: the listen address).
    #[arg(long)]
    instance: Option<String>,
    /// Echo raw TCP instead of serving HTTP.
    #[arg(long)]
    tcp: bool,
    /// Call this URL on every request (through the sidecar's outbound, say) and include
    /// its answer: a frontend in front of a backend. Its failure answers 502.
    #[arg(long)]
    call: Option<String>,
    /// The status `GET /healthz` answers at first.
    #[arg(long, default_value_t = 200)]
    healthz_status: u16,
}

#[derive(Clone)]
struct App {
    me: Value,
    call: Option<(reqwest::Client, String)>,
    healthz: std::sync::Arc<std::sync::atomic::AtomicU16>,
    answer: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// The percent of requests answered with `answer` (the others: 200).
    answer_percent: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// A header added to every answer but `/healthz`'s.
    answer_header: std::sync::Arc<std::sync::Mutex<Option<(HeaderName, HeaderValue)>>>,
}

#[derive(serde::Deserialize)]
struct AnswerQuery {
    /// `name:value`.
    header: Option<String>,
    /// The share of requests answered with the status, 0 to 100 (default 100).
    percent: Option<u8>,
}

pub(crate) async fn run(a: DemoAppArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    tracing::info!(addr = %a.listen, service = %a.service, tcp = a.tcp, "demo app listening");
    if a.tcp {
        loop {
            let (mut s, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    }
    let instance = a.instance.clone().unwrap_or_else(|| a.listen.to_string());
    let me = json!({"service": a.service, "zone": a.zone, "instance": instance});
    let call = match a.call {
        Some(url) => Some((
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?,
            url,
        )),
        None => None,
    };
    let healthz = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(a.healthz_status));
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz_status))
        .route("/healthz/{status}", axum::routing::post(set_healthz_status))
        .route("/answer/{status}", axum::routing::post(set_answer_status))
        .route("/bytes/{n}", axum::routing::get(bytes))
        .route("/ws", axum::routing::get(websocket))
        .fallback(echo)
        .with_state(App {
            me,
            call,
            healthz,
            answer: std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200)),
            answer_header: std::sync::Arc::default(),
            answer_percent: std::sync::Arc::new(std::sync::atomic::AtomicU8::new(100)),
        });
    axum::serve(listener, app).await?;
    Ok(())
}

/// `GET /ws`: a WebSocket echo that names the instance in each text answer.
async fn websocket(
    State(app): State<App>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    use axum::extract::ws::Message;
    let instance = app.me["instance"].as_str().unwrap_or("").to_owned();
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let answer = match msg {
                Message::Text(t) => Message::Text(format!("{instance}: {}", t.as_str()).into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                // Pings are answered by the library.
                _ => continue,
            };
            if socket.send(answer).await.is_err() {
                break;
            }
        }
    })
}

/// `GET /bytes/{n}`: `n` bytes (at most 16 MiB), for tests of large answers.
async fn bytes(axum::extract::Path(n): axum::extract::Path<usize>) -> Vec<u8> {
    vec![b'x'; n.min(16 << 20)]
}

async fn healthz_status(State(app): State<App>) -> axum::http::StatusCode {
    let code = app.healthz.load(std::sync::atomic::Ordering::Relaxed);
    axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK)
}

async fn set_healthz_status(
    State(app): State<App>,
    axum::extract::Path(status): axum::extract::Path<u16>,
) -> axum::http::StatusCode {
    set_status(&app.healthz, status)
}

async fn set_answer_status(
    State(app): State<App>,
    axum::extract::Path(status): axum::extract::Path<u16>,
    axum::extract::Query(q): axum::extract::Query<AnswerQuery>,
) -> axum::http::StatusCode {
    let header = match q.header.as_deref().map(|h| h.split_once(':')) {
        None => None,
        Some(Some((name, value))) => {
            match (
                HeaderName::try_from(name.trim()),
                HeaderValue::try_from(value.trim()),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => return axum::http::StatusCode::BAD_REQUEST,
            }
        }
        Some(None) => return axum::http::StatusCode::BAD_REQUEST,
    };
    let percent = q.percent.unwrap_or(100);
    if percent > 100 {
        return axum::http::StatusCode::BAD_REQUEST;
    }
    *app.answer_header.lock().expect("answer header lock") = header;
    app.answer_percent
        .store(percent, std::sync::atomic::Ordering::Relaxed);
    set_status(&app.answer, status)
}

fn set_status(to: &std::sync::atomic::AtomicU16, status: u16) -> axum::http::StatusCode {
    if axum::http::StatusCode::from_u16(status).is_err() {
        return axum::http::StatusCode::BAD_REQUEST;
    }
    to.store(status, std::sync::atomic::Ordering::Relaxed);
    axum::http::StatusCode::NO_CONTENT
}

async fn echo(State(app): State<App>, req: Request) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let header = app
        .answer_header
        .lock()
        .expect("answer header lock")
        .clone();
    let mut r = answer(app, req).await.into_response();
    if let Some((name, value)) = header {
        r.headers_mut().insert(name, value);
    }
    r
}

async fn answer(app: App, req: Request) -> (axum::http::StatusCode, Json<Value>) {
    let peer = req
        .headers()
        .get("x-causeway-peer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut out = app.me;
    out["method"] = json!(req.method().as_str());
    out["path"] = json!(req.uri().path());
    out["query"] = json!(req.uri().query().unwrap_or(""));
    out["peer"] = json!(peer);
    // What the request arrived with, so a caller can see what the mesh changed (a
    // route's rewrites and header changes).
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        if let Ok(v) = value.to_str() {
            headers
                .entry(name.as_str())
                .and_modify(|e| *e = json!(format!("{}, {v}", e.as_str().unwrap_or(""))))
                .or_insert_with(|| json!(v));
        }
    }
    out["headers"] = Value::Object(headers);
    // Read the whole body before answering, like a real handler: answering early and
    // closing would cut off a client still sending.
    let body = axum::body::to_bytes(req.into_body(), 64 << 20).await;
    out["bodyBytes"] = json!(body.map_or(0, |b| b.len()));
    let percent = app
        .answer_percent
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut status = if rand::random_range(0..100u8) < percent {
        axum::http::StatusCode::from_u16(app.answer.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(axum::http::StatusCode::OK)
    } else {
        axum::http::StatusCode::OK
    };
    if let Some((client, url)) = &app.call {
        out["upstream"] = match client.get(url).send().await {
            Ok(r) => {
                let code = r.status();
                let text = r.text().await.unwrap_or_default();
                if !code.is_success() {
                    status = axum::http::StatusCode::BAD_GATEWAY;
                }
                serde_json::from_str(&text)
                    .unwrap_or_else(|_| json!({"status": code.as_u16(), "body": text.trim()}))
            }
            Err(e) => {
                status = axum::http::StatusCode::BAD_GATEWAY;
                json!({"error": e.to_string()})
            }
        };
    }
    (status, Json(out))
}
