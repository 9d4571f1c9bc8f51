//! The answers the proxy gives itself, when a request cannot be forwarded or its answer
//! cannot come: one type, mapped once to a status, a body (`causeway: <reason>\n`), a
//! header `x-causeway-error: <label>` naming the cause for clients and tests, and the
//! same label on the `causeway_proxy_errors_total` metric.

use std::time::Duration;

use crate::http::{Body, BoxError, text};

/// The header that names why the proxy answered itself.
pub(crate) const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-causeway-error");

/// Set by an inbound sidecar on a 503 when its application refused the connection:
/// evidence for the caller's outlier detection that this endpoint is down.
pub(crate) const APP_UNAVAILABLE: http::HeaderName =
    http::HeaderName::from_static("x-causeway-unavailable");

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No config from the control plane yet.
    #[error("no config yet")]
    NoConfig,
    /// The listener's inbound or outbound left the config.
    #[error("{0} removed")]
    ListenerRemoved(&'static str),
    /// mTLS is on and the workload certificate has not come yet.
    #[error("no workload certificate yet")]
    NoCertificate,
    /// The caller's CA was revoked since its connection was made.
    #[error("the caller's certificate authority was revoked")]
    CaRevoked,
    /// The permissions deny the caller.
    #[error("{0}")]
    Denied(String),
    /// The request cannot be forwarded as it is.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request cannot be forwarded to the application as it is.
    #[error("{0}")]
    AppBadRequest(std::io::Error),
    /// A method the application's protocol cannot carry.
    #[error("{0}")]
    NotImplemented(std::io::Error),
    /// No endpoint of the destination could be reached; nothing was sent.
    #[error("no endpoint of {service} is reachable ({reason})")]
    NoEndpoint { service: String, reason: String },
    /// The exchange with an endpoint failed after the request was (maybe) sent.
    #[error("{service} failed: {error}")]
    Upstream { service: String, error: BoxError },
    /// The application refused the connection or could not be reached; nothing was sent.
    #[error("the application is not reachable: {0}")]
    AppUnreachable(String),
    /// The exchange with the application failed after the request was (maybe) sent.
    #[error("the application did not answer: {0}")]
    AppFailed(String),
    /// MeshTimeout `http.requestTimeout`: no response head in time.
    #[error("no response within the request timeout ({})", crate::timeout::show(*.0))]
    RequestTimeout(Duration),
    /// MeshTimeout `http.maxStreamDuration`: no response head before the stream's end.
    #[error("no response within the maximum stream duration ({})", crate::timeout::show(*.0))]
    MaxStreamDuration(Duration),
    /// A MeshCircuitBreaker cap (`limit`: `maxRequests`, requests in flight;
    /// `maxPendingRequests`, requests waiting for a connection) is reached.
    #[error("{service} is at its MeshCircuitBreaker {limit} ({max})")]
    Overflow {
        service: String,
        max: u32,
        limit: &'static str,
    },
    /// MeshRateLimit: the caller's entry has no token left; `retry_after` until it
    /// fills again.
    #[error("over the rate limit (MeshRateLimit)")]
    RateLimited {
        status: u16,
        set_headers: Vec<(String, String)>,
        add_headers: Vec<(String, String)>,
        retry_after: Duration,
    },
    /// MeshFaultInjection: an abort drawn for this request.
    #[error("fault injected (MeshFaultInjection abort)")]
    FaultInjected { status: u16 },
    /// MeshRetry `perTryTimeout`: the last try had no response head in time.
    #[error("no response within the per-try timeout ({})", crate::timeout::show(*.0))]
    PerTryTimeout(Duration),
    /// MeshCircuitBreaker's outlier detection on an inbound ejected the application
    /// for the caller's entry, for `left` more.
    #[error(
        "the application of {service} is ejected by its MeshCircuitBreaker outlier detection for {} more",
        crate::timeout::show(*left)
    )]
    AppEjected { service: String, left: Duration },
}

/// Every label, in [`ProxyError::index`] order.
pub(crate) const LABELS: [&str; 19] = [
    "no-config",
    "listener-removed",
    "no-certificate",
    "ca-revoked",
    "denied",
    "bad-request",
    "app-bad-request",
    "not-implemented",
    "no-endpoint",
    "upstream-failed",
    "app-unreachable",
    "app-failed",
    "request-timeout",
    "max-stream-duration",
    "overflow",
    "per-try-timeout",
    "fault-injected",
    "rate-limited",
    "app-ejected",
];

impl ProxyError {
    /// Its position in [`LABELS`] (and in the metrics' counters).
    pub(crate) fn index(&self) -> usize {
        match self {
            ProxyError::NoConfig => 0,
            ProxyError::ListenerRemoved(_) => 1,
            ProxyError::NoCertificate => 2,
            ProxyError::CaRevoked => 3,
            ProxyError::Denied(_) => 4,
            ProxyError::BadRequest(_) => 5,
            ProxyError::AppBadRequest(_) => 6,
            ProxyError::NotImplemented(_) => 7,
            ProxyError::NoEndpoint { .. } => 8,
            ProxyError::Upstream { .. } => 9,
            ProxyError::AppUnreachable(_) => 10,
            ProxyError::AppFailed(_) => 11,
            ProxyError::RequestTimeout(_) => 12,
            ProxyError::MaxStreamDuration(_) => 13,
            ProxyError::Overflow { .. } => 14,
            ProxyError::PerTryTimeout(_) => 15,
            ProxyError::FaultInjected { .. } => 16,
            ProxyError::RateLimited { .. } => 17,
            ProxyError::AppEjected { .. } => 18,
        }
    }

