//! The boot's record of module loading, which `modbroker blame` and `modbroker plot` read.
//!
//! Each daemon instance (the initramfs's, the real root's, each one after an idle exit or a
//! restart) keeps one [`DaemonRecord`] in memory and rewrites it, atomically (write to a
//! temporary file, then rename), as `RECORD_DIR/<started_us>-<pid>-<phase>.json` a moment after each
//! change and when it stops. `/run` carries over from the initramfs to the real root in both
//! initramfs-tools and dracut, so one boot's directory holds every phase. Sizes are bounded:
//! [`MAX_MODULES`] modules per instance, [`MAX_ARRIVALS`] request arrival times and
//! [`MAX_LOADS`] loads per module, [`MAX_DEPENDENTS`] dependent names; what is cut is counted
//! in `dropped` fields, never silently lost. A file is about 1 KiB per module in a usual boot
//! and at most a few MiB in the worst case (4,096 modules each asked for more than 16 times
//! and loaded 4 times). At most [`MAX_INSTANCES`] instance files are kept (the oldest
//! root-phase ones go first).
//!
//! Timestamps are microseconds on `CLOCK_MONOTONIC`, the clock of `dmesg`'s timestamps (give or
//! take suspend), of systemd's `*TimestampMonotonic` properties and `systemd-analyze`, and of the
//! boot tests' `trace_clock=mono`. Monotonic time does not advance during suspend, so a boot
//! record never spans one.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::model::{Method, ModuleOutcome, Requester};

/// Where the instance files live.
pub const RECORD_DIR: &str = "/run/modbroker/record";
/// The format version written in every file.
pub const FORMAT_VERSION: u32 = 1;
/// Most modules recorded per daemon instance.
pub const MAX_MODULES: usize = 4096;
/// Most request arrival times kept per module (the first ones).
pub const MAX_ARRIVALS: usize = 16;
/// Most loads kept per module (the first ones; a module is loaded again only after a failure).
pub const MAX_LOADS: usize = 4;
/// Most dependent module names kept per module.
pub const MAX_DEPENDENTS: usize = 16;
/// Most instance files kept in [`RECORD_DIR`].
pub const MAX_INSTANCES: usize = 64;
/// Longest text kept from a requester's `DEVPATH` and from a load's error message (cut on a
/// character boundary). With the limits above, one instance's file stays under about 20 MB
/// whatever its clients send; a real boot's is 10 to 50 KB.
pub const MAX_TEXT: usize = 512;

/// `text` cut to at most [`MAX_TEXT`] bytes, on a character boundary.
fn bounded(text: &str) -> String {
    let mut cut = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

/// `requester` as the record keeps it: its texts cut to [`MAX_TEXT`].
fn bounded_requester(requester: &Requester) -> Requester {
    match requester {
        Requester::Udev { subsystem, devpath } => Requester::Udev {
            subsystem: subsystem.as_deref().map(bounded),
            devpath: devpath.as_deref().map(bounded),
        },
        Requester::Cli { uid, comm } => Requester::Cli {
            uid: *uid,
            comm: comm.as_deref().map(bounded),
        },
        Requester::Dependency { of } => Requester::Dependency { of: bounded(of) },
        Requester::Kernel => Requester::Kernel,
    }
}

/// Which part of the boot a daemon instance served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The initramfs (initramfs-tools' init-top script, or dracut's systemd initrd).
    Initramfs,
    /// The real root.
    Root,
}

/// One daemon instance's record: one file in [`RECORD_DIR`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Always `"CLOCK_MONOTONIC"`: the clock of every `*_us` field.
    pub clock: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The phase it served.
    pub phase: Phase,
    /// When it started.
    pub started_us: u64,
    /// When this file was last written.
    pub updated_us: u64,
    /// When it stopped (`None` while running, or if it died without a word).
    pub stopped_us: Option<u64>,
    /// Its counters, the same as `modbroker status` shows.
    pub totals: Totals,
    /// One entry per module name it was asked for (directly or as a dependency), in the order
    /// of the first request.
    pub modules: Vec<ModuleRecord>,
    /// Requests for modules beyond the first [`MAX_MODULES`], which are not recorded (they still
    /// count in `totals`).
    pub modules_dropped: u64,
}

