//! The real `modbrokerd` binary on this host, against Debian's real module tree: start-up by
//! binding and by systemd socket activation, resolution through libkmod, refusal to steal a live
//! socket, orderly exit on SIGTERM, and bad configuration files that must never stop module
//! loading (`--check-config`, the daemon, `--oneshot`). (This host cannot load modules; loading
//! is proven in the VM test, tests/vm.)

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{on_thread_as, output_within};

/// A configuration file with a typo (the key is `failure_window_secs`).
const TYPO: &str = "failure_window = 10\n";
/// A pci modalias nothing matches.
const NO_MATCH: &str = "pci:v0000FFFFd0000FFFFsv0sd0bc0sc0i0";

/// Debian's module tree (package linux-image-amd64; `make test` installs it).
fn debian_tree() -> PathBuf {
    let mut trees: Vec<PathBuf> = std::fs::read_dir("/lib/modules")
        .expect("/lib/modules missing: install linux-image-amd64")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kernel").is_dir() && p.join("modules.dep.bin").is_file())
        .collect();
    trees.sort();
    trees
        .pop()
        .expect("no module tree under /lib/modules: install linux-image-amd64")
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn spawn(mut cmd: Command, socket: PathBuf) -> Self {
        let child = cmd.stderr(Stdio::piped()).spawn().expect("daemon starts");
        let mut daemon = Daemon { child, socket };
        daemon.wait_ready();
        daemon
    }

    /// Polls (bounded) until the daemon answers `status`, failing early if it exited.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = self.child.stderr.take().map(std::io::read_to_string);
                panic!("daemon exited early ({status}): {out:?}");
            }
            if client(&self.socket, &["status"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "daemon not ready within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        let log = std::io::read_to_string(self.child.stderr.take().unwrap()).unwrap();
        (status, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_command(socket: &Path) -> Command {
    let shipped = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/modbroker.toml"
    ));
    daemon_command_with(socket, shipped)
}

fn daemon_command_with(socket: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbrokerd"));
    cmd.arg("--socket")
        .arg(socket)
        .arg("--module-dir")
        .arg(debian_tree())
        .arg("--config")
        .arg(config)
        // Beside the socket, not in this machine's /run/modbroker.
        .arg("--record-dir")
        .arg(socket.with_extension("record"));
    cmd
}

/// Writes `text` as `modbroker.toml` in `dir` and returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let config = dir.join("modbroker.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn client(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `out`'s stderr contains `needle`, showing the stderr otherwise.
fn assert_stderr_has(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

/// One datagram as systemd reads it: newline-separated assignments (here always one).
fn notification_text(datagram: &[u8]) -> String {
    String::from_utf8_lossy(datagram)
        .trim_end_matches('\n')
        .to_owned()
}

/// A bound `NOTIFY_SOCKET` stand-in; `next` waits at most 30 s for each notification.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        NotifySocket { socket, path }
    }

    /// The next notification, without the newline that ends each assignment.
    fn next(&self) -> String {
        self.try_next().expect("notification within 30 s")
    }

    /// The next notification, or None after 30 s without one.
    fn try_next(&self) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(notification_text(&buf[..n]))
    }

    /// The next `STATUS=` line for which `wanted` holds (bounded by `next`'s timeout).
    fn status_where(&self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let message = self.next();
            if message.starts_with("STATUS=") && wanted(&message) {
                return message;
            }
        }
    }
}

