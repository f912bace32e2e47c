//! `modbroker-gen-docs DIR`: writes the man pages `modbrokerd.8` and `modbroker.8` and shell
//! completions (bash, zsh, fish) for both binaries into DIR, from the clap definitions in
//! `modbroker::cli`. Built only with `--features docs`; `make install` runs it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use modbroker::cli::{Cli, DaemonArgs};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: modbroker-gen-docs DIR")?,
    );
    for (command, extra) in [
        (Cli::command(), CLIENT_EXTRA),
        (DaemonArgs::command(), DAEMON_EXTRA),
    ] {
        write_man_page(&dir.join("man8"), command.clone(), extra)?;
        write_completions(&dir.join("completions"), command)?;
    }
    Ok(())
}

/// Section 8 (system administration), with the exit status or signals section appended.
fn write_man_page(dir: &Path, command: clap::Command, extra: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = command.get_name().to_string();
    let man = clap_mangen::Man::new(command).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(extra.as_bytes());
    let path = dir.join(format!("{name}.8"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}

fn write_completions(dir: &Path, mut command: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, dir)
            .with_context(|| format!("{shell} completion for {name}"))?;
    }
    Ok(())
}

const CLIENT_EXTRA: &str = r#".SH "EXIT STATUS"
0: every target ended loaded, already\-loaded, builtin, no\-match or queued (with \fB\-\-udev\fR
also blacklisted or ENODEV). 1: a target failed, was invalid, blacklisted or timed out.
2: usage error. 3: the daemon refused the request. 4: no daemon and \fB\-\-no\-fallback\fR.
5: \fBblame\fR or \fBplot\fR found no record (no \fI/run/modbroker/record\fR, or no usable
file in it).
.SH FILES
\fI/run/modbroker/record/*.json\fR: the daemons' record of this boot's module loading, read by
\fBblame\fR and \fBplot\fR (\fBblame \-\-json\fR's layout: blame\-json.md with the package's documentation,
\fI/usr/share/doc/modbroker\fR).
.SH ENVIRONMENT
\fBMODBROKER_SOCKET\fR: the daemon socket when \fB\-\-socket\fR is not given.
.SH "SEE ALSO"
\fBmodbrokerd\fR(8), \fBmodprobe\fR(8), \fBudev\fR(7)
"#;

const DAEMON_EXTRA: &str = r#".SH SIGNALS
SIGTERM, SIGINT: stop accepting, answer requests in progress, let loads in flight finish, exit.
SIGHUP: re\-read the configuration (access lists, failure window, log level) and reload the
kmod indexes and modprobe.d.
.SH FILES
/etc/modbroker/modbroker.toml, /run/modbroker.sock
.SH "SEE ALSO"
\fBmodbroker\fR(8), \fBmodprobe.d\fR(5), \fBsystemd.socket\fR(5)
"#;
