//! `modbrokerd`: the broker daemon. Socket-activated by systemd (modbroker.socket) or binding its
//! own socket; resolves with libkmod on one thread, merges loads, answers every waiter.
//!
//! Signals: SIGTERM/SIGINT stop accepting, finish requests and loads in progress, and exit.
//! SIGHUP re-reads the configuration file (allowed uids/gids, failure window, log level take
//! effect at once; socket, socket_group, socket_mode, module_dir and max_parallel_loads need a
//! restart), reloads the kmod indexes and modprobe.d, and forgets remembered load failures.
//!
//! The access list (allowed uids/gids) only reaches peers that can open the socket file. The
//! daemon gives a socket it binds itself the configured `socket_group`/`socket_mode`; under
//! socket activation the unit's `SocketGroup=`/`SocketMode=` decide. Either way it logs, at error
//! priority, every allowed uid or gid the socket file keeps out.
//!
//! A bad configuration file never stops module loading. The daemon logs the error at error
//! priority, runs with the built-in defaults (plus command-line flags; an invalid log level
//! becomes `info`) and keeps the error at the front of its sd_notify `STATUS=` line; a SIGHUP
//! with a bad file keeps the running configuration. `--oneshot` (the client's fallback) warns
//! once on stderr and loads with the defaults. `--check-config` checks a file and exits.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::future::BoxFuture;
use modbroker::broker::Broker;
use modbroker::cli::DaemonArgs as Args;
use modbroker::config::{check_log_level, Config, ConfigError, DEFAULT_CONFIG_PATH};
use modbroker::config_watch;
use modbroker::direct::load_direct;
use modbroker::install_runner::{self, Installer};
use modbroker::kernel::SysKernel;
use modbroker::plan::{BlacklistScope, Plan};
use modbroker::record::Phase;
use modbroker::recorder::{self, Recorder};
use modbroker::resolver::{KmodResolver, ResolverHandle};
use modbroker::server::{self, AccessPolicy, SharedAccess, SocketFile, SocketPerms};
use modbroker::service::{Resolve, Service};
use modbroker::skip::SkipMarkers;
use modbroker::target::validate_target;
use sd_notify::NotifyState;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The libkmod resolver thread, as the service sees it.
struct KmodResolve(ResolverHandle);

impl Resolve for KmodResolve {
    fn resolve<'a>(
        &'a self,
        target: &'a str,
        blacklist: BlacklistScope,
    ) -> BoxFuture<'a, Result<Arc<Plan>, String>> {
        Box::pin(async move {
            let plan = self.0.resolve_with(target, blacklist).await;
            plan.map_err(|e| e.to_string())
        })
    }

    fn reload_count(&self) -> u64 {
        self.0.reload_count()
    }
}

/// Sends systemd one notification (`sd_notify(3)`, through the `sd-notify` crate; a no-op
/// without `$NOTIFY_SOCKET`). A failure is logged at debug level and otherwise ignored: a
/// notification must never stop the daemon from serving. `$NOTIFY_SOCKET` stays in the
/// environment (the crate reads it on every call): a child could only send as its own pid,
/// which systemd ignores under the default `NotifyAccess=main`.
fn notify(state: NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Changes the log filter while running (SIGHUP).
type LogLevelHandle = reload::Handle<EnvFilter, Registry>;

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.check_config {
        return Ok(check_config(&args));
    }
    let (config, errors) = load_config(&args);
    let log_level = init_logging(&config.log_level);
    if args.run_install {
        return run_install(&config);
    }
    if args.show_depends {
        let blacklist = BlacklistScope::names_too(args.blacklist_names);
        return show_depends(&config, &args.oneshot_args, blacklist);
    }
    if args.oneshot {
        for err in &errors {
            warn!("{err}; loading with {}", fallback(err, false));
        }
        let blacklist = BlacklistScope::names_too(args.blacklist_names);
        oneshot(&config, &args.oneshot_args, blacklist)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config_note = report_config_errors(&errors, false);
    // SAFETY: still single-threaded (logging spawns no thread), as changing the environment
    // requires; the runtime and the resolver thread start below.
    let activated = unsafe { server::take_activated_socket() }?;
    // One thread serves every connection: the async work per request is a few microseconds of
    // parsing and map lookups, and each finit_module runs on the blocking pool anyway. A
    // multi-thread runtime cost 2.5x the CPU per connection here (0.30-0.37 ms against 0.13 ms
    // of daemon CPU per `modbroker` call, measured with 300 sequential calls on this host),
    // in futex wake-ups between workers for every accept, read and write.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Names the blocking-pool threads that make the finit_module calls, so that ps, top
        // and the kernel's syscall trace show "modbrokerd", not "tokio-runtime-w".
        .thread_name("modbrokerd")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args, config, config_note, log_level, activated))?;
    Ok(ExitCode::SUCCESS)
}