#[test]
fn bound_daemon_resolves_with_libkmod_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command(&socket), socket.clone());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = client(&socket, &["resolve", "vfat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let fat = shown.find(" fat ").expect("fat is a dependency of vfat");
    let vfat = shown.find(" vfat ").expect("vfat itself");
    assert!(fat < vfat, "dependencies first: {shown}");

    let out = client(
        &socket,
        &[
            "load",
            "--no-fallback",
            "pci:v0000FFFFd0000FFFFsv0sd0bc0sc0i0",
        ],
    );
    assert!(
        out.status.success(),
        "no-match is success: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("no-match"));

    let out = client(&socket, &["load", "--no-fallback", "../../tmp/evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "not paths");

    // A second daemon must not steal the live socket.
    let second = daemon_command(&socket).output().unwrap();
    assert!(!second.status.success());
    assert_stderr_has(&second, "in use");

    let (status, _log) = daemon.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert!(!socket.exists(), "the daemon removes the socket it bound");
}

/// A VMware guest's DMI modalias (slashes in the BIOS date and in `cvrN/A`) goes from the
/// client through the daemon's validation to libkmod, as modprobe resolves it: vmw_vmci, then
/// vmw_balloon. It used to be refused as a path.
#[test]
fn dmi_modalias_resolves_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command(&socket), socket.clone());
    let vmware = "dmi:bvnPhoenixTechnologiesLTD:bvr6.00:bd11/12/2020:br4.6:svnVMware,Inc.:\
        pnVMwareVirtualPlatform:pvrNone:rvnIntelCorporation:rn440BXDesktopReferencePlatform:\
        rvrNone:cvnNoEnum:ct1:cvrN/A:sku:";
    let out = client(&socket, &["resolve", vmware]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.starts_with(&format!("{vmware}: load")), "{shown}");
    let vmci = shown.find(" vmw_vmci ").expect("vmw_vmci, a dependency");
    let balloon = shown.find(" vmw_balloon ").expect("vmw_balloon");
    assert!(vmci < balloon, "dependencies first: {shown}");
    drop(daemon);
}

/// Runs `program` in a private mount namespace whose `/etc/modprobe.d` is `conf`, so that
/// libkmod reads a test's `install` lines while the host's configuration stays untouched.
fn with_modprobe_d(conf: &Path, program: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/modprobe.d && exec "$@""#)
        .arg(conf)
        .arg(program);
    cmd
}

/// A modprobe.d whose `install` line for `mb_install_echo` prints to stdout and succeeds.
fn printing_install_line(dir: &Path) -> PathBuf {
    let conf = dir.join("modprobe.d");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("echo.conf"),
        "install mb_install_echo echo hello from install; /bin/true\n",
    )
    .unwrap();
    conf
}

/// An `install` command that prints used to write into `--oneshot`'s stdout, the pipe the
/// client parses its one JSON result from: the client said "unreadable result" and exited 1 (and
/// the kernel's helper told the kernel the load failed) although the command succeeded. Its
/// stdout is now `modbrokerd`'s stderr.
#[test]
fn install_command_output_stays_out_of_the_oneshot_result() {
    let dir = tempfile::tempdir().unwrap();
    let conf = printing_install_line(dir.path());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/modbroker.toml");
    let mut cmd = with_modprobe_d(&conf, env!("CARGO_BIN_EXE_modbrokerd"));
    cmd.args(["--config", shipped, "--oneshot", "--module-dir"])
        .arg(debian_tree())
        .args(["--", "mb_install_echo"]);
    let (out, _) = output_within(&mut cmd, Duration::from_secs(30));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["outcome"], "loaded", "{result}");
    assert!(stderr.contains("hello from install"), "{stderr}");

    // The client's fallback, and the kernel's autoload helper through it: exit 0, loaded.
    let absent = dir.path().join("absent.sock");
    for args in [&["load"][..], &["modprobe", "--"]] {
        let mut cmd = with_modprobe_d(&conf, env!("CARGO_BIN_EXE_modbroker"));
        cmd.arg("--socket")
            .arg(&absent)
            .arg("--module-dir")
            .arg(debian_tree())
            .args(args)
            .arg("mb_install_echo");
        let (out, _) = output_within(&mut cmd, Duration::from_secs(30));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.starts_with("mb_install_echo: loaded [mb_install_echo]"),
            "{args:?}: {stdout}"
        );
        assert!(stderr.contains("hello from install"), "{stderr}");
        assert!(!stderr.contains("unreadable"), "{stderr}");
    }
}

