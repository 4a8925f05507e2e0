//! What a run measures, and the JSON report.
//!
//! Each shard fills its own [`Stats`] (no sharing, no atomics on the hot
//! path); the runner merges them at the end. Latencies are microseconds in
//! HDR histograms, measured from a transaction's first transmission to
//! the response that ends it (retransmission delays included, as a user
//! would see them).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histograms, by what they measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lat {
    /// REGISTER → its final response (other than a challenge answered).
    Register = 0,
    /// INVITE → the first 180.
    Invite180 = 1,
    /// INVITE → 200.
    Invite200 = 2,
    /// BYE → 200.
    Bye200 = 3,
    /// REGISTER or INVITE → the 401/407 challenge that was answered.
    Challenge = 4,
}

pub const LAT_NAMES: [&str; 5] = [
    "register",
    "invite_180",
    "invite_200",
    "bye_200",
    "challenge",
];

/// Operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Register = 0,
    Call = 1,
}

/// Methods whose responses are counted by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Meth {
    Register = 0,
    Invite = 1,
    Bye = 2,
}

const METH_NAMES: [&str; 3] = ["REGISTER", "INVITE", "BYE"];

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fail {
    /// A final response that ends the operation unsuccessfully, and
    /// whether it asked to retry later (a Retry-After header).
    Status(Meth, u16, bool),
    /// No final response within the transaction timeout.
    Timeout(Meth),
    /// Still open when the run's drain time ran out.
    Unfinished,
    /// A challenge we could not answer (no password, no usable algorithm,
    /// or challenged again after answering).
    Auth(Meth),
    /// The socket refused to send.
    Send,
}

