//! The registrar's rules (RFC 3261 §10.3, RFC 5626 §6) through the proxy:
//! add, refresh, remove, `*`, ordering by Call-ID and CSeq, the expiry
//! limits, queries, Require, bindings expiring on the clock, and outbound
//! flows that fail.

use std::time::Duration;

use ringmesh_sip::HeaderName;

use super::*;

const ALICE: u8 = 1;

fn contacts(m: &Message) -> Vec<String> {
    m.header_values(HeaderName::Contact)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn reg(h: &mut Harness, text: &str) -> Message {
    let flow = udp_leaf(ALICE);
    h.leaf_sends(flow, text);
    h.final_to(flow)
}

fn r(call: &str, cseq: u32, contact: &str, expires: u32) -> String {
    register_text(udp_leaf(ALICE), "alice", contact, call, cseq, "", expires)
}

#[test]
fn add_refresh_and_remove() {
    let mut h = Harness::open();
    let a = reg(&mut h, &r("c1", 1, "<sip:alice@192.0.2.1:5060>", 600));
    assert_eq!(a.status(), Some(200));
    let c = contacts(&a);
    assert_eq!(c.len(), 1);
    assert!(c[0].contains("expires=600"), "{c:?}");
    // A second phone.
    let b = reg(&mut h, &r("c2", 1, "<sip:alice@192.0.2.1:6000>", 300));
    assert_eq!(contacts(&b).len(), 2, "200 lists every binding");
    // Refresh of the first with the same Call-ID, a higher CSeq.
    let a2 = reg(&mut h, &r("c1", 2, "<sip:alice@192.0.2.1:5060>", 1200));
    let c = contacts(&a2);
    assert_eq!(c.len(), 2);
    assert!(
        c.iter()
            .any(|x| x.contains(":5060>") && x.contains("expires=1200")),
        "{c:?}"
    );
    // Expires 0 removes it.
    let gone = reg(&mut h, &r("c1", 3, "<sip:alice@192.0.2.1:5060>", 0));
    let c = contacts(&gone);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains(":6000>"));
}

#[test]
fn a_star_removes_every_binding() {
    let mut h = Harness::open();
    reg(&mut h, &r("c1", 1, "<sip:alice@192.0.2.1:5060>", 600));
    reg(&mut h, &r("c2", 1, "<sip:alice@192.0.2.1:6000>", 600));
    let all = reg(&mut h, &r("c3", 1, "*", 0));
    assert_eq!(all.status(), Some(200));
    assert!(contacts(&all).is_empty());
    // `*` with a non-zero Expires is malformed.
    let bad = reg(&mut h, &r("c4", 1, "*", 60));
    assert_eq!(bad.status(), Some(400));
}

#[test]
fn an_out_of_order_cseq_in_one_call_id_is_refused() {
    let mut h = Harness::open();
    reg(&mut h, &r("c1", 5, "<sip:alice@192.0.2.1:5060>", 600));
    let late = reg(&mut h, &r("c1", 4, "<sip:alice@192.0.2.1:5060>", 0));
    assert_eq!(late.status(), Some(500));
    assert!(
        header(&late, HeaderName::Warning)
            .unwrap()
            .contains("out-of-order")
    );
    // The binding is still there.
    let q = reg(
        &mut h,
        &r("c9", 1, "<sip:alice@192.0.2.1:5060>", 600)
            .replace("Contact: <sip:alice@192.0.2.1:5060>\n", ""),
    );
    assert_eq!(contacts(&q).len(), 1, "a query lists what is bound");
}

#[test]
fn expiry_limits_423_below_the_minimum_and_capped_at_the_maximum() {
    let mut h = Harness::open();
    let brief = reg(&mut h, &r("c1", 1, "<sip:alice@192.0.2.1:5060>", 10));
    assert_eq!(brief.status(), Some(423));
    assert_eq!(
        header(&brief, HeaderName::MinExpires).as_deref(),
        Some("60")
    );
    let long = reg(&mut h, &r("c1", 2, "<sip:alice@192.0.2.1:5060>", 99_999));
    assert_eq!(long.status(), Some(200));
    assert!(contacts(&long)[0].contains("expires=7200"));
}

