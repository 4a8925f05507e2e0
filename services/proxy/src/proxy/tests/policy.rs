//! The phone rules, each tried as an attacker would: unauthenticated
//! methods, forged dialogs, spoofed identities, enumeration, emergency
//! calls, contact fan-out and hostile contact addresses, barred callees,
//! and the trusted elements the rules skip. Each test also shows the
//! legitimate request on the same proxy going through.

use ringmesh_sip::{HeaderName, Method};

use super::*;
use crate::trust::{Element, TrustTable};

const ALICE: u8 = 1;
const BOB: u8 = 2;
/// The attacker's phone: no account of its own.
const MALLORY: u8 = 66;

/// A farm of one with digest on, where bob is registered at 192.0.2.2.
fn with_bob() -> Harness {
    let mut h = Harness::new();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    h.take();
    h
}

/// An out-of-dialog request from `flow` claiming to be `from`.
fn request(flow: FlowRef, method: &str, from: &str, to: &str, extra: &str) -> String {
    let via = via_for(flow);
    let n = unique();
    format!(
        "{method} sip:{to}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKp{n}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=p{n}\nTo: <sip:{to}@{DOMAIN}>\nCall-ID: p-{n}\n\
         CSeq: 1 {method}\nContact: <sip:{from}@{}>\n{extra}Content-Length: 0\n\n",
        flow.peer()
    )
}

/// Whether anything was sent to bob's phone since the last `take`.
fn bob_got_anything(h: &mut Harness) -> bool {
    h.requests()
        .iter()
        .any(|s| s.dest.peer() == Some(udp_leaf(BOB).peer()))
}

#[test]
fn every_out_of_dialog_method_from_a_phone_is_challenged() {
    let mut h = with_bob();
    let mallory = udp_leaf(MALLORY);
    for (method, extra) in [
        // A check-sync NOTIFY reboots many desk phones.
        ("NOTIFY", "Event: check-sync\nSubscription-State: active\n"),
        ("REFER", "Refer-To: <sip:premium@ringmesh.test>\n"),
        ("OPTIONS", ""),
        ("INFO", ""),
        ("MESSAGE", ""),
        ("SUBSCRIBE", "Event: presence\n"),
        ("PUBLISH", "Event: presence\n"),
        ("UPDATE", ""),
        ("INVITE", ""),
    ] {
        h.leaf_sends(mallory, &request(mallory, method, "bob", "bob", extra));
        let r = h.final_to(mallory);
        assert_eq!(r.status(), Some(407), "{method}");
        assert!(!bob_got_anything(&mut h), "{method} reached bob");
    }
    // The same NOTIFY from alice, authenticated, is delivered.
    let alice = udp_leaf(ALICE);
    h.send_authenticated(
        alice,
        "alice",
        &request(alice, "NOTIFY", "alice", "bob", "Event: check-sync\n"),
    );
    assert!(
        bob_got_anything(&mut h),
        "an authenticated NOTIFY is routed"
    );
}

#[test]
fn a_forged_to_tag_with_a_route_to_the_farm_gets_481() {
    let mut h = with_bob();
    let mallory = udp_leaf(MALLORY);
    for route in [
        format!("Route: <sip:{DOMAIN};lr>\n"),
        "Route: <sip:10.0.0.1:5060;lr>\n".to_string(),
        String::new(),
    ] {
        for method in ["NOTIFY", "INFO", "BYE"] {
            let text = request(mallory, method, "alice", "bob", &route).replace(
                &format!("To: <sip:bob@{DOMAIN}>"),
                &format!("To: <sip:bob@{DOMAIN}>;tag=forged"),
            );
            h.leaf_sends(mallory, &text);
            assert_eq!(h.final_to(mallory).status(), Some(481), "{method} {route}");
            assert!(!bob_got_anything(&mut h), "{method} {route} reached bob");
        }
    }
    assert!(h.metrics[0].count("Refused(NotInDialog)") >= 9);
}

