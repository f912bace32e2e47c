//! The daemon's logging: to the journal directly (priorities and fields) when stderr is a stream
//! to it, else plain lines on stderr; with a filter that SIGHUP can change while running.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter while running (SIGHUP).
pub type LogLevelHandle = reload::Handle<EnvFilter, Registry>;

fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// Installs the process's log subscriber at `level` (a level checked by
/// [`load_config`](super::config_layers::load_config)); returns the handle that changes it.
pub fn init_logging(level: &str) -> LogLevelHandle {
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
