//! Calls to numbers no subscriber owns go to the farm's PSTN gateways:
//! the dial plan, the longest prefix, failover on 503 and on silence,
//! probes, caps, and no transit for what is not a subscriber.

use super::*;
use crate::gateways::{DialPlan, GatewayRecord};
use crate::trust::{Element, TrustTable};

fn gw(name: &str, host: u8, prefixes: &[&str], priority: u32, capacity: u32) -> GatewayRecord {
    GatewayRecord {
        name: name.into(),
        addr: SocketAddr::from(([192, 0, 2, host], 5060)),
        transport: Transport::Udp,
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        priority,
        weight: 1,
        capacity,
        region: String::new(),
        expires_at_ms: u64::MAX,
    }
}

fn at(host: u8) -> Dest {
    Dest::Addr {
        transport: Transport::Udp,
        addr: SocketAddr::from(([192, 0, 2, host], 5060)),
    }
}

/// One node with a UK dial plan and `gateways`.
fn with_gateways(gateways: Vec<GatewayRecord>) -> Harness {
    let mut h = Harness::new();
    h.node(1).policy.dial_plan = "cc=44,national=0,international=00"
        .parse::<DialPlan>()
        .unwrap();
    let now = h.now;
    h.node(1).set_gateways(gateways, now);
    h
}

/// An INVITE from `from` on `flow` to `ruri`.
fn invite_to(flow: FlowRef, from: &str, ruri: &str, call: &str) -> String {
    let via = via_for(flow);
    format!(
        "INVITE {ruri} SIP/2.0\nVia: {via};branch=z9hG4bKi{call}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=f{call}\nTo: <{ruri}>\nCall-ID: {call}\n\
         CSeq: 1 INVITE\nContact: <sip:{from}@{}>\nContent-Length: 0\n\n",
        flow.peer()
    )
}

/// alice (authenticated) dials `number` as a phone does.
fn alice_dials(h: &mut Harness, alice: FlowRef, number: &str, call: &str) {
    let ruri = format!("sip:{number}@{DOMAIN};user=phone");
    h.send_authenticated(alice, "alice", &invite_to(alice, "alice", &ruri, call));
}

/// The INVITEs sent since the last `take`, each with where it went.
fn invites(h: &mut Harness) -> Vec<Sent> {
    h.requests()
        .into_iter()
        .filter(|s| s.msg.method().as_bytes() == b"INVITE")
        .collect()
}

/// The gateway at `from` answers `invite` with `status`.
fn gateway_answers(h: &mut Harness, invite: &Sent, status: u16) {
    let bytes = invite.msg.response_writer(status, Some(b"gw")).finish(b"");
    let now = h.now;
    h.node(1)
        .handle_message(Message::parse(bytes).unwrap(), invite.dest, now);
    h.pump();
}

/// Moves the clock on by `steps` × 100 ms, every gateway answering its
/// probes; the INVITEs sent meanwhile.
fn advance_answering_probes(h: &mut Harness, steps: usize) -> Vec<Sent> {
    let mut invites = Vec::new();
    for _ in 0..steps {
        h.advance(Duration::from_millis(100));
        for s in h.requests() {
            match s.msg.method().as_bytes() {
                b"OPTIONS" => gateway_answers(h, &s, 200),
                b"INVITE" => invites.push(s),
                _ => {}
            }
        }
    }
    invites
}

fn state(h: &mut Harness, name: &str) -> crate::gateways::GatewayState {
    h.node(1)
        .gateway_states()
        .into_iter()
        .find(|g| g.rec.name == name)
        .unwrap()
}

#[test]
fn a_dialled_number_goes_global_and_to_the_longest_prefix() {
    let mut h = with_gateways(vec![
        gw("any", 1, &["+"], 0, 0),
        gw("uk", 44, &["+44"], 5, 0),
        gw("london", 20, &["+4420"], 9, 0),
    ]);
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "02071234567", "uk-1");
    let out = invites(&mut h);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, at(20), "the longest prefix wins over priority");
    assert_eq!(
        out[0].msg.request_uri_bytes(),
        b"sip:+442071234567@192.0.2.20:5060;user=phone"
    );
    assert_eq!(
        header(&out[0].msg, HeaderName::PAssertedIdentity).as_deref(),
        Some(format!("<sip:alice@{DOMAIN}>").as_str()),
        "the gateway learns who calls"
    );
    // International dialling: 00 1 … is +1 …, which only "any" takes.
    alice_dials(&mut h, alice, "0015551234567", "us-1");
    let out = invites(&mut h);
    assert_eq!(out[0].dest, at(1));
    assert_eq!(
        out[0].msg.request_uri_bytes(),
        b"sip:+15551234567@192.0.2.1:5060;user=phone"
    );
}

