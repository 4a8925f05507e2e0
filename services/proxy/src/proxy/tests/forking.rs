//! Forwarding to every binding at once and choosing the response
//! (RFC 3261 §16.7): the first 2xx wins and the other branches are
//! cancelled; otherwise the best final response once all are done; a
//! CANCEL from the caller stops every branch (§16.10); no answer is 408.

use std::time::Duration;

use ringmesh_sip::HeaderName;

use super::*;

const ALICE: u8 = 1;

/// An open farm of one where bob has two contacts (two phones), each its
/// own UDP leaf; returns the harness and bob's two flows.
fn bob_with_two_phones() -> (Harness, FlowRef, FlowRef) {
    let mut h = Harness::open();
    let (p1, p2) = (udp_leaf(21), udp_leaf(22));
    assert_eq!(
        h.register(p1, "bob", "<sip:bob@192.0.2.21:5060>").status(),
        Some(200)
    );
    assert_eq!(
        h.register(p2, "bob", "<sip:bob@192.0.2.22:5060>").status(),
        Some(200)
    );
    h.take();
    (h, p1, p2)
}

fn addr_of(flow: FlowRef) -> Dest {
    Dest::Addr {
        transport: Transport::Udp,
        addr: flow.peer(),
    }
}

/// Answers the request `req` (as received by a phone) with `status`,
/// from the phone's address.
fn answer(h: &mut Harness, phone: FlowRef, req: &Message, status: u16) {
    let text = String::from_utf8_lossy(
        &req.response_writer(status, Some(format!("ph{}", phone.peer().ip()).as_bytes()))
            .finish(b""),
    )
    .into_owned();
    h.recv(1, &text, addr_of(phone));
}

/// Sends alice's INVITE to bob; returns the request each phone got.
fn invite_bob(h: &mut Harness, p1: FlowRef, p2: FlowRef, call: &str) -> (Message, Message) {
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", call));
    let out: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .collect();
    assert_eq!(out.len(), 2, "one branch per binding: {out:?}");
    let to = |p: FlowRef| {
        out.iter()
            .find(|s| s.dest == addr_of(p))
            .map(|s| s.msg.clone())
            .expect("a branch to each phone")
    };
    (to(p1), to(p2))
}

#[test]
fn the_first_2xx_wins_and_the_other_branch_is_cancelled() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "fork-1");
    assert_ne!(r1.branch(), r2.branch(), "a branch each");
    // The 100 Trying from the proxy, then a 180 from phone 2 goes up.
    answer(&mut h, p2, &r2, 180);
    let up = h.responses_to(alice);
    assert_eq!(
        up.iter().filter_map(|m| m.status()).collect::<Vec<_>>(),
        vec![100, 180]
    );
    answer(&mut h, p1, &r1, 200);
    let up = h.responses_to(alice);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), Some(200));
    let cancels: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Cancel)
        .collect();
    assert_eq!(cancels.len(), 1, "only the losing branch is cancelled");
    assert_eq!(cancels[0].dest, addr_of(p2));
    assert_eq!(cancels[0].msg.branch(), r2.branch());
    // The cancelled phone's 487 is not passed on.
    answer(&mut h, p2, &r2, 487);
    assert!(h.responses_to(alice).is_empty());
    assert_eq!(h.metrics[0].count("CallSetup { status: 200 }"), 1);
    assert_eq!(h.metrics[0].count("CallStarted"), 1);
}

#[test]
fn when_every_branch_fails_the_best_final_response_is_sent() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "fork-2");
    answer(&mut h, p1, &r1, 486);
    assert!(
        h.responses_to(alice)
            .iter()
            .all(|m| m.status().is_some_and(|s| s < 200)),
        "nothing final while a branch is pending"
    );
    answer(&mut h, p2, &r2, 302);
    let r = h.final_to(alice);
    assert_eq!(r.status(), Some(302), "3xx ranks above 4xx (§16.7 step 6)");
}

#[test]
fn a_6xx_ends_the_search_and_a_downstream_503_becomes_500() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "fork-3");
    // A CANCEL waits for a provisional response (§9.1): both phones ring.
    answer(&mut h, p1, &r1, 180);
    answer(&mut h, p2, &r2, 180);
    answer(&mut h, p1, &r1, 603);
    let cancels: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Cancel)
        .collect();
    assert_eq!(cancels.len(), 1, "a 6xx cancels the other branches");
    answer(&mut h, p2, &r2, 487);
    assert_eq!(h.final_to(alice).status(), Some(603));

    let (r1, r2) = invite_bob(&mut h, p1, p2, "fork-4");
    answer(&mut h, p1, &r1, 503);
    answer(&mut h, p2, &r2, 503);
    let r = h.final_to(alice);
    assert_eq!(
        r.status(),
        Some(500),
        "a 503 means that hop is overloaded, not this proxy"
    );
}

