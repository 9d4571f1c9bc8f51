//! MeshCircuitBreaker, enforced on the inbound. Each of an inbound's entries (by caller:
//! see [`CallerLimits`]) has its own caps and its own view of the application's health,
//! shared by all the callers it matches:
//!
//! - `maxConnections`: caller connections open at once (one more is closed after its
//!   handshake, once the caller's identity is known);
//! - `maxRequests`: requests in flight to the application;
//! - `maxPendingRequests`: requests waiting for a connection to the application (a dial,
//!   or the HTTP/2 connection being set up);
//! - `maxRetries`: retried requests in flight, which the callers' sidecars mark with
//!   [`ATTEMPT_HEADER`] (2 for the first retry), so a retry storm from every caller
//!   together cannot swamp the application;
//! - outlier detection of the application itself: when its answers fail as a detector
//!   says, the entry's callers are answered 503 `app-ejected` by this sidecar for the
//!   ejection time, marked so their sidecars eject this endpoint and try another, as
//!   Envoy does for an inbound cluster (its one host may always be ejected).
//!
//! [`AppHealth`] takes the time as input and is unit-tested without sockets.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use causeway_api::proxy_config::{CallerLimits, OutlierDetection, Peer, SourceMatch};

use crate::outlier::{Limit, Outcome, Streaks, Tally, ejection_time, outliers};

/// Set by an outbound on each retry of a request: the try's number (2 for the first
/// retry). An inbound counts requests carrying it against `maxRetries`.
pub(crate) const ATTEMPT_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-causeway-attempt");

/// Whether a request is a retry, as its caller's sidecar marked it.
pub(crate) fn is_retry(headers: &http::HeaderMap) -> bool {
    headers
        .get(ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|n| n > 1)
}

/// An inbound's entries, with their counters.
pub(crate) struct InboundBreakers {
    pub(crate) config: Vec<CallerLimits>,
    entries: Vec<Entry>,
}

/// One entry's caps and the application's health as its callers see it.
pub(crate) struct Entry {
    pub(crate) connections: Option<Limit>,
    pub(crate) requests: Option<Limit>,
    pub(crate) pending: Option<Limit>,
    pub(crate) retries: Option<Limit>,
    health: Option<Mutex<AppHealth>>,
}

impl InboundBreakers {
    pub(crate) fn new(config: &[CallerLimits]) -> InboundBreakers {
        InboundBreakers {
            config: config.to_vec(),
            entries: config
                .iter()
                .map(|e| Entry {
                    connections: e.limits.max_connections.map(Limit::new),
                    requests: e.limits.max_requests.map(Limit::new),
                    pending: e.limits.max_pending_requests.map(Limit::new),
                    retries: e.limits.max_retries.map(Limit::new),
                    health: e
                        .limits
                        .outlier_detection
                        .clone()
                        .map(|od| Mutex::new(AppHealth::new(od))),
                })
                .collect(),
        }
    }

    /// The entry for the caller `peer` (without an identity: only an entry for every
    /// caller matches).
    pub(crate) fn entry(&self, peer: Option<&Peer>) -> Option<&Entry> {
        let i = self.config.iter().position(|e| match peer {
            Some(p) => e.source.matches(p),
            None => e.source == SourceMatch::Any,
        })?;
        Some(&self.entries[i])
    }
}

impl Entry {
    /// How long the application stays ejected for this entry's callers, from `now`;
    /// `None` when it is not ejected.
    pub(crate) fn ejected(&self, now: Instant) -> Option<Duration> {
        let health = self.health.as_ref()?;
        health.lock().expect("app health lock").ejected(now)
    }

    /// Counts the application's answer to one request; true when it ejects the
    /// application now.
    pub(crate) fn record(&self, outcome: Outcome, now: Instant) -> bool {
        self.health
            .as_ref()
            .is_some_and(|health| health.lock().expect("app health lock").record(outcome, now))
    }
}

/// The application's health under one outlier detection: its runs of failures, its
/// answers in the current interval, and its ejections.
#[derive(Debug)]
pub(crate) struct AppHealth {
    od: OutlierDetection,
    streaks: Streaks,
    tally: Tally,
    interval_started: Option<Instant>,
    /// Ejections so far: the next lasts `baseEjectionTime` times one more. One less for
    /// each interval it passes healthy, as Envoy does.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl AppHealth {
    pub(crate) fn new(od: OutlierDetection) -> AppHealth {
        AppHealth {
            od,
            streaks: Streaks::default(),
            tally: Tally::default(),
            interval_started: None,
            ejections: 0,
            ejected_until: None,
        }
    }

    /// The time left of the current ejection at `now`, if any.
    pub(crate) fn ejected(&mut self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until?;
        if now >= until {
            // Back: the detectors start over.
            self.ejected_until = None;
            self.streaks = Streaks::default();
            self.tally = Tally::default();
            self.interval_started = Some(now);
            return None;
        }
        Some(until - now)
    }

