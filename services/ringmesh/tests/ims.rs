//! The farm as an IMS-like registrar, with real processes: Kamailio as
//! the P-CSCF in front of two supernodes (Path, Service-Route,
//! P-Associated-URI), implicit registration sets with tel: numbers and
//! GRUUs across nodes, and the reg event package followed across the
//! farm and through the kill -9 of the supernode that accepted the
//! subscription. Phones are raw SIP on UDP sockets.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{metric_line, status_of, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::phone::{DOMAIN, UdpPhone, header, param};

const PASSWORD: &str = "secret";

/// Farms run one at a time: two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Kamailio with `tests/pcscf.cfg`: a P-CSCF on 127.0.0.1:`port` that sends
/// REGISTERs to `registrar` and initial requests without a Route to
/// `originating`.
struct Pcscf {
    kamailio: common::Kamailio,
    addr: SocketAddr,
}

impl Pcscf {
    fn start(port: u16, registrar: SocketAddr, originating: SocketAddr, dir: &Path) -> Pcscf {
        let args = [
            "-l".to_string(),
            format!("udp:127.0.0.1:{port}"),
            "-A".into(),
            format!("REGISTRAR=\"sip:{registrar}\""),
            "-A".into(),
            format!("ORIGINATING=\"sip:{originating}\""),
        ];
        let kamailio = common::Kamailio::start("pcscf.cfg", &args, &[port], dir.join("pcscf.log"));
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        Pcscf { kamailio, addr }
    }

    fn log(&self) -> String {
        self.kamailio.log()
    }
}

/// A REGISTER of `user` from `ue` (to be sent through a front end, which
/// adds the Path), supporting Path.
fn register_via_front_end(ue: &UdpPhone, user: &str, expires: u32) -> String {
    ue.request(
        "REGISTER",
        user,
        user,
        &format!("Expires: {expires}\r\nSupported: path\r\n"),
    )
    .replacen(
        &format!("REGISTER sip:{user}@{DOMAIN}"),
        &format!("REGISTER sip:{DOMAIN}"),
        1,
    )
}

