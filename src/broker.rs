//! The merge: one in-flight load per module name, shared by every request that wants it.
//!
//! The broker holds a map from canonical module name to a [`Shared`] handle of the spawned task
//! that loads it. A request for a name already in flight clones the handle and awaits the same
//! outcome; dependencies and softdeps go through the same map, so a dependency shared by many
//! modules loads once. A failed load's outcome is remembered for the failure window so late
//! duplicates of the same burst get the true error without another syscall.
//!
//! Invariants (each one is relied on by a test in `tests/broker.rs`):
//! - The map entry is inserted before the load task can finish and removed by the task itself,
//!   together with recording a failure, under one lock: a request arriving at any instant sees
//!   the entry, the remembered failure, or a module whose sysfs state is final.
//! - Load tasks are spawned, not owned by a waiter: a waiter that goes away cancels nothing.
//! - Requests whose explicit parameters differ from the in-flight load's never merge into it:
//!   they wait for it to end and then make their own attempt.
//! - The syscall runs on tokio's blocking pool, behind a semaphore bounding parallel loads; the
//!   semaphore is taken only around the syscall, never while waiting on dependencies. The bound
//!   is soft: a load that has waited [`BrokerSettings::permit_patience`] for a slot goes ahead
//!   without one. A module's init can call `request_module()`, which runs the autoload helper
//!   and comes back to this broker; with every slot held by such inits, a hard bound would
//!   deadlock the boot, and so would a few inits that never return.
//! - Softdeps may form cycles across modules; a task never waits on a load that is (through the
//!   chain of loads waiting on each other) waiting on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;
// tokio's clock, so tests can move time forward instead of sleeping through the failure window.
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::kernel::{attempt_load, join_options, settled_outcome, Kernel, ModuleOutcome};
use crate::plan::ModuleNode;
use crate::protocol::{Failure, FailureCount, InFlight};

/// Tunables of the merge.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// How long a failed load's outcome answers new requests without another syscall.
    pub failure_window: Duration,
    /// Most `finit_module` calls (or install commands) running at once, give or take loads
    /// that ran out of patience.
    pub max_parallel_loads: usize,
    /// How long a load waits for one of the `max_parallel_loads` slots before it goes ahead
    /// without one (see the module docs for why the bound is soft).
    pub permit_patience: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            failure_window: Duration::from_secs(30),
            max_parallel_loads: 16,
            permit_patience: Duration::from_secs(5),
        }
    }
}

/// One module request's answer: the outcome and whether it shared another request's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleAnswer {
    /// What happened to the module.
    pub outcome: ModuleOutcome,
    /// True when answered by another request's load or a remembered failure.
    pub merged: bool,
}

type SharedLoad = Shared<BoxFuture<'static, ModuleOutcome>>;

struct Flight {
    /// Request parameters the load was started with (canonical, space-joined).
    params: String,
    started: Instant,
    /// Requests currently awaiting this load.
    waiters: u64,
    /// The module this load's task is awaiting right now (a dependency or softdep), if any.
    waiting_on: Option<String>,
    load: SharedLoad,
}

struct RememberedFailure {
    at: Instant,
    params: String,
    failure: Failure,
}

#[derive(Default)]
struct MergeMap {
    in_flight: HashMap<String, Flight>,
    /// Per module, the last failure for each parameter set it was loaded with (a request with
    /// other parameters must not be answered with a failure that was not its own, nor erase
    /// one that was).
    failures: HashMap<String, Vec<RememberedFailure>>,
    failure_counts: HashMap<(String, String), u64>,
}

/// Counters for `status`.
#[derive(Default)]
pub struct Counters {
    /// Request lines served.
    pub requests: AtomicU64,
    /// Load targets received.
    pub targets: AtomicU64,
    /// Module requests that shared a load or a remembered failure.
    pub merged: AtomicU64,
    /// Module requests answered from sysfs or builtin.
    pub already_loaded: AtomicU64,
    /// Load syscalls and install commands made.
    pub load_calls: AtomicU64,
    /// Of those, failed.
    pub failed_loads: AtomicU64,
}

struct Inner {
    kernel: Arc<dyn Kernel>,
    /// The failure window in milliseconds; changeable while serving (SIGHUP).
    failure_window_ms: AtomicU64,
    map: Mutex<MergeMap>,
    permits: Semaphore,
    permit_patience: Duration,
    counters: Counters,
}

