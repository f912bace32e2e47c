//! From a decoded request to its reply: validate each target, resolve it, hand the plan to the
//! broker, and assemble exactly one result per target.
//!
//! The service sits between the server (which knows sockets) and the resolver and broker (which
//! know libkmod and the kernel). It sees the resolver only through the small [`Resolve`] trait, so
//! tests drive it with a fixed table instead of libkmod.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};

use crate::broker::{Broker, ModuleAnswer};
use crate::model::OutcomeKind;
use crate::model::{Failure, ModuleOutcome, Requester};
use crate::plan::{BlacklistScope, LoadMethod, ModuleNode, Plan};
use crate::protocol::{
    LoadRequest, PlanKind, Reply, Request, ResolveResult, ResolvedMethod, ResolvedModule,
    StatusReport, TargetResult,
};
use crate::recorder::Event;
use crate::skip::{self, SkipMarkers};
use crate::target::{validate_params, validate_target};

/// Something that turns a validated target into a plan (libkmod in the daemon, a table in tests).
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `target`, refusing blacklisted modules as `blacklist` says; the error is a
    /// human-readable reason.
    fn resolve<'a>(
        &'a self,
        target: &'a str,
        blacklist: BlacklistScope,
    ) -> BoxFuture<'a, Result<Arc<Plan>, String>>;

    /// How many times the resolver reloaded its indexes and configuration; a change makes the
    /// broker forget its remembered failures. Resolvers that never reload keep the default.
    fn reload_count(&self) -> u64 {
        0
    }
}

/// Serves decoded requests. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    resolver: Arc<dyn Resolve>,
    broker: Broker,
    started: Instant,
    /// The resolver's reload count when the broker's failure memory was last made to match it.
    reloads_seen: Arc<AtomicU64>,
    /// `wait: false` targets accepted and not yet done (still being resolved, or loading): a
    /// shutdown waits for them as for loads in flight.
    background: Arc<AtomicU64>,
    /// Where udev learns which uevents need no client (the daemon's; none in tests).
    skips: Option<Arc<SkipMarkers>>,
}

impl Service {
    /// A service resolving with `resolver` and loading through `broker`.
    pub fn new(resolver: Arc<dyn Resolve>, broker: Broker) -> Self {
        Service {
            reloads_seen: Arc::new(AtomicU64::new(resolver.reload_count())),
            background: Arc::default(),
            resolver,
            broker,
            started: Instant::now(),
            skips: None,
        }
    }

    /// Leaves skip markers for udev (see [`crate::skip`]) in `markers`.
    pub fn with_skip_markers(mut self, markers: Arc<SkipMarkers>) -> Self {
        self.skips = Some(markers);
        self
    }

    /// The resolver's reload count, for [`SkipMarkers::open`].
    pub fn resolver_generation(&self) -> u64 {
        self.resolver.reload_count()
    }

    /// After a forced reload (SIGHUP): failures remembered and skip markers made from the old
    /// indexes and configuration no longer hold.
    pub fn forget_after_reload(&self) {
        let now = self.resolver.reload_count();
        self.reloads_seen.store(now, Ordering::Release);
        self.broker.forget_failures();
        if let Some(skips) = &self.skips {
            skips.invalidate(now);
        }
    }

    /// After a resolution: if the resolver reloaded (a new depmod or modprobe.d, noticed on its
    /// own or forced by SIGHUP), failures remembered from before may no longer hold. Checked
    /// before the broker sees the plan, so no stale failure is served in between.
    fn forget_failures_after_reload(&self) {
        let now = self.resolver.reload_count();
        if self.reloads_seen.swap(now, Ordering::AcqRel) != now {
            self.broker.forget_failures();
            if let Some(skips) = &self.skips {
                skips.invalidate(now);
            }
        }
    }

    /// The broker (for status and housekeeping).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// `wait: false` targets accepted and not yet done: a shutdown waits for these too.
    pub fn background_count(&self) -> u64 {
        self.background.load(Ordering::Acquire)
    }

    /// Whether loads are in flight or `wait: false` targets are still pending: work a shutdown
    /// or an idle exit must wait for.
    pub fn has_work(&self) -> bool {
        self.broker.in_flight_count() > 0 || self.background_count() > 0
    }