/// `--run-install`: the connection modbroker-install.socket accepted is our stdin.
fn run_install(config: &Config) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take the connection on stdin")?;
    let stream = std::os::unix::net::UnixStream::from(stdin);
    install_runner::serve(stream, &config.module_dir(), None)
        .context("cannot serve the install-command request")?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration file: the given one (required), else the default (optional).
fn config_file(args: &Args) -> (&Path, bool) {
    match &args.config {
        Some(path) => (path, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    }
}

/// The configuration file with flags on top, and what was wrong with it. Never fails: a file that
/// cannot be used gives the built-in defaults (with flags on top), an invalid log level gives
/// `info`, so that a bad file never stops module loading.
fn load_config(args: &Args) -> (Config, Vec<ConfigError>) {
    let (path, required) = config_file(args);
    let mut errors = Vec::new();
    let mut config = Config::load(path, required).unwrap_or_else(|err| {
        errors.push(err);
        Config::default()
    });
    if let Some(socket) = &args.socket {
        config.socket = socket.clone();
    }
    if let Some(dir) = &args.module_dir {
        config.module_dir = Some(dir.clone());
    }
    let level_origin = match &args.log_level {
        Some(level) => {
            config.log_level = level.clone();
            "--log-level".to_string()
        }
        None => path.display().to_string(),
    };
    if let Err(err) = check_log_level(&config.log_level, &level_origin) {
        errors.push(err);
        config.log_level = Config::default().log_level;
    }
    (config, errors)
}

/// What runs instead of what `err` made unusable: the defaults at start-up, the running
/// configuration on reload; an invalid log level is replaced by `info` either way.
fn fallback(err: &ConfigError, reloading: bool) -> &'static str {
    match err {
        ConfigError::LogLevel { .. } => "log_level info",
        _ if reloading => "the previous configuration",
        _ => "defaults",
    }
}

/// Logs each configuration error at error level and returns the `STATUS=` prefix that keeps the
/// first one visible in `systemctl status` ("" when there is none).
fn report_config_errors(errors: &[ConfigError], reloading: bool) -> String {
    for err in errors {
        error!("{err}; running with {}", fallback(err, reloading));
    }
    errors
        .first()
        .map(|err| {
            format!(
                "configuration error in {} (see journal), running with {}; ",
                err.origin(),
                fallback(err, reloading)
            )
        })
        .unwrap_or_default()
}

