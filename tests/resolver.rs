//! Resolver tests against real module trees: real Debian `.ko` files copied from the host's
//! `/lib/modules/<KVER>` into a tempdir, indexed there with `depmod -b`, and a test-made
//! `modprobe.d`. Needs `linux-image-amd64` and `kmod` installed; fails (never skips) without.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use modbroker::kmod::ResolverError;
use modbroker::plan::{BlacklistScope, LoadMethod, ModuleNode, Plan};
use modbroker::resolver::{KmodResolver, ResolverHandle};
use modbroker::target::validate_target;

/// A real e1000e alias line (`alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e`), made concrete.
const E1000E_MODALIAS: &str = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00";
const UNKNOWN_MODALIAS: &str = "pci:v0000FFFFd0000FFFFsv00000000sd00000000bc00sc00i00";

/// Modules copied into every fixture (each is in the host's `modules.dep`).
/// garp -> stp -> llc and gnss-ubx -> gnss-serial -> gnss are dependency chains.
const MODULES: &[&str] = &[
    "e1000e",
    "dummy",
    "nlmon",
    "garp",
    "stp",
    "llc",
    "gnss-ubx",
    "gnss-serial",
    "gnss",
];

/// A module tree in a tempdir: `<root>/lib/modules/<kver>` plus a `modprobe.d` directory.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    kver: String,
    host_dir: PathBuf,
    conf_dir: PathBuf,
}

impl Fixture {
    /// The standard tree with `conf` as `modprobe.d/test.conf`.
    fn new(conf: &str) -> Self {
        let kver = host_kver();
        let host_dir = Path::new("/lib/modules").join(&kver);
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let conf_dir = root.join("modprobe.d");
        fs::create_dir_all(&conf_dir).unwrap();
        let fx = Fixture {
            _tmp: tmp,
            root,
            kver,
            host_dir,
            conf_dir,
        };
        fs::create_dir_all(fx.module_dir()).unwrap();
        for file in ["modules.builtin", "modules.builtin.modinfo"] {
            fs::copy(fx.host_dir.join(file), fx.module_dir().join(file))
                .unwrap_or_else(|e| panic!("copy {file} from {}: {e}", fx.host_dir.display()));
        }
        for m in MODULES {
            fx.copy_module(m);
        }
        fx.write_conf("test.conf", conf);
        fx.depmod();
        fx
    }

    fn module_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }

    fn resolver(&self) -> KmodResolver {
        KmodResolver::new(
            &self.module_dir(),
            Some(std::slice::from_ref(&self.conf_dir)),
        )
        .expect("resolver")
    }

    /// Copies module `name` from the host tree, at the same relative path.
    fn copy_module(&self, name: &str) {
        let rel = host_module_path(&self.host_dir, name);
        let dest = self.module_dir().join(&rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(self.host_dir.join(&rel), &dest).expect("copy module");
    }

    fn write_conf(&self, file: &str, content: &str) {
        fs::write(self.conf_dir.join(file), content).unwrap();
    }

    /// What the host's `modprobe --show-depends [extra...] target` prints for this tree and
    /// `modprobe.d` (`-d`, `-S`, `-C`); `None` when modprobe finds no module for `target`.
    fn modprobe_show_depends(&self, extra: &[&str], target: &str) -> Option<String> {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&self.root)
            .arg("-S")
            .arg(&self.kver)
            .arg("-C")
            .arg(&self.conf_dir)
            .args(extra)
            .arg("--show-depends")
            .arg("--")
            .arg(target)
            .output()
            .expect("run modprobe (package kmod)");
        if !out.status.success() {
            return None;
        }
        Some(String::from_utf8(out.stdout).expect("modprobe prints UTF-8"))
    }

    /// Resolves `target` with a resolver made now (so it reads the current `modprobe.d`) and
    /// checks the plan against `modprobe --show-depends` on the same tree; returns the lines.
    fn same_as_modprobe(&self, target: &str) -> Vec<String> {
        let plan = self.resolver().resolve(target).unwrap();
        assert_show_depends(&plan, self.modprobe_show_depends(&[], target), target)
    }

    fn depmod(&self) {
        let out = Command::new("depmod")
            .arg("-b")
            .arg(&self.root)
            .arg(&self.kver)
            .output()
            .expect("run depmod (package kmod)");
        assert!(out.status.success(), "depmod failed: {out:?}");
    }
}

/// The Debian kernel version under /lib/modules that has real modules.
fn host_kver() -> String {
    let entries = fs::read_dir("/lib/modules").unwrap_or_else(|e| {
        panic!("/lib/modules unreadable ({e}): install linux-image-amd64 to run these tests")
    });
    let mut kvers: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kernel").is_dir() && e.path().join("modules.dep").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kvers.sort();
    kvers.pop().expect(
        "no /lib/modules/<KVER> with kernel/ and modules.dep: install linux-image-amd64 \
         to run these tests",
    )
}

