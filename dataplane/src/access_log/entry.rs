//! One access-log entry and how a template prints it. Pure: an entry is data, and
//! [`render_plain`] / [`render_json`] are tested without sockets or clocks.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_api::access_log_format::{HeaderOp, Operator, Segment, Template};

/// What one listener's entries share: who logs, and which traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Context {
    pub(crate) mesh: String,
    pub(crate) zone: String,
    pub(crate) dataplane: String,
    /// `INBOUND` or `OUTBOUND`.
    pub(crate) direction: &'static str,
    /// The service this proxy runs for (its first inbound's).
    pub(crate) own_service: String,
    /// This proxy's SPIFFE id.
    pub(crate) own_identity: Option<String>,
    /// The listener's service: this proxy's own (inbound) or the destination
    /// (outbound).
    pub(crate) service: String,
    /// The destination's SPIFFE id (outbound).
    pub(crate) destination_identity: Option<String>,
}

/// An HTTP exchange's parts.
#[derive(Debug, Default)]
pub(crate) struct Http {
    pub(crate) method: http::Method,
    /// The request target's path and query, authority and scheme.
    pub(crate) path: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) scheme: Option<&'static str>,
    pub(crate) version: http::Version,
    pub(crate) request: http::HeaderMap,
    pub(crate) status: u16,
    pub(crate) response: http::HeaderMap,
    pub(crate) trailers: Option<http::HeaderMap>,
    /// From the start to the response's head.
    pub(crate) response_duration: Option<Duration>,
}

/// One HTTP request or TCP connection.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) context: Arc<Context>,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    /// None: a TCP connection.
    pub(crate) http: Option<Http>,
    /// Inbound: the caller's SPIFFE id, from its certificate.
    pub(crate) peer: Option<String>,
    pub(crate) source_zone: Option<String>,
    pub(crate) destination_zone: Option<String>,
    pub(crate) downstream_remote: Option<SocketAddr>,
    pub(crate) downstream_local: Option<SocketAddr>,
    pub(crate) upstream_host: Option<String>,
    pub(crate) route: Option<String>,
    /// Why the proxy answered or closed itself (its `x-causeway-error` label).
    pub(crate) flags: Option<String>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
}

/// A value an operator prints.
#[derive(Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Empty,
    Text(std::borrow::Cow<'a, str>),
    Number(u64),
}

impl Entry {
    fn source_identity(&self) -> Option<&str> {
        match self.context.direction {
            "INBOUND" => self.peer.as_deref(),
            _ => self.context.own_identity.as_deref(),
        }
    }

    fn source_service(&self) -> Option<&str> {
        match self.context.direction {
            "INBOUND" => self.peer.as_deref().map(service_of),
            _ => Some(&self.context.own_service),
        }
    }

    fn destination_identity(&self) -> Option<&str> {
        match self.context.direction {
            "INBOUND" => self.context.own_identity.as_deref(),
            _ => self.context.destination_identity.as_deref(),
        }
    }

