//! Bindings: what a REGISTER leaves behind, and how it is stored.
//!
//! A [`Binding`] is one registered contact of an address-of-record, with
//! the [`FlowRef`] it arrived on and the Node-ID of the edge supernode that
//! holds that flow. Two encodings exist, both compact and versioned: the
//! standalone form ([`Binding::encode`], what the node-local store keeps)
//! and the overlay-entry form ([`Binding::encode_entry`]), which leaves out
//! what the overlay entry already carries (its id, origin, expiry, clock).

use std::net::SocketAddr;

use bytes::{Buf, Bytes};

/// A SIP transport a flow runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26).
    Tls,
    /// WebSocket (RFC 7118), in clear.
    Ws,
    /// WebSocket over TLS (RFC 7118).
    Wss,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
    /// The token used in Via and the `transport` URI parameter.
    pub fn via_token(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }
    /// The transport a Via token or `transport` URI parameter names, in
    /// any case; `None` for one this node does not speak (SCTP).
    pub fn from_token(token: &[u8]) -> Option<Transport> {
        Transport::ALL
            .into_iter()
            .find(|t| token.eq_ignore_ascii_case(t.as_str().as_bytes()))
    }
    /// Whether it runs over a connection (reliable, no retransmissions).
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
    /// Whether it is encrypted (what a `sips:` URI requires, RFC 5630).
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
    /// The code of a stream transport in the binding and token encodings
    /// (TCP is 0, so that what older releases wrote reads as TCP).
    pub(crate) fn stream_code(self) -> u8 {
        match self {
            Transport::Udp | Transport::Tcp => 0,
            Transport::Tls => 1,
            Transport::Ws => 2,
            Transport::Wss => 3,
        }
    }
    pub(crate) fn from_stream_code(code: u8) -> Option<Transport> {
        [
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ]
        .get(usize::from(code))
        .copied()
    }
}

/// How a binding's edge supernode reaches the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowRef {
    /// UDP: the local socket index and the leaf's address.
    Udp { socket: u16, peer: SocketAddr },
    /// A connection (TCP, TLS, WebSocket) accepted or opened by the edge.
    Conn {
        id: u64,
        peer: SocketAddr,
        transport: Transport,
    },
}

impl FlowRef {
    pub fn peer(&self) -> SocketAddr {
        match self {
            FlowRef::Udp { peer, .. } | FlowRef::Conn { peer, .. } => *peer,
        }
    }
    pub fn transport(&self) -> Transport {
        match self {
            FlowRef::Udp { .. } => Transport::Udp,
            FlowRef::Conn { transport, .. } => *transport,
        }
    }
}

/// One registered contact of an AOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The canonical AOR this binding belongs to (for admin listings).
    pub aor: Bytes,
    /// The Contact URI as registered (without `<>` and header parameters).
    pub contact: Bytes,
    /// `+sip.instance` (RFC 5626), unquoted.
    pub instance: Option<Bytes>,
    /// `reg-id` (RFC 5626): the registration asked for outbound routing.
    pub reg_id: Option<u32>,
    /// q-value in thousandths; `None` when the contact named none.
    pub q: Option<u16>,
    /// Absolute expiry, milliseconds since the UNIX epoch.
    pub expires_at_ms: u64,
    /// Call-ID and CSeq of the REGISTER that wrote it (RFC 3261 §10.3 step 7).
    pub call_id: Bytes,
    pub cseq: u32,
    /// The flow the REGISTER arrived on, and where it came from. Only the
    /// edge supernode can use it.
    pub flow: FlowRef,
    pub transport: Transport,
    /// Node-ID of the edge supernode that holds `flow`.
    pub edge: [u8; 16],
    /// Hybrid logical clock stamp of the write (merge order in the overlay).
    pub hlc: u64,
    /// The Path of the REGISTER (RFC 3327), its values comma-joined in
    /// order: the proxies (a P-CSCF) a request to this contact goes
    /// through, as Route values.
    pub path: Option<Bytes>,
}

