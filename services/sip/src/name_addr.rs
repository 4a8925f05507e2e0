//! `name-addr / addr-spec` values with header parameters: From, To, Contact,
//! Route, Record-Route, P-Asserted-Identity (RFC 3261 §20, §25.1).

use crate::scan::{self, Params};
use crate::uri::{Scheme, Uri};

/// A borrowed `[display-name] <URI> *(;param)` or `URI *(;param)`.
#[derive(Debug, Clone)]
pub struct NameAddr<'a> {
    raw: &'a [u8],
    display: Option<&'a [u8]>,
    uri: Uri<'a>,
    angle: bool,
    params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses one element (callers split lists first).
    pub fn parse(s: &'a [u8]) -> Result<NameAddr<'a>, &'static str> {
        let s = scan::trim(s);
        if s.is_empty() {
            return Err("empty address");
        }
        let mut i = 0;
        let mut display = None;
        let mut lt = None;
        if s[0] == b'"' {
            let end = scan::scan_quoted(s, 0).ok_or("unterminated quoted display name")?;
            display = Some(&s[..end]);
            i = scan::skip_ws(s, end);
            if i >= s.len() || s[i] != b'<' {
                return Err("display name not followed by <URI>");
            }
            lt = Some(i);
        } else if s[0] == b'<' {
            lt = Some(0);
        } else {
            // Either `*(token LWS) <URI>` or a bare addr-spec, whose scheme
            // is a token run ending in ':'.
            let first = scan::scan_token(s, 0);
            if first == 0 || first >= s.len() || s[first] != b':' {
                let mut j = 0;
                loop {
                    let e = scan::scan_token(s, j);
                    if e == j {
                        break;
                    }
                    j = scan::skip_ws(s, e);
                }
                if j >= s.len() || s[j] != b'<' {
                    return Err("invalid display name");
                }
                display = Some(scan::trim(&s[..j]));
                lt = Some(j);
            }
        }
        let (uri_text, after) = if let Some(lt) = lt {
            let gt = memchr::memchr(b'>', &s[lt..]).ok_or("missing '>'")? + lt;
            (&s[lt + 1..gt], gt + 1)
        } else {
            // addr-spec: header parameters start at the first ';'.
            let end = s[i..]
                .iter()
                .position(|&c| c == b';' || scan::is_ws(c))
                .map_or(s.len(), |p| p + i);
            (&s[i..end], end)
        };
        if uri_text.is_empty()
            || scan::is_ws(uri_text[0])
            || scan::is_ws(uri_text[uri_text.len() - 1])
        {
            return Err("white space inside <URI>");
        }
        let uri = Uri::parse(uri_text)?;
        if lt.is_none()
            && matches!(uri.scheme(), Scheme::Sip | Scheme::Sips)
            && uri_text.iter().any(|&c| matches!(c, b',' | b'?' | b';'))
        {
            return Err("URI with ',', ';' or '?' must be enclosed in <>");
        }
        let params = &s[after..];
        let stop = scan::scan_params(params, 0)?;
        if scan::skip_ws(params, stop) != params.len() {
            return Err("garbage after address");
        }
        Ok(NameAddr {
            raw: s,
            display,
            uri,
            angle: lt.is_some(),
            params,
        })
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// The raw display name (quoted string with its quotes, or tokens).
    pub fn display(&self) -> Option<&'a [u8]> {
        self.display
    }
    pub fn uri(&self) -> &Uri<'a> {
        &self.uri
    }
    /// Whether the URI was enclosed in `<>`.
    pub fn has_angle_brackets(&self) -> bool {
        self.angle
    }
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }
    /// The raw header parameters, starting with `;` (or empty).
    pub fn params_raw(&self) -> &'a [u8] {
        self.params
    }
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.params().get(name)
    }
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param("tag").flatten()
    }
}

/// One Contact value of a REGISTER or a dialog-creating request.
#[derive(Debug, Clone)]
pub enum Contact<'a> {
    /// `Contact: *` (remove all bindings, RFC 3261 §10.2.2).
    Wildcard,
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    pub fn parse(s: &'a [u8]) -> Result<Contact<'a>, &'static str> {
        if scan::trim(s) == b"*" {
            return Ok(Contact::Wildcard);
        }
        let na = NameAddr::parse(s)?;
        if let Some(v) = na.param("expires") {
            // Oversized values are clamped, not rejected (RFC 4475 §3.1.2.4).
            scan::parse_delta_seconds(v.ok_or("expires without value")?)
                .ok_or("invalid expires parameter")?;
        }
        if let Some(q) = na.param("q") {
            parse_qvalue(q.ok_or("q without value")?).ok_or("invalid q value")?;
        }
        if let Some(r) = na.param("reg-id") {
            scan::parse_u64(r.ok_or("reg-id without value")?, u64::from(u32::MAX))
                .filter(|&v| v > 0)
                .ok_or("invalid reg-id")?;
        }
        Ok(Contact::Addr(na))
    }
}