    fn grpc_status(&self) -> Option<u64> {
        let http = self.http.as_ref()?;
        let v = http
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| http.response.get("grpc-status"))?;
        v.to_str().ok()?.parse().ok()
    }

    fn trace_id(&self) -> Option<&str> {
        let headers = &self.http.as_ref()?.request;
        // W3C: version-traceid-parentid-flags.
        if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            let id = tp.split('-').nth(1)?;
            return (id.len() == 32).then_some(id);
        }
        headers.get("x-b3-traceid")?.to_str().ok()
    }

    /// What `op` prints for this entry.
    pub(crate) fn value(&self, op: &Operator) -> Value<'_> {
        use Operator as O;
        fn text(s: Option<&str>) -> Value<'_> {
            match s {
                Some(s) if !s.is_empty() => Value::Text(s.into()),
                _ => Value::Empty,
            }
        }
        let millis = |d: Duration| Value::Number(d.as_millis() as u64);
        let http = self.http.as_ref();
        match op {
            O::StartTime => Value::Text(rfc3339_millis(self.start).into()),
            O::Req(h) => http.map_or(Value::Empty, |x| request_header(x, h)),
            O::Resp(h) => http.map_or(Value::Empty, |x| header(&x.response, h)),
            O::Trailer(h) => http
                .and_then(|x| x.trailers.as_ref())
                .map_or(Value::Empty, |t| header(t, h)),
            O::ResponseCode => Value::Number(http.map_or(0, |x| u64::from(x.status))),
            O::ResponseFlags => text(self.flags.as_deref()),
            O::BytesReceived => Value::Number(self.bytes_received),
            O::BytesSent => Value::Number(self.bytes_sent),
            O::Duration => millis(self.duration),
            O::ResponseDuration => http
                .and_then(|x| x.response_duration)
                .map_or(Value::Empty, millis),
            O::Protocol => match http.map(|x| x.version) {
                Some(http::Version::HTTP_10) => Value::Text("HTTP/1.0".into()),
                Some(http::Version::HTTP_11) => Value::Text("HTTP/1.1".into()),
                Some(http::Version::HTTP_2) => Value::Text("HTTP/2".into()),
                Some(http::Version::HTTP_3) => Value::Text("HTTP/3".into()),
                _ => Value::Empty,
            },
            O::UpstreamHost => text(self.upstream_host.as_deref()),
            O::UpstreamCluster | O::KumaDestinationService => text(Some(&self.context.service)),
            O::DownstreamRemoteAddress | O::KumaSourceAddress => self
                .downstream_remote
                .map_or(Value::Empty, |a| Value::Text(a.to_string().into())),
            O::DownstreamRemoteAddressWithoutPort | O::KumaSourceAddressWithoutPort => self
                .downstream_remote
                .map_or(Value::Empty, |a| Value::Text(a.ip().to_string().into())),
            O::DownstreamLocalAddress => self
                .downstream_local
                .map_or(Value::Empty, |a| Value::Text(a.to_string().into())),
            O::DownstreamPeerUriSan => text(self.peer.as_deref()),
            O::UpstreamPeerUriSan => text(self.context.destination_identity.as_deref()),
            O::GrpcStatus => self
                .grpc_status()
                .map_or(Value::Empty, |s| Value::Text(grpc_status_name(s).into())),
            O::GrpcStatusNumber => self.grpc_status().map_or(Value::Empty, Value::Number),
            O::RouteName => text(self.route.as_deref()),
            O::TraceId => text(self.trace_id()),
            O::KumaMesh => text(Some(&self.context.mesh)),
            O::KumaSourceService => text(self.source_service()),
            O::KumaTrafficDirection => Value::Text(self.context.direction.into()),
            O::CausewayZone => text(Some(&self.context.zone)),
            O::CausewaySourceZone => match self.context.direction {
                "OUTBOUND" => text(Some(&self.context.zone)),
                _ => text(self.source_zone.as_deref()),
            },
            O::CausewayDestinationZone => match self.context.direction {
                "INBOUND" => text(Some(&self.context.zone)),
                _ => text(self.destination_zone.as_deref()),
            },
            O::CausewaySourceIdentity => text(self.source_identity()),
            O::CausewayDestinationIdentity => text(self.destination_identity()),
            O::CausewayDataplane => text(Some(&self.context.dataplane)),
        }
    }
}

impl Value<'_> {
    /// The value as text, if it has one.
    pub(crate) fn text(self) -> Option<String> {
        match self {
            Value::Empty => None,
            Value::Text(s) => Some(s.into_owned()),
            Value::Number(n) => Some(n.to_string()),
        }
    }
}

fn service_of(spiffe: &str) -> &str {
    spiffe.rsplit('/').next().unwrap_or(spiffe)
}

/// A request header, the request line's parts by their pseudo-header names.
fn request_header<'a>(http: &'a Http, op: &HeaderOp) -> Value<'a> {
    for name in &op.names {
        let v: Option<std::borrow::Cow<'a, str>> = match name.as_str() {
            ":method" => Some(http.method.as_str().into()),
            ":path" => http.path.as_deref().map(Into::into),
            ":authority" => http.authority.as_deref().map(Into::into).or_else(|| {
                http.request
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(Into::into)
            }),
            ":scheme" => http.scheme.map(Into::into),
            n => http
                .request
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(Into::into),
        };
        if let Some(v) = v {
            return cut(v, op.max_len);
        }
    }
    Value::Empty
}

fn header<'a>(headers: &'a http::HeaderMap, op: &HeaderOp) -> Value<'a> {
    op.names
        .iter()
        .find_map(|n| headers.get(n.as_str())?.to_str().ok())
        .map_or(Value::Empty, |v| cut(v.into(), op.max_len))
}

