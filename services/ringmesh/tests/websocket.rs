//! SIP over WebSocket (RFC 7118) through a `ringmesh dev` farm, with raw
//! WebSocket phones: a browser-like phone on secure WebSocket calls a TLS
//! phone on another supernode and the dialog's BYE comes back down the
//! WebSocket; and what a hostile page or a broken client sends to the
//! WebSocket port is refused while a good client on the same port is
//! served.

mod common;

use std::time::{Duration, Instant};

use common::status_of;
use ringmesh_test_support::sip::ok_for;
use ringmesh_test_support::tls::{TlsPhone, client_config};
use ringmesh_test_support::ws::{Refused, WsPhone};

const DOMAIN: &str = "ringmesh.test";

/// RFC 7118 §7's example client: a contact host that is never resolved.
const WS_HOST: &str = "df7jal23ls0d.invalid";

fn register_ws(phone: &mut WsPhone, user: &str) -> String {
    phone.send(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS {WS_HOST};branch=z9hG4bKws{user}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=ws{user}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: ws-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}x@{WS_HOST};transport=ws>\r\n\
         Expires: 600\r\nContent-Length: 0\r\n\r\n"
    ));
    phone
        .recv(Duration::from_secs(5))
        .expect("an answer to REGISTER")
}

/// The first message on `phone` that starts with `start`.
fn next_on<F: FnMut() -> Option<String>>(mut recv: F, start: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(m) = recv()
            && m.starts_with(start)
        {
            return m;
        }
    }
    panic!("no {start} within 10 s");
}

fn header<'a>(m: &'a str, name: &str) -> Vec<&'a str> {
    m.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

