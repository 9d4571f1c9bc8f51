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
/// The port of a service's endpoints, as a zone ingress offers them to other zones (in
/// its available services' tags): the inbound's port, which `sectionName` and a
/// backend's `port` name.
pub const PORT_TAG: &str = "causeway.io/port";
/// The name of that inbound, when it has one (for `sectionName` by name).
pub const PORT_NAME_TAG: &str = "causeway.io/port-name";
/// The namespace of a workload: Kuma's tag, which Kuma puts on every Kubernetes
/// workload. Zones here have no namespaces of their own; an inbound that carries this
/// tag is in that namespace, and `namespace` in a `targetRef` or `backendRef` means it.
pub const NAMESPACE_TAG: &str = "k8s.kuma.io/namespace";

/// A reference to a set of proxies or peers, Kuma-style (the older tag forms and
/// Kuma 2.9+'s `Dataplane`, `labels` and `sectionName` forms).
///
/// ```yaml
/// targetRef: {kind: Mesh}
/// targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
/// targetRef: {kind: MeshService, name: backend}
/// targetRef: {kind: MeshSubset, tags: {version: v2}}
/// targetRef: {kind: MeshServiceSubset, name: backend, tags: {version: v2}}
/// targetRef: {kind: Dataplane, labels: {app: backend}, sectionName: http}  # top level
/// targetRef: {kind: Dataplane, name: backend-vm-1}                         # top level
/// targetRef: {kind: MeshService, labels: {kuma.io/display-name: backend}}  # to[]
/// ```
///
/// A destination service (a `MeshService` in `to[]` or `from[]`) has two labels:
/// `kuma.io/display-name: <service>` and `causeway.io/service: <service>`, so Kuma's
/// `labels: {kuma.io/display-name: backend}` names the service `backend`. No other label
/// can ever match a service, so other keys are refused.
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
    /// Labels the referenced resource must all have. `Dataplane` (top level): labels of
    /// the Dataplane resource. `MeshService` (in `to[]`/`from[]`): instead of `name`,
    /// `kuma.io/display-name: <service>` or `causeway.io/service: <service>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// One part of the referenced resource. `Dataplane`: one inbound, by its `name` or
    /// its port as a decimal string (`"8080"`). `MeshService` in `to[]`: one port of the
    /// destination, the same way (its endpoints' inbounds by name or port): the entry
    /// applies to an outbound whose endpoints are all on that port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// The Kubernetes namespace of the referenced resource (Kuma's Kubernetes form),
    /// with `name` for `Dataplane` and `MeshService`: the workloads' tag
    /// `k8s.kuma.io/namespace` ([`NAMESPACE_TAG`]). Top level, the proxies whose
    /// inbound (or Dataplane labels) carry it; in `to[]`, an outbound whose endpoints
    /// all do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Top level only: which kinds of proxy are selected, `Sidecar` and/or `Gateway`.
    /// Absent: every proxy. Causeway has only sidecars, so a list must contain
    /// `Sidecar` (a `Gateway` alongside it selects nothing more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_types: Vec<ProxyType>,
}

/// A kind of proxy, for `proxyTypes`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ProxyType {
    /// A workload's sidecar: every Causeway proxy.
    Sidecar,
    /// A Kuma gateway proxy; Causeway has none.
    Gateway,
}

/// The label every destination service has, Kuma's name for it.
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// The label keys a destination service has (each with the service name as value).
pub const SERVICE_LABELS: &[&str] = &[DISPLAY_NAME_LABEL, SERVICE_TAG];

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
    /// Top level only: Dataplane proxies, by `name` or by the resource's `labels`,
    /// optionally one inbound (`sectionName`).
    Dataplane,
    /// Kuma's built-in gateway. Refused: Causeway has no gateways yet.
    MeshGateway,
    /// Kuma's external service. Refused: Causeway has no external services yet.
    MeshExternalService,
    /// Kuma's multi-zone service. Refused: Causeway has no multi-zone services yet
    /// (every service spans zones already: use MeshService).
    MeshMultiZoneService,
}

