//! Reports on a boot's record of module loading ([`crate::record`]): what `modbroker blame` and
//! `modbroker plot` print.
//!
//! [`read_dir`] reads every `*.json` instance file of a record directory, lists (never panics
//! on) the files it cannot use, and orders the instances by start. [`Blame`] is the merged view:
//! totals for the whole boot and per [`Phase`], and one [`ModuleLine`] per module and phase,
//! longest load first; [`blame_text`] prints it as a table in the manner of `systemd-analyze
//! blame`, and its JSON form is documented in `docs/blame-json.md`. [`plot_svg`] draws the
//! timeline in the manner of `systemd-analyze plot`.
//!
//! Everything here is a pure function of the record: the same record gives the same bytes
//! (maps are ordered, ties are broken by name, no clock is read).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Method, Requester};
use crate::record::{
    DaemonRecord, LoadRecord, Outcome, Phase, RequestCounts, Totals, FORMAT_VERSION,
};

/// The version of the blame JSON layout (`docs/blame-json.md`).
pub const BLAME_FORMAT: u32 = 1;

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The record directory does not exist.
    #[error("no module-loading record: {} does not exist (modbrokerd did not run this boot, or keeps no record)", dir.display())]
    NoRecord {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory holds no usable instance file.
    #[error("no module-loading record in {}: no usable instance file ({} skipped)", dir.display(), skipped.len())]
    Empty {
        /// The directory.
        dir: PathBuf,
        /// The files that could not be used, with the reason.
        skipped: Vec<Skipped>,
    },
    /// The directory could not be listed.
    #[error("cannot read {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// An instance file that was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// File name within the record directory.
    pub file: String,
    /// Why (truncated, not JSON, another format version, ...).
    pub reason: String,
}

/// One daemon instance's record and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// File name within the record directory.
    pub file: String,
    /// Its content.
    pub record: DaemonRecord,
}

/// A record directory as read: the usable instances, oldest first, and the files skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BootRecord {
    /// The directory read.
    pub dir: PathBuf,
    /// Ordered by `started_us` (then pid, then file name).
    pub instances: Vec<Instance>,
    /// Files that could not be used, by file name.
    pub skipped: Vec<Skipped>,
}

/// Reads every `*.json` file in `dir`. A file that cannot be read, is not a record, or has
/// another format version is skipped and listed in [`BootRecord::skipped`]. Fails when `dir`
/// does not exist ([`ReportError::NoRecord`]), cannot be listed, or holds no usable file
/// ([`ReportError::Empty`]).
pub fn read_dir(dir: &Path) -> Result<BootRecord, ReportError> {
    let io = |source| ReportError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReportError::NoRecord {
                dir: dir.to_path_buf(),
            })
        }
        Err(err) => return Err(io(err)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.extension() == Some("json".as_ref()) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut instances = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match read_instance(&path) {
            Ok(record) => instances.push(Instance { file, record }),
            Err(reason) => skipped.push(Skipped { file, reason }),
        }
    }
    if instances.is_empty() {
        return Err(ReportError::Empty {
            dir: dir.to_path_buf(),
            skipped,
        });
    }
    instances.sort_by(|a, b| {
        (a.record.started_us, a.record.pid, &a.file).cmp(&(
            b.record.started_us,
            b.record.pid,
            &b.file,
        ))
    });
    Ok(BootRecord {
        dir: dir.to_path_buf(),
        instances,
        skipped,
    })
}

/// One instance file, or why it cannot be used.
fn read_instance(path: &Path) -> Result<DaemonRecord, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read: {err}"))?;
    let described = |err: serde_json::Error| {
        if err.is_eof() {
            format!("truncated ({err})")
        } else {
            format!("not a record file ({err})")
        }
    };
    // The version first, so that a newer format is named as such, not as some field's error.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(&bytes).map_err(described)?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this modbroker reads version {FORMAT_VERSION}"
        ));
    }
    let record: DaemonRecord = serde_json::from_slice(&bytes).map_err(described)?;
    if record.clock != "CLOCK_MONOTONIC" {
        return Err(format!(
            "clock {:?}; expected \"CLOCK_MONOTONIC\"",
            record.clock
        ));
    }
    Ok(record)
}