    /// Serves one request.
    pub async fn handle(&self, request: Request) -> Reply {
        self.broker.recorder().report(Event::Line);
        match request {
            Request::Load(load) => Reply::results(self.load(load).await),
            Request::Resolve(targets) => {
                Reply::resolved(join_all(targets.iter().map(|t| self.resolve_one(t))).await)
            }
            Request::Status => Reply::status(self.status()),
        }
    }

    async fn load(&self, request: LoadRequest) -> Vec<TargetResult> {
        let targets = request.targets.len() as u64;
        self.broker.recorder().report(Event::Targets(targets));
        let params = match validate_params(&request.params) {
            Ok(params) => params,
            Err(err) => {
                let message = err.to_string();
                return request
                    .targets
                    .iter()
                    .map(|t| invalid(t, &message))
                    .collect();
            }
        };
        let timeout = request.timeout_ms.map(Duration::from_millis);
        let how = TargetLoad {
            retry: request.retry,
            blacklist: BlacklistScope::names_too(request.blacklist_names),
            // One copy per request, shared by its targets.
            requester: Arc::new(request.origin.unwrap_or_else(Requester::this_process)),
        };
        let jobs = request.targets.iter().map(|target| {
            let this = self.clone();
            let (target, params, how) = (target.clone(), params.clone(), how.clone());
            async move {
                if !request.wait {
                    // Refused at once, not `queued` for a load that will never be.
                    if let Err(err) = validate_target(&target) {
                        return invalid(&target, &err.to_string());
                    }
                    let queued = queued(&target);
                    let background = BackgroundGuard::new(&this.background);
                    tokio::spawn(async move {
                        this.load_target(&target, &params, how).await;
                        drop(background);
                    });
                    return queued;
                }
                let started = Instant::now();
                match timeout {
                    None => this.load_target(&target, &params, how).await,
                    Some(limit) => {
                        tokio::time::timeout(limit, this.load_target(&target, &params, how))
                            .await
                            .unwrap_or_else(|_| timed_out(&target, started))
                    }
                }
            }
        });
        join_all(jobs).await
    }

    /// Loads one target; never fails to produce a result.
    pub async fn load_target(&self, target: &str, params: &str, how: TargetLoad) -> TargetResult {
        let started = Instant::now();
        // tokio's clock, as the broker's failure window (tests move it forward).
        let arrived = tokio::time::Instant::now();
        if let Err(err) = validate_target(target) {
            return invalid(target, &err.to_string());
        }
        // Read before resolving: a plan is never older than this count (skip markers).
        let generation = self.resolver.reload_count();
        let plan = match self.resolver.resolve(target, how.blacklist).await {
            Ok(plan) => plan,
            Err(message) => return resolve_failed(target, message, started),
        };
        self.forget_failures_after_reload();
        let answers = match plan.as_ref() {
            Plan::Load(nodes) => {
                self.load_in_lookup_order(nodes, params, how.retry, arrived, &how.requester)
                    .await
            }
            _ => Vec::new(),
        };
        let result = plan_result(target, &plan, &answers, started);
        if params.is_empty() {
            self.leave_skip_marker(target, &how.requester, &plan, &answers, generation);
        }
        result
    }

    /// A udev request that bought nothing: udev need not exec the client for the next one while
    /// things stay as they are (see [`crate::skip`]). A failed module counts only while its
    /// failure is remembered for longer than [`skip::FAILURE_MARGIN`].
    fn leave_skip_marker(
        &self,
        target: &str,
        requester: &Requester,
        plan: &Plan,
        answers: &[ModuleAnswer],
        generation: u64,
    ) {
        let Some(skips) = &self.skips else { return };
        let Some(key) = skip::marker_key(target, requester) else {
            return;
        };
        let Some(watch) = skip::modules_to_watch(plan, answers) else {
            return;
        };
        let soon = tokio::time::Instant::now() + skip::FAILURE_MARGIN;
        let remembered = |module: &&str| {
            self.broker
                .failure_deadline(module, "")
                .is_some_and(|end| end > soon)
        };
        if watch.failed.iter().all(remembered) {
            skips.note(key, &watch, generation);
        }
    }

