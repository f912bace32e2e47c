//! Resolution of targets (module names, modaliases) into [`crate::plan::Plan`]s with libkmod.
//!
//! [`KmodResolver`] owns one libkmod context and answers "what must be loaded for this target?"
//! the way `modprobe` would: lookup (aliases, `modules.alias`, `modules.builtin`, `modules.dep`,
//! `modprobe.d`), blacklist (for alias lookups, and for names too with `-b`: [`BlacklistScope`]),
//! install commands, options, hard dependencies in load order and softdeps. Answers are cached
//! per target and blacklist scope, and nodes are shared per module name and options (a module
//! reached through an alias with `options` of its own has its own node); both
//! caches are dropped when libkmod reports that its indexes or configuration changed (checked at
//! most once per second) or on [`KmodResolver::reload`].
//!
//! A libkmod context is not thread-safe, so [`KmodResolver`] is not `Send`. [`ResolverHandle`]
//! runs one on a dedicated thread and serves async callers over a channel.
//!
//! The libkmod calls themselves are wrapped in [`crate::kmod`]; the `install` lines the
//! install runner reads are in [`crate::install_config`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::kmod::{ContextSpec, Ctx, ModList, Module, ResolverError};
use crate::plan::{BlacklistScope, LoadMethod, ModuleNode, Plan};

/// How often, at most, libkmod is asked whether its indexes or configuration changed.
const DEFAULT_VALIDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on cached plans: when reached, the plan cache is emptied (it refills on demand).
const MAX_CACHED_PLANS: usize = 4096;

/// Shared nodes by (module name, options): see [`NodeBuilder`].
type NodeMemo = HashMap<(String, String), Arc<ModuleNode>>;

/// Resolves targets into [`Plan`]s with one libkmod context. Not `Send`: use it from one thread
/// (see [`ResolverHandle`]).
pub struct KmodResolver {
    spec: ContextSpec,
    ctx: Ctx,
    /// Whether `kmod_load_resources` succeeded; if not, the context is recreated at each check.
    resources_loaded: bool,
    validate_interval: Duration,
    last_validated: Instant,
    /// Plans by target and blacklist scope.
    plans: HashMap<(String, BlacklistScope), Arc<Plan>>,
    nodes: NodeMemo,
    /// Reloads so far (forced or noticed), shared with the handles: whatever was learnt from the
    /// old indexes and configuration (the broker's remembered failures) is stale once it moves.
    reloads: Arc<AtomicU64>,
}

