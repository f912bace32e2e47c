//! `modbroker blame` and `modbroker plot` on synthetic records: an initramfs instance and a root
//! instance written as the daemon writes them, one JSON file each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use modbroker::blame::{blame_text, Blame};
use modbroker::broker::{Broker, BrokerSettings};
use modbroker::model::OutcomeKind;
use modbroker::model::{Method, Requester};
use modbroker::plot::plot_svg;
use modbroker::protocol::Request;
use modbroker::record::{
    DaemonRecord, LoadRecord, ModuleRecord, Phase, RequestCounts, Totals, FORMAT_VERSION,
    MAX_ARRIVALS,
};
use modbroker::recorder::{self, Recorder};
use modbroker::report::{self, ReportError};
use modbroker::service::Service;
use modbroker::testing::{node, FakeKernel, FixedResolver};
use nix::errno::Errno;

/// A small deterministic generator (64-bit LCG), so that records vary but never between runs.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn load(
    queued: u64,
    wait: u64,
    call: Option<u64>,
    outcome: OutcomeKind,
    errno: Option<&str>,
) -> LoadRecord {
    let call_start = call.map(|_| queued + wait);
    LoadRecord {
        queued_us: queued,
        deps_done_us: queued + wait / 2,
        call_start_us: call_start,
        end_us: queued + wait + call.unwrap_or(0),
        method: if call.is_some() {
            Method::Finit
        } else {
            Method::None
        },
        outcome,
        errno: errno.map(|name| match name {
            "ENODEV" => 19,
            "EOPNOTSUPP" => 95,
            _ => 22,
        }),
        errno_name: errno.map(str::to_string),
        error: errno.map(|name| format!("init failed: {name}")),
        answered: 1,
    }
}

/// One instance with `count` modules, the first at `start + 50 ms`; totals consistent with
/// its modules (and a few status requests on top).
fn instance(rng: &mut Lcg, phase: Phase, pid: u32, start: u64, names: &[String]) -> DaemonRecord {
    let mut totals = Totals::default();
    let mut modules = Vec::new();
    let mut t = start + 50_000;
    for (i, name) in names.iter().enumerate() {
        t += 1_000 + rng.below(20_000);
        let requests = 1 + rng.below(if i % 7 == 0 { 40 } else { 3 });
        let arrivals: Vec<u64> = (0..requests.min(MAX_ARRIVALS as u64))
            .map(|k| t + k * (100 + rng.below(3_000)))
            .collect();
        let kind = rng.below(10);
        let wait = rng.below(30_000);
        let call = 200 + rng.below(400_000);
        let (loads, counts) = match kind {
            // Already loaded: no load task at all, answered from sysfs.
            0 => (
                vec![],
                RequestCounts {
                    already_loaded: requests,
                    ..Default::default()
                },
            ),
            // Failed with ENODEV or EOPNOTSUPP; later requests answered by the failure window.
            1 | 2 => {
                let errno = if kind == 1 { "ENODEV" } else { "EOPNOTSUPP" };
                (
                    vec![load(t, wait, Some(call), OutcomeKind::Failed, Some(errno))],
                    RequestCounts {
                        direct: 1,
                        failure_window: requests - 1,
                        ..Default::default()
                    },
                )
            }
            // Settled when its turn came: no call.
            3 => (
                vec![load(t, wait, None, OutcomeKind::AlreadyLoaded, None)],
                RequestCounts {
                    direct: 1,
                    merged: requests - 1,
                    ..Default::default()
                },
            ),
            _ => (
                vec![load(t, wait, Some(call), OutcomeKind::Loaded, None)],
                RequestCounts {
                    direct: 1,
                    merged: requests - 1,
                    as_dependency: u64::from(i % 5 == 1),
                    ..Default::default()
                },
            ),
        };
        totals.targets += requests;
        totals.requests += requests;
        totals.merged += counts.merged + counts.failure_window;
        totals.already_loaded += counts.already_loaded;
        for l in &loads {
            if l.method != Method::None {
                totals.load_calls += 1;
                totals.failed_loads += u64::from(l.outcome == OutcomeKind::Failed);
            }
        }
        let first_requester = match i % 4 {
            0 => Requester::Udev {
                subsystem: Some("pci".into()),
                devpath: Some(format!("/devices/pci0000:00/0000:00:{i:02x}.0")),
            },
            1 => Requester::Dependency {
                of: names[i - 1].clone(),
            },
            2 => Requester::Kernel,
            _ => Requester::Cli {
                uid: 0,
                comm: Some("modprobe".into()),
            },
        };
        modules.push(ModuleRecord {
            module: name.clone(),
            first_request_us: t,
            arrivals_dropped: requests - arrivals.len() as u64,
            arrivals_us: arrivals,
            requests: counts,
            dependency_of: match &first_requester {
                Requester::Dependency { of } => vec![of.clone()],
                _ => vec![],
            },
            first_requester,
            loads,
            loads_dropped: 0,
        });
    }
    totals.requests += 3; // status requests
    let end = t + 1_000_000;
    DaemonRecord {
        version: FORMAT_VERSION,
        clock: "CLOCK_MONOTONIC".into(),
        pid,
        phase,
        started_us: start,
        updated_us: end,
        stopped_us: (phase == Phase::Initramfs).then_some(end),
        totals,
        modules,
        modules_dropped: 0,
    }
}

