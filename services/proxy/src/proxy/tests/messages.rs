//! Messages for subscribers with no reachable device: kept (202 with an
//! id), delivered in order when a device registers, removed on 2xx, kept
//! on a temporary failure and dropped on a refusal; the cap; and what an
//! attacker cannot do with it.

use super::*;
use crate::location::{Located, LocationOp};
use crate::proxy::MESSAGE_ID_HEADER;

/// `from`'s phone on `flow` sends a MESSAGE with `body` to `to` (a user
/// or a whole Request-URI) at node `n`, authenticated: the final response.
fn send(h: &mut Harness, n: u8, flow: FlowRef, from: &str, to: &str, body: &str) -> Message {
    let call = format!("m{}", unique());
    let mut text = message_text(flow, from, to, &call).replace(
        "Content-Length: 2\n\nhi",
        &format!("Content-Length: {}\n\n{body}", body.len()),
    );
    if to.starts_with("sip:") {
        text = text.replace(&format!("sip:{to}@{DOMAIN}"), to);
    }
    h.recv(n, &text, Dest::Flow(flow));
    let challenge = h.final_to(flow);
    assert_eq!(challenge.status(), Some(407));
    let ruri = String::from_utf8_lossy(msg(&text).request_uri_bytes()).into_owned();
    let auth = authorization(&challenge, from, "secret", "MESSAGE", &ruri);
    let again = text
        .replace("CSeq: 1 MESSAGE", "CSeq: 2 MESSAGE")
        .replace("branch=z9hG4bK", "branch=z9hG4bK2")
        .replacen("Content-Type:", &format!("{auth}Content-Type:"), 1);
    h.recv(n, &again, Dest::Flow(flow));
    h.final_to(flow)
}

fn message_id(m: &Message) -> String {
    let raw = String::from_utf8_lossy(m.raw()).into_owned();
    raw.lines()
        .find_map(|l| l.strip_prefix("Ringmesh-Message-Id: "))
        .unwrap_or_else(|| panic!("no {MESSAGE_ID_HEADER:?} in {raw}"))
        .trim()
        .to_string()
}

/// The MESSAGEs sent down `flow` since the last `take` (a retransmission
/// counts once), each answered `status` at the node that sent it, one at
/// a time as a phone would.
fn deliveries(h: &mut Harness, flow: FlowRef, status: u16) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    loop {
        let next = h.requests().into_iter().find(|s| {
            s.msg.method().as_bytes() == b"MESSAGE"
                && s.dest.peer() == Some(flow.peer())
                && got.last().is_none_or(|m| m.raw() != s.msg.raw())
        });
        let Some(s) = next else { return got };
        h.recv(s.node, &ok_to(&s.msg, status), Dest::Flow(flow));
        got.push(s.msg);
    }
}

fn kept(h: &mut Harness, user: &str) -> usize {
    let aor = Aor::parse(format!("sip:{user}@{DOMAIN}").as_bytes()).unwrap();
    let now_ms = h.now.wall_ms;
    match h.store.execute(LocationOp::Mailbox { aor, now_ms }) {
        Ok(Located::Mailbox(list)) => list.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn messages_for_an_offline_subscriber_are_kept_then_delivered_in_order_on_another_node() {
    let mut h = Harness::farm();
    let alice = udp_leaf(1);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = send(&mut h, 1, alice, "alice", "bob", &format!("note {i}"));
        assert_eq!(r.status(), Some(202), "{r:?}");
        ids.push(message_id(&r));
    }
    assert_eq!(kept(&mut h, "bob"), 3);
    assert_eq!(h.metrics[0].count("Mail(Stored)"), 3);

    // Bob's phone registers at node 2: node 2 delivers, oldest first.
    let bob = udp_leaf(2);
    assert_eq!(
        h.register_at(2, bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    let got = deliveries(&mut h, bob, 200);
    let got_ids: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(got_ids, ids, "every message, in the order sent");
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect();
    assert_eq!(bodies, ["note 0", "note 1", "note 2"]);
    let first = &got[0];
    assert!(
        header(first, HeaderName::From)
            .unwrap()
            .starts_with(&format!("<sip:alice@{DOMAIN}>"))
    );
    assert_eq!(
        header(first, HeaderName::PAssertedIdentity).as_deref(),
        Some(format!("<sip:alice@{DOMAIN}>").as_str()),
        "the identity the farm asserted when it took the message"
    );
    assert_eq!(kept(&mut h, "bob"), 0, "each 2xx removed its message");
    assert_eq!(h.metrics[1].count("Mail(Delivered)"), 3);

    // Now reachable: the next MESSAGE goes straight to the phone.
    let call = format!("m{}", unique());
    h.send_authenticated(alice, "alice", &message_text(alice, "alice", "bob", &call));
    assert!(
        h.requests()
            .iter()
            .any(|s| s.msg.method().as_bytes() == b"MESSAGE" && s.dest.peer() == Some(bob.peer()))
    );
    assert_eq!(kept(&mut h, "bob"), 0);
}

#[test]
fn a_device_that_does_not_take_a_message_now_gets_it_again_with_the_same_id() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    let ids: Vec<String> = (0..2)
        .map(|i| message_id(&send(&mut h, 1, alice, "alice", "bob", &format!("n{i}"))))
        .collect();
    let bob = udp_leaf(2);
    h.register(bob, "bob", "<sip:bob@192.0.2.2>");
    // Busy: the delivery stops after the first; both stay kept.
    let got = deliveries(&mut h, bob, 486);
    assert_eq!(got.len(), 1);
    assert_eq!(kept(&mut h, "bob"), 2);
    assert_eq!(h.metrics[0].count("Mail(Deferred)"), 1);
    // The next REGISTER delivers both, the first again with its id,
    // Call-ID and CSeq: the phone can tell it is the same message.
    let call = format!("reg-{}", unique());
    let contact = "<sip:bob@192.0.2.2>";
    h.recv(
        1,
        &register_text(bob, "bob", contact, &call, 1, "", 600),
        Dest::Flow(bob),
    );
    let c = h.final_to(bob);
    let auth = authorization(&c, "bob", "secret", "REGISTER", &format!("sip:{DOMAIN}"));
    let again = register_text(bob, "bob", contact, &call, 2, &auth, 600);
    h.recv(1, &again, Dest::Flow(bob));
    assert_eq!(h.final_to(bob).status(), Some(200));
    let again = deliveries(&mut h, bob, 200);
    let again_ids: Vec<String> = again.iter().map(message_id).collect();
    assert_eq!(again_ids, ids);
    assert_eq!(again[0].call_id(), got[0].call_id());
    assert_eq!(again[0].cseq(), got[0].cseq());
    assert_eq!(kept(&mut h, "bob"), 0);
}

#[test]
fn a_message_the_device_refuses_for_good_is_dropped_and_the_next_goes() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    for i in 0..2 {
        send(&mut h, 1, alice, "alice", "bob", &format!("n{i}"));
    }
    let bob = udp_leaf(2);
    h.register(bob, "bob", "<sip:bob@192.0.2.2>");
    assert_eq!(deliveries(&mut h, bob, 415).len(), 2);
    assert_eq!(kept(&mut h, "bob"), 0);
    assert_eq!(h.metrics[0].count("Mail(RefusedByDevice)"), 2);
}

#[test]
fn a_message_for_a_number_of_an_implicit_set_waits_under_the_set() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    let to = format!("sip:+15550100@{DOMAIN};user=phone");
    let r = send(&mut h, 1, alice, "alice", &to, "for the number");
    assert_eq!(r.status(), Some(202));
    assert_eq!(kept(&mut h, "erin"), 1, "kept under the set's key");
    let erin = udp_leaf(5);
    h.register(erin, "erin", "<sip:erin@192.0.2.5>");
    let got = deliveries(&mut h, erin, 200);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body(), b"for the number");
}

