//! Loading without the daemon: the client's fallback when no daemon answers, so that boot never
//! depends on the daemon being up. Same resolver, same kernel calls and the same `EEXIST` rule as
//! the broker, minus the merging (one process, one request).
//!
//! Direct loaders of the same module take turns (an exclusive `flock` on the module file around
//! the load call). Without that, N fallback clients of a module whose init fails race in the
//! kernel: each load that waited for another process's failing load of the same name gets
//! `EBUSY` (Linux >= 6.2, and 6.1 stable), whose cause is not passed on, so most clients would
//! end with `EBUSY` instead of the module's own error (found by the VM faults test). Taking turns,
//! each client's load runs the init itself and gets the true errno, or finds the module live.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::broker::ModuleAnswer;
use tracing::debug;

use crate::kernel::{attempt_load, settled_outcome, Kernel, ModuleState};
use crate::model::ModuleOutcome;
use crate::model::OutcomeKind;
use crate::plan::{BlacklistScope, LoadMethod, ModuleNode, Plan};
use crate::protocol::TargetResult;
use crate::resolver::KmodResolver;
use crate::service::{bare_result, plan_result};
use crate::target::{validate_params, validate_target};

/// Resolves `target` in `module_dir` (refusing blacklisted modules as `blacklist` says) and
/// loads it through `kernel`, with `params` for the target's own module(s).
pub fn load_direct(
    kernel: &dyn Kernel,
    module_dir: &Path,
    target: &str,
    params: &[String],
    blacklist: BlacklistScope,
) -> TargetResult {
    let started = Instant::now();
    let refused =
        |outcome, message: String| bare_result(target, outcome, Some(message), Some(started));
    if let Err(err) = validate_target(target) {
        return refused(OutcomeKind::Invalid, err.to_string());
    }
    let params = match validate_params(params) {
        Ok(params) => params,
        Err(err) => return refused(OutcomeKind::Invalid, err.to_string()),
    };
    let plan = match KmodResolver::new(module_dir, None)
        .and_then(|mut r| r.resolve_with(target, blacklist))
    {
        Ok(plan) => plan,
        Err(err) => return refused(OutcomeKind::Failed, format!("cannot resolve: {err}")),
    };
    let answers: Vec<ModuleAnswer> = match plan.as_ref() {
        Plan::Load(nodes) => nodes
            .iter()
            .map(|node| ModuleAnswer {
                outcome: load_tree(kernel, node, &params, &mut Vec::new()),
                merged: false,
            })
            .collect(),
        _ => Vec::new(),
    };
    plan_result(target, &plan, &answers, started)
}

/// Loads `node` after its softdeps and dependencies, like modprobe: dependency failures fail
/// the module, softdep failures do not. `path` holds the modules being loaded above this one,
/// to cut softdep cycles.
pub fn load_tree(
    kernel: &dyn Kernel,
    node: &ModuleNode,
    params: &str,
    path: &mut Vec<String>,
) -> ModuleOutcome {
    if path.contains(&node.name) {
        return ModuleOutcome::AlreadyLoaded;
    }
    wait_while_coming(kernel, &node.name);
    if let Some(outcome) = settled_outcome(kernel, node) {
        return outcome;
    }
    path.push(node.name.clone());
    // libkmod's order: hard dependencies first, then the pre-softdeps, then the module.
    let dep_failure = node
        .deps
        .iter()
        .map(|dep| load_tree(kernel, dep, "", path))
        .find(|outcome| !outcome.is_ok());
    let outcome = dep_failure.unwrap_or_else(|| {
        for soft in &node.pre {
            load_tree(kernel, soft, "", path);
        }
        // Direct loaders of one module (fallback clients while the daemon is down) take turns,
        // and one finding the module live after its turn came needs no syscall.
        let _turn = match &node.method {
            LoadMethod::File(path) => lock_module_file(path),
            _ => None,
        };
        wait_while_coming(kernel, &node.name);
        settled_outcome(kernel, node).unwrap_or_else(|| attempt_load(kernel, node, params))
    });
    if outcome.is_ok() {
        for soft in &node.post {
            load_tree(kernel, soft, "", path);
        }
    }
    path.pop();
    outcome
}

/// How often a direct loader looks again at a module that another loader is initialising: at
/// first soon, then less often (a wedged daemon can leave every uevent's fallback waiting, and
/// 64 pollers every 50 ms cost a whole emulated CPU).
const COMING_POLL_FIRST: Duration = Duration::from_millis(50);
const COMING_POLL_MAX: Duration = Duration::from_millis(500);

