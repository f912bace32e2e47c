//! The daemon's modes that run once and exit, started by the client, by systemd or by an
//! administrator: `--oneshot` (load directly, the client's fallback), `--show-depends` (what
//! modprobe's `--show-depends` prints, resolved as the daemon resolves) and `--run-install` (one
//! install-command request from modbroker-install.socket). `--check-config` lives with the
//! configuration ([`check_config`](super::config_layers::check_config)).

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use super::DaemonError;
use crate::config::Config;
use crate::direct::load_direct;
use crate::install_runner::{self, Installer};
use crate::kernel::SysKernel;
use crate::plan::BlacklistScope;
use crate::resolver::KmodResolver;
use crate::target::validate_target;

/// `--run-install`: the connection modbroker-install.socket accepted is our stdin.
pub fn run_install(config: &Config) -> Result<ExitCode, DaemonError> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(DaemonError::Stdin)?;
    let stream = std::os::unix::net::UnixStream::from(stdin);
    install_runner::serve(stream, &config.module_dir(), None)
        .map_err(DaemonError::InstallRequest)?;
    Ok(ExitCode::SUCCESS)
}

/// `--oneshot [--blacklist-names] TARGET [PARAM...]`: loads directly and prints the one JSON
/// result line the client parses. Nothing else may reach stdout: logs go to stderr, and so does
/// the stdout of any `install` command the load runs (`kernel::run_install_command`).
pub fn oneshot(
    config: &Config,
    args: &[String],
    blacklist: BlacklistScope,
) -> Result<(), DaemonError> {
    let (target, params) = args.split_first().ok_or(DaemonError::NoTarget)?;
    let kernel = SysKernel::new(Arc::new(Installer::in_process()));
    let result = load_direct(&kernel, &config.module_dir(), target, params, blacklist);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `--show-depends [--blacklist-names] TARGET...`: resolves each target here, with the resolver
/// the daemon uses, and prints what `modprobe -a --show-depends TARGET...` prints (the lines of
/// [`Plan::show_depends`](crate::plan::Plan::show_depends)). A `-` stands for the targets on stdin, one a line. A target that
/// matches nothing, or is refused or cannot be resolved, gets a stderr line and makes the exit
/// status 1, as in modprobe; the next one is resolved all the same.
pub fn show_depends(
    config: &Config,
    args: &[String],
    blacklist: BlacklistScope,
) -> Result<ExitCode, DaemonError> {
    use std::io::{BufRead, Write};
    let module_dir = config.module_dir();
    let mut resolver =
        KmodResolver::new(&module_dir, None).map_err(|source| DaemonError::ModuleTree {
            path: module_dir.clone(),
            source,
        })?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut all_found = true;
    let mut show = |target: &str| -> Result<(), DaemonError> {
        let plan = validate_target(target)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                resolver
                    .resolve_with(t, blacklist)
                    .map_err(|e| e.to_string())
            });
        match plan.map(|plan| plan.show_depends()) {
            Ok(Some(lines)) => return Ok(stdout.write_all(lines.as_bytes())?),
            Ok(None) => eprintln!("modbrokerd: {target}: no module matches"),
            Err(e) => eprintln!("modbrokerd: {target}: {e}"),
        }
        all_found = false;
        Ok(())
    };
    for arg in args {
        if arg != "-" {
            show(arg)?;
            continue;
        }
        for line in std::io::stdin().lock().lines() {
            show(&line.map_err(DaemonError::ReadTargets)?)?;
        }
    }
    stdout.flush()?;
    Ok(if all_found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
