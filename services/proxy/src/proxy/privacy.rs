//! Privacy (RFC 3323, RFC 3325) and topology hiding, applied where a
//! request leaves the farm's trust domain for a phone (a leaf that is not
//! an application server or a trusted element that vouches for its users).
//!
//! - `Privacy: id`: the asserted identity (`P-Asserted-Identity`) is
//!   withheld and From becomes `"Anonymous"
//!   <sip:anonymous@anonymous.invalid>` (its tag kept: it names the
//!   dialog).
//! - `Privacy: user`: From is anonymous too, and what a user may have
//!   written about itself goes: Subject, Call-Info, Organization,
//!   User-Agent, Reply-To, In-Reply-To.
//! - `Privacy: header`, or the node's `topology_hiding`: the phone gets this
//!   node's Via only, and Record-Routes of other members rewritten to name
//!   this node (their sealed flow tokens still say which member they
//!   are: `routing.rs` routes by the token). The responses get the Vias and
//!   From back before they go upstream.
//! - With `topology_hiding`, responses that go up to a phone have other
//!   members' Record-Routes rewritten the same way.
//!
//! So a phone only ever sees the address of its own edge supernode.
//! Not covered: the Contact of the other party (a phone's own address, not
//! a supernode's), and the From of in-dialog requests that carry no
//! `Privacy` (RFC 3323 §4.2 has the UA repeat it in each request).

use bytes::Bytes;
use ringmesh_sip::transaction::ClientKey;
use ringmesh_sip::{HeaderName, Message, Scheme};

use super::Proxy;
use crate::addresses::Me;
use crate::binding::Transport;
use crate::token::{Dest, TokenKeys};

/// The privacy a request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Privacy {
    pub id: bool,
    pub user: bool,
    pub header: bool,
}

impl Privacy {
    pub fn of(msg: &Message) -> Privacy {
        let mut p = Privacy::default();
        let Some(v) = msg.header(HeaderName::Privacy) else {
            return p;
        };
        for t in v.split(|&c| c == b';' || c == b',') {
            let t = ringmesh_sip::scan::trim(t);
            if t.eq_ignore_ascii_case(b"none") {
                return Privacy::default();
            }
            p.id |= t.eq_ignore_ascii_case(b"id");
            p.user |= t.eq_ignore_ascii_case(b"user");
            p.header |= t.eq_ignore_ascii_case(b"header");
        }
        p
    }

    /// From is replaced by the anonymous URI.
    pub fn anonymous_from(self) -> bool {
        self.id || self.user
    }
}

/// What the user writes about itself, removed for `Privacy: user`.
pub(super) const USER_HEADERS: [HeaderName; 6] = [
    HeaderName::Subject,
    HeaderName::CallInfo,
    HeaderName::Organization,
    HeaderName::UserAgent,
    HeaderName::ReplyTo,
    HeaderName::InReplyTo,
];

/// The anonymous From of RFC 3323 §4.1.1.3, with the request's tag.
pub(super) fn anonymous_from(msg: &Message) -> Vec<u8> {
    let mut v = b"\"Anonymous\" <sip:anonymous@anonymous.invalid>".to_vec();
    if let Some(tag) = msg.from_tag() {
        v.extend_from_slice(b";tag=");
        v.extend_from_slice(tag);
    }
    v
}

/// What the responses to a request rewritten for privacy get back, and
/// whether the responses going up hide the farm.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    /// The received Via lines, when a branch's request carried only ours.
    pub vias: Option<Vec<Bytes>>,
    /// The received From, when a branch's request carried the anonymous one.
    pub from: Option<Bytes>,
    /// The branches whose request was rewritten.
    pub branches: Vec<ClientKey>,
    /// The responses go up to a phone: other members' Record-Routes are
    /// rewritten to name this node.
    pub hide_upstream: bool,
}

impl Proxy {
    /// The Record-Route of a request going to a phone of a hiding node:
    /// `ours` (if this node adds one), then what it carried with the
    /// farm's values naming this node.
    pub(super) fn record_routes_hidden(
        &self,
        ours: Option<String>,
        msg: &Message,
        now_secs: u64,
    ) -> Option<String> {
        let received = hidden_record_routes(&self.tokens, &self.me, msg, now_secs).or_else(|| {
            msg.has_header(HeaderName::RecordRoute).then(|| {
                let all: Vec<&[u8]> = msg.header_lines(HeaderName::RecordRoute).collect();
                String::from_utf8_lossy(&all.join(&b", "[..])).into_owned()
            })
        });
        match (ours, received) {
            (Some(a), Some(b)) => Some(format!("{a}, {b}")),
            (a, b) => a.or(b),
        }
    }

