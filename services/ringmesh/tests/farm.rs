//! The farm, with real processes: five `ringmesh supernode`
//! processes from `ringmesh dev`, registrations and calls from sipp, nodes
//! killed with SIGKILL, stopped with SIGTERM and restarted from the `argv`
//! that `dev` printed.
//!
//! "Resolves" means: a REGISTER without Contact (an RFC 3261 §10.2.3
//! query) sent to that node returns the binding, which the node reads from
//! the ring.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    NodeInfo, free_port, free_sip_port, http_get, sipp, sipp_dir, status_of, udp_exchange,
    wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DOMAIN: &str = "ringmesh.test";

/// Sends REGISTER queries for `users` to `node` with a sliding window and
/// returns how many contacts each user has there (None: no final answer).
fn query_all(node: SocketAddr, users: &[String]) -> HashMap<String, Option<usize>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = sock.local_addr().unwrap();
    let mut result: HashMap<String, Option<usize>> =
        users.iter().map(|u| (u.clone(), None)).collect();
    let nonce = common::rand_u64();
    let request = |u: &str, attempt: u32| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKq{nonce:x}{u}a{attempt};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{u}@{DOMAIN}>;tag=q{nonce:x}\r\nTo: <sip:{u}@{DOMAIN}>\r\n\
             Call-ID: q{nonce:x}-{u}\r\nCSeq: {} REGISTER\r\nContent-Length: 0\r\n\r\n",
            attempt + 1
        )
    };
    for attempt in 0..4 {
        let todo: Vec<String> = result
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if todo.is_empty() {
            break;
        }
        for chunk in todo.chunks(100) {
            for u in chunk {
                sock.send_to(request(u, attempt).as_bytes(), node).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut got = 0;
            let mut buf = vec![0u8; 65536];
            while got < chunk.len() && Instant::now() < deadline {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                if status_of(&buf[..n]) != Some(200) {
                    continue;
                }
                let Some(user) = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("Call-ID: q{nonce:x}-")))
                else {
                    continue;
                };
                let contacts = text.lines().filter(|l| l.starts_with("Contact:")).count();
                if let Some(slot) = result.get_mut(user.trim()) {
                    if slot.is_none() {
                        got += 1;
                    }
                    *slot = Some(contacts);
                }
            }
        }
    }
    result
}

/// Users that do not resolve to exactly one contact at `node`.
fn unresolved(node: SocketAddr, users: &[String]) -> Vec<String> {
    let mut bad: Vec<String> = query_all(node, users)
        .into_iter()
        .filter(|(_, v)| *v != Some(1))
        .map(|(u, _)| u)
        .collect();
    bad.sort();
    bad
}

fn metric(n: &NodeInfo, name: &str) -> Option<f64> {
    common::metric_line(n.metrics, name)
}

fn ready(n: &NodeInfo) -> bool {
    http_get(n.metrics, "/readyz").0 == 200
}