#[test]
fn a_flow_token_routes_only_its_own_dialog() {
    // mallory saw the Record-Route of a dialog between alice and bob (say,
    // on the wire) and tries its token for requests of her own.
    let mut h = with_bob();
    let alice = udp_leaf(ALICE);
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "tok-1"));
    let fwd = h.requests().remove(0).msg;
    let bob_token = fwd
        .header_values(HeaderName::RecordRoute)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .next()
        .expect("a Record-Route naming bob's flow");
    h.take();
    let mallory = udp_leaf(MALLORY);
    let notify = |call: &str, to_tag: &str| {
        request(
            mallory,
            "NOTIFY",
            "alice",
            "bob",
            &format!("Route: {bob_token}\nEvent: check-sync\n"),
        )
        .replacen("Call-ID: p-", &format!("Call-ID: {call}-"), 1)
        .replace(";tag=p", ";tag=ftok-1x")
        .replace(
            &format!("To: <sip:bob@{DOMAIN}>"),
            &format!("To: <sip:bob@{DOMAIN}>{to_tag}"),
        )
    };
    // Another dialog (another Call-ID): the token does not open; the
    // request is a new one from a phone, and is challenged.
    h.leaf_sends(mallory, &notify("other", ";tag=b1"));
    assert_eq!(h.final_to(mallory).status(), Some(481));
    h.leaf_sends(mallory, &notify("other", ""));
    assert_eq!(h.final_to(mallory).status(), Some(407));
    assert!(!bob_got_anything(&mut h));
    // The dialog's own Call-ID and caller tag, but no To tag: a token
    // never starts a new request.
    let text = request(
        mallory,
        "NOTIFY",
        "alice",
        "bob",
        &format!("Route: {bob_token}\n"),
    )
    .replace("Call-ID: p-", "Call-ID: tok-1\nX-Was: p-")
    .replace(";tag=p", ";tag=ftok-1\nX-Tag: p");
    h.leaf_sends(mallory, &text);
    assert_eq!(h.final_to(mallory).status(), Some(403));
    assert!(!bob_got_anything(&mut h));
}

