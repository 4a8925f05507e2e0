//! Initial filter criteria: requests through application servers in
//! priority order, originating then terminating, servers that answer,
//! redirect or act as a B2BUA, default handling when one fails, and the
//! return Route refused to anyone but a trusted server.

use super::*;
use crate::ifc::{Criterion, CriterionSpec, SessionCase};
use crate::trust::{Element, TrustTable};
use std::net::SocketAddr;

/// Application server `i` (1, 2): 192.0.2.6i:5060 over UDP, trusted.
fn app_server(i: u8) -> FlowRef {
    udp_leaf(59 + i)
}

fn trust_servers(h: &mut Harness) {
    for n in 1..=h.nodes.len() as u8 {
        h.node(n).set_trusted(TrustTable::new(vec![
            Element::parse_flag("app-server:as1=192.0.2.60").unwrap(),
            Element::parse_flag("app-server:as2=192.0.2.61").unwrap(),
        ]));
    }
}

/// One node trusting both servers; alice (not registered) and bob
/// (registered) are phones on it.
fn servers_and_bob() -> (Harness, FlowRef, FlowRef) {
    let mut h = Harness::new();
    trust_servers(&mut h);
    let (alice, bob) = (udp_leaf(1), udp_leaf(2));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    (h, alice, bob)
}

fn criterion(
    priority: i32,
    case: SessionCase,
    method: &str,
    server: u8,
    terminate: bool,
) -> Criterion {
    let uri = format!("sip:{}", app_server(server).peer());
    Criterion::new(&CriterionSpec {
        priority,
        session_case: Some(case),
        method,
        application_server: &uri,
        terminate,
        ..Default::default()
    })
    .unwrap()
}

/// The requests (not ACKs) sent to `peer` since the last `take`, removed.
fn requests_to(h: &mut Harness, peer: SocketAddr) -> Vec<Message> {
    let (mine, rest): (Vec<Sent>, Vec<Sent>) = h.take().into_iter().partition(|s| {
        s.msg.is_request() && s.dest.peer() == Some(peer) && s.msg.method().as_bytes() != b"ACK"
    });
    h.sent = rest;
    mine.into_iter().map(|s| s.msg).collect()
}

/// The requests sent to application server `i` since the last `take`.
fn at_server(h: &mut Harness, i: u8) -> Vec<Message> {
    requests_to(h, app_server(i).peer())
}

/// The one request server `i` got.
fn one_at_server(h: &mut Harness, i: u8) -> String {
    let got = at_server(h, i);
    assert_eq!(got.len(), 1, "one request at server {i}: {got:?}");
    String::from_utf8_lossy(got[0].raw()).into_owned()
}

/// What server `i` sends back when it proxies `req`: its own Route
/// value popped, its Via on top.
fn proxied_back(i: u8, req: &str) -> String {
    let own = format!("<sip:{};lr>, ", app_server(i).peer());
    assert!(req.contains(&format!("Route: {own}")), "{req}");
    let req = req.replacen(&own, "", 1);
    let (line, rest) = req.split_once("\r\n").unwrap();
    format!(
        "{line}\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKas{}\r\n{rest}",
        app_server(i).peer(),
        unique()
    )
}

/// The requests that reached a phone since the last `take`.
fn at_phone(h: &mut Harness, flow: FlowRef) -> Vec<Message> {
    requests_to(h, flow.peer())
}

/// The final statuses the caller got for its authenticated request (CSeq
/// 2), retransmissions counted once; the responses are removed.
fn finals(h: &mut Harness, flow: FlowRef) -> Vec<u16> {
    let mut got: Vec<u16> = h
        .responses_to(flow)
        .iter()
        .filter(|m| m.cseq() == 2)
        .filter_map(Message::status)
        .filter(|s| *s >= 200)
        .collect();
    got.dedup();
    got
}

/// `status` from server `i` to the request it got (`req`, as it arrived).
fn answer_from_server(h: &mut Harness, i: u8, req: &str, status: u16, extra: &str) {
    let m = msg(req);
    let vias: String = m
        .header_lines(HeaderName::Via)
        .map(|v| format!("Via: {}\n", String::from_utf8_lossy(v)))
        .collect();
    let text = format!(
        "SIP/2.0 {status} X\n{vias}From: {}\nTo: {};tag=as\nCall-ID: {}\nCSeq: {} {}\n{extra}Content-Length: 0\n\n",
        String::from_utf8_lossy(m.from_bytes()),
        String::from_utf8_lossy(m.to_bytes()),
        String::from_utf8_lossy(m.call_id()),
        m.cseq(),
        String::from_utf8_lossy(m.method().as_bytes()),
    );
    h.recv(1, &text, Dest::Flow(app_server(i)));
}

