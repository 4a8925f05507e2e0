//! Every RFC 4475 torture message, sent to a real supernode over UDP and
//! over TCP, gets the answer its manifest names, and the node still
//! answers OPTIONS afterwards.
//!
//! Most messages address example.com and friends, which the farm does not
//! serve: once a message passes the RFC 3261 §16.3 checks, the answer is
//! 403 (no open relay), and that 403 is itself the proof that it parsed.
//! The messages whose manifest line describes a registrar or proxy *for
//! their domain* are sent a second time with the domain rewritten to the
//! farm's, so the behaviour the manifest names is exercised too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Farm, options_ok, status_of, tcp_exchange, udp_exchange};

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sip/tests/rfc4475")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What the supernode must do with one message as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Answer with this status.
    Status(u16),
    /// Send nothing back (responses; a broken one is dropped, a valid
    /// one matches no transaction of ours and is not ours to forward).
    Silence,
}
use Want::{Silence, Status};

/// The verdict for every file, with the reason when it is not obvious.
const EXPECT: &[(&str, Want)] = &[
    // valid: parse, then 403 because the domain is not served here
    ("wsinv", Status(403)),
    ("intmeth", Status(403)),
    ("esc01", Status(403)),
    ("escnull", Status(403)),
    ("esc02", Status(403)),
    ("lwsdisp", Status(403)),
    ("longreq", Status(403)),
    ("dblreq", Status(403)),
    ("semiuri", Status(403)),
    ("transports", Status(403)),
    ("mpart01", Status(403)),
    ("unreason", Silence),
    ("noreason", Silence),
    // invalid
    ("badinv01", Status(400)),
    ("clerr", Status(400)), // UDP; over TCP the node waits, then closes (below)
    ("ncl", Status(400)),
    ("scalar02", Status(400)),
    ("scalarlg", Silence),
    ("quotbal", Status(400)),
    ("ltgtruri", Status(400)),
    ("lwsruri", Status(400)),
    ("lwsstart", Status(400)),
    ("trws", Status(400)),
    ("escruri", Status(400)),
    ("baddate", Status(403)), // a proxy may forward it; it is not ours to forward
    ("regbadct", Status(400)),
    ("badaspec", Status(400)),
    ("baddn", Status(400)),
    ("badvers", Status(505)),
    ("mismatch01", Status(400)),
    ("mismatch02", Status(400)),
    ("bigcode", Silence),
    // transaction: an RFC 2543 transaction is still handled
    ("badbranch", Status(403)),
    // application
    ("insuf", Status(400)),
    ("unkscm", Status(416)),
    ("novelsc", Status(416)),
    ("unksm2", Status(400)), // REGISTER whose To is not a SIP AOR
    ("bext01", Status(420)),
    ("invut", Status(403)), // a proxy forwards unknown bodies; foreign domain
    ("regaut01", Status(403)), // see the rewritten run: 401
    ("multi01", Status(400)),
    ("mcl01", Status(400)),
    ("bcast", Silence),
    ("zeromf", Status(483)),
    ("cparam01", Status(403)), // see the rewritten run: stored, 200
    ("cparam02", Status(403)),
    ("regescrt", Status(403)),
    ("sdp01", Status(403)),
    ("inv2543", Status(403)),
];

const DOMAIN: &str = "ringmesh.test";

fn answer_udp(farm: &Farm, msg: &[u8]) -> Option<Vec<u8>> {
    udp_exchange(farm.sip(), msg, Duration::from_millis(1500))
}

fn answer_tcp(farm: &Farm, msg: &[u8]) -> (Vec<u8>, bool) {
    tcp_exchange(farm.sip(), msg, Duration::from_millis(1500))
}

fn check(name: &str, want: Want, got: Option<&[u8]>, transport: &str) {
    match (want, got) {
        (Status(s), Some(r)) => assert_eq!(
            status_of(r),
            Some(s),
            "{name} over {transport}: {}",
            String::from_utf8_lossy(r)
        ),
        (Status(s), None) => panic!("{name} over {transport}: no answer, wanted {s}"),
        (Silence, None) => {}
        (Silence, Some(r)) => panic!(
            "{name} over {transport}: wanted silence, got {}",
            String::from_utf8_lossy(r)
        ),
    }
}

