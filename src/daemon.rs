//! The daemon's wiring: everything `modbrokerd` does around the service, so that its binary is
//! argument parsing and a dispatch. The configuration file with the command line's flags on top
//! ([`config_layers`]), logging to the journal or stderr ([`logging`]), systemd's `STATUS=` line
//! ([`notify`]), the boot's record kept written ([`record_writer`]), the listening socket and who
//! can reach it ([`socket`]), SIGHUP and index reloads ([`reload`]), serving ([`serve`]) and the
//! modes that run once and exit ([`modes`]).
//!
//! The service asks the resolver through [`Resolve`]; the libkmod resolver thread's
//! [`ResolverHandle`] answers it here, where the daemon puts the two together. The whole module
//! needs the `libkmod` feature: it is the daemon's, and the client never runs it.

pub mod config_layers;
pub mod logging;
pub mod modes;
pub mod notify;
pub mod record_writer;
pub mod reload;
pub mod serve;
pub mod socket;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::kmod::ResolverError;
use crate::plan::{BlacklistScope, Plan};
use crate::resolver::ResolverHandle;
use crate::server::ListenError;
use crate::service::Resolve;

/// Why a mode of the daemon could not run (`modbrokerd` prints it and exits non-zero).
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The module tree's indexes or configuration could not be opened.
    #[error("cannot open the module tree {}", path.display())]
    ModuleTree {
        /// The module tree.
        path: PathBuf,
        /// Why.
        source: ResolverError,
    },
    /// The socket to serve could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// `--run-install`: stdin is not a connection that can be taken over.
    #[error("cannot take the connection on stdin")]
    Stdin(#[source] io::Error),
    /// `--run-install`: the install-command request could not be served.
    #[error("cannot serve the install-command request")]
    InstallRequest(#[source] io::Error),
    /// `--oneshot` without a target.
    #[error("--oneshot needs a TARGET")]
    NoTarget,
    /// `--oneshot`: the result could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `--show-depends`: the targets on stdin could not be read.
    #[error("cannot read targets from stdin")]
    ReadTargets(#[source] io::Error),
    /// `--show-depends`: stdout could not be written.
    #[error(transparent)]
    Stdout(#[from] io::Error),
}

/// The libkmod resolver thread, as the service sees it.
impl Resolve for ResolverHandle {
    fn resolve<'a>(
        &'a self,
        target: &'a str,
        blacklist: BlacklistScope,
    ) -> BoxFuture<'a, Result<Arc<Plan>, String>> {
        Box::pin(async move {
            let plan = self.resolve_with(target, blacklist).await;
            plan.map_err(|e| e.to_string())
        })
    }

    fn reload_count(&self) -> u64 {
        ResolverHandle::reload_count(self)
    }
}
