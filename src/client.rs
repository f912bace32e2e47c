//! The blocking client: one request line out, one reply line back, over a Unix socket, with
//! nothing but std. `modbroker` is exec'd by udev once per uevent, so it must start fast: no async
//! runtime, no threads.
//!
//! The client links neither libkmod nor the loader: when no daemon answers, it runs
//! `modbrokerd --oneshot` (the same library code, loading directly without merging) and reads
//! its one JSON result. Keeping libkmod (and the libcrypto, libzstd and liblzma it pulls in) out
//! of the client's start-up is most of what makes it cheaper to exec than modprobe.
//!
//! The client tells apart a daemon that cannot be reached (no socket, connection refused, a
//! listen backlog still full when the timeout ends, the daemon died before replying: the caller
//! may fall back to loading directly) from a daemon that answered (even with a refusal: final,
//! never a reason to fall back). With a timeout, nothing waits longer: neither the connect (a
//! full backlog blocks it) nor the reply (a socket-activated daemon may not be started yet).
//!
//! udev's client waits by liveness instead ([`call_while_alive`]): it asks for progress lines
//! and waits while they come, so a slow module init is waited for and a silent daemon is left
//! after [`LIVENESS_BOUND`]; [`mark_unresponsive`] then tells the rest of the boot.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};
use thiserror::Error;

use crate::config::DEFAULT_SOCKET_PATH;
use crate::protocol::{
    decode_daemon_line, skip_serving_dir, unresponsive_marker, DaemonLine, Reply, Request,
    TargetResult, LIVENESS_BOUND,
};

/// Largest reply line the client accepts (a `status` with many failures, or thousands of
/// targets, stays well below this).
const MAX_REPLY: u64 = 16 * 1024 * 1024;

/// Why a request got no reply.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nobody is serving the socket: no such file, connection refused, or the daemon went away
    /// before replying. Loading directly is the right fallback.
    #[error("daemon unreachable at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The wait for the reply timed out.
    #[error("no reply from {0} within the timeout")]
    TimedOut(PathBuf),
    /// The daemon said nothing at all (no accepted connection, no progress line, no reply) for
    /// longer than the liveness bound: stopped, wedged, or never started.
    #[error("daemon at {path} unresponsive: silent for {} s", silence.as_secs_f64())]
    Unresponsive {
        /// The socket path.
        path: PathBuf,
        /// How long it was silent.
        silence: Duration,
    },
    /// Anything else (permission denied on the socket, a reply that is not the protocol).
    #[error("talking to {path}: {message}")]
    Failed {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The socket to use: `--socket`, else `$MODBROKER_SOCKET`, else `/run/modbroker.sock`.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MODBROKER_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH))
}

/// Sends `request` to the daemon at `socket` and returns its reply. `timeout` bounds the whole
/// exchange: the connect, the write and the wait for the reply.
pub fn call(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Reply, ClientError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut exchange = Exchange::start(socket, request, timeout)?;
    loop {
        let left = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(ClientError::TimedOut(socket.to_path_buf())),
            },
        };
        match exchange.next_line(left)? {
            Some(DaemonLine::Reply(reply)) => return Ok(*reply),
            Some(DaemonLine::Progress(_)) => continue,
            None => return Err(ClientError::TimedOut(socket.to_path_buf())),
        }
    }
}

/// How [`call_while_alive`] waits.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Silence (no accepted connection, no line) after which the daemon is unresponsive.
    pub silence: Duration,
    /// The longest wait in all while the daemon keeps answering; `None`: [`udev_wait_limit`],
    /// read only once the wait outlasts the first progress line (most answers come before).
    pub limit: Option<Duration>,
}

impl Default for Liveness {
    /// [`LIVENESS_BOUND`] of silence, udev's limit in all.
    fn default() -> Self {
        Liveness {
            silence: LIVENESS_BOUND,
            limit: None,
        }
    }
}

