//! Resolver tests against real module trees: real Debian `.ko` files copied from the host's
//! `/lib/modules/<KVER>` into a tempdir, indexed there with `depmod -b`, and a test-made
//! `modprobe.d`. Needs `linux-image-amd64` and `kmod` installed; fails (never skips) without.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use modbroker::plan::{LoadMethod, ModuleNode, Plan};
use modbroker::resolver::{KmodResolver, ResolverError, ResolverHandle};

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
    assert_eq!(order(garp), ["dummy", "llc", "stp", "garp", "nlmon"]);
}

#[test]
fn softdep_cycles_are_cut_per_target() {
    let fx = Fixture::new("softdep dummy pre: nlmon\nsoftdep nlmon pre: dummy\n");
    let mut r = fx.resolver();
    let dummy = r.resolve("dummy").unwrap();
    let dummy = single(&dummy);
    assert_eq!(names(&dummy.pre), ["nlmon"]);
    assert!(dummy.pre[0].pre.is_empty());
    assert_eq!(order(dummy), ["nlmon", "dummy"]);
    // Resolving the other end of the cycle afterwards must not reuse the cut tree.
    let nlmon = r.resolve("nlmon").unwrap();
    assert_eq!(order(single(&nlmon)), ["dummy", "nlmon"]);
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
