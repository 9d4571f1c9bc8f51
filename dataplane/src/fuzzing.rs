//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`), so they reach code
//! that is private to the sidecar: the HTTP/1.1 client it speaks to its application
//! ([`http1_exchange`]), the configs a zone sends it over DDS ([`dds_config`]), and the
//! DNS queries a redirected workload sends it ([`dns_query`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::app::App;

/// An application on loopback that answers whatever bytes the current input holds.
struct Harness {
    rt: tokio::runtime::Runtime,
    port: u16,
    answer: Arc<Mutex<Vec<u8>>>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let script = answer.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let bytes = script.lock().expect("answer lock").clone();
                tokio::spawn(async move {
                    // The request's head, then the answer, then the end of the stream.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(&bytes).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Harness { rt, port, answer }
    })
}

/// Sends a GET to an application that answers `response` (raw bytes, then closes), and
/// reads the answer whole: its status and body length, or `None` when the client
/// refused it. Never hangs: the stream ends after the bytes.
pub fn http1_exchange(response: &[u8]) -> Option<(u16, usize)> {
    let h = harness();
    *h.answer.lock().expect("answer lock") = response.to_vec();
    h.rt.block_on(async {
        // A new pool each time: a fresh connection, so inputs do not meet.
        let app = App::new("127.0.0.1", h.port);
        let req = http::Request::get("/fuzz")
            .header(http::header::HOST, "app")
            .body(crate::http::boxed(
                http_body_util::Empty::new().map_err(|n| match n {}),
            ))
            .expect("a request");
        let sent = app.send_http1(req, Duration::from_secs(2), None);
        let resp = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("the head is read or refused once the stream ends")
            .ok()?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the body is read or refused once the stream ends")
            .ok()?;
        Some((status, body.to_bytes().len()))
    })
}

/// What a sidecar does with a config a zone sends it over DDS: decodes it as its
/// `ProxyConfig` (a NACK when it does not decode), then builds its balancers and route
/// tables from it, as a new config is taken in. Health checks are left out: they would
/// dial the endpoints the input names. `Err` is the NACK's reason.
pub fn dds_config(json: &[u8]) -> Result<(), String> {
    let mut cfg: causeway_api::proxy_config::ProxyConfig =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    for ob in &mut cfg.outbounds {
        ob.health_check = None;
    }
    let cfg = Arc::new(cfg);
    let (_config_tx, config) = tokio::sync::watch::channel(Some(cfg.clone()));
    let (_identity_tx, identity) = tokio::sync::watch::channel(None);
    let proxy = crate::proxy::Proxy::new(config, identity, crate::DEFAULT_MAX_CONNECTIONS);
    proxy.update_balancers(&cfg);
    Ok(())
}

/// The sidecar's DNS server deciding on one query from the workload (any bytes): an
/// answer, a forward, or nothing; an answer must itself parse as DNS.
pub fn dns_query(query: &[u8]) {
    static NAMES: OnceLock<crate::dns::Names> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let cfg: causeway_api::proxy_config::ProxyConfig =
            serde_json::from_value(serde_json::json!({
                "version": "v1", "mesh": "default", "dataplane": "web-1", "zone": "zone-a",
                "address": "127.0.0.1", "mtls": "Off", "identity": null, "inbounds": [],
                "outbounds": [{"port": 0, "vip": "241.0.0.1", "address": "127.0.0.1",
                    "service": "backend", "protocol": "http", "identity": null,
                    "loadBalancer": "RoundRobin", "groups": []}],
                "transparent": {"port": 15001, "passthrough": true, "dnsPort": 15053,
                    "dnsSuffix": "mesh"},
            }))
            .expect("a config");
        crate::dns::Names::from_config(&cfg)
    });
    if let crate::dns::Reply::Answer(bytes) = crate::dns::reply(query, names) {
        hickory_proto::op::Message::from_vec(&bytes).expect("an answer that parses");
    }
}
