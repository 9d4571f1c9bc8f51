//! `MeshHTTPRoute`: HTTP routing to a service: matches, filters and weighted backends.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::percent::Percent;
use crate::spec::{Errors, Spec, at, check_header_name, check_host, check_service_name, idx};
use crate::target_ref::{
    SERVICE_LABELS, TOP_KINDS, TargetRef, TargetRefKind, check_service_labels, check_tags,
    require_some,
};

/// The spec of a `MeshHTTPRoute`.
///
/// ```yaml
/// type: MeshHTTPRoute
/// mesh: default
/// name: backend-canary
/// spec:
///   targetRef: {kind: Mesh}
///   to:
///     - targetRef: {kind: MeshService, name: backend}
///       rules:
///         - matches: [{path: {type: PathPrefix, value: /api}}]
///           default:
///             backendRefs:
///               - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}
///               - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 10}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHttpRouteSpec {
    /// The proxies whose outgoing requests are routed. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The routes, by destination service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<HttpRouteTo>,
}

/// The routes for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTo {
    /// The destination service (`kind: MeshService`).
    pub target_ref: TargetRef,
    /// Kuma's hostnames, which only gateways match on. Refused: Causeway has no
    /// gateways yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The rules, tried in order of how specific their matches are. Rules with equal
    /// `matches` in several policies merge their `default` sections.
    pub rules: Vec<HttpRouteRule>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The requests this rule applies to: any one of the matches (empty: every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// What to do with the matched requests.
    pub default: HttpRouteConf,
}

/// Conditions on a request; all that are set must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpRouteMatch {
    /// A condition on the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Conditions on query parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

/// A condition on the request path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (whole segments: `/api` matches `/api/x`, not `/apix`) or
    /// `RegularExpression` (RE2 syntax).
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    /// The path, prefix or expression. `Exact` and `PathPrefix` values start with `/`.
    pub value: String,
}

/// How a path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// A prefix of whole path segments.
    PathPrefix,
    /// A regular expression (RE2).
    RegularExpression,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// CONNECT.
    Connect,
    /// OPTIONS.
    Options,
    /// TRACE.
    Trace,
    /// PATCH.
    Patch,
}

/// A condition on one header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// `Exact`, `Prefix`, `RegularExpression`, `Present` or `Absent`. Default `Exact`.
    #[serde(rename = "type", default)]
    pub kind: HeaderMatchType,
    /// The header name (case-insensitive).
    pub name: String,
    /// The value, prefix or expression; must not be set for `Present` and `Absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How a header is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
pub enum HeaderMatchType {
    /// Equal to `value`.
    #[default]
    Exact,
    /// Starts with `value`.
    Prefix,
    /// Matches the regular expression `value`.
    RegularExpression,
    /// The header is present, with any value.
    Present,
    /// The header is absent.
    Absent,
}

/// A condition on one query parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// `Exact` or `RegularExpression`. Default `Exact`.
    #[serde(rename = "type", default)]
    pub kind: QueryMatchType,
    /// The parameter name.
    pub name: String,
    /// The value or expression.
    pub value: String,
}

/// How a query parameter is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
pub enum QueryMatchType {
    /// Equal to `value`.
    #[default]
    Exact,
    /// Matches the regular expression `value`.
    RegularExpression,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HttpRouteConf {
    /// Changes to the request or response, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<HttpFilter>>,
    /// Where matched requests go, split by weight (canary, blue-green). Absent: the
    /// destination service itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

/// A weighted backend: a service or a subset of one.
///
/// ```yaml
/// - {kind: MeshService, name: backend-v2, weight: 10}
/// - {kind: MeshService, labels: {kuma.io/display-name: backend-v2}, port: 8080}  # Kuma 2.9+
/// - {kind: MeshServiceSubset, name: backend, tags: {version: v2}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// `MeshService` or `MeshServiceSubset`.
    pub kind: TargetRefKind,
    /// The service name. A `MeshService` may name it by `labels` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `MeshService`, instead of `name`: `kuma.io/display-name: <service>` (or
    /// `causeway.io/service: <service>`), the labels every service has.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// For `MeshServiceSubset`: the tags the backend's proxies must have.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The destination port (Kuma 2.9+): only the service's endpoints whose inbound is
    /// on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The Kubernetes namespace (Kuma's Kubernetes form), with `name`: only the
    /// service's endpoints tagged `k8s.kuma.io/namespace` with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The share of requests relative to the other backends' weights. Default 1; 0
    /// sends none (a blue-green standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl BackendRef {
    /// The tags a backend's endpoints must all have: its subset's, and its `port`
    /// ([`PORT_TAG`](crate::PORT_TAG)) and `namespace`
    /// ([`NAMESPACE_TAG`](crate::NAMESPACE_TAG)) when given.
    pub fn endpoint_tags(&self) -> std::collections::BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        if let Some(port) = self.port {
            tags.insert(crate::PORT_TAG.to_owned(), port.to_string());
        }
        if let Some(namespace) = &self.namespace {
            tags.insert(crate::NAMESPACE_TAG.to_owned(), namespace.clone());
        }
        tags
    }