#[test]
fn a_number_a_subscriber_owns_is_never_sent_to_a_gateway() {
    // erin owns tel:+15550100 (in her implicit set).
    let mut h = with_gateways(vec![gw("any", 1, &["+"], 0, 0)]);
    let erin = udp_leaf(5);
    assert_eq!(
        h.register(erin, "erin", "<sip:erin@192.0.2.5:5060>")
            .status(),
        Some(200)
    );
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+15550100", "erin-1");
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    assert!(
        out[0].msg.request_uri_bytes().starts_with(b"sip:erin@"),
        "to erin's phone: {out:?}"
    );
    // A number no one owns, to the gateway; an unregistered owner is
    // unreachable (480), not sent to the PSTN.
    alice_dials(&mut h, alice, "+15550199", "pstn-1");
    assert_eq!(invites(&mut h)[0].dest, at(1));
    h.node(1).set_trusted(TrustTable::default());
    let now = h.now;
    h.node(1)
        .set_gateways(vec![gw("any", 1, &["+"], 0, 0)], now);
    h.register(erin, "erin", "<sip:erin@192.0.2.5:5060>;expires=0");
    h.take();
    alice_dials(&mut h, alice, "+15550100", "erin-2");
    assert!(invites(&mut h).is_empty());
    assert_eq!(h.final_to(alice).status(), Some(480));
}

#[test]
fn a_503_and_silence_move_the_call_to_the_next_gateway() {
    let mut h = with_gateways(vec![
        gw("first", 1, &["+44"], 0, 0),
        gw("second", 2, &["+44"], 1, 0),
        gw("third", 3, &["+44"], 2, 0),
    ]);
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+441611234567", "fo-1");
    let out = invites(&mut h);
    assert_eq!(out[0].dest, at(1));
    gateway_answers(&mut h, &out[0], 503);
    let out = invites(&mut h);
    assert_eq!(out.len(), 1, "on to the next: {out:?}");
    assert_eq!(out[0].dest, at(2));
    assert!(
        h.responses_to(alice)
            .iter()
            .all(|r| r.status().is_some_and(|s| s < 200)),
        "the caller hears no final response meanwhile"
    );
    // The second says nothing to the call (it answers its probes): after
    // the gateway timeout, the third.
    let out = advance_answering_probes(&mut h, 21);
    let third: Vec<&Sent> = out.iter().filter(|s| s.dest == at(3)).collect();
    assert_eq!(third.len(), 1, "{out:?}");
    gateway_answers(&mut h, third[0], 200);
    let finals: Vec<Option<u16>> = h
        .responses_to(alice)
        .iter()
        .filter(|r| r.cseq() == 2 && r.status().is_some_and(|s| s >= 200))
        .map(Message::status)
        .collect();
    assert_eq!(finals, [Some(200)]);
    assert_eq!(state(&mut h, "third").active, 1, "the call is up there");
    assert_eq!(state(&mut h, "first").active, 0);
    assert_eq!(state(&mut h, "second").active, 0);
    assert_eq!(h.metrics[0].count("FailedOver"), 2);
}

#[test]
fn a_silent_gateway_is_down_within_two_seconds_and_back_when_it_answers() {
    let mut h = with_gateways(vec![gw("a", 1, &["+44"], 0, 0), gw("b", 2, &["+44"], 1, 0)]);
    h.advance(Duration::from_millis(100));
    let probes: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| s.msg.method().as_bytes() == b"OPTIONS")
        .collect();
    assert_eq!(probes.len(), 2, "each gateway is probed");
    let b_probe = probes.iter().find(|s| s.dest == at(2)).unwrap();
    gateway_answers(&mut h, b_probe, 200);
    // "a" never answers; "b" answers each probe.
    for _ in 0..20 {
        h.advance(Duration::from_millis(100));
        for p in h.requests() {
            if p.dest == at(2) && p.msg.method().as_bytes() == b"OPTIONS" {
                gateway_answers(&mut h, &p, 200);
            }
        }
    }
    assert!(!state(&mut h, "a").up, "down after 2 s of silence");
    assert!(state(&mut h, "b").up);
    // No call waits on it: straight to b.
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+441611234567", "down-1");
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, at(2));
    // "a" answers a retransmission of its probe: up again.
    h.advance(Duration::from_secs(4));
    let retrans = h
        .requests()
        .into_iter()
        .find(|s| s.dest == at(1) && s.msg.method().as_bytes() == b"OPTIONS")
        .expect("the probe is retransmitted");
    gateway_answers(&mut h, &retrans, 200);
    assert!(state(&mut h, "a").up);
}

