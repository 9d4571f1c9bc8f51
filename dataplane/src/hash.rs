//! MeshLoadBalancingStrategy `RingHash` and `Maglev`: consistent hashing, so requests
//! with the same key go to the same endpoint, and an endpoint coming or going moves
//! only the keys that were (or will be) its own: about 1/(N+1) of them when one joins
//! N (a few more with Maglev, whose table trades that for faster lookups).
//!
//! - [`Ring`]: each endpoint takes points on a 64-bit ring in proportion to its weight
//!   (`minRingSize` points in all at least, `maxRingSize` at most; see [`Ring::new`]
//!   for why the count per endpoint is a power of two), placed by hashing
//!   the endpoint's address (XXHash or MurmurHash2, as configured), so every sidecar
//!   builds the same ring. A key goes to the endpoint of the first point at or after
//!   it, walking on past endpoints that may not take it (ejected, unhealthy, in another
//!   zone's group while this one is healthy, tried already).
//! - [`request_key`]: a request's key from the hash policies, as Envoy combines them:
//!   each that finds its value mixes it in; one marked `terminal` ends the search when
//!   it found one. Nothing found: no key (a random endpoint). A `Cookie` policy with a
//!   `ttl` whose cookie is absent makes one up, keys the request by it and says what to
//!   set on the answer, so the caller sticks from its next request on.
//!
//! Pure: no I/O, no clock.

use std::net::IpAddr;

use causeway_api::proxy_config::RingHashConfig;
use causeway_api::{HashFunction, HashPolicy, HashPolicyType};

/// The hash of `bytes` with `function`.
pub(crate) fn hash(function: HashFunction, bytes: &[u8]) -> u64 {
    match function {
        HashFunction::XxHash => xxhash_rust::xxh64::xxh64(bytes, 0),
        HashFunction::MurmurHash2 => murmur2::murmur64a(bytes, 0),
    }
}