#[test]
fn originating_then_terminating_servers_in_priority_order() {
    let (mut h, alice, bob) = servers_and_bob();
    // Listed out of order: evaluation follows the priorities.
    h.directory.set_services(
        "alice",
        vec![
            criterion(10, SessionCase::Originating, "INVITE", 1, false),
            criterion(20, SessionCase::Originating, "", 2, false),
            criterion(30, SessionCase::TerminatingRegistered, "INVITE", 1, false),
        ],
    );
    h.directory.set_services(
        "bob",
        vec![criterion(5, SessionCase::Terminating, "INVITE", 1, false)],
    );
    h.take();
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "isc-1"));
    let first = one_at_server(&mut h, 1);
    assert!(
        first.contains("\r\nRoute: <sip:192.0.2.60:5060;lr>, <sip:isc."),
        "the server's Route, then the way back: {first}"
    );
    assert!(first.contains("@10.0.0.1:5060;lr>\r\n"), "{first}");
    assert!(
        first.contains("P-Asserted-Identity: <sip:alice@ringmesh.test>"),
        "the server learns who calls: {first}"
    );
    h.recv(1, &proxied_back(1, &first), Dest::Flow(app_server(1)));
    let second = one_at_server(&mut h, 2);
    h.recv(1, &proxied_back(2, &second), Dest::Flow(app_server(2)));
    // Alice's criteria are done; bob's terminating one sends it to server
    // 1 again (alice's own terminating criterion is not hers to apply).
    let third = one_at_server(&mut h, 1);
    h.recv(1, &proxied_back(1, &third), Dest::Flow(app_server(1)));
    let at_bob = at_phone(&mut h, bob);
    assert_eq!(at_bob.len(), 1, "{at_bob:?}");
    let text = String::from_utf8_lossy(at_bob[0].raw());
    assert!(
        !text.contains("isc."),
        "no return Route reaches the callee: {text}"
    );
    assert_eq!(
        at_bob[0].vias().count(),
        8,
        "alice's, the servers' and ours at each pass: {text}"
    );
    assert_eq!(h.metrics[0].count("AppServer(Triggered)"), 3);
    assert_eq!(h.metrics[0].count("AppServer(Returned)"), 3);
    // One call, however many servers it went through.
    assert_eq!(h.metrics[0].count("CallStarted"), 1);
}

#[test]
fn a_server_may_answer_redirect_or_start_a_new_leg_itself() {
    let (mut h, alice, bob) = servers_and_bob();
    h.directory.set_services(
        "alice",
        vec![criterion(1, SessionCase::Originating, "", 1, false)],
    );
    h.take();
    // It answers a MESSAGE itself.
    h.send_authenticated(
        alice,
        "alice",
        &message_text(alice, "alice", "bob", "isc-ans"),
    );
    let req = one_at_server(&mut h, 1);
    answer_from_server(&mut h, 1, &req, 200, "");
    assert_eq!(finals(&mut h, alice), [200]);
    assert!(at_phone(&mut h, bob).is_empty(), "bob never sees it");
    // It redirects an INVITE: the caller gets the 302.
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-302"),
    );
    let req = one_at_server(&mut h, 1);
    answer_from_server(&mut h, 1, &req, 302, "Contact: <sip:carol@ringmesh.test>\n");
    assert_eq!(finals(&mut h, alice), [302]);
    // As a B2BUA it starts its own leg, with another Call-ID, on the
    // return Route: evaluation resumes and bob is reached.
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-b2b"),
    );
    let req = one_at_server(&mut h, 1);
    let leg = proxied_back(1, &req)
        .replace("Call-ID: isc-b2b", "Call-ID: b2bua-leg-2")
        .replace(";tag=fisc-b2b", ";tag=b2bua");
    h.recv(1, &leg, Dest::Flow(app_server(1)));
    let at_bob = at_phone(&mut h, bob);
    assert_eq!(at_bob.len(), 1, "{at_bob:?}");
    assert_eq!(at_bob[0].call_id(), b"b2bua-leg-2");
}

