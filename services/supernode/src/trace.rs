//! The live SIP trace: every message in and out of the SIP core, published
//! on a broadcast channel only while someone listens (the admin API's
//! `SipTrace`), with the credentials of every message redacted.

use bytes::Bytes;

/// One SIP message through the node.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    pub at_ms: u64,
    pub inbound: bool,
    pub transport: &'static str,
    pub remote: String,
    pub raw: Bytes,
}

/// The header names whose values carry credentials (no compact forms).
const CREDENTIAL_HEADERS: [&[u8]; 2] = [b"authorization", b"proxy-authorization"];

/// `head` (a message's start line and headers) with the credentials of
/// every Authorization and Proxy-Authorization header replaced: only the
/// scheme, `username` and `realm` stay, so a trace shows who tried without
/// giving a reader the digest response (enough for an offline password
/// guess) or a nonce to replay. Folded continuation lines of such a header
/// go too.
pub fn redact_credentials(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut in_credentials = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if folded && in_credentials {
            continue;
        }
        in_credentials = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            out.extend_from_slice(line);
            continue;
        };
        let name = line[..colon].trim_ascii();
        if folded
            || !CREDENTIAL_HEADERS
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        {
            out.extend_from_slice(line);
            continue;
        }
        in_credentials = true;
        let value = &line[colon + 1..];
        let scheme: &[u8] = value
            .trim_ascii_start()
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        out.extend_from_slice(&line[..colon + 1]);
        out.push(b' ');
        out.extend_from_slice(scheme);
        for param in [b"username".as_slice(), b"realm"] {
            if let Some(v) = param_value(value, param) {
                out.extend_from_slice(b" ");
                out.extend_from_slice(param);
                out.push(b'=');
                out.extend_from_slice(v);
                out.push(b',');
            }
        }
        out.extend_from_slice(b" credentials=\"redacted\"\r\n");
    }
    out
}

/// The raw value (quotes kept) of `name=` in a credentials header value.
fn param_value<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = value;
    while let Some(i) = rest.iter().position(|&b| b == b'=') {
        let key = rest[..i]
            .rsplit(|&b| b == b',' || b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        let after = &rest[i + 1..];
        let end = if after.first() == Some(&b'"') {
            after[1..]
                .iter()
                .position(|&b| b == b'"')
                .map_or(after.len(), |q| q + 2)
        } else {
            after
                .iter()
                .position(|&b| b == b',' || b.is_ascii_whitespace())
                .unwrap_or(after.len())
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(&after[..end]);
        }
        rest = &after[end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_the_rest_is_kept() {
        let head = b"REGISTER sip:ringmesh.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
Authorization: Digest username=\"alice\", realm=\"ringmesh.test\", nonce=\"abc\", uri=\"sip:ringmesh.test\",\r\n \
response=\"0123456789abcdef0123456789abcdef\", qop=auth, nc=00000001, cnonce=\"xyz\"\r\n\
proxy-authorization:Digest realm=\"ringmesh.test\",username=bob,response=\"ffff\"\r\n\
Subject: response=\"not a credential\"\r\n\
Content-Length: 0\r\n\r\n";
        let out = String::from_utf8(redact_credentials(head)).unwrap();
        for secret in ["0123456789abcdef", "nonce", "cnonce", "xyz", "ffff", "nc=0"] {
            assert!(!out.contains(secret), "{secret} left in:\n{out}");
        }
        assert!(out.contains(
            "Authorization: Digest username=\"alice\", realm=\"ringmesh.test\", credentials=\"redacted\"\r\n"
        ), "{out}");
        assert!(out.contains(
            "proxy-authorization: Digest username=bob, realm=\"ringmesh.test\", credentials=\"redacted\"\r\n"
        ), "{out}");
        assert!(out.starts_with("REGISTER sip:ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"));
        assert!(
            out.contains("Subject: response=\"not a credential\"\r\n"),
            "other headers untouched"
        );
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn a_message_without_credentials_is_unchanged() {
        let head = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\n\r\n";
        assert_eq!(redact_credentials(head), head.to_vec());
    }
}
