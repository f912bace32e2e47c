//! Who applies the modprobe.d blacklist to a module asked for by name, through the real client
//! and server (fake kernel): `load --udev` and `modprobe -b` refuse it, as udev's builtin
//! (`KMOD_PROBE_APPLY_BLACKLIST`) and `modprobe -b` do; a plain `load` and the kernel's
//! `modprobe -q -- NAME` load it, as modprobe does.

use std::process::{Command, Output};

use modbroker::server::AccessPolicy;
use modbroker::testing::{node, FakeKernel, FixedResolver};

mod common;
use common::TestServer;

/// A server where `ppdev` and `sm_ftl` name blacklisted modules.
fn server() -> TestServer {
    let resolver = FixedResolver::new()
        .with_blacklisted_name("ppdev", node("ppdev", vec![node("parport", vec![])]))
        .with_blacklisted_name("sm_ftl", node("sm_ftl", vec![]));
    TestServer::start_with(FakeKernel::new(), resolver, AccessPolicy::default())
}

fn modbroker(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modbroker"))
        .arg("--socket")
        .arg(&server.socket)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn udev_and_modprobe_b_refuse_a_blacklisted_name() {
    let server = server();
    let out = modbroker(&server, &["load", "--udev", "ppdev"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).starts_with("ppdev: blacklisted"),
        "{}",
        stdout(&out)
    );
    for args in [
        &["modprobe", "-q", "-b", "--", "ppdev"][..],
        &["modprobe", "-qb", "ppdev"],
    ] {
        let out = modbroker(&server, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
    assert!(server.kernel.call_log().is_empty(), "nothing loaded");
}

#[test]
fn plain_load_and_the_kernel_helper_load_a_blacklisted_name() {
    let server = server();
    let out = modbroker(&server, &["modprobe", "-q", "--", "ppdev"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.kernel.calls("ppdev"), 1);

    let out = modbroker(&server, &["load", "sm_ftl"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).starts_with("sm_ftl: loaded"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.kernel.calls("sm_ftl"), 1);
}

/// The fallback passes the choice on: `modbrokerd --oneshot --blacklist-names -- TARGET`.
#[test]
fn oneshot_takes_the_blacklist_flag() {
    use clap::Parser;
    let args = modbroker::cli::DaemonArgs::try_parse_from([
        "modbrokerd",
        "--oneshot",
        "--blacklist-names",
        "--",
        "ppdev",
    ])
    .unwrap();
    assert!(args.blacklist_names);
    assert_eq!(args.oneshot_args, ["ppdev"]);
    let without = modbroker::cli::DaemonArgs::try_parse_from(["modbrokerd", "--blacklist-names"]);
    assert!(without.is_err(), "--blacklist-names needs --oneshot");
}
