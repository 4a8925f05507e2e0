//! Building outgoing messages: new requests and responses, responses to a
//! received request (RFC 3261 §8.2.6), and a proxy's forwarded copies
//! (§16.6, §16.7 step 3), all written straight into one buffer.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::reason_phrase;
use crate::header::HeaderName;
use crate::message::Message;
use crate::method::Method;
use crate::scan;

/// Writes a message front to back; [`Writer::finish`] adds Content-Length
/// and the body.
#[derive(Debug)]
pub struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: BytesMut::with_capacity(n),
        }
    }

    pub fn request(method: &Method, uri: &[u8]) -> Writer {
        let mut w = Writer::with_capacity(512);
        w.buf.put_slice(method.as_bytes());
        w.buf.put_u8(b' ');
        w.buf.put_slice(uri);
        w.buf.put_slice(b" SIP/2.0\r\n");
        w
    }

    /// A status line with the default reason phrase.
    pub fn response(status: u16) -> Writer {
        Self::response_raw(status, reason_phrase(status).as_bytes())
    }

    pub fn response_raw(status: u16, reason: &[u8]) -> Writer {
        let mut w = Writer::with_capacity(512);
        w.buf.put_slice(b"SIP/2.0 ");
        let _ = write!(w.buf, "{status:03} ");
        w.buf.put_slice(reason);
        w.buf.put_slice(b"\r\n");
        w
    }

    pub fn header(&mut self, name: HeaderName, value: &[u8]) -> &mut Self {
        self.raw_header(name.as_str().as_bytes(), value)
    }

    pub fn raw_header(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.put_slice(name);
        self.buf.put_slice(b": ");
        self.buf.put_slice(value);
        self.buf.put_slice(b"\r\n");
        self
    }

    /// A header whose value is formatted, e.g. `Expires: 3600`.
    pub fn header_fmt(&mut self, name: HeaderName, value: std::fmt::Arguments<'_>) -> &mut Self {
        self.buf.put_slice(name.as_str().as_bytes());
        self.buf.put_slice(b": ");
        let _ = self.buf.write_fmt(value);
        self.buf.put_slice(b"\r\n");
        self
    }

    /// Appends Content-Length, the blank line and the body.
    pub fn finish(mut self, body: &[u8]) -> Bytes {
        let _ = write!(self.buf, "Content-Length: {}\r\n\r\n", body.len());
        self.buf.put_slice(body);
        self.buf.freeze()
    }
}

/// What a proxy changes when it forwards a request (RFC 3261 §16.6).
#[derive(Debug, Default, Clone, Copy)]
pub struct Forward<'a> {
    /// New Request-URI (step 2/6); `None` keeps the received one.
    pub request_uri: Option<&'a [u8]>,
    /// The Via value this proxy inserts on top (step 8).
    pub via: &'a [u8],
    /// Replacement text for the received topmost Via element, e.g. with
    /// `received` and `rport` filled in (RFC 3261 §18.2.1, RFC 3581 §4).
    pub top_via: Option<&'a [u8]>,
    /// A Record-Route value to insert on top of any existing ones (step 4).
    pub record_route: Option<&'a [u8]>,
    /// A Route value to push on top (after `pop_routes` are removed): the
    /// next hop this proxy chose (a strict route set it builds itself).
    pub push_route: Option<&'a [u8]>,
    /// How many topmost Route values to remove: the ones naming this node
    /// (loose routing, §16.4 / §16.6 step 7).
    pub pop_routes: usize,
    /// Max-Forwards to write (step 3: received value minus one, or 70).
    pub max_forwards: u8,
    /// Header fields to drop (e.g. credentials for our realm, untrusted
    /// P-Asserted-Identity).
    pub strip: &'a [HeaderName],
}