impl TargetRefKind {
    /// Why Causeway refuses this kind everywhere, for Kuma kinds it has no counterpart of.
    pub(crate) fn unsupported(self) -> Option<&'static str> {
        match self {
            TargetRefKind::MeshGateway => Some(
                "MeshGateway: Causeway has no gateways yet; target the sidecars (Mesh, Dataplane, MeshService)",
            ),
            TargetRefKind::MeshExternalService => Some(
                "MeshExternalService: Causeway has no external services yet; only services in the mesh can be referenced",
            ),
            TargetRefKind::MeshMultiZoneService => Some(
                "MeshMultiZoneService: Causeway has no multi-zone services yet; a MeshService already spans every zone, so reference it instead",
            ),
            _ => None,
        }
    }
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
            TargetRefKind::Dataplane => "Dataplane",
            TargetRefKind::MeshGateway => "MeshGateway",
            TargetRefKind::MeshExternalService => "MeshExternalService",
            TargetRefKind::MeshMultiZoneService => "MeshMultiZoneService",
        })
    }
}

impl Default for TargetRef {
    fn default() -> Self {
        TargetRef::mesh()
    }
}

/// Kinds a policy's top-level `targetRef` may have. `Dataplane` is allowed only here, so
/// a position whose kinds include it is the top level (where `proxyTypes` and a
/// Dataplane's `labels` and `sectionName` are allowed).
pub(crate) const TOP_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
];
/// Kinds a `from[]` entry may have.
pub(crate) const FROM_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];
/// Kinds a `to[]` entry may have.
pub(crate) const TO_KINDS: &[TargetRefKind] = &[TargetRefKind::Mesh, TargetRefKind::MeshService];
/// Kinds a `to[]` entry may have in policies that can configure one route.
pub(crate) const TO_ROUTE_KINDS: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshService,
    TargetRefKind::MeshHttpRoute,
];

/// A caller's SPIFFE id as a source: exactly, or by a prefix of whole path segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiffeSource<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

/// How a prefix match is kept in a `SpiffeId` reference made from a rule's `matches`
/// (never written by users: no valid SPIFFE id contains it).
const PREFIX_MARK: char = '*';

impl TargetRef {
    /// The source a rule's `matches` entry stands for: a `SpiffeId` reference (internal;
    /// a prefix is marked so that [`TargetRef::spiffe_source`] tells it apart).
    pub(crate) fn spiffe_match(m: &SpiffeIdMatch) -> TargetRef {
        let name = match m.kind {
            SpiffeMatchType::Exact => m.value.clone(),
            SpiffeMatchType::Prefix => format!("{}{PREFIX_MARK}", m.value),
        };
        TargetRef {
            kind: TargetRefKind::SpiffeId,
            name: Some(name),
            ..TargetRef::mesh()
        }
    }