/// A daemon instance's counters (see `protocol::StatusReport`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Request lines served (every kind).
    pub requests: u64,
    /// Load targets received.
    pub targets: u64,
    /// Module requests answered by another request's load or a remembered failure.
    pub merged: u64,
    /// Module requests answered from sysfs (already loaded or built in).
    pub already_loaded: u64,
    /// Load syscalls and install commands made.
    pub load_calls: u64,
    /// Of those, failed.
    pub failed_loads: u64,
}

/// Everything recorded about one module in one daemon instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// Canonical module name.
    pub module: String,
    /// When the first request for it arrived (a dependency's: when its dependent's load asked).
    pub first_request_us: u64,
    /// Arrival times of the first [`MAX_ARRIVALS`] requests for it.
    pub arrivals_us: Vec<u64>,
    /// Arrivals beyond those.
    pub arrivals_dropped: u64,
    /// How its requests were answered.
    pub requests: RequestCounts,
    /// Modules whose load asked for this one (dependency or softdep), the first
    /// [`MAX_DEPENDENTS`].
    pub dependency_of: Vec<String>,
    /// Who asked first.
    pub first_requester: Requester,
    /// Its loads (the first [`MAX_LOADS`]).
    pub loads: Vec<LoadRecord>,
    /// Loads beyond those.
    pub loads_dropped: u64,
}

/// How a module's requests were answered. Every request for the module counts in exactly one
/// of the first four; `as_dependency` counts, in addition, the requests that came from another
/// module's load rather than from a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Started a load (its own syscall or install command, or found the module settled when
    /// the load task looked).
    pub direct: u64,
    /// Joined a load in flight.
    pub merged: u64,
    /// Answered with a remembered failure.
    pub failure_window: u64,
    /// Answered from sysfs: already loaded or built in.
    pub already_loaded: u64,
    /// Of all of them, asked by another module's load (a dependency or a softdep).
    pub as_dependency: u64,
}

/// The outcome of one load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Inserted now (or its install command succeeded).
    Loaded,
    /// Already live when its turn came (`EEXIST` from a racing loader counts here too).
    AlreadyLoaded,
    /// Built into the kernel.
    Builtin,
    /// Failed (its own call, or a dependency: see `error`).
    Failed,
}

/// One load task of a module: from the request that started it to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRecord {
    /// When the load task started.
    pub queued_us: u64,
    /// When its dependencies and pre-softdeps were done (equal to `queued_us` without any).
    pub deps_done_us: u64,
    /// When the syscall or install command started (after waiting for a parallel-load slot);
    /// `None` without a call.
    pub call_start_us: Option<u64>,
    /// When it ended (the call returned, or the outcome was known).
    pub end_us: u64,
    /// How the module went in.
    pub method: Method,
    /// What came of it.
    pub outcome: Outcome,
    /// The errno of a failure, if it had one.
    pub errno: Option<i32>,
    /// Its symbolic name (`ENOENT`).
    pub errno_name: Option<String>,
    /// The failure message (which names a failed dependency).
    pub error: Option<String>,
    /// Requests this load answered (the one that started it and those merged into it).
    pub answered: u64,
}

impl LoadRecord {
    /// Time spent waiting: for dependencies, then for a parallel-load slot.
    pub fn wait_us(&self) -> u64 {
        self.call_start_us
            .unwrap_or(self.end_us)
            .saturating_sub(self.queued_us)
    }

    /// Time in the syscall or install command (0 without one).
    pub fn call_us(&self) -> u64 {
        self.call_start_us
            .map_or(0, |start| self.end_us.saturating_sub(start))
    }
}

/// Microseconds on `CLOCK_MONOTONIC`.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

impl Phase {
    /// The phase this process runs in: the initramfs if `/etc/initrd-release` exists (systemd's
    /// own test, true in dracut's images) or `/` is the initial rootfs (a ramfs or tmpfs, as in
    /// initramfs-tools' images); the real root otherwise.
    pub fn detect() -> Phase {
        use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
        // Not among nix's constants; linux/magic.h.
        const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
        if Path::new("/etc/initrd-release").exists() {
            return Phase::Initramfs;
        }
        match statfs("/") {
            Ok(fs) if [RAMFS_MAGIC, TMPFS_MAGIC].contains(&fs.filesystem_type()) => {
                Phase::Initramfs
            }
            _ => Phase::Root,
        }
    }

    /// `initramfs` or `root`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initramfs => "initramfs",
            Phase::Root => "root",
        }
    }
}