/// Totals for the whole boot or one phase (see `docs/blame-json.md`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Daemon instances counted.
    pub instances: u64,
    /// The sum of the instances' `totals`, field by field.
    pub totals: Totals,
    /// Module requests answered without a load call of their own: joined a load in flight, or
    /// answered with a remembered failure (`totals.merged`). Without the broker each of them
    /// would have been its own load call.
    pub duplicate_loads_avoided: u64,
    /// Failed load calls (loads with a syscall or install command whose outcome is failed), by
    /// errno name (`"errno N"` without a name, `"other"` without an errno).
    pub failures_by_errno: BTreeMap<String, u64>,
    /// Distinct module names recorded.
    pub modules: u64,
    /// The earliest first request of any module.
    pub first_request_us: Option<u64>,
    /// The latest end of any load.
    pub last_load_end_us: Option<u64>,
    /// `last_load_end_us - first_request_us` (0 if the loads ended before it).
    pub span_us: Option<u64>,
    /// Sum of the instances' `modules_dropped`: requests for modules beyond the first
    /// [`crate::record::MAX_MODULES`] of an instance, which are not recorded.
    pub modules_dropped: u64,
    /// Sum of the modules' `arrivals_dropped`.
    pub arrivals_dropped: u64,
    /// Sum of the modules' `loads_dropped`.
    pub loads_dropped: u64,
}

impl Summary {
    /// Whether the record cut any detail (see [`crate::record`]'s limits).
    pub fn dropped_any(&self) -> bool {
        self.modules_dropped > 0 || self.arrivals_dropped > 0 || self.loads_dropped > 0
    }

    fn add(&mut self, record: &DaemonRecord, names: &mut std::collections::BTreeSet<String>) {
        let (t, r) = (&mut self.totals, &record.totals);
        add(&mut self.instances, 1);
        add(&mut t.requests, r.requests);
        add(&mut t.targets, r.targets);
        add(&mut t.merged, r.merged);
        add(&mut t.already_loaded, r.already_loaded);
        add(&mut t.load_calls, r.load_calls);
        add(&mut t.failed_loads, r.failed_loads);
        self.duplicate_loads_avoided = t.merged;
        add(&mut self.modules_dropped, record.modules_dropped);
        for m in &record.modules {
            names.insert(m.module.clone());
            self.first_request_us = Some(
                self.first_request_us
                    .map_or(m.first_request_us, |t| t.min(m.first_request_us)),
            );
            add(&mut self.arrivals_dropped, m.arrivals_dropped);
            add(&mut self.loads_dropped, m.loads_dropped);
            for load in &m.loads {
                self.last_load_end_us = Some(
                    self.last_load_end_us
                        .map_or(load.end_us, |t| t.max(load.end_us)),
                );
                if load.outcome == Outcome::Failed && load.method != Method::None {
                    add(
                        self.failures_by_errno.entry(errno_key(load)).or_default(),
                        1,
                    );
                }
            }
        }
        self.modules = names.len() as u64;
        self.span_us = self
            .first_request_us
            .zip(self.last_load_end_us)
            .map(|(first, last)| last.saturating_sub(first));
    }
}

/// Adds without overflowing: the counts come from files, and a corrupt one must not panic.
fn add(to: &mut u64, n: u64) {
    *to = to.saturating_add(n);
}

/// Requests answered, whichever way: `counts`' first four fields.
fn answered(c: &RequestCounts) -> u64 {
    [c.direct, c.merged, c.failure_window, c.already_loaded]
        .into_iter()
        .fold(0, u64::saturating_add)
}

fn errno_key(load: &LoadRecord) -> String {
    match (&load.errno_name, load.errno) {
        (Some(name), _) => name.clone(),
        (None, Some(errno)) => format!("errno {errno}"),
        (None, None) => "other".to_string(),
    }
}

/// One module in one phase (its records in every instance of that phase, merged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleLine {
    /// Canonical module name.
    pub module: String,
    /// The phase.
    pub phase: Phase,
    /// Time in load calls (syscall or install command), summed over its loads.
    pub load_us: u64,
    /// Time its loads waited (for dependencies, then a parallel-load slot), summed.
    pub wait_us: u64,
    /// Load tasks recorded.
    pub loads: u64,
    /// Of those, with a call.
    pub load_calls: u64,
    /// Requests answered: the sum of `counts`' first four fields.
    pub requests: u64,
    /// How they were answered, summed over instances.
    pub counts: RequestCounts,
    /// The last load's outcome; `already-loaded` without a load but with requests answered from
    /// sysfs; `null` otherwise.
    pub outcome: Option<Outcome>,
    /// The last load's errno name, when it failed with one.
    pub errno_name: Option<String>,
    /// The last load's failure message.
    pub error: Option<String>,
    /// The earliest request for it in the phase.
    pub first_request_us: u64,
    /// Who made that request.
    pub first_requester: Requester,
    /// When its last load ended.
    pub last_end_us: Option<u64>,
    /// Modules whose load asked for it, in order of first appearance.
    pub dependency_of: Vec<String>,
}

