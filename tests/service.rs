//! The service with a fake kernel: how one target's modules are handed to the broker.

use std::sync::Arc;

use modbroker::broker::{Broker, BrokerSettings};
use modbroker::kernel::{Kernel, ModuleState};
use modbroker::model::OutcomeKind;
use modbroker::plan::Plan;
use modbroker::protocol::{Request, TargetResult};
use modbroker::service::Service;
use modbroker::testing::{node, FakeKernel, FixedResolver};
use nix::errno::Errno;

fn service(kernel: &Arc<FakeKernel>, resolver: FixedResolver) -> Service {
    let broker = Broker::new(kernel.clone(), BrokerSettings::default());
    Service::new(Arc::new(resolver), broker)
}

/// A request line loading `target`, decoded as the daemon decodes it.
fn load_request(target: &str) -> Request {
    let line = format!(r#"{{"v":1,"op":"load","targets":["{target}"]}}"#);
    modbroker::protocol::decode_request(line.as_bytes()).unwrap()
}

/// Loads `target` through the service; its one result.
async fn load_one(service: &Service, target: &str) -> TargetResult {
    let mut results = service
        .handle(load_request(target))
        .await
        .into_results()
        .unwrap();
    assert_eq!(results.len(), 1);
    results.remove(0)
}

/// Whether the broker has started on `name` yet: it is in flight, or the kernel saw its call.
/// From the moment the broker takes a module on until its load ends, one of the two holds.
fn taken_on(service: &Service, kernel: &FakeKernel, name: &str) -> bool {
    let in_flight = service.broker().in_flight();
    in_flight.iter().any(|f| f.module == name) || kernel.calls(name) > 0
}

/// Two drivers for one alias load one after the other, in lookup order, as modprobe and udev's
/// builtin load them: the second is not even taken on while the first's load is in the
/// kernel. They used to be started together, so which bound the device depended on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_of_one_alias_load_one_after_another_in_lookup_order() {
    let kernel = FakeKernel::new();
    kernel.hold("drv_first");
    let plan = Plan::Load(vec![node("drv_first", vec![]), node("drv_second", vec![])]);
    let service = service(&kernel, FixedResolver::new().with("pci:v1234", plan));

    let load = tokio::spawn({
        let service = service.clone();
        async move { service.handle(load_request("pci:v1234")).await }
    });
    let waiter = kernel.clone();
    tokio::task::spawn_blocking(move || waiter.wait_for_calls("drv_first", 1))
        .await
        .unwrap();
    let second_started_early = taken_on(&service, &kernel, "drv_second");
    // Released before asserting: a test that fails must not leave a load held forever.
    kernel.release("drv_first");
    assert!(
        !second_started_early,
        "the second module was started while the first was loading"
    );

    let result = load.await.unwrap().into_results().unwrap().remove(0);
    assert_eq!(result.outcome, OutcomeKind::Loaded);
    assert_eq!(result.modules, ["drv_first", "drv_second"]);
    let order: Vec<String> = kernel.call_log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(order, ["drv_first", "drv_second"]);
}

/// A module that fails does not stop the next one (modprobe and udev go on to the next module of
/// the list); the target reports the failure, naming the module that failed.
#[tokio::test]
async fn a_failed_module_does_not_stop_the_next_one() {
    let kernel = FakeKernel::new();
    kernel.fail("drv_first", Errno::ENODEV);
    let plan = Plan::Load(vec![node("drv_first", vec![]), node("drv_second", vec![])]);
    let service = service(&kernel, FixedResolver::new().with("pci:v1234", plan));

    let result = load_one(&service, "pci:v1234").await;
    assert_eq!(result.outcome, OutcomeKind::Failed);
    assert_eq!(result.failure.unwrap().module, "drv_first");
    assert_eq!(kernel.calls("drv_second"), 1, "the second still loaded");
    assert_eq!(kernel.state("drv_second"), ModuleState::Live);
}

