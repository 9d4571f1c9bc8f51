//! `VirtualIp`: the stable address of a mesh service under transparent proxying. The
//! global control plane allocates one per service of a mesh, in its Raft apply, from the
//! mesh's `networking.virtualIps.cidr`: the lowest free address, so every node computes
//! the same one. It is a resource like any other (read with the API and the CLI, synced
//! to every zone with the rest of the mesh's state), but users never write it.
//!
//! A service also gets one address per zone it runs in, `zone` set: calls to it stay in
//! that zone. A workload's sidecar answers `<service>.mesh` and `<service>.<zone>.mesh`
//! with them and routes every connection to one, whatever the port, to the service (in
//! that zone).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec, check_service_name};

/// The spec of a `VirtualIp`, written by the global control plane.
///
/// ```yaml
/// type: VirtualIp
/// mesh: default
/// name: backend
/// spec: {service: backend, ip: 241.0.0.1}
/// ---
/// type: VirtualIp
/// mesh: default
/// name: backend-zone-b-1c9f0b5e1e36a7d2
/// spec: {service: backend, zone: zone-b, ip: 241.0.0.2}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualIpSpec {
    /// The mesh service it stands for.
    pub service: String,
    /// The zone it pins calls to; none for the service wherever it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The address, from the mesh's `networking.virtualIps.cidr`.
    pub ip: Ipv4Addr,
}

impl Spec for VirtualIpSpec {
    fn check(&self, errors: &mut Errors) {
        errors.check("spec.service", check_service_name(&self.service));
        if let Some(zone) = &self.zone {
            errors
                .0
                .extend(crate::validation::validate_name("spec.zone", zone));
        }
    }
}

/// The default range of virtual IPs, as Kuma's: outside any address a workload uses
/// (240.0.0.0/4 is reserved), so a virtual IP never hides a real destination.
pub const DEFAULT_VIP_CIDR: &str = "241.0.0.0/16";

/// An IPv4 range, `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    base: u32,
    prefix: u8,
}

impl std::str::FromStr for Ipv4Range {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Range, String> {
        let bad = || format!("{s:?} is not an IPv4 range like 241.0.0.0/16");
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "{s:?} has a /{prefix} prefix; use /8 to /30, so the range holds at least two addresses and stays out of the whole address space"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(ip);
        if base & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set; the range starts at {}/{prefix}",
                Ipv4Addr::from(base & mask)
            ));
        }
        Ok(Ipv4Range { base, prefix })
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Ipv4Range {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }

    /// The lowest address of the range not in `used`, leaving out the range's first
    /// (network) and last (broadcast) addresses, which some resolvers and stacks treat
    /// specially; `None` when every one is taken.
    pub fn lowest_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let last = self.base | (u32::MAX >> self.prefix);
        // `used` is sorted: walk it alongside the candidates, so a full /16 costs one
        // pass over what is taken, not a lookup per address.
        let mut next = self.base + 1;
        for ip in used.range(Ipv4Addr::from(next)..Ipv4Addr::from(last)) {
            let ip = u32::from(*ip);
            if ip > next {
                break;
            }
            next = ip + 1;
        }
        (next < last).then(|| Ipv4Addr::from(next))
    }
}

/// The name of the `VirtualIp` of `service` (in `zone`): the service itself when it is a
/// valid resource name (a DNS label) and no zone is pinned, else a lowercase form with a
/// hash, so two never share a name.
pub fn virtual_ip_name(service: &str, zone: Option<&str>) -> String {
    let service = &match zone {
        Some(zone) => format!("{service}.{zone}"),
        None => service.to_string(),
    };
    if crate::validation::validate_name("", service).is_none() {
        return service.to_string();
    }
    let stem = crate::validation::dns_label_stem(service, 40);
    // FNV-1a: stable across versions and platforms, which a name must be.
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    if stem.is_empty() {
        format!("svc-{hash:016x}")
    } else {
        format!("{stem}-{hash:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Ipv4Range {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_parse_or_say_why_not() {
        assert_eq!(range("241.0.0.0/16").to_string(), "241.0.0.0/16");
        for (bad, says) in [
            ("241.0.0.0", "not an IPv4 range"),
            ("241.0.0/16", "not an IPv4 range"),
            ("241.0.0.0/31", "/8 to /30"),
            ("10.0.0.0/4", "/8 to /30"),
            (
                "241.0.0.1/16",
                "host bits set; the range starts at 241.0.0.0/16",
            ),
            ("fd00::/64", "not an IPv4 range"),
        ] {
            let e = bad.parse::<Ipv4Range>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(range("241.0.0.0/16").contains("241.0.255.7".parse().unwrap()));
        assert!(!range("241.0.0.0/16").contains("241.1.0.0".parse().unwrap()));
    }

    /// The lowest free address: gaps are filled first, the network and broadcast
    /// addresses are never handed out, and a full range says so.
    #[test]
    fn allocation_takes_the_lowest_free_address() {
        let r = range("241.0.0.0/29");
        assert_eq!(r.lowest_free(&ips(&[])), Some("241.0.0.1".parse().unwrap()));
        assert_eq!(
            r.lowest_free(&ips(&["241.0.0.1", "241.0.0.2", "241.0.0.4"])),
            Some("241.0.0.3".parse().unwrap())
        );
        // Addresses outside the range (from an earlier range) do not count.
        assert_eq!(
            r.lowest_free(&ips(&["10.0.0.1", "241.0.0.1", "250.0.0.0"])),
            Some("241.0.0.2".parse().unwrap())
        );
        let full = ips(&[
            "241.0.0.1",
            "241.0.0.2",
            "241.0.0.3",
            "241.0.0.4",
            "241.0.0.5",
            "241.0.0.6",
        ]);
        assert_eq!(r.lowest_free(&full), None);
    }

    #[test]
    fn names_are_the_service_or_a_stable_label() {
        let valid = |name: &str| crate::validation::validate_name("", name).is_none();
        assert_eq!(virtual_ip_name("backend", None), "backend");
        let odd = virtual_ip_name("Backend_V2.api", None);
        assert!(odd.starts_with("backend-v2-api-"), "{odd}");
        assert_eq!(odd, virtual_ip_name("Backend_V2.api", None));
        assert_ne!(odd, virtual_ip_name("backend-v2-api", None));
        assert!(valid(&odd), "{odd}");
        let pinned = virtual_ip_name("backend", Some("zone-b"));
        assert!(pinned.starts_with("backend-zone-b-"), "{pinned}");
        assert_ne!(pinned, virtual_ip_name("backend-zone-b", None));
        assert!(valid(&pinned), "{pinned}");
        let long = virtual_ip_name(&"A".repeat(200), None);
        assert!(valid(&long), "{long}");
    }
}
