//! Virtual IP allocation, in the state machine: when a Dataplane names a service that has
//! no `VirtualIp` in its mesh yet (reported by a zone, or when the Mesh is written), the
//! apply gives it the lowest free address of the mesh's `networking.virtualIps.cidr`,
//! and one more for the service in the Dataplane's zone (`<service>.<zone>.mesh`).
//! Every node applies the same entries to the same state, so every node allocates the
//! same address, and an address never changes once given: it is freed only with its
//! mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use causeway_api::{DataplaneSpec, MeshSpec, Resource, ResourceKey, VirtualIpSpec};

use super::{ApplyBatch, StoreError, resource_key_bytes};

const KIND: &str = "VirtualIp";

/// A service, and the zone a virtual IP pins it to (none: wherever it runs).
pub(super) type Pinned = (String, Option<String>);

/// What a Dataplane of `zone` (none: written at global) needs virtual IPs for: each
/// service it serves, and each in its zone; nothing when it does not decode (the zone
/// validated it; a later version's field must not stop the apply).
pub(super) fn services_of(r: &Resource, zone: Option<&str>) -> Vec<Pinned> {
    let spec = (r.kind == "Dataplane")
        .then(|| serde_json::from_value::<DataplaneSpec>(r.spec.clone()).ok())
        .flatten();
    let mut out = Vec::new();
    for ib in spec.into_iter().flat_map(|s| s.inbound) {
        if let Some(zone) = zone {
            out.push((ib.service.clone(), Some(zone.to_string())));
        }
        out.push((ib.service, None));
    }
    out
}

impl ApplyBatch<'_> {
    /// The mesh's virtual IPs by service and zone, with this batch's own writes.
    fn virtual_ips(&self, mesh: &str) -> Result<BTreeMap<Pinned, Ipv4Addr>, StoreError> {
        let mut by_key: BTreeMap<Vec<u8>, Resource> = self
            .store
            .list(KIND, mesh, &[], None, usize::MAX)?
            .items
            .into_iter()
            .map(|r| (resource_key_bytes(&r.key()), r))
            .collect();
        let prefix = format!("{KIND}\0{mesh}\0").into_bytes();
        for (k, r) in &self.overlay {
            if k.starts_with(&prefix) {
                match r {
                    Some(r) => by_key.insert(k.clone(), r.clone()),
                    None => by_key.remove(k),
                };
            }
        }
        Ok(by_key
            .values()
            .filter_map(|r| serde_json::from_value::<VirtualIpSpec>(r.spec.clone()).ok())
            .map(|v| ((v.service, v.zone), v.ip))
            .collect())
    }

    /// Gives each of `services` without a virtual IP in `mesh` one, in name order (a
    /// service before its zones).
    pub(super) fn allocate_virtual_ips(
        &mut self,
        mesh: &str,
        services: BTreeSet<Pinned>,
        now: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let key = ResourceKey {
            kind: "Mesh".into(),
            mesh: String::new(),
            name: mesh.into(),
        };
        let Some(spec) = self
            .current(&key)?
            .and_then(|m| serde_json::from_value::<MeshSpec>(m.spec).ok())
        else {
            return Ok(());
        };
        let range = spec.networking.virtual_ips.range();
        let known = self.virtual_ips(mesh)?;
        let mut used: BTreeSet<Ipv4Addr> = known.values().copied().collect();
        for pinned in services {
            if known.contains_key(&pinned) {
                continue;
            }
            let (service, zone) = pinned;
            let Some(ip) = range.lowest_free(&used) else {
                tracing::warn!(%mesh, %service, ?zone, %range, "no virtual IP left in the mesh's networking.virtualIps.cidr; the service is reachable by explicit outbounds only until the range grows");
                continue;
            };
            used.insert(ip);
            let name = causeway_api::virtual_ip_name(&service, zone.as_deref());
            let spec = VirtualIpSpec { service, zone, ip };
            let r = Resource {
                kind: KIND.into(),
                mesh: Some(mesh.into()),
                name,
                labels: BTreeMap::new(),
                spec: serde_json::to_value(&spec).expect("specs serialize"),
                version: self.applied,
                creation_time: Some(now),
                modification_time: Some(now),
                origin: Some("global".into()),
            };
            let key = r.key();
            let old = self.current(&key)?;
            self.write(&key, old.as_ref(), Some(r));
        }
        Ok(())
    }

    /// Gives every service of the mesh's Dataplanes a virtual IP (a Mesh written: a new
    /// range, or a mesh from before virtual IPs).
    pub(super) fn allocate_for_mesh(
        &mut self,
        mesh: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let services: BTreeSet<Pinned> = self
            .store
            .list("Dataplane", mesh, &[], None, usize::MAX)?
            .items
            .iter()
            .flat_map(|r| {
                let zone = r.origin.as_deref().filter(|o| *o != "global");
                services_of(r, zone)
            })
            .collect();
        self.allocate_virtual_ips(mesh, services, now)
    }

    /// Frees the mesh's virtual IPs (the mesh is deleted).
    pub(super) fn delete_virtual_ips(&mut self, mesh: &str) -> Result<(), StoreError> {
        for r in self.store.list(KIND, mesh, &[], None, usize::MAX)?.items {
            let key = r.key();
            self.write(&key, Some(&r), None);
        }
        Ok(())
    }
}
