//! Fuzzes target and parameter validation. The input, when it is UTF-8 (requests are JSON, so
//! the daemon only ever sees strings), is checked three ways: as one target, as one parameter,
//! and split at newlines as a parameter list.
//!
//! Properties checked, beyond "never panics":
//! - an accepted target is returned unchanged, is 1..=`MAX_TARGET_LEN` bytes of printable
//!   ASCII (no whitespace, control characters, NUL or non-ASCII) and does not start with `.` or
//!   `-`; it has a `/` only if it is a modalias, i.e. the text before its first `:` is a
//!   non-empty run of letters, digits, `_` and `-` (DMI modaliases carry dates such as
//!   `bd01/15/2019`); so a module name (no such prefix) never has one. `modalias_prefix` agrees
//!   with that rule. A refusal names the actual fault (the length, the offending character, a
//!   `/` outside a modalias...);
//! - anything that looks like a module name is also a valid target, and its canonical name is
//!   the same length with no `-`;
//! - accepted parameters join to one `NAME[=VALUE]` word per parameter, in order, names folded
//!   to underscores and values unchanged, using only the bytes `target.rs` allows (letters,
//!   digits, `_ . , : + - / = @ %`) and single spaces between words: nothing a shell (install
//!   commands get them as `$CMDLINE_OPTS`) gives meaning to, no word starting with `-`;
//! - lists longer than `MAX_PARAMS` and parameters longer than `MAX_PARAM_LEN` are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modbroker::target::{
    canonical_name, looks_like_module_name, modalias_prefix, validate_params, validate_target,
    TargetError, MAX_PARAMS, MAX_PARAM_LEN, MAX_TARGET_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    check_target(input);
    check_params(&[input.to_string()]);
    check_params(&input.split('\n').map(str::to_string).collect::<Vec<_>>());
});

/// The modalias rule, written out independently of `target.rs`: a non-empty run of letters,
/// digits, `_` and `-` before the first `:`.
fn is_modalias(target: &str) -> bool {
    match target.find(':') {
        Some(end) => {
            end > 0
                && target[..end]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        None => false,
    }
}

fn check_target(target: &str) {
    let modalias = is_modalias(target);
    assert_eq!(
        modalias_prefix(target),
        modalias.then(|| &target[..target.find(':').unwrap()]),
        "{target:?}"
    );
    match validate_target(target) {
        Ok(valid) => {
            assert_eq!(valid, target);
            assert!(!valid.is_empty() && valid.len() <= MAX_TARGET_LEN);
            assert!(valid.bytes().all(|b| b.is_ascii_graphic()), "{valid:?}");
            assert!(
                !valid.contains('/') || modalias,
                "a '/' outside a modalias: {valid:?}"
            );
            assert!(
                !valid.starts_with('.') && !valid.starts_with('-'),
                "{valid:?}"
            );
        }
        Err(TargetError::Empty) => assert!(target.is_empty()),
        Err(TargetError::TooLong(len)) => {
            assert_eq!(len, target.len());
            assert!(len > MAX_TARGET_LEN);
        }
        Err(TargetError::BadChar(c)) => {
            assert!(target.contains(c) && !c.is_ascii_graphic(), "{c:?}")
        }
        Err(TargetError::Path) => {
            assert!(target.contains('/') && !modalias, "{target:?}");
            assert!(target.bytes().all(|b| b.is_ascii_graphic()), "{target:?}");
        }
        Err(TargetError::BadStart(c)) => {
            assert!(target.starts_with(c) && matches!(c, '.' | '-'))
        }
        Err(other) => panic!("target refused with a parameter error: {other:?}"),
    }
    if looks_like_module_name(target) {
        assert!(!target.contains('/') && !modalias, "{target:?}");
        // `-name` looks like a name but is refused as a target (option look-alike); the service
        // validates first, so that refusal wins.
        if !target.starts_with('-') {
            assert_eq!(validate_target(target), Ok(target));
        }
        let canonical = canonical_name(target);
        assert_eq!(canonical.len(), target.len());
        assert!(!canonical.contains('-'));
    }
}

fn is_allowed_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.,:+-/=@%".contains(&b)
}

fn check_params(params: &[String]) {
    let joined = match validate_params(params) {
        Ok(joined) => joined,
        Err(TargetError::TooManyParams(n)) => {
            assert_eq!(n, params.len());
            assert!(n > MAX_PARAMS);
            return;
        }
        Err(TargetError::BadParam(shown)) => {
            assert!(shown.chars().count() <= 64);
            assert!(params.iter().any(|p| p.starts_with(&shown)), "{shown:?}");
            return;
        }
        Err(other) => panic!("parameters refused with a target error: {other:?}"),
    };
    assert!(params.len() <= MAX_PARAMS);
    assert!(
        joined.bytes().all(|b| b == b' ' || is_allowed_byte(b)),
        "unsafe byte in {joined:?}"
    );
    let words: Vec<&str> = if params.is_empty() {
        assert_eq!(joined, "");
        Vec::new()
    } else {
        joined.split(' ').collect()
    };
    assert_eq!(words.len(), params.len(), "{joined:?}");
    for (word, param) in words.iter().zip(params) {
        assert!(param.len() <= MAX_PARAM_LEN);
        assert!(!word.is_empty() && !word.starts_with('-'), "{word:?}");
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (param.as_str(), None),
        };
        let expected = match value {
            Some(value) => format!("{}={value}", canonical_name(name)),
            None => canonical_name(name),
        };
        assert_eq!(*word, expected);
    }
}
