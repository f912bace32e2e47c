//! The socket side: where the listener comes from (systemd socket activation or our own bind),
//! the accept loop, one task per connection, peer credentials, and orderly shutdown.
//!
//! A connection is a sequence of request lines, each answered by exactly one reply line, in
//! order. Framing errors (a line over the frame limit, invalid UTF-8) are answered with an error
//! reply and end the connection, since the stream position is no longer trustworthy. Nothing
//! here knows libkmod or syscalls: requests go to the [`Service`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::Requester;
use crate::protocol::{
    decode_request_noting_unknown, unresponsive_marker, Progress, ProtocolError, Reply, Request,
    MAX_FRAME, PROGRESS_INTERVAL,
};
use crate::service::Service;

/// Initial read buffer per connection.
const READ_BUFFER_START: usize = 512;

/// How the listening socket could not be set up.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another process answers on the socket path.
    #[error("{0} is in use by a running daemon; refusing to replace it")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Binding or adopting the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path (or `fd 3` for an inherited socket).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The access policy as the server holds it: shared, and replaceable while serving (SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct SharedAccess(Arc<RwLock<AccessPolicy>>);

impl SharedAccess {
    /// Replaces the policy; connections accepted from now on are checked against it.
    pub fn set(&self, policy: AccessPolicy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    fn get(&self) -> AccessPolicy {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl From<AccessPolicy> for SharedAccess {
    fn from(policy: AccessPolicy) -> Self {
        SharedAccess(Arc::new(RwLock::new(policy)))
    }
}

/// Who may talk to the daemon besides root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Allowed user ids.
    pub uids: Vec<u32>,
    /// Allowed group ids (primary or supplementary).
    pub gids: Vec<u32>,
}

impl AccessPolicy {
    /// Whether a peer with `uid`, primary `gid` and supplementary `groups` is served.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
            || groups.iter().any(|g| self.gids.contains(g))
    }
}

/// The first socket systemd passed us, if any. `LISTEN_PID`/`LISTEN_FDS` are read by the
/// `sd-notify` crate (which also marks the descriptors close-on-exec) and removed from the
/// environment, so that children (install commands) do not think the socket is theirs.
///
/// # Safety
/// This changes the process environment: call it before any other thread exists (the daemon
/// calls it first thing in `main`, before the async runtime and the resolver thread start).
pub unsafe fn take_activated_socket(
) -> Result<Option<std::os::unix::net::UnixListener>, ListenError> {
    // SAFETY: the caller guarantees that no other thread reads or writes the environment.
    let mut fds = unsafe { sd_notify::listen_fds_and_unset_env() }.map_err(activation_error)?;
    std::env::remove_var("LISTEN_FDNAMES");
    // SAFETY: systemd hands us these descriptors as open listening sockets that we now own; the
    // crate checked LISTEN_PID against our pid, and the variables are gone, so nothing else in
    // this process takes them. Only the first is used (modbroker.socket passes one).
    Ok(fds
        .next()
        .map(|fd| unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) }))
}

/// The activated socket, made a non-blocking Tokio listener (needs the runtime).
pub fn adopt_activated_socket(
    listener: std::os::unix::net::UnixListener,
) -> Result<UnixListener, ListenError> {
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(activation_error)
}

fn activation_error(source: io::Error) -> ListenError {
    ListenError::Io {
        path: PathBuf::from("fd 3 (socket activation)"),
        source,
    }
}

/// Binds `path` with mode 0600. A stale socket file (nobody answers) is replaced; a live one is
/// never stolen; a non-socket file is never removed.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ListenError> {
    let io_err = |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.into()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.into())),
            Err(_) => {
                info!(path = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    // Create the socket with no group/other access from the first instant (no chmod race).
    let old_mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old_mask);
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Who may open the socket file the daemon binds itself. Connecting to a Unix socket needs write
/// permission on its file, so the access list ([`AccessPolicy`]) only takes effect for peers the
/// file lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    /// Group to own the file (`None`: root's).
    pub gid: Option<u32>,
    /// Permission bits.
    pub mode: u32,
}

impl Default for SocketPerms {
    /// Root only: 0600, root's group.
    fn default() -> Self {
        SocketPerms {
            gid: None,
            mode: 0o600,
        }
    }
}

