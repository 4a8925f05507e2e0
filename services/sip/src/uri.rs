//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), as borrowed views.
//!
//! [`Uri::parse`] validates the whole URI once and keeps slices of the
//! input; nothing is copied or unescaped until a caller asks for it.

use crate::scan;

/// URI schemes the proxy treats specially; anything else is opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Any other absolute URI (RFC 3261 lets To/From/Contact carry them).
    Other,
}

/// The syntactic kind of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    Name,
    Ipv4,
    /// An IPv6 reference; the text keeps its brackets.
    Ipv6,
}

/// A host as written in a URI or Via: a domain name, IPv4 address or
/// bracketed IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host<'a> {
    pub text: &'a [u8],
    pub kind: HostKind,
}

impl<'a> Host<'a> {
    /// Validates `s` as `host = hostname / IPv4address / IPv6reference`.
    pub fn parse(s: &'a [u8]) -> Result<Host<'a>, &'static str> {
        if s.is_empty() {
            return Err("empty host");
        }
        if s[0] == b'[' {
            if s.len() < 4 || s[s.len() - 1] != b']' {
                return Err("malformed IPv6 reference");
            }
            let inner = &s[1..s.len() - 1];
            let text = std::str::from_utf8(inner).map_err(|_| "malformed IPv6 reference")?;
            text.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "malformed IPv6 reference")?;
            return Ok(Host {
                text: s,
                kind: HostKind::Ipv6,
            });
        }
        if !s.iter().all(|&c| scan::is_hostchar(c)) {
            return Err("invalid character in host");
        }
        if s.iter().all(|&c| c.is_ascii_digit() || c == b'.') {
            let text = std::str::from_utf8(s).map_err(|_| "invalid IPv4 address")?;
            text.parse::<std::net::Ipv4Addr>()
                .map_err(|_| "invalid IPv4 address")?;
            return Ok(Host {
                text: s,
                kind: HostKind::Ipv4,
            });
        }
        if s[0] == b'.' || s[0] == b'-' || s.windows(2).any(|w| w == b"..") {
            return Err("invalid host name");
        }
        Ok(Host {
            text: s,
            kind: HostKind::Name,
        })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        let t = match self.kind {
            HostKind::Name => return None,
            HostKind::Ipv4 => self.text,
            HostKind::Ipv6 => &self.text[1..self.text.len() - 1],
        };
        std::str::from_utf8(t).ok()?.parse().ok()
    }

    /// Host names compare case-insensitively (RFC 3261 §19.1.4).
    pub fn eq_ignore_case(&self, other: &[u8]) -> bool {
        self.text.eq_ignore_ascii_case(other)
    }
}

/// A parsed URI. For `tel:` the number is in [`Uri::user`]; for other
/// schemes everything after the colon is in [`Uri::opaque`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    raw: &'a [u8],
    scheme: Scheme,
    scheme_text: &'a [u8],
    user: Option<&'a [u8]>,
    password: Option<&'a [u8]>,
    host: Option<Host<'a>>,
    port: Option<u16>,
    /// `;p1=v1;p2` including the leading `;`, or empty.
    params: &'a [u8],
    /// `h1=v1&h2=v2` without the leading `?`, or empty.
    headers: &'a [u8],
    opaque: &'a [u8],
}