/// Path of module `name` relative to the host's module dir, from its modules.dep.
fn host_module_path(host_dir: &Path, name: &str) -> String {
    let dep = fs::read_to_string(host_dir.join("modules.dep")).expect("host modules.dep");
    let file = format!("/{name}.ko");
    dep.lines()
        .filter_map(|l| l.split(':').next())
        .find(|p| p.ends_with(&file))
        .unwrap_or_else(|| panic!("module {name} not in {}/modules.dep", host_dir.display()))
        .to_string()
}

/// Asserts that `plan` shows, byte for byte, as modprobe showed `target` (the library's
/// rendering, `Plan::show_depends`, that `modbroker resolve --show-depends` prints); returns
/// modprobe's lines with trailing spaces trimmed.
fn assert_show_depends(plan: &Plan, modprobe: Option<String>, target: &str) -> Vec<String> {
    assert_eq!(
        plan.show_depends(),
        modprobe,
        "{target}: ours, then modprobe's"
    );
    modprobe
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// The fixture's `modprobe --show-depends` line for module `name` loaded from its file.
fn insmod(fx: &Fixture, name: &str, options: &str) -> String {
    let path = fx.module_dir().join(host_module_path(&fx.host_dir, name));
    format!("insmod {} {options}", path.display())
        .trim_end()
        .to_string()
}

fn load(plan: &Plan) -> &[Arc<ModuleNode>] {
    match plan {
        Plan::Load(nodes) => nodes,
        other => panic!("expected Plan::Load, got {other:?}"),
    }
}

/// The single top-level node of a Load plan.
fn single(plan: &Plan) -> &ModuleNode {
    let nodes = load(plan);
    assert_eq!(nodes.len(), 1, "{plan:?}");
    &nodes[0]
}

fn names(nodes: &[Arc<ModuleNode>]) -> Vec<&str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

fn order(node: &ModuleNode) -> Vec<&str> {
    node.load_order().iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn name_lookup_gives_file() {
    let fx = Fixture::new("");
    let plan = fx.resolver().resolve("e1000e").unwrap();
    let node = single(&plan);
    assert_eq!(node.name, "e1000e");
    let path = fx
        .module_dir()
        .join(host_module_path(&fx.host_dir, "e1000e"));
    assert_eq!(node.method, LoadMethod::File(path));
    assert!(node.deps.is_empty() && node.pre.is_empty() && node.post.is_empty());
    assert_eq!(node.options, "");
}

#[test]
fn dashes_and_underscores_name_the_same_module() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    for target in ["gnss-ubx", "gnss_ubx"] {
        let plan = r.resolve(target).unwrap();
        assert_eq!(single(&plan).name, "gnss_ubx", "target {target}");
    }
}

#[test]
fn dependencies_come_in_load_order() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    let garp = r.resolve("garp").unwrap();
    let garp = single(&garp);
    assert_eq!(names(&garp.deps), ["llc", "stp"]);
    assert_eq!(names(&garp.deps[1].deps), ["llc"]);
    assert_eq!(order(garp), ["llc", "stp", "garp"]);
    // Memoized: the llc under garp and the llc under stp are one node.
    assert!(Arc::ptr_eq(&garp.deps[0], &garp.deps[1].deps[0]));

    let ubx = r.resolve("gnss-ubx").unwrap();
    assert_eq!(order(single(&ubx)), ["gnss", "gnss_serial", "gnss_ubx"]);
}

#[test]
fn modalias_lookup() {
    let fx = Fixture::new("");
    let alias = fs::read_to_string(fx.host_dir.join("modules.alias")).unwrap();
    assert!(alias.contains("alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e"));
    let plan = fx.resolver().resolve(E1000E_MODALIAS).unwrap();
    assert_eq!(single(&plan).name, "e1000e");
}

#[test]
fn builtin_module() {
    let fx = Fixture::new("");
    let builtin = fs::read_to_string(fx.module_dir().join("modules.builtin")).unwrap();
    assert!(builtin.lines().any(|l| l == "kernel/mm/zswap.ko"));
    let plan = fx.resolver().resolve("zswap").unwrap();
    let node = single(&plan);
    assert_eq!(node.name, "zswap");
    assert_eq!(node.method, LoadMethod::Builtin);
}

#[test]
fn unknown_targets_are_no_match() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    for target in [UNKNOWN_MODALIAS, "no-such-module", "veth"] {
        assert_eq!(
            *r.resolve(target).unwrap(),
            Plan::NoMatch,
            "target {target}"
        );
    }
}

