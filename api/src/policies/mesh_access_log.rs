//! `MeshAccessLog`: access logs to a file, a TCP collector or OpenTelemetry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{Errors, Spec, at, check_host_port, idx};
use crate::target_ref::{
    Conf, FROM_KINDS, PolicyItem, Rule, Sections, TO_KINDS, TargetRef, check_policy,
};

/// The spec of a `MeshAccessLog`.
///
/// ```yaml
/// type: MeshAccessLog
/// mesh: default
/// name: everything-to-otel
/// spec:
///   from:
///     - targetRef: {kind: Mesh}
///       default:
///         backends:
///           - type: OpenTelemetry
///             openTelemetry: {endpoint: "otel-collector.observability:4317"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshAccessLogSpec {
    /// The proxies that log. Default `{kind: Mesh}`.
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Logging of traffic the proxies receive, by source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyItem<AccessLogConf>>,
    /// Logging of all traffic the proxies receive (Kuma 2.9+ `rules`; each acts as a
    /// `from[]` entry for `{kind: Mesh}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule<AccessLogConf>>,
    /// Logging of traffic the proxies send, by destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyItem<AccessLogConf>>,
}

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[derive(Default)]
pub struct AccessLogConf {
    /// The backends; every entry gets every log line. A more specific policy's list
    /// replaces a less specific one's; an empty list turns logging off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<AccessLogBackend>>,
}

/// One log backend, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogBackend {
    /// `File`, `Tcp` or `OpenTelemetry`.
    #[serde(rename = "type")]
    pub kind: AccessLogBackendType,
    /// For `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    /// For `Tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
    /// For `OpenTelemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OtelLogBackend>,
}

/// Backend types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AccessLogBackendType {
    /// A file on the proxy's host.
    File,
    /// Lines sent over TCP (to Logstash, Vector, Fluent Bit).
    Tcp,
    /// OTLP/gRPC log records.
    OpenTelemetry,
}

/// A log file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileBackend {
    /// An absolute path; `/dev/stdout` logs to the proxy's output.
    pub path: String,
    /// The line format. Built-in default: the plain default format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// A TCP log collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpBackend {
    /// `host:port` of the collector.
    pub address: String,
    /// The line format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// An OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelLogBackend {
    /// `host:port` of the collector's OTLP/gRPC endpoint. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Kuma 2.14's reference to a MeshOpenTelemetryBackend. Refused: Causeway has no
    /// MeshOpenTelemetryBackend yet; give the collector as `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<serde_json::Value>,
    /// Attributes added to every record; values may use `%COMMAND%` operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<KeyValue>,
}

/// A log line format, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogFormat {
    /// `Plain` or `Json`.
    #[serde(rename = "type")]
    pub kind: LogFormatType,
    /// For `Plain`: the line, with `%COMMAND%` operators like `%START_TIME%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
    /// For `Json`: the fields, each with a `%COMMAND%` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<KeyValue>>,
    /// Leave out fields whose value is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_empty_values: Option<bool>,
}

/// Format types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LogFormatType {
    /// A text line.
    Plain,
    /// A JSON object per line.
    Json,
}

/// A key and a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A template's operators must be ones the sidecar prints.
fn check_template(errors: &mut Errors, path: String, text: &str) {
    if let Err(e) = crate::access_log_format::Template::parse(text) {
        errors.push(path, e.to_string());
    }
}

fn check_format(errors: &mut Errors, path: &str, f: &Option<LogFormat>) {
    let Some(f) = f else { return };
    let path = at(path, "format");
    match f.kind {
        LogFormatType::Plain => {
            if f.json.is_some() {
                errors.push(at(&path, "json"), "must not be set for type Plain");
            }
            match &f.plain {
                None => errors.push(at(&path, "plain"), "is required for type Plain"),
                Some(p) => {
                    errors.non_empty(at(&path, "plain"), p);
                    check_template(errors, at(&path, "plain"), p);
                }
            }
        }
        LogFormatType::Json => {
            if f.plain.is_some() {
                errors.push(at(&path, "plain"), "must not be set for type Json");
            }
            match &f.json {
                None => errors.push(at(&path, "json"), "is required for type Json"),
                Some(fields) => {
                    for (i, kv) in fields.iter().enumerate() {
                        let field = idx(&at(&path, "json"), i);
                        errors.non_empty(at(&field, "key"), &kv.key);
                        check_template(errors, at(&field, "value"), &kv.value);
                    }
                }
            }
        }
    }
}

