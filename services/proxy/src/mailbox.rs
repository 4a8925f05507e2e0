//! Messages kept for subscribers with no reachable device (RFC 3428
//! page-mode `MESSAGE`), stored in the record of the callee's AOR.
//!
//! Each message is one entry of the record, its id `m` followed by the
//! message's 16-byte id: the accepting supernode's wall clock (ms, never
//! going back on that node), a per-node sequence number and four bytes of
//! the node's id. Entry order is id order, which is the order messages
//! were accepted (across supernodes, up to their clock skew). The id is
//! the message's for good: every delivery of it carries it, so a phone
//! that gets one twice (a delivery retried after a supernode died) can
//! tell.

use bytes::{Buf, Bytes};

use crate::binding::{get_array, get_text, get_varint, put_text, put_varint};

/// The first byte of a stored message's entry id.
const ENTRY_PREFIX: u8 = b'm';
/// The first byte of its value: no binding, alias or subscription
/// encoding starts with it.
const FORMAT: u8 = 0x20;
/// The largest body kept: RFC 3428 §7 keeps MESSAGE bodies small (1300
/// bytes without congestion control); 8 KiB leaves room for MSRP-less
/// rich text while a full mailbox stays well within a record.
pub const MAX_BODY: usize = 8 << 10;

/// One message kept for its callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: [u8; 16],
    /// When the farm accepted it (wall clock, ms).
    pub accepted_ms: u64,
    /// When it is dropped if never delivered.
    pub expires_at_ms: u64,
    /// What it is delivered with: the sender's From (anonymous when it
    /// asked for privacy), To, Call-ID and CSeq number, so every delivery
    /// of it is the same request to the phone, and the asserted identity
    /// unless it asked for that to be withheld.
    pub from: Bytes,
    pub to: Bytes,
    pub call_id: Bytes,
    pub cseq: u32,
    pub asserted: Option<Bytes>,
    pub content_type: Bytes,
    pub body: Bytes,
}

impl StoredMessage {
    /// Its overlay entry id.
    pub fn entry_id(&self) -> Bytes {
        entry_id(&self.id)
    }

    /// Its id as phones see it: 32 lowercase hex digits.
    pub fn id_text(&self) -> String {
        id_text(&self.id)
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(96 + self.body.len());
        b.push(FORMAT);
        b.extend_from_slice(&self.id);
        put_varint(&mut b, self.accepted_ms);
        put_varint(&mut b, self.expires_at_ms);
        put_varint(&mut b, u64::from(self.cseq));
        for t in [&self.from, &self.to, &self.call_id, &self.content_type] {
            put_text(&mut b, t);
        }
        put_text(&mut b, self.asserted.as_deref().unwrap_or_default());
        put_text(&mut b, &self.body);
        Bytes::from(b)
    }

    /// `None` for anything that is not a whole encoding.
    pub fn decode(value: &[u8]) -> Option<StoredMessage> {
        let mut r = value;
        if r.try_get_u8().ok()? != FORMAT {
            return None;
        }
        let id = get_array::<16>(&mut r)?;
        let accepted_ms = get_varint(&mut r)?;
        let expires_at_ms = get_varint(&mut r)?;
        let cseq = u32::try_from(get_varint(&mut r)?).ok()?;
        let mut text = || get_text(&mut r).map(Bytes::copy_from_slice);
        let (from, to, call_id, content_type) = (text()?, text()?, text()?, text()?);
        let (asserted, body) = (text()?, text()?);
        r.is_empty().then(|| StoredMessage {
            id,
            accepted_ms,
            expires_at_ms,
            from,
            to,
            call_id,
            cseq,
            asserted: Some(asserted).filter(|a| !a.is_empty()),
            content_type,
            body,
        })
    }
}

/// Whether an overlay entry id is a stored message's.
pub fn is_message_id(id: &[u8]) -> bool {
    id.first() == Some(&ENTRY_PREFIX) && id.len() == 17
}

/// The entry id of the message with id `id`.
pub fn entry_id(id: &[u8; 16]) -> Bytes {
    let mut v = Vec::with_capacity(17);
    v.push(ENTRY_PREFIX);
    v.extend_from_slice(id);
    Bytes::from(v)
}

pub fn id_text(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issues the ids of the messages one supernode accepts: increasing on
/// that node whatever its wall clock does.
#[derive(Debug)]
pub struct MessageIds {
    node: [u8; 4],
    last_ms: u64,
    seq: u32,
}

impl MessageIds {
    pub fn new(node_id: &[u8; 16]) -> MessageIds {
        MessageIds {
            node: node_id[..4].try_into().expect("4 bytes"),
            last_ms: 0,
            seq: 0,
        }
    }

    pub fn next(&mut self, wall_ms: u64) -> [u8; 16] {
        if wall_ms > self.last_ms {
            self.last_ms = wall_ms;
            self.seq = 0;
        } else if self.seq == u32::MAX {
            self.last_ms += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.last_ms.to_be_bytes());
        id[8..12].copy_from_slice(&self.seq.to_be_bytes());
        id[12..].copy_from_slice(&self.node);
        id
    }
}

#[cfg(test)]
pub(crate) fn sample(id: [u8; 16], body: &str) -> StoredMessage {
    StoredMessage {
        id,
        accepted_ms: 1_000,
        expires_at_ms: 1_000_000,
        from: Bytes::from_static(b"<sip:alice@example.com>;tag=a1"),
        to: Bytes::from_static(b"<sip:bob@example.com>"),
        call_id: Bytes::from_static(b"m1@example.com"),
        cseq: 7,
        asserted: Some(Bytes::from_static(b"<sip:alice@example.com>")),
        content_type: Bytes::from_static(b"text/plain"),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_a_cut_or_longer_one_does_not_decode() {
        let m = sample([7; 16], "hello");
        let enc = m.encode();
        assert_eq!(StoredMessage::decode(&enc), Some(m.clone()));
        for n in 0..enc.len() {
            assert_eq!(StoredMessage::decode(&enc[..n]), None, "cut at {n}");
        }
        let mut longer = enc.to_vec();
        longer.push(0);
        assert_eq!(StoredMessage::decode(&longer), None);
        assert!(is_message_id(&m.entry_id()));
        assert!(!is_message_id(b"c<sip:bob@example.com>"));
        let none = StoredMessage {
            asserted: None,
            ..m
        };
        assert_eq!(StoredMessage::decode(&none.encode()), Some(none));
    }

    #[test]
    fn ids_increase_on_one_node_even_when_its_clock_goes_back() {
        let mut ids = MessageIds::new(&[9; 16]);
        let a = ids.next(5_000);
        let b = ids.next(5_000);
        let c = ids.next(4_000);
        let d = ids.next(6_000);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(&d[12..], &[9; 4]);
        assert_eq!(id_text(&a).len(), 32);
    }
}