/// An alias left pointing at a module the tree does not have (kmod's `alias-to-none`): libkmod
/// finds the module, without a file; modprobe's dry run prints nothing for it (and a real
/// modprobe fails with ENOENT). Not a no-match.
#[test]
fn alias_to_a_module_without_a_file_is_missing_not_no_match() {
    let fx = Fixture::new("alias mb-none mb_not_in_tree\n");
    let mut r = fx.resolver();
    let plan = r.resolve("mb-none").unwrap();
    let node = single(&plan);
    assert_eq!(node.name, "mb_not_in_tree");
    assert_eq!(node.method, LoadMethod::Missing);
    assert!(fx.same_as_modprobe("mb-none").is_empty());
}

#[test]
fn blacklist_applies_to_aliases_only() {
    let fx = Fixture::new("blacklist e1000e\nblacklist dummy\n");
    let mut r = fx.resolver();
    let by_alias = r.resolve(E1000E_MODALIAS).unwrap();
    assert_eq!(*by_alias, Plan::Blacklisted(vec!["e1000e".to_string()]));
    let by_alias = r.resolve("rtnl-link-dummy").unwrap();
    assert_eq!(*by_alias, Plan::Blacklisted(vec!["dummy".to_string()]));
    assert_eq!(single(&r.resolve("e1000e").unwrap()).name, "e1000e");
    assert_eq!(single(&r.resolve("dummy").unwrap()).name, "dummy");
    // Not blacklisted: aliases still resolve.
    assert_eq!(single(&r.resolve("rtnl-link-nlmon").unwrap()).name, "nlmon");
}

#[test]
fn modprobe_d_options() {
    let fx = Fixture::new("options e1000e IntMode=1 debug=2\n");
    let plan = fx.resolver().resolve(E1000E_MODALIAS).unwrap();
    assert_eq!(single(&plan).options, "IntMode=1 debug=2");
}

#[test]
fn install_command() {
    let fx = Fixture::new("install dummy /bin/false\n");
    let plan = fx.resolver().resolve("dummy").unwrap();
    let node = single(&plan);
    assert_eq!(node.method, LoadMethod::Install("/bin/false".to_string()));
}

#[test]
fn softdeps_pre_and_post_resolve_aliases() {
    let fx = Fixture::new("softdep garp pre: dummy post: rtnl-link-nlmon\n");
    let plan = fx.resolver().resolve("garp").unwrap();
    let garp = single(&plan);
    assert_eq!(names(&garp.pre), ["dummy"]);
    assert_eq!(names(&garp.post), ["nlmon"]);
    // As libkmod: garp's hard dependencies, then its pre-softdep, garp, its post-softdep.
    assert_eq!(order(garp), ["llc", "stp", "dummy", "garp", "nlmon"]);
    fx.same_as_modprobe("garp");
}

#[test]
fn softdep_cycles_are_cut_per_target() {
    let fx = Fixture::new("softdep dummy pre: nlmon\nsoftdep nlmon pre: dummy\n");
    let mut r = fx.resolver();
    let dummy = r.resolve("dummy").unwrap();
    let dummy = single(&dummy);
    assert_eq!(names(&dummy.pre), ["nlmon"]);
    // Where the cycle closes, a childless node stands for the enclosing dummy.
    let back = &dummy.pre[0].pre;
    assert_eq!(names(back), ["dummy"]);
    assert!(back[0].cycle && back[0].deps.is_empty() && back[0].pre.is_empty());
    assert_eq!(order(dummy), ["nlmon", "dummy"]);
    // Resolving the other end of the cycle afterwards must not reuse the cut tree.
    let nlmon = r.resolve("nlmon").unwrap();
    assert_eq!(order(single(&nlmon)), ["dummy", "nlmon"]);
    for target in ["dummy", "nlmon"] {
        fx.same_as_modprobe(target);
    }
}

/// A softdep that leads back to a module through a hard dependency (Debian's own
/// `softdep ipmi_msghandler post: ipmi_devintf`, which depends on ipmi_msghandler, and `vfio`):
/// libkmod's probe list, which `modprobe --show-depends` prints, has the module again where the
/// softdep's dependencies bring it back. The resolver cut the cycle there, so `resolve
/// --show-depends` listed it once.
#[test]
fn a_softdep_back_through_a_dependency_lists_the_module_again_as_modprobe() {
    let fx = Fixture::new("softdep llc post: garp\n");
    let mut r = fx.resolver();
    let llc = r.resolve("llc").unwrap();
    let llc = single(&llc);
    assert_eq!(order(llc), ["llc", "stp", "garp"]);
    let lines = fx.same_as_modprobe("llc");
    let listed = ["llc", "llc", "stp", "garp"].map(|m| insmod(&fx, m, ""));
    assert_eq!(lines, listed);
    let shown: Vec<&str> = llc.probe_list().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(shown, ["llc", "llc", "stp", "garp"]);
    for target in ["garp", "stp"] {
        fx.same_as_modprobe(target);
    }
}

