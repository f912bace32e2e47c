//! The libkmod FFI: owned, safe wrappers around a libkmod context (`Ctx`), its module lists
//! (`ModList`, `ModIter`) and modules (`Module`), what (re)creates a context (`ContextSpec`),
//! and [`ResolverError`], the resolver's error, which lives here, below the resolver, because
//! the wrappers raise its libkmod variants (`Context`, `Lookup`).
//!
//! Every call into libkmod (`kmod-sys`) is in this file, each `unsafe` block with the reason it
//! is sound, so that the resolver ([`crate::resolver`]) and the install configuration
//! ([`crate::install_config`]) read modules, dependencies, options and `install` lines through
//! plain Rust. A libkmod context is not thread-safe and these wrappers hold raw pointers, so
//! none of them is `Send`; the resolver keeps its context on one thread
//! ([`crate::resolver::ResolverHandle`]).

use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};

use kmod_sys as ffi;
use tracing::warn;

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
    /// libkmod failed to look a target up (not "no match": that is
    /// [`Plan::NoMatch`](crate::plan::Plan::NoMatch)).
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
pub(crate) struct Ctx(NonNull<ffi::kmod_ctx>);

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
    pub(crate) fn is_valid(&self) -> bool {
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
    pub(crate) fn lookup(&self, target: &str) -> Result<ModList, ResolverError> {
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
    pub(crate) fn not_blacklisted(&self, list: &ModList) -> Result<ModList, i32> {
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
    pub(crate) fn made_for_alias(&self, m: &Module) -> bool {
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

    /// The module object libkmod makes for `name`: no lookup, no alias, no index searched.
    pub(crate) fn module_named(&self, name: &str) -> Result<Module, ResolverError> {
        let err = |errno| ResolverError::Lookup {
            target: name.to_string(),
            errno,
        };
        let c_name = CString::new(name).map_err(|_| err(libc::EINVAL))?;
        let mut module = ptr::null_mut();
        // SAFETY: live context, valid C string, `module` starts NULL; on success libkmod gives
        // us a reference, released by `Module::drop`.
        let rc = unsafe {
            ffi::kmod_module_new_from_name(self.0.as_ptr(), c_name.as_ptr(), &mut module)
        };
        let module = NonNull::new(module).map(Module).ok_or(err(-rc))?;
        if rc < 0 {
            return Err(err(-rc));
        }
        Ok(module)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the context; modules still alive hold their own.
        unsafe { ffi::kmod_unref(self.0.as_ptr()) };
    }
}

/// An owned libkmod list of modules (NULL is the empty list).
pub(crate) struct ModList(*mut ffi::kmod_list);

impl ModList {
    pub(crate) fn iter(&self) -> ModIter<'_> {
        ModIter {
            list: self,
            cur: self.0,
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.iter().map(|m| m.name()).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
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
pub(crate) struct ModIter<'a> {
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
pub(crate) struct Module(NonNull<ffi::kmod_module>);

impl Module {
    pub(crate) fn name(&self) -> String {
        // SAFETY: live module; the name is never NULL and lives as long as the module.
        unsafe { cstr_to_string(ffi::kmod_module_get_name(self.0.as_ptr())) }.unwrap_or_default()
    }

    pub(crate) fn path(&self) -> Option<PathBuf> {
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
    pub(crate) fn options(&self) -> String {
        // SAFETY: live module; the string (or NULL) is owned by the module and copied here.
        unsafe { cstr_to_string(ffi::kmod_module_get_options(self.0.as_ptr())) }.unwrap_or_default()
    }

    pub(crate) fn install_command(&self) -> Option<String> {
        // SAFETY: live module; the string (or NULL) is owned by the config and copied here.
        unsafe { cstr_to_string(ffi::kmod_module_get_install_commands(self.0.as_ptr())) }
    }

    /// Builtin per `modules.builtin` (or, failing that, the running kernel's `/sys/module`).
    pub(crate) fn is_builtin(&self) -> bool {
        // SAFETY: live module.
        let state = unsafe { ffi::kmod_module_get_initstate(self.0.as_ptr()) };
        state == ffi::kmod_module_initstate_KMOD_MODULE_BUILTIN as i32
    }

    /// Hard dependencies, in load order (libkmod reverses `modules.dep` for us).
    pub(crate) fn dependencies(&self) -> ModList {
        // SAFETY: live module; the returned list holds its own references (or is NULL).
        ModList(unsafe { ffi::kmod_module_get_dependencies(self.0.as_ptr()) })
    }

    /// Softdeps (pre, post), each name already resolved through lookup by libkmod.
    pub(crate) fn softdeps(&self) -> (ModList, ModList) {
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
pub(crate) struct ContextSpec {
    pub(crate) module_dir: PathBuf,
    c_module_dir: CString,
    /// `None`: libkmod's default configuration directories.
    config_dirs: Option<Vec<CString>>,
}

impl ContextSpec {
    pub(crate) fn new(
        module_dir: &Path,
        config_dirs: Option<&[PathBuf]>,
    ) -> Result<Self, ResolverError> {
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
    pub(crate) fn create(&self) -> Result<(Ctx, bool), ResolverError> {
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
    pub(crate) fn context(&self) -> Result<Ctx, ResolverError> {
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