/// `--check-config`: reads the configuration file and checks its log level; prints `FILE: ok`
/// or the error. Loads nothing, binds nothing. A missing default file is fine (defaults apply).
fn check_config(args: &Args) -> ExitCode {
    let (path, required) = config_file(args);
    let shown = path.display();
    let checked = Config::load(path, true).and_then(|config| {
        check_log_level(&config.log_level, &shown.to_string())?;
        config.socket_perms(path).map(drop)
    });
    match checked {
        Ok(()) => println!("{shown}: ok"),
        Err(ConfigError::Read { source, .. })
            if !required && source.kind() == std::io::ErrorKind::NotFound =>
        {
            println!("{shown}: not found; the built-in defaults apply");
        }
        Err(err) => {
            eprintln!("modbrokerd: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `--oneshot [--blacklist-names] TARGET [PARAM...]`: loads directly and prints the one JSON
/// result line the client parses. Nothing else may reach stdout: logs go to stderr, and so does
/// the stdout of any `install` command the load runs (`kernel::run_install_command`).
fn oneshot(config: &Config, args: &[String], blacklist: BlacklistScope) -> anyhow::Result<()> {
    let (target, params) = args.split_first().context("--oneshot needs a TARGET")?;
    let kernel = SysKernel::new(Arc::new(Installer::in_process()));
    let result = load_direct(&kernel, &config.module_dir(), target, params, blacklist);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `--show-depends [--blacklist-names] TARGET...`: resolves each target here, with the resolver
/// the daemon uses, and prints what `modprobe -a --show-depends TARGET...` prints (the lines of
/// [`Plan::show_depends`]). A `-` stands for the targets on stdin, one a line. A target that
/// matches nothing, or is refused or cannot be resolved, gets a stderr line and makes the exit
/// status 1, as in modprobe; the next one is resolved all the same.
fn show_depends(
    config: &Config,
    args: &[String],
    blacklist: BlacklistScope,
) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, Write};
    let module_dir = config.module_dir();
    let mut resolver = KmodResolver::new(&module_dir, None)
        .with_context(|| format!("cannot open the module tree {}", module_dir.display()))?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut all_found = true;
    let mut show = |target: &str| -> anyhow::Result<()> {
        let plan = validate_target(target)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                resolver
                    .resolve_with(t, blacklist)
                    .map_err(|e| e.to_string())
            });
        match plan.map(|plan| plan.show_depends()) {
            Ok(Some(lines)) => return Ok(stdout.write_all(lines.as_bytes())?),
            Ok(None) => eprintln!("modbrokerd: {target}: no module matches"),
            Err(e) => eprintln!("modbrokerd: {target}: {e}"),
        }
        all_found = false;
        Ok(())
    };
    for arg in args {
        if arg != "-" {
            show(arg)?;
            continue;
        }
        for line in std::io::stdin().lock().lines() {
            show(&line.context("cannot read targets from stdin")?)?;
        }
    }
    stdout.flush()?;
    Ok(if all_found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// The `STATUS=` line: the configuration error note (if any), then the counters.
fn status_line(service: &Service, config_note: &str) -> String {
    let t = service.broker().recorder().totals();
    format!(
        "{config_note}{} requests, {} merged, {} loads, {} failed, {} in flight",
        t.requests,
        t.merged,
        t.load_calls,
        t.failed_loads,
        service.broker().in_flight_count()
    )
}

/// Sends the `STATUS=` line every 2 s when it changed; `last` is the one already sent.
async fn keep_status_current(
    service: Service,
    config_note: watch::Receiver<String>,
    mut last: String,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let line = status_line(&service, &config_note.borrow());
        if line != last {
            notify(NotifyState::Status(&line));
            last = line;
        }
    }
}

fn init_logging(level: &str) -> LogLevelHandle {
    // load_config has checked the level; "info" is only a guard should the two ever disagree.
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd, stderr is a stream to the journal: log to the journal directly, with
    // priorities and fields, instead of plain lines.
    let journald = stderr_is_journal()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    match journald {
        Some(journald) => registry
            // No `F_` prefix: a finished load's fields are `MODULE=`, `ERRNO=`, ... so that
            // `journalctl MODULE=kvm_amd` finds it.
            .with(
                journald
                    .with_syslog_identifier("modbrokerd".into())
                    .with_field_prefix(None),
            )
            .init(),
        // Colours only for a person at a terminal: in an initramfs stderr is a log file or
        // /dev/kmsg, where escape codes are noise.
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .init(),
    }
    handle
}

async fn serve(
    args: Args,
    config: Config,
    config_note: String,
    log_level: LogLevelHandle,
    activated: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let module_dir = config.module_dir();
    let resolver = ResolverHandle::spawn(module_dir.clone(), None)
        .with_context(|| format!("cannot open the module tree {}", module_dir.display()))?;
    // Install commands go to the unsandboxed runner when its socket is there (see
    // modbroker::install_runner); in an initramfs without systemd they run here.
    let kernel = SysKernel::new(Arc::new(Installer::through_runner(
        install_runner::DEFAULT_SOCKET.into(),
    )));
    let recorder = Arc::new(Recorder::new(Phase::detect()));
    let broker = Broker::with_recorder(Arc::new(kernel), config.broker_settings(), recorder);
    let record_dir = args.record_dir.clone();
    tokio::spawn(keep_record_written(broker.clone(), record_dir.clone()));
    let service = with_skip_markers(
        Service::new(Arc::new(KmodResolve(resolver.clone())), broker),
        &args.skip_dir,
    );
    tokio::spawn(service.clone().keep_skip_markers_swept());
    tokio::spawn(config_watch::reload_on_change(
        config_watch::watched_dirs(&module_dir),
        {
            let (resolver, service) = (resolver.clone(), service.clone());
            move || reload_modules(resolver.clone(), service.clone())
        },
    ));
    let access = SharedAccess::from(access_policy(&config));
    let (listener, bound_path) = listen(&config, config_file(&args).0, activated)?;
    let socket_file = socket_file(&listener);
    report_access_gaps(socket_file.as_deref(), &access_policy(&config));
    // Idle exit only makes sense when systemd holds the socket and can start us again.
    let idle_exit = (bound_path.is_none() && config.idle_exit_secs > 0)
        .then(|| Duration::from_secs(config.idle_exit_secs));
    let socket_name = bound_path
        .as_deref()
        .unwrap_or("socket activation".as_ref());
    info!(socket = %socket_name.display(), module_dir = %module_dir.display(), "modbrokerd ready");
    notify(NotifyState::Ready);
    let (config_note, note_rx) = watch::channel(config_note);
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let first = status_line(&service, &note_rx.borrow());
        notify(NotifyState::Status(&first));
        tokio::spawn(keep_status_current(service.clone(), note_rx, first));
    }
    let shutdown = CancellationToken::new();
    let reloader = Reloader {
        args,
        running: config,
        resolver,
        service: service.clone(),
        access: access.clone(),
        socket_file,
        log_level,
        config_note,
    };
    tokio::spawn(watch_signals(shutdown.clone(), reloader));
    server::run_with_idle_exit(listener, service.clone(), access, shutdown, idle_exit).await;
    notify(NotifyState::Stopping);
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    // The totals outlive the process in the log: an initramfs daemon's are all that is left of it.
    let t = service.broker().recorder().totals();
    write_record(service.broker(), &record_dir, true).await;
    info!(
        requests = t.requests,
        merged = t.merged,
        load_calls = t.load_calls,
        failed_loads = t.failed_loads,
        "modbrokerd stopped"
    );
    Ok(())
}

/// A module index or modprobe.d changed (modbroker::config_watch): read them again and forget
/// what came from the old ones, as SIGHUP does for these two.
async fn reload_modules(resolver: ResolverHandle, service: Service) {
    match resolver.reload().await {
        Ok(()) => info!("module indexes or modprobe.d changed; reloaded"),
        Err(err) => warn!(error = %err, "module index reload failed"),
    }
    service.forget_after_reload();
}

/// Markers in `dir` that spare udev a client exec (modbroker::skip); without them (an empty
/// `dir`, or one that cannot be made) every uevent still execs the client, as before.
fn with_skip_markers(service: Service, dir: &Path) -> Service {
    if dir.as_os_str().is_empty() {
        return service;
    }
    match SkipMarkers::open(dir, "/sys/module".as_ref(), service.resolver_generation()) {
        Ok(markers) => service.with_skip_markers(Arc::new(markers)),
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "no skip markers");
            service
        }
    }
}