/// `--show-depends` lines are modprobe's byte for byte: `insmod PATH OPTIONS ` and `install
/// COMMAND OPTIONS ` end in a space (libkmod's option concatenation), `builtin NAME` does not.
#[test]
fn show_depends_lines_are_modprobes_byte_for_byte() {
    let fx =
        Fixture::new("options dummy numdummies=2\ninstall nlmon /bin/true\noptions nlmon x=1\n");
    let mut r = fx.resolver();
    let cases = [
        (
            "dummy",
            format!("{} numdummies=2 \n", insmod(&fx, "dummy", "")),
        ),
        ("e1000e", format!("{} \n", insmod(&fx, "e1000e", ""))),
        ("nlmon", "install /bin/true x=1 \n".to_string()),
        ("zswap", "builtin zswap\n".to_string()),
    ];
    for (target, expected) in cases {
        let plan = r.resolve(target).unwrap();
        assert_eq!(plan.show_depends(), Some(expected), "{target}");
        assert_show_depends(&plan, fx.modprobe_show_depends(&[], target), target);
    }
    assert_eq!(r.resolve("no-such-module").unwrap().show_depends(), None);
}

#[test]
fn repeated_target_returns_the_same_plan() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    let a = r.resolve(E1000E_MODALIAS).unwrap();
    let b = r.resolve(E1000E_MODALIAS).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    // Another target for the same module shares the node.
    let by_name = r.resolve("e1000e").unwrap();
    assert!(Arc::ptr_eq(&load(&a)[0], &load(&by_name)[0]));
}

#[test]
fn reload_picks_up_new_modules() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    assert_eq!(*r.resolve("veth").unwrap(), Plan::NoMatch);
    fx.copy_module("veth");
    fx.depmod();
    r.reload().unwrap();
    assert_eq!(single(&r.resolve("veth").unwrap()).name, "veth");
}

#[test]
fn index_changes_are_picked_up_automatically() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    r.set_validate_interval(Duration::ZERO);
    let before = r.resolve("dummy").unwrap();
    assert_eq!(*r.resolve("rtnl-link-veth").unwrap(), Plan::NoMatch);
    fx.copy_module("veth");
    fx.depmod();
    assert_eq!(single(&r.resolve("rtnl-link-veth").unwrap()).name, "veth");
    // Caches were dropped: a fresh plan for an old target.
    assert!(!Arc::ptr_eq(&before, &r.resolve("dummy").unwrap()));
}

#[test]
fn config_changes_are_picked_up_automatically() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    r.set_validate_interval(Duration::ZERO);
    assert_eq!(single(&r.resolve("rtnl-link-dummy").unwrap()).name, "dummy");
    fx.write_conf("blacklist.conf", "blacklist dummy\n");
    let plan = r.resolve("rtnl-link-dummy").unwrap();
    assert_eq!(*plan, Plan::Blacklisted(vec!["dummy".to_string()]));
}

#[test]
fn rate_limit_keeps_serving_the_cache() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    r.set_validate_interval(Duration::from_secs(3600));
    let before = r.resolve("dummy").unwrap();
    fx.write_conf("blacklist.conf", "blacklist dummy\n");
    assert!(Arc::ptr_eq(&before, &r.resolve("dummy").unwrap()));
}

#[test]
fn errors() {
    let fx = Fixture::new("");
    let err = fx.resolver().resolve("bad\0target").unwrap_err();
    assert!(
        matches!(err, ResolverError::Lookup { errno, .. } if errno == libc::EINVAL),
        "{err}"
    );
    let missing = fx.root.join("missing");
    let err = KmodResolver::new(&missing, None).expect_err("must fail");
    assert!(
        matches!(&err, ResolverError::Context { module_dir, .. } if *module_dir == missing),
        "{err}"
    );
}

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_serves_concurrent_requests() {
    assert_send_sync_clone::<ResolverHandle>();
    let fx = Fixture::new("");
    let handle = ResolverHandle::spawn(fx.module_dir(), Some(vec![fx.conf_dir.clone()])).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.resolve(E1000E_MODALIAS).await.unwrap() })
        })
        .collect();
    let mut plans = Vec::new();
    for t in tasks {
        plans.push(t.await.unwrap());
    }
    assert!(plans.iter().all(|p| Arc::ptr_eq(p, &plans[0])));
    assert_eq!(single(&plans[0]).name, "e1000e");

    assert_eq!(*handle.resolve("veth").await.unwrap(), Plan::NoMatch);
    fx.copy_module("veth");
    fx.depmod();
    handle.reload().await.unwrap();
    assert_eq!(single(&handle.resolve("veth").await.unwrap()).name, "veth");
}

#[tokio::test]
async fn handle_reports_construction_errors() {
    let err =
        ResolverHandle::spawn(PathBuf::from("/nonexistent/modules"), None).expect_err("must fail");
    assert!(matches!(err, ResolverError::Context { .. }), "{err}");
}

