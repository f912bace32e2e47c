//! The command lines run once per uevent or autoload, read by hand before clap is touched:
//! `load --udev [TARGET]` (udev's rules) and `modprobe ARGS...` (the kernel's helper). Building
//! clap's parser was a third of a client exec under TCG (README, "Why the client is static").
//! This path takes only what clap would read the same way (the tests check that against clap)
//! and leaves everything else to clap. Also here: the modprobe command line's own reading, which
//! the fast path, clap's `modprobe` command and a call through the name `modprobe` all share.

use std::ffi::OsString;
use std::path::PathBuf;

/// A command line taken without clap (see [`parse_fast`]).
#[derive(Debug, PartialEq)]
pub struct FastArgs {
    /// `--socket PATH`.
    pub socket: Option<PathBuf>,
    /// `--module-dir DIR`.
    pub module_dir: Option<PathBuf>,
    /// What to run.
    pub command: FastCommand,
}

/// The commands the fast path takes.
#[derive(Debug, PartialEq)]
pub enum FastCommand {
    /// `load --udev [--] [TARGET]`; no TARGET: the uevent's `MODALIAS` (see [`udev_target`]).
    LoadUdev(Option<String>),
    /// `modprobe ARGS...`, ARGS as [`parse_modprobe_args`] accepts them.
    Modprobe(Vec<OsString>),
}

/// The target of `load --udev`: the one given, else the uevent's `MODALIAS` from the
/// environment udev gives the program, byte for byte, as udev's builtin `kmod load` reads it
/// (a value on the rule's command line would be split at whitespace and unquoted by udev).
/// `None`, after a message, when neither is there.
pub fn udev_target(given: Option<String>) -> Option<String> {
    if given.is_some() {
        return given;
    }
    match std::env::var("MODALIAS") {
        Ok(modalias) if !modalias.is_empty() => Some(modalias),
        _ => {
            eprintln!("modbroker: load --udev without a TARGET needs MODALIAS in the environment");
            None
        }
    }
}

/// The command lines run once per uevent or autoload, parsed by hand: `[GLOBAL...] load
/// [--udev | GLOBAL]... [--] [TARGET]` with `--udev` among the flags, and `[GLOBAL...] modprobe
/// ARGS...`; GLOBAL is `--socket PATH` or `--module-dir DIR` (also `--opt=VALUE`). Anything else,
/// or anything unusual in these (another flag, a parameter, a value that starts with `-`, text
/// that is not UTF-8), is `None`, and clap parses the command line as always: this path takes
/// only what clap would read the same way (a unit test checks that against clap).
pub fn parse_fast(args: Vec<OsString>) -> Option<FastArgs> {
    let mut args = args.into_iter();
    let mut fast = FastArgs {
        socket: None,
        module_dir: None,
        command: FastCommand::LoadUdev(None),
    };
    let command = loop {
        let arg = args.next()?.into_string().ok()?;
        if !fast.global(&arg, &mut args)? {
            break arg;
        }
    };
    fast.command = match command.as_str() {
        "load" => FastCommand::LoadUdev(fast.load_udev_target(args)?),
        "modprobe" => {
            let args: Vec<OsString> = args.collect();
            parse_modprobe_args(args.clone()).ok()?;
            FastCommand::Modprobe(args)
        }
        _ => return None,
    };
    Some(fast)
}

