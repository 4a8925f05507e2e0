//! Farm-wide subscriptions (RFC 6665) and the reg event package (RFC 3680),
//! as records and documents, apart from any I/O.
//!
//! A [`Subscription`] is kept on the replicas of the key of the resource it
//! watches, next to that resource's bindings, as an overlay entry whose id
//! is [`WATCH_PREFIX`] and the subscription's id. It holds the whole
//! dialog state a notifier needs (Call-ID, tags, the watcher's target and
//! route set, both CSeqs, the version of the last document sent and the
//! contacts that document described), so any supernode can send the next
//! NOTIFY: none holds a subscription in memory. A record with such an
//! entry is *watched*.
//!
//! [`reginfo`] compares a resource's bindings with what the watcher was
//! last told and writes the `application/reginfo+xml` document: the full
//! state the first time, then only the contacts that changed.

use std::net::SocketAddr;

use bytes::{Buf, Bytes};

use crate::binding::{
    Binding, FlowRef, Transport, get_array, get_text, get_varint, put_text, put_varint,
};

/// The first byte of a subscription's entry id (bindings' ids start with
/// `i` or `c`, an alias's is `a`).
pub const WATCH_PREFIX: u8 = b'w';
/// The layouts of an encoded subscription: 2 is 1 with the digest of
/// what the watcher was told at the end, written only when there is one
/// (presence), so that reg subscriptions stay readable by releases that
/// know only 1.
const FORMAT: u8 = 1;
const FORMAT_DIGEST: u8 = 2;

/// What the watcher was told of one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    /// The contact's id in the documents.
    pub id: u32,
    pub expires_at_ms: u64,
    /// The HLC of the binding as told (a new one is a refresh).
    pub hlc: u64,
}

/// One subscription: the dialog, as the notifier's side of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: [u8; 16],
    /// The event package (`reg`).
    pub event: Bytes,
    /// The canonical AOR watched.
    pub resource: Bytes,
    pub call_id: Bytes,
    /// Our tag (the To tag of the 200 OK) and the watcher's (its From tag).
    pub local_tag: Bytes,
    pub remote_tag: Bytes,
    /// The watcher's From URI: the To of each NOTIFY.
    pub remote_uri: Bytes,
    /// The watcher's Contact: the Request-URI of each NOTIFY.
    pub remote_target: Bytes,
    /// The Record-Route of the SUBSCRIBE, comma-joined in order: the
    /// Route of each NOTIFY.
    pub route_set: Option<Bytes>,
    /// The CSeq of the watcher's last SUBSCRIBE, and of our last NOTIFY.
    pub remote_cseq: u32,
    pub local_cseq: u32,
    /// The version of the last document sent; `None` before the first.
    pub version: Option<u32>,
    /// When the subscription ends (milliseconds since the UNIX epoch).
    pub expires_at_ms: u64,
    /// The flow the SUBSCRIBE came on, at the supernode `edge`.
    pub flow: FlowRef,
    pub transport: Transport,
    pub edge: [u8; 16],
    /// The contacts the last document described.
    pub notified: Vec<Notified>,
    /// For packages whose documents carry no version (presence): a digest
    /// of the state the watcher was last told (0: nothing yet).
    pub digest: u64,
}

impl Subscription {
    /// Its overlay entry id.
    pub fn entry_id(&self) -> Bytes {
        entry_id(&self.id)
    }