/// Waits while `name` is `coming`: another loader (the daemon, even a stopped or restarting
/// one, or udev's builtin) is running its init. A call now would only wait in the kernel for
/// that init and then answer `EEXIST` or `EBUSY`: a duplicate load, which is what the broker
/// exists to prevent. Returns once the module is live (answered without a call) or gone (its
/// init failed: the caller's own attempt then finds the module's true error). Unbounded, as the
/// kernel's own wait for a concurrent load of the same name is.
fn wait_while_coming(kernel: &dyn Kernel, name: &str) {
    let mut poll = COMING_POLL_FIRST;
    while kernel.state(name) == ModuleState::Coming {
        if poll == COMING_POLL_FIRST {
            debug!(module = name, "another loader is initialising it; waiting");
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(COMING_POLL_MAX);
    }
}

/// An exclusive advisory lock on a module file, held for one load attempt; released on drop.
/// Best effort: a file that cannot be opened or locked is loaded unlocked (the load call then
/// reports the real problem).
fn lock_module_file(path: &Path) -> Option<Flock<File>> {
    let mut file = File::open(path).ok()?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Some(lock),
            Err((unlocked, Errno::EINTR)) => file = unlocked,
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeKernel;
    use nix::errno::Errno;
    use std::sync::Arc;
    use std::time::Duration;

    /// The fallback loads in libkmod's order too: hard dependencies, then pre-softdeps.
    #[test]
    fn hard_dependencies_load_before_pre_softdeps() {
        let kernel = FakeKernel::new();
        let mut garp = ModuleNode::file("garp", "/fake/garp.ko");
        garp.deps = vec![Arc::new(ModuleNode::file("llc", "/fake/llc.ko"))];
        garp.pre = vec![Arc::new(ModuleNode::file("dummy", "/fake/dummy.ko"))];
        assert!(load_tree(kernel.as_ref(), &garp, "", &mut Vec::new()).is_ok());
        let order: Vec<String> = kernel.call_log().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["llc", "dummy", "garp"]);
    }

    /// Runs `load_tree` of `m` on a thread while `m` is `coming`, waits until the loader has
    /// looked at its state twice (it is waiting, not calling), then lets `finish` end the other
    /// loader's init; returns the outcome and the load calls made.
    fn load_while_coming(finish: impl FnOnce(&FakeKernel)) -> (ModuleOutcome, usize) {
        let kernel = FakeKernel::new();
        kernel.set_coming("m");
        let node = ModuleNode::file("m", "/fake/m.ko");
        let outcome = std::thread::scope(|scope| {
            let loader = scope.spawn(|| load_tree(kernel.as_ref(), &node, "", &mut Vec::new()));
            kernel.wait_for_state_queries("m", 2);
            assert_eq!(kernel.calls("m"), 0, "no call while another init runs");
            finish(&kernel);
            loader.join().unwrap()
        });
        (outcome, kernel.calls("m"))
    }

    /// A fallback that finds the module `coming` (the daemon's load in progress) waits for it
    /// and answers `already-loaded` without a call of its own.
    #[test]
    fn a_coming_module_is_waited_for_not_loaded_again() {
        let (outcome, calls) = load_while_coming(|kernel| kernel.set_live("m"));
        assert_eq!(outcome, ModuleOutcome::AlreadyLoaded);
        assert_eq!(calls, 0);
    }

    /// When the other loader's init fails (the module goes away), the fallback makes its own
    /// attempt, which finds the module's true result.
    #[test]
    fn a_coming_module_that_goes_away_is_loaded_by_its_own_call() {
        let (outcome, calls) = load_while_coming(|kernel| kernel.remove("m"));
        assert_eq!(outcome, ModuleOutcome::Loaded);
        assert_eq!(calls, 1);
    }

    /// Two direct loaders of one failing module: they take turns (never two load calls at
    /// once, so the kernel has no reason to answer EBUSY) and both get the module's own errno.
    #[test]
    fn direct_loaders_of_one_module_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko");
        std::fs::write(&path, b"module").unwrap();
        let kernel = FakeKernel::new();
        kernel.fail("m", Errno::ENODEV);
        kernel.set_delay("m", Duration::from_millis(200));
        let node = ModuleNode::file("m", &path);
        let outcomes: Vec<ModuleOutcome> = std::thread::scope(|scope| {
            let loaders: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| load_tree(kernel.as_ref(), &node, "", &mut Vec::new())))
                .collect();
            loaders.into_iter().map(|l| l.join().unwrap()).collect()
        });
        for outcome in outcomes {
            let ModuleOutcome::Failed(failure) = outcome else {
                panic!("expected ENODEV, got {outcome:?}")
            };
            assert_eq!(failure.errno, Some(Errno::ENODEV as i32));
        }
        assert_eq!(kernel.calls("m"), 2);
        assert_eq!(kernel.max_concurrent("m"), 1, "the loads took turns");
    }
}
