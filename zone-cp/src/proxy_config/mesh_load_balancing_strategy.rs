//! The MeshLoadBalancingStrategy configurer: each outbound's merged `to[]`
//! configuration, decoded once into [`LoadBalancingConf`], gives the balancer, the share
//! of a zone that must be healthy before traffic fails over, and the order in which
//! other zones take it.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`],
//! never replaced by the defaults.

use std::collections::{BTreeMap, BTreeSet};

use causeway_api::proxy_config::{Endpoint, EndpointGroup};
use causeway_api::{FailoverToType, LoadBalancerType, LoadBalancingConf, Proxy, Resource};

use super::{ComputeError, outbound_confs};

/// Percent of a zone's endpoints that must be healthy for it to keep all traffic, when
/// no policy says otherwise.
const DEFAULT_FAILOVER_THRESHOLD: f64 = 50.0;

/// How one outbound balances, from its effective MeshLoadBalancingStrategy.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Balancing {
    conf: LoadBalancingConf,
    /// The caller's tags and labels, which `localZone.affinityTags` compare endpoints
    /// with.
    caller: BTreeMap<String, String>,
}

/// The balancing of each of `proxy`'s outbounds, in its order.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Vec<Balancing>, ComputeError> {
    // The caller's values: its first inbound's tags, then its Dataplane's labels.
    let mut caller: BTreeMap<String, String> = proxy
        .inbounds
        .first()
        .map(|ib| ib.tags.clone())
        .unwrap_or_default();
    for (k, v) in &proxy.labels {
        caller.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(
        outbound_confs::<LoadBalancingConf>("MeshLoadBalancingStrategy", policies, proxy)?
            .into_iter()
            .map(|conf| Balancing {
                conf: conf.unwrap_or_default(),
                caller: caller.clone(),
            })
            .collect(),
    )
}

impl Balancing {
    /// The balancer; peak-EWMA by default.
    pub(crate) fn load_balancer(&self) -> LoadBalancerType {
        self.conf
            .load_balancer
            .as_ref()
            .map_or(LoadBalancerType::PeakEwma, |lb| lb.kind)
    }