    /// The binding-shaped target a NOTIFY goes to: the watcher's Contact,
    /// over its flow, through its route set.
    pub fn target(&self) -> Binding {
        Binding {
            aor: self.resource.clone(),
            contact: self.remote_target.clone(),
            instance: None,
            reg_id: None,
            q: None,
            expires_at_ms: self.expires_at_ms,
            call_id: self.call_id.clone(),
            cseq: self.remote_cseq,
            flow: self.flow,
            transport: self.transport,
            edge: self.edge,
            hlc: 0,
            path: self.route_set.clone(),
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(256);
        b.push(if self.digest == 0 {
            FORMAT
        } else {
            FORMAT_DIGEST
        });
        b.extend_from_slice(&self.id);
        for t in [
            &self.event,
            &self.resource,
            &self.call_id,
            &self.local_tag,
            &self.remote_tag,
            &self.remote_uri,
            &self.remote_target,
        ] {
            put_text(&mut b, t);
        }
        put_text(&mut b, self.route_set.as_deref().unwrap_or_default());
        put_varint(&mut b, u64::from(self.remote_cseq));
        put_varint(&mut b, u64::from(self.local_cseq));
        put_varint(&mut b, self.version.map_or(0, |v| u64::from(v) + 1));
        put_varint(&mut b, self.expires_at_ms);
        let (kind, extra, peer) = match self.flow {
            FlowRef::Udp { socket, peer } => (0u8, u64::from(socket), peer),
            FlowRef::Conn { id, peer, .. } => (1, id, peer),
        };
        b.push(kind);
        b.push(match self.transport {
            Transport::Udp => 0,
            t => 1 + t.stream_code(),
        });
        put_varint(&mut b, extra);
        put_text(&mut b, peer.to_string().as_bytes());
        b.extend_from_slice(&self.edge);
        put_varint(&mut b, self.notified.len() as u64);
        for n in &self.notified {
            put_varint(&mut b, u64::from(n.id));
            put_varint(&mut b, n.expires_at_ms);
            put_varint(&mut b, n.hlc);
        }
        if self.digest != 0 {
            put_varint(&mut b, self.digest);
        }
        Bytes::from(b)
    }

    /// `None` for anything that is not a whole encoding.
    pub fn decode(value: &[u8]) -> Option<Subscription> {
        let mut r = value;
        let format = r.try_get_u8().ok()?;
        if format != FORMAT && format != FORMAT_DIGEST {
            return None;
        }
        let id = get_array::<16>(&mut r)?;
        let mut text = || get_text(&mut r).map(Bytes::copy_from_slice);
        let (event, resource, call_id, local_tag, remote_tag, remote_uri, remote_target) = (
            text()?,
            text()?,
            text()?,
            text()?,
            text()?,
            text()?,
            text()?,
        );
        let route_set = Some(text()?).filter(|r| !r.is_empty());
        let remote_cseq = u32::try_from(get_varint(&mut r)?).ok()?;
        let local_cseq = u32::try_from(get_varint(&mut r)?).ok()?;
        let version = match get_varint(&mut r)? {
            0 => None,
            v => Some(u32::try_from(v - 1).ok()?),
        };
        let expires_at_ms = get_varint(&mut r)?;
        let kind = r.try_get_u8().ok()?;
        let transport = match r.try_get_u8().ok()? {
            0 => Transport::Udp,
            c => Transport::from_stream_code(c - 1)?,
        };
        let extra = get_varint(&mut r)?;
        let peer: SocketAddr = std::str::from_utf8(get_text(&mut r)?).ok()?.parse().ok()?;
        let flow = match (kind, transport) {
            (0, Transport::Udp) => FlowRef::Udp {
                socket: u16::try_from(extra).ok()?,
                peer,
            },
            (1, t) if t.is_stream() => FlowRef::Conn {
                id: extra,
                peer,
                transport,
            },
            _ => return None,
        };
        let edge = get_array::<16>(&mut r)?;
        let n = get_varint(&mut r)?;
        if n > 1024 {
            return None;
        }
        let mut notified = Vec::with_capacity(n as usize);
        for _ in 0..n {
            notified.push(Notified {
                id: u32::try_from(get_varint(&mut r)?).ok()?,
                expires_at_ms: get_varint(&mut r)?,
                hlc: get_varint(&mut r)?,
            });
        }
        let digest = if format == FORMAT_DIGEST {
            get_varint(&mut r).filter(|d| *d != 0)?
        } else {
            0
        };
        if r.has_remaining() {
            return None;
        }
        Some(Subscription {
            id,
            event,
            resource,
            call_id,
            local_tag,
            remote_tag,
            remote_uri,
            remote_target,
            route_set,
            remote_cseq,
            local_cseq,
            version,
            expires_at_ms,
            flow,
            transport,
            edge,
            notified,
            digest,
        })
    }
}

/// The overlay entry id of subscription `id`.
pub fn entry_id(id: &[u8; 16]) -> Bytes {
    let mut v = Vec::with_capacity(17);
    v.push(WATCH_PREFIX);
    v.extend_from_slice(id);
    Bytes::from(v)
}

/// Whether an overlay entry id is a subscription's.
pub fn is_watch_id(id: &[u8]) -> bool {
    id.first() == Some(&WATCH_PREFIX) && id.len() == 17
}

/// The id a contact has in the documents: stable for a binding's key.
fn contact_id(b: &Binding) -> u32 {
    // FNV-1a: the same on every node and release.
    b.key().to_entry_id().iter().fold(0x811c_9dc5u32, |h, &c| {
        (h ^ u32::from(c)).wrapping_mul(0x0100_0193)
    })
}

/// A reg event document and what it told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegInfo {
    pub version: u32,
    pub body: Vec<u8>,
    /// The contacts as the watcher now knows them.
    pub notified: Vec<Notified>,
}

