//! Policy matching and merging: which policies of a kind apply to a proxy, and the
//! configuration they add up to per inbound, per outbound destination and per route.
//!
//! This is the one place that decides it; the zone control plane, the inspection API
//! and the CLI call [`effective`] and nothing else.
//!
//! The rules are on [`effective`].

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dataplane::DataplaneSpec;
use crate::merge_patch::merge_patch;
use crate::registry::type_info;
use crate::resource::Resource;
use crate::target_ref::{NAMESPACE_TAG, SERVICE_TAG, TargetRef, TargetRefKind, ZONE_TAG};

/// A proxy as policy matching sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Proxy {
    /// The name of its Dataplane resource, for `targetRef: {kind: Dataplane, name}`;
    /// empty when unknown (then no Dataplane-by-name policy applies).
    pub name: String,
    /// The labels of its Dataplane resource, for `targetRef: {kind: Dataplane, labels}`.
    pub labels: BTreeMap<String, String>,
    /// The zone it runs in; `None` when zones do not matter (a single-zone test).
    pub zone: Option<String>,
    /// The services it serves.
    pub inbounds: Vec<ProxyInbound>,
    /// The services it calls.
    pub outbounds: Vec<ProxyOutbound>,
}

/// One inbound of a [`Proxy`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyInbound {
    /// Its name in the Dataplane, if it has one, for `sectionName`.
    pub name: Option<String>,
    /// The port it listens on.
    pub port: u16,
    /// Its service.
    pub service: String,
    /// Its tags, without `causeway.io/service` and `causeway.io/zone` (added here).
    pub tags: BTreeMap<String, String>,
}

/// One destination of a [`Proxy`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyOutbound {
    /// The destination service.
    pub service: String,
    /// The MeshHTTPRoutes (by name) that route to it, for per-route configuration.
    pub routes: Vec<String>,
    /// The ports of the service its endpoints are on (their inbounds'), for a `to[]`
    /// `sectionName`; empty when it has no endpoints (then no such entry applies).
    pub ports: Vec<ServicePort>,
    /// The namespaces its endpoints are in (their [`NAMESPACE_TAG`], `None` without
    /// it), for a `to[]` `namespace`.
    pub namespaces: Vec<Option<String>>,
}

/// One port of a service: an inbound's port, and its name if it has one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ServicePort {
    pub port: u16,
    pub name: Option<String>,
}

impl ServicePort {
    /// Whether a `sectionName` names this port: by its name, or its number in decimal.
    pub fn is(&self, section: &str) -> bool {
        self.name.as_deref() == Some(section) || section.parse() == Ok(self.port)
    }
}

impl ProxyOutbound {
    /// Whether a `to[]` `MeshService` reference's `sectionName` and `namespace` (if
    /// any) cover this destination: every endpoint it has is on that port, in that
    /// namespace.
    fn covered_by(&self, tr: &TargetRef) -> bool {
        let section = tr
            .section_name
            .as_deref()
            .is_none_or(|s| !self.ports.is_empty() && self.ports.iter().all(|p| p.is(s)));
        let namespace = tr.namespace.as_deref().is_none_or(|ns| {
            !self.namespaces.is_empty() && self.namespaces.iter().all(|n| n.as_deref() == Some(ns))
        });
        section && namespace
    }
}

impl Proxy {
    /// The proxy of a Dataplane in `zone`, with no routes on its outbounds. Give it
    /// the Dataplane's name and labels with [`Proxy::named`], or policies that target
    /// `kind: Dataplane` will not match it.
    pub fn from_dataplane(spec: &DataplaneSpec, zone: Option<&str>) -> Proxy {
        Proxy {
            name: String::new(),
            labels: BTreeMap::new(),
            zone: zone.map(str::to_owned),
            inbounds: spec
                .inbound
                .iter()
                .map(|i| ProxyInbound {
                    name: i.name.clone(),
                    port: i.port,
                    service: i.service.clone(),
                    tags: i.tags.clone(),
                })
                .collect(),
            outbounds: spec
                .outbound
                .iter()
                .map(|o| ProxyOutbound {
                    service: o.service.clone(),
                    ..ProxyOutbound::default()
                })
                .collect(),
        }
    }

    /// This proxy with its Dataplane resource's name and labels:
    /// `Proxy::from_dataplane(&spec, zone).named(&r.name, &r.labels)`.
    pub fn named(mut self, name: &str, labels: &BTreeMap<String, String>) -> Proxy {
        self.name = name.to_owned();
        self.labels = labels.clone();
        self
    }

