//! Every listener has limits, the same whatever the protocol: the sidecar's header
//! budget (64 KiB, `dataplane/src/http.rs`) over HTTP/1.1 and h2c alike, through both
//! sidecars to the application.

use causeway_tests::mesh::{MeshFixture, WebCallsBackend};
use serde_json::json;

/// A request with one header of `bytes` bytes through web's outbound (HTTP/1.1, or h2c
/// with prior knowledge): its status.
async fn call_with_header(out: u16, bytes: usize, h2c: bool) -> anyhow::Result<u16> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    if h2c {
        client = client.http2_prior_knowledge();
    }
    let r = client
        .build()?
        .get(format!("http://127.0.0.1:{out}/"))
        .header("x-big", "v".repeat(bytes))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// 40 KiB of headers pass the outbound, the sidecar-to-sidecar HTTP/2 and the inbound
/// over either protocol; 70 KiB get 431 over either (before: HTTP/1.1 let even 60 KiB
/// through while h2c answered 431 past 16 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_budget_is_the_same_over_http1_and_h2c() -> anyhow::Result<()> {
    let fx = MeshFixture::start(json!({"mtls": {"mode": "Strict"}})).await?;
    let WebCallsBackend {
        procs: _procs, out, ..
    } = fx.web_calls_backend().await?;
    for h2c in [false, true] {
        let proto = if h2c { "h2c" } else { "HTTP/1.1" };
        assert_eq!(
            call_with_header(out, 40 << 10, h2c).await?,
            200,
            "{proto}: 40 KiB"
        );
        assert_eq!(
            call_with_header(out, 70 << 10, h2c).await?,
            431,
            "{proto}: 70 KiB"
        );
    }
    Ok(())
}
