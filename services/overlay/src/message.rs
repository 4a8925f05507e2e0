//! Overlay messages: the validated Rust form of the protobuf wire messages
//! (`proto/ringmesh/overlay/v1/overlay.proto`).
//!
//! Untrusted bytes become a [`Message`] in one place, [`decode`], which checks
//! every field the core relies on (lengths of ids and keys, chunk invariants,
//! enum values, size limits) so the state machine never sees an invalid value.
//! A frame from a newer minor version may carry fields or message kinds this
//! node does not know: unknown fields are skipped by protobuf, and an unknown
//! kind decodes to `message: None`, which the node ignores.
//!
//! In the simulator messages travel as Rust values (chunks of the member view
//! stay shared by pointer); the driver encodes them with [`encode`].

use bytes::Bytes;
use prost::Message as _;

use crate::hlc::Hlc;
use crate::id::{Key, NodeId, RingRange};
use crate::membership::{CHUNKS, Chunk, ChunkError, MemberRecord, MemberState};
use crate::store::{Entry, Record, Summary};
use crate::version::ProtocolVersion;

/// The generated protobuf types (prost only, no gRPC).
#[allow(
    missing_docs,
    clippy::all,
    rust_2018_idioms,
    missing_debug_implementations
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/ringmesh.overlay.v1.rs"));
}

/// Largest frame accepted from a peer.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest entry id (an instance id or contact URI fits easily).
pub const MAX_ENTRY_ID_BYTES: usize = 1024;
/// Largest entry value.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Most entries in one record (an AOR with that many contacts is abuse).
pub const MAX_ENTRIES: usize = 1024;
/// Most records in one message.
pub const MAX_RECORDS: usize = 4096;
/// Most members in one chunk (a million-node farm would need more).
pub const MAX_CHUNK_MEMBERS: usize = 4096;
/// Most ranges in one anti-entropy message, and keys in one key list.
pub const MAX_RANGES: usize = 4096;
pub const MAX_KEYS: usize = 8192;
/// Most replicas named in one reply.
pub const MAX_REPLICAS: usize = 64;
/// Longest address or name string.
pub const MAX_STRING: usize = 255;

/// Names an application operation: who started it and its number there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OpRef {
    pub origin: NodeId,
    pub id: u64,
}

/// Why a routed operation failed at a remote node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// The coordinator could not collect a write quorum in time.
    Quorum,
    /// The hop limit ran out (views disagree too much).
    Ttl,
    /// The node is not in a state to serve (not joined, or gone).
    NotReady,
}

/// One overlay message.
#[derive(Clone, Debug)]
pub enum Message {
    Ping {
        nonce: u64,
        view_root: u64,
    },
    Pong {
        nonce: u64,
        view_root: u64,
    },
    /// The sender's load: 0 serving, 1 overloaded (refusing new requests).
    Load {
        level: u32,
    },
    JoinRequest {
        member: MemberRecord,
    },
    JoinAccept {
        chunks: Vec<Chunk>,
    },
    Gossip {
        chunks: Vec<Chunk>,
    },
    /// One digest per chunk, all [`CHUNKS`] of them.
    ViewDigest {
        digests: Vec<u64>,
    },
    ViewChunks {
        chunks: Vec<Chunk>,
    },
    Put {
        op: OpRef,
        key: Key,
        entries: Vec<Entry>,
        hops: u32,
        accept_replica: bool,
    },
    PutResult {
        op: OpRef,
        failure: Option<Failure>,
        acks: u32,
        needed: u32,
        hops: u32,
    },
    Get {
        op: OpRef,
        key: Key,
        hops: u32,
        accept_replica: bool,
        route_only: bool,
    },
    GetResult {
        op: OpRef,
        failure: Option<Failure>,
        hops: u32,
        responder: NodeId,
        replicas: Vec<NodeId>,
        entries: Vec<Entry>,
    },
    Replicate {
        tag: u64,
        key: Key,
        entries: Vec<Entry>,
    },
    ReplicateAck {
        tag: u64,
        stored: bool,
    },
    HandoffRequest {
        tag: u64,
        range: RingRange,
        after: Option<Key>,
    },
    HandoffBatch {
        tag: u64,
        records: Vec<(Key, Record)>,
        next_after: Option<Key>,
        push: bool,
    },
    HandoffAck {
        tag: u64,
    },
    AeSync {
        session: u64,
        depth: u32,
        ranges: Vec<(RingRange, Summary)>,
    },
    AeKeys {
        session: u64,
        range: RingRange,
        keys: Vec<(Key, u64)>,
    },
    AeRecords {
        session: u64,
        records: Vec<(Key, Record)>,
        want: Vec<Key>,
    },
    AeInSync {
        session: u64,
        range: RingRange,
    },
}

