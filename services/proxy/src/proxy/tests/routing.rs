//! Where requests and responses go: Record-Route with a flow token on
//! both edges, in-dialog requests routed by those tokens (on one node and
//! across two), tokens this farm did not sign, ACK for a 2xx, stray
//! responses, and the received/rport of RFC 3581.

use ringmesh_sip::{HeaderName, Method};

use super::*;

const ALICE: u8 = 1;
const BOB: u8 = 2;

/// The flow token in a Record-Route or Route value.
fn token_of(rr: &str) -> &str {
    rr.trim_start_matches("<sips:")
        .trim_start_matches("<sip:")
        .split('@')
        .next()
        .unwrap()
}

#[test]
fn both_edges_record_route_with_a_token_for_their_leaf_and_a_bye_follows_them() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), tcp_leaf(BOB, 7));
    h.node(1).connection_opened(7);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@198.51.100.2:40000;transport=tcp>")
            .status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "rr-1"));
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].dest,
        Dest::Flow(bob),
        "bob registered over a connection: reached down it"
    );
    let rr = record_route(&out[0].msg);
    assert_eq!(
        rr.len(),
        2,
        "one for the callee's flow, one for the caller's: {rr:?}"
    );
    assert!(rr[0].ends_with(":5060;transport=tcp;lr>"), "{}", rr[0]);
    assert!(rr[1].ends_with(":5060;lr>"), "{}", rr[1]);
    assert_ne!(token_of(&rr[0]), token_of(&rr[1]));
    // The callee's BYE: Route is the Record-Route as it came.
    let route = rr.join(", ");
    h.leaf_sends(
        bob,
        &bye(bob, "bob", "alice", "rr-1", &route, "sip:alice@192.0.2.1"),
    );
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, Dest::Flow(alice), "down the caller's flow");
    assert_eq!(
        out[0].msg.routes().count(),
        0,
        "both of the node's Route values consumed"
    );
    // And the caller's BYE the other way (its route set reversed).
    let route = format!("{}, {}", rr[1], rr[0]);
    h.leaf_sends(
        alice,
        &bye(
            alice,
            "alice",
            "bob",
            "rr-1",
            &route,
            "sip:bob@198.51.100.2:40000;transport=tcp",
        ),
    );
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, Dest::Flow(bob));
}

#[test]
fn a_token_this_farm_did_not_sign_routes_nowhere() {
    let mut h = Harness::open();
    let alice = udp_leaf(ALICE);
    // A token naming a flow to 203.0.113.66, signed with another key.
    let forged = crate::token::TokenKeys::new(&[(0, b"someone else's secret".to_vec())], 3600)
        .seal(
            &crate::token::FlowToken {
                node: node_id(1),
                dest: Dest::Flow(udp_leaf(66)),
            },
            crate::token::Dialog {
                call_id: b"forged-1",
                caller_tag: b"alice",
            },
            h.now.secs(),
        );
    let route = format!("<sip:{forged}@10.0.0.1:5060;lr>");
    h.leaf_sends(
        alice,
        &bye(
            alice,
            "alice",
            "bob",
            "forged-1",
            &route,
            "sip:bob@ringmesh.test",
        ),
    );
    let sent = h.take();
    assert!(
        sent.iter().all(|s| s.dest != Dest::Flow(udp_leaf(66))),
        "never sent where the forged token points: {sent:?}"
    );
}

