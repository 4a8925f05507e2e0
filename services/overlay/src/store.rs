//! The stored-data model: RELOAD's "dictionary" kind.
//!
//! A [`Record`] is what lives under one [`Key`]: a dictionary of [`Entry`]s
//! keyed by an opaque entry id (the SIP layer uses `+sip.instance` plus
//! reg-id, or the contact URI). Each entry carries an opaque value, the
//! [`Hlc`] stamp and [`NodeId`] of the supernode that accepted the write, an
//! absolute expiry (wall-clock ms since the UNIX epoch) and a tombstone flag.
//!
//! ## Merge
//!
//! Two versions of one entry merge by a total order: `(hlc, origin)` first,
//! then the remaining fields as a tie-break no honest writer ever needs (the
//! same node never issues one stamp twice). Taking the maximum of a total
//! order is a join-semilattice: merge is commutative, associative and
//! idempotent, so replicas converge whatever order writes, repairs and
//! hand-offs arrive in. A record merges entry by entry.
//!
//! ## Lifetimes and tombstones
//!
//! Reads return only *live* entries: not tombstones, not expired. A remove is
//! a tombstone that wins the merge like any write and expires like any entry.
//! Entries (live or not) are garbage-collected `gc_grace_ms` after they
//! expire, and an arriving entry already past that horizon is ignored, so a
//! stale replica cannot resurrect what was collected elsewhere. For that the
//! writer must give a tombstone an expiry no earlier than that of the entry
//! it removes (the registrar uses now + its maximum registration lifetime).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::hlc::Hlc;
use crate::id::{Key, NodeId, Position, RingRange};

/// One entry of a record's dictionary.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    pub id: Bytes,
    pub value: Bytes,
    pub hlc: Hlc,
    pub origin: NodeId,
    pub expires_at_ms: u64,
    pub tombstone: bool,
}

impl Entry {
    /// A live entry.
    pub fn new(id: Bytes, value: Bytes, hlc: Hlc, origin: NodeId, expires_at_ms: u64) -> Self {
        Entry {
            id,
            value,
            hlc,
            origin,
            expires_at_ms,
            tombstone: false,
        }
    }

    /// A remove of entry `id`, itself kept until `expires_at_ms`.
    pub fn tombstone(id: Bytes, hlc: Hlc, origin: NodeId, expires_at_ms: u64) -> Self {
        Entry {
            id,
            value: Bytes::new(),
            hlc,
            origin,
            expires_at_ms,
            tombstone: true,
        }
    }

    /// The merge order between two versions of the same entry id.
    pub fn merge_cmp(&self, other: &Entry) -> Ordering {
        (self.hlc, self.origin)
            .cmp(&(other.hlc, other.origin))
            .then(self.tombstone.cmp(&other.tombstone))
            .then(self.expires_at_ms.cmp(&other.expires_at_ms))
            .then_with(|| self.value.cmp(&other.value))
    }

    /// Returned by reads at `wall_ms`.
    pub fn is_live(&self, wall_ms: u64) -> bool {
        !self.tombstone && self.expires_at_ms > wall_ms
    }

    /// May be dropped for good at `wall_ms`.
    pub fn is_collectable(&self, wall_ms: u64, gc_grace_ms: u64) -> bool {
        self.expires_at_ms.saturating_add(gc_grace_ms) <= wall_ms
    }

    /// Rough in-memory/wire size, for batching.
    pub fn size_hint(&self) -> usize {
        self.id.len() + self.value.len() + 48
    }

    /// This entry with its id and value in exact allocations of their own
    /// (what a [`Record`] keeps), not slices of a larger buffer.
    fn owned(self) -> Entry {
        Entry {
            id: Bytes::copy_from_slice(&self.id),
            value: Bytes::copy_from_slice(&self.value),
            ..self
        }
    }
}

/// The dictionary stored under one key; entries sorted by id, ids unique.
///
/// Memory: a record is an exact-size boxed slice (most hold one entry: a
/// `Vec` would round its first allocation up to four), and an entry stored
/// here owns exact copies of its id and value, so a record never pins the
/// network frame or log buffer it was decoded from (target: ≤ 300 bytes
/// per binding per replica).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Record {
    entries: Box<[Entry]>,
}

impl Record {
    pub fn new() -> Self {
        Record::default()
    }

