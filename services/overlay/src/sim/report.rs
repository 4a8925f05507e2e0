//! What a simulation run measured, as a table or as JSON.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::stats::MAX_TRACKED_HOPS;

/// The figures of one [`run`](super::run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub nodes_initial: usize,
    /// Alive nodes at the end.
    pub nodes_final: usize,
    /// Nodes that ever ran (the denominator of per-node figures).
    pub nodes_created: usize,
    pub keys: usize,
    pub replicas: usize,
    pub bootstrap_converged: bool,
    pub bootstrap_time: Duration,
    pub puts_acked: u64,
    pub puts_failed: u64,
    pub kills: usize,
    pub joins: usize,
    pub leaves: usize,
    /// Reads of loaded keys issued during churn; those neither ok, wrong nor
    /// failed had their origin crash or leave before the answer.
    pub churn_reads: u64,
    pub churn_reads_ok: u64,
    /// Reads that answered but without the acknowledged entry (stale data).
    pub churn_reads_wrong: u64,
    /// Reads that ended in an error (the caller would retry).
    pub churn_reads_failed: u64,
    /// Hops of reads during churn (views changing under them).
    pub churn_hops_p50: u32,
    pub churn_hops_p99: u32,
    pub churn_hops_max: u32,
    pub churn_writes: u64,
    pub churn_writes_acked: u64,
    pub churn_writes_failed: u64,
    /// All views identical and all nodes alive at the end.
    pub converged: bool,
    /// Views converged and every surviving acked key on its full replica set.
    pub settled: bool,
    /// Virtual time from the end of churn to settled (or the limit).
    pub settle_time: Duration,
    /// Verification reads of every acked key, after settling.
    pub lookups: u64,
    pub lookups_ok: u64,
    pub hops_p50: u32,
    pub hops_p99: u32,
    pub hops_max: u32,
    pub hops_mean: f64,
    /// Acked keys no running node holds.
    pub keys_lost: u64,
    /// Verification reads that failed or missed the acked entry.
    pub keys_unreadable: u64,
    /// Surviving acked keys not held by all of their min(k, N) true replicas.
    pub replicas_below_k: u64,
    /// Sum of the nodes' own replicas-below-k gauges.
    pub reported_replicas_below_k: u64,
    /// Messages sent per node over the run (all kinds).
    pub messages_per_node: f64,
    /// The same per second of virtual time.
    pub messages_per_node_per_s: f64,
    pub repair_messages_per_node: f64,
    pub repaired_records: u64,
    pub failures_detected: u64,
    /// Deaths refuted by the "dead" node itself (false suspicions).
    pub refutations: u64,
    pub write_quorum_failures: u64,
    pub refused_frames: u64,
    /// Member records, replicated records and entries the nodes refused
    /// (implausible incarnations, writers outside the replica set,
    /// timestamps or expiries out of bounds): none in an honest farm.
    pub refused_writes: u64,
    pub virtual_time: Duration,
}

impl Report {
    pub(super) fn set_hops(&mut self, h: &[u64; MAX_TRACKED_HOPS + 1]) {
        if let Some((p50, p99, max, mean)) = hop_figures(h) {
            (self.hops_p50, self.hops_p99, self.hops_max, self.hops_mean) = (p50, p99, max, mean);
        }
    }

    pub(super) fn set_churn_hops(&mut self, h: &[u64; MAX_TRACKED_HOPS + 1]) {
        if let Some((p50, p99, max, _)) = hop_figures(h) {
            (
                self.churn_hops_p50,
                self.churn_hops_p99,
                self.churn_hops_max,
            ) = (p50, p99, max);
        }
    }

    /// Verification read success, in percent.
    pub fn lookup_success(&self) -> f64 {
        percent(self.lookups_ok, self.lookups)
    }

