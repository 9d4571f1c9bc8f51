//! `targetRef`: which proxies a policy configures, and which peers its `to[]` and
//! `from[]` entries are about.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, at, check_service_name, idx};
use crate::validation::{validate_label_key, validate_label_value};

/// The tag that every inbound carries implicitly: its service name.
pub const SERVICE_TAG: &str = "causeway.io/service";
/// The tag that every inbound carries implicitly: the zone it runs in.
pub const ZONE_TAG: &str = "causeway.io/zone";

/// A reference to a set of proxies or peers, Kuma-style.
///
/// ```yaml
/// targetRef: {kind: Mesh}
/// targetRef: {kind: MeshService, name: backend}
/// targetRef: {kind: MeshSubset, tags: {version: v2}}
/// targetRef: {kind: MeshServiceSubset, name: backend, tags: {version: v2}}
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// What is referenced: `Mesh` (everything in the mesh), `MeshSubset` (proxies
    /// whose tags include `tags`), `MeshService` (the service `name`),
    /// `MeshServiceSubset` (the service `name`, only its proxies with `tags`),
    /// `MeshHTTPRoute` (a route by `name`, in `to[]` of some policies) or `SpiffeId`
    /// (a workload identity, in `from[]` of MeshTrafficPermission).
    pub kind: TargetRefKind,
    /// The service (`MeshService`, `MeshServiceSubset`), route (`MeshHTTPRoute`) or
    /// SPIFFE id (`SpiffeId`, `spiffe://<trust-domain>/<service>`). Not allowed for
    /// `Mesh` and `MeshSubset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags a proxy must all have (`MeshSubset`, `MeshServiceSubset`); keys use label
    /// key syntax, values are non-empty label values. Every inbound also has
    /// `causeway.io/service` and `causeway.io/zone`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// The kinds of [`TargetRef`], from least to most specific.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TargetRefKind {
    /// Every proxy (or peer) in the mesh.
    Mesh,
    /// Proxies whose tags include the given tags.
    MeshSubset,
    /// The proxies of one service.
    MeshService,
    /// The proxies of one service that also have the given tags.
    MeshServiceSubset,
    /// One MeshHTTPRoute, by name: its matched requests.
    #[serde(rename = "MeshHTTPRoute")]
    MeshHttpRoute,
    /// One workload identity, `spiffe://<trust-domain>/<service>`.
    SpiffeId,
}

impl fmt::Display for TargetRefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetRefKind::Mesh => "Mesh",
            TargetRefKind::MeshSubset => "MeshSubset",
            TargetRefKind::MeshService => "MeshService",
            TargetRefKind::MeshServiceSubset => "MeshServiceSubset",
            TargetRefKind::MeshHttpRoute => "MeshHTTPRoute",
            TargetRefKind::SpiffeId => "SpiffeId",
        })
    }
}

impl Default for TargetRef {
    fn default() -> Self {
        TargetRef::mesh()
    }
}

/// Kinds a policy's top-level `targetRef` may have.
pub(crate) const TOP_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];
/// Kinds a `from[]` entry may have.
pub(crate) const FROM_KINDS: &[TargetRefKind] = TOP_KINDS;
/// Kinds a `to[]` entry may have.
pub(crate) const TO_KINDS: &[TargetRefKind] = &[TargetRefKind::Mesh, TargetRefKind::MeshService];
/// Kinds a `to[]` entry may have in policies that can configure one route.
pub(crate) const TO_ROUTE_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshService,
    TargetRefKind::MeshHttpRoute,
];

impl TargetRef {
    /// `{kind: Mesh}`.
    pub fn mesh() -> TargetRef {
        TargetRef {
            kind: TargetRefKind::Mesh,
            name: None,
            tags: BTreeMap::new(),
        }
    }

