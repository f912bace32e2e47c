//! The merge, driven through the service with a fake kernel: bursts, shared dependencies, failure
//! fan-out, the failure window, parameters, and cycles. Every wait here is on a real event (the
//! fake kernel reporting a load call has started), never a sleep.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use modbroker::broker::{Broker, BrokerSettings};
use modbroker::model::OutcomeKind;
use modbroker::plan::{ModuleNode, Plan};
use modbroker::protocol::{LoadRequest, Request, TargetResult};
use modbroker::service::Service;
use modbroker::testing::{calls_started, node, FakeKernel, FixedResolver};
use nix::errno::Errno;

fn service(kernel: &Arc<FakeKernel>, resolver: FixedResolver, window: Duration) -> Service {
    let settings = BrokerSettings {
        failure_window: window,
        max_parallel_loads: 4,
        ..BrokerSettings::default()
    };
    Service::new(Arc::new(resolver), Broker::new(kernel.clone(), settings))
}

fn load_request(target: &str, params: &[&str], retry: bool) -> Request {
    Request::Load(
        LoadRequest::new(vec![target.to_string()])
            .params(params.iter().map(|p| p.to_string()).collect())
            .retry(retry),
    )
}

async fn load(service: &Service, target: &str) -> TargetResult {
    one_result(service, load_request(target, &[], false)).await
}