impl FastArgs {
    /// Takes `arg` (and its value from `rest`) if it is a global option: `Some(true)` when taken,
    /// `Some(false)` when `arg` is something else, `None` when clap should judge it.
    fn global(&mut self, arg: &str, rest: &mut impl Iterator<Item = OsString>) -> Option<bool> {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg, None),
        };
        let slot = match name {
            "--socket" => &mut self.socket,
            "--module-dir" => &mut self.module_dir,
            _ => return Some(false),
        };
        let value = match inline {
            Some(value) => value,
            None => rest.next()?.into_string().ok()?,
        };
        if slot.is_some() || value.is_empty() || value.starts_with('-') {
            return None;
        }
        *slot = Some(PathBuf::from(value));
        Some(true)
    }

    /// The TARGET of `load`'s flags and arguments `rest`, when they are `--udev`, globals and at
    /// most one target (after `--` or not starting with `-`): `Some(None)` for none.
    fn load_udev_target(
        &mut self,
        mut rest: impl Iterator<Item = OsString>,
    ) -> Option<Option<String>> {
        let (mut udev, mut target) = (false, None);
        while let Some(arg) = rest.next() {
            let arg = arg.into_string().ok()?;
            match arg.as_str() {
                "--udev" if !udev => udev = true,
                "--" => {
                    let last = rest.next()?.into_string().ok()?;
                    if target.replace(last).is_some() || rest.next().is_some() {
                        return None;
                    }
                }
                flag if flag.starts_with('-') => {
                    if !self.global(flag, &mut rest)? {
                        return None;
                    }
                }
                _ if target.is_none() => target = Some(arg),
                _ => return None,
            }
        }
        udev.then_some(target)
    }
}

/// The modprobe command line the helper accepts.
#[derive(Debug, PartialEq, Eq)]
pub struct ModprobeArgs {
    /// `-q`/`--quiet`.
    pub quiet: bool,
    /// `-b`/`--use-blacklist`.
    pub use_blacklist: bool,
    /// The module names.
    pub names: Vec<String>,
}