#[test]
fn alias_matching_several_modules_drops_only_the_blacklisted() {
    let fx = Fixture::new("alias testnet dummy\nalias testnet nlmon\nblacklist dummy\n");
    let plan = fx.resolver().resolve("testnet").unwrap();
    assert_eq!(names(load(&plan)), ["nlmon"]);
}

#[test]
fn dependency_nodes_carry_their_own_configuration() {
    let fx = Fixture::new("options stp foo=1\ninstall llc /bin/true\n");
    let plan = fx.resolver().resolve("garp").unwrap();
    let garp = single(&plan);
    let stp = &garp.deps[1];
    assert_eq!((stp.name.as_str(), stp.options.as_str()), ("stp", "foo=1"));
    assert_eq!(
        stp.deps[0].method,
        LoadMethod::Install("/bin/true".to_string())
    );
}

/// A VMware guest's `/sys/class/dmi/id/modalias` (modprobe: vmw_balloon, after vmw_vmci).
const VMWARE_DMI: &str = "dmi:bvnPhoenixTechnologiesLTD:bvr6.00:bd11/12/2020:br4.6:\
    svnVMware,Inc.:pnVMwareVirtualPlatform:pvrNone:rvnIntelCorporation:\
    rn440BXDesktopReferencePlatform:rvrNone:cvnNoEnum:ct1:cvrN/A:sku:";
/// A Dell PowerEdge R640's (modprobe: dcdbas).
const DELL_DMI: &str = "dmi:bvnDellInc.:bvr2.1.5:bd01/15/2019:br2.1:svnDellInc.:\
    pnPowerEdgeR640:pvr:rvnDellInc.:rn0W23H8:rvrA00:cvnDellInc.:ct23:cvr:sku:";

/// `target` through the same gate as a request (`validate_target`), then resolved.
fn resolve_valid(r: &mut KmodResolver, target: &str) -> Arc<Plan> {
    assert_eq!(validate_target(target), Ok(target), "refused before lookup");
    r.resolve(target).unwrap()
}

/// DMI modaliases carry the BIOS date (`bd11/12/2020`) and vendor strings with slashes
/// (`cvrN/A`); they were refused as paths before reaching libkmod. vmw_balloon's own
/// `dmi:*:svnVMware*:*` alias, indexed by depmod, and a modprobe.d alias with a slash in it.
#[test]
fn dmi_modalias_with_slashes_resolves() {
    let fx = Fixture::new("alias dmi:*:bd01/15/2019:*:svnDellInc.:* dummy\n");
    fx.copy_module("vmw_vmci");
    fx.copy_module("vmw_balloon");
    fx.depmod();
    let mut r = fx.resolver();
    let plan = resolve_valid(&mut r, VMWARE_DMI);
    let balloon = single(&plan);
    assert_eq!(balloon.name, "vmw_balloon");
    assert_eq!(order(balloon), ["vmw_vmci", "vmw_balloon"]);
    assert_eq!(single(&resolve_valid(&mut r, DELL_DMI)).name, "dummy");
}

/// A modalias may hold `/` and `..`, but it is only ever looked up as an alias: nothing in the
/// tree is reached through it as a path, whatever it spells.
#[test]
fn path_like_modaliases_name_no_file() {
    let fx = Fixture::new("");
    let mut r = fx.resolver();
    let dummy = host_module_path(&fx.host_dir, "dummy");
    let absolute = fx.module_dir().join(&dummy);
    for target in [
        format!("x:../../{dummy}"),
        format!("dmi:{}", absolute.display()),
        format!("platform:{}", dummy.trim_end_matches(".ko")),
        "platform:../dummy".to_string(),
        "dummy:/".to_string(),
    ] {
        assert_eq!(*resolve_valid(&mut r, &target), Plan::NoMatch, "{target}");
    }
}

/// The modprobe.d-free resolver on the host's whole Debian tree (not copied).
fn debian_resolver(conf: &tempfile::TempDir) -> (KmodResolver, PathBuf) {
    let dir = Path::new("/lib/modules").join(host_kver());
    let resolver = KmodResolver::new(&dir, Some(&[conf.path().to_path_buf()])).unwrap();
    (resolver, dir)
}