impl std::fmt::Debug for KmodResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmodResolver")
            .field("module_dir", &self.spec.module_dir)
            .field("cached_plans", &self.plans.len())
            .field("cached_nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl KmodResolver {
    /// A resolver for the modules in `module_dir` (e.g. `/lib/modules/$(uname -r)`), reading
    /// configuration from `config_dirs`, or from libkmod's defaults (`/etc/modprobe.d`, ...) when
    /// `None`.
    pub fn new(module_dir: &Path, config_dirs: Option<&[PathBuf]>) -> Result<Self, ResolverError> {
        let spec = ContextSpec::new(module_dir, config_dirs)?;
        let (ctx, resources_loaded) = spec.create()?;
        Ok(KmodResolver {
            spec,
            ctx,
            resources_loaded,
            validate_interval: DEFAULT_VALIDATE_INTERVAL,
            last_validated: Instant::now(),
            plans: HashMap::new(),
            nodes: HashMap::new(),
            reloads: Arc::default(),
        })
    }

    /// Sets how often, at most, indexes and configuration are checked for changes (default 1 s;
    /// zero checks before every resolution).
    pub fn set_validate_interval(&mut self, interval: Duration) {
        self.validate_interval = interval;
    }

    /// Forces a new libkmod context (indexes and configuration re-read) and empties the caches.
    /// On error the previous context stays in use.
    pub fn reload(&mut self) -> Result<(), ResolverError> {
        let (ctx, loaded) = self.spec.create()?;
        self.ctx = ctx;
        self.resources_loaded = loaded;
        self.plans.clear();
        self.nodes.clear();
        self.last_validated = Instant::now();
        self.reloads.fetch_add(1, Ordering::Release);
        info!(dir = %self.spec.module_dir.display(), "module indexes and configuration reloaded");
        Ok(())
    }

    /// How many times the indexes and configuration were reloaded (see [`KmodResolver::reload`]).
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }

    /// What loading `target` (a module name or a modalias) takes, as `modprobe TARGET`: the
    /// blacklist applies to aliases only. See [`KmodResolver::resolve_with`].
    pub fn resolve(&mut self, target: &str) -> Result<Arc<Plan>, ResolverError> {
        self.resolve_with(target, BlacklistScope::Aliases)
    }

    /// What loading `target` takes with the blacklist applied as `blacklist` says. Repeated
    /// targets get the same `Arc` until indexes or configuration change.
    pub fn resolve_with(
        &mut self,
        target: &str,
        blacklist: BlacklistScope,
    ) -> Result<Arc<Plan>, ResolverError> {
        self.revalidate();
        let key = (target.to_string(), blacklist);
        if let Some(plan) = self.plans.get(&key) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(self.build_plan(target, blacklist)?);
        debug!(target, ?blacklist, plan = ?plan.module_names(), "resolved");
        if self.plans.len() >= MAX_CACHED_PLANS {
            self.plans.clear();
        }
        self.plans.insert(key, Arc::clone(&plan));
        Ok(plan)
    }

    /// Reloads if libkmod says indexes or configuration changed; at most once per interval.
    fn revalidate(&mut self) {
        if self.last_validated.elapsed() < self.validate_interval {
            return;
        }
        self.last_validated = Instant::now();
        if self.resources_loaded && self.ctx.is_valid() {
            return;
        }
        if let Err(e) = self.reload() {
            warn!("keeping the current libkmod context: {e}");
        }
    }

    fn build_plan(
        &mut self,
        target: &str,
        blacklist: BlacklistScope,
    ) -> Result<Plan, ResolverError> {
        let matches = self.ctx.lookup(target)?;
        if matches.is_empty() {
            return Ok(Plan::NoMatch);
        }
        let (kept, refused) = self.apply_blacklist(target, &matches, blacklist)?;
        if kept.is_empty() {
            return Ok(Plan::Blacklisted(
                refused.iter().map(Module::name).collect(),
            ));
        }
        let nodes = NodeBuilder::new(&mut self.nodes).modules(kept, &mut false);
        Ok(if nodes.is_empty() {
            Plan::NoMatch
        } else {
            Plan::Load(nodes)
        })
    }

    /// Splits `matches` into the modules to load and those the blacklist refuses, in lookup
    /// order, deciding per module as `kmod_module_probe_insert_module` does.
    fn apply_blacklist(
        &self,
        target: &str,
        matches: &ModList,
        blacklist: BlacklistScope,
    ) -> Result<(Vec<Module>, Vec<Module>), ResolverError> {
        let allowed = self
            .ctx
            .not_blacklisted(matches)
            .map_err(|errno| ResolverError::Lookup {
                target: target.to_string(),
                errno,
            })?
            .names();
        let refused = |m: &Module| {
            !allowed.contains(&m.name())
                && (blacklist == BlacklistScope::AliasesAndNames || self.ctx.made_for_alias(m))
        };
        Ok(matches.iter().partition(|m| !refused(m)))
    }
}

/// How `m` gets loaded; [`LoadMethod::Missing`] if it cannot be (no file and not builtin).
///
/// Its modprobe.d `install` command, unless `m` has softdeps: libkmod then inserts the module
/// and ignores the command (`__kmod_module_fill_softdep` sets `ignorecmd` when a softdep
/// resolved to a module), for a target, a dependency and a softdep alike.
///
/// A file in `modules.dep` wins over the running kernel's `/sys/module` state, which is racy
/// (a module being inserted briefly looks builtin) and must not end up in a cached plan.
fn load_method(m: &Module, has_softdeps: bool) -> LoadMethod {
    if let Some(cmd) = m.install_command().filter(|_| !has_softdeps) {
        return LoadMethod::Install(cmd);
    }
    if let Some(path) = m.path() {
        return LoadMethod::File(path);
    }
    if m.is_builtin() {
        return LoadMethod::Builtin;
    }
    debug!(module = %m.name(), "module has no file and is not builtin");
    LoadMethod::Missing
}