#[test]
fn a_full_gateway_is_skipped_and_with_none_left_the_caller_gets_503() {
    let mut h = with_gateways(vec![gw("small", 1, &["+44"], 0, 1)]);
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+441611234567", "cap-1");
    assert_eq!(invites(&mut h).len(), 1);
    assert_eq!(state(&mut h, "small").active, 1);
    alice_dials(&mut h, alice, "+441611234568", "cap-2");
    assert!(invites(&mut h).is_empty(), "at its cap");
    let r = h.final_to(alice);
    assert_eq!(r.status(), Some(503));
    assert!(header(&r, HeaderName::RetryAfter).is_some());
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("no PSTN gateway")
    );
}

#[test]
fn attacker_no_transit_to_the_pstn_for_peers_gateways_or_strangers() {
    let mut h = with_gateways(vec![gw("any", 1, &["+"], 0, 0)]);
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("peer-farm:other=192.0.2.210").unwrap(),
        Element::parse_flag("gateway:gw=192.0.2.211").unwrap(),
        Element::parse_flag("front-end:pcscf=192.0.2.212").unwrap(),
    ]));
    // A peer farm, or a gateway sending a number back, would make the
    // farm a free route to the PSTN.
    for (host, who) in [(210, "peer farm"), (211, "gateway")] {
        let flow = udp_leaf(host);
        h.leaf_sends(
            flow,
            &invite_to(
                flow,
                "+15550000",
                "sip:+15551234@ringmesh.test;user=phone",
                "tr",
            ),
        );
        assert!(invites(&mut h).is_empty(), "{who}");
        let r = h.final_to(flow);
        assert_eq!(r.status(), Some(403), "{who}");
    }
    assert_eq!(h.metrics[0].count("GatewayTransit"), 2);
    // A stranger is challenged, and a wrong password is no better.
    let mallory = udp_leaf(9);
    let text = invite_to(mallory, "alice", "tel:+15551234", "m1");
    h.leaf_sends(mallory, &text);
    assert_eq!(h.final_to(mallory).status(), Some(407));
    assert!(invites(&mut h).is_empty());
    // A front end acting for its users may, as a subscriber's phone may.
    let pcscf = udp_leaf(212);
    h.leaf_sends(
        pcscf,
        &invite_to(pcscf, "alice", "tel:+15551234", "fe1").replacen(
            "Content-Length",
            "P-Asserted-Identity: <sip:alice@ringmesh.test>\nContent-Length",
            1,
        ),
    );
    assert_eq!(invites(&mut h).len(), 1, "the front end's call");
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+15551234", "ok-1");
    assert_eq!(invites(&mut h).len(), 1, "alice's call");
}

// ---- ENUM -------------------------------------------------------------------

use crate::dns::{Naptr, Query, Resolved};

/// A node with ENUM under e164.test and one gateway taking every number.
fn with_enum() -> Harness {
    let mut h = with_gateways(vec![gw("any", 1, &["+"], 0, 0)]);
    h.node(1).policy.enum_domain = Some("e164.test".into());
    h
}

fn sip_rule(regexp: &str) -> Resolved {
    Resolved::Naptr(vec![Naptr {
        order: 10,
        preference: 10,
        flags: "u".into(),
        services: "E2U+sip".into(),
        regexp: regexp.into(),
        replacement: ".".into(),
    }])
}

/// The one DNS question asked since the last call, answered with `answer`.
fn answer_enum(h: &mut Harness, name: &str, answer: Resolved) {
    answer_dns(h, Query::Naptr { name: name.into() }, answer);
}