    /// Whether a top-level `targetRef` selects this proxy's `inbound`.
    fn selects_inbound(&self, tr: &TargetRef, inbound: &ProxyInbound) -> bool {
        match tr.kind {
            TargetRefKind::Mesh => true,
            TargetRefKind::Dataplane => {
                self.selects_dataplane(tr)
                    && tr.section_name.as_deref().is_none_or(|section| {
                        inbound.name.as_deref() == Some(section)
                            || section == inbound.port.to_string()
                    })
            }
            // A namespace is among the reference's tags.
            _ => tr.matches_tags(&self.inbound_tags(inbound)),
        }
    }

    /// Whether a top-level `targetRef` selects this proxy as a client (for `to[]` and a
    /// top-level `default`): `Mesh`, a `Dataplane` reference that names or labels it
    /// (its `sectionName` does not matter here), or any kind that selects one of its
    /// inbounds.
    fn selects_client(&self, tr: &TargetRef) -> bool {
        match tr.kind {
            TargetRefKind::Mesh => true,
            TargetRefKind::Dataplane => self.selects_dataplane(tr),
            _ => self
                .inbounds
                .iter()
                .any(|inbound| self.selects_inbound(tr, inbound)),
        }
    }

    /// Whether the Dataplane's name and labels are what a `Dataplane` reference asks,
    /// and it is in the reference's namespace (its labels', or an inbound's tag).
    fn selects_dataplane(&self, tr: &TargetRef) -> bool {
        tr.name.as_deref().is_none_or(|name| name == self.name)
            && tr.labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
            && tr.namespace.as_deref().is_none_or(|ns| {
                self.labels.get(NAMESPACE_TAG).map(String::as_str) == Some(ns)
                    || self
                        .inbounds
                        .iter()
                        .any(|i| i.tags.get(NAMESPACE_TAG).map(String::as_str) == Some(ns))
            })
    }

    fn inbound_tags(&self, inbound: &ProxyInbound) -> BTreeMap<String, String> {
        let mut tags = inbound.tags.clone();
        tags.insert(SERVICE_TAG.to_owned(), inbound.service.clone());
        if let Some(zone) = &self.zone {
            tags.insert(ZONE_TAG.to_owned(), zone.clone());
        }
        tags
    }
}

/// A merged configuration and the policies it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    /// The merged `default` sections.
    pub conf: Value,
    /// The names of the policies merged, lowest priority first.
    pub policies: Vec<String>,
}

/// The configuration for traffic from one kind of source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromRule {
    /// The sources this rule is for.
    pub source: TargetRef,
    /// The merged `default` sections.
    pub conf: Value,
    /// The names of the policies merged, lowest priority first.
    pub policies: Vec<String>,
}

/// The configuration of one inbound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundConfig {
    /// The inbound's port.
    pub port: u16,
    /// One rule per source, most specific first: a caller gets the first that matches.
    pub rules: Vec<FromRule>,
}

/// The configuration for one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundConfig {
    /// The destination service.
    pub service: String,
    /// The configuration for all traffic to it, if any policy has one.
    pub conf: Option<Merged>,
    /// The configuration per route (by MeshHTTPRoute name), where a policy targets the
    /// route: the destination's configuration with the route's entries merged on top.
    pub routes: BTreeMap<String, Merged>,
}

/// A policy left out of the computation, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredPolicy {
    /// Its name.
    pub name: String,
    /// Why: the validation errors, or a kind that is not the one asked for.
    pub reason: String,
}

/// What the policies of one kind add up to for one proxy.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EffectiveConfig {
    /// For kinds with a top-level `default` (MeshTrace, MeshMetric).
    pub proxy: Option<Merged>,
    /// Per inbound, in the proxy's order.
    pub inbounds: Vec<InboundConfig>,
    /// Per destination, in the proxy's order.
    pub outbounds: Vec<OutboundConfig>,
    /// Policies that could not be used. The store validates on write, so this is
    /// empty in practice; it is reported rather than failing the whole computation.
    pub ignored: Vec<IgnoredPolicy>,
}

impl EffectiveConfig {
    /// Whether nothing of it configures the proxy: the policies it was computed from
    /// do not affect that proxy at all.
    pub fn is_empty(&self) -> bool {
        self.proxy.is_none()
            && self.inbounds.iter().all(|i| i.rules.is_empty())
            && self
                .outbounds
                .iter()
                .all(|o| o.conf.is_none() && o.routes.is_empty())
    }
}

