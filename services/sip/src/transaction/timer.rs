//! Transaction timers as data (RFC 3261 §17, table 4; RFC 6026 L and M).
//!
//! Each transaction has at most three timers armed at once, one per
//! [`Slot`]: a retransmission timer (A, E or G), a give-up timer (B, F, H,
//! or the proxy's Timer C and the cancel guard), and a linger timer that
//! keeps a finished transaction around to absorb retransmissions (D, K, I,
//! J, L, M). The transaction stores the deadline of each armed slot; the
//! [`TimerTable`] is one min-heap of `(deadline, transaction, slot)`
//! entries over every transaction.
//!
//! Re-arming or cancelling a timer does not touch the heap: the old entry
//! becomes stale and is recognised when it surfaces, because the
//! transaction no longer holds that deadline in that slot (lazy deletion).
//! So that stale entries cannot pile up (a reliable non-INVITE transaction
//! answered at once leaves its 32 s Timer F behind), the heap is rebuilt
//! without them whenever they outnumber the armed timers: every operation
//! stays O(log n) amortised and the heap never holds more than about twice
//! the armed timers. No operation scans the transaction table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The RFC 3261 timer base values and the proxy's Timer C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE
    /// responses (default 4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (default 5 s).
    pub t4: Duration,
    /// Timer C (RFC 3261 §16.6 step 11, §16.7 step 2): how long a proxy's
    /// INVITE client transaction waits in Proceeding for a final response
    /// before it reports [`crate::transaction::Event::TimerC`]. It must be
    /// over three minutes; default 181 s.
    pub c: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            c: Duration::from_secs(181),
        }
    }
}

impl Timers {
    /// Makes the values usable: every value between 1 ms (a zero
    /// retransmit interval would fire forever) and one day (so deadlines
    /// never overflow), and T2 at least T1.
    pub(crate) fn sanitised(mut self) -> Timers {
        let clamp = |d: Duration| d.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self.t1 = clamp(self.t1);
        self.t2 = clamp(self.t2).max(self.t1);
        self.t4 = clamp(self.t4);
        self.c = clamp(self.c);
        self
    }
    /// Timers B, F, H, L, M and J (unreliable): 64*T1.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
    /// Timer D on unreliable transports: at least 32 s, whatever T1 is,
    /// since it covers the server's retransmissions, paced by its own T1.
    pub fn d(&self) -> Duration {
        Duration::from_secs(32).max(self.timeout())
    }
}

/// Which of a transaction's three timers an entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Slot {
    /// A (client INVITE), E (client non-INVITE), G (server INVITE).
    Retransmit = 0,
    /// B, F, H; Timer C and the cancel guard of a client INVITE.
    GiveUp = 1,
    /// D, K, I, J, L, M.
    Linger = 2,
}

/// A transaction's place in the table: slab index and generation, so a
/// reused index never matches a stale timer or a stale key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Id {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) at: Instant,
    pub(crate) id: Id,
    pub(crate) slot: Slot,
}

/// The deadlines of one transaction, one per [`Slot`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Deadlines([Option<Instant>; 3]);

impl Deadlines {
    pub(crate) fn get(&self, slot: Slot) -> Option<Instant> {
        self.0[slot as usize]
    }
    pub(crate) fn armed(&self) -> usize {
        self.0.iter().filter(|d| d.is_some()).count()
    }
}

/// The min-heap of every armed deadline, with lazy deletion.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Timers currently armed across all transactions (live entries).
    armed: usize,
}

impl TimerTable {
    pub(crate) fn reserve(&mut self, n: usize) {
        self.heap.reserve(n);
    }

    pub(crate) fn arm(&mut self, deadlines: &mut Deadlines, id: Id, slot: Slot, at: Instant) {
        if deadlines.0[slot as usize].replace(at).is_none() {
            self.armed += 1;
        }
        self.heap.push(Reverse(Entry { at, id, slot }));
    }

    pub(crate) fn clear(&mut self, deadlines: &mut Deadlines, slot: Slot) {
        if deadlines.0[slot as usize].take().is_some() {
            self.armed -= 1;
        }
    }

    /// Forgets every timer of a transaction that is being removed.
    pub(crate) fn forget(&mut self, deadlines: &Deadlines) {
        self.armed -= deadlines.armed();
    }

    /// The earliest entry, possibly stale.
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.0.at)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|e| e.0)
    }

    /// Called when a popped entry turned out to be live: its slot is
    /// disarmed before the timer's action runs (which may re-arm it).
    pub(crate) fn fired(&mut self, deadlines: &mut Deadlines, slot: Slot) {
        self.clear(deadlines, slot);
    }

    /// Drops stale entries at the top, so [`TimerTable::peek`] is exact,
    /// and rebuilds the heap when stale entries outnumber live ones.
    pub(crate) fn tidy(&mut self, live: impl Fn(&Entry) -> bool) {
        while let Some(top) = self.heap.peek() {
            if live(&top.0) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 2 * self.armed + 1024 {
            self.heap.retain(|e| live(&e.0));
        }
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub(crate) fn armed(&self) -> usize {
        self.armed
    }
}
