//! Identifiers that lead straight back to an operation.
//!
//! Every branch, Call-ID and tag the generator writes starts with the
//! shard's *stamp* (`rl` + 8 hex digits of the run id + 2 of the shard), so
//! that answers from another run or shard are recognised as strays. A
//! branch then carries the operation's slot, its generation (slots are
//! reused) and the transaction's step inside the operation; a call's
//! Call-ID carries slot and generation. Decoding is a few byte compares and
//! hex digits: the transaction table is a slab indexed by slot, no hashing.

use crate::template::push_hex;

/// The per-shard prefix of every identifier.
#[derive(Debug, Clone)]
pub struct Stamp {
    text: Vec<u8>,
}

/// Where a branch or Call-ID points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRef {
    pub slot: u32,
    pub generation: u32,
    /// The transaction inside the operation (branches only).
    pub step: u32,
}

impl Stamp {
    pub fn new(run_id: u32, shard: u16) -> Stamp {
        let text = format!("rl{run_id:08x}{:02x}", shard & 0xff).into_bytes();
        Stamp { text }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// `STAMP.slot.generation.step` (the part of a branch after `z9hG4bK`).
    #[inline]
    pub fn push_branch(&self, out: &mut Vec<u8>, r: OpRef) {
        out.extend_from_slice(&self.text);
        out.push(b'.');
        push_hex(out, u64::from(r.slot));
        out.push(b'.');
        push_hex(out, u64::from(r.generation));
        out.push(b'.');
        push_hex(out, u64::from(r.step));
    }

    /// A call's Call-ID: `STAMPc.slot.generation@ringmesh-load`.
    #[inline]
    pub fn push_call_id(&self, out: &mut Vec<u8>, slot: u32, generation: u32) {
        out.extend_from_slice(&self.text);
        out.extend_from_slice(b"c.");
        push_hex(out, u64::from(slot));
        out.push(b'.');
        push_hex(out, u64::from(generation));
        out.extend_from_slice(b"@ringmesh-load");
    }

    /// A handset's registration Call-ID: `STAMPu.user.epoch@ringmesh-load`.
    #[inline]
    pub fn push_reg_call_id(&self, out: &mut Vec<u8>, user: u32, epoch: u32) {
        out.extend_from_slice(&self.text);
        out.extend_from_slice(b"u.");
        push_hex(out, u64::from(user));
        out.push(b'.');
        push_hex(out, u64::from(epoch));
        out.extend_from_slice(b"@ringmesh-load");
    }

    /// Decodes a branch written by [`Stamp::push_branch`] (with its cookie).
    pub fn decode_branch(&self, branch: &[u8]) -> Option<OpRef> {
        let rest = branch
            .strip_prefix(b"z9hG4bK")?
            .strip_prefix(&self.text[..])?;
        let rest = rest.strip_prefix(b".")?;
        let mut parts = rest.split(|&c| c == b'.');
        let slot = hex_u32(parts.next()?)?;
        let generation = hex_u32(parts.next()?)?;
        let step = hex_u32(parts.next()?)?;
        parts.next().is_none().then_some(OpRef {
            slot,
            generation,
            step,
        })
    }

    /// Decodes a call's Call-ID written by [`Stamp::push_call_id`].
    pub fn decode_call_id(&self, call_id: &[u8]) -> Option<OpRef> {
        let rest = call_id.strip_prefix(&self.text[..])?.strip_prefix(b"c.")?;
        let rest = rest.strip_suffix(b"@ringmesh-load")?;
        let mut parts = rest.split(|&c| c == b'.');
        let slot = hex_u32(parts.next()?)?;
        let generation = hex_u32(parts.next()?)?;
        parts.next().is_none().then_some(OpRef {
            slot,
            generation,
            step: 0,
        })
    }
}

fn hex_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    let mut v = 0u32;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u32::from(d);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trip() {
        let s = Stamp::new(0xabcdef12, 3);
        let r = OpRef {
            slot: 0x1234,
            generation: 7,
            step: 2,
        };
        let mut b = b"z9hG4bK".to_vec();
        s.push_branch(&mut b, r);
        assert_eq!(b, b"z9hG4bKrlabcdef1203.1234.7.2");
        assert_eq!(s.decode_branch(&b), Some(r));
        // another shard or run: a stray
        assert_eq!(Stamp::new(0xabcdef12, 4).decode_branch(&b), None);
        assert_eq!(Stamp::new(1, 3).decode_branch(&b), None);
        assert_eq!(s.decode_branch(b"z9hG4bKrlabcdef1203.1.2"), None);
        assert_eq!(s.decode_branch(b"z9hG4bKrlabcdef1203.1.2.3.4"), None);
        assert_eq!(s.decode_branch(b"z9hG4bKrlabcdef1203.x.2.3"), None);
    }

    #[test]
    fn call_id_round_trip() {
        let s = Stamp::new(5, 0);
        let mut c = Vec::new();
        s.push_call_id(&mut c, 99, 4);
        assert_eq!(
            s.decode_call_id(&c).map(|r| (r.slot, r.generation)),
            Some((99, 4))
        );
        let mut u = Vec::new();
        s.push_reg_call_id(&mut u, 99, 4);
        assert_eq!(s.decode_call_id(&u), None);
    }
}
