//! Call records on a real farm (`ringmesh dev`, two nodes): 1,000 calls
//! from alice's node give 1,000 final records with the right results, and
//! a kill -9 of that node in the middle of a run of calls loses no record
//! older than the loss window; the call it left up is recorded as
//! `edge_lost` when it starts again. Phones are raw SIP on UDP sockets.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{NodeInfo, http_get, metric_line, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::phone::{UdpPhone, header};
use serde_json::Value;

const PASSWORD: &str = "secret";
/// The group-commit window the farm runs with (the default).
const COMMIT: Duration = Duration::from_millis(100);

/// A node's call-record directory: `cdr/` in its data directory.
fn cdr_dir(n: &NodeInfo) -> PathBuf {
    let at = n.argv.iter().position(|a| a == "--data").expect("--data");
    Path::new(&n.argv[at + 1]).join("cdr")
}

fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Bob's phone: answers every INVITE (200, or 486 to a Subject of
/// "busy") and every BYE, until `stop`.
fn answering(bob: UdpPhone, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some((req, from)) = bob.next_request(Duration::from_millis(200)) else {
                continue;
            };
            if req.starts_with("INVITE ") {
                if header(&req, "Subject").as_deref() == Some("busy") {
                    bob.answer(&req, from, 486, "");
                } else {
                    bob.answer(
                        &req,
                        from,
                        200,
                        &format!("Contact: <sip:bob@{}>\r\n", bob.me),
                    );
                }
            } else if req.starts_with("BYE ") {
                bob.answer(&req, from, 200, "");
            }
        }
    })
}

/// Alice calls bob at `node` (busy when `busy`); an answered call is
/// ACKed and, with `hang_up`, ended by a BYE. The final status and the
/// Call-ID; `None` when the farm did not answer.
fn call(alice: &UdpPhone, node: SocketAddr, busy: bool, hang_up: bool) -> Option<(u16, String)> {
    let subject = if busy { "Subject: busy\r\n" } else { "" };
    let invite = alice.request("INVITE", "bob", "alice", subject);
    let call_id = header(&invite, "Call-ID").unwrap();
    let (status, ok) = alice.authenticated(node, &invite, "alice", PASSWORD)?;
    if status != 200 {
        return Some((status, call_id));
    }
    // The INVITE that was answered is the one with credentials (CSeq 2).
    let sent = invite.replacen("CSeq: 1 INVITE", "CSeq: 2 INVITE", 1);
    let ack = alice.in_dialog("ACK", 2, &sent, &ok, "");
    alice.sock.send_to(ack.as_bytes(), node).ok()?;
    if hang_up {
        let bye = alice.in_dialog("BYE", 3, &sent, &ok, "");
        let r = alice.ask(node, &bye, Duration::from_secs(5))?;
        if !r.starts_with("SIP/2.0 200") {
            return None;
        }
    }
    Some((status, call_id))
}

#[test]
#[ignore = "slow: a farm"]
fn a_thousand_calls_give_a_thousand_final_records_with_their_results() {
    let farm = common::start_farm(&["--nodes", "2"], &[]);
    let (n0, n1) = (&farm.nodes[0], &farm.nodes[1]);
    let alice = UdpPhone::on("127.0.0.1");
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(n1.sip, "bob", PASSWORD), Some(200));
    let stop = Arc::new(AtomicBool::new(false));
    let callee = answering(bob, stop.clone());
    let mut busy = 0;
    for i in 0..1000 {
        let is_busy = i % 10 == 9;
        let (status, _) = call(&alice, n0.sip, is_busy, true).expect("an answered call");
        assert_eq!(status, if is_busy { 486 } else { 200 });
        busy += usize::from(is_busy);
    }
    stop.store(true, Ordering::Relaxed);
    callee.join().unwrap();
    std::thread::sleep(COMMIT * 3);

    // Alice's node is the originating edge: it keeps every record.
    let got = records(&cdr_dir(n0));
    assert!(records(&cdr_dir(n1)).is_empty(), "bob's edge writes none");
    let finals: Vec<&Value> = got.iter().filter(|v| v["record"] == "final").collect();
    assert_eq!(finals.len(), 1000, "one final record per call");
    let completed = finals.iter().filter(|v| v["result"] == "completed").count();
    let failed: Vec<&&Value> = finals.iter().filter(|v| v["result"] == "failed").collect();
    assert_eq!((completed, failed.len()), (1000 - busy, busy));
    assert!(
        failed
            .iter()
            .all(|v| v["status"] == 486 && v["answer_ms"].is_null())
    );
    let interims = got.iter().filter(|v| v["record"] == "interim").count();
    assert_eq!(
        interims,
        1000 - busy,
        "one interim record per answered call"
    );
    let one = finals.iter().find(|v| v["result"] == "completed").unwrap();
    assert_eq!(one["caller"], "<sip:alice@ringmesh.test>");
    assert_eq!(one["callee"], "sip:bob@ringmesh.test");
    assert_eq!(one["ended_by"], "caller");
    assert_eq!(one["nodes"][0], n0.node_id);
    assert_eq!(one["nodes"][1], n1.node_id, "the path crosses bob's edge");
    let icids: std::collections::HashSet<&str> =
        finals.iter().filter_map(|v| v["icid"].as_str()).collect();
    assert_eq!(
        icids.len(),
        1000,
        "each attempt has a charging id of its own"
    );
    assert_eq!(
        metric_line(
            n0.metrics,
            "ringmesh_cdr_records_total{node=\"sn0\",record=\"final\"}"
        )
        .or_else(|| metric_line(n0.metrics, "ringmesh_cdr_records_total{record=\"final\""))
        .unwrap_or(0.0),
        1000.0
    );
    assert_eq!(metric_line(n0.metrics, "ringmesh_cdr_calls_up"), Some(0.0));
    drop(farm);
}