/// A boot with `count` distinct module names: two fifths in the initramfs, the rest in the
/// root, and a few initramfs modules asked for again in the root (the same name in both
/// phases). One name needs XML escaping. Returns the instances, initramfs first.
fn boot(count: usize, seed: u64) -> Vec<DaemonRecord> {
    let mut rng = Lcg(seed);
    let mut names: Vec<String> = (0..count).map(|i| format!("mod_{i:04}")).collect();
    names[count / 2] = "odd<&>\"'\u{1}name".to_string();
    let split = count * 2 / 5;
    let initramfs = instance(&mut rng, Phase::Initramfs, 180, 900_000, &names[..split]);
    let mut root_names: Vec<String> = names[..3.min(split)].to_vec();
    root_names.extend_from_slice(&names[split..]);
    let root_start = initramfs.stopped_us.unwrap() + 400_000;
    let root = instance(&mut rng, Phase::Root, 402, root_start, &root_names);
    vec![initramfs, root]
}

fn write_dir(records: &[DaemonRecord]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for r in records {
        let path = dir.path().join(format!("{}-{}.json", r.started_us, r.pid));
        std::fs::write(path, serde_json::to_vec(r).unwrap()).unwrap();
    }
    dir
}

fn modbroker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .args(args)
        .output()
        .unwrap()
}

fn sum(records: &[&DaemonRecord]) -> Totals {
    let mut t = Totals::default();
    for r in records {
        t.requests += r.totals.requests;
        t.targets += r.totals.targets;
        t.merged += r.totals.merged;
        t.already_loaded += r.totals.already_loaded;
        t.load_calls += r.totals.load_calls;
        t.failed_loads += r.totals.failed_loads;
    }
    t
}

#[test]
fn blame_totals_are_the_sums_of_the_instances_totals() {
    let records = boot(60, 1);
    let dir = write_dir(&records);
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    assert_eq!(blame.boot.totals, sum(&records.iter().collect::<Vec<_>>()));
    assert_eq!(blame.boot.duplicate_loads_avoided, blame.boot.totals.merged);
    assert_eq!(blame.boot.instances, 2);
    assert_eq!(blame.phases.len(), 2);
    for r in &records {
        let phase = &blame.phases[&r.phase];
        assert_eq!(phase.totals, r.totals);
        assert_eq!(phase.instances, 1);
        assert_eq!(phase.modules, r.modules.len() as u64);
    }
    // 60 names, 3 of them in both phases: 63 lines, 60 distinct modules.
    assert_eq!(blame.boot.modules, 60);
    assert_eq!(blame.modules.len(), 63);
    let first = records[0].modules[0].first_request_us;
    assert_eq!(blame.boot.first_request_us, Some(first));
    let last = records
        .iter()
        .flat_map(|r| &r.modules)
        .flat_map(|m| &m.loads)
        .map(|l| l.end_us)
        .max();
    assert_eq!(blame.boot.last_load_end_us, last);
    assert_eq!(blame.boot.span_us, Some(last.unwrap() - first));
    // The request counts of every line add up to the module requests the totals count.
    let merged: u64 = blame
        .modules
        .iter()
        .map(|l| l.counts.merged + l.counts.failure_window)
        .sum();
    assert_eq!(merged, blame.boot.totals.merged);
    let answered: u64 = blame.modules.iter().map(|l| l.requests).sum();
    assert_eq!(answered, blame.boot.totals.targets);
}

