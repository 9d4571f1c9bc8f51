//! The MeshAccessLog configurer: where each inbound logs, by caller (`from[]` and
//! `rules`, most specific source first, each merged over the less specific ones, as
//! MeshFaultInjection's), and where each outbound logs (`to[]`). A backend list
//! replaces a less specific one whole; an empty list turns logging off for the
//! callers or destination it covers.
//!
//! Pure: no I/O. A merged configuration that does not decode is a [`ComputeError`].

use causeway_api::proxy_config::{AccessLogFormat, AccessLogSink, CallerAccessLog};
use causeway_api::{
    AccessLogBackend, AccessLogBackendType, AccessLogConf, LogFormat, LogFormatType, Proxy,
    Resource,
};

use super::{ComputeError, caller_source, decode_conf, decode_outbounds};

/// Each inbound's access logs by caller, and each outbound's sinks, in the proxy's order.
pub(crate) type AccessLogs = (Vec<Vec<CallerAccessLog>>, Vec<Vec<AccessLogSink>>);

/// Where the traffic of each of `proxy`'s inbounds (by caller) and outbounds is logged,
/// in its order, in a mesh with `trust_domain`.
pub(crate) fn configure(
    policies: &[Resource],
    proxy: &Proxy,
    trust_domain: &str,
) -> Result<AccessLogs, ComputeError> {
    let effective = causeway_api::effective("MeshAccessLog", policies, proxy)
        .expect("MeshAccessLog is a policy kind");
    let inbounds = proxy
        .inbounds
        .iter()
        .enumerate()
        .map(|(i, ib)| {
            let rules = effective
                .inbounds
                .get(i)
                .map(|c| c.rules.as_slice())
                .unwrap_or_default();
            rules
                .iter()
                .filter_map(|r| caller_source(&r.source, trust_domain).map(|s| (s, r)))
                .map(|(source, rule)| {
                    let conf: AccessLogConf = decode_conf(&rule.conf, || {
                        format!(
                            "the merged MeshAccessLog from[] of inbound {} ({}) (policies {})",
                            ib.port,
                            ib.service,
                            rule.policies.join(", ")
                        )
                    })?;
                    Ok(CallerAccessLog {
                        source,
                        sinks: sinks(&conf),
                    })
                })
                .collect()
        })
        .collect::<Result<_, ComputeError>>()?;
    let outbounds = decode_outbounds::<AccessLogConf>("MeshAccessLog", &effective, proxy)?
        .iter()
        .map(|conf| conf.as_ref().map(sinks).unwrap_or_default())
        .collect();
    Ok((inbounds, outbounds))
}

fn sinks(conf: &AccessLogConf) -> Vec<AccessLogSink> {
    conf.backends.iter().flatten().filter_map(sink).collect()
}

/// A validated backend as the sidecar runs it (validation guarantees the part its type
/// names is there).
fn sink(b: &AccessLogBackend) -> Option<AccessLogSink> {
    Some(match b.kind {
        AccessLogBackendType::File => {
            let f = b.file.as_ref()?;
            AccessLogSink::File {
                path: f.path.clone(),
                format: f.format.as_ref().map(format),
            }
        }
        AccessLogBackendType::Tcp => {
            let t = b.tcp.as_ref()?;
            AccessLogSink::Tcp {
                address: t.address.clone(),
                format: t.format.as_ref().map(format),
            }
        }
        AccessLogBackendType::OpenTelemetry => {
            let o = b.open_telemetry.as_ref()?;
            AccessLogSink::OpenTelemetry {
                endpoint: o.endpoint.clone()?,
                attributes: o
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.value.clone()))
                    .collect(),
            }
        }
    })
}

fn format(f: &LogFormat) -> AccessLogFormat {
    let omit_empty = f.omit_empty_values.unwrap_or(false);
    match f.kind {
        LogFormatType::Plain => AccessLogFormat::Plain {
            line: f.plain.clone().unwrap_or_default(),
            omit_empty,
        },
        LogFormatType::Json => AccessLogFormat::Json {
            fields: f
                .json
                .iter()
                .flatten()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            omit_empty,
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::proxy_config::tests::check_goldens;

    /// Golden cases under `testdata/mesh_access_log/`: (case, zone, dataplane).
    const CASES: &[(&str, &str, &str)] = &[
        // Every caller logged to a file; web, by a more specific policy, to TCP and
        // OpenTelemetry; admin not at all (empty list). The outbound to backend logs
        // JSON to a file.
        (
            "mesh_access_log/by-caller-and-destination",
            "zone-a",
            "web-1",
        ),
    ];

    #[test]
    fn golden_access_logs() {
        check_goldens(CASES, |config| {
            let inbounds: Vec<serde_json::Value> = config
                .inbounds
                .iter()
                .map(|i| serde_json::json!({"port": i.port, "service": i.service, "accessLogs": i.access_logs}))
                .collect();
            let outbounds: Vec<serde_json::Value> = config
                .outbounds
                .iter()
                .map(|o| serde_json::json!({"port": o.port, "service": o.service, "accessLog": o.access_log}))
                .collect();
            serde_yaml::to_string(
                &serde_json::json!({"inbounds": inbounds, "outbounds": outbounds}),
            )
            .expect("YAML")
        });
    }
}
