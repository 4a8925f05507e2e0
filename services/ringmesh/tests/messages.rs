//! Messages for an offline subscriber on a real farm (`ringmesh dev`, three
//! nodes): 100 MESSAGEs to bob while he has no device, a kill -9 of the
//! supernode that took them all, then bob registers at another node and
//! gets every one, in the order they were sent, each with the id its 202
//! gave (a message delivered twice carries the same id). Phones are raw
//! SIP on UDP sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::metric_line;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::phone::{UdpPhone, header};

const PASSWORD: &str = "secret";
const MESSAGES: usize = 100;

#[test]
#[ignore = "slow: a farm"]
fn a_hundred_messages_for_an_offline_phone_survive_a_kill_and_arrive_in_order() {
    let farm = common::start_farm(&["--nodes", "3"], &[]);
    let (n0, n2) = (farm.nodes[0].clone(), farm.nodes[2].clone());
    let alice = UdpPhone::on("127.0.0.1");
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let text = alice
            .request(
                "MESSAGE",
                "bob",
                "alice",
                &format!("Content-Type: text/plain\r\nX-Seq: {i}\r\n"),
            )
            .replace("Content-Length: 0\r\n\r\n", &{
                let body = format!("note {i}");
                format!("Content-Length: {}\r\n\r\n{body}", body.len())
            });
        let (status, r) = alice
            .authenticated(n0.sip, &text, "alice", PASSWORD)
            .expect("an answer");
        assert_eq!(status, 202, "message {i}: {r}");
        sent.push(header(&r, "Ringmesh-Message-Id").expect("an id in the 202"));
    }
    let unique: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), MESSAGES, "every message has its own id");

    // The node that took every message dies.
    kill(Pid::from_raw(n0.pid as i32), Signal::SIGKILL).unwrap();

    // Bob's phone registers at another node and takes what comes.
    let bob = UdpPhone::on("127.0.0.1");
    let registered = Instant::now();
    let deadline = registered + Duration::from_secs(60);
    let status = loop {
        match bob.register(n2.sip, "bob", PASSWORD) {
            Some(200) => break 200,
            // The farm may answer 503 while it notices the dead node.
            other if Instant::now() < deadline => {
                eprintln!("REGISTER: {other:?}; again");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => panic!("bob cannot register: {other:?}"),
        }
    };
    assert_eq!(status, 200);
    let mut arrivals: Vec<(String, String)> = Vec::new();
    let mut by_request: HashMap<(String, String), String> = HashMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    while first_seen.len() < MESSAGES && Instant::now() < deadline {
        let Some((req, from)) = bob.next_request(Duration::from_millis(500)) else {
            continue;
        };
        if !req.starts_with("MESSAGE ") {
            continue;
        }
        bob.answer(&req, from, 200, "");
        let id = header(&req, "Ringmesh-Message-Id").expect("an id on every delivery");
        let body = req.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        let request = (
            header(&req, "Call-ID").unwrap(),
            header(&req, "CSeq").unwrap(),
        );
        // The same request (a retransmission, or a delivery repeated after
        // the kill) always carries the same id.
        let seen = by_request.entry(request).or_insert_with(|| id.clone());
        assert_eq!(*seen, id, "one message, one id");
        if !first_seen.contains(&id) {
            first_seen.push(id.clone());
        }
        arrivals.push((id, body));
    }
    eprintln!(
        "{} messages delivered ({} arrivals) in {:?} after the REGISTER",
        first_seen.len(),
        arrivals.len(),
        registered.elapsed()
    );
    assert_eq!(first_seen, sent, "all {MESSAGES}, in the order sent");
    for (id, body) in &arrivals {
        let i = sent.iter().position(|s| s == id).unwrap();
        assert_eq!(body, &format!("note {i}"), "message {i} is what was sent");
    }
    // Every one was removed on its 200: a new REGISTER brings none again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bob.register(n2.sip, "bob", PASSWORD), Some(200));
    let again = bob.next_request(Duration::from_secs(2));
    assert!(
        again
            .as_ref()
            .is_none_or(|(r, _)| !r.starts_with("MESSAGE ")),
        "delivered messages came again: {again:?}"
    );
    let delivered = metric_line(
        n2.metrics,
        "ringmesh_sip_offline_messages_total{event=\"delivered\"",
    )
    .unwrap_or_default();
    assert!(
        delivered >= MESSAGES as f64,
        "bob's edge counts its deliveries: {delivered}"
    );
}