/// Builds [`ModuleNode`] trees, cutting cycles (a module already on the current path becomes a
/// childless node marked [`ModuleNode::cycle`]) and sharing nodes through the resolver's memo.
///
/// The memo is keyed by module name and options. Everything else in a node (install command,
/// softdeps, dependencies) follows from the name, but options also follow from the alias libkmod
/// made the module for (`options ALIAS ...`), so a module reached through such an alias gets a
/// node of its own, and every way of reaching a module with the same options shares one.
///
/// Only nodes with no cycle cut anywhere below them are memoized: such a tree is the same
/// whatever path leads to it. A tree with a cut depends on where the cycle was entered (like
/// libkmod's probe list), so it is rebuilt for each target (plans are still cached).
struct NodeBuilder<'a> {
    memo: &'a mut NodeMemo,
    /// Names of the modules being built, outermost first.
    path: Vec<String>,
}

impl<'a> NodeBuilder<'a> {
    fn new(memo: &'a mut NodeMemo) -> Self {
        NodeBuilder {
            memo,
            path: Vec::new(),
        }
    }

    /// Nodes for every module of `list`; sets `cut` if a cycle was cut below.
    fn list(&mut self, list: &ModList, cut: &mut bool) -> Vec<Arc<ModuleNode>> {
        self.modules(list.iter(), cut)
    }

    /// Nodes for each of `modules` that can be loaded; sets `cut` if a cycle was cut below.
    fn modules(
        &mut self,
        modules: impl IntoIterator<Item = Module>,
        cut: &mut bool,
    ) -> Vec<Arc<ModuleNode>> {
        modules
            .into_iter()
            .filter_map(|m| self.node(&m, cut))
            .collect()
    }

    fn node(&mut self, m: &Module, cut: &mut bool) -> Option<Arc<ModuleNode>> {
        let key = (m.name(), m.options());
        if let Some(node) = self.memo.get(&key) {
            return Some(Arc::clone(node));
        }
        let (name, options) = key;
        let (pre, post) = m.softdeps();
        let method = load_method(m, !pre.is_empty() || !post.is_empty());
        if self.path.contains(&name) {
            debug!(module = %name, path = ?self.path, "dependency cycle cut");
            *cut = true;
            return Some(Arc::new(ModuleNode {
                cycle: true,
                method,
                options,
                ..ModuleNode::file(&name, "")
            }));
        }
        self.path.push(name.clone());
        let mut sub_cut = false;
        let deps = self.list(&m.dependencies(), &mut sub_cut);
        let pre = self.list(&pre, &mut sub_cut);
        let post = self.list(&post, &mut sub_cut);
        self.path.pop();
        let node = Arc::new(ModuleNode {
            name,
            method,
            options,
            deps,
            pre,
            post,
            cycle: false,
        });
        if sub_cut {
            *cut = true;
        } else {
            let key = (node.name.clone(), node.options.clone());
            self.memo.insert(key, Arc::clone(&node));
        }
        Some(node)
    }
}

/// A request to the resolver thread.
enum Request {
    Resolve(
        String,
        BlacklistScope,
        oneshot::Sender<Result<Arc<Plan>, ResolverError>>,
    ),
    Reload(oneshot::Sender<Result<(), ResolverError>>),
}

/// A cheap, cloneable, thread-safe handle to a [`KmodResolver`] running on its own thread
/// ("modbroker-kmod"). The thread exits when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct ResolverHandle {
    tx: mpsc::Sender<Request>,
    /// Plans recently answered by the thread, served without a cross-thread round trip. During
    /// coldplug every CPU sends the same modalias within milliseconds; one trip to the libkmod
    /// thread per target and second is enough. Entries live [`FRONT_CACHE_TTL`], so an index
    /// change (which the thread checks for at most once a second) shows within about 2 s.
    front: Arc<Mutex<FrontCache>>,
    /// The thread's reload count (see [`KmodResolver::reload_count`]).
    reloads: Arc<AtomicU64>,
}

