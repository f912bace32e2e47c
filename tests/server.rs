//! The server over a real Unix socket, with a fake kernel behind it: framing and bad input, peer
//! credentials, disconnects, socket binding rules, and the `modbroker` client binary's exit
//! statuses and messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use modbroker::model::OutcomeKind;
use modbroker::model::Requester;
use modbroker::protocol::{Reply, MAX_FRAME};
use modbroker::server::{
    self, AccessPolicy, ConnectionLimits, ListenError, SocketFile, SocketPerms,
};
use modbroker::testing::{node, FakeKernel, FixedResolver};
use nix::errno::Errno;

mod common;
use common::{on_thread_as, output_within, TestServer};

impl TestServer {
    fn start(access: AccessPolicy) -> Self {
        let kernel = FakeKernel::new();
        kernel.fail("acpi_cpufreq", Errno::ENODEV);
        // What kvm_intel's init returns on a CPU without VT-x.
        kernel.fail("kvm_intel", Errno::EOPNOTSUPP);
        let resolver = FixedResolver::new()
            .with_module("mb_ok", node("mb_ok", vec![]))
            .with_module("kvm-intel", node("kvm_intel", vec![]))
            .with_module("held", node("held", vec![]))
            .with_module("acpi-cpufreq", node("acpi_cpufreq", vec![]))
            .with_module("e1000", node("e1000", vec![]));
        TestServer::start_with(kernel, resolver, access)
    }

    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbroker"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }
}

/// Sends raw bytes and reads one reply line (None on EOF).
fn exchange(stream: &mut UnixStream, bytes: &[u8]) -> Option<Reply> {
    stream.write_all(bytes).unwrap();
    read_reply(stream)
}

fn read_reply(stream: &mut UnixStream) -> Option<Reply> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match reader.read_line(&mut line).unwrap() {
        0 => None,
        _ => {
            Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}")))
        }
    }
}

/// One protocol line asking to load `targets`.
fn load_line<T: serde::Serialize>(targets: &[T]) -> Vec<u8> {
    format!(
        "{}\n",
        serde_json::json!({"v": 1, "op": "load", "targets": targets})
    )
    .into_bytes()
}

fn error_kind(reply: &Reply) -> &str {
    assert!(!reply.ok);
    reply.error_body().expect("error body").kind.as_str()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_lines_get_error_replies_and_the_connection_goes_on() {
    let server = TestServer::start(AccessPolicy::default());
    let mut conn = server.connect();
    for (line, kind) in [
        (&b"hello\n"[..], "malformed"),
        (
            br#"{"v":9,"op":"status"}"#.as_slice(),
            "unsupported-version",
        ),
        (
            br#"{"v":1,"op":"rmmod","targets":["x"]}"#.as_slice(),
            "unknown-op",
        ),
        (
            br#"{"v":1,"op":"load","targets":[]}"#.as_slice(),
            "invalid-request",
        ),
        (
            br#"{"v":1,"op":"load","targets":"e1000"}"#.as_slice(),
            "malformed",
        ),
    ] {
        let mut bytes = line.to_vec();
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        let reply = exchange(&mut conn, &bytes).expect("a reply");
        assert_eq!(
            error_kind(&reply),
            kind,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let reply = exchange(&mut conn, b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok && reply.status_report().is_some());
}

#[test]
fn oversized_frame_is_refused_and_the_connection_closed() {
    let server = TestServer::start(AccessPolicy::default());
    let mut conn = server.connect();
    // No newline at all: the server must answer without buffering the endless line.
    let reply = exchange(&mut conn, &vec![b'x'; MAX_FRAME + 100]).expect("a reply");
    assert_eq!(error_kind(&reply), "frame-too-large");
    assert!(read_reply(&mut conn).is_none(), "connection closed");
    // Other clients are still served.
    let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok);
}

#[test]
fn invalid_utf8_is_refused() {
    let server = TestServer::start(AccessPolicy::default());
    let mut conn = server.connect();
    let reply = exchange(
        &mut conn,
        b"{\"v\":1,\"op\":\"load\",\"targets\":[\"\xff\xfe\"]}\n",
    )
    .unwrap();
    assert_eq!(error_kind(&reply), "malformed");
}

#[test]
fn every_target_of_a_request_gets_one_result_in_order() {
    let server = TestServer::start(AccessPolicy::default());
    let request = br#"{"v":1,"op":"load","targets":["e1000","acpi-cpufreq","nothing:here","a/b"]}"#;
    let reply = exchange(&mut server.connect(), &[&request[..], b"\n"].concat()).unwrap();
    let outcomes: Vec<OutcomeKind> = reply
        .load_results()
        .unwrap()
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            OutcomeKind::Loaded,
            OutcomeKind::Failed,
            OutcomeKind::NoMatch,
            OutcomeKind::Invalid
        ]
    );
}

