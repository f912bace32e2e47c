//! `modbroker`: the client and admin CLI. Exec'd by udev once per uevent, so it stays small and
//! synchronous. Asks the daemon; when no daemon answers, loads directly (unless `--no-fallback`).
//!
//! `load --udev` and `modprobe` wait as long as the daemon is alive and working on their load
//! (it sends a progress line every 2 s), up to half udev's event timeout (90 s by default:
//! a slow init, say a driver waiting for firmware, is waited for, as udev's builtin waits for
//! `finit_module`). A daemon silent for the liveness bound (20 s) is taken for wedged: the client
//! loads directly, and leaves a marker so that later clients of this boot load directly at once
//! until the daemon serves again. Any reply they cannot use (an error from a daemon older or
//! newer than they are) also sends them to the direct load, which never calls `finit_module`
//! for a module another loader is still initialising. With `--timeout SECS` they give the
//! daemon that long instead, then load directly. A plain `load` waits as long as it takes unless
//! `--timeout` is given, and a timeout there is an error, never a fallback.
//!
//! Exit status: 0 when every target ended loaded, already-loaded, builtin, no-match or queued;
//! 1 when any target failed (one stderr line each); 2 for usage errors; 3 when the daemon refused
//! the request (permission denied, malformed) or could not be talked to; 4 when the daemon is
//! unreachable and `--no-fallback` was given; 5 when `blame` or `plot` find no record.
//!
//! With `--udev` the exit status is 0 for every outcome (2 for usage errors), as udev's builtin
//! `kmod load` ignores every load error (`(void) module_load_and_warn(...)`). A failed target
//! still gets its one stderr line (udev logs a RUN program's output), but no non-zero exit for
//! udev to warn about once per event: a CPU modalias comes once per CPU, and a module that
//! cannot load there (kvm_intel's EOPNOTSUPP without VT-x) would otherwise warn on every one.
//!
//! Kernel autoload helper: run through a name `modprobe` (a symlink; the kernel's
//! `/proc/sys/kernel/modprobe` can point at it) or as `modbroker modprobe`, it takes the command
//! line the kernel's `request_module()` uses, `modprobe -q -- NAME`, and loads each NAME as
//! `modbroker load --udev NAME` would, but reports failure to the kernel: exit 0 when every NAME
//! ended as `load` counts success or blacklisted or ENODEV, else 1.
//!
//! Blacklist, as in the tools replaced: `load --udev` refuses a blacklisted module asked for by
//! name too (udev's builtin loads with `KMOD_PROBE_APPLY_BLACKLIST`); a plain `load` and the
//! helper (the kernel runs `modprobe -q -- NAME`, without `-b`) refuse blacklisted modules found
//! through an alias only, as modprobe does, and `modprobe -b` refuses names too.

// The C library calls `main` below directly; std's start-up is skipped (see `main`). Unit tests
// keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use modbroker::blame::{blame_text, Blame};
use modbroker::cli::{Cli, Command};
use modbroker::client::{self, ClientError};
use modbroker::model::Requester;
use modbroker::plot::plot_svg;
use modbroker::protocol::{LoadRequest, OutcomeKind, Reply, Request, TargetResult};
use modbroker::report;
use modbroker::wire;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
/// `blame` and `plot`: no record directory, or no usable file in it.
const EXIT_NO_RECORD: u8 = 5;

/// The process's entry point, called by the C library (`#![no_main]`). std's own start-up is
/// skipped: besides what [`start_up`] repeats, it installs a guard for the main thread's stack,
/// which glibc's `pthread_getattr_np` finds by reading and `sscanf`-ing `/proc/self/maps`. That
/// was a quarter of a udev exec's instructions and a third of its time under qemu's TCG, spent
/// on a nicer message for a stack overflow (now a plain SIGSEGV). A panic still exits 101.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    start_up();
    let code = std::panic::catch_unwind(run).unwrap_or(ExitCode::from(101));
    // As std does after `main`: stdout is flushed, so a `print!` without a newline is not lost.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // ExitCode keeps its value private; it compares equal to the u8 it was made from.
    (0..=u8::MAX)
        .find(|&c| ExitCode::from(c) == code)
        .map_or(1, libc::c_int::from)
}

/// What std's start-up does that the client relies on: SIGPIPE ignored (a write to a closed pipe
/// fails with EPIPE, which `blame | head` handles), and descriptors 0, 1 and 2 open (the kernel
/// may start its autoload helper without them): each closed one is opened on `/dev/null`, so that
/// the daemon's socket never becomes stdout.
#[cfg(not(test))]
fn start_up() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: plain system calls on a valid array of three pollfd and a NUL-terminated path.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if libc::poll(fds.as_mut_ptr(), 3, 0) > 0 {
            // open() takes the lowest free descriptor: the closed ones, in order.
            for _ in fds.iter().filter(|fd| fd.revents & libc::POLLNVAL != 0) {
                if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0 {
                    libc::abort();
                }
            }
        }
    }
}

