//! MeshHTTPRoute in the sidecar: a destination's routes compiled once per config
//! ([`RouteTable`]), the route a request takes (the first, in the zone's order of
//! precedence, whose conditions all hold), and what the route's filters do to the
//! request and its response. Pure: requests in, changed requests or an answer out;
//! where the request goes (backends, mirrors) is the outbound stack's.

use std::collections::HashMap;

use causeway_api::proxy_config::{HeaderChanges, HttpRoute, PathRewrite, RouteFilter};
use causeway_api::{HttpRouteMatch, PathMatchType, QueryMatchType, Scheme};
use http::HeaderValue;
use http::request::Parts;

use crate::header_match::HeaderMatcher;

/// What a route with retries of its own retries by: its retriable headers, compiled,
/// and its own budget (a share of the route's requests, counted from the config that
/// set it), so one route's retries never spend another's or the destination's.
pub(crate) struct RouteRetry {
    pub(crate) headers: crate::retry::HeaderRules,
    pub(crate) budget: std::sync::Arc<crate::retry::Budget>,
}

/// A destination's routes, compiled.
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: Vec<Compiled>,
}

/// One route, compiled: its conditions (`None` for a route whose regular expression
/// does not compile, which the API refuses: it matches nothing), and where its
/// requests go, resolved when the config came so a request takes no lock and
/// allocates nothing to be routed.
pub(crate) struct Compiled {
    pub(crate) route: HttpRoute,
    conditions: Option<Conditions>,
    /// Its own retriable headers and retry budget, when it has its own retries.
    pub(crate) retry: Option<RouteRetry>,
    /// Its backends with their weights (empty: the destination itself).
    ways: Vec<Way>,
    total_weight: u64,
}

/// One backend of a route: where its share of the requests goes, and their counter.
pub(crate) struct Way {
    weight: u64,
    pub(crate) target: crate::proxy::RouteTarget,
    pub(crate) counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Way {
    pub(crate) fn new(
        weight: u32,
        target: crate::proxy::RouteTarget,
        counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Way {
        Way {
            weight: u64::from(weight),
            target,
            counter,
        }
    }
}

impl Compiled {
    /// A backend chosen at random by weight; `None` without backends (or when every
    /// weight is 0).
    pub(crate) fn pick(&self) -> Option<&Way> {
        if self.total_weight == 0 {
            return None;
        }
        let mut pick = rand::random_range(0..self.total_weight);
        self.ways.iter().find(|w| {
            if pick < w.weight {
                return true;
            }
            pick -= w.weight;
            false
        })
    }
}

#[derive(Debug)]
struct Conditions {
    path: Option<PathTest>,
    method: Option<http::Method>,
    headers: Vec<HeaderMatcher>,
    query: Vec<(String, QueryTest)>,
}

#[derive(Debug)]
enum PathTest {
    Exact(String),
    /// Whole segments: `/api` matches `/api` and `/api/x`, not `/apix`. Kept without a
    /// trailing `/`; empty matches every path.
    Prefix(String),
    /// The whole path.
    Regex(regex::Regex),
}

#[derive(Debug)]
enum QueryTest {
    Exact(String),
    Regex(regex::Regex),
}

fn whole(re: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{re})$")).ok()
}

impl Conditions {
    fn new(m: &HttpRouteMatch) -> Option<Conditions> {
        let path = match &m.path {
            None => None,
            Some(p) => Some(match p.kind {
                PathMatchType::Exact => PathTest::Exact(p.value.clone()),
                PathMatchType::PathPrefix => {
                    PathTest::Prefix(p.value.trim_end_matches('/').to_owned())
                }
                PathMatchType::RegularExpression => PathTest::Regex(whole(&p.value)?),
            }),
        };
        let method = match m.method {
            None => None,
            Some(method) => {
                let name = serde_json::to_value(method).ok()?;
                Some(http::Method::from_bytes(name.as_str()?.as_bytes()).ok()?)
            }
        };
        let headers = m
            .headers
            .iter()
            .map(HeaderMatcher::new)
            .collect::<Option<_>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| {
                let test = match q.kind {
                    QueryMatchType::Exact => QueryTest::Exact(q.value.clone()),
                    QueryMatchType::RegularExpression => QueryTest::Regex(whole(&q.value)?),
                };
                Some((q.name.clone(), test))
            })
            .collect::<Option<_>>()?;
        Some(Conditions {
            path,
            method,
            headers,
            query,
        })
    }