#[test]
fn disconnecting_client_does_not_cancel_the_load() {
    let server = TestServer::start(AccessPolicy::default());
    server.kernel.hold("held");
    let mut first = server.connect();
    first
        .write_all(b"{\"v\":1,\"op\":\"load\",\"targets\":[\"held\"]}\n")
        .unwrap();
    server.kernel.wait_for_calls("held", 1);
    drop(first);
    let waiters = || {
        server
            .service
            .broker()
            .in_flight()
            .first()
            .map(|f| f.waiters)
    };
    // The server notices the disconnect: nobody waits, yet the load stays in flight. Bounded,
    // so that a server that never notices fails here with what it saw instead of spinning until
    // CI's limit (this loop once spun for 16 minutes in a loaded full run; never reproduced).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let until = |want: u64, what: &str| loop {
        let seen = waiters();
        if seen == Some(want) {
            break;
        }
        if std::time::Instant::now() > deadline {
            // Let the load end first: the server's drop waits for loads in flight.
            server.kernel.release("held");
            panic!("{what}: waiters on the held load are {seen:?}, not {want}");
        }
        std::thread::yield_now();
    };
    until(0, "the disconnect was not noticed");

    let waiter = {
        let mut second = server.connect();
        std::thread::spawn(move || {
            exchange(
                &mut second,
                b"{\"v\":1,\"op\":\"load\",\"targets\":[\"held\"]}\n",
            )
        })
    };
    // The second request is merged into the first one's load, which is still in flight.
    until(1, "the second request was not merged");
    server.kernel.release("held");
    let reply = waiter.join().unwrap().unwrap();
    let result = &reply.load_results().unwrap()[0];
    assert_eq!(result.outcome, OutcomeKind::Loaded);
    assert!(result.merged);
    assert_eq!(server.kernel.calls("held"), 1);
    assert_eq!(server.service.broker().in_flight_count(), 0);
}

fn as_nobody(cmd: &mut Command, gid: u32) -> Output {
    assert!(
        nix::unistd::geteuid().is_root(),
        "credential tests must run as root (make test does)"
    );
    cmd.uid(65534).gid(gid).output().unwrap()
}

#[test]
fn unprivileged_peer_is_refused_and_nothing_loads() {
    let server = TestServer::start(AccessPolicy::default());
    // Let the file mode pass everyone, so that the daemon's own check is what refuses.
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(
        server
            .client(&["load", "mb_ok"])
            .env_remove("MODBROKER_SOCKET"),
        65534,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("directly"),
        "a refusal never falls back"
    );
    assert!(server.kernel.call_log().is_empty());
}

#[test]
fn allowed_group_is_served() {
    let access = AccessPolicy {
        uids: vec![],
        gids: vec![4242],
    };
    let server = TestServer::start(access);
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&mut server.client(&["load", "mb_ok"]), 4242);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.kernel.calls("mb_ok"), 1);
}

