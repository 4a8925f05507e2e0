//! Which (nonce, nc) pairs this node has accepted: each is accepted once.
//!
//! A node's nonces carry a sequence number `seq` (0, 1, 2, … in the order
//! they were issued), so the nonces a node tracks are a contiguous range
//! `[base, next)`. Each has a 2-bit state in a dense array indexed by
//! `seq - base`:
//!
//! | state | meaning |
//! |---|---|
//! | unused | issued, never accepted |
//! | once | accepted once, with nc = 1 (what nearly every client does) |
//! | reused | accepted with another nc or more than once: its window is in the sparse map |
//! | retired | no longer accepted at all (its reuse did not fit in the sparse map) |
//!
//! The sparse map keeps, per reused nonce, the highest nc accepted and a
//! 64-bit window of the 64 values below it: an nc already accepted, or
//! lower than the window, is a replay. Values inside the window are
//! accepted in any order, as parallel UDP transactions sent with one nonce
//! arrive.
//!
//! Memory stays bounded whatever the traffic:
//!
//! - The range is trimmed by time: a nonce older than the lifetime is
//!   stale whatever its state, so the states of nonces issued before
//!   `now - lifetime` are dropped (`marks` records the first seq issued in
//!   each second, at most lifetime + 1 entries).
//! - The range is capped at `cap` nonces: issuing one more drops the oldest
//!   (by words of 32). A nonce below `base` is never valid again (stale).
//! - The sparse map holds at most `cap / 64` nonces. A nonce whose reuse
//!   would need one more entry is retired instead: that request is
//!   answered stale, and a client retries with a fresh nonce (used once, it
//!   needs no entry). Retiring, not refusing silently, means a request
//!   refused then can never be accepted later, when room is free again.

use std::collections::{BTreeMap, VecDeque};

/// Nonces per word of the dense array (2 bits each).
const PER_WORD: u64 = 32;

/// How many nc values below the highest accepted one are remembered.
pub const NC_WINDOW: u32 = 64;

/// What memory one sparse-map entry costs, roughly: key, window and the
/// B-tree's share of node overhead.
pub const REUSED_ENTRY_BYTES: usize = 40;

/// The 2-bit state of a tracked nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Unused = 0,
    Once = 1,
    Reused = 2,
    Retired = 3,
}

impl Use {
    fn from_bits(b: u64) -> Use {
        match b & 0b11 {
            0 => Use::Unused,
            1 => Use::Once,
            2 => Use::Reused,
            _ => Use::Retired,
        }
    }
}

/// The nc values accepted with one nonce: the highest, and a bitmap of the
/// [`NC_WINDOW`] values below it (bit `i` is `highest - 1 - i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    highest: u32,
    below: u64,
}

impl Window {
    fn first(nc: u32) -> Window {
        Window {
            highest: nc,
            below: 0,
        }
    }

    /// Records `nc`; false when it was accepted before or is older than
    /// the window.
    fn accept(&mut self, nc: u32) -> bool {
        if nc > self.highest {
            let shift = nc - self.highest;
            let moved = if shift >= 64 { 0 } else { self.below << shift };
            let old = if shift <= NC_WINDOW {
                1u64 << (shift - 1)
            } else {
                0
            };
            self.below = moved | old;
            self.highest = nc;
            return true;
        }
        let d = self.highest - nc;
        if d == 0 || d > NC_WINDOW {
            return false;
        }
        let bit = 1u64 << (d - 1);
        if self.below & bit != 0 {
            return false;
        }
        self.below |= bit;
        true
    }
}

/// What [`Tracker::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First use of this (nonce, nc): now recorded.
    New,
    /// This nc was accepted before, or is older than the window.
    Replay,
    /// The nonce is no longer tracked (trimmed, evicted or retired).
    Untracked,
}

/// Memory in use by the tracker, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracking {
    /// Nonces whose state is kept (issued, not yet trimmed or evicted).
    pub tracked: u64,
    /// Of those, nonces accepted more than once or with an nc other than 1.
    pub reused: usize,
    /// Bytes held: the dense array's allocation, the sparse map's entries
    /// (estimated at [`REUSED_ENTRY_BYTES`] each) and the time marks.
    pub bytes: usize,
}

