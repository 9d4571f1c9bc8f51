//! The interval-based outlier detectors (Envoy's): every `interval`, the endpoints of a
//! destination are judged on the answers of that interval.
//!
//! - Success rate: among endpoints with at least `requestVolume` answers, when there
//!   are at least `minimumHosts` of them, one whose success rate is below
//!   `mean - standardDeviationFactor * stddev` of theirs is an outlier.
//! - Failure percentage: among endpoints with at least `requestVolume` answers, when
//!   there are at least `minimumHosts` of them, one whose share of failures is at least
//!   `threshold` percent is an outlier.
//!
//! A failure is a 5xx answer, or a local failure (a reset, a per-try timeout) unless
//! local failures are split from external ones. Pure: the caller counts and applies.

use causeway_api::proxy_config::{FailurePercentageDetector, SuccessRateDetector};

/// One endpoint's answers in the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl Tally {
    /// Counts an answer: a 5xx or a local failure fails, unless local failures are
    /// `split` from external ones (then they are not counted here).
    pub(crate) fn count(&mut self, outcome: super::Outcome, split: bool) {
        match outcome {
            super::Outcome::Status(s) if (500..600).contains(&s) => self.failures += 1,
            super::Outcome::Status(_) => self.successes += 1,
            super::Outcome::LocalFailure if !split => self.failures += 1,
            super::Outcome::LocalFailure => {}
        }
    }

    fn total(&self) -> u64 {
        self.successes + self.failures
    }
}

/// The indices of the endpoints (in `tallies`' order) that the detectors find to be
/// outliers over the interval.
pub(crate) fn outliers(
    tallies: &[Tally],
    success_rate: Option<&SuccessRateDetector>,
    failure_percentage: Option<&FailurePercentageDetector>,
) -> Vec<usize> {
    let mut out = Vec::new();
    if let Some(sr) = success_rate {
        let judged: Vec<(usize, f64)> = tallies
            .iter()
            .enumerate()
            .filter(|(_, t)| t.total() >= u64::from(sr.request_volume.max(1)))
            .map(|(i, t)| (i, t.successes as f64 * 100.0 / t.total() as f64))
            .collect();
        if !judged.is_empty() && judged.len() >= sr.minimum_hosts as usize {
            let n = judged.len() as f64;
            let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
            let var = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let floor =
                mean - f64::from(sr.standard_deviation_factor_thousandths) / 1000.0 * var.sqrt();
            out.extend(judged.iter().filter(|(_, r)| *r < floor).map(|(i, _)| *i));
        }
    }
    if let Some(fp) = failure_percentage {
        let judged: Vec<(usize, &Tally)> = tallies
            .iter()
            .enumerate()
            .filter(|(_, t)| t.total() >= u64::from(fp.request_volume.max(1)))
            .collect();
        if !judged.is_empty() && judged.len() >= fp.minimum_hosts as usize {
            for (i, t) in judged {
                if t.failures * 100 >= u64::from(fp.threshold) * t.total() && !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(successes: u64, failures: u64) -> Tally {
        Tally {
            successes,
            failures,
        }
    }

    fn sr(minimum_hosts: u32, request_volume: u32) -> SuccessRateDetector {
        SuccessRateDetector {
            minimum_hosts,
            request_volume,
            standard_deviation_factor_thousandths: 1900,
        }
    }

    #[test]
    fn a_success_rate_far_below_the_others_is_an_outlier() {
        // Five endpoints at 99-100%, one at 60%.
        let tallies = [
            t(100, 0),
            t(99, 1),
            t(100, 0),
            t(99, 1),
            t(100, 0),
            t(60, 40),
        ];
        assert_eq!(outliers(&tallies, Some(&sr(5, 100)), None), [5]);
        // Too few endpoints with enough answers: no verdict.
        assert!(outliers(&tallies, Some(&sr(7, 100)), None).is_empty());
        // Too few answers each (volume 200): none judged.
        assert!(outliers(&tallies, Some(&sr(1, 200)), None).is_empty());
        // All alike: nobody is below the mean by a margin.
        let alike = [t(90, 10); 5];
        assert!(outliers(&alike, Some(&sr(5, 100)), None).is_empty());
    }

    #[test]
    fn a_failure_percentage_at_the_threshold_is_an_outlier() {
        let fp = FailurePercentageDetector {
            minimum_hosts: 2,
            request_volume: 50,
            threshold: 85,
        };
        let tallies = [t(100, 0), t(15, 85), t(20, 80), t(1, 10)];
        // The second has 85% failures; the fourth fails more but had too few answers.
        assert_eq!(outliers(&tallies, None, Some(&fp)), [1]);
        let strict = FailurePercentageDetector {
            minimum_hosts: 5,
            ..fp
        };
        assert!(outliers(&tallies, None, Some(&strict)).is_empty());
        // Both detectors: an endpoint is listed once.
        let both = outliers(
            &[t(0, 100), t(100, 0), t(100, 0)],
            Some(&sr(3, 50)),
            Some(&fp),
        );
        assert_eq!(both, [0]);
    }
}
