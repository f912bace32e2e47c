//! Skip markers: the uevents udev need not exec the client for.
//!
//! Most of a coldplug's requests buy nothing: every module their modalias resolves to is live
//! already (the root phase re-triggers every device the initramfs handled), or the modalias
//! matches nothing. On a big server most of them are also repeats: every CPU's uevent carries
//! the same modalias. Each still costs udev a fork and an exec of the client.
//!
//! After such an answer the daemon leaves a marker, `SKIP_DIR/KEY`, and `80-drivers.rules` does
//! not run the client for a uevent whose marker resolves (`TEST==`, a `stat()`, no exec). The
//! key is the modalias itself, or `cpu` for the `cpu` subsystem: the kernel prints one modalias
//! for every CPU device (the boot CPU's features, `drivers/base/cpu.c`), too long for a file name.
//!
//! A marker must never say more than udev's builtin would find, so it checks itself. It is a
//! symbolic link to `/proc/PID/fd/N/A/../B/..`, where `N` is this daemon's `O_PATH` descriptor
//! of `/sys/module`. That path resolves only while
//! - this daemon runs and holds that descriptor: a daemon that exits, dies or is restarted (the
//!   initramfs's, at the switch to the root) leaves only dangling markers;
//! - every module `A`, `B`… that the modalias resolved to is in the kernel: one that is unloaded
//!   breaks every marker naming it, and udev asks again, as the builtin would load it again;
//! - the indexes and configuration the answer came from are still the daemon's: when the
//!   resolver reloads (a new depmod or modprobe.d, noticed by the resolver, by SIGHUP or by
//!   `modbroker-reload.path`), the descriptor is replaced by one with a higher number and the
//!   directory is emptied, so no marker made before resolves again.
//!
//! A marker is made only from the daemon's own resolution and the modules' state, never from what
//! a peer claims, and the directory holds at most [`MAX_MARKERS`] of them.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::plan::{LoadMethod, Plan};
use crate::protocol::{OutcomeKind, TargetResult};
use crate::record::Requester;
use crate::target::looks_like_module_name;

/// Where the daemon keeps its markers; `80-drivers.rules` tests this path.
pub const SKIP_DIR: &str = "/run/modbroker/skip";

/// The most markers kept at once (a system has a few hundred distinct modaliases).
pub const MAX_MARKERS: usize = 4096;

/// The lowest descriptor number a `/sys/module` descriptor takes. Each replacement takes a
/// higher number than the last, so a marker made for an earlier one can never resolve again.
const FIRST_FD: RawFd = 64;

/// The longest file name a marker can have (`NAME_MAX`).
const MAX_KEY_LEN: usize = 255;

/// The marker key of a udev request for `target`, if it can have one: a modalias (it has a `:`,
/// which no module name has) that fits a file name, or `cpu` for a CPU device.
pub fn marker_key<'a>(target: &'a str, requester: &Requester) -> Option<&'a str> {
    let Requester::Udev { subsystem, .. } = requester else {
        return None;
    };
    if subsystem.as_deref() == Some("cpu") && target.starts_with("cpu:type:") {
        return Some("cpu");
    }
    let fits = target.len() <= MAX_KEY_LEN && !target.starts_with('.');
    (fits && target.contains(':') && !target.contains('/')).then_some(target)
}

/// The modules that must stay in the kernel for a request like this one to buy nothing again,
/// or `None` if it bought (or may buy) something: it failed, or a module has no file.
/// Built-in modules are always in; a no-match or an all-blacklisted answer needs no module.
pub fn modules_to_watch<'p>(plan: &'p Plan, result: &TargetResult) -> Option<Vec<&'p str>> {
    match (plan, result.outcome) {
        (Plan::NoMatch, _) | (Plan::Blacklisted(_), _) => Some(Vec::new()),
        (Plan::Load(nodes), OutcomeKind::Loaded | OutcomeKind::AlreadyLoaded)
        | (Plan::Load(nodes), OutcomeKind::Builtin) => nodes
            .iter()
            .filter(|node| !matches!(node.method, LoadMethod::Builtin))
            .map(|node| match node.method {
                LoadMethod::Missing => None,
                _ => Some(node.name.as_str()),
            })
            .collect(),
        _ => None,
    }
}

/// The daemon's markers (see the module's documentation).
#[derive(Debug)]
pub struct SkipMarkers {
    dir: PathBuf,
    sys_module: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The `/sys/module` descriptor markers resolve through; `None` once one cannot be opened.
    base: Option<OwnedFd>,
    /// The resolver's reload count the descriptor stands for.
    generation: u64,
    /// Markers made since the directory was last emptied.
    count: usize,
    /// For unique temporary names.
    serial: u64,
}

