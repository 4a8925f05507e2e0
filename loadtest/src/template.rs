//! Pre-built messages.
//!
//! Each kind of request the generator sends is written once, at start-up,
//! with [`ringmesh_sip::Writer`], with a marker (`\0` field-id `\0`) where a
//! per-message value goes. [`Template::compile`] splits that text into
//! literal runs and fields; [`Template::render`] then writes a message by
//! copying the literals and asking the caller for each field, so a message
//! costs a few `memcpy`s and integer formats and no parsing. The compiled
//! template is checked once by rendering sample values and parsing the
//! result with [`ringmesh_sip::Message::parse`].

use ringmesh_sip::{HeaderName, Message, Method, Writer};

/// A per-message value in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    /// The sending socket's `ip:port` (Via sent-by, Contact).
    Local = 1,
    /// The branch after the magic cookie.
    Branch = 2,
    /// The sending handset's user number.
    User = 3,
    /// The other party's user number (INVITE Request-URI and To).
    Peer = 4,
    FromTag = 5,
    /// The remote tag of a dialog (in-dialog requests).
    ToTag = 6,
    CallId = 7,
    CSeq = 8,
    /// A whole Request-URI (in-dialog requests).
    RequestUri = 9,
    /// Extra header lines, each rendered as `\r\nName: value`, placed at
    /// the end of a header value (credentials, Route set).
    Extra = 10,
}

const FIELDS: [Field; 10] = [
    Field::Local,
    Field::Branch,
    Field::User,
    Field::Peer,
    Field::FromTag,
    Field::ToTag,
    Field::CallId,
    Field::CSeq,
    Field::RequestUri,
    Field::Extra,
];

/// The marker for `f` inside template text.
pub fn m(f: Field) -> String {
    format!("\0{}\0", f as u8 as char)
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(u32, u32),
    Field(Field),
}

/// A compiled message template.
#[derive(Debug, Clone)]
pub struct Template {
    text: Vec<u8>,
    segs: Vec<Seg>,
}

impl Template {
    /// Splits marked-up message text into literals and fields.
    pub fn compile(marked: &[u8]) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut i = 0;
        let mut lit_start = 0;
        while i < marked.len() {
            if marked[i] == 0 {
                if i + 2 >= marked.len() || marked[i + 2] != 0 {
                    return Err(format!("unterminated field marker at {i}"));
                }
                let id = marked[i + 1];
                let f = FIELDS
                    .iter()
                    .copied()
                    .find(|f| *f as u8 == id)
                    .ok_or_else(|| format!("unknown field id {id}"))?;
                if lit_start < i {
                    segs.push(Seg::Lit(lit_start as u32, i as u32));
                }
                segs.push(Seg::Field(f));
                i += 3;
                lit_start = i;
            } else {
                i += 1;
            }
        }
        if lit_start < marked.len() {
            segs.push(Seg::Lit(lit_start as u32, marked.len() as u32));
        }
        Ok(Template {
            text: marked.to_vec(),
            segs,
        })
    }

    /// Appends one message to `out`; `field` writes each field's value.
    #[inline]
    pub fn render(&self, out: &mut Vec<u8>, mut field: impl FnMut(Field, &mut Vec<u8>)) {
        for s in &self.segs {
            match *s {
                Seg::Lit(a, b) => out.extend_from_slice(&self.text[a as usize..b as usize]),
                Seg::Field(f) => field(f, out),
            }
        }
    }

    /// The fields this template uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.segs.iter().filter_map(|s| match s {
            Seg::Field(f) => Some(*f),
            Seg::Lit(..) => None,
        })
    }
}

