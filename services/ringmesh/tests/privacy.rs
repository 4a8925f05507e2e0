//! Privacy and topology hiding on a real farm of three (`ringmesh dev`
//! with `RINGMESH_TOPOLOGY_HIDING=true`): a caller asking `Privacy: id`
//! reaches the callee anonymous and without its asserted identity, and
//! no message either phone receives, over a whole call (INVITE, 180, 200,
//! ACK, BYE), names a supernode other than the one it talks to.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringmesh_test_support::phone::{UdpPhone, header, response_to, with_credentials};

const PASSWORD: &str = "secret";

/// Every message `phone` receives within `wait`.
fn everything(phone: &UdpPhone, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match phone.recv(left) {
            Some((m, _)) => got.push(m),
            None => break,
        }
    }
    got
}

/// The final response to `req` at `phone`, everything received kept.
fn final_to(phone: &UdpPhone, req: &str, seen: &mut Vec<String>) -> String {
    let cseq = header(req, "CSeq").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a final response in time");
        let (m, _) = phone.recv(left).expect("a final response");
        seen.push(m.clone());
        let fin = m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1");
        if fin && header(&m, "CSeq") == Some(cseq.clone()) {
            return m;
        }
    }
}

#[test]
#[ignore = "slow: a farm"]
fn a_phone_sees_only_its_own_supernode_and_an_anonymous_caller_stays_anonymous() {
    let farm = common::start_farm(&["--nodes", "3"], &[("RINGMESH_TOPOLOGY_HIDING", "true")]);
    let (n0, n1) = (farm.nodes[0].sip, farm.nodes[1].sip);
    // Every address of a node a phone might see: SIP, TLS, WS, WSS.
    let addrs = |i: usize| -> Vec<SocketAddr> {
        let n = &farm.nodes[i];
        vec![n.sip, n.tls, n.ws, n.wss]
    };
    let leaks = |msgs: &[String], except: usize| -> Vec<String> {
        (0..farm.nodes.len())
            .filter(|&i| i != except)
            .flat_map(&addrs)
            .flat_map(|a| {
                msgs.iter()
                    .filter(move |m| m.contains(&a.to_string()))
                    .map(move |m| format!("{a} in:\n{m}"))
            })
            .collect()
    };

    let alice = UdpPhone::on("127.0.0.1");
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(alice.register(n0, "alice", PASSWORD), Some(200));
    assert_eq!(bob.register(n1, "bob", PASSWORD), Some(200));

    // Alice calls bob anonymously; bob rings, answers, and hangs up.
    let callee = std::thread::spawn(move || {
        let (invite, from) = bob
            .next_request(Duration::from_secs(10))
            .expect("bob's INVITE");
        let mut seen = vec![invite.clone()];
        bob.answer(&invite, from, 180, "");
        let contact = format!("Contact: <sip:bob@{}>\r\n", bob.me);
        let ok = response_to(&invite, 200, &contact);
        bob.sock.send_to(ok.as_bytes(), from).unwrap();
        // The ACK comes along his route set.
        let (ack, _) = bob.next_request(Duration::from_secs(10)).expect("the ACK");
        seen.push(ack);
        // Bob hangs up along the route set the INVITE gave him.
        let route: Vec<String> = invite
            .lines()
            .filter_map(|l| l.strip_prefix("Record-Route: "))
            .map(str::to_string)
            .collect();
        let ok_to = header(&ok, "To").unwrap();
        let bye = format!(
            "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: {ok_to}\r\nTo: {from_hdr}\r\nCall-ID: {call}\r\n\
             CSeq: 9 BYE\r\nRoute: {route}\r\nContent-Length: 0\r\n\r\n",
            contact = header(&invite, "Contact").unwrap().trim_matches(['<', '>']),
            me = bob.me,
            n = common::rand_u64(),
            from_hdr = header(&invite, "From").unwrap(),
            call = header(&invite, "Call-ID").unwrap(),
            route = route.join(", "),
        );
        let bye_ok = bob
            .ask(from, &bye, Duration::from_secs(10))
            .expect("an answer to the BYE");
        seen.push(bye_ok);
        seen.extend(everything(&bob, Duration::from_millis(500)));
        (seen, invite)
    });
    let invite = alice.request("INVITE", "bob", "alice", "Privacy: id\r\n");
    let mut alice_saw = Vec::new();
    alice.sock.send_to(invite.as_bytes(), n0).unwrap();
    let challenge = final_to(&alice, &invite, &mut alice_saw);
    let again = with_credentials(&invite, &challenge, "alice", PASSWORD, "00000001");
    alice.sock.send_to(again.as_bytes(), n0).unwrap();
    let ok = final_to(&alice, &again, &mut alice_saw);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    // Alice ACKs along her route set (the 200's Record-Route, reversed),
    // asking for privacy again as RFC 3323 has a UA do in each request.
    let ack = alice.in_dialog("ACK", 2, &again, &ok, "Privacy: id\r\n");
    alice.sock.send_to(ack.as_bytes(), n0).unwrap();
    // Bob's BYE reaches her: she answers it.
    let bye = loop {
        let (m, from) = alice
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("alice got no BYE: {alice_saw:?}"));
        alice_saw.push(m.clone());
        if m.starts_with("BYE ") {
            alice.answer(&m, from, 200, "");
            break m;
        }
    };
    let (bob_saw, at_bob) = callee.join().unwrap();
    let ack_at_bob = bob_saw
        .iter()
        .find(|m| m.starts_with("ACK "))
        .expect("bob got the ACK");
    assert!(
        header(ack_at_bob, "From").is_some_and(|f| f.starts_with("\"Anonymous\"")),
        "{ack_at_bob}"
    );
    alice_saw.extend(everything(&alice, Duration::from_millis(500)));

    // The caller stayed anonymous and her identity was withheld.
    let from = header(&at_bob, "From").unwrap();
    assert!(
        from.starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="),
        "{at_bob}"
    );
    assert!(header(&at_bob, "P-Asserted-Identity").is_none(), "{at_bob}");
    // Her own From came back to her.
    assert_eq!(header(&ok, "From"), header(&again, "From"));
    // Neither phone saw another node, the BYE included.
    assert!(!bye.contains("P-Asserted"), "{bye}");
    let found = leaks(&alice_saw, 0);
    assert!(found.is_empty(), "alice saw: {found:?}");
    let found = leaks(&bob_saw, 1);
    assert!(found.is_empty(), "bob saw: {found:?}");
    drop(farm);
}
