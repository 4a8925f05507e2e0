//! The reg event package on farm-wide subscriptions: who may watch, the
//! documents in order, refresh, un-SUBSCRIBE, expiry, a watcher that is
//! gone, and a subscription that outlives the member that accepted it.

use super::*;
use crate::trust::{Element, TrustTable};

/// A SUBSCRIBE for the reg event of `user` from `flow`.
fn subscribe_text(flow: FlowRef, from: &str, user: &str, call: &str, expires: u32) -> String {
    let via = via_for(flow);
    format!(
        "SUBSCRIBE sip:{user}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKs{call}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=w{call}\nTo: <sip:{user}@{DOMAIN}>\nCall-ID: {call}\n\
         CSeq: 1 SUBSCRIBE\nContact: <sip:{from}@{}>\nEvent: reg\nExpires: {expires}\n\
         Accept: application/reginfo+xml\nContent-Length: 0\n\n",
        flow.peer()
    )
}

/// `user`'s device on `flow` subscribes (authenticated) to the reg event
/// of `target`: the final response.
fn subscribe_as(h: &mut Harness, flow: FlowRef, user: &str, target: &str, call: &str) -> Message {
    h.send_authenticated(flow, user, &subscribe_text(flow, user, target, call, 600));
    h.final_to(flow)
}

/// Alice's phone on `flow` registers `<sip:alice@192.0.2.1:5060>` at node
/// `n` for `expires` seconds (0 removes it), answering the challenge; a
/// new Call-ID each time (the binding is the contact's).
fn alice_registers(h: &mut Harness, n: u8, flow: FlowRef, expires: u32) {
    let call = format!("reg-{}", unique());
    let contact = "<sip:alice@192.0.2.1:5060>";
    let first = register_text(flow, "alice", contact, &call, 1, "", expires);
    h.recv(n, &first, Dest::Flow(flow));
    let c = h.final_to(flow);
    let auth = authorization(&c, "alice", "secret", "REGISTER", &format!("sip:{DOMAIN}"));
    let second = register_text(flow, "alice", contact, &call, 2, &auth, expires);
    h.recv(n, &second, Dest::Flow(flow));
    assert_eq!(h.final_to(flow).status(), Some(200));
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

fn version(m: &Message) -> u32 {
    body(m)
        .split("<reginfo")
        .nth(1)
        .unwrap_or_default()
        .split("version=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {m:?}"))
}

/// Alice's watcher (her other device, at 192.0.2.30) subscribes at node
/// 1: the 200 OK.
fn watch_alice(h: &mut Harness, watcher: FlowRef, call: &str) -> Message {
    h.send_authenticated(
        watcher,
        "alice",
        &subscribe_text(watcher, "alice", "alice", call, 600),
    );
    h.final_to(watcher)
}

#[test]
fn a_watcher_sees_register_refresh_and_deregister_in_order_wherever_they_happen() {
    let mut h = Harness::farm();
    let watcher = udp_leaf(30);
    let ok = watch_alice(&mut h, watcher, "w-1");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(header(&ok, HeaderName::Expires).as_deref(), Some("600"));
    let contact = header(&ok, HeaderName::Contact).unwrap();
    assert!(
        contact.starts_with("<sip:sub.") && contact.ends_with("@ringmesh.test>"),
        "the farm, not a node: {contact}"
    );
    // The full state first: nothing registered.
    let first = notifies(&mut h, watcher);
    assert_eq!(first.len(), 1);
    assert_eq!(version(&first[0]), 0);
    assert!(
        body(&first[0]).contains("state=\"full\"") && body(&first[0]).contains("state=\"init\"")
    );
    assert_eq!(
        header(&first[0], HeaderName::SubscriptionState).as_deref(),
        Some("active;expires=600")
    );
    assert_eq!(
        header(&first[0], HeaderName::ContentType).as_deref(),
        Some("application/reginfo+xml")
    );
    // Alice's phone registers at node 2, refreshes, then de-registers.
    let phone = udp_leaf(1);
    let mut events = Vec::new();
    for expires in [600, 600, 0] {
        alice_registers(&mut h, 2, phone, expires);
        h.advance(Duration::from_millis(10));
        events.extend(
            notifies(&mut h, watcher)
                .iter()
                .map(|m| (version(m), body(m))),
        );
    }
    let versions: Vec<u32> = events.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, vec![1, 2, 3], "{events:#?}");
    assert!(events[0].1.contains("event=\"registered\""));
    assert!(events[0].1.contains("<uri>sip:alice@192.0.2.1:5060</uri>"));
    assert!(events[1].1.contains("event=\"refreshed\""));
    assert!(
        events[2]
            .1
            .contains("state=\"terminated\" event=\"unregistered\"")
    );
}