    /// Counts one answer at `now`; true when it ejects the application.
    pub(crate) fn record(&mut self, outcome: Outcome, now: Instant) -> bool {
        if self.ejected(now).is_some() {
            // Answers of requests sent before the ejection do not extend it.
            return false;
        }
        let started = *self.interval_started.get_or_insert(now);
        let mut outlier = self.streaks.record(outcome, &self.od);
        self.tally.count(outcome, self.od.split_local_errors);
        if now.saturating_duration_since(started) >= self.od.interval.as_std() {
            // The interval's verdict, on its answers (this one included).
            outlier |= !outliers(
                &[self.tally],
                self.od.success_rate.as_ref(),
                self.od.failure_percentage.as_ref(),
            )
            .is_empty();
            if !outlier {
                self.ejections = self.ejections.saturating_sub(1);
            }
            self.tally = Tally::default();
            self.interval_started = Some(now);
        }
        if !outlier {
            return false;
        }
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until =
            Some(now + ejection_time(self.od.base_ejection_time.as_std(), self.ejections));
        true
    }
}

#[cfg(test)]
mod tests {
    use causeway_api::proxy_config::{FailurePercentageDetector, InboundLimits};

    use super::*;

    fn od() -> OutlierDetection {
        OutlierDetection {
            base_ejection_time: causeway_api::Duration::from_secs(10),
            max_ejection_percent: 20,
            split_local_errors: false,
            total_failures: Some(3),
            gateway_failures: None,
            local_origin_failures: None,
            interval: causeway_api::Duration::from_secs(5),
            success_rate: None,
            failure_percentage: None,
        }
    }

    #[test]
    fn failures_in_a_row_eject_the_application_for_longer_each_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = AppHealth::new(od());
        assert!(!h.record(Outcome::Status(500), at(0)));
        assert!(!h.record(Outcome::LocalFailure, at(1)));
        assert!(h.record(Outcome::Status(503), at(2)), "the third in a row");
        assert_eq!(h.ejected(at(1_002)), Some(Duration::from_secs(9)));
        // Answers to requests sent before do not extend it.
        assert!(!h.record(Outcome::Status(500), at(3_000)));
        assert_eq!(h.ejected(at(10_002)), None, "back after 10 s");
        // A success ends a run.
        for (i, s) in [500, 500, 200, 500, 500].into_iter().enumerate() {
            assert!(!h.record(Outcome::Status(s), at(10_100 + i as u64)));
        }
        assert!(h.record(Outcome::Status(500), at(10_200)));
        assert_eq!(
            h.ejected(at(10_200)),
            Some(Duration::from_secs(20)),
            "the second ejection lasts twice the base"
        );
    }

    #[test]
    fn a_failure_percentage_over_an_interval_ejects_the_application() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = AppHealth::new(OutlierDetection {
            total_failures: None,
            failure_percentage: Some(FailurePercentageDetector {
                minimum_hosts: 1,
                request_volume: 10,
                threshold: 50,
            }),
            ..od()
        });
        // 40% failures over the first interval: kept.
        for i in 0..10u64 {
            let s = if i % 5 < 2 { 500 } else { 200 };
            assert!(!h.record(Outcome::Status(s), at(i * 100)));
        }
        assert!(!h.record(Outcome::Status(200), at(5_000)));
        assert_eq!(h.ejected(at(5_000)), None);
        // 60% in the next: ejected at the interval's end.
        for i in 0..10u64 {
            let s = if i % 5 < 3 { 500 } else { 200 };
            assert!(!h.record(Outcome::Status(s), at(5_100 + i * 100)));
        }
        assert!(h.record(Outcome::Status(500), at(10_000)));
        assert!(h.ejected(at(10_001)).is_some());
    }

    #[test]
    fn callers_count_against_their_entry() {
        let limits = |max_requests| InboundLimits {
            max_requests: Some(max_requests),
            ..InboundLimits::default()
        };
        let breakers = InboundBreakers::new(&[
            CallerLimits {
                source: SourceMatch::Spiffe {
                    id: "spiffe://td/web".into(),
                },
                limits: limits(1),
            },
            CallerLimits {
                source: SourceMatch::Any,
                limits: limits(2),
            },
        ]);
        let web = Peer::id("spiffe://td/web");
        let other = Peer::id("spiffe://td/other");
        let requests = |p| breakers.entry(p).unwrap().requests.as_ref().unwrap();
        let _w = requests(Some(&web)).admit().unwrap();
        assert!(requests(Some(&web)).admit().is_none(), "web's own cap");
        // Every other caller shares the second entry, without an identity too.
        let _a = requests(Some(&other)).admit().unwrap();
        let _b = requests(None).admit().unwrap();
        assert!(requests(Some(&other)).admit().is_none());
        // No entry for a caller without an identity when none is for every caller.
        let only_web = InboundBreakers::new(&breakers.config[..1]);
        assert!(only_web.entry(None).is_none());
        assert!(only_web.entry(Some(&other)).is_none());
    }

    #[test]
    fn retries_are_the_tries_after_the_first() {
        let mut h = http::HeaderMap::new();
        assert!(!is_retry(&h));
        h.insert(ATTEMPT_HEADER, http::HeaderValue::from_static("1"));
        assert!(!is_retry(&h));
        h.insert(ATTEMPT_HEADER, http::HeaderValue::from_static("2"));
        assert!(is_retry(&h));
        h.insert(ATTEMPT_HEADER, http::HeaderValue::from_static("x"));
        assert!(!is_retry(&h));
    }
}
