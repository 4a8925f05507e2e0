//! The open-loop schedule.
//!
//! Operation k (k = 0, 1, …) is due at `start + k / rate`, whatever has
//! happened to earlier ones: a slow or silent server does not slow the
//! offered load down (no coordinated omission). The driver wakes on a 1 ms
//! timer; each wake-up starts exactly the operations whose time has come,
//! so the rate is exact over any window longer than that tick and a late
//! wake-up is caught up at once. The schedule holds the operations due
//! before `end`, at most `limit` of them.

use std::time::{Duration, Instant};

/// Operations due before the end that a late wake-up finds still unstarted
/// are started up to this long after the end; past it, the generator is
/// overloaded and the rest is dropped (and shows in the achieved rate).
const LATE_GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    end: Instant,
    /// Seconds between operations.
    period: f64,
    limit: u64,
    started: u64,
}

impl Pacer {
    pub fn new(start: Instant, rate: f64, limit: u64, duration: Duration) -> Pacer {
        let period = 1.0 / rate;
        // operations k with k·period < duration
        let in_time = (duration.as_secs_f64() / period).ceil().max(1.0) as u64;
        Pacer {
            start,
            end: start + duration,
            period,
            limit: limit.min(in_time),
            started: 0,
        }
    }

    /// When operation `k` is due.
    fn due_at(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 * self.period)
    }

    /// Whether no operation will ever be due again.
    pub fn finished(&self, now: Instant) -> bool {
        self.started >= self.limit || now >= self.end + LATE_GRACE
    }

    /// How many operations are due at `now` and not yet started (at most
    /// `max`); the caller starts them and they count as started.
    pub fn take_due(&mut self, now: Instant, max: u64) -> u64 {
        if self.finished(now) {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let due_total = ((elapsed / self.period).floor() as u64 + 1).min(self.limit);
        let n = due_total.saturating_sub(self.started).min(max);
        self.started += n;
        n
    }

    /// When the next operation is due (`None` once finished).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        (!self.finished(now)).then(|| self.due_at(self.started))
    }

    pub fn started(&self) -> u64 {
        self.started
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Ends the schedule now (an interrupted run).
    pub fn stop(&mut self) {
        self.limit = self.started;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_count_at_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0, 1_000_000, Duration::from_secs(10));
        assert_eq!(p.take_due(t0, u64::MAX), 1);
        assert_eq!(p.take_due(t0 + Duration::from_micros(999), u64::MAX), 0);
        assert_eq!(p.take_due(t0 + Duration::from_millis(1), u64::MAX), 1);
        // a late wake-up catches up at once
        assert_eq!(p.take_due(t0 + Duration::from_millis(100), u64::MAX), 99);
        assert_eq!(p.next_due(t0), Some(t0 + Duration::from_millis(101)));
        // capped batches leave the rest due
        assert_eq!(p.take_due(t0 + Duration::from_millis(200), 50), 50);
        assert_eq!(p.take_due(t0 + Duration::from_millis(200), u64::MAX), 50);
    }

    #[test]
    fn count_and_duration_bound_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0, 10, Duration::from_secs(10));
        assert_eq!(p.take_due(t0 + Duration::from_secs(1), u64::MAX), 10);
        assert!(p.finished(t0 + Duration::from_secs(1)));
        let mut p = Pacer::new(t0, 1000.0, 1_000_000, Duration::from_secs(1));
        assert_eq!(p.take_due(t0 + Duration::from_millis(999), u64::MAX), 1000);
        assert!(p.finished(t0 + Duration::from_millis(999)));
        // a wake-up just after the end still starts what was due before it
        let mut p = Pacer::new(t0, 1000.0, 1_000_000, Duration::from_secs(1));
        assert_eq!(p.take_due(t0 + Duration::from_millis(1050), u64::MAX), 1000);
        // the duration is strict: long after the end nothing starts
        let mut p = Pacer::new(t0, 1000.0, 1_000_000, Duration::from_secs(1));
        assert_eq!(p.take_due(t0 + Duration::from_secs(5), u64::MAX), 0);
        assert_eq!(p.next_due(t0 + Duration::from_secs(5)), None);
    }
}