    /// The daemon serves (the server calls this every progress interval): the skip markers of
    /// failed modules resolve again if a client had found the daemon unresponsive.
    pub fn skip_markers_serving(&self) {
        if let Some(skips) = &self.skips {
            let now = tokio::time::Instant::now();
            skips.serving(now, |module| self.broker.failure_deadline(module, ""));
        }
    }

    /// Keeps failed modules' skip-marker directories no longer than their failure windows; runs
    /// for the daemon's life (the daemon spawns it).
    pub async fn keep_skip_markers_swept(self) {
        let Some(skips) = self.skips.clone() else {
            return;
        };
        loop {
            skips.failures_to_sweep().await;
            tokio::time::sleep(skip::SWEEP_INTERVAL).await;
            let now = tokio::time::Instant::now();
            skips.sweep(now, |module| self.broker.failure_deadline(module, ""));
        }
    }

    /// Loads the modules one target matched one after another, in lookup order, each through
    /// the broker's merge, as modprobe and udev's builtin do (one probe per module of libkmod's
    /// lookup list): which of two drivers binds a device must not depend on timing. A failure
    /// does not stop the next module; each answer is kept.
    async fn load_in_lookup_order(
        &self,
        nodes: &[Arc<ModuleNode>],
        params: &str,
        retry: bool,
        arrived: tokio::time::Instant,
        requester: &Requester,
    ) -> Vec<ModuleAnswer> {
        self.broker.renew_failures(nodes, params, arrived, true);
        let mut answers = Vec::with_capacity(nodes.len());
        for node in nodes {
            let answer =
                self.broker
                    .load(node.clone(), params.to_string(), retry, arrived, requester);
            answers.push(answer.await);
        }
        let failed = nodes
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| matches!(answer.outcome, ModuleOutcome::Failed(_)))
            .map(|(node, _)| node);
        let ended = tokio::time::Instant::now();
        self.broker.renew_failures(failed, params, ended, false);
        answers
    }

    async fn resolve_one(&self, target: &str) -> ResolveResult {
        if let Err(err) = validate_target(target) {
            return resolve_result(target, PlanKind::Invalid, Some(err.to_string()));
        }
        match self.resolver.resolve(target, BlacklistScope::Aliases).await {
            Err(message) => resolve_result(target, PlanKind::Error, Some(message)),
            Ok(plan) => describe_plan(target, &plan),
        }
    }

    fn status(&self) -> StatusReport {
        let recorder = self.broker.recorder();
        let t = recorder.totals();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            requests: t.requests,
            targets: t.targets,
            merged: t.merged,
            already_loaded: t.already_loaded,
            load_calls: t.load_calls,
            failed_loads: t.failed_loads,
            failures: recorder.failure_counts(),
            in_flight: self.broker.in_flight(),
        }
    }
}

/// How one target of a load request is loaded.
#[derive(Debug, Clone)]
pub struct TargetLoad {
    /// Bypass the failure window.
    pub retry: bool,
    /// Whom the blacklist refuses.
    pub blacklist: BlacklistScope,
    /// Who asked, for the record.
    pub requester: Arc<Requester>,
}

impl Default for TargetLoad {
    /// No retry, the blacklist for aliases, asked by this process.
    fn default() -> Self {
        TargetLoad {
            retry: false,
            blacklist: BlacklistScope::default(),
            requester: Arc::new(Requester::this_process()),
        }
    }
}

/// The result for `target` given its plan and, for `Plan::Load`, one answer per top module.
pub fn plan_result(
    target: &str,
    plan: &Plan,
    answers: &[ModuleAnswer],
    started: Instant,
) -> TargetResult {
    let (outcome, failure, merged) = match plan {
        Plan::NoMatch => (OutcomeKind::NoMatch, None, false),
        Plan::Blacklisted(_) => (OutcomeKind::Blacklisted, None, false),
        Plan::Load(_) => combine(answers),
    };
    TargetResult {
        target: target.to_string(),
        outcome,
        modules: plan.module_names(),
        failure,
        merged,
        elapsed_us: started.elapsed().as_micros() as u64,
    }
}

