//! Initial filter criteria with real application servers: Kamailio
//! (`tests/appserver.cfg`) as two proxying servers on two ports, a small
//! answering server (a UDP socket in this test), and a server that is
//! down. Criteria are set with `ringmesh ctl subscriber set-services`;
//! phones are raw SIP on UDP sockets.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ctl_with, metric_line, status_of};
use ringmesh_test_support::phone::{UdpPhone, header};
use serde_json::json;

const PASSWORD: &str = "secret";

/// A criterion as `ctl subscriber set-services` reads it.
fn criterion(
    priority: i32,
    case: &str,
    method: &str,
    server: SocketAddr,
    handling: &str,
) -> serde_json::Value {
    json!({
        "priority": priority,
        "session_case": case,
        "method": method,
        "application_server": format!("sip:{server}"),
        "default_handling": handling,
    })
}

/// Replaces `user`'s criteria, and waits until the farm's subscriber
/// cache had time to hear of it (the Watch stream, on loopback).
fn set_services(farm: &common::Farm, dir: &Path, user: &str, criteria: &[serde_json::Value]) {
    let file = dir.join(format!("{user}-services.json"));
    std::fs::write(&file, json!({ "filter_criteria": criteria }).to_string()).unwrap();
    let (code, out, err) = ctl_with(
        farm,
        &["subscriber", "set-services", user, file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
}

/// `caller` sends `text` as alice at `node` while `callee` answers 200 in
/// the background; the caller's final status and what the callee got.
fn call(
    caller: &UdpPhone,
    node: SocketAddr,
    text: &str,
    callee: UdpPhone,
) -> (u16, Option<String>, UdpPhone) {
    let answering = std::thread::spawn(move || {
        let got = callee
            .answer_next(200, Duration::from_secs(12))
            .map(|(req, _)| req);
        (callee, got)
    });
    let (status, _) = caller
        .authenticated(node, text, "alice", PASSWORD)
        .expect("an answer");
    let (callee, got) = answering.join().unwrap();
    (status, got, callee)
}

#[test]
#[ignore = "slow: a farm and kamailio"]
fn requests_go_through_application_servers_by_the_subscribers_criteria() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (common::free_sip_port(), common::free_sip_port());
    let dead: SocketAddr = format!("127.0.0.1:{}", common::free_sip_port())
        .parse()
        .unwrap();
    // The Kamailio ports are trusted application servers (they send
    // requests back); phones on other ports of 127.0.0.1 are not.
    let farm = common::start_farm(
        &[
            "--nodes",
            "2",
            "--trusted",
            &format!("app-server:k1=127.0.0.1:{k1}"),
            "--trusted",
            &format!("app-server:k2=127.0.0.1:{k2}"),
        ],
        &[],
    );
    let (n0, n1) = (farm.nodes[0].sip, farm.nodes[1].sip);
    let listen: Vec<String> = [k1, k2]
        .iter()
        .flat_map(|p| ["-l".to_string(), format!("udp:127.0.0.1:{p}")])
        .collect();
    let kamailio = common::Kamailio::start(
        "appserver.cfg",
        &listen,
        &[k1, k2],
        dir.path().join("appserver.log"),
    );
    let as1: SocketAddr = format!("127.0.0.1:{k1}").parse().unwrap();
    let as2: SocketAddr = format!("127.0.0.1:{k2}").parse().unwrap();
    // The answering server (say, voicemail) is a socket of this test.
    let voicemail = UdpPhone::on("127.0.0.1");

    let alice = UdpPhone::on("127.0.0.1");
    let bob = UdpPhone::on("127.0.0.1");
    assert_eq!(alice.register(n0, "alice", PASSWORD), Some(200));
    assert_eq!(bob.register(n1, "bob", PASSWORD), Some(200));

    // Alice's two originating servers in priority order (listed out of
    // order), then bob's terminating one; his unregistered case goes to
    // voicemail.
    set_services(
        &farm,
        dir.path(),
        "alice",
        &[
            criterion(20, "ORIGINATING", "INVITE", as2, "SESSION_CONTINUED"),
            criterion(10, "ORIGINATING", "INVITE", as1, "SESSION_CONTINUED"),
        ],
    );
    set_services(
        &farm,
        dir.path(),
        "bob",
        &[
            criterion(
                5,
                "TERMINATING_REGISTERED",
                "INVITE",
                as1,
                "SESSION_CONTINUED",
            ),
            criterion(
                6,
                "TERMINATING_UNREGISTERED",
                "",
                voicemail.me,
                "SESSION_CONTINUED",
            ),
        ],
    );
    let (status, got, bob) = call(
        &alice,
        n0,
        &alice.request("INVITE", "bob", "alice", ""),
        bob,
    );
    let req = got.unwrap_or_else(|| panic!("bob got the INVITE\n{}", kamailio.log()));
    assert_eq!(status, 200, "{}", kamailio.log());
    let marks: Vec<String> = req
        .lines()
        .filter_map(|l| l.strip_prefix("X-AS: "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        marks,
        [k1.to_string(), k2.to_string(), k1.to_string()],
        "alice's servers by priority, then bob's: {req}"
    );
    assert!(!req.contains("isc."), "no return Route reaches bob: {req}");
    let events = |event: &str| {
        farm.nodes
            .iter()
            .map(|n| {
                metric_line(
                    n.metrics,
                    &format!("ringmesh_sip_app_server_events_total{{event=\"{event}\""),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert_eq!(events("triggered"), 3.0);
    assert_eq!(events("returned"), 3.0);

    // Bob unregistered: his voicemail answers the call itself. It sees
    // the return Route, which it could leak: a phone that sends it is
    // refused.
    assert_eq!(
        bob.register_expires(n1, "bob", PASSWORD, 0).map(|r| r.0),
        Some(200)
    );
    let (status, got, _voicemail) = call(
        &alice,
        n0,
        &alice.request("INVITE", "bob", "alice", ""),
        voicemail,
    );
    assert_eq!(status, 200, "voicemail answers");
    let at_vm = got.expect("the voicemail server got the INVITE");
    let route = header(&at_vm, "Route").expect("a Route");
    let back = route
        .split(", ")
        .nth(1)
        .expect("the return Route")
        .to_string();
    assert!(back.starts_with("<sip:isc."), "{route}");
    // It names the node that sent the request to voicemail.
    let node: SocketAddr = back
        .split(['@', ';'])
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("the return Route names a node");
    let refused = |n: SocketAddr| {
        let info = farm.nodes.iter().find(|i| i.sip == n).expect("a node");
        metric_line(
            info.metrics,
            "ringmesh_sip_refused_total{reason=\"service_return\"",
        )
        .unwrap_or(0.0)
    };
    let mallory = UdpPhone::on("127.0.0.66");
    let stolen = mallory.request("INVITE", "bob", "bob", &format!("Route: {back}\r\n"));
    let r = mallory
        .ask(node, &stolen, Duration::from_secs(5))
        .expect("an answer");
    assert_eq!(status_of(r.as_bytes()), Some(403), "{r}");
    assert_eq!(refused(node), 1.0, "the refusal is counted");

    // A server that is down, SESSION_CONTINUED: bob's MESSAGE arrives
    // anyway, after the server's time (2 s) is up.
    assert_eq!(bob.register(n1, "bob", PASSWORD), Some(200));
    set_services(
        &farm,
        dir.path(),
        "alice",
        &[criterion(
            1,
            "ORIGINATING",
            "MESSAGE",
            dead,
            "SESSION_CONTINUED",
        )],
    );
    let t0 = Instant::now();
    let (status, got, bob) = call(
        &alice,
        n0,
        &alice.request("MESSAGE", "bob", "alice", ""),
        bob,
    );
    assert_eq!(status, 200);
    assert!(got.is_some_and(|m| m.starts_with("MESSAGE ")));
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "after the server's time"
    );
    // SESSION_TERMINATED: alice gets 408 and bob nothing.
    set_services(
        &farm,
        dir.path(),
        "alice",
        &[criterion(
            1,
            "ORIGINATING",
            "MESSAGE",
            dead,
            "SESSION_TERMINATED",
        )],
    );
    let (status, got, _bob) = call(
        &alice,
        n0,
        &alice.request("MESSAGE", "bob", "alice", ""),
        bob,
    );
    assert_eq!(status, 408);
    assert!(got.is_none(), "bob got nothing: {got:?}");
    assert_eq!(events("failed_continued"), 1.0);
    assert_eq!(events("failed_terminated"), 1.0);
    drop(kamailio);
    drop(farm);
}
