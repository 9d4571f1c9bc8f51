use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn parent(trace: &str, span: &str) -> Parent {
    Parent {
        trace_id: hex_array(trace).unwrap(),
        span_id: hex_array(span).unwrap(),
        parent_span_id: None,
    }
}

#[test]
fn a_valid_traceparent_gives_the_callers_span_and_decision() {
    let got = extract(
        &headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]),
        &[Propagation::W3c],
    );
    assert_eq!(
        got,
        Incoming {
            parent: Some(parent(TRACE, SPAN)),
            sampled: Some(true)
        }
    );
    let unsampled = extract(
        &headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]),
        &[Propagation::W3c],
    );
    assert_eq!(unsampled.sampled, Some(false));
}

#[test]
fn malformed_traceparents_count_as_absent() {
    for bad in [
        format!("00-{TRACE}-{SPAN}-0"),
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00_{TRACE}-{SPAN}-01"),
        "garbage".into(),
    ] {
        assert_eq!(parse_traceparent(&bad), None, "{bad}");
    }
    // A later version may append fields.
    assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-more")).is_some());
}

#[test]
fn b3_multi_and_single_headers_are_read() {
    let multi = extract(
        &headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "1"),
        ]),
        &[Propagation::B3],
    );
    let mut want = parent(TRACE, SPAN);
    want.parent_span_id = Some([0x11; 8]);
    assert_eq!(multi.parent, Some(want.clone()));
    assert_eq!(multi.sampled, Some(true));

    let single = extract(
        &headers(&[("b3", &format!("{TRACE}-{SPAN}-1-1111111111111111"))]),
        &[Propagation::B3],
    );
    assert_eq!(single.parent, Some(want));
    assert_eq!(single.sampled, Some(true));

    // A 64-bit trace id is the lower half.
    let short = extract(
        &headers(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN)]),
        &[Propagation::B3],
    );
    let p = short.parent.unwrap();
    assert_eq!(hex(&p.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert_eq!(short.sampled, None);

    // A decision alone.
    assert_eq!(
        parse_b3_single("0"),
        Some(Incoming {
            parent: None,
            sampled: Some(false)
        })
    );
    assert_eq!(parse_b3_single("d").unwrap().sampled, Some(true));
    assert_eq!(parse_b3_single("x-y-z-w-v"), None);
}

#[test]
fn the_first_format_present_wins_and_unlisted_formats_are_not_read() {
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
    ]);
    let w3c_first = extract(&h, &[Propagation::W3c, Propagation::B3]);
    assert_eq!(hex(&w3c_first.parent.unwrap().trace_id), TRACE);
    let b3_first = extract(&h, &[Propagation::B3, Propagation::W3c]);
    assert_eq!(hex(&b3_first.parent.unwrap().span_id), "2222222222222222");
    let b3_only = extract(
        &headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]),
        &[Propagation::B3],
    );
    assert_eq!(b3_only, Incoming::default());
}

#[test]
fn sampling_follows_the_caller_then_client_or_random_then_overall() {
    let s = |overall, client, random| TraceSampling {
        overall,
        client,
        random,
    };
    // (sampling, caller's decision, x-client-trace-id, draw) -> traced
    let table: &[(TraceSampling, Option<bool>, bool, f64, bool)] = &[
        (s(100.0, 100.0, 100.0), None, false, 99.9, true),
        (s(0.0, 100.0, 100.0), None, false, 0.0, false),
        (s(0.0, 100.0, 100.0), None, true, 0.0, false),
        // The caller decided: its decision stands whatever the rates.
        (s(0.0, 0.0, 0.0), Some(true), false, 50.0, true),
        (s(100.0, 100.0, 100.0), Some(false), false, 0.0, false),
        // Random: share of requests without a decision.
        (s(100.0, 100.0, 30.0), None, false, 29.9, true),
        (s(100.0, 100.0, 30.0), None, false, 30.0, false),
        // Client: requests with x-client-trace-id, whatever the random rate.
        (s(100.0, 50.0, 0.0), None, true, 49.0, true),
        (s(100.0, 50.0, 0.0), None, true, 51.0, false),
        (s(100.0, 50.0, 0.0), None, false, 1.0, false),
        // Overall caps both, on the same draw.
        (s(10.0, 100.0, 50.0), None, false, 9.0, true),
        (s(10.0, 100.0, 50.0), None, false, 11.0, false),
        (s(10.0, 100.0, 50.0), None, true, 11.0, false),
    ];
    for (i, (sampling, incoming, client, draw, want)) in table.iter().enumerate() {
        assert_eq!(
            decide(sampling, *incoming, *client, *draw),
            *want,
            "row {i}"
        );
    }
}

#[test]
fn a_child_span_keeps_the_trace_and_names_its_parent() {
    let incoming = Incoming {
        parent: Some(parent(TRACE, SPAN)),
        sampled: Some(true),
    };
    let ctx = begin(&incoming, true, [7; 16], [9; 8], false, false);
    assert_eq!(hex(&ctx.trace_id), TRACE);
    assert_eq!(ctx.span_id, [9; 8]);
    assert_eq!(hex(&ctx.parent_span_id.unwrap()), SPAN);
    // A shared server span takes the caller's id.
    let shared = begin(&incoming, true, [7; 16], [9; 8], false, true);
    assert_eq!(hex(&shared.span_id), SPAN);
    assert!(shared.shared);
}

#[test]
fn a_new_trace_has_a_64_bit_id_unless_asked_for_128() {
    let none = Incoming::default();
    let short = begin(&none, true, [7; 16], [9; 8], false, false);
    assert_eq!(hex(&short.trace_id), "00000000000000000707070707070707");
    assert_eq!(short.parent_span_id, None);
    let long = begin(&none, true, [7; 16], [9; 8], true, false);
    assert_eq!(long.trace_id, [7; 16]);
}

#[test]
fn the_span_goes_on_in_every_format_listed() {
    let ctx = SpanContext {
        trace_id: hex_array(TRACE).unwrap(),
        span_id: [0xab; 8],
        parent_span_id: Some(hex_array(SPAN).unwrap()),
        sampled: true,
        shared: false,
    };
    let mut h = headers(&[("tracestate", "vendor=x"), ("x-b3-flags", "1")]);
    inject(&mut h, &ctx, &[Propagation::W3c, Propagation::B3]);
    assert_eq!(
        h[TRACEPARENT],
        format!("00-{TRACE}-abababababababab-01").as_str()
    );
    assert_eq!(h[TRACESTATE], "vendor=x");
    assert_eq!(h[B3_TRACE_ID], TRACE);
    assert_eq!(h[B3_SPAN_ID], "abababababababab");
    assert_eq!(h[B3_PARENT_SPAN_ID], SPAN);
    assert_eq!(h[B3_SAMPLED], "1");
    assert!(!h.contains_key(B3_FLAGS));

    // An unsampled span says so; a single b3 header stays single.
    let mut h = headers(&[("b3", "1")]);
    let unsampled = SpanContext {
        sampled: false,
        parent_span_id: None,
        ..ctx
    };
    inject(&mut h, &unsampled, &[Propagation::B3]);
    assert_eq!(h[B3], format!("{TRACE}-abababababababab-0").as_str());
    assert!(!h.contains_key(TRACEPARENT));

    // A new trace does not carry another trace's state.
    let mut h = headers(&[("tracestate", "vendor=x")]);
    inject(&mut h, &unsampled, &[Propagation::W3c]);
    assert!(!h.contains_key(TRACESTATE));
}
