//! What the resolver hands the broker: for one target, which modules to load, in which order, how.
//!
//! A [`Plan`] is pure data, built once per target by the libkmod thread (see `resolver`) and then
//! shared read-only (`Arc`) by every request for that target, so the async side never touches
//! libkmod. Each [`ModuleNode`] carries everything needed to load that one module: its file (or
//! builtin / install command), its options from `modprobe.d` and the kernel command line, and the
//! nodes that must be live before it (hard dependencies, in load order) plus its softdeps.
//! [`Plan::show_depends`] renders a plan as `modprobe --show-depends` prints it (what
//! `modbroker resolve --show-depends` prints, and what the differential test compares).

use std::path::PathBuf;
use std::sync::Arc;

/// How one module comes to be in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadMethod {
    /// A module file to hand to `finit_module` (possibly compressed: `.ko.xz`, `.ko.zst`, `.ko.gz`).
    File(PathBuf),
    /// Built into the kernel image (`modules.builtin`): nothing to do, no syscall.
    Builtin,
    /// An `install NAME COMMAND` line from `modprobe.d`: run COMMAND through `/bin/sh` instead of
    /// inserting, exactly as modprobe does. `$CMDLINE_OPTS` is replaced with the module's options.
    /// Never chosen for a module with softdeps: libkmod inserts such a module's file instead.
    Install(String),
    /// Neither a file in `modules.dep` nor built in (an alias left pointing at a module the tree
    /// does not have): loading it fails with `ENOENT`, as modprobe's does, and
    /// `--show-depends` prints nothing for it, as libkmod's dry run does.
    Missing,
}

/// One module, resolved: everything the broker needs to load it without asking libkmod again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleNode {
    /// Canonical name (dashes folded to underscores), as in `/sys/module`.
    pub name: String,
    /// File, builtin, or install command.
    pub method: LoadMethod,
    /// Options from `modprobe.d` and the kernel command line (`name.param=value`), space separated:
    /// those given for the module's name and, when the module was reached through an alias, for
    /// that alias (`options ALIAS ...`), as libkmod gathers them.
    /// Request parameters are appended by the broker for the requested module only.
    pub options: String,
    /// Hard dependencies (from `modules.dep`), in the order they must be loaded: each one's own
    /// dependencies come before it. Loaded through the broker's merge map like any module.
    pub deps: Vec<Arc<ModuleNode>>,
    /// `softdep NAME pre: ...`: loaded before this module; their failures are logged, never fatal.
    pub pre: Vec<Arc<ModuleNode>>,
    /// `softdep NAME post: ...`: loaded after this module; failures logged, never fatal.
    pub post: Vec<Arc<ModuleNode>>,
    /// This module came back on its own dependency or softdep path (a cycle, like Debian's
    /// `softdep ipmi_msghandler post: ipmi_devintf`, which depends on ipmi_msghandler): the
    /// node only stands for the enclosing node of the same name and has no dependencies or
    /// softdeps of its own. Loading it finds that enclosing load under way (the broker's cycle
    /// check, the direct loader's path); [`ModuleNode::probe_list`] enters the enclosing node
    /// there again, as libkmod does, and [`ModuleNode::load_order`] leaves it out.
    pub cycle: bool,
}

/// Whom modprobe.d's `blacklist` lines refuse, as modprobe's `-b` (`--use-blacklist`) chooses.
///
/// libkmod decides per module: one made for an alias (every module an alias lookup finds) is
/// refused when blacklisted whatever the scope (`KMOD_PROBE_APPLY_BLACKLIST_ALIAS_ONLY`, which
/// modprobe always sets); a module asked for by its own name only under
/// [`BlacklistScope::AliasesAndNames`] (`KMOD_PROBE_APPLY_BLACKLIST`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BlacklistScope {
    /// `modprobe NAME`, and the kernel's `request_module()` (`modprobe -q -- NAME`): a
    /// blacklisted module still loads when asked for by its own name.
    #[default]
    Aliases,
    /// `modprobe -b NAME`, and udev's builtin `kmod load`: a blacklisted module is refused
    /// however it is asked for.
    AliasesAndNames,
}

