//! TURN relays for phones: the best relays of the subscriber's region
//! with TURN REST API credentials, only for an authenticated subscriber.

use super::*;
use crate::TurnPolicy;
use crate::discovery::{ServiceRecord, turn_credentials};

const SECRET_TURN: &[u8] = b"relay secret";

fn relay(uri: &str, region: &str, load: u32, expires_at_ms: u64) -> ServiceRecord {
    ServiceRecord {
        name: "turn".into(),
        uri: uri.into(),
        region: region.into(),
        capacity: 100,
        load,
        expires_at_ms,
    }
}

/// A node in region "eu" offering TURN, with relays in "eu" and "us".
fn farm_with_relays() -> Harness {
    let mut h = Harness::new();
    h.node(1).policy.region = "eu".into();
    h.node(1).policy.turn = Some(TurnPolicy {
        secret: SECRET_TURN.to_vec(),
        ttl: Duration::from_secs(600),
        servers: 2,
    });
    let until = h.now.wall_ms + 60_000;
    for (uri, region, load) in [
        ("turn:192.0.2.10:3478?transport=udp", "us", 0),
        ("turn:192.0.2.20:3478?transport=udp", "eu", 50),
        ("turn:192.0.2.21:3478?transport=udp", "eu", 10),
    ] {
        h.store.advertise(relay(uri, region, load, until));
    }
    h
}

fn ask_text(flow: FlowRef, from: &str) -> String {
    let via = via_for(flow);
    let n = unique();
    format!(
        "OPTIONS sip:turn@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKt{n}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=t{n}\nTo: <sip:turn@{DOMAIN}>\nCall-ID: turn-{n}\n\
         CSeq: 1 OPTIONS\nAccept: application/json\nContent-Length: 0\n\n"
    )
}

fn ask(h: &mut Harness, flow: FlowRef, user: &str) -> Message {
    h.send_authenticated(flow, user, &ask_text(flow, user));
    h.final_to(flow)
}

fn uris(body: &str) -> Vec<String> {
    let list = body
        .split("\"uris\":[")
        .nth(1)
        .unwrap()
        .trim_end_matches("]}");
    list.split(',')
        .map(|u| u.trim_matches('"').to_string())
        .collect()
}

#[test]
fn a_subscriber_gets_the_relays_of_its_region_with_credentials() {
    let mut h = farm_with_relays();
    let alice = udp_leaf(1);
    let r = ask(&mut h, alice, "alice");
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(
        header(&r, HeaderName::ContentType).as_deref(),
        Some("application/json")
    );
    let body = String::from_utf8_lossy(r.body()).into_owned();
    // alice has no region: the node's (eu), least used first, then the rest.
    assert_eq!(
        uris(&body),
        [
            "turn:192.0.2.21:3478?transport=udp",
            "turn:192.0.2.20:3478?transport=udp"
        ]
    );
    let expires = h.now.wall_ms / 1000 + 600;
    let (user, pass) = turn_credentials(SECRET_TURN, "alice", expires);
    assert!(body.contains(&format!("\"username\":\"{user}\"")), "{body}");
    assert!(body.contains(&format!("\"password\":\"{pass}\"")), "{body}");
    assert!(body.contains("\"ttl\":600"));

    // bob is provisioned in "us": the us relay first.
    h.directory.set_region("bob", "us");
    let bob = udp_leaf(2);
    let r = ask(&mut h, bob, "bob");
    let body = String::from_utf8_lossy(r.body()).into_owned();
    assert_eq!(uris(&body)[0], "turn:192.0.2.10:3478?transport=udp");
    assert!(body.contains(":bob\""), "credentials name bob: {body}");
}

#[test]
fn no_credentials_without_authentication_and_none_for_another_subscriber() {
    let mut h = farm_with_relays();
    let mallory = udp_leaf(9);
    h.leaf_sends(mallory, &ask_text(mallory, "alice"));
    let r = h.final_to(mallory);
    assert_eq!(r.status(), Some(407));
    assert!(r.body().is_empty());
    // Authenticated as alice, claiming to be bob: refused, no credentials.
    let text = ask_text(mallory, "bob");
    h.send_authenticated(mallory, "alice", &text);
    let r = h.final_to(mallory);
    assert_eq!(r.status(), Some(403));
    assert!(r.body().is_empty());
}

#[test]
fn no_relay_advertised_is_480_and_no_turn_offered_is_404() {
    let mut h = Harness::new();
    h.node(1).policy.turn = Some(TurnPolicy {
        secret: SECRET_TURN.to_vec(),
        ttl: Duration::from_secs(600),
        servers: 2,
    });
    // Only an expired one.
    let gone = h.now.wall_ms - 1;
    h.store
        .advertise(relay("turn:192.0.2.30:3478", "eu", 0, gone));
    let alice = udp_leaf(1);
    assert_eq!(ask(&mut h, alice, "alice").status(), Some(480));
    h.node(1).policy.turn = None;
    assert_eq!(ask(&mut h, alice, "alice").status(), Some(404));
}