/// In the daemon, an `install` command's stdout goes to the log (stderr: the journal under
/// systemd), like the daemon's own lines, not to its stdout.
#[test]
fn daemon_logs_install_command_output() {
    let dir = tempfile::tempdir().unwrap();
    let conf = printing_install_line(dir.path());
    let socket = dir.path().join("modbroker.sock");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/modbroker.toml");
    let mut cmd = with_modprobe_d(&conf, env!("CARGO_BIN_EXE_modbrokerd"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--module-dir")
        .arg(debian_tree())
        .args(["--config", shipped])
        .stdout(Stdio::piped());
    let mut daemon = Daemon::spawn(cmd, socket.clone());
    let daemon_stdout = daemon.child.stdout.take().unwrap();
    let out = client(&socket, &["load", "--no-fallback", "mb_install_echo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("loaded"),
        "{}",
        text(&out.stdout)
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("hello from install"), "{log}");
    assert_eq!(std::io::read_to_string(daemon_stdout).unwrap(), "");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("modbroker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let daemon = Daemon::spawn(daemon_command(&socket), socket.clone());
    assert!(client(&socket, &["status"]).status.success());
    drop(daemon);
}

#[test]
fn socket_activation_by_systemd() {
    let activate = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "systemd-socket-activate missing: install the systemd package"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let unused = dir.path().join("never-bound.sock");
    let mut cmd = Command::new(activate);
    // systemd-socket-activate listens, then execs the daemon on the first connection with
    // LISTEN_FDS=1; the daemon's own --socket must then stay unused.
    cmd.arg("--listen")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_modbrokerd"))
        .arg("--socket")
        .arg(&unused)
        .arg("--module-dir")
        .arg(debian_tree());
    let daemon = Daemon::spawn(cmd, socket.clone());
    let out = client(&socket, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["requests"].as_u64().unwrap() >= 1);
    assert!(!unused.exists(), "an activated daemon binds nothing itself");
    drop(daemon);
}

#[test]
fn notifies_systemd_ready_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("modbroker.sock");
    let notify = NotifySocket::bind(dir.path());
    let mut cmd = daemon_command(&socket);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let daemon = Daemon::spawn(cmd, socket.clone());
    let mut messages = Vec::new();
    // READY=1 comes first; a STATUS= line follows within the 2 s status period.
    while !messages.iter().any(|m: &String| m.starts_with("STATUS=")) {
        messages.push(notify.next());
    }
    assert_eq!(messages[0], "READY=1");
    assert!(
        messages.iter().any(|m| m.contains("requests")),
        "{messages:?}"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
    let stopping = std::iter::from_fn(|| notify.try_next()).find(|m| m == "STOPPING=1");
    assert!(stopping.is_some(), "STOPPING=1 sent on SIGTERM");
}

#[test]
fn socket_activated_daemon_exits_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "idle_exit_secs = 1\n");
    let socket = dir.path().join("activated.sock");
    let record = dir.path().join("record");
    let mut cmd = Command::new("/usr/bin/systemd-socket-activate");
    cmd.arg("--listen")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_modbrokerd"))
        .arg("--config")
        .arg(&config)
        .arg("--module-dir")
        .arg(debian_tree())
        .arg("--record-dir")
        .arg(&record);
    let mut daemon = Daemon::spawn(cmd, socket.clone());
    // No connections and no loads: the daemon leaves on its own (systemd would restart it on
    // the next connection). Bounded wait for the exit, no fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "daemon did not exit when idle");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Its part of the boot's record outlives it: one file, final, with the requests it served
    // (Daemon::spawn asked for status until the daemon answered).
    let files: Vec<PathBuf> = std::fs::read_dir(&record)
        .expect("record directory written")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let written: modbroker::record::DaemonRecord =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert!(written.stopped_us.is_some(), "not the final record");
    assert!(written.totals.requests >= 1);
    assert_eq!(written.pid, daemon.child.id());
}

#[test]
fn bound_daemon_ignores_idle_exit() {
    // Without socket activation nobody would start the daemon again: idle exit stays off.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "idle_exit_secs = 1\n");
    let socket = dir.path().join("modbroker.sock");
    let mut daemon = Daemon::spawn(daemon_command_with(&socket, &config), socket.clone());
    // Let three idle checks pass (the daemon checks once a second), asking status in between.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "bound daemon exited"
        );
    }
    assert!(client(&socket, &["status"]).status.success());
}

