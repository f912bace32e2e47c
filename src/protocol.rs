//! The wire protocol: newline-delimited JSON over a Unix stream socket, one request per line and
//! exactly one reply line per request. Documented for humans in `docs/protocol.md`.
//!
//! This module knows the shapes and limits of frames and nothing of sockets or libkmod: the server
//! frames lines, [`decode_request`] turns a line into a [`Request`] (or a [`ProtocolError`] that
//! becomes an error reply), and [`Reply`] is what goes back. The client uses the same types, so the
//! two ends cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Failure, FailureCount, InFlight, OutcomeKind, Requester};

mod lean;

/// Protocol version. Requests carry it as `"v"`; a request with another version is refused with
/// an `unsupported-version` error instead of being guessed at.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request line accepted, newline excluded. Longer lines get a `frame-too-large` error and
/// the connection is closed (the rest of such a line is never buffered).
pub const MAX_FRAME: usize = 64 * 1024;
/// Most targets in one request.
pub const MAX_TARGETS: usize = 4096;
/// Longest parser message echoed back in a `malformed` error, in bytes.
const MAX_ERROR_DETAIL: usize = 200;

/// A request's operation, as `op` names it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `load`: [`Request::Load`].
    Load,
    /// `resolve`: [`Request::Resolve`].
    Resolve,
    /// `status`: [`Request::Status`].
    Status,
}

impl Operation {
    /// The operation `op` names, by the serde names above; `None` for any other text.
    fn named(op: &str) -> Option<Operation> {
        use serde::de::value::{Error, StrDeserializer};
        Operation::deserialize(StrDeserializer::<Error>::new(op)).ok()
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Load targets (module names or modaliases).
    Load(LoadRequest),
    /// Dry run: show what the targets resolve to, like `modprobe --show-depends`.
    Resolve(Vec<String>),
    /// Counters and in-flight loads.
    Status,
}

/// The `load` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// Module names or modaliases, validated later one by one (each gets its own result).
    pub targets: Vec<String>,
    /// `NAME=VALUE` module parameters; allowed only with exactly one target.
    pub params: Vec<String>,
    /// `false`: reply `queued` at once and load in the background.
    pub wait: bool,
    /// Bypass the failure window: attempt the load even if it failed moments ago.
    pub retry: bool,
    /// Give up waiting after this long (the load itself goes on) and reply `timed-out`.
    pub timeout_ms: Option<u64>,
    /// Refuse a blacklisted module asked for by its own name too, as udev's builtin and
    /// `modprobe -b` do. `false` (the default, also when the field is absent): the blacklist
    /// applies to modules found through an alias only, as `modprobe` and the kernel's
    /// `request_module()` do.
    pub blacklist_names: bool,
    /// Who asks, for the boot's record (`modbroker blame`): `udev` (with the uevent's
    /// `SUBSYSTEM` and `DEVPATH`) or `kernel` (the autoload helper). Absent: the daemon records
    /// the peer's uid and command name.
    pub origin: Option<Requester>,
    /// Ask for a progress line every [`PROGRESS_INTERVAL`] while the reply is pending, so that
    /// the client can tell a daemon that is alive and loading from one that is wedged (see
    /// [`LIVENESS_BOUND`]). Sent only when true, so older daemons still understand the request.
    pub progress: bool,
}

impl LoadRequest {
    /// A load of `targets` with every other field as a request line without it decodes: no
    /// params, wait for the reply, no retry, no timeout, no `blacklist_names`, no origin, no
    /// progress lines. The setters below change one field each.
    pub fn new(targets: Vec<String>) -> Self {
        LoadRequest {
            targets,
            params: Vec::new(),
            wait: default_wait(),
            retry: false,
            timeout_ms: None,
            blacklist_names: false,
            origin: None,
            progress: false,
        }
    }

    /// With these `NAME=VALUE` module parameters.
    pub fn params(mut self, params: Vec<String>) -> Self {
        self.params = params;
        self
    }

    /// Waiting for the loads (`true`) or replying `queued` at once (`false`).
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// Bypassing the failure window, or not.
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Giving up waiting after this many milliseconds (`None`: no limit).
    pub fn timeout_ms(mut self, timeout_ms: Option<u64>) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Refusing a blacklisted module asked for by its own name too, or not.
    pub fn blacklist_names(mut self, blacklist_names: bool) -> Self {
        self.blacklist_names = blacklist_names;
        self
    }

    /// On behalf of this requester (`None`: the daemon records the peer).
    pub fn origin(mut self, origin: Option<Requester>) -> Self {
        self.origin = origin;
        self
    }

    /// Asking for progress lines while the reply is pending, or not.
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }
}

/// How often the daemon writes a progress line on a connection whose pending `load` asked for
/// it (`"progress": true`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// How long a client that asked for progress hears nothing at all (no progress line, no reply,
/// no accepted connection) before it takes the daemon for unresponsive: ten missed progress
/// lines. Generous on purpose: under emulation at 64 vCPUs a busy daemon can be starved for
/// seconds, and each false alarm costs a direct load.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);