#[test]
fn a_required_extension_the_registrar_lacks_gets_420() {
    let mut h = Harness::open();
    let text = r("c1", 1, "<sip:alice@192.0.2.1:5060>", 600)
        .replace("Content-Length: 0", "Require: sec-agree\nContent-Length: 0");
    let resp = reg(&mut h, &text);
    assert_eq!(resp.status(), Some(420));
    assert_eq!(
        header(&resp, HeaderName::Unsupported).as_deref(),
        Some("sec-agree")
    );
    // outbound, path and gruu are supported.
    let text = r("c2", 1, "<sip:alice@192.0.2.1:5060>", 600).replace(
        "Content-Length: 0",
        "Require: outbound, path, gruu\nContent-Length: 0",
    );
    assert_eq!(reg(&mut h, &text).status(), Some(200));
}

#[test]
fn bindings_expire_with_the_clock() {
    let mut h = Harness::open();
    reg(&mut h, &r("c1", 1, "<sip:alice@192.0.2.1:5060>", 60));
    let bob = udp_leaf(2);
    h.leaf_sends(bob, &invite_text(bob, "bob", "alice", "exp-1"));
    assert_eq!(h.requests().len(), 1, "alice is reachable");
    h.take();
    h.advance(Duration::from_secs(61));
    h.take();
    h.leaf_sends(bob, &invite_text(bob, "bob", "alice", "exp-2"));
    let finals: Vec<u16> = h
        .responses_to(bob)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(finals, vec![480], "no binding left");
}

#[test]
fn an_outbound_flow_that_fails_is_not_replaced_by_the_contact() {
    let mut h = Harness::open();
    let alice = tcp_leaf(ALICE, 42);
    h.node(1).connection_opened(42);
    let text = register_text(
        alice,
        "alice",
        "<sip:alice@198.51.100.1:40000;transport=tcp;ob>;+sip.instance=\"<urn:uuid:a11ce>\";reg-id=1",
        "ob-1",
        1,
        "",
        600,
    )
    .replace("Content-Length: 0", "Supported: outbound\nContent-Length: 0");
    h.leaf_sends(alice, &text);
    let ok = h.final_to(alice);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        header(&ok, HeaderName::Require).as_deref(),
        Some("outbound"),
        "RFC 5626 §6: the registrar says it supports outbound"
    );
    let bob = udp_leaf(2);
    h.leaf_sends(bob, &invite_text(bob, "bob", "alice", "ob-call-1"));
    let out = h.requests();
    assert_eq!(out[0].dest, Dest::Flow(alice), "down the registered flow");
    h.take();
    // The connection drops: no route to alice until she registers again.
    let now = h.now;
    h.node(1).connection_closed(42, now);
    h.leaf_sends(bob, &invite_text(bob, "bob", "alice", "ob-call-2"));
    assert!(h.requests().is_empty());
    let finals: Vec<u16> = h
        .responses_to(bob)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(finals, vec![480]);
}

/// Replicas order a binding's versions by a hybrid logical clock whose high
/// bits are the wall clock in ms: a REGISTER handled later, on any node,
/// outranks an earlier one.
#[test]
fn a_binding_is_versioned_by_the_wall_clock() {
    let mut h = Harness::open();
    let first = h.now.wall_ms;
    assert_eq!(
        reg(&mut h, &r("c1", 1, "<sip:alice@192.0.2.1:5060>", 600)).status(),
        Some(200)
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(
        reg(&mut h, &r("c1", 2, "<sip:alice@192.0.2.1:5060>", 600)).status(),
        Some(200)
    );
    let lookup = LocationOp::Lookup {
        aor: Aor::parse(format!("sip:alice@{DOMAIN}").as_bytes()).unwrap(),
        now_ms: h.now.wall_ms,
    };
    let stored = h.store.execute(lookup).unwrap().into_bindings();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].hlc >> 16, first + 1000);
}
