//! Replica placement and quorum arithmetic.
//!
//! A key lives on `min(k, N)` nodes: its responsible node and that node's
//! successors ([`Ring::replicas`](crate::ring::Ring::replicas)). A write is
//! acknowledged once a majority of that set holds it — so any two quorums
//! intersect and a single failure never blocks writes when k ≥ 3 — and a
//! one-node farm is its own quorum. Reads go to the first live replica and
//! fall back to the next one; anti-entropy and hand-off close the gaps a
//! minority of replicas may have.

/// How many replicas a key has with `k` configured and `members` on the ring.
/// Never zero: a node that knows of no ring member still counts itself.
pub fn replica_count(k: usize, members: usize) -> usize {
    k.min(members).max(1)
}

/// Acknowledgements a write needs among `replicas`: a strict majority.
pub fn write_quorum(replicas: usize) -> usize {
    replicas / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority_and_one_node_is_its_own() {
        assert_eq!(write_quorum(replica_count(3, 1)), 1);
        assert_eq!(write_quorum(replica_count(3, 2)), 2);
        assert_eq!(write_quorum(replica_count(3, 10)), 2);
        assert_eq!(write_quorum(replica_count(5, 10)), 3);
        assert_eq!(replica_count(3, 0), 1);
        // Any two quorums of the same set intersect.
        for r in 1..10 {
            assert!(2 * write_quorum(r) > r);
        }
    }
}