impl Fail {
    fn label(&self) -> String {
        match self {
            Fail::Status(m, s, false) => format!("{} {s}", METH_NAMES[*m as usize]),
            Fail::Status(m, s, true) => format!("{} {s} Retry-After", METH_NAMES[*m as usize]),
            Fail::Timeout(m) => format!("{} timeout", METH_NAMES[*m as usize]),
            Fail::Unfinished => "unfinished at end of run".into(),
            Fail::Auth(m) => format!("{} challenge not answerable", METH_NAMES[*m as usize]),
            Fail::Send => "send error".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OpCounts {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Of the failures, those that timed out.
    pub timeouts: u64,
}

impl OpCounts {
    fn add(&mut self, o: &OpCounts) {
        self.started += o.started;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.timeouts += o.timeouts;
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MsgCounts {
    /// Datagrams / stream messages sent, retransmissions included.
    pub sent: u64,
    pub received: u64,
    pub retransmissions: u64,
    /// Received bytes that did not parse as SIP.
    pub parse_errors: u64,
    /// Responses or requests that belong to no live operation (late
    /// retransmissions, other runs).
    pub stray: u64,
    pub send_errors: u64,
    /// Requests the callee side answered (180, 200, 200 to BYE, ...).
    pub uas_responses: u64,
}

impl MsgCounts {
    fn add(&mut self, o: &MsgCounts) {
        self.sent += o.sent;
        self.received += o.received;
        self.retransmissions += o.retransmissions;
        self.parse_errors += o.parse_errors;
        self.stray += o.stray;
        self.send_errors += o.send_errors;
        self.uas_responses += o.uas_responses;
    }
}

/// One second of the measured phase.
#[derive(Debug, Clone)]
pub struct Second {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retransmissions: u64,
    /// REGISTER → final and INVITE → 200 latencies in this second.
    pub lat: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            started: 0,
            succeeded: 0,
            failed: 0,
            retransmissions: 0,
            lat: Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid bounds"),
        }
    }
}

/// One shard's measurements.
#[derive(Debug, Clone)]
pub struct Stats {
    pub lat: Vec<Histogram<u64>>,
    /// `status[meth][code - 100]`.
    status: Vec<Vec<u64>>,
    pub ops: [OpCounts; 2],
    pub failures: HashMap<Fail, u64>,
    pub msgs: MsgCounts,
    /// Operations not started because the handset still had one open
    /// (RFC 3261 §10.2: no overlapping REGISTERs).
    pub skipped_busy: u64,
    /// Callee registrations before the measured phase.
    pub setup: OpCounts,
    pub series: Vec<Second>,
    /// Start of the measured phase.
    pub t0: Option<Instant>,
    /// When the last measured operation was started.
    pub last_start: Option<Instant>,
    /// When the last measured operation ended.
    pub last_end: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            lat: (0..LAT_NAMES.len())
                .map(|_| Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
                .collect(),
            status: vec![vec![0; 600]; 3],
            ops: [OpCounts::default(); 2],
            failures: HashMap::new(),
            msgs: MsgCounts::default(),
            skipped_busy: 0,
            setup: OpCounts::default(),
            series: Vec::new(),
            t0: None,
            last_start: None,
            last_end: None,
        }
    }
}

impl Stats {
    fn second(&mut self, now: Instant) -> Option<&mut Second> {
        let t0 = self.t0?;
        let i = now.saturating_duration_since(t0).as_secs() as usize;
        if i > 100_000 {
            return None;
        }
        while self.series.len() <= i {
            self.series.push(Second::new());
        }
        Some(&mut self.series[i])
    }

    pub fn status(&mut self, m: Meth, code: u16) {
        if (100..700).contains(&code) {
            self.status[m as usize][usize::from(code - 100)] += 1;
        }
    }

    pub fn latency(&mut self, l: Lat, micros: u64, now: Instant) {
        let v = micros.max(1);
        let _ = self.lat[l as usize].record(v);
        if matches!(l, Lat::Register | Lat::Invite200)
            && let Some(s) = self.second(now)
        {
            let _ = s.lat.record(v.min(120_000_000));
        }
    }

    pub fn started(&mut self, k: Kind, now: Instant) {
        self.ops[k as usize].started += 1;
        self.last_start = Some(now);
        if let Some(s) = self.second(now) {
            s.started += 1;
        }
    }

    pub fn succeeded(&mut self, k: Kind, now: Instant) {
        self.ops[k as usize].succeeded += 1;
        self.last_end = Some(now);
        if let Some(s) = self.second(now) {
            s.succeeded += 1;
        }
    }

    pub fn failed(&mut self, k: Kind, why: Fail, now: Instant) {
        let c = &mut self.ops[k as usize];
        c.failed += 1;
        if matches!(why, Fail::Timeout(_)) {
            c.timeouts += 1;
        }
        *self.failures.entry(why).or_default() += 1;
        self.last_end = Some(now);
        if let Some(s) = self.second(now) {
            s.failed += 1;
        }
    }

    pub fn retransmitted(&mut self, now: Instant) {
        self.msgs.retransmissions += 1;
        if let Some(s) = self.second(now) {
            s.retransmissions += 1;
        }
    }

    /// Adds another shard's figures (series aligned by second).
    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.lat.iter_mut().zip(&o.lat) {
            let _ = a.add(b);
        }
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (a, b) in self.ops.iter_mut().zip(&o.ops) {
            a.add(b);
        }
        for (k, v) in &o.failures {
            *self.failures.entry(*k).or_default() += v;
        }
        self.msgs.add(&o.msgs);
        self.skipped_busy += o.skipped_busy;
        self.setup.add(&o.setup);
        while self.series.len() < o.series.len() {
            self.series.push(Second::new());
        }
        for (a, b) in self.series.iter_mut().zip(&o.series) {
            a.started += b.started;
            a.succeeded += b.succeeded;
            a.failed += b.failed;
            a.retransmissions += b.retransmissions;
            let _ = a.lat.add(&b.lat);
        }
        self.t0 = min_opt(self.t0, o.t0);
        self.last_start = max_opt(self.last_start, o.last_start);
        self.last_end = max_opt(self.last_end, o.last_end);
    }

    /// Response counts by method and status.
    pub fn status_counts(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (m, row) in self.status.iter().enumerate() {
            let mut codes = BTreeMap::new();
            for (i, n) in row.iter().enumerate() {
                if *n > 0 {
                    codes.insert((i + 100).to_string(), *n);
                }
            }
            if !codes.is_empty() {
                out.insert(METH_NAMES[m].to_string(), codes);
            }
        }
        out
    }

    pub fn failure_counts(&self) -> BTreeMap<String, u64> {
        self.failures.iter().map(|(k, v)| (k.label(), *v)).collect()
    }

    pub fn total(&self) -> OpCounts {
        let mut t = self.ops[0];
        t.add(&self.ops[1]);
        t
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary {
            count: 0,
            min: 0,
            mean: 0.0,
            p50: 0,
            p90: 0,
            p99: 0,
            p999: 0,
            max: 0,
        };
    }
    LatencySummary {
        count: h.len(),
        min: h.min(),
        mean: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// One point of the per-second series in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Seconds since the measured phase started.
    pub t: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retransmissions: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

pub fn series(s: &Stats) -> Vec<SeriesPoint> {
    s.series
        .iter()
        .enumerate()
        .map(|(i, x)| SeriesPoint {
            t: i as u64,
            started: x.started,
            succeeded: x.succeeded,
            failed: x.failed,
            retransmissions: x.retransmissions,
            p50_us: if x.lat.is_empty() {
                0
            } else {
                x.lat.value_at_quantile(0.5)
            },
            p99_us: if x.lat.is_empty() {
                0
            } else {
                x.lat.value_at_quantile(0.99)
            },
        })
        .collect()
}

/// Seconds between two instants, as f64.
pub fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// The duration as whole microseconds (at least 1).
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let t0 = Instant::now();
        let mut a = Stats {
            t0: Some(t0),
            ..Stats::default()
        };
        let mut b = Stats {
            t0: Some(t0),
            ..Stats::default()
        };
        a.started(Kind::Register, t0);
        a.succeeded(Kind::Register, t0 + Duration::from_millis(1));
        a.latency(Lat::Register, 1000, t0);
        a.status(Meth::Register, 200);
        b.started(Kind::Call, t0 + Duration::from_secs(2));
        b.failed(
            Kind::Call,
            Fail::Timeout(Meth::Invite),
            t0 + Duration::from_secs(3),
        );
        b.status(Meth::Invite, 404);
        a.merge(&b);
        assert_eq!(a.total().started, 2);
        assert_eq!(a.ops[Kind::Call as usize].timeouts, 1);
        assert_eq!(a.series.len(), 4);
        assert_eq!(a.series[3].failed, 1);
        assert_eq!(a.status_counts()["INVITE"]["404"], 1);
        assert_eq!(a.failure_counts()["INVITE timeout"], 1);
        assert_eq!(summarize(&a.lat[Lat::Register as usize]).p50, 1000);
    }
}
