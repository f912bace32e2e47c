//! Inputs that crashed a fuzz target (`fuzz/`, see "Fuzzing" in README.md), replayed on every
//! `cargo test` so the bug stays fixed. Each test says what the input broke.

use modbroker::protocol::{decode_request, ProtocolError};

/// serde_json's error message quotes the offending string or field name; the decoder cut the
/// message to 200 bytes with `String::truncate`, which panics when byte 200 falls inside a
/// multi-byte character. One such line made the connection's task panic: no reply, connection
/// closed, a panic in the journal (tokio caught it, so the daemon went on). Found by the
/// `decode_request` target in a 300 s run.
#[test]
fn malformed_message_is_cut_at_a_character_boundary() {
    // The input the fuzzer found (an unknown field whose name serde_json quotes).
    let found = concat!(
        "{\"v\":1,\"o184467440737098551616}ééééééééééééé&ééééééééééffffffffffef",
        "fffffffffffffffffffffffffffffffffffffffffffffffffffféééééééééééééééééé",
        "ééééééééééééééééééé\"}",
    );
    assert_eq!(
        decode_request(found.as_bytes())
            .unwrap_err()
            .kind()
            .as_str(),
        "malformed"
    );

    // `invalid type: string "a` is 23 bytes, so every 2-byte `é` after it starts at an odd
    // offset and byte 200 is the middle of one.
    let line = format!(r#"{{"v":"a{}","op":"status"}}"#, "é".repeat(150));
    let err = decode_request(line.as_bytes()).unwrap_err();
    let ProtocolError::Malformed(message) = &err else {
        panic!("not malformed: {err:?}");
    };
    assert!(message.len() <= 200, "{} bytes", message.len());
    assert!(
        message.starts_with("invalid type: string \"aé"),
        "{message}"
    );
    // The same with 3- and 4-byte characters at every alignment.
    for prefix in ["", "a", "ab", "abc"] {
        for wide in ["€", "😀"] {
            let line = format!(r#"{{"v":"{prefix}{}"}}"#, wide.repeat(100));
            assert_eq!(
                decode_request(line.as_bytes()).unwrap_err().kind().as_str(),
                "malformed"
            );
        }
    }
}