/// The merge map and everything around it. Cheap to clone; all clones share one map.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// What a request must do for one module, decided under the map lock.
enum Step {
    Done(ModuleAnswer),
    Await {
        load: SharedLoad,
        merged: bool,
    },
    /// Another load with different parameters is in flight: wait for it, then decide again.
    AwaitThenRetry(SharedLoad),
}

impl Broker {
    /// A broker over `kernel`.
    pub fn new(kernel: Arc<dyn Kernel>, settings: BrokerSettings) -> Self {
        let permits = Semaphore::new(settings.max_parallel_loads.max(1));
        Broker {
            inner: Arc::new(Inner {
                kernel,
                failure_window_ms: AtomicU64::new(settings.failure_window.as_millis() as u64),
                map: Mutex::new(MergeMap::default()),
                permits,
                permit_patience: settings.permit_patience,
                counters: Counters::default(),
            }),
        }
    }

    /// The current failure window.
    pub fn failure_window(&self) -> Duration {
        Duration::from_millis(self.inner.failure_window_ms.load(Ordering::Relaxed))
    }

    /// Changes the failure window (configuration reload); remembered failures are judged
    /// against the new window from now on.
    pub fn set_failure_window(&self, window: Duration) {
        let ms = window.as_millis() as u64;
        self.inner.failure_window_ms.store(ms, Ordering::Relaxed);
    }

    /// The counters, for the server to count requests and for `status`.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn lock(&self) -> MutexGuard<'_, MergeMap> {
        // The map is only mutated in short sections that cannot panic half-way; a poisoned lock
        // still holds consistent data, and a boot-path daemon must keep serving.
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings `node` (and its dependencies) into the kernel, merging with any load of the same
    /// name in flight. `params` are the request's validated parameters for this module.
    pub async fn load(&self, node: Arc<ModuleNode>, params: String, retry: bool) -> ModuleAnswer {
        self.load_as(node, params, retry, None).await
    }

