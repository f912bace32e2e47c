//! The lines a load prints per target: one on stdout (unless quiet), and one more on stderr for
//! a target that did not succeed. udev's client prints them once per uevent, so they are put
//! together without `core::fmt`.

use crate::model::OutcomeKind;
use crate::protocol::TargetResult;
use crate::wire;

/// One stdout line per target (unless `quiet`); failures also get one stderr line. Both are
/// put together without `core::fmt`, like the request (see `modbroker::wire`): udev's client
/// prints them once per uevent.
pub fn print_result(r: &TargetResult, quiet: bool) {
    use std::io::Write;
    if !quiet {
        let mut line = String::with_capacity(128);
        line.push_str(&r.target);
        line.push_str(": ");
        line.push_str(r.outcome.as_str());
        line.push_str(" [");
        line.push_str(&r.modules.join(","));
        line.push(']');
        if r.merged {
            line.push_str(" (merged)");
        }
        line.push_str(" in ");
        push_ms(&mut line, r.elapsed_us);
        line.push_str(" ms\n");
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
    if r.outcome.is_success() {
        return;
    }
    let mut line = String::with_capacity(128);
    line.push_str("modbroker: ");
    line.push_str(&r.target);
    line.push_str(": ");
    line.push_str(r.outcome.as_str());
    line.push_str(": ");
    match &r.failure {
        Some(f) => match (&f.errno_name, f.errno) {
            (Some(name), Some(errno)) => {
                line.push_str("module ");
                line.push_str(&f.module);
                line.push_str(": ");
                line.push_str(name);
                line.push_str(" (errno ");
                if errno < 0 {
                    line.push('-');
                }
                wire::push_u64(&mut line, u64::from(errno.unsigned_abs()));
                line.push_str("): ");
                line.push_str(&f.message);
            }
            _ if f.module.is_empty() => line.push_str(&f.message),
            _ => {
                line.push_str("module ");
                line.push_str(&f.module);
                line.push_str(": ");
                line.push_str(&f.message);
            }
        },
        None if r.outcome == OutcomeKind::Blacklisted => {
            line.push_str("blacklisted: ");
            line.push_str(&r.modules.join(", "));
        }
        None => {}
    }
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `us` microseconds as milliseconds with one decimal, rounded half up (`12.3`).
fn push_ms(line: &mut String, us: u64) {
    let tenths = us / 100 + u64::from(us % 100 >= 50);
    wire::push_u64(line, tenths / 10);
    line.push('.');
    wire::push_u64(line, tenths % 10);
}