/// [`effective`] was asked about a kind that is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind:?} is not a policy kind; policies are the mesh-scoped types with a targetRef, like MeshTimeout"
)]
pub struct NotAPolicyKind {
    /// The kind asked for.
    pub kind: String,
}

/// One policy, decoded.
struct Policy<'a> {
    name: &'a str,
    target_ref: TargetRef,
    zone_origin: bool,
    spec: Value,
}

/// One `to[]`/`from[]` entry (or top-level default) of a policy, in priority order.
struct Entry<'a> {
    policy: usize,
    target_ref: TargetRef,
    index: usize,
    payload: &'a Value,
}

/// The effective configuration of `kind` for `proxy`, from `policies` (all policies of
/// that kind in the proxy's mesh). Pure: no I/O, and the same inputs always give the
/// same output.
///
/// # Rules
///
/// - A policy applies to an inbound when its top-level `targetRef` matches the
///   inbound's tags (its own tags plus `causeway.io/service` and `causeway.io/zone`),
///   or, for `kind: Dataplane`, when the proxy's Dataplane has the given `name` and all
///   the given `labels` (the Dataplane resource's labels) and, with `sectionName`, the
///   inbound is that one (its `name`, or its port as a decimal string). It applies to
///   the proxy as a client (`to[]`, top-level `default`) when its `targetRef` is
///   `Mesh`, a `Dataplane` reference that names or labels the proxy (whatever its
///   `sectionName`), or matches any of the proxy's inbounds. `proxyTypes` is
///   validated to include `Sidecar`, so it never narrows anything here.
/// - A zone-origin policy (`origin` is a zone name) applies only to proxies in that zone.
/// - Priority, lowest first: top-level `targetRef` kind (`Mesh` < `MeshSubset` <
///   `MeshService` < `MeshServiceSubset` < `Dataplane` by labels (or neither name nor
///   labels) < `Dataplane` by name; with `sectionName`, a reference ranks above the
///   same one without it, below the next kind), then origin (global < zone), then name
///   (the lexicographically smaller name wins, so it is applied last). Inside a policy,
///   a more specific `to[]`/`from[]` `targetRef` wins over a less specific one, then
///   the later entry over the earlier.
/// - The `default` sections that apply are merged as JSON merge-patch (RFC 7386),
///   lowest priority first: objects merge field by field, lists and scalars replace.
///   They are merged in canonical form (`90s` is `1m30s`, `"50%"` is `50`), so the
///   result decodes with the kind's typed `*Conf` struct.
/// - Top-level `rules[]` (Kuma 2.9+) are inbound entries for every caller: each counts
///   as a `from[]` entry `{targetRef: {kind: Mesh}, default}` of its policy, after the
///   policy's own `from[]` entries. A rule with `matches` (MeshFaultInjection's callers
///   by SPIFFE id) is left out: callers are not matched by SPIFFE id yet (the registry
///   marks it not enforced). MeshTrafficPermission's `rules` (callers by SPIFFE
///   id: `allow`, `deny`, `allowWithShadowDeny`) arrive the same way, in the `Mesh`
///   source's rule; their lists are concatenated across policies rather than replaced
///   (a duplicate matcher is kept once), so no policy can drop another's `deny`.
/// - Inbound (`from[]`): one rule per distinct source `targetRef`, holding every entry
///   whose source covers it (`Mesh` covers all; `MeshSubset` tags cover any set with
///   those tags), most specific source first (more tags first; `SpiffeId` ranks with
///   `MeshService`). A caller gets the first rule that matches it.
/// - Outbound (`to[]`): `Mesh` and `MeshService <destination>` entries give the
///   destination's configuration (a `MeshService` named by `name`, or by the labels
///   `kuma.io/display-name`/`causeway.io/service`; with a `sectionName`, only when every
///   endpoint of the destination is on that port, and with a `namespace`, in that
///   namespace); `MeshHTTPRoute <route>` entries add to it for that
///   route. `MeshHTTPRoute` policies merge their `rules` instead: rules with equal
///   `matches` merge their `default`, and the rules of higher-priority policies come
///   first (in their own order). A MeshTCPRoute's one rule (`to[].rules[0].default`)
///   merges with the `default` form of other MeshTCPRoutes.
///
/// ```
/// use causeway_api::{Proxy, ProxyInbound, ProxyOutbound, Resource, effective};
/// use serde_json::json;
///
/// let policy = Resource::from_yaml(
///     "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s}\n",
/// )?;
/// let proxy = Proxy {
///     zone: None,
///     inbounds: vec![ProxyInbound { port: 8080, service: "web".into(), ..Default::default() }],
///     outbounds: vec![ProxyOutbound { service: "backend".into(), ..Default::default() }],
///     ..Default::default()
/// };
/// let eff = effective("MeshTimeout", &[policy], &proxy).unwrap();
/// assert_eq!(eff.outbounds[0].conf.as_ref().unwrap().conf, json!({"connectionTimeout": "2s"}));
/// # Ok::<(), causeway_api::ParseError>(())
/// ```
pub fn effective(
    kind: &str,
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<EffectiveConfig, NotAPolicyKind> {
    let info = type_info(kind)
        .filter(|t| t.is_policy())
        .ok_or_else(|| NotAPolicyKind {
            kind: kind.to_owned(),
        })?;
    let mut out = EffectiveConfig::default();

    // Decode, drop what does not apply to this zone, and sort by priority.
    let mut decoded = Vec::new();
    for r in policies {
        if r.kind != info.kind {
            out.ignored.push(IgnoredPolicy {
                name: r.name.clone(),
                reason: format!("is a {}, not a {}", r.kind, info.kind),
            });
            continue;
        }
        let spec = match (info.canonical_spec)(&r.spec) {
            Ok(spec) => spec,
            Err(errors) => {
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                out.ignored.push(IgnoredPolicy {
                    name: r.name.clone(),
                    reason: reasons.join("; "),
                });
                continue;
            }
        };
        let zone_origin = match r.origin.as_deref() {
            None | Some("global") => false,
            Some(zone) if proxy.zone.as_deref() == Some(zone) => true,
            Some(_) => continue, // another zone's local policy
        };
        let target_ref = spec
            .get("targetRef")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        decoded.push(Policy {
            name: &r.name,
            target_ref,
            zone_origin,
            spec,
        });
    }
    decoded.sort_by(|a, b| {
        let key = |p: &Policy<'_>| (rank_top(&p.target_ref), p.zone_origin);
        key(a)
            .cmp(&key(b))
            .then_with(|| Reverse(a.name).cmp(&Reverse(b.name)))
    });
    let policies = decoded;

    let as_client: Vec<usize> = (0..policies.len())
        .filter(|&i| proxy.selects_client(&policies[i].target_ref))
        .collect();

    // Top-level `default`.
    let top: Vec<Entry<'_>> = as_client
        .iter()
        .filter_map(|&p| {
            policies[p].spec.get("default").map(|payload| Entry {
                policy: p,
                target_ref: TargetRef::mesh(),
                index: 0,
                payload,
            })
        })
        .collect();
    if !top.is_empty() {
        out.proxy = Some(merge(&policies, &top, info.kind));
    }

    // Inbounds.
    for inbound in &proxy.inbounds {
        let applicable = (0..policies.len())
            .filter(|&p| proxy.selects_inbound(&policies[p].target_ref, inbound));
        let entries = inbound_entries_of(&policies, applicable);
        let mut sources: Vec<&TargetRef> = Vec::new();
        for e in &entries {
            if !sources.contains(&&e.target_ref) {
                sources.push(&e.target_ref);
            }
        }
        sources.sort_by_key(|s| {
            (
                Reverse(s.canonical_tags().len()),
                Reverse(rank(s.kind)),
                (*s).clone(),
            )
        });
        let rules = sources
            .into_iter()
            .map(|source| {
                let covering: Vec<&Entry<'_>> = entries
                    .iter()
                    .filter(|e| e.target_ref.covers(source))
                    .collect();
                let merged = merge_refs(&policies, &covering, info.kind);
                FromRule {
                    source: source.clone(),
                    conf: merged.conf,
                    policies: merged.policies,
                }
            })
            .collect();
        out.inbounds.push(InboundConfig {
            port: inbound.port,
            rules,
        });
    }

    // Outbounds.
    let to_entries = entries_of(&policies, as_client.iter().copied(), "to");
    for outbound in &proxy.outbounds {
        let service_level: Vec<&Entry<'_>> = to_entries
            .iter()
            .filter(|e| match e.target_ref.kind {
                TargetRefKind::Mesh => true,
                TargetRefKind::MeshService => {
                    e.target_ref.service_name() == Some(&outbound.service)
                        && outbound.covered_by(&e.target_ref)
                }
                _ => false,
            })
            .collect();
        let mut routes = BTreeMap::new();
        for route in &outbound.routes {
            let route_level: Vec<&Entry<'_>> = to_entries
                .iter()
                .filter(|e| {
                    e.target_ref.kind == TargetRefKind::MeshHttpRoute
                        && e.target_ref.name.as_deref() == Some(route)
                })
                .collect();
            if !route_level.is_empty() {
                let all: Vec<&Entry<'_>> =
                    service_level.iter().chain(&route_level).copied().collect();
                routes.insert(route.clone(), merge_refs(&policies, &all, info.kind));
            }
        }
        out.outbounds.push(OutboundConfig {
            service: outbound.service.clone(),
            conf: (!service_level.is_empty())
                .then(|| merge_refs(&policies, &service_level, info.kind)),
            routes,
        });
    }
    Ok(out)
}

/// How specific a `targetRef` kind is, for `to[]`/`from[]` entries.
fn rank(kind: TargetRefKind) -> u8 {
    match kind {
        TargetRefKind::Mesh => 0,
        TargetRefKind::MeshSubset => 1,
        TargetRefKind::MeshService | TargetRefKind::SpiffeId => 2,
        TargetRefKind::MeshServiceSubset => 3,
        TargetRefKind::Dataplane => 4,
        TargetRefKind::MeshHttpRoute => 5,
        // Refused by validation; never seen here.
        TargetRefKind::MeshGateway
        | TargetRefKind::MeshExternalService
        | TargetRefKind::MeshMultiZoneService => 6,
    }
}

/// How specific a top-level `targetRef` is (Kuma's order): `Mesh` < `MeshSubset` <
/// `MeshService` < `MeshServiceSubset` < `Dataplane` by labels < `Dataplane` by name;
/// a `sectionName` makes a reference more specific than the same without it.
fn rank_top(tr: &TargetRef) -> u8 {
    let base = match tr.kind {
        TargetRefKind::Dataplane if tr.name.is_some() => 5,
        TargetRefKind::Dataplane => 4,
        kind => rank(kind).min(3),
    };
    base * 2 + u8::from(tr.section_name.is_some())
}

/// The inbound entries of the given policies: `from[]` entries, then top-level
/// `rules[]` entries as `Mesh`-source entries whose payload is the rule's `default`.
fn inbound_entries_of<'a>(
    policies: &'a [Policy<'a>],
    which: impl Iterator<Item = usize> + Clone,
) -> Vec<Entry<'a>> {
    let mut entries = entries_of(policies, which.clone(), "from");
    for p in which {
        let Some(Value::Array(rules)) = policies[p].spec.get("rules") else {
            continue;
        };
        let from_len = match policies[p].spec.get("from") {
            Some(Value::Array(items)) => items.len(),
            _ => 0,
        };
        for (i, rule) in rules.iter().enumerate() {
            let Some(default) = rule.get("default") else {
                continue;
            };
            // A rule for some callers only (MeshFaultInjection's `matches`, by SPIFFE id)
            // is an entry for each of them, as `from[]` entries by SPIFFE id would be.
            let matches: Vec<crate::target_ref::SpiffeMatch> = rule
                .get("matches")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default();
            let sources = if matches.is_empty() {
                vec![TargetRef::mesh()]
            } else {
                matches
                    .iter()
                    .map(|m| TargetRef::spiffe_match(&m.spiffe_id))
                    .collect()
            };
            for target_ref in sources {
                entries.push(Entry {
                    policy: p,
                    target_ref,
                    index: from_len + i,
                    payload: default,
                });
            }
        }
    }
    entries.sort_by_key(|e| {
        (
            e.policy,
            rank(e.target_ref.kind),
            e.target_ref.canonical_tags().len(),
            e.index,
        )
    });
    entries
}