impl BlacklistScope {
    /// The scope for a request that does (`true`) or does not apply the blacklist to names.
    pub fn names_too(blacklist_names: bool) -> Self {
        if blacklist_names {
            BlacklistScope::AliasesAndNames
        } else {
            BlacklistScope::Aliases
        }
    }
}

/// What one target (a module name or a modalias) resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No module matches: normal for udev (most modaliases have no driver module).
    NoMatch,
    /// Every matching module was blacklisted: found through an alias, or asked for by name under
    /// [`BlacklistScope::AliasesAndNames`]. Holds the names of the blacklisted modules.
    Blacklisted(Vec<String>),
    /// Modules to load, each with its own dependency tree, in libkmod's lookup order. An alias
    /// may match several modules; like modprobe and udev's builtin, all of them are loaded, one
    /// after the other in that order.
    Load(Vec<Arc<ModuleNode>>),
}

impl Plan {
    /// Names of the top-level modules this plan loads (empty for no-match).
    pub fn module_names(&self) -> Vec<String> {
        match self {
            Plan::NoMatch => Vec::new(),
            Plan::Blacklisted(names) => names.clone(),
            Plan::Load(nodes) => nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// The lines `modprobe --show-depends TARGET` prints for this plan, each ending in `\n`
    /// (see [`ModuleNode::show_depends_line`]): every matched module's probe list (see
    /// [`ModuleNode::probe_list`]), one module after the other, as modprobe probes them; nothing
    /// for a blacklisted target (modprobe exits 0 silently). `None` for no match, where modprobe
    /// prints an error and exits 1.
    ///
    /// Like `--show-depends` (`KMOD_PROBE_IGNORE_LOADED`), a plan never depends on what the
    /// running kernel has loaded: the resolver reads only the module indexes and modprobe.d
    /// (and `modules.builtin`), and the broker checks `/sys/module` when it loads.
    pub fn show_depends(&self) -> Option<String> {
        match self {
            Plan::NoMatch => None,
            Plan::Blacklisted(_) => Some(String::new()),
            Plan::Load(nodes) => Some(
                nodes
                    .iter()
                    .flat_map(|node| node.probe_list())
                    .map(ModuleNode::show_depends_line)
                    .collect(),
            ),
        }
    }
}

impl ModuleNode {
    /// This module's line in `modprobe --show-depends` output, byte for byte as libkmod's
    /// `print_action` callback prints it: `insmod PATH OPTIONS`, `install COMMAND OPTIONS`
    /// (the command as written, `$CMDLINE_OPTS` unexpanded) or `builtin NAME`; like libkmod's,
    /// the insmod and install lines end in a space.
    pub fn show_depends_line(&self) -> String {
        // libkmod's module_options_concat appends a space to non-empty options (for the
        // request's parameters, none in a dry run).
        let options = match self.options.as_str() {
            "" => String::new(),
            options => format!("{options} "),
        };
        match &self.method {
            LoadMethod::File(path) => format!("insmod {} {options}\n", path.display()),
            LoadMethod::Install(command) => format!("install {command} {options}\n"),
            LoadMethod::Builtin => format!("builtin {}\n", self.name),
            LoadMethod::Missing => String::new(),
        }
    }

    /// libkmod's probe list for this node (`__kmod_module_get_probe_list`), which
    /// `modprobe --show-depends` prints: each hard dependency with its own softdeps around it,
    /// then this module's pre-softdeps, itself, its post-softdeps; a softdep's probe list is
    /// made the same way. Only a module's own probe list is entered once per target: a
    /// dependency is listed again each time a softdep's list brings it (as a cycle does), where
    /// a real load finds it already loaded. [`ModuleNode::load_order`] has no repeats.
    pub fn probe_list(&self) -> Vec<&ModuleNode> {
        let mut walk = ProbeWalk::default();
        walk.probe(self);
        walk.out
    }

    /// A module loaded from a file, with no dependencies, options or softdeps (tests, fallbacks).
    pub fn file(name: &str, path: impl Into<PathBuf>) -> Self {
        ModuleNode {
            name: name.to_string(),
            method: LoadMethod::File(path.into()),
            options: String::new(),
            deps: Vec::new(),
            pre: Vec::new(),
            post: Vec::new(),
            cycle: false,
        }
    }

    /// Every module this node would load, in load order (pre softdeps, deps, itself, post
    /// softdeps), each name once: what `resolve` shows, like `modprobe --show-depends`.
    pub fn load_order(&self) -> Vec<&ModuleNode> {
        let mut out: Vec<&ModuleNode> = Vec::new();
        self.collect_order(&mut out);
        out
    }

    fn collect_order<'a>(&'a self, out: &mut Vec<&'a ModuleNode>) {
        if self.cycle || out.iter().any(|n| n.name == self.name) {
            return;
        }
        // libkmod's order (`__kmod_module_get_probe_list`): the hard dependencies, each with its
        // own softdeps, then this module's pre-softdeps, the module, its post-softdeps.
        for node in self.deps.iter().chain(self.pre.iter()) {
            node.collect_order(out);
        }
        if !out.iter().any(|n| n.name == self.name) {
            out.push(self);
        }
        for node in &self.post {
            node.collect_order(out);
        }
    }
}

/// The walk of [`ModuleNode::probe_list`]: libkmod's `__kmod_module_get_probe_list` (`probe`)
/// and `__kmod_module_fill_softdep` (`with_softdeps`) over plan nodes, a node standing for
/// libkmod's module object.
#[derive(Default)]
struct ProbeWalk<'a> {
    /// Nodes whose probe list was entered (libkmod's `visited`).
    visited: Vec<&'a ModuleNode>,
    /// The nodes being walked, outermost first: the resolver's path when it made the node.
    enclosing: Vec<&'a ModuleNode>,
    out: Vec<&'a ModuleNode>,
}

