//! Shared by the socket-level tests: a real server (`server::run`) on a socket in a temp dir,
//! over a fake kernel and a fixed resolver, on its own runtime thread; stopped on drop. Also a
//! bounded way to run a binary, for tests of what must not hang.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modbroker::broker::{Broker, BrokerSettings};
use modbroker::server::{self, AccessPolicy, ConnectionLimits};
use modbroker::service::Service;
use modbroker::testing::{FakeKernel, FixedResolver};
use tokio_util::sync::CancellationToken;

/// A running test server.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub kernel: Arc<FakeKernel>,
    pub service: Service,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Serves `resolver` over `kernel`, admitting peers by `access`; returns once listening.
    pub fn start_with(
        kernel: Arc<FakeKernel>,
        resolver: FixedResolver,
        access: AccessPolicy,
    ) -> Self {
        Self::start_with_limits(kernel, resolver, access, ConnectionLimits::default())
    }

    /// [`TestServer::start_with`] with other connection limits.
    pub fn start_with_limits(
        kernel: Arc<FakeKernel>,
        resolver: FixedResolver,
        access: AccessPolicy,
        limits: ConnectionLimits,
    ) -> Self {
        let service = Service::new(
            Arc::new(resolver),
            Broker::new(kernel.clone(), BrokerSettings::default()),
        );
        let dir = tempfile::tempdir().unwrap();
        // Other users must reach the socket for the credential tests.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("modbroker.sock");
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (socket, service, shutdown) = (socket.clone(), service.clone(), shutdown.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = server::bind_socket(&socket).unwrap();
                    ready_tx.send(()).unwrap();
                    let access = access.into();
                    server::run_with_limits(listener, service, access, shutdown, None, limits)
                        .await;
                });
            })
        };
        ready_rx.recv().expect("server started");
        TestServer {
            dir,
            socket,
            kernel,
            service,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl TestServer {
    /// Starts the server's orderly shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `cmd` (stdin closed, output captured) and returns its output and how long it ran; if it
/// is still running after `limit`, kills it and fails the test. Polls for the exit every 20 ms.
pub fn output_within(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output();
            panic!("{cmd:?} still running after {limit:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

/// Runs `f` on a thread whose credentials are `uid` and `gid` for the kernel, and returns what it
/// returns: a socket it connects carries those peer credentials (`SO_PEERCRED` is taken from
/// the connecting thread). The raw system calls change only the calling thread; glibc's
/// wrappers would change every thread of this process. Needs root.
pub fn on_thread_as<T: Send + 'static>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    assert!(
        nix::unistd::geteuid().is_root(),
        "credential tests must run as root (make test does)"
    );
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials; no pointers but a NULL
        // group list of length 0.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .expect("thread with other credentials")
}
