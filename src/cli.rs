//! The command lines of both binaries, as clap definitions in one place, so that the binaries
//! parse them and `modbroker-gen-docs` renders man pages and shell completions from the same
//! source (nothing about the options is written twice by hand).
#![allow(missing_docs)] // clap turns the field docs into --help text; they document the fields.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `modbroker`: the client and admin CLI.
#[derive(Parser)]
#[command(
    name = "modbroker",
    version,
    about = "Ask modbrokerd to load kernel modules (one finit_module per module, however many ask)"
)]
pub struct Cli {
    /// Daemon socket [default: $MODBROKER_SOCKET, else /run/modbroker.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Module tree for direct loading when the daemon is unreachable [default: /lib/modules/$(uname -r)]
    #[arg(long, global = true, value_name = "DIR")]
    pub module_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load a module by name or modalias, with optional parameters
    Load {
        /// Return at once; the daemon loads in the background
        #[arg(long)]
        no_wait: bool,
        /// Stop waiting after SECS (the load itself goes on). With --udev, when SECS pass
        /// without a reply, the target loads directly
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Try again even if the module failed within the failure window
        #[arg(long)]
        retry: bool,
        /// Fail instead of loading directly when the daemon is unreachable
        #[arg(long)]
        no_fallback: bool,
        /// As udev's builtin kmod: refuse a blacklisted module asked for by name too; exit 0
        /// whatever the outcome (one stderr line per failed module); wait while the daemon is
        /// alive (up to half udev's event timeout), load directly once it is silent for 20 s
        #[arg(long)]
        udev: bool,
        /// Module name or modalias; with --udev, none means the uevent's MODALIAS from the
        /// environment, read as is (as udev's builtin `kmod load`)
        target: Option<String>,
        /// Module parameters, NAME=VALUE
        params: Vec<String>,
    },
    /// Show what targets resolve to (modules in load order, options), like modprobe --show-depends
    Resolve {
        /// Print exactly what `modprobe -a --show-depends TARGET...` prints (insmod, install and
        /// builtin lines), resolved here by running `modbrokerd --show-depends`, not by the
        /// daemon; exit 1 if a target matches nothing
        #[arg(long)]
        show_depends: bool,
        /// With --show-depends: refuse a blacklisted module asked for by name too, as
        /// `modprobe -b` and `load --udev`
        #[arg(short = 'b', long, requires = "show_depends")]
        use_blacklist: bool,
        /// Module names or modaliases; with --show-depends, `-` reads them from stdin, one a line
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Show the daemon's counters and in-flight loads
    Status {
        /// Print the raw JSON reply
        #[arg(long)]
        json: bool,
    },
    /// Kernel autoload helper: `modprobe [-q] [-b] [--] NAME...`, each NAME loaded as modprobe
    /// would, with `load --udev`'s bounded wait and fallback (also what runs when this program
    /// is called through a name `modprobe`)
    Modprobe {
        /// -q/--quiet (no stdout lines), -b/--use-blacklist (refuse a blacklisted module asked
        /// for by name too; without it the blacklist applies to aliases only), --, then names
        #[arg(
            value_name = "ARGS",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<OsString>,
    },
    /// What module loading cost this boot, longest load first, like systemd-analyze blame:
    /// totals per boot and phase, then one line per module (load and wait time, requests,
    /// outcome, phase, first requester)
    Blame {
        /// Print the report as JSON (layout: blame-json.md in the documentation, docs/ in the source)
        #[arg(long)]
        json: bool,
        /// Record directory
        #[arg(long, value_name = "DIR", default_value = crate::record::RECORD_DIR)]
        dir: PathBuf,
    },
    /// Write this boot's module loading as an SVG timeline to stdout, like systemd-analyze plot
    /// (`modbroker plot > modules.svg`)
    Plot {
        /// Record directory
        #[arg(long, value_name = "DIR", default_value = crate::record::RECORD_DIR)]
        dir: PathBuf,
    },
}

/// `modbrokerd`: the daemon.
#[derive(Parser, Clone)]
#[command(group = clap::ArgGroup::new("direct").args(["oneshot", "show_depends"]).multiple(false))]
#[command(
    name = "modbrokerd",
    version,
    about = "Kernel module-load broker daemon: one finit_module per module name"
)]
pub struct DaemonArgs {
    /// Configuration file [default: /etc/modbroker/modbroker.toml, if present]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Socket to bind when not socket-activated [default: /run/modbroker.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Module tree [default: /lib/modules/$(uname -r)]
    #[arg(long, value_name = "DIR")]
    pub module_dir: Option<PathBuf>,
    /// error, warn, info, debug, trace (or a tracing filter) [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Where this instance writes its part of the boot's record (modbroker blame, plot)
    #[arg(long, value_name = "DIR", default_value = crate::record::RECORD_DIR)]
    pub record_dir: PathBuf,
    /// Where the markers that spare udev a client exec go (see 80-drivers.rules); an empty
    /// value makes none
    #[arg(long, value_name = "DIR", default_value = crate::skip::SKIP_DIR)]
    pub skip_dir: PathBuf,
    /// Check the configuration file (and its log_level) and exit: 0 if it is usable, 1 with the
    /// errors on stderr if not. Loads nothing, binds nothing
    #[arg(long, conflicts_with_all = ["oneshot", "show_depends"])]
    pub check_config: bool,
    /// Resolve each TARGET (`-`: one a line from stdin) and print what `modprobe -a
    /// --show-depends TARGET...` prints, then exit: 0, or 1 if a target matched nothing or
    /// could not be resolved. Loads nothing, binds nothing
    #[arg(long, conflicts_with_all = ["oneshot", "run_install"], requires = "oneshot_args")]
    pub show_depends: bool,
    /// Load TARGET directly (no daemon, no merging), print its result as JSON, exit: the
    /// client's fallback when no daemon answers
    #[arg(long, requires = "oneshot_args")]
    pub oneshot: bool,
    /// With --oneshot or --show-depends: refuse a blacklisted module asked for by name too
    /// (`load --udev`, `modprobe -b`)
    #[arg(long, requires = "direct")]
    pub blacklist_names: bool,
    /// Serve one install-command request on stdin (a connection accepted by
    /// modbroker-install.socket), run the command if the configuration has it, answer, exit
    #[arg(long, conflicts_with_all = ["oneshot", "check_config"])]
    pub run_install: bool,
    /// With --oneshot: TARGET [PARAM=VALUE...]; with --show-depends: TARGET...
    #[arg(requires = "direct", value_name = "TARGET [PARAM...]")]
    pub oneshot_args: Vec<String>,
}
