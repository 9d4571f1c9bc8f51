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
}

/// The balancing of each of `proxy`'s outbounds, in its order.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Vec<Balancing>, ComputeError> {
    Ok(
        outbound_confs::<LoadBalancingConf>("MeshLoadBalancingStrategy", policies, proxy)?
            .into_iter()
            .map(|conf| Balancing {
                conf: conf.unwrap_or_default(),
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

    /// The endpoint groups: this zone's (`local`) first, then other zones' (`remote`,
    /// by zone) in the failover order; or one group of everything when locality
    /// awareness is disabled.
    pub(crate) fn groups(
        &self,
        zone: &str,
        local: Vec<Endpoint>,
        mut remote: BTreeMap<String, Vec<Endpoint>>,
    ) -> Vec<EndpointGroup> {
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
