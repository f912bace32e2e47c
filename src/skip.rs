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
//! A marker must never say more than the daemon would answer, so it checks itself. It is a
//! symbolic link to `/proc/PID/fd/N/serving/../failed-F/../sys/A/../B/..`, where `N` is this
//! daemon's `O_PATH` descriptor of its state directory `SKIP_DIR/.state`, which holds `sys`, a
//! link to `/sys/module`, `serving`, and a directory `failed-F` for each module `F` whose
//! failure the daemon remembers. That path resolves only while
//! - this daemon runs and holds that descriptor: a daemon that exits, dies or is restarted (the
//!   initramfs's, at the switch to the root) leaves only dangling markers;
//! - every module `A`, `B`… that the modalias resolved to is in the kernel: one that is unloaded
//!   breaks every marker naming it, and udev asks again, as the builtin would load it again;
//! - every module `F` that failed is still answered from the failure window: its directory is
//!   removed a little before the window ends ([`FAILURE_MARGIN`]), so the request that would
//!   try the module again reaches the daemon; and the daemon is not stopped: a client that
//!   finds it unresponsive removes `serving` (a marker naming no failure does not go through
//!   it: a loaded module is loaded whatever the daemon does), and the daemon makes it again
//!   when it serves again ([`SkipMarkers::serving`]);
//! - the indexes and configuration the answer came from are still the daemon's: when the
//!   resolver reloads (a new depmod or modprobe.d, noticed at once by [`crate::config_watch`],
//!   or SIGHUP), the descriptor is replaced by one with a higher number and the
//!   directory is emptied, so no marker made before resolves again.
//!
//! A marker is made only from the daemon's own resolution and the modules' state, never from what
//! a peer claims, and the directory holds at most [`MAX_MARKERS`] of them.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::broker::ModuleAnswer;
use crate::model::{ModuleOutcome, Requester};
use crate::plan::{LoadMethod, Plan};
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

/// A failed module's directory goes this long before its failure window ends, so that a sweep
/// a little late still never lets udev skip the request that would try the module again.
pub const FAILURE_MARGIN: Duration = Duration::from_secs(3);

/// How often failed modules' directories are checked against the broker's failure windows.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The state directory, in the marker directory (no modalias starts with a dot).
const STATE_DIR: &str = ".state";

/// The state directory's "the daemon serves" directory (`protocol::skip_serving_dir`).
const SERVING: &str = "serving";

/// The state directory's link to `/sys/module` (no module is named with a `-`, so no
/// `failed-NAME` directory can take this name, nor this one theirs).
const SYS_LINK: &str = "sys";

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

/// What a marker must watch: modules that must stay in the kernel, and modules whose failure
/// must still be remembered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Watch<'p> {
    /// In the kernel (`/sys/module/NAME`).
    pub live: Vec<&'p str>,
    /// Remembered as failed (the broker's failure window).
    pub failed: Vec<&'p str>,
}

/// What a request with this plan and these answers (one per top module) must see unchanged to
/// buy nothing again, or `None` if it may buy something: a module without a file, an answer
/// that is not in yet. Built-in modules are always in; a no-match or an all-blacklisted answer
/// needs nothing.
pub fn modules_to_watch<'p>(plan: &'p Plan, answers: &[ModuleAnswer]) -> Option<Watch<'p>> {
    let nodes = match plan {
        Plan::NoMatch | Plan::Blacklisted(_) => return Some(Watch::default()),
        Plan::Load(nodes) if nodes.len() == answers.len() => nodes,
        Plan::Load(_) => return None,
    };
    let mut watch = Watch::default();
    for (node, answer) in nodes.iter().zip(answers) {
        match (&node.method, &answer.outcome) {
            (LoadMethod::Missing, _) => return None,
            (_, ModuleOutcome::Builtin) | (LoadMethod::Builtin, _) => {}
            (_, ModuleOutcome::Loaded | ModuleOutcome::AlreadyLoaded) => {
                watch.live.push(node.name.as_str());
            }
            (_, ModuleOutcome::Failed(_)) => watch.failed.push(node.name.as_str()),
        }
    }
    Some(watch)
}