#[test]
#[ignore = "slow: needs a ringmesh dev farm"]
fn a_secure_websocket_phone_calls_a_tls_phone_on_another_supernode() {
    let farm = common::start_farm(&["--nodes", "2", "--auth", "none"], &[]);
    let config = client_config(farm.ca.as_ref());
    let (n0, n1) = (&farm.nodes[0], &farm.nodes[1]);
    let mut alice = WsPhone::connect(
        n0.wss,
        Some((config.clone(), DOMAIN)),
        Some("sip"),
        Some("https://softphone.example"),
    )
    .expect("wss to sn0");
    let ok = register_ws(&mut alice, "alice");
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    let mut bob = TlsPhone::connect(n1.tls, config, DOMAIN).expect("TLS to sn1");
    let bm = bob.local_addr();
    bob.send(
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {bm};branch=z9hG4bKtb\r\nMax-Forwards: 70\r\n\
             From: <sip:bob@{DOMAIN}>;tag=tb\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: tls-bob\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:bob@{bm};transport=tls>\r\nExpires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let ok = String::from_utf8(bob.recv(Duration::from_secs(5)).unwrap()).unwrap();
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");

    // alice calls bob.
    alice.send(&format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS {WS_HOST};branch=z9hG4bKwsinv\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=wa\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: ws-call\r\nCSeq: 1 INVITE\r\nContact: <sip:alicex@{WS_HOST};transport=ws;ob>\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let invite = next_on(
        || {
            bob.recv(Duration::from_millis(200))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        },
        "INVITE ",
    );
    let rr = header(&invite, "Record-Route").join(", ");
    assert!(
        rr.contains(&format!(":{};transport=ws;lr>", n0.wss.port())),
        "alice's edge names its secure WebSocket port: {rr}"
    );
    assert!(
        rr.contains(&format!(":{};transport=tls;lr>", n1.tls.port())),
        "bob's edge names its TLS port: {rr}"
    );
    bob.send(ok_for(&invite, "tb2", &format!("sip:bob@{bm};transport=tls")).as_bytes());
    let ok = next_on(|| alice.recv(Duration::from_millis(200)), "SIP/2.0 200");
    assert!(ok.contains("CSeq: 1 INVITE"), "{ok}");
    // bob hangs up: his BYE follows the route set to alice's WebSocket.
    bob.send(
        format!(
            "BYE sip:alicex@{WS_HOST};transport=ws;ob SIP/2.0\r\nVia: SIP/2.0/TLS {bm};branch=z9hG4bKtbye\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=tb2\r\nTo: <sip:alice@{DOMAIN}>;tag=wa\r\n\
             Call-ID: ws-call\r\nCSeq: 1 BYE\r\nRoute: {rr}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let bye = next_on(|| alice.recv(Duration::from_millis(200)), "BYE ");
    assert!(bye.contains("Call-ID: ws-call"), "{bye}");
}

#[test]
#[ignore = "slow: needs a ringmesh dev farm"]
fn a_websocket_port_refuses_foreign_pages_and_non_sip_clients() {
    let allowed = "https://softphone.example";
    let farm = common::start_farm(
        &["--nodes", "1", "--auth", "none"],
        &[("RINGMESH_WS_ORIGIN", allowed)],
    );
    let node = &farm.nodes[0];
    // A page from another origin: 403, whatever it asks for.
    assert_eq!(
        WsPhone::connect(node.ws, None, Some("sip"), Some("https://evil.example")).unwrap_err(),
        Refused::Status(403)
    );
    // A client that sends no Origin, where origins are listed: 403.
    assert_eq!(
        WsPhone::connect(node.ws, None, Some("sip"), None).unwrap_err(),
        Refused::Status(403)
    );
    // No sip subprotocol (a chat client, a scanner): 400.
    assert_eq!(
        WsPhone::connect(node.ws, None, None, Some(allowed)).unwrap_err(),
        Refused::Status(400)
    );
    assert_eq!(
        WsPhone::connect(node.ws, None, Some("xmpp"), Some(allowed)).unwrap_err(),
        Refused::Status(400)
    );
    // Plain HTTP on the WebSocket port gets no SIP service.
    let (answer, _) = common::tcp_exchange(
        node.ws,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(!answer.starts_with(b"SIP/2.0"));
    // The allowed page is served: a malformed request gets its 400, a
    // CRLF ping its pong, and OPTIONS its 200.
    let mut good = WsPhone::connect(node.ws, None, Some("sip"), Some(allowed)).expect("allowed");
    good.send(&format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WS {WS_HOST};branch=z9hG4bKbad\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@{DOMAIN}>;tag=b\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: ws-bad\r\n\
         CSeq: twelve INVITE\r\nContent-Length: 0\r\n\r\n"
    ));
    let bad = good.recv(Duration::from_secs(5)).expect("an answer");
    assert_eq!(status_of(bad.as_bytes()), Some(400), "{bad}");
    good.send("\r\n\r\n");
    assert_eq!(good.recv(Duration::from_secs(5)).as_deref(), Some("\r\n"));
    good.send(&format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WS {WS_HOST};branch=z9hG4bKopt\r\nMax-Forwards: 70\r\n\
         From: <sip:a@{DOMAIN}>;tag=o\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: ws-opt\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let ok = good.recv(Duration::from_secs(5)).expect("an answer");
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    let refused = common::metric_line(
        node.metrics,
        "ringmesh_sip_handshake_failures_total{stage=\"websocket\",transport=\"ws\"",
    )
    .unwrap_or(0.0);
    assert!(refused >= 5.0, "refused upgrades counted: {refused}");
}

/// A browser registers with RFC 5626 outbound but sends no keep-alives:
/// the node pings its WebSocket within the Flow-Timer (10 s here) and the
/// pong keeps the flow, past many timers; a client that stops answering
/// (a frozen tab) loses its flow and binding once the timer and its margin
/// have passed.
#[test]
#[ignore = "slow: waits out Flow-Timers"]
fn the_node_pings_websockets_and_a_tab_that_stops_answering_loses_its_flow() {
    let farm = common::start_farm(
        &["--nodes", "1", "--auth", "none"],
        &[("RINGMESH_FLOW_TIMER", "10")],
    );
    let node = &farm.nodes[0];
    let mut phones: Vec<WsPhone> = ["live", "frozen"]
        .iter()
        .map(|user| {
            let mut p = WsPhone::connect(node.ws, None, Some("sip"), None).expect("ws");
            p.send(&format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WS {WS_HOST};branch=z9hG4bKob{user}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=o{user}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
                 Call-ID: ob-{user}\r\nCSeq: 1 REGISTER\r\nSupported: outbound, path\r\n\
                 Contact: <sip:{user}x@{WS_HOST};transport=ws>;reg-id=1;\
                 +sip.instance=\"<urn:uuid:00000000-0000-4000-8000-0000000000{}>\"\r\n\
                 Expires: 600\r\nContent-Length: 0\r\n\r\n",
                if *user == "live" { "aa" } else { "bb" }
            ));
            let ok = p.recv(Duration::from_secs(5)).expect("an answer");
            assert!(ok.contains("Flow-Timer: 10\r\n"), "{ok}");
            p
        })
        .collect();
    // 25 s, more than two Flow-Timers: the live tab reads (and so answers
    // pings); the frozen one reads nothing.
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        let _ = phones[0].recv(Duration::from_millis(500));
    }
    let failed = common::metric_line(
        node.metrics,
        "ringmesh_sip_outbound_flows_failed_total{reason=\"silent\"",
    );
    assert_eq!(failed, Some(1.0), "only the frozen tab's flow failed");
    assert_eq!(
        common::metric_line(node.metrics, "ringmesh_sip_outbound_flows{"),
        Some(1.0)
    );
    assert!(
        phones[1].recv(Duration::from_secs(2)).is_none(),
        "the frozen tab's WebSocket was closed"
    );
    // The live tab is still reachable.
    let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ca = caller.local_addr().unwrap();
    caller
        .send_to(
            format!(
                "MESSAGE sip:live@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ca};branch=z9hG4bKmsg;rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:x@{DOMAIN}>;tag=m\r\nTo: <sip:live@{DOMAIN}>\r\n\
                 Call-ID: ws-msg\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
            )
            .as_bytes(),
            node.sip,
        )
        .unwrap();
    let msg = next_on(|| phones[0].recv(Duration::from_millis(200)), "MESSAGE ");
    assert!(msg.ends_with("hi"), "{msg}");
}
