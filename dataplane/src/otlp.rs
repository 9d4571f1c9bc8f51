//! The OTLP/gRPC collectors the sidecar sends to (access-log records, spans, metrics):
//! one way to read a collector's `endpoint` and to open a lazy channel to it, so the
//! three senders agree on both.

use std::time::Duration;

use tonic::transport::Channel;

/// An `endpoint` as policies give it (`host:port`, or with a scheme) as a URI.
pub(crate) fn grpc_uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// A channel to the collector at `endpoint` that connects on first use, each connect
/// and call bounded by `timeout`; `None` (logged, naming `what` is dropped) for an
/// endpoint that is not a URI.
pub(crate) fn channel(endpoint: &str, timeout: Duration, what: &str) -> Option<Channel> {
    match tonic::transport::Endpoint::from_shared(grpc_uri(endpoint)) {
        Ok(e) => Some(e.connect_timeout(timeout).timeout(timeout).connect_lazy()),
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, "bad OpenTelemetry endpoint; its {what} are dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_endpoint_without_a_scheme_is_plain_http() {
        assert_eq!(super::grpc_uri("otel:4317"), "http://otel:4317");
        assert_eq!(super::grpc_uri("https://otel:4317"), "https://otel:4317");
    }
}