/// How often the record file is brought up to date while anything changes.
const RECORD_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps this instance's file in the boot's record (`modbroker blame`) current: rewritten within
/// [`RECORD_INTERVAL`] of a change. A reading of the change counter and the counters every
/// interval costs next to nothing, and batches a coldplug burst into a few writes.
async fn keep_record_written(broker: Broker, dir: PathBuf) {
    let mut written = None;
    loop {
        tokio::time::sleep(RECORD_INTERVAL).await;
        let now = (broker.recorder().generation(), broker.recorder().totals());
        if written.as_ref() != Some(&now) {
            write_record(&broker, &dir, false).await;
            written = Some(now);
        }
    }
}

/// Writes this instance's record file; a failure is logged (at most once until a write works
/// again) and never stops the daemon. The snapshot is taken here; serialising and writing it
/// (up to a few MB at the record's limits) run on the blocking pool, never on the thread that
/// serves requests.
async fn write_record(broker: &Broker, dir: &Path, stopped: bool) {
    static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let recorder = broker.recorder();
    let snapshot = recorder.snapshot(stopped);
    let (dir, name) = (dir.to_path_buf(), recorder.file_name());
    let written = tokio::task::spawn_blocking(move || {
        recorder::write_record(&dir, &name, &snapshot).map_err(|err| (dir, err))
    })
    .await;
    match written {
        Ok(Ok(())) => FAILING.store(false, Ordering::Relaxed),
        Ok(Err((dir, err))) if !FAILING.swap(true, Ordering::Relaxed) => {
            warn!(dir = %dir.display(), error = %err, "cannot write the boot's record")
        }
        Ok(Err(_)) => {}
        Err(err) => warn!(error = %err, "record writer thread failed"),
    }
}

