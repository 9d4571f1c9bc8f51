//! `MeshLoadBalancingStrategy`: the balancing algorithm and locality-aware routing with
//! ordered cross-zone failover.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::percent::Percent;
use crate::spec::{Errors, Spec, at, idx};
use crate::target_ref::{Conf, PolicyItem, Sections, TO_KINDS, TargetRef, check_policy};
use crate::validation::{validate_label_key, validate_name};

/// The spec of a `MeshLoadBalancingStrategy`.
///
/// ```yaml
/// type: MeshLoadBalancingStrategy
/// mesh: default
/// name: backend-locality
/// spec:
///   to:
///     - targetRef: {kind: MeshService, name: backend}
///       default:
///         loadBalancer: {type: LeastRequest, leastRequest: {choiceCount: 2}}
///         localityAwareness:
///           localZone: {affinityTags: [{key: k8s.io/node}]}
///           crossZone:
///             failover:
///               - from: {zones: [eu-west]}
///                 to: {type: Only, zones: [eu-central]}
///               - to: {type: Any}
///             failoverThreshold: {percentage: 70}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshLoadBalancingStrategySpec {
    /// The proxies whose outgoing traffic is balanced. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Strategies by destination service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<LoadBalancingConf>>,
}

/// How to pick an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct LoadBalancingConf {
    /// Which endpoints are eligible, by zone and affinity. Built-in default: the local
    /// zone while it has healthy endpoints, then any zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_awareness: Option<LocalityAwareness>,
    /// The algorithm among eligible endpoints. Built-in default `PeakEwma` (power of
    /// two choices over peak-EWMA latency, as linkerd2-proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
}

/// Locality-aware load balancing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct LocalityAwareness {
    /// Turns locality awareness off: every endpoint in every zone is equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Preferences inside the local zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<LocalZone>,
    /// Where traffic goes when the local zone cannot take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

/// Affinity inside the local zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct LocalZone {
    /// Tags that endpoints sharing the caller's value are preferred for, in order
    /// (node, then rack). Either every entry has a weight or none has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity_tags: Vec<AffinityTag>,
}

/// One affinity tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AffinityTag {
    /// The tag key, e.g. `k8s.io/node`.
    pub key: String,
    /// The share of traffic kept at this level, relative to the others; at least 1.
    /// Without weights each level gets ten times the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Cross-zone failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct CrossZone {
    /// Ordered failover rules, for when the local zone is below the threshold: every
    /// rule whose `from` holds the caller's zone (or that has no `from`) adds the zones
    /// its `to` names after those of the rules before it (a zone already added keeps
    /// its place); a rule of type `None` ends the list. Without rules: every other
    /// zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
    /// When the share of healthy local endpoints falls below this, traffic starts to
    /// fail over. Built-in default 50%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<FailoverThreshold>,
}

/// One failover rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// The caller zones this rule is for. Absent: every zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FailoverFrom>,
    /// Where to go.
    pub to: FailoverTo,
}

/// Caller zones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverFrom {
    /// Zone names, at least one.
    pub zones: Vec<String>,
}

/// Failover destinations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverTo {
    /// `Any` (any other zone), `Only` (the listed zones, in order), `AnyExcept` (any zone
    /// but the listed ones), or `None` (no failover: fail instead).
    #[serde(rename = "type")]
    pub kind: FailoverToType,
    /// For `Only` and `AnyExcept`: zone names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
}

/// Failover destination types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FailoverToType {
    /// Any other zone.
    Any,
    /// The listed zones, in order.
    Only,
    /// Any zone except the listed ones.
    AnyExcept,
    /// Do not fail over.
    None,
}

/// The failover threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverThreshold {
    /// The share of healthy local endpoints, 0 to 100, below which traffic fails over.
    pub percentage: Percent,
}

/// A balancing algorithm, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `RoundRobin`, `LeastRequest`, `PeakEwma`, `Random`, `RingHash` or `Maglev`.
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
    /// Settings for `LeastRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    /// Settings for `PeakEwma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ewma: Option<PeakEwma>,
    /// Settings for `RingHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Settings for `Maglev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

/// Maglev settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct Maglev {
    /// The lookup table's size: a prime, at most 5000011. Built-in default 65537.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// What to hash, as for `RingHash`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policies: Vec<HashPolicy>,
}

/// Balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest active requests among `choiceCount` random ones.
    LeastRequest,
    /// The endpoint with the lowest moving average of latency times load (as
    /// linkerd2-proxy and Finagle do).
    PeakEwma,
    /// A random endpoint.
    Random,
    /// Consistent hashing of a request property, so the same key goes to the same
    /// endpoint.
    RingHash,
    /// Consistent hashing through a fixed-size lookup table (Google's Maglev): faster
    /// to look up than a large ring; a change of endpoints may move a few more keys.
    Maglev,
}

/// Least-request settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct LeastRequest {
    /// How many random endpoints to compare, 2 to 100. Built-in default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
}

/// Peak-EWMA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct PeakEwma {
    /// How fast old latencies are forgotten, from 1ms to 1m. Built-in default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_time: Option<Duration>,
}

/// Ring-hash settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct RingHash {
    /// `XXHash` or `MurmurHash2`. Built-in default `XXHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    /// The smallest ring, 1 to 8388608. Built-in default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ring_size: Option<u32>,
    /// The largest ring, at least `minRingSize`, at most 8388608. Built-in default
    /// 8388608.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ring_size: Option<u32>,
    /// What to hash, tried in order; the first that yields a value is used. Absent: a
    /// random value (no stickiness).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policies: Vec<HashPolicy>,
}

/// Hash functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HashFunction {
    /// xxHash.
    #[serde(rename = "XXHash")]
    XxHash,
    /// MurmurHash2.
    MurmurHash2,
}

/// What to hash, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashPolicy {
    /// `Header`, `Cookie`, `SourceIP` or `QueryParameter`.
    #[serde(rename = "type")]
    pub kind: HashPolicyType,
    /// Stop at this policy if it yields a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    /// For `Header`: the header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedValue>,
    /// For `Cookie`: the cookie name (and, with `ttl`, a cookie the proxy sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    /// For `QueryParameter`: the parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<NamedValue>,
}

/// Hash sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HashPolicyType {
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// The caller's IP address.
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// A query parameter.
    QueryParameter,
}

/// A name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedValue {
    /// The name.
    pub name: String,
}

/// A hashing cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashCookie {
    /// The cookie name.
    pub name: String,
    /// When set, the proxy sets the cookie (with this lifetime) if the request lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// The cookie's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn check_zones(errors: &mut Errors, path: &str, zones: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let field = idx(path, i);
        errors.0.extend(validate_name(&field, zone));
        if !seen.insert(zone) {
            errors.push(field, format!("zone {zone:?} is listed twice"));
        }
    }
}

