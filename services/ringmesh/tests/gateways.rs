//! PSTN gateways found in the overlay, on a real farm (`ringmesh dev`,
//! three nodes) with sipp playing the gateways and the caller. The
//! gateways are added with `ringmesh ctl gateway add` at one node; calls
//! placed at another use them:
//!
//! - the longest prefix wins (+4420 before +44);
//! - weights 1:3 share 1,000 calls exactly as smooth weighted round-robin
//!   does (250 and 750: each gateway's sipp takes exactly that many calls
//!   and every call succeeds);
//! - a gateway answering 503 is skipped for the next one;
//! - a gateway that dies is marked down by its probes within 2 s, and a
//!   call then goes straight to the next without waiting on it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ctl, free_sip_port, sipp, sipp_dir, wait_until};
use serde_json::Value;

/// A sipp playing a gateway on 127.0.0.1: answers every call with
/// `scenario` and every OPTIONS probe (`-aa`), logging what it gets;
/// killed (by PID) when dropped. (sipp is run directly, bounded by its own
/// `-timeout`, so that the PID is sipp's.)
struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    fn start(scenario: &str, name: &str, work: &Path) -> Gateway {
        let sipp = common::require("sipp", "sip-tester");
        let port = free_sip_port();
        let log = work.join(format!("{name}.log"));
        let child = Command::new(sipp)
            .arg("-sf")
            .arg(sipp_dir().join(scenario))
            .args(["-aa", "-i", "127.0.0.1", "-t", "u1", "-nostdin"])
            .args(["-p", &port.to_string(), "-timeout", "170s"])
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&log)
            .current_dir(work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp starts");
        Gateway { child, port, log }
    }

    fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// The calls it was sent: distinct Call-IDs of the INVITEs it got.
    fn calls(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut ids: Vec<&str> = text
            .split("message received")
            .filter(|m| m.contains("\nINVITE sip:"))
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Call-ID: "))
                    .map(str::trim)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add(admin: &str, name: &str, gw: &Gateway, prefix: &str, priority: u32, weight: u32) {
    let (code, _, err) = ctl(&[
        "--admin",
        admin,
        "gateway",
        "add",
        name,
        &gw.uri(),
        "--prefix",
        prefix,
        "--priority",
        &priority.to_string(),
        "--weight",
        &weight.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
}

fn remove(admin: &str, names: &[&str]) {
    for name in names {
        let (code, _, err) = ctl(&["--admin", admin, "gateway", "remove", name]);
        assert_eq!(code, 0, "{err}");
    }
}

/// Adds `gateways` (gateway, name, prefix, priority, weight) at `admin`,
/// and waits until the node at `seen` has all of them, up.
fn install(admin: &str, seen: &str, gateways: &[(&Gateway, &str, &str, u32, u32)]) {
    for (gw, name, prefix, priority, weight) in gateways {
        add(admin, name, gw, prefix, *priority, *weight);
    }
    let mut want: Vec<(String, bool)> = gateways.iter().map(|g| (g.1.to_string(), true)).collect();
    want.sort();
    wait_until(
        "the node has the gateways, up",
        Duration::from_secs(10),
        || listed(seen) == want,
    );
}

/// The gateways as `admin`'s node sees them: (name, up).
fn listed(admin: &str) -> Vec<(String, bool)> {
    let (code, out, err) = ctl(&["--admin", admin, "--json", "gateway", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["up"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// alice calls `number` `n` times through `node` (at `rate` a second):
/// whether every call succeeded, and how long the run took.
fn alice_calls(node: &str, number: &str, n: u32, rate: u32, work: &Path) -> (bool, Duration) {
    let csv = work.join("alice.csv");
    if !csv.exists() {
        let out = Command::new(sipp_dir().join("gen_users.sh"))
            .args(["--names", "alice"])
            .output()
            .unwrap();
        std::fs::write(&csv, out.stdout).unwrap();
    }
    let port = free_sip_port().to_string();
    let auth_uri = format!("{number}@ringmesh.test");
    let t0 = Instant::now();
    let status = sipp(
        &[
            "-sf",
            sipp_dir().join("uac_call.xml").to_str().unwrap(),
            "-inf",
            csv.to_str().unwrap(),
            "-s",
            number,
            "-auth_uri",
            &auth_uri,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "u1",
            "-r",
            &rate.to_string(),
            "-m",
            &n.to_string(),
            "-d",
            "0",
            node,
        ],
        120,
        work,
    );
    (status.success(), t0.elapsed())
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn calls_to_numbers_reach_the_gateways_the_overlay_names() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let farm = common::start_farm(&["--nodes", "3"], &[]);
    // Gateways are added at node 1; calls go through node 0, which reads
    // the table from the ring.
    let admin = farm.nodes[1].admin.clone();
    let seen = farm.nodes[0].admin.clone();
    let node0 = farm.nodes[0].sip.to_string();

    // A gateway named by a host name, or a prefix that is not E.164, is
    // refused before anything is written, saying what to fix.
    for (uri, prefix, says) in [
        ("sip:pstn.example.net", "+44", "IP address"),
        ("sip:127.0.0.1:5999", "44", "prefix"),
    ] {
        let (code, _, err) = ctl(&[
            "--admin", &admin, "gateway", "add", "bad", uri, "--prefix", prefix,
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert!(listed(&seen).is_empty());

    // The longest prefix wins.
    let uk = Gateway::start("uas_noauth.xml", "uk", w);
    let london = Gateway::start("uas_noauth.xml", "london", w);
    install(
        &admin,
        &seen,
        &[(&uk, "uk", "+44", 0, 1), (&london, "london", "+4420", 9, 1)],
    );
    assert!(
        alice_calls(&node0, "+442071234567", 1, 1, w).0,
        "the London call"
    );
    assert_eq!((london.calls(), uk.calls()), (1, 0), "london took it");
    assert!(
        alice_calls(&node0, "+441611234567", 1, 1, w).0,
        "the Manchester call"
    );
    assert_eq!((london.calls(), uk.calls()), (1, 1), "uk took it");
    remove(&admin, &["uk", "london"]);

    // A gateway answering 503 is skipped.
    let busy = Gateway::start("uas_503.xml", "paris-busy", w);
    let paris = Gateway::start("uas_noauth.xml", "paris", w);
    install(
        &admin,
        &seen,
        &[
            (&busy, "paris-busy", "+33", 0, 1),
            (&paris, "paris", "+33", 1, 1),
        ],
    );
    assert!(
        alice_calls(&node0, "+33123456789", 1, 1, w).0,
        "the Paris call is answered"
    );
    assert_eq!(
        (busy.calls(), paris.calls()),
        (1, 1),
        "the busy one was asked first, then the next"
    );
    remove(&admin, &["paris-busy", "paris"]);

    // Weights 1:3 over 1,000 calls: exactly 250 and 750.
    let light = Gateway::start("uas_noauth.xml", "light", w);
    let heavy = Gateway::start("uas_noauth.xml", "heavy", w);
    install(
        &admin,
        &seen,
        &[(&light, "light", "+1", 0, 1), (&heavy, "heavy", "+1", 0, 3)],
    );
    let (ok, took) = alice_calls(&node0, "+15551234567", 1000, 100, w);
    assert!(ok, "every one of the 1,000 calls succeeded");
    assert_eq!((light.calls(), heavy.calls()), (250, 750));
    eprintln!("1,000 calls through the weighted pair in {took:?}");
    remove(&admin, &["light", "heavy"]);

    // A gateway that dies is down within 2 s; no call waits on it.
    let dead = Gateway::start("uas_noauth.xml", "berlin-1", w);
    let berlin = Gateway::start("uas_noauth.xml", "berlin-2", w);
    install(
        &admin,
        &seen,
        &[
            (&dead, "berlin-1", "+49", 0, 1),
            (&berlin, "berlin-2", "+49", 1, 1),
        ],
    );
    drop(dead);
    let t0 = Instant::now();
    wait_until("berlin-1 is down", Duration::from_secs(10), || {
        listed(&seen).contains(&("berlin-1".into(), false))
    });
    let noticed = t0.elapsed();
    eprintln!("a dead gateway marked down after {noticed:?}");
    assert!(
        noticed <= Duration::from_millis(2500),
        "down within 2 s (and the listing's own round trips): {noticed:?}"
    );
    let (ok, took) = alice_calls(&node0, "+4930123456", 1, 1, w);
    assert!(ok, "the Berlin call is answered");
    assert_eq!(berlin.calls(), 1, "by the second gateway");
    assert!(
        took < Duration::from_secs(2),
        "the call did not wait on the dead gateway (the gateway timeout is 2 s): {took:?}"
    );
    // The node the calls went through counts each event.
    let events = |gw: &str, ev: &str| {
        common::metric_labelled(
            farm.nodes[0].metrics,
            "ringmesh_sip_gateway_events_total",
            &[("gateway", gw), ("event", ev)],
        )
    };
    assert_eq!(events("heavy", "answered"), Some(750.0));
    assert_eq!(events("light", "answered"), Some(250.0));
    assert_eq!(events("paris-busy", "failed_over"), Some(1.0));
    assert_eq!(events("berlin-1", "down"), Some(1.0));
}