#[test]
fn the_from_must_be_owned_or_anonymous_and_ppi_chooses_among_owned() {
    let mut h = with_bob();
    let alice = udp_leaf(ALICE);
    // Spoofed From.
    h.send_authenticated(
        alice,
        "alice",
        &request(alice, "MESSAGE", "dave", "bob", ""),
    );
    assert_eq!(h.final_to(alice).status(), Some(403));
    assert!(!bob_got_anything(&mut h));
    // A P-Preferred-Identity alice does not own.
    h.send_authenticated(
        alice,
        "alice",
        &request(
            alice,
            "MESSAGE",
            "alice",
            "bob",
            "P-Preferred-Identity: <sip:dave@ringmesh.test>\n",
        ),
    );
    assert_eq!(h.final_to(alice).status(), Some(403));
    assert!(!bob_got_anything(&mut h));
    // Anonymous: the farm asserts alice's default identity.
    let text = request(alice, "MESSAGE", "alice", "bob", "Privacy: none\n").replace(
        &format!("From: <sip:alice@{DOMAIN}>"),
        "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>",
    );
    h.send_authenticated(alice, "alice", &text);
    let out = h.requests();
    assert_eq!(out.len(), 1, "anonymous is allowed");
    assert_eq!(
        header(&out[0].msg, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@ringmesh.test>")
    );
    // dave chooses his alias; what a phone claims is stripped.
    let dave = udp_leaf(4);
    let text = request(
        dave,
        "MESSAGE",
        "dave",
        "bob",
        "P-Preferred-Identity: <sip:dave-alias@ringmesh.test>\n\
         P-Asserted-Identity: <sip:ceo@ringmesh.test>\n\
         Remote-Party-ID: <sip:ceo@ringmesh.test>;party=calling\n",
    );
    h.send_authenticated(dave, "dave", &text);
    let out = h.requests();
    assert_eq!(out.len(), 1);
    let fwd = &out[0].msg;
    let pai: Vec<&[u8]> = fwd.header_values(HeaderName::PAssertedIdentity).collect();
    assert_eq!(pai, [&b"<sip:dave-alias@ringmesh.test>"[..]]);
    assert!(fwd.header(HeaderName::PPreferredIdentity).is_none());
    assert!(fwd.header(HeaderName::RemotePartyId).is_none());
}

#[test]
fn nothing_tells_a_subscriber_from_a_stranger() {
    let mut h = Harness::new();
    let mallory = udp_leaf(MALLORY);
    // REGISTER without credentials, then with a wrong password: the same
    // status and the same headers for bob (a subscriber) and nobody.
    let shape = |m: &Message| -> (Option<u16>, Vec<String>) {
        let names = m
            .headers()
            .map(|(_, name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        (m.status(), names)
    };
    let mut seen = Vec::new();
    for user in ["bob", "nobody"] {
        let first = register_text(
            mallory,
            user,
            "<sip:x@192.0.2.66>",
            &format!("e-{user}"),
            1,
            "",
            600,
        );
        h.leaf_sends(mallory, &first);
        let challenge = h.final_to(mallory);
        let auth = authorization(
            &challenge,
            user,
            "guess",
            "REGISTER",
            &format!("sip:{DOMAIN}"),
        );
        let second = register_text(
            mallory,
            user,
            "<sip:x@192.0.2.66>",
            &format!("e-{user}"),
            2,
            &auth,
            600,
        );
        h.leaf_sends(mallory, &second);
        let again = h.final_to(mallory);
        seen.push((shape(&challenge), shape(&again)));
    }
    assert_eq!(seen[0], seen[1], "REGISTER: {seen:?}");
    assert_eq!(seen[0].0.0, Some(401));
    // INVITE and OPTIONS from an authenticated phone to bob (a subscriber,
    // not registered now) and to nobody: 480 alike.
    let alice = udp_leaf(ALICE);
    for method in ["INVITE", "OPTIONS"] {
        let mut seen = Vec::new();
        for to in ["bob", "nobody"] {
            h.send_authenticated(alice, "alice", &request(alice, method, "alice", to, ""));
            seen.push(shape(&h.final_to(alice)));
        }
        assert_eq!(seen[0], seen[1], "{method}");
        assert_eq!(seen[0].0, Some(480), "{method}");
    }
}

#[test]
fn an_emergency_call_from_an_unregistered_phone_is_routed_unchallenged() {
    let mut h = Harness::new();
    let stranger = udp_leaf(MALLORY);
    for ruri in [
        "urn:service:sos",
        "urn:service:sos.fire",
        "sip:112@ringmesh.test",
    ] {
        let text = request(stranger, "INVITE", "nobody", "x", "").replacen(
            &format!("INVITE sip:x@{DOMAIN}"),
            &format!("INVITE {ruri}"),
            1,
        );
        h.leaf_sends(stranger, &text);
        let out = h.requests();
        assert_eq!(out.len(), 1, "{ruri} is routed");
        assert_eq!(
            out[0].dest,
            Dest::Addr {
                transport: Transport::Udp,
                addr: PSAP.parse().unwrap()
            },
            "{ruri} goes to the emergency route"
        );
        assert_eq!(*out[0].msg.method(), Method::Invite);
        let heard: Vec<Option<u16>> = h
            .responses_to(stranger)
            .iter()
            .map(|m| m.status())
            .collect();
        assert!(
            !heard.is_empty() && heard.iter().all(|s| *s == Some(100)),
            "{ruri}: a 100 Trying at once, no challenge: {heard:?}"
        );
    }
    // Not emergency: urn:service:sosx, and other URNs stay 416.
    let text = request(stranger, "INVITE", "nobody", "x", "").replacen(
        &format!("INVITE sip:x@{DOMAIN}"),
        "INVITE urn:service:sosx",
        1,
    );
    h.leaf_sends(stranger, &text);
    assert_eq!(h.final_to(stranger).status(), Some(416));
    // With no emergency route the phone hears 503 at once.
    h.node(1).policy.emergency_route = None;
    let text = request(stranger, "INVITE", "nobody", "x", "").replacen(
        &format!("INVITE sip:x@{DOMAIN}"),
        "INVITE urn:service:sos",
        1,
    );
    h.leaf_sends(stranger, &text);
    assert_eq!(h.final_to(stranger).status(), Some(503));
    assert_eq!(h.metrics[0].count("Refused(NoEmergencyRoute)"), 1);
}

#[test]
fn contacts_per_aor_and_branches_per_request_are_capped() {
    // The harness allows 5 contacts per AOR and 3 branches per request.
    let mut h = Harness::new();
    let bob = udp_leaf(BOB);
    for i in 0..5 {
        let contact = format!("<sip:bob@192.0.2.{}>", 100 + i);
        assert_eq!(h.register(bob, "bob", &contact).status(), Some(200), "{i}");
    }
    let r = h.register(bob, "bob", "<sip:bob@192.0.2.200>");
    assert_eq!(r.status(), Some(403), "the sixth contact");
    assert_eq!(h.bindings_of(&format!("sip:bob@{DOMAIN}")), 5);
    assert_eq!(h.metrics[0].count("Refused(TooManyContacts)"), 1);
    // A refresh of an existing contact still works at the cap.
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.100>").status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "cap-1"));
    let invites = h
        .requests()
        .into_iter()
        .filter(|s| *s.msg.method() == Method::Invite)
        .count();
    assert_eq!(invites, 3, "forked to at most max_branches bindings");
}

#[test]
fn contacts_that_would_turn_the_farm_on_itself_are_refused() {
    let mut h = Harness::new();
    let bob = udp_leaf(BOB);
    for contact in [
        "<sip:bob@127.0.0.1:5060>",
        "<sip:bob@[::1]:5060>",
        "<sip:bob@169.254.7.7>",
        "<sip:bob@224.0.0.1>",
        "<sip:bob@0.0.0.0>",
        "<sip:bob@255.255.255.255>",
        "<sip:bob@10.0.0.1:5060>",
        "<sip:bob@[fe80::1]>",
    ] {
        assert_eq!(
            h.register(bob, "bob", contact).status(),
            Some(403),
            "{contact}"
        );
    }
    assert_eq!(h.bindings_of(&format!("sip:bob@{DOMAIN}")), 0);
    assert_eq!(h.metrics[0].count("Refused(ContactAddress)"), 8);
    // The node's address on another port is a phone's.
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@10.0.0.1:5070>").status(),
        Some(200)
    );
    // A lab farm may allow loopback.
    h.node(1).registrar.allow_loopback_contacts = true;
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@127.0.0.1:5090>").status(),
        Some(200)
    );
}

#[test]
fn a_call_to_a_barred_subscriber_is_refused_even_when_the_directory_answers_later() {
    let mut h = Harness::new();
    let dave = udp_leaf(4);
    assert_eq!(
        h.register(dave, "dave", "<sip:dave@192.0.2.4>").status(),
        Some(200)
    );
    h.take();
    h.directory.set_barred("dave", true);
    let alice = udp_leaf(ALICE);
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "dave", "bar-1"),
    );
    assert_eq!(h.final_to(alice).status(), Some(403));
    assert!(h.requests().is_empty(), "dave's phone is not called");
    assert_eq!(h.metrics[0].count("Refused(BarredCallee)"), 1);
    // The directory answers later: the call waits, then is refused.
    *h.directory.mode.lock().unwrap() = DirMode::Later;
    let text = invite_text(alice, "alice", "dave", "bar-2");
    h.directory.preload("u:alice");
    h.send_authenticated(alice, "alice", &text);
    assert_eq!(h.node(1).load().pending, 1, "waiting for dave's record");
    h.answer_lookups();
    assert_eq!(h.final_to(alice).status(), Some(403));
    // Unbarred, dave is called again.
    h.directory.set_barred("dave", false);
    h.send_authenticated(
        alice,
        "alice",
        &invite_text(alice, "alice", "dave", "bar-3"),
    );
    assert_eq!(h.requests().len(), 1);
}