#[test]
fn a_phone_may_watch_only_its_own_registrations_and_a_trusted_server_any() {
    let mut h = Harness::new();
    let bob = udp_leaf(2);
    let r = subscribe_as(&mut h, bob, "bob", "alice", "spy-1");
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("only its own")
    );
    assert!(notifies(&mut h, bob).is_empty());
    // Without credentials: challenged, never subscribed.
    h.leaf_sends(bob, &subscribe_text(bob, "bob", "alice", "spy-2", 600));
    assert_eq!(h.final_to(bob).status(), Some(407));
    // An application server (trusted) may watch any subscriber, not a
    // stranger.
    let asrv = udp_leaf(60);
    h.node(1).set_trusted(TrustTable::new(vec![
        Element::parse_flag("app-server:as1=192.0.2.60").unwrap(),
    ]));
    h.leaf_sends(asrv, &subscribe_text(asrv, "as", "alice", "as-1", 600));
    assert_eq!(h.final_to(asrv).status(), Some(200));
    assert_eq!(notifies(&mut h, asrv).len(), 1);
    h.leaf_sends(asrv, &subscribe_text(asrv, "as", "nobody", "as-2", 600));
    assert_eq!(h.final_to(asrv).status(), Some(403));
}

/// An in-dialog SUBSCRIBE from the watcher to the farm's Contact.
fn resubscribe(
    h: &mut Harness,
    watcher: FlowRef,
    ok: &Message,
    call: &str,
    cseq: u32,
    expires: u32,
) -> Message {
    let contact = header(ok, HeaderName::Contact).unwrap();
    let ruri = contact
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    let to = header(ok, HeaderName::To).unwrap();
    let text = format!(
        "SUBSCRIBE {ruri} SIP/2.0\nVia: {};branch=z9hG4bKrs{call}{cseq}.{}\nMax-Forwards: 70\n\
         From: <sip:alice@{DOMAIN}>;tag=w{call}\nTo: {to}\nCall-ID: {call}\nCSeq: {cseq} SUBSCRIBE\n\
         Contact: <sip:alice@{}>\nEvent: reg\nExpires: {expires}\nContent-Length: 0\n\n",
        via_for(watcher),
        unique(),
        watcher.peer()
    );
    h.leaf_sends(watcher, &text);
    h.final_to(watcher)
}

#[test]
fn a_refresh_and_an_unsubscribe_reach_the_farm_not_a_node() {
    let mut h = Harness::farm();
    let watcher = udp_leaf(30);
    let ok = watch_alice(&mut h, watcher, "w-r");
    notifies(&mut h, watcher);
    // A refresh (in dialog, no credentials needed) extends it.
    let r = resubscribe(&mut h, watcher, &ok, "w-r", 3, 1200);
    assert_eq!(r.status(), Some(200));
    assert_eq!(header(&r, HeaderName::Expires).as_deref(), Some("1200"));
    // A refresh whose CSeq is not above the last is refused.
    assert_eq!(
        resubscribe(&mut h, watcher, &ok, "w-r", 3, 1200).status(),
        Some(500)
    );
    // Another dialog's tags, or a forged Contact, are no subscription.
    let forged = header(&ok, HeaderName::Contact)
        .unwrap()
        .replace("sub.A", "sub.B")
        .replace("sub.a", "sub.A");
    let text = String::from_utf8_lossy(ok.raw())
        .replace(&header(&ok, HeaderName::Contact).unwrap(), &forged);
    let fake = msg(&text.replace("\r\n", "\n"));
    assert_eq!(
        resubscribe(&mut h, watcher, &fake, "w-r", 4, 600).status(),
        Some(481)
    );
    assert_eq!(
        resubscribe(&mut h, watcher, &ok, "other-call", 5, 600).status(),
        Some(481)
    );
    // Expires: 0 ends it, with a last NOTIFY.
    assert_eq!(
        resubscribe(&mut h, watcher, &ok, "w-r", 6, 0).status(),
        Some(200)
    );
    let last = notifies(&mut h, watcher);
    assert_eq!(last.len(), 1);
    assert_eq!(
        header(&last[0], HeaderName::SubscriptionState).as_deref(),
        Some("terminated;reason=timeout")
    );
    // Then nothing more: alice registering tells no one.
    h.register(udp_leaf(1), "alice", "<sip:alice@192.0.2.1:5060>");
    assert!(notifies(&mut h, watcher).is_empty());
    let events = |e: &str| h.metrics.iter().map(|m| m.count(e)).sum::<usize>();
    assert_eq!(events("Subscription(Accepted)"), 1);
    assert_eq!(
        events("Subscription(Refreshed)"),
        2,
        "the refresh and the un-SUBSCRIBE"
    );
    assert_eq!(events("Subscription(Ended)"), 1);
}

