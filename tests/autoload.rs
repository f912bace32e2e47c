//! The kernel autoload helper: `modbroker` run through a symlink named `modprobe` (what
//! `/proc/sys/kernel/modprobe` points at) or as `modbroker modprobe`, with the command line the
//! kernel's `request_module()` uses (`modprobe -q -- NAME`), against a server with a fake kernel.

use std::path::Path;
use std::process::{Command, Output};

use modbroker::server::AccessPolicy;
use modbroker::testing::{node, FakeKernel, FixedResolver};
use nix::errno::Errno;

mod common;
use common::TestServer;

impl TestServer {
    /// A test server that knows a few autoload targets, plus a `modprobe` symlink to the client
    /// binary in its temp dir.
    fn start() -> Self {
        let kernel = FakeKernel::new();
        kernel.fail("acpi_cpufreq", Errno::ENODEV);
        kernel.fail("broken", Errno::ENOEXEC);
        let resolver = FixedResolver::new()
            .with_module("fs-vfat", node("vfat", vec![node("fat", vec![])]))
            .with_module("crypto-sha256", node("sha256_generic", vec![]))
            .with_module("acpi-cpufreq", node("acpi_cpufreq", vec![]))
            .with_module("broken", node("broken", vec![]));
        let server = TestServer::start_with(kernel, resolver, AccessPolicy::default());
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_modbroker"),
            server.dir.path().join("modprobe"),
        )
        .unwrap();
        server
    }

    /// The `modprobe` symlink, run as the kernel runs it: its environment is only HOME and
    /// PATH, plus the socket (the kernel's helper would use the default one).
    fn modprobe(&self, args: &[&str]) -> Output {
        run_modprobe(&self.dir.path().join("modprobe"), &self.socket, args)
    }

    /// `modbroker --socket SOCKET modprobe ARGS`.
    fn modbroker_modprobe(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_modbroker"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("modprobe")
            .args(args)
            .output()
            .unwrap()
    }
}

fn run_modprobe(program: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .env("HOME", "/")
        .env("PATH", "/sbin:/usr/sbin:/bin:/usr/bin")
        .env("MODBROKER_SOCKET", socket)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kernel_command_line_loads_through_the_daemon() {
    let server = TestServer::start();
    let out = server.modprobe(&["-q", "--", "fs-vfat"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "-q prints nothing on stdout");
    assert_eq!(stderr(&out), "");
    assert_eq!(
        server.kernel.call_log(),
        vec![
            ("fat".to_string(), String::new()),
            ("vfat".to_string(), String::new())
        ],
        "one load each of vfat and its dependency, through the daemon"
    );

    // Without -q, one stdout line per name, as `modbroker load` prints it.
    let out = server.modprobe(&["--", "crypto-sha256"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("crypto-sha256: loaded [sha256_generic]"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.kernel.calls("sha256_generic"), 1);
}

#[test]
fn no_match_and_enodev_are_success() {
    let server = TestServer::start();
    let out = server.modprobe(&["-q", "--", "net-pf-38"]);
    assert_eq!(out.status.code(), Some(0), "no-match: {}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(server.kernel.call_log().len(), 0);

    let out = server.modprobe(&["-q", "--", "acpi-cpufreq"]);
    assert_eq!(out.status.code(), Some(0), "ENODEV: {}", stderr(&out));
    assert_eq!(server.kernel.calls("acpi_cpufreq"), 1);
}

#[test]
fn failing_module_exits_1_with_one_stderr_line() {
    let server = TestServer::start();
    let out = server.modprobe(&["-q", "--", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line per failure: {err}");
    assert!(err.contains("module broken: ENOEXEC"), "{err}");
    assert_eq!(server.kernel.calls("broken"), 1);
}

#[test]
fn modbroker_modprobe_subcommand() {
    let server = TestServer::start();
    let out = server.modbroker_modprobe(&["-q", "--", "fs-vfat"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(server.kernel.calls("vfat"), 1);

    let out = server.modbroker_modprobe(&["-q", "--", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    let out = server.modbroker_modprobe(&["-q", "--", "net-pf-38"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn several_names_and_accepted_option_spellings() {
    let server = TestServer::start();
    for args in [
        &["-q", "-b", "--", "fs-vfat"][..],
        &["--quiet", "fs-vfat"],
        &["-qb", "fs-vfat"],
        &["-b", "--use-blacklist", "fs-vfat"],
    ] {
        let out = server.modprobe(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(server.kernel.calls("vfat"), 1, "loaded once, then live");

    let out = server.modprobe(&["--", "crypto-sha256", "net-pf-38"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));

    let out = server.modprobe(&["-q", "--", "crypto-sha256", "broken"]);
    assert_eq!(out.status.code(), Some(1), "one failure fails the run");
}

#[test]
fn other_options_are_usage_errors() {
    let server = TestServer::start();
    for args in [
        &["-r", "vfat"][..],
        &["--show-depends", "vfat"],
        &["-qa", "vfat"],
        &["-q", "--"],
        &[],
    ] {
        let out = server.modprobe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("usage: modprobe"), "{}", stderr(&out));
        let out = server.modbroker_modprobe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // After "--", a leading dash is a name, not an option.
    let out = server.modprobe(&["-q", "--", "-r"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(server.kernel.call_log().len(), 0);
}

#[test]
fn falls_back_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modprobe");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_modbroker"), &link).unwrap();
    let module_dir = dir.path().join("modules");
    std::fs::create_dir(&module_dir).unwrap();
    let socket = dir.path().join("absent.sock");
    // Through the symlink the module tree is the default one; the subcommand takes --module-dir.
    let out = Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--socket")
        .arg(&socket)
        .arg("--module-dir")
        .arg(&module_dir)
        .args(["modprobe", "-q", "--", "pci:v0000FFFFd00000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("daemon unreachable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}