impl ModuleLine {
    fn new(phase: Phase, m: &crate::record::ModuleRecord) -> Self {
        ModuleLine {
            module: m.module.clone(),
            phase,
            load_us: 0,
            wait_us: 0,
            loads: 0,
            load_calls: 0,
            requests: 0,
            counts: RequestCounts::default(),
            outcome: None,
            errno_name: None,
            error: None,
            first_request_us: m.first_request_us,
            first_requester: m.first_requester.clone(),
            last_end_us: None,
            dependency_of: Vec::new(),
        }
    }

    /// Adds one instance's record of the module (instances come oldest first).
    fn add(&mut self, m: &crate::record::ModuleRecord) {
        if m.first_request_us < self.first_request_us {
            self.first_request_us = m.first_request_us;
            self.first_requester = m.first_requester.clone();
        }
        let (c, r) = (&mut self.counts, &m.requests);
        add(&mut c.direct, r.direct);
        add(&mut c.merged, r.merged);
        add(&mut c.failure_window, r.failure_window);
        add(&mut c.already_loaded, r.already_loaded);
        add(&mut c.as_dependency, r.as_dependency);
        self.requests = answered(c);
        for load in &m.loads {
            add(&mut self.load_us, load.call_us());
            add(&mut self.wait_us, load.wait_us());
            add(&mut self.loads, 1);
            add(&mut self.load_calls, u64::from(load.method != Method::None));
            if self.last_end_us.is_none_or(|end| load.end_us >= end) {
                self.last_end_us = Some(load.end_us);
                self.outcome = Some(load.outcome);
                self.errno_name = load.errno_name.clone();
                self.error = load.error.clone();
            }
        }
        if self.outcome.is_none() && c.already_loaded > 0 {
            self.outcome = Some(Outcome::AlreadyLoaded);
        }
        for name in &m.dependency_of {
            if !self.dependency_of.contains(name) {
                self.dependency_of.push(name.clone());
            }
        }
    }
}

/// A daemon instance as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// File name within the record directory.
    pub file: String,
    /// The daemon's pid.
    pub pid: u32,
    /// The phase it served.
    pub phase: Phase,
    /// When it started.
    pub started_us: u64,
    /// When its file was last written.
    pub updated_us: u64,
    /// When it stopped (`null` while running, or if it died without a word).
    pub stopped_us: Option<u64>,
    /// Modules it recorded.
    pub modules: u64,
}

/// `modbroker blame`'s report; its JSON form is documented in `docs/blame-json.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blame {
    /// [`BLAME_FORMAT`].
    pub format: u32,
    /// `"CLOCK_MONOTONIC"`: the clock of every `*_us` field.
    pub clock: String,
    /// The record directory read.
    pub dir: String,
    /// The instances, oldest first.
    pub instances: Vec<InstanceInfo>,
    /// Files skipped.
    pub skipped: Vec<Skipped>,
    /// The whole boot.
    pub boot: Summary,
    /// Each phase that has an instance.
    pub phases: BTreeMap<Phase, Summary>,
    /// One line per module and phase, longest load first (then longest wait).
    pub modules: Vec<ModuleLine>,
}

impl Blame {
    /// The merged view of `record`.
    pub fn new(record: &BootRecord) -> Self {
        let mut boot = Summary::default();
        let mut boot_names = Default::default();
        let mut phases = BTreeMap::<Phase, (Summary, _)>::new();
        let mut lines = BTreeMap::<(Phase, &str), ModuleLine>::new();
        for Instance { record: r, .. } in &record.instances {
            boot.add(r, &mut boot_names);
            let (summary, names) = phases.entry(r.phase).or_default();
            summary.add(r, names);
            for m in &r.modules {
                lines
                    .entry((r.phase, &m.module))
                    .or_insert_with(|| ModuleLine::new(r.phase, m))
                    .add(m);
            }
        }
        let mut modules: Vec<ModuleLine> = lines.into_values().collect();
        modules.sort_by(|a, b| {
            (b.load_us, b.wait_us)
                .cmp(&(a.load_us, a.wait_us))
                .then((a.first_request_us, a.phase).cmp(&(b.first_request_us, b.phase)))
                .then_with(|| a.module.cmp(&b.module))
        });
        Blame {
            format: BLAME_FORMAT,
            clock: "CLOCK_MONOTONIC".to_string(),
            dir: record.dir.display().to_string(),
            instances: record
                .instances
                .iter()
                .map(|i| InstanceInfo {
                    file: i.file.clone(),
                    pid: i.record.pid,
                    phase: i.record.phase,
                    started_us: i.record.started_us,
                    updated_us: i.record.updated_us,
                    stopped_us: i.record.stopped_us,
                    modules: i.record.modules.len() as u64,
                })
                .collect(),
            skipped: record.skipped.clone(),
            boot,
            phases: phases.into_iter().map(|(p, (s, _))| (p, s)).collect(),
            modules,
        }
    }
}

