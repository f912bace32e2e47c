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
//! JSON line ([`InstallRequest`]), the reply one JSON line ([`InstallReply`]).
//!
//! The daemon only asks "run the install command configured for module M, with these extra
//! parameters"; the runner decides everything else itself ([`command_for`]):
//! - M must be a module name (letters, digits, `_` and `-`, at most 55 bytes), so it carries no
//!   arguments, globs or shell syntax;
//! - the command is libkmod's first `install` line whose pattern matches M, read by the runner
//!   from the configuration (modprobe uses the same first match);
//! - the options are M's own, from modprobe.d and the kernel command line, read by the runner;
//! - each extra parameter must pass the protocol's parameter rules (`NAME` or `NAME=VALUE`, no
//!   quotes, `$`, `;`, `|`, `&`, backticks, globs or whitespace), and they are appended after
//!   M's options, as modprobe appends its command line's;
//! - `$CMDLINE_OPTS` is replaced and `$MODPROBE_MODULE` set as modprobe does, and the line runs
//!   through `/bin/sh -c`.
//!
//! What a compromised daemon can still do: run the administrator's own install line for any
//! module name it likes, as often as it likes, with parameters of that restricted shape (which
//! the line may use as it wishes: a line that `eval`s `$CMDLINE_OPTS` is the administrator's
//! choice). It cannot choose the command, borrow another module's options, or add shell syntax.
//! The command's output goes to the runner's journal stream.
//!
//! Without the runner's socket (an initramfs without systemd, where the daemon is not
//! sandboxed, or the unit not installed) the daemon runs the command itself, as before
//! ([`run_install_command`]). [`Installer`] is that choice, handed to the kernel layer
//! (`kernel::SysKernel`) as its [`InstallCommands`]: the kernel layer asks, this file runs.
//!
//! The runner's side ([`serve`], [`command_for`]) reads the configuration with libkmod, so it is built
//! only with the `libkmod` feature; the daemon's side ([`run_through`]) is always there.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
#[cfg(feature = "libkmod")]
use tracing::info;
use tracing::{debug, warn};

use crate::kernel::{join_options, InstallCommands};
use crate::model::InstallFailure;
#[cfg(feature = "libkmod")]
use crate::{
    install_config::InstallLine,
    target::{canonical_name, looks_like_module_name, validate_params},
};

/// Where `modbroker-install.socket` listens.
pub const DEFAULT_SOCKET: &str = "/run/modbroker-install.sock";

/// Bound on a request or reply line: a command and options from modprobe.d, or a message about
/// them, with room to spare.
const MAX_LINE: u64 = 64 * 1024;

/// How long the runner waits for the request line after the connection is accepted.
#[cfg(feature = "libkmod")]
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the daemon asks the runner: run the install command configured for `module`, with
/// these extra parameters. The runner finds the command and the module's options itself.
/// Unknown fields are ignored: an older daemon's `command` and `options` (sent until the runner
/// decided them itself) are not taken, so its extra parameters are lost during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The module (as libkmod resolved it).
    pub module: String,
    /// The load request's parameters for it (`NAME` or `NAME=VALUE`), appended after the
    /// module's configured options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
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

/// How the kernel layer's install commands run: through the runner at `runner` when it listens
/// there, otherwise (and without a runner) in this process.
#[derive(Debug, Clone, Default)]
pub struct Installer {
    runner: Option<PathBuf>,
}

impl Installer {
    /// Runs every install command in this process (`--oneshot`, the client's direct loads, an
    /// initramfs without systemd).
    pub fn in_process() -> Self {
        Installer { runner: None }
    }

    /// Asks the runner listening at `socket` (the daemon does); when nothing listens there,
    /// runs the command in this process.
    pub fn through_runner(socket: PathBuf) -> Self {
        Installer {
            runner: Some(socket),
        }
    }
}

impl InstallCommands for Installer {
    fn run(
        &self,
        name: &str,
        command: &str,
        configured: &str,
        params: &str,
    ) -> Result<(), InstallFailure> {
        if let Some(socket) = &self.runner {
            // The runner reads the command and the configured options itself.
            let request = InstallRequest {
                module: name.to_string(),
                params: params.split_whitespace().map(str::to_string).collect(),
            };
            match run_through(socket, &request) {
                Ok(outcome) => return outcome,
                // No runner installed (an initramfs without systemd, where we are not
                // sandboxed): as before.
                Err(e) if e.source.kind() == io::ErrorKind::NotFound => {
                    debug!(module = name, "{e}; running the install command here")
                }
                Err(e) => warn!(
                    module = name,
                    "{e}; running the install command inside the daemon's sandbox"
                ),
            }
        }
        run_install_command(name, command, &join_options(configured, params))
    }
}

