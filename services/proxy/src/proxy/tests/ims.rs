//! Registration behind a front end (Path, Service-Route,
//! P-Associated-URI), implicit registration sets and tel: numbers, and
//! GRUUs: what the farm does as an IMS-like registrar, and what it refuses.

use super::*;
use crate::trust::{Element, TrustTable};

/// The front end (a P-CSCF) at 192.0.2.50:5060, trusted on every node.
fn pcscf(h: &mut Harness) -> FlowRef {
    for n in 1..=h.nodes.len() as u8 {
        h.node(n).set_trusted(TrustTable::new(vec![
            Element::parse_flag("front-end:pcscf=192.0.2.50").unwrap(),
        ]));
    }
    udp_leaf(50)
}

const PATH: &str = "<sip:term@192.0.2.50:5060;lr>";

/// A REGISTER relayed by the front end for `user`'s phone at 10.9.0.7
/// (Path added, no credentials: the front end vouches for its users).
fn relayed_register(user: &str, call: &str, cseq: u32, expires: u32) -> String {
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKpc{call}{cseq}\n\
         Via: SIP/2.0/UDP 10.9.0.7:5060;branch=z9hG4bKue{call}{cseq}\nMax-Forwards: 69\n\
         From: <sip:{user}@{DOMAIN}>;tag=r{cseq}\nTo: <sip:{user}@{DOMAIN}>\nCall-ID: {call}\n\
         CSeq: {cseq} REGISTER\nContact: <sip:{user}@10.9.0.7:5060>\nExpires: {expires}\n\
         Path: {PATH}\nSupported: path\nContent-Length: 0\n\n"
    )
}

/// An INVITE to `ruri` from `flow`, with extra header lines.
fn invite_to(flow: FlowRef, from: &str, ruri: &str, call: &str, extra: &str) -> String {
    let via = via_for(flow);
    format!(
        "INVITE {ruri} SIP/2.0\nVia: {via};branch=z9hG4bKi{call}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=f{call}\nTo: <{ruri}>\nCall-ID: {call}\n\
         CSeq: 1 INVITE\nContact: <sip:{from}@{}>\n{extra}Content-Length: 0\n\n",
        flow.peer()
    )
}

/// Bob (authenticated, on `bob`) calls `ruri`.
fn bob_calls(h: &mut Harness, bob: FlowRef, ruri: &str, call: &str) {
    h.send_authenticated(bob, "bob", &invite_to(bob, "bob", ruri, call, ""));
}

/// The INVITEs sent since the last `take`.
fn invites(h: &mut Harness) -> Vec<Sent> {
    h.requests()
        .into_iter()
        .filter(|s| s.msg.method().as_bytes() == b"INVITE")
        .collect()
}