/// `(pattern, module)` for every `alias dmi:...` line of the tree's modules.alias.
fn dmi_aliases(dir: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(dir.join("modules.alias")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("alias "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(pattern, _)| pattern.starts_with("dmi:"))
        .map(|(pattern, module)| (pattern.to_string(), module.to_string()))
        .collect()
}

/// Whether `plan` loads `module` (at the top or as a dependency).
fn loads(plan: &Plan, module: &str) -> bool {
    load(plan)
        .iter()
        .any(|n| n.load_order().iter().any(|m| m.name == module))
}

/// Every module a `dmi:` alias of Debian's tree names (46 lines, 10 modules in Debian 12's 6.1)
/// resolves from a whole modalias as the machine's firmware gives it, slashes and all.
#[test]
fn every_dmi_alias_module_of_the_debian_tree_resolves_from_a_real_modalias() {
    let real: &[(&str, &[&str])] = &[
        (DELL_DMI, &["dcdbas"]),
        (VMWARE_DMI, &["vmw_balloon", "vmw_vmci"]),
        (
            "dmi:bvnIBM:bvr-[D6E150AUS-1.10]-:bd05/19/2008:svnIBM:\
             pnIBMSystemx3550-[7978AC1]-:pvr:rvnIBM:rn00D4059:rvr:cvnIBM:ct23:cvr:",
            &["ics932s401", "ibmaem", "ibmpex"],
        ),
        (
            "dmi:bvnIBM:bvr-[A3E157AUS-1.14]-:bd08/11/2011:svnIBM:\
             pnIBM3850M2/x3950M2-[72333RU]-:pvr1.0:rvnIBM:rn00D4062:rvr:cvnIBM:ct23:cvrN/A:",
            &["ibmaem"],
        ),
        (
            "dmi:bvnFUJITSU:bvr1.14:bd03/23/2007:svnFUJITSU:pnLifeBookS7110:pvr:\
             rvnFUJITSU:rnFJNB19C:rvrS1:cvn:ct10:cvr:",
            &["apanel"],
        ),
        (
            "dmi:bvnAcer:bvrv1.3308:bd12/09/2008:svnAcer:pnAspire1810TZ:pvrv1.3308:\
             rvnAcer:rnJM11-MS:rvrBase/Board/Version:cvnAcer:ct1:cvrN/A:sku:",
            &["acerhdf"],
        ),
        (
            "dmi:bvnIBM:bvrIMET61WW(2.19):bd07/08/2004:svnIBM:pn2373G1U:pvrThinkPadT42:\
             rvnIBM:rn2373G1U:rvrNotAvailable:cvnIBM:ct10:cvrNotAvailable:",
            &["thinkpad_acpi"],
        ),
        (
            "dmi:bvnSIEMENSAG:bvrV25.02.05:bd03/20/2019:svnSIEMENSAG:pnSIMATICIPC427E:\
             pvr:rvnSIEMENSAG:rnA5E31233588:rvr:cvnSIEMENSAG:ct3:cvr:sku:",
            &["simatic_ipc"],
        ),
        (
            "dmi:bvnMicrosoftCorporation:bvr124.2706.768:bd04/22/2019:\
             svnMicrosoftCorporation:pnSurfacePro6:pvr124000000000000000000000D0B09F1C03P38:\
             rvnMicrosoftCorporation:rnSurfacePro6:rvr:cvnMicrosoftCorporation:ct9:cvr:\
             skuSurface_Pro_6_1796_Commercial:",
            &["surface_gpe"],
        ),
    ];
    let conf = tempfile::tempdir().unwrap();
    let (mut r, dir) = debian_resolver(&conf);
    let mut reached = std::collections::BTreeSet::new();
    for (modalias, modules) in real {
        assert!(modalias.contains('/'), "{modalias}");
        let plan = resolve_valid(&mut r, modalias);
        for module in *modules {
            assert!(loads(&plan, module), "{modalias} -> {plan:?}: no {module}");
            reached.insert(module.to_string());
        }
    }
    let named: std::collections::BTreeSet<String> = dmi_aliases(&dir)
        .into_iter()
        .map(|(_, module)| module)
        .collect();
    assert!(!named.is_empty(), "no dmi: alias in {}", dir.display());
    let missed: Vec<_> = named.difference(&reached).collect();
    assert!(
        missed.is_empty(),
        "no real modalias above reaches {missed:?}"
    );
}

/// A concrete string matching `pattern`: each `*` a run with a BIOS date in it, each `?` a
/// digit, each `[...]` its first character.
fn concrete(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str("bd01/15/2019"),
            '?' => out.push('0'),
            '[' => {
                let first = chars.next().expect("a class after '['");
                assert!(first != '!' && first != '^', "negated class in {pattern}");
                out.push(first);
                chars.by_ref().find(|&c| c == ']').expect("']'");
            }
            c => out.push(c),
        }
    }
    out
}

/// Every `dmi:` alias pattern of Debian's tree (all 46 lines, not only one per module) matches a
/// concrete modalias with slashes in it, through validation and the real resolver.
#[test]
fn every_dmi_alias_pattern_of_the_debian_tree_matches_a_modalias_with_slashes() {
    let conf = tempfile::tempdir().unwrap();
    let (mut r, dir) = debian_resolver(&conf);
    let aliases = dmi_aliases(&dir);
    assert!(aliases.len() >= 40, "{} dmi: aliases", aliases.len());
    for (pattern, module) in aliases {
        let modalias = concrete(&pattern);
        assert!(modalias.contains('/'), "{pattern} -> {modalias}");
        let plan = resolve_valid(&mut r, &modalias);
        assert!(loads(&plan, &module), "{pattern} -> {modalias} -> {plan:?}");
    }
}