/// A duration as `systemd-analyze` prints one: `1.234s`, `12.3ms`, `85us`.
pub fn format_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.3}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Loaded => "loaded",
        Outcome::AlreadyLoaded => "already-loaded",
        Outcome::Builtin => "builtin",
        Outcome::Failed => "failed",
    }
}

/// Who asked: `udev pci /devices/...`, `kernel autoload`, `uid 0 (modprobe)`, `dependency of X`.
pub fn requester_text(requester: &Requester) -> String {
    match requester {
        Requester::Udev { subsystem, devpath } => {
            let mut text = "udev".to_string();
            for part in [subsystem, devpath].into_iter().flatten() {
                text.push(' ');
                text.push_str(part);
            }
            text
        }
        Requester::Kernel => "kernel autoload".to_string(),
        Requester::Cli { uid, comm } => match comm {
            Some(comm) => format!("uid {uid} ({comm})"),
            None => format!("uid {uid}"),
        },
        Requester::Dependency { of } => format!("dependency of {of}"),
    }
}

/// A line's outcome: `loaded`, `failed ENODEV`, `-` when unknown.
fn line_outcome(line: &ModuleLine) -> String {
    match (line.outcome, &line.errno_name) {
        (Some(Outcome::Failed), Some(errno)) => format!("failed {errno}"),
        (Some(outcome), _) => outcome_name(outcome).to_string(),
        (None, _) => "-".to_string(),
    }
}

fn summary_text(s: &Summary) -> String {
    let t = &s.totals;
    let mut text = format!(
        "{} requests ({} load targets), {} load calls, {} duplicate loads avoided, {} answered from sysfs, {} failed",
        t.requests, t.targets, t.load_calls, s.duplicate_loads_avoided, t.already_loaded, t.failed_loads
    );
    if !s.failures_by_errno.is_empty() {
        let errnos: Vec<String> = s
            .failures_by_errno
            .iter()
            .map(|(errno, n)| format!("{errno} {n}"))
            .collect();
        let _ = write!(text, " ({})", errnos.join(", "));
    }
    if let (Some(first), Some(last), Some(span)) =
        (s.first_request_us, s.last_load_end_us, s.span_us)
    {
        let _ = write!(
            text,
            "; first request at {} to last load end at {} ({})",
            format_us(first),
            format_us(last),
            format_us(span)
        );
    }
    text
}

/// `modbroker blame`'s text: the totals, then one line per module and phase, longest first.
/// Control characters (from a uevent's `DEVPATH`, a process's `comm`, an error message) are
/// shown escaped, never sent to the terminal.
pub fn blame_text(blame: &Blame) -> String {
    escape_control_chars(&blame_lines(blame))
}

/// `text` with every control character but the newline written as `\xNN` (`\u{NN}` above
/// U+007F), so that printing it cannot move the cursor, retitle the terminal or hide lines.
pub fn escape_control_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn blame_lines(blame: &Blame) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Module loading in {} ({} daemon instance{}, {} modules):",
        blame.dir,
        blame.instances.len(),
        if blame.instances.len() == 1 { "" } else { "s" },
        blame.boot.modules,
    );
    let _ = writeln!(out, "  boot:      {}", summary_text(&blame.boot));
    for (phase, summary) in &blame.phases {
        let _ = writeln!(
            out,
            "  {:<10} {}",
            format!("{}:", phase.as_str()),
            summary_text(summary)
        );
    }
    let b = &blame.boot;
    if b.dropped_any() {
        let _ = writeln!(
            out,
            "  detail dropped at the record's limits: {} requests for unrecorded modules, {} request arrival times, {} loads (all still count in the totals)",
            b.modules_dropped, b.arrivals_dropped, b.loads_dropped
        );
    }
    if !blame.skipped.is_empty() {
        let _ = writeln!(
            out,
            "  {} file(s) skipped (see the warnings)",
            blame.skipped.len()
        );
    }
    let _ = writeln!(out);
    if blame.modules.is_empty() {
        let _ = writeln!(out, "No module was asked for.");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>10} {:>10} {:>6} {:>6} {:>6}  {:<18} {:<9}  {:<24} FIRST REQUESTER",
        "LOAD", "WAIT", "REQS", "DIRECT", "MERGED", "OUTCOME", "PHASE", "MODULE"
    );
    for line in &blame.modules {
        let c = &line.counts;
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>6} {:>6} {:>6}  {:<18} {:<9}  {:<24} {}",
            format_us(line.load_us),
            format_us(line.wait_us),
            line.requests,
            c.direct,
            c.merged.saturating_add(c.failure_window),
            line_outcome(line),
            line.phase.as_str(),
            line.module,
            requester_text(&line.first_requester),
        );
    }
    out
}

