//! The ring as seen through a member view: successors, predecessors, Chord
//! fingers, and the interval each node owns.
//!
//! Only members in state `Alive` are on the ring; `Joining`, `Leaving` and
//! gone members are skipped, so the ring changes exactly when a record's
//! state flips. Every query walks the view's sorted chunks from a position,
//! so it costs O(answer + skipped) without any per-view index to rebuild: the
//! simulator's 10 000 nodes each see hundreds of membership changes.

use crate::id::{NodeId, Position, RingRange};
use crate::membership::{MemberRecord, MemberView};

/// A read-only ring over a view, with an extra exclusion (e.g. peers this
/// node currently cannot reach).
#[derive(Clone, Copy)]
pub struct Ring<'a, F = fn(NodeId) -> bool> {
    view: &'a MemberView,
    exclude: F,
}

impl<F> std::fmt::Debug for Ring<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("routable", &self.view.routable_len())
            .finish()
    }
}

fn none(_: NodeId) -> bool {
    false
}

impl<'a> Ring<'a> {
    pub fn new(view: &'a MemberView) -> Self {
        Ring {
            view,
            exclude: none,
        }
    }

    /// A ring that also skips the members for which `exclude` is true.
    pub fn excluding<G: Fn(NodeId) -> bool>(view: &'a MemberView, exclude: G) -> Ring<'a, G> {
        Ring { view, exclude }
    }
}

impl<F: Fn(NodeId) -> bool> Ring<'_, F> {
    fn on_ring(&self, m: &MemberRecord) -> bool {
        m.state.is_routable() && !(self.exclude)(m.id)
    }

    /// The first ring member at or after `pos`: the node responsible for
    /// keys at `pos`.
    pub fn successor(&self, pos: Position) -> Option<NodeId> {
        self.view
            .iter_from(pos)
            .find(|m| self.on_ring(m))
            .map(|m| m.id)
    }

    /// Up to `n` distinct ring members at or after `pos`.
    pub fn successors_from(&self, pos: Position, n: usize) -> Vec<NodeId> {
        self.view
            .iter_from(pos)
            .filter(|m| self.on_ring(m))
            .take(n)
            .map(|m| m.id)
            .collect()
    }

    /// Up to `n` ring members strictly after `id` (its successor list),
    /// never `id` itself.
    pub fn successors_of(&self, id: NodeId, n: usize) -> Vec<NodeId> {
        self.view
            .iter_from(id.position().wrapping_add(1))
            .filter(|m| m.id != id && self.on_ring(m))
            .take(n)
            .map(|m| m.id)
            .collect()
    }

    /// Up to `n` ring members strictly before `id` (its predecessor list),
    /// nearest first, never `id` itself.
    pub fn predecessors_of(&self, id: NodeId, n: usize) -> Vec<NodeId> {
        self.view
            .iter_before(id.position())
            .filter(|m| m.id != id && self.on_ring(m))
            .take(n)
            .map(|m| m.id)
            .collect()
    }

    /// The replica set of keys at `pos`: the responsible node and its
    /// successors, `min(k, N)` of them.
    pub fn replicas(&self, pos: Position, k: usize) -> Vec<NodeId> {
        self.successors_from(pos, k)
    }

    /// The positions for which `id` is among the `min(k, N)` replicas,
    /// counting `id` as a ring member even if it is not one yet (a joining
    /// node asks for exactly this range). `(p_k, id]` where `p_k` is its k-th
    /// predecessor; the whole ring when there are no more than k members.
    pub fn replica_range(&self, id: NodeId, k: usize) -> RingRange {
        let preds = self.predecessors_of(id, k);
        if preds.len() < k {
            return RingRange::FULL;
        }
        RingRange::new(preds[k - 1].position(), id.position())
    }

    /// The positions `id` is responsible for: `(predecessor, id]`.
    pub fn primary_range(&self, id: NodeId) -> RingRange {
        match self.predecessors_of(id, 1).first() {
            Some(p) => RingRange::new(p.position(), id.position()),
            None => RingRange::FULL,
        }
    }

    /// Chord fingers of `id`: the distinct successors of `id + 2^i` for
    /// i in 0..128, nearest first.
    pub fn fingers(&self, id: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for i in 0..128u32 {
            let target = id.position().wrapping_add(1u128 << i);
            if let Some(f) = self.successor(target)
                && f != id
                && out.last() != Some(&f)
                && !out.contains(&f)
            {
                out.push(f);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.view.routable_len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.routable_len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberState;
    use crate::membership::tests::member;

    fn ring_of(ids: &[u128]) -> MemberView {
        MemberView::from_records(ids.iter().map(|i| member(*i, 0, MemberState::Alive)))
    }

    #[test]
    fn successor_is_first_at_or_after_and_wraps() {
        let v = ring_of(&[100, 200, 300]);
        let r = Ring::new(&v);
        assert_eq!(r.successor(150), Some(NodeId::from_u128(200)));
        assert_eq!(r.successor(200), Some(NodeId::from_u128(200)));
        assert_eq!(r.successor(301), Some(NodeId::from_u128(100)));
        assert_eq!(r.replicas(250, 3), ids(&[300, 100, 200]));
        assert_eq!(r.replicas(250, 5), ids(&[300, 100, 200]), "min(k, N)");
    }

    #[test]
    fn non_alive_members_are_off_the_ring() {
        let mut v = ring_of(&[100, 200, 300]);
        v.upsert(member(200, 0, MemberState::Dead));
        v.upsert(member(250, 0, MemberState::Joining));
        let r = Ring::new(&v);
        assert_eq!(r.successor(150), Some(NodeId::from_u128(300)));
        assert_eq!(r.len(), 2);
        let ex = Ring::excluding(&v, |id| id.as_u128() == 300);
        assert_eq!(ex.successor(150), Some(NodeId::from_u128(100)));
    }

    #[test]
    fn ranges_for_owner_and_replicas() {
        let v = ring_of(&[100, 200, 300, 400]);
        let r = Ring::new(&v);
        let n = NodeId::from_u128(300);
        assert_eq!(r.primary_range(n), RingRange::new(200, 300));
        assert_eq!(r.replica_range(n, 3), RingRange::new(400, 300));
        assert_eq!(r.replica_range(n, 4), RingRange::FULL);
        // A joining node between 200 and 300 asks for (p_k, id].
        assert_eq!(
            r.replica_range(NodeId::from_u128(250), 2),
            RingRange::new(100, 250)
        );
        // Every position is replicated exactly min(k, N) times.
        for p in [50u128, 100, 101, 250, 400, 401, u128::MAX] {
            let holders = [100u128, 200, 300, 400]
                .iter()
                .filter(|i| r.replica_range(NodeId::from_u128(**i), 3).contains(p))
                .count();
            assert_eq!(holders, 3, "position {p}");
            let set = r.replicas(p, 3);
            for h in &set {
                assert!(r.replica_range(*h, 3).contains(p));
            }
        }
    }

    #[test]
    fn fingers_are_distinct_and_double_in_reach() {
        let ids_: Vec<u128> = (0..64u128).map(|i| i << 120).collect();
        let v = ring_of(&ids_);
        let f = Ring::new(&v).fingers(NodeId::from_u128(0));
        let expect: Vec<NodeId> = [1u128, 2, 4, 8, 16, 32]
            .iter()
            .map(|i| NodeId::from_u128(i << 120))
            .collect();
        assert_eq!(f, expect);
    }

    fn ids(v: &[u128]) -> Vec<NodeId> {
        v.iter().map(|i| NodeId::from_u128(*i)).collect()
    }
}
