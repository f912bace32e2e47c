//! The daemon's configuration: `/etc/modbroker/modbroker.toml` (every key optional and
//! defaulted; see `config/modbroker.toml` for the documented file), with command-line flags
//! applied on top by the daemon's front end.
//!
//! Errors are strict (unknown keys, wrong types, a log level that is not a usable filter), so a
//! typo never passes unnoticed; what the daemon does about them is its front end's business (it
//! reports them and runs with the defaults: a bad file must never stop module loading).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::broker::BrokerSettings;
use crate::server::SocketPerms;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/modbroker/modbroker.toml";
/// The default socket path (also the client's default).
pub const DEFAULT_SOCKET_PATH: &str = "/run/modbroker.sock";

/// A configuration that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key has a value of the right type that cannot be used.
    #[error("invalid {key} in {path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// `log_level` is not a usable tracing filter.
    #[error("invalid log_level {level:?} in {origin}: {message}")]
    LogLevel {
        /// Where the level came from: the file, or `--log-level`.
        origin: String,
        /// The level as given.
        level: String,
        /// Why it is unusable.
        message: String,
    },
}

impl ConfigError {
    /// Where the error is: the file, or `--log-level`.
    pub fn origin(&self) -> String {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Parse { path, .. }
            | ConfigError::Value { path, .. } => path.display().to_string(),
            ConfigError::LogLevel { origin, .. } => origin.clone(),
        }
    }
}

/// Checks that `level` is a usable tracing filter; `origin` names where it came from. Beyond
/// the filter syntax, each bare word must be a level: the filter would take `warning` or `verbose`
/// for a target name and silently log nothing else (write `TARGET=LEVEL` for a target).
pub fn check_log_level(level: &str, origin: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::LogLevel {
        origin: origin.to_string(),
        level: level.to_string(),
        message,
    };
    EnvFilter::try_new(level).map_err(|e| invalid(e.to_string()))?;
    let bare_words = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains(['=', '[']));
    for word in bare_words {
        if word.parse::<LevelFilter>().is_err() {
            return Err(invalid(format!(
                "{word:?} is not a level (error, warn, info, debug, trace, off); \
                 for a target's level write TARGET=LEVEL"
            )));
        }
    }
    Ok(())
}

/// Daemon settings. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket to bind when not socket-activated.
    pub socket: PathBuf,
    /// Module tree; `None` means `/lib/modules/$(uname -r)`.
    pub module_dir: Option<PathBuf>,
    /// Seconds a failed load's outcome answers new requests without another syscall.
    pub failure_window_secs: u64,
    /// Most module loads running at once.
    pub max_parallel_loads: usize,
    /// Group (name or number) to own the socket the daemon binds itself; `None`: root.
    pub socket_group: Option<String>,
    /// Permission bits of the socket the daemon binds itself; `None`: 0660 with a
    /// `socket_group`, else 0600.
    pub socket_mode: Option<u32>,
    /// Users besides root allowed to use the broker.
    pub allowed_uids: Vec<u32>,
    /// Groups (primary or supplementary) allowed to use the broker.
    pub allowed_gids: Vec<u32>,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter directive).
    pub log_level: String,
    /// Exit after this many seconds without connections or loads (0: never). Only honoured
    /// when socket-activated, so that systemd restarts the daemon on the next connection.
    pub idle_exit_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET_PATH),
            module_dir: None,
            failure_window_secs: 30,
            max_parallel_loads: 16,
            socket_group: None,
            socket_mode: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            log_level: "info".into(),
            idle_exit_secs: 0,
        }
    }
}

impl Config {
    /// Parses configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(text, &e),
        })?;
        if config.socket_mode.is_some_and(|mode| mode & !0o777 != 0) {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "socket_mode",
                message: "only permission bits (0o000 to 0o777; write it in octal, 0o660)".into(),
            });
        }
        Ok(config)
    }

    /// Loads `path`. A missing file is an error only if `required` (given with `--config`);
    /// otherwise the defaults apply, so a machine needs no configuration file at all.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The broker's settings.
    pub fn broker_settings(&self) -> BrokerSettings {
        BrokerSettings {
            failure_window: Duration::from_secs(self.failure_window_secs),
            max_parallel_loads: self.max_parallel_loads.max(1),
            ..BrokerSettings::default()
        }
    }

    /// Owner group and mode for the socket the daemon binds itself, with `socket_group` looked
    /// up (a number is taken as a gid). `origin` names the file in errors.
    pub fn socket_perms(&self, origin: &Path) -> Result<SocketPerms, ConfigError> {
        let gid = match &self.socket_group {
            None => None,
            Some(group) => Some(group_id(group).map_err(|message| ConfigError::Value {
                path: origin.to_path_buf(),
                key: "socket_group",
                message,
            })?),
        };
        let default_mode = if gid.is_some() { 0o660 } else { 0o600 };
        Ok(SocketPerms {
            gid,
            mode: self.socket_mode.unwrap_or(default_mode),
        })
    }

    /// The module directory, defaulting to `/lib/modules/$(uname -r)`.
    pub fn module_dir(&self) -> PathBuf {
        self.module_dir.clone().unwrap_or_else(running_module_dir)
    }
}