/// The one DNS question asked since the last call (`query`), answered with
/// `answer`.
fn answer_dns(h: &mut Harness, query: Query, answer: Resolved) {
    let asked = std::mem::take(&mut h.resolves);
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (_, token, asked) = asked.into_iter().next().unwrap();
    assert_eq!(asked, query);
    let now = h.now;
    h.node(1).handle_resolved(token, answer, now);
    h.pump();
}

#[test]
fn an_enum_record_sends_the_call_where_it_points() {
    let mut h = with_enum();
    let bob = udp_leaf(2);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2:5060>").status(),
        Some(200)
    );
    let alice = udp_leaf(1);
    // A number ported to bob: his phone rings.
    alice_dials(&mut h, alice, "+15557770001", "enum-1");
    assert!(invites(&mut h).is_empty(), "waits for DNS");
    answer_enum(
        &mut h,
        "1.0.0.0.7.7.7.5.5.5.1.e164.test.",
        sip_rule("!^.*$!sip:bob@ringmesh.test!"),
    );
    let out = invites(&mut h);
    assert_eq!(out.len(), 1);
    assert!(
        out[0]
            .msg
            .request_uri_bytes()
            .starts_with(b"sip:bob@192.0.2.2")
    );
    // A number served elsewhere, by address: sent there, to the URI.
    alice_dials(&mut h, alice, "+15557770002", "enum-2");
    answer_enum(
        &mut h,
        "2.0.0.0.7.7.7.5.5.5.1.e164.test.",
        sip_rule("!^\\+(.*)$!sip:\\1@192.0.2.77:5070!"),
    );
    let out = invites(&mut h);
    assert_eq!(
        out[0].dest,
        Dest::Addr {
            transport: Transport::Udp,
            addr: "192.0.2.77:5070".parse().unwrap()
        }
    );
    assert_eq!(
        out[0].msg.request_uri_bytes(),
        b"sip:15557770002@192.0.2.77:5070"
    );
    assert_eq!(h.metrics[0].count("Enum(Local)"), 1);
    assert_eq!(h.metrics[0].count("Enum(Direct)"), 1);
}

#[test]
fn no_record_a_dns_failure_or_an_unknown_domain_leave_the_call_to_the_gateways() {
    let mut h = with_enum();
    let alice = udp_leaf(1);
    for (n, answer) in [
        ("3", Resolved::NotFound),
        ("4", Resolved::Failed("timed out".into())),
        ("5", sip_rule("!^.*$!sip:carol@other.example!")),
        ("6", sip_rule("!^.*$!mailto:x@example.com!")),
    ] {
        alice_dials(
            &mut h,
            alice,
            &format!("+1555777000{n}"),
            &format!("enum-{n}"),
        );
        answer_enum(
            &mut h,
            &format!("{n}.0.0.0.7.7.7.5.5.5.1.e164.test."),
            answer,
        );
        // Another domain that DNS knows nothing of: NAPTR, each SRV, the
        // host's addresses.
        for _ in 0..5 {
            let Some((_, token, _)) = h.resolves.pop() else {
                break;
            };
            let now = h.now;
            h.node(1).handle_resolved(token, Resolved::NotFound, now);
            h.pump();
        }
        let out = invites(&mut h);
        assert_eq!(out.len(), 1, "{n}");
        assert_eq!(out[0].dest, at(1), "{n}: to the gateway");
    }
    // A record naming a number of ours that no one owns is not looked up
    // again (no loop): the gateway.
    alice_dials(&mut h, alice, "+15557770007", "enum-7");
    answer_enum(
        &mut h,
        "7.0.0.0.7.7.7.5.5.5.1.e164.test.",
        sip_rule("!^.*$!sip:+15557770008@ringmesh.test!"),
    );
    assert!(h.resolves.is_empty(), "asked once");
    assert_eq!(invites(&mut h)[0].dest, at(1));
}

#[test]
fn a_call_cancelled_while_dns_answers_gets_487_and_goes_nowhere() {
    let mut h = with_enum();
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+15557770009", "enum-9");
    let cancel = invite_to(
        alice,
        "alice",
        &format!("sip:+15557770009@{DOMAIN};user=phone"),
        "enum-9",
    )
    .replace("INVITE sip", "CANCEL sip")
    .replace("CSeq: 1 INVITE", "CSeq: 2 CANCEL")
    .replace("branch=z9hG4bKienum-9", "branch=z9hG4bK2ienum-9");
    h.leaf_sends(alice, &cancel);
    answer_enum(
        &mut h,
        "9.0.0.0.7.7.7.5.5.5.1.e164.test.",
        sip_rule("!^.*$!sip:bob@ringmesh.test!"),
    );
    assert!(invites(&mut h).is_empty());
    let statuses: Vec<Option<u16>> = h.responses_to(alice).iter().map(Message::status).collect();
    assert!(statuses.contains(&Some(487)), "{statuses:?}");
}

