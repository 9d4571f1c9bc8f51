//! Trace context: reading W3C Trace Context (`traceparent`, `tracestate`) and Zipkin
//! B3 (`x-b3-*`, or the single `b3` header) from a request, the sampling decision, and
//! writing the context of this hop's span on the request that goes on.
//!
//! Pure: random numbers (ids, the sampling draw) are arguments, so every rule is
//! tested without sockets or randomness.

use causeway_api::Propagation;
use causeway_api::proxy_config::TraceSampling;
use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(crate) const B3: HeaderName = HeaderName::from_static("b3");
pub(crate) const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(crate) const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// Set by a client that wants its request traced (MeshTrace `sampling.client`).
pub(crate) const CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");

pub(crate) type TraceId = [u8; 16];
pub(crate) type SpanId = [u8; 8];

/// What a request says of its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The caller's trace and span, when it sent them.
    pub(crate) parent: Option<Parent>,
    /// The caller's sampling decision, when it made one.
    pub(crate) sampled: Option<bool>,
}

/// The caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    /// Its own parent (B3 `x-b3-parentspanid`), for a span shared with it.
    pub(crate) parent_span_id: Option<SpanId>,
}

/// The context of this hop's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: Option<SpanId>,
    pub(crate) sampled: bool,
    /// The span id is the caller's (Zipkin's shared client/server span).
    pub(crate) shared: bool,
}

/// Reads the request's trace context in the formats `formats` names, the first one
/// present winning. A malformed header counts as absent (W3C: start a new trace).
pub(crate) fn extract(headers: &HeaderMap, formats: &[Propagation]) -> Incoming {
    for format in formats {
        let found = match format {
            Propagation::W3c => extract_w3c(headers),
            Propagation::B3 => extract_b3(headers),
        };
        if let Some(incoming) = found {
            return incoming;
        }
    }
    Incoming::default()
}

fn extract_w3c(headers: &HeaderMap) -> Option<Incoming> {
    let v = headers.get(TRACEPARENT)?.to_str().ok()?;
    let (trace_id, span_id, flags) = parse_traceparent(v)?;
    Some(Incoming {
        parent: Some(Parent {
            trace_id,
            span_id,
            parent_span_id: None,
        }),
        sampled: Some(flags & 1 == 1),
    })
}

/// `version-traceid-parentid-flags` (W3C Trace Context level 1): lowercase hex, ids
/// not all zero, version `ff` invalid; a later version may append `-...` fields.
pub(crate) fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId, u8)> {
    let v = v.trim();
    if v.len() < 55 || !v.is_char_boundary(55) {
        return None;
    }
    let (head, rest) = v.split_at(55);
    let mut parts = head.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(is_lower_hex(trace) && is_lower_hex(span) && is_lower_hex(flags)) {
        return None;
    }
    let trace_id: TraceId = hex_array(trace)?;
    let span_id: SpanId = hex_array(span)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, u8::from_str_radix(flags, 16).ok()?))
}

fn extract_b3(headers: &HeaderMap) -> Option<Incoming> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(single) = text(&B3) {
        return parse_b3_single(single);
    }
    let sampled = match (text(&B3_FLAGS), text(&B3_SAMPLED)) {
        (Some("1"), _) => Some(true),
        (_, Some("1" | "true")) => Some(true),
        (_, Some("0" | "false")) => Some(false),
        _ => None,
    };
    let parent = match (text(&B3_TRACE_ID), text(&B3_SPAN_ID)) {
        (Some(t), Some(s)) => Some(Parent {
            trace_id: b3_trace_id(t)?,
            span_id: b3_span_id(s)?,
            parent_span_id: text(&B3_PARENT_SPAN_ID).and_then(b3_span_id),
        }),
        _ => None,
    };
    (parent.is_some() || sampled.is_some()).then_some(Incoming { parent, sampled })
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or only `{sampling}`
/// (`0`, `1`, `d` for debug).
pub(crate) fn parse_b3_single(v: &str) -> Option<Incoming> {
    let sampling = |s: &str| match s {
        "1" | "d" => Some(Some(true)),
        "0" => Some(Some(false)),
        _ => None,
    };
    let parts: Vec<&str> = v.trim().split('-').collect();
    match parts.as_slice() {
        [s] => Some(Incoming {
            parent: None,
            sampled: sampling(s)?,
        }),
        [t, s, rest @ ..] if rest.len() <= 2 => Some(Incoming {
            parent: Some(Parent {
                trace_id: b3_trace_id(t)?,
                span_id: b3_span_id(s)?,
                parent_span_id: match rest.get(1) {
                    Some(p) => Some(b3_span_id(p)?),
                    None => None,
                },
            }),
            sampled: match rest.first() {
                Some(s) => sampling(s)?,
                None => None,
            },
        }),
        _ => None,
    }
}