impl Requester {
    /// This process, for loads asked in-process (tests, benchmarks).
    pub fn this_process() -> Requester {
        Requester::Cli {
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            comm: fs::read_to_string("/proc/self/comm")
                .ok()
                .map(|c| c.trim_end().to_string()),
        }
    }
}

/// How one module request was answered (see [`RequestCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// It started a load.
    Direct,
    /// It joined a load in flight.
    Merged,
    /// With a remembered failure.
    FailureWindow,
    /// From sysfs.
    AlreadyLoaded,
}

/// The in-memory record of this daemon instance; the broker feeds it, [`Recorder::snapshot`]
/// reads it. Every method takes one short lock.
#[derive(Debug)]
pub struct Recorder {
    pid: u32,
    phase: Phase,
    started_us: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    modules: Vec<ModuleRecord>,
    index: HashMap<String, usize>,
    modules_dropped: u64,
    /// Bumped at every change, so the writer knows whether a write is due.
    generation: u64,
}

impl State {
    /// The module's record, created on first sight; `None` past [`MAX_MODULES`].
    fn module(&mut self, name: &str, requester: &Requester, now: u64) -> Option<&mut ModuleRecord> {
        self.generation += 1;
        if let Some(&i) = self.index.get(name) {
            return Some(&mut self.modules[i]);
        }
        if self.modules.len() >= MAX_MODULES {
            self.modules_dropped += 1;
            return None;
        }
        self.index.insert(name.to_string(), self.modules.len());
        self.modules.push(ModuleRecord {
            module: name.to_string(),
            first_request_us: now,
            arrivals_us: Vec::new(),
            arrivals_dropped: 0,
            requests: RequestCounts::default(),
            dependency_of: Vec::new(),
            first_requester: bounded_requester(requester),
            loads: Vec::new(),
            loads_dropped: 0,
        });
        self.modules.last_mut()
    }

    fn existing(&mut self, name: &str) -> Option<&mut ModuleRecord> {
        self.generation += 1;
        let i = *self.index.get(name)?;
        Some(&mut self.modules[i])
    }
}

impl Recorder {
    /// An empty record for this process, serving `phase`.
    pub fn new(phase: Phase) -> Self {
        Recorder {
            pid: std::process::id(),
            phase,
            started_us: now_us(),
            state: Mutex::default(),
        }
    }

    /// The phase this instance serves.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Short sections that cannot panic half-way: a poisoned lock still holds sound data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request for `module` arrived from `requester`.
    pub fn request(&self, module: &str, requester: &Requester) {
        let now = now_us();
        let mut state = self.lock();
        let Some(record) = state.module(module, requester, now) else {
            return;
        };
        if record.arrivals_us.len() < MAX_ARRIVALS {
            record.arrivals_us.push(now);
        } else {
            record.arrivals_dropped += 1;
        }
        if let Requester::Dependency { of } = requester {
            record.requests.as_dependency += 1;
            if record.dependency_of.len() < MAX_DEPENDENTS && !record.dependency_of.contains(of) {
                record.dependency_of.push(of.clone());
            }
        }
    }

    /// The request for `module` that arrived last was answered `how`.
    pub fn answered(&self, module: &str, how: Answered) {
        let mut state = self.lock();
        let Some(record) = state.existing(module) else {
            return;
        };
        let counts = &mut record.requests;
        match how {
            Answered::Direct => counts.direct += 1,
            Answered::Merged => counts.merged += 1,
            Answered::FailureWindow => counts.failure_window += 1,
            Answered::AlreadyLoaded => counts.already_loaded += 1,
        }
    }

    /// A load of `module` ended: keeps it (within [`MAX_LOADS`]).
    pub fn load_ended(&self, module: &str, load: LoadRecord) {
        let mut state = self.lock();
        let Some(record) = state.existing(module) else {
            return;
        };
        if record.loads.len() < MAX_LOADS {
            record.loads.push(load);
        } else {
            record.loads_dropped += 1;
        }
    }

    /// One journal entry per finished load, with fields `journalctl MODULE=kvm_amd` finds.
    pub fn journal(&self, module: &str, load: &LoadRecord) {
        let outcome = match load.outcome {
            Outcome::Loaded => "loaded",
            Outcome::AlreadyLoaded => "already loaded",
            Outcome::Builtin => "built in",
            Outcome::Failed => "failed",
        };
        info!(
            MODULE = module,
            ERRNO = load.errno.unwrap_or(0),
            DURATION_USEC = load.end_us.saturating_sub(load.queued_us),
            CALL_USEC = load.call_us(),
            REQUESTS = load.answered,
            PHASE = self.phase.as_str(),
            "module {module}: {outcome} in {} ms",
            load.end_us.saturating_sub(load.queued_us) / 1000
        );
    }

