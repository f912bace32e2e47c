//! The wire format stays byte for byte what modbroker 0.2.0 wrote: every line in
//! `tests/data/wire-v1.txt` was written by that version's encoders (`Request::encode`,
//! `Reply::encode`, `Progress::encode`, at commit `98de8bf`, by a one-off generator of every
//! request kind and each origin a client may send, every outcome, failure shape, plan, status
//! and error kind). Each line
//! must decode with today's decoders and encode back to the same bytes, so neither end may
//! change what it sends or accepts without this test failing.

use modbroker::protocol::{decode_daemon_line, decode_request, DaemonLine};

const RECORDED: &str = include_str!("data/wire-v1.txt");

/// `(kind, line with its newline)` for each recorded line.
fn recorded() -> Vec<(&'static str, String)> {
    RECORDED
        .lines()
        .map(|line| {
            let (kind, json) = line.split_once(' ').expect("`kind json` lines");
            (kind, format!("{json}\n"))
        })
        .collect()
}

#[test]
fn recorded_requests_decode_and_encode_to_the_same_bytes() {
    let requests: Vec<String> = recorded()
        .into_iter()
        .filter(|(kind, _)| *kind == "request")
        .map(|(_, line)| line)
        .collect();
    assert_eq!(requests.len(), 7, "every recorded request is checked");
    for line in requests {
        let request =
            decode_request(line.trim_end().as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(request.encode(), line);
    }
}

#[test]
fn recorded_daemon_lines_decode_and_encode_to_the_same_bytes() {
    let mut seen = (0, 0);
    for (kind, line) in recorded()
        .into_iter()
        .filter(|(kind, _)| *kind != "request")
    {
        let decoded = decode_daemon_line(line.trim_end().as_bytes())
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let encoded = match (kind, decoded) {
            ("reply", DaemonLine::Reply(reply)) => {
                seen.0 += 1;
                reply.encode()
            }
            ("progress", DaemonLine::Progress(progress)) => {
                seen.1 += 1;
                progress.encode()
            }
            (kind, other) => panic!("{kind} line decoded as {other:?}"),
        };
        assert_eq!(encoded, line);
    }
    assert_eq!(
        seen,
        (13, 1),
        "every recorded reply and progress line is checked"
    );
}