/// Lists that add up across policies instead of replacing each other, per kind:
/// MeshTrafficPermission's SPIFFE matchers.
fn appended_lists(kind: &str) -> &'static [&'static str] {
    match kind {
        "MeshTrafficPermission" => &["allow", "deny", "allowWithShadowDeny"],
        _ => &[],
    }
}

/// Merges `patch` into `conf` as JSON merge-patch, except that the top-level lists
/// named in `append` are concatenated (without repeating an item).
fn merge_appending(conf: &mut Value, patch: &Value, append: &[&str]) {
    if append.is_empty() {
        merge_patch(conf, patch);
        return;
    }
    let mut patch = patch.clone();
    if let (Value::Object(conf_map), Value::Object(patch_map)) = (&*conf, &mut patch) {
        for key in append {
            if let (Some(Value::Array(old)), Some(Value::Array(new))) =
                (conf_map.get(*key), patch_map.get(*key))
            {
                let mut all = old.clone();
                for item in new {
                    if !all.contains(item) {
                        all.push(item.clone());
                    }
                }
                patch_map.insert((*key).to_owned(), Value::Array(all));
            }
        }
    }
    merge_patch(conf, &patch);
}

/// The entries of `section` (`to` or `from`) of the given policies, in priority order.
fn entries_of<'a>(
    policies: &'a [Policy<'a>],
    which: impl Iterator<Item = usize>,
    section: &str,
) -> Vec<Entry<'a>> {
    let mut entries = Vec::new();
    for p in which {
        let Some(Value::Array(items)) = policies[p].spec.get(section) else {
            continue;
        };
        for (index, item) in items.iter().enumerate() {
            let Some(target_ref) = item
                .get("targetRef")
                .and_then(|v| serde_json::from_value::<TargetRef>(v.clone()).ok())
            else {
                continue;
            };
            entries.push(Entry {
                policy: p,
                target_ref,
                index,
                payload: item,
            });
        }
    }
    // Policies come in priority order already; inside one, the more specific entry
    // (one port or namespace of a service is more specific than all of it), then the
    // later one, wins.
    entries.sort_by_key(|e| {
        (
            e.policy,
            rank(e.target_ref.kind),
            e.target_ref.canonical_tags().len(),
            e.target_ref.section_name.is_some(),
            e.target_ref.namespace.is_some(),
            e.index,
        )
    });
    entries
}

