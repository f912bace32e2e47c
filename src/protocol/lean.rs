//! The `load` request line and the daemon's progress and `load` reply lines, written and read with
//! [`crate::wire`] instead of serde_json: these are the lines of udev's client, exec'd once per
//! uevent. The parent module's tests hold both codecs to the same bytes and the same values.

use super::ReplyBody;
use super::{DaemonLine, ErrorBody, ErrorKind, LoadRequest, Progress, Reply};
use super::{TargetResult, PROTOCOL_VERSION};
use crate::model::OutcomeKind;
use crate::model::{Failure, Requester};
use crate::wire::{push_str, push_u64, Reader};

/// The request line (with its newline) that `Request::Load(load).encode()` sends: the keys in
/// serde_json's order for a map (sorted), `blacklist_names`, `origin` and `progress` only when
/// set, `timeout_ms` as `null` when unset.
pub(super) fn load_line(load: &LoadRequest) -> String {
    let mut line = String::with_capacity(256);
    line.push('{');
    if load.blacklist_names {
        line.push_str("\"blacklist_names\":true,");
    }
    line.push_str("\"op\":\"load\",");
    if let Some(origin) = &load.origin {
        line.push_str("\"origin\":");
        push_origin(&mut line, origin);
        line.push(',');
    }
    line.push_str("\"params\":");
    push_strings(&mut line, &load.params);
    if load.progress {
        line.push_str(",\"progress\":true");
    }
    line.push_str(",\"retry\":");
    line.push_str(if load.retry { "true" } else { "false" });
    line.push_str(",\"targets\":");
    push_strings(&mut line, &load.targets);
    line.push_str(",\"timeout_ms\":");
    match load.timeout_ms {
        Some(ms) => push_u64(&mut line, ms),
        None => line.push_str("null"),
    }
    line.push_str(",\"v\":");
    push_u64(&mut line, u64::from(PROTOCOL_VERSION));
    line.push_str(",\"wait\":");
    line.push_str(if load.wait { "true" } else { "false" });
    line.push_str("}\n");
    line
}

fn push_strings(line: &mut String, items: &[String]) {
    line.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_str(line, item);
    }
    line.push(']');
}

fn push_opt_str(line: &mut String, value: Option<&str>) {
    match value {
        Some(value) => push_str(line, value),
        None => line.push_str("null"),
    }
}

/// `origin` as serde_json writes the internally tagged enum through a map: keys sorted.
fn push_origin(line: &mut String, origin: &Requester) {
    match origin {
        Requester::Udev { subsystem, devpath } => {
            line.push_str("{\"devpath\":");
            push_opt_str(line, devpath.as_deref());
            line.push_str(",\"kind\":\"udev\",\"subsystem\":");
            push_opt_str(line, subsystem.as_deref());
        }
        Requester::Kernel => line.push_str("{\"kind\":\"kernel\""),
        Requester::Cli { uid, comm } => {
            line.push_str("{\"comm\":");
            push_opt_str(line, comm.as_deref());
            line.push_str(",\"kind\":\"cli\",\"uid\":");
            push_u64(line, u64::from(*uid));
        }
        Requester::Dependency { of } => {
            line.push_str("{\"kind\":\"dependency\",\"of\":");
            push_str(line, of);
        }
    }
    line.push('}');
}