    /// Changes so far (compare two readings to know whether anything happened in between).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The record as it stands, with `totals` (the broker's counters) and, once the daemon
    /// stops, `stopped`.
    pub fn snapshot(&self, totals: Totals, stopped: bool) -> DaemonRecord {
        let now = now_us();
        let state = self.lock();
        DaemonRecord {
            version: FORMAT_VERSION,
            clock: "CLOCK_MONOTONIC".to_string(),
            pid: self.pid,
            phase: self.phase,
            started_us: self.started_us,
            updated_us: now,
            stopped_us: stopped.then_some(now),
            totals,
            modules: state.modules.clone(),
            modules_dropped: state.modules_dropped,
        }
    }

    /// This instance's file name in the record directory: start time (zero-padded, so name
    /// order is age order), pid and phase (so pruning needs no file read).
    pub fn file_name(&self) -> String {
        format!(
            "{:016}-{}-{}.json",
            self.started_us,
            self.pid,
            self.phase.as_str()
        )
    }
}

/// A load task's own account of its load, filled in as it goes and handed to
/// [`Recorder::load_ended`] at its end.
#[derive(Debug, Clone)]
pub struct LoadTimer {
    queued_us: u64,
    deps_done_us: Option<u64>,
    call_start_us: Option<u64>,
    method: Method,
}

impl Default for LoadTimer {
    fn default() -> Self {
        LoadTimer {
            queued_us: now_us(),
            deps_done_us: None,
            call_start_us: None,
            method: Method::None,
        }
    }
}

impl LoadTimer {
    /// Dependencies and pre-softdeps are done.
    pub fn deps_done(&mut self) {
        self.deps_done_us = Some(now_us());
    }

    /// The syscall or install command starts now, made `method`'s way.
    pub fn call_starts(&mut self, method: Method) {
        self.call_start_us = Some(now_us());
        self.method = method;
    }

    /// The load ended with `outcome`, having answered `answered` requests.
    pub fn finish(&self, outcome: &ModuleOutcome, answered: u64) -> LoadRecord {
        let end_us = now_us();
        let (outcome, failure) = match outcome {
            ModuleOutcome::Loaded => (Outcome::Loaded, None),
            ModuleOutcome::AlreadyLoaded => (Outcome::AlreadyLoaded, None),
            ModuleOutcome::Builtin => (Outcome::Builtin, None),
            ModuleOutcome::Failed(failure) => (Outcome::Failed, Some(failure)),
        };
        LoadRecord {
            queued_us: self.queued_us,
            deps_done_us: self.deps_done_us.unwrap_or(end_us),
            call_start_us: self.call_start_us,
            end_us,
            method: self.method,
            outcome,
            errno: failure.and_then(|f| f.errno),
            errno_name: failure.and_then(|f| f.errno_name.clone()),
            error: failure.map(|f| bounded(&f.message)),
            answered,
        }
    }
}

/// Writes `record` as `dir/name` atomically (a temporary file, then rename), after making sure
/// `dir` holds at most [`MAX_INSTANCES`] files (the oldest root-phase ones go first, then the
/// oldest of any phase).
///
/// Directory and files are readable by everyone (whatever the daemon's umask), as
/// `systemd-analyze blame`'s sources are: the record names modules, devices and command names.
pub fn write_record(dir: &Path, name: &str, record: &DaemonRecord) -> io::Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    let path = dir.join(name);
    if !path.exists() {
        prune(dir)?;
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
    file.write_all(b"\n")?;
    drop(file);
    fs::rename(&tmp, &path)
}

/// Removes instance files until fewer than [`MAX_INSTANCES`] remain.
fn prune(dir: &Path) -> io::Result<()> {
    let mut files: Vec<(bool, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            // The phase is in the name (see `Recorder::file_name`).
            let is_initramfs = p.to_string_lossy().ends_with("-initramfs.json");
            (is_initramfs, p)
        })
        .collect();
    // Name order is age order. Root-phase files (false) sort first, so they go first.
    files.sort();
    let excess = (files.len() + 1).saturating_sub(MAX_INSTANCES);
    for (_, path) in files.into_iter().take(excess) {
        fs::remove_file(path)?;
    }
    Ok(())
}