/// Runs an install command as modprobe does: `$CMDLINE_OPTS` replaced by the options, the module
/// name in `$MODPROBE_MODULE`, through `/bin/sh -c`. Options only ever contain validated
/// parameters (see `target`) and admin-written modprobe.d text, so no request can inject shell.
///
/// The command's stdout is our stderr, never our stdout. Under `modbrokerd --oneshot` our
/// stdout is the pipe the client reads its one JSON result from: an `install` line that prints
/// (`echo`, `modprobe -v`, a script's chatter) would corrupt that result and turn a module that
/// loaded into a failure, reported to udev or to the kernel. In the daemon, stderr is the log
/// (the journal under systemd), which is where such output belongs. Redirecting at the spawn
/// covers both, and everything the command starts inherits it.
pub fn run_install_command(name: &str, command: &str, options: &str) -> Result<(), InstallFailure> {
    let command = command.replace("$CMDLINE_OPTS", options);
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .env("MODPROBE_MODULE", name)
        .stdin(Stdio::null())
        .stdout(stdout_to_stderr())
        .status()
        .map_err(|e| InstallFailure(format!("cannot run install command {command:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(InstallFailure(format!(
            "install command {command:?} failed ({status})"
        )))
    }
}

/// A duplicate of our stderr, to be a child's stdout; `/dev/null` if stderr cannot be
/// duplicated (Rust's runtime opens `/dev/null` for a closed fd 2 at start-up, so it is open).
fn stdout_to_stderr() -> Stdio {
    io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::null(), Stdio::from)
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

