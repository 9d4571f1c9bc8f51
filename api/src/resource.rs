//! The resource envelope and reading/writing it as YAML or JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::path_de;

/// The envelope every resource shares: what it is (`type`), where it lives (`mesh`),
/// its `name` and `labels`, the type-specific `spec`, and fields the server sets.
///
/// Parsing checks the shape (unknown top-level fields are rejected); [`crate::validate`]
/// checks the content, including the spec against its type.
///
/// ```yaml
/// type: Mesh
/// name: default
/// labels: {team: platform}
/// spec:
///   mtls: {mode: Strict, backend: {type: builtin}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource {
    /// The resource type, e.g. `Mesh`, `Zone`, `MeshTimeout` (see [`crate::types`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The mesh it belongs to. Required for mesh-scoped types, absent for global-scoped
    /// ones (Mesh, Zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// Its name, a DNS label, unique per type (and mesh).
    pub name: String,
    /// Free-form labels, with Kubernetes label syntax.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The type-specific part, kept untyped here; each type's validator decodes it.
    /// Missing or `null` reads as an empty object.
    #[serde(default = "empty_object", deserialize_with = "spec_or_empty")]
    pub spec: Value,
    /// Server-set: the Raft index of the last write. Ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Server-set: when it was created (RFC 3339). Ignored on input.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub creation_time: Option<OffsetDateTime>,
    /// Server-set: when it was last changed (RFC 3339). Ignored on input.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub modification_time: Option<OffsetDateTime>,
    /// Server-set: where it was written, `global` or the name of a zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn spec_or_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?.unwrap_or_else(empty_object))
}

/// What identifies a resource: type, mesh and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The resource type, e.g. `Mesh`.
    pub kind: String,
    /// The mesh, or `""` for global-scoped types.
    pub mesh: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// `Mesh/default` for a global-scoped resource, `MeshTimeout/default/backend` for a
    /// mesh-scoped one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.mesh, self.name)
        }
    }
}

/// A document that is not a well-formed resource: bad YAML/JSON, an unknown or missing
/// envelope field, a value of the wrong type. Says where: the document (for multi-document
/// input), the line and column when known, and the field path when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(self))]
pub struct ParseError {
    /// 1-based index of the document in multi-document YAML, counting empty ones.
    pub document: Option<usize>,
    /// 1-based line in the input.
    pub line: Option<usize>,
    /// 1-based column in the input.
    pub column: Option<usize>,
    /// Dotted path of the offending field, e.g. `labels.app` or `spec`.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

fn render(e: &ParseError) -> String {
    let mut where_ = Vec::new();
    if let Some(document) = e.document {
        where_.push(format!("document {document}"));
    }
    if let (Some(line), Some(column)) = (e.line, e.column) {
        where_.push(format!("line {line} column {column}"));
    }
    let mut out = where_.join(", ");
    if !out.is_empty() {
        out.push_str(": ");
    }
    if let Some(field) = e.field.as_deref().filter(|f| !f.is_empty()) {
        out.push_str(field);
        out.push_str(": ");
    }
    out.push_str(&e.reason);
    out
}

// === impl Resource ===

impl Resource {
    /// A resource with no labels and no server-set fields.
    pub fn new(
        kind: impl Into<String>,
        mesh: Option<&str>,
        name: impl Into<String>,
        spec: Value,
    ) -> Resource {
        Resource {
            kind: kind.into(),
            mesh: mesh.map(str::to_owned),
            name: name.into(),
            labels: BTreeMap::new(),
            spec,
            version: None,
            creation_time: None,
            modification_time: None,
            origin: None,
        }
    }

    /// Parses one YAML document.
    pub fn from_yaml(s: &str) -> Result<Resource, ParseError> {
        match serde_yaml::from_str::<Option<Resource>>(s) {
            Ok(Some(resource)) => Ok(resource),
            Ok(None) => Err(empty_document(None)),
            Err(e) => Err(yaml_error(&e, None, || serde_yaml::from_str(s).ok())),
        }
    }