    /// For a `SpiffeId` source: the id it names, or the prefix of a rule's prefix match.
    pub fn spiffe_source(&self) -> Option<SpiffeSource<'_>> {
        if self.kind != TargetRefKind::SpiffeId {
            return None;
        }
        let name = self.name.as_deref()?;
        Some(match name.strip_suffix(PREFIX_MARK) {
            Some(prefix) => SpiffeSource::Prefix(prefix),
            None => SpiffeSource::Exact(name),
        })
    }

    /// `{kind: Mesh}`.
    pub fn mesh() -> TargetRef {
        TargetRef {
            kind: TargetRefKind::Mesh,
            name: None,
            tags: BTreeMap::new(),
            labels: BTreeMap::new(),
            section_name: None,
            namespace: None,
            proxy_types: Vec::new(),
        }
    }

    /// `{kind: MeshService, name}`.
    pub fn service(name: &str) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::MeshService,
            name: Some(name.to_owned()),
            ..TargetRef::mesh()
        }
    }

    /// `{kind: MeshSubset, tags}`.
    pub fn subset<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::MeshSubset,
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..TargetRef::mesh()
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

    /// `{kind: Dataplane, labels}`: the proxies whose Dataplane has these labels.
    pub fn dataplane_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::Dataplane,
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..TargetRef::mesh()
        }
    }

    /// `{kind: Dataplane, name}`: the proxy of one Dataplane.
    pub fn dataplane_named(name: &str) -> TargetRef {
        TargetRef {
            kind: TargetRefKind::Dataplane,
            name: Some(name.to_owned()),
            ..TargetRef::mesh()
        }
    }

    /// The service a `MeshService`/`MeshServiceSubset` reference names: its `name`, or
    /// the value of its `kuma.io/display-name` (or `causeway.io/service`) label.
    pub fn service_name(&self) -> Option<&str> {
        match self.kind {
            TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset => {
                self.name.as_deref().or_else(|| {
                    SERVICE_LABELS
                        .iter()
                        .find_map(|key| self.labels.get(*key).map(String::as_str))
                })
            }
            _ => None,
        }
    }

    /// The tags a peer must have to be in this set, with the service folded in as
    /// `causeway.io/service` (and a SPIFFE id as `causeway.io/spiffe-id`, a namespace as
    /// [`NAMESPACE_TAG`]). `A` covers
    /// `B` (every member of `B` is in `A`) when `A`'s tags are a subset of `B`'s.
    pub fn canonical_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        // A namespace is the workloads' tag (zones here have none of their own).
        if let Some(namespace) = &self.namespace {
            tags.insert(NAMESPACE_TAG.to_owned(), namespace.clone());
        }
        match self.kind {
            TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset => {
                if let Some(name) = self.service_name() {
                    tags.insert(SERVICE_TAG.to_owned(), name.to_owned());
                }
            }
            TargetRefKind::SpiffeId => {
                if let Some(name) = &self.name {
                    tags.insert("causeway.io/spiffe-id".to_owned(), name.clone());
                }
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

    /// Checks this reference at `path`, allowing only `allowed` kinds. A position whose
    /// kinds include `Dataplane` is the top level.
    pub(crate) fn check(&self, errors: &mut Errors, path: &str, allowed: &[TargetRefKind]) {
        let top = allowed.contains(&TargetRefKind::Dataplane);
        if let Some(reason) = self.kind.unsupported() {
            errors.push(at(path, "kind"), reason);
            return;
        }
        if !allowed.contains(&self.kind) {
            let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            let why = match self.kind {
                TargetRefKind::MeshHttpRoute if top => {
                    " (a top-level MeshHTTPRoute targets the proxies that use a route; Causeway has no route-level top targets yet: target the proxies and put the route in to[])"
                }
                TargetRefKind::Dataplane => " (Dataplane selects proxies: top level only)",
                _ => "",
            };
            errors.push(
                at(path, "kind"),
                format!(
                    "kind {} is not allowed here; use one of: {}{why}",
                    self.kind,
                    allowed.join(", ")
                ),
            );
        }
        // What each kind takes: (name, tags, labels, sectionName, namespace).
        #[derive(PartialEq)]
        enum Takes {
            No,
            Optional,
            Required,
        }
        use Takes::*;
        let service_by_labels = self.kind == TargetRefKind::MeshService && !top;
        let (name, tags) = match self.kind {
            TargetRefKind::Mesh => (No, No),
            TargetRefKind::MeshSubset => (No, Required),
            TargetRefKind::MeshService if service_by_labels && !self.labels.is_empty() => (No, No),
            TargetRefKind::MeshService | TargetRefKind::MeshHttpRoute | TargetRefKind::SpiffeId => {
                (Required, No)
            }
            TargetRefKind::MeshServiceSubset => (Required, Required),
            TargetRefKind::Dataplane => (Optional, No),
            TargetRefKind::MeshGateway
            | TargetRefKind::MeshExternalService
            | TargetRefKind::MeshMultiZoneService => unreachable!("refused above"),
        };
        let labels_allowed = self.kind == TargetRefKind::Dataplane || service_by_labels;
        // A caller is a workload, not one of its ports.
        let caller = path.contains("from[");
        let section_allowed =
            (self.kind == TargetRefKind::Dataplane && top) || (service_by_labels && !caller);
        let namespace_allowed = matches!(
            self.kind,
            TargetRefKind::Dataplane | TargetRefKind::MeshService
        );
        match (&self.name, name) {
            (Some(_), No) if service_by_labels => errors.push(
                at(path, "name"),
                "set name or labels, not both: each names the service",
            ),
            (Some(_), No) => errors.push(
                at(path, "name"),
                format!("must not be set for kind {}", self.kind),
            ),
            (None, Required) if service_by_labels => errors.push(
                at(path, "name"),
                "is required for kind MeshService, unless labels name the service (kuma.io/display-name: <service>)",
            ),
            (None, Required) => errors.push(
                at(path, "name"),
                format!("is required for kind {}", self.kind),
            ),
            (Some(name), Required | Optional) => {
                let result = match self.kind {
                    TargetRefKind::SpiffeId => check_spiffe_id(name),
                    TargetRefKind::MeshHttpRoute | TargetRefKind::Dataplane => {
                        crate::validation::validate_name("", name).map_or(Ok(()), |e| Err(e.reason))
                    }
                    _ => check_service_name(name),
                };
                errors.check(at(path, "name"), result);
            }
            (None, _) => {}
        }
        if tags == Required && self.tags.is_empty() {
            errors.push(
                at(path, "tags"),
                format!("must have at least one tag for kind {}", self.kind),
            );
        }
        if tags == No && !self.tags.is_empty() {
            let hint = if self.kind == TargetRefKind::Dataplane {
                "; use labels (the Dataplane's labels)"
            } else {
                ""
            };
            errors.push(
                at(path, "tags"),
                format!("must not be set for kind {}{hint}", self.kind),
            );
        }
        check_tags(errors, &at(path, "tags"), &self.tags);
        if !self.labels.is_empty() {
            if !labels_allowed {
                errors.push(
                    at(path, "labels"),
                    format!("must not be set for kind {} here", self.kind),
                );
            } else if service_by_labels {
                check_service_labels(errors, &at(path, "labels"), &self.labels);
            } else {
                if self.name.is_some() {
                    errors.push(
                        at(path, "labels"),
                        "set name or labels, not both: a name already picks one Dataplane",
                    );
                }
                check_tags(errors, &at(path, "labels"), &self.labels);
            }
        }
        if let Some(section) = &self.section_name {
            if !section_allowed {
                errors.push(
                    at(path, "sectionName"),
                    format!(
                        "must not be set for kind {} here; sectionName picks one inbound of a top-level Dataplane, or one port of a MeshService in to[]",
                        self.kind
                    ),
                );
            } else {
                errors.check(at(path, "sectionName"), check_section_name(section));
            }
        }
        if let Some(namespace) = &self.namespace {
            if !namespace_allowed || self.name.is_none() {
                errors.push(
                    at(path, "namespace"),
                    "is allowed only with the name of a Dataplane or a MeshService",
                );
            } else if let Some(e) = crate::validation::validate_name("", namespace) {
                errors.push(at(path, "namespace"), e.reason);
            }
        }
        if !self.proxy_types.is_empty() {
            if !top {
                errors.push(
                    at(path, "proxyTypes"),
                    "is allowed only in the top-level targetRef",
                );
            } else if !self.proxy_types.contains(&ProxyType::Sidecar) {
                errors.push(
                    at(path, "proxyTypes"),
                    "[Gateway] selects only gateway proxies: Causeway has no gateways yet, so this policy would apply to nothing; add Sidecar or leave proxyTypes out",
                );
            }
        }
    }
}

/// Checks the labels of a `MeshService` reference: only the labels a service has, with
/// one service name.
pub(crate) fn check_service_labels(
    errors: &mut Errors,
    path: &str,
    labels: &BTreeMap<String, String>,
) {
    for (key, value) in labels {
        let field = at(path, key);
        if !SERVICE_LABELS.contains(&key.as_str()) {
            errors.push(
                field,
                format!(
                    "a service has only the labels {}, each with the service name as value; {key:?} would match no service",
                    SERVICE_LABELS.join(" and ")
                ),
            );
        } else {
            errors.check(field, check_service_name(value));
        }
    }
    let names: std::collections::BTreeSet<&String> = labels
        .iter()
        .filter(|(k, _)| SERVICE_LABELS.contains(&k.as_str()))
        .map(|(_, v)| v)
        .collect();
    if names.len() > 1 {
        errors.push(
            path,
            "the labels name different services, so they would match none",
        );
    }
}

/// Checks a `sectionName`: a DNS label (an inbound's or port's name) or a port number.
pub(crate) fn check_section_name(section: &str) -> Result<(), String> {
    if let Ok(port) = section.parse::<u16>() {
        return if port == 0 {
            Err("port 0 is not a port; use 1 to 65535 or an inbound's name".to_owned())
        } else {
            Ok(())
        };
    }
    crate::validation::validate_name("", section).map_or(Ok(()), |e| {
        Err(format!("{}; or give a port number like \"8080\"", e.reason))
    })
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
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, " labels {{{}}}", labels.join(","))?;
        }
        if let Some(section) = &self.section_name {
            write!(f, " section {section}")?;
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

/// One entry of a policy's top-level `rules` (Kuma 2.9+): configuration for all traffic
/// the selected proxies receive, whoever sends it. Matching treats it as a `from[]`
/// entry with `targetRef: {kind: Mesh}`; with a top-level `sectionName`, only that
/// inbound gets it.
///
/// ```yaml
/// rules:
///   - default: {connectionTimeout: 10s}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule<C> {
    /// The configuration. Several rules (of one or several policies) merge their
    /// `default` sections as JSON merge-patch, in priority order.
    pub default: C,
}