    /// The backend's service: `name`, or the service its labels name.
    pub fn service_name(&self) -> Option<&str> {
        self.name.as_deref().or_else(|| {
            SERVICE_LABELS
                .iter()
                .find_map(|key| self.labels.get(*key).map(String::as_str))
        })
    }
}

/// One filter, selected by `type`; the field of that type must be set and no other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`,
    /// `URLRewrite` or `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: HttpFilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(
        rename = "urlRewrite",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// Filter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HttpFilterType {
    /// Add, set or remove request headers.
    RequestHeaderModifier,
    /// Add, set or remove response headers.
    ResponseHeaderModifier,
    /// Answer with a redirect.
    RequestRedirect,
    /// Rewrite the host or path before forwarding.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Send a copy of a share of the requests to another backend, ignoring its answers.
    RequestMirror,
}

/// Header changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct HeaderModifier {
    /// Headers to add (kept alongside existing values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Headers to set (replacing existing values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct RequestRedirect {
    /// `http` or `https`. Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    /// The host to redirect to. Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The port to redirect to. Default: the scheme's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How to change the path. Default: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308. Default 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// URL schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// http.
    Http,
    /// https.
    Https,
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct UrlRewrite {
    /// The new `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// How to change the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A path change: `{type, value}`, or Kuma's `{type: ReplaceFullPath, replaceFullPath}`
/// and `{type: ReplacePrefixMatch, replacePrefixMatch}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch` (replace the part the `PathPrefix`
    /// match matched).
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// The new path or prefix; starts with `/`. Give it here, or in the field named
    /// after the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Kuma's field for `ReplaceFullPath`: the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// Kuma's field for `ReplacePrefixMatch`: the new prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

impl PathModifier {
    /// The new path or prefix, whichever field holds it.
    pub fn new_value(&self) -> Option<&str> {
        self.value.as_deref().or(match self.kind {
            PathModifierType::ReplaceFullPath => self.replace_full_path.as_deref(),
            PathModifierType::ReplacePrefixMatch => self.replace_prefix_match.as_deref(),
        })
    }
}

fn check_path_modifier(errors: &mut Errors, path: &str, p: &PathModifier) {
    let (own, other) = match p.kind {
        PathModifierType::ReplaceFullPath => (
            ("replaceFullPath", &p.replace_full_path),
            ("replacePrefixMatch", &p.replace_prefix_match),
        ),
        PathModifierType::ReplacePrefixMatch => (
            ("replacePrefixMatch", &p.replace_prefix_match),
            ("replaceFullPath", &p.replace_full_path),
        ),
    };
    if other.1.is_some() {
        errors.push(
            at(path, other.0),
            format!("must not be set for type {:?}; use {}", p.kind, own.0),
        );
    }
    match (&p.value, own.1) {
        (Some(_), Some(_)) => {
            errors.push(at(path, own.0), format!("set value or {}, not both", own.0))
        }
        (None, None) => errors.push(
            at(path, "value"),
            format!("is required (or {}) for type {:?}", own.0, p.kind),
        ),
        (Some(v), None) => check_path_value(errors, at(path, "value"), v),
        (None, Some(v)) => check_path_value(errors, at(path, own.0), v),
    }
}

/// Path change types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the matched prefix.
    ReplacePrefixMatch,
}

/// A request mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// The share of requests to copy, 0 to 100. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

const BACKEND_KINDS: &[TargetRefKind] =
    &[TargetRefKind::MeshService, TargetRefKind::MeshServiceSubset];