#[test]
fn a_silent_server_is_skipped_or_fails_the_request_as_its_criterion_says() {
    let (mut h, alice, bob) = servers_and_bob();
    // SESSION_CONTINUED: after the server's time is up the call goes on.
    h.directory.set_services(
        "alice",
        vec![
            criterion(1, SessionCase::Originating, "INVITE", 1, false),
            criterion(2, SessionCase::Originating, "INVITE", 2, false),
        ],
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-cont"),
    );
    assert_eq!(at_server(&mut h, 1).len(), 1);
    h.advance(Duration::from_millis(1900));
    assert!(at_server(&mut h, 2).is_empty(), "server 1 still has time");
    h.advance(Duration::from_millis(200));
    // Server 2 answers 503 before any provisional response: skipped too.
    let req = one_at_server(&mut h, 2);
    answer_from_server(&mut h, 2, &req, 503, "");
    assert_eq!(at_phone(&mut h, bob).len(), 1, "bob is called without them");
    assert_eq!(h.metrics[0].count("AppServer(FailedContinued)"), 2);
    // A server that rang handles the call: its failure is its answer.
    h.directory.set_services(
        "alice",
        vec![criterion(1, SessionCase::Originating, "INVITE", 1, false)],
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-alive"),
    );
    let req = one_at_server(&mut h, 1);
    answer_from_server(&mut h, 1, &req, 180, "");
    answer_from_server(&mut h, 1, &req, 500, "");
    assert_eq!(finals(&mut h, alice), [500]);
    assert!(at_phone(&mut h, bob).is_empty());
    // (Alice never ACKs, so that 500 is sent again: out of the way.)
    h.advance(Duration::from_secs(40));
    // SESSION_TERMINATED: the caller gets 408, bob nothing.
    h.directory.set_services(
        "alice",
        vec![criterion(1, SessionCase::Originating, "INVITE", 1, true)],
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-term"),
    );
    assert_eq!(at_server(&mut h, 1).len(), 1);
    h.advance(Duration::from_millis(2100));
    assert_eq!(finals(&mut h, alice), [408]);
    assert!(at_phone(&mut h, bob).is_empty());
    assert_eq!(h.metrics[0].count("AppServer(FailedTerminated)"), 1);
    // The server wakes up late: its answer goes nowhere.
    answer_from_server(&mut h, 1, &req, 200, "");
    assert!(h.responses_to(alice).is_empty());
}

#[test]
fn an_unregistered_callee_reaches_its_unregistered_service_else_480() {
    let mut h = Harness::new();
    trust_servers(&mut h);
    let alice = udp_leaf(1);
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-480"),
    );
    assert_eq!(finals(&mut h, alice), [480]);
    // A voicemail server for bob while he has no bindings.
    h.directory.set_services(
        "bob",
        vec![
            criterion(1, SessionCase::TerminatingRegistered, "", 1, false),
            criterion(2, SessionCase::TerminatingUnregistered, "INVITE", 2, false),
        ],
    );
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-vm"),
    );
    assert!(at_server(&mut h, 1).is_empty());
    let req = one_at_server(&mut h, 2);
    answer_from_server(&mut h, 2, &req, 200, "Contact: <sip:vm@192.0.2.61>\n");
    assert_eq!(finals(&mut h, alice), [200]);
}

#[test]
fn only_a_trusted_server_may_send_a_request_back_and_only_a_fresh_genuine_one() {
    let (mut h, alice, bob) = servers_and_bob();
    let mallory = udp_leaf(66);
    h.directory.set_services(
        "alice",
        vec![criterion(1, SessionCase::Originating, "", 1, false)],
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-sec"),
    );
    let req = one_at_server(&mut h, 1);
    let back = proxied_back(1, &req);
    let refused = |h: &mut Harness, from: FlowRef, text: &str| {
        h.recv(1, text, Dest::Flow(from));
        let r = h.final_to(from);
        assert_eq!(r.status(), Some(403), "{r:?}");
        assert!(at_phone(h, bob).is_empty(), "nothing reaches bob");
    };
    // A phone that learnt the return Route cannot use it (bypassing
    // alice's server and her authentication).
    refused(
        &mut h,
        mallory,
        &back.replace("192.0.2.60:5060;branch", "192.0.2.66:5060;branch"),
    );
    // A forged seal, even from the trusted server.
    let forged = back.replacen("<sip:isc.", "<sip:isc.A", 1);
    refused(&mut h, app_server(1), &forged);
    assert_eq!(h.metrics[0].count("Refused(ServiceReturn)"), 2);
    // A stale one (older than its lifetime).
    h.advance(Duration::from_secs(
        super::super::services::RETURN_LIFETIME_SECS + 2,
    ));
    h.take();
    refused(
        &mut h,
        app_server(1),
        &back.replace("z9hG4bKas", "z9hG4bKlate"),
    );
    // Alice, through her server, is still served.
    h.directory.set_services("alice", Vec::new());
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "isc-ok"),
    );
    assert_eq!(at_phone(&mut h, bob).len(), 1);
}
