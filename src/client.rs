//! The blocking client: one request line out, one reply line back, over a Unix socket, with
//! nothing but std. `modbroker` is exec'd by udev once per uevent, so it must start fast: no async
//! runtime, no threads.
//!
//! The client links neither libkmod nor the loader: when no daemon answers, it runs
//! `modbrokerd --oneshot` (the same library code, loading directly without merging) and reads
//! its one JSON result. Keeping libkmod (and the libcrypto, libzstd and liblzma it pulls in) out
//! of the client's start-up is most of what makes it cheaper to exec than modprobe.
//!
//! The client tells apart a daemon that cannot be reached (no socket, connection refused, the
//! daemon died before replying: the caller may fall back to loading directly) from a daemon that
//! answered (even with a refusal: final, never a reason to fall back).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Sends `request` to the daemon at `socket` and returns its reply. `timeout` bounds the wait.
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
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => unreachable(e),
        _ => failed(format!("cannot connect: {e}")),
    })?;
    stream
        .set_read_timeout(timeout)
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

/// Loads `target` without a daemon, by running `modbrokerd --oneshot` (found beside this
/// executable, else on `$PATH`) and returning the result it prints.
pub fn load_without_daemon(
    module_dir: Option<&Path>,
    target: &str,
    params: &[String],
) -> Result<TargetResult, String> {
    let daemon = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("modbrokerd")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("modbrokerd"));
    let mut cmd = std::process::Command::new(&daemon);
    cmd.arg("--oneshot");
    if let Some(dir) = module_dir {
        cmd.arg("--module-dir").arg(dir);
    }
    cmd.arg("--").arg(target).args(params);
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
