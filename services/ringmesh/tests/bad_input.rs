//! Bad input gets a clear error and loses nothing: bad flags and config
//! keys exit non-zero naming the key; hostile TCP peers are cut off without
//! affecting others; wrong passwords are challenged again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{options_ok, status_of, tcp_exchange, udp_exchange};

fn ringmesh(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn bad_flags_and_config_keys_exit_non_zero_naming_the_key() {
    let (code, err) = ringmesh(&[
        "supernode",
        "--auth",
        "none",
        "--sip",
        "sctp:127.0.0.1:5060",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`sip`") && err.contains("sctp"), "{err}");

    let (code, err) = ringmesh(&[
        "supernode",
        "--auth",
        "none",
        "--min-expires",
        "100",
        "--max-expires",
        "10",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("max-expires"), "{err}");

    let (code, err) = ringmesh(&["supernode"]);
    assert_eq!(code, 2, "digest auth without a subscriber list is refused");
    assert!(err.contains("subscribers"), "{err}");

    let (code, err) = ringmesh(&["supernode", "--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(err.contains("--no-such-flag"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ringmesh.toml");
    std::fs::write(&cfg, "auth = \"none\"\nmin-expiry = 30\n").unwrap();
    let (code, err) = ringmesh(&["supernode", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("min-expiry"),
        "the unknown key is named: {err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(["supernode", "--auth", "none"])
        .env("RINGMESH_T1_MS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RINGMESH_T1_MS"));

    let (code, err) = ringmesh(&["dev", "--nodes", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--nodes"), "{err}");

    for bad in ["nameless", "load=localhost", "robot:load=127.0.0.1"] {
        let (code, err) = ringmesh(&["supernode", "--auth", "none", "--trusted", bad]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("`trusted`"), "the key is named: {err}");
        let (code, err) = ringmesh(&["dev", "--trusted", bad]);
        assert_ne!(code, 0);
        assert!(err.contains("--trusted"), "{err}");
    }
    let (code, err) = ringmesh(&["supernode", "--auth", "none", "--source-rate-burst", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("source-rate-burst"), "{err}");
    // Domains are a peer farm's, known by its certificate.
    let (code, err) = ringmesh(&[
        "supernode",
        "--auth",
        "none",
        "--trusted",
        "gateway:gw=127.0.0.1@b.test",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only a peer-farm"), "{err}");
    // A peer CA file with no certificate in it stops the node at start.
    let ca = ringmesh_enrollment::ca::Ca::generate("t").unwrap();
    let (cert, key) = ca.issue_sip("t", &["a.test"], &[], 1).unwrap();
    let certs = dir.path().join("sip-tls");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("tls.crt"), cert).unwrap();
    std::fs::write(certs.join("tls.key"), key).unwrap();
    let empty = dir.path().join("peers.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (code, err) = ringmesh(&[
        "supernode",
        "--auth",
        "none",
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--sip",
        "tls:127.0.0.1:0",
        "--tls-cert",
        certs.to_str().unwrap(),
        "--peer-ca",
        empty.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("peers.pem holds no CA certificate"), "{err}");
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn hostile_tcp_peers_are_cut_off_without_affecting_others() {
    let farm = common::start_farm(&[], &[("RINGMESH_TCP_MESSAGE_TIMEOUT", "2")]);
    let options = |tag: &str| {
        format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{tag}\r\nMax-Forwards: 70\r\n\
             From: <sip:t@127.0.0.1>;tag={tag}\r\nTo: <sip:{sip}>\r\nCall-ID: {tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            sip = farm.sip()
        )
    };

    // A peer that starts a message and stalls.
    let mut staller = TcpStream::connect(farm.sip()).unwrap();
    staller
        .write_all(b"INVITE sip:bob@ringmesh.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;bra")
        .unwrap();
    // A peer that sends garbage with no end of header in sight.
    let mut garbage = TcpStream::connect(farm.sip()).unwrap();
    let junk = vec![b'x'; 70_000];
    let _ = garbage.write_all(&junk);

    // Meanwhile others are served.
    let (r, _) = tcp_exchange(
        farm.sip(),
        options("live1").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&r), Some(200));

    let started = Instant::now();
    for (name, mut s) in [("staller", staller), ("garbage", garbage)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "{name} must be disconnected");
        eprintln!("{name} cut off after {:?}", started.elapsed());
    }
    let (r, _) = tcp_exchange(
        farm.sip(),
        options("live2").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&r), Some(200));

    // An oversized message on a stream: 413, then the connection closes.
    let big = "OPTIONS sip:x@ringmesh.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbig\r\nFrom: <sip:a@b>;tag=1\r\n\
               To: <sip:x@ringmesh.test>\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\nContent-Length: 900000\r\n\r\n";
    let mut s = TcpStream::connect(farm.sip()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(big.as_bytes()).unwrap();
    let mut r = Vec::new();
    let closed = s.read_to_end(&mut r).is_ok();
    assert_eq!(status_of(&r), Some(413), "{}", String::from_utf8_lossy(&r));
    assert!(closed, "the connection is closed after the 413");
    assert!(options_ok(farm.sip()));
}

#[test]
#[ignore = "slow: runs a ringmesh dev farm (several processes)"]
fn malformed_responses_are_dropped_and_wrong_passwords_rechallenged() {
    let farm = common::start_farm(&[], &[]);
    let bad_response =
        b"SIP/2.0 999999 Nope\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKr\r\n\r\n";
    assert_eq!(
        udp_exchange(farm.sip(), bad_response, Duration::from_millis(500)),
        None
    );

    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreg{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@ringmesh.test>;tag=a\r\nTo: <sip:alice@ringmesh.test>\r\nCall-ID: wrongpw\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:alice@127.0.0.1:9>\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let r = udp_exchange(
        farm.sip(),
        register(1, "").as_bytes(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(status_of(&r), Some(401));
    let text = String::from_utf8_lossy(&r).to_string();
    let nonce = text
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let bogus = format!(
        "Authorization: Digest username=\"alice\", realm=\"ringmesh.test\", nonce=\"{nonce}\", uri=\"sip:ringmesh.test\", \
         response=\"00000000000000000000000000000000\", algorithm=MD5\r\n"
    );
    let r = udp_exchange(
        farm.sip(),
        register(2, &bogus).as_bytes(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(
        status_of(&r),
        Some(401),
        "a wrong password gets a new challenge"
    );
    assert!(String::from_utf8_lossy(&r).contains("WWW-Authenticate"));
    let alice_as_bob = bogus.replace("username=\"alice\"", "username=\"mallory\"");
    let r = udp_exchange(
        farm.sip(),
        register(3, &alice_as_bob).as_bytes(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(
        status_of(&r),
        Some(401),
        "an unknown user is challenged, not told it does not exist"
    );
    assert!(options_ok(farm.sip()));
}
