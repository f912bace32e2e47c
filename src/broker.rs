//! The merge: one in-flight load per module name, shared by every request that wants it.
//!
//! The broker holds a map from canonical module name to a [`Shared`] handle of the spawned task
//! that loads it. A request for a name already in flight clones the handle and awaits the same
//! outcome; dependencies and softdeps go through the same map, so a dependency shared by many
//! modules loads once. A failed load's outcome is remembered for the failure window so late
//! duplicates of the same burst get the true error without another syscall. The window runs
//! from the end of the load or of the last request the failure answered, whichever is later
//! ([`Broker::renew_failures`]), and is judged at the request's arrival: a request that came
//! inside it is answered from it however long it then waited for the modules before this one.
//!
//! What is remembered, and for how long, is narrow on purpose (a remembered failure that is no
//! longer true keeps a device without its driver): only a failure of the module's own load call,
//! under that module's name, never under the modules that depend on it; only an error that
//! another call in the same window would return again ([`is_lasting`]); only for requests with
//! the same parameters and the same plan node (a reload that changed the module's file, options,
//! install command or dependencies makes a new node); never once the module is live or built in
//! (its sysfs state is read before a remembered failure is served); and not past a reload of the
//! configuration ([`Broker::forget_failures`]).
//!
//! Invariants (each one is relied on by a test in `tests/broker.rs`):
//! - The map entry is inserted before the load task can finish and removed by the task itself,
//!   together with recording a failure, under one lock: a request arriving at any instant sees
//!   the entry, the remembered failure, or a module whose sysfs state is final.
//! - A remembered failure is served only after the module's sysfs state said it is neither live
//!   nor built in, so a module loaded since (by another path, by an admin) is never reported as
//!   failed, and a module depending on it loads.
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
use nix::errno::Errno;
use tokio::sync::Semaphore;
// tokio's clock, so tests can move time forward instead of sleeping through the failure window.
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::kernel::{attempt_load, settled_outcome, Kernel};
use crate::model::{Failure, InFlight, Method, ModuleOutcome, Requester};
use crate::plan::{LoadMethod, ModuleNode};
use crate::record::{LoadRecord, Phase};
use crate::recorder::{Answered, Event, LoadTimer, Recorder};

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
    /// The node being loaded: a request for the same module reached another way (an alias with
    /// its own `options`, a reloaded configuration) is a different load, not this one.
    node: Arc<ModuleNode>,
    /// Request parameters the load was started with (canonical, space-joined).
    params: String,
    started: Instant,
    /// Requests currently awaiting this load.
    waiters: u64,
    /// The module this load's task is awaiting right now (a dependency or softdep), if any.
    waiting_on: Option<String>,
    /// Requests this load answers: the one that started it and those merged into it.
    answered: u64,
    load: SharedLoad,
}

struct RememberedFailure {
    at: Instant,
    params: String,
    /// The plan node the load was made for: a request for another node of the same name (after
    /// a reload changed its file, options, install command or dependencies) is not answered
    /// from this failure.
    node: Arc<ModuleNode>,
    failure: Failure,
}

#[derive(Default)]
struct MergeMap {
    in_flight: HashMap<String, Flight>,
    /// Per module, the last lasting failure of its own load call for each parameter set it was
    /// loaded with (a request with other parameters must not be answered with a failure that
    /// was not its own, nor erase one that was).
    failures: HashMap<String, Vec<RememberedFailure>>,
}

struct Inner {
    kernel: Arc<dyn Kernel>,
    /// The failure window in milliseconds; changeable while serving (SIGHUP).
    failure_window_ms: AtomicU64,
    map: Mutex<MergeMap>,
    permits: Semaphore,
    permit_patience: Duration,
    /// Where every event goes, once: the record behind `blame` and the counters behind `status`.
    recorder: Arc<Recorder>,
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
    /// A broker over `kernel`, recording into a fresh root-phase [`Recorder`].
    pub fn new(kernel: Arc<dyn Kernel>, settings: BrokerSettings) -> Self {
        Self::with_recorder(kernel, settings, Arc::new(Recorder::new(Phase::Root)))
    }

