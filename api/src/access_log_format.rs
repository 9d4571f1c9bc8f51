//! Access-log templates: the `%COMMAND%` operators of MeshAccessLog's formats, parsed
//! once. The operators are Envoy's names where Envoy has one (`%START_TIME%`,
//! `%REQ(X?Y):N%`, `%RESPONSE_CODE%`, `%DURATION%`...), Kuma's (`%KUMA_MESH%`,
//! `%KUMA_SOURCE_SERVICE%`...), and Causeway's own for what neither names
//! (`%CAUSEWAY_SOURCE_ZONE%`...). An operator the sidecar does not know is refused when
//! the policy is written, never printed as nothing: [`Template::parse`] is what
//! validation and the sidecar both use.

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text printed as it is.
    Literal(String),
    /// A value of the entry.
    Op(Operator),
}

/// A value an access-log entry can print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// When the request (or connection) started, RFC 3339 UTC with milliseconds.
    StartTime,
    /// A request header: the first of `names` present (lower case; `:method`,
    /// `:path`, `:authority`, `:scheme` are the request line's parts), cut to
    /// `max_len` characters.
    Req(HeaderOp),
    /// A response header.
    Resp(HeaderOp),
    /// A response trailer.
    Trailer(HeaderOp),
    /// The HTTP status answered (0 for a TCP connection).
    ResponseCode,
    /// Why the sidecar answered itself (its `x-causeway-error` label), else empty.
    ResponseFlags,
    /// Body bytes received from the downstream (the caller).
    BytesReceived,
    /// Body bytes sent to the downstream.
    BytesSent,
    /// Milliseconds from the start to the last byte sent.
    Duration,
    /// Milliseconds from the start to the response's head.
    ResponseDuration,
    /// `HTTP/1.1`, `HTTP/2`; empty for TCP.
    Protocol,
    /// The address the request went to: the endpoint (outbound) or the application
    /// (inbound).
    UpstreamHost,
    /// The destination service.
    UpstreamCluster,
    /// The caller's address and port.
    DownstreamRemoteAddress,
    /// The caller's address.
    DownstreamRemoteAddressWithoutPort,
    /// The address the caller connected to.
    DownstreamLocalAddress,
    /// The caller's SPIFFE id, when its certificate proved one (inbound).
    DownstreamPeerUriSan,
    /// The destination's SPIFFE id (outbound).
    UpstreamPeerUriSan,
    /// The `grpc-status` as its name (`OK`, `UNAVAILABLE`...).
    GrpcStatus,
    /// The `grpc-status` as its number.
    GrpcStatusNumber,
    /// The MeshHTTPRoute the request took.
    RouteName,
    /// The trace id (W3C `traceparent`, else B3 `x-b3-traceid`).
    TraceId,
    /// The mesh.
    KumaMesh,
    /// The calling service.
    KumaSourceService,
    /// The called service.
    KumaDestinationService,
    /// The caller's address and port.
    KumaSourceAddress,
    /// The caller's address.
    KumaSourceAddressWithoutPort,
    /// `INBOUND` or `OUTBOUND`.
    KumaTrafficDirection,
    /// The zone of the proxy that logs.
    CausewayZone,
    /// The caller's zone.
    CausewaySourceZone,
    /// The zone of the endpoint that answered.
    CausewayDestinationZone,
    /// The caller's SPIFFE id (inbound: from its certificate; outbound: this proxy's).
    CausewaySourceIdentity,
    /// The destination's SPIFFE id.
    CausewayDestinationIdentity,
    /// The name of the Dataplane that logs.
    CausewayDataplane,
}

/// A header operator's names (alternatives, lower case) and length cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    pub names: Vec<String>,
    pub max_len: Option<usize>,
}

/// Operators without an argument, by name.
const SIMPLE: &[(&str, Operator)] = &[
    ("START_TIME", Operator::StartTime),
    ("RESPONSE_CODE", Operator::ResponseCode),
    ("RESPONSE_FLAGS", Operator::ResponseFlags),
    ("BYTES_RECEIVED", Operator::BytesReceived),
    ("BYTES_SENT", Operator::BytesSent),
    ("DURATION", Operator::Duration),
    ("RESPONSE_DURATION", Operator::ResponseDuration),
    ("PROTOCOL", Operator::Protocol),
    ("UPSTREAM_HOST", Operator::UpstreamHost),
    ("UPSTREAM_CLUSTER", Operator::UpstreamCluster),
    (
        "DOWNSTREAM_REMOTE_ADDRESS",
        Operator::DownstreamRemoteAddress,
    ),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Operator::DownstreamRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_ADDRESS", Operator::DownstreamLocalAddress),
    ("DOWNSTREAM_PEER_URI_SAN", Operator::DownstreamPeerUriSan),
    ("UPSTREAM_PEER_URI_SAN", Operator::UpstreamPeerUriSan),
    ("GRPC_STATUS", Operator::GrpcStatus),
    ("GRPC_STATUS_NUMBER", Operator::GrpcStatusNumber),
    ("ROUTE_NAME", Operator::RouteName),
    ("TRACE_ID", Operator::TraceId),
    ("KUMA_MESH", Operator::KumaMesh),
    ("KUMA_SOURCE_SERVICE", Operator::KumaSourceService),
    ("KUMA_DESTINATION_SERVICE", Operator::KumaDestinationService),
    ("KUMA_SOURCE_ADDRESS", Operator::KumaSourceAddress),
    (
        "KUMA_SOURCE_ADDRESS_WITHOUT_PORT",
        Operator::KumaSourceAddressWithoutPort,
    ),
    ("KUMA_TRAFFIC_DIRECTION", Operator::KumaTrafficDirection),
    ("CAUSEWAY_ZONE", Operator::CausewayZone),
    ("CAUSEWAY_SOURCE_ZONE", Operator::CausewaySourceZone),
    (
        "CAUSEWAY_DESTINATION_ZONE",
        Operator::CausewayDestinationZone,
    ),
    ("CAUSEWAY_SOURCE_IDENTITY", Operator::CausewaySourceIdentity),
    (
        "CAUSEWAY_DESTINATION_IDENTITY",
        Operator::CausewayDestinationIdentity,
    ),
    ("CAUSEWAY_DATAPLANE", Operator::CausewayDataplane),
];