fn xml_escape(out: &mut String, text: &[u8]) {
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// The next reg event document (RFC 3680 §5.3) for `sub`, given the
/// resource's live `bindings`: the full state when none was sent yet, else
/// a partial one listing the contacts that appeared, were refreshed or
/// shortened, or went (expired, or unregistered); `None` when nothing
/// changed. `ending` forces a document (the last one of the subscription).
pub fn reginfo(
    sub: &Subscription,
    bindings: &[Binding],
    now_ms: u64,
    ending: bool,
) -> Option<RegInfo> {
    let full = sub.version.is_none();
    let mut contacts = String::new();
    let mut notified = Vec::with_capacity(bindings.len());
    for b in bindings {
        let id = contact_id(b);
        let before = sub.notified.iter().find(|n| n.id == id);
        let event = match before {
            None => "registered",
            Some(n) if n.hlc == b.hlc => "",
            Some(n) if b.expires_at_ms < n.expires_at_ms => "shortened",
            Some(_) => "refreshed",
        };
        notified.push(Notified {
            id,
            expires_at_ms: b.expires_at_ms,
            hlc: b.hlc,
        });
        if event.is_empty() && !full {
            continue;
        }
        let event = if event.is_empty() {
            "registered"
        } else {
            event
        };
        contacts.push_str(&format!(
            "    <contact id=\"{id}\" state=\"active\" event=\"{event}\" expires=\"{}\"",
            b.remaining_secs(now_ms)
        ));
        if let Some(q) = b.q {
            contacts.push_str(&format!(" q=\"{}.{:03}\"", q / 1000, q % 1000));
        }
        contacts.push_str(">\n      <uri>");
        xml_escape(&mut contacts, &b.contact);
        contacts.push_str("</uri>\n    </contact>\n");
    }
    if !full {
        for gone in sub
            .notified
            .iter()
            .filter(|n| !notified.iter().any(|m| m.id == n.id))
        {
            let event = if gone.expires_at_ms <= now_ms {
                "expired"
            } else {
                "unregistered"
            };
            contacts.push_str(&format!(
                "    <contact id=\"{}\" state=\"terminated\" event=\"{event}\" expires=\"0\"/>\n",
                gone.id
            ));
        }
    }
    if contacts.is_empty() && !full && !ending {
        return None;
    }
    let state = match (bindings.is_empty(), sub.notified.is_empty() && full) {
        (false, _) => "active",
        (true, true) => "init",
        (true, false) => "terminated",
    };
    let version = sub.version.map_or(0, |v| v + 1);
    let mut doc = format!(
        "<?xml version=\"1.0\"?>\n<reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"{version}\" state=\"{}\">\n  <registration aor=\"",
        if full { "full" } else { "partial" }
    );
    xml_escape(&mut doc, &sub.resource);
    doc.push_str(&format!("\" id=\"{:08x}\" state=\"{state}\">\n", {
        let r = &sub.resource;
        r.iter().fold(0x811c_9dc5u32, |h, &c| {
            (h ^ u32::from(c)).wrapping_mul(0x0100_0193)
        })
    }));
    doc.push_str(&contacts);
    doc.push_str("  </registration>\n</reginfo>\n");
    Some(RegInfo {
        version,
        body: doc.into_bytes(),
        notified,
    })
}

/// When the document of `sub` next changes without any write: the
/// earliest expiry of a binding it describes, or of the subscription.
pub fn next_due(sub: &Subscription) -> u64 {
    sub.notified
        .iter()
        .map(|n| n.expires_at_ms)
        .chain([sub.expires_at_ms])
        .min()
        .unwrap_or(sub.expires_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::sample;

    fn sub() -> Subscription {
        Subscription {
            id: [7; 16],
            event: Bytes::from_static(b"reg"),
            resource: Bytes::from_static(b"sip:user1@ringmesh.test"),
            call_id: Bytes::from_static(b"w1@x"),
            local_tag: Bytes::from_static(b"rm1"),
            remote_tag: Bytes::from_static(b"w"),
            remote_uri: Bytes::from_static(b"sip:watcher@ringmesh.test"),
            remote_target: Bytes::from_static(b"sip:watcher@192.0.2.9:5060"),
            route_set: None,
            remote_cseq: 1,
            local_cseq: 0,
            version: None,
            expires_at_ms: 1_000_000,
            flow: FlowRef::Udp {
                socket: 0,
                peer: "192.0.2.9:5060".parse().unwrap(),
            },
            transport: Transport::Udp,
            edge: [1; 16],
            notified: Vec::new(),
            digest: 0,
        }
    }

    #[test]
    fn a_subscription_round_trips_and_a_cut_one_does_not_decode() {
        let mut s = sub();
        assert_eq!(Subscription::decode(&s.encode()), Some(s.clone()));
        s.route_set = Some(Bytes::from_static(b"<sip:p.example;lr>"));
        s.version = Some(4);
        s.flow = FlowRef::Conn {
            id: 99,
            peer: "[2001:db8::1]:5061".parse().unwrap(),
            transport: Transport::Tls,
        };
        s.transport = Transport::Tls;
        s.notified = vec![Notified {
            id: 3,
            expires_at_ms: 9,
            hlc: 10,
        }];
        let enc = s.encode();
        assert_eq!(Subscription::decode(&enc), Some(s));
        for cut in 0..enc.len() {
            assert_eq!(Subscription::decode(&enc[..cut]), None, "cut at {cut}");
        }
        assert!(is_watch_id(&sub().entry_id()));
        assert!(!is_watch_id(b"c sip:x"));
        // With a digest: the second layout; without, the first (which a
        // release that knows only it reads).
        assert_eq!(sub().encode()[0], FORMAT);
        let presence = Subscription {
            digest: 77,
            ..sub()
        };
        let enc = presence.encode();
        assert_eq!(enc[0], FORMAT_DIGEST);
        assert_eq!(Subscription::decode(&enc), Some(presence));
        for cut in 0..enc.len() {
            assert_eq!(Subscription::decode(&enc[..cut]), None, "cut at {cut}");
        }
    }

    fn text(r: &RegInfo) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    #[test]
    fn full_state_then_only_what_changed_with_rising_versions() {
        let now = 100_000;
        let mut s = sub();
        // Nothing registered: a full document in state init.
        let first = reginfo(&s, &[], now, false).unwrap();
        assert_eq!(first.version, 0);
        assert!(text(&first).contains("version=\"0\" state=\"full\""));
        assert!(text(&first).contains("state=\"init\""));
        s.version = Some(first.version);
        s.notified = first.notified;
        assert_eq!(reginfo(&s, &[], now, false), None, "nothing changed");
        // A phone registers.
        let b = sample(1, now + 60_000);
        let second = reginfo(&s, std::slice::from_ref(&b), now, false).unwrap();
        assert_eq!(second.version, 1);
        let t = text(&second);
        assert!(t.contains("state=\"partial\""), "{t}");
        assert!(t.contains("event=\"registered\" expires=\"60\""), "{t}");
        assert!(t.contains("<uri>sip:user1@127.0.0.1:5070;transport=udp</uri>"));
        s.version = Some(1);
        s.notified = second.notified;
        // It refreshes (a new HLC).
        let refreshed = Binding {
            hlc: b.hlc + 1,
            expires_at_ms: now + 120_000,
            ..b.clone()
        };
        let third = reginfo(&s, std::slice::from_ref(&refreshed), now, false).unwrap();
        assert!(text(&third).contains("event=\"refreshed\""));
        s.version = Some(2);
        s.notified = third.notified;
        // It de-registers before its expiry, then the document says so.
        let fourth = reginfo(&s, &[], now, false).unwrap();
        assert_eq!(fourth.version, 3);
        let t = text(&fourth);
        assert!(
            t.contains("state=\"terminated\" event=\"unregistered\""),
            "{t}"
        );
        assert!(t.contains("<registration aor=\"sip:user1@ringmesh.test\""));
        // One that ran out is "expired".
        s.version = Some(3);
        let gone = reginfo(&s, &[], now + 200_000, false).unwrap();
        assert!(text(&gone).contains("event=\"expired\""));
        // The last document of a subscription is sent even if nothing changed.
        s.notified = Vec::new();
        assert!(reginfo(&s, &[], now, true).is_some());
    }

    #[test]
    fn markup_in_a_uri_is_escaped() {
        let mut s = sub();
        s.resource = Bytes::from_static(b"sip:a&b@x");
        let b = Binding {
            contact: Bytes::from_static(b"sip:<evil>@192.0.2.1"),
            ..sample(1, 200_000)
        };
        let t = text(&reginfo(&s, &[b], 100_000, false).unwrap());
        assert!(t.contains("aor=\"sip:a&amp;b@x\""));
        assert!(t.contains("<uri>sip:&lt;evil&gt;@192.0.2.1</uri>"));
    }
}
