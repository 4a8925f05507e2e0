//! Two farms peering over TLS: `a.test` and `b.test`, each a `ringmesh
//! dev` farm with a CA of its own, told about each other with `ringmesh
//! ctl peer add` and each other's CA (`--peer-ca`), and a real DNS server
//! (Debian's dnsmasq) holding their records (b.test: a `SIPS+D2T` NAPTR
//! naming its `_sips._tcp` SRV records; a.test: SRV records alone), the
//! first target of b.test a port nothing listens on, the second a TLS
//! server whose certificate does not name b.test.
//!
//! alice@a.test calls bob@b.test (BYE from the callee) and bob calls
//! alice back (BYE from the caller), a MESSAGE crosses, each over TLS
//! between the farms, the first two servers of b.test skipped at once. What an
//! attacker tries is refused while those calls are served: a domain no
//! peer serves, a TLS client with no certificate or one of another CA
//! claiming to be a.test, and a.test once b.test stops peering with it.
//!
//! Then Kamailio serving `k.test` (`tests/peer.cfg`) peers with a farm the
//! same way: kate@k.test and alice@a.test call each other over TLS, each
//! BYE from the other side than the caller's.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Dnsmasq, Farm, ctl_with, free_port, status_of, wait_until};
use ringmesh_enrollment::ca::Ca;
use ringmesh_test_support::phone::{UdpPhone, header, response_to};
use ringmesh_test_support::tls::{TlsPhone, client_config, client_config_as};

/// A data directory holding a CA of its own (DIR/ca), as `ringmesh dev`
/// would make it on a first start: the other farm is given its
/// certificate before either starts.
fn data_with_ca(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(name).unwrap();
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca.key"), ca.key_pem()).unwrap();
    std::fs::write(ca_dir.join("ca.crt"), ca.cert_pem()).unwrap();
    let cert = ca_dir.join("ca.crt");
    (dir, cert)
}

fn start(dir: tempfile::TempDir, domain: &str, peer_ca: &Path, dns: &str) -> Farm {
    Farm::start_in(
        Path::new(env!("CARGO_BIN_EXE_ringmesh")),
        dir,
        &[
            "--nodes",
            "2",
            "--domain",
            domain,
            "--peer-ca",
            &peer_ca.display().to_string(),
            "--dns-server",
            dns,
        ],
        &[],
    )
}

/// `phone` (of its farm) sends `method` to `ruri` through `node` as
/// `user`, answering the challenge: the final status and response.
fn send(phone: &UdpPhone, node: SocketAddr, method: &str, ruri: &str, user: &str) -> (u16, String) {
    let text = phone.request_to(method, ruri, user, "");
    phone
        .authenticated(node, &text, user, "secret")
        .unwrap_or((0, String::new()))
}

/// The callee answers the next INVITE 200 (its Contact, the Record-Route
/// copied); the INVITE, its source and the 200.
fn answer_invite(callee: &UdpPhone) -> Option<(String, SocketAddr, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (req, from) = callee.next_request(deadline.checked_duration_since(Instant::now())?)?;
        if !req.starts_with("INVITE ") {
            continue;
        }
        let ok = response_to(&req, 200, &format!("Contact: <sip:ue@{}>\r\n", callee.me));
        callee.sock.send_to(ok.as_bytes(), from).unwrap();
        return Some((req, from, ok));
    }
}

/// The callee's BYE of the dialog of `invite` (as it got it) and `ok` (as
/// it sent it): to the caller's Contact along the Record-Route, in order.
fn callee_bye(callee: &UdpPhone, invite: &str, ok: &str) -> String {
    let route: Vec<&str> = invite
        .lines()
        .filter_map(|l| l.strip_prefix("Record-Route: "))
        .collect();
    let contact = header(invite, "Contact").unwrap();
    format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: 1 BYE\r\n\
         Route: {route}\r\nContent-Length: 0\r\n\r\n",
        target = contact.trim_matches(['<', '>']),
        me = callee.me,
        n = common::rand_u64(),
        from = header(ok, "To").unwrap(),
        to = header(invite, "From").unwrap(),
        call = header(invite, "Call-ID").unwrap(),
        route = route.join(", "),
    )
}

/// `phone` answers the next request 200 on another thread; the request.
fn answers_next(phone: UdpPhone) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        phone
            .answer_next(200, Duration::from_secs(10))
            .map(|(r, _)| r)
    })
}

