//! What the client `modbroker` does once its command line is read: load and the kernel's
//! autoload helper ([`load`]), the command lines udev and the kernel run, read without clap
//! ([`fast_args`]), the lines printed per target ([`result_line`]), and the admin commands
//! `resolve`, `status`, `blame` and `plot` ([`admin`]). The binary keeps `main`, clap and the
//! dispatch. Nothing here needs the `libkmod` feature: the client is built without it.
//!
//! `load --udev` and `modprobe` wait as long as the daemon is alive and working on their load
//! (it sends a progress line every 2 s), up to half udev's event timeout (90 s by default:
//! a slow init, say a driver waiting for firmware, is waited for, as udev's builtin waits for
//! `finit_module`). A daemon silent for the liveness bound (20 s) is taken for wedged: the client
//! loads directly, and leaves a marker so that later clients of this boot load directly at once
//! until the daemon serves again. Any reply they cannot use (an error from a daemon older or
//! newer than they are) also sends them to the direct load, which never calls `finit_module`
//! for a module another loader is still initialising. With `--timeout SECS` they give the
//! daemon that long instead, then load directly. A plain `load` waits as long as it takes unless
//! `--timeout` is given, and a timeout there is an error, never a fallback.
//!
//! Exit status: 0 when every target ended loaded, already-loaded, builtin, no-match or queued;
//! 1 when any target failed (one stderr line each); 2 for usage errors; 3 when the daemon refused
//! the request (permission denied, malformed) or could not be talked to; 4 when the daemon is
//! unreachable and `--no-fallback` was given; 5 when `blame` or `plot` find no record.
//!
//! With `--udev` the exit status is 0 for every outcome (2 for usage errors), as udev's builtin
//! `kmod load` ignores every load error (`(void) module_load_and_warn(...)`). A failed target
//! still gets its one stderr line (udev logs a RUN program's output), but no non-zero exit for
//! udev to warn about once per event: a CPU modalias comes once per CPU, and a module that
//! cannot load there (kvm_intel's EOPNOTSUPP without VT-x) would otherwise warn on every one.
//!
//! Kernel autoload helper: run through a name `modprobe` (a symlink; the kernel's
//! `/proc/sys/kernel/modprobe` can point at it) or as `modbroker modprobe`, it takes the command
//! line the kernel's `request_module()` uses, `modprobe -q -- NAME`, and loads each NAME as
//! `modbroker load --udev NAME` would, but reports failure to the kernel: exit 0 when every NAME
//! ended as `load` counts success or blacklisted or ENODEV, else 1.
//!
//! Blacklist, as in the tools replaced: `load --udev` refuses a blacklisted module asked for by
//! name too (udev's builtin loads with `KMOD_PROBE_APPLY_BLACKLIST`); a plain `load` and the
//! helper (the kernel runs `modprobe -q -- NAME`, without `-b`) refuse blacklisted modules found
//! through an alias only, as modprobe does, and `modprobe -b` refuses names too.

pub mod admin;
pub mod fast_args;
pub mod load;
pub mod result_line;

/// Some target failed (one stderr line each).
pub const EXIT_FAILED: u8 = 1;
/// A usage error.
pub const EXIT_USAGE: u8 = 2;
/// The daemon refused the request or could not be talked to.
pub const EXIT_REFUSED: u8 = 3;
/// The daemon is unreachable and `--no-fallback` was given.
pub const EXIT_UNREACHABLE: u8 = 4;
/// `blame` and `plot`: no record directory, or no usable file in it.
pub const EXIT_NO_RECORD: u8 = 5;
