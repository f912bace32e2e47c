//! Keeps this daemon's file in the boot's record (`modbroker blame`, `modbroker plot`) written:
//! while it serves, and once more when it stops. Written off the thread that serves requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use crate::broker::Broker;
use crate::recorder;

/// How often the record file is brought up to date while anything changes.
const RECORD_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps this instance's file in the boot's record (`modbroker blame`) current: rewritten within
/// [`RECORD_INTERVAL`] of a change. A reading of the change counter and the counters every
/// interval costs next to nothing, and batches a coldplug burst into a few writes.
pub(super) async fn keep_record_written(broker: Broker, dir: PathBuf) {
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
pub(super) async fn write_record(broker: &Broker, dir: &Path, stopped: bool) {
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
