//! Anti-entropy between replicas by range digests.
//!
//! A range's summary is its record count and the wrapping sum of its records'
//! 64-bit digests ([`Store::summary`]). Two replicas compare the summary of a
//! range; equal summaries end the exchange at once (the steady state costs
//! one small message per replica pair per round, never a copy). Unequal
//! ranges are split into 16 parts whose summaries are compared in turn — a
//! Merkle tree computed on demand, with no tree to keep up to date on writes —
//! until a part holds few enough records to compare key by key, after which
//! only the records that differ travel. When one side holds nothing in a range
//! the other pushes the range outright, which is how a brand-new replica is
//! filled after a failure.
//!
//! The exchange is stateless: each message carries what the receiver needs to
//! take the next step, and the two nodes swap roles at every level. Merging is
//! idempotent, so lost or duplicated messages only delay convergence until
//! the next round.

use crate::id::{Key, RingRange};
use crate::store::{Store, Summary};

/// Parts a differing range splits into: 2^SPLIT_BITS.
pub const SPLIT_BITS: u32 = 4;
/// Ranges holding at most this many records (both sides together) are
/// compared key by key.
pub const LEAF_RECORDS: u64 = 64;
/// Beyond this depth ranges are compared key by key regardless (a range that
/// narrow holds a handful of keys unless SHA-256 is broken).
pub const MAX_DEPTH: u32 = 24;

/// What to answer for one range whose summary a peer sent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// Same records on both sides.
    InSync,
    /// We hold nothing there: ask the peer to push everything it has.
    SendAll,
    /// The peer holds nothing there: push everything we have.
    PushAll,
    /// Small enough: send our keys and digests.
    Keys(Vec<(Key, u64)>),
    /// Split and compare the parts.
    Split(Vec<(RingRange, Summary)>),
}

/// Decides how to continue for `range`, given the peer's summary of it.
pub fn compare(store: &Store, range: RingRange, theirs: Summary, depth: u32) -> Step {
    let ours = store.summary(range);
    if ours == theirs {
        return Step::InSync;
    }
    if ours.count == 0 {
        return Step::SendAll;
    }
    if theirs.count == 0 {
        return Step::PushAll;
    }
    if ours.count + theirs.count > LEAF_RECORDS
        && depth < MAX_DEPTH
        && let (Some(parts), Some(sums)) = (
            range.split(SPLIT_BITS),
            store.part_summaries(range, SPLIT_BITS),
        )
    {
        return Step::Split(parts.into_iter().zip(sums).collect());
    }
    Step::Keys(store.digests(range).collect())
}

/// Given the peer's keys and digests in `range`, the keys whose records we
/// should push (the peer lacks them or holds another version) and those we
/// want (we lack them or hold another version). A key whose versions differ
/// is in both lists; merging on both sides converges.
pub fn diff_keys(store: &Store, range: RingRange, theirs: &[(Key, u64)]) -> (Vec<Key>, Vec<Key>) {
    let mut theirs_sorted: Vec<(Key, u64)> = theirs.to_vec();
    theirs_sorted.sort_unstable();
    theirs_sorted.dedup_by_key(|(k, _)| *k);
    let mut push = Vec::new();
    let mut want = Vec::new();
    for (k, d) in store.digests(range) {
        match theirs_sorted.binary_search_by(|(tk, _)| tk.cmp(&k)) {
            Ok(i) if theirs_sorted[i].1 == d => {}
            Ok(_) => {
                push.push(k);
                want.push(k);
            }
            Err(_) => push.push(k),
        }
    }
    for (k, _) in &theirs_sorted {
        if range.contains(k.position()) && store.digest(k).is_none() {
            want.push(*k);
        }
    }
    (push, want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::NodeId;
    use crate::store::Entry;
    use bytes::Bytes;

    fn e(v: u64) -> Entry {
        Entry::new(
            Bytes::from_static(b"c"),
            Bytes::from(v.to_string()),
            Hlc::from_u64(v),
            NodeId::from_u128(1),
            u64::MAX / 2,
        )
    }

    /// Runs the exchange between two stores to completion in memory and
    /// returns how many records crossed.
    fn sync(a: &mut Store, b: &mut Store, range: RingRange) -> usize {
        // (from_a, range, their summary, depth)
        let mut work = vec![(true, range, a.summary(range), 0u32)];
        let mut moved = 0;
        while let Some((from_a, r, theirs, depth)) = work.pop() {
            let (me, other) = if from_a {
                (&mut *b, &mut *a)
            } else {
                (&mut *a, &mut *b)
            };
            match compare(me, r, theirs, depth) {
                Step::InSync => {}
                Step::SendAll => {
                    let recs: Vec<_> = other.range(r).map(|(k, v)| (*k, v.clone())).collect();
                    moved += recs.len();
                    for (k, v) in recs {
                        me.merge_record(k, &v, 0);
                    }
                }
                Step::PushAll => {
                    let recs: Vec<_> = me.range(r).map(|(k, v)| (*k, v.clone())).collect();
                    moved += recs.len();
                    for (k, v) in recs {
                        other.merge_record(k, &v, 0);
                    }
                }
                Step::Keys(keys) => {
                    let (push, want) = diff_keys(other, r, &keys);
                    for k in push {
                        let v = other.get(&k).unwrap().clone();
                        me.merge_record(k, &v, 0);
                        moved += 1;
                    }
                    for k in want {
                        let v = me.get(&k).unwrap().clone();
                        other.merge_record(k, &v, 0);
                        moved += 1;
                    }
                }
                Step::Split(parts) => {
                    for (pr, s) in parts {
                        work.push((!from_a, pr, s, depth + 1));
                    }
                }
            }
        }
        moved
    }

    #[test]
    fn in_sync_ranges_cost_nothing_and_differences_move_only_themselves() {
        let mut a = Store::new(0, false);
        let mut b = Store::new(0, false);
        for i in 0..5000u32 {
            let k = Key::hash(&i.to_be_bytes());
            a.merge(k, [&e(1)], 0);
            b.merge(k, [&e(1)], 0);
        }
        assert_eq!(
            compare(&b, RingRange::FULL, a.summary(RingRange::FULL), 0),
            Step::InSync
        );
        // Three differences: one newer on each side, one missing on b.
        a.merge(Key::hash(&7u32.to_be_bytes()), [&e(2)], 0);
        b.merge(Key::hash(&9u32.to_be_bytes()), [&e(3)], 0);
        a.merge(Key::hash(b"only-a"), [&e(1)], 0);
        let moved = sync(&mut a, &mut b, RingRange::FULL);
        assert!(moved <= 6, "only the differing records move, moved {moved}");
        assert_eq!(a.summary(RingRange::FULL), b.summary(RingRange::FULL));
        assert_eq!(a.len(), 5001);
    }

    #[test]
    fn empty_replica_is_filled_by_a_push() {
        let mut a = Store::new(0, false);
        let mut b = Store::new(0, false);
        for i in 0..300u32 {
            a.merge(Key::hash(&i.to_be_bytes()), [&e(1)], 0);
        }
        assert_eq!(
            compare(&b, RingRange::FULL, a.summary(RingRange::FULL), 0),
            Step::SendAll
        );
        assert_eq!(sync(&mut a, &mut b, RingRange::FULL), 300);
        assert_eq!(b.len(), 300);
    }
}
