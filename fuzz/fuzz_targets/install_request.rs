//! Fuzzes the install-command runner's decision (`install_runner::command_for`) with arbitrary
//! request lines, decoded as the runner decodes them, against a fixed modprobe.d: the runner
//! must run nothing but libkmod's first matching `install` line for a valid module name, with
//! that module's own configured options and parameters of the protocol's shape.
//!
//! Properties checked for every input:
//! - a request whose module is not a module name, or whose parameters break the parameter
//!   rules, is refused;
//! - an accepted request's command is the first configured line whose pattern matches the
//!   module (the fixture's lines, in order), never anything the request carried;
//! - its options are the module's own configured options, then the parameters; so no byte the
//!   shell gives meaning to comes from the request, and another module's options never appear.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modbroker::install_runner::{command_for, InstallRequest};
use modbroker::target::{canonical_name, looks_like_module_name, validate_params};

/// The fixture's modprobe.d, in the order libkmod reads it. `nvidia`'s options carry shell
/// syntax (a widely copied line): they must only ever reach nvidia's own install line.
const CONF: &str = "install snd_aloop /bin/true $CMDLINE_OPTS\n\
install snd_* /bin/echo $CMDLINE_OPTS\n\
install nvidia /sbin/nvidia-setup $CMDLINE_OPTS\n\
options snd_pcsp index=2\n\
options nvidia NVreg_RegistryDwords=\"PerfLevelSrc=0x2222; dd if=/x of=/y\"\n";

/// (pattern, command, the module's own options) in configuration order.
const LINES: &[(&str, &str)] = &[
    ("snd_aloop", "/bin/true $CMDLINE_OPTS"),
    ("snd_*", "/bin/echo $CMDLINE_OPTS"),
    ("nvidia", "/sbin/nvidia-setup $CMDLINE_OPTS"),
];

fn fixture() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mb-fuzz-runner-{}", std::process::id()));
        let (modules, conf) = (dir.join("modules"), dir.join("modprobe.d"));
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("fuzz.conf"), CONF).unwrap();
        (modules, conf)
    })
}

/// The first line whose pattern matches `name` (`*` only at the end, as in the fixture).
fn first_match(name: &str) -> Option<&'static str> {
    LINES.iter().find_map(|(pattern, command)| {
        let matches = match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        };
        matches.then_some(*command)
    })
}

fn own_options(name: &str) -> &'static str {
    match name {
        "snd_pcsp" => "index=2",
        "nvidia" => "NVreg_RegistryDwords=\"PerfLevelSrc=0x2222; dd if=/x of=/y\"",
        _ => "",
    }
}

fuzz_target!(|line: &[u8]| {
    let Ok(request) = serde_json::from_slice::<InstallRequest>(line) else {
        return;
    };
    let (modules, conf) = fixture();
    let decided = command_for(&request, modules, Some(std::slice::from_ref(conf)));
    let params = validate_params(&request.params);
    if !looks_like_module_name(&request.module) || params.is_err() {
        assert!(decided.is_err(), "accepted {request:?}");
        return;
    }
    let name = canonical_name(&request.module);
    let Ok((command, options)) = decided else {
        assert!(first_match(&name).is_none(), "refused {request:?}");
        return;
    };
    assert_eq!(Some(command.as_str()), first_match(&name), "{request:?}");
    let params = params.unwrap();
    let expected = [own_options(&name), params.as_str()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(options, expected, "{request:?}");
});
