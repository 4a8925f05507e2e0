//! A real softphone: headless baresip (Debian baresip-core) registers to a
//! `ringmesh dev` farm with digest authentication and is reachable: a
//! second baresip calls it, the call is established on both sides, audio
//! flows both ways, and the call ends with BYE. Over UDP, and over TLS
//! with the two phones on two supernodes. Recipe:
//! loadtest/baresip/README.md.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{repo_root, wait_until};

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// The RTP packets baresip counted at the end of its call (its
/// `rtp_stats` table): (sent, received).
fn rtp_packets(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("packets:"))?;
    let mut n = line.split_whitespace().skip(1).map(|v| v.parse().ok());
    Some((n.next()??, n.next()??))
}

/// bob registers at `bob_at`, alice at `alice_at` calls him over
/// `transport`; asserts the call as a user would see it.
fn call(transport: &str, bob_at: SocketAddr, alice_at: SocketAddr, extra: &[&str]) {
    common::require("baresip", "baresip-core");
    let ports = || {
        (
            common::free_sip_port().to_string(),
            common::free_port().to_string(),
        )
    };
    let (bob_sip, bob_ctrl) = ports();
    let (alice_sip, alice_ctrl) = ports();
    let work = tempfile::tempdir().unwrap();
    let script = repo_root().join("loadtest/baresip/run-baresip.sh");
    let common_args = |seconds: &str| {
        let mut a = vec![
            "--transport".to_string(),
            transport.to_string(),
            "--seconds".to_string(),
            seconds.to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let bob_log = work.path().join("bob.log");
    let mut bob = Command::new(&script)
        .args(common_args("20"))
        .args([
            work.path().join("bob").to_str().unwrap(),
            "bob",
            &bob_sip,
            &bob_ctrl,
            &bob_at.to_string(),
        ])
        .stdout(std::fs::File::create(&bob_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip is installed (make test installs baresip-core)");
    let registered = format!(
        "bob@ringmesh.test: {{0/{}/v4}} 200 OK",
        transport.to_ascii_uppercase()
    );
    wait_until("bob registered", Duration::from_secs(20), || {
        read(&bob_log).contains(&registered)
    });

    let alice_log = work.path().join("alice.log");
    let alice = Command::new(&script)
        .args(common_args("6"))
        .args([
            "-e",
            "/dial sip:bob@ringmesh.test",
            work.path().join("alice").to_str().unwrap(),
            "alice",
            &alice_sip,
            &alice_ctrl,
            &alice_at.to_string(),
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
    // 20 ms packets for about 6 s: audio flowed both ways.
    for (who, log) in [("alice", &a), ("bob", &b)] {
        let (sent, received) =
            rtp_packets(log).unwrap_or_else(|| panic!("{who} printed no RTP stats:\n{log}"));
        assert!(
            sent > 100 && received > 100,
            "{who}: {sent} RTP packets sent, {received} received"
        );
    }
}

#[test]
#[ignore = "slow: needs baresip and a ringmesh dev farm"]
fn baresip_registers_and_is_reachable() {
    let farm = common::start_farm(&[], &[]);
    call("udp", farm.sip(), farm.sip(), &[]);
}

/// Both phones on TLS, each on its own supernode. baresip 1.0's libre
/// loads `sip_cafile` but accepts any server certificate, so the
/// certificate those phones got is verified here as a phone that checks
/// would: OpenSSL, against the dev CA, for the domain (SNI) and for the
/// address, and refused for a name it does not carry.
#[test]
#[ignore = "slow: needs baresip, openssl and a ringmesh dev farm"]
fn baresip_calls_over_tls_across_two_supernodes() {
    common::require("openssl", "openssl");
    let farm = common::start_farm(&["--nodes", "2"], &[]);
    let (bob_at, alice_at) = (farm.nodes[0].tls, farm.nodes[1].tls);
    for (at, check) in [
        (
            bob_at,
            vec![
                "-servername",
                "ringmesh.test",
                "-verify_hostname",
                "ringmesh.test",
            ],
        ),
        (alice_at, vec!["-verify_ip", "127.0.0.1"]),
    ] {
        assert_eq!(
            s_client(at, &farm.ca, &check),
            Some(0),
            "the SIP certificate of {at} verifies against the dev CA"
        );
    }
    assert_ne!(
        s_client(bob_at, &farm.ca, &["-verify_hostname", "evil.example"]),
        Some(0),
        "a name the certificate does not carry"
    );
    call("tls", bob_at, alice_at, &["--cafile", &farm.ca]);
}

/// `openssl s_client` to `at` trusting only `ca`, failing on any
/// verification error: its verify return code.
fn s_client(at: SocketAddr, ca: &str, extra: &[&str]) -> Option<i64> {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(at.to_string())
        .args(["-CAfile", ca, "-verify_return_error", "-brief"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if text.contains("Verification: OK") {
        return Some(0);
    }
    text.lines()
        .find_map(|l| l.split("verify error:num=").nth(1))
        .and_then(|v| v.split(':').next()?.parse().ok())
        .or(Some(-1))
}
