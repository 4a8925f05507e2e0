//! Matching messages to transactions (RFC 3261 §17.1.3 and §17.2.3).
//!
//! A match key is a byte string built from the fields the RFC compares,
//! each length-prefixed so that no two field lists share an encoding. The
//! layer builds lookup keys in a reused scratch buffer and indexes
//! transactions by a 128-bit [`Fingerprint`] of that string: two SipHash
//! values under random keys chosen when the layer is made, so no peer can
//! aim for a collision, and storing a transaction allocates no key.

use std::hash::{BuildHasher, Hasher, RandomState};

use crate::message::Message;
use crate::method::Method;

/// A match key reduced to 128 bits by keyed hashing.
pub(crate) type Fingerprint = u128;

/// Computes [`Fingerprint`]s with two independent random SipHash keys.
#[derive(Debug, Clone)]
pub(crate) struct Fingerprinter {
    a: RandomState,
    b: RandomState,
}

impl Fingerprinter {
    pub(crate) fn new() -> Self {
        Fingerprinter {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    pub(crate) fn of(&self, key: &[u8]) -> Fingerprint {
        let mut ha = self.a.build_hasher();
        ha.write(key);
        let mut hb = self.b.build_hasher();
        hb.write(key);
        (u128::from(ha.finish()) << 64) | u128::from(hb.finish())
    }
}

/// The hasher of maps keyed by [`Fingerprint`]: the key is already a
/// keyed hash, so its low bits serve as they are.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub(crate) type FingerprintMap<V> =
    std::collections::HashMap<Fingerprint, V, std::hash::BuildHasherDefault<FingerprintHasher>>;

fn field(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(&(f.len() as u32).to_le_bytes());
    out.extend_from_slice(f);
}

/// Client transactions (§17.1.3): the branch of the top Via and the CSeq
/// method. `out` is cleared first.
pub(crate) fn client(out: &mut Vec<u8>, branch: &[u8], method: &Method) {
    out.clear();
    field(out, branch);
    field(out, method.as_bytes());
}

/// Which rule of §17.2.3 a request is matched by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The branch carries the `z9hG4bK` cookie: branch, sent-by, method.
    Rfc3261,
    /// A pre-RFC 3261 branch (or none): Request-URI, tags, Call-ID, CSeq
    /// and the whole top Via.
    Rfc2543,
}

/// Server transactions (§17.2.3): the key of the transaction that `msg`
/// belongs to if that transaction was created by a request with method
/// `as_method` (INVITE for an ACK, or for the INVITE a CANCEL cancels).
///
/// Under the RFC 2543 rule the To tag takes part only for non-INVITE
/// transactions: an INVITE's retransmissions carry the same (usually
/// absent) To tag, while its ACK carries the tag of the response, which
/// the layer checks separately.
pub(crate) fn server(out: &mut Vec<u8>, msg: &Message, as_method: &Method) -> Rule {
    out.clear();
    let via = msg.top_via();
    if via.has_rfc3261_branch() {
        out.push(b'3');
        field(out, via.branch().unwrap_or_default());
        let host = via.host().text;
        out.extend_from_slice(&(host.len() as u32).to_le_bytes());
        out.extend(host.iter().map(u8::to_ascii_lowercase));
        out.extend_from_slice(&via.port().unwrap_or(0).to_le_bytes());
        field(out, as_method.as_bytes());
        Rule::Rfc3261
    } else {
        out.push(b'2');
        field(out, msg.request_uri_bytes());
        field(out, msg.from_tag().unwrap_or_default());
        field(out, msg.call_id());
        out.extend_from_slice(&msg.cseq().to_le_bytes());
        field(out, as_method.as_bytes());
        field(out, msg.top_via_bytes());
        if *as_method != Method::Invite {
            field(out, msg.to_tag().unwrap_or_default());
        }
        Rule::Rfc2543
    }
}