/// A node restarted from the command line `ringmesh dev` printed.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "slow: a farm, kill -9"]
fn a_kill_9_of_the_edge_loses_no_record_older_than_the_loss_window() {
    let farm = common::start_farm(&["--nodes", "2"], &[]);
    let (n0, n1) = (farm.nodes[0].clone(), farm.nodes[1].clone());
    let dir = cdr_dir(&n0);
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(n1.sip, "bob", PASSWORD), Some(200));
    let stop = Arc::new(AtomicBool::new(false));
    let callee = answering(bob, stop.clone());

    // Calls one after the other; each one's Call-ID and when it was over.
    let calling = std::thread::spawn({
        let node = n0.sip;
        move || {
            let alice = UdpPhone::on("127.0.0.1");
            let mut done = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match call(&alice, node, false, true) {
                    Some((200, id)) => done.push((id, Instant::now())),
                    _ => break,
                }
            }
            done
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    // One call stays up: its record is interim when the edge dies.
    let held = UdpPhone::on("127.0.0.1");
    let (status, held_id) = call(&held, n0.sip, false, false).expect("the held call");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    kill(Pid::from_raw(n0.pid as i32), Signal::SIGKILL).unwrap();
    let done = calling.join().unwrap();
    assert!(done.len() > 50, "calls before the kill: {}", done.len());

    // Every call over before the window preceding the kill has its final
    // record on disk; those inside the window may or may not.
    let margin = COMMIT * 2;
    let on_disk: std::collections::HashSet<String> = records(&dir)
        .iter()
        .filter(|v| v["record"] == "final")
        .filter_map(|v| v["call_id"].as_str().map(str::to_string))
        .collect();
    let old: Vec<&String> = done
        .iter()
        .filter(|(_, at)| *at + margin < killed_at)
        .map(|(id, _)| id)
        .collect();
    let lost: Vec<&&String> = old.iter().filter(|id| !on_disk.contains(**id)).collect();
    let recent = done.len() - old.len();
    eprintln!(
        "calls over before the kill: {}; older than {} ms: {}, lost: {}; in the last {} ms: {recent}",
        done.len(),
        margin.as_millis(),
        old.len(),
        lost.len(),
        margin.as_millis()
    );
    assert!(lost.is_empty(), "records lost: {lost:?}");
    let held_records: Vec<Value> = records(&dir)
        .into_iter()
        .filter(|v| v["call_id"] == held_id.as_str())
        .collect();
    assert_eq!(
        held_records.len(),
        1,
        "the held call's interim record: {held_records:?}"
    );
    assert_eq!(held_records[0]["record"], "interim");

    // The node starts again: the held call is closed as edge_lost.
    wait_until("the killed node gone", Duration::from_secs(30), || {
        !Path::new(&format!("/proc/{}", n0.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", n0.pid))
                .is_ok_and(|s| s.contains(") Z "))
                && std::fs::read_dir(format!("/proc/{}/task", n0.pid))
                    .is_ok_and(|tasks| tasks.count() <= 1)
    });
    let _again = Restarted(
        Command::new(&n0.argv[0])
            .args(&n0.argv[1..])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the node ready again", Duration::from_secs(30), || {
        http_get(n0.metrics, "/readyz").0 == 200
    });
    let closed: Vec<Value> = records(&dir)
        .into_iter()
        .filter(|v| v["call_id"] == held_id.as_str() && v["record"] == "final")
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["result"], "edge_lost");
    assert_eq!(closed[0]["ended_by"], "farm");
    stop.store(true, Ordering::Relaxed);
    callee.join().unwrap();
    drop(farm);
}
