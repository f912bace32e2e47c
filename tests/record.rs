//! The boot's record (`modbroker blame`'s source) through the service and the fake kernel:
//! timestamps in order, counts that match the `status` counters and the fake kernel's calls, who
//! asked, a bounded record under a flood, and the files it is written to. Every wait is on a
//! real event (the fake kernel reporting a call), never a sleep.

use std::sync::Arc;

use futures_util::future::join_all;
use modbroker::broker::{Broker, BrokerSettings};
use modbroker::model::OutcomeKind;
use modbroker::model::{Method, Requester};
use modbroker::protocol::{decode_request, Request};
use modbroker::record::{
    self, DaemonRecord, ModuleRecord, Phase, MAX_ARRIVALS, MAX_INSTANCES, MAX_MODULES,
};
use modbroker::recorder::{self, Event, Recorder};
use modbroker::service::Service;
use modbroker::testing::{calls_started, node, udev_request, FakeKernel, FixedResolver};
use nix::errno::Errno;

fn service(kernel: &Arc<FakeKernel>, resolver: FixedResolver, phase: Phase) -> Service {
    let recorder = Arc::new(Recorder::new(phase));
    let broker = Broker::with_recorder(kernel.clone(), BrokerSettings::default(), recorder);
    Service::new(Arc::new(resolver), broker)
}

fn udev(target: &str, devpath: &str) -> Request {
    udev_request(target, "cpu", devpath)
}

fn snapshot(service: &Service) -> DaemonRecord {
    let broker = service.broker();
    broker.recorder().snapshot(false)
}

fn module<'a>(record: &'a DaemonRecord, name: &str) -> &'a ModuleRecord {
    record
        .modules
        .iter()
        .find(|m| m.module == name)
        .unwrap_or_else(|| panic!("{name} not in the record"))
}

/// A burst of 100 udev requests for one CPU driver with a dependency, held in the kernel until
/// all have arrived: one load each, every request accounted for, timestamps in order, and the
/// totals equal to the status counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_is_one_load_answering_every_request() {
    let kernel = FakeKernel::new();
    kernel.hold("acpi_cpufreq");
    let dep = node("freq_table", vec![]);
    let resolver =
        FixedResolver::new().with_module("cpu:type:x86", node("acpi_cpufreq", vec![dep]));
    let service = service(&kernel, resolver, Phase::Initramfs);
    let burst: Vec<_> = (0..100)
        .map(|cpu| {
            let service = service.clone();
            let request = udev("cpu:type:x86", &format!("/devices/system/cpu/cpu{cpu}"));
            tokio::spawn(async move { service.handle(request).await })
        })
        .collect();
    calls_started(&kernel, "acpi_cpufreq", 1).await;
    // Every request has arrived (and joined) before the load may end: poll the record, which
    // is the thing under test, through the fake kernel's hold.
    while module(&snapshot(&service), "acpi_cpufreq").requests.merged < 99 {
        tokio::task::yield_now().await;
    }
    kernel.release("acpi_cpufreq");
    join_all(burst).await;

    let record = snapshot(&service);
    assert_eq!(record.phase, Phase::Initramfs);
    let driver = module(&record, "acpi_cpufreq");
    assert_eq!(driver.requests.direct, 1);
    assert_eq!(driver.requests.merged, 99);
    assert_eq!(driver.requests.as_dependency, 0);
    assert_eq!(driver.arrivals_us.len(), MAX_ARRIVALS.min(100));
    assert_eq!(driver.arrivals_dropped, 100 - MAX_ARRIVALS.min(100) as u64);
    assert!(driver.arrivals_us.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(driver.first_request_us, driver.arrivals_us[0]);
    let Requester::Udev { subsystem, devpath } = &driver.first_requester else {
        panic!("first requester {:?}", driver.first_requester);
    };
    assert_eq!(subsystem.as_deref(), Some("cpu"));
    assert!(devpath
        .as_deref()
        .unwrap()
        .starts_with("/devices/system/cpu/cpu"));
    assert_eq!(driver.loads.len(), 1);
    let load = &driver.loads[0];
    assert_eq!(
        (load.method, load.outcome, load.answered),
        (Method::Finit, OutcomeKind::Loaded, 100)
    );
    let call = load.call_start_us.expect("a load call");
    assert!(driver.first_request_us <= load.queued_us);
    assert!(load.queued_us <= load.deps_done_us && load.deps_done_us <= call);
    assert!(call <= load.end_us);
    assert_eq!(
        load.wait_us() + load.call_us(),
        load.end_us - load.queued_us
    );

    let dependency = module(&record, "freq_table");
    assert_eq!(dependency.requests.direct, 1);
    assert_eq!(dependency.requests.as_dependency, 1);
    assert_eq!(dependency.dependency_of, ["acpi_cpufreq"]);
    assert_eq!(
        dependency.first_requester,
        Requester::Dependency {
            of: "acpi_cpufreq".into()
        }
    );
    // The dependency ended before its dependent's own call started.
    assert!(dependency.loads[0].end_us <= load.deps_done_us);

    let t = &record.totals;
    assert_eq!(
        (t.requests, t.targets, t.merged, t.load_calls),
        (100, 100, 99, 2)
    );
    assert_eq!(t.load_calls as usize, kernel.total_calls());
}