/// The daemon's markers (see the module's documentation).
#[derive(Debug)]
pub struct SkipMarkers {
    dir: PathBuf,
    /// `dir/.state`: the link to `/sys/module` and the failed modules' directories.
    state_dir: PathBuf,
    state: Mutex<State>,
    /// Wakes the sweep when a failed module's directory is made.
    failures_made: Notify,
}

#[derive(Debug)]
struct State {
    /// The state directory's descriptor markers resolve through; `None` once one cannot be
    /// opened.
    base: Option<OwnedFd>,
    /// Failed modules with a directory.
    failed: BTreeSet<String>,
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
        let state_dir = dir.join(STATE_DIR);
        fs::create_dir_all(&state_dir)?;
        empty(dir);
        empty(&state_dir);
        symlink(sys_module, state_dir.join(SYS_LINK))?;
        fs::create_dir(state_dir.join(SERVING))?;
        let base = open_base(&state_dir, FIRST_FD)?;
        Ok(SkipMarkers {
            dir: dir.to_path_buf(),
            state_dir,
            state: Mutex::new(State {
                base: Some(base),
                failed: BTreeSet::new(),
                generation,
                count: 0,
                serial: 0,
            }),
            failures_made: Notify::new(),
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
        for module in std::mem::take(&mut state.failed) {
            let _ = fs::remove_dir(self.failed_dir(&module));
        }
        match open_base(&self.state_dir, next) {
            Ok(fd) => state.base = Some(fd),
            Err(err) => {
                warn!(error = %err, "cannot open the state directory again; no more skip markers")
            }
        }
    }

    /// After a request with marker key `key` bought nothing: leave a marker that resolves while
    /// `watch` holds. `generation` is the resolver's reload count read before the request was
    /// resolved; an answer from older indexes leaves no marker. The caller has checked that each
    /// failed module's failure is remembered for longer than [`FAILURE_MARGIN`].
    pub fn note(&self, key: &str, watch: &Watch<'_>, generation: u64) {
        let names = watch.live.iter().chain(&watch.failed);
        if !names.into_iter().all(|m| looks_like_module_name(m)) {
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
        let target = link_target(std::process::id(), base.as_raw_fd(), watch);
        for module in &watch.failed {
            if state.failed.insert(module.to_string()) {
                if let Err(err) = fs::create_dir(self.failed_dir(module)) {
                    debug!(module, error = %err, "failed module's directory not made");
                }
                self.failures_made.notify_one();
            }
        }
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

    /// Removes the directory of each failed module whose failure `deadline` says ends within
    /// [`FAILURE_MARGIN`] of `now`, or is no longer remembered.
    pub fn sweep(&self, now: Instant, deadline: impl Fn(&str) -> Option<Instant>) {
        let mut state = self.lock();
        state.failed.retain(|module| {
            let keep = deadline(module).is_some_and(|end| end > now + FAILURE_MARGIN);
            if !keep {
                let _ = fs::remove_dir(self.failed_dir(module));
            }
            keep
        });
    }

    /// The daemon serves (called every few seconds while it does): failures past their window
    /// go first ([`SkipMarkers::sweep`]), then `serving` is made again if a client that found
    /// the daemon unresponsive removed it.
    pub fn serving(&self, now: Instant, deadline: impl Fn(&str) -> Option<Instant>) {
        self.sweep(now, deadline);
        match fs::create_dir(self.state_dir.join(SERVING)) {
            Ok(()) => debug!("serving again: skip markers of failed modules resolve again"),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => debug!(error = %err, "cannot make the skip markers' serving directory"),
        }
    }

    /// Returns once a failed module has a directory (at once if one has).
    pub async fn failures_to_sweep(&self) {
        loop {
            let notified = self.failures_made.notified();
            if !self.lock().failed.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn failed_dir(&self, module: &str) -> PathBuf {
        self.state_dir.join(format!("failed-{module}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `/proc/PID/fd/FD/serving/../failed-F/../sys/A/../B/..`: resolves while the state
/// directory's descriptor is open, `serving` (if a module failed) and `failed-F` are in it, and
/// `A`, `B`… are in `/sys/module`.
fn link_target(pid: u32, fd: RawFd, watch: &Watch<'_>) -> String {
    let mut target = format!("/proc/{pid}/fd/{fd}");
    if !watch.failed.is_empty() {
        target.push('/');
        target.push_str(SERVING);
        target.push_str("/..");
    }
    for module in &watch.failed {
        target.push_str("/failed-");
        target.push_str(module);
        target.push_str("/..");
    }
    if !watch.live.is_empty() {
        target.push('/');
        target.push_str(SYS_LINK);
    }
    for module in &watch.live {
        target.push('/');
        target.push_str(module);
        target.push_str("/..");
    }
    target
}

/// An `O_PATH` descriptor of the directory `dir` numbered `min` or higher (close-on-exec).
fn open_base(dir: &Path, min: RawFd) -> io::Result<OwnedFd> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    // SAFETY: fcntl on a descriptor we own; the result, if valid, is a new descriptor we own.
    let fd = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by F_DUPFD_CLOEXEC and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes every file and empty directory in `dir` but the state directory (markers and
/// temporaries, or the state directory's link and failed modules' directories); errors are
/// ignored.
fn empty(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() == STATE_DIR {
            continue;
        }
        let path = entry.path();
        if fs::remove_file(&path).is_err() {
            let _ = fs::remove_dir(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Failure;
    use crate::plan::ModuleNode;
    use std::sync::Arc;

    fn udev(subsystem: &str) -> Requester {
        Requester::Udev {
            subsystem: Some(subsystem.into()),
            devpath: Some("/devices/x".into()),
        }
    }

    fn live<'a>(modules: &[&'a str]) -> Watch<'a> {
        Watch {
            live: modules.to_vec(),
            failed: Vec::new(),
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

    // Tests share the process's descriptor table, so a number one test closes another may take
    // again: each test's modules have names no other test's fixture has.

    #[test]
    fn a_marker_resolves_while_its_modules_are_in_and_the_daemon_holds_its_descriptor() {
        let f = fixture(&["kvm", "kvm_amd"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        markers.note("cpu", &live(&["kvm_amd", "kvm"]), 0);
        markers.note("acpi:ACPI0007:", &Watch::default(), 0);
        let cpu = f.dir.join("cpu");
        assert!(resolves(&cpu));
        assert!(resolves(&f.dir.join("acpi:ACPI0007:")));
        // Unloading one module breaks it.
        fs::remove_dir(f.sys_module.join("kvm")).unwrap();
        assert!(!resolves(&cpu));
        fs::create_dir(f.sys_module.join("kvm")).unwrap();
        assert!(resolves(&cpu));
        // A daemon that goes away takes every marker with it.
        drop(markers);
        assert!(!resolves(&cpu));
    }

    #[test]
    fn no_marker_for_a_module_that_is_not_in_or_from_older_indexes() {
        let f = fixture(&["evdev"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 3).unwrap();
        let key = "input:b0011v0001";
        markers.note(key, &live(&["evdev", "gone"]), 3);
        assert!(fs::symlink_metadata(f.dir.join(key)).is_err());
        markers.note(key, &live(&["evdev"]), 2);
        assert!(fs::symlink_metadata(f.dir.join(key)).is_err());
        markers.note(key, &live(&["../../etc"]), 3);
        assert!(fs::symlink_metadata(f.dir.join(key)).is_err());
        let left: Vec<_> = fs::read_dir(&f.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".state"], "no temporary is left");
    }

    #[test]
    fn a_reload_kills_every_earlier_marker_for_good() {
        let f = fixture(&["psmouse"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        markers.note("serio:ty01", &live(&["psmouse"]), 0);
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
            markers.note("serio:ty01", &live(&["psmouse"]), generation - 1);
            assert!(
                !resolves(&f.dir.join("serio:ty01")),
                "an answer from before the reload"
            );
            markers.note("serio:ty01", &live(&["psmouse"]), generation);
            assert!(resolves(&f.dir.join("serio:ty01")));
        }
    }

    #[test]
    fn a_failure_marker_resolves_until_shortly_before_the_window_ends() {
        let f = fixture(&["crc32c_intel"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        let watch = Watch {
            live: vec!["crc32c_intel"],
            failed: vec!["acpi_cpufreq"],
        };
        markers.note("cpu", &watch, 0);
        let cpu = f.dir.join("cpu");
        assert!(resolves(&cpu));
        let now = Instant::now();
        let ends = now + FAILURE_MARGIN + Duration::from_secs(10);
        let window = |end: Instant| move |m: &str| (m == "acpi_cpufreq").then_some(end);
        markers.sweep(now, window(ends));
        assert!(resolves(&cpu), "well inside the window");
        markers.sweep(ends - FAILURE_MARGIN, window(ends));
        assert!(
            !resolves(&cpu),
            "within the margin of its end: udev asks again"
        );
        markers.note("cpu", &watch, 0);
        assert!(resolves(&cpu), "failed again, remembered again");
        markers.sweep(now, |_| None);
        assert!(!resolves(&cpu), "forgotten (a reload, or pruned)");
    }

    #[test]
    fn a_daemon_found_unresponsive_stops_its_failure_markers_until_it_serves_again() {
        let f = fixture(&["ghash_clmulni_intel"]);
        let markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        let failed = Watch {
            live: vec![],
            failed: vec!["pcc_cpufreq"],
        };
        markers.note("acpi:ACPI0007:", &failed, 0);
        markers.note("cpu", &live(&["ghash_clmulni_intel"]), 0);
        let (acpi, cpu) = (f.dir.join("acpi:ACPI0007:"), f.dir.join("cpu"));
        assert!(resolves(&acpi) && resolves(&cpu));
        // What a client that found the daemon silent does (client::mark_unresponsive).
        fs::remove_dir(f.dir.join(".state/serving")).unwrap();
        assert!(!resolves(&acpi), "a failure no one keeps");
        assert!(
            resolves(&cpu),
            "a loaded module is loaded whatever the daemon does"
        );
        let now = Instant::now();
        let remembered = |_: &str| Some(now + Duration::from_secs(20));
        markers.serving(now, remembered);
        assert!(
            resolves(&acpi),
            "serving again, the failure still remembered"
        );
        fs::remove_dir(f.dir.join(".state/serving")).unwrap();
        markers.serving(now, |_| None);
        assert!(
            !resolves(&acpi),
            "back, but the failure is forgotten: swept first"
        );
    }

    #[tokio::test]
    async fn the_sweep_waits_for_a_failure() {
        let f = fixture(&[]);
        let markers = Arc::new(SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap());
        let waiter = tokio::spawn({
            let markers = markers.clone();
            async move { markers.failures_to_sweep().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let watch = Watch {
            live: vec![],
            failed: vec!["mb_fail_sweep"],
        };
        markers.note("pci:v9", &watch, 0);
        waiter.await.unwrap();
    }

    #[test]
    fn opening_empties_what_an_earlier_daemon_left() {
        let f = fixture(&[]);
        fs::create_dir_all(f.dir.join(".state/failed-old")).unwrap();
        symlink("/proc/1/fd/64", f.dir.join("pci:old")).unwrap();
        let _markers = SkipMarkers::open(&f.dir, &f.sys_module, 0).unwrap();
        let left: Vec<_> = fs::read_dir(&f.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".state"]);
        let mut state: Vec<_> = fs::read_dir(f.dir.join(".state"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        state.sort();
        assert_eq!(state, ["serving", "sys"]);
    }

    #[test]
    fn what_must_stay_as_it_is() {
        let node = |name: &str, method| {
            let mut node = ModuleNode::file(name, "/x.ko");
            node.method = method;
            Arc::new(node)
        };
        let answer = |outcome| ModuleAnswer {
            outcome,
            merged: false,
        };
        let failed = || ModuleOutcome::Failed(Failure::without_errno("c", "no device"));
        let plan = Plan::Load(vec![
            node("a", LoadMethod::File("/a.ko".into())),
            node("b", LoadMethod::Builtin),
            node("c", LoadMethod::File("/c.ko".into())),
        ]);
        let answers = [
            answer(ModuleOutcome::AlreadyLoaded),
            answer(ModuleOutcome::Builtin),
            answer(failed()),
        ];
        let watch = modules_to_watch(&plan, &answers).unwrap();
        assert_eq!(watch.live, ["a"]);
        assert_eq!(watch.failed, ["c"]);
        assert_eq!(
            modules_to_watch(&plan, &answers[..1]),
            None,
            "an answer missing"
        );
        let missing = Plan::Load(vec![node("m", LoadMethod::Missing)]);
        assert_eq!(modules_to_watch(&missing, &[answer(failed())]), None);
        assert_eq!(
            modules_to_watch(&Plan::NoMatch, &[]),
            Some(Watch::default())
        );
    }
}