impl Message {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::Load { .. } => "load",
            Message::JoinRequest { .. } => "join_request",
            Message::JoinAccept { .. } => "join_accept",
            Message::Gossip { .. } => "gossip",
            Message::ViewDigest { .. } => "view_digest",
            Message::ViewChunks { .. } => "view_chunks",
            Message::Put { .. } => "put",
            Message::PutResult { .. } => "put_result",
            Message::Get { .. } => "get",
            Message::GetResult { .. } => "get_result",
            Message::Replicate { .. } => "replicate",
            Message::ReplicateAck { .. } => "replicate_ack",
            Message::HandoffRequest { .. } => "handoff_request",
            Message::HandoffBatch { .. } => "handoff_batch",
            Message::HandoffAck { .. } => "handoff_ack",
            Message::AeSync { .. } => "ae_sync",
            Message::AeKeys { .. } => "ae_keys",
            Message::AeRecords { .. } => "ae_records",
            Message::AeInSync { .. } => "ae_in_sync",
        }
    }

    /// Messages that move or reconcile stored data outside the write path
    /// (hand-off and anti-entropy): the "repair traffic" of the statistics.
    pub fn is_repair(&self) -> bool {
        matches!(
            self,
            Message::HandoffRequest { .. }
                | Message::HandoffBatch { .. }
                | Message::HandoffAck { .. }
                | Message::AeSync { .. }
                | Message::AeKeys { .. }
                | Message::AeRecords { .. }
                | Message::AeInSync { .. }
        )
    }
}

/// Why a frame was refused. Any of these closes the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("not a protobuf envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("envelope carries no protocol version")]
    NoVersion,
    #[error("peer speaks protocol {theirs}, this node {ours}")]
    Incompatible {
        ours: ProtocolVersion,
        theirs: ProtocolVersion,
    },
    #[error("envelope has no message although the peer is not newer")]
    Empty,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{field}: {count} items exceed the limit of {limit}")]
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("member view chunk: {0}")]
    Chunk(#[from] ChunkError),
}

fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Invalid { field, reason }
}

fn limit<T>(field: &'static str, v: &[T], max: usize) -> Result<(), DecodeError> {
    if v.len() > max {
        return Err(DecodeError::TooMany {
            field,
            count: v.len(),
            limit: max,
        });
    }
    Ok(())
}

/// A decoded frame.
#[derive(Debug)]
pub struct Decoded {
    /// The sender's protocol version.
    pub version: ProtocolVersion,
    /// `None`: a message kind from a newer minor that this node ignores.
    pub message: Option<Message>,
}

/// Encodes a message in an envelope stamped with `version`.
pub fn encode(msg: &Message, version: ProtocolVersion) -> Vec<u8> {
    let env = pb::Envelope {
        version: Some(version_to_pb(version)),
        body: Some(body_to_pb(msg)),
    };
    env.encode_to_vec()
}

/// Decodes and validates a frame. `ours` is this node's version; frames from
/// incompatible versions are refused.
pub fn decode(frame: Bytes, ours: ProtocolVersion) -> Result<Decoded, DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    let env = pb::Envelope::decode(frame)?;
    let version = version_from_pb(env.version.as_ref()).ok_or(DecodeError::NoVersion)?;
    if !ours.compatible_with(version) {
        return Err(DecodeError::Incompatible {
            ours,
            theirs: version,
        });
    }
    let message = match env.body {
        Some(body) => Some(body_from_pb(body)?),
        // A newer minor may add message kinds; we skip what we cannot know.
        None if version.minor > ours.minor => None,
        None => return Err(DecodeError::Empty),
    };
    Ok(Decoded { version, message })
}