async fn one_result(service: &Service, request: Request) -> TargetResult {
    let reply = service.handle(request).await;
    let mut results = reply.into_results().expect("load reply has results");
    assert_eq!(results.len(), 1, "one result per target");
    results.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_makes_one_load_call() {
    let kernel = FakeKernel::new();
    kernel.hold("acpi_cpufreq");
    let resolver = FixedResolver::new().with_module("cpu:type:x86", node("acpi_cpufreq", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let burst: Vec<_> = (0..1000)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { load(&service, "cpu:type:x86").await })
        })
        .collect();
    calls_started(&kernel, "acpi_cpufreq", 1).await;
    kernel.release("acpi_cpufreq");
    let results: Vec<TargetResult> = join_all(burst)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(kernel.calls("acpi_cpufreq"), 1);
    assert_eq!(results.len(), 1000);
    // Requests that arrive after the load finished see a live module; all are told the truth.
    assert!(results
        .iter()
        .all(|r| matches!(r.outcome, OutcomeKind::Loaded | OutcomeKind::AlreadyLoaded)));
    assert_eq!(
        results
            .iter()
            .filter(|r| !r.merged && r.outcome == OutcomeKind::Loaded)
            .count(),
        1
    );
    assert_eq!(
        service.broker().in_flight_count(),
        0,
        "in-flight map drains"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_dependency_loads_once() {
    let kernel = FakeKernel::new();
    kernel.hold("crc32c");
    let crc = node("crc32c", vec![]);
    let resolver = FixedResolver::new()
        .with_module("btrfs", node("btrfs", vec![crc.clone()]))
        .with_module("ext4", node("ext4", vec![crc.clone()]))
        .with_module("f2fs", node("f2fs", vec![crc]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let requests: Vec<_> = ["btrfs", "ext4", "f2fs"]
        .iter()
        .cycle()
        .take(300)
        .map(|t| {
            let service = service.clone();
            tokio::spawn(async move { load(&service, t).await })
        })
        .collect();
    calls_started(&kernel, "crc32c", 1).await;
    kernel.release("crc32c");
    let results = join_all(requests).await;

    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap().outcome.is_success()));
    for module in ["crc32c", "btrfs", "ext4", "f2fs"] {
        assert_eq!(kernel.calls(module), 1, "{module}");
    }
    // Dependencies load before their users.
    let log: Vec<String> = kernel.call_log().into_iter().map(|(n, _)| n).collect();
    assert_eq!(log[0], "crc32c", "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_fans_out_to_every_waiter() {
    let kernel = FakeKernel::new();
    kernel.hold("acpi_cpufreq");
    kernel.fail("acpi_cpufreq", Errno::ENODEV);
    let resolver = FixedResolver::new().with_module("acpi-cpufreq", node("acpi_cpufreq", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let burst: Vec<_> = (0..200)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { load(&service, "acpi-cpufreq").await })
        })
        .collect();
    calls_started(&kernel, "acpi_cpufreq", 1).await;
    kernel.release("acpi_cpufreq");
    let results = join_all(burst).await;

    assert_eq!(kernel.calls("acpi_cpufreq"), 1);
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.outcome, OutcomeKind::Failed);
        let failure = r.failure.expect("failure details");
        assert_eq!(failure.errno, Some(19));
        assert_eq!(failure.errno_name.as_deref(), Some("ENODEV"));
        assert_eq!(failure.module, "acpi_cpufreq");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_failure_names_the_dependency() {
    let kernel = FakeKernel::new();
    kernel.fail("libbase", Errno::ENOEXEC);
    let resolver =
        FixedResolver::new().with_module("user", node("user", vec![node("libbase", vec![])]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let r = load(&service, "user").await;
    assert_eq!(r.outcome, OutcomeKind::Failed);
    assert_eq!(r.failure.unwrap().module, "libbase");
    assert_eq!(
        kernel.calls("user"),
        0,
        "no attempt after a dependency failed"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_window_answers_then_expires() {
    let kernel = FakeKernel::new();
    kernel.fail("mb_fail", Errno::ENODEV);
    let resolver = FixedResolver::new().with_module("mb_fail", node("mb_fail", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let first = load(&service, "mb_fail").await;
    assert_eq!(first.outcome, OutcomeKind::Failed);
    assert!(!first.merged);

    tokio::time::advance(Duration::from_secs(29)).await;
    let late = load(&service, "mb_fail").await;
    assert_eq!(late.outcome, OutcomeKind::Failed);
    assert!(late.merged, "answered from the failure window");
    assert_eq!(kernel.calls("mb_fail"), 1);

    let retried = one_result(&service, load_request("mb_fail", &[], true)).await;
    assert_eq!(retried.outcome, OutcomeKind::Failed);
    assert_eq!(kernel.calls("mb_fail"), 2, "--retry bypasses the window");

    tokio::time::advance(Duration::from_secs(31)).await;
    kernel.succeed("mb_fail");
    let after = load(&service, "mb_fail").await;
    assert_eq!(after.outcome, OutcomeKind::Loaded);
    assert_eq!(kernel.calls("mb_fail"), 3, "window expired: a new attempt");
}

/// One CPU's request matches a failing module and a slow one. Requests of one burst queue in
/// udev's workers behind the slow load for longer than the window; they are still one burst:
/// the window runs from the end of the last request the failure answered.
#[tokio::test(start_paused = true)]
async fn failure_window_runs_from_the_end_of_the_request_it_answered() {
    let kernel = FakeKernel::new();
    kernel.fail("acpi_cpufreq", Errno::ENODEV);
    kernel.hold("kvm_amd");
    let failing = node("acpi_cpufreq", vec![]);
    let slow = node("kvm_amd", vec![]);
    let resolver = FixedResolver::new()
        .with("cpu:type:x86", Plan::Load(vec![failing.clone(), slow]))
        .with_module("acpi_cpufreq", failing);
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let cpu0 = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .handle(load_request("cpu:type:x86", &[], false))
                .await
        }
    });
    calls_started(&kernel, "kvm_amd", 1).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    kernel.release("kvm_amd");
    cpu0.await.expect("request task");
    assert_eq!(kernel.calls("acpi_cpufreq"), 1);

    tokio::time::advance(Duration::from_secs(29)).await;
    let late = load(&service, "acpi_cpufreq").await;
    assert_eq!(late.outcome, OutcomeKind::Failed);
    assert!(
        late.merged,
        "89 s after the failure, 29 s after its request ended"
    );
    assert_eq!(kernel.calls("acpi_cpufreq"), 1);

    tokio::time::advance(Duration::from_secs(31)).await;
    load(&service, "acpi_cpufreq").await;
    assert_eq!(
        kernel.calls("acpi_cpufreq"),
        2,
        "a quiet window: a new attempt"
    );
}

/// A CPU's modalias matching kvm_amd (held: a slow load) and then acpi_cpufreq (failing with
/// ENODEV), and an ACPI CPU device's matching acpi_cpufreq alone; a 30 s failure window.
fn cpu_and_acpi_devices() -> (Arc<FakeKernel>, Service) {
    let kernel = FakeKernel::new();
    kernel.fail("acpi_cpufreq", Errno::ENODEV);
    kernel.hold("kvm_amd");
    let failing = node("acpi_cpufreq", vec![]);
    let resolver = FixedResolver::new()
        .with(
            "cpu:type:x86",
            Plan::Load(vec![node("kvm_amd", vec![]), failing.clone()]),
        )
        .with_module("acpi:LNXCPU:", failing);
    let service = service(&kernel, resolver, Duration::from_secs(30));
    (kernel, service)
}

/// A request that arrived inside the window is answered from the failure when it gets to that
/// module, however long it first waited for another: a CPU's request waits for kvm_amd, then
/// asks for acpi_cpufreq, which failed for the CPU's ACPI device's request meanwhile.
#[tokio::test(start_paused = true)]
async fn failure_window_is_judged_at_the_requests_arrival() {
    let (kernel, service) = cpu_and_acpi_devices();

    let acpi = load(&service, "acpi:LNXCPU:").await;
    assert_eq!(acpi.outcome, OutcomeKind::Failed);
    tokio::time::advance(Duration::from_secs(10)).await;
    let cpu0 = tokio::spawn({
        let service = service.clone();
        async move { one_result(&service, load_request("cpu:type:x86", &[], false)).await }
    });
    calls_started(&kernel, "kvm_amd", 1).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    kernel.release("kvm_amd");
    let cpu0 = cpu0.await.expect("request task");
    assert_eq!(cpu0.outcome, OutcomeKind::Failed, "acpi_cpufreq's failure");
    assert_eq!(
        kernel.calls("acpi_cpufreq"),
        1,
        "came 10 s after the failure: answered from it 70 s after"
    );
}

/// Requests that keep arriving less than a window apart keep a failure remembered, however long
/// the burst lasts: udev's workers take the CPUs' events a few at a time, each after the last
/// one's wait for kvm_amd.
#[tokio::test(start_paused = true)]
async fn failure_window_slides_while_requests_keep_arriving() {
    let (kernel, service) = cpu_and_acpi_devices();

    let first = load(&service, "acpi:LNXCPU:").await;
    assert_eq!(first.outcome, OutcomeKind::Failed);
    // Two CPUs' requests, 25 and 50 s after the failure, both still waiting for kvm_amd ...
    let mut cpus = Vec::new();
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(25)).await;
        cpus.push(tokio::spawn({
            let service = service.clone();
            async move { one_result(&service, load_request("cpu:type:x86", &[], false)).await }
        }));
        tokio::task::yield_now().await;
    }
    calls_started(&kernel, "kvm_amd", 1).await;
    // ... and 75 s after it, another ACPI CPU device's: 25 s after the last request came.
    tokio::time::advance(Duration::from_secs(25)).await;
    let late = load(&service, "acpi:LNXCPU:").await;
    let calls_then = kernel.calls("acpi_cpufreq");
    // Released before any assertion: a held load would keep a failing test from ending.
    kernel.release("kvm_amd");
    assert!(late.merged, "answered from the failure: {late:?}");
    assert_eq!(calls_then, 1);
    for cpu in cpus {
        assert_eq!(cpu.await.unwrap().outcome, OutcomeKind::Failed);
    }
    assert_eq!(kernel.calls("acpi_cpufreq"), 1, "one attempt for the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_parameters_are_not_merged() {
    let kernel = FakeKernel::new();
    kernel.hold("mb_ok");
    let resolver = FixedResolver::new().with_module("mb_ok", node("mb_ok", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let first = {
        let service = service.clone();
        tokio::spawn(async move {
            one_result(&service, load_request("mb_ok", &["value=1"], false)).await
        })
    };
    calls_started(&kernel, "mb_ok", 1).await;
    let second = {
        let service = service.clone();
        tokio::spawn(async move {
            one_result(&service, load_request("mb_ok", &["value=2"], false)).await
        })
    };
    let same = {
        let service = service.clone();
        tokio::spawn(async move {
            one_result(&service, load_request("mb_ok", &["value=1"], false)).await
        })
    };
    kernel.release("mb_ok");
    let (first, second, same) = (
        first.await.unwrap(),
        second.await.unwrap(),
        same.await.unwrap(),
    );

    assert_eq!(first.outcome, OutcomeKind::Loaded);
    assert!(!first.merged);
    assert!(!second.merged, "different parameters never merge");
    assert_eq!(
        second.outcome,
        OutcomeKind::AlreadyLoaded,
        "it ran after the first load ended"
    );
    assert!(matches!(
        same.outcome,
        OutcomeKind::Loaded | OutcomeKind::AlreadyLoaded
    ));
    assert_eq!(
        kernel.call_log(),
        vec![("mb_ok".to_string(), "value=1".to_string())]
    );
}

/// A module reached through an alias with its own `options` line is not the same load as the
/// module by name: the second request waits for the first to end instead of being told its
/// outcome as if its options had been used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_module_with_other_configured_options_is_not_merged() {
    let kernel = FakeKernel::new();
    kernel.hold("mb_ok");
    let mut by_alias = ModuleNode::file("mb_ok", "/fake/mb_ok.ko");
    by_alias.options = "value=7".into();
    let resolver = FixedResolver::new()
        .with_module("mb_ok", node("mb_ok", vec![]))
        .with_module("mbtest:ok", Arc::new(by_alias));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let by_name = {
        let service = service.clone();
        tokio::spawn(async move { one_result(&service, load_request("mb_ok", &[], false)).await })
    };
    calls_started(&kernel, "mb_ok", 1).await;
    let by_alias = {
        let service = service.clone();
        tokio::spawn(
            async move { one_result(&service, load_request("mbtest:ok", &[], false)).await },
        )
    };
    kernel.release("mb_ok");
    let (by_name, by_alias) = (by_name.await.unwrap(), by_alias.await.unwrap());
    assert_eq!(by_name.outcome, OutcomeKind::Loaded);
    assert!(!by_alias.merged, "other configured options never merge");
    assert_eq!(
        by_alias.outcome,
        OutcomeKind::AlreadyLoaded,
        "it ran after the first load ended, and found the module live, as modprobe would"
    );
    assert_eq!(kernel.calls("mb_ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_options_come_before_request_parameters() {
    let kernel = FakeKernel::new();
    let mut configured = ModuleNode::file("mb_ok", "/fake/mb_ok.ko");
    configured.options = "value=7 debug=1".into();
    let resolver = FixedResolver::new().with_module("mb_ok", Arc::new(configured));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let r = one_result(&service, load_request("mb_ok", &["value=9"], false)).await;
    assert_eq!(r.outcome, OutcomeKind::Loaded);
    assert_eq!(kernel.call_log()[0].1, "value=7 debug=1 value=9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_builtin_and_no_match_need_no_syscall() {
    let kernel = FakeKernel::new();
    kernel.set_live("e1000");
    let mut builtin = ModuleNode::file("ext4", "");
    builtin.method = modbroker::plan::LoadMethod::Builtin;
    let resolver = FixedResolver::new()
        .with_module("e1000", node("e1000", vec![]))
        .with_module("ext4", Arc::new(builtin))
        .with("bl", Plan::Blacklisted(vec!["pcspkr".into()]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    assert_eq!(
        load(&service, "e1000").await.outcome,
        OutcomeKind::AlreadyLoaded
    );
    assert_eq!(load(&service, "ext4").await.outcome, OutcomeKind::Builtin);
    assert_eq!(
        load(&service, "pci:v0000nothing").await.outcome,
        OutcomeKind::NoMatch
    );
    let bl = load(&service, "bl").await;
    assert_eq!(bl.outcome, OutcomeKind::Blacklisted);
    assert!(!bl.outcome.is_success());
    assert!(kernel.call_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softdep_failure_does_not_fail_the_module() {
    let kernel = FakeKernel::new();
    kernel.fail("soft_pre", Errno::ENODEV);
    let mut main = ModuleNode::file("main_mod", "/fake/main.ko");
    main.pre = vec![node("soft_pre", vec![])];
    main.post = vec![node("soft_post", vec![])];
    let resolver = FixedResolver::new().with_module("main_mod", Arc::new(main));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    assert_eq!(
        load(&service, "main_mod").await.outcome,
        OutcomeKind::Loaded
    );
    let order: Vec<String> = kernel.call_log().into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, ["soft_pre", "main_mod", "soft_post"]);
}

/// libkmod's order (`__kmod_module_get_probe_list`): a module's hard dependencies come before
/// its pre-softdeps (with `softdep garp pre: dummy`, modprobe loads llc, stp, dummy, garp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_dependencies_load_before_pre_softdeps() {
    let kernel = FakeKernel::new();
    let mut garp = ModuleNode::file("garp", "/fake/garp.ko");
    garp.deps = vec![node("llc", vec![]), node("stp", vec![])];
    garp.pre = vec![node("dummy", vec![])];
    let resolver = FixedResolver::new().with_module("garp", Arc::new(garp));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    assert_eq!(load(&service, "garp").await.outcome, OutcomeKind::Loaded);
    let order: Vec<String> = kernel.call_log().into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, ["llc", "stp", "dummy", "garp"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn softdep_cycle_across_requests_does_not_deadlock() {
    let kernel = FakeKernel::new();
    kernel.hold("alpha");
    kernel.hold("beta");
    // alpha wants beta first and beta wants alpha first (softdeps in both directions).
    let mut alpha = ModuleNode::file("alpha", "/fake/alpha.ko");
    alpha.pre = vec![node("beta", vec![])];
    let mut beta = ModuleNode::file("beta", "/fake/beta.ko");
    beta.pre = vec![node("alpha", vec![])];
    let resolver = FixedResolver::new()
        .with_module("alpha", Arc::new(alpha))
        .with_module("beta", Arc::new(beta));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let a = {
        let service = service.clone();
        tokio::spawn(async move { load(&service, "alpha").await })
    };
    let b = {
        let service = service.clone();
        tokio::spawn(async move { load(&service, "beta").await })
    };
    // Whichever task loses the race must not wait on the other: some syscall starts.
    let started = {
        let kernel = kernel.clone();
        tokio::task::spawn_blocking(move || kernel.wait_for_total_calls(1))
    };
    tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("deadlock: no load started")
        .unwrap();
    kernel.release("alpha");
    kernel.release("beta");
    let both = tokio::time::timeout(Duration::from_secs(20), async { (a.await, b.await) });
    let (a, b) = both.await.expect("deadlock: loads never finished");
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.outcome.is_success() && b.outcome.is_success());
    assert_eq!(kernel.calls("alpha"), 1);
    assert_eq!(kernel.calls("beta"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_targets_and_params_get_their_own_result() {
    let kernel = FakeKernel::new();
    let service = service(&kernel, FixedResolver::new(), Duration::from_secs(30));
    let reply = service
        .handle(Request::Load(LoadRequest::new(vec![
            "../../etc/passwd".into(),
            "ok_name".into(),
            "a\u{7}b".into(),
        ])))
        .await;
    let outcomes: Vec<OutcomeKind> = reply
        .load_results()
        .unwrap()
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            OutcomeKind::Invalid,
            OutcomeKind::NoMatch,
            OutcomeKind::Invalid
        ]
    );

    let injected = one_result(&service, load_request("ok_name", &["x=$(reboot)"], false)).await;
    assert_eq!(injected.outcome, OutcomeKind::Invalid);
    assert!(kernel.call_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_timeout_replies_and_the_load_goes_on() {
    let kernel = FakeKernel::new();
    kernel.hold("slow");
    let resolver = FixedResolver::new().with_module("slow", node("slow", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    let request = Request::Load(LoadRequest::new(vec!["slow".into()]).timeout_ms(Some(50)));
    let r = one_result(&service, request).await;
    assert_eq!(r.outcome, OutcomeKind::TimedOut);
    assert_eq!(
        service.broker().in_flight_count(),
        1,
        "the load is still in flight"
    );
    kernel.release("slow");
    // Either joins the load still finishing or finds the module live: never a second call.
    let again = load(&service, "slow").await.outcome;
    assert!(
        matches!(again, OutcomeKind::Loaded | OutcomeKind::AlreadyLoaded),
        "{again:?}"
    );
    assert_eq!(kernel.calls("slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_replies_queued_and_loads() {
    let kernel = FakeKernel::new();
    let resolver = FixedResolver::new().with_module("bg", node("bg", vec![]));
    let service = service(&kernel, resolver, Duration::from_secs(30));
    let request = Request::Load(LoadRequest::new(vec!["bg".into()]).wait(false));
    assert_eq!(
        one_result(&service, request).await.outcome,
        OutcomeKind::Queued
    );
    calls_started(&kernel, "bg", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_remembered_per_parameter_set() {
    // Found by tests/merge_props.rs: alternating parameter sets used to overwrite each other's
    // remembered failure, so each alternation cost another load call.
    let kernel = FakeKernel::new();
    kernel.fail("base", Errno::ENODEV);
    let resolver = FixedResolver::new()
        .with_module("base", node("base", vec![]))
        .with_module("alpha", node("alpha", vec![node("base", vec![])]));
    let service = service(&kernel, resolver, Duration::from_secs(30));

    for _ in 0..2 {
        for (target, params) in [
            ("alpha", vec![]),
            ("base", vec!["value=1"]),
            ("alpha", vec!["value=1"]),
            ("base", vec!["value=2"]),
        ] {
            let r = one_result(&service, load_request(target, &params, false)).await;
            assert_eq!(r.outcome, OutcomeKind::Failed);
            assert_eq!(r.failure.unwrap().errno_name.as_deref(), Some("ENODEV"));
        }
    }
    // base was loaded once with no parameters (as alpha's dependency), once with value=1 and
    // once with value=2: three calls, however often the requests alternate.
    assert_eq!(kernel.calls("base"), 3);
    assert_eq!(kernel.calls("alpha"), 0, "its dependency failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_stuck_in_init_does_not_hold_back_others_past_the_patience() {
    // With one slot, held by an init that does not return (as one waiting on a nested
    // request_module() would), the next load must still go ahead once its patience runs out.
    let kernel = FakeKernel::new();
    kernel.hold("stuck");
    let resolver = FixedResolver::new()
        .with_module("stuck", node("stuck", vec![]))
        .with_module("other", node("other", vec![]));
    let settings = BrokerSettings {
        failure_window: Duration::from_secs(30),
        max_parallel_loads: 1,
        permit_patience: Duration::from_millis(50),
    };
    let service = Service::new(Arc::new(resolver), Broker::new(kernel.clone(), settings));

    let stuck = tokio::spawn({
        let service = service.clone();
        async move { load(&service, "stuck").await }
    });
    calls_started(&kernel, "stuck", 1).await;
    let other = tokio::time::timeout(Duration::from_secs(20), load(&service, "other")).await;
    let stuck_was_pending = !stuck.is_finished();
    // Released before asserting: a held load would keep the runtime from shutting down.
    kernel.release("stuck");
    let other = other.expect("the second load went ahead without a slot");
    assert_eq!(other.outcome, OutcomeKind::Loaded);
    assert_eq!(kernel.calls("other"), 1);
    assert!(stuck_was_pending, "the stuck load was still in its init");
    assert_eq!(stuck.await.unwrap().outcome, OutcomeKind::Loaded);
}

/// A dependency's failure used to be remembered under the module that needed it, and served to
/// that module's requests for the whole window even after the dependency had been loaded by
/// another path (an admin's modprobe, udev's builtin). It is remembered under the dependency,
/// and each request reads the dependency's state again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_loaded_since_its_failure_lets_the_module_load() {
    let kernel = FakeKernel::new();
    kernel.fail("libbase", Errno::ENOEXEC);
    let libbase = node("libbase", vec![]);
    let resolver = FixedResolver::new()
        .with_module("user", node("user", vec![libbase.clone()]))
        .with_module("libbase", libbase);
    let service = service(&kernel, resolver, Duration::from_secs(30));

    for _ in 0..2 {
        let r = load(&service, "user").await;
        assert_eq!(r.outcome, OutcomeKind::Failed);
        assert_eq!(r.failure.unwrap().module, "libbase");
    }
    assert_eq!(
        kernel.calls("libbase"),
        1,
        "the dependency's own failure is remembered"
    );

    // Loaded outside the broker: neither it nor its user is answered with the old failure.
    kernel.set_live("libbase");
    assert_eq!(
        load(&service, "libbase").await.outcome,
        OutcomeKind::AlreadyLoaded
    );
    assert_eq!(load(&service, "user").await.outcome, OutcomeKind::Loaded);
    assert_eq!(kernel.calls("user"), 1);
    assert_eq!(kernel.calls("libbase"), 1);
}

/// Errors that the next attempt may not repeat were the answer for the whole window, so a
/// device whose event came after the problem cleared never got its driver. Only lasting errors
/// (ENODEV and the like) are remembered; stock udev retries on every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_not_remembered() {
    for errno in [
        Errno::EBUSY,
        Errno::ENOMEM,
        Errno::EINTR,
        Errno::ETIMEDOUT,
        Errno::EAGAIN,
        Errno::ETXTBSY,
    ] {
        let kernel = FakeKernel::new();
        kernel.fail("flaky", errno);
        let resolver = FixedResolver::new().with_module("flaky", node("flaky", vec![]));
        let service = service(&kernel, resolver, Duration::from_secs(30));

        let first = load(&service, "flaky").await;
        assert_eq!(first.outcome, OutcomeKind::Failed, "{errno}");
        assert_eq!(
            first.failure.unwrap().errno_name.as_deref(),
            Some(format!("{errno:?}").as_str())
        );
        let calls = kernel.calls("flaky");
        kernel.succeed("flaky");
        let next = load(&service, "flaky").await;
        assert_eq!(next.outcome, OutcomeKind::Loaded, "{errno}: retried");
        assert!(!next.merged, "{errno}");
        assert_eq!(kernel.calls("flaky"), calls + 1, "{errno}");
    }
}

/// A reload (SIGHUP, a new modprobe.d or depmod) used to keep every remembered failure. The
/// daemon forgets them on each reload, and a plan node the reload changed is never answered
/// with the failure of the node it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_forget_remembered_failures() {
    let kernel = FakeKernel::new();
    kernel.fail("mb_fail", Errno::EINVAL);
    let mut bad_options = ModuleNode::file("mb_fail", "/fake/mb_fail.ko");
    bad_options.options = "mode=bogus".into();
    let mut fixed_options = bad_options.clone();
    fixed_options.options = "mode=fast".into();
    // "before" and "after" stand for the same module's plan before and after a reload.
    let resolver = FixedResolver::new()
        .with_module("before", Arc::new(bad_options))
        .with_module("after", Arc::new(fixed_options));
    let service = service(&kernel, resolver, Duration::from_secs(30));
    let broker = service.broker().clone();

    assert_eq!(load(&service, "before").await.outcome, OutcomeKind::Failed);
    assert!(load(&service, "before").await.merged, "remembered");
    assert_eq!(kernel.calls("mb_fail"), 1);

    // The configuration changed the module's options: the old failure is not the new answer.
    assert_eq!(load(&service, "after").await.outcome, OutcomeKind::Failed);
    assert_eq!(kernel.calls("mb_fail"), 2);

    // A reload forgets failures whatever changed (here: nothing the plan shows).
    broker.forget_failures();
    kernel.succeed("mb_fail");
    assert_eq!(load(&service, "after").await.outcome, OutcomeKind::Loaded);
    assert_eq!(kernel.calls("mb_fail"), 3);
}