fn srv(priority: u16, port: u16, target: &str) -> crate::dns::Srv {
    crate::dns::Srv {
        priority,
        weight: 0,
        port,
        target: target.into(),
    }
}

fn udp_at(addr: &str) -> Dest {
    Dest::Addr {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
    }
}

/// alice calls a number ENUM maps to sip:bob@b.test, whose NAPTR and SRV
/// records name two servers (priority 10, then 20), each found when it is
/// needed; the first server's INVITE.
fn call_to_b_test(h: &mut Harness, call: &str, number: &str) -> Sent {
    let alice = udp_leaf(1);
    alice_dials(h, alice, number, call);
    let digits: String = number[1..].chars().rev().map(|d| format!("{d}.")).collect();
    answer_enum(
        h,
        &format!("{digits}e164.test."),
        sip_rule("!^.*$!sip:bob@b.test!"),
    );
    answer_dns(
        h,
        Query::Naptr {
            name: "b.test.".into(),
        },
        Resolved::Naptr(vec![Naptr {
            order: 10,
            preference: 10,
            flags: "s".into(),
            services: "SIP+D2U".into(),
            regexp: String::new(),
            replacement: "_sip._udp.b.test.".into(),
        }]),
    );
    answer_dns(
        h,
        Query::Srv {
            name: "_sip._udp.b.test.".into(),
        },
        Resolved::Srv(vec![
            srv(20, 5080, "second.b.test."),
            srv(10, 5070, "first.b.test."),
        ]),
    );
    answer_dns(
        h,
        Query::Addrs {
            name: "first.b.test.".into(),
        },
        Resolved::Addrs(vec!["192.0.2.31".parse().unwrap()]),
    );
    let out = invites(h);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, udp_at("192.0.2.31:5070"));
    assert_eq!(out[0].msg.request_uri_bytes(), b"sip:bob@b.test");
    out.into_iter().next().unwrap()
}

/// The second server of b.test, found once the first failed.
fn second_b_test_server(h: &mut Harness) -> Sent {
    answer_dns(
        h,
        Query::Addrs {
            name: "second.b.test.".into(),
        },
        Resolved::Addrs(vec!["192.0.2.32".parse().unwrap()]),
    );
    let out = invites(h);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, udp_at("192.0.2.32:5080"));
    out.into_iter().next().unwrap()
}

/// The final responses `flow` got since the last call, the digest
/// challenges aside.
fn finals_to(h: &mut Harness, flow: FlowRef) -> Vec<u16> {
    h.responses_to(flow)
        .iter()
        .filter_map(Message::status)
        .filter(|s| *s >= 200 && *s != 407)
        .collect()
}

#[test]
fn another_domain_is_located_by_rfc_3263_and_a_503_moves_the_call_on() {
    let mut h = with_enum();
    let first = call_to_b_test(&mut h, "loc-1", "+15557770021");
    gateway_answers(&mut h, &first, 503);
    let second = second_b_test_server(&mut h);
    assert!(
        finals_to(&mut h, udp_leaf(1)).is_empty(),
        "nothing final yet"
    );
    gateway_answers(&mut h, &second, 200);
    assert_eq!(finals_to(&mut h, udp_leaf(1)), [200]);
    assert_eq!(h.metrics[0].count("Enum(Foreign)"), 1);
    assert_eq!(h.metrics[0].count("Located { peer: None, event: Sent }"), 2);
    assert_eq!(
        h.metrics[0].count("Located { peer: None, event: FailedOver }"),
        1
    );
    assert_eq!(
        h.metrics[0].count("Located { peer: None, event: Answered }"),
        1
    );
}

