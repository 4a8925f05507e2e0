//! Overload control on a release build of a one-node `ringmesh dev` farm:
//! a bursty REGISTER storm well within capacity, with the process paused
//! now and then as a CPU-throttled pod is, gets no 503; a storm several
//! times the node's capacity is shed with 503 and Retry-After, and the node
//! keeps serving at capacity (no timeouts, no retransmissions) and recovers.
//! On a three-node farm, the ring's queue is judged by how long location
//! operations wait, whatever their count.
//!
//! The farm runs on CPU 1 and the load on CPU 0 when the machine has two
//! (what the node can do is then not what the generator leaves it).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Farm, http_get, rand_u64, release_bin, sipp_dir, status_of};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn two_cpus() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// The one-node release farm, its threads moved to CPU 1.
///
/// Every storm here comes from 127.0.0.1 at thousands of messages a second,
/// on purpose, far above any phone's (or NAT of phones') rate: the load
/// generators are listed as trusted, as a carrier lists its front ends, so
/// what is measured is overload control, not the per-source rate limit
/// (which keeps its production defaults).
fn farm(users: u32) -> Farm {
    let users = users.to_string();
    let farm = Farm::start(
        &release_bin("ringmesh"),
        &[
            "--nodes",
            "1",
            "--users",
            &users,
            "--log",
            "warn",
            "--trusted",
            "load=127.0.0.1",
        ],
        &[],
    );
    pin(farm.nodes[0].pid);
    farm
}