    /// A broker over `kernel` that records requests and loads into `recorder`.
    pub fn with_recorder(
        kernel: Arc<dyn Kernel>,
        settings: BrokerSettings,
        recorder: Arc<Recorder>,
    ) -> Self {
        let permits = Semaphore::new(settings.max_parallel_loads.max(1));
        Broker {
            inner: Arc::new(Inner {
                kernel,
                failure_window_ms: AtomicU64::new(settings.failure_window.as_millis() as u64),
                map: Mutex::new(MergeMap::default()),
                permits,
                permit_patience: settings.permit_patience,
                recorder,
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

    /// The record of requests and loads, and the counters behind `status`.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.inner.recorder
    }

    /// Reports `how` a request for `module` was answered.
    fn answered(&self, module: &str, how: Answered) {
        self.inner.recorder.report(Event::Answered { module, how });
    }

    fn lock(&self) -> MutexGuard<'_, MergeMap> {
        // The map is only mutated in short sections that cannot panic half-way; a poisoned lock
        // still holds consistent data, and a boot-path daemon must keep serving.
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings `node` (and its dependencies) into the kernel, merging with any load of the same
    /// name in flight. `params` are the request's validated parameters for this module;
    /// `arrived` is when the request came (a remembered failure answers requests that came
    /// within its window, however long they then waited for other modules); `requester` is who
    /// asked, for the record.
    pub async fn load(
        &self,
        node: Arc<ModuleNode>,
        params: String,
        retry: bool,
        arrived: Instant,
        requester: &Requester,
    ) -> ModuleAnswer {
        self.inner.recorder.report(Event::Requested {
            module: &node.name,
            by: requester,
        });
        self.load_as(node, params, retry, arrived, None).await
    }

    /// `load` of a dependency or softdep by the load task of module `parent`.
    fn load_for(
        &self,
        node: Arc<ModuleNode>,
        retry: bool,
        parent: &str,
    ) -> BoxFuture<'static, ModuleAnswer> {
        let requester = Requester::Dependency {
            of: parent.to_string(),
        };
        self.inner.recorder.report(Event::Requested {
            module: &node.name,
            by: &requester,
        });
        let now = Instant::now();
        self.load_as(node, String::new(), retry, now, Some(parent.to_string()))
    }

    /// `load`, on behalf of the load task of module `parent` when there is one (for cycle checks).
    fn load_as(
        &self,
        node: Arc<ModuleNode>,
        params: String,
        retry: bool,
        arrived: Instant,
        parent: Option<String>,
    ) -> BoxFuture<'static, ModuleAnswer> {
        let broker = self.clone();
        Box::pin(async move {
            loop {
                match broker.decide(&node, &params, retry, arrived, parent.as_deref()) {
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
        arrived: Instant,
        parent: Option<&str>,
    ) -> Step {
        // In-flight loads first: in a burst almost every request ends here, without reading sysfs.
        if let Some(step) = self.join_in_flight(&mut self.lock(), node, params, parent) {
            return step;
        }
        // The module's state before any remembered failure: one loaded since it failed is loaded.
        if let Some(outcome) = settled_outcome(self.inner.kernel.as_ref(), node) {
            self.answered(&node.name, Answered::AlreadyLoaded);
            self.lock().failures.remove(&node.name);
            return Step::Done(ModuleAnswer {
                outcome,
                merged: false,
            });
        }
        let mut map = self.lock();
        // Someone may have started the load while we read sysfs.
        if let Some(step) = self.join_in_flight(&mut map, node, params, parent) {
            return step;
        }
        if let Some(failure) = self.remembered_failure(&map, node, params, retry, arrived) {
            self.answered(&node.name, Answered::FailureWindow);
            return Step::Done(ModuleAnswer {
                outcome: ModuleOutcome::Failed(failure),
                merged: true,
            });
        }
        let load = self.spawn_load(node.clone(), params.to_string(), retry);
        mark_waiting(&mut map, parent, Some(&node.name));
        map.in_flight.insert(
            node.name.clone(),
            Flight {
                node: node.clone(),
                params: params.to_string(),
                started: Instant::now(),
                waiters: 0,
                waiting_on: None,
                answered: 1,
                load: load.clone(),
            },
        );
        self.answered(&node.name, Answered::Direct);
        Step::Await {
            load,
            merged: false,
        }
    }

    /// The step for a module already in flight (or on a dependency cycle), if it is.
    fn join_in_flight(
        &self,
        map: &mut MergeMap,
        node: &Arc<ModuleNode>,
        params: &str,
        parent: Option<&str>,
    ) -> Option<Step> {
        if let Some(parent) = parent {
            if waits_on(map, &node.name, parent) {
                debug!(module = %node.name, %parent, "dependency cycle: not waiting");
                self.answered(&node.name, Answered::Merged);
                return Some(Step::Done(ModuleAnswer {
                    outcome: ModuleOutcome::AlreadyLoaded,
                    merged: true,
                }));
            }
        }
        let flight = map.in_flight.get_mut(&node.name)?;
        let load = flight.load.clone();
        let same_load = flight.params == params && flight.node == *node;
        if same_load {
            flight.answered += 1;
        }
        // Recorded under this same lock, so two loads deciding to wait on each other at the
        // same instant cannot both miss the cycle.
        mark_waiting(map, parent, Some(&node.name));
        if !same_load {
            return Some(Step::AwaitThenRetry(load));
        }
        self.answered(&node.name, Answered::Merged);
        Some(Step::Await { load, merged: true })
    }

    /// The failure remembered for this node and parameter set, for a request that `arrived`
    /// within its window.
    fn remembered_failure(
        &self,
        map: &MergeMap,
        node: &Arc<ModuleNode>,
        params: &str,
        retry: bool,
        arrived: Instant,
    ) -> Option<Failure> {
        let remembered = map
            .failures
            .get(&node.name)?
            .iter()
            .find(|f| f.params == params)?;
        // Equal nodes (`Arc`'s `==` compares the pointer first, then the contents).
        let same_node = remembered.node == *node;
        // A request that came before the failure's last use counts as inside the window.
        let fresh = arrived.saturating_duration_since(remembered.at) < self.failure_window();
        (same_node && fresh && !retry).then(|| remembered.failure.clone())
    }

    /// When the failure remembered for `name` and `params` stops being answered from memory
    /// (its window ends, as things stand now), if one is remembered.
    pub fn failure_deadline(&self, name: &str, params: &str) -> Option<Instant> {
        let map = self.lock();
        let remembered = map
            .failures
            .get(name)?
            .iter()
            .find(|f| f.params == params)?;
        Some(remembered.at + self.failure_window())
    }

    /// Restarts the failure window of the remembered failures of `nodes` (for `params`) at
    /// `at`: the service calls this when a request that needs those modules arrives (with
    /// `only_fresh`: a failure already past its window stays expired) and when a request that
    /// met those failures ends. So a failure is remembered while requests for it keep coming,
    /// and for the window after the last of them has ended, not only after its load: on a
    /// many-CPU machine one burst of requests for a failing module (one per CPU) queues in
    /// udev's workers behind slow loads for longer than the window, and is still one burst.
    pub fn renew_failures<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a Arc<ModuleNode>>,
        params: &str,
        at: Instant,
        only_fresh: bool,
    ) {
        let window = self.failure_window();
        let mut map = self.lock();
        for node in nodes {
            let Some(remembered) = map.failures.get_mut(&node.name) else {
                continue;
            };
            for failure in remembered.iter_mut() {
                let fresh = at.saturating_duration_since(failure.at) < window;
                if failure.params == params && failure.node == *node && (fresh || !only_fresh) {
                    failure.at = failure.at.max(at);
                }
            }
        }
    }

    /// Awaits `load`, one that `parent` depends on; then `parent`'s task (if any) is no longer
    /// waiting on anything.
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
        let mut timer = LoadTimer::default();
        let me = node.name.as_str();
        // libkmod's order: hard dependencies first, then the pre-softdeps, then the module.
        let mut outcome = None;
        for dep in &node.deps {
            let answer = self.load_for(dep.clone(), retry, me).await;
            if let ModuleOutcome::Failed(failure) = answer.outcome {
                outcome = Some(ModuleOutcome::Failed(failure));
                break;
            }
        }
        let outcome = match outcome {
            Some(dep_failure) => dep_failure,
            None => {
                for soft in &node.pre {
                    self.load_soft(soft, retry, me).await;
                }
                timer.deps_done();
                self.load_self(&node, &params, &mut timer).await
            }
        };
        if outcome.is_ok() {
            for soft in &node.post {
                self.load_soft(soft, retry, me).await;
            }
        }
        self.finish(&node, &params, &outcome, &timer);
        outcome
    }

    async fn load_soft(&self, soft: &Arc<ModuleNode>, retry: bool, me: &str) {
        let answer = self.load_for(soft.clone(), retry, me).await;
        if let ModuleOutcome::Failed(f) = answer.outcome {
            info!(module = %soft.name, error = %f.message, "softdep failed (ignored)");
        }
    }

    /// The module's own syscall, unless someone loaded it meanwhile.
    async fn load_self(
        &self,
        node: &Arc<ModuleNode>,
        params: &str,
        timer: &mut LoadTimer,
    ) -> ModuleOutcome {
        let kernel = self.inner.kernel.clone();
        if let Some(outcome) = settled_outcome(kernel.as_ref(), node) {
            return outcome;
        }
        if node.method == LoadMethod::Missing {
            // Nothing to call: it fails as libkmod's insert of a module without a file does.
            return attempt_load(kernel.as_ref(), node, "");
        }
        let params = params.to_string();
        let _permit = self.parallel_slot(&node.name).await;
        timer.call_starts(match &node.method {
            LoadMethod::File(path) => kernel.hand_over(path),
            LoadMethod::Install(_) => Method::Install,
            LoadMethod::Builtin | LoadMethod::Missing => Method::None,
        });
        self.inner
            .recorder
            .report(Event::CallStarted { module: &node.name });
        let node = node.clone();
        let outcome =
            tokio::task::spawn_blocking(move || attempt_load(kernel.as_ref(), &node, &params))
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

    /// Removes the in-flight entry and remembers a lasting failure, under one lock; then
    /// records the load.
    fn finish(
        &self,
        node: &Arc<ModuleNode>,
        params: &str,
        outcome: &ModuleOutcome,
        timer: &LoadTimer,
    ) {
        let load = self.finish_locked(node, params, outcome, timer);
        self.inner.recorder.journal(&node.name, &load);
    }

    /// `finish`'s part under the lock, the load's record included: once the entry is gone, the
    /// record has the load. Returns the record.
    fn finish_locked(
        &self,
        node: &Arc<ModuleNode>,
        params: &str,
        outcome: &ModuleOutcome,
        timer: &LoadTimer,
    ) -> LoadRecord {
        let name = node.name.as_str();
        let mut map = self.lock();
        let flight = map.in_flight.remove(name);
        // The entry is always there (inserted before the task could run); 1 if it ever were not.
        let answered = flight.as_ref().map_or(1, |f| f.answered);
        let waiters = flight.map_or(0, |f| f.waiters);
        let load = timer.finish(outcome, answered);
        let failure = match outcome {
            ModuleOutcome::Failed(failure) => Some(failure),
            _ => None,
        };
        self.inner.recorder.report(Event::LoadEnded {
            module: name,
            load: load.clone(),
            failure,
        });
        let ModuleOutcome::Failed(failure) = outcome else {
            map.failures.remove(name);
            return load;
        };
        // A dependency's failure is counted, logged and remembered under the dependency's own
        // load: a later request for this module checks the dependency's state again.
        let own = failure.module == name;
        // Logged with the load calls (as the recorder counts it): a module without a file made
        // none.
        if own && load.call_start_us.is_some() {
            log_failure(failure, waiters);
        }
        let remembered = map.failures.entry(name.to_string()).or_default();
        remembered.retain(|f| f.params != params);
        if own && is_lasting(failure) {
            remembered.push(RememberedFailure {
                at: Instant::now(),
                params: params.to_string(),
                node: node.clone(),
                failure: failure.clone(),
            });
        }
        load
    }

    /// Forgets every remembered failure: the configuration, module indexes or module files they
    /// came from may have changed (the daemon calls this on every reload).
    pub fn forget_failures(&self) {
        let mut map = self.lock();
        if !map.failures.is_empty() {
            info!(
                modules = map.failures.len(),
                "forgetting remembered load failures"
            );
        }
        map.failures.clear();
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

/// Logs a failure of a module's own load call (the recorder counts it).
fn log_failure(failure: &Failure, waiters: u64) {
    let error = failure.errno_name.as_deref().unwrap_or("install-command");
    let module = failure.module.as_str();
    let remembered = is_lasting(failure);
    let message = &failure.message;
    warn!(module, %error, %message, waiters, remembered, "load failed");
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

/// Errors that another load call of the same module file, with the same options, in the same
/// window would return again: only these are remembered. They come from the module itself or
/// from a check of its file or of the system's policy, none of which a retry changes:
/// - `ENODEV`, `ENXIO`: the module's init found no device it drives (acpi-cpufreq on a VM);
/// - `EOPNOTSUPP`: its init found the hardware lacks a feature (kvm_intel without VT-x);
/// - `ENOEXEC`: not a module for this kernel (ELF checks, version magic, modinfo, corrupt
///   compressed data);
/// - `EINVAL`: a bad parameter value, an invalid module layout, or an init that refused its
///   configuration;
/// - `ENOENT`: an unknown symbol (the dependencies were loaded first), or a file missing from
///   the tree until the next depmod;
/// - `EPERM`, `EACCES`: module loading disabled or locked down, or an LSM (LoadPin, IMA)
///   refusing the file;
/// - `EKEYREJECTED`, `ENOKEY`, `EKEYEXPIRED`, `EKEYREVOKED`, `EBADMSG`, `ENOPKG`, `ELIBBAD`:
///   the module signature check of the same file;
/// - `ENOSYS`: a kernel without module support.
///
/// Everything else is retried by the next request, as udev retries on its next event: `EBUSY`
/// and `EEXIST` (another process's load of the module was in progress or being torn down),
/// `ENOMEM`, `EINTR`, `ETIMEDOUT` (an init that waited for firmware or a device), `EAGAIN`,
/// `ETXTBSY` (the file is being written, as during a package upgrade), `EIO`, any errno not
/// listed, and failed install commands (whatever the admin's command did is not known to last).
pub fn is_lasting(failure: &Failure) -> bool {
    const LASTING: [Errno; 16] = [
        Errno::ENODEV,
        Errno::ENXIO,
        Errno::EOPNOTSUPP,
        Errno::ENOEXEC,
        Errno::EINVAL,
        Errno::ENOENT,
        Errno::EPERM,
        Errno::EACCES,
        Errno::EKEYREJECTED,
        Errno::ENOKEY,
        Errno::EKEYEXPIRED,
        Errno::EKEYREVOKED,
        Errno::EBADMSG,
        Errno::ENOPKG,
        Errno::ELIBBAD,
        Errno::ENOSYS,
    ];
    failure
        .errno
        .is_some_and(|errno| LASTING.iter().any(|&lasting| lasting as i32 == errno))
}