// ------------------------------------------------------------------ to wire

fn version_to_pb(v: ProtocolVersion) -> pb::Version {
    pb::Version {
        major: v.major.into(),
        minor: v.minor.into(),
    }
}

fn id_bytes(id: NodeId) -> Bytes {
    Bytes::copy_from_slice(&id.to_bytes())
}

fn key_bytes(k: &Key) -> Bytes {
    Bytes::copy_from_slice(k.as_bytes())
}

fn range_to_pb(r: RingRange) -> pb::KeyRange {
    pb::KeyRange {
        start: Bytes::copy_from_slice(&r.start.to_be_bytes()),
        end: Bytes::copy_from_slice(&r.end.to_be_bytes()),
    }
}

fn op_to_pb(op: OpRef) -> pb::OpRef {
    pb::OpRef {
        origin: id_bytes(op.origin),
        id: op.id,
    }
}

fn failure_to_pb(f: Option<Failure>) -> i32 {
    (match f {
        None => pb::Failure::Unspecified,
        Some(Failure::Quorum) => pb::Failure::Quorum,
        Some(Failure::Ttl) => pb::Failure::Ttl,
        Some(Failure::NotReady) => pb::Failure::NotReady,
    }) as i32
}

pub(crate) fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        value: e.value.clone(),
        hlc: e.hlc.as_u64(),
        origin: id_bytes(e.origin),
        expires_at_ms: e.expires_at_ms,
        tombstone: e.tombstone,
    }
}

fn record_to_pb(k: &Key, r: &Record) -> pb::Record {
    pb::Record {
        key: key_bytes(k),
        entries: r.entries().iter().map(entry_to_pb).collect(),
    }
}

fn member_to_pb(m: &MemberRecord) -> pb::Member {
    pb::Member {
        node_id: id_bytes(m.id),
        incarnation: m.incarnation,
        state: match m.state {
            MemberState::Joining => pb::MemberState::Joining,
            MemberState::Alive => pb::MemberState::Alive,
            MemberState::Leaving => pb::MemberState::Leaving,
            MemberState::Left => pb::MemberState::Left,
            MemberState::Dead => pb::MemberState::Dead,
        } as i32,
        since_ms: m.since_ms,
        overlay_addr: m.overlay_addr.clone(),
        sip_addr: m.sip_addr.clone(),
        name: m.name.clone(),
        version: Some(version_to_pb(m.version)),
    }
}

fn chunks_to_pb(chunks: &[Chunk]) -> Vec<pb::ViewChunk> {
    chunks
        .iter()
        .map(|c| pb::ViewChunk {
            index: c.index() as u32,
            members: c.members().iter().map(member_to_pb).collect(),
        })
        .collect()
}

