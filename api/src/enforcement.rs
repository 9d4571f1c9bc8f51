//! What the proxies enforce of each policy kind, and the warnings a write gets for what
//! they do not enforce yet. No silent no-ops: a policy is either acted on, or its author
//! is told at write time (API `warnings`, `causeway apply`, `causeway explain`,
//! Terraform) which parts have no effect.
//!
//! The marks live in the type registry ([`crate::registry`]), one per policy kind, so
//! enforcing a field is a one-line change there next to its tests.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::{COMMON_UNENFORCED, Role, type_info};
use crate::resource::Resource;

/// How much of a policy kind the proxies enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Every field.
    Full,
    /// Nothing yet: the policy is validated, stored and synced to zones, and has no
    /// effect on traffic.
    NotYet,
    /// Everything but these parts.
    Partial(&'static [Unenforced]),
}

/// A part of a policy the proxies do not enforce yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unenforced {
    /// Where, from `spec`: dotted keys, `[]` for every item of a list, and optionally
    /// `key=Value` last, for a part that is unenforced only with that value
    /// (`from[].targetRef.kind=MeshSubset`).
    pub path: &'static str,
    /// What happens instead, in a sentence (the warning's reason).
    pub reason: &'static str,
}

/// A write that was accepted but will not have all of its effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldWarning {
    /// Dotted path from the resource root, e.g. `spec.to[0].default.http.maxStreamDuration`;
    /// `type` when the whole kind is not enforced.
    pub field: String,
    /// Why it is a warning, and what happens instead.
    pub reason: String,
}

impl std::fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The body of a successful write (`PUT`): the resource as stored, with `warnings` when
/// the proxies do not enforce all of it (absent when they do).
#[derive(Debug, Serialize)]
pub struct WriteResponse<'a> {
    /// The stored resource, with its server-set fields.
    #[serde(flatten)]
    pub resource: &'a Resource,
    /// What of it has no effect yet.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub warnings: &'a [FieldWarning],
}

/// The warnings a write of `r` gets: the parts of it the proxies do not enforce yet.
/// Empty for a fully enforced policy, for types that are not policies, and for unknown
/// types (validation reports those).
///
/// ```
/// let r = causeway_api::Resource::from_yaml(
///     "type: MeshMetric\nmesh: default\nname: r\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends: [{type: Prometheus, prometheus: {mtls: true}}]\n",
/// )?;
/// // Every field of every kind is enforced today: nothing to warn about.
/// assert!(causeway_api::warnings(&r).is_empty());
/// # Ok::<(), causeway_api::ParseError>(())
/// ```
pub fn warnings(r: &Resource) -> Vec<FieldWarning> {
    let Some(info) = type_info(&r.kind) else {
        return Vec::new();
    };
    let Role::Policy(enforcement) = info.role else {
        return Vec::new();
    };
    warnings_of(info.kind, enforcement, &r.spec)
}

/// The warnings of a `kind` policy whose proxies enforce `enforcement`, for `spec`.
fn warnings_of(kind: &str, enforcement: Enforcement, spec: &Value) -> Vec<FieldWarning> {
    match enforcement {
        Enforcement::NotYet => vec![FieldWarning {
            field: "type".into(),
            reason: format!(
                "{kind} is not enforced by the proxies yet: it is stored and synced to every zone, but has no effect on traffic"
            ),
        }],
        Enforcement::Full | Enforcement::Partial(_) => {
            let mut out = Vec::new();
            for part in unenforced_parts(enforcement, true) {
                for field in matches(spec, part.path) {
                    out.push(FieldWarning {
                        field,
                        reason: format!("not enforced by the proxies yet: {}", part.reason),
                    });
                }
            }
            out
        }
    }
}

/// What of an enforced (fully or partly) policy kind the proxies ignore: its own marks,
/// and with `common` the fields every kind accepts and none acts on yet.
fn unenforced_parts(
    enforcement: Enforcement,
    common: bool,
) -> impl Iterator<Item = &'static Unenforced> {
    let own: &'static [Unenforced] = match enforcement {
        Enforcement::Partial(parts) => parts,
        Enforcement::Full | Enforcement::NotYet => &[],
    };
    let common: &'static [Unenforced] = if common { COMMON_UNENFORCED } else { &[] };
    own.iter().chain(common)
}

