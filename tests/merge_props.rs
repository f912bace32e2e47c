//! Properties of the merge, over random scenarios against the fake kernel: many concurrent
//! requests for a few modules (some sharing a dependency), random parameters, retries, load
//! results and delays, and clients that go away mid-wait. Whatever the interleaving:
//! - every request that was not cancelled gets exactly one answer (and none hangs);
//! - no module is ever loaded by two calls at once;
//! - inside the failure window a module that succeeds or fails with a lasting error is loaded at
//!   most once per distinct parameter set, plus once per `retry` request (the window here never
//!   expires);
//! - a transient failure is never remembered: once everything is done, asking again for a module
//!   whose load (or whose dependency's load) failed transiently makes a new load call, while a
//!   lasting failure is answered without one and a loaded module is live;
//! - a failure a request is told about is the failure of a real load call of that module;
//! - the in-flight map is empty once everything is done (no leaks).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use modbroker::broker::{Broker, BrokerSettings, ModuleAnswer};
use modbroker::model::OutcomeKind;
use modbroker::model::{ModuleOutcome, Requester};
use modbroker::plan::ModuleNode;
use modbroker::testing::{node, FakeKernel};
use nix::errno::Errno;
use proptest::prelude::*;
use tokio::task::JoinError;
use tokio::time::error::Elapsed;

const MODULES: [&str; 4] = ["base", "alpha", "beta", "gamma"];
/// Three lasting errors, then a transient one (see `broker::is_lasting`).
const ERRNOS: [Errno; 4] = [
    Errno::ENODEV,
    Errno::EINVAL,
    Errno::ENOENT,
    Errno::ETIMEDOUT,
];
const TRANSIENT: usize = 3;

#[derive(Debug, Clone)]
struct Req {
    module: usize,
    params: usize,
    retry: bool,
    cancel_after_yields: Option<u8>,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// Per module: None succeeds, Some(i) fails with ERRNOS[i].
    results: Vec<Option<usize>>,
    /// Per module: microseconds each load call takes.
    delays_us: Vec<u64>,
    requests: Vec<Req>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let req = (
        0..MODULES.len(),
        0..3usize,
        prop::bool::weighted(0.1),
        prop::option::weighted(0.2, 0..20u8),
    )
        .prop_map(|(module, params, retry, cancel_after_yields)| Req {
            module,
            params,
            retry,
            cancel_after_yields,
        });
    (
        prop::collection::vec(prop::option::weighted(0.4, 0..ERRNOS.len()), MODULES.len()),
        prop::collection::vec(0..2000u64, MODULES.len()),
        prop::collection::vec(req, 1..120),
    )
        .prop_map(|(results, delays_us, requests)| Scenario {
            results,
            delays_us,
            requests,
        })
}

/// "alpha", "beta" and "gamma" all depend on "base".
fn plan_nodes() -> Vec<Arc<ModuleNode>> {
    let base = node("base", vec![]);
    let mut nodes = vec![base.clone()];
    for name in &MODULES[1..] {
        nodes.push(node(name, vec![base.clone()]));
    }
    nodes
}

fn params(variant: usize) -> String {
    match variant {
        0 => String::new(),
        n => format!("value={n}"),
    }
}

impl Scenario {
    /// Whether module `i` fails with a transient error.
    fn transient(&self, i: usize) -> bool {
        self.results[i] == Some(TRANSIENT)
    }

    /// Whether loading module `i` again after the scenario must make a new load call: its own
    /// load or its dependency's ("base", loaded first) failed transiently.
    fn probe_calls_again(&self, i: usize) -> bool {
        self.transient(0) || (i != 0 && self.results[0].is_none() && self.transient(i))
    }
}

