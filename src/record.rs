//! The boot's record of module loading, which `modbroker blame` and `modbroker plot` read: its
//! format (this file) and its limits. `recorder` keeps it in memory and writes it.
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

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{Method, OutcomeKind, Requester};

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
    pub outcome: OutcomeKind,
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