/// Gives the socket file at `path`, as [`bind_socket`] created it (0600, root's), the group and
/// then the mode of `perms`: at no instant is it open to more than `perms` say. On error the
/// file keeps what it had (at worst root's group with mode 0600: root only). The path must be
/// in a directory only root can write (as `/run`), so that nobody can swap it in between.
pub fn share_socket(path: &Path, perms: SocketPerms) -> io::Result<()> {
    // chmod(2) follows symbolic links: the path must be the socket, as bind_socket left it.
    if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
        return Err(io::Error::other("not a socket"));
    }
    if let Some(gid) = perms.gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms.mode))
}

/// A socket file's owner and mode, to tell who can connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    /// The path.
    pub path: PathBuf,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl SocketFile {
    /// Reads the owner and mode of the file at `path`.
    pub fn stat(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o777,
        })
    }

    /// The uids and gids `policy` allows that cannot connect (no write permission on the file),
    /// as `uid N` / `gid N`. Root always can.
    pub fn unreachable(&self, policy: &AccessPolicy) -> Vec<String> {
        let gids = policy.gids.iter().filter(|&&gid| !self.lets_group(gid));
        let uids = policy.uids.iter().filter(|&&uid| !self.lets_user(uid));
        let gids = gids.map(|gid| format!("gid {gid}"));
        gids.chain(uids.map(|uid| format!("uid {uid}"))).collect()
    }

    fn lets_group(&self, gid: u32) -> bool {
        self.mode & 0o002 != 0 || (self.gid == gid && self.mode & 0o020 != 0)
    }

    fn lets_user(&self, uid: u32) -> bool {
        uid == 0
            || self.mode & 0o002 != 0
            || (self.uid == uid && self.mode & 0o200 != 0)
            || (self.mode & 0o020 != 0 && user_in_group(uid, self.gid))
    }
}

impl std::fmt::Display for SocketFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, mode) = (self.path.display(), self.mode);
        write!(
            f,
            "{path} (mode {mode:04o}, owner {}:{})",
            self.uid, self.gid
        )
    }
}

/// Whether user `uid` has group `gid` (primary or supplementary) in the user and group
/// databases; false when the user is not there.
fn user_in_group(uid: u32, gid: u32) -> bool {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    user.gid.as_raw() == gid
        || getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

/// What one peer may hold. Root (udev's workers, the kernel helper: the boot's requests) is
/// never capped; everyone else the socket file lets in (a group or everyone, when the
/// administrator widened it) shares [`ConnectionLimits::unprivileged`] connections, at most
/// [`ConnectionLimits::per_uid`] per uid, each holding at most one unfinished line of
/// [`MAX_FRAME`] bytes: a flood costs at most their product in buffers, and root is still served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections of peers other than root, all uids together.
    pub unprivileged: usize,
    /// Open connections of one uid other than root.
    pub per_uid: usize,
    /// How long a peer other than root may take to send a complete request line (the first
    /// one, or the next one after a reply); then the connection is closed.
    pub line_timeout: Duration,
    /// The same for root (an interactive `socat` session, a stuck client).
    pub root_line_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            unprivileged: 256,
            per_uid: 16,
            line_timeout: Duration::from_secs(5),
            root_line_timeout: Duration::from_secs(60),
        }
    }
}

/// The open connections by uid, against [`ConnectionLimits`].
#[derive(Debug, Default)]
struct OpenConnections {
    unprivileged: usize,
    by_uid: HashMap<u32, usize>,
    /// When a refusal was last logged: a flood logs one line a minute, not one per connection.
    last_warned: Option<tokio::time::Instant>,
}

impl OpenConnections {
    /// Counts a new connection of `uid`, unless it is over the limits.
    fn admit(&mut self, uid: u32, limits: &ConnectionLimits) -> bool {
        if uid != 0 {
            let held = self.by_uid.get(&uid).copied().unwrap_or(0);
            if self.unprivileged >= limits.unprivileged || held >= limits.per_uid {
                self.warn_refused(uid, held);
                return false;
            }
            self.unprivileged += 1;
        }
        *self.by_uid.entry(uid).or_default() += 1;
        true
    }

    /// Forgets a connection of `uid` that ended.
    fn release(&mut self, uid: u32) {
        if uid != 0 {
            self.unprivileged = self.unprivileged.saturating_sub(1);
        }
        if let Some(held) = self.by_uid.get_mut(&uid) {
            *held -= 1;
            if *held == 0 {
                self.by_uid.remove(&uid);
            }
        }
    }

