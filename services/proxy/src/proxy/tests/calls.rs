//! Call records at the originating edge: an answered call's interim and
//! final records with the path and who hung up, failed and cancelled
//! attempts, a call closed by the longest dialog, and the charging vector
//! that stays inside the farm.

use std::time::Duration;

use super::*;
use crate::cdr::{CallRecord, CallResult, EndedBy};

/// The INVITE that reached bob, and the one that crossed the overlay.
fn invite_at_bob(h: &mut Harness, bob: FlowRef) -> (Message, Message) {
    let sent = h.requests();
    let find = |pred: &dyn Fn(&Sent) -> bool| {
        sent.iter()
            .find(|s| s.msg.method().as_bytes() == b"INVITE" && pred(s))
            .map(|s| s.msg.clone())
            .expect("an INVITE")
    };
    (
        find(&|s| s.dest.peer() == Some(bob.peer())),
        find(&|s| matches!(s.dest, Dest::Peer(_))),
    )
}

/// Bob answers `req` with `status` (his Record-Route copied), at node 2.
fn bob_answers(h: &mut Harness, bob: FlowRef, req: &Message, status: u16) {
    let mut w = req.response_writer(status, Some(b"tbob"));
    for rr in req.header_lines(HeaderName::RecordRoute) {
        w.header(HeaderName::RecordRoute, rr);
    }
    w.header(HeaderName::Contact, b"<sip:bob@192.0.2.2>");
    let text = String::from_utf8_lossy(&w.finish(b"")).into_owned();
    h.recv(2, &text, Dest::Flow(bob));
}

fn records(h: &mut Harness) -> Vec<(u8, CallRecord)> {
    std::mem::take(&mut h.records)
}

#[test]
fn an_answered_call_gets_an_interim_record_then_a_final_one_naming_its_path() {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    let invite = invite_text(alice, "alice", "bob", "cdr-1").replacen(
        "Content-Length:",
        "P-Charging-Vector: icid-value=forged\nContent-Length:",
        1,
    );
    h.send_authenticated(alice, "alice", &invite);
    let (at_bob, on_overlay) = invite_at_bob(&mut h, bob);
    // The farm's own charging vector crosses the overlay; no phone sees
    // one, and the phone's own is gone.
    let pcv = header(&on_overlay, HeaderName::PChargingVector).expect("a charging vector");
    assert!(
        pcv.starts_with("icid-value=") && !pcv.contains("forged"),
        "{pcv}"
    );
    assert!(!at_bob.has_header(HeaderName::PChargingVector));
    h.advance(Duration::from_secs(2));
    bob_answers(&mut h, bob, &at_bob, 200);
    let got = records(&mut h);
    assert_eq!(got.len(), 1, "{got:?}");
    let (node, interim) = &got[0];
    assert_eq!(*node, 1, "the originating edge writes it");
    assert!(interim.interim);
    assert_eq!(interim.result, CallResult::Answered);
    assert_eq!(
        (
            interim.status,
            interim.caller.as_str(),
            interim.callee.as_str()
        ),
        (200, "<sip:alice@ringmesh.test>", "sip:bob@ringmesh.test")
    );
    assert_eq!(interim.call_id, "cdr-1");
    assert!(
        pcv.contains(&format!("icid-value={};", interim.icid)),
        "{pcv}"
    );
    assert_eq!(interim.nodes, [node_id(1), node_id(2)]);
    assert_eq!(
        interim.answer_ms.unwrap() - interim.invite_ms,
        2000,
        "answered 2 s after the INVITE"
    );
    // Bob hangs up 30 s later: the BYE passes alice's edge.
    h.advance(Duration::from_secs(30));
    let route = record_route(&at_bob).join(", ");
    let bye = bye(bob, "bob", "alice", "cdr-1", &route, "sip:alice@192.0.2.1");
    h.recv(2, &bye, Dest::Flow(bob));
    let got = records(&mut h);
    assert_eq!(got.len(), 1, "{got:?}");
    let fin = &got[0].1;
    assert!(!fin.interim);
    assert_eq!(
        (fin.result, fin.ended_by, fin.icid.as_str()),
        (
            CallResult::Completed,
            Some(EndedBy::Callee),
            interim.icid.as_str()
        )
    );
    assert_eq!(fin.end_ms.unwrap() - fin.answer_ms.unwrap(), 30_000);
    assert_eq!(h.node(1).load().calls_up, 0);
}

