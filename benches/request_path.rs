//! Request-path throughput and latency with a fake kernel, on the host:
//! `cargo bench --bench request_path` prints a markdown table.
//!
//! The daemon side (`server::run` + `Service` + `Broker` over `FakeKernel`/`FixedResolver`) runs in
//! a child process (this binary re-executed, see `common`), on a current-thread tokio runtime like
//! modbrokerd's. The clients run in this process, on their own tokio runtime: each client has its
//! own connection and sends one request, reads the one reply line, and repeats. Two answers that
//! need no syscall are measured: a module already live (`already-loaded`) and a module inside the
//! failure window (`failed`, ENODEV remembered). For each client count the clients run 0.5 s of
//! warm-up and then `MB_BENCH_SECS` (default 2) of measurement; requests/s counts replies received
//! during the measurement, latency is request written to reply read, per request.
//!
//! Both processes share the machine's cores, so the client side's work is included in the wall
//! time; the server child's own CPU time per request (from /proc) is printed as well, which is the
//! daemon's cost independent of the load generator.
//!
//! Env: `MB_BENCH_SECS` (measurement seconds per point), `MB_BENCH_CLIENTS` (comma-separated
//! client counts, default `1,100,1000,10000`).

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use common::{cpu_secs, load_line, ServerChild, FAILED, LIVE};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Point {
    answer: &'static str,
    clients: usize,
    requests: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
}

/// One client: request/reply in a loop; latencies (ns) of the requests started while measuring.
async fn client(
    mut stream: UnixStream,
    line: Arc<[u8]>,
    expect: &'static [u8],
    phase: Arc<AtomicU8>,
) -> Vec<u32> {
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut checked = false;
    loop {
        let phase_now = phase.load(Ordering::Relaxed);
        if phase_now == STOP {
            return lat;
        }
        let t = Instant::now();
        stream.write_all(&line).await.expect("write request");
        let mut filled = 0;
        loop {
            let n = stream.read(&mut buf[filled..]).await.expect("read reply");
            assert!(n > 0, "server closed the connection");
            filled += n;
            if buf[filled - 1] == b'\n' {
                break;
            }
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        }
        if !checked {
            let reply = &buf[..filled];
            assert!(
                reply.windows(expect.len()).any(|w| w == expect),
                "unexpected reply {}",
                String::from_utf8_lossy(reply)
            );
            checked = true;
        }
        if phase_now == MEASURE {
            lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        }
    }
}

/// Connects `n` clients (blocking connects, retried while the backlog is full).
fn connect_all(server: &ServerChild, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    (0..n)
        .map(|_| loop {
            match std::os::unix::net::UnixStream::connect(&server.socket) {
                Ok(s) => {
                    s.set_nonblocking(true).expect("nonblocking");
                    break s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("connect: {e}"),
            }
        })
        .collect()
}

fn run_point(
    rt: &tokio::runtime::Runtime,
    server: &ServerChild,
    answer: &'static str,
    target: &str,
    expect: &'static [u8],
    clients: usize,
    secs: f64,
) -> Point {
    let streams = connect_all(server, clients);
    let line: Arc<[u8]> = load_line(target).into_bytes().into();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let handles: Vec<_> = rt.block_on(async {
        streams
            .into_iter()
            .map(|s| {
                let stream = UnixStream::from_std(s).expect("tokio stream");
                tokio::spawn(client(stream, line.clone(), expect, phase.clone()))
            })
            .collect()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (server_cpu0, client_cpu0) = (cpu_secs(server.pid()), cpu_secs(std::process::id()));
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(secs));
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let (server_cpu1, client_cpu1) = (cpu_secs(server.pid()), cpu_secs(std::process::id()));
    let mut lat: Vec<u32> = rt.block_on(async {
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("client task"));
        }
        all
    });
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let requests = lat.len() as u64;
    Point {
        answer,
        clients,
        requests,
        secs: elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: pct(1.0),
        server_cpu_us: (server_cpu1 - server_cpu0) * 1e6 / requests.max(1) as f64,
        client_cpu_us: (client_cpu1 - client_cpu0) * 1e6 / requests.max(1) as f64,
    }
}

fn main() {
    common::maybe_run_server_child();
    // `cargo bench` passes `--bench`; any other argument is a name filter we do not use.
    let secs: f64 = common::env_or("MB_BENCH_SECS", 2.0);
    let counts: Vec<usize> = std::env::var("MB_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000, 10_000]);
    let nofile = common::raise_nofile(1 << 20);
    let max_clients = counts.iter().copied().max().unwrap_or(0);
    assert!(
        nofile as usize > max_clients + 64,
        "RLIMIT_NOFILE {nofile} too low for {max_clients} clients"
    );
    let server = ServerChild::start();
    // The client side: its own runtime in this process, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    println!("# request_path: fake kernel, requests answered without a syscall");
    println!();
    println!("machine: {}", common::machine());
    println!(
        "server: child process (server::run, tokio current-thread runtime, as modbrokerd); clients: this process, own tokio runtime; {secs} s per point after 0.5 s warm-up"
    );
    println!();
    println!("| answer | clients | requests/s | p50 latency | p99 latency | max latency | server CPU/request | client CPU/request |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let kinds: [(&'static str, &str, &'static [u8]); 2] = [
        ("already-loaded", LIVE, b"\"outcome\":\"already-loaded\""),
        (
            "failure window (ENODEV)",
            FAILED,
            b"\"errno_name\":\"ENODEV\"",
        ),
    ];
    for (answer, target, expect) in kinds {
        for &clients in &counts {
            let p = run_point(&rt, &server, answer, target, expect, clients, secs);
            println!(
                "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} µs | {:.1} µs |",
                p.answer,
                p.clients,
                p.requests as f64 / p.secs,
                p.p50_us,
                p.p99_us,
                p.max_us,
                p.server_cpu_us,
                p.client_cpu_us
            );
        }
    }
    println!();
    println!("Targets: >= 200000 requests/s; p99 < 1 ms at 1000 clients.");
}
