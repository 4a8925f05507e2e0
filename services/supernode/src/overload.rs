//! Overload control: which new requests a node turns away, and when.
//!
//! A node past its capacity must keep serving what it admits at full speed
//! and turn the rest away cheaply, before latency grows and before the
//! kernel drops datagrams (a drop is retransmitted, so it adds load). It
//! must also never turn anyone away because of a burst it drains in a few
//! milliseconds: a context switch, a pause of the process, a debug build, a
//! CPU-throttled pod. The transport readers decide, per new request, on
//! four signals:
//!
//! - **queueing delay**, judged by CoDel's rule (RFC 8289): each message's
//!   sojourn — from the moment the kernel queued it (its `SO_TIMESTAMPNS`
//!   receive timestamp for UDP; the reader's read for streams) to the moment
//!   it is handled, by the SIP core or by a reader shedding it — is compared
//!   with the target `overload-queue-delay-ms`. Shedding starts only once
//!   every sojourn seen for a whole `overload-delay-interval-ms` was above
//!   the target (a standing queue, not a burst), and stops at the first
//!   sojourn below it. A burst drained within the interval is never shed.
//! - **queue depth** (`overload-queue-depth`): the messages waiting between
//!   the readers and the core, a hard bound on the memory they hold. Its
//!   default is the whole queue, so it trips only when the queue is full
//!   (a reader then sheds new work instead of waiting for room).
//! - **transactions** (`overload-max-transactions`): the transactions the
//!   core holds, a hard bound on their memory.
//! - **pending**: in a farm the ring is a queue of its own, invisible in
//!   the core's, which would otherwise fill until operations time out
//!   (late 503s, retransmissions, collapse). Judged like the queueing
//!   delay on each location operation's wait, from the moment the core
//!   handed it to the ring to its answer, against
//!   `overload-pending-delay-ms`: a wait, unlike a count, means the same
//!   on a small pod and a large server, so admitted requests wait about
//!   the target wherever the node runs. A bound on the count of requests
//!   waiting for the ring or the subscriber directory
//!   (`overload-max-pending`, over it for a whole interval) holds their
//!   memory when no operation finishes at all.
//!
//! A node shutting down sheds every new request (`draining`) while it
//! finishes what it has.
//!
//! What may be shed depends on the message ([`Classifier`], [`Work`]):
//! responses, ACKs, CANCELs and emergency requests never are, so calls in
//! progress finish and no transaction is left half-done; a request of a
//! dialog the farm holds — one whose Route carries a flow token of this
//! farm that opens for its dialog, not merely one with a To tag, which
//! anyone can write — only at the hard bounds (queue depth, transactions);
//! anything else under any overload. A shed request gets a stateless 503
//! with `Retry-After`
//! (`overload-retry-after`, [`overload_response`]), which ends the client's
//! transaction (no retransmissions) and asks it to back off.
//!
//! Under a steady overload the node alternates: it sheds until its backlog
//! has drained, admits, and sheds again as soon as the delay is back over
//! the target — at once, not after a whole interval, while the last
//! shedding is recent (ten intervals; CoDel keeps the same memory of a
//! recent dropping state). Admitted requests wait about the target, the
//! core never idles, and goodput stays at capacity.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_sip::{HeaderName, Message, Method};

use crate::config::OverloadConfig;

/// Why a new request was shed (`ringmesh_overload_shed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    QueueDepth,
    QueueDelay,
    Transactions,
    Pending,
    /// The node is shutting down: it finishes what it has, takes nothing new.
    Draining,
}

impl ShedReason {
    /// A bound that holds whatever the request: memory, not latency.
    pub fn is_hard(self) -> bool {
        matches!(self, ShedReason::QueueDepth | ShedReason::Transactions)
    }

    pub const ALL: [ShedReason; 5] = [
        ShedReason::QueueDepth,
        ShedReason::QueueDelay,
        ShedReason::Transactions,
        ShedReason::Pending,
        ShedReason::Draining,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ShedReason::QueueDepth => "queue_depth",
            ShedReason::QueueDelay => "queue_delay",
            ShedReason::Transactions => "transactions",
            ShedReason::Pending => "pending",
            ShedReason::Draining => "draining",
        }
    }
}