fn merge(policies: &[Policy<'_>], entries: &[Entry<'_>], kind: &str) -> Merged {
    let refs: Vec<&Entry<'_>> = entries.iter().collect();
    merge_refs(policies, &refs, kind)
}

/// Merges entries already in priority order (lowest first).
fn merge_refs(policies: &[Policy<'_>], entries: &[&Entry<'_>], kind: &str) -> Merged {
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let name = policies[e.policy].name;
        if names.last().map(String::as_str) != Some(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let is_rules = entries.iter().any(|e| e.payload.get("rules").is_some());
    let conf = if is_rules {
        merge_rules(entries)
    } else {
        let mut conf = Value::Object(Map::new());
        for e in entries {
            // A top-level `default` entry's payload is the default itself.
            let patch = if e.payload.get("targetRef").is_some() {
                e.payload.get("default")
            } else {
                Some(e.payload)
            };
            if let Some(patch) = patch {
                merge_appending(&mut conf, patch, appended_lists(kind));
            }
        }
        conf
    };
    Merged {
        conf,
        policies: names,
    }
}

/// Merges MeshHTTPRoute-style `rules`: equal `matches` merge their `default`; rules of
/// higher-priority entries come first.
fn merge_rules(entries: &[&Entry<'_>]) -> Value {
    // (matches, default, (priority of the last entry that set it, position there)).
    let mut rules: Vec<(Value, Value, (usize, usize))> = Vec::new();
    let empty = Value::Array(Vec::new());
    for (priority, e) in entries.iter().enumerate() {
        // An entry with a `default` instead of rules (MeshTCPRoute's older form) is one
        // rule that matches everything.
        let single;
        let items = match (e.payload.get("rules"), e.payload.get("default")) {
            (Some(Value::Array(items)), _) => items,
            (None, Some(default)) => {
                single = vec![serde_json::json!({ "default": default })];
                &single
            }
            _ => continue,
        };
        for (position, rule) in items.iter().enumerate() {
            let matches = rule.get("matches").unwrap_or(&empty).clone();
            let default = rule
                .get("default")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            match rules.iter_mut().find(|(m, _, _)| *m == matches) {
                Some((_, existing, order)) => {
                    merge_patch(existing, &default);
                    *order = (priority, position);
                }
                None => rules.push((matches, default, (priority, position))),
            }
        }
    }
    rules.sort_by_key(|(_, _, (priority, position))| (Reverse(*priority), *position));
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(matches, default, _)| {
            let mut rule = Map::new();
            if matches != empty {
                rule.insert("matches".to_owned(), matches);
            }
            rule.insert("default".to_owned(), default);
            Value::Object(rule)
        })
        .collect();
    serde_json::json!({ "rules": rules })
}

#[cfg(test)]
mod tests;