/// The per-node nonce state; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    lifetime: u64,
    /// Most nonces tracked: a multiple of [`PER_WORD`].
    cap: u64,
    /// Most entries in `reused`.
    reused_cap: usize,
    /// The first tracked seq, a multiple of [`PER_WORD`].
    base: u64,
    /// The seq the next nonce gets.
    next: u64,
    states: VecDeque<u64>,
    reused: BTreeMap<u64, Window>,
    /// (second, first seq issued in it), seconds strictly increasing.
    marks: VecDeque<(u64, u64)>,
}

impl Tracker {
    pub fn new(lifetime: u64, cap: usize) -> Tracker {
        let cap = (cap as u64).max(2 * PER_WORD).next_multiple_of(PER_WORD);
        Tracker {
            lifetime,
            cap,
            reused_cap: usize::try_from(cap / 64).unwrap_or(usize::MAX),
            base: 0,
            next: 0,
            states: VecDeque::new(),
            reused: BTreeMap::new(),
            marks: VecDeque::new(),
        }
    }

    /// The seq the next nonce gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Starts issuing at `seq` or just above (a word boundary); nothing
    /// below is ever accepted.
    pub fn skip_to(&mut self, seq: u64) {
        let start = seq.next_multiple_of(PER_WORD).max(self.next);
        self.states.clear();
        self.reused.clear();
        self.marks.clear();
        self.base = start;
        self.next = start;
    }

    /// A new seq, issued at `now`.
    pub fn issue(&mut self, now: u64) -> u64 {
        self.expire(now);
        if self.marks.back().is_none_or(|&(t, _)| now > t) {
            self.marks.push_back((now, self.next));
        }
        let seq = self.next;
        self.next += 1;
        if (seq - self.base) / PER_WORD >= self.states.len() as u64 {
            self.states.push_back(0);
        }
        if self.next - self.base > self.cap {
            self.drop_below(self.base + PER_WORD);
        }
        seq
    }