    /// `load`, on behalf of the load task of module `parent` when there is one (for cycle checks).
    fn load_as(
        &self,
        node: Arc<ModuleNode>,
        params: String,
        retry: bool,
        parent: Option<String>,
    ) -> BoxFuture<'static, ModuleAnswer> {
        let broker = self.clone();
        Box::pin(async move {
            loop {
                match broker.decide(&node, &params, retry, parent.as_deref()) {
                    Step::Done(answer) => return answer,
                    Step::Await { load, merged } => {
                        let _waiter = WaiterGuard::new(&broker, &node.name);
                        let outcome = broker.await_as_child(&parent, load).await;
                        return ModuleAnswer { outcome, merged };
                    }
                    Step::AwaitThenRetry(load) => {
                        broker.await_as_child(&parent, load).await;
                    }
                }
            }
        })
    }

    fn decide(
        &self,
        node: &Arc<ModuleNode>,
        params: &str,
        retry: bool,
        parent: Option<&str>,
    ) -> Step {
        // In-flight loads and remembered failures first: in a burst almost every request ends
        // here, without reading sysfs.
        if let Some(step) = self.join_existing(&mut self.lock(), node, params, retry, parent) {
            return step;
        }
        let counters = &self.inner.counters;
        if let Some(outcome) = settled_outcome(self.inner.kernel.as_ref(), node) {
            counters.already_loaded.fetch_add(1, Ordering::Relaxed);
            return Step::Done(ModuleAnswer {
                outcome,
                merged: false,
            });
        }
        let mut map = self.lock();
        // Someone may have started the load while we read sysfs.
        if let Some(step) = self.join_existing(&mut map, node, params, retry, parent) {
            return step;
        }
        let load = self.spawn_load(node.clone(), params.to_string(), retry);
        mark_waiting(&mut map, parent, Some(&node.name));
        map.in_flight.insert(
            node.name.clone(),
            Flight {
                params: params.to_string(),
                started: Instant::now(),
                waiters: 0,
                waiting_on: None,
                load: load.clone(),
            },
        );
        Step::Await {
            load,
            merged: false,
        }
    }

    /// The step for a module already in flight (or remembered as failed), if it is.
    fn join_existing(
        &self,
        map: &mut MergeMap,
        node: &Arc<ModuleNode>,
        params: &str,
        retry: bool,
        parent: Option<&str>,
    ) -> Option<Step> {
        let counters = &self.inner.counters;
        if let Some(parent) = parent {
            if waits_on(map, &node.name, parent) {
                debug!(module = %node.name, %parent, "dependency cycle: not waiting");
                return Some(Step::Done(ModuleAnswer {
                    outcome: ModuleOutcome::AlreadyLoaded,
                    merged: true,
                }));
            }
        }
        if let Some(flight) = map.in_flight.get(&node.name) {
            let load = flight.load.clone();
            let same_params = flight.params == params;
            // Recorded under this same lock, so two loads deciding to wait on each other at the
            // same instant cannot both miss the cycle.
            mark_waiting(map, parent, Some(&node.name));
            if !same_params {
                return Some(Step::AwaitThenRetry(load));
            }
            counters.merged.fetch_add(1, Ordering::Relaxed);
            return Some(Step::Await { load, merged: true });
        }
        let remembered = self.remembered_failure(map, &node.name, params, retry)?;
        counters.merged.fetch_add(1, Ordering::Relaxed);
        Some(Step::Done(ModuleAnswer {
            outcome: ModuleOutcome::Failed(remembered),
            merged: true,
        }))
    }

    fn remembered_failure(
        &self,
        map: &MergeMap,
        name: &str,
        params: &str,
        retry: bool,
    ) -> Option<Failure> {
        let remembered = map
            .failures
            .get(name)?
            .iter()
            .find(|f| f.params == params)?;
        let fresh = remembered.at.elapsed() < self.failure_window();
        (fresh && !retry).then(|| remembered.failure.clone())
    }

    /// Awaits `load` of `name`; then `parent`'s task (if any) is no longer waiting on anything.
    async fn await_as_child(&self, parent: &Option<String>, load: SharedLoad) -> ModuleOutcome {
        let outcome = load.await;
        mark_waiting(&mut self.lock(), parent.as_deref(), None);
        outcome
    }

    /// Spawns the task that loads `node`; returns its shareable handle. Called under the map lock,
    /// so the task cannot remove its entry before it is inserted.
    fn spawn_load(&self, node: Arc<ModuleNode>, params: String, retry: bool) -> SharedLoad {
        let broker = self.clone();
        let task = tokio::spawn(async move { broker.run_load(node, params, retry).await });
        async move {
            task.await.unwrap_or_else(|err| {
                // Only a panic in the load task gets here; answer it rather than hang waiters.
                ModuleOutcome::Failed(Failure::without_errno(
                    "",
                    format!("load task failed: {err}"),
                ))
            })
        }
        .boxed()
        .shared()
    }

    /// The body of a load task: softdeps before, dependencies, the module, softdeps after.
    async fn run_load(&self, node: Arc<ModuleNode>, params: String, retry: bool) -> ModuleOutcome {
        let me = Some(node.name.clone());
        for soft in &node.pre {
            self.load_soft(soft, retry, &me).await;
        }
        let mut outcome = None;
        for dep in &node.deps {
            let answer = self
                .load_as(dep.clone(), String::new(), retry, me.clone())
                .await;
            if let ModuleOutcome::Failed(failure) = answer.outcome {
                outcome = Some(ModuleOutcome::Failed(failure));
                break;
            }
        }
        let outcome = match outcome {
            Some(dep_failure) => dep_failure,
            None => self.load_self(&node, &params).await,
        };
        if outcome.is_ok() {
            for soft in &node.post {
                self.load_soft(soft, retry, &me).await;
            }
        }
        self.finish(&node.name, &params, &outcome);
        outcome
    }

    async fn load_soft(&self, soft: &Arc<ModuleNode>, retry: bool, me: &Option<String>) {
        let answer = self
            .load_as(soft.clone(), String::new(), retry, me.clone())
            .await;
        if let ModuleOutcome::Failed(f) = answer.outcome {
            info!(module = %soft.name, error = %f.message, "softdep failed (ignored)");
        }
    }

    /// The module's own syscall, unless someone loaded it meanwhile.
    async fn load_self(&self, node: &Arc<ModuleNode>, params: &str) -> ModuleOutcome {
        let kernel = self.inner.kernel.clone();
        if let Some(outcome) = settled_outcome(kernel.as_ref(), node) {
            return outcome;
        }
        let options = join_options(&node.options, params);
        let _permit = self.parallel_slot(&node.name).await;
        self.inner
            .counters
            .load_calls
            .fetch_add(1, Ordering::Relaxed);
        let node = node.clone();
        let outcome =
            tokio::task::spawn_blocking(move || attempt_load(kernel.as_ref(), &node, &options))
                .await;
        outcome.unwrap_or_else(|err| {
            ModuleOutcome::Failed(Failure::without_errno(
                "",
                format!("load thread failed: {err}"),
            ))
        })
    }

    /// One of the `max_parallel_loads` slots, or `None` once the patience has run out.
    async fn parallel_slot(&self, name: &str) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let patience = self.inner.permit_patience;
        match tokio::time::timeout(patience, self.inner.permits.acquire()).await {
            // The semaphore is never closed, so acquire cannot fail.
            Ok(permit) => Some(permit.expect("semaphore open")),
            Err(_) => {
                warn!(
                    module = %name,
                    waited_ms = patience.as_millis() as u64,
                    "every parallel-load slot busy; loading without one"
                );
                None
            }
        }
    }

    /// Removes the in-flight entry and remembers a failure, under one lock.
    fn finish(&self, name: &str, params: &str, outcome: &ModuleOutcome) {
        let mut map = self.lock();
        let waiters = map.in_flight.remove(name).map_or(0, |f| f.waiters);
        if let ModuleOutcome::Failed(failure) = outcome {
            // A dependency's failure is counted and logged under the dependency's own load.
            if failure.module == name {
                self.inner
                    .counters
                    .failed_loads
                    .fetch_add(1, Ordering::Relaxed);
                let error = failure
                    .errno_name
                    .clone()
                    .unwrap_or_else(|| "install-command".into());
                *map.failure_counts
                    .entry((name.to_string(), error.clone()))
                    .or_default() += 1;
                warn!(module = name, %error, message = %failure.message, waiters, "load failed");
            }
            let remembered = map.failures.entry(name.to_string()).or_default();
            remembered.retain(|f| f.params != params);
            remembered.push(RememberedFailure {
                at: Instant::now(),
                params: params.to_string(),
                failure: failure.clone(),
            });
        } else {
            map.failures.remove(name);
        }
    }

    /// Loads in flight now, oldest first.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let map = self.lock();
        let mut list: Vec<InFlight> = map
            .in_flight
            .iter()
            .map(|(name, f)| InFlight {
                module: name.clone(),
                age_ms: f.started.elapsed().as_millis() as u64,
                waiters: f.waiters,
            })
            .collect();
        list.sort_by_key(|f| std::cmp::Reverse(f.age_ms));
        list
    }

    /// Failures counted by module and error.
    pub fn failure_counts(&self) -> Vec<FailureCount> {
        let map = self.lock();
        let mut list: Vec<FailureCount> = map
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

    /// Forgets expired remembered failures (the server calls this now and then so the map does
    /// not grow with every module that ever failed).
    pub fn prune_failures(&self) {
        let window = self.failure_window();
        self.lock().failures.retain(|_, remembered| {
            remembered.retain(|f| f.at.elapsed() < window);
            !remembered.is_empty()
        });
    }

    /// Number of names in flight (tests check it drains to zero).
    pub fn in_flight_count(&self) -> usize {
        self.lock().in_flight.len()
    }
}