/// Folds per-module answers into one target outcome: the first failure wins; otherwise
/// `loaded` if anything was loaded now, else `already-loaded`, or `builtin` if all were built in.
/// Merged means no answer needed a syscall of this request's own.
fn combine(answers: &[ModuleAnswer]) -> (OutcomeKind, Option<Failure>, bool) {
    let merged = !answers.is_empty() && answers.iter().all(|a| a.merged);
    if let Some(failure) = answers.iter().find_map(|a| match &a.outcome {
        ModuleOutcome::Failed(f) => Some(f.clone()),
        _ => None,
    }) {
        return (OutcomeKind::Failed, Some(failure), merged);
    }
    let all = |want: &ModuleOutcome| answers.iter().all(|a| &a.outcome == want);
    let kind = if all(&ModuleOutcome::Builtin) {
        OutcomeKind::Builtin
    } else if answers.iter().any(|a| a.outcome == ModuleOutcome::Loaded) {
        OutcomeKind::Loaded
    } else {
        OutcomeKind::AlreadyLoaded
    };
    (kind, None, merged)
}

/// A `resolve` result without modules (yet).
fn resolve_result(target: &str, plan: PlanKind, message: Option<String>) -> ResolveResult {
    ResolveResult {
        target: target.to_string(),
        plan,
        modules: Vec::new(),
        message,
    }
}

fn describe_plan(target: &str, plan: &Plan) -> ResolveResult {
    match plan {
        Plan::NoMatch => resolve_result(target, PlanKind::NoMatch, None),
        Plan::Blacklisted(names) => {
            let message = format!("blacklisted: {}", names.join(", "));
            resolve_result(target, PlanKind::Blacklisted, Some(message))
        }
        Plan::Load(nodes) => {
            let mut result = resolve_result(target, PlanKind::Load, None);
            for node in nodes {
                for module in node.load_order() {
                    if !result.modules.iter().any(|m| m.name == module.name) {
                        result.modules.push(describe_module(module));
                    }
                }
            }
            result
        }
    }
}

fn describe_module(node: &ModuleNode) -> ResolvedModule {
    let (method, detail) = match &node.method {
        LoadMethod::File(path) => (ResolvedMethod::File, Some(path.display().to_string())),
        LoadMethod::Builtin => (ResolvedMethod::Builtin, None),
        LoadMethod::Install(command) => (ResolvedMethod::Install, Some(command.clone())),
        LoadMethod::Missing => (ResolvedMethod::Missing, None),
    };
    ResolvedModule {
        name: node.name.clone(),
        method,
        detail,
        options: node.options.clone(),
    }
}

/// A result carrying no modules: `outcome` with, when given, a failure message. `started`
/// (when known) gives the elapsed time. Shared with the direct loader.
pub(crate) fn bare_result(
    target: &str,
    outcome: OutcomeKind,
    message: Option<String>,
    started: Option<Instant>,
) -> TargetResult {
    TargetResult {
        target: target.to_string(),
        outcome,
        modules: Vec::new(),
        failure: message.map(|m| Failure::without_errno("", m)),
        merged: false,
        elapsed_us: started.map_or(0, |s| s.elapsed().as_micros() as u64),
    }
}

fn invalid(target: &str, message: &str) -> TargetResult {
    bare_result(
        target,
        OutcomeKind::Invalid,
        Some(message.to_string()),
        None,
    )
}

fn queued(target: &str) -> TargetResult {
    bare_result(target, OutcomeKind::Queued, None, None)
}

fn timed_out(target: &str, started: Instant) -> TargetResult {
    let message = "timed out waiting; the load goes on".to_string();
    bare_result(target, OutcomeKind::TimedOut, Some(message), Some(started))
}

fn resolve_failed(target: &str, message: String, started: Instant) -> TargetResult {
    let message = format!("cannot resolve: {message}");
    bare_result(target, OutcomeKind::Failed, Some(message), Some(started))
}

/// Counts one `wait: false` target from its acceptance until its task ends (or is dropped).
struct BackgroundGuard(Arc<AtomicU64>);

impl BackgroundGuard {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        BackgroundGuard(count.clone())
    }
}

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