// A few messages share branch, sent-by and method (cparam01/cparam02,
// unkscm/novelsc, escnull/regescrt): by RFC 3261 §17.2.3 the second is a
// retransmission of the first and gets the first one's answer. Each
// transport therefore gets its own farm, so a UDP message and its TCP copy
// are never one transaction.

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn torture_messages_over_udp() {
    let farm = common::start_farm(&[], &[]);
    for (name, want) in EXPECT {
        let msg = data(&format!("{name}.dat"));
        check(name, *want, answer_udp(&farm, &msg).as_deref(), "UDP");
    }
    assert!(options_ok(farm.sip()), "the node must still answer OPTIONS");
    let log = farm.log("sn0");
    assert!(!log.contains("panicked"), "the supernode panicked:\n{log}");
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn torture_messages_over_tcp() {
    let farm = common::start_farm(&[], &[("RINGMESH_TCP_MESSAGE_TIMEOUT", "2")]);
    for (name, want) in EXPECT {
        let msg = data(&format!("{name}.dat"));
        if matches!(*name, "clerr" | "baddn") {
            // An incomplete message on a stream (clerr: Content-Length
            // beyond what was sent; baddn: no blank line ends its header):
            // the node waits for the rest, then cuts the connection.
            let (bytes, closed) = tcp_exchange(farm.sip(), &msg, Duration::from_secs(6));
            assert!(
                bytes.is_empty(),
                "{name} over TCP must not be answered early"
            );
            assert!(
                closed,
                "{name} over TCP: the connection must be closed after the message timeout"
            );
            continue;
        }
        let (bytes, _) = answer_tcp(&farm, &msg);
        check(
            name,
            *want,
            (!bytes.is_empty()).then_some(&bytes[..]),
            "TCP",
        );
    }
    assert!(options_ok(farm.sip()), "the node must still answer OPTIONS");
    let log = farm.log("sn0");
    assert!(!log.contains("panicked"), "the supernode panicked:\n{log}");
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn dblreq_answers_only_the_first_message() {
    let farm = common::start_farm(&[], &[]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.send_to(&data("dblreq.dat"), farm.sip()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).expect("an answer to the REGISTER");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.contains("CSeq: 8 REGISTER"), "{text}");
    assert!(
        s.recv_from(&mut buf).is_err(),
        "the INVITE after Content-Length must be discarded"
    );
}

/// The registrar and proxy behaviour the manifest names, on the farm's own
/// domain: regaut01 gets a challenge in a scheme the node knows;
/// cparam01/cparam02/regescrt are stored as given (never 400).
#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn registrar_messages_for_our_domain() {
    // Each gets its own branch: as sent in the RFC, cparam01 and cparam02
    // would be one transaction (same branch, sent-by and method).
    let rewrite = |name: &str| {
        String::from_utf8_lossy(&data(name))
            .replace("example.com", DOMAIN)
            .replace(
                "branch=z9hG4bK",
                &format!("branch=z9hG4bK{}", name.trim_end_matches(".dat")),
            )
            .into_bytes()
    };

    let digest = common::start_farm(&[], &[]);
    let r = answer_udp(&digest, &rewrite("regaut01.dat")).expect("an answer");
    assert_eq!(status_of(&r), Some(401));
    let text = String::from_utf8_lossy(&r);
    assert!(
        text.contains("WWW-Authenticate: Digest realm=\"ringmesh.test\""),
        "{text}"
    );

    let open = common::start_farm(&["--auth", "none"], &[]);
    for (name, contact) in [
        (
            "cparam01.dat",
            "<sip:+19725552222@gw1.example.net>;expires=",
        ),
        (
            "cparam02.dat",
            "<sip:+19725552222@gw1.example.net;unknownparam>;expires=",
        ),
        (
            "regescrt.dat",
            "<sip:user@ringmesh.test?Route=%3Csip:sip.ringmesh.test%3E>;expires=",
        ),
    ] {
        let r = answer_udp(&open, &rewrite(name)).expect("an answer");
        let text = String::from_utf8_lossy(&r);
        assert_eq!(status_of(&r), Some(200), "{name}: {text}");
        assert!(
            text.contains(contact),
            "{name}: 200 must list {contact}: {text}"
        );
    }
}