    /// Builds a record by merging the given entries (duplicates of one id
    /// keep the winner).
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut r = Record::new();
        for e in entries {
            r.merge_entry(e);
        }
        r
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, id: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.id.as_ref().cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Merges one entry; true when the record changed.
    pub fn merge_entry(&mut self, e: Entry) -> bool {
        self.merge_entry_as(e, false)
    }

    /// Merges one entry, which the record keeps in exact allocations of
    /// its own when `own` (a record of the [`Store`]).
    fn merge_entry_as(&mut self, e: Entry, own: bool) -> bool {
        let keep = |e: Entry| if own { e.owned() } else { e };
        match self.entries.binary_search_by(|x| x.id.cmp(&e.id)) {
            Ok(i) => {
                if e.merge_cmp(&self.entries[i]) == Ordering::Greater {
                    self.entries[i] = keep(e);
                    true
                } else {
                    false
                }
            }
            Err(i) => {
                let mut v = Vec::with_capacity(self.entries.len() + 1);
                v.extend(self.entries[..i].iter().cloned());
                v.push(keep(e));
                v.extend(self.entries[i..].iter().cloned());
                self.entries = v.into_boxed_slice();
                true
            }
        }
    }

    /// Merges another version of the record; true when this one changed.
    pub fn merge(&mut self, other: &Record) -> bool {
        let mut changed = false;
        for e in &other.entries {
            changed |= self.merge_entry(e.clone());
        }
        changed
    }

    /// The entries a read returns at `wall_ms`.
    pub fn live(&self, wall_ms: u64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.is_live(wall_ms))
    }

    /// Drops collectable entries; true when any went.
    pub fn collect_garbage(&mut self, wall_ms: u64, gc_grace_ms: u64) -> bool {
        if !self
            .entries
            .iter()
            .any(|e| e.is_collectable(wall_ms, gc_grace_ms))
        {
            return false;
        }
        self.entries = self
            .entries
            .iter()
            .filter(|e| !e.is_collectable(wall_ms, gc_grace_ms))
            .cloned()
            .collect();
        true
    }

    pub fn size_hint(&self) -> usize {
        32 + self.entries.iter().map(Entry::size_hint).sum::<usize>()
    }

    /// A 64-bit digest of the key and every entry, identical on every node
    /// that holds the same version: the leaves of anti-entropy.
    pub fn digest(&self, key: &Key) -> u64 {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        for e in &self.entries {
            h.update((e.id.len() as u32).to_le_bytes());
            h.update(&e.id);
            h.update((e.value.len() as u32).to_le_bytes());
            h.update(&e.value);
            h.update(e.hlc.as_u64().to_le_bytes());
            h.update(e.origin.to_bytes());
            h.update(e.expires_at_ms.to_le_bytes());
            h.update([e.tombstone as u8]);
        }
        let out = h.finalize();
        u64::from_le_bytes(out[..8].try_into().expect("sha256 is 32 bytes"))
    }
}

#[derive(Clone, Debug)]
struct Stored {
    record: Record,
    digest: u64,
}

/// A range summary: how many records and the wrapping sum of their digests.
/// Sums compose, so a range's summary is the sum of its parts'.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    pub hash: u64,
    pub count: u64,
}

impl Summary {
    fn add(&mut self, digest: u64) {
        self.hash = self.hash.wrapping_add(digest);
        self.count += 1;
    }

    fn remove(&mut self, digest: u64) {
        self.hash = self.hash.wrapping_sub(digest);
        self.count -= 1;
    }

    fn plus(self, other: Summary) -> Summary {
        Summary {
            hash: self.hash.wrapping_add(other.hash),
            count: self.count + other.count,
        }
    }
}

/// The store keeps the summary of each of `2^BUCKET_BITS` equal slices of
/// the ring, updated with every record it changes, so that a range's
/// summary adds the slices the range covers whole and reads only the
/// records of the (at most two) it covers in part: an anti-entropy round on
/// a node holding a million records reads a few thousand, not the third of
/// the store its range holds.
const BUCKET_BITS: u32 = 10;
const BUCKET_SHIFT: u32 = Position::BITS - BUCKET_BITS;

fn bucket_of(p: Position) -> usize {
    (p >> BUCKET_SHIFT) as usize
}

fn bucket_start(b: usize) -> Position {
    (b as Position) << BUCKET_SHIFT
}

fn bucket_end(b: usize) -> Position {
    bucket_start(b) | (Position::MAX >> BUCKET_BITS)
}

