//! A CustomResourceDefinition for every resource type in the API's registry, built from
//! the same schema the REST API validates against (made structural), so the CRDs cannot
//! drift from the types.
//!
//! How a Causeway resource maps onto a Kubernetes object:
//! - group `causeway.io`, version `v1alpha1`; the kind and plural are the registry's;
//! - Mesh, Zone and Drill are cluster-scoped; every mesh-scoped type is namespaced, and
//!   its mesh is the label `causeway.io/mesh` (absent: `default`), as Kuma does;
//! - the object's `spec` is the resource's `spec`; the envelope's other fields come from
//!   the object's metadata (name, labels);
//! - every CRD is in the category `causeway` (`kubectl get causeway` lists them all), and
//!   policies also in `causeway-policies`.

use causeway_api::{Role, Scope, TypeInfo, types};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::structural::structural;

/// The API group of every Causeway CRD.
pub const GROUP: &str = "causeway.io";
/// The version the CRDs serve and store.
pub const VERSION: &str = "v1alpha1";
/// The label that puts a namespaced object in a mesh (absent: `default`).
pub const MESH_LABEL: &str = "causeway.io/mesh";

/// One printer column: its header, the JSONPath of its value and the column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The header `kubectl get` prints.
    pub name: &'static str,
    /// Where the value is, e.g. `.spec.address`.
    pub json_path: &'static str,
    /// `string`, `integer`, `boolean` or `date`.
    pub kind: &'static str,
}

const fn col(name: &'static str, json_path: &'static str, kind: &'static str) -> Column {
    Column {
        name,
        json_path,
        kind,
    }
}

const MESH: Column = col("Mesh", ".metadata.labels.causeway\\.io/mesh", "string");
const AGE: Column = col("Age", ".metadata.creationTimestamp", "date");

/// The columns `kubectl get` shows for a type, besides the name: what an operator
/// scans a list for.
pub fn columns(info: &TypeInfo) -> Vec<Column> {
    let mut cols = Vec::new();
    if info.scope == Scope::Mesh {
        cols.push(MESH);
    }
    match (info.kind, info.role) {
        (_, Role::Policy(_)) => cols.extend([
            col("TargetRef Kind", ".spec.targetRef.kind", "string"),
            col("TargetRef Name", ".spec.targetRef.name", "string"),
        ]),
        ("Mesh", _) => cols.extend([
            col("mTLS", ".spec.mtls.mode", "string"),
            col("Cross-zone", ".spec.crossZone", "boolean"),
        ]),
        ("Zone", _) => cols.extend([
            col("Enabled", ".spec.enabled", "boolean"),
            col("Region", ".spec.region", "string"),
            col("Cloud", ".spec.cloud", "string"),
        ]),
        ("Drill", _) => cols.extend([
            col("Zone", ".spec.zone", "string"),
            col("Mode", ".spec.mode", "string"),
            col("Probe", ".spec.probe", "string"),
            col("Ends", ".spec.endsAt", "date"),
        ]),
        ("Dataplane", _) => cols.extend([
            col("Address", ".spec.address", "string"),
            col("Service", ".spec.inbound[0].service", "string"),
        ]),
        ("ZoneIngress", _) => cols.extend([
            col("Zone", ".spec.zone", "string"),
            col("Address", ".spec.address", "string"),
            col("Port", ".spec.port", "integer"),
            col("QUIC", ".spec.quic", "boolean"),
        ]),
        ("DrillReport", _) => cols.extend([
            col("Drill", ".spec.drill", "string"),
            col("Zone", ".spec.zone", "string"),
            col("Service", ".spec.service", "string"),
            col("State", ".spec.state", "string"),
        ]),
        ("VirtualIp", _) => cols.extend([
            col("Service", ".spec.service", "string"),
            col("Zone", ".spec.zone", "string"),
            col("IP", ".spec.ip", "string"),
        ]),
        _ => {}
    }
    cols.push(AGE);
    cols
}

/// The structural OpenAPI schema of a whole object of this type: apiVersion, kind,
/// metadata and the type's spec.
pub fn object_schema(info: &TypeInfo) -> Value {
    let spec = structural(&(info.spec_schema)());
    let description = spec
        .get("description")
        .and_then(Value::as_str)
        .map(|d| d.split("\n\n").next().unwrap_or(d).to_owned())
        .unwrap_or_else(|| format!("A Causeway {}.", info.kind));
    json!({
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
        },
    })
}

/// The CRD of one type.
///
/// ```
/// let info = causeway_api::type_info("MeshTimeout").unwrap();
/// let crd = causeway_k8s::crd::definition(info);
/// assert_eq!(crd.metadata.name.as_deref(), Some("meshtimeouts.causeway.io"));
/// assert_eq!(crd.spec.scope, "Namespaced");
/// ```
pub fn definition(info: &TypeInfo) -> CustomResourceDefinition {
    let schema: JSONSchemaProps = serde_json::from_value(object_schema(info)).unwrap_or_else(|e| {
        panic!(
            "{}'s structural schema is not a JSONSchemaProps: {e}",
            info.kind
        )
    });
    let mut categories = vec!["causeway".to_owned()];
    if matches!(info.role, Role::Policy(_)) {
        categories.push("causeway-policies".to_owned());
    }
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{GROUP}", info.plural)),
            labels: Some(
                [
                    ("app.kubernetes.io/part-of", "causeway"),
                    ("app.kubernetes.io/version", env!("CARGO_PKG_VERSION")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: info.kind.to_owned(),
                list_kind: Some(format!("{}List", info.kind)),
                plural: info.plural.to_owned(),
                singular: Some(info.kind.to_ascii_lowercase()),
                categories: Some(categories),
                short_names: None,
            },
            scope: match info.scope {
                Scope::Global => "Cluster",
                Scope::Mesh => "Namespaced",
            }
            .to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                additional_printer_columns: Some(
                    columns(info)
                        .into_iter()
                        .map(|c| CustomResourceColumnDefinition {
                            name: c.name.to_owned(),
                            json_path: c.json_path.to_owned(),
                            type_: c.kind.to_owned(),
                            ..CustomResourceColumnDefinition::default()
                        })
                        .collect(),
                ),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// Every type's CRD, in registry order.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    types().iter().map(definition).collect()
}

/// Every CRD as one YAML stream (documents separated by `---`), what
/// `causeway install crds` prints.
pub fn definitions_yaml() -> String {
    definitions()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD always serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests;