/// Contact parameters the registrar uses, extracted once.
impl<'a> NameAddr<'a> {
    /// `expires` parameter in seconds (clamped to u32).
    pub fn expires(&self) -> Option<u32> {
        self.param("expires")
            .flatten()
            .and_then(scan::parse_delta_seconds)
    }
    /// `q` in thousandths (0..=1000).
    pub fn q(&self) -> Option<u16> {
        self.param("q").flatten().and_then(parse_qvalue)
    }
    /// `+sip.instance`, unquoted (RFC 5626 §4.1).
    pub fn instance(&self) -> Option<std::borrow::Cow<'a, [u8]>> {
        self.param("+sip.instance").flatten().map(scan::unquote)
    }
    /// `reg-id` (RFC 5626 §4.2).
    pub fn reg_id(&self) -> Option<u32> {
        self.param("reg-id")
            .flatten()
            .and_then(|v| scan::parse_u64(v, u64::from(u32::MAX)))
            .map(|v| v as u32)
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in
/// thousandths.
pub fn parse_qvalue(s: &[u8]) -> Option<u16> {
    let (int, frac) = match memchr::memchr(b'.', s) {
        Some(d) => (&s[..d], &s[d + 1..]),
        None => (s, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f = 0u16;
    for i in 0..3 {
        f = f * 10 + frac.get(i).map_or(0, |c| u16::from(c - b'0'));
    }
    match int {
        b"0" => Some(f),
        b"1" if f == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let n = NameAddr::parse(
            br#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(n.display(), Some(&br#""J Rosenberg \\\"""#[..]));
        assert_eq!(n.uri().as_bytes(), b"sip:jdrosen@example.com");
        assert_eq!(n.tag(), Some(&b"98asjd8"[..]));

        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display(), Some(&b"caller"[..]));
        assert_eq!(n.tag(), Some(&b"323"[..]));

        let n = NameAddr::parse(b"sip:user@example.com;tag=1918181833n").unwrap();
        assert!(!n.has_angle_brackets());
        assert_eq!(n.uri().as_bytes(), b"sip:user@example.com");
        assert_eq!(n.tag(), Some(&b"1918181833n"[..]));

        let n = NameAddr::parse(
            b"token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=_token~1'+`*%!-.",
        )
        .unwrap();
        assert_eq!(n.display(), Some(&b"token1~` token2'+_ token3*%!.-"[..]));
        assert_eq!(n.tag(), Some(&b"_token~1'+`*%!-."[..]));

        let n = NameAddr::parse(b"<http://www.example.com>;tag=3234233").unwrap();
        assert_eq!(n.uri().scheme(), Scheme::Other);
        let n = NameAddr::parse(b"isbn:2983792873").unwrap();
        assert_eq!(n.uri().opaque(), b"2983792873");
    }

    #[test]
    fn rejects() {
        for bad in [
            &br#""Mr. J. User <sip:j.user@example.com>"#[..],
            b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            b"\"Watson, Thomas\" < sip:t.watson@example.org >",
            b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            b"\"Joe\" <sip:joe@example.org>;;;;",
            b"<sip:a@b",
            b"",
        ] {
            assert!(
                NameAddr::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn contact_params() {
        let c = Contact::parse(br#"<sip:a@192.0.2.1:5060;ob>;expires=600;q=0.7;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1"#).unwrap();
        let Contact::Addr(n) = c else {
            panic!("not an address")
        };
        assert_eq!(n.expires(), Some(600));
        assert_eq!(n.q(), Some(700));
        assert_eq!(n.reg_id(), Some(1));
        assert_eq!(
            n.instance().unwrap().as_ref(),
            b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
        );
        assert!(matches!(Contact::parse(b" * "), Ok(Contact::Wildcard)));
        let Contact::Addr(n) =
            Contact::parse(b"<sip:user@host129.example.com>\r\n  ;expires=280297596632815")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(n.expires(), Some(u32::MAX));
        assert!(Contact::parse(b"<sip:a@b>;q=2").is_err());
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"0.33"), Some(330));
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"1.5"), None);
        assert_eq!(parse_qvalue(b"0.1234"), None);
    }
}
