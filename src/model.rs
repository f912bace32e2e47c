//! The facts every layer shares: who asked for a module ([`Requester`]), how a module went
//! into the kernel ([`Method`]), what came of it ([`ModuleOutcome`], [`Failure`]) and why an
//! install command failed ([`InstallFailure`]).
//!
//! This is the bottom of the crate: it imports nothing from it. The kernel layer produces these
//! values, the broker merges and remembers them, the record keeps them for `blame`, and the
//! protocol carries [`Requester`] and [`Failure`] on the wire, so their serde forms are part of
//! the wire format and of the record's format (see `docs/protocol.md`). [`InFlight`] and
//! [`FailureCount`] are the broker's state as `status` reports it.

use serde::{Deserialize, Serialize};

/// Who asked for a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Requester {
    /// `modbroker load --udev` run by udev for a uevent.
    Udev {
        /// The uevent's `SUBSYSTEM`.
        subsystem: Option<String>,
        /// The uevent's `DEVPATH`.
        devpath: Option<String>,
    },
    /// The kernel's `request_module()`, through the autoload helper.
    Kernel,
    /// The CLI (`modbroker load`, `modbroker modprobe`): the peer's uid and command name.
    Cli {
        /// Peer uid.
        uid: u32,
        /// Peer's `/proc/PID/comm`, if it could be read.
        comm: Option<String>,
    },
    /// Another module's load (a dependency or softdep).
    Dependency {
        /// The module whose load asked.
        of: String,
    },
}

/// How a module file was handed to the kernel, or what ran instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `finit_module` on the file.
    Finit,
    /// `finit_module` with `MODULE_INIT_COMPRESSED_FILE`: the kernel decompressed it.
    FinitCompressed,
    /// `init_module` after decompressing in user space.
    InitModule,
    /// A modprobe.d `install` command.
    Install,
    /// No call: the module was settled (live or built in) when its turn came, or a dependency
    /// failed first.
    None,
}

/// The result of bringing one module into the kernel. Cloneable: one load's outcome is handed to
/// every request that waited on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// Inserted now (or its install command succeeded).
    Loaded,
    /// Already live.
    AlreadyLoaded,
    /// Built in.
    Builtin,
    /// Failed; the failure names the module (a dependency's failure names the dependency).
    Failed(Failure),
}

impl ModuleOutcome {
    /// Its kind, as the record and the wire name it.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            ModuleOutcome::Loaded => OutcomeKind::Loaded,
            ModuleOutcome::AlreadyLoaded => OutcomeKind::AlreadyLoaded,
            ModuleOutcome::Builtin => OutcomeKind::Builtin,
            ModuleOutcome::Failed(_) => OutcomeKind::Failed,
        }
    }

    /// True unless failed.
    pub fn is_ok(&self) -> bool {
        !matches!(self, ModuleOutcome::Failed(_))
    }
}

/// Why a load failed: which module (the target's own, or a dependency) and the kernel's errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The module whose load failed (may be a dependency of the requested one).
    pub module: String,
    /// The errno, when the failure was a syscall's (absent for a failed install command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Symbolic errno (`ENODEV`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<String>,
    /// Human-readable description.
    pub message: String,
}

impl Failure {
    /// A failure that is not a syscall's errno (install command, resolution, timeout, internal),
    /// for `module` (empty when no single module is to blame).
    pub fn without_errno(module: &str, message: impl Into<String>) -> Self {
        Failure {
            module: module.to_string(),
            errno: None,
            errno_name: None,
            message: message.into(),
        }
    }
}

/// Why an install command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFailure(pub String);

/// A load in flight, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Module name.
    pub module: String,
    /// Milliseconds since the load started.
    pub age_ms: u64,
    /// Requests waiting on it (the one that started it included).
    pub waiters: u64,
}

/// Failures counted by module and errno, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    /// Module name.
    pub module: String,
    /// Symbolic errno or `install-command`.
    pub error: String,
    /// Load attempts that failed this way.
    pub count: u64,
}

impl Requester {
    /// This process, for loads asked in-process (tests, benchmarks).
    pub fn this_process() -> Requester {
        Requester::Cli {
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            comm: std::fs::read_to_string("/proc/self/comm")
                .ok()
                .map(|c| c.trim_end().to_string()),
        }
    }
}

/// What came of a load: of one target on the wire (every variant), and of one module's load in
/// the boot's record (`loaded`, `already-loaded`, `builtin` or `failed`; see
/// [`ModuleOutcome::kind`]). The one outcome type: the wire, the record, `blame` and the journal
/// all name outcomes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Loaded now (by this request or the load it merged into).
    Loaded,
    /// Was already live; no syscall.
    AlreadyLoaded,
    /// Built into the kernel; no syscall.
    Builtin,
    /// No module matches the target; normal for udev.
    NoMatch,
    /// Every matching module is blacklisted.
    Blacklisted,
    /// The load failed; `failure` says which module and why.
    Failed,
    /// `wait: false`: accepted, loading in the background.
    Queued,
    /// The waiter's timeout passed; the load goes on.
    TimedOut,
    /// The target itself was refused (a path, control characters, too long...).
    Invalid,
}

impl OutcomeKind {
    /// Every outcome.
    pub const ALL: [OutcomeKind; 9] = [
        OutcomeKind::Loaded,
        OutcomeKind::AlreadyLoaded,
        OutcomeKind::Builtin,
        OutcomeKind::NoMatch,
        OutcomeKind::Blacklisted,
        OutcomeKind::Failed,
        OutcomeKind::Queued,
        OutcomeKind::TimedOut,
        OutcomeKind::Invalid,
    ];

    /// True for outcomes that count as success for the client's exit status.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            OutcomeKind::Loaded
                | OutcomeKind::AlreadyLoaded
                | OutcomeKind::Builtin
                | OutcomeKind::NoMatch
                | OutcomeKind::Queued
        )
    }

    /// The wire name (`already-loaded`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Loaded => "loaded",
            OutcomeKind::AlreadyLoaded => "already-loaded",
            OutcomeKind::Builtin => "builtin",
            OutcomeKind::NoMatch => "no-match",
            OutcomeKind::Blacklisted => "blacklisted",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Queued => "queued",
            OutcomeKind::TimedOut => "timed-out",
            OutcomeKind::Invalid => "invalid",
        }
    }

    /// The name in words, as the journal and `plot` write it (`already loaded`, `built in`).
    pub fn in_words(self) -> &'static str {
        match self {
            OutcomeKind::AlreadyLoaded => "already loaded",
            OutcomeKind::Builtin => "built in",
            OutcomeKind::NoMatch => "no match",
            OutcomeKind::TimedOut => "timed out",
            other => other.as_str(),
        }
    }
}