/// Sends `request` (which should ask for progress lines) and waits for its reply for as long as
/// the daemon shows it is alive: each line, progress or reply, restarts the silence bound.
/// Silence past `liveness.silence` (including a connect that waits that long in a full backlog,
/// or a socket-activated daemon that never starts) is [`ClientError::Unresponsive`]; a live
/// daemon still working at `liveness.limit` is [`ClientError::TimedOut`].
pub fn call_while_alive(
    socket: &Path,
    request: &Request,
    liveness: &Liveness,
) -> Result<Reply, ClientError> {
    let started = Instant::now();
    let unresponsive = || ClientError::Unresponsive {
        path: socket.to_path_buf(),
        silence: liveness.silence,
    };
    let mut exchange = match Exchange::start(socket, request, Some(liveness.silence)) {
        Err(ClientError::Unreachable { source, .. })
            if source.kind() == io::ErrorKind::TimedOut =>
        {
            return Err(unresponsive())
        }
        other => other?,
    };
    let mut limit = liveness.limit;
    loop {
        let left = limit.map(|limit| limit.saturating_sub(started.elapsed()));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(ClientError::TimedOut(socket.to_path_buf()));
        }
        let wait = left.map_or(liveness.silence, |left| left.min(liveness.silence));
        match exchange.next_line(Some(wait))? {
            Some(DaemonLine::Reply(reply)) => return Ok(*reply),
            Some(DaemonLine::Progress(_)) => {
                limit.get_or_insert_with(udev_wait_limit);
            }
            None if wait < liveness.silence => {
                return Err(ClientError::TimedOut(socket.to_path_buf()))
            }
            None => return Err(unresponsive()),
        }
    }
}

/// One request on one connection, and the lines that come back.
struct Exchange {
    path: PathBuf,
    stream: UnixStream,
    /// Bytes read and not yet returned as a line (a line cut by a read timeout waits here).
    pending: Vec<u8>,
    /// Bytes read in all: at [`MAX_REPLY`] the reply counts as cut short.
    received: u64,
    /// Why writing the request failed, if it did: a daemon that refuses us may answer and
    /// close before reading our request; its reply is still readable after our write fails,
    /// and it (not the write error) decides.
    write_error: Option<io::Error>,
}

impl Exchange {
    /// Connects (within `timeout`, if any) and writes `request`.
    fn start(
        socket: &Path,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let failed = |message: String| ClientError::Failed {
            path: socket.to_path_buf(),
            message,
        };
        let mut stream = connect(socket, timeout).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut => ClientError::Unreachable {
                path: socket.to_path_buf(),
                source: e,
            },
            _ => failed(format!("cannot connect: {e}")),
        })?;
        stream
            .set_write_timeout(timeout)
            .map_err(|e| failed(e.to_string()))?;
        let write_error = stream.write_all(request.encode().as_bytes()).err();
        Ok(Exchange {
            path: socket.to_path_buf(),
            stream,
            pending: Vec::with_capacity(1024),
            received: 0,
            write_error,
        })
    }

    /// The next line from the daemon, waiting at most `timeout` for each read (`None`: no
    /// bound). `Ok(None)`: nothing came within `timeout`.
    fn next_line(&mut self, timeout: Option<Duration>) -> Result<Option<DaemonLine>, ClientError> {
        // A zero read timeout means "block forever" to the kernel, and std refuses it.
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| self.failed(e.to_string()))?;
        let mut chunk = [0u8; 4096];
        // How much of `pending` is known to hold no newline: each byte is looked at once.
        let mut scanned = 0;
        loop {
            if let Some(at) = self.pending[scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=scanned + at).collect();
                return decode_daemon_line(&line)
                    .map(Some)
                    .map_err(|e| self.failed(format!("unreadable reply: {e}")));
            }
            let read = match self.stream.read(&mut chunk) {
                Ok(_) if self.received >= MAX_REPLY => 0,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ClientError::Unreachable {
                        path: self.path.clone(),
                        source: e,
                    })
                }
                Err(e) => return Err(self.failed(e.to_string())),
            };
            if read == 0 && self.pending.is_empty() {
                return Err(ClientError::Unreachable {
                    path: self.path.clone(),
                    source: self.write_error.take().unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "daemon closed the connection without replying",
                        )
                    }),
                });
            }
            if read == 0 {
                return Err(self.failed("reply cut short".to_string()));
            }
            self.received += read as u64;
            scanned = self.pending.len();
            self.pending.extend_from_slice(&chunk[..read]);
        }
    }

    fn failed(&self, message: String) -> ClientError {
        ClientError::Failed {
            path: self.path.clone(),
            message,
        }
    }
}

