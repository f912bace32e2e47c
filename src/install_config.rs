//! One module's install configuration as the install-command runner reads it: [`InstallLine`],
//! its modprobe.d `install` line and its options, read with libkmod.
//!
//! A file of its own because the runner ([`crate::install_runner`]) needs only this, not the
//! resolver thread or its caches.

use std::path::{Path, PathBuf};

use crate::kmod::{ContextSpec, ResolverError};

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
    /// [`crate::resolver::KmodResolver::new`] would read it; `None` when no `install` line
    /// matches. `name` must already be a valid module name
    /// ([`crate::target::looks_like_module_name`]): libkmod makes a module object of it,
    /// nothing more.
    pub fn lookup(
        module_dir: &Path,
        config_dirs: Option<&[PathBuf]>,
        name: &str,
    ) -> Result<Option<Self>, ResolverError> {
        let ctx = ContextSpec::new(module_dir, config_dirs)?.context()?;
        let module = ctx.module_named(name)?;
        // `kmod_module_get_install_commands` is the first matching line, as modprobe runs it.
        Ok(module.install_command().map(|command| InstallLine {
            command,
            options: module.options(),
        }))
    }
}
