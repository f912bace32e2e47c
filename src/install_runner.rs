//! modprobe.d `install` commands run outside the daemon's sandbox.
//!
//! `modbroker.service` is hardened (read-only `/sys`, `/etc`, `/run` and `/proc/sys`, a private
//! network namespace, no `mount(2)`, only `CAP_SYS_MODULE`). An `install` line runs where
//! modprobe's would: with root's full rights, as under udevd or a root shell. Real lines need
//! that (`... && echo 8 > /sys/class/net/eth0/device/sriov_numvfs`, VFIO `driver_override`
//! scripts, `sysctl -w`, `mount -t binfmt_misc`).
//!
//! So the daemon hands each command to a runner: `modbroker-install.socket` (root only,
//! `Accept=yes`) starts one unsandboxed `modbroker-install@.service` per command, which runs
//! `modbrokerd --run-install` with the connection on its stdin ([`serve`]). The request is one
//! JSON line ([`InstallRequest`]: module, command, options), the reply one JSON line
//! ([`InstallReply`]). The runner does not take the daemon's word for the command: it re-reads
//! the configuration with libkmod and runs the command only if an `install` line for that module
//! says exactly it, and only with options that are words of `options` lines or valid module
//! parameters ([`check`]). A compromised daemon can therefore run no command the administrator
//! did not write. The command's output goes to the runner's journal stream.
//!
//! Without the runner's socket (an initramfs without systemd, where the daemon is not
//! sandboxed, or the unit not installed) the daemon runs the command itself, as before
//! ([`crate::kernel::run_install_command`]).
//!
//! The runner's side ([`serve`], [`check`]) reads the configuration with libkmod, so it is built
//! only with the `libkmod` feature; the daemon's side ([`run_through`]) is always there.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
#[cfg(feature = "libkmod")]
use tracing::{info, warn};

use crate::kernel::InstallFailure;
#[cfg(feature = "libkmod")]
use crate::{kernel::run_install_command, resolver::InstallConfig, target::validate_params};

/// Where `modbroker-install.socket` listens.
pub const DEFAULT_SOCKET: &str = "/run/modbroker-install.sock";

/// Bound on a request or reply line: a command and options from modprobe.d, or a message about
/// them, with room to spare.
const MAX_LINE: u64 = 64 * 1024;

/// How long the runner waits for the request line after the connection is accepted.
#[cfg(feature = "libkmod")]
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the daemon asks the runner to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The module the `install` line is for (as libkmod resolved it).
    pub module: String,
    /// The command, before `$CMDLINE_OPTS` is replaced.
    pub command: String,
    /// The options that replace `$CMDLINE_OPTS`.
    pub options: String,
}

/// The runner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReply {
    /// True if the command ran and exited 0.
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the runner could not be asked at all: the caller then runs the command itself.
#[derive(Debug, thiserror::Error)]
#[error("install-command runner at {} unavailable: {source}", socket.display())]
pub struct RunnerUnavailable {
    /// The runner's socket.
    pub socket: PathBuf,
    /// The connect error.
    #[source]
    pub source: io::Error,
}

/// Runs an install command through the runner at `socket`. `Err` if no runner listens there
/// (the caller runs the command itself); otherwise the command's outcome.
pub fn run_through(
    socket: &Path,
    request: &InstallRequest,
) -> Result<Result<(), InstallFailure>, RunnerUnavailable> {
    let stream = UnixStream::connect(socket).map_err(|source| RunnerUnavailable {
        socket: socket.to_path_buf(),
        source,
    })?;
    Ok(exchange(stream, request).and_then(|reply| match reply {
        InstallReply { ok: true, .. } => Ok(()),
        InstallReply { error, .. } => Err(InstallFailure(
            error.unwrap_or_else(|| "install command failed".to_string()),
        )),
    }))
}