    fn matches(&self, parts: &Parts) -> bool {
        let path = parts.uri.path();
        let path_ok = match &self.path {
            None => true,
            Some(PathTest::Exact(p)) => path == p,
            Some(PathTest::Prefix(p)) => has_prefix(path, p),
            Some(PathTest::Regex(re)) => re.is_match(path),
        };
        if !path_ok
            || self.method.as_ref().is_some_and(|m| *m != parts.method)
            || !self.headers.iter().all(|h| h.matches(&parts.headers))
        {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        // Parsed only when a condition needs it. A parameter given several times
        // matches when its first value does (as in the Gateway API).
        let mut params: HashMap<String, String> = HashMap::new();
        for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        self.query.iter().all(|(name, test)| {
            params.get(name).is_some_and(|v| match test {
                QueryTest::Exact(want) => v == want,
                QueryTest::Regex(re) => re.is_match(v),
            })
        })
    }
}

/// Whether `path` starts with the whole segments of `prefix` (kept without a trailing
/// `/`).
fn has_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl RouteTable {
    /// Compiles `routes` (in the zone's order); `way` resolves a backend of a route
    /// (the route's name, the backend) to its target and counter.
    pub(crate) fn new(
        routes: &[HttpRoute],
        way: impl Fn(&str, &causeway_api::proxy_config::RouteBackend) -> Option<Way>,
    ) -> RouteTable {
        RouteTable {
            routes: routes
                .iter()
                .map(|r| {
                    let conditions = Conditions::new(&r.matches);
                    if conditions.is_none() {
                        tracing::warn!(route = %r.name, "a route whose conditions do not compile matches nothing");
                    }
                    let ways: Vec<Way> = r.backends.iter().filter_map(|b| way(&r.name, b)).collect();
                    Compiled {
                        total_weight: ways.iter().map(|w| w.weight).sum(),
                        ways,
                        route: r.clone(),
                        conditions,
                        retry: r.retry.as_ref().map(|retry| RouteRetry {
                            headers: crate::retry::HeaderRules::new(&retry.http),
                            budget: std::sync::Arc::new(crate::retry::Budget::new(retry.budget)),
                        }),
                    }
                })
                .collect(),
        }
    }

    /// The route `parts` takes; `None` when no route's conditions hold.
    pub(crate) fn find(&self, parts: &Parts) -> Option<&Compiled> {
        self.routes
            .iter()
            .find(|c| c.conditions.as_ref().is_some_and(|m| m.matches(parts)))
    }
}

/// A redirect the route answers with instead of forwarding: its status and `Location`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) status: http::StatusCode,
    pub(crate) location: String,
}

/// Applies `route`'s request filters to `parts` (an absolute URI, its authority from
/// the caller's `Host`): header changes and rewrites change it; a redirect is returned
/// instead, and the request must not be forwarded.
pub(crate) fn apply_request(route: &HttpRoute, parts: &mut Parts) -> Option<Redirect> {
    for f in &route.filters {
        match f {
            RouteFilter::RequestHeaders(changes) => modify_headers(&mut parts.headers, changes),
            RouteFilter::Rewrite { hostname, path } => {
                let new_path = path.as_ref().map(|p| rewrite_path(parts.uri.path(), p));
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                if let Some(host) = hostname
                    && let Ok(a) = http::uri::Authority::try_from(host.as_str())
                {
                    uri.authority = Some(a);
                }
                if let Some(new_path) = new_path {
                    let query = uri
                        .path_and_query
                        .as_ref()
                        .and_then(|pq| pq.query())
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default();
                    if let Ok(pq) = http::uri::PathAndQuery::try_from(format!("{new_path}{query}"))
                    {
                        uri.path_and_query = Some(pq);
                    }
                }
                parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
            }
            RouteFilter::Redirect {
                scheme,
                hostname,
                port,
                path,
                status,
            } => {
                return Some(Redirect {
                    status: http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::FOUND),
                    location: location(
                        &parts.uri,
                        *scheme,
                        hostname.as_deref(),
                        *port,
                        path.as_ref(),
                    ),
                });
            }
            // The outbound stack sends the copies.
            RouteFilter::ResponseHeaders { .. } | RouteFilter::Mirror { .. } => {}
        }
    }
    None
}

/// Applies `route`'s response filters to an answer's headers.
pub(crate) fn apply_response(route: &HttpRoute, headers: &mut http::HeaderMap) {
    for f in &route.filters {
        if let RouteFilter::ResponseHeaders(changes) = f {
            modify_headers(headers, changes);
        }
    }
}

