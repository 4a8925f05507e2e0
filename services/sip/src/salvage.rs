//! Answering a request that failed to parse (RFC 3261 §8.2, §16.3 step 1).
//!
//! A 400 must still echo Via, From, To, Call-ID and CSeq so the client can
//! match it, but those very headers may be what is broken. This module
//! copies them from the raw lines without validating them, and gives up
//! (so the caller drops the message) when there is nothing to echo.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ParseError, reason_phrase};
use crate::header::HeaderName;
use crate::scan;

/// The error response to send for a request that failed with `err`, or
/// `None` when the bytes are a response, not SIP at all, or lack the
/// headers a response must echo.
pub fn error_response(raw: &[u8], err: &ParseError) -> Option<Bytes> {
    let raw = &raw[raw.iter().position(|&c| c != b'\r' && c != b'\n')?..];
    let first_end = memchr::memchr(b'\n', raw)?;
    let start_line = &raw[..first_end];
    if start_line.len() >= 4 && start_line[..4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw.len(), |p| p + 2);
    let head = &raw[first_end + 1..head_end];
    let mut wanted: Vec<(HeaderName, &[u8])> = Vec::new();
    let mut i = 0;
    while i < head.len() {
        let next_nl =
            |from: usize| memchr::memchr(b'\n', &head[from..]).map_or(head.len(), |p| from + p);
        // A header line plus its folded continuation lines.
        let mut end = next_nl(i);
        while end + 1 < head.len() && matches!(head[end + 1], b' ' | b'\t') {
            end = next_nl(end + 1);
        }
        let line = &head[i..end];
        i = end + 1;
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = HeaderName::from_bytes(scan::trim(&line[..colon]));
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            wanted.push((name, scan::trim(&line[colon + 1..])));
        }
    }
    // Via and CSeq are what a client matches a response with; From, To and
    // Call-ID are echoed when present (RFC 4475 insuf lacks them and still
    // deserves its 400).
    for n in [HeaderName::Via, HeaderName::CSeq] {
        if !wanted.iter().any(|(h, _)| *h == n) {
            return None;
        }
    }
    let mut out = BytesMut::with_capacity(512);
    let _ = write!(
        out,
        "SIP/2.0 {} {}\r\n",
        err.status,
        reason_phrase(err.status)
    );
    for (name, value) in &wanted {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        if *name == HeaderName::To && !contains_tag(value) {
            out.put_slice(b";tag=rm-err");
        }
        out.put_slice(b"\r\n");
    }
    let _ = write!(
        out,
        "Warning: 399 ringmesh \"{}\"\r\nContent-Length: 0\r\n\r\n",
        err.detail
    );
    Some(out.freeze())
}

fn contains_tag(v: &[u8]) -> bool {
    let after = v.iter().rposition(|&c| c == b'>').map_or(v, |p| &v[p..]);
    after.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn echoes_broken_headers() {
        let raw = b"INVITE sip:user@example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\nFrom: sip:caller@example.net;tag=134161461246\r\nMax-Forwards: 7\r\nCall-ID: badinv01.0ha0isndaksdjasdf3234nas\r\nCSeq: 8 INVITE\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n\r\n";
        let err = Message::parse(Bytes::from_static(raw)).unwrap_err();
        let resp = error_response(raw, &err).unwrap();
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n"));
        assert!(text.contains("To: sip:j.user@example.com;tag=rm-err\r\n"));
        assert!(text.contains("CSeq: 8 INVITE\r\n"));
    }

    #[test]
    fn folded_values_and_giving_up() {
        let raw = b"OPTIONS sip:x SIP/7.0\r\nVia: SIP/7.0/UDP\r\n c.example.com;branch=z9hG4bKkdjuw\r\nFrom: a <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: v\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let err = ParseError {
            status: 505,
            detail: "unsupported SIP version",
        };
        let text = String::from_utf8(error_response(raw, &err).unwrap().to_vec()).unwrap();
        assert!(text.starts_with("SIP/2.0 505 Version Not Supported"));
        assert!(
            text.contains("Via: SIP/7.0/UDP\r\n c.example.com;branch=z9hG4bKkdjuw\r\n"),
            "{text}"
        );
        assert_eq!(
            error_response(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", &err),
            None,
            "responses are dropped"
        );
        assert_eq!(
            error_response(b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n", &err),
            None,
            "no Via to answer on"
        );
        let insuf = error_response(
            b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKi\r\n\r\n",
            &err,
        );
        assert!(
            insuf.is_some_and(|r| r.starts_with(b"SIP/2.0 505")),
            "Via and CSeq are enough"
        );
        assert_eq!(error_response(b"\x00\x01garbage", &err), None);
    }
}