#[test]
fn a_cancel_from_the_caller_stops_every_branch_with_487() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "fork-5");
    answer(&mut h, p1, &r1, 180);
    answer(&mut h, p2, &r2, 180);
    let cancel = invite_text(alice, "alice", "bob", "fork-5")
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    h.leaf_sends(alice, &cancel);
    let up = h.responses_to(alice);
    assert!(
        up.iter()
            .any(|m| m.status() == Some(200) && *m.cseq_method() == ringmesh_sip::Method::Cancel),
        "the CANCEL is answered 200"
    );
    let cancels: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Cancel)
        .collect();
    assert_eq!(cancels.len(), 2, "both branches cancelled");
    answer(&mut h, p1, &r1, 487);
    answer(&mut h, p2, &r2, 487);
    assert_eq!(h.final_to(alice).status(), Some(487));
    assert_eq!(h.metrics[0].count("CallSetup { status: 487 }"), 1);
}

#[test]
fn a_cancel_while_the_callee_is_looked_up_answers_487_when_the_lookup_ends() {
    let (mut h, _, _) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    h.hold_location = true;
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "fork-6"));
    assert_eq!(h.held.len(), 1, "the lookup is in flight");
    let cancel = invite_text(alice, "alice", "bob", "fork-6")
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    h.leaf_sends(alice, &cancel);
    h.release_location();
    assert!(h.requests().is_empty(), "no branch was started");
    let finals: Vec<u16> = h
        .responses_to(alice)
        .iter()
        .filter(|m| *m.cseq_method() == ringmesh_sip::Method::Invite)
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(finals, vec![487]);
}

#[test]
fn branches_that_never_answer_end_in_408() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let _ = invite_bob(&mut h, p1, p2, "fork-7");
    // Timer B: 64 × T1 = 32 s of retransmissions, then the branches fail.
    h.advance(Duration::from_secs(33));
    let retransmitted = h
        .requests()
        .iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .count();
    assert!(
        retransmitted >= 2 * 6,
        "each branch retransmitted (T1 doubling): {retransmitted}"
    );
    // Retransmitted until the ACK that alice (not simulated) would send.
    let finals: Vec<u16> = h
        .responses_to(alice)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert!(
        !finals.is_empty() && finals.iter().all(|&s| s == 408),
        "{finals:?}"
    );
    assert_eq!(h.metrics[0].count("CallSetup { status: 408 }"), 1);
}

#[test]
fn no_binding_is_480_for_a_subscriber_and_a_stranger_alike() {
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    for to in ["bob", "nobody"] {
        h.send_authenticated(
            alice,
            "alice",
            &invite_text(alice, "alice", to, &format!("nb-{to}")),
        );
        let r = h.final_to(alice);
        assert_eq!(r.status(), Some(480), "{to}");
        assert!(header(&r, HeaderName::Server).is_some());
    }
}

#[test]
fn a_cancel_before_any_provisional_response_waits_for_one() {
    // RFC 3261 §9.1: a CANCEL is sent only once the branch has had a
    // provisional response.
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, _) = invite_bob(&mut h, p1, p2, "fork-8");
    let cancel = invite_text(alice, "alice", "bob", "fork-8")
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    h.leaf_sends(alice, &cancel);
    let cancels = |h: &mut Harness| -> Vec<Dest> {
        h.requests()
            .into_iter()
            .filter(|s| *s.msg.method() == ringmesh_sip::Method::Cancel)
            .map(|s| s.dest)
            .collect()
    };
    assert!(cancels(&mut h).is_empty(), "no CANCEL before a 1xx");
    answer(&mut h, p1, &r1, 100);
    assert_eq!(cancels(&mut h), vec![addr_of(p1)]);
}

/// An open farm of one where bob has three phones; returns the harness
/// and their flows.
fn bob_with_three_phones() -> (Harness, [FlowRef; 3]) {
    let (mut h, p1, p2) = bob_with_two_phones();
    let p3 = udp_leaf(23);
    assert_eq!(
        h.register(p3, "bob", "<sip:bob@192.0.2.23:5060>").status(),
        Some(200)
    );
    h.take();
    (h, [p1, p2, p3])
}

/// The CANCELs sent since the last `take`, by destination.
fn cancels_sent(h: &mut Harness) -> Vec<Dest> {
    h.requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Cancel)
        .map(|s| s.dest)
        .collect()
}