fn modify_headers(headers: &mut http::HeaderMap, changes: &HeaderChanges) {
    let HeaderChanges { set, add, remove } = changes;
    let parse = |(name, value): &(String, String)| {
        Some((
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for (name, value) in set.iter().filter_map(parse) {
        headers.insert(name, value);
    }
    for (name, value) in add.iter().filter_map(parse) {
        headers.append(name, value);
    }
    for name in remove {
        headers.remove(name.as_str());
    }
}

/// `path` with `rewrite` applied. A prefix replacement keeps what follows the matched
/// prefix: `/api` → `/v2` turns `/api/x` into `/v2/x`, and `/api` → `/` turns it into `/x`.
fn rewrite_path(path: &str, rewrite: &PathRewrite) -> String {
    match rewrite {
        PathRewrite::Full { path } => path.clone(),
        PathRewrite::Prefix {
            matched,
            replacement,
        } => {
            let matched = matched.trim_end_matches('/');
            let Some(rest) = path.strip_prefix(matched) else {
                return path.to_owned();
            };
            let new = format!("{}{rest}", replacement.trim_end_matches('/'));
            if new.is_empty() { "/".to_owned() } else { new }
        }
    }
}

/// The redirect's target: the request's URL with the filter's parts. Without a port,
/// a new scheme means its default port, else the request's port stays.
fn location(
    uri: &http::Uri,
    scheme: Option<Scheme>,
    hostname: Option<&str>,
    port: Option<u16>,
    path: Option<&PathRewrite>,
) -> String {
    let scheme_name = match scheme {
        Some(Scheme::Https) => "https",
        Some(Scheme::Http) => "http",
        None => uri.scheme_str().unwrap_or("http"),
    };
    let host = hostname.unwrap_or_else(|| uri.host().unwrap_or("localhost"));
    let port = port.or(if scheme.is_some() {
        None
    } else {
        uri.port_u16()
    });
    let default_port = if scheme_name == "https" { 443 } else { 80 };
    let port = port
        .filter(|p| *p != default_port)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let new_path = path.map_or_else(|| uri.path().to_owned(), |p| rewrite_path(uri.path(), p));
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme_name}://{host}{port}{new_path}{query}")
}

#[cfg(test)]
mod tests {
    use causeway_api::proxy_config::HttpRoute;
    use serde_json::json;

    use super::*;

    fn route(name: &str, matches: serde_json::Value, filters: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({"name": name, "matches": matches, "filters": filters}))
            .expect("a route")
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn taken(table: &RouteTable, parts: &Parts) -> Option<String> {
        table.find(parts).map(|c| c.route.name.clone())
    }

    #[test]
    fn the_first_route_whose_conditions_all_hold_is_taken() {
        let table = RouteTable::new(
            &[
                route(
                    "exact",
                    json!({"path": {"type": "Exact", "value": "/api/health"}}),
                    json!([]),
                ),
                route(
                    "beta",
                    json!({"path": {"type": "PathPrefix", "value": "/api/"},
                                "headers": [{"name": "x-beta", "value": "true"}]}),
                    json!([]),
                ),
                route(
                    "api",
                    json!({"path": {"type": "PathPrefix", "value": "/api"}}),
                    json!([]),
                ),
                route(
                    "items",
                    json!({"path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
                                 "method": "GET"}),
                    json!([]),
                ),
                route(
                    "page",
                    json!({"queryParams": [{"name": "page", "value": "2"},
                                                {"type": "RegularExpression", "name": "q", "value": "a.c"}],
                                "headers": [{"type": "Absent", "name": "x-debug"}]}),
                    json!([]),
                ),
            ],
            |_, _| None,
        );
        let at = |m: &str, uri: &str, h: &[(&str, &str)]| taken(&table, &request(m, uri, h));
        assert_eq!(
            at("GET", "http://b/api/health", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            at("GET", "http://b/api/health/x", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(
            at("GET", "http://b/api/x", &[("x-beta", "true")]).as_deref(),
            Some("beta")
        );
        assert_eq!(
            at("GET", "http://b/api", &[("x-beta", "true")]).as_deref(),
            Some("beta")
        );
        assert_eq!(
            at("GET", "http://b/api", &[("x-beta", "1")]).as_deref(),
            Some("api")
        );
        // Whole segments only.
        assert_eq!(at("GET", "http://b/apix", &[]), None);
        // A regular expression matches the whole path.
        assert_eq!(
            at("GET", "http://b/items/42", &[]).as_deref(),
            Some("items")
        );
        assert_eq!(at("GET", "http://b/items/42/x", &[]), None);
        assert_eq!(at("POST", "http://b/items/42", &[]), None);
        // Query parameters, decoded; the first value of a repeated one counts.
        assert_eq!(
            at("GET", "http://b/x?page=2&q=abc", &[]).as_deref(),
            Some("page")
        );
        assert_eq!(
            at("GET", "http://b/x?page=%32&q=a%20c", &[]).as_deref(),
            Some("page")
        );
        assert_eq!(at("GET", "http://b/x?page=1&page=2&q=abc", &[]), None);
        assert_eq!(at("GET", "http://b/x?page=2&q=abcd", &[]), None);
        assert_eq!(
            at("GET", "http://b/x?page=2&q=abc", &[("x-debug", "1")]),
            None
        );
    }

    #[test]
    fn a_route_without_conditions_takes_every_request_and_a_bad_regex_none() {
        let table = RouteTable::new(
            &[
                route(
                    "broken",
                    json!({"path": {"type": "RegularExpression", "value": "("}}),
                    json!([]),
                ),
                route("all", json!({}), json!([])),
            ],
            |_, _| None,
        );
        assert_eq!(
            taken(&table, &request("DELETE", "http://b/(", &[])).as_deref(),
            Some("all")
        );
    }

    #[test]
    fn header_filters_set_add_and_remove() {
        let r = route(
            "r",
            json!({}),
            json!([
                {"type": "requestHeaders", "set": [["x-route", "v2"]], "add": [["x-tag", "b"]], "remove": ["x-debug"]},
                {"type": "responseHeaders", "add": [["x-served-by", "v2"]], "remove": ["server"]}
            ]),
        );
        let mut parts = request(
            "GET",
            "http://b/",
            &[("x-route", "old"), ("x-tag", "a"), ("x-debug", "1")],
        );
        assert_eq!(apply_request(&r, &mut parts), None);
        assert_eq!(
            parts.headers.get_all("x-route").iter().collect::<Vec<_>>(),
            ["v2"]
        );
        assert_eq!(
            parts.headers.get_all("x-tag").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!parts.headers.contains_key("x-debug"));
        let mut response = http::HeaderMap::new();
        response.insert("server", "app".parse().unwrap());
        apply_response(&r, &mut response);
        assert_eq!(response.get("x-served-by").unwrap(), "v2");
        assert!(!response.contains_key("server"));
    }

    #[test]
    fn a_rewrite_replaces_the_host_and_the_matched_prefix_and_keeps_the_query() {
        let rewrite = |matched: &str, replacement: &str, uri: &str| {
            let r = route(
                "r",
                json!({}),
                json!([{"type": "rewrite", "hostname": "backend.internal",
                "path": {"type": "prefix", "matched": matched, "replacement": replacement}}]),
            );
            let mut parts = request("GET", uri, &[]);
            assert_eq!(apply_request(&r, &mut parts), None);
            parts.uri.to_string()
        };
        assert_eq!(
            rewrite("/v1", "/v2", "http://b:8080/v1/items?a=1"),
            "http://backend.internal/v2/items?a=1"
        );
        assert_eq!(
            rewrite("/v1", "/v2", "http://b/v1"),
            "http://backend.internal/v2"
        );
        assert_eq!(
            rewrite("/v1/", "/", "http://b/v1/items"),
            "http://backend.internal/items"
        );
        assert_eq!(
            rewrite("/v1", "/", "http://b/v1"),
            "http://backend.internal/"
        );
        let r = route(
            "r",
            json!({}),
            json!([{"type": "rewrite", "path": {"type": "full", "path": "/new"}}]),
        );
        let mut parts = request("GET", "http://b:81/old/x?q=1", &[]);
        apply_request(&r, &mut parts);
        assert_eq!(parts.uri.to_string(), "http://b:81/new?q=1");
    }

    #[test]
    fn a_redirect_answers_with_the_url_changed() {
        let redirect = |filter: serde_json::Value, uri: &str| {
            let r = route("r", json!({}), json!([filter]));
            let mut parts = request("GET", uri, &[]);
            apply_request(&r, &mut parts).expect("a redirect")
        };
        let to = redirect(
            json!({"type": "redirect", "scheme": "https", "hostname": "example.com", "status": 301,
                   "path": {"type": "full", "path": "/new"}}),
            "http://b:8080/old?x=1",
        );
        assert_eq!(
            to,
            Redirect {
                status: http::StatusCode::MOVED_PERMANENTLY,
                location: "https://example.com/new?x=1".into()
            }
        );
        // Only the port: the rest is the request's.
        let to = redirect(
            json!({"type": "redirect", "port": 9090, "status": 302}),
            "http://b:8080/a",
        );
        assert_eq!(to.location, "http://b:9090/a");
        // Nothing: the request's port stays; a prefix replacement.
        let to = redirect(
            json!({"type": "redirect", "status": 308,
            "path": {"type": "prefix", "matched": "/old", "replacement": "/new"}}),
            "http://b:8080/old/a",
        );
        assert_eq!(
            (to.status.as_u16(), to.location.as_str()),
            (308, "http://b:8080/new/a")
        );
    }
}