#[test]
fn a_call_across_two_supernodes_is_routed_edge_to_edge() {
    let mut h = Harness::farm();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    // bob registers at node 2 (outbound, so node 2 must use his flow).
    assert_eq!(
        h.register_at(
            2,
            bob,
            "bob",
            "<sip:bob@192.0.2.2:5060;ob>;+sip.instance=\"<urn:uuid:b0b>\";reg-id=1"
        )
        .status(),
        Some(200)
    );
    h.take();

    // alice calls from node 1.
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "x-1"));
    let sent = h.take();
    let to_peer = sent
        .iter()
        .find(|s| s.node == 1 && s.dest == Dest::Peer(node_id(2)) && s.msg.is_request())
        .expect("node 1 sends the INVITE to bob's edge");
    let route = header(&to_peer.msg, HeaderName::Route).expect("a Route to the edge");
    assert!(route.ends_with("@10.0.0.2:5060;lr>"), "{route}");
    let rr1 = record_route(&to_peer.msg);
    assert_eq!(rr1.len(), 1, "node 1 records its leaf, alice: {rr1:?}");
    let to_bob = sent
        .iter()
        .find(|s| s.node == 2 && s.dest == Dest::Flow(bob) && s.msg.is_request())
        .expect("node 2 sends it down bob's flow");
    let rr = record_route(&to_bob.msg);
    assert_eq!(rr.len(), 2, "node 2 adds bob's flow: {rr:?}");
    assert!(rr[0].contains("@10.0.0.2:5060"));
    assert!(rr[1].contains("@10.0.0.1:5060"));
    assert_eq!(
        to_bob.msg.routes().count(),
        0,
        "node 2 consumed the Route naming it"
    );

    // bob answers at node 2; the 200 goes back through node 1 to alice.
    let ok = String::from_utf8_lossy(
        &to_bob
            .msg
            .response_writer(200, Some(b"bob-tag"))
            .finish(b""),
    )
    .into_owned();
    h.recv(2, &ok, Dest::Flow(bob));
    let finals: Vec<u16> = h
        .responses_to(alice)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(finals, vec![200]);

    // bob hangs up at node 2: along the tokens, through node 1 to alice.
    let route = rr.join(", ");
    h.recv(
        2,
        &bye(bob, "bob", "alice", "x-1", &route, "sip:alice@192.0.2.1"),
        Dest::Flow(bob),
    );
    let sent = h.take();
    assert!(
        sent.iter().any(|s| s.node == 2
            && s.dest == Dest::Peer(node_id(1))
            && *s.msg.method() == Method::Bye),
        "node 2 sends the BYE to node 1"
    );
    assert!(
        sent.iter()
            .any(|s| s.node == 1 && s.dest == Dest::Flow(alice) && *s.msg.method() == Method::Bye),
        "node 1 sends it down alice's flow"
    );

    // A phone at node 1 that saw node 2's Record-Route (bob's token, for
    // this dialog) cannot use it to start a request toward bob's edge.
    let out_of_dialog = format!(
        "MESSAGE sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bKm1\nMax-Forwards: 70\n\
         Route: {}\nFrom: <sip:alice@{DOMAIN}>;tag=fx-1\nTo: <sip:bob@{DOMAIN}>\n\
         Call-ID: x-1\nCSeq: 9 MESSAGE\nContent-Length: 0\n\n",
        via_for(udp_leaf(66)),
        rr[0]
    );
    h.recv(1, &out_of_dialog, Dest::Flow(udp_leaf(66)));
    assert_eq!(h.final_to(udp_leaf(66)).status(), Some(403));
    assert!(
        h.take().iter().all(|s| s.dest != Dest::Peer(node_id(2))),
        "nothing went to node 2"
    );
}

#[test]
fn the_ack_for_a_2xx_is_forwarded_statelessly_along_the_route_set() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "ack-1"));
    let rr = record_route(&h.requests()[0].msg);
    let route = format!("{}, {}", rr[1], rr[0]);
    let ack = format!(
        "ACK sip:bob@192.0.2.2:5060 SIP/2.0\nVia: {};branch=z9hG4bKack1\nMax-Forwards: 70\n\
         From: <sip:alice@{DOMAIN}>;tag=fack-1\nTo: <sip:bob@{DOMAIN}>;tag=b\nCall-ID: ack-1\n\
         CSeq: 1 ACK\nRoute: {route}\nContent-Length: 0\n\n",
        via_for(alice)
    );
    h.leaf_sends(alice, &ack);
    let out = h.requests();
    assert_eq!(out.len(), 1);
    let expected = Dest::Addr {
        transport: Transport::Udp,
        addr: "192.0.2.2:5060".parse().unwrap(),
    };
    assert_eq!(out[0].dest, expected, "to the callee's Contact");
    assert_eq!(*out[0].msg.method(), Method::Ack);
    assert_eq!(out[0].msg.vias().count(), 2, "the node added its Via");
}

