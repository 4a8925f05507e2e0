//! The checks of RFC 3261 §8.2 and §16.3 that come before anything that
//! depends on who asks: 416, 483, 482, 420, 400; then no open relay (403),
//! and 481 for an in-dialog request the farm holds no dialog for.

use ringmesh_sip::HeaderName;

use super::*;

const ALICE: u8 = 1;

fn options(ruri: &str, max_forwards: u32, extra: &str) -> String {
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let n = unique();
    format!(
        "OPTIONS {ruri} SIP/2.0\nVia: {via};branch=z9hG4bKo{n}\nMax-Forwards: {max_forwards}\n\
         From: <sip:alice@{DOMAIN}>;tag=o{n}\nTo: <{ruri}>\nCall-ID: opt-{n}\nCSeq: 1 OPTIONS\n\
         {extra}Content-Length: 0\n\n"
    )
}

fn answer(h: &mut Harness, text: &str) -> Message {
    h.leaf_sends(udp_leaf(ALICE), text);
    h.final_to(udp_leaf(ALICE))
}

#[test]
fn an_unknown_request_uri_scheme_gets_416() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let r = answer(
        &mut h,
        &format!(
            "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\nVia: {via};branch=z9hG4bKu1\n\
             Max-Forwards: 70\nFrom: <sip:alice@{DOMAIN}>;tag=u1\nTo: <sip:bob@{DOMAIN}>\n\
             Call-ID: unk-1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
        ),
    );
    assert_eq!(r.status(), Some(416));
    assert!(h.requests().is_empty(), "nothing forwarded");
}

#[test]
fn max_forwards_zero_gets_483_unless_it_is_options_for_this_node() {
    let mut h = Harness::new();
    let r = answer(&mut h, &options(&format!("sip:bob@{DOMAIN}"), 0, ""));
    assert_eq!(r.status(), Some(483));
    // OPTIONS to the node itself (no user part) with Max-Forwards 0 is
    // answered, as a keep-alive or capability probe.
    let r = answer(&mut h, &options(&format!("sip:{DOMAIN}"), 0, ""));
    assert_eq!(r.status(), Some(200));
    assert!(header(&r, HeaderName::Allow).unwrap().contains("INVITE"));
}

#[test]
fn options_to_the_node_lists_what_it_supports() {
    let mut h = Harness::new();
    let r = answer(&mut h, &options("sip:10.0.0.1:5060", 70, ""));
    assert_eq!(r.status(), Some(200));
    assert_eq!(
        header(&r, HeaderName::Supported).as_deref(),
        Some("outbound, path, gruu")
    );
    assert_eq!(
        header(&r, HeaderName::Accept).as_deref(),
        Some("application/sdp")
    );
    // A request to the domain without a user is not routed anywhere.
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let r = answer(
        &mut h,
        &format!(
            "MESSAGE sip:{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKm1\nMax-Forwards: 70\n\
             From: <sip:alice@{DOMAIN}>;tag=m1\nTo: <sip:{DOMAIN}>\nCall-ID: msg-1\nCSeq: 1 MESSAGE\n\
             Content-Length: 0\n\n"
        ),
    );
    assert_eq!(r.status(), Some(404));
}

#[test]
fn an_unsupported_proxy_require_gets_420_naming_it() {
    let mut h = Harness::new();
    let r = answer(
        &mut h,
        &options(
            &format!("sip:bob@{DOMAIN}"),
            70,
            "Proxy-Require: outbound, foo, nothing-we-know\n",
        ),
    );
    assert_eq!(r.status(), Some(420));
    assert_eq!(
        header(&r, HeaderName::Unsupported).as_deref(),
        Some("foo, nothing-we-know"),
        "only the tags this node does not support"
    );
}