/// libkmod inserts a module that has softdeps instead of running its `install` command
/// (`__kmod_module_fill_softdep`: `ignorecmd` when a softdep resolved to a module), whether the
/// module is the target, a dependency or a softdep. The resolver ran the command.
#[test]
fn install_command_gives_way_to_softdeps_as_in_libkmod() {
    let fx = Fixture::new("");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "install dummy /bin/false\nsoftdep dummy pre: nlmon\n",
            "dummy",
            &["nlmon", "dummy"],
        ),
        (
            "install dummy /bin/false\nsoftdep dummy post: nlmon\n",
            "rtnl-link-dummy",
            &["dummy", "nlmon"],
        ),
        // A dependency with a softdep.
        (
            "install llc /bin/true\nsoftdep llc post: nlmon\n",
            "garp",
            &["llc", "nlmon", "stp", "garp"],
        ),
        // A softdep with a softdep of its own.
        (
            "install nlmon /bin/true\nsoftdep dummy pre: nlmon\nsoftdep nlmon post: e1000e\n",
            "dummy",
            &["nlmon", "e1000e", "dummy"],
        ),
    ];
    for (conf, target, inserted) in cases {
        fx.write_conf("test.conf", conf);
        let lines = fx.same_as_modprobe(target);
        let expected: Vec<String> = inserted.iter().map(|m| insmod(&fx, m, "")).collect();
        assert_eq!(lines, expected, "{conf}");
    }
}

/// The command still runs without a softdep, and when the softdep names nothing that resolves
/// (libkmod's softdep list is then empty).
#[test]
fn install_command_runs_without_a_resolvable_softdep() {
    let fx = Fixture::new("");
    for conf in [
        "install dummy /bin/false\n",
        "install dummy /bin/false\nsoftdep dummy pre: no-such-module\n",
    ] {
        fx.write_conf("test.conf", conf);
        assert_eq!(
            fx.same_as_modprobe("dummy"),
            ["install /bin/false"],
            "{conf}"
        );
    }
}

/// `options ALIAS ...` applies when the module is reached through that alias (libkmod matches
/// options against the module's name and the alias it was made for), on top of the name's own
/// options, and a softdep given as an alias carries that alias's options. Nodes used to be
/// shared by module name, so the first lookup decided the options for every later one.
#[test]
fn options_follow_the_alias_the_module_was_reached_through() {
    let fx = Fixture::new(
        "alias mynet dummy\noptions mynet numdummies=3\noptions dummy foo=1\n\
         options rtnl-link-dummy bar=2\nsoftdep nlmon pre: mynet\n",
    );
    let mut r = fx.resolver();
    let expected = [
        ("dummy", "foo=1"),
        ("mynet", "numdummies=3 foo=1"),
        ("rtnl-link-dummy", "foo=1 bar=2"),
        ("dummy", "foo=1"),
    ];
    for (target, options) in expected {
        let plan = r.resolve(target).unwrap();
        let lines = assert_show_depends(&plan, fx.modprobe_show_depends(&[], target), target);
        assert_eq!(lines, [insmod(&fx, "dummy", options)], "{target}");
    }
    let plan = r.resolve("nlmon").unwrap();
    let lines = assert_show_depends(&plan, fx.modprobe_show_depends(&[], "nlmon"), "nlmon");
    assert_eq!(
        lines,
        [
            insmod(&fx, "dummy", "numdummies=3 foo=1"),
            insmod(&fx, "nlmon", "")
        ]
    );
}

/// The node cache still shares: a module reached by name is one node wherever it is reached by
/// name (target, dependency, softdep), one reached through an alias is one node for that alias,
/// and the two are different nodes when their options differ.
#[test]
fn node_cache_shares_per_module_and_options() {
    let fx = Fixture::new(
        "alias mynet dummy\noptions mynet numdummies=3\nsoftdep garp pre: dummy post: mynet\n",
    );
    let mut r = fx.resolver();
    let by_name = r.resolve("dummy").unwrap();
    let by_alias = r.resolve("mynet").unwrap();
    let garp = r.resolve("garp").unwrap();
    let garp = single(&garp);
    assert!(Arc::ptr_eq(&load(&by_name)[0], &garp.pre[0]), "by name");
    assert!(Arc::ptr_eq(&load(&by_alias)[0], &garp.post[0]), "by alias");
    assert!(!Arc::ptr_eq(&load(&by_name)[0], &load(&by_alias)[0]));
    assert_eq!(load(&by_alias)[0].options, "numdummies=3");
    // Without options of its own, an alias shares the name's node.
    let by_other_alias = r.resolve("rtnl-link-dummy").unwrap();
    assert!(Arc::ptr_eq(&load(&by_name)[0], &load(&by_other_alias)[0]));
}

