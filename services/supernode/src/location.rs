//! The location service: where each address-of-record can be reached.
//!
//! Registrar and proxy talk to it only through [`LocationService`], so the
//! farm can swap the node-local [`LocalStore`] for the replicated overlay
//! store without touching them. Operations are submitted and complete
//! later ([`LocationService::poll_complete`]): the local store completes at
//! once, the overlay store after a quorum of replicas answered.

use std::collections::{BTreeMap, VecDeque};
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

/// Layouts of [`Binding::encode`]: 2 was fixed-width; 3 is the standalone
/// form (everything in the value); 4 is the form stored in an overlay
/// entry, which leaves out what the entry already carries.
const FORMAT_FIXED: u8 = 2;
const FORMAT_FULL: u8 = 3;
const FORMAT_ENTRY: u8 = 4;

// Flags of formats 3 and 4.
const F_INSTANCE: u8 = 1;
const F_REG_ID: u8 = 2;
const F_Q: u8 = 4;
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

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_text(b: &mut Vec<u8>, v: &[u8]) {
    let v = &v[..v.len().min(u16::MAX as usize)];
    put_varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

/// A cursor over an encoded binding; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(v)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(v)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn text(&mut self) -> Option<&'a [u8]> {
        let n = self.varint()?;
        if n > u64::from(u16::MAX) {
            return None;
        }
        self.take(n as usize)
    }
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

    fn encode_vec(&self, format: u8, entry: Option<(&[u8], [u8; 16])>) -> Vec<u8> {
        let contact_in_id = entry.is_some_and(|(id, _)| {
            self.instance.is_none() && id.first() == Some(&b'c') && id[1..] == self.contact[..]
        });
        let edge_is_origin = entry.is_some_and(|(_, origin)| origin == self.edge);
        let (kind, extra, peer) = match self.flow {
            FlowRef::Udp { socket, peer } => (0, u64::from(socket), peer),
            FlowRef::Conn { id, peer } => (F_CONN, id, peer),
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
        if self.transport == Transport::Tcp {
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
        let mut b = Vec::with_capacity(
            64 + self.aor.len()
                + self.contact.len()
                + self.call_id.len()
                + self.instance.as_ref().map_or(0, Bytes::len),
        );
        b.push(format);
        b.push(flags);
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

    /// Decodes a standalone encoding (format 3, or the older format 2);
    /// `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Binding> {
        match b.first() {
            Some(&FORMAT_FIXED) => decode_fixed(b),
            Some(&FORMAT_FULL) => decode_compact(b, None),
            _ => None,
        }
    }

    /// Decodes the value of an overlay entry (any format) with what the
    /// entry carries beside it.
    pub fn decode_entry(value: &[u8], facts: EntryFacts<'_>) -> Option<Binding> {
        let mut b = match value.first() {
            Some(&FORMAT_ENTRY) => decode_compact(value, Some(facts))?,
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
    let mut r = Reader(b);
    let format = r.u8()?;
    let flags = r.u8()?;
    let aor = Bytes::copy_from_slice(r.text()?);
    let contact = if flags & F_CONTACT_IN_ID != 0 {
        let id = entry?.id;
        if id.first() != Some(&b'c') {
            return None;
        }
        Bytes::copy_from_slice(&id[1..])
    } else {
        Bytes::copy_from_slice(r.text()?)
    };
    let instance = if flags & F_INSTANCE != 0 {
        Some(Bytes::copy_from_slice(r.text()?))
    } else {
        None
    };
    let call_id = Bytes::copy_from_slice(r.text()?);
    let cseq = u32::try_from(r.varint()?).ok()?;
    let reg_id = match flags & F_REG_ID {
        0 => None,
        _ => Some(u32::try_from(r.varint()?).ok()?),
    };
    let q = match flags & F_Q {
        0 => None,
        _ => Some(u16::try_from(r.varint()?).ok()?),
    };
    let (expires_at_ms, hlc) = if format == FORMAT_FULL {
        (r.u64()?, r.u64()?)
    } else {
        let e = entry?;
        (e.expires_at_ms, e.hlc)
    };
    let edge = if flags & F_EDGE_IS_ORIGIN != 0 {
        entry?.origin
    } else {
        r.array()?
    };
    let extra = r.varint()?;
    let ip: std::net::IpAddr = if flags & F_V6 != 0 {
        r.array::<16>()?.into()
    } else {
        r.array::<4>()?.into()
    };
    let peer = SocketAddr::new(ip, u16::from_be_bytes(r.array()?));
    if !r.0.is_empty() {
        return None;
    }
    let flow = if flags & F_CONN != 0 {
        FlowRef::Conn { id: extra, peer }
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
        transport: if flags & F_TCP != 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        edge,
        hlc,
    })
}

/// Format 2: fixed-width fields with u16 length prefixes.
fn decode_fixed(mut b: &[u8]) -> Option<Binding> {
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
    if b.remaining() < 1 || b.get_u8() != FORMAT_FIXED {
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

/// Each [`LocationService::expire`] call sweeps this share of the
/// node-local table, from where the last one stopped, so no sweep stalls
/// the SIP core for long.
const SWEEP_PARTS: usize = 16;

/// What the node-local table keeps per AOR (issue 6: about 200 bytes per
/// binding at 1,000,000): one exact-size allocation holding every binding
/// of the AOR in the standalone encoding, each prefixed with its length,
/// and the earliest expiry (seconds) so a sweep reads no blob it need not.
#[derive(Debug)]
struct Stored {
    blob: Box<[u8]>,
    first_expiry_s: u32,
}

impl Stored {
    fn encode(list: &[Binding]) -> Option<Stored> {
        if list.is_empty() {
            return None;
        }
        let mut blob = Vec::with_capacity(list.len() * 160);
        for b in list {
            let enc = b.encode_vec(FORMAT_FULL, None);
            put_varint(&mut blob, enc.len() as u64);
            blob.extend_from_slice(&enc);
        }
        let first = list
            .iter()
            .map(|b| b.expires_at_ms / 1000)
            .min()
            .unwrap_or(0);
        Some(Stored {
            blob: blob.into_boxed_slice(),
            first_expiry_s: u32::try_from(first).unwrap_or(u32::MAX),
        })
    }

    /// Every binding held, whichever AOR (a record may hold two AORs whose
    /// 64-bit keyed hashes collide).
    fn decode(&self) -> Vec<Binding> {
        let mut out = Vec::with_capacity(1);
        let mut r = Reader(&self.blob);
        while !r.0.is_empty() {
            let Some(enc) = r.varint().and_then(|n| r.take(n as usize)) else {
                break;
            };
            if let Some(b) = Binding::decode(enc) {
                out.push(b);
            }
        }
        out
    }
}

/// Node-local bindings: the whole location service of a one-node farm.
///
/// AORs are found by a 64-bit keyed hash (SipHash with a random key: no
/// peer can aim for collisions); each stored binding carries its AOR, so a
/// collision only puts two AORs in one record, told apart on every read.
/// The table is a B-tree: it grows node by node, so a million bindings
/// never cost one long rehash pause (a hash table doubles all at once), and
/// its key order lets the expiry sweep resume where it stopped.
#[derive(Debug)]
pub struct LocalStore {
    records: BTreeMap<u64, Stored>,
    hasher: std::hash::RandomState,
    aors: usize,
    bindings: usize,
    /// Where the next expiry sweep starts.
    sweep_from: u64,
    done: VecDeque<Completion>,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            records: BTreeMap::new(),
            hasher: std::hash::RandomState::new(),
            aors: 0,
            bindings: 0,
            sweep_from: 0,
            done: VecDeque::new(),
        }
    }
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore::default()
    }

    fn slot(&self, aor: &Aor) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(aor.as_bytes())
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

    fn register(
        &mut self,
        aor: &Aor,
        plan: &RegisterPlan,
        now_ms: u64,
    ) -> Result<Vec<Binding>, LocationError> {
        let h = self.slot(aor);
        let (mut mine, others): (Vec<Binding>, Vec<Binding>) = self
            .records
            .get(&h)
            .map(Stored::decode)
            .unwrap_or_default()
            .into_iter()
            .partition(|b| b.aor[..] == *aor.as_bytes());
        let before = mine.len();
        registrar::apply(&mut mine, plan, now_ms)?;
        let out = Self::live(&mine, now_ms);
        self.bindings = self.bindings + mine.len() - before;
        match (before, mine.len()) {
            (0, n) if n > 0 => self.aors += 1,
            (n, 0) if n > 0 => self.aors -= 1,
            _ => {}
        }
        let mut all = others;
        all.append(&mut mine);
        match Stored::encode(&all) {
            Some(stored) => {
                self.records.insert(h, stored);
            }
            None => {
                self.records.remove(&h);
            }
        }
        Ok(out)
    }

    fn lookup(&self, aor: &Aor, now_ms: u64) -> Vec<Binding> {
        let h = self.slot(aor);
        let Some(stored) = self.records.get(&h) else {
            return Vec::new();
        };
        let mut list = stored.decode();
        list.retain(|b| b.aor[..] == *aor.as_bytes() && b.expires_at_ms > now_ms);
        registrar::sort_by_preference(&mut list);
        list
    }
}

impl LocationService for LocalStore {
    fn submit(&mut self, op: LocationOp, token: u64) {
        let result = match op {
            LocationOp::Register { aor, plan, now_ms } => self.register(&aor, &plan, now_ms),
            LocationOp::Lookup { aor, now_ms } => Ok(self.lookup(&aor, now_ms)),
        };
        self.done.push_back((token, result));
    }

    fn poll_complete(&mut self, _cx: &mut Context<'_>) -> Poll<Completion> {
        match self.done.pop_front() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }

    /// Drops the expired bindings of the next share of the table (a
    /// range of keys; the whole table every `SWEEP_PARTS` calls).
    fn expire(&mut self, now_ms: u64) {
        let now_s = now_ms / 1000;
        let (mut bindings, mut aors) = (0usize, 0usize);
        let share = u64::MAX / SWEEP_PARTS as u64;
        let from = self.sweep_from;
        let to = from.saturating_add(share);
        self.sweep_from = if to == u64::MAX { 0 } else { to + 1 };
        let mut gone = Vec::new();
        for (k, stored) in self.records.range_mut(from..=to) {
            if u64::from(stored.first_expiry_s) > now_s {
                continue;
            }
            let list = stored.decode();
            let distinct = |l: &[Binding]| {
                let mut a: Vec<&[u8]> = l.iter().map(|b| &b.aor[..]).collect();
                a.sort_unstable();
                a.dedup();
                a.len()
            };
            let live: Vec<Binding> = list
                .iter()
                .filter(|b| b.expires_at_ms > now_ms)
                .cloned()
                .collect();
            bindings += list.len() - live.len();
            aors += distinct(&list) - distinct(&live);
            match Stored::encode(&live) {
                Some(s) => *stored = s,
                None => gone.push(*k),
            }
        }
        for k in gone {
            self.records.remove(&k);
        }
        self.bindings -= bindings;
        self.aors -= aors;
    }

    fn counts(&self) -> Held {
        Held {
            aors: self.aors,
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

    fn sample(i: u32, expires_at_ms: u64) -> Binding {
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
        // Older values (standalone, fixed-width) still decode from entries.
        assert_eq!(Binding::decode_entry(&b.encode(), facts), Some(b.clone()));
        for cut in 0..value.len() {
            assert_eq!(Binding::decode_entry(&value[..cut], facts), None);
        }
    }

    fn plan_for(b: &Binding, expires: u32) -> RegisterPlan {
        RegisterPlan {
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            wildcard: false,
            contacts: vec![registrar::ContactUpdate {
                binding: b.clone(),
                expires,
            }],
            hlc: b.hlc,
        }
    }

    fn run(store: &mut LocalStore, op: LocationOp) -> Result<Vec<Binding>, LocationError> {
        store.submit(op, 1);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match store.poll_complete(&mut cx) {
            Poll::Ready((1, r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_store_registers_looks_up_and_expires() {
        let mut store = LocalStore::new();
        let now = 1_800_000_000_000;
        for i in 0..1000 {
            let b = sample(i, now + 60_000 + u64::from(i) * 1000);
            let aor = Aor::parse(&b.aor).unwrap();
            let out = run(
                &mut store,
                LocationOp::Register {
                    aor,
                    plan: plan_for(&b, 60),
                    now_ms: now,
                },
            )
            .unwrap();
            assert_eq!(out, vec![b]);
        }
        assert_eq!(store.counts().primary, 1000);
        assert_eq!(store.counts().aors, 1000);
        let aor = Aor::parse(b"sip:user7@ringmesh.test").unwrap();
        let found = run(&mut store, LocationOp::Lookup { aor, now_ms: now }).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            &found[0].contact[..],
            b"sip:user7@127.0.0.1:5070;transport=udp"
        );
        // A whole sweep after half of them expired.
        for _ in 0..SWEEP_PARTS {
            store.expire(now + 60_000 + 500 * 1000);
        }
        assert_eq!(store.counts().primary, 499);
        assert_eq!(store.counts().aors, 499);
        let aor = Aor::parse(b"sip:user7@ringmesh.test").unwrap();
        assert!(
            run(
                &mut store,
                LocationOp::Lookup {
                    aor,
                    now_ms: now + 200_000
                }
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn colliding_aors_share_a_record_but_not_their_bindings() {
        // Force a collision: two AORs stored under the same hash.
        let mut store = LocalStore::new();
        let now = 1_800_000_000_000;
        let a = sample(1, now + 60_000);
        let b = sample(2, now + 60_000);
        let h = store.slot(&Aor::parse(&a.aor).unwrap());
        store
            .records
            .insert(h, Stored::encode(&[a.clone(), b.clone()]).unwrap());
        let found = store.lookup(&Aor::parse(&a.aor).unwrap(), now);
        assert_eq!(found, vec![a.clone()]);
        // Registering for `a` keeps `b` in the record.
        let a2 = Binding {
            contact: Bytes::from_static(b"sip:user1@127.0.0.1:6000"),
            ..a.clone()
        };
        store
            .register(&Aor::parse(&a.aor).unwrap(), &plan_for(&a2, 60), now)
            .unwrap();
        let all = store.records.get(&h).unwrap().decode();
        assert_eq!(all.len(), 3);
        assert!(all.contains(&b));
    }
}
