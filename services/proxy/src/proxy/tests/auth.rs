//! Who must authenticate, and what happens to those who fail: 401 for
//! REGISTER, 407 for out-of-dialog INVITE, MESSAGE and SUBSCRIBE; refusals
//! counted by reason; barred subscribers and foreign identities refused;
//! a directory that answers later or not at all; the identity the farm
//! asserts (RFC 3325).

use std::time::Duration;

use ringmesh_sip::HeaderName;

use super::*;

const ALICE: u8 = 1;
const BOB: u8 = 2;

#[test]
fn a_register_without_credentials_is_challenged() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 1, "", 600),
    );
    let r = h.final_to(flow);
    assert_eq!(r.status(), Some(401));
    let challenge = header(&r, HeaderName::WwwAuthenticate).unwrap();
    assert!(
        challenge.contains(&format!("realm=\"{DOMAIN}\"")),
        "{challenge}"
    );
    assert!(challenge.contains("qop=\"auth\""), "{challenge}");
    assert_eq!(h.metrics[0].count("Registration(Challenged)"), 1);
    assert_eq!(
        h.metrics[0].count("AuthFailure"),
        0,
        "a first request without credentials is no failure"
    );
}

#[test]
fn good_credentials_register_and_bad_ones_are_challenged_again_and_counted() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    let r = h.register(flow, "alice", "<sip:alice@192.0.2.1>");
    assert_eq!(r.status(), Some(200));
    assert_eq!(h.metrics[0].count("Registration(Ok)"), 1);

    // The wrong password.
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c2", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    let auth = authorization(
        &challenge,
        "alice",
        "guess",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c2", 2, &auth, 600),
    );
    assert_eq!(h.final_to(flow).status(), Some(401));
    assert_eq!(h.metrics[0].count("AuthFailure(BadCredentials)"), 1);

    // A user the directory does not know.
    h.leaf_sends(
        flow,
        &register_text(flow, "mallory", "<sip:m@192.0.2.1>", "c3", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    let auth = authorization(
        &challenge,
        "mallory",
        "secret",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "mallory", "<sip:m@192.0.2.1>", "c3", 2, &auth, 600),
    );
    assert_eq!(h.final_to(flow).status(), Some(401));
    assert_eq!(h.metrics[0].count("AuthFailure(UnknownUser)"), 1);
}

#[test]
fn an_expired_nonce_is_challenged_as_stale() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    h.advance(Duration::from_secs(NONCE_LIFETIME + 10));
    let auth = authorization(
        &challenge,
        "alice",
        "secret",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 2, &auth, 600),
    );
    let r = h.final_to(flow);
    assert_eq!(r.status(), Some(401));
    assert!(
        header(&r, HeaderName::WwwAuthenticate)
            .unwrap()
            .contains("stale=true")
    );
    assert_eq!(h.metrics[0].count("AuthFailure(StaleNonce)"), 1);
}

#[test]
fn a_barred_subscriber_and_someone_elses_aor_are_refused() {
    let mut h = Harness::new();
    let flow = udp_leaf(3);
    let r = h.register(flow, "carol", "<sip:carol@192.0.2.3>");
    assert_eq!(r.status(), Some(403));
    assert!(header(&r, HeaderName::Warning).unwrap().contains("barred"));
    assert_eq!(h.metrics[0].count("AuthFailure(Barred)"), 1);

    // alice's credentials, bob's AOR.
    let flow = udp_leaf(ALICE);
    h.leaf_sends(
        flow,
        &register_text(flow, "bob", "<sip:bob@192.0.2.1>", "c9", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    let auth = authorization(
        &challenge,
        "alice",
        "secret",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "bob", "<sip:bob@192.0.2.1>", "c9", 2, &auth, 600),
    );
    let r = h.final_to(flow);
    assert_eq!(r.status(), Some(403));
    assert!(
        header(&r, HeaderName::Warning)
            .unwrap()
            .contains("not your address-of-record")
    );
    assert_eq!(h.metrics[0].count("AuthFailure(ForbiddenIdentity)"), 1);
    assert_eq!(h.metrics[0].count("Registration(Rejected)"), 2);

    // A subscriber with an implicit identity registers either.
    let flow = udp_leaf(4);
    assert_eq!(
        h.register(flow, "dave", "<sip:dave@192.0.2.4>").status(),
        Some(200)
    );
}

fn out_of_dialog(method: &str, from: &str, to: &str) -> String {
    let flow = udp_leaf(ALICE);
    let via = via_for(flow);
    let n = unique();
    format!(
        "{method} sip:{to}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKx{n}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=x{n}\nTo: <sip:{to}@{DOMAIN}>\nCall-ID: x-{n}\n\
         CSeq: 1 {method}\nContact: <sip:{from}@192.0.2.1>\nEvent: presence\nContent-Length: 0\n\n"
    )
}

#[test]
fn invite_message_and_subscribe_are_challenged_with_407() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    for method in ["INVITE", "MESSAGE", "SUBSCRIBE"] {
        h.leaf_sends(flow, &out_of_dialog(method, "alice", "bob"));
        let r = h.final_to(flow);
        assert_eq!(r.status(), Some(407), "{method}");
        assert!(
            header(&r, HeaderName::ProxyAuthenticate)
                .unwrap()
                .contains(DOMAIN),
            "{method}"
        );
        assert!(h.requests().is_empty(), "{method} not forwarded");
    }
}