#[test]
fn trusted_elements_skip_the_phone_rules() {
    let mut h = with_bob();
    let gateway = udp_leaf(200);
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("gateway:gw1=192.0.2.200").unwrap(),
    ]));
    // The gateway's INVITE carries no credentials and its own assertion.
    let text = request(
        gateway,
        "INVITE",
        "+15550100",
        "bob",
        "P-Asserted-Identity: <tel:+15550100>\n",
    )
    .replace(
        &format!("From: <sip:+15550100@{DOMAIN}>"),
        "From: <sip:+15550100@pstn.example>",
    );
    h.leaf_sends(gateway, &text);
    let out = h.requests();
    assert_eq!(out.len(), 1, "routed without a challenge");
    assert_eq!(
        header(&out[0].msg, HeaderName::PAssertedIdentity).as_deref(),
        Some("<tel:+15550100>"),
        "a trusted element's assertion is kept"
    );
    // The same request from a phone next to it is challenged.
    let phone = udp_leaf(201);
    h.leaf_sends(phone, &request(phone, "INVITE", "bob", "bob", ""));
    assert_eq!(h.final_to(phone).status(), Some(407));
    // So is one from a load generator: it stands in for phones.
    let load = udp_leaf(202);
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("load=192.0.2.202").unwrap(),
    ]));
    h.leaf_sends(load, &request(load, "INVITE", "bob", "bob", ""));
    assert_eq!(h.final_to(load).status(), Some(407));
}

