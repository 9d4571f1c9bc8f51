use causeway_api::Duration as ApiDuration;
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn hc(healthy: u32, unhealthy: u32) -> HealthCheck {
    HealthCheck {
        interval: ApiDuration::from_secs(10),
        jitter: ApiDuration::from_secs(2),
        timeout: ApiDuration::from_secs(1),
        healthy_threshold: healthy,
        unhealthy_threshold: unhealthy,
        panic_threshold: 50,
        check: HealthCheckKind::Tcp {
            send: None,
            receive: vec![],
        },
    }
}

#[test]
fn thresholds_of_failures_and_passes_in_a_row_flip_the_verdict() {
    let hc = hc(2, 3);
    let mut v = Verdicts::default();
    let mut healthy = true;
    let mut step = |passed: bool, healthy: &mut bool| {
        let change = v.record(passed, *healthy, &hc);
        if let Some(h) = change {
            *healthy = h;
        }
        change
    };
    // Two failures, a pass (resets the count), then three in a row: out.
    assert_eq!(step(false, &mut healthy), None);
    assert_eq!(step(false, &mut healthy), None);
    assert_eq!(step(true, &mut healthy), None);
    assert_eq!(step(false, &mut healthy), None);
    assert_eq!(step(false, &mut healthy), None);
    assert_eq!(step(false, &mut healthy), Some(false));
    assert_eq!(step(false, &mut healthy), None, "already out");
    // One pass is not enough to come back; two in a row are.
    assert_eq!(step(true, &mut healthy), None);
    assert_eq!(step(false, &mut healthy), None);
    assert_eq!(step(true, &mut healthy), None);
    assert_eq!(step(true, &mut healthy), Some(true));
}

#[test]
fn the_pause_is_the_interval_plus_a_share_of_the_jitter() {
    let hc = hc(1, 1);
    assert_eq!(next_pause(&hc, 0.0), Duration::from_secs(10));
    assert_eq!(next_pause(&hc, 0.5), Duration::from_secs(11));
    assert_eq!(next_pause(&hc, 7.0), Duration::from_secs(12), "clamped");
}

#[test]
fn a_grpc_answer_is_healthy_only_when_serving_with_status_zero() {
    use prost::Message as _;
    let frame = |status: i32| {
        let msg = HealthCheckResponse { status }.encode_to_vec();
        let mut b = vec![0];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(&msg);
        b
    };
    let ok = {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    };
    let none = http::HeaderMap::new();
    assert_eq!(grpc_verdict(&none, &ok, &frame(SERVING)), Ok(()));
    assert!(
        grpc_verdict(&none, &ok, &frame(2))
            .unwrap_err()
            .contains("not serving")
    );
    // Trailers-only: the status in the headers.
    let mut unimplemented = http::HeaderMap::new();
    unimplemented.insert("grpc-status", "12".parse().unwrap());
    assert!(
        grpc_verdict(&unimplemented, &none, &[])
            .unwrap_err()
            .contains("grpc-status 12")
    );
    assert!(grpc_verdict(&none, &none, &frame(SERVING)).is_err());
    // The request names the service, framed.
    let req = grpc_check_request("payments.v1");
    assert_eq!(req[0], 0);
    let len = u32::from_be_bytes(req[1..5].try_into().unwrap()) as usize;
    let decoded = HealthCheckRequest::decode(&req[5..5 + len]).unwrap();
    assert_eq!(decoded.service, "payments.v1");
}

/// A server on loopback that runs `serve` on its first connection.
async fn server<F, Fut>(serve: F) -> TcpStream
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        serve(s).await;
    });
    TcpStream::connect(addr).await.unwrap()
}

use std::future::Future;

#[tokio::test]
async fn a_tcp_check_sends_and_expects_every_answer() {
    // An echo server answers "hello" with "hello": "ell" and "lo" both appear.
    let mut c = server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let r = tcp_exchange(
        &mut c,
        Some(&b64("hello")),
        &[b64("ell"), b64("lo")],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r, Ok(()));
    // A server that closes after a wrong answer fails the check.
    let mut c = server(|mut s| async move {
        let _ = s.write_all(b"nope").await;
    })
    .await;
    let r = tcp_exchange(
        &mut c,
        Some(&b64("hi")),
        &[b64("yes")],
        Duration::from_secs(5),
    )
    .await;
    // Closed (or reset, the bytes it did not read) before the expected answer.
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn a_connect_only_check_fails_when_the_endpoint_closes_and_passes_when_it_stays_open() {
    // The endpoint's sidecar closes the connection when its application refuses it.
    let mut c = server(|s| async move { drop(s) }).await;
    let r = tcp_exchange(&mut c, None, &[], Duration::from_secs(5)).await;
    assert!(r.unwrap_err().contains("closed"));
    let (hold, held) = tokio::sync::oneshot::channel::<()>();
    let mut c = server(|s| async move {
        let _ = held.await;
        drop(s);
    })
    .await;
    let r = tcp_exchange(&mut c, None, &[], Duration::from_millis(200)).await;
    assert_eq!(r, Ok(()), "open for the whole check");
    drop(hold);
}
