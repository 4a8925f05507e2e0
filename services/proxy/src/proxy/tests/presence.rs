//! Presence: PUBLISH and its rules, watchers told every change in order
//! wherever it is published, pending and blocked watchers, and what an
//! attacker cannot publish or see.

use super::*;
use crate::presence::{Decision, Rule};

fn pidf(note: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         entity=\"sip:bob@{DOMAIN}\"><tuple id=\"t1\"><status><basic>open</basic></status>\
         <note>{note}</note></tuple></presence>"
    )
}

/// A PUBLISH from `user` on `flow` for `target`'s presence.
fn publish_text(flow: FlowRef, user: &str, target: &str, extra: &str, body: &str) -> String {
    let via = via_for(flow);
    let n = unique();
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/pidf+xml\n".to_string()
    };
    format!(
        "PUBLISH sip:{target}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKp{n}\nMax-Forwards: 70\n\
         From: <sip:{user}@{DOMAIN}>;tag=p{n}\nTo: <sip:{target}@{DOMAIN}>\nCall-ID: pub-{n}\n\
         CSeq: 1 PUBLISH\nEvent: presence\n{extra}{ctype}Content-Length: {}\n\n{body}",
        body.len()
    )
}

/// `user` publishes at node `n`: the final response.
fn publish(h: &mut Harness, n: u8, flow: FlowRef, user: &str, extra: &str, body: &str) -> Message {
    let text = publish_text(flow, user, user, extra, body);
    h.recv(n, &text, Dest::Flow(flow));
    let challenge = h.final_to(flow);
    assert_eq!(challenge.status(), Some(407));
    let auth = authorization(
        &challenge,
        user,
        "secret",
        "PUBLISH",
        &format!("sip:{user}@{DOMAIN}"),
    );
    let again = text
        .replace("CSeq: 1 PUBLISH", "CSeq: 2 PUBLISH")
        .replace("branch=z9hG4bK", "branch=z9hG4bK2")
        .replacen("Event:", &format!("{auth}Event:"), 1);
    h.recv(n, &again, Dest::Flow(flow));
    h.final_to(flow)
}

/// `watcher` (on `flow`) subscribes to `presentity`'s presence at node 1.
fn watch(h: &mut Harness, flow: FlowRef, watcher: &str, presentity: &str) -> Message {
    let via = via_for(flow);
    let n = unique();
    let text = format!(
        "SUBSCRIBE sip:{presentity}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKs{n}\nMax-Forwards: 70\n\
         From: <sip:{watcher}@{DOMAIN}>;tag=w{n}\nTo: <sip:{presentity}@{DOMAIN}>\nCall-ID: watch-{n}\n\
         CSeq: 1 SUBSCRIBE\nContact: <sip:{watcher}@{}>\nEvent: presence\nExpires: 600\n\
         Accept: application/pidf+xml\nContent-Length: 0\n\n",
        flow.peer()
    );
    h.send_authenticated(flow, watcher, &text);
    h.final_to(flow)
}

fn note(m: &Message) -> Option<String> {
    let b = String::from_utf8_lossy(m.body()).into_owned();
    Some(
        b.split("<note>")
            .nth(1)?
            .split("</note>")
            .next()?
            .to_string(),
    )
}

fn state(m: &Message) -> String {
    header(m, HeaderName::SubscriptionState).unwrap_or_default()
}

fn bob() -> Aor {
    Aor::parse(format!("sip:bob@{DOMAIN}").as_bytes()).unwrap()
}

fn rule(h: &mut Harness, watcher: &str, decision: Decision) {
    let rule = Rule {
        watcher: Bytes::from(format!("sip:{watcher}@{DOMAIN}")),
        decision,
        expires_at_ms: h.now.wall_ms + crate::presence::RULE_LIFETIME_MS,
    };
    h.store.set_rule(bob(), rule, false);
}

#[test]
fn an_allowed_watcher_sees_every_change_published_on_another_node_in_order() {
    let mut h = Harness::farm();
    rule(&mut h, "alice", Decision::Allow);
    let watcher = udp_leaf(1);
    assert_eq!(watch(&mut h, watcher, "alice", "bob").status(), Some(200));
    let first = notifies(&mut h, watcher);
    assert_eq!(first.len(), 1);
    assert!(state(&first[0]).starts_with("active"));
    assert_eq!(note(&first[0]), None, "nothing published yet");
    assert_eq!(
        header(&first[0], HeaderName::Event).as_deref(),
        Some("presence")
    );

    // bob's phone publishes at node 2, then changes its note twice.
    let phone = udp_leaf(2);
    let mut etag = String::new();
    let mut seen = Vec::new();
    for (i, text) in ["in a meeting", "at lunch", "back"].iter().enumerate() {
        let extra = if i == 0 {
            String::new()
        } else {
            format!("SIP-If-Match: {etag}\n")
        };
        let ok = publish(&mut h, 2, phone, "bob", &extra, &pidf(text));
        assert_eq!(ok.status(), Some(200), "{ok:?}");
        let new = header(&ok, HeaderName::SipETag).expect("a SIP-ETag");
        assert_ne!(new, etag, "each publication gets a new tag");
        etag = new;
        h.advance(Duration::from_millis(10));
        seen.extend(notifies(&mut h, watcher).iter().filter_map(note));
    }
    assert_eq!(seen, ["in a meeting", "at lunch", "back"]);

    // A refresh (no body) keeps the document and tells no one; removing
    // the publication leaves no tuple.
    let ok = publish(
        &mut h,
        2,
        phone,
        "bob",
        &format!("SIP-If-Match: {etag}\n"),
        "",
    );
    assert_eq!(ok.status(), Some(200));
    let etag = header(&ok, HeaderName::SipETag).unwrap();
    assert!(notifies(&mut h, watcher).is_empty(), "nothing changed");
    let gone = publish(
        &mut h,
        2,
        phone,
        "bob",
        &format!("SIP-If-Match: {etag}\nExpires: 0\n"),
        "",
    );
    assert_eq!(gone.status(), Some(200));
    let last = notifies(&mut h, watcher);
    assert_eq!(last.len(), 1);
    assert_eq!(note(&last[0]), None);
}