/// The records a node holds, ordered by key (hence by ring position), with
/// each record's digest cached and a set of keys changed since the driver
/// last persisted them.
#[derive(Clone, Debug)]
pub struct Store {
    records: BTreeMap<Key, Stored>,
    /// The summary of each slice of the ring (see [`BUCKET_BITS`]).
    buckets: Box<[Summary]>,
    gc_grace_ms: u64,
    dirty: Option<std::collections::BTreeSet<Key>>,
    /// Where the next [`Store::collect_garbage_step`] resumes (`None`: from
    /// the first key).
    gc_cursor: Option<Key>,
}

impl Store {
    /// `track_dirty`: remember changed keys for [`Store::pop_dirty`] (off in
    /// large simulations that have no disk).
    pub fn new(gc_grace_ms: u64, track_dirty: bool) -> Self {
        Store {
            records: BTreeMap::new(),
            buckets: vec![Summary::default(); 1 << BUCKET_BITS].into_boxed_slice(),
            gc_grace_ms,
            dirty: track_dirty.then(Default::default),
            gc_cursor: None,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, key: &Key) -> Option<&Record> {
        self.records.get(key).map(|s| &s.record)
    }

    pub fn digest(&self, key: &Key) -> Option<u64> {
        self.records.get(key).map(|s| s.digest)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.records.iter().map(|(k, s)| (k, &s.record))
    }

    /// Merges entries under `key`; true when the stored record changed.
    /// Entries already past the garbage-collection horizon are ignored.
    pub fn merge<'a>(
        &mut self,
        key: Key,
        entries: impl IntoIterator<Item = &'a Entry>,
        wall_ms: u64,
    ) -> bool {
        let grace = self.gc_grace_ms;
        let mut fresh = entries
            .into_iter()
            .filter(|e| !e.is_collectable(wall_ms, grace))
            .peekable();
        if fresh.peek().is_none() {
            return false;
        }
        let bucket = &mut self.buckets[bucket_of(key.position())];
        let slot = self.records.entry(key).or_insert_with(|| {
            bucket.add(0);
            Stored {
                record: Record::new(),
                digest: 0,
            }
        });
        let mut changed = false;
        for e in fresh {
            changed |= slot.record.merge_entry_as(e.clone(), true);
        }
        if changed {
            bucket.remove(slot.digest);
            slot.digest = slot.record.digest(&key);
            bucket.add(slot.digest);
            if let Some(d) = &mut self.dirty {
                d.insert(key);
            }
        }
        changed
    }

    pub fn merge_record(&mut self, key: Key, record: &Record, wall_ms: u64) -> bool {
        self.merge(key, record.entries(), wall_ms)
    }

    /// Loads a record from disk: merged like any other, but not marked dirty
    /// (it is already persisted).
    pub fn restore(&mut self, key: Key, record: &Record, wall_ms: u64) -> bool {
        let dirty = self.dirty.take();
        let changed = self.merge_record(key, record, wall_ms);
        self.dirty = dirty;
        changed
    }

    pub fn remove(&mut self, key: &Key) -> Option<Record> {
        let s = self.records.remove(key)?;
        self.buckets[bucket_of(key.position())].remove(s.digest);
        if let Some(d) = &mut self.dirty {
            d.insert(*key);
        }
        Some(s.record)
    }

    /// Drops collectable entries and then empty records, in the whole
    /// store; returns how many records changed.
    pub fn collect_garbage(&mut self, wall_ms: u64) -> usize {
        self.gc_cursor = None;
        self.collect_garbage_step(wall_ms, usize::MAX)
    }