fn run(scenario: &Scenario) -> Result<(), TestCaseError> {
    let kernel = FakeKernel::new();
    for (i, name) in MODULES.iter().enumerate() {
        if let Some(e) = scenario.results[i] {
            kernel.fail(name, ERRNOS[e]);
        }
        kernel.set_delay(name, Duration::from_micros(scenario.delays_us[i]));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::new(
        kernel.clone(),
        BrokerSettings {
            failure_window: Duration::from_secs(3600),
            max_parallel_loads: 2,
            ..BrokerSettings::default()
        },
    );
    let nodes = plan_nodes();
    let (answers, drained) = runtime.block_on(drive(scenario, &broker, &nodes));
    prop_assert!(drained, "in-flight map did not drain");
    prop_assert_eq!(broker.in_flight_count(), 0);
    check_record(&broker, &kernel)?;
    check_calls(scenario, &kernel)?;
    let answers = check_answers(scenario, answers)?;
    check_probes(scenario, &kernel, &runtime, &broker, &nodes, &answers)
}

type Answers = Vec<Result<Result<ModuleAnswer, JoinError>, Elapsed>>;

/// The boot's record agrees with the counters and the fake kernel, whatever the interleaving
/// (cancelled requests included): merged answers (joins and remembered failures), sysfs answers,
/// load calls and failed calls, and each load's timestamps in order.
fn check_record(broker: &Broker, kernel: &FakeKernel) -> Result<(), TestCaseError> {
    let totals = broker.recorder().totals();
    let record = broker.recorder().snapshot(false);
    let modules = &record.modules;
    let sum =
        |f: &dyn Fn(&modbroker::record::ModuleRecord) -> u64| modules.iter().map(f).sum::<u64>();
    prop_assert_eq!(
        sum(&|m| m.requests.merged + m.requests.failure_window),
        totals.merged
    );
    prop_assert_eq!(sum(&|m| m.requests.already_loaded), totals.already_loaded);
    let loads = || modules.iter().flat_map(|m| m.loads.iter());
    // Loads past MAX_LOADS per module are counted, not kept: the kept ones bound the calls.
    let dropped = sum(&|m| m.loads_dropped);
    let calls = loads().filter(|l| l.call_start_us.is_some()).count() as u64;
    prop_assert_eq!(totals.load_calls, kernel.total_calls() as u64);
    prop_assert!(calls <= totals.load_calls && totals.load_calls <= calls + dropped);
    let own_failures = loads()
        .filter(|l| l.call_start_us.is_some() && l.outcome == OutcomeKind::Failed)
        .count() as u64;
    prop_assert!(own_failures <= totals.failed_loads);
    prop_assert!(totals.failed_loads <= own_failures + dropped);
    // Every load was started by exactly one direct request.
    prop_assert_eq!(
        sum(&|m| m.loads.len() as u64 + m.loads_dropped),
        sum(&|m| m.requests.direct)
    );
    for load in loads() {
        let call = load.call_start_us.unwrap_or(load.end_us);
        prop_assert!(load.queued_us <= load.deps_done_us && load.deps_done_us <= call);
        prop_assert!(call <= load.end_us && load.answered >= 1);
    }
    Ok(())
}

/// Runs every request of the scenario concurrently; returns the answers and whether the
/// in-flight map drained.
async fn drive(scenario: &Scenario, broker: &Broker, nodes: &[Arc<ModuleNode>]) -> (Answers, bool) {
    let mut handles = Vec::new();
    for req in &scenario.requests {
        let (broker, node) = (broker.clone(), nodes[req.module].clone());
        let (p, retry) = (params(req.params), req.retry);
        let handle = tokio::spawn(async move {
            broker
                .load(
                    node,
                    p,
                    retry,
                    tokio::time::Instant::now(),
                    &Requester::this_process(),
                )
                .await
        });
        if let Some(yields) = req.cancel_after_yields {
            let abort = handle.abort_handle();
            tokio::spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                abort.abort();
            });
        }
        handles.push(handle);
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(tokio::time::timeout(Duration::from_secs(30), handle).await);
    }
    // Loads whose waiters all went away still finish; wait for the map to drain.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while broker.in_flight_count() > 0 {
            tokio::task::yield_now().await;
        }
    });
    (answers, drained.await.is_ok())
}