/// Appends `n` in decimal.
#[inline]
pub fn push_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` in lower-case hexadecimal, without leading zeros.
#[inline]
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = HEX[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// What every template of a run shares.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    pub domain: &'a str,
    pub user_prefix: &'a str,
    /// `UDP` or `TCP`.
    pub transport: &'a str,
    pub expires: u32,
}

/// The templates of a run.
#[derive(Debug, Clone)]
pub struct Templates {
    pub register: Template,
    pub invite: Template,
    pub ack: Template,
    pub bye: Template,
}

/// The SDP offer every INVITE carries.
pub const SDP_OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";
/// The SDP answer in the callee's 200.
pub const SDP_ANSWER: &[u8] = b"v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

impl Templates {
    pub fn build(s: &Shape<'_>) -> Result<Templates, String> {
        let (local, branch, user, peer) = (
            m(Field::Local),
            m(Field::Branch),
            m(Field::User),
            m(Field::Peer),
        );
        let (ftag, ttag, cid, cseq, ruri, extra) = (
            m(Field::FromTag),
            m(Field::ToTag),
            m(Field::CallId),
            m(Field::CSeq),
            m(Field::RequestUri),
            m(Field::Extra),
        );
        let (d, p, t) = (s.domain, s.user_prefix, s.transport);
        let tl = t.to_ascii_lowercase();
        let via = format!("SIP/2.0/{t} {local};rport;branch=z9hG4bK{branch}");
        let from = format!("<sip:{p}{user}@{d}>;tag={ftag}");

        let mut w = Writer::request(&Method::Register, format!("sip:{d}").as_bytes());
        w.header(HeaderName::Via, via.as_bytes())
            .header(HeaderName::MaxForwards, b"70")
            .header(HeaderName::From, from.as_bytes())
            .header(HeaderName::To, format!("<sip:{p}{user}@{d}>").as_bytes())
            .header(HeaderName::CallId, cid.as_bytes())
            .header(HeaderName::CSeq, format!("{cseq} REGISTER").as_bytes())
            .header(
                HeaderName::Contact,
                format!("<sip:{p}{user}@{local};transport={tl}>").as_bytes(),
            )
            .header_fmt(HeaderName::Expires, format_args!("{}", s.expires))
            .header(
                HeaderName::UserAgent,
                format!("ringmesh-load{extra}").as_bytes(),
            );
        let register = Template::compile(&w.finish(b""))?;

        let mut w = Writer::request(&Method::Invite, format!("sip:{p}{peer}@{d}").as_bytes());
        w.header(HeaderName::Via, via.as_bytes())
            .header(HeaderName::MaxForwards, b"70")
            .header(HeaderName::From, from.as_bytes())
            .header(HeaderName::To, format!("<sip:{p}{peer}@{d}>").as_bytes())
            .header(HeaderName::CallId, cid.as_bytes())
            .header(HeaderName::CSeq, format!("{cseq} INVITE").as_bytes())
            .header(
                HeaderName::Contact,
                format!("<sip:{p}{user}@{local};transport={tl}>").as_bytes(),
            )
            .header(
                HeaderName::UserAgent,
                format!("ringmesh-load{extra}").as_bytes(),
            )
            .header(HeaderName::ContentType, b"application/sdp");
        let invite = Template::compile(&w.finish(SDP_OFFER))?;

        let in_dialog = |method: Method| -> Result<Template, String> {
            let mut w = Writer::request(&method, ruri.as_bytes());
            w.header(HeaderName::Via, via.as_bytes())
                .header(HeaderName::MaxForwards, format!("70{extra}").as_bytes())
                .header(HeaderName::From, from.as_bytes())
                .header(
                    HeaderName::To,
                    format!("<sip:{p}{peer}@{d}>;tag={ttag}").as_bytes(),
                )
                .header(HeaderName::CallId, cid.as_bytes())
                .header(
                    HeaderName::CSeq,
                    format!("{cseq} {}", String::from_utf8_lossy(method.as_bytes())).as_bytes(),
                );
            Template::compile(&w.finish(b""))
        };
        let t = Templates {
            register,
            invite,
            ack: in_dialog(Method::Ack)?,
            bye: in_dialog(Method::Bye)?,
        };
        t.self_check(s)?;
        Ok(t)
    }

    /// Renders every template with sample values and parses the result:
    /// a domain or prefix that yields invalid SIP is refused before any
    /// socket is used.
    fn self_check(&self, s: &Shape<'_>) -> Result<(), String> {
        let sample = |f: Field, out: &mut Vec<u8>| match f {
            Field::Local => out.extend_from_slice(b"127.0.0.1:40000"),
            Field::Branch => out.extend_from_slice(b"rl1.2.3.4"),
            Field::User => push_dec(out, 17),
            Field::Peer => push_dec(out, 18),
            Field::FromTag => out.extend_from_slice(b"ft1"),
            Field::ToTag => out.extend_from_slice(b"tt1"),
            Field::CallId => out.extend_from_slice(b"cid1@ringmesh-load"),
            Field::CSeq => push_dec(out, 1),
            Field::RequestUri => out.extend_from_slice(b"sip:x@127.0.0.1:40001"),
            Field::Extra => out.extend_from_slice(b"\r\nRoute: <sip:127.0.0.1:5060;lr>"),
        };
        for (name, t) in [
            ("REGISTER", &self.register),
            ("INVITE", &self.invite),
            ("ACK", &self.ack),
            ("BYE", &self.bye),
        ] {
            let mut out = Vec::new();
            t.render(&mut out, sample);
            let msg = Message::parse(bytes::Bytes::from(out)).map_err(|e| {
                format!(
                    "the {name} template is not valid SIP with domain {:?} and user prefix {:?}: {}",
                    s.domain, s.user_prefix, e.detail
                )
            })?;
            if msg.branch() != Some(b"z9hG4bKrl1.2.3.4") || msg.cseq() != 1 {
                return Err(format!("the {name} template does not round-trip"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape<'static> {
        Shape {
            domain: "ringmesh.test",
            user_prefix: "user",
            transport: "UDP",
            expires: 3600,
        }
    }

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        push_dec(&mut v, 0);
        v.push(b' ');
        push_dec(&mut v, 18_446_744_073_709_551_615);
        v.push(b' ');
        push_hex(&mut v, 0xdead_beef);
        v.push(b' ');
        push_hex(&mut v, 0);
        assert_eq!(v, b"0 18446744073709551615 deadbeef 0");
    }

    #[test]
    fn register_renders_and_parses() {
        let t = Templates::build(&shape()).unwrap();
        let mut out = Vec::new();
        t.register.render(&mut out, |f, out| match f {
            Field::Local => out.extend_from_slice(b"127.0.0.1:5555"),
            Field::Branch => out.extend_from_slice(b"abc"),
            Field::User => push_dec(out, 42),
            Field::FromTag => out.extend_from_slice(b"t1"),
            Field::CallId => out.extend_from_slice(b"c1"),
            Field::CSeq => push_dec(out, 7),
            Field::Extra => {}
            _ => unreachable!("{f:?}"),
        });
        let msg = Message::parse(bytes::Bytes::from(out)).unwrap();
        assert_eq!(msg.request_uri_bytes(), b"sip:ringmesh.test");
        assert_eq!(msg.to_hdr().uri().user(), Some(&b"user42"[..]));
        assert_eq!(msg.cseq(), 7);
        assert_eq!(msg.expires(), Some(3600));
        assert_eq!(msg.branch(), Some(&b"z9hG4bKabc"[..]));
        let c = msg.header(HeaderName::Contact).unwrap();
        assert_eq!(c, b"<sip:user42@127.0.0.1:5555;transport=udp>");
    }

    #[test]
    fn extra_lines_become_headers() {
        let t = Templates::build(&shape()).unwrap();
        let mut out = Vec::new();
        t.bye.render(&mut out, |f, out| match f {
            Field::Extra => out.extend_from_slice(
                b"\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:127.0.0.1:5061;lr>",
            ),
            Field::RequestUri => out.extend_from_slice(b"sip:user1@127.0.0.1:4000"),
            Field::Local => out.extend_from_slice(b"127.0.0.1:4001"),
            _ => out.push(b'1'),
        });
        let msg = Message::parse(bytes::Bytes::from(out)).unwrap();
        assert_eq!(msg.routes().count(), 2);
        assert_eq!(*msg.method(), Method::Bye);
        assert_eq!(msg.to_tag(), Some(&b"1"[..]));
    }

    #[test]
    fn invalid_domain_is_refused() {
        let mut s = shape();
        s.domain = "bad domain";
        assert!(Templates::build(&s).is_err());
    }
}
