//! The Via header (RFC 3261 §20.42, RFC 3581 rport).

use crate::scan::{self, Params};
use crate::uri::Host;

/// The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
pub const BRANCH_COOKIE: &[u8] = b"z9hG4bK";

/// One Via element (a header line may hold several, comma-separated).
#[derive(Debug, Clone)]
pub struct Via<'a> {
    raw: &'a [u8],
    protocol_name: &'a [u8],
    protocol_version: &'a [u8],
    transport: &'a [u8],
    host: Host<'a>,
    port: Option<u16>,
    params: &'a [u8],
}

impl<'a> Via<'a> {
    pub fn parse(s: &'a [u8]) -> Result<Via<'a>, &'static str> {
        let s = scan::trim(s);
        let mut i = 0;
        let part = |i: &mut usize, last: bool| -> Result<&'a [u8], &'static str> {
            let st = scan::skip_ws(s, *i);
            let e = scan::scan_token(s, st);
            if e == st {
                return Err("malformed Via sent-protocol");
            }
            *i = scan::skip_ws(s, e);
            if !last {
                if *i >= s.len() || s[*i] != b'/' {
                    return Err("malformed Via sent-protocol");
                }
                *i += 1;
            } else {
                *i = e;
            }
            Ok(&s[st..e])
        };
        let protocol_name = part(&mut i, false)?;
        let protocol_version = part(&mut i, false)?;
        let transport = part(&mut i, true)?;
        let hs = scan::skip_ws(s, i);
        if hs == i || hs >= s.len() {
            return Err("missing Via sent-by");
        }
        // sent-by = host [ COLON port ], with optional LWS around the colon.
        let mut he = hs;
        if s[hs] == b'[' {
            he = memchr::memchr(b']', &s[hs..]).ok_or("malformed IPv6 reference")? + hs + 1;
        } else {
            while he < s.len() && scan::is_hostchar(s[he]) {
                he += 1;
            }
        }
        let host = Host::parse(&s[hs..he])?;
        let mut j = scan::skip_ws(s, he);
        let mut port = None;
        if j < s.len() && s[j] == b':' {
            let ps = scan::skip_ws(s, j + 1);
            let mut pe = ps;
            while pe < s.len() && s[pe].is_ascii_digit() {
                pe += 1;
            }
            port = Some(
                scan::parse_u64(&s[ps..pe], u64::from(u16::MAX))
                    .filter(|&p| p > 0)
                    .ok_or("invalid port")? as u16,
            );
            j = pe;
        } else {
            j = he;
        }
        let params = &s[j..];
        let stop = scan::scan_params(params, 0)?;
        if scan::skip_ws(params, stop) != params.len() {
            return Err("garbage in Via");
        }
        let via = Via {
            raw: s,
            protocol_name,
            protocol_version,
            transport,
            host,
            port,
            params,
        };
        if let Some(b) = via.params().get("branch")
            && b.is_none_or(|b| b.is_empty() || b[0] == b'"')
        {
            return Err("invalid branch");
        }
        if let Some(r) = via.params().get("received") {
            Host::parse(r.ok_or("received without value")?)?;
        }
        if let Some(Some(r)) = via.params().get("rport") {
            scan::parse_u64(r, u64::from(u16::MAX)).ok_or("invalid rport")?;
        }
        Ok(via)
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// True when the sent-protocol is `SIP/2.0`.
    pub fn is_sip_2_0(&self) -> bool {
        self.protocol_name.eq_ignore_ascii_case(b"SIP") && self.protocol_version == b"2.0"
    }
    pub fn transport(&self) -> &'a [u8] {
        self.transport
    }
    pub fn host(&self) -> Host<'a> {
        self.host
    }
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }
    pub fn params_raw(&self) -> &'a [u8] {
        self.params
    }
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params().get("branch").flatten()
    }
    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > BRANCH_COOKIE.len() && b.starts_with(BRANCH_COOKIE))
    }
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params().get("received").flatten()
    }
    /// `None`: no rport; `Some(None)`: `;rport` (fill me in);
    /// `Some(Some(p))`: filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params().get("rport").map(|v| {
            v.and_then(|p| scan::parse_u64(p, u64::from(u16::MAX)))
                .map(|p| p as u16)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert!(v.is_sip_2_0());
        assert_eq!(v.transport(), b"UDP");
        assert_eq!(v.host().text, b"192.0.2.2");
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        assert!(!v.has_rfc3261_branch());

        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host().text, b"spindle.example.com");
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
        assert!(v.has_rfc3261_branch());
    }

    #[test]
    fn rport_received_ipv6() {
        let v = Via::parse(
            b"SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas;rport;received=192.0.2.1",
        )
        .unwrap();
        assert_eq!(v.port(), Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some(&b"192.0.2.1"[..]));
        let v = Via::parse(b"SIP/2.0/TCP h.example.com : 5061 ;rport=1234").unwrap();
        assert_eq!(v.port(), Some(5061));
        assert_eq!(v.rport(), Some(Some(1234)));
    }

    #[test]
    fn rejects() {
        for bad in [
            &b"SIP/2.0/UDP 192.0.2.15;;"[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0 192.0.2.1",
            b"SIP/2.0/UDP 192.0.2.1;branch=",
            b"SIP/2.0/UDP 192.0.2.1:0",
            b"SIP/2.0/UDP h;received=not..valid",
        ] {
            assert!(Via::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