/// A module without a file (an alias to a module the tree lacks) fails with ENOENT, as
/// modprobe's load does, without a load call: no syscall, no load call or failed call counted.
#[tokio::test]
async fn a_module_without_a_file_fails_with_enoent_and_no_call() {
    let kernel = FakeKernel::new();
    let mut missing = modbroker::plan::ModuleNode::file("mb_not_in_tree", "");
    missing.method = modbroker::plan::LoadMethod::Missing;
    let plan = Plan::Load(vec![Arc::new(missing)]);
    let service = service(&kernel, FixedResolver::new().with("mb-none", plan));

    let result = load_one(&service, "mb-none").await;
    assert_eq!(result.outcome, OutcomeKind::Failed);
    let failure = result.failure.unwrap();
    assert_eq!(failure.module, "mb_not_in_tree");
    assert_eq!(failure.errno_name.as_deref(), Some("ENOENT"));
    assert_eq!(kernel.total_calls(), 0);
    let totals = service.broker().recorder().totals();
    assert_eq!((totals.load_calls, totals.failed_loads), (0, 0));
}

/// `wait: false`: an invalid target gets `invalid` at once, not `queued` for a load that will
/// never be; a valid one is `queued`, and counted until its background load has ended, so that
/// a shutdown waits for it even while it is still being resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_refuses_invalid_targets_and_counts_background_loads() {
    let kernel = FakeKernel::new();
    kernel.hold("mb_ok");
    let service = service(
        &kernel,
        FixedResolver::new().with_module("mb_ok", node("mb_ok", vec![])),
    );
    let line = r#"{"v":1,"op":"load","targets":["../etc","mb_ok"],"wait":false}"#;
    let request = modbroker::protocol::decode_request(line.as_bytes()).unwrap();
    let results = service.handle(request).await.into_results().unwrap();
    assert_eq!(results[0].outcome, OutcomeKind::Invalid);
    assert_eq!(results[1].outcome, OutcomeKind::Queued);
    assert_eq!(service.background_count(), 1);
    let waiting = kernel.clone();
    tokio::task::spawn_blocking(move || waiting.wait_for_calls("mb_ok", 1))
        .await
        .unwrap();
    assert_eq!(service.background_count(), 1, "still loading");
    kernel.release("mb_ok");
    // The background task ends on its own time: wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.background_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background load not counted down"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(kernel.calls("mb_ok"), 1);
}

/// A udev request that bought nothing leaves a skip marker that resolves while its modules are
/// in, or its failure is remembered; one not from udev leaves none, and a reload kills them
/// all (see modbroker::skip).
#[tokio::test]
async fn a_udev_request_that_bought_nothing_leaves_a_skip_marker() {
    use modbroker::skip::SkipMarkers;
    use modbroker::testing::udev_request;
    let kernel = FakeKernel::new();
    kernel.set_live("mb_live_a");
    kernel.fail("mb_broken_b", Errno::ENODEV);
    let resolver = FixedResolver::new()
        .with("pci:v1", Plan::Load(vec![node("mb_live_a", vec![])]))
        .with("pci:v2", Plan::Load(vec![node("mb_broken_b", vec![])]))
        .with("pci:v3", Plan::Load(vec![node("mb_live_a", vec![])]))
        .with("acpi:NONE:", Plan::NoMatch);
    let root = tempfile::tempdir().unwrap();
    let sys_module = root.path().join("module");
    std::fs::create_dir_all(sys_module.join("mb_live_a")).unwrap();
    let dir = root.path().join("skip");
    let markers = Arc::new(SkipMarkers::open(&dir, &sys_module, 0).unwrap());
    let service = service(&kernel, resolver).with_skip_markers(markers);

    for target in ["pci:v1", "pci:v2", "acpi:NONE:"] {
        service
            .handle(udev_request(target, "pci", "/devices/x"))
            .await;
    }
    service.handle(load_request("pci:v3")).await;
    assert!(dir.join("pci:v1").exists(), "already loaded: marker");
    assert!(dir.join("acpi:NONE:").exists(), "no match: marker");
    assert!(dir.join("pci:v2").exists(), "failed, remembered: marker");
    assert!(!dir.join("pci:v3").exists(), "not from udev: no marker");
    std::fs::remove_dir(sys_module.join("mb_live_a")).unwrap();
    assert!(
        !dir.join("pci:v1").exists(),
        "its module went: the marker no longer resolves"
    );
    service.forget_after_reload();
    assert!(
        !dir.join("acpi:NONE:").exists(),
        "a reload kills every marker"
    );
    assert!(!dir.join("pci:v2").exists(), "and every failure's");
}
