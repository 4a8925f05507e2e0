//! Peer farms: a subscriber's requests for a peer's domain go to that
//! domain's servers (RFC 3263 over TLS, the name to prove handed to the
//! driver), with failover and a 503 when none is left; the peer's own
//! requests reach our subscribers with their asserted identity kept; and
//! what an attacker tries (another domain, transit through the farm,
//! requests without credentials, a stranger's forged identity) is refused.

use super::*;
use crate::dns::{Query, Resolved, Srv};
use crate::trust::{Element, TrustTable};

/// One node peering with b.test (its certificate names sbc.b.test), able
/// to open TLS.
fn peering() -> Harness {
    let mut h = Harness::new();
    h.node(1).policy.tls_client = true;
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("peer-farm:b=tls:sbc.b.test@b.test").unwrap(),
    ]));
    h
}

fn tls_at(addr: &str) -> Dest {
    Dest::Addr {
        transport: Transport::Tls,
        addr: addr.parse().unwrap(),
    }
}

/// A request `method` from alice on `flow` to `to` (another domain).
fn request_to(flow: FlowRef, method: &str, to: &str, call: &str) -> String {
    let via = via_for(flow);
    format!(
        "{method} sip:{to} SIP/2.0\nVia: {via};branch=z9hG4bKp{call}\nMax-Forwards: 70\n\
         From: <sip:alice@{DOMAIN}>;tag=f{call}\nTo: <sip:{to}>\nCall-ID: {call}\n\
         CSeq: 1 {method}\nContact: <sip:alice@{}>\n\
         P-Asserted-Identity: <sip:ceo@{DOMAIN}>\nContent-Length: 0\n\n",
        flow.peer()
    )
}

/// The one DNS question asked since the last call (`query`), answered.
fn answer_dns(h: &mut Harness, query: Query, answer: Resolved) {
    let asked = std::mem::take(&mut h.resolves);
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (_, token, asked) = asked.into_iter().next().unwrap();
    assert_eq!(asked, query);
    let now = h.now;
    h.node(1).handle_resolved(token, answer, now);
    h.pump();
}

fn srv(priority: u16, port: u16, target: &str) -> Srv {
    Srv {
        priority,
        weight: 0,
        port,
        target: target.into(),
    }
}

/// b.test's DNS: no NAPTR, `_sips._tcp` SRV records naming two servers.
fn b_test_dns(h: &mut Harness) {
    answer_dns(
        h,
        Query::Naptr {
            name: "b.test.".into(),
        },
        Resolved::NotFound,
    );
    answer_dns(
        h,
        Query::Srv {
            name: "_sips._tcp.b.test.".into(),
        },
        Resolved::Srv(vec![
            srv(20, 5071, "192.0.2.62"),
            srv(10, 5061, "192.0.2.61"),
        ]),
    );
}

fn sent(h: &mut Harness, method: &str) -> Vec<Sent> {
    h.requests()
        .into_iter()
        .filter(|s| s.msg.method().as_bytes() == method.as_bytes())
        .collect()
}

fn finals(h: &mut Harness, flow: FlowRef) -> Vec<Message> {
    h.responses_to(flow)
        .into_iter()
        .filter(|m| m.status().is_some_and(|s| s >= 200 && s != 407))
        .collect()
}

fn answer(h: &mut Harness, req: &Sent, status: u16) {
    let bytes = req.msg.response_writer(status, Some(b"b")).finish(b"");
    let now = h.now;
    h.node(1)
        .handle_message(Message::parse(bytes).unwrap(), req.dest, now);
    h.pump();
}