    /// [`Store::collect_garbage`] over at most `budget` records, from where
    /// the last step stopped (back to the first key after the last): a
    /// periodic sweep of a million records then never holds the node for
    /// the whole pass at once.
    pub fn collect_garbage_step(&mut self, wall_ms: u64, budget: usize) -> usize {
        let grace = self.gc_grace_ms;
        let mut changed = Vec::new();
        let from = match self.gc_cursor {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut seen = 0;
        let mut last = None;
        for (k, s) in self
            .records
            .range_mut((from, Bound::Unbounded))
            .take(budget)
        {
            seen += 1;
            last = Some(*k);
            if s.record.collect_garbage(wall_ms, grace) {
                let bucket = &mut self.buckets[bucket_of(k.position())];
                bucket.remove(s.digest);
                s.digest = s.record.digest(k);
                bucket.add(s.digest);
                changed.push(*k);
            }
        }
        self.gc_cursor = if seen == budget { last } else { None };
        for k in &changed {
            if self.records.get(k).is_some_and(|s| s.record.is_empty())
                && let Some(s) = self.records.remove(k)
            {
                self.buckets[bucket_of(k.position())].remove(s.digest);
            }
            if let Some(d) = &mut self.dirty {
                d.insert(*k);
            }
        }
        changed.len()
    }

    /// Records whose position lies in `range`, in ring order from
    /// `range.start`, strictly after the key `after` when given (a resume
    /// cursor from an earlier page of the same range).
    pub fn range_after(
        &self,
        range: RingRange,
        after: Option<Key>,
    ) -> impl Iterator<Item = (&Key, &Record)> {
        self.stored_after(range, after).map(|(k, s)| (k, &s.record))
    }

    /// [`Store::range_after`] with each record's digest at hand.
    fn stored_after(
        &self,
        range: RingRange,
        after: Option<Key>,
    ) -> impl Iterator<Item = (&Key, &Stored)> {
        use Bound::{Excluded, Included, Unbounded};
        let lo = Key::last_at(range.start);
        let hi = Key::last_at(range.end);
        let wraps = range.is_full() || range.start > range.end;
        // Two segments when the range wraps: (lo, MAX] then [MIN, hi].
        let (first, second): (KeyBounds, Option<KeyBounds>) = if wraps {
            ((Excluded(lo), Unbounded), Some((Unbounded, Included(hi))))
        } else {
            ((Excluded(lo), Included(hi)), None)
        };
        let (first, second) = match after {
            None => (Some(first), second),
            Some(a) => {
                if a > lo {
                    // Cursor in the first segment.
                    (Some((Excluded(a), first.1)), second)
                } else {
                    // Cursor in the second segment (only when wrapping).
                    (None, second.map(|(_, e)| (Excluded(a), e)))
                }
            }
        };
        let first = first.filter(bounds_nonempty).map(|b| self.records.range(b));
        let second = second
            .filter(bounds_nonempty)
            .map(|b| self.records.range(b));
        first
            .into_iter()
            .flatten()
            .chain(second.into_iter().flatten())
    }

    pub fn range(&self, range: RingRange) -> impl Iterator<Item = (&Key, &Record)> {
        self.range_after(range, None)
    }

    /// Keys and digests in `range`.
    pub fn digests(&self, range: RingRange) -> impl Iterator<Item = (Key, u64)> + '_ {
        self.stored_after(range, None).map(|(k, s)| (*k, s.digest))
    }

    /// The summary of the records in `range`, from the slices' summaries.
    pub fn summary(&self, range: RingRange) -> Summary {
        if range.is_full() {
            return self
                .buckets
                .iter()
                .fold(Summary::default(), |a, b| a.plus(*b));
        }
        if range.start < range.end {
            return self.summary_within(range.start + 1, range.end);
        }
        // Wraps: (start, MAX] then [0, end].
        let head = if range.start == Position::MAX {
            Summary::default()
        } else {
            self.summary_within(range.start + 1, Position::MAX)
        };
        head.plus(self.summary_within(0, range.end))
    }

    /// The summary of the records at positions `a..=b` (`a <= b`).
    fn summary_within(&self, a: Position, b: Position) -> Summary {
        let (first, last) = (bucket_of(a), bucket_of(b));
        // A slice wholly inside `a..=b` by its summary, else by its records.
        let slice = |i: usize| {
            let (lo, hi) = (bucket_start(i).max(a), bucket_end(i).min(b));
            if lo == bucket_start(i) && hi == bucket_end(i) {
                self.buckets[i]
            } else {
                self.records
                    .range(Key::first_at(lo)..=Key::last_at(hi))
                    .fold(Summary::default(), |mut s, (_, r)| {
                        s.add(r.digest);
                        s
                    })
            }
        };
        (first..=last).fold(Summary::default(), |s, i| s.plus(slice(i)))
    }

    /// Summaries of the `2^bits` parts of `range` (see [`RingRange::split`]).
    pub fn part_summaries(&self, range: RingRange, bits: u32) -> Option<Vec<Summary>> {
        Some(
            range
                .split(bits)?
                .into_iter()
                .map(|part| self.summary(part))
                .collect(),
        )
    }