/// A match on a caller by its SPIFFE id (MeshTrafficPermission `rules[].default`
/// lists, MeshFaultInjection `rules[].matches`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpiffeMatch {
    /// The identity to match.
    #[serde(rename = "spiffeID")]
    pub spiffe_id: SpiffeIdMatch,
}

/// A match on a caller's SPIFFE id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpiffeIdMatch {
    /// `Exact` (the whole id) or `Prefix` (the id starts with `value`; a prefix of whole
    /// path segments, like `spiffe://td/ns/legacy`).
    #[serde(rename = "type")]
    pub kind: SpiffeMatchType,
    /// A SPIFFE id or a prefix of one: `spiffe://<trust-domain>` then optional path
    /// segments, in Causeway's form (`spiffe://<trust-domain>/<service>`) or Kuma's
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
    pub value: String,
}

/// How a SPIFFE id is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SpiffeMatchType {
    /// The whole id.
    Exact,
    /// The id starts with the value.
    Prefix,
}

/// Checks a SPIFFE id (or prefix): `spiffe://`, a trust domain that is a DNS subdomain,
/// then path segments of unreserved characters, none empty.
pub(crate) fn check_spiffe_match(m: &SpiffeIdMatch) -> Result<(), String> {
    let hint = "use spiffe://<trust-domain>[/<path>], like spiffe://default.zone-1.mesh.local/ns/legacy/sa/client";
    let Some(rest) = m.value.strip_prefix("spiffe://") else {
        return Err(format!("{:?} is not a SPIFFE id; {hint}", m.value));
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    crate::validation::validate_dns_subdomain(domain)
        .map_err(|reason| format!("{:?}: the trust domain {reason}", m.value))?;
    if m.kind == SpiffeMatchType::Exact && path.is_empty() {
        return Err(format!(
            "{:?} has no path, so no workload has this id exactly; use type Prefix to match the whole trust domain",
            m.value
        ));
    }
    if !path.is_empty() {
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(format!("{:?} has an empty path segment; {hint}", m.value));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(format!(
                    "{:?} has {c:?} in its path; use letters, digits, '.', '_' and '-'",
                    m.value
                ));
            }
        }
    }
    Ok(())
}

