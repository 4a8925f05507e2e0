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