pub(crate) fn check_backend_refs(errors: &mut Errors, path: &str, refs: &[BackendRef]) {
    if refs.is_empty() {
        errors.push(
            path,
            "needs at least one backend; leave backendRefs out to use the destination itself",
        );
    }
    for (i, r) in refs.iter().enumerate() {
        check_backend_ref(errors, &idx(path, i), r);
    }
    if !refs.is_empty() && refs.iter().all(|r| r.weight == Some(0)) {
        errors.push(path, "all weights are 0, so no request would be sent anywhere; give at least one backend a weight above 0");
    }
}

fn check_backend_ref(errors: &mut Errors, path: &str, r: &BackendRef) {
    if let Some(reason) = r.kind.unsupported() {
        errors.push(at(path, "kind"), reason);
        return;
    }
    if !BACKEND_KINDS.contains(&r.kind) {
        errors.push(
            at(path, "kind"),
            format!(
                "kind {} is not allowed here; use one of: MeshService, MeshServiceSubset",
                r.kind
            ),
        );
    }
    match (&r.name, r.labels.is_empty()) {
        (Some(_), false) => errors.push(
            at(path, "labels"),
            "set name or labels, not both: each names the service",
        ),
        (None, true) => errors.push(
            at(path, "name"),
            "is required, unless labels name the service (kuma.io/display-name: <service>)",
        ),
        (Some(name), true) => errors.check(at(path, "name"), check_service_name(name)),
        (None, false) if r.kind == TargetRefKind::MeshServiceSubset => errors.push(
            at(path, "labels"),
            "must not be set for kind MeshServiceSubset; use name and tags",
        ),
        (None, false) => check_service_labels(errors, &at(path, "labels"), &r.labels),
    }
    errors.port(at(path, "port"), r.port);
    if let Some(namespace) = &r.namespace {
        if r.name.is_none() {
            errors.push(at(path, "namespace"), "is allowed only with name");
        } else if let Some(e) = crate::validation::validate_name("", namespace) {
            errors.push(at(path, "namespace"), e.reason);
        }
    }
    match (r.kind, r.tags.is_empty()) {
        (TargetRefKind::MeshServiceSubset, true) => {
            errors.push(
                at(path, "tags"),
                "must have at least one tag for kind MeshServiceSubset",
            );
        }
        (TargetRefKind::MeshService, false) => {
            errors.push(at(path, "tags"), "must not be set for kind MeshService");
        }
        _ => {}
    }
    check_tags(errors, &at(path, "tags"), &r.tags);
}

fn check_path_value(errors: &mut Errors, path: String, value: &str) {
    if !value.starts_with('/') {
        errors.push(path, format!("must start with '/' (got {value:?})"));
    } else if value.contains(['?', '#']) {
        errors.push(
            path,
            format!("must be a path without query or fragment (got {value:?})"),
        );
    }
}

