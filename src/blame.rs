//! `modbroker blame`: a boot's record ([`crate::report::BootRecord`]) merged into one view.
//!
//! [`Blame`] is the merged view: totals for the whole boot and per [`Phase`], and one
//! [`ModuleLine`] per module and phase, longest load first; [`blame_text`] prints it as a table
//! in the manner of `systemd-analyze blame`, and its JSON form is documented in
//! `docs/blame-json.md`. The plot ([`crate::plot`]) takes its totals from here, and its
//! labels' durations and requesters in the same words ([`format_us`], [`requester_text`]).
//!
//! Everything here is a pure function of the record: the same record gives the same bytes
//! (maps are ordered, ties are broken by name, no clock is read).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::OutcomeKind;
use crate::model::{Method, Requester};
use crate::record::{DaemonRecord, LoadRecord, Phase, RequestCounts, Totals};
use crate::report::{BootRecord, Instance, Skipped};

/// The version of the blame JSON layout (`docs/blame-json.md`).
pub const BLAME_FORMAT: u32 = 1;

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
                if load.outcome == OutcomeKind::Failed && load.method != Method::None {
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
pub(crate) fn add(to: &mut u64, n: u64) {
    *to = to.saturating_add(n);
}

/// Requests answered, whichever way: `counts`' first four fields.
pub(crate) fn answered(c: &RequestCounts) -> u64 {
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
    pub outcome: Option<OutcomeKind>,
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
            self.outcome = Some(OutcomeKind::AlreadyLoaded);
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
        (Some(OutcomeKind::Failed), Some(errno)) => format!("failed {errno}"),
        (Some(outcome), _) => outcome.as_str().to_string(),
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
