//! The socket the daemon serves: the one systemd hands over, else one it binds and gives the
//! configured `socket_group`/`socket_mode`. The access list (allowed uids/gids) only reaches
//! peers that can open the socket file, so every allowed uid or gid the file keeps out is logged
//! at error priority, at start-up and on each reload.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::{error, warn};

use super::DaemonError;
use crate::config::Config;
use crate::server::{self, AccessPolicy, SocketFile, SocketPerms};

/// The socket to serve: the one systemd handed us, else our own, bound at `config.socket` and
/// given `socket_group`/`socket_mode`; with the path we bound (removed on exit).
pub(super) fn listen(
    config: &Config,
    origin: &Path,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<(UnixListener, Option<PathBuf>), DaemonError> {
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
pub(super) fn socket_file(listener: &UnixListener) -> Option<PathBuf> {
    let addr = listener.local_addr().ok()?;
    addr.as_pathname().map(Path::to_path_buf)
}

/// Logs at error priority each uid or gid `policy` allows that the socket file keeps out: for
/// them the access list cannot take effect.
pub(super) fn report_access_gaps(socket: Option<&Path>, policy: &AccessPolicy) {
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

/// The access list of `config` (allowed uids and gids), as the server checks it.
pub(super) fn access_policy(config: &Config) -> AccessPolicy {
    AccessPolicy {
        uids: config.allowed_uids.clone(),
        gids: config.allowed_gids.clone(),
    }
}
