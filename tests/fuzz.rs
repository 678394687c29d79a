//! Fuzzing, as property tests that run in the test command (a few hundred cases each): what
//! comes from outside — payload bytes, MQTT topics, pattern texts, line-protocol names — never
//! panics and keeps its invariants. The rule loader's share is in `props.rs`. For a long run,
//! raise the case count: `PROPTEST_CASES=200000 cargo test --release --test fuzz` (see
//! docs/live.md, "Fuzzing"). A case that ever fails is kept in `proptest-regressions/` and
//! replayed first, so every crash found stays a test.

use proptest::prelude::*;

use rulechain::message::Kind;
use rulechain::message::{parse, PayloadLimits, Reject};
use rulechain::topic::{filter_matches, TopicPattern};

const LIMITS: PayloadLimits = PayloadLimits {
    max_payload_bytes: 4096,
    max_depth: 8,
    max_clock_skew_ms: 1000,
};

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Telemetry),
        Just(Kind::Attributes),
        Just(Kind::Status),
        Just(Kind::RpcResponse)
    ]
}

/// Bytes that are often almost JSON: fragments glued together.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b"\"a\":".to_vec()),
        Just(b"\"\\\"".to_vec()),
        Just(b",".to_vec()),
        Just(b"1e999".to_vec()),
        Just(b"-0.0".to_vec()),
        Just(b"null".to_vec()),
        Just(b"online".to_vec()),
        Just(vec![0xff, 0xfe]),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn the_payload_decoder_never_panics_and_says_why(kind in kinds(), bytes in payload()) {
        match parse(kind, &bytes, &LIMITS) {
            Ok(_) => {
                prop_assert!(bytes.len() <= LIMITS.max_payload_bytes);
                prop_assert!(std::str::from_utf8(&bytes).is_ok());
            }
            Err(Reject::TooLarge) => prop_assert!(bytes.len() > LIMITS.max_payload_bytes),
            Err(Reject::InvalidUtf8) => prop_assert!(std::str::from_utf8(&bytes).is_err()),
            Err(_) => {}
        }
    }

    #[test]
    fn any_json_object_within_the_limits_is_taken(
        fields in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..10)
    ) {
        let text = serde_json::to_string(&fields).unwrap();
        let m = parse(Kind::Telemetry, text.as_bytes(), &LIMITS);
        prop_assert!(m.is_ok(), "{text}");
        prop_assert_eq!(m.unwrap().len(), fields.len());
    }

    #[test]
    fn topic_patterns_and_filters_never_panic(
        pattern in "[a-z{}/+#]{0,24}",
        topic in "[a-z0-9/+#-]{0,32}",
    ) {
        if let Ok(p) = TopicPattern::parse(&pattern, None) {
            if let Some(m) = p.matches(&topic) {
                // A match is covered by one of the pattern's subscriptions.
                prop_assert!(
                    p.mqtt_filters().iter().any(|f| filter_matches(f, &topic)),
                    "{pattern} matched {topic} outside its filters {:?}", p.mqtt_filters()
                );
                prop_assert!(!m.device.is_empty());
            }
        }
        let _ = filter_matches(&pattern, &topic);
    }

    #[test]
    fn line_protocol_never_panics_and_stays_one_line(
        measurement in "[a-z#\n\r ,=\"\\\\]{0,12}",
        tags in proptest::collection::vec(("[a-z\n ,=\\\\]{0,8}", "[a-z\n\r ,=\\\\]{0,8}"), 0..4),
        value in any::<f64>(),
        text in "[a-z\n\r \"\\\\]{0,16}",
    ) {
        let mut p = rulechain::lineproto::Line::new(&measurement);
        for (k, v) in &tags {
            p.tag(k, v);
        }
        p.float("v", value);
        p.string("s", &text);
        if let Some(line) = p.finish(1) {
            prop_assert!(!line.contains('\n'), "{line:?}");
        }
    }
}