    /// `leastRequest.choiceCount`; 2 by default.
    pub(crate) fn choice_count(&self) -> u32 {
        self.conf
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.least_request.as_ref())
            .and_then(|l| l.choice_count)
            .unwrap_or(2)
    }

    /// `peakEwma.decayTime`; 10s by default.
    pub(crate) fn ewma_decay(&self) -> causeway_api::Duration {
        self.conf
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.peak_ewma.as_ref())
            .and_then(|p| p.decay_time)
            .unwrap_or(causeway_api::Duration::from_secs(10))
    }

    /// The ring's settings, when the balancer is `RingHash`.
    pub(crate) fn ring_hash(&self) -> Option<causeway_api::proxy_config::RingHashConfig> {
        let lb = self.conf.load_balancer.as_ref()?;
        if lb.kind != LoadBalancerType::RingHash {
            return None;
        }
        let rh = lb.ring_hash.clone().unwrap_or_default();
        let min = rh.min_ring_size.unwrap_or(1024);
        Some(causeway_api::proxy_config::RingHashConfig {
            hash_function: rh
                .hash_function
                .unwrap_or(causeway_api::HashFunction::XxHash),
            min_ring_size: min,
            max_ring_size: rh.max_ring_size.unwrap_or(8_388_608).max(min),
            hash_policies: rh.hash_policies,
        })
    }

    /// The table's settings, when the balancer is `Maglev`.
    pub(crate) fn maglev(&self) -> Option<causeway_api::proxy_config::MaglevConfig> {
        let lb = self.conf.load_balancer.as_ref()?;
        if lb.kind != LoadBalancerType::Maglev {
            return None;
        }
        let m = lb.maglev.clone().unwrap_or_default();
        Some(causeway_api::proxy_config::MaglevConfig {
            table_size: m.table_size.unwrap_or(65537),
            hash_policies: m.hash_policies,
        })
    }

    /// `crossZone.failoverThreshold` in percent; 50 by default.
    pub(crate) fn failover_threshold(&self) -> f64 {
        self.conf
            .locality_awareness
            .as_ref()
            .and_then(|l| l.cross_zone.as_ref())
            .and_then(|c| c.failover_threshold.as_ref())
            .map_or(DEFAULT_FAILOVER_THRESHOLD, |t| {
                t.percentage.fraction() * 100.0
            })
    }

    /// Puts each local endpoint in its affinity class (`localZone.affinityTags`): the
    /// first tag whose value it shares with the caller, else the last class. A tag the
    /// caller lacks makes no class. Without weights, each class gets ten times the next
    /// (90 and 9 for two tags), and the endpoints that share nothing 1.
    fn set_affinity(&self, local: &mut [Endpoint]) {
        let tags = self
            .conf
            .locality_awareness
            .as_ref()
            .and_then(|l| l.local_zone.as_ref())
            .map(|z| z.affinity_tags.as_slice())
            .unwrap_or_default();
        let classes: Vec<(&str, &str, u32)> = tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let value = self.caller.get(&t.key)?;
                let weight = t
                    .weight
                    .unwrap_or_else(|| 9 * 10u32.saturating_pow((tags.len() - 1 - i) as u32));
                Some((t.key.as_str(), value.as_str(), weight))
            })
            .collect();
        if classes.is_empty() {
            return;
        }
        for e in local.iter_mut() {
            let class = classes
                .iter()
                .position(|(k, v, _)| e.tags.get(*k).map(String::as_str) == Some(*v));
            e.affinity = Some(match class {
                Some(i) => causeway_api::proxy_config::Affinity {
                    class: i as u32,
                    weight: classes[i].2,
                },
                None => causeway_api::proxy_config::Affinity {
                    class: classes.len() as u32,
                    weight: 1,
                },
            });
        }
    }

    /// The endpoint groups: this zone's (`local`) first, then other zones' (`remote`,
    /// by zone) in the failover order; or one group of everything when locality
    /// awareness is disabled.
    pub(crate) fn groups(
        &self,
        zone: &str,
        local: Vec<Endpoint>,
        mut remote: BTreeMap<String, Vec<Endpoint>>,
    ) -> Vec<EndpointGroup> {
        let mut local = local;
        self.set_affinity(&mut local);
        let locality = self.conf.locality_awareness.as_ref();
        if locality.and_then(|l| l.disabled) == Some(true) {
            let mut all = local;
            all.extend(remote.into_values().flatten());
            return vec![EndpointGroup {
                zone: "*".into(),
                endpoints: all,
            }];
        }
        let mut groups = Vec::new();
        if !local.is_empty() {
            groups.push(EndpointGroup {
                zone: zone.to_string(),
                endpoints: local,
            });
        }
        let failover = locality
            .and_then(|l| l.cross_zone.as_ref())
            .map(|c| c.failover.as_slice())
            .unwrap_or_default();
        let mut order: Vec<String> = Vec::new();
        if failover.is_empty() {
            order.extend(remote.keys().cloned());
        }
        for f in failover {
            if let Some(from) = &f.from
                && !from.zones.iter().any(|z| z == zone)
            {
                continue;
            }
            match f.to.kind {
                FailoverToType::None => break,
                FailoverToType::Only => order.extend(f.to.zones.iter().cloned()),
                FailoverToType::Any => order.extend(remote.keys().cloned()),
                FailoverToType::AnyExcept => {
                    order.extend(remote.keys().filter(|z| !f.to.zones.contains(z)).cloned())
                }
            }
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for zone in order {
            if !seen.insert(zone.clone()) {
                continue;
            }
            if let Some(endpoints) = remote.remove(&zone) {
                groups.push(EndpointGroup { zone, endpoints });
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: &str, az: &str) -> Endpoint {
        Endpoint {
            address: format!("{node}-{az}"),
            port: 80,
            weight: 1,
            sni: None,
            quic: false,
            tags: [
                ("node".to_string(), node.to_string()),
                ("az".to_string(), az.to_string()),
            ]
            .into(),
            affinity: None,
        }
    }

    fn balancing(affinity: serde_json::Value, caller: &[(&str, &str)]) -> Balancing {
        Balancing {
            conf: serde_json::from_value(
                serde_json::json!({"localityAwareness": {"localZone": {"affinityTags": affinity}}}),
            )
            .unwrap(),
            caller: caller
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn classes(b: &Balancing) -> Vec<(String, u32, u32)> {
        let local = vec![
            endpoint("n1", "a"),
            endpoint("n2", "a"),
            endpoint("n3", "b"),
        ];
        b.groups("zone-a", local, BTreeMap::new())[0]
            .endpoints
            .iter()
            .map(|e| {
                let a = e.affinity.expect("a class");
                (e.address.clone(), a.class, a.weight)
            })
            .collect()
    }

    /// Without weights each class gets ten times the next, and the rest 1; an endpoint
    /// joins the first class whose value it shares with the caller.
    #[test]
    fn local_endpoints_join_the_first_affinity_class_they_share_with_the_caller() {
        let b = balancing(
            serde_json::json!([{"key": "node"}, {"key": "az"}]),
            &[("node", "n1"), ("az", "a")],
        );
        assert_eq!(
            classes(&b),
            [
                ("n1-a".into(), 0, 90),
                ("n2-a".into(), 1, 9),
                ("n3-b".into(), 2, 1)
            ]
        );
        // Weights as given; a tag the caller lacks makes no class.
        let b = balancing(
            serde_json::json!([{"key": "rack", "weight": 50}, {"key": "az", "weight": 30}]),
            &[("az", "b")],
        );
        assert_eq!(
            classes(&b),
            [
                ("n1-a".into(), 1, 1),
                ("n2-a".into(), 1, 1),
                ("n3-b".into(), 0, 30)
            ]
        );
        // No affinity tags: no classes.
        let b = balancing(serde_json::json!([]), &[("az", "b")]);
        let local = vec![endpoint("n1", "a")];
        assert!(
            b.groups("zone-a", local, BTreeMap::new())[0].endpoints[0]
                .affinity
                .is_none()
        );
    }
}