/// Layouts of [`Binding::encode`]: 3 is the standalone form (everything in
/// the value); 4 is the form stored in an overlay entry, which leaves out
/// what the entry already carries. 5 and 6 are 3 and 4 with the stream
/// transport's code ([`Transport::stream_code`]) after the flags, written
/// for TLS and WebSocket bindings only, so that UDP and TCP ones stay
/// readable by releases that know no other transport. 7 and 8 are 5 and
/// 6 with an extension byte after the transport's (its bits say which
/// optional fields follow it: [`X_PATH`]), written only for bindings that
/// have such a field. (2, a fixed-width form, is no longer written or
/// read.)
pub(crate) const FORMAT_FULL: u8 = 3;
const FORMAT_ENTRY: u8 = 4;
/// What a format becomes with the transport byte.
const WITH_TRANSPORT: u8 = 2;
const FORMAT_FULL_T: u8 = FORMAT_FULL + WITH_TRANSPORT;
const FORMAT_ENTRY_T: u8 = FORMAT_ENTRY + WITH_TRANSPORT;
/// What a format becomes with the transport and extension bytes.
const WITH_EXTENSIONS: u8 = 4;
const FORMAT_FULL_X: u8 = FORMAT_FULL + WITH_EXTENSIONS;
const FORMAT_ENTRY_X: u8 = FORMAT_ENTRY + WITH_EXTENSIONS;
/// Extension bit: a Path (text) follows the extension byte.
const X_PATH: u8 = 1;

// Flags of formats 3 and 4.
const F_INSTANCE: u8 = 1;
const F_REG_ID: u8 = 2;
const F_Q: u8 = 4;
/// A stream transport (TCP in formats 3 and 4).
const F_TCP: u8 = 8;
const F_CONN: u8 = 16;
const F_V6: u8 = 32;
/// Format 4: the contact is the entry id's (a contact-keyed binding whose
/// contact is already in normal form).
const F_CONTACT_IN_ID: u8 = 64;
/// Format 4: the edge is the entry's origin (the node that wrote it).
const F_EDGE_IS_ORIGIN: u8 = 128;

/// What an overlay entry carries beside its value, for
/// [`Binding::decode_entry`].
#[derive(Debug, Clone, Copy)]
pub struct EntryFacts<'a> {
    pub id: &'a [u8],
    pub origin: [u8; 16],
    pub expires_at_ms: u64,
    pub hlc: u64,
}

pub(crate) fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

pub(crate) fn put_text(b: &mut Vec<u8>, v: &[u8]) {
    let v = &v[..v.len().min(u16::MAX as usize)];
    put_varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

// Reading an encoding: a `&[u8]` is a `bytes::Buf` cursor, and every read
// is checked (`try_get_*`): a truncated input decodes to `None`.

/// The next `n` bytes, borrowed from the input; `None` when fewer remain.
pub(crate) fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (v, rest) = buf.split_at_checked(n)?;
    *buf = rest;
    Some(v)
}

/// A LEB128 varint of at most ten bytes.
pub(crate) fn get_varint(buf: &mut impl Buf) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = buf.try_get_u8().ok()?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The next `N` bytes; `None` when fewer remain.
pub(crate) fn get_array<const N: usize>(buf: &mut impl Buf) -> Option<[u8; N]> {
    let mut a = [0u8; N];
    buf.try_copy_to_slice(&mut a).ok()?;
    Some(a)
}

/// A length-prefixed text (what [`put_text`] writes).
pub(crate) fn get_text<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_varint(buf)?;
    if n > u64::from(u16::MAX) {
        return None;
    }
    take(buf, n as usize)
}