/// `modbroker status` run as nobody (uid and gid 65534).
fn status_as_nobody(socket: &Path) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn sighup_reloads_the_access_list() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "must run as root (make test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(dir.path(), "allowed_uids = []\n");
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command_with(&socket, &config), socket.clone());
    // Let the file mode pass everyone, so that the daemon's own check is what decides.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = || status_as_nobody(&socket);
    assert_eq!(as_nobody().status.code(), Some(3), "refused before reload");

    std::fs::write(&config, "allowed_uids = [65534]\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    // The reload is asynchronous: poll (bounded) until the new list applies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !as_nobody().status.success() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply allowed_uids"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, log) = daemon.terminate();
    assert!(status.success());
    assert!(log.contains("configuration reloaded"), "{log}");
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `FIELD: N kB` line of `/proc/PID/status`, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[test]
fn ten_thousand_idle_connections_are_cheap_and_harmless() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 10_100,
        "RLIMIT_NOFILE hard limit {hard} is below 10,100"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command(&socket), socket.clone());
    let before = rss_kib(daemon.child.id());
    let idle: Vec<std::os::unix::net::UnixStream> = (0..10_000)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    // The daemon (which raises its own descriptor limit) still answers a new client.
    let out = client(&socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let during = rss_kib(daemon.child.id());
    assert!(
        during - before < 64 * 1024,
        "10,000 idle connections cost {} KiB",
        during - before
    );
    drop(idle);
    assert!(client(&socket, &["status"]).status.success());
    eprintln!("daemon RSS: {before} KiB idle, {during} KiB with 10,000 idle connections");
}

#[test]
fn bad_config_is_reported_and_the_daemon_serves_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("typo.toml", Some(TYPO), "unknown field `failure_window`"),
        (
            "level.toml",
            Some("log_level = \"warning\"\n"),
            "invalid log_level",
        ),
        ("absent.toml", None, "cannot read"),
    ];
    for (name, contents, expected) in cases {
        let config = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&config, contents).unwrap();
        }
        let socket = dir.path().join("modbroker.sock");
        let notify = NotifySocket::bind(dir.path());
        let mut cmd = daemon_command_with(&socket, &config);
        cmd.env("NOTIFY_SOCKET", &notify.path);
        let daemon = Daemon::spawn(cmd, socket.clone());

        let out = client(&socket, &["load", "--no-fallback", NO_MATCH]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("no-match"), "{name}");
        // The status follows READY=1 at once, and names the error for `systemctl status`.
        assert_eq!(notify.next(), "READY=1", "{name}");
        let status = notify.next();
        let prefix = format!("STATUS=configuration error in {}", config.display());
        assert!(status.starts_with(&prefix), "{name}: {status}");
        assert!(status.contains("requests"), "{name}: {status}");

        let (exit, log) = daemon.terminate();
        assert!(exit.success(), "{name}: {exit}");
        let reported = log
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("{name}: no {expected:?} in {log}"));
        assert!(reported.contains("ERROR"), "{name}: {reported}");
        assert!(reported.contains("running with"), "{name}: {reported}");
        assert!(reported.contains(&*config.to_string_lossy()), "{reported}");
        assert!(
            !log.contains('\x1b'),
            "no colours when stderr is not a terminal"
        );
        std::fs::remove_file(&notify.path).unwrap();
    }
}

#[test]
fn sighup_with_a_bad_file_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(dir.path(), "allowed_uids = [65534]\n");
    let socket = dir.path().join("modbroker.sock");
    let notify = NotifySocket::bind(dir.path());
    let mut cmd = daemon_command_with(&socket, &config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let daemon = Daemon::spawn(cmd, socket.clone());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody_served = || status_as_nobody(&socket).status.success();
    assert!(nobody_served());
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };

    std::fs::write(&config, format!("allowed_uids = [65534]\n{TYPO}")).unwrap();
    hup();
    let status = notify.status_where(|s| s.contains("configuration error"));
    assert!(status.contains("previous configuration"), "{status}");
    assert!(nobody_served(), "the running access list stays");

    std::fs::write(&config, "allowed_uids = [65534]\n").unwrap();
    hup();
    notify.status_where(|s| !s.contains("configuration error"));
    let (exit, log) = daemon.terminate();
    assert!(exit.success());
    let reported = log
        .lines()
        .find(|l| l.contains("failure_window"))
        .unwrap_or_else(|| panic!("reload error not logged: {log}"));
    assert!(reported.contains("ERROR"), "{reported}");
    assert!(log.contains("configuration reloaded"), "{log}");
}

#[test]
fn oneshot_loads_whatever_the_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), TYPO);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbrokerd"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--oneshot")
        .arg("--module-dir")
        .arg(debian_tree())
        .arg("--")
        .arg(NO_MATCH);
    let (out, _) = output_within(&mut cmd, Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["outcome"], "no-match", "{result}");
    assert_eq!(err.lines().count(), 1, "one warning line: {err}");
    assert!(
        err.contains("WARN") && err.contains("failure_window"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colours when stderr is not a terminal"
    );
}

