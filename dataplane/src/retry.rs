//! MeshRetry, enforced: which failed tries are retried, how long to pause before the
//! next one, and the budget that keeps retries from multiplying a failing
//! destination's load. The request path ([`crate::proxy`]) runs the tries; this module
//! decides, from the try's outcome, the time and the config, without I/O.
//!
//! - A try ends with a response head, or fails: no endpoint accepted a connection
//!   (nothing was sent), the stream was refused, the connection was reset or closed, or
//!   the per-try timeout passed. [`Policy::retries`] matches that against `retryOn`.
//! - Requests that may have reached the application are retried only when their method
//!   is idempotent, unless the policy lists methods (`HttpMethodPost`...): a POST that
//!   timed out may have been done. Nothing-sent failures are retried whatever the
//!   method. gRPC calls are retried on the `grpc-status` of a trailers-only answer, and
//!   a local failure counts as UNAVAILABLE (the caller would see it so).
//! - Retriable response headers retry an answer whatever its status; retriable request
//!   headers, when set, limit retries to the requests that have one.
//! - Pauses: full jitter over `min(base * 2^(n-1), max)`; a 429 or 503 answer's reset
//!   header (`Retry-After` by default: seconds or an HTTP date) replaces it. A pause that
//!   would end past the request's deadline is not taken: the caller gets the failure at
//!   once.
//! - The budget ([`Budget`]) is Linkerd's: retries over the last 10 seconds may be at
//!   most `percent` of that window's requests. A burst of failures from one broken
//!   connection is retried in full; a destination that fails everything gets at most
//!   `percent` more load. Beyond the share, `minRetryConcurrency` retries are allowed
//!   at once and in each second, so a quiet destination can be retried at all (Linkerd's
//!   minimum retries per second).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use causeway_api::proxy_config::{
    BackOffPolicy, HttpRetryPolicy, RateLimitedBackOffPolicy, Retry, RetryBudgetPolicy,
};
use causeway_api::{GrpcRetryOn, HeaderMatch, HttpRetryOn, ResetHeaderFormat};

use crate::header_match::HeaderMatcher;

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head with this status and, for gRPC, the `grpc-status` in it.
    Answered { status: u16, grpc: Option<u32> },
    /// No endpoint accepted a connection: nothing was sent.
    ConnectFailure,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM): nothing was processed.
    RefusedStream,
    /// The connection was reset or closed before a response head.
    Reset,
    /// No response head within the per-try timeout.
    PerTryTimeout,
}

/// The retry settings that apply to one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    config: &'a Retry,
    headers: &'a HeaderRules,
    grpc: bool,
}

/// One header condition, compiled.
/// A destination's retriable request and response headers, compiled once per config.
#[derive(Debug, Default)]
pub(crate) struct HeaderRules {
    request: Vec<HeaderMatcher>,
    response: Vec<HeaderMatcher>,
}

impl HeaderRules {
    pub(crate) fn new(http: &HttpRetryPolicy) -> HeaderRules {
        let compile = |ms: &[HeaderMatch]| {
            ms.iter()
                .filter_map(|m| {
                    let c = HeaderMatcher::new(m);
                    if c.is_none() {
                        tracing::warn!(header = %m.name, "a retriable header condition that does not compile is ignored");
                    }
                    c
                })
                .collect()
        };
        HeaderRules {
            request: compile(&http.retriable_request_headers),
            response: compile(&http.retriable_response_headers),
        }
    }
}

/// gRPC status codes (`grpc-status`) the policy can name.
fn grpc_code(on: GrpcRetryOn) -> u32 {
    match on {
        GrpcRetryOn::Cancelled => 1,
        GrpcRetryOn::DeadlineExceeded => 4,
        GrpcRetryOn::ResourceExhausted => 8,
        GrpcRetryOn::Internal => 13,
        GrpcRetryOn::Unavailable => 14,
    }
}

const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// Methods safe to send twice (RFC 9110 §9.2.2), retried without being listed.
fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