/// An alias matching several modules gives them in libkmod's lookup order (here modprobe.d's
/// order), which is the order modprobe and udev load them in.
#[test]
fn several_modules_for_one_alias_keep_lookup_order() {
    let fx = Fixture::new("");
    for (conf, order) in [
        (
            "alias testnet nlmon\nalias testnet dummy\n",
            ["nlmon", "dummy"],
        ),
        (
            "alias testnet dummy\nalias testnet nlmon\n",
            ["dummy", "nlmon"],
        ),
    ] {
        fx.write_conf("test.conf", conf);
        let plan = fx.resolver().resolve("testnet").unwrap();
        assert_eq!(names(load(&plan)), order, "{conf}");
        let lines = fx.same_as_modprobe("testnet");
        let expected: Vec<String> = order.iter().map(|m| insmod(&fx, m, "")).collect();
        assert_eq!(lines, expected, "{conf}");
    }
}

/// Each blacklist scope against the modprobe it stands for: `modprobe` (the kernel's
/// `request_module()`, a plain `load`) and `modprobe -b` (udev's builtin, `load --udev`).
const SCOPES: [(BlacklistScope, &[&str]); 2] = [
    (BlacklistScope::Aliases, &[]),
    (BlacklistScope::AliasesAndNames, &["-b"]),
];

/// udev's builtin loads with `KMOD_PROBE_APPLY_BLACKLIST`, which refuses a blacklisted module
/// asked for by its own name too (`blacklist ppdev`, and 80-drivers.rules' `ppdev` line); plain
/// modprobe refuses it only through an alias. The resolver applied the blacklist to aliases only,
/// whoever asked.
#[test]
fn blacklist_by_name_follows_modprobe_b() {
    let fx = Fixture::new("blacklist ppdev\nblacklist dummy\n");
    fx.copy_module("parport");
    fx.copy_module("ppdev");
    fx.depmod();
    let mut r = fx.resolver();
    for target in [
        "ppdev",
        "dummy",
        "rtnl-link-dummy",
        "nlmon",
        "rtnl-link-nlmon",
    ] {
        for (scope, flags) in SCOPES {
            let plan = r.resolve_with(target, scope).unwrap();
            let modprobe = fx.modprobe_show_depends(flags, target);
            assert_show_depends(&plan, modprobe, &format!("{target} {flags:?}"));
        }
    }
    let names_too = BlacklistScope::AliasesAndNames;
    let refused = r.resolve_with("ppdev", names_too).unwrap();
    assert_eq!(*refused, Plan::Blacklisted(vec!["ppdev".to_string()]));
    let loaded = r.resolve_with("ppdev", BlacklistScope::Aliases).unwrap();
    assert_eq!(order(single(&loaded)), ["parport", "ppdev"]);
    // The plain `resolve` is modprobe's default.
    assert!(Arc::ptr_eq(&loaded, &r.resolve("ppdev").unwrap()));
}

/// libkmod decides per module object whether it was asked for by name: a modprobe.d alias that
/// matches the module's own name (`alias dumm* dummy`) makes it an alias lookup, refused when
/// blacklisted even without `-b`. Telling names from aliases by comparing the target with the
/// module's name got that wrong.
#[test]
fn an_alias_spelled_like_its_module_is_still_an_alias() {
    let fx = Fixture::new("alias dumm* dummy\nblacklist dummy\n");
    let mut r = fx.resolver();
    for target in ["dummy", "dumm"] {
        for (scope, flags) in SCOPES {
            let plan = r.resolve_with(target, scope).unwrap();
            assert_eq!(
                *plan,
                Plan::Blacklisted(vec!["dummy".to_string()]),
                "{target}"
            );
            let modprobe = fx.modprobe_show_depends(flags, target);
            assert_show_depends(&plan, modprobe, &format!("{target} {flags:?}"));
        }
    }
}

/// The handle caches per target and scope: a name refused for udev still loads for modprobe.
#[tokio::test]
async fn handle_keeps_scopes_apart() {
    let fx = Fixture::new("blacklist dummy\n");
    let handle = ResolverHandle::spawn(fx.module_dir(), Some(vec![fx.conf_dir.clone()])).unwrap();
    let names_too = BlacklistScope::AliasesAndNames;
    for _ in 0..2 {
        let refused = handle.resolve_with("dummy", names_too).await.unwrap();
        assert_eq!(*refused, Plan::Blacklisted(vec!["dummy".to_string()]));
        assert_eq!(
            single(&handle.resolve("dummy").await.unwrap()).name,
            "dummy"
        );
    }
}
