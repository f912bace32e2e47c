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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};
use thiserror::Error;

use crate::config::DEFAULT_SOCKET_PATH;
use crate::protocol::{Reply, Request, TargetResult};

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
    let failed = |message: String| ClientError::Failed {
        path: socket.to_path_buf(),
        message,
    };
    let unreachable = |source| ClientError::Unreachable {
        path: socket.to_path_buf(),
        source,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stream = connect(socket, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut => {
            unreachable(e)
        }
        _ => failed(format!("cannot connect: {e}")),
    })?;
    let left = match deadline {
        None => None,
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Err(ClientError::TimedOut(socket.to_path_buf())),
        },
    };
    stream
        .set_write_timeout(left)
        .and_then(|()| stream.set_read_timeout(left))
        .map_err(|e| failed(e.to_string()))?;
    // A daemon that refuses us may answer and close before reading our request; its reply is
    // still readable after our write fails, and it (not the write error) decides.
    let written = stream.write_all(request.encode().as_bytes());
    let mut line = String::new();
    let read = BufReader::new(stream.take(MAX_REPLY)).read_line(&mut line);
    match read {
        Ok(0) => Err(unreachable(written.err().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "daemon closed the connection without replying",
            )
        }))),
        Ok(_) => serde_json::from_str(&line).map_err(|e| failed(format!("unreadable reply: {e}"))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ClientError::TimedOut(socket.to_path_buf()))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(unreachable(e)),
        Err(e) => Err(failed(e.to_string())),
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