/// Records what the load task of `parent` (if any) is waiting on, for [`waits_on`].
fn mark_waiting(map: &mut MergeMap, parent: Option<&str>, name: Option<&str>) {
    if let Some(flight) = parent.and_then(|p| map.in_flight.get_mut(p)) {
        flight.waiting_on = name.map(str::to_string);
    }
}

/// True if the load of `name`, following what each in-flight load is waiting on, leads back to
/// `parent`: waiting would then be a deadlock.
fn waits_on(map: &MergeMap, name: &str, parent: &str) -> bool {
    let mut current = name;
    for _ in 0..=map.in_flight.len() {
        if current == parent {
            return true;
        }
        match map
            .in_flight
            .get(current)
            .and_then(|f| f.waiting_on.as_deref())
        {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

/// Counts a request as waiting on a load for as long as it waits (a disconnect drops it).
struct WaiterGuard {
    broker: Broker,
    name: String,
}

impl WaiterGuard {
    fn new(broker: &Broker, name: &str) -> Self {
        if let Some(f) = broker.lock().in_flight.get_mut(name) {
            f.waiters += 1;
        }
        WaiterGuard {
            broker: broker.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(f) = self.broker.lock().in_flight.get_mut(&self.name) {
            f.waiters = f.waiters.saturating_sub(1);
        }
    }
}