impl Conf for AccessLogConf {
    fn check(&self, errors: &mut Errors, path: &str) {
        for (i, b) in self.backends.iter().flatten().enumerate() {
            let path = idx(&at(path, "backends"), i);
            let wanted = match b.kind {
                AccessLogBackendType::File => "file",
                AccessLogBackendType::Tcp => "tcp",
                AccessLogBackendType::OpenTelemetry => "openTelemetry",
            };
            for (field, set) in [
                ("file", b.file.is_some()),
                ("tcp", b.tcp.is_some()),
                ("openTelemetry", b.open_telemetry.is_some()),
            ] {
                if set && field != wanted {
                    errors.push(
                        at(&path, field),
                        format!("must not be set for type {:?}; set only {wanted}", b.kind),
                    );
                } else if !set && field == wanted {
                    errors.push(
                        at(&path, field),
                        format!("is required for type {:?}", b.kind),
                    );
                }
            }
            if let Some(file) = &b.file {
                let path = at(&path, "file");
                if !file.path.starts_with('/') {
                    errors.push(
                        at(&path, "path"),
                        format!("must be an absolute path (got {:?})", file.path),
                    );
                }
                check_format(errors, &path, &file.format);
            }
            if let Some(tcp) = &b.tcp {
                let path = at(&path, "tcp");
                errors.check(at(&path, "address"), check_host_port(&tcp.address));
                check_format(errors, &path, &tcp.format);
            }
            if let Some(otel) = &b.open_telemetry {
                let path = at(&path, "openTelemetry");
                crate::policies::check_otel_endpoint(
                    errors,
                    &path,
                    &otel.endpoint,
                    &otel.backend_ref,
                );
                for (j, kv) in otel.attributes.iter().enumerate() {
                    let field = idx(&at(&path, "attributes"), j);
                    errors.non_empty(at(&field, "key"), &kv.key);
                    check_template(errors, at(&field, "value"), &kv.value);
                }
            }
        }
    }
}

impl Spec for MeshAccessLogSpec {
    fn check(&self, errors: &mut Errors) {
        check_policy(
            errors,
            &self.target_ref,
            Sections {
                rules: Some(&self.rules),
                from: Some((&self.from, FROM_KINDS)),
                to: Some((&self.to, TO_KINDS)),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policies::test_util::table;

    fn to(default: serde_json::Value) -> serde_json::Value {
        json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": default}]})
    }

    #[test]
    fn validation_table() {
        table::<MeshAccessLogSpec>(
            &[
                to(json!({"backends": [
                    {"type": "File", "file": {"path": "/dev/stdout", "format": {"type": "Plain", "plain": "[%START_TIME%] %KUMA_SOURCE_SERVICE%"}}},
                    {"type": "Tcp", "tcp": {"address": "logstash.logging:5000", "format": {"type": "Json", "json": [{"key": "start", "value": "%START_TIME%"}], "omitEmptyValues": true}}},
                    {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector:4317", "attributes": [{"key": "mesh", "value": "default"}]}}]})),
                json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": []}}]}),
            ],
            &[
                (
                    to(json!({"backends": [{"type": "File", "tcp": {"address": "x:1"}}]})),
                    &[
                        (
                            "spec.to[0].default.backends[0].file",
                            "is required for type File",
                        ),
                        (
                            "spec.to[0].default.backends[0].tcp",
                            "must not be set for type File; set only file",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"backends": [{"type": "File", "file": {"path": "logs/access.log"}}]}),
                    ),
                    &[(
                        "spec.to[0].default.backends[0].file.path",
                        "must be an absolute path",
                    )],
                ),
                (
                    to(
                        json!({"backends": [{"type": "Tcp", "tcp": {"address": "logstash", "format": {"type": "Json", "plain": "x"}}}]}),
                    ),
                    &[
                        ("spec.to[0].default.backends[0].tcp.address", "has no port"),
                        (
                            "spec.to[0].default.backends[0].tcp.format.plain",
                            "must not be set for type Json",
                        ),
                        (
                            "spec.to[0].default.backends[0].tcp.format.json",
                            "is required for type Json",
                        ),
                    ],
                ),
                (
                    to(
                        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:0"}}]}),
                    ),
                    &[(
                        "spec.to[0].default.backends[0].openTelemetry.endpoint",
                        "invalid port",
                    )],
                ),
                (
                    to(
                        json!({"backends": [{"type": "File", "file": {"path": "/tmp/a.log", "format": {"type": "Plain", "plain": "%UPSTREAM_WIRE_BYTES_SENT%"}}},
                                            {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317", "attributes": [{"key": "a", "value": "%REQ()%"}]}}]}),
                    ),
                    &[
                        (
                            "spec.to[0].default.backends[0].file.format.plain",
                            "%UPSTREAM_WIRE_BYTES_SENT% is not an operator Causeway knows",
                        ),
                        (
                            "spec.to[0].default.backends[1].openTelemetry.attributes[0].value",
                            "needs a header name",
                        ),
                    ],
                ),
                (
                    to(json!({"backends": [{"type": "Syslog"}]})),
                    &[(
                        "spec.to[0].default.backends[0].type",
                        "unknown variant `Syslog`",
                    )],
                ),
            ],
        );
    }

    /// Kuma 2.9+ `rules`: the access log of all inbound traffic.
    #[test]
    fn rules_table() {
        table::<MeshAccessLogSpec>(
            &[
                json!({"targetRef": {"kind": "Dataplane", "labels": {"app": "backend"}},
                     "rules": [{"default": {"backends": [{"type": "File", "file": {"path": "/dev/stdout"}}]}}]}),
            ],
            &[(
                json!({"rules": [{"default": {"backends": [{"type": "File"}]}}]}),
                &[(
                    "spec.rules[0].default.backends[0].file",
                    "is required for type File",
                )],
            )],
        );
    }
}