#[test]
fn a_flood_fills_the_mailbox_to_its_cap_and_no_further() {
    let mut h = Harness::new();
    h.node(1).policy.offline_messages = 3;
    let alice = udp_leaf(1);
    let statuses: Vec<u16> = (0..5)
        .map(|i| {
            send(&mut h, 1, alice, "alice", "bob", &format!("n{i}"))
                .status()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses, [202, 202, 202, 480, 480]);
    assert_eq!(kept(&mut h, "bob"), 3);
    assert_eq!(h.metrics[0].count("Mail(Full)"), 2);
    // Another subscriber's mailbox is its own.
    let r = send(&mut h, 1, alice, "alice", "dave", "for dave");
    assert_eq!(r.status(), Some(202));
}

#[test]
fn nothing_is_kept_for_strangers_the_unauthenticated_or_the_barred_and_none_when_off() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    // Without credentials: challenged, nothing kept.
    let call = format!("m{}", unique());
    h.leaf_sends(alice, &message_text(alice, "alice", "bob", &call));
    assert_eq!(h.final_to(alice).status(), Some(407));
    assert_eq!(kept(&mut h, "bob"), 0);
    // No such subscriber, a barred one: the same answer as a kept
    // message (a sender cannot tell who is a subscriber), nothing kept.
    let kept_one = send(&mut h, 1, alice, "alice", "bob", "x");
    let shape = |m: &Message| {
        let mut names: Vec<String> = String::from_utf8_lossy(m.raw())
            .lines()
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
            .collect();
        names.sort();
        (m.status(), names)
    };
    for stranger in ["mallory", "carol"] {
        let r = send(&mut h, 1, alice, "alice", stranger, "x");
        assert_eq!(shape(&r), shape(&kept_one), "{stranger}");
        assert_eq!(kept(&mut h, stranger), 0);
    }
    assert_eq!(h.metrics[0].count("Mail(Discarded)"), 2);
    assert_eq!(kept(&mut h, "bob"), 1);
    // A body too large to keep.
    let big = "x".repeat(crate::mailbox::MAX_BODY + 1);
    assert_eq!(
        send(&mut h, 1, alice, "alice", "bob", &big).status(),
        Some(480)
    );
    // Keeping off: 480 for all.
    h.node(1).policy.offline_messages = 0;
    for callee in ["dave", "mallory"] {
        assert_eq!(
            send(&mut h, 1, alice, "alice", callee, "x").status(),
            Some(480)
        );
    }
    assert_eq!(kept(&mut h, "dave"), 0);
}

#[test]
fn a_sender_asking_for_privacy_is_kept_anonymous() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    let call = format!("m{}", unique());
    let text = message_text(alice, "alice", "bob", &call).replacen(
        "Content-Type:",
        "Privacy: id\nContent-Type:",
        1,
    );
    h.send_authenticated(alice, "alice", &text);
    assert_eq!(h.final_to(alice).status(), Some(202));
    let bob = udp_leaf(2);
    h.register(bob, "bob", "<sip:bob@192.0.2.2>");
    let got = deliveries(&mut h, bob, 200);
    assert_eq!(got.len(), 1);
    let from = header(&got[0], HeaderName::From).unwrap();
    assert!(from.contains("anonymous.invalid"), "{from}");
    assert!(!String::from_utf8_lossy(got[0].raw()).contains("alice"));
}
