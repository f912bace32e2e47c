//! Keeps this daemon's file in the boot's record (`modbroker blame`, `modbroker plot`) written:
//! while it serves, and once more when it stops. Written off the thread that serves requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use crate::broker::Broker;

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
/// again) and never stops the daemon. Taking the snapshot, serialising and writing it (up to a
/// few MB at the record's limits) run on the blocking pool, never on the thread that serves
/// requests ([`crate::recorder::Recorder::write_file`]: one write at a time, the stopped one last).
pub(super) async fn write_record(broker: &Broker, dir: &Path, stopped: bool) {
    static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let recorder = broker.recorder().clone();
    let dir = dir.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        recorder.write_file(&dir, stopped).map_err(|err| (dir, err))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::BrokerSettings;
    use crate::record::{DaemonRecord, Phase};
    use crate::recorder::Recorder;
    use crate::testing::FakeKernel;

    /// Periodic writes racing the final one leave one whole record, the final one, whatever
    /// order they finish in. (Before `Recorder::write_file` serialised them, a clean-clone boot
    /// test found a record file ending in NUL bytes: two writers in one temporary file.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_final_record_is_written_last_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::new(Phase::Root));
        let broker = Broker::with_recorder(FakeKernel::new(), BrokerSettings::default(), recorder);
        let periodic = |n| {
            let (broker, dir) = (broker.clone(), dir.path().to_path_buf());
            (0..n)
                .map(|_| {
                    let (broker, dir) = (broker.clone(), dir.clone());
                    tokio::spawn(async move { write_record(&broker, &dir, false).await })
                })
                .collect::<Vec<_>>()
        };
        let before = periodic(32);
        write_record(&broker, dir.path(), true).await;
        let after = periodic(32);
        for task in before.into_iter().chain(after) {
            task.await.unwrap();
        }
        write_record(&broker, dir.path(), false).await;

        let path = dir.path().join(broker.recorder().file_name());
        let text = std::fs::read_to_string(&path).unwrap();
        let record: DaemonRecord = serde_json::from_str(&text).expect("one whole record");
        assert!(
            record.stopped_us.is_some(),
            "the final record was overwritten"
        );
    }
}