#[test]
#[ignore = "slow: a farm and kamailio"]
fn a_phone_behind_kamailio_registers_is_called_and_calls_through_its_service_route() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Kamailio is a trusted front end: it adds Path and vouches for its
    // users. The farm learns its address first, then it starts there.
    let port = common::free_sip_port();
    let trusted = format!("front-end:pcscf=127.0.0.1:{port}");
    let farm = common::start_farm(&["--nodes", "2", "--trusted", &trusted], &[]);
    let (n0, n1) = (farm.nodes[0].sip, farm.nodes[1].sip);
    let pcscf = Pcscf::start(port, n0, n1, dir.path());

    // Registration through the P-CSCF: no challenge from the farm, the
    // Path comes back, a Service-Route through node 0, alice's identities.
    let ue = UdpPhone::on("127.0.0.1");
    let ok = ue
        .ask(
            pcscf.addr,
            &register_via_front_end(&ue, "alice", 600),
            Duration::from_secs(10),
        )
        .expect("an answer to REGISTER");
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}\n{}", pcscf.log());
    let path = header(&ok, "Path").expect("the Path echoed");
    assert!(path.contains(&format!("127.0.0.1:{port}")), "{path}");
    let sr = header(&ok, "Service-Route").expect("a Service-Route");
    assert!(
        sr.starts_with("<sip:sr.") && sr.contains(&format!("@{n0}")),
        "{sr}"
    );
    assert_eq!(
        header(&ok, "P-Associated-URI").as_deref(),
        Some("<sip:alice@ringmesh.test>, <tel:+15550100>")
    );

    // Terminating: bob, a phone on node 1, calls alice's number; the call
    // reaches her through the P-CSCF (her Path), which record-routes.
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(n1, "bob", PASSWORD), Some(200));
    let callee = std::thread::spawn(move || {
        let got = ue.answer_next(200, Duration::from_secs(15));
        (ue, got)
    });
    let invite = bob.request_to("INVITE", "tel:+15550100", "bob", "");
    let (status, _) = bob
        .authenticated(n1, &invite, "bob", PASSWORD)
        .expect("an answer to the INVITE");
    let (ue, got) = callee.join().unwrap();
    let (req, from) = got.expect("alice's phone got the INVITE");
    assert_eq!(status, 200);
    assert_eq!(from, pcscf.addr, "through the P-CSCF");
    assert!(
        req.starts_with(&format!("INVITE sip:alice@{}", ue.me)),
        "{req}"
    );
    assert_eq!(
        header(&req, "P-Called-Party-ID").as_deref(),
        Some("<tel:+15550100>")
    );
    assert!(
        header(&req, "Record-Route").is_some_and(|r| r.contains(&format!("127.0.0.1:{port}"))),
        "{req}"
    );
    assert!(pcscf.log().contains("pcscf: terminating INVITE"));

    // Originating: alice calls bob preloading the P-CSCF and her
    // Service-Route; the P-CSCF follows it to node 0 (its default for
    // requests without a Route is node 1), which routes to bob at node 1.
    let route = format!("Route: <sip:127.0.0.1:{port};lr>, {sr}\r\n");
    let caller = std::thread::spawn(move || {
        let got = bob.answer_next(200, Duration::from_secs(15));
        (bob, got)
    });
    let invite = ue.request("INVITE", "bob", "alice", &route);
    let answer = ue
        .ask(pcscf.addr, &invite, Duration::from_secs(15))
        .expect("an answer");
    let (bob, got) = caller.join().unwrap();
    assert_eq!(status_of(answer.as_bytes()), Some(200), "{answer}");
    let (req, _) = got.expect("bob's phone got the INVITE");
    let vias: Vec<&str> = req.lines().filter(|l| l.starts_with("Via:")).collect();
    assert!(
        vias.iter().any(|v| v.contains(&format!(" {n0};"))),
        "through node 0, the Service-Route: {vias:?}"
    );
    assert!(pcscf.log().contains("pcscf: originating INVITE"));

    // An attacker behind the same P-CSCF presents a Service-Route the farm
    // never issued: refused; one issued to alice, as bob: refused too.
    let mallory = UdpPhone::on("127.0.0.66");
    let forged = format!(
        "Route: <sip:127.0.0.1:{port};lr>, <sip:sr.AwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@{n0};lr>\r\n"
    );
    let r = mallory
        .ask(
            pcscf.addr,
            &mallory.request("INVITE", "bob", "alice", &forged),
            Duration::from_secs(10),
        )
        .expect("an answer");
    assert_eq!(status_of(r.as_bytes()), Some(403), "{r}");
    let r = bob
        .authenticated(
            n0,
            &bob.request("INVITE", "alice", "bob", &format!("Route: {sr}\r\n")),
            "bob",
            PASSWORD,
        )
        .expect("an answer");
    assert_eq!(r.0, 403, "{}", r.1);
    // A phone may not register a Path of its own.
    let r = mallory
        .ask(
            n0,
            &register_via_front_end(&mallory, "bob", 600).replacen(
                "Content-Length:",
                "Path: <sip:127.0.0.66:5060;lr>\r\nContent-Length:",
                1,
            ),
            Duration::from_secs(5),
        )
        .expect("an answer");
    assert_eq!(status_of(r.as_bytes()), Some(403), "{r}");
    drop(farm);
}

/// A REGISTER of one of `user`'s devices (`instance`) with GRUU support.
fn register_instance(phone: &UdpPhone, node: SocketAddr, user: &str, instance: &str) -> String {
    let text = phone
        .request(
            "REGISTER",
            user,
            user,
            "Expires: 600\r\nSupported: gruu\r\n",
        )
        .replacen(
            &format!("REGISTER sip:{user}@{DOMAIN}"),
            &format!("REGISTER sip:{DOMAIN}"),
            1,
        )
        .replacen(
            &format!("Contact: <sip:{user}@{}>", phone.me),
            &format!(
                "Contact: <sip:{user}@{}>;+sip.instance=\"<urn:uuid:{instance}>\"",
                phone.me
            ),
            1,
        );
    let (status, ok) = phone
        .authenticated(node, &text, user, PASSWORD)
        .expect("an answer to REGISTER");
    assert_eq!(status, 200, "{ok}");
    ok
}

