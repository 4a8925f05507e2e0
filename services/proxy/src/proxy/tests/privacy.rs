//! Privacy (RFC 3323, 3325) and topology hiding across a farm of two: an
//! anonymous caller, what a user writes about itself removed, and phones
//! that never see another supernode's address while their dialogs still
//! route through both edges.

use super::*;

/// Alice on node 1, bob registered on node 2, both nodes hiding the
/// topology or not.
fn alice_and_bob(hiding: bool) -> (Harness, FlowRef, FlowRef) {
    let (mut h, alice, bob) = alice_and_bob_on_two_nodes();
    for n in 1..=2 {
        h.node(n).policy.topology_hiding = hiding;
    }
    (h, alice, bob)
}

/// The one request (not an ACK) that reached `flow`'s address.
fn at(h: &mut Harness, flow: FlowRef) -> Message {
    let (mine, rest): (Vec<Sent>, Vec<Sent>) = h.take().into_iter().partition(|s| {
        s.msg.is_request()
            && s.dest.peer() == Some(flow.peer())
            && s.msg.method().as_bytes() != b"ACK"
    });
    h.sent = rest;
    assert_eq!(mine.len(), 1, "{mine:?}");
    mine.into_iter().next().unwrap().msg
}

/// `phone` answers `req` (as it got it) with `status`, at node `n`.
fn answer(h: &mut Harness, n: u8, phone: FlowRef, req: &Message, status: u16) {
    let lines = |name| -> String {
        req.header_lines(name)
            .map(|v| format!("{}: {}\n", name.as_str(), String::from_utf8_lossy(v)))
            .collect()
    };
    let text = format!(
        "SIP/2.0 {status} X\n{}{}From: {}\nTo: {};tag=tbob\nCall-ID: {}\nCSeq: {} {}\n\
         Contact: <sip:bob@{}>\nContent-Length: 0\n\n",
        lines(HeaderName::Via),
        lines(HeaderName::RecordRoute),
        String::from_utf8_lossy(req.from_bytes()),
        String::from_utf8_lossy(req.to_bytes()),
        String::from_utf8_lossy(req.call_id()),
        req.cseq(),
        String::from_utf8_lossy(req.method().as_bytes()),
        phone.peer(),
    );
    h.recv(n, &text, Dest::Flow(phone));
}

fn with(text: &str, extra: &str) -> String {
    text.replacen("Content-Length:", &format!("{extra}Content-Length:"), 1)
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.raw()).into_owned()
}

#[test]
fn an_anonymous_caller_reaches_the_callee_without_its_identity_and_gets_its_own_from_back() {
    let (mut h, alice, bob) = alice_and_bob(false);
    let invite = with(
        &invite_text(alice, "alice", "bob", "priv-id"),
        "Privacy: id\nSubject: from alice\n",
    );
    h.send_authenticated(alice, "alice", &invite);
    let req = at(&mut h, bob);
    assert_eq!(
        req.from_bytes(),
        b"\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=fpriv-id",
        "{}",
        text(&req)
    );
    assert!(
        !req.has_header(HeaderName::PAssertedIdentity),
        "{}",
        text(&req)
    );
    assert!(
        !String::from_utf8_lossy(req.from_bytes()).contains("alice"),
        "{}",
        text(&req)
    );
    // `id` alone leaves what the user wrote.
    assert!(req.has_header(HeaderName::Subject));
    answer(&mut h, 2, bob, &req, 200);
    let ok = h
        .responses_to(alice)
        .into_iter()
        .find(|m| m.status() == Some(200))
        .expect("alice's 200");
    assert_eq!(ok.from_bytes(), b"<sip:alice@ringmesh.test>;tag=fpriv-id");
}

#[test]
fn user_privacy_removes_what_the_user_wrote_and_header_privacy_hides_the_path() {
    let (mut h, alice, bob) = alice_and_bob(false);
    let invite = with(
        &invite_text(alice, "alice", "bob", "priv-user"),
        "Privacy: user;header\nSubject: from alice\nUser-Agent: AlicePhone 1.0\nOrganization: ACME\n",
    );
    h.send_authenticated(alice, "alice", &invite);
    let req = at(&mut h, bob);
    let t = text(&req);
    for gone in [
        "Subject",
        "User-Agent",
        "Organization",
        "10.0.0.1",
        "Via: SIP/2.0/UDP 192.0.2.1",
    ] {
        assert!(!t.contains(gone), "{gone} in {t}");
    }
    assert!(req.from_bytes().starts_with(b"\"Anonymous\""), "{t}");
    assert_eq!(req.vias().count(), 1, "only its edge's Via: {t}");
    // The identity is still asserted: only `id` withholds it.
    assert!(req.has_header(HeaderName::PAssertedIdentity));
    answer(&mut h, 2, bob, &req, 486);
    let busy = h
        .responses_to(alice)
        .into_iter()
        .find(|m| m.status() == Some(486))
        .expect("alice's 486");
    assert_eq!(busy.vias().count(), 1, "alice's own Via, given back");
    assert_eq!(
        busy.from_bytes(),
        b"<sip:alice@ringmesh.test>;tag=fpriv-user"
    );
}

#[test]
fn with_topology_hiding_a_phone_sees_only_its_own_edge_and_the_dialog_still_routes() {
    let (mut h, alice, bob) = alice_and_bob(true);
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "hide-1"),
    );
    let req = at(&mut h, bob);
    let t = text(&req);
    assert!(!t.contains("10.0.0.1"), "node 1 leaks to bob: {t}");
    assert_eq!(req.vias().count(), 1, "{t}");
    let rr = record_route(&req);
    assert_eq!(rr.len(), 2, "{rr:?}");
    answer(&mut h, 2, bob, &req, 200);
    let ok = h
        .responses_to(alice)
        .into_iter()
        .find(|m| m.status() == Some(200))
        .expect("alice's 200");
    let t = text(&ok);
    assert!(!t.contains("10.0.0.2"), "node 2 leaks to alice: {t}");
    assert_eq!(ok.vias().count(), 1, "{t}");
    let alice_rr = record_route(&ok);
    // Bob hangs up along his route set: it reaches alice through both
    // edges.
    let bye_text = bye(
        bob,
        "bob",
        "alice",
        "hide-1",
        &rr.join(", "),
        "sip:alice@192.0.2.1",
    );
    h.recv(2, &bye_text, Dest::Flow(bob));
    let at_alice = at(&mut h, alice);
    assert_eq!(at_alice.method().as_bytes(), b"BYE");
    let t = text(&at_alice);
    assert!(!t.contains("10.0.0.2"), "{t}");
    assert_eq!(at_alice.vias().count(), 1, "{t}");
    // And alice hangs up along hers (reversed): it reaches bob.
    let mut route = alice_rr.clone();
    route.reverse();
    let bye_text = bye(
        alice,
        "alice",
        "bob",
        "hide-1",
        &route.join(", "),
        "sip:bob@192.0.2.2",
    );
    h.recv(1, &bye_text, Dest::Flow(alice));
    let at_bob = at(&mut h, bob);
    assert_eq!(at_bob.method().as_bytes(), b"BYE");
    assert!(!text(&at_bob).contains("10.0.0.1"), "{}", text(&at_bob));
}