    /// Drops the state of every nonce issued more than the lifetime
    /// before `now`: they are stale by their timestamp anyway.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(t, _)) = self.marks.front() {
            if t.saturating_add(self.lifetime) >= now {
                break;
            }
            // Every seq below the next mark was issued at `t` or before.
            self.marks.pop_front();
            let end = self.marks.front().map_or(self.next, |&(_, s)| s);
            self.drop_below(end);
        }
    }

    /// Stops tracking the whole words below `end`.
    fn drop_below(&mut self, end: u64) {
        while self.base + PER_WORD <= end && !self.states.is_empty() {
            self.states.pop_front();
            self.base += PER_WORD;
        }
        while let Some(entry) = self.reused.first_entry() {
            if *entry.key() >= self.base {
                break;
            }
            entry.remove();
        }
    }

    fn state(&self, seq: u64) -> Option<Use> {
        if seq < self.base || seq >= self.next {
            return None;
        }
        let i = seq - self.base;
        let word = self.states[(i / PER_WORD) as usize];
        Some(Use::from_bits(word >> (2 * (i % PER_WORD))))
    }

    fn set(&mut self, seq: u64, u: Use) {
        let i = seq - self.base;
        let shift = 2 * (i % PER_WORD);
        let word = &mut self.states[(i / PER_WORD) as usize];
        *word = (*word & !(0b11 << shift)) | ((u as u64) << shift);
    }

    /// Whether `seq` may still be accepted with some nc (its state is kept
    /// and it is not retired).
    pub fn is_live(&self, seq: u64) -> bool {
        !matches!(self.state(seq), None | Some(Use::Retired))
    }

    /// Records the use of nonce `seq` with `nc`, if it is the first.
    pub fn record(&mut self, seq: u64, nc: u32) -> Recorded {
        match self.state(seq) {
            None | Some(Use::Retired) => Recorded::Untracked,
            Some(Use::Unused) if nc == 1 => {
                self.set(seq, Use::Once);
                Recorded::New
            }
            Some(Use::Unused) => self.reuse(seq, Window::first(nc)),
            Some(Use::Once) => {
                let mut w = Window::first(1);
                if w.accept(nc) {
                    self.reuse(seq, w)
                } else {
                    Recorded::Replay
                }
            }
            Some(Use::Reused) => match self.reused.get_mut(&seq).map(|w| w.accept(nc)) {
                Some(true) => Recorded::New,
                Some(false) => Recorded::Replay,
                // Cannot happen (the state says there is an entry); never
                // accept what is not recorded.
                None => {
                    self.set(seq, Use::Retired);
                    Recorded::Untracked
                }
            },
        }
    }

    /// Moves `seq` to the sparse map with window `w`, or retires it when
    /// the map is full.
    fn reuse(&mut self, seq: u64, w: Window) -> Recorded {
        if self.reused.len() >= self.reused_cap {
            self.set(seq, Use::Retired);
            return Recorded::Untracked;
        }
        self.reused.insert(seq, w);
        self.set(seq, Use::Reused);
        Recorded::New
    }

    pub fn tracking(&self) -> Tracking {
        Tracking {
            tracked: self.next - self.base,
            reused: self.reused.len(),
            bytes: self.states.capacity() * 8
                + self.reused.len() * REUSED_ENTRY_BYTES
                + self.marks.capacity() * 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The window against a plain model: every nc accepted so far in a
        /// set, and a value is accepted when it is new and no more than
        /// the window below the highest.
        #[test]
        fn window_matches_a_set(first in 0u32..300, ncs in proptest::collection::vec(0u32..300, 0..200)) {
            let mut w = Window::first(first);
            let mut seen = std::collections::BTreeSet::from([first]);
            for nc in ncs {
                let top = *seen.last().unwrap();
                let want = !seen.contains(&nc) && nc.saturating_add(NC_WINDOW) >= top;
                prop_assert_eq!(w.accept(nc), want, "{} after {:?}", nc, seen);
                if want {
                    seen.insert(nc);
                }
            }
        }
    }

    #[test]
    fn window_accepts_each_nc_once_in_any_order() {
        let mut w = Window::first(5);
        assert!(!w.accept(5));
        for nc in [3, 7, 4, 6, 1, 2] {
            assert!(w.accept(nc), "{nc}");
            assert!(!w.accept(nc), "{nc} again");
        }
        assert!(w.accept(7 + NC_WINDOW));
        assert!(!w.accept(6), "below the window");
        assert!(w.accept(8), "the lowest value of the window");
        assert!(!w.accept(7), "the old highest was kept in the window");
        // A jump past the whole window forgets everything below.
        assert!(w.accept(1000));
        assert!(!w.accept(1000 - NC_WINDOW - 1));
        assert!(w.accept(1000 - NC_WINDOW));
        assert!(w.accept(u32::MAX));
        assert!(!w.accept(u32::MAX));
    }

    #[test]
    fn states_follow_uses() {
        let mut t = Tracker::new(300, 1 << 12);
        let a = t.issue(100);
        let b = t.issue(100);
        assert_eq!(t.record(a, 1), Recorded::New);
        assert_eq!(t.record(a, 1), Recorded::Replay);
        assert_eq!(t.tracking().reused, 0, "used once with nc 1: two bits");
        assert_eq!(t.record(a, 3), Recorded::New);
        assert_eq!(t.record(a, 2), Recorded::New);
        assert_eq!(t.record(a, 2), Recorded::Replay);
        assert_eq!(t.record(b, 2), Recorded::New, "first use with nc 2");
        assert_eq!(t.record(b, 1), Recorded::New);
        assert_eq!(t.record(b, 2), Recorded::Replay);
        assert_eq!(t.tracking().reused, 2);
        assert_eq!(t.record(b + 1, 1), Recorded::Untracked, "not issued");
    }

    #[test]
    fn time_trims_the_range_and_the_sparse_map() {
        let mut t = Tracker::new(300, 1 << 20);
        let mut seqs = Vec::new();
        for s in 0..1000u64 {
            for _ in 0..100 {
                let q = t.issue(s);
                if q.is_multiple_of(7) {
                    t.record(q, 1);
                    t.record(q, 2);
                }
                seqs.push(q);
            }
            let tr = t.tracking();
            // What was issued within the lifetime, give or take a word.
            assert!(tr.tracked <= 301 * 100 + PER_WORD, "{tr:?} at {s}");
            assert!(tr.reused <= 301 * 100 / 7 + 8, "{tr:?} at {s}");
            assert!(t.marks.len() <= 302);
        }
        assert!(!t.is_live(seqs[0]));
        assert_eq!(t.record(seqs[0], 3), Recorded::Untracked);
        assert!(t.is_live(*seqs.last().unwrap()));
    }

    /// The load the module docs size for: 70,000 challenges a second over
    /// a 300 s lifetime, one use each, one in 100 reused.
    #[test]
    fn memory_at_seventy_thousand_challenges_a_second() {
        let mut t = Tracker::new(300, 1 << 25);
        let mut peak = Tracking {
            tracked: 0,
            reused: 0,
            bytes: 0,
        };
        for s in 0..330u64 {
            for i in 0..70_000u64 {
                let q = t.issue(s);
                t.record(q, 1);
                if i.is_multiple_of(100) {
                    t.record(q, 2);
                }
            }
            let tr = t.tracking();
            if tr.bytes > peak.bytes {
                peak = tr;
            }
        }
        assert!(peak.tracked <= 301 * 70_000 + PER_WORD, "{peak:?}");
        // 21 million nonces: 5.3 MB of states (8 MiB allocated, a power of
        // two) and 210,700 reused ones (8.4 MB): 16.8 MB in all.
        assert!(peak.bytes < 18 << 20, "{peak:?}");
    }

    #[test]
    fn the_cap_evicts_the_oldest_and_bounds_memory() {
        let cap = 4096;
        let mut t = Tracker::new(300, cap);
        let first = t.issue(0);
        assert_eq!(t.record(first, 1), Recorded::New);
        for _ in 0..100_000 {
            let q = t.issue(0);
            t.record(q, 1);
            t.record(q, 2);
        }
        let tr = t.tracking();
        assert!(tr.tracked <= cap as u64, "{tr:?}");
        assert!(tr.reused <= cap / 64, "{tr:?}");
        assert!(
            tr.bytes <= 2 * cap / 4 + cap / 64 * REUSED_ENTRY_BYTES + 256,
            "{tr:?}"
        );
        assert!(!t.is_live(first));
        assert_eq!(
            t.record(first, 2),
            Recorded::Untracked,
            "evicted: never new"
        );
    }

    #[test]
    fn a_full_sparse_map_retires_for_good() {
        let mut t = Tracker::new(300, 64 * 64);
        for _ in 0..64 {
            let q = t.issue(0);
            assert_eq!(t.record(q, 2), Recorded::New);
        }
        let q = t.issue(10);
        assert_eq!(t.record(q, 1), Recorded::New);
        assert_eq!(t.record(q, 2), Recorded::Untracked, "no room: retired");
        assert!(!t.is_live(q));
        // Room again (time trims the others, not q): q stays retired.
        let r = t.issue(301);
        assert_eq!(t.tracking().reused, 0);
        assert_eq!(t.record(r, 2), Recorded::New);
        assert_eq!(t.record(q, 2), Recorded::Untracked);
        assert_eq!(t.record(q, 3), Recorded::Untracked);
    }

    #[test]
    fn a_clock_going_back_keeps_marks_increasing() {
        let mut t = Tracker::new(300, 1 << 12);
        let seqs: Vec<u64> = (0..40)
            .map(|i| t.issue(if i == 5 { 900 } else { 1000 }))
            .collect();
        assert_eq!(t.marks.len(), 1);
        assert!(seqs.iter().all(|&q| t.is_live(q)));
        t.expire(1301);
        assert!(t.marks.is_empty());
        assert!(seqs[..32].iter().all(|&q| !t.is_live(q)), "whole words go");
    }
}