/// How long after shedding stopped a signal over its limit resumes it at
/// once, in intervals (CoDel's memory of a recent dropping state).
const RECENT_INTERVALS: u64 = 10;

/// CoDel's rule for one signal: above its limit on every observation for a
/// whole interval — or on one observation, within `RECENT_INTERVALS` of
/// the last time it was sustained (an overload that goes on is met at the
/// target, not a whole interval late each time). Observations come from
/// several threads (the core and the readers), so the state is atomics; a
/// race between two observations at the same instant only shifts the
/// decision by one message.
#[derive(Debug, Default)]
pub struct Sustained {
    /// When the current run of observations above the limit began
    /// (microseconds since the [`Overload`] epoch, plus one); zero while
    /// the last observation was below.
    above_since: AtomicU64,
    /// When the signal last stopped being sustained (same clock, plus
    /// one); zero if never.
    ended: AtomicU64,
    /// When the signal last became sustained (same clock, plus one).
    began: AtomicU64,
    active: AtomicBool,
}

impl Sustained {
    /// Records one observation at `now_us` and returns whether the signal
    /// is now sustained.
    pub fn observe(&self, above: bool, now_us: u64, interval_us: u64) -> bool {
        let now = now_us + 1;
        if !above {
            if self.above_since.load(Ordering::Relaxed) != 0 {
                self.above_since.store(0, Ordering::Relaxed);
            }
            if self.active.load(Ordering::Relaxed) {
                self.active.store(false, Ordering::Relaxed);
                self.ended.store(now, Ordering::Relaxed);
            }
            return false;
        }
        if self.active.load(Ordering::Relaxed) {
            return true;
        }
        let mut since = self.above_since.load(Ordering::Relaxed);
        if since == 0 {
            since = now;
            self.above_since.store(now, Ordering::Relaxed);
        }
        let ended = self.ended.load(Ordering::Relaxed);
        let recent = ended != 0 && now < ended + RECENT_INTERVALS * interval_us;
        if recent || now >= since + interval_us {
            self.began.store(now, Ordering::Relaxed);
            self.active.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// How long the signal has been sustained without a break at `now_us`
    /// (`None` while it is not).
    fn active_for(&self, now_us: u64) -> Option<u64> {
        self.is_active()
            .then(|| (now_us + 1).saturating_sub(self.began.load(Ordering::Relaxed)))
    }
}

/// The overload signals the SIP core and the readers publish and read, and
/// the limits they are held to (see the [module docs](self)).
#[derive(Debug)]
pub struct Overload {
    pub limits: OverloadConfig,
    epoch: Instant,
    delay: Sustained,
    pending_over: Sustained,
    pending_wait: Sustained,
    /// Transactions the core holds, Timer J lingerers not counted.
    pub transactions: AtomicUsize,
    /// Requests waiting for the location service or the directory.
    pub pending: AtomicUsize,
    /// How long the last message the core took had waited in its queue,
    /// microseconds; zero once the queue is empty.
    core_wait_us: AtomicU64,
    /// Set when the node shuts down.
    draining: AtomicBool,
    /// The `Retry-After` value, pre-formatted.
    retry_after: Box<[u8]>,
}

impl Overload {
    pub fn new(limits: OverloadConfig) -> Overload {
        Overload {
            limits,
            epoch: Instant::now(),
            delay: Sustained::default(),
            pending_over: Sustained::default(),
            pending_wait: Sustained::default(),
            transactions: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            core_wait_us: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            retry_after: limits.retry_after.to_string().into_bytes().into(),
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn interval_us(&self) -> u64 {
        self.limits.delay_interval.as_micros() as u64
    }

    /// One message's sojourn, observed at `now` where it was handled (the
    /// core, or a reader that shed it).
    pub fn observe_sojourn(&self, sojourn: Duration, now: Instant) {
        self.delay.observe(
            sojourn > self.limits.queue_delay,
            self.micros(now),
            self.interval_us(),
        );
    }

    /// The requests waiting for the ring or the directory, observed by the
    /// core after a turn.
    pub fn observe_pending(&self, pending: usize, now: Instant) {
        self.pending.store(pending, Ordering::Relaxed);
        self.pending_over.observe(
            pending >= self.limits.max_pending,
            self.micros(now),
            self.interval_us(),
        );
    }

    /// How long one location operation waited for the ring, observed by
    /// the core when its answer came.
    pub fn observe_pending_wait(&self, wait: Duration, now: Instant) {
        self.pending_wait.observe(
            wait > self.limits.pending_delay,
            self.micros(now),
            self.interval_us(),
        );
    }

    /// From now on every new request is refused (the node shuts down).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Publishes how long messages now wait in the core's queue (the core,
    /// after each turn).
    pub fn set_core_wait(&self, wait: Duration) {
        self.core_wait_us
            .store(wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// How long a message queued now would wait for the core, as last
    /// published: part of the sojourn a reader observes for a message it
    /// sheds, so that shedding stops when the core's backlog has drained,
    /// not merely the kernel's.
    pub fn core_wait(&self) -> Duration {
        Duration::from_micros(self.core_wait_us.load(Ordering::Relaxed))
    }

    /// Whether a new request arriving with `depth` messages queued must be
    /// shed, and why.
    pub fn shed_reason(&self, depth: usize) -> Option<ShedReason> {
        if self.draining.load(Ordering::Relaxed) {
            Some(ShedReason::Draining)
        } else if depth >= self.limits.queue_depth {
            Some(ShedReason::QueueDepth)
        } else if self.delay.is_active() {
            Some(ShedReason::QueueDelay)
        } else if self.transactions.load(Ordering::Relaxed) >= self.limits.max_transactions {
            Some(ShedReason::Transactions)
        } else if self.pending_over.is_active() || self.pending_wait.is_active() {
            Some(ShedReason::Pending)
        } else {
            None
        }
    }

    /// What this node tells the other members (`farm`): whether they must
    /// refuse new calls for its phones. Yes at a hard limit; for a signal
    /// judged over time, only once this node has shed without a break for
    /// `mark_after`. Shedding what enters here drains a backlog this
    /// node's own traffic made within a few intervals, shedding and
    /// admitting by turns; on a core shared with the other members, all
    /// of them shed by turns together, and a call refused for its callee's
    /// node after its caller's node took it and looked the callee up is
    /// work thrown away. Shedding that never breaks means work this node
    /// cannot shed (calls the others send on) keeps it over.
    pub fn is_overloaded(&self, now: Instant) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        if self.transactions.load(Ordering::Relaxed) >= self.limits.max_transactions {
            return true;
        }
        let (now, after) = (self.micros(now), self.limits.mark_after.as_micros() as u64);
        [&self.delay, &self.pending_over, &self.pending_wait]
            .iter()
            .filter_map(|s| s.active_for(now))
            .any(|unbroken| unbroken >= after)
    }

    /// The `Retry-After` value of the 503s this node writes.
    pub fn retry_after(&self) -> &[u8] {
        &self.retry_after
    }
}

/// What overload control may do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Responses, ACK, CANCEL and emergency requests: never shed.
    Finishing,
    /// A request of a dialog this farm holds: shed only at a hard bound.
    InDialog,
    /// Anything else: shed under any overload.
    New,
}

impl Work {
    pub fn may_shed(self, reason: ShedReason) -> bool {
        match self {
            Work::Finishing => false,
            Work::InDialog => reason.is_hard(),
            Work::New => true,
        }
    }
}

/// Tells [`Work`] apart, from the message alone.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub tokens: ringmesh_proxy::TokenKeys,
    pub emergency_numbers: Vec<String>,
}

impl Classifier {
    pub fn classify(&self, msg: &Message, now_secs: u64) -> Work {
        if !msg.is_request()
            || matches!(msg.method(), Method::Ack | Method::Cancel)
            || ringmesh_proxy::is_emergency(msg, &self.emergency_numbers)
        {
            Work::Finishing
        } else if msg.to_tag().is_some() && self.tokens.routes_dialog(msg, now_secs) {
            Work::InDialog
        } else {
            Work::New
        }
    }
}

/// The stateless 503 of overload control.
pub fn overload_response(msg: &Message, retry_after: &[u8]) -> Bytes {
    let mut w = msg.response_writer(503, Some(b"rm-shed"));
    w.header(HeaderName::RetryAfter, retry_after);
    w.finish(b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> OverloadConfig {
        OverloadConfig {
            queue_depth: 100,
            queue_delay: ms(20),
            delay_interval: ms(100),
            max_transactions: 1000,
            max_pending: 50,
            pending_delay: ms(30),
            mark_after: ms(500),
            retry_after: 7,
        }
    }

    fn parse(text: &str) -> Message {
        Message::parse(Bytes::from(text.replace('\n', "\r\n"))).unwrap()
    }

    const REGISTER: &str = "REGISTER sip:ringmesh.test SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\n\
From: <sip:a@ringmesh.test>;tag=f\n\
To: <sip:a@ringmesh.test>\n\
Call-ID: c1\n\
CSeq: 1 REGISTER\n\
Content-Length: 0\n\n";

    /// Feeds one sojourn sample a millisecond from `from` to `to` (ms on
    /// the virtual clock), `sojourn(t)` each.
    fn feed(o: &Overload, t0: Instant, from: u64, to: u64, sojourn: impl Fn(u64) -> Duration) {
        for t in from..to {
            o.observe_sojourn(sojourn(t), t0 + ms(t));
        }
    }

    #[test]
    fn a_burst_drained_within_the_interval_is_never_shed() {
        let o = Overload::new(limits());
        let t0 = o.epoch;
        // The process stalls for 90 ms (a pod's CPU quota spent): messages
        // that arrived during the stall waited up to 90 ms, then the queue
        // drains in 5 ms.
        feed(&o, t0, 0, 100, |_| ms(1));
        feed(&o, t0, 100, 195, |t| ms(195 - t));
        feed(&o, t0, 195, 400, |_| ms(1));
        assert_eq!(o.shed_reason(0), None);
        // The same stall, over and over.
        for k in 1..10 {
            let s = 400 * k;
            feed(&o, t0, s, s + 95, |t| ms(s + 95 - t));
            feed(&o, t0, s + 95, s + 400, |_| ms(1));
            assert_eq!(o.shed_reason(0), None);
        }
    }

    #[test]
    fn a_standing_queue_sheds_after_an_interval_and_stops_when_drained() {
        let o = Overload::new(limits());
        let t0 = o.epoch;
        feed(&o, t0, 0, 99, |_| ms(30));
        assert_eq!(o.shed_reason(0), None, "not yet a whole interval");
        feed(&o, t0, 99, 102, |_| ms(30));
        assert_eq!(o.shed_reason(0), Some(ShedReason::QueueDelay));
        // Shedding drains the backlog; the first sojourn under the target
        // ends it.
        feed(&o, t0, 102, 150, |t| ms(200 - t));
        assert_eq!(o.shed_reason(0), Some(ShedReason::QueueDelay));
        o.observe_sojourn(ms(19), t0 + ms(151));
        assert_eq!(o.shed_reason(0), None);
        // The overload goes on: shedding resumes as soon as the delay is
        // back over the target.
        feed(&o, t0, 152, 160, |_| ms(5));
        assert_eq!(o.shed_reason(0), None);
        o.observe_sojourn(ms(21), t0 + ms(160));
        assert_eq!(o.shed_reason(0), Some(ShedReason::QueueDelay));
        o.observe_sojourn(ms(1), t0 + ms(161));
        // Long after the last shedding (ten intervals), a new standing
        // queue needs a whole interval again.
        feed(&o, t0, 1200, 1299, |_| ms(40));
        assert_eq!(o.shed_reason(0), None);
        feed(&o, t0, 1299, 1302, |_| ms(40));
        assert_eq!(o.shed_reason(0), Some(ShedReason::QueueDelay));
    }

    #[test]
    fn pending_sheds_only_when_sustained() {
        let o = Overload::new(limits());
        let t0 = o.epoch;
        // A ring hiccup: 80 ms over the limit.
        for t in 0..80 {
            o.observe_pending(60, t0 + ms(t));
        }
        o.observe_pending(10, t0 + ms(80));
        assert_eq!(o.shed_reason(0), None);
        for t in 100..201 {
            o.observe_pending(50, t0 + ms(t));
        }
        assert_eq!(o.shed_reason(0), Some(ShedReason::Pending));
        o.observe_pending(49, t0 + ms(202));
        assert_eq!(o.shed_reason(0), None);
    }

    #[test]
    fn ring_waits_shed_when_every_one_is_long_for_an_interval() {
        let o = Overload::new(limits());
        let t0 = o.epoch;
        // A slow replica: one operation in ten waits 200 ms, the others
        // are answered at once. Nothing to shed.
        for t in 0..300 {
            let wait = if t % 10 == 0 { ms(200) } else { ms(2) };
            o.observe_pending_wait(wait, t0 + ms(t));
        }
        assert_eq!(o.shed_reason(0), None);
        // A standing queue on the ring: every answer waits 40 ms.
        for t in 300..399 {
            o.observe_pending_wait(ms(40), t0 + ms(t));
        }
        assert_eq!(o.shed_reason(0), None, "not yet a whole interval");
        o.observe_pending_wait(ms(40), t0 + ms(400));
        assert_eq!(o.shed_reason(0), Some(ShedReason::Pending));
        // The first answer under the target ends it; the next over it,
        // soon after, resumes it at once.
        o.observe_pending_wait(ms(29), t0 + ms(401));
        assert_eq!(o.shed_reason(0), None);
        o.observe_pending_wait(ms(31), t0 + ms(402));
        assert_eq!(o.shed_reason(0), Some(ShedReason::Pending));
    }

    #[test]
    fn only_shedding_without_a_break_is_told_to_the_other_members() {
        let o = Overload::new(limits());
        let t0 = o.epoch;
        let told = |t: u64| o.is_overloaded(t0 + ms(t));
        // A standing queue: shedding starts after an interval (100 ms).
        feed(&o, t0, 0, 101, |_| ms(30));
        assert_eq!(o.shed_reason(0), Some(ShedReason::QueueDelay));
        assert!(!told(101));
        // Shedding drains it every 80 ms and resumes at once, for two
        // seconds: this node sheds by turns, the others hear nothing.
        for k in 0..25 {
            let s = 101 + 80 * k;
            feed(&o, t0, s, s + 79, |_| ms(30));
            assert!(!told(s + 78), "{s}");
            o.observe_sojourn(ms(1), t0 + ms(s + 79));
            assert_eq!(o.shed_reason(0), None);
        }
        // Now it never drains: told once it has shed for 500 ms unbroken.
        feed(&o, t0, 2101, 2600, |_| ms(30));
        assert!(!told(2600));
        feed(&o, t0, 2600, 2602, |_| ms(30));
        assert!(told(2601));
        // The first sojourn under the target lifts it.
        o.observe_sojourn(ms(1), t0 + ms(2700));
        assert!(!told(2700));
        // The same for the waits on the ring.
        let o = Overload::new(limits());
        for t in 0..700 {
            o.observe_pending_wait(ms(40), t0 + ms(t));
        }
        assert_eq!(o.shed_reason(0), Some(ShedReason::Pending));
        assert!(o.is_overloaded(t0 + ms(700)));
        // A hard limit is told at once, whatever else is going on; a node
        // shutting down is not overloaded.
        let o = Overload::new(limits());
        o.transactions.store(1000, Ordering::Relaxed);
        assert!(o.is_overloaded(t0));
        feed(&o, t0, 0, 101, |_| ms(30));
        assert!(o.is_overloaded(t0 + ms(101)));
        o.start_draining();
        assert!(!o.is_overloaded(t0 + ms(102)));
    }

    #[test]
    fn depth_and_transactions_are_hard_limits() {
        let o = Overload::new(limits());
        assert_eq!(o.shed_reason(99), None);
        assert_eq!(o.shed_reason(100), Some(ShedReason::QueueDepth));
        o.transactions.store(1000, Ordering::Relaxed);
        assert_eq!(o.shed_reason(0), Some(ShedReason::Transactions));
        o.transactions.store(999, Ordering::Relaxed);
        assert_eq!(o.shed_reason(0), None);
        o.start_draining();
        assert_eq!(o.shed_reason(0), Some(ShedReason::Draining));
    }

    #[test]
    fn what_may_be_shed_depends_on_the_message_not_its_to_tag() {
        use ringmesh_proxy::token::{Dest, Dialog, FlowToken};
        let now = 1_800_000_000;
        let c = Classifier {
            tokens: ringmesh_proxy::TokenKeys::new(&[(0, b"farm secret".to_vec())], 3600),
            emergency_numbers: vec!["112".into()],
        };
        let class = |text: &str| c.classify(&parse(text), now);
        assert_eq!(class(REGISTER), Work::New);
        let invite = REGISTER
            .replace("REGISTER sip:ringmesh.test", "INVITE sip:b@ringmesh.test")
            .replace("1 REGISTER", "1 INVITE");
        assert_eq!(class(&invite), Work::New);
        // A To tag alone is what an attacker writes: still new work.
        let bye = invite
            .replace("INVITE sip:b", "BYE sip:b")
            .replace("1 INVITE", "2 BYE")
            .replace(
                "To: <sip:a@ringmesh.test>",
                "To: <sip:a@ringmesh.test>;tag=t",
            );
        assert_eq!(class(&bye), Work::New, "a To tag without a token");
        // With a token of this farm for the dialog: in-dialog.
        let token = c.tokens.seal(
            &FlowToken {
                node: [1; 16],
                dest: Dest::Peer([2; 16]),
            },
            Dialog {
                call_id: b"c1",
                caller_tag: b"t",
            },
            now,
        );
        let in_dialog = bye.replace(
            "Content-Length",
            &format!("Route: <sip:{token}@192.0.2.9;lr>\nContent-Length"),
        );
        assert_eq!(class(&in_dialog), Work::InDialog);
        let other_dialog = in_dialog.replace("Call-ID: c1", "Call-ID: c2");
        assert_eq!(
            class(&other_dialog),
            Work::New,
            "the token of another dialog"
        );
        for (m, what) in [("ACK", "ACK"), ("CANCEL", "CANCEL")] {
            let t = invite
                .replace("INVITE sip:b", &format!("{m} sip:b"))
                .replace("1 INVITE", &format!("1 {m}"));
            assert_eq!(class(&t), Work::Finishing, "{what}");
        }
        let sos = invite.replace("INVITE sip:b@ringmesh.test", "INVITE urn:service:sos");
        assert_eq!(class(&sos), Work::Finishing, "emergency");
        let e112 = invite.replace("INVITE sip:b@", "INVITE sip:112@");
        assert_eq!(class(&e112), Work::Finishing, "emergency number");
        let resp = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\n\
From: <sip:a@ringmesh.test>;tag=f\nTo: <sip:a@ringmesh.test>;tag=t\nCall-ID: c1\n\
CSeq: 1 INVITE\nContent-Length: 0\n\n";
        assert_eq!(class(resp), Work::Finishing);
        // In-dialog requests give way only to the hard bounds.
        for r in ShedReason::ALL {
            assert_eq!(Work::InDialog.may_shed(r), r.is_hard(), "{r:?}");
            assert!(Work::New.may_shed(r));
            assert!(!Work::Finishing.may_shed(r));
        }
    }

    #[test]
    fn the_503_asks_to_retry_later() {
        let o = Overload::new(limits());
        let r = Message::parse(overload_response(&parse(REGISTER), o.retry_after())).unwrap();
        assert_eq!(r.status(), Some(503));
        assert_eq!(r.header(HeaderName::RetryAfter), Some(&b"7"[..]));
        assert!(r.to_tag().is_some());
        assert_eq!(r.call_id(), b"c1");
    }
}