/// udev's default event timeout (systemd-udevd kills an event's worker after it).
const UDEV_EVENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest a `load --udev` client waits for a daemon that keeps answering: half udev's event
/// timeout, so 90 s by default. udev's clock for the event starts before the client (other rules'
/// programs, the exec itself, which takes seconds on a loaded 64-vCPU guest), and a 64-vCPU boot
/// under emulation had workers killed at 180 s with a 30 s margin; half leaves the other half for
/// those. The timeout is `udev.event_timeout=` (or `rd.udev.event_timeout=`) on the kernel command
/// line, else `event_timeout=` in `/etc/udev/udev.conf`, else 180 s.
pub fn udev_wait_limit() -> Duration {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let timeout = event_timeout_from_cmdline(&read("/proc/cmdline"))
        .or_else(|| event_timeout_from_conf(&read("/etc/udev/udev.conf")))
        .unwrap_or(UDEV_EVENT_TIMEOUT);
    wait_limit_for(timeout)
}

/// [`udev_wait_limit`] for an event timeout of `timeout`.
pub fn wait_limit_for(timeout: Duration) -> Duration {
    timeout / 2
}

/// The last `udev.event_timeout=SECS` or `rd.udev.event_timeout=SECS` on a kernel command line.
pub fn event_timeout_from_cmdline(cmdline: &str) -> Option<Duration> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| {
            let word = word.strip_prefix("rd.").unwrap_or(word);
            word.strip_prefix("udev.event_timeout=")
        })
        .filter_map(positive_secs)
        .next_back()
}

/// `event_timeout=SECS` from udev.conf's text (comments and other keys ignored).
pub fn event_timeout_from_conf(conf: &str) -> Option<Duration> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("event_timeout"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"'))
        .filter_map(positive_secs)
        .next_back()
}

fn positive_secs(value: &str) -> Option<Duration> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
}

/// Whether a client found the daemon at `socket` unresponsive earlier in this boot (and the
/// daemon has not cleared the marker since): see [`unresponsive_marker`].
pub fn marked_unresponsive(socket: &Path) -> bool {
    unresponsive_marker(socket).exists()
}

/// Leaves the boot-wide marker saying the daemon at `socket` is unresponsive, so that later
/// clients load directly at once. Best effort: without it, each later client waits one bound.
pub fn mark_unresponsive(socket: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let marker = unresponsive_marker(socket);
    if let Some(dir) = marker.parent() {
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::fs::write(&marker, format!("{}\n", std::process::id()))?;
    // No skip marker naming a failed module resolves while the daemon is marked.
    match std::fs::remove_dir(skip_serving_dir(socket)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Connects to `socket`. With `timeout`, the connect is bounded too: when the listen backlog is
/// full, Linux's unix_stream_connect waits for a slot for up to the socket's SO_SNDTIMEO and then
/// fails with EAGAIN, reported here as `TimedOut`.
fn connect(socket: &Path, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(socket)?;
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let stream = UnixStream::from(fd);
    // std's setter sets SO_SNDTIMEO and rounds a sub-microsecond timeout up, not to "forever".
    stream.set_write_timeout(timeout)?;
    let connected = loop {
        match sock::connect(stream.as_raw_fd(), &addr) {
            // A stop and continue (SIGSTOP, SIGCONT) interrupts a wait that has a timeout.
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match connected {
        Ok(()) => Ok(stream),
        Err(Errno::EAGAIN) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect timed out after {} s (listen backlog full)",
                timeout.unwrap_or_default().as_secs_f64()
            ),
        )),
        Err(errno) => Err(errno.into()),
    }
}

/// Loads `target` without a daemon, by running `modbrokerd --oneshot` (found beside this
/// executable, else on `$PATH`) and returning the result it prints. `blacklist_names` as in
/// [`crate::protocol::LoadRequest`].
pub fn load_without_daemon(
    module_dir: Option<&Path>,
    target: &str,
    params: &[String],
    blacklist_names: bool,
) -> Result<TargetResult, String> {
    let (daemon, mut cmd) = modbrokerd_command("--oneshot", module_dir, blacklist_names);
    cmd.arg(target).args(params);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", daemon.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --oneshot failed ({})",
            daemon.display(),
            out.status
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("unreadable result from {} --oneshot: {e}", daemon.display()))
}

/// `modbrokerd`: beside this executable, else on `$PATH`.
fn modbrokerd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("modbrokerd")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("modbrokerd"))
}

