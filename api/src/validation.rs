//! Validation: field errors, name and label rules, and [`validate`] for a whole resource.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::path_de;
use crate::registry::{Scope, TypeInfo, types};
use crate::resource::Resource;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path from the resource root, e.g. `name`, `labels.app`,
    /// `spec.mtls.backend.certPem`.
    pub field: String,
    /// What is wrong, and what to do about it when that is known.
    pub reason: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in a resource. Displays as `field: reason; field2: reason2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{}", self.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors {
    /// The problems, in the order found (envelope first, then spec).
    pub errors: Vec<FieldError>,
}

/// Validates a whole resource: the envelope (type, name, mesh, labels) and the spec of
/// its type. Reports all problems, not just the first. Server-set fields are not checked.
///
/// ```
/// use causeway_api::{Resource, validate};
///
/// let r = Resource::from_yaml("type: Zone\nmesh: default\nname: Zone-1\n")?;
/// let err = validate(&r).unwrap_err();
/// assert_eq!(err.errors[0].field, "name");
/// assert_eq!(err.errors[1].field, "mesh");
/// # Ok::<(), causeway_api::ParseError>(())
/// ```
pub fn validate(r: &Resource) -> Result<(), ValidationErrors> {
    validate_with(r, types())
}

/// [`validate`] against a given registry (tests use one with extra types).
pub(crate) fn validate_with(r: &Resource, registry: &[TypeInfo]) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    let info = registry.iter().find(|t| t.kind == r.kind);
    if info.is_none() {
        let known: Vec<&str> = registry.iter().map(|t| t.kind).collect();
        errors.push(FieldError::new(
            "type",
            format!(
                "unknown type {:?}; known types: {}",
                r.kind,
                known.join(", ")
            ),
        ));
    }
    errors.extend(validate_name("name", &r.name));
    match (info.map(|t| t.scope), &r.mesh) {
        (Some(Scope::Global), Some(_)) => errors.push(FieldError::new(
            "mesh",
            format!(
                "must not be set: {} is a global resource, not part of a mesh",
                r.kind
            ),
        )),
        (Some(Scope::Mesh), None) => errors.push(FieldError::new(
            "mesh",
            format!(
                "is required: a {} belongs to a mesh; set mesh to the mesh's name",
                r.kind
            ),
        )),
        (_, Some(mesh)) => errors.extend(validate_name("mesh", mesh)),
        (_, None) => {}
    }
    for (key, value) in &r.labels {
        let field = format!("labels.{key}");
        if let Err(reason) = validate_label_key(key) {
            errors.push(FieldError::new(&field, reason));
        }
        if let Err(reason) = validate_label_value(value) {
            errors.push(FieldError::new(&field, reason));
        }
    }
    if let Some(info) = info {
        errors.extend((info.validate_spec)(&r.spec));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors { errors })
    }
}

/// Decodes a spec into its typed struct. Shape errors (unknown field, wrong type, bad
/// enum value, missing field) come back as a [`FieldError`] whose path starts at
/// `spec`, e.g. `spec.mtls.mode`.
pub fn decode_spec<T: DeserializeOwned>(spec: &Value) -> Result<T, FieldError> {
    path_de::from_value(spec, "spec").map_err(|e| FieldError {
        field: e.path.unwrap_or_else(|| "spec".to_owned()),
        reason: e.message,
    })
}

/// Checks that `name` is a DNS label (RFC 1123): 1 to 63 characters, lowercase letters,
/// digits and `-`, starting and ending with a letter or digit. Returns the error at
/// `field` if not.
///
/// ```
/// assert!(causeway_api::validate_name("name", "backend-1").is_none());
/// assert_eq!(causeway_api::validate_name("name", "Backend").unwrap().field, "name");
/// ```
pub fn validate_name(field: &str, name: &str) -> Option<FieldError> {
    dns_label(name)
        .err()
        .map(|reason| FieldError::new(field, reason))
}

const DNS_LABEL_RULE: &str =
    "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";

fn dns_label(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > 63 {
        format!("it is {} characters long, more than 63", name.len())
    } else if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        format!("it contains {c:?}")
    } else if name.starts_with('-') || name.ends_with('-') {
        "it starts or ends with '-'".to_owned()
    } else {
        return Ok(());
    };
    Err(format!(
        "{name:?} is not a valid DNS label: {problem}; {DNS_LABEL_RULE}"
    ))
}

/// The readable part of a generated name: `text` lowercased, every character that
/// cannot be in a DNS label turned into `-`, at most `max` characters, without `-` at
/// either end (possibly empty). Callers add a hash of the original, so two texts that
/// look alike here still get different names.
///
/// ```
/// assert_eq!(causeway_api::dns_label_stem("Backend_API.v2", 40), "backend-api-v2");
/// assert_eq!(causeway_api::dns_label_stem("--a--", 3), "a");
/// ```
pub fn dns_label_stem(text: &str, max: usize) -> String {
    let stem: String = text
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(max)
        .collect();
    stem.trim_matches('-').to_owned()
}

/// Checks that `name` is a DNS subdomain (RFC 1123): at most 253 characters of
/// dot-separated DNS labels, e.g. `example.com`. Returns the reason if not.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    let rule = "use dot-separated DNS labels (lowercase letters, digits and '-'), at most 253 characters, like example.com";
    if name.is_empty() {
        return Err(format!("must not be empty; {rule}"));
    }
    if name.len() > 253 {
        return Err(format!(
            "{name:?} is {} characters long, more than 253; {rule}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if let Err(reason) = dns_label(label) {
            let reason = reason.replace(&format!("; {DNS_LABEL_RULE}"), "");
            return Err(format!(
                "{name:?} is not a valid DNS subdomain: {reason}; {rule}"
            ));
        }
    }
    Ok(())
}

const LABEL_NAME_RULE: &str =
    "use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit";

/// The name part of a label key, and label values: `[A-Za-z0-9_.-]`, at most 63,
/// alphanumeric at both ends. Empty is handled by the callers.
fn label_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("it is {} characters long, more than 63", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("it contains {c:?}"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Err("it must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// Checks a label key with Kubernetes rules: an optional DNS-subdomain prefix and `/`,
/// then a name of at most 63 characters of `[A-Za-z0-9-_.]` that starts and ends with a
/// letter or digit (`app`, `example.com/team`). Returns the reason if not.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && let Err(reason) = validate_dns_subdomain(prefix)
    {
        return Err(format!(
            "invalid label key {key:?}: the prefix before '/' {reason}"
        ));
    }
    if name.is_empty() {
        return Err(format!(
            "invalid label key {key:?}: the name is empty; {LABEL_NAME_RULE}"
        ));
    }
    label_name(name)
        .map_err(|problem| format!("invalid label key {key:?}: {problem}; {LABEL_NAME_RULE}"))
}

/// Checks a label value with Kubernetes rules: empty, or at most 63 characters of
/// `[A-Za-z0-9-_.]` that start and end with a letter or digit. Returns the reason if not.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    label_name(value).map_err(|problem| {
        format!("invalid label value {value:?}: {problem}; {LABEL_NAME_RULE}, or leave it empty")
    })
}

#[cfg(test)]
mod tests;