/// The boot-wide marker a client leaves when it found the daemon unresponsive: while it exists,
/// udev's clients load directly at once instead of each waiting out [`LIVENESS_BOUND`]. The
/// daemon removes it when it listens and every [`PROGRESS_INTERVAL`] while it serves. It lives
/// in the directory named like the socket without its extension (`/run/modbroker/unresponsive`
/// for `/run/modbroker.sock`): the daemon's `RuntimeDirectory=`, which its sandbox can write.
pub fn unresponsive_marker(socket: &Path) -> PathBuf {
    socket.with_extension("").join("unresponsive")
}

/// The directory every skip marker naming a failed module goes through (`crate::skip`): a
/// client that marks the daemon unresponsive removes it, so that while the daemon is stopped
/// udev asks again for a failed module (and the client loads it directly) instead of trusting
/// a failure window no one is keeping. The daemon makes it again when it serves again.
pub fn skip_serving_dir(socket: &Path) -> PathBuf {
    socket.with_extension("").join("skip/.state/serving")
}

/// A line from the daemon on a connection: a progress line, or the reply.
#[derive(Debug)]
pub enum DaemonLine {
    /// The daemon is alive and still working on the request.
    Progress(Progress),
    /// The one reply.
    Reply(Box<Reply>),
}

/// The body of a progress line: `{"v":1,"progress":{"elapsed_ms":N}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Milliseconds since the daemon read the request.
    pub elapsed_ms: u64,
}

/// A progress line as the daemon writes it: `progress`, then `v` (the order the wire format
/// has kept since the line was a serde_json map, whose keys are sorted).
#[derive(Serialize)]
struct ProgressLine<'a> {
    progress: &'a Progress,
    v: u32,
}

impl Progress {
    /// The progress line (with its newline).
    pub fn encode(&self) -> String {
        json_line(&ProgressLine {
            progress: self,
            v: PROTOCOL_VERSION,
        })
    }
}

/// `value` as one JSON line with its newline. The wire types serialize infallibly: plain
/// structs and enums, string keys only, no hand-written `Serialize` that can fail.
fn json_line(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).expect("wire types serialize");
    line.push('\n');
    line
}

/// Decodes one line from the daemon. Progress lines and `load` replies are read by
/// [`crate::wire`]'s small reader (see there why); every other line, and any line it does not
/// take, by serde_json, which decides the same (the tests below compare the two).
pub fn decode_daemon_line(line: &[u8]) -> Result<DaemonLine, serde_json::Error> {
    match lean::daemon_line(line) {
        Some(decoded) => Ok(decoded),
        None => serde_daemon_line(line),
    }
}

/// serde_json's reading of a daemon line: the fallback of [`decode_daemon_line`], and the
/// reference its tests hold the small reader to.
fn serde_daemon_line(line: &[u8]) -> Result<DaemonLine, serde_json::Error> {
    /// Either shape; a reply never has `progress`, a progress line never has `ok`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Progress { progress: Progress },
        Reply(Box<Reply>),
    }
    Ok(match serde_json::from_slice(line)? {
        Wire::Progress { progress } => DaemonLine::Progress(progress),
        Wire::Reply(reply) => DaemonLine::Reply(reply),
    })
}

/// The request line as it appears on the wire. Fields this daemon does not know are ignored and
/// named in the reply's `ignored` (the compatibility rule of `docs/protocol.md`): a newer client's
/// optional field must not cost a load, and a typo (say `"retyr": true`) still shows.
#[derive(Debug, Deserialize)]
struct WireRequest {
    v: u32,
    op: String,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default = "default_wait")]
    wait: bool,
    #[serde(default)]
    retry: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    blacklist_names: bool,
    #[serde(default)]
    origin: Option<Requester>,
    #[serde(default)]
    progress: bool,
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

/// Most unknown field names a reply lists, and the longest name it quotes in full.
const MAX_IGNORED: usize = 16;
const MAX_IGNORED_NAME: usize = 64;

fn default_wait() -> bool {
    true
}