fn check_header_modifier(errors: &mut Errors, path: &str, m: &HeaderModifier) {
    for (list, headers) in [("add", &m.add), ("set", &m.set)] {
        for (i, h) in headers.iter().enumerate() {
            errors.check(
                at(&idx(&at(path, list), i), "name"),
                check_header_name(&h.name),
            );
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        errors.check(idx(&at(path, "remove"), i), check_header_name(name));
    }
    if m.add.is_empty() && m.set.is_empty() && m.remove.is_empty() {
        errors.push(path, "needs at least one of add, set or remove");
    }
}

fn check_filter(errors: &mut Errors, path: &str, f: &HttpFilter) {
    let present = [
        ("requestHeaderModifier", f.request_header_modifier.is_some()),
        (
            "responseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        ("requestRedirect", f.request_redirect.is_some()),
        ("urlRewrite", f.url_rewrite.is_some()),
        ("requestMirror", f.request_mirror.is_some()),
    ];
    let wanted = match f.kind {
        HttpFilterType::RequestHeaderModifier => "requestHeaderModifier",
        HttpFilterType::ResponseHeaderModifier => "responseHeaderModifier",
        HttpFilterType::RequestRedirect => "requestRedirect",
        HttpFilterType::UrlRewrite => "urlRewrite",
        HttpFilterType::RequestMirror => "requestMirror",
    };
    for (field, set) in present {
        if field == wanted && !set {
            errors.push(
                at(path, field),
                format!("is required for type {:?}", f.kind),
            );
        } else if field != wanted && set {
            errors.push(
                at(path, field),
                format!("must not be set for type {:?}; set only {wanted}", f.kind),
            );
        }
    }
    if let Some(m) = &f.request_header_modifier {
        check_header_modifier(errors, &at(path, "requestHeaderModifier"), m);
    }
    if let Some(m) = &f.response_header_modifier {
        check_header_modifier(errors, &at(path, "responseHeaderModifier"), m);
    }
    if let Some(r) = &f.request_redirect {
        let path = at(path, "requestRedirect");
        if let Some(host) = &r.hostname {
            errors.check(at(&path, "hostname"), check_host(host));
        }
        errors.port(at(&path, "port"), r.port);
        if let Some(p) = &r.path {
            check_path_modifier(errors, &at(&path, "path"), p);
        }
        if let Some(code) = r.status_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            errors.push(
                at(&path, "statusCode"),
                format!("must be 301, 302, 303, 307 or 308 (got {code})"),
            );
        }
    }
    if let Some(r) = &f.url_rewrite {
        let path = at(path, "urlRewrite");
        if let Some(host) = &r.hostname {
            errors.check(at(&path, "hostname"), check_host(host));
        }
        if let Some(p) = &r.path {
            check_path_modifier(errors, &at(&path, "path"), p);
        }
        if r.hostname.is_none() && r.path.is_none() {
            errors.push(path, "needs hostname or path");
        }
    }
    if let Some(m) = &f.request_mirror {
        let path = at(path, "requestMirror");
        check_backend_ref(errors, &at(&path, "backendRef"), &m.backend_ref);
        errors.percent(at(&path, "percentage"), m.percentage, 0.0, 100.0);
    }
}

/// Checks one header condition at `path`: its name, a value exactly when its type needs
/// one, and a regular expression that compiles.
pub(crate) fn check_header_match(errors: &mut Errors, path: &str, h: &HeaderMatch) {
    errors.check(at(path, "name"), check_header_name(&h.name));
    match (h.kind, &h.value) {
        (HeaderMatchType::Present | HeaderMatchType::Absent, Some(_)) => {
            errors.push(
                at(path, "value"),
                format!("must not be set for type {:?}", h.kind),
            );
        }
        (
            HeaderMatchType::Exact | HeaderMatchType::Prefix | HeaderMatchType::RegularExpression,
            None,
        ) => {
            errors.push(
                at(path, "value"),
                format!("is required for type {:?}", h.kind),
            );
        }
        (HeaderMatchType::RegularExpression, Some(re)) => {
            if let Err(e) = regex::Regex::new(re) {
                errors.push(
                    at(path, "value"),
                    format!("not a valid regular expression: {e}"),
                );
            }
        }
        _ => {}
    }
}

fn check_match(errors: &mut Errors, path: &str, m: &HttpRouteMatch) {
    if let Some(p) = &m.path {
        let field = at(&at(path, "path"), "value");
        match p.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                check_path_value(errors, field, &p.value)
            }
            PathMatchType::RegularExpression => errors.non_empty(field, &p.value),
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        check_header_match(errors, &idx(&at(path, "headers"), i), h);
    }
    for (i, q) in m.query_params.iter().enumerate() {
        errors.non_empty(at(&idx(&at(path, "queryParams"), i), "name"), &q.name);
    }
}

