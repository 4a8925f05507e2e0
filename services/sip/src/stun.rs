//! STUN keep-alives on SIP's UDP flows (RFC 5626 §4.4.2, RFC 5389): a
//! phone behind NAT sends a Binding request on the same 5-tuple as its SIP
//! traffic, and learns from the answer's XOR-MAPPED-ADDRESS whether its
//! NAT binding changed. The server answers without authentication.
//!
//! [`classify`] tells a datagram that is STUN from one that is SIP (a STUN
//! message starts with two zero bits; SIP starts with a letter);
//! [`answer`] builds the response: a Binding success response, or a 400 or
//! 420 (unknown comprehension-required attribute) error response. Requests
//! that are not Binding requests, and indications, get nothing.

use std::net::SocketAddr;

/// The magic cookie of RFC 5389.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// Comprehension-optional attributes start here.
const OPTIONAL_ATTRIBUTES: u16 = 0x8000;

/// What a datagram on a SIP port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// A STUN message (RFC 5389 header, magic cookie).
    Stun,
    /// CRLF only: an RFC 5626 keep-alive with nothing to answer on UDP.
    Crlf,
    /// Binary that is neither (a control byte first): dropped.
    Junk,
    /// Anything else: parse it as SIP.
    Sip,
}

/// Classifies a datagram received on a SIP socket.
pub fn classify(data: &[u8]) -> Datagram {
    if data.iter().all(|&c| c == b'\r' || c == b'\n') {
        return Datagram::Crlf;
    }
    if data.len() >= HEADER
        && data[0] & 0xC0 == 0
        && u32::from_be_bytes([data[4], data[5], data[6], data[7]]) == MAGIC_COOKIE
    {
        return Datagram::Stun;
    }
    if data.first().is_some_and(|&c| c < 0x20) {
        return Datagram::Junk;
    }
    Datagram::Sip
}

/// The answer to a STUN message from `peer`, if it calls for one.
pub fn answer(req: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    if classify(req) != Datagram::Stun {
        return None;
    }
    let kind = u16::from_be_bytes([req[0], req[1]]);
    if kind != BINDING_REQUEST {
        // Indications and other methods: nothing to say.
        return None;
    }
    let txid: [u8; 12] = req[8..20].try_into().expect("20-byte header");
    let length = usize::from(u16::from_be_bytes([req[2], req[3]]));
    if length % 4 != 0 || HEADER + length != req.len() {
        return Some(error(txid, 400, "Bad Request", &[]));
    }
    // Walk the attributes: an unknown one the request says we must
    // understand is refused with 420 and its type (RFC 5389 §7.3.1).
    let mut unknown = Vec::new();
    let mut at = HEADER;
    while at < req.len() {
        if at + 4 > req.len() {
            return Some(error(txid, 400, "Bad Request", &[]));
        }
        let t = u16::from_be_bytes([req[at], req[at + 1]]);
        let len = usize::from(u16::from_be_bytes([req[at + 2], req[at + 3]]));
        let padded = (len + 3) & !3;
        if at + 4 + padded > req.len() {
            return Some(error(txid, 400, "Bad Request", &[]));
        }
        if t < OPTIONAL_ATTRIBUTES {
            unknown.push(t);
        }
        at += 4 + padded;
    }
    if !unknown.is_empty() {
        return Some(error(txid, 420, "Unknown Attribute", &unknown));
    }
    Some(message(
        BINDING_SUCCESS,
        txid,
        &[xor_mapped_address(peer, &txid)],
    ))
}

fn attribute(t: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + value.len() + 3);
    a.extend_from_slice(&t.to_be_bytes());
    a.extend_from_slice(&(value.len() as u16).to_be_bytes());
    a.extend_from_slice(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

fn xor_mapped_address(peer: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0u8];
    match peer {
        SocketAddr::V4(a) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(a.ip().octets().iter().zip(cookie).map(|(b, c)| b ^ c));
        }
        SocketAddr::V6(a) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(txid.iter());
            v.extend(a.ip().octets().iter().zip(key).map(|(b, c)| b ^ c));
        }
    }
    attribute(XOR_MAPPED_ADDRESS, &v)
}

fn error(txid: [u8; 12], code: u16, reason: &str, unknown: &[u16]) -> Vec<u8> {
    let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
    v.extend_from_slice(reason.as_bytes());
    let mut attrs = vec![attribute(ERROR_CODE, &v)];
    if !unknown.is_empty() {
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        attrs.push(attribute(UNKNOWN_ATTRIBUTES, &list));
    }
    message(BINDING_ERROR, txid, &attrs)
}

fn message(kind: u16, txid: [u8; 12], attrs: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = attrs.iter().map(Vec::len).sum();
    let mut m = Vec::with_capacity(HEADER + body);
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(body as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&txid);
    for a in attrs {
        m.extend_from_slice(a);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &[u8]) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(b"transaction1");
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn a_binding_request_gets_the_mapped_address() {
        let peer: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let r = answer(&request(&[]), peer).unwrap();
        // RFC 5769 §2.2: port 32853 and 192.0.2.1 XORed with the cookie.
        assert_eq!(&r[0..2], &[0x01, 0x01], "Binding success");
        assert_eq!(&r[2..4], &[0x00, 0x0c]);
        assert_eq!(&r[8..20], b"transaction1", "same transaction");
        assert_eq!(
            &r[20..],
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43
            ]
        );
        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let r6 = answer(&request(&[]), v6).unwrap();
        assert_eq!(r6.len(), 20 + 4 + 20);
        assert_eq!(r6[25], 0x02, "IPv6 family");
    }

    #[test]
    fn optional_attributes_pass_and_unknown_required_ones_get_420() {
        let peer: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        // SOFTWARE (0x8022, optional) with a 3-byte value, padded.
        let sw = [0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0];
        assert_eq!(answer(&request(&sw), peer).unwrap()[1], 0x01);
        // 0x0777 is comprehension-required and unknown.
        let odd = [0x07, 0x77, 0x00, 0x00];
        let r = answer(&request(&odd), peer).unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x11], "Binding error");
        assert_eq!(&r[20..22], &[0x00, 0x09]);
        assert_eq!(&r[26..28], &[4, 20], "420");
        assert!(r.windows(4).any(|w| w == [0x00, 0x0A, 0x00, 0x02]));
        // A length that lies: 400.
        let mut bad = request(&sw);
        bad[3] = 4;
        let r = answer(&bad, peer).unwrap();
        assert_eq!(&r[26..28], &[4, 0]);
    }

    #[test]
    fn what_is_not_a_binding_request_gets_nothing() {
        let peer: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut indication = request(&[]);
        indication[1] = 0x11;
        assert_eq!(answer(&indication, peer), None);
        assert_eq!(answer(b"OPTIONS sip:x SIP/2.0\r\n\r\n", peer), None);
        assert_eq!(classify(b"\r\n\r\n"), Datagram::Crlf);
        assert_eq!(classify(b"REGISTER sip:x SIP/2.0\r\n"), Datagram::Sip);
        assert_eq!(classify(&request(&[])), Datagram::Stun);
        let mut no_cookie = request(&[]);
        no_cookie[4] = 0;
        assert_eq!(
            classify(&no_cookie),
            Datagram::Junk,
            "RFC 3489 STUN is not answered"
        );
    }
}