    /// `{kind: MeshService, name}`.
    pub fn service(name: &str) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::MeshService,
            name: Some(name.to_owned()),
            tags: BTreeMap::new(),
        }
    }

    /// `{kind: MeshSubset, tags}`.
    pub fn subset<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::MeshSubset,
            name: None,
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// `{kind: MeshServiceSubset, name, tags}`.
    pub fn service_subset<'a>(
        name: &str,
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::MeshServiceSubset,
            name: Some(name.to_owned()),
            ..TargetRef::subset(tags)
        }
    }

    /// The tags a peer must have to be in this set, with the service folded in as
    /// `causeway.io/service` (and a SPIFFE id as `causeway.io/spiffe-id`). `A` covers
    /// `B` (every member of `B` is in `A`) when `A`'s tags are a subset of `B`'s.
    pub(crate) fn canonical_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        match (self.kind, &self.name) {
            (TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset, Some(name)) => {
                tags.insert(SERVICE_TAG.to_owned(), name.clone());
            }
            (TargetRefKind::SpiffeId, Some(name)) => {
                tags.insert("causeway.io/spiffe-id".to_owned(), name.clone());
            }
            _ => {}
        }
        tags
    }

    /// Whether a peer or proxy with `tags` (its service folded in) is in this set.
    pub(crate) fn matches_tags(&self, tags: &BTreeMap<String, String>) -> bool {
        self.canonical_tags()
            .iter()
            .all(|(k, v)| tags.get(k) == Some(v))
    }

    /// Whether every member of `other` is also a member of `self`.
    pub(crate) fn covers(&self, other: &TargetRef) -> bool {
        self.matches_tags(&other.canonical_tags())
    }

    /// Checks this reference at `path`, allowing only `allowed` kinds.
    pub(crate) fn check(&self, errors: &mut Errors, path: &str, allowed: &[TargetRefKind]) {
        if !allowed.contains(&self.kind) {
            let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            errors.push(
                at(path, "kind"),
                format!(
                    "kind {} is not allowed here; use one of: {}",
                    self.kind,
                    allowed.join(", ")
                ),
            );
        }
        let (needs_name, needs_tags) = match self.kind {
            TargetRefKind::Mesh => (false, false),
            TargetRefKind::MeshSubset => (false, true),
            TargetRefKind::MeshService | TargetRefKind::MeshHttpRoute | TargetRefKind::SpiffeId => {
                (true, false)
            }
            TargetRefKind::MeshServiceSubset => (true, true),
        };
        match (&self.name, needs_name) {
            (Some(_), false) => errors.push(
                at(path, "name"),
                format!("must not be set for kind {}", self.kind),
            ),
            (None, true) => errors.push(
                at(path, "name"),
                format!("is required for kind {}", self.kind),
            ),
            (Some(name), true) => {
                let result = match self.kind {
                    TargetRefKind::SpiffeId => check_spiffe_id(name),
                    TargetRefKind::MeshHttpRoute => {
                        crate::validation::validate_name("", name).map_or(Ok(()), |e| Err(e.reason))
                    }
                    _ => check_service_name(name),
                };
                errors.check(at(path, "name"), result);
            }
            (None, false) => {}
        }
        if needs_tags && self.tags.is_empty() {
            errors.push(
                at(path, "tags"),
                format!("must have at least one tag for kind {}", self.kind),
            );
        }
        if !needs_tags && !self.tags.is_empty() {
            errors.push(
                at(path, "tags"),
                format!("must not be set for kind {}", self.kind),
            );
        }
        check_tags(errors, &at(path, "tags"), &self.tags);
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, " {{{}}}", tags.join(","))?;
        }
        Ok(())
    }
}

/// Checks tags: label-key keys and non-empty label values; errors at `path.<key>`.
pub(crate) fn check_tags(errors: &mut Errors, path: &str, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        let field = at(path, key);
        errors.check(field.clone(), validate_label_key(key));
        if value.is_empty() {
            errors.push(field, "a tag value must not be empty");
        } else {
            errors.check(field, validate_label_value(value));
        }
    }
}

fn check_spiffe_id(id: &str) -> Result<(), String> {
    let hint = "use spiffe://<trust-domain>/<service>, like spiffe://default/backend";
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err(format!("{id:?} is not a SPIFFE id; {hint}"));
    };
    let Some((domain, service)) = rest.split_once('/') else {
        return Err(format!("{id:?} has no path; {hint}"));
    };
    crate::validation::validate_dns_subdomain(domain)
        .map_err(|reason| format!("{id:?}: the trust domain {reason}"))?;
    check_service_name(service).map_err(|reason| format!("{id:?}: {reason}"))
}

/// One entry of `to[]` or `from[]`: the peers it is about and the configuration for
/// traffic to or from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyItem<C> {
    /// The peers: destinations in `to[]`, sources in `from[]`.
    pub target_ref: TargetRef,
    /// The configuration. When several entries match, their `default` sections are
    /// merged as JSON merge-patch, from the least to the most specific.
    pub default: C,
}