/// The GRUU parameter `name` of the Contact of `instance` in a 200 OK.
fn gruu(ok: &str, instance: &str, name: &str) -> String {
    let contact = ok
        .lines()
        .find(|l| l.starts_with("Contact:") && l.contains(instance))
        .unwrap_or_else(|| panic!("a contact for {instance} in {ok}"));
    param(contact, name)
}

#[test]
#[ignore = "slow: a farm"]
fn numbers_of_an_implicit_set_and_gruus_reach_across_the_farm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let farm = common::start_farm(&["--nodes", "2"], &[]);
    let (n0, n1) = (farm.nodes[0].sip, farm.nodes[1].sip);
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(bob.register(n1, "bob", PASSWORD), Some(200));

    // alice registers her SIP identity at node 0; her number rings her,
    // called at node 1.
    let alice = UdpPhone::on("127.0.0.1");
    let (status, ok) = alice
        .register_expires(n0, "alice", PASSWORD, 600)
        .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(
        header(&ok, "P-Associated-URI").as_deref(),
        Some("<sip:alice@ringmesh.test>, <tel:+15550100>")
    );
    let call = |bob: &UdpPhone, ruri: &str| {
        let invite = bob.request_to("INVITE", ruri, "bob", "");
        bob.authenticated(n1, &invite, "bob", PASSWORD)
            .map(|(s, _)| s)
    };
    let answering = std::thread::spawn(move || {
        let got = alice.answer_next(200, Duration::from_secs(10));
        (alice, got)
    });
    assert_eq!(call(&bob, "tel:+1-555-0100"), Some(200));
    let (alice, got) = answering.join().unwrap();
    let (req, _) = got.expect("alice's phone rang");
    assert_eq!(
        header(&req, "P-Called-Party-ID").as_deref(),
        Some("<tel:+1-555-0100>")
    );

    // De-registering the SIP identity takes the number with it.
    let (status, _) = alice
        .register_expires(n0, "alice", PASSWORD, 0)
        .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(call(&bob, "tel:+15550100"), Some(480));

    // Two devices of alice's, one on each node: each GRUU reaches its own
    // device and never the other.
    let d1 = UdpPhone::on("127.0.0.1");
    let d2 = UdpPhone::on("127.0.0.1");
    let u1 = "00000000-0000-0000-0000-0000000000d1";
    let u2 = "00000000-0000-0000-0000-0000000000d2";
    let ok1 = register_instance(&d1, n0, "alice", u1);
    let ok2 = register_instance(&d2, n1, "alice", u2);
    let pub1 = gruu(&ok1, u1, "pub-gruu");
    let temp2 = gruu(&ok2, u2, "temp-gruu");
    assert_eq!(pub1, format!("sip:alice@{DOMAIN};gr=urn:uuid:{u1}"));
    assert!(
        temp2.starts_with("sip:tgruu.") && !temp2.contains("alice"),
        "{temp2}"
    );
    for (gruu, rings, silent) in [(&pub1, &d1, &d2), (&temp2, &d2, &d1)] {
        std::thread::scope(|s| {
            let ringing = s.spawn(|| rings.answer_next(200, Duration::from_secs(10)));
            assert_eq!(call(&bob, gruu), Some(200), "{gruu}");
            assert!(ringing.join().unwrap().is_some(), "{gruu} rang its device");
            assert!(
                silent.next_request(Duration::from_secs(1)).is_none(),
                "{gruu} rang the other device"
            );
        });
    }
    drop(farm);
}

/// The next NOTIFY at `watcher` not seen yet (retransmissions skipped),
/// answered 200: its version and body.
fn next_notify(watcher: &UdpPhone, seen: &mut Vec<String>, wait: Duration) -> (u32, String) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a NOTIFY in time");
        let (req, from) = watcher.next_request(left).expect("a NOTIFY in time");
        watcher.answer(&req, from, 200, "");
        let cseq = header(&req, "CSeq").unwrap_or_default();
        if !req.starts_with("NOTIFY ") || seen.contains(&cseq) {
            continue;
        }
        seen.push(cseq);
        let body = req.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        let version = body
            .split("<reginfo")
            .nth(1)
            .and_then(|r| r.split("version=\"").nth(1))
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a version in {req}"));
        return (version, body);
    }
}

