//! The daemon's configuration in layers: the configuration file (the given one, else the
//! default), the command line's flags on top, and what runs instead when the file cannot be
//! used. A bad configuration file never stops module loading: its errors are logged and kept at
//! the front of the `STATUS=` line, and the daemon runs with the built-in defaults (at start-up)
//! or the running configuration (on SIGHUP). `--check-config` checks a file and exits.

use std::path::Path;
use std::process::ExitCode;

use tracing::error;

use crate::cli::DaemonArgs as Args;
use crate::config::{check_log_level, Config, ConfigError, DEFAULT_CONFIG_PATH};

/// The configuration file: the given one (required), else the default (optional).
pub fn config_file(args: &Args) -> (&Path, bool) {
    match &args.config {
        Some(path) => (path, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    }
}

/// The configuration file with flags on top, and what was wrong with it. Never fails: a file that
/// cannot be used gives the built-in defaults (with flags on top), an invalid log level gives
/// `info`, so that a bad file never stops module loading.
pub fn load_config(args: &Args) -> (Config, Vec<ConfigError>) {
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
pub fn fallback(err: &ConfigError, reloading: bool) -> &'static str {
    match err {
        ConfigError::LogLevel { .. } => "log_level info",
        _ if reloading => "the previous configuration",
        _ => "defaults",
    }
}

/// Logs each configuration error at error level and returns the `STATUS=` prefix that keeps the
/// first one visible in `systemctl status` ("" when there is none).
pub fn report_config_errors(errors: &[ConfigError], reloading: bool) -> String {
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
pub fn check_config(args: &Args) -> ExitCode {
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
