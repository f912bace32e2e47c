//! Test doubles: a scripted fake kernel and a fixed resolver, for unit tests, integration tests
//! and benchmarks that must run on any machine (this one cannot load modules at all).
//!
//! [`FakeKernel`] records every load call, can fail a module with a given errno, and can *hold*
//! a module's load until the test releases it, so tests wait on real events ("the load call has
//! started") instead of sleeping.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::errno::Errno;

use crate::kernel::{join_options, Kernel, ModuleState};
use crate::model::InstallFailure;
use crate::model::Requester;
use crate::plan::{BlacklistScope, ModuleNode, Plan};
use crate::protocol::{LoadRequest, Request};
use crate::service::Resolve;

#[derive(Default)]
struct FakeState {
    live: HashSet<String>,
    builtin: HashSet<String>,
    /// Modules some other loader is initialising (`initstate` `coming`).
    coming: HashSet<String>,
    /// How often each module's state was asked for.
    state_queries: HashMap<String, usize>,
    failing: HashMap<String, Errno>,
    held: HashSet<String>,
    delay: HashMap<String, Duration>,
    calls: Vec<(String, String)>,
    /// Every load call ever made, including those dropped from `calls` by `forget_calls`.
    total_calls: usize,
    /// Calls per module inside the "syscall" right now, and the most ever at once.
    active: HashMap<String, usize>,
    max_active: HashMap<String, usize>,
}

/// A kernel that loads nothing: it records calls and answers as scripted.
#[derive(Default)]
pub struct FakeKernel {
    state: Mutex<FakeState>,
    changed: Condvar,
}

impl FakeKernel {
    /// A fake kernel with no modules loaded.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeKernel::default())
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the real failure behind a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `name` as live (loaded outside the broker).
    pub fn set_live(&self, name: &str) {
        let mut state = self.lock();
        state.coming.remove(name);
        state.live.insert(name.to_string());
    }

    /// Marks `name` as `coming`: another loader is running its init. Cleared by
    /// [`FakeKernel::set_live`] and [`FakeKernel::remove`].
    pub fn set_coming(&self, name: &str) {
        self.lock().coming.insert(name.to_string());
        self.changed.notify_all();
    }

