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

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kmod_sys as ffi;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::plan::{BlacklistScope, LoadMethod, ModuleNode, Plan};

/// How often, at most, libkmod is asked whether its indexes or configuration changed.
const DEFAULT_VALIDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on cached plans: when reached, the plan cache is emptied (it refills on demand).
const MAX_CACHED_PLANS: usize = 4096;

/// Why a resolution (or the resolver itself) failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// The libkmod context could not be created.
    #[error("cannot create libkmod context for {}: {reason}", module_dir.display())]
    Context {
        /// The module directory the context was for.
        module_dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// libkmod failed to look a target up (not "no match": that is [`Plan::NoMatch`]).
    #[error("lookup of {target:?} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Lookup {
        /// The target being resolved.
        target: String,
        /// Positive errno reported by libkmod.
        errno: i32,
    },
    /// The resolver thread could not be started.
    #[error("cannot start the resolver thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The resolver thread has exited (it panicked); no more requests can be served.
    #[error("resolver thread is gone")]
    ThreadGone,
}

/// An owned libkmod context.
struct Ctx(NonNull<ffi::kmod_ctx>);

impl Ctx {
    /// Creates a context; `config` is a NULL-terminated array of paths, or NULL for the defaults.
    fn new(module_dir: &CStr, config: *const *const c_char) -> Option<Ctx> {
        // SAFETY: `module_dir` is a valid C string; `config` is NULL or a NULL-terminated array
        // of valid C strings (built by `ConfigPaths`). libkmod copies both.
        NonNull::new(unsafe { ffi::kmod_new(module_dir.as_ptr(), config) }).map(Ctx)
    }

    fn load_resources(&self) -> Result<(), i32> {
        // SAFETY: `self.0` is a live context owned by `self`.
        let rc = unsafe { ffi::kmod_load_resources(self.0.as_ptr()) };
        if rc < 0 {
            Err(-rc)
        } else {
            Ok(())
        }
    }

    /// True if indexes and configuration are unchanged since the context was created.
    fn is_valid(&self) -> bool {
        // SAFETY: `self.0` is a live context owned by `self`.
        let rc = unsafe { ffi::kmod_validate_resources(self.0.as_ptr()) };
        rc == ffi::kmod_resources_KMOD_RESOURCES_OK as i32
    }

    /// Modules matching `target`, like `modprobe` looks them up.
    ///
    /// The only libkmod call that sees a target. `kmod_module_new_from_lookup` matches it
    /// against modprobe.d aliases and install commands and searches `modules.dep.bin` (skipped
    /// for anything with a `:`), `modules.alias.bin`, `modules.symbols.bin` and the builtin
    /// indexes; it never builds a file path from it. Modules come back named as the indexes
    /// name them, so a modalias with slashes (`dmi:...:bd01/15/2019:...`) cannot become a path
    /// here or later (`/sys/module/NAME`, the module file). Targets are never passed to
    /// `kmod_module_new_from_name` or `kmod_module_new_from_path`.
    fn lookup(&self, target: &str) -> Result<ModList, ResolverError> {
        let err = |errno| ResolverError::Lookup {
            target: target.to_string(),
            errno,
        };
        let c_target = CString::new(target).map_err(|_| err(libc::EINVAL))?;
        let mut list = ptr::null_mut();
        // SAFETY: live context, valid C string, `list` starts NULL as libkmod requires. On error
        // libkmod frees what it built and leaves `list` NULL.
        let rc = unsafe {
            ffi::kmod_module_new_from_lookup(self.0.as_ptr(), c_target.as_ptr(), &mut list)
        };
        let list = ModList(list);
        if rc < 0 {
            return Err(err(-rc));
        }
        Ok(list)
    }

    /// The modules of `list` that are not blacklisted.
    fn not_blacklisted(&self, list: &ModList) -> Result<ModList, i32> {
        let mut out = ptr::null_mut();
        // SAFETY: live context; `list.0` is a valid (possibly NULL) list we own; libkmod gives
        // `out` its own references, released by `ModList::drop`.
        let rc = unsafe {
            ffi::kmod_module_apply_filter(
                self.0.as_ptr(),
                ffi::kmod_filter_KMOD_FILTER_BLACKLIST,
                list.0,
                &mut out,
            )
        };
        let out = ModList(out);
        if rc < 0 {
            return Err(-rc);
        }
        Ok(out)
    }