impl SkipMarkers {
    /// Markers in `dir` (created if missing, emptied) resolving through `sys_module`, for the
    /// resolver's current reload count `generation`.
    pub fn open(dir: &Path, sys_module: &Path, generation: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        empty(dir);
        let base = open_base(sys_module, FIRST_FD)?;
        Ok(SkipMarkers {
            dir: dir.to_path_buf(),
            sys_module: sys_module.to_path_buf(),
            state: Mutex::new(State {
                base: Some(base),
                generation,
                count: 0,
                serial: 0,
            }),
        })
    }

    /// The resolver reloaded (its count is now `generation`): every marker made so far stops
    /// resolving, and later ones stand for the new indexes and configuration.
    pub fn invalidate(&self, generation: u64) {
        let mut state = self.lock();
        let next = state
            .base
            .as_ref()
            .map_or(FIRST_FD, |fd| fd.as_raw_fd() + 1);
        // The old descriptor goes first: its markers die with it, whatever happens next.
        state.base = None;
        state.generation = generation;
        state.count = 0;
        empty(&self.dir);
        match open_base(&self.sys_module, next) {
            Ok(fd) => state.base = Some(fd),
            Err(err) => warn!(error = %err, "cannot open /sys/module again; no more skip markers"),
        }
    }

    /// After a request with marker key `key` bought nothing: leave a marker that resolves while
    /// every module in `modules` is in the kernel. `generation` is the resolver's reload count
    /// read before the request was resolved; an answer from older indexes leaves no marker.
    pub fn note(&self, key: &str, modules: &[&str], generation: u64) {
        if !modules.iter().all(|m| looks_like_module_name(m)) {
            return;
        }
        let mut state = self.lock();
        let Some(base) = state.base.as_ref() else {
            return;
        };
        if state.generation != generation || state.count >= MAX_MARKERS {
            return;
        }
        let marker = self.dir.join(key);
        if fs::metadata(&marker).is_ok() {
            return;
        }
        let target = link_target(std::process::id(), base.as_raw_fd(), modules);
        state.serial += 1;
        let temporary = self.dir.join(format!(".new.{}", state.serial));
        let made = symlink(&target, &temporary).and_then(|()| fs::rename(&temporary, &marker));
        if let Err(err) = made {
            let _ = fs::remove_file(&temporary);
            debug!(key, error = %err, "skip marker not made");
            return;
        }
        // A module may have gone in between: a marker that does not resolve helps nobody.
        if fs::metadata(&marker).is_err() {
            let _ = fs::remove_file(&marker);
            return;
        }
        state.count += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `/proc/PID/fd/FD/A/../B/..`: resolves to `/sys/module` while the descriptor is open and
/// `A`, `B`… are in it.
fn link_target(pid: u32, fd: RawFd, modules: &[&str]) -> String {
    let mut target = format!("/proc/{pid}/fd/{fd}");
    for module in modules {
        target.push('/');
        target.push_str(module);
        target.push_str("/..");
    }
    target
}

/// An `O_PATH` descriptor of `sys_module` numbered `min` or higher (close-on-exec).
fn open_base(sys_module: &Path, min: RawFd) -> io::Result<OwnedFd> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(sys_module)?;
    // SAFETY: fcntl on a descriptor we own; the result, if valid, is a new descriptor we own.
    let fd = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by F_DUPFD_CLOEXEC and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes every entry of `dir` (markers and temporaries); errors are ignored.
fn empty(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = fs::remove_file(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ModuleNode;
    use std::sync::Arc;

    fn udev(subsystem: &str) -> Requester {
        Requester::Udev {
            subsystem: Some(subsystem.into()),
            devpath: Some("/devices/x".into()),
        }
    }

    struct Fixture {
        _root: tempfile::TempDir,
        sys_module: PathBuf,
        dir: PathBuf,
    }

    fn fixture(live: &[&str]) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let sys_module = root.path().join("module");
        for m in live {
            fs::create_dir_all(sys_module.join(m)).unwrap();
        }
        fs::create_dir_all(&sys_module).unwrap();
        let dir = root.path().join("skip");
        Fixture {
            _root: root,
            sys_module,
            dir,
        }
    }

    fn resolves(path: &Path) -> bool {
        fs::metadata(path).is_ok()
    }

    #[test]
    fn keys_are_modaliases_that_fit_a_file_name_or_the_cpu_subsystem() {
        let pci = "pci:v00008086d00001237sv*";
        assert_eq!(marker_key(pci, &udev("pci")), Some(pci));
        let cpu = format!(
            "cpu:type:x86,ven0000fam0006mod003F:feature:{}",
            ",0000".repeat(90)
        );
        assert_eq!(marker_key(&cpu, &udev("cpu")), Some("cpu"));
        // The same modalias from another subsystem, or too long, or a path, or a name: none.
        assert_eq!(marker_key(&cpu, &udev("platform")), None);
        assert_eq!(marker_key("dmi:bvn/x:", &udev("dmi")), None);
        assert_eq!(marker_key("..:x", &udev("pci")), None);
        assert_eq!(marker_key("ppdev", &udev("module")), None);
        let cli = Requester::Cli { uid: 0, comm: None };
        assert_eq!(marker_key(pci, &cli), None);
    }

    #[test]
    fn a_marker_resolves_while_its_modules_are_in_and_the_daemon_holds_its_descriptor() {
        let f = fixture(&["kvm", "kvm_amd"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        markers.note("cpu", &["kvm_amd", "kvm"], 0);
        markers.note("acpi:ACPI0007:", &[], 0);
        let cpu = f.dir.join("cpu");
        assert!(resolves(&cpu));
        assert!(resolves(&f.dir.join("acpi:ACPI0007:")));
        // Unloading one module breaks it.
        fs::remove_dir(f.sys_module.join("kvm")).unwrap();
        assert!(!resolves(&cpu));
        fs::create_dir(f.sys_module.join("kvm")).unwrap();
        assert!(resolves(&cpu));
        // A daemon that goes away takes every marker with it. (Tests share one descriptor
        // table, so another test may take the number again: `kvm_amd` is in no other fixture.)
        drop(markers);
        assert!(!resolves(&cpu));
    }

    #[test]
    fn no_marker_for_a_module_that_is_not_in_or_from_older_indexes() {
        let f = fixture(&["evdev"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 3).unwrap();
        markers.note("input:b0011v0001", &["evdev", "gone"], 3);
        assert!(fs::symlink_metadata(f.dir.join("input:b0011v0001")).is_err());
        markers.note("input:b0011v0001", &["evdev"], 2);
        assert!(fs::symlink_metadata(f.dir.join("input:b0011v0001")).is_err());
        markers.note("input:b0011v0001", &["../../etc"], 3);
        assert!(fs::symlink_metadata(f.dir.join("input:b0011v0001")).is_err());
        assert_eq!(
            fs::read_dir(&f.dir).unwrap().count(),
            0,
            "no temporary is left"
        );
    }

    #[test]
    fn a_reload_kills_every_earlier_marker_for_good() {
        let f = fixture(&["psmouse"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        markers.note("serio:ty01", &["psmouse"], 0);
        let first = fs::read_link(f.dir.join("serio:ty01")).unwrap();
        for generation in 1..4 {
            markers.invalidate(generation);
            assert!(
                !f.dir.join("serio:ty01").exists(),
                "the directory is emptied"
            );
            assert!(
                !resolves(&first),
                "an old marker's target never resolves again"
            );
            markers.note("serio:ty01", &["psmouse"], generation - 1);
            assert!(
                !resolves(&f.dir.join("serio:ty01")),
                "an answer from before the reload"
            );
            markers.note("serio:ty01", &["psmouse"], generation);
            assert!(resolves(&f.dir.join("serio:ty01")));
        }
    }

    #[test]
    fn opening_empties_what_an_earlier_daemon_left() {
        let f = fixture(&[]);
        fs::create_dir_all(&f.dir).unwrap();
        symlink("/proc/1/fd/64", f.dir.join("pci:old")).unwrap();
        let _markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        assert_eq!(fs::read_dir(&f.dir).unwrap().count(), 0);
    }

    #[test]
    fn what_must_stay_loaded() {
        let node = |name: &str, method| {
            let mut node = ModuleNode::file(name, "/x.ko");
            node.method = method;
            Arc::new(node)
        };
        let plan = Plan::Load(vec![
            node("a", LoadMethod::File("/a.ko".into())),
            node("b", LoadMethod::Builtin),
        ]);
        let result = |outcome| TargetResult {
            target: "x:y".into(),
            outcome,
            modules: vec![],
            failure: None,
            merged: false,
            elapsed_us: 0,
        };
        assert_eq!(
            modules_to_watch(&plan, &result(OutcomeKind::AlreadyLoaded)),
            Some(vec!["a"])
        );
        assert_eq!(modules_to_watch(&plan, &result(OutcomeKind::Failed)), None);
        assert_eq!(
            modules_to_watch(&plan, &result(OutcomeKind::TimedOut)),
            None
        );
        let missing = Plan::Load(vec![node("m", LoadMethod::Missing)]);
        assert_eq!(
            modules_to_watch(&missing, &result(OutcomeKind::Loaded)),
            None
        );
        assert_eq!(
            modules_to_watch(&Plan::NoMatch, &result(OutcomeKind::NoMatch)),
            Some(vec![])
        );
    }
}
