//! Kubernetes mode. Today: the CustomResourceDefinitions of every resource type
//! ([`crd`]), generated from the API's registry and made structural ([`structural`]),
//! which `causeway install crds` prints. The controller, the injector and the other
//! install manifests come next (issue 20).

pub mod crd;
pub mod structural;