/// The unenforced parts of `kind` at `path` (dotted, from `spec`, list items without an
/// index: `spec.to.default.http`), or under it; the common ones too with `common`. For
/// `explain`.
pub(crate) fn unenforced_at(kind: &str, path: &[&str], common: bool) -> Vec<&'static Unenforced> {
    let Some(Role::Policy(enforcement @ (Enforcement::Full | Enforcement::Partial(_)))) =
        type_info(kind).map(|t| t.role)
    else {
        return Vec::new();
    };
    unenforced_in(enforcement, path, common)
}

/// [`unenforced_at`] for a kind with `enforcement`.
fn unenforced_in(
    enforcement: Enforcement,
    path: &[&str],
    common: bool,
) -> Vec<&'static Unenforced> {
    unenforced_parts(enforcement, common)
        .filter(|p| {
            let keys = pattern_keys(p.path);
            // The pattern lies at or under `path`, or `path` lies under the pattern.
            path.len() <= keys.len() + 1
                && path.first() == Some(&"spec")
                && path[1..].iter().zip(&keys).all(|(a, b)| a == b)
                || path.len() > keys.len() + 1
                    && path.first() == Some(&"spec")
                    && keys.iter().zip(&path[1..]).all(|(a, b)| a == b)
                    && !p.path.contains('=')
        })
        .collect()
}

/// A pattern's keys without list markers or a value test: `to[].default.x` is
/// `[to, default, x]`; `from[].targetRef.kind=MeshSubset` is `[from, targetRef, kind]`.
fn pattern_keys(pattern: &str) -> Vec<&str> {
    pattern
        .split('.')
        .map(|s| {
            let s = s.split('=').next().unwrap_or(s);
            s.strip_suffix("[]").unwrap_or(s)
        })
        .collect()
}

/// The concrete paths (from the resource root) where `pattern` is present in `spec`.
fn matches(spec: &Value, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let segments: Vec<&str> = pattern.split('.').collect();
    walk(spec, &segments, "spec".to_owned(), &mut out);
    out
}

