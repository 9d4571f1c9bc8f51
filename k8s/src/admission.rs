//! The validating admission webhook of a Kubernetes zone, as a pure function from the
//! API server's AdmissionReview (v1) to the answer: a write to a Causeway object gets
//! the same checks, field errors and warnings as a write to the REST API, and what only
//! the control plane may write is refused to everyone else:
//! - objects synced in from the global control plane (`causeway.io/origin: global`):
//!   change them at global;
//! - Mesh, Zone and Drill (global's), and Dataplane, ZoneIngress, DrillReport and
//!   VirtualIp (the control planes'): users write policies only.
//!
//! The control plane itself is known by its service account's user name. Serving this
//! over TLS is the zone control plane's part, in Kubernetes mode (not built yet).

use causeway_api::{FieldError, Role, type_info, validate, warnings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::object::{ORIGIN_LABEL, object_path, resource_of};

/// An AdmissionReview as the API server sends it (the parts this webhook reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    /// `admission.k8s.io/v1`.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// The request; absent only in a malformed review.
    pub request: Option<Request>,
}

/// The write under review.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Echoed in the answer.
    pub uid: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// Who writes.
    pub user_info: UserInfo,
    /// The object as it would be written (CREATE, UPDATE).
    #[serde(default)]
    pub object: Option<Value>,
    /// The object as it is (UPDATE, DELETE).
    #[serde(default)]
    pub old_object: Option<Value>,
}

/// The writer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    /// E.g. `system:serviceaccount:causeway-system:causeway-zone-cp`, `alice`.
    #[serde(default)]
    pub username: String,
}

/// The answer's `response`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's.
    pub uid: String,
    /// Whether the write may go on.
    pub allowed: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// What the writer should know either way (kubectl prints them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A refusal, as a Kubernetes Status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// 403 (not yours to write) or 422 (invalid).
    pub code: u16,
    /// `Forbidden` or `Invalid`.
    pub reason: &'static str,
    /// Every problem, one per line, each `field: reason`.
    pub message: String,
}

/// Why a review could not be answered at all (the HTTP layer's 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    /// Not JSON, or not an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another version than v1.
    #[error("AdmissionReview {0:?} is not admission.k8s.io/v1")]
    Version(String),
}

/// Answers one AdmissionReview (its JSON body) with the AdmissionReview to send back.
/// `control_plane` is the user name the zone control plane writes as.
pub fn answer(body: &[u8], control_plane: &str) -> Result<Value, BadReview> {
    // As text first: serde skips the fields it ignores without checking their UTF-8,
    // and a body that is not JSON must not be answered as if it were (found by the
    // `admission` fuzz target).
    let text = std::str::from_utf8(body).map_err(|e| BadReview::Malformed(e.to_string()))?;
    let review: Review =
        serde_json::from_str(text).map_err(|e| BadReview::Malformed(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview::Version(review.api_version));
    }
    let request = review
        .request
        .ok_or_else(|| BadReview::Malformed("no request".into()))?;
    let response = decide(&request, control_plane);
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn refuse(uid: &str, code: u16, reason: &'static str, message: String) -> Response {
    Response {
        uid: uid.to_owned(),
        allowed: false,
        status: Some(Status {
            code,
            reason,
            message,
        }),
        warnings: Vec::new(),
    }
}

fn lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", object_path(&e.field), e.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The decision on one write.
pub fn decide(request: &Request, control_plane: &str) -> Response {
    let uid = request.uid.as_str();
    let allowed = Response {
        uid: uid.to_owned(),
        allowed: true,
        status: None,
        warnings: Vec::new(),
    };
    if request.user_info.username == control_plane {
        return allowed;
    }
    // What is there now (UPDATE, DELETE) and what would be (CREATE, UPDATE).
    let written = request
        .object
        .as_ref()
        .filter(|_| request.operation != "DELETE");
    let existing = request.old_object.as_ref();
    let Some(any) = written.or(existing) else {
        return allowed; // CONNECT, or nothing to judge.
    };
    let kind = any["kind"].as_str().unwrap_or_default();
    if let Some(info) = type_info(kind) {
        let owner = match info.role {
            Role::Policy(_) => None,
            Role::Config | Role::Operation => Some("the global control plane"),
            Role::ZoneReported => Some("the zone control plane, from what runs in the zone"),
            Role::Allocated => Some("the global control plane, which allocates it"),
        };
        if let Some(owner) = owner {
            return refuse(
                uid,
                403,
                "Forbidden",
                format!(
                    "a {kind} is written by {owner}, not in the cluster; Causeway's policies are"
                ),
            );
        }
    }
    let synced = |o: &Value| o["metadata"]["labels"][ORIGIN_LABEL].as_str() == Some("global");
    if existing.is_some_and(synced) || written.is_some_and(synced) {
        return refuse(
            uid,
            403,
            "Forbidden",
            format!(
                "{kind} {:?} is synced from the global control plane ({ORIGIN_LABEL}: global) and read-only here; change it at global (causeway apply, the API or Terraform)",
                any["metadata"]["name"].as_str().unwrap_or_default()
            ),
        );
    }
    let Some(object) = written else {
        return allowed; // Deleting a zone's own policy.
    };
    let resource = match resource_of(object) {
        Ok(r) => r,
        Err(errors) => return refuse(uid, 422, "Invalid", lines(&errors)),
    };
    if let Err(invalid) = validate(&resource) {
        return refuse(uid, 422, "Invalid", lines(&invalid.errors));
    }
    Response {
        warnings: warnings(&resource)
            .into_iter()
            .map(|w| format!("{}: {}", object_path(&w.field), w.reason))
            .collect(),
        ..allowed
    }
}

#[cfg(test)]
mod tests;