    /// Whether libkmod made `m` for an alias, that is whether its private `alias` field is set:
    /// modprobe refuses a blacklisted module by that field (`KMOD_PROBE_APPLY_BLACKLIST_ALIAS_ONLY`).
    /// The API does not show the field, but libkmod keeps one object per module name and one
    /// per (name, alias) pair, so `m` was made for an alias exactly when its name gives another
    /// object. When in doubt, says yes (the blacklist then applies).
    fn made_for_alias(&self, m: &Module) -> bool {
        let Ok(name) = CString::new(m.name()) else {
            return true;
        };
        let mut by_name = ptr::null_mut();
        // SAFETY: live context, valid C string, `by_name` starts NULL; on success libkmod gives
        // us a reference, released by `Module::drop`.
        let rc =
            unsafe { ffi::kmod_module_new_from_name(self.0.as_ptr(), name.as_ptr(), &mut by_name) };
        match NonNull::new(by_name).map(Module) {
            Some(by_name) if rc >= 0 => by_name.0 != m.0,
            _ => true,
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the context; modules still alive hold their own.
        unsafe { ffi::kmod_unref(self.0.as_ptr()) };
    }
}

/// An owned libkmod list of modules (NULL is the empty list).
struct ModList(*mut ffi::kmod_list);

impl ModList {
    fn iter(&self) -> ModIter<'_> {
        ModIter {
            list: self,
            cur: self.0,
        }
    }

    fn names(&self) -> Vec<String> {
        self.iter().map(|m| m.name()).collect()
    }

    fn is_empty(&self) -> bool {
        self.0.is_null()
    }
}

impl Drop for ModList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: we own the list and the module references in it; it is not used again.
            unsafe { ffi::kmod_module_unref_list(self.0) };
        }
    }
}

/// Iterator over a [`ModList`], yielding a new reference to each module.
struct ModIter<'a> {
    list: &'a ModList,
    cur: *mut ffi::kmod_list,
}

impl Iterator for ModIter<'_> {
    type Item = Module;

    fn next(&mut self) -> Option<Module> {
        if self.cur.is_null() {
            return None;
        }
        // SAFETY: `cur` is a node of `list`, which is alive for 'a; get_module takes a new
        // reference (released by `Module::drop`); list_next returns NULL after the last node.
        let module = unsafe {
            let m = ffi::kmod_module_get_module(self.cur);
            self.cur = ffi::kmod_list_next(self.list.0, self.cur);
            m
        };
        // get_module never returns NULL for a non-NULL node; stop cleanly if it ever did.
        NonNull::new(module).map(Module)
    }
}

/// An owned reference to a libkmod module.
struct Module(NonNull<ffi::kmod_module>);

impl Module {
    fn name(&self) -> String {
        // SAFETY: live module; the name is never NULL and lives as long as the module.
        unsafe { cstr_to_string(ffi::kmod_module_get_name(self.0.as_ptr())) }.unwrap_or_default()
    }