/// One entry of MeshFaultInjection's top-level `rules` (Kuma 2.13+): like [`Rule`],
/// optionally only for callers with given SPIFFE ids.
///
/// ```yaml
/// rules:
///   - matches: [{spiffeID: {type: Exact, value: spiffe://default.mesh.local/ns/demo/sa/frontend}}]
///     default: {http: [{abort: {httpStatus: 500, percentage: 2.5}}]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchedRule<C> {
    /// The callers this rule is for: any one of the matches (each acts as a `from[]`
    /// entry for that SPIFFE id, or ids with that prefix). Empty: every caller (the
    /// rule acts as a `from[]` entry for `{kind: Mesh}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<SpiffeMatch>,
    /// The configuration.
    pub default: C,
}

/// Checks top-level `rules` with `matches` at `path` (`spec.rules`).
pub(crate) fn check_matched_rules<C: Conf>(
    errors: &mut Errors,
    path: &str,
    rules: &[MatchedRule<C>],
) {
    for (i, rule) in rules.iter().enumerate() {
        let path = idx(path, i);
        for (j, m) in rule.matches.iter().enumerate() {
            let field = at(&at(&idx(&at(&path, "matches"), j), "spiffeID"), "value");
            errors.check(field, check_spiffe_match(&m.spiffe_id));
        }
        rule.default.check(errors, &at(&path, "default"));
    }
}