    /// Blocks until `name`'s state has been asked for at least `n` times.
    pub fn wait_for_state_queries(&self, name: &str, n: usize) {
        let mut state = self.lock();
        while state.state_queries.get(name).copied().unwrap_or(0) < n {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Unloads `name` (as `rmmod` would).
    pub fn remove(&self, name: &str) {
        let mut state = self.lock();
        state.coming.remove(name);
        state.live.remove(name);
    }

    /// Marks `name` as built in.
    pub fn set_builtin(&self, name: &str) {
        self.lock().builtin.insert(name.to_string());
    }

    /// Makes every load of `name` fail with `errno` (until [`FakeKernel::succeed`]).
    pub fn fail(&self, name: &str, errno: Errno) {
        self.lock().failing.insert(name.to_string(), errno);
    }

    /// Makes loads of `name` succeed again.
    pub fn succeed(&self, name: &str) {
        self.lock().failing.remove(name);
    }

    /// Makes each load of `name` take `delay` (for benchmarks; tests use [`FakeKernel::hold`]).
    pub fn set_delay(&self, name: &str, delay: Duration) {
        self.lock().delay.insert(name.to_string(), delay);
    }

    /// Loads of `name` block inside the "syscall" until [`FakeKernel::release`].
    pub fn hold(&self, name: &str) {
        self.lock().held.insert(name.to_string());
    }

    /// Lets held loads of `name` finish.
    pub fn release(&self, name: &str) {
        self.lock().held.remove(name);
        self.changed.notify_all();
    }

    /// Load calls made for `name` so far.
    pub fn calls(&self, name: &str) -> usize {
        self.lock().calls.iter().filter(|(n, _)| n == name).count()
    }

    /// All load calls so far, in order, with their options.
    pub fn call_log(&self) -> Vec<(String, String)> {
        self.lock().calls.clone()
    }

    /// Blocks until at least `n` load calls for `name` have started.
    pub fn wait_for_calls(&self, name: &str, n: usize) {
        self.wait_until(|state| state.calls.iter().filter(|(c, _)| c == name).count() >= n);
    }

    /// Blocks until at least `n` load calls (for any module) have started.
    pub fn wait_for_total_calls(&self, n: usize) {
        self.wait_until(|state| state.total_calls >= n);
    }

    /// Load calls made so far, for any module (not reset by [`FakeKernel::forget_calls`]).
    pub fn total_calls(&self) -> usize {
        self.lock().total_calls
    }

    /// Drops the call log ([`FakeKernel::calls`], [`FakeKernel::call_log`] then count from
    /// here), so a long soak measures the broker's memory rather than the log's.
    pub fn forget_calls(&self) {
        let mut state = self.lock();
        state.calls = Vec::new();
    }

    fn wait_until(&self, done: impl Fn(&FakeState) -> bool) {
        let mut state = self.lock();
        while !done(&state) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The most load calls for `name` that were ever running at the same time.
    pub fn max_concurrent(&self, name: &str) -> usize {
        self.lock().max_active.get(name).copied().unwrap_or(0)
    }

    fn record_and_wait(&self, name: &str, options: &str) -> Result<(), Errno> {
        let mut state = self.lock();
        state.calls.push((name.to_string(), options.to_string()));
        state.total_calls += 1;
        let active = state.active.entry(name.to_string()).or_default();
        *active += 1;
        let now = *active;
        let max = state.max_active.entry(name.to_string()).or_default();
        *max = (*max).max(now);
        self.changed.notify_all();
        let result = self.finish_call(state, name);
        let mut state = self.lock();
        if let Some(active) = state.active.get_mut(name) {
            *active -= 1;
        }
        result
    }

    fn finish_call<'a>(
        &'a self,
        mut state: MutexGuard<'a, FakeState>,
        name: &str,
    ) -> Result<(), Errno> {
        while state.held.contains(name) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(delay) = state.delay.get(name).copied() {
            drop(state);
            std::thread::sleep(delay);
            state = self.lock();
        }
        if let Some(errno) = state.failing.get(name) {
            return Err(*errno);
        }
        if !state.live.insert(name.to_string()) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }
}

impl Kernel for FakeKernel {
    fn state(&self, name: &str) -> ModuleState {
        let mut state = self.lock();
        *state.state_queries.entry(name.to_string()).or_default() += 1;
        self.changed.notify_all();
        if state.builtin.contains(name) {
            ModuleState::Builtin
        } else if state.live.contains(name) {
            ModuleState::Live
        } else if state.coming.contains(name) {
            ModuleState::Coming
        } else {
            ModuleState::Absent
        }
    }

    fn load_file(&self, name: &str, _path: &Path, options: &str) -> Result<(), Errno> {
        self.record_and_wait(name, options)
    }

    fn run_install(
        &self,
        name: &str,
        command: &str,
        configured: &str,
        params: &str,
    ) -> Result<(), InstallFailure> {
        self.record_and_wait(name, &join_options(configured, params))
            .map_err(|e| InstallFailure(format!("{command}: {e}")))
    }
}

/// A resolver answering from a fixed table; unknown targets are `no-match`.
#[derive(Default)]
pub struct FixedResolver {
    plans: HashMap<String, Arc<Plan>>,
    /// Targets naming a blacklisted module: refused under [`BlacklistScope::AliasesAndNames`].
    blacklisted_names: HashSet<String>,
}

impl FixedResolver {
    /// An empty table.
    pub fn new() -> Self {
        FixedResolver::default()
    }

    /// `target` resolves to `plan`.
    pub fn with(mut self, target: &str, plan: Plan) -> Self {
        self.plans.insert(target.to_string(), Arc::new(plan));
        self
    }

    /// `target` resolves to the single module `node`.
    pub fn with_module(self, target: &str, node: Arc<ModuleNode>) -> Self {
        self.with(target, Plan::Load(vec![node]))
    }

    /// `target` names the module `node`, which modprobe.d blacklists: loaded under
    /// [`BlacklistScope::Aliases`], refused (`blacklisted`) under
    /// [`BlacklistScope::AliasesAndNames`].
    pub fn with_blacklisted_name(mut self, target: &str, node: Arc<ModuleNode>) -> Self {
        self.blacklisted_names.insert(target.to_string());
        self.with_module(target, node)
    }
}

impl Resolve for FixedResolver {
    fn resolve<'a>(
        &'a self,
        target: &'a str,
        blacklist: BlacklistScope,
    ) -> BoxFuture<'a, Result<Arc<Plan>, String>> {
        let plan = match self.plans.get(target) {
            Some(plan)
                if blacklist == BlacklistScope::AliasesAndNames
                    && self.blacklisted_names.contains(target) =>
            {
                Arc::new(Plan::Blacklisted(plan.module_names()))
            }
            Some(plan) => plan.clone(),
            None => Arc::new(Plan::NoMatch),
        };
        Box::pin(async move { Ok(plan) })
    }
}

/// A module node loaded from a made-up file, with the given hard dependencies.
pub fn node(name: &str, deps: Vec<Arc<ModuleNode>>) -> Arc<ModuleNode> {
    let mut node = ModuleNode::file(name, format!("/fake/{name}.ko"));
    node.deps = deps;
    Arc::new(node)
}

/// Waits (off the async threads) until `kernel` has seen `n` load calls for `name`.
pub async fn calls_started(kernel: &Arc<FakeKernel>, name: &str, n: usize) {
    let (kernel, name) = (kernel.clone(), name.to_string());
    tokio::task::spawn_blocking(move || kernel.wait_for_calls(&name, n))
        .await
        .expect("waiting thread");
}

/// The request `modbroker load --udev TARGET` sends for a uevent of `subsystem` at `devpath`.
pub fn udev_request(target: &str, subsystem: &str, devpath: &str) -> Request {
    Request::Load(
        LoadRequest::new(vec![target.to_string()])
            .blacklist_names(true)
            .origin(Some(Requester::Udev {
                subsystem: Some(subsystem.into()),
                devpath: Some(devpath.into()),
            })),
    )
}