#[test]
#[ignore = "slow: a farm, kill -9"]
fn a_reg_event_watcher_follows_registrations_across_the_farm_and_through_a_kill_9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let farm = common::start_farm(&["--nodes", "3"], &[]);
    let nodes: Vec<SocketAddr> = farm.nodes.iter().map(|n| n.sip).collect();

    // alice's watcher (an app on her other device) subscribes at node 0.
    let watcher = UdpPhone::on("127.0.0.1");
    let subscribe = watcher.request(
        "SUBSCRIBE",
        "alice",
        "alice",
        "Event: reg\r\nExpires: 600\r\nAccept: application/reginfo+xml\r\n",
    );
    let (status, ok) = watcher
        .authenticated(nodes[0], &subscribe, "alice", PASSWORD)
        .expect("an answer to SUBSCRIBE");
    assert_eq!(status, 200, "{ok}");
    let contact = header(&ok, "Contact").unwrap();
    assert!(
        contact.ends_with(&format!("@{DOMAIN}>")),
        "names the farm: {contact}"
    );
    let mut seen = Vec::new();
    let (v0, full) = next_notify(&watcher, &mut seen, Duration::from_secs(10));
    assert_eq!(v0, 0);
    assert!(full.contains("state=\"full\""), "{full}");

    // alice's phone registers at node 1, refreshes at node 2, de-registers
    // at node 1: in order, versions rising by one.
    let phone = UdpPhone::on("127.0.0.1");
    let mut events = Vec::new();
    for (node, expires, event) in [
        (1, 600, "registered"),
        (2, 600, "refreshed"),
        (1, 0, "unregistered"),
    ] {
        let (status, _) = phone
            .register_expires(nodes[node], "alice", PASSWORD, expires)
            .expect("an answer to REGISTER");
        assert_eq!(status, 200);
        let (v, body) = next_notify(&watcher, &mut seen, Duration::from_secs(10));
        assert!(
            body.contains(&format!("event=\"{event}\"")),
            "{event}: {body}"
        );
        events.push(v);
    }
    assert_eq!(events, vec![1, 2, 3]);

    // kill -9 the node that accepted the subscription (and holds the
    // watcher's flow); once the others see it gone, a change is told.
    let victim = &farm.nodes[0];
    let _ = kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL);
    wait_until(
        "the survivors see a ring of 2",
        Duration::from_secs(60),
        || {
            farm.nodes[1..]
                .iter()
                .all(|n| metric_line(n.metrics, "ringmesh_overlay_ring_size") == Some(2.0))
        },
    );
    let (status, _) = phone
        .register_expires(nodes[2], "alice", PASSWORD, 600)
        .expect("an answer to REGISTER");
    assert_eq!(status, 200);
    let (v, body) = next_notify(&watcher, &mut seen, Duration::from_secs(15));
    assert_eq!(v, 4, "{body}");
    assert!(body.contains("event=\"registered\""), "{body}");

    // The watcher ends it at a surviving node (the Contact names the farm):
    // a last NOTIFY says it is over.
    let ruri = contact.trim_start_matches('<').trim_end_matches('>');
    let dialog_line = |name: &str| format!("{name}: {}", header(&ok, name).unwrap());
    let unsubscribe = format!(
        "SUBSCRIBE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKun{};rport\r\nMax-Forwards: 70\r\n\
         {}\r\n{}\r\n{}\r\nCSeq: 9 SUBSCRIBE\r\nContact: <sip:alice@{}>\r\nEvent: reg\r\nExpires: 0\r\n\
         Content-Length: 0\r\n\r\n",
        watcher.me,
        common::rand_u64(),
        dialog_line("From"),
        dialog_line("To"),
        dialog_line("Call-ID"),
        watcher.me
    );
    let r = watcher
        .ask(nodes[1], &unsubscribe, Duration::from_secs(10))
        .expect("an answer to the un-SUBSCRIBE");
    assert_eq!(status_of(r.as_bytes()), Some(200), "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a last NOTIFY");
        let (req, from) = watcher.next_request(left).expect("a last NOTIFY");
        watcher.answer(&req, from, 200, "");
        if header(&req, "Subscription-State").is_some_and(|s| s.starts_with("terminated")) {
            break req;
        }
    };
    assert!(last.starts_with("NOTIFY "), "{last}");
    drop(farm);
}
