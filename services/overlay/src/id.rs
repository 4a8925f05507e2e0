//! Identifiers and ring arithmetic.
//!
//! The ring is the space of 128-bit unsigned integers, wrapping. A [`NodeId`]
//! sits at its own value; a [`Key`] (SHA-256 of what is stored under it) sits
//! at the value of its first 16 bytes. A key belongs to the first node whose
//! id is at or after the key's position, going clockwise: the key's
//! *successor*. Intervals are half-open, `(start, end]`, which is exactly the
//! set of positions a node owns when `start` is its predecessor.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A position on the ring.
pub type Position = u128;

/// A node's identity and ring position: 128 bits assigned by the farm CA (so
/// no node chooses where it sits). Text form: 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(u128);

impl NodeId {
    pub const fn from_u128(v: u128) -> Self {
        NodeId(v)
    }

    pub const fn as_u128(self) -> u128 {
        self.0
    }

    pub const fn position(self) -> Position {
        self.0
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses the 16-byte wire form; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = b.try_into().ok()?;
        Some(NodeId(u128::from_be_bytes(arr)))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight digits tell nodes apart in logs and test output.
        write!(f, "NodeId({:08x}…)", (self.0 >> 96) as u32)
    }
}

/// Why a text Node-ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    #[error("a Node-ID is 32 hex digits, got {0} characters")]
    Length(usize),
    #[error("a Node-ID is lowercase hex digits only")]
    Digit,
}

impl FromStr for NodeId {
    type Err = ParseIdError;

    /// Accepts exactly 32 lowercase hex digits, the form certificates carry,
    /// so one Node-ID has one spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(ParseIdError::Length(s.len()));
        }
        if !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseIdError::Digit);
        }
        u128::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| ParseIdError::Digit)
    }
}

/// A storage key: SHA-256 of the canonical form of what is stored (for SIP,
/// the canonical AOR defined in `services/sip`). Its ring position is the
/// first 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub const LEN: usize = 32;

    /// The key of some canonical bytes.
    pub fn hash(canonical: &[u8]) -> Self {
        Key(Sha256::digest(canonical).into())
    }

    pub const fn from_array(b: [u8; 32]) -> Self {
        Key(b)
    }

    /// Parses the 32-byte wire form; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Key(b.try_into().ok()?))
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn position(&self) -> Position {
        let mut p = [0u8; 16];
        p.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(p)
    }

    /// The least key at a position.
    pub fn first_at(pos: Position) -> Self {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&pos.to_be_bytes());
        Key(b)
    }

    /// The greatest key at a position. Keys sort by position first, so the
    /// keys at positions in `(a, b]` are exactly those in
    /// `(Key::last_at(a), Key::last_at(b)]`; the store's range scans use it.
    pub fn last_at(pos: Position) -> Self {
        let mut b = [0xffu8; 32];
        b[..16].copy_from_slice(&pos.to_be_bytes());
        Key(b)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", hex::encode(&self.0[..4]))
    }
}

/// A ring interval `(start, end]`. `start == end` is the whole ring (a lone
/// node owns everything), so there is no empty interval: nothing needs one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RingRange {
    pub start: Position,
    pub end: Position,
}

impl RingRange {
    pub const FULL: RingRange = RingRange { start: 0, end: 0 };

    pub const fn new(start: Position, end: Position) -> Self {
        RingRange { start, end }
    }

    pub const fn is_full(&self) -> bool {
        self.start == self.end
    }

    pub fn contains(&self, p: Position) -> bool {
        if self.is_full() {
            true
        } else if self.start < self.end {
            self.start < p && p <= self.end
        } else {
            p > self.start || p <= self.end
        }
    }

    /// The rest of the ring, `(end, start]`; `None` for the full ring.
    pub fn complement(&self) -> Option<RingRange> {
        (!self.is_full()).then_some(RingRange::new(self.end, self.start))
    }

    /// Splits into `2^bits` consecutive equal parts (the last one takes the
    /// rounding remainder). `None` when the interval is too narrow to split.
    pub fn split(&self, bits: u32) -> Option<Vec<RingRange>> {
        let step = self.step(bits)?;
        let parts = 1u128 << bits;
        let mut out = Vec::with_capacity(parts as usize);
        for i in 0..parts {
            let s = self.start.wrapping_add(step.wrapping_mul(i));
            let e = if i + 1 == parts {
                self.end
            } else {
                self.start.wrapping_add(step.wrapping_mul(i + 1))
            };
            out.push(RingRange::new(s, e));
        }
        Some(out)
    }

    fn step(&self, bits: u32) -> Option<u128> {
        debug_assert!((1..=8).contains(&bits));
        let step = if self.is_full() {
            1u128 << (128 - bits)
        } else {
            self.end.wrapping_sub(self.start) >> bits
        };
        (step > 0).then_some(step)
    }
}

/// Clockwise distance from `a` to `b`.
pub fn distance(a: Position, b: Position) -> u128 {
    b.wrapping_sub(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_id_text_round_trip() {
        let id = NodeId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
        assert_eq!(
            "00000000000000000000000000000001".parse::<NodeId>(),
            Ok(NodeId::from_u128(1))
        );
    }

    #[test]
    fn node_id_text_rejects_other_spellings() {
        assert_eq!("abc".parse::<NodeId>(), Err(ParseIdError::Length(3)));
        let upper = "0123456789ABCDEF0011223344556677";
        assert_eq!(upper.parse::<NodeId>(), Err(ParseIdError::Digit));
        let plus = "+123456789abcdef0011223344556677";
        assert_eq!(plus.parse::<NodeId>(), Err(ParseIdError::Digit));
    }

    #[test]
    fn key_is_sha256_and_position_is_its_first_half() {
        let k = Key::hash(b"sip:alice@example.com");
        assert_eq!(
            k.to_string(),
            hex::encode(Sha256::digest(b"sip:alice@example.com"))
        );
        let mut first = [0u8; 16];
        first.copy_from_slice(&k.as_bytes()[..16]);
        assert_eq!(k.position(), u128::from_be_bytes(first));
    }

    #[test]
    fn wrapping_range_contains() {
        let r = RingRange::new(u128::MAX - 5, 5);
        assert!(r.contains(u128::MAX));
        assert!(r.contains(0));
        assert!(r.contains(5));
        assert!(!r.contains(6));
        assert!(!r.contains(u128::MAX - 5));
        assert!(RingRange::FULL.contains(12345));
        assert_eq!(r.complement(), Some(RingRange::new(5, u128::MAX - 5)));
    }

    proptest! {
        #[test]
        fn split_parts_partition_the_range(start: u128, end: u128, p: u128) {
            let r = RingRange::new(start, end);
            prop_assume!(r.contains(p));
            if let Some(parts) = r.split(4) {
                prop_assert_eq!(parts.len(), 16);
                // Exactly one part holds p.
                let holders = parts.iter().filter(|q| q.contains(p)).count();
                prop_assert_eq!(holders, 1);
                prop_assert_eq!(parts[0].start, r.start);
                prop_assert_eq!(parts[15].end, r.end);
            }
        }

        #[test]
        fn node_id_display_parses_back(v: u128) {
            let id = NodeId::from_u128(v);
            prop_assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
            prop_assert_eq!(NodeId::from_slice(&id.to_bytes()), Some(id));
        }

        #[test]
        fn complement_is_disjoint_and_covers(start: u128, end: u128, p: u128) {
            let r = RingRange::new(start, end);
            if let Some(c) = r.complement() {
                prop_assert!(r.contains(p) != c.contains(p));
            }
        }
    }
}