#[test]
fn a_call_for_a_peers_domain_goes_to_its_servers_over_tls_and_fails_over() {
    let mut h = peering();
    let alice = udp_leaf(1);
    h.send_authenticated(
        alice,
        "alice",
        &request_to(alice, "INVITE", "bob@b.test", "p1"),
    );
    b_test_dns(&mut h);
    let out = sent(&mut h, "INVITE");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, tls_at("192.0.2.61:5061"), "priority 10 first");
    // The driver learns the name the server must prove: the domain.
    let addr = "192.0.2.61:5061".parse().unwrap();
    assert_eq!(h.node(1).tls_server_name(addr), Some("b.test"));
    let invite = &out[0].msg;
    assert_eq!(invite.request_uri_bytes(), b"sip:bob@b.test");
    let rr = record_route(invite);
    assert!(
        rr.iter().any(|r| r.contains(":5061;transport=tls;lr")),
        "the peer comes back over TLS: {rr:?}"
    );
    // The identity the farm asserts, not the one alice wrote.
    assert_eq!(
        header(invite, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@ringmesh.test>")
    );
    // 503: the next server, with no wait.
    answer(&mut h, &out[0], 503);
    let next = sent(&mut h, "INVITE");
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].dest, tls_at("192.0.2.62:5071"));
    answer(&mut h, &next[0], 200);
    let f = finals(&mut h, alice);
    assert_eq!(
        f.iter().map(|m| m.status()).collect::<Vec<_>>(),
        [Some(200)]
    );
    assert_eq!(
        h.metrics[0].count("Located { peer: Some(\"b\"), event: FailedOver }"),
        1
    );
    assert_eq!(
        h.metrics[0].count("Located { peer: Some(\"b\"), event: Answered }"),
        1
    );
}

#[test]
fn a_message_crosses_and_with_no_server_left_the_sender_gets_503() {
    let mut h = peering();
    let alice = udp_leaf(1);
    h.send_authenticated(
        alice,
        "alice",
        &request_to(alice, "MESSAGE", "bob@B.TEST", "p2"),
    );
    b_test_dns(&mut h);
    let first = sent(&mut h, "MESSAGE");
    assert_eq!(first[0].dest, tls_at("192.0.2.61:5061"));
    // The connection is refused, the second server is silent.
    let now = h.now;
    h.node(1).connection_refused(first[0].dest, now);
    h.pump();
    assert_eq!(sent(&mut h, "MESSAGE")[0].dest, tls_at("192.0.2.62:5071"));
    for _ in 0..40 {
        h.advance(Duration::from_millis(100));
    }
    let f = finals(&mut h, alice);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].status(), Some(503));
    assert!(header(&f[0], HeaderName::RetryAfter).is_some());
    assert!(h.resolves.is_empty(), "not the gateways, not ENUM");
    assert_eq!(
        h.metrics[0].count("Located { peer: Some(\"b\"), event: Exhausted }"),
        1
    );
}

#[test]
fn without_a_client_certificate_a_peer_cannot_be_reached() {
    let mut h = peering();
    h.node(1).policy.tls_client = false;
    let alice = udp_leaf(1);
    h.send_authenticated(
        alice,
        "alice",
        &request_to(alice, "INVITE", "bob@b.test", "p3"),
    );
    assert!(h.resolves.is_empty());
    let f = finals(&mut h, alice);
    assert_eq!(f[0].status(), Some(503));
}

#[test]
fn attacker_other_domains_transit_and_strangers_are_refused() {
    let mut h = peering();
    let alice = udp_leaf(1);
    // A domain no peer serves: 403, no DNS question on the farm's account.
    h.leaf_sends(alice, &request_to(alice, "INVITE", "bob@c.test", "a1"));
    assert_eq!(finals(&mut h, alice)[0].status(), Some(403));
    // A stranger without credentials is challenged before anything is
    // looked up.
    let stranger = udp_leaf(66);
    h.leaf_sends(
        stranger,
        &request_to(stranger, "INVITE", "bob@b.test", "a2"),
    );
    let got: Vec<u16> = h
        .responses_to(stranger)
        .iter()
        .filter_map(Message::status)
        .collect();
    assert!(got.contains(&407), "{got:?}");
    // The peer itself may not use the farm as a transit to its own domain
    // or any other; nor may anyone register in a peer's domain.
    let peer = stream_leaf(9, 90, Transport::Tls);
    h.node(1).connection_opened(90);
    h.node(1).connection_named(90, vec!["sbc.b.test".into()]);
    h.leaf_sends(peer, &request_to(peer, "INVITE", "carol@b.test", "a3"));
    assert_eq!(finals(&mut h, peer)[0].status(), Some(403));
    let register = request_to(alice, "REGISTER", "alice@b.test", "a4").replacen(
        "REGISTER sip:alice@b.test",
        "REGISTER sip:b.test",
        1,
    );
    h.leaf_sends(alice, &register);
    assert_eq!(finals(&mut h, alice)[0].status(), Some(403));
    assert!(h.resolves.is_empty(), "nothing was looked up");
    assert!(sent(&mut h, "INVITE").is_empty());
}