impl Conf for LoadBalancingConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        if let Some(la) = &self.locality_awareness {
            let path = at(path, "localityAwareness");
            if let Some(lz) = &la.local_zone {
                let path = at(&at(&path, "localZone"), "affinityTags");
                for (i, tag) in lz.affinity_tags.iter().enumerate() {
                    let path = idx(&path, i);
                    errors.check(at(&path, "key"), validate_label_key(&tag.key));
                    errors.at_least(at(&path, "weight"), tag.weight, 1);
                }
                let weighted = lz
                    .affinity_tags
                    .iter()
                    .filter(|t| t.weight.is_some())
                    .count();
                if weighted != 0 && weighted != lz.affinity_tags.len() {
                    errors.push(path, "either every affinity tag has a weight or none has");
                }
            }
            if let Some(cz) = &la.cross_zone {
                let path = at(&path, "crossZone");
                for (i, f) in cz.failover.iter().enumerate() {
                    let path = idx(&at(&path, "failover"), i);
                    if let Some(from) = &f.from {
                        let field = at(&at(&path, "from"), "zones");
                        if from.zones.is_empty() {
                            errors.push(
                                &field,
                                "must list at least one zone; leave from out for every zone",
                            );
                        }
                        check_zones(errors, &field, &from.zones);
                    }
                    let field = at(&at(&path, "to"), "zones");
                    match (f.to.kind, f.to.zones.is_empty()) {
                        (FailoverToType::Only | FailoverToType::AnyExcept, true) => {
                            errors.push(&field, format!("is required for type {:?}", f.to.kind));
                        }
                        (FailoverToType::Any | FailoverToType::None, false) => {
                            errors
                                .push(&field, format!("must not be set for type {:?}", f.to.kind));
                        }
                        _ => {}
                    }
                    check_zones(errors, &field, &f.to.zones);
                }
                if let Some(t) = &cz.failover_threshold {
                    errors.percent(
                        at(&at(&path, "failoverThreshold"), "percentage"),
                        Some(t.percentage),
                        0.0,
                        100.0,
                    );
                }
            }
        }
        if let Some(lb) = &self.load_balancer {
            let path = at(path, "loadBalancer");
            let wanted = match lb.kind {
                LoadBalancerType::LeastRequest => Some("leastRequest"),
                LoadBalancerType::PeakEwma => Some("peakEwma"),
                LoadBalancerType::RingHash => Some("ringHash"),
                LoadBalancerType::Maglev => Some("maglev"),
                LoadBalancerType::RoundRobin | LoadBalancerType::Random => None,
            };
            for (field, set) in [
                ("leastRequest", lb.least_request.is_some()),
                ("peakEwma", lb.peak_ewma.is_some()),
                ("ringHash", lb.ring_hash.is_some()),
                ("maglev", lb.maglev.is_some()),
            ] {
                if set && wanted != Some(field) {
                    errors.push(
                        at(&path, field),
                        format!("must not be set for type {:?}", lb.kind),
                    );
                }
            }
            if let Some(lr) = &lb.least_request {
                errors.range(
                    at(&at(&path, "leastRequest"), "choiceCount"),
                    lr.choice_count,
                    2,
                    100,
                );
            }
            if let Some(pe) = &lb.peak_ewma {
                errors.duration(
                    at(&at(&path, "peakEwma"), "decayTime"),
                    pe.decay_time,
                    Duration::from_millis(1),
                    Duration::from_mins(1),
                );
            }
            if let Some(rh) = &lb.ring_hash {
                let path = at(&path, "ringHash");
                let max_size = 8_388_608;
                errors.range(at(&path, "minRingSize"), rh.min_ring_size, 1, max_size);
                errors.range(at(&path, "maxRingSize"), rh.max_ring_size, 1, max_size);
                if let (Some(min), Some(max)) = (rh.min_ring_size, rh.max_ring_size)
                    && max < min
                {
                    errors.push(
                        at(&path, "maxRingSize"),
                        format!("must be at least minRingSize ({min}) (got {max})"),
                    );
                }
                check_hash_policies(errors, &path, &rh.hash_policies);
            }
            if let Some(m) = &lb.maglev {
                let path = at(&path, "maglev");
                if let Some(size) = m.table_size
                    && (size > 5_000_011 || !is_prime(size))
                {
                    errors.push(
                        at(&path, "tableSize"),
                        format!(
                            "must be a prime number no larger than 5000011, like 65537 (got {size})"
                        ),
                    );
                }
                check_hash_policies(errors, &path, &m.hash_policies);
            }
        }
    }
}

/// Whether `n` is prime (trial division: table sizes are at most 5000011).
fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Checks hash policies at `path` (`...ringHash` or `...maglev`): each names exactly the
/// value its type hashes.
fn check_hash_policies(errors: &mut Errors, path: &str, policies: &[HashPolicy]) {
    for (i, hp) in policies.iter().enumerate() {
        let path = idx(&at(path, "hashPolicies"), i);
        let wanted = match hp.kind {
            HashPolicyType::Header => Some("header"),
            HashPolicyType::Cookie => Some("cookie"),
            HashPolicyType::QueryParameter => Some("queryParameter"),
            HashPolicyType::SourceIp => None,
        };
        for (field, set) in [
            ("header", hp.header.is_some()),
            ("cookie", hp.cookie.is_some()),
            ("queryParameter", hp.query_parameter.is_some()),
        ] {
            if set && wanted != Some(field) {
                errors.push(
                    at(&path, field),
                    format!("must not be set for type {:?}", hp.kind),
                );
            } else if !set && wanted == Some(field) {
                errors.push(
                    at(&path, field),
                    format!("is required for type {:?}", hp.kind),
                );
            }
        }
    }
}

impl Spec for MeshLoadBalancingStrategySpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections::to_only(&self.to, TO_KINDS),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    fn to(default: serde_json::Value) -> serde_json::Value {
        json!({"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}]})
    }

    #[test]
    fn validation_table() {
        table::<MeshLoadBalancingStrategySpec>(
            &[
                to(
                    json!({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 5000011,
                    "hashPolicies": [{"type": "Cookie", "cookie": {"name": "s", "ttl": "1h"}}]}}}),
                ),
                to(
                    json!({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 3}},
                          "localityAwareness": {"localZone": {"affinityTags": [{"key": "k8s.io/node", "weight": 9}, {"key": "k8s.io/az", "weight": 1}]},
                                                "crossZone": {"failover": [{"from": {"zones": ["eu-west"]}, "to": {"type": "Only", "zones": ["eu-central", "us-east"]}},
                                                                           {"to": {"type": "AnyExcept", "zones": ["ap-south"]}},
                                                                           {"to": {"type": "Any"}}],
                                                              "failoverThreshold": {"percentage": "70%"}}}}),
                ),
                to(
                    json!({"loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "XXHash", "minRingSize": 1024, "maxRingSize": 4096,
                          "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}, {"type": "Cookie", "cookie": {"name": "sid", "ttl": "1h"}}, {"type": "SourceIP", "terminal": true}]}}}),
                ),
                to(
                    json!({"loadBalancer": {"type": "PeakEwma", "peakEwma": {"decayTime": "10s"}}, "localityAwareness": {"disabled": true}}),
                ),
            ],
            &[
                (
                    to(
                        json!({"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Only"}}, {"to": {"type": "Any", "zones": ["a"]}}]}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.localityAwareness.crossZone.failover[0].to.zones",
                            "is required for type Only",
                        ),
                        (
                            "spec.to[0].default.localityAwareness.crossZone.failover[1].to.zones",
                            "must not be set for type Any",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"localityAwareness": {"crossZone": {"failover": [{"from": {"zones": ["EU", "b", "b"]}, "to": {"type": "None"}}],
                                                                   "failoverThreshold": {"percentage": 150}}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.localityAwareness.crossZone.failover[0].from.zones[0]",
                            "not a valid DNS label",
                        ),
                        (
                            "spec.to[0].default.localityAwareness.crossZone.failover[0].from.zones[2]",
                            "zone \"b\" is listed twice",
                        ),
                        (
                            "spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage",
                            "must be between 0% and 100% (got 150%)",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"localityAwareness": {"localZone": {"affinityTags": [{"key": "a", "weight": 2}, {"key": "b"}]}}}),
                    ),
                    &[(
                        "spec.to[0].default.localityAwareness.localZone.affinityTags",
                        "either every affinity tag has a weight or none has",
                    )],
                ),
                (
                    to(json!({"loadBalancer": {"type": "RoundRobin", "ringHash": {}}})),
                    &[(
                        "spec.to[0].default.loadBalancer.ringHash",
                        "must not be set for type RoundRobin",
                    )],
                ),
                (
                    to(
                        json!({"loadBalancer": {"type": "RingHash", "ringHash": {"minRingSize": 10, "maxRingSize": 5, "hashPolicies": [{"type": "Header"}]}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.loadBalancer.ringHash.maxRingSize",
                            "must be at least minRingSize (10) (got 5)",
                        ),
                        (
                            "spec.to[0].default.loadBalancer.ringHash.hashPolicies[0].header",
                            "is required for type Header",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 1}}}),
                    ),
                    &[(
                        "spec.to[0].default.loadBalancer.leastRequest.choiceCount",
                        "must be between 2 and 100 (got 1)",
                    )],
                ),
                (
                    to(
                        json!({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65536,
                        "hashPolicies": [{"type": "Header"}]}, "ringHash": {}}}),
                    ),
                    &[
                        (
                            "spec.to[0].default.loadBalancer.ringHash",
                            "must not be set for type Maglev",
                        ),
                        (
                            "spec.to[0].default.loadBalancer.maglev.tableSize",
                            "must be a prime number no larger than 5000011",
                        ),
                        (
                            "spec.to[0].default.loadBalancer.maglev.hashPolicies[0].header",
                            "is required for type Header",
                        ),
                    ],
                ),
            ],
        );
    }
}