#[test]
fn a_stray_response_goes_on_only_where_our_branch_vouches_for() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    // alice's INVITE reaches bob; bob's 200 ends the client transaction.
    let invite =
        invite_text(alice, "alice", "bob", "stray-1").replace(";branch=", ";rport;branch=");
    h.leaf_sends(alice, &invite);
    let fwd = h.requests().remove(0).msg;
    let ok =
        String::from_utf8_lossy(&fwd.response_writer(200, Some(b"b1")).finish(b"")).into_owned();
    let from_bob = Dest::Addr {
        transport: Transport::Udp,
        addr: bob.peer(),
    };
    h.recv(1, &ok, from_bob);
    assert_eq!(h.responses_to(alice).len(), 2, "100 and the 200");
    // Once the client transaction is gone (Timer M, RFC 6026), a
    // retransmission of the 200 matches nothing: it is sent on along the
    // next Via (alice's, with received and rport).
    h.advance(Duration::from_secs(40));
    h.take();
    h.recv(1, &ok, from_bob);
    let sent = h.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: alice.peer()
        }
    );
    assert_eq!(sent[0].msg.vias().count(), 1, "our Via popped");
    // The same response with the next Via pointing elsewhere (the attacker
    // wants the farm to send to 203.0.113.9): our branch does not vouch.
    let alice_via = String::from_utf8_lossy(fwd.vias().nth(1).unwrap().as_bytes()).into_owned();
    for elsewhere in [
        "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKx",
        "SIP/2.0/UDP 255.255.255.255:5060;branch=z9hG4bKy",
        &alice_via.replace("received=192.0.2.1", "received=203.0.113.9"),
    ] {
        h.recv(1, &ok.replace(&alice_via, elsewhere), from_bob);
        assert!(h.take().is_empty(), "forwarded to {elsewhere}");
    }
    // A branch of ours without the MAC, and a Via that is not ours.
    let our_via = String::from_utf8_lossy(fwd.top_via().as_bytes()).into_owned();
    let no_mac = our_via.rsplit_once('.').unwrap().0.to_string();
    h.recv(1, &ok.replace(&our_via, &no_mac), from_bob);
    assert!(h.take().is_empty(), "a branch without the MAC");
    h.recv(
        1,
        &ok.replace("10.0.0.1:5060", "198.51.100.50:5060"),
        from_bob,
    );
    assert!(h.take().is_empty(), "not our Via");
    // Counted: the two redirected ones and the one without a MAC (a
    // broadcast address and a foreign Via are dropped before any check).
    assert_eq!(h.metrics[0].count("Refused(ForgedResponse)"), 3);
}

#[test]
fn the_top_via_gets_received_and_rport_filled_in() {
    let mut h = Harness::open();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    // alice's Via names a private address and asks for rport; she is at
    // 192.0.2.1:5060 as seen by the node.
    let alice = udp_leaf(ALICE);
    let text = invite_text(alice, "alice", "bob", "nat-1").replace(
        &format!("Via: {};", via_for(alice)),
        "Via: SIP/2.0/UDP 10.1.1.5:5062;rport;",
    );
    h.leaf_sends(alice, &text);
    let out = h.requests();
    let vias: Vec<String> = out[0]
        .msg
        .vias()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    assert_eq!(vias.len(), 2);
    assert!(vias[1].contains("rport=5060"), "{}", vias[1]);
    assert!(vias[1].contains("received=192.0.2.1"), "{}", vias[1]);
}

/// bob registered at node 2, which then leaves node 1's view; alice calls
/// him through node 1. The harness, the node's address and alice.
fn bob_behind_a_gone_supernode(call_id: &str) -> (Harness, String, FlowRef) {
    let mut h = Harness::farm();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register_at(2, bob, "bob", "<sip:bob@192.0.2.2:5060>")
            .status(),
        Some(200)
    );
    let addr = h.members.0.lock().unwrap().remove(&node_id(2)).unwrap();
    h.take();
    let alice = udp_leaf(ALICE);
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", call_id));
    (h, addr, alice)
}

fn sent_to_node_2(sent: &[Sent]) -> usize {
    sent.iter()
        .filter(|s| s.msg.is_request() && s.dest == Dest::Peer(node_id(2)))
        .count()
}

