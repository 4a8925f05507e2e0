//! Raw SIP over UDP and TCP, as an attacker or a simple phone sends it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::rand_u64;

/// Sends one datagram and returns the first answer, if any, within `wait`.
pub fn udp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    udp_exchange_from("127.0.0.1".parse().unwrap(), to, msg, wait)
}

/// [`udp_exchange`] from a socket on `from` (another loopback address
/// plays another host: 127.0.0.0/8 is all loopback).
pub fn udp_exchange_from(
    from: std::net::IpAddr,
    to: SocketAddr,
    msg: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 65536];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// Sends bytes on a new TCP connection and collects what comes back: until
/// a whole SIP message arrived, the server closed, or `wait` passed without
/// data. Returns (bytes, closed).
pub fn tcp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(msg).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let limits = ringmesh_sip::Limits::default();
                if matches!(
                    ringmesh_sip::framing::next_frame(&out, &limits),
                    Ok(ringmesh_sip::framing::Frame::Message(_))
                ) {
                    return (out, false);
                }
            }
            Err(_) => return (out, false),
        }
    }
}

/// The status code of the first SIP response in `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(bytes.get(..12)?).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// An OPTIONS to the node itself; true when it answers 200 over UDP.
pub fn options_ok(to: SocketAddr) -> bool {
    let branch: u64 = rand_u64();
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch:x};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag={branch:x}\r\nTo: <sip:{to}>\r\nCall-ID: probe{branch:x}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    udp_exchange(to, msg.as_bytes(), Duration::from_secs(5)).and_then(|r| status_of(&r))
        == Some(200)
}

/// A REGISTER for `user` from a new UDP socket, answering the digest
/// challenge with `password` (MD5, qop=auth). Returns the final status.
pub fn register_with_password(node: SocketAddr, user: &str, password: &str) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    register_over("UDP", me, user, password, |m| {
        if let Some(m) = m {
            s.send_to(m, node).unwrap();
        }
        let mut buf = [0u8; 8192];
        let (n, _) = s.recv_from(&mut buf).expect("an answer to REGISTER");
        buf[..n].to_vec()
    })
}

/// [`register_with_password`] over an open TCP connection, which stays
/// open (and is the phone's flow).
pub fn register_over_tcp(conn: &mut TcpStream, user: &str, password: &str) -> u16 {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = conn.local_addr().unwrap();
    let mut pending = Vec::new();
    register_over("TCP", me, user, password, |m| {
        if let Some(m) = m {
            conn.write_all(m).unwrap();
        }
        let limits = ringmesh_sip::Limits::default();
        loop {
            if let Ok(ringmesh_sip::framing::Frame::Message(n)) =
                ringmesh_sip::framing::next_frame(&pending, &limits)
            {
                return pending.drain(..n).collect();
            }
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).expect("an answer to REGISTER");
            assert!(n > 0, "the connection closed before the answer");
            pending.extend_from_slice(&buf[..n]);
        }
    })
}

/// The REGISTER exchange of a phone at `me`: `exchange` sends a request
/// (if given) and returns the next message it gets.
fn register_over(
    transport: &str,
    me: SocketAddr,
    user: &str,
    password: &str,
    mut exchange: impl FnMut(Option<&[u8]>) -> Vec<u8>,
) -> u16 {
    use ringmesh_sip::digest::{Algorithm, Ha1, ResponseParams, response_hex};
    let domain = "ringmesh.test";
    let call = format!("reg-{user}-{:x}", rand_u64());
    let param = if transport == "TCP" {
        ";transport=tcp"
    } else {
        ""
    };
    let mut send = |cseq: u32, auth: &str| -> String {
        let m = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch=z9hG4bKp{cseq}{call};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=t{cseq}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}{param}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        let mut t = String::from_utf8_lossy(&exchange(Some(m.as_bytes()))).into_owned();
        while t.starts_with("SIP/2.0 100") {
            t = String::from_utf8_lossy(&exchange(None)).into_owned();
        }
        t
    };
    let first = send(1, "");
    if status_of(first.as_bytes()) != Some(401) {
        return status_of(first.as_bytes()).unwrap_or(0);
    }
    let nonce = first
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let uri = format!("sip:{domain}");
    let ha1 = Ha1::compute(user.as_bytes(), domain.as_bytes(), password.as_bytes());
    let resp = response_hex(
        &ha1,
        &ResponseParams {
            algorithm: Algorithm::Md5,
            nonce: nonce.as_bytes(),
            cnonce: b"abc123",
            nc: b"00000001",
            qop: Some(b"auth"),
            method: b"REGISTER",
            uri: uri.as_bytes(),
        },
    );
    let auth = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{domain}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc123\"\r\n"
    );
    status_of(send(2, &auth).as_bytes()).unwrap_or(0)
}

/// A callee's 200 OK to `invite` (its text): Via, From, Call-ID, CSeq and
/// Record-Route copied, the To given `to_tag`, and `contact` (a URI) as
/// the Contact.
pub fn ok_for(invite: &str, to_tag: &str, contact: &str) -> String {
    let keep: Vec<&str> = invite
        .lines()
        .filter(|l| {
            ["Via:", "From:", "Call-ID:", "CSeq:", "Record-Route:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .collect();
    let to = invite
        .lines()
        .find(|l| l.starts_with("To:"))
        .expect("a To header");
    format!(
        "SIP/2.0 200 OK\r\n{}\r\n{to};tag={to_tag}\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n",
        keep.join("\r\n")
    )
}
