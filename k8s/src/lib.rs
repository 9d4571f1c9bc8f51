//! Kubernetes mode. Today: the CustomResourceDefinitions of every resource type
//! ([`crd`]), generated from the API's registry and made structural ([`structural`]),
//! which `causeway install crds` prints, and a pod's Dataplane ([`pod`]), which the
//! controller will write. The watch loop, the injector and the other install manifests
//! come next (issue 20).

pub mod crd;
pub mod pod;
pub mod structural;
