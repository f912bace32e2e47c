//! What the daemon tells systemd (`sd_notify(3)`): `READY=1`, `STOPPING=1`, and a `STATUS=` line
//! with the counters (and any configuration error the daemon runs despite), kept current.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::debug;

use crate::service::Service;

/// Sends systemd one notification (`sd_notify(3)`, through the `sd-notify` crate; a no-op
/// without `$NOTIFY_SOCKET`). A failure is logged at debug level and otherwise ignored: a
/// notification must never stop the daemon from serving. `$NOTIFY_SOCKET` stays in the
/// environment (the crate reads it on every call): a child could only send as its own pid,
/// which systemd ignores under the default `NotifyAccess=main`.
pub(super) fn notify(state: NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// The `STATUS=` line: the configuration error note (if any), then the counters.
pub(super) fn status_line(service: &Service, config_note: &str) -> String {
    let t = service.broker().recorder().totals();
    format!(
        "{config_note}{} requests, {} merged, {} loads, {} failed, {} in flight",
        t.requests,
        t.merged,
        t.load_calls,
        t.failed_loads,
        service.broker().in_flight_count()
    )
}

/// Sends the `STATUS=` line every 2 s when it changed; `last` is the one already sent.
pub(super) async fn keep_status_current(
    service: Service,
    config_note: watch::Receiver<String>,
    mut last: String,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let line = status_line(&service, &config_note.borrow());
        if line != last {
            notify(NotifyState::Status(&line));
            last = line;
        }
    }
}