/// One guess of `user`'s password from `flow` at node `n`: a REGISTER,
/// its challenge, the REGISTER with credentials; the status of the answer
/// to the last (None: no answer at all).
fn guess(h: &mut Harness, n: u8, flow: FlowRef, user: &str, password: &str) -> Option<u16> {
    let call = format!("guess-{}", unique());
    let first = register_text(flow, user, "<sip:x@192.0.2.66>", &call, 1, "", 600);
    h.recv(n, &first, Dest::Flow(flow));
    let finals: Vec<Message> = h
        .responses_to(flow)
        .into_iter()
        .filter(|m| m.status().is_some_and(|s| s >= 200))
        .collect();
    let challenge = match finals.as_slice() {
        [c] if c.status() == Some(401) => c.clone(),
        [other] => return other.status(),
        _ => return None,
    };
    let auth = authorization(
        &challenge,
        user,
        password,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    let second = register_text(flow, user, "<sip:x@192.0.2.66>", &call, 2, &auth, 600);
    h.recv(n, &second, Dest::Flow(flow));
    let finals: Vec<u16> = h
        .responses_to(flow)
        .iter()
        .filter_map(|m| m.status())
        .filter(|&s| s >= 200)
        .collect();
    finals.first().copied()
}

#[test]
fn a_password_guessed_across_the_farm_is_banned_farm_wide_and_the_user_still_registers() {
    let mut h = Harness::farm();
    let mallory = udp_leaf(MALLORY);
    let alice = udp_leaf(ALICE);
    let mut answers = Vec::new();
    // 150 guesses, alternating between the two supernodes; the last is
    // the right password.
    for i in 0..150u32 {
        let password = if i == 149 { "secret" } else { "guess" };
        let node = 1 + (i % 2) as u8;
        answers.push(guess(&mut h, node, mallory, "alice", password));
        // The real alice, from her own address, registers all along.
        if i % 25 == 0 {
            let r = h.register(alice, "alice", "<sip:alice@192.0.2.1>");
            assert_eq!(r.status(), Some(200), "alice at guess {i}");
        }
    }
    // Five failures, counted in one place, ban the pair on both nodes.
    assert!(
        answers[..5].iter().all(|a| *a == Some(401)),
        "{:?}",
        &answers[..6]
    );
    assert!(
        answers[5..].iter().all(|a| matches!(a, Some(403) | None)),
        "every guess after the fifth refused or ignored: {answers:?}"
    );
    assert_eq!(answers[149], None, "the right password, too late: silence");
    assert_eq!(
        answers.iter().filter(|a| **a == Some(403)).count() as u32,
        // Each node answers 403 a few times before going silent.
        2 * crate::guard::ANSWERS_BEFORE_SILENCE
    );
    for n in 1..=2u8 {
        let now = h.now;
        let bans = h.node(n).bans(now);
        assert_eq!(bans.len(), 1, "node {n}: {bans:?}");
        assert_eq!(bans[0].identity.as_deref(), Some("alice"));
    }
    // mallory is not locked out of the farm: another identity still gets
    // its challenge. Lifting the ban (on either node) frees alice's pair.
    assert_eq!(guess(&mut h, 1, mallory, "bob", "secret"), Some(200));
    let source = crate::guard::Source::of(mallory.peer().ip());
    let now = h.now;
    h.node(2).lift(source, now);
    h.pump();
    assert!(h.node(1).bans(now).is_empty(), "lifted farm-wide");
    assert_eq!(guess(&mut h, 1, mallory, "alice", "secret"), Some(200));
}

#[test]
fn a_guesser_trying_many_identities_gets_its_source_banned() {
    let mut h = Harness::new();
    let mallory = udp_leaf(MALLORY);
    let mut answers = Vec::new();
    for i in 0..30 {
        answers.push(guess(&mut h, 1, mallory, &format!("user{i}"), "guess"));
    }
    assert!(answers[..20].iter().all(|a| *a == Some(401)), "{answers:?}");
    assert!(
        answers[20..].iter().all(|a| matches!(a, Some(403) | None)),
        "{answers:?}"
    );
    // Not even a first request gets a challenge now.
    h.leaf_sends(mallory, &request(mallory, "OPTIONS", "x", "bob", ""));
    assert!(
        h.responses_to(mallory)
            .iter()
            .all(|m| m.status() != Some(407))
    );
    // A neighbour, an emergency call from the source, and a trusted
    // element are not affected.
    assert_eq!(guess(&mut h, 1, udp_leaf(67), "alice", "secret"), Some(200));
    let sos = request(mallory, "INVITE", "x", "y", "").replacen(
        &format!("INVITE sip:y@{DOMAIN}"),
        "INVITE urn:service:sos",
        1,
    );
    h.leaf_sends(mallory, &sos);
    assert_eq!(h.requests().len(), 1, "the emergency call is routed");
    // A CANCEL is no new request: the ban does not answer it.
    h.leaf_sends(mallory, &request(mallory, "CANCEL", "x", "y", ""));
    assert_eq!(h.final_to(mallory).status(), Some(481));
    assert!(h.metrics[0].count("Guard(SourceBanned)") == 1);
    assert!(h.metrics[0].count("Guard(Dropped)") > 0);
}

const DAVE: &str = "sip:dave@ringmesh.test";
const BOB_AOR: &str = "sip:bob@ringmesh.test";

#[test]
fn barring_purges_bindings_farm_wide_and_a_new_password_closes_flows() {
    use crate::SubscriberChange;
    let mut h = Harness::farm();
    // dave registers twice over TCP at node 1, and once over UDP.
    let (tcp_a, tcp_b) = (tcp_leaf(4, 41), tcp_leaf(5, 42));
    for (flow, id) in [(tcp_a, 41), (tcp_b, 42)] {
        h.node(1).connection_opened(id);
        assert_eq!(
            h.register(
                flow,
                "dave",
                &format!("<sip:dave@{};transport=tcp>", flow.peer())
            )
            .status(),
            Some(200)
        );
    }
    assert_eq!(
        h.register(udp_leaf(6), "dave", "<sip:dave@192.0.2.6>")
            .status(),
        Some(200)
    );
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    h.take();
    assert_eq!(h.bindings_of(DAVE), 3);

    // A new password: dave's connections at node 1 close, nothing else.
    let change = SubscriberChange::Credentials {
        private_id: "dave".into(),
    };
    for n in [1, 2] {
        let now = h.now;
        h.node(n).subscriber_changed(change.clone(), now);
    }
    h.pump();
    h.closed.sort();
    assert_eq!(h.closed, [(1, 41), (1, 42)]);
    assert_eq!(
        h.bindings_of(DAVE),
        3,
        "a password change keeps the bindings"
    );
    let now = h.now;
    h.node(1).connection_closed(41, now);

    // Barred: every member is told; one purges each AOR, for the farm.
    h.closed.clear();
    let change = SubscriberChange::Removed {
        private_id: "dave".into(),
        public_ids: vec![aor("dave")],
    };
    for n in [1, 2] {
        let now = h.now;
        h.node(n).subscriber_changed(change.clone(), now);
    }
    h.pump();
    assert_eq!(h.bindings_of(DAVE), 0, "dave's bindings are gone");
    assert_eq!(h.bindings_of(BOB_AOR), 1, "bob's stay");
    assert!(
        h.closed.is_empty(),
        "the flows were closed already and forgotten: {:?}",
        h.closed
    );
}

/// Failures of one source are counted by the one member the ring assigns
/// it, so each member carries a share of the counting: the others send
/// theirs there.
#[test]
fn a_failure_is_counted_by_the_member_that_owns_its_source() {
    let members = [node_id(1), node_id(2)];
    // Node 2 follows node 1 closely on the ring ([1; 16], [2; 16]): few
    // sources are its own.
    let (guesser, owner) = (0..=u16::MAX)
        .map(|i| FlowRef::Udp {
            socket: 0,
            peer: SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 5060)),
        })
        .map(|f| {
            let source = crate::guard::Source::of(f.peer().ip());
            (
                f,
                crate::guard::owner_of(source.ring_key(), &members).unwrap(),
            )
        })
        .find(|(_, owner)| *owner == node_id(2))
        .expect("some address the ring gives to node 2");
    assert_eq!(owner, node_id(2));
    let mut h = Harness::farm();
    h.take();
    assert_eq!(guess(&mut h, 1, guesser, "alice", "guess"), Some(401));
    let guard_messages: Vec<(u8, Dest)> = h
        .take()
        .into_iter()
        .filter(|s| s.msg.is_request() && *s.msg.method() == Method::Message)
        .map(|s| (s.node, s.dest))
        .collect();
    assert_eq!(guard_messages, vec![(1, Dest::Peer(node_id(2)))]);
}