fn body_to_pb(msg: &Message) -> pb::envelope::Body {
    use pb::envelope::Body as B;
    match msg {
        Message::Ping { nonce, view_root } => B::Ping(pb::Ping {
            nonce: *nonce,
            view_root: *view_root,
        }),
        Message::Pong { nonce, view_root } => B::Pong(pb::Pong {
            nonce: *nonce,
            view_root: *view_root,
        }),
        Message::Load { level } => B::Load(pb::Load { level: *level }),
        Message::JoinRequest { member } => B::JoinRequest(pb::JoinRequest {
            member: Some(member_to_pb(member)),
        }),
        Message::JoinAccept { chunks } => B::JoinAccept(pb::JoinAccept {
            chunks: chunks_to_pb(chunks),
        }),
        Message::Gossip { chunks } => B::Gossip(pb::Gossip {
            chunks: chunks_to_pb(chunks),
        }),
        Message::ViewDigest { digests } => B::ViewDigest(pb::ViewDigest {
            digests: digests.clone(),
        }),
        Message::ViewChunks { chunks } => B::ViewChunks(pb::ViewChunks {
            chunks: chunks_to_pb(chunks),
        }),
        Message::Put {
            op,
            key,
            entries,
            hops,
            accept_replica,
        } => B::Put(pb::Put {
            op: Some(op_to_pb(*op)),
            key: key_bytes(key),
            entries: entries.iter().map(entry_to_pb).collect(),
            hops: *hops,
            accept_replica: *accept_replica,
        }),
        Message::PutResult {
            op,
            failure,
            acks,
            needed,
            hops,
        } => B::PutResult(pb::PutResult {
            op: Some(op_to_pb(*op)),
            failure: failure_to_pb(*failure),
            acks: *acks,
            needed: *needed,
            hops: *hops,
        }),
        Message::Get {
            op,
            key,
            hops,
            accept_replica,
            route_only,
        } => B::Get(pb::Get {
            op: Some(op_to_pb(*op)),
            key: key_bytes(key),
            hops: *hops,
            accept_replica: *accept_replica,
            route_only: *route_only,
        }),
        Message::GetResult {
            op,
            failure,
            hops,
            responder,
            replicas,
            entries,
        } => B::GetResult(pb::GetResult {
            op: Some(op_to_pb(*op)),
            failure: failure_to_pb(*failure),
            hops: *hops,
            responder: id_bytes(*responder),
            replicas: replicas.iter().map(|r| id_bytes(*r)).collect(),
            entries: entries.iter().map(entry_to_pb).collect(),
        }),
        Message::Replicate { tag, key, entries } => B::Replicate(pb::Replicate {
            tag: *tag,
            key: key_bytes(key),
            entries: entries.iter().map(entry_to_pb).collect(),
        }),
        Message::ReplicateAck { tag, stored } => B::ReplicateAck(pb::ReplicateAck {
            tag: *tag,
            stored: *stored,
        }),
        Message::HandoffRequest { tag, range, after } => B::HandoffRequest(pb::HandoffRequest {
            tag: *tag,
            range: Some(range_to_pb(*range)),
            after: after.as_ref().map(key_bytes).unwrap_or_default(),
        }),
        Message::HandoffBatch {
            tag,
            records,
            next_after,
            push,
        } => B::HandoffBatch(pb::HandoffBatch {
            tag: *tag,
            records: records.iter().map(|(k, r)| record_to_pb(k, r)).collect(),
            next_after: next_after.as_ref().map(key_bytes).unwrap_or_default(),
            push: *push,
        }),
        Message::HandoffAck { tag } => B::HandoffAck(pb::HandoffAck { tag: *tag }),
        Message::AeSync {
            session,
            depth,
            ranges,
        } => B::AeSync(pb::AeSync {
            session: *session,
            depth: *depth,
            ranges: ranges
                .iter()
                .map(|(r, s)| pb::RangeSummary {
                    range: Some(range_to_pb(*r)),
                    hash: s.hash,
                    count: s.count,
                })
                .collect(),
        }),
        Message::AeKeys {
            session,
            range,
            keys,
        } => B::AeKeys(pb::AeKeys {
            session: *session,
            range: Some(range_to_pb(*range)),
            keys: keys
                .iter()
                .map(|(k, h)| pb::KeyDigest {
                    key: key_bytes(k),
                    hash: *h,
                })
                .collect(),
        }),
        Message::AeRecords {
            session,
            records,
            want,
        } => B::AeRecords(pb::AeRecords {
            session: *session,
            records: records.iter().map(|(k, r)| record_to_pb(k, r)).collect(),
            want: want.iter().map(key_bytes).collect(),
        }),
        Message::AeInSync { session, range } => B::AeInSync(pb::AeInSync {
            session: *session,
            range: Some(range_to_pb(*range)),
        }),
    }
}

// ---------------------------------------------------------------- from wire

fn version_from_pb(v: Option<&pb::Version>) -> Option<ProtocolVersion> {
    let v = v?;
    Some(ProtocolVersion::new(
        u16::try_from(v.major).ok()?,
        u16::try_from(v.minor).ok()?,
    ))
}

