//! `Zone`: a zone known to the global control plane.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldError, validate_name};

/// The spec of a `Zone`: a Kubernetes cluster, VM network or cloud region with its own
/// zone control plane.
///
/// There is no token field: a zone's token is issued by the API on request, shown once,
/// and only a hash of it is stored, never the token in clear.
///
/// ```yaml
/// type: Zone
/// name: eu-west
/// spec: {enabled: true, description: "Frankfurt cluster", region: eu-central-1, cloud: aws}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneSpec {
    /// Whether the zone may connect. A disabled zone's control plane is refused and
    /// other zones stop sending traffic to its ingress. Default `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Free text for people, at most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the zone runs, e.g. `eu-central-1`. A DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The cloud or platform, e.g. `aws`, `gcp`, `onprem`. A DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
}

impl Default for ZoneSpec {
    fn default() -> Self {
        ZoneSpec {
            enabled: true,
            description: None,
            region: None,
            cloud: None,
        }
    }
}

fn default_true() -> bool {
    true
}

const MAX_DESCRIPTION_CHARS: usize = 256;

impl ZoneSpec {
    /// The checks that the shape alone does not express; paths start with `spec.`.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(description) = &self.description {
            let chars = description.chars().count();
            if chars > MAX_DESCRIPTION_CHARS {
                errors.push(FieldError::new(
                    "spec.description",
                    format!("must be at most {MAX_DESCRIPTION_CHARS} characters (got {chars})"),
                ));
            }
        }
        if let Some(region) = &self.region {
            errors.extend(validate_name("spec.region", region));
        }
        if let Some(cloud) = &self.cloud {
            errors.extend(validate_name("spec.cloud", cloud));
        }
        errors
    }
}

impl crate::spec::Spec for ZoneSpec {
    fn check(&self, errors: &mut crate::spec::Errors) {
        errors.0.extend(ZoneSpec::check(self));
    }
}

/// Decodes and checks a Zone spec (what the registry entry does).
#[cfg(test)]
pub(crate) fn validate_spec(spec: &serde_json::Value) -> Vec<FieldError> {
    crate::spec::validate_spec_of::<ZoneSpec>(spec)
}

#[cfg(test)]
mod tests;
