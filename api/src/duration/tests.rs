use super::*;

#[test]
fn parse_table() {
    let ok: &[(&str, u64, &str)] = &[
        // input, nanos, canonical form
        ("0", 0, "0s"),
        ("0s", 0, "0s"),
        ("100ns", 100, "100ns"),
        ("10us", 10_000, "10us"),
        ("10µs", 10_000, "10us"),
        ("10μs", 10_000, "10us"),
        ("500ms", 500 * NANOS_PER_MILLI, "500ms"),
        ("2s", 2 * NANOS_PER_SEC, "2s"),
        ("1.5s", 1_500 * NANOS_PER_MILLI, "1s500ms"),
        (".5s", 500 * NANOS_PER_MILLI, "500ms"),
        ("1.s", NANOS_PER_SEC, "1s"),
        ("1m", NANOS_PER_MIN, "1m"),
        ("90m", 90 * NANOS_PER_MIN, "1h30m"),
        ("1h30m", 90 * NANOS_PER_MIN, "1h30m"),
        (
            "1h1m1s1ms1us1ns",
            NANOS_PER_HOUR + NANOS_PER_MIN + NANOS_PER_SEC + 1_001_001,
            "1h1m1s1ms1us1ns",
        ),
        ("24h", 24 * NANOS_PER_HOUR, "24h"),
        ("87600h", 87_600 * NANOS_PER_HOUR, "87600h"),
        ("0.000000001s", 1, "1ns"),
        ("1.0000000019s", NANOS_PER_SEC + 1, "1s1ns"),
    ];
    for &(input, nanos, canonical) in ok {
        let d: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(d.as_std().as_nanos(), u128::from(nanos), "{input}");
        assert_eq!(d.to_string(), canonical, "{input}");
        assert_eq!(
            canonical.parse::<Duration>().unwrap(),
            d,
            "{input} round trip"
        );
    }
}

#[test]
fn parse_errors() {
    let bad: &[(&str, &str)] = &[
        (
            "5 seconds",
            "expected a number followed by a unit (ns, us, ms, s, m, h), like 500ms or 2s",
        ),
        ("", "expected a number followed by a unit"),
        ("5", "expected a number followed by a unit"),
        ("s", "expected a number followed by a unit"),
        ("1d", "expected a number followed by a unit"),
        ("1h 30m", "expected a number followed by a unit"),
        (" 1s", "expected a number followed by a unit"),
        (".s", "expected a number followed by a unit"),
        ("1.2.3s", "expected a number followed by a unit"),
        ("-1s", "must not be negative"),
        ("9999999999999999999999h", "too large"),
        ("6000000h", "too large"),
    ];
    for &(input, reason) in bad {
        let err = input.parse::<Duration>().expect_err(input);
        assert!(err.to_string().contains(reason), "{input}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid duration {input:?}")),
            "{err}"
        );
    }
    assert_eq!(
        "5 seconds".parse::<Duration>().unwrap_err().to_string(),
        "invalid duration \"5 seconds\": expected a number followed by a unit (ns, us, ms, s, m, h), like 500ms or 2s"
    );
}

#[test]
fn serde() {
    let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
    assert_eq!(d, Duration::from_mins(90));
    assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
    assert_eq!(
        serde_json::from_str::<Duration>("0").unwrap(),
        Duration::ZERO
    );
    let err = serde_json::from_str::<Duration>("5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a unit"), "{err}");
}

proptest::proptest! {
    #[test]
    fn format_round_trips(nanos in 0u64..u64::MAX) {
        let d = Duration::from_nanos(nanos);
        proptest::prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
    }
}