/// The command line the runner runs for `request`, decided from the configuration libkmod reads
/// for `module_dir` (libkmod's default directories unless `config_dirs`): the module's first
/// matching `install` line with `$CMDLINE_OPTS` still in it, and the options that replace it
/// (the module's configured options, then the request's validated parameters). `Err` says why
/// nothing may run.
#[cfg(feature = "libkmod")]
pub fn command_for(
    request: &InstallRequest,
    module_dir: &Path,
    config_dirs: Option<&[PathBuf]>,
) -> Result<(String, String), String> {
    if !looks_like_module_name(&request.module) {
        let shown: String = request.module.chars().take(64).collect();
        return Err(format!("refused: {shown:?} is not a module name"));
    }
    let name = canonical_name(&request.module);
    let params = validate_params(&request.params).map_err(|e| format!("refused: {e}"))?;
    let line = InstallLine::lookup(module_dir, config_dirs, &name)
        .map_err(|e| format!("cannot read the configuration: {e}"))?
        .ok_or_else(|| format!("refused: no install line matches {name}"))?;
    Ok((line.command, join_options(&line.options, &params)))
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
    let name = canonical_name(&request.module);
    let outcome = command_for(request, module_dir, config_dirs).and_then(|(command, options)| {
        info!(module = %name, %command, %options, "running install command");
        run_install_command(&name, &command, &options).map_err(|f| f.0)
    });
    match outcome {
        Ok(()) => InstallReply {
            ok: true,
            error: None,
        },
        Err(error) => {
            warn!(module = %name, "{error}");
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
    use std::sync::Arc;

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

        fn command_for(&self, module: &str, params: &[&str]) -> Result<(String, String), String> {
            let conf = [self.path("modprobe.d")];
            command_for(&request(module, params), &self.path("modules"), Some(&conf))
        }

        /// Serves one connection on a socket in the fixture, as modbroker-install@.service does.
        fn runner(&self) -> (PathBuf, std::thread::JoinHandle<()>) {
            let socket = self.path("runner.sock");
            let _ = fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket).unwrap();
            let (modules, conf) = (self.path("modules"), self.path("modprobe.d"));
            let thread = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                serve(stream, &modules, Some(&[conf])).unwrap();
            });
            (socket, thread)
        }

        /// Sends `request` to a runner serving this fixture.
        fn run(&self, request: &InstallRequest) -> Result<(), InstallFailure> {
            let (socket, thread) = self.runner();
            let outcome = run_through(&socket, request).unwrap();
            thread.join().unwrap();
            outcome
        }
    }

    fn request(module: &str, params: &[&str]) -> InstallRequest {
        InstallRequest {
            module: module.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn install_commands_run_through_sh_with_options() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let command = format!(
            "echo \"$MODPROBE_MODULE $CMDLINE_OPTS\" > {}",
            out.display()
        );
        run_install_command("mb_ok", &command, "value=3 debug=1").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "mb_ok value=3 debug=1\n"
        );
        let refused = run_install_command("mb_ok", "/bin/false", "").unwrap_err();
        assert!(refused.0.contains("failed"), "{}", refused.0);
    }

    #[test]
    fn the_command_is_the_first_matching_line_with_the_modules_own_options() {
        let fx = Fixture::new(
            "install snd_aloop /bin/true $CMDLINE_OPTS\ninstall snd_* /bin/echo $CMDLINE_OPTS\n\
             options snd_pcsp index=2\n\
             options nvidia NVreg_RegistryDwords=\"PerfLevelSrc=0x2222; dd if=/x of=/y\"\n",
        );
        assert_eq!(
            fx.command_for("snd_aloop", &[]),
            Ok(("/bin/true $CMDLINE_OPTS".into(), String::new())),
            "first match, as libkmod"
        );
        assert_eq!(
            fx.command_for("snd-pcsp", &["x=1", "debug"]),
            Ok(("/bin/echo $CMDLINE_OPTS".into(), "index=2 x=1 debug".into())),
            "own options, then the request's parameters"
        );
        assert!(fx
            .command_for("nvidia", &[])
            .unwrap_err()
            .contains("no install line"));
    }

    #[test]
    fn injected_options_names_with_arguments_and_globs_are_refused() {
        let fx = Fixture::new("install snd_* /bin/echo $CMDLINE_OPTS\n");
        for params in [
            &[
                "PerfLevelSrc=0x2222;",
                "dd",
                "if=/dev/null",
                "of=/tmp/pwned",
            ][..],
            &["x=$(reboot)"],
            &["x=`id`"],
            &["x=a b"],
            &["x=\"q\""],
            &["x=*"],
        ] {
            let refused = fx.command_for("snd_pcsp", params).unwrap_err();
            assert!(refused.starts_with("refused"), "{params:?}: {refused}");
        }
        for module in [
            "snd_x --config=/run/modbroker/record /etc/pass*",
            "snd_*",
            "snd_x;id",
            "../snd_x",
            "",
            &"snd_".repeat(20),
        ] {
            let refused = fx.command_for(module, &[]).unwrap_err();
            assert!(
                refused.contains("not a module name"),
                "{module:?}: {refused}"
            );
        }
    }

    #[test]
    fn runner_runs_only_the_configured_line_and_answers() {
        let fx = Fixture::new("");
        let out = fx.path("ran");
        let pwned = fx.path("pwned");
        fs::write(
            fx.path("modprobe.d/test.conf"),
            format!(
                "install snd_aloop /bin/true\n\
                 install snd_* echo chatter; echo \"$MODPROBE_MODULE $CMDLINE_OPTS\" > {}\n\
                 install mb_fails /bin/false\n\
                 options nvidia NVreg=\"a; touch {}\"\n",
                out.display(),
                pwned.display()
            ),
        )
        .unwrap();
        // Accepted: runs, stdout chatter does not reach the reply.
        assert_eq!(fx.run(&request("snd_pcsp", &["x=1"])), Ok(()));
        assert_eq!(fs::read_to_string(&out).unwrap(), "snd_pcsp x=1\n");
        fs::remove_file(&out).unwrap();
        // Not the first match: the snd_* line does not run for snd_aloop.
        assert_eq!(fx.run(&request("snd_aloop", &[])), Ok(()));
        assert!(!out.exists(), "a line that is not the first match ran");
        // Another module's options and injected parameters never reach the shell.
        let refused = fx.run(&request("snd_pcsp", &["PerfLevelSrc=0x2222;", "touch"]));
        assert!(refused.unwrap_err().0.contains("refused"));
        let forged = format!("snd_x; touch {}", pwned.display());
        assert!(fx.run(&request(&forged, &[])).is_err());
        assert!(!out.exists() && !pwned.exists(), "a refused request ran");
        // An older daemon's fields are ignored, not obeyed.
        let (socket, thread) = fx.runner();
        let old = format!(
            "{{\"module\":\"snd_pcsp\",\"command\":\"touch {}\",\"options\":\"\"}}\n",
            pwned.display()
        );
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(old.as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        thread.join().unwrap();
        assert!(reply.contains("\"ok\":true"), "{reply}");
        assert!(!pwned.exists(), "the old request's command ran");
        assert_eq!(fs::read_to_string(&out).unwrap(), "snd_pcsp \n");
        // Configured, failing.
        let failed = fx.run(&request("mb_fails", &[])).unwrap_err();
        assert!(failed.0.contains("failed"), "{}", failed.0);
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
        let kernel = SysKernel::new(Arc::new(Installer::through_runner(socket.clone())));
        kernel.run_install("mb_ok", "/bin/false", "", "").unwrap();
        thread.join().unwrap();
        assert!(
            out.exists(),
            "the runner ran its own line, not the daemon's"
        );
        // The runner refuses a module without a line: proof the runner, not this process,
        // answered.
        let (_, thread) = fx.runner();
        let refused = kernel
            .run_install("mb_none", "/bin/true", "", "")
            .unwrap_err();
        thread.join().unwrap();
        assert!(refused.0.contains("refused"), "{}", refused.0);
        // No runner socket: runs here.
        fs::remove_file(&socket).unwrap();
        kernel.run_install("mb_none", "/bin/true", "", "").unwrap();
    }
}