// ---- plot ----

/// Height of one module's row, px.
const ROW_H: f64 = 16.0;
/// Height of a bar within its row, px.
const BAR_H: f64 = 10.0;
/// Font size, px (monospace, so a label's width is known: [`CHAR_W`] per character).
const FONT: f64 = 11.0;
const CHAR_W: f64 = 0.6 * FONT;
/// Left margin, px.
const LEFT: f64 = 24.0;
/// Where the first row starts, px (title, legend, axis labels and phase labels above it).
const TOP: f64 = 84.0;
/// Below the last row: the axis labels again.
const BOTTOM: f64 = 30.0;
/// Pixels per second aimed at: a boot's loading fits in about [`TARGET_AXIS_W`] px...
const TARGET_AXIS_W: f64 = 1200.0;
/// ...but no fewer than this many px per second (a long boot gets wider)...
const MIN_PX_PER_S: f64 = 25.0;
/// ...and no more (a short one gets narrower).
const MAX_PX_PER_S: f64 = 2000.0;
/// The axis never gets wider than this (renderers cap images at 32767 px); only a record
/// spanning more than 20 minutes goes below [`MIN_PX_PER_S`].
const MAX_AXIS_W: f64 = 30000.0;
/// Gridlines at least this far apart, px.
const MIN_TICK_PX: f64 = 80.0;
/// The narrowest picture, px (the legend's width).
const MIN_W: f64 = 820.0;

/// One row of the plot: a module name over the whole boot.
struct Row<'a> {
    module: &'a str,
    first_request_us: u64,
    arrivals: Vec<u64>,
    loads: Vec<&'a LoadRecord>,
    phases: Vec<Phase>,
    requests: u64,
    merged: u64,
    from_sysfs: u64,
    requester: &'a Requester,
}

impl Row<'_> {
    fn call_us(&self) -> u64 {
        self.loads
            .iter()
            .map(|l| l.call_us())
            .fold(0, u64::saturating_add)
    }

    fn wait_us(&self) -> u64 {
        self.loads
            .iter()
            .map(|l| l.wait_us())
            .fold(0, u64::saturating_add)
    }

    /// The last load (by end), if any.
    fn last_load(&self) -> Option<&LoadRecord> {
        self.loads.iter().copied().max_by_key(|l| l.end_us)
    }

    /// The latest time anything in the row happened.
    fn end_us(&self) -> u64 {
        let loads = self.loads.iter().map(|l| l.end_us.max(l.queued_us));
        let arrivals = self.arrivals.iter().copied();
        loads.chain(arrivals).fold(self.first_request_us, u64::max)
    }

    /// `nvme 812.3ms`, `acpi_cpufreq 3.1ms ENODEV`, `fat already loaded` (no call: live when
    /// its turn came, or every request answered from sysfs).
    fn label(&self) -> String {
        match self.last_load() {
            Some(last) => {
                let what = match (last.method, last.outcome) {
                    (Method::None, Outcome::Loaded) => "loaded".to_string(),
                    (Method::None, Outcome::AlreadyLoaded) => "already loaded".to_string(),
                    (Method::None, Outcome::Builtin) => "built in".to_string(),
                    (Method::None, Outcome::Failed) => "failed".to_string(),
                    _ => format_us(self.call_us()),
                };
                let mut label = format!("{} {what}", self.module);
                match (last.outcome, &last.errno_name) {
                    (Outcome::Failed, Some(errno)) => label = format!("{label} {errno}"),
                    (Outcome::Failed, None) if last.method != Method::None => {
                        label.push_str(" failed")
                    }
                    _ => {}
                }
                label
            }
            None if self.from_sysfs > 0 => format!("{} already loaded", self.module),
            None => self.module.to_string(),
        }
    }

    fn title(&self) -> String {
        let phases: Vec<&str> = self.phases.iter().map(|p| p.as_str()).collect();
        format!(
            "{} ({}): load {}, wait {}, {} requests ({} merged), first request at {} by {}",
            self.module,
            phases.join(", "),
            format_us(self.call_us()),
            format_us(self.wait_us()),
            self.requests,
            self.merged,
            format_us(self.first_request_us),
            requester_text(self.requester)
        )
    }
}

