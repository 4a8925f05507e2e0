//! ENUM on a real farm (`ringmesh dev`, three nodes) against a real DNS
//! server (Debian's dnsmasq) holding NAPTR records under `e164.test`:
//! a number ported to bob rings bob's phone; a number whose record names
//! an address reaches that address with the URI the record gives; a
//! number whose record names another domain reaches that domain's servers
//! by RFC 3263 (NAPTR, SRV, A), over a silent first server; a number with
//! no record gets 480 (the farm has no PSTN gateway here).

mod common;

use std::time::{Duration, Instant};

use common::{Dnsmasq, free_port};
use ringmesh_test_support::phone::UdpPhone;

const ENUM_DOMAIN: &str = "e164.test";

/// dnsmasq answering for `ENUM_DOMAIN` with `records` (name, regexp) as
/// E2U+sip NAPTR records, and `extra` options (more records).
fn enum_dns(dir: &std::path::Path, records: &[(&str, String)], extra: &[String]) -> Dnsmasq {
    let mut args = vec![format!("--local=/{ENUM_DOMAIN}/")];
    for (name, regexp) in records {
        args.push(format!("--naptr-record={name},10,10,u,E2U+sip,{regexp}"));
    }
    args.extend_from_slice(extra);
    Dnsmasq::start(dir, free_port(), &args)
}

/// alice calls `number` at `node`; the callee (if any) answers 486 on
/// another thread: the final status alice hears.
fn alice_calls(node: std::net::SocketAddr, number: &str) -> u16 {
    let alice = UdpPhone::on("127.0.0.1");
    let text = alice.request_to(
        "INVITE",
        &format!("sip:{number}@ringmesh.test"),
        "alice",
        "",
    );
    alice
        .authenticated(node, &text, "alice", "secret")
        .map_or(0, |(s, _)| s)
}

#[test]
#[ignore = "slow: needs dnsmasq and a ringmesh dev farm"]
fn numbers_go_where_their_enum_records_point() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = UdpPhone::on("127.0.0.1");
    // b.test: its NAPTR records name its TCP SRV record first, a server
    // nothing listens on, then its UDP one, a server that answers.
    let b_test = UdpPhone::on("127.0.0.1");
    let closed = free_port();
    let dns = enum_dns(
        dir.path(),
        &[
            (
                "1.0.0.0.7.7.7.5.5.5.1.e164.test",
                "!^.*$!sip:bob@ringmesh.test!".to_string(),
            ),
            (
                "2.0.0.0.7.7.7.5.5.5.1.e164.test",
                format!("!^.*$!sip:ported@{}!", carrier.me),
            ),
            (
                "4.0.0.0.7.7.7.5.5.5.1.e164.test",
                "!^.*$!sip:ported@b.test!".to_string(),
            ),
        ],
        &[
            "--local=/b.test/".into(),
            "--naptr-record=b.test,10,10,s,SIP+D2T,,_sip._tcp.b.test".into(),
            "--naptr-record=b.test,20,10,s,SIP+D2U,,_sip._udp.b.test".into(),
            format!("--srv-host=_sip._tcp.b.test,closed.b.test,{closed},10,0"),
            format!(
                "--srv-host=_sip._udp.b.test,live.b.test,{},10,0",
                b_test.me.port()
            ),
            "--host-record=closed.b.test,127.0.0.1".into(),
            "--host-record=live.b.test,127.0.0.1".into(),
        ],
    );
    let dns_server = dns.addr();
    let farm = common::start_farm(
        &[
            "--nodes",
            "3",
            "--dns-server",
            &dns_server,
            "--enum-domain",
            ENUM_DOMAIN,
        ],
        &[],
    );
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(farm.nodes[2].sip, "bob", "secret"), Some(200));
    let node = farm.nodes[1].sip;

    // Ported to bob: his phone rings (and says busy).
    let ringing = std::thread::spawn(move || bob.answer_next(486, Duration::from_secs(10)));
    assert_eq!(alice_calls(node, "+15557770001"), 486);
    let (invite, _) = ringing.join().unwrap().expect("bob's phone got the INVITE");
    assert!(invite.starts_with("INVITE sip:bob@"), "{invite}");

    // Served elsewhere, by address: the INVITE reaches it, for the URI the
    // record names.
    let at_carrier = std::thread::spawn(move || carrier.answer_next(486, Duration::from_secs(10)));
    assert_eq!(alice_calls(node, "+15557770002"), 486);
    let (invite, _) = at_carrier
        .join()
        .unwrap()
        .expect("the carrier got the INVITE");
    assert!(
        invite.starts_with("INVITE sip:ported@127.0.0.1:"),
        "{invite}"
    );

    // Another domain: its first server refuses the connection, and the
    // call reaches the second at once (well within the 2 s a silent one
    // gets), for the record's URI.
    let started = Instant::now();
    let at_b = std::thread::spawn(move || b_test.answer_next(486, Duration::from_secs(10)));
    assert_eq!(alice_calls(node, "+15557770004"), 486);
    let (invite, _) = at_b.join().unwrap().expect("b.test's second server got it");
    let took = started.elapsed();
    eprintln!("the call to b.test was answered by its second server {took:?} after it started");
    assert!(
        invite.starts_with("INVITE sip:ported@b.test SIP/2.0"),
        "{invite}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    // No record, and no gateway: unreachable.
    assert_eq!(alice_calls(node, "+15557770003"), 480);

    let lookups = |result: &str| {
        common::metric_labelled(
            farm.nodes[1].metrics,
            "ringmesh_sip_enum_lookups_total",
            &[("result", result)],
        )
    };
    assert_eq!(lookups("local"), Some(1.0));
    assert_eq!(lookups("direct"), Some(1.0));
    assert_eq!(lookups("foreign"), Some(1.0));
    assert_eq!(lookups("none"), Some(1.0));
    let located = |event: &str| {
        common::metric_labelled(
            farm.nodes[1].metrics,
            "ringmesh_sip_located_calls_total",
            &[("event", event)],
        )
    };
    assert_eq!(located("sent"), Some(3.0), "the address, and b.test's two");
    assert_eq!(located("failed_over"), Some(1.0));
    assert_eq!(located("refused"), Some(2.0), "two 486s");
}