#[test]
fn a_caller_asserts_only_its_own_identities() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    // alice's credentials, bob's From.
    h.send_authenticated(flow, "alice", &out_of_dialog("MESSAGE", "bob", "dave"));
    let r = h.final_to(flow);
    assert_eq!(r.status(), Some(403));
    assert_eq!(h.metrics[0].count("AuthFailure(ForbiddenIdentity)"), 1);
    // A barred subscriber calls no one.
    h.send_authenticated(flow, "carol", &out_of_dialog("MESSAGE", "carol", "dave"));
    assert_eq!(h.final_to(flow).status(), Some(403));
    assert_eq!(h.metrics[0].count("AuthFailure(Barred)"), 1);
}

#[test]
fn the_farm_asserts_the_authenticated_identity_and_strips_what_the_leaf_claimed() {
    let mut h = Harness::new();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    let text = invite_text(alice, "alice", "bob", "pai-1").replace(
        "Content-Length: 0",
        "P-Asserted-Identity: <sip:ceo@ringmesh.test>\nContent-Length: 0",
    );
    h.send_authenticated(alice, "alice", &text);
    let out = h.requests();
    assert_eq!(out.len(), 1, "forwarded to bob's one binding");
    let fwd = &out[0].msg;
    assert_eq!(
        header(fwd, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@ringmesh.test>")
    );
    assert_eq!(
        fwd.header_values(HeaderName::PAssertedIdentity).count(),
        1,
        "the leaf's claim is gone"
    );
    assert!(
        fwd.header(HeaderName::ProxyAuthorization).is_none(),
        "credentials stay at the edge"
    );

    // Privacy: id withholds it from the callee.
    let text = invite_text(alice, "alice", "bob", "pai-2")
        .replace("Content-Length: 0", "Privacy: id\nContent-Length: 0");
    h.send_authenticated(alice, "alice", &text);
    let out = h.requests();
    assert_eq!(out.len(), 1);
    assert!(out[0].msg.header(HeaderName::PAssertedIdentity).is_none());
}

#[test]
fn a_directory_that_answers_later_resumes_the_request() {
    let mut h = Harness::new();
    *h.directory.mode.lock().unwrap() = DirMode::Later;
    let flow = udp_leaf(ALICE);
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    let auth = authorization(
        &challenge,
        "alice",
        "secret",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 2, &auth, 600),
    );
    assert!(
        h.responses_to(flow)
            .iter()
            .all(|m| m.status().is_some_and(|s| s < 200)),
        "no final answer while the directory looks"
    );
    assert_eq!(h.node(1).load().pending, 1);
    h.answer_lookups();
    assert_eq!(h.final_to(flow).status(), Some(200));
    assert_eq!(h.node(1).load().pending, 0);
}

#[test]
fn a_directory_that_cannot_answer_gets_503_with_retry_after() {
    let mut h = Harness::new();
    *h.directory.mode.lock().unwrap() = DirMode::Unavailable;
    let flow = udp_leaf(ALICE);
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 1, "", 600),
    );
    let challenge = h.final_to(flow);
    let auth = authorization(
        &challenge,
        "alice",
        "secret",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    h.leaf_sends(
        flow,
        &register_text(flow, "alice", "<sip:alice@192.0.2.1>", "c1", 2, &auth, 600),
    );
    let r = h.final_to(flow);
    assert_eq!(r.status(), Some(503));
    assert_eq!(header(&r, HeaderName::RetryAfter).as_deref(), Some("5"));
    assert_eq!(h.metrics[0].count("Registration(Failed)"), 1);
}

