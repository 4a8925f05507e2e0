//! The best TURN relay on a real farm (`ringmesh dev`, three nodes) with
//! two real coturn relays (Debian `coturn`) in regions x and y, advertised
//! in the ring's service discovery with `ringmesh ctl service advertise`
//! (one of them by the registration command left running beside it). A
//! phone in region x gets x's relay first and TURN REST API credentials
//! from an authenticated `OPTIONS sip:turn@…`; a real allocation with them
//! succeeds (`turnutils_uclient`), and the same credentials fail once they
//! expire. The registration command, stopped, withdraws its relay.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ctl, ctl_with, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::phone::UdpPhone;
use ringmesh_test_support::{free_port, require};
use serde_json::Value;

const PASSWORD: &str = "secret";
const TURN_SECRET: &str = "relay-secret-of-the-test";
/// How long credentials last (the farm's `turn-ttl`).
const TTL: Duration = Duration::from_secs(30);

/// A coturn relay on 127.0.0.1, stopped (by PID) when dropped.
struct Relay {
    child: Child,
    port: u16,
}

impl Relay {
    fn start(dir: &Path, name: &str) -> Relay {
        let bin = require("turnserver", "coturn");
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                // The test's peer is on loopback too.
                "--allow-loopback-peers",
                "--use-auth-secret",
                &format!("--static-auth-secret={TURN_SECRET}"),
                "--realm=ringmesh.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--simple-log",
                "--log-file=stdout",
            ])
            .arg(format!(
                "--pidfile={}",
                dir.join(format!("{name}.pid")).display()
            ))
            .arg(format!(
                "--userdb={}",
                dir.join(format!("{name}.db")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        Relay { child, port }
    }

    fn uri(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registration command, killed (by PID) if the test ends before it
/// is stopped.
struct Beside(Child);

impl Drop for Beside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TURN allocation at `port` with these credentials succeeds.
fn allocates(port: u16, user: &str, password: &str) -> bool {
    let out = Command::new(require("turnutils_uclient", "coturn"))
        .args(["-v", "-n", "0", "-m", "1", "-e", "127.0.0.1", "-r", "9"])
        .args([
            "-u",
            user,
            "-w",
            password,
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("turnutils_uclient runs");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Received relay addr")
}

/// `user`'s phone asks node `at` for relays: the JSON answer.
fn relays_for(phone: &UdpPhone, at: std::net::SocketAddr, user: &str) -> Value {
    let text = phone.request("OPTIONS", "turn", user, "Accept: application/json\r\n");
    let (status, r) = phone
        .authenticated(at, &text, user, PASSWORD)
        .expect("an answer");
    assert_eq!(status, 200, "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn listed(admin: &str, region: &str) -> Vec<String> {
    let (code, out, err) = ctl(&[
        "--admin", admin, "--json", "service", "list", "turn", "--region", region,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uri"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "slow: a farm and two coturn relays"]
fn a_phone_gets_its_regions_relay_and_credentials_that_work_then_expire() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn.secret");
    std::fs::write(&secret, format!("{TURN_SECRET}\n")).unwrap();
    let farm = common::start_farm(
        &["--nodes", "3"],
        &[
            ("RINGMESH_TURN_SECRET_FILE", secret.to_str().unwrap()),
            ("RINGMESH_TURN_TTL", &TTL.as_secs().to_string()),
        ],
    );
    let (x, y) = (Relay::start(dir.path(), "x"), Relay::start(dir.path(), "y"));
    let admin = farm.nodes[0].admin.clone();

    // x once (it lasts a minute); y by the registration command, every 2 s.
    let (code, _, err) = ctl(&[
        "--admin",
        &admin,
        "service",
        "advertise",
        "turn",
        &x.uri(),
        "--region",
        "x",
        "--capacity",
        "100",
        "--load",
        "5",
        "--ttl",
        "60",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut beside_y = Beside(
        Command::new(env!("CARGO_BIN_EXE_ringmesh"))
            .args([
                "ctl",
                "--admin",
                &farm.nodes[1].admin,
                "service",
                "advertise",
                "turn",
            ])
            .args([y.uri().as_str(), "--region", "y", "--capacity", "100"])
            .args(["--ttl", "6", "--every", "2"])
            .env_remove("RINGMESH_ADMIN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "both relays are advertised",
        Duration::from_secs(10),
        || listed(&admin, "").len() == 2,
    );
    // Any member answers from the ring, best first for the region asked.
    assert_eq!(listed(&farm.nodes[2].admin, "y"), [y.uri(), x.uri()]);
    assert_eq!(listed(&farm.nodes[2].admin, "x"), [x.uri(), y.uri()]);

    // bob is in region y (provisioning), and asks node 2.
    let (code, _, err) = ctl_with(&farm, &["subscriber", "set-region", "bob", "y"]);
    assert_eq!(code, 0, "{err}");
    let bob = UdpPhone::on("127.0.0.1");
    let node = farm.nodes[2].sip;
    wait_until("node 2 knows bob's region", Duration::from_secs(10), || {
        relays_for(&bob, node, "bob")["uris"][0] == y.uri().as_str()
    });
    // Now region x: x's relay first.
    let (code, _, err) = ctl_with(&farm, &["subscriber", "set-region", "bob", "x"]);
    assert_eq!(code, 0, "{err}");
    wait_until("node 2 knows bob moved", Duration::from_secs(10), || {
        relays_for(&bob, node, "bob")["uris"][0] == x.uri().as_str()
    });
    let asked = Instant::now();
    let got = relays_for(&bob, node, "bob");
    assert_eq!(got["uris"][1], y.uri().as_str());
    assert_eq!(got["ttl"], TTL.as_secs());
    let (user, password) = (
        got["username"].as_str().unwrap().to_string(),
        got["password"].as_str().unwrap().to_string(),
    );
    assert!(user.ends_with(":bob"), "{user}");

    // A real allocation on x's relay with them (once the relay is up).
    wait_until("an allocation with the credentials", TTL / 2, || {
        allocates(x.port, &user, &password)
    });
    assert!(
        !allocates(x.port, &user, "not-the-password"),
        "a wrong password is refused"
    );
    // Once expired, the relay refuses the same credentials.
    let left = (TTL + Duration::from_secs(2)).saturating_sub(asked.elapsed());
    std::thread::sleep(left);
    assert!(
        !allocates(x.port, &user, &password),
        "expired credentials are refused"
    );

    // The registration command stopped: y is withdrawn at once.
    kill(Pid::from_raw(beside_y.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(beside_y.0.wait().unwrap().success());
    assert_eq!(listed(&admin, "y"), [x.uri()]);
}