#[test]
fn blame_lists_longest_load_first_then_longest_wait() {
    let records = boot(60, 2);
    let dir = write_dir(&records);
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    let keys: Vec<(u64, u64)> = blame
        .modules
        .iter()
        .map(|l| (l.load_us, l.wait_us))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted);
    let longest = records
        .iter()
        .flat_map(|r| &r.modules)
        .max_by_key(|m| m.loads.iter().map(LoadRecord::call_us).sum::<u64>())
        .unwrap();
    assert_eq!(blame.modules[0].module, longest.module);
    let text = blame_text(&blame);
    let first_line = text
        .lines()
        .find(|l| l.contains("FIRST REQUESTER"))
        .unwrap();
    let next: Vec<&str> = text.lines().skip_while(|l| *l != first_line).collect();
    assert!(next[1].contains(&longest.module), "{text}");
}

#[test]
fn failures_are_counted_by_errno_name() {
    let mut records = boot(60, 3);
    // Failed load calls as the generator made them, by errno name.
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    let all_loads = |records: &[DaemonRecord]| -> Vec<LoadRecord> {
        let modules = records.iter().flat_map(|r| &r.modules);
        modules.flat_map(|m| m.loads.clone()).collect()
    };
    for l in all_loads(&records[..]) {
        if l.outcome == OutcomeKind::Failed {
            *expected.entry(l.errno_name.unwrap()).or_default() += 1;
        }
    }
    assert!(
        expected["ENODEV"] > 0 && expected["EOPNOTSUPP"] > 0,
        "{expected:?}"
    );
    // A failure without an errno name, and one without any errno, replacing a module's loads;
    // a dependency's failure (no call of its own: not a failed load call) another's.
    let m = &mut records[1].modules[6];
    for l in &m.loads {
        if l.outcome == OutcomeKind::Failed {
            *expected.get_mut(l.errno_name.as_deref().unwrap()).unwrap() -= 1;
        }
    }
    let mut failed = load(m.first_request_us, 10, Some(5), OutcomeKind::Failed, None);
    failed.errno = Some(5);
    failed.method = Method::Install;
    let mut other = failed.clone();
    other.errno = None;
    m.loads = vec![failed, other];
    expected.insert("errno 5".into(), 1);
    expected.insert("other".into(), 1);
    let m = &mut records[1].modules[5];
    for l in &m.loads {
        if l.outcome == OutcomeKind::Failed {
            *expected.get_mut(l.errno_name.as_deref().unwrap()).unwrap() -= 1;
        }
    }
    let dependency_failed = load(
        m.first_request_us,
        10,
        None,
        OutcomeKind::Failed,
        Some("ENODEV"),
    );
    m.loads = vec![dependency_failed];
    let dependency_failed = m.module.clone();
    expected.retain(|_, n| *n > 0);

    let dir = write_dir(&records);
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    assert_eq!(blame.boot.failures_by_errno, expected);
    let line = blame
        .modules
        .iter()
        .find(|l| l.module == dependency_failed)
        .unwrap();
    assert_eq!(line.outcome, Some(OutcomeKind::Failed));
    assert_eq!((line.load_calls, line.loads), (0, 1));
    let text = blame_text(&blame);
    assert!(
        text.contains(&format!("ENODEV {}", expected["ENODEV"])),
        "{text}"
    );
    assert!(text.contains("errno 5 1, other 1"), "{text}");
    assert!(text.contains("failed ENODEV"), "{text}");
    // The plot's labels: the errno, or "failed" for a failed call without one.
    let svg = plot_svg(&report::read_dir(dir.path()).unwrap());
    assert!(
        svg.contains(&format!(">{dependency_failed} failed ENODEV<")),
        "{svg}"
    );
    let install = &records[1].modules[6].module;
    assert!(svg.contains(&format!(">{install} 10us failed<")), "{svg}");
}