/// Endpoints on a hash ring; each point holds the index of its endpoint.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring of `endpoints` (their identity, such as `address:port`, and weight), in
    /// `cfg`'s size and hash function.
    pub(crate) fn new<'a>(
        cfg: &RingHashConfig,
        endpoints: impl Iterator<Item = (&'a str, u32)>,
    ) -> Ring {
        let endpoints: Vec<(&str, u32)> = endpoints.into_iter().collect();
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        if total == 0 {
            return Ring::default();
        }
        // Points per unit of weight: enough for minRingSize points in all, rounded up
        // to a power of two, so that most changes of the endpoints (4 to 5, say) keep
        // every other endpoint's points and move only the keys the change must move;
        // only a change across a power of two (7 to 8) re-spreads its share. At most
        // maxRingSize points in all (and at least one per endpoint).
        let min = u64::from(cfg.min_ring_size.max(1));
        let max = u64::from(cfg.max_ring_size.max(1));
        let mut per_weight = min.div_ceil(total).next_power_of_two();
        if per_weight * total > max {
            per_weight = (max / total).max(1);
        }
        let mut points = Vec::with_capacity((per_weight * total) as usize);
        for (i, (id, weight)) in endpoints.iter().enumerate() {
            let share = per_weight * u64::from((*weight).max(1));
            for n in 0..share {
                points.push((hash(cfg.hash_function, format!("{id}_{n}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint for `key`: the first point at or after it whose endpoint `takes`
    /// accepts. `None` when no endpoint does.
    pub(crate) fn pick(&self, key: u64, takes: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < key);
        let n = self.points.len();
        let mut refused = Vec::new();
        for step in 0..n {
            let (_, i) = self.points[(start + step) % n];
            if refused.contains(&i) {
                continue;
            }
            if takes(i) {
                return Some(i);
            }
            refused.push(i);
        }
        None
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint fills the table's
/// slots in the order of its own permutation (from two hashes of its identity), taking
/// turns by weight, so every slot has an owner and each endpoint about its share. A
/// key's slot is `key mod size`; a slot whose endpoint may not take the request passes
/// it to the next slots.
#[derive(Debug, Default)]
pub(crate) struct Maglev {
    /// Each slot's endpoint.
    table: Vec<u32>,
}

impl Maglev {
    /// A table of `size` slots (a prime) for `endpoints` (identity and weight).
    pub(crate) fn new<'a>(size: u32, endpoints: impl Iterator<Item = (&'a str, u32)>) -> Maglev {
        let endpoints: Vec<(&str, u32)> = endpoints.into_iter().collect();
        let m = u64::from(size.max(1));
        if endpoints.is_empty() {
            return Maglev::default();
        }
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|(id, _)| {
                let offset = hash(HashFunction::XxHash, id.as_bytes()) % m;
                let skip = if m > 1 {
                    hash(HashFunction::MurmurHash2, id.as_bytes()) % (m - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        let max_weight = endpoints
            .iter()
            .map(|(_, w)| (*w).max(1))
            .max()
            .unwrap_or(1);
        let mut next = vec![0u64; endpoints.len()];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        // Weighted: in round r an endpoint of weight w takes a slot when
        // r * w / max_weight crosses a whole number (Envoy's scheme).
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for (i, (_, weight)) in endpoints.iter().enumerate() {
                let w = u64::from((*weight).max(1));
                if (round * w) / u64::from(max_weight) == ((round - 1) * w) / u64::from(max_weight)
                {
                    continue;
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + skip * next[i]) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Maglev { table }
    }

    /// The endpoint for `key`: its slot's, or the next slots' when `takes` refuses.
    pub(crate) fn pick(&self, key: u64, takes: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let start = (key % n as u64) as usize;
        let mut refused: Vec<u32> = Vec::new();
        for step in 0..n {
            let i = self.table[(start + step) % n];
            if refused.contains(&i) {
                continue;
            }
            if takes(i as usize) {
                return Some(i as usize);
            }
            refused.push(i);
        }
        None
    }
}

/// A request's key, and a cookie to set on its answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestKey {
    pub(crate) key: Option<u64>,
    /// `Set-Cookie` for the answer: a `Cookie` policy with a `ttl` made the cookie up.
    pub(crate) set_cookie: Option<String>,
}

/// What a request offers to key it by.
pub(crate) struct Request<'a> {
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) query: Option<&'a str>,
    /// The caller's address (the application's, for an outbound).
    pub(crate) source: Option<IpAddr>,
}

/// How a balancer hashes requests: its hash function and policies.
pub(crate) struct Keying<'a> {
    pub(crate) function: HashFunction,
    pub(crate) policies: &'a [HashPolicy],
}

impl<'a> From<&'a RingHashConfig> for Keying<'a> {
    fn from(c: &'a RingHashConfig) -> Keying<'a> {
        Keying {
            function: c.hash_function,
            policies: &c.hash_policies,
        }
    }
}

impl<'a> From<&'a causeway_api::proxy_config::MaglevConfig> for Keying<'a> {
    fn from(c: &'a causeway_api::proxy_config::MaglevConfig) -> Keying<'a> {
        Keying {
            function: HashFunction::XxHash,
            policies: &c.hash_policies,
        }
    }
}

/// A request's key from the hash policies of `cfg` (see the module docs). `fresh`
/// makes up a cookie value when a policy needs one.
pub(crate) fn request_key<'a>(
    cfg: impl Into<Keying<'a>>,
    req: &Request<'_>,
    fresh: impl FnOnce() -> String,
) -> RequestKey {
    let cfg: Keying<'a> = cfg.into();
    let mut out = RequestKey::default();
    let mut fresh = Some(fresh);
    for policy in cfg.policies {
        let value = match value_of(policy, req) {
            Some(v) => Some(v),
            None => match (&policy.cookie, policy.kind) {
                (Some(c), HashPolicyType::Cookie)
                    if c.ttl.is_some() && out.set_cookie.is_none() =>
                {
                    let value = fresh.take().map(|f| f()).unwrap_or_default();
                    out.set_cookie = Some(set_cookie(c, &value));
                    Some(value)
                }
                _ => None,
            },
        };
        let Some(value) = value else {
            continue;
        };
        let h = hash(cfg.function, value.as_bytes());
        // Envoy's mix: the key so far rotated by one bit, XOR the new hash.
        out.key = Some(out.key.map_or(h, |k| k.rotate_left(1) ^ h));
        if policy.terminal == Some(true) {
            break;
        }
    }
    out
}

fn value_of(policy: &HashPolicy, req: &Request<'_>) -> Option<String> {
    match policy.kind {
        HashPolicyType::Header => {
            let name = &policy.header.as_ref()?.name;
            let values: Vec<&str> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
        HashPolicyType::Cookie => {
            let name = &policy.cookie.as_ref()?.name;
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.to_owned())
                })
        }
        HashPolicyType::QueryParameter => {
            let name = &policy.query_parameter.as_ref()?.name;
            form_urlencoded::parse(req.query?.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        }
        HashPolicyType::SourceIp => req.source.map(|ip| ip.to_string()),
    }
}

fn set_cookie(c: &causeway_api::HashCookie, value: &str) -> String {
    let mut s = format!("{}={value}", c.name);
    if let Some(ttl) = c.ttl {
        s.push_str(&format!("; Max-Age={}", ttl.as_std().as_secs()));
    }
    if let Some(path) = &c.path {
        s.push_str(&format!("; Path={path}"));
    }
    s.push_str("; HttpOnly");
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(function: HashFunction, policies: serde_json::Value) -> RingHashConfig {
        serde_json::from_value(json!({"hashFunction": function, "minRingSize": 1024,
            "maxRingSize": 8388608, "hashPolicies": policies}))
        .unwrap()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn maglev(ids: &[String]) -> Maglev {
        Maglev::new(65537, ids.iter().map(|i| (i.as_str(), 1)))
    }

    /// Maglev: every key has an endpoint, shares are even, a key sticks, and one more
    /// endpoint takes about its share while moving few keys between the others.
    #[test]
    fn a_maglev_table_spreads_keys_evenly_and_moves_few_when_one_joins() {
        let (t4, t5) = (maglev(&ids(4)), maglev(&ids(5)));
        let mut counts = [0usize; 4];
        let (mut moved, mut between_old) = (0, 0);
        let keys = 20_000u64;
        for k in 0..keys {
            let key = hash(HashFunction::XxHash, &k.to_le_bytes());
            let a = t4.pick(key, |_| true).unwrap();
            assert_eq!(t4.pick(key, |_| true), Some(a));
            counts[a] += 1;
            let b = t5.pick(key, |_| true).unwrap();
            if a != b {
                moved += 1;
                if b != 4 {
                    between_old += 1;
                }
            }
        }
        for c in counts {
            assert!((4500..=5500).contains(&c), "{counts:?}");
        }
        let share = moved as f64 / keys as f64;
        assert!((0.15..=0.30).contains(&share), "{share} moved");
        assert!(
            between_old * 10 < moved,
            "{between_old} of {moved} moved between old endpoints"
        );
        // Weights: 3 to 1.
        let ids = ids(2);
        let weighted = Maglev::new(
            65537,
            [(ids[0].as_str(), 3), (ids[1].as_str(), 1)].into_iter(),
        );
        let heavy = (0..10_000u64)
            .filter(|k| {
                weighted.pick(hash(HashFunction::XxHash, &k.to_le_bytes()), |_| true) == Some(0)
            })
            .count();
        assert!((7000..=8000).contains(&heavy), "{heavy}");
        assert_eq!(t4.pick(7, |_| false), None);
    }

    fn ring(cfg: &RingHashConfig, ids: &[String]) -> Ring {
        Ring::new(cfg, ids.iter().map(|i| (i.as_str(), 1)))
    }

    #[test]
    fn a_key_sticks_to_its_endpoint_and_keys_spread_over_all() {
        for function in [HashFunction::XxHash, HashFunction::MurmurHash2] {
            let c = cfg(function, json!([]));
            let r = ring(&c, &ids(4));
            let mut counts = [0usize; 4];
            for k in 0..10_000u64 {
                let key = hash(function, &k.to_le_bytes());
                let e = r.pick(key, |_| true).unwrap();
                assert_eq!(
                    r.pick(key, |_| true),
                    Some(e),
                    "the same key, the same endpoint"
                );
                counts[e] += 1;
            }
            // Each of 4 endpoints takes about a quarter (within 5 points).
            for c in counts {
                assert!((2000..=3000).contains(&c), "{function:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn one_endpoint_more_moves_about_one_key_in_n_plus_one() {
        let c = cfg(HashFunction::XxHash, json!([]));
        let (before, after) = (ids(4), ids(5));
        let (r4, r5) = (ring(&c, &before), ring(&c, &after));
        let keys = 20_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let key = hash(HashFunction::XxHash, &k.to_le_bytes());
            let (a, b) = (
                r4.pick(key, |_| true).unwrap(),
                r5.pick(key, |_| true).unwrap(),
            );
            if a != b {
                // A moved key moves to the new endpoint, never between old ones.
                assert_eq!(b, 4);
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!(
            (0.15..=0.25).contains(&share),
            "{share} moved, want about 1/5"
        );
    }

    #[test]
    fn an_endpoint_that_cannot_take_a_key_passes_it_on_and_weights_count() {
        let c = cfg(HashFunction::XxHash, json!([]));
        let r = ring(&c, &ids(3));
        for k in 0..1000u64 {
            let key = hash(HashFunction::XxHash, &k.to_le_bytes());
            let first = r.pick(key, |_| true).unwrap();
            let next = r.pick(key, |i| i != first).unwrap();
            assert_ne!(next, first);
        }
        assert_eq!(r.pick(1, |_| false), None);
        // Weight 3 to 1: about three quarters of the keys.
        let ids = ids(2);
        let weighted = Ring::new(&c, [(ids[0].as_str(), 3), (ids[1].as_str(), 1)].into_iter());
        let heavy = (0..10_000u64)
            .filter(|k| {
                weighted.pick(hash(HashFunction::XxHash, &k.to_le_bytes()), |_| true) == Some(0)
            })
            .count();
        assert!((7000..=8000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn policies_key_by_header_cookie_query_and_source_in_order() {
        let c = cfg(
            HashFunction::XxHash,
            json!([{"type": "Header", "header": {"name": "x-user"}, "terminal": true},
                   {"type": "Cookie", "cookie": {"name": "session"}},
                   {"type": "QueryParameter", "queryParameter": {"name": "cart"}},
                   {"type": "SourceIP"}]),
        );
        fn keyed(
            c: &RingHashConfig,
            headers: &[(&'static str, &str)],
            query: Option<&str>,
            source: Option<&str>,
        ) -> Option<u64> {
            let mut h = http::HeaderMap::new();
            for (k, v) in headers {
                h.append(*k, v.parse().unwrap());
            }
            let req = Request {
                headers: &h,
                query,
                source: source.map(|s| s.parse().unwrap()),
            };
            request_key(c, &req, || unreachable!("no cookie to make up")).key
        }
        let key =
            |headers: &[(&'static str, &str)], query, source| keyed(&c, headers, query, source);
        let alice = key(&[("x-user", "alice")], Some("cart=1"), Some("10.0.0.9"));
        assert!(alice.is_some());
        // Terminal: the header alone keys it; what follows does not count.
        assert_eq!(alice, key(&[("x-user", "alice")], None, None));
        assert_ne!(alice, key(&[("x-user", "bob")], None, None));
        // Without the header: cookie, query and source mix.
        let mixed = key(
            &[("cookie", "a=1; session=s1")],
            Some("cart=7"),
            Some("10.0.0.9"),
        );
        assert_ne!(
            mixed,
            key(
                &[("cookie", "session=s1")],
                Some("cart=8"),
                Some("10.0.0.9")
            )
        );
        assert_eq!(
            mixed,
            key(
                &[("cookie", "session=s1; b=2")],
                Some("x=1&cart=7"),
                Some("10.0.0.9")
            )
        );
        assert_eq!(key(&[], None, None), None, "nothing to key by");
    }

    #[test]
    fn a_cookie_with_a_ttl_is_made_up_when_absent_and_keys_the_request() {
        let c = cfg(
            HashFunction::XxHash,
            json!([{"type": "Cookie", "cookie": {"name": "sticky", "ttl": "1h", "path": "/"}}]),
        );
        let h = http::HeaderMap::new();
        let req = Request {
            headers: &h,
            query: None,
            source: None,
        };
        let made = request_key(&c, &req, || "abc".into());
        assert_eq!(
            made.set_cookie.as_deref(),
            Some("sticky=abc; Max-Age=3600; Path=/; HttpOnly")
        );
        // The next request carries it: the same key, nothing to set.
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "sticky=abc".parse().unwrap());
        let req = Request {
            headers: &h,
            query: None,
            source: None,
        };
        let again = request_key(&c, &req, || unreachable!());
        assert_eq!((again.key, again.set_cookie), (made.key, None));
    }
}
