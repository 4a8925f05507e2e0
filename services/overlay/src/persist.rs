//! The on-disk form of the records a node holds: bytes in, bytes out.
//!
//! The driver owns the files; this module only encodes and decodes. Every
//! change to a record the node holds is announced through
//! [`Node::poll_persist`](crate::Node::poll_persist) as one ready-made frame
//! to append to the node's log. Replaying the log (last frame per key wins)
//! gives back every record; a snapshot is the same framing with one frame per
//! live record, written to a new file and renamed over the log to compact it.
//!
//! Frame layout (little-endian):
//!
//! ```text
//! magic "RM" | format version u8 | flags u8 (0) | payload length u32 | CRC-32C of payload u32 | payload
//! ```
//!
//! The payload is a protobuf `LogRecord` (key, entries, removed flag), so a
//! later format can add fields that this one skips. A crash in the middle of
//! an append leaves a torn last frame: [`decode_log`] stops at the first frame
//! that is incomplete or fails its checksum, returns every complete record
//! before it and the offset to truncate the file to.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use prost::Message as _;

use crate::id::Key;
use crate::message::{entries_from_pb, entry_to_pb, pb};
use crate::store::Record;

const MAGIC: [u8; 2] = *b"RM";
/// Version of the frame layout.
pub const FORMAT_VERSION: u8 = 1;
const HEADER: usize = 12;
/// Largest payload accepted on replay; a larger length field is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One frame for the log: the record's current content, or its removal.
pub fn encode_frame(key: &Key, record: Option<&Record>) -> Bytes {
    let payload = pb::LogRecord {
        key: Bytes::copy_from_slice(key.as_bytes()),
        entries: record
            .map(|r| r.entries().iter().map(entry_to_pb).collect())
            .unwrap_or_default(),
        removed: record.is_none(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.put_slice(&MAGIC);
    out.put_u8(FORMAT_VERSION);
    out.put_u8(0);
    out.put_u32_le(payload.len() as u32);
    out.put_u32_le(crc32c(&payload));
    out.put_slice(&payload);
    Bytes::from(out)
}

/// A whole snapshot of the given records, ready to replace the log.
pub fn encode_snapshot<'a>(records: impl IntoIterator<Item = (&'a Key, &'a Record)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, r) in records {
        out.extend_from_slice(&encode_frame(k, Some(r)));
    }
    out
}

/// Why replay stopped before the end of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TornTail {
    #[error("incomplete frame header")]
    ShortHeader,
    #[error("bad magic")]
    Magic,
    #[error("unknown frame format version {0}")]
    Version(u8),
    #[error("frame length {0} out of range")]
    Length(usize),
    #[error("incomplete frame payload")]
    ShortPayload,
    #[error("checksum mismatch")]
    Checksum,
    #[error("payload is not a valid record")]
    Payload,
}

/// The result of replaying a log.
#[derive(Debug, Default)]
pub struct Replay {
    /// The last version of every key still held.
    pub records: BTreeMap<Key, Record>,
    /// Bytes of complete, valid frames: truncate the file to this length.
    pub valid_len: usize,
    /// Frames applied.
    pub frames: usize,
    /// Why replay stopped early, if it did.
    pub torn: Option<TornTail>,
}

/// Replays a log or snapshot (see the module docs).
pub fn decode_log(buf: &[u8]) -> Replay {
    let mut replay = Replay::default();
    let mut at = 0;
    while at < buf.len() {
        match decode_frame(&buf[at..]) {
            Ok((len, key, record)) => {
                match record {
                    Some(r) => replay.records.insert(key, r),
                    None => replay.records.remove(&key),
                };
                at += len;
                replay.frames += 1;
            }
            Err(t) => {
                replay.torn = Some(t);
                break;
            }
        }
    }
    replay.valid_len = at;
    replay
}

