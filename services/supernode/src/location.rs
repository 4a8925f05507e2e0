//! The location service: where each address-of-record can be reached.
//!
//! Registrar and proxy talk to it only through [`LocationService`], so the
//! farm can swap the node-local [`LocalStore`] for the replicated overlay
//! store without touching them. Operations are submitted and complete
//! later ([`LocationService::poll_complete`]): the local store completes at
//! once, the overlay store after a quorum of replicas answered.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use ringmesh_sip::aor::Aor;

use crate::config::Transport;
use crate::registrar::{self, RegisterPlan, RegistrarError};

/// How a binding's edge supernode reaches the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowRef {
    /// UDP: the local socket index and the leaf's address.
    Udp { socket: u16, peer: SocketAddr },
    /// A TCP (later TLS/WS) connection accepted or opened by the edge.
    Conn { id: u64, peer: SocketAddr },
}

impl FlowRef {
    pub fn peer(&self) -> SocketAddr {
        match self {
            FlowRef::Udp { peer, .. } | FlowRef::Conn { peer, .. } => *peer,
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
}

/// Version of [`Binding::encode`]'s layout.
const BINDING_FORMAT: u8 = 2;

impl Binding {
    /// A compact, versioned encoding: the value stored in the overlay.
    pub fn encode(&self) -> Bytes {
        use bytes::BufMut as _;
        let mut b = bytes::BytesMut::with_capacity(64 + self.contact.len() + self.call_id.len());
        b.put_u8(BINDING_FORMAT);
        put_bytes(&mut b, &self.aor);
        put_bytes(&mut b, &self.contact);
        put_bytes(&mut b, self.instance.as_deref().unwrap_or_default());
        b.put_u8(
            u8::from(self.instance.is_some())
                | u8::from(self.reg_id.is_some()) << 1
                | u8::from(self.q.is_some()) << 2,
        );
        b.put_u32(self.reg_id.unwrap_or(0));
        b.put_u16(self.q.unwrap_or(0));
        b.put_u64(self.expires_at_ms);
        put_bytes(&mut b, &self.call_id);
        b.put_u32(self.cseq);
        b.put_u8(match self.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        });
        b.put_slice(&self.edge);
        let (kind, extra, peer) = match self.flow {
            FlowRef::Udp { socket, peer } => (0u8, u64::from(socket), peer),
            FlowRef::Conn { id, peer } => (1u8, id, peer),
        };
        b.put_u8(kind);
        b.put_u64(extra);
        match peer.ip() {
            std::net::IpAddr::V4(ip) => {
                b.put_u8(4);
                b.put_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                b.put_u8(6);
                b.put_slice(&ip.octets());
            }
        }
        b.put_u16(peer.port());
        b.put_u64(self.hlc);
        b.freeze()
    }

    /// Decodes [`Binding::encode`]'s output; `None` for anything else.
    pub fn decode(mut b: &[u8]) -> Option<Binding> {
        use bytes::Buf as _;
        fn take_bytes(b: &mut &[u8]) -> Option<Bytes> {
            if b.remaining() < 2 {
                return None;
            }
            let n = b.get_u16() as usize;
            if b.remaining() < n {
                return None;
            }
            let v = Bytes::copy_from_slice(&b[..n]);
            b.advance(n);
            Some(v)
        }
        if b.remaining() < 1 || b.get_u8() != BINDING_FORMAT {
            return None;
        }
        let aor = take_bytes(&mut b)?;
        let contact = take_bytes(&mut b)?;
        let instance = take_bytes(&mut b)?;
        if b.remaining() < 1 + 4 + 2 + 8 {
            return None;
        }
        let flags = b.get_u8();
        let reg_id = b.get_u32();
        let q = b.get_u16();
        let expires_at_ms = b.get_u64();
        let call_id = take_bytes(&mut b)?;
        if b.remaining() < 4 + 1 + 16 + 1 + 8 + 1 {
            return None;
        }
        let cseq = b.get_u32();
        let transport = if b.get_u8() == 1 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let mut edge = [0u8; 16];
        b.copy_to_slice(&mut edge);
        let kind = b.get_u8();
        let extra = b.get_u64();
        let ip: std::net::IpAddr = match b.get_u8() {
            4 if b.remaining() >= 4 => {
                let mut o = [0u8; 4];
                b.copy_to_slice(&mut o);
                o.into()
            }
            6 if b.remaining() >= 16 => {
                let mut o = [0u8; 16];
                b.copy_to_slice(&mut o);
                o.into()
            }
            _ => return None,
        };
        if b.remaining() < 2 + 8 {
            return None;
        }
        let peer = SocketAddr::new(ip, b.get_u16());
        let hlc = b.get_u64();
        let flow = match kind {
            0 => FlowRef::Udp {
                socket: extra as u16,
                peer,
            },
            1 => FlowRef::Conn { id: extra, peer },
            _ => return None,
        };
        Some(Binding {
            aor,
            contact,
            instance: (flags & 1 != 0).then_some(instance),
            reg_id: (flags & 2 != 0).then_some(reg_id),
            q: (flags & 4 != 0).then_some(q),
            expires_at_ms,
            call_id,
            cseq,
            flow,
            transport,
            edge,
            hlc,
        })
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

fn put_bytes(b: &mut bytes::BytesMut, v: &[u8]) {
    use bytes::BufMut as _;
    let v = &v[..v.len().min(u16::MAX as usize)];
    b.put_u16(v.len() as u16);
    b.put_slice(v);
}

impl BindingKey {
    /// The overlay entry id of this binding.
    pub fn to_entry_id(&self) -> Bytes {
        let mut v = Vec::new();
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

/// What a location operation asks for.
#[derive(Debug, Clone)]
pub enum LocationOp {
    /// Apply a REGISTER; completes with every current binding.
    Register {
        aor: Aor,
        plan: RegisterPlan,
        now_ms: u64,
    },
    /// Read the live bindings of an AOR.
    Lookup { aor: Aor, now_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error(transparent)]
    Registrar(#[from] RegistrarError),
    /// The write could not reach a quorum of replicas (answer 503).
    #[error("location store unavailable: {0}")]
    Unavailable(String),
}

/// A finished operation: the token it was submitted with and its outcome.
pub type Completion = (u64, Result<Vec<Binding>, LocationError>);

/// The location service as registrar and proxy see it.
pub trait LocationService: Send + 'static {
    fn submit(&mut self, op: LocationOp, token: u64);
    /// The next finished operation. The local store finishes during
    /// `submit`; remote stores wake the task when an answer arrives.
    fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<Completion>;
    /// Drops expired bindings; called periodically.
    fn expire(&mut self, now_ms: u64);
    /// What this node holds, for metrics.
    fn counts(&self) -> Held;
}

/// Counts of what a node holds: AORs, and bindings for which it is the
/// primary replica or a secondary one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub aors: usize,
    pub primary: usize,
    pub replica: usize,
}

/// Node-local bindings: the whole location service of a one-node farm.
#[derive(Debug, Default)]
pub struct LocalStore {
    aors: HashMap<Aor, Vec<Binding>>,
    bindings: usize,
    done: VecDeque<Completion>,
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore::default()
    }

    fn live(list: &[Binding], now_ms: u64) -> Vec<Binding> {
        let mut v: Vec<Binding> = list
            .iter()
            .filter(|b| b.expires_at_ms > now_ms)
            .cloned()
            .collect();
        registrar::sort_by_preference(&mut v);
        v
    }
}

impl LocationService for LocalStore {
    fn submit(&mut self, op: LocationOp, token: u64) {
        let result = match op {
            LocationOp::Register { aor, plan, now_ms } => {
                let list = self.aors.entry(aor.clone()).or_default();
                let before = list.len();
                let r = registrar::apply(list, &plan, now_ms).map_err(LocationError::from);
                let after = list.len();
                self.bindings = self.bindings + after - before;
                let out = r.map(|()| Self::live(list, now_ms));
                if list.is_empty() {
                    self.aors.remove(&aor);
                }
                out
            }
            LocationOp::Lookup { aor, now_ms } => Ok(self
                .aors
                .get(&aor)
                .map(|l| Self::live(l, now_ms))
                .unwrap_or_default()),
        };
        self.done.push_back((token, result));
    }

    fn poll_complete(&mut self, _cx: &mut Context<'_>) -> Poll<Completion> {
        match self.done.pop_front() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let mut removed = 0;
        self.aors.retain(|_, list| {
            let before = list.len();
            list.retain(|b| b.expires_at_ms > now_ms);
            removed += before - list.len();
            !list.is_empty()
        });
        self.bindings -= removed;
    }

    fn counts(&self) -> Held {
        Held {
            aors: self.aors.len(),
            primary: self.bindings,
            replica: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_encoding_round_trips() {
        for flow in [
            FlowRef::Udp {
                socket: 2,
                peer: "192.0.2.1:5060".parse().unwrap(),
            },
            FlowRef::Conn {
                id: 77,
                peer: "[2001:db8::5]:40000".parse().unwrap(),
            },
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
                transport: Transport::Tcp,
                edge: [3; 16],
                hlc: 42 << 16,
            };
            assert_eq!(Binding::decode(&b.encode()), Some(b.clone()));
            let plain = Binding {
                instance: None,
                reg_id: None,
                q: None,
                ..b
            };
            assert_eq!(Binding::decode(&plain.encode()), Some(plain.clone()));
            let enc = plain.encode();
            for cut in 0..enc.len() {
                assert_eq!(Binding::decode(&enc[..cut]), None, "truncated at {cut}");
            }
        }
        assert_eq!(Binding::decode(b"\x09garbage"), None);
    }
}
