//! `load` and the kernel's autoload helper (`modprobe`): the request to the daemon, the wait for
//! it (bounded, or while it is alive), the direct load when no daemon answers, and the exit
//! status each caller gets ([`Mode`]). See [the client's docs](super) for how long
//! each waits and what it reports.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::fast_args::{parse_modprobe_args, ModprobeArgs};
use super::result_line::print_result;
use super::{EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::client::{self, ClientError};
use crate::model::OutcomeKind;
use crate::model::Requester;
use crate::protocol::{LoadRequest, Reply, ReplyBody, Request, TargetResult};

/// What `load`'s flags ask for, as [`LoadOptions`] (`timeout` in seconds, as given).
pub fn load_options(
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

/// How `load` asks and judges.
pub struct LoadOptions {
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
    /// Refuse a blacklisted module asked for by name too (see the [module docs](super)).
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
pub fn load(
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
    let request = Request::Load(
        LoadRequest::new(targets.to_vec())
            .params(params.to_vec())
            .wait(options.wait)
            .retry(options.retry)
            .timeout_ms(options.timeout.map(|t| t.as_millis() as u64))
            .blacklist_names(options.blacklist_names)
            .origin(origin(options.mode))
            .progress(options.liveness),
    );
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
            body: ReplyBody::Error(error),
            ..
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
pub fn modprobe(socket: PathBuf, module_dir: Option<PathBuf>, args: Vec<OsString>) -> ExitCode {
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

/// Who is asking, which decides how long the daemon gets and what the exit status reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
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
    match reply.body {
        ReplyBody::Error(error) => {
            eprintln!(
                "modbroker: daemon refused: {} ({})",
                error.message, error.kind
            );
            options.mode.exit(EXIT_REFUSED)
        }
        ReplyBody::Results(results) => exit_for(&results, options),
        ReplyBody::Resolved(_) | ReplyBody::Status(_) => exit_for(&[], options),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            failure: errno.map(|errno| crate::model::Failure {
                module: "m".to_string(),
                errno: Some(errno),
                errno_name: None,
                message: String::new(),
            }),
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