impl<'a> Policy<'a> {
    /// The settings for a request: gRPC's for a gRPC call, HTTP's otherwise, with the
    /// destination's header rules (compiled from `config`).
    pub(crate) fn of(config: &'a Retry, headers: &'a HeaderRules, grpc: bool) -> Policy<'a> {
        Policy {
            config,
            headers,
            grpc,
        }
    }

    /// The retries a request with `request_headers` may have: none when the policy
    /// names retriable request headers and it has none of them.
    pub(crate) fn num_retries(&self, request_headers: &http::HeaderMap) -> u32 {
        if self.grpc {
            return self.config.grpc.num_retries;
        }
        let rules = &self.headers.request;
        if !rules.is_empty() && !rules.iter().any(|m| m.matches(request_headers)) {
            return 0;
        }
        self.config.http.num_retries
    }

    /// Each try's timeout, if any.
    pub(crate) fn per_try_timeout(&self) -> Option<Duration> {
        let t = if self.grpc {
            self.config.grpc.per_try_timeout
        } else {
            self.config.http.per_try_timeout
        };
        crate::timeout::on(t)
    }

    fn back_off(&self) -> BackOffPolicy {
        if self.grpc {
            self.config.grpc.back_off
        } else {
            self.config.http.back_off
        }
    }

    /// Whether a try of a `method` request that ended with `outcome` (and, when
    /// answered, `response` headers) is retried.
    pub(crate) fn retries(
        &self,
        method: &http::Method,
        outcome: Outcome,
        response: Option<&http::HeaderMap>,
    ) -> bool {
        if self.grpc {
            let code = match outcome {
                Outcome::Answered {
                    grpc: Some(code), ..
                } => code,
                // Without a grpc-status in the head the answer is the call's.
                Outcome::Answered { grpc: None, .. } => return false,
                Outcome::PerTryTimeout => GRPC_DEADLINE_EXCEEDED,
                Outcome::ConnectFailure | Outcome::RefusedStream | Outcome::Reset => {
                    GRPC_UNAVAILABLE
                }
            };
            return self
                .config
                .grpc
                .retry_on
                .iter()
                .any(|on| grpc_code(*on) == code);
        }
        let http = &self.config.http;
        let nothing_sent = matches!(outcome, Outcome::ConnectFailure | Outcome::RefusedStream);
        let method_ok = if http.methods.is_empty() {
            nothing_sent || idempotent(method)
        } else {
            http.methods.iter().any(|m| m == method.as_str())
        };
        let by_header =
            response.is_some_and(|h| self.headers.response.iter().any(|m| m.matches(h)));
        method_ok
            && (by_header
                || http
                    .retry_on
                    .iter()
                    .any(|on| matches_condition(*on, outcome)))
    }

    /// The pause before retry `n` (1 for the first), with `random` in [0, 1): the
    /// pause a 429 or 503 answer asks for in its reset headers, else the backoff.
    pub(crate) fn pause(
        &self,
        n: u32,
        random: f64,
        answer: Option<(u16, &http::HeaderMap)>,
        now: SystemTime,
    ) -> Duration {
        if !self.grpc
            && let Some((429 | 503, headers)) = answer
            && let Some(after) =
                rate_limited_pause(&self.config.http.rate_limited_back_off, headers, now)
        {
            return after;
        }
        back_off(self.back_off(), n, random)
    }
}

fn matches_condition(on: HttpRetryOn, outcome: Outcome) -> bool {
    let local = matches!(
        outcome,
        Outcome::ConnectFailure | Outcome::Reset | Outcome::RefusedStream | Outcome::PerTryTimeout
    );
    let status = match outcome {
        Outcome::Answered { status, .. } => Some(status),
        _ => None,
    };
    match on {
        // Envoy's 5xx: any 5xx answer, and no answer at all.
        HttpRetryOn::ServerError => local || status.is_some_and(|s| (500..600).contains(&s)),
        // 502, 503, 504, and the local failures the proxy answers with those.
        HttpRetryOn::GatewayError => local || matches!(status, Some(502..=504)),
        HttpRetryOn::Reset => matches!(outcome, Outcome::Reset | Outcome::PerTryTimeout),
        HttpRetryOn::ConnectFailure => outcome == Outcome::ConnectFailure,
        HttpRetryOn::RefusedStream => outcome == Outcome::RefusedStream,
        HttpRetryOn::Retriable4xx => status == Some(409),
        HttpRetryOn::Status(code) => status == Some(code),
        // Folded into the policy's methods and codes by the control plane.
        HttpRetryOn::RetriableStatusCodes | HttpRetryOn::Method(_) => false,
    }
}