#[test]
fn a_register_whose_to_is_not_a_sip_aor_gets_400() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let r = answer(
        &mut h,
        &format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKt1\nMax-Forwards: 70\n\
             From: <tel:+15551234>;tag=t1\nTo: <tel:+15551234>\nCall-ID: tel-1\nCSeq: 1 REGISTER\n\
             Contact: <sip:x@192.0.2.1>\nContent-Length: 0\n\n"
        ),
    );
    assert_eq!(r.status(), Some(400));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("not a SIP AOR")
    );
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop_and_a_changed_one_a_spiral() {
    let mut h = Harness::open();
    let bob = udp_leaf(2);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &invite_text(alice, "alice", "bob", "loop-1"));
    let out = h.requests();
    assert_eq!(out.len(), 1);
    let forwarded = String::from_utf8_lossy(out[0].msg.raw()).into_owned();
    // Another proxy sends the very request back (our Via in it, the same
    // Request-URI): a loop (§16.3 step 4).
    let upstream = FlowRef::Udp {
        socket: 0,
        peer: "203.0.113.7:5060".parse().unwrap(),
    };
    // The upstream proxy adds its own Via on top, as any proxy does.
    let via_of = |b: &str| format!("Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK{b}\r\nVia:");
    let looped = forwarded
        .replacen(
            "INVITE sip:bob@192.0.2.2:5060 ",
            &format!("INVITE sip:bob@{DOMAIN} "),
            1,
        )
        .replacen("Via:", &via_of("up1"), 1);
    h.recv(1, &looped, Dest::Flow(upstream));
    assert_eq!(h.final_to(upstream).status(), Some(482));
    // With its Request-URI changed it is a spiral: processed again.
    let spiral = forwarded.replacen("Via:", &via_of("up2"), 1);
    h.recv(1, &spiral, Dest::Flow(upstream));
    let r = h.final_to(upstream);
    assert_ne!(r.status(), Some(482), "a spiral is not a loop: {r:?}");
}

#[test]
fn a_domain_the_farm_does_not_serve_is_refused() {
    let mut h = Harness::new();
    let r = answer(&mut h, &options("sip:bob@elsewhere.example", 70, ""));
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("not served here")
    );
    // Nor does a Route to a foreign hop make the farm relay.
    let r = answer(
        &mut h,
        &options(
            &format!("sip:bob@{DOMAIN}"),
            70,
            "Route: <sip:relay.elsewhere.example;lr>\n",
        ),
    );
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("will not relay")
    );
    assert!(h.requests().is_empty(), "nothing was relayed");
}

#[test]
fn an_in_dialog_request_that_did_not_come_through_our_record_route_gets_481() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let r = answer(
        &mut h,
        &format!(
            "BYE sip:bob@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKb1\nMax-Forwards: 70\n\
             From: <sip:alice@{DOMAIN}>;tag=a\nTo: <sip:bob@{DOMAIN}>;tag=b\nCall-ID: nodialog\n\
             CSeq: 2 BYE\nContent-Length: 0\n\n"
        ),
    );
    assert_eq!(r.status(), Some(481));
}

#[test]
fn another_node_must_name_a_flow_token() {
    // A request from a farm member without a token of ours: the farm sends
    // each other requests only along flow tokens.
    let mut h = Harness::farm();
    let text = options(&format!("sip:bob@{DOMAIN}"), 70, "");
    h.recv(1, &text, Dest::Peer(node_id(2)));
    let sent = h.take();
    let r = sent
        .iter()
        .find(|s| s.node == 1 && s.msg.status().is_some_and(|s| s >= 200))
        .expect("answered");
    assert_eq!(r.msg.status(), Some(403));
    assert_eq!(r.dest, Dest::Peer(node_id(2)));
}

#[test]
fn our_answers_carry_one_to_tag_per_dialog() {
    // RFC 3261 §8.2.6.2: the node's answers in one dialog (the challenge,
    // then the answer to the request with credentials) share a To tag, and
    // another dialog gets another tag.
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    let tag = |m: &Message| String::from_utf8_lossy(m.to_tag().expect("a To tag")).into_owned();
    let mut tags = Vec::new();
    for i in 0..20 {
        let call = format!("tag-{i}");
        let text = invite_text(alice, "alice", &format!("nobody{i}"), &call);
        h.leaf_sends(alice, &text);
        let challenge = h.final_to(alice);
        assert_eq!(challenge.status(), Some(407));
        let auth = authorization(
            &challenge,
            "alice",
            "secret",
            "INVITE",
            &format!("sip:nobody{i}@{DOMAIN}"),
        );
        let again = text
            .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
            .replace("branch=z9hG4bK", "branch=z9hG4bK2")
            .replacen("Content-Length:", &format!("{auth}Content-Length:"), 1);
        h.leaf_sends(alice, &again);
        let answer = h.final_to(alice);
        assert_eq!(answer.status(), Some(480));
        assert_eq!(tag(&challenge), tag(&answer), "one dialog, one tag");
        let t = tag(&answer);
        assert!(
            t.bytes().all(|c| c.is_ascii_alphanumeric()),
            "a token: {t:?}"
        );
        tags.push(t);
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 20, "a tag per dialog");
}