#[test]
fn a_front_end_registers_a_whole_implicit_set_and_calls_reach_it_through_the_path() {
    let mut h = Harness::farm();
    let pc = pcscf(&mut h);
    // The front end registers erin at node 2.
    h.recv(
        2,
        &relayed_register("erin", "pc-reg-1", 1, 600),
        Dest::Flow(pc),
    );
    let ok = h.final_to(pc);
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    // The Path comes back (the phone supports it), with a Service-Route
    // through this node and every public identity, the default first.
    assert_eq!(header(&ok, HeaderName::Path).as_deref(), Some(PATH));
    let sr = header(&ok, HeaderName::ServiceRoute).expect("a Service-Route");
    assert!(
        sr.starts_with("<sip:sr.") && sr.ends_with("@10.0.0.2:5060;lr>"),
        "{sr}"
    );
    assert_eq!(
        header(&ok, HeaderName::PAssociatedUri).as_deref(),
        Some("<sip:erin@ringmesh.test>, <tel:+15550100>, <sip:erin-work@ringmesh.test>")
    );
    // tel:+15550100 is in erin's set: a call to it, at node 1, reaches
    // her contact through the front end, with the Path as Route and the
    // number called as P-Called-Party-ID.
    let bob = udp_leaf(2);
    h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>");
    h.take();
    let text = invite_to(bob, "bob", "tel:+1-555-0100", "tel-1", "");
    h.send_authenticated(bob, "bob", &text);
    let out = invites(&mut h);
    let at_pcscf: Vec<&Sent> = out.iter().filter(|s| s.dest == Dest::Flow(pc)).collect();
    assert_eq!(at_pcscf.len(), 1, "{out:?}");
    let m = &at_pcscf[0].msg;
    assert_eq!(m.request_uri_bytes(), b"sip:erin@10.9.0.7:5060");
    let routes: Vec<String> = m
        .routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(
        routes,
        vec![PATH.to_string()],
        "the edge's token is consumed"
    );
    assert_eq!(
        header(m, HeaderName::PCalledPartyId).as_deref(),
        Some("<tel:+1-555-0100>")
    );
    // The node that took the call sent it to erin's edge (node 2) with
    // the edge's token first and the Path after it.
    let relayed: Vec<&Sent> = out
        .iter()
        .filter(|s| s.dest == Dest::Peer(node_id(2)))
        .collect();
    assert_eq!(relayed.len(), 1);
    let hops: Vec<String> = relayed[0]
        .msg
        .routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert_eq!(hops[1], PATH);
    // sip:erin-work is not in the set: not registered.
    bob_calls(&mut h, bob, "sip:erin-work@ringmesh.test", "work-1");
    assert_eq!(h.final_to(bob).status(), Some(480));
    // De-registering through the front end takes the whole set.
    h.recv(
        2,
        &relayed_register("erin", "pc-reg-1", 2, 0),
        Dest::Flow(pc),
    );
    assert_eq!(h.final_to(pc).status(), Some(200));
    assert_eq!(h.bindings_of("sip:erin@ringmesh.test"), 0);
    assert_eq!(h.bindings_of("tel:+15550100"), 0);
    bob_calls(&mut h, bob, "tel:+15550100", "tel-2");
    assert_eq!(h.final_to(bob).status(), Some(480));
}

#[test]
fn registering_the_number_s_set_by_its_sip_identity_makes_the_number_reachable() {
    let mut h = Harness::new();
    let erin = udp_leaf(7);
    let ok = h.register(erin, "erin", "<sip:erin@192.0.2.7:5060>");
    assert_eq!(ok.status(), Some(200));
    // Stored once, under the set's sip: identity; the number is an alias.
    assert_eq!(h.bindings_of("sip:erin@ringmesh.test"), 1);
    assert_eq!(h.bindings_of("tel:+15550100"), 1);
    let bob = udp_leaf(2);
    h.take();
    // A SIP URI with user=phone is the number too.
    bob_calls(
        &mut h,
        bob,
        "sip:+15550100@ringmesh.test;user=phone",
        "uphone-1",
    );
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].msg.request_uri_bytes(), b"sip:erin@192.0.2.7:5060");
    // A number nobody owns has no route (yet): 480, as for any AOR.
    bob_calls(&mut h, bob, "tel:+15550199", "nobody-1");
    assert_eq!(h.final_to(bob).status(), Some(480));
}

#[test]
fn a_phone_cannot_register_a_path_nor_a_tel_uri() {
    let mut h = Harness::new();
    let mallory = udp_leaf(66);
    // Only front ends add Path: a phone's REGISTER with one is refused
    // before anything else (credentials included).
    let text = register_text(
        mallory,
        "alice",
        "<sip:alice@192.0.2.66>",
        "p-1",
        1,
        "",
        600,
    )
    .replace(
        "Content-Length: 0",
        "Path: <sip:192.0.2.66:5060;lr>\nContent-Length: 0",
    );
    h.leaf_sends(mallory, &text);
    let r = h.final_to(mallory);
    assert_eq!(r.status(), Some(403));
    assert!(header(&r, HeaderName::Warning).unwrap().contains("Path"));
    assert_eq!(h.metrics[0].count("PathFromPhone"), 1);
    // A REGISTER whose To is a number stays 400 (3GPP registers SIP URIs).
    let tel = register_text(
        mallory,
        "alice",
        "<sip:alice@192.0.2.66>",
        "t-1",
        1,
        "",
        600,
    )
    .replace(&format!("To: <sip:alice@{DOMAIN}>"), "To: <tel:+15550100>");
    h.leaf_sends(mallory, &tel);
    assert_eq!(h.final_to(mallory).status(), Some(400));
    // Alice on the same node registers as usual.
    let alice = udp_leaf(1);
    assert_eq!(
        h.register(alice, "alice", "<sip:alice@192.0.2.1:5060>")
            .status(),
        Some(200)
    );
}

