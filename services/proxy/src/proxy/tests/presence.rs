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

/// A SUBSCRIBE from `user` on `flow` for `target`'s watcher information.
fn winfo_text(flow: FlowRef, user: &str, target: &str) -> String {
    let via = via_for(flow);
    let n = unique();
    format!(
        "SUBSCRIBE sip:{target}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKi{n}\nMax-Forwards: 70\n\
         From: <sip:{user}@{DOMAIN}>;tag=i{n}\nTo: <sip:{target}@{DOMAIN}>\nCall-ID: winfo-{n}\n\
         CSeq: 1 SUBSCRIBE\nContact: <sip:{user}@{}>\nEvent: presence.winfo\nExpires: 600\n\
         Accept: application/watcherinfo+xml\nContent-Length: 0\n\n",
        flow.peer()
    )
}

/// A PUBLISH of decisions from `user` about `target`'s watchers.
fn decisions_text(flow: FlowRef, user: &str, target: &str, rules: &[(&str, &str)]) -> String {
    let body: String = rules
        .iter()
        .map(|(who, handling)| {
            format!(
                "<cr:rule id=\"{who}\"><cr:conditions><cr:identity><cr:one id=\"sip:{who}@{DOMAIN}\"/>\
                 </cr:identity></cr:conditions><cr:actions><sub-handling>{handling}</sub-handling>\
                 </cr:actions></cr:rule>"
            )
        })
        .collect();
    let body = format!(
        "<cr:ruleset xmlns=\"urn:ietf:params:xml:ns:pres-rules\" \
         xmlns:cr=\"urn:ietf:params:xml:ns:common-policy\">{body}</cr:ruleset>"
    );
    publish_text(flow, user, target, "", &body)
        .replace("Event: presence", "Event: presence.winfo")
        .replace("application/pidf+xml", "application/auth-policy+xml")
}

fn watchers(m: &Message) -> Vec<(String, String)> {
    let b = String::from_utf8_lossy(m.body()).into_owned();
    b.split("<watcher ")
        .skip(1)
        .map(|w| {
            let status = w
                .split("status=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let uri = w.split('>').nth(1).unwrap().split('<').next().unwrap();
            (uri.to_string(), status.to_string())
        })
        .collect()
}

#[test]
fn the_presentity_sees_its_watchers_and_decides_about_them_itself() {
    let mut h = Harness::new();
    let bob = udp_leaf(2);
    h.send_authenticated(bob, "bob", &winfo_text(bob, "bob", "bob"));
    assert_eq!(h.final_to(bob).status(), Some(200));
    let n = notifies(&mut h, bob);
    assert_eq!(
        header(&n[0], HeaderName::ContentType).as_deref(),
        Some("application/watcherinfo+xml")
    );
    assert!(watchers(&n[0]).is_empty());

    // alice asks to watch: pending, and bob learns of her.
    let alice = udp_leaf(1);
    watch(&mut h, alice, "alice", "bob");
    assert!(state(&notifies(&mut h, alice)[0]).starts_with("pending"));
    let n = notifies(&mut h, bob);
    assert_eq!(
        watchers(&n[0]),
        [(format!("sip:alice@{DOMAIN}"), "pending".to_string())]
    );
    assert!(String::from_utf8_lossy(n[0].body()).contains("version=\"1\""));

    // bob allows her: she gets his state, his list says active.
    let text = decisions_text(bob, "bob", "bob", &[("alice", "allow"), ("dave", "block")]);
    h.send_authenticated(bob, "bob", &text);
    assert_eq!(h.final_to(bob).status(), Some(200));
    assert!(state(&notifies(&mut h, alice)[0]).starts_with("active"));
    let n = notifies(&mut h, bob);
    assert_eq!(
        watchers(&n[0]),
        [(format!("sip:alice@{DOMAIN}"), "active".to_string())]
    );
    // dave, blocked in the same document, is rejected.
    let dave = udp_leaf(4);
    watch(&mut h, dave, "dave", "bob");
    assert_eq!(
        state(&notifies(&mut h, dave)[0]),
        "terminated;reason=rejected"
    );
}

#[test]
fn no_one_sees_or_decides_about_anothers_watchers() {
    let mut h = Harness::new();
    let alice = udp_leaf(1);
    h.send_authenticated(alice, "alice", &winfo_text(alice, "alice", "bob"));
    assert_eq!(h.final_to(alice).status(), Some(403));
    let text = decisions_text(alice, "alice", "bob", &[("alice", "allow")]);
    h.send_authenticated(alice, "alice", &text);
    assert_eq!(h.final_to(alice).status(), Some(403));
    // alice is still pending on bob: her own document decided nothing.
    watch(&mut h, alice, "alice", "bob");
    assert!(state(&notifies(&mut h, alice)[0]).starts_with("pending"));
    // bob's own, malformed: refused, nothing stored.
    let bob = udp_leaf(2);
    let wrong_type = decisions_text(bob, "bob", "bob", &[("alice", "allow")])
        .replace("application/auth-policy+xml", "text/plain");
    h.send_authenticated(bob, "bob", &wrong_type);
    assert_eq!(h.final_to(bob).status(), Some(415));
    let nothing = decisions_text(bob, "bob", "bob", &[("alice", "maybe")]);
    h.send_authenticated(bob, "bob", &nothing);
    assert_eq!(h.final_to(bob).status(), Some(400));
    assert!(
        notifies(&mut h, alice).is_empty(),
        "still pending, nothing new"
    );
}