#[test]
fn a_407_from_one_branch_wins_over_a_404_from_another() {
    // §16.7 step 6: among 4xx, a 401 or 407 goes up so the caller can
    // authenticate, whichever branch answered first.
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    for (call, first, second) in [("rank-1", 404, 407), ("rank-2", 407, 404)] {
        let (r1, r2) = invite_bob(&mut h, p1, p2, call);
        answer(&mut h, p1, &r1, first);
        answer(&mut h, p2, &r2, second);
        assert_eq!(h.final_to(alice).status(), Some(407), "{first}, {second}");
    }
    // Any 4xx ranks above a 5xx.
    let (r1, r2) = invite_bob(&mut h, p1, p2, "rank-3");
    answer(&mut h, p1, &r1, 500);
    answer(&mut h, p2, &r2, 404);
    assert_eq!(h.final_to(alice).status(), Some(404));
}

#[test]
fn a_redirect_from_one_phone_does_not_stop_the_other_from_answering() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "redirect-1");
    answer(&mut h, p2, &r2, 180);
    answer(&mut h, p1, &r1, 300);
    assert!(
        h.responses_to(alice)
            .iter()
            .all(|m| m.status().is_some_and(|s| s < 200)),
        "a 3xx waits for the other branch"
    );
    assert!(cancels_sent(&mut h).is_empty(), "phone 2 still rings");
    answer(&mut h, p2, &r2, 200);
    assert_eq!(h.final_to(alice).status(), Some(200));
}

#[test]
fn a_busy_phone_leaves_the_other_ringing() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "busy-1");
    answer(&mut h, p1, &r1, 180);
    answer(&mut h, p2, &r2, 180);
    answer(&mut h, p1, &r1, 486);
    assert!(
        cancels_sent(&mut h).is_empty(),
        "only a 2xx or a 6xx ends the search"
    );
    answer(&mut h, p2, &r2, 200);
    assert_eq!(h.final_to(alice).status(), Some(200));
}

#[test]
fn the_winning_2xx_cancels_only_the_branches_still_ringing() {
    let (mut h, [p1, p2, p3]) = bob_with_three_phones();
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "three-1"));
    let out: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .collect();
    let req = |p: FlowRef| {
        out.iter()
            .find(|s| s.dest == addr_of(p))
            .map(|s| s.msg.clone())
            .expect("a branch to each phone")
    };
    let (r1, r2, r3) = (req(p1), req(p2), req(p3));
    for (p, r) in [(p1, &r1), (p2, &r2), (p3, &r3)] {
        answer(&mut h, p, r, 180);
    }
    answer(&mut h, p3, &r3, 486);
    answer(&mut h, p1, &r1, 200);
    assert_eq!(h.final_to(alice).status(), Some(200));
    assert_eq!(
        cancels_sent(&mut h),
        vec![addr_of(p2)],
        "the busy phone's transaction is over: only phone 2 is cancelled"
    );
}

#[test]
fn every_2xx_goes_upstream_and_the_call_setup_is_timed_once() {
    // Two phones picking up at once: the caller gets both 2xx (§16.7
    // step 5) and hangs up one dialog; the setup took as long as the first.
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "two-ok-1");
    answer(&mut h, p1, &r1, 180);
    answer(&mut h, p2, &r2, 180);
    answer(&mut h, p1, &r1, 200);
    assert_eq!(cancels_sent(&mut h), vec![addr_of(p2)]);
    // Phone 2 answered before the CANCEL reached it.
    answer(&mut h, p2, &r2, 200);
    let finals: Vec<u16> = h
        .responses_to(alice)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(finals, vec![200, 200]);
    assert!(cancels_sent(&mut h).is_empty(), "nothing left to cancel");
    assert_eq!(h.metrics[0].count("CallSetupLatency"), 1);
    assert_eq!(h.metrics[0].count("CallSetup { status: 200 }"), 1);
}