    /// Takes one key changed since the last call (`None` when up to date or
    /// not tracking).
    pub fn pop_dirty(&mut self) -> Option<Key> {
        self.dirty.as_mut()?.pop_first()
    }

    pub fn has_dirty(&self) -> bool {
        self.dirty.as_ref().is_some_and(|d| !d.is_empty())
    }
}

type KeyBounds = (Bound<Key>, Bound<Key>);

fn bounds_nonempty(b: &KeyBounds) -> bool {
    use Bound::{Excluded, Included};
    match b {
        (Excluded(a), Included(z)) | (Included(a), Included(z)) => a <= z,
        (Excluded(a), Excluded(z)) => a < z,
        (Included(a), Excluded(z)) => a < z,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: u8, hlc: u64, origin: u128, tomb: bool) -> Entry {
        Entry {
            id: Bytes::from(vec![id]),
            value: if tomb {
                Bytes::new()
            } else {
                Bytes::from(format!("v{hlc}"))
            },
            hlc: Hlc::from_u64(hlc),
            origin: NodeId::from_u128(origin),
            expires_at_ms: 10_000 + hlc,
            tombstone: tomb,
        }
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            0u8..4,
            0u64..6,
            0u128..3,
            any::<bool>(),
            0u64..3,
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(id, hlc, origin, tomb, exp, value)| Entry {
                id: Bytes::from(vec![id]),
                value: Bytes::from(value),
                hlc: Hlc::from_u64(hlc),
                origin: NodeId::from_u128(origin),
                expires_at_ms: exp,
                tombstone: tomb,
            })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        proptest::collection::vec(arb_entry(), 0..6).prop_map(Record::from_entries)
    }

    fn merged(a: &Record, b: &Record) -> Record {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
        }

        #[test]
        fn any_arrival_order_converges(entries in proptest::collection::vec(arb_entry(), 0..12), seed: u64) {
            let forward = Record::from_entries(entries.clone());
            let mut shuffled = entries;
            // A deterministic permutation from the seed.
            let n = shuffled.len();
            let mut s = seed | 1;
            for i in (1..n).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(Record::from_entries(shuffled), forward);
        }

        #[test]
        fn digest_depends_only_on_content(a in arb_record(), b in arb_record()) {
            let k = Key::hash(b"k");
            prop_assert_eq!(merged(&a, &b).digest(&k), merged(&b, &a).digest(&k));
        }
    }

    #[test]
    fn higher_hlc_wins_then_origin_breaks_ties() {
        let mut r = Record::new();
        assert!(r.merge_entry(entry(1, 5, 1, false)));
        assert!(!r.merge_entry(entry(1, 4, 9, false)));
        assert!(r.merge_entry(entry(1, 5, 2, false)));
        assert_eq!(r.get(&[1]).unwrap().origin, NodeId::from_u128(2));
        assert!(r.merge_entry(entry(1, 6, 0, true)));
        assert!(r.get(&[1]).unwrap().tombstone);
    }

    #[test]
    fn reads_skip_tombstones_and_expired() {
        let mut r = Record::new();
        r.merge_entry(entry(1, 1, 1, false)); // expires 10_001
        r.merge_entry(entry(2, 500, 1, false)); // expires 10_500
        r.merge_entry(entry(3, 900, 1, true)); // tombstone
        let live: Vec<u8> = r.live(10_100).map(|e| e.id[0]).collect();
        assert_eq!(live, vec![2]);
    }

    #[test]
    fn store_gc_drops_expired_and_refuses_resurrection() {
        let mut s = Store::new(1000, true);
        let k = Key::hash(b"a");
        let e = entry(1, 1, 1, false); // expires 10_001
        assert!(s.merge(k, [&e], 5000));
        while s.pop_dirty().is_some() {}
        assert_eq!(s.collect_garbage(10_500), 0, "within grace, kept");
        assert_eq!(s.collect_garbage(11_001), 1);
        assert!(s.get(&k).is_none(), "empty record dropped");
        assert_eq!(s.pop_dirty(), Some(k), "the drop is persisted");
        // A stale replica pushes the collected entry back: ignored.
        assert!(!s.merge(k, [&e], 11_001));
        assert!(s.get(&k).is_none());
    }

    #[test]
    fn gc_steps_resume_where_they_stopped_and_wrap() {
        let mut s = Store::new(1000, true);
        let keys: Vec<Key> = (0..10u8).map(|i| Key::hash(&[i])).collect();
        let e = entry(1, 1, 1, false); // expires 10_001
        for k in &keys {
            assert!(s.merge(*k, [&e], 5000));
        }
        // Four records a step: 4, 4, then the last 2 and back to the start.
        assert_eq!(s.collect_garbage_step(20_000, 4), 4);
        assert_eq!(s.len(), 6);
        assert_eq!(s.collect_garbage_step(20_000, 4), 4);
        assert_eq!(s.collect_garbage_step(20_000, 4), 2);
        assert!(s.is_empty());
        // Wrapped: a record written since is reached by the next step.
        assert!(s.merge(keys[0], [&e], 5000));
        assert_eq!(s.collect_garbage_step(20_000, 4), 1);
        assert!(s.is_empty());
    }

    /// Positions where the slice arithmetic could go wrong (slice edges,
    /// the ends of the ring) and anywhere.
    fn position() -> impl Strategy<Value = Position> {
        prop_oneof![
            any::<u128>(),
            (0..1usize << BUCKET_BITS, 0..3u8).prop_map(|(b, edge)| match edge {
                0 => bucket_start(b),
                1 => bucket_end(b),
                _ => bucket_start(b).wrapping_sub(1),
            }),
            Just(0),
            Just(Position::MAX),
        ]
    }

    proptest! {
        /// The summaries kept per slice, through writes, updates, removals
        /// and garbage collection, give every range (and its parts) what a
        /// walk of its records gives.
        #[test]
        fn slice_summaries_match_a_walk_of_the_records(
            writes in prop::collection::vec((position(), any::<bool>(), 1u8..4, 1u64..2000), 1..300),
            removes in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
            gc_at in 10_000u64..13_000,
            mut ranges in prop::collection::vec((position(), position()), 1..40),
        ) {
            let mut s = Store::new(0, true);
            let mut keys = Vec::new();
            for (p, least, id, hlc) in writes {
                let k = if least { Key::first_at(p) } else { Key::last_at(p) };
                s.merge(k, [&entry(id, hlc, 1, false)], 0);
                keys.push(k);
            }
            for i in removes {
                s.remove(&keys[i.index(keys.len())]);
            }
            // Entries expire at 10,000 + hlc: some records lose an entry,
            // some all of them.
            s.collect_garbage(gc_at);
            ranges.push((0, 0));
            for (a, b) in ranges {
                let r = RingRange::new(a, b);
                let walked = s.digests(r).fold(Summary::default(), |mut x, (_, d)| {
                    x.add(d);
                    x
                });
                prop_assert_eq!(s.summary(r), walked);
                if let Some(parts) = s.part_summaries(r, 4) {
                    let sum = parts.iter().fold(Summary::default(), |x, p| x.plus(*p));
                    prop_assert_eq!(sum, walked);
                }
            }
        }
    }

    #[test]
    fn range_scans_follow_the_ring_and_resume() {
        let mut s = Store::new(1000, false);
        let mut keys: Vec<Key> = (0..200u32).map(|i| Key::hash(&i.to_be_bytes())).collect();
        for k in &keys {
            s.merge(*k, [&entry(1, 1, 1, false)], 0);
        }
        keys.sort();
        let start = keys[150].position();
        let end = keys[20].position();
        let r = RingRange::new(start, end);
        let all: Vec<Key> = s.range(r).map(|(k, _)| *k).collect();
        let expected: Vec<Key> = keys[151..]
            .iter()
            .chain(keys[..=20].iter())
            .copied()
            .collect();
        assert_eq!(all, expected);
        // Paging with a cursor anywhere yields the same sequence.
        for cut in [0usize, 10, 48, 49, 60] {
            let resumed: Vec<Key> = s.range_after(r, Some(all[cut])).map(|(k, _)| *k).collect();
            assert_eq!(resumed, all[cut + 1..].to_vec(), "cut {cut}");
        }
        assert_eq!(s.range(RingRange::FULL).count(), 200);
        let sum = s.summary(r);
        let parts = s.part_summaries(r, 4).unwrap();
        assert_eq!(parts.iter().map(|p| p.count).sum::<u64>(), sum.count);
        assert_eq!(
            parts.iter().fold(0u64, |a, p| a.wrapping_add(p.hash)),
            sum.hash
        );
    }
}