    /// Parses `---`-separated YAML documents, skipping empty ones. Stops at the first
    /// bad document; the error gives its 1-based position in `s`.
    pub fn from_yaml_documents(s: &str) -> Result<Vec<Resource>, ParseError> {
        let mut resources = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(s).enumerate() {
            match Option::<Resource>::deserialize(document) {
                Ok(Some(resource)) => resources.push(resource),
                Ok(None) => {}
                Err(e) => {
                    return Err(yaml_error(&e, Some(index + 1), || {
                        let document = serde_yaml::Deserializer::from_str(s).nth(index)?;
                        Value::deserialize(document).ok()
                    }));
                }
            }
        }
        Ok(resources)
    }

    /// Parses a JSON object.
    pub fn from_json(s: &[u8]) -> Result<Resource, ParseError> {
        // serde_json would read a struct from an array, by position; a resource is
        // always an object.
        if let Some(at) = s
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .filter(|&at| s[at] == b'[')
        {
            let line = 1 + s[..at].iter().filter(|&&b| b == b'\n').count();
            let column = 1 + at
                - s[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |nl| nl + 1);
            return Err(ParseError {
                document: None,
                line: Some(line),
                column: Some(column),
                field: None,
                reason: "invalid type: sequence, expected struct Resource (a JSON object)"
                    .to_owned(),
            });
        }
        serde_json::from_slice(s).map_err(|e| {
            let (line, column) = if e.line() == 0 {
                (None, None)
            } else {
                (Some(e.line()), Some(e.column()))
            };
            let message = strip_location(&e.to_string(), line, column);
            let (field, reason) = locate(serde_json::from_slice(s).ok(), message);
            ParseError {
                document: None,
                line,
                column,
                field,
                reason,
            }
        })
    }

    /// The resource as a YAML document.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self)
            .expect("a Resource (strings, numbers, maps) always serializes to YAML")
    }

    /// The resource as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("a Resource (string keys, finite numbers) always serializes to JSON")
    }

    /// Its type, mesh (`""` when global-scoped) and name.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind.clone(),
            mesh: self.mesh.clone().unwrap_or_default(),
            name: self.name.clone(),
        }
    }
}

fn empty_document(document: Option<usize>) -> ParseError {
    ParseError {
        document,
        line: None,
        column: None,
        field: None,
        reason: "the document is empty; expected a resource with type, name and spec".to_owned(),
    }
}

/// Builds a [`ParseError`] from a serde_yaml error. serde_yaml knows the line and column
/// but reports the field only inside its message, so when the document is valid YAML we
/// decode it again through [`path_de`] to learn the field path.
fn yaml_error(
    e: &serde_yaml::Error,
    document: Option<usize>,
    reparse: impl FnOnce() -> Option<Value>,
) -> ParseError {
    let location = e.location();
    let line = location.as_ref().map(|l| l.line());
    let column = location.as_ref().map(|l| l.column());
    let message = strip_location(&e.to_string(), line, column);
    let (field, reason) = locate(reparse(), message);
    ParseError {
        document,
        line,
        column,
        field,
        reason,
    }
}

/// The field path and reason for an input that failed to decode as a [`Resource`]: from
/// a path-tracking decode of `value` when there is one, else the parser's own message.
fn locate(value: Option<Value>, message: String) -> (Option<String>, String) {
    match value.map(|v| path_de::from_value::<Resource>(&v, "")) {
        Some(Err(e)) => (e.path.filter(|p| !p.is_empty()), e.message),
        _ => (None, message),
    }
}

/// Removes the " at line L column C" that serde_yaml and serde_json append, since the
/// [`ParseError`] carries the position itself.
fn strip_location(message: &str, line: Option<usize>, column: Option<usize>) -> String {
    if let (Some(line), Some(column)) = (line, column) {
        let suffix = format!(" at line {line} column {column}");
        if let Some(stripped) = message.strip_suffix(&suffix) {
            return stripped.to_owned();
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests;
