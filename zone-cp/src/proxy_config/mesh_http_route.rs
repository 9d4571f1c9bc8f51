//! The MeshHTTPRoute configurer: each outbound's merged rules (rules with equal
//! `matches` merged across policies, as `effective` does), decoded once and laid out as
//! the sidecar runs them: one [`HttpRoute`] per `matches` entry, most specific first
//! (Gateway API precedence: an exact path, then the longest prefix, then the longest
//! regular expression; then a method; then more headers; then more query parameters;
//! ties keep the rules' order). Filters are resolved per route: a prefix replacement
//! carries the prefix its route matched, a mirror its backend.
//!
//! Each route is named after the MeshHTTPRoute its rule comes from, so MeshTimeout and
//! MeshRetry entries for that route (`to[].targetRef.kind: MeshHTTPRoute`) find it.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use std::cmp::Reverse;

use causeway_api::proxy_config::{
    HeaderChanges, HttpRoute, PathRewrite, RouteBackend, RouteFilter,
};
use causeway_api::{
    BackendRef, EffectiveConfig, HeaderModifier, HttpFilter, HttpFilterType, HttpRouteMatch,
    HttpRouteRule, MeshHttpRouteSpec, PathMatchType, PathModifier, PathModifierType, Proxy,
    Resource,
};

use super::{ComputeError, decode, decode_conf};

/// The effective MeshHTTPRoute of `proxy`; its outbounds' policy names are the routes
/// that per-route policies can name.
pub(crate) fn effective(policies: &[Resource], proxy: &Proxy) -> EffectiveConfig {
    causeway_api::effective("MeshHTTPRoute", policies, proxy)
        .expect("MeshHTTPRoute is a policy kind")
}

