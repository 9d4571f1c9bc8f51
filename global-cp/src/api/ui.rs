//! The web UI at `/ui`: three files embedded in the binary (no bundler, no Node.js), served
//! by every node on its API listener, so a follower serves it too. The page itself holds
//! no data and needs no token; it signs in by asking the user for an API token and reads
//! the API with it, so a viewer's token sees everything and can change nothing, exactly
//! as through the CLI.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's script,
//! style and API (no inline script, no framing), so text from the API can never run.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Assets change with the binary; a short cache keeps an upgrade visible.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /ui` and `/ui/`: the page.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/types.json`: the policy kinds and their paths, so the client lists them
/// without a table of its own (public, as `/openapi.json` is).
pub(super) async fn types() -> Response {
    let kinds: Vec<serde_json::Value> = causeway_api::types()
        .iter()
        .filter(|t| {
            t.scope == causeway_api::Scope::Mesh && matches!(t.role, causeway_api::Role::Policy(_))
        })
        .map(|t| serde_json::json!({"kind": t.kind, "plural": t.plural}))
        .collect();
    let mut r = asset("application/json", "");
    *r.body_mut() = axum::body::Body::from(serde_json::to_vec(&kinds).expect("types encode"));
    r
}

/// `GET /ui/app.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
