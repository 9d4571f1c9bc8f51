use std::time::{Duration, Instant, SystemTime};

use causeway_api::proxy_config::{BackOffPolicy, Retry, RetryBudgetPolicy};
use causeway_api::{GrpcRetryOn, HttpRetryOn};

use super::*;

fn answered(status: u16) -> Outcome {
    Outcome::Answered { status, grpc: None }
}

#[test]
fn defaults_retry_5xx_resets_and_connect_failures_of_idempotent_requests() {
    let config = Retry::default_policy();
    let p = Policy::of(&config, false);
    let get = http::Method::GET;
    let post = http::Method::POST;
    assert_eq!(p.num_retries(), 1);
    for o in [
        answered(500),
        answered(503),
        Outcome::Reset,
        Outcome::ConnectFailure,
    ] {
        assert!(p.retries(&get, o), "{o:?}");
    }
    for o in [answered(200), answered(404), answered(429), answered(409)] {
        assert!(!p.retries(&get, o), "{o:?}");
    }
    // A POST that may have been processed is not sent twice; one never sent is.
    assert!(!p.retries(&post, answered(503)));
    assert!(!p.retries(&post, Outcome::Reset));
    assert!(p.retries(&post, Outcome::ConnectFailure));
}

#[test]
fn listed_conditions_codes_and_methods() {
    let mut config = Retry::default_policy();
    config.http.retry_on = vec![
        HttpRetryOn::GatewayError,
        HttpRetryOn::Status(429),
        HttpRetryOn::Retriable4xx,
    ];
    config.http.methods = vec!["POST".into()];
    let p = Policy::of(&config, false);
    let post = http::Method::POST;
    for o in [
        answered(502),
        answered(504),
        answered(429),
        answered(409),
        Outcome::PerTryTimeout,
    ] {
        assert!(p.retries(&post, o), "{o:?}");
    }
    assert!(!p.retries(&post, answered(500)));
    // Methods listed: only those are retried, on every condition.
    assert!(!p.retries(&http::Method::GET, answered(502)));
    config.http.retry_on = vec![HttpRetryOn::ConnectFailure];
    let p = Policy::of(&config, false);
    assert!(!p.retries(&post, Outcome::Reset));
    assert!(!p.retries(&post, answered(503)));
    assert!(p.retries(&post, Outcome::ConnectFailure));
}

#[test]
fn grpc_calls_retry_on_the_listed_status_codes() {
    let mut config = Retry::default_policy();
    let p = Policy::of(&config, true);
    let post = http::Method::POST;
    let grpc = |code| Outcome::Answered {
        status: 200,
        grpc: Some(code),
    };
    assert!(p.retries(&post, grpc(14)), "UNAVAILABLE by default");
    assert!(p.retries(&post, Outcome::Reset), "a reset is UNAVAILABLE");
    assert!(!p.retries(&post, grpc(13)));
    assert!(!p.retries(&post, grpc(0)));
    assert!(!p.retries(&post, answered(200)), "no status in the head");
    config.grpc.retry_on = vec![
        GrpcRetryOn::ResourceExhausted,
        GrpcRetryOn::DeadlineExceeded,
    ];
    let p = Policy::of(&config, true);
    assert!(p.retries(&post, grpc(8)));
    assert!(p.retries(&post, Outcome::PerTryTimeout));
    assert!(!p.retries(&post, grpc(14)));
}

#[test]
fn back_off_grows_to_its_cap_with_full_jitter() {
    let policy = BackOffPolicy {
        base_interval: causeway_api::Duration::from_millis(25),
        max_interval: causeway_api::Duration::from_millis(250),
    };
    let ms = Duration::from_millis;
    assert_eq!(back_off(policy, 1, 0.999_999).as_millis(), 24);
    assert_eq!(back_off(policy, 3, 0.5), ms(50));
    assert_eq!(back_off(policy, 4, 1.0), ms(200));
    assert_eq!(back_off(policy, 5, 1.0), ms(250));
    assert_eq!(back_off(policy, 40, 1.0), ms(250));
    assert_eq!(back_off(policy, 2, 0.0), Duration::ZERO);
}

#[test]
fn retry_after_in_seconds_or_as_a_date_replaces_the_back_off_on_429_and_503() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut h = http::HeaderMap::new();
    h.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
    let mut dated = http::HeaderMap::new();
    dated.insert(http::header::RETRY_AFTER, later.parse().unwrap());
    assert_eq!(retry_after(&dated, now), Some(Duration::from_secs(7)));
    let mut bad = http::HeaderMap::new();
    bad.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
    assert_eq!(retry_after(&bad, now), None);

    let config = Retry::default_policy();
    let p = Policy::of(&config, false);
    assert_eq!(
        p.pause(1, 0.5, Some((503, &h)), now),
        Duration::from_secs(2)
    );
    assert_eq!(
        p.pause(1, 0.5, Some((429, &dated)), now),
        Duration::from_secs(7)
    );
    // Other statuses and unreadable values: the backoff.
    assert!(p.pause(1, 0.5, Some((500, &h)), now) < Duration::from_millis(25));
    assert!(p.pause(1, 0.5, Some((503, &bad)), now) < Duration::from_millis(25));
}

#[test]
fn the_budget_allows_a_burst_but_not_more_than_its_share_of_the_window() {
    let budget = Budget::new(RetryBudgetPolicy {
        percent: 20,
        min_retry_concurrency: 3,
    });
    let at = |s: u64| budget.started + Duration::from_secs(s);
    // 200 requests a second for 5 seconds: 200 retries may be spent.
    for s in 0..5 {
        for _ in 0..200 {
            budget.deposit(at(s));
        }
    }
    // A burst of 150 failures at once (one connection's requests in flight) is retried
    // in full, all in flight together.
    let burst: Vec<_> = (0..150).map(|_| budget.withdraw(at(5))).collect();
    assert!(burst.iter().all(Option::is_some));
    drop(burst);
    // A destination that fails everything: at most 20% of the requests are retried.
    let mut retried = 0;
    for s in 5..60 {
        for _ in 0..200 {
            budget.deposit(at(s));
            if budget.withdraw(at(s)).is_some() {
                retried += 1;
            }
        }
    }
    let share = retried as f64 / (55.0 * 200.0);
    // 20%, and the floor's 3 a second beyond it.
    assert!((0.15..=0.22).contains(&share), "{share}");
}

#[test]
fn a_quiet_destination_keeps_its_minimum_concurrency() {
    let budget = Budget::new(RetryBudgetPolicy {
        percent: 20,
        min_retry_concurrency: 2,
    });
    let now = Instant::now();
    // No requests in the window: two retries at once, not a third.
    let a = budget.withdraw(now);
    let b = budget.withdraw(now);
    assert!(a.is_some() && b.is_some());
    assert!(budget.withdraw(now).is_none());
    drop(a);
    // Two a second, too: the next second, with one of them still in flight, one more.
    assert!(budget.withdraw(now).is_none());
    let next = now + Duration::from_secs(1);
    let c = budget.withdraw(next);
    assert!(c.is_some());
    assert!(budget.withdraw(next).is_none(), "two in flight");
    // Nothing at all with zero of both.
    let none = Budget::new(RetryBudgetPolicy {
        percent: 0,
        min_retry_concurrency: 0,
    });
    none.deposit(now);
    assert!(none.withdraw(now).is_none());
}
