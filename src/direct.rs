//! Loading without the daemon: the client's fallback when no daemon answers, so that boot never
//! depends on the daemon being up. Same resolver, same kernel calls and the same `EEXIST` rule as
//! the broker, minus the merging (one process, one request).

use std::path::Path;
use std::time::Instant;

use crate::broker::ModuleAnswer;
use crate::kernel::{attempt_load, join_options, settled_outcome, Kernel, ModuleOutcome};
use crate::plan::{ModuleNode, Plan};
use crate::protocol::{OutcomeKind, TargetResult};
use crate::resolver::KmodResolver;
use crate::service::{bare_result, plan_result};
use crate::target::{validate_params, validate_target};

/// Resolves `target` in `module_dir` and loads it through `kernel`, with `params` for the
/// target's own module(s).
pub fn load_direct(
    kernel: &dyn Kernel,
    module_dir: &Path,
    target: &str,
    params: &[String],
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
    let plan = match KmodResolver::new(module_dir, None).and_then(|mut r| r.resolve(target)) {
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
    if let Some(outcome) = settled_outcome(kernel, node) {
        return outcome;
    }
    path.push(node.name.clone());
    for soft in &node.pre {
        load_tree(kernel, soft, "", path);
    }
    let dep_failure = node
        .deps
        .iter()
        .map(|dep| load_tree(kernel, dep, "", path))
        .find(|outcome| !outcome.is_ok());
    let outcome = dep_failure
        .unwrap_or_else(|| attempt_load(kernel, node, &join_options(&node.options, params)));
    if outcome.is_ok() {
        for soft in &node.post {
            load_tree(kernel, soft, "", path);
        }
    }
    path.pop();
    outcome
}