/// Full jitter: a pause drawn from [0, min(base * 2^(n-1), max)) with `random` in
/// [0, 1). Spreads the retries of many callers that failed at once.
pub(crate) fn back_off(policy: BackOffPolicy, n: u32, random: f64) -> Duration {
    let base = policy.base_interval.as_std();
    let max = policy.max_interval.as_std().max(base);
    let ceiling = base
        .checked_mul(1u32 << n.saturating_sub(1).min(20))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

/// The pause a rate-limited answer asks for: the first of the policy's reset headers
/// that it has and that reads (seconds to wait, an HTTP date, or a Unix time), at most
/// the policy's `maxInterval`; `None` when none does.
pub(crate) fn rate_limited_pause(
    policy: &RateLimitedBackOffPolicy,
    headers: &http::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    let pause = policy.reset_headers.iter().find_map(|h| {
        let v = headers.get(h.name.as_str())?.to_str().ok()?.trim();
        let at = |t: SystemTime| t.duration_since(now).unwrap_or(Duration::ZERO);
        match h.format {
            ResetHeaderFormat::Seconds => match v.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => httpdate::parse_http_date(v).ok().map(at),
            },
            ResetHeaderFormat::UnixTimestamp => {
                let secs = v.parse::<u64>().ok()?;
                Some(at(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
            }
        }
    })?;
    Some(pause.min(policy.max_interval.as_std()))
}

/// How long the budget remembers requests and retries.
const WINDOW_SECS: u64 = 10;

/// A destination's retry budget (see the module's notes). Shared by its requests.
#[derive(Debug)]
pub(crate) struct Budget {
    /// `percent` and `minRetryConcurrency`: changed in place by a config update, which
    /// keeps the window (the destination's traffic is the same).
    percent: AtomicU32,
    min_retry_concurrency: AtomicU32,
    started: Instant,
    window: Mutex<Window>,
    in_flight: AtomicU32,
}

/// Requests and retries per second over the last [`WINDOW_SECS`] seconds.
#[derive(Debug, Default)]
struct Window {
    /// (second, requests, retries), by `second % WINDOW_SECS`.
    buckets: [(u64, u64, u64); WINDOW_SECS as usize],
}

impl Window {
    fn bucket(&mut self, second: u64) -> &mut (u64, u64, u64) {
        let b = &mut self.buckets[(second % WINDOW_SECS) as usize];
        if b.0 != second {
            *b = (second, 0, 0);
        }
        b
    }

    /// (requests, retries) of the window that ends at `second`.
    fn totals(&self, second: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(s, _, _)| *s <= second && second - *s < WINDOW_SECS)
            .fold((0, 0), |(q, r), (_, bq, br)| (q + bq, r + br))
    }
}

/// A retry the budget allowed: it counts as in flight until dropped.
pub(crate) struct RetryPermit<'a>(&'a Budget);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    pub(crate) fn new(policy: RetryBudgetPolicy) -> Budget {
        Budget {
            percent: AtomicU32::new(policy.percent),
            min_retry_concurrency: AtomicU32::new(policy.min_retry_concurrency),
            started: Instant::now(),
            window: Mutex::default(),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Applies new settings; the window stays.
    pub(crate) fn set_policy(&self, policy: RetryBudgetPolicy) {
        self.percent.store(policy.percent, Ordering::Relaxed);
        self.min_retry_concurrency
            .store(policy.min_retry_concurrency, Ordering::Relaxed);
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// A request (its first try) at `now`: it adds to what retries may spend.
    pub(crate) fn deposit(&self, now: Instant) {
        let s = self.second(now);
        self.window.lock().expect("budget lock").bucket(s).1 += 1;
    }

    /// A retry at `now`, if the budget allows it.
    pub(crate) fn withdraw(&self, now: Instant) -> Option<RetryPermit<'_>> {
        let s = self.second(now);
        let mut w = self.window.lock().expect("budget lock");
        let (requests, retries) = w.totals(s);
        let within_share = (retries + 1) * 100
            <= requests * u64::from(self.percent.load(Ordering::Relaxed).min(100));
        let min = self.min_retry_concurrency.load(Ordering::Relaxed);
        let floor = self.in_flight.load(Ordering::Relaxed) < min && w.bucket(s).2 < u64::from(min);
        if !within_share && !floor {
            return None;
        }
        w.bucket(s).2 += 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(RetryPermit(self))
    }
}

#[cfg(test)]
mod tests;