/// The built-in line of an HTTP request's entry (Kuma's default, with zones, route and
/// trace id).
pub const DEFAULT_HTTP_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% %KUMA_TRAFFIC_DIRECTION% \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%CAUSEWAY_SOURCE_ZONE%\" \"%CAUSEWAY_DESTINATION_ZONE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\" \"%ROUTE_NAME%\" \"%TRACE_ID%\"";

/// The built-in line of a TCP connection's entry (Kuma's default).
pub const DEFAULT_TCP_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes";

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Segment>);

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    /// Parses `text`. A `%` that does not start an operator (`100%`, `%%`) is text.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match command(after)? {
                Some((op, used)) => {
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Op(op));
                    rest = &after[used..];
                }
                None => {
                    literal.push('%');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template(segments))
    }

    /// The operator, when the template is exactly one (a JSON field's value is then
    /// typed: a number for a count).
    pub fn single(&self) -> Option<&Operator> {
        match self.0.as_slice() {
            [Segment::Op(op)] => Some(op),
            _ => None,
        }
    }
}

/// The operator at the start of `s` (just after a `%`) and how many bytes it used up
/// to and including its closing `%`; `None` when `s` does not start with one.
fn command(s: &str) -> Result<Option<(Operator, usize)>, TemplateError> {
    let name_len = s
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || *b == b'_' || b.is_ascii_digit())
        .count();
    if name_len == 0 {
        return Ok(None);
    }
    let name = &s[..name_len];
    let mut used = name_len;
    let mut arg = None;
    if s[used..].starts_with('(') {
        let Some(close) = s[used..].find(')') else {
            return Err(TemplateError(format!(
                "%{name}( has no closing parenthesis"
            )));
        };
        arg = Some(&s[used + 1..used + close]);
        used += close + 1;
    }
    let mut max_len = None;
    if let Some(tail) = s[used..].strip_prefix(':') {
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            max_len = tail[..digits].parse().ok();
            used += 1 + digits;
        }
    }
    if !s[used..].starts_with('%') {
        if arg.is_none() && max_len.is_none() {
            // `%ABC def`: not an operator.
            return Ok(None);
        }
        return Err(TemplateError(format!("%{name}: no closing %")));
    }
    used += 1;
    let header = |what: &str| -> Result<HeaderOp, TemplateError> {
        let arg = arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| TemplateError(format!("%{what}(...)% needs a header name")))?;
        Ok(HeaderOp {
            names: arg.split('?').map(str::to_ascii_lowercase).collect(),
            max_len,
        })
    };
    let op = match name {
        "REQ" => Operator::Req(header("REQ")?),
        "RESP" => Operator::Resp(header("RESP")?),
        "TRAILER" => Operator::Trailer(header("TRAILER")?),
        _ => {
            let Some((_, op)) = SIMPLE.iter().find(|(n, _)| *n == name) else {
                return Err(TemplateError(format!(
                    "%{name}% is not an operator Causeway knows; known: REQ(X), RESP(X), TRAILER(X), {}",
                    SIMPLE
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if arg.is_some() {
                return Err(TemplateError(format!(
                    "%{name}% takes no argument (custom START_TIME formats are not supported)"
                )));
            }
            op.clone()
        }
    };
    Ok(Some((op, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_literals_and_stray_percent_signs_parse() {
        let t = Template::parse("[%START_TIME%] 100% %REQ(X-A?:PATH):8% %% %KUMA_MESH%").unwrap();
        assert_eq!(
            t.0,
            vec![
                Segment::Literal("[".into()),
                Segment::Op(Operator::StartTime),
                Segment::Literal("] 100% ".into()),
                Segment::Op(Operator::Req(HeaderOp {
                    names: vec!["x-a".into(), ":path".into()],
                    max_len: Some(8)
                })),
                Segment::Literal(" %% ".into()),
                Segment::Op(Operator::KumaMesh),
            ]
        );
        assert_eq!(
            Template::parse("%DURATION%").unwrap().single(),
            Some(&Operator::Duration)
        );
    }

    #[test]
    fn unknown_operators_and_bad_arguments_are_refused_with_the_reason() {
        for (text, reason) in [
            (
                "%UPSTREAM_WIRE_BYTES_SENT%",
                "not an operator Causeway knows",
            ),
            ("%REQ()%", "needs a header name"),
            ("%REQ(X-A", "no closing parenthesis"),
            ("%START_TIME(%s)%", "takes no argument"),
            ("%REQ(A):3", "no closing %"),
            ("%DURATION(x)%", "takes no argument"),
        ] {
            let e = Template::parse(text).unwrap_err().to_string();
            assert!(e.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn the_default_formats_parse() {
        Template::parse(DEFAULT_HTTP_FORMAT).unwrap();
        Template::parse(DEFAULT_TCP_FORMAT).unwrap();
    }
}