#[test]
fn a_front_end_registers_only_subscribers() {
    let mut h = Harness::new();
    let pc = pcscf(&mut h);
    h.leaf_sends(pc, &relayed_register("nobody", "pc-n", 1, 600));
    let r = h.final_to(pc);
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("not a subscriber")
    );
    h.leaf_sends(pc, &relayed_register("carol", "pc-c", 1, 600));
    assert_eq!(h.final_to(pc).status(), Some(403), "carol is barred");
    // A directory that answers later: the REGISTER waits for it.
    *h.directory.mode.lock().unwrap() = DirMode::Later;
    h.leaf_sends(pc, &relayed_register("erin", "pc-e", 1, 600));
    assert!(h.responses_to(pc).iter().all(|m| m.status() == Some(100)));
    h.answer_lookups();
    assert_eq!(h.final_to(pc).status(), Some(200));
    assert_eq!(h.bindings_of("tel:+15550100"), 1);
}

/// The sealed user part of the Service-Route in a 200 OK.
fn service_route(ok: &Message) -> String {
    header(ok, HeaderName::ServiceRoute).expect("a Service-Route")
}

#[test]
fn a_service_route_is_followed_only_by_its_own_subscriber() {
    let mut h = Harness::new();
    // Registered through the front end: a Service-Route each.
    let pc = pcscf(&mut h);
    h.leaf_sends(pc, &relayed_register("alice", "sr-a", 1, 600));
    let alice_sr = service_route(&h.final_to(pc));
    h.leaf_sends(pc, &relayed_register("bob", "sr-b", 1, 600));
    let bob_sr = service_route(&h.final_to(pc));
    assert_ne!(alice_sr, bob_sr);
    // A phone registering directly gets none: it sends to the farm anyway.
    let direct = h.register(udp_leaf(3), "dave", "<sip:dave@192.0.2.3:5060>");
    assert_eq!(direct.status(), Some(200));
    assert!(direct.header(HeaderName::ServiceRoute).is_none());
    let (alice, bob) = (udp_leaf(1), udp_leaf(2));
    h.take();
    // Alice follows her Service-Route: the call goes through.
    let route = format!("Route: {alice_sr}\n");
    h.send_authenticated(
        alice,
        "alice",
        &invite_to(alice, "alice", "sip:bob@ringmesh.test", "sr-1", &route),
    );
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    let routes: Vec<String> = out[0]
        .msg
        .routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(
        routes,
        vec![PATH.to_string()],
        "the Service-Route is ours, bob's Path is his"
    );
    // Bob presenting alice's Service-Route is refused, once authenticated.
    h.send_authenticated(
        bob,
        "bob",
        &invite_to(bob, "bob", "sip:alice@ringmesh.test", "sr-2", &route),
    );
    let r = h.final_to(bob);
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("another subscriber")
    );
    // A forged one is refused before any challenge.
    let forged = "Route: <sip:sr.AxAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:5060;lr>\n";
    h.leaf_sends(
        bob,
        &invite_to(bob, "bob", "sip:alice@ringmesh.test", "sr-3", forged),
    );
    assert_eq!(h.final_to(bob).status(), Some(403));
    assert_eq!(h.metrics[0].count("ServiceRoute"), 2);
    // A Service-Route is no flow token: it never routes a dialog.
    let bye = format!(
        "BYE sip:bob@{DOMAIN} SIP/2.0\nVia: {};branch=z9hG4bKbye1\nMax-Forwards: 70\n\
         From: <sip:alice@{DOMAIN}>;tag=fsr-1\nTo: <sip:bob@{DOMAIN}>;tag=x\nCall-ID: sr-1\n\
         CSeq: 3 BYE\n{route}Content-Length: 0\n\n",
        via_for(alice)
    );
    h.leaf_sends(alice, &bye);
    assert_eq!(h.final_to(alice).status(), Some(481));
}

const INSTANCE_1: &str = "<urn:uuid:00000000-0000-0000-0000-000000000001>";
const INSTANCE_2: &str = "<urn:uuid:00000000-0000-0000-0000-000000000002>";