impl<'a> Uri<'a> {
    /// Parses and validates an absolute URI.
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>, &'static str> {
        let colon = memchr::memchr(b':', raw).ok_or("URI without scheme")?;
        let scheme_text = &raw[..colon];
        if scheme_text.is_empty()
            || !scheme_text[0].is_ascii_alphabetic()
            || !scheme_text
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err("invalid URI scheme");
        }
        let rest = &raw[colon + 1..];
        let scheme = if scheme_text.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_text.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_text.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let mut uri = Uri {
            raw,
            scheme,
            scheme_text,
            user: None,
            password: None,
            host: None,
            port: None,
            params: b"",
            headers: b"",
            opaque: rest,
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => uri.parse_sip(rest)?,
            Scheme::Tel => uri.parse_tel(rest)?,
            Scheme::Other => {
                if rest.is_empty()
                    || rest
                        .iter()
                        .any(|&c| scan::is_ws(c) || !(0x21..=0x7e).contains(&c))
                {
                    return Err("invalid absolute URI");
                }
            }
        }
        Ok(uri)
    }

    fn parse_sip(&mut self, rest: &'a [u8]) -> Result<(), &'static str> {
        let mut hostport_start = 0;
        if let Some(at) = memchr::memchr(b'@', rest) {
            let userinfo = &rest[..at];
            let (user, password) = match memchr::memchr(b':', userinfo) {
                Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err("empty user part");
            }
            if !user.iter().all(|&c| scan::is_user(c) || c == b'%') || !scan::escapes_valid(user) {
                return Err("invalid character in URI user part");
            }
            if let Some(p) = password
                && (!p.iter().all(|&c| scan::is_password(c) || c == b'%')
                    || !scan::escapes_valid(p))
            {
                return Err("invalid character in URI password");
            }
            self.user = Some(user);
            self.password = password;
            hostport_start = at + 1;
        }
        let hp = &rest[hostport_start..];
        // hostport ends at the first ';' or '?' (neither can appear in a host).
        let end = hp
            .iter()
            .position(|&c| c == b';' || c == b'?')
            .unwrap_or(hp.len());
        let hostport = &hp[..end];
        let (host, port) = split_host_port(hostport)?;
        self.host = Some(Host::parse(host)?);
        self.port = port;
        let tail = &hp[end..];
        let q = memchr::memchr(b'?', tail).unwrap_or(tail.len());
        let params = &tail[..q];
        if !params.is_empty() {
            for p in params[1..].split(|&c| c == b';') {
                let (name, value) = match memchr::memchr(b'=', p) {
                    Some(e) => (&p[..e], Some(&p[e + 1..])),
                    None => (p, None),
                };
                let ok = |s: &[u8]| {
                    !s.is_empty()
                        && s.iter().all(|&c| scan::is_paramchar(c) || c == b'%')
                        && scan::escapes_valid(s)
                };
                if !ok(name) || value.is_some_and(|v| !ok(v)) {
                    return Err("invalid URI parameter");
                }
            }
        }
        self.params = params;
        if q < tail.len() {
            let headers = &tail[q + 1..];
            for h in headers.split(|&c| c == b'&') {
                let e = memchr::memchr(b'=', h).ok_or("URI header without '='")?;
                let (name, value) = (&h[..e], &h[e + 1..]);
                let ok = |s: &[u8]| {
                    s.iter()
                        .all(|&c| scan::is_hnv(c) || scan::is_unreserved(c) || c == b'%')
                        && scan::escapes_valid(s)
                };
                if name.is_empty() || !ok(name) || !ok(value) {
                    return Err("invalid URI header");
                }
            }
            self.headers = headers;
        }
        Ok(())
    }

    fn parse_tel(&mut self, rest: &'a [u8]) -> Result<(), &'static str> {
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        let number = &rest[..end];
        let digits = number.strip_prefix(b"+").unwrap_or(number);
        if digits.is_empty()
            || !digits.iter().all(|&c| {
                c.is_ascii_hexdigit() || matches!(c, b'*' | b'#' | b'-' | b'.' | b'(' | b')')
            })
            || !digits
                .iter()
                .any(|c| c.is_ascii_hexdigit() || matches!(c, b'*' | b'#'))
        {
            return Err("invalid telephone number");
        }
        let params = &rest[end..];
        if params
            .iter()
            .any(|&c| scan::is_ws(c) || !(0x21..=0x7e).contains(&c))
        {
            return Err("invalid tel URI parameter");
        }
        self.user = Some(number);
        self.params = params;
        Ok(())
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    pub fn scheme_text(&self) -> &'a [u8] {
        self.scheme_text
    }
    /// The user part, still escaped (see [`scan::unescape`]).
    pub fn user(&self) -> Option<&'a [u8]> {
        self.user
    }
    pub fn password(&self) -> Option<&'a [u8]> {
        self.password
    }
    /// The host of a SIP/SIPS URI.
    pub fn host(&self) -> Option<Host<'a>> {
        self.host
    }
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    /// The raw parameter section including its leading `;`.
    pub fn params_raw(&self) -> &'a [u8] {
        self.params
    }
    /// The raw header section without its leading `?`.
    pub fn headers_raw(&self) -> &'a [u8] {
        self.headers
    }
    /// Everything after `scheme:` for schemes this crate does not parse.
    pub fn opaque(&self) -> &'a [u8] {
        self.opaque
    }

    /// Iterates the URI parameters as (name, value) pairs.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let p = self.params;
        p.split(|&c| c == b';')
            .skip(1)
            .map(|kv| match memchr::memchr(b'=', kv) {
                Some(e) => (&kv[..e], Some(&kv[e + 1..])),
                None => (kv, None),
            })
    }

    /// The first parameter named `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// True for a loose-routing URI (`;lr`, RFC 3261 §19.1.1).
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }

    /// `transport` parameter, lower-cased comparisons are left to the caller.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param("transport").flatten()
    }

    pub fn is_sip_or_sips(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }
}