#[test]
fn failed_and_cancelled_attempts_get_one_final_record() {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "cdr-busy"),
    );
    let (at_bob, _) = invite_at_bob(&mut h, bob);
    bob_answers(&mut h, bob, &at_bob, 486);
    // Nobody home: 480 without any branch.
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "nobody", "cdr-480"),
    );
    // Alice gives up on a ringing call.
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "cdr-cancel"),
    );
    let (at_bob, _) = invite_at_bob(&mut h, bob);
    bob_answers(&mut h, bob, &at_bob, 180);
    let invite = msg(&invite_text(alice, "alice", "bob", "cdr-cancel"));
    let cancel = format!(
        "CANCEL sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bK2icdr-cancel\nMax-Forwards: 70\n\
         From: {}\nTo: <sip:bob@{DOMAIN}>\nCall-ID: cdr-cancel\nCSeq: 2 CANCEL\nContent-Length: 0\n\n",
        via_for(alice),
        String::from_utf8_lossy(invite.from_bytes())
    );
    h.leaf_sends(alice, &cancel);
    bob_answers(&mut h, bob, &at_bob, 487);
    let got: Vec<(String, u16, CallResult, bool)> = records(&mut h)
        .into_iter()
        .map(|(_, r)| (r.call_id, r.status, r.result, r.interim))
        .collect();
    assert_eq!(
        got,
        [
            ("cdr-busy".to_string(), 486, CallResult::Failed, false),
            ("cdr-480".to_string(), 480, CallResult::Failed, false),
            ("cdr-cancel".to_string(), 487, CallResult::Cancelled, false),
        ]
    );
}

#[test]
fn a_call_still_up_when_the_longest_dialog_runs_out_is_closed_as_such() {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    h.node(1).max_call = Duration::from_secs(60);
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "cdr-long"),
    );
    let (at_bob, _) = invite_at_bob(&mut h, bob);
    bob_answers(&mut h, bob, &at_bob, 200);
    assert_eq!(records(&mut h).len(), 1, "the interim record");
    assert_eq!(h.node(1).load().calls_up, 1);
    h.advance(Duration::from_secs(59));
    assert!(records(&mut h).is_empty());
    h.advance(Duration::from_secs(2));
    let got = records(&mut h);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].1.result, got[0].1.ended_by),
        (CallResult::MaxDuration, Some(EndedBy::Farm))
    );
    assert_eq!(h.node(1).load().calls_up, 0);
}

#[test]
fn a_call_at_a_supernode_that_is_gone_ends_at_once_with_480_and_retry_after() {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "gone-1"),
    );
    let (at_bob, _) = invite_at_bob(&mut h, bob);
    bob_answers(&mut h, bob, &at_bob, 180);
    h.take();
    // Node 2's link goes down (its process died): no final answer will
    // come from there; alice is not left waiting for her INVITE's timers.
    let now = h.now;
    h.node(1).peer_gone(node_id(2), now);
    h.pump();
    let answer = h.final_to(alice);
    assert_eq!(answer.status(), Some(480), "{answer:?}");
    assert_eq!(
        header(&answer, HeaderName::RetryAfter).as_deref(),
        Some("2")
    );
    // A link to another node going down ends nothing of this one.
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "gone-2"),
    );
    invite_at_bob(&mut h, bob);
    h.take();
    let now = h.now;
    h.node(1).peer_gone(node_id(3), now);
    h.pump();
    assert!(h.responses_to(alice).is_empty());
}

#[test]
fn a_call_for_a_phone_at_an_overloaded_supernode_is_refused_at_once_with_retry_after() {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    // Node 2, bob's, says it is overloaded: node 1 does not send the call.
    h.members.1.lock().unwrap().insert(node_id(2));
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "hot-1"));
    let answer = h.final_to(alice);
    assert_eq!(answer.status(), Some(503), "{answer:?}");
    assert!(header(&answer, HeaderName::RetryAfter).is_some());
    assert!(
        h.requests().iter().all(|s| s.node != 1),
        "nothing went to node 2"
    );
    assert_eq!(h.metrics[0].count("PeerOverloaded"), 1);
    // The mark lifted, calls go through again.
    h.members.1.lock().unwrap().clear();
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "hot-2"));
    let (at_bob, _) = invite_at_bob(&mut h, bob);
    bob_answers(&mut h, bob, &at_bob, 486);
    assert_eq!(h.final_to(alice).status(), Some(486));
}