/// Sends the request line and reads the reply line. Waits as long as the command runs, as
/// modprobe would.
fn exchange(
    mut stream: UnixStream,
    request: &InstallRequest,
) -> Result<InstallReply, InstallFailure> {
    let lost = |e: io::Error| InstallFailure(format!("install-command runner: {e}"));
    let mut line = serde_json::to_vec(request).map_err(|e| lost(io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(lost)?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_LINE))
        .read_line(&mut reply)
        .map_err(lost)?;
    if reply.is_empty() {
        return Err(InstallFailure(
            "install-command runner closed the connection without an answer (see its journal: \
             journalctl -u 'modbroker-install@*')"
                .to_string(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| lost(io::Error::other(e)))
}

/// Whether `request` may run under `config`: an `install` line for the module says exactly this
/// command, and each word of the options is a word of some `options` line (modprobe.d or the
/// kernel command line) or a valid module parameter, which cannot carry shell syntax.
#[cfg(feature = "libkmod")]
pub fn check(request: &InstallRequest, config: &InstallConfig) -> Result<(), String> {
    if !config.has_command(&request.module, &request.command) {
        return Err(format!(
            "refused: no install line for {} says {:?} in the current configuration",
            request.module, request.command
        ));
    }
    for word in request.options.split_whitespace() {
        let is_param = validate_params(&[word.to_string()]).is_ok_and(|p| p == word);
        if !is_param && !config.has_option_word(word) {
            return Err(format!(
                "refused: option {word:?} for {} is neither configured nor a valid parameter",
                request.module
            ));
        }
    }
    Ok(())
}

/// `modbrokerd --run-install`: serves the one connection on `stream` (the service's stdin):
/// reads the request, checks it against the configuration for `module_dir` (libkmod's default
/// directories unless `config_dirs`), runs it, answers. The command's stdin is `/dev/null`, its
/// stdout and stderr are ours (the journal).
#[cfg(feature = "libkmod")]
pub fn serve(
    stream: UnixStream,
    module_dir: &Path,
    config_dirs: Option<&[PathBuf]>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<InstallRequest>(&line) {
        Ok(request) => run_checked(&request, module_dir, config_dirs),
        Err(e) => InstallReply {
            ok: false,
            error: Some(format!("bad install request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

#[cfg(feature = "libkmod")]
fn run_checked(
    request: &InstallRequest,
    module_dir: &Path,
    config_dirs: Option<&[PathBuf]>,
) -> InstallReply {
    let checked = InstallConfig::read(module_dir, config_dirs)
        .map_err(|e| format!("cannot read the configuration: {e}"))
        .and_then(|config| check(request, &config));
    let outcome = checked.and_then(|()| {
        info!(module = %request.module, command = %request.command, "running install command");
        run_install_command(&request.module, &request.command, &request.options).map_err(|f| f.0)
    });
    match outcome {
        Ok(()) => InstallReply {
            ok: true,
            error: None,
        },
        Err(error) => {
            warn!(module = %request.module, "{error}");
            InstallReply {
                ok: false,
                error: Some(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Kernel, SysKernel};
    use std::fs;
    use std::os::unix::net::UnixListener;

    /// A configuration directory with `conf` as its one file, and an empty module directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(conf: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("modprobe.d")).unwrap();
            fs::create_dir_all(dir.path().join("modules")).unwrap();
            fs::write(dir.path().join("modprobe.d/test.conf"), conf).unwrap();
            Fixture { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn config(&self) -> InstallConfig {
            InstallConfig::read(&self.path("modules"), Some(&[self.path("modprobe.d")])).unwrap()
        }

        /// Serves one connection on a socket in the fixture, as modbroker-install@.service does.
        fn runner(&self) -> (PathBuf, std::thread::JoinHandle<()>) {
            let socket = self.path("runner.sock");
            let listener = UnixListener::bind(&socket).unwrap();
            let (modules, conf) = (self.path("modules"), self.path("modprobe.d"));
            let thread = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                serve(stream, &modules, Some(&[conf])).unwrap();
            });
            (socket, thread)
        }
    }

    fn request(module: &str, command: &str, options: &str) -> InstallRequest {
        InstallRequest {
            module: module.into(),
            command: command.into(),
            options: options.into(),
        }
    }

    #[test]
    fn only_configured_commands_with_configured_or_valid_options_pass() {
        let fx = Fixture::new(
            "install mb_ok /bin/true $CMDLINE_OPTS\ninstall snd_* /bin/echo\n\
             options mb_ok quoted=\"a b\"\n",
        );
        let config = fx.config();
        let cmd = "/bin/true $CMDLINE_OPTS";
        assert_eq!(check(&request("mb_ok", cmd, ""), &config), Ok(()));
        assert_eq!(check(&request("mb_ok", cmd, "x=1 debug"), &config), Ok(()));
        assert_eq!(
            check(&request("mb_ok", cmd, "quoted=\"a b\""), &config),
            Ok(())
        );
        // A pattern line covers the names it matches, as in libkmod.
        assert_eq!(
            check(&request("snd_dummy", "/bin/echo", ""), &config),
            Ok(())
        );
        for (module, command, options) in [
            ("mb_ok", "/bin/sh -c id", ""),
            ("mb_other", cmd, ""),
            ("mb_ok", cmd, "x=1;reboot"),
            ("mb_ok", cmd, "$(reboot)"),
            ("dummy", "/bin/echo", ""),
        ] {
            let refused = check(&request(module, command, options), &config);
            assert!(refused.is_err(), "{module} {command:?} {options:?} passed");
        }
    }

    #[test]
    fn runner_runs_the_configured_command_and_answers() {
        let fx = Fixture::new("");
        let out = fx.path("ran");
        let command = format!(
            "echo chatter; echo \"$MODPROBE_MODULE $CMDLINE_OPTS\" > {}",
            out.display()
        );
        fs::write(
            fx.path("modprobe.d/test.conf"),
            format!("install mb_ok {command}\ninstall mb_fails /bin/false\n"),
        )
        .unwrap();
        // Accepted: runs, stdout chatter does not reach the reply.
        let (socket, thread) = fx.runner();
        let outcome = run_through(&socket, &request("mb_ok", &command, "x=1")).unwrap();
        thread.join().unwrap();
        assert_eq!(outcome, Ok(()));
        assert_eq!(fs::read_to_string(&out).unwrap(), "mb_ok x=1\n");
        fs::remove_file(&socket).unwrap();
        // Refused: not configured, so not run.
        fs::remove_file(&out).unwrap();
        let forged = format!("touch {}", out.display());
        let (socket, thread) = fx.runner();
        let outcome = run_through(&socket, &request("mb_ok", &forged, "")).unwrap();
        thread.join().unwrap();
        assert!(outcome.unwrap_err().0.contains("refused"));
        assert!(!out.exists(), "a command not in the configuration ran");
        fs::remove_file(&socket).unwrap();
        // Configured, failing.
        let (socket, thread) = fx.runner();
        let outcome = run_through(&socket, &request("mb_fails", "/bin/false", "")).unwrap();
        thread.join().unwrap();
        assert!(outcome.unwrap_err().0.contains("failed"));
    }

    #[test]
    fn the_kernel_uses_the_runner_when_it_listens_and_runs_commands_itself_otherwise() {
        let fx = Fixture::new("");
        let out = fx.path("ran");
        let command = format!("echo $$ > {}", out.display());
        fs::write(
            fx.path("modprobe.d/test.conf"),
            format!("install mb_ok {command}\n"),
        )
        .unwrap();
        let (socket, thread) = fx.runner();
        let kernel = SysKernel::default().with_install_runner(socket.clone());
        kernel.run_install("mb_ok", &command, "").unwrap();
        thread.join().unwrap();
        assert!(out.exists());
        // The runner refuses what the configuration lacks: proof the runner, not this
        // process, answered.
        let (_, thread) = {
            fs::remove_file(&socket).unwrap();
            fx.runner()
        };
        let refused = kernel.run_install("mb_ok", "/bin/true", "").unwrap_err();
        thread.join().unwrap();
        assert!(refused.0.contains("refused"), "{}", refused.0);
        // No runner socket: runs here.
        fs::remove_file(&socket).unwrap();
        kernel.run_install("mb_ok", "/bin/true", "").unwrap();
    }
}