    /// Whether `dest` is outside the trust domain: a leaf that is neither
    /// an application server (`service`) nor a trusted element that
    /// vouches for its users.
    pub(super) fn untrusted_leaf(&self, dest: Dest, service: bool) -> bool {
        match dest {
            _ if service => false,
            Dest::Flow(f) => !self
                .trusted_element(f)
                .is_some_and(crate::trust::Element::vouches),
            Dest::Addr { addr, .. } => !self.policy.trusted.vouches(addr, None),
            Dest::Peer(_) => false,
        }
    }
}

/// The Record-Route values of `msg`, those of the farm that name another
/// host rewritten to name this node, `me` (the flow token in each still
/// names its member). `None` when none was rewritten.
pub(super) fn hidden_record_routes(
    tokens: &TokenKeys,
    me: &Me,
    msg: &Message,
    now_secs: u64,
) -> Option<String> {
    let tags: Vec<&[u8]> = [msg.from_tag(), msg.to_tag()]
        .into_iter()
        .flatten()
        .collect();
    let mut changed = false;
    let values: Vec<String> = msg
        .header_values(HeaderName::RecordRoute)
        .map(|v| {
            let text = String::from_utf8_lossy(v).into_owned();
            let Ok(na) = ringmesh_sip::NameAddr::parse(v) else {
                return text;
            };
            let uri = na.uri();
            // Every farm Record-Route carries a flow token: whichever
            // member it names, it is written with this node's address.
            let farm = uri
                .user()
                .and_then(|u| tokens.open(u, msg.call_id(), &tags, now_secs))
                .is_some();
            let Some(host) = uri.host().filter(|_| farm && !me.is_me(uri)) else {
                return text;
            };
            let sips = uri.scheme() == Scheme::Sips;
            let t = match (uri.transport().and_then(Transport::from_token), sips) {
                (Some(t), _) => t,
                (None, true) => Transport::Tls,
                (None, false) => Transport::Udp,
            };
            let hostport = match uri.port() {
                Some(p) => format!("{}:{p}", String::from_utf8_lossy(host.text)),
                None => String::from_utf8_lossy(host.text).into_owned(),
            };
            let mine = format!("{}:{}", me.advertise, me.port(t));
            match text.find(&format!("@{hostport}")) {
                Some(at) => {
                    changed = true;
                    format!("{}@{mine}{}", &text[..at], &text[at + 1 + hostport.len()..])
                }
                None => text,
            }
        })
        .collect();
    changed.then(|| values.join(", "))
}

/// The bytes of a response going upstream from branch `client`: the top
/// Via popped, and for a request rewritten for privacy its Vias and From
/// given back and, going up to a phone of a hiding node, other members'
/// Record-Routes rewritten.
pub(super) fn upstream_response(
    tokens: &TokenKeys,
    me: &Me,
    rewritten: Option<&Rewritten>,
    client: ClientKey,
    msg: &Message,
    now_secs: u64,
) -> Bytes {
    let Some(rw) = rewritten else {
        return msg.forward_response(&[]).finish(msg.body());
    };
    let restore = rw.branches.contains(&client);
    let mut strip = Vec::with_capacity(3);
    let vias = rw.vias.as_ref().filter(|_| restore);
    let from = rw.from.as_ref().filter(|_| restore);
    if vias.is_some() {
        strip.push(HeaderName::Via);
    }
    if from.is_some() {
        strip.push(HeaderName::From);
    }
    let rr = rw
        .hide_upstream
        .then(|| hidden_record_routes(tokens, me, msg, now_secs))
        .flatten();
    if rr.is_some() {
        strip.push(HeaderName::RecordRoute);
    }
    let mut w = msg.forward_response(&strip);
    for v in vias.into_iter().flatten() {
        w.header(HeaderName::Via, v);
    }
    if let Some(f) = from {
        w.header(HeaderName::From, f);
    }
    if let Some(rr) = rr {
        w.header(HeaderName::RecordRoute, rr.as_bytes());
    }
    w.finish(msg.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_privacy(v: &str) -> Privacy {
        let m = Message::parse(Bytes::from(format!(
            "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Privacy: {v}\r\nContent-Length: 0\r\n\r\n"
        )))
        .unwrap();
        Privacy::of(&m)
    }

    #[test]
    fn privacy_values() {
        assert_eq!(
            with_privacy("id"),
            Privacy {
                id: true,
                ..Default::default()
            }
        );
        let p = with_privacy("header; user ;critical");
        assert!(p.header && p.user && !p.id && p.anonymous_from());
        assert_eq!(with_privacy("none"), Privacy::default());
        assert_eq!(with_privacy("session"), Privacy::default());
    }
}