impl<'a> ProbeWalk<'a> {
    /// The node `node` stands for: itself, or for a cycle, the nearest enclosing one of its name.
    fn real(&self, node: &'a ModuleNode) -> &'a ModuleNode {
        if !node.cycle {
            return node;
        }
        let enclosing = self.enclosing.iter().rev().find(|n| n.name == node.name);
        enclosing.copied().unwrap_or(node)
    }

    fn probe(&mut self, node: &'a ModuleNode) {
        let node = self.real(node);
        if self.visited.iter().any(|v| std::ptr::eq(*v, node)) {
            return;
        }
        self.visited.push(node);
        self.enclosing.push(node);
        for dep in &node.deps {
            self.with_softdeps(dep);
        }
        self.with_softdeps(node);
        self.enclosing.pop();
    }

    fn with_softdeps(&mut self, node: &'a ModuleNode) {
        let real = self.real(node);
        self.enclosing.push(real);
        for soft in &real.pre {
            self.probe(soft);
        }
        self.out.push(node);
        for soft in &real.post {
            self.probe(soft);
        }
        self.enclosing.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(nodes: impl IntoIterator<Item = &'a ModuleNode>) -> Vec<&'a str> {
        nodes.into_iter().map(|n| n.name.as_str()).collect()
    }

    /// `softdep a post: b` where b depends on a: the cycle node under b enters the enclosing a
    /// again in the probe list (as libkmod lists it), never in the load order.
    #[test]
    fn a_cycle_node_stands_for_the_enclosing_module() {
        let back = ModuleNode {
            cycle: true,
            options: "x=1".to_string(),
            ..ModuleNode::file("a", "/m/a.ko")
        };
        let b = ModuleNode {
            deps: vec![Arc::new(back)],
            ..ModuleNode::file("b", "/m/b.ko")
        };
        let a = ModuleNode {
            post: vec![Arc::new(b)],
            options: "x=1".to_string(),
            ..ModuleNode::file("a", "/m/a.ko")
        };
        assert_eq!(names(a.probe_list()), ["a", "a", "b"]);
        assert_eq!(names(a.load_order()), ["a", "b"]);
        let plan = Plan::Load(vec![Arc::new(a)]);
        assert_eq!(
            plan.show_depends().unwrap(),
            "insmod /m/a.ko x=1 \ninsmod /m/a.ko x=1 \ninsmod /m/b.ko \n"
        );
        assert_eq!(Plan::NoMatch.show_depends(), None);
        assert_eq!(
            Plan::Blacklisted(vec!["a".into()]).show_depends().unwrap(),
            ""
        );
    }
}
