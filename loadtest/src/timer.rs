//! Timers as data.
//!
//! Every timer the generator arms has one of a few fixed durations (T1·2ⁿ
//! retransmission intervals, the transaction timeout, the hold and answer
//! times). Entries armed with the same duration expire in the order they
//! were armed, so each duration gets a FIFO: arming is a push, expiry a pop
//! from the front, and the next deadline is the earliest front. Cancelling
//! is lazy: an entry carries its owner's generation and a per-class
//! sequence number, and the owner ignores entries that no longer match.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<K: Copy> {
    pub deadline: Instant,
    pub key: K,
}

/// FIFO timer queues, one per distinct duration.
#[derive(Debug)]
pub struct Timers<K: Copy> {
    queues: Vec<(Duration, VecDeque<Entry<K>>)>,
    last_now: Option<Instant>,
}

impl<K: Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            queues: Vec::new(),
            last_now: None,
        }
    }
}

impl<K: Copy> Timers<K> {
    /// Arms a timer `after` from `now`. `now` must not go backwards
    /// between calls (it is clamped to the latest seen).
    pub fn arm(&mut self, now: Instant, after: Duration, key: K) {
        let now = match self.last_now {
            Some(l) if l > now => l,
            _ => {
                self.last_now = Some(now);
                now
            }
        };
        let entry = Entry {
            deadline: now + after,
            key,
        };
        match self.queues.iter_mut().find(|(d, _)| *d == after) {
            Some((_, q)) => q.push_back(entry),
            None => {
                let mut q = VecDeque::with_capacity(1024);
                q.push_back(entry);
                self.queues.push((after, q));
            }
        }
    }

    /// The earliest deadline (possibly of a cancelled entry).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(_, q)| q.front().map(|e| e.deadline))
            .min()
    }

    /// Removes and returns one entry due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry<K>> {
        for (_, q) in &mut self.queues {
            if q.front().is_some_and(|e| e.deadline <= now) {
                return q.pop_front();
            }
        }
        None
    }

    /// Entries still queued (cancelled ones included).
    pub fn len(&self) -> usize {
        self.queues.iter().map(|(_, q)| q.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_in_deadline_order_per_duration() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0, Duration::from_millis(500), 1);
        t.arm(t0, Duration::from_millis(100), 2);
        t.arm(
            t0 + Duration::from_millis(10),
            Duration::from_millis(500),
            3,
        );
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(t.pop_due(t0 + Duration::from_millis(99)).is_none());
        assert_eq!(t.pop_due(t0 + Duration::from_millis(100)).unwrap().key, 2);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(500)));
        let due = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(due).unwrap().key, 1);
        assert_eq!(t.pop_due(due).unwrap().key, 3);
        assert!(t.pop_due(due).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn now_never_goes_back() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut t = Timers::default();
        t.arm(t0, Duration::from_millis(5), 1);
        t.arm(t0 - Duration::from_millis(3), Duration::from_millis(5), 2);
        assert_eq!(t.pop_due(t0 + Duration::from_millis(5)).unwrap().key, 1);
        assert_eq!(t.pop_due(t0 + Duration::from_millis(5)).unwrap().key, 2);
    }
}