#[test]
#[ignore = "slow: needs dnsmasq and two ringmesh dev farms"]
fn two_farms_call_and_message_each_other_over_tls() {
    let (a_dir, a_ca) = data_with_ca("a.test CA");
    let (b_dir, b_ca) = data_with_ca("b.test CA");
    let dns_port = free_port();
    let dns_addr = format!("127.0.0.1:{dns_port}");
    let a = start(a_dir, "a.test", &b_ca, &dns_addr);
    let b = start(b_dir, "b.test", &a_ca, &dns_addr);
    // b.test's first server (priority 10) has no listener; its second
    // (15) is an impostor: a TLS server whose certificate (a.test's, of a
    // CA a.test trusts) does not name b.test (RFC 5922).
    let dead = free_port();
    let dns_dir = tempfile::tempdir().unwrap();
    let _dns = Dnsmasq::start(
        dns_dir.path(),
        dns_port,
        &[
            "--local=/a.test/".into(),
            "--local=/b.test/".into(),
            "--local=/c.test/".into(),
            // b.test: NAPTR, then SRV (a.test: SRV alone).
            "--naptr-record=b.test,10,10,s,SIPS+D2T,,_sips._tcp.b.test".into(),
            format!("--srv-host=_sips._tcp.b.test,dead.b.test,{dead},10,0"),
            format!(
                "--srv-host=_sips._tcp.b.test,impostor.b.test,{},15,0",
                a.nodes[1].tls.port()
            ),
            format!(
                "--srv-host=_sips._tcp.b.test,b.test,{},20,0",
                b.nodes[0].tls.port()
            ),
            format!(
                "--srv-host=_sips._tcp.a.test,a.test,{},10,0",
                a.nodes[1].tls.port()
            ),
            "--host-record=dead.b.test,127.0.0.1".into(),
            "--host-record=impostor.b.test,127.0.0.1".into(),
            "--host-record=b.test,127.0.0.1".into(),
            "--host-record=a.test,127.0.0.1".into(),
            "--host-record=c.test,127.0.0.1".into(),
        ],
    );
    let alice = UdpPhone::on("127.0.0.1").of("a.test");
    let bob = UdpPhone::on("127.0.0.1").of("b.test");
    let (a_node, b_node) = (a.nodes[0].sip, b.nodes[1].sip);

    // Not peering yet: b.test is a domain a.test does not serve.
    assert_eq!(
        send(&alice, a_node, "MESSAGE", "sip:nobody@b.test", "alice").0,
        403
    );
    for (farm, name, domain) in [(&a, "b", "b.test"), (&b, "a", "a.test")] {
        let (code, out, err) = ctl_with(
            farm,
            &[
                "peer",
                "add",
                name,
                "--tls-name",
                domain,
                "--domain",
                domain,
                "--description",
                "the other farm of the test",
                "--rate",
                "1000",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, _) = ctl_with(&a, &["peer", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("b.test") && out.contains("tls:b.test"),
        "{out}"
    );
    let (code, out, _) = ctl_with(&a, &["--json", "peer", "list"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list["elements"][0]["domains"][0], "b.test", "{out}");
    assert_eq!(list["elements"][0]["rate_limit"], 1000, "{out}");
    // In force both ways: b.test's answer for a user it does not have
    // (202: a MESSAGE from a trusted element is taken, and dropped) comes
    // back, not a challenge of a stranger (407).
    wait_until("each farm knows the other", Duration::from_secs(30), || {
        send(&alice, a_node, "MESSAGE", "sip:nobody@b.test", "alice").0 == 202
    });

    // alice calls bob: answered, the BYE from bob.
    assert_eq!(bob.register(b_node, "bob", "secret"), Some(200));
    let callee = std::thread::spawn({
        let bob = bob.try_clone();
        move || answer_invite(&bob)
    });
    let located = |event: &str| {
        common::metric_labelled(
            a.nodes[0].metrics,
            "ringmesh_sip_located_calls_total",
            &[("peer", "b"), ("event", event)],
        )
        .unwrap_or(0.0)
    };
    let failed_over = located("failed_over");
    let handshakes_failed = || {
        common::metric_labelled(
            a.nodes[0].metrics,
            "ringmesh_sip_handshake_failures_total",
            &[("transport", "tls"), ("stage", "tls")],
        )
        .unwrap_or(0.0)
    };
    let refused_handshakes = handshakes_failed();
    let started = Instant::now();
    let (status, ok) = send(&alice, a_node, "INVITE", "sip:bob@b.test", "alice");
    let setup = started.elapsed();
    assert_eq!(status, 200, "{ok}");
    eprintln!("alice's call was answered {setup:?} after the (authenticated) INVITE");
    assert!(
        setup < Duration::from_secs(2),
        "the dead server and the impostor are left at once: {setup:?}"
    );
    let (invite, from, bob_ok) = callee.join().unwrap().expect("bob's phone rang");
    assert_eq!(
        located("failed_over"),
        failed_over + 2.0,
        "the dead server and the impostor were tried first"
    );
    assert_eq!(
        handshakes_failed(),
        refused_handshakes + 1.0,
        "the impostor's certificate does not name b.test"
    );
    assert!(invite.starts_with("INVITE sip:bob@"), "{invite}");
    assert!(
        invite.contains("\r\nVia: SIP/2.0/TLS "),
        "between the farms: {invite}"
    );
    assert!(
        invite.contains(&format!(":{};transport=tls;lr>", a.nodes[0].tls.port())),
        "a.test's edge record-routes its TLS port toward b.test: {invite}"
    );
    assert!(
        invite.contains("P-Asserted-Identity: <sip:alice@a.test>"),
        "a.test asserts alice, b.test keeps it: {invite}"
    );
    // alice's ACK, then bob hangs up.
    let sent_invite = ok_request(&alice, &ok);
    let ack = alice.in_dialog("ACK", 2, &sent_invite, &ok, "");
    alice.sock.send_to(ack.as_bytes(), a_node).unwrap();
    let bye = callee_bye(&bob, &invite, &bob_ok);
    let hangup = answers_next(alice.try_clone());
    let answer = bob.ask(from, &bye, Duration::from_secs(5));
    let got = hangup.join().unwrap();
    assert!(
        got.as_deref().is_some_and(|r| r.starts_with("BYE ")),
        "alice got bob's BYE: {got:?}"
    );
    assert_eq!(
        answer.as_deref().and_then(|r| status_of(r.as_bytes())),
        Some(200)
    );

    // A MESSAGE crosses.
    let at_bob = answers_next(bob.try_clone());
    assert_eq!(
        send(&alice, a_node, "MESSAGE", "sip:bob@b.test", "alice").0,
        200
    );
    let message = at_bob.join().unwrap().expect("bob got the MESSAGE");
    assert!(message.starts_with("MESSAGE sip:bob@"), "{message}");

    // bob calls alice back; bob hangs up as the caller.
    assert_eq!(alice.register(a.nodes[1].sip, "alice", "secret"), Some(200));
    let callee = std::thread::spawn({
        let alice = alice.try_clone();
        move || answer_invite(&alice)
    });
    let (status, ok) = send(&bob, b_node, "INVITE", "sip:alice@a.test", "bob");
    assert_eq!(status, 200, "{ok}");
    callee.join().unwrap().expect("alice's phone rang");
    let sent_invite = ok_request(&bob, &ok);
    let ack = bob.in_dialog("ACK", 2, &sent_invite, &ok, "");
    bob.sock.send_to(ack.as_bytes(), b_node).unwrap();
    let hangup = answers_next(alice.try_clone());
    let bye = bob.in_dialog("BYE", 3, &sent_invite, &ok, "");
    let answer = bob.ask(b_node, &bye, Duration::from_secs(5));
    assert!(
        hangup
            .join()
            .unwrap()
            .is_some_and(|r| r.starts_with("BYE "))
    );
    assert_eq!(
        answer.as_deref().and_then(|r| status_of(r.as_bytes())),
        Some(200)
    );

    // ---- the attacker ----------------------------------------------------
    // A domain no peer serves: refused before DNS is asked.
    assert_eq!(
        send(&alice, a_node, "INVITE", "sip:bob@c.test", "alice").0,
        403
    );
    // A TLS client without a certificate claiming to be a.test's: a phone,
    // challenged, and bob's phone hears nothing.
    let b_tls = b.nodes[1].tls;
    let mut stranger = TlsPhone::connect(b_tls, client_config(Path::new(&b.ca)), "b.test")
        .expect("TLS without a client certificate is allowed (phones)");
    let forged = format!(
        "INVITE sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKforged;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@a.test>;tag=forged\r\nTo: <sip:bob@b.test>\r\n\
         Call-ID: forged-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me};transport=tls>\r\n\
         P-Asserted-Identity: <sip:alice@a.test>\r\nContent-Length: 0\r\n\r\n",
        me = stranger.local_addr()
    );
    stranger.send(forged.as_bytes());
    let reply = final_of(&mut stranger);
    assert_eq!(reply, Some(407), "a stranger is challenged");
    // A certificate of another CA naming a.test: the handshake fails
    // (with TLS 1.3 the client learns it at its first read).
    let failures = || {
        common::metric_labelled(
            b.nodes[1].metrics,
            "ringmesh_sip_handshake_failures_total",
            &[("transport", "tls"), ("stage", "tls")],
        )
        .unwrap_or(0.0)
    };
    let before = failures();
    let rogue = Ca::generate("rogue CA").unwrap();
    let (cert, key) = rogue.issue_sip("a.test", &["a.test"], &[], 1).unwrap();
    let config = client_config_as(Path::new(&b.ca), &cert, &key);
    if let Ok(mut p) = TlsPhone::connect(b_tls, config, "b.test") {
        assert_eq!(p.recv(Duration::from_secs(3)), None, "the server closes");
    }
    wait_until(
        "b.test counts the failed handshake",
        Duration::from_secs(5),
        || failures() > before,
    );
    let heard = bob.next_request(Duration::from_millis(500));
    assert!(
        heard.is_none(),
        "bob's phone never rang for the attacker: {heard:?}"
    );
    // b.test stops peering with a.test: a.test's requests are a stranger's.
    assert_eq!(ctl_with(&b, &["peer", "remove", "a"]).0, 0);
    wait_until(
        "b.test no longer trusts a.test",
        Duration::from_secs(30),
        || send(&alice, a_node, "MESSAGE", "sip:bob@b.test", "alice").0 == 407,
    );
}

/// The request a 2xx `ok` answers, rebuilt from it for `in_dialog` (its
/// From, Call-ID and CSeq are the request's).
fn ok_request(phone: &UdpPhone, ok: &str) -> String {
    format!(
        "INVITE x SIP/2.0\r\nFrom: {}\r\nCall-ID: {}\r\nVia: SIP/2.0/UDP {}\r\n\r\n",
        header(ok, "From").unwrap(),
        header(ok, "Call-ID").unwrap(),
        phone.me
    )
}

/// The first final status `phone` gets within 5 s.
fn final_of(phone: &mut TlsPhone) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let m = phone.recv(left)?;
        if let Some(s) = status_of(&m).filter(|s| *s >= 200) {
            return Some(s);
        }
    }
    None
}

/// kate's phone registers at Kamailio (k.test, no authentication in this
/// lab config) and the farm a.test peers with it: calls both ways over
/// TLS, the callee hanging up each time.
#[test]
#[ignore = "slow: needs kamailio with its TLS module, dnsmasq and a ringmesh dev farm"]
fn kamailio_serving_its_domain_peers_with_a_farm_both_ways() {
    let (a_dir, a_ca) = data_with_ca("a.test CA");
    let work = tempfile::tempdir().unwrap();
    // k.test's certificate, of a CA of its own.
    let k_ca = Ca::generate("k.test CA").unwrap();
    let (k_cert, k_key) = k_ca.issue_sip("k.test", &["k.test"], &[], 1).unwrap();
    let file = |name: &str, text: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let k_ca_file = file("k-ca.crt", k_ca.cert_pem());
    let (k_crt, k_key) = (file("k.crt", &k_cert), file("k.key", &k_key));
    let a_ca_text = std::fs::read_to_string(&a_ca).unwrap();
    let a_ca_file = file("a-ca.crt", &a_ca_text);
    let dns_port = free_port();
    let a = start(
        a_dir,
        "a.test",
        Path::new(&k_ca_file),
        &format!("127.0.0.1:{dns_port}"),
    );
    let (k_udp, k_tls) = (common::free_sip_port(), free_port());
    let tls_cfg = file(
        "tls.cfg",
        &format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = no\n\
             private_key = {k_key}\ncertificate = {k_crt}\nca_list = {a_ca_file}\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             private_key = {k_key}\ncertificate = {k_crt}\nca_list = {a_ca_file}\nserver_name = a.test\n"
        ),
    );
    let kamailio = common::Kamailio::start(
        "peer.cfg",
        &[
            "-l".into(),
            format!("udp:127.0.0.1:{k_udp}"),
            "-l".into(),
            format!("tls:127.0.0.1:{k_tls}"),
            "-A".into(),
            "DOMAIN=\"k.test\"".into(),
            "-A".into(),
            "PEER_DOMAIN=\"a.test\"".into(),
            "-A".into(),
            format!(
                "PEER=\"sip:127.0.0.1:{};transport=tls\"",
                a.nodes[0].tls.port()
            ),
            "-A".into(),
            format!("TLSCFG=\"{tls_cfg}\""),
        ],
        &[k_udp],
        work.path().join("kamailio.log"),
    );
    let _dns = Dnsmasq::start(
        work.path(),
        dns_port,
        &[
            "--local=/k.test/".into(),
            format!("--srv-host=_sips._tcp.k.test,k.test,{k_tls},10,0"),
            "--host-record=k.test,127.0.0.1".into(),
        ],
    );
    let (code, out, err) = ctl_with(
        &a,
        &[
            "peer",
            "add",
            "k",
            "--tls-name",
            "k.test",
            "--domain",
            "k.test",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let kate = UdpPhone::on("127.0.0.1").of("k.test");
    let k_sip: SocketAddr = format!("127.0.0.1:{k_udp}").parse().unwrap();
    assert_eq!(
        kate.register(k_sip, "kate", "-"),
        Some(200),
        "{}",
        kamailio.log()
    );
    let alice = UdpPhone::on("127.0.0.1").of("a.test");
    let a_node = a.nodes[1].sip;
    assert_eq!(alice.register(a_node, "alice", "secret"), Some(200));

    // alice calls kate through a.test's peering: Kamailio takes it from
    // the farm's TLS connection and rings kate; kate hangs up.
    wait_until("a.test knows k.test", Duration::from_secs(30), || {
        let callee = std::thread::spawn({
            let kate = kate.try_clone();
            move || answer_invite(&kate)
        });
        let (status, ok) = send(&alice, a_node, "INVITE", "sip:kate@k.test", "alice");
        let rang = callee.join().unwrap();
        if status != 200 {
            return false;
        }
        let (invite, from, kate_ok) = rang.expect("kate's phone rang");
        let sent_invite = ok_request(&alice, &ok);
        let ack = alice.in_dialog("ACK", 2, &sent_invite, &ok, "");
        alice.sock.send_to(ack.as_bytes(), a_node).unwrap();
        let hangup = answers_next(alice.try_clone());
        let bye = callee_bye(&kate, &invite, &kate_ok);
        let answer = kate.ask(from, &bye, Duration::from_secs(5));
        assert!(
            hangup
                .join()
                .unwrap()
                .is_some_and(|r| r.starts_with("BYE ")),
            "alice got kate's BYE: {}",
            kamailio.log()
        );
        assert_eq!(
            answer.as_deref().and_then(|r| status_of(r.as_bytes())),
            Some(200)
        );
        true
    });

    let log = kamailio.log();
    assert!(
        log.lines()
            .any(|l| l.contains("peer: INVITE for sip:kate@") && l.ends_with("(tls)")),
        "the farm's INVITE reached Kamailio over TLS: {log}"
    );

    // kate calls alice: Kamailio sends it over TLS with its certificate,
    // a.test takes it as its peer's (no challenge) and rings alice; alice
    // hangs up.
    let callee = std::thread::spawn({
        let alice = alice.try_clone();
        move || answer_invite(&alice)
    });
    let invite = kate.request_to("INVITE", "sip:alice@a.test", "kate", "");
    let ok = kate
        .ask(k_sip, &invite, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("kate's call was answered: {}", kamailio.log()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    let (at_alice, from, alice_ok) = callee.join().unwrap().expect("alice's phone rang");
    assert!(at_alice.contains("From: <sip:kate@k.test>"), "{at_alice}");
    let ack = kate.in_dialog("ACK", 1, &invite, &ok, "");
    kate.sock.send_to(ack.as_bytes(), k_sip).unwrap();
    let hangup = answers_next(kate.try_clone());
    let bye = callee_bye(&alice, &at_alice, &alice_ok);
    let answer = alice.ask(from, &bye, Duration::from_secs(5));
    assert!(
        hangup
            .join()
            .unwrap()
            .is_some_and(|r| r.starts_with("BYE ")),
        "kate got alice's BYE: {}",
        kamailio.log()
    );
    assert_eq!(
        answer.as_deref().and_then(|r| status_of(r.as_bytes())),
        Some(200)
    );
}