fn walk(value: &Value, segments: &[&str], path: String, out: &mut Vec<String>) {
    let Some((segment, rest)) = segments.split_first() else {
        out.push(path);
        return;
    };
    let (segment, wanted) = match segment.split_once('=') {
        Some((key, wanted)) => (key, Some(wanted)),
        None => (*segment, None),
    };
    let (key, list) = match segment.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (segment, false),
    };
    let Some(child) = value.get(key).filter(|v| !v.is_null()) else {
        return;
    };
    let path = format!("{path}.{key}");
    if let Some(wanted) = wanted {
        // A string by its text, anything else by its JSON (`mtls=true`).
        let found = child
            .as_str()
            .map_or_else(|| child.to_string(), str::to_owned);
        if found == wanted {
            out.push(path);
        }
        return;
    }
    match (list, child) {
        (true, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, rest, format!("{path}[{i}]"), out);
            }
        }
        (true, _) => {}
        (false, child) => walk(child, rest, path, out),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::types;

    fn warned(yaml: &str) -> Vec<(String, String)> {
        let r = Resource::from_yaml(yaml).unwrap();
        crate::validate(&r).unwrap();
        warnings(&r)
            .into_iter()
            .map(|w| (w.field, w.reason))
            .collect()
    }

    #[test]
    fn mesh_metric_warns_about_nothing() {
        let served = warned(
            "type: MeshMetric\nmesh: default\nname: m\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    sidecar: {includeUnused: false, profiles: {appendProfiles: [{name: Basic}], exclude: [{type: Prefix, match: causeway_tcp_}]}}\n    applications: [{port: 8080}]\n    backends:\n    - {type: Prometheus, prometheus: {port: 5670, path: /metrics, mtls: false, tls: {mode: Disabled}}}\n",
        );
        assert_eq!(served, []);
        let got = warned(
            "type: MeshMetric\nmesh: default\nname: m\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    sidecar: {includeUnused: true, profiles: {appendProfiles: [{name: Basic}]}}\n    applications: [{port: 8080}]\n    backends:\n    - {type: Prometheus, prometheus: {mtls: true}}\n    - {type: OpenTelemetry, openTelemetry: {endpoint: \"otel:4317\"}}\n",
        );
        // The endpoint over the mesh's mTLS too.
        assert_eq!(got, []);
    }

    #[test]
    fn patterns_find_every_present_place_and_only_those() {
        let spec = json!({"to": [
            {"targetRef": {"kind": "Mesh"}, "default": {"http": {"maxStreamDuration": "1s"}}},
            {"targetRef": {"kind": "MeshService"}, "default": {}},
            {"targetRef": {"kind": "MeshSubset"}, "default": {"http": {"maxStreamDuration": null}}},
            {"targetRef": {"kind": "MeshSubset"}, "default": {"http": {"maxStreamDuration": "2s"}}},
        ]});
        assert_eq!(
            matches(&spec, "to[].default.http.maxStreamDuration"),
            [
                "spec.to[0].default.http.maxStreamDuration",
                "spec.to[3].default.http.maxStreamDuration"
            ]
        );
        assert_eq!(
            matches(&spec, "to[].targetRef.kind=MeshSubset"),
            ["spec.to[2].targetRef.kind", "spec.to[3].targetRef.kind"]
        );
        assert!(matches(&spec, "from[].default").is_empty());
        // A list marker on a non-list, or a key under a scalar, matches nothing.
        assert!(matches(&json!({"to": {"a": 1}}), "to[].a").is_empty());
        assert!(matches(&json!({"to": 1}), "to.a").is_empty());
    }

    #[test]
    fn a_kind_the_proxies_ignore_warns_once_at_its_type() {
        // Every kind is enforced at least in part today: the machinery, on a spec.
        let spec = json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": []}});
        let got = warnings_of("MeshMetric", Enforcement::NotYet, &spec);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].field, "type");
        assert!(got[0].reason.contains("MeshMetric is not enforced"));
        assert!(got[0].reason.contains("no effect on traffic"));
    }

    #[test]
    fn an_enforced_policy_gets_no_warning() {
        let got = warned(
            "type: MeshTrafficPermission\nmesh: default\nname: p\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
        );
        assert_eq!(got, []);
        // Callers by tags: their certificates carry their Dataplane's tags.
        let got = warned(
            "type: MeshTrafficPermission\nmesh: default\nname: p\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {version: v2}}\n    default: {action: Deny}\n  - targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v1}}\n    default: {action: Allow}\n",
        );
        assert_eq!(got, []);
        // Inbound circuit breaking by caller, every field; the request-headers timeout
        // of what the application sends to a destination.
        let got = warned(
            "type: MeshCircuitBreaker\nmesh: default\nname: p\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {version: v2}}\n    default:\n      connectionLimits: {maxConnections: 1, maxRequests: 1, maxPendingRequests: 1, maxRetries: 1}\n      outlierDetection: {detectors: {totalFailures: {consecutive: 3}}}\n",
        );
        assert_eq!(got, []);
        let got = warned(
            "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestHeadersTimeout: 2s}}\n",
        );
        assert_eq!(got, []);
        // Not policies: nothing to warn about.
        let mesh = warned("type: Mesh\nname: default\n");
        assert_eq!(mesh, []);
    }

    #[test]
    fn a_partly_enforced_policy_warns_at_each_ignored_field() {
        let spec = json!({"targetRef": {"kind": "Mesh"}, "from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"connectionLimits": {"maxConnections": 10}}},
            {"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"connectionLimits": {"maxConnections": 5}}},
        ]});
        let got = warnings_of("MeshCircuitBreaker", Enforcement::Partial(MARKS), &spec);
        let fields: Vec<&str> = got.iter().map(|w| w.field.as_str()).collect();
        // The entry for every caller is enforced; the one for web is not.
        assert_eq!(fields, ["spec.from[1].targetRef.kind"], "{got:#?}");
        assert!(
            got[0]
                .reason
                .starts_with("not enforced by the proxies yet: ")
        );
    }

    /// Every pattern in the registry names a field that exists in its kind's schema, so
    /// a renamed field cannot leave a mark that never matches; a common one exists in
    /// every policy kind that has its section.
    #[test]
    fn every_unenforced_mark_names_a_real_field() {
        for t in types() {
            let Role::Policy(enforcement) = t.role else {
                continue;
            };
            if let Enforcement::Partial(parts) = enforcement {
                assert!(!parts.is_empty(), "{}: Partial with nothing listed", t.kind);
            }
            let has_section = |path: &str| {
                let section = pattern_keys(path)[0];
                crate::explain(&format!("{}.spec.{section}", t.kind)).is_ok()
            };
            for part in unenforced_parts(enforcement, true).filter(|p| has_section(p.path)) {
                let mut path = format!("{}.spec", t.kind);
                for key in pattern_keys(part.path) {
                    path.push('.');
                    path.push_str(key);
                }
                crate::explain(&path).unwrap_or_else(|e| panic!("{}: {}: {e}", t.kind, part.path));
                assert!(!part.reason.is_empty() && part.reason.ends_with('.'));
            }
        }
    }

    /// Marks as a partly enforced kind might have them, for the tests of the machinery
    /// (the registry's own marks come and go as the proxies learn).
    const MARKS: &[Unenforced] = &[
        Unenforced {
            path: "from[].targetRef.kind=MeshSubset",
            reason: "callers by tags are not told apart yet.",
        },
        Unenforced {
            path: "from[].targetRef.kind=MeshService",
            reason: "callers by service are not told apart yet.",
        },
        Unenforced {
            path: "from[].default.connectionLimits.maxRetries",
            reason: "inbound retries are not capped yet.",
        },
        Unenforced {
            path: "rules[].default.outlierDetection",
            reason: "the application is not ejected yet.",
        },
    ];

    #[test]
    fn explain_finds_marks_at_and_under_a_path() {
        let partial = Enforcement::Partial(MARKS);
        let at = |p: &[&str]| unenforced_in(partial, p, false).len();
        assert_eq!(at(&["spec", "from"]), 3);
        assert_eq!(at(&["spec"]), 4);
        assert_eq!(at(&["spec", "from", "targetRef", "kind"]), 2);
        assert_eq!(
            at(&["spec", "from", "default", "connectionLimits", "maxRetries"]),
            1
        );
        assert_eq!(at(&["spec", "to"]), 0);
        assert_eq!(at(&["spec", "targetRef"]), 0);
        assert_eq!(at(&[]), 0);
        assert!(unenforced_at("Mesh", &["spec"], true).is_empty());
    }

    /// The kinds the resilience and traffic-shaping work covers are enforced in full:
    /// no field of theirs warns.
    #[test]
    fn every_policy_kind_is_enforced_in_full() {
        // No silent no-ops, and nothing left to warn about: every field of every kind.
        for t in crate::registry::types() {
            if let Role::Policy(e) = t.role {
                assert_eq!(e, Enforcement::Full, "{}", t.kind);
                assert!(
                    unenforced_at(t.kind, &["spec"], true).is_empty(),
                    "{}",
                    t.kind
                );
            }
        }
    }

    #[test]
    fn the_resilience_and_traffic_shaping_kinds_are_enforced_in_full() {
        for kind in [
            "MeshTimeout",
            "MeshRetry",
            "MeshCircuitBreaker",
            "MeshHealthCheck",
            "MeshHTTPRoute",
            "MeshTCPRoute",
            "MeshFaultInjection",
            "MeshRateLimit",
            "MeshLoadBalancingStrategy",
            "MeshTrafficPermission",
        ] {
            let t = type_info(kind).expect("a kind");
            assert_eq!(t.role, Role::Policy(Enforcement::Full), "{kind}");
            assert!(unenforced_at(kind, &["spec"], true).is_empty(), "{kind}");
        }
    }
}
