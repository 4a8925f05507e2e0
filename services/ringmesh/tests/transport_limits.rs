//! The per-source limits of a real `ringmesh dev` farm, which keeps the
//! production defaults (500 messages/s, a burst of 5,000): a flood from one
//! address (127.0.0.66) is dropped past its bucket and counted while a
//! phone registers with digest; the same flood from an address the farm
//! was told to trust (`ringmesh dev --trusted`, passed to its supernodes)
//! is not limited; a connection that sends nothing is cut off after the
//! first-message timeout. The in-process tests of `ringmesh-supernode`
//! (`tests/transport_limits.rs`) play every attack on small limits.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{metric, register_with_password, status_of, wait_until};

/// Sends `count` OPTIONS from `src` to `to` at about `per_ms` a
/// millisecond while a second thread counts the answers (until 2 s of
/// silence). Returns (answers, seconds the sending took).
fn flood(src: &str, to: SocketAddr, count: u32, per_ms: u32) -> (u32, f64) {
    let s = UdpSocket::bind((src, 0)).unwrap();
    let me = s.local_addr().unwrap();
    let rx = s.try_clone().unwrap();
    let counter = std::thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while let Ok((len, _)) = rx.recv_from(&mut buf) {
            if status_of(&buf[..len]).is_some_and(|s| s != 100) {
                n += 1;
            }
        }
        n
    });
    let started = Instant::now();
    for i in 0..count {
        let msg = format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfl{i}\r\nMax-Forwards: 70\r\n\
             From: <sip:flood@{me}>;tag=f{i}\r\nTo: <sip:{to}>\r\nCall-ID: flood-{i}@{me}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        s.send_to(msg.as_bytes(), to).unwrap();
        if i % per_ms == per_ms - 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let took = started.elapsed().as_secs_f64();
    (counter.join().unwrap(), took)
}

fn limited(farm: &common::Farm) -> f64 {
    metric(farm.nodes[0].metrics, "ringmesh_sip_rate_limited_total").unwrap_or(f64::NAN)
}

#[test]
#[ignore = "slow: needs several processes"]
fn one_address_is_held_to_the_default_limits_and_a_trusted_one_is_not() {
    let farm = common::start_farm(&["--nodes", "1", "--trusted", "load=127.0.0.67"], &[]);
    let node = farm.sip();
    assert!(
        farm.nodes[0]
            .argv
            .windows(2)
            .any(|w| w == ["--trusted", "load=127.0.0.67"]),
        "the node runs (and restarts) with the trusted element"
    );
    let m = farm.nodes[0].metrics;
    for name in [
        "ringmesh_sip_rate_limited_total",
        "ringmesh_sip_connections_refused_total",
        "ringmesh_sip_connection_timeouts_total",
    ] {
        assert_eq!(
            metric(m, name),
            Some(0.0),
            "{name} is exported from the start"
        );
    }

    // 12,000 requests in about 4 s from one address: its bucket (5,000)
    // and rate (500/s) let about 7,000 through.
    let (answered, took) = flood("127.0.0.66", node, 12_000, 3);
    let dropped = limited(&farm);
    eprintln!("untrusted: 12,000 sent in {took:.1} s, {answered} answered, {dropped} dropped");
    assert!(
        f64::from(answered) <= 5000.0 + 500.0 * (took + 3.0),
        "no more than the bucket and the rate: {answered}"
    );
    assert!(
        dropped >= 2000.0,
        "the excess was dropped and counted: {dropped}"
    );
    assert_eq!(
        register_with_password(node, "alice", "secret"),
        200,
        "a phone on another address registers"
    );

    // The same flood from the trusted load generator is not limited.
    let (answered, took) = flood("127.0.0.67", node, 12_000, 3);
    eprintln!("trusted: 12,000 sent in {took:.1} s, {answered} answered");
    assert_eq!(
        limited(&farm),
        dropped,
        "nothing of the trusted flood dropped"
    );
    assert!(
        f64::from(answered) > 5000.0 + 500.0 * (took + 3.0),
        "more answered than an untrusted source may get: {answered}"
    );

    // A connection that sends nothing is closed after the first-message
    // timeout (5 s).
    let mut silent = TcpStream::connect(node).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = match silent.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the silent connection is closed");
    wait_until("the timeout is counted", Duration::from_secs(10), || {
        series(
            m,
            "ringmesh_sip_connection_timeouts_total",
            "reason=\"first_message\"",
        ) == 1.0
    });
}

/// The sum of the series of `name` whose labels include `label`.
fn series(addr: SocketAddr, name: &str, label: &str) -> f64 {
    common::http_get(addr, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