/// The final responses to the authenticated INVITE (the challenge's 407
/// is retransmitted: it is never acknowledged here).
fn finals(sent: &[Sent]) -> Vec<&Message> {
    sent.iter()
        .map(|s| &s.msg)
        .filter(|m| m.status().is_some_and(|c| c >= 200 && c != 407))
        .collect()
}

#[test]
fn a_call_waits_for_a_gone_supernode_then_gets_480_asking_to_retry() {
    let (mut h, _, _) = bob_behind_a_gone_supernode("gone-1");
    let sent = h.take();
    assert_eq!(sent_to_node_2(&sent), 0, "nothing sent to a gone edge");
    assert!(finals(&sent).is_empty(), "the call waits: {sent:?}");
    h.advance(crate::proxy::parked::PARK_FOR + crate::proxy::parked::RETRY_EVERY);
    let sent = h.take();
    assert_eq!(sent_to_node_2(&sent), 0);
    // bob is registered through a node that did not come back: the caller
    // may try again in a moment (he registers through another).
    let answer = finals(&sent);
    assert_eq!(answer.len(), 1, "{sent:?}");
    assert_eq!(answer[0].status(), Some(480));
    assert_eq!(answer[0].header(HeaderName::RetryAfter), Some(&b"2"[..]));
}

#[test]
fn a_call_waiting_for_a_restarting_supernode_goes_through_when_it_is_back() {
    let (mut h, addr, _) = bob_behind_a_gone_supernode("gone-2");
    h.advance(Duration::from_secs(1));
    assert_eq!(sent_to_node_2(&h.take()), 0);
    // Node 2 is back (its restart done) within the wait.
    h.members.0.lock().unwrap().insert(node_id(2), addr);
    h.advance(crate::proxy::parked::RETRY_EVERY);
    let sent = h.take();
    assert_eq!(
        sent_to_node_2(&sent),
        1,
        "the INVITE reaches bob's node: {sent:?}"
    );
    assert!(finals(&sent).is_empty(), "no failure on the way: {sent:?}");
}

#[test]
fn a_cancel_ends_a_call_waiting_for_a_supernode_at_once() {
    let (mut h, _, alice) = bob_behind_a_gone_supernode("gone-3");
    // The CANCEL of the INVITE that carried credentials (its branch, its
    // CSeq number).
    let cancel = invite_text(alice, "alice", "bob", "gone-3")
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("branch=z9hG4bK", "branch=z9hG4bK2")
        .replace("CSeq: 1 INVITE", "CSeq: 2 CANCEL");
    h.take();
    h.leaf_sends(alice, &cancel);
    let statuses: Vec<u16> = finals(&h.take())
        .iter()
        .filter_map(|m| m.status())
        .collect();
    assert!(statuses.contains(&487), "the INVITE ends 487: {statuses:?}");
    h.advance(crate::proxy::parked::PARK_FOR);
    let sent = h.take();
    assert_eq!(sent_to_node_2(&sent), 0);
    assert!(
        finals(&sent).iter().all(|m| m.status() == Some(487)),
        "nothing but the 487 again once cancelled: {sent:?}"
    );
}

#[test]
fn a_callee_unreachable_from_its_own_supernode_gets_480_at_once() {
    // bob's only binding is held by this node and names nothing it can
    // send to: no other supernode is coming back for him, so the call does
    // not wait.
    let mut h = Harness::farm();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register_at(1, bob, "bob", "<mailto:bob@example.com>")
            .status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "own-1"));
    let sent = h.take();
    let answer = finals(&sent);
    assert_eq!(answer.len(), 1, "answered without waiting: {sent:?}");
    assert_eq!(answer[0].status(), Some(480));
}