/// Guard messages come only from members, as MESSAGE to `guard` with the
/// guard content type; a member's ordinary request to a user called guard,
/// or another method with that content type, is not one.
#[test]
fn only_a_guard_typed_message_to_guard_is_a_guard_message() {
    let mut h = Harness::farm();
    h.take();
    let peer = Dest::Peer(node_id(2));
    let text = |method: &str, user: &str, ctype: &str| {
        format!(
            "{method} sip:{user}@10.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/TCP 10.0.0.2:5060;branch=z9hG4bKg{method}{user}\n\
             Max-Forwards: 1\nFrom: <sip:guard@{DOMAIN}>;tag=g1\nTo: <sip:{user}@{DOMAIN}>\n\
             Call-ID: guard-test-{method}-{user}\nCSeq: 1 {method}\nContent-Type: {ctype}\n\
             Content-Length: 0\n\n"
        )
    };
    let status = |h: &mut Harness, t: String| {
        h.recv(1, &t, peer);
        h.take()
            .into_iter()
            .filter(|s| s.node == 1 && s.dest == peer)
            .filter_map(|s| s.msg.status())
            .find(|&s| s >= 200)
    };
    let guard_type = crate::guard::CONTENT_TYPE;
    assert_eq!(
        status(&mut h, text("MESSAGE", "guard", guard_type)),
        Some(200)
    );
    assert_ne!(
        status(&mut h, text("MESSAGE", "guard", "text/plain")),
        Some(200)
    );
    assert_ne!(status(&mut h, text("INFO", "guard", guard_type)), Some(200));
    assert_ne!(
        status(&mut h, text("MESSAGE", "bob", guard_type)),
        Some(200)
    );
}