    fn path(&self) -> Option<PathBuf> {
        // SAFETY: live module; the returned string (or NULL) is owned by the module.
        let p = unsafe { ffi::kmod_module_get_path(self.0.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated, valid while the module is alive; copied here.
        let bytes = unsafe { CStr::from_ptr(p) }.to_bytes().to_vec();
        Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    /// Options from modprobe.d and the kernel command line given for the module's name and, when
    /// libkmod made this module object for an alias, for that alias too.
    fn options(&self) -> String {
        // SAFETY: live module; the string (or NULL) is owned by the module and copied here.
        unsafe { cstr_to_string(ffi::kmod_module_get_options(self.0.as_ptr())) }.unwrap_or_default()
    }

    fn install_command(&self) -> Option<String> {
        // SAFETY: live module; the string (or NULL) is owned by the config and copied here.
        unsafe { cstr_to_string(ffi::kmod_module_get_install_commands(self.0.as_ptr())) }
    }

    /// Builtin per `modules.builtin` (or, failing that, the running kernel's `/sys/module`).
    fn is_builtin(&self) -> bool {
        // SAFETY: live module.
        let state = unsafe { ffi::kmod_module_get_initstate(self.0.as_ptr()) };
        state == ffi::kmod_module_initstate_KMOD_MODULE_BUILTIN as i32
    }

    /// Hard dependencies, in load order (libkmod reverses `modules.dep` for us).
    fn dependencies(&self) -> ModList {
        // SAFETY: live module; the returned list holds its own references (or is NULL).
        ModList(unsafe { ffi::kmod_module_get_dependencies(self.0.as_ptr()) })
    }

    /// Softdeps (pre, post), each name already resolved through lookup by libkmod.
    fn softdeps(&self) -> (ModList, ModList) {
        let (mut pre, mut post) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: live module; both out pointers start NULL; the lists hold their own
        // references and are released by `ModList::drop`, also on error.
        let rc = unsafe { ffi::kmod_module_get_softdeps(self.0.as_ptr(), &mut pre, &mut post) };
        let lists = (ModList(pre), ModList(post));
        if rc < 0 {
            warn!(module = %self.name(), errno = -rc, "cannot read softdeps; ignoring them");
            return (ModList(ptr::null_mut()), ModList(ptr::null_mut()));
        }
        lists
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the module.
        unsafe { ffi::kmod_module_unref(self.0.as_ptr()) };
    }
}

/// Copies a C string owned by libkmod.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
unsafe fn cstr_to_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Everything needed to (re)create a context.
struct ContextSpec {
    module_dir: PathBuf,
    c_module_dir: CString,
    /// `None`: libkmod's default configuration directories.
    config_dirs: Option<Vec<CString>>,
}

impl ContextSpec {
    fn new(module_dir: &Path, config_dirs: Option<&[PathBuf]>) -> Result<Self, ResolverError> {
        let err = |reason: &str| ResolverError::Context {
            module_dir: module_dir.to_path_buf(),
            reason: reason.to_string(),
        };
        if !module_dir.is_dir() {
            return Err(err("not a directory"));
        }
        let to_c = |p: &Path| CString::new(p.as_os_str().as_bytes());
        let c_module_dir = to_c(module_dir).map_err(|_| err("path contains NUL"))?;
        let config_dirs = config_dirs
            .map(|dirs| dirs.iter().map(|d| to_c(d)).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|_| err("config path contains NUL"))?;
        Ok(ContextSpec {
            module_dir: module_dir.to_path_buf(),
            c_module_dir,
            config_dirs,
        })
    }

    /// Creates a context and tries to mmap its indexes; returns whether that worked.
    fn create(&self) -> Result<(Ctx, bool), ResolverError> {
        let ctx = self.context()?;
        let loaded = match ctx.load_resources() {
            Ok(()) => true,
            Err(errno) => {
                let e = std::io::Error::from_raw_os_error(errno);
                warn!(dir = %self.module_dir.display(), "cannot load module indexes: {e}");
                false
            }
        };
        Ok((ctx, loaded))
    }

    /// Creates a context that has read the configuration (not yet the indexes).
    fn context(&self) -> Result<Ctx, ResolverError> {
        let array: Option<Vec<*const c_char>> = self.config_dirs.as_ref().map(|dirs| {
            let mut a: Vec<_> = dirs.iter().map(|d| d.as_ptr()).collect();
            a.push(ptr::null());
            a
        });
        let config = array.as_ref().map_or(ptr::null(), |a| a.as_ptr());
        Ctx::new(&self.c_module_dir, config).ok_or_else(|| ResolverError::Context {
            module_dir: self.module_dir.clone(),
            reason: "kmod_new failed".to_string(),
        })
    }
}

/// A module's `install` line as modprobe would run it: libkmod's first `install` line whose
/// pattern matches the name, and the module's own options (modprobe.d and the kernel command
/// line's `MODULE.PARAM=`). What the install-command runner runs (see `crate::install_runner`):
/// it reads both itself instead of taking the daemon's word for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallLine {
    /// The command, before `$CMDLINE_OPTS` is replaced.
    pub command: String,
    /// The module's configured options.
    pub options: String,
}

impl InstallLine {
    /// The line for module `name` in the configuration of a libkmod context for `module_dir`
    /// with `config_dirs` (libkmod's default directories when `None`), as
    /// [`KmodResolver::new`] would read it; `None` when no `install` line matches. `name` must
    /// already be a valid module name ([`crate::target::looks_like_module_name`]): libkmod
    /// makes a module object of it, nothing more.
    pub fn lookup(
        module_dir: &Path,
        config_dirs: Option<&[PathBuf]>,
        name: &str,
    ) -> Result<Option<Self>, ResolverError> {
        let ctx = ContextSpec::new(module_dir, config_dirs)?.context()?;
        let err = |errno| ResolverError::Lookup {
            target: name.to_string(),
            errno,
        };
        let c_name = CString::new(name).map_err(|_| err(libc::EINVAL))?;
        let mut module = ptr::null_mut();
        // SAFETY: live context, valid C string, `module` starts NULL; on success libkmod gives
        // us a reference, released by `Module::drop`.
        let rc =
            unsafe { ffi::kmod_module_new_from_name(ctx.0.as_ptr(), c_name.as_ptr(), &mut module) };
        let module = NonNull::new(module).map(Module).ok_or(err(-rc))?;
        if rc < 0 {
            return Err(err(-rc));
        }
        // `kmod_module_get_install_commands` is the first matching line, as modprobe runs it.
        Ok(module.install_command().map(|command| InstallLine {
            command,
            options: module.options(),
        }))
    }
}

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
        if matches.0.is_null() {
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