#[test]
fn client_exit_status_and_failure_line() {
    let server = TestServer::start(AccessPolicy::default());
    let out = server.client(&["load", "acpi-cpufreq"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line per failure: {err}");
    assert!(
        err.contains("module acpi_cpufreq: ENODEV (errno 19)"),
        "{err}"
    );

    let out = server
        .client(&["load", "--udev", "acpi-cpufreq"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "ENODEV is normal for udev");

    let out = server
        .client(&["load", "pci:v0000FFFFd00000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "no-match is success");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));

    let out = server
        .client(&["load", "mb_ok", "x=$(reboot)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid parameter"),
        "{}",
        stderr(&out)
    );

    let out = server.client(&["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["failed_loads"], 1);
    assert_eq!(status["failures"][0]["error"], "ENODEV");
}

/// udev's builtin `kmod load` ignores every load error, so `--udev` exits 0 whatever happened
/// (udev warns once per event for a non-zero exit: per CPU for a CPU modalias), leaving one
/// stderr line per failed target. A plain `load` still fails.
#[test]
fn udev_load_exits_0_with_one_stderr_line_per_failure() {
    let server = TestServer::start(AccessPolicy::default());
    for _ in 0..2 {
        // The second time the failure is remembered: the same answer without a load call.
        let out = server
            .client(&["load", "--udev", "kvm-intel"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(err.lines().count(), 1, "one line per failure: {err}");
        assert!(
            err.contains("module kvm_intel: EOPNOTSUPP (errno 95)"),
            "{err}"
        );
    }
    assert_eq!(server.kernel.calls("kvm_intel"), 1);

    let out = server.client(&["load", "kvm-intel"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    // A target refused as invalid is a failure like any other.
    let out = server.client(&["load", "--udev", "a/b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = server.client(&["load", "a/b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // Usage errors are still errors.
    let out = server.client(&["load", "--udev"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn client_falls_back_when_no_daemon_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let module_dir = dir.path().join("modules");
    std::fs::create_dir(&module_dir).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_modbroker"))
            .arg("--socket")
            .arg(&socket)
            .arg("--module-dir")
            .arg(&module_dir)
            .arg("load")
            .args(extra)
            .arg("pci:v0000FFFFd00000000")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("daemon unreachable"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));

    let out = run(&["--no-fallback"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // Under udev even that is not an exit status: one line, exit 0.
    let out = run(&["--udev", "--no-fallback"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// `modbroker --socket SOCKET --module-dir DIR/modules (empty, created) load ARGS...
/// pci:v0000FFFFd00000000` (a target the direct load answers `no-match`), waiting at most `limit`.
fn load_unknown_target(
    socket: &Path,
    dir: &Path,
    args: &[&str],
    limit: Duration,
) -> (Output, Duration) {
    let module_dir = dir.join("modules");
    std::fs::create_dir_all(&module_dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbroker"));
    cmd.arg("--socket")
        .arg(socket)
        .arg("--module-dir")
        .arg(&module_dir)
        .arg("load")
        .args(args)
        .arg("pci:v0000FFFFd00000000");
    output_within(&mut cmd, limit)
}

/// [`load_unknown_target`] with no daemon behind the socket but a listener: listening, never
/// accepted nor answered (a socket-activated daemon that systemd has not started yet).
fn load_against_silent_socket(args: &[&str]) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    load_unknown_target(&socket, dir.path(), args, Duration::from_secs(30))
}

#[test]
fn udev_load_falls_back_when_the_daemon_never_answers() {
    let (out, took) = load_against_silent_socket(&["--udev", "--timeout", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // --timeout 1: the daemon would be told 1 s, the client waits a second longer for its reply.
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("did not answer"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("within 2 s"), "{err}");
    assert!(
        said[0].contains("loading pci:v0000FFFFd00000000 directly"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn plain_load_times_out_without_fallback() {
    let (out, took) = load_against_silent_socket(&["--timeout", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no reply") && err.contains("timeout"), "{err}");
    assert!(
        !err.contains("directly"),
        "no fallback without --udev: {err}"
    );
    assert!(out.stdout.is_empty());
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn socket_binding_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");

    // A stale socket file (nobody listening) is replaced, and the new one is 0600.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let live = server::bind_socket(&path).expect("stale socket replaced");
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A live one is never stolen.
    assert!(matches!(
        server::bind_socket(&path),
        Err(ListenError::InUse(_))
    ));
    drop(live);

    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    assert!(matches!(
        server::bind_socket(&file),
        Err(ListenError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

/// A client accepted just before the daemon began to stop (udev's, while a package upgrade
/// restarts the daemon) writes its request after the stop began: it still gets its reply, while
/// a connection that was already answered is closed at once.
#[test]
fn request_arriving_during_shutdown_is_answered() {
    let server = TestServer::start(AccessPolicy::default());
    let mut early = server.connect();
    // One accept loop takes connections in order: once a later client is answered, the first
    // one has been accepted too.
    let mut answered = server.connect();
    assert!(exchange(&mut answered, &load_line(&["mb_ok"])).is_some());
    server.begin_shutdown();
    assert!(
        read_reply(&mut answered).is_none(),
        "an answered client is closed at shutdown"
    );
    let reply = exchange(&mut early, &load_line(&["e1000"]))
        .expect("a request sent right after connecting is answered during shutdown");
    assert_eq!(
        reply.load_results().unwrap()[0].outcome,
        OutcomeKind::Loaded
    );
}

#[test]
fn idle_client_does_not_block_others() {
    let server = TestServer::start(AccessPolicy::default());
    let _idle = server.connect();
    let mut partial = server.connect();
    partial.write_all(b"{\"v\":1,\"op\":").unwrap();
    let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok);
}

#[test]
fn half_closed_client_still_gets_its_reply() {
    // `socat` and `nc -N` shut down their writing side after the request and wait for the reply.
    let server = TestServer::start(AccessPolicy::default());
    server.kernel.hold("held");
    let mut conn = server.connect();
    conn.write_all(b"{\"v\":1,\"op\":\"load\",\"targets\":[\"held\"]}\n")
        .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    server.kernel.wait_for_calls("held", 1);
    server.kernel.release("held");
    let reply = read_reply(&mut conn).expect("reply after half-close");
    assert_eq!(
        reply.load_results().unwrap()[0].outcome,
        OutcomeKind::Loaded
    );
}

#[test]
fn thousands_of_targets_each_get_a_result() {
    let server = TestServer::start(AccessPolicy::default());
    let targets: Vec<String> = (0..modbroker::protocol::MAX_TARGETS)
        .map(|i| format!("x{i}"))
        .collect();
    let reply = exchange(&mut server.connect(), &load_line(&targets)).unwrap();
    let results = reply.into_results().unwrap();
    assert_eq!(results.len(), targets.len());
    assert!(results.iter().all(|r| r.outcome == OutcomeKind::NoMatch));

    let too_many: Vec<String> = (0..=modbroker::protocol::MAX_TARGETS)
        .map(|i| format!("{i}"))
        .collect();
    let reply = exchange(&mut server.connect(), &load_line(&too_many)).unwrap();
    assert_eq!(error_kind(&reply), "invalid-request");
}

#[test]
fn hostile_targets_are_invalid_one_by_one() {
    let server = TestServer::start(AccessPolicy::default());
    let overlong = "a".repeat(modbroker::target::MAX_TARGET_LEN + 1);
    let targets = [
        "",
        "..",
        "../../lib/modules/evil.ko",
        "/tmp/x.ko",
        "a\u{1}b",
        "tab\there",
        "-f",
        &overlong,
        "e1000",
    ];
    let reply = exchange(&mut server.connect(), &load_line(&targets)).unwrap();
    let outcomes: Vec<OutcomeKind> = reply
        .load_results()
        .unwrap()
        .iter()
        .map(|r| r.outcome)
        .collect();
    let mut expected = vec![OutcomeKind::Invalid; targets.len() - 1];
    expected.push(OutcomeKind::Loaded);
    assert_eq!(outcomes, expected);
    assert_eq!(server.kernel.call_log().len(), 1, "only e1000 was loaded");
}

#[test]
fn client_that_never_reads_does_not_block_others() {
    let server = TestServer::start(AccessPolicy::default());
    let mut greedy = server.connect();
    // Far more replies than a socket buffer holds, never read: that connection's writer stalls.
    let request = b"{\"v\":1,\"op\":\"status\"}\n".repeat(20_000);
    greedy.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < request.len() {
        match greedy.write(&request[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok, "others are still served");
    drop(greedy);
    let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok);
}

/// `socket_group`/`socket_mode` for a socket the daemon binds: created 0600 root's, then given
/// its group, then its mode; a path that is no longer a socket is left alone.
#[test]
fn shared_socket_gets_the_group_and_mode() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let _listener = server::bind_socket(&path).unwrap();
    let perms = SocketPerms {
        gid: Some(4242),
        mode: 0o660,
    };
    server::share_socket(&path, perms).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, 4242, 0o660)
    );

    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    // Other tests' bind_socket changes the process's umask for a moment: compare, don't assume.
    let before = std::fs::metadata(&file).unwrap();
    assert!(server::share_socket(&file, perms).is_err());
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!((after.gid(), after.mode()), (before.gid(), before.mode()));
}

/// Who an access list allows but a socket file keeps out (connecting needs write permission).
#[test]
fn unreachable_names_whom_the_socket_file_keeps_out() {
    let file = |gid, mode| SocketFile {
        path: "/run/modbroker.sock".into(),
        uid: 0,
        gid,
        mode,
    };
    let policy = AccessPolicy {
        uids: vec![0, 4244],
        gids: vec![4242],
    };
    assert_eq!(
        file(0, 0o600).unreachable(&policy),
        ["gid 4242", "uid 4244"]
    );
    // Group write for the allowed group; uid 4244 is in no database here, so not in it.
    assert_eq!(file(4242, 0o660).unreachable(&policy), ["uid 4244"]);
    assert_eq!(
        file(4242, 0o640).unreachable(&policy),
        ["gid 4242", "uid 4244"]
    );
    assert!(file(0, 0o666).unreachable(&policy).is_empty());
    assert!(file(0, 0o600)
        .unreachable(&AccessPolicy::default())
        .is_empty());
    assert_eq!(
        file(4242, 0o660).to_string(),
        "/run/modbroker.sock (mode 0660, owner 0:4242)"
    );
}

/// Who asked, as the record keeps it: a CLI load (no origin) is the peer's uid and command
/// name, read by the server; `load --udev` names the uevent, and the server leaves it so.
#[test]
fn the_record_names_the_cli_peer_and_keeps_udevs_origin() {
    let server = TestServer::start(AccessPolicy::default());
    let out = server.client(&["load", "mb_ok"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server
        .client(&["load", "--udev", "e1000"])
        .env("SUBSYSTEM", "pci")
        .env("DEVPATH", "/devices/pci0000:00/0000:00:03.0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let broker = server.service.broker();
    let record = broker.recorder().snapshot(false);
    let first = |name: &str| {
        let m = record.modules.iter().find(|m| m.module == name).unwrap();
        m.first_requester.clone()
    };
    assert_eq!(
        first("mb_ok"),
        Requester::Cli {
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            comm: Some("modbroker".into())
        }
    );
    assert_eq!(
        first("e1000"),
        Requester::Udev {
            subsystem: Some("pci".into()),
            devpath: Some("/devices/pci0000:00/0000:00:03.0".into())
        }
    );
}

/// A held load that asked for progress gets a progress line every 2 s until its reply; a
/// request that did not ask gets only its reply (every other test here reads one line).
#[test]
fn a_waiting_load_that_asked_gets_progress_lines() {
    use modbroker::protocol::{decode_daemon_line, DaemonLine, PROGRESS_INTERVAL};
    let server = TestServer::start(AccessPolicy::default());
    server.kernel.hold("held");
    let mut stream = server.connect();
    stream
        .write_all(b"{\"v\":1,\"op\":\"load\",\"targets\":[\"held\"],\"progress\":true}\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut next = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        decode_daemon_line(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    for n in 1..=2u32 {
        match next() {
            DaemonLine::Progress(p) => {
                assert!(
                    p.elapsed_ms >= (PROGRESS_INTERVAL * n).as_millis() as u64,
                    "{p:?}"
                )
            }
            DaemonLine::Reply(r) => panic!("reply before the load ended: {r:?}"),
        }
    }
    server.kernel.release("held");
    match next() {
        DaemonLine::Reply(reply) => {
            assert_eq!(
                reply.load_results().unwrap()[0].outcome,
                OutcomeKind::Loaded
            )
        }
        DaemonLine::Progress(p) => panic!("progress after the load ended: {p:?}"),
    }
}

/// A marker left by a client that found the daemon unresponsive is removed by a daemon that
/// serves, so udev's clients ask it again.
#[test]
fn a_serving_daemon_removes_the_unresponsive_marker() {
    let server = TestServer::start(AccessPolicy::default());
    let marker = modbroker::protocol::unresponsive_marker(&server.socket);
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "1\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while marker.exists() {
        assert!(std::time::Instant::now() < deadline, "marker still there");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `load --udev` against a daemon that accepted nothing: after the liveness bound it loads
/// directly and leaves the marker; the next client loads directly at once.
#[test]
fn udev_load_falls_back_once_the_daemon_is_silent_and_marks_the_boot() {
    use modbroker::protocol::{unresponsive_marker, LIVENESS_BOUND};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let run = || load_unknown_target(&socket, dir.path(), &["--udev"], LIVENESS_BOUND * 3);
    let (out, took) = run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("unresponsive: silent for 20 s"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));
    assert!(took >= LIVENESS_BOUND, "took {took:?}");
    assert!(unresponsive_marker(&socket).is_file());

    let (out, took) = run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("an earlier client found the daemon"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));
    assert!(took < LIVENESS_BOUND / 2, "took {took:?}");
}

/// A daemon that refuses what the client sends (an older daemon refusing a field it does not
/// know) does not lose udev's load: the client loads directly.
#[test]
fn udev_load_falls_back_on_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let old_daemon = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        let refusal = b"{\"v\":1,\"ok\":false,\"error\":{\"kind\":\"malformed\",\"message\":\"malformed request: unknown field `progress`\"}}\n";
        (&stream).write_all(refusal).unwrap();
        request
    });
    let (out, _) = load_unknown_target(&socket, dir.path(), &["--udev"], Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("daemon refused") && err.contains("directly"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));
    assert!(old_daemon.join().unwrap().contains("\"progress\":true"));
}

/// Version skew, a newer client: a request field this daemon does not know costs nothing, and
/// the reply names it (`docs/protocol.md`, "Versioning").
#[test]
fn a_field_this_daemon_does_not_know_is_ignored_and_named() {
    let server = TestServer::start(AccessPolicy::default());
    let mut conn = server.connect();
    let line = b"{\"v\":1,\"op\":\"load\",\"targets\":[\"mb_ok\"],\"zz_future\":{\"x\":[1]}}\n";
    let reply = exchange(&mut conn, line).expect("a reply");
    assert!(reply.ok, "{reply:?}");
    assert_eq!(
        reply.load_results().unwrap()[0].outcome,
        OutcomeKind::Loaded
    );
    assert_eq!(reply.ignored, ["zz_future"]);
    assert_eq!(server.kernel.calls("mb_ok"), 1);
}

/// Version skew, an older client: the line a client of 317eb22 (before progress lines) sent for
/// udev gets exactly one line back, the reply, however long the load takes, and the reply
/// carries no field that client did not know.
#[test]
fn an_older_clients_request_gets_one_reply_line_and_no_progress() {
    use modbroker::protocol::PROGRESS_INTERVAL;
    let server = TestServer::start(AccessPolicy::default());
    server.kernel.hold("held");
    let mut stream = server.connect();
    let old_line = b"{\"v\":1,\"op\":\"load\",\"targets\":[\"held\"],\"params\":[],\"wait\":true,\
        \"retry\":false,\"timeout_ms\":null,\"blacklist_names\":true,\
        \"origin\":{\"kind\":\"udev\",\"subsystem\":\"pci\",\"devpath\":\"/devices/pci0000:00\"}}\n";
    stream.write_all(old_line).unwrap();
    server.kernel.wait_for_calls("held", 1);
    // Nothing may arrive while the load is held, though progress lines would by now.
    stream
        .set_read_timeout(Some(PROGRESS_INTERVAL * 2 + PROGRESS_INTERVAL / 2))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let early = reader.read_line(&mut line);
    assert!(early.is_err(), "a line before the reply: {line:?}");
    server.kernel.release("held");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    let mut keys: Vec<_> = reply.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["ok", "results", "v"], "{line}");
    assert_eq!(reply["results"][0]["outcome"], "loaded", "{line}");
}

/// `EACCES` on connect (an LSM, a socket the administrator closed) does not lose udev's load:
/// the client loads directly.
#[test]
fn udev_load_falls_back_when_the_socket_refuses_access() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("closed.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let module_dir = dir.path().join("modules");
    std::fs::create_dir_all(&module_dir).unwrap();
    std::fs::set_permissions(&module_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbroker"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--module-dir")
        .arg(&module_dir)
        .args(["load", "--udev", "pci:v0000FFFFd00000000"]);
    let out = as_nobody(&mut cmd, 65534);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("directly"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-match"));
}

/// A peer the access list refuses gets its one `permission-denied` reply, and then the
/// connection is closed: it cannot keep the connection, nor have it read.
#[test]
fn a_refused_peer_gets_one_reply_and_is_closed() {
    let server = TestServer::start(AccessPolicy::default());
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = server.socket.clone();
    let mut stream = on_thread_as(65534, 65534, move || UnixStream::connect(socket).unwrap());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"{\"v\":1,\"op\":\"status\"}\n{\"v\":1,\"op\":\"status\"}\n")
        .unwrap();
    let reply = read_reply(&mut stream).expect("one reply");
    assert_eq!(error_kind(&reply), "permission-denied");
    assert!(read_reply(&mut stream).is_none(), "connection still open");
}

/// A connection that sends no complete request line in time is closed.
#[test]
fn a_connection_without_a_complete_line_in_time_is_closed() {
    let limits = ConnectionLimits {
        root_line_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let resolver = FixedResolver::new().with_module("mb_ok", node("mb_ok", vec![]));
    let server =
        TestServer::start_with_limits(FakeKernel::new(), resolver, AccessPolicy::default(), limits);
    let mut stream = server.connect();
    stream.write_all(b"{\"v\":1,\"op\":").unwrap();
    let started = std::time::Instant::now();
    assert!(read_reply(&mut stream).is_none(), "closed without a reply");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A client that answers in time keeps being served, one line after another.
    let mut stream = server.connect();
    for _ in 0..3 {
        let reply = exchange(&mut stream, b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
        assert!(reply.ok);
    }
}

/// Peers other than root hold at most `per_uid` connections each and `unprivileged` together;
/// more are closed at once. Root is served whatever they hold.
#[test]
fn connections_of_peers_other_than_root_are_capped_and_root_is_served() {
    let limits = ConnectionLimits {
        unprivileged: 6,
        per_uid: 4,
        ..ConnectionLimits::default()
    };
    let server = TestServer::start_with_limits(
        FakeKernel::new(),
        FixedResolver::new(),
        AccessPolicy::default(),
        limits,
    );
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let open = |uid: u32, n: usize| {
        let socket = server.socket.clone();
        on_thread_as(uid, uid, move || {
            (0..n)
                .map(|_| UnixStream::connect(&socket).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let first = open(65534, 10);
    let second = open(65533, 10);
    // Accepted in order: once root's reply is back, the daemon has admitted or closed them all.
    let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    assert!(reply.ok, "root is served at the cap");
    let still_open = |streams: &[UnixStream]| {
        streams
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 1];
                matches!((&**s).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    assert_eq!(still_open(&first), 4, "per uid");
    assert_eq!(still_open(&second), 2, "all peers other than root together");
    // Connections that end free their places (the daemon notices the hangups on its own time:
    // ask, bounded, until it has).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let third = open(65532, 3);
        let reply = exchange(&mut server.connect(), b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
        assert!(reply.ok);
        if still_open(&third) == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "places not freed");
    }
}

/// `load --udev` without a target reads the uevent's MODALIAS from its environment byte for
/// byte, as udev's builtin does (80-drivers.rules no longer puts it on a command line that udev
/// would split at whitespace and unquote); without one it is a usage error.
#[test]
fn udev_load_reads_the_modalias_from_the_environment_as_it_is() {
    // Quotes udev would take away; whitespace never reaches a target (the kernel leaves none in
    // a modalias, and the protocol refuses it).
    let modalias = "of:NfooT<NULL>Cvendor,\"model'x\"";
    let resolver = FixedResolver::new().with_module(modalias, node("mb_ok", vec![]));
    let server = TestServer::start_with(FakeKernel::new(), resolver, AccessPolicy::default());
    let out = server
        .client(&["load", "--udev"])
        .env("MODALIAS", modalias)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.kernel.calls("mb_ok"), 1, "{}", stderr(&out));
    let out = server
        .client(&["load", "--udev"])
        .env_remove("MODALIAS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("needs MODALIAS"), "{}", stderr(&out));
}
