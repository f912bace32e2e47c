//! Daemon memory: `cargo bench --bench memory` prints a markdown table of resident memory.
//!
//! 1. The fake-kernel server (`server::run` + `Service` + `Broker`, see `common`) in a child
//!    process: VmRSS idle (started, primed, nothing connected), then with `MB_BENCH_WAITERS`
//!    (default 10,000) clients connected from this process, each having sent a load of a module
//!    whose fake `finit_module` is held (so every request waits on the one in-flight load; the
//!    count is confirmed with a `status` request), then after the load is released, every waiter
//!    answered and every connection closed.
//! 2. The real `modbrokerd` binary (libkmod resolver over the host's module tree,
//!    `MB_BENCH_MODULE_DIR`, default the first `/lib/modules/*` with a `modules.dep`): idle VmRSS
//!    after start-up, and after one `resolve` request (libkmod indexes opened).
//!
//! RSS is read from `/proc/PID/status` of the server process (the same numbers its own
//! `/proc/self/status` shows); VmHWM is the peak.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use modbroker::protocol::{Reply, Request};

use common::{load_line, status_kib, threads, ServerChild, HELD};

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Sends `status` on a fresh connection; returns the waiters on the held load.
fn held_waiters(socket: &Path) -> u64 {
    let reply = modbroker::client::call(socket, &Request::Status, Some(Duration::from_secs(10)))
        .expect("status");
    reply
        .status_report()
        .expect("status reply")
        .in_flight
        .iter()
        .find(|f| f.module == HELD)
        .map_or(0, |f| f.waiters)
}

fn connect(socket: &Path) -> UnixStream {
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

fn fake_server(waiters: usize, rows: &mut Vec<[String; 4]>) {
    let mut server = ServerChild::start();
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(300));
    let idle = status_kib(pid, "VmRSS");
    rows.push([
        "fake-kernel server".into(),
        "idle (listening, nothing connected)".into(),
        mib(idle),
        format!("{} threads", threads(pid)),
    ]);

    let line = load_line(HELD);
    let mut conns: Vec<UnixStream> = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        let mut s = connect(&server.socket);
        s.write_all(line.as_bytes()).expect("send load");
        conns.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = held_waiters(&server.socket);
    while seen < waiters as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = held_waiters(&server.socket);
    }
    std::thread::sleep(Duration::from_millis(300));
    let waiting = status_kib(pid, "VmRSS");
    rows.push([
        "fake-kernel server".into(),
        format!("{seen} clients waiting on one held load"),
        mib(waiting),
        format!(
            "{:.0} bytes per waiter above idle; {} threads",
            (waiting.saturating_sub(idle) * 1024) as f64 / seen.max(1) as f64,
            threads(pid)
        ),
    ]);

    server.release();
    let mut loaded = 0usize;
    for s in &conns {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).expect("reply");
        let reply: Reply = serde_json::from_str(&reply).expect("reply json");
        if reply
            .into_results()
            .as_ref()
            .and_then(|r| r.first())
            .map(|r| r.outcome)
            == Some(modbroker::model::OutcomeKind::Loaded)
        {
            loaded += 1;
        }
    }
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    rows.push([
        "fake-kernel server".into(),
        format!("after release ({loaded} told `loaded`), all disconnected"),
        mib(status_kib(pid, "VmRSS")),
        format!("peak (VmHWM) {}", mib(status_kib(pid, "VmHWM"))),
    ]);
}

fn default_module_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/lib/modules")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.join("modules.dep").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn real_daemon(rows: &mut Vec<[String; 4]>) {
    let module_dir = std::env::var_os("MB_BENCH_MODULE_DIR")
        .map(PathBuf::from)
        .or_else(default_module_dir);
    let Some(module_dir) = module_dir else {
        rows.push([
            "modbrokerd".into(),
            "not measured: no /lib/modules/*/modules.dep".into(),
            String::new(),
            String::new(),
        ]);
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("d.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_modbrokerd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--module-dir")
        .arg(&module_dir)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn modbrokerd");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    rows.push([
        "modbrokerd (release binary)".into(),
        format!("idle after start-up ({})", module_dir.display()),
        mib(status_kib(pid, "VmRSS")),
        format!("{} threads", threads(pid)),
    ]);
    let target = std::env::var("MB_BENCH_RESOLVE").unwrap_or_else(|_| "e1000".into());
    let reply = modbroker::client::call(
        &socket,
        &Request::Resolve(vec![target.clone()]),
        Some(Duration::from_secs(10)),
    );
    let plan = reply
        .ok()
        .and_then(|r| match r.body {
            modbroker::protocol::ReplyBody::Resolved(resolved) => Some(resolved),
            _ => None,
        })
        .and_then(|r| r.first().map(|r| r.plan.to_string()))
        .unwrap_or_else(|| "no reply".into());
    std::thread::sleep(Duration::from_millis(300));
    rows.push([
        "modbrokerd (release binary)".into(),
        format!("idle after one `resolve {target}` (plan: {plan})"),
        mib(status_kib(pid, "VmRSS")),
        format!("{} threads", threads(pid)),
    ]);
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn main() {
    common::maybe_run_server_child();
    let waiters: usize = common::env_or("MB_BENCH_WAITERS", 10_000);
    let nofile = common::raise_nofile(1 << 20);
    assert!(
        nofile as usize > waiters + 64,
        "RLIMIT_NOFILE {nofile} too low for {waiters} waiters"
    );
    let mut rows = Vec::new();
    fake_server(waiters, &mut rows);
    real_daemon(&mut rows);
    println!("# memory: daemon resident set (VmRSS)");
    println!();
    println!("machine: {}", common::machine());
    println!();
    println!("| process | state | VmRSS | notes |");
    println!("| --- | --- | ---: | --- |");
    for [a, b, c, d] in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    println!();
    println!("Targets: idle < 8 MiB; < 64 MiB with 10000 waiting clients.");
}
