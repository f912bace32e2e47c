//! The kernel side: the one place that makes module syscalls and reads module state from sysfs.
//!
//! [`Kernel`] is the small trait the broker and the direct (daemon-less) loader call; [`SysKernel`]
//! is the real implementation (`finit_module` through nix, `/sys/module/NAME/initstate`; install
//! commands through the [`InstallCommands`] it is given, which `install_runner` provides), and
//! `testing::FakeKernel` stands in for it in tests. The
//! functions at the bottom turn one module's load attempt into a cloneable [`ModuleOutcome`],
//! including the `EEXIST` rule: only a module whose sysfs state is `live` counts as loaded.
//!
//! Every method here blocks; async callers run them on tokio's blocking pool.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::kmod::{finit_module, init_module, ModuleInitFlags};

use crate::model::{Failure, InstallFailure, Method, ModuleOutcome};
use crate::module_file::{
    decompress, kernel_compression, Compression, MODULE_INIT_COMPRESSED_FILE,
};
use crate::plan::{LoadMethod, ModuleNode};

/// What `/sys/module/NAME` says about a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// `initstate` is `live`: loaded and initialised.
    Live,
    /// `initstate` is `coming`: some loader is running its init right now.
    Coming,
    /// `initstate` is `going`: being removed, or its init failed and it is being torn down.
    Going,
    /// `/sys/module/NAME` exists without `initstate`: built into the kernel.
    Builtin,
    /// Not in the kernel.
    Absent,
}

/// Runs modprobe.d `install` commands for [`SysKernel`]. The kernel layer only asks; where and
/// how a command runs (the runner outside the daemon's sandbox, or this process) is decided by
/// the implementation, `install_runner::Installer`.
pub trait InstallCommands: Send + Sync + std::fmt::Debug + 'static {
    /// Runs the `install` command `command` for module `name`, with the module's `configured`
    /// options and the request's validated `params` (see [`Kernel::run_install`]).
    fn run(
        &self,
        name: &str,
        command: &str,
        configured: &str,
        params: &str,
    ) -> Result<(), InstallFailure>;
}

/// The kernel operations the broker needs. Implementations must be callable from many threads.
pub trait Kernel: Send + Sync + 'static {
    /// Current state of module `name` (canonical name).
    fn state(&self, name: &str) -> ModuleState;
    /// Inserts the module file at `path` with `options` (`finit_module`).
    fn load_file(&self, name: &str, path: &Path, options: &str) -> Result<(), Errno>;
    /// Runs the `install` command `command` from modprobe.d for module `name`, with the module's
    /// `configured` options and the request's validated `params` in place of `$CMDLINE_OPTS`.
    fn run_install(
        &self,
        name: &str,
        command: &str,
        configured: &str,
        params: &str,
    ) -> Result<(), InstallFailure>;

    /// How [`Kernel::load_file`] will hand the file at `path` to the kernel (for the record).
    fn hand_over(&self, _path: &Path) -> Method {
        Method::Finit
    }
}

/// The real kernel: syscalls and sysfs.
#[derive(Debug, Clone)]
pub struct SysKernel {
    sys_module: PathBuf,
    /// The format the kernel decompresses itself (`/sys/module/compression`), read once.
    kernel_compression: Option<String>,
    /// What runs install commands.
    install: Arc<dyn InstallCommands>,
}

impl SysKernel {
    /// The kernel at `/sys/module`, running install commands through `install`.
    pub fn new(install: Arc<dyn InstallCommands>) -> Self {
        SysKernel::with_sysfs(PathBuf::from("/sys/module"), install)
    }

    /// A kernel whose `/sys/module` is at `sys_module` (tests point it at a fixture).
    pub fn with_sysfs(sys_module: PathBuf, install: Arc<dyn InstallCommands>) -> Self {
        let kernel_compression = kernel_compression(&sys_module);
        SysKernel {
            sys_module,
            kernel_compression,
            install,
        }
    }

    /// `finit_module` on the file, with `flags`.
    fn finit(path: &Path, options: &CStr, flags: ModuleInitFlags) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| io_errno(&e))?;
        finit_module(&file, options, flags)
    }

    /// `init_module` on the file decompressed here.
    fn decompress_and_init(
        path: &Path,
        compression: Compression,
        options: &CStr,
    ) -> Result<(), Errno> {
        let image = decompress(path, compression).map_err(|e| match e.raw_os_error() {
            Some(raw) => Errno::from_raw(raw),
            // Corrupt or truncated compressed data: not a loadable module.
            None => Errno::ENOEXEC,
        })?;
        init_module(&image, options)
    }
}

