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
//! [`model`] (the types every layer shares: outcome, failure, method, requester),
//! [`protocol`] (wire types and limits), [`target`] (validation, canonical names), [`plan`] (what
//! the resolver hands the broker), [`resolver`] (libkmod on its own thread, cached), [`kmod`]
//! (the libkmod FFI wrappers), [`install_config`] (a module's `install` line and options),
//! [`broker`] (the merge), [`kernel`] (syscalls and sysfs behind a trait), [`module_file`]
//! (compressed modules), [`service`] (request to reply), [`server`] (sockets, credentials,
//! shutdown), [`daemon`] (`modbrokerd`'s wiring: configuration layers, reload, background
//! loops, its modes), [`config`], [`cli`] (both command lines), [`client`] (blocking client),
//! [`client_cli`] (what the client's commands do), [`wire`] (the small JSON codec of udev's
//! client path), [`direct`] (loading without the daemon), [`install_runner`] (modprobe.d
//! `install` commands run outside the daemon's sandbox), [`record`] (the format of the boot's
//! record of module loading), [`recorder`] (the live record the broker reports to, and its
//! writer), [`report`] (that record read back), [`blame`] and [`plot`] (what `modbroker blame`
//! and `modbroker plot` show of it), [`skip`] (the markers that spare udev a client exec for a
//! uevent that would buy nothing), [`config_watch`] (new module indexes and modprobe.d noticed
//! at once, so that no marker outlives them). [`testing`] holds the fake kernel used by tests.
//!
//! Imports point down only, in the layer order of `docs/architecture.md`, which also says where
//! the code departs from the team's starting picture and why; `make lint` checks the order
//! (`tools/check-layers.py`).
//!
//! Feature `libkmod` (default): the modules that call libkmod ([`kmod`], its wrappers, and the
//! modules that use them: [`resolver`], [`install_config`], [`direct`], the fallback loader,
//! which resolves with it, and [`daemon`], which runs the resolver) and the install runner's
//! configuration check. The client binary is built without it (static-pie, see the Makefile's
//! `build`): it never calls libkmod, and anything that needs it runs `modbrokerd`.
#![warn(missing_docs)]

pub mod blame;
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
#[cfg(feature = "libkmod")]
pub mod install_config;
pub mod install_runner;
pub mod kernel;
#[cfg(feature = "libkmod")]
pub mod kmod;
pub mod model;
pub mod module_file;
pub mod plan;
pub mod plot;
pub mod protocol;
pub mod record;
pub mod recorder;
pub mod report;
#[cfg(feature = "libkmod")]
pub mod resolver;
pub mod server;
pub mod service;
pub mod skip;
pub mod target;
pub mod testing;
pub mod wire;
