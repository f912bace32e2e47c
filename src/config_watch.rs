//! Noticing new module indexes and modprobe.d at once, not at the next request.
//!
//! The resolver checks libkmod's resources at most once a second, but only when it resolves. A
//! skip marker ([`crate::skip`]) spares udev the request that would make it look, so a marker
//! made from old indexes could outlive a depmod or a new `blacklist` line: a `udevadm trigger`
//! after a module is installed would then load nothing where udev's builtin would load it. So
//! the daemon watches the module directory and the modprobe.d directories with inotify and
//! reloads when one changes, as SIGHUP does: the resolver re-reads both, remembered failures
//! are forgotten and no earlier skip marker resolves any more.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tracing::{debug, warn};

/// modprobe.d's directories, as kmod reads them (a missing one is not watched).
pub const MODPROBE_DIRS: [&str; 4] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

/// How long a burst of changes (depmod writes a dozen files) is let settle before one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// The directories to watch: `module_dir` (depmod renames its new indexes into it) and
/// modprobe.d's.
pub fn watched_dirs(module_dir: &Path) -> Vec<PathBuf> {
    std::iter::once(module_dir.to_path_buf())
        .chain(MODPROBE_DIRS.iter().map(PathBuf::from))
        .collect()
}

/// Calls `reload` after each settled burst of changes in `dirs`, for as long as the daemon
/// runs. Without inotify (or a watch on any directory), it logs why and returns: the resolver
/// still notices changes on the next request it resolves. The events are read on a thread of
/// their own (a blocking read, no polling).
pub async fn reload_on_change<F, Fut>(dirs: Vec<PathBuf>, mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(inotify) = watch(&dirs) else { return };
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let reader = std::thread::Builder::new()
        .name("modbrokerd-watch".into())
        .spawn(move || loop {
            match inotify.read_events() {
                Ok(_) => {
                    if changed.send(()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    return warn!(error = %err, "inotify failed; module configuration changes are noticed on the next request");
                }
            }
        });
    if let Err(err) = reader {
        return warn!(error = %err, "cannot start the inotify thread");
    }
    while changes.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while changes.try_recv().is_ok() {}
        reload().await;
    }
}

/// An inotify instance watching `dirs` for new, replaced and removed files; `None` if there is
/// no inotify or no directory could be watched.
fn watch(dirs: &[PathBuf]) -> Option<Inotify> {
    let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
        Ok(inotify) => inotify,
        Err(err) => {
            warn!(error = %err, "no inotify: module configuration changes are noticed on the next request");
            return None;
        }
    };
    let changes = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    let watched = dirs
        .iter()
        .filter(|dir| match inotify.add_watch(dir.as_path(), changes) {
            Ok(_) => true,
            Err(err) => {
                debug!(dir = %dir.display(), error = %err, "not watched");
                false
            }
        })
        .count();
    (watched > 0).then_some(inotify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_new_file_in_a_watched_directory_reloads_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watch = tokio::spawn({
            let reloads = reloads.clone();
            let dirs = vec![dir.path().to_path_buf(), dir.path().join("missing")];
            reload_on_change(dirs, move || {
                reloads.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                }
            })
        });
        // The watches are set up before the task's first await; let it get there.
        tokio::task::yield_now().await;
        for name in ["modules.dep.bin", "modules.alias.bin", "blacklist.conf"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        rx.recv().await.unwrap();
        assert!(!watch.is_finished());
        std::fs::write(dir.path().join("second.conf"), b"x").unwrap();
        rx.recv().await.unwrap();
        assert!(reloads.load(Ordering::SeqCst) >= 2);
        watch.abort();
    }
}