    pub fn churn_read_success(&self) -> f64 {
        percent(self.churn_reads_ok, self.churn_reads)
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| format!("{:.1}", d.as_secs_f64());
        vec![
            ("seed", self.seed.to_string()),
            ("nodes_initial", self.nodes_initial.to_string()),
            ("nodes_final", self.nodes_final.to_string()),
            ("nodes_created", self.nodes_created.to_string()),
            ("keys", self.keys.to_string()),
            ("replicas_k", self.replicas.to_string()),
            ("bootstrap_converged", self.bootstrap_converged.to_string()),
            ("bootstrap_s", d(self.bootstrap_time)),
            ("puts_acked", self.puts_acked.to_string()),
            ("puts_failed", self.puts_failed.to_string()),
            ("kills", self.kills.to_string()),
            ("joins", self.joins.to_string()),
            ("leaves", self.leaves.to_string()),
            ("churn_reads", self.churn_reads.to_string()),
            (
                "churn_read_success_pct",
                format!("{:.3}", self.churn_read_success()),
            ),
            ("churn_reads_wrong", self.churn_reads_wrong.to_string()),
            ("churn_reads_failed", self.churn_reads_failed.to_string()),
            ("churn_hops_p50", self.churn_hops_p50.to_string()),
            ("churn_hops_p99", self.churn_hops_p99.to_string()),
            ("churn_hops_max", self.churn_hops_max.to_string()),
            ("churn_writes", self.churn_writes.to_string()),
            ("churn_writes_acked", self.churn_writes_acked.to_string()),
            ("churn_writes_failed", self.churn_writes_failed.to_string()),
            ("converged", self.converged.to_string()),
            ("settled", self.settled.to_string()),
            ("settle_s", d(self.settle_time)),
            ("lookups", self.lookups.to_string()),
            (
                "lookup_success_pct",
                format!("{:.3}", self.lookup_success()),
            ),
            ("hops_p50", self.hops_p50.to_string()),
            ("hops_p99", self.hops_p99.to_string()),
            ("hops_max", self.hops_max.to_string()),
            ("hops_mean", format!("{:.3}", self.hops_mean)),
            ("keys_lost", self.keys_lost.to_string()),
            ("keys_unreadable", self.keys_unreadable.to_string()),
            ("replicas_below_k", self.replicas_below_k.to_string()),
            (
                "reported_replicas_below_k",
                self.reported_replicas_below_k.to_string(),
            ),
            (
                "messages_per_node",
                format!("{:.1}", self.messages_per_node),
            ),
            (
                "messages_per_node_per_s",
                format!("{:.2}", self.messages_per_node_per_s),
            ),
            (
                "repair_messages_per_node",
                format!("{:.1}", self.repair_messages_per_node),
            ),
            ("repaired_records", self.repaired_records.to_string()),
            ("failures_detected", self.failures_detected.to_string()),
            ("refutations", self.refutations.to_string()),
            (
                "write_quorum_failures",
                self.write_quorum_failures.to_string(),
            ),
            ("refused_frames", self.refused_frames.to_string()),
            ("refused_writes", self.refused_writes.to_string()),
            ("virtual_s", d(self.virtual_time)),
        ]
    }

    /// A two-column text table.
    pub fn to_table(&self) -> String {
        let rows = self.rows();
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in rows {
            let _ = writeln!(s, "{k:<w$}  {v}");
        }
        s
    }

    /// One JSON object; numbers stay numbers, booleans booleans.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.rows().into_iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "\"{k}\": {v}");
        }
        s.push('}');
        s
    }
}

/// p50, p99, max and mean of a hop histogram; `None` when empty.
fn hop_figures(h: &[u64; MAX_TRACKED_HOPS + 1]) -> Option<(u32, u32, u32, f64)> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let pct = |q: f64| {
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, n) in h.iter().enumerate() {
            acc += n;
            if acc >= target {
                return i as u32;
            }
        }
        MAX_TRACKED_HOPS as u32
    };
    let max = h.iter().rposition(|n| *n > 0).unwrap_or(0) as u32;
    let mean = h.iter().enumerate().map(|(i, n)| i as u64 * n).sum::<u64>() as f64 / total as f64;
    Some((pct(0.50), pct(0.99), max, mean))
}

fn percent(a: u64, b: u64) -> f64 {
    if b == 0 {
        100.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histogram() {
        let mut h = [0u64; MAX_TRACKED_HOPS + 1];
        h[1] = 98;
        h[2] = 1;
        h[3] = 1;
        let mut r = Report::default();
        r.set_hops(&h);
        assert_eq!((r.hops_p50, r.hops_p99, r.hops_max), (1, 2, 3));
        assert!((r.hops_mean - 1.03).abs() < 1e-9);
        let json = r.to_json();
        assert!(json.starts_with('{') && json.ends_with('}'));
        assert!(json.contains("\"hops_p99\": 2"));
        assert!(json.contains("\"converged\": false"));
    }
}