#[test]
fn a_peers_call_reaches_our_subscriber_with_its_identity_kept_a_strangers_is_not() {
    let mut h = peering();
    let bob = udp_leaf(2);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    // The peer, known by its certificate: no challenge, its PAI stays.
    let peer = stream_leaf(9, 91, Transport::Tls);
    h.node(1).connection_opened(91);
    h.node(1).connection_named(91, vec!["sbc.b.test".into()]);
    let from_b = |flow: FlowRef, call: &str| {
        format!(
            "INVITE sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bKb{call}\nMax-Forwards: 70\n\
             From: <sip:carol@b.test>;tag=f{call}\nTo: <sip:bob@{DOMAIN}>\nCall-ID: {call}\n\
             CSeq: 1 INVITE\nContact: <sip:carol@{}>\nP-Asserted-Identity: <sip:carol@b.test>\n\
             Content-Length: 0\n\n",
            via_for(flow),
            flow.peer()
        )
    };
    h.leaf_sends(peer, &from_b(peer, "in1"));
    let at_bob = sent(&mut h, "INVITE");
    assert_eq!(at_bob.len(), 1, "{at_bob:?}");
    assert_eq!(
        header(&at_bob[0].msg, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:carol@b.test>")
    );
    // The same request on a connection whose certificate names someone
    // else is a phone's: challenged.
    let forger = stream_leaf(10, 92, Transport::Tls);
    h.node(1).connection_opened(92);
    h.node(1).connection_named(92, vec!["evil.test".into()]);
    h.leaf_sends(forger, &from_b(forger, "in2"));
    let got: Vec<u16> = h
        .responses_to(forger)
        .iter()
        .filter_map(Message::status)
        .collect();
    assert!(got.contains(&407), "{got:?}");
    assert!(
        sent(&mut h, "INVITE").is_empty(),
        "bob's phone got nothing more"
    );
}

#[test]
fn the_peers_bye_on_a_connection_of_its_own_reaches_the_caller() {
    let mut h = peering();
    let alice = udp_leaf(1);
    h.send_authenticated(
        alice,
        "alice",
        &request_to(alice, "INVITE", "bob@b.test", "d1"),
    );
    b_test_dns(&mut h);
    let out = sent(&mut h, "INVITE");
    let invite = &out[0].msg;
    // bob's BYE comes back from another b.test supernode, on a connection
    // b.test opened (its certificate names sbc.b.test), along the route
    // set the INVITE recorded.
    let peer = stream_leaf(9, 93, Transport::Tls);
    h.node(1).connection_opened(93);
    h.node(1).connection_named(93, vec!["sbc.b.test".into()]);
    let route = record_route(invite).join(", ");
    let bye = format!(
        "BYE sip:alice@192.0.2.1:5060 SIP/2.0\nVia: {};branch=z9hG4bKbye-d1\nMax-Forwards: 70\n\
         From: <sip:bob@b.test>;tag=b\nTo: <sip:alice@{DOMAIN}>;tag=fd1\nCall-ID: d1\n\
         CSeq: 1 BYE\nRoute: {route}\nContent-Length: 0\n\n",
        via_for(peer)
    );
    h.leaf_sends(peer, &bye);
    let byes = sent(&mut h, "BYE");
    assert_eq!(byes.len(), 1, "{byes:?}");
    assert_eq!(
        byes[0].dest,
        Dest::Flow(alice),
        "to alice, not back to b.test"
    );
    // The same BYE from a connection of someone else is not b.test's: it
    // goes back toward the server the token names, not to alice.
    let other = stream_leaf(10, 94, Transport::Tls);
    h.node(1).connection_opened(94);
    h.leaf_sends(other, &bye.replace("bye-d1", "bye-d1x"));
    let byes = sent(&mut h, "BYE");
    assert!(
        byes.iter().all(|b| b.dest != Dest::Flow(alice)),
        "a stranger does not reach alice with b.test's route: {byes:?}"
    );
}

/// A node whose peer b (certificate sbc.b.test) is limited to `rate`
/// requests per second and `strip`s its identities or not; b's connection
/// 95, and bob registered.
fn limited_peer(rate: u32, strip: bool) -> (Harness, FlowRef, FlowRef) {
    let mut h = peering();
    let mut b = Element::parse_flag("peer-farm:b=tls:sbc.b.test@b.test").unwrap();
    b.rate = rate;
    b.strip_identity = strip;
    h.node(1).set_trusted(TrustTable::new(vec![b]));
    let bob = udp_leaf(2);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    let peer = stream_leaf(9, 95, Transport::Tls);
    h.node(1).connection_opened(95);
    h.node(1).connection_named(95, vec!["sbc.b.test".into()]);
    (h, peer, bob)
}

/// A MESSAGE from carol@b.test on the peer's connection, asserting her.
fn carols_message(peer: FlowRef, call: &str) -> String {
    format!(
        "MESSAGE sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bKc{call}\nMax-Forwards: 70\n\
         From: <sip:carol@b.test>;tag=c{call}\nTo: <sip:bob@{DOMAIN}>\nCall-ID: {call}\n\
         CSeq: 1 MESSAGE\nP-Asserted-Identity: <sip:carol@b.test>\nContent-Type: text/plain\n\
         Content-Length: 2\n\nhi",
        via_for(peer)
    )
}

#[test]
fn attacker_a_peer_flooding_past_its_rate_gets_503_and_subscribers_are_served() {
    let (mut h, peer, _bob) = limited_peer(3, false);
    for i in 0..10 {
        h.leaf_sends(peer, &carols_message(peer, &format!("flood{i}")));
    }
    let at_bob = sent(&mut h, "MESSAGE");
    assert_eq!(at_bob.len(), 3, "one second's worth passes: {at_bob:?}");
    let refused: Vec<Message> = h
        .responses_to(peer)
        .into_iter()
        .filter(|m| m.status() == Some(503))
        .collect();
    assert_eq!(refused.len(), 7);
    assert!(header(&refused[0], HeaderName::RetryAfter).is_some());
    assert_eq!(h.metrics[0].count("Refused(PeerRate)"), 7);
    // alice, on the same node meanwhile, is served.
    let alice = udp_leaf(1);
    h.send_authenticated(alice, "alice", &message_text(alice, "alice", "bob", "ok1"));
    assert_eq!(
        sent(&mut h, "MESSAGE").len(),
        1,
        "alice's message reached bob"
    );
    // A second later the peer has its rate again.
    h.advance(Duration::from_secs(1));
    h.take();
    h.leaf_sends(peer, &carols_message(peer, "later"));
    assert_eq!(sent(&mut h, "MESSAGE").len(), 1);
}

#[test]
fn a_peer_outside_the_trust_domain_loses_its_asserted_identity() {
    for (strip, kept) in [(false, true), (true, false)] {
        let (mut h, peer, _bob) = limited_peer(0, strip);
        h.leaf_sends(peer, &carols_message(peer, "pai"));
        let at_bob = sent(&mut h, "MESSAGE");
        assert_eq!(at_bob.len(), 1, "{at_bob:?}");
        assert_eq!(
            header(&at_bob[0].msg, HeaderName::PAssertedIdentity).is_some(),
            kept,
            "strip_identity {strip}: {:?}",
            at_bob[0].msg
        );
    }
}

#[test]
fn with_topology_hiding_a_peer_sees_only_the_edge() {
    let mut h = peering();
    h.node(1).policy.topology_hiding = true;
    let alice = udp_leaf(1);
    h.send_authenticated(
        alice,
        "alice",
        &request_to(alice, "INVITE", "bob@b.test", "th"),
    );
    b_test_dns(&mut h);
    let out = sent(&mut h, "INVITE");
    let vias: Vec<&[u8]> = out[0].msg.header_lines(HeaderName::Via).collect();
    assert_eq!(vias.len(), 1, "only the edge's Via: {vias:?}");
    assert!(
        !String::from_utf8_lossy(out[0].msg.raw()).contains("192.0.2.1:5060;branch"),
        "alice's address is not in the request's Vias"
    );
}

#[test]
fn attacker_a_peers_transit_is_counted() {
    let (mut h, peer, _bob) = limited_peer(0, false);
    h.leaf_sends(peer, &request_to(peer, "INVITE", "dave@c.test", "tr"));
    assert_eq!(finals(&mut h, peer)[0].status(), Some(403));
    assert_eq!(h.metrics[0].count("Refused(PeerTransit)"), 1);
}