#[test]
fn a_retransmitted_2xx_reaches_a_caller_behind_nat_at_its_source() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    // alice's Via names her private address; the node sees her at
    // 192.0.2.1:5060, which its branch vouches for.
    let invite = invite_text(alice, "alice", "bob", "stray-nat").replace(
        &format!("Via: {};", via_for(alice)),
        "Via: SIP/2.0/UDP 10.1.1.5:5062;rport;",
    );
    h.leaf_sends(alice, &invite);
    let fwd = h.requests().remove(0).msg;
    let ok =
        String::from_utf8_lossy(&fwd.response_writer(200, Some(b"b1")).finish(b"")).into_owned();
    let from_bob = Dest::Addr {
        transport: Transport::Udp,
        addr: bob.peer(),
    };
    h.recv(1, &ok, from_bob);
    // The client transaction is gone (Timer M): a retransmission of the
    // 200 goes on statelessly, to where alice really is.
    h.advance(Duration::from_secs(40));
    h.take();
    h.recv(1, &ok, from_bob);
    let sent = h.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: alice.peer()
        }
    );
    assert_eq!(h.metrics[0].count("Refused(ForgedResponse)"), 0);
}

/// The INVITEs node `n` sent since the last `take`, by destination.
fn invites_from(h: &mut Harness, n: u8) -> Vec<Dest> {
    h.requests()
        .into_iter()
        .filter(|s| s.node == n && *s.msg.method() == Method::Invite)
        .map(|s| s.dest)
        .collect()
}

#[test]
fn a_phone_registered_over_tcp_is_reached_down_its_connection_then_at_its_contact() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), tcp_leaf(BOB, 8));
    h.node(1).connection_opened(8);
    // bob's Contact names the port he listens on, not his connection's.
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@198.51.100.2:5060;transport=tcp>")
            .status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "tcp-1"));
    assert_eq!(
        invites_from(&mut h, 1),
        vec![Dest::Flow(bob)],
        "down the connection he registered over"
    );
    // Without outbound, a connection that closed is no reason not to try
    // his Contact (RFC 3261 §18.1.1: a new connection).
    let now = h.now;
    h.node(1).connection_closed(8, now);
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "tcp-2"));
    assert_eq!(
        invites_from(&mut h, 1),
        vec![Dest::Addr {
            transport: Transport::Tcp,
            addr: "198.51.100.2:5060".parse().unwrap()
        }]
    );
}

/// A browser over secure WebSocket calls a phone over TLS: each leg goes
/// down its own connection, each edge names its hop with the transport and
/// port of its leaf's flow (`transport=tls`, `transport=ws`; `sips:` only in
/// a `sips:` dialog), and the dialog's BYE follows them.
#[test]
fn tls_and_websocket_flows_are_record_routed_on_their_own_transports() {
    let mut h = Harness::open();
    let alice = stream_leaf(ALICE, 11, Transport::Wss);
    let bob = stream_leaf(BOB, 12, Transport::Tls);
    h.node(1).connection_opened(11);
    h.node(1).connection_opened(12);
    assert_eq!(
        h.register(
            alice,
            "alice",
            "<sip:a1b2@df7jal23ls0d.invalid;transport=ws>"
        )
        .status(),
        Some(200)
    );
    assert_eq!(
        h.register(bob, "bob", "<sips:bob@198.51.100.2:5061>")
            .status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "tls-1"));
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, Dest::Flow(bob));
    let via = String::from_utf8_lossy(out[0].msg.top_via().as_bytes()).into_owned();
    assert!(via.starts_with("SIP/2.0/TLS 10.0.0.1:5061;"), "{via}");
    let rr = record_route(&out[0].msg);
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(rr[0].starts_with("<sip:"), "{}", rr[0]);
    assert!(
        rr[0].ends_with("@10.0.0.1:5061;transport=tls;lr>"),
        "{}",
        rr[0]
    );
    assert!(rr[1].starts_with("<sip:"), "{}", rr[1]);
    assert!(
        rr[1].ends_with("@10.0.0.1:8443;transport=ws;lr>"),
        "{}",
        rr[1]
    );
    let route = rr.join(", ");
    h.leaf_sends(
        bob,
        &bye(
            bob,
            "bob",
            "alice",
            "tls-1",
            &route,
            "sip:a1b2@df7jal23ls0d.invalid;transport=ws",
        ),
    );
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].dest,
        Dest::Flow(alice),
        "down the browser's WebSocket"
    );
    assert_eq!(out[0].msg.routes().count(), 0);
    // In a sips: dialog the TLS and WSS hops are sips: (RFC 3261 §16.6).
    h.leaf_sends(
        alice,
        &invite_text(alice, "alice", "bob", "tls-s").replace("INVITE sip:", "INVITE sips:"),
    );
    let out = h.requests();
    let rr = record_route(&out[0].msg);
    assert!(
        rr[0].starts_with("<sips:") && rr[0].ends_with(":5061;lr>"),
        "{}",
        rr[0]
    );
    assert!(
        rr[1].starts_with("<sips:") && rr[1].ends_with(":8443;transport=ws;lr>"),
        "{}",
        rr[1]
    );
    // bob's TLS connection closes: without outbound, a new TLS connection
    // to his Contact (5061, the default port of sips:).
    let now = h.now;
    h.node(1).connection_closed(12, now);
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "tls-2"));
    assert_eq!(
        invites_from(&mut h, 1),
        vec![Dest::Addr {
            transport: Transport::Tls,
            addr: "198.51.100.2:5061".parse().unwrap()
        }]
    );
}

