//! Counters for metrics. The driver copies them into its metrics registry
//! (names and units live in the supernode's `metrics.rs`); the simulator sums
//! them across nodes.

/// Highest hop count tracked individually; longer paths land in the last slot.
pub const MAX_TRACKED_HOPS: usize = 16;

/// Monotonic counters (and one gauge) of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Frames refused by the decoder or handler (the link is closed).
    pub malformed_messages: u64,
    /// Frames of a newer minor's unknown kind, skipped.
    pub unknown_messages: u64,
    /// Reads and lookups started here.
    pub lookups: u64,
    pub lookups_ok: u64,
    pub lookups_failed: u64,
    /// Completed reads and lookups by overlay hops taken.
    pub lookup_hops: [u64; MAX_TRACKED_HOPS + 1],
    /// Writes started here.
    pub writes: u64,
    pub writes_ok: u64,
    /// Writes that ended without a quorum (the registrar answered 503).
    pub write_quorum_failures: u64,
    /// Writes this node coordinated as a replica.
    pub writes_coordinated: u64,
    /// Operations forwarded on (stale views of senders).
    pub forwarded: u64,
    pub ttl_exceeded: u64,
    /// Operation attempts retried against another replica.
    pub retries: u64,
    /// Hand-off and anti-entropy messages sent.
    pub repair_messages: u64,
    /// Records that hand-off or anti-entropy changed here.
    pub repaired_records: u64,
    /// Records handed to another node and dropped here.
    pub handed_off_records: u64,
    pub anti_entropy_rounds: u64,
    pub anti_entropy_in_sync: u64,
    /// Successors in this node's replica set not confirmed in sync with its
    /// primary range at the last anti-entropy round (a gauge).
    pub replicas_below_k: u64,
    pub failures_detected: u64,
    pub refutations: u64,
    pub joins_served: u64,
    pub gossip_sent: u64,
    /// Member records refused for an implausible incarnation.
    pub refused_member_records: u64,
    /// Records replicated here by a node outside their replica set.
    pub refused_not_replica: u64,
    /// Entries stamped too far ahead or expiring too late.
    pub refused_entries: u64,
}

impl Stats {
    pub fn record_hops(&mut self, hops: u32) {
        self.lookup_hops[(hops as usize).min(MAX_TRACKED_HOPS)] += 1;
    }

    /// Adds another node's counters (gauges add too: totals over a farm).
    pub fn accumulate(&mut self, o: &Stats) {
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.malformed_messages += o.malformed_messages;
        self.unknown_messages += o.unknown_messages;
        self.lookups += o.lookups;
        self.lookups_ok += o.lookups_ok;
        self.lookups_failed += o.lookups_failed;
        for (a, b) in self.lookup_hops.iter_mut().zip(o.lookup_hops.iter()) {
            *a += b;
        }
        self.writes += o.writes;
        self.writes_ok += o.writes_ok;
        self.write_quorum_failures += o.write_quorum_failures;
        self.writes_coordinated += o.writes_coordinated;
        self.forwarded += o.forwarded;
        self.ttl_exceeded += o.ttl_exceeded;
        self.retries += o.retries;
        self.repair_messages += o.repair_messages;
        self.repaired_records += o.repaired_records;
        self.handed_off_records += o.handed_off_records;
        self.anti_entropy_rounds += o.anti_entropy_rounds;
        self.anti_entropy_in_sync += o.anti_entropy_in_sync;
        self.replicas_below_k += o.replicas_below_k;
        self.failures_detected += o.failures_detected;
        self.refutations += o.refutations;
        self.joins_served += o.joins_served;
        self.gossip_sent += o.gossip_sent;
        self.refused_member_records += o.refused_member_records;
        self.refused_not_replica += o.refused_not_replica;
        self.refused_entries += o.refused_entries;
    }
}
