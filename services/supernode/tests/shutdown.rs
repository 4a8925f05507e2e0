//! A supernode run in-process, on ports the kernel picks: it serves, and
//! on shutdown it drains — new requests get 503 with Retry-After while a
//! transaction in progress is allowed to finish — then stops every task
//! and returns.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ringmesh_supernode::config::SupernodeArgs;

/// Sends `text` from `s` to `to` and returns the first answer that is not
/// a 100 Trying.
fn exchange(s: &UdpSocket, to: SocketAddr, text: &str) -> String {
    s.send_to(text.replace('\n', "\r\n").as_bytes(), to)
        .unwrap();
    answer(s)
}

/// The next answer on `s` that is not a 100 Trying.
fn answer(s: &UdpSocket) -> String {
    let mut buf = [0u8; 8192];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("an answer");
        let t = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !t.starts_with("SIP/2.0 100") {
            return t;
        }
    }
}

fn register(me: SocketAddr, user: &str, contact: SocketAddr, n: u32) -> String {
    format!(
        "REGISTER sip:ringmesh.test SIP/2.0\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsd{user}{n}\n\
         Max-Forwards: 70\nFrom: <sip:{user}@ringmesh.test>;tag=r{n}\nTo: <sip:{user}@ringmesh.test>\n\
         Call-ID: sd-{user}-{n}\nCSeq: {n} REGISTER\nContact: <sip:{user}@{contact}>\nExpires: 600\n\
         Content-Length: 0\n\n"
    )
}

#[test]
fn a_supernode_drains_then_stops_every_task() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let cfg = SupernodeArgs::resolve_from(&[
        "--auth",
        "none",
        "--sip",
        "udp:127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--data",
        &data_dir,
        "--allow-loopback-contacts",
        "true",
    ])
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let node = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(ringmesh_supernode::run_with(
            cfg,
            async {
                let _ = stop_rx.await;
            },
            move |b| bound_tx.send(b.clone()).unwrap(),
        ));
        // Tasks aborted at the end are reaped by the runtime shortly after:
        // give it a moment, then count what is left.
        let alive = rt.block_on(async {
            for _ in 0..100 {
                if tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
                    == 0
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        });
        (result, alive)
    });
    let bound = bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the node serves");
    let sip = bound.sip[0].1;
    assert_ne!(sip.port(), 0, "the port the kernel chose");

    // bob registers a phone that never answers; alice calls it.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = client.local_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let r = exchange(
        &client,
        sip,
        &register(me, "bob", phone.local_addr().unwrap(), 1),
    );
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let invite = format!(
        "INVITE sip:bob@ringmesh.test SIP/2.0\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsdinv\n\
         Max-Forwards: 70\nFrom: <sip:alice@ringmesh.test>;tag=a1\nTo: <sip:bob@ringmesh.test>\n\
         Call-ID: sd-call\nCSeq: 1 INVITE\nContact: <sip:alice@{me}>\nContent-Length: 0\n\n"
    );
    client
        .send_to(invite.replace('\n', "\r\n").as_bytes(), sip)
        .unwrap();
    let mut buf = [0u8; 8192];
    let (n, _) = phone.recv_from(&mut buf).expect("the phone rings");
    let forwarded = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(forwarded.starts_with("INVITE "), "{forwarded}");

    // Shutdown: the call is in progress, so the node drains.
    let asked = Instant::now();
    stop_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let late = UdpSocket::bind("127.0.0.1:0").unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = exchange(
        &late,
        sip,
        &register(
            late.local_addr().unwrap(),
            "carol",
            late.local_addr().unwrap(),
            1,
        ),
    );
    assert!(
        r.starts_with("SIP/2.0 503"),
        "new work refused while draining: {r}"
    );
    assert!(r.contains("\r\nRetry-After: "), "{r}");
    assert!(
        !node.is_finished(),
        "still draining: a transaction is in progress"
    );

    // The phone answers busy: the call ends, alice gets it, the node stops.
    let busy = forwarded
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .map(|l| {
            if l.starts_with("To:") {
                format!("{l};tag=busy")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let busy = format!("SIP/2.0 486 Busy Here\r\n{busy}\r\nContent-Length: 0\r\n\r\n");
    phone.send_to(busy.as_bytes(), sip).unwrap();
    let r = answer(&client);
    assert!(r.starts_with("SIP/2.0 486"), "the caller hears busy: {r}");
    let (result, alive) = node.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(alive, 0, "every task the node spawned has ended");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stopped once the call ended, not at the drain limit ({took:?})"
    );
}
