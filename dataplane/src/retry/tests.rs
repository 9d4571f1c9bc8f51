use std::time::{Duration, Instant, SystemTime};

use causeway_api::proxy_config::{BackOffPolicy, Retry, RetryBudgetPolicy};
use causeway_api::{GrpcRetryOn, HeaderMatchType, HttpRetryOn};

use super::*;

static NO_HEADERS: std::sync::LazyLock<HeaderRules> =
    std::sync::LazyLock::new(HeaderRules::default);

fn answered(status: u16) -> Outcome {
    Outcome::Answered { status, grpc: None }
}

#[test]
fn defaults_retry_5xx_resets_and_connect_failures_of_idempotent_requests() {
    let config = Retry::default_policy();
    let p = Policy::of(&config, &NO_HEADERS, false);
    let get = http::Method::GET;
    let post = http::Method::POST;
    assert_eq!(p.num_retries(&http::HeaderMap::new()), 1);
    for o in [
        answered(500),
        answered(503),
        Outcome::Reset,
        Outcome::ConnectFailure,
    ] {
        assert!(p.retries(&get, o, None), "{o:?}");
    }
    for o in [answered(200), answered(404), answered(429), answered(409)] {
        assert!(!p.retries(&get, o, None), "{o:?}");
    }
    // A POST that may have been processed is not sent twice; one never sent is.
    assert!(!p.retries(&post, answered(503), None));
    assert!(!p.retries(&post, Outcome::Reset, None));
    assert!(p.retries(&post, Outcome::ConnectFailure, None));
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
    let p = Policy::of(&config, &NO_HEADERS, false);
    let post = http::Method::POST;
    for o in [
        answered(502),
        answered(504),
        answered(429),
        answered(409),
        Outcome::PerTryTimeout,
    ] {
        assert!(p.retries(&post, o, None), "{o:?}");
    }
    assert!(!p.retries(&post, answered(500), None));
    // Methods listed: only those are retried, on every condition.
    assert!(!p.retries(&http::Method::GET, answered(502), None));
    config.http.retry_on = vec![HttpRetryOn::ConnectFailure];
    let p = Policy::of(&config, &NO_HEADERS, false);
    assert!(!p.retries(&post, Outcome::Reset, None));
    assert!(!p.retries(&post, answered(503), None));
    assert!(p.retries(&post, Outcome::ConnectFailure, None));
}

#[test]
fn grpc_calls_retry_on_the_listed_status_codes() {
    let mut config = Retry::default_policy();
    let p = Policy::of(&config, &NO_HEADERS, true);
    let post = http::Method::POST;
    let grpc = |code| Outcome::Answered {
        status: 200,
        grpc: Some(code),
    };
    assert!(p.retries(&post, grpc(14), None), "UNAVAILABLE by default");
    assert!(
        p.retries(&post, Outcome::Reset, None),
        "a reset is UNAVAILABLE"
    );
    assert!(!p.retries(&post, grpc(13), None));
    assert!(!p.retries(&post, grpc(0), None));
    assert!(
        !p.retries(&post, answered(200), None),
        "no status in the head"
    );
    config.grpc.retry_on = vec![
        GrpcRetryOn::ResourceExhausted,
        GrpcRetryOn::DeadlineExceeded,
    ];
    let p = Policy::of(&config, &NO_HEADERS, true);
    assert!(p.retries(&post, grpc(8), None));
    assert!(p.retries(&post, Outcome::PerTryTimeout, None));
    assert!(!p.retries(&post, grpc(14), None));
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
fn a_rate_limited_answer_waits_as_its_reset_header_says_up_to_the_cap() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let headers = |pairs: &[(&str, String)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    };
    let default = RateLimitedBackOffPolicy::default_policy();
    let secs = headers(&[("retry-after", "2".into())]);
    assert_eq!(
        rate_limited_pause(&default, &secs, now),
        Some(Duration::from_secs(2))
    );
    let date = headers(&[(
        "retry-after",
        httpdate::fmt_http_date(now + Duration::from_secs(7)),
    )]);
    assert_eq!(
        rate_limited_pause(&default, &date, now),
        Some(Duration::from_secs(7))
    );
    let long = headers(&[("retry-after", "86400".into())]);
    assert_eq!(
        rate_limited_pause(&default, &long, now),
        Some(Duration::from_secs(300))
    );
    let bad = headers(&[("retry-after", "soon".into())]);
    assert_eq!(rate_limited_pause(&default, &bad, now), None);
    // The policy's own headers, in order: a Unix time.
    let own = RateLimitedBackOffPolicy {
        reset_headers: vec![
            causeway_api::ResetHeader {
                name: "x-ratelimit-reset".into(),
                format: ResetHeaderFormat::UnixTimestamp,
            },
            causeway_api::ResetHeader {
                name: "retry-after".into(),
                format: ResetHeaderFormat::Seconds,
            },
        ],
        max_interval: causeway_api::Duration::from_secs(60),
    };
    let reset = headers(&[
        ("x-ratelimit-reset", "1700000004".into()),
        ("retry-after", "9".into()),
    ]);
    assert_eq!(
        rate_limited_pause(&own, &reset, now),
        Some(Duration::from_secs(4))
    );
    assert_eq!(
        rate_limited_pause(&own, &secs, now),
        Some(Duration::from_secs(2))
    );

    let config = Retry::default_policy();
    let p = Policy::of(&config, &NO_HEADERS, false);
    assert_eq!(
        p.pause(1, 0.5, Some((503, &secs)), now),
        Duration::from_secs(2)
    );
    assert_eq!(
        p.pause(1, 0.5, Some((429, &date)), now),
        Duration::from_secs(7)
    );
    // Other statuses and unreadable values: the backoff.
    assert!(p.pause(1, 0.5, Some((500, &secs)), now) < Duration::from_millis(25));
    assert!(p.pause(1, 0.5, Some((503, &bad)), now) < Duration::from_millis(25));
}