/// Text safe inside an XML element or attribute: the five special characters escaped, and
/// characters XML 1.0 cannot carry at all replaced by U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Gridline spacing in µs: the smallest of 1, 2, 5 × 10^k µs at least [`MIN_TICK_PX`] apart.
fn tick_step_us(px_per_s: f64) -> u64 {
    let mut magnitude = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step as f64 * px_per_s / 1e6 >= MIN_TICK_PX || magnitude >= 1_000_000_000_000_000_000
            {
                return step;
            }
        }
        magnitude *= 10;
    }
}

fn tick_label(t_us: u64, step_us: u64) -> String {
    let digits = match step_us {
        s if s >= 1_000_000 => 0,
        s if s >= 100_000 => 1,
        s if s >= 10_000 => 2,
        _ => 3,
    };
    format!("{:.*}s", digits, t_us as f64 / 1e6)
}

/// The SVG timeline of `record`: one row per module name (ordered by first request), the
/// axis in seconds since boot (CLOCK_MONOTONIC 0), the initramfs as a shaded band and the
/// root phase's start as a line. Each row has its request arrivals (ticks), each load's wait
/// (light) and call (coloured by outcome), and the name with the call time right of the row's
/// last load (or, when that would overlap a later mark of the row, right of its last mark). Row
/// height and font are fixed: more modules make the picture taller.
pub fn plot_svg(record: &BootRecord) -> String {
    let mut by_name = BTreeMap::<&str, Row>::new();
    for Instance { record: r, .. } in &record.instances {
        for m in &r.modules {
            let row = by_name.entry(&m.module).or_insert_with(|| Row {
                module: &m.module,
                first_request_us: m.first_request_us,
                arrivals: Vec::new(),
                loads: Vec::new(),
                phases: Vec::new(),
                requests: 0,
                merged: 0,
                from_sysfs: 0,
                requester: &m.first_requester,
            });
            if m.first_request_us < row.first_request_us {
                row.first_request_us = m.first_request_us;
                row.requester = &m.first_requester;
            }
            row.arrivals.extend(&m.arrivals_us);
            row.loads.extend(&m.loads);
            if !row.phases.contains(&r.phase) {
                row.phases.push(r.phase);
            }
            let c = &m.requests;
            add(&mut row.requests, answered(c));
            add(&mut row.merged, c.merged.saturating_add(c.failure_window));
            add(&mut row.from_sysfs, c.already_loaded);
        }
    }
    let mut rows: Vec<Row> = by_name.into_values().collect();
    rows.sort_by(|a, b| (a.first_request_us, a.module).cmp(&(b.first_request_us, b.module)));

    // Phases: the initramfs from its first instance's start to its last one's end; the root
    // phase's start.
    let initramfs = record
        .instances
        .iter()
        .filter(|i| i.record.phase == Phase::Initramfs)
        .map(|i| {
            let r = &i.record;
            (
                r.started_us,
                r.stopped_us.unwrap_or(r.updated_us).max(r.started_us),
            )
        })
        .reduce(|(s1, e1), (s2, e2)| (s1.min(s2), e1.max(e2)));
    let root_start = record
        .instances
        .iter()
        .filter(|i| i.record.phase == Phase::Root)
        .map(|i| i.record.started_us)
        .min();

    let end_us = rows
        .iter()
        .map(Row::end_us)
        .chain(initramfs.map(|(_, end)| end))
        .chain(root_start)
        .max()
        .unwrap_or(0)
        .max(1);
    let end_s = end_us as f64 / 1e6;
    let mut px_per_s = (TARGET_AXIS_W / end_s).clamp(MIN_PX_PER_S, MAX_PX_PER_S);
    if end_s * px_per_s > MAX_AXIS_W {
        px_per_s = MAX_AXIS_W / end_s;
    }
    let step_us = tick_step_us(px_per_s);
    let axis_end_us = end_us.div_ceil(step_us).saturating_mul(step_us);
    let x = |t_us: u64| LEFT + t_us as f64 * px_per_s / 1e6;

    let labels: Vec<String> = rows.iter().map(Row::label).collect();
    // A row's label goes right of its last load, as systemd-analyze puts a unit's name right of
    // its bar, when it fits there before the row's next mark (a later request answered from
    // sysfs, typically in the root phase); else right of the row's last mark. Rows never share
    // a line, so a label can only collide with marks of its own row.
    let label_x = |row: &Row, label: &str| {
        let after_last = x(row.end_us()) + 4.0;
        let Some(load_end) = row.loads.iter().map(|l| l.end_us).max() else {
            return after_last;
        };
        let at = x(load_end) + 4.0;
        // Marks left of where the label starts (requests that came as the load ended) are not
        // in its way.
        let next_mark = row.arrivals.iter().filter(|&&a| x(a) >= at - 1.0).min();
        match next_mark {
            Some(&next) if x(next) < at + label.chars().count() as f64 * CHAR_W + 4.0 => after_last,
            _ => at,
        }
    };
    let width = rows
        .iter()
        .zip(&labels)
        .map(|(row, label)| label_x(row, label) + label.chars().count() as f64 * CHAR_W)
        .fold(x(axis_end_us), f64::max)
        .max(MIN_W)
        + LEFT;
    let width = width.ceil();
    let rows_bottom = TOP + rows.len() as f64 * ROW_H;
    let height = (rows_bottom + BOTTOM).ceil();

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    s.push_str(concat!(
        "<style>\n",
        "text { font-family: monospace; font-size: 11px; fill: #222; }\n",
        "text.title { font-size: 13px; font-weight: bold; }\n",
        "text.axis { fill: #666; text-anchor: middle; }\n",
        "line.grid { stroke: #ddd; stroke-width: 1; }\n",
        "rect.stripe { fill: #f4f4f4; }\n",
        "rect.initramfs { fill: #e8e0f4; }\n",
        "line.phase { stroke: #7b4fb0; stroke-width: 1.5; stroke-dasharray: 4 2; }\n",
        "text.phase { fill: #7b4fb0; }\n",
        "path.arrival { stroke: #333; stroke-width: 1; fill: none; }\n",
        "rect.wait { fill: #fce7a6; }\n",
        "rect.loaded { fill: #2c7fb8; }\n",
        "rect.present { fill: #a0a0a0; }\n",
        "rect.failed { fill: #d7301f; }\n",
        "</style>\n",
        "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n",
    ));
    let blame = Blame::new(record);
    let _ = writeln!(
        s,
        r#"<text class="title" x="{LEFT}" y="16">{}</text>"#,
        xml_escape(&format!(
            "Module loading: {} modules, {} load calls, {} duplicate loads avoided, {} failed ({} daemon instances)",
            rows.len(),
            blame.boot.totals.load_calls,
            blame.boot.duplicate_loads_avoided,
            blame.boot.totals.failed_loads,
            record.instances.len()
        ))
    );
    legend(&mut s);

    // Phase band and line, under everything else.
    if let Some((start, end)) = initramfs {
        let _ = writeln!(
            s,
            r#"<rect class="initramfs" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
            x(start),
            TOP - 14.0,
            (x(end) - x(start)).max(1.0),
            rows_bottom - TOP + 14.0
        );
        let _ = writeln!(
            s,
            r#"<text class="phase" x="{:.1}" y="{:.1}">initramfs</text>"#,
            x(start) + 2.0,
            TOP - 4.0
        );
    }
    // Gridlines and axis labels, top and bottom.
    let mut t = 0;
    while t <= axis_end_us {
        let gx = x(t);
        let label = tick_label(t, step_us);
        let _ = writeln!(
            s,
            r#"<line class="grid" x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{rows_bottom:.1}"/><text class="axis" x="{gx:.1}" y="{:.1}">{label}</text><text class="axis" x="{gx:.1}" y="{:.1}">{label}</text>"#,
            TOP - 30.0,
            TOP - 34.0,
            rows_bottom + 16.0,
        );
        match t.checked_add(step_us) {
            Some(next) => t = next,
            None => break,
        }
    }
    if let Some(start) = root_start {
        let rx = x(start);
        let _ = writeln!(
            s,
            r#"<line class="phase" x1="{rx:.1}" y1="{:.1}" x2="{rx:.1}" y2="{rows_bottom:.1}"/><text class="phase" x="{:.1}" y="{:.1}">root</text>"#,
            TOP - 14.0,
            rx + 3.0,
            TOP - 4.0
        );
    }

    for (i, (row, label)) in rows.iter().zip(&labels).enumerate() {
        let top = TOP + i as f64 * ROW_H;
        let bar_y = top + (ROW_H - BAR_H) / 2.0;
        let _ = writeln!(s, r#"<g class="row" id="row-{i}">"#);
        let _ = writeln!(s, "<title>{}</title>", xml_escape(&row.title()));
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                r#"<rect class="stripe" x="0" y="{top:.1}" width="{width}" height="{ROW_H}" opacity="0.6"/>"#
            );
        }
        for load in &row.loads {
            let call_start = load.call_start_us.unwrap_or(load.end_us);
            let (q, c) = (x(load.queued_us), x(call_start.max(load.queued_us)));
            if c - q >= 0.1 {
                let _ = writeln!(
                    s,
                    r#"<rect class="wait" x="{q:.1}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}"/>"#,
                    c - q
                );
            }
            let class = match load.outcome {
                Outcome::Loaded => "loaded",
                Outcome::AlreadyLoaded | Outcome::Builtin => "present",
                Outcome::Failed => "failed",
            };
            // A load without a call is a 2 px mark at its end; a call is at least 1 px wide.
            let (start, min_w) = match load.call_start_us {
                Some(start) => (start, 1.0),
                None => (load.end_us, 2.0),
            };
            let _ = writeln!(
                s,
                r#"<rect class="{class}" x="{:.1}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}"/>"#,
                x(start),
                (x(load.end_us) - x(start)).max(min_w)
            );
        }
        if !row.arrivals.is_empty() {
            let mut arrivals = row.arrivals.clone();
            arrivals.sort_unstable();
            arrivals.dedup();
            let mut d = String::new();
            for a in arrivals {
                let _ = write!(d, "M{:.1} {:.1}v{} ", x(a), top + 1.0, ROW_H - 2.0);
            }
            let _ = writeln!(s, r#"<path class="arrival" d="{}"/>"#, d.trim_end());
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            label_x(row, label),
            top + ROW_H - 4.0,
            xml_escape(label)
        );
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// The legend, below the title.
fn legend(s: &mut String) {
    let y = 26.0;
    let mut x = LEFT;
    for (class, text) in [
        ("arrival", "request arrival"),
        ("wait", "waiting (dependencies, load slot)"),
        ("loaded", "load call: loaded"),
        ("present", "already loaded / built in"),
        ("failed", "failed"),
    ] {
        if class == "arrival" {
            let _ = writeln!(
                s,
                r#"<path class="arrival" d="M{:.1} {y:.1}v{BAR_H}"/>"#,
                x + 5.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="12" height="{BAR_H}"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{text}</text>"#,
            x + 16.0,
            y + BAR_H - 1.0
        );
        x += 16.0 + text.len() as f64 * CHAR_W + 16.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_systemd_analyze_prints_them() {
        assert_eq!(format_us(85), "85us");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(format_us(1_234_567), "1.235s");
    }

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(
            xml_escape("a<b>&\"c'\u{1}\u{FFFF}\tz"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\u{FFFD}\tz"
        );
    }

    /// Gridlines at least 80 px apart, at 1, 2 or 5 times a power of ten.
    #[test]
    fn gridlines_are_round_and_apart() {
        assert_eq!(tick_step_us(MAX_PX_PER_S), 50_000);
        assert_eq!(tick_step_us(333.0), 500_000);
        assert_eq!(tick_step_us(MIN_PX_PER_S), 5_000_000);
        assert_eq!(tick_label(1_500_000, 500_000), "1.5s");
        assert_eq!(tick_label(20_000_000, 5_000_000), "20s");
        assert_eq!(tick_label(50_000, 50_000), "0.05s");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_control_chars("a\x1b]0;owned\x07b\n\u{9b}2Jc\td"),
            "a\\x1b]0;owned\\x07b\n\\u{9b}2Jc\\x09d"
        );
        let udev = Requester::Udev {
            subsystem: Some("pci".into()),
            devpath: Some("/devices/\x1b[2J".into()),
        };
        assert!(!escape_control_chars(&requester_text(&udev)).contains('\x1b'));
    }

    #[test]
    fn requesters_read_as_who_asked() {
        let udev = Requester::Udev {
            subsystem: Some("pci".into()),
            devpath: Some("/devices/pci0000:00/0000:00:1f.2".into()),
        };
        assert_eq!(
            requester_text(&udev),
            "udev pci /devices/pci0000:00/0000:00:1f.2"
        );
        let bare = Requester::Udev {
            subsystem: None,
            devpath: None,
        };
        assert_eq!(requester_text(&bare), "udev");
        assert_eq!(requester_text(&Requester::Kernel), "kernel autoload");
        let cli = Requester::Cli {
            uid: 0,
            comm: Some("modprobe".into()),
        };
        assert_eq!(requester_text(&cli), "uid 0 (modprobe)");
        let dep = Requester::Dependency { of: "vfat".into() };
        assert_eq!(requester_text(&dep), "dependency of vfat");
    }
}