impl Kernel for SysKernel {
    fn state(&self, name: &str) -> ModuleState {
        let dir = self.sys_module.join(name);
        match std::fs::read_to_string(dir.join("initstate")) {
            Ok(state) => parse_initstate(&state),
            Err(err) if err.kind() == io::ErrorKind::NotFound && dir.is_dir() => {
                ModuleState::Builtin
            }
            Err(_) => ModuleState::Absent,
        }
    }

    fn load_file(&self, _name: &str, path: &Path, options: &str) -> Result<(), Errno> {
        // Options were validated (no NUL can reach here), but fail cleanly rather than panic.
        let options = CString::new(options).map_err(|_| Errno::EINVAL)?;
        // One decision, the one the record reports.
        match (self.hand_over(path), Compression::of(path)) {
            (Method::FinitCompressed, _) => {
                let flags = ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE);
                Self::finit(path, &options, flags)
            }
            (Method::InitModule, Some(compression)) => {
                Self::decompress_and_init(path, compression, &options)
            }
            _ => Self::finit(path, &options, ModuleInitFlags::empty()),
        }
    }

    fn hand_over(&self, path: &Path) -> Method {
        match Compression::of(path) {
            None => Method::Finit,
            Some(c) if self.kernel_compression.as_deref() == Some(c.sysfs_name()) => {
                Method::FinitCompressed
            }
            Some(_) => Method::InitModule,
        }
    }

    fn run_install(
        &self,
        name: &str,
        command: &str,
        configured: &str,
        params: &str,
    ) -> Result<(), InstallFailure> {
        self.install.run(name, command, configured, params)
    }
}

fn parse_initstate(state: &str) -> ModuleState {
    match state.trim() {
        "live" => ModuleState::Live,
        "coming" => ModuleState::Coming,
        "going" => ModuleState::Going,
        // "unformed" or anything new: not usable yet.
        _ => ModuleState::Coming,
    }
}

fn io_errno(err: &io::Error) -> Errno {
    err.raw_os_error()
        .map(Errno::from_raw)
        .unwrap_or(Errno::EIO)
}

/// A failure from a syscall errno for `module`.
pub fn errno_failure(module: &str, errno: Errno) -> Failure {
    Failure {
        module: module.to_string(),
        errno: Some(errno as i32),
        errno_name: Some(format!("{errno:?}")),
        message: errno.desc().to_string(),
    }
}

/// What the module's current state says, before any syscall: `Some` when nothing needs doing.
pub fn settled_outcome(kernel: &dyn Kernel, node: &ModuleNode) -> Option<ModuleOutcome> {
    if node.method == LoadMethod::Builtin {
        return Some(ModuleOutcome::Builtin);
    }
    match kernel.state(&node.name) {
        ModuleState::Live => Some(ModuleOutcome::AlreadyLoaded),
        // A `/sys/module/NAME` without `initstate` is a built-in module, or a loadable one whose
        // sysfs entry is half set up or half torn down (someone else's load in progress, or its
        // failed init being unwound). A module with a file in modules.dep is not built in: let
        // the kernel answer rather than report a failing module as `builtin`.
        ModuleState::Builtin if !matches!(node.method, LoadMethod::File(_)) => {
            Some(ModuleOutcome::Builtin)
        }
        _ => None,
    }
}

/// Makes the one load attempt for `node` (its dependencies are the caller's business) with the
/// request's validated `params` after the module's configured options: the syscall or install
/// command, then the `EEXIST` rule. Blocks for as long as the module's init.
pub fn attempt_load(kernel: &dyn Kernel, node: &ModuleNode, params: &str) -> ModuleOutcome {
    match &node.method {
        LoadMethod::Builtin => ModuleOutcome::Builtin,
        LoadMethod::Install(command) => {
            match kernel.run_install(&node.name, command, &node.options, params) {
                Ok(()) => ModuleOutcome::Loaded,
                Err(InstallFailure(message)) => {
                    ModuleOutcome::Failed(Failure::without_errno(&node.name, message))
                }
            }
        }
        LoadMethod::File(path) => insert_file(
            kernel,
            &node.name,
            path,
            &join_options(&node.options, params),
        ),
        // libkmod's insert of a module without a path: "could not find module", ENOENT.
        LoadMethod::Missing => ModuleOutcome::Failed(Failure {
            module: node.name.clone(),
            errno: Some(Errno::ENOENT as i32),
            errno_name: Some("ENOENT".into()),
            message: format!(
                "module {} not found: no file in the module tree and not built in",
                node.name
            ),
        }),
    }
}

