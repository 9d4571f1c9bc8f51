//! MeshFaultInjection, enforced on the inbound: for a caller's request, each of its
//! faults' parts is drawn on its own with its percentage ([`plan`]); the delays drawn
//! add up and run first, then an abort drawn answers the request (the first one drawn,
//! in the list's order) instead of the application, and a bandwidth limit drawn slows
//! the response body ([`throttle`], the lowest one drawn). The draw takes its random
//! numbers as input, so it is unit-tested without sockets.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use causeway_api::proxy_config::{CallerFaults, Fault};
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::{Body, BoxError, boxed};

/// What the faults do to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<u16>,
    /// Kilobits a second.
    pub(crate) bandwidth: Option<u64>,
}

/// The faults for the caller `peer`: the first entry whose source matches it (none
/// without an identity, unless an entry is for every caller).
pub(crate) fn for_caller<'a>(
    entries: &'a [CallerFaults],
    peer: Option<&causeway_api::proxy_config::Peer>,
) -> &'a [Fault] {
    entries
        .iter()
        .find(|e| match peer {
            Some(p) => e.source.matches(p),
            None => e.source == causeway_api::proxy_config::SourceMatch::Any,
        })
        .map_or(&[], |e| e.faults.as_slice())
}

/// Draws `faults` for one request; `roll` gives numbers in [0, 100).
pub(crate) fn plan(faults: &[Fault], mut roll: impl FnMut() -> f64) -> Plan {
    let mut p = Plan::default();
    for f in faults {
        if let Some(d) = &f.delay
            && roll() < d.percentage
        {
            p.delay = Some(p.delay.unwrap_or_default() + d.value.as_std());
        }
        if let Some(a) = &f.abort
            && roll() < a.percentage
            && p.abort.is_none()
        {
            p.abort = Some(a.http_status);
        }
        if let Some(b) = &f.response_bandwidth
            && roll() < b.percentage
        {
            p.bandwidth = Some(p.bandwidth.map_or(b.kbps, |k| k.min(b.kbps)));
        }
    }
    p
}

/// How long a body that has sent `sent` bytes `elapsed` after its start must wait to
/// keep to `kbps` kilobits a second.
fn pause(sent: u64, elapsed: Duration, kbps: u64) -> Duration {
    let due = Duration::from_secs_f64(sent as f64 * 8.0 / (kbps.max(1) as f64 * 1000.0));
    due.saturating_sub(elapsed)
}

/// `body`, sent at most `kbps` kilobits a second: each chunk waits until the bytes
/// before it are due.
pub(crate) fn throttle(body: Body, kbps: u64) -> Body {
    boxed(Throttled {
        inner: body,
        kbps,
        started: Instant::now(),
        sent: 0,
        held: None,
        sleep: None,
    })
}

struct Throttled {
    inner: Body,
    kbps: u64,
    started: Instant,
    sent: u64,
    /// A frame read and waiting for its time.
    held: Option<Frame<Bytes>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for Throttled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(sleep) = &mut self.sleep {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
                return Poll::Ready(self.held.take().map(Ok));
            }
            let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(f)) => f,
                other => return Poll::Ready(other),
            };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            // The chunk goes once the bytes before it and itself are due.
            self.sent += len;
            let wait = pause(self.sent, self.started.elapsed(), self.kbps);
            if wait.is_zero() {
                return Poll::Ready(Some(Ok(frame)));
            }
            self.held = Some(frame);
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use causeway_api::proxy_config::{FaultAbort, FaultBandwidth, FaultDelay, SourceMatch};

    use super::*;

    fn fault(
        abort: Option<(u16, f64)>,
        delay: Option<(u64, f64)>,
        kbps: Option<(u64, f64)>,
    ) -> Fault {
        Fault {
            abort: abort.map(|(http_status, percentage)| FaultAbort {
                http_status,
                percentage,
            }),
            delay: delay.map(|(ms, percentage)| FaultDelay {
                value: causeway_api::Duration::from_millis(ms),
                percentage,
            }),
            response_bandwidth: kbps.map(|(kbps, percentage)| FaultBandwidth { kbps, percentage }),
        }
    }

    #[test]
    fn each_part_is_drawn_with_its_own_percentage() {
        let faults = [
            fault(Some((503, 10.0)), Some((100, 50.0)), None),
            fault(Some((500, 100.0)), Some((200, 100.0)), Some((800, 100.0))),
        ];
        // Rolls under every percentage: delays add up, the first abort wins.
        let all = plan(&faults, || 0.0);
        assert_eq!(
            all,
            Plan {
                delay: Some(Duration::from_millis(300)),
                abort: Some(503),
                bandwidth: Some(800)
            }
        );
        // Rolls of 60: only the 100% parts.
        let some = plan(&faults, || 60.0);
        assert_eq!(some.delay, Some(Duration::from_millis(200)));
        assert_eq!(some.abort, Some(500));
        // 0% never fires, even on a roll of 0.
        assert_eq!(
            plan(&[fault(Some((503, 0.0)), None, None)], || 0.0),
            Plan::default()
        );
    }

    #[test]
    fn the_observed_rate_follows_the_percentage() {
        let faults = [fault(Some((503, 20.0)), None, None)];
        let mut rng = 0u64;
        let mut next = || {
            // A small LCG: the test needs a known sequence, not a good generator.
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as f64 / (1u64 << 31) as f64 * 100.0
        };
        let aborted = (0..10_000)
            .filter(|_| plan(&faults, &mut next).abort.is_some())
            .count();
        assert!((1_800..=2_200).contains(&aborted), "{aborted}");
    }

    #[test]
    fn a_caller_gets_the_first_entry_that_matches_it() {
        let entries = vec![
            CallerFaults {
                source: SourceMatch::Spiffe {
                    id: "spiffe://td/web".into(),
                },
                faults: vec![],
            },
            CallerFaults {
                source: SourceMatch::Any,
                faults: vec![fault(Some((503, 100.0)), None, None)],
            },
        ];
        assert!(
            for_caller(
                &entries,
                Some(&causeway_api::proxy_config::Peer::id("spiffe://td/web"))
            )
            .is_empty()
        );
        assert_eq!(
            for_caller(
                &entries,
                Some(&causeway_api::proxy_config::Peer::id("spiffe://td/admin"))
            )
            .len(),
            1
        );
        assert_eq!(
            for_caller(&entries, None).len(),
            1,
            "no identity: the entry for all"
        );
        assert!(for_caller(&entries[..1], None).is_empty());
    }

    #[test]
    fn a_throttled_body_is_due_at_its_rate() {
        // 1000 kbps = 125 kB/s: 125 kB is due after a second.
        assert_eq!(pause(125_000, Duration::ZERO, 1000), Duration::from_secs(1));
        assert_eq!(
            pause(125_000, Duration::from_millis(400), 1000),
            Duration::from_millis(600)
        );
        assert_eq!(pause(1_000, Duration::from_secs(1), 1000), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_throttled_body_takes_as_long_as_its_rate_says() {
        use http_body_util::BodyExt as _;
        // 25 kB at 1000 kbps (125 kB/s): 200 ms.
        let chunks = (0..5).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![0u8; 5_000]))));
        let body = boxed(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )));
        let t0 = Instant::now();
        let all = throttle(body, 1000).collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 25_000);
        let took = t0.elapsed();
        assert!(
            (Duration::from_millis(195)..=Duration::from_secs(2)).contains(&took),
            "{took:?}"
        );
    }
}