impl Message {
    /// Starts a response to this request: status line, Via (all, in order),
    /// From, To (with `to_tag` added if it has none), Call-ID and CSeq
    /// (RFC 3261 §8.2.6.2). Add further headers, then [`Writer::finish`].
    pub fn response_writer(&self, status: u16, to_tag: Option<&[u8]>) -> Writer {
        let mut w = Writer::response(status);
        for v in self.header_lines(HeaderName::Via) {
            w.header(HeaderName::Via, v);
        }
        w.header(HeaderName::From, self.from_bytes());
        match (to_tag, self.to_tag()) {
            (Some(tag), None) if status > 100 => {
                w.buf.put_slice(b"To: ");
                w.buf.put_slice(self.to_bytes());
                w.buf.put_slice(b";tag=");
                w.buf.put_slice(tag);
                w.buf.put_slice(b"\r\n");
            }
            _ => {
                w.header(HeaderName::To, self.to_bytes());
            }
        }
        w.header(HeaderName::CallId, self.call_id());
        let _ = write!(w.buf, "CSeq: {} ", self.cseq());
        w.buf.put_slice(self.cseq_method().as_bytes());
        w.buf.put_slice(b"\r\n");
        w
    }

    /// Writes the copy of this request that a proxy sends on, applying
    /// `fw`. Headers keep their order; Content-Length is rewritten by
    /// [`Writer::finish`]. The caller may add headers before finishing.
    pub fn forward_writer(&self, fw: &Forward<'_>) -> Writer {
        let mut w = Writer::with_capacity(self.raw().len() + fw.via.len() + 128);
        w.buf.put_slice(self.method().as_bytes());
        w.buf.put_u8(b' ');
        w.buf
            .put_slice(fw.request_uri.unwrap_or(self.request_uri_bytes()));
        w.buf.put_slice(b" SIP/2.0\r\n");
        w.header(HeaderName::Via, fw.via);
        if let Some(r) = fw.push_route {
            w.header(HeaderName::Route, r);
        }
        let mut to_pop = fw.pop_routes;
        let mut rr_written = fw.record_route.is_none();
        let mut mf_written = false;
        let mut via_rewritten = fw.top_via.is_none();
        for (name, raw_name, value) in self.headers() {
            if fw.strip.contains(&name) {
                continue;
            }
            match name {
                HeaderName::ContentLength => continue,
                HeaderName::MaxForwards => {
                    if !mf_written {
                        let _ = write!(w.buf, "Max-Forwards: {}\r\n", fw.max_forwards);
                        mf_written = true;
                    }
                    continue;
                }
                HeaderName::Via if !via_rewritten => {
                    via_rewritten = true;
                    let top = fw.top_via.unwrap_or_default();
                    match after_first_element(value) {
                        Some(rest) => {
                            w.buf.reserve(top.len() + rest.len() + 10);
                            w.buf.put_slice(b"Via: ");
                            w.buf.put_slice(top);
                            w.buf.put_slice(b", ");
                            w.buf.put_slice(rest);
                            w.buf.put_slice(b"\r\n");
                        }
                        None => {
                            w.header(HeaderName::Via, top);
                        }
                    }
                    continue;
                }
                HeaderName::Route if to_pop > 0 => {
                    let mut rest = Some(value);
                    while to_pop > 0 {
                        let Some(v) = rest else { break };
                        rest = after_first_element(v);
                        to_pop -= 1;
                    }
                    if let Some(rest) = rest {
                        w.header(HeaderName::Route, rest);
                    }
                    continue;
                }
                HeaderName::RecordRoute if !rr_written => {
                    w.header(HeaderName::RecordRoute, fw.record_route.unwrap_or_default());
                    rr_written = true;
                }
                _ => {}
            }
            match name {
                HeaderName::Other => w.raw_header(raw_name, value),
                n => w.header(n, value),
            };
        }
        if !mf_written {
            let _ = write!(w.buf, "Max-Forwards: {}\r\n", fw.max_forwards);
        }
        if !rr_written {
            w.header(HeaderName::RecordRoute, fw.record_route.unwrap_or_default());
        }
        w
    }

    /// Writes the ACK a client transaction sends for `response`, a 3xx–6xx
    /// answer to this INVITE (RFC 3261 §17.1.1.3): the same Request-URI,
    /// Call-ID, From, CSeq number and Route header fields as this request,
    /// its top Via as the only Via, and the To of the response (with the
    /// tag it added).
    pub fn ack_for(&self, response: &Message) -> Bytes {
        self.in_transaction_request(&Method::Ack, response.to_bytes())
    }