fn cut(v: std::borrow::Cow<'_, str>, max: Option<usize>) -> Value<'_> {
    match max {
        Some(max) if v.chars().count() > max => {
            Value::Text(v.chars().take(max).collect::<String>().into())
        }
        _ if v.is_empty() => Value::Empty,
        _ => Value::Text(v),
    }
}

/// `2026-12-06T01:02:03.456Z`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// gRPC's name of a status code.
fn grpc_status_name(code: u64) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The headers a set of templates reads: request headers, and response headers and
/// trailers (lower case). The entry keeps only these (and what the sidecar reads
/// itself: the trace id's, `grpc-status` and its own error label).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) request: Vec<http::HeaderName>,
    pub(crate) response: Vec<http::HeaderName>,
}

impl Wanted {
    /// What `templates` read.
    pub(crate) fn of<'a>(templates: impl IntoIterator<Item = &'a Template>) -> Wanted {
        let mut request = vec!["traceparent", "x-b3-traceid"];
        let response = vec!["grpc-status", "x-causeway-error"];
        let mut requested = Vec::new();
        let mut responded = Vec::new();
        for t in templates {
            for segment in &t.0 {
                match segment {
                    Segment::Op(Operator::Req(h)) => requested.extend(h.names.iter().cloned()),
                    Segment::Op(Operator::Resp(h) | Operator::Trailer(h)) => {
                        responded.extend(h.names.iter().cloned());
                    }
                    _ => {}
                }
            }
        }
        if requested.iter().any(|n| n == ":authority") {
            request.push("host");
        }
        let names = |fixed: Vec<&str>, named: Vec<String>| {
            let mut all: Vec<http::HeaderName> = fixed
                .into_iter()
                .map(String::from)
                .chain(named)
                .filter(|n| !n.starts_with(':'))
                .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            all.dedup();
            all
        };
        Wanted {
            request: names(request, requested),
            response: names(response, responded),
        }
    }

    /// Joins another set.
    pub(crate) fn add(&mut self, other: &Wanted) {
        for (mine, theirs) in [
            (&mut self.request, &other.request),
            (&mut self.response, &other.response),
        ] {
            mine.extend(theirs.iter().cloned());
            mine.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            mine.dedup();
        }
    }

    /// A copy of the `names` of `headers`, holding nothing else: a parsed header value
    /// shares its connection's read buffer, so an entry keeping it would keep the whole
    /// buffer alive until the flush (measured: 48 and 72 MiB peak RSS instead of 16
    /// under the sidecar bench), and copying every header cost a fifth of the
    /// throughput.
    pub(crate) fn pick(names: &[http::HeaderName], headers: &http::HeaderMap) -> http::HeaderMap {
        let mut copy = http::HeaderMap::new();
        for name in names {
            for value in headers.get_all(name) {
                if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                    copy.append(name.clone(), value);
                }
            }
        }
        copy
    }
}

/// Prints a plain line into `out` (no newline). An empty value is `-`, or nothing
/// with `omit_empty`.
pub(crate) fn render_plain(template: &Template, omit_empty: bool, entry: &Entry, out: &mut String) {
    for segment in &template.0 {
        match segment {
            Segment::Literal(s) => out.push_str(s),
            Segment::Op(op) => match entry.value(op) {
                Value::Empty if omit_empty => {}
                Value::Empty => out.push('-'),
                Value::Text(s) => out.push_str(&s),
                Value::Number(n) => {
                    let _ = write!(out, "{n}");
                }
            },
        }
    }
}