#[test]
fn in_dialog_requests_through_our_route_are_not_challenged() {
    // A BYE along the route set the INVITE set up carries no credentials:
    // the dialog was authenticated when it began.
    let mut h = Harness::new();
    let bob = udp_leaf(BOB);
    assert_eq!(
        h.register(bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.send_authenticated(alice, "alice", &invite_text(alice, "alice", "bob", "dlg-1"));
    let fwd = h.requests().remove(0).msg;
    let rr: Vec<String> = fwd
        .header_values(HeaderName::RecordRoute)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let route = rr.join(", ");
    let bye = format!(
        "BYE sip:alice@192.0.2.1 SIP/2.0\nVia: {};branch=z9hG4bKbye1\nMax-Forwards: 70\n\
         From: <sip:bob@{DOMAIN}>;tag=b1\nTo: <sip:alice@{DOMAIN}>;tag=fdlg-1\nCall-ID: dlg-1\n\
         CSeq: 1 BYE\nRoute: {route}\nContent-Length: 0\n\n",
        via_for(bob)
    );
    h.leaf_sends(bob, &bye);
    let out = h.requests();
    assert_eq!(out.len(), 1, "the BYE went on");
    assert_eq!(out[0].dest, Dest::Flow(alice));
    assert!(h.responses_to(bob).iter().all(|m| m.status() != Some(407)));
}

// ---- replays, foreign nonces, downgrades ------------------------------------
//
// Each test sends what an attacker would and proves it refused, while a
// client with the same password goes on.

const MALLORY: u8 = 66;
const ALICE_CONTACT: &str = "<sip:alice@192.0.2.1>";
const MALLORY_CONTACT: &str = "<sip:alice@203.0.113.66>";

fn registrar_uri() -> String {
    format!("sip:{DOMAIN}")
}

/// The 401 to a REGISTER of alice's without credentials, sent to node `n`.
fn register_challenge(h: &mut Harness, n: u8, call: &str) -> Message {
    let alice = udp_leaf(ALICE);
    let text = register_text(alice, "alice", ALICE_CONTACT, call, 1, "", 600);
    h.recv(n, &text, Dest::Flow(alice));
    let r = h.final_to(alice);
    assert_eq!(r.status(), Some(401));
    r
}

/// A 401 or 407 whose every challenge says `stale=true`.
fn is_stale(m: &Message) -> bool {
    let mut challenges = m
        .header_lines(HeaderName::WwwAuthenticate)
        .chain(m.header_lines(HeaderName::ProxyAuthenticate))
        .peekable();
    matches!(m.status(), Some(401 | 407))
        && challenges.peek().is_some()
        && challenges.all(|v| String::from_utf8_lossy(v).contains("stale=true"))
}

fn contacts(m: &Message) -> String {
    m.header_values(HeaderName::Contact)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An out-of-dialog request from alice to `to` carrying `auth`.
fn with_auth(method: &str, to: &str, auth: &str) -> String {
    out_of_dialog(method, "alice", to).replacen(
        "Content-Length:",
        &format!("{auth}Content-Length:"),
        1,
    )
}

/// Mallory copies the Authorization of alice's REGISTER off the wire and
/// sends it with her own Contact under a new Call-ID (neither is covered by
/// the digest), and later the very bytes alice sent: both refused with a
/// stale challenge, counted as replays. alice goes on with the next nc.
#[test]
fn a_replayed_register_is_refused_with_a_stale_challenge() {
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    let auth = authorization(&ch, "alice", "secret", "REGISTER", &registrar_uri());
    let sent = register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &auth, 600);
    h.leaf_sends(alice, &sent);
    assert_eq!(h.final_to(alice).status(), Some(200));

    let mallory = udp_leaf(MALLORY);
    h.leaf_sends(
        mallory,
        &register_text(mallory, "alice", MALLORY_CONTACT, "evil", 1, &auth, 600),
    );
    let r = h.final_to(mallory);
    assert!(is_stale(&r), "{r:?}");
    assert_eq!(h.metrics[0].count("AuthFailure(Replay)"), 1);
    assert_eq!(h.metrics[0].count("AuthFailure(BadCredentials)"), 0);

    // The same bytes once the transaction that absorbed retransmissions
    // (Timer J, and the linger table after it) is gone.
    h.advance(Duration::from_secs(60));
    h.leaf_sends(alice, &sent);
    let r = h.final_to(alice);
    assert!(is_stale(&r), "{}", String::from_utf8_lossy(r.raw()));
    assert_eq!(h.metrics[0].count("AuthFailure(Replay)"), 2);

    let auth2 = authorization_with(
        &ch,
        "alice",
        "secret",
        "REGISTER",
        &registrar_uri(),
        Algorithm::Md5,
        2,
    );
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 3, &auth2, 600),
    );
    let ok = h.final_to(alice);
    assert_eq!(ok.status(), Some(200));
    let bound = contacts(&ok);
    assert!(!bound.contains("203.0.113.66"), "{bound}");
}