#[test]
fn an_outbound_phone_over_udp_is_reached_down_its_flow() {
    let mut h = Harness::open();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    let text = register_text(
        bob,
        "bob",
        "<sip:bob@203.0.113.20:5062;ob>;+sip.instance=\"<urn:uuid:b0b>\";reg-id=1",
        "ob-udp-1",
        1,
        "",
        600,
    );
    h.leaf_sends(bob, &text);
    assert_eq!(h.final_to(bob).status(), Some(200));
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "ob-udp-call"));
    assert_eq!(
        invites_from(&mut h, 1),
        vec![Dest::Flow(bob)],
        "RFC 5626 §5.3: the flow, not the Contact"
    );
}

#[test]
fn in_a_farm_a_phone_registered_at_this_node_is_reached_directly() {
    let mut h = Harness::farm();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "local-1"),
    );
    let sent = h.take();
    let invites: Vec<(u8, Dest)> = sent
        .iter()
        .filter(|s| *s.msg.method() == Method::Invite && s.msg.is_request())
        .map(|s| (s.node, s.dest))
        .collect();
    assert_eq!(
        invites,
        vec![(
            1,
            Dest::Addr {
                transport: Transport::Udp,
                addr: bob.peer()
            }
        )],
        "no detour over the overlay"
    );
}

#[test]
fn a_dialog_whose_two_ends_share_one_flow_is_routed_back_down_it() {
    // alice and bob behind one NAT binding (192.0.2.1:5060): each of the
    // node's tokens names that flow, and an in-dialog request from it goes
    // back to it.
    let mut h = Harness::open();
    let nat = udp_leaf(ALICE);
    assert_eq!(
        h.register(nat, "bob", "<sip:bob@192.168.1.7:5060>")
            .status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(nat, &invite_text(nat, "alice", "bob", "nat-2"));
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: nat.peer()
        },
        "bob's private Contact is reached at the NAT"
    );
    let rr = record_route(&out[0].msg);
    assert_eq!(rr.len(), 2, "{rr:?}");
    // alice hangs up: her route set is the Record-Route reversed.
    let route = format!("{}, {}", rr[1], rr[0]);
    h.leaf_sends(
        nat,
        &bye(
            nat,
            "alice",
            "bob",
            "nat-2",
            &route,
            "sip:bob@192.168.1.7:5060",
        ),
    );
    let out = h.requests();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(*out[0].msg.method(), Method::Bye);
    assert_eq!(out[0].msg.routes().count(), 0);
    assert_eq!(
        out[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: nat.peer()
        }
    );
    // One token naming the sender is no dialog with both ends there: a
    // request routed by alice's own token alone is not sent back to her.
    h.leaf_sends(
        nat,
        &bye(
            nat,
            "alice",
            "bob",
            "nat-2",
            &rr[1],
            "sip:bob@192.168.1.7:5060",
        )
        .replace("z9hG4bKbye", "z9hG4bKbye2")
        .replace("CSeq: 2 BYE", "CSeq: 3 BYE"),
    );
    assert!(h.requests().is_empty(), "nothing sent back to the NAT");
    assert_eq!(h.final_to(nat).status(), Some(403), "nor relayed");
}

