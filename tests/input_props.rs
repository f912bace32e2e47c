//! Arbitrary input against the pure front of the daemon (request decoding, target and parameter
//! validation): it never panics, every refusal has a kind, and whatever is accepted obeys the
//! rules the rest of the daemon relies on. A stable-Rust complement to coverage-guided fuzzing.

use modbroker::protocol::{decode_request, Request, MAX_FRAME};
use modbroker::target::{validate_params, validate_target, MAX_TARGET_LEN};
use proptest::prelude::*;

/// Request-shaped JSON with random field values, to get past the JSON parser more often than
/// random bytes do.
fn requestish() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just("load".to_string()),
        Just("resolve".to_string()),
        Just("status".to_string()),
        ".{0,8}"
    ];
    let targets = prop::collection::vec(".{0,40}", 0..6);
    let params = prop::collection::vec(".{0,20}", 0..4);
    (
        0u32..3,
        op,
        targets,
        params,
        any::<bool>(),
        any::<bool>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(v, op, targets, params, wait, retry, timeout)| {
            serde_json::json!({
                "v": v, "op": op, "targets": targets, "params": params,
                "wait": wait, "retry": retry, "timeout_ms": timeout,
            })
            .to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode_request(&bytes) {
            prop_assert!(!e.kind().as_str().is_empty());
        }
    }

    #[test]
    fn request_shaped_json_decodes_or_is_refused(line in requestish()) {
        match decode_request(line.as_bytes()) {
            Ok(Request::Load(load)) => {
                prop_assert!(!load.targets.is_empty());
                prop_assert!(load.params.is_empty() || load.targets.len() == 1);
            }
            Ok(Request::Resolve(targets)) => prop_assert!(!targets.is_empty()),
            Ok(Request::Status) => {}
            Err(e) => prop_assert!(!e.kind().as_str().is_empty()),
        }
    }

    #[test]
    fn accepted_targets_are_never_paths_or_controls(target in ".{0,64}") {
        if let Ok(t) = validate_target(&target) {
            // A '/' only in a modalias: a non-empty BUS of [A-Za-z0-9_-] before the first ':'.
            let modalias = t.split_once(':').is_some_and(|(bus, _)| {
                !bus.is_empty()
                    && bus.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            prop_assert!(!t.contains('/') || modalias, "{t:?}");
            prop_assert!(t.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert!(!t.starts_with('.') && !t.starts_with('-'));
            prop_assert!(t.len() <= MAX_TARGET_LEN);
        }
    }

    /// Modalias-shaped input (a bus, `:`, then anything printable, slashes included) is
    /// accepted exactly when it is a modalias; the same text with a path-like bus is not.
    #[test]
    fn slashes_are_accepted_only_after_a_bus_prefix(
        bus in "[A-Za-z0-9_-]{1,12}",
        rest in "[!-~]{0,48}",
        bad in "[./*]{1,3}",
    ) {
        let modalias = format!("{bus}:{rest}");
        if !bus.starts_with('-') {
            prop_assert_eq!(validate_target(&modalias), Ok(modalias.as_str()));
        }
        let not_a_bus = format!("{bad}{bus}:{rest}/");
        prop_assert!(validate_target(&not_a_bus).is_err(), "{not_a_bus:?}");
    }

    #[test]
    fn accepted_parameters_carry_no_shell_syntax(params in prop::collection::vec(".{0,24}", 0..4)) {
        if let Ok(joined) = validate_params(&params) {
            for forbidden in ['$', '`', ';', '|', '&', '\'', '"', '\\', '(', ')', '<', '>', '*', '?', '\n'] {
                prop_assert!(!joined.contains(forbidden), "{joined:?}");
            }
            prop_assert_eq!(joined.split(' ').filter(|p| !p.is_empty()).count(), params.len());
        }
    }
}

#[test]
fn oversized_line_is_refused_before_parsing() {
    let line = vec![b'{'; MAX_FRAME + 1];
    assert_eq!(
        decode_request(&line).unwrap_err().kind().as_str(),
        "frame-too-large"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Version skew: a request carrying fields this daemon does not know (a newer client's) is
    /// served exactly as without them, and the reply names them (at most 16, each cut to 64
    /// characters).
    #[test]
    fn unknown_fields_change_nothing_and_are_named(
        extra in prop::collection::btree_map("zz_[a-z_]{1,80}", any::<Option<i64>>(), 0..24),
        target in "[a-z_]{1,20}",
        retry in any::<bool>(),
    ) {
        use modbroker::protocol::decode_request_noting_unknown;
        let mut value = serde_json::json!({"v": 1, "op": "load", "targets": [target], "retry": retry});
        let plain = decode_request(value.to_string().as_bytes()).unwrap();
        for (name, v) in &extra {
            value[name] = serde_json::json!(v);
        }
        let (request, ignored) = decode_request_noting_unknown(value.to_string().as_bytes()).unwrap();
        prop_assert_eq!(request, plain);
        let expected: Vec<String> = extra.keys().take(16).map(|k| k.chars().take(64).collect()).collect();
        prop_assert_eq!(ignored, expected);
    }
}
