//! `mb-burst`: the VM burst benchmark's driver (built only with `--features bench-tools`; see
//! `tests/vm/scenarios/bench-burst.sh`). It makes N concurrent requests to load one module and
//! reports how long it took until every caller had its answer, and what the callers were told.
//!
//! ```text
//! mb-burst broker N SOCKET TARGET   N connections to modbrokerd, one load request each
//! mb-burst direct N MODULE.ko [PARAMS]  N threads calling finit_module on the file
//! ```
//!
//! All setup (threads started, connections open, module files open) happens before the clock
//! starts; then N threads blocked on one barrier are released together, each makes its one call
//! (`write` request + `read` reply, or `finit_module`), and the time from release to the last
//! answer is reported, together with a tally of answers: `success`, `already-loaded` or an errno
//! name (`ENODEV`, `EEXIST`, `EBUSY`...). Output is one line:
//!
//! ```text
//! MB-BENCH: burst mode=broker n=64 secs=0.412 first=0.405 median=0.41 daemon_min=0.39 daemon_max=0.40 outcomes=ENODEV:64
//! ```
//!
//! Std threads and blocking sockets only: no async runtime.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use modbroker::model::OutcomeKind;
use modbroker::protocol::{LoadRequest, Reply, Request};
use nix::errno::Errno;

/// One prepared caller: makes its call when run and says what it was told, plus (broker mode)
/// the daemon's own `elapsed_us` for the request.
type Call = Box<dyn FnOnce() -> (String, Option<u64>) + Send>;

fn usage() -> ExitCode {
    eprintln!("usage: mb-burst broker N SOCKET TARGET | mb-burst direct N MODULE.ko [PARAMS]");
    ExitCode::from(2)
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the daemon told one caller, and how long the daemon says it took.
fn describe_reply(line: &str) -> (String, Option<u64>) {
    let Ok(reply) = serde_json::from_str::<Reply>(line) else {
        return ("unreadable-reply".into(), None);
    };
    if let Some(err) = reply.error_body() {
        return (format!("error-{}", err.kind), None);
    }
    let results = reply.into_results();
    let first = results.as_ref().and_then(|r| r.first());
    let told = match first {
        Some(r) if r.outcome == OutcomeKind::Failed => r
            .failure
            .as_ref()
            .and_then(|f| f.errno_name.clone())
            .unwrap_or_else(|| "failed".into()),
        Some(r) if r.outcome == OutcomeKind::Loaded => "success".into(),
        Some(r) => r.outcome.as_str().into(),
        None => "no-result".into(),
    };
    (told, first.map(|r| r.elapsed_us))
}

fn broker_call(socket: &str, target: &str) -> Call {
    let mut stream = UnixStream::connect(socket).expect("connect to modbrokerd");
    let line = Request::Load(LoadRequest::new(vec![target.to_string()])).encode();
    Box::new(move || {
        if let Err(e) = stream.write_all(line.as_bytes()) {
            return (format!("write-error-{:?}", e.kind()), None);
        }
        let mut reply = String::new();
        match BufReader::new(&stream).read_line(&mut reply) {
            Ok(0) => ("closed-without-reply".into(), None),
            Ok(_) => describe_reply(&reply),
            Err(e) => (format!("read-error-{:?}", e.kind()), None),
        }
    })
}

fn direct_call(path: &str, params: &str) -> Call {
    let file = File::open(path).expect("open module file");
    let params = CString::new(params).expect("params without NUL");
    Box::new(move || {
        // SAFETY: finit_module reads the open fd and the NUL-terminated params string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                params.as_ptr(),
                0 as libc::c_int,
            )
        };
        let told = if rc == 0 {
            "success".into()
        } else {
            format!("{:?}", Errno::last())
        };
        (told, None)
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, n) = match (
        args.first(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) {
        (Some(mode), Some(n)) if n > 0 => (mode.as_str(), n),
        _ => return usage(),
    };
    raise_nofile(n as u64 + 64);
    let make: Box<dyn Fn() -> Call> = match (mode, args.get(2), args.get(3)) {
        ("broker", Some(socket), Some(target)) => {
            let (socket, target) = (socket.clone(), target.clone());
            Box::new(move || broker_call(&socket, &target))
        }
        ("direct", Some(path), params) => {
            let (path, params) = (path.clone(), params.cloned().unwrap_or_default());
            Box::new(move || direct_call(&path, &params))
        }
        _ => return usage(),
    };

    let barrier = Arc::new(Barrier::new(n + 1));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::with_capacity(n);
    for _ in 0..n {
        let call = make();
        let (barrier, ready) = (barrier.clone(), ready.clone());
        let handle = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                ready.fetch_add(1, Ordering::SeqCst);
                barrier.wait();
                let outcome = call();
                (Instant::now(), outcome)
            })
            .expect("spawn caller thread");
        threads.push(handle);
    }
    // Every caller is set up and about to block on the barrier; this thread arrives last, so the
    // barrier opens now.
    while ready.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    barrier.wait();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut took = Vec::with_capacity(n);
    let mut daemon_us = Vec::new();
    for t in threads {
        let (done, (outcome, elapsed_us)) = t.join().expect("caller thread");
        took.push(done.duration_since(start).as_secs_f64());
        daemon_us.extend(elapsed_us);
        *outcomes.entry(outcome).or_default() += 1;
    }
    took.sort_by(f64::total_cmp);
    daemon_us.sort_unstable();
    let tally: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    // The daemon's own view (request received to result ready), when it replied.
    let daemon = match (daemon_us.first(), daemon_us.last()) {
        (Some(lo), Some(hi)) => format!(
            " daemon_min={:.3} daemon_max={:.3}",
            *lo as f64 / 1e6,
            *hi as f64 / 1e6
        ),
        _ => String::new(),
    };
    println!(
        "MB-BENCH: burst mode={mode} n={n} secs={:.3} first={:.3} median={:.3}{daemon} outcomes={}",
        took[n - 1],
        took[0],
        took[n / 2],
        tally.join(",")
    );
    ExitCode::SUCCESS
}