/// Parallel MESSAGEs sent with one nonce arrive out of order: each nc
/// passes once; the same nc again is a replay, not forwarded.
#[test]
fn out_of_order_nc_values_within_the_window_are_each_accepted_once() {
    let mut h = Harness::new();
    assert_eq!(
        h.register(udp_leaf(BOB), "bob", "<sip:bob@192.0.2.2>")
            .status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &out_of_dialog("MESSAGE", "alice", "bob"));
    let ch = h.final_to(alice);
    assert_eq!(ch.status(), Some(407));
    let uri = format!("sip:bob@{DOMAIN}");
    let auth = |nc| authorization_with(&ch, "alice", "secret", "MESSAGE", &uri, Algorithm::Md5, nc);
    for nc in [3, 1, 2] {
        h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(nc)));
        assert_eq!(h.requests().len(), 1, "nc {nc} forwarded to bob");
        h.take();
    }
    for nc in [1, 2, 3] {
        h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(nc)));
        assert!(h.requests().is_empty(), "nc {nc} again not forwarded");
        assert!(is_stale(&h.final_to(alice)), "nc {nc} again");
    }
    assert_eq!(h.metrics[0].count("AuthFailure(Replay)"), 3);
    h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(4)));
    assert_eq!(h.requests().len(), 1);
}

#[test]
fn an_nc_below_the_window_is_refused() {
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    h.leaf_sends(alice, &out_of_dialog("MESSAGE", "alice", "bob"));
    let ch = h.final_to(alice);
    let uri = format!("sip:bob@{DOMAIN}");
    let auth = |nc| authorization_with(&ch, "alice", "secret", "MESSAGE", &uri, Algorithm::Md5, nc);
    // bob has no binding: kept for him (202) once authenticated, 407 when
    // not.
    h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(100)));
    assert_eq!(h.final_to(alice).status(), Some(202));
    h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(35)));
    assert!(is_stale(&h.final_to(alice)), "below the window");
    assert_eq!(h.metrics[0].count("AuthFailure(Replay)"), 1);
    h.leaf_sends(alice, &with_auth("MESSAGE", "bob", &auth(36)));
    assert_eq!(h.final_to(alice).status(), Some(202), "the window's bottom");
}

/// alice's phone fails over to node 2 and answers node 1's challenge
/// there: a stale challenge, no bad credentials (whatever the password:
/// the response is not checked, so a guesser learns nothing), then node
/// 2's own nonce registers her.
#[test]
fn a_nonce_of_another_node_gets_a_stale_challenge_and_no_failure() {
    let mut h = Harness::farm();
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    for password in ["secret", "guess"] {
        let auth = authorization(&ch, "alice", password, "REGISTER", &registrar_uri());
        let text = register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &auth, 600);
        h.recv(
            2,
            &text.replace("branch=z9hG4bKr", &format!("branch=z9hG4bK{password}")),
            Dest::Flow(alice),
        );
        let r = h.final_to(alice);
        assert!(is_stale(&r), "{password}: {r:?}");
    }
    assert_eq!(h.metrics[1].count("AuthFailure(ForeignNonce)"), 2);
    assert_eq!(h.metrics[1].count("AuthFailure(BadCredentials)"), 0);
    let ch2 = register_challenge(&mut h, 2, "c2");
    let auth = authorization(&ch2, "alice", "secret", "REGISTER", &registrar_uri());
    let text = register_text(alice, "alice", ALICE_CONTACT, "c2", 2, &auth, 600);
    h.recv(2, &text, Dest::Flow(alice));
    assert_eq!(h.final_to(alice).status(), Some(200));
}

