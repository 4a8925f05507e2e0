//! Timers as data.
//!
//! The node never sleeps or reads a clock: it records *when* it wants to be
//! woken and the driver owns the one real timer, calling
//! [`Node::handle_timeout`](crate::Node::handle_timeout) once
//! [`Node::poll_timeout`](crate::Node::poll_timeout) has passed. Periodic
//! protocol timers live in a fixed table; per-operation deadlines (there may
//! be thousands in flight) live in a heap where cancelled entries are simply
//! ignored when they come up, which keeps cancellation O(1).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The node's periodic and protocol-phase timers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timer {
    /// Ping ring neighbours, detect failures.
    Stabilize = 0,
    /// Compare member views with a random peer.
    ViewSync = 1,
    /// Compare replicated ranges with the successors.
    AntiEntropy = 2,
    /// Expire data, hand off records this node no longer replicates.
    Sweep = 3,
    /// Join: retry the seed or the hand-off.
    Join = 4,
    /// Leave: give up waiting for hand-off acknowledgements.
    Leave = 5,
}

const TIMERS: usize = 6;
const ALL: [Timer; TIMERS] = [
    Timer::Stabilize,
    Timer::ViewSync,
    Timer::AntiEntropy,
    Timer::Sweep,
    Timer::Join,
    Timer::Leave,
];

/// One optional deadline per [`Timer`].
#[derive(Clone, Debug, Default)]
pub struct TimerTable {
    at: [Option<Instant>; TIMERS],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.at[t as usize] = Some(at);
    }

    /// Sets the timer unless it is already due sooner.
    pub fn set_earlier(&mut self, t: Timer, at: Instant) {
        let slot = &mut self.at[t as usize];
        if slot.is_none_or(|cur| at < cur) {
            *slot = Some(at);
        }
    }

    pub fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }

    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }

    pub fn clear(&mut self) {
        self.at = [None; TIMERS];
    }

    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Removes and returns the timers due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        ALL.iter()
            .copied()
            .filter(|t| {
                let due = self.at[*t as usize].is_some_and(|at| at <= now);
                if due {
                    self.at[*t as usize] = None;
                }
                due
            })
            .collect()
    }
}

/// What a heap deadline refers to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Deadline {
    /// An application operation this node started.
    Op(u64),
    /// A write this node coordinates, waiting for replica acks.
    Replication(u64),
    /// A pushed hand-off batch waiting for its ack.
    Push(u64),
}

/// Deadlines in time order; stale entries are skipped by their owners.
#[derive(Clone, Debug, Default)]
pub struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Instant, Deadline)>>,
}

impl DeadlineQueue {
    pub fn push(&mut self, at: Instant, d: Deadline) {
        self.heap.push(Reverse((at, d)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Deadline> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, d))| d),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_reports_the_earliest_and_takes_only_due() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        t.set(Timer::Sweep, t0 + Duration::from_secs(5));
        t.set(Timer::Stabilize, t0 + Duration::from_secs(1));
        t.set_earlier(Timer::Sweep, t0 + Duration::from_secs(9));
        assert_eq!(t.get(Timer::Sweep), Some(t0 + Duration::from_secs(5)));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            t.take_due(t0 + Duration::from_secs(2)),
            vec![Timer::Stabilize]
        );
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn queue_pops_in_time_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        q.push(t0 + Duration::from_millis(30), Deadline::Op(3));
        q.push(t0 + Duration::from_millis(10), Deadline::Push(1));
        q.push(t0 + Duration::from_millis(20), Deadline::Replication(2));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(q.pop_due(now), Some(Deadline::Push(1)));
        assert_eq!(q.pop_due(now), Some(Deadline::Replication(2)));
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.next(), Some(t0 + Duration::from_millis(30)));
    }
}