/// Attempts at most this many inserts when another loader's concurrent load of the same module
/// makes the kernel answer `EBUSY`.
const EBUSY_ATTEMPTS: usize = 3;

/// `finit_module` and what its errno means. `EBUSY` is the kernel telling us that a concurrent
/// load of the same module by someone else (udev's builtin, modprobe, a fallback client) ended
/// while we waited, without the module being live: it says nothing about this module's own
/// outcome, so it is never passed on. The module is loaded now (`already-loaded`) or the load is
/// tried again, which yields the module's true result.
fn insert_file(kernel: &dyn Kernel, name: &str, path: &Path, options: &str) -> ModuleOutcome {
    let mut attempts = 0;
    loop {
        attempts += 1;
        return match kernel.load_file(name, path, options) {
            Ok(()) => ModuleOutcome::Loaded,
            Err(Errno::EEXIST) => exists_outcome(kernel, name),
            Err(Errno::EBUSY) if kernel.state(name) == ModuleState::Live => {
                ModuleOutcome::AlreadyLoaded
            }
            Err(Errno::EBUSY) if attempts < EBUSY_ATTEMPTS => continue,
            Err(Errno::EBUSY) => ModuleOutcome::Failed(busy_failure(name)),
            Err(errno) => ModuleOutcome::Failed(errno_failure(name, errno)),
        };
    }
}

/// `EBUSY` after every attempt: each time, another process's concurrent load of the module
/// ended without the module live. Its own error is not known here; say so rather than pass the
/// kernel's "Device or resource busy" off as the module's.
fn busy_failure(name: &str) -> Failure {
    let mut failure = errno_failure(name, Errno::EBUSY);
    failure.message = format!(
        "concurrent loads of the module by other processes failed {EBUSY_ATTEMPTS} times \
         (the kernel does not say why)"
    );
    failure
}

/// After `EEXIST`: a `live` module was loaded by someone else; anything else means a module of
/// that name exists but is not usable (its init refused, or it is going away).
fn exists_outcome(kernel: &dyn Kernel, name: &str) -> ModuleOutcome {
    match kernel.state(name) {
        ModuleState::Live => ModuleOutcome::AlreadyLoaded,
        ModuleState::Builtin => ModuleOutcome::Builtin,
        state => {
            let mut failure = errno_failure(name, Errno::EEXIST);
            failure.message = format!("module exists but is not live (state {state:?})");
            ModuleOutcome::Failed(failure)
        }
    }
}