/// A node restarts (a new issuer): alice's REGISTER captured before is
/// foreign to it, not valid; alice's next refresh with her old nonce gets
/// a stale challenge, and she registers with the new one.
#[test]
fn a_nonce_from_before_a_restart_is_foreign() {
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    let auth = authorization(&ch, "alice", "secret", "REGISTER", &registrar_uri());
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &auth, 600),
    );
    assert_eq!(h.final_to(alice).status(), Some(200));

    h.set_digest(
        1,
        DigestAuth::new(SECRET, NONCE_LIFETIME, issuer(1) ^ 0xface)
            .with_algorithms(&[Algorithm::Md5]),
    );
    let mallory = udp_leaf(MALLORY);
    h.leaf_sends(
        mallory,
        &register_text(mallory, "alice", MALLORY_CONTACT, "evil", 1, &auth, 600),
    );
    assert!(is_stale(&h.final_to(mallory)));
    assert_eq!(h.metrics[0].count("AuthFailure(ForeignNonce)"), 1);

    let auth2 = authorization_with(
        &ch,
        "alice",
        "secret",
        "REGISTER",
        &registrar_uri(),
        Algorithm::Md5,
        2,
    );
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 3, &auth2, 600),
    );
    let fresh = h.final_to(alice);
    assert!(is_stale(&fresh));
    let auth3 = authorization(&fresh, "alice", "secret", "REGISTER", &registrar_uri());
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 4, &auth3, 600),
    );
    let ok = h.final_to(alice);
    assert_eq!(ok.status(), Some(200));
    assert!(!contacts(&ok).contains("203.0.113.66"));
}

/// A man in the middle rewrites the SHA-256 challenge to MD5: the answer,
/// with the right password, is refused by a node that offers only
/// SHA-256; the SHA-256 answer registers.
#[test]
fn an_md5_answer_is_refused_when_only_sha256_is_offered() {
    let mut h = Harness::new();
    h.set_digest(
        1,
        DigestAuth::new(SECRET, NONCE_LIFETIME, issuer(1)).with_algorithms(&[Algorithm::Sha256]),
    );
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    let offered = header(&ch, HeaderName::WwwAuthenticate).unwrap();
    assert!(offered.contains("algorithm=SHA-256"), "{offered}");
    assert_eq!(ch.header_lines(HeaderName::WwwAuthenticate).count(), 1);
    let md5 = authorization_with(
        &ch,
        "alice",
        "secret",
        "REGISTER",
        &registrar_uri(),
        Algorithm::Md5,
        1,
    );
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &md5, 600),
    );
    let r = h.final_to(alice);
    assert_eq!(r.status(), Some(401));
    assert!(!is_stale(&r));
    assert_eq!(h.metrics[0].count("AuthFailure(BadCredentials)"), 1);
    let sha = authorization_with(
        &ch,
        "alice",
        "secret",
        "REGISTER",
        &registrar_uri(),
        Algorithm::Sha256,
        1,
    );
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 3, &sha, 600),
    );
    assert_eq!(h.final_to(alice).status(), Some(200));
}

/// Credentials without qop (RFC 2069) carry no nonce count, so nothing
/// would stop their replay: refused with the right password.
#[test]
fn credentials_without_qop_are_refused() {
    let mut h = Harness::new();
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    let value = header(&ch, HeaderName::WwwAuthenticate).unwrap();
    let nonce = value
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let ha1 = Ha1::compute(b"alice", DOMAIN.as_bytes(), b"secret");
    let uri = registrar_uri();
    let resp = response_hex(
        &ha1,
        &ResponseParams {
            algorithm: Algorithm::Md5,
            nonce: nonce.as_bytes(),
            cnonce: b"",
            nc: b"",
            qop: None,
            method: b"REGISTER",
            uri: uri.as_bytes(),
        },
    );
    let rfc2069 = format!(
        "Authorization: Digest username=\"alice\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5\n"
    );
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &rfc2069, 600),
    );
    let r = h.final_to(alice);
    assert_eq!(r.status(), Some(401));
    assert_eq!(h.metrics[0].count("AuthFailure(BadCredentials)"), 1);
    let auth = authorization(&ch, "alice", "secret", "REGISTER", &uri);
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 3, &auth, 600),
    );
    assert_eq!(h.final_to(alice).status(), Some(200));
}