fn decode_frame(buf: &[u8]) -> Result<(usize, Key, Option<Record>), TornTail> {
    if buf.len() < HEADER {
        return Err(TornTail::ShortHeader);
    }
    if buf[..2] != MAGIC {
        return Err(TornTail::Magic);
    }
    if buf[2] != FORMAT_VERSION {
        return Err(TornTail::Version(buf[2]));
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(TornTail::Length(len));
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let payload = buf
        .get(HEADER..HEADER + len)
        .ok_or(TornTail::ShortPayload)?;
    if crc32c(payload) != crc {
        return Err(TornTail::Checksum);
    }
    let rec = pb::LogRecord::decode(payload).map_err(|_| TornTail::Payload)?;
    let key = Key::from_slice(&rec.key).ok_or(TornTail::Payload)?;
    let record = if rec.removed {
        None
    } else {
        Some(Record::from_entries(
            entries_from_pb(rec.entries).map_err(|_| TornTail::Payload)?,
        ))
    };
    Ok((HEADER + len, key, record))
}

/// CRC-32C (Castagnoli), the checksum of iSCSI, ext4 and most logs, from
/// the `crc32c` crate (hardware-accelerated where the CPU has it).
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::NodeId;
    use crate::store::Entry;
    use proptest::prelude::*;

    fn rec(i: u64) -> Record {
        Record::from_entries([Entry::new(
            Bytes::from(format!("contact-{i}")),
            Bytes::from(vec![i as u8; (i % 50) as usize]),
            Hlc::from_u64(i),
            NodeId::from_u128(i as u128),
            1_000 + i,
        )])
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C, and the iSCSI vectors of
        // RFC 3720 B.4: frames written by earlier builds keep verifying.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&up), 0x46dd_794e);
        let down: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&down), 0x113f_db5c);
    }

    #[test]
    fn replay_applies_last_frame_and_removals() {
        let a = Key::hash(b"a");
        let b = Key::hash(b"b");
        let mut log = Vec::new();
        log.extend_from_slice(&encode_frame(&a, Some(&rec(1))));
        log.extend_from_slice(&encode_frame(&b, Some(&rec(2))));
        log.extend_from_slice(&encode_frame(&a, Some(&rec(3))));
        log.extend_from_slice(&encode_frame(&b, None));
        let r = decode_log(&log);
        assert_eq!(r.torn, None);
        assert_eq!(r.valid_len, log.len());
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[&a], rec(3));
    }

    #[test]
    fn torn_tail_keeps_every_complete_record() {
        let keys: Vec<Key> = (0..50u64).map(|i| Key::hash(&i.to_be_bytes())).collect();
        let mut log = Vec::new();
        let mut ends = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            log.extend_from_slice(&encode_frame(k, Some(&rec(i as u64))));
            ends.push(log.len());
        }
        // Cut the log at every byte of the last two frames.
        for cut in ends[47]..log.len() {
            let r = decode_log(&log[..cut]);
            let complete = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(r.records.len(), complete, "cut at {cut}");
            for (i, k) in keys.iter().take(complete).enumerate() {
                assert_eq!(r.records[k], rec(i as u64));
            }
            assert_eq!(r.valid_len, ends[complete - 1]);
            assert_eq!(r.torn.is_some(), cut != ends[complete - 1]);
        }
    }

    #[test]
    fn corrupt_byte_stops_replay_at_that_frame() {
        let mut log = Vec::new();
        for i in 0..3u64 {
            log.extend_from_slice(&encode_frame(&Key::hash(&i.to_be_bytes()), Some(&rec(i))));
        }
        let first = encode_frame(&Key::hash(&0u64.to_be_bytes()), Some(&rec(0))).len();
        log[first + HEADER + 3] ^= 0x40;
        let r = decode_log(&log);
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.torn, Some(TornTail::Checksum));
        assert_eq!(r.valid_len, first);
    }

    #[test]
    fn snapshot_round_trips() {
        let recs: BTreeMap<Key, Record> = (0..20u64)
            .map(|i| (Key::hash(&i.to_be_bytes()), rec(i)))
            .collect();
        let snap = encode_snapshot(recs.iter());
        assert_eq!(decode_log(&snap).records, recs);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let r = decode_log(&data);
            prop_assert!(r.valid_len <= data.len());
        }
    }
}