/// No module loaded twice at once; at most one load per parameter set (plus retries) for each
/// module that does not fail transiently.
fn check_calls(scenario: &Scenario, kernel: &FakeKernel) -> Result<(), TestCaseError> {
    let log = kernel.call_log();
    for (i, name) in MODULES.iter().enumerate() {
        prop_assert!(
            kernel.max_concurrent(name) <= 1,
            "{} loaded twice at once",
            name
        );
        if scenario.transient(i) {
            continue;
        }
        let requests: Vec<&Req> = scenario.requests.iter().filter(|r| r.module == i).collect();
        let distinct: HashSet<usize> = requests.iter().map(|r| r.params).collect();
        let retries = requests.iter().filter(|r| r.retry).count();
        // The dependency "base" is also requested (without parameters) by every dependent.
        let dependents = if i == 0 {
            scenario.requests.iter().filter(|r| r.module != 0).count()
        } else {
            0
        };
        let base_budget = usize::from(dependents > 0)
            + scenario
                .requests
                .iter()
                .filter(|r| r.retry && r.module != 0)
                .count();
        let calls = log.iter().filter(|(n, _)| n == name).count();
        prop_assert!(
            calls <= distinct.len() + retries + if i == 0 { base_budget } else { 0 },
            "{}: {} calls for {} distinct parameter sets and {} retries",
            name,
            calls,
            distinct.len(),
            retries
        );
    }
    Ok(())
}

/// Every request was answered or cancelled, and every failure told is one a real load call of
/// that module returned. Returns the requests that were answered.
fn check_answers(scenario: &Scenario, answers: Answers) -> Result<Vec<&Req>, TestCaseError> {
    let mut failures_seen: HashMap<&str, HashSet<String>> = HashMap::new();
    for (i, name) in MODULES.iter().enumerate() {
        if let Some(e) = scenario.results[i] {
            failures_seen
                .entry(name)
                .or_default()
                .insert(format!("{:?}", ERRNOS[e]));
        }
    }
    let mut answered = Vec::new();
    for (req, answer) in scenario.requests.iter().zip(answers) {
        let answer = answer.map_err(|_| TestCaseError::fail("a request hung"))?;
        match answer {
            Err(join) => prop_assert!(join.is_cancelled() && req.cancel_after_yields.is_some()),
            Ok(answer) => {
                answered.push(req);
                if let ModuleOutcome::Failed(f) = &answer.outcome {
                    let real = failures_seen.get(f.module.as_str());
                    let errno = f.errno_name.clone().unwrap_or_default();
                    prop_assert!(
                        real.is_some_and(|set| set.contains(&errno)),
                        "told {} failed with {}, which no load call returned",
                        f.module,
                        errno
                    );
                }
            }
        }
    }
    Ok(answered)
}

/// Asks once more, one at a time, for each module and parameter set an answered request used:
/// a new load call happens exactly when a transient failure is on the module's path.
fn check_probes(
    scenario: &Scenario,
    kernel: &FakeKernel,
    runtime: &tokio::runtime::Runtime,
    broker: &Broker,
    nodes: &[Arc<ModuleNode>],
    answered: &[&Req],
) -> Result<(), TestCaseError> {
    let probes: HashSet<(usize, usize)> = answered.iter().map(|r| (r.module, r.params)).collect();
    for (module, variant) in probes {
        let before = kernel.total_calls();
        let node = nodes[module].clone();
        runtime.block_on(broker.load(
            node,
            params(variant),
            false,
            tokio::time::Instant::now(),
            &Requester::this_process(),
        ));
        let called = kernel.total_calls() > before;
        prop_assert_eq!(
            called,
            scenario.probe_calls_again(module),
            "{} (value={}) asked again after the scenario",
            MODULES[module],
            variant
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn merge_properties_hold(scenario in scenario()) {
        run(&scenario)?;
    }
}