/// `modbrokerd MODE [--module-dir DIR] [--blacklist-names] --`, to be given its targets; with
/// the path of the `modbrokerd` it runs.
fn modbrokerd_command(
    mode: &str,
    module_dir: Option<&Path>,
    blacklist_names: bool,
) -> (PathBuf, std::process::Command) {
    let daemon = modbrokerd();
    let mut cmd = std::process::Command::new(&daemon);
    cmd.arg(mode);
    if let Some(dir) = module_dir {
        cmd.arg("--module-dir").arg(dir);
    }
    if blacklist_names {
        cmd.arg("--blacklist-names");
    }
    cmd.arg("--");
    (daemon, cmd)
}

/// `resolve --show-depends`: runs `modbrokerd --show-depends [--module-dir DIR]
/// [--blacklist-names] -- TARGET...` with this process's stdin, stdout and stderr, and returns
/// its exit status. The daemon is not asked: the client links no libkmod, and modbrokerd resolves
/// with the same library code as the daemon.
pub fn show_depends(
    module_dir: Option<&Path>,
    targets: &[String],
    blacklist_names: bool,
) -> Result<std::process::ExitStatus, String> {
    let (daemon, mut cmd) = modbrokerd_command("--show-depends", module_dir, blacklist_names);
    cmd.args(targets);
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", daemon.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixListener;

    /// Runs `call` with `timeout` on its own thread and waits at most 20 s for it, so that a
    /// client that hangs fails the test instead of hanging it.
    fn call_bounded(socket: &Path, timeout: Duration) -> (Result<Reply, ClientError>, Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = call(&socket, &Request::Status, Some(timeout));
            let _ = tx.send((result, started.elapsed()));
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("client::call returned within 20 s")
    }

    /// Queues connections on `listener` (never accepted) until its backlog is full.
    fn fill_backlog(listener: &UnixListener, path: &Path) -> Vec<OwnedFd> {
        sock::listen(listener, sock::Backlog::new(0).unwrap()).unwrap();
        let addr = UnixAddr::new(path).unwrap();
        let mut queued = Vec::new();
        loop {
            let fd = sock::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            match sock::connect(fd.as_raw_fd(), &addr) {
                Ok(()) => queued.push(fd),
                Err(Errno::EAGAIN) => return queued,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(queued.len() < 64, "backlog never filled");
        }
    }

    #[test]
    fn connect_to_a_full_backlog_gives_up_as_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _queued = fill_backlog(&listener, &path);
        let (result, elapsed) = call_bounded(&path, Duration::from_millis(300));
        match result {
            Err(ClientError::Unreachable { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut, "{source}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    }

    /// A stand-in daemon on `path`: accepts one connection, reads the request line, writes
    /// `progress` progress lines `every` apart, then the reply (unless `reply` is false: then it
    /// keeps the connection open, silent, until the client goes away). Returns the request line.
    fn stand_in_daemon(
        listener: UnixListener,
        progress: usize,
        every: Duration,
        reply: bool,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let mut writer = &stream;
            for n in 1..=progress {
                std::thread::sleep(every);
                let line = crate::protocol::Progress {
                    elapsed_ms: (every * n as u32).as_millis() as u64,
                };
                if writer.write_all(line.encode().as_bytes()).is_err() {
                    return request;
                }
            }
            if reply {
                let _ = writer.write_all(
                    Reply::error(&crate::protocol::ProtocolError::Internal("done".into()))
                        .encode()
                        .as_bytes(),
                );
            } else {
                let _ = (&stream).read(&mut [0u8; 1]);
            }
            request
        })
    }

    fn alive_for(silence_ms: u64, limit_ms: Option<u64>) -> Liveness {
        Liveness {
            silence: Duration::from_millis(silence_ms),
            limit: limit_ms.map(Duration::from_millis),
        }
    }

    /// Progress lines keep the client waiting well past the silence bound, and the reply
    /// after them is the answer.
    #[test]
    fn progress_keeps_a_client_waiting_past_the_silence_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let daemon = stand_in_daemon(
            UnixListener::bind(&path).unwrap(),
            6,
            Duration::from_millis(100),
            true,
        );
        let started = Instant::now();
        let reply = call_while_alive(&path, &Request::Status, &alive_for(300, Some(20_000)));
        assert!(reply.is_ok_and(|r| !r.ok), "the reply, not a progress line");
        assert!(started.elapsed() >= Duration::from_millis(600));
        daemon.join().unwrap();
    }

    /// A daemon that accepted and then says nothing is unresponsive after the silence bound.
    #[test]
    fn a_silent_daemon_is_unresponsive_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let daemon = stand_in_daemon(
            UnixListener::bind(&path).unwrap(),
            1,
            Duration::from_millis(100),
            false,
        );
        let started = Instant::now();
        let result = call_while_alive(&path, &Request::Status, &alive_for(300, None));
        assert!(
            matches!(result, Err(ClientError::Unresponsive { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(400));
        daemon.join().unwrap();
    }

    /// A live daemon still working at the limit: the client stops waiting (timed out), it is
    /// not told the daemon is unresponsive.
    #[test]
    fn a_live_daemon_past_the_limit_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let daemon = stand_in_daemon(
            UnixListener::bind(&path).unwrap(),
            20,
            Duration::from_millis(50),
            false,
        );
        let result = call_while_alive(&path, &Request::Status, &alive_for(300, Some(400)));
        assert!(
            matches!(result, Err(ClientError::TimedOut(_))),
            "{result:?}"
        );
        daemon.join().unwrap();
    }

    /// A connect that waits in a full backlog for the whole silence bound: unresponsive.
    #[test]
    fn a_full_backlog_past_the_bound_is_unresponsive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _queued = fill_backlog(&listener, &path);
        let result = call_while_alive(&path, &Request::Status, &alive_for(300, None));
        assert!(
            matches!(result, Err(ClientError::Unresponsive { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn udevs_event_timeout_from_the_command_line_and_udev_conf() {
        let secs = Duration::from_secs;
        let cmdline = "root=/dev/vda udev.event_timeout=300 quiet rd.udev.event_timeout=90\n";
        assert_eq!(event_timeout_from_cmdline(cmdline), Some(secs(90)));
        assert_eq!(event_timeout_from_cmdline("udev.event_timeout=0 ro"), None);
        assert_eq!(event_timeout_from_cmdline("ro quiet"), None);
        let conf =
            "# see udev.conf(5)\n#event_timeout=10\nudev_log=info\nevent_timeout = \"240\"\n";
        assert_eq!(event_timeout_from_conf(conf), Some(secs(240)));
        assert_eq!(event_timeout_from_conf("udev_log=info\n"), None);
        // Half the timeout: the other half is for what udev runs before and around us.
        assert_eq!(wait_limit_for(secs(180)), secs(90));
        assert_eq!(wait_limit_for(secs(40)), secs(20));
    }

    #[test]
    fn the_marker_is_left_and_seen() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("modbroker.sock");
        assert!(!marked_unresponsive(&socket));
        mark_unresponsive(&socket).unwrap();
        assert!(marked_unresponsive(&socket));
        assert!(dir.path().join("modbroker/unresponsive").is_file());
        // A second client's mark (the directory exists now) is no error.
        mark_unresponsive(&socket).unwrap();
        // It takes the skip markers' `serving` directory with it.
        let serving = dir.path().join("modbroker/skip/.state/serving");
        std::fs::create_dir_all(&serving).unwrap();
        mark_unresponsive(&socket).unwrap();
        assert!(!serving.exists());
    }

    /// A reply far longer than one read, written in small pieces after a progress line, is read
    /// whole and in linear time (the reader looks for the newline only in what each read added).
    #[test]
    fn a_long_reply_in_many_pieces_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let results: Vec<TargetResult> = (0..40_000)
            .map(|i| TargetResult {
                target: format!("target{i}"),
                outcome: crate::model::OutcomeKind::NoMatch,
                modules: vec![],
                failure: None,
                merged: false,
                elapsed_us: i,
            })
            .collect();
        let reply = Reply::results(results);
        let line = reply.encode();
        assert!(line.len() > 3_000_000, "{}", line.len());
        let daemon = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            BufReader::new(&stream)
                .read_line(&mut String::new())
                .unwrap();
            let mut writer = &stream;
            let progress = crate::protocol::Progress { elapsed_ms: 1 }.encode() + &line;
            for piece in progress.as_bytes().chunks(1000) {
                writer.write_all(piece).unwrap();
            }
        });
        let started = Instant::now();
        let read = call(&path, &Request::Status, Some(Duration::from_secs(60))).unwrap();
        daemon.join().unwrap();
        assert_eq!(read, reply);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn reply_that_never_comes_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Listening, so the connect succeeds at once, but never accepted nor answered: a
        // socket-activated daemon that has not started.
        let _listener = UnixListener::bind(&path).unwrap();
        let (result, elapsed) = call_bounded(&path, Duration::from_millis(300));
        assert!(
            matches!(result, Err(ClientError::TimedOut(_))),
            "{result:?}"
        );
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    }
}
