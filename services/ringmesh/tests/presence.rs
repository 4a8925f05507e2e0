//! Presence on a real farm (`ringmesh dev`, three nodes): alice watches
//! bob from node 0 (allowed with `ringmesh ctl presence allow`) and sees
//! three changes bob's phone publishes through node 1, in order; user3,
//! blocked, gets no state; after a kill -9 of node 0, the node that
//! accepted alice's subscription, a fourth change still reaches her.
//! Phones are raw SIP on UDP sockets.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ctl;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::phone::{UdpPhone, header};

const PASSWORD: &str = "secret";

fn pidf(note: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         entity=\"sip:bob@ringmesh.test\"><tuple id=\"phone\"><status><basic>open</basic>\
         </status><note>{note}</note></tuple></presence>"
    )
}

/// A NOTIFY as the watcher got it: when, its state and its note.
struct Notify {
    at: Instant,
    state: String,
    note: Option<String>,
}

/// The watcher's phone: answers every NOTIFY 200 and reports it.
fn watcher(phone: UdpPhone, tx: mpsc::Sender<Notify>, until: Instant) {
    std::thread::spawn(move || {
        while Instant::now() < until {
            let Some((req, from)) = phone.next_request(Duration::from_millis(200)) else {
                continue;
            };
            if !req.starts_with("NOTIFY ") {
                continue;
            }
            phone.answer(&req, from, 200, "");
            let note = req
                .split("<note>")
                .nth(1)
                .and_then(|r| r.split("</note>").next())
                .map(str::to_string);
            let state = header(&req, "Subscription-State").unwrap_or_default();
            if tx
                .send(Notify {
                    at: Instant::now(),
                    state,
                    note,
                })
                .is_err()
            {
                return;
            }
        }
    });
}

/// `user`'s phone subscribes to bob's presence at `node`: the status.
fn subscribe(phone: &UdpPhone, node: std::net::SocketAddr, user: &str) -> u16 {
    let text = phone.request(
        "SUBSCRIBE",
        "bob",
        user,
        "Event: presence\r\nExpires: 600\r\nAccept: application/pidf+xml\r\n",
    );
    phone
        .authenticated(node, &text, user, PASSWORD)
        .map(|(s, _)| s)
        .expect("an answer")
}

/// bob publishes `note` at `node` (replacing `etag`): the new tag, and
/// when the 200 came.
fn publish(
    bob: &UdpPhone,
    node: std::net::SocketAddr,
    etag: Option<&str>,
    note: &str,
) -> (String, Instant) {
    let if_match = etag.map_or(String::new(), |t| format!("SIP-If-Match: {t}\r\n"));
    let body = pidf(note);
    let text = bob
        .request(
            "PUBLISH",
            "bob",
            "bob",
            &format!("Event: presence\r\nExpires: 600\r\n{if_match}Content-Type: application/pidf+xml\r\n"),
        )
        .replace(
            "Content-Length: 0\r\n\r\n",
            &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
        );
    let (status, r) = bob
        .authenticated(node, &text, "bob", PASSWORD)
        .expect("an answer");
    assert_eq!(status, 200, "{r}");
    (header(&r, "SIP-ETag").expect("a SIP-ETag"), Instant::now())
}

/// The next NOTIFY with a note, within `limit`.
fn next_note(rx: &mpsc::Receiver<Notify>, limit: Duration) -> Notify {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no NOTIFY within {limit:?}"));
        let n = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no NOTIFY within {limit:?}"));
        if n.note.is_some() {
            return n;
        }
    }
}

#[test]
#[ignore = "slow: a farm"]
fn a_watcher_sees_changes_made_elsewhere_a_blocked_one_nothing_and_the_accepting_node_may_die() {
    let farm = common::start_farm(&["--nodes", "3", "--users", "5"], &[]);
    let (n0, n1) = (farm.nodes[0].clone(), farm.nodes[1].clone());
    let admin = farm.nodes[2].admin.clone();
    let rule = |decision: &str, watcher: &str| {
        let (code, _, err) = ctl(&[
            "--admin",
            &admin,
            "presence",
            decision,
            "sip:bob@ringmesh.test",
            watcher,
        ]);
        assert_eq!(code, 0, "{err}");
    };
    rule("allow", "sip:alice@ringmesh.test");
    rule("block", "sip:user3@ringmesh.test");
    let until = Instant::now() + Duration::from_secs(120);

    // alice watches from node 0.
    let alice = UdpPhone::on("127.0.0.1");
    let (tx, rx) = mpsc::channel();
    let alice_listener = alice.try_clone();
    assert_eq!(subscribe(&alice, n0.sip, "alice"), 200);
    watcher(alice_listener, tx, until);
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first NOTIFY");
    assert!(first.state.starts_with("active"), "{}", first.state);

    // user3, blocked, gets a rejection and no state.
    let user3 = UdpPhone::on("127.0.0.1");
    assert_eq!(subscribe(&user3, n0.sip, "user3"), 200);
    let (req, from) = user3
        .next_request(Duration::from_secs(10))
        .expect("a NOTIFY for user3");
    user3.answer(&req, from, 200, "");
    assert_eq!(
        header(&req, "Subscription-State").as_deref(),
        Some("terminated;reason=rejected")
    );
    assert!(!req.contains("<presence"), "no state: {req}");

    // bob's phone publishes three changes through node 1.
    let bob = UdpPhone::on("127.0.0.1");
    let mut etag = None;
    let mut latencies = Vec::new();
    for note in ["in a meeting", "at lunch", "back at my desk"] {
        let (tag, done) = publish(&bob, n1.sip, etag.as_deref(), note);
        etag = Some(tag);
        let got = next_note(&rx, Duration::from_secs(10));
        assert_eq!(got.note.as_deref(), Some(note), "in order");
        latencies.push(got.at.saturating_duration_since(done));
    }
    eprintln!("PUBLISH 200 to NOTIFY at the watcher: {latencies:?}");
    assert!(
        user3.next_request(Duration::from_millis(500)).is_none(),
        "the blocked watcher hears nothing more"
    );

    // The node that accepted alice's subscription dies; a change still
    // reaches her.
    kill(Pid::from_raw(n0.pid as i32), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (tag, done) = loop {
        let body = pidf("after the kill");
        let text = bob
            .request(
                "PUBLISH",
                "bob",
                "bob",
                &format!(
                    "Event: presence\r\nExpires: 600\r\nSIP-If-Match: {}\r\nContent-Type: application/pidf+xml\r\n",
                    etag.as_deref().unwrap()
                ),
            )
            .replace(
                "Content-Length: 0\r\n\r\n",
                &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
            );
        match bob.authenticated(n1.sip, &text, "bob", PASSWORD) {
            Some((200, r)) => break (header(&r, "SIP-ETag").unwrap(), Instant::now()),
            // The ring may answer 503 while it notices the dead node.
            other if Instant::now() < deadline => {
                eprintln!("PUBLISH after the kill: {other:?}; again");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => panic!("bob cannot publish after the kill: {other:?}"),
        }
    };
    assert!(!tag.is_empty());
    // The farm first has to notice the death (the key's notifier or the
    // watcher's edge may have been node 0): allowed a minute.
    let got = next_note(&rx, Duration::from_secs(60));
    assert_eq!(got.note.as_deref(), Some("after the kill"));
    eprintln!(
        "after the kill: PUBLISH 200 to NOTIFY {:?}",
        got.at.saturating_duration_since(done)
    );
}