/// The flows a password change closes: connections this node holds on
/// which that subscriber registered first, and that are still open.
#[test]
fn a_password_change_closes_only_the_subscribers_own_open_connections() {
    use crate::SubscriberChange;
    let mut h = Harness::new();
    let register_over = |h: &mut Harness, flow: FlowRef, user: &str| {
        let contact = format!("<sip:{user}@{};transport=tcp>", flow.peer());
        assert_eq!(h.register(flow, user, &contact).status(), Some(200));
    };
    // 50: never reported open. 51: dave's, then bob registers over it too.
    // 52: dave's, closed since.
    let (unknown, shared, gone) = (tcp_leaf(4, 50), tcp_leaf(5, 51), tcp_leaf(6, 52));
    h.node(1).connection_opened(51);
    h.node(1).connection_opened(52);
    register_over(&mut h, unknown, "dave");
    register_over(&mut h, shared, "dave");
    register_over(&mut h, shared, "bob");
    register_over(&mut h, gone, "dave");
    let now = h.now;
    h.node(1).connection_closed(52, now);
    let changed = |h: &mut Harness, user: &str| {
        h.closed.clear();
        let now = h.now;
        let change = SubscriberChange::Credentials {
            private_id: user.into(),
        };
        h.node(1).subscriber_changed(change, now);
        h.pump();
        std::mem::take(&mut h.closed)
    };
    assert_eq!(changed(&mut h, "bob"), [], "51 is dave's flow");
    assert_eq!(changed(&mut h, "dave"), [(1, 51)]);
}