/// (Target, blacklist scope) → (when the thread answered, its plan).
type FrontCache = HashMap<(String, BlacklistScope), (Instant, Arc<Plan>)>;

/// How long the handle's front cache serves a plan without asking the thread again.
pub const FRONT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Front cache entries kept at most (then the cache is emptied and refilled).
const FRONT_CACHE_MAX: usize = 4096;

impl ResolverHandle {
    /// Starts the resolver thread; returns once its [`KmodResolver`] exists (or failed to).
    /// Blocks briefly (context creation), so call it before or outside the async hot path.
    pub fn spawn(
        module_dir: PathBuf,
        config_dirs: Option<Vec<PathBuf>>,
    ) -> Result<Self, ResolverError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("modbroker-kmod".to_string())
            .spawn(
                move || match KmodResolver::new(&module_dir, config_dirs.as_deref()) {
                    Ok(resolver) => {
                        let _ = ready_tx.send(Ok(resolver.reloads.clone()));
                        serve(resolver, rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )
            .map_err(ResolverError::Spawn)?;
        let reloads = ready_rx.recv().map_err(|_| ResolverError::ThreadGone)??;
        Ok(ResolverHandle {
            tx,
            front: Arc::default(),
            reloads,
        })
    }

    /// How many times the thread reloaded indexes and configuration, forced or noticed. Read
    /// after a resolution, it already counts a reload that resolution caused.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }

    /// Resolves `target` on the resolver thread as `modprobe TARGET` (see
    /// [`KmodResolver::resolve`]).
    pub async fn resolve(&self, target: &str) -> Result<Arc<Plan>, ResolverError> {
        self.resolve_with(target, BlacklistScope::Aliases).await
    }

    /// Resolves `target` on the resolver thread (see [`KmodResolver::resolve_with`]).
    pub async fn resolve_with(
        &self,
        target: &str,
        blacklist: BlacklistScope,
    ) -> Result<Arc<Plan>, ResolverError> {
        let key = (target.to_string(), blacklist);
        if let Some(plan) = self.cached(&key) {
            return Ok(plan);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Resolve(target.to_string(), blacklist, reply))?;
        let plan = rx.await.map_err(|_| ResolverError::ThreadGone)??;
        let mut front = self.front_cache();
        if front.len() >= FRONT_CACHE_MAX {
            front.clear();
        }
        front.insert(key, (Instant::now(), plan.clone()));
        Ok(plan)
    }

    fn cached(&self, key: &(String, BlacklistScope)) -> Option<Arc<Plan>> {
        let front = self.front_cache();
        let (at, plan) = front.get(key)?;
        (at.elapsed() < FRONT_CACHE_TTL).then(|| plan.clone())
    }

    fn front_cache(&self) -> std::sync::MutexGuard<'_, FrontCache> {
        // Plain data; a panic elsewhere cannot leave it inconsistent.
        self.front.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forces a reload on the resolver thread (see [`KmodResolver::reload`]), e.g. on SIGHUP.
    pub async fn reload(&self) -> Result<(), ResolverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Reload(reply))?;
        let reloaded = rx.await.map_err(|_| ResolverError::ThreadGone)?;
        self.front_cache().clear();
        reloaded
    }

    fn send(&self, request: Request) -> Result<(), ResolverError> {
        self.tx.send(request).map_err(|_| ResolverError::ThreadGone)
    }
}

/// The resolver thread's loop: serves requests until every handle is dropped.
fn serve(mut resolver: KmodResolver, rx: mpsc::Receiver<Request>) {
    for request in rx {
        // A dropped reply receiver (caller gave up) is not an error.
        match request {
            Request::Resolve(target, blacklist, reply) => {
                let _ = reply.send(resolver.resolve_with(&target, blacklist));
            }
            Request::Reload(reply) => {
                let _ = reply.send(resolver.reload());
            }
        }
    }
    debug!("all resolver handles dropped; resolver thread exiting");
}
