//! A condition on a request's or response's headers (MeshHTTPRoute matches, MeshRetry's
//! retriable headers), compiled once per config: exact, prefix, a regular expression
//! on the whole value, present or absent.

use causeway_api::{HeaderMatch, HeaderMatchType};

#[derive(Debug)]
pub(crate) struct HeaderMatcher {
    name: http::HeaderName,
    test: HeaderTest,
}

#[derive(Debug)]
enum HeaderTest {
    Exact(String),
    Prefix(String),
    /// Matches the whole value.
    Regex(regex::Regex),
    Present,
    Absent,
}

impl HeaderMatcher {
    /// `None` for a condition that cannot be compiled (the API refuses those).
    pub(crate) fn new(m: &HeaderMatch) -> Option<HeaderMatcher> {
        let name = http::HeaderName::from_bytes(m.name.as_bytes()).ok()?;
        let value = || m.value.clone().unwrap_or_default();
        let test = match m.kind {
            HeaderMatchType::Exact => HeaderTest::Exact(value()),
            HeaderMatchType::Prefix => HeaderTest::Prefix(value()),
            HeaderMatchType::RegularExpression => {
                HeaderTest::Regex(regex::Regex::new(&format!("^(?:{})$", value())).ok()?)
            }
            HeaderMatchType::Present => HeaderTest::Present,
            HeaderMatchType::Absent => HeaderTest::Absent,
        };
        Some(HeaderMatcher { name, test })
    }

    /// Whether `headers` meet it: any of the header's values, for the value tests.
    pub(crate) fn matches(&self, headers: &http::HeaderMap) -> bool {
        let mut values = headers
            .get_all(&self.name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match &self.test {
            HeaderTest::Present => headers.contains_key(&self.name),
            HeaderTest::Absent => !headers.contains_key(&self.name),
            HeaderTest::Exact(want) => values.any(|v| v == want),
            HeaderTest::Prefix(p) => values.any(|v| v.starts_with(p.as_str())),
            HeaderTest::Regex(re) => values.any(|v| re.is_match(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(kind: HeaderMatchType, value: Option<&str>) -> HeaderMatcher {
        HeaderMatcher::new(&HeaderMatch {
            kind,
            name: "X-Beta".into(),
            value: value.map(str::to_owned),
        })
        .expect("compiles")
    }

    #[test]
    fn each_test_on_any_value_of_the_header() {
        let mut h = http::HeaderMap::new();
        h.append("x-beta", "no".parse().unwrap());
        h.append("x-beta", "yes-please".parse().unwrap());
        assert!(matcher(HeaderMatchType::Exact, Some("no")).matches(&h));
        assert!(!matcher(HeaderMatchType::Exact, Some("yes")).matches(&h));
        assert!(matcher(HeaderMatchType::Prefix, Some("yes")).matches(&h));
        // A regular expression matches a whole value, not part of one.
        assert!(matcher(HeaderMatchType::RegularExpression, Some("yes-.*")).matches(&h));
        assert!(!matcher(HeaderMatchType::RegularExpression, Some("please")).matches(&h));
        assert!(matcher(HeaderMatchType::Present, None).matches(&h));
        assert!(!matcher(HeaderMatchType::Absent, None).matches(&h));
        assert!(matcher(HeaderMatchType::Absent, None).matches(&http::HeaderMap::new()));
    }
}