fn node_id(field: &'static str, b: &[u8]) -> Result<NodeId, DecodeError> {
    NodeId::from_slice(b).ok_or(invalid(field, "node id must be 16 bytes"))
}

fn key(field: &'static str, b: &[u8]) -> Result<Key, DecodeError> {
    Key::from_slice(b).ok_or(invalid(field, "key must be 32 bytes"))
}

fn opt_key(field: &'static str, b: &[u8]) -> Result<Option<Key>, DecodeError> {
    if b.is_empty() {
        Ok(None)
    } else {
        key(field, b).map(Some)
    }
}

fn position(field: &'static str, b: &[u8]) -> Result<u128, DecodeError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| invalid(field, "ring position must be 16 bytes"))?;
    Ok(u128::from_be_bytes(arr))
}

fn range(field: &'static str, r: Option<&pb::KeyRange>) -> Result<RingRange, DecodeError> {
    let r = r.ok_or(invalid(field, "missing"))?;
    Ok(RingRange::new(
        position(field, &r.start)?,
        position(field, &r.end)?,
    ))
}

fn op(o: Option<&pb::OpRef>) -> Result<OpRef, DecodeError> {
    let o = o.ok_or(invalid("op", "missing"))?;
    Ok(OpRef {
        origin: node_id("op.origin", &o.origin)?,
        id: o.id,
    })
}

fn failure(v: i32) -> Result<Option<Failure>, DecodeError> {
    match pb::Failure::try_from(v) {
        Ok(pb::Failure::Unspecified) => Ok(None),
        Ok(pb::Failure::Quorum) => Ok(Some(Failure::Quorum)),
        Ok(pb::Failure::Ttl) => Ok(Some(Failure::Ttl)),
        Ok(pb::Failure::NotReady) => Ok(Some(Failure::NotReady)),
        Err(_) => Err(invalid("failure", "unknown value")),
    }
}

pub(crate) fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    if e.id.len() > MAX_ENTRY_ID_BYTES {
        return Err(invalid("entry.id", "too long"));
    }
    if e.value.len() > MAX_VALUE_BYTES {
        return Err(invalid("entry.value", "too long"));
    }
    Ok(Entry {
        id: e.id,
        value: e.value,
        hlc: Hlc::from_u64(e.hlc),
        origin: node_id("entry.origin", &e.origin)?,
        expires_at_ms: e.expires_at_ms,
        tombstone: e.tombstone,
    })
}

pub(crate) fn entries_from_pb(v: Vec<pb::Entry>) -> Result<Vec<Entry>, DecodeError> {
    limit("entries", &v, MAX_ENTRIES)?;
    v.into_iter().map(entry_from_pb).collect()
}

fn records_from_pb(v: Vec<pb::Record>) -> Result<Vec<(Key, Record)>, DecodeError> {
    limit("records", &v, MAX_RECORDS)?;
    v.into_iter()
        .map(|r| {
            Ok((
                key("record.key", &r.key)?,
                Record::from_entries(entries_from_pb(r.entries)?),
            ))
        })
        .collect()
}

fn string(field: &'static str, s: String) -> Result<String, DecodeError> {
    if s.len() > MAX_STRING {
        return Err(invalid(field, "too long"));
    }
    Ok(s)
}

fn member_from_pb(m: pb::Member) -> Result<MemberRecord, DecodeError> {
    let state = match pb::MemberState::try_from(m.state) {
        Ok(pb::MemberState::Joining) => MemberState::Joining,
        Ok(pb::MemberState::Alive) => MemberState::Alive,
        Ok(pb::MemberState::Leaving) => MemberState::Leaving,
        Ok(pb::MemberState::Left) => MemberState::Left,
        Ok(pb::MemberState::Dead) => MemberState::Dead,
        Ok(pb::MemberState::Unspecified) | Err(_) => {
            return Err(invalid("member.state", "unknown value"));
        }
    };
    Ok(MemberRecord {
        id: node_id("member.node_id", &m.node_id)?,
        incarnation: m.incarnation,
        state,
        since_ms: m.since_ms,
        overlay_addr: string("member.overlay_addr", m.overlay_addr)?,
        sip_addr: string("member.sip_addr", m.sip_addr)?,
        name: string("member.name", m.name)?,
        version: version_from_pb(m.version.as_ref())
            .ok_or(invalid("member.version", "missing or out of range"))?,
    })
}

