//! Fuzzes the request decoder with arbitrary request lines (bytes, as they come off the socket
//! with the newline stripped).
//!
//! Beyond "never panics", it checks the properties the rest of the daemon relies on:
//! - a line over `MAX_FRAME` is refused as `frame-too-large` and nothing else is;
//! - a decoded `load`/`resolve` has between 1 and `MAX_TARGETS` targets, and a `load` with
//!   parameters has exactly one target;
//! - a decoded request re-encodes (`Request::encode`, what the client sends) to a single line
//!   that decodes to the same request, unless the encoding outgrew `MAX_FRAME` (escaping can
//!   lengthen a line), in which case that is the refusal;
//! - a refusal is one of the decoder's kinds, and its message (echoed to the peer) stays short;
//! - the validators the service runs next on the decoded targets and parameters do not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modbroker::protocol::{
    decode_request, ErrorKind, ProtocolError, Request, MAX_FRAME, MAX_TARGETS,
};
use modbroker::target::{validate_params, validate_target};

/// Longest error message the decoder may produce: 200 bytes of serde_json's message or 64
/// characters of an unknown op, plus the fixed text around them.
const MAX_ERROR_MESSAGE: usize = 512;

fuzz_target!(|line: &[u8]| {
    let decoded = decode_request(line);
    if line.len() > MAX_FRAME {
        assert_eq!(decoded, Err(ProtocolError::FrameTooLarge));
        return;
    }
    let request = match decoded {
        Ok(request) => request,
        Err(err) => {
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::Malformed
                        | ErrorKind::UnsupportedVersion
                        | ErrorKind::UnknownOp
                        | ErrorKind::InvalidRequest
                ),
                "unexpected refusal {err:?} for a line within the frame limit"
            );
            let message = err.to_string();
            assert!(
                message.len() <= MAX_ERROR_MESSAGE,
                "{} bytes: {message:?}",
                message.len()
            );
            return;
        }
    };

    match &request {
        Request::Load(load) => {
            assert!((1..=MAX_TARGETS).contains(&load.targets.len()));
            assert!(load.params.is_empty() || load.targets.len() == 1);
            for target in &load.targets {
                let _ = validate_target(target);
            }
            let _ = validate_params(&load.params);
        }
        Request::Resolve(targets) => {
            assert!((1..=MAX_TARGETS).contains(&targets.len()));
            for target in targets {
                let _ = validate_target(target);
            }
        }
        Request::Status => {}
    }

    let encoded = request.encode();
    let body = encoded
        .strip_suffix('\n')
        .expect("an encoded request ends with its newline");
    assert!(
        !body.contains('\n'),
        "an encoded request is one line: {body:?}"
    );
    let again = decode_request(body.as_bytes());
    if body.len() > MAX_FRAME {
        assert_eq!(again, Err(ProtocolError::FrameTooLarge));
    } else {
        assert_eq!(again.as_ref(), Ok(&request), "re-encoded as {body:?}");
    }
});