#[test]
fn retriable_headers_retry_an_answer_and_limit_the_requests_retried() {
    let mut config = Retry::default_policy();
    let m = |kind, name: &str, value: Option<&str>| causeway_api::HeaderMatch {
        kind,
        name: name.into(),
        value: value.map(String::from),
    };
    config.http.retriable_response_headers = vec![
        m(
            HeaderMatchType::RegularExpression,
            "x-state",
            Some("busy|later"),
        ),
        m(HeaderMatchType::Present, "x-retry-me", None),
    ];
    config.http.retriable_request_headers = vec![
        m(HeaderMatchType::Exact, "x-idempotent", Some("true")),
        m(HeaderMatchType::Prefix, "x-client", Some("batch-")),
    ];
    let rules = HeaderRules::new(&config.http);
    let p = Policy::of(&config, &rules, false);
    let h = |k: &'static str, v: &'static str| {
        let mut h = http::HeaderMap::new();
        h.insert(k, http::HeaderValue::from_static(v));
        h
    };
    let get = http::Method::GET;
    let ok = answered(200);
    assert!(p.retries(&get, ok, Some(&h("x-state", "busy"))));
    assert!(p.retries(&get, ok, Some(&h("x-retry-me", ""))));
    // The whole value must match.
    assert!(!p.retries(&get, ok, Some(&h("x-state", "busybody"))));
    assert!(!p.retries(&get, ok, Some(&http::HeaderMap::new())));
    // Request headers gate every retry.
    assert_eq!(p.num_retries(&h("x-idempotent", "true")), 1);
    assert_eq!(p.num_retries(&h("x-client", "batch-7")), 1);
    assert_eq!(p.num_retries(&h("x-idempotent", "false")), 0);
    assert_eq!(p.num_retries(&http::HeaderMap::new()), 0);
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

#[test]
fn new_settings_keep_the_window() {
    let budget = Budget::new(RetryBudgetPolicy {
        percent: 0,
        min_retry_concurrency: 0,
    });
    let now = Instant::now();
    for _ in 0..10 {
        budget.deposit(now);
    }
    assert!(budget.withdraw(now).is_none(), "0%: nothing");
    budget.set_policy(RetryBudgetPolicy {
        percent: 50,
        min_retry_concurrency: 0,
    });
    // The ten requests already counted allow five retries at once.
    let five: Vec<_> = (0..5).map(|_| budget.withdraw(now)).collect();
    assert!(five.iter().all(Option::is_some));
    assert!(budget.withdraw(now).is_none());
}