impl Spec for MeshHttpRouteSpec {
    fn check(&self, errors: &mut Errors) {
        self.target_ref.check(errors, "spec.targetRef", TOP_KINDS);
        require_some(errors, "spec", &[("to", self.to.len())]);
        for (i, to) in self.to.iter().enumerate() {
            let path = idx("spec.to", i);
            to.target_ref.check(
                errors,
                &at(&path, "targetRef"),
                &[TargetRefKind::MeshService],
            );
            if !to.hostnames.is_empty() {
                errors.push(
                    at(&path, "hostnames"),
                    "hostnames are matched only by gateways, and Causeway has no gateways yet; a sidecar routes by destination service",
                );
            }
            if to.rules.is_empty() {
                errors.push(at(&path, "rules"), "needs at least one rule");
            }
            let mut seen = BTreeSet::new();
            for (j, rule) in to.rules.iter().enumerate() {
                let path = idx(&at(&path, "rules"), j);
                let key = serde_json::to_string(&rule.matches).unwrap_or_default();
                if !seen.insert(key) {
                    errors.push(
                        at(&path, "matches"),
                        "the same matches as an earlier rule; merge the two rules",
                    );
                }
                for (k, m) in rule.matches.iter().enumerate() {
                    check_match(errors, &idx(&at(&path, "matches"), k), m);
                }
                // A prefix replacement replaces what a PathPrefix matched: every
                // match of the rule needs one (as in the Gateway API).
                let prefixed = !rule.matches.is_empty()
                    && rule.matches.iter().all(|m| {
                        m.path
                            .as_ref()
                            .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
                    });
                let path = at(&path, "default");
                for (k, f) in rule.default.filters.iter().flatten().enumerate() {
                    let path = idx(&at(&path, "filters"), k);
                    check_filter(errors, &path, f);
                    let replaces_prefix = [
                        f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()),
                        f.request_redirect.as_ref().and_then(|r| r.path.as_ref()),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|p| p.kind == PathModifierType::ReplacePrefixMatch);
                    if replaces_prefix && !prefixed {
                        errors.push(
                            at(&path, "type"),
                            "ReplacePrefixMatch replaces the prefix a PathPrefix match matched: every match of the rule needs a path of type PathPrefix (use ReplaceFullPath otherwise)",
                        );
                    }
                }
                if let Some(refs) = &rule.default.backend_refs {
                    check_backend_refs(errors, &at(&path, "backendRefs"), refs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    #[test]
    fn validation_table() {
        let to = |rules: serde_json::Value| json!({"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": rules}]});
        table::<MeshHttpRouteSpec>(
            &[to(json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                              "headers": [{"name": "x-canary", "value": "1"}, {"type": "Absent", "name": "x-debug"}],
                              "queryParams": [{"type": "RegularExpression", "name": "v", "value": "^2"}]}],
                 "default": {"backendRefs": [
                     {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                     {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10}]}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                 "default": {"filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-mesh", "value": "causeway"}], "remove": ["x-internal"]}},
                    {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "value": "/v2"}}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"kind": "MeshService", "name": "shadow"}, "percentage": "5%"}}]}},
                {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
                 "default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301, "path": {"type": "ReplaceFullPath", "value": "/new"}}}]}}
            ]))],
            &[
                (
                    to(
                        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}], "default": {}}]),
                    ),
                    &[(
                        "spec.to[0].rules[0].matches[0].path.value",
                        "must start with '/'",
                    )],
                ),
                (
                    to(json!([{"matches": [{"method": "FETCH"}], "default": {}}])),
                    &[(
                        "spec.to[0].rules[0].matches[0].method",
                        "unknown variant `FETCH`",
                    )],
                ),
                (
                    to(
                        json!([{"default": {"backendRefs": [{"kind": "MeshService", "name": "a", "weight": 0}, {"kind": "Mesh", "name": "b", "weight": 0}]}}]),
                    ),
                    &[
                        (
                            "spec.to[0].rules[0].default.backendRefs[1].kind",
                            "kind Mesh is not allowed here",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs",
                            "all weights are 0",
                        ),
                    ],
                ),
                (
                    to(
                        json!([{"default": {"filters": [{"type": "RequestRedirect", "requestMirror": {"backendRef": {"kind": "MeshService", "name": "x"}, "percentage": 150}}]}}]),
                    ),
                    &[
                        (
                            "spec.to[0].rules[0].default.filters[0].requestRedirect",
                            "is required for type RequestRedirect",
                        ),
                        (
                            "spec.to[0].rules[0].default.filters[0].requestMirror",
                            "must not be set for type RequestRedirect",
                        ),
                        (
                            "spec.to[0].rules[0].default.filters[0].requestMirror.percentage",
                            "must be between 0% and 100% (got 150%)",
                        ),
                    ],
                ),
                (
                    to(json!([{"default": {}}, {"matches": [], "default": {}},
                              {"matches": [{"headers": [{"type": "Present", "name": "x", "value": "y"}]}], "default": {}}])),
                    &[
                        (
                            "spec.to[0].rules[1].matches",
                            "the same matches as an earlier rule",
                        ),
                        (
                            "spec.to[0].rules[2].matches[0].headers[0].value",
                            "must not be set for type Present",
                        ),
                    ],
                ),
                (
                    json!({"to": [{"targetRef": {"kind": "Mesh"}, "rules": []}]}),
                    &[
                        (
                            "spec.to[0].targetRef.kind",
                            "kind Mesh is not allowed here; use one of: MeshService",
                        ),
                        ("spec.to[0].rules", "needs at least one rule"),
                    ],
                ),
                (
                    to(
                        json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}, {"path": {"type": "PathPrefix", "value": "/b"}}],
                               "default": {"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "value": "/c"}}}]}}]),
                    ),
                    &[(
                        "spec.to[0].rules[0].default.filters[0].type",
                        "every match of the rule needs a path of type PathPrefix",
                    )],
                ),
                (
                    to(
                        json!([{"default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 200}}]}}]),
                    ),
                    &[(
                        "spec.to[0].rules[0].default.filters[0].requestRedirect.statusCode",
                        "must be 301, 302, 303, 307 or 308 (got 200)",
                    )],
                ),
            ],
        );
    }

    /// Kuma 2.9+ forms: backends by labels with a port, Kuma's path-modifier fields; and
    /// what Causeway refuses (gateway hostnames, external services).
    #[test]
    fn kuma_forms_table() {
        let to = |rules: serde_json::Value| {
            json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "frontend"}},
            "to": [{"targetRef": {"kind": "MeshService", "labels": {"kuma.io/display-name": "backend"}}, "rules": rules}]})
        };
        table::<MeshHttpRouteSpec>(
            &[to(json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
                 "default": {"backendRefs": [{"kind": "MeshService", "labels": {"kuma.io/display-name": "orders"}, "port": 8080}]}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                 "default": {"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}]}},
                {"default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}],
                             "backendRefs": [{"kind": "MeshService", "name": "backend", "namespace": "kuma-demo", "port": 3001}]}}
            ]))],
            &[
                (
                    to(json!([{"default": {"backendRefs": [
                        {"kind": "MeshService", "name": "a", "labels": {"kuma.io/display-name": "a"}},
                        {"kind": "MeshService", "labels": {"app": "a"}, "port": 0},
                        {"kind": "MeshServiceSubset", "labels": {"kuma.io/display-name": "a"}, "tags": {"v": "1"}},
                        {"kind": "MeshService"},
                        {"kind": "MeshExternalService", "name": "httpbin"},
                        {"kind": "MeshService", "labels": {"kuma.io/display-name": "a"}, "namespace": "ns"}]}}])),
                    &[
                        (
                            "spec.to[0].rules[0].default.backendRefs[0].labels",
                            "set name or labels, not both",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[1].labels.app",
                            "a service has only the labels",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[1].port",
                            "must be a port between 1 and 65535",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[2].labels",
                            "must not be set for kind MeshServiceSubset",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[3].name",
                            "unless labels name the service",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[4].kind",
                            "MeshExternalService: Causeway has no external services yet",
                        ),
                        (
                            "spec.to[0].rules[0].default.backendRefs[5].namespace",
                            "is allowed only with name",
                        ),
                    ],
                ),
                (
                    to(
                        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/p"}}], "default": {"filters": [
                        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replaceFullPath": "/x"}}},
                        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "value": "/a", "replaceFullPath": "/b"}}},
                        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "b"}}}]}}]),
                    ),
                    &[
                        (
                            "spec.to[0].rules[0].default.filters[0].urlRewrite.path.replaceFullPath",
                            "must not be set for type ReplacePrefixMatch; use replacePrefixMatch",
                        ),
                        (
                            "spec.to[0].rules[0].default.filters[0].urlRewrite.path.value",
                            "is required (or replacePrefixMatch)",
                        ),
                        (
                            "spec.to[0].rules[0].default.filters[1].urlRewrite.path.replaceFullPath",
                            "set value or replaceFullPath, not both",
                        ),
                        (
                            "spec.to[0].rules[0].default.filters[2].urlRewrite.path.replaceFullPath",
                            "must start with '/'",
                        ),
                    ],
                ),
                (
                    json!({"targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "http-8080"}},
                           "to": [{"targetRef": {"kind": "Mesh"}, "hostnames": ["example.com"],
                                   "rules": [{"default": {}}]}]}),
                    &[
                        (
                            "spec.targetRef.kind",
                            "MeshGateway: Causeway has no gateways yet",
                        ),
                        ("spec.to[0].targetRef.kind", "kind Mesh is not allowed here"),
                        ("spec.to[0].hostnames", "Causeway has no gateways yet"),
                    ],
                ),
            ],
        );
    }
}