/// A B3 trace id: 16 or 32 hex digits (a 64-bit id is the lower half).
fn b3_trace_id(t: &str) -> Option<TraceId> {
    let mut id = [0u8; 16];
    match t.len() {
        32 => id = hex_array(t)?,
        16 => id[8..].copy_from_slice(&hex_array::<8>(t)?),
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn b3_span_id(s: &str) -> Option<SpanId> {
    let id: SpanId = (s.len() == 16).then(|| hex_array(s))??;
    (id != [0; 8]).then_some(id)
}

/// The sampling decision for a request: the caller's, when it made one; else, with
/// `draw` uniform in [0, 100), traced when `draw` is under the client rate (the
/// request carries `x-client-trace-id`) or the random rate (it does not), and under
/// the overall rate. One draw for both checks, as Envoy does: overall 10 and random 50
/// trace 10% of the requests, not 5%.
pub(crate) fn decide(
    sampling: &TraceSampling,
    incoming: Option<bool>,
    client_forced: bool,
    draw: f64,
) -> bool {
    if let Some(sampled) = incoming {
        return sampled;
    }
    let first = if client_forced {
        sampling.client
    } else {
        sampling.random
    };
    draw < first && draw < sampling.overall
}

/// The context of this hop's span: a child of the caller's, or the root of a new
/// trace (`new_trace_id`, the upper half zeroed unless `trace_id128`). A server span
/// with `shared` (Zipkin's shared span context) takes the caller's span id.
pub(crate) fn begin(
    incoming: &Incoming,
    sampled: bool,
    new_trace_id: TraceId,
    new_span_id: SpanId,
    trace_id128: bool,
    shared: bool,
) -> SpanContext {
    match &incoming.parent {
        Some(p) if shared => SpanContext {
            trace_id: p.trace_id,
            span_id: p.span_id,
            parent_span_id: p.parent_span_id,
            sampled,
            shared: true,
        },
        Some(p) => SpanContext {
            trace_id: p.trace_id,
            span_id: new_span_id,
            parent_span_id: Some(p.span_id),
            sampled,
            shared: false,
        },
        None => {
            let mut trace_id = new_trace_id;
            if !trace_id128 {
                trace_id[..8].fill(0);
            }
            if trace_id == [0; 16] {
                trace_id[15] = 1;
            }
            SpanContext {
                trace_id,
                span_id: new_span_id,
                parent_span_id: None,
                sampled,
                shared: false,
            }
        }
    }
}

/// Writes `ctx` on the request that goes on, in every format of `formats`, so the
/// next hop's span is its child. `tracestate` travels untouched with the caller's
/// trace, and is dropped with a new one (it described a trace that is not this one).
pub(crate) fn inject(headers: &mut HeaderMap, ctx: &SpanContext, formats: &[Propagation]) {
    for format in formats {
        match format {
            Propagation::W3c => {
                let v = format!(
                    "00-{}-{}-{}",
                    hex(&ctx.trace_id),
                    hex(&ctx.span_id),
                    if ctx.sampled { "01" } else { "00" }
                );
                headers.insert(TRACEPARENT, value(v));
                if ctx.parent_span_id.is_none() && !ctx.shared {
                    headers.remove(TRACESTATE);
                }
            }
            Propagation::B3 => {
                let trace = b3_trace_hex(&ctx.trace_id);
                let sampled = if ctx.sampled { "1" } else { "0" };
                if headers.contains_key(B3) {
                    let mut v = format!("{trace}-{}-{sampled}", hex(&ctx.span_id));
                    if let Some(p) = &ctx.parent_span_id {
                        v.push('-');
                        v.push_str(&hex(p));
                    }
                    headers.insert(B3, value(v));
                    continue;
                }
                headers.insert(B3_TRACE_ID, value(trace));
                headers.insert(B3_SPAN_ID, value(hex(&ctx.span_id)));
                match &ctx.parent_span_id {
                    Some(p) => headers.insert(B3_PARENT_SPAN_ID, value(hex(p))),
                    None => headers.remove(B3_PARENT_SPAN_ID),
                };
                headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
                headers.remove(B3_FLAGS);
            }
        }
    }
}

/// A B3 (and Zipkin) trace id: 16 hex digits when the upper half is zero, else 32.
pub(crate) fn b3_trace_hex(id: &TraceId) -> String {
    if id[..8] == [0; 8] {
        hex(&id[8..])
    } else {
        hex(id)
    }
}

fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("hex digits and dashes are a valid header value")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