#[test]
fn check_config_exit_status_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("never-bound.sock");
    let check = |config: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbrokerd"));
        cmd.arg("--check-config")
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket);
        output_within(&mut cmd, Duration::from_secs(30)).0
    };
    let typo = write_config(dir.path(), TYPO);
    let out = check(&typo);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&*typo.to_string_lossy()), "{err}");
    assert!(err.contains("unknown field `failure_window`"), "{err}");

    let level = write_config(dir.path(), "log_level = \"verbose\"\n");
    assert_eq!(check(&level).status.code(), Some(1));
    assert_eq!(
        check(&dir.path().join("absent.toml")).status.code(),
        Some(1)
    );

    let shipped = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/modbroker.toml"
    ));
    let out = check(shipped);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", shipped.display()));
    assert!(!socket.exists(), "--check-config binds nothing");
}

/// Runs the `modbroker` client as `uid` with primary group `gid` and no supplementary groups.
fn client_as(socket: &Path, uid: u32, gid: u32, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "must run as root (make test does)"
    );
    Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

/// `allowed_gids` could never take effect: the socket the daemon bound was 0600 root:root, so
/// nobody but root could connect to be checked. With `socket_group` the daemon gives its socket
/// that group and mode 0660 (after creating it 0600), and the group's members are served;
/// others cannot connect; an allowed uid the file keeps out is reported at error priority.
#[test]
fn socket_group_lets_its_members_in_and_keeps_others_out() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        dir.path(),
        "socket_group = \"4242\"\nallowed_gids = [4242]\nallowed_uids = [4244]\n",
    );
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command_with(&socket, &config), socket.clone());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (4242, 0o660));

    let member = client_as(&socket, 4243, 4242, &["status"]);
    assert!(member.status.success(), "{}", text(&member.stderr));
    let outsider = client_as(&socket, 65534, 65534, &["status"]);
    assert!(!outsider.status.success());
    assert_stderr_has(&outsider, "Permission denied");

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    let gap = log
        .lines()
        .find(|l| l.contains("allowed uid 4244 cannot connect"))
        .unwrap_or_else(|| panic!("uid 4244 not reported: {log}"));
    assert!(gap.contains("ERROR") && gap.contains("mode 0660"), "{gap}");
    assert!(!log.contains("gid 4242 cannot"), "{log}");
}

/// A socket-activated daemon cannot change the socket systemd made: it checks that the access
/// list can reach it, and says so at error priority when the file keeps an allowed group out
/// (the fix is the unit's `SocketGroup=`/`SocketMode=`, which the test plays by chown and chmod
/// before the first connection starts the daemon).
#[test]
fn activated_socket_that_keeps_the_access_list_out_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(dir.path(), "allowed_gids = [4242]\n");
    let activated = |name: &str, group_access: bool| {
        let socket = dir.path().join(name);
        let child = Command::new("/usr/bin/systemd-socket-activate")
            .arg("--listen")
            .arg(&socket)
            .arg(env!("CARGO_BIN_EXE_modbrokerd"))
            .arg("--config")
            .arg(&config)
            .arg("--module-dir")
            .arg(debian_tree())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no socket within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        if group_access {
            std::os::unix::fs::lchown(&socket, None, Some(4242)).unwrap();
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
        }
        let mut daemon = Daemon {
            child,
            socket: socket.clone(),
        };
        daemon.wait_ready();
        (daemon, socket)
    };

    // As systemd-socket-activate makes it (root's, no group write), like SocketMode=0600.
    let (daemon, socket) = activated("root-only.sock", false);
    assert!(!client_as(&socket, 4243, 4242, &["status"]).status.success());
    let (_, log) = daemon.terminate();
    let gap = log
        .lines()
        .find(|l| l.contains("allowed gid 4242 cannot connect"))
        .unwrap_or_else(|| panic!("gap not reported: {log}"));
    assert!(
        gap.contains("ERROR") && gap.contains("SocketGroup="),
        "{gap}"
    );

    // SocketGroup= and SocketMode=0660: the group is served, nothing is reported.
    let (daemon, socket) = activated("group.sock", true);
    let member = client_as(&socket, 4243, 4242, &["status"]);
    assert!(member.status.success(), "{}", text(&member.stderr));
    let (_, log) = daemon.terminate();
    assert!(!log.contains("cannot connect"), "{log}");
}

