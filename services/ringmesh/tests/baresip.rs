//! A real softphone: headless baresip (Debian baresip-core) registers to a
//! `ringmesh dev` farm with digest authentication and is reachable: a
//! second baresip calls it, the call is established on both sides and ends
//! with BYE. Recipe: loadtest/baresip/README.md.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{repo_root, wait_until};

#[test]
#[ignore = "slow: needs baresip and a ringmesh dev farm"]
fn baresip_registers_and_is_reachable() {
    common::require("baresip", "baresip-core");
    let farm = common::start_farm(&[], &[]);
    let ports = |_: &str| {
        (
            common::free_sip_port().to_string(),
            common::free_port().to_string(),
        )
    };
    let (bob_sip, bob_ctrl) = ports("bob");
    let (alice_sip, alice_ctrl) = ports("alice");
    let work = tempfile::tempdir().unwrap();
    let script = repo_root().join("loadtest/baresip/run-baresip.sh");
    let server = farm.sip().to_string();
    let bob_log = work.path().join("bob.log");
    let mut bob = Command::new(&script)
        .args([
            "--seconds",
            "20",
            work.path().join("bob").to_str().unwrap(),
            "bob",
            &bob_sip,
            &bob_ctrl,
            &server,
        ])
        .stdout(std::fs::File::create(&bob_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip is installed (make test installs baresip-core)");
    let read = |p: &std::path::Path| {
        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
    };
    wait_until("bob registered", Duration::from_secs(20), || {
        read(&bob_log).contains("bob@ringmesh.test: {0/UDP/v4} 200 OK")
    });

    let alice_log = work.path().join("alice.log");
    let alice = Command::new(&script)
        .args([
            "--seconds",
            "6",
            "-e",
            "/dial sip:bob@ringmesh.test",
            work.path().join("alice").to_str().unwrap(),
            "alice",
            &alice_sip,
            &alice_ctrl,
            &server,
        ])
        .stdout(std::fs::File::create(&alice_log).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bob.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = bob.wait();
    let (a, b) = (read(&alice_log), read(&bob_log));
    assert!(
        alice.success() || a.contains("terminated"),
        "alice's baresip failed:\n{a}"
    );
    assert!(
        a.contains("Call established: sip:bob@ringmesh.test"),
        "alice's call was not established:\n{a}"
    );
    assert!(
        b.contains("Call established: sip:alice@ringmesh.test"),
        "bob never answered:\n{b}"
    );
    assert!(
        b.contains("terminated"),
        "the call did not end with BYE:\n{b}"
    );
}