/// A configuration section that can check itself at a path.
pub(crate) trait Conf {
    /// Records problems with this section, at `path` (`spec.to[0].default`).
    fn check(&self, errors: &mut Errors, path: &str);
}

/// Checks `items` at `path` (`spec.to`): each entry's `targetRef` and `default`.
pub(crate) fn check_items<C: Conf>(
    errors: &mut Errors,
    path: &str,
    items: &[PolicyItem<C>],
    allowed: &[TargetRefKind],
) {
    for (i, item) in items.iter().enumerate() {
        let path = idx(path, i);
        item.target_ref
            .check(errors, &at(&path, "targetRef"), allowed);
        item.default.check(errors, &at(&path, "default"));
    }
}

/// Reports `path` when both sections are empty (a policy that does nothing).
pub(crate) fn require_some(errors: &mut Errors, path: &str, sections: &[(&str, usize)]) {
    if sections.iter().all(|(_, n)| *n == 0) {
        let names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        errors.push(
            path,
            format!("needs at least one entry in {}", names.join(" or ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(tr: &TargetRef, allowed: &[TargetRefKind]) -> Vec<(String, String)> {
        let mut e = Errors::default();
        tr.check(&mut e, "spec.targetRef", allowed);
        e.0.into_iter().map(|e| (e.field, e.reason)).collect()
    }

    #[test]
    fn check_table() {
        let good = [
            TargetRef::mesh(),
            TargetRef::service("backend"),
            TargetRef::subset([("version", "v2")]),
            TargetRef::service_subset("backend", [("version", "v2")]),
        ];
        for tr in good {
            assert_eq!(errs(&tr, TOP_KINDS), vec![], "{tr}");
        }
        let bad = [
            (
                TargetRef {
                    name: Some("x".into()),
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.name",
                "must not be set for kind Mesh",
            ),
            (
                TargetRef {
                    name: None,
                    ..TargetRef::service("x")
                },
                TOP_KINDS,
                "spec.targetRef.name",
                "is required for kind MeshService",
            ),
            (
                TargetRef::subset([]),
                TOP_KINDS,
                "spec.targetRef.tags",
                "at least one tag",
            ),
            (
                TargetRef::subset([("version", "v2")]),
                TO_KINDS,
                "spec.targetRef.kind",
                "kind MeshSubset is not allowed here; use one of: Mesh, MeshService",
            ),
            (
                TargetRef::service("bad name"),
                TOP_KINDS,
                "spec.targetRef.name",
                "not a valid service name",
            ),
            (
                TargetRef::subset([("Bad Key", "v")]),
                TOP_KINDS,
                "spec.targetRef.tags.Bad Key",
                "invalid label key",
            ),
            (
                TargetRef::subset([("version", "")]),
                TOP_KINDS,
                "spec.targetRef.tags.version",
                "must not be empty",
            ),
            (
                TargetRef {
                    kind: TargetRefKind::SpiffeId,
                    name: Some("backend".into()),
                    tags: BTreeMap::new(),
                },
                &[TargetRefKind::SpiffeId],
                "spec.targetRef.name",
                "is not a SPIFFE id",
            ),
        ];
        for (tr, allowed, field, reason) in bad {
            let got = errs(&tr, allowed);
            assert_eq!(got.len(), 1, "{tr}: {got:?}");
            assert_eq!(got[0].0, field, "{tr}");
            assert!(got[0].1.contains(reason), "{tr}: {}", got[0].1);
        }
    }

    #[test]
    fn covers() {
        let mesh = TargetRef::mesh();
        let svc = TargetRef::service("backend");
        let v2 = TargetRef::subset([("version", "v2")]);
        let svc_v2 = TargetRef::service_subset("backend", [("version", "v2")]);
        assert!(mesh.covers(&svc) && mesh.covers(&v2) && mesh.covers(&svc_v2));
        assert!(svc.covers(&svc_v2) && v2.covers(&svc_v2));
        assert!(!svc.covers(&v2) && !v2.covers(&svc) && !svc_v2.covers(&svc));
        assert!(TargetRef::subset([(SERVICE_TAG, "backend")]).covers(&svc));
    }
}
