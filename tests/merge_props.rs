//! Properties of the merge, over random scenarios against the fake kernel: many concurrent
//! requests for a few modules (some sharing a dependency), random parameters, retries, load
//! results and delays, and clients that go away mid-wait. Whatever the interleaving:
//! - every request that was not cancelled gets exactly one answer (and none hangs);
//! - no module is ever loaded by two calls at once;
//! - inside the failure window a module is loaded at most once per distinct parameter set, plus
//!   once per `retry` request (the window here never expires);
//! - a failure a request is told about is the failure of a real load call of that module;
//! - the in-flight map is empty once everything is done (no leaks).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use modbroker::broker::{Broker, BrokerSettings};
use modbroker::kernel::ModuleOutcome;
use modbroker::plan::ModuleNode;
use modbroker::testing::{node, FakeKernel};
use nix::errno::Errno;
use proptest::prelude::*;

const MODULES: [&str; 4] = ["base", "alpha", "beta", "gamma"];
const ERRNOS: [Errno; 3] = [Errno::ENODEV, Errno::EINVAL, Errno::ENOENT];

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
    let answers = runtime.block_on(async {
        let mut handles = Vec::new();
        for req in &scenario.requests {
            let (broker, node) = (broker.clone(), nodes[req.module].clone());
            let (p, retry) = (params(req.params), req.retry);
            let handle = tokio::spawn(async move { broker.load(node, p, retry).await });
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
    });
    let (answers, drained) = answers;
    prop_assert!(drained, "in-flight map did not drain");
    prop_assert_eq!(broker.in_flight_count(), 0);

    let log = kernel.call_log();
    let mut failures_seen: HashMap<&str, HashSet<String>> = HashMap::new();
    for (i, name) in MODULES.iter().enumerate() {
        prop_assert!(
            kernel.max_concurrent(name) <= 1,
            "{} loaded twice at once",
            name
        );
        if let Some(e) = scenario.results[i] {
            failures_seen
                .entry(name)
                .or_default()
                .insert(format!("{:?}", ERRNOS[e]));
        }
    }
    for (i, name) in MODULES.iter().enumerate() {
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
    for (req, answer) in scenario.requests.iter().zip(answers) {
        let answer = answer.map_err(|_| TestCaseError::fail("a request hung"))?;
        match answer {
            Err(join) => prop_assert!(join.is_cancelled() && req.cancel_after_yields.is_some()),
            Ok(answer) => {
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
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn merge_properties_hold(scenario in scenario()) {
        run(&scenario)?;
    }
}
