//! RFC 5626 flow failure at the edge: a closed or silent outbound flow
//! takes its binding with it at once, so the next request goes down the
//! phone's other flow; keep-alives keep a flow; a binding the phone moved
//! to a new flow survives the old flow's end.

use std::time::Duration;

use super::*;

const ALICE: u8 = 1;
const BOB: u8 = 2;

/// bob's instance registers reg-id `reg_id` over `flow`.
fn register_outbound(h: &mut Harness, flow: FlowRef, reg_id: u32, call_id: &str, cseq: u32) {
    let text = register_text(
        flow,
        "bob",
        &format!(
            "<sip:bob@{};ob>;+sip.instance=\"<urn:uuid:b0b>\";reg-id={reg_id}",
            flow.peer()
        ),
        call_id,
        cseq,
        "",
        600,
    );
    h.leaf_sends(flow, &text);
    assert_eq!(h.final_to(flow).status(), Some(200));
}

/// Where an INVITE from alice to bob goes now.
fn invite_dests(h: &mut Harness, call: &str) -> Vec<Dest> {
    h.take();
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", call));
    h.requests()
        .into_iter()
        .filter(|s| *s.msg.method() == ringmesh_sip::Method::Invite)
        .map(|s| s.dest)
        .collect()
}

#[test]
fn a_closed_outbound_connection_takes_its_binding_at_once() {
    let mut h = Harness::open();
    let (one, two) = (
        stream_leaf(BOB, 41, Transport::Tls),
        stream_leaf(BOB + 10, 42, Transport::Tls),
    );
    h.node(1).connection_opened(41);
    h.node(1).connection_opened(42);
    register_outbound(&mut h, one, 1, "ob-1", 1);
    register_outbound(&mut h, two, 2, "ob-2", 1);
    assert_eq!(h.bindings_of("sip:bob@ringmesh.test"), 2);
    let now = h.now;
    h.node(1).connection_closed(41, now);
    h.pump();
    assert_eq!(
        h.bindings_of("sip:bob@ringmesh.test"),
        1,
        "gone from the store, not left to expire"
    );
    assert_eq!(h.metrics[0].count("FlowFailed(Closed)"), 1);
    assert_eq!(invite_dests(&mut h, "after-close"), vec![Dest::Flow(two)]);
}

#[test]
fn a_silent_udp_flow_goes_after_its_flow_timer_and_keep_alives_keep_one() {
    let mut h = Harness::open();
    let (quiet, chatty) = (udp_leaf(BOB), udp_leaf(BOB + 10));
    register_outbound(&mut h, quiet, 1, "ob-q", 1);
    register_outbound(&mut h, chatty, 2, "ob-c", 1);
    // Flow-Timer 120 s: a STUN keep-alive every 100 s on one flow only.
    for _ in 0..2 {
        h.advance(Duration::from_secs(100));
        let now = h.now;
        h.node(1).flow_alive(chatty, now);
    }
    assert_eq!(
        h.bindings_of("sip:bob@ringmesh.test"),
        1,
        "the quiet flow went once silent for 120 s plus the margin"
    );
    assert_eq!(h.metrics[0].count("FlowFailed(Silent)"), 1);
    assert_eq!(
        invite_dests(&mut h, "after-silence"),
        vec![Dest::Flow(chatty)]
    );
}

#[test]
fn a_silent_outbound_connection_is_closed() {
    let mut h = Harness::open();
    let conn = tcp_leaf(BOB, 43);
    h.node(1).connection_opened(43);
    register_outbound(&mut h, conn, 1, "ob-t", 1);
    h.advance(Duration::from_secs(131));
    assert!(h.closed.is_empty(), "within the timer and its margin");
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.closed,
        vec![(1, 43)],
        "closed: silent past the Flow-Timer"
    );
    assert_eq!(h.bindings_of("sip:bob@ringmesh.test"), 0);
}

#[test]
fn a_binding_moved_to_a_new_flow_survives_the_old_one() {
    let mut h = Harness::open();
    let (old, new) = (tcp_leaf(BOB, 44), tcp_leaf(BOB + 10, 45));
    h.node(1).connection_opened(44);
    h.node(1).connection_opened(45);
    register_outbound(&mut h, old, 1, "ob-m", 1);
    // The phone reconnects and registers the same reg-id with a new
    // Call-ID (no CSeq order between the two): the binding is now on the
    // new flow.
    register_outbound(&mut h, new, 1, "ob-m2", 1);
    let now = h.now;
    h.node(1).connection_closed(44, now);
    h.pump();
    assert_eq!(h.bindings_of("sip:bob@ringmesh.test"), 1);
    assert_eq!(h.metrics[0].count("FlowFailed"), 0);
    assert_eq!(invite_dests(&mut h, "moved"), vec![Dest::Flow(new)]);
}