#[test]
fn a_forked_message_answered_by_one_phone_is_no_call() {
    let (mut h, p1, _) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let text = format!(
        "MESSAGE sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bKmsg1\nMax-Forwards: 70\n\
         From: <sip:alice@{DOMAIN}>;tag=fmsg\nTo: <sip:bob@{DOMAIN}>\nCall-ID: msg-1\n\
         CSeq: 1 MESSAGE\nContent-Length: 0\n\n",
        via_for(alice)
    );
    h.leaf_sends(alice, &text);
    let out = h.requests();
    assert_eq!(out.len(), 2, "one branch per binding: {out:?}");
    assert!(
        out.iter()
            .all(|s| header(&s.msg, HeaderName::RecordRoute).is_none()),
        "a MESSAGE starts no dialog: no Record-Route"
    );
    let r1 = out
        .iter()
        .find(|s| s.dest == addr_of(p1))
        .unwrap()
        .msg
        .clone();
    answer(&mut h, p1, &r1, 200);
    assert_eq!(h.final_to(alice).status(), Some(200));
    assert!(
        cancels_sent(&mut h).is_empty(),
        "only an INVITE is cancelled"
    );
    assert_eq!(h.metrics[0].count("CallSetupLatency"), 0);
    assert_eq!(h.metrics[0].count("CallStarted"), 0);
}

#[test]
fn a_phone_that_never_answers_does_not_hold_back_the_others_answer() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let (_, r2) = invite_bob(&mut h, p1, p2, "silent-1");
    answer(&mut h, p2, &r2, 180);
    // Phone 1 never answers: its branch fails after Timer B (32 s).
    h.advance(Duration::from_secs(33));
    assert!(
        h.responses_to(alice)
            .iter()
            .all(|m| m.status().is_some_and(|s| s < 200)),
        "phone 2 still rings"
    );
    answer(&mut h, p2, &r2, 486);
    assert_eq!(h.final_to(alice).status(), Some(486));
}

#[test]
fn a_draining_node_waits_for_every_request_not_answered_yet() {
    let (mut h, p1, p2) = bob_with_two_phones();
    assert_eq!(h.node(1).unanswered(), 0);
    let (r1, r2) = invite_bob(&mut h, p1, p2, "drain-1");
    answer(&mut h, p1, &r1, 180);
    assert_eq!(h.node(1).unanswered(), 1, "a ringing call");
    // A second call still looking its callee up.
    let alice = udp_leaf(ALICE);
    h.hold_location = true;
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "drain-2"));
    assert_eq!(h.node(1).unanswered(), 2, "and a lookup");
    answer(&mut h, p1, &r1, 200);
    assert_eq!(
        h.node(1).unanswered(),
        1,
        "the answered call is no longer waited for"
    );
    answer(&mut h, p2, &r2, 487);
    h.release_location();
    let invites = h
        .requests()
        .iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .count();
    assert_eq!(invites, 2, "drain-2 is forked to both phones");
    assert_eq!(h.node(1).unanswered(), 1, "drain-2, forwarded now");
}

#[test]
fn the_next_deadline_is_when_a_branch_retransmits() {
    let (mut h, p1, p2) = bob_with_two_phones();
    let alice = udp_leaf(ALICE);
    let sent_at = h.now;
    let _ = invite_bob(&mut h, p1, p2, "deadline-1");
    h.take();
    // Timer A (T1) of each branch over UDP: what the driver sleeps until.
    let due = h.node(1).poll_timeout().expect("a deadline");
    assert_eq!(due, sent_at.mono + Duration::from_millis(500));
    let at = |ms: u64| Now {
        mono: sent_at.mono + Duration::from_millis(ms),
        wall_ms: sent_at.wall_ms + ms,
    };
    h.node(1).handle_timeout(at(499));
    h.pump();
    assert!(h.requests().is_empty(), "nothing due yet");
    h.node(1).handle_timeout(at(500));
    h.pump();
    let again: Vec<Dest> = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .map(|s| s.dest)
        .collect();
    assert_eq!(again.len(), 2, "both branches retransmitted: {again:?}");
    assert!(h.responses_to(alice).is_empty());
}

#[test]
fn two_calls_waiting_for_the_location_service_each_reach_their_callee() {
    let mut h = Harness::open();
    let (bob, dave) = (udp_leaf(21), udp_leaf(24));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.21:5060>").status(),
        Some(200)
    );
    assert_eq!(
        h.register(dave, "dave", "<sip:dave@192.0.2.24:5060>")
            .status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.hold_location = true;
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "wait-bob"));
    h.leaf_sends(alice, &invite_text(alice, "alice", "dave", "wait-dave"));
    assert_eq!(h.held.len(), 2, "two lookups in flight");
    // The ring answers the second lookup first.
    h.held.reverse();
    h.release_location();
    let mut sent: Vec<(String, Dest)> = h
        .requests()
        .into_iter()
        .map(|s| {
            (
                String::from_utf8_lossy(s.msg.call_id()).into_owned(),
                s.dest,
            )
        })
        .collect();
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sent,
        vec![
            ("wait-bob".to_string(), addr_of(bob)),
            ("wait-dave".to_string(), addr_of(dave)),
        ]
    );
}
