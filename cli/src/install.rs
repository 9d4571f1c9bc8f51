//! `causeway install`: the Kubernetes manifests of a Causeway installation, printed to
//! standard output for `kubectl apply -f -` (or a GitOps repository). Today the CRDs;
//! the zone control plane's manifests come with Kubernetes mode (issue 20).

use std::io::Write as _;

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum InstallCmd {
    /// Print the CustomResourceDefinitions of every Causeway resource type (group
    /// causeway.io, version v1alpha1): `causeway install crds | kubectl apply -f -`.
    ///
    /// Mesh, Zone and Drill are cluster-scoped; every mesh-scoped type (policies,
    /// Dataplane, ...) is namespaced, with its mesh in the label causeway.io/mesh
    /// (absent: default). `kubectl get causeway` lists every kind, `kubectl get
    /// causeway-policies` the policies. The schemas come from the same types the REST
    /// API validates with, for Kubernetes 1.33 and later.
    Crds,
}

/// Writes the asked-for manifests to standard output.
pub(crate) fn install(cmd: &InstallCmd) -> anyhow::Result<()> {
    let text = match cmd {
        InstallCmd::Crds => causeway_k8s::crd::definitions_yaml(),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