    fn warn_refused(&mut self, uid: u32, held: usize) {
        let now = tokio::time::Instant::now();
        if self
            .last_warned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.last_warned = Some(now);
        warn!(
            uid,
            held,
            unprivileged = self.unprivileged,
            "connection limit reached: closing new connections from peers other than root \
             (logged once a minute)"
        );
    }
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting, lets every connection
/// finish the request it is serving, and returns.
pub async fn run(
    listener: UnixListener,
    service: Service,
    access: impl Into<SharedAccess>,
    shutdown: CancellationToken,
) {
    run_with_idle_exit(listener, service, access.into(), shutdown, None).await
}

/// [`run`], and also return after `idle_exit` without connections or loads in flight (for a
/// socket-activated daemon: systemd starts it again on the next connection).
pub async fn run_with_idle_exit(
    listener: UnixListener,
    service: Service,
    access: SharedAccess,
    shutdown: CancellationToken,
    idle_exit: Option<Duration>,
) {
    let limits = ConnectionLimits::default();
    run_with_limits(listener, service, access, shutdown, idle_exit, limits).await
}

/// [`run_with_idle_exit`] with other [`ConnectionLimits`] than the defaults (for tests).
pub async fn run_with_limits(
    listener: UnixListener,
    service: Service,
    access: SharedAccess,
    shutdown: CancellationToken,
    idle_exit: Option<Duration>,
    limits: ConnectionLimits,
) {
    let mut connections = JoinSet::new();
    let mut open = OpenConnections::default();
    let marker = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(unresponsive_marker));
    // The first tick is at once: a daemon that (re)starts tells waiting clients it is back.
    let mut alive = tokio::time::interval(PROGRESS_INTERVAL);
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    let mut last_busy = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = prune.tick() => service.broker().prune_failures(),
            _ = alive.tick(), if marker.is_some() => {
                clear_marker(marker.as_deref());
                service.skip_markers_serving();
            }
            _ = idle_check.tick(), if idle_exit.is_some() => {
                if !connections.is_empty() || service.has_work() {
                    last_busy = tokio::time::Instant::now();
                } else if idle_exit.is_some_and(|idle| last_busy.elapsed() >= idle) {
                    info!("idle: exiting until the next connection");
                    break;
                }
            }
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Ok(uid) = ended {
                    open.release(uid);
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    last_busy = tokio::time::Instant::now();
                    // No credentials: treated as the least trusted peer.
                    let uid = stream.peer_cred().map_or(u32::MAX, |cred| cred.uid());
                    if !open.admit(uid, &limits) {
                        continue;
                    }
                    let line_timeout = if uid == 0 { limits.root_line_timeout } else { limits.line_timeout };
                    let conn = Connection { service: service.clone(), access: access.clone(), shutdown: shutdown.clone(), line_timeout };
                    connections.spawn(async move {
                        conn.serve(stream).await;
                        uid
                    });
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!(
        connections = connections.len(),
        loads = service.broker().in_flight_count(),
        "shutting down: finishing requests and loads in progress"
    );
    while connections.join_next().await.is_some() {}
    // Loads nobody waits on any more (`wait: false`, still being resolved or loading; clients
    // gone) still get to finish: a module half-way through its init must not be abandoned by a
    // daemon restart.
    while service.has_work() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes the boot-wide "daemon unresponsive" marker, if a client left one: this daemon is
/// serving, so udev's clients should ask it again instead of loading directly.
fn clear_marker(marker: Option<&Path>) {
    let Some(marker) = marker else { return };
    match std::fs::remove_file(marker) {
        Ok(()) => {
            info!(marker = %marker.display(), "serving again: removed the unresponsive marker")
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            warn!(marker = %marker.display(), error = %err, "cannot remove the unresponsive marker")
        }
    }
}

/// How long, at shutdown, a connection accepted but not yet asked anything waits for its first
/// request line (a client writes it right after connecting).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

struct Connection {
    service: Service,
    access: SharedAccess,
    shutdown: CancellationToken,
    /// How long the peer may take to send a complete request line.
    line_timeout: Duration,
}

impl Connection {
    async fn serve(self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let denied = self.check_peer(read.as_ref()).err();
        // Requests are a few hundred bytes: start the buffer small (the default 8 KiB per
        // connection would dominate memory with 10,000 waiting clients); it grows as needed.
        let codec = LinesCodec::new_with_max_length(MAX_FRAME);
        let mut lines = FramedRead::with_capacity(read, codec, READ_BUFFER_START);
        let mut answered_any = false;
        loop {
            let next = tokio::select! {
                biased;
                next = lines.next() => next,
                _ = self.stop_waiting(answered_any) => return,
                _ = tokio::time::sleep(self.line_timeout) => {
                    debug!("no complete request line in time: closing the connection");
                    return;
                }
            };
            let (reply, last) = match next {
                None => return,
                // A refused peer gets its one error reply, then the connection is closed.
                Some(Ok(line)) => match &denied {
                    Some(denied) => (Reply::error(denied), true),
                    None => match self
                        .answer_unless_gone(&line, lines.get_ref().as_ref(), &mut write)
                        .await
                    {
                        Some(reply) => (reply, false),
                        None => return,
                    },
                },
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    (Reply::error(&ProtocolError::FrameTooLarge), true)
                }
                Some(Err(LinesCodecError::Io(err))) => {
                    let reason = format!("unreadable request: {err}");
                    (Reply::error(&ProtocolError::Malformed(reason)), true)
                }
            };
            // A client that went away gets no reply; the loads it asked for go on regardless.
            if write.write_all(reply.encode().as_bytes()).await.is_err() || last {
                return;
            }
            answered_any = true;
        }
    }

    /// When a connection stops waiting for its next request: at shutdown, at once if it was
    /// answered before (an idle client), else after [`FIRST_REQUEST_GRACE`]. A client that
    /// connected just before the shutdown (udev's during a package upgrade's restart) writes
    /// its request right after connecting; dropping it unread would leave it without a reply.
    async fn stop_waiting(&self, answered_any: bool) {
        self.shutdown.cancelled().await;
        if !answered_any {
            tokio::time::sleep(FIRST_REQUEST_GRACE).await;
        }
    }

    /// Answers `line`, unless the peer hangs up first: then its wait is dropped (the loads it
    /// asked for go on; they are spawned tasks) so `status` does not count it as a waiter. A
    /// `load` that asked for progress gets a progress line on `write` every
    /// [`PROGRESS_INTERVAL`] until its reply is ready.
    async fn answer_unless_gone(
        &self,
        line: &str,
        stream: &UnixStream,
        write: &mut OwnedWriteHalf,
    ) -> Option<Reply> {
        let (request, ignored) = match decode_request_noting_unknown(line.as_bytes()) {
            Ok(decoded) => decoded,
            Err(err) => {
                debug!(error = %err, "bad request");
                return Some(Reply::error(&err));
            }
        };
        if !ignored.is_empty() {
            debug!(
                ?ignored,
                "request fields this daemon does not know: ignored"
            );
        }
        let progress = matches!(&request, Request::Load(load) if load.progress);
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval_at(started + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
        // A daemon starved for a while sends one line late, not a burst of them.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let answer = self.answer(request, stream);
        tokio::pin!(answer);
        let mut watch_hangup = true;
        loop {
            tokio::select! {
                reply = &mut answer => return Some(Reply { ignored, ..reply }),
                gone = peer_hung_up(stream), if watch_hangup => {
                    if gone {
                        debug!("client hung up before its reply");
                        return None;
                    }
                    // More data, or a half-close (`socat` shuts down its writing side and
                    // waits): the client still wants its reply.
                    watch_hangup = false;
                }
                _ = ticks.tick(), if progress => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    let line = Progress { elapsed_ms }.encode();
                    if write.write_all(line.as_bytes()).await.is_err() {
                        debug!("client went away while waiting");
                        return None;
                    }
                }
            }
        }
    }

    /// Serves one decoded request from `stream`'s peer; a load that does not say who asks (udev,
    /// the kernel) is recorded as asked by the peer, looked up only then (udev's requests, the
    /// bulk of a boot's, say it themselves). Only root may say: a udev origin leaves skip markers
    /// (modbroker::skip), so another peer's claim is replaced by who it is.
    async fn answer(&self, request: Request, stream: &UnixStream) -> Reply {
        match request {
            Request::Load(mut load) => {
                if load.origin.is_some() && !stream.peer_cred().is_ok_and(|c| c.uid() == 0) {
                    load.origin = None;
                }
                load.origin.get_or_insert_with(|| peer_requester(stream));
                self.service.handle(Request::Load(load)).await
            }
            request => self.service.handle(request).await,
        }
    }

    fn check_peer(&self, stream: &UnixStream) -> Result<(), ProtocolError> {
        let cred = stream
            .peer_cred()
            .map_err(|e| ProtocolError::Internal(format!("cannot read peer credentials: {e}")))?;
        let access = self.access.get();
        let groups = if access.gids.is_empty() {
            Vec::new()
        } else {
            peer_groups(stream.as_raw_fd())
        };
        if access.allows(cred.uid(), cred.gid(), &groups) {
            return Ok(());
        }
        warn!(
            uid = cred.uid(),
            gid = cred.gid(),
            pid = cred.pid(),
            "refused peer: not allowed"
        );
        Err(ProtocolError::PermissionDenied(format!(
            "uid {} is not allowed to use modbroker",
            cred.uid()
        )))
    }
}

/// Waits until the socket has news; true if the peer closed the connection completely. A half
/// close (shutdown of the peer's writing side) also wakes the read side, but only a full close
/// raises `POLLHUP`, so ask poll(2) which one it was.
async fn peer_hung_up(stream: &UnixStream) -> bool {
    match stream.ready(Interest::READABLE).await {
        Err(_) => true,
        Ok(ready) if ready.is_read_closed() => {
            let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
            // Timeout zero: only asks, never blocks.
            matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
                && fds[0]
                    .revents()
                    .is_some_and(|revents| revents.contains(PollFlags::POLLHUP))
        }
        Ok(_) => false,
    }
}

/// The peer as the record names a CLI requester: its uid and `/proc/PID/comm` (unknown uid
/// `u32::MAX` if the kernel cannot say; no name if the process is gone or hidden from us).
fn peer_requester(stream: &UnixStream) -> Requester {
    match stream.peer_cred() {
        Ok(cred) => Requester::Cli {
            uid: cred.uid(),
            comm: cred.pid().and_then(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|c| c.trim_end().to_string())
            }),
        },
        Err(_) => Requester::Cli {
            uid: u32::MAX,
            comm: None,
        },
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`); empty if the kernel cannot say.
fn peer_groups(fd: RawFd) -> Vec<u32> {
    let mut groups = vec![0u32; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is a valid writable buffer of `len` bytes; the kernel writes at most
        // `len` bytes and reports the size it needs in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<u32>();
        if rc == 0 {
            groups.truncate(count);
            return groups;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            break;
        }
        groups.resize(count, 0);
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A flood in any order of opens (by root and a handful of other uids) and closes:
        /// root is always admitted; other uids never hold more than `per_uid` each nor
        /// `unprivileged` together; a refusal happens only at a limit; and once every admitted
        /// connection has closed, nothing is held (no place leaks).
        #[test]
        fn connection_limits_hold_under_any_flood(
            events in prop::collection::vec((0u32..6, any::<bool>(), any::<prop::sample::Index>()), 1..400),
        ) {
            let limits = ConnectionLimits { unprivileged: 7, per_uid: 3, ..ConnectionLimits::default() };
            let mut open = OpenConnections::default();
            let mut held: Vec<u32> = Vec::new();
            for (uid, opens, which) in events {
                if opens || held.is_empty() {
                    let others = held.iter().filter(|&&u| u != 0).count();
                    let mine = held.iter().filter(|&&u| u == uid).count();
                    let room = uid == 0 || (others < limits.unprivileged && mine < limits.per_uid);
                    prop_assert_eq!(open.admit(uid, &limits), room);
                    if room {
                        held.push(uid);
                    }
                } else {
                    let uid = held.swap_remove(which.index(held.len()));
                    open.release(uid);
                }
                prop_assert!(open.unprivileged <= limits.unprivileged);
                prop_assert_eq!(open.unprivileged, held.iter().filter(|&&u| u != 0).count());
            }
            for uid in held.drain(..) {
                open.release(uid);
            }
            prop_assert_eq!(open.unprivileged, 0);
            prop_assert!(open.by_uid.is_empty());
        }
    }
}