/// Checks top-level `rules` at `path` (`spec.rules`): each entry's `default`.
pub(crate) fn check_rules<C: Conf>(errors: &mut Errors, path: &str, rules: &[Rule<C>]) {
    for (i, rule) in rules.iter().enumerate() {
        rule.default.check(errors, &at(&idx(path, i), "default"));
    }
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

/// The sections a policy kind has, for [`check_policy`]; `None` for a section the kind
/// does not have (it is then not named in errors).
pub(crate) struct Sections<'a, C, R = C> {
    /// Top-level `rules` (inbound traffic from any caller); their `default` may have a
    /// type of its own (MeshTrafficPermission's allow and deny lists).
    pub(crate) rules: Option<&'a [Rule<R>]>,
    /// `from[]`, by caller, with the source kinds it allows.
    pub(crate) from: Option<(&'a [PolicyItem<C>], &'static [TargetRefKind])>,
    /// `to[]`, by destination, with the target kinds it allows.
    pub(crate) to: Option<(&'a [PolicyItem<C>], &'static [TargetRefKind])>,
}

impl<'a, C> Sections<'a, C> {
    /// A kind with only `to[]`.
    pub(crate) fn to_only(to: &'a [PolicyItem<C>], kinds: &'static [TargetRefKind]) -> Self {
        Sections {
            rules: None,
            from: None,
            to: Some((to, kinds)),
        }
    }
}

