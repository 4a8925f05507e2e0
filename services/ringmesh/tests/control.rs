//! The control plane against real processes: every admin RPC and
//! every `ringmesh ctl` subcommand on a three-node `ringmesh dev` farm, a
//! password change and a barring reaching every supernode, revocation, and
//! a farm kept on a real etcd that keeps serving when etcd stops.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Etcd, ctl, ctl_with, register_with_password, sipp, sipp_dir, wait_until};

fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    common::metric_line(addr, name)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn every_admin_rpc_and_ctl_subcommand() {
    let farm = common::start_farm(&["--users", "20"], &[]);
    let admin = farm.nodes[0].admin.clone();
    let run = |extra: &[&str]| ctl_with(&farm, &[&["--admin", admin.as_str()][..], extra].concat());

    // Subscribers: add, get, list, set-password, bar, unbar, delete.
    let (code, out, err) = run(&[
        "subscriber",
        "add",
        "carol",
        "--public",
        "sip:carol@ringmesh.test",
        "--password",
        "pw1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["--json", "subscriber", "get", "carol"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["private_id"], "carol");
    let creds = &json(&out)["credentials"];
    assert_eq!(creds["realm"], "ringmesh.test");
    assert_eq!(creds["ha1_md5"], false, "an operator never reads HA1");
    // Provisioning speaks mutual TLS only: no certificate, no access.
    let (code, _, err) = ctl(&[
        "--provisioning",
        &farm.provisioning,
        "subscriber",
        "get",
        "carol",
    ]);
    assert_eq!(code, 2, "no operator certificate is a usage error: {err}");
    let plaintext = format!("http://{}", farm.provisioning);
    let (code, _, err) = ctl(&["--provisioning", &plaintext, "subscriber", "get", "carol"]);
    assert_eq!(code, 4, "plaintext to the TLS port: {err}");
    assert!(err.contains("mutual TLS"), "{err}");
    let (code, out, err) = run(&["--json", "subscriber", "get", "carol"]);
    assert_eq!(
        (code, json(&out)["private_id"].as_str()),
        (0, Some("carol")),
        "{err}"
    );
    let (code, out, _) = run(&["subscriber", "list", "--all"]);
    assert_eq!(code, 0);
    assert!(out.contains("carol") && out.contains("user19"), "{out}");
    assert_eq!(
        register_with_password(farm.nodes[1].sip, "carol", "pw1"),
        200
    );
    assert_eq!(
        run(&["subscriber", "set-password", "carol", "--password", "pw2"]).0,
        0
    );
    assert_eq!(
        run(&["subscriber", "bar", "carol", "--reason", "test"]).0,
        0
    );
    assert_eq!(run(&["subscriber", "unbar", "carol"]).0, 0);
    // Barring purged carol's binding: she registers again once unbarred.
    wait_until("carol registers again", Duration::from_secs(30), || {
        register_with_password(farm.nodes[1].sip, "carol", "pw2") == 200
    });
    let (code, _, err) = run(&["subscriber", "get", "nobody"]);
    assert_eq!(code, 3, "not found exits 3: {err}");

    // Admin reads.
    let (code, out, err) = run(&["--json", "status"]);
    assert_eq!(code, 0, "{err}");
    let st = json(&out);
    assert_eq!(st["state"], "alive");
    assert_eq!(st["alive_members"], 3);
    assert!(st["provisioning_connected"].as_bool().unwrap());
    let (code, out, _) = run(&["--json", "ring"]);
    assert_eq!(code, 0);
    let ring = json(&out);
    assert_eq!(ring["members"].as_array().unwrap().len(), 3);
    assert_eq!(ring["replication_factor"], 3);
    let (code, out, _) = run(&["--json", "lookup", "sip:carol@ringmesh.test"]);
    assert_eq!(code, 0);
    let l = json(&out);
    assert_eq!(l["replicas"].as_array().unwrap().len(), 3);
    assert_eq!(
        l["bindings"].as_array().unwrap().len(),
        1,
        "carol's binding: {l}"
    );
    assert!(
        !l["bindings"][0]["edge_node_id"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let (code, out, _) = run(&["--json", "bindings", "--all", "--page-size", "1"]);
    assert_eq!(code, 0);
    assert!(!json(&out)["bindings"].as_array().unwrap().is_empty());
    let (code, out, _) = run(&["bindings", "--aor", "sip:carol@ringmesh.test"]);
    assert_eq!(code, 0);
    assert!(out.contains("sip:carol@ringmesh.test"), "{out}");
    let other = farm.nodes[1].node_id.clone();
    let (code, out, err) = run(&["--json", "ping", &other, "--count", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        json(&out)["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lost"] == false)
    );
    for target in [other.as_str(), "sip:carol@ringmesh.test", &"ab".repeat(32)] {
        let (code, out, err) = run(&["--json", "trace", target]);
        assert_eq!(code, 0, "{err}");
        assert!(json(&out)["complete"].as_bool().unwrap(), "{out}");
    }
    // Bad arguments name the field and exit 2 or 1.
    let (code, _, err) = run(&["lookup", "not-a-uri"]);
    assert_ne!(code, 0);
    assert!(err.contains("aor"), "{err}");
    let (code, _, err) = run(&["ping", "zz"]);
    assert_ne!(code, 0);
    assert!(err.contains("node_id"), "{err}");

    // Live SIP trace: filtered by AOR, ends after four messages (a
    // REGISTER, its challenge, the authenticated REGISTER, its 200).
    let mut trace = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args([
            "ctl",
            "--admin",
            &admin,
            "--json",
            "sip-trace",
            "--aor",
            "sip:user3@ringmesh.test",
            "--max-messages",
            "4",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Register until the trace, once subscribed, shows user3's messages.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = trace.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    wait_until(
        "the SIP trace shows user3's REGISTER",
        Duration::from_secs(30),
        || {
            assert_eq!(
                register_with_password(farm.nodes[0].sip, "user3", "secret"),
                200
            );
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
                lines.push(json(&l));
            }
            lines.len() >= 4
        },
    );
    assert!(trace.wait().unwrap().success());
    assert_eq!(lines.len(), 4, "--max-messages 4");
    // The trace shows who authenticated, never the digest response.
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Authorization: Digest username=\"user3\"")
                && m.contains("credentials=\"redacted\"")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .all(|m| !m.contains("response=") && !m.contains("cnonce")),
        "{messages:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["call_id"].as_str().unwrap().starts_with("reg-user3")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["direction"] == "in"), "{lines:?}");

    // Regions and service discovery: bad input exits 2 (checked before
    // sending) or 1 (the server's INVALID_ARGUMENT), and changes nothing.
    assert_eq!(run(&["subscriber", "set-region", "carol", "EU West"]).0, 2);
    let (code, out, _) = run(&["--json", "subscriber", "set-region", "carol", "eu-west"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["region"], "eu-west");
    let uri = "turn:192.0.2.7:3478?transport=udp";
    for bad in [
        &[
            "service",
            "advertise",
            "turn",
            "192.0.2.7:3478",
            "--capacity",
            "9",
        ][..],
        &["service", "advertise", "Turn", uri, "--capacity", "9"],
        &["service", "advertise", "turn", uri, "--capacity", "0"],
        &[
            "service",
            "advertise",
            "turn",
            uri,
            "--capacity",
            "9",
            "--ttl",
            "7200",
        ],
        &[
            "service",
            "advertise",
            "turn",
            uri,
            "--capacity",
            "9",
            "--every",
            "30",
        ],
    ] {
        let (code, _, err) = run(bad);
        assert!(code == 1 || code == 2, "{bad:?}: {code} {err}");
        assert!(!err.is_empty(), "{bad:?} says why");
    }
    let list = |region: &str| {
        let (code, out, err) = run(&["--json", "service", "list", "turn", "--region", region]);
        assert_eq!(code, 0, "{err}");
        json(&out)["instances"].as_array().unwrap().clone()
    };
    assert!(list("").is_empty(), "nothing bad was written");
    let (code, _, err) = run(&[
        "service",
        "advertise",
        "turn",
        uri,
        "--region",
        "eu-west",
        "--capacity",
        "9",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list("eu-west")[0]["uri"], uri);
    assert_eq!(run(&["service", "withdraw", "turn", uri]).0, 0);
    assert!(list("").is_empty(), "withdrawn");

    // Presence rules: set, shown, and bad input refused.
    let bob = "sip:bob@ringmesh.test";
    let (code, _, err) = run(&["presence", "allow", bob, "sip:user1@ringmesh.test"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["--json", "presence", "show", bob]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["rules"][0]["watcher"], "sip:user1@ringmesh.test");
    assert_eq!(json(&out)["rules"][0]["decision"], "allow");
    let (code, _, err) = run(&["presence", "block", bob, "not a uri"]);
    assert_eq!(code, 1, "the server's INVALID_ARGUMENT: {err}");
    assert!(err.contains("watcher"), "{err}");
    assert_eq!(
        run(&["presence", "pending", bob, "sip:user1@ringmesh.test"]).0,
        0
    );
    let (_, out, _) = run(&["--json", "presence", "show", bob]);
    assert!(json(&out)["rules"].as_array().unwrap().is_empty(), "{out}");

    // Drain: sn2 hands off and leaves; the others see two members.
    let sn2 = farm.nodes[2].admin.clone();
    let (code, out, err) = ctl(&["--admin", &sn2, "--json", "drain"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["state"], "left");
    wait_until("sn0 sees sn2 gone", Duration::from_secs(30), || {
        metric(farm.nodes[0].metrics, "ringmesh_overlay_ring_size") == Some(2.0)
    });
    let (code, out, _) = run(&["--json", "lookup", "sip:carol@ringmesh.test"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["bindings"].as_array().unwrap().len(),
        1,
        "nothing lost by the drain"
    );
    assert_eq!(run(&["subscriber", "delete", "carol"]).0, 0);
    assert_eq!(run(&["subscriber", "get", "carol"]).0, 3);
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn password_changes_and_barring_reach_every_supernode() {
    // This test polls with wrong passwords on purpose; the brute-force guard
    // (tested on its own) would ban the pair, or the source after 20, before
    // a slow propagation is seen.
    let farm = common::start_farm(
        &[],
        &[
            ("RINGMESH_GUARD_PAIR_FAILURES", "0"),
            ("RINGMESH_GUARD_SOURCE_FAILURES", "0"),
        ],
    );
    for n in &farm.nodes {
        assert_eq!(
            register_with_password(n.sip, "alice", "secret"),
            200,
            "{}",
            n.name
        );
        assert_eq!(
            register_with_password(n.sip, "alice", "wrong"),
            401,
            "{}",
            n.name
        );
    }
    // A phone of alice's on TCP: the password change closes its flow, so
    // that it connects again and registers with the new password.
    let mut phone = std::net::TcpStream::connect(farm.nodes[1].sip).unwrap();
    assert_eq!(
        ringmesh_test_support::sip::register_over_tcp(&mut phone, "alice", "secret"),
        200
    );
    assert_eq!(
        ctl_with(
            &farm,
            &["subscriber", "set-password", "alice", "--password", "n3w"]
        )
        .0,
        0
    );
    let took = wait_until(
        "the new password works on every supernode",
        Duration::from_secs(30),
        || {
            farm.nodes
                .iter()
                .all(|n| register_with_password(n.sip, "alice", "n3w") == 200)
        },
    );
    eprintln!("password change visible on all 3 supernodes after {took:?}");
    phone
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        matches!(std::io::Read::read(&mut phone, &mut buf), Ok(0)),
        "the supernode closes the phone's connection"
    );
    let (_, out, _) = ctl(&[
        "--admin",
        &farm.nodes[0].admin,
        "--json",
        "lookup",
        "sip:alice@ringmesh.test",
    ]);
    assert!(
        !json(&out)["bindings"].as_array().unwrap().is_empty(),
        "alice is registered before she is barred: {out}"
    );
    for n in &farm.nodes {
        assert_eq!(
            register_with_password(n.sip, "alice", "secret"),
            401,
            "the old password is refused on {}",
            n.name
        );
    }
    assert_eq!(
        ctl_with(&farm, &["subscriber", "bar", "alice", "--reason", "fraud"]).0,
        0
    );
    let took = wait_until(
        "barring reaches every supernode",
        Duration::from_secs(30),
        || {
            farm.nodes
                .iter()
                .all(|n| register_with_password(n.sip, "alice", "n3w") == 403)
        },
    );
    eprintln!("barring visible on all 3 supernodes after {took:?}");
    // And alice's bindings are purged farm-wide: nobody can call her phones.
    let alice_bindings = || {
        let admin = &farm.nodes[0].admin;
        let (code, out, err) = ctl(&[
            "--admin",
            admin,
            "--json",
            "lookup",
            "sip:alice@ringmesh.test",
        ]);
        assert_eq!(code, 0, "{err}");
        json(&out)["bindings"].as_array().map_or(0, Vec::len)
    };
    let took = wait_until(
        "the barred subscriber's bindings are purged",
        Duration::from_secs(30),
        || alice_bindings() == 0,
    );
    eprintln!("bindings purged after {took:?}");
    // bob may not claim alice's AOR.
    assert_eq!(
        register_with_password(farm.nodes[0].sip, "bob", "secret"),
        200
    );
}

/// An unauthenticated MESSAGE from `from`, claiming a PSTN caller as a
/// gateway would, to a user nobody registered; the status it gets.
fn gateway_message(node: std::net::SocketAddr, from: std::net::IpAddr) -> Option<u16> {
    let n = ringmesh_test_support::rand_u64();
    let msg = format!(
        "MESSAGE sip:nobody@ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5080;branch=z9hG4bK{n:x}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+15550100@pstn.example>;tag={n:x}\r\nTo: <sip:nobody@ringmesh.test>\r\n\
         Call-ID: gw{n:x}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    );
    ringmesh_test_support::sip::udp_exchange_from(
        from,
        node,
        msg.as_bytes(),
        Duration::from_secs(5),
    )
    .and_then(|r| ringmesh_test_support::sip::status_of(&r))
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn trusted_elements_reach_every_supernode_and_leave_it() {
    let farm = common::start_farm(&[], &[]);
    let gw: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let all_answer = |want: u16| {
        farm.nodes
            .iter()
            .all(|n| gateway_message(n.sip, gw) == Some(want))
    };
    assert!(all_answer(407), "an unlisted host is a phone: challenged");
    // A typo that would trust the whole internet is refused before it is sent.
    let (code, _, err) = ctl_with(
        &farm,
        &["trusted", "add", "oops", "0.0.0.0/0", "--kind", "gateway"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = ctl_with(
        &farm,
        &[
            "trusted",
            "add",
            "pstn",
            &gw.to_string(),
            "--kind",
            "gateway",
            "--description",
            "PSTN gateway of the test",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let took = wait_until(
        "the gateway is trusted on every supernode",
        Duration::from_secs(30),
        // Unchallenged: a MESSAGE for no subscriber gets the 202 a kept
        // one gets (and is dropped).
        || all_answer(202),
    );
    eprintln!("trusted element in force on all 3 supernodes after {took:?}");
    // A phone beside it is still a phone.
    assert_eq!(
        gateway_message(farm.nodes[0].sip, "127.0.0.10".parse().unwrap()),
        Some(407)
    );
    let (code, out, _) = ctl_with(&farm, &["--json", "trusted", "list"]);
    assert_eq!(code, 0);
    let list = json(&out);
    assert_eq!(list["elements"][0]["name"], "pstn");
    assert_eq!(list["elements"][0]["kind"], "gateway");
    assert_eq!(list["elements"][0]["matcher"], "127.0.0.9");
    assert_eq!(
        ctl_with(
            &farm,
            &["trusted", "add", "pstn", "127.0.0.11", "--kind", "gateway"]
        )
        .0,
        1,
        "a name is taken once"
    );
    assert_eq!(ctl_with(&farm, &["trusted", "remove", "pstn"]).0, 0);
    assert_eq!(ctl_with(&farm, &["trusted", "get", "pstn"]).0, 3);
    let took = wait_until(
        "the removed gateway is a phone again everywhere",
        Duration::from_secs(30),
        || all_answer(407),
    );
    eprintln!("removal in force on all 3 supernodes after {took:?}");
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn a_revoked_node_cannot_stay_in_the_ring() {
    use ringmesh_proto::enrollment as pb;
    let farm = common::start_farm(&["--auth", "none"], &[]);
    let victim = farm.nodes[2].node_id.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Enrollment speaks TLS; the admin role comes from the certificate.
        let as_holder = |[ca, cert, key]: [String; 3]| {
            let enrollment = farm.enrollment.clone();
            async move {
                let files = ringmesh_enrollment::ca::TlsFiles {
                    ca: ca.into(),
                    cert: cert.into(),
                    key: key.into(),
                };
                let ch = tonic::transport::Endpoint::from_shared(format!("https://{enrollment}"))
                    .unwrap()
                    .tls_config(files.client().unwrap())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                pb::enrollment_client::EnrollmentClient::new(ch)
            }
        };
        let revoke = || {
            tonic::Request::new(pb::RevokeRequest {
                node_id: victim.clone(),
                ..Default::default()
            })
        };
        // An operator's certificate does not revoke.
        let mut ops = as_holder(farm.operator.clone()).await;
        let refused = ops.revoke(revoke()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let mut c = as_holder(farm.admin_cert.clone()).await;
        c.revoke(revoke()).await.unwrap();
        let r = c
            .get_revocations(pb::GetRevocationsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(r.revoked_node_ids.contains(&victim));
    });
    let took = wait_until(
        "the others drop the revoked node",
        Duration::from_secs(60),
        || {
            farm.nodes[..2]
                .iter()
                .all(|n| metric(n.metrics, "ringmesh_overlay_ring_size") == Some(2.0))
        },
    );
    eprintln!("revoked node out of the ring after {took:?}");
    // It stays out.
    std::thread::sleep(Duration::from_secs(8));
    for n in &farm.nodes[..2] {
        assert_eq!(
            metric(n.metrics, "ringmesh_overlay_ring_size"),
            Some(2.0),
            "{} still excludes it",
            n.name
        );
    }
    let refused: f64 = farm.nodes[..2]
        .iter()
        .map(|n| {
            metric(
                n.metrics,
                "ringmesh_overlay_link_refusals_total{reason=\"revoked\"",
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(
        refused >= 1.0,
        "its attempts to link again are refused and counted"
    );
    // Nor can it come back as a new node: the bootstrap token it enrolled
    // with is burned, whatever name it gives.
    let fresh = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args([
            "enroll",
            "--enrollment",
            &farm.enrollment,
            "--name",
            "sn-new",
        ])
        .arg("--bootstrap-token-file")
        .arg(farm.dir.path().join("bootstrap.token"))
        .arg("--data")
        .arg(fresh.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("burned"), "{out:?}");
    assert!(!fresh.path().join("node.crt").exists());
}

#[test]
#[ignore = "slow: needs etcd and a ringmesh dev farm"]
fn a_farm_on_etcd_keeps_serving_when_etcd_stops() {
    // etcd as a carrier runs it: TLS, client certificates, and each
    // component limited to its keys by `ringmesh etcd-auth`.
    use ringmesh_config::etcd::{ENROLLMENT_USER, PROVISIONING_USER, SUPERNODE_USER};
    let mut etcd = Etcd::start_secure(&[SUPERNODE_USER, PROVISIONING_USER, ENROLLMENT_USER]);
    let url = etcd.url();
    let certs = etcd.certs.as_ref().unwrap().dir.display().to_string();
    let auth = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .arg("etcd-auth")
        .args(etcd.client_args("root"))
        .output()
        .unwrap();
    assert!(auth.status.success(), "{auth:?}");
    let farm = common::start_farm(
        &["--etcd", &url, "--etcd-certs", &certs, "--users", "200"],
        &[],
    );
    wait_until("3 membership keys", Duration::from_secs(30), || {
        etcd.keys("/ringmesh/members/").len() == 3
    });
    assert!(
        !etcd
            .keys("/ringmesh/")
            .iter()
            .filter(|k| !k.starts_with("/ringmesh/members/"))
            .collect::<Vec<_>>()
            .is_empty(),
        "subscribers and the CA live in etcd"
    );

    // A killed node's membership key expires with its lease.
    let victim = farm.nodes[2].clone();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let took = wait_until(
        "the killed node's key expires",
        Duration::from_secs(40),
        || etcd.keys("/ringmesh/members/").len() == 2,
    );
    eprintln!("membership key of a killed node gone after {took:?}");
    assert!(
        !etcd
            .keys("/ringmesh/members/")
            .iter()
            .any(|k| k.ends_with(&victim.node_id))
    );

    // Warm the caches, then stop etcd: registrations and calls go on.
    for u in ["alice", "bob"] {
        assert_eq!(register_with_password(farm.nodes[0].sip, u, "secret"), 200);
        assert_eq!(register_with_password(farm.nodes[1].sip, u, "secret"), 200);
    }
    etcd.stop();
    wait_until("the nodes see etcd gone", Duration::from_secs(30), || {
        farm.nodes[..2]
            .iter()
            .all(|n| metric(n.metrics, "ringmesh_etcd_connected") == Some(0.0))
    });
    for n in &farm.nodes[..2] {
        assert_eq!(
            register_with_password(n.sip, "alice", "secret"),
            200,
            "registration on {} with etcd down",
            n.name
        );
    }
    let work = tempfile::tempdir().unwrap();
    let write_users = |names: &str, file: &str| {
        let out = Command::new(sipp_dir().join("gen_users.sh"))
            .args(["--names", names])
            .output()
            .unwrap();
        std::fs::write(work.path().join(file), out.stdout).unwrap();
    };
    write_users("bob", "bob.csv");
    write_users("alice", "alice.csv");
    let s = sipp_dir();
    let admin = farm.nodes[0].admin.clone();
    let bob_bindings = || -> usize {
        let (_, out, _) = ctl(&[
            "--admin",
            &admin,
            "--json",
            "lookup",
            "sip:bob@ringmesh.test",
        ]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["bindings"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let before = bob_bindings();
    let callee = std::thread::spawn({
        let (s, w, node) = (
            s.clone(),
            work.path().to_path_buf(),
            farm.nodes[1].sip.to_string(),
        );
        move || {
            sipp(
                &[
                    "-sf",
                    s.join("uas_reg.xml").to_str().unwrap(),
                    "-oocsf",
                    s.join("uas_answer.xml").to_str().unwrap(),
                    "-inf",
                    "bob.csv",
                    "-i",
                    "127.0.0.1",
                    "-m",
                    "1",
                    "-auth_uri",
                    "ringmesh.test",
                    &node,
                ],
                30,
                &w,
            )
        }
    });
    wait_until("the callee registered", Duration::from_secs(20), || {
        bob_bindings() > before
    });
    let caller = sipp(
        &[
            "-sf",
            s.join("uac_call.xml").to_str().unwrap(),
            "-inf",
            "alice.csv",
            "-s",
            "bob",
            "-auth_uri",
            "bob@ringmesh.test",
            "-i",
            "127.0.0.1",
            "-m",
            "1",
            "-d",
            "200",
            &farm.nodes[0].sip.to_string(),
        ],
        20,
        work.path(),
    );
    assert!(caller.success(), "a call across supernodes with etcd down");
    assert!(callee.join().unwrap().success());
    etcd.restart();
    wait_until("membership back in etcd", Duration::from_secs(30), || {
        etcd.keys("/ringmesh/members/").len() == 2
    });
}