/// A module tree whose only module, `mb_bogus`, is not a module at all: any kernel refuses it
/// (ENOEXEC, or EPERM where loading is not allowed), and either error is one the failure
/// window remembers. Nothing can be loaded into the host kernel by it.
fn bogus_module_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("lib/modules/0.0.0-modbroker-test");
    std::fs::create_dir_all(tree.join("kernel")).unwrap();
    std::fs::write(tree.join("kernel/mb_bogus.ko"), vec![0x5a; 4096]).unwrap();
    let depmod = Command::new("depmod")
        .arg("-b")
        .arg(dir)
        .arg("0.0.0-modbroker-test")
        .output()
        .expect("depmod missing: install the Debian package 'kmod'");
    assert!(depmod.status.success(), "{}", text(&depmod.stderr));
    tree
}

fn load_calls(socket: &Path) -> u64 {
    let out = client(socket, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["load_calls"].as_u64().unwrap()
}

/// A daemon over [`bogus_module_tree`] whose one module has failed once and is remembered:
/// a second request made no load call.
fn daemon_remembering_a_failure(dir: &Path) -> (Daemon, PathBuf) {
    let tree = bogus_module_tree(dir);
    let socket = dir.join("modbroker.sock");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/modbroker.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modbrokerd"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(shipped);
    cmd.arg("--module-dir").arg(&tree);
    let daemon = Daemon::spawn(cmd, socket.clone());
    for _ in 0..2 {
        let out = load_bogus(&socket);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    }
    assert_eq!(load_calls(&socket), 1, "the failure is remembered");
    (daemon, socket)
}

fn load_bogus(socket: &Path) -> Output {
    client(socket, &["load", "--no-fallback", "mb_bogus"])
}

/// Asks (bounded: reloads are asynchronous) until a request makes a load call again.
fn ask_until_a_new_load_call(socket: &Path, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while load_calls(socket) < 2 {
        assert!(
            Instant::now() < deadline,
            "failure still served after {after}"
        );
        assert_eq!(load_bogus(socket).status.code(), Some(1));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP reloads modprobe.d and the module indexes; failures remembered from before the reload
/// used to be served for the rest of their window. They are forgotten on every reload.
#[test]
fn sighup_forgets_remembered_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, socket) = daemon_remembering_a_failure(dir.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    ask_until_a_new_load_call(&socket, "SIGHUP");
    assert_eq!(load_bogus(&socket).status.code(), Some(1));
    assert_eq!(load_calls(&socket), 2, "remembered again after one call");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("forgetting remembered load failures"), "{log}");
}

/// A new depmod is noticed without any signal (the resolver checks its indexes at most once a
/// second); failures remembered from the old tree are forgotten then too, before the first
/// request on the new tree is answered.
#[test]
fn a_new_depmod_forgets_remembered_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, socket) = daemon_remembering_a_failure(dir.path());
    bogus_module_tree(dir.path()); // depmod again: new index files, no signal
    ask_until_a_new_load_call(&socket, "a new depmod");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("module indexes and configuration reloaded"),
        "{log}"
    );
    assert!(log.contains("forgetting remembered load failures"), "{log}");
}