/// Mallory asks for more challenges than the node tracks: alice's older
/// nonce falls out and is answered stale, never accepted; alice answers
/// the new challenge.
#[test]
fn the_tracking_cap_evicts_the_oldest_nonces_as_stale() {
    let mut h = Harness::new();
    h.set_digest(
        1,
        DigestAuth::new(SECRET, NONCE_LIFETIME, issuer(1))
            .with_algorithms(&[Algorithm::Md5])
            .with_tracking_cap(1024),
    );
    let alice = udp_leaf(ALICE);
    let ch = register_challenge(&mut h, 1, "c1");
    let mallory = udp_leaf(MALLORY);
    for i in 0..1100 {
        let call = format!("flood-{i}");
        h.leaf_sends(
            mallory,
            &register_text(mallory, "mallory", MALLORY_CONTACT, &call, 1, "", 600),
        );
        h.take();
    }
    let auth = authorization(&ch, "alice", "secret", "REGISTER", &registrar_uri());
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 2, &auth, 600),
    );
    let r = h.final_to(alice);
    assert!(is_stale(&r), "{r:?}");
    assert_eq!(h.metrics[0].count("AuthFailure(StaleNonce)"), 1);
    let auth = authorization(&r, "alice", "secret", "REGISTER", &registrar_uri());
    h.leaf_sends(
        alice,
        &register_text(alice, "alice", ALICE_CONTACT, "c1", 3, &auth, 600),
    );
    assert_eq!(h.final_to(alice).status(), Some(200));
}

/// Mallory copies the Proxy-Authorization of alice's INVITE into her own
/// INVITE from alice (a call billed to alice): 407 with stale=true, not
/// forwarded.
#[test]
fn a_replayed_invite_credential_is_refused() {
    let mut h = Harness::new();
    assert_eq!(
        h.register(udp_leaf(BOB), "bob", "<sip:bob@192.0.2.2>")
            .status(),
        Some(200)
    );
    h.take();
    let alice = udp_leaf(ALICE);
    let invite = invite_text(alice, "alice", "bob", "call-1");
    h.leaf_sends(alice, &invite);
    let ch = h
        .responses_to(alice)
        .into_iter()
        .find(|m| m.status() == Some(407))
        .unwrap();
    let auth = authorization(
        &ch,
        "alice",
        "secret",
        "INVITE",
        &format!("sip:bob@{DOMAIN}"),
    );
    let again = invite
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=z9hG4bK", "branch=z9hG4bK2")
        .replacen("Content-Length:", &format!("{auth}Content-Length:"), 1);
    h.leaf_sends(alice, &again);
    assert_eq!(h.requests().len(), 1, "alice's call goes to bob");
    h.take();

    let mallory = udp_leaf(MALLORY);
    let evil = invite_text(mallory, "alice", "bob", "call-evil").replacen(
        "Content-Length:",
        &format!("{auth}Content-Length:"),
        1,
    );
    h.leaf_sends(mallory, &evil);
    assert!(h.requests().is_empty(), "not forwarded");
    let r = h
        .responses_to(mallory)
        .into_iter()
        .find(|m| m.status().is_some_and(|s| s >= 200))
        .unwrap();
    assert!(is_stale(&r), "{r:?}");
    assert_eq!(h.metrics[0].count("AuthFailure(Replay)"), 1);
}

/// The digest `uri` may name this node instead of the domain (sipp does
/// so), with the Request-URI's user part; a URI naming another host or
/// another user does not stand in for the Request-URI.
#[test]
fn a_digest_uri_naming_this_node_counts_and_one_naming_another_does_not() {
    let mut h = Harness::new();
    let flow = udp_leaf(ALICE);
    for (i, (uri, status)) in [
        (format!("sip:{DOMAIN}"), 200),
        ("sip:10.0.0.1:5060".to_string(), 200),
        ("sip:evil.example.com".to_string(), 401),
        ("sip:bob@10.0.0.1:5060".to_string(), 401),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("u{i}");
        let contact = "<sip:alice@192.0.2.1>";
        h.leaf_sends(
            flow,
            &register_text(flow, "alice", contact, &call_id, 1, "", 600),
        );
        let challenge = h.final_to(flow);
        let auth = authorization(&challenge, "alice", "secret", "REGISTER", &uri);
        h.leaf_sends(
            flow,
            &register_text(flow, "alice", contact, &call_id, 2, &auth, 600),
        );
        assert_eq!(h.final_to(flow).status(), Some(status), "digest uri {uri}");
    }
}
