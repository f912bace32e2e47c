//! Serving: the daemon put together (resolver thread, kernel, broker with its recorder, service
//! with its skip markers, the socket and its access list), its background loops started (record
//! writer, skip-marker sweep, index watch, `STATUS=` line, signals), then served until SIGTERM or
//! SIGINT (or idle exit under socket activation), and stopped in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config_layers::config_file;
use super::logging::LogLevelHandle;
use super::notify::{keep_status_current, notify, status_line};
use super::record_writer::{keep_record_written, write_record};
use super::reload::{reload_modules, watch_signals, Reloader};
use super::socket::{access_policy, listen, report_access_gaps, socket_file};
use super::DaemonError;
use crate::broker::Broker;
use crate::cli::DaemonArgs as Args;
use crate::config::Config;
use crate::config_watch;
use crate::install_runner::{self, Installer};
use crate::kernel::SysKernel;
use crate::record::Phase;
use crate::recorder::Recorder;
use crate::resolver::ResolverHandle;
use crate::server::{self, SharedAccess};
use crate::service::Service;
use crate::skip::SkipMarkers;

/// Serves on the socket systemd handed over (`activated`), else on one it binds, until SIGTERM
/// or SIGINT; `config_note` is the `STATUS=` prefix naming a configuration error the daemon runs
/// despite, `log_level` the handle SIGHUP changes the log filter with.
pub async fn serve(
    args: Args,
    config: Config,
    config_note: String,
    log_level: LogLevelHandle,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<(), DaemonError> {
    raise_fd_limit();
    let module_dir = config.module_dir();
    let resolver = ResolverHandle::spawn(module_dir.clone(), None).map_err(|source| {
        DaemonError::ModuleTree {
            path: module_dir.clone(),
            source,
        }
    })?;
    let kernel = daemon_kernel();
    let recorder = Arc::new(Recorder::new(Phase::detect()));
    let broker = Broker::with_recorder(Arc::new(kernel), config.broker_settings(), recorder);
    let record_dir = args.record_dir.clone();
    tokio::spawn(keep_record_written(broker.clone(), record_dir.clone()));
    let service = with_skip_markers(
        Service::new(Arc::new(resolver.clone()), broker),
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

/// The kernel the daemon loads through.
fn daemon_kernel() -> SysKernel {
    // Install commands go to the unsandboxed runner when its socket is there (see
    // modbroker::install_runner); in an initramfs without systemd they run here.
    SysKernel::new(Arc::new(Installer::through_runner(
        install_runner::DEFAULT_SOCKET.into(),
    )))
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
