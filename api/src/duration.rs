//! Go/Kubernetes-style duration strings (`500ms`, `1h30m`, `1.5s`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A length of time written the way Go and Kubernetes write it: one or more
/// `<number><unit>` pairs, where the number may have a fraction and the unit is one of
/// `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. Examples: `500ms`, `2s`, `1h30m`, `1.5s`.
/// A bare `0` is zero. Negative durations are rejected.
///
/// It serializes in a canonical form that parses back to the same value, made of the
/// non-zero units from largest to smallest: `1.5s` becomes `1s500ms`, `90m` becomes
/// `1h30m`, zero becomes `0s`.
///
/// ```
/// use causeway_api::Duration;
///
/// let d: Duration = "1h30m".parse()?;
/// assert_eq!(d.as_std(), std::time::Duration::from_secs(5400));
/// assert_eq!(d.to_string(), "1h30m");
/// assert_eq!("1.5s".parse::<Duration>()?.to_string(), "1s500ms");
/// # Ok::<(), causeway_api::DurationError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

const FORMAT_HINT: &str =
    "expected a number followed by a unit (ns, us, ms, s, m, h), like 500ms or 2s";

const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MIN: u64 = 60 * NANOS_PER_SEC;
const NANOS_PER_HOUR: u64 = 60 * NANOS_PER_MIN;

/// Units, longest spelling first so that `ms` is not read as `m` followed by `s`.
const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", NANOS_PER_MICRO),
    ("µs", NANOS_PER_MICRO), // U+00B5 MICRO SIGN
    ("μs", NANOS_PER_MICRO), // U+03BC GREEK SMALL LETTER MU
    ("ms", NANOS_PER_MILLI),
    ("s", NANOS_PER_SEC),
    ("m", NANOS_PER_MIN),
    ("h", NANOS_PER_HOUR),
];

/// Canonical output units, largest first.
const FORMAT_UNITS: &[(&str, u64)] = &[
    ("h", NANOS_PER_HOUR),
    ("m", NANOS_PER_MIN),
    ("s", NANOS_PER_SEC),
    ("ms", NANOS_PER_MILLI),
    ("us", NANOS_PER_MICRO),
    ("ns", 1),
];

// === impl Duration ===

impl Duration {
    /// Zero length.
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of `mins` minutes.
    pub const fn from_mins(mins: u64) -> Duration {
        Duration::from_secs(mins * 60)
    }

    /// A duration of `hours` hours.
    pub const fn from_hours(hours: u64) -> Duration {
        Duration::from_secs(hours * 3600)
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Duration {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// A duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: u64) -> Duration {
        Duration(std::time::Duration::from_nanos(nanos))
    }

    /// The standard library value.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    fn error(input: &str, reason: impl Into<String>) -> DurationError {
        DurationError {
            input: input.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Duration, DurationError> {
        if input == "0" {
            return Ok(Duration::ZERO);
        }
        if input.starts_with('-') {
            return Err(Duration::error(input, "must not be negative"));
        }
        if input.is_empty() {
            return Err(Duration::error(input, FORMAT_HINT));
        }
        let too_large = || Duration::error(input, "is too large (at most about 584 years)");
        let mut rest = input;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (int_part, after) = rest.split_at(int_len);
            let (frac_part, after) = match after.strip_prefix('.') {
                Some(after) => {
                    let n = after.bytes().take_while(u8::is_ascii_digit).count();
                    after.split_at(n)
                }
                None => ("", after),
            };
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(Duration::error(input, FORMAT_HINT));
            }
            let Some(&(unit, unit_nanos)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
                return Err(Duration::error(input, FORMAT_HINT));
            };
            rest = &after[unit.len()..];

            let mut nanos: u128 = 0;
            for digit in int_part.bytes() {
                nanos = nanos
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u128::from(digit - b'0')))
                    .ok_or_else(too_large)?;
            }
            nanos = nanos
                .checked_mul(u128::from(unit_nanos))
                .ok_or_else(too_large)?;
            // The fraction: digits beyond nanosecond precision cannot change the
            // result by more than the truncation, so read at most 20 of them.
            let mut frac: u128 = 0;
            let mut scale: u128 = 1;
            for digit in frac_part.bytes().take(20) {
                frac = frac * 10 + u128::from(digit - b'0');
                scale *= 10;
            }
            nanos += frac * u128::from(unit_nanos) / scale;
            total = total.checked_add(nanos).ok_or_else(too_large)?;
        }
        let total = u64::try_from(total).map_err(|_| too_large())?;
        Ok(Duration::from_nanos(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for &(unit, unit_nanos) in FORMAT_UNITS {
            let unit_nanos = u128::from(unit_nanos);
            let n = nanos / unit_nanos;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                nanos -= n * unit_nanos;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like 500ms, 2s or 1h30m")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            // YAML reads an unquoted `0` as a number; zero needs no unit.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::ZERO)
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: a duration needs a unit (ns, us, ms, s, m, h), like {v}s or {v}ms"
                    )))
                }
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(0|([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h))+$",
            "description": "A duration in Go/Kubernetes syntax: 500ms, 2s, 1m30s, 1h; `0` is zero.",
            "examples": ["500ms", "2s", "1h30m"]
        })
    }
}

#[cfg(test)]
mod tests;
