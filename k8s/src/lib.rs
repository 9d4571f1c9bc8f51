//! Kubernetes mode. Today: the CustomResourceDefinitions of every resource type
//! ([`crd`]), generated from the API's registry and made structural ([`structural`]),
//! which `causeway install crds` prints; a CRD object as the API's resource
//! ([`object`]); the answers of the validating admission webhook ([`admission`]); and a
//! pod's Dataplane ([`pod`]), which the controller will write. The zone control plane's
//! Kubernetes mode that serves and feeds them, the injector and the other install
//! manifests come next (issue 20).

pub mod admission;
pub mod crd;
pub mod object;
pub mod pod;
pub mod structural;
