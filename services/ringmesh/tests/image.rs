//! The image (`make image`: localhost/ringmesh:VERSION) run as the chart
//! runs it: `ringmesh dev --container` starts provisioning, enrollment and
//! three supernodes as podman containers with host networking, a
//! read-only root and user 10001; the chart's probes (/healthz, /readyz)
//! answer, and a phone registers and calls through the farm.

mod common;

use std::process::Command;
use std::time::Duration;

use common::http_get;
use ringmesh_test_support::phone::UdpPhone;

const PASSWORD: &str = "secret";

fn image() -> String {
    format!("localhost/ringmesh:{}", env!("CARGO_PKG_VERSION"))
}

/// `podman ARGS` with the options `ringmesh dev --container` uses.
fn podman(args: &[&str]) -> std::process::Output {
    Command::new(ringmesh_test_support::repo_root().join("helm/image/podman"))
        .args(args)
        .output()
        .expect("podman runs")
}

#[test]
#[ignore = "slow: containers of the image"]
fn a_farm_of_containers_serves_probes_registrations_and_calls() {
    ringmesh_test_support::require("podman", "podman");
    let found = podman(&["image", "exists", &image()]);
    assert!(
        found.status.success(),
        "no image {}: `make image` builds it (`make test` does)",
        image()
    );
    let farm = common::start_farm(&["--nodes", "3", "--container", &image()], &[]);

    // Each process is a container of the image, as the chart runs it.
    let ps = podman(&["ps", "--format", "{{.Names}} {{.Image}}"]);
    let listed = String::from_utf8_lossy(&ps.stdout).into_owned();
    for node in &farm.nodes {
        let mine = listed
            .lines()
            .find(|l| l.contains(&format!("-{} ", node.name)))
            .unwrap_or_else(|| panic!("{} is not a container: {listed}", node.name));
        assert!(mine.ends_with(&image()), "{mine}");
        let name = mine.split(' ').next().unwrap();
        let inspect = podman(&[
            "inspect",
            "--format",
            "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.NetworkMode}}",
            name,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&inspect.stdout).trim(),
            "10001:10001 true host",
            "{name}"
        );
        // The chart's probes.
        assert_eq!(http_get(node.metrics, "/healthz").0, 200);
        assert_eq!(http_get(node.metrics, "/readyz").0, 200);
    }
    for service in ["provisioning", "enrollment"] {
        assert!(
            listed.lines().any(|l| l.contains(&format!("-{service} "))),
            "{service} is not a container: {listed}"
        );
    }

    // bob registers at node 1, alice calls him from node 0.
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(farm.nodes[1].sip, "bob", PASSWORD), Some(200));
    // bob's phone answers the INVITE, then the BYE (ACKs skipped).
    let callee = std::thread::spawn(move || {
        let invite = bob.answer_next(200, Duration::from_secs(15));
        let bye = bob.answer_next(200, Duration::from_secs(15));
        (invite, bye)
    });
    let alice = UdpPhone::on("127.0.0.1");
    let node = farm.nodes[0].sip;
    let invite = alice.request("INVITE", "bob", "alice", "");
    let (status, ok) = alice
        .authenticated(node, &invite, "alice", PASSWORD)
        .expect("an answer");
    assert_eq!(status, 200, "{ok}");
    // The INVITE answered is the one with credentials (CSeq 2).
    let sent = invite.replacen("CSeq: 1 INVITE", "CSeq: 2 INVITE", 1);
    let ack = alice.in_dialog("ACK", 2, &sent, &ok, "");
    alice.sock.send_to(ack.as_bytes(), node).unwrap();
    let bye = alice.in_dialog("BYE", 3, &sent, &ok, "");
    let r = alice
        .ask(node, &bye, Duration::from_secs(5))
        .expect("an answer to the BYE");
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let (got_invite, got_bye) = callee.join().unwrap();
    assert!(got_invite.is_some_and(|(r, _)| r.starts_with("INVITE ")));
    assert!(got_bye.is_some_and(|(r, _)| r.starts_with("BYE ")));
}