#[test]
fn a_silent_server_is_left_a_final_answer_stays_and_none_left_means_the_gateways() {
    let mut h = with_enum();
    // The first says nothing: after the timeout, the second; its 486 is
    // the callee's answer (no failover).
    let first = call_to_b_test(&mut h, "loc-2", "+15557770022");
    let sent = advance_answering_probes(&mut h, 21);
    assert!(
        sent.iter().all(|s| s.dest == first.dest),
        "only retransmissions: {sent:?}"
    );
    let second = second_b_test_server(&mut h);
    gateway_answers(&mut h, &second, 486);
    assert_eq!(finals_to(&mut h, udp_leaf(1)), [486]);
    assert!(h.resolves.is_empty() && invites(&mut h).is_empty());
    // Both servers fail (503, then silence): the gateway.
    let first = call_to_b_test(&mut h, "loc-3", "+15557770023");
    gateway_answers(&mut h, &first, 503);
    second_b_test_server(&mut h);
    let out = advance_answering_probes(&mut h, 21);
    let to_gateway = out.iter().filter(|s| s.dest == at(1)).count();
    assert_eq!(to_gateway, 1, "to the gateway: {out:?}");
    assert_eq!(
        h.metrics[0].count("Located { peer: None, event: Exhausted }"),
        1
    );
    assert_eq!(
        h.metrics[0].count("Located { peer: None, event: Refused }"),
        1
    );
}

#[test]
fn a_call_cancelled_while_its_next_server_is_looked_up_gets_487() {
    let mut h = with_enum();
    let alice = udp_leaf(1);
    let first = call_to_b_test(&mut h, "loc-4", "+15557770024");
    gateway_answers(&mut h, &first, 503);
    assert_eq!(h.resolves.len(), 1, "looking up the second server");
    let ruri = format!("sip:+15557770024@{DOMAIN};user=phone");
    let cancel = invite_to(alice, "alice", &ruri, "loc-4")
        .replace("INVITE sip", "CANCEL sip")
        .replace("CSeq: 1 INVITE", "CSeq: 2 CANCEL")
        .replace("branch=z9hG4bKiloc-4", "branch=z9hG4bK2iloc-4");
    h.leaf_sends(alice, &cancel);
    second_b_test_server_unsent(&mut h);
    assert!(invites(&mut h).is_empty());
    assert!(finals_to(&mut h, alice).contains(&487));
}

#[test]
fn a_server_whose_connection_is_refused_is_left_at_once() {
    let mut h = with_enum();
    let alice = udp_leaf(1);
    alice_dials(&mut h, alice, "+15557770025", "loc-5");
    answer_enum(
        &mut h,
        "5.2.0.0.7.7.7.5.5.5.1.e164.test.",
        sip_rule("!^.*$!sip:bob@b.test;transport=tcp!"),
    );
    answer_dns(
        &mut h,
        Query::Srv {
            name: "_sip._tcp.b.test.".into(),
        },
        Resolved::Srv(vec![
            srv(10, 5070, "192.0.2.41"),
            srv(20, 5070, "192.0.2.42"),
        ]),
    );
    let tcp = |a: &str| Dest::Addr {
        transport: Transport::Tcp,
        addr: a.parse().unwrap(),
    };
    assert_eq!(invites(&mut h)[0].dest, tcp("192.0.2.41:5070"));
    let now = h.now;
    // Another address refusing changes nothing.
    h.node(1).connection_refused(tcp("192.0.2.99:5070"), now);
    h.pump();
    assert!(h.resolves.is_empty() && invites(&mut h).is_empty());
    h.node(1).connection_refused(tcp("192.0.2.41:5070"), now);
    h.pump();
    let out = invites(&mut h);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].dest, tcp("192.0.2.42:5070"), "no wait for a timeout");
}

/// The second server's address comes after the call is gone: nothing is
/// sent.
fn second_b_test_server_unsent(h: &mut Harness) {
    answer_dns(
        h,
        Query::Addrs {
            name: "second.b.test.".into(),
        },
        Resolved::Addrs(vec!["192.0.2.32".parse().unwrap()]),
    );
}

#[test]
fn attacker_a_peer_gets_no_enum_lookup_on_the_farms_account() {
    let mut h = with_enum();
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("peer-farm:other=192.0.2.210").unwrap(),
    ]));
    let peer = udp_leaf(210);
    h.leaf_sends(
        peer,
        &invite_to(peer, "+15550000", "tel:+15557770010", "p1"),
    );
    assert_eq!(h.final_to(peer).status(), Some(403));
    assert!(h.resolves.is_empty(), "no DNS query made for it");
}