/// Why a request line could not be served; becomes an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Not JSON, or not the request shape (includes invalid UTF-8 and nesting too deep).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Line longer than [`MAX_FRAME`].
    #[error("request line longer than {MAX_FRAME} bytes")]
    FrameTooLarge,
    /// `v` is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}; this daemon speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u32),
    /// `op` is not `load`, `resolve` or `status`.
    #[error("unknown operation {0:?}; expected load, resolve or status")]
    UnknownOp(String),
    /// Well-formed but not servable (no targets, too many, params with several targets).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The peer is not allowed to use the broker.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The daemon could not serve the request (resolver thread gone, shutting down).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProtocolError {
    /// The stable machine-readable kind, as sent in `error.kind`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProtocolError::Malformed(_) => ErrorKind::Malformed,
            ProtocolError::FrameTooLarge => ErrorKind::FrameTooLarge,
            ProtocolError::UnsupportedVersion(_) => ErrorKind::UnsupportedVersion,
            ProtocolError::UnknownOp(_) => ErrorKind::UnknownOp,
            ProtocolError::Invalid(_) => ErrorKind::InvalidRequest,
            ProtocolError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ProtocolError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The stable kind of an error reply (`error.kind`), one per [`ProtocolError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// `malformed`: not JSON, or not the request shape.
    Malformed,
    /// `frame-too-large`: the line is longer than [`MAX_FRAME`].
    FrameTooLarge,
    /// `unsupported-version`: `v` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// `unknown-op`: `op` is not `load`, `resolve` or `status`.
    UnknownOp,
    /// `invalid-request`: well-formed but not servable.
    InvalidRequest,
    /// `permission-denied`: the peer may not use the broker.
    PermissionDenied,
    /// `internal`: the daemon could not serve the request.
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Malformed,
        ErrorKind::FrameTooLarge,
        ErrorKind::UnsupportedVersion,
        ErrorKind::UnknownOp,
        ErrorKind::InvalidRequest,
        ErrorKind::PermissionDenied,
        ErrorKind::Internal,
    ];

    /// The wire name (`frame-too-large`, ...), as the client prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::FrameTooLarge => "frame-too-large",
            ErrorKind::UnsupportedVersion => "unsupported-version",
            ErrorKind::UnknownOp => "unknown-op",
            ErrorKind::InvalidRequest => "invalid-request",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, ProtocolError> {
    decode_request_noting_unknown(line).map(|(request, _)| request)
}

/// Decodes one request line (without its newline), and names the fields it carried that this
/// daemon does not know and ignores (at most 16, each cut to 64 characters).
pub fn decode_request_noting_unknown(line: &[u8]) -> Result<(Request, Vec<String>), ProtocolError> {
    if line.len() > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge);
    }
    let wire: WireRequest = serde_json::from_slice(line).map_err(|e| {
        // serde_json quotes the offending string or field name: cut the message short, on a
        // character boundary (tests/fuzz_regressions.rs).
        let mut msg = e.to_string();
        let mut cut = msg.len().min(MAX_ERROR_DETAIL);
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        ProtocolError::Malformed(msg)
    })?;
    if wire.v != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion(wire.v));
    }
    let ignored = wire
        .unknown
        .keys()
        .take(MAX_IGNORED)
        .map(|name| name.chars().take(MAX_IGNORED_NAME).collect())
        .collect();
    let request = match Operation::named(&wire.op) {
        Some(Operation::Load) => decode_load(wire),
        Some(Operation::Resolve) => {
            check_targets(&wire.targets)?;
            Ok(Request::Resolve(wire.targets))
        }
        Some(Operation::Status) => Ok(Request::Status),
        None => Err(ProtocolError::UnknownOp(wire.op.chars().take(64).collect())),
    }?;
    Ok((request, ignored))
}

fn decode_load(wire: WireRequest) -> Result<Request, ProtocolError> {
    check_targets(&wire.targets)?;
    if !wire.params.is_empty() && wire.targets.len() != 1 {
        return Err(ProtocolError::Invalid(
            "params need exactly one target".into(),
        ));
    }
    if let Some(origin) = &wire.origin {
        check_origin(origin)?;
    }
    Ok(Request::Load(
        LoadRequest::new(wire.targets)
            .params(wire.params)
            .wait(wire.wait)
            .retry(wire.retry)
            .timeout_ms(wire.timeout_ms)
            .blacklist_names(wire.blacklist_names)
            .origin(wire.origin)
            .progress(wire.progress),
    ))
}

/// Clients may say `udev` or `kernel`; the daemon itself fills in a CLI peer and dependencies.
/// Longest `origin.subsystem` accepted (the kernel's bus and class names are short).
pub const MAX_ORIGIN_SUBSYSTEM: usize = 64;
/// Longest `origin.devpath` accepted: the kernel caps a whole uevent environment at 2,048 bytes.
pub const MAX_ORIGIN_DEVPATH: usize = 2048;

/// `origin` is the record's only text from the client that is kept per module: bounded here so
/// that no request can grow the record (or the daemon) by more than this.
fn check_origin(origin: &Requester) -> Result<(), ProtocolError> {
    match origin {
        Requester::Udev { subsystem, devpath } => {
            let too_long = |field: &Option<String>, limit: usize| {
                field.as_ref().is_some_and(|text| text.len() > limit)
            };
            if too_long(subsystem, MAX_ORIGIN_SUBSYSTEM) || too_long(devpath, MAX_ORIGIN_DEVPATH) {
                return Err(ProtocolError::Invalid(format!(
                    "origin: subsystem is at most {MAX_ORIGIN_SUBSYSTEM} bytes, devpath at most \
                     {MAX_ORIGIN_DEVPATH}"
                )));
            }
            Ok(())
        }
        Requester::Kernel => Ok(()),
        _ => Err(ProtocolError::Invalid(
            "origin must be udev or kernel".into(),
        )),
    }
}

fn check_targets(targets: &[String]) -> Result<(), ProtocolError> {
    if targets.is_empty() {
        return Err(ProtocolError::Invalid("no targets".into()));
    }
    if targets.len() > MAX_TARGETS {
        return Err(ProtocolError::Invalid(format!(
            "{} targets; the limit is {MAX_TARGETS}",
            targets.len()
        )));
    }
    Ok(())
}

impl Request {
    /// Encodes the request as one JSON line (with its newline), as the client sends it.
    /// `blacklist_names` and `progress` are sent only when true, and `origin` only when set, so that a request
    /// without them still reaches a daemon older than the fields (daemons before the
    /// compatibility rule refuse unknown fields).
    pub fn encode(&self) -> String {
        match self {
            // The line udev's client sends once per uevent: written by hand (see crate::wire),
            // byte for byte what serde_json writes for the same fields (a test compares).
            Request::Load(load) => lean::load_line(load),
            Request::Resolve(targets) => json_line(&ResolveLine {
                op: Operation::Resolve,
                targets,
                v: PROTOCOL_VERSION,
            }),
            Request::Status => json_line(&StatusLine {
                op: Operation::Status,
                v: PROTOCOL_VERSION,
            }),
        }
    }
}

/// A `resolve` request line as the client writes it. The fields of this and [`StatusLine`] are
/// in the order the wire format has kept since these lines were serde_json maps (sorted keys).
#[derive(Serialize)]
struct ResolveLine<'a> {
    op: Operation,
    targets: &'a [String],
    v: u32,
}

/// A `status` request line as the client writes it.
#[derive(Serialize)]
struct StatusLine {
    op: Operation,
    v: u32,
}

/// One target's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResult {
    /// The target as requested.
    pub target: String,
    /// What happened.
    pub outcome: OutcomeKind,
    /// The module(s) the target resolved to (canonical names).
    #[serde(default)]
    pub modules: Vec<String>,
    /// For `failed` and `invalid`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// True when this request shared another request's load (or a remembered failure) instead
    /// of causing a syscall of its own.
    #[serde(default)]
    pub merged: bool,
    /// Time from receiving the request to this result, in microseconds.
    #[serde(default)]
    pub elapsed_us: u64,
}

/// How `resolve` says a module would go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedMethod {
    /// From its module file (`detail` names it).
    File,
    /// Built into the kernel: nothing to load.
    Builtin,
    /// By the modprobe.d `install` command in `detail`.
    Install,
    /// Neither a file in `modules.dep` nor built in: loading it would fail with `ENOENT`.
    Missing,
}

impl ResolvedMethod {
    /// Every method.
    pub const ALL: [ResolvedMethod; 4] = [
        ResolvedMethod::File,
        ResolvedMethod::Builtin,
        ResolvedMethod::Install,
        ResolvedMethod::Missing,
    ];

    /// The wire name (`file`, ...), as `resolve` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedMethod::File => "file",
            ResolvedMethod::Builtin => "builtin",
            ResolvedMethod::Install => "install",
            ResolvedMethod::Missing => "missing",
        }
    }
}

impl std::fmt::Display for ResolvedMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `resolve` found for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    /// The target resolves to modules that would be loaded (`modules`, in order).
    Load,
    /// No module matches the target.
    NoMatch,
    /// Every matching module is blacklisted.
    Blacklisted,
    /// The target itself was refused (`message` says why).
    Invalid,
    /// The daemon could not resolve it (`message` says why).
    Error,
}

impl PlanKind {
    /// Every plan kind.
    pub const ALL: [PlanKind; 5] = [
        PlanKind::Load,
        PlanKind::NoMatch,
        PlanKind::Blacklisted,
        PlanKind::Invalid,
        PlanKind::Error,
    ];

    /// True when the target could not be resolved at all (`invalid`, `error`): `resolve` then
    /// exits non-zero.
    pub fn is_failure(self) -> bool {
        matches!(self, PlanKind::Invalid | PlanKind::Error)
    }

    /// The wire name (`no-match`, ...), as `resolve` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Load => "load",
            PlanKind::NoMatch => "no-match",
            PlanKind::Blacklisted => "blacklisted",
            PlanKind::Invalid => "invalid",
            PlanKind::Error => "error",
        }
    }
}

impl std::fmt::Display for PlanKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One module as `resolve` shows it, in load order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedModule {
    /// Canonical name.
    pub name: String,
    /// How it would go in.
    pub method: ResolvedMethod,
    /// Module file, or the install command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Options that would be passed.
    #[serde(default)]
    pub options: String,
}

/// The `resolve` reply for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveResult {
    /// The target as requested.
    pub target: String,
    /// What the target resolves to.
    pub plan: PlanKind,
    /// Every module that would be loaded, in order (dependencies and softdeps included).
    #[serde(default)]
    pub modules: Vec<ResolvedModule>,
    /// For `invalid`/`error`, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The `status` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Daemon version.
    pub version: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Request lines served (any operation).
    pub requests: u64,
    /// Load targets received.
    pub targets: u64,
    /// Module requests answered by another request's load or a remembered failure.
    pub merged: u64,
    /// Module requests answered from sysfs or builtin without a syscall.
    pub already_loaded: u64,
    /// `finit_module`/`init_module` calls and install commands run.
    pub load_calls: u64,
    /// Of those, how many failed.
    pub failed_loads: u64,
    /// Failures by module and errno.
    pub failures: Vec<FailureCount>,
    /// Loads in flight now.
    pub in_flight: Vec<InFlight>,
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable kind (see [`ProtocolError::kind`]).
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
}

/// One reply line: the version, whether the request was served, its one body, and the request
/// fields that were ignored. On the wire the body is one key beside `v` and `ok` (`results`,
/// `resolved`, `status` or `error`): `{"v":1,"ok":true,"results":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u32,
    /// False when the body is an error.
    pub ok: bool,
    /// What the reply carries: exactly one body.
    #[serde(flatten)]
    pub body: ReplyBody,
    /// Request fields this daemon does not know and ignored (see `docs/protocol.md`,
    /// "Versioning").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// A reply's body, named on the wire by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyBody {
    /// `load`: one entry per target, in request order.
    Results(Vec<TargetResult>),
    /// `resolve`: one entry per target.
    Resolved(Vec<ResolveResult>),
    /// `status`.
    Status(StatusReport),
    /// The request could not be served at all.
    Error(ErrorBody),
}

impl Reply {
    /// A reply carrying `body`; `ok` unless the body is an error.
    pub fn new(body: ReplyBody) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            ok: !matches!(body, ReplyBody::Error(_)),
            body,
            ignored: Vec::new(),
        }
    }

    /// A `load` reply.
    pub fn results(results: Vec<TargetResult>) -> Self {
        Reply::new(ReplyBody::Results(results))
    }

    /// A `resolve` reply.
    pub fn resolved(resolved: Vec<ResolveResult>) -> Self {
        Reply::new(ReplyBody::Resolved(resolved))
    }

    /// A `status` reply.
    pub fn status(status: StatusReport) -> Self {
        Reply::new(ReplyBody::Status(status))
    }

    /// An error reply.
    pub fn error(err: &ProtocolError) -> Self {
        Reply::new(ReplyBody::Error(ErrorBody {
            kind: err.kind(),
            message: err.to_string(),
        }))
    }

    /// The `load` results, if that is the body.
    pub fn into_results(self) -> Option<Vec<TargetResult>> {
        match self.body {
            ReplyBody::Results(results) => Some(results),
            _ => None,
        }
    }

    /// The `load` results, if that is the body, borrowed.
    pub fn load_results(&self) -> Option<&[TargetResult]> {
        match &self.body {
            ReplyBody::Results(results) => Some(results),
            _ => None,
        }
    }

    /// The `status` report, if that is the body.
    pub fn into_status(self) -> Option<StatusReport> {
        match self.body {
            ReplyBody::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The `status` report, if that is the body, borrowed.
    pub fn status_report(&self) -> Option<&StatusReport> {
        match &self.body {
            ReplyBody::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The error, if that is the body.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        match &self.body {
            ReplyBody::Error(error) => Some(error),
            _ => None,
        }
    }

    /// Encodes the reply as one JSON line with its newline.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // user-implemented Serialize that errors.
        let mut line = serde_json::to_string(self).expect("reply serializes");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The load line as serde_json writes it: the reference the hand-written line must equal
    /// byte for byte. The keys are sorted (the line was once a serde_json map), `origin`'s too
    /// (read back as a `Value`, whose map sorts them; `Requester` itself puts `kind` first, as
    /// the record keeps it), `blacklist_names` and `progress` sent only when true and `origin`
    /// only when set (`Request::encode`).
    #[derive(Serialize)]
    struct SerdeLoadLine<'a> {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        blacklist_names: bool,
        op: Operation,
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<serde_json::Value>,
        params: &'a [String],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        progress: bool,
        retry: bool,
        targets: &'a [String],
        timeout_ms: Option<u64>,
        v: u32,
        wait: bool,
    }

    fn serde_load_line(load: &LoadRequest) -> String {
        json_line(&SerdeLoadLine {
            blacklist_names: load.blacklist_names,
            op: Operation::Load,
            origin: load
                .origin
                .as_ref()
                .map(|o| serde_json::to_value(o).unwrap()),
            params: &load.params,
            progress: load.progress,
            retry: load.retry,
            targets: &load.targets,
            timeout_ms: load.timeout_ms,
            v: PROTOCOL_VERSION,
            wait: load.wait,
        })
    }

    fn same(a: &DaemonLine, b: &DaemonLine) -> bool {
        match (a, b) {
            (DaemonLine::Progress(a), DaemonLine::Progress(b)) => a == b,
            (DaemonLine::Reply(a), DaemonLine::Reply(b)) => a == b,
            _ => false,
        }
    }

    /// Any text, control characters, quotes and non-ASCII included, and sometimes none.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9_:*,.-]{0,24}", any::<String>(), Just(String::new())]
    }

    fn requester() -> impl Strategy<Value = Requester> {
        prop_oneof![
            (proptest::option::of(text()), proptest::option::of(text()))
                .prop_map(|(subsystem, devpath)| Requester::Udev { subsystem, devpath }),
            Just(Requester::Kernel),
            (any::<u32>(), proptest::option::of(text()))
                .prop_map(|(uid, comm)| Requester::Cli { uid, comm }),
            text().prop_map(|of| Requester::Dependency { of }),
        ]
    }

    prop_compose! {
        fn load_request()(
            targets in proptest::collection::vec(text(), 0..4),
            params in proptest::collection::vec(text(), 0..3),
            (wait, retry, blacklist_names, progress) in any::<(bool, bool, bool, bool)>(),
            timeout_ms in proptest::option::of(any::<u64>()),
            origin in proptest::option::of(requester()),
        ) -> LoadRequest {
            LoadRequest::new(targets)
                .params(params)
                .wait(wait)
                .retry(retry)
                .timeout_ms(timeout_ms)
                .blacklist_names(blacklist_names)
                .origin(origin)
                .progress(progress)
        }
    }

    prop_compose! {
        fn failure()(
            module in text(),
            errno in proptest::option::of(any::<i32>()),
            errno_name in proptest::option::of(text()),
            message in text(),
        ) -> Failure {
            Failure { module, errno, errno_name, message }
        }
    }

    prop_compose! {
        fn target_result()(
            target in text(),
            outcome in proptest::sample::select(OutcomeKind::ALL.to_vec()),
            modules in proptest::collection::vec(text(), 0..4),
            failure in proptest::option::of(failure()),
            merged in any::<bool>(),
            elapsed_us in any::<u64>(),
        ) -> TargetResult {
            TargetResult { target, outcome, modules, failure, merged, elapsed_us }
        }
    }

    prop_compose! {
        fn load_reply()(
            results in proptest::collection::vec(target_result(), 0..4),
            error in proptest::option::of((proptest::sample::select(ErrorKind::ALL.to_vec()), text())),
            ignored in proptest::collection::vec(text(), 0..3),
        ) -> Reply {
            let body = match error {
                Some((kind, message)) => ReplyBody::Error(ErrorBody { kind, message }),
                None => ReplyBody::Results(results),
            };
            Reply { ignored, ..Reply::new(body) }
        }
    }

    proptest! {
        #[test]
        fn the_load_line_is_the_one_serde_json_wrote(load in load_request()) {
            prop_assert_eq!(Request::Load(load.clone()).encode(), serde_load_line(&load));
        }

        #[test]
        fn load_replies_read_as_serde_json_reads_them(reply in load_reply()) {
            let line = reply.encode();
            let read = decode_daemon_line(line.as_bytes()).unwrap();
            prop_assert!(matches!(&read, DaemonLine::Reply(r) if **r == reply));
            // Whatever the small reader takes, it takes as serde_json does; it leaves only
            // lines with an escaped string to serde_json.
            match lean::daemon_line(line.as_bytes()) {
                Some(lean) => prop_assert!(same(&lean, &read)),
                None => prop_assert!(line.trim_end().contains('\\')),
            }
        }

        #[test]
        fn any_line_the_small_reader_takes_serde_json_reads_the_same(line in daemon_line_text()) {
            if let Some(lean) = lean::daemon_line(line.as_bytes()) {
                let reference = serde_daemon_line(line.as_bytes()).ok();
                prop_assert!(reference.is_some_and(|r| same(&lean, &r)), "{}", line);
            }
        }
    }

    /// Lines built from the pieces of the daemon's lines, well formed or not: missing, doubled,
    /// null and mistyped fields, unknown ones, both shapes at once.
    fn daemon_line_text() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("1".to_string()),
            Just("-1".to_string()),
            Just("1.5".to_string()),
            Just("\"x\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just(r#"{"elapsed_ms":3}"#.to_string()),
            Just(r#"[{"target":"a","outcome":"loaded"}]"#.to_string()),
            Just(r#"[{"target":"a","outcome":"failed","failure":{"module":"a","errno":19,"message":"m"}}]"#.to_string()),
            Just(r#"[{"target":"a","outcome":"nope"}]"#.to_string()),
            Just(r#"{"kind":"k","message":"m"}"#.to_string()),
            Just(r#"["x"]"#.to_string()),
        ];
        let key = proptest::sample::select(vec![
            "v", "ok", "results", "error", "ignored", "progress", "resolved", "other",
        ]);
        proptest::collection::vec((key, value), 0..6).prop_map(|fields| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
    }

    /// Lines as the daemon and client of version 0.2.0 wrote them (recorded, not generated):
    /// the wire format does not change.
    #[test]
    fn recorded_lines_still_read_and_write_the_same() {
        let load = LoadRequest::new(vec!["pci:v00008086d00001E31sv*".into()])
            .blacklist_names(true)
            .origin(Some(Requester::Udev {
                subsystem: Some("pci".into()),
                devpath: Some("/devices/pci0000:00/0000:00:14.0".into()),
            }))
            .progress(true);
        assert_eq!(
            Request::Load(load).encode(),
            concat!(
                r#"{"blacklist_names":true,"op":"load","origin":{"devpath":"/devices/pci0000:00/0000:00:14.0","kind":"udev","subsystem":"pci"},"#,
                r#""params":[],"progress":true,"retry":false,"targets":["pci:v00008086d00001E31sv*"],"timeout_ms":null,"v":1,"wait":true}"#,
                "\n"
            )
        );
        let reply = br#"{"v":1,"ok":true,"results":[{"target":"unix","outcome":"builtin","modules":["unix"],"merged":false,"elapsed_us":130}]}"#;
        let Some(DaemonLine::Reply(read)) = lean::daemon_line(reply) else {
            panic!("the small reader did not take a load reply")
        };
        assert_eq!(read.encode().trim_end().as_bytes(), reply);
        let failed = br#"{"v":1,"ok":true,"results":[{"target":"acpi_cpufreq","outcome":"failed","modules":["acpi_cpufreq"],"failure":{"module":"acpi_cpufreq","errno":19,"errno_name":"ENODEV","message":"No such device"},"merged":true,"elapsed_us":183}]}"#;
        let Some(DaemonLine::Reply(read)) = lean::daemon_line(failed) else {
            panic!("the small reader did not take a failed load")
        };
        assert_eq!(read.encode().trim_end().as_bytes(), failed);
        let progress = br#"{"progress":{"elapsed_ms":2001},"v":1}"#;
        assert!(matches!(
            lean::daemon_line(progress),
            Some(DaemonLine::Progress(Progress { elapsed_ms: 2001 }))
        ));
        assert_eq!(
            Progress { elapsed_ms: 2001 }.encode().trim_end().as_bytes(),
            progress
        );
    }

    #[test]
    fn load_round_trips() {
        let req = Request::Load(
            LoadRequest::new(vec!["e1000".into()])
                .params(vec!["debug=1".into()])
                .wait(false)
                .retry(true)
                .timeout_ms(Some(500))
                .blacklist_names(true)
                .progress(true),
        );
        let line = req.encode();
        assert!(line.ends_with('\n'));
        assert_eq!(decode_request(line.trim_end().as_bytes()), Ok(req));
    }

    /// `progress` is optional (older clients never send it and get no progress lines) and sent
    /// only when true (daemons before the compatibility rule refuse unknown fields).
    #[test]
    fn progress_is_optional_and_sent_only_when_set() {
        let line = br#"{"v":1,"op":"load","targets":["kvm"]}"#;
        let Ok(Request::Load(load)) = decode_request(line) else {
            panic!("not a load")
        };
        assert!(!load.progress);
        assert!(!Request::Load(load.clone()).encode().contains("progress"));
        let asking = Request::Load(load.progress(true));
        assert!(asking.encode().contains(r#""progress":true"#));
    }

    /// A client tells a progress line from the reply; neither is mistaken for the other.
    #[test]
    fn progress_lines_and_replies_are_told_apart() {
        let progress = Progress { elapsed_ms: 4000 }.encode();
        assert_eq!(progress, "{\"progress\":{\"elapsed_ms\":4000},\"v\":1}\n");
        match decode_daemon_line(progress.trim_end().as_bytes()) {
            Ok(DaemonLine::Progress(p)) => assert_eq!(p.elapsed_ms, 4000),
            other => panic!("expected progress, got {other:?}"),
        }
        let reply = Reply::error(&ProtocolError::Internal("x".into())).encode();
        match decode_daemon_line(reply.trim_end().as_bytes()) {
            Ok(DaemonLine::Reply(r)) => assert!(!r.ok),
            other => panic!("expected a reply, got {other:?}"),
        }
        assert!(decode_daemon_line(br#"{"v":1}"#).is_err());
    }

    /// A reply has exactly one body. The small reader leaves a line with none, a `null` one or
    /// two to serde_json, which refuses the first two and takes the first of two bodies.
    #[test]
    fn a_reply_has_one_body() {
        let none = br#"{"v":1,"ok":true}"#.as_slice();
        let null = br#"{"v":1,"ok":true,"results":null}"#.as_slice();
        let two = br#"{"v":1,"ok":true,"results":[],"error":{"kind":"internal","message":"m"}}"#;
        for line in [none, null, two] {
            assert!(lean::daemon_line(line).is_none());
        }
        assert!(decode_daemon_line(none).is_err());
        assert!(decode_daemon_line(null).is_err());
        let Ok(DaemonLine::Reply(reply)) = decode_daemon_line(two) else {
            panic!("two bodies")
        };
        assert_eq!(reply.body, ReplyBody::Results(vec![]));
    }

    /// The names `resolve` prints are the ones on the wire.
    #[test]
    fn printed_names_are_the_wire_names() {
        let wire = |value: serde_json::Value| value.as_str().unwrap().to_string();
        for plan in PlanKind::ALL {
            assert_eq!(wire(serde_json::to_value(plan).unwrap()), plan.as_str());
        }
        for method in ResolvedMethod::ALL {
            assert_eq!(wire(serde_json::to_value(method).unwrap()), method.as_str());
        }
        for kind in ErrorKind::ALL {
            assert_eq!(wire(serde_json::to_value(kind).unwrap()), kind.as_str());
        }
        for outcome in OutcomeKind::ALL {
            assert_eq!(
                wire(serde_json::to_value(outcome).unwrap()),
                outcome.as_str()
            );
        }
    }

    #[test]
    fn the_marker_lies_beside_the_socket() {
        assert_eq!(
            unresponsive_marker(Path::new("/run/modbroker.sock")),
            Path::new("/run/modbroker/unresponsive")
        );
    }

    /// Absent means false (older clients, the kernel helper without `-b`), and false is not
    /// sent, so such requests still reach a daemon that predates the field.
    #[test]
    fn blacklist_names_is_optional_and_sent_only_when_set() {
        let line = br#"{"v":1,"op":"load","targets":["ppdev"]}"#;
        let Ok(Request::Load(load)) = decode_request(line) else {
            panic!("not a load")
        };
        assert!(!load.blacklist_names);
        assert!(!Request::Load(load.clone())
            .encode()
            .contains("blacklist_names"));
        let udev = Request::Load(load.blacklist_names(true).origin(None).progress(false));
        assert!(udev.encode().contains(r#""blacklist_names":true"#));
    }

    #[test]
    fn defaults_apply() {
        let req = decode_request(br#"{"v":1,"op":"load","targets":["x"]}"#).unwrap();
        let Request::Load(load) = req else {
            panic!("not a load: {req:?}")
        };
        assert!(load.wait);
        assert!(!load.retry);
        assert_eq!(load.timeout_ms, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_named() {
        let line = br#"{"v":1,"op":"load","targets":["x"],"retyr":true,"zz_new":{"a":[1]}}"#;
        let (request, ignored) = decode_request_noting_unknown(line).unwrap();
        assert!(matches!(request, Request::Load(ref l) if !l.retry && l.targets == ["x"]));
        assert_eq!(ignored, ["retyr", "zz_new"]);
        let many: String = (0..100)
            .map(|i| format!(",\"f{i:03}{}\":0", "x".repeat(99)))
            .collect();
        let line = format!(r#"{{"v":1,"op":"status"{many}}}"#);
        let (_, ignored) = decode_request_noting_unknown(line.as_bytes()).unwrap();
        assert_eq!(ignored.len(), MAX_IGNORED);
        assert!(ignored.iter().all(|n| n.len() == MAX_IGNORED_NAME));
        let (_, ignored) = decode_request_noting_unknown(br#"{"v":1,"op":"status"}"#).unwrap();
        assert!(ignored.is_empty());
    }

    #[test]
    fn oversized_origins_are_invalid() {
        let line = |subsystem: usize, devpath: usize| {
            format!(
                r#"{{"v":1,"op":"load","targets":["x"],"origin":{{"kind":"udev","subsystem":"{}","devpath":"{}"}}}}"#,
                "s".repeat(subsystem),
                "d".repeat(devpath)
            )
        };
        let kind = |l: String| decode_request(l.as_bytes()).map_err(|e| e.kind().as_str());
        assert!(kind(line(MAX_ORIGIN_SUBSYSTEM, MAX_ORIGIN_DEVPATH)).is_ok());
        assert_eq!(
            kind(line(MAX_ORIGIN_SUBSYSTEM + 1, 1)),
            Err("invalid-request")
        );
        assert_eq!(kind(line(1, 40_000)), Err("invalid-request"));
    }

    #[test]
    fn bad_requests_get_their_kind() {
        let kind = |line: &[u8]| decode_request(line).unwrap_err().kind().as_str();
        assert_eq!(kind(b"not json"), "malformed");
        assert_eq!(kind(b"\xff\xfe"), "malformed");
        assert_eq!(kind(br#"{"v":2,"op":"status"}"#), "unsupported-version");
        assert_eq!(kind(br#"{"v":1,"op":"unload"}"#), "unknown-op");
        assert_eq!(
            kind(br#"{"v":1,"op":"load","targets":[]}"#),
            "invalid-request"
        );
        assert_eq!(
            kind(br#"{"v":1,"op":"load","targets":["a","b"],"params":["x=1"]}"#),
            "invalid-request"
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(kind(deep.as_bytes()), "malformed");
        assert_eq!(kind(&vec![b' '; MAX_FRAME + 1]), "frame-too-large");
    }

    #[test]
    fn reply_round_trips() {
        let reply = Reply::results(vec![TargetResult {
            target: "acpi-cpufreq".into(),
            outcome: OutcomeKind::Failed,
            modules: vec!["acpi_cpufreq".into()],
            failure: Some(Failure {
                module: "acpi_cpufreq".into(),
                errno: Some(19),
                errno_name: Some("ENODEV".into()),
                message: "No such device".into(),
            }),
            merged: true,
            elapsed_us: 12,
        }]);
        let line = reply.encode();
        assert!(line.contains(r#""outcome":"failed""#), "{line}");
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back, reply);
    }
}