impl Binding {
    /// The standalone encoding (format 3): compact, versioned, every field
    /// included. What the node-local store keeps.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.encode_vec(FORMAT_FULL, None))
    }

    /// The value of this binding's overlay entry (format 4): the fields the
    /// entry does not already carry (its id, origin, expiry and HLC).
    pub fn encode_entry(&self, id: &[u8], origin: [u8; 16]) -> Bytes {
        Bytes::from(self.encode_vec(FORMAT_ENTRY, Some((id, origin))))
    }

    pub(crate) fn encode_vec(&self, format: u8, entry: Option<(&[u8], [u8; 16])>) -> Vec<u8> {
        let contact_in_id = entry.is_some_and(|(id, _)| {
            self.instance.is_none() && id.first() == Some(&b'c') && id[1..] == self.contact[..]
        });
        let edge_is_origin = entry.is_some_and(|(_, origin)| origin == self.edge);
        let (kind, extra, peer) = match self.flow {
            FlowRef::Udp { socket, peer } => (0, u64::from(socket), peer),
            FlowRef::Conn { id, peer, .. } => (F_CONN, id, peer),
        };
        let mut flags = kind;
        if self.instance.is_some() {
            flags |= F_INSTANCE;
        }
        if self.reg_id.is_some() {
            flags |= F_REG_ID;
        }
        if self.q.is_some() {
            flags |= F_Q;
        }
        if self.transport.is_stream() {
            flags |= F_TCP;
        }
        if peer.is_ipv6() {
            flags |= F_V6;
        }
        if contact_in_id {
            flags |= F_CONTACT_IN_ID;
        }
        if edge_is_origin {
            flags |= F_EDGE_IS_ORIGIN;
        }
        let with_transport = self.transport.is_stream() && self.transport != Transport::Tcp;
        let mut b = Vec::with_capacity(
            64 + self.aor.len()
                + self.contact.len()
                + self.call_id.len()
                + self.instance.as_ref().map_or(0, Bytes::len)
                + self.path.as_ref().map_or(0, Bytes::len),
        );
        if let Some(path) = &self.path {
            b.push(format + WITH_EXTENSIONS);
            b.push(flags);
            b.push(self.transport.stream_code());
            b.push(X_PATH);
            put_text(&mut b, path);
        } else if with_transport {
            b.push(format + WITH_TRANSPORT);
            b.push(flags);
            b.push(self.transport.stream_code());
        } else {
            b.push(format);
            b.push(flags);
        }
        put_text(&mut b, &self.aor);
        if !contact_in_id {
            put_text(&mut b, &self.contact);
        }
        if let Some(i) = &self.instance {
            put_text(&mut b, i);
        }
        put_text(&mut b, &self.call_id);
        put_varint(&mut b, u64::from(self.cseq));
        if let Some(r) = self.reg_id {
            put_varint(&mut b, u64::from(r));
        }
        if let Some(q) = self.q {
            put_varint(&mut b, u64::from(q));
        }
        if format == FORMAT_FULL {
            b.extend_from_slice(&self.expires_at_ms.to_be_bytes());
            b.extend_from_slice(&self.hlc.to_be_bytes());
        }
        if !edge_is_origin {
            b.extend_from_slice(&self.edge);
        }
        put_varint(&mut b, extra);
        match peer.ip() {
            std::net::IpAddr::V4(ip) => b.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => b.extend_from_slice(&ip.octets()),
        }
        b.extend_from_slice(&peer.port().to_be_bytes());
        // Exact size: stored values must not carry spare capacity.
        b.shrink_to_fit();
        b
    }

    /// Decodes a standalone encoding (format 3); `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Binding> {
        match b.first() {
            Some(&(FORMAT_FULL | FORMAT_FULL_T | FORMAT_FULL_X)) => decode_compact(b, None),
            _ => None,
        }
    }

    /// Decodes the value of an overlay entry (format 4, or a standalone
    /// value) with what the entry carries beside it.
    pub fn decode_entry(value: &[u8], facts: EntryFacts<'_>) -> Option<Binding> {
        let mut b = match value.first() {
            Some(&(FORMAT_ENTRY | FORMAT_ENTRY_T | FORMAT_ENTRY_X)) => {
                decode_compact(value, Some(facts))?
            }
            _ => Binding::decode(value)?,
        };
        b.hlc = facts.hlc;
        Some(b)
    }

    /// Identity of a binding within its AOR: instance + reg-id when the UA
    /// uses RFC 5626, else the contact URI (RFC 3261 §10.3 step 7).
    pub fn key(&self) -> BindingKey {
        binding_key(self.instance.as_deref(), self.reg_id, &self.contact)
    }
    /// Seconds left, rounded up.
    pub fn remaining_secs(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms).div_ceil(1000)
    }
    /// True when the binding asked that requests reach it over its flow:
    /// RFC 5626 outbound, or registered over a connection.
    pub fn use_flow(&self) -> bool {
        self.reg_id.is_some() || matches!(self.flow, FlowRef::Conn { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BindingKey {
    Instance(Bytes, u32),
    Contact(Bytes),
}

pub fn binding_key(instance: Option<&[u8]>, reg_id: Option<u32>, contact: &[u8]) -> BindingKey {
    match instance {
        Some(i) => BindingKey::Instance(Bytes::copy_from_slice(i), reg_id.unwrap_or(0)),
        None => BindingKey::Contact(Bytes::copy_from_slice(&normalize_contact(contact))),
    }
}

/// Formats 3 and 4 (4 takes the fields it leaves out from `entry`).
fn decode_compact(b: &[u8], entry: Option<EntryFacts<'_>>) -> Option<Binding> {
    let mut r = b;
    let mut format = r.try_get_u8().ok()?;
    let flags = r.try_get_u8().ok()?;
    let mut path = None;
    let transport = if format > FORMAT_ENTRY_T {
        // The extended forms: a transport code (0 for UDP and TCP, told
        // apart by the flag), then the extensions.
        format -= WITH_EXTENSIONS;
        let code = r.try_get_u8().ok()?;
        let t = match flags & F_TCP {
            0 if code == 0 => Transport::Udp,
            0 => return None,
            _ => Transport::from_stream_code(code)?,
        };
        let ext = r.try_get_u8().ok()?;
        if ext & !X_PATH != 0 {
            return None;
        }
        if ext & X_PATH != 0 {
            path = Some(Bytes::copy_from_slice(get_text(&mut r)?));
        }
        t
    } else if format > FORMAT_ENTRY {
        format -= WITH_TRANSPORT;
        let t = Transport::from_stream_code(r.try_get_u8().ok()?)?;
        (flags & F_TCP != 0 && t != Transport::Tcp).then_some(t)?
    } else if flags & F_TCP != 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let aor = Bytes::copy_from_slice(get_text(&mut r)?);
    let contact = if flags & F_CONTACT_IN_ID != 0 {
        let id = entry?.id;
        if id.first() != Some(&b'c') {
            return None;
        }
        Bytes::copy_from_slice(&id[1..])
    } else {
        Bytes::copy_from_slice(get_text(&mut r)?)
    };
    let instance = if flags & F_INSTANCE != 0 {
        Some(Bytes::copy_from_slice(get_text(&mut r)?))
    } else {
        None
    };
    let call_id = Bytes::copy_from_slice(get_text(&mut r)?);
    let cseq = u32::try_from(get_varint(&mut r)?).ok()?;
    let reg_id = match flags & F_REG_ID {
        0 => None,
        _ => Some(u32::try_from(get_varint(&mut r)?).ok()?),
    };
    let q = match flags & F_Q {
        0 => None,
        _ => Some(u16::try_from(get_varint(&mut r)?).ok()?),
    };
    let (expires_at_ms, hlc) = if format == FORMAT_FULL {
        (r.try_get_u64().ok()?, r.try_get_u64().ok()?)
    } else {
        let e = entry?;
        (e.expires_at_ms, e.hlc)
    };
    let edge = if flags & F_EDGE_IS_ORIGIN != 0 {
        entry?.origin
    } else {
        get_array(&mut r)?
    };
    let extra = get_varint(&mut r)?;
    let ip: std::net::IpAddr = if flags & F_V6 != 0 {
        get_array::<16>(&mut r)?.into()
    } else {
        get_array::<4>(&mut r)?.into()
    };
    let peer = SocketAddr::new(ip, r.try_get_u16().ok()?);
    if r.has_remaining() {
        return None;
    }
    let flow = if flags & F_CONN != 0 {
        FlowRef::Conn {
            id: extra,
            peer,
            transport,
        }
    } else {
        FlowRef::Udp {
            socket: u16::try_from(extra).ok()?,
            peer,
        }
    };
    Some(Binding {
        aor,
        contact,
        instance,
        reg_id,
        q,
        expires_at_ms,
        call_id,
        cseq,
        flow,
        transport,
        edge,
        hlc,
        path,
    })
}

/// Whether an overlay entry id is a binding's (other records, such as
/// aliases, share the AOR's key under other ids).
pub fn is_binding_id(id: &[u8]) -> bool {
    matches!(id.first(), Some(b'i' | b'c'))
}

impl BindingKey {
    /// The overlay entry id of this binding.
    pub fn to_entry_id(&self) -> Bytes {
        let mut v = Vec::with_capacity(match self {
            BindingKey::Instance(i, _) => 5 + i.len(),
            BindingKey::Contact(c) => 1 + c.len(),
        });
        match self {
            BindingKey::Instance(i, r) => {
                v.push(b'i');
                v.extend_from_slice(&r.to_be_bytes());
                v.extend_from_slice(i);
            }
            BindingKey::Contact(c) => {
                v.push(b'c');
                v.extend_from_slice(c);
            }
        }
        Bytes::from(v)
    }
}

/// Contact URIs compare with scheme and host case-insensitive (a pragmatic
/// subset of RFC 3261 §19.1.4 that refreshes from real UAs satisfy).
fn normalize_contact(contact: &[u8]) -> Vec<u8> {
    match ringmesh_sip::Uri::parse(contact) {
        Ok(u) => {
            let mut out = Vec::with_capacity(contact.len());
            out.extend(u.scheme_text().iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            if let Some(user) = u.user() {
                out.extend_from_slice(user);
                out.push(b'@');
            }
            if let Some(h) = u.host() {
                out.extend(h.text.iter().map(u8::to_ascii_lowercase));
            }
            if let Some(p) = u.port() {
                out.extend_from_slice(format!(":{p}").as_bytes());
            }
            out.extend_from_slice(u.params_raw());
            out
        }
        Err(_) => contact.to_vec(),
    }
}

/// A binding for tests: user `i`, over UDP from 127.0.0.1:5070.
#[cfg(test)]
pub(crate) fn sample(i: u32, expires_at_ms: u64) -> Binding {
    Binding {
        aor: Bytes::from(format!("sip:user{i}@ringmesh.test")),
        contact: Bytes::from(format!("sip:user{i}@127.0.0.1:5070;transport=udp")),
        instance: None,
        reg_id: None,
        q: None,
        expires_at_ms,
        call_id: Bytes::from(format!("c{i}@x")),
        cseq: 1,
        flow: FlowRef::Udp {
            socket: 0,
            peer: "127.0.0.1:5070".parse().unwrap(),
        },
        transport: Transport::Udp,
        edge: [5; 16],
        hlc: 7 << 16,
        path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_encoding_round_trips() {
        let conn = |transport| FlowRef::Conn {
            id: 77,
            peer: "[2001:db8::5]:40000".parse().unwrap(),
            transport,
        };
        for flow in [
            FlowRef::Udp {
                socket: 2,
                peer: "192.0.2.1:5060".parse().unwrap(),
            },
            conn(Transport::Tcp),
            conn(Transport::Tls),
            conn(Transport::Ws),
            conn(Transport::Wss),
        ] {
            let b = Binding {
                aor: Bytes::from_static(b"sip:alice@ringmesh.test"),
                contact: Bytes::from_static(b"sip:alice@192.0.2.1:5060;ob"),
                instance: Some(Bytes::from_static(b"<urn:uuid:1>")),
                reg_id: Some(2),
                q: Some(500),
                expires_at_ms: 1_800_000_000_000,
                call_id: Bytes::from_static(b"abc@x"),
                cseq: 9,
                flow,
                transport: flow.transport(),
                edge: [3; 16],
                hlc: 42 << 16,
                path: None,
            };
            assert_eq!(Binding::decode(&b.encode()), Some(b.clone()));
            let plain = Binding {
                instance: None,
                reg_id: None,
                q: None,
                ..b.clone()
            };
            assert_eq!(Binding::decode(&plain.encode()), Some(plain.clone()));
            let enc = plain.encode();
            for cut in 0..enc.len() {
                assert_eq!(Binding::decode(&enc[..cut]), None, "truncated at {cut}");
            }
            // Behind a P-CSCF: the extended form, standalone and in an entry.
            let pathed = Binding {
                path: Some(Bytes::from_static(b"<sip:pcscf.example;lr>, <sip:sbc;lr>")),
                ..b.clone()
            };
            let enc = pathed.encode();
            assert_eq!(enc[0], FORMAT_FULL_X);
            assert_eq!(Binding::decode(&enc), Some(pathed.clone()));
            for cut in 0..enc.len() {
                assert_eq!(Binding::decode(&enc[..cut]), None, "truncated at {cut}");
            }
            let facts = EntryFacts {
                id: b"x",
                origin: [1; 16],
                expires_at_ms: pathed.expires_at_ms,
                hlc: pathed.hlc,
            };
            let entry = pathed.encode_entry(b"x", [1; 16]);
            assert_eq!(Binding::decode_entry(&entry, facts), Some(pathed));
            // An unknown extension bit is refused, not misread.
            let mut bad = enc.to_vec();
            bad[3] |= 0x80;
            assert_eq!(Binding::decode(&bad), None);
        }
        assert_eq!(Binding::decode(b"\x09garbage"), None);
    }

    #[test]
    fn udp_and_tcp_bindings_keep_the_layout_older_releases_read() {
        let over = |transport| Binding {
            flow: FlowRef::Conn {
                id: 4,
                peer: "192.0.2.1:40000".parse().unwrap(),
                transport,
            },
            transport,
            ..sample(1, 0)
        };
        assert_eq!(over(Transport::Tcp).encode()[0], FORMAT_FULL);
        assert_eq!(sample(1, 0).encode()[0], FORMAT_FULL);
        let tls = over(Transport::Tls);
        let enc = tls.encode_entry(b"x", [5; 16]);
        assert_eq!(enc[0], FORMAT_ENTRY_T);
        let facts = EntryFacts {
            id: b"x",
            origin: [5; 16],
            expires_at_ms: 0,
            hlc: tls.hlc,
        };
        assert_eq!(Binding::decode_entry(&enc, facts), Some(tls));
        // A transport byte naming TCP, or none on a stream flag, is refused.
        let mut bad = enc.to_vec();
        bad[2] = 0;
        assert_eq!(Binding::decode_entry(&bad, facts), None);
    }

    #[test]
    fn requests_use_the_flow_of_outbound_and_connection_bindings() {
        let udp = sample(1, 0);
        assert!(!udp.use_flow());
        let outbound = Binding {
            reg_id: Some(1),
            ..udp.clone()
        };
        assert!(outbound.use_flow());
        let tcp = Binding {
            flow: FlowRef::Conn {
                id: 4,
                peer: "192.0.2.1:40000".parse().unwrap(),
                transport: Transport::Tcp,
            },
            ..udp
        };
        assert!(tcp.use_flow());
    }

    #[test]
    fn transport_names() {
        let names = |t: Transport| (t.as_str(), t.via_token());
        assert_eq!(names(Transport::Udp), ("udp", "UDP"));
        assert_eq!(names(Transport::Tcp), ("tcp", "TCP"));
        assert_eq!(names(Transport::Wss), ("wss", "WSS"));
        for t in Transport::ALL {
            assert_eq!(Transport::from_token(t.via_token().as_bytes()), Some(t));
            if t.is_stream() {
                assert_eq!(Transport::from_stream_code(t.stream_code()), Some(t));
            }
        }
        assert_eq!(Transport::from_token(b"SCTP"), None);
    }

    #[test]
    fn a_text_is_at_most_64_kib_long() {
        for (n, ok) in [(65_535usize, true), (65_536, false)] {
            let mut buf = Vec::new();
            put_varint(&mut buf, n as u64);
            buf.resize(buf.len() + n, b'x');
            let mut r = &buf[..];
            assert_eq!(get_text(&mut r).is_some(), ok, "{n} bytes");
        }
    }

    #[test]
    fn entry_form_leaves_out_what_the_entry_carries() {
        let b = sample(1, 1_800_000_000_000);
        let id = b.key().to_entry_id();
        let facts = EntryFacts {
            id: &id,
            origin: b.edge,
            expires_at_ms: b.expires_at_ms,
            hlc: b.hlc,
        };
        let value = b.encode_entry(&id, b.edge);
        assert!(
            value.len() + b.contact.len() + 16 + 16 <= b.encode().len() + 4,
            "contact, edge, expiry and HLC come from the entry ({} vs {})",
            value.len(),
            b.encode().len()
        );
        assert_eq!(Binding::decode_entry(&value, facts), Some(b.clone()));
        // Another edge, a contact not in normal form, an instance: all kept.
        let other = Binding {
            contact: Bytes::from_static(b"sip:a@HOST.example"),
            instance: Some(Bytes::from_static(b"<urn:uuid:9>")),
            reg_id: Some(1),
            q: Some(700),
            ..b.clone()
        };
        let id2 = other.key().to_entry_id();
        let v2 = other.encode_entry(&id2, [9; 16]);
        let facts2 = EntryFacts {
            id: &id2,
            origin: [9; 16],
            ..facts
        };
        assert_eq!(Binding::decode_entry(&v2, facts2), Some(other.clone()));
        // No instance, but a contact whose normal form (the entry id) differs.
        let unnormal = Binding {
            contact: Bytes::from_static(b"sip:a@HOST.example"),
            ..b.clone()
        };
        let id3 = unnormal.key().to_entry_id();
        let facts3 = EntryFacts { id: &id3, ..facts };
        let v3 = unnormal.encode_entry(&id3, b.edge);
        assert_eq!(Binding::decode_entry(&v3, facts3), Some(unnormal));
        // Standalone values still decode from entries.
        assert_eq!(Binding::decode_entry(&b.encode(), facts), Some(b.clone()));
        for cut in 0..value.len() {
            assert_eq!(Binding::decode_entry(&value[..cut], facts), None);
        }
    }
}
