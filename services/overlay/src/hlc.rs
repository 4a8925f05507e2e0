//! Hybrid logical clocks.
//!
//! An [`Hlc`] is wall-clock milliseconds and a logical counter packed in one
//! `u64` (`physical << 16 | logical`), so it compares as a plain integer and
//! goes on the wire as one varint. It stays close to real time (so an entry's
//! stamp says roughly when it was written) while never going backwards on a
//! node and always exceeding every stamp the node has seen (so a write that
//! causally follows another always wins the merge).
//!
//! The stamping node is the supernode that accepted the request. The SIP
//! registrar also honours "CSeq orders requests within one Call-ID" (RFC 3261)
//! at accept time: when a REGISTER with a higher CSeq replaces a binding, it
//! stamps with [`HlcClock::tick_after`] the existing entry's stamp. Merging
//! stays a pure total order over `(hlc, origin)`; mixing CSeq into the
//! comparison would not be transitive across Call-IDs.

use std::fmt;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub const fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms << LOGICAL_BITS) | logical as u64)
    }

    pub const fn from_u64(v: u64) -> Self {
        Hlc(v)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub const fn logical(self) -> u16 {
        (self.0 & LOGICAL_MAX) as u16
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.physical_ms(), self.logical())
    }
}

/// A node's clock: the last stamp it issued or observed.
#[derive(Clone, Debug)]
pub struct HlcClock {
    last: Hlc,
    /// Remote stamps further than this ahead of our wall clock are not
    /// adopted, so one peer with a wild clock cannot drag every node's stamps
    /// into the future (the entry itself is still stored as written).
    max_forward_ms: u64,
}

impl HlcClock {
    pub fn new(max_forward_ms: u64) -> Self {
        HlcClock {
            last: Hlc::ZERO,
            max_forward_ms,
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new stamp, strictly greater than every stamp issued or observed.
    pub fn tick(&mut self, now_wall_ms: u64) -> Hlc {
        let next = if now_wall_ms > self.last.physical_ms() {
            Hlc::new(now_wall_ms, 0)
        } else {
            bump(self.last)
        };
        self.last = next;
        next
    }

    /// A new stamp strictly greater than `floor` as well (the registrar's
    /// CSeq rule: the replacement must win over the entry it replaces).
    pub fn tick_after(&mut self, now_wall_ms: u64, floor: Hlc) -> Hlc {
        if floor > self.last {
            self.last = floor;
        }
        self.tick(now_wall_ms)
    }

    /// Takes a stamp seen on a received entry into account.
    pub fn observe(&mut self, remote: Hlc, now_wall_ms: u64) {
        if remote > self.last
            && remote.physical_ms() <= now_wall_ms.saturating_add(self.max_forward_ms)
        {
            self.last = remote;
        }
    }
}

fn bump(h: Hlc) -> Hlc {
    if h.logical() as u64 == LOGICAL_MAX {
        // 65 536 stamps in one millisecond: borrow the next millisecond rather
        // than overflow into it by accident.
        Hlc::new(h.physical_ms() + 1, 0)
    } else {
        Hlc(h.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_physical_and_logical() {
        let h = Hlc::new(1_700_000_000_123, 7);
        assert_eq!(h.physical_ms(), 1_700_000_000_123);
        assert_eq!(h.logical(), 7);
        assert!(Hlc::new(5, 0) > Hlc::new(4, 65535));
    }

    #[test]
    fn tick_follows_wall_clock_and_never_repeats() {
        let mut c = HlcClock::new(60_000);
        let a = c.tick(1000);
        assert_eq!(a, Hlc::new(1000, 0));
        let b = c.tick(1000);
        assert_eq!(b, Hlc::new(1000, 1));
        // Wall clock stepped back: still monotonic.
        let d = c.tick(900);
        assert_eq!(d, Hlc::new(1000, 2));
        assert_eq!(c.tick(2000), Hlc::new(2000, 0));
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = HlcClock::new(60_000);
        c.observe(Hlc::new(1000, u16::MAX), 1000);
        assert_eq!(c.tick(1000), Hlc::new(1001, 0));
    }

    #[test]
    fn observe_moves_past_remote_but_not_into_the_far_future() {
        let mut c = HlcClock::new(1000);
        c.observe(Hlc::new(5000, 3), 4500);
        assert_eq!(c.tick(4500), Hlc::new(5000, 4));
        c.observe(Hlc::new(1_000_000, 0), 4500);
        assert!(c.tick(4500) < Hlc::new(1_000_000, 0));
    }

    #[test]
    fn tick_after_exceeds_floor() {
        let mut c = HlcClock::new(1000);
        let floor = Hlc::new(10_000, 9);
        assert!(c.tick_after(5000, floor) > floor);
    }

    proptest! {
        #[test]
        fn ticks_strictly_increase(walls in proptest::collection::vec(0u64..10_000, 1..50),
                                   remote in proptest::collection::vec(0u64..1u64 << 40, 0..10)) {
            let mut c = HlcClock::new(u64::MAX / 2);
            let mut prev = Hlc::ZERO;
            for (i, w) in walls.iter().enumerate() {
                if let Some(r) = remote.get(i) {
                    c.observe(Hlc::from_u64(*r), *w);
                    prop_assert!(c.last() >= Hlc::from_u64(*r));
                }
                let t = c.tick(*w);
                prop_assert!(t > prev);
                prev = t;
            }
        }
    }
}