#[test]
fn expiries_are_told_and_a_subscription_ends_when_it_runs_out() {
    let mut h = Harness::new();
    let watcher = udp_leaf(30);
    alice_registers(&mut h, 1, udp_leaf(1), 60);
    h.send_authenticated(
        watcher,
        "alice",
        &subscribe_text(watcher, "alice", "alice", "w-e", 120),
    );
    assert_eq!(h.final_to(watcher).status(), Some(200));
    let full = notifies(&mut h, watcher);
    assert!(body(&full[0]).contains("state=\"active\""));
    // The binding runs out at 60 s: told as expired.
    h.advance(Duration::from_secs(61));
    let n = notifies(&mut h, watcher);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(body(&n[0]).contains("event=\"expired\""));
    // The subscription runs out at 120 s: a last NOTIFY says so.
    h.advance(Duration::from_secs(60));
    let n = notifies(&mut h, watcher);
    assert_eq!(n.len(), 1);
    assert!(
        header(&n[0], HeaderName::SubscriptionState)
            .unwrap()
            .starts_with("terminated")
    );
}

#[test]
fn a_watcher_that_answers_481_is_dropped() {
    let mut h = Harness::new();
    let watcher = udp_leaf(30);
    assert_eq!(
        subscribe_as(&mut h, watcher, "alice", "alice", "w-g").status(),
        Some(200)
    );
    let sent: Vec<Sent> = h.requests();
    let notify = sent
        .iter()
        .find(|s| s.msg.method().as_bytes() == b"NOTIFY")
        .unwrap();
    h.recv(1, &ok_to(&notify.msg, 481), Dest::Flow(watcher));
    h.register(udp_leaf(1), "alice", "<sip:alice@192.0.2.1:5060>");
    assert!(
        notifies(&mut h, watcher).is_empty(),
        "the subscription is gone"
    );
}

#[test]
fn the_subscription_outlives_the_member_that_accepted_it() {
    let mut h = Harness::farm();
    let watcher = udp_leaf(30);
    assert_eq!(watch_alice(&mut h, watcher, "w-k").status(), Some(200));
    notifies(&mut h, watcher);
    // Node 1 (it accepted the subscription and holds the watcher's flow)
    // leaves the farm; alice registers at node 2.
    h.members.0.lock().unwrap().remove(&node_id(1));
    let phone = udp_leaf(1);
    assert_eq!(
        h.register_at(2, phone, "alice", "<sip:alice@192.0.2.1:5060>")
            .status(),
        Some(200)
    );
    let sent: Vec<Sent> = h
        .requests()
        .into_iter()
        .filter(|s| s.msg.method().as_bytes() == b"NOTIFY")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].node, 2, "node 2 notifies");
    assert_eq!(
        sent[0].dest.peer(),
        Some(watcher.peer()),
        "straight to the watcher"
    );
    assert_eq!(version(&sent[0].msg), 1);
    assert!(body(&sent[0].msg).contains("event=\"registered\""));
}

#[test]
fn a_subscriber_cannot_flood_its_record_with_subscriptions() {
    let mut h = Harness::new();
    let mallory = udp_leaf(66);
    let cap = crate::proxy::notifier::MAX_SUBSCRIPTIONS;
    for i in 0..cap {
        let call = format!("flood-{i}");
        assert_eq!(
            subscribe_as(&mut h, mallory, "alice", "alice", &call).status(),
            Some(200),
            "subscription {i}"
        );
    }
    // The same dialog subscribing again replaces its subscription.
    assert_eq!(
        subscribe_as(&mut h, mallory, "alice", "alice", "flood-0").status(),
        Some(200)
    );
    // One more is refused, and counted.
    let r = subscribe_as(&mut h, mallory, "alice", "alice", "flood-x");
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("too many subscriptions")
    );
    assert_eq!(h.metrics[0].count("TooManySubscriptions"), 1);
    h.take();
    // Bob watching his own registrations on the same node is served.
    let bob = udp_leaf(2);
    assert_eq!(
        subscribe_as(&mut h, bob, "bob", "bob", "bob-w").status(),
        Some(200)
    );
    assert_eq!(notifies(&mut h, bob).len(), 1);
}

#[test]
fn a_user_whose_name_looks_like_the_farm_s_contact_is_still_a_user() {
    let mut h = Harness::open();
    let phone = udp_leaf(5);
    let text = register_text(
        phone,
        "sub.AwAB",
        "<sip:x@192.0.2.5:5060>",
        "look-1",
        1,
        "",
        600,
    );
    h.leaf_sends(phone, &text);
    assert_eq!(h.final_to(phone).status(), Some(200));
    h.take();
    let caller = udp_leaf(6);
    h.leaf_sends(caller, &invite_text(caller, "bob", "sub.AwAB", "look-2"));
    let out = h.requests();
    assert_eq!(out.len(), 1, "routed to the registered user");
    assert_eq!(out[0].msg.request_uri_bytes(), b"sip:x@192.0.2.5:5060");
}