/// A process this test started; killed if the test ends early.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restarts a node from the argv `ringmesh dev` printed (no environment).
fn restart(n: &NodeInfo, log: &Path) -> Owned {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Owned(
        Command::new(&n.argv[0])
            .args(&n.argv[1..])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

fn stop(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Waits for a killed child or foreign PID to be gone: reaped, or a zombie
/// whose other threads have exited too. The main thread of a killed
/// multi-threaded process turns zombie before its other threads are done,
/// and the sockets they share stay open until the last one is: restarting
/// the node before that fails to bind its ports.
fn wait_gone(pid: u32) {
    wait_until(&format!("pid {pid} gone"), Duration::from_secs(30), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
                && std::fs::read_dir(format!("/proc/{pid}/task"))
                    .is_ok_and(|tasks| tasks.count() <= 1)
    });
}

/// Registers users `from..from+n` through `node` with sipp (no auth).
fn register(node: SocketAddr, from: usize, n: usize, work: &Path) {
    let csv = work.join(format!("users{from}.csv"));
    let out = Command::new(sipp_dir().join("gen_users.sh"))
        .args([
            n.to_string(),
            DOMAIN.into(),
            "secret".into(),
            "user".into(),
            from.to_string(),
        ])
        .output()
        .unwrap();
    std::fs::write(&csv, out.stdout).unwrap();
    let status = sipp(
        &[
            "-sf",
            sipp_dir().join("reg_noauth.xml").to_str().unwrap(),
            "-inf",
            csv.to_str().unwrap(),
            "-i",
            "127.0.0.1",
            "-r",
            "500",
            "-m",
            &n.to_string(),
            &node.to_string(),
        ],
        60,
        work,
    );
    assert!(
        status.success(),
        "sipp registration of user{from}.. through {node} failed"
    );
}

/// Calls `n` callees registered through `callee_node` (from one sipp
/// whose port the kernel chose), placing the calls through `caller_node`.
/// True when every call succeeded.
fn calls(caller_node: SocketAddr, callee_node: SocketAddr, n: usize, work: &Path) -> bool {
    // The callees register this port, and the sipp that answers for them
    // must bind it again.
    let callee_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let csv = work.join(format!("callees{callee_port}.csv"));
    let out = Command::new(sipp_dir().join("gen_users.sh"))
        .args([
            n.to_string(),
            DOMAIN.into(),
            "secret".into(),
            format!("callee{callee_port}x"),
        ])
        .output()
        .unwrap();
    std::fs::write(&csv, out.stdout).unwrap();
    let reg = sipp(
        &[
            "-sf",
            sipp_dir().join("reg_noauth.xml").to_str().unwrap(),
            "-inf",
            csv.to_str().unwrap(),
            "-i",
            "127.0.0.1",
            "-p",
            &callee_port.to_string(),
            "-r",
            "200",
            "-m",
            &n.to_string(),
            &callee_node.to_string(),
        ],
        30,
        work,
    );
    assert!(reg.success(), "callee registration failed");
    let mut uas = Command::new("timeout")
        .args([
            "60",
            "sipp",
            "-sf",
            sipp_dir().join("uas_noauth.xml").to_str().unwrap(),
            "-i",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &callee_port.to_string(),
            "-m",
            &n.to_string(),
            "-nostdin",
            "-timeout",
            "50s",
            &callee_node.to_string(),
        ])
        .current_dir(work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the callees' sipp listening",
        Duration::from_secs(10),
        || UdpSocket::bind(("127.0.0.1", callee_port)).is_err(),
    );
    let uac = sipp(
        &[
            "-sf",
            sipp_dir().join("uac_call_noauth.xml").to_str().unwrap(),
            "-inf",
            csv.to_str().unwrap(),
            "-i",
            "127.0.0.1",
            "-r",
            "50",
            "-m",
            &n.to_string(),
            &caller_node.to_string(),
        ],
        40,
        work,
    );
    let uas_ok = uas.wait().map(|s| s.success()).unwrap_or(false);
    uac.success() && uas_ok
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn five_supernodes_shard_survive_loss_and_restart() {
    // Nodes restart on their ports: fixed ones, outside the ephemeral range.
    let ports = common::PortBlock::reserve();
    let farm = common::start_farm(
        &[
            "--nodes",
            "5",
            "--auth",
            "none",
            "--sip-port",
            &ports.sip_port(),
        ],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let nodes = farm.nodes.clone();
    let started = Instant::now();

    // 5,000 users register round-robin across the nodes.
    for (k, n) in nodes.iter().enumerate() {
        register(n.sip, k * 1000, 1000, work.path());
    }
    eprintln!(
        "5,000 registrations through 5 nodes in {:?}",
        started.elapsed()
    );
    let users: Vec<String> = (0..5000).map(|i| format!("user{i}")).collect();

    // Every AOR resolves from every node.
    for n in &nodes {
        let bad = unresolved(n.sip, &users);
        assert!(
            bad.is_empty(),
            "{}: {} AORs do not resolve, e.g. {:?}",
            n.name,
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
    // The bindings are sharded, not copied everywhere: once every node's
    // census has counted them, each is primary on exactly one node.
    wait_until(
        "the census counts 5,000 primaries",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .map(|n| metric(n, "ringmesh_location_bindings{role=\"primary\"").unwrap_or(0.0))
                .sum::<f64>()
                == 5000.0
        },
    );
    for n in &nodes {
        let held = metric(n, "ringmesh_location_bindings{role=\"primary\"").unwrap_or(0.0);
        assert!(
            held > 300.0 && held < 2500.0,
            "{} is primary for {held} of 5,000 bindings",
            n.name
        );
    }

    // Calls between leaves on different supernodes.
    assert!(
        calls(nodes[3].sip, nodes[1].sip, 50, work.path()),
        "calls from sn3's leaves to sn1's"
    );

    // kill -9 a node that is neither the callers' nor the callees' edge.
    let victim = &nodes[4];
    stop(victim.pid, Signal::SIGKILL);
    wait_gone(victim.pid);
    let killed_at = Instant::now();
    let survivors: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != victim.name).collect();
    let repair = wait_until(
        "replicas back to k after the kill",
        Duration::from_secs(120),
        || {
            survivors.iter().all(|n| {
                metric(n, "ringmesh_overlay_ring_size") == Some(4.0)
                    && metric(n, "ringmesh_overlay_replicas_below_k") == Some(0.0)
            })
        },
    );
    eprintln!("repair after kill -9: ring of 4 with replicas in place {repair:?} after the kill");
    let _ = killed_at;
    // Bindings registered at the killed edge have no flow left to reach, but
    // they are still stored: every binding resolves from every survivor.
    for n in &survivors {
        let bad = unresolved(n.sip, &users);
        assert!(
            bad.is_empty(),
            "{} after kill -9: {} AORs lost, e.g. {:?}",
            n.name,
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
    assert!(
        calls(nodes[3].sip, nodes[1].sip, 30, work.path()),
        "calls keep succeeding after the kill"
    );

    // Restart it from its argv: same identity, keys rebalance onto it.
    let mut restarted = restart(victim, &work.path().join("sn4-restart.log"));
    let back = wait_until("sn4 back in the ring", Duration::from_secs(120), || {
        ready(victim)
            && nodes
                .iter()
                .all(|n| metric(n, "ringmesh_overlay_ring_size") == Some(5.0))
    });
    eprintln!("sn4 rejoined {back:?} after restart");
    let log = std::fs::read_to_string(work.path().join("sn4-restart.log")).unwrap();
    assert!(
        log.contains(&victim.argv[victim.argv.iter().position(|a| a == "--name").unwrap() + 1])
    );
    let node_id = std::fs::read_to_string(farm.dir.path().join("sn4/node.crt")).unwrap();
    assert!(
        !node_id.is_empty(),
        "its certificate (and Node-ID) stayed in its data directory"
    );
    wait_until("sn4 holds bindings again", Duration::from_secs(60), || {
        metric(victim, "ringmesh_location_bindings{role=\"primary\"").unwrap_or(0.0) > 100.0
    });

    // SIGTERM: the node hands its keys off before it exits.
    let leaver = &nodes[2];
    stop(leaver.pid, Signal::SIGTERM);
    wait_gone(leaver.pid);
    assert!(
        farm.log(&leaver.name).contains("handed_off=true"),
        "sn2 must hand off before exit:\n{}",
        farm.log(&leaver.name)
    );
    for n in nodes.iter().filter(|n| n.name != leaver.name) {
        let bad = unresolved(n.sip, &users);
        assert!(
            bad.is_empty(),
            "{} after sn2 left: {} AORs lost",
            n.name,
            bad.len()
        );
    }

    // Stop every node at once and start them all again: nothing is lost.
    stop(restarted.0.id(), Signal::SIGKILL);
    let _ = restarted.0.wait();
    for n in nodes
        .iter()
        .filter(|n| n.name != victim.name && n.name != leaver.name)
    {
        stop(n.pid, Signal::SIGKILL);
        wait_gone(n.pid);
    }
    let mut children: Vec<Owned> = nodes
        .iter()
        .map(|n| restart(n, &work.path().join(format!("{}-full-restart.log", n.name))))
        .collect();
    let all_back = || {
        nodes
            .iter()
            .all(|n| ready(n) && metric(n, "ringmesh_overlay_ring_size") == Some(5.0))
    };
    let began = Instant::now();
    while !all_back() && began.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !all_back() {
        for n in &nodes {
            let log =
                std::fs::read_to_string(work.path().join(format!("{}-full-restart.log", n.name)))
                    .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "{}: ready {} ring {:?} below-k {:?}; last lines of its log:\n{}",
                n.name,
                ready(n),
                metric(n, "ringmesh_overlay_ring_size"),
                metric(n, "ringmesh_overlay_replicas_below_k"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        panic!("all five back: not within 120s");
    }
    let back = began.elapsed();
    eprintln!("full restart: ring of 5 ready {back:?} after start");
    for n in &nodes {
        let bad = unresolved(n.sip, &users);
        assert!(
            bad.is_empty(),
            "{} after a full restart: {} AORs lost",
            n.name,
            bad.len()
        );
    }
    for c in &mut children {
        stop(c.0.id(), Signal::SIGTERM);
    }
    for c in &mut children {
        let _ = c.0.wait();
    }
}

/// A leaf registered through two supernodes (RFC 5626 reg-id 1 and 2 of one
/// instance) stays reachable when one of them is killed.
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn outbound_leaf_on_two_edges_survives_one() {
    let farm = common::start_farm(&["--nodes", "3", "--auth", "none"], &[]);
    let (a, b, c) = (&farm.nodes[1], &farm.nodes[2], &farm.nodes[0]);
    let leaf = UdpSocket::bind("127.0.0.1:0").unwrap();
    leaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = leaf.local_addr().unwrap();
    let inst = "<urn:uuid:00000000-0000-4000-8000-000000000042>";
    for (i, edge) in [(1, a), (2, b)] {
        let reg = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKob{i};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:carol@{DOMAIN}>;tag=ob\r\nTo: <sip:carol@{DOMAIN}>\r\nCall-ID: ob-carol\r\nCSeq: {i} REGISTER\r\n\
             Supported: outbound, path\r\nContact: <sip:carol@{me};ob>;+sip.instance=\"{inst}\";reg-id={i}\r\n\
             Expires: 600\r\nContent-Length: 0\r\n\r\n"
        );
        leaf.send_to(reg.as_bytes(), edge.sip).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = leaf.recv_from(&mut buf).expect("200 to REGISTER");
        assert_eq!(
            status_of(&buf[..n]),
            Some(200),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    // Call carol through the third node; answer on whichever edge reaches us.
    let call = |tag: &str| -> Vec<SocketAddr> {
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        caller
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let ca = caller.local_addr().unwrap();
        let invite = format!(
            "INVITE sip:carol@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ca};branch=z9hG4bKinv{tag};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:dave@{DOMAIN}>;tag={tag}\r\nTo: <sip:carol@{DOMAIN}>\r\nCall-ID: call-{tag}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:dave@{ca}>\r\nContent-Length: 0\r\n\r\n"
        );
        caller.send_to(invite.as_bytes(), c.sip).unwrap();
        let mut from_edges = Vec::new();
        let mut answered = false;
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline && !answered {
            if let Ok((n, src)) = leaf.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                // The unanswered fork of an earlier call retransmits its
                // INVITE: only this call's counts.
                if !text.starts_with("INVITE")
                    || !text.contains(&format!("Call-ID: call-{tag}\r\n"))
                {
                    continue;
                }
                from_edges.push(src);
                let ok = ringmesh_test_support::sip::ok_for(
                    &text,
                    &format!("carol{tag}"),
                    &format!("sip:carol@{me}"),
                );
                leaf.send_to(ok.as_bytes(), src).unwrap();
                answered = true;
            }
        }
        // The caller must see the 200.
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Ok((n, _)) = caller.recv_from(&mut buf)
                && status_of(&buf[..n]) == Some(200)
            {
                return from_edges;
            }
        }
        panic!("caller never got a 200 (edges that sent INVITEs: {from_edges:?})");
    };
    let first = call("c1");
    assert!(!first.is_empty());
    stop(a.pid, Signal::SIGKILL);
    wait_gone(a.pid);
    wait_until("the farm saw sn1 go", Duration::from_secs(60), || {
        metric(c, "ringmesh_overlay_ring_size") == Some(2.0)
    });
    let second = call("c2");
    assert!(
        second.iter().all(|e| *e == b.sip),
        "after sn1 died the call came through sn2: {second:?}"
    );
    let _ = udp_exchange;
}

/// A process whose certificate comes from another CA cannot join.
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn a_node_with_a_foreign_certificate_cannot_join() {
    let farm = common::start_farm(&["--nodes", "3", "--auth", "none"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let other = ringmesh_enrollment::ca::Ca::generate("not the farm").unwrap();
    let node_dir = dir.path().join("intruder");
    ringmesh_enrollment::ca::provision_node(&node_dir, "intruder", &other, &[]).unwrap();
    std::fs::copy(
        farm.dir.path().join("sn0").join("farm.secret"),
        node_dir.join("farm.secret"),
    )
    .unwrap();
    let seed = farm.nodes[0]
        .argv
        .iter()
        .position(|a| a == "--overlay")
        .map(|i| farm.nodes[0].argv[i + 1].clone())
        .unwrap();
    let log = std::fs::File::create(dir.path().join("intruder.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args([
            "supernode",
            "--name",
            "intruder",
            "--auth",
            "none",
            "--sip",
            "udp:127.0.0.1:0",
        ])
        .args([
            "--overlay",
            "127.0.0.1:0",
            "--seed",
            &seed,
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(&node_dir)
        .env("RINGMESH_LISTENING_FILE", dir.path().join("intruder.json"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let refused = || -> f64 {
        farm.nodes
            .iter()
            .map(|n| {
                metric(n, "ringmesh_overlay_link_refusals_total{reason=\"tls\"").unwrap_or(0.0)
            })
            .sum()
    };
    wait_until(
        "the farm refuses the intruder's link",
        Duration::from_secs(30),
        || refused() >= 1.0,
    );
    let announced: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("intruder.json")).unwrap())
            .unwrap();
    let metrics: SocketAddr = announced["metrics"].as_str().unwrap().parse().unwrap();
    let intruder_ready = http_get(metrics, "/readyz").0;
    stop(child.id(), Signal::SIGTERM);
    let _ = child.wait();
    assert_ne!(intruder_ready, 200, "the intruder must not join");
    for n in &farm.nodes {
        assert_eq!(
            metric(n, "ringmesh_overlay_ring_size"),
            Some(3.0),
            "{} still sees 3 members",
            n.name
        );
    }
}

/// Caller and callee behind one flow (one UA calling itself, or two UAs
/// behind one NAT binding): in-dialog requests still reach the other end.
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn a_dialog_whose_two_ends_share_one_flow() {
    let farm = common::start_farm(&["--nodes", "1", "--auth", "none"], &[]);
    let ua = UdpSocket::bind("127.0.0.1:0").unwrap();
    ua.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = ua.local_addr().unwrap();
    let node = farm.sip();
    let send_recv = |m: &str| -> String {
        ua.send_to(m.as_bytes(), node).unwrap();
        let mut buf = [0u8; 8192];
        loop {
            let (n, _) = ua.recv_from(&mut buf).expect("an answer");
            let t = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !t.starts_with("SIP/2.0 100") {
                return t;
            }
        }
    };
    let reg = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhr1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:erin@{DOMAIN}>;tag=r\r\nTo: <sip:erin@{DOMAIN}>\r\nCall-ID: hp-reg\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:erin@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    assert!(send_recv(&reg).starts_with("SIP/2.0 200"));
    let invite = format!(
        "INVITE sip:erin@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhr2;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:erin@{DOMAIN}>;tag=caller\r\nTo: <sip:erin@{DOMAIN}>\r\nCall-ID: hp-call\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:erin@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    // The INVITE comes back to us as the callee.
    let incoming = send_recv(&invite);
    assert!(incoming.starts_with("INVITE "), "{incoming}");
    let rr: Vec<&str> = incoming
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .collect();
    let ok = ringmesh_test_support::sip::ok_for(&incoming, "callee", &format!("sip:erin@{me}"));
    let answer = send_recv(&ok);
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "the caller side gets the 200: {answer}"
    );
    // The caller's route set: the Record-Route values reversed.
    let mut routes: Vec<String> = rr
        .iter()
        .flat_map(|l| l.trim_start_matches("Record-Route:").split(','))
        .map(|r| r.trim().to_string())
        .collect();
    routes.reverse();
    let bye = format!(
        "BYE sip:erin@{me} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhr3;rport\r\nMax-Forwards: 70\r\n\
         Route: {}\r\nFrom: <sip:erin@{DOMAIN}>;tag=caller\r\nTo: <sip:erin@{DOMAIN}>;tag=callee\r\nCall-ID: hp-call\r\n\
         CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        routes.join(", ")
    );
    let at_callee = send_recv(&bye);
    assert!(
        at_callee.starts_with("BYE "),
        "the BYE reaches the callee end of the same flow: {at_callee}"
    );
}

/// A node added later, given its seed as a host name (as the Helm chart
/// does with the pods' DNS names) and its own name among the seeds (every
/// pod of a StatefulSet gets the same list), enrolls with `ringmesh enroll`
/// (the chart's init container; the supernode then runs without the
/// bootstrap token) and joins the ring.
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn a_node_seeded_by_host_name_joins() {
    let farm = common::start_farm(&["--nodes", "2", "--auth", "none"], &[]);
    let seed_port = farm.nodes[0]
        .argv
        .iter()
        .position(|a| a == "--overlay")
        .map(|i| {
            farm.nodes[0].argv[i + 1]
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sn9.log");
    // Its own overlay address is among its seeds, so it is known in
    // advance: ports the kernel says are free now.
    let (sip, overlay, metrics) = (free_sip_port(), free_sip_port(), free_port());
    let mut argv: Vec<String> = [
        "supernode",
        "--name",
        "sn9",
        "--auth",
        "none",
        "--sip",
        &format!("udp:127.0.0.1:{sip}"),
        "--overlay",
        &format!("127.0.0.1:{overlay}"),
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--seed",
        &format!("localhost:{seed_port}"),
        "--seed",
        &format!("localhost:{overlay}"),
        "--enrollment",
        &farm.enrollment,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node_dir = dir.path().join("sn9");
    let enroll = |data: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ringmesh"))
            .args(["enroll", "--enrollment", &farm.enrollment, "--name", "sn9"])
            .arg("--bootstrap-token-file")
            .arg(farm.dir.path().join("bootstrap.token"))
            .arg("--data")
            .arg(data)
            .output()
            .unwrap()
    };
    let out = enroll(&node_dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("enrolled as node"),
        "{out:?}"
    );
    let again = enroll(&node_dir);
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("already"),
        "a restarted init container enrolls nothing twice: {again:?}"
    );
    argv.push("--data".into());
    argv.push(node_dir.display().to_string());
    let out = std::fs::File::create(&log).unwrap();
    let _node = Owned(
        Command::new(env!("CARGO_BIN_EXE_ringmesh"))
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics));
    let ring_size = |addr: SocketAddr| {
        http_get(addr, "/metrics")
            .1
            .lines()
            .find(|l| l.starts_with("ringmesh_overlay_ring_size"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    wait_until("sn9 joined by name", Duration::from_secs(60), || {
        http_get(metrics, "/readyz").0 == 200 && ring_size(metrics) == Some(3.0)
    });
    for n in &farm.nodes {
        wait_until(
            &format!("{} sees sn9", n.name),
            Duration::from_secs(20),
            || metric(n, "ringmesh_overlay_ring_size") == Some(3.0),
        );
    }
}

/// An INVITE to bob from `from`'s phone at `me`; `call` names its Call-ID,
/// branch and From tag.
fn invite_bob(me: SocketAddr, from: &str, call: &str) -> String {
    format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@{DOMAIN}>;tag={call}\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{me}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Registers bob's phone, the socket `bob`, through `node`.
fn register_bob(bob: &UdpSocket, node: SocketAddr) {
    let me = bob.local_addr().unwrap();
    let reg = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbob;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=r\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: bob-reg\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:bob@{me}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    bob.send_to(reg.as_bytes(), node).unwrap();
    let mut buf = [0u8; 8192];
    let (n, _) = bob.recv_from(&mut buf).expect("an answer to the REGISTER");
    assert_eq!(
        status_of(&buf[..n]),
        Some(200),
        "bob registers through {node}"
    );
}

/// A supernode stopped with SIGTERM answers every call the others routed
/// to it, including those they sent after its drain began and before they
/// heard that it leaves; once it is gone, calls for its callee get 480
/// with Retry-After. None is left without an answer (a stopping node once
/// dropped what reached it after its last transaction ended, and the
/// caller's supernode waited for a response that never came).
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn calls_toward_a_stopping_node_are_all_answered() {
    let farm = common::start_farm(&["--nodes", "3", "--auth", "none"], &[]);
    let (caller_node, callee_node) = (&farm.nodes[0], &farm.nodes[1]);

    // bob's phone, registered through sn1, is busy: it answers every
    // INVITE 486 at once.
    let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
    bob.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    register_bob(&bob, callee_node.sip);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let phone = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = bob.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("INVITE ") {
                    let busy = ringmesh_test_support::sip::ok_for(&text, "busy", "sip:bob@x")
                        .replacen("SIP/2.0 200 OK", "SIP/2.0 486 Busy Here", 1);
                    let _ = bob.send_to(busy.as_bytes(), from);
                }
            }
        })
    };

    // alice calls bob through sn0 every 4 ms for 2.4 s. 0.4 s in, sn1 is
    // told to stop while sn0 is frozen for 0.2 s: the calls that wait for
    // sn0 meanwhile reach it with sn1's notice that it leaves, so some go
    // to sn1 during its drain, as on a busy farm.
    let alice = UdpSocket::bind("127.0.0.1:0").unwrap();
    alice.set_nonblocking(true).unwrap();
    let me = alice.local_addr().unwrap();
    let mut finals: HashMap<String, String> = HashMap::new();
    let take = |alice: &UdpSocket, finals: &mut HashMap<String, String>| {
        let mut buf = [0u8; 8192];
        while let Ok((n, _)) = alice.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("SIP/2.0 100") {
                continue;
            }
            let call = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .unwrap_or_default()
                .to_string();
            finals.entry(call).or_insert(text);
        }
    };
    let started = Instant::now();
    let mut sent = 0;
    let (mut stopped, mut thawed) = (false, false);
    while started.elapsed() < Duration::from_millis(2400) {
        if !stopped && started.elapsed() >= Duration::from_millis(400) {
            stop(caller_node.pid, Signal::SIGSTOP);
            stop(callee_node.pid, Signal::SIGTERM);
            stopped = true;
        }
        if stopped && !thawed && started.elapsed() >= Duration::from_millis(600) {
            stop(caller_node.pid, Signal::SIGCONT);
            thawed = true;
        }
        let invite = invite_bob(me, "alice", &format!("st-{sent}"));
        alice.send_to(invite.as_bytes(), caller_node.sip).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(4));
        take(&alice, &mut finals);
    }
    // A call parked for bob's gone supernode waits 3 s for it to come back.
    alice.set_nonblocking(false).unwrap();
    alice
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while finals.len() < sent && Instant::now() < until {
        take(&alice, &mut finals);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    phone.join().unwrap();
    wait_gone(callee_node.pid);

    let mut by_status: HashMap<String, usize> = HashMap::new();
    for text in finals.values() {
        let status = text.get(8..11).unwrap_or("?").to_string();
        let retry = text.lines().any(|l| l.starts_with("Retry-After:"));
        assert!(
            status == "486" || (matches!(status.as_str(), "480" | "503") && retry),
            "every call ends with bob's 486 or a temporary failure that asks to retry:\n{text}"
        );
        *by_status
            .entry(if retry {
                format!("{status} Retry-After")
            } else {
                status
            })
            .or_default() += 1;
    }
    eprintln!("{sent} calls: {by_status:?}");
    let missing: Vec<String> = (0..sent)
        .map(|i| format!("st-{i}"))
        .filter(|c| !finals.contains_key(c))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} calls got no final answer, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        by_status.get("486").copied().unwrap_or(0) > 0,
        "bob answered calls before and while sn1 drained: {by_status:?}"
    );
    assert!(
        farm.log(&callee_node.name).contains("handed_off=true"),
        "sn1 handed off before it exited:\n{}",
        farm.log(&callee_node.name)
    );
}

/// A supernode over its limits tells the other members, and they refuse
/// new calls for its phones at once (503 with Retry-After) instead of
/// sending them there to be refused or to time out.
#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm of up to five nodes"]
fn calls_for_phones_at_an_overloaded_node_are_refused_where_they_enter() {
    // 100 transactions at most (the least allowed): 50 calls held at sn1
    // (a server and a client transaction each) put it over.
    let farm = common::start_farm(
        &["--nodes", "2", "--auth", "none"],
        &[("RINGMESH_OVERLOAD_MAX_TRANSACTIONS", "100")],
    );
    let (entry, hot) = (&farm.nodes[0], &farm.nodes[1]);
    let phone = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let me = s.local_addr().unwrap();
        (s, me)
    };
    let final_answer = |s: &UdpSocket| -> String {
        let mut buf = [0u8; 8192];
        loop {
            let (n, _) = s.recv_from(&mut buf).expect("a final answer");
            let t = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !t.starts_with("SIP/2.0 1") {
                return t;
            }
        }
    };
    // bob's phone, registered through sn1, never answers.
    let (bob, _) = phone();
    register_bob(&bob, hot.sip);

    // carol, a phone of sn1, calls bob 55 times; the calls ring on (those
    // past the limit sn1 refuses itself).
    let (carol, carol_addr) = phone();
    for i in 0..55 {
        carol
            .send_to(
                invite_bob(carol_addr, "carol", &format!("ol-held-{i}")).as_bytes(),
                hot.sip,
            )
            .unwrap();
    }
    wait_until("sn1 says it is overloaded", Duration::from_secs(10), || {
        metric(hot, "ringmesh_overload_active") == Some(1.0)
            && metric(entry, "ringmesh_overlay_peers_overloaded") == Some(1.0)
    });

    // alice, at sn0, calls bob: sn0 answers at once, sn1 never sees it.
    let (alice, alice_addr) = phone();
    let started = Instant::now();
    alice
        .send_to(
            invite_bob(alice_addr, "alice", "ol-new").as_bytes(),
            entry.sip,
        )
        .unwrap();
    let answer = final_answer(&alice);
    eprintln!("answered in {:?}", started.elapsed());
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert!(
        answer.lines().any(|l| l.starts_with("Retry-After:")),
        "{answer}"
    );
    assert_eq!(
        metric(entry, "ringmesh_overload_peer_refusals_total"),
        Some(1.0)
    );
    let mut buf = [0u8; 8192];
    bob.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok((n, _)) = bob.recv_from(&mut buf) {
        let t = String::from_utf8_lossy(&buf[..n]);
        assert!(!t.contains("ol-new"), "the refused call reached bob:\n{t}");
    }
}