    /// The `x-causeway-error` header's value and the metric's label.
    pub(crate) fn label(&self) -> &'static str {
        LABELS[self.index()]
    }

    pub(crate) fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::NoConfig
            | ProxyError::ListenerRemoved(_)
            | ProxyError::NoCertificate
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::AppEjected { .. }
            | ProxyError::AppUnreachable(_) => S::SERVICE_UNAVAILABLE,
            ProxyError::CaRevoked | ProxyError::Denied(_) => S::FORBIDDEN,
            ProxyError::BadRequest(_) | ProxyError::AppBadRequest(_) => S::BAD_REQUEST,
            ProxyError::NotImplemented(_) => S::NOT_IMPLEMENTED,
            ProxyError::Upstream { .. } | ProxyError::AppFailed(_) => S::BAD_GATEWAY,
            ProxyError::RequestTimeout(_)
            | ProxyError::MaxStreamDuration(_)
            | ProxyError::PerTryTimeout(_) => S::GATEWAY_TIMEOUT,
            ProxyError::FaultInjected { status } | ProxyError::RateLimited { status, .. } => {
                S::from_u16(*status).unwrap_or(S::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The answer: status, `causeway: <reason>\n`, and the header naming the cause.
    pub(crate) fn into_response(self) -> http::Response<Body> {
        let mut r = text(self.status(), format!("causeway: {self}\n"));
        let headers = r.headers_mut();
        headers.insert(ERROR_HEADER, http::HeaderValue::from_static(self.label()));
        // Evidence for the callers' outlier detection: this endpoint is out.
        match self {
            ProxyError::AppUnreachable(_) => {
                headers.insert(
                    APP_UNAVAILABLE,
                    http::HeaderValue::from_static("application"),
                );
            }
            ProxyError::AppEjected { .. } => {
                headers.insert(APP_UNAVAILABLE, http::HeaderValue::from_static("ejected"));
            }
            _ => {}
        }
        if let ProxyError::RateLimited {
            set_headers,
            add_headers,
            retry_after,
            ..
        } = &self
        {
            let pair = |(k, v): &(String, String)| {
                Some((
                    http::HeaderName::try_from(k.as_str()).ok()?,
                    http::HeaderValue::try_from(v.as_str()).ok()?,
                ))
            };
            for (k, v) in set_headers.iter().filter_map(pair) {
                headers.insert(k, v);
            }
            for (k, v) in add_headers.iter().filter_map(pair) {
                headers.append(k, v);
            }
            if !headers.contains_key(http::header::RETRY_AFTER) {
                // Whole seconds, rounded up: a caller that waits that long gets a token.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[test]
    fn every_error_has_its_own_label_in_index_order() {
        let all = [
            ProxyError::NoConfig,
            ProxyError::ListenerRemoved("inbound"),
            ProxyError::NoCertificate,
            ProxyError::CaRevoked,
            ProxyError::Denied("no".into()),
            ProxyError::BadRequest("bad Host header"),
            ProxyError::AppBadRequest(std::io::Error::other("x")),
            ProxyError::NotImplemented(std::io::Error::other("x")),
            ProxyError::NoEndpoint {
                service: "s".into(),
                reason: "r".into(),
            },
            ProxyError::Upstream {
                service: "s".into(),
                error: "e".into(),
            },
            ProxyError::AppUnreachable("x".into()),
            ProxyError::AppFailed("x".into()),
            ProxyError::RequestTimeout(Duration::from_millis(500)),
            ProxyError::MaxStreamDuration(Duration::from_secs(60)),
            ProxyError::Overflow {
                service: "s".into(),
                max: 1,
                limit: "maxRequests",
            },
            ProxyError::PerTryTimeout(Duration::from_millis(200)),
            ProxyError::FaultInjected { status: 503 },
            ProxyError::RateLimited {
                status: 429,
                set_headers: vec![],
                add_headers: vec![],
                retry_after: Duration::from_millis(1500),
            },
            ProxyError::AppEjected {
                service: "s".into(),
                left: Duration::from_secs(10),
            },
        ];
        assert_eq!(all.len(), LABELS.len());
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_request_timeout_is_a_504_that_names_its_cause() {
        let r = ProxyError::RequestTimeout(Duration::from_millis(500)).into_response();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()[ERROR_HEADER], "request-timeout");
        assert_eq!(r.headers()["x-causeway-proxy"], "1");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"causeway: no response within the request timeout (500ms)\n"
        );
    }

    #[test]
    fn a_rate_limited_answer_has_its_headers_and_a_retry_after() {
        let limited = |set: Vec<(String, String)>| ProxyError::RateLimited {
            status: 429,
            set_headers: set,
            add_headers: vec![
                ("x-limit".into(), "a".into()),
                ("x-limit".into(), "b".into()),
            ],
            retry_after: Duration::from_millis(1500),
        };
        let r = limited(vec![]).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[ERROR_HEADER], "rate-limited");
        assert_eq!(r.headers()["retry-after"], "2", "rounded up");
        assert_eq!(r.headers().get_all("x-limit").iter().count(), 2);
        // The policy's own retry-after wins.
        let r = limited(vec![("retry-after".into(), "10".into())]).into_response();
        assert_eq!(r.headers()["retry-after"], "10");
    }
}
