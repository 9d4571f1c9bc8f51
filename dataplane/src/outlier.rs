//! Circuit breaking (MeshCircuitBreaker) for one destination: a cap on its requests in
//! flight (HTTP) or connections open (TCP), and consecutive-failure outlier detection
//! with Envoy's semantics. Each answer from an endpoint is classified ([`Outcome`]);
//! `totalFailures` 5xx in a row, `gatewayFailures` 502/503/504 in a row, or
//! `localOriginFailures` local failures (resets) in a row eject the endpoint for
//! `baseEjectionTime` times the number of its ejections, unless more than
//! `maxEjectionPercent` of the destination's endpoints would then be out (one may always
//! be). Without `splitLocalErrors`, local failures count in the first two as well.
//! The ejection uses the balancer's passive health, the same that refused connections
//! use, so traffic moves to the next endpoint or zone as for any ejection.
//!
//! The interval-based detectors (success rate, failure percentage) are in
//! [`interval`]. The counting is pure ([`Streaks`], [`outliers`]), unit-tested without
//! sockets.

mod interval;

pub(crate) use interval::{Tally, outliers};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use causeway_api::proxy_config::OutlierDetection;

/// What an endpoint's answer to one request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer with this status.
    Status(u16),
    /// No answer: the connection was reset or dropped under the request.
    LocalFailure,
}

/// An endpoint's current runs of failures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streaks {
    total: u32,
    gateway: u32,
    local: u32,
}

impl Streaks {
    /// Counts `outcome`; whether a detector of `od` fires (the endpoint is an outlier;
    /// its streaks start over).
    pub(crate) fn record(&mut self, outcome: Outcome, od: &OutlierDetection) -> bool {
        let (server, gateway, local) = match outcome {
            Outcome::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504), false),
            Outcome::LocalFailure => (!od.split_local_errors, !od.split_local_errors, true),
        };
        let bump = |n: &mut u32, hit: bool| *n = if hit { n.saturating_add(1) } else { 0 };
        bump(&mut self.total, server);
        bump(&mut self.gateway, gateway);
        if od.split_local_errors {
            // Local and external failures are told apart: an answer ends a local run.
            bump(&mut self.local, local);
        }
        let fired = |n: u32, limit: Option<u32>| limit.is_some_and(|l| n >= l.max(1));
        let outlier = fired(self.total, od.total_failures)
            || fired(self.gateway, od.gateway_failures)
            || fired(self.local, od.local_origin_failures);
        if outlier {
            *self = Streaks::default();
        }
        outlier
    }
}

/// How long the `n`th ejection (from 1) lasts: the base times `n`, at most 300 s (as
/// Envoy's `max_ejection_time`) unless the base itself is longer.
pub(crate) fn ejection_time(base: Duration, n: u32) -> Duration {
    let cap = Duration::from_secs(300).max(base);
    base.saturating_mul(n.max(1)).min(cap)
}

/// Whether one more of `total` endpoints may be ejected while `ejected` are: at most
/// `max_percent` of them, but always one.
pub(crate) fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * max_percent as usize
}

/// A cap on what is in flight to a destination at once (requests, or connections).
#[derive(Debug)]
pub(crate) struct Limit {
    max: u64,
    current: AtomicU64,
}

/// One admitted request or connection; released when dropped.
pub(crate) struct Admitted<'a>(&'a Limit);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limit {
    pub(crate) fn new(max: u32) -> Limit {
        Limit {
            max: u64::from(max),
            current: AtomicU64::new(0),
        }
    }

    /// The cap.
    pub(crate) fn max(&self) -> u32 {
        u32::try_from(self.max).unwrap_or(u32::MAX)
    }

    /// Admits one more, or `None` when the cap is reached.
    pub(crate) fn admit(&self) -> Option<Admitted<'_>> {
        let before = self.current.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.current.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(split: bool) -> OutlierDetection {
        OutlierDetection {
            base_ejection_time: causeway_api::Duration::from_secs(30),
            max_ejection_percent: 20,
            split_local_errors: split,
            total_failures: Some(3),
            gateway_failures: Some(2),
            local_origin_failures: split.then_some(4),
            interval: causeway_api::Duration::from_secs(10),
            success_rate: None,
            failure_percentage: None,
        }
    }

    #[test]
    fn runs_of_failures_fire_their_detector_and_a_success_ends_them() {
        let od = od(false);
        let mut s = Streaks::default();
        // 500s: total fires at the third.
        assert!(!s.record(Outcome::Status(500), &od));
        assert!(!s.record(Outcome::Status(500), &od));
        assert!(s.record(Outcome::Status(500), &od));
        // A 200 ends a run.
        assert!(!s.record(Outcome::Status(500), &od));
        assert!(!s.record(Outcome::Status(200), &od));
        assert!(!s.record(Outcome::Status(500), &od));
        // Gateway errors fire at the second; 4xx are not failures.
        let mut s = Streaks::default();
        assert!(!s.record(Outcome::Status(503), &od));
        assert!(s.record(Outcome::Status(502), &od));
        assert!(!s.record(Outcome::Status(404), &od));
        // Not split: resets count as gateway errors too.
        let mut s = Streaks::default();
        assert!(!s.record(Outcome::LocalFailure, &od));
        assert!(s.record(Outcome::LocalFailure, &od));
    }

    #[test]
    fn split_local_errors_count_apart() {
        let od = od(true);
        let mut s = Streaks::default();
        for _ in 0..3 {
            assert!(
                !s.record(Outcome::LocalFailure, &od),
                "only the local run grows"
            );
        }
        assert!(
            s.record(Outcome::LocalFailure, &od),
            "the fourth local failure"
        );
        // An answer (even a 503) ends a local run.
        let mut s = Streaks::default();
        for _ in 0..3 {
            s.record(Outcome::LocalFailure, &od);
        }
        assert!(!s.record(Outcome::Status(500), &od));
        assert!(!s.record(Outcome::LocalFailure, &od));
    }

    #[test]
    fn ejections_grow_and_are_capped_and_only_a_share_may_be_out() {
        let base = Duration::from_secs(30);
        assert_eq!(ejection_time(base, 1), base);
        assert_eq!(ejection_time(base, 3), Duration::from_secs(90));
        assert_eq!(ejection_time(base, 50), Duration::from_secs(300));
        assert!(may_eject(0, 2, 20), "one may always be ejected");
        assert!(!may_eject(1, 2, 20));
        assert!(may_eject(1, 10, 20) && !may_eject(2, 10, 20));
        assert!(may_eject(1, 2, 100));
    }

    #[test]
    fn a_limit_admits_up_to_its_cap_and_releases_on_drop() {
        let l = Limit::new(2);
        let a = l.admit().unwrap();
        let b = l.admit().unwrap();
        assert!(l.admit().is_none(), "over the cap");
        drop(a);
        let c = l.admit();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(l.current.load(Ordering::Relaxed), 0);
    }
}
