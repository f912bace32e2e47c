//! Shared pieces of the host benchmarks (`request_path`, `memory`): the fake-kernel server that
//! runs in a child process (the bench binary re-executes itself with `MB_BENCH_ROLE=server`), and
//! small /proc readers (RSS, CPU time) and the file-descriptor limit.
//!
//! The server child is the real `server::run` + `Service` + `Broker` stack over a `FakeKernel`
//! and a `FixedResolver`, on a current-thread tokio runtime built like modbrokerd's. Its fake
//! kernel knows three modules:
//! - `live_mod`: already live, so a load is answered from "sysfs" with no syscall;
//! - `bad_mod`: fails with ENODEV; the child loads it once before it reports ready, so every
//!   benchmark request for it is answered from the failure window (set to one hour);
//! - `held_mod`: its load blocks in the fake syscall until the parent writes `release` on the
//!   child's stdin, so requests for it wait.
//!
//! The child prints `ready` on stdout once it listens, and exits when its stdin closes.

#![allow(dead_code)] // each bench uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use modbroker::broker::{Broker, BrokerSettings};
use modbroker::server::{self, AccessPolicy};
use modbroker::service::{Service, TargetLoad};
use modbroker::testing::{node, FakeKernel, FixedResolver};
use nix::errno::Errno;
use tokio_util::sync::CancellationToken;

/// Environment variable selecting the child role.
const ROLE_VAR: &str = "MB_BENCH_ROLE";
/// Environment variable with the socket path for the child.
const SOCKET_VAR: &str = "MB_BENCH_SOCKET";

/// Module answered "already loaded" without a syscall.
pub const LIVE: &str = "live_mod";
/// Module answered from the failure window without a syscall.
pub const FAILED: &str = "bad_mod";
/// Module whose load is held until released.
pub const HELD: &str = "held_mod";

/// Raises the soft RLIMIT_NOFILE to `want` (capped at the hard limit); returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let target = want.min(lim.rlim_max);
        if lim.rlim_cur < target {
            lim.rlim_cur = target;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// If this process was started as the server child, serves until stdin closes and exits.
/// Benchmarks call this first thing in `main`.
pub fn maybe_run_server_child() {
    if std::env::var_os(ROLE_VAR).as_deref() != Some("server".as_ref()) {
        return;
    }
    let socket = PathBuf::from(std::env::var_os(SOCKET_VAR).expect("MB_BENCH_SOCKET set"));
    raise_nofile(1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve_fake(&socket));
    std::process::exit(0);
}

async fn serve_fake(socket: &Path) {
    let kernel = FakeKernel::new();
    kernel.set_live(LIVE);
    kernel.fail(FAILED, Errno::ENODEV);
    kernel.hold(HELD);
    let resolver = FixedResolver::new()
        .with_module(LIVE, node(LIVE, vec![]))
        .with_module(FAILED, node(FAILED, vec![]))
        .with_module(HELD, node(HELD, vec![]));
    let settings = BrokerSettings {
        failure_window: Duration::from_secs(3600),
        ..BrokerSettings::default()
    };
    let broker = Broker::new(kernel.clone(), settings);
    let service = Service::new(Arc::new(resolver), broker);
    // Prime the failure window: one real (fake) failed load.
    let primed = service.load_target(FAILED, "", TargetLoad::default()).await;
    assert_eq!(primed.outcome, modbroker::model::OutcomeKind::Failed);
    let listener = server::bind_socket(socket).expect("bind socket");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::run(
        listener,
        service,
        AccessPolicy::default(),
        shutdown.clone(),
    ));
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    // Commands from the parent, on a plain thread: `release` lets held loads finish; EOF ends us.
    let control = std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line.as_deref() {
                Ok("release") => kernel.release(HELD),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::task::spawn_blocking(move || control.join())
        .await
        .ok();
    shutdown.cancel();
    // Connections still waiting on a held load would keep run() from returning; do not wait.
    drop(server);
}

/// The fake-kernel server running in a child process.
pub struct ServerChild {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The socket it listens on.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerChild {
    /// Starts this bench binary again as the server child and waits for it to listen.
    pub fn start() -> ServerChild {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("mb.sock");
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .env(ROLE_VAR, "server")
            .env(SOCKET_VAR, &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read child");
        assert_eq!(line.trim(), "ready", "server child did not start");
        let stdin = child.stdin.take();
        ServerChild {
            child,
            stdin,
            socket,
            _dir: dir,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the held load finish.
    pub fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("child stdin");
        stdin.write_all(b"release\n").expect("write to child");
        stdin.flush().expect("flush child");
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // The child exits on EOF; kill it if it does not within a second.
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> u64 {
    status_kib(pid, "Threads")
}

/// The number in environment variable `name`, or `default` when it is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The request line for loading `target` (with its newline).
pub fn load_line(target: &str) -> String {
    let load = modbroker::protocol::LoadRequest::new(vec![target.to_string()]);
    modbroker::protocol::Request::Load(load).encode()
}

/// `nproc`, the CPU model, the kernel release and the load average, for the report header.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine skews every number here; say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs, {model}, Linux {}; load average at start {}",
        kernel.trim(),
        load.join(" ")
    )
}