/// Moves every thread of `pid` to CPU 1 (when there are two).
fn pin(pid: u32) {
    if two_cpus() {
        let ok = Command::new("taskset")
            .args(["-a", "-c", "-p", "1", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("taskset (util-linux)")
            .success();
        assert!(ok, "taskset could not pin the supernode");
    }
}

/// The release ringmesh-load, on CPU 0 when there are two.
fn load_generator() -> Command {
    if two_cpus() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(release_bin("ringmesh-load"));
        c
    } else {
        Command::new(release_bin("ringmesh-load"))
    }
}

/// `ringmesh_overload_shed_total` of every node, for the reasons that
/// start with `reason` (all of them with "").
fn shed_for(farm: &Farm, reason: &str) -> f64 {
    let label = format!("ringmesh_overload_shed_total{{reason=\"{reason}");
    farm.nodes
        .iter()
        .flat_map(|n| {
            http_get(n.metrics, "/metrics")
                .1
                .lines()
                .filter(|l| l.starts_with(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `ringmesh_overload_shed_total`, all reasons.
fn shed(farm: &Farm) -> f64 {
    shed_for(farm, "")
}

/// Pauses a process for `pause` every `every` until dropped (then resumes
/// it): a pod that spends its CPU quota and is throttled, a host that
/// schedules something else.
struct Pauser {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Pauser {
    fn start(pid: u32, every: Duration, pause: Duration) -> Pauser {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let pid = Pid::from_raw(pid as i32);
            let mut pauses = 0;
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(every - pause);
                let _ = kill(pid, Signal::SIGSTOP);
                std::thread::sleep(pause);
                let _ = kill(pid, Signal::SIGCONT);
                pauses += 1;
            }
            pauses
        });
        Pauser {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Pauser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// sipp `reg_auth.xml` over UDP: `count` digest registrations of
/// user0..user{users-1} at `rate`/s. Returns whether every one succeeded.
fn sipp_registrations(farm: &Farm, users: u32, rate: u32, count: u32) -> bool {
    common::require("sipp", "sip-tester");
    let work = tempfile::tempdir().unwrap();
    let csv = Command::new(sipp_dir().join("gen_users.sh"))
        .args([&users.to_string(), "ringmesh.test", "secret"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(work.path().join("users.csv"), csv).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("70");
    if two_cpus() {
        cmd.args(["taskset", "-c", "0"]);
    }
    let (rate, count) = (rate.to_string(), count.to_string());
    let target = farm.sip().to_string();
    cmd.args([
        "sipp",
        "-sf",
        sipp_dir().join("reg_auth.xml").to_str().unwrap(),
        "-inf",
        "users.csv",
        "-i",
        "127.0.0.1",
        "-t",
        "u1",
        "-r",
        &rate,
        "-rp",
        "1000",
        "-m",
        &count,
        "-l",
        "5000",
        "-auth_uri",
        "ringmesh.test",
        "-trace_err",
        "-error_file",
        "errors.log",
        "-nostdin",
        "-timeout",
        "60s",
        "-timeout_error",
        &target,
    ]);
    let ok = cmd
        .current_dir(work.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sipp is installed (make test installs sip-tester)")
        .success();
    if !ok {
        eprintln!(
            "sipp errors:\n{}",
            std::fs::read_to_string(work.path().join("errors.log"))
                .unwrap_or_default()
                .chars()
                .take(4000)
                .collect::<String>()
        );
    }
    ok
}

#[test]
#[ignore = "slow: needs sipp, ringmesh-load and the release build"]
fn a_bursty_storm_within_capacity_gets_no_503() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let farm = farm(2000);
    // 2,000 REGISTERs a second (each answered 401, then 200) for 10 s,
    // while the node is frozen for 60 ms every half second.
    let pauser = Pauser::start(
        farm.nodes[0].pid,
        Duration::from_millis(500),
        Duration::from_millis(60),
    );
    let ok = sipp_registrations(&farm, 2000, 2000, 20_000);
    let pauses = pauser.finish();
    eprintln!("the node was paused {pauses} times");
    assert!(pauses >= 15, "the storm ran through the pauses");
    assert!(ok, "every registration of the bursty storm succeeded");
    assert_eq!(shed(&farm), 0.0, "nothing was shed");
}

/// REGISTERs from a socket of its own while the node is overloaded, until
/// one is shed; returns that 503.
fn probe_until_shed(node: SocketAddr, within: Duration) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = s.local_addr().unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 65536];
    while started.elapsed() < within {
        let id = rand_u64();
        let msg = format!(
            "REGISTER sip:ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe{id:x}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:user1@ringmesh.test>;tag={id:x}\r\nTo: <sip:user1@ringmesh.test>\r\n\
             Call-ID: probe-{id:x}\r\nCSeq: 1 REGISTER\r\nContact: <sip:user1@{me}>\r\nContent-Length: 0\r\n\r\n"
        );
        s.send_to(msg.as_bytes(), node).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && status_of(&buf[..n]) == Some(503)
        {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
#[ignore = "slow: needs sipp, ringmesh-load and the release build"]
fn a_real_overload_is_shed_with_retry_after_and_the_node_keeps_its_capacity() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let farm = farm(5000);
    let node = farm.sip();
    // Warm the subscriber cache: a first pass of every user at a rate the
    // node takes easily.
    assert!(
        sipp_registrations(&farm, 5000, 2500, 5000),
        "the warm-up registrations succeeded"
    );
    assert_eq!(shed(&farm), 0.0, "nothing shed at 2,500/s");

    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("load.json");
    let mut cmd = load_generator();
    cmd.args([
        "--target",
        &node.to_string(),
        "--users",
        "5000",
        "--password",
        "secret",
        "--refresh",
        "--rate",
        "60000",
        "--duration",
        "6",
        "--timeout-ms",
        "8000",
        "--drain-secs",
        "20",
        "--no-progress",
        "--json-out",
        report.to_str().unwrap(),
    ]);
    let load = std::thread::spawn(move || cmd.output().expect("ringmesh-load runs"));
    let answer = probe_until_shed(node, Duration::from_secs(6));
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "ringmesh-load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!(
        "offered {}/s, sent {}/s, served {}/s, ops {}, messages {}, register latency {}",
        r["measure"]["offered_rate"],
        r["measure"]["achieved_send_rate"],
        r["measure"]["completed_rate"],
        r["ops"],
        r["messages"],
        r["latency_us"]["register"]
    );

    let answer = answer.expect("a REGISTER sent during the overload was shed");
    assert!(
        answer.contains("\r\nRetry-After: 5\r\n"),
        "the 503 asks the client to come back later: {answer}"
    );
    let shed_total = shed(&farm);
    let status_503 = r["status"]["REGISTER"]["503"].as_f64().unwrap_or(0.0);
    assert!(
        status_503 > 0.0 && shed_total >= status_503,
        "the excess was shed"
    );
    let sent = r["measure"]["achieved_send_rate"].as_f64().unwrap();
    let served = r["measure"]["completed_rate"].as_f64().unwrap();
    // A real overload: half as much again as the node serves (it serves
    // about 35,000 digest REGISTERs/s on a 2-CPU CI machine; the generator
    // sends about 59,000/s of its 60,000).
    assert!(
        sent >= 1.5 * served,
        "the node was offered at least 1.5x what it could serve ({sent}/s vs {served}/s)"
    );
    // No collapse: every request was answered, none waited long enough to
    // be retransmitted, and the node served at least what it serves when
    // not overloaded.
    assert_eq!(r["ops"]["timeouts"], 0, "every request was answered");
    assert_eq!(
        r["messages"]["retransmissions"], 0,
        "admitted requests were answered before T1"
    );
    assert!(
        served >= 2500.0,
        "goodput under overload ({served}/s) at least the unloaded rate"
    );

    // The storm over, nothing is shed any more.
    let before = shed(&farm);
    assert!(
        sipp_registrations(&farm, 5000, 1000, 3000),
        "registrations after the storm succeeded"
    );
    assert_eq!(shed(&farm), before, "the node recovered");
}

/// ringmesh-load from CPU 0: `count` REGISTERs of distinct users at
/// `rate`/s, spread over the farm's nodes. Returns its JSON report.
fn register_storm(farm: &Farm, rate: u32, count: u32) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("load.json");
    let mut cmd = load_generator();
    for n in &farm.nodes {
        cmd.args(["--target", &n.sip.to_string()]);
    }
    let (count, rate) = (count.to_string(), rate.to_string());
    let out = cmd
        .args(["--users", &count, "--count", &count, "--rate", &rate])
        .args([
            "--duration",
            "10",
            "--timeout-ms",
            "8000",
            "--drain-secs",
            "10",
        ])
        .args(["--no-progress", "--json-out", report.to_str().unwrap()])
        .output()
        .expect("ringmesh-load runs");
    assert!(
        out.status.success(),
        "ringmesh-load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

#[test]
#[ignore = "slow: needs ringmesh-load and the release build"]
fn the_rings_queue_is_shed_for_its_wait_whatever_its_count() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A ring whose operations wait longer than the target (1 ms here, so
    // that a storm near what the farm carries on one core, 20,000/s, makes
    // them wait that long; at 12,000/s a quiet machine keeps most waits
    // under it, and nothing is shed); the
    // count bound is out of reach and the core's own queue is judged
    // against 10 s: only the ring's wait can shed.
    let farm = Farm::start(
        &release_bin("ringmesh"),
        &[
            "--nodes",
            "3",
            "--replicas",
            "3",
            "--auth",
            "none",
            "--log",
            "warn",
            "--trusted",
            "load=127.0.0.1",
        ],
        &[
            ("RINGMESH_OVERLOAD_PENDING_DELAY_MS", "1"),
            ("RINGMESH_OVERLOAD_DELAY_INTERVAL_MS", "10"),
            ("RINGMESH_OVERLOAD_MAX_PENDING", "1000000"),
            ("RINGMESH_OVERLOAD_QUEUE_DELAY_MS", "10000"),
        ],
    );
    for n in &farm.nodes {
        pin(n.pid);
    }
    let r = register_storm(&farm, 20_000, 60_000);
    let refused = r["status"]["REGISTER"]["503"].as_f64().unwrap_or(0.0);
    let pending = shed_for(&farm, "pending");
    eprintln!(
        "ops {}, 503s {refused}, shed for the ring's wait {pending}, register latency {}",
        r["ops"], r["latency_us"]["register"]
    );
    assert!(pending > 0.0, "the ring's wait shed new REGISTERs");
    assert_eq!(shed(&farm), pending, "nothing else did");
    assert!(refused > 0.0, "phones were told 503");
    assert!(
        r["ops"]["succeeded"].as_f64().unwrap() > 0.0,
        "admitted REGISTERs were served"
    );
    assert_eq!(r["ops"]["timeouts"], 0, "every request was answered");

    // Once the storm is over the ring's queue is empty: phones are
    // served, even though each answer still takes about the target (one
    // slow answer after another, the queue empty between them, is not a
    // standing queue).
    std::thread::sleep(Duration::from_secs(1));
    let before = shed(&farm);
    let r = register_storm(&farm, 20, 60);
    eprintln!(
        "after the storm: register latency {}",
        r["latency_us"]["register"]
    );
    assert_eq!(
        r["ops"]["succeeded"], 60,
        "registrations after the storm: {}",
        r["ops"]
    );
    assert_eq!(shed(&farm), before, "nothing shed once the ring drained");
}