impl std::fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.raw))
    }
}

/// Splits `host[:port]`, honouring IPv6 brackets.
pub(crate) fn split_host_port(hp: &[u8]) -> Result<(&[u8], Option<u16>), &'static str> {
    let (host, port) = if hp.first() == Some(&b'[') {
        let close = memchr::memchr(b']', hp).ok_or("malformed IPv6 reference")?;
        match &hp[close + 1..] {
            [] => (hp, None),
            [b':', p @ ..] => (&hp[..=close], Some(p)),
            _ => return Err("garbage after IPv6 reference"),
        }
    } else {
        match memchr::memchr(b':', hp) {
            Some(c) => (&hp[..c], Some(&hp[c + 1..])),
            None => (hp, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            scan::parse_u64(p, u64::from(u16::MAX))
                .filter(|&v| v > 0)
                .ok_or("invalid port")? as u16,
        ),
        None => None,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u =
            Uri::parse(b"sip:alice:pw@Example.COM:5070;transport=tcp;lr?Subject=hi&X=y").unwrap();
        assert_eq!(u.scheme(), Scheme::Sip);
        assert_eq!(u.user(), Some(&b"alice"[..]));
        assert_eq!(u.password(), Some(&b"pw"[..]));
        assert_eq!(u.host().unwrap().text, b"Example.COM");
        assert_eq!(u.port(), Some(5070));
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert!(u.is_loose_route());
        assert_eq!(u.headers_raw(), b"Subject=hi&X=y");
    }

    #[test]
    fn ipv6_and_ipv4_hosts() {
        let u = Uri::parse(b"sip:[::1]:5060").unwrap();
        assert_eq!(u.host().unwrap().kind, HostKind::Ipv6);
        assert_eq!(u.port(), Some(5060));
        assert_eq!(u.host().unwrap().ip(), Some("::1".parse().unwrap()));
        let u = Uri::parse(b"sips:bob@192.0.2.4").unwrap();
        assert_eq!(u.scheme(), Scheme::Sips);
        assert_eq!(u.host().unwrap().kind, HostKind::Ipv4);
        assert!(Uri::parse(b"sip:bob@999.0.2.4").is_err());
    }

    #[test]
    fn unusual_user_parts() {
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user(), Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host().unwrap().text, b"example.com");
        let u = Uri::parse(
            b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        )
        .unwrap();
        assert_eq!(
            u.user(),
            Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
        );
        assert_eq!(
            u.password(),
            Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            &b"sip:user@example.com; lr"[..],
            b"sip:user@exa mple.com",
            b"sip:@example.com",
            b"sip:user@example.com:99999",
            b"sip:user@example.com;;lr",
            b"sip:a@b?noequals",
            b"sip:a%zz@b",
            b"nocolon",
            b"1abc:xyz",
        ] {
            assert!(Uri::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn tel_and_other_schemes() {
        let u = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(u.scheme(), Scheme::Tel);
        assert_eq!(u.user(), Some(&b"+1-201-555-0123"[..]));
        assert_eq!(u.param("phone-context"), Some(Some(&b"example.com"[..])));
        let u = Uri::parse(b"isbn:2983792873").unwrap();
        assert_eq!(u.scheme(), Scheme::Other);
        assert_eq!(u.opaque(), b"2983792873");
        let u = Uri::parse(b"soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(u.scheme_text(), b"soap.beep");
    }
}