#[test]
fn a_pending_watcher_gets_no_state_until_allowed_and_a_blocked_one_is_rejected() {
    let mut h = Harness::new();
    let phone = udp_leaf(2);
    assert_eq!(
        publish(&mut h, 1, phone, "bob", "", &pidf("secret meeting")).status(),
        Some(200)
    );
    // No rule: pending, no body.
    let alice = udp_leaf(1);
    assert_eq!(watch(&mut h, alice, "alice", "bob").status(), Some(200));
    let n = notifies(&mut h, alice);
    assert_eq!(n.len(), 1);
    assert!(state(&n[0]).starts_with("pending"), "{}", state(&n[0]));
    assert!(n[0].body().is_empty(), "no state for a pending watcher");
    // The presentity allows her: the state follows at once.
    rule(&mut h, "alice", Decision::Allow);
    let now = h.now;
    h.node(1).record_changed(bob(), now);
    h.pump();
    let n = notifies(&mut h, alice);
    assert_eq!(n.len(), 1);
    assert!(state(&n[0]).starts_with("active"));
    assert_eq!(note(&n[0]).as_deref(), Some("secret meeting"));

    // dave is blocked: rejected, never told anything.
    rule(&mut h, "dave", Decision::Block);
    let dave = udp_leaf(4);
    assert_eq!(watch(&mut h, dave, "dave", "bob").status(), Some(200));
    let n = notifies(&mut h, dave);
    assert_eq!(n.len(), 1);
    assert_eq!(state(&n[0]), "terminated;reason=rejected");
    assert!(n[0].body().is_empty());
    publish(&mut h, 1, phone, "bob", "", &pidf("another"));
    assert!(
        notifies(&mut h, dave).is_empty(),
        "a rejected watcher hears no more"
    );
}

#[test]
fn publish_is_checked_and_no_one_publishes_for_another() {
    let mut h = Harness::new();
    let mallory = udp_leaf(9);
    // Without credentials: challenged.
    h.leaf_sends(
        mallory,
        &publish_text(mallory, "alice", "bob", "", &pidf("x")),
    );
    assert_eq!(h.final_to(mallory).status(), Some(407));
    // alice authenticated, publishing bob's presence: 403.
    let text = publish_text(mallory, "alice", "bob", "", &pidf("forged"));
    h.send_authenticated(mallory, "alice", &text);
    assert_eq!(h.final_to(mallory).status(), Some(403));
    let phone = udp_leaf(2);
    let cases: [(&str, &str, u16); 5] = [
        ("SIP-If-Match: 0011223344556677\n", "", 412),
        ("SIP-If-Match: nonsense\n", "", 412),
        ("", "", 400),
        ("Expires: 5\n", "x", 423),
        ("", "not xml at all", 0),
    ];
    for (extra, body, want) in cases {
        let r = if want == 0 {
            // A body of another type: 415.
            let text = publish_text(phone, "bob", "bob", extra, body)
                .replace("application/pidf+xml", "text/plain");
            h.send_authenticated(phone, "bob", &text);
            h.final_to(phone)
        } else {
            let body = if body == "x" { pidf("x") } else { body.into() };
            publish(&mut h, 1, phone, "bob", extra, &body)
        };
        let want = if want == 0 { 415 } else { want };
        assert_eq!(r.status(), Some(want), "{extra:?} {body:?}");
    }
    let wrong_event = publish_text(phone, "bob", "bob", "", &pidf("x"))
        .replace("Event: presence", "Event: dialog");
    h.send_authenticated(phone, "bob", &wrong_event);
    assert_eq!(h.final_to(phone).status(), Some(489));
    // Nothing of that was stored: a watcher allowed sees no tuple.
    rule(&mut h, "alice", Decision::Allow);
    let alice = udp_leaf(1);
    watch(&mut h, alice, "alice", "bob");
    let n = notifies(&mut h, alice);
    assert_eq!(note(&n[0]), None);
}

#[test]
fn the_rules_of_a_watched_presentity_are_kept_past_the_rings_entry_lifetime() {
    let mut h = Harness::new();
    let soon = h.now.wall_ms + 24 * 3600 * 1000;
    h.store.set_rule(
        bob(),
        Rule {
            watcher: Bytes::from(format!("sip:alice@{DOMAIN}")),
            decision: Decision::Allow,
            expires_at_ms: soon,
        },
        false,
    );
    let alice = udp_leaf(1);
    watch(&mut h, alice, "alice", "bob");
    assert!(state(&notifies(&mut h, alice)[0]).starts_with("active"));
    let now_ms = h.now.wall_ms;
    let Ok(crate::location::Located::Watched { rules, .. }) = h
        .store
        .execute(crate::location::LocationOp::Watch { aor: bob(), now_ms })
    else {
        panic!("a watched record");
    };
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].expires_at_ms,
        now_ms + crate::presence::RULE_LIFETIME_MS,
        "written again, for the ring's whole lifetime"
    );
    assert_eq!(rules[0].decision, Decision::Allow);
}
