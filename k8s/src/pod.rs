//! A pod's Dataplane: what the controller of `causeway zone-cp --mode kubernetes` will
//! write for each pod of a labelled namespace, from the pod, its namespace and the
//! Services of that namespace. Pure: the watch loop that feeds it is not built yet.
//!
//! The rules, Kuma's where Kuma has one:
//! - a namespace joins the mesh with the label `causeway.io/sidecar-injection: enabled`;
//!   a pod opts out with the annotation (or label) `causeway.io/sidecar-injection:
//!   disabled`; its mesh is the pod's `causeway.io/mesh` annotation or label, else the
//!   namespace's label, else `default`;
//! - each port of each Service that selects the pod is an inbound, with Kuma's service
//!   name `<service>_<namespace>_svc_<port>`; its protocol comes from the port's
//!   `appProtocol`, else the Service annotation `<port>.service.causeway.io/protocol`,
//!   else TCP;
//! - the sidecar listens for an inbound on its own port, derived from the pod's spec
//!   alone ([`inbound_listener_ports`]), so the injected redirect and the Dataplane agree
//!   without talking to each other;
//! - an inbound is named after its Service port (for `sectionName`) when the name is
//!   unique in the pod; its tags are the pod's labels and its namespace
//!   (`k8s.kuma.io/namespace`); the zone adds its own.

use std::collections::{BTreeMap, BTreeSet};

use causeway_api::{
    DataplaneSpec, Inbound, NAMESPACE_TAG, Protocol, Resource, TransparentProxying,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The namespace label (and pod annotation or label) that puts pods in the mesh.
pub const INJECTION: &str = "causeway.io/sidecar-injection";
/// The pod annotation or label, or namespace label, that names the mesh.
pub const MESH: &str = "causeway.io/mesh";
/// The Dataplane label naming its pod (in the namespace of [`NAMESPACE_TAG`]).
pub const POD_LABEL: &str = "k8s.causeway.io/pod";
/// The first port the sidecar listens on for inbound traffic; the pod's declared ports
/// take the following ones in order.
pub const FIRST_INBOUND_PORT: u16 = 15100;
/// At most this many inbound listener ports per pod (15100-15199).
pub const MAX_INBOUND_PORTS: usize = 100;

/// The sidecar's ports the controller writes into every Dataplane (the zone's own tag
/// is added by the zone, as for any Dataplane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where redirected outbound connections arrive (`install-redirect --outbound-port`).
    pub outbound_port: u16,
    /// Where the sidecar answers DNS (`install-redirect --dns-port`).
    pub dns_port: u16,
    /// The sidecar's admin port, on loopback.
    pub admin_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            outbound_port: 15001,
            dns_port: 15053,
            admin_port: 9901,
        }
    }
}

/// Why a pod gets no Dataplane. Each is a state the pod may leave (and then gets one),
/// except the opt-outs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// Its namespace is not labelled, or the pod opted out.
    #[error("not in the mesh: {0}")]
    NotInMesh(String),
    /// It shares its node's network, where a redirect would take the node's traffic.
    #[error("uses the host network, which Causeway does not redirect")]
    HostNetwork,
    /// No IP yet (not scheduled, or starting).
    #[error("has no IP yet")]
    NoAddress,
    /// It has finished or is being deleted.
    #[error("is finished or being deleted")]
    Gone,
    /// No Service selects it on a port it declares, so it serves nothing to the mesh
    /// (and a Dataplane's identity is its service).
    #[error("no Service selects it on a port its containers declare; a Dataplane needs an inbound")]
    NoInbound,
}

/// A problem with one Service port, reported while the rest of the pod goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProblem {
    /// `<service>:<port>`.
    pub port: String,
    /// Why it is not an inbound.
    pub reason: String,
}

/// The Dataplane name of a pod: `<pod>-<namespace>-<hash>`, the hash (8 hex digits of
/// FNV-1a over `namespace/pod`) keeping two pods apart whose joined names are alike
/// (`web-prod` in `a`, `web` in `prod-a`); the readable part is shortened to keep the
/// whole a DNS label.
pub fn dataplane_name(pod: &str, namespace: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5; // FNV-1a: stable across releases and machines.
    for b in namespace.bytes().chain([b'/']).chain(pod.bytes()) {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let readable = causeway_api::dns_label_stem(&format!("{pod}-{namespace}"), 54);
    if readable.is_empty() {
        format!("pod-{hash:08x}")
    } else {
        format!("{readable}-{hash:08x}")
    }
}

/// The sidecar's inbound listener port for each TCP port the pod's containers declare:
/// the declared ports in ascending order take 15100, 15101, ... Computed from the pod's
/// spec alone (which Kubernetes never changes), so the injected redirect (`--inbound
/// APP:LISTENER`) and the controller's Dataplane always agree.
pub fn inbound_listener_ports(pod: &Pod) -> BTreeMap<u16, u16> {
    let declared: BTreeSet<u16> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    declared
        .into_iter()
        .take(MAX_INBOUND_PORTS)
        .zip(FIRST_INBOUND_PORT..)
        .collect()
}

fn label_or_annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    let m = &pod.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(key)))
        .map(String::as_str)
}

fn namespace_label<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Whether a Service's selector picks the pod (an empty or absent selector picks none:
/// such a Service has hand-made endpoints).
fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The container port a Service port sends to: its `targetPort` as a number, or the
/// container port of that name; absent means the Service's own port.
fn target_port(port: &ServicePort, pod: &Pod) -> Result<u16, String> {
    match &port.target_port {
        None => u16::try_from(port.port).map_err(|_| format!("port {} is out of range", port.port)),
        Some(IntOrString::Int(n)) => {
            u16::try_from(*n).map_err(|_| format!("targetPort {n} is out of range"))
        }
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("targetPort {name:?} names no port of the pod's containers")),
    }
}

