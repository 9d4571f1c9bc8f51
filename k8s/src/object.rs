//! A Causeway CRD object and the API's [`Resource`], both ways: the object's kind is
//! the type, `metadata.name` the name, `metadata.labels` the labels, less two the API
//! keeps apart: `causeway.io/mesh` (the mesh, absent: `default`, for mesh-scoped types)
//! and `causeway.io/origin` (who wrote it: `global` for what the zone syncs in).

use std::collections::BTreeMap;

use causeway_api::{FieldError, Resource, Scope, type_info};
use serde_json::{Value, json};

use crate::crd::{GROUP, MESH_LABEL, VERSION};

/// The label that says who wrote an object: `global` for what the zone control plane
/// syncs in from the global one (read-only in the cluster), a zone's name otherwise.
pub const ORIGIN_LABEL: &str = "causeway.io/origin";

/// The resource an object of a Causeway CRD stands for, or every problem found with
/// its envelope (the spec is the type's validator's business), with Kubernetes' field
/// paths (`metadata.name`, `metadata.labels.causeway.io/mesh`).
pub fn resource_of(object: &Value) -> Result<Resource, Vec<FieldError>> {
    let mut errors = Vec::new();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    if api_version != format!("{GROUP}/{VERSION}") {
        errors.push(FieldError::new(
            "apiVersion",
            format!("{api_version:?} is not {GROUP}/{VERSION}"),
        ));
    }
    let kind = object["kind"].as_str().unwrap_or_default();
    let info = type_info(kind);
    if info.is_none() {
        errors.push(FieldError::new(
            "kind",
            format!("{kind:?} is not a Causeway resource type"),
        ));
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "is required"));
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    if let Some(map) = object["metadata"]["labels"].as_object() {
        for (k, v) in map {
            match v.as_str() {
                Some(v) => {
                    labels.insert(k.clone(), v.to_owned());
                }
                None => errors.push(FieldError::new(
                    format!("metadata.labels.{k}"),
                    "a label value is a string",
                )),
            }
        }
    }
    let mesh = labels.remove(MESH_LABEL);
    let origin = labels.remove(ORIGIN_LABEL);
    let mesh = match info.map(|i| i.scope) {
        Some(Scope::Mesh) => Some(mesh.unwrap_or_else(|| "default".to_owned())),
        Some(Scope::Global) if mesh.is_some() => {
            errors.push(FieldError::new(
                format!("metadata.labels.{MESH_LABEL}"),
                format!("a {kind} belongs to no mesh; remove the label"),
            ));
            None
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let spec = match &object["spec"] {
        Value::Null => json!({}),
        spec => spec.clone(),
    };
    Ok(Resource {
        kind: kind.to_owned(),
        mesh,
        name: name.to_owned(),
        labels,
        spec,
        version: None,
        creation_time: None,
        modification_time: None,
        origin,
    })
}

/// The object of a resource, in `namespace` for a mesh-scoped type (none for Mesh,
/// Zone and Drill).
pub fn object_of(r: &Resource, namespace: Option<&str>) -> Value {
    let mut labels = r.labels.clone();
    if let Some(mesh) = &r.mesh {
        labels.insert(MESH_LABEL.to_owned(), mesh.clone());
    }
    if let Some(origin) = &r.origin {
        labels.insert(ORIGIN_LABEL.to_owned(), origin.clone());
    }
    let mut metadata = json!({"name": r.name, "labels": labels});
    if let Some(ns) = namespace.filter(|_| r.mesh.is_some()) {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": r.kind,
        "metadata": metadata,
        "spec": r.spec,
    })
}

/// A field path of the API (`name`, `labels.x`, `mesh`, `spec...`) as Kubernetes
/// names it in the object.
pub fn object_path(field: &str) -> String {
    match field {
        "name" => "metadata.name".to_owned(),
        "mesh" => format!("metadata.labels.{MESH_LABEL}"),
        "type" => "kind".to_owned(),
        f if f.starts_with("labels.") || f == "labels" => format!("metadata.{f}"),
        f => f.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_and_its_resource_are_the_same_thing() {
        let object = json!({
            "apiVersion": "causeway.io/v1alpha1",
            "kind": "MeshTimeout",
            "metadata": {"name": "t", "namespace": "causeway-system", "uid": "u-1",
                         "labels": {"team": "a", "causeway.io/mesh": "payments"}},
            "spec": {"targetRef": {"kind": "Mesh"}},
        });
        let r = resource_of(&object).expect("a resource");
        assert_eq!(r.kind, "MeshTimeout");
        assert_eq!(r.mesh.as_deref(), Some("payments"));
        assert_eq!(
            r.labels,
            BTreeMap::from([("team".to_owned(), "a".to_owned())])
        );
        assert_eq!(r.origin, None);
        let back = object_of(&r, Some("causeway-system"));
        assert_eq!(back["metadata"]["labels"], object["metadata"]["labels"]);
        assert_eq!(back["metadata"]["namespace"], "causeway-system");
        assert_eq!(resource_of(&back).expect("again"), r);
        // The mesh defaults; a synced object says where it came from.
        let mut synced = object.clone();
        synced["metadata"]["labels"] = json!({ORIGIN_LABEL: "global"});
        let r = resource_of(&synced).expect("a resource");
        assert_eq!(
            (r.mesh.as_deref(), r.origin.as_deref()),
            (Some("default"), Some("global"))
        );
        // A cluster-scoped type has no namespace and no mesh.
        let zone = json!({"apiVersion": "causeway.io/v1alpha1", "kind": "Zone",
                          "metadata": {"name": "zone-a"}});
        let r = resource_of(&zone).expect("a zone");
        assert_eq!((r.mesh, r.spec), (None, json!({})));
        assert_eq!(
            object_of(&resource_of(&zone).unwrap(), Some("x"))["metadata"].get("namespace"),
            None
        );
    }

    #[test]
    fn envelope_problems_are_named_by_their_object_paths() {
        let object = json!({
            "apiVersion": "causeway.io/v2",
            "kind": "Zone",
            "metadata": {"labels": {"causeway.io/mesh": "default", "n": 3}},
        });
        let fields: Vec<String> = resource_of(&object)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "apiVersion",
                "metadata.name",
                "metadata.labels.n",
                "metadata.labels.causeway.io/mesh"
            ]
        );
        let unknown = json!({"apiVersion": "causeway.io/v1alpha1", "kind": "MeshGateway",
                             "metadata": {"name": "g"}});
        assert_eq!(resource_of(&unknown).unwrap_err()[0].field, "kind");
        assert_eq!(object_path("labels.app"), "metadata.labels.app");
        assert_eq!(object_path("spec.to[0]"), "spec.to[0]");
    }
}