/// A progress line or a `load` reply, as serde_json would decode it; `None` for anything else
/// (another reply, a reply with no body or two, or a line [`Reader`] does not take), which the
/// caller gives to serde_json.
pub(super) fn daemon_line(line: &[u8]) -> Option<DaemonLine> {
    let mut reader = Reader::new(line);
    let (mut v, mut ok, mut body, mut ignored) = (None, None, None, None);
    let mut progress = None;
    reader.object(|r, key| {
        match key {
            "v" => v = Some(u32::try_from(r.int()?).ok()?),
            "ok" => ok = Some(r.bool()?),
            "results" => {
                let results = optional(r, |r| r.list(target_result).map(ReplyBody::Results))?;
                body = Some(only_body(body.is_some(), results)?);
            }
            "error" => {
                let error = optional(r, |r| error_body(r).map(ReplyBody::Error))?;
                body = Some(only_body(body.is_some(), error)?);
            }
            "ignored" => ignored = Some(r.strings()?),
            "progress" => progress = Some(progress_body(r)?),
            // Other replies' bodies: serde_json reads those.
            "resolved" | "status" => return None,
            _ => r.skip()?,
        }
        Some(())
    })?;
    if !reader.at_end() {
        return None;
    }
    // serde's untagged enum tries the progress shape first: any line with a progress body is one.
    if let Some(progress) = progress {
        return Some(DaemonLine::Progress(progress));
    }
    Some(DaemonLine::Reply(Box::new(Reply {
        v: v?,
        ok: ok?,
        body: body?,
        ignored: ignored.unwrap_or_default(),
    })))
}

/// `read`, the body under a body key, unless one was `seen` before it. serde_json takes the
/// first of two body keys and reads one holding `null` as an error: lines with either are left
/// to it (`None`).
fn only_body(seen: bool, read: Option<ReplyBody>) -> Option<ReplyBody> {
    read.filter(|_| !seen)
}

/// `null` as `None`, else `value`.
fn optional<'a, T>(
    r: &mut Reader<'a>,
    value: impl FnOnce(&mut Reader<'a>) -> Option<T>,
) -> Option<Option<T>> {
    if r.null()? {
        return Some(None);
    }
    value(r).map(Some)
}

fn progress_body(r: &mut Reader) -> Option<Progress> {
    let mut elapsed_ms = None;
    r.object(|r, key| match key {
        "elapsed_ms" => {
            elapsed_ms = Some(u64::try_from(r.int()?).ok()?);
            Some(())
        }
        _ => r.skip(),
    })?;
    Some(Progress {
        elapsed_ms: elapsed_ms?,
    })
}

fn error_body(r: &mut Reader) -> Option<ErrorBody> {
    let (mut kind, mut message) = (None, None);
    r.object(|r, key| {
        match key {
            "kind" => kind = Some(error_kind(r.str()?)?),
            "message" => message = Some(r.str()?.to_string()),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(ErrorBody {
        kind: kind?,
        message: message?,
    })
}

fn target_result(r: &mut Reader) -> Option<TargetResult> {
    let (mut target, mut outcome, mut modules) = (None, None, None);
    let (mut failure, mut merged, mut elapsed_us) = (None, None, None);
    r.object(|r, key| {
        match key {
            "target" => target = Some(r.str()?.to_string()),
            "outcome" => outcome = Some(outcome_kind(r.str()?)?),
            "modules" => modules = Some(r.strings()?),
            "failure" => failure = Some(optional(r, failure_body)?),
            "merged" => merged = Some(r.bool()?),
            "elapsed_us" => elapsed_us = Some(u64::try_from(r.int()?).ok()?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(TargetResult {
        target: target?,
        outcome: outcome?,
        modules: modules.unwrap_or_default(),
        failure: failure.flatten(),
        merged: merged.unwrap_or_default(),
        elapsed_us: elapsed_us.unwrap_or_default(),
    })
}

fn failure_body(r: &mut Reader) -> Option<Failure> {
    let (mut module, mut errno, mut errno_name, mut message) = (None, None, None, None);
    r.object(|r, key| {
        match key {
            "module" => module = Some(r.str()?.to_string()),
            "errno" => errno = Some(optional(r, |r| i32::try_from(r.int()?).ok())?),
            "errno_name" => errno_name = Some(optional(r, |r| r.str().map(str::to_string))?),
            "message" => message = Some(r.str()?.to_string()),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Failure {
        module: module?,
        errno: errno.flatten(),
        errno_name: errno_name.flatten(),
        message: message?,
    })
}

fn error_kind(name: &str) -> Option<ErrorKind> {
    ErrorKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == name)
}

fn outcome_kind(name: &str) -> Option<OutcomeKind> {
    OutcomeKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == name)
}