/// The command line's work; its exit status.
#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitCode {
    // Called through a name `modprobe` (the kernel's request_module() helper): no clap, only the
    // modprobe command line; the socket and module tree are the defaults (or $MODBROKER_SOCKET).
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    if Path::new(&argv0).file_name() == Some("modprobe".as_ref()) {
        return modprobe(client::socket_path(None), None, argv.collect());
    }
    // udev's command line, `load --udev TARGET`, and `modprobe ...`, parsed by hand: building
    // clap's parser was a third of a client exec under TCG (README, "Why the client is static").
    if let Some(fast) = parse_fast(argv.collect()) {
        let socket = client::socket_path(fast.socket);
        let module_dir = fast.module_dir.as_deref();
        return match fast.command {
            FastCommand::LoadUdev(target) => {
                let Some(target) = udev_target(target) else {
                    return ExitCode::from(EXIT_USAGE);
                };
                let options = load_options(true, false, None, false, false);
                load(&socket, module_dir, &[target], &[], &options)
            }
            FastCommand::Modprobe(args) => modprobe(socket, fast.module_dir, args),
        };
    }
    let cli = Cli::parse();
    let socket = client::socket_path(cli.socket);
    match cli.command {
        Command::Load {
            no_wait,
            timeout,
            retry,
            no_fallback,
            udev,
            target,
            params,
        } => {
            let target = match target {
                Some(target) => target,
                None if udev && params.is_empty() => match udev_target(None) {
                    Some(target) => target,
                    None => return ExitCode::from(EXIT_USAGE),
                },
                None => {
                    eprintln!("modbroker: load needs a TARGET (only --udev takes $MODALIAS)");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let options = load_options(udev, no_wait, timeout, retry, no_fallback);
            load(
                &socket,
                cli.module_dir.as_deref(),
                &[target],
                &params,
                &options,
            )
        }
        Command::Modprobe { args } => modprobe(socket, cli.module_dir, args),
        Command::Resolve {
            show_depends: true,
            use_blacklist,
            targets,
        } => match client::show_depends(cli.module_dir.as_deref(), &targets, use_blacklist) {
            Ok(status) => ExitCode::from(status.code().map_or(EXIT_FAILED, |c| c as u8)),
            Err(e) => {
                eprintln!("modbroker: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Resolve { targets, .. } => {
            match call_or_report(&socket, &Request::Resolve(targets)) {
                Ok(reply) => print_resolved(&reply),
                Err(code) => code,
            }
        }
        Command::Status { json } => match call_or_report(&socket, &Request::Status) {
            Ok(reply) if json => {
                println!(
                    "{}",
                    serde_json::to_string(&reply.status).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(reply) => print_status(&reply),
            Err(code) => code,
        },
        Command::Blame { json, dir } => report(&dir, |record| {
            let blame = Blame::new(record);
            if json {
                serde_json::to_string_pretty(&blame).unwrap_or_default() + "\n"
            } else {
                blame_text(&blame)
            }
        }),
        Command::Plot { dir } => report(&dir, plot_svg),
    }
}

/// What `load`'s flags ask for, as [`LoadOptions`] (`timeout` in seconds, as given).
fn load_options(
    udev: bool,
    no_wait: bool,
    timeout: Option<f64>,
    retry: bool,
    no_fallback: bool,
) -> LoadOptions {
    let timeout = timeout.map(|s| Duration::from_secs_f64(s.max(0.001)));
    let mode = if udev { Mode::Udev } else { Mode::Strict };
    LoadOptions {
        wait: !no_wait,
        timeout,
        bound: reply_bound(timeout),
        liveness: waits_while_alive(timeout, mode),
        retry,
        fallback: !no_fallback,
        mode,
        quiet: false,
        blacklist_names: udev,
    }
}

/// A command line taken without clap (see [`parse_fast`]).
#[derive(Debug, PartialEq)]
struct FastArgs {
    socket: Option<PathBuf>,
    module_dir: Option<PathBuf>,
    command: FastCommand,
}

#[derive(Debug, PartialEq)]
enum FastCommand {
    /// `load --udev [--] [TARGET]`; no TARGET: the uevent's `MODALIAS` (see [`udev_target`]).
    LoadUdev(Option<String>),
    /// `modprobe ARGS...`, ARGS as [`parse_modprobe_args`] accepts them.
    Modprobe(Vec<OsString>),
}

/// The target of `load --udev`: the one given, else the uevent's `MODALIAS` from the
/// environment udev gives the program, byte for byte, as udev's builtin `kmod load` reads it
/// (a value on the rule's command line would be split at whitespace and unquoted by udev).
/// `None`, after a message, when neither is there.
fn udev_target(given: Option<String>) -> Option<String> {
    if given.is_some() {
        return given;
    }
    match std::env::var("MODALIAS") {
        Ok(modalias) if !modalias.is_empty() => Some(modalias),
        _ => {
            eprintln!("modbroker: load --udev without a TARGET needs MODALIAS in the environment");
            None
        }
    }
}

/// The command lines run once per uevent or autoload, parsed by hand: `[GLOBAL...] load
/// [--udev | GLOBAL]... [--] [TARGET]` with `--udev` among the flags, and `[GLOBAL...] modprobe
/// ARGS...`; GLOBAL is `--socket PATH` or `--module-dir DIR` (also `--opt=VALUE`). Anything else,
/// or anything unusual in these (another flag, a parameter, a value that starts with `-`, text
/// that is not UTF-8), is `None`, and clap parses the command line as always: this path takes
/// only what clap would read the same way (a unit test checks that against clap).
fn parse_fast(args: Vec<OsString>) -> Option<FastArgs> {
    let mut args = args.into_iter();
    let mut fast = FastArgs {
        socket: None,
        module_dir: None,
        command: FastCommand::LoadUdev(None),
    };
    let command = loop {
        let arg = args.next()?.into_string().ok()?;
        if !fast.global(&arg, &mut args)? {
            break arg;
        }
    };
    fast.command = match command.as_str() {
        "load" => FastCommand::LoadUdev(fast.load_udev_target(args)?),
        "modprobe" => {
            let args: Vec<OsString> = args.collect();
            parse_modprobe_args(args.clone()).ok()?;
            FastCommand::Modprobe(args)
        }
        _ => return None,
    };
    Some(fast)
}

impl FastArgs {
    /// Takes `arg` (and its value from `rest`) if it is a global option: `Some(true)` when taken,
    /// `Some(false)` when `arg` is something else, `None` when clap should judge it.
    fn global(&mut self, arg: &str, rest: &mut impl Iterator<Item = OsString>) -> Option<bool> {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg, None),
        };
        let slot = match name {
            "--socket" => &mut self.socket,
            "--module-dir" => &mut self.module_dir,
            _ => return Some(false),
        };
        let value = match inline {
            Some(value) => value,
            None => rest.next()?.into_string().ok()?,
        };
        if slot.is_some() || value.is_empty() || value.starts_with('-') {
            return None;
        }
        *slot = Some(PathBuf::from(value));
        Some(true)
    }

    /// The TARGET of `load`'s flags and arguments `rest`, when they are `--udev`, globals and at
    /// most one target (after `--` or not starting with `-`): `Some(None)` for none.
    fn load_udev_target(
        &mut self,
        mut rest: impl Iterator<Item = OsString>,
    ) -> Option<Option<String>> {
        let (mut udev, mut target) = (false, None);
        while let Some(arg) = rest.next() {
            let arg = arg.into_string().ok()?;
            match arg.as_str() {
                "--udev" if !udev => udev = true,
                "--" => {
                    let last = rest.next()?.into_string().ok()?;
                    if target.replace(last).is_some() || rest.next().is_some() {
                        return None;
                    }
                }
                flag if flag.starts_with('-') => {
                    if !self.global(flag, &mut rest)? {
                        return None;
                    }
                }
                _ if target.is_none() => target = Some(arg),
                _ => return None,
            }
        }
        udev.then_some(target)
    }
}

/// `blame` and `plot`: reads the record in `dir` (a warning line for each file skipped), writes
/// `render`'s text to stdout. Exit 5 without a record, 1 when it cannot be read or written.
fn report(dir: &Path, render: impl Fn(&report::BootRecord) -> String) -> ExitCode {
    use std::io::Write;
    let warn = |skipped: &[report::Skipped]| {
        for s in skipped {
            eprintln!(
                "modbroker: warning: skipped {}/{}: {}",
                dir.display(),
                s.file,
                s.reason
            );
        }
    };
    let record = match report::read_dir(dir) {
        Ok(record) => record,
        Err(err) => {
            if let report::ReportError::Empty { skipped, .. } = &err {
                warn(skipped);
            }
            eprintln!("modbroker: {err}");
            return match err {
                report::ReportError::Io { .. } => ExitCode::from(EXIT_FAILED),
                _ => ExitCode::from(EXIT_NO_RECORD),
            };
        }
    };
    warn(&record.skipped);
    match std::io::stdout()
        .lock()
        .write_all(render(&record).as_bytes())
    {
        // `modbroker blame | head` is not an error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("modbroker: writing stdout: {err}");
            ExitCode::from(EXIT_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// How `load` asks and judges.
struct LoadOptions {
    wait: bool,
    /// An explicit `--timeout`: the daemon is told it and answers `timed-out` when it passes.
    timeout: Option<Duration>,
    /// How long the client waits for the daemon in all (see [`reply_bound`]); `None` with
    /// `liveness`: as long as the daemon shows it is alive.
    bound: Option<Duration>,
    /// Wait while the daemon is alive (progress lines), load directly when it falls silent.
    liveness: bool,
    retry: bool,
    fallback: bool,
    mode: Mode,
    /// No stdout lines (failures still get their stderr line).
    quiet: bool,
    /// Refuse a blacklisted module asked for by name too (see the module docs).
    blacklist_names: bool,
}

/// Who asks, for the daemon's record: udev (the uevent's `SUBSYSTEM` and `DEVPATH`, from the
/// environment udev gives its `RUN` programs), the kernel's autoload helper, or, when `None`, the
/// CLI (the daemon records the peer's uid and command name itself).
fn origin(mode: Mode) -> Option<Requester> {
    match mode {
        Mode::Udev => Some(Requester::Udev {
            subsystem: std::env::var("SUBSYSTEM").ok(),
            devpath: std::env::var("DEVPATH").ok(),
        }),
        Mode::Helper => Some(Requester::Kernel),
        Mode::Strict => None,
    }
}

/// The client's total wait for the daemon: an explicit `--timeout` plus a second (so that the
/// daemon's own timed-out reply arrives first), else no fixed bound (udev and the kernel helper
/// wait while the daemon is alive: [`waits_while_alive`]).
fn reply_bound(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|timeout| timeout + Duration::from_secs(1))
}

/// Whether the client waits as long as the daemon is alive (udev and the kernel helper without
/// `--timeout`) rather than for a fixed time.
fn waits_while_alive(timeout: Option<Duration>, mode: Mode) -> bool {
    timeout.is_none() && mode != Mode::Strict
}

/// Loads `targets` through the daemon, or directly (one `modbrokerd --oneshot` per target) when no
/// daemon answers and `options.fallback` is set (for udev and the kernel helper, also when the
/// daemon falls silent, or answers with anything but results); prints the results, returns the
/// exit status.
fn load(
    socket: &Path,
    module_dir: Option<&Path>,
    targets: &[String],
    params: &[String],
    options: &LoadOptions,
) -> ExitCode {
    let direct = |reason: &str| load_directly(module_dir, targets, params, options, reason);
    if options.liveness && options.fallback && client::marked_unresponsive(socket) {
        return direct(&format!(
            "an earlier client found the daemon at {} unresponsive",
            socket.display()
        ));
    }
    let request = Request::Load(LoadRequest {
        targets: targets.to_vec(),
        params: params.to_vec(),
        wait: options.wait,
        retry: options.retry,
        timeout_ms: options.timeout.map(|t| t.as_millis() as u64),
        blacklist_names: options.blacklist_names,
        origin: origin(options.mode),
        progress: options.liveness,
    });
    let asked = std::time::Instant::now();
    let answer = if options.liveness {
        client::call_while_alive(socket, &request, &client::Liveness::default())
    } else {
        client::call(socket, &request, options.bound)
    };
    let udev_like = options.fallback && options.mode != Mode::Strict;
    match answer {
        // A refusal we cannot act on (a daemon older than a field we send, one shutting down):
        // the load must still happen, and the direct load is always correct.
        Ok(Reply {
            error: Some(error), ..
        }) if udev_like => direct(&format!(
            "daemon refused: {} ({})",
            error.message, error.kind
        )),
        Ok(reply) => report_results(reply, options),
        Err(err @ ClientError::Unresponsive { .. }) if options.fallback => {
            if let Err(e) = client::mark_unresponsive(socket) {
                eprintln!("modbroker: cannot leave the unresponsive marker: {e}");
            }
            direct(&err.to_string())
        }
        // The daemon is alive and still loading at udev's limit: it goes on; loading directly
        // now would only duplicate its load.
        Err(ClientError::TimedOut(path)) if options.liveness => {
            eprintln!(
                "modbroker: daemon at {} still loading {} after {} s; not waiting longer",
                path.display(),
                targets.join(" "),
                asked.elapsed().as_secs()
            );
            options.mode.exit(EXIT_FAILED)
        }
        Err(ClientError::TimedOut(path)) if udev_like => {
            let waited = options.bound.unwrap_or_default().as_secs_f64();
            direct(&format!(
                "daemon at {} did not answer within {waited} s",
                path.display()
            ))
        }
        Err(err @ ClientError::Unreachable { .. }) if options.fallback => direct(&err.to_string()),
        Err(err) if udev_like => direct(&err.to_string()),
        Err(err @ (ClientError::Unreachable { .. } | ClientError::Unresponsive { .. })) => {
            eprintln!("modbroker: {err}");
            options.mode.exit(EXIT_UNREACHABLE)
        }
        Err(err) => {
            eprintln!("modbroker: {err}");
            options.mode.exit(EXIT_REFUSED)
        }
    }
}

/// Loads each target with `modbrokerd --oneshot`, after one stderr line per target saying why
/// (`reason`); prints the results, returns the exit status.
fn load_directly(
    module_dir: Option<&Path>,
    targets: &[String],
    params: &[String],
    options: &LoadOptions,
    reason: &str,
) -> ExitCode {
    let mut results = Vec::new();
    let mut ok = true;
    for target in targets {
        eprintln!("modbroker: {reason}: loading {target} directly, without merging");
        match client::load_without_daemon(module_dir, target, params, options.blacklist_names) {
            Ok(result) => results.push(result),
            Err(err) => {
                eprintln!("modbroker: {target}: failed: {err}");
                ok = false;
            }
        }
    }
    match exit_for(&results, options) {
        code if ok => code,
        _ => options.mode.exit(EXIT_FAILED),
    }
}

/// The kernel's autoload command line, `modprobe -q -- NAME` (kernel/module/kmod.c): each NAME is
/// loaded as `load --udev NAME` (waiting while the daemon is alive, then loading directly),
/// but the exit status tells the kernel whether it loaded ([`Mode::Helper`]).
/// `-q`/`--quiet` drop the stdout lines; `-b`/`--use-blacklist` refuse a blacklisted module
/// asked for by name too (without it, as in modprobe, the blacklist applies to aliases only);
/// anything else that looks like an option is a usage error. Exit status 0 or 1 (2 for usage
/// errors).
fn modprobe(socket: PathBuf, module_dir: Option<PathBuf>, args: Vec<OsString>) -> ExitCode {
    let ModprobeArgs {
        quiet,
        use_blacklist,
        names,
    } = match parse_modprobe_args(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("modbroker: {message}");
            eprintln!("usage: modprobe [-q|--quiet] [-b|--use-blacklist] [--] NAME...");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let options = LoadOptions {
        wait: true,
        timeout: None,
        bound: None,
        liveness: true,
        retry: false,
        fallback: true,
        mode: Mode::Helper,
        quiet,
        blacklist_names: use_blacklist,
    };
    match load(&socket, module_dir.as_deref(), &names, &[], &options) {
        // A refusal from the daemon (3) is a failure like any other for the kernel's helper.
        code if code == ExitCode::SUCCESS => code,
        _ => ExitCode::from(EXIT_FAILED),
    }
}

/// The modprobe command line the helper accepts.
#[derive(Debug, PartialEq, Eq)]
struct ModprobeArgs {
    /// `-q`/`--quiet`.
    quiet: bool,
    /// `-b`/`--use-blacklist`.
    use_blacklist: bool,
    names: Vec<String>,
}

/// Parses modprobe arguments: options `-q`, `-b` (alone or bundled) and their long forms, `--`,
/// then names.
fn parse_modprobe_args(args: Vec<OsString>) -> Result<ModprobeArgs, String> {
    let mut quiet = false;
    let mut use_blacklist = false;
    let mut names = Vec::new();
    let mut options_done = false;
    for arg in args {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
        if options_done || !arg.starts_with('-') || arg == "-" {
            names.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "--quiet" => quiet = true,
            "--use-blacklist" => use_blacklist = true,
            short
                if !short.starts_with("--") && short[1..].chars().all(|c| c == 'q' || c == 'b') =>
            {
                quiet |= short.contains('q');
                use_blacklist |= short.contains('b');
            }
            _ => return Err(format!("modprobe: unsupported option {arg:?}")),
        }
    }
    if names.is_empty() {
        return Err("modprobe: no module name given".to_string());
    }
    Ok(ModprobeArgs {
        quiet,
        use_blacklist,
        names,
    })
}

/// Calls the daemon; on any failure prints it and returns the exit code to use.
fn call_or_report(socket: &std::path::Path, request: &Request) -> Result<Reply, ExitCode> {
    match client::call(socket, request, None) {
        Ok(reply) => match &reply.error {
            Some(error) => {
                eprintln!(
                    "modbroker: daemon refused: {} ({})",
                    error.message, error.kind
                );
                Err(ExitCode::from(EXIT_REFUSED))
            }
            None => Ok(reply),
        },
        Err(err) => {
            eprintln!("modbroker: {err}");
            Err(ExitCode::from(EXIT_REFUSED))
        }
    }
}

/// Who is asking, which decides how long the daemon gets and what the exit status reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A plain `load`: success is loaded, already-loaded, builtin, no-match or queued; anything
    /// else exits non-zero.
    Strict,
    /// The kernel's autoload helper: also blacklisted and ENODEV count as success (as for
    /// modprobe's `-b` and udev); any other failure exits 1, so the kernel learns of it.
    Helper,
    /// `load --udev`: exit 0 whatever happened, as udev's builtin `kmod load` ignores every load
    /// error; each failure still gets its one stderr line.
    Udev,
}

impl Mode {
    fn accepts(self, r: &TargetResult) -> bool {
        let nodev = r.failure.as_ref().and_then(|f| f.errno) == Some(libc::ENODEV);
        match self {
            Mode::Strict => r.outcome.is_success(),
            Mode::Helper => {
                r.outcome.is_success()
                    || r.outcome == OutcomeKind::Blacklisted
                    || (r.outcome == OutcomeKind::Failed && nodev)
            }
            Mode::Udev => true,
        }
    }

    /// The exit status for an error that would exit `code`: `code`, except 0 under udev.
    fn exit(self, code: u8) -> ExitCode {
        match self {
            Mode::Udev => ExitCode::SUCCESS,
            Mode::Strict | Mode::Helper => ExitCode::from(code),
        }
    }
}

fn report_results(reply: Reply, options: &LoadOptions) -> ExitCode {
    if let Some(error) = reply.error {
        eprintln!(
            "modbroker: daemon refused: {} ({})",
            error.message, error.kind
        );
        return options.mode.exit(EXIT_REFUSED);
    }
    exit_for(&reply.results.unwrap_or_default(), options)
}

fn exit_for(results: &[TargetResult], options: &LoadOptions) -> ExitCode {
    for result in results {
        print_result(result, options.quiet);
    }
    if results.iter().all(|r| options.mode.accepts(r)) {
        ExitCode::SUCCESS
    } else {
        options.mode.exit(EXIT_FAILED)
    }
}

/// One stdout line per target (unless `quiet`); failures also get one stderr line. Both are
/// put together without `core::fmt`, like the request (see `modbroker::wire`): udev's client
/// prints them once per uevent.
fn print_result(r: &TargetResult, quiet: bool) {
    use std::io::Write;
    if !quiet {
        let mut line = String::with_capacity(128);
        line.push_str(&r.target);
        line.push_str(": ");
        line.push_str(r.outcome.as_str());
        line.push_str(" [");
        line.push_str(&r.modules.join(","));
        line.push(']');
        if r.merged {
            line.push_str(" (merged)");
        }
        line.push_str(" in ");
        push_ms(&mut line, r.elapsed_us);
        line.push_str(" ms\n");
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
    if r.outcome.is_success() {
        return;
    }
    let mut line = String::with_capacity(128);
    line.push_str("modbroker: ");
    line.push_str(&r.target);
    line.push_str(": ");
    line.push_str(r.outcome.as_str());
    line.push_str(": ");
    match &r.failure {
        Some(f) => match (&f.errno_name, f.errno) {
            (Some(name), Some(errno)) => {
                line.push_str("module ");
                line.push_str(&f.module);
                line.push_str(": ");
                line.push_str(name);
                line.push_str(" (errno ");
                if errno < 0 {
                    line.push('-');
                }
                wire::push_u64(&mut line, u64::from(errno.unsigned_abs()));
                line.push_str("): ");
                line.push_str(&f.message);
            }
            _ if f.module.is_empty() => line.push_str(&f.message),
            _ => {
                line.push_str("module ");
                line.push_str(&f.module);
                line.push_str(": ");
                line.push_str(&f.message);
            }
        },
        None if r.outcome == OutcomeKind::Blacklisted => {
            line.push_str("blacklisted: ");
            line.push_str(&r.modules.join(", "));
        }
        None => {}
    }
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `us` microseconds as milliseconds with one decimal, rounded half up (`12.3`).
fn push_ms(line: &mut String, us: u64) {
    let tenths = us / 100 + u64::from(us % 100 >= 50);
    wire::push_u64(line, tenths / 10);
    line.push('.');
    wire::push_u64(line, tenths % 10);
}

fn print_resolved(reply: &Reply) -> ExitCode {
    let mut ok = true;
    for r in reply.resolved.iter().flatten() {
        println!("{}: {}", r.target, r.plan);
        if let Some(message) = &r.message {
            println!("  {message}");
        }
        ok &= r.plan != "invalid" && r.plan != "error";
        for m in &r.modules {
            let detail = m.detail.as_deref().unwrap_or("");
            println!("  {} {} {detail} {}", m.method, m.name, m.options);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn print_status(reply: &Reply) -> ExitCode {
    let Some(s) = &reply.status else {
        eprintln!("modbroker: reply has no status");
        return ExitCode::from(EXIT_REFUSED);
    };
    println!(
        "modbrokerd {} up {:.1} s",
        s.version,
        s.uptime_ms as f64 / 1000.0
    );
    println!("requests:       {}", s.requests);
    println!("load targets:   {}", s.targets);
    println!("merged:         {}", s.merged);
    println!("already loaded: {}", s.already_loaded);
    println!("load calls:     {}", s.load_calls);
    println!("failed loads:   {}", s.failed_loads);
    for f in &s.failures {
        println!("  failed: {} {} x{}", f.module, f.error, f.count);
    }
    for f in &s.in_flight {
        println!(
            "  in flight: {} for {} ms, {} waiting",
            f.module, f.age_ms, f.waiters
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a command line asks for, as the fast path and clap can both say it: the globals and
    /// either `load --udev`'s target or the helper's modprobe arguments, as the helper reads them.
    type Meaning = (
        Option<PathBuf>,
        Option<PathBuf>,
        Result<Option<String>, Result<ModprobeArgs, String>>,
    );

    fn meaning(fast: FastArgs) -> Meaning {
        let command = match fast.command {
            FastCommand::LoadUdev(target) => Ok(target),
            FastCommand::Modprobe(args) => Err(parse_modprobe_args(args)),
        };
        (fast.socket, fast.module_dir, command)
    }

    fn fast(args: &[&str]) -> Option<FastArgs> {
        parse_fast(args.iter().map(OsString::from).collect())
    }

    /// What clap makes of `args`, when it is a command the fast path could also have taken.
    fn clap_reading(args: &[&str]) -> Option<Meaning> {
        let cli = Cli::try_parse_from(std::iter::once("modbroker").chain(args.iter().copied()));
        let cli = cli.ok()?;
        let command = match cli.command {
            Command::Load {
                no_wait: false,
                timeout: None,
                retry: false,
                no_fallback: false,
                udev: true,
                target,
                params,
            } if params.is_empty() => FastCommand::LoadUdev(target),
            Command::Modprobe { args } => FastCommand::Modprobe(args),
            _ => return None,
        };
        Some(meaning(FastArgs {
            socket: cli.socket,
            module_dir: cli.module_dir,
            command,
        }))
    }

    /// Every command line the fast path takes means to it what it means to clap.
    #[test]
    fn the_fast_path_reads_what_it_takes_as_clap_does() {
        for args in [
            &["load", "--udev", "pci:v00008086d0000100Esv*sd*bc02sc00i*"][..],
            &["load", "--udev"],
            &["--socket", "/s", "load", "--udev"],
            &["load", "--udev", "--", "e1000"],
            &["load", "e1000", "--udev"],
            &["load", "--udev", ""],
            &["--socket", "/run/x.sock", "load", "--udev", "e1000"],
            &[
                "--socket=/s",
                "load",
                "--module-dir",
                "/lib/modules/6.1",
                "--udev",
                "e1000",
            ],
            &["load", "--udev", "--module-dir=/m", "--", "-odd"],
            &["modprobe", "-q", "--", "e1000"],
            &["modprobe", "-qb", "e1000", "snd"],
            &["--module-dir", "/m", "modprobe", "--quiet", "e1000"],
        ] {
            let taken = fast(args).unwrap_or_else(|| panic!("{args:?} not taken"));
            assert_eq!(Some(meaning(taken)), clap_reading(args), "{args:?}");
        }
    }

    /// Anything else is left to clap: other commands and flags, parameters, help, repeated or
    /// odd values, a missing or second target, text that is not UTF-8.
    #[test]
    fn the_fast_path_leaves_the_rest_to_clap() {
        for args in [
            &["load", "e1000"][..],
            &["load"],
            &["load", "--udev", "e1000", "debug=1"],
            &["load", "--udev", "e1000", "e100"],
            &["load", "--udev", "--", "e1000", "e100"],
            &["load", "--udev", "--timeout", "5", "e1000"],
            &["load", "--udev", "--no-fallback", "e1000"],
            &["load", "--udev", "--udev", "e1000"],
            &["load", "--help", "--udev", "e1000"],
            &["load", "--udev", "-", "e1000"],
            &[
                "--socket", "/a", "--socket", "/b", "load", "--udev", "e1000",
            ],
            &["--socket", "-x", "load", "--udev", "e1000"],
            &["--socket=", "load", "--udev", "e1000"],
            &["--socket"],
            &["status"],
            &["--version"],
            &["modprobe"],
            &["modprobe", "--help"],
            &["modprobe", "-r", "e1000"],
            &[],
        ] {
            assert_eq!(fast(args), None, "{args:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = OsString::from_vec(vec![b'e', 0xff]);
        let args = vec!["load".into(), "--udev".into(), not_utf8];
        assert_eq!(parse_fast(args), None);
    }

    /// Every client command line in `80-drivers.rules` takes the fast path: a flag added there
    /// would send each uevent through clap again.
    #[test]
    fn every_udev_rule_takes_the_fast_path() {
        let rules = include_str!("../../udev/80-drivers.rules");
        let mut seen = 0;
        for run in rules.split("RUN+=\"/usr/bin/modbroker ").skip(1) {
            let line = run.split('"').next().unwrap();
            assert!(
                !line.contains('$'),
                "{line:?}: udev would split and unquote the value"
            );
            let args: Vec<&str> = line.split_whitespace().collect();
            let parsed = fast(&args).unwrap_or_else(|| panic!("{line:?} not taken"));
            assert!(matches!(parsed.command, FastCommand::LoadUdev(_)), "{line}");
            seen += 1;
        }
        assert!(seen >= 7, "{seen} client lines in 80-drivers.rules");
    }

    /// udev and the kernel helper wait while the daemon is alive; an explicit timeout is a
    /// fixed bound for every mode, and a plain load without one waits for ever.
    #[test]
    fn only_udev_and_the_helper_wait_while_alive() {
        assert!(waits_while_alive(None, Mode::Udev));
        assert!(waits_while_alive(None, Mode::Helper));
        assert!(!waits_while_alive(None, Mode::Strict));
        let one = Some(Duration::from_secs(1));
        assert!(!waits_while_alive(one, Mode::Udev));
        assert_eq!(reply_bound(one), Some(Duration::from_secs(2)));
        assert_eq!(reply_bound(None), None);
    }

    fn result(outcome: OutcomeKind, errno: Option<i32>) -> TargetResult {
        TargetResult {
            target: "t".to_string(),
            outcome,
            modules: vec!["m".to_string()],
            merged: false,
            elapsed_us: 0,
            failure: errno.map(|errno| modbroker::model::Failure {
                module: "m".to_string(),
                errno: Some(errno),
                errno_name: None,
                message: String::new(),
            }),
        }
    }

    fn modprobe_args(args: &[&str]) -> Result<ModprobeArgs, String> {
        parse_modprobe_args(args.iter().map(OsString::from).collect())
    }

    /// `-b` in any spelling, and only `-b`, applies the blacklist to names (after `--`, `-b` is
    /// a name).
    #[test]
    fn use_blacklist_comes_from_b_only() {
        for (args, quiet, use_blacklist, name) in [
            (&["-q", "--", "ppdev"][..], true, false, "ppdev"),
            (&["-b", "ppdev"], false, true, "ppdev"),
            (&["-qb", "--", "ppdev"], true, true, "ppdev"),
            (&["--use-blacklist", "ppdev"], false, true, "ppdev"),
            (&["--quiet", "--", "-b"], true, false, "-b"),
        ] {
            let expected = ModprobeArgs {
                quiet,
                use_blacklist,
                names: vec![name.to_string()],
            };
            assert_eq!(modprobe_args(args), Ok(expected), "{args:?}");
        }
    }

    /// udev's builtin ignores every load error; the kernel's helper and a plain load do not.
    #[test]
    fn what_each_mode_counts_as_success() {
        let cases = [
            (OutcomeKind::Loaded, None, [true, true, true]),
            (OutcomeKind::NoMatch, None, [true, true, true]),
            (OutcomeKind::Blacklisted, None, [false, true, true]),
            (OutcomeKind::Failed, Some(libc::ENODEV), [false, true, true]),
            (
                OutcomeKind::Failed,
                Some(libc::EOPNOTSUPP),
                [false, false, true],
            ),
            (
                OutcomeKind::Failed,
                Some(libc::ENOENT),
                [false, false, true],
            ),
            (OutcomeKind::Invalid, None, [false, false, true]),
            (OutcomeKind::TimedOut, None, [false, false, true]),
        ];
        for (outcome, errno, expected) in cases {
            let r = result(outcome, errno);
            let got = [Mode::Strict, Mode::Helper, Mode::Udev].map(|mode| mode.accepts(&r));
            assert_eq!(got, expected, "{outcome:?} {errno:?}");
        }
        assert_eq!(Mode::Udev.exit(EXIT_REFUSED), ExitCode::SUCCESS);
        assert_eq!(Mode::Helper.exit(EXIT_FAILED), ExitCode::from(EXIT_FAILED));
        assert_eq!(
            Mode::Strict.exit(EXIT_UNREACHABLE),
            ExitCode::from(EXIT_UNREACHABLE)
        );
    }
}
