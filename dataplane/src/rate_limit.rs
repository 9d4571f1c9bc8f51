//! MeshRateLimit, enforced on the inbound: local limits, counted by this sidecar alone.
//! Each of an inbound's entries (by caller: see
//! [`CallerRateLimit`](causeway_api::proxy_config::CallerRateLimit)) has a bucket per
//! protocol, shared by all the callers it matches: `num` tokens, full again once
//! `interval` has passed since it was last filled. So of the requests sent within one
//! interval, exactly `num` pass (while the bucket was full when they began). A request
//! over it is answered with the entry's status (429 by default) and headers, and
//! `retry-after` (seconds until the bucket fills) unless the entry sets its own; a
//! connection over the TCP rate is closed at once.
//!
//! [`Bucket::take`] takes the time as input and is unit-tested without sockets.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use causeway_api::proxy_config::{CallerRateLimit, RatePolicy};

/// One limit's tokens.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: RatePolicy,
    /// Tokens left, and when the bucket was last filled (never yet: `None`).
    state: Mutex<(u32, Option<Instant>)>,
}

impl Bucket {
    pub(crate) fn new(rate: RatePolicy) -> Bucket {
        Bucket {
            rate,
            state: Mutex::new((0, None)),
        }
    }

    /// Takes a token at `now`: `Err(wait)` when there is none, `wait` being the time
    /// until the bucket fills again.
    pub(crate) fn take(&self, now: Instant) -> Result<(), Duration> {
        let interval = self.rate.interval.as_std();
        let mut s = self.state.lock().expect("bucket lock");
        if s.1.is_none_or(|filled| now >= filled + interval) {
            *s = (self.rate.num, Some(now));
        }
        if s.0 == 0 {
            let filled = s.1.expect("filled above");
            return Err((filled + interval).saturating_duration_since(now));
        }
        s.0 -= 1;
        Ok(())
    }
}

/// An inbound's limits, with their buckets.
pub(crate) struct InboundRateLimits {
    pub(crate) config: Vec<CallerRateLimit>,
    buckets: Vec<(Option<Bucket>, Option<Bucket>)>,
}

impl InboundRateLimits {
    pub(crate) fn new(config: &[CallerRateLimit]) -> InboundRateLimits {
        InboundRateLimits {
            config: config.to_vec(),
            buckets: config
                .iter()
                .map(|e| {
                    (
                        e.http.as_ref().map(|h| Bucket::new(h.rate)),
                        e.tcp.map(Bucket::new),
                    )
                })
                .collect(),
        }
    }

    /// The entry for the caller `peer` (without an identity: only an
    /// entry for every caller matches).
    fn entry(&self, peer: Option<&causeway_api::proxy_config::Peer>) -> Option<usize> {
        self.config.iter().position(|e| match peer {
            Some(p) => e.source.matches(p),
            None => e.source == causeway_api::proxy_config::SourceMatch::Any,
        })
    }

    /// Counts an HTTP request from `peer` at `now`: `Err` with the entry that limits it
    /// and the wait until its bucket fills.
    pub(crate) fn request(
        &self,
        peer: Option<&causeway_api::proxy_config::Peer>,
        now: Instant,
    ) -> Result<(), (&CallerRateLimit, Duration)> {
        let Some(i) = self.entry(peer) else {
            return Ok(());
        };
        match &self.buckets[i].0 {
            Some(bucket) => bucket.take(now).map_err(|wait| (&self.config[i], wait)),
            None => Ok(()),
        }
    }

    /// Counts a new connection from `peer` at `now`: false when over its TCP rate.
    pub(crate) fn connection(
        &self,
        peer: Option<&causeway_api::proxy_config::Peer>,
        now: Instant,
    ) -> bool {
        let Some(i) = self.entry(peer) else {
            return true;
        };
        self.buckets[i]
            .1
            .as_ref()
            .is_none_or(|b| b.take(now).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use causeway_api::proxy_config::{HttpRateLimitPolicy, SourceMatch};

    use super::*;

    fn rate(num: u32, secs: u64) -> RatePolicy {
        RatePolicy {
            num,
            interval: causeway_api::Duration::from_secs(secs),
        }
    }

    #[test]
    fn of_the_requests_in_one_interval_exactly_num_pass() {
        let b = Bucket::new(rate(5, 10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let passed = (0..20).filter(|i| b.take(at(*i * 10)).is_ok()).count();
        assert_eq!(passed, 5);
        // Over it: the wait until the bucket fills, 10 s after it was filled.
        assert_eq!(b.take(at(4_000)), Err(Duration::from_secs(6)));
        // Full again once the interval has passed.
        let passed = (0..20).filter(|i| b.take(at(10_000 + i)).is_ok()).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn callers_count_against_their_entry() {
        let http = |num| HttpRateLimitPolicy {
            rate: rate(num, 60),
            status: 429,
            set_headers: vec![],
            add_headers: vec![],
        };
        let limits = InboundRateLimits::new(&[
            CallerRateLimit {
                source: SourceMatch::Spiffe {
                    id: "spiffe://td/web".into(),
                },
                http: Some(http(1)),
                tcp: None,
            },
            CallerRateLimit {
                source: SourceMatch::Any,
                http: Some(http(2)),
                tcp: Some(rate(1, 60)),
            },
        ]);
        let now = Instant::now();
        let web = Some(&causeway_api::proxy_config::Peer::id("spiffe://td/web"));
        let other = Some(&causeway_api::proxy_config::Peer::id("spiffe://td/other"));
        assert!(limits.request(web, now).is_ok());
        let (entry, _) = limits.request(web, now).unwrap_err();
        assert_eq!(entry.source, limits.config[0].source);
        // Every other caller shares the second entry's bucket.
        assert!(limits.request(other, now).is_ok());
        assert!(limits.request(None, now).is_ok());
        assert!(limits.request(other, now).is_err());
        // Connections: web's entry has no TCP limit; the others' one a minute.
        assert!(limits.connection(web, now) && limits.connection(web, now));
        assert!(limits.connection(other, now));
        assert!(!limits.connection(other, now));
    }
}