/// `modbroker resolve --show-depends -` (the client running `modbrokerd --show-depends`, no
/// daemon) prints, byte for byte, what the host's `modprobe -a --show-depends` prints for the
/// same targets and modprobe.d, and exits 1 as modprobe does when a target matches nothing.
#[test]
fn resolve_show_depends_prints_what_modprobe_prints() {
    let tree = debian_tree();
    let targets = ["vfat", "btrfs", "fs-vfat", NO_MATCH, "e1000e", "zswap"];
    let modprobe = Command::new("modprobe")
        .arg("-S")
        .arg(tree.file_name().unwrap())
        .args(["-a", "--show-depends"])
        .args(targets)
        .output()
        .expect("run modprobe (package kmod)");
    let mut client = Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--module-dir")
        .arg(&tree)
        .args(["resolve", "--show-depends", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(targets.join("\n").as_bytes()).unwrap();
    drop(stdin);
    let ours = client.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text(&modprobe.stdout).contains("/vfat.ko"), "{modprobe:?}");
    assert_eq!(
        text(&ours.stdout),
        text(&modprobe.stdout),
        "ours, then modprobe's"
    );
    assert_eq!(modprobe.status.code(), Some(1));
    assert_eq!(ours.status.code(), Some(1), "{}", text(&ours.stderr));
    assert!(text(&ours.stderr).contains(NO_MATCH));
}

/// `VmHWM` (peak resident memory) of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A flood from users the administrator let in (`socket_mode = 0o666`, `allowed_uids`): 3,000
/// connections from 20 uids, each sending 60 KB of a line it never ends. Root's status and load
/// requests are still answered within a second, and the daemon's peak resident memory grows by
/// less than the documented bound (README, "Limits"): 256 connections × 64 KiB of line buffer.
#[test]
fn an_unprivileged_flood_leaves_root_served_and_memory_bounded() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let uids: Vec<u32> = (65514..65534).collect();
    let config = write_config(
        dir.path(),
        &format!("socket_mode = 0o666\nallowed_uids = {uids:?}\n"),
    );
    let socket = dir.path().join("modbroker.sock");
    let daemon = Daemon::spawn(daemon_command_with(&socket, &config), socket.clone());
    let pid = daemon.child.id();
    let before = rss_kib(pid);

    let unfinished_line = vec![b'x'; 60_000];
    let flood: Vec<std::os::unix::net::UnixStream> = uids
        .iter()
        .flat_map(|&uid| {
            let (socket, line) = (socket.clone(), unfinished_line.clone());
            on_thread_as(uid, uid, move || {
                (0..150)
                    .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
                    .inspect(|s| {
                        s.set_nonblocking(true).unwrap();
                        // A connection the daemon closed at once refuses the write: fine.
                        let _ = (&*s).write(&line);
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    assert!(flood.len() > 2_500, "only {} connections", flood.len());

    for args in [&["status"][..], &["load", NO_MATCH]] {
        let started = Instant::now();
        let out = client(&socket, args);
        let took = started.elapsed();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
    }
    let peak = peak_rss_kib(pid);
    drop(flood);
    let bound_kib = 256 * 64 + 16 * 1024;
    assert!(
        peak.saturating_sub(before) < bound_kib,
        "the flood raised the daemon's peak RSS from {before} to {peak} KiB"
    );
    eprintln!("daemon RSS: {before} KiB before, peak {peak} KiB during the flood");
}

/// initramfs-tools' init-top script waits up to 5 s for the daemon's socket, but not for a
/// daemon that has died (a missing library, a bad binary): the coldplug then starts at once and
/// every request loads directly. Run here with its paths moved into a temporary directory.
#[test]
fn init_top_does_not_wait_for_a_daemon_that_died() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/initramfs-tools/scripts/init-top/modbroker"
    ))
    .unwrap();
    let root = dir.path().display().to_string();
    for name in ["modbrokerd", "modbroker"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let moved = script
        .replace("/usr/bin/", &format!("{root}/"))
        .replace("/run/", &format!("{root}/run/"));
    assert!(!moved.contains("/usr/bin/") && moved.contains(&format!("{root}/modbrokerd")));
    let started = Instant::now();
    let out = Command::new("sh").arg("-c").arg(&moved).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        took < Duration::from_secs(3),
        "waited {took:?} for a dead daemon"
    );
    assert!(dir.path().join("run/modbroker/initramfs.pid").is_file());
}

/// `make uninstall` on a running system stops and disables the units before their files go, and
/// reloads systemd and udev after (here with `systemctl` and `udevadm` stand-ins that log what
/// they were asked, and whether the unit file was still there).
#[test]
fn make_uninstall_stops_the_units_before_removing_them() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, dest) = (dir.path().join("bin"), dir.path().join("dest"));
    let unit = dest.join("usr/lib/systemd/system/modbroker.service");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "").unwrap();
    let log = dir.path().join("log");
    for tool in ["systemctl", "udevadm"] {
        let path = bin.join(tool);
        let script = format!(
            "#!/bin/sh\necho \"{tool} $* unit=$(test -e {} && echo present || echo gone)\" >>{}\n",
            unit.display(),
            log.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("make")
        .args([
            "--no-print-directory",
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "uninstall",
        ])
        .arg(format!("DESTDIR={}", dest.display()))
        .args(["PREFIX=/usr", "LIVE_SYSTEMD=true"])
        .env("PATH", path)
        .output()
        .expect("make");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unit.exists());
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            "systemctl disable --now modbroker.socket modbroker-install.socket modbroker.service unit=present",
            "systemctl daemon-reload unit=gone",
            "udevadm control --reload unit=gone",
        ],
        "{log}"
    );
}