    /// Writes the CANCEL for this request, which this node sent (RFC 3261
    /// §9.1): the same Request-URI, Call-ID, To, From, CSeq number and
    /// Route header fields, and its top Via (same branch) as the only Via.
    pub fn cancel_for(&self) -> Bytes {
        self.in_transaction_request(&Method::Cancel, self.to_bytes())
    }

    fn in_transaction_request(&self, method: &Method, to: &[u8]) -> Bytes {
        let mut w = Writer::request(method, self.request_uri_bytes());
        w.header(HeaderName::Via, self.top_via_bytes());
        w.header(HeaderName::MaxForwards, b"70");
        for route in self.header_lines(HeaderName::Route) {
            w.header(HeaderName::Route, route);
        }
        w.header(HeaderName::From, self.from_bytes());
        w.header(HeaderName::To, to);
        w.header(HeaderName::CallId, self.call_id());
        let _ = write!(w.buf, "CSeq: {} ", self.cseq());
        w.buf.put_slice(method.as_bytes());
        w.buf.put_slice(b"\r\n");
        w.finish(b"")
    }

    /// Writes this response with its topmost Via value removed, as a proxy
    /// forwards it upstream (RFC 3261 §16.7 step 9), without the `strip`
    /// headers. The caller may add headers before finishing.
    pub fn forward_response(&self, strip: &[HeaderName]) -> Writer {
        let mut w = Writer::with_capacity(self.raw().len());
        let _ = write!(w.buf, "SIP/2.0 {:03} ", self.status().unwrap_or(500));
        w.buf.put_slice(self.reason());
        w.buf.put_slice(b"\r\n");
        let mut via_popped = false;
        for (name, raw_name, value) in self.headers() {
            if strip.contains(&name) {
                continue;
            }
            match name {
                HeaderName::ContentLength => {}
                HeaderName::Via if !via_popped => {
                    via_popped = true;
                    if let Some(rest) = after_first_element(value) {
                        w.header(HeaderName::Via, rest);
                    }
                }
                HeaderName::Other => {
                    w.raw_header(raw_name, value);
                }
                n => {
                    w.header(n, value);
                }
            }
        }
        w
    }
}