/// Failures: the errno is kept, a later request inside the window is a failure-window answer,
/// one from sysfs is an already-loaded answer, and the totals still match the counters.
#[tokio::test]
async fn failures_and_settled_modules_are_counted_where_status_counts_them() {
    let kernel = FakeKernel::new();
    kernel.fail("kvm_intel", Errno::ENODEV);
    kernel.set_live("loop");
    let resolver = FixedResolver::new()
        .with_module("kvm_intel", node("kvm_intel", vec![]))
        .with_module("loop", node("loop", vec![]));
    let service = service(&kernel, resolver, Phase::Root);
    for _ in 0..3 {
        service
            .handle(udev("kvm_intel", "/devices/system/cpu/cpu0"))
            .await;
    }
    service
        .handle(udev("loop", "/devices/virtual/misc/loop-control"))
        .await;

    let record = snapshot(&service);
    let kvm = module(&record, "kvm_intel");
    assert_eq!(kvm.loads.len(), 1);
    assert_eq!(kvm.loads[0].outcome, OutcomeKind::Failed);
    assert_eq!(kvm.loads[0].errno, Some(Errno::ENODEV as i32));
    assert_eq!(kvm.loads[0].errno_name.as_deref(), Some("ENODEV"));
    assert_eq!((kvm.requests.direct, kvm.requests.failure_window), (1, 2));
    let settled = module(&record, "loop");
    assert!(settled.loads.is_empty());
    assert_eq!(settled.requests.already_loaded, 1);

    let status = service.handle(Request::Status).await.into_status().unwrap();
    let t = snapshot(&service).totals;
    assert_eq!(t.merged, status.merged);
    assert_eq!(t.already_loaded, status.already_loaded);
    assert_eq!(t.load_calls, status.load_calls);
    assert_eq!(t.failed_loads, status.failed_loads);
    // The status request itself counts too.
    assert_eq!(t.requests, status.requests);
    assert_eq!(t.requests, 5);
}

/// 100,000 requests for 5,000 module names: the record keeps MAX_MODULES modules and
/// MAX_ARRIVALS arrivals each, counts the rest, and its file stays small.
#[test]
fn the_record_is_bounded_under_a_flood() {
    let recorder = Recorder::new(Phase::Root);
    let cli = Requester::this_process();
    for i in 0..100_000u64 {
        recorder.report(Event::Requested {
            module: &format!("mod_{}", i % 5_000),
            by: &cli,
        });
    }
    let record = recorder.snapshot(false);
    assert_eq!(record.modules.len(), MAX_MODULES);
    // The first 4,096 names were seen 20 times each; the others' requests were dropped.
    assert_eq!(record.modules_dropped, (5_000 - MAX_MODULES as u64) * 20);
    let kept: u64 = record
        .modules
        .iter()
        .map(|m| m.arrivals_us.len() as u64 + m.arrivals_dropped)
        .sum();
    assert_eq!(kept + record.modules_dropped, 100_000);
    assert!(record
        .modules
        .iter()
        .all(|m| m.arrivals_us.len() <= MAX_ARRIVALS));
    let size = serde_json::to_vec(&record).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes");
}