/// A Service port's protocol: `appProtocol`, else the Service's annotation
/// `<port>.service.causeway.io/protocol`, else TCP.
fn protocol(service: &Service, port: &ServicePort) -> Result<Protocol, String> {
    let annotation = format!("{}.service.causeway.io/protocol", port.port);
    let named = port.app_protocol.as_deref().or_else(|| {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&annotation))
            .map(String::as_str)
    });
    match named.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Ok(Protocol::Tcp),
        Some("http" | "http/1.1") => Ok(Protocol::Http),
        Some("http2" | "h2c" | "kubernetes.io/h2c") => Ok(Protocol::Http2),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(format!(
            "protocol {other:?} is not one Causeway proxies (tcp, http, http2, h2c, grpc); set appProtocol or {annotation}"
        )),
    }
}

/// The pod's Dataplane, with the Service ports that could not be inbounds; or why the
/// pod has none.
pub fn dataplane_for(
    pod: &Pod,
    namespace: &Namespace,
    services: &[Service],
    settings: &Settings,
) -> Result<(Resource, Vec<PortProblem>), Skipped> {
    let ns_name = namespace.metadata.name.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if namespace_label(namespace, INJECTION) != Some("enabled") {
        return Err(Skipped::NotInMesh(format!(
            "namespace {ns_name} is not labelled {INJECTION}=enabled"
        )));
    }
    if label_or_annotation(pod, INJECTION) == Some("disabled") {
        return Err(Skipped::NotInMesh(format!(
            "the pod opted out ({INJECTION}: disabled)"
        )));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Err(Skipped::HostNetwork);
    }
    let status = pod.status.as_ref();
    if pod.metadata.deletion_timestamp.is_some()
        || matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    {
        return Err(Skipped::Gone);
    }
    let address = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .ok_or(Skipped::NoAddress)?;

    let listeners = inbound_listener_ports(pod);
    let mut pod_tags: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("causeway.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pod_tags.insert(NAMESPACE_TAG.into(), ns_name.clone());

    let mut inbound = Vec::new();
    let mut problems = Vec::new();
    let mut selecting: Vec<&Service> = services.iter().filter(|s| selects(s, pod)).collect();
    selecting.sort_by_key(|s| s.metadata.name.clone());
    for service in selecting {
        let svc_name = service.metadata.name.clone().unwrap_or_default();
        for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let problem = |reason: String| PortProblem {
                port: format!("{svc_name}:{}", port.port),
                reason,
            };
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                problems.push(problem("only TCP ports are proxied".into()));
                continue;
            }
            let app_port = match target_port(port, pod) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(problem(e));
                    continue;
                }
            };
            let Some(&listener) = listeners.get(&app_port) else {
                problems.push(problem(format!(
                    "the pod's containers do not declare port {app_port}, so its traffic is not redirected to the sidecar; add it to the container's ports"
                )));
                continue;
            };
            let protocol = match protocol(service, port) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(problem(e));
                    continue;
                }
            };
            inbound.push(Inbound {
                name: port.name.clone(),
                port: listener,
                service_port: Some(app_port),
                service_address: None,
                service: format!("{svc_name}_{ns_name}_svc_{}", port.port),
                tags: pod_tags.clone(),
                protocol,
            });
        }
    }
    if inbound.is_empty() {
        return Err(Skipped::NoInbound);
    }
    // A port name is the inbound's name only where it is unique and a valid one.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for i in &inbound {
        if let Some(n) = &i.name {
            *names.entry(n.clone()).or_default() += 1;
        }
    }
    for i in &mut inbound {
        let keep = i.name.as_ref().is_some_and(|n| {
            names.get(n) == Some(&1)
                && causeway_api::validate_name("", n).is_none()
                && !n.chars().all(|c| c.is_ascii_digit())
        });
        if !keep {
            i.name = None;
        }
    }
    // Two Service ports to the same container port are one listener: the first wins.
    let mut seen = BTreeSet::new();
    inbound.retain(|i| {
        let first = seen.insert(i.port);
        if !first {
            problems.push(PortProblem {
                port: i.service.clone(),
                reason: format!(
                    "container port {} is already the inbound of another Service port",
                    i.service_port.unwrap_or(i.port)
                ),
            });
        }
        first
    });

    let mesh = label_or_annotation(pod, MESH)
        .or_else(|| namespace_label(namespace, MESH))
        .unwrap_or("default");
    let spec = DataplaneSpec {
        address,
        advertised_address: None,
        inbound,
        outbound: Vec::new(),
        admin_port: settings.admin_port,
        transparent_proxying: Some(TransparentProxying {
            outbound_port: settings.outbound_port,
            services: None,
            dns_port: Some(settings.dns_port),
        }),
    };
    let resource = Resource {
        kind: "Dataplane".into(),
        mesh: Some(mesh.to_owned()),
        name: dataplane_name(&pod_name, &ns_name),
        labels: BTreeMap::from([
            (NAMESPACE_TAG.to_owned(), ns_name),
            (POD_LABEL.to_owned(), pod_name),
        ]),
        spec: serde_json::to_value(spec).expect("a DataplaneSpec always serializes"),
        version: None,
        creation_time: None,
        modification_time: None,
        origin: None,
    };
    Ok((resource, problems))
}

#[cfg(test)]
mod tests;