/// One descriptor per waiting client: during coldplug on a big machine thousands wait at once,
/// more than the usual soft limit of 1024. Raise the soft limit to the hard one (nothing here uses
/// select(2), so large descriptor numbers are safe).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(error = %err, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(err) => warn!(error = %err, "cannot read the open-file limit"),
    }
}

/// The socket to serve: the one systemd handed us, else our own, bound at `config.socket` and
/// given `socket_group`/`socket_mode`; with the path we bound (removed on exit).
fn listen(
    config: &Config,
    origin: &Path,
    activated: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<(UnixListener, Option<PathBuf>)> {
    if let Some(activated) = activated {
        let listener = server::adopt_activated_socket(activated)?;
        if config.socket_group.is_some() || config.socket_mode.is_some() {
            warn!(
                "socket_group and socket_mode apply to a socket the daemon binds itself; under \
                 socket activation set SocketGroup= and SocketMode= for modbroker.socket \
                 (systemctl edit modbroker.socket)"
            );
        }
        return Ok((listener, None));
    }
    let listener = server::bind_socket(&config.socket)?;
    share_own_socket(config, origin);
    Ok((listener, Some(config.socket.clone())))
}

/// Gives the socket we bound its `socket_group`/`socket_mode`. On error it stays root-only,
/// which still serves udev and the kernel's helper: logged, never fatal.
fn share_own_socket(config: &Config, origin: &Path) {
    let perms = match config.socket_perms(origin) {
        Ok(perms) if perms == SocketPerms::default() => return,
        Ok(perms) => perms,
        Err(err) => {
            error!("{err}; the socket stays root-only");
            return;
        }
    };
    if let Err(err) = server::share_socket(&config.socket, perms) {
        let socket = config.socket.display();
        error!(%socket, error = %err, "cannot set the socket's group and mode; it stays root-only");
    }
}

/// The file of the socket we serve (`None` for an abstract socket, which has no permissions).
fn socket_file(listener: &UnixListener) -> Option<PathBuf> {
    let addr = listener.local_addr().ok()?;
    addr.as_pathname().map(Path::to_path_buf)
}

/// Logs at error priority each uid or gid `policy` allows that the socket file keeps out: for
/// them the access list cannot take effect.
fn report_access_gaps(socket: Option<&Path>, policy: &AccessPolicy) {
    let Some(path) = socket else { return };
    let file = match SocketFile::stat(path) {
        Ok(file) => file,
        Err(err) => {
            warn!(socket = %path.display(), error = %err, "cannot check who can connect");
            return;
        }
    };
    for who in file.unreachable(policy) {
        error!(
            "allowed {who} cannot connect to {file}: the access list cannot take effect for it; \
             open the socket to it with socket_group/socket_mode (a socket the daemon binds) or \
             SocketGroup=/SocketMode= in a drop-in for modbroker.socket (systemctl edit \
             modbroker.socket)"
        );
    }
}

fn access_policy(config: &Config) -> AccessPolicy {
    AccessPolicy {
        uids: config.allowed_uids.clone(),
        gids: config.allowed_gids.clone(),
    }
}

/// What SIGHUP reloads.
struct Reloader {
    args: Args,
    running: Config,
    resolver: ResolverHandle,
    service: Service,
    access: SharedAccess,
    /// The socket's file, to check the access list against on reload.
    socket_file: Option<PathBuf>,
    log_level: LogLevelHandle,
    /// The `STATUS=` prefix naming a configuration error the daemon runs despite.
    config_note: watch::Sender<String>,
}

impl Reloader {
    /// A file that cannot be used keeps the running configuration; an invalid log level alone
    /// becomes `info` and the rest applies.
    async fn reload(&mut self) {
        let (config, errors) = load_config(&self.args);
        self.config_note
            .send_replace(report_config_errors(&errors, true));
        let unusable = |err: &ConfigError| !matches!(err, ConfigError::LogLevel { .. });
        if !errors.iter().any(unusable) {
            self.apply(config);
        }
        match self.resolver.reload().await {
            Ok(()) => info!("reloaded module indexes and modprobe.d"),
            Err(err) => warn!(error = %err, "module index reload failed"),
        }
        // Whatever a remembered failure or a skip marker came from (a module file, modprobe.d,
        // the indexes) may have changed: the next request for the module tries again.
        self.service.forget_after_reload();
    }

    fn apply(&mut self, config: Config) {
        match EnvFilter::try_new(&config.log_level) {
            Ok(filter) => {
                let _ = self.log_level.reload(filter);
            }
            Err(err) => error!("invalid log level {:?} ignored: {err}", config.log_level),
        }
        let policy = access_policy(&config);
        report_access_gaps(self.socket_file.as_deref(), &policy);
        self.access.set(policy);
        self.service
            .broker()
            .set_failure_window(config.broker_settings().failure_window);
        let old = &self.running;
        if config.socket != old.socket
            || config.socket_group != old.socket_group
            || config.socket_mode != old.socket_mode
            || config.module_dir != old.module_dir
            || config.max_parallel_loads != old.max_parallel_loads
            || config.idle_exit_secs != old.idle_exit_secs
        {
            warn!(
                "socket, socket_group, socket_mode, module_dir, max_parallel_loads and \
                 idle_exit_secs change only on restart"
            );
        }
        info!("configuration reloaded");
        self.running = config;
    }
}

/// SIGTERM/SIGINT: shut down in order. SIGHUP: reload configuration and kmod indexes.
async fn watch_signals(shutdown: CancellationToken, mut reloader: Reloader) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reloader.reload().await,
        }
    }
    shutdown.cancel();
}
