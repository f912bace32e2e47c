//! The admin commands of the client: `resolve` (asked of the daemon, or with `--show-depends`
//! of `modbrokerd --show-depends`), `status` (the daemon's counters) and `blame` and `plot` (the
//! boot's record, read from its directory). None of them runs on udev's path.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILED, EXIT_NO_RECORD, EXIT_REFUSED};
use crate::blame::{blame_text, Blame};
use crate::client;
use crate::plot::plot_svg;
use crate::protocol::{Reply, ReplyBody, Request};
use crate::report;

/// `resolve --show-depends [-b] TARGET...`: what `modbrokerd --show-depends` prints; its exit
/// status.
pub fn show_depends(
    module_dir: Option<&Path>,
    targets: &[String],
    use_blacklist: bool,
) -> ExitCode {
    match client::show_depends(module_dir, targets, use_blacklist) {
        Ok(status) => ExitCode::from(status.code().map_or(EXIT_FAILED, |c| c as u8)),
        Err(e) => {
            eprintln!("modbroker: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `resolve TARGET...`: what the daemon resolves each target to.
pub fn resolve(socket: &Path, targets: Vec<String>) -> ExitCode {
    match call_or_report(socket, &Request::Resolve(targets)) {
        Ok(reply) => print_resolved(&reply),
        Err(code) => code,
    }
}

/// `status [--json]`: the daemon's counters and in-flight loads.
pub fn status(socket: &Path, json: bool) -> ExitCode {
    match call_or_report(socket, &Request::Status) {
        Ok(reply) if json => {
            let status = reply.status_report();
            println!("{}", serde_json::to_string(&status).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(reply) => print_status(&reply),
        Err(code) => code,
    }
}

/// `blame [--json]`: the record in `dir`, longest load first.
pub fn blame(dir: &Path, json: bool) -> ExitCode {
    report(dir, |record| {
        let blame = Blame::new(record);
        if json {
            serde_json::to_string_pretty(&blame).unwrap_or_default() + "\n"
        } else {
            blame_text(&blame)
        }
    })
}

/// `plot`: the record in `dir` as an SVG timeline.
pub fn plot(dir: &Path) -> ExitCode {
    report(dir, plot_svg)
}

/// `blame` and `plot`: reads the record in `dir` (a warning line for each file skipped), writes
/// `render`'s text to stdout. Exit 5 without a record, 1 when it cannot be read or written.
fn report(dir: &Path, render: impl Fn(&report::BootRecord) -> String) -> ExitCode {
    use std::io::Write;
    let warn = |skipped: &[report::Skipped]| {
        for s in skipped {
            eprintln!(
                "modbroker: warning: skipped {}/{}: {}",
                dir.display(),
                s.file,
                s.reason
            );
        }
    };
    let record = match report::read_dir(dir) {
        Ok(record) => record,
        Err(err) => {
            if let report::ReportError::Empty { skipped, .. } = &err {
                warn(skipped);
            }
            eprintln!("modbroker: {err}");
            return match err {
                report::ReportError::Io { .. } => ExitCode::from(EXIT_FAILED),
                _ => ExitCode::from(EXIT_NO_RECORD),
            };
        }
    };
    warn(&record.skipped);
    match std::io::stdout()
        .lock()
        .write_all(render(&record).as_bytes())
    {
        // `modbroker blame | head` is not an error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("modbroker: writing stdout: {err}");
            ExitCode::from(EXIT_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Calls the daemon; on any failure prints it and returns the exit code to use.
fn call_or_report(socket: &std::path::Path, request: &Request) -> Result<Reply, ExitCode> {
    match client::call(socket, request, None) {
        Ok(reply) => match reply.error_body() {
            Some(error) => {
                eprintln!(
                    "modbroker: daemon refused: {} ({})",
                    error.message, error.kind
                );
                Err(ExitCode::from(EXIT_REFUSED))
            }
            None => Ok(reply),
        },
        Err(err) => {
            eprintln!("modbroker: {err}");
            Err(ExitCode::from(EXIT_REFUSED))
        }
    }
}

fn print_resolved(reply: &Reply) -> ExitCode {
    let mut ok = true;
    let resolved = match &reply.body {
        ReplyBody::Resolved(resolved) => resolved.as_slice(),
        _ => &[],
    };
    for r in resolved {
        println!("{}: {}", r.target, r.plan);
        if let Some(message) = &r.message {
            println!("  {message}");
        }
        ok &= !r.plan.is_failure();
        for m in &r.modules {
            let detail = m.detail.as_deref().unwrap_or("");
            println!("  {} {} {detail} {}", m.method, m.name, m.options);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn print_status(reply: &Reply) -> ExitCode {
    let ReplyBody::Status(s) = &reply.body else {
        eprintln!("modbroker: reply has no status");
        return ExitCode::from(EXIT_REFUSED);
    };
    println!(
        "modbrokerd {} up {:.1} s",
        s.version,
        s.uptime_ms as f64 / 1000.0
    );
    println!("requests:       {}", s.requests);
    println!("load targets:   {}", s.targets);
    println!("merged:         {}", s.merged);
    println!("already loaded: {}", s.already_loaded);
    println!("load calls:     {}", s.load_calls);
    println!("failed loads:   {}", s.failed_loads);
    for f in &s.failures {
        println!("  failed: {} {} x{}", f.module, f.error, f.count);
    }
    for f in &s.in_flight {
        println!(
            "  in flight: {} for {} ms, {} waiting",
            f.module, f.age_ms, f.waiters
        );
    }
    ExitCode::SUCCESS
}