#[test]
fn blame_json_round_trips_and_is_what_the_cli_prints() {
    let records = boot(60, 4);
    let dir = write_dir(&records);
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    let json = serde_json::to_string(&blame).unwrap();
    assert_eq!(serde_json::from_str::<Blame>(&json).unwrap(), blame);

    let out = modbroker(&["blame", "--json", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let printed: Blame = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, blame);
    // The documented layout: top-level keys and phase keys by name.
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "format",
        "clock",
        "dir",
        "instances",
        "skipped",
        "boot",
        "phases",
        "modules",
    ] {
        assert!(value.get(key).is_some(), "{key} missing");
    }
    assert!(value["phases"]["initramfs"]["totals"]["load_calls"].is_u64());
    assert!(value["phases"]["root"]["duplicate_loads_avoided"].is_u64());
    assert!(value["modules"][0]["phase"].is_string());

    let out = modbroker(&["blame", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, blame_text(&blame));
    assert!(
        text.contains("initramfs:") && text.contains("root:"),
        "{text}"
    );
    assert!(
        text.contains("udev pci /devices/pci0000:00/0000:00:00.0"),
        "{text}"
    );
    assert!(
        text.contains("kernel autoload") && text.contains("uid 0 (modprobe)"),
        "{text}"
    );
    assert!(text.contains("dependency of mod_0000"), "{text}");
}

#[test]
fn dropped_detail_is_mentioned() {
    let mut records = boot(60, 5);
    for m in records.iter_mut().flat_map(|r| &mut r.modules) {
        m.arrivals_dropped = 0;
    }
    let dir = write_dir(&records);
    let text = blame_text(&Blame::new(&report::read_dir(dir.path()).unwrap()));
    assert!(!text.contains("detail dropped"), "{text}");
    records[0].modules_dropped = 7;
    records[1].modules[2].arrivals_dropped = 3;
    let dir = write_dir(&records);
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    assert_eq!(blame.phases[&Phase::Root].arrivals_dropped, 3);
    let text = blame_text(&blame);
    assert!(
        text.contains(
            "detail dropped at the record's limits: 7 requests for unrecorded modules, 3 request arrival times, 0 loads"
        ),
        "{text}"
    );
}

fn rsvg_convert(svg: &Path, png: &Path) {
    let out = Command::new("rsvg-convert")
        .arg("--output")
        .arg(png)
        .arg(svg)
        .output()
        .unwrap_or_else(|err| {
            panic!("rsvg-convert: {err}: install the Debian package librsvg2-bin (tools/install-deps.sh)")
        });
    assert!(
        out.status.success(),
        "rsvg-convert {}: {}",
        svg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &Path) -> (u32, u32) {
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// The value of `name="..."` in the root `<svg>` element.
fn svg_attr(svg: &str, name: &str) -> f64 {
    let root = &svg[svg.find("<svg").unwrap()..];
    let at = root.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    root[at..at + root[at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn plot_renders_60_and_600_modules_one_row_each() {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-plots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut heights = Vec::new();
    for count in [60, 600] {
        let records = boot(count, 6);
        // Kept under target/tmp for a look: the record, its plot and the PNG.
        let dir = out_dir.join(format!("record-{count}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        for r in &records {
            let path = dir.join(format!("{}-{}.json", r.started_us, r.pid));
            std::fs::write(path, serde_json::to_vec(r).unwrap()).unwrap();
        }
        let out = modbroker(&["plot", "--dir", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let svg = String::from_utf8(out.stdout).unwrap();
        assert_eq!(svg.matches(r#"<g class="row""#).count(), count);
        assert!(svg.contains("odd&lt;&amp;&gt;&quot;&apos;\u{FFFD}name"));
        assert!(svg.contains(">initramfs</text>") && svg.contains(">root</text>"));
        let svg_path = out_dir.join(format!("plot-{count}.svg"));
        let png_path = out_dir.join(format!("plot-{count}.png"));
        std::fs::write(&svg_path, &svg).unwrap();
        rsvg_convert(&svg_path, &png_path);
        let (width, height) = png_size(&png_path);
        assert_eq!(f64::from(width), svg_attr(&svg, "width"), "{count}");
        assert_eq!(f64::from(height), svg_attr(&svg, "height"), "{count}");
        assert!(width >= 800, "{count}: {width} px wide");
        heights.push(height);
    }
    // Fixed row height: the picture grows with the rows, by 540 rows' worth.
    assert!(heights[1] > heights[0] + 540 * 15, "{heights:?}");
}

#[test]
fn plot_is_deterministic() {
    let records = boot(60, 7);
    let first = write_dir(&records);
    // The same record in reverse file order and another directory.
    let second = tempfile::tempdir().unwrap();
    for (i, r) in records.iter().rev().enumerate() {
        let path = second.path().join(format!("{i}.json"));
        std::fs::write(path, serde_json::to_vec(r).unwrap()).unwrap();
    }
    let plot = |dir: &Path| plot_svg(&report::read_dir(dir).unwrap());
    let a = plot(first.path());
    assert_eq!(a, plot(first.path()));
    assert_eq!(a, plot(second.path()));
    let cli = |dir: &Path| modbroker(&["plot", "--dir", dir.to_str().unwrap()]).stdout;
    assert_eq!(cli(first.path()), cli(first.path()));
    assert_eq!(cli(first.path()), a.as_bytes());
}

#[test]
fn bad_files_are_skipped_with_a_warning() {
    let records = boot(60, 8);
    let dir = write_dir(&records);
    let whole = serde_json::to_string(&records[0]).unwrap();
    std::fs::write(
        dir.path().join("1-truncated.json"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    let mut newer = serde_json::to_value(&records[1]).unwrap();
    newer["version"] = 2.into();
    std::fs::write(dir.path().join("2-newer.json"), newer.to_string()).unwrap();
    std::fs::write(dir.path().join("3-other.json"), "[1, 2]").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a record").unwrap();

    let record = report::read_dir(dir.path()).unwrap();
    assert_eq!(record.instances.len(), 2);
    let reasons: Vec<(&str, &str)> = record
        .skipped
        .iter()
        .map(|s| (s.file.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].0 == "1-truncated.json" && reasons[0].1.starts_with("truncated"));
    assert_eq!(
        reasons[1],
        (
            "2-newer.json",
            "format version 2; this modbroker reads version 1"
        )
    );
    assert!(reasons[2].1.starts_with("not a record file"), "{reasons:?}");

    for args in [&["blame"][..], &["blame", "--json"], &["plot"]] {
        let mut args = args.to_vec();
        args.extend(["--dir", dir.path().to_str().unwrap()]);
        let out = modbroker(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 3, "{stderr}");
        assert!(
            stderr.contains("modbroker: warning: skipped ")
                && stderr.contains("2-newer.json: format version 2"),
            "{stderr}"
        );
    }
}

#[test]
fn no_record_is_a_clear_message_and_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("record");
    assert!(matches!(
        report::read_dir(&missing),
        Err(ReportError::NoRecord { .. })
    ));
    assert!(matches!(
        report::read_dir(dir.path()),
        Err(ReportError::Empty { .. })
    ));
    for args in [&["blame"][..], &["blame", "--json"], &["plot"]] {
        for (path, wanted) in [
            (&missing, "does not exist"),
            (&dir.path().to_path_buf(), "no usable instance file"),
        ] {
            let mut args = args.to_vec();
            args.extend(["--dir", path.to_str().unwrap()]);
            let out = modbroker(&args);
            assert_eq!(out.status.code(), Some(5), "{args:?}: {out:?}");
            assert!(out.stdout.is_empty());
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(
                stderr.contains(wanted) && stderr.lines().count() == 1,
                "{stderr}"
            );
        }
    }
    // Only bad files: the warnings, then the message.
    std::fs::write(dir.path().join("1.json"), "{").unwrap();
    let out = modbroker(&["blame", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("1.json: truncated") && stderr.contains("(1 skipped)"),
        "{stderr}"
    );
}

fn udev(target: &str, devpath: &str) -> Request {
    modbroker::testing::udev_request(target, "pci", devpath)
}

/// The daemon's own recorder, through the service and the fake kernel, in two phases, written
/// with its own writer: what blame and plot read is what the daemon writes.
#[tokio::test]
async fn the_daemons_files_are_what_blame_and_plot_read() {
    let kernel = FakeKernel::new();
    kernel.fail("kvm_intel", Errno::ENODEV);
    let resolver = || {
        FixedResolver::new()
            .with_module("vfat", node("vfat", vec![node("fat", vec![])]))
            .with_module("kvm_intel", node("kvm_intel", vec![]))
            .with_module("e1000", node("e1000", vec![]))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for (phase, targets) in [
        (
            Phase::Initramfs,
            &["vfat", "kvm_intel", "kvm_intel", "kvm_intel"][..],
        ),
        (Phase::Root, &["vfat", "e1000"]),
    ] {
        let recorder = Arc::new(Recorder::new(phase));
        let broker = Broker::with_recorder(kernel.clone(), BrokerSettings::default(), recorder);
        let service = Service::new(Arc::new(resolver()), broker);
        for target in targets {
            service
                .handle(udev(target, "/devices/pci0000:00/0000:00:02.0"))
                .await;
        }
        let broker = service.broker();
        let record = broker.recorder().snapshot(true);
        recorder::write_record(dir.path(), &broker.recorder().file_name(), &record).unwrap();
        written.push(record);
    }

    let boot = report::read_dir(dir.path()).unwrap();
    assert!(boot.skipped.is_empty(), "{:?}", boot.skipped);
    let blame = Blame::new(&boot);
    assert_eq!(blame.boot.totals, sum(&written.iter().collect::<Vec<_>>()));
    assert_eq!(blame.boot.totals.load_calls, 4); // fat, vfat, kvm_intel, e1000
    assert_eq!(blame.boot.duplicate_loads_avoided, 2); // kvm_intel's failure window
    let errnos: Vec<(&str, u64)> = blame
        .boot
        .failures_by_errno
        .iter()
        .map(|(e, n)| (e.as_str(), *n))
        .collect();
    assert_eq!(errnos, [("ENODEV", 1)]);
    let lines: Vec<(&str, Phase, Option<OutcomeKind>)> = blame
        .modules
        .iter()
        .filter(|l| l.load_calls == 0)
        .map(|l| (l.module.as_str(), l.phase, l.outcome))
        .collect();
    // vfat again in the root: answered from sysfs, no call.
    assert_eq!(
        lines,
        [("vfat", Phase::Root, Some(OutcomeKind::AlreadyLoaded))]
    );
    assert_eq!(blame.modules.len(), 5);
    let kvm = blame
        .modules
        .iter()
        .find(|l| l.module == "kvm_intel")
        .unwrap();
    assert_eq!((kvm.requests, kvm.counts.failure_window), (3, 2));
    assert_eq!(
        line_text(&blame, "kvm_intel").split_whitespace().nth(5),
        Some("failed")
    );

    let svg = plot_svg(&boot);
    assert_eq!(svg.matches(r#"<g class="row""#).count(), 4);
    let svg_path = dir.path().join("plot.svg");
    std::fs::write(&svg_path, &svg).unwrap();
    rsvg_convert(&svg_path, &dir.path().join("plot.png"));
}

/// Blame's text line for `module`.
fn line_text(blame: &Blame, module: &str) -> String {
    let text = blame_text(blame);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().any(|word| word == module));
    line.unwrap_or_else(|| panic!("no line for {module}: {text}"))
        .to_string()
}

/// A daemon that was asked for nothing: totals and no lines; a plot with no rows that renders.
#[test]
fn a_record_without_modules_is_reported_and_plotted() {
    let mut records = boot(10, 9);
    records[1].modules.clear();
    records[1].totals = Totals {
        requests: 2,
        ..Totals::default()
    };
    records.remove(0);
    let dir = write_dir(&records);
    let record = report::read_dir(dir.path()).unwrap();
    let blame = Blame::new(&record);
    assert_eq!(blame.boot.modules, 0);
    assert_eq!(
        (blame.boot.first_request_us, blame.boot.span_us),
        (None, None)
    );
    let text = blame_text(&blame);
    assert!(text.ends_with("\nNo module was asked for.\n"), "{text}");
    let svg = plot_svg(&record);
    assert_eq!(svg.matches(r#"<g class="row""#).count(), 0);
    let svg_path = dir.path().join("plot.svg");
    std::fs::write(&svg_path, &svg).unwrap();
    rsvg_convert(&svg_path, &dir.path().join("plot.png"));
}

/// Counts and times at the top of their range (a corrupt file) neither panic nor make a plot
/// without end: sums saturate, the axis keeps to its width.
#[test]
fn extreme_values_do_not_panic() {
    let mut records = boot(20, 10);
    for r in &mut records {
        r.totals.requests = u64::MAX;
        r.modules_dropped = u64::MAX;
        let m = &mut r.modules[1];
        m.requests.merged = u64::MAX;
        m.arrivals_us.push(u64::MAX);
        if let Some(load) = m.loads.first_mut() {
            load.end_us = u64::MAX;
        }
    }
    let dir = write_dir(&records);
    let record = report::read_dir(dir.path()).unwrap();
    let blame = Blame::new(&record);
    assert_eq!(blame.boot.totals.requests, u64::MAX);
    assert_eq!(blame.boot.modules_dropped, u64::MAX);
    blame_text(&blame);
    let svg = plot_svg(&record);
    let svg_path = dir.path().join("plot.svg");
    std::fs::write(&svg_path, &svg).unwrap();
    rsvg_convert(&svg_path, &dir.path().join("plot.png"));
    let (width, _) = png_size(&dir.path().join("plot.png"));
    assert!(width < 32_000, "{width}");
}

/// The `x` of the label and of the arrival ticks in row `row` of `svg`.
fn row_label_and_ticks(svg: &str, row: usize) -> (f64, Vec<f64>) {
    let start = svg
        .find(&format!(r#"<g class="row" id="row-{row}">"#))
        .unwrap();
    let group = &svg[start..start + svg[start..].find("</g>").unwrap()];
    let attr = |from: &str| -> f64 {
        let at = group.find(from).unwrap() + from.len();
        let end = at + group[at..].find(['"', ' ']).unwrap();
        group[at..end].parse().unwrap()
    };
    let ticks = group[group.find(r#"class="arrival" d=""#).unwrap()..]
        .split('M')
        .skip(1)
        .map(|m| m.split(' ').next().unwrap().parse().unwrap())
        .collect();
    (attr(r#"<text x=""#), ticks)
}

/// A label goes right of the module's load when it fits before the row's next mark (here a
/// request answered from sysfs in the root phase), else right of the row's last mark.
#[test]
fn labels_go_right_of_the_load_unless_a_later_mark_is_in_the_way() {
    let mut records = boot(10, 11);
    let root = &mut records[1];
    root.modules.truncate(2);
    for (m, later) in root.modules.iter_mut().zip([3_000_000, 20_000]) {
        let load = load(
            m.first_request_us,
            1_000,
            Some(100_000),
            OutcomeKind::Loaded,
            None,
        );
        m.arrivals_us = vec![m.first_request_us, load.end_us + later];
        m.loads = vec![load];
    }
    records.remove(0);
    let record = report::read_dir(write_dir(&records).path()).unwrap();
    let svg = plot_svg(&record);
    let (label, ticks) = row_label_and_ticks(&svg, 0);
    assert!(ticks[0] < label && label < ticks[1], "{label} {ticks:?}");
    let (label, ticks) = row_label_and_ticks(&svg, 1);
    assert!(ticks[1] < label, "{label} {ticks:?}");
}

/// Every key blame's JSON has is documented in docs/blame-json.md.
#[test]
fn every_json_field_is_documented() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/blame-json.md"))
        .unwrap();
    let mut records = boot(60, 12);
    records[0].modules_dropped = 1;
    let dir = write_dir(&records);
    std::fs::write(dir.path().join("0-bad.json"), "{").unwrap();
    let blame = Blame::new(&report::read_dir(dir.path()).unwrap());
    let value = serde_json::to_value(&blame).unwrap();
    // Keys that are data, not fields: phase names and errno names.
    fn keys(value: &serde_json::Value, data_keys: bool, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if !data_keys {
                        out.push(key.clone());
                    }
                    keys(v, key == "phases" || key == "failures_by_errno", out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, false, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    keys(&value, false, &mut found);
    found.sort();
    found.dedup();
    assert!(found.len() > 40, "{found:?}");
    let undocumented: Vec<&String> = found
        .iter()
        .filter(|key| {
            !docs.contains(&format!("`{key}`"))
                && !docs.contains(&format!(".{key}`"))
                && !docs.contains(&format!("\"{key}\""))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/blame-json.md: {undocumented:?}"
    );
}