/// The rest of a list header line after its first element, if any.
fn after_first_element(value: &[u8]) -> Option<&[u8]> {
    let mut it = scan::split_list(value);
    let first = it.next()?;
    let first_end = first.as_ptr() as usize - value.as_ptr() as usize + first.len();
    let rest = &value[first_end..];
    let comma = memchr::memchr(b',', rest)?;
    let rest = scan::trim(&rest[comma + 1..]);
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@ringmesh.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\n\
Max-Forwards: 70\r\n\
Route: <sip:sn0.ringmesh.test;lr>, <sip:sn1.ringmesh.test;lr>\r\n\
To: <sip:bob@ringmesh.test>\r\n\
From: \"Alice\" <sip:alice@ringmesh.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 1 INVITE\r\n\
Record-Route: <sip:edge.example.com;lr>\r\n\
P-Asserted-Identity: <sip:mallory@ringmesh.test>\r\n\
X-Custom: keep me\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn response_to_request() {
        let m = Message::parse(Bytes::from_static(INVITE)).unwrap();
        let r = m.response_writer(486, Some(b"xyz")).finish(b"");
        let r = Message::parse(r).unwrap();
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), b"Busy Here");
        assert_eq!(r.to_tag(), Some(&b"xyz"[..]));
        assert_eq!(r.vias().count(), 2);
        assert_eq!(r.call_id(), m.call_id());
        assert_eq!(r.cseq(), 1);
        assert_eq!(*r.method(), Method::Invite);
        let trying = Message::parse(m.response_writer(100, Some(b"xyz")).finish(b"")).unwrap();
        assert_eq!(trying.to_tag(), None);
    }

    #[test]
    fn forward_applies_edits() {
        let m = Message::parse(Bytes::from_static(INVITE)).unwrap();
        let out = m
            .forward_writer(&Forward {
                request_uri: Some(b"sip:bob@192.0.2.7:5062"),
                via: b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy",
                record_route: Some(b"<sip:127.0.0.1:5060;lr>"),
                push_route: None,
                pop_routes: 1,
                top_via: Some(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;received=198.51.100.1"),
                max_forwards: 69,
                strip: &[HeaderName::PAssertedIdentity],
            })
            .finish(m.body());
        let f = Message::parse(out).unwrap();
        assert_eq!(f.request_uri_bytes(), b"sip:bob@192.0.2.7:5062");
        assert_eq!(f.branch(), Some(&b"z9hG4bKproxy"[..]));
        assert_eq!(f.vias().count(), 3);
        assert_eq!(
            f.vias().nth(1).unwrap().received(),
            Some(&b"198.51.100.1"[..])
        );
        assert_eq!(f.vias().nth(2).unwrap().branch(), Some(&b"z9hG4bKb"[..]));
        assert_eq!(f.max_forwards(), Some(68 + 1));
        let routes: Vec<_> = f.routes().map(|r| r.uri().as_bytes().to_vec()).collect();
        assert_eq!(routes, vec![b"sip:sn1.ringmesh.test;lr".to_vec()]);
        let rr: Vec<_> = f
            .record_routes()
            .map(|r| r.uri().as_bytes().to_vec())
            .collect();
        assert_eq!(
            rr,
            vec![
                b"sip:127.0.0.1:5060;lr".to_vec(),
                b"sip:edge.example.com;lr".to_vec()
            ]
        );
        assert!(!f.has_header(HeaderName::PAssertedIdentity));
        assert_eq!(f.header_named("x-custom"), Some(&b"keep me"[..]));
        assert_eq!(f.body(), b"v=0\n");
    }

    #[test]
    fn ack_for_a_failure_response() {
        let m = Message::parse(Bytes::from_static(INVITE)).unwrap();
        let resp = Message::parse(m.response_writer(486, Some(b"callee")).finish(b"")).unwrap();
        let ack = Message::parse(m.ack_for(&resp)).unwrap();
        assert_eq!(*ack.method(), Method::Ack);
        assert_eq!(ack.request_uri_bytes(), m.request_uri_bytes());
        assert_eq!(
            ack.header_lines(HeaderName::Via).collect::<Vec<_>>(),
            vec![&b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa"[..]]
        );
        assert_eq!(ack.branch(), m.branch());
        assert_eq!(ack.call_id(), m.call_id());
        assert_eq!(ack.from_bytes(), m.from_bytes());
        assert_eq!(ack.to_tag(), Some(&b"callee"[..]));
        assert_eq!((ack.cseq(), ack.cseq_method()), (1, &Method::Ack));
        let routes: Vec<_> = ack.routes().map(|r| r.uri().as_bytes().to_vec()).collect();
        assert_eq!(
            routes,
            vec![
                b"sip:sn0.ringmesh.test;lr".to_vec(),
                b"sip:sn1.ringmesh.test;lr".to_vec()
            ]
        );
        assert_eq!(ack.max_forwards(), Some(70));
        assert!(ack.body().is_empty());
        assert!(!ack.has_header(HeaderName::RecordRoute));
        assert!(!ack.has_header(HeaderName::ContentType));
    }

    #[test]
    fn cancel_for_a_sent_request() {
        let m = Message::parse(Bytes::from_static(INVITE)).unwrap();
        let c = Message::parse(m.cancel_for()).unwrap();
        assert_eq!(*c.method(), Method::Cancel);
        assert_eq!(c.request_uri_bytes(), m.request_uri_bytes());
        assert_eq!(c.vias().count(), 1);
        assert_eq!(c.branch(), Some(&b"z9hG4bKa"[..]));
        assert_eq!(c.to_bytes(), m.to_bytes());
        assert_eq!(c.from_bytes(), m.from_bytes());
        assert_eq!(c.call_id(), m.call_id());
        assert_eq!((c.cseq(), c.cseq_method()), (1, &Method::Cancel));
        assert_eq!(c.routes().count(), 2);
        assert!(c.body().is_empty());
    }

    #[test]
    fn forward_response_pops_top_via() {
        let m = Message::parse(Bytes::from_static(INVITE)).unwrap();
        let resp = Message::parse(m.response_writer(180, Some(b"t")).finish(b"")).unwrap();
        let up = Message::parse(resp.forward_response(&[]).finish(b"")).unwrap();
        let vias: Vec<_> = up.vias().map(|v| v.branch().unwrap().to_vec()).collect();
        assert_eq!(vias, vec![b"z9hG4bKb".to_vec()]);
    }
}