/// The parser's message on one line, ``line L, column C (`SOURCE LINE`): MESSAGE``. toml's own
/// rendering spans several lines with a snippet, which would become several journal entries or
/// stderr lines; the source line stays, because a type error's message does not name the key.
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(start) = err
        .span()
        .map(|span| span.start)
        .filter(|&s| text.is_char_boundary(s))
    else {
        return message;
    };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source: String = text[line_start..]
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(80)
        .collect();
    format!(
        "line {line}, column {column} (`{}`): {message}",
        source.trim()
    )
}

/// The gid of `group`: a group name from the group database, or a number.
fn group_id(group: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        _ if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) => {
            group.parse().map_err(|e| format!("{group:?}: {e}"))
        }
        Ok(None) => Err(format!("no group named {group:?}")),
        Err(err) => Err(format!("cannot look up group {group:?}: {err}")),
    }
}

/// `/lib/modules/$(uname -r)`.
pub fn running_module_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_parses_to_the_defaults() {
        let text = include_str!("../config/modbroker.toml");
        let config = Config::parse(text, Path::new("modbroker.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn keys_override_and_unknown_keys_fail() {
        let config = Config::parse(
            "failure_window_secs = 5\nallowed_gids = [42]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(config.failure_window_secs, 5);
        assert_eq!(config.allowed_gids, vec![42]);
        let err = Config::parse("failure_windows = 5\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("failure_windows"), "{err}");
    }

    #[test]
    fn parse_errors_are_one_line_with_the_position() {
        let text = "log_level = \"info\"\n\n  failure_window = 10\n";
        let err = Config::parse(text, Path::new("/etc/m.toml")).unwrap_err();
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(
            shown.starts_with(
                "invalid configuration in /etc/m.toml: line 3, column 3 (`failure_window = 10`): "
            ),
            "{shown}"
        );
        assert!(shown.contains("unknown field `failure_window`"), "{shown}");
    }

    #[test]
    fn type_errors_name_the_key_and_the_file() {
        let err =
            Config::parse("failure_window_secs = \"10\"\n", Path::new("/etc/m.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("failure_window_secs"), "{text}");
        assert_eq!(err.origin(), "/etc/m.toml");
    }

    #[test]
    fn log_levels_are_checked_as_filters() {
        for good in [
            "info",
            "WARN",
            "off",
            "modbroker=debug",
            "info,modbroker=trace",
        ] {
            assert!(check_log_level(good, "f").is_ok(), "{good:?}");
        }
        for bad in ["warning", "verbose", "info,loud", "modbroker=loud", "[{"] {
            let err = check_log_level(bad, "/etc/m.toml").unwrap_err();
            assert!(err.to_string().contains("/etc/m.toml"), "{err}");
            assert_eq!(err.origin(), "/etc/m.toml");
        }
    }

    #[test]
    fn socket_perms_default_to_root_only_and_follow_the_group() {
        let origin = Path::new("/etc/m.toml");
        let root_only = SocketPerms {
            gid: None,
            mode: 0o600,
        };
        assert_eq!(Config::default().socket_perms(origin).unwrap(), root_only);
        let numbered = Config::parse("socket_group = \"4242\"\n", origin).unwrap();
        let group = SocketPerms {
            gid: Some(4242),
            mode: 0o660,
        };
        assert_eq!(numbered.socket_perms(origin).unwrap(), group);
        let named = Config::parse("socket_group = \"root\"\nsocket_mode = 0o640\n", origin);
        let named = named.unwrap().socket_perms(origin).unwrap();
        assert_eq!((named.gid, named.mode), (Some(0), 0o640));
        let unknown = Config::parse("socket_group = \"no-such-group-x\"\n", origin).unwrap();
        let err = unknown.socket_perms(origin).unwrap_err();
        assert!(err.to_string().contains("no group named"), "{err}");
        assert_eq!(err.origin(), "/etc/m.toml");
        let err = Config::parse("socket_mode = 0o4755\n", origin).unwrap_err();
        assert!(err.to_string().contains("socket_mode"), "{err}");
    }

    #[test]
    fn missing_file_is_fine_unless_required() {
        let path = Path::new("/nonexistent/modbroker.toml");
        assert_eq!(Config::load(path, false).unwrap(), Config::default());
        assert!(Config::load(path, true).is_err());
    }
}
