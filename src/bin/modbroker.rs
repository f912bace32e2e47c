//! `modbroker`: the client and admin CLI. Exec'd by udev once per uevent, so it stays small and
//! synchronous. Asks the daemon; when no daemon answers, loads directly (unless `--no-fallback`).
//!
//! This file is the entry point, the command line and the dispatch. What each command does, how
//! long `load --udev` and the kernel's autoload helper wait and which exit status they give,
//! is the library's `modbroker::client_cli`.

// The C library calls `main` below directly; std's start-up is skipped (see `main`). Unit tests
// keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use modbroker::cli::{Cli, Command};
use modbroker::client;
use modbroker::client_cli::admin;
use modbroker::client_cli::fast_args::{parse_fast, udev_target, FastCommand};
use modbroker::client_cli::load::{load, load_options, modprobe};
use modbroker::client_cli::EXIT_USAGE;

/// The process's entry point, called by the C library (`#![no_main]`). std's own start-up is
/// skipped: besides what [`start_up`] repeats, it installs a guard for the main thread's stack,
/// which glibc's `pthread_getattr_np` finds by reading and `sscanf`-ing `/proc/self/maps`. That
/// was a quarter of a udev exec's instructions and a third of its time under qemu's TCG, spent
/// on a nicer message for a stack overflow (now a plain SIGSEGV). A panic still exits 101.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    start_up();
    let code = std::panic::catch_unwind(run).unwrap_or(ExitCode::from(101));
    // As std does after `main`: stdout is flushed, so a `print!` without a newline is not lost.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // ExitCode keeps its value private; it compares equal to the u8 it was made from.
    (0..=u8::MAX)
        .find(|&c| ExitCode::from(c) == code)
        .map_or(1, libc::c_int::from)
}

/// What std's start-up does that the client relies on: SIGPIPE ignored (a write to a closed pipe
/// fails with EPIPE, which `blame | head` handles), and descriptors 0, 1 and 2 open (the kernel
/// may start its autoload helper without them): each closed one is opened on `/dev/null`, so that
/// the daemon's socket never becomes stdout.
#[cfg(not(test))]
fn start_up() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: plain system calls on a valid array of three pollfd and a NUL-terminated path.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if libc::poll(fds.as_mut_ptr(), 3, 0) > 0 {
            // open() takes the lowest free descriptor: the closed ones, in order.
            for _ in fds.iter().filter(|fd| fd.revents & libc::POLLNVAL != 0) {
                if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0 {
                    libc::abort();
                }
            }
        }
    }
}

/// The command line's work; its exit status.
#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitCode {
    // Called through a name `modprobe` (the kernel's request_module() helper): no clap, only the
    // modprobe command line; the socket and module tree are the defaults (or $MODBROKER_SOCKET).
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    if Path::new(&argv0).file_name() == Some("modprobe".as_ref()) {
        return modprobe(client::socket_path(None), None, argv.collect());
    }
    // udev's command line, `load --udev TARGET`, and `modprobe ...`, parsed by hand: building
    // clap's parser was a third of a client exec under TCG (README, "Why the client is static").
    if let Some(fast) = parse_fast(argv.collect()) {
        let socket = client::socket_path(fast.socket);
        let module_dir = fast.module_dir.as_deref();
        return match fast.command {
            FastCommand::LoadUdev(target) => {
                let Some(target) = udev_target(target) else {
                    return ExitCode::from(EXIT_USAGE);
                };
                let options = load_options(true, false, None, false, false);
                load(&socket, module_dir, &[target], &[], &options)
            }
            FastCommand::Modprobe(args) => modprobe(socket, fast.module_dir, args),
        };
    }
    let cli = Cli::parse();
    let socket = client::socket_path(cli.socket);
    match cli.command {
        Command::Load {
            no_wait,
            timeout,
            retry,
            no_fallback,
            udev,
            target,
            params,
        } => {
            let target = match target {
                Some(target) => target,
                None if udev && params.is_empty() => match udev_target(None) {
                    Some(target) => target,
                    None => return ExitCode::from(EXIT_USAGE),
                },
                None => {
                    eprintln!("modbroker: load needs a TARGET (only --udev takes $MODALIAS)");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let options = load_options(udev, no_wait, timeout, retry, no_fallback);
            load(
                &socket,
                cli.module_dir.as_deref(),
                &[target],
                &params,
                &options,
            )
        }
        Command::Modprobe { args } => modprobe(socket, cli.module_dir, args),
        Command::Resolve {
            show_depends: true,
            use_blacklist,
            targets,
        } => admin::show_depends(cli.module_dir.as_deref(), &targets, use_blacklist),
        Command::Resolve { targets, .. } => admin::resolve(&socket, targets),
        Command::Status { json } => admin::status(&socket, json),
        Command::Blame { json, dir } => admin::blame(&dir, json),
        Command::Plot { dir } => admin::plot(&dir),
    }
}
