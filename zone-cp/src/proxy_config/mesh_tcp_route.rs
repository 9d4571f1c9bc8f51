//! The MeshTCPRoute configurer: each outbound's merged route (`default`, or Kuma's one
//! rule), decoded once into [`TcpRouteConf`]: the backends its traffic goes to, by
//! weight. A backend is a service (`MeshService`, by name or by its display-name label)
//! or some of its endpoints (`MeshServiceSubset`, by tags; a `port`; a `namespace`:
//! see [`BackendRef::endpoint_tags`]). The caller (`compute`) adds
//! each backend's endpoints and identity.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use std::collections::BTreeMap;

use causeway_api::{BackendRef, Proxy, Resource, TcpRouteConf};

use super::{ComputeError, outbound_confs};

/// A backend before its endpoints: (service, tags, weight).
pub(crate) type Backend = (String, BTreeMap<String, String>, u32);

/// The backends of each of `proxy`'s outbounds, in its order (empty: no route).
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
) -> Result<Vec<Vec<Backend>>, ComputeError> {
    Ok(outbound_confs::<Merged>("MeshTCPRoute", policies, proxy)?
        .into_iter()
        .map(|conf| {
            let Some(m) = conf else {
                return Vec::new();
            };
            // Kuma's one rule, else `default`.
            let refs = match m.rules.last() {
                Some(rule) => rule.default.backend_refs.clone(),
                None => m.backend_refs,
            };
            refs.unwrap_or_default()
                .iter()
                .filter_map(backend)
                .collect()
        })
        .collect())
}

/// A destination's merged route: `default`'s fields, or Kuma's `rules`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Merged {
    #[serde(default)]
    backend_refs: Option<Vec<BackendRef>>,
    #[serde(default)]
    rules: Vec<causeway_api::Rule<TcpRouteConf>>,
}

fn backend(r: &BackendRef) -> Option<Backend> {
    let service = r.name.clone().or_else(|| {
        causeway_api::SERVICE_LABELS
            .iter()
            .find_map(|l| r.labels.get(*l).cloned())
    })?;
    Some((service, r.endpoint_tags(), r.weight.unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_outbound_goldens;

    /// Golden cases under `testdata/mesh_tcp_route/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // redis split blue/green by tags; db sent to db-replica (Kuma's rules form, by
        // label); cache has no route.
        ("mesh_tcp_route/weighted-backends", "zone-a", "web-1"),
    ];

    #[test]
    fn golden_tcp_routes() {
        check_outbound_goldens(CASES, "backends", |o| Some(&o.backends));
    }
}
