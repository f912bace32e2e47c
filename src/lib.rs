//! modbroker: a module-load broker. udev asks to load the same kernel module once per device (on
//! a big server, once per CPU); modbroker turns every request for one module name into a single
//! `finit_module` call and hands its true outcome to every caller.
//!
//! # Data flow (one way)
//!
//! ```text
//! udev RUN+= / admin / kernel       modbroker (client, std only) --no daemon--> direct (same library, no merge)
//!         |
//!  Unix socket --> server --> protocol --> service --> target --> resolver --> broker --> kernel
//!  (activation    (accept,   (frames,     (one result  (validate) (libkmod     (merge map,  (finit_module,
//!   or bind)       peer       serde)       per target)             thread,      failure      sysfs state)
//!                  creds)                                          cache)       window)
//!         <------------------------- one reply line per request -------------------------'
//! ```
//!
//! One module per concern, each opening with a doc comment saying what it is for:
//! [`protocol`] (wire types and limits), [`target`] (validation, canonical names), [`plan`] (what
//! the resolver hands the broker), [`resolver`] (libkmod on its own thread, cached), [`broker`]
//! (the merge), [`kernel`] (syscalls and sysfs behind a trait), [`module_file`] (compressed modules), [`service`] (request to reply),
//! [`server`] (sockets, credentials, shutdown), [`daemon`] (`modbrokerd`'s wiring: configuration
//! layers, reload, background loops, its modes), [`config`], [`cli`] (both command lines),
//! [`client`] (blocking client), [`client_cli`] (what the client's commands do), [`wire`]
//! (the small JSON codec of udev's client path) and
//! [`direct`] (loading without the daemon), [`install_runner`] (modprobe.d `install` commands run
//! outside the daemon's sandbox), [`record`] (the boot's record of module loading), [`report`]
//! (that record as `modbroker blame` and `modbroker plot` show it), [`skip`] (the markers that
//! spare udev a client exec for a uevent that would buy nothing), [`config_watch`] (new module
//! indexes and modprobe.d noticed at once, so that no marker outlives them). [`testing`] holds the fake kernel used by tests.
//!
//! Differences from the team's starting picture (a server → protocol → target → resolver →
//! broker → kernel line; the picture above is the one the code follows): `service` was added between the
//! server and the broker so that the server knows only sockets and the broker only modules (the
//! per-target bookkeeping — validation, resolution, folding several modules into one result —
//! needed a home of its own); `plan` holds the resolver's output types so the broker depends on
//! plain data, not on libkmod; `direct` is the fallback loader shared by the client.
//!
//! Feature `libkmod` (default): the modules that call libkmod ([`resolver`], and [`direct`], the
//! fallback loader, which resolves with it, and [`daemon`], which runs the resolver) and the
//! install runner's configuration check. The client binary is built without it (static-pie, see
//! the Makefile's `build`): it never calls libkmod, and anything that needs it runs `modbrokerd`.
#![warn(missing_docs)]

pub mod broker;
pub mod cli;
pub mod client;
pub mod client_cli;
pub mod config;
pub mod config_watch;
#[cfg(feature = "libkmod")]
pub mod daemon;
#[cfg(feature = "libkmod")]
pub mod direct;
pub mod install_runner;
pub mod kernel;
pub mod module_file;
pub mod plan;
pub mod protocol;
pub mod record;
pub mod report;
#[cfg(feature = "libkmod")]
pub mod resolver;
pub mod server;
pub mod service;
pub mod skip;
pub mod target;
pub mod testing;
pub mod wire;
