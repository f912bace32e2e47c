//! The live record of one daemon instance: [`Recorder`] takes what the broker and the service
//! report, one [`Event`] per thing that happened (a request line served, a request for a module
//! arrived, how it was answered, a load call started, a load ended), keeps it within `record`'s
//! limits, and makes the [`DaemonRecord`] that [`write_record`] writes (atomically, pruning old
//! instances) for `modbroker blame` and `modbroker plot`.
//!
//! The counters behind `status` ([`Recorder::totals`], [`Recorder::failure_counts`]) are fed by
//! the same events, in the same call, so the record and `status` cannot disagree.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tracing::info;

use crate::model::{Failure, FailureCount, Method, ModuleOutcome, Requester};
use crate::record::{
    now_us, DaemonRecord, LoadRecord, ModuleRecord, Phase, RequestCounts, Totals, FORMAT_VERSION,
    MAX_ARRIVALS, MAX_DEPENDENTS, MAX_INSTANCES, MAX_LOADS, MAX_MODULES, MAX_TEXT,
};

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

/// One thing that happened, reported once (see [`Recorder::report`]).
#[derive(Debug)]
pub enum Event<'a> {
    /// A request line was served (any kind).
    Line,
    /// A load request brought this many targets.
    Targets(u64),
    /// A request for `module` arrived from `by` (a client's, or a dependency's).
    Requested {
        /// The module.
        module: &'a str,
        /// Who asked.
        by: &'a Requester,
    },
    /// The request for `module` that arrived last was answered `how`.
    Answered {
        /// The module.
        module: &'a str,
        /// How.
        how: Answered,
    },
    /// A load call (syscall or install command) for `module` starts.
    CallStarted {
        /// The module.
        module: &'a str,
    },
    /// A load of `module` ended; `failure` when it failed.
    LoadEnded {
        /// The module.
        module: &'a str,
        /// The load, as the record keeps it.
        load: LoadRecord,
        /// Why it failed (a dependency's failure names the dependency).
        failure: Option<&'a Failure>,
    },
}

/// The in-memory record of this daemon instance and its counters; the broker and the service
/// feed both through [`Recorder::report`], [`Recorder::snapshot`] and [`Recorder::totals`] read
/// them. Every event takes at most one short lock.
#[derive(Debug)]
pub struct Recorder {
    pid: u32,
    phase: Phase,
    started_us: u64,
    counts: Counts,
    state: Mutex<State>,
    /// Held while this instance's file is written; true once the stopped record is on disk.
    file: Mutex<bool>,
}

/// The counters behind `status` and the record's `totals`: atomics, so a request line's count
/// takes no lock.
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    targets: AtomicU64,
    merged: AtomicU64,
    already_loaded: AtomicU64,
    load_calls: AtomicU64,
    failed_loads: AtomicU64,
}

impl Counts {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn totals(&self) -> Totals {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Totals {
            requests: get(&self.requests),
            targets: get(&self.targets),
            merged: get(&self.merged),
            already_loaded: get(&self.already_loaded),
            load_calls: get(&self.load_calls),
            failed_loads: get(&self.failed_loads),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    modules: Vec<ModuleRecord>,
    index: HashMap<String, usize>,
    modules_dropped: u64,
    /// Failed load calls by module and error (symbolic errno or `install-command`).
    failure_counts: HashMap<(String, String), u64>,
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
            counts: Counts::default(),
            state: Mutex::default(),
            file: Mutex::default(),
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

    /// Records `event` and counts it: the one way anything gets into the record or the
    /// counters.
    pub fn report(&self, event: Event<'_>) {
        let counts = &self.counts;
        match event {
            Event::Line => Counts::add(&counts.requests, 1),
            Event::Targets(n) => Counts::add(&counts.targets, n),
            Event::Requested { module, by } => self.requested(module, by),
            Event::Answered { module, how } => {
                match how {
                    Answered::Merged | Answered::FailureWindow => Counts::add(&counts.merged, 1),
                    Answered::AlreadyLoaded => Counts::add(&counts.already_loaded, 1),
                    Answered::Direct => {}
                }
                self.answered(module, how)
            }
            Event::CallStarted { .. } => Counts::add(&counts.load_calls, 1),
            Event::LoadEnded {
                module,
                load,
                failure,
            } => self.load_ended(module, load, failure),
        }
    }

    /// The counters: the record's `totals`, and what `status` shows.
    pub fn totals(&self) -> Totals {
        self.counts.totals()
    }

    /// Failed load calls counted by module and error, sorted.
    pub fn failure_counts(&self) -> Vec<FailureCount> {
        let state = self.lock();
        let mut list: Vec<FailureCount> = state
            .failure_counts
            .iter()
            .map(|((module, error), count)| FailureCount {
                module: module.clone(),
                error: error.clone(),
                count: *count,
            })
            .collect();
        list.sort_by(|a, b| (&a.module, &a.error).cmp(&(&b.module, &b.error)));
        list
    }

    /// A request for `module` arrived from `requester`.
    fn requested(&self, module: &str, requester: &Requester) {
        let mut state = self.lock();
        // Read the clock under the lock: read before it, two requests racing for the lock could
        // append their arrivals out of order (seen once in `tests/record.rs`'s burst).
        let now = now_us();
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
    fn answered(&self, module: &str, how: Answered) {
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

    /// A load of `module` ended: keeps it (within [`MAX_LOADS`]) and counts a failed call of its
    /// own (a dependency's failure is counted under the dependency's load; a load that made no
    /// call, e.g. of a module without a file, counts no failed call).
    fn load_ended(&self, module: &str, load: LoadRecord, failure: Option<&Failure>) {
        let mut state = self.lock();
        if let Some(failure) = failure.filter(|f| f.module == module) {
            if load.call_start_us.is_some() {
                Counts::add(&self.counts.failed_loads, 1);
                let error = failure.errno_name.as_deref().unwrap_or("install-command");
                *state
                    .failure_counts
                    .entry((module.to_string(), error.to_string()))
                    .or_default() += 1;
            }
        }
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
        let outcome = load.outcome.in_words();
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

    /// The record as it stands, with its counters and, once the daemon stops, `stopped`.
    pub fn snapshot(&self, stopped: bool) -> DaemonRecord {
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
            totals: self.totals(),
            modules: state.modules.clone(),
            modules_dropped: state.modules_dropped,
        }
    }

    /// Writes this instance's file in `dir` ([`write_record`]), the stopped record once the
    /// daemon stops. One write at a time: a periodic write and the final one would share the
    /// temporary file and interleave in it. None after the stopped one: a periodic write still
    /// queued when the daemon stops would put `stopped_us: null` back.
    pub fn write_file(&self, dir: &Path, stopped: bool) -> io::Result<()> {
        let mut stopped_written = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped_written {
            return Ok(());
        }
        write_record(dir, &self.file_name(), &self.snapshot(stopped))?;
        *stopped_written = stopped;
        Ok(())
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
/// the recorder (`Event::LoadEnded`) at its end.
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
        let failure = match outcome {
            ModuleOutcome::Failed(failure) => Some(failure),
            _ => None,
        };
        let outcome = outcome.kind();
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