#[test]
fn a_bye_toward_a_member_that_left_is_not_sent_over_the_overlay() {
    let mut h = Harness::farm();
    let (alice, bob) = (udp_leaf(ALICE), udp_leaf(BOB));
    assert_eq!(
        h.register_at(2, bob, "bob", "<sip:bob@192.0.2.2:5060>")
            .status(),
        Some(200)
    );
    h.take();
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "bob", "left-1"),
    );
    let sent = h.take();
    let to_bob = sent
        .iter()
        .find(|s| s.node == 2 && s.msg.is_request() && *s.msg.method() == Method::Invite)
        .expect("node 2 forwards the INVITE to bob");
    let rr = record_route(&to_bob.msg);
    assert_eq!(rr.len(), 2, "{rr:?}");
    // Node 2 leaves node 1's view; alice hangs up at node 1.
    h.members.0.lock().unwrap().remove(&node_id(2));
    let route = format!("{}, {}", rr[1], rr[0]);
    h.leaf_sends(
        alice,
        &bye(
            alice,
            "alice",
            "bob",
            "left-1",
            &route,
            "sip:bob@192.0.2.2:5060",
        ),
    );
    let sent = h.take();
    assert!(
        sent.iter().all(|s| s.dest != Dest::Peer(node_id(2))),
        "nothing to a member that is gone: {sent:?}"
    );
    let finals: Vec<u16> = sent
        .iter()
        .filter(|s| s.dest == Dest::Flow(alice))
        .filter_map(|s| s.msg.status())
        .collect();
    assert_eq!(finals, vec![403], "the farm relays for no one");
}

#[test]
fn a_phone_that_reconnects_from_the_same_address_keeps_its_dialogs() {
    let mut h = Harness::open();
    let (alice, bob) = (tcp_leaf(ALICE, 7), udp_leaf(BOB));
    h.node(1).connection_opened(7);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "reconnect-1"));
    let rr = record_route(&h.requests()[0].msg);
    assert_eq!(rr.len(), 2, "{rr:?}");
    // alice's connection drops; she connects again from the same address
    // and port, and hangs up over the new connection.
    let now = h.now;
    h.node(1).connection_closed(7, now);
    let again = tcp_leaf(ALICE, 9);
    assert_eq!(again.peer(), alice.peer());
    h.node(1).connection_opened(9);
    let route = format!("{}, {}", rr[1], rr[0]);
    h.leaf_sends(
        again,
        &bye(
            again,
            "alice",
            "bob",
            "reconnect-1",
            &route,
            "sip:bob@192.0.2.2:5060",
        ),
    );
    let out = h.requests();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(*out[0].msg.method(), Method::Bye);
    assert_eq!(
        out[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: bob.peer()
        },
        "her own token is hers whichever connection she uses"
    );
}

#[test]
fn a_bye_toward_a_trusted_element_keeps_the_route_it_recorded_itself() {
    use crate::trust::{Element, TrustTable};
    let mut h = Harness::open();
    let (gateway, bob) = (udp_leaf(200), udp_leaf(BOB));
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("gateway:gw1=192.0.2.200").unwrap(),
    ]));
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    // A PSTN gateway that record-routes itself calls bob.
    let invite = invite_text(gateway, "gw", "bob", "gw-1").replace(
        "Content-Length: 0",
        "Record-Route: <sip:192.0.2.200;lr>\nContent-Length: 0",
    );
    h.leaf_sends(gateway, &invite);
    let out = h.requests();
    assert_eq!(out.len(), 1, "{out:?}");
    let rr = record_route(&out[0].msg);
    assert_eq!(rr.len(), 3, "{rr:?}");
    assert_eq!(rr[2], "<sip:192.0.2.200;lr>");
    // bob hangs up: the node sends the BYE to the gateway's flow, with the
    // gateway's own Route value left for it.
    let route = rr.join(", ");
    // (The gateway's tag is the one `invite_text` gave its From.)
    let text = bye(bob, "bob", "gw", "gw-1", &route, "sip:gw@192.0.2.200")
        .replace("tag=tgw\n", "tag=fgw-1\n");
    h.leaf_sends(bob, &text);
    let out = h.requests();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, Dest::Flow(gateway));
    let left: Vec<String> = out[0]
        .msg
        .header_values(HeaderName::Route)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(left, vec!["<sip:192.0.2.200;lr>".to_string()]);
}