/// Registers one of alice's two phones (instance `n`) with GRUU support;
/// returns the (pub-gruu, temp-gruu) of that instance in the 200 OK.
fn register_instance(h: &mut Harness, n: u8) -> (String, String) {
    let flow = udp_leaf(n);
    let instance = if n == 1 { INSTANCE_1 } else { INSTANCE_2 };
    let text = register_text(
        flow,
        "alice",
        &format!("<sip:alice@192.0.2.{n}:5060>;+sip.instance=\"{instance}\""),
        &format!("gruu-{n}"),
        1,
        "",
        600,
    )
    .replace("Content-Length: 0", "Supported: gruu\nContent-Length: 0");
    h.leaf_sends(flow, &text);
    let ok = h.final_to(flow);
    assert_eq!(ok.status(), Some(200));
    let contact = ok
        .header_values(HeaderName::Contact)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .find(|c| c.contains(instance))
        .expect("the instance's contact");
    let param = |name: &str| {
        contact
            .split(&format!(";{name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {contact}"))
            .to_string()
    };
    (param("pub-gruu"), param("temp-gruu"))
}

#[test]
fn a_gruu_reaches_its_instance_and_never_the_other() {
    let mut h = Harness::open();
    let (pub1, temp1) = register_instance(&mut h, 1);
    let (pub2, temp2) = register_instance(&mut h, 2);
    assert_eq!(
        pub1,
        "sip:alice@ringmesh.test;gr=urn:uuid:00000000-0000-0000-0000-000000000001"
    );
    assert!(temp1.starts_with("sip:tgruu.") && temp1.ends_with("@ringmesh.test;gr"));
    assert!(!temp1.contains("alice"), "a temporary GRUU hides the AOR");
    let bob = udp_leaf(9);
    h.take();
    for (gruu, phone) in [(&pub1, 1), (&temp1, 1), (&pub2, 2), (&temp2, 2)] {
        let call = format!("g-{}", unique());
        h.leaf_sends(bob, &invite_to(bob, "bob", gruu, &call, ""));
        let out = invites(&mut h);
        assert_eq!(out.len(), 1, "{gruu}: one instance");
        assert_eq!(
            out[0].msg.request_uri_bytes(),
            format!("sip:alice@192.0.2.{phone}:5060").as_bytes(),
            "{gruu}"
        );
    }
    // The AOR itself forks to both.
    h.leaf_sends(
        bob,
        &invite_to(bob, "bob", "sip:alice@ringmesh.test", "g-aor", ""),
    );
    assert_eq!(invites(&mut h).len(), 2);
    // A temporary GRUU this farm never issued, or an instance alice does
    // not have, reaches no one.
    let forged = temp1
        .replace("tgruu.A", "tgruu.B")
        .replace("tgruu.a", "tgruu.A");
    for gruu in [
        forged.as_str(),
        "sip:alice@ringmesh.test;gr=urn:uuid:00000000-0000-0000-0000-000000000009",
    ] {
        h.leaf_sends(
            bob,
            &invite_to(bob, "bob", gruu, &format!("g-{}", unique()), ""),
        );
        assert_eq!(h.final_to(bob).status(), Some(480), "{gruu}");
    }
    // Without Supported: gruu the 200 lists none.
    let text = register_text(
        udp_leaf(3),
        "alice",
        &format!("<sip:alice@192.0.2.3:5060>;+sip.instance=\"{INSTANCE_1}\""),
        "nogruu",
        1,
        "",
        600,
    );
    h.leaf_sends(udp_leaf(3), &text);
    let ok = h.final_to(udp_leaf(3));
    assert!(
        ok.header_values(HeaderName::Contact)
            .all(|c| !String::from_utf8_lossy(c).contains("gruu"))
    );
}

#[test]
fn a_phone_cannot_claim_which_identity_was_called() {
    let mut h = Harness::open();
    let alice = udp_leaf(1);
    h.leaf_sends(
        alice,
        &register_text(
            alice,
            "alice",
            "<sip:alice@192.0.2.1:5060>",
            "c",
            1,
            "",
            600,
        ),
    );
    h.take();
    let bob = udp_leaf(2);
    h.leaf_sends(
        bob,
        &invite_to(
            bob,
            "bob",
            "sip:alice@ringmesh.test",
            "pcpi-1",
            "P-Called-Party-ID: <sip:ceo@ringmesh.test>\n",
        ),
    );
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    let called: Vec<&[u8]> = out[0]
        .msg
        .header_values(HeaderName::PCalledPartyId)
        .collect();
    assert_eq!(called, vec![&b"<sip:alice@ringmesh.test>"[..]]);
}