/// The checks every policy spec shares: its top-level `targetRef`, at least one entry
/// in one of its sections, and each entry's target and `default`.
pub(crate) fn check_policy<C: Conf, R: Conf>(
    errors: &mut Errors,
    target_ref: &TargetRef,
    sections: Sections<'_, C, R>,
) {
    target_ref.check(errors, "spec.targetRef", TOP_KINDS);
    let mut present = Vec::new();
    if let Some(rules) = sections.rules {
        present.push(("rules", rules.len()));
    }
    if let Some((from, _)) = sections.from {
        present.push(("from", from.len()));
    }
    if let Some((to, _)) = sections.to {
        present.push(("to", to.len()));
    }
    require_some(errors, "spec", &present);
    if let Some(rules) = sections.rules {
        check_rules(errors, "spec.rules", rules);
    }
    if let Some((from, kinds)) = sections.from {
        check_items(errors, "spec.from", from, kinds);
    }
    if let Some((to, kinds)) = sections.to {
        check_items(errors, "spec.to", to, kinds);
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
                    ..TargetRef::mesh()
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

    /// Kuma 2.9+ forms: Dataplane at the top level, services by labels, sectionName,
    /// namespace, proxyTypes; and the Kuma kinds Causeway refuses, with their reasons.
    #[test]
    fn kuma_forms_table() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let by_labels = |pairs: &[(&str, &str)]| TargetRef {
            kind: TargetRefKind::MeshService,
            labels: labels(pairs),
            ..TargetRef::mesh()
        };
        let good: &[(TargetRef, &[TargetRefKind])] = &[
            (TargetRef::dataplane_labels([("app", "backend")]), TOP_KINDS),
            (TargetRef::dataplane_named("backend-1"), TOP_KINDS),
            (
                TargetRef {
                    kind: TargetRefKind::Dataplane,
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
            ),
            (
                TargetRef {
                    section_name: Some("http".into()),
                    ..TargetRef::dataplane_labels([("app", "backend")])
                },
                TOP_KINDS,
            ),
            (
                TargetRef {
                    section_name: Some("8080".into()),
                    namespace: Some("kuma-demo".into()),
                    ..TargetRef::dataplane_named("backend-1")
                },
                TOP_KINDS,
            ),
            (
                TargetRef {
                    proxy_types: vec![ProxyType::Sidecar, ProxyType::Gateway],
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
            ),
            (by_labels(&[(DISPLAY_NAME_LABEL, "backend")]), TO_KINDS),
            (
                by_labels(&[(DISPLAY_NAME_LABEL, "backend"), (SERVICE_TAG, "backend")]),
                TO_KINDS,
            ),
            (
                TargetRef {
                    section_name: Some("http".into()),
                    namespace: Some("kuma-demo".into()),
                    ..TargetRef::service("backend")
                },
                TO_KINDS,
            ),
        ];
        for (tr, allowed) in good {
            assert_eq!(errs(tr, allowed), vec![], "{tr}");
        }
        let bad: Vec<(TargetRef, &[TargetRefKind], &str, &str)> = vec![
            (
                TargetRef::dataplane_labels([("app", "web")]),
                TO_KINDS,
                "spec.targetRef.kind",
                "(Dataplane selects proxies: top level only)",
            ),
            (
                TargetRef {
                    labels: labels(&[("app", "web")]),
                    ..TargetRef::dataplane_named("web-1")
                },
                TOP_KINDS,
                "spec.targetRef.labels",
                "set name or labels, not both",
            ),
            (
                TargetRef {
                    tags: labels(&[("app", "web")]),
                    kind: TargetRefKind::Dataplane,
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.tags",
                "must not be set for kind Dataplane; use labels",
            ),
            (
                TargetRef {
                    section_name: Some("Admin API".into()),
                    ..TargetRef::dataplane_labels([("app", "web")])
                },
                TOP_KINDS,
                "spec.targetRef.sectionName",
                "not a valid DNS label",
            ),
            (
                TargetRef {
                    section_name: Some("0".into()),
                    ..TargetRef::dataplane_labels([("app", "web")])
                },
                TOP_KINDS,
                "spec.targetRef.sectionName",
                "port 0 is not a port",
            ),
            (
                TargetRef {
                    section_name: Some("http".into()),
                    ..TargetRef::service("web")
                },
                TOP_KINDS,
                "spec.targetRef.sectionName",
                "must not be set for kind MeshService here",
            ),
            (
                TargetRef {
                    labels: labels(&[("app", "web")]),
                    ..TargetRef::service("web")
                },
                TOP_KINDS,
                "spec.targetRef.labels",
                "must not be set for kind MeshService here",
            ),
            (
                by_labels(&[("app", "backend")]),
                TO_KINDS,
                "spec.targetRef.labels.app",
                "a service has only the labels kuma.io/display-name and causeway.io/service",
            ),
            (
                by_labels(&[(DISPLAY_NAME_LABEL, "a"), (SERVICE_TAG, "b")]),
                TO_KINDS,
                "spec.targetRef.labels",
                "the labels name different services",
            ),
            (
                TargetRef {
                    name: Some("backend".into()),
                    ..by_labels(&[(DISPLAY_NAME_LABEL, "backend")])
                },
                TO_KINDS,
                "spec.targetRef.name",
                "set name or labels, not both",
            ),
            (
                TargetRef {
                    name: None,
                    ..TargetRef::service("x")
                },
                TO_KINDS,
                "spec.targetRef.name",
                "unless labels name the service",
            ),
            (
                TargetRef {
                    namespace: Some("kuma-demo".into()),
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.namespace",
                "only with the name of a Dataplane or a MeshService",
            ),
            (
                TargetRef {
                    proxy_types: vec![ProxyType::Gateway],
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.proxyTypes",
                "Causeway has no gateways yet",
            ),
            (
                TargetRef {
                    proxy_types: vec![ProxyType::Sidecar],
                    ..TargetRef::mesh()
                },
                TO_KINDS,
                "spec.targetRef.proxyTypes",
                "only in the top-level targetRef",
            ),
            (
                TargetRef {
                    kind: TargetRefKind::MeshGateway,
                    name: Some("edge".into()),
                    tags: labels(&[("port", "http-8080")]),
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.kind",
                "MeshGateway: Causeway has no gateways yet",
            ),
            (
                TargetRef {
                    kind: TargetRefKind::MeshExternalService,
                    name: Some("httpbin".into()),
                    ..TargetRef::mesh()
                },
                TO_KINDS,
                "spec.targetRef.kind",
                "MeshExternalService: Causeway has no external services yet",
            ),
            (
                TargetRef {
                    kind: TargetRefKind::MeshMultiZoneService,
                    labels: labels(&[(DISPLAY_NAME_LABEL, "backend")]),
                    ..TargetRef::mesh()
                },
                TO_KINDS,
                "spec.targetRef.kind",
                "MeshMultiZoneService: Causeway has no multi-zone services yet",
            ),
            (
                TargetRef {
                    kind: TargetRefKind::MeshHttpRoute,
                    name: Some("r".into()),
                    ..TargetRef::mesh()
                },
                TOP_KINDS,
                "spec.targetRef.kind",
                "Causeway has no route-level top targets yet",
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
    fn service_by_labels_is_the_named_service() {
        let by_labels = TargetRef {
            kind: TargetRefKind::MeshService,
            labels: [(DISPLAY_NAME_LABEL.to_owned(), "backend".to_owned())].into(),
            ..TargetRef::mesh()
        };
        assert_eq!(by_labels.service_name(), Some("backend"));
        assert_eq!(
            by_labels.canonical_tags(),
            TargetRef::service("backend").canonical_tags()
        );
        assert!(by_labels.covers(&TargetRef::service("backend")));
        assert_eq!(TargetRef::dataplane_named("b").service_name(), None);
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