/// The routes of each of `proxy`'s outbounds, in its order (empty: no route), with each
/// backend resolved by `backend` (its endpoints and identity).
pub(crate) fn configure(
    policies: &[Resource],
    effective: &EffectiveConfig,
    proxy: &Proxy,
    backend: impl Fn(usize, &str, &std::collections::BTreeMap<String, String>, u32) -> RouteBackend,
) -> Result<Vec<Vec<HttpRoute>>, ComputeError> {
    proxy
        .outbounds
        .iter()
        .enumerate()
        .map(|(i, ob)| {
            let resolve = |r: &BackendRef| {
                let service = r.service_name()?;
                Some(backend(
                    i,
                    service,
                    &r.endpoint_tags(),
                    r.weight.unwrap_or(1),
                ))
            };
            let Some(merged) = effective.outbounds.get(i).and_then(|o| o.conf.as_ref()) else {
                return Ok(Vec::new());
            };
            let what = || {
                format!(
                    "the merged MeshHTTPRoute to[] for {} (policies {})",
                    ob.service,
                    merged.policies.join(", ")
                )
            };
            let rules: Rules = decode_conf(&merged.conf, what)?;
            // The policies with rules for this destination, highest priority first.
            let sources: Vec<(String, MeshHttpRouteSpec)> = merged
                .policies
                .iter()
                .rev()
                .filter_map(|name| {
                    let r = policies.iter().find(|p| &p.name == name)?;
                    Some(decode(r).map(|spec| (name.clone(), spec)))
                })
                .collect::<Result<_, _>>()?;
            let mut routes = Vec::new();
            for rule in &rules.rules {
                let name = route_name(&sources, &ob.service, rule);
                let matches = if rule.matches.is_empty() {
                    vec![HttpRouteMatch::default()]
                } else {
                    rule.matches.clone()
                };
                for m in matches {
                    let filters = rule
                        .default
                        .filters
                        .iter()
                        .flatten()
                        .filter_map(|f| filter(f, &m, &resolve))
                        .collect();
                    let backends = rule
                        .default
                        .backend_refs
                        .iter()
                        .flatten()
                        .filter_map(&resolve)
                        .collect();
                    routes.push(HttpRoute {
                        name: name.clone(),
                        matches: m,
                        filters,
                        backends,
                        timeouts: None,
                        retry: None,
                    });
                }
            }
            routes.sort_by_key(|r| precedence(&r.matches));
            Ok(routes)
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    rules: Vec<HttpRouteRule>,
}

/// The MeshHTTPRoute (of `sources`, highest priority first) that has a rule with
/// `rule`'s matches for `service`.
fn route_name(
    sources: &[(String, MeshHttpRouteSpec)],
    service: &str,
    rule: &HttpRouteRule,
) -> String {
    sources
        .iter()
        .find(|(_, spec)| {
            spec.to.iter().any(|to| {
                to.target_ref.service_name() == Some(service)
                    && to.rules.iter().any(|r| r.matches == rule.matches)
            })
        })
        .or(sources.first())
        .map(|(name, _)| name.clone())
        .unwrap_or_default()
}

/// How a route ranks: lower sorts first.
fn precedence(m: &HttpRouteMatch) -> Reverse<(u8, usize, bool, usize, usize)> {
    let (kind, len) = match &m.path {
        Some(p) => (
            match p.kind {
                PathMatchType::Exact => 3,
                PathMatchType::PathPrefix => 2,
                PathMatchType::RegularExpression => 1,
            },
            p.value.len(),
        ),
        None => (0, 0),
    };
    Reverse((
        kind,
        len,
        m.method.is_some(),
        m.headers.len(),
        m.query_params.len(),
    ))
}

fn filter(
    f: &HttpFilter,
    m: &HttpRouteMatch,
    resolve: &impl Fn(&BackendRef) -> Option<RouteBackend>,
) -> Option<RouteFilter> {
    let headers = |h: &HeaderModifier| {
        let pairs = |list: &[causeway_api::Header]| {
            list.iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                .collect()
        };
        HeaderChanges {
            set: pairs(&h.set),
            add: pairs(&h.add),
            remove: h.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    };
    Some(match f.kind {
        HttpFilterType::RequestHeaderModifier => {
            RouteFilter::RequestHeaders(headers(f.request_header_modifier.as_ref()?))
        }
        HttpFilterType::ResponseHeaderModifier => {
            RouteFilter::ResponseHeaders(headers(f.response_header_modifier.as_ref()?))
        }
        HttpFilterType::RequestRedirect => {
            let r = f.request_redirect.as_ref()?;
            RouteFilter::Redirect {
                scheme: r.scheme,
                hostname: r.hostname.clone(),
                port: r.port,
                path: r.path.as_ref().and_then(|p| path_rewrite(p, m)),
                status: r.status_code.unwrap_or(302),
            }
        }
        HttpFilterType::UrlRewrite => {
            let r = f.url_rewrite.as_ref()?;
            RouteFilter::Rewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().and_then(|p| path_rewrite(p, m)),
            }
        }
        HttpFilterType::RequestMirror => {
            let r = f.request_mirror.as_ref()?;
            RouteFilter::Mirror {
                backend: resolve(&r.backend_ref)?,
                percentage: r.percentage.map_or(100.0, |p| p.fraction() * 100.0),
            }
        }
    })
}

/// A path change for a route matched by `m`. A prefix replacement replaces the prefix
/// the route matched: its `PathPrefix` (validation requires one), or its exact path.
fn path_rewrite(p: &PathModifier, m: &HttpRouteMatch) -> Option<PathRewrite> {
    let value = p.new_value()?.to_owned();
    Some(match p.kind {
        PathModifierType::ReplaceFullPath => PathRewrite::Full { path: value },
        PathModifierType::ReplacePrefixMatch => PathRewrite::Prefix {
            matched: match &m.path {
                Some(path) if path.kind != PathMatchType::RegularExpression => path.value.clone(),
                _ => "/".to_owned(),
            },
            replacement: value,
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_outbound_goldens;

    /// Golden cases under `testdata/mesh_http_route/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // backend: a 90/10 canary on /api by tags, a beta channel by header, a
        // redirect, a rewrite with header changes and a mirror; a second policy adds a
        // rule and overrides one; per-route timeouts and retries. cache has no route.
        ("mesh_http_route/canary-and-filters", "zone-a", "web-1"),
    ];

    #[test]
    fn golden_http_routes() {
        check_outbound_goldens(CASES, "httpRoutes", |o| Some(&o.http_routes));
    }
}
