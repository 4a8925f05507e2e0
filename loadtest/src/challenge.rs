//! Answering digest challenges (401 `WWW-Authenticate`, 407
//! `Proxy-Authenticate`) as a handset does.
//!
//! The challenge parameters are read here; every hash comes from
//! [`ringmesh_sip::digest`] ([`Ha1`], [`response_hex`]). Among several
//! challenges (RFC 8760 §2.4: one per algorithm, in the server's order of
//! preference) the first SHA-256 one is taken, else the first MD5 one;
//! other algorithms are skipped.

use ringmesh_sip::digest::{Algorithm, Ha1, ResponseParams, response_hex};
use ringmesh_sip::{HeaderName, Message};

/// One usable challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: Vec<u8>,
    pub nonce: Vec<u8>,
    pub opaque: Option<Vec<u8>>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth`.
    pub qop_auth: bool,
}

/// Parses one `Digest ...` challenge value. `None` for another scheme, a
/// malformed value, or an algorithm we do not support.
pub fn parse(value: &[u8]) -> Option<Challenge> {
    let s = trim(value);
    let rest = strip_prefix_ci(s, b"Digest")?;
    if !rest.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
        return None;
    }
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = Some(Algorithm::Md5);
    let mut qop_auth = false;
    for (name, v) in auth_params(rest)? {
        let v = unquote(v);
        if name.eq_ignore_ascii_case(b"realm") {
            realm = Some(v);
        } else if name.eq_ignore_ascii_case(b"nonce") {
            nonce = Some(v);
        } else if name.eq_ignore_ascii_case(b"opaque") {
            opaque = Some(v);
        } else if name.eq_ignore_ascii_case(b"algorithm") {
            algorithm = Algorithm::parse(&v);
        } else if name.eq_ignore_ascii_case(b"qop") {
            qop_auth = v
                .split(|c| *c == b',')
                .any(|q| trim(q).eq_ignore_ascii_case(b"auth"));
        }
    }
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        algorithm: algorithm?,
        qop_auth,
    })
}

/// The challenge to answer in a 401 (`proxy == false`) or 407: the first
/// SHA-256 one, else the first MD5 one.
pub fn choose(msg: &Message, proxy: bool) -> Option<Challenge> {
    let name = if proxy {
        HeaderName::ProxyAuthenticate
    } else {
        HeaderName::WwwAuthenticate
    };
    let mut md5 = None;
    for v in msg.header_lines(name) {
        if let Some(c) = parse(v) {
            if matches!(c.algorithm, Algorithm::Sha256 | Algorithm::Sha256Sess) {
                return Some(c);
            }
            if md5.is_none() {
                md5 = Some(c);
            }
        }
    }
    md5
}

/// What a credentials line needs besides the challenge.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub username: &'a [u8],
    pub password: &'a [u8],
    pub method: &'a [u8],
    /// The digest-uri: the Request-URI as sent.
    pub uri: &'a [u8],
    /// Nonce count for this nonce (1 for the first use).
    pub nc: u32,
    pub cnonce: &'a [u8],
}

/// Appends `\r\nAuthorization: Digest ...` (or `Proxy-Authorization` with
/// `proxy`), ready for a template's extra-lines field.
pub fn write_credentials(out: &mut Vec<u8>, ch: &Challenge, a: &Answer<'_>, proxy: bool) {
    let ha1 = Ha1::compute(a.username, &ch.realm, a.password);
    let nc = format!("{:08x}", a.nc);
    let qop = ch.qop_auth.then_some(&b"auth"[..]);
    let response = response_hex(
        &ha1,
        &ResponseParams {
            algorithm: ch.algorithm,
            nonce: &ch.nonce,
            cnonce: a.cnonce,
            nc: nc.as_bytes(),
            qop,
            method: a.method,
            uri: a.uri,
        },
    );
    out.extend_from_slice(if proxy {
        b"\r\nProxy-Authorization: Digest username=\""
    } else {
        b"\r\nAuthorization: Digest username=\""
    });
    out.extend_from_slice(a.username);
    out.extend_from_slice(b"\", realm=\"");
    out.extend_from_slice(&ch.realm);
    out.extend_from_slice(b"\", nonce=\"");
    out.extend_from_slice(&ch.nonce);
    out.extend_from_slice(b"\", uri=\"");
    out.extend_from_slice(a.uri);
    out.extend_from_slice(b"\", response=\"");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b"\", algorithm=");
    out.extend_from_slice(ch.algorithm.as_str().as_bytes());
    if ch.qop_auth {
        out.extend_from_slice(b", qop=auth, nc=");
        out.extend_from_slice(nc.as_bytes());
        out.extend_from_slice(b", cnonce=\"");
        out.extend_from_slice(a.cnonce);
        out.push(b'"');
    }
    if let Some(o) = &ch.opaque {
        out.extend_from_slice(b", opaque=\"");
        out.extend_from_slice(o);
        out.push(b'"');
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn strip_prefix_ci<'a>(s: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)).then(|| &s[p.len()..])
}

/// `name=value` pairs separated by commas; values are tokens or quoted
/// strings (which may contain commas).
fn auth_params(s: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && (s[i] == b',' || s[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let ns = i;
        while i < s.len() && s[i] != b'=' && s[i] != b',' && !s[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = &s[ns..i];
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= s.len() || s[i] != b'=' || name.is_empty() {
            return None;
        }
        i += 1;
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        let vs = i;
        if i < s.len() && s[i] == b'"' {
            i += 1;
            loop {
                match s.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            while i < s.len() && s[i] != b',' && !s[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push((name, &s[vs..i.min(s.len())]));
    }
    Some(out)
}

fn unquote(v: &[u8]) -> Vec<u8> {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        let inner = &v[1..v.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            if inner[i] == b'\\' && i + 1 < inner.len() {
                i += 1;
            }
            out.push(inner[i]);
            i += 1;
        }
        out
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_sip::DigestAuth;
    use ringmesh_sip::digest::{Credentials, Verdict};

    const REALM: &[u8] = b"ringmesh.test";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn parses_quoted_params_with_commas() {
        let c = parse(br#"Digest realm="a,b", nonce="n\"1", algorithm=SHA-256, qop="auth,auth-int", opaque="o""#).unwrap();
        assert_eq!(c.realm, b"a,b");
        assert_eq!(c.nonce, b"n\"1");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.qop_auth);
        assert_eq!(c.opaque.as_deref(), Some(&b"o"[..]));
        assert!(parse(b"Basic realm=\"x\"").is_none());
        assert!(parse(b"Digest realm=\"x\", nonce=\"y\", algorithm=SHA-512-256").is_none());
        let md5 = parse(b"Digest realm=x,nonce=y").unwrap();
        assert_eq!(md5.algorithm, Algorithm::Md5);
        assert!(!md5.qop_auth);
    }

    /// Our answer verifies against the supernode's own digest code, for
    /// both algorithms, and SHA-256 is preferred when offered.
    #[test]
    fn answers_verify_with_ringmesh_sip() {
        for algs in [
            vec![Algorithm::Sha256, Algorithm::Md5],
            vec![Algorithm::Md5, Algorithm::Sha256],
            vec![Algorithm::Md5],
        ] {
            let mut auth = DigestAuth::new(b"farm secret", 300, 7).with_algorithms(&algs);
            let req = b"REGISTER sip:ringmesh.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bKx\r\nFrom: <sip:user1@ringmesh.test>;tag=a\r\nTo: <sip:user1@ringmesh.test>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
            let msg = Message::parse(bytes::Bytes::from_static(req)).unwrap();
            let mut w = msg.response_writer(401, Some(b"t"));
            auth.write_challenges(&mut w, false, REALM, false, NOW);
            let resp = Message::parse(w.finish(b"")).unwrap();
            let ch = choose(&resp, false).unwrap();
            let want = if algs.contains(&Algorithm::Sha256) {
                Algorithm::Sha256
            } else {
                Algorithm::Md5
            };
            assert_eq!(ch.algorithm, want);
            let mut line = Vec::new();
            write_credentials(
                &mut line,
                &ch,
                &Answer {
                    username: b"user1",
                    password: b"secret",
                    method: b"REGISTER",
                    uri: b"sip:ringmesh.test",
                    nc: 1,
                    cnonce: b"abc",
                },
                false,
            );
            let value = line.strip_prefix(b"\r\nAuthorization: ").unwrap();
            let creds = Credentials::parse(value).unwrap();
            let ha1 = Ha1::compute(b"user1", REALM, b"secret");
            let v = auth.verify(
                &creds,
                REALM,
                &ringmesh_sip::Method::Register,
                b"sip:ringmesh.test",
                &ha1,
                NOW,
            );
            assert_eq!(v, Verdict::Valid, "{algs:?}");
        }
    }
}