fn chunks_from_pb(v: Vec<pb::ViewChunk>) -> Result<Vec<Chunk>, DecodeError> {
    limit("chunks", &v, CHUNKS)?;
    let mut seen = [false; CHUNKS];
    v.into_iter()
        .map(|c| {
            limit("chunk.members", &c.members, MAX_CHUNK_MEMBERS)?;
            if let Some(s) = seen.get_mut(c.index as usize) {
                if *s {
                    return Err(invalid("chunks", "chunk sent twice"));
                }
                *s = true;
            }
            let members = c
                .members
                .into_iter()
                .map(member_from_pb)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Chunk::new(c.index, members)?)
        })
        .collect()
}

fn body_from_pb(body: pb::envelope::Body) -> Result<Message, DecodeError> {
    use pb::envelope::Body as B;
    Ok(match body {
        B::Ping(p) => Message::Ping {
            nonce: p.nonce,
            view_root: p.view_root,
        },
        B::Pong(p) => Message::Pong {
            nonce: p.nonce,
            view_root: p.view_root,
        },
        B::Load(l) => Message::Load { level: l.level },
        B::JoinRequest(j) => Message::JoinRequest {
            member: member_from_pb(j.member.ok_or(invalid("member", "missing"))?)?,
        },
        B::JoinAccept(j) => Message::JoinAccept {
            chunks: chunks_from_pb(j.chunks)?,
        },
        B::Gossip(g) => Message::Gossip {
            chunks: chunks_from_pb(g.chunks)?,
        },
        B::ViewDigest(d) => {
            if d.digests.len() != CHUNKS {
                return Err(invalid("digests", "one per chunk expected"));
            }
            Message::ViewDigest { digests: d.digests }
        }
        B::ViewChunks(c) => Message::ViewChunks {
            chunks: chunks_from_pb(c.chunks)?,
        },
        B::Put(p) => Message::Put {
            op: op(p.op.as_ref())?,
            key: key("key", &p.key)?,
            entries: entries_from_pb(p.entries)?,
            hops: p.hops,
            accept_replica: p.accept_replica,
        },
        B::PutResult(p) => Message::PutResult {
            op: op(p.op.as_ref())?,
            failure: failure(p.failure)?,
            acks: p.acks,
            needed: p.needed,
            hops: p.hops,
        },
        B::Get(g) => Message::Get {
            op: op(g.op.as_ref())?,
            key: key("key", &g.key)?,
            hops: g.hops,
            accept_replica: g.accept_replica,
            route_only: g.route_only,
        },
        B::GetResult(g) => {
            limit("replicas", &g.replicas, MAX_REPLICAS)?;
            Message::GetResult {
                op: op(g.op.as_ref())?,
                failure: failure(g.failure)?,
                hops: g.hops,
                responder: node_id("responder", &g.responder)?,
                replicas: g
                    .replicas
                    .iter()
                    .map(|r| node_id("replicas", r))
                    .collect::<Result<_, _>>()?,
                entries: entries_from_pb(g.entries)?,
            }
        }
        B::Replicate(r) => Message::Replicate {
            tag: r.tag,
            key: key("key", &r.key)?,
            entries: entries_from_pb(r.entries)?,
        },
        B::ReplicateAck(a) => Message::ReplicateAck {
            tag: a.tag,
            stored: a.stored,
        },
        B::HandoffRequest(h) => Message::HandoffRequest {
            tag: h.tag,
            range: range("range", h.range.as_ref())?,
            after: opt_key("after", &h.after)?,
        },
        B::HandoffBatch(h) => Message::HandoffBatch {
            tag: h.tag,
            records: records_from_pb(h.records)?,
            next_after: opt_key("next_after", &h.next_after)?,
            push: h.push,
        },
        B::HandoffAck(h) => Message::HandoffAck { tag: h.tag },
        B::AeSync(s) => {
            limit("ranges", &s.ranges, MAX_RANGES)?;
            Message::AeSync {
                session: s.session,
                depth: s.depth,
                ranges: s
                    .ranges
                    .iter()
                    .map(|r| {
                        Ok((
                            range("ranges.range", r.range.as_ref())?,
                            Summary {
                                hash: r.hash,
                                count: r.count,
                            },
                        ))
                    })
                    .collect::<Result<_, DecodeError>>()?,
            }
        }
        B::AeKeys(k) => {
            limit("keys", &k.keys, MAX_KEYS)?;
            Message::AeKeys {
                session: k.session,
                range: range("range", k.range.as_ref())?,
                keys: k
                    .keys
                    .iter()
                    .map(|d| Ok((key("keys.key", &d.key)?, d.hash)))
                    .collect::<Result<_, DecodeError>>()?,
            }
        }
        B::AeRecords(r) => {
            limit("want", &r.want, MAX_KEYS)?;
            Message::AeRecords {
                session: r.session,
                records: records_from_pb(r.records)?,
                want: r
                    .want
                    .iter()
                    .map(|k| key("want", k))
                    .collect::<Result<_, _>>()?,
            }
        }
        B::AeInSync(s) => Message::AeInSync {
            session: s.session,
            range: range("range", s.range.as_ref())?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberView;

    fn sample_entry() -> Entry {
        Entry::new(
            Bytes::from_static(b"<urn:uuid:1>;reg-id=1"),
            Bytes::from_static(b"flow@A"),
            Hlc::new(1_700_000_000_000, 3),
            NodeId::from_u128(42),
            1_700_000_360_000,
        )
    }

    fn member(id: u128) -> MemberRecord {
        MemberRecord {
            id: NodeId::from_u128(id),
            incarnation: 2,
            state: MemberState::Alive,
            since_ms: 9,
            overlay_addr: "[::1]:7000".into(),
            sip_addr: "[::1]:5060".into(),
            name: "sn-1".into(),
            version: ProtocolVersion::CURRENT,
        }
    }

    /// One message of every kind.
    pub(crate) fn every_kind() -> Vec<Message> {
        let k = Key::hash(b"sip:alice@example.com");
        let o = OpRef {
            origin: NodeId::from_u128(7),
            id: 99,
        };
        let rec = Record::from_entries([sample_entry()]);
        let view = MemberView::from_records([member(1), member(u128::MAX - 3)]);
        let chunks: Vec<Chunk> = view
            .chunks()
            .filter(|c| !c.members().is_empty())
            .cloned()
            .collect();
        let r = RingRange::new(5, 3);
        vec![
            Message::Ping {
                nonce: 1,
                view_root: 2,
            },
            Message::Pong {
                nonce: 1,
                view_root: 2,
            },
            Message::Load { level: 1 },
            Message::JoinRequest { member: member(5) },
            Message::JoinAccept {
                chunks: chunks.clone(),
            },
            Message::Gossip {
                chunks: chunks.clone(),
            },
            Message::ViewDigest {
                digests: view.digests(),
            },
            Message::ViewChunks { chunks },
            Message::Put {
                op: o,
                key: k,
                entries: vec![sample_entry()],
                hops: 2,
                accept_replica: true,
            },
            Message::PutResult {
                op: o,
                failure: Some(Failure::Quorum),
                acks: 1,
                needed: 2,
                hops: 1,
            },
            Message::Get {
                op: o,
                key: k,
                hops: 1,
                accept_replica: false,
                route_only: true,
            },
            Message::GetResult {
                op: o,
                failure: None,
                hops: 1,
                responder: NodeId::from_u128(3),
                replicas: vec![NodeId::from_u128(3), NodeId::from_u128(4)],
                entries: vec![sample_entry()],
            },
            Message::Replicate {
                tag: 5,
                key: k,
                entries: vec![sample_entry()],
            },
            Message::ReplicateAck {
                tag: 5,
                stored: true,
            },
            Message::HandoffRequest {
                tag: 6,
                range: r,
                after: Some(k),
            },
            Message::HandoffBatch {
                tag: 6,
                records: vec![(k, rec.clone())],
                next_after: None,
                push: true,
            },
            Message::HandoffAck { tag: 6 },
            Message::AeSync {
                session: 8,
                depth: 1,
                ranges: vec![(r, Summary { hash: 77, count: 3 })],
            },
            Message::AeKeys {
                session: 8,
                range: r,
                keys: vec![(k, 77)],
            },
            Message::AeRecords {
                session: 8,
                records: vec![(k, rec)],
                want: vec![k],
            },
            Message::AeInSync {
                session: 8,
                range: RingRange::FULL,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for m in every_kind() {
            let bytes = encode(&m, ProtocolVersion::CURRENT);
            let d = decode(Bytes::from(bytes.clone()), ProtocolVersion::CURRENT).unwrap();
            let back = d.message.expect("known kind");
            assert_eq!(back.kind(), m.kind());
            // Re-encoding the decoded message gives the same bytes: nothing
            // was lost or invented on the way.
            assert_eq!(
                encode(&back, ProtocolVersion::CURRENT),
                bytes,
                "{}",
                m.kind()
            );
        }
    }

    #[test]
    fn incompatible_major_is_refused() {
        let m = Message::Ping {
            nonce: 1,
            view_root: 0,
        };
        let bytes = encode(&m, ProtocolVersion::new(2, 0));
        assert!(matches!(
            decode(Bytes::from(bytes), ProtocolVersion::CURRENT),
            Err(DecodeError::Incompatible { .. })
        ));
        let bytes = encode(&m, ProtocolVersion::new(1, 2));
        assert!(matches!(
            decode(Bytes::from(bytes), ProtocolVersion::new(1, 0)),
            Err(DecodeError::Incompatible { .. })
        ));
    }

    #[test]
    fn unknown_kind_from_newer_minor_is_skipped_but_not_from_same() {
        let env = pb::Envelope {
            version: Some(pb::Version { major: 1, minor: 1 }),
            body: None,
        };
        let d = decode(Bytes::from(env.encode_to_vec()), ProtocolVersion::new(1, 0)).unwrap();
        assert!(d.message.is_none());
        assert_eq!(
            decode(Bytes::from(env.encode_to_vec()), ProtocolVersion::new(1, 1)).unwrap_err(),
            DecodeError::Empty
        );
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let env = pb::Envelope {
            version: Some(version_to_pb(ProtocolVersion::CURRENT)),
            body: Some(pb::envelope::Body::Get(pb::Get {
                op: Some(pb::OpRef {
                    origin: Bytes::from_static(&[1; 16]),
                    id: 1,
                }),
                key: Bytes::from_static(&[0; 31]),
                ..Default::default()
            })),
        };
        assert!(matches!(
            decode(Bytes::from(env.encode_to_vec()), ProtocolVersion::CURRENT),
            Err(DecodeError::Invalid { field: "key", .. })
        ));
        let digest = pb::Envelope {
            version: Some(version_to_pb(ProtocolVersion::CURRENT)),
            body: Some(pb::envelope::Body::ViewDigest(pb::ViewDigest {
                digests: vec![1, 2],
            })),
        };
        assert!(
            decode(
                Bytes::from(digest.encode_to_vec()),
                ProtocolVersion::CURRENT
            )
            .is_err()
        );
    }

    #[test]
    fn misplaced_chunk_member_is_refused() {
        let mut c = chunks_to_pb(&[MemberView::from_records([member(1)]).chunk(0).clone()]);
        c[0].index = 9;
        let env = pb::Envelope {
            version: Some(version_to_pb(ProtocolVersion::CURRENT)),
            body: Some(pb::envelope::Body::Gossip(pb::Gossip { chunks: c })),
        };
        assert!(matches!(
            decode(Bytes::from(env.encode_to_vec()), ProtocolVersion::CURRENT),
            Err(DecodeError::Chunk(_))
        ));
    }
}
