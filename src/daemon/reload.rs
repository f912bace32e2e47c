//! Reloading while serving. SIGHUP re-reads the configuration file (allowed uids/gids, failure
//! window, log level take effect at once; socket, socket_group, socket_mode, module_dir,
//! max_parallel_loads and idle_exit_secs need a restart), reloads the kmod indexes and
//! modprobe.d, and forgets remembered load failures; a file that cannot be used keeps the running
//! configuration. A changed module index or modprobe.d (`config_watch`) reloads those two alone.
//! SIGTERM/SIGINT start the shutdown.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use super::config_layers::{load_config, report_config_errors};
use super::logging::LogLevelHandle;
use super::socket::{access_policy, report_access_gaps};
use crate::cli::DaemonArgs as Args;
use crate::config::{Config, ConfigError};
use crate::resolver::ResolverHandle;
use crate::server::SharedAccess;
use crate::service::Service;

/// What SIGHUP reloads.
pub(super) struct Reloader {
    /// The command line, whose flags go on top of the file again.
    pub(super) args: Args,
    /// The configuration in effect.
    pub(super) running: Config,
    /// The resolver thread, told to reload its indexes and modprobe.d.
    pub(super) resolver: ResolverHandle,
    /// The service, whose broker gets the new failure window and forgets its failures.
    pub(super) service: Service,
    /// The access list the server checks, replaced by the new one.
    pub(super) access: SharedAccess,
    /// The socket's file, to check the access list against on reload.
    pub(super) socket_file: Option<PathBuf>,
    /// The log filter, replaced by the new log level.
    pub(super) log_level: LogLevelHandle,
    /// The `STATUS=` prefix naming a configuration error the daemon runs despite.
    pub(super) config_note: watch::Sender<String>,
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
pub(super) async fn watch_signals(shutdown: CancellationToken, mut reloader: Reloader) {
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

/// A module index or modprobe.d changed (modbroker::config_watch): read them again and forget
/// what came from the old ones, as SIGHUP does for these two.
pub(super) async fn reload_modules(resolver: ResolverHandle, service: Service) {
    match resolver.reload().await {
        Ok(()) => info!("module indexes or modprobe.d changed; reloaded"),
        Err(err) => warn!(error = %err, "module index reload failed"),
    }
    service.forget_after_reload();
}
