//! The `ringmesh dev` contract of docs/dev.md: the `--json` schema, the
//! port layout from `--sip-port P`, `--sip-port 0` with kernel-chosen
//! ports, and a node restarted from its `argv` coming back on the same
//! ports and rejoining.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http_get, metric, options_ok, wait_until};

/// The JSON lines of a farm's stdout are what the harness parsed; check
/// them against the contract.
fn check_schema(farm: &common::Farm, nodes: usize) {
    assert_eq!(farm.nodes.len(), nodes);
    for (i, n) in farm.nodes.iter().enumerate() {
        assert_eq!(n.name, format!("sn{i}"));
        assert!(n.pid > 0);
        assert_eq!(n.node_id.len(), 32, "32 hex digits");
        assert!(n.node_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(n.admin.parse::<SocketAddr>().is_ok(), "admin {}", n.admin);
        assert!(n.argv[0].ends_with("ringmesh") && n.argv[1] == "supernode");
        assert!(options_ok(n.sip), "{} answers OPTIONS at {}", n.name, n.sip);
        assert_eq!(http_get(n.metrics, "/readyz").0, 200);
        // Every other node is a seed of this one.
        for other in farm.nodes.iter().filter(|o| o.name != n.name) {
            let seed = other.overlay.to_string();
            assert!(
                n.argv.windows(2).any(|w| w[0] == "--seed" && w[1] == seed),
                "{} seeds {}",
                n.name,
                other.name
            );
        }
    }
    for addr in [
        &farm.provisioning,
        &farm.enrollment,
        &farm.provisioning_metrics,
        &farm.enrollment_metrics,
    ] {
        assert!(addr.parse::<SocketAddr>().is_ok(), "control address {addr}");
    }
    for m in [&farm.provisioning_metrics, &farm.enrollment_metrics] {
        assert_eq!(http_get(m.parse().unwrap(), "/readyz").0, 200);
    }
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn fixed_ports_follow_the_layout() {
    let ports = common::PortBlock::reserve();
    let base = ports.base;
    let p = ports.sip_port();
    let softphone = common::repo_root().join("services/softphone");
    assert!(
        softphone.join("dist/softphone.js").exists(),
        "the softphone is not built: make test runs npm ci and npm run build in services/softphone"
    );
    let farm = common::start_farm(
        &[
            "--nodes",
            "2",
            "--sip-port",
            &p,
            "--softphone",
            softphone.to_str().unwrap(),
        ],
        &[],
    );
    check_schema(&farm, 2);
    for (i, n) in farm.nodes.iter().enumerate() {
        let i = i as u16;
        assert_eq!(n.sip.port(), base + i);
        assert_eq!(n.overlay.port(), base + 100 + i);
        assert_eq!(n.admin, format!("127.0.0.1:{}", base + 200 + i));
        assert_eq!(n.metrics.port(), base + 300 + i);
        assert_eq!(n.tls.port(), base + 400 + i);
        assert_eq!(n.ws.port(), base + 500 + i);
        assert_eq!(n.wss.port(), base + 700 + i);
    }
    assert_eq!(
        farm.softphone.as_deref(),
        Some(format!("https://127.0.0.1:{}/", base + 800).as_str())
    );
    let port = |a: &str| a.parse::<SocketAddr>().unwrap().port();
    assert_eq!(port(&farm.provisioning), base + 600);
    assert_eq!(port(&farm.enrollment), base + 601);
    assert_eq!(port(&farm.provisioning_metrics), base + 602);
    assert_eq!(port(&farm.enrollment_metrics), base + 603);

    // A second farm on the same ports is refused, naming the busy port.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(["dev", "--nodes", "2", "--sip-port", &p])
        .arg("--data")
        .arg(tempfile::tempdir().unwrap().path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use") && err.contains("--sip-port"),
        "{err}"
    );
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn kernel_ports_and_a_restart_from_argv() {
    let farm = common::start_farm(&["--nodes", "3", "--auth", "none"], &[]);
    check_schema(&farm, 3);
    let victim = farm.nodes[2].clone();
    // SIP on one port for UDP and TCP.
    assert!(
        victim
            .argv
            .windows(2)
            .any(|w| w[0] == "--sip" && w[1] == format!("tcp:{}", victim.sip)),
        "{:?}",
        victim.argv
    );
    // Kill it; run its argv again: same ports, same identity, back in the
    // ring.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the others see it gone", Duration::from_secs(60), || {
        farm.nodes[..2]
            .iter()
            .all(|n| metric(n.metrics, "ringmesh_overlay_ring_size") == Some(2.0))
    });
    wait_until("its ports are free", Duration::from_secs(30), || {
        std::net::UdpSocket::bind(victim.sip).is_ok()
    });
    let log = std::fs::File::create(farm.dir.path().join("restarted.log")).unwrap();
    let mut again = Command::new(&victim.argv[0])
        .args(&victim.argv[1..])
        .env_clear()
        .current_dir(Path::new("/"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(
        "the restarted node rejoins",
        Duration::from_secs(60),
        || {
            http_get(victim.metrics, "/readyz").0 == 200
                && metric(victim.metrics, "ringmesh_overlay_ring_size") == Some(3.0)
        },
    );
    assert!(options_ok(victim.sip), "SIP on the same port");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(again.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = again.wait();
}
