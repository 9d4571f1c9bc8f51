//! Timestamps as the API shows them. Tokens, zones and audit entries store Unix seconds
//! (cheap to compare at apply time); the API and the CLI show them as RFC 3339, so the
//! conversion lives here, once, for every control plane.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `unix` seconds as RFC 3339 in UTC; empty for a time `time` cannot represent, which only
/// a corrupt record could hold, so a listing still answers.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn unix_seconds_read_as_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }
}