/// Options for one load: the module's configured options, then the request's parameters (the
/// kernel applies them in order, so the request's win).
pub fn join_options(configured: &str, requested: &str) -> String {
    match (configured.is_empty(), requested.is_empty()) {
        (_, true) => configured.to_string(),
        (true, false) => requested.to_string(),
        (false, false) => format!("{configured} {requested}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that answers every load with one errno and reports one state.
    struct Scripted(Errno, ModuleState);

    impl Kernel for Scripted {
        fn state(&self, _name: &str) -> ModuleState {
            self.1
        }
        fn load_file(&self, _: &str, _: &Path, _: &str) -> Result<(), Errno> {
            Err(self.0)
        }
        fn run_install(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), InstallFailure> {
            Ok(())
        }
    }

    #[test]
    fn eexist_counts_as_loaded_only_when_live() {
        let node = ModuleNode::file("m", "/x/m.ko");
        let live = attempt_load(&Scripted(Errno::EEXIST, ModuleState::Live), &node, "");
        assert_eq!(live, ModuleOutcome::AlreadyLoaded);
        let going = attempt_load(&Scripted(Errno::EEXIST, ModuleState::Going), &node, "");
        let ModuleOutcome::Failed(failure) = going else {
            panic!("a module that is not live is a failure: {going:?}")
        };
        assert_eq!(failure.errno_name.as_deref(), Some("EEXIST"));
        let nodev = attempt_load(&Scripted(Errno::ENODEV, ModuleState::Absent), &node, "");
        assert_eq!(
            nodev,
            ModuleOutcome::Failed(errno_failure("m", Errno::ENODEV))
        );
    }

    /// A kernel whose loads answer from a script, in order, recording each call.
    struct Sequence(std::sync::Mutex<Vec<Result<(), Errno>>>, ModuleState);

    impl Kernel for Sequence {
        fn state(&self, _name: &str) -> ModuleState {
            self.1
        }
        fn load_file(&self, _: &str, _: &Path, _: &str) -> Result<(), Errno> {
            self.0.lock().unwrap().remove(0)
        }
        fn run_install(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), InstallFailure> {
            Ok(())
        }
    }

    #[test]
    fn ebusy_is_never_the_answer_while_attempts_remain() {
        let node = ModuleNode::file("m", "/x/m.ko");
        // Someone else's load ended without the module live: try again, get the true errno.
        let kernel = Sequence(
            std::sync::Mutex::new(vec![Err(Errno::EBUSY), Err(Errno::ENODEV)]),
            ModuleState::Absent,
        );
        let outcome = attempt_load(&kernel, &node, "");
        assert_eq!(
            outcome,
            ModuleOutcome::Failed(errno_failure("m", Errno::ENODEV))
        );
        // Someone else's load made it live meanwhile.
        let kernel = Sequence(
            std::sync::Mutex::new(vec![Err(Errno::EBUSY)]),
            ModuleState::Live,
        );
        assert_eq!(
            attempt_load(&kernel, &node, ""),
            ModuleOutcome::AlreadyLoaded
        );
        // Bounded: after EBUSY_ATTEMPTS the kernel's answer stands.
        let kernel = Sequence(
            std::sync::Mutex::new(vec![Err(Errno::EBUSY); EBUSY_ATTEMPTS]),
            ModuleState::Absent,
        );
        let outcome = attempt_load(&kernel, &node, "");
        assert_eq!(outcome, ModuleOutcome::Failed(busy_failure("m")));
        assert!(
            kernel.0.lock().unwrap().is_empty(),
            "exactly {EBUSY_ATTEMPTS} attempts"
        );
    }

    /// Found by the VM faults test: while another process's load of a module fails, its
    /// `/sys/module/NAME` briefly exists without `initstate`, which reads as built in. For a
    /// module with a file that must not answer `builtin` (success) without a syscall.
    #[test]
    fn a_sysfs_dir_without_initstate_is_not_builtin_for_a_module_with_a_file() {
        let file = ModuleNode::file("m", "/x/m.ko");
        let transient = Scripted(Errno::ENODEV, ModuleState::Builtin);
        assert_eq!(settled_outcome(&transient, &file), None);
        let outcome = attempt_load(&transient, &file, "");
        assert_eq!(
            outcome,
            ModuleOutcome::Failed(errno_failure("m", Errno::ENODEV))
        );
        let mut builtin = ModuleNode::file("b", "");
        builtin.method = LoadMethod::Builtin;
        assert_eq!(
            settled_outcome(&transient, &builtin),
            Some(ModuleOutcome::Builtin)
        );
    }

    /// Install commands are `install_runner`'s (tested there).
    #[derive(Debug)]
    struct NoInstall;

    impl InstallCommands for NoInstall {
        fn run(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), InstallFailure> {
            unreachable!("no install command in these tests")
        }
    }

    #[test]
    fn sysfs_states() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = SysKernel::with_sysfs(dir.path().to_path_buf(), Arc::new(NoInstall));
        std::fs::create_dir_all(dir.path().join("loaded")).unwrap();
        std::fs::write(dir.path().join("loaded/initstate"), "live\n").unwrap();
        std::fs::create_dir_all(dir.path().join("coming")).unwrap();
        std::fs::write(dir.path().join("coming/initstate"), "coming\n").unwrap();
        std::fs::create_dir_all(dir.path().join("builtin")).unwrap();
        assert_eq!(kernel.state("loaded"), ModuleState::Live);
        assert_eq!(kernel.state("coming"), ModuleState::Coming);
        assert_eq!(kernel.state("builtin"), ModuleState::Builtin);
        assert_eq!(kernel.state("absent"), ModuleState::Absent);
    }
}