/// Parses modprobe arguments: options `-q`, `-b` (alone or bundled) and their long forms, `--`,
/// then names.
pub fn parse_modprobe_args(args: Vec<OsString>) -> Result<ModprobeArgs, String> {
    let mut quiet = false;
    let mut use_blacklist = false;
    let mut names = Vec::new();
    let mut options_done = false;
    for arg in args {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
        if options_done || !arg.starts_with('-') || arg == "-" {
            names.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "--quiet" => quiet = true,
            "--use-blacklist" => use_blacklist = true,
            short
                if !short.starts_with("--") && short[1..].chars().all(|c| c == 'q' || c == 'b') =>
            {
                quiet |= short.contains('q');
                use_blacklist |= short.contains('b');
            }
            _ => return Err(format!("modprobe: unsupported option {arg:?}")),
        }
    }
    if names.is_empty() {
        return Err("modprobe: no module name given".to_string());
    }
    Ok(ModprobeArgs {
        quiet,
        use_blacklist,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// What a command line asks for, as the fast path and clap can both say it: the globals and
    /// either `load --udev`'s target or the helper's modprobe arguments, as the helper reads them.
    type Meaning = (
        Option<PathBuf>,
        Option<PathBuf>,
        Result<Option<String>, Result<ModprobeArgs, String>>,
    );

    fn meaning(fast: FastArgs) -> Meaning {
        let command = match fast.command {
            FastCommand::LoadUdev(target) => Ok(target),
            FastCommand::Modprobe(args) => Err(parse_modprobe_args(args)),
        };
        (fast.socket, fast.module_dir, command)
    }

    fn fast(args: &[&str]) -> Option<FastArgs> {
        parse_fast(args.iter().map(OsString::from).collect())
    }

    /// What clap makes of `args`, when it is a command the fast path could also have taken.
    fn clap_reading(args: &[&str]) -> Option<Meaning> {
        let cli = Cli::try_parse_from(std::iter::once("modbroker").chain(args.iter().copied()));
        let cli = cli.ok()?;
        let command = match cli.command {
            Command::Load {
                no_wait: false,
                timeout: None,
                retry: false,
                no_fallback: false,
                udev: true,
                target,
                params,
            } if params.is_empty() => FastCommand::LoadUdev(target),
            Command::Modprobe { args } => FastCommand::Modprobe(args),
            _ => return None,
        };
        Some(meaning(FastArgs {
            socket: cli.socket,
            module_dir: cli.module_dir,
            command,
        }))
    }

    /// Every command line the fast path takes means to it what it means to clap.
    #[test]
    fn the_fast_path_reads_what_it_takes_as_clap_does() {
        for args in [
            &["load", "--udev", "pci:v00008086d0000100Esv*sd*bc02sc00i*"][..],
            &["load", "--udev"],
            &["--socket", "/s", "load", "--udev"],
            &["load", "--udev", "--", "e1000"],
            &["load", "e1000", "--udev"],
            &["load", "--udev", ""],
            &["--socket", "/run/x.sock", "load", "--udev", "e1000"],
            &[
                "--socket=/s",
                "load",
                "--module-dir",
                "/lib/modules/6.1",
                "--udev",
                "e1000",
            ],
            &["load", "--udev", "--module-dir=/m", "--", "-odd"],
            &["modprobe", "-q", "--", "e1000"],
            &["modprobe", "-qb", "e1000", "snd"],
            &["--module-dir", "/m", "modprobe", "--quiet", "e1000"],
        ] {
            let taken = fast(args).unwrap_or_else(|| panic!("{args:?} not taken"));
            assert_eq!(Some(meaning(taken)), clap_reading(args), "{args:?}");
        }
    }

    /// Anything else is left to clap: other commands and flags, parameters, help, repeated or
    /// odd values, a missing or second target, text that is not UTF-8.
    #[test]
    fn the_fast_path_leaves_the_rest_to_clap() {
        for args in [
            &["load", "e1000"][..],
            &["load"],
            &["load", "--udev", "e1000", "debug=1"],
            &["load", "--udev", "e1000", "e100"],
            &["load", "--udev", "--", "e1000", "e100"],
            &["load", "--udev", "--timeout", "5", "e1000"],
            &["load", "--udev", "--no-fallback", "e1000"],
            &["load", "--udev", "--udev", "e1000"],
            &["load", "--help", "--udev", "e1000"],
            &["load", "--udev", "-", "e1000"],
            &[
                "--socket", "/a", "--socket", "/b", "load", "--udev", "e1000",
            ],
            &["--socket", "-x", "load", "--udev", "e1000"],
            &["--socket=", "load", "--udev", "e1000"],
            &["--socket"],
            &["status"],
            &["--version"],
            &["modprobe"],
            &["modprobe", "--help"],
            &["modprobe", "-r", "e1000"],
            &[],
        ] {
            assert_eq!(fast(args), None, "{args:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = OsString::from_vec(vec![b'e', 0xff]);
        let args = vec!["load".into(), "--udev".into(), not_utf8];
        assert_eq!(parse_fast(args), None);
    }

    /// Every client command line in `80-drivers.rules` takes the fast path: a flag added there
    /// would send each uevent through clap again.
    #[test]
    fn every_udev_rule_takes_the_fast_path() {
        let rules = include_str!("../../udev/80-drivers.rules");
        let mut seen = 0;
        for run in rules.split("RUN+=\"/usr/bin/modbroker ").skip(1) {
            let line = run.split('"').next().unwrap();
            assert!(
                !line.contains('$'),
                "{line:?}: udev would split and unquote the value"
            );
            let args: Vec<&str> = line.split_whitespace().collect();
            let parsed = fast(&args).unwrap_or_else(|| panic!("{line:?} not taken"));
            assert!(matches!(parsed.command, FastCommand::LoadUdev(_)), "{line}");
            seen += 1;
        }
        assert!(seen >= 7, "{seen} client lines in 80-drivers.rules");
    }

    fn modprobe_args(args: &[&str]) -> Result<ModprobeArgs, String> {
        parse_modprobe_args(args.iter().map(OsString::from).collect())
    }

    /// `-b` in any spelling, and only `-b`, applies the blacklist to names (after `--`, `-b` is
    /// a name).
    #[test]
    fn use_blacklist_comes_from_b_only() {
        for (args, quiet, use_blacklist, name) in [
            (&["-q", "--", "ppdev"][..], true, false, "ppdev"),
            (&["-b", "ppdev"], false, true, "ppdev"),
            (&["-qb", "--", "ppdev"], true, true, "ppdev"),
            (&["--use-blacklist", "ppdev"], false, true, "ppdev"),
            (&["--quiet", "--", "-b"], true, false, "-b"),
        ] {
            let expected = ModprobeArgs {
                quiet,
                use_blacklist,
                names: vec![name.to_string()],
            };
            assert_eq!(modprobe_args(args), Ok(expected), "{args:?}");
        }
    }
}