/// Files: written atomically, readable back, and at most MAX_INSTANCES of them, the oldest
/// root-phase ones removed first.
#[test]
fn instance_files_are_written_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let initramfs = Recorder::new(Phase::Initramfs);
    let snap = initramfs.snapshot(true);
    recorder::write_record(dir.path(), &initramfs.file_name(), &snap).unwrap();
    for i in 0..MAX_INSTANCES + 5 {
        let mut root = Recorder::new(Phase::Root).snapshot(false);
        root.started_us = 1_000_000 + i as u64;
        recorder::write_record(
            dir.path(),
            &format!("{:016}-1.json", root.started_us),
            &root,
        )
        .unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), MAX_INSTANCES);
    assert!(
        names.contains(&initramfs.file_name()),
        "the initramfs's file was pruned"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")));
    let back: DaemonRecord =
        serde_json::from_slice(&std::fs::read(dir.path().join(initramfs.file_name())).unwrap())
            .unwrap();
    assert_eq!(back, snap);
    assert!(back.stopped_us.is_some());
}

/// Clients may name udev or the kernel as the origin; a CLI or dependency origin is the
/// daemon's to give.
#[test]
fn only_udev_and_kernel_origins_come_from_the_wire() {
    let load = |origin: &str| {
        format!(r#"{{"v":1,"op":"load","targets":["loop"],"origin":{origin}}}"#).into_bytes()
    };
    for ok in [
        r#"{"kind":"udev","subsystem":"cpu","devpath":"/devices/system/cpu/cpu0"}"#,
        r#"{"kind":"kernel"}"#,
    ] {
        assert!(decode_request(&load(ok)).is_ok(), "{ok}");
    }
    for refused in [
        r#"{"kind":"cli","uid":0,"comm":"x"}"#,
        r#"{"kind":"dependency","of":"x"}"#,
        r#"{"kind":"nobody"}"#,
    ] {
        assert!(decode_request(&load(refused)).is_err(), "{refused}");
    }
    // A request without an origin still decodes, and is encoded without one.
    assert!(decode_request(br#"{"v":1,"op":"load","targets":["loop"]}"#).is_ok());
    let Request::Load(mut request) = decode_request(&load(r#"{"kind":"kernel"}"#)).unwrap() else {
        unreachable!()
    };
    assert!(Request::Load(request.clone())
        .encode()
        .contains(r#""origin":{"kind":"kernel"}"#));
    request.origin = None;
    assert!(!Request::Load(request).encode().contains("origin"));
}

/// What a client sends is kept in the record only up to `MAX_TEXT` bytes per text, so no
/// request can grow the record (or the daemon) without bound: a long `DEVPATH` (a hostile
/// client's; the protocol itself accepts up to 2,048 bytes) is cut on a character boundary.
#[tokio::test]
async fn texts_from_clients_are_kept_bounded() {
    let kernel = FakeKernel::new();
    kernel.fail("mb_fail", Errno::ENODEV);
    let resolver = FixedResolver::new().with_module("mb_fail", node("mb_fail", vec![]));
    let service = service(&kernel, resolver, Phase::Root);
    let devpath = format!("/devices/{}", "\u{e9}".repeat(1000));
    service.handle(udev("mb_fail", &devpath)).await;
    let record = snapshot(&service);
    let Requester::Udev {
        devpath: Some(kept),
        ..
    } = &module(&record, "mb_fail").first_requester
    else {
        panic!("not a udev requester")
    };
    assert!(kept.len() <= record::MAX_TEXT && kept.len() > record::MAX_TEXT - 2);
    assert!(devpath.starts_with(kept.as_str()));
}
