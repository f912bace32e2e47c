//! systemd service notifications (`sd_notify(3)`): `READY=1` once the socket is served, a
//! `STATUS=` line kept current with the counters, `STOPPING=1` on shutdown.
//!
//! The protocol is one datagram per message to the Unix socket named by `$NOTIFY_SOCKET` (a
//! path, or an abstract name written with a leading `@`), so it is written out here rather than
//! pulling in libsystemd. Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`)
//! every call is a no-op. Failures are logged once at debug level and otherwise ignored: a
//! notification must never stop the daemon from serving.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

/// A connection to systemd's notification socket, if there is one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and removes it from the environment, so that children (install
    /// commands) cannot send notifications in the daemon's name.
    pub fn from_env() -> Self {
        let path = std::env::var_os("NOTIFY_SOCKET");
        std::env::remove_var("NOTIFY_SOCKET");
        let target = path.and_then(|p| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name),
                None => SocketAddr::from_pathname(std::path::Path::new(&p)),
            };
            let socket = UnixDatagram::unbound();
            match (socket, addr) {
                (Ok(socket), Ok(addr)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    debug!(error = %e, "NOTIFY_SOCKET unusable");
                    None
                }
            }
        });
        Notifier { target }
    }

    /// True when running under systemd with a notification socket.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, `STOPPING=1`).
    pub fn notify(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                debug!(error = %e, "sd_notify failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        // The environment is process-wide; this is the only test in the crate that touches it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let notifier = Notifier::from_env();
        assert!(
            std::env::var_os("NOTIFY_SOCKET").is_none(),
            "removed for children"
        );
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
