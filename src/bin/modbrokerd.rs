//! `modbrokerd`: the broker daemon. Socket-activated by systemd (modbroker.socket) or binding its
//! own socket; resolves with libkmod on one thread, merges loads, answers every waiter.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::future::BoxFuture;
use modbroker::broker::Broker;
use modbroker::config::{Config, DEFAULT_CONFIG_PATH};
use modbroker::direct::load_direct;
use modbroker::kernel::SysKernel;
use modbroker::notify::Notifier;
use modbroker::plan::Plan;
use modbroker::resolver::ResolverHandle;
use modbroker::server::{self, AccessPolicy};
use modbroker::service::{Resolve, Service};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    name = "modbrokerd",
    version,
    about = "Kernel module-load broker daemon: one finit_module per module name"
)]
struct Args {
    /// Configuration file [default: /etc/modbroker/modbroker.toml, if present]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket to bind when not socket-activated [default: /run/modbroker.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Module tree [default: /lib/modules/$(uname -r)]
    #[arg(long, value_name = "DIR")]
    module_dir: Option<PathBuf>,
    /// error, warn, info, debug, trace (or a tracing filter) [default: info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Load TARGET directly (no daemon, no merging), print its result as JSON, exit: the
    /// client's fallback when no daemon answers
    #[arg(long, requires = "oneshot_args")]
    oneshot: bool,
    /// With --oneshot: TARGET [PARAM=VALUE...]
    #[arg(requires = "oneshot", value_name = "TARGET [PARAM...]")]
    oneshot_args: Vec<String>,
}

/// The libkmod resolver thread, as the service sees it.
struct KmodResolve(ResolverHandle);

impl Resolve for KmodResolve {
    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Arc<Plan>, String>> {
        Box::pin(async move { self.0.resolve(target).await.map_err(|e| e.to_string()) })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::load(path, true),
        None => Config::load(std::path::Path::new(DEFAULT_CONFIG_PATH), false),
    }?;
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if let Some(dir) = args.module_dir {
        config.module_dir = Some(dir);
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    init_logging(&config.log_level)?;
    if args.oneshot {
        return oneshot(&config, &args.oneshot_args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("modbrokerd")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config))
}

/// `--oneshot TARGET [PARAM...]`: one direct load; the result goes to stdout as one JSON line.
fn oneshot(config: &Config, args: &[String]) -> anyhow::Result<()> {
    let (target, params) = args.split_first().context("--oneshot needs a TARGET")?;
    let result = load_direct(&SysKernel::default(), &config.module_dir(), target, params);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid log level {level:?}"))?;
    // Under systemd, stderr is a stream to the journal: log to the journal directly, with
    // priorities and fields, instead of plain lines.
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("modbrokerd".into()))
                .init();
            return Ok(());
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Ok(())
}

/// True when `$JOURNAL_STREAM` (set by systemd) names the file stderr is connected to.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    let module_dir = config.module_dir();
    let resolver = ResolverHandle::spawn(module_dir.clone(), None)
        .with_context(|| format!("cannot open the module tree {}", module_dir.display()))?;
    let broker = Broker::new(Arc::new(SysKernel::default()), config.broker_settings());
    let service = Service::new(Arc::new(KmodResolve(resolver.clone())), broker);
    let access = AccessPolicy {
        uids: config.allowed_uids.clone(),
        gids: config.allowed_gids.clone(),
    };
    let (listener, bound_path) = match server::activated_listener()? {
        Some(listener) => (listener, None),
        None => (
            server::bind_socket(&config.socket)?,
            Some(config.socket.clone()),
        ),
    };
    // Idle exit only makes sense when systemd holds the socket and can start us again.
    let idle_exit = (bound_path.is_none() && config.idle_exit_secs > 0)
        .then(|| Duration::from_secs(config.idle_exit_secs));
    let socket_name = bound_path
        .as_deref()
        .unwrap_or("socket activation".as_ref());
    info!(socket = %socket_name.display(), module_dir = %module_dir.display(), "modbrokerd ready");
    notifier.notify("READY=1");
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), resolver));
    if notifier.is_active() {
        tokio::spawn(keep_status_current(notifier.clone(), service.clone()));
    }
    server::run_with_idle_exit(listener, service, access, shutdown, idle_exit).await;
    notifier.notify("STOPPING=1");
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    info!("modbrokerd stopped");
    Ok(())
}

/// Keeps systemd's `STATUS=` line (shown by `systemctl status`) current, every 2 s when changed.
async fn keep_status_current(notifier: Arc<Notifier>, service: Service) {
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let c = service.broker().counters();
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let line = format!(
            "STATUS={} requests, {} merged, {} loads, {} failed, {} in flight",
            get(&c.requests),
            get(&c.merged),
            get(&c.load_calls),
            get(&c.failed_loads),
            service.broker().in_flight_count()
        );
        if line != last {
            notifier.notify(&line);
            last = line;
        }
    }
}

/// SIGTERM/SIGINT: shut down in order. SIGHUP: reload the kmod indexes and configuration.
async fn watch_signals(shutdown: CancellationToken, resolver: ResolverHandle) {
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
            _ = hup.recv() => match resolver.reload().await {
                Ok(()) => info!("reloaded module indexes"),
                Err(err) => warn!(error = %err, "reload failed"),
            },
        }
    }
    shutdown.cancel();
}