/// A farm of one purges a barred subscriber's bindings itself.
#[test]
fn a_single_node_purges_a_barred_subscriber() {
    let mut h = Harness::new();
    assert_eq!(
        h.register(udp_leaf(6), "dave", "<sip:dave@192.0.2.6>")
            .status(),
        Some(200)
    );
    assert_eq!(h.bindings_of(DAVE), 1);
    let now = h.now;
    h.node(1).subscriber_changed(
        crate::SubscriberChange::Removed {
            private_id: "dave".into(),
            public_ids: vec![aor("dave")],
        },
        now,
    );
    h.pump();
    assert_eq!(h.bindings_of(DAVE), 0);
}

#[test]
fn a_guesser_banned_again_after_its_ban_ended_is_answered_before_silence() {
    let mut h = Harness::farm();
    let mallory = udp_leaf(MALLORY);
    // Banned at node 1 for alice's password, and silenced there.
    let first: Vec<Option<u16>> = (0..9)
        .map(|_| guess(&mut h, 1, mallory, "alice", "guess"))
        .collect();
    assert_eq!(&first[..5], &[Some(401); 5]);
    assert_eq!(&first[5..], &[Some(403), Some(403), Some(403), None]);
    // The ban (15 minutes) ends; mallory comes back at node 2 only and is
    // banned again there.
    h.advance(Duration::from_secs(901));
    let now = h.now;
    assert!(h.node(1).bans(now).is_empty());
    let again: Vec<Option<u16>> = (0..6)
        .map(|_| guess(&mut h, 2, mallory, "alice", "guess"))
        .collect();
    assert_eq!(&again[..5], &[Some(401); 5], "a new count: {again:?}");
    assert_eq!(again[5], Some(403));
    // Node 1 knows of the new ban: a new ban is answered a few times
    // before silence, there too.
    let now = h.now;
    assert_eq!(h.node(1).bans(now).len(), 1);
    let at_node_1: Vec<Option<u16>> = (0..4)
        .map(|_| guess(&mut h, 1, mallory, "alice", "guess"))
        .collect();
    assert_eq!(at_node_1, vec![Some(403), Some(403), Some(403), None]);
}