/// Prints a JSON object into `out` (no newline). A field that is one operator keeps
/// its type (a number stays a number); an empty one is `null`, or left out with
/// `omit_empty`.
pub(crate) fn render_json(
    fields: &[(String, Template)],
    omit_empty: bool,
    entry: &Entry,
    out: &mut String,
) {
    // In the policy's order (a serde_json map would sort the keys).
    out.push('{');
    let mut first = true;
    for (key, template) in fields {
        let value = match template.single() {
            Some(op) => match entry.value(op) {
                Value::Empty => serde_json::Value::Null,
                Value::Text(s) => serde_json::Value::String(s.into_owned()),
                Value::Number(n) => serde_json::Value::from(n),
            },
            None => {
                let mut s = String::new();
                render_plain(template, omit_empty, entry, &mut s);
                serde_json::Value::String(s)
            }
        };
        if omit_empty && value.is_null() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{}:{value}", serde_json::Value::String(key.clone()));
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut request = http::HeaderMap::new();
        request.insert("user-agent", "curl/8".parse().unwrap());
        request.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        Entry {
            context: Arc::new(Context {
                mesh: "default".into(),
                zone: "zone-b".into(),
                dataplane: "backend-1".into(),
                direction: "INBOUND",
                own_service: "backend".into(),
                own_identity: Some("spiffe://default/backend".into()),
                service: "backend".into(),
                destination_identity: None,
            }),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123),
            duration: Duration::from_millis(42),
            http: Some(Http {
                method: http::Method::POST,
                path: Some("/items?x=1".into()),
                authority: Some("backend:8080".into()),
                scheme: Some("http"),
                version: http::Version::HTTP_2,
                request,
                status: 200,
                response: http::HeaderMap::new(),
                trailers: Some(trailers),
                response_duration: Some(Duration::from_millis(40)),
            }),
            peer: Some("spiffe://default/web".into()),
            source_zone: Some("zone-a".into()),
            destination_zone: None,
            downstream_remote: Some("10.0.0.9:51000".parse().unwrap()),
            downstream_local: None,
            upstream_host: Some("127.0.0.1:9000".into()),
            route: None,
            flags: None,
            bytes_received: 12,
            bytes_sent: 3400,
        }
    }

    fn plain(text: &str, omit: bool) -> String {
        let mut out = String::new();
        render_plain(&Template::parse(text).unwrap(), omit, &entry(), &mut out);
        out
    }

    #[test]
    fn a_plain_line_prints_each_operator_and_dashes_for_empty_values() {
        assert_eq!(
            plain(
                "[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %GRPC_STATUS% %GRPC_STATUS_NUMBER% %ROUTE_NAME% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESPONSE_DURATION%",
                false
            ),
            "[2026-11-30T00:53:20.123Z] POST /items?x=1 HTTP/2 200 UNAVAILABLE 14 - 12 3400 42 40"
        );
        assert_eq!(
            plain(
                "%KUMA_SOURCE_SERVICE%@%CAUSEWAY_SOURCE_ZONE% -> %KUMA_DESTINATION_SERVICE%@%CAUSEWAY_DESTINATION_ZONE% %CAUSEWAY_SOURCE_IDENTITY% %DOWNSTREAM_PEER_URI_SAN% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% %TRACE_ID% %KUMA_TRAFFIC_DIRECTION%",
                false
            ),
            "web@zone-a -> backend@zone-b spiffe://default/web spiffe://default/web 10.0.0.9 127.0.0.1:9000 4bf92f3577b34da6a3ce929d0e0e4736 INBOUND"
        );
        assert_eq!(plain("a=%ROUTE_NAME%;", true), "a=;");
        assert_eq!(plain("%REQ(X-MISSING?USER-AGENT):3%", false), "cur");
    }

    #[test]
    fn a_json_line_keeps_numbers_numbers_and_nulls_or_omits_empty_values() {
        let fields: Vec<(String, Template)> = [
            ("status", "%RESPONSE_CODE%"),
            ("path", "%REQ(:PATH)%"),
            ("route", "%ROUTE_NAME%"),
            ("pair", "%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE%"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Template::parse(v).unwrap()))
        .collect();
        let mut out = String::new();
        render_json(&fields, false, &entry(), &mut out);
        assert_eq!(
            out,
            r#"{"status":200,"path":"/items?x=1","route":null,"pair":"web->backend"}"#
        );
        let mut out = String::new();
        render_json(&fields, true, &entry(), &mut out);
        assert_eq!(
            out,
            r#"{"status":200,"path":"/items?x=1","pair":"web->backend"}"#
        );
    }

    #[test]
    fn an_entry_keeps_the_headers_its_templates_read_and_the_sidecars_own() {
        let t = Template::parse(
            "%REQ(X-A?X-B)% %REQ(:AUTHORITY)% %RESP(ETAG)% %TRAILER(GRPC-MESSAGE)%",
        )
        .unwrap();
        let w = Wanted::of([&t]);
        let names =
            |v: &[http::HeaderName]| v.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            names(&w.request),
            ["host", "traceparent", "x-a", "x-b", "x-b3-traceid"]
        );
        assert_eq!(
            names(&w.response),
            ["etag", "grpc-message", "grpc-status", "x-causeway-error"]
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("x-a", "1".parse().unwrap());
        headers.insert("cookie", "secret".parse().unwrap());
        let kept = Wanted::pick(&w.request, &headers);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept["x-a"], "1");
    }

    #[test]
    fn a_tcp_connection_has_no_request_parts_and_status_zero() {
        let mut e = entry();
        e.http = None;
        let mut out = String::new();
        let t = Template::parse("%RESPONSE_CODE% %REQ(:METHOD)% %PROTOCOL% %BYTES_SENT%").unwrap();
        render_plain(&t, false, &e, &mut out);
        assert_eq!(out, "0 - - 3400");
    }
}
